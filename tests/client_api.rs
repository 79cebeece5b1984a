//! The `squall_client` API against a real in-process broker over TCP (issue 3):
//! publish options arrive as set, prefetch, every way to settle a delivery, lease
//! extension and expiry, reconnects, and typed, bounded failures when the broker is
//! down, silent, or refuses a request.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use common::{wait_until, TestBroker, WAIT};
use squall::model::{TaskState, TaskStatus};
use squall::store::{FsyncMode, Store, StoreConfig};
use squall_client::{
    Client, ClientError, Delivery, ErrorCode, Message, PublishOptions, ReconnectPolicy,
    Subscription,
};

/// Reads a stored task state from the data directory of a stopped broker.
fn stored_state(broker: &TestBroker, id: u64) -> Option<TaskState> {
    let store = Store::open(&StoreConfig {
        path: broker.data_dir().to_owned(),
        fsync: FsyncMode::Always,
        cache_bytes: 8 << 20,
        journal_segment_bytes: squall::store::DEFAULT_JOURNAL_SEGMENT_BYTES,
    })
    .expect("open the stopped broker's store");
    store.get_state(id).expect("read task state")
}

/// The next delivery, failing the test if none arrives within the wait.
async fn next(sub: &mut Subscription) -> Delivery {
    tokio::time::timeout(WAIT, sub.recv())
        .await
        .expect("a delivery within the wait")
        .expect("subscription still open")
        .expect("no subscription error")
}

/// The next delivery if one arrives within `within`.
async fn next_within(sub: &mut Subscription, within: Duration) -> Option<Delivery> {
    match tokio::time::timeout(within, sub.recv()).await {
        Ok(Some(Ok(d))) => Some(d),
        Ok(other) => panic!("subscription ended: {other:?}"),
        Err(_) => None,
    }
}

/// `t` as milliseconds from now (negative in the past).
fn ms_from_now(t: SystemTime) -> i128 {
    match t.duration_since(SystemTime::now()) {
        Ok(d) => d.as_millis() as i128,
        Err(e) => -(e.duration().as_millis() as i128),
    }
}

#[tokio::test]
async fn publish_options_arrive_as_set() {
    let broker = TestBroker::start().await;
    let client = Client::connect(broker.addr).await.unwrap();
    let info = client.server_info();
    assert_eq!(info.limits.max_batch, 1_000, "limits announced: {info:?}");

    let plain = client.publish("opts", "plain").await.unwrap();
    assert!(!plain.duplicate);
    let rich = PublishOptions::new()
        .priority(7)
        .max_attempts(3)
        .lease(Duration::from_secs(20))
        .header("tenant", "acme")
        .header("bin", vec![0u8, 1, 255]);
    let batch = client
        .publish_batch([
            Message::new("opts", "low"),
            Message::new("opts", "high").with_options(rich),
        ])
        .await
        .unwrap();
    assert_eq!(batch.len(), 2);
    assert!(
        plain.id < batch[0].id && batch[0].id < batch[1].id,
        "ids increase, in order"
    );

    let mut sub = client.subscribe("opts").prefetch(10).await.unwrap();
    assert_eq!(sub.prefetch(), 10);
    let high = next(&mut sub).await;
    assert_eq!(high.id(), batch[1].id, "higher priority first");
    assert_eq!(high.payload(), &Bytes::from_static(b"high"));
    assert_eq!(high.queue(), "opts");
    assert_eq!(high.priority(), 7);
    assert_eq!(high.attempt(), 1);
    assert_eq!(high.max_attempts(), 3);
    assert_eq!(high.header("tenant"), Some(&Bytes::from_static(b"acme")));
    assert_eq!(high.header("bin"), Some(&Bytes::from_static(&[0, 1, 255])));
    assert_eq!(high.headers().len(), 2);
    let left = ms_from_now(high.deadline());
    assert!(
        (15_000..=20_500).contains(&left),
        "per-task lease of 20 s: {left} ms left"
    );
    assert!(high.created_at() <= SystemTime::now());
    let plain_d = next(&mut sub).await;
    let low = next(&mut sub).await;
    assert_eq!(
        (plain_d.id(), low.id()),
        (plain.id, batch[0].id),
        "then FIFO"
    );
    assert_eq!(low.priority(), 0);
    assert_eq!(low.max_attempts(), 5, "the queue's default");
    assert!(low.headers().is_empty());
    let left = ms_from_now(low.deadline());
    assert!(
        (0..=2_500).contains(&left),
        "queue lease of 2 s: {left} ms left"
    );
    for d in [high, plain_d, low] {
        d.ack().await.unwrap();
    }

    // Delay and run-at: not delivered early (the later of the two applies).
    let t = Instant::now();
    let delayed = client
        .publish_with(
            "opts",
            "delayed",
            PublishOptions::new().delay(Duration::from_millis(600)),
        )
        .await
        .unwrap();
    let d = next(&mut sub).await;
    assert_eq!(d.id(), delayed.id);
    assert!(
        t.elapsed() >= Duration::from_millis(590),
        "delay respected: {:?}",
        t.elapsed()
    );
    d.ack().await.unwrap();
    let t = Instant::now();
    let at = client
        .publish_with(
            "opts",
            "run at",
            PublishOptions::new()
                .run_at(SystemTime::now() + Duration::from_millis(600))
                .delay(Duration::from_millis(100)),
        )
        .await
        .unwrap();
    let d = next(&mut sub).await;
    assert_eq!(d.id(), at.id);
    assert!(
        t.elapsed() >= Duration::from_millis(590),
        "run_at respected: {:?}",
        t.elapsed()
    );
    d.ack().await.unwrap();
}

