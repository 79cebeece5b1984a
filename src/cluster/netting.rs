//! A member's held-back entries made into one store group (`state.rs`, `Deferred`),
//! with the tasks they insert and remove again taken out before the store sees them:
//! a received publish (`Command::Received`) whose every task is netted becomes a
//! [`Muts::Netted`] (its numbering and ids only), the removals of those tasks are
//! dropped, and only the other jobs of a received entry are decoded. Decoded entries
//! (read back from the log after a restart) go to the store as they are. The rule is
//! the store's own (`writer/stage.rs`, `find_netted`): a task inserted without an
//! idempotency key and removed later in the group, with no patch or success of it in
//! between. What does not live here: holding the entries and when to submit them
//! (`state.rs`); the store's netting of what this leaves (it still nets tasks of
//! publishes that are not all netted).

use std::sync::Arc;

use super::codec::JobReader;
use super::types::{Event, Job, JobSketch, LogId, Received};
use crate::model::{IdMap, IdSet, Mutation, TaskId};
use crate::store::{Muts, NettedPublish};

/// One held-back entry's jobs: decoded (read back from the log after a restart) or as
/// received from the leader.
pub(super) enum HeldJobs {
    Decoded(Arc<[Job]>),
    Received(Arc<Received>),
}

impl HeldJobs {
    /// How many mutations its jobs hold.
    pub(super) fn mutations(&self) -> usize {
        match self {
            HeldJobs::Decoded(jobs) => jobs.iter().map(|j| j.muts.len()).sum(),
            HeldJobs::Received(r) => r.mutations,
        }
    }

    /// Its task payload bytes.
    pub(super) fn payload_bytes(&self) -> usize {
        match self {
            HeldJobs::Decoded(jobs) => jobs.iter().map(Job::payload_bytes).sum(),
            HeldJobs::Received(r) => r.payload_bytes,
        }
    }
}

/// A job that failed to decode although its entry was checked when it arrived
/// (`codec::fast::sketch`): a bug, which stops the Raft node like a refused store job.
#[derive(Debug, thiserror::Error)]
#[error("a job of held-back entry {} does not decode", .0.index)]
pub(super) struct Undecodable(pub(super) LogId);

/// The store jobs of `entries`, in order, each with the id of the entry it comes
/// from; `Err` (and no job) if a received job does not decode.
pub(super) fn group(entries: &[(LogId, HeldJobs)]) -> Result<Vec<(LogId, Muts)>, Undecodable> {
    let netted = netted_ids(entries);
    // The publishes whose every task is netted: their tasks are never staged, so the
    // removals of exactly those tasks go too.
    let mut gone: IdSet<TaskId> = IdSet::default();
    let mut out = Vec::new();
    for &(log_id, ref held) in entries {
        match held {
            // Submitted as they are (the store nets what it can).
            HeldJobs::Decoded(jobs) => {
                for job in jobs.iter() {
                    if let Some(muts) = without_gone(&job.muts, &gone, job.payload_bytes()) {
                        out.push((log_id, muts));
                    }
                }
            }
            HeldJobs::Received(received) => {
                // Made at the first job decoded whole: most entries need none.
                let mut reader = None;
                for job in &received.jobs {
                    let events = &received.events[job.events.clone()];
                    if job.publish && all_netted(events, &netted) {
                        out.push((log_id, Muts::Netted(take_out(job, events, &mut gone))));
                        continue;
                    }
                    // Removals of gone tasks only: nothing left to apply.
                    if job.mutations == events.len()
                        && events
                            .iter()
                            .all(|e| matches!(e, Event::Remove(id) if gone.contains(id)))
                    {
                        continue;
                    }
                    let decoded = reader
                        .get_or_insert_with(|| JobReader::new(received))
                        .job(job.at.clone())
                        .ok_or(Undecodable(log_id))?;
                    let bytes = decoded.payload_bytes();
                    if let Some(muts) = without_gone(&decoded.muts, &gone, bytes) {
                        out.push((log_id, muts));
                    }
                }
            }
        }
    }
    debug_assert!(gone.iter().all(|id| netted.contains(id)));
    debug_assert!(out.windows(2).all(|w| w[0].0.index <= w[1].0.index));
    Ok(out)
}

