//! Where settings come from, in increasing precedence: built-in defaults, the TOML
//! file, `SQUALL_*` environment variables, command-line flags. Every layer goes
//! through one table of keys ([`KEYS`]), so each setting has one name (`max_batch`,
//! `queue.lease`), one environment variable (`SQUALL_MAX_BATCH`, `SQUALL_QUEUE_LEASE`)
//! and one parser, and every error names the key it is about.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use toml::Value;

use super::{ConfigError, LogFormat, Settings};
use crate::auth::{Role, TokenEntry, TokenHash};
use crate::store::FsyncMode;

/// Environment variable of the test-only recovery delay (milliseconds); read only by a
/// build with the `test-hooks` feature.
pub const TEST_RECOVERY_DELAY_ENV: &str = "SQUALL_TEST_RECOVERY_DELAY_MS";

type Apply = fn(&mut Settings, &Value) -> Result<(), String>;

/// One setting: its dotted key and how to apply a value to it.
pub struct Key {
    /// `name` at the top of the file, or `table.name`.
    pub name: &'static str,
    apply: Apply,
}

impl Key {
    /// The environment variable that sets it: `SQUALL_` + the key in upper case with
    /// dots as underscores.
    pub fn env_var(&self) -> String {
        format!("SQUALL_{}", self.name.replace('.', "_").to_uppercase())
    }
}

macro_rules! key {
    ($name:literal, |$s:ident, $v:ident| $body:expr) => {
        Key {
            name: $name,
            apply: |$s: &mut Settings, $v: &Value| {
                $body;
                Ok(())
            },
        }
    };
}

/// Every setting. `squall serve --help`, `deploy/squall.toml` and README.md describe
/// the same list; a test checks that the shipped file sets every key.
pub static KEYS: &[Key] = &[
    key!("listen", |s, v| s.server.listen = addr(v)?),
    key!("http", |s, v| s.server.http = http_addr(v)?),
    key!("data_dir", |s, v| s.server.data_dir =
        PathBuf::from(string(v)?)),
    key!("fsync", |s, v| s.server.fsync =
        string(v)?.parse::<FsyncMode>()?),
    key!("cache_bytes", |s, v| s.server.cache_bytes = size(v)?),
    key!("journal_segment_bytes", |s, v| s
        .server
        .journal_segment_bytes =
        size(v)? as u64),
    key!("max_frame_bytes", |s, v| s.server.max_frame_bytes =
        size(v)?),
    key!("max_payload_bytes", |s, v| s.server.max_payload_bytes =
        size(v)?),
    key!("max_batch", |s, v| s.server.max_batch = int(v)?),
    key!("max_prefetch", |s, v| s.server.max_prefetch = int(v)?),
    key!("max_schedules", |s, v| s.server.max_schedules = int(v)?),
    key!("max_lease", |s, v| s.server.max_lease_ms = millis(v)?),
    key!("node_id", |s, v| s.server.node_id = string(v)?.to_owned()),
    key!("shutdown_grace", |s, v| s.server.shutdown_grace =
        duration(v)?),
    key!("sweep_interval", |s, v| s.server.sweep_interval =
        duration(v)?),
    key!("max_connections", |s, v| s.server.max_connections = int(v)?),
    key!("handshake_timeout", |s, v| s.server.handshake_timeout =
        duration(v)?),
    key!("idle_timeout", |s, v| s.server.idle_timeout = duration(v)?),
    key!("max_inflight_requests", |s, v| s
        .server
        .max_inflight_requests =
        int(v)?),
    key!("max_unsent_bytes", |s, v| s.server.max_unsent_bytes =
        size(v)?),
    key!("max_hello_frame_bytes", |s, v| s
        .server
        .max_hello_frame_bytes =
        size(v)?),
    key!("handshake_memory_bytes", |s, v| s
        .server
        .handshake_memory_bytes =
        size(v)?),
    key!("listen_backlog", |s, v| s.server.listen_backlog = int(v)?),
    key!("worker_threads", |s, v| s.server.worker_threads = int(v)?),
    key!("metrics_queue_limit", |s, v| s.server.metrics_queue_limit =
        int(v)?),
    key!("tls.cert", |s, v| s.server.tls.cert = optional_path(v)?),
    key!("tls.key", |s, v| s.server.tls.key = optional_path(v)?),
    key!("tls.http", |s, v| s.server.tls.http = boolean(v)?),
    key!("auth.tokens", |s, v| s.server.auth.tokens = tokens(v)?),
    key!("auth.metrics", |s, v| s.server.auth.metrics = boolean(v)?),
    key!("queue.lease", |s, v| s.server.queue_defaults.lease_ms =
        millis(v)?),
    key!("queue.max_attempts", |s, v| s
        .server
        .queue_defaults
        .max_attempts = int(v)?),
    key!("queue.backoff_min", |s, v| s
        .server
        .queue_defaults
        .backoff_min_ms = millis(v)?),
    key!("queue.backoff_max", |s, v| s
        .server
        .queue_defaults
        .backoff_max_ms = millis(v)?),
    key!("queue.max_length", |s, v| s
        .server
        .queue_defaults
        .max_length = int(v)?),
    key!("queue.result_ttl", |s, v| s
        .server
        .queue_defaults
        .result_ttl_ms = millis(v)?),
    key!("queue.keep_acked", |s, v| s
        .server
        .queue_defaults
        .keep_acked = boolean(v)?),
    key!("queue.dedup_window", |s, v| s
        .server
        .queue_defaults
        .dedup_window_ms =
        millis(v)?),
    key!("log.format", |s, v| s.log.format =
        string(v)?.parse::<LogFormat>()?),
    key!("log.filter", |s, v| s.log.filter = string(v)?.to_owned()),
    key!("cluster.listen", |s, v| s.cluster.listen =
        optional_addr(v)?),
    key!("cluster.peers", |s, v| s.cluster.peers = peers(v)?),
    key!("cluster.advertise", |s, v| s.cluster.advertise =
        optional_string(v)?),
    key!("cluster.max_connections", |s, v| s
        .cluster
        .max_connections =
        int(v)?),
    key!("cluster.max_frame_bytes", |s, v| s
        .cluster
        .max_frame_bytes =
        size(v)?),
    key!("cluster.token", |s, v| s.cluster.token =
        string(v)?.to_owned()),
    key!("cluster.tls_ca", |s, v| s.cluster.tls_ca =
        optional_path(v)?),
    key!("cluster.snapshot_logs", |s, v| s.cluster.snapshot_logs =
        int(v)?),
    key!("cluster.snapshot_log_bytes", |s, v| s
        .cluster
        .snapshot_log_bytes =
        size(v)? as u64),
];

