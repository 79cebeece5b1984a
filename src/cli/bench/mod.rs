//! `squall bench`: a load generator built on the client crate. Producers publish with a
//! window of outstanding requests (optionally on a fixed schedule), consumers ack every
//! message, and every message carries its sequence number and send time so that the run
//! verifies delivery (lost, duplicates) and measures end-to-end latency.
//! The broker under test can be started by the bench itself (`--spawn`).

mod peers;
mod report;
mod spawn;

use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use bytes::{BufMut, Bytes, BytesMut};
use clap::Args;
use futures_util::stream::{FuturesUnordered, StreamExt};
use futures_util::FutureExt;
use hdrhistogram::Histogram;
use squall_client::{Client, Message};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::{parse_duration, ServerArgs};
use report::Report;

/// Bytes at the start of every payload: sequence number and send time.
const HEADER_BYTES: usize = 16;
/// Largest latency a histogram records, microseconds (10 minutes).
const MAX_LATENCY_US: u64 = 600_000_000;

/// Benchmark a broker: throughput, publish-confirm and end-to-end latency, loss.
#[derive(Debug, Clone, Args)]
pub struct BenchArgs {
    #[command(flatten)]
    server: ServerArgs,
    /// Which broker to drive: Squall, or a peer for comparison (beanstalkd, redis)
    /// listening at --server.
    #[arg(long, value_enum, default_value = "squall")]
    target: peers::Target,
    /// Start a broker on a temporary directory for the run (ignores --server).
    #[arg(long)]
    spawn: bool,
    /// Durability mode of the spawned broker.
    #[arg(long, default_value = "always", requires = "spawn")]
    fsync: String,
    /// Producer connections.
    #[arg(long, default_value_t = 4)]
    producers: usize,
    /// Consumer connections; 0 only publishes (to fill a queue), so nothing is verified.
    #[arg(long, default_value_t = 4)]
    consumers: usize,
    /// Messages to send (upper bound with --duration).
    #[arg(long, default_value_t = 50_000)]
    messages: u64,
    /// Send for this long instead of a fixed count, e.g. 30s.
    #[arg(long, value_parser = parse_duration)]
    duration: Option<Duration>,
    /// Payload size in bytes (at least 16).
    #[arg(long, default_value_t = 256)]
    size: usize,
    /// Outstanding publish requests per producer.
    #[arg(long, default_value_t = 64)]
    window: usize,
    /// Messages per publish request.
    #[arg(long, default_value_t = 1)]
    batch: usize,
    /// Prefetch of each consumer.
    #[arg(long, default_value_t = 64)]
    prefetch: u32,
    /// Fixed total publish rate in messages per second; latency is measured from each
    /// message's scheduled time, so a stalled broker shows up as latency.
    #[arg(long)]
    rate: Option<u64>,
    /// Spread the load over this many queues.
    #[arg(long, default_value_t = 1)]
    queues: usize,
    /// How long consumers may take to drain after the producers finish.
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    drain_timeout: Duration,
    /// Print one JSON object instead of the text report.
    #[arg(long)]
    json: bool,
}