#[tokio::test]
async fn prefetch_bounds_unsettled_deliveries() {
    let broker = TestBroker::start().await;
    let client = Client::connect(broker.addr).await.unwrap();
    client
        .publish_batch((0..5).map(|i| Message::new("pf", i.to_string())))
        .await
        .unwrap();
    let mut sub = client.subscribe("pf").prefetch(2).await.unwrap();
    let a = next(&mut sub).await;
    let b = next(&mut sub).await;
    assert!(
        next_within(&mut sub, Duration::from_millis(300))
            .await
            .is_none(),
        "no third delivery while two are unsettled"
    );
    a.ack().await.unwrap();
    let c = next(&mut sub).await;
    assert_eq!(c.payload(), &Bytes::from_static(b"2"));
    assert!(next_within(&mut sub, Duration::from_millis(200))
        .await
        .is_none());
    for d in [b, c] {
        d.ack().await.unwrap();
    }
    for _ in 0..2 {
        next(&mut sub).await.ack().await.unwrap();
    }
}

#[tokio::test]
async fn ack_ack_with_nack_and_nack_after_settle_as_documented() {
    let mut broker = TestBroker::start_with(|c| {
        c.queue_defaults.backoff_min_ms = 200;
        c.queue_defaults.backoff_max_ms = 200;
    })
    .await;
    let client = Client::connect(broker.addr).await.unwrap();
    let ids: Vec<u64> = client
        .publish_batch((0..3).map(|i| Message::new("settle", i.to_string())))
        .await
        .unwrap()
        .iter()
        .map(|p| p.id)
        .collect();
    let mut sub = client.subscribe("settle").prefetch(1).await.unwrap();

    next(&mut sub).await.ack().await.unwrap();
    next(&mut sub).await.ack_with("the result").await.unwrap();

    // nack: retried after the queue's backoff (equal jitter over 200 ms: >= 100 ms).
    let d = next(&mut sub).await;
    assert_eq!((d.id(), d.attempt()), (ids[2], 1));
    let t = Instant::now();
    d.nack().await.unwrap();
    let d = next(&mut sub).await;
    assert!(
        t.elapsed() >= Duration::from_millis(95),
        "backoff: {:?}",
        t.elapsed()
    );
    assert_eq!((d.id(), d.attempt()), (ids[2], 2));

    // nack_after: not delivered early.
    let t = Instant::now();
    d.nack_after(Duration::from_millis(700)).await.unwrap();
    let d = next(&mut sub).await;
    assert!(
        t.elapsed() >= Duration::from_millis(690),
        "delay: {:?}",
        t.elapsed()
    );
    assert_eq!((d.id(), d.attempt()), (ids[2], 3));

    // nack_with: the reason is recorded as the task's last error.
    d.nack_with("try later", Some(Duration::from_secs(60)))
        .await
        .unwrap();
    assert!(next_within(&mut sub, Duration::from_millis(200))
        .await
        .is_none());
    drop(sub);
    client.close().await;
    broker.stop().await;
    // An ack with a result is kept as succeeded for the queue's result_ttl, with its
    // result; an ack without one (the queue has no keep_acked) leaves nothing.
    let store = Store::open(&StoreConfig {
        path: broker.data_dir().to_owned(),
        fsync: FsyncMode::Always,
        cache_bytes: 8 << 20,
        journal_segment_bytes: squall::store::DEFAULT_JOURNAL_SEGMENT_BYTES,
    })
    .unwrap();
    assert!(
        store.get_record(ids[0]).unwrap().is_none(),
        "an ack without a result leaves no record"
    );
    let with_result = store.get_record(ids[1]).unwrap().expect("acked: kept");
    assert_eq!(with_result.state.status, TaskStatus::Succeeded);
    assert_eq!(
        &with_result.retained.expect("retention record").result[..],
        b"the result"
    );
    drop(store);
    let st = stored_state(&broker, ids[2]).expect("nacked task kept");
    assert_eq!(st.status, TaskStatus::Pending);
    assert_eq!(st.attempts, 3);
    assert_eq!(st.last_error.as_deref(), Some("try later"));
}

