//! `squall consume`: subscribes to a queue and prints each task as it arrives, then
//! settles it (ack by default, or nack / fail to exercise the failure paths).

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::time::UNIX_EPOCH;

use base64::Engine as _;
use clap::Args;
use serde::Serialize;
use squall_client::Delivery;

use super::{connect_for, ServerArgs};

/// Consume tasks from a queue.
#[derive(Debug, Args)]
pub struct ConsumeArgs {
    #[command(flatten)]
    server: ServerArgs,
    /// Queue name.
    queue: String,
    /// Stop after this many tasks.
    #[arg(long)]
    count: Option<u64>,
    /// Deliveries held at once (credit).
    #[arg(long, default_value_t = 16)]
    prefetch: u32,
    /// Nack each task (it is retried after the queue's backoff) instead of acking.
    #[arg(long, conflicts_with = "fail")]
    nack: bool,
    /// Fail each task with this reason: it goes to the dead set at once.
    #[arg(long, value_name = "REASON")]
    fail: Option<String>,
    /// One JSON object per task instead of text.
    #[arg(long)]
    json: bool,
}

/// One task as `--json` prints it.
#[derive(Debug, Serialize)]
struct TaskJson<'a> {
    id: u64,
    queue: &'a str,
    attempt: u32,
    max_attempts: u32,
    priority: i32,
    created_at_ms: u64,
    /// UTF-8 text, or base64 when `payload_encoding` is "base64".
    payload: String,
    payload_encoding: &'static str,
    /// Values as UTF-8 text, or `base64:<data>` when they are not UTF-8.
    headers: BTreeMap<&'a str, String>,
}

pub(super) fn text_or_base64(bytes: &[u8]) -> (String, &'static str) {
    match std::str::from_utf8(bytes) {
        Ok(s) => (s.to_owned(), "utf8"),
        Err(_) => (
            base64::engine::general_purpose::STANDARD.encode(bytes),
            "base64",
        ),
    }
}

pub(super) fn header_value(bytes: &[u8]) -> String {
    match text_or_base64(bytes) {
        (s, "utf8") => s,
        (s, _) => format!("base64:{s}"),
    }
}

fn render(d: &Delivery, json: bool) -> String {
    let (payload, payload_encoding) = text_or_base64(d.payload());
    let headers: BTreeMap<&str, String> = d
        .headers()
        .iter()
        .map(|(k, v)| (k.as_str(), header_value(v)))
        .collect();
    if json {
        let created_at_ms = d
            .created_at()
            .duration_since(UNIX_EPOCH)
            .map(|x| x.as_millis() as u64)
            .unwrap_or(0);
        let t = TaskJson {
            id: d.id(),
            queue: d.queue(),
            attempt: d.attempt(),
            max_attempts: d.max_attempts(),
            priority: d.priority(),
            created_at_ms,
            payload,
            payload_encoding,
            headers,
        };
        return serde_json::to_string(&t).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"));
    }
    let mut line = format!(
        "task {} (attempt {}/{}): ",
        d.id(),
        d.attempt(),
        d.max_attempts()
    );
    if payload_encoding == "base64" {
        line.push_str("base64:");
    }
    line.push_str(&payload);
    if !headers.is_empty() {
        let h: Vec<String> = headers.iter().map(|(k, v)| format!("{k}={v}")).collect();
        line.push_str(&format!("  [{}]", h.join(", ")));
    }
    line
}

/// Exit code after the first SIGINT (128 + 2, as a shell reports a Ctrl-C).
const EXIT_INTERRUPTED: u8 = 130;
/// Exit code after SIGTERM (128 + 15).
const EXIT_TERMINATED: u8 = 143;
/// Exit code when standard output was closed (128 + SIGPIPE, what a shell reports for a
/// program stopped by a closed pipe); nothing is printed about it.
const EXIT_BROKEN_PIPE: u8 = 141;

/// Why the consume loop stopped early.
enum Stop {
    Signal(u8),
    BrokenPipe,
}

/// SIGINT and SIGTERM, listened to from start-up on, so that a signal that arrives
/// while a task is being printed or settled is still seen at the next step.
struct Signals {
    int: tokio::signal::unix::Signal,
    term: tokio::signal::unix::Signal,
}

impl Signals {
    fn new() -> anyhow::Result<Signals> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(Signals {
            int: signal(SignalKind::interrupt())?,
            term: signal(SignalKind::terminate())?,
        })
    }

    /// The exit code for the next signal.
    async fn recv(&mut self) -> u8 {
        tokio::select! {
            _ = self.int.recv() => EXIT_INTERRUPTED,
            _ = self.term.recv() => EXIT_TERMINATED,
        }
    }
}

