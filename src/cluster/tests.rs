//! Tests of the Raft log and state machine on disk: openraft's own storage test suite,
//! and what survives a reopen (the process killed between any two calls).

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use openraft::storage::{RaftLogReader, RaftLogStorage, RaftLogStorageExt, RaftStateMachine};
use openraft::testing::{StoreBuilder, Suite};
use openraft::{CommittedLeaderId, EntryPayload, RaftSnapshotBuilder};

use super::log::LogStore;
use super::replicate::{Applying, Pending, Signal};
use super::state::StateMachine;
use super::types::{
    Command, Entry, Job, LogId, Member, Membership, Origin, StorageError, TypeConfig, Vote,
};
use super::RAFT_DIR;
use crate::store::{Completion, FsyncMode, Store, StoreConfig, StoreError, Writer};

/// A completion that calls a function (what the broker's `Done::Applied` does).
pub(super) struct Tell(pub(super) Box<dyn FnOnce(Result<(), StoreError>) + Send>);

impl Completion for Tell {
    fn complete(self, result: Result<(), StoreError>) {
        (self.0)(result)
    }
}

impl Applying for Tell {
    fn applying(then: Option<Tell>, tell: Signal) -> Tell {
        Tell(Box::new(move |result: Result<(), StoreError>| {
            if let Some(then) = then {
                then.complete(result.clone());
            }
            tell.tell(result)
        }))
    }

    fn barrier(tell: Signal) -> Tell {
        Tell(Box::new(move |result| tell.tell(result)))
    }
}

pub(super) type Machine = StateMachine<Tell>;

/// This node's id and broker run in these tests.
pub(super) const NODE: u64 = 1;
pub(super) const RUN: u64 = 77;

/// A store in `dir`, its writer, and the state machine on them.
pub(super) fn open_machine(dir: &Path, pending: Pending<Tell>) -> (Store, Writer<Tell>, Machine) {
    // Reopened by some tests: retry the race with sled's lock release.
    let store = crate::store::tests::reopen(&StoreConfig::new(dir, FsyncMode::Always));
    let writer = store.start_writer::<Tell>();
    let sm = StateMachine::open(
        &dir.join(RAFT_DIR),
        &store,
        writer.handle(),
        pending,
        NODE,
        RUN,
    )
    .expect("state opens");
    (store, writer, sm)
}

pub(super) fn close(store: Store, writer: Writer<Tell>, sm: Machine) {
    drop(sm);
    writer.shutdown().expect("writer stops");
    drop(store);
}

struct Builder;

impl StoreBuilder<TypeConfig, LogStore, Machine, tempfile::TempDir> for Builder {
    async fn build(&self) -> Result<(tempfile::TempDir, LogStore, Machine), StorageError> {
        let dir = tempfile::tempdir().expect("temp dir");
        let log = LogStore::open(&dir.path().join(RAFT_DIR)).expect("log opens");
        // The writer is detached: its thread ends once the machine's handle is gone.
        let (_store, _writer, sm) = open_machine(dir.path(), Pending::default());
        Ok((dir, log, sm))
    }
}

type Storage = Suite<TypeConfig, LogStore, Machine, Builder, tempfile::TempDir>;

/// openraft's suite for storage implementations (`Suite::test_store`), every test of
/// it but one: log state, reads, truncation, purge, vote, membership from log and
/// state machine, initial state, apply, snapshot build, transfer and install.
///
/// Left out: `get_initial_state_membership_from_log_and_sm`. It applies entries 1..=2
/// to the state machine, lets openraft purge the empty log up to 2 (as it does when
/// the log is behind the state machine), then appends index 1 again: an append that
/// goes backwards over a purge, which openraft itself never makes and this log refuses
/// (`an_append_with_a_gap_is_refused`), where the suite's in-memory maps accept it.
#[test]
fn openraft_storage_suite_passes() {
    macro_rules! run {
        ($($test:ident),* $(,)?) => {$(
            let rt = tokio::runtime::Runtime::new().unwrap();
            rt.block_on(async {
                let (_dir, log, sm) = Builder.build().await.unwrap();
                Storage::$test(log, sm).await
            })
            .unwrap_or_else(|e| panic!("{}: {e}", stringify!($test)));
        )*};
    }
    run!(
        last_membership_in_log_initial,
        last_membership_in_log,
        last_membership_in_log_multi_step,
        get_membership_initial,
        get_membership_from_log_and_empty_sm,
        get_membership_from_empty_log_and_sm,
        get_membership_from_log_le_sm_last_applied,
        get_membership_from_log_gt_sm_last_applied_1,
        get_membership_from_log_gt_sm_last_applied_2,
        get_initial_state_without_init,
        get_initial_state_with_state,
        get_initial_state_last_log_gt_sm,
        get_initial_state_last_log_lt_sm,
        get_initial_state_log_ids,
        get_initial_state_re_apply_committed,
        save_vote,
        get_log_entries,
        limited_get_log_entries,
        try_get_log_entry,
        initial_logs,
        get_log_state,
        get_log_id,
        last_id_in_log,
        last_applied_state,
        purge_logs_upto_0,
        purge_logs_upto_5,
        purge_logs_upto_20,
        delete_logs_since_11,
        delete_logs_since_0,
        append_to_log,
        snapshot_meta,
        apply_single,
        apply_multiple,
    );
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(Storage::transfer_snapshot(&Builder))
        .expect("transfer_snapshot");
}

