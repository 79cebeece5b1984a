//! One client connection: the reader half decodes frames, enforces the handshake and
//! validates requests (publishes go straight to the store writer, result waits to the
//! writer half, everything else to the hub); the writer half drains the connection's
//! outbox and writes every pending frame with one syscall per wakeup, reading the store
//! for deliveries and task status on the way. Only this file touches client sockets.

use std::net::SocketAddr;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use bytes::BytesMut;
use prost::Message;
use squall_proto::v1::{self, request::Op, response, server_message::Kind};
use squall_proto::{encode_frame, split_frame, ErrorCode, FrameError, PROTOCOL_VERSION};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tracing::{debug, warn};

use super::admin::{self, AdminReply};
use super::hub::HubCmd;
use super::metrics::{Metrics, PublishTimer};
use super::status::{task_info, LeaseHolder};
use super::wait::{task_response, ConnWaits};
use super::waiters::Final;
use super::{now_ms, Done, Shared};
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
/// Frames written per wakeup at most.
const WRITE_BATCH: usize = 256;
/// Read buffer headroom kept before each read.
const READ_CHUNK: usize = 16 * 1024;

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

/// Whether the reader keeps going after a request.
enum Flow {
    Continue,
    Close,
}

struct Conn {
    id: ConnId,
    peer: SocketAddr,
    shared: Arc<Shared>,
    out: OutTx,
    registered: bool,
    /// The last queue name published to, interned, so a stream of publishes to one
    /// queue shares one allocation.
    last_queue: Option<Arc<str>>,
}

/// Serves one accepted connection until it closes or the server shuts down.
pub(crate) async fn serve(stream: TcpStream, peer: SocketAddr, id: ConnId, shared: Arc<Shared>) {
    let _open = OpenConnection::new(&shared.metrics);
    let (rd, wr) = stream.into_split();
    let (out, out_rx) = mpsc::unbounded_channel();
    let waits = ConnWaits::new(id, out.downgrade());
    shared
        .writers
        .spawn(write_loop(wr, out_rx, id, shared.clone(), waits));
    let mut conn = Conn {
        id,
        peer,
        shared,
        out,
        registered: false,
        last_queue: None,
    };
    conn.read_loop(rd).await;
    if conn.registered {
        let _ = conn.shared.hub.send(HubCmd::Disconnect { conn: id });
    }
    debug!(conn = id, peer = %conn.peer, "connection closed");
}