#[tokio::test]
async fn fail_dead_letters_at_once_and_is_never_redelivered() {
    let mut broker = TestBroker::start_with(|c| {
        c.queue_defaults.backoff_min_ms = 0;
        c.queue_defaults.backoff_max_ms = 0;
    })
    .await;
    let client = Client::connect(broker.addr).await.unwrap();
    let id = client.publish("fail", "poison").await.unwrap().id;
    let mut sub = client.subscribe("fail").prefetch(4).await.unwrap();
    let d = next(&mut sub).await;
    assert!(!d.is_last_attempt(), "attempt 1 of 5");
    d.fail("cannot parse").await.unwrap();
    assert!(
        next_within(&mut sub, Duration::from_millis(500))
            .await
            .is_none(),
        "a failed task is not retried"
    );
    drop(sub);
    client.close().await;
    broker.stop().await;
    let st = stored_state(&broker, id).expect("dead task kept");
    assert_eq!(st.status, TaskStatus::Dead);
    assert_eq!(st.last_error.as_deref(), Some("cannot parse"));
    assert_eq!(st.attempts, 1);
}

#[tokio::test]
async fn extend_keeps_the_lease_and_a_late_settle_is_lease_expired() {
    let broker = TestBroker::start_with(|c| c.queue_defaults.lease_ms = 300).await;
    let client = Client::connect(broker.addr).await.unwrap();
    client
        .publish_batch([("lease", "extended"), ("lease", "expires")])
        .await
        .unwrap();
    let mut sub = client.subscribe("lease").prefetch(2).await.unwrap();
    let mut extended = next(&mut sub).await;
    let expiring = next(&mut sub).await;
    let before = extended.deadline();
    let after = extended.extend(Duration::from_secs(5)).await.unwrap();
    assert!(after > before, "deadline moved: {before:?} -> {after:?}");
    assert_eq!(
        extended.deadline(),
        after,
        "the delivery shows the new deadline"
    );

    // The other one is not extended: it comes back, attempt 2, after its lease.
    let again = next(&mut sub).await;
    assert_eq!((again.id(), again.attempt()), (expiring.id(), 2));
    assert!(
        SystemTime::now() >= expiring.deadline(),
        "not redelivered before its lease ended"
    );
    again.ack().await.unwrap();

    // The first delivery's lease is gone: every settle fails with LeaseExpired.
    let mut stale = expiring;
    let err = stale.extend(Duration::from_secs(1)).await.unwrap_err();
    assert!(
        matches!(err, ClientError::LeaseExpired { task_id } if task_id == stale.id()),
        "{err:?}"
    );
    let err = stale.ack().await.unwrap_err();
    assert!(matches!(err, ClientError::LeaseExpired { .. }), "{err:?}");
    assert_eq!(err.code(), Some(ErrorCode::LeaseExpired));
    assert!(err.nothing_was_applied());

    // Past its original deadline and still within the extension: the extended one is
    // not redelivered, and its ack is accepted.
    assert!(SystemTime::now() > before, "original lease over");
    assert!(next_within(&mut sub, Duration::from_millis(300))
        .await
        .is_none());
    extended.ack().await.unwrap();
}

