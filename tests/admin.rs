//! Queue administration end to end: every admin operation against a real broker over
//! TCP through the client crate (list, get, configure, pause/resume, peek, purge,
//! redrive, delete), including that peeking changes nothing and that dead tasks can
//! be redriven; then the `squall` CLI's admin commands, their output and exit codes.

mod common;

use std::process::{Output, Stdio};
use std::time::Duration;

use common::{TestBroker, WAIT};
use squall_client::{
    Client, ClientError, ErrorCode, PublishOptions, QueueConfigUpdate, QueueInfo, StateFilter,
};

async fn client(b: &TestBroker) -> Client {
    Client::connect(b.addr).await.expect("connect")
}

fn not_found<T: std::fmt::Debug>(r: Result<T, ClientError>) -> bool {
    matches!(r, Err(e) if e.code() == Some(ErrorCode::NotFound))
}

/// The parts of a queue that peeking must not change.
fn state_of(q: &QueueInfo) -> (u64, u64, u64, u64, u64, squall_client::QueueTotals) {
    (q.ready, q.delayed, q.leased, q.dead, q.consumers, q.totals)
}

#[tokio::test]
async fn queues_report_counts_totals_and_configuration() {
    let b = TestBroker::start().await;
    let c = client(&b).await;
    assert!(c.queues().await.unwrap().is_empty());
    for i in 0..3 {
        c.publish("alpha", format!("a{i}")).await.unwrap();
    }
    c.publish_with(
        "beta",
        "later",
        PublishOptions::new().delay(Duration::from_secs(60)),
    )
    .await
    .unwrap();
    let mut sub = c.subscribe("alpha").prefetch(1).await.unwrap();
    let d = sub.recv().await.unwrap().unwrap();
    tokio::time::sleep(Duration::from_millis(20)).await;

    let queues = c.queues().await.unwrap();
    let names: Vec<&str> = queues.iter().map(|q| q.name.as_str()).collect();
    assert_eq!(names, ["alpha", "beta"], "sorted by name");
    let alpha = &queues[0];
    assert_eq!(
        (
            alpha.ready,
            alpha.delayed,
            alpha.leased,
            alpha.dead,
            alpha.consumers
        ),
        (2, 0, 1, 0, 1)
    );
    assert_eq!((alpha.totals.published, alpha.totals.delivered), (3, 1));
    assert!(alpha.oldest_ready_age.is_some(), "two tasks are ready");
    assert!(!alpha.paused);
    assert_eq!(
        alpha.config.lease,
        Duration::from_millis(2_000),
        "test defaults"
    );
    let beta = c.queue("beta").await.unwrap();
    assert_eq!((beta.ready, beta.delayed), (0, 1));
    assert_eq!(beta.oldest_ready_age, None);
    d.ack().await.unwrap();
    assert_eq!(c.queue("alpha").await.unwrap().totals.acked, 1);
    assert!(not_found(c.queue("missing").await));
}

