//! The group-commit writer: the one thread that decides every change to sled and the
//! journal. It gathers every job queued since its last batch, stages their mutations
//! into one journal record, a `sled::Batch` and the group's task-record changes,
//! appends the record (one `fdatasync` in `always` mode), applies the batch to sled and
//! the task changes to the task table (memory only, `tasks.rs`) and then completes the
//! jobs in submission order. It decides when a checkpoint is due and hands it to
//! `checkpoint.rs`, with the task table's generation frozen for it to apply first.
//! Key layout and record encoding live in `keys.rs`/`record.rs`; the public
//! `Writer`/`WriterHandle` types are declared in `mod.rs`.
//!
//! Architecture Invariant: only this thread makes changes (the checkpoint thread
//! applies to sled the frozen task changes this thread made), so a `Patch` can read
//! the stored state (task table, then sled) and write it back without
//! compare-and-swap, and an idempotency key can be checked and claimed without a race
//! (see `retention.rs`, which also holds the retention records and the sweep). A change
//! reaches sled or the task table only after its journal record is written, so
//! neither holds a change the journal lacks.

mod producers;
mod retention;
mod snapshot;
mod stage;

pub use producers::PRODUCER_WINDOW_MS;

use std::slice;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

use flume::{Receiver, RecvTimeoutError, TryRecvError};
use sled::InlineArray;

use super::checkpoint::Checkpointer;
use super::journal::Journal;
use super::record::{self, BodyFile, BodyRef};
use super::tasks::{self, Slot};
use super::volume::SpaceGuard;
use super::{
    Completion, Db, Duplicate, FsyncMode, Inner, JobReport, Muts, SequenceRefusal, StoreError,
    SweepStats, WriterStats,
};
use crate::histogram::micros;
use crate::model::{Mutation, TaskId};

/// Most mutations gathered into one batch. Past it the writer commits what it has and
/// comes straight back for the rest: this bounds the memory of a batch and the wait of
/// the job that opened it, without costing throughput (a batch this size already
/// amortises its flush over thousands of jobs).
pub(super) const MAX_BATCH_MUTATIONS: usize = 16_384;

/// Payload bytes past which the writer commits what it has gathered: bounds the
/// journal record (and the memory) of one group. One publish request is bounded by
/// the frame limit, so a record stays well under a default segment.
const MAX_BATCH_PAYLOAD_BYTES: usize = 16 * 1024 * 1024;

/// A journal segment holding records is checkpointed after this long even if it is not
/// full, so that an idle broker's journal shrinks back and its restart replays little.
const CHECKPOINT_AFTER: Duration = Duration::from_secs(30);

/// While the journal cannot write (a full disk), how often the writer tries again on
/// its own, so that the broker becomes ready again without waiting for a client.
const PROBE_EVERY: Duration = Duration::from_secs(1);

/// In `always` mode, a group nobody waits for (only attempt counts) is written to the
/// journal but synced by the next group that is waited for, or after this long at the
/// latest. A killed process loses nothing of it (it is in the page cache); a power
/// loss within this window can lose an attempt count, never a confirmed change.
const DEFERRED_SYNC: Duration = Duration::from_millis(5);

/// The same for a cluster member's store, where every job is a committed Raft entry:
/// on a majority's synced log already, and applied again from this member's own log
/// at restart if a power loss takes the unsynced journal tail (the log keeps every
/// entry until a snapshot, which syncs first, covers it). Syncing the applied entries
/// every 5 ms was ~4% of a follower's CPU (perf); a barrier (before the state file
/// records an applied id) and every checkpoint still sync at once.
const DEFERRED_SYNC_REPLICATED: Duration = Duration::from_millis(50);

/// What the channel carries.
pub(crate) enum Msg<C: Completion> {
    /// Mutations to apply, and who to tell.
    Job(Job<C>),
    /// Jobs that must be in one group (applied, durable and recovered together or
    /// not at all): the jobs of one replicated entry (`cluster/state.rs`).
    Jobs(Vec<Job<C>>),
    /// Apply everything queued before this message, flush, exit.
    Shutdown,
    /// A cluster snapshot's export or import, run between two groups
    /// (`writer/snapshot.rs`).
    Snapshot(super::snapshot::SnapshotJob),
}

