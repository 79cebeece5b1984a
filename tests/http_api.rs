//! The HTTP API (`/api/v1`) and the dashboard's server side over real HTTP against a
//! live broker: every endpoint, every kind of bad input (4xx with the broker's error
//! code names, never a 5xx), actions answered once durable and visible to the protocol
//! clients, tokens and roles, the dashboard's cookie, refusal of cross-site requests,
//! live events, escaping of payloads in pages, and TLS on the HTTP port.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::{TestBroker, WAIT};
use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
use serde_json::{json, Value};
use squall::auth::{Role, TokenEntry, TokenHash};
use squall_client::{Client, PublishOptions};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

/// One HTTP answer.
#[derive(Debug)]
struct Answer {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {} {}", self.status, self.body))
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// Asserts an error answer: this status and code, a message, JSON.
    fn assert_error(&self, status: u16, code: &str) {
        assert_eq!(self.status, status, "{}", self.body);
        let v = self.json();
        assert_eq!(v["code"], code, "{v}");
        assert!(!v["message"].as_str().unwrap_or("").is_empty(), "{v}");
    }
}

/// A request over a fresh connection (`Connection: close`), read to its end.
async fn request_on<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    host: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Answer {
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    req.push_str(body);
    stream.write_all(req.as_bytes()).await.expect("send");
    let mut raw = Vec::new();
    tokio::time::timeout(WAIT, stream.read_to_end(&mut raw))
        .await
        .expect("answer in time")
        .expect("read answer");
    parse(&raw)
}

fn parse(raw: &[u8]) -> Answer {
    let text = String::from_utf8_lossy(raw);
    let (head, body) = text.split_once("\r\n\r\n").expect("head and body");
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .expect("status line");
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect();
    let chunked = headers
        .iter()
        .any(|(k, v)| k.eq_ignore_ascii_case("transfer-encoding") && v.contains("chunked"));
    let body = if chunked {
        dechunk(body)
    } else {
        body.to_owned()
    };
    Answer {
        status,
        headers,
        body,
    }
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = s.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 {
            break;
        }
        out.push_str(&rest[..n]);
        s = &rest[n + 2..];
    }
    out
}

