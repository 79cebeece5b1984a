//! One TCP connection to the broker: dial and handshake, the writer task (drains its
//! queue per wakeup and writes every queued frame with one `write_all`), the reader task
//! (routes answers to waiting calls by request id and deliveries to subscriptions by
//! subscription id), the deadline task (times out calls that waited the request timeout:
//! one timer per connection, not one per call), and `Conn::call`, the pipelined
//! request/answer primitive.
//!
//! No reconnect logic and no public API live here: `client/` owns the lifecycle and
//! decides what a lost connection means for callers and subscriptions.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use bytes::BytesMut;
// The ids are this client's own (never chosen by the broker): no flooding to guard against.
use foldhash::{HashMap, HashMapExt};
use futures_util::StreamExt;
use parking_lot::Mutex;
use squall_proto::v1::{self, request::Op, response, server_message::Kind};
use squall_proto::{decode_frame, encode_frame, DEFAULT_MAX_FRAME_BYTES, PROTOCOL_VERSION};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot, Notify, Semaphore};
use tokio_util::codec::FramedRead;
use tokio_util::sync::CancellationToken;
use tracing::{debug, trace, warn};

use crate::config::Config;
use crate::delivery::Delivery;
use crate::error::{ClientError, Result};
use crate::info::ServerInfo;
use crate::subscription::SubEvent;
use crate::wire::ServerCodec;

/// Most requests taken off the queue per writer wakeup.
const WRITE_BATCH: usize = 512;
/// Write out the buffer once it holds this much, even mid-batch.
const FLUSH_AT_BYTES: usize = 256 * 1024;
/// A write buffer that grew past this is replaced after use, so one burst of large
/// payloads does not pin memory for the connection's lifetime.
const KEEP_BUFFER_BYTES: usize = 1024 * 1024;
/// Outstanding requests allowed when the broker announces no limit.
const DEFAULT_INFLIGHT: usize = 4096;
/// Permits kept back from the broker's `max_inflight_requests` for fire-and-forget
/// frames (releases of dropped deliveries, unsubscribes on drop).
const INFLIGHT_RESERVE: usize = 8;

type Waiter = oneshot::Sender<Result<response::Result>>;

/// The connection's read half: plain TCP or TLS.
type ReadHalf = Box<dyn AsyncRead + Send + Unpin>;
/// The connection's write half: plain TCP or TLS.
type WriteHalf = Box<dyn AsyncWrite + Send + Unpin>;

/// Calls waiting for an answer; `closed` is set once, when the connection ends, and
/// from then on no call can register.
struct Pending {
    closed: Option<String>,
    waiters: HashMap<u64, Waiter>,
    /// The calls that wait the connection's request timeout, in the order they were
    /// registered, so by deadline (one timeout, a clock that does not go back). Entries
    /// of calls answered or given up are dropped from the front as the reader answers,
    /// and all at once when they outnumber the waiters ([`Pending::forget_answered`]).
    deadlines: VecDeque<Deadline>,
}

/// When the call waiting for the answer to request `id` times out.
struct Deadline {
    at: Instant,
    id: u64,
    op: &'static str,
}

impl Pending {
    /// Drops the deadlines of calls no longer waiting from the front (answers mostly
    /// come in request order), and all of them once they are more than twice the
    /// waiters, so that the queue stays within a small multiple of the calls in flight.
    fn forget_answered(&mut self) {
        while self
            .deadlines
            .front()
            .is_some_and(|d| !self.waiters.contains_key(&d.id))
        {
            self.deadlines.pop_front();
        }
        if self.deadlines.len() > 2 * self.waiters.len() + 64 {
            let waiters = &self.waiters;
            self.deadlines.retain(|d| waiters.contains_key(&d.id));
        }
        debug_assert!(self.deadlines.len() <= 2 * self.waiters.len() + 64);
        debug_assert!(self
            .deadlines
            .front()
            .is_none_or(|d| self.waiters.contains_key(&d.id)));
    }
}

