//! Queue administration in the server, in three steps that follow the data:
//! 1. the connection reader validates an admin request into an [`AdminOp`] (`parse`);
//! 2. the hub, which owns the engine, answers it (`impl Hub` below): reads come from
//!    the engine, changes are applied to the engine and persisted through the store
//!    writer, and the answer is sent only once they are durable ([`AdminDone`]);
//! 3. answers that need task data on disk (peek payloads, the age of the oldest ready
//!    task) travel as an [`AdminReply`] to the connection's writer half, which reads
//!    the store and encodes the response. The hub never reads the store.

use std::sync::Arc;

use parking_lot::Mutex;
use squall_proto::v1::{self, request::Op, response};
use squall_proto::ErrorCode;
use tracing::info;

use super::connection::{error_response, OutTx, Outbound};
use super::hub::Hub;
use super::now_ms;
use super::rates::RateView;
use super::Done;
use crate::broker::{
    AdminError, ConnId, Peeked, QueueConfigUpdate, QueueSnapshot, SubId, TaskView,
};
use crate::model::{Millis, Mutation, QueueConfig, TaskId};
use crate::store::{Muts, Store, StoreError};

/// Peek size when the request names none.
pub(crate) const DEFAULT_PEEK: usize = 20;
/// Most mutations per store job when an admin change touches many tasks: bounds the
/// memory of one batch; the answer waits for every chunk.
const CHUNK: usize = 8_192;
/// Reason given to subscribers of a deleted queue.
const REASON_DELETED: &str = "the queue was deleted by an operator";

/// A validated administrative request.
#[derive(Debug)]
pub(crate) enum AdminOp {
    List,
    Get(String),
    Configure(String, QueueConfigUpdate),
    SetPaused(String, bool),
    Peek {
        queue: String,
        state: TaskView,
        limit: usize,
    },
    Purge {
        queue: String,
        state: Option<TaskView>,
    },
    Redrive {
        queue: String,
        limit: Option<usize>,
    },
    Delete(String),
}

/// Validates an admin request on the connection reader (cheap checks only: names and
/// enums; the hub checks configuration values against the queue's current ones).
pub(crate) fn parse(op: Op) -> Result<AdminOp, (ErrorCode, String)> {
    let op = match op {
        Op::ListQueues(_) => AdminOp::List,
        Op::GetQueue(g) => AdminOp::Get(queue_name(g.queue)?),
        Op::SetQueueConfig(c) => AdminOp::Configure(
            queue_name(c.queue)?,
            QueueConfigUpdate {
                lease_ms: c.lease_ms,
                max_attempts: c.max_attempts,
                backoff_min_ms: c.backoff_min_ms,
                backoff_max_ms: c.backoff_max_ms,
                max_length: c.max_length,
                result_ttl_ms: c.result_ttl_ms,
                dedup_window_ms: c.dedup_window_ms,
            },
        ),
        Op::SetPaused(p) => AdminOp::SetPaused(queue_name(p.queue)?, p.paused),
        Op::Peek(p) => AdminOp::Peek {
            queue: queue_name(p.queue)?,
            state: state_filter(p.state)?.unwrap_or(TaskView::Ready),
            limit: match p.limit {
                0 => DEFAULT_PEEK,
                n => n as usize,
            },
        },
        Op::Purge(p) => AdminOp::Purge {
            queue: queue_name(p.queue)?,
            state: state_filter(p.state)?,
        },
        Op::Redrive(r) => AdminOp::Redrive {
            queue: queue_name(r.queue)?,
            limit: (r.limit > 0).then_some(r.limit as usize),
        },
        Op::DeleteQueue(d) => AdminOp::Delete(queue_name(d.queue)?),
        other => {
            return Err((
                ErrorCode::Internal,
                format!("not an admin operation: {other:?}"),
            ))
        }
    };
    Ok(op)
}

fn queue_name(name: String) -> Result<String, (ErrorCode, String)> {
    squall_proto::validate_queue_name(&name)
        .map_err(|e| (ErrorCode::InvalidQueueName, e.to_string()))?;
    Ok(name)
}

fn state_filter(raw: i32) -> Result<Option<TaskView>, (ErrorCode, String)> {
    use v1::TaskStateFilter as F;
    match F::try_from(raw) {
        Ok(F::Unspecified) => Ok(None),
        Ok(F::Ready) => Ok(Some(TaskView::Ready)),
        Ok(F::Delayed) => Ok(Some(TaskView::Delayed)),
        Ok(F::Leased) => Ok(Some(TaskView::Leased)),
        Ok(F::Dead) => Ok(Some(TaskView::Dead)),
        Err(_) => Err((
            ErrorCode::BadRequest,
            format!("unknown task state {raw}; expected ready, delayed, leased or dead"),
        )),
    }
}

