//! What the store writer does once a job is durable (or failed): [`Done`], the
//! completion every server store job carries. It runs on the store writer's thread:
//! it confirms to the connection's outbox, tells the hub what is durable, wakes result
//! waiters, and for an ack that could not be stored, reads the task back ([`Restore`]).
//! It never touches a socket and never encodes protobuf: it sends domain replies. The
//! replies and the hub's notices of one group commit are gathered ([`Outbox`]) and sent
//! once at the group's end, one message per connection and one to the hub.

use std::cell::RefCell;
use std::sync::Arc;
use std::time::Instant;

use parking_lot::Mutex;
use squall_proto::ErrorCode;
use tracing::warn;

use super::msg::{
    AdminOutcome, CommittedPublish, Failure, Final, HubCmd, HubTx, OutTx, Outbound, PublishJob,
    Published, Reply, ReqId, Reservation, ScheduleChange, ScheduleOutcome, WeakHubTx,
};
use super::waiters::Waiters;
use crate::broker::{AdminPlan, Committed, ConnId};
use crate::cluster::replicate::{Applying, Signal};
use crate::model::{Millis, TaskId, TaskStatus};
use crate::store::{
    Completion, JobReport, SequenceRefusal, Store, StoreError, SweepStats, WriterHandle,
};

/// The store writer as the server uses it.
pub(crate) type StoreWriter = WriterHandle<Done>;

/// What the store writer does once a job is durable.
pub(crate) enum Done {
    /// Tell the hub the tasks exist, then confirm the publish.
    Publish(PublishJob),
    /// One of the store jobs (chunk number) of an admin change; the hub applies and
    /// answers it when all are done.
    Admin(Arc<AdminProgress>, usize),
    /// Confirm a change with `ok`.
    Reply { out: OutTx, req: ReqId, ok: Reply },
    /// A task reached its final state: confirm the settlement that did it (if a
    /// client waits for that), then wake whoever waits for the task's result.
    Finished {
        reply: Option<(OutTx, ReqId)>,
        task: TaskId,
        state: Final,
        waiters: Arc<Waiters>,
    },
    /// The acks one connection sent in one hub turn, stored as one job: confirm each
    /// and wake its task's result waiters; if the job is not stored, refuse each and
    /// give its task back to the hub (the ack is what dropped it from the engine).
    Acks {
        /// The connection's outbox (`None` once it has gone).
        out: Option<OutTx>,
        acks: Vec<AckDone>,
        waiters: Arc<Waiters>,
        restore: Arc<Restore>,
    },
    /// A barrier for a wait that found no record (see `conn/wait.rs`): look again.
    Recheck {
        out: OutTx,
        req: ReqId,
        task: TaskId,
    },
    /// Operator removals (purge, delete-queue) are durable: wake their result waiters.
    Removed {
        tasks: Vec<TaskId>,
        waiters: Arc<Waiters>,
    },
    /// A retention sweep finished.
    Swept {
        tx: tokio::sync::oneshot::Sender<Result<SweepStats, StoreError>>,
    },
    /// A schedule change (added, paused, resumed, removed): the hub applies and answers.
    Schedule {
        hub: WeakHubTx,
        conn: ConnId,
        req: ReqId,
        change: ScheduleChange,
    },
    /// A schedule's fire: the hub learns which of its tasks exist and moves it on.
    Fire {
        hub: WeakHubTx,
        schedule: Arc<str>,
        /// The fire's last tick (which fire of the schedule this is).
        tick: Millis,
        committed: Vec<Committed>,
    },
    /// Cluster mode: a committed entry applied by the state machine
    /// (`cluster/state.rs`): complete the proposer's job (`then`), then tell the state
    /// machine.
    Applied {
        then: Option<Box<Done>>,
        tell: Signal,
        /// A committed entry's job (durable on a majority's Raft log), not a barrier.
        replicated: bool,
    },
}

impl Applying for Done {
    fn applying(then: Option<Done>, tell: Signal) -> Done {
        Done::Applied {
            then: then.map(Box::new),
            tell,
            replicated: true,
        }
    }

    fn barrier(tell: Signal) -> Done {
        Done::Applied {
            then: None,
            tell,
            replicated: false,
        }
    }
}

impl std::fmt::Debug for Done {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = match self {
            Done::Publish(_) => "Publish",
            Done::Admin(..) => "Admin",
            Done::Reply { .. } => "Reply",
            Done::Finished { .. } => "Finished",
            Done::Acks { .. } => "Acks",
            Done::Recheck { .. } => "Recheck",
            Done::Removed { .. } => "Removed",
            Done::Swept { .. } => "Swept",
            Done::Schedule { .. } => "Schedule",
            Done::Fire { .. } => "Fire",
            Done::Applied { .. } => "Applied",
        };
        f.debug_tuple("Done").field(&kind).finish()
    }
}

