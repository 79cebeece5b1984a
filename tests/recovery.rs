//! Crash recovery with the broker as a child process: kill -9 under publish and consume
//! load, restart on the same data directory, and check that every confirmed, un-acked
//! task is back in its state and that no task whose ack was confirmed returns.

mod common;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use common::{spec, temp_data_dir, ChildBroker, Wire};
use parking_lot::Mutex;
use squall::model::TaskStatus;
use squall::store::{FsyncMode, Store, StoreConfig};
use squall_proto::v1::{self, request::Op, response};

#[derive(Default)]
struct Ledger {
    confirmed: HashSet<u64>,
    /// Acks sent: the broker may have made them durable without confirming.
    ack_sent: HashSet<u64>,
    /// Acks the broker confirmed.
    acked: HashSet<u64>,
}

/// The store of a broker that has stopped (or was killed), opened as the broker would.
fn stopped_store(dir: &std::path::Path) -> Store {
    Store::open(&StoreConfig {
        path: dir.to_owned(),
        fsync: FsyncMode::Always,
        cache_bytes: 8 << 20,
        journal_segment_bytes: squall::store::DEFAULT_JOURNAL_SEGMENT_BYTES,
    })
    .expect("open the stopped broker's store")
}

/// Publishes with 16 requests in flight until the connection dies, recording confirms.
async fn produce(addr: std::net::SocketAddr, queue: &'static str, ledger: Arc<Mutex<Ledger>>) {
    let mut w = Wire::hello(addr).await;
    let mut in_flight = std::collections::VecDeque::new();
    for n in 0u64..700 {
        let id = w
            .send(Op::Publish(v1::Publish {
                tasks: vec![spec(queue, &format!("task {n}"))],
                ..Default::default()
            }))
            .await;
        in_flight.push_back(id);
        if in_flight.len() < 16 {
            continue;
        }
        let req = in_flight.pop_front().unwrap();
        match tokio::time::timeout(Duration::from_secs(5), w.response_or_eof(req)).await {
            Ok(Some(Ok(response::Result::Publish(ok)))) => {
                ledger.lock().confirmed.insert(ok.tasks[0].task_id);
            }
            _ => return,
        }
    }
}

