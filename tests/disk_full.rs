//! Disk full under a running broker: its data directory is on a small tmpfs (mounted by
//! the test, as root) that the test fills. Confirmed tasks must survive, a publish
//! during the fault must get STORAGE (quickly, not a timeout), the broker must say
//! "not ready" (but stay healthy: a restart would not bring space back), and once
//! space returns it must resume by itself: publishes succeed, deliveries go on, and
//! everything confirmed is delivered, then and after a restart.
//!
//! Where `mount` is not permitted (not root) the tmpfs test is skipped, loudly (under CI,
//! which runs as root, it fails instead). The other two tests inject the fault with the
//! fault filesystem (`tests/faultfs`): a failed sled flush, and "no space left" on
//! journal writes.

mod common;

use std::collections::HashSet;
use std::time::{Duration, Instant};

use common::disk::{noise, FullableDisk};
use common::fault_disk::FaultDisk;
use common::{http_get, ChildBroker};
use squall_client::{Client, Delivery, ErrorCode, Subscription};
use squall_faultfs::Op;

fn random_payload(i: u64) -> Vec<u8> {
    noise(i, 32 * 1024)
}

/// The next delivery of `sub`, within 10 s (`what` says what the wait was for).
async fn next(sub: &mut Subscription, what: &str) -> Delivery {
    tokio::time::timeout(Duration::from_secs(10), sub.recv())
        .await
        .expect(what)
        .unwrap()
        .unwrap()
}

/// Consumes and acks tasks of "keep" until `seen` holds `n` distinct ids.
async fn consume_until(c: &Client, seen: &mut HashSet<u64>, n: usize) {
    let mut sub = c.subscribe("keep").prefetch(64).await.unwrap();
    while seen.len() < n {
        let d = next(&mut sub, "delivery").await;
        seen.insert(d.id());
        d.ack().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_fails_publishes_with_storage_and_the_broker_resumes_when_space_returns() {
    let dir = tempfile::tempdir().unwrap();
    // Small segments, so that the preallocated one fills within the test.
    let Some(disk) = FullableDisk::new(dir.path(), "24m", "1 MiB") else {
        return;
    };
    let (data, env) = (&disk.data, disk.env());
    let broker = ChildBroker::spawn_env(data, &["--sweep-interval", "1h"], &env);
    let c = broker.patient_client().await;

    // Confirmed before the fault.
    let mut confirmed = Vec::new();
    for i in 0..10 {
        confirmed.push(c.publish("keep", random_payload(i)).await.unwrap().id);
    }

    // The fault: the disk fills up.
    disk.fill();
    let started = Instant::now();
    let mut failed = None;
    for i in 10..200 {
        match c.publish("keep", random_payload(i)).await {
            Ok(p) => confirmed.push(p.id),
            Err(e) => {
                failed = Some(e);
                break;
            }
        }
    }
    let err = failed.expect("a publish fails once the disk is full");
    assert_eq!(err.code(), Some(ErrorCode::Storage), "{err}");
    assert!(started.elapsed() < Duration::from_secs(15), "failed fast");

    // Every later change fails at once, and the broker says why.
    let t = Instant::now();
    let err = c.publish("keep", "more").await.unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::Storage), "{err}");
    // The journal, or the reserve kept for settlements, says why.
    let why = |s: &str| s.contains("journal cannot write") || s.contains("below the reserve");
    assert!(why(&err.to_string()), "{err}");
    assert!(t.elapsed() < Duration::from_secs(2));
    let http = broker.http.expect("http on");
    let (status, body) = http_get(http, "/readyz").await;
    assert_eq!(status, 503, "{body}");
    assert!(why(&body), "{body}");
    assert_eq!(
        http_get(http, "/healthz").await.0,
        200,
        "healthy: a restart would not help"
    );
    let (_, metrics) = http_get(http, "/metrics").await;
    assert!(
        metrics.contains("squall_store_unavailable 1\n"),
        "{metrics}"
    );
    assert!(metrics.contains("squall_store_failed 0\n"), "{metrics}");
    assert!(metrics.contains("squall_ready 0\n"), "{metrics}");
    // Reads still answer.
    let s = c.task(confirmed[0]).await.unwrap();
    assert_eq!(s.state.to_string(), "ready");

    // Space returns: the broker resumes by itself, without a restart.
    disk.free();
    let t = Instant::now();
    while http_get(http, "/readyz").await.0 != 200 {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "ready again once space returned"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for i in 200..220 {
        confirmed.push(c.publish("keep", random_payload(i)).await.unwrap().id);
    }
    let mut seen = HashSet::new();
    consume_until(&c, &mut seen, confirmed.len() / 2).await;
    c.close().await;
    assert!(broker.terminate().success(), "a clean stop");

    // And a restart keeps exactly the rest.
    let broker = ChildBroker::spawn_env(data, &[], &env);
    let c = broker.patient_client().await;
    consume_until(&c, &mut seen, confirmed.len()).await;
    for id in &confirmed {
        assert!(seen.contains(id), "confirmed task {id} lost");
    }
    c.close().await;
    assert!(broker.terminate().success());
}

/// The rare failure the broker cannot get over in-process: a checkpoint (sled's flush)
/// fails (here: the fault filesystem fails every sync of sled's data files with EIO).
/// Changes then answer STORAGE, the broker stops by itself with exit code 75 so that
/// its supervisor restarts it, and the restart replays the journal: nothing confirmed
/// is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_checkpoint_stops_the_broker_with_75_and_the_restart_loses_nothing_confirmed() {
    let Some(disk) = FaultDisk::new("disk_full::failed_checkpoint") else {
        return;
    };
    let data = disk.data_dir();
    // 64 KiB segments: the first checkpoint comes after about fifteen 4 KiB tasks.
    let segments = ("SQUALL_JOURNAL_SEGMENT_BYTES", "64 KiB");
    let broker = ChildBroker::spawn_env(&data, &[], &[segments]);
    disk.fs().fail(Op::Sync, "slabs/", libc::EIO, 0);
    let c = broker.patient_client().await;
    let mut confirmed = Vec::new();
    let started = Instant::now();
    let err = loop {
        match c.publish("keep", vec![7u8; 4096]).await {
            Ok(p) => confirmed.push(p.id),
            Err(e) => break e,
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "the failed checkpoint stopped nothing"
        );
    };
    // STORAGE while the broker is still up, or the connection closing as it stops.
    if let Some(code) = err.code() {
        assert!(
            matches!(code, ErrorCode::Storage | ErrorCode::ShuttingDown),
            "{err}"
        );
    }
    assert!(confirmed.len() >= 10, "{} confirmed", confirmed.len());
    c.close().await;
    let status = broker.wait_exit(Duration::from_secs(30));
    assert_eq!(status.code(), Some(75), "{status}");
    assert!(disk.fs().stats().injected > 0, "the fault was what failed");

    disk.fs().clear_faults();
    let broker = ChildBroker::spawn_env(&data, &[], &[segments]);
    let c = broker.patient_client().await;
    let mut seen = HashSet::new();
    consume_until(&c, &mut seen, confirmed.len()).await;
    for id in &confirmed {
        assert!(seen.contains(id), "confirmed task {id} lost");
    }
    c.close().await;
    assert!(broker.terminate().success());
}