impl BenchArgs {
    fn check(&self) -> anyhow::Result<()> {
        anyhow::ensure!(self.producers > 0, "--producers must be at least 1");
        anyhow::ensure!(self.messages > 0, "--messages must be at least 1");
        anyhow::ensure!(
            self.size >= HEADER_BYTES,
            "--size must be at least {HEADER_BYTES} bytes"
        );
        anyhow::ensure!(
            self.window > 0 && self.batch > 0,
            "--window and --batch must be at least 1"
        );
        anyhow::ensure!(self.queues > 0, "--queues must be at least 1");
        anyhow::ensure!(self.rate != Some(0), "--rate must be above 0");
        anyhow::ensure!(
            self.target == peers::Target::Squall || (!self.spawn && self.batch == 1),
            "peers are driven at --server with --batch 1 (no --spawn)"
        );
        Ok(())
    }
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
    next_seq: AtomicU64,
    confirmed: Bitset,
    seen: Bitset,
    confirmed_count: AtomicU64,
    delivered: AtomicU64,
    duplicates: AtomicU64,
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
pub(crate) struct Outcome {
    elapsed: Duration,
    confirmed: u64,
    delivered: u64,
    duplicates: u64,
    lost: u64,
    publish: Histogram<u64>,
    end_to_end: Histogram<u64>,
}

pub async fn run(args: BenchArgs) -> anyhow::Result<ExitCode> {
    args.check()?;
    let broker = if args.spawn {
        Some(spawn::SpawnedBroker::start(&args.fsync).await?)
    } else {
        None
    };
    let addr = match &broker {
        Some(b) => b.addr.to_string(),
        None if args.server.is_cluster() => {
            return Err(super::Exit {
                code: super::EXIT_USAGE,
                message: "squall bench drives one broker: give one node's address with --server"
                    .into(),
            }
            .into())
        }
        None => args.server.server.clone(),
    };
    let cpu_before = broker.as_ref().and_then(|b| b.cpu_time());
    let outcome = drive(&args, &addr).await;
    let cpu = match (&broker, cpu_before) {
        (Some(b), Some(before)) => b.cpu_time().map(|after| after.saturating_sub(before)),
        _ => None,
    };
    if let Some(b) = broker {
        b.stop().await;
    }
    let outcome = outcome?;
    let report = Report::new(&args, &addr, &outcome, cpu);
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", report.text());
    }
    Ok(if outcome.lost == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

async fn drive(args: &BenchArgs, addr: &str) -> anyhow::Result<Outcome> {
    let total = match args.duration {
        // Upper bound for a timed run: generous, the bitsets cost 2 bits per message.
        Some(_) => args.messages.max(50_000_000),
        None => args.messages,
    };
    let shared = Arc::new(Shared {
        total,
        next_seq: AtomicU64::new(0),
        confirmed: Bitset::new(total),
        seen: Bitset::new(total),
        confirmed_count: AtomicU64::new(0),
        delivered: AtomicU64::new(0),
        duplicates: AtomicU64::new(0),
        producers_left: AtomicUsize::new(args.producers),
        all_sent: AtomicBool::new(false),
        progress: Notify::new(),
        stop_sending: CancellationToken::new(),
        abort: CancellationToken::new(),
    });
    let run_id = unix_nanos() / 1_000_000;
    let queues: Vec<String> = (0..args.queues)
        .map(|i| format!("bench-{run_id}-{i}"))
        .collect();

    // A spawned broker is plain and open; an external one may want a token and TLS.
    let spawned = args.spawn;
    let connect = |name: String| {
        let addr = addr.to_owned();
        let builder = match spawned {
            true => Client::builder().client_name(name),
            false => args.server.builder(&name),
        };
        async move {
            builder
                .connect(&addr)
                .await
                .with_context(|| format!("cannot connect to the broker at {addr}"))
        }
    };
    // Consumers first, so that nothing waits in the queue for a subscriber.
    let mut consumers = Vec::new();
    for i in 0..args.consumers {
        let queue = queues[i % queues.len()].clone();
        let handle = match args.target {
            peers::Target::Squall => {
                let client = connect(format!("bench-consumer-{i}")).await?;
                let sub = client
                    .subscribe(queue)
                    .prefetch(args.prefetch)
                    .await
                    .context("subscribe")?;
                tokio::spawn(consume(client, sub, shared.clone()))
            }
            peer => tokio::spawn(peers::consume(
                peer,
                addr.to_owned(),
                queue,
                shared.clone(),
                args.prefetch,
            )),
        };
        consumers.push(handle);
    }
    let mut producer_clients = Vec::new();
    if args.target == peers::Target::Squall {
        for i in 0..args.producers {
            producer_clients.push(connect(format!("bench-producer-{i}")).await?);
        }
    }

    let progress = report::progress_bar(args, total);
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
    if let Some(d) = args.duration {
        let stop = shared.stop_sending.clone();
        tokio::spawn(async move {
            tokio::time::sleep(d).await;
            stop.cancel();
        });
    }
    let mut producers = Vec::new();
    for (i, client) in producer_clients.into_iter().enumerate() {
        let queue = queues[i % queues.len()].clone();
        producers.push(tokio::spawn(produce(
            client,
            queue,
            shared.clone(),
            args.clone(),
            started,
        )));
    }
    if args.target != peers::Target::Squall {
        for i in 0..args.producers {
            let queue = queues[i % queues.len()].clone();
            producers.push(tokio::spawn(peers::produce(
                args.target,
                addr.to_owned(),
                queue,
                shared.clone(),
                args.clone(),
                started,
            )));
        }
    }

    let mut publish = new_histogram();
    let mut first_error: Option<anyhow::Error> = None;
    for p in producers {
        match p.await {
            Ok(Ok(h)) => {
                publish.add(&h).ok();
            }
            Ok(Err(e)) => {
                first_error.get_or_insert(e);
            }
            Err(e) => {
                first_error.get_or_insert(anyhow::anyhow!("producer panicked: {e}"));
            }
        }
    }
    shared.all_sent.store(true, Relaxed);
    shared.progress.notify_waiters();
    progress.set_length(shared.confirmed_count.load(Relaxed));
    let drain_deadline = tokio::time::sleep(args.drain_timeout);
    tokio::pin!(drain_deadline);
    let mut end_to_end = new_histogram();
    let mut consumer_handles = consumers;
    let collected = async {
        let mut hists = Vec::new();
        for c in consumer_handles.drain(..) {
            hists.push(c.await);
        }
        hists
    };
    let hists = tokio::select! {
        h = collected => h,
        _ = &mut drain_deadline => {
            shared.abort.cancel();
            Vec::new()
        }
    };
    let elapsed = started.elapsed();
    shared.abort.cancel();
    let _ = ticker.await;
    progress.finish_and_clear();
    for h in hists {
        match h {
            Ok(Ok(h)) => {
                end_to_end.add(&h).ok();
            }
            Ok(Err(e)) => {
                first_error.get_or_insert(e);
            }
            Err(e) => {
                first_error.get_or_insert(anyhow::anyhow!("consumer panicked: {e}"));
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

type InFlight = std::pin::Pin<
    Box<dyn std::future::Future<Output = (u64, u64, Instant, squall_client::Result<()>)> + Send>,
>;

fn confirm(
    shared: &Shared,
    hist: &mut Histogram<u64>,
    queue: &str,
    (first, n, scheduled, result): (u64, u64, Instant, squall_client::Result<()>),
) -> anyhow::Result<()> {
    result.with_context(|| format!("publish to {queue}"))?;
    let latency = scheduled.elapsed().as_micros() as u64;
    hist.saturating_record_n(latency.max(1), n);
    for seq in first..first + n {
        shared.confirmed.set(seq);
    }
    shared.confirmed_count.fetch_add(n, Relaxed);
    Ok(())
}

async fn produce(
    client: Client,
    queue: String,
    shared: Arc<Shared>,
    args: BenchArgs,
    started: Instant,
) -> anyhow::Result<Histogram<u64>> {
    let mut hist = new_histogram();
    let batch = args.batch as u64;
    let interval = args
        .rate
        .map(|r| Duration::from_secs_f64(args.producers as f64 * batch as f64 / r as f64));
    // Unix time of `started`, so that a scheduled instant maps to the wall clock.
    let epoch_nanos = unix_nanos().saturating_sub(started.elapsed().as_nanos() as u64);
    let mut next_send = tokio::time::Instant::from_std(started);
    let pacer = interval.map(|iv| Pacer::start(started, iv));
    let mut inflight: FuturesUnordered<InFlight> = FuturesUnordered::new();
    let mut done = false;
    loop {
        // Settle every confirmation that is already in, without waiting.
        while let Some(Some(c)) = inflight.next().now_or_never() {
            confirm(&shared, &mut hist, &queue, c)?;
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
            let messages: Vec<Message> = (first..first + n)
                .map(|seq| Message::new(queue.clone(), payload(seq, sent_nanos, args.size)))
                .collect();
            let client = client.clone();
            inflight.push(Box::pin(async move {
                let r = client.publish_batch(messages).await.map(|_| ());
                (first, n, scheduled, r)
            }));
            continue;
        }
        tokio::select! {
            Some(c) = inflight.next(), if !inflight.is_empty() => confirm(&shared, &mut hist, &queue, c)?,
            _ = wait_until(pacer.as_ref(), next_send.into_std()), if can_send => {}
            _ = shared.abort.cancelled() => break,
        }
    }
    if shared.producers_left.fetch_sub(1, Relaxed) == 1 {
        shared.progress.notify_waiters();
    }
    client.close().await;
    Ok(hist)
}

/// Wakes a fixed-rate producer at each scheduled send time from a thread of its own,
/// with a precision of tens of microseconds. tokio's timer rounds sleeps up to whole
/// milliseconds, and latency counts from the schedule, so on a 1,000 msgs/s run it
/// would add up to a millisecond of the harness's own lateness to every sample.
pub(crate) struct Pacer {
    notify: Arc<Notify>,
    stop: Arc<AtomicBool>,
}

impl Pacer {
    pub(crate) fn start(started: Instant, interval: Duration) -> Pacer {
        let notify = Arc::new(Notify::new());
        let stop = Arc::new(AtomicBool::new(false));
        let (n, st) = (notify.clone(), stop.clone());
        let spawned = std::thread::Builder::new()
            .name("bench-pacer".into())
            .spawn(move || {
                #[cfg(target_os = "linux")]
                // SAFETY: PR_SET_TIMERSLACK only sets this thread's timer slack (1 ns).
                unsafe {
                    libc::prctl(libc::PR_SET_TIMERSLACK, 1 as libc::c_ulong);
                }
                let mut next = started;
                while !st.load(Relaxed) {
                    let now = Instant::now();
                    if next > now {
                        std::thread::sleep(next - now);
                        continue;
                    }
                    n.notify_one();
                    next += interval;
                }
            });
        if let Err(e) = spawned {
            // Without the thread, `until` would wait forever: fall back to tokio's timer.
            tracing::warn!(error = %e, "no pacer thread; fixed-rate sends use tokio's timer");
            stop.store(true, Relaxed);
        }
        Pacer { notify, stop }
    }

    async fn until(&self, at: Instant) {
        if self.stop.load(Relaxed) {
            return tokio::time::sleep_until(at.into()).await;
        }
        while Instant::now() < at {
            self.notify.notified().await;
        }
    }
}

impl Drop for Pacer {
    fn drop(&mut self) {
        self.stop.store(true, Relaxed);
    }
}

/// Waits for a scheduled send time: precisely with a pacer, else with tokio's timer.
pub(crate) async fn wait_until(pacer: Option<&Pacer>, at: Instant) {
    match pacer {
        Some(p) => p.until(at).await,
        None => tokio::time::sleep_until(at.into()).await,
    }
}

/// Records one received payload: end-to-end latency, and first delivery or duplicate.
fn record_delivery(shared: &Shared, hist: &mut Histogram<u64>, p: &[u8]) {
    if p.len() < HEADER_BYTES {
        return;
    }
    let seq = u64::from_le_bytes(p[0..8].try_into().unwrap_or_default());
    let sent = u64::from_le_bytes(p[8..16].try_into().unwrap_or_default());
    if seq >= shared.total {
        return;
    }
    let e2e_us = unix_nanos().saturating_sub(sent) / 1_000;
    hist.saturating_record(e2e_us.max(1));
    if shared.seen.set(seq) {
        shared.duplicates.fetch_add(1, Relaxed);
    } else if shared.delivered.fetch_add(1, Relaxed) + 1 >= shared.confirmed_count.load(Relaxed) {
        shared.progress.notify_waiters();
    }
}

async fn consume(
    client: Client,
    mut sub: squall_client::Subscription,
    shared: Arc<Shared>,
) -> anyhow::Result<Histogram<u64>> {
    let mut hist = new_histogram();
    let mut acks = FuturesUnordered::new();
    loop {
        if shared.complete() {
            break;
        }
        tokio::select! {
            biased;
            Some(r) = acks.next(), if !acks.is_empty() => {
                let r: squall_client::Result<()> = r;
                r.context("ack")?;
            }
            d = sub.recv() => {
                let d = d.context("the subscription ended")?.context("delivery")?;
                record_delivery(&shared, &mut hist, d.payload());
                acks.push(d.ack());
            }
            _ = shared.progress.notified() => {}
            // Re-check completion now and then: a notification can fall between loops.
            _ = tokio::time::sleep(Duration::from_millis(100)) => {}
            _ = shared.abort.cancelled() => break,
        }
    }
    while let Some(r) = acks.next().await {
        r.context("ack")?;
    }
    client.close().await;
    Ok(hist)
}
