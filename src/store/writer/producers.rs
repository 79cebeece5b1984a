//! The writer's producer table: what a numbered publish (`Mutation::Numbered`) is
//! checked against, so that the same publish sent again is answered with the first
//! one's tasks instead of creating them twice. One record per producer (`P`, encoded in
//! `record/producer.rs`), not one idempotency key per task: a record is changed in
//! memory by each of the group's jobs and written once at the group's end (journal and
//! sled). Idempotency keys a task carries itself are still `retention.rs`'s.
//!
//! The writer is the only one to change the records, so the ones it read stay loaded
//! from group to group (a cluster's every publish is numbered: reading and decoding
//! each producer's record again for every group was ~3% of a follower's CPU), up to
//! [`LOADED_RECORDS`] of them. Whatever may leave them unlike the store (a group that
//! failed to apply, a snapshot import) forgets them all: the next use reads them again.
//!
//! Like every other change, a job's change to the table is kept apart until the whole
//! job staged: a job that fails leaves the table as it was. A record expires
//! [`PRODUCER_WINDOW_MS`] after the producer's latest numbered publish; its `X` index
//! entry is written when the record is created, and the sweep, finding the record
//! used since, moves the entry to the record's real expiry instead of removing it.

use std::collections::HashMap;
use std::sync::Arc;

use sled::InlineArray;

use super::{Completion, Key, Staged, WriterLoop};
use crate::model::{Millis, Mutation, TaskId};
use crate::store::keys;
use crate::store::record::{self, ProducerRecord, Remembered, Seen};
use crate::store::{corrupt, io_error, Duplicate, SequenceRefusal, StoreError, SweepStats};

/// How long the store remembers a producer after its latest numbered publish (5
/// minutes, the default dedup window): a retry comes within seconds.
pub const PRODUCER_WINDOW_MS: Millis = 300_000;

/// Most producer records kept loaded between groups (each at most a few KiB): past
/// it, the loaded ones are forgotten at a group's end.
pub(super) const LOADED_RECORDS: usize = 1024;

/// The producer records loaded, as the store holds them and as the group changes them.
#[derive(Default)]
pub(super) struct Producers {
    /// Loaded records, as the group's jobs so far leave them (`None`: no record);
    /// between groups, none is dirty and each is what the store holds.
    records: HashMap<Arc<str>, Slot>,
    /// The publish the job being staged numbers, once it staged.
    job_numbered: Option<(Arc<str>, Remembered, Millis)>,
    /// Records the job being staged (a sweep) forgets.
    job_forgotten: Vec<Arc<str>>,
}

struct Slot {
    record: Option<ProducerRecord>,
    dirty: bool,
}

/// What the job's numbering says about its inserts.
pub(super) enum Numbering {
    /// Not numbered, or a new number: stage the inserts.
    Apply,
    /// Staged nothing: a repeat (its duplicates are reported) or a refusal.
    Done,
}

impl<C: Completion> WriterLoop<C> {
    /// The record of `producer` as the group leaves it so far.
    fn producer(&mut self, producer: &Arc<str>) -> Result<Option<&ProducerRecord>, StoreError> {
        use std::collections::hash_map::Entry;
        let slot = match self.producers.records.entry(producer.clone()) {
            Entry::Occupied(held) => held.into_mut(),
            Entry::Vacant(absent) => {
                let key = keys::producer(producer);
                let record = match self.db.get(&key).map_err(io_error)? {
                    None => None,
                    Some(bytes) => {
                        Some(record::decode_producer(&bytes).map_err(|e| corrupt(&key, e))?)
                    }
                };
                absent.insert(Slot {
                    record,
                    dirty: false,
                })
            }
        };
        Ok(slot.record.as_ref())
    }

    /// Checks a job's numbering (its last mutation, after its inserts) before its
    /// inserts are staged. A repeat reports every insert as a duplicate of the first
    /// publish's task at the same position; a refusal reports why. A new number is
    /// remembered once the job staged (`commit_job_producers`).
    pub(super) fn check_numbering(&mut self, muts: &[Mutation]) -> Result<Numbering, StoreError> {
        let Some(Mutation::Numbered { producer, sequence }) = muts.last() else {
            return Ok(Numbering::Apply);
        };
        let inserts = &muts[..muts.len() - 1];
        let Some(Mutation::Insert(first)) = inserts.first() else {
            debug_assert!(false, "a numbered job without inserts");
            return Ok(Numbering::Done);
        };
        debug_assert!(
            inserts.iter().all(|m| matches!(m, Mutation::Insert(_))),
            "a numbered job holds only its publish's inserts"
        );
        self.number(
            producer,
            *sequence,
            first.id,
            first.state.created_ms,
            inserts.len() as u32,
        )
    }

