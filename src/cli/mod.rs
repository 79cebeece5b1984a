//! Command-line interface: one file per subcommand, plus the argument types they share
//! (durations, server address) and the mapping of errors to exit codes. This is the
//! binary's edge, the only place that uses `anyhow`.

mod bench;
mod cluster;
mod consume;
mod healthcheck;
mod manage;
mod peek;
mod publish;
mod queues;
mod render;
mod schedule;
mod serve;
mod task;
mod token;

use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};
use squall::config::{LogConfig, Settings};

/// Exit code for invalid configuration or usage (sysexits EX_USAGE).
pub const EXIT_USAGE: u8 = 64;
/// Exit code when the broker refused the input (sysexits EX_DATAERR).
pub const EXIT_DATAERR: u8 = 65;
/// Exit code when the named queue (or task) does not exist (sysexits EX_NOINPUT).
pub const EXIT_NOT_FOUND: u8 = 66;
/// Exit code when the token is missing, invalid or not allowed to do that (sysexits
/// EX_NOPERM).
pub const EXIT_NOPERM: u8 = 77;
/// Exit code when the broker cannot be reached (sysexits EX_UNAVAILABLE).
pub const EXIT_UNAVAILABLE: u8 = 69;
/// `squall serve`: the store failed (a checkpoint could not be written) and the broker
/// stopped so that its supervisor restarts it (EX_TEMPFAIL).
pub const EXIT_STORE_FAILED: u8 = 75;
/// `squall serve`: the data directory cannot be created, is not a directory, or is not
/// writable (EX_CANTCREAT).
pub const EXIT_DATA_DIR_UNUSABLE: u8 = 73;
/// `squall serve`: the data directory's contents could not be opened (EX_IOERR).
pub const EXIT_DATA_DIR_UNREADABLE: u8 = 74;
/// `squall serve`: another squall process holds the data directory (EX_CONFIG: two
/// brokers are configured with one directory).
pub const EXIT_DATA_DIR_IN_USE: u8 = 78;

/// Squall: a durable task broker.
#[derive(Debug, Parser)]
#[command(name = "squall", version, about, propagate_version = true)]
pub struct Cli {
    /// Log output format, on standard error [default: text; env: SQUALL_LOG_FORMAT].
    #[arg(long, global = true, value_enum)]
    pub log_format: Option<LogFormat>,
    #[command(subcommand)]
    pub command: Command,
}

/// Log output formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

impl LogFormat {
    fn as_str(self) -> &'static str {
        match self {
            LogFormat::Text => "text",
            LogFormat::Json => "json",
        }
    }
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the broker.
    Serve(Box<serve::ServeArgs>),
    /// Publish tasks (argument, --file, or one per standard-input line).
    Publish(publish::PublishArgs),
    /// Print and settle tasks as they arrive.
    Consume(consume::ConsumeArgs),
    /// List queues: depth by state, consumers, totals, rates, oldest ready task.
    Queues(queues::QueuesArgs),
    /// Show one queue with its configuration, or change it (`queue set`).
    Queue(queues::QueueArgs),
    /// Show tasks without changing them (no lease, no attempt, no counter).
    Peek(peek::PeekArgs),
    /// Remove a queue's tasks (all but leased ones, or one state).
    Purge(manage::PurgeArgs),
    /// Stop deliveries from a queue (publishes are still accepted).
    Pause(manage::PauseArgs),
    /// Resume deliveries from a paused queue.
    Resume(manage::PauseArgs),
    /// Move dead tasks back to ready with their attempts reset.
    Redrive(manage::RedriveArgs),
    /// Delete a queue, its tasks and its configuration; its subscriptions end.
    DeleteQueue(manage::DeleteQueueArgs),
    /// Load-test a broker: throughput, latency percentiles, loss and duplicates.
    Bench(bench::BenchArgs),
    /// Show a task's status and result, optionally waiting for it to finish.
    Task(task::TaskArgs),
    /// Check a broker's /healthz (or /readyz): exit 0 on HTTP 200, 1 otherwise.
    Healthcheck(healthcheck::HealthcheckArgs),
    /// Authentication tokens: `squall token hash` prints a configuration entry.
    Token(token::TokenArgs),
    /// Cluster members and roles (`squall cluster status [--json]`).
    Cluster(cluster::ClusterArgs),
    /// Periodic schedules kept by the broker.
    Schedule(schedule::ScheduleArgs),
}

