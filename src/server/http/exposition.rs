//! The Prometheus exposition of one scrape: the per-queue view the hub hands over, the
//! store writer's statistics, the process-wide counters (`server/metrics.rs`) and the
//! process's own figures (`process_*`, from /proc), encoded by the `prometheus-client`
//! crate as OpenMetrics text, or as Prometheus' plain text format for scrapers that do
//! not ask for OpenMetrics. Serving it over HTTP is `http/mod.rs`.

use std::sync::atomic::Ordering::Relaxed;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::{Registry, Unit};

use crate::histogram::HistogramSnapshot;
use crate::server::metrics::Metrics;
use crate::server::msg::QueueStatus;
use crate::store::WriterStats;

/// The content type of [`render`]'s output in OpenMetrics.
pub(crate) const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
/// The content type of [`render`]'s output in Prometheus' text format.
pub(crate) const TEXT_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// One queue as a scrape sees it.
#[derive(Debug)]
pub(crate) struct QueueSample {
    pub(crate) status: QueueStatus,
    pub(crate) oldest_ready_age_ms: Option<u64>,
}

/// Everything one scrape exports, copied out of the live state.
#[derive(Debug)]
struct Scrape {
    ready: bool,
    store: StoreHealth,
    connections_open: i64,
    connections_accepted: u64,
    connections_refused: u64,
    paused_connections: i64,
    publish_confirm: HistogramSnapshot,
    writer: Option<WriterSample>,
    queues: ScrapedQueues,
}

/// The queues of one scrape: the deepest one by one, the others summed
/// (`scrape.rs`), and how many there are.
#[derive(Debug, Default)]
pub(crate) struct ScrapedQueues {
    pub(crate) top: Vec<QueueSample>,
    pub(crate) others: Option<QueueSample>,
    pub(crate) count: u64,
}

#[derive(Debug)]
struct WriterSample {
    batches: u64,
    jobs: u64,
    mutations: u64,
    flushes: u64,
    checkpoints: u64,
    netted: u64,
    checkpoint_micros: u64,
    commit_latency: HistogramSnapshot,
    batch_jobs: HistogramSnapshot,
    flush_latency: HistogramSnapshot,
}

/// The store's condition at a scrape.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct StoreHealth {
    /// A checkpoint failed: a restart is needed.
    pub(crate) failed: bool,
    /// Changes cannot be stored now (failed, or the journal cannot write).
    pub(crate) unavailable: bool,
    /// Bytes of journal segment files.
    pub(crate) journal_bytes: u64,
}

/// Encodes one scrape as OpenMetrics text, or (`openmetrics` false) as Prometheus'
/// text format. `writer` and `queues` are absent while the broker is still recovering;
/// `cluster` on a cluster member only; `ready` is what `/readyz` says.
pub(crate) fn render(
    metrics: &Metrics,
    ready: bool,
    writer: Option<&WriterStats>,
    queues: ScrapedQueues,
    store: StoreHealth,
    cluster: Option<Box<dyn Collector>>,
    openmetrics: bool,
) -> Result<String, std::fmt::Error> {
    let scrape = Scrape {
        ready: ready && !store.unavailable,
        store,
        connections_open: metrics.connections_open.load(Relaxed),
        connections_accepted: metrics.connections_accepted.load(Relaxed),
        connections_refused: metrics.connections_refused.load(Relaxed),
        paused_connections: metrics.paused_connections.load(Relaxed),
        publish_confirm: metrics.publish_confirm_micros.snapshot(),
        writer: writer.map(|w| WriterSample {
            batches: w.batches.load(Relaxed),
            jobs: w.jobs.load(Relaxed),
            mutations: w.mutations.load(Relaxed),
            flushes: w.flushes.load(Relaxed),
            checkpoints: w.checkpoints.load(Relaxed),
            netted: w.netted.load(Relaxed),
            checkpoint_micros: w.checkpoint_micros.load(Relaxed),
            commit_latency: w.commit_latency_micros.snapshot(),
            batch_jobs: w.batch_jobs.snapshot(),
            flush_latency: w.flush_latency_micros.snapshot(),
        }),
        queues,
    };
    let mut registry = Registry::with_prefix("squall");
    registry.register_collector(Box::new(scrape));
    if let Some(cluster) = cluster {
        registry.register_collector(cluster);
    }
    let mut out = String::with_capacity(8 * 1024);
    // process_* carry no prefix (the names every exporter uses): a registry of their
    // own, encoded first and without its end marker.
    let mut process = Registry::default();
    process.register_collector(Box::new(ProcessSample::read()));
    prometheus_client::encoding::text::encode(&mut out, &process)?;
    out.truncate(out.strip_suffix(EOF).map_or(out.len(), str::len));
    prometheus_client::encoding::text::encode(&mut out, &registry)?;
    if !openmetrics {
        out = to_prometheus_text(&out);
    }
    Ok(out)
}

