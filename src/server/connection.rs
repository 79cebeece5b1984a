//! One client connection: the reader half decodes frames, enforces the handshake and
//! validates requests (publishes go straight to the store writer, result waits to the
//! writer half, everything else to the hub); the writer half drains the connection's
//! outbox and writes every pending frame with one syscall per wakeup, reading the store
//! for deliveries and task status on the way. Only this file touches client sockets.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize};
use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, BytesMut};
use futures_util::FutureExt;
use prost::Message;
use squall_proto::v1::{self, request::Op, response, server_message::Kind};
use squall_proto::{encode_frame, split_frame, ErrorCode, FrameError, PROTOCOL_VERSION};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, Notify, OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tracing::{debug, info, warn};

use super::admin::{self, AdminReply};
use super::hub::HubCmd;
use super::metrics::{Metrics, PublishTimer};
use super::status::{task_info, task_payload, LeaseHolder};
use super::wait::{task_response, ConnWaits};
use super::waiters::Final;
use super::{now_ms, Done, Shared};
use crate::auth::{ops, Grant};
use crate::broker::{Committed, ConnId, Dispatch, NackMode};
use crate::model::{Mutation, NewTask, TaskBody, TaskId, TaskState, TaskStatus};
use crate::store::Muts;

/// Sender side of a connection's outbox.
pub(crate) type OutTx = mpsc::UnboundedSender<Outbound>;

/// Longest nack reason kept; longer ones are cut.
const MAX_REASON_BYTES: usize = 4096;
/// Longest idempotency key accepted.
const MAX_IDEMPOTENCY_KEY_BYTES: usize = 1024;
/// Longest client name kept (it names lease holders in task status).
const MAX_CLIENT_NAME_BYTES: usize = 256;
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
/// Read buffer headroom kept before each read.
const READ_CHUNK: usize = 16 * 1024;
/// Bytes of an answer frame outside its list of items (response id, wrappers, flags):
/// lists and peeks fill at most the frame limit minus this.
const ANSWER_ENVELOPE: usize = 1024;
/// Read buffer headroom before Hello: a Hello is small, and until it is accepted the
/// buffer counts against the broker-wide `handshake_memory_bytes`.
const HELLO_CHUNK: usize = 1024;

/// What the writer half sends. The outbox is unbounded, but what can be in it is bounded
/// by the protocol: deliveries by the subscriptions' credit, responses by requests.
#[derive(Debug)]
pub(crate) enum Outbound {
    Response(v1::Response),
    /// Read the task body from the store and send it as a delivery.
    Deliver(Dispatch),
    /// Complete an admin answer with store reads and send it (`admin.rs`).
    Admin(AdminReply),
    /// Send this last frame, then close.
    Close(v1::Response),
    /// Read the task's state from the store and answer request `req` with its status.
    Status {
        req: u64,
        task: TaskId,
        lease: Option<LeaseHolder>,
    },
    /// A `WaitResult` request (the writer half keeps the connection's waits).
    Wait {
        req: u64,
        task: TaskId,
        timeout_ms: u64,
    },
    /// A waited-for task reached its final state durably.
    WaitDone {
        req: u64,
        task: TaskId,
        state: Final,
    },
    /// Everything committed before a wait's unknown-task check is completed: look again.
    Recheck {
        req: u64,
        task: TaskId,
    },
    /// Read a task's whole payload from the store and answer request `req` with it.
    Payload {
        req: u64,
        task: TaskId,
    },
}

pub(crate) fn error_response(id: u64, code: ErrorCode, message: impl Into<String>) -> v1::Response {
    v1::Response {
        id,
        result: Some(response::Result::Error(v1::Error {
            code: code as i32,
            message: message.into(),
        })),
    }
}

/// Counters the reader and writer halves of one connection share.
#[derive(Debug, Default)]
pub(crate) struct Flow {
    /// Requests read whose answer has not been written yet (requests with id 0 are
    /// refused, so every counted request has exactly one answer with its id).
    inflight: AtomicU32,
    /// Set while the reader waits for answers to drain.
    reader_waiting: AtomicBool,
    /// Woken by the writer when `inflight` drops back to the limit.
    drained: Notify,
    /// The queue prefixes the connection's token is limited to, set at Hello: task
    /// status answers about other queues are sent as "unknown".
    prefixes: std::sync::OnceLock<Arc<[String]>>,
    /// Bytes that admin answers not yet written may take (`AdminOp::answer_cost`),
    /// counted against `max_unsent_bytes`: the reader stops reading while they exceed
    /// it, so a client that asks for answers without reading them cannot make the
    /// broker build them without bound.
    reserved: AtomicUsize,
    /// The reservations by request id, released when the answer is encoded.
    reservations: parking_lot::Mutex<HashMap<u64, usize>>,
}

impl Flow {
    /// Counts `bytes` for the answer to request `req`.
    fn reserve(&self, req: u64, bytes: usize) {
        if let Some(old) = self.reservations.lock().insert(req, bytes) {
            // A repeated request id: its first reservation goes.
            self.reserved.fetch_sub(old, Relaxed);
        }
        self.reserved.fetch_add(bytes, Relaxed);
    }