/// One submission.
pub(crate) struct Job<C: Completion> {
    pub(crate) muts: Muts,
    pub(crate) done: Done<C>,
}

impl Muts {
    /// Whether the job inserts tasks (a publish: refused below the publish reserve).
    pub(crate) fn inserts(&self) -> bool {
        self.as_slice()
            .iter()
            .any(|m| matches!(m, Mutation::Insert(_)))
    }

    /// The task payloads the job carries, in bytes.
    pub(crate) fn payload_bytes(&self) -> usize {
        match self {
            Muts::Shared(_, bytes) => *bytes,
            _ => payload_bytes_of(self.as_slice()),
        }
    }

    fn as_slice(&self) -> &[Mutation] {
        match self {
            Muts::One(m) => slice::from_ref(m),
            Muts::Many(ms) => ms,
            Muts::Shared(ms, _) => ms,
            // Its tasks are not written: nothing to stage but its numbering.
            Muts::Netted(_) => &[],
        }
    }
}

/// A completion that is always called exactly once: if a job is dropped unfinished
/// (left in the channel when the writer exits, or the writer panicked) its completion
/// gets [`StoreError::Closed`] instead of never hearing back.
pub(crate) struct Done<C: Completion>(Option<C>);

impl<C: Completion> Done<C> {
    pub(crate) fn new(done: Option<C>) -> Done<C> {
        Done(done)
    }

    /// Whether someone waits for this job's outcome to be durable here.
    fn awaited(&self) -> bool {
        self.0.as_ref().is_some_and(|c| !c.durable_elsewhere())
    }

    pub(crate) fn complete(mut self, result: Result<(), StoreError>, report: JobReport<'_>) {
        if let Some(done) = self.0.take() {
            done.complete_with(result, report);
        }
    }
}

impl<C: Completion> Drop for Done<C> {
    fn drop(&mut self) {
        if let Some(done) = self.0.take() {
            done.complete(Err(StoreError::Closed));
        }
    }
}

/// One staged write: a key and its new value (`None` deletes it).
type Write = (Key, Option<InlineArray>);

/// A staged write's key. A task record's key (most of the writes) is kept as its slot
/// and id and turned into bytes on the stack where bytes are needed: an
/// `InlineArray` of a 9-byte key is a heap allocation, and most task records end in
/// the task table, never in sled.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Key {
    Task(Slot, TaskId),
    Other(InlineArray),
}

impl Key {
    fn of(key: &[u8]) -> Key {
        match Slot::of_key(key) {
            Some((slot, id)) => Key::Task(slot, id),
            None => Key::Other(InlineArray::from(key)),
        }
    }

    /// Whether this is `key`, whose task slot (if any) the caller found with
    /// `Slot::of_key`.
    fn is(&self, key: &[u8], task: Option<(Slot, TaskId)>) -> bool {
        match (self, task) {
            (Key::Task(slot, id), Some(other)) => (*slot, *id) == other,
            (Key::Other(bytes), None) => bytes.as_ref() == key,
            _ => false,
        }
    }
}

