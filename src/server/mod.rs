//! The network server: `start` binds the HTTP port, opens the store and rebuilds the
//! engine from it, binds the protocol port and starts the actors; `run` is the accept
//! loop (one reader and one writer task per connection) until shutdown, and then stops
//! the actors in order. Nothing else lives here.
//!
//! The actors and where they are: connections in `conn/` (the only code that touches
//! client sockets; `conn/wire.rs` the only code that reads or builds protobuf), the hub
//! in `hub/` (the task that owns the engine), the store writer's completions in
//! `done.rs`, the retention sweeper in `sweeper.rs`, the HTTP port in `http/`. The
//! messages between them are plain data in `msg.rs`.

mod bounded;
mod clock;
mod conn;
mod done;
mod error;
mod http;
mod hub;
mod lead;
mod lease;
mod metrics;
mod msg;
mod reads;
mod startup;
mod sweeper;
pub(crate) mod tls;
mod waiters;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::{mpsc, Semaphore};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{error, info, warn};

pub use self::clock::now_ms;
use self::conn::Shared;
use self::done::Done;
pub use self::error::ServerError;
use self::http::Live;
use self::hub::Hub;
use self::metrics::Metrics;
use self::msg::HubCmd;
use self::startup::{bind_protocol, recover, warn_if_exposed};
use self::waiters::Waiters;
use crate::cluster::types::{NodeId, RaftMetrics, RaftServerMetrics};
use crate::config::{ClusterConfig, ServerConfig};
use crate::store::{Muts, Store, StoreError, WriterStats};

/// Connections past `max_connections` answered at once, at most; more are dropped.
const MAX_REFUSALS: usize = 64;

/// How a bind error names the protocol port's setting.
const LISTEN_SETTING: &str = "the protocol port, --listen";

/// A running broker. Dropping it does not stop it; call [`ServerHandle::shutdown`].
pub struct ServerHandle {
    local_addr: SocketAddr,
    http_addr: Option<SocketAddr>,
    writer_stats: Arc<WriterStats>,
    stop: CancellationToken,
    task: JoinHandle<Result<(), ServerError>>,
}

impl ServerHandle {
    /// The bound protocol address (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The bound HTTP address of `/metrics`, `/healthz` and `/readyz`, if enabled.
    pub fn http_addr(&self) -> Option<SocketAddr> {
        self.http_addr
    }

    /// Counters of the group-commit writer.
    pub fn writer_stats(&self) -> Arc<WriterStats> {
        self.writer_stats.clone()
    }

    /// A token that starts a graceful shutdown when cancelled.
    pub fn shutdown_token(&self) -> CancellationToken {
        self.stop.clone()
    }

    /// Stops accepting, stops dispatching, flushes the store and waits for the end.
    pub async fn shutdown(self) -> Result<(), ServerError> {
        self.stop.cancel();
        self.wait().await
    }

    /// Waits until the server stops (after its shutdown token is cancelled).
    pub async fn wait(self) -> Result<(), ServerError> {
        self.task
            .await
            .map_err(|e| ServerError::Internal(e.to_string()))?
    }
}

/// Validates the configuration, binds the HTTP port (so that `/healthz` answers and
/// `/readyz` says "not ready" during recovery), opens the store and recovers, binds
/// the protocol port, and starts serving in the background. Readiness turns on just
/// before this returns.
pub async fn start(config: ServerConfig) -> Result<ServerHandle, ServerError> {
    start_with(config, None).await
}

/// What makes a broker a cluster member (`squall serve` with `cluster.listen`).
pub struct ClusterMember {
    /// This node's number (its `node_id`).
    pub id: NodeId,
    /// The `[cluster]` settings.
    pub config: ClusterConfig,
    /// The protocol address the other members hand to clients.
    pub client_addr: String,
}

/// [`start`], as a cluster member when `cluster` is given: the Raft node starts once
/// the store is open, every store job goes through the Raft group, and the broker
/// serves clients only while this node leads (`lead.rs`).
pub async fn start_with(
    config: ServerConfig,
    cluster: Option<ClusterMember>,
) -> Result<ServerHandle, ServerError> {
    config.validate()?;
    let tls = tls::acceptor(&config)?;
    // The cluster port's TLS is checked before anything binds, like the rest.
    let cluster = match cluster {
        None => None,
        Some(c) => {
            let cluster_tls = crate::cluster::net::ClusterTls::from_config(&config, &c.config)?;
            Some((c, cluster_tls))
        }
    };
    let metrics = Arc::new(Metrics::default());
    let http = http::HttpServer::start(&config, metrics.clone()).await?;
    match start_broker(config, cluster, tls, metrics, &http).await {
        Ok(running) => {
            let handle = ServerHandle {
                local_addr: running.local_addr,
                http_addr: http.local_addr(),
                writer_stats: running.writer.stats(),
                stop: running.stop.clone(),
                task: tokio::spawn(run(running, http)),
            };
            Ok(handle)
        }
        Err(e) => {
            http.stop().await;
            Err(e)
        }
    }
}

