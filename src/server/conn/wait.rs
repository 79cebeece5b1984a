//! The waits (`WaitResult`) of one connection, kept by its writer half: registering
//! in the shared [`Waiters`] registry, checking the store after registering (so a task
//! that finished before the wait began is answered at once), answering wake-ups, and
//! timing out. Produces domain replies; the writer half encodes and sends them. No
//! socket I/O here.
//!
//! Order matters for correctness: a wait registers *before* it reads the store, and the
//! store writer wakes waiters only *after* the finishing mutation is durable, so a wait
//! either sees the final state or is woken. Whoever claims the waiter answers it.

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use squall_proto::ErrorCode;
use tokio::time::Instant;
use tracing::warn;

use super::shared::Shared;
use crate::broker::ConnId;
use crate::model::TaskId;
use crate::server::clock::now_ms;
use crate::server::done::Done;
use crate::server::msg::{Failure, Final, HubCmd, Reply, ReqId, TaskPhase, WeakOutTx};
use crate::server::reads::{task_report, wait_is_over};
use crate::store::Muts;

/// Longest wait the broker holds; a longer one answers with the current status when
/// this passes (the client waits again if it wants).
pub(crate) const MAX_WAIT_MS: u64 = 3_600_000;
/// Most waits outstanding on one connection; more are refused with TOO_MANY_REQUESTS.
pub(crate) const MAX_WAITS_PER_CONNECTION: usize = 10_000;

/// The outstanding waits of one connection.
pub(crate) struct Waits {
    conn: ConnId,
    out: WeakOutTx,
    pending: HashMap<u64, (TaskId, Instant)>,
    timers: BTreeSet<(Instant, u64)>,
}

impl Waits {
    pub(crate) fn new(conn: ConnId, out: WeakOutTx) -> Waits {
        Waits {
            conn,
            out,
            pending: HashMap::new(),
            timers: BTreeSet::new(),
        }
    }

    /// A new wait: answers at once if the task is already final or unknown to
    /// the broker, else waits for a wake-up or the timeout.
    pub(crate) fn start(
        &mut self,
        shared: &Shared,
        req: u64,
        task: TaskId,
        timeout_ms: u64,
    ) -> Option<Reply> {
        if self.pending.len() >= MAX_WAITS_PER_CONNECTION {
            return Some(Reply::Refused(Failure::Protocol(
                ErrorCode::TooManyRequests,
                format!("this connection already waits for {MAX_WAITS_PER_CONNECTION} results; wait for fewer at once"),
            )));
        }
        if self.pending.contains_key(&req) {
            return Some(Reply::Refused(Failure::Protocol(
                ErrorCode::BadRequest,
                format!("request id {req} is already waiting on this connection"),
            )));
        }
        let deadline = Instant::now() + Duration::from_millis(timeout_ms.min(MAX_WAIT_MS));
        shared
            .waiters
            .register(task, self.conn, req, self.out.clone());
        self.pending.insert(req, (task, deadline));
        self.timers.insert((deadline, req));
        self.check(shared, req, task, true)
    }

    /// Reads the store after registering: a final task is answered (if this side
    /// claims the waiter); an unknown one is looked at again once everything the
    /// writer had in hand is completed, since an ack that removes the task may have
    /// applied but not woken its waiters yet.
    fn check(&mut self, shared: &Shared, req: u64, task: TaskId, first: bool) -> Option<Reply> {
        let report = match task_report(&shared.store, task, None, None, now_ms()) {
            Ok(report) => report,
            Err(e) => {
                return self.claim(shared, req, task).then(|| unreadable(task, &e));
            }
        };
        if !wait_is_over(&report) {
            return None;
        }
        let unknown = report.state == TaskPhase::Unknown;
        if unknown && first {
            if let Some(out) = self.out.upgrade() {
                let done = Done::Recheck { out, req, task };
                shared.writer.submit(Muts::Many(Vec::new()), Some(done));
                return None;
            }
        }
        self.claim(shared, req, task)
            .then(|| Reply::Task(Box::new(report)))
    }

    /// The barrier submitted by [`check`](Self::check) completed.
    pub(crate) fn recheck(&mut self, shared: &Shared, req: u64, task: TaskId) -> Option<Reply> {
        if !self.pending.contains_key(&req) {
            return None;
        }
        self.check(shared, req, task, false)
    }

    /// The store writer woke this wait: the task is final and durable.
    pub(crate) fn woken(&mut self, shared: &Shared, req: u64, task: TaskId, state: Final) -> Reply {
        self.forget(req);
        match task_report(&shared.store, task, None, Some(state), now_ms()) {
            Ok(report) => Reply::Task(Box::new(report)),
            Err(e) => unreadable(task, &e),
        }
    }

    /// When the next wait times out.
    pub(crate) fn next_deadline(&self) -> Option<Instant> {
        self.timers.first().map(|(at, _)| *at)
    }

    /// Ends the waits whose time is up: each is answered with the task's current status
    /// (through the hub, which knows the lease), unless a wake-up claimed it first.
    pub(crate) fn expire(
        &mut self,
        shared: &Shared,
        now: Instant,
        answers: &mut Vec<(ReqId, Reply)>,
    ) {
        while let Some(&(at, req)) = self.timers.first() {
            if at > now {
                break;
            }
            self.timers.pop_first();
            let Some(&(task, deadline)) = self.pending.get(&req) else {
                continue;
            };
            if deadline != at || !self.claim(shared, req, task) {
                continue;
            }
            let asked = shared.hub.send(HubCmd::GetTask {
                conn: self.conn,
                req,
                task,
            });
            if asked.is_err() {
                let reply = match task_report(&shared.store, task, None, None, now_ms()) {
                    Ok(report) => Reply::Task(Box::new(report)),
                    Err(e) => Reply::Refused(Failure::Storage(e.to_string())),
                };
                answers.push((req, reply));
            }
        }
    }

    /// The connection is ending: its waits leave the registry unanswered.
    pub(crate) fn release_all(&mut self, shared: &Shared) {
        for (req, (task, _)) in self.pending.drain() {
            shared.waiters.claim(task, self.conn, req);
        }
        self.timers.clear();
    }

    fn claim(&mut self, shared: &Shared, req: u64, task: TaskId) -> bool {
        let claimed = shared.waiters.claim(task, self.conn, req);
        if claimed {
            self.forget(req);
        }
        claimed
    }

    fn forget(&mut self, req: u64) {
        if let Some((_, deadline)) = self.pending.remove(&req) {
            self.timers.remove(&(deadline, req));
        } else {
            warn!(
                conn = self.conn,
                req, "answer for a wait this connection does not hold"
            );
        }
    }
}

/// The answer when the task's record cannot be read.
pub(crate) fn unreadable(task: TaskId, e: &crate::store::StoreError) -> Reply {
    Reply::Refused(Failure::Storage(format!("cannot read task {task}: {e}")))
}
