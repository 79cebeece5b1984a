//! The reader half of one connection: reads frames under the handshake and idle
//! deadlines and the connection's budgets, decodes each through the wire edge, and
//! hands each request to its function (`requests.rs`). It pauses reading while the
//! writer half has too many answers outstanding. Sends only to the outbox, the hub and
//! the store writer (the publishes of one read together); never writes to the socket.

use std::net::SocketAddr;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use squall_proto::{split_frame, ErrorCode};
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use super::flow::{Flow, HandshakeCharge, NEVER};
use super::shared::Shared;
use super::wire;
use crate::auth::Grant;
use crate::broker::ConnId;
use crate::server::done::Done;
use crate::server::msg::{Failure, OutTx, Outbound, Reply, ReqId};
use crate::store::Muts;

/// Read buffer headroom kept before each read.
const READ_CHUNK: usize = 16 * 1024;
/// Read buffer headroom before Hello: a Hello is small, and until it is accepted the
/// buffer counts against the broker-wide `handshake_memory_bytes`.
const HELLO_CHUNK: usize = 1024;

/// Whether the reader keeps going after a request.
pub(super) enum Next {
    Continue,
    Close,
}

/// The reader half's state.
pub(super) struct Reader {
    pub(super) id: ConnId,
    pub(super) peer: SocketAddr,
    pub(super) shared: Arc<Shared>,
    pub(super) out: OutTx,
    pub(super) flow: Arc<Flow>,
    pub(super) registered: bool,
    /// What the token presented at Hello allows.
    pub(super) grant: Grant,
    /// `grant.is_unrestricted()`, so the common case costs one branch per request.
    pub(super) unrestricted: bool,
    /// The last queue name published to, interned, so a stream of publishes to one
    /// queue shares one allocation.
    pub(super) last_queue: Option<Arc<str>>,
    /// Cancelled when the reader must stop: at shutdown (`Shared::conn_cancel`), or in
    /// a cluster when the leadership this connection was admitted under ends.
    pub(super) cancel: CancellationToken,
    /// Publishes decoded from the bytes of one read, handed to the store writer
    /// together before the reader waits for anything (`submit_held`): one hand-off
    /// between threads per read instead of one per publish.
    pub(super) held: Vec<(Muts, Option<Done>)>,
    /// The time of the bytes being decoded (monotonic, and wall-clock milliseconds),
    /// read once for all the requests of one read that need it; forgotten at each
    /// read and after each wait.
    clock: Option<(std::time::Instant, u64)>,
}

impl Reader {
    pub(super) fn new(
        id: ConnId,
        peer: SocketAddr,
        shared: Arc<Shared>,
        out: OutTx,
        flow: Arc<Flow>,
    ) -> Reader {
        Reader {
            id,
            peer,
            cancel: shared.conn_cancel.clone(),
            shared,
            out,
            flow,
            registered: false,
            grant: Grant::all(),
            unrestricted: true,
            last_queue: None,
            held: Vec::new(),
            clock: None,
        }
    }

    /// The time the requests of the current read arrived (see `clock`).
    pub(super) fn clock(&mut self) -> (std::time::Instant, u64) {
        *self
            .clock
            .get_or_insert_with(|| (std::time::Instant::now(), crate::server::clock::now_ms()))
    }

    /// Hands the publishes held since the last hand-off to the store writer.
    pub(super) fn submit_held(&mut self) {
        if !self.held.is_empty() {
            self.shared.writer.submit_many(&mut self.held);
        }
        debug_assert!(self.held.is_empty());
    }

    pub(super) async fn read_loop<R: AsyncRead + Unpin>(
        &mut self,
        mut rd: R,
        handshake_deadline: Instant,
    ) {
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
                if self.flow.reserved.load(Relaxed) > unsent {
                    // What it waits for may be these publishes' answers.
                    self.submit_held();
                    if !self
                        .wait_for(|f| f.reserved.load(Relaxed) <= unsent, "answers too large")
                        .await
                    {
                        return;
                    }
                    self.clock = None;
                }
                let max = if self.registered {
                    max_frame
                } else {
                    max_hello_frame
                };
                match split_frame(&mut buf, max) {
                    Ok(Some(body)) => match wire::decode_request(body) {
                        Ok((id, req)) => {
                            frames += 1;
                            if let Next::Close = self.handle(id, req) {
                                return;
                            }
                        }
                        Err(e) => return self.close(0, e.code(), e.to_string()),
                    },
                    Ok(None) => break,
                    Err(e) => return self.close(0, e.code(), e.to_string()),
                }
            }
            self.submit_held();
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
                    Ok(_) => self.clock = None,
                    Err(e) => {
                        debug!(conn = self.id, error = %e, "read failed");
                        return;
                    }
                },
                _ = self.cancel.cancelled() => return,
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
                _ = self.cancel.cancelled() => break false,
                _ = self.out.closed() => break false,
            }
        };
        self.flow.reader_waiting.store(false, Relaxed);
        resumed
    }

    /// Puts the answer to request `req` into the outbox.
    pub(super) fn reply(&self, req: ReqId, reply: Reply) {
        let _ = self.out.send(Outbound::Reply { req, reply });
    }

    /// In a cluster, once the leadership this connection was admitted under has ended:
    /// closes it now with `NOT_LEADER` rather than once every answer it is owed has
    /// been written, as a plain end of reading would (a deposed leader may never
    /// answer a proposal it made: a leader removed from the cluster is told nothing more).
    pub(super) fn close_if_deposed(&self) {
        if self.cancel.is_cancelled() && !self.shared.conn_cancel.is_cancelled() {
            let why = "this node no longer leads the cluster; the outcome of requests still \
                       unanswered is unknown; reconnect to the leader";
            self.close(0, ErrorCode::NotLeader, why.to_owned());
        }
    }

    /// Sends a last error (request `id`, 0 for the connection) and closes.
    pub(super) fn close(&self, id: ReqId, code: ErrorCode, message: String) {
        debug!(conn = self.id, peer = %self.peer, ?code, %message, "closing connection on protocol error");
        let failure = Failure::Protocol(code, message);
        let _ = self.out.send(Outbound::Close { req: id, failure });
    }
}

fn idle_deadline(last_frame: Instant, idle: Duration) -> Instant {
    last_frame + if idle.is_zero() { NEVER } else { idle }
}
