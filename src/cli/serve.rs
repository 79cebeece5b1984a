//! `squall serve`: builds the settings from defaults, the `--config` file, `SQUALL_*`
//! variables and flags (in that order of precedence, lowest first), runs the broker,
//! and shuts it down gracefully on SIGINT or SIGTERM. Flags are taken as text and
//! parsed by `config`, so a bad value is reported with its key and exit code 64
//! whichever layer it came from.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;
use squall::config::{ConfigError, Settings};
use squall::server::{self, ServerError};
use tracing::info;

use super::{Exit, EXIT_USAGE};

/// Run the broker.
#[derive(Debug, Args)]
#[command(after_help = "\
Every setting has a key in the configuration file (see deploy/squall.toml, which lists \
them all with their defaults) and an environment variable: SQUALL_ + the key in upper \
case with dots as underscores (SQUALL_MAX_BATCH, SQUALL_QUEUE_LEASE). Precedence: flag > \
environment > file > default. Invalid settings exit with code 64 before any port is bound.")]
pub struct ServeArgs {
    /// TOML configuration file.
    #[arg(long, env = "SQUALL_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,
    /// Address of the protocol port [default: 127.0.0.1:7600].
    #[arg(long, value_name = "ADDR")]
    listen: Option<String>,
    /// Address of the HTTP port (/metrics, /healthz, /readyz), or `off`
    /// [default: 127.0.0.1:7601].
    #[arg(long, value_name = "ADDR|off")]
    http: Option<String>,
    /// Data directory, created if missing [default: ./squall-data].
    #[arg(long, value_name = "DIR")]
    data_dir: Option<String>,
    /// Durability: `always` (fsync before every confirm), `interval:<ms>` (confirm once
    /// written to the journal, fsync at most every <ms>: a killed process loses
    /// nothing, a power loss up to <ms> of confirmed work), or `never` (no fsync while
    /// running: a killed process loses nothing, a power loss everything since the last
    /// checkpoint) [default: always].
    #[arg(long)]
    fsync: Option<String>,
    /// sled page cache, e.g. `64 MiB` [default: 64 MiB].
    #[arg(long, value_name = "SIZE")]
    cache_bytes: Option<String>,
    /// Largest frame accepted from a client [default: 8 MiB].
    #[arg(long, value_name = "SIZE")]
    max_frame_bytes: Option<String>,
    /// Largest task payload [default: 4 MiB].
    #[arg(long, value_name = "SIZE")]
    max_payload_bytes: Option<String>,
    /// Most tasks in one publish [default: 1000].
    #[arg(long, value_name = "N")]
    max_batch: Option<String>,
    /// Largest prefetch of a subscription [default: 10000].
    #[arg(long, value_name = "N")]
    max_prefetch: Option<String>,
    /// Longest lease or extension [default: 12h].
    #[arg(long, value_name = "DURATION")]
    max_lease: Option<String>,
    /// Name this node reports to clients [default: squall-0].
    #[arg(long)]
    node_id: Option<String>,
    /// How long shutdown waits for connections to drain [default: 10s].
    #[arg(long, value_name = "DURATION")]
    shutdown_grace: Option<String>,
    /// How often expired results, dead tasks and idempotency keys are removed
    /// [default: 1s].
    #[arg(long, value_name = "DURATION")]
    sweep_interval: Option<String>,
    /// Most client connections open at once [default: 10000].
    #[arg(long, value_name = "N")]
    max_connections: Option<String>,
    /// Time a new connection has to send Hello (TLS included) [default: 10s].
    #[arg(long, value_name = "DURATION")]
    handshake_timeout: Option<String>,
    /// Close connections that send nothing for this long, 0 = never [default: 60s].
    #[arg(long, value_name = "DURATION")]
    idle_timeout: Option<String>,
    /// Most unanswered requests per connection [default: 4096].
    #[arg(long, value_name = "N")]
    max_inflight_requests: Option<String>,
    /// Bytes waiting to be written to one connection past which its deliveries pause
    /// [default: 8 MiB].
    #[arg(long, value_name = "SIZE")]
    max_unsent_bytes: Option<String>,
    /// Largest frame accepted before Hello [default: 16 KiB].
    #[arg(long, value_name = "SIZE")]
    max_hello_frame_bytes: Option<String>,
    /// Read-buffer memory all connections not past Hello may hold together
    /// [default: 64 MiB].
    #[arg(long, value_name = "SIZE")]
    handshake_memory_bytes: Option<String>,
    /// Backlog of the protocol port's listen queue [default: 1024].
    #[arg(long, value_name = "N")]
    listen_backlog: Option<String>,
    /// Queues exported one by one on /metrics, the deepest first; the rest are summed
    /// as queue="(other)" [default: 100].
    #[arg(long, value_name = "N")]
    metrics_queue_limit: Option<String>,
    /// Threads of the async runtime (connections, the hub); 0 = one per core. The
    /// store writer and the checkpoint run on threads of their own [default: 0].
    #[arg(long, value_name = "N")]
    worker_threads: Option<String>,
    /// PEM certificate chain: with --tls-key, the protocol port speaks TLS only.
    #[arg(long, value_name = "FILE")]
    tls_cert: Option<String>,
    /// PEM private key of --tls-cert.
    #[arg(long, value_name = "FILE")]
    tls_key: Option<String>,
    /// Default lease of new queues [default: 30s].
    #[arg(long, alias = "default-lease", value_name = "DURATION")]
    queue_lease: Option<String>,
    /// Default delivery limit of new queues, 0 = unlimited [default: 5].
    #[arg(long, alias = "default-max-attempts", value_name = "N")]
    queue_max_attempts: Option<String>,
    /// Default retry backoff range of new queues, e.g. `1s..5m` [default: 1s..5m].
    #[arg(long, alias = "default-backoff", value_name = "MIN..MAX")]
    queue_backoff: Option<String>,
    /// Default length bound of new queues, 0 = unbounded [default: 0].
    #[arg(long, value_name = "N")]
    queue_max_length: Option<String>,
    /// Default retention of succeeded and dead tasks of new queues; 0: acked tasks are
    /// removed at once and dead ones kept until an operator acts [default: 1h].
    #[arg(long, alias = "default-result-ttl", value_name = "DURATION")]
    queue_result_ttl: Option<String>,
    /// Whether new queues keep a succeeded record (for the result TTL) of a task acked
    /// without a result too; by default only an ack that carries a result leaves one
    /// [default: false].
    #[arg(long, value_name = "true|false")]
    queue_keep_acked: Option<String>,
    /// Default idempotency-key window of new queues [default: 5m].
    #[arg(long, alias = "default-dedup-window", value_name = "DURATION")]
    queue_dedup_window: Option<String>,
    /// Cluster port (node-to-node traffic); with it this node is a member of a Raft
    /// group that replicates every queue, --node-id is its number, and it serves
    /// clients only while it leads (docs/design/replication.md) [default: off].
    #[arg(long, value_name = "ADDR|off")]
    cluster_listen: Option<String>,
    /// Members of a new cluster, this node included: ID@HOST:PORT of their cluster
    /// ports, comma-separated. They form the cluster once a majority is up.
    #[arg(long, value_name = "ID@ADDR,...")]
    peers: Option<String>,
    /// The protocol address the other members hand to clients [default: --listen].
    #[arg(long, value_name = "HOST:PORT")]
    advertise: Option<String>,
}

