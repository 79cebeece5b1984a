//! Store benchmarks: group commit (N concurrent publish jobs confirmed by one batch and
//! one fsync, for N from 1 to 1024) and the recovery scan of 1M stored tasks.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use squall::broker::{Engine, EngineConfig};
use squall::model::{Mutation, NewTask, TaskBody, TaskState, TaskStatus};
use squall::store::{Completion, FsyncMode, Muts, Store, StoreConfig, StoreError};

struct Signal(crossbeam_channel::Sender<bool>);

impl Completion for Signal {
    fn complete(self, result: Result<(), StoreError>) {
        let _ = self.0.send(result.is_ok());
    }
}

fn task(id: u64, queue: &Arc<str>, payload: &Bytes) -> Mutation {
    Mutation::Insert(Box::new(NewTask {
        id,
        state: TaskState {
            queue: queue.clone(),
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
            created_ms: 1,
            payload: payload.clone(),
            headers: Vec::new(),
            idempotency_key: None,
        },
    }))
}

fn open(dir: &std::path::Path) -> Store {
    Store::open(&StoreConfig {
        path: dir.to_owned(),
        fsync: FsyncMode::Always,
        cache_bytes: 256 << 20,
        journal_segment_bytes: squall::store::DEFAULT_JOURNAL_SEGMENT_BYTES,
    })
    .expect("open store")
}

fn group_commit(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let writer = store.start_writer::<Signal>();
    let handle = writer.handle();
    let queue: Arc<str> = Arc::from("bench");
    let payload = Bytes::from(vec![b'x'; 256]);
    let (tx, rx) = crossbeam_channel::unbounded();
    let mut group = c.benchmark_group("group_commit_fsync_always");
    group.measurement_time(Duration::from_secs(5));
    for n in [1u64, 16, 128, 1024] {
        group.throughput(Throughput::Elements(n));
        group.bench_with_input(BenchmarkId::from_parameter(n), &n, |b, &n| {
            b.iter(|| {
                let first = store.allocate_ids(n);
                for id in first..first + n {
                    handle.submit(
                        Muts::One(task(id, &queue, &payload)),
                        Some(Signal(tx.clone())),
                    );
                }
                for _ in 0..n {
                    assert!(rx.recv().unwrap());
                }
                // Keep the store small: remove what was just inserted (not timed apart).
                let removes = (first..first + n)
                    .map(|id| Mutation::Remove { id })
                    .collect();
                handle.submit(Muts::Many(removes), Some(Signal(tx.clone())));
                assert!(rx.recv().unwrap());
            })
        });
    }
    group.finish();
    writer.shutdown().unwrap();
}

fn recovery_scan(c: &mut Criterion) {
    const TASKS: u64 = 1_000_000;
    let dir = tempfile::tempdir().unwrap();
    {
        let store = open(dir.path());
        let writer = store.start_writer::<Signal>();
        let handle = writer.handle();
        let queue: Arc<str> = Arc::from("bench");
        let payload = Bytes::from(vec![b'x'; 256]);
        let (tx, rx) = crossbeam_channel::unbounded();
        let first = store.allocate_ids(TASKS);
        for chunk in (first..first + TASKS).collect::<Vec<_>>().chunks(10_000) {
            let muts = chunk.iter().map(|&id| task(id, &queue, &payload)).collect();
            handle.submit(Muts::Many(muts), Some(Signal(tx.clone())));
        }
        for _ in 0..TASKS.div_ceil(10_000) {
            assert!(rx.recv().unwrap());
        }
        writer.shutdown().unwrap();
    }
    let store = open(dir.path());
    let mut group = c.benchmark_group("recovery");
    group.sample_size(10);
    group.throughput(Throughput::Elements(TASKS));
    group.bench_function("scan_and_index_1M_tasks", |b| {
        b.iter(|| {
            let mut engine = Engine::new(EngineConfig::default(), 1);
            let stats = store
                .recover(|id, state| {
                    engine.recover_task(id, &state, 2);
                })
                .unwrap();
            assert_eq!(stats.tasks, TASKS);
            engine
        })
    });
    group.finish();
}

criterion_group!(benches, group_commit, recovery_scan);
criterion_main!(benches);
