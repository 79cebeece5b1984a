//! End-to-end: periodic schedules, per-queue flow control and task expiry against a real
//! broker on 127.0.0.1:0. A schedule firing every second publishes one task per tick,
//! across a kill -9 and a restart (no tick twice, one catch-up run); a capped queue
//! never has more leased tasks than its cap with 8 consumers of large prefetch; a
//! rate-limited queue delivers at its rate (within 10%) over 10 s; an expired task is
//! never delivered. The 10-second tests run side by side (one test binary).

mod common;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::{temp_data_dir, ChildBroker, TestBroker, WAIT};
use squall_client::{
    Client, PublishOptions, QueueConfigUpdate, ScheduleSpec, StateFilter, Subscription, TaskOutcome,
};

fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).unwrap().as_millis() as u64
}

fn now_ms() -> u64 {
    unix_ms(SystemTime::now())
}

/// Every task now in `queue`, by tick (from its `squall-tick-ms` header), with its
/// creation time; panics on a tick seen twice.
async fn drain_ticks(client: &Client, queue: &str) -> BTreeMap<u64, u64> {
    let mut sub = client.subscribe(queue).prefetch(1_000).await.unwrap();
    let mut ticks = BTreeMap::new();
    while let Ok(Some(d)) = tokio::time::timeout(Duration::from_millis(1_500), sub.recv()).await {
        let d = d.unwrap();
        let tick: u64 = std::str::from_utf8(&d.headers()["squall-tick-ms"])
            .unwrap()
            .parse()
            .unwrap();
        assert_eq!(&d.headers()["squall-schedule"][..], b"every-second");
        let created = unix_ms(d.created_at());
        assert!(
            ticks.insert(tick, created).is_none(),
            "tick {tick} published twice"
        );
        d.ack().await.unwrap();
    }
    ticks
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_schedule_publishes_once_per_tick_across_a_kill_9_with_one_catch_up() {
    let (_guard, dir) = temp_data_dir();
    let broker = ChildBroker::spawn(&dir, &[]);
    let client = broker.patient_client().await;
    let spec = ScheduleSpec::new("every-second", "ticks", "* * * * * *").payload("tick");
    let added = client.add_schedule(spec).await.unwrap();
    let started = now_ms();
    assert!(added.next_run.is_some());
    tokio::time::sleep(Duration::from_millis(4_500)).await;
    drop(client);
    broker.kill9();
    let killed = now_ms();
    // Down across at least two ticks.
    tokio::time::sleep(Duration::from_millis(2_600)).await;
    let respawned = now_ms();
    let broker = ChildBroker::spawn(&dir, &[]);
    let client = broker.patient_client().await;
    let restarted = now_ms();
    tokio::time::sleep(Duration::from_millis(3_000)).await;
    let listed = client.schedules().await.unwrap();
    assert_eq!(listed.len(), 1, "the schedule survived the crash");
    client.pause_schedule("every-second").await.unwrap();
    let ticks = drain_ticks(&client, "ticks").await;
    let info = &client.schedules().await.unwrap()[0];
    eprintln!("ticks {ticks:?}, killed at {killed}, respawned at {respawned}, up at {restarted}");

    let all: Vec<u64> = ticks.keys().copied().collect();
    assert!(
        all.iter().all(|t| t % 1_000 == 0),
        "ticks are whole seconds"
    );
    // Before the kill: every second, none missing.
    let before: Vec<u64> = all.iter().copied().filter(|&t| t < killed).collect();
    assert!(before.len() >= 3, "{before:?}");
    assert!(before[0] <= started + 1_000 + 500, "first tick on time");
    assert!(
        before.windows(2).all(|w| w[1] - w[0] == 1_000),
        "{before:?}"
    );
    // The ticks missed while down were fired once, as one run for the latest of them
    // (catch-up `one`), then every second again: after the last tick stored before
    // the kill comes C, C + 1 s, C + 2 s, ... where C skipped at least one missed tick.
    let last_before = *before.last().unwrap();
    let after: Vec<u64> = all.iter().copied().filter(|&t| t > last_before).collect();
    assert!(after.len() >= 3, "{after:?}");
    assert!(after.windows(2).all(|w| w[1] - w[0] == 1_000), "{after:?}");
    let catch_up = after[0];
    assert!(
        catch_up >= last_before + 2_000,
        "one run for the latest missed tick, not one per missed tick: {catch_up} after {last_before}"
    );
    assert!(
        catch_up <= restarted,
        "the catch-up is for a tick that had passed"
    );
    let during_outage = after.iter().filter(|&&t| t < respawned).count();
    assert!(during_outage <= 1, "{during_outage} runs for the outage");
    assert!(
        ticks[&catch_up] >= respawned,
        "the catch-up was published by the restarted broker"
    );
    assert_eq!(info.last_run.map(unix_ms), all.last().copied());
    assert!(info.last_task.is_some());
    broker.kill9();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_capped_queue_never_leases_more_than_its_cap_to_8_greedy_consumers() {
    const CAP: i64 = 3;
    const TASKS: usize = 120;
    let broker = TestBroker::start().await;
    let admin = Client::connect(broker.addr).await.unwrap();
    let info = admin
        .set_queue_config("capped", QueueConfigUpdate::new().max_in_flight(CAP as u32))
        .await
        .unwrap();
    assert_eq!(info.config.max_in_flight, CAP as u32);
    for i in 0..TASKS {
        admin.publish("capped", format!("t{i}")).await.unwrap();
    }
    let held = Arc::new(AtomicI64::new(0));
    let most = Arc::new(AtomicI64::new(0));
    let mut consumers = Vec::new();
    for c in 0..8 {
        let client = Client::connect(broker.addr).await.unwrap();
        let mut sub: Subscription = client.subscribe("capped").prefetch(500).await.unwrap();
        let (held, most) = (held.clone(), most.clone());
        consumers.push(tokio::spawn(async move {
            let mut n = 0usize;
            while let Ok(Some(d)) = tokio::time::timeout(Duration::from_secs(2), sub.recv()).await {
                let d = d.unwrap();
                let now = held.fetch_add(1, Ordering::SeqCst) + 1;
                most.fetch_max(now, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(5 + c)).await;
                held.fetch_sub(1, Ordering::SeqCst);
                d.ack().await.unwrap();
                n += 1;
            }
            drop(client);
            n
        }));
    }
    // The broker's own count, watched meanwhile.
    let mut most_leased = 0;
    let deadline = Instant::now() + WAIT * 3;
    loop {
        let q = admin.queue("capped").await.unwrap();
        most_leased = most_leased.max(q.leased);
        if q.totals.acked as usize == TASKS || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(3)).await;
    }
    let mut total = 0;
    for c in consumers {
        total += c.await.unwrap();
    }
    assert_eq!(total, TASKS, "every task was delivered once");
    let most = most.load(Ordering::SeqCst);
    assert!(most <= CAP, "{most} tasks held at once, cap {CAP}");
    assert_eq!(most, CAP, "the consumers did fill the cap");
    assert!(most_leased <= CAP as u64, "the broker leased {most_leased}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rate_limited_queue_delivers_at_its_rate_over_10_seconds() {
    const RATE: u32 = 40;
    const WINDOW: Duration = Duration::from_secs(10);
    let broker = TestBroker::start().await;
    let admin = Client::connect(broker.addr).await.unwrap();
    let info = admin
        .set_queue_config("limited", QueueConfigUpdate::new().rate_limit(RATE, 4))
        .await
        .unwrap();
    assert_eq!((info.config.rate_limit, info.config.rate_burst), (RATE, 4));
    let tasks: Vec<_> = (0..(RATE as usize * 13))
        .map(|i| ("limited", format!("t{i}")))
        .collect();
    for chunk in tasks.chunks(500) {
        admin.publish_batch(chunk.to_vec()).await.unwrap();
    }
    let mut consumers = Vec::new();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    for _ in 0..4 {
        let client = Client::connect(broker.addr).await.unwrap();
        let mut sub = client.subscribe("limited").prefetch(200).await.unwrap();
        let tx = tx.clone();
        consumers.push(tokio::spawn(async move {
            while let Some(Ok(d)) = sub.recv().await {
                let _ = tx.send(Instant::now());
                if d.ack().await.is_err() {
                    break;
                }
            }
            drop(client);
        }));
    }
    drop(tx);
    // Measured over a 10-second window that starts once the initial burst is spent.
    let first = rx.recv().await.unwrap();
    let start = first + Duration::from_millis(500);
    let end = start + WINDOW;
    let mut in_window = 0u32;
    while let Some(at) = rx.recv().await {
        if at >= end {
            break;
        }
        if at >= start {
            in_window += 1;
        }
    }
    for c in consumers {
        c.abort();
    }
    let expected = RATE * WINDOW.as_secs() as u32;
    eprintln!("{in_window} deliveries in {WINDOW:?}, expected {expected}");
    assert!(
        in_window.abs_diff(expected) <= expected / 10,
        "{in_window} deliveries in {WINDOW:?} at {RATE}/s"
    );
}

#[tokio::test]
async fn an_expired_task_is_never_delivered_and_is_dead_or_dropped() {
    let broker = TestBroker::start().await;
    let client = Client::connect(broker.addr).await.unwrap();
    let short = PublishOptions::new().expires_in(Duration::from_millis(300));
    let gone = client
        .publish_with("exp", "late", short.clone())
        .await
        .unwrap();
    let kept = client.publish("exp", "fine").await.unwrap();
    tokio::time::sleep(Duration::from_millis(600)).await;
    let mut sub = client.subscribe("exp").prefetch(10).await.unwrap();
    let d = tokio::time::timeout(WAIT, sub.recv())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(d.id(), kept.id, "only the task that did not expire");
    d.ack().await.unwrap();
    let dead = client.peek("exp", StateFilter::Dead, 10).await.unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].id, gone.id);
    assert_eq!(dead[0].last_error.as_deref(), Some("expired"));
    let q = client.queue("exp").await.unwrap();
    assert_eq!(q.totals.expired_tasks, 1);
    // A queue that drops expired tasks keeps nothing of them.
    client
        .set_queue_config("exp-drop", QueueConfigUpdate::new().drop_expired(true))
        .await
        .unwrap();
    let dropped = client
        .publish_with("exp-drop", "late", short)
        .await
        .unwrap();
    // Whoever waits for its result learns at its expiry that it is gone, not at the
    // end of the wait.
    let start = Instant::now();
    let outcome = client
        .wait_result(dropped.id, Duration::from_secs(20))
        .await
        .unwrap();
    assert!(matches!(outcome, TaskOutcome::Unknown), "{outcome:?}");
    assert!(
        start.elapsed() < Duration::from_secs(10),
        "{:?}",
        start.elapsed()
    );
    let q = client.queue("exp-drop").await.unwrap();
    assert_eq!((q.ready, q.dead, q.totals.expired_tasks), (0, 0, 1));
}