pub(super) fn log_id(term: u64, index: u64) -> LogId {
    LogId::new(CommittedLeaderId::new(term, 1), index)
}

pub(super) fn blank(term: u64, index: u64) -> Entry {
    Entry {
        log_id: log_id(term, index),
        payload: EntryPayload::Blank,
    }
}

pub(super) fn members() -> Membership {
    let nodes: BTreeMap<u64, Member> = (1..=3)
        .map(|i| {
            let m = Member {
                client_addr: format!("127.0.0.1:{}", 7600 + i),
                cluster_addr: format!("127.0.0.1:{}", 7700 + i),
            };
            (i, m)
        })
        .collect();
    Membership::new(vec![nodes.keys().copied().collect()], nodes)
}

async fn indexes(log: &mut LogStore) -> Vec<u64> {
    let state = log.get_log_state().await.unwrap();
    let first = state.last_purged_log_id.map_or(0, |p| p.index + 1);
    let entries = log.try_get_log_entries(first..).await.unwrap();
    entries.iter().map(|e| e.log_id.index).collect()
}

/// Segments a purge takes away are recycled (kept as spares, written into again):
/// the entries after the purge point, and only they, come back after a reopen, and a
/// reader made before the purge sees purged entries as purged.
#[tokio::test]
async fn a_log_whose_purged_segments_are_recycled_reopens_as_confirmed() {
    let dir = tempfile::tempdir().unwrap();
    let segments = dir.path().join("log");
    let files = |ext: &str| {
        std::fs::read_dir(&segments)
            .unwrap()
            .filter(|e| e.as_ref().unwrap().path().extension() == Some(ext.as_ref()))
            .count()
    };
    let mut log = LogStore::open_with_segments(dir.path(), 1024).unwrap();
    // Indexes from 1000 on all take two bytes: every entry is the same size, so the
    // old entries a spare still holds lie exactly where new ones go.
    log.purge(log_id(1, 999)).await.unwrap();
    log.blocking_append((1000..1200).map(|i| blank(1, i)))
        .await
        .unwrap();
    assert!(files("log") > 4, "many 1 KiB segments");
    let mut reader = log.get_log_reader().await;
    log.purge(log_id(1, 1149)).await.unwrap();
    assert_eq!(files("spare"), 2, "two purged segments kept as spares");
    let got = reader.try_get_log_entries(1100..1160).await.unwrap();
    let ids: Vec<u64> = got.iter().map(|e| e.log_id.index).collect();
    assert_eq!(
        ids,
        (1150..1160).collect::<Vec<_>>(),
        "purged entries are skipped"
    );
    // The next segment is a spare, written over: a few entries into it, its old
    // entries lie right behind them.
    let mut next = 1200;
    while files("spare") == 2 {
        log.blocking_append([blank(1, next)]).await.unwrap();
        next += 1;
    }
    log.blocking_append((next..next + 3).map(|i| blank(1, i)))
        .await
        .unwrap();
    let last = next + 2;
    drop(reader);
    drop(log);
    let mut log = LogStore::open_with_segments(dir.path(), 1024).unwrap();
    assert_eq!(indexes(&mut log).await, (1150..=last).collect::<Vec<_>>());
    let state = log.get_log_state().await.unwrap();
    assert_eq!(state.last_purged_log_id, Some(log_id(1, 1149)));
    assert_eq!(state.last_log_id, Some(log_id(1, last)));
}