/// OpenMetrics' end-of-exposition line.
const EOF: &str = "# EOF\n";

/// OpenMetrics text to Prometheus' text format (0.0.4): counters are named with their
/// `_total` in `# HELP` and `# TYPE`, `# UNIT` and `# EOF` lines go; samples are equal.
fn to_prometheus_text(openmetrics: &str) -> String {
    let counters: std::collections::HashSet<&str> = openmetrics
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE ")?.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(openmetrics.len());
    for line in openmetrics.lines() {
        if line.starts_with("# UNIT ") || line == EOF.trim_end() {
            continue;
        }
        let described = ["# HELP ", "# TYPE "]
            .into_iter()
            .find_map(|p| Some((p, line.strip_prefix(p)?)));
        match described {
            Some((prefix, rest)) => {
                let (name, tail) = rest.split_once(' ').unwrap_or((rest, ""));
                let total = if counters.contains(name) {
                    "_total"
                } else {
                    ""
                };
                out.push_str(&format!("{prefix}{name}{total} {tail}"));
            }
            None => out.push_str(line),
        }
        out.push('\n');
    }
    out
}

/// The process's own figures, read from /proc at each scrape (Linux; elsewhere the
/// ones that cannot be read are left out).
#[derive(Debug, Default)]
struct ProcessSample {
    cpu_seconds: Option<f64>,
    resident_bytes: Option<u64>,
    virtual_bytes: Option<u64>,
    open_fds: Option<u64>,
    max_fds: Option<u64>,
    start_time_seconds: Option<f64>,
    threads: Option<u64>,
}

impl ProcessSample {
    fn read() -> ProcessSample {
        let mut p = ProcessSample::default();
        // SAFETY: sysconf has no preconditions.
        let (ticks, page) = unsafe {
            (
                libc::sysconf(libc::_SC_CLK_TCK),
                libc::sysconf(libc::_SC_PAGESIZE),
            )
        };
        if let Ok(stat) = std::fs::read_to_string("/proc/self/stat") {
            // Fields after the command name, which is in parentheses and may hold spaces.
            let fields: Vec<&str> = stat
                .rsplit_once(')')
                .map(|(_, rest)| rest.split_whitespace().collect())
                .unwrap_or_default();
            // Numbered as in proc(5) from field 3 (state) on: index = number - 3.
            let field = |n: usize| fields.get(n - 3).and_then(|v| v.parse::<u64>().ok());
            if ticks > 0 {
                let ticks = ticks as f64;
                if let (Some(utime), Some(stime)) = (field(14), field(15)) {
                    p.cpu_seconds = Some((utime + stime) as f64 / ticks);
                }
                if let (Some(start), Some(boot)) = (field(22), boot_time()) {
                    p.start_time_seconds = Some(boot as f64 + start as f64 / ticks);
                }
            }
            p.threads = field(20);
            p.virtual_bytes = field(23);
            if page > 0 {
                p.resident_bytes = field(24).map(|pages| pages * page as u64);
            }
        }
        p.open_fds = std::fs::read_dir("/proc/self/fd")
            .ok()
            .map(|d| d.count() as u64);
        let mut limit = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit writes into the struct it is given.
        if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } == 0 {
            p.max_fds = Some(limit.rlim_cur);
        }
        p
    }
}

/// The system's boot time, unix seconds (`btime` in /proc/stat).
fn boot_time() -> Option<u64> {
    std::fs::read_to_string("/proc/stat")
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("btime ")?.trim().parse().ok())
}