/// The key named `name`, if it exists.
pub fn key(name: &str) -> Option<&'static Key> {
    KEYS.iter().find(|k| k.name == name)
}

impl Settings {
    /// Sets one key from a value (a TOML value, or a string from the environment or a
    /// flag: numbers, sizes and durations are accepted as strings too).
    pub fn set(&mut self, name: &str, value: &Value) -> Result<(), ConfigError> {
        let k = key(name).ok_or_else(|| ConfigError {
            key: name.to_owned(),
            reason: "unknown setting (see deploy/squall.toml for every setting)".to_owned(),
        })?;
        (k.apply)(self, value).map_err(|reason| ConfigError {
            key: k.name.to_owned(),
            reason,
        })
    }

    /// Applies a TOML document. Unknown keys and tables are errors.
    pub fn apply_toml(&mut self, text: &str) -> Result<(), ConfigError> {
        let table: toml::Table = text.parse().map_err(|e: toml::de::Error| ConfigError {
            key: "config".to_owned(),
            reason: format!("not valid TOML: {e}"),
        })?;
        self.apply_table("", &table)
    }

    fn apply_table(&mut self, prefix: &str, table: &toml::Table) -> Result<(), ConfigError> {
        for (name, value) in table {
            let path = if prefix.is_empty() {
                name.clone()
            } else {
                format!("{prefix}.{name}")
            };
            match value {
                Value::Table(inner) if prefix.is_empty() && is_table(name) => {
                    self.apply_table(name, inner)?
                }
                _ => self.set(&path, value)?,
            }
        }
        Ok(())
    }