/// Each step is followed by a reopen, as if the process had been killed there: the
/// vote, the entries, a truncated suffix and a purge are what was last confirmed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_log_is_what_was_confirmed_after_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = LogStore::open(dir.path()).unwrap();
    let mut entries = vec![Entry {
        log_id: log_id(1, 0),
        payload: EntryPayload::Membership(members()),
    }];
    entries.extend((1..=50).map(|i| blank(1, i)));
    log.blocking_append(entries).await.unwrap();
    log.save_vote(&Vote::new_committed(1, 1)).await.unwrap();
    drop(log);

    let mut log = LogStore::open(dir.path()).unwrap();
    assert_eq!(
        log.read_vote().await.unwrap(),
        Some(Vote::new_committed(1, 1))
    );
    assert_eq!(indexes(&mut log).await, (0..=50).collect::<Vec<_>>());
    let state = log.get_log_state().await.unwrap();
    assert_eq!(state.last_log_id, Some(log_id(1, 50)));
    let first = log.try_get_log_entries(0..1).await.unwrap();
    assert_eq!(first[0].payload, EntryPayload::Membership(members()));

    // A new leader of term 2 overwrites 31..: truncate, then append.
    log.truncate(log_id(1, 31)).await.unwrap();
    log.save_vote(&Vote::new(2, 2)).await.unwrap();
    log.blocking_append((31..=40).map(|i| blank(2, i)))
        .await
        .unwrap();
    drop(log);

    let mut log = LogStore::open(dir.path()).unwrap();
    assert_eq!(log.read_vote().await.unwrap(), Some(Vote::new(2, 2)));
    let got = log.try_get_log_entries(29..).await.unwrap();
    let ids: Vec<LogId> = got.iter().map(|e| e.log_id).collect();
    let mut want = vec![log_id(1, 29), log_id(1, 30)];
    want.extend((31..=40).map(|i| log_id(2, i)));
    assert_eq!(ids, want, "the old term's suffix is gone for good");

    // Purge behind a snapshot; then past the end (a snapshot installed from a leader).
    log.purge(log_id(1, 20)).await.unwrap();
    drop(log);
    let mut log = LogStore::open(dir.path()).unwrap();
    let state = log.get_log_state().await.unwrap();
    assert_eq!(state.last_purged_log_id, Some(log_id(1, 20)));
    assert_eq!(indexes(&mut log).await, (21..=40).collect::<Vec<_>>());
    log.purge(log_id(3, 100)).await.unwrap();
    log.blocking_append([blank(3, 101)]).await.unwrap();
    drop(log);
    let mut log = LogStore::open(dir.path()).unwrap();
    let state = log.get_log_state().await.unwrap();
    assert_eq!(state.last_purged_log_id, Some(log_id(3, 100)));
    assert_eq!(state.last_log_id, Some(log_id(3, 101)));
    assert_eq!(indexes(&mut log).await, vec![101]);
}

/// A fresh log holding a blank entry 0, and forty one-insert entries of term 1 (1 to
/// 40, all of one size) to append.
async fn a_log_and_forty_entries() -> (tempfile::TempDir, LogStore, Vec<Entry>) {
    let dir = tempfile::tempdir().unwrap();
    let mut log = LogStore::open(dir.path()).unwrap();
    let origin = Origin {
        node: 1,
        run: 1,
        seq: 1,
    };
    let entries: Vec<Entry> = (1..=40)
        .map(|i| command(origin, vec![insert(i, "q")], 1, i))
        .collect();
    log.blocking_append([blank(1, 0)]).await.unwrap();
    (dir, log, entries)
}

