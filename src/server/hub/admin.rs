//! Queue administration in the hub, which owns the engine: reads are answered from the
//! engine at once; a change is planned by the engine without changing it, persisted
//! through the store writer, and applied to the engine and answered only once durable
//! (`done::AdminProgress`), one change at a time. Answers that need task data on disk
//! (peek payloads, the age of the oldest ready task) go as an [`AdminReply`] to the
//! connection's writer half, which reads the store. The hub never reads the store.
//! (The reader validates admin requests into an [`AdminOp`]: `conn/requests.rs`.)

use std::sync::Arc;

use tracing::info;

use super::state::Hub;
use crate::broker::{AdminChange, AdminError, AdminPlan, ConnId, QueueSnapshot, SubId};
use crate::model::{Millis, Mutation, TaskId};
use crate::server::done::{AdminProgress, Done};
use crate::server::msg::{
    AdminOp, AdminOutcome, AdminReply, ConnectionInfo, Failure, Outbound, PeekItem, QueueStatus,
    Reply, ReqId, HTTP_CONN,
};
use crate::store::Muts;

/// Most mutations per store job when an admin change touches many tasks: bounds the
/// memory of one batch; the answer waits for every chunk.
const CHUNK: usize = 8_192;
/// Reason given to subscribers of a deleted queue.
const REASON_DELETED: &str = "the queue was deleted by an operator";

mod req_kind {
    pub(super) const CHANGE: &str = "change";
    pub(super) const READ: &str = "read";
}

/// Routing error: `admin` sends reads and changes their own ways, so this is a bug.
fn not_a(kind: &str) -> AdminError {
    debug_assert!(false, "admin request routed as a {kind}");
    AdminError::Invalid {
        field: "operation",
        reason: format!("not a {kind}"),
    }
}

/// Whether `op` changes anything (then it is durable before it is applied, one at a
/// time); reads are answered at once from the engine.
fn is_change(op: &AdminOp) -> bool {
    !matches!(
        op,
        AdminOp::List { .. }
            | AdminOp::Get(_)
            | AdminOp::Peek { .. }
            | AdminOp::ListSchedules { .. }
    )
}

impl Hub {
    /// Answers one admin request from connection `conn`: a read at once, a change
    /// once the changes before it are done (at most one is in flight, so that plans
    /// never interleave).
    pub(super) fn admin(&mut self, conn: ConnId, req: u64, op: AdminOp, now: Millis) {
        if !is_change(&op) {
            return self.admin_read(conn, req, op, now);
        }
        self.admin_queue.waiting.push_back((conn, req, op));
        self.next_admin_change(now);
    }

    /// Starts the oldest waiting change if none is in flight.
    pub(super) fn next_admin_change(&mut self, now: Millis) {
        while !self.admin_queue.busy {
            let Some((conn, req, op)) = self.admin_queue.waiting.pop_front() else {
                return;
            };
            if Self::is_schedule_change(&op) {
                self.start_schedule_change(conn, req, op, now);
                continue;
            }
            match self.plan(op, now) {
                Ok(plan) => self.submit_plan(conn, req, plan),
                Err(e) => self.admin_error(conn, req, e),
            }
        }
    }

    fn plan(&self, op: AdminOp, now: Millis) -> Result<AdminPlan, AdminError> {
        match op {
            AdminOp::Configure(name, update) => self.engine.plan_configure(&name, &update),
            AdminOp::SetPaused(name, paused) => Ok(self.engine.plan_pause(&name, paused)),
            AdminOp::Purge { queue, state } => self.engine.plan_purge(&queue, state),
            AdminOp::Redrive { queue, limit } => self.engine.plan_redrive(&queue, limit, now),
            AdminOp::Delete(name) => self.engine.plan_delete(&name),
            AdminOp::List { .. }
            | AdminOp::Get(_)
            | AdminOp::Peek { .. }
            | AdminOp::ListSchedules { .. }
            | AdminOp::AddSchedule(_)
            | AdminOp::RemoveSchedule(_)
            | AdminOp::PauseSchedule(..) => Err(not_a(req_kind::CHANGE)),
        }
    }