/// A parsed command line, ready to run: `serve` has its settings loaded and validated.
pub struct Prepared {
    /// How to log.
    pub log: LogConfig,
    job: Job,
}

enum Job {
    Serve(Box<Settings>),
    Other(Box<Command>),
}

impl Prepared {
    /// Threads for the async runtime: `worker_threads` for `serve` when set (not 0);
    /// otherwise the runtime's default, one per core.
    pub fn worker_threads(&self) -> Option<usize> {
        match &self.job {
            Job::Serve(settings) if settings.server.worker_threads > 0 => {
                Some(settings.server.worker_threads)
            }
            _ => None,
        }
    }
}

/// Loads what must be known before logging starts: for `serve`, every setting (so a
/// bad one exits 64 before anything is bound); for the other commands, the log format.
pub fn prepare(cli: Cli) -> anyhow::Result<Prepared> {
    let format = cli.log_format.map(LogFormat::as_str);
    match cli.command {
        Command::Serve(args) => {
            let settings = args.settings(format)?;
            if let Err(e) = tracing_subscriber::EnvFilter::try_new(&settings.log.filter) {
                return Err(Exit {
                    code: EXIT_USAGE,
                    message: format!("invalid configuration `log.filter`: {e}"),
                }
                .into());
            }
            Ok(Prepared {
                log: settings.log.clone(),
                job: Job::Serve(Box::new(settings)),
            })
        }
        command => {
            // Client commands log only warnings by default, so that their standard
            // output stays clean for scripts.
            let env_format = std::env::var("SQUALL_LOG_FORMAT").ok();
            let format = format
                .or(env_format.as_deref())
                .and_then(|f| f.parse().ok())
                .unwrap_or_default();
            Ok(Prepared {
                log: LogConfig {
                    format,
                    filter: "warn".to_owned(),
                },
                job: Job::Other(Box::new(command)),
            })
        }
    }
}

/// Runs a subcommand to completion.
pub async fn run(prepared: Prepared) -> anyhow::Result<ExitCode> {
    let command = match prepared.job {
        Job::Serve(settings) => return serve::run(*settings).await,
        Job::Other(command) => command,
    };
    match *command {
        Command::Serve(_) => unreachable!("serve is prepared as Job::Serve"),
        Command::Publish(args) => publish::run(args).await,
        Command::Consume(args) => consume::run(args).await,
        Command::Queues(args) => queues::run_list(args).await,
        Command::Queue(args) => queues::run_one(args).await,
        Command::Peek(args) => peek::run(args).await,
        Command::Purge(args) => manage::purge(args).await,
        Command::Pause(args) => manage::pause(args, true).await,
        Command::Resume(args) => manage::pause(args, false).await,
        Command::Redrive(args) => manage::redrive(args).await,
        Command::DeleteQueue(args) => manage::delete_queue(args).await,
        Command::Bench(args) => bench::run(args).await,
        Command::Task(args) => task::run(args).await,
        Command::Healthcheck(args) => healthcheck::run(args).await,
        Command::Token(args) => token::run(args),
        Command::Cluster(args) => cluster::run(args).await,
        Command::Schedule(args) => schedule::run(args).await,
    }
}

/// Sets up `tracing` on standard error; `RUST_LOG` overrides the configured filter.
pub fn init_tracing(log: &LogConfig) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&log.filter))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    use std::io::IsTerminal;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    match log.format {
        squall::config::LogFormat::Text => builder.init(),
        squall::config::LogFormat::Json => builder.json().init(),
    }
}

/// Exit for a command line clap refused: usage errors are EX_USAGE (64), `--help` and
/// `--version` succeed.
pub fn clap_exit(e: clap::Error) -> ExitCode {
    let _ = e.print();
    if e.use_stderr() {
        ExitCode::from(EXIT_USAGE)
    } else {
        ExitCode::SUCCESS
    }
}

