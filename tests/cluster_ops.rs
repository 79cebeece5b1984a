//! Operating a replicated cluster as docs/operations.md ("A replicated cluster") says:
//! a backup of the cluster is one copy of every member's data directory taken while the
//! members are stopped; restored, the cluster elects a leader and serves exactly the
//! state of the backup — what was confirmed before it, nothing confirmed after it. A
//! member short of disk space: as leader it refuses publishes before proposing them
//! (STORAGE, as a single node does), and as follower it still applies what the others
//! committed (its Raft node does not stop). The tests run one at a time (`SERIAL`): two
//! three-node clusters at once on a 2-core machine make elections flap.

mod common;

#[path = "common/cluster/mod.rs"]
mod cluster;

use std::collections::HashSet;
use std::path::Path;
use std::time::Duration;

use cluster::*;
use common::disk::{fill_bytes, free_bytes, FullableDisk};
use squall_client::ErrorCode;

const MIB: u64 = 1024 * 1024;
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Copies directory `from` to `to` (which must not exist), as `cp -a` does.
fn copy_dir(from: &Path, to: &Path) {
    let status = std::process::Command::new("cp")
        .arg("-a")
        .arg(from)
        .arg(to)
        .status()
        .expect("run cp");
    assert!(status.success(), "cp -a {from:?} {to:?}");
}

/// Replaces the content of `dir` by the content of `backup`.
fn restore_dir(backup: &Path, dir: &Path) {
    std::fs::remove_dir_all(dir).unwrap();
    copy_dir(backup, dir);
}

async fn publish_all(everyone: &str, queue: &str, payloads: &[String]) {
    let client = cluster_client(everyone).await;
    for p in payloads {
        client
            .publish(queue, p.clone())
            .await
            .unwrap_or_else(|e| panic!("publish {p}: {e}"));
    }
    client.close().await;
}

/// Every payload the cluster delivers on `queue` until it has been quiet for a while.
async fn drain(everyone: &str, queue: &str) -> HashSet<String> {
    let client = cluster_client(everyone).await;
    let mut sub = client
        .subscribe(queue)
        .prefetch(64)
        .await
        .expect("subscribe");
    let mut seen = HashSet::new();
    while let Ok(Some(next)) = tokio::time::timeout(Duration::from_secs(2), sub.recv()).await {
        let d = next.expect("a delivery");
        let payload = String::from_utf8(d.payload().to_vec()).unwrap();
        d.ack().await.expect("ack");
        assert!(seen.insert(payload.clone()), "{payload} delivered twice");
    }
    client.close().await;
    seen
}

