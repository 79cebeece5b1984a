//! `squall bench`: drives a Squall broker through the client crate with the load
//! generator of `squall-loadgen` (window of publishes, fixed rate, verified delivery,
//! end-to-end latency). The broker under test can be started by the bench itself
//! (`--spawn`). Other brokers' clients are not here: they live in the comparison tool
//! under `benches/peers`, which shares the same load generator.

mod spawn;

use std::collections::VecDeque;
use std::process::ExitCode;

use anyhow::Context;
use bytes::Bytes;
use clap::Args;

use squall_client::{Client, Message, Settlement};
use squall_loadgen::{BoxError, Consumer, LoadArgs, Publisher, Report, Run};

use super::ServerArgs;

/// Benchmark a broker: throughput, publish-confirm and end-to-end latency, loss.
#[derive(Debug, Clone, Args)]
pub struct BenchArgs {
    #[command(flatten)]
    server: ServerArgs,
    /// Start a broker on a temporary directory for the run (ignores --server).
    #[arg(long)]
    spawn: bool,
    /// Durability mode of the spawned broker.
    #[arg(long, default_value = "always", requires = "spawn")]
    fsync: String,
    /// The process id of a broker started elsewhere (Linux): its CPU time over the run
    /// (from /proc/PID/stat) goes into the report, as for a spawned one.
    #[arg(long, conflicts_with = "spawn")]
    broker_pid: Option<u32>,
    #[command(flatten)]
    load: LoadArgs,
}

pub async fn run(args: BenchArgs) -> anyhow::Result<ExitCode> {
    args.load.check()?;
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
    let cpu_time = || match &broker {
        Some(b) => b.cpu_time(),
        None => args.broker_pid.and_then(squall_loadgen::cpu_time),
    };
    let cpu_before = cpu_time();
    let outcome = drive(&args, &addr).await;
    let cpu = cpu_before.and_then(|before| cpu_time().map(|after| after.saturating_sub(before)));
    if let Some(b) = broker {
        b.stop().await;
    }
    let outcome = outcome?;
    let server = match args.spawn {
        true => format!("{addr} (spawned, --fsync {})", args.fsync),
        false => addr,
    };
    let report = Report::new(&args.load, "squall", &server, &outcome, cpu);
    report.print(args.load.json)?;
    Ok(outcome.exit_code())
}

async fn drive(args: &BenchArgs, addr: &str) -> anyhow::Result<squall_loadgen::Outcome> {
    let run = Run::new(&args.load)?;
    // A spawned broker is plain and open; an external one may want a token and TLS.
    let connect = |name: String| {
        let addr = addr.to_owned();
        let builder = match args.spawn {
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
    for i in 0..args.load.consumers {
        let client = connect(format!("bench-consumer-{i}")).await?;
        let consumer = run.consumer(i);
        let sub = client
            .subscribe(consumer.queue.clone())
            .prefetch(consumer.prefetch)
            .await
            .context("subscribe")?;
        consumers.push(consume(client, sub, consumer));
    }
    let mut producers = Vec::new();
    for i in 0..args.load.producers {
        producers.push(SquallPublisher {
            client: connect(format!("bench-producer-{i}")).await?,
            queue: run.queue(i).to_owned(),
        });
    }
    Ok(run.drive(consumers, producers).await?)
}

/// A producer's client and the queue it publishes to.
struct SquallPublisher {
    client: Client,
    queue: String,
}

impl Publisher for SquallPublisher {
    fn publish(
        &self,
        payloads: Vec<Bytes>,
    ) -> impl std::future::Future<Output = Result<(), BoxError>> + Send + 'static {
        let client = self.client.clone();
        let messages: Vec<Message> = payloads
            .into_iter()
            .map(|p| Message::new(self.queue.clone(), p))
            .collect();
        async move {
            client.publish_batch(messages).await?;
            Ok(())
        }
    }

    async fn close(self) {
        self.client.close().await;
    }
}

/// Receives under the subscription's prefetch and acks every message, the acks in
/// flight while it receives (`Delivery::ack_now`: sent at once, their confirmations
/// collected as they come, oldest first: the broker confirms a connection's acks in
/// order), until the run is over. An ack whose lease is gone (the connection dropped,
/// the leader of a cluster changed) is not an error of the run: the broker delivers
/// the task again, and the run counts it as a duplicate.
async fn consume(
    client: Client,
    mut sub: squall_client::Subscription,
    mut consumer: Consumer,
) -> Result<Consumer, BoxError> {
    let mut acks: VecDeque<Settlement> = VecDeque::new();
    while !consumer.finished() {
        tokio::select! {
            biased;
            r = async { acks.front_mut().expect("not empty").await }, if !acks.is_empty() => {
                acks.pop_front();
                settled(r)?;
            }
            d = sub.recv() => {
                let d = d.ok_or("the subscription ended")??;
                consumer.record(d.payload());
                acks.push_back(d.ack_now());
            }
            _ = consumer.changed() => {}
        }
    }
    for ack in acks {
        settled(ack.await)?;
    }
    client.close().await;
    Ok(consumer)
}

/// An ack's outcome: `Ok` also when the lease is gone and the task comes back.
fn settled(r: squall_client::Result<()>) -> squall_client::Result<()> {
    use squall_client::ClientError as E;
    match r {
        Err(
            e @ (E::LeaseExpired { .. }
            | E::ConnectionLost { .. }
            | E::Timeout { .. }
            | E::Server {
                code: squall_client::ErrorCode::NotLeader,
                ..
            }),
        ) => {
            tracing::debug!(error = %e, "ack not confirmed: the task will be delivered again");
            Ok(())
        }
        other => other,
    }
}
