//! Crash loop: the broker binary as a child process under continuous publish and
//! consume load (several producer and consumer connections), killed with SIGKILL at
//! random moments N times and restarted on the same data directory each time; then a
//! final drain. Checks that every confirmed task was delivered and acked at least once
//! (lost = 0) and that no task whose ack was confirmed is delivered again afterwards.
//!
//! N comes from `SQUALL_CRASH_ITERATIONS` (default 5, for the normal suite); the long
//! run and what it proves are described in `tests/crash/README.md`. The kill times come
//! from a seed, printed with them; `SQUALL_CRASH_SEED=<seed>` repeats them.
//!
//! A task counts as settled only when its ack was confirmed, or when the store shows
//! it succeeded (the queue retains results, so an ack that became durable without its
//! confirmation arriving is visible): an unconfirmed ack proves nothing by itself.

mod common;

use std::collections::{HashMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{spec, temp_data_dir, ChildBroker, Wire};
use parking_lot::Mutex;
use rand::{Rng, SeedableRng};
use squall::model::TaskStatus;
use squall::store::{FsyncMode, Store, StoreConfig};
use squall_proto::v1::{self, request::Op, response};

const QUEUE: &str = "crash-loop";
const PRODUCERS: usize = 3;
const CONSUMERS: usize = 3;
/// Publishes in flight per producer connection.
const WINDOW: usize = 16;
/// Most deliveries acked as one pipelined batch.
const ACK_BATCH: usize = 64;

/// What the clients saw, across every incarnation ("epoch") of the broker.
#[derive(Default)]
struct Ledger {
    /// Publishes the broker confirmed.
    confirmed: HashSet<u64>,
    /// Acks sent: one may have become durable without its confirmation arriving.
    ack_sent: HashSet<u64>,
    /// Confirmed acks: task -> (epoch, attempt) of the delivery acked.
    acked: HashMap<u64, (u32, u32)>,
    /// Every delivery received.
    deliveries: u64,
    /// Tasks delivered at least once.
    delivered: HashSet<u64>,
    /// Deliveries after a confirmed ack of the same task: must stay empty.
    revived: Vec<String>,
    /// Settlements refused (none expected: leases are long and acks immediate).
    refused: Vec<String>,
}

impl Ledger {
    /// A delivery received from the broker of `epoch`. It revives an acked task if it
    /// comes from a later broker than the confirmed ack (that ack was durable), or from
    /// the same broker with a later attempt. Deliveries read late from an older
    /// broker's socket are not revivals.
    fn delivery(&mut self, epoch: u32, d: &v1::Delivery) {
        self.deliveries += 1;
        self.delivered.insert(d.task_id);
        if let Some(&(acked_epoch, attempt)) = self.acked.get(&d.task_id) {
            if epoch > acked_epoch || (epoch == acked_epoch && d.attempt > attempt) {
                self.revived.push(format!(
                    "task {} delivered (epoch {epoch}, attempt {}) after its ack was confirmed (epoch {acked_epoch}, attempt {attempt})",
                    d.task_id, d.attempt
                ));
            }
        }
    }
}

/// Publishes with `WINDOW` requests in flight until the broker goes away or `stop`.
async fn produce(addr: SocketAddr, ledger: Arc<Mutex<Ledger>>, stop: Arc<AtomicBool>) {
    let Some(mut w) = Wire::try_hello(addr).await else {
        return;
    };
    let mut in_flight = VecDeque::new();
    let mut n = 0u64;
    loop {
        while in_flight.len() < WINDOW && !stop.load(Ordering::Relaxed) {
            let mut task = spec(QUEUE, &format!("task {n}"));
            // Crashes count attempts of in-flight tasks; none may die of it here.
            task.max_attempts = 1_000_000;
            n += 1;
            let Some(id) = w
                .try_send(Op::Publish(v1::Publish {
                    tasks: vec![task],
                    ..Default::default()
                }))
                .await
            else {
                return;
            };
            in_flight.push_back(id);
        }
        let Some(req) = in_flight.pop_front() else {
            return;
        };
        match w.response_or_eof(req).await {
            Some(Ok(response::Result::Publish(ok))) => {
                let mut l = ledger.lock();
                l.confirmed.extend(ok.tasks.iter().map(|t| t.task_id));
            }
            _ => return,
        }
    }
}

/// Receives and acks (pipelined) until the broker goes away, or until `stop` once
/// nothing has arrived for `idle`.
async fn consume(
    addr: SocketAddr,
    epoch: u32,
    ledger: Arc<Mutex<Ledger>>,
    stop: Arc<AtomicBool>,
    idle: Duration,
) {
    let Some(mut w) = Wire::try_hello(addr).await else {
        return;
    };
    let Some(sub) = w
        .try_send(Op::Subscribe(v1::Subscribe {
            queue: QUEUE.into(),
            prefetch: 32,
        }))
        .await
    else {
        return;
    };
    if !matches!(
        w.response_or_eof(sub).await,
        Some(Ok(response::Result::Subscribe(_)))
    ) {
        return;
    }
    loop {
        // None is an idle period or a closed connection; either ends the consumer
        // once it is told to stop (which the test does before it kills the broker).
        let Some(first) = w.try_delivery(idle).await else {
            if stop.load(Ordering::Relaxed) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        let mut batch = vec![first];
        while batch.len() < ACK_BATCH {
            match w.try_delivery(Duration::ZERO).await {
                Some(d) => batch.push(d),
                None => break,
            }
        }
        let mut acks = Vec::with_capacity(batch.len());
        for d in &batch {
            {
                let mut l = ledger.lock();
                l.delivery(epoch, d);
                l.ack_sent.insert(d.task_id);
            }
            let ack = Op::Ack(v1::Ack {
                task_id: d.task_id,
                lease_token: d.lease_token,
                result: bytes::Bytes::from_static(b"done"),
            });
            let Some(req) = w.try_send(ack).await else {
                return;
            };
            acks.push((req, d.task_id, d.attempt));
        }
        for (req, task, attempt) in acks {
            match w.response_or_eof(req).await {
                Some(Ok(_)) => {
                    ledger.lock().acked.entry(task).or_insert((epoch, attempt));
                }
                Some(Err(e)) => ledger.lock().refused.push(format!("ack of {task}: {e:?}")),
                None => return,
            }
        }
    }
}

/// Spawns the load of one broker incarnation.
fn start_load(
    addr: SocketAddr,
    epoch: u32,
    ledger: &Arc<Mutex<Ledger>>,
    stop: &Arc<AtomicBool>,
) -> Vec<tokio::task::JoinHandle<()>> {
    let mut load = Vec::new();
    for _ in 0..PRODUCERS {
        load.push(tokio::spawn(produce(addr, ledger.clone(), stop.clone())));
    }
    for _ in 0..CONSUMERS {
        let idle = Duration::from_millis(100);
        let task = consume(addr, epoch, ledger.clone(), stop.clone(), idle);
        load.push(tokio::spawn(task));
    }
    load
}

/// The seed of the kill times: `SQUALL_CRASH_SEED`, or a random one.
fn seed() -> u64 {
    std::env::var("SQUALL_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random)
}

fn iterations() -> u32 {
    std::env::var("SQUALL_CRASH_ITERATIONS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(5)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill_9_in_a_loop_loses_no_confirmed_task_and_revives_no_acked_one() {
    let crashes = iterations();
    let (_guard, dir) = temp_data_dir();
    let ledger = Arc::new(Mutex::new(Ledger::default()));
    let started = Instant::now();
    let seed = seed();
    let mut rng = rand::rngs::SmallRng::seed_from_u64(seed);
    eprintln!("crash-loop: seed {seed} (SQUALL_CRASH_SEED={seed} repeats the kill times)");

    for epoch in 0..crashes {
        let broker = ChildBroker::spawn(&dir, &[]);
        if epoch == 0 {
            // Results are kept, so that a durable ack is visible in the store even when
            // its confirmation was lost with the broker.
            let c = squall_client::Client::connect(broker.addr).await.unwrap();
            let keep =
                squall_client::QueueConfigUpdate::new().result_ttl(Duration::from_secs(24 * 3600));
            c.set_queue_config(QUEUE, keep).await.unwrap();
            c.close().await;
        }
        let stop = Arc::new(AtomicBool::new(false));
        let load = start_load(broker.addr, epoch, &ledger, &stop);
        // A random moment: sometimes right after start-up, mostly under full load.
        let ms = rng.random_range(20..1_500);
        eprintln!("crash-loop: epoch {epoch}: kill -9 after {ms} ms of load");
        tokio::time::sleep(Duration::from_millis(ms)).await;
        stop.store(true, Ordering::Relaxed);
        broker.kill9();
        for task in load {
            task.await.expect("load task ends without panicking");
        }
    }

    // The last incarnation: no producers; consumers drain until idle.
    let broker = ChildBroker::spawn(&dir, &[]);
    let stop = Arc::new(AtomicBool::new(true));
    let drain: Vec<_> = (0..CONSUMERS)
        .map(|_| {
            let idle = Duration::from_secs(2);
            tokio::spawn(consume(
                broker.addr,
                crashes,
                ledger.clone(),
                stop.clone(),
                idle,
            ))
        })
        .collect();
    for task in drain {
        task.await.expect("drain ends without panicking");
    }
    let status = broker.terminate();
    assert!(status.success(), "clean exit after SIGTERM: {status:?}");

    let l = ledger.lock();
    // Settled for sure: the ack was confirmed; anything else is checked in the store below.
    let unconfirmed: Vec<u64> = l
        .confirmed
        .iter()
        .filter(|id| !l.acked.contains_key(id))
        .copied()
        .collect();
    let duplicates = l.deliveries - l.delivered.len() as u64;
    println!(
        "crash-loop: seed={seed} crashes={crashes} confirmed={} delivered={} acks unconfirmed={} \
         duplicates={duplicates}",
        l.confirmed.len(),
        l.delivered.len(),
        unconfirmed.len()
    );
    eprintln!(
        "crash-loop: {} deliveries, {} acks sent, {} acks confirmed, {:?}",
        l.deliveries,
        l.ack_sent.len(),
        l.acked.len(),
        started.elapsed()
    );
    assert!(
        l.revived.is_empty(),
        "acked tasks came back: {:?}",
        l.revived
    );
    assert!(l.refused.is_empty(), "settlements refused: {:?}", l.refused);
    assert!(
        !l.confirmed.is_empty() && !l.acked.is_empty(),
        "the load ran: {} confirmed, {} acked",
        l.confirmed.len(),
        l.acked.len()
    );

    // Every confirmed task is gone from the store: acked durably, none left pending
    // (an ack sent but unconfirmed before a crash counts only if it was durable).
    let store = Store::open(&StoreConfig {
        path: dir.clone(),
        fsync: FsyncMode::Always,
        cache_bytes: 8 << 20,
        journal_segment_bytes: squall::store::DEFAULT_JOURNAL_SEGMENT_BYTES,
    })
    .expect("data directory opens");
    let mut left = Vec::new();
    let mut succeeded = std::collections::HashSet::new();
    store
        .recover(|id, state| match state.status {
            TaskStatus::Pending => left.push(id),
            TaskStatus::Succeeded => {
                succeeded.insert(id);
            }
            TaskStatus::Dead => {}
        })
        .expect("recovery scan");
    // A task whose ack was never confirmed is safe only if the store shows it succeeded.
    let lost: Vec<u64> = unconfirmed
        .iter()
        .filter(|id| !succeeded.contains(id))
        .copied()
        .collect();
    assert!(
        lost.is_empty(),
        "seed {seed}: {} confirmed tasks with no confirmed ack and not succeeded in the store: {:?}",
        lost.len(),
        &lost[..lost.len().min(20)]
    );
    let unsettled: Vec<_> = left.iter().filter(|id| l.confirmed.contains(id)).collect();
    assert!(
        unsettled.is_empty(),
        "confirmed tasks still pending after the drain: {unsettled:?}"
    );
    assert!(
        left.is_empty(),
        "tasks still pending after the drain (published, unconfirmed): {left:?}"
    );
}
