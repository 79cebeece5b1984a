//! Tests of where bodies live: sled holds only references; a body stays in the journal
//! until a checkpoint moves it (if still live) to a payload file; compaction gives
//! back payload files that are mostly dead; a clean restart and a crash copy both
//! read every live body back.

use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use tempfile::TempDir;

use super::tests::{body, commit, config, reopen, snapshot, state, TestDone};
use super::*;
use crate::model::{Mutation, NewTask};

fn insert_with(id: TaskId, payload: &[u8]) -> Muts {
    Muts::One(Mutation::Insert(Box::new(NewTask {
        id,
        state: state("q", 1_000),
        body: body(payload),
    })))
}

fn payload_of(id: TaskId) -> Vec<u8> {
    vec![(id % 251) as u8; 2000]
}

/// Every `B` value of tasks `1..=last` is a reference (no body in sled), and how
/// many point where (as the store reads them: the task table, then sled).
fn body_refs(store: &Store, last: TaskId) -> (usize, usize) {
    let (mut journal, mut payload) = (0, 0);
    for id in 1..=last {
        let Some(value) = store.task_record(tasks::Slot::Body, id).unwrap() else {
            continue;
        };
        assert!(
            value.len() <= record::BODY_REF_LEN,
            "sled holds a {}-byte body for task {id}",
            value.len(),
        );
        match record::decode_stored_body(&value).unwrap() {
            record::StoredBody::Ref(r) => match r.file {
                record::BodyFile::Journal(_) => journal += 1,
                record::BodyFile::Payload(_) => payload += 1,
            },
            record::StoredBody::Inline(_) => unreachable!("checked by length"),
        }
    }
    (journal, payload)
}

/// A store with 64 KiB segments (2 KiB bodies fill one every ~30 tasks; payload files
/// of 128 KiB) and its writer.
fn open_with_small_segments(dir: &TempDir) -> (StoreConfig, Store, Writer<TestDone>) {
    let mut config = config(dir, FsyncMode::Always);
    config.journal_segment_bytes = 64 * 1024;
    let store = Store::open(&config).unwrap();
    let writer = store.start_writer::<TestDone>();
    (config, store, writer)
}