impl ServeArgs {
    /// The flags given, as (key, value) pairs for `Settings::load`.
    fn flags(&self, log_format: Option<&str>) -> Result<Vec<(&'static str, String)>, ConfigError> {
        let mut flags = Vec::new();
        let mut add = |key: &'static str, value: &Option<String>| {
            if let Some(v) = value {
                flags.push((key, v.clone()));
            }
        };
        add("listen", &self.listen);
        add("http", &self.http);
        add("data_dir", &self.data_dir);
        add("fsync", &self.fsync);
        add("cache_bytes", &self.cache_bytes);
        add("max_frame_bytes", &self.max_frame_bytes);
        add("max_payload_bytes", &self.max_payload_bytes);
        add("max_batch", &self.max_batch);
        add("max_prefetch", &self.max_prefetch);
        add("max_lease", &self.max_lease);
        add("node_id", &self.node_id);
        add("shutdown_grace", &self.shutdown_grace);
        add("sweep_interval", &self.sweep_interval);
        add("max_connections", &self.max_connections);
        add("handshake_timeout", &self.handshake_timeout);
        add("idle_timeout", &self.idle_timeout);
        add("max_inflight_requests", &self.max_inflight_requests);
        add("max_unsent_bytes", &self.max_unsent_bytes);
        add("max_hello_frame_bytes", &self.max_hello_frame_bytes);
        add("handshake_memory_bytes", &self.handshake_memory_bytes);
        add("listen_backlog", &self.listen_backlog);
        add("metrics_queue_limit", &self.metrics_queue_limit);
        add("worker_threads", &self.worker_threads);
        add("tls.cert", &self.tls_cert);
        add("tls.key", &self.tls_key);
        add("queue.lease", &self.queue_lease);
        add("queue.max_attempts", &self.queue_max_attempts);
        add("queue.max_length", &self.queue_max_length);
        add("queue.result_ttl", &self.queue_result_ttl);
        add("queue.keep_acked", &self.queue_keep_acked);
        add("queue.dedup_window", &self.queue_dedup_window);
        add("cluster.listen", &self.cluster_listen);
        add("cluster.peers", &self.peers);
        add("cluster.advertise", &self.advertise);
        add("log.format", &log_format.map(str::to_owned));
        if let Some(range) = &self.queue_backoff {
            let (lo, hi) = range.split_once("..").ok_or_else(|| ConfigError {
                key: "queue.backoff_min".to_owned(),
                reason: format!("--queue-backoff `{range}` is not a range like 1s..5m"),
            })?;
            flags.push(("queue.backoff_min", lo.to_owned()));
            flags.push(("queue.backoff_max", hi.to_owned()));
        }
        Ok(flags)
    }

    /// Reads every layer and validates the result; nothing is opened or bound yet.
    pub fn settings(&self, log_format: Option<&str>) -> anyhow::Result<Settings> {
        let load = || {
            let flags = self.flags(log_format)?;
            Settings::load(self.config.as_deref(), squall_env(), flags)
        };
        load().map_err(|e| usage(e.to_string()))
    }
}

