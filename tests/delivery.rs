//! Delivery semantics over real TCP: group-committed publish, ordering, credit and
//! balancing, lease expiry and fencing, disconnects, retries, delays and dead-lettering.

mod common;

use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use common::{spec, TestBroker, Wire};
use squall::model::TaskStatus;
use squall::store::{FsyncMode, Store, StoreConfig};
use squall_proto::v1::{self, request::Op, response};
use squall_proto::ErrorCode;

/// Opens the data directory of a stopped broker and reads a task's stored state.
fn stored_state(broker: &TestBroker, id: u64) -> Option<squall::model::TaskState> {
    let store = Store::open(&StoreConfig {
        path: broker.data_dir().to_owned(),
        fsync: FsyncMode::Always,
        cache_bytes: 8 << 20,
        journal_segment_bytes: squall::store::DEFAULT_JOURNAL_SEGMENT_BYTES,
    })
    .expect("open stopped store");
    store.get_state(id).expect("read state")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_publishes_are_confirmed_durable_and_share_flushes() {
    let broker = TestBroker::start().await;
    let stats = broker.handle().writer_stats();
    let mut tasks = Vec::new();
    for c in 0..16 {
        let addr = broker.addr;
        tasks.push(tokio::spawn(async move {
            let mut w = Wire::hello(addr).await;
            // Pipeline 25 publishes before reading any confirmation.
            let mut ids = Vec::new();
            for i in 0..25 {
                ids.push(
                    w.send(Op::Publish(v1::Publish {
                        tasks: vec![spec("gc", &format!("{c}-{i}"))],
                        ..Default::default()
                    }))
                    .await,
                );
            }
            let mut task_ids = Vec::new();
            for id in ids {
                match w.response(id).await {
                    Ok(response::Result::Publish(ok)) => task_ids.push(ok.tasks[0].task_id),
                    other => panic!("publish failed: {other:?}"),
                }
            }
            task_ids
        }));
    }
    let mut all = HashSet::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    assert_eq!(all.len(), 400, "400 distinct task ids confirmed");
    let flushes = stats.flushes.load(Ordering::Relaxed);
    let jobs = stats.jobs.load(Ordering::Relaxed);
    assert!(
        jobs >= 400,
        "every publish went through the writer ({jobs})"
    );
    assert!(
        flushes < 400,
        "group commit: 400 concurrent publishes used {flushes} fsyncs"
    );
    // Confirmed means durable: a consumer after a restart sees all of them.
    let mut broker = broker;
    broker.restart().await;
    let mut w = Wire::hello(broker.addr).await;
    w.subscribe("gc", 500).await;
    let mut seen = HashSet::new();
    while seen.len() < 400 {
        seen.insert(w.delivery().await.task_id);
    }
    assert_eq!(seen, all);
}

#[tokio::test]
async fn higher_priority_first_then_fifo() {
    let broker = TestBroker::start().await;
    let mut w = Wire::hello(broker.addr).await;
    let mut expect = Vec::new();
    let mut specs = Vec::new();
    for (i, p) in [0, 5, 0, 5, 1, -3].iter().enumerate() {
        let mut s = spec("prio", &format!("t{i}"));
        s.priority = *p;
        specs.push(s);
    }
    let ids = w.publish_spec(specs).await.unwrap();
    for i in [1, 3, 4, 0, 2, 5] {
        expect.push(ids[i]);
    }
    w.subscribe("prio", 100).await;
    let mut got = Vec::new();
    for _ in 0..6 {
        got.push(w.delivery().await.task_id);
    }
    assert_eq!(got, expect);
}

#[tokio::test]
async fn prefetch_is_honoured_and_refilled_on_ack() {
    let broker = TestBroker::start().await;
    let mut p = Wire::hello(broker.addr).await;
    for i in 0..10 {
        p.publish("pf", &i.to_string()).await;
    }
    let mut c = Wire::hello(broker.addr).await;
    c.subscribe("pf", 3).await;
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(c.delivery().await);
    }
    assert!(
        c.try_delivery(Duration::from_millis(300)).await.is_none(),
        "never more than prefetch un-acked"
    );
    c.ack(&held[0]).await.unwrap();
    let d = c.delivery().await;
    assert!(c.try_delivery(Duration::from_millis(300)).await.is_none());
    assert!(!held.iter().any(|h| h.task_id == d.task_id));
}

