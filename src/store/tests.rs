//! Tests of the store through its public API: the group-commit writer, patch
//! semantics within a batch, the id watermark, shutdown, and a model test with
//! restarts against a `BTreeMap`. Record encoding has its own tests in `record.rs`.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use crossbeam_channel::{Receiver, Sender};
use tempfile::TempDir;

use super::*;
use crate::model::{Mutation, NewTask, QueueConfig, StatePatch, TaskStatus};

/// Sends the job's outcome, tagged, to a channel.
pub(super) struct Tx<T: Send + 'static>(
    pub(super) Sender<(T, Result<(), StoreError>)>,
    pub(super) T,
);

impl<T: Send + 'static> Completion for Tx<T> {
    fn complete(self, result: Result<(), StoreError>) {
        let _ = self.0.send((self.1, result));
    }
}

/// Blocks the writer thread inside its completion until released: jobs submitted
/// meanwhile all queue up and land in the next batch together.
pub(super) struct Gate {
    entered: Sender<()>,
    release: Receiver<()>,
}

pub(super) enum TestDone {
    Tx(Tx<u64>),
    Gate(Gate),
    /// A job durable elsewhere (a committed Raft entry's): sends the number of
    /// journal syncs done when it completes, read on the writer thread.
    Elsewhere(Sender<u64>, Arc<WriterStats>),
}

impl Completion for TestDone {
    fn complete(self, result: Result<(), StoreError>) {
        match self {
            TestDone::Tx(tx) => tx.complete(result),
            TestDone::Gate(gate) => {
                assert!(result.is_ok());
                let _ = gate.entered.send(());
                let _ = gate.release.recv();
            }
            TestDone::Elsewhere(tx, stats) => {
                assert!(result.is_ok());
                let _ = tx.send(stats.flushes.load(Relaxed));
            }
        }
    }

    fn durable_elsewhere(&self) -> bool {
        matches!(self, TestDone::Elsewhere(..))
    }
}

pub(super) fn config(dir: &TempDir, fsync: FsyncMode) -> StoreConfig {
    StoreConfig {
        path: dir.path().join("data"),
        fsync,
        cache_bytes: 16 << 20,
        journal_segment_bytes: crate::store::DEFAULT_JOURNAL_SEGMENT_BYTES,
    }
}

/// Opens `config` again after a store on it was dropped, retrying for a while: sled
/// releases its directory lock from a background thread a moment after the last
/// handle goes, and a process that a parallel test forks can hold a copy of the lock
/// file's descriptor until it execs (`InUse`).
pub(crate) fn reopen(config: &StoreConfig) -> Store {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        match Store::open(config) {
            Ok(store) => return store,
            Err(StoreError::DataDir {
                problem: DataDirProblem::InUse,
                ..
            }) if std::time::Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(StoreError::Io(e))
                if e.kind() == std::io::ErrorKind::WouldBlock
                    && std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => panic!("reopen the store: {e}"),
        }
    }
}

/// Opens the store in `dir`; many tests open it again after dropping it, so this
/// retries the race with sled's lock release (`reopen`).
pub(super) fn open(dir: &TempDir, fsync: FsyncMode) -> Store {
    reopen(&config(dir, fsync))
}

pub(super) fn state(queue: &str, created_ms: u64) -> TaskState {
    TaskState {
        queue: Arc::from(queue),
        status: TaskStatus::Pending,
        priority: 0,
        attempts: 0,
        max_attempts: 0,
        lease_ms: 0,
        not_before_ms: 0,
        created_ms,
        updated_ms: created_ms,
        last_error: None,
        expires_ms: 0,
    }
}

pub(super) fn body(payload: &[u8]) -> TaskBody {
    TaskBody {
        created_ms: 1_000,
        payload: Bytes::copy_from_slice(payload),
        headers: vec![("h".into(), Bytes::from_static(b"v"))],
        idempotency_key: None,
    }
}

pub(super) fn insert(id: TaskId, queue: &str) -> Mutation {
    Mutation::Insert(Box::new(NewTask {
        id,
        state: state(queue, 1_000),
        body: body(format!("payload {id}").as_bytes()),
    }))
}

pub(super) fn patch(id: TaskId, patch: StatePatch) -> Mutation {
    Mutation::Patch { id, patch }
}

