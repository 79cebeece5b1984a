//! What the admin commands print: human units (1.2k, 3.4 MiB, 2m13s), aligned tables,
//! and the JSON shapes of `--json`. Pure functions of plain rows, so that the output
//! is pinned by snapshot tests without a broker.

use std::fmt::Write as _;
use std::time::{Duration, SystemTime};

use serde::Serialize;
use squall_client::{PeekedTask, QueueInfo};

/// One queue as the CLI shows it (built from the client's `QueueInfo`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct QueueRow {
    pub name: String,
    /// The cluster node holding the queue (`--server a,b,c`); absent for one broker.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// The node that owns the queue under the node list given; differs from `node`
    /// for a queue left behind on its old node after the list changed (drain it).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
    pub ready: u64,
    pub delayed: u64,
    pub leased: u64,
    pub dead: u64,
    pub consumers: u64,
    pub paused: bool,
    /// Milliseconds; absent when nothing is ready.
    pub oldest_ready_age_ms: Option<u64>,
    pub totals: Totals,
    pub rates_per_sec: Rates,
    pub config: Config,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Totals {
    pub published: u64,
    pub delivered: u64,
    pub redelivered: u64,
    pub acked: u64,
    pub nacked: u64,
    pub expired: u64,
    pub dead_lettered: u64,
    pub expired_tasks: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Rates {
    pub published: f64,
    pub delivered: f64,
    pub acked: f64,
    pub nacked: f64,
    pub expired: f64,
    pub dead_lettered: f64,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Config {
    pub lease_ms: u64,
    pub max_attempts: u32,
    pub backoff_min_ms: u64,
    pub backoff_max_ms: u64,
    pub max_length: u64,
    pub result_ttl_ms: u64,
    pub dedup_window_ms: u64,
    pub max_in_flight: u32,
    pub rate_limit: u32,
    pub rate_burst: u32,
    pub drop_expired: bool,
    pub keep_acked: bool,
}

impl From<&QueueInfo> for QueueRow {
    fn from(q: &QueueInfo) -> Self {
        let ms = |d: Duration| d.as_millis() as u64;
        QueueRow {
            name: q.name.clone(),
            node: None,
            owner: None,
            ready: q.ready,
            delayed: q.delayed,
            leased: q.leased,
            dead: q.dead,
            consumers: q.consumers,
            paused: q.paused,
            oldest_ready_age_ms: q.oldest_ready_age.map(ms),
            totals: Totals {
                published: q.totals.published,
                delivered: q.totals.delivered,
                redelivered: q.totals.redelivered,
                acked: q.totals.acked,
                nacked: q.totals.nacked,
                expired: q.totals.expired,
                dead_lettered: q.totals.dead_lettered,
                expired_tasks: q.totals.expired_tasks,
            },
            rates_per_sec: Rates {
                published: q.rates.published,
                delivered: q.rates.delivered,
                acked: q.rates.acked,
                nacked: q.rates.nacked,
                expired: q.rates.expired,
                dead_lettered: q.rates.dead_lettered,
            },
            config: Config {
                lease_ms: ms(q.config.lease),
                max_attempts: q.config.max_attempts,
                backoff_min_ms: ms(q.config.backoff_min),
                backoff_max_ms: ms(q.config.backoff_max),
                max_length: q.config.max_length,
                result_ttl_ms: ms(q.config.result_ttl),
                dedup_window_ms: ms(q.config.dedup_window),
                max_in_flight: q.config.max_in_flight,
                rate_limit: q.config.rate_limit,
                rate_burst: q.config.rate_burst,
                drop_expired: q.config.drop_expired,
                keep_acked: q.config.keep_acked,
            },
        }
    }
}

/// `1234` → `1.2k`; below 1000 the number itself.
pub fn count(n: u64) -> String {
    if n < 1_000 {
        return n.to_string();
    }
    let mut v = n as f64;
    let mut unit = 0;
    const UNITS: [&str; 6] = ["", "k", "M", "G", "T", "P"];
    while v >= 999.95 && unit < UNITS.len() - 1 {
        v /= 1_000.0;
        unit += 1;
    }
    if v < 100.0 {
        format!("{v:.1}{}", UNITS[unit])
    } else {
        format!("{v:.0}{}", UNITS[unit])
    }
}

/// A per-second rate: `0`, `0.4`, `12`, `1.5k`.
pub fn rate(r: f64) -> String {
    if r.is_nan() || r <= 0.0 {
        "0".to_owned()
    } else if r < 10.0 {
        format!("{r:.1}")
    } else if r < 1_000.0 {
        format!("{r:.0}")
    } else {
        count(r.round() as u64)
    }
}

/// `3.4 MiB`, `512 B`.
pub fn bytes(n: u64) -> String {
    if n < 1024 {
        return format!("{n} B");
    }
    let mut v = n as f64;
    let mut unit = 0;
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    format!("{v:.1} {}", UNITS[unit])
}

/// `850ms`, `45s`, `2m13s`, `1h02m`, `3d04h`: two units at most.
pub fn duration(d: Duration) -> String {
    let ms = d.as_millis() as u64;
    if ms < 1_000 {
        return format!("{ms}ms");
    }
    let s = ms / 1_000;
    match s {
        0..=59 => format!("{s}s"),
        60..=3_599 => format!("{}m{:02}s", s / 60, s % 60),
        3_600..=86_399 => format!("{}h{:02}m", s / 3_600, s % 3_600 / 60),
        _ => format!("{}d{:02}h", s / 86_400, s % 86_400 / 3_600),
    }
}

/// A duration setting as an operator writes it: `30s`, `5m`, `1h`, `1500ms`.
pub fn setting(ms: u64) -> String {
    let d = Duration::from_millis(ms);
    if ms == 0 {
        return "0".to_owned();
    }
    humantime::format_duration(d).to_string().replace(' ', "")
}

/// Left-aligned first column, right-aligned numbers, two spaces between columns.
fn table(header: &[&str], rows: &[Vec<String>], left: &[bool]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let mut line = |cells: &mut dyn Iterator<Item = &str>| {
        let mut l = String::new();
        for (i, cell) in cells.enumerate() {
            if i > 0 {
                l.push_str("  ");
            }
            let pad = widths[i].saturating_sub(cell.chars().count());
            if left.get(i).copied().unwrap_or(false) {
                l.push_str(cell);
                l.extend(std::iter::repeat_n(' ', pad));
            } else {
                l.extend(std::iter::repeat_n(' ', pad));
                l.push_str(cell);
            }
        }
        out.push_str(l.trim_end());
        out.push('\n');
    };
    line(&mut header.iter().copied());
    for row in rows {
        line(&mut row.iter().map(String::as_str));
    }
    out
}

const QUEUE_HEADER: [&str; 14] = [
    "QUEUE",
    "READY",
    "DELAYED",
    "LEASED",
    "DEAD",
    "CONSUMERS",
    "PUBLISHED",
    "ACKED",
    "NACKED",
    "EXPIRED",
    "PUB/S",
    "ACK/S",
    "OLDEST",
    "STATE",
];

/// The `squall queues` table.
pub fn queues_table(rows: &[QueueRow]) -> String {
    if rows.is_empty() {
        return "no queues yet (a queue appears on its first publish or subscribe)\n".to_owned();
    }
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|q| {
            vec![
                q.name.clone(),
                count(q.ready),
                count(q.delayed),
                count(q.leased),
                count(q.dead),
                count(q.consumers),
                count(q.totals.published),
                count(q.totals.acked),
                count(q.totals.nacked),
                count(q.totals.expired),
                rate(q.rates_per_sec.published),
                rate(q.rates_per_sec.acked),
                q.oldest_ready_age_ms
                    .map_or_else(|| "-".to_owned(), |ms| duration(Duration::from_millis(ms))),
                if q.paused { "paused" } else { "active" }.to_owned(),
            ]
        })
        .collect();
    let mut left = vec![false; 14];
    left[0] = true;
    left[13] = true;
    if rows.iter().all(|q| q.node.is_none()) {
        return table(&QUEUE_HEADER, &cells, &left);
    }
    // A cluster: the node comes first, since rows are grouped by node.
    let header: Vec<&str> = std::iter::once("NODE").chain(QUEUE_HEADER).collect();
    let cells: Vec<Vec<String>> = rows
        .iter()
        .zip(cells)
        .map(|(q, row)| {
            let node = q.node.as_deref().unwrap_or("-");
            let cell = match q.owner.as_deref() {
                Some(owner) if owner != node => format!("{node} (owner {owner})"),
                _ => node.to_owned(),
            };
            std::iter::once(cell).chain(row).collect()
        })
        .collect();
    left.insert(0, true);
    table(&header, &cells, &left)
}

/// `squall queue NAME`: the table row, then totals, rates and configuration.
pub fn queue_detail(q: &QueueRow) -> String {
    let mut out = queues_table(std::slice::from_ref(q));
    let t = &q.totals;
    let r = &q.rates_per_sec;
    let c = &q.config;
    let unbounded = |n: u64, zero: &str| {
        if n == 0 {
            zero.to_owned()
        } else {
            n.to_string()
        }
    };
    let rows: Vec<(&str, String)> = vec![
        (
            "totals",
            format!(
                "published {}, delivered {}, redelivered {}, acked {}, nacked {}, expired {}, dead-lettered {}, expired unstarted {}",
                count(t.published),
                count(t.delivered),
                count(t.redelivered),
                count(t.acked),
                count(t.nacked),
                count(t.expired),
                count(t.dead_lettered),
                count(t.expired_tasks)
            ),
        ),
        (
            "rates/s (1m)",
            format!(
                "published {}, delivered {}, acked {}, nacked {}, expired {}, dead-lettered {}",
                rate(r.published),
                rate(r.delivered),
                rate(r.acked),
                rate(r.nacked),
                rate(r.expired),
                rate(r.dead_lettered)
            ),
        ),
        ("lease", setting(c.lease_ms)),
        ("max attempts", unbounded(u64::from(c.max_attempts), "unlimited")),
        (
            "backoff",
            format!("{}..{}", setting(c.backoff_min_ms), setting(c.backoff_max_ms)),
        ),
        ("max length", unbounded(c.max_length, "unbounded")),
        ("result ttl", setting(c.result_ttl_ms)),
        (
            "acks kept",
            if c.keep_acked { "all" } else { "with a result" }.to_owned(),
        ),
        ("dedup window", setting(c.dedup_window_ms)),
        ("max in flight", unbounded(u64::from(c.max_in_flight), "no cap")),
        ("rate limit", rate_limit(c)),
        (
            "expired tasks",
            if c.drop_expired { "dropped" } else { "dead-lettered" }.to_owned(),
        ),
        ("paused", if q.paused { "yes" } else { "no" }.to_owned()),
    ];
    let width = rows.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    out.push('\n');
    for (k, v) in rows {
        let _ = writeln!(out, "{k:<width$}  {v}");
    }
    out
}

fn rate_limit(c: &Config) -> String {
    match (c.rate_limit, c.rate_burst) {
        (0, _) => "none".to_owned(),
        (n, 0) => format!("{n}/s (burst {n})"),
        (n, b) => format!("{n}/s (burst {b})"),
    }
}

/// `--json` of `squall queues`: an array, pretty-printed.
pub fn queues_json(rows: &[QueueRow]) -> String {
    serde_json::to_string_pretty(rows).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}")) + "\n"
}

