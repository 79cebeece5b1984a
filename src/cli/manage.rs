//! The commands that change a queue: `purge`, `pause`, `resume`, `redrive` and
//! `delete-queue`. Destructive ones (purge, delete-queue) show what they will remove
//! and ask on a terminal; `--yes` skips the question, and without a terminal they
//! refuse unless given `--yes` (exit 64).

use std::io::{BufRead, IsTerminal, Write};
use std::process::ExitCode;

use clap::Args;
use squall_client::{QueueInfo, StateFilter};

use super::{connect_for, Exit, ServerArgs, EXIT_USAGE};

/// Remove tasks from a queue.
#[derive(Debug, Args)]
pub struct PurgeArgs {
    #[command(flatten)]
    server: ServerArgs,
    /// Queue name.
    queue: String,
    /// Only tasks in this state (ready, delayed, leased or dead). Without it: every
    /// task that is not leased. Purging leased tasks ends their leases.
    #[arg(long, value_parser = clap::value_parser!(StateFilter))]
    state: Option<StateFilter>,
    /// Do not ask for confirmation.
    #[arg(long, short = 'y')]
    yes: bool,
}

/// Pause or resume a queue.
#[derive(Debug, Args)]
pub struct PauseArgs {
    #[command(flatten)]
    server: ServerArgs,
    /// Queue name.
    queue: String,
}

/// Move dead tasks back to ready.
#[derive(Debug, Args)]
pub struct RedriveArgs {
    #[command(flatten)]
    server: ServerArgs,
    /// Queue name.
    queue: String,
    /// Most tasks moved, oldest first (default: all).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    limit: Option<u32>,
}

/// Delete a queue.
#[derive(Debug, Args)]
pub struct DeleteQueueArgs {
    #[command(flatten)]
    server: ServerArgs,
    /// Queue name.
    queue: String,
    /// Do not ask for confirmation.
    #[arg(long, short = 'y')]
    yes: bool,
}

pub async fn purge(args: PurgeArgs) -> anyhow::Result<ExitCode> {
    let client = connect_for(&args.server, "squall-purge", &args.queue).await?;
    if !args.yes {
        let q = client.queue(&args.queue).await?;
        let what = match args.state {
            Some(s) => format!("{} {s}", count_in(&q, s)),
            None => format!(
                "{} ready, {} delayed and {} dead",
                q.ready, q.delayed, q.dead
            ),
        };
        confirm(&format!("Remove {what} tasks from queue {}?", q.name))?;
    }
    let removed = client.purge(&args.queue, args.state).await?;
    println!("purged {} from {}", tasks(removed), args.queue);
    Ok(ExitCode::SUCCESS)
}

pub async fn pause(args: PauseArgs, paused: bool) -> anyhow::Result<ExitCode> {
    let client = connect_for(&args.server, "squall-pause", &args.queue).await?;
    if paused {
        client.pause(&args.queue).await?;
        println!(
            "paused {0}: publishes are accepted, nothing is delivered until `squall resume {0}`",
            args.queue
        );
    } else {
        let q = client.resume(&args.queue).await?;
        println!(
            "resumed {}: {} ready to be delivered",
            q.name,
            tasks(q.ready)
        );
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn redrive(args: RedriveArgs) -> anyhow::Result<ExitCode> {
    let client = connect_for(&args.server, "squall-redrive", &args.queue).await?;
    let moved = client.redrive(&args.queue, args.limit).await?;
    println!(
        "redrove {} of {} from dead to ready (attempts reset)",
        tasks(moved),
        args.queue
    );
    Ok(ExitCode::SUCCESS)
}

pub async fn delete_queue(args: DeleteQueueArgs) -> anyhow::Result<ExitCode> {
    let client = connect_for(&args.server, "squall-delete-queue", &args.queue).await?;
    if !args.yes {
        let q = client.queue(&args.queue).await?;
        confirm(&format!(
            "Delete queue {} with {} tasks ({} ready, {} delayed, {} leased, {} dead) and end its {} subscriptions?",
            q.name,
            q.ready + q.delayed + q.leased + q.dead,
            q.ready,
            q.delayed,
            q.leased,
            q.dead,
            q.consumers
        ))?;
    }
    let removed = client.delete_queue(&args.queue).await?;
    println!("deleted queue {} and {}", args.queue, tasks(removed));
    Ok(ExitCode::SUCCESS)
}

/// `1 task`, `2 tasks`.
pub(super) fn tasks(n: u64) -> String {
    if n == 1 {
        "1 task".to_owned()
    } else {
        format!("{n} tasks")
    }
}

fn count_in(q: &QueueInfo, state: StateFilter) -> u64 {
    match state {
        StateFilter::Ready => q.ready,
        StateFilter::Delayed => q.delayed,
        StateFilter::Leased => q.leased,
        StateFilter::Dead => q.dead,
    }
}

/// Asks `question` on the terminal; refuses without one (exit 64), aborts on anything
/// but yes (exit 1).
fn confirm(question: &str) -> anyhow::Result<()> {
    if !std::io::stdin().is_terminal() {
        return Err(Exit {
            code: EXIT_USAGE,
            message: format!(
                "{question} Refusing without confirmation: standard input is not a terminal; pass --yes"
            ),
        }
        .into());
    }
    let mut err = std::io::stderr().lock();
    write!(err, "{question} [y/N] ")?;
    err.flush()?;
    let mut answer = String::new();
    std::io::stdin().lock().read_line(&mut answer)?;
    match answer.trim().to_ascii_lowercase().as_str() {
        "y" | "yes" => Ok(()),
        _ => Err(Exit {
            code: 1,
            message: "aborted; nothing was changed".to_owned(),
        }
        .into()),
    }
}