    /// Persists a plan in chunks; the engine is not touched until they are durable.
    /// A destructive plan holds its queue (nothing is dispatched from it) meanwhile.
    fn submit_plan(&mut self, conn: ConnId, req: u64, plan: AdminPlan) {
        self.admin_queue.busy = true;
        if plan.is_destructive() {
            self.engine.hold_queue(&plan.queue, true);
        }
        let muts: Vec<Mutation> = plan.mutations().collect();
        let chunks = muts.len().div_ceil(CHUNK);
        let done = AdminProgress::new(self.me.clone(), conn, req, plan, chunks);
        let mut muts = muts.into_iter();
        for chunk in 0..chunks {
            let part: Vec<Mutation> = muts.by_ref().take(CHUNK).collect();
            self.writer
                .submit(Muts::Many(part), Some(Done::Admin(done.clone(), chunk)));
        }
        // With nothing to persist, dropping the last handle reports at once.
    }

    /// A change's store jobs completed: applies what is durable, answers, and starts
    /// the next change.
    pub(super) fn admin_durable(&mut self, outcome: AdminOutcome, now: Millis) {
        let AdminOutcome {
            conn,
            req,
            plan,
            durable,
            failure,
        } = outcome;
        let complete = durable.iter().all(|&d| d);
        // The tasks of the durable chunks (the last chunk of a delete also holds its
        // RemoveQueue; a configuration has no tasks).
        let done_tasks: Vec<TaskId> = plan
            .tasks
            .chunks(CHUNK)
            .zip(&durable)
            .filter(|(_, &d)| d)
            .flat_map(|(ids, _)| ids.iter().copied())
            .collect();
        let removes = matches!(plan.change, AdminChange::Purge | AdminChange::Delete);
        let removed = if removes {
            self.waiters.waited_among(&done_tasks)
        } else {
            Vec::new()
        };
        let applied = self.engine.apply_admin(&plan, &done_tasks, complete);
        if plan.is_destructive() {
            self.engine.hold_queue(&plan.queue, false);
        }
        let planned = plan.tasks.len();
        match (&plan.change, complete) {
            (AdminChange::Config(c), true) => {
                info!(queue = %plan.queue, paused = c.paused, "queue configuration changed")
            }
            (AdminChange::Delete, true) => {
                info!(queue = %plan.queue, tasks = applied.tasks, subscriptions = applied.ended.len(), "queue deleted");
                self.rates.forget(&plan.queue);
                self.end_subscriptions(&plan.queue, &applied.ended);
            }
            (change, _) => {
                info!(queue = %plan.queue, ?change, planned, durable = done_tasks.len(), applied = applied.tasks, "admin change applied")
            }
        }
        self.wake_removed(removed);
        // Re-reading the bounds walks every queue: only after changes that can move them.
        if matches!(plan.change, AdminChange::Config(_) | AdminChange::Delete) {
            self.bounded.refresh(&self.engine, self.default_max_length);
        }
        let reply = match failure.filter(|_| !complete) {
            Some(e) => {
                let what = if done_tasks.is_empty() {
                    "nothing was changed".to_owned()
                } else {
                    format!(
                        "{} of the {planned} tasks were changed before the failure (the rest were not)",
                        done_tasks.len()
                    )
                };
                Outbound::Reply {
                    req,
                    reply: Reply::Refused(Failure::Storage(format!("not persisted: {e}; {what}"))),
                }
            }
            None => match &plan.change {
                AdminChange::Config(_) => match self.engine.queue_snapshot(&plan.queue) {
                    Ok(s) => Outbound::Admin(self.single(req, s, now)),
                    Err(e) => Outbound::Reply {
                        req,
                        reply: Reply::Refused(Failure::Internal(e.to_string())),
                    },
                },
                _ => Outbound::Reply {
                    req,
                    reply: Reply::Count(done_tasks.len() as u64),
                },
            },
        };
        self.send(conn, reply);
        self.admin_queue.busy = false;
        self.next_admin_change(now);
    }

    fn admin_error(&self, conn: ConnId, req: ReqId, e: AdminError) {
        self.refuse(conn, req, Failure::Admin(e));
    }

