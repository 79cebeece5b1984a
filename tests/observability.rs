//! The HTTP side: `/metrics` scraped and parsed after real traffic, `/healthz`, and
//! `/readyz` answering 503 while recovery runs and 200 once the broker serves.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::{http_get, spawn_squall, temp_data_dir, LogEvent, TestBroker, WAIT};
use squall_client::Client;

/// Parses OpenMetrics text into `name{labels}` → value (labels as written).
fn parse_metrics(text: &str) -> HashMap<String, f64> {
    let mut out = HashMap::new();
    for line in text.lines() {
        if line.starts_with('#') || line.is_empty() {
            continue;
        }
        let (series, value) = line.rsplit_once(' ').expect("`series value` line");
        let value: f64 = value
            .parse()
            .unwrap_or_else(|_| panic!("bad value in {line:?}"));
        assert!(
            out.insert(series.to_owned(), value).is_none(),
            "duplicate {series}"
        );
    }
    assert!(
        text.ends_with("# EOF\n"),
        "OpenMetrics text ends with # EOF"
    );
    out
}

fn metric(m: &HashMap<String, f64>, series: &str) -> f64 {
    *m.get(series).unwrap_or_else(|| {
        panic!("no series {series}; have: {:?}", {
            let mut k: Vec<_> = m.keys().collect();
            k.sort();
            k
        })
    })
}

#[tokio::test]
async fn metrics_reflect_traffic() {
    let b = TestBroker::start().await;
    let http = b.http_addr();
    let c = Client::connect(b.addr).await.unwrap();
    for i in 0..5 {
        c.publish("m", format!("t{i}")).await.unwrap();
    }
    let mut sub = c.subscribe("m").prefetch(3).await.unwrap();
    for _ in 0..3 {
        sub.recv().await.unwrap().unwrap().ack().await.unwrap();
    }
    let d = sub.recv().await.unwrap().unwrap();
    d.fail("nope").await.unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;

    let (status, body) = http_get(http, "/metrics").await;
    assert_eq!(status, 200);
    let m = parse_metrics(&body);
    assert_eq!(
        metric(&m, r#"squall_queue_published_total{queue="m"}"#),
        5.0
    );
    assert_eq!(metric(&m, r#"squall_queue_acked_total{queue="m"}"#), 3.0);
    assert_eq!(metric(&m, r#"squall_queue_nacked_total{queue="m"}"#), 1.0);
    assert_eq!(
        metric(&m, r#"squall_queue_dead_lettered_total{queue="m"}"#),
        1.0
    );
    assert_eq!(
        metric(&m, r#"squall_queue_tasks{queue="m",state="ready"}"#),
        0.0
    );
    assert_eq!(
        metric(&m, r#"squall_queue_tasks{queue="m",state="leased"}"#),
        1.0
    );
    assert_eq!(
        metric(&m, r#"squall_queue_tasks{queue="m",state="dead"}"#),
        1.0
    );
    assert_eq!(metric(&m, r#"squall_queue_consumers{queue="m"}"#), 1.0);
    assert_eq!(metric(&m, "squall_ready"), 1.0);
    assert!(metric(&m, "squall_connections") >= 1.0);
    assert!(metric(&m, "squall_connections_accepted_total") >= 1.0);
    // Histograms: every publish confirmation was observed; every batch was fsynced.
    assert_eq!(metric(&m, "squall_publish_confirm_seconds_count"), 5.0);
    assert_eq!(
        metric(&m, r#"squall_publish_confirm_seconds_bucket{le="+Inf"}"#),
        5.0
    );
    assert!(metric(&m, "squall_publish_confirm_seconds_sum") > 0.0);
    let mut buckets: Vec<(f64, f64)> = m
        .iter()
        .filter_map(|(k, v)| {
            let le = k.strip_prefix("squall_publish_confirm_seconds_bucket{le=\"")?;
            let le = le.trim_end_matches("\"}");
            Some((le.parse::<f64>().unwrap_or(f64::INFINITY), *v))
        })
        .collect();
    buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    assert!(buckets.len() > 10);
    assert!(
        buckets.windows(2).all(|w| w[0].1 <= w[1].1),
        "buckets are cumulative: {buckets:?}"
    );
    let batches = metric(&m, "squall_store_batches_total");
    assert!(batches >= 5.0, "{batches}");
    assert!(metric(&m, "squall_group_commit_seconds_count") >= batches);
    assert!(metric(&m, "squall_fsync_seconds_count") >= 1.0);
    assert!(
        metric(&m, "squall_group_commit_batch_jobs_sum") >= 9.0,
        "5 publishes, 3 acks, 1 nack"
    );
    // The journal: one preallocated segment, no checkpoint yet, the store available.
    assert!(metric(&m, "squall_journal_bytes") > 0.0);
    assert_eq!(metric(&m, "squall_store_checkpoints_total"), 0.0);
    assert_eq!(
        metric(&m, "squall_store_checkpoint_microseconds_total"),
        0.0
    );
    assert_eq!(metric(&m, "squall_store_unavailable"), 0.0);
    assert_eq!(metric(&m, "squall_store_failed"), 0.0);

    assert_eq!(http_get(http, "/healthz").await.0, 200);
    assert_eq!(http_get(http, "/readyz").await, (200, "ready\n".to_owned()));
    assert_eq!(http_get(http, "/nope").await.0, 404);
}

#[tokio::test]
async fn readyz_waits_for_recovery() {
    let (_dir, data) = temp_data_dir();
    let data = data.to_str().unwrap().to_owned();
    let (child, events) = spawn_squall(
        &["--listen", "127.0.0.1:0", "--data-dir", &data],
        &[("SQUALL_TEST_RECOVERY_DELAY_MS", "1500")],
    );
    // Killed if the test fails before it stops the broker itself.
    let mut child = Reap(child);
    let http = match events.recv_timeout(WAIT) {
        Ok(LogEvent::Http(a)) => a,
        Ok(LogEvent::Listening(_)) => panic!("the protocol port came up before HTTP"),
        Err(e) => panic!("no http line: {e}"),
    };
    // Recovery is sleeping: alive, not ready, and the protocol port is not up.
    assert_eq!(http_get(http, "/healthz").await.0, 200);
    let (status, body) = http_get(http, "/readyz").await;
    assert_eq!(status, 503, "{body}");
    let (status, body) = http_get(http, "/metrics").await;
    assert_eq!(status, 200);
    assert!(body.contains("squall_ready 0"), "{body}");
    // (The 503 and `squall_ready 0` above were seen before the listen line: that is
    // the property. Whether recovery is still running now depends on machine load.)
    let addr = match events.recv_timeout(WAIT) {
        Ok(LogEvent::Listening(a)) => a,
        _ => panic!("broker never listened"),
    };
    assert_eq!(http_get(http, "/readyz").await.0, 200);
    let c = Client::connect(addr).await.expect("serving after recovery");
    c.close().await;
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &child.0.id().to_string()])
        .status();
    let status = child.0.wait().unwrap();
    assert!(status.success(), "{status}");
}

#[tokio::test]
async fn http_off_serves_nothing() {
    let b = TestBroker::start_with(|c| c.http = None).await;
    assert_eq!(b.handle().http_addr(), None);
}

/// Kills and reaps a child broker when dropped, so a failing test leaves no process.
struct Reap(std::process::Child);

impl Drop for Reap {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