    /// The answer to `req` is encoded: its reservation, if any, is free again.
    fn release(&self, req: u64) {
        if self.reserved.load(Relaxed) == 0 {
            return;
        }
        let Some(bytes) = self.reservations.lock().remove(&req) else {
            return;
        };
        self.reserved.fetch_sub(bytes, Relaxed);
        if self.reader_waiting.load(Relaxed) {
            self.drained.notify_one();
        }
    }

    /// The writer wrote `answers` answers.
    fn answered(&self, answers: u32, max: u32) {
        if answers == 0 {
            return;
        }
        let left = self
            .inflight
            .fetch_sub(answers, Relaxed)
            .saturating_sub(answers);
        if left <= max && self.reader_waiting.load(Relaxed) {
            self.drained.notify_one();
        }
    }
}

/// Whether the reader keeps going after a request.
enum Next {
    Continue,
    Close,
}

struct Conn {
    id: ConnId,
    peer: SocketAddr,
    shared: Arc<Shared>,
    out: OutTx,
    flow: Arc<Flow>,
    registered: bool,
    /// What the token presented at Hello allows.
    grant: Grant,
    /// `grant.is_unrestricted()`, so the common case costs one branch per request.
    unrestricted: bool,
    /// The last queue name published to, interned, so a stream of publishes to one
    /// queue shares one allocation.
    last_queue: Option<Arc<str>>,
}

/// Serves one accepted connection until it closes or the server shuts down. `slot`
/// is its place under `max_connections`, held until the reader ends.
pub(crate) async fn serve(
    stream: TcpStream,
    peer: SocketAddr,
    id: ConnId,
    shared: Arc<Shared>,
    slot: OwnedSemaphorePermit,
) {
    let _open = OpenConnection::new(&shared.metrics, slot);
    let handshake_deadline = Instant::now() + shared.config.handshake_timeout;
    match shared.tls.clone() {
        None => {
            let (rd, wr) = stream.into_split();
            serve_split(rd, wr, peer, id, shared, handshake_deadline).await;
        }
        Some(acceptor) => {
            let accepted = tokio::time::timeout_at(handshake_deadline, acceptor.accept(stream));
            let tls = tokio::select! {
                r = accepted => match r {
                    Ok(Ok(tls)) => tls,
                    Ok(Err(e)) => return debug!(conn = id, %peer, error = %e, "TLS handshake failed"),
                    Err(_) => return debug!(conn = id, %peer, "TLS handshake timed out"),
                },
                _ = shared.conn_cancel.cancelled() => return,
            };
            let (rd, wr) = tokio::io::split(tls);
            serve_split(rd, wr, peer, id, shared, handshake_deadline).await;
        }
    }
}

/// Serves a connection over its two halves (plain TCP, or TLS after its handshake).
async fn serve_split<R, W>(
    rd: R,
    wr: W,
    peer: SocketAddr,
    id: ConnId,
    shared: Arc<Shared>,
    handshake_deadline: Instant,
) where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin + Send + 'static,
{
    let (out, out_rx) = mpsc::unbounded_channel();
    let waits = ConnWaits::new(id, out.downgrade());
    let flow = Arc::new(Flow::default());
    shared.writers.spawn(write_loop(
        wr,
        out_rx,
        id,
        shared.clone(),
        waits,
        flow.clone(),
    ));
    let mut conn = Conn {
        id,
        peer,
        shared,
        out,
        flow,
        registered: false,
        grant: Grant::all(),
        unrestricted: true,
        last_queue: None,
    };
    conn.read_loop(rd, handshake_deadline).await;
    if conn.registered {
        let _ = conn.shared.hub.send(HubCmd::Disconnect { conn: id });
    }
    debug!(conn = id, peer = %conn.peer, "connection closed");
}

/// Answers a connection past `max_connections` with `TOO_MANY_CONNECTIONS` and closes
/// it, within the handshake timeout.
pub(crate) async fn refuse(stream: TcpStream, peer: SocketAddr, shared: Arc<Shared>) {
    let max = shared.config.max_connections;
    debug!(%peer, max, "connection refused: too many connections");
    let bye = error_response(
        0,
        ErrorCode::TooManyConnections,
        format!("the broker has reached its limit of {max} connections; retry later"),
    );
    let mut buf = BytesMut::new();
    encode_frame(&server_message(bye), &mut buf);
    let say = async {
        match &shared.tls {
            None => goodbye(stream, &buf).await,
            Some(acceptor) => goodbye(acceptor.accept(stream).await?, &buf).await,
        }
    };
    let _ = tokio::time::timeout(shared.config.handshake_timeout, say).await;
}

async fn goodbye<S: AsyncWrite + Unpin>(mut stream: S, frame: &[u8]) -> std::io::Result<()> {
    stream.write_all(frame).await?;
    stream.shutdown().await
}

/// Far enough in the future to mean "never" for a timer.
const NEVER: Duration = Duration::from_secs(365 * 24 * 3600);