/// The `SQUALL_*` variables (`std::env::vars` would panic on a non-UTF-8 variable
/// elsewhere in the environment; a non-UTF-8 value of ours fails to parse, named).
fn squall_env() -> impl Iterator<Item = (String, String)> {
    std::env::vars_os().filter_map(|(k, v)| {
        let k = k.into_string().ok()?;
        k.starts_with("SQUALL_")
            .then(|| (k, v.to_string_lossy().into_owned()))
    })
}

fn usage(message: String) -> anyhow::Error {
    Exit {
        code: EXIT_USAGE,
        message,
    }
    .into()
}

pub async fn run(settings: Settings) -> anyhow::Result<ExitCode> {
    // Installed before anything is bound: a SIGTERM that arrives as soon as the broker
    // says it listens must shut it down gracefully, not kill it.
    let signalled = shutdown_signal();
    let cluster = settings.cluster.clone();
    let member = cluster
        .node_id(&settings.server)
        .map(|id| server::ClusterMember {
            id,
            client_addr: cluster.client_addr(&settings.server),
            config: cluster,
        });
    // A cluster member starts its Raft node once the broker holds its data directory
    // (the lock) and its store is open.
    let handle = match server::start_with(settings.server, member).await {
        Ok(h) => h,
        Err(e @ ServerError::Config(_)) => return Err(usage(e.to_string())),
        Err(e) => return Err(e.into()),
    };
    let stop = handle.shutdown_token();
    tokio::spawn(async move {
        signalled.await;
        info!("signal received: shutting down gracefully");
        stop.cancel();
    });
    handle.wait().await?;
    Ok(ExitCode::SUCCESS)
}

/// Registers for SIGINT and SIGTERM now; the future resolves at the first of them.
#[cfg(unix)]
fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    use tokio::signal::unix::{signal, SignalKind};
    let term = signal(SignalKind::terminate()).ok();
    let int = signal(SignalKind::interrupt()).ok();
    async move {
        match (term, int) {
            (Some(mut term), Some(mut int)) => {
                tokio::select! {
                    _ = int.recv() => {}
                    _ = term.recv() => {}
                }
            }
            _ => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
}

#[cfg(not(unix))]
fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    async {
        let _ = tokio::signal::ctrl_c().await;
    }
}
