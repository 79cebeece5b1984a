//! The network server: binds the HTTP port, opens the store, rebuilds the engine from
//! it, binds the protocol port, runs the accept loop (one task per connection), the hub
//! and the store writer, and shuts them down in order. `connection.rs` is the only code
//! that touches client sockets, `http.rs` the only code that serves HTTP.

mod admin;
mod admission;
mod connection;
mod http;
mod hub;
mod metrics;
mod rates;
mod scrape;
mod status;
mod sweeper;
mod tls;
mod wait;
mod waiters;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use squall_proto::v1::{self, response};
use squall_proto::ErrorCode;
use tokio::net::{TcpListener, TcpSocket};
use tokio::sync::{mpsc, Semaphore};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{error, info, warn};

use self::admin::AdminDone;
use self::connection::{error_response, OutTx, Outbound};
use self::http::Live;
use self::hub::{Hub, HubCmd, HubTx};
use self::metrics::{Metrics, PublishTimer};
use self::waiters::{Final, Waiters};
use crate::broker::{Committed, Engine, EngineConfig};
use crate::config::{ConfigError, ServerConfig};
use crate::model::TaskId;
use crate::store::{
    Completion, JobReport, Muts, Store, StoreConfig, StoreError, SweepStats, WriterHandle,
    WriterStats,
};

/// Connections past `max_connections` answered at once, at most; more are dropped.
const MAX_REFUSALS: usize = 64;

/// The store writer as the server uses it.
pub(crate) type Writer = WriterHandle<Done>;

/// Current unix time in milliseconds.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Why the server could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// A setting is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The data directory could not be opened, recovered or flushed. (Not a `source`:
    /// the message already holds it, and a chain would print it twice.)
    #[error("store: {0}")]
    Store(StoreError),
    /// A listen address could not be bound. (The cause is not a `source`: the message
    /// holds it, and a chain would print it twice.)
    #[error("cannot listen on {addr} ({setting}): {cause}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Which setting chose it: `--listen` or `--http`.
        setting: &'static str,
        /// The cause.
        cause: std::io::Error,
    },
    /// A background task panicked.
    #[error("internal error: {0}")]
    Internal(String),
}

/// How a bind error names the protocol port's setting.
const LISTEN_SETTING: &str = "the protocol port, --listen";

impl From<StoreError> for ServerError {
    fn from(e: StoreError) -> Self {
        ServerError::Store(e)
    }
}

/// State every connection shares.
pub(crate) struct Shared {
    config: ServerConfig,
    store: Store,
    writer: Writer,
    hub: HubTx,
    metrics: Arc<Metrics>,
    /// Who waits for which task's result.
    waiters: Arc<Waiters>,
    /// TLS of the protocol port, if configured.
    tls: Option<tokio_rustls::TlsAcceptor>,
    /// Which queues have a `max_length` (publishes to them go through the hub).
    bounded: Arc<admission::Bounded>,
    /// Read-buffer bytes that connections without Hello may still take, together
    /// (`handshake_memory_bytes`).
    handshake_budget: Arc<Semaphore>,
    /// Cancelled at shutdown: readers stop reading.
    conn_cancel: CancellationToken,
    /// Connection writer halves; they end after the store writer has confirmed
    /// everything and the hub has let go of their outboxes.
    writers: TaskTracker,
}

/// What the store writer does once a job is durable.
pub(crate) enum Done {
    /// Tell the hub the tasks exist, then confirm the publish.
    Publish {
        out: OutTx,
        req: u64,
        hub: HubTx,
        committed: Vec<Committed>,
        timer: PublishTimer,
        /// Room the hub reserved in bounded queues, released on completion.
        reservation: Option<admission::Reservation>,
    },
    /// One of the store jobs (chunk number) of an admin change; the hub applies and
    /// answers it when all are done.
    Admin(Arc<AdminDone>, usize),
    /// Confirm a settlement.
    Reply {
        out: OutTx,
        req: u64,
        ok: response::Result,
    },
    /// A task reached its final state: confirm the settlement that did it (if a
    /// client waits for that), then wake whoever waits for the task's result.
    Finished {
        reply: Option<(OutTx, u64)>,
        task: TaskId,
        state: Final,
        waiters: Arc<Waiters>,
        /// For an ack: how to give the task back to the hub if the ack is not stored.
        restore: Option<Arc<Restore>>,
    },
    /// A barrier for a wait that found no record (see `wait.rs`): look again.
    Recheck { out: OutTx, req: u64, task: TaskId },
    /// Operator removals (purge, delete-queue) are durable: wake their result waiters.
    Removed {
        tasks: Vec<TaskId>,
        waiters: Arc<Waiters>,
    },
    /// A retention sweep finished.
    Swept {
        tx: tokio::sync::oneshot::Sender<Result<SweepStats, StoreError>>,
    },
}