impl Collector for ProcessSample {
    fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        if let Some(v) = self.cpu_seconds {
            ConstCounter::new(v).encode(enc.encode_descriptor(
                "process_cpu",
                "User and system CPU time spent.",
                Some(&Unit::Seconds),
                MetricType::Counter,
            )?)?;
        }
        let gauges = [
            (
                "process_resident_memory",
                "Resident memory size.",
                Some(Unit::Bytes),
                self.resident_bytes,
            ),
            (
                "process_virtual_memory",
                "Virtual memory size.",
                Some(Unit::Bytes),
                self.virtual_bytes,
            ),
            (
                "process_open_fds",
                "Open file descriptors.",
                None,
                self.open_fds,
            ),
            (
                "process_max_fds",
                "Most open file descriptors allowed (soft limit).",
                None,
                self.max_fds,
            ),
            (
                "process_threads",
                "Operating-system threads.",
                None,
                self.threads,
            ),
        ];
        for (name, help, unit, value) in gauges {
            if let Some(v) = value {
                let v = i64::try_from(v).unwrap_or(i64::MAX);
                ConstGauge::new(v).encode(enc.encode_descriptor(
                    name,
                    help,
                    unit.as_ref(),
                    MetricType::Gauge,
                )?)?;
            }
        }
        if let Some(v) = self.start_time_seconds {
            ConstGauge::new(v).encode(enc.encode_descriptor(
                "process_start_time",
                "Start time of the process since the unix epoch.",
                Some(&Unit::Seconds),
                MetricType::Gauge,
            )?)?;
        }
        Ok(())
    }
}

/// A histogram snapshot as a Prometheus histogram, its values divided into the
/// exported unit (µs → s). Dividing, not multiplying by 1e-6, keeps bounds such as
/// 0.00005 exact in the text.
#[derive(Debug)]
struct ScaledHistogram<'a> {
    snapshot: &'a HistogramSnapshot,
    per_unit: f64,
}

impl EncodeMetric for ScaledHistogram<'_> {
    fn encode(
        &self,
        mut encoder: prometheus_client::encoding::MetricEncoder,
    ) -> Result<(), std::fmt::Error> {
        // The encoder takes per-bucket counts and accumulates them itself.
        let mut below = 0;
        let mut buckets: Vec<(f64, u64)> = Vec::with_capacity(self.snapshot.buckets.len() + 1);
        for &(bound, cumulative) in &self.snapshot.buckets {
            buckets.push((bound as f64 / self.per_unit, cumulative - below));
            below = cumulative;
        }
        buckets.push((f64::INFINITY, self.snapshot.count - below));
        encoder.encode_histogram::<prometheus_client::encoding::NoLabelSet>(
            self.snapshot.sum as f64 / self.per_unit,
            self.snapshot.count,
            &buckets,
            None,
        )
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Histogram
    }
}

/// Microseconds per second.
pub(super) const MICROS: f64 = 1e6;

pub(super) fn gauge(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    value: i64,
) -> Result<(), std::fmt::Error> {
    ConstGauge::new(value).encode(enc.encode_descriptor(name, help, None, MetricType::Gauge)?)
}

pub(super) fn counter(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    value: u64,
) -> Result<(), std::fmt::Error> {
    ConstCounter::new(value).encode(enc.encode_descriptor(name, help, None, MetricType::Counter)?)
}

pub(super) fn histogram(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    unit: Option<&Unit>,
    snapshot: &HistogramSnapshot,
    per_unit: f64,
) -> Result<(), std::fmt::Error> {
    ScaledHistogram { snapshot, per_unit }.encode(enc.encode_descriptor(
        name,
        help,
        unit,
        MetricType::Histogram,
    )?)
}

/// A per-queue metric: its name, help, type, how to read it from a sample, and
/// whether the sum of the queues not exported one by one has it.
type QueueMetric = (
    &'static str,
    &'static str,
    MetricType,
    fn(&QueueSample) -> i64,
    bool,
);

