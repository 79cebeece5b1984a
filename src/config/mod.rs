//! Every server setting with its default, in one place, validated before any port is
//! bound. The layering of defaults, the TOML file, `SQUALL_*` variables and flags is
//! in `config/layers.rs`; parsing of the command line lives in `cli/`.

mod cluster;
mod layers;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

pub use self::cluster::{ClusterConfig, Peer};
pub use self::layers::{key, Key, KEYS, TEST_RECOVERY_DELAY_ENV};
use crate::auth::AuthConfig;
use crate::model::QueueConfig;
use crate::store::FsyncMode;

/// Default listen address of the protocol port.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:7600";
/// Default address of the HTTP port (metrics and health checks).
pub const DEFAULT_HTTP: &str = "127.0.0.1:7601";
/// Default data directory.
pub const DEFAULT_DATA_DIR: &str = "./squall-data";

/// Settings of one broker process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerConfig {
    /// Protocol listen address.
    pub listen: SocketAddr,
    /// HTTP address of `/metrics`, `/healthz` and `/readyz`; `None` = off.
    pub http: Option<SocketAddr>,
    /// Data directory.
    pub data_dir: PathBuf,
    /// Durability mode of confirmations.
    pub fsync: FsyncMode,
    /// Memory cache, bytes: sled's page cache and (an eighth) recently published bodies.
    pub cache_bytes: usize,
    /// Size of a journal segment file, bytes.
    pub journal_segment_bytes: u64,
    /// Largest accepted frame body.
    pub max_frame_bytes: usize,
    /// Largest accepted task payload.
    pub max_payload_bytes: usize,
    /// Most tasks in one publish.
    pub max_batch: usize,
    /// Largest prefetch of a subscription.
    pub max_prefetch: u32,
    /// Most periodic schedules the broker keeps.
    pub max_schedules: usize,
    /// Longest lease or extension.
    pub max_lease_ms: u64,
    /// Defaults of queues created on first use.
    pub queue_defaults: QueueConfig,
    /// Name this node reports in Hello.
    pub node_id: String,
    /// How long shutdown waits for connections to drain.
    pub shutdown_grace: Duration,
    /// Test hook: start-up sleeps this long inside recovery, so that tests can watch
    /// `/readyz` say "not ready". Only the environment variable
    /// `SQUALL_TEST_RECOVERY_DELAY_MS` sets it, and only in a build with the
    /// `test-hooks` feature (the tests'); it is not a documented setting.
    pub test_recovery_delay: Duration,
    /// How often the retention sweep removes expired results, dead tasks and
    /// idempotency keys.
    pub sweep_interval: Duration,
    /// Most client connections open at once; past it a new connection gets
    /// `TOO_MANY_CONNECTIONS` and is closed.
    pub max_connections: usize,
    /// Time a new connection has to complete its handshake (TLS and `Hello`).
    pub handshake_timeout: Duration,
    /// A connection that sends no frame for this long is closed with `TIMEOUT`
    /// (zero = never). Clients ping every 15 s by default.
    pub idle_timeout: Duration,
    /// Most requests per connection whose answer is not yet written; past it a request
    /// gets `TOO_MANY_REQUESTS`.
    pub max_inflight_requests: u32,
    /// Bytes waiting to be written to one connection past which deliveries to it pause
    /// (they resume when half of it is written).
    pub max_unsent_bytes: usize,
    /// Largest frame accepted before `Hello` (a Hello is small; the full
    /// `max_frame_bytes` applies after it, and also caps this).
    pub max_hello_frame_bytes: usize,
    /// Read-buffer memory all connections that have not completed `Hello` may hold
    /// together; a connection that would go past it is closed.
    pub handshake_memory_bytes: usize,
    /// Backlog of the protocol port's listen queue (connections the kernel completes
    /// before the broker accepts them).
    pub listen_backlog: u32,
    /// Queues exported one by one on `/metrics` (the deepest ones); the rest are summed
    /// into one series labelled `queue="(other)"`.
    pub metrics_queue_limit: usize,
    /// Threads of the async runtime (connections, the hub); 0 = one per core (the
    /// runtime's default). The store writer and the checkpoint have threads of their
    /// own besides.
    pub worker_threads: usize,
    /// Accepted tokens; none = no authentication (file only: `[[auth.tokens]]`).
    pub auth: AuthConfig,
    /// TLS on the protocol port (off unless both files are set).
    pub tls: TlsConfig,
}

