//! beanstalkd driven as its users drive it at their best, through a minimal pipelined
//! client (no maintained async crate exists): a producer keeps `--window` `put`s in
//! flight on one connection; a worker sends one batch's `delete`s in the same write as
//! the next batch's non-blocking reserves (`reserve-with-timeout 0`), and blocks
//! (`reserve-with-timeout 1`) only when its tube is empty.

use std::collections::VecDeque;
use std::future::Future;

use anyhow::{bail, Context};
use bytes::Bytes;
use futures_util::StreamExt;
use squall_loadgen::{BoxError, Consumer, Publisher};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_util::codec::{FramedRead, LinesCodec};

/// Priority 0, no delay, 120 s time-to-run: `put` arguments before the size.
const PUT_ARGS: &str = "0 0 120";

async fn connect(addr: &str) -> anyhow::Result<(OwnedReadHalf, OwnedWriteHalf)> {
    let s = TcpStream::connect(addr)
        .await
        .with_context(|| format!("cannot connect to beanstalkd at {addr}"))?;
    s.set_nodelay(true)?;
    Ok(s.into_split())
}

/// Some `put`s written together, and who waits for their `INSERTED` answers.
struct Puts {
    bytes: Vec<u8>,
    count: usize,
    done: oneshot::Sender<Result<(), String>>,
}

/// One producer: a task owns the connection, writes each batch of `put`s as it comes
/// and matches the answers, in order, to the batches waiting for them.
pub struct Producer {
    puts: mpsc::UnboundedSender<Puts>,
    task: JoinHandle<()>,
}

impl Producer {
    pub async fn connect(addr: &str, tube: &str) -> anyhow::Result<Producer> {
        let (rd, mut wr) = connect(addr).await?;
        let mut lines = FramedRead::new(rd, LinesCodec::new_with_max_length(4096));
        wr.write_all(format!("use {tube}\r\n").as_bytes()).await?;
        match lines.next().await {
            Some(Ok(l)) if l.starts_with("USING") => {}
            other => bail!("beanstalkd answered {other:?} to use"),
        }
        let (puts, rx) = mpsc::unbounded_channel();
        let task = tokio::spawn(pipeline(lines, wr, rx));
        Ok(Producer { puts, task })
    }
}

/// Writes queued puts and settles them as `INSERTED` lines come back, until the
/// producer is closed or the connection fails (which fails every waiting batch).
async fn pipeline(
    mut lines: FramedRead<OwnedReadHalf, LinesCodec>,
    mut wr: OwnedWriteHalf,
    mut rx: mpsc::UnboundedReceiver<Puts>,
) {
    let mut waiting: VecDeque<(usize, oneshot::Sender<Result<(), String>>)> = VecDeque::new();
    let mut out = Vec::new();
    let failure = loop {
        tokio::select! {
            puts = rx.recv() => {
                let Some(mut puts) = puts else { break None };
                out.clear();
                loop {
                    out.append(&mut puts.bytes);
                    waiting.push_back((puts.count, puts.done));
                    match rx.try_recv() {
                        Ok(more) => puts = more,
                        Err(_) => break,
                    }
                }
                if let Err(e) = wr.write_all(&out).await {
                    break Some(format!("write: {e}"));
                }
            }
            line = lines.next(), if !waiting.is_empty() => match line {
                Some(Ok(l)) if l.starts_with("INSERTED") => {
                    if let Some(front) = waiting.front_mut() {
                        front.0 -= 1;
                        if front.0 == 0 {
                            if let Some((_, done)) = waiting.pop_front() {
                                let _ = done.send(Ok(()));
                            }
                        }
                    }
                }
                Some(Ok(l)) => break Some(format!("beanstalkd answered {l:?} to put")),
                Some(Err(e)) => break Some(format!("read: {e}")),
                None => break Some("beanstalkd closed the connection".into()),
            },
        }
    };
    if let Some(why) = failure {
        for (_, done) in waiting {
            let _ = done.send(Err(why.clone()));
        }
    }
}

impl Publisher for Producer {
    fn publish(
        &self,
        payloads: Vec<Bytes>,
    ) -> impl Future<Output = Result<(), BoxError>> + Send + 'static {
        let mut bytes = Vec::new();
        for p in &payloads {
            bytes.extend_from_slice(format!("put {PUT_ARGS} {}\r\n", p.len()).as_bytes());
            bytes.extend_from_slice(p);
            bytes.extend_from_slice(b"\r\n");
        }
        let (done, answer) = oneshot::channel();
        let queued = self.puts.send(Puts {
            bytes,
            count: payloads.len(),
            done,
        });
        async move {
            queued.map_err(|_| "the producer's connection task has ended")?;
            answer
                .await
                .map_err(|_| "the producer's connection task has ended")??;
            Ok(())
        }
    }

    async fn close(self) {
        drop(self.puts);
        let _ = self.task.await;
    }
}

