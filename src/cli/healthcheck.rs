//! `squall healthcheck`: one HTTP GET of a broker's `/healthz` (or `/readyz`), exit 0
//! on 200 and 1 otherwise. For container health checks and scripts on hosts without
//! curl (the distroless image has no shell). Plain HTTP/1.1 over a TCP stream: no
//! client library, no redirects, bounded by `--timeout`.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::parse_duration;

/// Ask a broker's HTTP port whether it is alive (or ready).
#[derive(Debug, Args)]
pub struct HealthcheckArgs {
    /// The broker's HTTP address (its `--http`).
    #[arg(
        long,
        env = "SQUALL_HTTP",
        default_value = "127.0.0.1:7601",
        value_name = "ADDR"
    )]
    http: String,
    /// Path to get: /healthz (alive) or /readyz (recovered and serving).
    #[arg(long, default_value = "/healthz")]
    path: String,
    /// Give up after this long.
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    timeout: Duration,
}

pub async fn run(args: HealthcheckArgs) -> anyhow::Result<ExitCode> {
    // A broker listening on 0.0.0.0 is reached on loopback.
    let addr = args
        .http
        .replace("0.0.0.0", "127.0.0.1")
        .replace("[::]", "[::1]");
    let status = tokio::time::timeout(args.timeout, get_status(&addr, &args.path))
        .await
        .with_context(|| {
            format!(
                "no answer from http://{addr}{} within {:?}",
                args.path, args.timeout
            )
        })??;
    if status == 200 {
        println!("ok: http://{addr}{} answered 200", args.path);
        Ok(ExitCode::SUCCESS)
    } else {
        println!("unhealthy: http://{addr}{} answered {status}", args.path);
        Ok(ExitCode::FAILURE)
    }
}

/// The status code of `GET path` on `addr`.
async fn get_status(addr: &str, path: &str) -> anyhow::Result<u16> {
    let mut stream = TcpStream::connect(addr)
        .await
        .with_context(|| format!("cannot connect to {addr}"))?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await?;
    let mut head = Vec::with_capacity(256);
    let mut buf = [0u8; 256];
    // The status line is all we need; stop reading at its end (or at 4 KiB).
    while !head.contains(&b'\n') && head.len() < 4096 {
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        head.extend_from_slice(&buf[..n]);
    }
    parse_status_line(&head).with_context(|| format!("{addr} did not answer with HTTP"))
}

/// `HTTP/1.1 200 OK` -> 200.
fn parse_status_line(head: &[u8]) -> Option<u16> {
    let line = head.split(|&b| b == b'\n').next()?;
    let line = std::str::from_utf8(line).ok()?;
    let mut parts = line.split_whitespace();
    parts.next().filter(|v| v.starts_with("HTTP/"))?;
    parts.next()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::parse_status_line;

    #[test]
    fn status_lines() {
        assert_eq!(parse_status_line(b"HTTP/1.1 200 OK\r\nx: y\r\n"), Some(200));
        assert_eq!(
            parse_status_line(b"HTTP/1.1 503 Service Unavailable\r\n"),
            Some(503)
        );
        assert_eq!(parse_status_line(b"SSH-2.0-OpenSSH\r\n"), None);
        assert_eq!(parse_status_line(b""), None);
    }
}