/// What the submitter of a job whose committed entry this member's store failed to
/// apply is told (found by `tests/replication_power.rs`: a power cut of the leader's
/// disk answered `STORAGE`, "nothing applied", for publishes the cluster then
/// delivered).
fn committed_not_applied(e: &StoreError) -> StoreError {
    StoreError::NotLeader(Arc::from(format!(
        "the change was committed to the cluster's log but this node could not apply it \
         ({e}) and stops leading; its outcome is unknown"
    )))
}

/// The refusal of a change the store could not persist.
fn not_persisted(e: &StoreError) -> Reply {
    match e {
        // Cluster mode: this node was not (or stopped being) the leader.
        StoreError::NotLeader(why) => {
            Reply::Refused(Failure::Protocol(ErrorCode::NotLeader, why.to_string()))
        }
        e => Reply::Refused(Failure::Storage(format!("not persisted: {e}"))),
    }
}

/// What the completions of one group commit send, gathered on the writer's thread
/// while [`Done::in_group`] runs them and sent at its end: one message to each
/// connection (its answers in request order) and one to the hub (the published tasks,
/// in order, before the answers that confirm them, as one by one), instead of one per
/// job. Each message is a hand-off between threads: a wake-up, and on another core
/// cache lines that move.
#[derive(Default)]
struct Outbox {
    committed: Vec<(HubTx, Vec<CommittedPublish>)>,
    replies: Vec<(OutTx, Vec<(ReqId, Reply)>)>,
    /// When the group's completions run, read once for all of them.
    now: Option<Instant>,
}

/// The time a completion runs: the group's (one clock read per group) on the writer
/// thread inside a group, else now.
fn completed_at() -> Instant {
    OUTBOX.with_borrow_mut(|outbox| match outbox {
        Some(outbox) => *outbox.now.get_or_insert_with(Instant::now),
        None => Instant::now(),
    })
}

thread_local! {
    /// The writer thread's outbox while it completes a group; `None` elsewhere (a
    /// completion run on another thread, dropped or refused, sends at once).
    static OUTBOX: RefCell<Option<Outbox>> = const { RefCell::new(None) };
}

impl Outbox {
    fn send(self) {
        for (hub, all) in self.committed {
            debug_assert!(!all.is_empty());
            let _ = hub.send(HubCmd::CommittedMany(all));
        }
        for (out, mut replies) in self.replies {
            debug_assert!(!replies.is_empty());
            let _ = match replies.len() {
                1 => {
                    let (req, reply) = replies.pop().expect("one");
                    out.send(Outbound::Reply { req, reply })
                }
                _ => out.send(Outbound::Replies(replies)),
            };
        }
    }
}

/// Sends `reply` to `out`, or gathers it if a group is being completed.
fn send_reply(out: OutTx, req: ReqId, reply: Reply) {
    let unsent = OUTBOX.with_borrow_mut(|outbox| match outbox {
        Some(outbox) => {
            // Few connections per group: the last ones first.
            match outbox
                .replies
                .iter_mut()
                .rev()
                .find(|(o, _)| o.same_channel(&out))
            {
                Some((_, replies)) => replies.push((req, reply)),
                None => outbox.replies.push((out, vec![(req, reply)])),
            }
            None
        }
        None => Some((out, reply)),
    });
    if let Some((out, reply)) = unsent {
        let _ = out.send(Outbound::Reply { req, reply });
    }
}

/// Tells the hub that `committed` exist, or gathers it if a group is being completed.
fn send_committed(hub: &HubTx, committed: Vec<Committed>, reservation: Option<Reservation>) {
    let unsent = OUTBOX.with_borrow_mut(|outbox| match outbox {
        Some(outbox) => {
            match outbox
                .committed
                .iter_mut()
                .find(|(h, _)| h.same_channel(hub))
            {
                Some((_, all)) => all.push((committed, reservation)),
                None => outbox
                    .committed
                    .push((hub.clone(), vec![(committed, reservation)])),
            }
            None
        }
        None => Some((committed, reservation)),
    });
    if let Some((committed, reservation)) = unsent {
        let _ = hub.send(HubCmd::Committed(committed, reservation));
    }
}

/// Sends what the outbox holds when the group's completions end, even by a panic.
struct SendOutbox;

impl Drop for SendOutbox {
    fn drop(&mut self) {
        if let Some(outbox) = OUTBOX.with_borrow_mut(Option::take) {
            outbox.send();
        }
    }
}