/// Waits (bounded) until `done` holds; the checkpoint thread works on its own.
fn eventually(what: &str, mut done: impl FnMut() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(start.elapsed() < Duration::from_secs(60), "never: {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn bodies_leave_sled_move_to_payload_files_at_checkpoints_and_compaction_gives_space_back() {
    let dir = TempDir::new().unwrap();
    let (config, store, writer) = open_with_small_segments(&dir);
    let h = writer.handle();
    for id in 1..=600 {
        commit(&h, insert_with(id, &payload_of(id))).unwrap();
    }
    eventually("checkpoints moved bodies to payload files", || {
        body_refs(&store, 600).1 > 400
    });
    let (in_journal, in_payload) = body_refs(&store, 600);
    assert_eq!(in_journal + in_payload, 600);
    // Nine tenths are consumed; what stays must stay readable, what goes must give
    // its space back once more checkpoints have run (they compact half-dead files).
    for id in (1..=600).filter(|id| id % 10 != 0) {
        commit(&h, Muts::One(Mutation::Remove { id })).unwrap();
    }
    let mut next = 601;
    eventually(
        "compaction brought the payload files near their live bytes",
        || {
            // New publishes (removed at once) roll segments, so checkpoints keep coming.
            for _ in 0..40 {
                commit(&h, insert_with(next, &payload_of(next))).unwrap();
                commit(&h, Muts::One(Mutation::Remove { id: next })).unwrap();
                next += 1;
            }
            let (disk, live) = store.payload_disk_bytes();
            // Live bytes, twice at most, plus the file being appended to.
            disk <= 2 * live + 2 * config.journal_segment_bytes
        },
    );
    let (disk, live) = store.payload_disk_bytes();
    assert!(live >= 60 * 2000, "live {live} bytes, disk {disk}");
    for id in 1..=600 {
        let got = store.get_body(id).unwrap();
        if id % 10 == 0 {
            assert_eq!(got, Some(body(&payload_of(id))), "body of {id}");
        } else {
            assert_eq!(got, None);
        }
    }
    assert!(writer.stats().checkpoints.load(Relaxed) > 2);
    // A copy taken now (a crash) and a clean restart both read every live body.
    let copy = dir.path().join("crash");
    snapshot(&config.path, &copy);
    writer.shutdown().unwrap();
    drop(store);
    let mut copied = config.clone();
    copied.path = copy;
    for config in [copied, config.clone()] {
        let store = reopen(&config);
        for id in (10..=600).step_by(10) {
            assert_eq!(store.get_body(id).unwrap(), Some(body(&payload_of(id))));
        }
        assert_eq!(body_refs(&store, 600).0 + body_refs(&store, 600).1, 60);
    }
    // After the clean stop there is no journal: every live body is in a payload file.
    let store = reopen(&config);
    assert_eq!(body_refs(&store, 600), (0, 60));
    assert_eq!(journal::disk_bytes(&config.path.join(JOURNAL_DIR)), 0);
}

/// A crash leaves live bodies in the journal segments the restart replays: the
/// checkpoint that drops those segments scans them and moves every one, although the
/// writer's notes of which ids each segment holds (`relocate::JournalBodyIds`) cover
/// only the segments it created after the restart.
#[test]
fn bodies_in_segments_from_before_a_crash_are_moved_by_the_checkpoint_that_drops_them() {
    let dir = TempDir::new().unwrap();
    let (config, store, writer) = open_with_small_segments(&dir);
    let h = writer.handle();
    // Twenty live bodies (~40 KiB of a 64 KiB segment): no roll, no checkpoint yet.
    for id in 1..=20 {
        commit(&h, insert_with(id, &payload_of(id))).unwrap();
    }
    assert_eq!(body_refs(&store, 20), (20, 0));
    let copy = dir.path().join("crash");
    snapshot(&config.path, &copy);
    writer.shutdown().unwrap();
    drop(store);
    let mut copied = config.clone();
    copied.path = copy;
    let store = Store::open(&copied).unwrap();
    assert_eq!(
        body_refs(&store, 20),
        (20, 0),
        "replayed, still in the journal"
    );
    let writer = store.start_writer::<TestDone>();
    let h = writer.handle();
    // New tasks, removed at once, roll segments until a checkpoint drops the old one.
    let mut next = 21;
    eventually("the bodies from before the crash left the journal", || {
        for _ in 0..40 {
            commit(&h, insert_with(next, &payload_of(next))).unwrap();
            commit(&h, Muts::One(Mutation::Remove { id: next })).unwrap();
            next += 1;
        }
        body_refs(&store, 20) == (0, 20)
    });
    for id in 1..=20 {
        assert_eq!(store.get_body(id).unwrap(), Some(body(&payload_of(id))));
    }
    assert!(writer.stats().checkpoints.load(Relaxed) > 0);
    writer.shutdown().unwrap();
}

#[test]
fn a_body_published_and_removed_between_checkpoints_never_reaches_a_payload_file() {
    let dir = TempDir::new().unwrap();
    let store = Store::open(&config(&dir, FsyncMode::Always)).unwrap();
    let writer = store.start_writer::<TestDone>();
    let h = writer.handle();
    for id in 1..=100 {
        commit(&h, insert_with(id, &payload_of(id))).unwrap();
        assert_eq!(store.get_body(id).unwrap(), Some(body(&payload_of(id))));
        commit(&h, Muts::One(Mutation::Remove { id })).unwrap();
    }
    commit(&h, insert_with(101, b"kept")).unwrap();
    writer.shutdown().unwrap();
    // The last checkpoint moved the one live body; nothing else was ever copied.
    let (disk, live) = store.payload_disk_bytes();
    let expected = u64::try_from(record_len(b"kept")).unwrap();
    assert_eq!((disk, live), (expected + 16, expected));
}

fn record_len(payload: &[u8]) -> usize {
    let mut out = Vec::new();
    record::encode_body(&body(payload), &mut out).unwrap();
    out.len()
}

/// Overwrites task `id`'s body where its reference points (a journal segment).
fn spoil_body_on_disk(store: &Store, dir: &TempDir, id: TaskId) {
    use std::os::unix::fs::FileExt;
    let value = store.task_record(tasks::Slot::Body, id).unwrap().unwrap();
    let record::StoredBody::Ref(r) = record::decode_stored_body(&value).unwrap() else {
        panic!("not a reference");
    };
    let record::BodyFile::Journal(segment) = r.file else {
        panic!("not in the journal");
    };
    let path = journal::segment_file(&dir.path().join("data").join(JOURNAL_DIR), segment);
    let file = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    file.write_all_at(&vec![0xee; r.len as usize], r.offset)
        .unwrap();
}

/// A cluster member that follows keeps no bodies in memory (it delivers nothing):
/// its bodies read back from disk, and once it leads the cache fills again.
#[test]
fn a_store_not_caching_bodies_reads_them_from_disk_and_caches_again_once_turned_on() {
    let dir = TempDir::new().unwrap();
    let config = config(&dir, FsyncMode::Always);
    let store = Store::open(&config).unwrap();
    let writer = store.start_writer::<TestDone>();
    let h = writer.handle();
    commit(&h, insert_with(1, &payload_of(1))).unwrap();
    store.set_caching_bodies(false);
    commit(&h, insert_with(2, &payload_of(2))).unwrap();
    // Read from disk, and right.
    assert_eq!(store.get_body(1).unwrap(), Some(body(&payload_of(1))));
    assert_eq!(store.get_body(2).unwrap(), Some(body(&payload_of(2))));
    // Spoilt on disk: nothing in memory hides it (turning it off emptied the cache).
    spoil_body_on_disk(&store, &dir, 1);
    spoil_body_on_disk(&store, &dir, 2);
    for id in [1, 2] {
        let err = store.get_body(id).unwrap_err();
        assert!(matches!(err, StoreError::Corrupt { .. }), "{err:?}");
    }
    store.set_caching_bodies(true);
    commit(&h, insert_with(3, &payload_of(3))).unwrap();
    spoil_body_on_disk(&store, &dir, 3);
    assert_eq!(
        store.get_body(3).unwrap(),
        Some(body(&payload_of(3))),
        "cached"
    );
    for id in 1..=3 {
        commit(&h, Muts::One(Mutation::Remove { id })).unwrap();
    }
    writer.shutdown().unwrap();
}

#[test]
fn a_body_read_soon_after_its_publish_comes_from_memory_within_a_bounded_cache() {
    let dir = TempDir::new().unwrap();
    let config = config(&dir, FsyncMode::Always);
    let store = Store::open(&config).unwrap();
    let writer = store.start_writer::<TestDone>();
    let h = writer.handle();
    commit(&h, insert_with(1, &payload_of(1))).unwrap();
    commit(&h, insert_with(2, &payload_of(2))).unwrap();
    // The bytes on disk are spoilt: only a body kept in memory reads back whole.
    spoil_body_on_disk(&store, &dir, 1);
    spoil_body_on_disk(&store, &dir, 2);
    assert_eq!(store.get_body(1).unwrap(), Some(body(&payload_of(1))));
    // A removed body is gone from memory too.
    commit(&h, Muts::One(Mutation::Remove { id: 1 })).unwrap();
    assert_eq!(store.get_body(1).unwrap(), None);
    // The cache is bounded (an eighth of cache_bytes): enough later bodies push body
    // 2 out, and then it is read from disk, where it is spoilt.
    let later = 2 * body_cache_bytes(config.cache_bytes) / payload_of(0).len();
    let ids: Vec<TaskId> = (3..(3 + later as TaskId)).collect();
    for chunk in ids.chunks(100) {
        let inserts = chunk.iter().map(|&id| {
            Mutation::Insert(Box::new(NewTask {
                id,
                state: state("q", 1_000),
                body: body(&payload_of(id)),
            }))
        });
        commit(&h, Muts::Many(inserts.collect())).unwrap();
    }
    let err = store.get_body(2).unwrap_err();
    assert!(matches!(err, StoreError::Corrupt { .. }), "{err:?}");
    // Nothing spoilt stays live for the last checkpoint to move.
    commit(&h, Muts::One(Mutation::Remove { id: 2 })).unwrap();
    writer.shutdown().unwrap();
}

#[test]
fn removing_bodies_that_moved_to_payload_files_lowers_their_live_bytes() {
    let dir = TempDir::new().unwrap();
    let (config, store, writer) = open_with_small_segments(&dir);
    let h = writer.handle();
    for id in 1..=100 {
        commit(&h, insert_with(id, &payload_of(id))).unwrap();
    }
    let journal_dir = config.path.join(JOURNAL_DIR);
    eventually("the checkpoints of the filled segments finished", || {
        // Spares (recycled segments) are not segments.
        std::fs::read_dir(&journal_dir)
            .unwrap()
            .filter(|e| e.as_ref().unwrap().path().extension() == Some("log".as_ref()))
            .count()
            == 1
    });
    let moved: Vec<TaskId> = (1..=100)
        .filter(|&id| {
            let value = store.task_record(tasks::Slot::Body, id).unwrap().unwrap();
            matches!(
                record::decode_stored_body(&value).unwrap(),
                record::StoredBody::Ref(record::BodyRef {
                    file: record::BodyFile::Payload(_),
                    ..
                })
            )
        })
        .collect();
    assert!(moved.len() >= 60, "{} bodies moved", moved.len());
    let (_, live_before) = store.payload_disk_bytes();
    let removes = moved.iter().map(|&id| Mutation::Remove { id }).collect();
    commit(&h, Muts::Many(removes)).unwrap();
    // The removals reach sled (and the live bytes) when the task table is applied:
    // at the latest by the last checkpoint.
    writer.shutdown().unwrap();
    let (_, live_after) = store.payload_disk_bytes();
    // A checkpoint that ran meanwhile may have moved the ~30 bodies of the open
    // segment (live, so counted); the removed ones must no longer count.
    let body_len = record_len(&payload_of(0)) as u64;
    let removed = moved.len() as u64 * body_len;
    assert!(
        live_after + removed <= live_before + 32 * body_len,
        "live bytes {live_before} -> {live_after} after removing {removed}"
    );
}

#[test]
fn a_preview_reads_a_prefix_checks_the_whole_body_and_skips_headers_too_long_to_read() {
    let dir = TempDir::new().unwrap();
    let config = config(&dir, FsyncMode::Always);
    let store = Store::open(&config).unwrap();
    let writer = store.start_writer::<TestDone>();
    let h = writer.handle();
    let big: Vec<u8> = (0..300_000u32).map(|i| (i % 253) as u8).collect();
    commit(&h, insert_with(1, &big)).unwrap();
    commit(&h, insert_with(2, b"tiny")).unwrap();
    let mut long_headers = body(b"p");
    long_headers.headers = vec![("big".into(), Bytes::from(vec![7u8; 100_000]))];
    commit(
        &h,
        Muts::One(Mutation::Insert(Box::new(NewTask {
            id: 3,
            state: state("q", 1_000),
            body: long_headers,
        }))),
    )
    .unwrap();
    let check = |store: &Store| {
        let p = store.get_body_preview(1, 1000).unwrap().unwrap();
        assert_eq!((&p.payload[..], p.payload_len), (&big[..1000], 300_000));
        assert_eq!(p.headers, Some(body(b"").headers));
        let p = store.get_body_preview(2, 1000).unwrap().unwrap();
        assert_eq!((&p.payload[..], p.payload_len), (&b"tiny"[..], 4));
        let p = store.get_body_preview(3, 1000).unwrap().unwrap();
        assert_eq!(
            (&p.payload[..], p.payload_len, p.headers),
            (&b"p"[..], 1, None)
        );
        assert_eq!(store.get_body_preview(4, 1000).unwrap(), None);
    };
    // From the journal segment, then from payload files after a clean stop.
    check(&store);
    writer.shutdown().unwrap();
    drop(store);
    let store = reopen(&config);
    assert_eq!(body_refs(&store, 3), (0, 3));
    check(&store);
    // A byte damaged far past the preview fails the preview's checksum all the same.
    let value = store.inner.dbs.get().get(keys::body(1)).unwrap().unwrap();
    let record::StoredBody::Ref(r) = record::decode_stored_body(&value).unwrap() else {
        unreachable!("checked by body_refs")
    };
    let record::BodyFile::Payload(n) = r.file else {
        unreachable!("checked by body_refs")
    };
    let path = payload::payload_path(&config.path.join(payload::PAYLOAD_DIR), n);
    let file = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&file, &[0xff], r.offset + 250_000).unwrap();
    drop(file);
    let err = store.get_body_preview(1, 1000).unwrap_err();
    assert!(err.to_string().contains("checksum"), "{err}");
}
