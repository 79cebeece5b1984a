//! Publishes a handful of tasks to the `emails` queue: one at a time, one with
//! options, and a batch in one round trip. Some payloads are built to exercise the
//! worker example's failure paths (retry, dead set).
//!
//! Run a broker, then: `cargo run -p squall-client --example producer [ADDR]`
//! (ADDR defaults to $SQUALL_SERVER, then 127.0.0.1:7600).

use std::time::Duration;

use squall_client::{Client, Message, PublishOptions};

#[tokio::main]
async fn main() -> Result<(), squall_client::ClientError> {
    let addr = std::env::args()
        .nth(1)
        .or_else(|| std::env::var("SQUALL_SERVER").ok())
        .unwrap_or_else(|| squall_client::DEFAULT_ADDR.to_owned());
    let client = Client::builder()
        .client_name("example-producer")
        .connect(&addr)
        .await?;
    let info = client.server_info();
    println!(
        "connected to {addr} (node {}, squall {})",
        info.node_id, info.server_version
    );

    // One task, default options: returns once the broker has it on disk.
    let first = client.publish("emails", "alice@example.com").await?;
    println!("published task {}", first.id);

    // One task with options.
    let opts = PublishOptions::new()
        .priority(10)
        .max_attempts(5)
        .lease(Duration::from_secs(30))
        .header("tenant", "acme");
    let urgent = client
        .publish_with("emails", "urgent@example.com", opts)
        .await?;
    println!("published urgent task {}", urgent.id);

    // A batch in one round trip, all or nothing. `flaky` tasks fail twice before
    // succeeding (retries); `not-an-address` goes to the dead set.
    let batch = client
        .publish_batch([
            Message::new("emails", "bob@example.com"),
            Message::new("emails", "flaky@example.com")
                .with_options(PublishOptions::new().max_attempts(5)),
            Message::new("emails", "not-an-address"),
            Message::new("emails", "carol@example.com")
                .with_options(PublishOptions::new().delay(Duration::from_secs(5))),
        ])
        .await?;
    let ids: Vec<u64> = batch.iter().map(|p| p.id).collect();
    println!("published batch {ids:?}");

    client.close().await;
    Ok(())
}