#[tokio::test]
async fn peek_shows_every_state_and_changes_nothing() {
    let b = TestBroker::start().await;
    let c = client(&b).await;
    // 1: dead, 2: leased, 3 and 4: ready (4 first: higher priority), 5: delayed.
    c.publish("q", "doomed").await.unwrap();
    let mut sub = c.subscribe("q").prefetch(1).await.unwrap();
    let d = sub.recv().await.unwrap().unwrap();
    d.fail("bad input").await.unwrap();
    c.publish_with("q", "held", PublishOptions::new().header("k", "v"))
        .await
        .unwrap();
    let held = sub.recv().await.unwrap().unwrap();
    c.publish("q", "low").await.unwrap();
    c.publish_with("q", "high", PublishOptions::new().priority(7))
        .await
        .unwrap();
    c.publish_with(
        "q",
        "later",
        PublishOptions::new().delay(Duration::from_secs(60)),
    )
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_millis(20)).await;
    let before = c.queue("q").await.unwrap();

    let ready = c.peek("q", StateFilter::Ready, 10).await.unwrap();
    let payloads: Vec<&[u8]> = ready.iter().map(|t| &t.payload[..]).collect();
    assert_eq!(payloads, [&b"high"[..], b"low"], "delivery order");
    assert!(ready
        .iter()
        .all(|t| t.attempts == 0 && t.state == StateFilter::Ready));
    let delayed = c.peek("q", StateFilter::Delayed, 10).await.unwrap();
    assert_eq!(&delayed[0].payload[..], b"later");
    assert!(delayed[0].not_before.is_some());
    let leased = c.peek("q", StateFilter::Leased, 10).await.unwrap();
    assert_eq!(leased[0].id, held.id());
    assert_eq!(leased[0].headers.get("k").map(|v| &v[..]), Some(&b"v"[..]));
    let holder = leased[0].lease_holder.as_deref().expect("holder shown");
    assert!(holder.contains("127.0.0.1"), "{holder}");
    assert!(leased[0].lease_deadline.is_some());
    let dead = c.peek("q", StateFilter::Dead, 10).await.unwrap();
    assert_eq!(dead[0].last_error.as_deref(), Some("bad input"));
    assert_eq!(
        (dead[0].attempts, &dead[0].payload[..]),
        (1, &b"doomed"[..])
    );
    assert_eq!(c.peek("q", StateFilter::Ready, 1).await.unwrap().len(), 1);

    let after = c.queue("q").await.unwrap();
    assert_eq!(state_of(&after), state_of(&before), "peek changed counters");
    // The lease is untouched: its holder can still settle it.
    held.ack().await.expect("lease still live after peeking");
    // Attempts are untouched: the next delivery is the first attempt of "high".
    let next = sub.recv().await.unwrap().unwrap();
    assert_eq!((&next.payload()[..], next.attempt()), (&b"high"[..], 1));
    assert!(not_found(c.peek("missing", StateFilter::Ready, 1).await));
}

#[tokio::test]
async fn configuration_is_validated_applied_and_persisted() {
    let mut b = TestBroker::start().await;
    let c = client(&b).await;
    let q = c
        .set_queue_config(
            "cfg",
            QueueConfigUpdate::new()
                .lease(Duration::from_secs(9))
                .max_attempts(2)
                .backoff(Duration::from_millis(10), Duration::from_secs(3))
                .max_length(100)
                .result_ttl(Duration::from_secs(60))
                .dedup_window(Duration::from_secs(30)),
        )
        .await
        .unwrap();
    assert_eq!(q.config.lease, Duration::from_secs(9));
    assert_eq!(q.config.max_attempts, 2);
    let bad = c
        .set_queue_config(
            "cfg",
            QueueConfigUpdate::new().backoff(Duration::from_secs(10), Duration::from_secs(5)),
        )
        .await;
    // Refused by the client before sending, or by the broker: either way BAD_REQUEST.
    assert_eq!(bad.unwrap_err().code(), Some(ErrorCode::BadRequest));
    let too_long = c
        .set_queue_config(
            "cfg",
            QueueConfigUpdate::new().lease(Duration::from_secs(86_400)),
        )
        .await;
    assert_eq!(too_long.unwrap_err().code(), Some(ErrorCode::BadRequest));
    // The new lease applies to deliveries.
    c.publish("cfg", "x").await.unwrap();
    let mut sub = c.subscribe("cfg").prefetch(1).await.unwrap();
    let d = sub.recv().await.unwrap().unwrap();
    let lease_left = d
        .deadline()
        .duration_since(std::time::SystemTime::now())
        .unwrap_or_default();
    assert!(lease_left > Duration::from_secs(7), "{lease_left:?}");
    drop(sub);
    drop(d);
    c.close().await;

    b.restart().await;
    let c = client(&b).await;
    let q = c.queue("cfg").await.unwrap();
    assert_eq!(
        (q.config.lease, q.config.max_attempts, q.config.max_length),
        (Duration::from_secs(9), 2, 100),
        "configuration survives a restart"
    );
}