impl Completion for Done {
    fn complete(self, result: Result<(), StoreError>) {
        self.complete_with(result, JobReport::default());
    }

    fn in_group(complete: impl FnOnce()) {
        let opened = OUTBOX.with_borrow_mut(|outbox| {
            let open = outbox.is_none();
            if open {
                *outbox = Some(Outbox::default());
            }
            open
        });
        debug_assert!(opened, "groups are not completed inside one another");
        let _send = opened.then_some(SendOutbox);
        complete();
    }

    fn durable_elsewhere(&self) -> bool {
        matches!(
            self,
            Done::Applied {
                replicated: true,
                ..
            }
        )
    }

    fn complete_with(self, result: Result<(), StoreError>, report: JobReport<'_>) {
        let (out, req, reply) = match (self, result) {
            (
                Done::Applied {
                    then,
                    tell,
                    replicated,
                },
                result,
            ) => {
                if let Some(then) = then {
                    // A replicated job's entry is committed: a store that fails it here
                    // does not undo it (the other members apply it, and this one at
                    // restart), so its submitter is told that the outcome is unknown,
                    // never that nothing was applied.
                    let told = match &result {
                        Err(e) if replicated => Err(committed_not_applied(e)),
                        _ => result.clone(),
                    };
                    then.complete_with(told, report);
                }
                return tell.tell(result);
            }
            (Done::Admin(done, chunk), result) => return done.record(chunk, result),
            (Done::Publish(job), Ok(())) => {
                let PublishJob {
                    out,
                    req,
                    hub,
                    committed,
                    timer,
                    reservation,
                } = job;
                timer.observe_at(completed_at());
                let reply = confirm_publish(&hub, committed, reservation, report);
                (out, req, reply)
            }
            (Done::Publish(job), Err(e)) => {
                if let Some(r) = job.reservation {
                    let _ = job.hub.send(HubCmd::Release(r));
                }
                (job.out, job.req, not_persisted(&e))
            }
            (Done::Reply { out, req, ok }, Ok(())) => (out, req, ok),
            (
                Done::Finished {
                    reply,
                    task,
                    state,
                    waiters,
                },
                Ok(()),
            ) => {
                waiters.wake(task, state);
                let Some((out, req)) = reply else { return };
                (out, req, Reply::Ok)
            }
            (
                Done::Acks {
                    out,
                    acks,
                    waiters,
                    restore,
                },
                result,
            ) => {
                for AckDone {
                    req,
                    task,
                    attempts,
                } in acks
                {
                    let reply = match &result {
                        Ok(()) => {
                            waiters.wake(task, Final::Succeeded);
                            Reply::Ok
                        }
                        Err(e) => {
                            restore.give_back(task, attempts);
                            not_persisted(e)
                        }
                    };
                    if let Some(out) = &out {
                        send_reply(out.clone(), req, reply);
                    }
                }
                return;
            }
            (Done::Recheck { out, req, task }, _) => {
                let _ = out.send(Outbound::Recheck { req, task });
                return;
            }
            (Done::Removed { tasks, waiters }, _) => {
                // Each waiter reads the store for its answer: "unknown" once removed,
                // the task's real state if a removal failed.
                for task in tasks {
                    waiters.wake(task, Final::Removed);
                }
                return;
            }
            (
                Done::Schedule {
                    hub,
                    conn,
                    req,
                    change,
                },
                result,
            ) => {
                let outcome = ScheduleOutcome {
                    conn,
                    req,
                    change,
                    result,
                };
                if let Some(hub) = hub.upgrade() {
                    let _ = hub.send(HubCmd::ScheduleDurable(Box::new(outcome)));
                }
                return;
            }
            (
                Done::Fire {
                    hub,
                    schedule,
                    tick,
                    mut committed,
                },
                result,
            ) => {
                let stored = result.is_ok();
                if stored {
                    drop_duplicates(&mut committed, report.duplicates);
                }
                if let Some(hub) = hub.upgrade() {
                    let _ = hub.send(HubCmd::FireDone {
                        schedule,
                        tick,
                        stored,
                        committed,
                    });
                }
                return;
            }
            (Done::Swept { tx }, result) => {
                let _ = tx.send(result.map(|()| report.sweep.cloned().unwrap_or_default()));
                return;
            }
            (Done::Finished { reply, .. }, Err(e)) => {
                let Some((out, req)) = reply else { return };
                (out, req, not_persisted(&e))
            }
            (Done::Reply { out, req, .. }, Err(e)) => (out, req, not_persisted(&e)),
        };
        send_reply(out, req, reply);
    }
}