/// A typed failure that carries its own exit code.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct Exit {
    /// Process exit code.
    pub code: u8,
    /// What to print.
    pub message: String,
}

/// The exit code for an error that reached `main`.
pub fn exit_code_of(e: &anyhow::Error) -> u8 {
    if let Some(x) = e.downcast_ref::<Exit>() {
        return x.code;
    }
    use squall::server::ServerError;
    use squall::store::{DataDirProblem, StoreError};
    match e.downcast_ref::<ServerError>() {
        Some(ServerError::Store(StoreError::Failed(_)) | ServerError::RaftStopped(_)) => {
            return EXIT_STORE_FAILED
        }
        Some(ServerError::Store(StoreError::DataDir { problem, .. })) => {
            return match problem {
                DataDirProblem::InUse => EXIT_DATA_DIR_IN_USE,
                DataDirProblem::Unusable => EXIT_DATA_DIR_UNUSABLE,
                DataDirProblem::Unreadable => EXIT_DATA_DIR_UNREADABLE,
            }
        }
        _ => {}
    }
    use squall_client::{ClientError, ErrorCode};
    match e.downcast_ref::<ClientError>() {
        Some(
            ClientError::Io(_)
            | ClientError::Unavailable { .. }
            | ClientError::NodeUnavailable { .. }
            | ClientError::ConnectionLost { .. },
        ) => EXIT_UNAVAILABLE,
        Some(err) => match err.code() {
            Some(
                ErrorCode::BadRequest
                | ErrorCode::InvalidQueueName
                | ErrorCode::EmptyPayload
                | ErrorCode::PayloadTooLarge
                | ErrorCode::InvalidSchedule
                | ErrorCode::ScheduleExists,
            ) => EXIT_DATAERR,
            Some(ErrorCode::NotFound) => EXIT_NOT_FOUND,
            Some(ErrorCode::Unauthenticated | ErrorCode::Forbidden) => EXIT_NOPERM,
            _ => 1,
        },
        None => 1,
    }
}

/// Where the broker is and how to talk to it: shared by every subcommand that talks
/// to one.
#[derive(Clone, clap::Args)]
pub struct ServerArgs {
    /// Broker address, or a cluster's nodes separated by commas (`ADDR` or
    /// `NAME=ADDR` each; every client must list the same names): each queue lives on
    /// the node rendezvous hashing picks for it.
    #[arg(long, env = "SQUALL_SERVER", default_value = crate_default_server(), value_name = "ADDR[,ADDR...]")]
    pub server: String,
    /// Authentication token, for a broker that requires one.
    #[arg(
        long,
        env = "SQUALL_TOKEN",
        hide_env_values = true,
        value_name = "TOKEN"
    )]
    pub token: Option<String>,
    /// Talk TLS to the broker, trusting the CA certificate(s) in this PEM file. The
    /// broker's certificate must name the host of --server.
    #[arg(long, env = "SQUALL_TLS_CA", value_name = "FILE")]
    pub tls_ca: Option<std::path::PathBuf>,
}

/// Never shows the token.
impl std::fmt::Debug for ServerArgs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerArgs")
            .field("server", &self.server)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("tls_ca", &self.tls_ca)
            .finish()
    }
}

impl ServerArgs {
    /// A client builder with this token (and TLS settings) applied.
    pub fn builder(&self, name: &str) -> squall_client::ClientBuilder {
        let mut b = squall_client::Client::builder().client_name(name);
        if let Some(token) = &self.token {
            b = b.token(token.clone());
        }
        if let Some(ca) = &self.tls_ca {
            b = b.tls_ca_file(ca);
        }
        b
    }
}

impl ServerArgs {
    /// The node specs of a cluster list (one for a single broker).
    pub fn nodes(&self) -> Vec<&str> {
        self.server
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .collect()
    }

    /// True when `--server` names more than one node.
    pub fn is_cluster(&self) -> bool {
        self.nodes().len() > 1
    }
}