#[tokio::test]
async fn paused_queues_accept_publishes_and_deliver_nothing_across_restarts() {
    let mut b = TestBroker::start().await;
    let c = client(&b).await;
    assert!(c.pause("p").await.unwrap().paused);
    c.publish("p", "waiting").await.unwrap();
    let mut sub = c.subscribe("p").prefetch(4).await.unwrap();
    let nothing = tokio::time::timeout(Duration::from_millis(300), sub.recv()).await;
    assert!(nothing.is_err(), "a paused queue delivered");
    drop(sub);
    c.close().await;

    b.restart().await;
    let c = client(&b).await;
    let q = c.queue("p").await.unwrap();
    assert!(q.paused && q.config.paused, "pause survives a restart");
    let mut sub = c.subscribe("p").prefetch(4).await.unwrap();
    assert!(tokio::time::timeout(Duration::from_millis(200), sub.recv())
        .await
        .is_err());
    assert!(!c.resume("p").await.unwrap().paused);
    let d = tokio::time::timeout(WAIT, sub.recv())
        .await
        .expect("delivered after resume")
        .unwrap()
        .unwrap();
    assert_eq!(&d.payload()[..], b"waiting");
    d.ack().await.unwrap();
}

#[tokio::test]
async fn redrive_brings_dead_tasks_back_with_attempts_reset() {
    let mut b = TestBroker::start().await;
    let c = client(&b).await;
    c.set_queue_config("r", QueueConfigUpdate::new().max_attempts(1))
        .await
        .unwrap();
    for i in 0..3 {
        c.publish("r", format!("t{i}")).await.unwrap();
    }
    let mut sub = c.subscribe("r").prefetch(3).await.unwrap();
    for _ in 0..3 {
        let d = sub.recv().await.unwrap().unwrap();
        d.nack().await.unwrap(); // last attempt: dead with "nacked"
    }
    drop(sub);
    let q = c.queue("r").await.unwrap();
    assert_eq!((q.ready, q.dead, q.totals.dead_lettered), (0, 3, 3));
    let dead = c.peek("r", StateFilter::Dead, 10).await.unwrap();
    assert!(dead
        .iter()
        .all(|t| t.last_error.as_deref() == Some("nacked")));

    assert_eq!(c.redrive("r", Some(2)).await.unwrap(), 2);
    let q = c.queue("r").await.unwrap();
    assert_eq!((q.ready, q.dead), (2, 1));
    // Durable: a restart keeps the redriven tasks ready and the third dead.
    c.close().await;
    b.restart().await;
    let c = client(&b).await;
    let q = c.queue("r").await.unwrap();
    assert_eq!((q.ready, q.dead), (2, 1));
    let mut sub = c.subscribe("r").prefetch(2).await.unwrap();
    let mut got = Vec::new();
    for _ in 0..2 {
        let d = sub.recv().await.unwrap().unwrap();
        assert_eq!(d.attempt(), 1, "attempts start over");
        got.push(String::from_utf8(d.payload().to_vec()).unwrap());
        d.ack().await.unwrap();
    }
    assert_eq!(got, ["t0", "t1"], "oldest first");
    assert_eq!(c.redrive("r", None).await.unwrap(), 1);
    assert_eq!(c.queue("r").await.unwrap().dead, 0);
    assert!(not_found(c.redrive("missing", None).await));
}

