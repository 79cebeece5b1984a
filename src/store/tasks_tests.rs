//! Tests of the task table (`tasks.rs`): what readers see across generations, what a
//! generation leaves in sled when it is applied, and that a task published and
//! settled within one generation never reaches sled.

use bytes::Bytes;
use sled::InlineArray;
use tempfile::TempDir;

use super::record::{BodyFile, BodyRef};
use super::tasks::{Changes, Slot, TaskTable};
use super::tests::{commit, config, insert, open, TestDone};
use super::*;
use crate::model::{Mutation, TaskStatus};

fn value(text: &str) -> Value {
    Some(InlineArray::from(text.as_bytes()))
}

type Value = Option<InlineArray>;

fn group(changes: &[(TaskId, Slot, Value)]) -> Changes {
    let mut group = Changes::default();
    for (id, slot, v) in changes {
        group.entry(*id).or_default().set(*slot, v.clone());
    }
    group
}

fn sled_value(store: &Store, slot: Slot, id: TaskId) -> Value {
    store.inner.dbs.get().get(slot.key(id)).unwrap()
}

#[test]
fn readers_see_the_newest_generation_and_fresh_tasks_need_nothing_from_sled() {
    // Ids from 100 on are fresh (nothing of them in sled or older generations).
    let table = TaskTable::new(usize::MAX, 100);
    assert_eq!(table.get(Slot::State, 7), None, "unknown: read sled");
    assert!(!table.merge(&mut group(&[
        (7, Slot::State, value("7a")),
        (100, Slot::State, value("100a")),
    ])));
    assert_eq!(table.get(Slot::State, 7), Some(value("7a")));
    assert_eq!(table.get(Slot::Body, 7), None, "7 is not fresh: sled knows");
    assert_eq!(table.get(Slot::Body, 100), Some(None), "fresh: no body");
    // Frozen with the watermark past every id inserted so far (100).
    assert_eq!(table.freeze(101), 1);
    table.merge(&mut group(&[(7, Slot::State, None)]));
    assert_eq!(table.get(Slot::State, 7), Some(None), "the newest wins");
    // A fresh task whose records are all removed leaves the table.
    table.merge(&mut group(&[(101, Slot::State, value("101"))]));
    table.merge(&mut group(&[
        (101, Slot::State, None),
        (101, Slot::Body, None),
    ]));
    assert_eq!(table.records(Slot::State).get(&101), None);
    assert_eq!(
        table.get(Slot::State, 101),
        None,
        "sled (which never had it) answers"
    );
    // Freezing raised the fresh bound: 100 lives in a frozen generation, so it is
    // not fresh in the active one.
    table.merge(&mut group(&[(100, Slot::Result, value("r"))]));
    assert_eq!(table.get(Slot::State, 100), Some(value("100a")));
    let states = table.records(Slot::State);
    assert_eq!(states.get(&7), Some(&None));
    assert_eq!(states.get(&100), Some(&value("100a")));
}

#[test]
fn a_generation_applied_to_sled_skips_what_a_newer_one_overrides() {
    let dir = TempDir::new().unwrap();
    let store = open(&dir, FsyncMode::Always);
    let db = store.inner.dbs.get();
    // Task 5 is older than the table: its body is in payload file 3.
    let r = BodyRef {
        file: BodyFile::Payload(3),
        offset: 0,
        len: 40,
        crc: 0,
    };
    db.insert(keys::body(5), &r.encode()[..]).unwrap();
    store.inner.bodies.added(3, 40);
    let table = TaskTable::new(usize::MAX, 100);
    table.merge(&mut group(&[
        (5, Slot::State, value("5 acked")),
        (5, Slot::Result, value("5 result")),
        (5, Slot::Body, None),
        // Published and settled within the generation: no body reaches sled.
        (100, Slot::State, value("100")),
        (100, Slot::Body, value("100 body")),
    ]));
    table.merge(&mut group(&[(100, Slot::Body, None)]));
    table.freeze(101);
    // The next generation overrides 5's result before the first is applied.
    table.merge(&mut group(&[(5, Slot::Result, None)]));
    assert!(table.apply_oldest(&db, &store.inner.bodies).unwrap());
    assert_eq!(sled_value(&store, Slot::State, 5), value("5 acked"));
    assert_eq!(sled_value(&store, Slot::Result, 5), None, "skipped");
    assert_eq!(sled_value(&store, Slot::Body, 5), None);
    assert_eq!(
        store.inner.bodies.live(3),
        0,
        "the payload file's bytes freed"
    );
    assert_eq!(sled_value(&store, Slot::State, 100), value("100"));
    assert_eq!(sled_value(&store, Slot::Body, 100), None);
    // Readers still see the newer generation's removal.
    assert_eq!(table.get(Slot::Result, 5), Some(None));
    assert!(!table.apply_oldest(&db, &store.inner.bodies).unwrap());
    assert_eq!(table.freeze(200), 1);
    assert!(table.apply_oldest(&db, &store.inner.bodies).unwrap());
    assert!(table.is_empty());
    assert_eq!(
        table.get(Slot::State, 5),
        None,
        "sled holds the truth again"
    );
}

#[test]
fn a_task_published_and_acked_within_a_generation_reaches_sled_only_as_its_result() {
    let dir = TempDir::new().unwrap();
    let config = config(&dir, FsyncMode::Always);
    let store = Store::open(&config).unwrap();
    let writer = store.start_writer::<TestDone>();
    let h = writer.handle();
    commit(&h, Muts::Many(vec![insert(1, "q"), insert(2, "q")])).unwrap();
    let ack = Mutation::Succeed {
        id: 1,
        result: Bytes::from_static(b"done"),
        updated_ms: 2_000,
    };
    commit(&h, Muts::One(ack)).unwrap();
    // Everything is in the table, nothing of it in sled yet; readers see it all.
    for slot in [Slot::State, Slot::Body, Slot::Result] {
        for id in [1, 2] {
            assert_eq!(sled_value(&store, slot, id), None, "{slot:?} of {id}");
        }
    }
    assert_eq!(
        store.get_state(1).unwrap().unwrap().status,
        TaskStatus::Succeeded
    );
    assert_eq!(
        store
            .get_record(1)
            .unwrap()
            .unwrap()
            .retained
            .unwrap()
            .result,
        "done"
    );
    assert!(store.get_body(2).unwrap().is_some());
    // The last checkpoint applies what is left: task 1's state and result, task 2
    // whole; task 1's body reference never reached sled.
    writer.shutdown().unwrap();
    assert!(sled_value(&store, Slot::State, 1).is_some());
    assert!(sled_value(&store, Slot::Result, 1).is_some());
    assert_eq!(sled_value(&store, Slot::Body, 1), None);
    assert!(sled_value(&store, Slot::Body, 2).is_some());
    assert!(store.inner.tasks.is_empty());
}