/// A live (or just ended) connection. Shared by the reader and writer tasks, the
/// client, and every delivery received on it (a lease belongs to its connection).
pub(crate) struct Conn {
    addr: Arc<str>,
    generation: u64,
    next_id: AtomicU64,
    tx: mpsc::UnboundedSender<v1::Request>,
    pending: Mutex<Pending>,
    routes: Mutex<HashMap<u64, mpsc::UnboundedSender<SubEvent>>>,
    inflight: Semaphore,
    cancel: CancellationToken,
    info: Arc<ServerInfo>,
    request_timeout: Duration,
    /// Wakes the deadline task when a deadline is queued into an empty queue.
    deadline_queued: Notify,
}

impl Conn {
    /// Connects, performs the `Hello` handshake within `connect_timeout`, and starts
    /// the reader and writer tasks.
    pub(crate) async fn dial(
        addr: &Arc<str>,
        config: &Config,
        generation: u64,
    ) -> Result<Arc<Conn>> {
        let handshake = handshake(addr, config);
        let (rd, wr, leftover, hello) =
            match tokio::time::timeout(config.connect_timeout, handshake).await {
                Ok(r) => r?,
                Err(_) => {
                    return Err(ClientError::Timeout {
                        op: "connect",
                        after: config.connect_timeout,
                    })
                }
            };
        let info = Arc::new(ServerInfo::from(hello));
        let inflight = match info.limits.max_inflight_requests as usize {
            0 => DEFAULT_INFLIGHT,
            n if n > 2 * INFLIGHT_RESERVE => n - INFLIGHT_RESERVE,
            n => n,
        }
        .min(Semaphore::MAX_PERMITS);
        let (tx, rx) = mpsc::unbounded_channel();
        let conn = Arc::new(Conn {
            addr: addr.clone(),
            generation,
            // Id 1 was the Hello.
            next_id: AtomicU64::new(2),
            tx,
            pending: Mutex::new(Pending {
                closed: None,
                waiters: HashMap::new(),
                deadlines: VecDeque::new(),
            }),
            routes: Mutex::new(HashMap::new()),
            inflight: Semaphore::new(inflight),
            cancel: CancellationToken::new(),
            info,
            request_timeout: config.request_timeout,
            deadline_queued: Notify::new(),
        });
        // Deliveries carry payloads up to max_payload_bytes plus their envelope; accept
        // whatever the broker may legally send, and never less than the default.
        let max_frame =
            (conn.info.limits.max_frame_bytes as usize).max(DEFAULT_MAX_FRAME_BYTES) + 64 * 1024;
        let mut frames = FramedRead::new(rd, ServerCodec::new(max_frame));
        frames.read_buffer_mut().extend_from_slice(&leftover);
        tokio::spawn(read_loop(conn.clone(), frames));
        tokio::spawn(write_loop(conn.clone(), rx, wr));
        tokio::spawn(deadline_loop(conn.clone()));
        debug!(addr = %conn.addr, generation, node = %conn.info.node_id, "connected");
        Ok(conn)
    }

    pub(crate) fn info(&self) -> &Arc<ServerInfo> {
        &self.info
    }

    pub(crate) fn generation(&self) -> u64 {
        self.generation
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.cancel.is_cancelled()
    }

    /// Resolves when the connection has ended (for any reason).
    pub(crate) async fn closed(&self) {
        self.cancel.cancelled().await
    }

    /// Why the connection ended ("" while it is open).
    pub(crate) fn close_reason(&self) -> String {
        self.pending.lock().closed.clone().unwrap_or_default()
    }

    pub(crate) fn next_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    fn lost(&self) -> ClientError {
        let reason = self
            .pending
            .lock()
            .closed
            .clone()
            .unwrap_or_else(|| "connection closed".to_owned());
        ClientError::ConnectionLost { reason }
    }

