//! Issue 19, fault 3: a backlog's bytes stay on disk. With no consumer, 256 MiB of
//! 64 KiB tasks (32 times the 8 MiB cache) must leave the broker's RSS under its idle
//! RSS plus the cache plus the per-task index plus a fixed allowance for buffers, and
//! so must a kill -9 and restart (which replays the journal). Before the fix, sled kept
//! whole bodies in its leaves and never counted them against the cache: RSS grew by
//! about 1.3 times the backlog (1.4 GB for 1 GiB), and 1.66 GB after the restart.
//! Now sled holds a 26-byte reference per body; the bodies are in the journal and in
//! payload files (`src/store/payload.rs`).

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::{temp_data_dir, ChildBroker};

const MIB: u64 = 1024 * 1024;
const TASK_BYTES: usize = 64 * 1024;
const TASKS: usize = 4096; // 256 MiB
const CACHE: u64 = 8 * MIB;
/// What the broker may hold beyond its idle RSS and the cache: the per-task index
/// (well under 1 KiB per task here), the group-commit buffer (4 MiB kept), frames in
/// flight and allocator slack. Before the fix the growth was over 300 MiB.
const ALLOWANCE: u64 = 48 * MIB;

async fn publish_backlog(broker: &ChildBroker) {
    let client = broker.patient_client().await;
    let payload = Bytes::from(vec![0xab_u8; TASK_BYTES]);
    for _ in 0..TASKS / 16 {
        let publishes = (0..16).map(|_| client.publish("backlog", payload.clone()));
        for published in futures_util::future::join_all(publishes).await {
            published.expect("publish");
        }
    }
}

fn check(what: &str, idle: u64, rss: u64) {
    eprintln!(
        "{what}: RSS {} MiB (idle {} MiB, cache {} MiB, backlog {} MiB)",
        rss / MIB,
        idle / MIB,
        CACHE / MIB,
        (TASKS * TASK_BYTES) as u64 / MIB
    );
    assert!(
        rss < idle + CACHE + ALLOWANCE,
        "{what}: RSS {} MiB is over idle + cache + allowance ({} MiB)",
        rss / MIB,
        (idle + CACHE + ALLOWANCE) / MIB
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backlog_32_times_the_cache_stays_on_disk_before_and_after_a_restart() {
    let (_dir, path) = temp_data_dir();
    let args = ["--fsync", "never", "--cache-bytes", "8MiB", "--http", "off"];
    let broker = ChildBroker::spawn(&path, &args);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let idle = broker.rss_bytes();
    publish_backlog(&broker).await;
    check("with the backlog", idle, broker.rss_bytes());
    broker.kill9();
    let broker = ChildBroker::spawn(&path, &args);
    check("after kill -9 and restart", idle, broker.rss_bytes());
    // The backlog is whole: a sample of bodies reads back (from the journal or payload
    // files), and the queue holds every task.
    let client = broker.patient_client().await;
    let info = client.queue("backlog").await.expect("queue");
    assert_eq!(info.ready as usize, TASKS);
    for id in [1, TASKS as u64 / 2, TASKS as u64] {
        let task = client.payload(id).await.expect("payload");
        assert_eq!(task.payload.len(), TASK_BYTES);
        assert!(task.payload.iter().all(|&b| b == 0xab));
    }
    broker.terminate();
}