impl std::fmt::Debug for Done {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = match self {
            Done::Publish { .. } => "Publish",
            Done::Admin(..) => "Admin",
            Done::Reply { .. } => "Reply",
            Done::Finished { .. } => "Finished",
            Done::Recheck { .. } => "Recheck",
            Done::Removed { .. } => "Removed",
            Done::Swept { .. } => "Swept",
        };
        f.debug_tuple("Done").field(&kind).finish()
    }
}

impl Completion for Done {
    fn complete(self, result: Result<(), StoreError>) {
        self.complete_with(result, JobReport::default());
    }

    fn complete_with(self, result: Result<(), StoreError>, report: JobReport<'_>) {
        let (out, response) = match (self, result) {
            (Done::Admin(done, chunk), result) => return done.record(chunk, result),
            (
                Done::Publish {
                    out,
                    req,
                    hub,
                    committed,
                    timer,
                    reservation,
                },
                Ok(()),
            ) => {
                timer.observe();
                (
                    out,
                    confirm_publish(req, &hub, committed, reservation, report),
                )
            }
            (
                Done::Publish {
                    out,
                    req,
                    hub,
                    reservation,
                    ..
                },
                Err(e),
            ) => {
                if let Some(r) = reservation {
                    let _ = hub.send(HubCmd::Release(r));
                }
                let msg = format!("not persisted: {e}");
                (out, error_response(req, ErrorCode::Storage, msg))
            }
            (Done::Reply { out, req, ok }, Ok(())) => (
                out,
                v1::Response {
                    id: req,
                    result: Some(ok),
                },
            ),
            (
                Done::Finished {
                    reply,
                    task,
                    state,
                    waiters,
                    restore: _,
                },
                Ok(()),
            ) => {
                waiters.wake(task, state);
                let Some((out, req)) = reply else { return };
                let ok = v1::Response {
                    id: req,
                    result: Some(response::Result::Ok(v1::Empty {})),
                };
                (out, ok)
            }
            (Done::Recheck { out, req, task }, _) => {
                let _ = out.send(Outbound::Recheck { req, task });
                return;
            }
            (Done::Removed { tasks, waiters }, _) => {
                // Each waiter reads the store for its answer: "unknown" once removed,
                // the task's real state if a removal failed.
                for task in tasks {
                    waiters.wake(task, Final::Removed);
                }
                return;
            }
            (Done::Swept { tx }, result) => {
                let _ = tx.send(result.map(|()| report.sweep.cloned().unwrap_or_default()));
                return;
            }
            (
                Done::Finished {
                    reply,
                    task,
                    restore,
                    ..
                },
                Err(e),
            ) => {
                if let Some(restore) = restore {
                    restore.give_back(task);
                }
                let Some((out, req)) = reply else { return };
                let msg = format!("not persisted: {e}");
                (out, error_response(req, ErrorCode::Storage, msg))
            }
            (Done::Reply { out, req, .. }, Err(e)) => {
                let msg = format!("not persisted: {e}");
                (out, error_response(req, ErrorCode::Storage, msg))
            }
        };
        let _ = out.send(Outbound::Response(response));
    }
}

/// An ack that could not be stored (the journal could not write) left the task in the
/// store as pending, but the engine dropped it when the ack came in: without this it
/// would be delivered again only after a restart. Runs on the writer thread, which may
/// read the store, and hands the stored state back to the hub.
pub(crate) struct Restore {
    pub(crate) store: Store,
    pub(crate) hub: mpsc::WeakUnboundedSender<HubCmd>,
}

impl Restore {
    fn give_back(&self, task: TaskId) {
        let state = match self.store.get_state(task) {
            Ok(Some(state)) if state.status == crate::model::TaskStatus::Pending => state,
            Ok(_) => return,
            Err(error) => {
                warn!(task, %error, "an unstored ack's task could not be read back; it returns at the next restart");
                return;
            }
        };
        if let Some(hub) = self.hub.upgrade() {
            let _ = hub.send(HubCmd::Restore { task, state });
        }
    }
}

