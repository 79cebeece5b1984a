//! `squall_client::Worker` against a real in-process broker over TCP (issue 3): bounded
//! concurrency with exactly-once processing when nothing fails, automatic lease
//! extension, settling by the handler's outcome, and graceful shutdown that returns
//! unfinished tasks for redelivery. The kill -9 scenario is in `client_crash.rs`.

mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use common::{wait_until, TestBroker, WAIT};
use parking_lot::Mutex;
use squall::config::ServerConfig;
use squall::model::{TaskState, TaskStatus};
use squall::store::{FsyncMode, Store, StoreConfig};
use squall_client::{Client, Message, PublishOptions, Task, TaskError, WorkerReport};
use tokio::sync::watch;

/// Reads stored task states from the data directory of a stopped broker.
fn stored_states(broker: &TestBroker, ids: &[u64]) -> Vec<Option<TaskState>> {
    let store = Store::open(&StoreConfig {
        path: broker.data_dir().to_owned(),
        fsync: FsyncMode::Always,
        cache_bytes: 8 << 20,
        journal_segment_bytes: squall::store::DEFAULT_JOURNAL_SEGMENT_BYTES,
    })
    .expect("open the stopped broker's store");
    ids.iter()
        .map(|&id| store.get_state(id).expect("read task state"))
        .collect()
}

/// Acked, as the store holds it: a succeeded record, never pending. The brokers of
/// these tests keep every ack (`broker_keeping_acks`), so a missing record is not an
/// ack.
fn acked(state: &Option<TaskState>) -> bool {
    matches!(state, Some(s) if s.status == TaskStatus::Succeeded)
}

/// A broker whose queues keep a record of every ack (`keep_acked`), with `tweak`.
async fn broker_keeping_acks(tweak: impl FnOnce(&mut ServerConfig)) -> TestBroker {
    TestBroker::start_with(|c| {
        c.queue_defaults.keep_acked = true;
        tweak(c);
    })
    .await
}

