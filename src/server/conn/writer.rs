//! The writer half of one connection: drains the connection's outbox, completes the
//! answers that need store reads (`answers.rs`, `wait.rs`), reads task bodies for
//! deliveries, and writes every pending frame with one syscall per wakeup, encoded by
//! the wire edge. It stops taking from the outbox while `max_unsent_bytes` are unsent
//! (the hub then stops delivering here), reports delivery progress to the hub, and
//! closes a connection whose client reads nothing for the stall time. The only code
//! that writes to client sockets after the handshake.

use std::collections::VecDeque;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, BytesMut};
use futures_util::FutureExt;
use squall_proto::ErrorCode;
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tracing::{debug, warn};

use super::answers;
use super::flow::{Flow, NEVER};
use super::shared::Shared;
use super::wait::Waits;
use super::wire::{self, Answer};
use crate::broker::{ConnId, Dispatch};
use crate::server::msg::{Failure, HubCmd, Outbound, Reply, ReqId, TaskReport};

/// Outbox messages taken per wakeup at most.
const WRITE_BATCH: usize = 256;
/// Most deliveries the hub hands to one connection before its writer half has taken
/// them from the outbox (`Engine::set_delivery_window`): a connection whose writer
/// stops at `max_unsent_bytes` stops getting tasks after this many more.
pub(crate) const DELIVERY_WINDOW: u32 = 64;
/// The writer half reports its progress to the hub every this many deliveries (and
/// the hub resumes a connection below the window), so the pipe stays full without a
/// message per delivery.
const REPORT_EVERY: u32 = 16;
/// Bytes of an answer frame outside its list of items (response id, wrappers, flags):
/// lists and peeks fill at most the frame limit minus this.
const ANSWER_ENVELOPE: usize = 1024;

/// Drains the outbox, encoding every pending frame into one buffer per wakeup.
pub(super) async fn write_loop<W: AsyncWrite + Unpin>(
    wr: W,
    rx: mpsc::UnboundedReceiver<Outbound>,
    conn: ConnId,
    shared: Arc<Shared>,
    mut waits: Waits,
    flow: Arc<Flow>,
) {
    write_frames(wr, rx, conn, &shared, &mut waits, &flow).await;
    waits.release_all(&shared);
}

async fn write_frames<W: AsyncWrite + Unpin>(
    wr: W,
    rx: mpsc::UnboundedReceiver<Outbound>,
    conn: ConnId,
    shared: &Shared,
    waits: &mut Waits,
    flow: &Flow,
) {
    let mut w = WriteHalf {
        wr,
        rx,
        conn,
        shared,
        flow,
        batch: Vec::with_capacity(WRITE_BATCH),
        queue: VecDeque::new(),
        pending: BytesMut::with_capacity(64 * 1024),
        timed_out: Vec::new(),
        ending: false,
        paused: false,
        unreported: 0,
        last_progress: Instant::now(),
        limit: shared.config.max_unsent_bytes,
        stall: match shared.config.idle_timeout {
            d if d.is_zero() => NEVER,
            d => d,
        },
    };
    w.run(waits).await;
}

/// The writer half's state: what was taken from the outbox and not yet encoded
/// (`queue`), and the encoded bytes not yet accepted by the socket (`pending`, at most
/// `max_unsent_bytes` plus one frame).
struct WriteHalf<'a, W> {
    wr: W,
    rx: mpsc::UnboundedReceiver<Outbound>,
    conn: ConnId,
    shared: &'a Shared,
    flow: &'a Flow,
    batch: Vec<Outbound>,
    queue: VecDeque<Outbound>,
    pending: BytesMut,
    /// Waits that timed out without a claim by a wake-up, to answer.
    timed_out: Vec<(ReqId, Reply)>,
    /// A closing frame is encoded (or the outbox closed): write what is left, then close.
    ending: bool,
    /// More than `limit` bytes are unsent (counted in the `connections_paused` gauge).
    paused: bool,
    /// Deliveries taken from the outbox and not yet reported to the hub.
    unreported: u32,
    last_progress: Instant,
    limit: usize,
    stall: Duration,
}

