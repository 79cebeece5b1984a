//! `squall queues` (every queue, `--json`, `--watch`), `squall queue NAME` (one queue
//! with its configuration) and `squall queue set NAME ...` (change the configuration).
//! The broker answers from its live state; this file only asks and prints.

use std::io::{IsTerminal, Write};
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Subcommand};
use squall_client::QueueConfigUpdate;

use super::render::{self, QueueRow};
use super::{
    connect, connect_for, parse_backoff, parse_duration, Exit, ServerArgs, EXIT_UNAVAILABLE,
    EXIT_USAGE,
};

/// List queues.
#[derive(Debug, Args)]
pub struct QueuesArgs {
    #[command(flatten)]
    server: ServerArgs,
    /// Print JSON (an array of queues) instead of a table.
    #[arg(long)]
    json: bool,
    /// Refresh the table in place until Ctrl-C.
    #[arg(long)]
    watch: bool,
    /// Refresh interval of --watch.
    #[arg(long, default_value = "2s", value_parser = parse_duration, requires = "watch")]
    interval: Duration,
}

/// Show one queue, or change its configuration with `queue set`.
#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
pub struct QueueArgs {
    #[command(subcommand)]
    action: Option<QueueAction>,
    #[command(flatten)]
    server: ServerArgs,
    /// Queue name.
    #[arg(required = true)]
    name: Option<String>,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Subcommand)]
enum QueueAction {
    /// Change a queue's configuration (persisted; creates the queue if needed).
    Set(SetArgs),
}

#[derive(Debug, Args)]
struct SetArgs {
    #[command(flatten)]
    server: ServerArgs,
    /// Queue name.
    name: String,
    /// Default lease of a delivery, e.g. 30s.
    #[arg(long, value_parser = parse_duration)]
    lease: Option<Duration>,
    /// Deliveries before a task goes to the dead set (0 = unlimited).
    #[arg(long)]
    max_attempts: Option<u32>,
    /// Retry backoff range MIN..MAX, e.g. 1s..10m.
    #[arg(long, value_parser = parse_backoff, value_name = "MIN..MAX")]
    backoff: Option<(Duration, Duration)>,
    /// Most pending tasks (0 = unbounded).
    #[arg(long)]
    max_length: Option<u64>,
    /// How long succeeded and dead tasks are kept, e.g. 1h.
    #[arg(long, value_parser = parse_duration)]
    result_ttl: Option<Duration>,
    /// Keep a succeeded record of a task acked without a result too (by default only
    /// an ack that carries a result leaves one).
    #[arg(long, value_name = "BOOL")]
    keep_acked: Option<bool>,
    /// Idempotency-key window, e.g. 5m.
    #[arg(long, value_parser = parse_duration)]
    dedup_window: Option<Duration>,
    /// Most tasks of the queue leased at once, across all consumers (0 = no cap).
    #[arg(long)]
    max_in_flight: Option<u32>,
    /// Most deliveries per second, e.g. 50/s (0 = no limit).
    #[arg(long, value_parser = parse_rate, value_name = "N/s")]
    rate_limit: Option<u32>,
    /// Deliveries the rate limit lets through at once after a pause (default: one
    /// second's worth).
    #[arg(long, requires = "rate_limit")]
    rate_burst: Option<u32>,
    /// Tasks not started by their expiry are dropped instead of dead-lettered.
    #[arg(long, value_name = "BOOL")]
    drop_expired: Option<bool>,
    /// Print the result as JSON.
    #[arg(long)]
    json: bool,
}

impl SetArgs {
    fn update(&self) -> QueueConfigUpdate {
        let mut u = QueueConfigUpdate::new();
        if let Some(v) = self.lease {
            u = u.lease(v);
        }
        if let Some(v) = self.max_attempts {
            u = u.max_attempts(v);
        }
        if let Some((lo, hi)) = self.backoff {
            u = u.backoff(lo, hi);
        }
        if let Some(v) = self.max_length {
            u = u.max_length(v);
        }
        if let Some(v) = self.result_ttl {
            u = u.result_ttl(v);
        }
        if let Some(v) = self.keep_acked {
            u = u.keep_acked(v);
        }
        if let Some(v) = self.dedup_window {
            u = u.dedup_window(v);
        }
        if let Some(v) = self.max_in_flight {
            u = u.max_in_flight(v);
        }
        if let Some(v) = self.rate_limit {
            u = u.rate_limit(v, self.rate_burst.unwrap_or(0));
        }
        if let Some(v) = self.drop_expired {
            u = u.drop_expired(v);
        }
        u
    }
}

/// Parses a rate like `50/s` (or a bare `50`, per second).
fn parse_rate(s: &str) -> Result<u32, String> {
    let n = s.strip_suffix("/s").unwrap_or(s);
    n.trim()
        .parse()
        .map_err(|_| format!("`{s}` is not a rate like 50/s (deliveries per second)"))
}