/// An ack refused with STORAGE while the journal cannot write leaves the task pending
/// in the store; once space returns, the broker delivers it again by itself (no
/// restart), and the second ack sticks. The fault filesystem fails journal writes
/// with ENOSPC at once (a full real disk would first fill the preallocated segment).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ack_refused_for_lack_of_space_is_delivered_again_once_space_returns() {
    let Some(disk) = FaultDisk::new("disk_full::ack_refused") else {
        return;
    };
    let data = disk.data_dir();
    let broker = ChildBroker::spawn(&data, &[]);
    let c = broker.patient_client().await;
    let id = c.publish("acks", "work").await.unwrap().id;
    let mut sub = c.subscribe("acks").prefetch(1).await.unwrap();
    let first = next(&mut sub, "delivery").await;
    assert_eq!((first.id(), first.attempt()), (id, 1));
    // Nothing is left unwritten before the fault (a confirmed publish is a barrier).
    // The delivery's count is not in the store (it would be written with the ack, or
    // after a second): the ack that is not stored gives the task back with the count
    // of the delivery it settled, so the next delivery is attempt 2.
    c.publish("barrier", "before the fault").await.unwrap();
    disk.fs().fail(Op::Write, "journal/", libc::ENOSPC, 0);
    let err = first.ack().await.unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::Storage), "{err}");
    disk.fs().clear_faults();

    let again = next(&mut sub, "the task comes back without a restart").await;
    assert_eq!((again.id(), again.attempt()), (id, 2));
    again.ack_with("done").await.unwrap();
    let status = c.task(id).await.unwrap();
    assert_eq!(status.state.to_string(), "succeeded");
    drop(sub);
    c.close().await;
    assert!(broker.terminate().success());
}