const fn crate_default_server() -> &'static str {
    squall::config::DEFAULT_LISTEN
}

/// Connects to the one broker named by `args` (or the one replicated cluster its
/// addresses belong to), failing fast when it is not there. Commands about a queue use
/// [`connect_for`], which also handles several nodes.
pub async fn connect(args: &ServerArgs, name: &str) -> anyhow::Result<squall_client::Client> {
    if args.is_cluster() {
        if let Some(client) = one_cluster(args, name).await? {
            return Ok(client);
        }
        return Err(Exit {
            code: EXIT_USAGE,
            message: format!(
                "this command talks to one broker, but --server names a cluster ({}); \
                 give one node's address",
                args.server
            ),
        }
        .into());
    }
    dial(args, &args.server, name, "").await
}

/// With several addresses: the client of the one replicated cluster they all belong to,
/// or `None` when they are several nodes.
pub async fn one_cluster(
    args: &ServerArgs,
    name: &str,
) -> anyhow::Result<Option<squall_client::Client>> {
    let cluster = dial_nodes(args, name).await?;
    if cluster.nodes().count() != 1 {
        cluster.close().await;
        return Ok(None);
    }
    // Any queue name: the one node owns them all.
    Ok(Some(cluster.client_for("")?))
}

/// Dials every node of `--server` (a replicated cluster's addresses count as one).
async fn dial_nodes(args: &ServerArgs, name: &str) -> anyhow::Result<squall_client::ClusterClient> {
    // The name hashed is the node as given: an address completed with the default
    // port keeps its given form as its name.
    let specs: Vec<String> = args
        .nodes()
        .iter()
        .map(|n| match n.split_once('=') {
            Some((name, addr)) => format!("{}={}", name.trim(), with_default_port(addr.trim())),
            None if with_default_port(n) != *n => format!("{n}={}", with_default_port(n)),
            None => (*n).to_owned(),
        })
        .collect();
    args.builder(name)
        .connect_cluster(&specs)
        .await
        .map_err(|e| match e {
            squall_client::ClientError::Config(m) => anyhow::Error::new(Exit {
                code: EXIT_USAGE,
                message: m,
            }),
            e => anyhow::Error::new(Exit {
                code: EXIT_UNAVAILABLE,
                message: format!("cannot reach the nodes {}: {e}", args.server),
            }),
        })
}

/// Connects to the broker holding `queue`: the one broker, or with several addresses
/// the node that rendezvous hashing assigns the queue to (the same node every client
/// picks). Every address is dialled so that the members of one replicated cluster
/// count as one node (named by its cluster id), as [`squall_client::ClusterClient`]
/// counts them.
pub async fn connect_for(
    args: &ServerArgs,
    name: &str,
    queue: &str,
) -> anyhow::Result<squall_client::Client> {
    if args.nodes().len() <= 1 {
        return dial(args, &args.server, name, "").await;
    }
    let cluster = dial_nodes(args, name).await?;
    let node = cluster.node_of(queue).to_owned();
    let client = cluster.client_for(queue).map_err(|e| {
        anyhow::Error::new(Exit {
            code: EXIT_UNAVAILABLE,
            message: format!(
                "cannot reach node {node}, which holds queue {queue} among {}: {e}",
                args.server
            ),
        })
    })?;
    Ok(client)
}

/// `addr` with the default protocol port added when it names only a host
/// (`10.0.0.5`, `broker.internal`, `::1` or `[::1]`).
fn with_default_port(addr: &str) -> String {
    const PORT: u16 = 7600;
    debug_assert!(squall::config::DEFAULT_LISTEN.ends_with(":7600"));
    if addr.parse::<std::net::SocketAddr>().is_ok() {
        return addr.to_owned();
    }
    if let Ok(v6) = addr.parse::<std::net::Ipv6Addr>() {
        return format!("[{v6}]:{PORT}");
    }
    if addr.starts_with('[') && addr.ends_with(']') {
        return format!("{addr}:{PORT}");
    }
    match addr.rsplit_once(':') {
        Some((_, port)) if port.parse::<u16>().is_ok() => addr.to_owned(),
        _ if addr.contains(':') => addr.to_owned(),
        _ => format!("{addr}:{PORT}"),
    }
}

