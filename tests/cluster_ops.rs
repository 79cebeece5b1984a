//! Operating a replicated cluster as docs/operations.md ("A replicated cluster") says:
//! a backup of the cluster is one copy of every member's data directory taken while the
//! members are stopped; restored, the cluster elects a leader and serves exactly the
//! state of the backup — what was confirmed before it, nothing confirmed after it.

mod common;

#[path = "common/cluster/mod.rs"]
mod cluster;

use std::collections::HashSet;
use std::path::Path;
use std::time::Duration;

use cluster::*;

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
        let status = three.take(id).terminate();
        assert!(status.success(), "member {id} stopped cleanly: {status:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_restored_from_its_members_backups_serves_the_state_of_the_backup() {
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
