//! Command-line interface: one file per subcommand, plus the argument types they share
//! (durations, server address) and the mapping of errors to exit codes. This is the
//! binary's edge, the only place that uses `anyhow`.

mod serve;

use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};

/// Exit code for invalid configuration or usage (sysexits EX_USAGE).
pub const EXIT_USAGE: u8 = 64;

/// Squall: a durable task broker.
#[derive(Debug, Parser)]
#[command(name = "squall", version, about, propagate_version = true)]
pub struct Cli {
    /// Log output format.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text, env = "SQUALL_LOG_FORMAT")]
    pub log_format: LogFormat,
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

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the broker.
    Serve(serve::ServeArgs),
}

/// Runs a subcommand to completion.
pub async fn run(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Serve(args) => serve::run(args).await,
    }
}

/// Sets up `tracing` with `RUST_LOG` filtering (default `info`) on standard error.
pub fn init_tracing(format: LogFormat) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    use std::io::IsTerminal;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
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
    e.downcast_ref::<Exit>().map(|x| x.code).unwrap_or(1)
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