/// The writer thread's state.
pub(crate) struct WriterLoop<C: Completion> {
    /// The writer's own sled handle.
    db: Db,
    journal: Journal,
    /// `None` only while stopping.
    checkpointer: Option<Checkpointer>,
    store: Arc<Inner>,
    rx: Receiver<Msg<C>>,
    stats: Arc<WriterStats>,
    mode: FsyncMode,
    /// Jobs of the batch being built, in submission order.
    group: Vec<Job<C>>,
    /// Each job's own failure (a corrupt record it patches), parallel to `group`.
    failed: Vec<Option<StoreError>>,
    /// Each job's report beyond success, parallel to `group`.
    reports: Vec<JobOutcome>,
    /// Duplicate inserts of the whole group, job by job.
    duplicates: Vec<Duplicate>,
    /// Duplicates and sweep statistics of the job being staged.
    job_duplicates: Vec<Duplicate>,
    job_sweep: Option<SweepStats>,
    /// Why the job being staged, a numbered publish, was refused.
    job_refused: Option<SequenceRefusal>,
    /// The producer records the group being built touched.
    producers: producers::Producers,
    /// The writes of the job being staged: kept apart from the batch until the whole
    /// job staged, so that a failing job leaves nothing behind.
    stage: Vec<Write>,
    /// Encoding buffer, reused for every record.
    scratch: Vec<u8>,
    /// Bodies the job being staged wrote into the journal record.
    job_bodies: Vec<StagedBody>,
    /// The task records the group being built changes (they join the task table
    /// once journaled; sled gets the rest of the batch).
    group_tasks: tasks::Changes,
    /// When the journal was last synced (interval mode).
    last_sync: Instant,
    /// When unsynced records of groups nobody waited for must be synced (always mode).
    sync_by: Option<Instant>,
    /// Whether the free space is below the publish reserve.
    space: SpaceGuard,
    /// When the last checkpoint to give space back was asked for.
    space_checkpoint: Instant,
    /// Tasks whose body reference the batch being built removes.
    removed_bodies: Vec<TaskId>,
    /// Tasks the group being built both inserts and removes, touched by nothing else
    /// in it (`stage::find_netted`): neither is staged.
    netted: crate::model::IdSet<TaskId>,
    /// Scratch of `find_netted`: tasks the group inserts, and whether they may still
    /// be netted.
    inserted: crate::model::IdMap<TaskId, bool>,
    /// A snapshot job that came in behind the group being gathered: run after it.
    after_group: Option<super::snapshot::SnapshotJob>,
}

/// What a job's completion hears besides its result: its range of the group's
/// `duplicates`, its sweep statistics, why its numbered publish was refused.
struct JobOutcome {
    duplicates: std::ops::Range<usize>,
    sweep: Option<SweepStats>,
    refused: Option<SequenceRefusal>,
}

impl JobOutcome {
    fn of(duplicates: std::ops::Range<usize>) -> JobOutcome {
        JobOutcome {
            duplicates,
            sweep: None,
            refused: None,
        }
    }
}

/// The staged batch of one group.
#[derive(Default)]
struct Staged {
    batch: sled::Batch,
    writes: usize,
    mutations: u64,
    max_inserted: Option<TaskId>,
    /// Bodies written into the journal record: sled gets their references once the
    /// record's place in the journal is known.
    bodies: Vec<StagedBody>,
}

/// A body in the journal record being built.
struct StagedBody {
    id: TaskId,
    /// The encoded body, for the cache of recent bodies once the batch is applied.
    bytes: bytes::Bytes,
    /// Where its bytes start in the record.
    at: u64,
    len: u32,
    crc: u32,
}

impl<C: Completion> WriterLoop<C> {
    pub(crate) fn new(
        db: Db,
        journal: Journal,
        checkpointer: Checkpointer,
        store: Arc<Inner>,
        rx: Receiver<Msg<C>>,
        stats: Arc<WriterStats>,
    ) -> Self {
        WriterLoop {
            space: SpaceGuard::new(store.journal_dir.clone(), store.sizing.publish_reserve),
            db,
            journal,
            checkpointer: Some(checkpointer),
            mode: store.fsync,
            store,
            rx,
            stats,
            group: Vec::new(),
            failed: Vec::new(),
            reports: Vec::new(),
            duplicates: Vec::new(),
            job_duplicates: Vec::new(),
            job_sweep: None,
            job_refused: None,
            producers: producers::Producers::default(),
            stage: Vec::new(),
            scratch: Vec::with_capacity(256),
            job_bodies: Vec::new(),
            group_tasks: tasks::Changes::default(),
            last_sync: Instant::now(),
            sync_by: None,
            space_checkpoint: Instant::now(),
            removed_bodies: Vec::new(),
            netted: Default::default(),
            inserted: Default::default(),
            after_group: None,
        }
    }

