//! Issue 19, fault 1: 100,000 queues must not freeze the broker. The hub's periodic
//! work (rate sampling, scrapes) must stay linear in the number of queues and bounded
//! per turn, SIGTERM must end the broker within its shutdown grace, and `/metrics`
//! must stay small (the deepest `metrics_queue_limit` queues one by one, the rest
//! summed). Before the fix, rate sampling compared every queue with every other every
//! 5 s: with 100,000 queues the hub stalled for minutes and a SIGTERM took 86 s.

mod common;

use std::time::{Duration, Instant};

use common::{http_get, temp_data_dir, ChildBroker};
use squall_client::{Client, Message};

const QUEUES: usize = 100_000;
/// Tasks per publish (the broker's default `max_batch`).
const BATCH: usize = 1_000;
/// Publishes in flight at once.
const PIPELINE: usize = 8;
/// Longer than two rate-sampling periods (5 s each): the second pass meets every
/// queue's history from the first.
const SAMPLING: Duration = Duration::from_secs(12);
const GRACE: Duration = Duration::from_secs(5);
/// An exit this long after the grace means the broker did not keep it: shutdown waits
/// for the hub, which had been stuck for minutes in the quadratic sampling.
const EXIT_SLACK: Duration = Duration::from_secs(20);
/// `/metrics` with the default `metrics_queue_limit` of 100 (it was 203 MB with 100k
/// queues exported one by one).
const METRICS_BOUND: usize = 512 * 1024;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_thousand_queues_keep_shutdown_within_grace_and_metrics_small() {
    let (_dir, path) = temp_data_dir();
    let grace = format!("{}s", GRACE.as_secs());
    let broker = ChildBroker::spawn(&path, &["--fsync", "never", "--shutdown-grace", &grace]);
    let client = Client::connect(broker.addr).await.expect("connect");

    // One task to each of 100,000 queues, 1,000 queues per publish, 8 publishes in flight.
    let batches: Vec<Vec<Message>> = (0..QUEUES / BATCH)
        .map(|b| {
            (b * BATCH..(b + 1) * BATCH)
                .map(|i| Message::new(format!("many-{i:06}"), "x"))
                .collect()
        })
        .collect();
    for group in batches.chunks(PIPELINE) {
        let publishes = group.iter().map(|b| client.publish_batch(b.clone()));
        for published in futures_util::future::join_all(publishes).await {
            assert_eq!(published.expect("publish").len(), BATCH);
        }
    }
    // A deeper queue, which the scrape must export by name.
    client
        .publish_batch((0..5).map(|i| Message::new("many-deep", i.to_string())))
        .await
        .expect("publish to the deep queue");

    // Let the hub sample every queue's rates twice, and check it still answers.
    tokio::time::sleep(SAMPLING).await;
    let after_sampling = client.publish("many-probe", "still served").await;
    assert!(after_sampling.is_ok(), "{after_sampling:?}");

    let http = broker.http.expect("http port");
    let (status, body) = http_get(http, "/metrics").await;
    assert_eq!(status, 200, "{body}");
    assert!(
        body.len() < METRICS_BOUND,
        "/metrics is {} bytes with {QUEUES} queues",
        body.len()
    );
    let total = QUEUES + 2;
    assert!(
        body.contains(&format!("\nsquall_queues {total}\n")),
        "the queue count is exported"
    );
    assert!(
        body.contains(r#"squall_queue_tasks{queue="many-deep",state="ready"} 5"#),
        "the deepest queue is exported by name"
    );
    let others = total - 100;
    assert!(
        body.contains(&format!(
            r#"squall_queue_published_total{{queue="(other)"}} {others}"#
        )),
        "the other queues are summed"
    );
    client.close().await;

    let asked = Instant::now();
    let status = broker.terminate_within(GRACE + EXIT_SLACK);
    assert!(status.success(), "exit status {status}");
    eprintln!("SIGTERM to exit with {total} queues: {:?}", asked.elapsed());
}