async fn call(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Answer {
    let stream = TcpStream::connect(addr).await.expect("connect");
    request_on(stream, addr, method, path, headers, body).await
}

async fn get(addr: SocketAddr, path: &str) -> Answer {
    call(addr, "GET", path, &[], "").await
}

/// An action: POST with a JSON body.
async fn act(addr: SocketAddr, path: &str, body: Value) -> Answer {
    call(
        addr,
        "POST",
        path,
        &[("Content-Type", "application/json")],
        &body.to_string(),
    )
    .await
}

async fn client(broker: &TestBroker) -> Client {
    Client::builder()
        .client_name("api-test-worker")
        .connect(broker.addr.to_string())
        .await
        .expect("client connects")
}

#[tokio::test]
async fn reads_show_queues_tasks_connections_and_the_overview() {
    let broker = TestBroker::start().await;
    let http = broker.http_addr();
    let c = client(&broker).await;
    for p in ["first task", "second task", "third task"] {
        c.publish("jobs", p).await.unwrap();
    }
    let headed = c
        .publish_with(
            "jobs",
            "with headers",
            PublishOptions::new().header("tenant", "acme"),
        )
        .await
        .unwrap()
        .id;
    let held = c.publish("work", "to hold").await.unwrap().id;
    let mut sub = c.subscribe("work").prefetch(2).await.unwrap();
    let delivery = tokio::time::timeout(WAIT, sub.recv())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(delivery.id(), held);

    let list = get(http, "/api/v1/queues").await;
    assert_eq!(list.status, 200, "{}", list.body);
    let list = list.json();
    let queues = list["queues"].as_array().unwrap();
    let names: Vec<&str> = queues.iter().map(|q| q["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["jobs", "work"]);
    assert_eq!(
        (queues[0]["ready"].as_u64(), queues[0]["leased"].as_u64()),
        (Some(4), Some(0))
    );
    assert_eq!(
        (queues[1]["ready"].as_u64(), queues[1]["leased"].as_u64()),
        (Some(0), Some(1))
    );
    assert_eq!(queues[1]["consumers"], 1);
    assert_eq!(list["more"], false);
    let page = get(http, "/api/v1/queues?after=jobs&limit=1").await.json();
    assert_eq!(page["queues"][0]["name"], "work");

    let jobs = get(http, "/api/v1/queues/jobs").await.json();
    assert_eq!(jobs["ready"], 4);
    assert_eq!(jobs["totals"]["published"], 4);
    assert_eq!(jobs["config"]["max_attempts"], 5);
    assert!(jobs["oldest_ready_age_ms"].is_u64(), "{jobs}");

    let peek = get(
        http,
        "/api/v1/queues/jobs/tasks?state=ready&limit=10&preview_bytes=5",
    )
    .await;
    assert_eq!(peek.status, 200, "{}", peek.body);
    let tasks = peek.json()["tasks"].as_array().unwrap().clone();
    assert_eq!(tasks.len(), 4);
    assert_eq!(tasks[0]["payload"], "first");
    assert_eq!(tasks[0]["truncated"], true);
    assert_eq!(tasks[0]["payload_bytes"], 10);
    let with_headers = tasks.iter().find(|t| t["id"] == headed).unwrap();
    assert_eq!(
        with_headers["headers"],
        json!({}),
        "cut: longer than the preview"
    );
    let whole = get(http, "/api/v1/queues/jobs/tasks").await.json();
    let with_headers = &whole["tasks"][3];
    assert_eq!(with_headers["id"], headed);
    assert_eq!(with_headers["headers"]["tenant"], "acme");
    assert_eq!(with_headers["truncated"], false);
    let two = get(http, "/api/v1/queues/jobs/tasks?limit=2").await.json();
    assert_eq!(two["tasks"].as_array().unwrap().len(), 2);

    let leased = get(http, "/api/v1/queues/work/tasks?state=leased")
        .await
        .json();
    let leased = &leased["tasks"][0];
    assert_eq!(leased["id"], held);
    assert!(
        leased["lease_holder"]
            .as_str()
            .unwrap()
            .contains("api-test-worker"),
        "{leased}"
    );
    assert!(leased["lease_deadline_ms"].as_u64().unwrap() > 0);

    let task = get(http, &format!("/api/v1/tasks/{held}")).await.json();
    assert_eq!(task["state"], "leased");
    assert_eq!(task["queue"], "work");
    assert_eq!(task["attempts"], 1);
    assert_eq!(task["finished"], false);
    assert!(task["lease_holder"]
        .as_str()
        .unwrap()
        .contains("api-test-worker"));
    delivery.ack_with("the result").await.unwrap();
    let done = get(http, &format!("/api/v1/tasks/{held}")).await.json();
    assert_eq!(
        (done["state"].as_str(), done["finished"].as_bool()),
        (Some("succeeded"), Some(true))
    );
    assert_eq!(done["result"], "the result");
    let unknown = get(http, "/api/v1/tasks/987654321").await.json();
    assert_eq!(unknown["state"], "unknown");

    let conns = get(http, "/api/v1/connections").await.json();
    let conns = conns["connections"].as_array().unwrap();
    assert_eq!(
        conns.len(),
        1,
        "only the client; the HTTP side is not listed: {conns:?}"
    );
    assert_eq!(conns[0]["client"], "api-test-worker");
    assert_eq!(conns[0]["subscriptions"][0]["queue"], "work");
    assert_eq!(conns[0]["subscriptions"][0]["prefetch"], 2);

    let overview = get(http, "/api/v1/overview").await.json();
    assert_eq!(overview["health"], "ok");
    assert_eq!(overview["ready"], true);
    assert_eq!(overview["queues"], 2);
    assert_eq!(overview["ready_tasks"], 4);
    assert_eq!(overview["connections"], 1);
    assert!(overview["publish_confirm"]["count"].as_u64().unwrap() >= 5);
    assert!(overview["publish_confirm"]["p99_us"].is_u64(), "{overview}");
    c.close().await;
}

#[tokio::test]
async fn the_openapi_document_lists_every_endpoint() {
    let broker = TestBroker::start().await;
    let doc = get(broker.http_addr(), "/api/v1/openapi.json").await;
    assert_eq!(doc.status, 200);
    assert!(doc
        .header("content-type")
        .unwrap()
        .starts_with("application/json"));
    let doc = doc.json();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    let paths = doc["paths"].as_object().unwrap();
    for (path, method) in [
        ("/api/v1/overview", "get"),
        ("/api/v1/queues", "get"),
        ("/api/v1/queues/{name}", "get"),
        ("/api/v1/queues/{name}/tasks", "get"),
        ("/api/v1/schedules", "get"),
        ("/api/v1/tasks/{id}", "get"),
        ("/api/v1/connections", "get"),
        ("/api/v1/events", "get"),
        ("/api/v1/queues/{name}/pause", "post"),
        ("/api/v1/queues/{name}/resume", "post"),
        ("/api/v1/queues/{name}/purge", "post"),
        ("/api/v1/queues/{name}/redrive", "post"),
        ("/api/v1/queues/{name}/config", "post"),
        ("/api/v1/queues/{name}/delete", "post"),
    ] {
        assert!(paths[path][method].is_object(), "{method} {path} missing");
    }
    assert_eq!(paths.len(), 14, "a path the tests above do not name");
}

#[tokio::test]
async fn actions_are_answered_once_durable_and_seen_by_the_protocol() {
    let mut broker = TestBroker::start().await;
    let http = broker.http_addr();
    let c = client(&broker).await;
    for i in 0..2 {
        c.publish("orders", format!("order {i}")).await.unwrap();
    }

    let paused = act(http, "/api/v1/queues/orders/pause", json!({})).await;
    assert_eq!(paused.status, 200, "{}", paused.body);
    assert_eq!(paused.json()["paused"], true);
    assert!(
        c.queue("orders").await.unwrap().paused,
        "the protocol sees the pause"
    );
    let resumed = act(http, "/api/v1/queues/orders/resume", json!({}))
        .await
        .json();
    assert_eq!(resumed["paused"], false);

    let configured = act(
        http,
        "/api/v1/queues/orders/config",
        json!({"lease_ms": 7000, "max_attempts": 3}),
    )
    .await;
    assert_eq!(configured.status, 200, "{}", configured.body);
    assert_eq!(configured.json()["config"]["lease_ms"], 7000);
    assert_eq!(configured.json()["config"]["max_attempts"], 3);
    // Flow control: set over HTTP, seen by the protocol; absent fields stay as they are.
    let flow = json!({"max_in_flight": 4, "rate_limit": 50, "rate_burst": 5, "drop_expired": true});
    let configured = act(http, "/api/v1/queues/orders/config", flow).await;
    assert_eq!(configured.status, 200, "{}", configured.body);
    let config = &configured.json()["config"];
    assert_eq!(
        (
            &config["max_in_flight"],
            &config["rate_limit"],
            &config["rate_burst"]
        ),
        (&json!(4), &json!(50), &json!(5))
    );
    assert_eq!(
        (&config["drop_expired"], &config["lease_ms"]),
        (&json!(true), &json!(7000))
    );
    let seen = c.queue("orders").await.unwrap().config;
    assert_eq!(
        (
            seen.max_in_flight,
            seen.rate_limit,
            seen.rate_burst,
            seen.drop_expired
        ),
        (4, 50, 5, true)
    );
    let unchanged = act(
        http,
        "/api/v1/queues/orders/config",
        json!({"max_attempts": 4}),
    )
    .await;
    assert_eq!(unchanged.json()["config"]["max_in_flight"], 4);
    let lifted = json!({"max_in_flight": 0, "rate_limit": 0, "drop_expired": false});
    let lifted = act(http, "/api/v1/queues/orders/config", lifted)
        .await
        .json();
    assert_eq!(
        (
            &lifted["config"]["max_in_flight"],
            &lifted["config"]["rate_limit"]
        ),
        (&json!(0), &json!(0))
    );
    let flow = json!({"max_in_flight": 4, "drop_expired": true});
    assert_eq!(
        act(http, "/api/v1/queues/orders/config", flow).await.status,
        200
    );
    // Tasks not started by their expiry are counted.
    let short = PublishOptions::new().expires_in(Duration::from_millis(1));
    c.publish_with("orders", "stale", short).await.unwrap();
    let mut expired = Value::Null;
    for _ in 0..100 {
        expired =
            get(http, "/api/v1/queues/orders").await.json()["totals"]["expired_tasks"].clone();
        if expired == json!(1) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(expired, json!(1), "dropped at its expiry");

    // Two tasks to the dead set, then redrive one of them.
    let mut sub = c.subscribe("orders").prefetch(2).await.unwrap();
    for _ in 0..2 {
        let d = tokio::time::timeout(WAIT, sub.recv())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        d.fail("card declined").await.unwrap();
    }
    sub.unsubscribe().await.unwrap();
    c.publish("orders", "order 2").await.unwrap();
    let dead = get(http, "/api/v1/queues/orders/tasks?state=dead")
        .await
        .json();
    assert_eq!(dead["tasks"].as_array().unwrap().len(), 2);
    assert_eq!(dead["tasks"][0]["last_error"], "card declined");
    let redriven = act(http, "/api/v1/queues/orders/redrive", json!({"limit": 1})).await;
    assert_eq!(redriven.status, 200, "{}", redriven.body);
    assert_eq!(redriven.json()["count"], 1);

    let purged = act(
        http,
        "/api/v1/queues/orders/purge",
        json!({"state": "dead"}),
    )
    .await;
    assert_eq!(purged.json()["count"], 1);
    let q = get(http, "/api/v1/queues/orders").await.json();
    assert_eq!(
        (q["dead"].as_u64(), q["ready"].as_u64()),
        (Some(0), Some(2))
    );
    let purged = act(http, "/api/v1/queues/orders/purge", json!({})).await;
    assert_eq!(purged.json()["count"], 2);
    assert_eq!(c.queue("orders").await.unwrap().ready, 0);

    // Durable: a restart keeps the configuration.
    c.close().await;
    broker.restart().await;
    let http = broker.http_addr();
    let q = get(http, "/api/v1/queues/orders").await.json();
    assert_eq!(q["config"]["lease_ms"], 7000, "{q}");
    assert_eq!(
        (&q["config"]["max_in_flight"], &q["config"]["drop_expired"]),
        (&json!(4), &json!(true)),
        "{q}"
    );

    let deleted = act(http, "/api/v1/queues/orders/delete", json!({})).await;
    assert_eq!(deleted.status, 200, "{}", deleted.body);
    get(http, "/api/v1/queues/orders")
        .await
        .assert_error(404, "NOT_FOUND");
}

#[tokio::test]
async fn schedules_are_listed_with_their_next_and_last_run() {
    use squall_client::ScheduleSpec;
    let broker = TestBroker::start().await;
    let http = broker.http_addr();
    let c = client(&broker).await;
    let empty = get(http, "/api/v1/schedules").await;
    assert_eq!(empty.status, 200, "{}", empty.body);
    assert_eq!(empty.json(), json!({"schedules": [], "more": false}));
    let every_second = ScheduleSpec::new("beat", "ticks", "* * * * * *").payload("hello");
    c.add_schedule(every_second).await.unwrap();
    let yearly = ScheduleSpec::new("yearly", "reports", "0 0 1 1 *").tz("Asia/Shanghai");
    c.add_schedule(yearly).await.unwrap();
    c.pause_schedule("yearly").await.unwrap();
    // The first tick of "beat" publishes a task.
    let mut sub = c.subscribe("ticks").await.unwrap();
    let d = tokio::time::timeout(WAIT, sub.recv())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let page = get(http, "/api/v1/schedules").await.json();
    assert_eq!(page["more"], false);
    let list = page["schedules"].as_array().unwrap();
    assert_eq!(list.len(), 2, "{page}");
    let beat = &list[0];
    assert_eq!(
        (&beat["name"], &beat["queue"], &beat["cron"], &beat["tz"]),
        (
            &json!("beat"),
            &json!("ticks"),
            &json!("* * * * * *"),
            &json!("UTC")
        )
    );
    assert_eq!(
        (&beat["catch_up"], &beat["paused"], &beat["payload_bytes"]),
        (&json!("one"), &json!(false), &json!(5))
    );
    let last_run = beat["last_run_ms"].as_u64().expect("it fired");
    assert!(beat["last_task"].as_u64().unwrap() >= d.id(), "{beat}");
    assert!(beat["next_run_ms"].as_u64().unwrap() > last_run, "{beat}");
    assert!(
        beat["created_at_ms"].as_u64().unwrap() <= last_run,
        "{beat}"
    );
    let yearly = &list[1];
    assert_eq!(
        (&yearly["name"], &yearly["tz"], &yearly["paused"]),
        (&json!("yearly"), &json!("Asia/Shanghai"), &json!(true))
    );
    assert_eq!(
        (
            &yearly["next_run_ms"],
            &yearly["last_run_ms"],
            &yearly["last_task"]
        ),
        (&Value::Null, &Value::Null, &Value::Null),
        "paused, never fired"
    );
    // Pages in name order.
    let first = get(http, "/api/v1/schedules?limit=1").await.json();
    assert_eq!(
        (&first["schedules"][0]["name"], &first["more"]),
        (&json!("beat"), &json!(true))
    );
    let rest = get(http, "/api/v1/schedules?after=beat").await.json();
    assert_eq!(
        (&rest["schedules"][0]["name"], &rest["more"]),
        (&json!("yearly"), &json!(false))
    );
    get(http, "/api/v1/schedules?limit=0")
        .await
        .assert_error(400, "BAD_REQUEST");
    // The dashboard's page lists them too.
    let page = get(http, "/schedules").await;
    assert_eq!(page.status, 200, "{}", page.body);
    for text in [
        "data-schedule=\"beat\"",
        "data-schedule=\"yearly\"",
        "Asia/Shanghai",
        "paused",
    ] {
        assert!(page.body.contains(text), "{text} missing: {}", page.body);
    }
}

/// A bad request: method, path, headers, body, expected status and error code.
type Case<'a> = (
    &'a str,
    String,
    &'a [(&'a str, &'a str)],
    String,
    u16,
    &'a str,
);

#[tokio::test]
async fn bad_input_gets_a_4xx_with_the_error_code_never_a_5xx() {
    let broker = TestBroker::start().await;
    let http = broker.http_addr();
    let c = client(&broker).await;
    c.publish("jobs", "x").await.unwrap();
    let long_after = format!("/api/v1/queues?after={}", "a".repeat(201));
    let json_ct = [("Content-Type", "application/json")];
    let huge = format!("{{\"lease_ms\": 1, \"pad\": \"{}\"}}", "x".repeat(100_000));
    // (Pausing or configuring a queue not used yet is not an error: as with the CLI,
    // it sets the queue up before its first task.)
    let cases: Vec<Case> = vec![
        (
            "GET",
            "/api/v1/queues/nope".into(),
            &[],
            String::new(),
            404,
            "NOT_FOUND",
        ),
        (
            "GET",
            "/api/v1/queues/nope/tasks".into(),
            &[],
            String::new(),
            404,
            "NOT_FOUND",
        ),
        (
            "POST",
            "/api/v1/queues/nope/purge".into(),
            &json_ct,
            "{}".into(),
            404,
            "NOT_FOUND",
        ),
        (
            "POST",
            "/api/v1/queues/nope/delete".into(),
            &json_ct,
            "{}".into(),
            404,
            "NOT_FOUND",
        ),
        (
            "GET",
            "/api/v1/queues/bad%20name".into(),
            &[],
            String::new(),
            400,
            "INVALID_QUEUE_NAME",
        ),
        (
            "GET",
            format!("/api/v1/queues/{}", "q".repeat(201)),
            &[],
            String::new(),
            400,
            "INVALID_QUEUE_NAME",
        ),
        (
            "POST",
            "/api/v1/queues/bad%2Fname/pause".into(),
            &json_ct,
            "{}".into(),
            400,
            "INVALID_QUEUE_NAME",
        ),
        (
            "GET",
            "/api/v1/queues/jobs/tasks?state=bogus".into(),
            &[],
            String::new(),
            400,
            "BAD_REQUEST",
        ),
        (
            "GET",
            "/api/v1/queues/jobs/tasks?limit=100000".into(),
            &[],
            String::new(),
            400,
            "BAD_REQUEST",
        ),
        (
            "GET",
            "/api/v1/queues/jobs/tasks?limit=0".into(),
            &[],
            String::new(),
            400,
            "BAD_REQUEST",
        ),
        (
            "GET",
            "/api/v1/queues/jobs/tasks?limit=-1".into(),
            &[],
            String::new(),
            400,
            "BAD_REQUEST",
        ),
        (
            "GET",
            "/api/v1/queues/jobs/tasks?preview_bytes=10000000".into(),
            &[],
            String::new(),
            400,
            "BAD_REQUEST",
        ),
        (
            "GET",
            "/api/v1/queues?limit=5000".into(),
            &[],
            String::new(),
            400,
            "BAD_REQUEST",
        ),
        ("GET", long_after, &[], String::new(), 400, "BAD_REQUEST"),
        (
            "GET",
            "/api/v1/tasks/abc".into(),
            &[],
            String::new(),
            400,
            "BAD_REQUEST",
        ),
        (
            "GET",
            "/api/v1/tasks/99999999999999999999999".into(),
            &[],
            String::new(),
            400,
            "BAD_REQUEST",
        ),
        (
            "POST",
            "/api/v1/queues/jobs/config".into(),
            &json_ct,
            "{bad".into(),
            400,
            "BAD_REQUEST",
        ),
        (
            "POST",
            "/api/v1/queues/jobs/config".into(),
            &json_ct,
            "[1]".into(),
            400,
            "BAD_REQUEST",
        ),
        (
            "POST",
            "/api/v1/queues/jobs/config".into(),
            &json_ct,
            r#"{"lease_ms": -1}"#.into(),
            400,
            "BAD_REQUEST",
        ),
        (
            "POST",
            "/api/v1/queues/jobs/config".into(),
            &json_ct,
            r#"{"lease_ms": 0}"#.into(),
            400,
            "BAD_REQUEST",
        ),
        (
            "POST",
            "/api/v1/queues/jobs/config".into(),
            &json_ct,
            r#"{"backoff_min_ms": 9, "backoff_max_ms": 1}"#.into(),
            400,
            "BAD_REQUEST",
        ),
        (
            "POST",
            "/api/v1/queues/jobs/config".into(),
            &json_ct,
            r#"{"no_such": 1}"#.into(),
            400,
            "BAD_REQUEST",
        ),
        (
            "POST",
            "/api/v1/queues/jobs/config".into(),
            &json_ct,
            r#"{"max_in_flight": -1}"#.into(),
            400,
            "BAD_REQUEST",
        ),
        (
            "POST",
            "/api/v1/queues/jobs/config".into(),
            &json_ct,
            r#"{"rate_limit": 4294967296}"#.into(),
            400,
            "BAD_REQUEST",
        ),
        (
            "POST",
            "/api/v1/queues/jobs/config".into(),
            &json_ct,
            r#"{"drop_expired": 1}"#.into(),
            400,
            "BAD_REQUEST",
        ),
        (
            "POST",
            "/api/v1/queues/jobs/config".into(),
            &json_ct,
            huge,
            400,
            "BAD_REQUEST",
        ),
        (
            "POST",
            "/api/v1/queues/jobs/purge".into(),
            &json_ct,
            r#"{"state": "gone"}"#.into(),
            400,
            "BAD_REQUEST",
        ),
        (
            "POST",
            "/api/v1/queues/jobs/redrive".into(),
            &json_ct,
            r#"{"limit": 0}"#.into(),
            400,
            "BAD_REQUEST",
        ),
        (
            "POST",
            "/api/v1/queues/jobs/pause".into(),
            &[],
            "{}".into(),
            400,
            "BAD_REQUEST",
        ),
        (
            "POST",
            "/api/v1/queues/jobs/pause".into(),
            &[("Content-Type", "text/plain")],
            "{}".into(),
            400,
            "BAD_REQUEST",
        ),
        (
            "DELETE",
            "/api/v1/queues/jobs".into(),
            &json_ct,
            "{}".into(),
            405,
            "BAD_REQUEST",
        ),
        (
            "GET",
            "/api/v1/no/such/endpoint".into(),
            &[],
            String::new(),
            404,
            "NOT_FOUND",
        ),
    ];
    for (method, path, headers, body, status, code) in cases {
        let a = call(http, method, &path, headers, &body).await;
        assert!(a.status < 500, "{method} {path}: {} {}", a.status, a.body);
        assert_eq!(a.status, status, "{method} {path}: {}", a.body);
        let v = a.json();
        assert_eq!(v["code"], code, "{method} {path}: {v}");
    }
    // Nothing was half-applied: the queue is as it was.
    let q = get(http, "/api/v1/queues/jobs").await.json();
    assert_eq!(
        (q["ready"].as_u64(), q["paused"].as_bool()),
        (Some(1), Some(false))
    );
    assert_eq!(q["config"]["lease_ms"], 2000);
    c.close().await;
}

fn token(name: &str, secret: &str, role: Role) -> TokenEntry {
    TokenEntry {
        name: name.into(),
        hash: TokenHash::new(secret),
        role,
        queues: Vec::new(),
    }
}

#[tokio::test]
async fn tokens_roles_the_cookie_and_cross_site_refusal() {
    let broker = TestBroker::start_with(|c| {
        c.auth.tokens = vec![
            token("ops", "admin-secret", Role::Admin),
            token("viewer", "viewer-secret", Role::Consumer),
        ];
        c.auth.metrics = true;
    })
    .await;
    let http = broker.http_addr();
    let admin = [("Authorization", "Bearer admin-secret")];
    let viewer = [("Authorization", "Bearer viewer-secret")];
    let c = Client::builder()
        .token("admin-secret")
        .connect(broker.addr.to_string())
        .await
        .unwrap();
    c.publish("jobs", "x").await.unwrap();

    get(http, "/api/v1/queues")
        .await
        .assert_error(401, "UNAUTHENTICATED");
    call(
        http,
        "GET",
        "/api/v1/queues",
        &[("Authorization", "Bearer wrong")],
        "",
    )
    .await
    .assert_error(401, "UNAUTHENTICATED");
    let seen = call(http, "GET", "/api/v1/queues", &viewer, "").await;
    assert_eq!(seen.status, 200, "any valid token reads");
    let with_ct = |auth: &'static str| {
        [
            ("Authorization", auth),
            ("Content-Type", "application/json"),
        ]
    };
    call(
        http,
        "POST",
        "/api/v1/queues/jobs/pause",
        &with_ct("Bearer viewer-secret"),
        "{}",
    )
    .await
    .assert_error(403, "FORBIDDEN");
    let paused = call(
        http,
        "POST",
        "/api/v1/queues/jobs/pause",
        &with_ct("Bearer admin-secret"),
        "{}",
    )
    .await;
    assert_eq!(paused.status, 200, "{}", paused.body);

    // Probes stay open; metrics are protected by the setting.
    assert_eq!(get(http, "/healthz").await.status, 200);
    assert_eq!(get(http, "/readyz").await.status, 200);
    assert_eq!(get(http, "/metrics").await.status, 401);
    assert_eq!(call(http, "GET", "/metrics", &admin, "").await.status, 200);

    // A browser's cross-site request is refused even with a valid token.
    for (k, v) in [
        ("Origin", "http://evil.example"),
        ("Sec-Fetch-Site", "cross-site"),
    ] {
        let a = call(
            http,
            "POST",
            "/api/v1/queues/jobs/resume",
            &[
                ("Authorization", "Bearer admin-secret"),
                ("Content-Type", "application/json"),
                (k, v),
            ],
            "{}",
        )
        .await;
        a.assert_error(403, "FORBIDDEN");
    }
    let same_origin = format!("http://{http}");
    let ok = call(
        http,
        "POST",
        "/api/v1/queues/jobs/resume",
        &[
            ("Authorization", "Bearer admin-secret"),
            ("Content-Type", "application/json"),
            ("Origin", &same_origin),
            ("Sec-Fetch-Site", "same-origin"),
        ],
        "{}",
    )
    .await;
    assert_eq!(ok.status, 200, "{}", ok.body);

    // The dashboard asks for a token, refuses a wrong one, keeps a right one in a
    // cookie that scripts cannot read and other sites do not send.
    let page = get(http, "/").await;
    assert_eq!(page.status, 401);
    assert!(page.body.contains("name=\"token\""), "{}", page.body);
    let form = [("Content-Type", "application/x-www-form-urlencoded")];
    let wrong = call(http, "POST", "/login", &form, "token=nope&next=%2F").await;
    assert_eq!(wrong.status, 401);
    assert!(wrong.body.contains("refused"));
    assert!(wrong.header("set-cookie").is_none());
    let login = call(
        http,
        "POST",
        "/login",
        &form,
        "token=viewer-secret&next=%2Fqueues%2Fjobs",
    )
    .await;
    assert_eq!(login.status, 303, "{}", login.body);
    assert_eq!(login.header("location"), Some("/queues/jobs"));
    let cookie = login.header("set-cookie").unwrap().to_owned();
    assert!(
        cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"),
        "{cookie}"
    );
    let jar = cookie.split(';').next().unwrap().to_owned();
    let page = call(http, "GET", "/queues/jobs", &[("Cookie", &jar)], "").await;
    assert_eq!(page.status, 200, "{}", page.body);
    let api = call(http, "GET", "/api/v1/queues/jobs", &[("Cookie", &jar)], "").await;
    assert_eq!(api.status, 200);
    call(http, "GET", "/", &[("Cookie", "squall_token=forged")], "")
        .await
        .body
        .contains("refused")
        .then_some(())
        .expect("a wrong cookie is refused on the page");
    c.close().await;
}

#[tokio::test]
async fn pages_show_payloads_and_headers_as_text() {
    let broker = TestBroker::start().await;
    let http = broker.http_addr();
    let c = client(&broker).await;
    c.publish_with(
        "xss",
        "<script>window.pwned=1</script>",
        PublishOptions::new().header("x-html", "<img src=x onerror=alert(1)>"),
    )
    .await
    .unwrap();
    let page = get(http, "/queues/xss").await;
    assert_eq!(page.status, 200);
    let shown = page
        .body
        .replace("&#60;", "<")
        .replace("&#62;", ">")
        .replace("&lt;", "<")
        .replace("&gt;", ">");
    assert!(
        shown.contains("<script>window.pwned=1</script>"),
        "{}",
        page.body
    );
    assert!(shown.contains("<img src=x onerror=alert(1)>"));
    assert!(
        !page.body.contains("<script>window"),
        "the payload is never markup"
    );
    assert!(!page.body.contains("<img src=x"));
    let csp = page.header("content-security-policy").unwrap();
    assert!(csp.contains("script-src 'self'"), "{csp}");
    let index = get(http, "/").await;
    assert_eq!(index.status, 200);
    assert!(index.body.contains("data-queue=\"xss\""));
    for path in [
        "/connections",
        "/tasks/1",
        "/assets/app.js",
        "/assets/app.css",
        "/login",
    ] {
        assert_eq!(get(http, path).await.status, 200, "{path}");
    }
    assert_eq!(get(http, "/tasks?id=1").await.status, 303);
    // A task the broker knows nothing of says what that can mean.
    let unknown = get(http, "/tasks/987654321").await;
    assert_eq!(unknown.status, 200);
    assert!(
        unknown.body.contains("id=\"t-unknown\""),
        "{}",
        unknown.body
    );
    assert!(!get(http, "/tasks/1").await.body.contains("t-unknown"));
    assert_eq!(get(http, "/queues/no-such-queue").await.status, 404);
    c.close().await;
}

#[tokio::test]
async fn events_carry_queue_counts_as_they_change() {
    let broker = TestBroker::start().await;
    let http = broker.http_addr();
    let c = client(&broker).await;
    c.publish("live", "1").await.unwrap();
    let mut stream = TcpStream::connect(http).await.unwrap();
    let req =
        format!("GET /api/v1/events HTTP/1.1\r\nHost: {http}\r\nAccept: text/event-stream\r\n\r\n");
    stream.write_all(req.as_bytes()).await.unwrap();
    let mut seen = String::new();
    let mut buf = [0u8; 8192];
    let mut published = false;
    let ready_of = |data: &str| -> Option<u64> {
        let v: Value = serde_json::from_str(data).ok()?;
        v["queues"]
            .as_array()?
            .iter()
            .find(|q| q["name"] == "live")?["ready"]
            .as_u64()
    };
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let n = tokio::time::timeout_at(deadline, stream.read(&mut buf))
            .await
            .expect("events keep coming")
            .unwrap();
        assert!(n > 0, "the stream ended: {seen}");
        seen.push_str(&String::from_utf8_lossy(&buf[..n]));
        assert!(seen.starts_with("HTTP/1.1 200"), "{seen}");
        assert!(seen
            .to_ascii_lowercase()
            .contains("content-type: text/event-stream"));
        let counts: Vec<u64> = seen
            .split("event: queues\n")
            .skip(1)
            .filter_map(|e| e.lines().find_map(|l| l.strip_prefix("data: ")))
            .filter_map(ready_of)
            .collect();
        if !published && counts.first() == Some(&1) {
            c.publish("live", "2").await.unwrap();
            c.publish("live", "3").await.unwrap();
            published = true;
        }
        if counts.last() == Some(&3) {
            break;
        }
    }
    c.close().await;
}

/// A CA and a certificate it signed for 127.0.0.1, as PEM files: (ca, cert, key).
fn pki(dir: &std::path::Path) -> (Vec<u8>, std::path::PathBuf, std::path::PathBuf) {
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_key = KeyPair::generate().unwrap();
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let key = KeyPair::generate().unwrap();
    let cert = CertificateParams::new(vec!["127.0.0.1".to_owned()])
        .unwrap()
        .signed_by(&key, &ca, &ca_key)
        .unwrap();
    let (cert_path, key_path) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&cert_path, cert.pem()).unwrap();
    std::fs::write(&key_path, key.serialize_pem()).unwrap();
    (ca.pem().into_bytes(), cert_path, key_path)
}

