//! The store's model test: random operation sequences with restarts (clean ones,
//! which checkpoint everything and move live bodies to payload files), checked
//! against `BTreeMap`s. Minimised failures are kept in `model_tests.regressions`.

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::Bytes;
use proptest::prelude::*;
use proptest::test_runner::FileFailurePersistence;

use crossbeam_channel::{Receiver, Sender};
use tempfile::TempDir;

use super::tests::{config, reopen, state, Tx};
use super::*;
use crate::model::{Mutation, NewTask, QueueConfig, StatePatch, TaskStatus};

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
        let store = reopen(config);
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
    for item in crate::store::pool::scan_prefix(&store.inner.dbs.get(), keys::DEDUP) {
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
    // Minimised failures are kept beside this file (`model_tests.regressions`) and replayed
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
        small_table in any::<bool>(),
    ) {
        let dir = TempDir::new().unwrap();
        let mut config = config(&dir, fsync);
        if small_table {
            // A task-table generation of 4 KiB: frozen every few groups, applied to
            // sled by the checkpoint thread (or the writer) while the writer goes on.
            config.cache_bytes = 64 * 1024;
        }
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