/// Submits one job and waits for its outcome.
pub(super) fn commit(writer: &WriterHandle<TestDone>, muts: Muts) -> Result<(), StoreError> {
    let (tx, rx) = crossbeam_channel::bounded(1);
    writer.submit(muts, Some(TestDone::Tx(Tx(tx, 0))));
    rx.recv_timeout(Duration::from_secs(10))
        .expect("completion")
        .1
}

/// Holds the writer inside a completion; returns the key to let it go.
pub(super) fn hold_writer(writer: &WriterHandle<TestDone>) -> Sender<()> {
    let (entered_tx, entered_rx) = crossbeam_channel::bounded(1);
    let (release_tx, release_rx) = crossbeam_channel::bounded(1);
    let gate = Gate {
        entered: entered_tx,
        release: release_rx,
    };
    let name = Arc::from("gate");
    let muts = Muts::One(Mutation::PutQueue {
        name,
        config: QueueConfig::default(),
    });
    writer.submit(muts, Some(TestDone::Gate(gate)));
    entered_rx
        .recv_timeout(Duration::from_secs(10))
        .expect("gate entered");
    release_tx
}

#[test]
fn handles_are_shareable_across_threads() {
    fn shareable<T: Send + Sync>() {}
    shareable::<Store>();
    shareable::<WriterHandle<TestDone>>();
    shareable::<Writer<TestDone>>();
}

#[test]
fn group_commit_flushes_far_less_than_once_per_job() {
    const THREADS: u64 = 8;
    const PER_THREAD: u64 = 100;
    let dir = TempDir::new().unwrap();
    let store = open(&dir, FsyncMode::Always);
    let writer = store.start_writer::<Tx<u64>>();
    let first = store.allocate_ids(THREADS * PER_THREAD);

    let threads: Vec<_> = (0..THREADS)
        .map(|t| {
            let handle = writer.handle();
            std::thread::spawn(move || {
                let (tx, rx) = crossbeam_channel::unbounded();
                for i in 0..PER_THREAD {
                    let id = first + t * PER_THREAD + i;
                    handle.submit(Muts::One(insert(id, "q")), Some(Tx(tx.clone(), id)));
                }
                // Completions arrive in submission order, all Ok.
                for i in 0..PER_THREAD {
                    let (id, result) = rx.recv_timeout(Duration::from_secs(10)).unwrap();
                    assert_eq!(id, first + t * PER_THREAD + i);
                    result.unwrap();
                }
            })
        })
        .collect();
    for thread in threads {
        thread.join().unwrap();
    }

    let stats = writer.stats();
    let (jobs, flushes) = (stats.jobs.load(Relaxed), stats.flushes.load(Relaxed));
    assert_eq!(jobs, THREADS * PER_THREAD);
    assert_eq!(stats.mutations.load(Relaxed), THREADS * PER_THREAD);
    assert!(flushes < jobs, "{flushes} flushes for {jobs} jobs");
    assert!(stats.batches.load(Relaxed) <= flushes);
    writer.shutdown().unwrap();

    let mut recovered = 0;
    store.recover(|_, _| recovered += 1).unwrap();
    assert_eq!(recovered, THREADS * PER_THREAD);
}

/// An `always` store whose writer is held inside a completion (`release` lets it
/// go, and the jobs queued meanwhile are gathered), with its group count when held.
struct Held {
    _dir: TempDir,
    store: Store,
    writer: Writer<TestDone>,
    release: Sender<()>,
    before: u64,
}

fn held_writer() -> Held {
    let dir = TempDir::new().unwrap();
    let store = open(&dir, FsyncMode::Always);
    let writer = store.start_writer::<TestDone>();
    let release = hold_writer(&writer.handle());
    let before = writer.stats().batches.load(Relaxed);
    Held {
        _dir: dir,
        store,
        writer,
        release,
        before,
    }
}

/// Large payloads close a group early: three 9 MiB publishes queued together take two
/// group commits, so no journal record grows past a segment.
#[test]
fn a_group_stops_gathering_past_its_payload_bytes() {
    let held = held_writer();
    let h = held.writer.handle();
    let (tx, rx) = crossbeam_channel::unbounded();
    let big = vec![0x42u8; 9 << 20];
    for id in 1..=3u64 {
        let task = Mutation::Insert(Box::new(NewTask {
            id,
            state: state("q", 1_000),
            body: body(&big),
        }));
        h.submit(Muts::One(task), Some(TestDone::Tx(Tx(tx.clone(), id))));
    }
    held.release.send(()).unwrap();
    for id in 1..=3u64 {
        let (done, result) = rx.recv_timeout(Duration::from_secs(30)).unwrap();
        assert_eq!(done, id);
        result.unwrap();
    }
    assert_eq!(
        held.writer.stats().batches.load(Relaxed) - held.before,
        2,
        "9 + 9 MiB, then 9 MiB"
    );
    held.writer.shutdown().unwrap();
    assert_eq!(
        held.store.get_body(3).unwrap().unwrap().payload.len(),
        9 << 20
    );
}