#[tokio::test]
async fn least_in_flight_subscription_gets_the_next_task() {
    let broker = TestBroker::start().await;
    let mut a = Wire::hello(broker.addr).await;
    let mut b = Wire::hello(broker.addr).await;
    a.subscribe("lc", 10).await;
    b.subscribe("lc", 10).await;
    let mut p = Wire::hello(broker.addr).await;
    for i in 0..4 {
        p.publish("lc", &i.to_string()).await;
    }
    // Equal load: round-robin gives two each.
    let a1 = a.delivery().await;
    let a2 = a.delivery().await;
    b.delivery().await;
    b.delivery().await;
    assert!(a.try_delivery(Duration::from_millis(200)).await.is_none());
    // `a` settles both: it now has fewer in flight than `b`, so it gets the next two.
    a.ack(&a1).await.unwrap();
    a.ack(&a2).await.unwrap();
    p.publish("lc", "x").await;
    p.publish("lc", "y").await;
    a.delivery().await;
    a.delivery().await;
    assert!(b.try_delivery(Duration::from_millis(300)).await.is_none());
}

#[tokio::test]
async fn expired_lease_is_redelivered_and_the_late_ack_is_refused() {
    let broker = TestBroker::start_with(|c| c.queue_defaults.lease_ms = 300).await;
    let mut p = Wire::hello(broker.addr).await;
    let id = p.publish("lease", "work").await;
    let mut slow = Wire::hello(broker.addr).await;
    let sub = slow.subscribe("lease", 1).await;
    let first = slow.delivery().await;
    assert_eq!((first.task_id, first.attempt), (id, 1));
    // The slow worker keeps its lease but takes no more work.
    slow.call(Op::Unsubscribe(v1::Unsubscribe {
        subscription_id: sub,
    }))
    .await
    .unwrap();
    let mut other = Wire::hello(broker.addr).await;
    other.subscribe("lease", 1).await;
    let started = Instant::now();
    let second = other.delivery().await;
    assert!(
        started.elapsed() >= Duration::from_millis(250),
        "not before the lease ran out"
    );
    assert_eq!((second.task_id, second.attempt), (id, 2));
    assert_ne!(second.lease_token, first.lease_token);
    let late = slow.ack(&first).await.unwrap_err();
    assert_eq!(late.code, ErrorCode::LeaseExpired);
    other.ack(&second).await.unwrap();
}

#[tokio::test]
async fn extend_keeps_the_lease_alive() {
    let broker = TestBroker::start_with(|c| c.queue_defaults.lease_ms = 300).await;
    let mut w = Wire::hello(broker.addr).await;
    w.publish("ext", "long job").await;
    w.subscribe("ext", 1).await;
    let d = w.delivery().await;
    let mut other = Wire::hello(broker.addr).await;
    other.subscribe("ext", 1).await;
    for _ in 0..4 {
        tokio::time::sleep(Duration::from_millis(150)).await;
        let r = w
            .call(Op::Extend(v1::Extend {
                task_id: d.task_id,
                lease_token: d.lease_token,
                extend_ms: 300,
            }))
            .await;
        assert!(matches!(r, Ok(response::Result::Extend(_))), "{r:?}");
    }
    assert!(other
        .try_delivery(Duration::from_millis(100))
        .await
        .is_none());
    w.ack(&d).await.unwrap();
    let stale = w
        .call(Op::Extend(v1::Extend {
            task_id: d.task_id,
            lease_token: d.lease_token,
            extend_ms: 300,
        }))
        .await
        .unwrap_err();
    assert_eq!(stale.code, ErrorCode::LeaseExpired);
}

#[tokio::test]
async fn closing_a_consumer_returns_its_leases_at_once() {
    // Leases long enough that only the disconnect can explain a quick redelivery.
    let broker = TestBroker::start_with(|c| c.queue_defaults.lease_ms = 60_000).await;
    let mut p = Wire::hello(broker.addr).await;
    for i in 0..3 {
        p.publish("dc", &i.to_string()).await;
    }
    let mut first = Wire::hello(broker.addr).await;
    first.subscribe("dc", 10).await;
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(first.delivery().await.task_id);
    }
    let mut second = Wire::hello(broker.addr).await;
    second.subscribe("dc", 10).await;
    assert!(second
        .try_delivery(Duration::from_millis(200))
        .await
        .is_none());
    drop(first);
    let started = Instant::now();
    let mut again = Vec::new();
    for _ in 0..3 {
        let d = second.delivery().await;
        assert_eq!(d.attempt, 2);
        again.push(d.task_id);
    }
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(again, held, "same tasks, same order");
}

