//! Snapshot tests: the exact text operators (and their scripts) see.

use super::*;

fn row(name: &str, ready: u64, paused: bool) -> QueueRow {
    QueueRow {
        name: name.to_owned(),
        node: None,
        owner: None,
        ready,
        delayed: 3,
        leased: 12,
        dead: 1,
        consumers: 4,
        paused,
        oldest_ready_age_ms: (ready > 0).then_some(133_000),
        totals: Totals {
            published: 1_234_567,
            delivered: 1_240_000,
            redelivered: 5_433,
            acked: 1_230_001,
            nacked: 5_400,
            expired: 33,
            dead_lettered: 1,
            expired_tasks: 0,
        },
        rates_per_sec: Rates {
            published: 1_523.4,
            delivered: 1_500.0,
            acked: 0.4,
            nacked: 0.0,
            expired: 0.0,
            dead_lettered: 0.0,
        },
        config: Config {
            lease_ms: 30_000,
            max_attempts: 5,
            backoff_min_ms: 1_000,
            backoff_max_ms: 600_000,
            max_length: 0,
            result_ttl_ms: 3_600_000,
            dedup_window_ms: 300_000,
            max_in_flight: 0,
            rate_limit: 0,
            rate_burst: 0,
            drop_expired: false,
            keep_acked: false,
        },
    }
}

const QUEUES_TABLE: &str = "\
QUEUE          READY  DELAYED  LEASED  DEAD  CONSUMERS  PUBLISHED  ACKED  NACKED  EXPIRED  PUB/S  ACK/S  OLDEST  STATE
emails         12.3k        3      12     1          4       1.2M   1.2M    5.4k       33   1.5k    0.4   2m13s  active
reports.daily      0        3      12     1          4       1.2M   1.2M    5.4k       33   1.5k    0.4       -  paused
";

#[test]
fn queues_table_snapshot() {
    let rows = [row("emails", 12_345, false), row("reports.daily", 0, true)];
    assert_eq!(queues_table(&rows), QUEUES_TABLE);
    assert_eq!(
        queues_table(&[]),
        "no queues yet (a queue appears on its first publish or subscribe)\n"
    );
}

const QUEUE_DETAIL: &str = "\
QUEUE   READY  DELAYED  LEASED  DEAD  CONSUMERS  PUBLISHED  ACKED  NACKED  EXPIRED  PUB/S  ACK/S  OLDEST  STATE
emails     42        3      12     1          4       1.2M   1.2M    5.4k       33   1.5k    0.4   2m13s  active

totals         published 1.2M, delivered 1.2M, redelivered 5.4k, acked 1.2M, nacked 5.4k, expired 33, dead-lettered 1, expired unstarted 0
rates/s (1m)   published 1.5k, delivered 1.5k, acked 0.4, nacked 0, expired 0, dead-lettered 0
lease          30s
max attempts   5
backoff        1s..10m
max length     unbounded
result ttl     1h
acks kept      with a result
dedup window   5m
max in flight  no cap
rate limit     none
expired tasks  dead-lettered
paused         no
";

#[test]
fn queue_detail_snapshot() {
    assert_eq!(queue_detail(&row("emails", 42, false)), QUEUE_DETAIL);
}

const QUEUES_JSON: &str = r#"[
  {
    "name": "emails",
    "ready": 12345,
    "delayed": 3,
    "leased": 12,
    "dead": 1,
    "consumers": 4,
    "paused": false,
    "oldest_ready_age_ms": 133000,
    "totals": {
      "published": 1234567,
      "delivered": 1240000,
      "redelivered": 5433,
      "acked": 1230001,
      "nacked": 5400,
      "expired": 33,
      "dead_lettered": 1,
      "expired_tasks": 0
    },
    "rates_per_sec": {
      "published": 1523.4,
      "delivered": 1500.0,
      "acked": 0.4,
      "nacked": 0.0,
      "expired": 0.0,
      "dead_lettered": 0.0
    },
    "config": {
      "lease_ms": 30000,
      "max_attempts": 5,
      "backoff_min_ms": 1000,
      "backoff_max_ms": 600000,
      "max_length": 0,
      "result_ttl_ms": 3600000,
      "dedup_window_ms": 300000,
      "max_in_flight": 0,
      "rate_limit": 0,
      "rate_burst": 0,
      "drop_expired": false,
      "keep_acked": false
    }
  },
  {
    "name": "idle",
    "ready": 0,
    "delayed": 3,
    "leased": 12,
    "dead": 1,
    "consumers": 4,
    "paused": true,
    "oldest_ready_age_ms": null,
    "totals": {
      "published": 1234567,
      "delivered": 1240000,
      "redelivered": 5433,
      "acked": 1230001,
      "nacked": 5400,
      "expired": 33,
      "dead_lettered": 1,
      "expired_tasks": 0
    },
    "rates_per_sec": {
      "published": 1523.4,
      "delivered": 1500.0,
      "acked": 0.4,
      "nacked": 0.0,
      "expired": 0.0,
      "dead_lettered": 0.0
    },
    "config": {
      "lease_ms": 30000,
      "max_attempts": 5,
      "backoff_min_ms": 1000,
      "backoff_max_ms": 600000,
      "max_length": 0,
      "result_ttl_ms": 3600000,
      "dedup_window_ms": 300000,
      "max_in_flight": 0,
      "rate_limit": 0,
      "rate_burst": 0,
      "drop_expired": false,
      "keep_acked": false
    }
  }
]
"#;