#[test]
fn patches_see_earlier_mutations_of_the_same_batch() {
    let dir = TempDir::new().unwrap();
    let store = open(&dir, FsyncMode::Always);
    let writer = store.start_writer::<TestDone>();
    let handle = writer.handle();

    let release = hold_writer(&handle);
    let batches_before = writer.stats().batches.load(Relaxed);
    let (tx, rx) = crossbeam_channel::unbounded();
    let jobs = [
        insert(1, "q"),
        patch(
            1,
            StatePatch {
                attempts: Some(1),
                last_error: Some(Some("first".into())),
                updated_ms: 2_000,
                ..StatePatch::default()
            },
        ),
        patch(
            1,
            StatePatch {
                status: Some(TaskStatus::Dead),
                updated_ms: 3_000,
                ..StatePatch::default()
            },
        ),
        patch(99, StatePatch::default()),
        insert(2, "q"),
        Mutation::Remove { id: 2 },
        patch(2, StatePatch::default()),
    ];
    let count = jobs.len() as u64;
    for (i, job) in jobs.into_iter().enumerate() {
        handle.submit(Muts::One(job), Some(TestDone::Tx(Tx(tx.clone(), i as u64))));
    }
    release.send(()).unwrap();
    for i in 0..count {
        let (n, result) = rx.recv_timeout(Duration::from_secs(10)).unwrap();
        assert_eq!(n, i);
        result.unwrap();
    }
    assert_eq!(
        writer.stats().batches.load(Relaxed),
        batches_before + 1,
        "one batch"
    );

    let expected = TaskState {
        status: TaskStatus::Dead,
        attempts: 1,
        updated_ms: 3_000,
        last_error: Some("first".into()),
        ..state("q", 1_000)
    };
    assert_eq!(store.get_state(1).unwrap(), Some(expected));
    assert_eq!(store.get_state(2).unwrap(), None);
    assert_eq!(store.get_body(2).unwrap(), None);
    assert_eq!(store.get_state(99).unwrap(), None);
    writer.shutdown().unwrap();
}

#[test]
fn patch_after_remove_in_a_later_batch_is_skipped() {
    let dir = TempDir::new().unwrap();
    let store = open(&dir, FsyncMode::Never);
    let writer = store.start_writer::<TestDone>();
    let h = writer.handle();
    commit(&h, Muts::One(insert(7, "q"))).unwrap();
    commit(&h, Muts::One(Mutation::Remove { id: 7 })).unwrap();
    commit(&h, Muts::One(patch(7, StatePatch::default()))).unwrap();
    commit(&h, Muts::One(patch(8, StatePatch::default()))).unwrap();
    assert_eq!(store.get_state(7).unwrap(), None);
    assert_eq!(store.get_state(8).unwrap(), None);
    writer.shutdown().unwrap();
}

#[test]
fn a_job_touching_a_corrupt_record_fails_alone_and_leaves_nothing() {
    let dir = TempDir::new().unwrap();
    let store = open(&dir, FsyncMode::Always);
    store
        .inner
        .dbs
        .get()
        .insert(keys::state(40), &b"\x01garbage"[..])
        .unwrap();
    let writer = store.start_writer::<TestDone>();
    let h = writer.handle();

    let release = hold_writer(&h);
    let (tx, rx) = crossbeam_channel::unbounded();
    let bad = Muts::Many(vec![insert(41, "q"), patch(40, StatePatch::default())]);
    h.submit(bad, Some(TestDone::Tx(Tx(tx.clone(), 0))));
    h.submit(Muts::One(insert(42, "q")), Some(TestDone::Tx(Tx(tx, 1))));
    release.send(()).unwrap();

    let (_, bad_result) = rx.recv_timeout(Duration::from_secs(10)).unwrap();
    let Err(StoreError::Corrupt { key, .. }) = bad_result else {
        panic!("expected Corrupt, got {bad_result:?}");
    };
    assert_eq!(key, keys::hex(&keys::state(40)));
    rx.recv_timeout(Duration::from_secs(10)).unwrap().1.unwrap();
    assert_eq!(
        store.get_state(41).unwrap(),
        None,
        "failed job left a write"
    );
    assert!(store.get_state(42).unwrap().is_some());

    let err = store.recover(|_, _| {}).unwrap_err();
    assert!(matches!(err, StoreError::Corrupt { .. }), "{err:?}");
    writer.shutdown().unwrap();
}