const QUEUE_METRICS: &[QueueMetric] = &[
    (
        "queue_consumers",
        "Subscriptions of the queue.",
        MetricType::Gauge,
        |q| q.status.snapshot.consumers as i64,
        true,
    ),
    (
        "queue_paused",
        "1 when the queue is paused (nothing is delivered).",
        MetricType::Gauge,
        |q| i64::from(q.status.snapshot.config.paused),
        false,
    ),
    (
        "queue_published",
        "Tasks published since the broker started.",
        MetricType::Counter,
        |q| q.status.snapshot.counters.published as i64,
        true,
    ),
    (
        "queue_delivered",
        "Deliveries since the broker started.",
        MetricType::Counter,
        |q| q.status.snapshot.counters.delivered as i64,
        true,
    ),
    (
        "queue_redelivered",
        "Deliveries of tasks delivered before (retries).",
        MetricType::Counter,
        |q| q.status.snapshot.counters.redelivered as i64,
        true,
    ),
    (
        "queue_acked",
        "Acks since the broker started.",
        MetricType::Counter,
        |q| q.status.snapshot.counters.acked as i64,
        true,
    ),
    (
        "queue_nacked",
        "Nacks since the broker started.",
        MetricType::Counter,
        |q| q.status.snapshot.counters.nacked as i64,
        true,
    ),
    (
        "queue_lease_expired",
        "Leases that ran out since the broker started.",
        MetricType::Counter,
        |q| q.status.snapshot.counters.expired as i64,
        true,
    ),
    (
        "queue_dead_lettered",
        "Tasks moved to the dead set since the broker started.",
        MetricType::Counter,
        |q| q.status.snapshot.counters.dead_lettered as i64,
        true,
    ),
    (
        "queue_expired_tasks",
        "Tasks not started by their expiry since the broker started (dead-lettered with reason expired, or dropped).",
        MetricType::Counter,
        |q| q.status.snapshot.counters.expired_tasks as i64,
        true,
    ),
    (
        "queue_max_in_flight",
        "Most tasks of the queue leased at once across all consumers (0 = no cap).",
        MetricType::Gauge,
        |q| i64::from(q.status.snapshot.config.max_in_flight),
        false,
    ),
    (
        "queue_rate_limit",
        "Most deliveries per second of the queue (0 = no limit).",
        MetricType::Gauge,
        |q| i64::from(q.status.snapshot.config.rate_limit),
        false,
    ),
    (
        "queue_rate_burst",
        "Deliveries the queue's rate limit allows at once after a quiet spell (its token bucket's size; 0 without a rate limit).",
        MetricType::Gauge,
        |q| i64::from(q.status.snapshot.config.effective_burst()),
        false,
    ),
    (
        "queue_drop_expired",
        "1 when the queue removes tasks not started by their expiry instead of moving them to the dead set.",
        MetricType::Gauge,
        |q| i64::from(q.status.snapshot.config.drop_expired),
        false,
    ),
    (
        "queue_keep_acked",
        "1 when an ack without a result keeps a succeeded record (for the result TTL); 0 when only acks with a result do.",
        MetricType::Gauge,
        |q| i64::from(q.status.snapshot.config.keep_acked),
        false,
    ),
];

impl Collector for Scrape {
    fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        {
            let mut family = enc.encode_descriptor(
                "build_info",
                "Always 1; the labels say which build of squall this is.",
                None,
                MetricType::Gauge,
            )?;
            let labels = [("version", env!("CARGO_PKG_VERSION"))];
            ConstGauge::new(1).encode(family.encode_family(&labels)?)?;
        }
        gauge(
            &mut enc,
            "ready",
            "1 once recovery finished and the broker serves; 0 while starting or stopping.",
            i64::from(self.ready),
        )?;
        gauge(
            &mut enc,
            "store_failed",
            "1 once a checkpoint (index flush) failed: nothing is confirmed any more until the broker restarts.",
            i64::from(self.store.failed),
        )?;
        gauge(
            &mut enc,
            "store_unavailable",
            "1 while changes cannot be stored (the journal cannot write, e.g. a full disk, or the store failed); clears by itself once a write succeeds.",
            i64::from(self.store.unavailable),
        )?;
        gauge(
            &mut enc,
            "journal_bytes",
            "Bytes of journal (write-ahead log) segment files on disk.",
            i64::try_from(self.store.journal_bytes).unwrap_or(i64::MAX),
        )?;
        gauge(
            &mut enc,
            "connections",
            "Open client connections.",
            self.connections_open,
        )?;
        counter(
            &mut enc,
            "connections_accepted",
            "Client connections accepted since the broker started.",
            self.connections_accepted,
        )?;
        counter(
            &mut enc,
            "connections_refused",
            "Client connections refused because max_connections were open.",
            self.connections_refused,
        )?;
        gauge(
            &mut enc,
            "connections_paused",
            "Connections whose deliveries are paused: more than max_unsent_bytes wait to be written to them.",
            self.paused_connections,
        )?;
        histogram(
            &mut enc,
            "publish_confirm",
            "Time from a publish request's arrival to its confirmation (durable).",
            Some(&Unit::Seconds),
            &self.publish_confirm,
            MICROS,
        )?;
        if let Some(w) = &self.writer {
            self.encode_writer(&mut enc, w)?;
        }
        gauge(
            &mut enc,
            "queues",
            "Queues that exist (the deepest metrics_queue_limit are exported one by one, the rest summed as queue=\"(other)\").",
            i64::try_from(self.queues.count).unwrap_or(i64::MAX),
        )?;
        self.encode_queues(&mut enc)
    }
}