async fn dial(
    args: &ServerArgs,
    addr: &str,
    name: &str,
    why: &str,
) -> anyhow::Result<squall_client::Client> {
    let addr = &with_default_port(addr);
    let client = args
        .builder(name)
        .connect(addr)
        .await
        .map_err(|e| match e {
            squall_client::ClientError::Io(_) | squall_client::ClientError::Timeout { .. } => {
                anyhow::Error::new(Exit {
                    code: EXIT_UNAVAILABLE,
                    message: format!("cannot reach the broker at {addr}{why}: {e}"),
                })
            }
            squall_client::ClientError::Config(m) => anyhow::Error::new(Exit {
                code: EXIT_USAGE,
                message: m,
            }),
            other => other.into(),
        })?;
    Ok(client)
}

/// Parses a `name=value` header.
pub fn parse_header(s: &str) -> Result<(String, String), String> {
    let (k, v) = s
        .split_once('=')
        .ok_or_else(|| format!("`{s}` is not a header like name=value"))?;
    if k.is_empty() {
        return Err(format!("`{s}` has an empty header name"));
    }
    Ok((k.to_owned(), v.to_owned()))
}

/// Parses `30s`, `100ms`, `5m`, `1h`, or a bare number of milliseconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    if let Ok(ms) = s.parse::<u64>() {
        return Ok(Duration::from_millis(ms));
    }
    humantime::parse_duration(s)
        .map_err(|e| format!("`{s}` is not a duration like 30s, 250ms or 5m: {e}"))
}

/// Parses a backoff range `MIN..MAX`, e.g. `1s..5m`.
pub fn parse_backoff(s: &str) -> Result<(Duration, Duration), String> {
    let (lo, hi) = s
        .split_once("..")
        .ok_or_else(|| format!("`{s}` is not a range like 1s..5m"))?;
    let (lo, hi) = (parse_duration(lo)?, parse_duration(hi)?);
    if lo > hi {
        return Err(format!(
            "backoff minimum {lo:?} is above its maximum {hi:?}"
        ));
    }
    Ok((lo, hi))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_server_without_a_port_gets_the_default_one() {
        assert_eq!(with_default_port("127.0.0.1"), "127.0.0.1:7600");
        assert_eq!(with_default_port("broker.internal"), "broker.internal:7600");
        assert_eq!(with_default_port("::1"), "[::1]:7600");
        assert_eq!(with_default_port("[::1]"), "[::1]:7600");
        assert_eq!(with_default_port("[::1]:7700"), "[::1]:7700");
        assert_eq!(with_default_port("127.0.0.1:7700"), "127.0.0.1:7700");
        assert_eq!(
            with_default_port("broker.internal:7700"),
            "broker.internal:7700"
        );
    }

    #[test]
    fn serve_sizes_the_runtime_and_other_commands_keep_its_default() {
        use clap::Parser;
        let workers = |args: &[&str]| {
            let cli = Cli::try_parse_from(args).expect("arguments parse");
            prepare(cli).expect("settings load").worker_threads()
        };
        assert_eq!(workers(&["squall", "serve"]), None, "0: one per core");
        assert_eq!(
            workers(&["squall", "serve", "--worker-threads", "3"]),
            Some(3)
        );
        assert_eq!(workers(&["squall", "queues"]), None);
        let too_many = Cli::try_parse_from(["squall", "serve", "--worker-threads", "5000"]);
        assert!(prepare(too_many.unwrap()).is_err(), "over 1024 is refused");
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("1500"), Ok(Duration::from_millis(1500)));
        assert!(parse_duration("soon").is_err());
        assert_eq!(
            parse_backoff("1s..5m"),
            Ok((Duration::from_secs(1), Duration::from_secs(300)))
        );
        assert!(parse_backoff("5m..1s").is_err());
        assert!(parse_backoff("5m").is_err());
    }
}