#[test]
fn ids_are_not_reused_after_deleting_everything_and_reopening() {
    let dir = TempDir::new().unwrap();
    {
        let store = open(&dir, FsyncMode::Always);
        assert_eq!(store.allocate_ids(5), 1);
        let writer = store.start_writer::<TestDone>();
        let h = writer.handle();
        commit(&h, Muts::Many((1..=5).map(|id| insert(id, "q")).collect())).unwrap();
        let removes = (1..=5).map(|id| Mutation::Remove { id }).collect();
        commit(&h, Muts::Many(removes)).unwrap();
        writer.shutdown().unwrap();
    }
    let store = open(&dir, FsyncMode::Always);
    assert_eq!(store.recover(|_, _| {}).unwrap().tasks, 0);
    assert_eq!(store.allocate_ids(1), 6);
}

#[test]
fn a_missing_watermark_is_rebuilt_from_stored_ids() {
    let dir = TempDir::new().unwrap();
    {
        let store = open(&dir, FsyncMode::Always);
        let writer = store.start_writer::<TestDone>();
        commit(&writer.handle(), Muts::One(insert(9, "q"))).unwrap();
        writer.shutdown().unwrap();
        store.inner.dbs.get().remove(keys::WATERMARK).unwrap();
        store.inner.dbs.get().flush().unwrap();
    }
    let store = open(&dir, FsyncMode::Always);
    assert_eq!(store.allocate_ids(1), 10);
}

#[test]
fn submit_after_shutdown_completes_with_closed() {
    let dir = TempDir::new().unwrap();
    let store = open(&dir, FsyncMode::Always);
    let writer = store.start_writer::<TestDone>();
    let h = writer.handle();
    commit(&h, Muts::One(insert(1, "q"))).unwrap();
    writer.shutdown().unwrap();
    let err = commit(&h, Muts::One(insert(2, "q"))).unwrap_err();
    assert!(matches!(err, StoreError::Closed), "{err:?}");
    assert_eq!(store.get_state(2).unwrap(), None);
}

#[test]
fn an_idle_interval_writer_still_flushes() {
    let dir = TempDir::new().unwrap();
    let store = open(&dir, FsyncMode::Interval(Duration::from_millis(20)));
    let writer = store.start_writer::<TestDone>();
    commit(&writer.handle(), Muts::One(insert(1, "q"))).unwrap();
    let stats = writer.stats();
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while stats.flushes.load(Relaxed) == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "no flush after the interval"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    writer.shutdown().unwrap();
}

#[test]
fn dropping_the_writer_without_shutdown_still_persists() {
    let dir = TempDir::new().unwrap();
    {
        let store = open(&dir, FsyncMode::Never);
        let writer = store.start_writer::<TestDone>();
        commit(&writer.handle(), Muts::One(insert(3, "q"))).unwrap();
    }
    // The detached thread exits (and releases sled's directory lock) on its own.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let store = loop {
        match Store::open(&config(&dir, FsyncMode::Never)) {
            Ok(store) => break store,
            Err(e) if std::time::Instant::now() < deadline => {
                let _ = e;
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(e) => panic!("reopen: {e}"),
        }
    };
    assert_eq!(store.get_body(3).unwrap(), Some(body(b"payload 3")));
}

/// An `always` store with task 1 inserted by a confirmed (so synced) group, and its
/// writer.
fn synced_writer() -> (TempDir, Store, Writer<TestDone>) {
    let dir = TempDir::new().unwrap();
    let store = open(&dir, FsyncMode::Always);
    let writer = store.start_writer::<TestDone>();
    commit(&writer.handle(), Muts::One(insert(1, "q"))).unwrap();
    (dir, store, writer)
}

