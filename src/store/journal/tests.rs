//! Tests of the journal's segment files and record format (and where values lie).

use super::*;

type Writes = Vec<(Vec<u8>, Option<Vec<u8>>)>;

fn replay(dir: &Path, floor: u64) -> (Journal, Vec<Writes>) {
    let mut records = vec![Vec::new()];
    let (journal, _) = Journal::open(dir, 4096, floor, |e| {
        match e {
            Entry::Put(k, v, _) => records
                .last_mut()
                .unwrap()
                .push((k.to_vec(), Some(v.to_vec()))),
            Entry::Remove(k) => records.last_mut().unwrap().push((k.to_vec(), None)),
            Entry::End => records.push(Vec::new()),
        }
        Ok(())
    })
    .unwrap();
    records.pop();
    (journal, records)
}

fn append(j: &mut Journal, writes: &[(&[u8], Option<&[u8]>)]) -> Option<u64> {
    j.begin();
    for (k, v) in writes {
        j.put(k, *v);
    }
    j.append(true).unwrap()
}

#[test]
fn records_come_back_in_order_across_segments() {
    let dir = tempfile::tempdir().unwrap();
    let (mut j, none) = replay(dir.path(), 0);
    assert!(none.is_empty());
    let big = vec![7u8; 1500];
    let mut sealed = Vec::new();
    for i in 0u8..10 {
        sealed.push(append(&mut j, &[(&[i], Some(&big)), (b"gone", None)]));
    }
    assert!(sealed.iter().any(Option::is_some), "4 KiB segments filled");
    drop(j);
    let (j, records) = replay(dir.path(), 0);
    assert_eq!(records.len(), 10);
    for (i, r) in records.iter().enumerate() {
        assert_eq!(r[0], (vec![i as u8], Some(big.clone())));
        assert_eq!(r[1], (b"gone".to_vec(), None));
    }
    assert_eq!(j.next_seq(), 10);
    // A floor skips what sled already holds, and those segments are removed.
    let before = list(dir.path()).unwrap().len();
    let (_, records) = replay(dir.path(), 6);
    assert_eq!(records.len(), 4);
    assert_eq!(records[0][0].0, vec![6]);
    assert!(list(dir.path()).unwrap().len() < before);
}

#[test]
fn a_torn_or_corrupt_tail_ends_the_journal_and_appends_go_on_after_it() {
    let dir = tempfile::tempdir().unwrap();
    let (mut j, _) = replay(dir.path(), 0);
    for i in 0u8..3 {
        append(&mut j, &[(&[i], Some(b"value"))]);
    }
    drop(j);
    // Flip a byte of the last record's body.
    let (_, path) = list(dir.path()).unwrap().pop().unwrap();
    let mut data = std::fs::read(&path).unwrap();
    let third = 2 * (HEADER + 1 + 4 + 1 + 4 + 5);
    data[third + HEADER + 2] ^= 0xff;
    std::fs::write(&path, &data).unwrap();
    let (mut j, records) = replay(dir.path(), 0);
    assert_eq!(records.len(), 2, "the corrupt record is not replayed");
    // Its number was used: the next record goes to a new segment after it.
    assert_eq!(j.next_seq(), 2);
    append(&mut j, &[(b"after", Some(b"x"))]);
    drop(j);
    let (_, records) = replay(dir.path(), 0);
    assert_eq!(records.len(), 3);
    assert_eq!(records[2][0].0, b"after".to_vec());
}

#[test]
fn a_failed_write_is_never_replayed_before_later_records() {
    let dir = tempfile::tempdir().unwrap();
    let (mut j, _) = replay(dir.path(), 0);
    append(&mut j, &[(b"a", Some(b"1"))]);
    // Simulate a record whose write failed: its number is used, the segment sealed.
    j.begin();
    j.put(b"lost", Some(b"?"));
    j.next_seq += 1;
    j.current = None;
    append(&mut j, &[(b"b", Some(b"2"))]);
    drop(j);
    let (_, records) = replay(dir.path(), 0);
    let keys: Vec<_> = records.iter().map(|r| r[0].0.clone()).collect();
    assert_eq!(keys, vec![b"a".to_vec(), b"b".to_vec()]);
}