pub async fn run_list(args: QueuesArgs) -> anyhow::Result<ExitCode> {
    let source = Source::connect(&args.server).await?;
    if !args.watch {
        let (rows, down) = source.rows().await?;
        print!(
            "{}",
            if args.json {
                render::queues_json(&rows)
            } else {
                render::queues_table(&rows)
            }
        );
        // The reachable nodes are listed; the others are named, and the exit code
        // says that the list is incomplete.
        for e in &down {
            eprintln!("squall: {e}");
        }
        return Ok(if down.is_empty() {
            ExitCode::SUCCESS
        } else {
            ExitCode::from(EXIT_UNAVAILABLE)
        });
    }
    let in_place = std::io::stdout().is_terminal();
    loop {
        let (rows, down) = source.rows().await?;
        let mut out = std::io::stdout().lock();
        if in_place {
            // Cursor home and clear the screen: the table is redrawn where it was.
            write!(out, "\x1b[H\x1b[2J")?;
        }
        writeln!(
            out,
            "{} every {}; Ctrl-C to stop\n",
            args.server.server,
            render::duration(args.interval)
        )?;
        write!(out, "{}", render::queues_table(&rows))?;
        for e in &down {
            writeln!(out, "! {e}")?;
        }
        if !in_place {
            writeln!(out)?;
        }
        out.flush()?;
        drop(out);
        tokio::select! {
            _ = tokio::time::sleep(args.interval) => {}
            _ = tokio::signal::ctrl_c() => break,
        }
    }
    source.close().await;
    Ok(ExitCode::SUCCESS)
}

/// Where `squall queues` reads from: one broker, or every node of a cluster.
enum Source {
    One(squall_client::Client),
    Cluster(squall_client::ClusterClient),
}

impl Source {
    async fn connect(args: &ServerArgs) -> anyhow::Result<Source> {
        if !args.is_cluster() {
            return Ok(Source::One(connect(args, "squall-queues").await?));
        }
        let cluster = args
            .builder("squall-queues")
            .connect_cluster(args.nodes())
            .await
            .map_err(|e| match e {
                e @ squall_client::ClientError::Unavailable { .. } => anyhow::Error::new(Exit {
                    code: EXIT_UNAVAILABLE,
                    message: format!("cannot reach the cluster {}: {e}", args.server),
                }),
                other => other.into(),
            })?;
        Ok(Source::Cluster(cluster))
    }

    /// The rows, and the nodes that could not answer (as error messages). A single
    /// broker that cannot answer is an error.
    async fn rows(&self) -> anyhow::Result<(Vec<QueueRow>, Vec<String>)> {
        match self {
            Source::One(client) => Ok((rows(&client.queues().await?), Vec::new())),
            Source::Cluster(cluster) => {
                let mut all = Vec::new();
                let mut down = Vec::new();
                for node in cluster.queues().await {
                    match node.queues {
                        Ok(queues) => all.extend(queues.iter().map(|q| QueueRow {
                            node: Some(node.node.clone()),
                            owner: Some(cluster.node_of(&q.name).to_owned()),
                            ..QueueRow::from(q)
                        })),
                        Err(e) => down.push(format!("node {} ({}): {e}", node.node, node.addr)),
                    }
                }
                Ok((all, down))
            }
        }
    }

    async fn close(&self) {
        match self {
            Source::One(client) => client.close().await,
            Source::Cluster(cluster) => cluster.close().await,
        }
    }
}

pub async fn run_one(args: QueueArgs) -> anyhow::Result<ExitCode> {
    if let Some(QueueAction::Set(set)) = args.action {
        return run_set(set).await;
    }
    let Some(name) = args.name else {
        return Err(usage("name a queue: squall queue NAME"));
    };
    let client = connect_for(&args.server, "squall-queue", &name).await?;
    let row = QueueRow::from(&client.queue(name).await?);
    print!("{}", detail(&row, args.json));
    Ok(ExitCode::SUCCESS)
}

async fn run_set(args: SetArgs) -> anyhow::Result<ExitCode> {
    let update = args.update();
    if update.is_empty() {
        return Err(usage(
            "nothing to change: give at least one of --lease, --max-attempts, --backoff, \
             --max-length, --result-ttl, --dedup-window",
        ));
    }
    let client = connect_for(&args.server, "squall-queue-set", &args.name).await?;
    let row = QueueRow::from(&client.set_queue_config(&args.name, update).await?);
    print!("{}", detail(&row, args.json));
    Ok(ExitCode::SUCCESS)
}

fn detail(row: &QueueRow, json: bool) -> String {
    if json {
        render::queue_json(row)
    } else {
        render::queue_detail(row)
    }
}

fn rows(queues: &[squall_client::QueueInfo]) -> Vec<QueueRow> {
    queues.iter().map(QueueRow::from).collect()
}

fn usage(message: &str) -> anyhow::Error {
    Exit {
        code: EXIT_USAGE,
        message: message.to_owned(),
    }
    .into()
}
