//! Tests of what the store keeps for task status and idempotent publish: succeeded and
//! dead records with their retention, the sweep (and its bounded work per job), and
//! idempotency keys and producer numbers within a batch, across batches, across a
//! reopen and past their window. The model test in `tests.rs` covers the same
//! mutations at random.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use crossbeam_channel::{Receiver, Sender};
use tempfile::TempDir;

use super::*;
use crate::model::{Mutation, NewTask, QueueConfig, StatePatch, TaskStatus};

/// What one job's completion saw.
#[derive(Debug)]
struct Seen {
    result: Result<(), StoreError>,
    duplicates: Vec<Duplicate>,
    sweep: Option<SweepStats>,
    refused: Option<SequenceRefusal>,
}

enum Report {
    /// Sends what the completion saw.
    Tx(Sender<Seen>),
    /// Holds the writer thread inside this completion until released, so that the
    /// jobs queued meanwhile land in one batch.
    Gate {
        entered: Sender<()>,
        release: Receiver<()>,
    },
}

impl Completion for Report {
    fn complete(self, result: Result<(), StoreError>) {
        self.complete_with(result, JobReport::default());
    }

    fn complete_with(self, result: Result<(), StoreError>, report: JobReport<'_>) {
        match self {
            Report::Tx(tx) => {
                let _ = tx.send(Seen {
                    result,
                    duplicates: report.duplicates.to_vec(),
                    sweep: report.sweep.cloned(),
                    refused: report.refused,
                });
            }
            Report::Gate { entered, release } => {
                let _ = entered.send(());
                let _ = release.recv();
            }
        }
    }
}

const TTL: u64 = 1_000;
const WINDOW: u64 = 500;

fn defaults() -> QueueConfig {
    QueueConfig {
        result_ttl_ms: TTL,
        dedup_window_ms: WINDOW,
        ..QueueConfig::default()
    }
}

struct Fixture {
    _dir: TempDir,
    config: StoreConfig,
    store: Store,
    writer: Writer<Report>,
}

impl Fixture {
    fn new() -> Fixture {
        let dir = TempDir::new().unwrap();
        let config = StoreConfig {
            path: dir.path().join("data"),
            fsync: FsyncMode::Never,
            cache_bytes: 16 << 20,
            journal_segment_bytes: crate::store::DEFAULT_JOURNAL_SEGMENT_BYTES,
        };
        let (store, writer) = Self::open(&config);
        Fixture {
            _dir: dir,
            config,
            store,
            writer,
        }
    }

    fn open(config: &StoreConfig) -> (Store, Writer<Report>) {
        // A reopen can race sled's lock release (see `tests::reopen`).
        let store = super::tests::reopen(config);
        store.set_queue_defaults(defaults());
        let writer = store.start_writer();
        (store, writer)
    }

    fn reopen(self) -> Fixture {
        let Fixture {
            _dir,
            config,
            store,
            writer,
        } = self;
        writer.shutdown().unwrap();
        drop(store);
        let (store, writer) = Self::open(&config);
        Fixture {
            _dir,
            config,
            store,
            writer,
        }
    }

    /// Commits several jobs in one batch (the writer is held until all are queued).
    fn batch(&self, jobs: Vec<Vec<Mutation>>) -> Vec<Seen> {
        let h = self.writer.handle();
        let (entered_tx, entered_rx) = crossbeam_channel::bounded(1);
        let (release_tx, release_rx) = crossbeam_channel::bounded(1);
        let gate = Report::Gate {
            entered: entered_tx,
            release: release_rx,
        };
        h.submit(Muts::Many(Vec::new()), Some(gate));
        entered_rx
            .recv_timeout(Duration::from_secs(10))
            .expect("gate entered");
        let (tx, rx) = crossbeam_channel::unbounded();
        for muts in &jobs {
            h.submit(Muts::Many(muts.clone()), Some(Report::Tx(tx.clone())));
        }
        release_tx.send(()).unwrap();
        (0..jobs.len())
            .map(|_| {
                rx.recv_timeout(Duration::from_secs(10))
                    .expect("completion")
            })
            .collect()
    }