    /// Runs until shutdown or until every handle is gone; returns the final sync and
    /// checkpoint.
    pub(crate) fn run(mut self) -> Result<(), StoreError> {
        // The first segment is created before any job waits for it.
        if let Err(error) = self.journal.ensure_segment() {
            self.store.degrade(&error);
        }
        loop {
            let first = match self.next_message() {
                Wake::Msg(Msg::Job(job)) => vec![job],
                Wake::Msg(Msg::Jobs(jobs)) => jobs,
                Wake::Msg(Msg::Snapshot(job)) => {
                    self.snapshot_job(job);
                    continue;
                }
                Wake::Msg(Msg::Shutdown) | Wake::Disconnected => break,
                Wake::Timer => {
                    self.on_timer();
                    continue;
                }
            };
            let shutdown = self.gather(first);
            self.commit();
            if let Some(job) = self.after_group.take() {
                self.snapshot_job(job);
            }
            if shutdown {
                break;
            }
        }
        if let Some(failure) = self.store.failure() {
            // Dropping the handle would flush, and a flush never returns after a
            // failed one: leak the writer's state instead (the process is stopping).
            tracing::warn!("store writer stopping without a checkpoint: the store failed");
            std::mem::forget(self);
            return Err(failure);
        }
        tracing::debug!("store writer stopping: last sync and checkpoint");
        // Jobs still queued behind a shutdown are dropped with `rx` after this
        // returns, and `Done` completes them with `Closed`.
        let synced = self.sync_journal();
        let floor = self.seal();
        let settled = self.settle_tasks();
        let checkpointed = match self.checkpointer.take() {
            Some(checkpointer) => checkpointer.stop(floor),
            None => Ok(()),
        };
        synced.and(settled).and(checkpointed)
    }

    /// Blocks for the next message, or until a timer is due: the interval sync, a
    /// checkpoint of an old segment, or a retry of the journal after a failure.
    fn next_message(&self) -> Wake<C> {
        let checkpoint = self.journal.current_since().map(|s| s + CHECKPOINT_AFTER);
        let probe =
            (self.store.degraded() || self.space.is_low()).then(|| Instant::now() + PROBE_EVERY);
        let due = [self.sync_due(), checkpoint, probe]
            .into_iter()
            .flatten()
            .min();
        match due {
            Some(deadline) => match self.rx.recv_deadline(deadline) {
                Ok(msg) => Wake::Msg(msg),
                Err(RecvTimeoutError::Timeout) => Wake::Timer,
                Err(RecvTimeoutError::Disconnected) => Wake::Disconnected,
            },
            _ => match self.rx.recv() {
                Ok(msg) => Wake::Msg(msg),
                Err(_) => Wake::Disconnected,
            },
        }
    }

    /// When unsynced journal records must be synced: the interval in interval mode,
    /// the deferred sync of unawaited groups in always mode.
    fn sync_due(&self) -> Option<Instant> {
        if !self.journal.unsynced() {
            return None;
        }
        match self.mode {
            FsyncMode::Interval(every) => Some(self.last_sync + every),
            _ => self.sync_by,
        }
    }

    /// Syncs the journal if its sync is due.
    fn sync_if_due(&mut self) {
        if self.sync_due().is_some_and(|at| Instant::now() >= at) {
            let _ = self.sync_journal();
        }
    }

    /// Does whatever timer is due.
    fn on_timer(&mut self) {
        self.sync_if_due();
        if self.space.is_low() {
            self.check_space();
            self.checkpoint_for_space();
        }
        if self
            .journal
            .current_since()
            .is_some_and(|since| since.elapsed() >= CHECKPOINT_AFTER)
        {
            let floor = self.seal();
            self.checkpoint(floor);
        }
        if self.store.failure().is_none() {
            match self.journal.ensure_segment() {
                Ok(()) => self.store.undegrade(),
                Err(error) => self.store.degrade(&error),
            }
        }
    }