impl Conn {
    async fn read_loop(&mut self, mut rd: OwnedReadHalf) {
        let max_frame = self.shared.config.max_frame_bytes;
        let mut buf = BytesMut::with_capacity(READ_CHUNK);
        loop {
            loop {
                match split_frame(&mut buf, max_frame) {
                    Ok(Some(body)) => match v1::Request::decode(body) {
                        Ok(req) => {
                            if let Flow::Close = self.handle(req) {
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
            if buf.capacity() - buf.len() < READ_CHUNK / 4 {
                buf.reserve(READ_CHUNK);
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
            }
        }
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

    fn error(&self, id: u64, code: ErrorCode, message: impl Into<String>) -> Flow {
        self.send(error_response(id, code, message));
        Flow::Continue
    }

    fn close(&self, id: u64, code: ErrorCode, message: String) {
        debug!(conn = self.id, peer = %self.peer, ?code, %message, "closing connection on protocol error");
        let _ = self
            .out
            .send(Outbound::Close(error_response(id, code, message)));
    }

    fn handle(&mut self, req: v1::Request) -> Flow {
        let id = req.id;
        let Some(op) = req.op else {
            return self.error(id, ErrorCode::BadRequest, "request carries no operation");
        };
        if !self.registered {
            return match op {
                Op::Hello(h) => self.hello(id, h),
                _ => {
                    self.close(
                        id,
                        ErrorCode::HelloRequired,
                        "the first request on a connection must be Hello".into(),
                    );
                    Flow::Close
                }
            };
        }
        let hub = &self.shared.hub;
        let conn = self.id;
        let sent = match op {
            Op::Hello(_) => {
                return self.error(id, ErrorCode::BadRequest, "Hello was already received")
            }
            Op::Ping(_) => {
                self.reply(id, response::Result::Pong(v1::Pong {}));
                return Flow::Continue;
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
                Ok(op) => hub.send(HubCmd::Admin { conn, req: id, op }),
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
            Op::WaitResult(w) => {
                let _ = self.out.send(Outbound::Wait {
                    req: id,
                    task: w.task_id,
                    timeout_ms: w.timeout_ms,
                });
                return Flow::Continue;
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
        Flow::Continue
    }

    fn hello(&mut self, id: u64, h: v1::Hello) -> Flow {
        if h.protocol_version != PROTOCOL_VERSION {
            self.close(
                id,
                ErrorCode::UnsupportedVersion,
                format!(
                    "protocol version {} is not supported; this broker speaks {PROTOCOL_VERSION}",
                    h.protocol_version
                ),
            );
            return Flow::Close;
        }
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
            return Flow::Close;
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
                    max_inflight_requests: 0,
                }),
            }),
        );
        Flow::Continue
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

    fn publish(&mut self, id: u64, p: v1::Publish) -> Flow {
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
            (_, None) => return Flow::Continue,
        };
        self.shared.writer.submit(
            muts,
            Some(Done::Publish {
                out: self.out.clone(),
                req: id,
                hub: self.shared.hub.clone(),
                committed,
                timer: PublishTimer::start(&self.shared.metrics),
            }),
        );
        Flow::Continue
    }
}

/// Counts a connection open for as long as it lives.
struct OpenConnection(Arc<Metrics>);

impl OpenConnection {
    fn new(metrics: &Arc<Metrics>) -> OpenConnection {
        metrics.connections_open.fetch_add(1, Relaxed);
        metrics.connections_accepted.fetch_add(1, Relaxed);
        OpenConnection(metrics.clone())
    }
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
async fn write_loop(
    wr: OwnedWriteHalf,
    rx: mpsc::UnboundedReceiver<Outbound>,
    conn: ConnId,
    shared: Arc<Shared>,
    mut waits: ConnWaits,
) {
    write_frames(wr, rx, conn, &shared, &mut waits).await;
    waits.release_all(&shared);
}

async fn write_frames(
    mut wr: OwnedWriteHalf,
    mut rx: mpsc::UnboundedReceiver<Outbound>,
    conn: ConnId,
    shared: &Shared,
    waits: &mut ConnWaits,
) {
    let mut batch = Vec::with_capacity(WRITE_BATCH);
    let mut buf = BytesMut::with_capacity(64 * 1024);
    let mut timed_out = Vec::new();
    loop {
        let received = match waits.next_deadline() {
            None => rx.recv_many(&mut batch, WRITE_BATCH).await,
            Some(at) => tokio::select! {
                n = rx.recv_many(&mut batch, WRITE_BATCH) => n,
                _ = tokio::time::sleep_until(at) => {
                    waits.expire(shared, tokio::time::Instant::now(), &mut timed_out);
                    if timed_out.is_empty() {
                        continue;
                    }
                    usize::MAX
                }
            },
        };
        if received == 0 {
            if shared.conn_cancel.is_cancelled() {
                let bye = error_response(0, ErrorCode::ShuttingDown, "the broker is shutting down");
                encode_frame(&server_message(bye), &mut buf);
                let _ = wr.write_all(&buf).await;
            }
            let _ = wr.shutdown().await;
            return;
        }
        for r in timed_out.drain(..) {
            encode_frame(&server_message(r), &mut buf);
        }
        let mut close = false;
        for msg in batch.drain(..) {
            match msg {
                Outbound::Response(r) => encode_frame(&server_message(r), &mut buf),
                Outbound::Deliver(d) => encode_delivery(shared, conn, d, &mut buf),
                Outbound::Admin(reply) => {
                    let response = reply.into_response(&shared.store);
                    encode_frame(&server_message(response), &mut buf);
                }
                Outbound::Close(r) => {
                    encode_frame(&server_message(r), &mut buf);
                    close = true;
                    break;
                }
                other => {
                    if let Some(r) = answer_status(shared, waits, other) {
                        encode_frame(&server_message(r), &mut buf);
                    }
                }
            }
        }
        if let Err(e) = wr.write_all(&buf).await {
            debug!(conn, error = %e, "write failed");
            return;
        }
        if close {
            let _ = wr.shutdown().await;
            return;
        }
        buf.clear();
        if buf.capacity() > 4 * 1024 * 1024 {
            buf = BytesMut::with_capacity(64 * 1024);
        }
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
        Outbound::Response(_) | Outbound::Deliver(_) | Outbound::Admin(_) | Outbound::Close(_) => {
            None
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