/// A group nobody waits for (attempt counts) is not synced on its own at once, but it
/// is synced within milliseconds, and a later awaited group's sync covers it.
#[test]
fn unawaited_groups_are_synced_late_but_soon() {
    let (_dir, store, writer) = synced_writer();
    let (h, stats) = (writer.handle(), writer.stats());
    let synced = stats.flushes.load(Relaxed);
    let attempt = StatePatch {
        attempts: Some(1),
        ..StatePatch::default()
    };
    h.submit(Muts::One(patch(1, attempt)), None);
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while stats.flushes.load(Relaxed) == synced {
        assert!(
            std::time::Instant::now() < deadline,
            "the deferred sync came"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
    assert_eq!(stats.flushes.load(Relaxed), synced + 1);
    assert_eq!(store.get_state(1).unwrap().unwrap().attempts, 1);
    writer.shutdown().unwrap();
}

/// A job durable elsewhere (a committed Raft entry's) is completed before its group
/// is synced; an empty awaited job after it (the state machine's barrier) completes
/// only once the journal is synced. Fails if the writer ignored `durable_elsewhere`
/// (the first job would see its own sync) or the barrier did not wait.
#[test]
fn jobs_durable_elsewhere_complete_before_the_sync_and_a_barrier_waits_for_it() {
    let (dir, store, writer) = synced_writer();
    let (h, stats) = (writer.handle(), writer.stats());
    let synced = stats.flushes.load(Relaxed);
    let (tx, rx) = crossbeam_channel::bounded(1);
    h.submit(
        Muts::One(insert(2, "q")),
        Some(TestDone::Elsewhere(tx, stats.clone())),
    );
    let at_completion = rx.recv_timeout(Duration::from_secs(10)).unwrap();
    assert_eq!(
        at_completion, synced,
        "completed before any sync of its group"
    );
    commit(&h, Muts::Many(Vec::new())).unwrap();
    assert!(
        stats.flushes.load(Relaxed) > synced,
        "the barrier completed after the sync"
    );
    writer.shutdown().unwrap();
    drop(store);
    let store = open(&dir, FsyncMode::Always);
    assert!(store.get_state(2).unwrap().is_some());
}

/// Jobs sent together (a replicated entry's) are one group even where the group would
/// otherwise end between them (its mutation limit reached after the first).
#[test]
fn jobs_sent_together_are_never_split_between_groups() {
    let held = held_writer();
    let h = held.writer.handle();
    // Patches of tasks that do not exist: counted, staged as nothing.
    let filler: Vec<Mutation> = (0..super::writer::MAX_BATCH_MUTATIONS as u64 - 10)
        .map(|id| patch(1_000_000 + id, StatePatch::default()))
        .collect();
    let (tx, rx) = crossbeam_channel::unbounded();
    h.submit(Muts::Many(filler), Some(TestDone::Tx(Tx(tx.clone(), 0))));
    let first: Vec<Mutation> = (1..=20).map(|id| insert(id, "q")).collect();
    let second: Vec<Mutation> = (21..=30).map(|id| insert(id, "q")).collect();
    h.submit_together(vec![
        (Muts::Many(first), Some(TestDone::Tx(Tx(tx.clone(), 1)))),
        (Muts::Many(second), Some(TestDone::Tx(Tx(tx, 2)))),
    ]);
    held.release.send(()).unwrap();
    for _ in 0..3 {
        let (_, result) = rx.recv_timeout(Duration::from_secs(10)).unwrap();
        result.unwrap();
    }
    assert_eq!(
        held.writer.stats().batches.load(Relaxed),
        held.before + 1,
        "the filler and both jobs sent together in one group"
    );
    held.writer.shutdown().unwrap();
}

/// Jobs handed over at once (`submit_many`, a connection's publishes of one read)
/// complete each with its own outcome, in their order, applied in one group; after
/// shutdown each gets `Closed`, and the list is left empty either way.
#[test]
fn jobs_handed_over_at_once_complete_each_in_one_group() {
    let held = held_writer();
    let h = held.writer.handle();
    let (tx, rx) = crossbeam_channel::unbounded();
    let mut jobs: Vec<(Muts, Option<TestDone>)> = (1..=3)
        .map(|id| {
            (
                Muts::One(insert(id, "q")),
                Some(TestDone::Tx(Tx(tx.clone(), id))),
            )
        })
        .collect();
    h.submit_many(&mut jobs);
    assert!(jobs.is_empty());
    held.release.send(()).unwrap();
    let order: Vec<u64> = (0..3)
        .map(|_| {
            let (id, result) = rx.recv_timeout(Duration::from_secs(10)).unwrap();
            result.unwrap();
            id
        })
        .collect();
    assert_eq!(order, [1, 2, 3]);
    assert_eq!(held.writer.stats().batches.load(Relaxed), held.before + 1);
    for id in 1..=3 {
        assert!(held.store.get_state(id).unwrap().is_some(), "task {id}");
    }
    held.writer.shutdown().unwrap();
    let mut late = vec![
        (
            Muts::One(insert(4, "q")),
            Some(TestDone::Tx(Tx(tx.clone(), 4))),
        ),
        (Muts::One(insert(5, "q")), Some(TestDone::Tx(Tx(tx, 5)))),
    ];
    h.submit_many(&mut late);
    assert!(late.is_empty());
    for _ in 0..2 {
        let (_, result) = rx.recv_timeout(Duration::from_secs(10)).unwrap();
        assert!(matches!(result, Err(StoreError::Closed)), "{result:?}");
    }
}

/// Copies a data directory as a crash would leave it: whatever the files hold now.
/// A file may go between the listing and its copy (a checkpoint removes a segment or
/// renames it to a spare, the writer renames a spare to its next segment), which a
/// crash would see at once: then the whole directory is copied again.
pub(super) fn snapshot(from: &std::path::Path, to: &std::path::Path) {
    for _ in 0..100 {
        match try_snapshot(from, to) {
            Ok(()) => return,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                std::fs::remove_dir_all(to).unwrap();
            }
            Err(e) => panic!("copying {}: {e}", from.display()),
        }
    }
    panic!("{} kept changing under the copy", from.display());
}

fn try_snapshot(from: &std::path::Path, to: &std::path::Path) -> std::io::Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let target = to.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            try_snapshot(&entry.path(), &target)?;
        } else {
            std::fs::copy(entry.path(), &target)?;
        }
    }
    Ok(())
}