    fn one(&self, muts: Vec<Mutation>) -> Seen {
        let mut seen = self.batch(vec![muts]);
        let seen = seen.pop().unwrap();
        seen.result.as_ref().expect("job applied");
        seen
    }

    fn sweep(&self, now: u64, limit: u32) -> SweepStats {
        self.one(vec![Mutation::Sweep { now, limit }])
            .sweep
            .expect("a sweep reports")
    }

    /// Records of one kind, as the store reads them (task records: the task table
    /// over sled).
    fn count(&self, prefix: u8) -> usize {
        let mut ids = std::collections::BTreeMap::new();
        for item in crate::store::pool::scan_prefix(&self.store.inner.dbs.get(), prefix) {
            ids.insert(item.unwrap().0.to_vec(), true);
        }
        let mut key = vec![prefix];
        key.extend_from_slice(&[0; 8]);
        if let Some((slot, _)) = tasks::Slot::of_key(&key) {
            for (id, value) in self.store.inner.tasks.records(slot) {
                ids.insert(slot.key(id).to_vec(), value.is_some());
            }
        }
        ids.values().filter(|&&live| live).count()
    }
}

fn insert(id: TaskId, queue: &str, created_ms: u64, key: Option<&str>) -> Mutation {
    Mutation::Insert(Box::new(NewTask {
        id,
        state: TaskState {
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
        },
        body: TaskBody {
            created_ms,
            payload: Bytes::from(format!("payload {id}")),
            headers: Vec::new(),
            idempotency_key: key.map(str::to_owned),
        },
    }))
}

fn succeed(id: TaskId, result: &'static [u8], at: u64) -> Mutation {
    Mutation::Succeed {
        id,
        result: Bytes::from_static(result),
        updated_ms: at,
    }
}

fn set_status(id: TaskId, status: TaskStatus, at: u64) -> Mutation {
    Mutation::Patch {
        id,
        patch: StatePatch {
            status: Some(status),
            last_error: Some(Some("why".into())),
            updated_ms: at,
            ..StatePatch::default()
        },
    }
}

#[test]
fn an_ack_keeps_state_and_result_without_the_payload_until_swept() {
    let f = Fixture::new();
    f.one(vec![insert(1, "q", 100, None)]);
    f.one(vec![succeed(1, b"the result", 5_000)]);
    let record = f.store.get_record(1).unwrap().expect("kept");
    assert_eq!(record.state.status, TaskStatus::Succeeded);
    assert_eq!(record.state.updated_ms, 5_000);
    assert_eq!(
        record.retained,
        Some(Retained {
            expires_ms: 5_000 + TTL,
            result: Bytes::from_static(b"the result"),
        })
    );
    assert_eq!(f.store.get_body(1).unwrap(), None, "payload dropped");

    // What the sweeper asks before it submits a sweep: nothing due until the TTL ends.
    assert!(!f.store.expiry_due(5_000 + TTL - 1).unwrap());
    assert!(f.store.expiry_due(5_000 + TTL).unwrap());
    let early = f.sweep(5_000 + TTL - 1, 100);
    assert_eq!((early.examined, early.removed_tasks), (0, 0));
    assert!(f.store.get_record(1).unwrap().is_some());
    let due = f.sweep(5_000 + TTL, 100);
    assert_eq!((due.examined, due.removed_tasks, due.more), (1, 1, false));
    assert!(due.removed_dead.is_empty());
    assert_eq!(f.store.get_record(1).unwrap(), None);
    assert!(!f.store.expiry_due(u64::MAX).unwrap(), "the index is empty");
    for prefix in [keys::STATE, keys::BODY, keys::RESULT, keys::EXPIRY] {
        assert_eq!(f.count(prefix), 0, "prefix {}", prefix as char);
    }
    f.writer.shutdown().unwrap();
}

