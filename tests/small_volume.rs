//! Small volumes (issue 19, fault 6), on real tmpfs mounts (the tests run as root; they
//! say so and pass vacuously where mounting is not permitted). A 64 MiB volume with the
//! default configuration: journal segments shrink to fit, publishes are refused with
//! STORAGE while free space is still in reserve, and settlements and purges go on and
//! give space back; freeing space resumes publishes; a restart at any point comes back
//! usable. A volume too small for the store refuses to start with exit code 64 and the
//! numbers.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::disk::{fill_bytes, free_bytes, noise, Tmpfs};
use common::ChildBroker;
use squall_client::{Client, ErrorCode, Message, Subscription};

const MIB: u64 = 1024 * 1024;

fn mount(dir: &Path, size: &str) -> Option<Tmpfs> {
    let mnt = dir.join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let tmpfs = Tmpfs::mount(&mnt, size);
    if tmpfs.is_none() {
        eprintln!("mount not permitted here (not root): small-volume test skipped");
    }
    tmpfs
}

/// Acks the next delivery of `sub`, with a result of `result` bytes.
async fn ack_next(sub: &mut Subscription, result: usize) -> Result<(), squall_client::ClientError> {
    let d = tokio::time::timeout(Duration::from_secs(10), sub.recv())
        .await
        .expect("a delivery within 10 s")
        .unwrap()
        .unwrap();
    d.ack_with(vec![7u8; result]).await
}

/// Publishes batches of 1 KiB tasks to "backlog", each batch followed by a small
/// publish + ack pair on "pairs" (whose result is retained), until a publish is
/// refused; returns how many backlog tasks were confirmed. (Small payloads: sled keeps
/// whole values in its leaves of up to 1,024 entries, so a checkpoint of 64 KiB
/// payloads writes leaves of tens of MiB, more than a 64 MiB volume's reserve; see
/// docs/operations.md.)
async fn fill_until_refused(c: &Client, pairs: &mut Subscription, seed: u64) -> u64 {
    let mut confirmed = 0;
    for i in 0..2_000u64 {
        let batch = (0..200).map(|k| Message::new("backlog", noise(seed + i * 200 + k, 1024)));
        match c.publish_batch(batch).await {
            Ok(p) => confirmed += p.len() as u64,
            Err(e) => {
                assert_eq!(e.code(), Some(ErrorCode::Storage), "{e}");
                return confirmed;
            }
        }
        match c.publish("pairs", noise(i, 1024)).await {
            Ok(_) => ack_next(pairs, 1024).await.unwrap(),
            Err(e) => {
                assert_eq!(e.code(), Some(ErrorCode::Storage), "{e}");
                return confirmed;
            }
        }
    }
    panic!("64 MiB never filled up");
}

/// Waits until a publish succeeds again (space came back), within `within`.
async fn publishes_resume(c: &Client, data: &Path, within: Duration) {
    let t = Instant::now();
    loop {
        match c.publish("probe", "x").await {
            Ok(_) => return,
            Err(e) => assert_eq!(e.code(), Some(ErrorCode::Storage), "{e}"),
        }
        assert!(
            t.elapsed() < within,
            "publishes did not resume within {within:?}: {} bytes free",
            free_bytes(data)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_64_mib_volume_refuses_publishes_in_reserve_and_settlements_purges_and_restarts_go_on() {
    let dir = tempfile::tempdir().unwrap();
    let Some(tmpfs) = mount(dir.path(), "64m") else {
        return;
    };
    let mnt = dir.path().join("mnt");
    let data = mnt.join("data");
    // Space an operator can free later, twice.
    let ballast = [mnt.join("ballast-1"), mnt.join("ballast-2")];
    for b in &ballast {
        fill_bytes(b, 8 * MIB);
    }
    // The default configuration (32 MiB segments).
    let broker = ChildBroker::spawn(&data, &[]);
    let c = broker.patient_client().await;
    let mut pairs = c.subscribe("pairs").prefetch(1).await.unwrap();
    c.publish("spare", "acked after the purge").await.unwrap();

    let confirmed = fill_until_refused(&c, &mut pairs, 0).await;
    assert!(
        confirmed > 1_000,
        "{confirmed} backlog tasks before the refusal"
    );
    // Refused while space is still in reserve, for what gives space back.
    let refused_at = free_bytes(&mnt);
    assert!(
        refused_at >= 2 * MIB,
        "refused with {refused_at} bytes free: no reserve was kept"
    );
    // Settlements still work.
    let mut backlog = c.subscribe("backlog").prefetch(8).await.unwrap();
    for _ in 0..20 {
        ack_next(&mut backlog, 0)
            .await
            .expect("an ack in the reserve");
    }
    drop(backlog);
    // A purge works, and so do acks after it. (The space a purge frees is inside
    // sled's slab files, which sled truncates only from their end: publishes may stay
    // refused until an operator frees space; docs/operations.md.)
    let purged = c
        .purge("backlog", None)
        .await
        .expect("a purge in the reserve");
    assert!(purged > 0);
    let mut spare = c.subscribe("spare").prefetch(1).await.unwrap();
    ack_next(&mut spare, 0)
        .await
        .expect("an ack after the purge");
    drop(spare);

    // An operator frees space: publishes resume.
    std::fs::remove_file(&ballast[0]).unwrap();
    publishes_resume(&c, &data, Duration::from_secs(30)).await;

    // Full again, then killed: the restart comes back usable (acks, purge), and
    // publishes resume once space is freed.
    fill_until_refused(&c, &mut pairs, 20_000).await;
    drop(pairs);
    c.close().await;
    broker.kill9();
    let broker = ChildBroker::spawn(&data, &[]);
    let c = broker.patient_client().await;
    let mut backlog = c.subscribe("backlog").prefetch(8).await.unwrap();
    for _ in 0..10 {
        ack_next(&mut backlog, 0)
            .await
            .expect("an ack after the restart");
    }
    drop(backlog);
    c.purge("backlog", None)
        .await
        .expect("a purge after the restart");
    std::fs::remove_file(&ballast[1]).unwrap();
    publishes_resume(&c, &data, Duration::from_secs(30)).await;
    c.close().await;
    assert!(broker.terminate().success());
    drop(tmpfs);
}

#[test]
fn a_volume_too_small_for_the_store_refuses_to_start_with_64_and_the_numbers() {
    let dir = tempfile::tempdir().unwrap();
    let Some(tmpfs) = mount(dir.path(), "8m") else {
        return;
    };
    let mut child = Command::new(env!("CARGO_BIN_EXE_squall"))
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--http",
            "127.0.0.1:0",
            "--data-dir",
        ])
        .arg(dir.path().join("mnt").join("data"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let t = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if t.elapsed() > Duration::from_secs(20) {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the broker started on a volume too small for it");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(64), "{stderr}");
    assert!(stderr.contains("data_dir"), "{stderr}");
    assert!(
        stderr.contains(&(8 * MIB).to_string()) && stderr.contains("needs at least"),
        "the numbers: {stderr}"
    );
    drop(tmpfs);
}
