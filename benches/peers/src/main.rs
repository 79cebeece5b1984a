//! `squall-peers`: drives another broker with the same workload as `squall bench` (the
//! shared `squall-loadgen` crate), for the side-by-side comparison in
//! `benches/compare.sh`. Each peer is driven the way its own users drive it at their
//! best: Redis through the `redis` crate (`redis_list.rs`), beanstalkd through a small
//! pipelined client (`beanstalkd.rs`). Not part of the shipped `squall` binary.

mod beanstalkd;
mod redis_list;
#[cfg(test)]
mod tests;

use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, ValueEnum};
use squall_loadgen::{LoadArgs, Outcome, Report, Run};

/// Drive Redis or beanstalkd with squall bench's workload and print the same report.
#[derive(Debug, Parser)]
#[command(name = "squall-peers", version)]
struct Args {
    /// Which broker listens at --server.
    #[arg(long, value_enum)]
    target: Target,
    /// The broker's address, HOST:PORT.
    #[arg(long)]
    server: String,
    /// The broker's process id: its CPU time over the run (from /proc/PID/stat) goes
    /// into the report.
    #[arg(long)]
    broker_pid: Option<u32>,
    #[command(flatten)]
    load: LoadArgs,
}

/// The brokers this tool drives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Target {
    /// Redis lists, reliable-queue pattern: LPUSH; LMOVE to a processing list; LREM.
    Redis,
    /// beanstalkd: put; reserve; delete (tube = queue).
    Beanstalkd,
}

impl Target {
    fn name(self) -> &'static str {
        match self {
            Target::Redis => "redis",
            Target::Beanstalkd => "beanstalkd",
        }
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(run(args)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(1)
        }
    }
}

async fn run(args: Args) -> anyhow::Result<ExitCode> {
    let cpu_before = args.broker_pid.and_then(squall_loadgen::cpu_time);
    let outcome = drive(&args).await?;
    let cpu = match (
        args.broker_pid.and_then(squall_loadgen::cpu_time),
        cpu_before,
    ) {
        (Some(after), Some(before)) => Some(after.saturating_sub(before)),
        _ => None,
    };
    let report = Report::new(&args.load, args.target.name(), &args.server, &outcome, cpu);
    report.print(args.load.json)?;
    Ok(outcome.exit_code())
}

/// Connects every consumer (first, so nothing waits for a subscriber) and producer.
async fn drive(args: &Args) -> anyhow::Result<Outcome> {
    let run = Run::new(&args.load)?;
    let addr = args.server.as_str();
    let (n_consumers, n_producers) = (args.load.consumers, args.load.producers);
    let outcome = match args.target {
        Target::Redis => {
            let client = redis_list::client(addr)?;
            let mut consumers = Vec::new();
            for i in 0..n_consumers {
                let c = redis_list::ReliableConsumer::connect(&client, run.consumer(i)).await?;
                consumers.push(c.run());
            }
            let mut producers = Vec::new();
            for i in 0..n_producers {
                producers.push(redis_list::Producer::connect(&client, run.queue(i)).await?);
            }
            run.drive(consumers, producers).await
        }
        Target::Beanstalkd => {
            let mut consumers = Vec::new();
            for i in 0..n_consumers {
                let c = beanstalkd::Worker::connect(addr, run.consumer(i)).await?;
                consumers.push(c.run());
            }
            let mut producers = Vec::new();
            for i in 0..n_producers {
                producers.push(beanstalkd::Producer::connect(addr, run.queue(i)).await?);
            }
            run.drive(consumers, producers).await
        }
    };
    outcome.with_context(|| format!("{} at {addr}", args.target.name()))
}
