//! Admin changes on a full disk (issue 19, fault 2): purge, delete-queue, redrive,
//! configure and pause refused with STORAGE have not happened (`queues` and `peek`
//! show the queue unchanged), and each succeeds, durably, once space returns. The data directory is on a small tmpfs the test fills (as root; skipped,
//! loudly, where mounting is not permitted, and failed under CI).

mod common;

use std::time::{Duration, Instant};

use common::disk::{noise, FullableDisk};
use common::{http_get, ChildBroker};
use squall_client::{Client, ErrorCode, QueueConfigUpdate, StateFilter};

/// What an operator sees of queue "q": counts, pause, configuration, and the ids in
/// each state.
async fn seen(c: &Client) -> (String, Vec<Vec<u64>>) {
    let q = c.queue("q").await.unwrap();
    let info = format!(
        "ready {} delayed {} leased {} dead {} paused {} config {:?}",
        q.ready, q.delayed, q.leased, q.dead, q.paused, q.config
    );
    let mut ids = Vec::new();
    for state in [StateFilter::Ready, StateFilter::Dead] {
        let peeked = c.peek("q", state, 100).await.unwrap();
        ids.push(peeked.iter().map(|t| t.id).collect());
    }
    (info, ids)
}

fn assert_storage<T: std::fmt::Debug>(what: &str, r: Result<T, squall_client::ClientError>) {
    let err = r.expect_err(what);
    assert_eq!(err.code(), Some(ErrorCode::Storage), "{what}: {err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_changes_refused_with_storage_change_nothing_and_succeed_once_space_returns() {
    let dir = tempfile::tempdir().unwrap();
    let Some(disk) = FullableDisk::new(dir.path(), "24m", "1 MiB") else {
        return;
    };
    let (data, env) = (&disk.data, disk.env());
    let broker = ChildBroker::spawn_env(data, &["--sweep-interval", "1h"], &env);
    let c = broker.patient_client().await;

    // Queue "q": 3 dead tasks and 7 ready ones.
    for i in 0..10 {
        c.publish("q", format!("task {i}")).await.unwrap();
    }
    let mut sub = c.subscribe("q").prefetch(3).await.unwrap();
    for _ in 0..3 {
        let d = tokio::time::timeout(Duration::from_secs(10), sub.recv())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        d.fail("poison").await.unwrap();
    }
    drop(sub);
    let t = Instant::now();
    while c.queue("q").await.unwrap().dead < 3 || c.queue("q").await.unwrap().consumers > 0 {
        assert!(t.elapsed() < Duration::from_secs(10), "3 dead, no consumer");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let before = seen(&c).await;
    assert_eq!(before.1[0].len(), 7, "{before:?}");
    assert_eq!(before.1[1].len(), 3, "{before:?}");

    // A task held by a consumer, whose ack will need a journal segment of its own.
    c.publish("sink", "x").await.unwrap();
    let mut sink = c.subscribe("sink").prefetch(1).await.unwrap();
    let held = tokio::time::timeout(Duration::from_secs(10), sink.recv())
        .await
        .unwrap()
        .unwrap()
        .unwrap();

    // The disk fills up: publishes are refused (the free space is below the reserve),
    // and an ack whose 2 MiB result needs a new journal segment finds no space: the
    // journal cannot write.
    disk.fill();
    let mut i = 0;
    loop {
        i += 1;
        assert!(i < 2_000, "a publish fails once the disk is full");
        if let Err(e) = c.publish("fill", noise(i, 32 * 1024)).await {
            assert_eq!(e.code(), Some(ErrorCode::Storage), "{e}");
            break;
        }
    }
    assert_storage("a 2 MiB ack", held.ack_with(vec![1u8; 2 << 20]).await);
    drop(sink);

    // Every admin change is refused, and none of them happened.
    assert_storage("purge", c.purge("q", None).await);
    assert_eq!(seen(&c).await, before, "after purge");
    assert_storage("purge dead", c.purge("q", Some(StateFilter::Dead)).await);
    assert_eq!(seen(&c).await, before, "after purge dead");
    assert_storage("delete", c.delete_queue("q").await);
    assert_eq!(seen(&c).await, before, "after delete");
    assert_storage("redrive", c.redrive("q", None).await);
    assert_eq!(seen(&c).await, before, "after redrive");
    let update = QueueConfigUpdate::new().max_attempts(9);
    assert_storage("configure", c.set_queue_config("q", update.clone()).await);
    assert_eq!(seen(&c).await, before, "after configure");
    assert_storage("pause", c.pause("q").await);
    assert_eq!(seen(&c).await, before, "after pause");
    let queues = c.queues().await.unwrap();
    assert!(queues.iter().any(|q| q.name == "q"), "still listed");

    // Space returns: each change succeeds and is visible.
    disk.free();
    let http = broker.http.expect("http on");
    let t = Instant::now();
    while http_get(http, "/readyz").await.0 != 200 {
        assert!(t.elapsed() < Duration::from_secs(10), "ready again");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let q = c.set_queue_config("q", update).await.unwrap();
    assert_eq!(q.config.max_attempts, 9);
    assert!(c.pause("q").await.unwrap().paused);
    assert_eq!(c.redrive("q", None).await.unwrap(), 3);
    let after = c.queue("q").await.unwrap();
    assert_eq!((after.ready, after.dead), (10, 0));
    assert_eq!(c.purge("q", Some(StateFilter::Ready)).await.unwrap(), 10);
    assert_eq!(c.queue("q").await.unwrap().ready, 0);
    c.publish("q", "last").await.unwrap();
    assert_eq!(c.delete_queue("q").await.unwrap(), 1);
    assert!(!c.queues().await.unwrap().iter().any(|q| q.name == "q"));
    c.close().await;
    assert!(broker.terminate().success());

    // The restart agrees: the deletion is durable.
    let broker = ChildBroker::spawn_env(data, &[], &env);
    let c = broker.patient_client().await;
    assert!(!c.queues().await.unwrap().iter().any(|q| q.name == "q"));
    c.close().await;
    assert!(broker.terminate().success());
}