/// Acks everything it receives until the connection dies, recording confirmed acks.
async fn consume(addr: std::net::SocketAddr, queue: &'static str, ledger: Arc<Mutex<Ledger>>) {
    let mut w = Wire::hello(addr).await;
    w.subscribe(queue, 32).await;
    while let Some(d) = w.try_delivery(Duration::from_secs(5)).await {
        ledger.lock().ack_sent.insert(d.task_id);
        let req = w
            .send(Op::Ack(v1::Ack {
                task_id: d.task_id,
                lease_token: d.lease_token,
                result: Default::default(),
            }))
            .await;
        match tokio::time::timeout(Duration::from_secs(5), w.response_or_eof(req)).await {
            Ok(Some(Ok(_))) => {
                ledger.lock().acked.insert(d.task_id);
            }
            _ => return,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill_9_under_load_loses_no_confirmed_task_and_revives_no_acked_one() {
    let (_guard, dir) = temp_data_dir();
    let broker = ChildBroker::spawn(&dir, &["--default-backoff", "0ms..0ms"]);
    let addr = broker.addr;

    // Before the load: one delayed task and one dead task, whose states must survive.
    let mut setup = Wire::hello(addr).await;
    let mut delayed = spec("crash-delayed", "later");
    delayed.delay_ms = 3_600_000;
    let delayed_id = setup.publish_spec(vec![delayed]).await.unwrap()[0];
    let dead_id = setup.publish("crash-dead", "poison").await;
    setup.subscribe("crash-dead", 1).await;
    let d = setup.delivery().await;
    setup.nack(&d, None, true, "poison pill").await.unwrap();
    drop(setup);

    let ledger = Arc::new(Mutex::new(Ledger::default()));
    let mut load = Vec::new();
    for _ in 0..3 {
        load.push(tokio::spawn(produce(addr, "crash", ledger.clone())));
    }
    for _ in 0..2 {
        load.push(tokio::spawn(consume(addr, "crash", ledger.clone())));
    }
    // Let the load run until a good number of publishes and acks are confirmed.
    for _ in 0..200 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let l = ledger.lock();
        if l.confirmed.len() > 1_000 && l.acked.len() > 200 {
            break;
        }
    }
    broker.kill9();
    for t in load {
        let _ = t.await;
    }
    let (confirmed, ack_sent, acked) = {
        let l = ledger.lock();
        (l.confirmed.clone(), l.ack_sent.clone(), l.acked.clone())
    };
    eprintln!(
        "killed after {} confirmed publishes, {} acks sent, {} acks confirmed",
        confirmed.len(),
        ack_sent.len(),
        acked.len()
    );
    assert!(
        confirmed.len() > 100 && !acked.is_empty(),
        "load ran: {} confirmed, {} acked",
        confirmed.len(),
        acked.len()
    );

    let broker = ChildBroker::spawn(&dir, &[]);
    let mut w = Wire::hello(broker.addr).await;
    w.subscribe("crash", 1_000).await;
    // Confirmed and never acked: must come back. Acked but unconfirmed: may or may not.
    let must_return: HashSet<u64> = confirmed.difference(&ack_sent).copied().collect();
    let started = std::time::Instant::now();
    let mut returned = HashSet::new();
    let mut acks = 0;
    while let Some(d) = w.try_delivery(Duration::from_secs(1)).await {
        assert!(
            !acked.contains(&d.task_id),
            "task {} came back although its ack was confirmed",
            d.task_id
        );
        returned.insert(d.task_id);
        // Pipelined: the confirmations are collected as strays below.
        w.send(Op::Ack(v1::Ack {
            task_id: d.task_id,
            lease_token: d.lease_token,
            result: Default::default(),
        }))
        .await;
        acks += 1;
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while w.stray.len() < acks && std::time::Instant::now() < deadline {
        assert!(w.try_delivery(Duration::from_millis(200)).await.is_none());
    }
    assert_eq!(w.stray.len(), acks, "every ack answered");
    assert!(w.stray.iter().all(|(_, r)| r.is_ok()), "every ack accepted");
    eprintln!(
        "{} tasks returned after restart in {:?}",
        returned.len(),
        started.elapsed()
    );
    let lost: Vec<_> = must_return.difference(&returned).collect();
    assert!(
        lost.is_empty(),
        "{} confirmed tasks lost: {lost:?}",
        lost.len()
    );
    drop(w);
    let status = broker.terminate();
    assert!(status.success(), "clean exit after SIGTERM: {status:?}");

    let store = stopped_store(&dir);
    let delayed = store
        .get_state(delayed_id)
        .unwrap()
        .expect("delayed task kept");
    assert_eq!(delayed.status, TaskStatus::Pending);
    assert!(delayed.not_before_ms > squall::server::now_ms());
    let dead = store.get_state(dead_id).unwrap().expect("dead task kept");
    assert_eq!(dead.status, TaskStatus::Dead);
    assert_eq!(dead.last_error.as_deref(), Some("poison pill"));
}

/// A delivery is counted in the store once its lease has lasted
/// `ATTEMPT_WRITE_AFTER_MS` with nothing else happening (the hub wakes up for it), so a
/// kill -9 after that brings the task back with the attempt counted; a delivery the
/// broker died sooner after is not counted (docs/design/delivery.md).
#[tokio::test]
async fn a_delivery_is_counted_once_its_lease_has_lasted_and_survives_kill_9() {
    let (_guard, dir) = temp_data_dir();
    let broker = ChildBroker::spawn(&dir, &[]);
    let mut w = Wire::hello(broker.addr).await;
    let lasted = w.publish("lasted", "held").await;
    let fresh = w.publish("fresh", "held").await;
    w.subscribe("lasted", 1).await;
    assert_eq!(w.delivery().await.task_id, lasted);
    let after = Duration::from_millis(squall::broker::ATTEMPT_WRITE_AFTER_MS);
    tokio::time::sleep(after + Duration::from_millis(500)).await;
    w.subscribe("fresh", 1).await;
    assert_eq!(w.delivery().await.task_id, fresh);
    let delivered = std::time::Instant::now();
    broker.kill9();
    let soon = delivered.elapsed() < after / 2;

    let store = stopped_store(&dir);
    let lasted = store.get_state(lasted).unwrap().expect("kept");
    assert_eq!((lasted.status, lasted.attempts), (TaskStatus::Pending, 1));
    let fresh = store.get_state(fresh).unwrap().expect("kept");
    assert_eq!(fresh.status, TaskStatus::Pending);
    if soon {
        assert_eq!(fresh.attempts, 0, "killed right after its delivery");
    }
}

#[tokio::test]
async fn sigterm_drains_and_exits_zero_keeping_confirmed_tasks() {
    let (_guard, dir) = temp_data_dir();
    let broker = ChildBroker::spawn(&dir, &[]);
    let mut w = Wire::hello(broker.addr).await;
    let mut ids = Vec::new();
    for i in 0..20 {
        ids.push(w.publish("term", &i.to_string()).await);
    }
    let status = broker.terminate();
    assert!(status.success(), "exit status {status:?}");
    assert!(w.closed_by_peer().await);
    assert!(
        w.goodbyes
            .iter()
            .any(|g| g.code == squall_proto::ErrorCode::ShuttingDown),
        "clients are told why the connection closes: {:?}",
        w.goodbyes
    );
    let broker = ChildBroker::spawn(&dir, &[]);
    let mut w = Wire::hello(broker.addr).await;
    w.subscribe("term", 100).await;
    for id in ids {
        assert_eq!(w.delivery().await.task_id, id);
    }
}
