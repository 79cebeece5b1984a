//! `squall serve`: builds the server configuration from flags and environment, runs the
//! broker, and shuts it down gracefully on SIGINT or SIGTERM.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Args;
use squall::config::{ServerConfig, DEFAULT_DATA_DIR, DEFAULT_LISTEN};
use squall::server::{self, ServerError};
use squall::store::FsyncMode;
use tracing::info;

use super::{parse_backoff, parse_duration, Exit, EXIT_USAGE};

/// Run the broker.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Address of the protocol port.
    #[arg(long, env = "SQUALL_LISTEN", default_value = DEFAULT_LISTEN)]
    listen: SocketAddr,
    /// Data directory (created if missing).
    #[arg(long, env = "SQUALL_DATA_DIR", default_value = DEFAULT_DATA_DIR)]
    data_dir: PathBuf,
    /// Durability: `always` (fsync before every confirm, the default), `interval:<ms>`
    /// (confirm at once, fsync at most every <ms>: a crash loses up to <ms> of
    /// confirmed work), or `never` (no fsync on the hot path).
    #[arg(long, env = "SQUALL_FSYNC", default_value = "always", value_parser = clap::value_parser!(FsyncMode))]
    fsync: FsyncMode,
    /// Largest frame accepted from a client, bytes.
    #[arg(long, env = "SQUALL_MAX_FRAME_BYTES")]
    max_frame_bytes: Option<usize>,
    /// Largest task payload, bytes.
    #[arg(long, env = "SQUALL_MAX_PAYLOAD_BYTES")]
    max_payload_bytes: Option<usize>,
    /// Default lease of queues created on first use.
    #[arg(long, env = "SQUALL_DEFAULT_LEASE", value_parser = parse_duration)]
    default_lease: Option<Duration>,
    /// Default delivery limit of queues created on first use (0 = unlimited).
    #[arg(long, env = "SQUALL_DEFAULT_MAX_ATTEMPTS")]
    default_max_attempts: Option<u32>,
    /// Default retry backoff range of queues created on first use, e.g. `1s..5m`.
    #[arg(long, env = "SQUALL_DEFAULT_BACKOFF", value_parser = parse_backoff)]
    default_backoff: Option<(Duration, Duration)>,
    /// Default result retention of queues created on first use: how long succeeded and
    /// dead tasks are kept for status reads (0: acked tasks are removed at once and
    /// dead ones kept until an operator acts), e.g. `1h`.
    #[arg(long, env = "SQUALL_DEFAULT_RESULT_TTL", value_parser = parse_duration)]
    default_result_ttl: Option<Duration>,
    /// Default idempotency-key window of queues created on first use (0 = keys are
    /// ignored), e.g. `5m`.
    #[arg(long, env = "SQUALL_DEFAULT_DEDUP_WINDOW", value_parser = parse_duration)]
    default_dedup_window: Option<Duration>,
    /// How often expired results, dead tasks and idempotency keys are removed.
    #[arg(long, env = "SQUALL_SWEEP_INTERVAL", value_parser = parse_duration)]
    sweep_interval: Option<Duration>,
    /// Name this node reports to clients.
    #[arg(long, env = "SQUALL_NODE_ID")]
    node_id: Option<String>,
    /// How long shutdown waits for connections to drain.
    #[arg(long, env = "SQUALL_SHUTDOWN_GRACE", value_parser = parse_duration)]
    shutdown_grace: Option<Duration>,
}

impl ServeArgs {
    fn into_config(self) -> ServerConfig {
        let mut c = ServerConfig {
            listen: self.listen,
            data_dir: self.data_dir,
            fsync: self.fsync,
            ..ServerConfig::default()
        };
        if let Some(v) = self.max_frame_bytes {
            c.max_frame_bytes = v;
        }
        if let Some(v) = self.max_payload_bytes {
            c.max_payload_bytes = v;
        }
        if let Some(v) = self.default_lease {
            c.queue_defaults.lease_ms = v.as_millis() as u64;
        }
        if let Some(v) = self.default_max_attempts {
            c.queue_defaults.max_attempts = v;
        }
        if let Some((lo, hi)) = self.default_backoff {
            c.queue_defaults.backoff_min_ms = lo.as_millis() as u64;
            c.queue_defaults.backoff_max_ms = hi.as_millis() as u64;
        }
        if let Some(v) = self.default_result_ttl {
            c.queue_defaults.result_ttl_ms = v.as_millis() as u64;
        }
        if let Some(v) = self.default_dedup_window {
            c.queue_defaults.dedup_window_ms = v.as_millis() as u64;
        }
        if let Some(v) = self.sweep_interval {
            c.sweep_interval = v;
        }
        if let Some(v) = self.node_id {
            c.node_id = v;
        }
        if let Some(v) = self.shutdown_grace {
            c.shutdown_grace = v;
        }
        c
    }
}

pub async fn run(args: ServeArgs) -> anyhow::Result<ExitCode> {
    let config = args.into_config();
    if let Err(e) = config.validate() {
        return Err(Exit {
            code: EXIT_USAGE,
            message: e.to_string(),
        }
        .into());
    }
    let handle = match server::start(config).await {
        Ok(h) => h,
        Err(e @ ServerError::Config(_)) => {
            return Err(Exit {
                code: EXIT_USAGE,
                message: e.to_string(),
            }
            .into())
        }
        Err(e) => return Err(e.into()),
    };
    let stop = handle.shutdown_token();
    tokio::spawn(async move {
        wait_for_signal().await;
        info!("signal received: shutting down gracefully");
        stop.cancel();
    });
    handle.wait().await?;
    Ok(ExitCode::SUCCESS)
}

#[cfg(unix)]
async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

#[cfg(not(unix))]
async fn wait_for_signal() {
    let _ = tokio::signal::ctrl_c().await;
}
