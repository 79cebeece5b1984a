//! The load generator shared by `squall bench` and the peers' comparison tool
//! (`benches/peers`): the workload's arguments, producers that keep a window of publishes
//! in flight (optionally on a fixed schedule), the bookkeeping that verifies delivery
//! (lost, duplicates) and measures end-to-end latency from a sequence number and send
//! time carried in every payload, and the report. It knows no broker's protocol: each
//! binary brings a [`Publisher`] per producer and a consumer loop per consumer.

mod pacer;
pub mod report;

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::{BufMut, Bytes, BytesMut};
use futures_util::stream::{FuturesUnordered, StreamExt};
use futures_util::FutureExt;
use hdrhistogram::Histogram;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

pub use report::Report;

/// Bytes at the start of every payload: sequence number and send time.
pub const HEADER_BYTES: usize = 16;
/// Largest latency a histogram records, microseconds (10 minutes).
const MAX_LATENCY_US: u64 = 600_000_000;
/// Clock ticks per second of /proc CPU times (USER_HZ, 100 on Linux).
const CLOCK_TICKS: u64 = 100;

/// An error from a producer's or consumer's connection, whatever its client's type.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Why a run could not be made or measured.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The arguments describe no valid workload.
    #[error("{0}")]
    Usage(String),
    /// A producer or consumer failed.
    #[error("{role} {index}")]
    Task {
        role: &'static str,
        index: usize,
        #[source]
        source: BoxError,
    },
    /// A producer or consumer task panicked.
    #[error("{role} {index} panicked: {message}")]
    Panicked {
        role: &'static str,
        index: usize,
        message: String,
    },
}

/// The workload: how many connections, messages, how fast, how big.
#[derive(Debug, Clone, clap::Args)]
pub struct LoadArgs {
    /// Producer connections.
    #[arg(long, default_value_t = 4)]
    pub producers: usize,
    /// Consumer connections; 0 only publishes (to fill a queue), so nothing is verified.
    #[arg(long, default_value_t = 4)]
    pub consumers: usize,
    /// Messages to send (upper bound with --duration).
    #[arg(long, default_value_t = 50_000)]
    pub messages: u64,
    /// Send for this long instead of a fixed count, e.g. 30s.
    #[arg(long, value_parser = parse_duration)]
    pub duration: Option<Duration>,
    /// Payload size in bytes (at least 16).
    #[arg(long, default_value_t = 256)]
    pub size: usize,
    /// Outstanding publish requests per producer.
    #[arg(long, default_value_t = 64)]
    pub window: usize,
    /// Messages per publish request.
    #[arg(long, default_value_t = 1)]
    pub batch: usize,
    /// Prefetch of each consumer (for a peer: takes per round trip).
    #[arg(long, default_value_t = 64)]
    pub prefetch: u32,
    /// Fixed total publish rate in messages per second; latency is measured from each
    /// message's scheduled time, so a stalled broker shows up as latency.
    #[arg(long)]
    pub rate: Option<u64>,
    /// Spread the load over this many queues.
    #[arg(long, default_value_t = 1)]
    pub queues: usize,
    /// How long consumers may take to drain after the producers finish.
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    pub drain_timeout: Duration,
    /// Print one JSON object instead of the text report.
    #[arg(long)]
    pub json: bool,
}

/// A duration like `30s`, `250ms` or `5m`; a bare number is milliseconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    if let Ok(ms) = s.parse::<u64>() {
        return Ok(Duration::from_millis(ms));
    }
    humantime::parse_duration(s)
        .map_err(|e| format!("`{s}` is not a duration like 30s, 250ms or 5m: {e}"))
}

impl LoadArgs {
    /// Refuses a workload that cannot run.
    pub fn check(&self) -> Result<(), Error> {
        let fail = |m: String| Err(Error::Usage(m));
        if self.producers == 0 {
            return fail("--producers must be at least 1".into());
        }
        if self.messages == 0 {
            return fail("--messages must be at least 1".into());
        }
        if self.size < HEADER_BYTES {
            return fail(format!("--size must be at least {HEADER_BYTES} bytes"));
        }
        if self.window == 0 || self.batch == 0 {
            return fail("--window and --batch must be at least 1".into());
        }
        if self.queues == 0 {
            return fail("--queues must be at least 1".into());
        }
        if self.rate == Some(0) {
            return fail("--rate must be above 0".into());
        }
        Ok(())
    }
}