/// Writes one line to standard output and flushes it, so that a closed pipe shows up
/// on the task it concerns.
fn print_line(line: &str) -> std::io::Result<()> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    out.write_all(line.as_bytes())?;
    out.write_all(b"\n")?;
    out.flush()
}

/// Settles a printed task as asked and says on standard error what that did, unless
/// it is a plain ack.
async fn settle(args: &ConsumeArgs, delivery: Delivery) -> anyhow::Result<()> {
    let (id, attempt, max) = (delivery.id(), delivery.attempt(), delivery.max_attempts());
    let last = delivery.is_last_attempt();
    if args.nack {
        delivery.nack().await?;
        if last {
            eprintln!(
                "task {id} nacked on its last attempt ({attempt}/{max}): moved to the dead set"
            );
        } else {
            eprintln!(
                "task {id} nacked: retried after the queue's backoff (attempt {attempt} of {})",
                max_text(max)
            );
        }
    } else if let Some(reason) = &args.fail {
        delivery.fail(reason.clone()).await?;
        eprintln!("task {id} failed: moved to the dead set (reason: {reason})");
    } else {
        delivery.ack().await?;
    }
    Ok(())
}

fn max_text(max: u32) -> String {
    if max == 0 {
        "unlimited".to_owned()
    } else {
        max.to_string()
    }
}

/// Tells an operator at a terminal what `consume` is waiting for, and that
/// subscribing created the queue when it did not exist.
async fn announce(client: &squall_client::Client, queue: &str) {
    use std::io::IsTerminal;
    let missing = matches!(
        client.queue(queue).await,
        Err(ref e) if e.code() == Some(squall_client::ErrorCode::NotFound)
    );
    if missing {
        let mut known: Vec<String> = client
            .queues()
            .await
            .map(|qs| qs.into_iter().map(|q| q.name).collect())
            .unwrap_or_default();
        known.truncate(20);
        let known = if known.is_empty() {
            String::new()
        } else {
            format!(" (queues that exist: {})", known.join(", "))
        };
        eprintln!(
            "note: queue {queue} did not exist{known}; subscribing created it, empty \
             (`squall delete-queue {queue}` removes it)"
        );
    }
    if std::io::stderr().is_terminal() {
        eprintln!("waiting for tasks on {queue} … (Ctrl-C to stop)");
    }
}

pub async fn run(args: ConsumeArgs) -> anyhow::Result<ExitCode> {
    let mut signals = Signals::new()?;
    let client = connect_for(&args.server, "squall-consume", &args.queue).await?;
    announce(&client, &args.queue).await;
    let subscribe = client
        .subscribe(args.queue.clone())
        // Never hold more than will be printed.
        .prefetch(match args.count {
            Some(n) => args.prefetch.min(n.clamp(1, u64::from(u32::MAX)) as u32),
            None => args.prefetch,
        });
    let mut sub = tokio::select! {
        biased;
        code = signals.recv() => return Ok(ExitCode::from(code)),
        sub = subscribe => sub?,
    };
    let mut done = 0u64;
    let stop = loop {
        if args.count.is_some_and(|n| done >= n) {
            break None;
        }
        let next = tokio::select! {
            biased;
            code = signals.recv() => break Some(Stop::Signal(code)),
            d = sub.recv() => d,
        };
        let Some(delivery) = next else {
            anyhow::bail!("the subscription ended");
        };
        let delivery = delivery?;
        if args.count.is_some_and(|n| done + 1 >= n) {
            // The last one: stop the credit before settling it, or the broker sends
            // one more task that would never be shown.
            sub.unsubscribe().await?;
        }
        if let Err(e) = print_line(&render(&delivery, args.json)) {
            // Never shown: it goes back as it came, without an attempt.
            let released = delivery.release_unseen().await;
            if e.kind() == std::io::ErrorKind::BrokenPipe {
                break Some(Stop::BrokenPipe);
            }
            released?;
            return Err(anyhow::anyhow!("cannot write to standard output: {e}"));
        }
        settle(&args, delivery).await?;
        done += 1;
    };
    // Deliveries buffered but never printed go back without an attempt. A second
    // signal meanwhile stops at once (the connection's close then releases them).
    let code = tokio::select! {
        biased;
        code = signals.recv() => Some(code),
        released = sub.stop_and_release() => {
            released?;
            None
        }
    };
    client.close().await;
    Ok(match (code, stop) {
        (Some(code), _) | (None, Some(Stop::Signal(code))) => ExitCode::from(code),
        (None, Some(Stop::BrokenPipe)) => ExitCode::from(EXIT_BROKEN_PIPE),
        (None, None) => ExitCode::SUCCESS,
    })
}