#[test]
fn recycling_keeps_the_segment_holding_the_floor() {
    let dir = tempfile::tempdir().unwrap();
    let (mut j, _) = replay(dir.path(), 0);
    let big = vec![1u8; 3000];
    for i in 0u8..5 {
        append(&mut j, &[(&[i], Some(&big))]);
    }
    assert_eq!(list(dir.path()).unwrap().len(), 5, "one record per segment");
    let floor = j.seal().unwrap();
    assert_eq!(floor, 5);
    // Two of the three are kept as spares, the third removed.
    assert_eq!(recycle_below(dir.path(), 3, 4096).unwrap(), 3);
    assert_eq!(spares(dir.path()).unwrap().len(), MAX_SPARES);
    assert_eq!(list(dir.path()).unwrap().len(), 2);
    drop(j);
    let (_, records) = replay(dir.path(), 3);
    assert_eq!(records.len(), 2);
    assert_eq!(
        recycle_below(dir.path(), floor, 4096).unwrap(),
        1,
        "the newest stays"
    );
}

#[test]
fn a_recycled_segment_replays_only_the_records_written_into_it_again() {
    let dir = tempfile::tempdir().unwrap();
    let (mut j, _) = replay(dir.path(), 0);
    // Two full 4 KiB segments of small records, then a third holding the floor.
    let value = vec![3u8; 100];
    let mut n = 0u8;
    while list(dir.path()).unwrap().len() < 3 {
        append(&mut j, &[(&[n], Some(&value))]);
        n += 1;
    }
    let floor = j.seal().unwrap();
    let old_segments = list(dir.path()).unwrap();
    // The newest sealed segment stays until a successor exists.
    assert_eq!(recycle_below(dir.path(), floor, 4096).unwrap(), 2);
    assert_eq!(spares(dir.path()).unwrap().len(), MAX_SPARES);
    assert_eq!(list(dir.path()).unwrap().len(), 1);
    // The next segment is a spare, renamed, still holding the old records past the
    // few new ones. The new records are the old ones' size, so the first old record
    // left starts exactly where the next new one would: only its number tells.
    let new_value = vec![9u8; 100];
    for i in 0u8..3 {
        append(&mut j, &[(&[200 + i], Some(&new_value))]);
    }
    let segments = list(dir.path()).unwrap();
    assert_eq!(segments.len(), 2);
    assert_eq!(segments[1].0, floor);
    assert!(old_segments.iter().all(|(first, _)| *first < floor));
    assert_eq!(spares(dir.path()).unwrap().len(), MAX_SPARES - 1);
    let data = std::fs::read(&segments[1].1).unwrap();
    assert_eq!(data.len(), 4096, "a spare is not truncated");
    assert!(
        data[200..].windows(value.len()).any(|w| w == value),
        "the old records are still there"
    );
    drop(j);
    let (j, records) = replay(dir.path(), floor);
    assert_eq!(records.len(), 3, "only the records written after recycling");
    for (i, r) in records.iter().enumerate() {
        assert_eq!(r[0], (vec![200 + i as u8], Some(new_value.clone())));
    }
    assert_eq!(j.next_seq(), floor + 3);
    // Spares count as journal disk, and go at the final removal.
    assert_eq!(disk_bytes(dir.path()), 2 * 4096);
    drop(j);
    remove_all(dir.path()).unwrap();
    assert_eq!(disk_bytes(dir.path()), 0);
    assert!(spares(dir.path()).unwrap().is_empty());
}

