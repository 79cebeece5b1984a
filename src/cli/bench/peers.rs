//! Adapters that drive other brokers with the same workload as `squall bench`, for the
//! side-by-side comparison (`benches/compare.sh`): beanstalkd (put / reserve / delete)
//! and Redis (LPUSH + BLMOVE into a processing list + LREM: the "reliable queue"
//! pattern). Each speaks just enough of its protocol. Producers pipeline up to the same
//! window as Squall's, consumers pipeline up to the same prefetch.

use std::collections::VecDeque;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use bytes::{BufMut, BytesMut};
use hdrhistogram::Histogram;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;

use super::{new_histogram, payload, record_delivery, unix_nanos, BenchArgs, Shared};

/// Which broker a run drives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Target {
    /// Squall, through the client crate.
    Squall,
    /// beanstalkd (tube = queue).
    Beanstalkd,
    /// Redis lists with the reliable-queue pattern.
    Redis,
}

/// A line-and-bytes protocol connection with a write buffer.
struct Conn {
    rd: BufReader<OwnedReadHalf>,
    wr: OwnedWriteHalf,
    out: BytesMut,
    line: String,
}

impl Conn {
    async fn connect(addr: &str) -> anyhow::Result<Conn> {
        let s = TcpStream::connect(addr)
            .await
            .with_context(|| format!("connect to {addr}"))?;
        s.set_nodelay(true)?;
        let (rd, wr) = s.into_split();
        Ok(Conn {
            rd: BufReader::with_capacity(64 * 1024, rd),
            wr,
            out: BytesMut::with_capacity(64 * 1024),
            line: String::new(),
        })
    }

    async fn flush(&mut self) -> anyhow::Result<()> {
        if !self.out.is_empty() {
            self.wr.write_all(&self.out).await?;
            self.out.clear();
        }
        Ok(())
    }

    async fn read_line(&mut self) -> anyhow::Result<&str> {
        self.line.clear();
        if self.rd.read_line(&mut self.line).await? == 0 {
            bail!("connection closed by the server");
        }
        Ok(self.line.trim_end())
    }

    /// Reads `n` bytes followed by CRLF.
    async fn read_bytes(&mut self, n: usize) -> anyhow::Result<Vec<u8>> {
        let mut v = vec![0; n + 2];
        self.rd.read_exact(&mut v).await?;
        v.truncate(n);
        Ok(v)
    }

    // --- beanstalkd ---

    async fn bs_command(&mut self, cmd: &str, expect: &str) -> anyhow::Result<()> {
        self.out.put_slice(cmd.as_bytes());
        self.out.put_slice(b"\r\n");
        self.flush().await?;
        let line = self.read_line().await?;
        if !line.starts_with(expect) {
            bail!("beanstalkd answered {line:?} to {cmd:?}");
        }
        Ok(())
    }

    fn bs_put(&mut self, body: &[u8]) {
        // priority 0, no delay, 120 s time-to-run
        self.out
            .put_slice(format!("put 0 0 120 {}\r\n", body.len()).as_bytes());
        self.out.put_slice(body);
        self.out.put_slice(b"\r\n");
    }

    // --- Redis (RESP) ---

    fn resp(&mut self, args: &[&[u8]]) {
        self.out
            .put_slice(format!("*{}\r\n", args.len()).as_bytes());
        for a in args {
            self.out.put_slice(format!("${}\r\n", a.len()).as_bytes());
            self.out.put_slice(a);
            self.out.put_slice(b"\r\n");
        }
    }

    /// Reads one reply; bulk strings are returned, integers and simple strings as None.
    async fn resp_reply(&mut self) -> anyhow::Result<Option<Vec<u8>>> {
        let line = self.read_line().await?.to_owned();
        match line.as_bytes().first() {
            Some(b'+') | Some(b':') => Ok(None),
            // A blocking command that timed out answers with a null array.
            Some(b'*') if line == "*-1" => Ok(None),
            Some(b'-') => bail!("redis error: {line}"),
            Some(b'$') => {
                let n: i64 = line[1..].parse().context("bulk length")?;
                if n < 0 {
                    return Ok(None);
                }
                Ok(Some(self.read_bytes(n as usize).await?))
            }
            _ => bail!("unexpected redis reply {line:?}"),
        }
    }
}

/// Connects a producer and selects its queue.
async fn producer_conn(target: Target, addr: &str, queue: &str) -> anyhow::Result<Conn> {
    let mut c = Conn::connect(addr).await?;
    if target == Target::Beanstalkd {
        c.bs_command(&format!("use {queue}"), "USING").await?;
    }
    Ok(c)
}