/// The entries the log keeps in memory (and their encodings, for the cluster port)
/// are what the disk holds, through truncation and purge; an offered encoding is
/// what gets written, and offers are withdrawn with their guard.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entries_in_memory_agree_with_the_disk() {
    let (dir, mut log, entries) = a_log_and_forty_entries().await;
    let encoded = log.encoded();
    // A follower's append: entry 1's encoding offered as it came off the wire.
    let wire = super::codec::entry_bytes(&entries[0]);
    let offered = encoded.offer(vec![(entries[0].log_id, wire.clone())]);
    log.blocking_append(entries.clone()).await.unwrap();
    drop(offered);
    assert_eq!(encoded.get(&log_id(1, 1)), Some(wire));
    assert_eq!(encoded.get(&log_id(2, 1)), None, "another term's entry 1");
    for e in &entries {
        assert_eq!(encoded.get(&e.log_id), Some(super::codec::entry_bytes(e)));
    }
    // What the snapshot trigger reads: each entry's record (its bytes and a header).
    let one = encoded.bytes_between(1, 1);
    assert!(one > super::codec::entry_bytes(&entries[0]).len() as u64);
    assert_eq!(
        encoded.bytes_between(1, 40),
        40 * one,
        "entries of one size"
    );
    assert_eq!(encoded.bytes_between(41, 90), 0, "not in the log");
    assert_eq!(encoded.bytes_between(5, 4), 0);
    // A new leader's suffix replaces 31..; then a purge behind a snapshot.
    log.truncate(log_id(1, 31)).await.unwrap();
    assert_eq!(encoded.get(&log_id(1, 31)), None, "truncated");
    log.blocking_append((31..=35).map(|i| blank(2, i)))
        .await
        .unwrap();
    log.purge(log_id(1, 10)).await.unwrap();
    assert_eq!(encoded.get(&log_id(1, 10)), None, "purged");
    assert_eq!(
        encoded.bytes_between(0, 10),
        0,
        "purged entries count nothing"
    );
    let in_memory = log.try_get_log_entries(0..).await.unwrap();
    assert_eq!(in_memory.first().map(|e| e.log_id), Some(log_id(1, 11)));
    assert_eq!(in_memory.last().map(|e| e.log_id), Some(log_id(2, 35)));
    drop(log);
    let mut log = LogStore::open(dir.path()).unwrap();
    let on_disk = log.try_get_log_entries(0..).await.unwrap();
    assert_eq!(in_memory, on_disk);
}

/// An append that would leave a hole is refused and changes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_append_with_a_gap_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = LogStore::open(dir.path()).unwrap();
    log.blocking_append([blank(1, 0), blank(1, 1)])
        .await
        .unwrap();
    assert!(log.blocking_append([blank(1, 3)]).await.is_err());
    drop(log);
    let mut log = LogStore::open(dir.path()).unwrap();
    assert_eq!(indexes(&mut log).await, vec![0, 1]);
}

/// The state machine's membership and applied id survive a reopen, and a snapshot
/// built on one node installs on another (here without queue commands; with them:
/// `snapshot_tests.rs`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn applied_membership_survives_a_reopen_and_travels_in_a_snapshot() {
    let a = tempfile::tempdir().unwrap();
    let (store, writer, mut sm) = open_machine(a.path(), Pending::default());
    let entry = Entry {
        log_id: log_id(1, 0),
        payload: EntryPayload::Membership(members()),
    };
    sm.apply([entry, blank(1, 1)]).await.unwrap();
    close(store, writer, sm);
    let (store, writer, mut sm) = open_machine(a.path(), Pending::default());
    let (applied, membership) = sm.applied_state().await.unwrap();
    assert_eq!(applied, Some(log_id(1, 1)));
    assert_eq!(membership.membership(), &members());
    let snapshot = sm
        .get_snapshot_builder()
        .await
        .build_snapshot()
        .await
        .unwrap();

    let b = tempfile::tempdir().unwrap();
    let (other_store, other_writer, mut other) = open_machine(b.path(), Pending::default());
    let (meta, receiving) = receive(&mut other, snapshot).await;
    other.install_snapshot(&meta, receiving).await.unwrap();
    close(other_store, other_writer, other);
    let (other_store, other_writer, mut other) = open_machine(b.path(), Pending::default());
    assert_eq!(other.applied_state().await.unwrap().0, Some(log_id(1, 1)));
    let current = other.get_current_snapshot().await.unwrap().unwrap();
    assert_eq!(current.meta, meta);
    close(other_store, other_writer, other);
    close(store, writer, sm);
}

/// `snapshot` as a member receives it from the leader: copied into the file `to`
/// gives for it, not installed yet.
pub(super) async fn receive(
    to: &mut Machine,
    snapshot: openraft::storage::Snapshot<TypeConfig>,
) -> (openraft::SnapshotMeta<u64, Member>, Box<tokio::fs::File>) {
    let mut receiving = to.begin_receiving_snapshot().await.unwrap();
    let mut data = snapshot.snapshot;
    tokio::io::copy(&mut data, &mut receiving).await.unwrap();
    (snapshot.meta, receiving)
}

