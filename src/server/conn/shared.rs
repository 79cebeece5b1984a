//! [`Shared`]: what every connection shares — the configuration, the store (read by
//! writer halves), the store writer (publishes), the hub's channel, the result-wait
//! registry, the bounded-queue table and the budgets. Built once by `server::start`.

use std::sync::Arc;

use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::ServerConfig;
use crate::server::bounded::Bounded;
use crate::server::done::StoreWriter;
use crate::server::lead::Leadership;
use crate::server::metrics::Metrics;
use crate::server::msg::HubTx;
use crate::server::waiters::Waiters;
use crate::store::Store;

/// State every connection shares.
pub(crate) struct Shared {
    pub(crate) config: ServerConfig,
    pub(crate) store: Store,
    pub(crate) writer: StoreWriter,
    pub(crate) hub: HubTx,
    pub(crate) metrics: Arc<Metrics>,
    /// Who waits for which task's result.
    pub(crate) waiters: Arc<Waiters>,
    /// TLS of the protocol port, if configured.
    pub(crate) tls: Option<tokio_rustls::TlsAcceptor>,
    /// Which queues have a `max_length` (publishes to them go through the hub).
    pub(crate) bounded: Arc<Bounded>,
    /// Read-buffer bytes that connections without Hello may still take, together
    /// (`handshake_memory_bytes`).
    pub(crate) handshake_budget: Arc<Semaphore>,
    /// Cancelled at shutdown: readers stop reading.
    pub(crate) conn_cancel: CancellationToken,
    /// Connection writer halves; they end after the store writer has confirmed
    /// everything and the hub has let go of their outboxes.
    pub(crate) writers: TaskTracker,
    /// Cluster mode: whether this node leads and serves clients (`None` on a single
    /// node).
    pub(crate) lead: Option<Arc<Leadership>>,
}
