//! Async Rust client for [Squall](https://example.invalid/squall), a durable task
//! broker: publish tasks, consume them under leases, run workers that hide
//! reconnects and lease extension.
//!
//! The crate root holds these docs and re-exports; the code is in one module per
//! concern (`client` handle and reconnects, `conn` socket I/O, `publish`,
//! `subscription`, `delivery`, `worker`, `error`, `config`, `backoff`).
//!
//! # Quick start (5 minutes)
//!
//! 1. Start a broker: `cargo run --release -- serve` in the Squall repository (it
//!    listens on `127.0.0.1:7600`).
//! 2. Add the crate and tokio to your project: `squall-client`, and
//!    `tokio = { version = "1", features = ["full"] }`.
//! 3. Publish. Each call returns once the broker has the task on disk:
//!
//! ```no_run
//! use std::time::Duration;
//! use squall_client::{Client, PublishOptions};
//!
//! #[tokio::main]
//! async fn main() -> Result<(), squall_client::ClientError> {
//!     let client = Client::connect("127.0.0.1:7600").await?;
//!     let task = client.publish("emails", "hello@example.com").await?;
//!     println!("task {} is durable", task.id);
//!
//!     let opts = PublishOptions::new()
//!         .priority(5)
//!         .delay(Duration::from_secs(10))
//!         .max_attempts(3)
//!         .header("tenant", "acme");
//!     client.publish_with("emails", "later@example.com", opts).await?;
//!     Ok(())
//! }
//! ```
//!
//! 4. Run a worker. It runs the handler for each task (8 at a time by default),
//!    extends the lease while the handler runs, acks on `Ok`, nacks with the error's
//!    text on `Err`, and on Ctrl-C finishes what it started before returning:
//!
//! ```no_run
//! use std::time::Duration;
//! use squall_client::{Client, Task, TaskError};
//!
//! #[tokio::main]
//! async fn main() -> Result<(), squall_client::ClientError> {
//!     let client = Client::connect("127.0.0.1:7600").await?;
//!     client
//!         .worker("emails")
//!         .concurrency(8)
//!         .grace_period(Duration::from_secs(20))
//!         .run_until(handle, tokio::signal::ctrl_c())
//!         .await?;
//!     Ok(())
//! }
//!
//! async fn handle(task: Task) -> Result<(), TaskError> {
//!     // A payload that can never work: straight to the dead set.
//!     let address = std::str::from_utf8(task.payload()).map_err(TaskError::dead)?;
//!     if address.is_empty() {
//!         return Err(TaskError::dead("empty address"));
//!     }
//!     // A transient failure: retry in 30 s (or `?` any error: retry with backoff).
//!     if address.ends_with(".invalid") {
//!         return Err(TaskError::retry_after(Duration::from_secs(30), "mail server unreachable"));
//!     }
//!     println!("sending to {address} (attempt {})", task.attempt());
//!     Ok(())
//! }
//! ```
//!
//! 5. Or consume by hand with a [`Subscription`] (a `Stream` of [`Delivery`]s):
//!
//! ```no_run
//! # async fn demo(client: squall_client::Client) -> Result<(), squall_client::ClientError> {
//! let mut sub = client.subscribe("emails").prefetch(16).await?;
//! while let Some(delivery) = sub.recv().await {
//!     let delivery = delivery?;
//!     match std::str::from_utf8(delivery.payload()) {
//!         Ok(text) => {
//!             println!("{text}");
//!             delivery.ack().await?;
//!         }
//!         Err(_) => delivery.fail("payload is not UTF-8").await?,
//!     }
//! }
//! # Ok(()) }
//! ```
//!
//! `delivery.ack().await` waits for the broker's confirmation before the loop takes
//! the next delivery. To keep many acks in flight instead, [`Delivery::ack_now`] sends
//! the ack at once and returns a [`Settlement`] to await later (alone, in a batch, or
//! in any order).
//!
//! The runnable versions are `examples/producer.rs` and `examples/worker.rs`
//! (`cargo run -p squall-client --example worker -- 127.0.0.1:7600`).
//!
//! # Connections and reconnects
//!
//! A [`Client`] is one TCP connection; clone it freely, every clone pipelines its
//! requests over that connection. When the connection is lost the client reconnects
//! in the background with capped exponential backoff and jitter
//! ([`ReconnectPolicy`]) and re-subscribes every live [`Subscription`] (the stream
//! continues). Calls made while disconnected wait up to
//! [`ClientBuilder::wait_for_connection`] and then fail with
//! [`ClientError::Unavailable`]; every request is bounded by
//! [`ClientBuilder::request_timeout`]. Nothing waits forever.
//!
//! The broker frees every lease of a connection when it closes, so **leases never
//! survive a reconnect**: settling a delivery received on a lost connection fails
//! locally with [`ClientError::LeaseExpired`] (no round trip), and the task is
//! redelivered. Deliveries still buffered in a subscription from a lost connection are
//! skipped.
//!
//! # Retries
//!
//! The client re-sends a request that may have reached the broker only when that is
//! safe: a publish in which **every** task carries an
//! [`idempotency_key`](PublishOptions::idempotency_key) is sent again (up to twice)
//! after a `Timeout` or `ConnectionLost`, because the broker answers a repeated key
//! (same queue, within the queue's dedup window, 5 minutes by default) with the first
//! task's id and stores nothing new. [`Published::duplicate`] is then `true` if the
//! first attempt had landed. Connected to a replicated cluster (its leader's `HelloOk`
//! names the cluster), the client numbers **every** publish (a producer id of its own
//! and a sequence number; the cluster remembers each producer's last 256 numbered
//! publishes, for 5 minutes after its latest), so every publish whose outcome is
//! unknown (`Timeout`, `ConnectionLost`, `NOT_LEADER` after a leader change) is sent
//! again, to the new leader, the same way. A number the cluster no longer remembers is
//! refused with `SEQUENCE_TOO_OLD`: the client sends a first send again under a new
//! number by itself; for a retry the error reaches you (the outcome is unknown).
//! [`Client::wait_result`] resumes its wait after a lost connection. Nothing else is
//! re-sent. What you may retry yourself:
//!
//! | operation | after `Unavailable` / `Invalid` | after `Timeout` / `ConnectionLost` |
//! |---|---|---|
//! | `publish*` without idempotency key, single broker | yes (nothing was sent) | **no**: it may have been stored; retrying can duplicate |
//! | `publish*` to a replicated cluster | yes | the client already did twice with the same numbers; a new publish gets new numbers (it can duplicate) |
//! | `publish*` with an idempotency key on every task | yes | yes, with the same keys, within the dedup window (the client already did twice) |
//! | `ack` / `nack` / `fail` | yes | no need: the lease died with the connection and the task is redelivered |
//! | `extend` | yes | the lease is gone if the connection is; stop working on the task |
//! | `subscribe`, `ping`, `task`, `wait_result` | yes | yes |
//!
//! [`ClientError::nothing_was_applied`] tells whether an error guarantees that nothing
//! happened on the broker.
//!
//! # Administration
//!
//! The same client inspects and manages queues: [`Client::queues`], [`Client::queue`],
//! [`Client::set_queue_config`] (with a [`QueueConfigUpdate`]), [`Client::pause`],
//! [`Client::resume`], [`Client::peek`] (non-destructive), [`Client::purge`],
//! [`Client::redrive`] and [`Client::delete_queue`]. Deleting a queue ends its
//! subscriptions: their streams yield [`ClientError::SubscriptionEnded`], then end.
//!
//! ```no_run
//! # async fn demo(client: squall_client::Client) -> Result<(), squall_client::ClientError> {
//! use squall_client::StateFilter;
//!
//! for q in client.queues().await? {
//!     println!("{}: {} ready, {} dead", q.name, q.ready, q.dead);
//! }
//! for task in client.peek("emails", StateFilter::Dead, 10).await? {
//!     println!("task {} died: {:?}", task.id, task.last_error);
//! }
//! client.redrive("emails", None).await?;
//! # Ok(()) }
//! ```
//!
//! # Several nodes
//!
//! Past one machine, run several independent brokers and let the client spread the
//! queues: [`Client::cluster`] (or [`ClientBuilder::connect_cluster`]) returns a
//! [`ClusterClient`] that maps each queue to one node by rendezvous hashing of the
//! queue name ([`rendezvous_weight`] defines the hash; every client must list the same
//! node names). Publishing, subscribing, workers ([`ClusterClient::worker`] for one
//! queue, [`ClusterWorker`] for many), status and admin calls go to the owning node;
//! task ids are per node, so status takes the queue: `cluster.task(queue, id)`. A node
//! that is down fails only its own queues, at once, with
//! [`ClientError::NodeUnavailable`]; the client reconnects when it is back.
//!
//! ```no_run
//! # async fn demo() -> Result<(), squall_client::ClientError> {
//! use squall_client::{Client, Task, TaskError};
//!
//! let cluster = Client::cluster(["a=10.0.0.1:7600", "b=10.0.0.2:7600", "c=10.0.0.3:7600"]).await?;
//! let id = cluster.publish("emails", "hello").await?.id;
//! println!("{} is on node {}", id, cluster.node_of("emails"));
//! cluster
//!     .workers(["emails", "reports"])
//!     .run_until(|_task: Task| async { Ok::<_, TaskError>(()) }, tokio::signal::ctrl_c())
//!     .await?;
//! # Ok(()) }
//! ```
//!
//! # Delivery semantics
//!
//! Delivery is at-least-once: a task whose lease expires, or whose consumer
//! disconnects, is delivered again, and a late settle gets
//! [`ClientError::LeaseExpired`]. Make handlers idempotent. Dropping a [`Delivery`]
//! without settling it releases the task for immediate redelivery (counted as an
//! attempt) and logs a warning.
#![deny(missing_docs)]
#![warn(rust_2018_idioms, unreachable_pub)]

