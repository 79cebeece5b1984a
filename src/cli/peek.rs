//! `squall peek NAME [--state ready|delayed|leased|dead] [--limit N] [--json]`: shows
//! tasks with their payloads without changing anything (no lease, no attempt, no
//! counter): the broker reads them from its indexes and the store.

use std::process::ExitCode;

use clap::Args;
use squall_client::{StateFilter, MAX_PEEK};

use super::render::{self, TaskRow};
use super::{connect_for, ServerArgs};

/// Show tasks without changing them.
#[derive(Debug, Args)]
pub struct PeekArgs {
    #[command(flatten)]
    server: ServerArgs,
    /// Queue name.
    queue: String,
    /// Which tasks: ready (in delivery order), delayed (by due time), leased (by
    /// deadline) or dead (oldest first).
    #[arg(long, default_value = "ready", value_parser = clap::value_parser!(StateFilter))]
    state: StateFilter,
    /// Most tasks shown (1..=1000).
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..=i64::from(MAX_PEEK)))]
    limit: u32,
    /// One JSON object per task instead of a table.
    #[arg(long)]
    json: bool,
    /// Whole payloads and headers instead of the broker's previews (one more request
    /// per task whose preview was cut).
    #[arg(long)]
    full: bool,
}

pub async fn run(args: PeekArgs) -> anyhow::Result<ExitCode> {
    let client = connect_for(&args.server, "squall-peek", &args.queue).await?;
    let tasks = client.peek(&args.queue, args.state, args.limit).await?;
    let mut rows: Vec<TaskRow> = tasks.iter().map(TaskRow::from).collect();
    if args.full {
        for (row, task) in rows.iter_mut().zip(&tasks) {
            if !task.truncated {
                continue;
            }
            match client.payload(task.id).await {
                Ok(whole) => row.set_payload(&whole.payload, &whole.headers),
                // Settled or removed since the peek: keep the preview.
                Err(squall_client::ClientError::Server {
                    code: squall_client::ErrorCode::NotFound,
                    ..
                }) => {}
                Err(e) => return Err(e.into()),
            }
        }
    }
    if args.json {
        print!("{}", render::peek_json(&rows));
    } else {
        print!("{}", render::peek_table(&rows, squall::server::now_ms()));
    }
    Ok(ExitCode::SUCCESS)
}
