//! Resource limits at the protocol edge: connections, handshake and idle timeouts,
//! unanswered requests per connection, and per-queue length. Each limit answers with
//! its typed error and the broker keeps serving everyone else.

mod common;

use std::time::Duration;

use common::{spec, TestBroker, Wire, WAIT};
use squall_proto::v1::{self, request::Op, response};
use squall_proto::ErrorCode;

#[tokio::test]
async fn connections_past_the_limit_get_too_many_connections_and_are_closed() {
    let broker = TestBroker::start_with(|c| c.max_connections = 2).await;
    let a = Wire::hello(broker.addr).await;
    let mut b = Wire::hello(broker.addr).await;
    let mut c = Wire::connect(broker.addr).await;
    let (id, err) = c.expect_error().await;
    assert_eq!(
        (id, err.code),
        (0, ErrorCode::TooManyConnections),
        "{err:?}"
    );
    assert!(c.closed_by_peer().await);
    // The two admitted connections still work.
    assert!(matches!(
        b.call(Op::Ping(v1::Ping {})).await,
        Ok(response::Result::Pong(_))
    ));
    // A slot frees when a connection closes.
    drop(a);
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let mut w = Wire::connect(broker.addr).await;
        let id = w
            .send(Op::Hello(v1::Hello {
                protocol_version: squall_proto::PROTOCOL_VERSION,
                client_name: "late".into(),
                token: String::new(),
            }))
            .await;
        match w.response_or_eof(id).await {
            Some(Ok(response::Result::Hello(_))) => break,
            _ => assert!(
                tokio::time::Instant::now() < deadline,
                "no slot freed after a close"
            ),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_connection_without_hello_is_closed_at_the_handshake_timeout() {
    let broker = TestBroker::start_with(|c| c.handshake_timeout = Duration::from_millis(200)).await;
    let started = std::time::Instant::now();
    let mut silent = Wire::connect(broker.addr).await;
    let (id, err) = silent.expect_error().await;
    assert_eq!((id, err.code), (0, ErrorCode::Timeout), "{err:?}");
    assert!(silent.closed_by_peer().await);
    assert!(started.elapsed() >= Duration::from_millis(190));
    // A connection that says Hello in time is not affected by the handshake timer.
    let mut good = Wire::hello(broker.addr).await;
    tokio::time::sleep(Duration::from_millis(400)).await;
    good.publish("q", "still here").await;
}

#[tokio::test]
async fn an_idle_connection_is_closed_but_pings_keep_it_open() {
    let broker = TestBroker::start_with(|c| c.idle_timeout = Duration::from_millis(300)).await;
    let mut w = Wire::hello(broker.addr).await;
    for _ in 0..8 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(
            matches!(
                w.call(Op::Ping(v1::Ping {})).await,
                Ok(response::Result::Pong(_))
            ),
            "a pinging connection stays open"
        );
    }
    let quiet_since = std::time::Instant::now();
    let (id, err) = w.expect_error().await;
    assert_eq!((id, err.code), (0, ErrorCode::Timeout), "{err:?}");
    assert!(w.closed_by_peer().await);
    let quiet = quiet_since.elapsed();
    assert!(
        quiet >= Duration::from_millis(250) && quiet < Duration::from_secs(3),
        "closed after {quiet:?} of silence"
    );
}

#[tokio::test]
async fn the_rust_client_keeps_an_idle_connection_alive_with_its_pings() {
    let broker = TestBroker::start_with(|c| c.idle_timeout = Duration::from_millis(400)).await;
    let client = squall_client::Client::builder()
        .keepalive(Some(Duration::from_millis(100)))
        .connect(broker.addr)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(1200)).await;
    // Same connection: no reconnect happened (the reconnect would also succeed, so
    // check the broker's accepted count through a publish on the live connection).
    client.publish("q", "alive").await.unwrap();
    let (_, body) = common::http_get(broker.http_addr(), "/metrics").await;
    assert!(
        body.contains("squall_connections_accepted_total 1\n"),
        "the client reconnected: {body}"
    );
}

/// Sends `n` `WaitResult`s for `task` that stay unanswered (the task is not finished).
async fn park_waits(w: &mut Wire, task: u64, n: usize) {
    for _ in 0..n {
        w.send(Op::WaitResult(v1::WaitResult {
            task_id: task,
            timeout_ms: 30_000,
        }))
        .await;
    }
}

