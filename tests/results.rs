//! Task status, results and idempotent publish over real TCP: the states a task moves
//! through, waiting for results (pushed, not polled), retention and its sweep, and
//! idempotency keys under concurrency, across a kill -9 and past their window.

mod common;

use std::collections::HashSet;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{spec, temp_data_dir, ChildBroker, TestBroker, Wire, WAIT};
use squall_client::{Client, PublishOptions, TaskOutcome, TaskState, TaskStatus};
use squall_proto::v1::{self, request::Op, response};

async fn client(broker_addr: std::net::SocketAddr, name: &str) -> Client {
    Client::builder()
        .client_name(name)
        .connect(broker_addr)
        .await
        .expect("client connects")
}

/// Polls the status until `done` holds (bounded by WAIT).
async fn status_until(c: &Client, id: u64, done: impl Fn(&TaskStatus) -> bool) -> TaskStatus {
    let deadline = Instant::now() + WAIT;
    loop {
        let s = c.task(id).await.expect("task status");
        if done(&s) {
            return s;
        }
        assert!(Instant::now() < deadline, "task {id} stuck at {s:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn status_moves_through_each_state_in_order() {
    let broker = TestBroker::start().await;
    let producer = client(broker.addr, "producer").await;
    let worker = client(broker.addr, "status-worker").await;
    let id = producer.publish("status", "work").await.unwrap().id;
    let mut seen = Vec::new();

    let s = producer.task(id).await.unwrap();
    assert_eq!(
        (s.state, s.attempts, s.queue.as_str()),
        (TaskState::Ready, 0, "status")
    );
    assert_eq!(s.max_attempts, 5, "the queue's default limit");
    assert!(s.created_at.is_some() && s.lease.is_none() && s.result.is_none());
    seen.push(s.state);

    // Leased: unsubscribe right away so that nothing else is delivered, the lease stays.
    let mut sub = worker.subscribe("status").prefetch(1).await.unwrap();
    let d = sub.recv().await.unwrap().unwrap();
    sub.unsubscribe().await.unwrap();
    let s = producer.task(id).await.unwrap();
    assert_eq!((s.state, s.attempts), (TaskState::Leased, 1));
    let lease = s.lease.clone().expect("lease holder");
    assert_eq!(lease.consumer, "status-worker");
    assert!(lease.deadline > std::time::SystemTime::now());
    seen.push(s.state);

    // Delayed by the nack, then ready again once the delay is over.
    d.nack_after(Duration::from_secs(1)).await.unwrap();
    let s = producer.task(id).await.unwrap();
    assert_eq!(s.state, TaskState::Delayed);
    assert_eq!(s.last_error.as_deref(), Some("nacked"));
    assert!(s.not_before.is_some() && s.lease.is_none());
    seen.push(s.state);
    let s = status_until(&producer, id, |s| s.state != TaskState::Delayed).await;
    seen.push(s.state);

    // Leased on its second attempt, then succeeded with a result.
    let mut sub = worker.subscribe("status").prefetch(1).await.unwrap();
    let d = sub.recv().await.unwrap().unwrap();
    assert_eq!(d.attempt(), 2);
    let s = producer.task(id).await.unwrap();
    assert_eq!(s.attempts, 2);
    seen.push(s.state);
    d.ack_with("thumbnail.png").await.unwrap();
    let s = producer.task(id).await.unwrap();
    seen.push(s.state);
    assert_eq!(s.result, Some(Bytes::from_static(b"thumbnail.png")));
    let expires = s.expires_at.expect("a succeeded record expires");
    let ttl = expires.duration_since(s.updated_at.unwrap()).unwrap();
    assert_eq!(
        ttl,
        Duration::from_millis(broker.config.queue_defaults.result_ttl_ms)
    );

    use TaskState::*;
    assert_eq!(seen, [Ready, Leased, Delayed, Ready, Leased, Succeeded]);
    // An id the broker never handed out.
    assert_eq!(producer.task(id + 1000).await.unwrap().state, Unknown);
}

#[tokio::test]
async fn wait_result_wakes_on_success_and_on_death() {
    let broker = TestBroker::start().await;
    let producer = client(broker.addr, "producer").await;
    let worker = client(broker.addr, "worker").await;
    let ok = producer.publish("wake", "ok").await.unwrap().id;
    let opts = PublishOptions::new().max_attempts(1);
    let bad = producer.publish_with("wake", "bad", opts).await.unwrap().id;
    let fail = producer.publish("wake", "fail").await.unwrap().id;

    let waits: Vec<_> = [ok, bad, fail]
        .into_iter()
        .map(|id| {
            let p = producer.clone();
            tokio::spawn(async move {
                let outcome = p.wait_result(id, Duration::from_secs(20)).await.unwrap();
                (outcome, Instant::now())
            })
        })
        .collect();
    // The waits are registered before anything finishes.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut sub = worker.subscribe("wake").prefetch(3).await.unwrap();
    let mut settled = Vec::new();
    for _ in 0..3 {
        let d = sub.recv().await.unwrap().unwrap();
        let id = d.id();
        if id == ok {
            d.ack_with("42").await.unwrap();
        } else if id == bad {
            d.nack().await.unwrap(); // its only attempt: dead
        } else {
            d.fail("unrecoverable").await.unwrap();
        }
        settled.push((id, Instant::now()));
    }
    let mut outcomes = Vec::new();
    for w in waits {
        outcomes.push(tokio::time::timeout(WAIT, w).await.unwrap().unwrap());
    }
    for (id, (_, woke)) in [ok, bad, fail].into_iter().zip(&outcomes) {
        let &(_, at) = settled.iter().find(|(s, _)| *s == id).unwrap();
        assert!(
            woke.duration_since(at) < Duration::from_secs(1),
            "task {id}: woken {:?} after it finished",
            woke.duration_since(at)
        );
    }
    match &outcomes[0].0 {
        TaskOutcome::Succeeded(s) => assert_eq!(s.result.as_deref(), Some(&b"42"[..])),
        other => panic!("expected success, got {other:?}"),
    }
    match &outcomes[1].0 {
        TaskOutcome::Dead(s) => {
            assert_eq!((s.last_error.as_deref(), s.attempts), (Some("nacked"), 1))
        }
        other => panic!("expected death, got {other:?}"),
    }
    match &outcomes[2].0 {
        TaskOutcome::Dead(s) => assert_eq!(s.last_error.as_deref(), Some("unrecoverable")),
        other => panic!("expected death, got {other:?}"),
    }
}

#[tokio::test]
async fn wait_result_times_out_cleanly_and_answers_at_once_when_already_finished() {
    let broker = TestBroker::start().await;
    let c = client(broker.addr, "waiter").await;
    let id = c.publish("timeouts", "slow").await.unwrap().id;

    let started = Instant::now();
    let outcome = c.wait_result(id, Duration::from_millis(300)).await.unwrap();
    let took = started.elapsed();
    match outcome {
        TaskOutcome::TimedOut(s) => assert_eq!(s.state, TaskState::Ready),
        other => panic!("expected a timeout, got {other:?}"),
    }
    assert!(
        took >= Duration::from_millis(290) && took < Duration::from_secs(2),
        "{took:?}"
    );
    c.ping()
        .await
        .expect("the connection is fine after a timed-out wait");

    // A timed-out wait of a leased task reports the lease.
    let mut sub = c.subscribe("timeouts").prefetch(1).await.unwrap();
    let d = sub.recv().await.unwrap().unwrap();
    match c.wait_result(id, Duration::from_millis(50)).await.unwrap() {
        TaskOutcome::TimedOut(s) => {
            assert_eq!(s.state, TaskState::Leased);
            assert_eq!(s.lease.unwrap().consumer, "waiter");
        }
        other => panic!("expected a timeout, got {other:?}"),
    }
    d.ack_with("done").await.unwrap();

    // Finished before the wait began: answered at once.
    let started = Instant::now();
    let outcome = c.wait_result(id, Duration::from_secs(30)).await.unwrap();
    assert!(started.elapsed() < Duration::from_secs(1));
    assert_eq!(outcome.result(), Some(&Bytes::from_static(b"done")));
    assert_eq!(
        c.wait_result(id + 999, Duration::from_secs(30))
            .await
            .unwrap(),
        TaskOutcome::Unknown
    );

    // On the wire: a zero timeout answers at once, many waits pipeline on one connection.
    let mut w = Wire::hello(broker.addr).await;
    let pending = w.publish("timeouts-wire", "pending").await;
    let mut reqs = Vec::new();
    for task in [pending, id, pending] {
        reqs.push(
            w.send(Op::WaitResult(v1::WaitResult {
                task_id: task,
                timeout_ms: 0,
            }))
            .await,
        );
    }
    // A final task is answered from the store at once, a pending one after the hub
    // added its lease: the answers may come in any order.
    let want = [
        v1::TaskState::Ready,
        v1::TaskState::Succeeded,
        v1::TaskState::Ready,
    ];
    let mut answers = std::collections::HashMap::new();
    while answers.len() < reqs.len() {
        match w.recv().await.expect("answers").kind {
            Some(v1::server_message::Kind::Response(r)) => {
                answers.insert(r.id, r.result);
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    for (req, want) in reqs.into_iter().zip(want) {
        match &answers[&req] {
            Some(response::Result::Task(info)) => assert_eq!(info.state, want as i32),
            other => panic!("unexpected {other:?}"),
        }
    }
}

#[tokio::test]
async fn a_queue_keeping_no_results_removes_acked_tasks_but_still_wakes_waiters() {
    let broker = TestBroker::start_with(|c| c.queue_defaults.result_ttl_ms = 0).await;
    let c = client(broker.addr, "no-results").await;
    let id = c.publish("ephemeral", "x").await.unwrap().id;
    let waiter = {
        let c = c.clone();
        tokio::spawn(async move { c.wait_result(id, Duration::from_secs(20)).await })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut sub = c.subscribe("ephemeral").prefetch(1).await.unwrap();
    sub.recv()
        .await
        .unwrap()
        .unwrap()
        .ack_with("dropped")
        .await
        .unwrap();
    match tokio::time::timeout(WAIT, waiter)
        .await
        .unwrap()
        .unwrap()
        .unwrap()
    {
        TaskOutcome::Succeeded(s) => assert_eq!(s.id, id),
        other => panic!("expected success, got {other:?}"),
    }
    assert_eq!(
        c.task(id).await.unwrap().state,
        TaskState::Unknown,
        "nothing kept"
    );
    assert_eq!(
        c.wait_result(id, Duration::from_secs(5)).await.unwrap(),
        TaskOutcome::Unknown
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_key_published_100_times_concurrently_creates_one_task() {
    const WINDOW_MS: u64 = 2_000;
    let broker = TestBroker::start_with(|c| c.queue_defaults.dedup_window_ms = WINDOW_MS).await;
    let first_publish = Instant::now();
    let mut publishers = Vec::new();
    for conn in 0..20 {
        let addr = broker.addr;
        publishers.push(tokio::spawn(async move {
            let c = client(addr, &format!("publisher-{conn}")).await;
            let sends = (0..5).map(|i| {
                let opts = PublishOptions::new().idempotency_key("order-17");
                let c = c.clone();
                async move {
                    c.publish_with("dedup", format!("{conn}-{i}"), opts)
                        .await
                        .unwrap()
                }
            });
            futures_util::future::join_all(sends).await
        }));
    }
    let mut all = Vec::new();
    for p in publishers {
        all.extend(p.await.unwrap());
    }
    assert_eq!(all.len(), 100);
    let ids: HashSet<u64> = all.iter().map(|p| p.id).collect();
    assert_eq!(ids.len(), 1, "one task id for one key: {ids:?}");
    let original = all[0].id;
    assert_eq!(
        all.iter().filter(|p| !p.duplicate).count(),
        1,
        "exactly one created it"
    );

    // Only one task is in the queue.
    let c = client(broker.addr, "consumer").await;
    let mut sub = c.subscribe("dedup").prefetch(10).await.unwrap();
    let d = sub.recv().await.unwrap().unwrap();
    assert_eq!(d.id(), original);
    d.ack().await.unwrap();
    assert!(
        tokio::time::timeout(Duration::from_millis(300), sub.recv())
            .await
            .is_err(),
        "a duplicate was delivered"
    );

    // Still inside the window, whatever the first task's state: the original id. The
    // same key on another queue is another task; two uses in one batch are one task.
    let again = c
        .publish_with(
            "dedup",
            "again",
            PublishOptions::new().idempotency_key("order-17"),
        )
        .await
        .unwrap();
    assert_eq!((again.id, again.duplicate), (original, true));
    let other = c
        .publish_with(
            "dedup-other",
            "x",
            PublishOptions::new().idempotency_key("order-17"),
        )
        .await
        .unwrap();
    assert!(!other.duplicate && other.id != original);
    let mut w = Wire::hello(broker.addr).await;
    let keyed = |payload: &str, key: &str| v1::TaskSpec {
        idempotency_key: key.into(),
        ..spec("dedup-batch", payload)
    };
    let ids = w
        .publish_spec(vec![keyed("a", "k"), keyed("b", "k"), keyed("c", "")])
        .await
        .unwrap();
    assert_eq!(ids[0], ids[1]);
    assert_ne!(ids[0], ids[2]);

    // After the window a new task is created.
    let window_end = first_publish + Duration::from_millis(WINDOW_MS + 100);
    tokio::time::sleep_until(window_end.into()).await;
    let fresh = c
        .publish_with(
            "dedup",
            "fresh",
            PublishOptions::new().idempotency_key("order-17"),
        )
        .await
        .unwrap();
    assert!(!fresh.duplicate && fresh.id > original, "{fresh:?}");
    assert!(
        w.publish_spec(vec![keyed("x", &"k".repeat(1025))])
            .await
            .is_err(),
        "key too long"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn results_and_keys_survive_kill_9_and_are_swept_after_their_ttl() {
    let (_guard, dir) = temp_data_dir();
    let flags = [
        "--default-result-ttl",
        "5s",
        "--default-dedup-window",
        "5s",
        "--sweep-interval",
        "100ms",
    ];
    let broker = ChildBroker::spawn(&dir, &flags);
    let c = client(broker.addr, "before").await;
    let keyed = || PublishOptions::new().idempotency_key("report-2024-05");
    let acked = c.publish_with("crash", "report", keyed()).await.unwrap().id;
    let dead = c.publish("crash", "poison").await.unwrap().id;
    let mut sub = c.subscribe("crash").prefetch(2).await.unwrap();
    for _ in 0..2 {
        let d = sub.recv().await.unwrap().unwrap();
        if d.id() == acked {
            d.ack_with("report.pdf").await.unwrap();
        } else {
            d.fail("bad input").await.unwrap();
        }
    }
    let finished = Instant::now();
    broker.kill9();
    drop((sub, c));

    let broker = ChildBroker::spawn(&dir, &flags);
    let c = client(broker.addr, "after").await;
    let s = c.task(acked).await.unwrap();
    assert_eq!(s.state, TaskState::Succeeded);
    assert_eq!(s.result, Some(Bytes::from_static(b"report.pdf")));
    let d = c.task(dead).await.unwrap();
    assert_eq!(
        (d.state, d.last_error.as_deref()),
        (TaskState::Dead, Some("bad input"))
    );
    let again = c.publish_with("crash", "report", keyed()).await.unwrap();
    assert_eq!(
        (again.id, again.duplicate),
        (acked, true),
        "the key survived"
    );
    assert!(
        finished.elapsed() < Duration::from_secs(5),
        "the checks above ran inside the TTL ({:?})",
        finished.elapsed()
    );

    // Past the TTL the sweep removes both records and the key.
    for id in [acked, dead] {
        status_until(&c, id, |s| s.state == TaskState::Unknown).await;
    }
    assert!(finished.elapsed() >= Duration::from_secs(5));
    let fresh = c.publish_with("crash", "report", keyed()).await.unwrap();
    assert!(!fresh.duplicate && fresh.id > dead);
}

#[tokio::test]
async fn the_task_command_prints_status_and_waits() {
    let broker = TestBroker::start().await;
    let c = client(broker.addr, "cli-test").await;
    let server = broker.addr.to_string();
    // The broker runs on this test's runtime: the CLI must not block it.
    let squall = |args: &[&str]| {
        let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_squall"));
        cmd.args(args).args(["--server", &server]);
        async move {
            let out = cmd.output().await.expect("run squall");
            (
                out.status.code(),
                String::from_utf8_lossy(&out.stdout).into_owned(),
                String::from_utf8_lossy(&out.stderr).into_owned(),
            )
        }
    };
    let (code, out, _) = squall(&["publish", "cli", "hello", "--key", "k1"]).await;
    assert_eq!(code, Some(0));
    let id: u64 = out.trim().parse().expect("publish prints the id");
    let (code, out, err) = squall(&["publish", "cli", "hello again", "--key", "k1"]).await;
    assert_eq!((code, out.trim()), (Some(0), id.to_string().as_str()));
    assert!(err.contains("already published"), "{err}");

    let (code, out, err) = squall(&["task", &id.to_string(), "--wait", "200ms"]).await;
    assert_eq!(code, Some(75), "{err}");
    assert!(out.contains("state       ready"), "{out}");
    assert!(err.contains("still ready"), "{err}");

    let mut sub = c.subscribe("cli").prefetch(1).await.unwrap();
    sub.recv()
        .await
        .unwrap()
        .unwrap()
        .ack_with("{\"pages\":3}")
        .await
        .unwrap();
    let (code, out, _) = squall(&["task", &id.to_string(), "--json", "--wait", "5s"]).await;
    assert_eq!(code, Some(0));
    let json: serde_json::Value = serde_json::from_str(out.trim()).expect("one JSON object");
    assert_eq!(json["state"], "succeeded");
    assert_eq!(json["result"], "{\"pages\":3}");
    assert_eq!(json["id"], id);

    let (code, out, _) = squall(&["task", &id.to_string()]).await;
    assert_eq!(code, Some(0));
    for row in [
        "id          ",
        "state       succeeded",
        "result      {\"pages\":3}",
        "expires     ",
    ] {
        assert!(out.contains(row), "missing {row:?} in\n{out}");
    }
    let (code, _, err) = squall(&["task", "999999"]).await;
    assert_eq!(code, Some(66));
    assert!(err.contains("unknown"), "{err}");
}

/// A broker stand-in that answers Hello, takes one request per connection, and either
/// drops the connection (the outcome is then unknown to the client) or answers it.
async fn flaky_broker(listener: tokio::net::TcpListener, answer_on: usize) -> Vec<v1::TaskSpec> {
    use squall_proto::{decode_frame, encode_frame};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let mut seen = Vec::new();
    for round in 0..=answer_on {
        let (mut sock, _) = listener.accept().await.unwrap();
        let mut buf = bytes::BytesMut::new();
        let mut next = async |sock: &mut tokio::net::TcpStream| loop {
            if let Some(req) = decode_frame::<v1::Request>(&mut buf, 1 << 20).unwrap() {
                return req;
            }
            assert!(sock.read_buf(&mut buf).await.unwrap() > 0, "client hung up");
        };
        let reply = |id, result| v1::ServerMessage {
            kind: Some(v1::server_message::Kind::Response(v1::Response {
                id,
                result: Some(result),
            })),
        };
        let hello = next(&mut sock).await;
        let mut out = bytes::BytesMut::new();
        let ok = response::Result::Hello(Box::new(v1::HelloOk {
            protocol_version: squall_proto::PROTOCOL_VERSION,
            ..Default::default()
        }));
        encode_frame(&reply(hello.id, ok), &mut out);
        sock.write_all(&out).await.unwrap();
        let req = next(&mut sock).await;
        let Some(Op::Publish(p)) = req.op else {
            panic!("expected a publish, got {req:?}");
        };
        seen.extend(p.tasks);
        if round == answer_on {
            let ok = response::Result::Publish(v1::PublishOk {
                tasks: vec![v1::Published {
                    task_id: 7,
                    duplicate: true,
                }],
            });
            out.clear();
            encode_frame(&reply(req.id, ok), &mut out);
            sock.write_all(&out).await.unwrap();
            // Keep the connection until the client is done with it.
            let _ = sock.read_buf(&mut buf).await;
        }
    }
    seen
}

#[tokio::test]
async fn a_publish_with_a_key_is_sent_again_after_a_lost_connection_and_one_without_is_not() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let fake = tokio::spawn(flaky_broker(listener, 2));
    let c = Client::builder()
        .reconnect(
            squall_client::ReconnectPolicy::default().initial_delay(Duration::from_millis(10)),
        )
        .keepalive(None)
        .connect(addr)
        .await
        .unwrap();
    // Round 0: no key, connection lost: the outcome is unknown and the client says so.
    let err = c.publish("q", "no key").await.unwrap_err();
    assert!(
        matches!(err, squall_client::ClientError::ConnectionLost { .. }),
        "{err}"
    );
    // Rounds 1 and 2: with a key, lost once, then answered: the caller sees one publish.
    let published = c
        .publish_with("q", "keyed", PublishOptions::new().idempotency_key("k"))
        .await
        .unwrap();
    assert_eq!((published.id, published.duplicate), (7, true));
    c.close().await;
    let seen = tokio::time::timeout(WAIT, fake).await.unwrap().unwrap();
    let keys: Vec<&str> = seen.iter().map(|t| t.idempotency_key.as_str()).collect();
    assert_eq!(keys, ["", "k", "k"]);
}

/// An operator's purge or delete-queue ends the result waits of the tasks it removes
/// at once (with "unknown": the task is gone), instead of leaving them to their timeout.
#[tokio::test]
async fn purge_and_delete_queue_end_the_waits_of_the_tasks_they_remove() {
    let broker = TestBroker::start().await;
    let c = client(broker.addr, "waiter").await;
    let purged = c.publish("purged", "x").await.unwrap().id;
    let deleted = c.publish("deleted", "y").await.unwrap().id;
    let waits: Vec<_> = [purged, deleted]
        .into_iter()
        .map(|id| {
            let c = c.clone();
            tokio::spawn(async move { c.wait_result(id, Duration::from_secs(30)).await })
        })
        .collect();
    // The waits are registered before the removals.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let started = Instant::now();
    assert_eq!(c.purge("purged", None).await.unwrap(), 1);
    assert_eq!(c.delete_queue("deleted").await.unwrap(), 1);
    for w in waits {
        let outcome = tokio::time::timeout(WAIT, w)
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert!(matches!(outcome, TaskOutcome::Unknown), "{outcome:?}");
    }
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "woken by the removal, not the 30 s timeout: {:?}",
        started.elapsed()
    );
}