/// Publishes `n` tasks to `queue` in batches of up to 1,000 (the broker's max_batch).
async fn publish_n(client: &Client, queue: &str, n: usize) -> Vec<u64> {
    let mut ids = Vec::with_capacity(n);
    for start in (0..n).step_by(1_000) {
        let batch = (start..n.min(start + 1_000)).map(|i| Message::new(queue, i.to_string()));
        ids.extend(
            client
                .publish_batch(batch)
                .await
                .expect("batch confirmed")
                .into_iter()
                .map(|p| p.id),
        );
    }
    ids
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_with_concurrency_8_processes_10000_tasks_exactly_once() {
    const N: usize = 10_000;
    const CONCURRENCY: usize = 8;
    // No crash here, so fsync adds nothing to what is tested but time (about 4x).
    let mut broker = broker_keeping_acks(|c| c.fsync = FsyncMode::Never).await;
    let client = Client::connect(broker.addr).await.unwrap();
    let ids = publish_n(&client, "many", N).await;

    let seen = Arc::new(Mutex::new(HashMap::<u64, u32>::new()));
    let running = Arc::new(AtomicUsize::new(0));
    let most_running = Arc::new(AtomicUsize::new(0));
    let worker = client.worker("many").concurrency(CONCURRENCY);
    let stop = worker.shutdown_handle();
    let run = {
        let (seen, running, most_running) = (seen.clone(), running.clone(), most_running.clone());
        tokio::spawn(worker.run(move |task: Task| {
            let (seen, running, most_running) =
                (seen.clone(), running.clone(), most_running.clone());
            async move {
                let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                most_running.fetch_max(now, Ordering::SeqCst);
                tokio::task::yield_now().await;
                *seen.lock().entry(task.id()).or_default() += 1;
                running.fetch_sub(1, Ordering::SeqCst);
                Ok::<_, TaskError>(())
            }
        }))
    };
    wait_until("every task handled", Duration::from_secs(40), || {
        seen.lock().len() == N
    })
    .await;
    stop.cancel();
    let report = run.await.unwrap().expect("worker stops cleanly");

    let seen = seen.lock().clone();
    let twice: Vec<_> = seen.iter().filter(|(_, &n)| n != 1).collect();
    assert!(twice.is_empty(), "handled more than once: {twice:?}");
    assert!(ids.iter().all(|id| seen.contains_key(id)));
    assert_eq!(
        report,
        WorkerReport {
            acked: N as u64,
            ..WorkerReport::default()
        }
    );
    let most = most_running.load(Ordering::SeqCst);
    assert!(
        most <= CONCURRENCY,
        "{most} handlers ran at once, concurrency is {CONCURRENCY}"
    );
    // Every ack was applied: all 10,000 are stored as succeeded.
    broker.stop().await;
    let left = stored_states(&broker, &ids)
        .iter()
        .filter(|s| !acked(s))
        .count();
    assert_eq!(left, 0, "tasks not acked in the store");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handler_running_longer_than_the_lease_keeps_its_task() {
    // The shortest lease the worker's auto-extension assumes (1 s); the handler runs
    // for three of them.
    const LEASE: Duration = Duration::from_millis(1_000);
    let mut broker =
        broker_keeping_acks(|c| c.queue_defaults.lease_ms = LEASE.as_millis() as u64).await;
    let client = Client::connect(broker.addr).await.unwrap();
    let id = client.publish("slow", "long job").await.unwrap().id;

    // The first worker holds the task until `release` is set.
    let (release_tx, release_rx) = watch::channel(false);
    let first_seen = Arc::new(Mutex::new(Vec::<(u64, u32, SystemTime)>::new()));
    let first = client.worker("slow").concurrency(2);
    let stop_first = first.shutdown_handle();
    let first_run = {
        let first_seen = first_seen.clone();
        tokio::spawn(first.run(move |task: Task| {
            let first_seen = first_seen.clone();
            let mut release = release_rx.clone();
            async move {
                first_seen
                    .lock()
                    .push((task.id(), task.attempt(), task.deadline()));
                release
                    .wait_for(|r| *r)
                    .await
                    .expect("release sender alive");
                Ok::<_, TaskError>(())
            }
        }))
    };
    wait_until("the first worker to get the task", WAIT, || {
        !first_seen.lock().is_empty()
    })
    .await;

    // A second worker on another connection, idle and waiting for this queue.
    let other_client = Client::connect(broker.addr).await.unwrap();
    let other_seen = Arc::new(Mutex::new(Vec::<(u64, u32)>::new()));
    let second = other_client.worker("slow").concurrency(2);
    let stop_second = second.shutdown_handle();
    let second_run = {
        let other_seen = other_seen.clone();
        tokio::spawn(second.run(move |task: Task| {
            let other_seen = other_seen.clone();
            async move {
                other_seen.lock().push((task.id(), task.attempt()));
                Ok::<_, TaskError>(())
            }
        }))
    };

    // Hold the task until three leases past its first deadline have gone by.
    let first_deadline = first_seen.lock()[0].2;
    let hold_until = first_deadline + 3 * LEASE;
    wait_until("three leases past the first deadline", WAIT, || {
        SystemTime::now() >= hold_until
    })
    .await;
    assert!(
        other_seen.lock().is_empty(),
        "the task was delivered elsewhere while its handler ran: {:?}",
        other_seen.lock()
    );
    release_tx.send(true).unwrap();
    stop_first.cancel();
    let first_report = first_run.await.unwrap().unwrap();
    stop_second.cancel();
    let second_report = second_run.await.unwrap().unwrap();

    assert_eq!(
        first_report,
        WorkerReport {
            acked: 1,
            ..WorkerReport::default()
        },
        "the ack after the long run was accepted"
    );
    assert_eq!(second_report, WorkerReport::default());
    let first_seen = first_seen.lock().clone();
    assert_eq!(first_seen.len(), 1, "delivered once: {first_seen:?}");
    assert_eq!(
        (first_seen[0].0, first_seen[0].1),
        (id, 1),
        "attempt stays 1"
    );
    assert!(other_seen.lock().is_empty());
    broker.stop().await;
    let states = stored_states(&broker, &[id]);
    assert!(acked(&states[0]), "acked once, on attempt 1: {states:?}");
    assert_eq!(states[0].as_ref().map(|s| s.attempts), Some(1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handler_outcomes_ack_retry_dead_letter_and_survive_panics() {
    let mut broker = broker_keeping_acks(|c| {
        c.queue_defaults.backoff_min_ms = 0;
        c.queue_defaults.backoff_max_ms = 0;
    })
    .await;
    let client = Client::connect(broker.addr).await.unwrap();
    let opts = || PublishOptions::new().max_attempts(2);
    let ids: Vec<u64> = client
        .publish_batch(
            ["ok", "retry-once", "dead", "panic-once", "always-fails"]
                .map(|p| Message::new("outcomes", p).with_options(opts())),
        )
        .await
        .unwrap()
        .into_iter()
        .map(|p| p.id)
        .collect();

    let calls = Arc::new(Mutex::new(Vec::<(String, u32)>::new()));
    let worker = client.worker("outcomes").concurrency(4);
    let stop = worker.shutdown_handle();
    let run = {
        let calls = calls.clone();
        tokio::spawn(worker.run(move |task: Task| {
            let calls = calls.clone();
            async move {
                let what = String::from_utf8(task.payload().to_vec()).unwrap();
                calls.lock().push((what.clone(), task.attempt()));
                match (what.as_str(), task.attempt()) {
                    ("ok", _) => Ok("result".to_owned()),
                    ("retry-once", 1) => Err(TaskError::retry("transient")),
                    ("retry-once", _) => Ok(String::new()),
                    ("dead", _) => Err(TaskError::dead("poison input")),
                    ("panic-once", 1) => panic!("handler blew up"),
                    ("panic-once", _) => Ok(String::new()),
                    _ => Err(TaskError::retry_after(Duration::ZERO, "still broken")),
                }
            }
        }))
    };
    // ok 1 + retry-once 2 + dead 1 + panic-once 2 + always-fails 2 (its max_attempts).
    wait_until("all eight handler calls", WAIT, || calls.lock().len() == 8).await;
    stop.cancel();
    let report = run.await.unwrap().unwrap();
    assert_eq!(
        report,
        WorkerReport {
            acked: 3,
            retried: 4,
            dead: 1,
            returned: 0,
            settle_failed: 0,
        }
    );
    let mut calls = calls.lock().clone();
    calls.sort();
    let expect: Vec<(String, u32)> = [
        ("always-fails", 1),
        ("always-fails", 2),
        ("dead", 1),
        ("ok", 1),
        ("panic-once", 1),
        ("panic-once", 2),
        ("retry-once", 1),
        ("retry-once", 2),
    ]
    .map(|(w, a)| (w.to_owned(), a))
    .into();
    assert_eq!(calls, expect, "the dead task was not retried");

    broker.stop().await;
    let states = stored_states(&broker, &ids);
    // ok, retry-once and panic-once were acked.
    for i in [0, 1, 3] {
        assert!(acked(&states[i]), "task {}: {:?}", ids[i], states[i]);
    }
    let dead = states[2].as_ref().expect("dead task kept");
    assert_eq!(dead.status, TaskStatus::Dead);
    assert_eq!(dead.last_error.as_deref(), Some("poison input"));
    assert_eq!(dead.attempts, 1);
    let exhausted = states[4].as_ref().expect("exhausted task kept");
    assert_eq!(exhausted.status, TaskStatus::Dead);
    assert_eq!(exhausted.last_error.as_deref(), Some("still broken"));
    assert_eq!(exhausted.attempts, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_shutdown_returns_unfinished_tasks_for_redelivery() {
    const GRACE: Duration = Duration::from_millis(300);
    // Leases far longer than the test: only an explicit return explains a redelivery.
    let mut broker = broker_keeping_acks(|c| c.queue_defaults.lease_ms = 60_000).await;
    let client = Client::connect(broker.addr).await.unwrap();
    let ids = publish_n(&client, "drain", 10).await;

    // Worker A: 4 handlers, 6 prefetched (so 2 wait in its local buffer). Of the four
    // handlers that start, every other one finishes once `finish` is set (within the
    // grace period); the others never finish.
    #[derive(Debug, Clone, Copy, PartialEq)]
    enum Role {
        Quick,
        Stuck,
    }
    let (finish_tx, finish_rx) = watch::channel(false);
    let started = Arc::new(Mutex::new(Vec::<(u64, Role)>::new()));
    let worker_a = client
        .worker("drain")
        .concurrency(4)
        .prefetch(6)
        .grace_period(GRACE);
    let stop_a = worker_a.shutdown_handle();
    let run_a = {
        let started = started.clone();
        tokio::spawn(worker_a.run(move |task: Task| {
            let started = started.clone();
            let mut finish = finish_rx.clone();
            async move {
                let role = {
                    let mut started = started.lock();
                    let role = if started.len() % 2 == 0 {
                        Role::Quick
                    } else {
                        Role::Stuck
                    };
                    started.push((task.id(), role));
                    role
                };
                match role {
                    Role::Quick => {
                        finish.wait_for(|f| *f).await.expect("finish sender alive");
                    }
                    Role::Stuck => std::future::pending::<()>().await,
                }
                Ok::<_, TaskError>(())
            }
        }))
    };
    wait_until("four handlers running", WAIT, || started.lock().len() == 4).await;

    let asked = Instant::now();
    stop_a.cancel();
    finish_tx.send(true).unwrap();
    let report_a = run_a.await.unwrap().expect("worker A stops cleanly");
    let took = asked.elapsed();
    assert!(
        took >= GRACE,
        "stuck handlers get the grace period ({took:?})"
    );
    assert!(took < GRACE + WAIT, "shutdown is bounded ({took:?})");
    // Returned: the 2 stuck handlers' tasks and at least the 2 buffered deliveries
    // (more if the quick handlers' acks freed credit that the broker filled before it
    // handled the unsubscribe; those come back too).
    assert!(report_a.returned >= 4, "{report_a:?}");
    assert_eq!(
        report_a,
        WorkerReport {
            acked: 2,
            returned: report_a.returned,
            ..WorkerReport::default()
        }
    );
    let started = started.lock().clone();
    assert_eq!(started.len(), 4, "no task started after shutdown began");
    let acked_by_a: Vec<u64> = started
        .iter()
        .filter(|(_, r)| *r == Role::Quick)
        .map(|(id, _)| *id)
        .collect();
    let stuck: Vec<u64> = started
        .iter()
        .filter(|(_, r)| *r == Role::Stuck)
        .map(|(id, _)| *id)
        .collect();

    // Worker B, on another connection, gets everything A did not finish.
    let client_b = Client::connect(broker.addr).await.unwrap();
    let got_b = Arc::new(Mutex::new(Vec::<(u64, u32)>::new()));
    let worker_b = client_b.worker("drain").concurrency(4);
    let stop_b = worker_b.shutdown_handle();
    let run_b = {
        let got_b = got_b.clone();
        tokio::spawn(worker_b.run(move |task: Task| {
            let got_b = got_b.clone();
            async move {
                got_b.lock().push((task.id(), task.attempt()));
                Ok::<_, TaskError>(())
            }
        }))
    };
    wait_until("worker B to handle the other eight", WAIT, || {
        got_b.lock().len() >= 8
    })
    .await;
    stop_b.cancel();
    let report_b = run_b.await.unwrap().unwrap();
    assert_eq!(report_b.acked, 8);

    let got_b = got_b.lock().clone();
    let mut all: Vec<u64> = got_b.iter().map(|(id, _)| *id).chain(acked_by_a).collect();
    all.sort_unstable();
    assert_eq!(all, ids, "every task finished exactly once across A and B");
    for (id, attempt) in &got_b {
        if stuck.contains(id) {
            assert_eq!(*attempt, 2, "task {id} was returned by A after it started");
        }
    }
    // Returned-unstarted (buffered) ones never reached a handler: A gave them back
    // without an attempt counted, so B gets them as a first attempt.
    for (id, attempt) in &got_b {
        if !stuck.contains(id) {
            assert_eq!(*attempt, 1, "task {id} never started in A: {got_b:?}");
        }
    }
    broker.stop().await;
    assert!(stored_states(&broker, &ids).iter().all(acked));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_stops_after_max_tasks_or_when_its_condition_holds() {
    let broker = TestBroker::start().await;
    let client = Client::connect(broker.addr).await.unwrap();
    publish_n(&client, "stops", 20).await;

    // Prefetch above the limit: what it buffered beyond it goes back unseen.
    let report = tokio::time::timeout(
        WAIT,
        client
            .worker("stops")
            .concurrency(2)
            .prefetch(8)
            .max_tasks(3)
            .run(|_task: Task| async { Ok::<_, TaskError>(()) }),
    )
    .await
    .expect("stops by itself")
    .unwrap();
    assert_eq!(report.acked, 3, "{report:?}");

    let report = tokio::time::timeout(
        WAIT,
        client
            .worker("stops")
            .concurrency(1)
            .stop_when(|r: &WorkerReport| r.acked >= 5)
            .run(|_task: Task| async { Ok::<_, TaskError>(()) }),
    )
    .await
    .expect("stops by itself")
    .unwrap();
    assert_eq!(
        report.acked, 5,
        "one handler at a time stops exactly there: {report:?}"
    );

    let q = client.queue("stops").await.unwrap();
    assert_eq!((q.ready, q.leased, q.totals.acked), (12, 0, 8), "{q:?}");
    assert_eq!(
        q.totals.redelivered, 0,
        "nothing handed back spent an attempt"
    );
}