/// TLS of the protocol port: a PEM certificate chain and its private key. With both
/// set, the port speaks TLS only.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsConfig {
    /// The certificate chain (PEM), server certificate first.
    pub cert: Option<PathBuf>,
    /// Its private key (PEM: PKCS#8, PKCS#1 or SEC1).
    pub key: Option<PathBuf>,
    /// Whether the HTTP port (dashboard, API, metrics) speaks TLS too, with the same
    /// certificate and key.
    pub http: bool,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: DEFAULT_LISTEN.parse().expect("constant address parses"),
            http: Some(DEFAULT_HTTP.parse().expect("constant address parses")),
            data_dir: PathBuf::from(DEFAULT_DATA_DIR),
            fsync: FsyncMode::Always,
            cache_bytes: 64 * 1024 * 1024,
            journal_segment_bytes: crate::store::DEFAULT_JOURNAL_SEGMENT_BYTES,
            max_frame_bytes: squall_proto::DEFAULT_MAX_FRAME_BYTES,
            max_payload_bytes: 4 * 1024 * 1024,
            max_batch: 1_000,
            max_prefetch: 10_000,
            max_schedules: crate::broker::DEFAULT_MAX_SCHEDULES,
            max_lease_ms: 12 * 3600 * 1000,
            queue_defaults: QueueConfig::default(),
            node_id: "squall-0".to_owned(),
            shutdown_grace: Duration::from_secs(10),
            test_recovery_delay: Duration::ZERO,
            sweep_interval: Duration::from_secs(1),
            max_connections: 10_000,
            handshake_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            max_inflight_requests: 4_096,
            max_unsent_bytes: 8 * 1024 * 1024,
            max_hello_frame_bytes: 16 * 1024,
            handshake_memory_bytes: 64 * 1024 * 1024,
            listen_backlog: 1024,
            metrics_queue_limit: 100,
            worker_threads: 0,
            auth: AuthConfig::default(),
            tls: TlsConfig::default(),
        }
    }
}

/// A setting that cannot work.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid configuration `{key}`: {reason}")]
pub struct ConfigError {
    /// The offending setting, as named in the configuration file (`queue.lease`).
    pub key: String,
    /// Why.
    pub reason: String,
}

/// Log output formats.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

impl FromStr for LogFormat {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "text" => Ok(LogFormat::Text),
            "json" => Ok(LogFormat::Json),
            _ => Err(format!("`{s}` is not a log format: text or json")),
        }
    }
}

/// Logging of the broker process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogConfig {
    /// Output format.
    pub format: LogFormat,
    /// `tracing` filter directives; `RUST_LOG` overrides them.
    pub filter: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            format: LogFormat::Text,
            filter: "info".to_owned(),
        }
    }
}

/// Everything `squall serve` is configured with: the broker, its logging and its
/// cluster.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Settings {
    /// The broker.
    pub server: ServerConfig,
    /// Logging.
    pub log: LogConfig,
    /// Replication (`[cluster]`); off by default.
    pub cluster: ClusterConfig,
}

impl Settings {
    /// Builds the settings from their layers, lowest precedence first: defaults, the
    /// TOML file at `file`, `SQUALL_*` variables in `env`, then `flags` (key, value),
    /// and validates the result. The first bad key stops it.
    pub fn load<'a>(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
        flags: impl IntoIterator<Item = (&'a str, String)>,
    ) -> Result<Settings, ConfigError> {
        let mut s = Settings::default();
        if let Some(path) = file {
            let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
                key: "config".to_owned(),
                reason: format!("cannot read {}: {e}", path.display()),
            })?;
            s.apply_toml(&text).map_err(|e| ConfigError {
                reason: format!("{} (in {})", e.reason, path.display()),
                ..e
            })?;
        }
        s.apply_env(env)?;
        for (key, value) in flags {
            s.set(key, &toml::Value::String(value))?;
        }
        s.server.validate()?;
        s.cluster.validate(&s.server)?;
        Ok(s)
    }
}

