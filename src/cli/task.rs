//! `squall task ID`: prints a task's status (state, attempts, lease holder, times,
//! result) as an aligned table or JSON, optionally after waiting for it to finish.

use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use clap::Args;
use serde::Serialize;
use squall_client::{TaskOutcome, TaskState, TaskStatus};

use super::consume::text_or_base64;
use super::{connect, connect_for, parse_duration, Exit, ServerArgs};

/// Exit code when the broker has no record of the task (sysexits EX_NOINPUT).
const EXIT_UNKNOWN: u8 = 66;
/// Width of the label column (the longest label, "lease ends").
const LABEL_WIDTH: usize = 10;
/// Exit code when `--wait` ran out before the task finished (sysexits EX_TEMPFAIL).
const EXIT_TIMED_OUT: u8 = 75;

/// Show a task's status and result.
#[derive(Debug, Args)]
pub struct TaskArgs {
    #[command(flatten)]
    server: ServerArgs,
    /// Task id (as printed by `squall publish`).
    id: u64,
    /// The task's queue. Required with a cluster (`--server a,b,c`): task ids are per
    /// node, and the queue names the node.
    #[arg(long)]
    queue: Option<String>,
    /// Wait up to this long for the task to succeed or die, e.g. 30s. Exits 0 if it
    /// succeeded, 1 if it is dead, 75 if it is still running when the time is up.
    #[arg(long, value_parser = parse_duration)]
    wait: Option<Duration>,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    json: bool,
}

/// A task as `--json` prints it.
#[derive(Debug, Serialize)]
struct TaskJson<'a> {
    id: u64,
    state: &'static str,
    queue: &'a str,
    priority: i32,
    attempts: u32,
    max_attempts: u32,
    last_error: Option<&'a str>,
    lease: Option<LeaseJson<'a>>,
    created_at_ms: Option<u64>,
    updated_at_ms: Option<u64>,
    not_before_ms: Option<u64>,
    /// UTF-8 text, or base64 when `result_encoding` is "base64"; only when succeeded.
    result: Option<String>,
    result_encoding: Option<&'static str>,
    expires_at_ms: Option<u64>,
}

#[derive(Debug, Serialize)]
struct LeaseJson<'a> {
    connection_id: u64,
    consumer: &'a str,
    deadline_ms: Option<u64>,
}

fn ms(t: Option<SystemTime>) -> Option<u64> {
    t.and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map(|d| d.as_millis() as u64)
}

fn render_json(s: &TaskStatus) -> String {
    let result = s.result.as_ref().map(|r| text_or_base64(r));
    let t = TaskJson {
        id: s.id,
        state: s.state.as_str(),
        queue: &s.queue,
        priority: s.priority,
        attempts: s.attempts,
        max_attempts: s.max_attempts,
        last_error: s.last_error.as_deref(),
        lease: s.lease.as_ref().map(|l| LeaseJson {
            connection_id: l.connection_id,
            consumer: &l.consumer,
            deadline_ms: ms(Some(l.deadline)),
        }),
        created_at_ms: ms(s.created_at),
        updated_at_ms: ms(s.updated_at),
        not_before_ms: ms(s.not_before),
        result_encoding: result.as_ref().map(|(_, enc)| *enc),
        result: result.map(|(text, _)| text),
        expires_at_ms: ms(s.expires_at),
    };
    serde_json::to_string(&t).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
}

/// A wall-clock time with how far it is from now, e.g. `2024-05-01T12:00:00.123Z (in 28s)`.
fn when(t: SystemTime, now: SystemTime) -> String {
    let at = humantime::format_rfc3339_millis(t);
    let rel = match t.duration_since(now) {
        Ok(ahead) => format!("in {}", short(ahead)),
        Err(e) => format!("{} ago", short(e.duration())),
    };
    format!("{at} ({rel})")
}

fn short(d: Duration) -> humantime::FormattedDuration {
    humantime::format_duration(Duration::from_secs(d.as_secs()))
}