impl Conn {
    async fn read_loop<R: AsyncRead + Unpin>(&mut self, mut rd: R, handshake_deadline: Instant) {
        let max_frame = self.shared.config.max_frame_bytes;
        let max_hello_frame = self.shared.config.max_hello_frame_bytes.min(max_frame);
        let idle = self.shared.config.idle_timeout;
        let max_inflight = self.shared.config.max_inflight_requests;
        // Until Hello the buffer starts small, grows only with bytes that arrive, and
        // is charged to the budget every unauthenticated connection shares.
        let mut buf = BytesMut::with_capacity(HELLO_CHUNK);
        let mut charge = HandshakeCharge::new(self.shared.handshake_budget.clone());
        if !charge.cover(buf.capacity()) {
            return self.over_handshake_budget();
        }
        // One timer: the handshake deadline until Hello, then the idle deadline. It is
        // not reset per frame: when it fires, it is re-armed from the last frame's time.
        let timer = tokio::time::sleep_until(handshake_deadline);
        tokio::pin!(timer);
        let mut idle_armed = false;
        let mut last_frame = Instant::now();
        loop {
            let mut frames = 0u32;
            loop {
                let unsent = self.shared.config.max_unsent_bytes;
                if self.flow.reserved.load(Relaxed) > unsent
                    && !self
                        .wait_for(|f| f.reserved.load(Relaxed) <= unsent, "answers too large")
                        .await
                {
                    return;
                }
                let max = if self.registered {
                    max_frame
                } else {
                    max_hello_frame
                };
                match split_frame(&mut buf, max) {
                    Ok(Some(body)) => match v1::Request::decode(body) {
                        Ok(req) => {
                            frames += 1;
                            if let Next::Close = self.handle(req) {
                                return;
                            }
                        }
                        Err(e) => {
                            let e = FrameError::from(e);
                            return self.close(0, e.code(), e.to_string());
                        }
                    },
                    Ok(None) => break,
                    Err(e) => return self.close(0, e.code(), e.to_string()),
                }
            }
            if frames > 0 {
                last_frame = Instant::now();
            }
            if self.registered && !idle_armed {
                idle_armed = true;
                timer.as_mut().reset(idle_deadline(last_frame, idle));
            }
            if self.flow.inflight.load(Relaxed) > max_inflight.saturating_mul(2)
                && !self.wait_for_answers(max_inflight).await
            {
                return;
            }
            let chunk = if self.registered {
                charge.release();
                READ_CHUNK
            } else {
                HELLO_CHUNK
            };
            // `reserve` grows the buffer by at least its size (amortised doubling), so a
            // large frame costs reads, not copies, and never more than twice its bytes.
            if buf.capacity() - buf.len() < chunk / 4 {
                buf.reserve(chunk);
            }
            if !self.registered && !charge.cover(buf.capacity()) {
                return self.over_handshake_budget();
            }
            tokio::select! {
                r = rd.read_buf(&mut buf) => match r {
                    Ok(0) => return,
                    Ok(_) => {}
                    Err(e) => {
                        debug!(conn = self.id, error = %e, "read failed");
                        return;
                    }
                },
                _ = self.shared.conn_cancel.cancelled() => return,
                _ = &mut timer => {
                    if !self.registered {
                        let t = self.shared.config.handshake_timeout;
                        return self.close(
                            0,
                            ErrorCode::Timeout,
                            format!("no Hello within the handshake timeout of {t:?}"),
                        );
                    }
                    let due = idle_deadline(last_frame, idle);
                    if due <= Instant::now() {
                        return self.close(
                            0,
                            ErrorCode::Timeout,
                            format!("no frame within the idle timeout of {idle:?}; clients must send a ping more often"),
                        );
                    }
                    timer.as_mut().reset(due);
                }
            }
        }
    }

    /// Closes a connection that would take the read buffers of connections without
    /// Hello past `handshake_memory_bytes`.
    fn over_handshake_budget(&self) {
        let budget = self.shared.config.handshake_memory_bytes;
        warn!(conn = self.id, peer = %self.peer, budget, "connections without Hello hold the whole handshake memory budget: closing one");
        self.close(
            0,
            ErrorCode::TooManyConnections,
            format!("connections that have not sent Hello hold the broker's handshake memory budget of {budget} bytes; retry later"),
        );
    }

    /// A client that sends requests without reading the answers: stop reading until
    /// the writer has written enough of them (or the connection ends: false).
    async fn wait_for_answers(&self, max_inflight: u32) -> bool {
        self.wait_for(
            |f| f.inflight.load(Relaxed) <= max_inflight,
            "too many unanswered requests",
        )
        .await
    }

    /// Stops reading until the writer has written enough for `ready` to hold (or the
    /// connection ends: false).
    async fn wait_for(&self, ready: impl Fn(&Flow) -> bool, why: &str) -> bool {
        debug!(conn = self.id, why, "reading paused");
        self.flow.reader_waiting.store(true, Relaxed);
        let resumed = loop {
            let drained = self.flow.drained.notified();
            if ready(&self.flow) {
                break true;
            }
            tokio::select! {
                _ = drained => {}
                _ = self.shared.conn_cancel.cancelled() => break false,
                _ = self.out.closed() => break false,
            }
        };
        self.flow.reader_waiting.store(false, Relaxed);
        resumed
    }