/// Tells the hub which published tasks exist (not the duplicates, which the store did
/// not insert) and builds the publish confirmation.
fn confirm_publish(
    req: u64,
    hub: &HubTx,
    mut committed: Vec<Committed>,
    reservation: Option<admission::Reservation>,
    report: JobReport<'_>,
) -> v1::Response {
    let mut dups = report.duplicates.iter().peekable();
    let tasks = committed
        .iter()
        .enumerate()
        .map(|(i, c)| match dups.next_if(|d| d.index == i) {
            Some(d) => v1::Published {
                task_id: d.original,
                duplicate: true,
            },
            None => v1::Published {
                task_id: c.id,
                duplicate: false,
            },
        })
        .collect();
    if !report.duplicates.is_empty() {
        let mut i = 0;
        let mut dups = report.duplicates.iter().peekable();
        committed.retain(|_| {
            let dup = dups.next_if(|d| d.index == i).is_some();
            i += 1;
            !dup
        });
    }
    if !committed.is_empty() || reservation.is_some() {
        let _ = hub.send(HubCmd::Committed(committed, reservation));
    }
    v1::Response {
        id: req,
        result: Some(response::Result::Publish(v1::PublishOk { tasks })),
    }
}

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
    config.validate()?;
    let tls = tls::acceptor(&config)?;
    let metrics = Arc::new(Metrics::default());
    let http = http::HttpServer::start(config.http, metrics.clone()).await?;
    match start_broker(config, tls, metrics, &http).await {
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
}

/// Recovery, protocol bind, writer and hub start; readiness on.
async fn start_broker(
    config: ServerConfig,
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
    let handle = writer.handle();
    for m in fixes {
        handle.submit(Muts::One(m), None);
    }
    warn_if_exposed(&config, tls.is_some(), local_addr);

    let (hub_tx, hub_rx) = mpsc::unbounded_channel();
    let waiters = Arc::new(Waiters::default());
    let bounded = Arc::new(admission::Bounded::default());
    let default_max_length = config.queue_defaults.max_length;
    bounded.refresh(&engine, default_max_length);
    let mut engine = engine;
    engine.set_delivery_window(Some(connection::DELIVERY_WINDOW));
    let hub = Hub::new(
        engine,
        handle.clone(),
        waiters.clone(),
        bounded.clone(),
        default_max_length,
        store.clone(),
        hub_tx.downgrade(),
    );
    let hub_task = tokio::spawn(hub.run(hub_rx));
    let sweeper = sweeper::Sweeper::start(handle.clone(), hub_tx.clone(), config.sweep_interval);
    http.go_live(Live {
        hub: hub_tx.clone(),
        store: store.clone(),
        writer: writer_stats,
        queue_limit: config.metrics_queue_limit,
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
        conn_cancel: CancellationToken::new(),
        writers: TaskTracker::new(),
    });
    Ok(Running {
        local_addr,
        listener,
        shared,
        hub_task,
        sweeper,
        writer,
        stop: CancellationToken::new(),
    })
}

/// Binds the protocol port with a listen queue of `backlog` connections (the kernel
/// caps it at `net.core.somaxconn`).
fn bind_protocol(addr: SocketAddr, backlog: u32) -> std::io::Result<TcpListener> {
    let socket = match addr {
        SocketAddr::V4(_) => TcpSocket::new_v4()?,
        SocketAddr::V6(_) => TcpSocket::new_v6()?,
    };
    // As std's `TcpListener::bind` does on Unix: a restart may bind at once.
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(backlog)
}

/// Warns when the protocol port is reachable from other machines without
/// authentication: anyone who can connect may publish, consume and delete queues.
fn warn_if_exposed(config: &ServerConfig, tls: bool, local_addr: SocketAddr) {
    if let Some(why) = exposure(config, tls, local_addr) {
        warn!(listen = %local_addr, "{why}");
    }
}

/// What is unsafe about listening on `addr` with `config`, if anything.
fn exposure(config: &ServerConfig, tls: bool, addr: SocketAddr) -> Option<&'static str> {
    if addr.ip().is_loopback() {
        return None;
    }
    if config.auth.is_enabled() {
        return (!tls).then_some(
            "listening on a non-loopback address without TLS: tokens and tasks cross the \
             network in clear text; set tls.cert and tls.key",
        );
    }
    Some(
        "listening on a non-loopback address WITHOUT authentication: anyone who can reach \
         this port can publish, consume and delete queues; configure [[auth.tokens]] \
         (see `squall token hash`) or listen on 127.0.0.1",
    )
}

type Recovered = (Store, Engine, Vec<crate::model::Mutation>, u64);