    /// Sends `op` and waits for its answer, within the request timeout. A broker
    /// `Error` answer becomes `ClientError::Server`.
    pub(crate) async fn call(&self, op: Op, name: &'static str) -> Result<response::Result> {
        self.call_with_id(self.next_id(), op, name).await
    }

    /// [`call`](Self::call) with an id taken from [`next_id`](Self::next_id) beforehand
    /// (a subscription registers its route under the id before sending).
    pub(crate) async fn call_with_id(
        &self,
        id: u64,
        op: Op,
        name: &'static str,
    ) -> Result<response::Result> {
        match self.inflight.try_acquire() {
            // The usual case: the connection's deadline task times the call out.
            Ok(permit) => self.exchange(permit, id, op, Some(name)).await,
            // The wait for a permit counts against the timeout too.
            // Boxed: the rare path's timer would otherwise make every call's future
            // (held by each request in flight) larger by its size.
            Err(_) => Box::pin(self.call_within(id, op, name, self.request_timeout)).await,
        }
    }

    /// [`call`](Self::call) bounded by `timeout` instead of the request timeout (for a
    /// request the broker holds on purpose, like `WaitResult`).
    pub(crate) async fn call_with_timeout(
        &self,
        op: Op,
        name: &'static str,
        timeout: Duration,
    ) -> Result<response::Result> {
        self.call_within(self.next_id(), op, name, timeout).await
    }

    async fn call_within(
        &self,
        id: u64,
        op: Op,
        name: &'static str,
        timeout: Duration,
    ) -> Result<response::Result> {
        match tokio::time::timeout(timeout, self.round_trip(id, op)).await {
            Ok(result) => result,
            Err(_) => Err(ClientError::Timeout {
                op: name,
                after: timeout,
            }),
        }
    }

    /// The request timeout this connection was made with.
    pub(crate) fn request_timeout(&self) -> Duration {
        self.request_timeout
    }

    /// Registers a waiter for the answer to request `id` (before it is sent); with
    /// `timed` (the operation's name), the deadline task fails it with `Timeout` once
    /// the request timeout has passed.
    fn wait_for(
        &self,
        id: u64,
        timed: Option<&'static str>,
    ) -> Result<oneshot::Receiver<Result<response::Result>>> {
        let (waiter, answer) = oneshot::channel();
        let mut pending = self.pending.lock();
        if let Some(reason) = &pending.closed {
            return Err(ClientError::ConnectionLost {
                reason: reason.clone(),
            });
        }
        pending.waiters.insert(id, waiter);
        if let Some(op) = timed {
            let first = pending.deadlines.is_empty();
            let at = Instant::now() + self.request_timeout;
            debug_assert!(pending.deadlines.back().is_none_or(|d| d.at <= at));
            pending.deadlines.push_back(Deadline { at, id, op });
            if first {
                self.deadline_queued.notify_one();
            }
        }
        Ok(answer)
    }

    async fn round_trip(&self, id: u64, op: Op) -> Result<response::Result> {
        let permit = self.inflight.acquire().await.map_err(|_| self.lost())?;
        self.exchange(permit, id, op, None).await
    }

    /// Sends request `id` under `_permit` and waits for its answer (timed by the
    /// deadline task if `timed` names the operation).
    async fn exchange(
        &self,
        _permit: tokio::sync::SemaphorePermit<'_>,
        id: u64,
        op: Op,
        timed: Option<&'static str>,
    ) -> Result<response::Result> {
        let answer = self.wait_for(id, timed)?;
        // Removes the waiter if this future is dropped (timeout or caller gave up).
        let mut guard = WaiterGuard {
            conn: self,
            id,
            armed: true,
        };
        if self.tx.send(v1::Request { id, op: Some(op) }).is_err() {
            return Err(self.lost());
        }
        let result = answer.await.unwrap_or_else(|_| Err(self.lost()));
        guard.armed = false;
        match result? {
            response::Result::Error(e) => Err(ClientError::from_wire(e)),
            ok => Ok(ok),
        }
    }