mod admin;
mod backoff;
mod client;
mod cluster;
mod config;
mod conn;
mod delivery;
mod error;
mod info;
mod publish;
mod rendezvous;
mod schedule;
mod status;
mod subscription;
mod wire;
mod worker;

pub use admin::{
    PeekedTask, QueueConfigUpdate, QueueInfo, QueueRates, QueueSettings, QueueTotals, StateFilter,
    TaskPayload, MAX_PEEK,
};
pub use backoff::ReconnectPolicy;
pub use client::Client;
pub use cluster::{ClusterClient, ClusterWorker, NodeQueues};
pub use config::{
    tls_connector, ClientBuilder, DEFAULT_ADDR, DEFAULT_CONNECT_TIMEOUT, DEFAULT_KEEPALIVE,
    DEFAULT_REQUEST_TIMEOUT, DEFAULT_WAIT_FOR_CONNECTION,
};
pub use delivery::{Delivery, Settlement, Task};
pub use error::{ClientError, Result};
pub use info::{ClusterInfo, Limits, ServerInfo};
pub use publish::{Message, PublishOptions, Published, TaskId};
pub use rendezvous::{rendezvous_owner, rendezvous_weight};
pub use schedule::{CatchUp, ScheduleInfo, ScheduleSpec};
pub use squall_proto::ErrorCode;
pub use status::{LeaseInfo, TaskOutcome, TaskState, TaskStatus};
pub use subscription::{SubscribeBuilder, Subscription, DEFAULT_PREFETCH};
pub use tokio_util::sync::CancellationToken;
pub use worker::{
    HandlerOutput, TaskError, Worker, WorkerReport, DEFAULT_CONCURRENCY, DEFAULT_GRACE_PERIOD,
};

/// Refuses a queue name the broker would refuse (`[A-Za-z0-9._:-]{1,200}`).
pub(crate) fn check_queue_name(queue: &str) -> Result<()> {
    squall_proto::validate_queue_name(queue)
        .map_err(|e| ClientError::invalid(ErrorCode::InvalidQueueName, e.to_string()))
}

/// The repository README's Rust example, compiled as a doctest so it stays true.
#[cfg(doctest)]
#[doc = include_str!("../../README.md")]
pub struct ReadmeDoctests;