pub(super) fn insert(id: u64, queue: &str) -> crate::model::Mutation {
    use crate::model::{NewTask, TaskBody, TaskState, TaskStatus};
    crate::model::Mutation::Insert(Box::new(NewTask {
        id,
        state: TaskState {
            queue: Arc::from(queue),
            status: TaskStatus::Pending,
            priority: 0,
            attempts: 0,
            max_attempts: 0,
            lease_ms: 0,
            not_before_ms: 0,
            created_ms: 1_000,
            updated_ms: 1_000,
            last_error: None,
            expires_ms: 0,
        },
        body: TaskBody {
            created_ms: 1_000,
            payload: bytes::Bytes::from_static(b"replicated"),
            ..TaskBody::default()
        },
    }))
}

pub(super) fn command(
    origin: Origin,
    muts: Vec<crate::model::Mutation>,
    term: u64,
    index: u64,
) -> Entry {
    Entry {
        log_id: log_id(term, index),
        payload: EntryPayload::Normal(Command::Jobs(vec![Job::new(origin, muts.into())].into())),
    }
}

/// Committed commands reach the store with the id of the entry that carried them, in
/// one batch each; the proposer's completion runs only once its entry is applied
/// (another run's proposal with the same number completes nothing); after a reopen
/// the state machine reports the last applied entry, from the store.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn committed_commands_are_applied_to_the_store_and_recorded_with_their_log_id() {
    let dir = tempfile::tempdir().unwrap();
    let pending: Pending<Tell> = Pending::default();
    let (store, writer, mut sm) = open_machine(dir.path(), pending.clone());
    let (tx, rx) = std::sync::mpsc::channel();
    pending.lock().insert(
        5,
        Tell(Box::new(move |r: Result<(), StoreError>| {
            tx.send(r.is_ok()).unwrap();
        })),
    );
    let other_run = Origin {
        node: NODE,
        run: RUN + 1,
        seq: 5,
    };
    let mine = Origin {
        node: NODE,
        run: RUN,
        seq: 5,
    };
    let membership = Entry {
        log_id: log_id(1, 0),
        payload: EntryPayload::Membership(members()),
    };
    sm.apply([
        membership,
        command(other_run, vec![insert(10, "a")], 1, 1),
        blank(2, 2),
    ])
    .await
    .unwrap();
    assert!(
        rx.try_recv().is_err(),
        "another run's proposal completed a job of this run"
    );
    assert_eq!(pending.lock().len(), 1);
    assert!(
        store.get_state(10).unwrap().is_some(),
        "the insert was applied"
    );
    assert_eq!(
        store.raft_applied().unwrap(),
        Some((1, 1, 1)),
        "the store records the last command"
    );
    assert_eq!(sm.applied_state().await.unwrap().0, Some(log_id(2, 2)));

    sm.apply([command(mine, vec![insert(11, "a"), insert(12, "b")], 2, 3)])
        .await
        .unwrap();
    assert_eq!(
        rx.try_recv(),
        Ok(true),
        "the proposer's job completed once applied"
    );
    assert!(pending.lock().is_empty());
    assert_eq!(store.raft_applied().unwrap(), Some((2, 1, 3)));
    close(store, writer, sm);

    let (store, writer, mut sm) = open_machine(dir.path(), Pending::default());
    let (applied, membership) = sm.applied_state().await.unwrap();
    assert_eq!(applied, Some(log_id(2, 3)));
    assert_eq!(membership.membership(), &members());
    for id in [10, 11, 12] {
        assert!(
            store.get_state(id).unwrap().is_some(),
            "task {id} survived the reopen"
        );
    }
    close(store, writer, sm);
}