    /// Sends `op` now, without waiting, if an in-flight permit is free (`Ok(None)`
    /// when none is: the caller then waits as [`call`](Self::call) does). What it
    /// returns resolves to the answer, within the request timeout.
    pub(crate) fn send_now(self: &Arc<Self>, op: Op, name: &'static str) -> Result<Option<Sent>> {
        let Ok(permit) = self.inflight.try_acquire() else {
            return if self.is_closed() {
                Err(self.lost())
            } else {
                Ok(None)
            };
        };
        let id = self.next_id();
        let answer = self.wait_for(id, Some(name))?;
        // Given back by `Sent` when it resolves or is dropped.
        permit.forget();
        let sent = Sent {
            conn: self.clone(),
            id,
            answer,
            done: false,
        };
        if self.tx.send(v1::Request { id, op: Some(op) }).is_err() {
            return Err(self.lost());
        }
        Ok(Some(sent))
    }

    /// Sends a request whose answer nobody waits for (the reader logs it at debug).
    pub(crate) fn send_oneway(&self, op: Op) {
        if self.is_closed() {
            return;
        }
        let id = self.next_id();
        let _ = self.tx.send(v1::Request { id, op: Some(op) });
    }

    /// Routes deliveries tagged `subscription_id` to `tx`. Fails if the connection ended.
    pub(crate) fn add_route(
        &self,
        subscription_id: u64,
        tx: mpsc::UnboundedSender<SubEvent>,
    ) -> Result<()> {
        let mut routes = self.routes.lock();
        // Checked under the routes lock: shutdown() sets the flag before clearing routes.
        if self.is_closed() {
            return Err(self.lost());
        }
        routes.insert(subscription_id, tx);
        Ok(())
    }

    pub(crate) fn remove_route(&self, subscription_id: u64) {
        let removed = self.routes.lock().remove(&subscription_id);
        drop(removed);
    }

    /// Ends the connection once: fails every waiting call with `ConnectionLost`,
    /// drops the subscription routes, stops both tasks. Idempotent.
    pub(crate) fn shutdown(&self, reason: &str) {
        let waiters = {
            let mut pending = self.pending.lock();
            if pending.closed.is_some() {
                return;
            }
            pending.closed = Some(reason.to_owned());
            pending.deadlines.clear();
            std::mem::take(&mut pending.waiters)
        };
        self.cancel.cancel();
        self.inflight.close();
        let routes = std::mem::take(&mut *self.routes.lock());
        drop(routes);
        for (_, waiter) in waiters {
            let _ = waiter.send(Err(ClientError::ConnectionLost {
                reason: reason.to_owned(),
            }));
        }
        debug!(addr = %self.addr, generation = self.generation, reason, "connection ended");
    }

    /// Handles one server message. `Err` carries the reason to end the connection.
    fn dispatch(self: &Arc<Self>, msg: v1::ServerMessage) -> std::result::Result<(), String> {
        match msg.kind {
            Some(Kind::Response(resp)) => self.answer(resp),
            Some(Kind::Delivery(d)) => {
                self.route(d);
                Ok(())
            }
            // A newer broker's message kind: nothing here knows what to do with it.
            None => {
                debug!(addr = %self.addr, "ignoring a server message of unknown kind");
                Ok(())
            }
        }
    }

    fn answer(&self, resp: v1::Response) -> std::result::Result<(), String> {
        if resp.id == 0 {
            return Err(match resp.result {
                Some(response::Result::Error(e)) => {
                    let err = ClientError::from_wire(e);
                    warn!(addr = %self.addr, error = %err, "broker closed the connection");
                    err.to_string()
                }
                _ => "broker sent an answer with id 0 that is not an error".to_owned(),
            });
        }
        let waiter = {
            let mut pending = self.pending.lock();
            let waiter = pending.waiters.remove(&resp.id);
            pending.forget_answered();
            waiter
        };
        match (waiter, resp.result) {
            (Some(waiter), Some(result)) => {
                let _ = waiter.send(Ok(result));
            }
            (Some(waiter), None) => {
                let _ = waiter.send(Err(ClientError::Protocol(format!(
                    "answer to request {} carries no result",
                    resp.id
                ))));
            }
            (None, Some(response::Result::SubscriptionEnded(ended))) => {
                self.end_subscription(resp.id, ended);
            }
            (None, Some(response::Result::Error(e))) => {
                debug!(id = resp.id, code = e.code, message = %e.message, "error answer to a fire-and-forget or timed-out request");
            }
            (None, _) => trace!(
                id = resp.id,
                "answer to a fire-and-forget or timed-out request"
            ),
        }
        Ok(())
    }