impl<W: AsyncWrite + Unpin> WriteHalf<'_, W> {
    async fn run(&mut self, waits: &mut Waits) {
        let stall_timer = tokio::time::sleep(NEVER);
        tokio::pin!(stall_timer);
        let mut stall_armed = false;
        loop {
            self.encode(waits);
            self.signal_backpressure();
            if self.pending.is_empty() {
                if !self.flush().await {
                    return;
                }
                if self.ending {
                    let _ = self.wr.shutdown().await;
                    return;
                }
                if self.queue.is_empty() {
                    self.receive(waits).await;
                }
                continue;
            }
            // Try the write first: on an uncongested socket it completes at once and
            // costs no timer.
            match self.wr.write(&self.pending).now_or_never() {
                Some(r) => {
                    if !self.wrote(r) {
                        return;
                    }
                    continue;
                }
                None if !stall_armed => {
                    stall_armed = true;
                    stall_timer.as_mut().reset(self.last_progress + self.stall);
                }
                None => {}
            }
            let can_take = !self.ending && self.queue.is_empty() && self.pending.len() < self.limit;
            let wait_deadline = waits.next_deadline();
            tokio::select! {
                biased;
                r = self.wr.write(&self.pending) => {
                    if !self.wrote(r) {
                        return;
                    }
                }
                n = self.rx.recv_many(&mut self.batch, WRITE_BATCH), if can_take => self.received(n),
                _ = sleep_until_opt(wait_deadline), if wait_deadline.is_some() => {
                    waits.expire(self.shared, Instant::now(), &mut self.timed_out);
                }
                _ = &mut stall_timer => {
                    let due = self.last_progress + self.stall;
                    if due <= Instant::now() {
                        debug!(conn = self.conn, unsent = self.pending.len(), stall = ?self.stall, "the client reads nothing: closing the connection");
                        return;
                    }
                    stall_timer.as_mut().reset(due);
                }
            }
        }
    }

    /// Waits for outbox messages (or a wait's deadline).
    async fn receive(&mut self, waits: &mut Waits) {
        match waits.next_deadline() {
            None => {
                let n = self.rx.recv_many(&mut self.batch, WRITE_BATCH).await;
                self.received(n);
            }
            Some(at) => tokio::select! {
                n = self.rx.recv_many(&mut self.batch, WRITE_BATCH) => self.received(n),
                _ = tokio::time::sleep_until(at) => {
                    waits.expire(self.shared, Instant::now(), &mut self.timed_out);
                }
            },
        }
    }

    fn received(&mut self, n: usize) {
        if n == 0 {
            // The outbox closed: the connection is over.
            if self.shared.conn_cancel.is_cancelled() {
                let bye = "the broker is shutting down".to_owned();
                wire::put_error(0, ErrorCode::ShuttingDown, bye, &mut self.pending);
            }
            self.ending = true;
        }
        self.queue.extend(self.batch.drain(..));
    }

    /// Encodes queued messages while fewer than `limit` bytes are unsent.
    fn encode(&mut self, waits: &mut Waits) {
        let mut answers = 0u32;
        let prefixes = self.flow.prefixes.get();
        let shared = self.shared;
        let flow = self.flow;
        let max_frame = shared.config.max_frame_bytes;
        let pending = &mut self.pending;
        let mut put = |answer: Answer, buf: &mut BytesMut| {
            answers += u32::from(answer.is_answer());
            flow.release(answer.id());
            answer.put(buf, max_frame);
        };
        let reply = |req: ReqId, mut reply: Reply| {
            if let Some(prefixes) = prefixes {
                hide_other_queues(&mut reply, prefixes);
            }
            Answer::reply(req, reply)
        };
        for (req, r) in self.timed_out.drain(..) {
            put(reply(req, r), pending);
        }
        while !self.ending && pending.len() < self.limit {
            let Some(msg) = self.queue.pop_front() else {
                break;
            };
            match msg {
                Outbound::Reply { req, reply: r } => put(reply(req, r), pending),
                Outbound::Replies(replies) => {
                    for (req, r) in replies {
                        put(reply(req, r), pending);
                    }
                }
                Outbound::Deliver(d) => {
                    self.unreported += 1;
                    deliver(shared, self.conn, d, pending)
                }
                Outbound::Admin(admin) => {
                    let room = max_frame.saturating_sub(ANSWER_ENVELOPE);
                    put(answers::admin(shared, admin, room), pending)
                }
                Outbound::SubscriptionEnded { sub, queue, reason } => {
                    put(Answer::subscription_ended(sub, queue, reason), pending)
                }
                Outbound::Close { req, failure } => {
                    put(reply(req, Reply::Refused(failure)), pending);
                    self.ending = true;
                }
                Outbound::Status { req, task, lease } => put(
                    reply(req, answers::status(shared, task, lease.as_ref())),
                    pending,
                ),
                Outbound::Payload { req, task } => {
                    put(reply(req, answers::payload(shared, task)), pending)
                }
                Outbound::Wait {
                    req,
                    task,
                    timeout_ms,
                } => {
                    if let Some(r) = waits.start(shared, req, task, timeout_ms) {
                        put(reply(req, r), pending)
                    }
                }
                Outbound::WaitDone { req, task, state } => {
                    put(reply(req, waits.woken(shared, req, task, state)), pending)
                }
                Outbound::Recheck { req, task } => {
                    if let Some(r) = waits.recheck(shared, req, task) {
                        put(reply(req, r), pending)
                    }
                }
            }
        }
        self.flow
            .answered(answers, self.shared.config.max_inflight_requests);
        if self.unreported >= REPORT_EVERY {
            let n = std::mem::take(&mut self.unreported);
            let _ = self.shared.hub.send(HubCmd::Written { conn: self.conn, n });
        }
    }

    /// Counts the connection as paused while `limit` bytes are unsent (the writer then
    /// takes nothing from the outbox, so the hub's delivery window fills and it stops
    /// delivering here), until half of that is written.
    fn signal_backpressure(&mut self) {
        let unsent = self.pending.len();
        let change = if self.paused {
            unsent <= self.limit / 2
        } else {
            unsent >= self.limit
        };
        if change {
            self.paused = !self.paused;
            debug!(
                conn = self.conn,
                unsent,
                paused = self.paused,
                "delivery backpressure"
            );
            self.shared
                .metrics
                .paused_connections
                .fetch_add(if self.paused { 1 } else { -1 }, Relaxed);
        }
    }

    /// Accounts for one write; false if the connection is gone.
    fn wrote(&mut self, r: std::io::Result<usize>) -> bool {
        match r {
            Ok(0) => false,
            Ok(n) => {
                self.pending.advance(n);
                self.last_progress = Instant::now();
                if self.pending.is_empty() && self.pending.capacity() > 4 * 1024 * 1024 {
                    self.pending = BytesMut::with_capacity(64 * 1024);
                }
                true
            }
            Err(e) => {
                debug!(conn = self.conn, error = %e, "write failed");
                false
            }
        }
    }

    /// Pushes out anything the stream buffers (TLS records); false if the connection
    /// is gone or the client stopped reading for the stall time.
    async fn flush(&mut self) -> bool {
        let flushed = match self.wr.flush().now_or_never() {
            Some(r) => r,
            None => match tokio::time::timeout(self.stall, self.wr.flush()).await {
                Ok(r) => r,
                Err(_) => return false,
            },
        };
        flushed.is_ok()
    }
}