impl Scrape {
    fn encode_writer(
        &self,
        enc: &mut DescriptorEncoder,
        w: &WriterSample,
    ) -> Result<(), std::fmt::Error> {
        counter(
            enc,
            "store_batches",
            "Group-commit batches applied.",
            w.batches,
        )?;
        counter(enc, "store_jobs", "Store jobs confirmed.", w.jobs)?;
        counter(
            enc,
            "store_mutations",
            "Store mutations applied.",
            w.mutations,
        )?;
        counter(enc, "store_flushes", "fsyncs of the journal.", w.flushes)?;
        counter(
            enc,
            "store_tasks_netted",
            "Tasks inserted and removed in one group, so written neither time (a cluster member's held-back entries).",
            w.netted,
        )?;
        counter(
            enc,
            "store_checkpoints",
            "Checkpoints: index flushes that let old journal segments go.",
            w.checkpoints,
        )?;
        ConstCounter::new(w.checkpoint_micros as f64 / MICROS).encode(enc.encode_descriptor(
            "store_checkpoint",
            "Time spent in checkpoints.",
            Some(&Unit::Seconds),
            MetricType::Counter,
        )?)?;
        histogram(
            enc,
            "group_commit",
            "Time to stage, apply, fsync and confirm one group-commit batch.",
            Some(&Unit::Seconds),
            &w.commit_latency,
            MICROS,
        )?;
        histogram(
            enc,
            "fsync",
            "Time spent in one fsync of the store.",
            Some(&Unit::Seconds),
            &w.flush_latency,
            MICROS,
        )?;
        histogram(
            enc,
            "group_commit_batch_jobs",
            "Jobs (publishes, acks, ...) confirmed together by one batch and its fsync.",
            None,
            &w.batch_jobs,
            1.0,
        )
    }

    fn encode_queues(&self, enc: &mut DescriptorEncoder) -> Result<(), std::fmt::Error> {
        {
            let mut family = enc.encode_descriptor(
                "queue_tasks",
                "Tasks of the queue by state (ready, delayed, leased, dead).",
                None,
                MetricType::Gauge,
            )?;
            for q in self.queues.top.iter().chain(&self.queues.others) {
                let s = &q.status.snapshot;
                for (state, value) in [
                    ("ready", s.ready),
                    ("delayed", s.delayed),
                    ("leased", s.leased),
                    ("dead", s.dead),
                ] {
                    let labels = [("queue", &*s.name), ("state", state)];
                    ConstGauge::new(value as i64).encode(family.encode_family(&labels)?)?;
                }
            }
        }
        {
            let mut family = enc.encode_descriptor(
                "queue_oldest_ready_age",
                "Age of the queue's oldest ready task (0 when none is ready).",
                Some(&Unit::Seconds),
                MetricType::Gauge,
            )?;
            for q in &self.queues.top {
                let labels = [("queue", &*q.status.snapshot.name)];
                let age = q.oldest_ready_age_ms.unwrap_or(0) as f64 / 1000.0;
                ConstGauge::new(age).encode(family.encode_family(&labels)?)?;
            }
        }
        for &(name, help, kind, read, summed) in QUEUE_METRICS {
            let mut family = enc.encode_descriptor(name, help, None, kind)?;
            let others = self.queues.others.iter().filter(|_| summed);
            for q in self.queues.top.iter().chain(others) {
                let labels = [("queue", &*q.status.snapshot.name)];
                let value = read(q);
                let metric = family.encode_family(&labels)?;
                match kind {
                    MetricType::Counter => ConstCounter::new(value as u64).encode(metric)?,
                    _ => ConstGauge::new(value).encode(metric)?,
                }
            }
        }
        Ok(())
    }
}