/// Tells the hub which published tasks exist (not the duplicates, which the store did
/// not insert) and builds the publish confirmation.
fn confirm_publish(
    hub: &HubTx,
    mut committed: Vec<Committed>,
    reservation: Option<Reservation>,
    report: JobReport<'_>,
) -> Reply {
    if let Some(refusal) = report.refused {
        // Nothing of the publish was stored.
        if let Some(r) = reservation {
            let _ = hub.send(HubCmd::Release(r));
        }
        return Reply::Refused(sequence_refused(refusal));
    }
    let mut dups = report.duplicates.iter().peekable();
    let tasks = committed
        .iter()
        .enumerate()
        .map(|(i, c)| match dups.next_if(|d| d.index == i) {
            Some(d) => Published {
                task_id: d.original,
                duplicate: true,
            },
            None => Published {
                task_id: c.id,
                duplicate: false,
            },
        })
        .collect();
    drop_duplicates(&mut committed, report.duplicates);
    if !committed.is_empty() || reservation.is_some() {
        send_committed(hub, committed, reservation);
    }
    Reply::Published(tasks)
}

fn sequence_refused(refusal: SequenceRefusal) -> Failure {
    match refusal {
        SequenceRefusal::TooOld { floor } => Failure::Protocol(
            ErrorCode::SequenceTooOld,
            format!(
                "the producer's numbers below {floor} are no longer remembered: this publish \
                 stored nothing, but an earlier send of the same number may have"
            ),
        ),
        SequenceRefusal::Reused { tasks } => Failure::Protocol(
            ErrorCode::BadRequest,
            format!(
                "this producer number was used by an earlier publish of {tasks} task(s); \
                 nothing was stored"
            ),
        ),
    }
}

/// Keeps the tasks the store really inserted: `duplicates` are indexes into the job's
/// mutations, whose inserts come first, in the order of `committed`.
fn drop_duplicates(committed: &mut Vec<Committed>, duplicates: &[crate::store::Duplicate]) {
    if duplicates.is_empty() {
        return;
    }
    let mut i = 0;
    let mut dups = duplicates.iter().peekable();
    committed.retain(|_| {
        let dup = dups.next_if(|d| d.index == i).is_some();
        i += 1;
        !dup
    });
}

/// One ack of a [`Done::Acks`] job.
pub(crate) struct AckDone {
    pub(crate) req: ReqId,
    pub(crate) task: TaskId,
    /// The attempt count of the delivery it settled (`Restore::give_back`).
    pub(crate) attempts: u32,
}

/// An ack that could not be stored (the journal could not write) left the task in the
/// store as pending, but the engine dropped it when the ack came in: without this it
/// would be delivered again only after a restart. Runs on the writer thread, which may
/// read the store, and hands the stored state back to the hub.
pub(crate) struct Restore {
    pub(crate) store: Store,
    pub(crate) hub: WeakHubTx,
}

impl Restore {
    /// Hands `task`'s stored state back, counting at least `attempts` (the settled
    /// delivery's count, which the store may not hold yet: it is written with the
    /// next settlement or once the next lease lasts).
    fn give_back(&self, task: TaskId, attempts: u32) {
        let state = match self.store.get_state(task) {
            Ok(Some(mut state)) if state.status == TaskStatus::Pending => {
                state.attempts = state.attempts.max(attempts);
                state
            }
            Ok(_) => return,
            Err(error) => {
                warn!(task, %error, "an unstored ack's task could not be read back; it returns at the next restart");
                return;
            }
        };
        if let Some(hub) = self.hub.upgrade() {
            let _ = hub.send(HubCmd::Restore { task, state });
        }
    }
}

/// The completion of an admin change that may span several store jobs (chunks): each
/// job holds a clone and records its outcome; when the last clone is dropped (every
/// job completed) the outcome goes back to the hub, which applies what is durable to
/// the engine and answers (`hub/admin.rs`).
pub(crate) struct AdminProgress {
    hub: WeakHubTx,
    outcome: Mutex<Option<AdminOutcome>>,
}

impl AdminProgress {
    pub(crate) fn new(
        hub: WeakHubTx,
        conn: ConnId,
        req: ReqId,
        plan: AdminPlan,
        chunks: usize,
    ) -> Arc<AdminProgress> {
        Arc::new(AdminProgress {
            hub,
            outcome: Mutex::new(Some(AdminOutcome {
                conn,
                req,
                plan,
                durable: vec![false; chunks],
                failure: None,
            })),
        })
    }