#[test]
fn dead_tasks_expire_unless_redriven_and_queues_can_keep_nothing() {
    let f = Fixture::new();
    let none = QueueConfig {
        result_ttl_ms: 0,
        ..defaults()
    };
    f.one(vec![Mutation::PutQueue {
        name: Arc::from("keep-none"),
        config: none,
    }]);
    f.one(
        (1..=4)
            .map(|id| insert(id, if id <= 2 { "q" } else { "keep-none" }, 10, None))
            .collect(),
    );
    f.one(vec![
        set_status(1, TaskStatus::Dead, 100),
        set_status(2, TaskStatus::Dead, 100),
        set_status(2, TaskStatus::Pending, 200), // redriven
        set_status(3, TaskStatus::Dead, 100),
        succeed(4, b"gone", 100),
    ]);
    let dead = f.store.get_record(1).unwrap().unwrap();
    assert_eq!(dead.retained.map(|r| r.expires_ms), Some(100 + TTL));
    assert!(
        f.store.get_body(1).unwrap().is_some(),
        "a dead task keeps its payload"
    );
    assert_eq!(f.store.get_record(2).unwrap().unwrap().retained, None);
    let kept = f.store.get_record(3).unwrap().unwrap();
    assert_eq!((kept.state.status, kept.retained), (TaskStatus::Dead, None));
    assert_eq!(
        f.store.get_record(4).unwrap(),
        None,
        "no results kept: ack removes"
    );

    let stats = f.sweep(u64::MAX - 1, 100);
    assert_eq!(stats.removed_tasks, 1);
    assert_eq!(
        stats.removed_dead,
        vec![(Arc::from("q"), 1)],
        "task 1 was dead"
    );
    assert_eq!(f.store.get_record(1).unwrap(), None);
    let redriven = f
        .store
        .get_record(2)
        .unwrap()
        .expect("a redriven task stays");
    assert_eq!(redriven.state.status, TaskStatus::Pending);
    assert!(
        f.store.get_record(3).unwrap().is_some(),
        "kept until an operator acts"
    );
    f.writer.shutdown().unwrap();
}

#[test]
fn a_sweep_job_does_bounded_work_and_reports_more() {
    const N: u64 = 2_500;
    let f = Fixture::new();
    f.one((1..=N).map(|id| insert(id, "q", 10, None)).collect());
    f.one((1..=N).map(|id| succeed(id, b"", 100 + id % 7)).collect());
    assert_eq!(f.count(keys::EXPIRY), N as usize);
    let now = 100 + TTL + 7;
    let mut removed = 0;
    let mut jobs = 0;
    loop {
        let stats = f.sweep(now, 1_000);
        jobs += 1;
        assert!(stats.examined <= 1_000);
        removed += u64::from(stats.removed_tasks);
        if !stats.more {
            break;
        }
    }
    assert_eq!((removed, jobs), (N, 3));
    assert_eq!(
        f.count(keys::STATE) + f.count(keys::RESULT) + f.count(keys::EXPIRY),
        0
    );
    f.writer.shutdown().unwrap();
}

