//! `squall schedule add|list|remove|pause|resume`: periodic schedules kept by the
//! broker (each tick publishes one task, exactly once). With a cluster, a schedule
//! lives on the node that owns its queue.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use clap::{Args, Subcommand};
use serde::Serialize;
use squall_client::{CatchUp, ScheduleInfo, ScheduleSpec};

use super::{connect, connect_for, parse_header, ServerArgs};

/// Manage periodic schedules (each tick publishes one task).
#[derive(Debug, Args)]
pub struct ScheduleArgs {
    #[command(subcommand)]
    action: ScheduleAction,
}

#[derive(Debug, Subcommand)]
enum ScheduleAction {
    /// Add a schedule: every tick of --cron publishes one task to --queue.
    Add(AddArgs),
    /// List schedules with their next run, last run and last task.
    List(ListArgs),
    /// Remove a schedule (the tasks it published stay).
    Remove(NameArgs),
    /// Pause a schedule: ticks that pass meanwhile are skipped.
    Pause(NameArgs),
    /// Resume a paused schedule from its next tick.
    Resume(NameArgs),
}

#[derive(Debug, Args)]
struct AddArgs {
    #[command(flatten)]
    server: ServerArgs,
    /// Schedule name (letters, digits, `._:-`).
    name: String,
    /// Queue its tasks go to.
    #[arg(long)]
    queue: String,
    /// Cron expression: six fields with seconds first ("0 */5 * * * *") or five.
    #[arg(long)]
    cron: String,
    /// IANA time zone the expression is read in, DST included (default UTC).
    #[arg(long)]
    tz: Option<String>,
    /// Payload of each task.
    #[arg(long, conflicts_with = "file")]
    payload: Option<String>,
    /// Read the payload of each task from this file.
    #[arg(long)]
    file: Option<PathBuf>,
    /// Header `name=value` of each task; repeatable.
    #[arg(long = "header", value_parser = parse_header)]
    headers: Vec<(String, String)>,
    /// Priority of each task.
    #[arg(long, default_value_t = 0, allow_negative_numbers = true)]
    priority: i32,
    /// Deliveries before a task is dead (default: the queue's).
    #[arg(long)]
    max_attempts: Option<u32>,
    /// Ticks missed while the broker was down: none, one (a single run) or all.
    #[arg(long, default_value = "one", value_parser = clap::value_parser!(CatchUp))]
    catch_up: CatchUp,
    /// Print the schedule as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
struct ListArgs {
    #[command(flatten)]
    server: ServerArgs,
    /// Print JSON (an array of schedules) instead of a table.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
struct NameArgs {
    #[command(flatten)]
    server: ServerArgs,
    /// Schedule name.
    name: String,
}

pub async fn run(args: ScheduleArgs) -> anyhow::Result<ExitCode> {
    match args.action {
        ScheduleAction::Add(a) => add(a).await,
        ScheduleAction::List(a) => {
            let client = connect(&a.server, "squall-schedule").await?;
            let rows: Vec<Row> = client.schedules().await?.iter().map(Row::from).collect();
            if a.json {
                println!("{}", serde_json::to_string_pretty(&rows)?);
            } else {
                print!("{}", table(&rows));
            }
            Ok(ExitCode::SUCCESS)
        }
        ScheduleAction::Remove(a) => {
            let client = connect(&a.server, "squall-schedule").await?;
            client.remove_schedule(&a.name).await?;
            println!("schedule {} removed", a.name);
            Ok(ExitCode::SUCCESS)
        }
        ScheduleAction::Pause(a) => {
            let client = connect(&a.server, "squall-schedule").await?;
            let s = client.pause_schedule(&a.name).await?;
            println!("schedule {} paused", s.spec.name);
            Ok(ExitCode::SUCCESS)
        }
        ScheduleAction::Resume(a) => {
            let client = connect(&a.server, "squall-schedule").await?;
            let s = client.resume_schedule(&a.name).await?;
            println!(
                "schedule {} resumed; next run {}",
                s.spec.name,
                when(s.next_run)
            );
            Ok(ExitCode::SUCCESS)
        }
    }
}

async fn add(a: AddArgs) -> anyhow::Result<ExitCode> {
    let payload = match (&a.payload, &a.file) {
        (Some(p), _) => Bytes::from(p.clone()),
        (None, Some(f)) => Bytes::from(
            std::fs::read(f).map_err(|e| anyhow::anyhow!("cannot read {}: {e}", f.display()))?,
        ),
        (None, None) => Bytes::new(),
    };
    let mut spec = ScheduleSpec::new(&a.name, &a.queue, &a.cron)
        .payload(payload)
        .priority(a.priority)
        .catch_up(a.catch_up);
    if let Some(tz) = &a.tz {
        spec = spec.tz(tz.clone());
    }
    if let Some(n) = a.max_attempts {
        spec = spec.max_attempts(n);
    }
    for (k, v) in &a.headers {
        spec = spec.header(k.clone(), Bytes::from(v.clone()));
    }
    let client = connect_for(&a.server, "squall-schedule", &a.queue).await?;
    let s = client.add_schedule(spec).await?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&Row::from(&s))?);
    } else {
        println!(
            "schedule {} added: {} ({}) -> queue {}; next run {}",
            s.spec.name,
            s.spec.cron,
            zone(&s.spec.tz),
            s.spec.queue,
            when(s.next_run)
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// One schedule as printed (`--json` uses the same fields).
#[derive(Debug, Serialize)]
struct Row {
    name: String,
    queue: String,
    cron: String,
    tz: String,
    catch_up: &'static str,
    paused: bool,
    next_run_ms: Option<u64>,
    last_run_ms: Option<u64>,
    last_task_id: Option<u64>,
    payload_bytes: usize,
    priority: i32,
    max_attempts: u32,
}

impl From<&ScheduleInfo> for Row {
    fn from(s: &ScheduleInfo) -> Row {
        Row {
            name: s.spec.name.clone(),
            queue: s.spec.queue.clone(),
            cron: s.spec.cron.clone(),
            tz: zone(&s.spec.tz).to_owned(),
            catch_up: s.spec.catch_up.as_str(),
            paused: s.paused,
            next_run_ms: s.next_run.map(unix_ms),
            last_run_ms: s.last_run.map(unix_ms),
            last_task_id: s.last_task,
            payload_bytes: s.spec.payload.len(),
            priority: s.spec.priority,
            max_attempts: s.spec.max_attempts,
        }
    }
}

fn zone(tz: &str) -> &str {
    if tz.is_empty() {
        "UTC"
    } else {
        tz
    }
}

fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// A time as RFC 3339 in UTC, or `-`.
fn when(t: Option<SystemTime>) -> String {
    t.map_or_else(
        || "-".to_owned(),
        |t| humantime::format_rfc3339_seconds(t).to_string(),
    )
}

fn table(rows: &[Row]) -> String {
    let mut lines = vec![[
        "SCHEDULE".to_owned(),
        "QUEUE".to_owned(),
        "CRON".to_owned(),
        "TZ".to_owned(),
        "CATCH-UP".to_owned(),
        "NEXT RUN".to_owned(),
        "LAST RUN".to_owned(),
        "LAST TASK".to_owned(),
        "STATE".to_owned(),
    ]];
    let at = |ms: Option<u64>| when(ms.map(|ms| UNIX_EPOCH + std::time::Duration::from_millis(ms)));
    for r in rows {
        lines.push([
            r.name.clone(),
            r.queue.clone(),
            r.cron.clone(),
            r.tz.clone(),
            r.catch_up.to_owned(),
            at(r.next_run_ms),
            at(r.last_run_ms),
            r.last_task_id
                .map_or_else(|| "-".to_owned(), |id| id.to_string()),
            if r.paused { "paused" } else { "active" }.to_owned(),
        ]);
    }
    let mut widths = [0usize; 9];
    for l in &lines {
        for (w, c) in widths.iter_mut().zip(l) {
            *w = (*w).max(c.chars().count());
        }
    }
    let mut out = String::new();
    for l in &lines {
        let cells: Vec<String> = l
            .iter()
            .zip(widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        out.push_str(cells.join("  ").trim_end());
        out.push('\n');
    }
    out
}