    /// The broker ended subscription `id` (its queue was deleted): the stream gets the
    /// reason and then ends.
    fn end_subscription(&self, id: u64, ended: v1::SubscriptionEnded) {
        let route = self.routes.lock().remove(&id);
        if let Some(tx) = route {
            warn!(queue = %ended.queue, reason = %ended.reason, "the broker ended a subscription");
            let _ = tx.send(SubEvent::Failed(ClientError::SubscriptionEnded {
                queue: ended.queue,
                reason: ended.reason,
            }));
        }
    }

    fn route(self: &Arc<Self>, d: v1::Delivery) {
        let sub = d.subscription_id;
        let delivery = Delivery::new(d, self.clone());
        let unrouted = {
            let routes = self.routes.lock();
            match routes.get(&sub) {
                Some(tx) => match tx.send(SubEvent::Delivery(delivery)) {
                    Ok(()) => None,
                    Err(mpsc::error::SendError(SubEvent::Delivery(d))) => Some(d),
                    Err(_) => None,
                },
                None => Some(delivery),
            }
        };
        // Outside the lock: releasing sends a frame.
        if let Some(d) = unrouted {
            debug!(
                subscription = sub,
                task = d.id(),
                "delivery for a closed subscription; releasing it"
            );
            // Never seen by anyone: back without an attempt counted.
            let (_, mut lease) = d.into_parts();
            lease.release_unseen_oneway();
            // Normally already on its way; repeated in case the Subscribe timed out
            // on our side but succeeded on the broker's. Unsubscribe is idempotent.
            self.send_oneway(Op::Unsubscribe(v1::Unsubscribe {
                subscription_id: sub,
            }));
        }
    }
}

impl std::fmt::Debug for Conn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Conn")
            .field("addr", &self.addr)
            .field("generation", &self.generation)
            .field("closed", &self.is_closed())
            .finish_non_exhaustive()
    }
}

/// A request already sent ([`Conn::send_now`]): resolves to its answer, or to
/// `Timeout` after the request timeout (from the deadline task). Holds one in-flight
/// permit until it resolves or is dropped, and withdraws its waiter when dropped
/// unresolved.
pub(crate) struct Sent {
    conn: Arc<Conn>,
    id: u64,
    answer: oneshot::Receiver<Result<response::Result>>,
    done: bool,
}

impl Sent {
    fn finish(&mut self) {
        if !self.done {
            self.done = true;
            self.conn.pending.lock().waiters.remove(&self.id);
            self.conn.inflight.add_permits(1);
        }
    }
}

impl std::future::Future for Sent {
    type Output = Result<response::Result>;

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        use std::task::Poll;
        debug_assert!(!self.done, "polled after it resolved");
        let result = match std::pin::Pin::new(&mut self.answer).poll(cx) {
            Poll::Ready(answer) => match answer.unwrap_or_else(|_| Err(self.conn.lost())) {
                Ok(response::Result::Error(e)) => Err(ClientError::from_wire(e)),
                other => other,
            },
            Poll::Pending => return Poll::Pending,
        };
        self.finish();
        Poll::Ready(result)
    }
}

impl Drop for Sent {
    fn drop(&mut self) {
        self.finish();
    }
}

struct WaiterGuard<'a> {
    conn: &'a Conn,
    id: u64,
    armed: bool,
}