/// `--json` of `squall queue NAME`: one object, pretty-printed.
pub fn queue_json(row: &QueueRow) -> String {
    serde_json::to_string_pretty(row).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}")) + "\n"
}

/// One peeked task as the CLI shows it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TaskRow {
    pub id: u64,
    pub state: String,
    pub priority: i32,
    pub attempts: u32,
    pub max_attempts: u32,
    pub created_at_ms: u64,
    pub updated_at_ms: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub not_before_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lease_holder: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lease_deadline_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// UTF-8 text, or base64 when `payload_encoding` is "base64".
    pub payload: String,
    pub payload_encoding: &'static str,
    pub payload_bytes: u64,
    /// Values as UTF-8 text, or `base64:<data>`.
    pub headers: std::collections::BTreeMap<String, String>,
    /// `payload` is the broker's preview of a larger payload, or the headers were
    /// left out (`squall peek --full` fetches whole payloads).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub truncated: bool,
}

impl TaskRow {
    /// Replaces a preview with the whole payload and headers.
    pub fn set_payload(
        &mut self,
        payload: &[u8],
        headers: &std::collections::BTreeMap<String, bytes::Bytes>,
    ) {
        let (text, encoding) = super::consume::text_or_base64(payload);
        self.payload = text;
        self.payload_encoding = encoding;
        self.payload_bytes = payload.len() as u64;
        self.headers = headers
            .iter()
            .map(|(k, v)| (k.clone(), super::consume::header_value(v)))
            .collect();
        self.truncated = false;
    }
}

fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl From<&PeekedTask> for TaskRow {
    fn from(t: &PeekedTask) -> Self {
        let (payload, payload_encoding) = super::consume::text_or_base64(&t.payload);
        TaskRow {
            id: t.id,
            state: t.state.to_string(),
            priority: t.priority,
            attempts: t.attempts,
            max_attempts: t.max_attempts,
            created_at_ms: unix_ms(t.created_at),
            updated_at_ms: unix_ms(t.updated_at),
            not_before_ms: t.not_before.map(unix_ms),
            lease_holder: t.lease_holder.clone(),
            lease_deadline_ms: t.lease_deadline.map(unix_ms),
            last_error: t.last_error.clone(),
            payload,
            payload_encoding,
            payload_bytes: t.payload_bytes,
            headers: t
                .headers
                .iter()
                .map(|(k, v)| (k.clone(), super::consume::header_value(v)))
                .collect(),
            truncated: t.truncated,
        }
    }
}

/// Longest payload preview in the peek table, in characters.
const PREVIEW: usize = 48;

/// The `squall peek` table; times are shown relative to `now_ms`.
pub fn peek_table(rows: &[TaskRow], now_ms: u64) -> String {
    if rows.is_empty() {
        return "no tasks in that state\n".to_owned();
    }
    let ago = |ms: u64| duration(Duration::from_millis(now_ms.saturating_sub(ms)));
    let until = |ms: u64| duration(Duration::from_millis(ms.saturating_sub(now_ms)));
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|t| {
            let attempts = match t.max_attempts {
                0 => t.attempts.to_string(),
                max => format!("{}/{max}", t.attempts),
            };
            let detail = match t.state.as_str() {
                "delayed" => t
                    .not_before_ms
                    .map(|at| format!("due in {}", until(at)))
                    .unwrap_or_default(),
                "leased" => format!(
                    "{}, {} left",
                    t.lease_holder.as_deref().unwrap_or("?"),
                    t.lease_deadline_ms.map(until).unwrap_or_default()
                ),
                _ => t
                    .last_error
                    .as_deref()
                    .map(|e| format!("last error: {e}"))
                    .unwrap_or_default(),
            };
            vec![
                t.id.to_string(),
                t.state.clone(),
                t.priority.to_string(),
                attempts,
                ago(t.created_at_ms),
                bytes(t.payload_bytes),
                preview(t),
                detail,
            ]
        })
        .collect();
    let left = [false, true, false, false, false, false, true, true];
    table(
        &[
            "ID", "STATE", "PRI", "ATTEMPTS", "AGE", "SIZE", "PAYLOAD", "DETAIL",
        ],
        &cells,
        &left,
    )
}

fn preview(t: &TaskRow) -> String {
    if t.payload_encoding != "utf8" {
        return "<binary>".to_owned();
    }
    let flat: String = t
        .payload
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if flat.chars().count() > PREVIEW {
        let cut: String = flat.chars().take(PREVIEW - 1).collect();
        format!("{cut}…")
    } else {
        flat
    }
}

/// `--json` of `squall peek`: one object per line.
pub fn peek_json(rows: &[TaskRow]) -> String {
    let mut out = String::new();
    for r in rows {
        out.push_str(
            &serde_json::to_string(r).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}")),
        );
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests;