/// A crash at any moment keeps every confirmed change: the files are copied while the
/// writer runs (sled unflushed, segments rolling and checkpoints removing them), and
/// the copy opens with every confirmed insert and ack in it, applied in order.
#[test]
fn a_crash_snapshot_holds_every_confirmed_change_through_rolls_and_checkpoints() {
    let dir = TempDir::new().unwrap();
    let mut config = config(&dir, FsyncMode::Always);
    config.journal_segment_bytes = 64 * 1024;
    let store = Store::open(&config).unwrap();
    let writer = store.start_writer::<TestDone>();
    let h = writer.handle();
    let payload = vec![0x5a; 2000];
    for round in 0..6u64 {
        for i in 0..100u64 {
            let id = 1 + round * 100 + i;
            let task = Mutation::Insert(Box::new(NewTask {
                id,
                state: state("q", 1_000),
                body: body(&payload),
            }));
            commit(&h, Muts::One(task)).unwrap();
            if id % 2 == 0 {
                commit(&h, Muts::One(Mutation::Remove { id })).unwrap();
            }
        }
        let copy = dir.path().join(format!("crash-{round}"));
        snapshot(&config.path, &copy);
        let mut copied = config.clone();
        copied.path = copy;
        let reopened = Store::open(&copied).unwrap();
        let mut ids = Vec::new();
        reopened.recover(|id, _| ids.push(id)).unwrap();
        let expected: Vec<u64> = (1..=(round + 1) * 100).filter(|id| id % 2 == 1).collect();
        assert_eq!(ids, expected, "round {round}");
        assert_eq!(reopened.get_body(1).unwrap(), Some(body(&payload)));
        assert!(
            reopened.allocate_ids(1) > (round + 1) * 100,
            "ids are not reused"
        );
    }
    let stats = writer.stats();
    assert!(
        stats.checkpoints.load(Relaxed) > 0,
        "segments rolled and were checkpointed"
    );
    writer.shutdown().unwrap();
    drop(store);
    // A clean shutdown checkpoints everything and leaves no journal to replay.
    let store = reopen(&config);
    assert_eq!(store.replayed.records, 0);
    assert_eq!(journal::disk_bytes(&config.path.join(JOURNAL_DIR)), 0);
}