#[tokio::test]
async fn nack_retries_after_backoff_or_the_given_delay_and_delays_are_not_early() {
    let broker = TestBroker::start_with(|c| {
        c.queue_defaults.backoff_min_ms = 400;
        c.queue_defaults.backoff_max_ms = 400;
    })
    .await;
    let mut w = Wire::hello(broker.addr).await;
    w.publish("retry", "a").await;
    w.subscribe("retry", 1).await;
    let d = w.delivery().await;
    let t = Instant::now();
    w.nack(&d, None, false, "flaky").await.unwrap();
    let d = w.delivery().await;
    let waited = t.elapsed();
    // Equal jitter over a 400 ms backoff: between 200 and 400 ms (plus scheduling).
    assert!(
        waited >= Duration::from_millis(190),
        "backoff respected: {waited:?}"
    );
    assert_eq!(d.attempt, 2);
    let t = Instant::now();
    w.nack(&d, Some(700), false, "later").await.unwrap();
    let d = w.delivery().await;
    assert!(
        t.elapsed() >= Duration::from_millis(690),
        "explicit delay respected"
    );
    assert_eq!(d.attempt, 3);
    w.ack(&d).await.unwrap();

    // A delayed publish is not delivered early.
    let mut s = spec("retry", "delayed");
    s.delay_ms = 600;
    let t = Instant::now();
    w.publish_spec(vec![s]).await.unwrap();
    let d = w.delivery().await;
    assert!(t.elapsed() >= Duration::from_millis(590));
    assert_eq!(d.payload.as_ref(), b"delayed");
}

#[tokio::test]
async fn tasks_past_max_attempts_are_dead_with_their_last_reason() {
    let mut broker = TestBroker::start_with(|c| {
        c.queue_defaults.lease_ms = 30_000;
        c.queue_defaults.backoff_min_ms = 0;
        c.queue_defaults.backoff_max_ms = 0;
    })
    .await;
    let mut p = Wire::hello(broker.addr).await;
    let mk = |payload: &str| {
        let mut s = spec("poison", payload);
        s.max_attempts = 2;
        s
    };
    // Only "expired" has a short lease, so that no other lease runs out meanwhile.
    let mut expiring = mk("expired");
    expiring.lease_ms = 300;
    let ids = p
        .publish_spec(vec![
            mk("nacked"),
            expiring,
            mk("disconnected"),
            mk("failed"),
        ])
        .await
        .unwrap();

    let mut c = Wire::hello(broker.addr).await;
    c.subscribe("poison", 10).await;
    // Attempt 1 of all four: nack "nacked", let "expired" expire, fail "failed" now.
    let mut first = Vec::new();
    for _ in 0..4 {
        first.push(c.delivery().await);
    }
    first.sort_by_key(|d| d.task_id);
    c.nack(&first[0], Some(0), false, "bad input")
        .await
        .unwrap();
    c.nack(&first[3], None, true, "unrecoverable")
        .await
        .unwrap();
    c.nack(&first[2], Some(0), false, "retry").await.unwrap();
    // Attempt 2 (the last) of "nacked", "disconnected", and after expiry, "expired".
    let mut second = Vec::new();
    while second.len() < 3 {
        let d = c.delivery().await;
        assert_eq!(d.attempt, 2, "task {} delivered again", d.task_id);
        second.push(d);
    }
    second.sort_by_key(|d| d.task_id);
    c.nack(&second[0], Some(0), false, "bad input again")
        .await
        .unwrap();
    // Hold "expired" past its lease; then drop the connection holding "disconnected".
    tokio::time::sleep(Duration::from_millis(500)).await;
    drop(c);
    let mut c2 = Wire::hello(broker.addr).await;
    c2.subscribe("poison", 10).await;
    assert!(
        c2.try_delivery(Duration::from_millis(800)).await.is_none(),
        "dead tasks are never delivered again"
    );
    drop(c2);
    broker.stop().await;
    let expect = [
        (ids[0], "bad input again"),
        (ids[1], "lease expired"),
        (ids[2], "consumer disconnected"),
        (ids[3], "unrecoverable"),
    ];
    for (id, reason) in expect {
        let st = stored_state(&broker, id).expect("dead task kept");
        assert_eq!(st.status, TaskStatus::Dead, "task {id}");
        assert_eq!(st.last_error.as_deref(), Some(reason), "task {id}");
    }
    assert_eq!(stored_state(&broker, ids[3]).unwrap().attempts, 1);
}