/// One producer's connection, bound to its queue.
pub trait Publisher: Send + 'static {
    /// Publishes these payloads; the future ends once the broker confirmed all of them.
    /// Several are in flight at once (up to `--window`), so it must not borrow `self`.
    fn publish(
        &self,
        payloads: Vec<Bytes>,
    ) -> impl Future<Output = Result<(), BoxError>> + Send + 'static;

    /// Closes the connection once every publish has been confirmed.
    fn close(self) -> impl Future<Output = ()> + Send;
}

/// A fixed-size set of sequence numbers, shared by every task.
struct Bitset(Vec<AtomicU64>);

impl Bitset {
    fn new(bits: u64) -> Bitset {
        Bitset((0..bits.div_ceil(64)).map(|_| AtomicU64::new(0)).collect())
    }

    /// Sets bit `i`; true if it was already set.
    fn set(&self, i: u64) -> bool {
        let mask = 1u64 << (i % 64);
        self.0[(i / 64) as usize].fetch_or(mask, Relaxed) & mask != 0
    }

    fn get(&self, i: u64) -> bool {
        self.0[(i / 64) as usize].load(Relaxed) & (1u64 << (i % 64)) != 0
    }
}

/// State shared by producers, consumers and the progress ticker.
struct Shared {
    total: u64,
    started: Instant,
    next_seq: AtomicU64,
    confirmed: Bitset,
    seen: Bitset,
    confirmed_count: AtomicU64,
    delivered: AtomicU64,
    duplicates: AtomicU64,
    /// Nanoseconds from `started` to the last confirm or first delivery: the run's end.
    last_event_nanos: AtomicU64,
    producers_left: AtomicUsize,
    all_sent: AtomicBool,
    /// Wakes consumers when the run may be complete.
    progress: Notify,
    /// Stop sending (duration elapsed).
    stop_sending: CancellationToken,
    /// Stop everything (drain timeout or error).
    abort: CancellationToken,
}

impl Shared {
    fn complete(&self) -> bool {
        self.all_sent.load(Relaxed)
            && self.delivered.load(Relaxed) >= self.confirmed_count.load(Relaxed)
    }

    fn mark_event(&self) {
        let at = self.started.elapsed().as_nanos() as u64;
        self.last_event_nanos.fetch_max(at, Relaxed);
    }
}

fn unix_nanos() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_LATENCY_US, 3).expect("constant histogram bounds are valid")
}

/// Random bytes that payload padding is cut from, so that payloads do not compress
/// (the store compresses with zstd: constant padding would flatter disk use and speed).
fn noise() -> &'static [u8] {
    static NOISE: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
    NOISE.get_or_init(|| {
        use rand::RngCore;
        let mut v = vec![0u8; 1 << 20];
        rand::rng().fill_bytes(&mut v);
        v
    })
}

fn payload(seq: u64, sent_nanos: u64, size: usize) -> Bytes {
    let mut b = BytesMut::with_capacity(size);
    b.put_u64_le(seq);
    b.put_u64_le(sent_nanos);
    let pad = size - HEADER_BYTES;
    let noise = noise();
    let mut at = (seq.wrapping_mul(7919) as usize) % noise.len();
    let mut left = pad;
    while left > 0 {
        let n = left.min(noise.len() - at);
        b.put_slice(&noise[at..at + n]);
        left -= n;
        at = 0;
    }
    b.freeze()
}

/// What one run measured.
pub struct Outcome {
    /// From the start to the last confirm or first delivery of any message.
    pub elapsed: Duration,
    pub confirmed: u64,
    pub delivered: u64,
    pub duplicates: u64,
    pub lost: u64,
    pub publish: Histogram<u64>,
    pub end_to_end: Histogram<u64>,
}