const CLUSTER_TABLE: &str = "\
NODE                       QUEUE          READY  DELAYED  LEASED  DEAD  CONSUMERS  PUBLISHED  ACKED  NACKED  EXPIRED  PUB/S  ACK/S  OLDEST  STATE
squall-0                   emails         12.3k        3      12     1          4       1.2M   1.2M    5.4k       33   1.5k    0.4   2m13s  active
squall-1 (owner squall-3)  old                0        3      12     1          4       1.2M   1.2M    5.4k       33   1.5k    0.4       -  active
squall-2                   reports.daily      0        3      12     1          4       1.2M   1.2M    5.4k       33   1.5k    0.4       -  paused
";

#[test]
fn cluster_queues_table_and_json_snapshot() {
    let on = |node: &str, owner: &str, mut r: QueueRow| {
        r.node = Some(node.to_owned());
        r.owner = Some(owner.to_owned());
        r
    };
    let rows = [
        on("squall-0", "squall-0", row("emails", 12_345, false)),
        on("squall-1", "squall-3", row("old", 0, false)),
        on("squall-2", "squall-2", row("reports.daily", 0, true)),
    ];
    assert_eq!(queues_table(&rows), CLUSTER_TABLE);
    let json = queues_json(&rows[..1]);
    let head = "[\n  {\n    \"name\": \"emails\",\n    \"node\": \"squall-0\",\n    \"owner\": \"squall-0\",\n    \"ready\": 12345,";
    assert!(json.starts_with(head), "{json}");
}

#[test]
fn queues_json_snapshot() {
    let rows = [row("emails", 12_345, false), row("idle", 0, true)];
    assert_eq!(queues_json(&rows), QUEUES_JSON);
}

#[test]
fn peek_table_and_json_snapshot() {
    let now = 10_000_000;
    let base = TaskRow {
        id: 7,
        state: "ready".into(),
        priority: 5,
        attempts: 0,
        max_attempts: 5,
        created_at_ms: now - 133_000,
        updated_at_ms: now - 133_000,
        not_before_ms: None,
        lease_holder: None,
        lease_deadline_ms: None,
        last_error: None,
        payload: "hello\nworld".into(),
        payload_encoding: "utf8",
        payload_bytes: 11,
        headers: [("tenant".to_owned(), "acme".to_owned())].into(),
        truncated: false,
    };
    let rows = [
        base.clone(),
        TaskRow {
            id: 8,
            state: "leased".into(),
            attempts: 2,
            lease_holder: Some("conn 3 sub 2 127.0.0.1:5000 w1".into()),
            lease_deadline_ms: Some(now + 25_000),
            payload: "x".repeat(60),
            payload_bytes: 60,
            ..base.clone()
        },
        TaskRow {
            id: 9,
            state: "dead".into(),
            attempts: 5,
            last_error: Some("boom".into()),
            payload: "AAEC".into(),
            payload_encoding: "base64",
            payload_bytes: 3 * 1024 * 1024 + 400_000,
            created_at_ms: now - 7_200_000,
            ..base.clone()
        },
    ];
    let expected = "\
ID  STATE   PRI  ATTEMPTS    AGE     SIZE  PAYLOAD                                           DETAIL
 7  ready     5       0/5  2m13s     11 B  hello world
 8  leased    5       2/5  2m13s     60 B  xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx…  conn 3 sub 2 127.0.0.1:5000 w1, 25s left
 9  dead      5       5/5  2h00m  3.4 MiB  <binary>                                          last error: boom
";
    assert_eq!(peek_table(&rows, now), expected);
    let json = peek_json(&rows[..1]);
    assert_eq!(
        json,
        "{\"id\":7,\"state\":\"ready\",\"priority\":5,\"attempts\":0,\"max_attempts\":5,\
             \"created_at_ms\":9867000,\"updated_at_ms\":9867000,\"payload\":\"hello\\nworld\",\
             \"payload_encoding\":\"utf8\",\"payload_bytes\":11,\"headers\":{\"tenant\":\"acme\"}}\n"
    );
}

#[test]
fn human_units() {
    assert_eq!(
        [
            0,
            999,
            1_000,
            1_234,
            12_345,
            123_456,
            999_950,
            1_234_567,
            5_000_000_000
        ]
        .map(count),
        ["0", "999", "1.0k", "1.2k", "12.3k", "123k", "1.0M", "1.2M", "5.0G"]
    );
    assert_eq!(
        [0.0, 0.04, 3.45, 12.6, 999.4, 1_234.0, f64::NAN].map(rate),
        ["0", "0.0", "3.5", "13", "999", "1.2k", "0"]
    );
    assert_eq!(
        [0, 1_023, 1_024, 3_565_158, 5 << 30].map(bytes),
        ["0 B", "1023 B", "1.0 KiB", "3.4 MiB", "5.0 GiB"]
    );
    assert_eq!(
        [850, 45_000, 133_000, 3_720_000, 273_600_000]
            .map(|ms| duration(Duration::from_millis(ms))),
        ["850ms", "45s", "2m13s", "1h02m", "3d04h"]
    );
    assert_eq!(
        [0, 1_500, 30_000, 600_000, 3_600_000].map(setting),
        ["0", "1s500ms", "30s", "10m", "1h"]
    );
}