#[tokio::test]
async fn dropping_an_unsettled_delivery_releases_it_at_once() {
    // Leases far longer than the test: only the release explains a redelivery.
    let broker = TestBroker::start_with(|c| c.queue_defaults.lease_ms = 60_000).await;
    let client = Client::connect(broker.addr).await.unwrap();
    let id = client.publish("drop", "x").await.unwrap().id;
    let mut sub = client.subscribe("drop").prefetch(1).await.unwrap();
    drop(next(&mut sub).await);
    let d = next(&mut sub).await;
    assert_eq!((d.id(), d.attempt()), (id, 2));
    d.release();
    let d = next(&mut sub).await;
    assert_eq!((d.id(), d.attempt()), (id, 3));
    d.ack().await.unwrap();

    // Unsubscribing ends the stream after what is buffered.
    sub.unsubscribe().await.unwrap();
    client.publish("drop", "after").await.unwrap();
    let end = tokio::time::timeout(WAIT, sub.recv()).await.unwrap();
    assert!(end.is_none(), "{end:?}");
}

/// An address on 127.0.0.1 that was free a moment ago, so that a restarted in-process
/// broker can come back where its clients expect it.
fn free_local_addr() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscription_survives_a_broker_restart_and_stale_settles_fail_locally() {
    let addr = free_local_addr();
    let mut broker = TestBroker::start_with(|c| c.listen = addr).await;
    let client = Client::builder()
        .reconnect(ReconnectPolicy::default().initial_delay(Duration::from_millis(20)))
        .connect(broker.addr)
        .await
        .unwrap();
    let ids: Vec<u64> = client
        .publish_batch([("rs", "a"), ("rs", "b")])
        .await
        .unwrap()
        .iter()
        .map(|p| p.id)
        .collect();
    let mut sub = client.subscribe("rs").prefetch(1).await.unwrap();
    let before = next(&mut sub).await;
    assert_eq!((before.id(), before.attempt()), (ids[0], 1));

    broker.restart().await;
    assert_eq!(broker.addr, addr, "same address after the restart");
    // The same stream continues on the new connection; the lease did not survive.
    let again = next(&mut sub).await;
    assert_eq!((again.id(), again.attempt()), (ids[0], 2));
    // (The new connection counts as up once every subscription is re-attached, which
    // can be just after its first delivery arrived.)
    wait_until("the client to be up again", WAIT, || client.is_connected()).await;
    let t = Instant::now();
    let err = before.ack().await.unwrap_err();
    assert!(matches!(err, ClientError::LeaseExpired { .. }), "{err:?}");
    assert!(
        t.elapsed() < Duration::from_millis(100),
        "failed locally, no round trip"
    );
    again.ack().await.unwrap();
    let b = next(&mut sub).await;
    assert_eq!((b.id(), b.attempt()), (ids[1], 1));
    b.ack().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_while_the_broker_is_down_fail_typed_and_bounded() {
    let mut broker = TestBroker::start().await;
    let addr = broker.addr;
    let wait = Duration::from_millis(300);
    let client = Client::builder()
        .wait_for_connection(wait)
        .reconnect(ReconnectPolicy::default().initial_delay(Duration::from_millis(20)))
        .connect(addr)
        .await
        .unwrap();
    let giving_up = Client::builder()
        .wait_for_connection(wait)
        .reconnect(
            ReconnectPolicy::default()
                .initial_delay(Duration::from_millis(20))
                .max_delay(Duration::from_millis(50))
                .max_attempts(Some(3)),
        )
        .connect(addr)
        .await
        .unwrap();
    let mut sub = giving_up.subscribe("down").prefetch(1).await.unwrap();

    broker.stop().await;
    wait_until("the client to notice", WAIT, || !client.is_connected()).await;

    let bounded = wait + Duration::from_secs(2);
    let t = Instant::now();
    let err = client.publish("down", "x").await.unwrap_err();
    assert!(
        t.elapsed() < bounded,
        "publish failed after {:?}",
        t.elapsed()
    );
    assert!(matches!(err, ClientError::Unavailable { .. }), "{err:?}");
    assert!(err.nothing_was_applied(), "safe to retry");
    let t = Instant::now();
    let err = client.ping().await.unwrap_err();
    assert!(matches!(err, ClientError::Unavailable { .. }), "{err:?}");
    let err = client.subscribe("down").await.unwrap_err();
    assert!(matches!(err, ClientError::Unavailable { .. }), "{err:?}");
    assert!(
        t.elapsed() < 2 * bounded,
        "ping + subscribe took {:?}",
        t.elapsed()
    );

    // A client that gives up reconnecting closes: its subscription ends with an error.
    let ended = tokio::time::timeout(WAIT, sub.recv())
        .await
        .expect("bounded");
    assert!(
        matches!(ended, Some(Err(ClientError::ConnectionLost { .. }))),
        "{ended:?}"
    );
    assert!(tokio::time::timeout(WAIT, sub.recv())
        .await
        .unwrap()
        .is_none());
    let err = giving_up.publish("down", "x").await.unwrap_err();
    assert!(matches!(err, ClientError::Closed), "{err:?}");

    // The first connection is not retried: an unreachable broker fails at once.
    let t = Instant::now();
    let err = Client::connect(addr).await.unwrap_err();
    assert!(matches!(err, ClientError::Io(_)), "{err:?}");
    assert!(t.elapsed() < bounded);

    // close() ends everything; later calls fail with Closed.
    client.close().await;
    assert!(matches!(client.ping().await, Err(ClientError::Closed)));
}

#[tokio::test]
async fn a_silent_broker_times_out_connect_and_requests() {
    use squall_proto::v1::{self, response, server_message::Kind};
    use squall_proto::{decode_frame, encode_frame, PROTOCOL_VERSION};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    // A fake broker on 127.0.0.1: the first connection never answers at all; later
    // ones complete the handshake and then ignore every request.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let mut n = 0;
        while let Ok((mut s, _)) = listener.accept().await {
            n += 1;
            let answer_hello = n > 1;
            tokio::spawn(async move {
                let mut buf = bytes::BytesMut::new();
                let mut greeted = false;
                loop {
                    while let Ok(Some(req)) = decode_frame::<v1::Request>(&mut buf, 1 << 20) {
                        if answer_hello && !greeted {
                            greeted = true;
                            let ok = v1::ServerMessage {
                                kind: Some(Kind::Response(v1::Response {
                                    id: req.id,
                                    result: Some(response::Result::Hello(Box::new(v1::HelloOk {
                                        protocol_version: PROTOCOL_VERSION,
                                        server_version: "silent".into(),
                                        node_id: "silent".into(),
                                        limits: None,
                                        cluster: None,
                                    }))),
                                })),
                            };
                            let mut out = bytes::BytesMut::new();
                            encode_frame(&ok, &mut out);
                            if s.write_all(&out).await.is_err() {
                                return;
                            }
                        }
                    }
                    match s.read_buf(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(_) => {}
                    }
                }
            });
        }
    });

    let timeout = Duration::from_millis(300);
    let t = Instant::now();
    let err = Client::builder()
        .connect_timeout(timeout)
        .connect(addr)
        .await
        .unwrap_err();
    assert!(
        matches!(err, ClientError::Timeout { op: "connect", .. }),
        "{err:?}"
    );
    assert!(
        t.elapsed() < timeout + Duration::from_secs(2),
        "{:?}",
        t.elapsed()
    );

    let client = Client::builder()
        .request_timeout(timeout)
        .connect(addr)
        .await
        .unwrap();
    assert_eq!(client.server_info().node_id, "silent");
    let t = Instant::now();
    let err = client.publish("q", "x").await.unwrap_err();
    assert!(
        matches!(err, ClientError::Timeout { op: "publish", .. }),
        "{err:?}"
    );
    assert!(
        !err.nothing_was_applied(),
        "a timed-out publish may have been stored"
    );
    let err = client.ping().await.unwrap_err();
    assert!(matches!(err, ClientError::Timeout { .. }), "{err:?}");
    assert!(
        t.elapsed() < 2 * timeout + Duration::from_secs(2),
        "{:?}",
        t.elapsed()
    );
}