    /// While publishes are refused for lack of space, a checkpoint every probe gives
    /// back what settlements and purges freed: the journal segments it covers, and
    /// sled's emptied slabs (sled truncates them at a flush after the one that wrote
    /// their last live object, so one checkpoint after the change is not enough).
    fn checkpoint_for_space(&mut self) {
        if !self.space.is_low() || self.space_checkpoint.elapsed() < PROBE_EVERY {
            return;
        }
        self.space_checkpoint = Instant::now();
        let floor = if self.journal.current_since().is_some() {
            self.seal()
        } else {
            self.journal.next_seq()
        };
        self.checkpoint(floor);
    }

    /// Asks for a checkpoint of every record below `floor`, with the task table's
    /// changes of those records frozen for it to apply first.
    fn checkpoint(&mut self, floor: u64) {
        self.freeze_tasks();
        if let Some(checkpointer) = &self.checkpointer {
            checkpointer.request(floor);
        }
    }

    /// Freezes the task table's active generation, applying the oldest frozen one
    /// here first when too many wait for the checkpoint thread.
    fn freeze_tasks(&mut self) {
        while self.store.tasks.frozen() >= tasks::MAX_FROZEN {
            if let Err(error) = self.store.tasks.apply_oldest(&self.db, &self.store.bodies) {
                tracing::error!(%error, "task records could not be applied to sled");
                self.store.fail(&super::io_error(error));
                return;
            }
        }
        self.store.tasks.freeze(self.store.watermark.load(Relaxed));
    }

    /// Applies every task change still in memory to sled, here on the writer thread,
    /// and empties the task table: until the next group, sled holds every applied
    /// change (what a snapshot export reads). Writer thread only.
    pub(crate) fn settle_tasks(&mut self) -> Result<(), StoreError> {
        if self.store.failure().is_some() {
            return Ok(());
        }
        let next = self.store.next_id.load(Relaxed);
        self.store
            .tasks
            .freeze(next.max(self.store.watermark.load(Relaxed)));
        while self
            .store
            .tasks
            .apply_oldest(&self.db, &self.store.bodies)
            .map_err(super::io_error)?
        {}
        debug_assert!(self.store.tasks.is_empty());
        Ok(())
    }

    /// Seals the journal's current segment; returns the checkpoint floor (every
    /// record below it is applied to sled). The checkpoint records it in sled once the
    /// bodies below it have moved.
    fn seal(&mut self) -> u64 {
        match self.journal.seal() {
            Ok(floor) => floor,
            Err(error) => {
                // Its records were not all synced: only a checkpoint makes them safe.
                self.store.degrade(&error);
                self.journal.next_seq()
            }
        }
    }

    /// The group commit: takes `first` and every job already queued behind it, up to
    /// [`MAX_BATCH_MUTATIONS`] mutations or [`MAX_BATCH_PAYLOAD_BYTES`] of payloads
    /// (jobs sent together, `Msg::Jobs`, are never split between two groups).
    /// Returns whether a shutdown came in behind them.
    fn gather(&mut self, first: Vec<Job<C>>) -> bool {
        debug_assert!(self.group.is_empty(), "the previous group was completed");
        debug_assert!(!first.is_empty(), "a group starts with a job");
        let (mut mutations, mut bytes) = (0, 0);
        let mut add = |group: &mut Vec<Job<C>>, job: Job<C>| {
            mutations += job.muts.as_slice().len();
            bytes += job.muts.payload_bytes();
            group.push(job);
            mutations < MAX_BATCH_MUTATIONS && bytes < MAX_BATCH_PAYLOAD_BYTES
        };
        let mut room = false;
        for job in first {
            room = add(&mut self.group, job);
        }
        while room {
            match self.rx.try_recv() {
                Ok(Msg::Job(job)) => room = add(&mut self.group, job),
                Ok(Msg::Jobs(jobs)) => {
                    for job in jobs {
                        room = add(&mut self.group, job);
                    }
                }
                Ok(Msg::Shutdown) => return true,
                Ok(Msg::Snapshot(job)) => {
                    // Runs once this group is committed, before any later job.
                    self.after_group = Some(job);
                    break;
                }
                Err(TryRecvError::Empty | TryRecvError::Disconnected) => break,
            }
        }
        false
    }

