//! Tests of schedule records through the store's public API: a tick's task and the
//! schedule's last run are one job (both or neither, across a reopen), and schedules
//! come back from a reopen in name order.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tempfile::TempDir;

use super::*;
use crate::model::{CatchUp, Mutation, NewTask, Schedule, StatePatch, TaskStatus};

struct Tx(crossbeam_channel::Sender<Result<(), StoreError>>);

impl Completion for Tx {
    fn complete(self, result: Result<(), StoreError>) {
        let _ = self.0.send(result);
    }
}

fn schedule(name: &str, last_run_ms: u64) -> Schedule {
    Schedule {
        name: Arc::from(name),
        queue: Arc::from("reports"),
        cron: "*/5 * * * * *".into(),
        tz: "UTC".into(),
        payload: Bytes::from_static(b"tick"),
        headers: Vec::new(),
        priority: 0,
        max_attempts: 0,
        catch_up: CatchUp::One,
        paused: false,
        since_ms: 1_000,
        last_run_ms,
        last_task: 0,
        created_ms: 1_000,
    }
}

fn insert(id: TaskId) -> Mutation {
    Mutation::Insert(Box::new(NewTask {
        id,
        state: TaskState {
            queue: Arc::from("reports"),
            status: TaskStatus::Pending,
            priority: 0,
            attempts: 0,
            max_attempts: 0,
            lease_ms: 0,
            not_before_ms: 0,
            created_ms: 5_000,
            updated_ms: 5_000,
            last_error: None,
            expires_ms: 0,
        },
        body: TaskBody::default(),
    }))
}

fn commit(writer: &Writer<Tx>, muts: Vec<Mutation>) -> Result<(), StoreError> {
    let (tx, rx) = crossbeam_channel::bounded(1);
    writer.handle().submit(Muts::Many(muts), Some(Tx(tx)));
    rx.recv_timeout(Duration::from_secs(10))
        .expect("completion")
}

fn open(dir: &TempDir) -> Store {
    // Some tests reopen the directory: retry the race with sled's lock release.
    super::tests::reopen(&StoreConfig::new(
        dir.path().join("data"),
        FsyncMode::Always,
    ))
}

#[test]
fn a_ticks_task_and_last_run_are_stored_together_or_not_at_all() {
    let dir = TempDir::new().unwrap();
    {
        let store = open(&dir);
        // A state record that cannot be patched makes the whole job fail.
        store
            .inner
            .dbs
            .get()
            .insert(keys::state(99), &b"\x01garbage"[..])
            .unwrap();
        let writer = store.start_writer::<Tx>();
        commit(
            &writer,
            vec![Mutation::PutSchedule(Box::new(schedule("b", 0)))],
        )
        .unwrap();
        let mut tick = schedule("b", 5_000);
        tick.last_task = 7;
        commit(
            &writer,
            vec![insert(7), Mutation::PutSchedule(Box::new(tick))],
        )
        .unwrap();
        let failed = commit(
            &writer,
            vec![
                insert(8),
                Mutation::PutSchedule(Box::new(schedule("b", 10_000))),
                Mutation::Patch {
                    id: 99,
                    patch: StatePatch::default(),
                },
            ],
        );
        assert!(
            matches!(failed, Err(StoreError::Corrupt { .. })),
            "{failed:?}"
        );
        commit(
            &writer,
            vec![Mutation::PutSchedule(Box::new(schedule("a", 0)))],
        )
        .unwrap();
        commit(
            &writer,
            vec![Mutation::PutSchedule(Box::new(schedule("c", 0)))],
        )
        .unwrap();
        commit(
            &writer,
            vec![Mutation::RemoveSchedule {
                name: Arc::from("c"),
            }],
        )
        .unwrap();
        store.inner.dbs.get().remove(keys::state(99)).unwrap();
        writer.shutdown().unwrap();
    }
    let store = open(&dir);
    let schedules = store.schedules().unwrap();
    let names: Vec<&str> = schedules.iter().map(|s| &*s.name).collect();
    assert_eq!(names, ["a", "b"]);
    assert_eq!(
        schedules[1].last_run_ms, 5_000,
        "the failed tick left its last run"
    );
    assert_eq!(schedules[1].last_task, 7);
    assert!(store.get_state(7).unwrap().is_some());
    assert_eq!(
        store.get_state(8).unwrap(),
        None,
        "the failed tick left its task"
    );
}

#[test]
fn a_damaged_schedule_record_is_reported_with_its_key() {
    let dir = TempDir::new().unwrap();
    let store = open(&dir);
    store
        .inner
        .dbs
        .get()
        .insert(keys::schedule("x"), &b"\x01\x00"[..])
        .unwrap();
    let err = store.schedules().unwrap_err();
    let StoreError::Corrupt { key, .. } = err else {
        panic!("expected Corrupt, got {err:?}");
    };
    assert_eq!(key, keys::hex(b"Cx"));
}
