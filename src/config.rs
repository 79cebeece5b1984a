//! Every server setting with its default, in one place, validated before any port is
//! bound. Parsing of the command line lives in `cli/`; this module only holds values.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use crate::model::QueueConfig;
use crate::store::FsyncMode;

/// Default listen address of the protocol port.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:7600";
/// Default data directory.
pub const DEFAULT_DATA_DIR: &str = "./squall-data";

/// Settings of one broker process.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Protocol listen address.
    pub listen: SocketAddr,
    /// Data directory.
    pub data_dir: PathBuf,
    /// Durability mode of confirmations.
    pub fsync: FsyncMode,
    /// sled page cache, bytes.
    pub cache_bytes: usize,
    /// Largest accepted frame body.
    pub max_frame_bytes: usize,
    /// Largest accepted task payload.
    pub max_payload_bytes: usize,
    /// Most tasks in one publish.
    pub max_batch: usize,
    /// Largest prefetch of a subscription.
    pub max_prefetch: u32,
    /// Longest lease or extension.
    pub max_lease_ms: u64,
    /// Defaults of queues created on first use.
    pub queue_defaults: QueueConfig,
    /// Name this node reports in Hello.
    pub node_id: String,
    /// How long shutdown waits for connections to drain.
    pub shutdown_grace: Duration,
    /// How often the retention sweep removes expired results, dead tasks and
    /// idempotency keys.
    pub sweep_interval: Duration,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: DEFAULT_LISTEN.parse().expect("constant address parses"),
            data_dir: PathBuf::from(DEFAULT_DATA_DIR),
            fsync: FsyncMode::Always,
            cache_bytes: 64 * 1024 * 1024,
            max_frame_bytes: squall_proto::DEFAULT_MAX_FRAME_BYTES,
            max_payload_bytes: 4 * 1024 * 1024,
            max_batch: 1_000,
            max_prefetch: 10_000,
            max_lease_ms: 12 * 3600 * 1000,
            queue_defaults: QueueConfig::default(),
            node_id: "squall-0".to_owned(),
            shutdown_grace: Duration::from_secs(10),
            sweep_interval: Duration::from_secs(1),
        }
    }
}

/// A setting that cannot work.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid configuration `{key}`: {reason}")]
pub struct ConfigError {
    /// The offending setting.
    pub key: &'static str,
    /// Why.
    pub reason: String,
}

impl ServerConfig {
    /// Checks the settings against each other; called before anything is opened or bound.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |key, reason: String| Err(ConfigError { key, reason });
        if self.max_frame_bytes < 1024 || self.max_frame_bytes > u32::MAX as usize {
            return bad(
                "max_frame_bytes",
                format!("{} is outside 1 KiB..4 GiB", self.max_frame_bytes),
            );
        }
        if self.max_payload_bytes == 0 || self.max_payload_bytes >= self.max_frame_bytes {
            return bad(
                "max_payload_bytes",
                format!(
                    "{} must be above 0 and below max_frame_bytes ({})",
                    self.max_payload_bytes, self.max_frame_bytes
                ),
            );
        }
        if self.max_batch == 0 {
            return bad("max_batch", "must be at least 1".into());
        }
        if self.max_prefetch == 0 {
            return bad("max_prefetch", "must be at least 1".into());
        }
        let q = &self.queue_defaults;
        if q.lease_ms == 0 || q.lease_ms > self.max_lease_ms {
            return bad(
                "queue.lease",
                format!("{} ms must be within 1..=max_lease", q.lease_ms),
            );
        }
        if q.backoff_min_ms > q.backoff_max_ms {
            return bad(
                "queue.backoff",
                format!(
                    "minimum {} ms is above maximum {} ms",
                    q.backoff_min_ms, q.backoff_max_ms
                ),
            );
        }
        if self.sweep_interval.is_zero() {
            return bad("sweep_interval", "must be above 0".into());
        }
        if let FsyncMode::Interval(d) = self.fsync {
            if d.is_zero() {
                return bad("fsync", "interval must be above 0 ms".into());
            }
        }
        Ok(())
    }
}

/// Parses `always`, `never` or `interval:<ms>`.
impl FromStr for FsyncMode {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "always" => Ok(FsyncMode::Always),
            "never" => Ok(FsyncMode::Never),
            _ => {
                let ms = s
                    .strip_prefix("interval:")
                    .and_then(|v| v.trim_end_matches("ms").parse::<u64>().ok())
                    .ok_or_else(|| format!("`{s}` is not one of: always, interval:<ms>, never"))?;
                Ok(FsyncMode::Interval(Duration::from_millis(ms)))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        assert_eq!(ServerConfig::default().validate(), Ok(()));
    }

    #[test]
    fn fsync_modes_parse() {
        assert_eq!("always".parse(), Ok(FsyncMode::Always));
        assert_eq!("never".parse(), Ok(FsyncMode::Never));
        assert_eq!(
            "interval:250".parse(),
            Ok(FsyncMode::Interval(Duration::from_millis(250)))
        );
        assert!("sometimes".parse::<FsyncMode>().is_err());
        assert!("interval:x".parse::<FsyncMode>().is_err());
    }

    #[test]
    fn bad_settings_name_their_key() {
        let mut c = ServerConfig::default();
        c.queue_defaults.backoff_min_ms = 10;
        c.queue_defaults.backoff_max_ms = 1;
        assert_eq!(c.validate().unwrap_err().key, "queue.backoff");
        let c = ServerConfig {
            max_payload_bytes: usize::MAX,
            ..ServerConfig::default()
        };
        assert_eq!(c.validate().unwrap_err().key, "max_payload_bytes");
    }
}