#[test]
fn spares_of_another_size_are_dropped_and_oversized_segments_never_kept() {
    let dir = tempfile::tempdir().unwrap();
    let (mut j, _) = replay(dir.path(), 0);
    append(&mut j, &[(b"big", Some(&[5u8; 10_000]))]);
    append(&mut j, &[(b"small", Some(b"x"))]);
    let floor = j.seal().unwrap();
    // The first segment grew for its record: removed, not kept.
    assert_eq!(recycle_below(dir.path(), floor, 4096).unwrap(), 1);
    assert!(spares(dir.path()).unwrap().is_empty());
    append(&mut j, &[(b"next", Some(b"y"))]);
    let floor = j.seal().unwrap();
    assert_eq!(recycle_below(dir.path(), floor, 4096).unwrap(), 1);
    assert_eq!(spares(dir.path()).unwrap().len(), 1);
    drop(j);
    // Opened with another segment size, the spare is of no use.
    let (_, _) = Journal::open(dir.path(), 8192, floor, |_| Ok(())).unwrap();
    assert!(spares(dir.path()).unwrap().is_empty());
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(64))]

    /// Whatever a crash or a bad disk leaves in a segment, replay never panics and
    /// applies exactly a prefix of the records that were written.
    #[test]
    fn damaged_segments_replay_a_prefix_and_never_panic(
        values in proptest::collection::vec(proptest::collection::vec(proptest::prelude::any::<u8>(), 0..300), 1..12),
        cut in proptest::prelude::any::<proptest::sample::Index>(),
        flips in proptest::collection::vec((proptest::prelude::any::<proptest::sample::Index>(), 1u8..=255), 0..4),
        garbage in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..64),
    ) {
        let dir = tempfile::tempdir().unwrap();
        let (mut j, _) = Journal::open(dir.path(), 1 << 20, 0, |_| Ok(())).unwrap();
        for (i, v) in values.iter().enumerate() {
            j.begin();
            j.put(&(i as u32).to_be_bytes(), Some(v));
            j.append(true).unwrap();
        }
        drop(j);
        let (_, path) = list(dir.path()).unwrap().pop().unwrap();
        let mut data = std::fs::read(&path).unwrap();
        let written: usize = values.iter().map(|v| HEADER + 1 + 4 + 4 + 4 + v.len()).sum();
        // A torn tail, flipped bytes, and garbage where the preallocated zeros were.
        let cut = cut.index(written + 1);
        data.truncate(cut);
        for (at, x) in &flips {
            if !data.is_empty() {
                let i = at.index(data.len());
                data[i] ^= x;
            }
        }
        data.extend_from_slice(&garbage);
        std::fs::write(&path, &data).unwrap();
        let mut got = Vec::new();
        let opened = Journal::open(dir.path(), 1 << 20, 0, |e| {
            if let Entry::Put(k, v, _) = e {
                got.push((k.to_vec(), v.to_vec()));
            }
            Ok(())
        });
        // A record whose checksum matches but does not parse is reported, never
        // applied half (it cannot happen without a checksum collision).
        if opened.is_ok() {
            proptest::prop_assert!(got.len() <= values.len());
            for (i, (k, v)) in got.iter().enumerate() {
                proptest::prop_assert_eq!(k, &(i as u32).to_be_bytes().to_vec());
                proptest::prop_assert_eq!(v, &values[i]);
            }
        }
    }
}

/// The Raft log's use: opaque records read back by location, a conflicting suffix
/// truncated (inside a segment and at a segment's start), appends renumbered from
/// the cut, and the same after a reopen.
#[test]
fn opaque_records_are_read_by_location_and_truncated_durably() {
    let dir = tempfile::tempdir().unwrap();
    let scan = |dir: &Path, floor| {
        let mut got = Vec::new();
        let (j, _) = Journal::open_records(dir, 4096, floor, |seq, body, at| {
            got.push((seq, body.to_vec(), at));
            Ok(())
        })
        .unwrap();
        (j, got)
    };
    let (mut j, none) = scan(dir.path(), 1);
    assert!(none.is_empty());
    assert_eq!(j.next_seq(), 1, "an empty log starts at its floor");
    let mut at = Vec::new();
    for i in 1u8..=12 {
        at.push(j.append_record(&vec![i; 700], i % 3 == 0).unwrap());
    }
    j.sync().unwrap();
    for (i, loc) in at.iter().enumerate() {
        let file = open_segment(dir.path(), loc.segment).unwrap();
        let seq = i as u64 + 1;
        assert_eq!(read_record(&file, seq, *loc).unwrap(), vec![seq as u8; 700]);
        assert!(
            read_record(&file, seq + 1, *loc).is_err(),
            "the number is checked"
        );
    }
    // Record 9 is in the middle of a segment (five 716-byte records fit in 4 KiB).
    assert_ne!(at[8].segment, 9);
    j.truncate_from(9, at[8]).unwrap();
    assert_eq!(j.next_seq(), 9);
    j.append_record(b"new 9", true).unwrap();
    drop(j);
    let (mut j, got) = scan(dir.path(), 1);
    let seqs: Vec<u64> = got.iter().map(|(s, _, _)| *s).collect();
    assert_eq!(seqs, (1..=9).collect::<Vec<_>>());
    assert_eq!(got[8].1, b"new 9".to_vec());
    // At a segment's first record: the segment goes.
    let six = got[5].2;
    assert_eq!(six.segment, 6, "record 6 starts the second segment");
    j.truncate_from(6, six).unwrap();
    j.append_record(b"new 6", true).unwrap();
    drop(j);
    let (mut j, got) = scan(dir.path(), 1);
    let bodies: Vec<&[u8]> = got.iter().map(|(_, b, _)| b.as_slice()).collect();
    assert_eq!(bodies.len(), 6);
    assert_eq!(bodies[5], b"new 6");
    // Reset: everything goes, numbering restarts where asked.
    j.reset(40).unwrap();
    j.append_record(b"forty", true).unwrap();
    drop(j);
    let (_, got) = scan(dir.path(), 40);
    assert_eq!(got.len(), 1);
    assert_eq!((got[0].0, got[0].1.as_slice()), (40, &b"forty"[..]));
}