impl Drop for WaiterGuard<'_> {
    fn drop(&mut self) {
        if self.armed {
            self.conn.pending.lock().waiters.remove(&self.id);
        }
    }
}

/// TCP connect, the TLS handshake if configured, then `Hello`/`HelloOk`. Returns the
/// split stream, any bytes read past the answer, and the answer.
async fn handshake(
    addr: &str,
    config: &Config,
) -> Result<(ReadHalf, WriteHalf, BytesMut, v1::HelloOk)> {
    let stream = TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    let (mut rd, mut wr): (ReadHalf, WriteHalf) = match &config.tls {
        None => {
            let (rd, wr) = stream.into_split();
            (Box::new(rd), Box::new(wr))
        }
        Some(tls) => {
            let name = tls.server_name(addr)?;
            let stream = tls.connector.connect(name, stream).await.map_err(|e| {
                std::io::Error::new(e.kind(), format!("TLS handshake with {addr} failed: {e}"))
            })?;
            let (rd, wr) = tokio::io::split(stream);
            (Box::new(rd), Box::new(wr))
        }
    };
    let hello = v1::Request {
        id: 1,
        op: Some(Op::Hello(v1::Hello {
            protocol_version: PROTOCOL_VERSION,
            client_name: config.client_name.clone(),
            token: config.token.0.clone(),
        })),
    };
    let mut buf = BytesMut::new();
    encode_frame(&hello, &mut buf);
    wr.write_all(&buf).await?;
    buf.clear();
    let answer: v1::ServerMessage = loop {
        if buf.starts_with(b"HTTP") {
            // An HTTP server answering the Hello frame as a bad request: the address
            // is a broker's metrics port (or another web server), read as a length.
            return Err(ClientError::Config(format!(
                "{addr} answers in HTTP: that is a broker's HTTP port (metrics and health, \
                 7601 by default), not its protocol port (7600 by default, set by \
                 `squall serve --listen`)"
            )));
        }
        if let Some(msg) = decode_frame(&mut buf, DEFAULT_MAX_FRAME_BYTES)? {
            break msg;
        }
        if rd.read_buf(&mut buf).await? == 0 {
            return Err(ClientError::ConnectionLost {
                reason: "broker closed the connection during the handshake".into(),
            });
        }
    };
    match answer.kind {
        Some(Kind::Response(v1::Response {
            result: Some(response::Result::Hello(ok)),
            ..
        })) => Ok((rd, wr, buf, *ok)),
        Some(Kind::Response(v1::Response {
            result: Some(response::Result::Error(e)),
            ..
        })) => Err(ClientError::from_wire(e)),
        other => Err(ClientError::Protocol(format!(
            "expected HelloOk in answer to Hello, got {other:?}"
        ))),
    }
}

async fn read_loop(conn: Arc<Conn>, mut frames: FramedRead<ReadHalf, ServerCodec>) {
    let reason = loop {
        let next = tokio::select! {
            biased;
            _ = conn.cancel.cancelled() => break "connection closed by the client".to_owned(),
            next = frames.next() => next,
        };
        match next {
            None => break "broker closed the connection".to_owned(),
            Some(Err(e)) => break format!("reading from the broker failed: {e}"),
            Some(Ok(msg)) => {
                if let Err(reason) = conn.dispatch(msg) {
                    break reason;
                }
            }
        }
    };
    conn.shutdown(&reason);
}

