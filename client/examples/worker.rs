//! A worker for the `emails` queue that processes, retries and dead-letters:
//! - `not-an-address` payloads (no `@`) go to the dead set at once (`TaskError::dead`);
//! - `flaky@...` fails on its first two attempts and is retried after 1 s;
//! - anything else is "sent" and acked; the lease is extended while a slow send runs.
//!
//! Ctrl-C stops taking tasks, lets running handlers finish (10 s grace), and returns
//! what is unfinished to the broker.
//!
//! Run a broker, then: `cargo run -p squall-client --example worker [ADDR]`
//! (ADDR defaults to $SQUALL_SERVER, then 127.0.0.1:7600).

use std::time::Duration;

use squall_client::{Client, Task, TaskError};

#[tokio::main]
async fn main() -> Result<(), squall_client::ClientError> {
    let addr = std::env::args()
        .nth(1)
        .or_else(|| std::env::var("SQUALL_SERVER").ok())
        .unwrap_or_else(|| squall_client::DEFAULT_ADDR.to_owned());
    let client = Client::builder()
        .client_name("example-worker")
        .connect(&addr)
        .await?;
    println!("worker connected to {addr}; Ctrl-C to stop");

    let report = client
        .worker("emails")
        .concurrency(4)
        .grace_period(Duration::from_secs(10))
        .run_until(send_email, tokio::signal::ctrl_c())
        .await?;
    println!(
        "stopped: {} acked, {} retried, {} dead, {} returned",
        report.acked, report.retried, report.dead, report.returned
    );
    client.close().await;
    Ok(())
}

async fn send_email(task: Task) -> Result<String, TaskError> {
    let address = std::str::from_utf8(task.payload())
        .map_err(|e| TaskError::dead(format!("payload is not UTF-8: {e}")))?;
    if !address.contains('@') {
        return Err(TaskError::dead(format!(
            "{address:?} is not an email address"
        )));
    }
    if address.starts_with("flaky@") && task.attempt() < 3 {
        println!(
            "task {}: {address} failed (attempt {})",
            task.id(),
            task.attempt()
        );
        return Err(TaskError::retry_after(
            Duration::from_secs(1),
            "mail server said 421, try again later",
        ));
    }
    // A slow send: the worker extends the lease meanwhile.
    tokio::time::sleep(Duration::from_millis(200)).await;
    println!(
        "task {}: sent to {address} (attempt {})",
        task.id(),
        task.attempt()
    );
    Ok(format!("sent to {address}"))
}