    fn send(&self, resp: v1::Response) {
        let _ = self.out.send(Outbound::Response(resp));
    }

    fn reply(&self, id: u64, result: response::Result) {
        self.send(v1::Response {
            id,
            result: Some(result),
        });
    }

    fn error(&self, id: u64, code: ErrorCode, message: impl Into<String>) -> Next {
        self.send(error_response(id, code, message));
        Next::Continue
    }

    fn close(&self, id: u64, code: ErrorCode, message: String) {
        debug!(conn = self.id, peer = %self.peer, ?code, %message, "closing connection on protocol error");
        let _ = self
            .out
            .send(Outbound::Close(error_response(id, code, message)));
    }

    fn handle(&mut self, req: v1::Request) -> Next {
        let id = req.id;
        if id == 0 {
            self.close(
                0,
                ErrorCode::BadRequest,
                "request id 0 is reserved for connection-level errors".into(),
            );
            return Next::Close;
        }
        // Counted before anything answers it; the writer counts the answer.
        let inflight = self.flow.inflight.fetch_add(1, Relaxed);
        let Some(op) = req.op else {
            return self.error(id, ErrorCode::BadRequest, "request carries no operation");
        };
        let max = self.shared.config.max_inflight_requests;
        if inflight >= max && self.registered {
            return self.error(
                id,
                ErrorCode::TooManyRequests,
                format!("{max} requests on this connection are still unanswered (max_inflight_requests); wait for answers before sending more"),
            );
        }
        if !self.registered {
            return match op {
                Op::Hello(h) => self.hello(id, h),
                _ => {
                    self.close(
                        id,
                        ErrorCode::HelloRequired,
                        "the first request on a connection must be Hello".into(),
                    );
                    Next::Close
                }
            };
        }
        if !self.unrestricted {
            if let Err(msg) = self.authorize(&op) {
                return self.error(id, ErrorCode::Forbidden, msg);
            }
        }
        let hub = &self.shared.hub;
        let conn = self.id;
        let sent = match op {
            Op::Hello(_) => {
                return self.error(id, ErrorCode::BadRequest, "Hello was already received")
            }
            Op::Ping(_) => {
                self.reply(id, response::Result::Pong(v1::Pong {}));
                return Next::Continue;
            }
            Op::Publish(p) => return self.publish(id, p),
            op @ (Op::ListQueues(_)
            | Op::GetQueue(_)
            | Op::SetQueueConfig(_)
            | Op::Peek(_)
            | Op::Purge(_)
            | Op::SetPaused(_)
            | Op::Redrive(_)
            | Op::DeleteQueue(_)) => match admin::parse(op) {
                Ok(op) => {
                    self.flow.reserve(id, op.answer_cost());
                    hub.send(HubCmd::Admin { conn, req: id, op })
                }
                Err((code, msg)) => return self.error(id, code, msg),
            },
            Op::Subscribe(s) => {
                if let Err(e) = squall_proto::validate_queue_name(&s.queue) {
                    return self.error(id, ErrorCode::InvalidQueueName, e.to_string());
                }
                let max = self.shared.config.max_prefetch;
                if s.prefetch == 0 || s.prefetch > max {
                    return self.error(
                        id,
                        ErrorCode::BadRequest,
                        format!("prefetch {} is outside 1..={max}", s.prefetch),
                    );
                }
                hub.send(HubCmd::Subscribe {
                    conn,
                    req: id,
                    queue: s.queue,
                    prefetch: s.prefetch,
                })
            }
            Op::Unsubscribe(u) => hub.send(HubCmd::Unsubscribe {
                conn,
                req: id,
                sub: u.subscription_id,
            }),
            Op::Ack(a) => {
                let max = self.shared.config.max_payload_bytes;
                if a.result.len() > max {
                    return self.error(
                        id,
                        ErrorCode::PayloadTooLarge,
                        format!(
                            "ack result of {} bytes exceeds the maximum of {max} bytes; the task is still leased",
                            a.result.len()
                        ),
                    );
                }
                hub.send(HubCmd::Ack {
                    conn,
                    req: id,
                    task: a.task_id,
                    token: a.lease_token,
                    result: a.result,
                })
            }
            Op::GetTask(g) => hub.send(HubCmd::GetTask {
                conn,
                req: id,
                task: g.task_id,
            }),
            Op::GetPayload(g) => {
                let _ = self.out.send(Outbound::Payload {
                    req: id,
                    task: g.task_id,
                });
                return Next::Continue;
            }
            Op::WaitResult(w) => {
                let _ = self.out.send(Outbound::Wait {
                    req: id,
                    task: w.task_id,
                    timeout_ms: w.timeout_ms,
                });
                return Next::Continue;
            }
            Op::Nack(n) => {
                let mode = match (n.dead, n.delay_ms) {
                    (true, _) => NackMode::Dead,
                    (false, Some(ms)) => NackMode::After(ms),
                    (false, None) => NackMode::Backoff,
                };
                let mut reason = n.reason;
                truncate_utf8(&mut reason, MAX_REASON_BYTES);
                hub.send(HubCmd::Nack {
                    conn,
                    req: id,
                    task: n.task_id,
                    token: n.lease_token,
                    mode,
                    reason,
                })
            }
            Op::Release(r) => hub.send(HubCmd::ReleaseUnseen {
                conn,
                req: id,
                task: r.task_id,
                token: r.lease_token,
            }),
            Op::Extend(x) => hub.send(HubCmd::Extend {
                conn,
                req: id,
                task: x.task_id,
                token: x.lease_token,
                extend_ms: x.extend_ms,
            }),
        };
        if sent.is_err() {
            self.error(id, ErrorCode::ShuttingDown, "the broker is shutting down");
        }
        Next::Continue
    }