/// The cluster's id is set by the first `ClusterId` applied; a later one (another
/// leader's, in a race) leaves it as it was, also when both are in one batch; it
/// survives a reopen.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_first_cluster_id_applied_stays() {
    use crate::model::Mutation::ClusterId;
    let dir = tempfile::tempdir().unwrap();
    let (store, writer, mut sm) = open_machine(dir.path(), Pending::default());
    assert_eq!(store.cluster_id().unwrap(), None);
    let origin = Origin {
        node: NODE,
        run: RUN,
        seq: 1,
    };
    let first = vec![
        ClusterId(Arc::from("first")),
        ClusterId(Arc::from("same-batch")),
    ];
    sm.apply([command(origin, first, 1, 1)]).await.unwrap();
    assert_eq!(store.cluster_id().unwrap().as_deref(), Some("first"));
    sm.apply([command(origin, vec![ClusterId(Arc::from("later"))], 2, 2)])
        .await
        .unwrap();
    assert_eq!(store.cluster_id().unwrap().as_deref(), Some("first"));
    close(store, writer, sm);
    let (store, writer, sm) = open_machine(dir.path(), Pending::default());
    assert_eq!(store.cluster_id().unwrap().as_deref(), Some("first"));
    close(store, writer, sm);
}

/// The latch an `apply` waits on: it opens only once every job and the waiter itself
/// let go, in whatever order, and keeps the first failure reported (jobs complete in
/// submission order), so a failed job stops the node with its own entry's id.
#[tokio::test]
async fn the_apply_latch_opens_after_every_job_and_keeps_the_first_failure() {
    use super::replicate::Latch;
    let (latch, mut all_done) = Latch::new();
    let jobs = [log_id(1, 5), log_id(1, 6), log_id(1, 7)].map(|id| latch.expect(id));
    let [first, second, third] = jobs;
    first.tell(Ok(()));
    second.tell(Err(StoreError::Closed));
    assert!(
        all_done.try_recv().is_err(),
        "a job and the waiter are still out"
    );
    latch.release();
    assert!(all_done.try_recv().is_err(), "the third job is still out");
    third.tell(Err(StoreError::Unavailable(Arc::from("disk full"))));
    all_done.await.expect("opened");
    let (at, error) = latch.failure().expect("a job failed");
    assert_eq!(at, log_id(1, 6), "the first failure is kept");
    assert!(matches!(error, StoreError::Closed), "{error:?}");

    // No failure: nothing to report.
    let (latch, all_done) = Latch::new();
    latch.expect(log_id(2, 1)).tell(Ok(()));
    latch.release();
    all_done.await.expect("opened");
    assert!(latch.failure().is_none());
}

/// A proposal that fails because this node stopped leading says its outcome is
/// unknown and names the new leader the way a client follows (" at ADDR"), instead of
/// quoting openraft's error.
#[test]
fn a_lost_leadership_names_the_new_leader_for_the_clients() {
    use openraft::error::{ClientWriteError, ForwardToLeader};
    let lost = |leader_id, leader_node| {
        super::replicate::leadership_lost(&ClientWriteError::ForwardToLeader(ForwardToLeader {
            leader_id,
            leader_node,
        }))
    };
    let member = Member {
        client_addr: "127.0.0.1:7603".into(),
        cluster_addr: "127.0.0.1:7703".into(),
    };
    let named = lost(Some(3), Some(member));
    assert!(named.contains("its outcome is unknown"), "{named}");
    assert!(
        named.ends_with("the leader is node 3 at 127.0.0.1:7603"),
        "{named}"
    );
    let unknown = lost(None, None);
    assert!(
        unknown.contains("its outcome is unknown") && !unknown.contains(" at "),
        "{unknown}"
    );
    assert!(!unknown.contains("forward"), "{unknown}");
}

/// Where the snapshot trigger purges the log by size: behind the snapshot's index, the
/// entries kept take at most the bound; nothing when they already do; entries after
/// the snapshot never count.
#[tokio::test]
async fn the_log_is_purged_behind_a_snapshot_down_to_a_size() {
    let (_dir, mut log, entries) = a_log_and_forty_entries().await;
    let encoded = log.encoded();
    log.blocking_append(entries).await.unwrap();
    let one = encoded.bytes_between(1, 1);
    assert_eq!(
        encoded.bytes_between(1, 40),
        40 * one,
        "entries of one size"
    );
    let blank_bytes = encoded.bytes_between(0, 0);
    let all = 40 * one + blank_bytes;
    // Snapshot at 40: keep 10 entries' worth, purge up to 30.
    assert_eq!(encoded.purge_point(40, 10 * one), Some(30));
    assert_eq!(encoded.purge_point(40, 10 * one + one - 1), Some(30));
    assert_eq!(encoded.purge_point(40, all), None, "within the bound");
    // Snapshot at 20: the entries after it are not counted.
    assert_eq!(encoded.purge_point(20, 5 * one), Some(15));
    assert_eq!(encoded.purge_point(20, 20 * one + blank_bytes), None);
    // Past the log's end, or behind its start, nothing to purge.
    assert_eq!(encoded.purge_point(90, all), None);
    log.purge(log_id(1, 10)).await.unwrap();
    assert_eq!(encoded.purge_point(40, 30 * one), None, "what is left fits");
    assert_eq!(encoded.purge_point(40, 29 * one), Some(11));
}