/// The error of a call that must fail.
fn refused<T>(r: Result<T, ClientError>) -> ClientError {
    match r {
        Ok(_) => panic!("the call succeeded"),
        Err(e) => e,
    }
}

#[tokio::test]
async fn invalid_requests_get_typed_errors_locally_and_from_the_broker() {
    let broker = TestBroker::start().await;
    let client = Client::connect(broker.addr).await.unwrap();

    let err = refused(client.publish("bad name", "x").await);
    assert!(
        matches!(
            err,
            ClientError::Invalid {
                code: ErrorCode::InvalidQueueName,
                ..
            }
        ),
        "{err:?}"
    );
    let err = refused(client.publish("q", "").await);
    assert_eq!(err.code(), Some(ErrorCode::EmptyPayload));
    let err = refused(client.publish_batch(Vec::<Message>::new()).await);
    assert_eq!(err.code(), Some(ErrorCode::BadRequest));
    let err = refused(client.subscribe("q").prefetch(0).await);
    assert_eq!(err.code(), Some(ErrorCode::BadRequest));

    // The same requests sent anyway: the broker refuses them with the same codes.
    let raw = Client::builder()
        .validate_locally(false)
        .connect(broker.addr)
        .await
        .unwrap();
    let err = refused(raw.publish("bad name", "x").await);
    assert!(
        matches!(
            err,
            ClientError::Server {
                code: ErrorCode::InvalidQueueName,
                ..
            }
        ),
        "{err:?}"
    );
    let err = refused(raw.publish("q", "").await);
    assert_eq!(err.code(), Some(ErrorCode::EmptyPayload));
    let big = vec![b'x'; broker.config.max_payload_bytes + 1];
    let err = refused(raw.publish("q", big).await);
    assert_eq!(err.code(), Some(ErrorCode::PayloadTooLarge));
    // The connection is still usable after refusals.
    raw.ping().await.unwrap();

    let err = Client::builder()
        .tls("broker.internal")
        .connect(broker.addr)
        .await
        .unwrap_err();
    assert!(matches!(err, ClientError::Config(_)), "{err:?}");
}