/// One worker: its connection, watching only its tube, and its view of the run.
pub struct Worker {
    rd: BufReader<OwnedReadHalf>,
    wr: OwnedWriteHalf,
    out: Vec<u8>,
    line: String,
    consumer: Consumer,
}

impl Worker {
    pub async fn connect(addr: &str, consumer: Consumer) -> anyhow::Result<Worker> {
        let (rd, wr) = connect(addr).await?;
        let mut w = Worker {
            rd: BufReader::with_capacity(64 * 1024, rd),
            wr,
            out: Vec::with_capacity(64 * 1024),
            line: String::new(),
            consumer,
        };
        let watch = format!("watch {}\r\n", w.consumer.queue);
        w.command(&watch, "WATCHING").await?;
        w.command("ignore default\r\n", "WATCHING").await?;
        Ok(w)
    }

    async fn command(&mut self, cmd: &str, expect: &str) -> anyhow::Result<()> {
        self.wr.write_all(cmd.as_bytes()).await?;
        let line = self.read_line().await?;
        if !line.starts_with(expect) {
            bail!("beanstalkd answered {line:?} to {cmd:?}");
        }
        Ok(())
    }

    async fn read_line(&mut self) -> anyhow::Result<&str> {
        self.line.clear();
        if self.rd.read_line(&mut self.line).await? == 0 {
            bail!("beanstalkd closed the connection");
        }
        Ok(self.line.trim_end())
    }

    /// Reserves, records and deletes until the run is over; the last batch's deletes
    /// go in a write of their own.
    pub async fn run(mut self) -> Result<Consumer, BoxError> {
        let take = self.consumer.prefetch;
        let mut acks: Vec<u64> = Vec::new();
        while !self.consumer.finished() {
            let mut taken = self.delete_and_reserve(&acks, take, 0).await?;
            if taken.is_empty() {
                taken = self.delete_and_reserve(&[], 1, 1).await?;
            }
            acks.clear();
            for (id, body) in &taken {
                self.consumer.record(body);
                acks.push(*id);
            }
        }
        self.delete_and_reserve(&acks, 0, 0).await?;
        Ok(self.consumer)
    }

    /// One round trip: `delete` each of `acks`, then `take` reserves that wait up to
    /// `timeout_s` seconds each, in one write. Returns the reserved jobs (id, body).
    pub async fn delete_and_reserve(
        &mut self,
        acks: &[u64],
        take: u32,
        timeout_s: u32,
    ) -> anyhow::Result<Vec<(u64, Vec<u8>)>> {
        self.out.clear();
        for id in acks {
            self.out
                .extend_from_slice(format!("delete {id}\r\n").as_bytes());
        }
        for _ in 0..take {
            self.out
                .extend_from_slice(format!("reserve-with-timeout {timeout_s}\r\n").as_bytes());
        }
        if self.out.is_empty() {
            return Ok(Vec::new());
        }
        self.wr.write_all(&self.out).await?;
        for id in acks {
            let line = self.read_line().await?;
            if !line.starts_with("DELETED") {
                bail!("beanstalkd answered {line:?} to delete {id}");
            }
        }
        let mut taken = Vec::new();
        for _ in 0..take {
            if let Some(job) = self.read_reserved().await? {
                taken.push(job);
            }
        }
        Ok(taken)
    }

    /// Reads the answer to one reserve: the job, or None if none was ready in time.
    async fn read_reserved(&mut self) -> anyhow::Result<Option<(u64, Vec<u8>)>> {
        let line = self.read_line().await?;
        if line.starts_with("TIMED_OUT") || line.starts_with("DEADLINE_SOON") {
            return Ok(None);
        }
        let mut parts = line.split_whitespace();
        let (Some("RESERVED"), Some(id), Some(len)) = (parts.next(), parts.next(), parts.next())
        else {
            bail!("beanstalkd answered {line:?} to reserve");
        };
        let id: u64 = id.parse().context("job id")?;
        let len: usize = len.parse().context("job size")?;
        let mut body = vec![0; len + 2];
        self.rd.read_exact(&mut body).await?;
        body.truncate(len);
        Ok(Some((id, body)))
    }
}