/// The tasks of `entries` inserted without an idempotency key and removed later, with
/// no patch or success of theirs in between (`find_netted`'s rule, over every entry).
fn netted_ids(entries: &[(LogId, HeldJobs)]) -> IdSet<TaskId> {
    let mut inserted: IdMap<TaskId, bool> = IdMap::default();
    let mut netted: IdSet<TaskId> = IdSet::default();
    let mut event = |e: Event| match e {
        Event::Insert { id, nettable } => {
            if nettable {
                inserted.insert(id, true);
            }
        }
        Event::Remove(id) => {
            if let Some(nettable) = inserted.get_mut(&id) {
                if std::mem::take(nettable) {
                    netted.insert(id);
                }
            }
        }
        Event::Touch(id) => {
            if let Some(nettable) = inserted.get_mut(&id) {
                *nettable = false;
                netted.remove(&id);
            }
        }
    };
    for (_, held) in entries {
        match held {
            HeldJobs::Decoded(jobs) => {
                for m in jobs.iter().flat_map(|j| j.muts.iter()) {
                    if let Some(e) = event_of(m) {
                        event(e);
                    }
                }
            }
            HeldJobs::Received(r) => r.events.iter().copied().for_each(&mut event),
        }
    }
    netted
}

/// What netting reads of a decoded mutation (`codec::fast::sketch` for a received one).
pub(crate) fn event_of(m: &Mutation) -> Option<Event> {
    Some(match m {
        Mutation::Insert(task) => Event::Insert {
            id: task.id,
            nettable: task.body.idempotency_key.is_none(),
        },
        &Mutation::Remove { id } => Event::Remove(id),
        &Mutation::Patch { id, .. } | &Mutation::Succeed { id, .. } => Event::Touch(id),
        _ => return None,
    })
}

fn all_netted(events: &[Event], netted: &IdSet<TaskId>) -> bool {
    events
        .iter()
        .all(|e| matches!(e, Event::Insert { id, .. } if netted.contains(id)))
}

/// A received publish whose every task is netted (its events are its inserts), as
/// what the store still does of it; its tasks go into `gone`.
fn take_out(job: &JobSketch, events: &[Event], gone: &mut IdSet<TaskId>) -> NettedPublish {
    debug_assert!(events.iter().all(|e| matches!(e, Event::Insert { .. })));
    let (mut first, mut max_id) = (None, 0);
    for event in events {
        if let Event::Insert { id, .. } = *event {
            first.get_or_insert(id);
            max_id = max_id.max(id);
            gone.insert(id);
        }
    }
    debug_assert!(first.is_some(), "a publish inserts");
    NettedPublish {
        numbered: job.numbered.clone(),
        first: first.unwrap_or(max_id),
        created_ms: job.first_created_ms,
        tasks: u32::try_from(events.len()).unwrap_or(u32::MAX),
        max_id,
    }
}

/// `muts` without the removals of `gone` tasks, as a store job; `None` if nothing is
/// left.
fn without_gone(
    muts: &Arc<[Mutation]>,
    gone: &IdSet<TaskId>,
    payload_bytes: usize,
) -> Option<Muts> {
    let is_gone = |m: &Mutation| matches!(m, Mutation::Remove { id } if gone.contains(id));
    if gone.is_empty() || !muts.iter().any(is_gone) {
        return Some(Muts::shared(muts.clone(), payload_bytes));
    }
    let kept: Vec<Mutation> = muts.iter().filter(|m| !is_gone(m)).cloned().collect();
    (!kept.is_empty()).then(|| Muts::shared(kept.into(), payload_bytes))
}