    /// Checks a request against the connection's grant (only for restricted tokens).
    fn authorize(&self, op: &Op) -> Result<(), String> {
        let (need, queue): (u32, Option<&str>) = match op {
            Op::Hello(_) | Op::Ping(_) => return Ok(()),
            Op::Publish(p) => {
                self.allow(ops::PUBLISH, "publish")?;
                for t in &p.tasks {
                    self.allow_queue(&t.queue)?;
                }
                return Ok(());
            }
            Op::Subscribe(s) => (ops::SUBSCRIBE, Some(&s.queue)),
            Op::Unsubscribe(_) | Op::Ack(_) | Op::Nack(_) | Op::Release(_) | Op::Extend(_) => {
                (ops::SETTLE, None)
            }
            Op::GetTask(_) | Op::WaitResult(_) => (ops::STATUS, None),
            Op::ListQueues(_) => {
                self.allow(ops::ADMIN, "queue administration")?;
                if self.grant.prefixes().is_some() {
                    return Err(format!(
                        "token `{}` is limited to some queues and may not list them all; ask for each queue by name",
                        self.grant.name
                    ));
                }
                return Ok(());
            }
            // The task's queue is checked against the prefixes when it is read.
            Op::GetPayload(_) => (ops::ADMIN, None),
            Op::GetQueue(q) => (ops::ADMIN, Some(&q.queue)),
            Op::SetQueueConfig(q) => (ops::ADMIN, Some(&q.queue)),
            Op::Peek(q) => (ops::ADMIN, Some(&q.queue)),
            Op::Purge(q) => (ops::ADMIN, Some(&q.queue)),
            Op::SetPaused(q) => (ops::ADMIN, Some(&q.queue)),
            Op::Redrive(q) => (ops::ADMIN, Some(&q.queue)),
            Op::DeleteQueue(q) => (ops::ADMIN, Some(&q.queue)),
        };
        let what = match need {
            ops::SUBSCRIBE => "subscribe",
            ops::SETTLE => "settle deliveries",
            ops::STATUS => "read task status",
            _ => "queue administration",
        };
        self.allow(need, what)?;
        match queue {
            Some(q) => self.allow_queue(q),
            None => Ok(()),
        }
    }

    fn allow(&self, need: u32, what: &str) -> Result<(), String> {
        if self.grant.allows(need) {
            return Ok(());
        }
        Err(format!(
            "token `{}` may not {what} (its role does not allow it)",
            self.grant.name
        ))
    }

    fn allow_queue(&self, queue: &str) -> Result<(), String> {
        if self.grant.allows_queue(queue) {
            return Ok(());
        }
        Err(format!(
            "token `{}` may not use queue `{queue}`: it is limited to the prefixes {:?}",
            self.grant.name,
            self.grant.prefixes().map(|p| &p[..]).unwrap_or_default()
        ))
    }

    fn hello(&mut self, id: u64, h: v1::Hello) -> Next {
        if h.protocol_version != PROTOCOL_VERSION {
            self.close(
                id,
                ErrorCode::UnsupportedVersion,
                format!(
                    "protocol version {} is not supported; this broker speaks {PROTOCOL_VERSION}",
                    h.protocol_version
                ),
            );
            return Next::Close;
        }
        let Some(grant) = self.shared.config.auth.authenticate(&h.token) else {
            info!(conn = self.id, peer = %self.peer, client = %h.client_name, "authentication failed: unknown or missing token");
            let msg = if h.token.is_empty() {
                "this broker requires a token (Hello.token; the CLI takes --token or SQUALL_TOKEN)"
            } else {
                "the token is not valid for this broker"
            };
            self.close(id, ErrorCode::Unauthenticated, msg.into());
            return Next::Close;
        };
        if let Some(p) = grant.prefixes() {
            let _ = self.flow.prefixes.set(p.clone());
        }
        self.unrestricted = grant.is_unrestricted();
        if self.shared.config.auth.is_enabled() {
            debug!(conn = self.id, peer = %self.peer, token = %grant.name, "authenticated");
        }
        self.grant = grant;
        let cfg = &self.shared.config;
        if self
            .shared
            .hub
            .send(HubCmd::Register {
                conn: self.id,
                out: self.out.clone(),
                name: self.consumer_name(&h.client_name),
                peer: self.peer,
            })
            .is_err()
        {
            self.close(
                id,
                ErrorCode::ShuttingDown,
                "the broker is shutting down".into(),
            );
            return Next::Close;
        }
        self.registered = true;
        debug!(conn = self.id, peer = %self.peer, client = %h.client_name, "hello");
        self.reply(
            id,
            response::Result::Hello(v1::HelloOk {
                protocol_version: PROTOCOL_VERSION,
                server_version: env!("CARGO_PKG_VERSION").to_owned(),
                node_id: cfg.node_id.clone(),
                limits: Some(v1::Limits {
                    max_frame_bytes: cfg.max_frame_bytes as u32,
                    max_payload_bytes: cfg.max_payload_bytes as u32,
                    max_batch: cfg.max_batch as u32,
                    max_prefetch: cfg.max_prefetch,
                    max_lease_ms: cfg.max_lease_ms,
                    max_inflight_requests: cfg.max_inflight_requests,
                }),
            }),
        );
        Next::Continue
    }

