//! Client connections. Each accepted connection has two tasks: the reader half
//! (`reader.rs`, with one function per request kind in `requests.rs`) and the writer
//! half (`writer.rs`), which share flow-control counters (`flow.rs`) and meet through
//! the connection's outbox. `wire.rs` is the one place in the server that reads and
//! builds protobuf. Only this folder touches client sockets.
//!
//! Here: a connection's life — the TLS handshake, starting both halves, telling the
//! hub when it ends — and the answer to connections past `max_connections`.

mod answers;
mod auth;
mod flow;
mod reader;
mod requests;
mod shared;
mod wait;
pub(crate) mod wire;
mod writer;

use std::net::SocketAddr;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use bytes::BytesMut;
use squall_proto::ErrorCode;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, OwnedSemaphorePermit};
use tokio::time::Instant;
use tracing::debug;

use self::flow::Flow;
use self::reader::Reader;
pub(crate) use self::shared::Shared;
use self::wait::Waits;
pub(crate) use self::writer::DELIVERY_WINDOW;
use crate::broker::ConnId;
use crate::server::metrics::Metrics;
use crate::server::msg::HubCmd;

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
    let waits = Waits::new(id, out.downgrade());
    let flow = Arc::new(Flow::default());
    shared.writers.spawn(writer::write_loop(
        wr,
        out_rx,
        id,
        shared.clone(),
        waits,
        flow.clone(),
    ));
    let mut reader = Reader::new(id, peer, shared, out, flow);
    reader.read_loop(rd, handshake_deadline).await;
    // Publishes decoded before the connection ended are stored all the same.
    reader.submit_held();
    reader.close_if_deposed();
    if reader.registered {
        let _ = reader.shared.hub.send(HubCmd::Disconnect { conn: id });
    }
    debug!(conn = id, peer = %reader.peer, "connection closed");
}

/// Answers a connection past `max_connections` with `TOO_MANY_CONNECTIONS` and closes
/// it, within the handshake timeout.
pub(crate) async fn refuse(stream: TcpStream, peer: SocketAddr, shared: Arc<Shared>) {
    let max = shared.config.max_connections;
    debug!(%peer, max, "connection refused: too many connections");
    let mut buf = BytesMut::new();
    wire::put_error(
        0,
        ErrorCode::TooManyConnections,
        format!("the broker has reached its limit of {max} connections; retry later"),
        &mut buf,
    );
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

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.connections_open.fetch_sub(1, Relaxed);
    }
}