/// Opens the store and rebuilds the engine from it (on a blocking thread).
async fn recover(config: &ServerConfig) -> Result<Recovered, ServerError> {
    let store_config = StoreConfig {
        path: config.data_dir.clone(),
        fsync: config.fsync,
        cache_bytes: config.cache_bytes,
        journal_segment_bytes: config.journal_segment_bytes,
    };
    let engine_config = EngineConfig {
        queue_defaults: config.queue_defaults.clone(),
        max_lease_ms: config.max_lease_ms,
        rng_seed: now_ms(),
    };
    let test_delay = config.test_recovery_delay;
    let queue_defaults = config.queue_defaults.clone();
    let recovered = tokio::task::spawn_blocking(move || {
        let store = Store::open(&store_config)?;
        store.set_queue_defaults(queue_defaults);
        #[cfg(feature = "test-hooks")]
        if !test_delay.is_zero() {
            tracing::warn!(?test_delay, "test hook: recovery delayed on purpose");
            std::thread::sleep(test_delay);
        }
        #[cfg(not(feature = "test-hooks"))]
        let _ = test_delay;
        let now = now_ms();
        let mut engine = Engine::new(engine_config, now);
        for (name, cfg) in store.queues()? {
            engine.set_queue_config(&name, cfg);
        }
        let mut fixes = Vec::new();
        let stats = store.recover(|id, state| {
            if let Some(m) = engine.recover_task(id, &state, now) {
                fixes.push(m);
            }
        })?;
        Ok::<_, StoreError>((store, engine, fixes, stats.tasks))
    })
    .await
    .map_err(|e| ServerError::Internal(e.to_string()))?
    .map_err(|e| match e {
        // The configuration asks for more than the volume holds: exit 64, as for any
        // setting the broker cannot run with.
        StoreError::VolumeTooSmall(e) => ServerError::Config(ConfigError {
            key: "data_dir".to_owned(),
            reason: e.to_string(),
        }),
        e => ServerError::Store(e),
    })?;
    Ok(recovered)
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
    } = running;
    let readers = TaskTracker::new();
    let next_conn = AtomicU64::new(1);
    let slots = Arc::new(Semaphore::new(shared.config.max_connections));
    // Connections being refused are answered by a task each; past this many at once,
    // further ones are dropped without an answer.
    let refusals = Arc::new(Semaphore::new(MAX_REFUSALS));
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
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
                            readers.spawn(connection::serve(stream, peer, id, shared.clone(), slot));
                        }
                        Err(_) => {
                            shared.metrics.connections_refused.fetch_add(1, Ordering::Relaxed);
                            if let Ok(permit) = refusals.clone().try_acquire_owned() {
                                let shared = shared.clone();
                                readers.spawn(async move {
                                    connection::refuse(stream, peer, shared).await;
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
    flushed?;
    info!("shutdown complete");
    Ok(())
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The kernel completes connections up to the backlog while nobody accepts: with
    /// std's fixed 128 only about 129 of these would connect, the rest waiting on SYN
    /// retransmits until their timeout.
    #[tokio::test]
    async fn the_listen_backlog_is_applied() {
        const CLIENTS: usize = 400;
        let listener = bind_protocol("127.0.0.1:0".parse().unwrap(), 512).unwrap();
        let addr = listener.local_addr().unwrap();
        let connects = (0..CLIENTS).map(|_| {
            tokio::time::timeout(Duration::from_secs(3), tokio::net::TcpStream::connect(addr))
        });
        let results = futures_util::future::join_all(connects).await;
        let connected = results.iter().filter(|r| matches!(r, Ok(Ok(_)))).count();
        assert_eq!(connected, CLIENTS, "connections completed without accept");
        drop(listener);
    }

    #[test]
    fn only_a_non_loopback_address_without_auth_is_flagged() {
        let open = ServerConfig::default();
        let lo: SocketAddr = "127.0.0.1:7600".parse().unwrap();
        let lo6: SocketAddr = "[::1]:7600".parse().unwrap();
        let any: SocketAddr = "0.0.0.0:7600".parse().unwrap();
        assert!(exposure(&open, false, lo).is_none());
        assert!(exposure(&open, false, lo6).is_none());
        assert!(exposure(&open, false, any).is_some());
        assert!(exposure(&open, true, any).is_some());
        let mut secured = ServerConfig::default();
        secured.auth.tokens.push(crate::auth::TokenEntry {
            name: "a".into(),
            hash: crate::auth::TokenHash::new("t"),
            role: crate::auth::Role::Admin,
            queues: Vec::new(),
        });
        assert!(
            exposure(&secured, false, any).is_some(),
            "tokens in clear text"
        );
        assert!(exposure(&secured, true, any).is_none());
    }
}