#[tokio::test]
async fn requests_past_the_inflight_limit_get_too_many_requests_and_the_connection_stays_usable() {
    let broker = TestBroker::start_with(|c| c.max_inflight_requests = 4).await;
    let mut w = Wire::connect(broker.addr).await;
    let hello = w
        .call(Op::Hello(v1::Hello {
            protocol_version: squall_proto::PROTOCOL_VERSION,
            client_name: "t".into(),
            token: String::new(),
        }))
        .await;
    match hello {
        Ok(response::Result::Hello(ok)) => {
            assert_eq!(ok.limits.unwrap().max_inflight_requests, 4)
        }
        other => panic!("{other:?}"),
    }
    let task = w.publish("waited", "x").await;
    park_waits(&mut w, task, 4).await;
    let err = w.call(Op::Ping(v1::Ping {})).await.unwrap_err();
    assert_eq!(err.code, ErrorCode::TooManyRequests, "{err:?}");
    // Another connection finishes the task: the waits are answered, and the first
    // connection is usable again.
    let mut worker = Wire::hello(broker.addr).await;
    worker.subscribe("waited", 1).await;
    let d = worker.delivery().await;
    worker.ack(&d).await.unwrap();
    let mut answered = 0;
    while answered < 4 {
        let m = tokio::time::timeout(WAIT, w.recv())
            .await
            .unwrap()
            .expect("open");
        if let Some(v1::server_message::Kind::Response(r)) = m.kind {
            assert!(matches!(r.result, Some(response::Result::Task(_))), "{r:?}");
            answered += 1;
        }
    }
    assert!(matches!(
        w.call(Op::Ping(v1::Ping {})).await,
        Ok(response::Result::Pong(_))
    ));
}

#[tokio::test]
async fn a_request_with_id_zero_is_refused() {
    let broker = TestBroker::start().await;
    let mut w = Wire::hello(broker.addr).await;
    let mut buf = bytes::BytesMut::new();
    squall_proto::encode_frame(
        &v1::Request {
            id: 0,
            op: Some(Op::Ping(v1::Ping {})),
        },
        &mut buf,
    );
    w.send_raw(&buf).await;
    let (id, err) = w.expect_error().await;
    assert_eq!((id, err.code), (0, ErrorCode::BadRequest), "{err:?}");
    assert!(w.closed_by_peer().await);
    let mut good = Wire::hello(broker.addr).await;
    good.publish_spec(vec![spec("q", "fine")]).await.unwrap();
}

fn queue_full(e: &squall_client::ClientError) -> bool {
    e.code() == Some(squall_client::ErrorCode::QueueFull)
}

#[tokio::test]
async fn a_bounded_queue_refuses_publishes_past_its_max_length_and_stores_nothing() {
    let broker = TestBroker::start().await;
    let client = squall_client::Client::connect(broker.addr).await.unwrap();
    let update = squall_client::QueueConfigUpdate::default()
        .max_length(3)
        .lease(Duration::from_secs(30));
    client.set_queue_config("small", update).await.unwrap();
    for i in 0..3 {
        client.publish("small", format!("t{i}")).await.unwrap();
    }
    let err = client.publish("small", "t3").await.unwrap_err();
    assert!(queue_full(&err), "{err}");
    assert!(err.to_string().contains("max_length is 3"), "{err}");
    // A batch that does not fit is refused whole, even though one task would fit.
    let mut w = Wire::hello(broker.addr).await;
    let mut worker = Wire::hello(broker.addr).await;
    worker.subscribe("small", 1).await;
    let d = worker.delivery().await;
    // Leased tasks still count.
    let err = w.publish_spec(vec![spec("small", "x")]).await.unwrap_err();
    assert_eq!(err.code, ErrorCode::QueueFull);
    worker.ack(&d).await.unwrap();
    let err = w
        .publish_spec(vec![spec("small", "a"), spec("small", "b")])
        .await
        .unwrap_err();
    assert_eq!(err.code, ErrorCode::QueueFull);
    let info = client.queue("small").await.unwrap();
    assert_eq!(info.ready + info.leased + info.delayed, 2, "{info:?}");
    assert_eq!(
        info.totals.published, 3,
        "nothing of the refused batch was stored"
    );
    // Room again after the ack.
    w.publish_spec(vec![spec("small", "fits")]).await.unwrap();
    // Other queues are not affected.
    for _ in 0..5 {
        client.publish("other", "free").await.unwrap();
    }
}

#[tokio::test]
async fn concurrent_publishes_never_overfill_a_bounded_queue() {
    let broker = TestBroker::start_with(|c| c.queue_defaults.max_length = 10).await;
    let client = squall_client::Client::connect(broker.addr).await.unwrap();
    let tasks = (0..40).map(|i| {
        let client = client.clone();
        tokio::spawn(async move { client.publish("capped", format!("t{i}")).await })
    });
    let (mut ok, mut full) = (0, 0);
    for t in tasks {
        match t.await.unwrap() {
            Ok(_) => ok += 1,
            Err(e) if queue_full(&e) => full += 1,
            Err(e) => panic!("{e}"),
        }
    }
    assert_eq!((ok, full), (10, 30));
    let info = client.queue("capped").await.unwrap();
    assert_eq!(info.ready, 10);
    // A queue configured unbounded under a bounded default takes the fast path.
    let update = squall_client::QueueConfigUpdate::default().max_length(0);
    client.set_queue_config("open", update).await.unwrap();
    for i in 0..15 {
        client.publish("open", format!("t{i}")).await.unwrap();
    }
}