    /// How task status names this connection as a lease holder: its client name (cut
    /// to a bounded length), else its address.
    fn consumer_name(&self, client_name: &str) -> Arc<str> {
        if client_name.is_empty() {
            return Arc::from(self.peer.to_string());
        }
        let mut cut = client_name.len().min(MAX_CLIENT_NAME_BYTES);
        while !client_name.is_char_boundary(cut) {
            cut -= 1;
        }
        Arc::from(&client_name[..cut])
    }

    fn validate_task(&self, t: &v1::TaskSpec) -> Result<(), (ErrorCode, String)> {
        let cfg = &self.shared.config;
        squall_proto::validate_queue_name(&t.queue)
            .map_err(|e| (ErrorCode::InvalidQueueName, e.to_string()))?;
        if t.payload.is_empty() {
            return Err((ErrorCode::EmptyPayload, "task payload is empty".into()));
        }
        if t.payload.len() > cfg.max_payload_bytes {
            return Err((
                ErrorCode::PayloadTooLarge,
                format!(
                    "payload of {} bytes exceeds the maximum of {} bytes",
                    t.payload.len(),
                    cfg.max_payload_bytes
                ),
            ));
        }
        if t.lease_ms > cfg.max_lease_ms {
            return Err((
                ErrorCode::BadRequest,
                format!(
                    "lease of {} ms exceeds the maximum of {} ms",
                    t.lease_ms, cfg.max_lease_ms
                ),
            ));
        }
        if t.idempotency_key.len() > MAX_IDEMPOTENCY_KEY_BYTES {
            return Err((
                ErrorCode::BadRequest,
                format!(
                    "idempotency key of {} bytes exceeds the maximum of {MAX_IDEMPOTENCY_KEY_BYTES} bytes",
                    t.idempotency_key.len()
                ),
            ));
        }
        Ok(())
    }

    fn intern(&mut self, name: &str) -> Arc<str> {
        match &self.last_queue {
            Some(q) if &**q == name => q.clone(),
            _ => {
                let q: Arc<str> = Arc::from(name);
                self.last_queue = Some(q.clone());
                q
            }
        }
    }

    fn publish(&mut self, id: u64, p: v1::Publish) -> Next {
        let n = p.tasks.len();
        let max = self.shared.config.max_batch;
        if n == 0 || n > max {
            return self.error(
                id,
                ErrorCode::BadRequest,
                format!("a publish carries 1..={max} tasks, not {n}"),
            );
        }
        for (i, t) in p.tasks.iter().enumerate() {
            if let Err((code, msg)) = self.validate_task(t) {
                let msg = if n > 1 {
                    format!("task {i} of the batch: {msg}; nothing was published")
                } else {
                    msg
                };
                return self.error(id, code, msg);
            }
        }
        let now = now_ms();
        let first = self.shared.store.allocate_ids(n as u64);
        let mut muts = Vec::with_capacity(n);
        let mut committed = Vec::with_capacity(n);
        for (i, t) in p.tasks.into_iter().enumerate() {
            let task_id = first + i as u64;
            let queue = self.intern(&t.queue);
            let delayed_until = if t.delay_ms > 0 {
                now.saturating_add(t.delay_ms)
            } else {
                0
            };
            let not_before_ms = delayed_until.max(t.run_at_ms);
            committed.push(Committed {
                queue: queue.clone(),
                id: task_id,
                priority: t.priority,
                not_before_ms,
                max_attempts: t.max_attempts,
                lease_ms: t.lease_ms,
            });
            muts.push(Mutation::Insert(Box::new(NewTask {
                id: task_id,
                state: TaskState {
                    queue,
                    status: TaskStatus::Pending,
                    priority: t.priority,
                    attempts: 0,
                    max_attempts: t.max_attempts,
                    lease_ms: t.lease_ms,
                    not_before_ms,
                    created_ms: now,
                    updated_ms: now,
                    last_error: None,
                },
                body: TaskBody {
                    created_ms: now,
                    payload: t.payload,
                    headers: t.headers.into_iter().collect(),
                    idempotency_key: Some(t.idempotency_key).filter(|k| !k.is_empty()),
                },
            })));
        }
        let muts = match (muts.len(), muts.pop()) {
            (1, Some(m)) => Muts::One(m),
            (_, Some(m)) => {
                muts.push(m);
                Muts::Many(muts)
            }
            (_, None) => return Next::Continue,
        };
        let bounded = self.shared.bounded.applies(&committed);
        let done = Done::Publish {
            out: self.out.clone(),
            req: id,
            hub: self.shared.hub.clone(),
            committed,
            timer: PublishTimer::start(&self.shared.metrics),
            reservation: None,
        };
        if !bounded {
            self.shared.writer.submit(muts, Some(done));
        } else if self
            .shared
            .hub
            .send(HubCmd::Publish {
                muts,
                done: Box::new(done),
            })
            .is_err()
        {
            // The hub is gone (shutting down); the publish was not submitted.
            return self.error(id, ErrorCode::ShuttingDown, "the broker is shutting down");
        }
        Next::Continue
    }
}