fn wire_state(s: TaskView) -> v1::TaskStateFilter {
    match s {
        TaskView::Ready => v1::TaskStateFilter::Ready,
        TaskView::Delayed => v1::TaskStateFilter::Delayed,
        TaskView::Leased => v1::TaskStateFilter::Leased,
        TaskView::Dead => v1::TaskStateFilter::Dead,
    }
}

/// One queue as the hub sees it: the engine's snapshot, its rates and the id of its
/// oldest ready task (whose age is read from the store by whoever encodes it).
#[derive(Debug, Clone)]
pub(crate) struct QueueStatus {
    pub(crate) snapshot: QueueSnapshot,
    pub(crate) rates: RateView,
    pub(crate) oldest_ready: Option<TaskId>,
}

impl QueueStatus {
    /// Age of the oldest ready task from its stored creation time; one small read.
    pub(crate) fn oldest_ready_age_ms(&self, store: &Store, now: Millis) -> Option<u64> {
        let id = self.oldest_ready?;
        match store.get_state(id) {
            Ok(Some(state)) => Some(now.saturating_sub(state.created_ms)),
            // Settled meanwhile, or unreadable: no age rather than a wrong one.
            _ => None,
        }
    }
}

/// A peeked task and, when leased, a description of its holder.
#[derive(Debug)]
pub(crate) struct PeekItem {
    peeked: Peeked,
    holder: Option<Arc<str>>,
}

/// An answer that the connection's writer half completes with store reads.
#[derive(Debug)]
pub(crate) enum AdminReply {
    /// ListQueues (`single == false`) or one queue (GetQueue, SetQueueConfig, SetPaused).
    Queues {
        req: u64,
        single: bool,
        queues: Vec<QueueStatus>,
    },
    Peek {
        req: u64,
        items: Vec<PeekItem>,
    },
}

impl AdminReply {
    /// Reads what the answer needs from the store and builds the response.
    pub(crate) fn into_response(self, store: &Store) -> v1::Response {
        let now = now_ms();
        let (id, result) = match self {
            AdminReply::Queues {
                req,
                single: true,
                mut queues,
            } => match queues.pop() {
                Some(q) => (req, response::Result::Queue(queue_info(&q, store, now))),
                None => return error_response(req, ErrorCode::Internal, "no queue to report"),
            },
            AdminReply::Queues { req, queues, .. } => (
                req,
                response::Result::Queues(v1::QueueList {
                    queues: queues.iter().map(|q| queue_info(q, store, now)).collect(),
                }),
            ),
            AdminReply::Peek { req, items } => {
                let mut tasks = Vec::with_capacity(items.len());
                for item in items {
                    match peeked_task(item, store) {
                        Ok(Some(t)) => tasks.push(t),
                        // Settled or removed since the hub looked: skip it.
                        Ok(None) => {}
                        Err(e) => {
                            return error_response(
                                req,
                                ErrorCode::Storage,
                                format!("cannot read a peeked task: {e}"),
                            )
                        }
                    }
                }
                (req, response::Result::Peek(v1::PeekOk { tasks }))
            }
        };
        v1::Response {
            id,
            result: Some(result),
        }
    }
}

fn queue_info(q: &QueueStatus, store: &Store, now: Millis) -> v1::QueueInfo {
    let s = &q.snapshot;
    let c = &s.counters;
    let r = &q.rates;
    v1::QueueInfo {
        name: s.name.to_string(),
        ready: s.ready,
        delayed: s.delayed,
        leased: s.leased,
        dead: s.dead,
        consumers: s.consumers,
        published: c.published,
        delivered: c.delivered,
        acked: c.acked,
        nacked: c.nacked,
        expired: c.expired,
        dead_lettered: c.dead_lettered,
        redelivered: c.redelivered,
        rates: Some(v1::QueueRates {
            published: r.published,
            delivered: r.delivered,
            acked: r.acked,
            nacked: r.nacked,
            expired: r.expired,
            dead_lettered: r.dead_lettered,
        }),
        oldest_ready_age_ms: q.oldest_ready_age_ms(store, now),
        paused: s.config.paused,
        config: Some(settings(&s.config)),
    }
}

