//! Tests of the store through its public API: the group-commit writer, patch
//! semantics within a batch, the id watermark, shutdown, and a model test with
//! restarts against a `BTreeMap`. Record encoding has its own tests in `record.rs`.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use crossbeam_channel::{Receiver, Sender};
use proptest::prelude::*;
use proptest::test_runner::FileFailurePersistence;
use tempfile::TempDir;

use super::*;
use crate::model::{Mutation, NewTask, StatePatch, TaskStatus};

/// Sends the job's outcome, tagged, to a channel.
struct Tx<T: Send + 'static>(Sender<(T, Result<(), StoreError>)>, T);

impl<T: Send + 'static> Completion for Tx<T> {
    fn complete(self, result: Result<(), StoreError>) {
        let _ = self.0.send((self.1, result));
    }
}

/// Blocks the writer thread inside its completion until released: jobs submitted
/// meanwhile all queue up and land in the next batch together.
struct Gate {
    entered: Sender<()>,
    release: Receiver<()>,
}

enum TestDone {
    Tx(Tx<u64>),
    Gate(Gate),
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
        }
    }
}

fn config(dir: &TempDir, fsync: FsyncMode) -> StoreConfig {
    StoreConfig {
        path: dir.path().join("data"),
        fsync,
        cache_bytes: 16 << 20,
        journal_segment_bytes: crate::store::DEFAULT_JOURNAL_SEGMENT_BYTES,
    }
}

fn open(dir: &TempDir, fsync: FsyncMode) -> Store {
    Store::open(&config(dir, fsync)).expect("open store")
}

