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

pub async fn run(args: ConsumeArgs) -> anyhow::Result<ExitCode> {
    let client = connect_for(&args.server, "squall-consume", &args.queue).await?;
    let mut sub = client
        .subscribe(args.queue.clone())
        // Never hold more than will be printed: unprinted deliveries would be released,
        // each using up an attempt.
        .prefetch(match args.count {
            Some(n) => args.prefetch.min(n.clamp(1, u64::from(u32::MAX)) as u32),
            None => args.prefetch,
        })
        .await?;
    let mut done = 0u64;
    loop {
        if args.count.is_some_and(|n| done >= n) {
            break;
        }
        let next = tokio::select! {
            d = sub.recv() => d,
            _ = tokio::signal::ctrl_c() => break,
        };
        let Some(delivery) = next else {
            anyhow::bail!("the subscription ended");
        };
        let delivery = delivery?;
        println!("{}", render(&delivery, args.json));
        if args.nack {
            delivery.nack().await?;
        } else if let Some(reason) = &args.fail {
            delivery.fail(reason.clone()).await?;
        } else {
            delivery.ack().await?;
        }
        done += 1;
    }
    // Unsettled deliveries (prefetched but not printed) go back when the connection closes.
    client.close().await;
    Ok(ExitCode::SUCCESS)
}