/// Whether `needle` is in any file under `dir`.
fn found_under(dir: &std::path::Path, needle: &[u8]) -> bool {
    std::fs::read_dir(dir).unwrap().any(|entry| {
        let path = entry.unwrap().path();
        if path.is_dir() {
            return found_under(&path, needle);
        }
        let bytes = std::fs::read(&path).unwrap_or_default();
        bytes.windows(needle.len()).any(|w| w == needle)
    })
}

/// A task that a cluster member's group both inserts and removes (held-back entries
/// holding a publish and its ack) is written neither time: its body is in no file of
/// the data directory, it is gone after a reopen and its id is not handed out again.
/// A task also patched in between, one with an idempotency key, and one that stays
/// are written as usual; a single node (not replicated) nets nothing.
#[test]
fn a_task_a_members_group_inserts_and_removes_is_written_neither_time() {
    let marked = |id: TaskId, mark: &[u8]| {
        let mut payload = mark.repeat(512);
        payload.extend_from_slice(&id.to_be_bytes());
        let mut task = match insert(id, "q") {
            Mutation::Insert(task) => task,
            _ => unreachable!(),
        };
        task.body = body(&payload);
        task
    };
    let dir = TempDir::new().unwrap();
    {
        let store = open(&dir, FsyncMode::Always);
        store.set_replicated();
        store.set_caching_bodies(false);
        assert_eq!(store.allocate_ids(4), 1);
        let writer = store.start_writer::<TestDone>();
        let h = writer.handle();
        let mut keyed = marked(3, b"KEYED-TASK-");
        keyed.body.idempotency_key = Some("k".into());
        let (tx, rx) = crossbeam_channel::unbounded();
        h.submit_together(vec![
            (
                Muts::Many(vec![
                    Mutation::Insert(marked(1, b"NETTED-TASK-")),
                    Mutation::Insert(marked(2, b"PATCHED-TASK")),
                    Mutation::Insert(keyed),
                    Mutation::Insert(marked(4, b"KEPT-TASK---")),
                ]),
                Some(TestDone::Tx(Tx(tx.clone(), 1))),
            ),
            (
                Muts::One(patch(2, StatePatch::default())),
                Some(TestDone::Tx(Tx(tx.clone(), 2))),
            ),
            (
                Muts::Many((1..=3).map(|id| Mutation::Remove { id }).collect()),
                Some(TestDone::Tx(Tx(tx, 3))),
            ),
        ]);
        for _ in 0..3 {
            rx.recv_timeout(Duration::from_secs(10)).unwrap().1.unwrap();
        }
        assert_eq!(writer.stats().netted.load(Relaxed), 1, "task 1 alone");
        // Before a shutdown's checkpoint lets the journal go.
        let data = config(&dir, FsyncMode::Always).path;
        assert!(!found_under(&data, b"NETTED-TASK-NETTED-TASK-"));
        for written in [&b"PATCHED-TASK"[..], b"KEYED-TASK-", b"KEPT-TASK---"] {
            assert!(
                found_under(&data, &written.repeat(2)),
                "{}",
                String::from_utf8_lossy(written)
            );
        }
        writer.shutdown().unwrap();
    }
    let store = open(&dir, FsyncMode::Always);
    let mut ids = Vec::new();
    store.recover(|id, _| ids.push(id)).unwrap();
    assert_eq!(ids, [4]);
    assert_eq!(store.allocate_ids(1), 5, "no id is handed out again");
}

/// A single node's group that inserts and removes a task writes both (its groups
/// never hold the ack of a publish they confirm: nothing to look for).
#[test]
fn a_single_node_nets_nothing() {
    let dir = TempDir::new().unwrap();
    let store = open(&dir, FsyncMode::Always);
    let writer = store.start_writer::<TestDone>();
    let h = writer.handle();
    let (tx, rx) = crossbeam_channel::unbounded();
    h.submit_together(vec![
        (
            Muts::One(insert(1, "q")),
            Some(TestDone::Tx(Tx(tx.clone(), 1))),
        ),
        (
            Muts::One(Mutation::Remove { id: 1 }),
            Some(TestDone::Tx(Tx(tx, 2))),
        ),
    ]);
    for _ in 0..2 {
        rx.recv_timeout(Duration::from_secs(10)).unwrap().1.unwrap();
    }
    assert_eq!(writer.stats().netted.load(Relaxed), 0);
    writer.shutdown().unwrap();
}