fn render_table(s: &TaskStatus, now: SystemTime) -> String {
    let mut rows: Vec<(&str, String)> =
        vec![("id", s.id.to_string()), ("state", s.state.to_string())];
    if s.state != TaskState::Unknown {
        rows.push(("queue", s.queue.clone()));
        let limit = match s.max_attempts {
            0 => "unlimited".to_owned(),
            n => n.to_string(),
        };
        rows.push(("attempts", format!("{} of {limit}", s.attempts)));
        rows.push(("priority", s.priority.to_string()));
    }
    if let Some(l) = &s.lease {
        let holder = match l.consumer.as_str() {
            "" => format!("connection {}", l.connection_id),
            name => format!("{name} (connection {})", l.connection_id),
        };
        rows.push(("leased by", holder));
        rows.push(("lease ends", when(l.deadline, now)));
    }
    if let Some(e) = &s.last_error {
        rows.push(("last error", e.clone()));
    }
    for (name, t) in [
        ("created", s.created_at),
        ("updated", s.updated_at),
        ("not before", s.not_before),
        ("expires", s.expires_at),
    ] {
        if let Some(t) = t {
            rows.push((name, when(t, now)));
        }
    }
    if let Some(r) = &s.result {
        let text = match text_or_base64(r) {
            (_, _) if r.is_empty() => "(none)".to_owned(),
            (text, "utf8") => text,
            (text, _) => format!("base64:{text}"),
        };
        rows.push(("result", text));
    }
    // One width for every task, so that scripts can cut columns.
    let width = LABEL_WIDTH;
    rows.iter()
        .map(|(k, v)| format!("{k:<width$}  {v}"))
        .collect::<Vec<_>>()
        .join("\n")
}

pub async fn run(args: TaskArgs) -> anyhow::Result<ExitCode> {
    let client = match &args.queue {
        Some(queue) => connect_for(&args.server, "squall-task", queue).await?,
        None if args.server.is_cluster() => {
            match super::one_cluster(&args.server, "squall-task").await? {
                // Addresses of one replicated cluster: its task ids are the cluster's.
                Some(client) => client,
                None => {
                    return Err(Exit {
                        code: super::EXIT_USAGE,
                        message: format!(
                            "--server names a cluster ({}): give the task's queue with --queue, \
                     since task ids are per node",
                            args.server.server
                        ),
                    }
                    .into())
                }
            }
        }
        None => connect(&args.server, "squall-task").await?,
    };
    let found = match args.wait {
        None => Some(client.task(args.id).await?).filter(|s| s.state != TaskState::Unknown),
        Some(timeout) => match client.wait_result(args.id, timeout).await? {
            TaskOutcome::Succeeded(s) | TaskOutcome::Dead(s) | TaskOutcome::TimedOut(s) => Some(s),
            TaskOutcome::Unknown => None,
        },
    };
    client.close().await;
    let Some(status) = found else {
        return Err(Exit {
            code: EXIT_UNKNOWN,
            message: format!(
                "task {} is unknown to the broker: never published, or its record is gone \
                 (acked without a result, which leaves no record unless the queue has \
                 keep_acked set; acked on a queue whose result TTL is 0; or past the \
                 queue's result TTL)",
                args.id
            ),
        }
        .into());
    };
    if args.json {
        println!("{}", render_json(&status));
    } else {
        println!("{}", render_table(&status, SystemTime::now()));
    }
    let Some(waited) = args.wait else {
        return Ok(ExitCode::SUCCESS);
    };
    Ok(match status.state {
        TaskState::Succeeded => ExitCode::SUCCESS,
        TaskState::Dead => ExitCode::from(1),
        state => {
            eprintln!(
                "task {} is still {state} after waiting {}",
                args.id,
                humantime::format_duration(waited)
            );
            ExitCode::from(EXIT_TIMED_OUT)
        }
    })
}