fn stop_all(three: &mut Three) {
    for id in 1..=NODES {
        // Within the broker's grace periods: a member that cannot stop fails the test.
        let status = three.take(id).terminate_within(Duration::from_secs(60));
        assert!(status.success(), "member {id} stopped cleanly: {status:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_restored_from_its_members_backups_serves_the_state_of_the_backup() {
    let _serial = SERIAL.lock().await;
    let mut three = three().await;
    let before: Vec<String> = (0..20).map(|i| format!("before-{i}")).collect();
    publish_all(&three.everyone, "jobs", &before).await;

    // The backup: every member stopped, every data directory copied.
    stop_all(&mut three);
    let backups = tempfile::tempdir().unwrap();
    for m in &three.members {
        copy_dir(&m.dir, &backups.path().join(m.id.to_string()));
    }

    // Life goes on after the backup: more confirmed publishes.
    for id in 1..=NODES {
        three.restart(id);
    }
    agreed_leader(&three.all()).await;
    let after: Vec<String> = (0..20).map(|i| format!("after-{i}")).collect();
    publish_all(&three.everyone, "jobs", &after).await;
    stop_all(&mut three);

    // The restore: every member's own directory put back, every member started.
    for m in &three.members {
        restore_dir(&backups.path().join(m.id.to_string()), &m.dir);
    }
    for id in 1..=NODES {
        three.restart(id);
    }
    agreed_leader(&three.all()).await;
    let served = drain(&three.everyone, "jobs").await;
    let expected: HashSet<String> = before.iter().cloned().collect();
    assert_eq!(
        served, expected,
        "the restored cluster serves what was confirmed before the backup, and only that"
    );
    stop_all(&mut three);
}

/// Fills the volume holding `m`'s data so that `leave` bytes stay free; returns the
/// filler file (remove it to give the space back).
fn leave_free(m: &Member, root: &Path, leave: u64) -> std::path::PathBuf {
    let filler = root.join("mnt").join("filler");
    let free = free_bytes(&m.dir);
    assert!(free > leave, "{free} bytes free, want to leave {leave}");
    fill_bytes(&filler, free - leave);
    filler
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_short_of_space_refuses_publishes_as_leader_and_applies_them_as_follower() {
    let _serial = SERIAL.lock().await;
    // Every member on its own 160 MiB volume: 5 MiB journal segments, a publish
    // reserve of 48 MiB and a checkpoint reserve of 28 MiB (store/volume.rs). 36 MiB
    // free is below the first and above the second.
    const LEAVE: u64 = 36 * MIB;
    let (_dirs, mut members) = members(NODES);
    let roots: Vec<tempfile::TempDir> = members
        .iter()
        .map(|_| tempfile::tempdir().unwrap())
        .collect();
    let mut disks = Vec::new();
    for (m, root) in members.iter_mut().zip(&roots) {
        let Some(disk) = FullableDisk::new(root.path(), "160m", "1 MiB") else {
            return;
        };
        m.dir = disk.data.clone();
        std::fs::create_dir_all(&m.dir).unwrap();
        disks.push(disk);
    }
    let peers = peers_of(&members);
    let brokers: Vec<_> = members.iter().map(|m| start(m, &peers)).collect();
    let all: Vec<&Member> = members.iter().collect();
    let (leader, _) = agreed_leader(&all).await;
    let leader = &members[leader as usize - 1];
    let follower = members.iter().find(|m| m.id != leader.id).unwrap();
    let root_of = |m: &Member| roots[m.id as usize - 1].path().to_owned();
    let everyone = Three::clients_of(&all);
    let client = cluster_client(&everyone).await;
    for i in 0..5 {
        client.publish("space", format!("first-{i}")).await.unwrap();
    }

    // A follower short of space applies what the majority committed.
    let filler = leave_free(follower, &root_of(follower), LEAVE);
    for i in 0..5 {
        client
            .publish("space", format!("second-{i}"))
            .await
            .unwrap();
    }
    applied_up_to(follower, last_log_index(leader).await).await;
    std::fs::remove_file(filler).unwrap();

    // A leader short of space refuses a publish before proposing it: nothing is
    // appended to the log, and it stays the leader.
    let before = last_log_index(leader).await;
    let filler = leave_free(leader, &root_of(leader), LEAVE);
    let err = client
        .publish("space", "refused")
        .await
        .expect_err("a leader below the publish reserve refuses publishes");
    assert_eq!(err.code(), Some(ErrorCode::Storage), "{err}");
    assert!(err.to_string().contains("below the reserve"), "{err}");
    assert_eq!(last_log_index(leader).await, before, "nothing was proposed");
    // Settlements go on: they give space back.
    let mut sub = client.subscribe("space").prefetch(1).await.unwrap();
    let d = tokio::time::timeout(Duration::from_secs(10), sub.recv())
        .await
        .expect("a delivery")
        .unwrap()
        .unwrap();
    d.ack().await.expect("an ack is taken below the reserve");
    assert_eq!(agreed_leader(&all).await.0, leader.id, "still the leader");

    // Space returns: publishes are taken again.
    std::fs::remove_file(filler).unwrap();
    client.publish("space", "after").await.unwrap();
    client.close().await;
    for b in brokers {
        b.terminate_within(Duration::from_secs(60));
    }
    drop(disks);
}

/// A leader whose followers are gone cannot commit anything, its retention sweep
/// included; asked to stop (SIGTERM), it still stops within its grace periods instead
/// of waiting forever for a commit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_without_a_majority_stops_when_asked() {
    let _serial = SERIAL.lock().await;
    let mut three = three().await;
    let (leader, _) = agreed_leader(&three.all()).await;
    for id in (1..=NODES).filter(|&id| id != leader) {
        three.take(id).kill9();
    }
    // A sweep (every second) is proposed meanwhile and can never commit.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let started = std::time::Instant::now();
    let status = three.take(leader).terminate_within(Duration::from_secs(45));
    assert!(status.success(), "{status:?}");
    eprintln!("the leader stopped {:?} after SIGTERM", started.elapsed());
}