#[test]
fn idempotency_keys_are_claimed_once_per_window_within_and_across_batches() {
    let f = Fixture::new();
    let seen = f.batch(vec![
        vec![insert(1, "q", 100, Some("k"))],
        vec![
            insert(2, "q", 150, Some("k")),
            insert(3, "q", 150, Some("k2")),
        ],
        vec![insert(4, "other", 150, Some("k"))],
        vec![
            insert(5, "q", 160, Some("k2")),
            insert(6, "q", 160, Some("k2")),
        ],
    ]);
    let dups: Vec<Vec<Duplicate>> = seen.into_iter().map(|s| s.duplicates).collect();
    assert_eq!(dups[0], vec![]);
    assert_eq!(
        dups[1],
        vec![Duplicate {
            index: 0,
            original: 1
        }]
    );
    assert_eq!(dups[2], vec![], "keys are per queue");
    assert_eq!(
        dups[3],
        vec![
            Duplicate {
                index: 0,
                original: 3
            },
            Duplicate {
                index: 1,
                original: 3
            }
        ]
    );
    for (id, stored) in [
        (1, true),
        (2, false),
        (3, true),
        (4, true),
        (5, false),
        (6, false),
    ] {
        assert_eq!(
            f.store.get_state(id).unwrap().is_some(),
            stored,
            "task {id}"
        );
    }
    // The window survives a reopen, and holds whatever the first task became.
    let f = f.reopen();
    f.one(vec![succeed(1, b"", 200)]);
    let seen = f.one(vec![insert(7, "q", 100 + WINDOW - 1, Some("k"))]);
    assert_eq!(
        seen.duplicates,
        vec![Duplicate {
            index: 0,
            original: 1
        }]
    );
    // Past the window the key is free again, swept or not.
    let seen = f.one(vec![insert(8, "q", 100 + WINDOW, Some("k"))]);
    assert_eq!(seen.duplicates, vec![]);
    // The sweep forgets expired keys but not the key claimed again.
    let stats = f.sweep(150 + WINDOW, 100);
    assert_eq!(stats.removed_keys, 2, "k2 on q and k on other");
    let seen = f.one(vec![insert(9, "q", 150 + WINDOW, Some("k"))]);
    assert_eq!(
        seen.duplicates,
        vec![Duplicate {
            index: 0,
            original: 8
        }]
    );
    let stats = f.sweep(100 + 2 * WINDOW, 100);
    assert_eq!(stats.removed_keys, 1);
    assert_eq!(f.count(keys::DEDUP), 0);
    f.writer.shutdown().unwrap();
}

#[test]
fn a_zero_window_ignores_keys() {
    let f = Fixture::new();
    f.one(vec![Mutation::PutQueue {
        name: Arc::from("nodedup"),
        config: QueueConfig {
            dedup_window_ms: 0,
            ..defaults()
        },
    }]);
    let seen = f.one(vec![
        insert(1, "nodedup", 1, Some("k")),
        insert(2, "nodedup", 1, Some("k")),
    ]);
    assert!(seen.duplicates.is_empty());
    assert_eq!(f.count(keys::DEDUP), 0);
    f.writer.shutdown().unwrap();
}

fn numbered(producer: &str, sequence: u64) -> Mutation {
    Mutation::Numbered {
        producer: Arc::from(producer),
        sequence,
    }
}

/// A numbered publish: `ids` inserted at `at`, then its number.
fn publish(ids: &[TaskId], at: u64, producer: &str, sequence: u64) -> Vec<Mutation> {
    let mut muts: Vec<Mutation> = ids.iter().map(|&id| insert(id, "q", at, None)).collect();
    muts.push(numbered(producer, sequence));
    muts
}

fn dups(pairs: &[(usize, TaskId)]) -> Vec<Duplicate> {
    pairs
        .iter()
        .map(|&(index, original)| Duplicate { index, original })
        .collect()
}