/// What `run` owns.
struct Running {
    local_addr: SocketAddr,
    listener: TcpListener,
    shared: Arc<Shared>,
    hub_task: JoinHandle<()>,
    sweeper: sweeper::Sweeper,
    writer: crate::store::Writer<Done>,
    stop: CancellationToken,
    cluster: Option<RunningMember>,
}

/// A cluster member's parts that `run` stops.
struct RunningMember {
    node: crate::cluster::Node,
    proposer: Arc<crate::cluster::replicate::Proposer<Done>>,
    watch: JoinHandle<()>,
    stop_watch: CancellationToken,
}

/// Recovery, protocol bind, writer and hub start; readiness on.
async fn start_broker(
    config: ServerConfig,
    cluster: Option<(ClusterMember, crate::cluster::net::ClusterTls)>,
    tls: Option<tokio_rustls::TlsAcceptor>,
    metrics: Arc<Metrics>,
    http: &http::HttpServer,
) -> Result<Running, ServerError> {
    let started = std::time::Instant::now();
    let (store, engine, fixes, tasks) = recover(&config).await?;
    let listener =
        bind_protocol(config.listen, config.listen_backlog).map_err(|cause| ServerError::Bind {
            addr: config.listen,
            setting: LISTEN_SETTING,
            cause,
        })?;
    let local_addr = listener.local_addr().map_err(|cause| ServerError::Bind {
        addr: config.listen,
        setting: LISTEN_SETTING,
        cause,
    })?;
    let writer = store.start_writer::<Done>();
    let writer_stats = writer.stats();
    let mut handle = writer.handle();
    // A member's leader lease: shorter than the shortest election timeout.
    let lease = cluster.as_ref().map(|(c, _)| {
        let timeout = crate::cluster::raft_config(&c.config).election_timeout_min;
        Arc::new(lease::LeaderLease::new(Duration::from_millis(timeout / 2)))
    });
    let member = match cluster {
        None => None,
        Some((c, cluster_tls)) => {
            let started = crate::cluster::Node::start(
                c.id,
                &c.config,
                c.client_addr,
                &config.data_dir,
                store.clone(),
                handle.clone(),
                cluster_tls,
            )
            .await;
            let (node, proposer) = match started {
                Ok(started) => started,
                Err(e) => {
                    let _ = tokio::task::spawn_blocking(move || writer.shutdown()).await;
                    return Err(ServerError::Internal(format!("cluster member: {e}")));
                }
            };
            // Every store job now goes through the Raft group; the recovery fixes
            // are made by whichever node leads (`lead.rs`), not here.
            handle = handle.routed(proposer.clone());
            Some((node, proposer))
        }
    };
    if member.is_none() {
        for m in fixes {
            handle.submit(Muts::One(m), None);
        }
    }
    warn_if_exposed(&config, tls.is_some(), local_addr);

    let (hub_tx, hub_rx) = mpsc::unbounded_channel();
    let waiters = Arc::new(Waiters::default());
    let bounded = Arc::new(bounded::Bounded::default());
    let default_max_length = config.queue_defaults.max_length;
    bounded.refresh(&engine, default_max_length);
    let mut engine = engine;
    engine.set_delivery_window(Some(conn::DELIVERY_WINDOW));
    engine.set_max_schedules(config.max_schedules);
    let hub = Hub::new(
        engine,
        handle.clone(),
        waiters.clone(),
        bounded.clone(),
        default_max_length,
        store.clone(),
        hub_tx.downgrade(),
    );
    let hub = match &lease {
        Some(lease) => hub.following(lease.clone()),
        None => hub,
    };
    let hub_task = tokio::spawn(hub.run(hub_rx));
    let sweeper = sweeper::Sweeper::start(
        store.clone(),
        handle.clone(),
        hub_tx.clone(),
        config.sweep_interval,
    );
    // A cluster member's leadership watcher is started below; the HTTP side reads its
    // count and the Raft metrics from now on.
    let leadership = member.as_ref().map(|_| Arc::new(lead::Leadership::new()));
    http.go_live(Live {
        hub: hub_tx.clone(),
        store: store.clone(),
        writer: writer_stats,
        queue_limit: config.metrics_queue_limit,
        cluster: member
            .as_ref()
            .zip(leadership.as_ref())
            .map(|((node, _), leadership)| http::ClusterProbe {
                metrics: node.raft().metrics(),
                leadership: leadership.clone(),
                snapshots: node.snapshots(),
                timings: node.timings(),
                heard: node.heard(),
            }),
    });
    metrics.ready.store(true, Ordering::Relaxed);
    // Logged only now: whoever waits for this line may rely on /readyz saying ready.
    info!(
        listen = %local_addr,
        data_dir = %config.data_dir.display(),
        fsync = ?config.fsync,
        tls = tls.is_some(),
        auth = config.auth.is_enabled(),
        recovered_tasks = tasks,
        startup_ms = started.elapsed().as_millis() as u64,
        "squall is listening on {local_addr} with data in {}",
        config.data_dir.display()
    );

    let handshake_budget = Arc::new(Semaphore::new(
        config.handshake_memory_bytes.min(Semaphore::MAX_PERMITS),
    ));
    let conn_cancel = CancellationToken::new();
    let (lead, cluster) = match member.zip(leadership) {
        None => (None, None),
        Some(((node, proposer), leadership)) => {
            let watcher = lead::LeadWatch {
                metrics: node.raft().metrics(),
                leadership: leadership.clone(),
                lease: lease.clone().expect("a member has a lease"),
                store: store.clone(),
                writer: handle.clone(),
                cluster_id: None,
                hub: hub_tx.clone(),
                config: config.clone(),
                conn_cancel: conn_cancel.clone(),
                delivery_window: conn::DELIVERY_WINDOW,
            };
            let stop_watch = CancellationToken::new();
            let watch = tokio::spawn(watcher.run(stop_watch.clone()));
            let running = RunningMember {
                node,
                proposer,
                watch,
                stop_watch,
            };
            (Some(leadership), Some(running))
        }
    };
    let shared = Arc::new(Shared {
        config,
        store,
        writer: handle,
        hub: hub_tx,
        metrics,
        waiters,
        bounded,
        tls,
        handshake_budget,
        conn_cancel,
        writers: TaskTracker::new(),
        lead,
    });
    Ok(Running {
        local_addr,
        listener,
        shared,
        hub_task,
        sweeper,
        writer,
        stop: CancellationToken::new(),
        cluster,
    })
}