#[tokio::test]
async fn purge_removes_one_state_or_everything_not_leased() {
    let mut b = TestBroker::start().await;
    let c = client(&b).await;
    for i in 0..4 {
        c.publish("pg", format!("r{i}")).await.unwrap();
    }
    c.publish_with(
        "pg",
        "later",
        PublishOptions::new().delay(Duration::from_secs(60)),
    )
    .await
    .unwrap();
    let mut sub = c.subscribe("pg").prefetch(1).await.unwrap();
    let held = sub.recv().await.unwrap().unwrap();
    sub.unsubscribe().await.unwrap();
    assert_eq!(c.purge("pg", Some(StateFilter::Delayed)).await.unwrap(), 1);
    assert_eq!(
        c.purge("pg", None).await.unwrap(),
        3,
        "ready ones, not the leased"
    );
    let q = c.queue("pg").await.unwrap();
    assert_eq!((q.ready, q.delayed, q.leased), (0, 0, 1));
    assert_eq!(c.purge("pg", Some(StateFilter::Leased)).await.unwrap(), 1);
    assert!(
        matches!(held.ack().await, Err(ClientError::LeaseExpired { .. })),
        "the holder of a purged lease is fenced off"
    );
    c.close().await;
    b.restart().await;
    let c = client(&b).await;
    // Nothing left of it on disk (no task, default configuration): it is not recreated.
    assert!(not_found(c.queue("pg").await), "purges are durable");
    assert!(not_found(c.purge("missing", None).await));
}

#[tokio::test]
async fn deleting_a_queue_removes_its_tasks_and_ends_its_subscriptions() {
    let mut b = TestBroker::start().await;
    let c = client(&b).await;
    c.publish("gone", "a").await.unwrap();
    c.publish("gone", "b").await.unwrap();
    c.publish("kept", "c").await.unwrap();
    let mut sub = c.subscribe("gone").prefetch(1).await.unwrap();
    let held = sub.recv().await.unwrap().unwrap();
    assert_eq!(c.delete_queue("gone").await.unwrap(), 2);
    match tokio::time::timeout(WAIT, sub.recv())
        .await
        .expect("told in time")
    {
        Some(Err(ClientError::SubscriptionEnded { queue, .. })) => assert_eq!(queue, "gone"),
        other => panic!("expected SubscriptionEnded, got {other:?}"),
    }
    assert!(
        sub.recv().await.is_none(),
        "the stream ends after the reason"
    );
    assert!(matches!(
        held.ack().await,
        Err(ClientError::LeaseExpired { .. })
    ));
    assert!(not_found(c.queue("gone").await));
    assert!(not_found(c.delete_queue("gone").await));
    c.close().await;

    b.restart().await;
    let c = client(&b).await;
    let names: Vec<String> = c
        .queues()
        .await
        .unwrap()
        .into_iter()
        .map(|q| q.name)
        .collect();
    assert_eq!(names, ["kept"], "the deleted queue stays deleted");
    // The name can be used again: a fresh, empty queue.
    c.publish("gone", "new").await.unwrap();
    let q = c.queue("gone").await.unwrap();
    assert_eq!((q.ready, q.totals.published), (1, 1));
}

// ---- the CLI ----