#[tokio::test]
async fn dropping_a_subscription_gives_back_its_buffered_deliveries_without_an_attempt() {
    // One attempt each: a buffered delivery given back as an attempt would die.
    let broker = TestBroker::start().await;
    let client = Client::connect(broker.addr).await.unwrap();
    let options = PublishOptions::new().max_attempts(1);
    for i in 0..4 {
        client
            .publish_with("unseen", format!("t{i}"), options.clone())
            .await
            .unwrap();
    }
    let mut sub = client.subscribe("unseen").prefetch(4).await.unwrap();
    let first = next(&mut sub).await;
    // Wait until all four are out, so that three sit in the subscription's buffer.
    let started = Instant::now();
    while client.queue("unseen").await.unwrap().leased < 4 {
        assert!(
            started.elapsed() < WAIT,
            "the broker did not deliver all four"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    drop(sub);
    first.ack().await.unwrap();
    let mut sub = client.subscribe("unseen").prefetch(4).await.unwrap();
    for _ in 0..3 {
        let d = next(&mut sub).await;
        assert_eq!(
            d.attempt(),
            1,
            "task {} lost an attempt it never used",
            d.id()
        );
        d.ack().await.unwrap();
    }
    let q = client.queue("unseen").await.unwrap();
    assert_eq!((q.dead, q.totals.acked), (0, 4), "{q:?}");
}

/// `ack_now` sends the ack before its settlement is awaited: the broker settles every
/// task while the confirmations sit unpolled, and each then resolves Ok. (Negative
/// control run: an `ack_now` that sends only when polled leaves the tasks leased and
/// the test fails at the first wait.)
#[tokio::test]
async fn ack_now_is_sent_before_it_is_awaited() {
    let broker = TestBroker::start().await;
    let client = Client::connect(broker.addr).await.unwrap();
    let admin = Client::connect(broker.addr).await.unwrap();
    client
        .publish_batch((0..20).map(|i| Message::new("now", i.to_string())))
        .await
        .unwrap();
    let mut sub = client.subscribe("now").prefetch(20).await.unwrap();
    let mut confirmations = Vec::new();
    for _ in 0..20 {
        confirmations.push(next(&mut sub).await.ack_now());
    }
    // Counted as acked (an unsent ack would leave the task leased until its lease
    // expires, then counted as expired).
    let deadline = Instant::now() + WAIT;
    loop {
        let info = admin.queue("now").await.unwrap();
        if info.totals.acked == 20 && info.leased == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the acks were not sent before being awaited: {info:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for c in confirmations {
        c.await.unwrap();
    }
    // With a result, and a delivery whose connection is gone fails at once.
    let id = client.publish("now", "last").await.unwrap().id;
    let d = next(&mut sub).await;
    assert_eq!(d.id(), id);
    d.ack_now_with("done").await.unwrap();
    client.publish("now", "orphan").await.unwrap();
    let orphan = next(&mut sub).await;
    drop(sub);
    client.close().await;
    match orphan.ack_now().await {
        Err(ClientError::LeaseExpired { .. }) => {}
        other => panic!("expected LeaseExpired, got {other:?}"),
    }
    admin.close().await;
}