impl Outcome {
    /// The process exit code a run ends with: 0, or 1 if any confirmed message was lost.
    pub fn exit_code(&self) -> std::process::ExitCode {
        match self.lost {
            0 => std::process::ExitCode::SUCCESS,
            _ => std::process::ExitCode::from(1),
        }
    }
}

/// One consumer's view of the run: where its deliveries are recorded and whether the
/// run is over. A consumer loop takes it, and hands it back when it ends.
pub struct Consumer {
    shared: Arc<Shared>,
    hist: Histogram<u64>,
    /// The queue this consumer takes from.
    pub queue: String,
    /// The consumer's number, from 0.
    pub index: usize,
    /// How many messages it may hold unacknowledged (`--prefetch`, at least 1).
    pub prefetch: u32,
}

impl Consumer {
    /// Records one received payload: end-to-end latency, and first delivery or duplicate.
    pub fn record(&mut self, p: &[u8]) {
        let shared = &*self.shared;
        if p.len() < HEADER_BYTES {
            return;
        }
        let seq = u64::from_le_bytes(p[0..8].try_into().unwrap_or_default());
        let sent = u64::from_le_bytes(p[8..16].try_into().unwrap_or_default());
        if seq >= shared.total {
            return;
        }
        let e2e_us = unix_nanos().saturating_sub(sent) / 1_000;
        self.hist.saturating_record(e2e_us.max(1));
        if shared.seen.set(seq) {
            shared.duplicates.fetch_add(1, Relaxed);
            return;
        }
        shared.mark_event();
        if shared.delivered.fetch_add(1, Relaxed) + 1 >= shared.confirmed_count.load(Relaxed) {
            shared.progress.notify_waiters();
        }
    }

    /// True once every confirmed message was delivered after the producers finished,
    /// or the run was aborted.
    pub fn finished(&self) -> bool {
        self.shared.complete() || self.shared.abort.is_cancelled()
    }

    /// Waits until the run may have finished: a progress notification, the abort, or
    /// at most 100 ms (a notification can fall between two checks).
    pub async fn changed(&self) {
        tokio::select! {
            _ = self.shared.progress.notified() => {}
            _ = self.shared.abort.cancelled() => {}
            _ = tokio::time::sleep(Duration::from_millis(100)) => {}
        }
    }
}

/// A run being set up: queues named, counters zeroed. Connect the consumers (with
/// [`Run::consumer`]) and producers, then [`Run::drive`].
pub struct Run {
    args: LoadArgs,
    shared: Arc<Shared>,
    queues: Vec<String>,
}

impl Run {
    pub fn new(args: &LoadArgs) -> Result<Run, Error> {
        args.check()?;
        let total = match args.duration {
            // Upper bound for a timed run: generous, the bitsets cost 2 bits per message.
            Some(_) => args.messages.max(50_000_000),
            None => args.messages,
        };
        let run_id = unix_nanos() / 1_000_000;
        Ok(Run {
            args: args.clone(),
            shared: Arc::new(Shared {
                total,
                started: Instant::now(),
                next_seq: AtomicU64::new(0),
                confirmed: Bitset::new(total),
                seen: Bitset::new(total),
                confirmed_count: AtomicU64::new(0),
                delivered: AtomicU64::new(0),
                duplicates: AtomicU64::new(0),
                last_event_nanos: AtomicU64::new(0),
                producers_left: AtomicUsize::new(args.producers),
                all_sent: AtomicBool::new(false),
                progress: Notify::new(),
                stop_sending: CancellationToken::new(),
                abort: CancellationToken::new(),
            }),
            queues: (0..args.queues)
                .map(|i| format!("bench-{run_id}-{i}"))
                .collect(),
        })
    }

    /// The queue that producer or consumer `i` uses.
    pub fn queue(&self, i: usize) -> &str {
        &self.queues[i % self.queues.len()]
    }

    /// The handle consumer `i` records its deliveries through.
    pub fn consumer(&self, i: usize) -> Consumer {
        Consumer {
            shared: self.shared.clone(),
            hist: new_histogram(),
            queue: self.queue(i).to_owned(),
            index: i,
            prefetch: self.args.prefetch.max(1),
        }
    }