/// Runs the CLI without blocking the runtime the in-process broker runs on.
async fn squall(args: &[&str]) -> Output {
    tokio::process::Command::new(env!("CARGO_BIN_EXE_squall"))
        .args(args)
        .stdin(Stdio::null())
        .env_remove("SQUALL_SERVER")
        .output()
        .await
        .expect("run squall")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[tokio::test]
async fn cli_admin_commands_work_against_a_broker() {
    let b = TestBroker::start().await;
    let c = client(&b).await;
    let server = b.addr.to_string();
    let s = server.as_str();
    c.set_queue_config("cli", QueueConfigUpdate::new().max_attempts(1))
        .await
        .unwrap();
    for i in 0..3 {
        c.publish("cli", format!("job {i}")).await.unwrap();
    }
    let run = |args: &[&str]| {
        let mut all: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        all.extend(["--server".to_owned(), s.to_owned()]);
        async move {
            let all: Vec<&str> = all.iter().map(String::as_str).collect();
            squall(&all).await
        }
    };

    let out = run(&["queues"]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    let table = stdout(&out);
    let header = table.lines().next().unwrap();
    assert!(
        header.starts_with("QUEUE") && header.contains("READY"),
        "{table}"
    );
    let row: Vec<&str> = table.lines().nth(1).unwrap().split_whitespace().collect();
    assert_eq!(&row[..3], ["cli", "3", "0"], "{table}");

    let out = run(&["queues", "--json"]).await;
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("valid JSON");
    assert_eq!(json[0]["name"], "cli");
    assert_eq!(json[0]["ready"], 3);
    assert_eq!(json[0]["config"]["max_attempts"], 1);

    let out = run(&[
        "queue",
        "set",
        "cli",
        "--lease",
        "15s",
        "--backoff",
        "100ms..2s",
        "--keep-acked",
        "true",
    ])
    .await;
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("backoff        100ms..2s"),
        "{}",
        stdout(&out)
    );
    assert!(
        stdout(&out).contains("acks kept      all"),
        "{}",
        stdout(&out)
    );
    let out = run(&["queue", "cli", "--json"]).await;
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("valid JSON");
    assert_eq!(json["config"]["lease_ms"], 15_000);
    assert_eq!(json["config"]["keep_acked"], true);
    let out = run(&["queue", "set", "cli"]).await;
    assert_eq!(
        out.status.code(),
        Some(64),
        "nothing to set is a usage error"
    );
    let out = run(&["queue", "set", "cli", "--backoff", "9s..1s"]).await;
    assert_eq!(out.status.code(), Some(64), "{}", stderr(&out));

    let out = run(&["peek", "cli", "--limit", "2"]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    let peeked = stdout(&out);
    assert_eq!(peeked.lines().count(), 3, "header and two tasks: {peeked}");
    assert!(
        peeked.contains("job 0") && !peeked.contains("job 2"),
        "{peeked}"
    );
    let out = run(&["peek", "cli", "--json"]).await;
    assert_eq!(stdout(&out).lines().count(), 3);
    assert_eq!(c.queue("cli").await.unwrap().ready, 3, "peek took nothing");

    // Tasks die; redrive brings them back.
    let mut sub = c.subscribe("cli").prefetch(3).await.unwrap();
    for _ in 0..3 {
        sub.recv()
            .await
            .unwrap()
            .unwrap()
            .fail("broken")
            .await
            .unwrap();
    }
    drop(sub);
    let out = run(&["peek", "cli", "--state", "dead"]).await;
    assert!(
        stdout(&out).contains("last error: broken"),
        "{}",
        stdout(&out)
    );
    let out = run(&["redrive", "cli", "--limit", "1"]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("redrove 1 "), "{}", stdout(&out));

    let out = run(&["pause", "cli"]).await;
    assert!(out.status.success());
    assert!(c.queue("cli").await.unwrap().paused);
    let out = run(&["resume", "cli"]).await;
    assert!(out.status.success());
    assert!(!c.queue("cli").await.unwrap().paused);

    // Destructive commands refuse without a terminal and without --yes.
    let out = run(&["purge", "cli"]).await;
    assert_eq!(out.status.code(), Some(64));
    assert!(stderr(&out).contains("--yes"), "{}", stderr(&out));
    assert_eq!(c.queue("cli").await.unwrap().dead, 2, "nothing was purged");
    let out = run(&["purge", "cli", "--state", "dead", "--yes"]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("purged 2 tasks"), "{}", stdout(&out));
    let out = run(&["delete-queue", "cli"]).await;
    assert_eq!(out.status.code(), Some(64));
    let out = run(&["delete-queue", "cli", "--yes"]).await;
    assert!(out.status.success(), "{}", stderr(&out));

    // A missing queue has its own exit code.
    for args in [
        &["queue", "cli"][..],
        &["peek", "cli"],
        &["purge", "cli", "--yes"],
        &["redrive", "cli"],
        &["delete-queue", "cli", "--yes"],
    ] {
        let out = run(args).await;
        assert_eq!(out.status.code(), Some(66), "{args:?}: {}", stderr(&out));
    }
    // No broker: unavailable.
    let out = squall(&["queues", "--server", "127.0.0.1:1"]).await;
    assert_eq!(out.status.code(), Some(69));
}