/// Read-buffer bytes a connection holds before Hello, counted against the budget all
/// such connections share (`handshake_memory_bytes`); given back at Hello or close.
struct HandshakeCharge {
    budget: Arc<Semaphore>,
    held: Option<OwnedSemaphorePermit>,
    bytes: usize,
}

impl HandshakeCharge {
    fn new(budget: Arc<Semaphore>) -> HandshakeCharge {
        HandshakeCharge {
            budget,
            held: None,
            bytes: 0,
        }
    }

    /// Raises the charge to `bytes`; false if the shared budget cannot cover it.
    fn cover(&mut self, bytes: usize) -> bool {
        let Some(more) = bytes.checked_sub(self.bytes).filter(|&m| m > 0) else {
            return true;
        };
        let Ok(more) = u32::try_from(more) else {
            return false;
        };
        match self.budget.clone().try_acquire_many_owned(more) {
            Ok(permit) => {
                match &mut self.held {
                    Some(held) => held.merge(permit),
                    None => self.held = Some(permit),
                }
                self.bytes = bytes;
                true
            }
            Err(_) => false,
        }
    }

    fn release(&mut self) {
        self.held = None;
        self.bytes = 0;
    }
}

/// Counts a connection open, and holds its place under `max_connections`, for as long
/// as it lives.
struct OpenConnection(Arc<Metrics>, #[allow(dead_code)] OwnedSemaphorePermit);

impl OpenConnection {
    fn new(metrics: &Arc<Metrics>, slot: OwnedSemaphorePermit) -> OpenConnection {
        metrics.connections_open.fetch_add(1, Relaxed);
        metrics.connections_accepted.fetch_add(1, Relaxed);
        OpenConnection(metrics.clone(), slot)
    }
}

fn idle_deadline(last_frame: Instant, idle: Duration) -> Instant {
    last_frame + if idle.is_zero() { NEVER } else { idle }
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.connections_open.fetch_sub(1, Relaxed);
    }
}

fn truncate_utf8(s: &mut String, max: usize) {
    if s.len() > max {
        let mut cut = max;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
    }
}

/// Drains the outbox, encoding every pending frame into one buffer per wakeup.
async fn write_loop<W: AsyncWrite + Unpin>(
    wr: W,
    rx: mpsc::UnboundedReceiver<Outbound>,
    conn: ConnId,
    shared: Arc<Shared>,
    mut waits: ConnWaits,
    flow: Arc<Flow>,
) {
    write_frames(wr, rx, conn, &shared, &mut waits, &flow).await;
    waits.release_all(&shared);
}

/// Whether a response answers a request (and so counts against `max_inflight_requests`):
/// everything but connection-level errors (id 0) and the unrequested end of a
/// subscription.
fn is_answer(r: &v1::Response) -> bool {
    r.id != 0 && !matches!(r.result, Some(response::Result::SubscriptionEnded(_)))
}

