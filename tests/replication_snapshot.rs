//! Proof 4 of issue 15: snapshots of the queue state. Three members snapshot every
//! few entries and purge their Raft log behind the snapshot; a follower killed with -9
//! whose data directory is deleted comes back empty, and since the leader's log no
//! longer starts at entry 1 it is sent the leader's snapshot (it reports the install)
//! and then the entries after it. Its store then holds exactly what another member's
//! holds: every task state (pending, delayed, dead with its reason, succeeded with its
//! result), every body, the queues' settings, the schedules, the id allocator and the
//! idempotency keys (the last checked through the store's own writer: a repeat of a
//! key is reported a duplicate of the original task).

#[path = "common/cluster/mod.rs"]
mod cluster;
mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use cluster::{
    agreed_leader, applied_up_to, args_with, cluster_client, members, peers_of, sample,
    settled_state, start_with, status, Member, Settled, NODES, WITHIN,
};
use squall::model::{Mutation, NewTask, TaskBody, TaskState, TaskStatus};
use squall::store::{
    Completion, Duplicate, FsyncMode, JobReport, Muts, Store, StoreConfig, StoreError,
};
use squall_client::{PublishOptions, QueueConfigUpdate, ScheduleSpec};

/// Entries between two snapshots (and kept behind one): small, so that a few dozen
/// publishes make every member snapshot and purge.
const SNAPSHOT_LOGS: u64 = 16;