    /// Applies every `SQUALL_<KEY>` variable of `vars` (other variables are ignored:
    /// `SQUALL_SERVER` and friends belong to the client commands).
    pub fn apply_env<I>(&mut self, vars: I) -> Result<(), ConfigError>
    where
        I: IntoIterator<Item = (String, String)>,
    {
        for (var, value) in vars {
            #[cfg(feature = "test-hooks")]
            if var == TEST_RECOVERY_DELAY_ENV {
                let ms = value.parse::<u64>().map_err(|_| ConfigError {
                    key: "test_recovery_delay".to_owned(),
                    reason: format!("{var}={value:?} is not a number of milliseconds"),
                })?;
                self.server.test_recovery_delay = Duration::from_millis(ms);
                continue;
            }
            if let Some(k) = KEYS.iter().find(|k| k.env_var() == var) {
                (k.apply)(self, &Value::String(value.clone())).map_err(|reason| ConfigError {
                    key: k.name.to_owned(),
                    reason: format!("{var}={value:?}: {reason}"),
                })?;
            }
        }
        Ok(())
    }
}

fn is_table(name: &str) -> bool {
    KEYS.iter()
        .any(|k| k.name.split_once('.').is_some_and(|(t, _)| t == name))
}

/// `[[auth.tokens]]`: a list of tables with `name`, `hash`, `role` and optional
/// `queues`. File only: a string (from the environment or a flag) is refused.
fn tokens(v: &Value) -> Result<Vec<TokenEntry>, String> {
    let Value::Array(items) = v else {
        return Err(format!(
            "expected [[auth.tokens]] tables in the configuration file, found {}; tokens cannot be set from the environment or a flag",
            v.type_str()
        ));
    };
    let mut entries: Vec<TokenEntry> = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let entry = token_entry(item).map_err(|e| format!("entry {}: {e}", i + 1))?;
        if entries.iter().any(|e| e.name == entry.name) {
            return Err(format!(
                "entry {}: name `{}` is used twice",
                i + 1,
                entry.name
            ));
        }
        entries.push(entry);
    }
    Ok(entries)
}

fn token_entry(v: &Value) -> Result<TokenEntry, String> {
    let Value::Table(t) = v else {
        return Err(format!("expected a table, found {}", v.type_str()));
    };
    if let Some(unknown) = t
        .keys()
        .find(|k| !["name", "hash", "role", "queues"].contains(&k.as_str()))
    {
        return Err(format!(
            "unknown field `{unknown}` (fields: name, hash, role, queues)"
        ));
    }
    let field = |name: &str| {
        t.get(name)
            .ok_or_else(|| format!("`{name}` is missing"))
            .and_then(|v| string(v).map_err(|e| format!("`{name}`: {e}")))
    };
    let name = field("name")?.to_owned();
    if name.is_empty() {
        return Err("`name` is empty".to_owned());
    }
    let hash = field("hash")?
        .parse::<TokenHash>()
        .map_err(|e| format!("`hash`: {e}"))?;
    let role = field("role")?.parse::<Role>()?;
    let queues = match t.get("queues") {
        None => Vec::new(),
        Some(Value::Array(qs)) => {
            let mut out = Vec::with_capacity(qs.len());
            for q in qs {
                let q = string(q).map_err(|e| format!("`queues`: {e}"))?;
                let bad = q.is_empty()
                    || q.len() > 200
                    || !q
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"._:-".contains(&b));
                if bad {
                    return Err(format!(
                        "`queues`: `{q}` is not a queue-name prefix ([A-Za-z0-9._:-]{{1,200}})"
                    ));
                }
                out.push(q.to_owned());
            }
            if out.is_empty() {
                return Err("`queues` is empty: leave it out to allow every queue".to_owned());
            }
            out
        }
        Some(other) => {
            return Err(format!(
                "`queues`: expected a list of prefixes, found {}",
                other.type_str()
            ))
        }
    };
    Ok(TokenEntry {
        name,
        hash,
        role,
        queues,
    })
}

/// A file path, or "" for none.
fn optional_path(v: &Value) -> Result<Option<PathBuf>, String> {
    Ok(Some(string(v)?)
        .filter(|s| !s.is_empty())
        .map(PathBuf::from))
}

/// A TOML boolean, or `true`/`false` as text (environment variables, flags).
fn boolean(v: &Value) -> Result<bool, String> {
    match v {
        Value::Boolean(b) => Ok(*b),
        Value::String(s) if s == "true" => Ok(true),
        Value::String(s) if s == "false" => Ok(false),
        other => Err(format!("expected true or false, found {other}")),
    }
}

fn string(v: &Value) -> Result<&str, String> {
    v.as_str()
        .ok_or_else(|| format!("expected a string, found {}", v.type_str()))
}