/// What a node that is not the leader tells a client: before the cluster formed (no
/// members at all) that no leader is known; once it has members but not this node,
/// that it is not a member, listing them without " at " (which clients follow).
#[test]
fn a_refusal_says_why_this_node_does_not_serve() {
    use super::replicate::not_leader;
    let mut metrics = openraft::RaftMetrics::<u64, Member>::new_initial(4);
    let unformed = not_leader(&metrics);
    assert!(unformed.contains("knows no leader"), "{unformed}");
    let member = |port: u16| Member {
        client_addr: format!("127.0.0.1:{port}"),
        cluster_addr: format!("127.0.0.1:{}", port + 100),
    };
    let nodes: std::collections::BTreeMap<u64, Member> =
        [(1, member(7601)), (2, member(7602))].into_iter().collect();
    let voters: std::collections::BTreeSet<u64> = [1, 2].into_iter().collect();
    let membership = Membership::new(vec![voters], nodes);
    metrics.membership_config = Arc::new(super::types::StoredMembership::new(
        Some(log_id(1, 1)),
        membership,
    ));
    metrics.current_leader = Some(1);
    let outside = not_leader(&metrics);
    assert!(
        outside.contains("node 4 is not a member of the cluster")
            && outside.contains("node 1 (127.0.0.1:7601)")
            && !outside.contains(" at "),
        "{outside}"
    );
}

/// The commit index openraft reports to the log is what status and `/metrics` read
/// (`heard.rs`), kept in memory only: a reopened log has been told nothing, and
/// `read_committed` says nothing was saved (so openraft re-applies nothing on its
/// word). Negative control run: without `save_committed` it fails.
#[tokio::test]
async fn the_commit_index_is_told_to_the_log_and_not_saved() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = LogStore::open(dir.path()).unwrap();
    log.blocking_append((0..=5).map(|i| blank(1, i)))
        .await
        .unwrap();
    assert_eq!(log.heard().commit_index(None), None);
    log.save_committed(Some(log_id(1, 4))).await.unwrap();
    assert_eq!(log.heard().commit_index(None), Some(4));
    assert_eq!(log.heard().commit_index(Some(2)), Some(4));
    assert_eq!(log.read_committed().await.unwrap(), None);
    drop(log);
    let log = LogStore::open(dir.path()).unwrap();
    assert_eq!(log.heard().commit_index(Some(3)), Some(3));
}

/// [`open_machine`] with the store as `Node::start` and a member that follows leave it
/// (replicated, its body cache off).
fn open_following(dir: &Path) -> (Store, Writer<Tell>, Machine) {
    let (store, writer, sm) = open_machine(dir, Pending::default());
    store.set_replicated();
    store.set_caching_bodies(false);
    (store, writer, sm)
}