#[test]
fn numbered_publishes_are_applied_once_within_and_across_batches_and_a_reopen() {
    let f = Fixture::new();
    let seen = f.batch(vec![
        publish(&[1, 2], 100, "p", 1),
        // The same publish sent again, in the same batch: new ids, none stored.
        publish(&[3, 4], 100, "p", 1),
        // Numbers need not be consecutive nor arrive in order.
        publish(&[5], 100, "p", 3),
        publish(&[6], 100, "other", 1),
        // A number used again for a different publish is refused.
        publish(&[7], 100, "p", 1),
    ]);
    for s in &seen {
        s.result.as_ref().expect("every job succeeds");
    }
    assert_eq!(seen[0].duplicates, vec![]);
    assert_eq!(seen[1].duplicates, dups(&[(0, 1), (1, 2)]));
    assert_eq!(seen[2].duplicates, vec![]);
    assert_eq!(seen[3].duplicates, vec![], "numbers are per producer");
    assert_eq!(seen[4].refused, Some(SequenceRefusal::Reused { tasks: 2 }));
    assert!(seen[..4].iter().all(|s| s.refused.is_none()));
    let stored = |f: &Fixture, id| f.store.get_state(id).unwrap().is_some();
    for (id, expected) in [
        (1, true),
        (2, true),
        (3, false),
        (4, false),
        (5, true),
        (6, true),
        (7, false),
    ] {
        assert_eq!(stored(&f, id), expected, "task {id}");
    }
    assert_eq!(f.count(keys::PRODUCER), 2, "one record per producer");
    assert_eq!(f.count(keys::DEDUP), 0, "no idempotency key per task");

    // Remembered across a reopen (the journal replays the record) and across batches.
    let f = f.reopen();
    assert!(
        f.store.allocate_ids(1) > 7,
        "ids of repeats are never reused"
    );
    let seen = f.one(publish(&[8], 200, "p", 3));
    assert_eq!(seen.duplicates, dups(&[(0, 5)]));
    let seen = f.one(publish(&[9], 200, "p", 2));
    assert_eq!(seen.duplicates, vec![], "the gap was never applied");
    assert!(stored(&f, 9) && !stored(&f, 8));
    // A task of a numbered publish that has a key of its own is also checked by it.
    let mut keyed = vec![
        insert(10, "q", 200, Some("k")),
        insert(11, "q", 200, Some("k")),
    ];
    keyed.push(numbered("p", 4));
    let seen = f.one(keyed);
    assert_eq!(seen.duplicates, dups(&[(1, 10)]));
    f.writer.shutdown().unwrap();
}

#[test]
fn a_number_older_than_the_remembered_ones_is_refused_and_stores_nothing() {
    let f = Fixture::new();
    let ring = PRODUCER_RING as u64;
    let jobs = (1..=ring + 1)
        .map(|seq| publish(&[seq], 100, "p", seq))
        .collect();
    let seen = f.batch(jobs);
    assert!(seen
        .iter()
        .all(|s| s.duplicates.is_empty() && s.refused.is_none()));
    let seen = f.one(publish(&[ring + 2], 100, "p", 1));
    assert_eq!(seen.refused, Some(SequenceRefusal::TooOld { floor: 2 }));
    assert_eq!(seen.duplicates, vec![]);
    assert_eq!(f.store.get_state(ring + 2).unwrap(), None);
    let seen = f.one(publish(&[ring + 3], 100, "p", 2));
    assert_eq!(seen.duplicates, dups(&[(0, 2)]), "the oldest remembered");
    f.writer.shutdown().unwrap();
}

#[test]
fn a_producer_is_forgotten_a_window_after_its_last_numbered_publish() {
    let f = Fixture::new();
    let window = PRODUCER_WINDOW_MS;
    f.one(publish(&[1], 100, "p", 1));
    f.one(publish(&[2], 100 + window - 10, "p", 2));
    // Due by its creation, but used since: kept, and due again a window after its use.
    let stats = f.sweep(100 + window, 100);
    assert_eq!((stats.examined, stats.removed_keys), (1, 0));
    assert_eq!(f.count(keys::PRODUCER), 1);
    assert_eq!(f.count(keys::EXPIRY), 1);
    let seen = f.one(publish(&[3], 100 + window, "p", 1));
    assert_eq!(seen.duplicates, dups(&[(0, 1)]), "still remembered");
    let stats = f.sweep(100 + 2 * window - 10, 100);
    assert_eq!((stats.examined, stats.removed_keys), (1, 1));
    assert_eq!(f.count(keys::PRODUCER), 0);
    assert_eq!(f.count(keys::EXPIRY), 0);
    // Forgotten: the same number is a new publish.
    let seen = f.one(publish(&[4], 100 + 2 * window, "p", 1));
    assert_eq!(seen.duplicates, vec![]);
    assert!(f.store.get_state(4).unwrap().is_some());
    f.writer.shutdown().unwrap();
}