    /// Stages, applies and makes durable the gathered group, then completes its jobs.
    fn commit(&mut self) {
        if let Some(failure) = self.store.failure() {
            // Nothing is applied any more: every job fails at once.
            for job in self.group.drain(..) {
                job.done
                    .complete(Err(failure.clone()), JobReport::default());
            }
            return;
        }
        let started = Instant::now();
        let jobs = self.group.len() as u64;
        let staged = self.stage_group();
        let writes = staged.writes;
        // A group nobody waits for (attempt counts) is synced with the next awaited
        // one or within DEFERRED_SYNC: a killed process loses none of it, and "a
        // leased task comes back with its attempt counted" holds after a power loss
        // for all but the deliveries of the last few milliseconds.
        let outcome = self.apply(staged);
        let applied = started.elapsed();
        tracing::trace!(
            jobs,
            writes,
            apply_us = micros(applied),
            total_us = micros(started.elapsed()),
            "group committed"
        );
        self.complete_group(outcome);
        // Publishes refused for space: give back what can be given back (also done by
        // the timer, which steady traffic may keep from firing).
        self.checkpoint_for_space();
        self.stats.batch_jobs.observe(jobs);
        self.stats
            .commit_latency_micros
            .observe(micros(started.elapsed()));
        self.sync_if_due();
    }

    /// Journals the staged batch (synced in `always` mode), then applies it to sled;
    /// an empty one is a no-op.
    fn apply(&mut self, staged: Staged) -> Result<(), StoreError> {
        let awaited = self.group.iter().any(|job| job.done.awaited());
        if staged.writes == 0 {
            // An awaited job confirms everything before it, including groups whose
            // sync was deferred (a barrier with nothing to write still waits for them).
            if awaited && self.mode == FsyncMode::Always && self.journal.unsynced() {
                return self.sync_journal();
            }
            return Ok(());
        }
        let sync = self.mode == FsyncMode::Always && awaited;
        let start = Instant::now();
        let sealed = match self.journal.append(sync) {
            Ok(sealed) => sealed,
            Err(error) => {
                tracing::error!(%error, jobs = self.group.len(), "journal write failed; the group's jobs fail");
                self.store.degrade(&error);
                self.group_tasks.clear();
                // Nor did its producer records' changes.
                self.forget_producers();
                // Queue settings staged by the failed batch did not happen.
                if let Err(e) = self.store.policies.write().reload(&self.db) {
                    tracing::error!(error = %e, "could not reload queue settings");
                }
                return Err(self
                    .store
                    .unavailable()
                    .unwrap_or_else(|| super::io_error(error)));
            }
        };
        if sync {
            self.count_sync(start.elapsed());
            self.sync_by = None;
        } else if self.mode == FsyncMode::Always && self.sync_by.is_none() {
            let within = if self.store.replicated.load(Relaxed) {
                DEFERRED_SYNC_REPLICATED
            } else {
                DEFERRED_SYNC
            };
            self.sync_by = Some(Instant::now() + within);
        }
        self.store.undegrade();
        if let Some(record) = self.journal.last_record() {
            // Before a checkpoint of its segment may be asked for (`relocate.rs`).
            let mut noted = self.store.journal_bodies.lock();
            for body in &staged.bodies {
                noted.note(record.segment, body.id);
            }
        }
        if let Some(floor) = sealed {
            // Every record below the floor is applied (this one is not yet).
            self.checkpoint(floor);
        }
        self.reference_bodies(&staged.bodies);
        if let Err(error) = self.db.apply_batch(staged.batch) {
            // The journal has the batch but sled does not: only a restart (which
            // replays the journal) makes them agree again.
            tracing::error!(%error, jobs = self.group.len(), "store batch failed after it was journaled");
            let error = super::io_error(error);
            self.store.fail(&error);
            self.group_tasks.clear();
            self.forget_producers();
            return Err(error);
        }
        if self.store.tasks.merge(&mut self.group_tasks) {
            // Over its budget: sled gets it now, the checkpoint at the next seal.
            self.freeze_tasks();
            if let Some(checkpointer) = &self.checkpointer {
                checkpointer.apply_tasks();
            }
        }
        self.store.recent_bodies.applied(
            staged.bodies.into_iter().map(|b| (b.id, b.bytes)),
            &self.removed_bodies,
        );
        if let Some(max) = staged.max_inserted {
            self.store
                .watermark
                .fetch_max(max.saturating_add(1), Relaxed);
        }
        self.stats.batches.fetch_add(1, Relaxed);
        self.stats.mutations.fetch_add(staged.mutations, Relaxed);
        self.stats
            .netted
            .fetch_add(self.netted.len() as u64, Relaxed);
        Ok(())
    }

