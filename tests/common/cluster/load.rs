//! Load for the cluster tests: producers publishing numbered payloads to one queue and
//! a consumer acking every delivery, all of it recorded in a `Checker` (`ledger.rs`).
//! The clients are given every member and follow the leader by themselves. Not here:
//! the faults, and the promises (the checker's).

use std::future::IntoFuture;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use squall_client::{CancellationToken, Client, Delivery};
use tokio::task::JoinHandle;

use super::ledger::{Checker, Summary};
use super::{cluster_client, WITHIN};

/// Numbers the loads of a test binary, so payloads stay unique across loads.
static LOADS: AtomicUsize = AtomicUsize::new(0);

/// Producers and a consumer running against a cluster.
pub struct Load {
    checker: Arc<Checker>,
    stop_producing: CancellationToken,
    stop_consuming: CancellationToken,
    producers: Vec<JoinHandle<()>>,
    consumer: Option<JoinHandle<()>>,
}

impl Load {
    /// `producers` producers publishing to `queue` one publish every `pace` each (as fast
    /// as they are answered with a zero pace), and one consumer (prefetch 8) acking
    /// every delivery; the clients are given the members' client addresses `everyone`.
    pub async fn start(
        everyone: &str,
        queue: &str,
        producers: usize,
        pace: Duration,
        checker: Arc<Checker>,
    ) -> Load {
        let stop_producing = CancellationToken::new();
        let stop_consuming = CancellationToken::new();
        let consumer = tokio::spawn(consume(
            cluster_client(everyone).await,
            queue.to_owned(),
            checker.clone(),
            stop_consuming.clone(),
        ));
        let client = cluster_client(everyone).await;
        let load = LOADS.fetch_add(1, Ordering::Relaxed);
        let producers = (0..producers)
            .map(|k| {
                tokio::spawn(produce(
                    client.clone(),
                    queue.to_owned(),
                    format!("{queue}/{load}/{k}"),
                    pace,
                    checker.clone(),
                    stop_producing.clone(),
                ))
            })
            .collect();
        Load {
            checker,
            stop_producing,
            stop_consuming,
            producers,
            consumer: Some(consumer),
        }
    }

    pub fn checker(&self) -> &Arc<Checker> {
        &self.checker
    }

    /// Waits until at least `n` more publishes are confirmed than now (the cluster
    /// goes on), failing the test after `within`.
    pub async fn confirms(&self, n: usize, within: Duration) {
        let from = self.checker.summary().confirmed;
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let now = self.checker.summary();
            if now.confirmed >= from + n {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{} publishes confirmed within {within:?}, {n} expected: {now}",
                now.confirmed - from
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Stops the producers (each finishes the publish it is in) and waits for them.
    pub async fn stop_producing(&mut self) {
        self.stop_producing.cancel();
        for p in self.producers.drain(..) {
            p.await.expect("a producer panicked");
        }
    }

    /// Stops producing, waits until every confirmed publish was delivered, lets any
    /// acked task that was about to come back come, stops the consumer and checks every
    /// promise (the test fails on any broken one). Returns the counts.
    pub async fn finish(mut self) -> Summary {
        self.stop_producing().await;
        self.checker.all_delivered(WITHIN).await;
        tokio::time::sleep(Duration::from_millis(500)).await;
        self.stop_consuming.cancel();
        if let Some(c) = self.consumer.take() {
            c.await.expect("the consumer panicked");
        }
        self.checker.verify()
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.stop_producing.cancel();
        self.stop_consuming.cancel();
    }
}

async fn produce(
    client: Client,
    queue: String,
    prefix: String,
    pace: Duration,
    checker: Arc<Checker>,
    stop: CancellationToken,
) {
    let mut i = 0u64;
    while !stop.is_cancelled() {
        let payload = format!("{prefix}-{i}");
        i += 1;
        checker.publishing(&payload);
        let published = client.publish(queue.as_str(), payload.clone()).await;
        checker.published(&payload, &published);
        if !pace.is_zero() {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(pace) => {}
            }
        }
    }
}

/// Takes every delivery of `queue` and acks it; subscribes again if the subscription
/// ends (the client re-subscribes by itself after a reconnect; this covers a
/// subscription given up for good while no leader served). Deliveries are taken from
/// the subscription as they arrive (the time they were received is what the checker
/// compares with acks) and acked one at a time by a second task.
async fn consume(client: Client, queue: String, checker: Arc<Checker>, stop: CancellationToken) {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(Instant, Delivery)>();
    let acker = {
        let (checker, stop, client) = (checker.clone(), stop.clone(), client.clone());
        tokio::spawn(async move {
            loop {
                let next = tokio::select! {
                    _ = stop.cancelled() => return,
                    next = rx.recv() => next,
                };
                let Some((received, delivery)) = next else {
                    return;
                };
                let payload = String::from_utf8_lossy(delivery.payload()).into_owned();
                let how = format!(
                    "attempt {} from node {}",
                    delivery.attempt(),
                    client.server_info().node_id
                );
                checker.delivered(&payload, delivery.id(), received, &how);
                if delivery.ack().await.is_ok() {
                    checker.acked(&payload);
                }
            }
        })
    };
    while !stop.is_cancelled() {
        let sub = tokio::select! {
            _ = stop.cancelled() => break,
            sub = client.subscribe(queue.as_str()).prefetch(8).into_future() => sub,
        };
        let Ok(mut sub) = sub else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        loop {
            let next = tokio::select! {
                _ = stop.cancelled() => break,
                next = sub.recv() => next,
            };
            let Some(Ok(delivery)) = next else { break };
            let _ = tx.send((Instant::now(), delivery));
        }
    }
    let _ = acker.await;
}
