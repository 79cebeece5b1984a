//! `squall publish`: sends one task (argument or `--file`) or one task per standard-input
//! line, and prints each task id once the broker confirms it durable.

use std::io::BufRead;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use bytes::Bytes;
use clap::Args;
use squall_client::{Message, PublishOptions};

use super::{connect_for, parse_duration, parse_header, Exit, ServerArgs, EXIT_USAGE};

/// Lines sent per publish request when reading standard input.
const STDIN_BATCH: usize = 500;

/// Publish tasks to a queue.
#[derive(Debug, Args)]
pub struct PublishArgs {
    #[command(flatten)]
    server: ServerArgs,
    /// Queue name.
    queue: String,
    /// Payload. Without it (and without --file), each line of standard input is a task.
    payload: Option<String>,
    /// Read the payload of one task from this file.
    #[arg(long, conflicts_with = "payload")]
    file: Option<PathBuf>,
    /// Priority: higher is delivered first.
    #[arg(long, default_value_t = 0, allow_negative_numbers = true)]
    priority: i32,
    /// Do not deliver before this delay, e.g. 30s.
    #[arg(long, value_parser = parse_duration)]
    delay: Option<Duration>,
    /// Deliveries before the task is dead (default: the queue's).
    #[arg(long)]
    max_attempts: Option<u32>,
    /// Lease of each delivery (default: the queue's), e.g. 10s.
    #[arg(long, value_parser = parse_duration)]
    lease: Option<Duration>,
    /// Not delivered at all unless started within this time, e.g. 10m: an unstarted
    /// task then goes to the dead set with reason `expired` (or is dropped, per the
    /// queue's --drop-expired).
    #[arg(long, value_parser = parse_duration)]
    expires_in: Option<Duration>,
    /// Header `name=value`; repeatable.
    #[arg(long = "header", value_parser = parse_header)]
    headers: Vec<(String, String)>,
    /// Idempotency key: publishing again with the same key (same queue, within the
    /// queue's dedup window) prints the first task's id instead of creating another.
    /// Needs a payload argument or --file.
    #[arg(long)]
    key: Option<String>,
}

impl PublishArgs {
    fn options(&self) -> PublishOptions {
        let mut o = PublishOptions::new().priority(self.priority);
        if let Some(d) = self.delay {
            o = o.delay(d);
        }
        if let Some(n) = self.max_attempts {
            o = o.max_attempts(n);
        }
        if let Some(l) = self.lease {
            o = o.lease(l);
        }
        if let Some(e) = self.expires_in {
            o = o.expires_in(e);
        }
        for (k, v) in &self.headers {
            o = o.header(k.clone(), Bytes::from(v.clone()));
        }
        if let Some(key) = &self.key {
            o = o.idempotency_key(key.clone());
        }
        o
    }
}

pub async fn run(args: PublishArgs) -> anyhow::Result<ExitCode> {
    if args.key.is_some() && args.payload.is_none() && args.file.is_none() {
        return Err(Exit {
            code: EXIT_USAGE,
            message: "--key names one task: give the payload as an argument or with --file, \
                      not on standard input"
                .into(),
        }
        .into());
    }
    let client = connect_for(&args.server, "squall-publish", &args.queue).await?;
    let options = args.options();
    let single = match (&args.payload, &args.file) {
        (Some(p), _) => Some(Bytes::from(p.clone())),
        (None, Some(f)) => {
            Some(Bytes::from(std::fs::read(f).map_err(|e| {
                anyhow::anyhow!("cannot read {}: {e}", f.display())
            })?))
        }
        (None, None) => None,
    };
    if let Some(payload) = single {
        let published = client.publish_with(&args.queue, payload, options).await?;
        println!("{}", published.id);
        if published.duplicate {
            eprintln!(
                "task {} was already published with this key; nothing new was stored",
                published.id
            );
        }
        return Ok(ExitCode::SUCCESS);
    }
    let stdin = std::io::stdin();
    let mut lines = stdin.lock().lines();
    let mut published = 0usize;
    loop {
        let mut batch = Vec::with_capacity(STDIN_BATCH);
        for line in lines.by_ref() {
            let line = line.map_err(|e| anyhow::anyhow!("cannot read standard input: {e}"))?;
            if line.is_empty() {
                continue;
            }
            batch.push(Message::new(args.queue.clone(), line).with_options(options.clone()));
            if batch.len() == STDIN_BATCH {
                break;
            }
        }
        if batch.is_empty() {
            if published == 0 {
                eprintln!(
                    "standard input held no task (one task per non-empty line): nothing was published"
                );
            }
            return Ok(ExitCode::SUCCESS);
        }
        for p in client.publish_batch(batch).await? {
            println!("{}", p.id);
            published += 1;
        }
    }
}