/// Times out the calls that wait the request timeout: sleeps until the oldest one's
/// deadline (the queue is in deadline order), fails every call whose deadline passed
/// with `Timeout` (its answer, if it comes later, is dropped as the reader drops any
/// answer nobody waits for), and goes back to sleep; with nothing queued it waits to
/// be told. Ends with the connection.
async fn deadline_loop(conn: Arc<Conn>) {
    loop {
        let now = Instant::now();
        let (expired, next) = {
            let mut pending = conn.pending.lock();
            let mut expired = Vec::new();
            pending.forget_answered();
            while let Some(d) = pending.deadlines.front() {
                if d.at > now {
                    break;
                }
                let (id, op) = (d.id, d.op);
                pending.deadlines.pop_front();
                if let Some(waiter) = pending.waiters.remove(&id) {
                    expired.push((waiter, op));
                }
                pending.forget_answered();
            }
            (expired, pending.deadlines.front().map(|d| d.at))
        };
        for (waiter, op) in expired {
            let _ = waiter.send(Err(ClientError::Timeout {
                op,
                after: conn.request_timeout,
            }));
        }
        tokio::select! {
            _ = conn.cancel.cancelled() => return,
            _ = conn.deadline_queued.notified() => {}
            _ = tokio::time::sleep_until(next.unwrap_or(now)), if next.is_some() => {}
        }
    }
}

async fn write_loop(
    conn: Arc<Conn>,
    mut rx: mpsc::UnboundedReceiver<v1::Request>,
    mut wr: WriteHalf,
) {
    let mut batch = Vec::with_capacity(WRITE_BATCH);
    let mut buf = BytesMut::with_capacity(64 * 1024);
    loop {
        let n = tokio::select! {
            biased;
            _ = conn.cancel.cancelled() => break,
            n = rx.recv_many(&mut batch, WRITE_BATCH) => n,
        };
        if n == 0 {
            break;
        }
        trace!(frames = n, "writing batch");
        for req in batch.drain(..) {
            encode_frame(&req, &mut buf);
            if buf.len() >= FLUSH_AT_BYTES && !write_out(&conn, &mut wr, &mut buf).await {
                return;
            }
        }
        if !buf.is_empty() && !write_out(&conn, &mut wr, &mut buf).await {
            return;
        }
        if buf.capacity() > KEEP_BUFFER_BYTES {
            buf = BytesMut::with_capacity(64 * 1024);
        }
    }
    // Closing our half tells the broker we are gone, so it frees our leases at once.
    let _ = wr.shutdown().await;
}

/// Writes and clears `buf`; on failure ends the connection and returns false.
async fn write_out(conn: &Conn, wr: &mut WriteHalf, buf: &mut BytesMut) -> bool {
    let result = tokio::select! {
        biased;
        _ = conn.cancel.cancelled() => return false,
        // The flush pushes out what TLS buffers (a no-op on plain TCP).
        r = async { wr.write_all(buf).await?; wr.flush().await } => r,
    };
    buf.clear();
    match result {
        Ok(()) => true,
        Err(e) => {
            conn.shutdown(&format!("writing to the broker failed: {e}"));
            false
        }
    }
}

/// Maps an answer of the wrong kind to a protocol error.
pub(crate) fn unexpected(op: &str, got: response::Result) -> ClientError {
    ClientError::Protocol(format!("unexpected answer to {op}: {got:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn deadline(id: u64) -> Deadline {
        Deadline {
            at: Instant::now(),
            id,
            op: "test",
        }
    }

    /// One call that waits long must not make the deadlines of the thousands answered
    /// after it pile up: the queue stays within a small multiple of the waiting calls,
    /// and keeps the deadline of the one still waiting.
    #[test]
    fn deadlines_of_answered_calls_do_not_pile_up_behind_one_still_waiting() {
        let mut pending = Pending {
            closed: None,
            waiters: HashMap::new(),
            deadlines: VecDeque::new(),
        };
        pending.waiters.insert(1, oneshot::channel().0);
        pending.deadlines.push_back(deadline(1));
        for id in 2..10_000 {
            pending.waiters.insert(id, oneshot::channel().0);
            pending.deadlines.push_back(deadline(id));
            pending.waiters.remove(&id);
            pending.forget_answered();
            assert!(pending.deadlines.len() <= 2 * pending.waiters.len() + 64);
        }
        assert_eq!(pending.deadlines.front().map(|d| d.id), Some(1));
        pending.waiters.remove(&1);
        pending.forget_answered();
        assert!(pending.deadlines.is_empty());
    }
}
