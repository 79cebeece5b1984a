//! The HTTP side: `/metrics` scraped and parsed after real traffic, `/healthz`, and
//! `/readyz` answering 503 while recovery runs and 200 once the broker serves.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::{http_get, spawn_squall, temp_data_dir, LogEvent, TestBroker, WAIT};
use squall_client::Client;

/// Parses exposition text (either format: samples are written alike) into
/// `name{labels}` → value (labels as written).
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
    out
}

/// GET /metrics with `accept`, returning the content type and the body.
async fn scrape_as(addr: std::net::SocketAddr, accept: &str) -> (String, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let req = format!(
        "GET /metrics HTTP/1.1\r\nHost: {addr}\r\nAccept: {accept}\r\nConnection: close\r\n\r\n"
    );
    stream.write_all(req.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    tokio::time::timeout(WAIT, stream.read_to_end(&mut raw))
        .await
        .unwrap()
        .unwrap();
    let text = String::from_utf8(raw).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    let content_type = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("content-type: ")
                .map(str::to_owned)
        })
        .expect("a content type");
    (content_type, body.to_owned())
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
    assert_eq!(metric(&m, "squall_store_checkpoint_seconds_total"), 0.0);
    assert_eq!(metric(&m, "squall_store_unavailable"), 0.0);
    assert_eq!(metric(&m, "squall_store_failed"), 0.0);

    // Which build, and the process's own figures.
    let version = env!("CARGO_PKG_VERSION");
    assert_eq!(
        metric(&m, &format!("squall_build_info{{version=\"{version}\"}}")),
        1.0
    );
    assert!(metric(&m, "process_resident_memory_bytes") > 1e6);
    assert!(
        metric(&m, "process_virtual_memory_bytes") >= metric(&m, "process_resident_memory_bytes")
    );
    assert!(metric(&m, "process_cpu_seconds_total") > 0.0);
    assert!(metric(&m, "process_open_fds") >= 3.0);
    assert!(metric(&m, "process_max_fds") >= metric(&m, "process_open_fds"));
    assert!(metric(&m, "process_start_time_seconds") > 1.6e9);

    assert_eq!(http_get(http, "/healthz").await.0, 200);
    assert_eq!(http_get(http, "/readyz").await, (200, "ready\n".to_owned()));
    assert_eq!(http_get(http, "/nope").await.0, 404);
}

/// The flow-control settings of each queue and its tasks that expired unstarted.
#[tokio::test]
async fn metrics_show_flow_control_settings_and_expired_tasks() {
    use squall_client::{PublishOptions, QueueConfigUpdate};
    let b = TestBroker::start().await;
    let c = Client::connect(b.addr).await.unwrap();
    let flow = QueueConfigUpdate::new()
        .max_in_flight(3)
        .rate_limit(5, 2)
        .drop_expired(true);
    c.set_queue_config("flow", flow).await.unwrap();
    c.publish("plain", "x").await.unwrap();
    let short = PublishOptions::new().expires_in(Duration::from_millis(1));
    for q in ["flow", "plain"] {
        c.publish_with(q, "late", short.clone()).await.unwrap();
    }
    // Expired at the hub's next turn after its expiry; the scrape comes after that.
    let mut m = HashMap::new();
    for _ in 0..100 {
        m = parse_metrics(&http_get(b.http_addr(), "/metrics").await.1);
        if m.get(r#"squall_queue_expired_tasks_total{queue="plain"}"#) == Some(&1.0) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for (series, want) in [
        (r#"squall_queue_max_in_flight{queue="flow"}"#, 3.0),
        (r#"squall_queue_rate_limit{queue="flow"}"#, 5.0),
        (r#"squall_queue_rate_burst{queue="flow"}"#, 2.0),
        (r#"squall_queue_drop_expired{queue="flow"}"#, 1.0),
        (r#"squall_queue_keep_acked{queue="flow"}"#, 0.0),
        (r#"squall_queue_expired_tasks_total{queue="flow"}"#, 1.0),
        (r#"squall_queue_tasks{queue="flow",state="dead"}"#, 0.0),
        (r#"squall_queue_max_in_flight{queue="plain"}"#, 0.0),
        (r#"squall_queue_rate_limit{queue="plain"}"#, 0.0),
        (r#"squall_queue_rate_burst{queue="plain"}"#, 0.0),
        (r#"squall_queue_drop_expired{queue="plain"}"#, 0.0),
        (r#"squall_queue_expired_tasks_total{queue="plain"}"#, 1.0),
        (r#"squall_queue_tasks{queue="plain",state="dead"}"#, 1.0),
        (r#"squall_queue_tasks{queue="plain",state="ready"}"#, 1.0),
    ] {
        assert_eq!(metric(&m, series), want, "{series}");
    }
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

#[tokio::test]
async fn metrics_are_plain_text_unless_openmetrics_is_asked_for() {
    let b = TestBroker::start().await;
    let c = Client::connect(b.addr).await.unwrap();
    c.publish("m", "x").await.unwrap();
    let http = b.http_addr();

    // What curl sends, and what Prometheus sends when it wants OpenMetrics.
    let (kind, text) = scrape_as(http, "*/*").await;
    assert!(kind.starts_with("text/plain; version=0.0.4"), "{kind}");
    assert!(!text.contains("# EOF"), "no OpenMetrics end marker");
    assert!(!text.contains("# UNIT"), "no OpenMetrics units");
    assert!(text.contains("# TYPE squall_queue_published_total counter\n"));
    assert!(text.contains("# HELP squall_queue_published_total "));
    assert!(text.contains("# TYPE squall_publish_confirm_seconds histogram\n"));
    let (kind, om) = scrape_as(
        http,
        "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1",
    )
    .await;
    assert!(kind.starts_with("application/openmetrics-text"), "{kind}");
    assert!(om.ends_with("# EOF\n"));
    assert!(om.contains("# TYPE squall_queue_published counter\n"));
    // The same samples either way.
    let (a, b) = (parse_metrics(&text), parse_metrics(&om));
    assert_eq!(
        metric(&a, r#"squall_queue_published_total{queue="m"}"#),
        metric(&b, r#"squall_queue_published_total{queue="m"}"#)
    );
    assert_eq!(a.len(), b.len());
}