    /// Adds to the group's task changes the references of the bodies the record
    /// just appended holds.
    fn reference_bodies(&mut self, bodies: &[StagedBody]) {
        let Some(record) = self.journal.last_record() else {
            debug_assert!(bodies.is_empty(), "bodies staged but no record appended");
            return;
        };
        for body in bodies {
            let change = self.group_tasks.entry(body.id).or_default();
            // Removed again later in the same batch: the removal stands.
            if change.get(Slot::Body).is_some() {
                continue;
            }
            let r = BodyRef {
                file: BodyFile::Journal(record.segment),
                offset: record.offset + body.at,
                len: body.len,
                crc: body.crc,
            };
            change.set(Slot::Body, Some(InlineArray::from(&r.encode()[..])));
        }
    }

    /// Completes every job of the group in submission order: with its own failure if
    /// it had one, else with the batch's outcome.
    /// Counters are updated first, so that whoever hears a confirmation sees them.
    fn complete_group(&mut self, outcome: Result<(), StoreError>) {
        let jobs = self.group.drain(..).zip(self.failed.drain(..));
        let (reports, stats, duplicates) = (&mut self.reports, &self.stats, &self.duplicates);
        C::in_group(|| {
            for ((job, failed), told) in jobs.zip(reports.drain(..)) {
                let result = match failed {
                    Some(error) => Err(error),
                    None => outcome.clone(),
                };
                // Counted before the completion runs, so that whoever it wakes sees it.
                if result.is_ok() {
                    stats.jobs.fetch_add(1, Relaxed);
                }
                let report = JobReport {
                    duplicates: duplicates.get(told.duplicates).unwrap_or_default(),
                    sweep: told.sweep.as_ref(),
                    refused: told.refused,
                };
                job.done.complete(result, report);
            }
        });
        debug_assert!(self.group.is_empty() && self.reports.is_empty());
    }

    /// `fdatasync`s the journal if anything is unsynced (interval mode, shutdown).
    fn sync_journal(&mut self) -> Result<(), StoreError> {
        if !self.journal.unsynced() {
            self.sync_by = None;
            return Ok(());
        }
        let start = Instant::now();
        let result = self.journal.sync();
        self.last_sync = Instant::now();
        self.sync_by = None;
        match result {
            Ok(()) => {
                self.count_sync(start.elapsed());
                Ok(())
            }
            Err(error) => {
                tracing::error!(%error, "journal sync failed");
                self.store.degrade(&error);
                Err(super::io_error(error))
            }
        }
    }

    fn count_sync(&self, took: Duration) {
        self.stats.flushes.fetch_add(1, Relaxed);
        self.stats.flush_micros.fetch_add(micros(took), Relaxed);
        self.stats.flush_latency_micros.observe(micros(took));
    }
}

/// Why the writer woke up.
enum Wake<C: Completion> {
    Msg(Msg<C>),
    Timer,
    Disconnected,
}

/// Payload bytes a job inserts.
/// The task payloads `muts` carry, in bytes.
pub(crate) fn payload_bytes_of(muts: &[Mutation]) -> usize {
    muts.iter()
        .map(|m| match m {
            Mutation::Insert(task) => task.body.payload.len(),
            _ => 0,
        })
        .sum()
}

fn too_large(e: record::TooLarge) -> StoreError {
    StoreError::Io(Arc::new(std::io::Error::new(
        std::io::ErrorKind::InvalidInput,
        format!(
            "{} is {} bytes, over the 4 GiB record limit",
            e.field, e.len
        ),
    )))
}