async fn write_frames<W: AsyncWrite + Unpin>(
    wr: W,
    rx: mpsc::UnboundedReceiver<Outbound>,
    conn: ConnId,
    shared: &Shared,
    waits: &mut ConnWaits,
    flow: &Flow,
) {
    let mut w = WriterHalf {
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
struct WriterHalf<'a, W> {
    wr: W,
    rx: mpsc::UnboundedReceiver<Outbound>,
    conn: ConnId,
    shared: &'a Shared,
    flow: &'a Flow,
    batch: Vec<Outbound>,
    queue: VecDeque<Outbound>,
    pending: BytesMut,
    timed_out: Vec<v1::Response>,
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

impl<W: AsyncWrite + Unpin> WriterHalf<'_, W> {
    async fn run(&mut self, waits: &mut ConnWaits) {
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
    async fn receive(&mut self, waits: &mut ConnWaits) {
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
                let bye = error_response(0, ErrorCode::ShuttingDown, "the broker is shutting down");
                encode_frame(&server_message(bye), &mut self.pending);
            }
            self.ending = true;
        }
        self.queue.extend(self.batch.drain(..));
    }

    /// Encodes queued messages while fewer than `limit` bytes are unsent.
    fn encode(&mut self, waits: &mut ConnWaits) {
        let mut answers = 0u32;
        let prefixes = self.flow.prefixes.get();
        let shared = self.shared;
        let flow = self.flow;
        let max_frame = shared.config.max_frame_bytes;
        let pending = &mut self.pending;
        let mut response = |mut r: v1::Response, buf: &mut BytesMut| {
            answers += u32::from(is_answer(&r));
            flow.release(r.id);
            if let Some(prefixes) = prefixes {
                hide_other_queues(&mut r, prefixes);
            }
            let (id, start) = (r.id, buf.len());
            encode_frame(&server_message(r), buf);
            let len = buf.len() - start - squall_proto::LENGTH_PREFIX_BYTES;
            if len > max_frame {
                // Never a frame the protocol's own limit refuses.
                buf.truncate(start);
                let too_large = error_response(
                    id,
                    ErrorCode::AnswerTooLarge,
                    format!(
                        "the answer is {len} bytes, above the frame limit of {max_frame} bytes"
                    ),
                );
                encode_frame(&server_message(too_large), buf);
            }
        };
        for r in self.timed_out.drain(..) {
            response(r, pending);
        }
        while !self.ending && pending.len() < self.limit {
            let Some(msg) = self.queue.pop_front() else {
                break;
            };
            match msg {
                Outbound::Response(r) => response(r, pending),
                Outbound::Deliver(d) => {
                    self.unreported += 1;
                    encode_delivery(shared, self.conn, d, pending)
                }
                Outbound::Admin(reply) => {
                    let room = max_frame.saturating_sub(ANSWER_ENVELOPE);
                    response(reply.into_response(&shared.store, room), pending)
                }
                Outbound::Close(r) => {
                    response(r, pending);
                    self.ending = true;
                }
                other => {
                    if let Some(r) = answer_status(shared, waits, other) {
                        response(r, pending);
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

impl<W> Drop for WriterHalf<'_, W> {
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

/// Answers the status and wait messages of the outbox (they read the store).
fn answer_status(shared: &Shared, waits: &mut ConnWaits, msg: Outbound) -> Option<v1::Response> {
    match msg {
        Outbound::Status { req, task, lease } => Some(
            match task_info(&shared.store, task, lease.as_ref(), None, now_ms()) {
                Ok(info) => task_response(req, info),
                Err(e) => error_response(
                    req,
                    ErrorCode::Storage,
                    format!("cannot read task {task}: {e}"),
                ),
            },
        ),
        Outbound::Wait {
            req,
            task,
            timeout_ms,
        } => waits.start(shared, req, task, timeout_ms),
        Outbound::WaitDone { req, task, state } => Some(waits.woken(shared, req, task, state)),
        Outbound::Recheck { req, task } => waits.recheck(shared, req, task),
        Outbound::Payload { req, task } => Some(match task_payload(&shared.store, task) {
            Ok(Some(p)) => v1::Response {
                id: req,
                result: Some(response::Result::Payload(p)),
            },
            Ok(None) => error_response(req, ErrorCode::NotFound, format!("no task {task}")),
            Err(e) => error_response(
                req,
                ErrorCode::Storage,
                format!("cannot read task {task}: {e}"),
            ),
        }),
        Outbound::Response(_) | Outbound::Deliver(_) | Outbound::Admin(_) | Outbound::Close(_) => {
            None
        }
    }
}

/// A task status answer about a queue outside the token's prefixes says "unknown",
/// as if the task did not exist.
fn hide_other_queues(r: &mut v1::Response, prefixes: &[String]) {
    let allowed = |queue: &str| prefixes.iter().any(|p| queue.starts_with(p.as_str()));
    if let Some(response::Result::Payload(p)) = &r.result {
        if !allowed(&p.queue) {
            *r = error_response(r.id, ErrorCode::NotFound, format!("no task {}", p.task_id));
        }
        return;
    }
    if let Some(response::Result::Task(info)) = &mut r.result {
        if !info.queue.is_empty() && !prefixes.iter().any(|p| info.queue.starts_with(p.as_str())) {
            *info = v1::TaskInfo {
                task_id: info.task_id,
                state: v1::TaskState::Unknown as i32,
                ..v1::TaskInfo::default()
            };
        }
    }
}

fn server_message(r: v1::Response) -> v1::ServerMessage {
    v1::ServerMessage {
        kind: Some(Kind::Response(r)),
    }
}

fn encode_delivery(shared: &Shared, conn: ConnId, d: Dispatch, buf: &mut BytesMut) {
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
    let msg = v1::ServerMessage {
        kind: Some(Kind::Delivery(v1::Delivery {
            subscription_id: d.sub,
            task_id: d.task,
            lease_token: d.token,
            attempt: d.attempt,
            max_attempts: d.max_attempts,
            deadline_ms: d.deadline_ms,
            priority: d.priority,
            payload: body.payload,
            headers: body.headers.into_iter().collect(),
            created_at_ms: body.created_ms,
            queue: d.queue.to_string(),
        })),
    };
    encode_frame(&msg, buf);
}