async fn run(running: Running, http: http::HttpServer) -> Result<(), ServerError> {
    let Running {
        local_addr: _,
        listener,
        shared,
        hub_task,
        sweeper,
        writer,
        stop,
        cluster,
    } = running;
    let readers = TaskTracker::new();
    let next_conn = AtomicU64::new(1);
    let slots = Arc::new(Semaphore::new(shared.config.max_connections));
    // Connections being refused are answered by a task each; past this many at once,
    // further ones are dropped without an answer.
    let refusals = Arc::new(Semaphore::new(MAX_REFUSALS));
    let mut raft_failure = None;
    let raft_stopped = raft_stopped(
        cluster
            .as_ref()
            .map(|m| (m.node.raft().metrics(), m.node.raft().server_metrics())),
    );
    tokio::pin!(raft_stopped);
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            fatal = &mut raft_stopped => {
                error!(
                    %fatal,
                    "the raft node stopped on an error: shutting down so that a supervisor \
                     restarts this member (it rejoins from its synced log)"
                );
                raft_failure = Some(fatal);
                break;
            }
            failure = store_failed(&shared.store) => {
                error!(
                    %failure,
                    "the store failed: shutting down so that a supervisor restarts the broker \
                     (the restart replays the journal, which holds every confirmed change)"
                );
                break;
            }
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let _ = stream.set_nodelay(true);
                    match slots.clone().try_acquire_owned() {
                        Ok(slot) => {
                            let id = next_conn.fetch_add(1, Ordering::Relaxed);
                            readers.spawn(conn::serve(stream, peer, id, shared.clone(), slot));
                        }
                        Err(_) => {
                            shared.metrics.connections_refused.fetch_add(1, Ordering::Relaxed);
                            if let Ok(permit) = refusals.clone().try_acquire_owned() {
                                let shared = shared.clone();
                                readers.spawn(async move {
                                    conn::refuse(stream, peer, shared).await;
                                    drop(permit);
                                });
                            }
                        }
                    }
                }
                Err(e) => {
                    // Typically out of file descriptors: back off instead of spinning.
                    warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
        }
    }
    shared.metrics.ready.store(false, Ordering::Relaxed);
    drop(listener);
    let grace = shared.config.shutdown_grace;
    info!("shutting down: no longer accepting connections");

    // 1. Readers stop taking requests and report their connections closed.
    shared.conn_cancel.cancel();
    readers.close();
    if tokio::time::timeout(grace, readers.wait()).await.is_err() {
        warn!(
            ?grace,
            "connection readers did not stop within the grace period"
        );
    }
    // 2. The sweeper stops; the hub stops dispatching and hands its last mutations to
    //    the writer.
    sweeper.stop().await;
    let _ = shared.hub.send(HubCmd::Shutdown);
    if let Err(e) = hub_task.await {
        error!(error = %e, "hub task failed");
    }
    // 2b. A cluster member: the proposals in flight get their grace to commit, then
    //    the leadership watcher and the Raft node stop (before the writer, to which
    //    the state machine applies).
    if let Some(member) = cluster {
        member.stop_watch.cancel();
        // The watcher may be waiting for a proposal that cannot commit (no majority):
        // it gets the grace, then it is aborted.
        let mut watch = member.watch;
        if tokio::time::timeout(grace, &mut watch).await.is_err() {
            warn!(
                ?grace,
                "the leadership watcher did not stop within the grace period"
            );
            watch.abort();
        }
        let deadline = tokio::time::Instant::now() + grace;
        // Jobs still on their way to the proposing task count once it has them.
        let _ = tokio::time::timeout_at(deadline, member.proposer.flushed()).await;
        while member.proposer.waiting() > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        member.node.shutdown().await;
    }
    // 3. The writer applies and flushes everything queued, confirming each job.
    let flushed = tokio::task::spawn_blocking(move || writer.shutdown())
        .await
        .map_err(|e| ServerError::Internal(e.to_string()))?;
    // 4. Connection writers send what is left and close.
    shared.writers.close();
    if tokio::time::timeout(grace, shared.writers.wait())
        .await
        .is_err()
    {
        warn!(?grace, "connections did not drain within the grace period");
    }
    // 5. The HTTP port goes last, so probes see "not ready" throughout shutdown.
    http.stop().await;
    if let Some(fatal) = raft_failure {
        if let Err(e) = flushed {
            error!(error = %e, "the store's last flush failed too");
        }
        return Err(ServerError::RaftStopped(fatal));
    }
    flushed?;
    info!("shutdown complete");
    Ok(())
}