/// An address to listen on: `IP:PORT`, or `HOST:PORT` with a host name resolved now
/// (its first IPv4 address, else its first address).
fn addr(v: &Value) -> Result<SocketAddr, String> {
    let s = string(v)?;
    if let Ok(a) = s.parse() {
        return Ok(a);
    }
    let not_an_address =
        || format!("`{s}` is not an address like 127.0.0.1:7600 or localhost:7600");
    let (host, port) = s.rsplit_once(':').ok_or_else(not_an_address)?;
    if host.is_empty() || port.parse::<u16>().is_err() {
        return Err(not_an_address());
    }
    use std::net::ToSocketAddrs;
    let found: Vec<SocketAddr> = s
        .to_socket_addrs()
        .map_err(|e| format!("`{s}`: cannot resolve {host}: {e}"))?
        .collect();
    found
        .iter()
        .find(|a| a.is_ipv4())
        .or(found.first())
        .copied()
        .ok_or_else(|| format!("`{s}`: {host} has no address"))
}

/// An address, or `off` / "" for none (the cluster port).
fn optional_addr(v: &Value) -> Result<Option<SocketAddr>, String> {
    match string(v)? {
        "off" | "" => Ok(None),
        _ => addr(v).map(Some),
    }
}

fn optional_string(v: &Value) -> Result<Option<String>, String> {
    let s = string(v)?;
    Ok((!s.is_empty()).then(|| s.to_owned()))
}

/// `cluster.peers`: "1@host:7700,2@host:7701" or an array of such strings.
fn peers(v: &Value) -> Result<Vec<super::Peer>, String> {
    match v {
        Value::Array(items) => {
            let items: Vec<&str> = items
                .iter()
                .map(|i| i.as_str().ok_or("peers must be strings like 1@host:7700"))
                .collect::<Result<_, _>>()?;
            super::cluster::parse_peers(&items)
        }
        _ => super::cluster::parse_peers(&[string(v)?]),
    }
}

fn http_addr(v: &Value) -> Result<Option<SocketAddr>, String> {
    match string(v)? {
        "off" => Ok(None),
        _ => addr(v).map(Some),
    }
}

fn int<T: TryFrom<u64>>(v: &Value) -> Result<T, String> {
    let n: u64 = match v {
        Value::Integer(i) => u64::try_from(*i).map_err(|_| format!("{i} is negative"))?,
        Value::String(s) => s
            .trim()
            .replace('_', "")
            .parse()
            .map_err(|_| format!("`{s}` is not a whole number"))?,
        other => return Err(format!("expected a number, found {}", other.type_str())),
    };
    T::try_from(n).map_err(|_| format!("{n} is too large"))
}

/// A byte size: a number, or a string like `64 MiB`, `512KiB`, `1GB`.
fn size(v: &Value) -> Result<usize, String> {
    let Value::String(s) = v else {
        return int(v);
    };
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '_'))
        .unwrap_or(t.len());
    let (digits, unit) = t.split_at(split);
    let n: u64 = digits
        .replace('_', "")
        .parse()
        .map_err(|_| format!("`{s}` is not a size like 4194304, 512 KiB or 64 MiB"))?;
    let scale: u64 = match unit.trim() {
        "" | "B" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        "KB" | "kB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        other => {
            return Err(format!(
                "`{other}` is not a size unit (B, KiB, MiB, GiB, KB, MB, GB)"
            ))
        }
    };
    n.checked_mul(scale)
        .and_then(|b| usize::try_from(b).ok())
        .ok_or_else(|| format!("`{s}` is too large"))
}

/// A duration: a string like `30s`, `250ms`, `5m`, `1h 30m`, or a number of
/// milliseconds.
fn duration(v: &Value) -> Result<Duration, String> {
    match v {
        Value::Integer(_) => Ok(Duration::from_millis(int(v)?)),
        Value::String(s) => {
            if let Ok(ms) = s.trim().parse::<u64>() {
                return Ok(Duration::from_millis(ms));
            }
            humantime::parse_duration(s.trim())
                .map_err(|e| format!("`{s}` is not a duration like 30s, 250ms or 5m ({e})"))
        }
        other => Err(format!(
            "expected a duration like \"30s\", found {}",
            other.type_str()
        )),
    }
}

fn millis(v: &Value) -> Result<u64, String> {
    let d = duration(v)?;
    u64::try_from(d.as_millis()).map_err(|_| "the duration is too long".to_owned())
}