impl<W> Drop for WriteHalf<'_, W> {
    fn drop(&mut self) {
        if self.paused {
            self.shared
                .metrics
                .paused_connections
                .fetch_add(-1, Relaxed);
        }
    }
}

async fn sleep_until_opt(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// A task status or payload answer about a queue outside the token's prefixes says
/// "unknown", as if the task did not exist.
fn hide_other_queues(reply: &mut Reply, prefixes: &[String]) {
    let allowed = |queue: &str| prefixes.iter().any(|p| queue.starts_with(p.as_str()));
    match reply {
        Reply::Payload(p) if !allowed(&p.queue) => {
            let gone = format!("no task {}", p.task_id);
            *reply = Reply::Refused(Failure::Protocol(ErrorCode::NotFound, gone));
        }
        Reply::Task(report) if !report.queue.is_empty() && !allowed(&report.queue) => {
            **report = TaskReport {
                task_id: report.task_id,
                ..TaskReport::default()
            };
        }
        _ => {}
    }
}

/// Reads the task's body and encodes its delivery; a task that cannot be read goes
/// back to the hub (requeued if the read failed, dropped if the task is gone).
fn deliver(shared: &Shared, conn: ConnId, d: Dispatch, buf: &mut BytesMut) {
    let body = match shared.store.get_body(d.task) {
        Ok(Some(body)) => body,
        other => {
            let requeue = other.is_err();
            if let Err(e) = other {
                warn!(conn, task = d.task, error = %e, "could not read task body; requeued");
            }
            let _ = shared.hub.send(HubCmd::Undeliverable {
                conn,
                task: d.task,
                token: d.token,
                requeue,
            });
            return;
        }
    };
    wire::put_delivery(d, body, buf);
}