    /// Runs the consumer loops (already connected, so that nothing waits in a queue for
    /// a subscriber) and one producer per publisher, waits for every confirmed message
    /// to be delivered or the drain timeout, and counts what was lost.
    pub async fn drive<P, C>(self, consumers: Vec<C>, publishers: Vec<P>) -> Result<Outcome, Error>
    where
        P: Publisher,
        C: Future<Output = Result<Consumer, BoxError>> + Send + 'static,
    {
        let Run { args, shared, .. } = self;
        debug_assert_eq!(publishers.len(), args.producers);
        let total = shared.total;
        let consumer_tasks: Vec<_> = consumers.into_iter().map(tokio::spawn).collect();
        let progress = report::progress_bar(&args, total);
        let started = Instant::now();
        let ticker = {
            let shared = shared.clone();
            let bar = progress.clone();
            tokio::spawn(async move {
                loop {
                    bar.set_position(shared.delivered.load(Relaxed));
                    if shared.abort.is_cancelled() {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            })
        };
        let timer = args.duration.map(|d| {
            let stop = shared.stop_sending.clone();
            tokio::spawn(async move {
                tokio::time::sleep(d).await;
                stop.cancel();
            })
        });
        let producer_tasks: Vec<_> = publishers
            .into_iter()
            .map(|p| tokio::spawn(produce(p, shared.clone(), args.clone(), started)))
            .collect();

        let mut publish = new_histogram();
        let mut first_error: Option<Error> = None;
        for (index, p) in producer_tasks.into_iter().enumerate() {
            match settle("producer", index, p.await) {
                Ok(h) => {
                    publish.add(&h).ok();
                }
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        shared.all_sent.store(true, Relaxed);
        shared.progress.notify_waiters();
        progress.set_length(shared.confirmed_count.load(Relaxed));
        let collected = async {
            let mut ends = Vec::new();
            for c in consumer_tasks {
                ends.push(c.await);
            }
            ends
        };
        let ends = tokio::select! {
            ends = collected => ends,
            _ = tokio::time::sleep(args.drain_timeout) => Vec::new(),
        };
        shared.abort.cancel();
        let _ = ticker.await;
        if let Some(t) = timer {
            t.abort();
        }
        progress.finish_and_clear();
        let mut end_to_end = new_histogram();
        for (index, c) in ends.into_iter().enumerate() {
            match settle("consumer", index, c) {
                Ok(c) => {
                    end_to_end.add(&c.hist).ok();
                }
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        if let Some(e) = first_error {
            return Err(e);
        }
        let confirmed = shared.confirmed_count.load(Relaxed);
        let sent = shared.next_seq.load(Relaxed).min(total);
        let lost = if args.consumers == 0 {
            0
        } else {
            (0..sent)
                .filter(|&s| shared.confirmed.get(s) && !shared.seen.get(s))
                .count() as u64
        };
        let elapsed = match shared.last_event_nanos.load(Relaxed) {
            0 => started.elapsed(),
            n => Duration::from_nanos(n).saturating_sub(started.duration_since(shared.started)),
        };
        Ok(Outcome {
            elapsed,
            confirmed,
            delivered: shared.delivered.load(Relaxed),
            duplicates: shared.duplicates.load(Relaxed),
            lost,
            publish,
            end_to_end,
        })
    }
}

/// A task's result, or the error that ended it.
fn settle<T>(
    role: &'static str,
    index: usize,
    joined: Result<Result<T, BoxError>, tokio::task::JoinError>,
) -> Result<T, Error> {
    match joined {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(source)) => Err(Error::Task {
            role,
            index,
            source,
        }),
        Err(e) => Err(Error::Panicked {
            role,
            index,
            message: e.to_string(),
        }),
    }
}

fn confirm(
    shared: &Shared,
    hist: &mut Histogram<u64>,
    (first, n, scheduled, result): (u64, u64, Instant, Result<(), BoxError>),
) -> Result<(), BoxError> {
    result?;
    let latency = scheduled.elapsed().as_micros() as u64;
    hist.saturating_record_n(latency.max(1), n);
    for seq in first..first + n {
        shared.confirmed.set(seq);
    }
    shared.confirmed_count.fetch_add(n, Relaxed);
    shared.mark_event();
    Ok(())
}

/// One producer: up to `--window` publishes in flight, on a fixed schedule with
/// `--rate`, recording each publish's confirm latency.
async fn produce<P: Publisher>(
    publisher: P,
    shared: Arc<Shared>,
    args: LoadArgs,
    started: Instant,
) -> Result<Histogram<u64>, BoxError> {
    let mut hist = new_histogram();
    let batch = args.batch as u64;
    let interval = args
        .rate
        .map(|r| Duration::from_secs_f64(args.producers as f64 * batch as f64 / r as f64));
    // Unix time of `started`, so that a scheduled instant maps to the wall clock.
    let epoch_nanos = unix_nanos().saturating_sub(started.elapsed().as_nanos() as u64);
    let mut next_send = tokio::time::Instant::from_std(started);
    let pacer = interval.map(|iv| pacer::Pacer::start(started, iv));
    // One concrete future type (the publisher's, tagged): no box per publish.
    let mut inflight = FuturesUnordered::new();
    let mut done = false;
    loop {
        // Settle every confirmation that is already in, without waiting.
        while let Some(Some(c)) = inflight.next().now_or_never() {
            confirm(&shared, &mut hist, c)?;
        }
        if done && inflight.is_empty() {
            break;
        }
        let can_send = !done && inflight.len() < args.window;
        let due = interval.is_none() || tokio::time::Instant::now() >= next_send;
        if can_send && due {
            if shared.stop_sending.is_cancelled() || shared.abort.is_cancelled() {
                done = true;
                continue;
            }
            let first = shared.next_seq.fetch_add(batch, Relaxed);
            if first >= shared.total {
                done = true;
                continue;
            }
            let n = batch.min(shared.total - first);
            // With a fixed rate, latency counts from the schedule, not from the send.
            let scheduled = match interval {
                Some(iv) => {
                    let at = next_send.into_std();
                    next_send += iv;
                    at
                }
                None => Instant::now(),
            };
            let sent_nanos = epoch_nanos + scheduled.duration_since(started).as_nanos() as u64;
            let payloads: Vec<Bytes> = (first..first + n)
                .map(|seq| payload(seq, sent_nanos, args.size))
                .collect();
            let sent = publisher.publish(payloads);
            inflight.push(sent.map(move |result| (first, n, scheduled, result)));
            continue;
        }
        tokio::select! {
            Some(c) = inflight.next(), if !inflight.is_empty() => confirm(&shared, &mut hist, c)?,
            _ = pacer::wait_until(pacer.as_ref(), next_send.into_std()), if can_send => {}
            _ = shared.abort.cancelled() => break,
        }
    }
    if shared.producers_left.fetch_sub(1, Relaxed) == 1 {
        shared.progress.notify_waiters();
    }
    publisher.close().await;
    Ok(hist)
}

/// User + system CPU time process `pid` has used so far, from /proc/PID/stat; None
/// where there is no such file (another OS, or the process is gone).
pub fn cpu_time(pid: u32) -> Option<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the parenthesised command name; utime and stime are 14 and 15.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    Some(Duration::from_millis(ticks * 1000 / CLOCK_TICKS))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_payload_carries_its_sequence_and_send_time_and_is_padded_to_size() {
        let p = payload(42, 7, 100);
        assert_eq!(p.len(), 100);
        assert_eq!(u64::from_le_bytes(p[0..8].try_into().unwrap()), 42);
        assert_eq!(u64::from_le_bytes(p[8..16].try_into().unwrap()), 7);
    }

    #[test]
    fn cpu_time_reads_this_process_s_growing_cpu_use() {
        let before = cpu_time(std::process::id()).expect("/proc/self/stat is readable");
        // Spin until the kernel has accounted more CPU time (ticks of 10 ms).
        let spin = Instant::now();
        loop {
            std::hint::black_box(payload(1, 2, 4096));
            if cpu_time(std::process::id()).is_some_and(|t| t > before) {
                break;
            }
            assert!(
                spin.elapsed() < Duration::from_secs(30),
                "CPU time never grew from {before:?}: the wrong /proc fields?"
            );
        }
    }
}