/// A member holds another leader's committed entries back and submits them as one
/// store group, where a task published and acked within it is written neither time.
/// They reach the store once `DEFER_FOR` has passed (the timer, with no apply since),
/// before an entry of this node's own (it leads now), and before a snapshot build;
/// held ones that a kill loses are not reported applied at the next start (openraft
/// applies them again from the log).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_leaders_entries_are_held_back_then_applied_as_one_group() {
    use super::state::{run_deferred, DEFER_FOR};
    use crate::model::Mutation::Remove;
    let dir = tempfile::tempdir().unwrap();
    let (store, writer, mut sm) = open_following(dir.path());
    let theirs = |term, index| LogId::new(CommittedLeaderId::new(term, NODE + 1), index);
    let entry = |muts: Vec<crate::model::Mutation>, log_id: LogId| Entry {
        log_id,
        payload: EntryPayload::Normal(Command::Jobs(
            vec![Job::new(
                Origin {
                    node: log_id.leader_id.node_id,
                    run: 1,
                    seq: log_id.index,
                },
                muts.into(),
            )]
            .into(),
        )),
    };
    let held = std::time::Instant::now();
    sm.apply([
        entry(vec![insert(10, "a"), insert(11, "a")], theirs(1, 1)),
        entry(vec![Remove { id: 10 }], theirs(1, 2)),
    ])
    .await
    .unwrap();
    assert_eq!(sm.applied_state().await.unwrap().0, Some(theirs(1, 2)));
    assert!(store.get_state(11).unwrap().is_none(), "held back");

    // The timer submits them once they are DEFER_FOR old.
    let stop = tokio_util::sync::CancellationToken::new();
    let timer = tokio::spawn(run_deferred(sm.deferred(), stop.clone()));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while store.get_state(11).unwrap().is_none() {
        assert!(std::time::Instant::now() < deadline, "never submitted");
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    assert!(held.elapsed() >= DEFER_FOR, "held for DEFER_FOR");
    assert!(store.get_state(10).unwrap().is_none());
    assert_eq!(
        writer
            .stats()
            .netted
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );
    assert_eq!(store.raft_applied().unwrap(), Some((1, NODE + 1, 2)));

    // An entry of its own: what is held goes first, then it, before apply returns.
    sm.apply([entry(vec![insert(12, "a")], theirs(1, 3))])
        .await
        .unwrap();
    assert!(store.get_state(12).unwrap().is_none(), "held back");
    let mine = Origin {
        node: NODE,
        run: RUN,
        seq: 1,
    };
    sm.apply([command(mine, vec![insert(13, "a")], 2, 4)])
        .await
        .unwrap();
    for id in [12, 13] {
        assert!(store.get_state(id).unwrap().is_some(), "task {id}");
    }
    assert_eq!(store.raft_applied().unwrap(), Some((2, NODE, 4)));

    // A snapshot build: the dump holds what was held.
    sm.apply([entry(vec![insert(14, "a")], theirs(3, 5))])
        .await
        .unwrap();
    let mut builder = sm.get_snapshot_builder().await;
    assert!(
        store.get_state(14).unwrap().is_some(),
        "submitted for the dump"
    );
    let snapshot = builder.build_snapshot().await.unwrap();
    assert_eq!(snapshot.meta.last_log_id, Some(theirs(3, 5)));
    stop.cancel();
    timer.await.unwrap();

    // Held when the process dies: not in the store, not reported applied.
    sm.apply([entry(vec![insert(15, "a")], theirs(3, 6))])
        .await
        .unwrap();
    close(store, writer, sm);
    let (store, writer, mut sm) = open_machine(dir.path(), Pending::default());
    assert_eq!(sm.applied_state().await.unwrap().0, Some(theirs(3, 5)));
    assert!(store.get_state(15).unwrap().is_none());
    close(store, writer, sm);
}

/// A held-back entry that the store refuses when the timer submits it fails the next
/// `apply` that submits anything (here an entry of this node's own, after which a new
/// leader would rebuild its engine from the store), even when the timer task has not
/// looked at the outcome yet: a member never goes on as if it held that entry.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_held_back_entry_the_store_refuses_fails_the_next_apply() {
    let dir = tempfile::tempdir().unwrap();
    let (store, writer, mut sm) = open_following(dir.path());
    store.corrupt_state(40);
    let theirs = LogId::new(CommittedLeaderId::new(1, NODE + 1), 1);
    let patch = crate::model::Mutation::Patch {
        id: 40,
        patch: crate::model::StatePatch::default(),
    };
    sm.apply([Entry {
        log_id: theirs,
        payload: EntryPayload::Normal(Command::Jobs(
            vec![Job::new(
                Origin {
                    node: NODE + 1,
                    run: 1,
                    seq: 1,
                },
                vec![patch].into(),
            )]
            .into(),
        )),
    }])
    .await
    .unwrap();
    // What the timer does, stopped right after it submitted (it never looks).
    let mut submitted = None;
    assert!(sm.deferred().flush_as(&mut submitted, true));
    let (latch, _never_awaited) = submitted.expect("the held entry was submitted");
    latch.release();
    let mine = Origin {
        node: NODE,
        run: RUN,
        seq: 1,
    };
    let refused = sm.apply([command(mine, vec![insert(41, "a")], 2, 2)]).await;
    assert!(refused.is_err(), "{refused:?}");
    close(store, writer, sm);
}