#[tokio::test]
async fn acked_tasks_never_come_back_and_unacked_survive_a_clean_restart() {
    let mut broker = TestBroker::start().await;
    let mut w = Wire::hello(broker.addr).await;
    let mut ids = w
        .publish_spec(vec![spec("restart", "acked"), spec("restart", "leased")])
        .await
        .unwrap();
    w.subscribe("restart", 2).await;
    let a = w.delivery().await;
    let leased = w.delivery().await;
    assert_eq!((a.task_id, leased.task_id), (ids[0], ids[1]));
    w.ack(&a).await.unwrap();
    drop(w);
    let mut p = Wire::hello(broker.addr).await;
    let mut delayed = spec("restart", "delayed");
    delayed.delay_ms = 60_000;
    ids.extend(
        p.publish_spec(vec![spec("restart", "ready"), delayed])
            .await
            .unwrap(),
    );
    drop(p);
    broker.restart().await;
    let mut w = Wire::hello(broker.addr).await;
    w.subscribe("restart", 10).await;
    let d1 = w.delivery().await;
    let d2 = w.delivery().await;
    assert_eq!(
        (d1.task_id, d1.attempt),
        (ids[1], 2),
        "leased one is ready, attempt counted"
    );
    assert_eq!((d2.task_id, d2.attempt), (ids[2], 1));
    assert!(
        w.try_delivery(Duration::from_millis(500)).await.is_none(),
        "acked one not delivered again, delayed one still delayed"
    );
    broker.stop().await;
    // The acked task (acked without a result, on a queue without keep_acked) is gone.
    assert_eq!(stored_state(&broker, ids[0]), None, "acked task removed");
    assert!(stored_state(&broker, ids[3]).unwrap().not_before_ms > 0);
}

#[tokio::test]
async fn weaker_fsync_modes_confirm_and_keep_tasks_across_a_clean_restart() {
    for mode in [
        FsyncMode::Interval(Duration::from_millis(50)),
        FsyncMode::Never,
    ] {
        let mut broker = TestBroker::start_with(|c| c.fsync = mode).await;
        let mut w = Wire::hello(broker.addr).await;
        let ids = w
            .publish_spec((0..50).map(|i| spec("modes", &i.to_string())).collect())
            .await
            .unwrap();
        drop(w);
        // A clean stop flushes whatever the mode left in memory.
        broker.restart().await;
        let mut w = Wire::hello(broker.addr).await;
        w.subscribe("modes", 100).await;
        for id in &ids {
            assert_eq!(w.delivery().await.task_id, *id, "{mode:?}");
        }
    }
}

/// A delay counts from the publish's own arrival, also for the second of two
/// publishes sent on one connection a while apart (the reader reads the clock once
/// for all the requests of one read, and again at the next read). Negative control
/// run: without reading it again at the next read, the second publish takes the first
/// one's time, is ready at once and the test fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delay_counts_from_each_publish_s_own_arrival() {
    let broker = TestBroker::start().await;
    let mut producer = Wire::hello(broker.addr).await;
    let delayed = |payload: &str| {
        let mut s = spec("later", payload);
        s.delay_ms = 1_000;
        s
    };
    producer.publish_spec(vec![delayed("first")]).await.unwrap();
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let second_sent = Instant::now();
    producer
        .publish_spec(vec![delayed("second")])
        .await
        .unwrap();
    let mut consumer = Wire::hello(broker.addr).await;
    consumer.subscribe("later", 10).await;
    let first = consumer.delivery().await;
    assert_eq!(&first.payload[..], b"first");
    assert!(
        consumer
            .try_delivery(Duration::from_millis(600).saturating_sub(second_sent.elapsed()))
            .await
            .is_none(),
        "the second publish was ready before its own delay"
    );
    let second = consumer.delivery().await;
    assert_eq!(&second.payload[..], b"second");
    assert!(second_sent.elapsed() >= Duration::from_millis(950));
}