fn settings(c: &QueueConfig) -> v1::QueueSettings {
    v1::QueueSettings {
        lease_ms: c.lease_ms,
        max_attempts: c.max_attempts,
        backoff_min_ms: c.backoff_min_ms,
        backoff_max_ms: c.backoff_max_ms,
        max_length: c.max_length,
        result_ttl_ms: c.result_ttl_ms,
        dedup_window_ms: c.dedup_window_ms,
        paused: c.paused,
    }
}

fn peeked_task(item: PeekItem, store: &Store) -> Result<Option<v1::PeekedTask>, StoreError> {
    let p = item.peeked;
    let Some(state) = store.get_state(p.id)? else {
        return Ok(None);
    };
    let body = store.get_body(p.id)?.unwrap_or_default();
    let lease = p.lease;
    Ok(Some(v1::PeekedTask {
        task_id: p.id,
        state: wire_state(p.state) as i32,
        priority: p.priority,
        attempts: p.attempts,
        max_attempts: p.max_attempts,
        created_at_ms: state.created_ms,
        updated_at_ms: state.updated_ms,
        not_before_ms: p.not_before_ms,
        lease_holder: item.holder.map(|h| h.to_string()).unwrap_or_default(),
        lease_deadline_ms: lease.map_or(0, |l| l.deadline_ms),
        last_error: state.last_error.unwrap_or_default(),
        payload: body.payload,
        headers: body.headers.into_iter().collect(),
    }))
}

/// The completion of an admin change that may span several store jobs: each job holds
/// a clone, records a failure if it had one, and when the last clone is dropped (every
/// job completed) the answer, or the first failure, goes to the connection.
pub(crate) struct AdminDone {
    out: OutTx,
    reply: Mutex<Option<Outbound>>,
    req: u64,
    failure: Mutex<Option<StoreError>>,
}

impl AdminDone {
    fn new(out: OutTx, req: u64, reply: Outbound) -> Arc<AdminDone> {
        Arc::new(AdminDone {
            out,
            reply: Mutex::new(Some(reply)),
            req,
            failure: Mutex::new(None),
        })
    }

    /// Called by the store writer for each job.
    pub(crate) fn record(&self, result: Result<(), StoreError>) {
        if let Err(e) = result {
            self.failure.lock().get_or_insert(e);
        }
    }
}

impl Drop for AdminDone {
    fn drop(&mut self) {
        let msg = match self.failure.lock().take() {
            Some(e) => Outbound::Response(error_response(
                self.req,
                ErrorCode::Storage,
                format!("not persisted: {e}"),
            )),
            None => match self.reply.lock().take() {
                Some(reply) => reply,
                None => return,
            },
        };
        let _ = self.out.send(msg);
    }
}

impl std::fmt::Debug for AdminDone {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminDone").field("req", &self.req).finish()
    }
}

impl Hub {
    /// Answers one admin request from connection `conn`.
    pub(super) fn admin(&mut self, conn: ConnId, req: u64, op: AdminOp, now: Millis) {
        let result = match op {
            AdminOp::List => {
                let queues = self.queue_statuses(now);
                self.send_admin(conn, AdminReply::Queues {
                    req,
                    single: false,
                    queues,
                });
                Ok(())
            }
            AdminOp::Get(name) => self.engine.queue_snapshot(&name).map(|s| {
                let reply = self.single(req, s, now);
                self.send_admin(conn, reply);
            }),
            AdminOp::Configure(name, update) => {
                self.engine.configure_queue(&name, &update).map(|m| {
                    info!(queue = %name, ?update, "queue configuration changed");
                    self.persist_then_report(conn, req, &name, vec![m], now);
                })
            }
            AdminOp::SetPaused(name, paused) => {
                let m = self.engine.set_paused(&name, paused);
                info!(queue = %name, paused, "queue {}", if paused { "paused" } else { "resumed" });
                self.persist_then_report(conn, req, &name, vec![m], now);
                Ok(())
            }
            AdminOp::Peek {
                queue,
                state,
                limit,
            } => self.engine.peek(&queue, state, limit).map(|peeked| {
                let items = peeked
                    .into_iter()
                    .map(|peeked| PeekItem {
                        holder: peeked.lease.and_then(|l| self.holder(l.conn, l.sub)),
                        peeked,
                    })
                    .collect();
                self.send_admin(conn, AdminReply::Peek { req, items });
            }),
            AdminOp::Purge { queue, state } => self.engine.purge(&queue, state).map(|ids| {
                info!(queue = %queue, ?state, tasks = ids.len(), "queue purged");
                let count = ids.len() as u64;
                let removed = self.waiters.waited_among(&ids);
                let muts = ids.into_iter().map(|id| Mutation::Remove { id });
                self.persist_then_count(conn, req, muts, count);
                self.wake_removed(removed);
            }),
            AdminOp::Redrive { queue, limit } => {
                self.engine.redrive(&queue, limit, now).map(|muts| {
                    info!(queue = %queue, tasks = muts.len(), "dead tasks redriven");
                    let count = muts.len() as u64;
                    self.persist_then_count(conn, req, muts.into_iter(), count);
                })
            }
            AdminOp::Delete(name) => self.engine.delete_queue(&name).map(|deleted| {
                info!(queue = %name, tasks = deleted.tasks.len(), subscriptions = deleted.ended.len(), "queue deleted");
                self.rates.forget(&name);
                self.end_subscriptions(&deleted.name, &deleted.ended);
                let count = deleted.tasks.len() as u64;
                let removed = self.waiters.waited_among(&deleted.tasks);
                let muts = deleted
                    .tasks
                    .into_iter()
                    .map(|id| Mutation::Remove { id })
                    .chain(std::iter::once(Mutation::RemoveQueue { name: deleted.name }));
                self.persist_then_count(conn, req, muts, count);
                self.wake_removed(removed);
            }),
        };
        if let Err(e) = result {
            let code = match e {
                AdminError::NoSuchQueue(_) => ErrorCode::NotFound,
                AdminError::Invalid { .. } => ErrorCode::BadRequest,
            };
            if let Some(out) = self.outboxes.get(&conn) {
                let _ = out.send(Outbound::Response(error_response(req, code, e.to_string())));
            }
        }
    }

