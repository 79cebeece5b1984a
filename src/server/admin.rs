//! Queue administration in the server, in three steps that follow the data:
//! 1. the connection reader validates an admin request into an [`AdminOp`] (`parse`);
//! 2. the hub, which owns the engine, answers it (`impl Hub` below): reads come from
//!    the engine at once; a change is planned by the engine without changing it,
//!    persisted through the store writer, and applied to the engine and answered only
//!    once durable ([`AdminDone`]), one change at a time;
//! 3. answers that need task data on disk (peek payloads, the age of the oldest ready
//!    task) travel as an [`AdminReply`] to the connection's writer half, which reads
//!    the store and encodes the response. The hub never reads the store.

use std::collections::VecDeque;
use std::sync::Arc;

use parking_lot::Mutex;
use prost::Message;
use squall_proto::v1::{self, request::Op, response};
use squall_proto::ErrorCode;
use tokio::sync::mpsc;
use tracing::info;

use super::connection::{error_response, Outbound};
use super::hub::{Hub, HubCmd};
use super::now_ms;
use super::rates::RateView;
use super::Done;
use crate::broker::{
    AdminChange, AdminError, AdminPlan, ConnId, Peeked, QueueConfigUpdate, QueueSnapshot, SubId,
    TaskView,
};
use crate::model::{Millis, Mutation, QueueConfig, TaskId};
use crate::store::{Muts, Store, StoreError};

/// Peek size when the request names none.
pub(crate) const DEFAULT_PEEK: usize = 20;
/// Payload bytes a peeked task shows when the request names no preview size.
pub(crate) const DEFAULT_PREVIEW: usize = 1024;
/// Largest payload preview of a peeked task.
pub(crate) const MAX_PREVIEW: usize = 64 * 1024;
/// Queues per ListQueues page, by default and at most.
pub(crate) const MAX_LIST_PAGE: usize = 1000;
/// What one listed queue or peeked task costs an answer at most beyond its name,
/// payload preview and headers: counted against the connection's unsent budget
/// before the request goes to the hub (`answer_cost`).
const ITEM_OVERHEAD: usize = 512;
/// Most mutations per store job when an admin change touches many tasks: bounds the
/// memory of one batch; the answer waits for every chunk.
const CHUNK: usize = 8_192;
/// Reason given to subscribers of a deleted queue.
const REASON_DELETED: &str = "the queue was deleted by an operator";