/// The leader's purge point, once it is past `index`.
async fn purged_past(leader: &Member, index: u64) -> u64 {
    let deadline = Instant::now() + WITHIN;
    loop {
        let purged = status(leader.cluster)
            .await
            .and_then(|s| s.purged)
            .map_or(0, |p| p.index);
        if purged > index {
            return purged;
        }
        assert!(
            Instant::now() < deadline,
            "the leader's log was not purged past {index} (at {purged})"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Once all of `members` agree on a leader: a client of the cluster, and the leader's
/// id.
async fn client_of_leader(members: &[Member]) -> (squall_client::Client, u64) {
    let all: Vec<&Member> = members.iter().collect();
    agreed_leader(&all).await;
    let client = cluster_client(&cluster::Three::clients_of(&all)).await;
    let leader_id = client.server_info().node_id.parse().unwrap();
    (client, leader_id)
}

/// Everything a store holds, read through its public API.
#[derive(Debug, PartialEq)]
struct Content {
    tasks: BTreeMap<u64, (TaskState, Option<squall::store::Retained>, Option<TaskBody>)>,
    queues: Vec<(String, squall::model::QueueConfig)>,
    schedules: Vec<squall::model::Schedule>,
    next_id: u64,
    /// For each idempotency key tried: the task a repeat is a duplicate of.
    keys: Vec<Option<u64>>,
}

/// Tells which inserts of the job were duplicates.
struct Report(std::sync::mpsc::Sender<Vec<Duplicate>>);

impl Completion for Report {
    fn complete(self, _: Result<(), StoreError>) {}

    fn complete_with(self, result: Result<(), StoreError>, report: JobReport<'_>) {
        result.expect("the probe job applies");
        let _ = self.0.send(report.duplicates.to_vec());
    }
}

/// Opens the store in `dir` (retrying while the stopped broker's lock lingers) and
/// reads all of it; `keys` are (queue, key) pairs, each tried with an insert.
fn content(dir: &std::path::Path, keys: &[(&str, &str)]) -> Content {
    let config = StoreConfig::new(dir, FsyncMode::Always);
    let deadline = Instant::now() + WITHIN;
    let store = loop {
        match Store::open(&config) {
            Ok(store) => break store,
            Err(e) => {
                assert!(Instant::now() < deadline, "{}: {e}", dir.display());
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    };
    let mut tasks = BTreeMap::new();
    store
        .recover(|id, state| {
            tasks.insert(id, (state, None, None));
        })
        .unwrap();
    for (id, (_, retained, body)) in tasks.iter_mut() {
        *retained = store.get_record(*id).unwrap().and_then(|r| r.retained);
        *body = store.get_body(*id).unwrap();
    }
    let queues = store
        .queues()
        .unwrap()
        .into_iter()
        .map(|(name, config)| (name.to_string(), config))
        .collect();
    let schedules = store.schedules().unwrap();
    let next_id = store.allocate_ids(0);
    // Each key tried by an insert through the store's own writer (no Raft here).
    let writer = store.start_writer::<Report>();
    let mut found = Vec::new();
    for (i, (queue, key)) in keys.iter().enumerate() {
        let (tx, rx) = std::sync::mpsc::channel();
        let task = NewTask {
            id: 1_000_000 + i as u64,
            state: TaskState {
                queue: std::sync::Arc::from(*queue),
                status: TaskStatus::Pending,
                priority: 0,
                attempts: 0,
                max_attempts: 0,
                lease_ms: 0,
                not_before_ms: 0,
                created_ms: 1,
                updated_ms: 1,
                last_error: None,
                expires_ms: 0,
            },
            body: TaskBody {
                idempotency_key: Some(key.to_string()),
                ..TaskBody::default()
            },
        };
        writer.handle().submit(
            Muts::One(Mutation::Insert(Box::new(task))),
            Some(Report(tx)),
        );
        let dups = rx.recv_timeout(WITHIN).expect("the probe job completes");
        found.push(dups.first().map(|d| d.original));
    }
    writer.shutdown().unwrap();
    Content {
        tasks,
        queues,
        schedules,
        next_id,
        keys: found,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wiped_follower_catches_up_by_snapshot_and_holds_exactly_what_the_others_hold() {
    let (_dirs, members) = members(NODES);
    let peers = peers_of(&members);
    let toml = format!("snapshot_logs = {SNAPSHOT_LOGS}\n");
    let start = |m: &Member| start_with(m, args_with(m, &peers, &toml, &[]));
    let mut brokers: Vec<_> = members.iter().map(|m| Some(start(m))).collect();
    let (client, leader_id) = client_of_leader(&members).await;
    let leader = &members[leader_id as usize - 1];
    let within = Duration::from_secs(10);

    // State of every kind, replicated before the follower is lost.
    client
        .set_queue_config("s-pending", QueueConfigUpdate::new().max_attempts(7))
        .await
        .unwrap();
    client
        .add_schedule(ScheduleSpec::new("s-nightly", "s-scheduled", "0 0 3 1 1 *"))
        .await
        .unwrap();
    for i in 0..40 {
        client
            .publish_with(
                "s-pending",
                format!("task {i}"),
                PublishOptions::new().header("n", i.to_string()),
            )
            .await
            .unwrap();
    }
    let Settled {
        keyed, dead, done, ..
    } = settled_state(&client, Duration::from_secs(3600), within).await;

    // A follower is lost with its disk; the cluster goes on and purges its log.
    let wiped = members
        .iter()
        .find(|m| m.id != leader_id)
        .expect("a follower");
    let other = members
        .iter()
        .find(|m| m.id != leader_id && m.id != wiped.id)
        .expect("another follower");
    let slot = wiped.id as usize - 1;
    brokers[slot].take().expect("it runs").kill9();
    std::fs::remove_dir_all(&wiped.dir).unwrap();
    std::fs::create_dir_all(&wiped.dir).unwrap();
    for i in 0..SNAPSHOT_LOGS * 2 {
        client
            .publish("s-pending", format!("while away {i}"))
            .await
            .unwrap();
    }
    let purged = purged_past(leader, 1).await;

    // Back, empty: entry 1 is gone from the leader's log, so it gets the snapshot.
    brokers[slot] = Some(start(wiped));
    let target = status(leader.cluster)
        .await
        .and_then(|s| s.last_log)
        .expect("the leader's log")
        .index;
    assert!(target > purged);
    let http = brokers[slot]
        .as_ref()
        .and_then(|b| b.http)
        .expect("HTTP port");
    let deadline = Instant::now() + WITHIN;
    let (installed, snapshot_bytes) = loop {
        let applied = status(wiped.cluster)
            .await
            .and_then(|s| s.applied)
            .map_or(0, |a| a.index);
        let (_, page) = common::http_get(http, "/metrics").await;
        let installed = sample(&page, "squall_cluster_snapshots_installed_total").unwrap_or(0.0);
        if applied >= target {
            break (installed, sample(&page, "squall_cluster_snapshot_bytes"));
        }
        assert!(Instant::now() < deadline, "applied {applied} of {target}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(
        installed >= 1.0,
        "the wiped follower caught up without installing a snapshot"
    );
    // Its size, which the next snapshot's trigger weighs (the file's size exactly:
    // `snapshot_tests.rs`; it may have built its own since).
    assert!(
        snapshot_bytes.is_some_and(|b| b > 0.0),
        "squall_cluster_snapshot_bytes: {snapshot_bytes:?}"
    );

    // Both followers restart (killed with -9) on logs purged behind their snapshots
    // (the other one's own, the wiped one's installed) and apply what follows.
    let other_purged = status(other.cluster)
        .await
        .and_then(|s| s.purged)
        .map_or(0, |p| p.index);
    assert!(other_purged > 0, "the other follower never purged its log");
    for m in [other, wiped] {
        let slot = m.id as usize - 1;
        brokers[slot].take().expect("running").kill9();
        brokers[slot] = Some(start(m));
    }
    client
        .publish("s-pending", "after the restarts")
        .await
        .unwrap();
    // The restarts may have brought an election: whoever leads now, every member
    // applies every entry any of them holds.
    let all: Vec<&Member> = members.iter().collect();
    let (leader_now, _) = agreed_leader(&all).await;
    let mut target = 0;
    for m in &members {
        let last = status(m.cluster).await.and_then(|s| s.last_log);
        target = target.max(last.map_or(0, |l| l.index));
    }
    for m in &members {
        applied_up_to(m, target).await;
    }

    // The followers are stopped first (the leader alone commits nothing more), each
    // gracefully: a follower holds back the last entries it applied for up to 50 ms
    // (`cluster/state.rs`, `Deferred`) and a kill would leave them to be applied
    // again at its restart, which this test does not do; its stop submits them to
    // its store. The leader is then killed: a graceful stop of a leader left without
    // followers waits out its grace periods. The wiped member's store is then the
    // other follower's.
    drop(client);
    for m in &members {
        if m.id != leader_now {
            let stopped = brokers[m.id as usize - 1]
                .take()
                .expect("running")
                .terminate_within(WITHIN);
            assert!(stopped.success(), "{stopped:?}");
        }
    }
    brokers[leader_now as usize - 1]
        .take()
        .expect("running")
        .kill9();
    let keys = [("s-keyed", "k-1"), ("s-pending", "k-unknown")];
    let expected = content(&other.dir, &keys);
    let got = content(&wiped.dir, &keys);
    assert_eq!(expected.keys, vec![Some(keyed), None]);
    assert_eq!(
        expected.tasks.len(),
        40 + 4 + SNAPSHOT_LOGS as usize * 2 + 1,
        "pending, delayed, keyed, dead, succeeded and the later ones"
    );
    let (state, retained, _) = &expected.tasks[&done];
    assert_eq!(state.status, TaskStatus::Succeeded);
    assert_eq!(retained.as_ref().unwrap().result, &b"the result"[..]);
    let (state, _, _) = &expected.tasks[&dead];
    assert_eq!(state.status, TaskStatus::Dead);
    assert_eq!(state.last_error.as_deref(), Some("poisoned on purpose"));
    assert_eq!(expected.schedules.len(), 1);
    assert!(expected
        .queues
        .iter()
        .any(|(q, c)| q == "s-pending" && c.max_attempts == 7));
    for (id, want) in &expected.tasks {
        assert_eq!(
            got.tasks.get(id),
            Some(want),
            "task {id} on the wiped member"
        );
    }
    assert_eq!(
        got.tasks.len(),
        expected.tasks.len(),
        "tasks on the wiped member"
    );
    assert_eq!(got.queues, expected.queues);
    assert_eq!(got.schedules, expected.schedules);
    assert_eq!(got.next_id, expected.next_id);
    assert_eq!(got.keys, expected.keys);
}

/// The log kept behind a snapshot is bounded in bytes, not only in entries: with
/// `snapshot_log_bytes` small and `snapshot_logs` large (openraft alone would keep
/// 10,000 entries behind each snapshot, here all of them), a few hundred kilobytes of
/// publishes get the leader's log purged past its first entries. (Negative control
/// run: the trigger not purging by size, the purge point never moves and the test
/// fails.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_log_behind_a_snapshot_is_bounded_in_bytes() {
    let (_dirs, members) = members(NODES);
    let peers = peers_of(&members);
    let toml = "snapshot_logs = 100000\nsnapshot_log_bytes = 65536\n";
    let _brokers: Vec<_> = members
        .iter()
        .map(|m| start_with(m, args_with(m, &peers, toml, &[])))
        .collect();
    let (client, leader_id) = client_of_leader(&members).await;
    let leader = &members[leader_id as usize - 1];
    let payload = "x".repeat(4096);
    for _ in 0..100 {
        client.publish("sized", payload.clone()).await.unwrap();
    }
    // 100 entries of ~4 KiB: snapshots every 64 KiB, and at most 64 KiB kept behind.
    let purged = purged_past(leader, 20).await;
    assert!(purged > 20, "{purged}");
    client.close().await;
}