    /// Every queue's status, sorted by name.
    pub(super) fn queue_statuses(&self, now: Millis) -> Vec<QueueStatus> {
        self.engine
            .snapshot()
            .into_iter()
            .map(|s| self.status(s, now))
            .collect()
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
        }
    }

    fn holder(&self, conn: ConnId, sub: SubId) -> Option<Arc<str>> {
        let (name, peer) = self.names.get(&conn)?;
        Some(Arc::from(format!("conn {conn} sub {sub} {peer} {name}")))
    }

    fn send_admin(&self, conn: ConnId, reply: AdminReply) {
        if let Some(out) = self.outboxes.get(&conn) {
            let _ = out.send(Outbound::Admin(reply));
        }
    }

    /// Persists `muts`, then answers with the queue as it is now.
    fn persist_then_report(
        &self,
        conn: ConnId,
        req: u64,
        name: &str,
        muts: Vec<Mutation>,
        now: Millis,
    ) {
        let reply = self
            .engine
            .queue_snapshot(name)
            .map(|s| Outbound::Admin(self.single(req, s, now)))
            .unwrap_or_else(|e| {
                Outbound::Response(error_response(req, ErrorCode::Internal, e.to_string()))
            });
        self.persist_then(conn, req, muts.into_iter(), reply);
    }

    /// Persists `muts`, then answers with `count`.
    fn persist_then_count(
        &self,
        conn: ConnId,
        req: u64,
        muts: impl Iterator<Item = Mutation>,
        count: u64,
    ) {
        let reply = Outbound::Response(v1::Response {
            id: req,
            result: Some(response::Result::Count(v1::CountOk { count })),
        });
        self.persist_then(conn, req, muts, reply);
    }

    /// Submits `muts` in chunks; `reply` goes out once every chunk is durable.
    fn persist_then(
        &self,
        conn: ConnId,
        req: u64,
        mut muts: impl Iterator<Item = Mutation>,
        reply: Outbound,
    ) {
        let done = self
            .outboxes
            .get(&conn)
            .map(|out| AdminDone::new(out.clone(), req, reply));
        loop {
            let chunk: Vec<Mutation> = muts.by_ref().take(CHUNK).collect();
            if chunk.is_empty() {
                break;
            }
            let job = done.as_ref().map(|d| Done::Admin(d.clone()));
            self.writer.submit(Muts::Many(chunk), job);
        }
        // With nothing to persist, dropping the last handle answers at once.
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
            if let Some(out) = self.outboxes.get(&conn) {
                let _ = out.send(Outbound::Response(v1::Response {
                    id: sub,
                    result: Some(response::Result::SubscriptionEnded(v1::SubscriptionEnded {
                        queue: queue.to_owned(),
                        reason: REASON_DELETED.to_owned(),
                    })),
                }));
            }
        }
    }
}