#[test]
fn records_truncated_away_never_come_back_behind_a_record_of_the_same_size() {
    let dir = tempfile::tempdir().unwrap();
    let scan = |dir: &Path| {
        let mut got = Vec::new();
        let (j, _) = Journal::open_records(dir, 4096, 1, |seq, body, _| {
            got.push((seq, body.to_vec()));
            Ok(())
        })
        .unwrap();
        (j, got)
    };
    let (mut j, _) = scan(dir.path());
    let mut at = Vec::new();
    for i in 1u8..=5 {
        at.push(j.append_record(&[i; 700], true).unwrap());
    }
    assert!(at.iter().all(|l| l.segment == 1), "one segment");
    // Raft truncating a conflicting suffix from record 3, then appending a record 3
    // of another term but the same size: the old 4 and 5 lie where 4 and 5 would go.
    j.truncate_from(3, at[2]).unwrap();
    j.append_record(&[0xee; 700], true).unwrap();
    drop(j);
    let (_, got) = scan(dir.path());
    let seqs: Vec<u64> = got.iter().map(|(s, _)| *s).collect();
    assert_eq!(seqs, vec![1, 2, 3], "records 4 and 5 were truncated away");
    assert_eq!(got[2].1, vec![0xee; 700]);
}

#[test]
fn free_bytes_reads_the_file_system() {
    let dir = tempfile::tempdir().unwrap();
    assert!(free_bytes(dir.path()).unwrap() > 0);
}

#[test]
fn a_value_lies_where_put_and_last_record_say_and_scan_below_finds_it() {
    let dir = tempfile::tempdir().unwrap();
    let (mut j, _) = replay(dir.path(), 0);
    let mut expected = Vec::new();
    for i in 0u8..6 {
        j.begin();
        j.put(b"gone", None);
        let value = vec![i; 3000 + i as usize]; // one record per 4 KiB segment
        let at = j.put(&[b'B', i], Some(&value));
        j.append(true).unwrap();
        let record = j.last_record().unwrap();
        let location = ValueAt {
            segment: record.segment,
            offset: record.offset + at,
        };
        let mut read = vec![0u8; value.len()];
        File::open(segment_file(dir.path(), location.segment))
            .unwrap()
            .read_exact_at(&mut read, location.offset)
            .unwrap();
        assert_eq!(read, value);
        expected.push((vec![b'B', i], value, location));
    }
    let floor = j.seal().unwrap();
    // Replay reports the same locations.
    let mut replayed = Vec::new();
    Journal::open(dir.path(), 4096, 0, |e| {
        if let Entry::Put(k, v, at) = e {
            replayed.push((k.to_vec(), v.to_vec(), at));
        }
        Ok(())
    })
    .unwrap();
    assert_eq!(replayed, expected);
    // The scan below a floor sees the segments recycle_below would take, no others.
    let mut scanned = Vec::new();
    scan_below(dir.path(), floor, |k, v, at| {
        scanned.push((k.to_vec(), v.to_vec(), at));
        Ok(())
    })
    .unwrap();
    assert_eq!(
        scanned, expected,
        "every segment below the floor, the newest too"
    );
    let mut below_4 = 0;
    scan_below(dir.path(), 4, |_, _, _| {
        below_4 += 1;
        Ok(())
    })
    .unwrap();
    assert_eq!(below_4, 4);
    let mut none = 0;
    scan_below(dir.path(), 0, |_, _, _| {
        none += 1;
        Ok(())
    })
    .unwrap();
    assert_eq!(none, 0);
}