/// A validated administrative request.
#[derive(Debug)]
pub(crate) enum AdminOp {
    List {
        after: String,
        limit: usize,
    },
    Get(String),
    Configure(String, QueueConfigUpdate),
    SetPaused(String, bool),
    Peek {
        queue: String,
        state: TaskView,
        limit: usize,
        preview: usize,
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

impl AdminOp {
    /// The most bytes the answer can take while it waits to be written, counted
    /// against the connection's unsent budget before the hub builds it.
    pub(crate) fn answer_cost(&self) -> usize {
        match self {
            AdminOp::List { limit, .. } => {
                limit * (ITEM_OVERHEAD + squall_proto::MAX_QUEUE_NAME_LEN)
            }
            AdminOp::Peek { limit, preview, .. } => {
                limit.min(&crate::broker::MAX_PEEK) * (ITEM_OVERHEAD + 2 * preview)
            }
            _ => ITEM_OVERHEAD,
        }
    }
}

/// Validates an admin request on the connection reader (cheap checks only: names and
/// enums; the hub checks configuration values against the queue's current ones).
pub(crate) fn parse(op: Op) -> Result<AdminOp, (ErrorCode, String)> {
    let op = match op {
        Op::ListQueues(l) => {
            if l.after.len() > squall_proto::MAX_QUEUE_NAME_LEN {
                return Err((
                    ErrorCode::BadRequest,
                    format!(
                        "`after` is {} bytes long; queue names have at most {}",
                        l.after.len(),
                        squall_proto::MAX_QUEUE_NAME_LEN
                    ),
                ));
            }
            AdminOp::List {
                after: l.after,
                limit: match l.limit {
                    0 => MAX_LIST_PAGE,
                    n => (n as usize).min(MAX_LIST_PAGE),
                },
            }
        }
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
            preview: match p.preview_bytes {
                0 => DEFAULT_PREVIEW,
                n => (n as usize).min(MAX_PREVIEW),
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
        /// A list page that is not the last.
        more: bool,
    },
    Peek {
        req: u64,
        items: Vec<PeekItem>,
        preview: usize,
    },
}

impl AdminReply {
    /// Reads what the answer needs from the store and builds the response: lists and
    /// peeks stop before they grow past `max_bytes` (and say that more follow).
    pub(crate) fn into_response(self, store: &Store, max_bytes: usize) -> v1::Response {
        let now = now_ms();
        let (id, result) = match self {
            AdminReply::Queues {
                req,
                single: true,
                mut queues,
                ..
            } => match queues.pop() {
                Some(q) => (req, response::Result::Queue(queue_info(&q, store, now))),
                None => return error_response(req, ErrorCode::Internal, "no queue to report"),
            },
            AdminReply::Queues {
                req,
                queues: statuses,
                more,
                ..
            } => {
                let mut size = Budget::new(max_bytes);
                let mut queues = Vec::with_capacity(statuses.len());
                let mut cut = false;
                for q in &statuses {
                    let info = queue_info(q, store, now);
                    if !size.admit(info.encoded_len()) {
                        cut = true;
                        break;
                    }
                    queues.push(info);
                }
                let more = more || cut;
                (
                    req,
                    response::Result::Queues(v1::QueueList { queues, more }),
                )
            }
            AdminReply::Peek {
                req,
                items,
                preview,
            } => {
                let mut size = Budget::new(max_bytes);
                let mut tasks = Vec::with_capacity(items.len());
                let mut more = false;
                for item in items {
                    match peeked_task(item, store, preview) {
                        Ok(Some(t)) if !size.admit(t.encoded_len()) => {
                            more = true;
                            break;
                        }
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
                (req, response::Result::Peek(v1::PeekOk { tasks, more }))
            }
        };
        v1::Response {
            id,
            result: Some(result),
        }
    }
}

/// Bytes left for the items of one answer.
struct Budget(usize);

impl Budget {
    fn new(max_bytes: usize) -> Budget {
        Budget(max_bytes)
    }

    /// Counts an item of `len` bytes (plus its tag and length prefix) if it fits.
    fn admit(&mut self, len: usize) -> bool {
        let cost = len + 1 + prost::length_delimiter_len(len);
        match self.0.checked_sub(cost) {
            Some(left) => {
                self.0 = left;
                true
            }
            None => false,
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

/// A peeked task with at most `preview` payload bytes, and its headers only if they
/// take no more than that either.
fn peeked_task(
    item: PeekItem,
    store: &Store,
    preview: usize,
) -> Result<Option<v1::PeekedTask>, StoreError> {
    let p = item.peeked;
    let Some(state) = store.get_state(p.id)? else {
        return Ok(None);
    };
    let body = store.get_body(p.id)?.unwrap_or_default();
    let payload_bytes = body.payload.len() as u64;
    let mut truncated = body.payload.len() > preview;
    let payload = body.payload.slice(..body.payload.len().min(preview));
    let header_bytes: usize = body.headers.iter().map(|(k, v)| k.len() + v.len()).sum();
    let headers = if header_bytes > preview {
        truncated = true;
        Default::default()
    } else {
        body.headers.into_iter().collect()
    };
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
        payload,
        headers,
        truncated,
        payload_bytes,
    }))
}

/// The completion of an admin change that may span several store jobs (chunks): each
/// job holds a clone and records its outcome; when the last clone is dropped (every
/// job completed) the outcome goes back to the hub, which applies what is durable to
/// the engine and answers ([`Hub::admin_durable`]).
pub(crate) struct AdminDone {
    hub: mpsc::WeakUnboundedSender<HubCmd>,
    outcome: Mutex<Option<AdminOutcome>>,
}

/// A planned admin change and how its store jobs went.
#[derive(Debug)]
pub(crate) struct AdminOutcome {
    conn: ConnId,
    req: u64,
    plan: AdminPlan,
    /// Per chunk of `CHUNK` tasks: whether it is durable.
    durable: Vec<bool>,
    /// The first failure, if any.
    failure: Option<StoreError>,
}

impl AdminDone {
    fn new(
        hub: mpsc::WeakUnboundedSender<HubCmd>,
        conn: ConnId,
        req: u64,
        plan: AdminPlan,
        chunks: usize,
    ) -> Arc<AdminDone> {
        Arc::new(AdminDone {
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
    pub(crate) fn record(&self, chunk: usize, result: Result<(), StoreError>) {
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

impl Drop for AdminDone {
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

impl std::fmt::Debug for AdminDone {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminDone").finish_non_exhaustive()
    }
}

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

/// The admin changes waiting for the one in flight, oldest first.
#[derive(Debug, Default)]
pub(crate) struct AdminQueue {
    waiting: VecDeque<(ConnId, u64, AdminOp)>,
    busy: bool,
}

impl AdminOp {
    /// Whether it changes anything (then it is durable before it is applied, one at a
    /// time); reads are answered at once from the engine.
    fn is_change(&self) -> bool {
        !matches!(
            self,
            AdminOp::List { .. } | AdminOp::Get(_) | AdminOp::Peek { .. }
        )
    }
}

impl Hub {
    /// Answers one admin request from connection `conn`: a read at once, a change
    /// once the changes before it are done (at most one is in flight, so that plans
    /// never interleave).
    pub(super) fn admin(&mut self, conn: ConnId, req: u64, op: AdminOp, now: Millis) {
        if !op.is_change() {
            return self.admin_read(conn, req, op, now);
        }
        self.admin_queue.waiting.push_back((conn, req, op));
        self.next_admin_change(now);
    }

    /// Starts the oldest waiting change if none is in flight.
    fn next_admin_change(&mut self, now: Millis) {
        while !self.admin_queue.busy {
            let Some((conn, req, op)) = self.admin_queue.waiting.pop_front() else {
                return;
            };
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
            AdminOp::List { .. } | AdminOp::Get(_) | AdminOp::Peek { .. } => {
                Err(not_a(req_kind::CHANGE))
            }
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
        let done = AdminDone::new(self.me.clone(), conn, req, plan, chunks);
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
                Outbound::Response(error_response(
                    req,
                    ErrorCode::Storage,
                    format!("not persisted: {e}; {what}"),
                ))
            }
            None => match &plan.change {
                AdminChange::Config(_) => match self.engine.queue_snapshot(&plan.queue) {
                    Ok(s) => Outbound::Admin(self.single(req, s, now)),
                    Err(e) => {
                        Outbound::Response(error_response(req, ErrorCode::Internal, e.to_string()))
                    }
                },
                _ => Outbound::Response(v1::Response {
                    id: req,
                    result: Some(response::Result::Count(v1::CountOk {
                        count: done_tasks.len() as u64,
                    })),
                }),
            },
        };
        if let Some(out) = self.outboxes.get(&conn) {
            let _ = out.send(reply);
        }
        self.admin_queue.busy = false;
        self.next_admin_change(now);
    }

    fn admin_error(&self, conn: ConnId, req: u64, e: AdminError) {
        let code = match e {
            AdminError::NoSuchQueue(_) => ErrorCode::NotFound,
            AdminError::Invalid { .. } => ErrorCode::BadRequest,
        };
        if let Some(out) = self.outboxes.get(&conn) {
            let _ = out.send(Outbound::Response(error_response(req, code, e.to_string())));
        }
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
            _ => Err(not_a(req_kind::READ)),
        };
        if let Err(e) = result {
            self.admin_error(conn, req, e);
        }
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
        if let Some(out) = self.outboxes.get(&conn) {
            let _ = out.send(Outbound::Admin(reply));
        }
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
