//! Redis as a reliable queue, driven through the `redis` crate the way a well-written
//! worker drives it: a producer keeps `--window` `LPUSH`es in flight on one multiplexed
//! connection; a consumer moves messages with `LMOVE` into its own processing list and
//! acknowledges each with `LREM`, sending one batch's `LREM`s in the same pipeline as the
//! next batch's `LMOVE`s, and blocks (`BLMOVE`) only when the queue is empty.

use std::future::Future;

use anyhow::Context;
use bytes::Bytes;
use redis::aio::MultiplexedConnection;
use redis::Value;
use squall_loadgen::{BoxError, Consumer, Publisher};

/// How long one blocking take waits when the queue is empty, in seconds.
const BLOCK_SECONDS: f64 = 0.5;

/// A client for the Redis at `addr` (HOST:PORT); connections come from it.
pub fn client(addr: &str) -> anyhow::Result<redis::Client> {
    redis::Client::open(format!("redis://{addr}/")).context("redis address")
}

async fn connect(client: &redis::Client) -> anyhow::Result<MultiplexedConnection> {
    client
        .get_multiplexed_async_connection()
        .await
        .context("cannot connect to redis")
}

/// One producer's connection and its list.
pub struct Producer {
    conn: MultiplexedConnection,
    queue: String,
}

impl Producer {
    pub async fn connect(client: &redis::Client, queue: &str) -> anyhow::Result<Producer> {
        Ok(Producer {
            conn: connect(client).await?,
            queue: queue.to_owned(),
        })
    }
}

impl Publisher for Producer {
    fn publish(
        &self,
        payloads: Vec<Bytes>,
    ) -> impl Future<Output = Result<(), BoxError>> + Send + 'static {
        let mut conn = self.conn.clone();
        let mut cmd = redis::cmd("LPUSH");
        cmd.arg(&self.queue);
        for p in &payloads {
            cmd.arg(&p[..]);
        }
        async move {
            let _len: i64 = cmd.query_async(&mut conn).await?;
            Ok(())
        }
    }

    async fn close(self) {}
}

/// One consumer: its connection, its processing list, its view of the run.
pub struct ReliableConsumer {
    conn: MultiplexedConnection,
    processing: String,
    consumer: Consumer,
}

impl ReliableConsumer {
    pub async fn connect(
        client: &redis::Client,
        consumer: Consumer,
    ) -> anyhow::Result<ReliableConsumer> {
        Ok(ReliableConsumer {
            conn: connect(client).await?,
            processing: processing_list(&consumer.queue, consumer.index),
            consumer,
        })
    }

    /// Takes, records and acknowledges until the run is over; the last batch's acks go
    /// in a pipeline of their own.
    pub async fn run(mut self) -> Result<Consumer, BoxError> {
        let (queue, take) = (self.consumer.queue.clone(), self.consumer.prefetch);
        let mut acks: Vec<Vec<u8>> = Vec::new();
        while !self.consumer.finished() {
            let mut taken =
                ack_and_take(&mut self.conn, &queue, &self.processing, &acks, take).await?;
            if taken.is_empty() {
                taken.extend(take_blocking(&mut self.conn, &queue, &self.processing).await?);
            }
            for body in &taken {
                self.consumer.record(body);
            }
            acks = taken;
        }
        ack_and_take(&mut self.conn, &queue, &self.processing, &acks, 0).await?;
        Ok(self.consumer)
    }
}

/// The processing list of consumer `index` of `queue`: one per consumer, as in the
/// reliable-queue pattern, so an `LREM` scans only that consumer's batch.
pub fn processing_list(queue: &str, index: usize) -> String {
    format!("{queue}:processing:{index}")
}

/// One round trip: `LREM`s acknowledging `acks` (each removed from `processing`), then
/// up to `take` non-blocking `LMOVE`s from `queue` into `processing`, in one pipeline.
/// Returns what was taken (fewer than `take` when the queue ran dry).
pub async fn ack_and_take(
    conn: &mut MultiplexedConnection,
    queue: &str,
    processing: &str,
    acks: &[Vec<u8>],
    take: u32,
) -> anyhow::Result<Vec<Vec<u8>>> {
    if acks.is_empty() && take == 0 {
        return Ok(Vec::new());
    }
    let mut pipe = redis::pipe();
    for body in acks {
        // From the tail: the oldest of the batch is the first found there.
        pipe.cmd("LREM").arg(processing).arg(-1).arg(&body[..]);
    }
    for _ in 0..take {
        pipe.cmd("LMOVE")
            .arg(queue)
            .arg(processing)
            .arg("RIGHT")
            .arg("LEFT");
    }
    let replies: Vec<Value> = pipe.query_async(conn).await.context("LREM + LMOVE")?;
    anyhow::ensure!(
        replies.len() == acks.len() + take as usize,
        "redis answered {} replies to {} commands",
        replies.len(),
        acks.len() + take as usize
    );
    let (acked, taken) = replies.split_at(acks.len());
    for r in acked {
        anyhow::ensure!(
            matches!(r, Value::Int(1)),
            "LREM answered {r:?}: an acknowledged message was not in {processing}"
        );
    }
    let mut bodies = Vec::with_capacity(taken.len());
    for r in taken {
        match r {
            Value::BulkString(b) => bodies.push(b.clone()),
            Value::Nil => {}
            other => anyhow::bail!("LMOVE answered {other:?}"),
        }
    }
    Ok(bodies)
}

/// One `BLMOVE` that waits up to half a second for a message to arrive.
async fn take_blocking(
    conn: &mut MultiplexedConnection,
    queue: &str,
    processing: &str,
) -> anyhow::Result<Option<Vec<u8>>> {
    redis::cmd("BLMOVE")
        .arg(queue)
        .arg(processing)
        .arg("RIGHT")
        .arg("LEFT")
        .arg(BLOCK_SECONDS)
        .query_async(conn)
        .await
        .context("BLMOVE")
}