#[tokio::test]
async fn the_http_port_speaks_tls_with_the_protocol_ports_certificate() {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, ServerName};
    let dir = tempfile::tempdir().unwrap();
    let (ca, cert, key) = pki(dir.path());
    let broker = TestBroker::start_with(|c| {
        c.tls.cert = Some(cert);
        c.tls.key = Some(key);
        c.tls.http = true;
        c.auth.tokens = vec![token("ops", "admin-secret", Role::Admin)];
    })
    .await;
    let http = broker.http_addr();
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(&ca) {
        roots.add(c.unwrap()).unwrap();
    }
    #[allow(deprecated)]
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config));
    let tls = connector
        .connect(
            ServerName::try_from("127.0.0.1").unwrap(),
            TcpStream::connect(http).await.unwrap(),
        )
        .await
        .expect("TLS handshake with the HTTP port");
    let a = request_on(tls, http, "GET", "/healthz", &[], "").await;
    assert_eq!((a.status, a.body.as_str()), (200, "ok\n"));
    // The dashboard's cookie is Secure over TLS.
    let tls = connector
        .connect(
            ServerName::try_from("127.0.0.1").unwrap(),
            TcpStream::connect(http).await.unwrap(),
        )
        .await
        .unwrap();
    let login = request_on(
        tls,
        http,
        "POST",
        "/login",
        &[("Content-Type", "application/x-www-form-urlencoded")],
        "token=admin-secret",
    )
    .await;
    assert!(login.header("set-cookie").unwrap().contains("Secure"));
    // Plain HTTP gets no answer.
    let mut plain = TcpStream::connect(http).await.unwrap();
    plain
        .write_all(format!("GET /healthz HTTP/1.1\r\nHost: {http}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut raw = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), plain.read_to_end(&mut raw)).await;
    assert!(!String::from_utf8_lossy(&raw).contains("200 OK"));
}