impl ServerConfig {
    /// Checks the settings against each other; called before anything is opened or bound.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |key: &str, reason: String| {
            Err(ConfigError {
                key: key.to_owned(),
                reason,
            })
        };
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
        if self.max_lease_ms == 0 {
            return bad("max_lease", "must be above 0".into());
        }
        if self.node_id.is_empty() {
            return bad("node_id", "must not be empty".into());
        }
        if self.http == Some(self.listen) && self.listen.port() != 0 {
            return bad(
                "http",
                format!("{} is also the protocol address (listen)", self.listen),
            );
        }
        let q = &self.queue_defaults;
        if q.lease_ms == 0 || q.lease_ms > self.max_lease_ms {
            return bad(
                "queue.lease",
                format!(
                    "{} ms must be within 1..={} ms (max_lease)",
                    q.lease_ms, self.max_lease_ms
                ),
            );
        }
        if q.backoff_min_ms > q.backoff_max_ms {
            return bad(
                "queue.backoff_min",
                format!(
                    "minimum {} ms is above maximum {} ms",
                    q.backoff_min_ms, q.backoff_max_ms
                ),
            );
        }
        if self.max_connections == 0 {
            return bad("max_connections", "must be at least 1".into());
        }
        if self.handshake_timeout.is_zero() {
            return bad("handshake_timeout", "must be above 0".into());
        }
        match (&self.tls.cert, &self.tls.key) {
            (Some(_), None) => {
                return bad("tls.key", "is required when tls.cert is set".into());
            }
            (None, Some(_)) => {
                return bad("tls.cert", "is required when tls.key is set".into());
            }
            _ => {}
        }
        if self.tls.http && self.tls.cert.is_none() {
            return bad(
                "tls.http",
                "needs tls.cert and tls.key (the HTTP port uses the same certificate)".into(),
            );
        }
        if self.max_unsent_bytes < 64 * 1024 {
            return bad(
                "max_unsent_bytes",
                format!("{} is below the minimum of 64 KiB", self.max_unsent_bytes),
            );
        }
        if self.max_hello_frame_bytes < 1024 {
            return bad(
                "max_hello_frame_bytes",
                format!(
                    "{} is below the minimum of 1 KiB",
                    self.max_hello_frame_bytes
                ),
            );
        }
        let hello = self.max_hello_frame_bytes.min(self.max_frame_bytes);
        if self.handshake_memory_bytes < hello {
            return bad(
                "handshake_memory_bytes",
                format!(
                    "{} is below max_hello_frame_bytes ({hello}): no connection could say Hello",
                    self.handshake_memory_bytes
                ),
            );
        }
        if self.listen_backlog == 0 || self.listen_backlog > 65_535 {
            return bad(
                "listen_backlog",
                format!("{} is outside 1..=65535", self.listen_backlog),
            );
        }
        if self.worker_threads > 1024 {
            return bad(
                "worker_threads",
                format!("{} is over 1024 (0 = one per core)", self.worker_threads),
            );
        }
        if self.max_inflight_requests == 0 {
            return bad("max_inflight_requests", "must be at least 1".into());
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

    fn no_env() -> Vec<(String, String)> {
        Vec::new()
    }

    /// The shipped example is the reference for operators: it must set every key, to
    /// exactly the built-in default.
    #[test]
    fn shipped_example_sets_every_key_to_its_default() {
        let text = include_str!("../../deploy/squall.toml");
        let mut parsed = Settings::default();
        parsed.apply_toml(text).expect("deploy/squall.toml parses");
        assert_eq!(parsed, Settings::default());
        let table: toml::Table = text.parse().unwrap();
        let mut keys = Vec::new();
        for (name, value) in &table {
            match value {
                toml::Value::Table(inner) => {
                    keys.extend(inner.keys().map(|k| format!("{name}.{k}")))
                }
                _ => keys.push(name.clone()),
            }
        }
        let mut expected: Vec<String> = KEYS.iter().map(|k| k.name.to_owned()).collect();
        keys.sort();
        expected.sort();
        assert_eq!(keys, expected, "deploy/squall.toml must set every key once");
    }

    /// Every field of `ServerConfig` has a key that sets it. The destructuring is
    /// exhaustive on purpose: a new field does not compile until it is listed here,
    /// given a key in `layers.rs` and a line in `deploy/squall.toml`.
    #[test]
    fn every_setting_has_a_working_key() {
        let ServerConfig {
            listen: _,
            http: _,
            data_dir: _,
            fsync: _,
            cache_bytes: _,
            journal_segment_bytes: _,
            max_frame_bytes: _,
            max_payload_bytes: _,
            max_batch: _,
            max_prefetch: _,
            max_schedules: _,
            max_lease_ms: _,
            queue_defaults,
            node_id: _,
            shutdown_grace: _,
            sweep_interval: _,
            max_connections: _,
            handshake_timeout: _,
            idle_timeout: _,
            max_inflight_requests: _,
            max_unsent_bytes: _,
            max_hello_frame_bytes: _,
            handshake_memory_bytes: _,
            listen_backlog: _,
            metrics_queue_limit: _,
            worker_threads: _,
            auth: _,
            tls:
                TlsConfig {
                    cert: _,
                    key: _,
                    http: _,
                },
            test_recovery_delay: _, // test hook: environment only
        } = ServerConfig::default();
        let QueueConfig {
            lease_ms: _,
            max_attempts: _,
            backoff_min_ms: _,
            backoff_max_ms: _,
            max_length: _,
            paused: _, // per queue (`squall pause`), not a default
            result_ttl_ms: _,
            keep_acked: _,
            dedup_window_ms: _,
            // Per queue (`squall queue set`), not defaults:
            max_in_flight: _,
            rate_limit: _,
            rate_burst: _,
            drop_expired: _,
        } = queue_defaults;
        let samples = [
            ("listen", "127.0.0.1:9"),
            ("http", "off"),
            ("data_dir", "/srv/squall"),
            ("fsync", "never"),
            ("cache_bytes", "1 MiB"),
            ("journal_segment_bytes", "2 MiB"),
            ("max_frame_bytes", "2 MiB"),
            ("max_payload_bytes", "1 MiB"),
            ("max_batch", "7"),
            ("max_prefetch", "7"),
            ("max_schedules", "7"),
            ("max_lease", "1h"),
            ("node_id", "n7"),
            ("shutdown_grace", "7s"),
            ("sweep_interval", "7s"),
            ("max_connections", "7"),
            ("handshake_timeout", "7s"),
            ("idle_timeout", "7s"),
            ("max_inflight_requests", "7"),
            ("max_unsent_bytes", "7 MiB"),
            ("max_hello_frame_bytes", "7 KiB"),
            ("handshake_memory_bytes", "7 MiB"),
            ("listen_backlog", "7"),
            ("metrics_queue_limit", "7"),
            ("worker_threads", "7"),
            ("tls.cert", "/etc/squall/cert.pem"),
            ("tls.key", "/etc/squall/key.pem"),
            ("tls.http", "true"),
            ("auth.metrics", "true"),
            (
                "auth.tokens",
                r#"[{ name = "w", role = "consumer", hash = "sha256$00$0000000000000000000000000000000000000000000000000000000000000000" }]"#,
            ),
            ("queue.lease", "7s"),
            ("queue.max_attempts", "7"),
            ("queue.backoff_min", "7ms"),
            ("queue.backoff_max", "7s"),
            ("queue.max_length", "7"),
            ("queue.result_ttl", "7s"),
            ("queue.keep_acked", "true"),
            ("queue.dedup_window", "7s"),
            ("log.format", "json"),
            ("log.filter", "debug"),
            ("cluster.listen", "127.0.0.1:7700"),
            ("cluster.peers", "1@127.0.0.1:7700"),
            ("cluster.advertise", "broker-1:7600"),
            ("cluster.max_connections", "7"),
            ("cluster.max_frame_bytes", "7 MiB"),
            ("cluster.token", "s3cret"),
            ("cluster.tls_ca", "/etc/squall/ca.pem"),
            ("cluster.snapshot_logs", "7"),
            ("cluster.snapshot_log_bytes", "7 MiB"),
        ];
        assert_eq!(samples.len(), KEYS.len(), "a key without a sample here");
        for (name, value) in samples {
            let mut s = Settings::default();
            // Lists of tables come from the file only: give them as TOML.
            let value = match name {
                "auth.tokens" => {
                    format!("v = {value}").parse::<toml::Table>().unwrap()["v"].clone()
                }
                _ => toml::Value::String(value.into()),
            };
            s.set(name, &value).unwrap();
            assert_ne!(s, Settings::default(), "{name} = {value:?} changed nothing");
        }
    }

    #[test]
    fn flags_beat_env_beat_file_beat_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("squall.toml");
        std::fs::write(
            &file,
            "max_batch = 10\nmax_prefetch = 20\nnode_id = \"from-file\"\n[queue]\nlease = \"7s\"\n",
        )
        .unwrap();
        let env = vec![
            ("SQUALL_MAX_PREFETCH".to_owned(), "30".to_owned()),
            ("SQUALL_NODE_ID".to_owned(), "from-env".to_owned()),
            (
                "SQUALL_SERVER".to_owned(),
                "not a broker setting".to_owned(),
            ),
        ];
        let flags = vec![("node_id", "from-flag".to_owned())];
        let s = Settings::load(Some(&file), env, flags).unwrap();
        assert_eq!(s.server.max_batch, 10, "file over default");
        assert_eq!(s.server.max_prefetch, 30, "env over file");
        assert_eq!(s.server.node_id, "from-flag", "flag over env");
        assert_eq!(s.server.queue_defaults.lease_ms, 7_000);
        assert_eq!(
            s.server.max_frame_bytes,
            ServerConfig::default().max_frame_bytes,
            "untouched keys keep their default"
        );
    }

    #[test]
    fn bad_files_name_the_key() {
        let check = |text: &str, key: &str| {
            let mut s = Settings::default();
            let err = s
                .apply_toml(text)
                .and_then(|()| s.server.validate())
                .unwrap_err();
            assert_eq!(err.key, key, "{text}: {err}");
        };
        check("max_bach = 5", "max_bach");
        check("[queue]\nleese = \"1s\"", "queue.leese");
        check("[nope]\nx = 1", "nope");
        check("max_batch = \"lots\"", "max_batch");
        check("max_batch = -1", "max_batch");
        check("listen = \"localhost\"", "listen");
        check("[queue]\nlease = \"soon\"", "queue.lease");
        check("cache_bytes = \"12 parsecs\"", "cache_bytes");
        check("fsync = \"sometimes\"", "fsync");
        check("[log]\nformat = \"xml\"", "log.format");
        check("this is not toml", "config");
        check(
            "[[auth.tokens]]\nname = \"a\"\nrole = \"admin\"\nhash = \"plaintext\"",
            "auth.tokens",
        );
        check(
            "[[auth.tokens]]\nname = \"a\"\nrole = \"root\"\nhash = \"sha256$00$0000000000000000000000000000000000000000000000000000000000000000\"",
            "auth.tokens",
        );
        check(
            "[[auth.tokens]]\nname = \"a\"\ntoken = \"x\"",
            "auth.tokens",
        );
        check("[auth]\ntokenz = []", "auth.tokenz");
        // Valid one by one, inconsistent together.
        check(
            "[queue]\nbackoff_min = \"10m\"\nbackoff_max = \"1m\"",
            "queue.backoff_min",
        );
        check("max_lease = \"1s\"", "queue.lease");
        let err =
            Settings::load(None, vec![("SQUALL_AUTH_TOKENS".into(), "x".into())], []).unwrap_err();
        assert_eq!(err.key, "auth.tokens");
        assert!(err.reason.contains("configuration file"), "{err}");
        let err =
            Settings::load(None, vec![("SQUALL_MAX_BATCH".into(), "x".into())], []).unwrap_err();
        assert_eq!(err.key, "max_batch");
        assert!(err.reason.contains("SQUALL_MAX_BATCH"), "{err}");
    }

    #[test]
    fn values_accept_human_units() {
        let mut s = Settings::default();
        s.apply_toml("cache_bytes = \"512 KiB\"\nmax_lease = 90000\nhttp = \"off\"\n[queue]\nbackoff_max = \"1h 30m\"")
            .unwrap();
        assert_eq!(s.server.cache_bytes, 512 * 1024);
        assert_eq!(s.server.max_lease_ms, 90_000);
        assert_eq!(s.server.http, None);
        assert_eq!(s.server.queue_defaults.backoff_max_ms, 5_400_000);
        assert!(Settings::load(None, no_env(), [("queue.lease", "2s".to_owned())]).is_ok());
    }

    #[test]
    fn bad_settings_name_their_key() {
        let mut c = ServerConfig::default();
        c.queue_defaults.backoff_min_ms = 10;
        c.queue_defaults.backoff_max_ms = 1;
        assert_eq!(c.validate().unwrap_err().key, "queue.backoff_min");
        let c = ServerConfig {
            max_payload_bytes: usize::MAX,
            ..ServerConfig::default()
        };
        assert_eq!(c.validate().unwrap_err().key, "max_payload_bytes");
    }
}