fn state(queue: &str, created_ms: u64) -> TaskState {
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

fn body(payload: &[u8]) -> TaskBody {
    TaskBody {
        created_ms: 1_000,
        payload: Bytes::copy_from_slice(payload),
        headers: vec![("h".into(), Bytes::from_static(b"v"))],
        idempotency_key: None,
    }
}

fn insert(id: TaskId, queue: &str) -> Mutation {
    Mutation::Insert(Box::new(NewTask {
        id,
        state: state(queue, 1_000),
        body: body(format!("payload {id}").as_bytes()),
    }))
}

fn patch(id: TaskId, patch: StatePatch) -> Mutation {
    Mutation::Patch { id, patch }
}

/// Submits one job and waits for its outcome.
fn commit(writer: &WriterHandle<TestDone>, muts: Muts) -> Result<(), StoreError> {
    let (tx, rx) = crossbeam_channel::bounded(1);
    writer.submit(muts, Some(TestDone::Tx(Tx(tx, 0))));
    rx.recv_timeout(Duration::from_secs(10))
        .expect("completion")
        .1
}

/// Holds the writer inside a completion; returns the key to let it go.
fn hold_writer(writer: &WriterHandle<TestDone>) -> Sender<()> {
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

/// Large payloads close a group early: three 9 MiB publishes queued together take two
/// group commits, so no journal record grows past a segment.
#[test]
fn a_group_stops_gathering_past_its_payload_bytes() {
    let dir = TempDir::new().unwrap();
    let store = open(&dir, FsyncMode::Always);
    let writer = store.start_writer::<TestDone>();
    let h = writer.handle();
    let stats = writer.stats();
    let release = hold_writer(&h);
    let before = stats.batches.load(Relaxed);
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
    release.send(()).unwrap();
    for id in 1..=3u64 {
        let (done, result) = rx.recv_timeout(Duration::from_secs(30)).unwrap();
        assert_eq!(done, id);
        result.unwrap();
    }
    assert_eq!(
        stats.batches.load(Relaxed) - before,
        2,
        "9 + 9 MiB, then 9 MiB"
    );
    writer.shutdown().unwrap();
    assert_eq!(store.get_body(3).unwrap().unwrap().payload.len(), 9 << 20);
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

/// A group nobody waits for (attempt counts) is not synced on its own at once, but it
/// is synced within milliseconds, and a later awaited group's sync covers it.
#[test]
fn unawaited_groups_are_synced_late_but_soon() {
    let dir = TempDir::new().unwrap();
    let store = open(&dir, FsyncMode::Always);
    let writer = store.start_writer::<TestDone>();
    let h = writer.handle();
    let stats = writer.stats();
    commit(&h, Muts::One(insert(1, "q"))).unwrap();
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

/// Copies a data directory as a crash would leave it: whatever the files hold now.
fn snapshot(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            snapshot(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
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
    let store = Store::open(&config).unwrap();
    assert_eq!(store.replayed.records, 0);
    assert_eq!(journal::disk_bytes(&config.path.join(JOURNAL_DIR)), 0);
}

// ---------------------------------------------------------------------------------
// Model test: random operation sequences with restarts, checked against BTreeMaps.

const QUEUES: [&str; 3] = ["a", "b", "c.d:e-f"];

#[derive(Debug, Clone)]
enum Op {
    Insert {
        queue: usize,
        payload: Vec<u8>,
        priority: i32,
        idempotency_key: Option<String>,
    },
    /// Patches an existing task (picked by index) or, when there is none, id 1_000_000.
    Patch {
        pick: usize,
        status: Option<u8>,
        attempts: Option<u32>,
        not_before_ms: Option<u64>,
        last_error: Option<Option<String>>,
    },
    Remove {
        pick: usize,
    },
    /// Acks an existing task (or id 1_000_000) with a result.
    Succeed {
        pick: usize,
        result: Vec<u8>,
    },
    /// Advances the clock (sometimes past every TTL and window) and sweeps everything due.
    Sweep {
        advance: u64,
    },
    PutQueue {
        queue: usize,
        paused: bool,
        max_length: u64,
        keep_results: bool,
        dedup: bool,
    },
    RemoveQueue {
        queue: usize,
    },
    Restart,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0..QUEUES.len(), prop::collection::vec(any::<u8>(), 0..64), any::<i32>(),
              prop::option::of("[a-z]{1,8}"))
            .prop_map(|(queue, payload, priority, idempotency_key)| Op::Insert {
                queue, payload, priority, idempotency_key
            }),
        3 => (any::<usize>(), prop::option::of(0u8..3), prop::option::of(any::<u32>()),
              prop::option::of(any::<u64>()), prop::option::of(prop::option::of(".{0,12}")))
            .prop_map(|(pick, status, attempts, not_before_ms, last_error)| Op::Patch {
                pick, status, attempts, not_before_ms, last_error
            }),
        2 => any::<usize>().prop_map(|pick| Op::Remove { pick }),
        2 => (any::<usize>(), prop::collection::vec(any::<u8>(), 0..16))
            .prop_map(|(pick, result)| Op::Succeed { pick, result }),
        1 => prop_oneof![0..1_000u64, 250_000..400_000u64, 3_500_000..4_000_000u64]
            .prop_map(|advance| Op::Sweep { advance }),
        1 => (0..QUEUES.len(), any::<bool>(), any::<u64>(), any::<bool>(), any::<bool>())
            .prop_map(|(queue, paused, max_length, keep_results, dedup)| Op::PutQueue {
                queue, paused, max_length, keep_results, dedup
            }),
        1 => (0..QUEUES.len()).prop_map(|queue| Op::RemoveQueue { queue }),
        1 => Just(Op::Restart),
    ]
}

fn fsync_mode() -> impl Strategy<Value = FsyncMode> {
    prop_oneof![
        Just(FsyncMode::Always),
        Just(FsyncMode::Interval(Duration::from_millis(3))),
        Just(FsyncMode::Never),
    ]
}

#[derive(Default)]
struct Model {
    /// State and body (gone once succeeded).
    tasks: BTreeMap<TaskId, (TaskState, Option<TaskBody>)>,
    /// Retention records: expiry and result.
    retained: BTreeMap<TaskId, (u64, Bytes)>,
    /// Idempotency keys: (queue, key) -> (task, expiry).
    keys: BTreeMap<(String, String), (TaskId, u64)>,
    queues: BTreeMap<String, QueueConfig>,
    highest_id: TaskId,
}

impl Model {
    fn pick(&self, pick: usize) -> TaskId {
        if self.tasks.is_empty() {
            return 1_000_000;
        }
        *self.tasks.keys().nth(pick % self.tasks.len()).unwrap()
    }

    fn config(&self, queue: &str) -> QueueConfig {
        self.queues.get(queue).cloned().unwrap_or_default()
    }
}

/// The store as a test drives it: reopened on every `Restart`.
struct Harness {
    store: Store,
    writer: Writer<Tx<u64>>,
    tx: Sender<(u64, Result<(), StoreError>)>,
    rx: Receiver<(u64, Result<(), StoreError>)>,
    submitted: u64,
    completed: u64,
    clock: u64,
}

impl Harness {
    fn start(config: &StoreConfig) -> Harness {
        let store = Store::open(config).unwrap();
        let writer = store.start_writer();
        let (tx, rx) = crossbeam_channel::unbounded();
        Harness {
            store,
            writer,
            tx,
            rx,
            submitted: 0,
            completed: 0,
            clock: 0,
        }
    }

    /// Pipelined: does not wait; `settle` collects the outcomes in order.
    fn submit(&mut self, mutation: Mutation) {
        let done = Tx(self.tx.clone(), self.submitted);
        self.submitted += 1;
        self.writer.handle().submit(Muts::One(mutation), Some(done));
    }

    fn settle(&mut self) {
        while self.completed < self.submitted {
            let (n, result) = self.rx.recv_timeout(Duration::from_secs(10)).unwrap();
            assert_eq!(n, self.completed, "completions out of order");
            result.unwrap();
            self.completed += 1;
        }
    }

    fn restart(self, config: &StoreConfig) -> Harness {
        let Harness { store, writer, .. } = self;
        writer.shutdown().unwrap();
        drop(store);
        Harness::start(config)
    }
}

fn apply(model: &mut Model, h: &mut Harness, op: Op) {
    h.clock += 1;
    match op {
        Op::Insert {
            queue,
            payload,
            priority,
            idempotency_key,
        } => {
            let id = h.store.allocate_ids(1);
            assert!(
                id > model.highest_id,
                "id {id} reused (highest {})",
                model.highest_id
            );
            model.highest_id = id;
            let queue_name = QUEUES[queue].to_owned();
            let window = model.config(&queue_name).dedup_window_ms;
            let mut duplicate = false;
            if let (Some(key), true) = (&idempotency_key, window > 0) {
                let slot = (queue_name, key.clone());
                match model.keys.get(&slot) {
                    Some(&(_, expires)) if expires > h.clock => duplicate = true,
                    _ => {
                        model.keys.insert(slot, (id, h.clock + window));
                    }
                }
            }
            let task = NewTask {
                id,
                state: TaskState {
                    priority,
                    ..state(QUEUES[queue], h.clock)
                },
                body: TaskBody {
                    created_ms: h.clock,
                    payload: Bytes::from(payload),
                    headers: vec![("k".into(), Bytes::from(id.to_le_bytes().to_vec()))],
                    idempotency_key,
                },
            };
            if !duplicate {
                model
                    .tasks
                    .insert(id, (task.state.clone(), Some(task.body.clone())));
            }
            h.submit(Mutation::Insert(Box::new(task)));
        }
        Op::Patch {
            pick,
            status,
            attempts,
            not_before_ms,
            last_error,
        } => {
            let id = model.pick(pick);
            let p = StatePatch {
                status: status.and_then(TaskStatus::from_u8),
                attempts,
                not_before_ms,
                last_error,
                updated_ms: h.clock,
            };
            if let Some((s, _)) = model.tasks.get_mut(&id) {
                s.status = p.status.unwrap_or(s.status);
                s.attempts = p.attempts.unwrap_or(s.attempts);
                s.not_before_ms = p.not_before_ms.unwrap_or(s.not_before_ms);
                if let Some(e) = &p.last_error {
                    s.last_error.clone_from(e);
                }
                s.updated_ms = p.updated_ms;
                // A dead task is kept for the TTL; a redriven one loses its record.
                let ttl = model
                    .queues
                    .get(&*s.queue)
                    .cloned()
                    .unwrap_or_default()
                    .result_ttl_ms;
                match p.status {
                    Some(TaskStatus::Dead) if ttl > 0 => {
                        model.retained.insert(id, (h.clock + ttl, Bytes::new()));
                    }
                    Some(TaskStatus::Pending) => {
                        model.retained.remove(&id);
                    }
                    _ => {}
                }
            }
            h.submit(Mutation::Patch { id, patch: p });
        }
        Op::Remove { pick } => {
            let id = model.pick(pick);
            model.tasks.remove(&id);
            model.retained.remove(&id);
            h.submit(Mutation::Remove { id });
        }
        Op::Succeed { pick, result } => {
            let id = model.pick(pick);
            let result = Bytes::from(result);
            if let Some((s, body)) = model.tasks.get_mut(&id) {
                let ttl = model
                    .queues
                    .get(&*s.queue)
                    .cloned()
                    .unwrap_or_default()
                    .result_ttl_ms;
                if ttl == 0 {
                    model.tasks.remove(&id);
                    model.retained.remove(&id);
                } else {
                    s.status = TaskStatus::Succeeded;
                    s.updated_ms = h.clock;
                    *body = None;
                    model.retained.insert(id, (h.clock + ttl, result.clone()));
                }
            }
            h.submit(Mutation::Succeed {
                id,
                result,
                updated_ms: h.clock,
            });
        }
        Op::Sweep { advance } => {
            // A sweep scans the committed index: records staged in its own batch wait
            // for the next sweep. So that "due" means the same here and in the model,
            // everything before it is committed first.
            h.settle();
            h.clock += advance;
            let now = h.clock;
            let due: Vec<TaskId> = model
                .retained
                .iter()
                .filter(|(_, (expires, _))| *expires <= now)
                .map(|(id, _)| *id)
                .collect();
            for id in due {
                model.retained.remove(&id);
                model.tasks.remove(&id);
            }
            model.keys.retain(|_, (_, expires)| *expires > now);
            h.submit(Mutation::Sweep {
                now,
                limit: u32::MAX,
            });
        }
        Op::PutQueue {
            queue,
            paused,
            max_length,
            keep_results,
            dedup,
        } => {
            let defaults = QueueConfig::default();
            let config = QueueConfig {
                paused,
                max_length,
                result_ttl_ms: if keep_results {
                    defaults.result_ttl_ms
                } else {
                    0
                },
                dedup_window_ms: if dedup { defaults.dedup_window_ms } else { 0 },
                ..defaults
            };
            model.queues.insert(QUEUES[queue].into(), config.clone());
            h.submit(Mutation::PutQueue {
                name: Arc::from(QUEUES[queue]),
                config,
            });
        }
        Op::RemoveQueue { queue } => {
            model.queues.remove(QUEUES[queue]);
            h.submit(Mutation::RemoveQueue {
                name: Arc::from(QUEUES[queue]),
            });
        }
        Op::Restart => unreachable!("handled by the caller"),
    }
}

fn check(model: &Model, store: &Store) {
    let mut states = Vec::new();
    store.recover(|id, s| states.push((id, s))).unwrap();
    let expected: Vec<_> = model
        .tasks
        .iter()
        .map(|(id, (s, _))| (*id, s.clone()))
        .collect();
    assert_eq!(states, expected);
    for (id, (s, b)) in &model.tasks {
        assert_eq!(
            store.get_body(*id).unwrap().as_ref(),
            b.as_ref(),
            "body of {id}"
        );
        let record = store.get_record(*id).unwrap().expect("record");
        let retained = record.retained.map(|r| (r.expires_ms, r.result));
        let expected = match s.status {
            TaskStatus::Pending => None,
            _ => model.retained.get(id).cloned(),
        };
        assert_eq!(retained, expected, "retention of {id}");
    }
    let mut keys = BTreeMap::new();
    for item in store.inner.dbs.get().range(keys::prefix_range(keys::DEDUP)) {
        let (key, value) = item.unwrap();
        let text = std::str::from_utf8(&key[1..]).unwrap();
        let (queue, name) = text.split_once('\0').unwrap();
        let held = record::decode_dedup(&value).unwrap();
        keys.insert(
            (queue.to_owned(), name.to_owned()),
            (held.task, held.expires_ms),
        );
    }
    // Expired keys may linger until a sweep; the model drops them only on sweeps too.
    assert_eq!(keys, model.keys);
    let queues: BTreeMap<String, QueueConfig> = store
        .queues()
        .unwrap()
        .into_iter()
        .map(|(name, config)| (name.to_string(), config))
        .collect();
    assert_eq!(&queues, &model.queues);
}

proptest! {
    // Minimised failures are kept beside this file (`tests.regressions`) and replayed
    // first on every run.
    #![proptest_config(ProptestConfig {
        cases: 48,
        failure_persistence: Some(Box::new(FileFailurePersistence::WithSource("regressions"))),
        ..ProptestConfig::default()
    })]

    #[test]
    fn store_matches_a_btreemap_model_across_restarts(
        fsync in fsync_mode(),
        ops in prop::collection::vec(op(), 1..60),
    ) {
        let dir = TempDir::new().unwrap();
        let config = config(&dir, fsync);
        let mut model = Model::default();
        let mut h = Harness::start(&config);
        for op in ops {
            if let Op::Restart = op {
                h.settle();
                h = h.restart(&config);
                check(&model, &h.store);
            } else {
                apply(&mut model, &mut h, op);
            }
        }
        h.settle();
        // Reads see every confirmed write before any restart...
        check(&model, &h.store);
        // ...and after one.
        h = h.restart(&config);
        check(&model, &h.store);
        h.writer.shutdown().unwrap();
    }
}