type RaftMetricsRx = tokio::sync::watch::Receiver<RaftMetrics>;
type RaftServerMetricsRx = tokio::sync::watch::Receiver<RaftServerMetrics>;

/// Resolves once a cluster member's Raft node has stopped on an error (never for a
/// single node, nor for the node's own shutdown, which comes after the accept loop).
/// It waits on openraft's server metrics (role, vote, leader, membership), which
/// change seldom and end when the Raft core ends, not on its full metrics, which are
/// sent on every turn of the core's loop; the core sets the full metrics' running
/// state before it ends.
async fn raft_stopped(metrics: Option<(RaftMetricsRx, RaftServerMetricsRx)>) -> String {
    let Some((metrics, mut server)) = metrics else {
        return std::future::pending().await;
    };
    let fatal = |metrics: &RaftMetricsRx| match &metrics.borrow().running_state {
        Err(openraft::error::Fatal::Stopped) | Ok(()) => None,
        Err(fatal) => Some(fatal.to_string()),
    };
    loop {
        if let Some(fatal) = fatal(&metrics) {
            return fatal;
        }
        if server.changed().await.is_err() {
            return fatal(&metrics).unwrap_or_else(|| "the raft node's core ended".to_owned());
        }
    }
}

/// Resolves once the store has failed for good (a checkpoint failed): the broker then
/// stops, and `run` returns the failure, which `squall serve` turns into exit code 75.
async fn store_failed(store: &Store) -> StoreError {
    loop {
        if let Some(failure) = store.failure() {
            return failure;
        }
        tokio::time::sleep(STORE_FAILURE_POLL).await;
    }
}

/// How often the accept loop looks whether the store failed.
const STORE_FAILURE_POLL: Duration = Duration::from_millis(250);