/// Publishes like the Squall producer: up to `window` requests in flight, optionally
/// on a fixed schedule, recording confirm latency per message.
pub(crate) async fn produce(
    target: Target,
    addr: String,
    queue: String,
    shared: Arc<Shared>,
    args: BenchArgs,
    started: Instant,
) -> anyhow::Result<Histogram<u64>> {
    let mut c = producer_conn(target, &addr, &queue).await?;
    let mut hist = new_histogram();
    let interval = args
        .rate
        .map(|r| Duration::from_secs_f64(args.producers as f64 / r as f64));
    // Unix time of `started`, so that a scheduled instant maps to the wall clock.
    let epoch_nanos = unix_nanos().saturating_sub(started.elapsed().as_nanos() as u64);
    let mut next_send = started;
    let pacer = interval.map(|iv| super::Pacer::start(started, iv));
    let mut outstanding: VecDeque<(u64, Instant)> = VecDeque::new();
    let mut done = false;
    loop {
        let mut queued = false;
        while !done && outstanding.len() < args.window {
            let now = Instant::now();
            if interval.is_some() && now < next_send {
                break;
            }
            if shared.stop_sending.is_cancelled() || shared.abort.is_cancelled() {
                done = true;
                break;
            }
            let seq = shared.next_seq.fetch_add(1, Relaxed);
            if seq >= shared.total {
                done = true;
                break;
            }
            let scheduled = match interval {
                Some(iv) => {
                    let at = next_send;
                    next_send += iv;
                    at
                }
                None => now,
            };
            let sent = epoch_nanos + scheduled.duration_since(started).as_nanos() as u64;
            let body = payload(seq, sent, args.size);
            match target {
                Target::Beanstalkd => c.bs_put(&body),
                Target::Redis => c.resp(&[b"LPUSH", queue.as_bytes(), &body]),
                Target::Squall => bail!("the Squall target is driven by the client crate"),
            }
            outstanding.push_back((seq, scheduled));
            queued = true;
        }
        if queued {
            c.flush().await?;
        }
        let Some((seq, scheduled)) = outstanding.pop_front() else {
            if done {
                break;
            }
            super::wait_until(pacer.as_ref(), next_send).await;
            continue;
        };
        match target {
            Target::Beanstalkd => {
                let line = c.read_line().await?;
                if !line.starts_with("INSERTED") {
                    bail!("beanstalkd refused a put: {line}");
                }
            }
            _ => {
                c.resp_reply().await?;
            }
        }
        hist.saturating_record((scheduled.elapsed().as_micros() as u64).max(1));
        shared.confirmed.set(seq);
        shared.confirmed_count.fetch_add(1, Relaxed);
    }
    if shared.producers_left.fetch_sub(1, Relaxed) == 1 {
        shared.progress.notify_waiters();
    }
    Ok(hist)
}

/// Takes up to `prefetch` tasks per round trip (pipelined non-blocking takes), records
/// them, and settles them all pipelined (delete / LREM), until the run completes. When
/// the queue is empty it blocks for at most a second on one take.
pub(crate) async fn consume(
    target: Target,
    addr: String,
    queue: String,
    shared: Arc<Shared>,
    prefetch: u32,
) -> anyhow::Result<Histogram<u64>> {
    let mut c = Conn::connect(&addr).await?;
    let processing = format!("{queue}:processing");
    if target == Target::Beanstalkd {
        c.bs_command(&format!("watch {queue}"), "WATCHING").await?;
        c.bs_command("ignore default", "WATCHING").await?;
    }
    let mut hist = new_histogram();
    let mut taken: Vec<(String, Vec<u8>)> = Vec::new();
    while !shared.complete() && !shared.abort.is_cancelled() {
        taken.clear();
        for _ in 0..prefetch.max(1) {
            take(&mut c, target, &queue, &processing, false);
        }
        c.flush().await?;
        for _ in 0..prefetch.max(1) {
            if let Some(t) = read_taken(&mut c, target).await? {
                taken.push(t);
            }
        }
        if taken.is_empty() {
            take(&mut c, target, &queue, &processing, true);
            c.flush().await?;
            if let Some(t) = read_taken(&mut c, target).await? {
                taken.push(t);
            }
        }
        for (id, body) in &taken {
            record_delivery(&shared, &mut hist, body);
            match target {
                Target::Beanstalkd => {
                    c.out.put_slice(format!("delete {id}\r\n").as_bytes());
                }
                _ => c.resp(&[b"LREM", processing.as_bytes(), b"1", body]),
            }
        }
        c.flush().await?;
        for _ in 0..taken.len() {
            match target {
                Target::Beanstalkd => {
                    let line = c.read_line().await?;
                    if !line.starts_with("DELETED") {
                        bail!("beanstalkd answered {line:?} to delete");
                    }
                }
                _ => {
                    c.resp_reply().await?;
                }
            }
        }
    }
    Ok(hist)
}

/// Queues one take: non-blocking, or blocking for up to a second.
fn take(c: &mut Conn, target: Target, queue: &str, processing: &str, block: bool) {
    match (target, block) {
        (Target::Beanstalkd, false) => c.out.put_slice(b"reserve-with-timeout 0\r\n"),
        (Target::Beanstalkd, true) => c.out.put_slice(b"reserve-with-timeout 1\r\n"),
        (_, false) => c.resp(&[
            b"LMOVE",
            queue.as_bytes(),
            processing.as_bytes(),
            b"RIGHT",
            b"LEFT",
        ]),
        (_, true) => c.resp(&[
            b"BLMOVE",
            queue.as_bytes(),
            processing.as_bytes(),
            b"RIGHT",
            b"LEFT",
            b"1",
        ]),
    }
}

/// Reads the answer to one take: the task's id (beanstalkd) and body, or None if empty.
async fn read_taken(c: &mut Conn, target: Target) -> anyhow::Result<Option<(String, Vec<u8>)>> {
    if target != Target::Beanstalkd {
        return Ok(c.resp_reply().await?.map(|body| (String::new(), body)));
    }
    let line = c.read_line().await?.to_owned();
    if line.starts_with("TIMED_OUT") || line.starts_with("DEADLINE_SOON") {
        return Ok(None);
    }
    let mut parts = line.split_whitespace();
    let (Some("RESERVED"), Some(id), Some(len)) = (parts.next(), parts.next(), parts.next()) else {
        bail!("beanstalkd answered {line:?} to reserve");
    };
    let len: usize = len.parse().context("job size")?;
    let body = c.read_bytes(len).await?;
    Ok(Some((id.to_owned(), body)))
}