    fn admin_read(&mut self, conn: ConnId, req: u64, op: AdminOp, now: Millis) {
        let result = match op {
            AdminOp::List { after, limit } => {
                let (page, more) = self.engine.queue_page(&after, limit);
                let queues = page.into_iter().map(|s| self.status(s, now)).collect();
                self.send_admin(
                    conn,
                    AdminReply::Queues {
                        req,
                        single: false,
                        queues,
                        more,
                    },
                );
                Ok(())
            }
            AdminOp::Get(name) => self.engine.queue_snapshot(&name).map(|s| {
                let reply = self.single(req, s, now);
                self.send_admin(conn, reply);
            }),
            AdminOp::Peek {
                queue,
                state,
                limit,
                preview,
            } => self.engine.peek(&queue, state, limit).map(|peeked| {
                let items = peeked
                    .into_iter()
                    .map(|peeked| PeekItem {
                        holder: peeked.lease.and_then(|l| self.holder(l.conn, l.sub)),
                        peeked,
                    })
                    .collect();
                self.send_admin(
                    conn,
                    AdminReply::Peek {
                        req,
                        items,
                        preview,
                    },
                );
            }),
            AdminOp::ListSchedules { after, limit } => {
                self.list_schedules(conn, req, &after, limit);
                Ok(())
            }
            _ => Err(not_a(req_kind::READ)),
        };
        if let Err(e) = result {
            self.admin_error(conn, req, e);
        }
    }

    /// Up to `limit` client connections by id (the HTTP side's own is not one), and
    /// how many more there are: O(connections + limit · log limit).
    pub(super) fn connections(&self, limit: usize) -> (Vec<ConnectionInfo>, u64) {
        let mut ids: Vec<ConnId> = self
            .names
            .keys()
            .copied()
            .filter(|&c| c != HTTP_CONN)
            .collect();
        let total = ids.len();
        if total > limit {
            ids.select_nth_unstable(limit);
            ids.truncate(limit);
        }
        ids.sort_unstable();
        let list = ids
            .into_iter()
            .filter_map(|conn| {
                let (name, peer) = self.names.get(&conn)?;
                Some(ConnectionInfo {
                    conn,
                    name: name.clone(),
                    peer: *peer,
                    subscriptions: self.engine.subscriptions_of(conn),
                })
            })
            .collect();
        (list, (total - total.min(limit)) as u64)
    }

    fn status(&self, snapshot: QueueSnapshot, now: Millis) -> QueueStatus {
        QueueStatus {
            rates: self.rates.rates(&snapshot.name, &snapshot.counters, now),
            oldest_ready: self.engine.oldest_ready(&snapshot.name),
            snapshot,
        }
    }

    fn single(&self, req: u64, snapshot: QueueSnapshot, now: Millis) -> AdminReply {
        AdminReply::Queues {
            req,
            single: true,
            queues: vec![self.status(snapshot, now)],
            more: false,
        }
    }

    fn holder(&self, conn: ConnId, sub: SubId) -> Option<Arc<str>> {
        let (name, peer) = self.names.get(&conn)?;
        Some(Arc::from(format!("conn {conn} sub {sub} {peer} {name}")))
    }

    fn send_admin(&self, conn: ConnId, reply: AdminReply) {
        self.send(conn, Outbound::Admin(reply));
    }

    /// Wakes the result waiters of removed tasks once the removals are durable: an
    /// empty job queued behind the removal chunks completes after them.
    fn wake_removed(&self, removed: Vec<TaskId>) {
        if removed.is_empty() {
            return;
        }
        let done = Done::Removed {
            tasks: removed,
            waiters: self.waiters.clone(),
        };
        self.writer.submit(Muts::Many(Vec::new()), Some(done));
    }

    /// Tells the connections of ended subscriptions that they are over.
    fn end_subscriptions(&self, queue: &str, ended: &[(ConnId, SubId)]) {
        for &(conn, sub) in ended {
            let ended = Outbound::SubscriptionEnded {
                sub,
                queue: queue.to_owned(),
                reason: REASON_DELETED,
            };
            self.send(conn, ended);
        }
    }
}