    /// [`check_numbering`](Self::check_numbering) of a publish of `tasks` tasks from
    /// `first_id` on, created at `now`, numbered `sequence` by `producer` (its tasks
    /// may be netted: `Muts::Netted`).
    pub(super) fn number(
        &mut self,
        producer: &Arc<str>,
        sequence: u64,
        first_id: TaskId,
        now: Millis,
        tasks: u32,
    ) -> Result<Numbering, StoreError> {
        let created = match self.producer(producer)? {
            None => true,
            Some(rec) => match rec.seen(sequence) {
                Seen::New => false,
                Seen::TooOld { floor } => {
                    self.job_refused = Some(SequenceRefusal::TooOld { floor });
                    return Ok(Numbering::Done);
                }
                Seen::Repeat(earlier) if earlier.tasks != tasks => {
                    self.job_refused = Some(SequenceRefusal::Reused {
                        tasks: earlier.tasks,
                    });
                    return Ok(Numbering::Done);
                }
                Seen::Repeat(earlier) => {
                    for index in 0..tasks as usize {
                        self.job_duplicates.push(Duplicate {
                            index,
                            original: earlier.first + index as TaskId,
                        });
                    }
                    return Ok(Numbering::Done);
                }
            },
        };
        if created {
            // Its expiry-index entry; the sweep moves it on while the producer is used.
            let key = keys::expiry_producer(now.saturating_add(PRODUCER_WINDOW_MS), producer);
            self.stage
                .push((Key::of(&key), Some(InlineArray::from(&[][..]))));
        }
        let remembered = Remembered {
            sequence,
            first: first_id,
            tasks,
        };
        self.producers.job_numbered = Some((producer.clone(), remembered, now));
        Ok(Numbering::Apply)
    }

    /// The sweep found the expiry-index entry of `producer` due at `now`: forgets the
    /// record if it was not used since, or gives it an entry at its real expiry.
    pub(super) fn sweep_producer(
        &mut self,
        producer: &str,
        now: Millis,
        stats: &mut SweepStats,
    ) -> Result<(), StoreError> {
        let producer: Arc<str> = Arc::from(producer);
        let Some(rec) = self.producer(&producer)? else {
            return Ok(());
        };
        let expires = rec.last_ms.saturating_add(PRODUCER_WINDOW_MS);
        if expires > now {
            let key = keys::expiry_producer(expires, &producer);
            self.stage
                .push((Key::of(&key), Some(InlineArray::from(&[][..]))));
        } else {
            stats.removed_keys += 1;
            self.producers.job_forgotten.push(producer);
        }
        Ok(())
    }

    /// The job staged: its changes to the table join the group's.
    pub(super) fn commit_job_producers(&mut self) {
        let p = &mut self.producers;
        if let Some((producer, remembered, now)) = p.job_numbered.take() {
            let slot = p
                .records
                .get_mut(&producer)
                .expect("loaded by check_numbering");
            slot.record
                .get_or_insert_with(ProducerRecord::default)
                .remember(remembered, now);
            slot.dirty = true;
        }
        for producer in p.job_forgotten.drain(..) {
            let slot = p
                .records
                .get_mut(&producer)
                .expect("loaded by sweep_producer");
            slot.record = None;
            slot.dirty = true;
        }
    }

    /// The job failed: its changes to the table are dropped.
    pub(super) fn drop_job_producers(&mut self) {
        self.producers.job_numbered = None;
        self.producers.job_forgotten.clear();
    }

    /// After the group's last job: writes every record it changed into the journal
    /// record and the batch. They stay loaded for the next group (clean), unless more
    /// than [`LOADED_RECORDS`] are, or the group fails to apply
    /// ([`forget_producers`](Self::forget_producers)).
    pub(super) fn stage_producers(&mut self, staged: &mut Staged) {
        debug_assert!(self.producers.job_numbered.is_none());
        debug_assert!(self.producers.job_forgotten.is_empty());
        for (producer, slot) in self.producers.records.iter_mut() {
            if !std::mem::take(&mut slot.dirty) {
                continue;
            }
            let key = keys::producer(producer);
            match &slot.record {
                Some(rec) => {
                    self.scratch.clear();
                    record::encode_producer(rec, &mut self.scratch);
                    self.journal.put(&key, Some(&self.scratch));
                    staged.batch.insert(key, self.scratch.as_slice());
                }
                None => {
                    self.journal.put(&key, None);
                    staged.batch.remove(key);
                }
            }
            staged.writes += 1;
        }
        if self.producers.records.len() > LOADED_RECORDS {
            self.producers.records.clear();
        }
        debug_assert!(self.producers.records.values().all(|slot| !slot.dirty));
    }

    /// Forgets every loaded record: the store may not hold what they say (a group
    /// that failed to apply, a snapshot import). The next use reads them again.
    pub(super) fn forget_producers(&mut self) {
        debug_assert!(self.producers.job_numbered.is_none());
        self.producers.records.clear();
    }
}