    /// Called by the store writer for each job.
    fn record(&self, chunk: usize, result: Result<(), StoreError>) {
        let mut outcome = self.outcome.lock();
        let Some(o) = outcome.as_mut() else { return };
        match result {
            Ok(()) => {
                if let Some(d) = o.durable.get_mut(chunk) {
                    *d = true;
                }
            }
            Err(e) => {
                o.failure.get_or_insert(e);
            }
        }
    }
}

impl Drop for AdminProgress {
    fn drop(&mut self) {
        let Some(outcome) = self.outcome.lock().take() else {
            return;
        };
        // With the hub gone (shutdown) there is nobody to apply or answer: what is
        // durable comes back at the next start.
        if let Some(hub) = self.hub.upgrade() {
            let _ = hub.send(HubCmd::AdminDurable(Box::new(outcome)));
        }
    }
}

impl std::fmt::Debug for AdminProgress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminProgress").finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use tokio::sync::{mpsc, oneshot};

    use super::*;

    fn reply(out: &OutTx, req: ReqId) -> Done {
        Done::Reply {
            out: out.clone(),
            req,
            ok: Reply::Ok,
        }
    }

    fn reqs(message: Outbound) -> Vec<ReqId> {
        match message {
            Outbound::Reply { req, .. } => vec![req],
            Outbound::Replies(replies) => replies.into_iter().map(|(req, _)| req).collect(),
            _ => panic!("not an answer"),
        }
    }

    /// A group's answers reach each connection as one message, in request order, once
    /// the group is completed; outside a group, at once. Even a completion that panics
    /// does not lose what the group gathered before it.
    #[test]
    fn a_groups_answers_reach_each_connection_together_in_order() {
        let (a, mut rx_a) = mpsc::unbounded_channel();
        let (b, mut rx_b) = mpsc::unbounded_channel();
        Done::in_group(|| {
            reply(&a, 1).complete(Ok(()));
            reply(&b, 2).complete(Ok(()));
            reply(&a, 3).complete(Ok(()));
            assert!(
                rx_a.try_recv().is_err(),
                "nothing sent before the group ends"
            );
            reply(&a, 4).complete(Err(StoreError::Closed));
        });
        assert_eq!(reqs(rx_a.try_recv().unwrap()), vec![1, 3, 4]);
        assert!(rx_a.try_recv().is_err(), "one message");
        assert_eq!(reqs(rx_b.try_recv().unwrap()), vec![2]);
        reply(&a, 5).complete(Ok(()));
        assert_eq!(reqs(rx_a.try_recv().unwrap()), vec![5]);

        let panicked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            Done::in_group(|| {
                reply(&b, 6).complete(Ok(()));
                panic!("a completion failed");
            })
        }));
        assert!(panicked.is_err());
        assert_eq!(reqs(rx_b.try_recv().unwrap()), vec![6]);
        reply(&b, 7).complete(Ok(()));
        assert_eq!(reqs(rx_b.try_recv().unwrap()), vec![7], "the group ended");
    }

    /// What the submitter of a job is told when this member's store fails it.
    fn told(replicated: bool, error: StoreError) -> Reply {
        let (out, mut rx) = mpsc::unbounded_channel();
        let (tx, told) = oneshot::channel();
        let then = Done::Reply {
            out,
            req: 7,
            ok: Reply::Ok,
        };
        Done::Applied {
            then: Some(Box::new(then)),
            tell: Signal::Once(tx),
            replicated,
        }
        .complete(Err(error));
        assert!(
            told.blocking_recv().unwrap().is_err(),
            "the state machine hears the failure"
        );
        match rx.try_recv().expect("an answer") {
            Outbound::Reply { req: 7, reply } => reply,
            _ => panic!("not the answer to request 7"),
        }
    }

    /// A committed entry's job that the store fails is of unknown outcome to its
    /// submitter (`NOT_LEADER`, which the clients treat so), never `STORAGE` (nothing
    /// applied): the other members apply it. Negative control: passing the store's
    /// error through (as before) answers `STORAGE` and fails the first assertion.
    #[test]
    fn a_committed_job_the_store_fails_is_of_unknown_outcome() {
        match told(true, StoreError::Closed) {
            Reply::Refused(Failure::Protocol(ErrorCode::NotLeader, why)) => {
                assert!(why.contains("outcome is unknown"), "{why}");
            }
            other => panic!("{other:?}"),
        }
        // A barrier's or a single node's job: the store's error as it is.
        match told(false, StoreError::Closed) {
            Reply::Refused(Failure::Storage(why)) => assert!(why.contains("shut down"), "{why}"),
            other => panic!("{other:?}"),
        }
    }
}
