//! The field-by-field reading of a replicated entry (`fast.rs`) against prost and
//! `entry_from`: what it takes, that path takes too and reads the same; entries of the
//! hot path's kinds are taken; damaged entries and arbitrary bytes are either left to
//! that path or read as it reads them.

use bytes::Bytes;
use openraft::{CommittedLeaderId, EntryPayload};
use proptest::prelude::*;
use prost::Message;
use squall_proto::cluster as pb;

use super::fast::{self, hot};
use super::mutation_tests::mutation;
use super::{entry_from, entry_to};
use crate::cluster::types::{Command, Entry, Job, LogId, Member, Origin};
use crate::model::Mutation;

/// Whatever the fast path takes, prost and `entry_from` take too and read the same.
fn same_as_prost(bytes: &[u8]) -> Result<bool, TestCaseError> {
    let body = Bytes::copy_from_slice(bytes);
    let fast = fast::entry(&body);
    sketch_agrees(&body, fast.as_ref())?;
    let Some(fast) = fast else {
        return Ok(false);
    };
    let slow = pb::Entry::decode(body.clone())
        .map_err(|e| e.to_string())
        .and_then(|e| entry_from(e).map_err(|e| e.to_string()));
    prop_assert!(
        slow.is_ok(),
        "prost refuses what the fast path took: {fast:?}: {slow:?}"
    );
    prop_assert_eq!(fast, slow.unwrap());
    Ok(true)
}

/// What a member reads of an entry it holds back (`fast::sketch`) agrees with the
/// entry read whole (`fast`): taken exactly when it is, its jobs decode to the same,
/// and its events, publishes, numberings and counts are those of the jobs.
fn sketch_agrees(body: &Bytes, fast: Option<&Entry>) -> Result<(), TestCaseError> {
    let sketch = fast::sketch(body);
    let (fast, sketch) = match (fast, sketch) {
        (None, None) => return Ok(()),
        (Some(f), Some(s)) => (f, s),
        (f, s) => {
            return Err(TestCaseError::fail(format!(
                "the sketch and the fast path disagree on taking it: {f:?} / {s:?}"
            )))
        }
    };
    prop_assert_eq!(fast.log_id, sketch.log_id);
    let (EntryPayload::Normal(Command::Jobs(jobs)), EntryPayload::Normal(Command::Received(r))) =
        (&fast.payload, &sketch.payload)
    else {
        return Err(TestCaseError::fail("not a jobs entry and a received one"));
    };
    prop_assert_eq!(&r.bytes, body);
    let decoded = fast::received_jobs(r).expect("a sketched entry's jobs decode");
    prop_assert_eq!(&decoded[..], &jobs[..]);
    prop_assert_eq!(r.jobs.len(), jobs.len());
    let mut events = Vec::new();
    for (job, sketched) in jobs.iter().zip(&r.jobs) {
        let first = events.len();
        events.extend(
            job.muts
                .iter()
                .filter_map(crate::cluster::netting::event_of),
        );
        prop_assert_eq!(sketched.events.clone(), first..events.len());
        prop_assert_eq!(sketched.mutations, job.muts.len());
        // Inserts, then a numbering or nothing.
        let inserts = match job.muts.split_last() {
            Some((Mutation::Numbered { .. }, rest)) => rest,
            _ => &job.muts[..],
        };
        let publish =
            !inserts.is_empty() && inserts.iter().all(|m| matches!(m, Mutation::Insert(_)));
        prop_assert_eq!(sketched.publish, publish, "{:?}", job);
        if publish {
            if let Some(Mutation::Insert(first)) = job.muts.first() {
                prop_assert_eq!(sketched.first_created_ms, first.state.created_ms);
            }
            let numbered = match job.muts.last() {
                Some(Mutation::Numbered { producer, sequence }) => {
                    Some((producer.clone(), *sequence))
                }
                _ => None,
            };
            prop_assert_eq!(&sketched.numbered, &numbered);
        }
    }
    prop_assert_eq!(&r.events, &events);
    prop_assert_eq!(
        r.mutations,
        jobs.iter().map(|j| j.muts.len()).sum::<usize>()
    );
    prop_assert_eq!(
        r.payload_bytes,
        jobs.iter().map(Job::payload_bytes).sum::<usize>()
    );
    Ok(())
}

fn entry() -> impl Strategy<Value = Entry> {
    let jobs = proptest::collection::vec(
        (
            proptest::collection::vec(mutation(), 0..6),
            any::<u64>(),
            any::<u64>(),
            any::<u64>(),
        ),
        1..4,
    )
    .prop_map(|jobs| {
        let jobs = jobs
            .into_iter()
            .map(|(muts, node, run, seq)| Job::new(Origin { node, run, seq }, muts.into()))
            .collect::<Vec<_>>();
        EntryPayload::Normal(Command::Jobs(jobs.into()))
    });
    let payload = prop_oneof![
        8 => jobs,
        1 => Just(EntryPayload::Blank),
        1 => Just(EntryPayload::Membership(openraft::Membership::new(
            vec![[1u64, 2, 3].into_iter().collect()],
            [1u64, 2, 3]
                .into_iter()
                .map(|id| (id, Member { client_addr: format!("c{id}"), cluster_addr: format!("n{id}") }))
                .collect::<std::collections::BTreeMap<_, _>>(),
        ))),
    ];
    (any::<u64>(), any::<u64>(), any::<u64>(), payload).prop_map(|(term, node, index, payload)| {
        Entry {
            log_id: LogId::new(CommittedLeaderId::new(term, node), index),
            payload,
        }
    })
}

fn bytes_of(entry: &Entry) -> Vec<u8> {
    entry_to(entry).encode_to_vec()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    /// An entry whose jobs hold only the hot path's kinds is taken, and read as prost
    /// and `entry_from` read it; anything else is left to them.
    #[test]
    fn the_fast_path_reads_what_prost_reads(entry in entry()) {
        let taken = same_as_prost(&bytes_of(&entry))?;
        let hot_only = match &entry.payload {
            EntryPayload::Normal(Command::Jobs(jobs)) => jobs.iter().all(|j| j.muts.iter().all(hot)),
            _ => false,
        };
        prop_assert_eq!(taken, hot_only, "{:?}", entry);
    }

    /// An entry whose jobs hold only the hot path's kinds is written straight from the
    /// domain types, to exactly the bytes prost makes; anything else is left to prost.
    #[test]
    fn the_fast_path_writes_what_prost_writes(entry in entry()) {
        let hot_only = match &entry.payload {
            EntryPayload::Normal(Command::Jobs(jobs)) => jobs.iter().all(|j| j.muts.iter().all(hot)),
            _ => false,
        };
        match fast::entry_bytes(&entry) {
            Some(bytes) => {
                prop_assert!(hot_only, "{:?}", entry);
                prop_assert_eq!(&bytes[..], &bytes_of(&entry)[..]);
            }
            None => prop_assert!(!hot_only, "{:?}", entry),
        }
    }

    /// Damaged entries (a byte changed, cut short, or a field appended) are either left
    /// to prost or read exactly as it reads them.
    #[test]
    fn damaged_entries_are_never_read_otherwise_than_by_prost(
        entry in entry(),
        at in any::<prop::sample::Index>(),
        byte in any::<u8>(),
        how in 0..3u8,
        extra in prop::collection::vec(any::<u8>(), 1..6),
    ) {
        let mut bytes = bytes_of(&entry);
        crate::testing::damage(&mut bytes, at, byte, how, &extra);
        same_as_prost(&bytes)?;
    }

    /// Arbitrary bytes likewise.
    #[test]
    fn arbitrary_bytes_are_never_read_otherwise_than_by_prost(
        bytes in prop::collection::vec(any::<u8>(), 0..64),
    ) {
        same_as_prost(&bytes)?;
    }
}

#[test]
fn names_repeated_in_an_entry_share_one_allocation_and_payloads_are_not_copied() {
    let jobs = (0..3)
        .map(|i| {
            Job::new(
                Origin::default(),
                vec![
                    mutation_insert(i),
                    Mutation::Numbered {
                        producer: "p".into(),
                        sequence: i,
                    },
                ]
                .into(),
            )
        })
        .collect::<Vec<_>>();
    let entry = Entry {
        log_id: LogId::new(CommittedLeaderId::new(1, 1), 7),
        payload: EntryPayload::Normal(Command::Jobs(jobs.into())),
    };
    let body = Bytes::from(bytes_of(&entry));
    let read = fast::entry(&body).expect("taken");
    assert_eq!(read, entry);
    let EntryPayload::Normal(Command::Jobs(jobs)) = &read.payload else {
        unreachable!()
    };
    let Mutation::Insert(first) = &jobs[0].muts[0] else {
        unreachable!()
    };
    let Mutation::Insert(last) = &jobs[2].muts[0] else {
        unreachable!()
    };
    assert!(std::sync::Arc::ptr_eq(
        &first.state.queue,
        &last.state.queue
    ));
    let payload = first.body.payload.as_ptr() as usize;
    let range = body.as_ptr() as usize..body.as_ptr() as usize + body.len();
    assert!(
        range.contains(&payload),
        "the payload is a slice of the entry's bytes"
    );
}

fn mutation_insert(id: u64) -> Mutation {
    use crate::model::{NewTask, TaskBody, TaskState, TaskStatus};
    Mutation::Insert(Box::new(NewTask {
        id,
        state: TaskState {
            queue: "jobs".into(),
            status: TaskStatus::Pending,
            priority: 0,
            attempts: 0,
            max_attempts: 3,
            lease_ms: 30_000,
            not_before_ms: 0,
            created_ms: 5,
            updated_ms: 5,
            last_error: None,
            expires_ms: 0,
        },
        body: TaskBody {
            created_ms: 5,
            payload: Bytes::from_static(b"payload"),
            headers: vec![("k".into(), Bytes::from_static(b"v"))],
            idempotency_key: None,
        },
    }))
}

/// A field appended to a message: any number (known or not) with a varint, random
/// bytes, or an encoded task state or body (a message field given twice is merged by
/// prost, a scalar's last value wins, a wire type other than the schema's is refused).
fn extra_field() -> impl Strategy<Value = Vec<u8>> {
    use prost::encoding::{encode_key, encode_varint, WireType};
    let state = prop_oneof![
        Just(pb::TaskState::default()),
        (
            "[a-z]{0,3}",
            0..5u32,
            any::<u32>(),
            proptest::option::of("[a-z]{0,3}")
        )
            .prop_map(|(queue, status, attempts, last_error)| pb::TaskState {
                queue,
                status,
                attempts,
                last_error,
                ..Default::default()
            }),
    ];
    let body = (any::<u64>(), proptest::collection::vec(any::<u8>(), 0..4)).prop_map(
        |(created_ms, payload)| pb::TaskBody {
            created_ms,
            payload: payload.into(),
            ..Default::default()
        },
    );
    let value = prop_oneof![
        prop_oneof![Just(0u64), 0..8u64, any::<u64>()].prop_map(|v| (WireType::Varint, {
            let mut b = Vec::new();
            encode_varint(v, &mut b);
            b
        })),
        proptest::collection::vec(any::<u8>(), 0..6).prop_map(|v| (WireType::LengthDelimited, v)),
        state.prop_map(|s| (WireType::LengthDelimited, s.encode_to_vec())),
        body.prop_map(|b| (WireType::LengthDelimited, b.encode_to_vec())),
    ];
    (1..14u32, value).prop_map(|(field, (wire_type, v))| {
        let mut out = Vec::new();
        encode_key(field, wire_type, &mut out);
        if wire_type == WireType::LengthDelimited {
            encode_varint(v.len() as u64, &mut out);
        }
        out.extend_from_slice(&v);
        out
    })
}

/// `fields` as the length-delimited field `field` of a message.
fn nested(field: u32, fields: &[u8]) -> Vec<u8> {
    use prost::encoding::{encode_key, encode_varint, WireType};
    let mut out = Vec::new();
    encode_key(field, WireType::LengthDelimited, &mut out);
    encode_varint(fields.len() as u64, &mut out);
    out.extend_from_slice(fields);
    out
}

/// A one-job entry holding `mutation`, whose message at `depth` (0: the innermost,
/// the insert's state or the mutation's own message; up to 3: the job) has `extra`
/// appended.
fn entry_bytes_with(mutation: &Mutation, depth: u8, extra: &[u8]) -> Vec<u8> {
    let with = |level: u8, mut fields: Vec<u8>| {
        if level == depth {
            fields.extend_from_slice(extra);
        }
        fields
    };
    let pb::Mutation { kind: Some(kind) } = super::mutations::mutation_to(mutation) else {
        unreachable!("every mutation has a kind")
    };
    use pb::mutation::Kind;
    let (number, inner) = match kind {
        Kind::Insert(insert) => {
            let pb::Insert { id, state, body } = *insert;
            let state = with(0, state.unwrap().encode_to_vec());
            let head = pb::Insert {
                id,
                state: None,
                body,
            }
            .encode_to_vec();
            (1, with(1, [head, nested(2, &state)].concat()))
        }
        Kind::Patch(p) => (2, with(0, p.encode_to_vec())),
        Kind::Remove(r) => (3, with(0, r.encode_to_vec())),
        Kind::Succeed(s) => (4, with(0, s.encode_to_vec())),
        Kind::Applied(a) => (10, with(0, a.encode_to_vec())),
        Kind::Numbered(n) => (12, with(0, n.encode_to_vec())),
        other => {
            let m = pb::Mutation { kind: Some(other) };
            return pb::Entry {
                log_id: Some(pb::LogId {
                    term: 1,
                    node_id: 1,
                    index: 1,
                }),
                payload: Some(pb::entry::Payload::Mutations(pb::Mutations {
                    items: vec![m],
                    ..Default::default()
                })),
            }
            .encode_to_vec();
        }
    };
    let mutation = with(2, nested(number, &inner));
    let job = pb::Mutations {
        origin_node: 1,
        origin_run: 2,
        origin_seq: 3,
        items: vec![],
    };
    let job = with(3, [job.encode_to_vec(), nested(4, &mutation)].concat());
    let log_id = pb::LogId {
        term: 1,
        node_id: 1,
        index: 9,
    }
    .encode_to_vec();
    [nested(1, &log_id), nested(12, &job)].concat()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(3000))]

    /// A field appended inside an entry's messages, at any depth (a message given
    /// twice, an unknown status, an unknown field, another wire type): the fast path
    /// leaves the entry to prost or reads it exactly as prost does.
    #[test]
    fn fields_added_inside_an_entry_are_read_as_prost_reads_them_or_left_to_it(
        mutation in mutation(),
        depth in 0..4u8,
        extra in extra_field(),
    ) {
        same_as_prost(&entry_bytes_with(&mutation, depth, &extra))?;
    }
}

#[test]
fn an_unknown_status_is_left_to_prost_which_refuses_it() {
    let state = pb::TaskState {
        queue: "q".into(),
        status: 7,
        ..Default::default()
    };
    let insert = [
        pb::Insert {
            id: 1,
            state: None,
            body: Some(pb::TaskBody::default()),
        }
        .encode_to_vec(),
        nested(2, &state.encode_to_vec()),
    ]
    .concat();
    let job = nested(4, &nested(1, &insert));
    let log_id = pb::LogId {
        term: 1,
        node_id: 1,
        index: 9,
    }
    .encode_to_vec();
    let body = Bytes::from([nested(1, &log_id), nested(12, &job)].concat());
    assert!(fast::entry(&body).is_none());
    let err = super::decode_entry(&body).expect_err("an unknown status");
    assert!(err.to_string().contains("task status 7"), "{err}");
}

/// What an entry of the hot path costs to write and to read, through prost and
/// straight (the figures in BENCHMARKS.md): 100 jobs of one numbered publish (a 256 B
/// task) and 100 jobs of one ack patch, the shape of a saturated cluster's entries.
#[test]
#[ignore = "a measurement: cargo test --release --lib entry_codec_cost -- --ignored --nocapture"]
fn entry_codec_cost() {
    use std::time::Instant;
    let publish = |i: u64| {
        Job::new(
            Origin {
                node: 1,
                run: 7,
                seq: i,
            },
            vec![
                mutation_insert(i),
                Mutation::Numbered {
                    producer: "bench-producer-0.3f9a".into(),
                    sequence: i,
                },
            ]
            .into(),
        )
    };
    let ack = |i: u64| {
        Job::new(
            Origin {
                node: 1,
                run: 7,
                seq: 1000 + i,
            },
            vec![Mutation::Remove { id: i }].into(),
        )
    };
    let jobs: Vec<Job> = (0..100).flat_map(|i| [publish(i), ack(i)]).collect();
    let entry = Entry {
        log_id: LogId::new(CommittedLeaderId::new(3, 1), 123_456),
        payload: EntryPayload::Normal(Command::Jobs(jobs.into())),
    };
    let rounds = 20_000u32;
    let per_job =
        |started: Instant| started.elapsed().as_nanos() as f64 / f64::from(rounds) / 200.0;
    for _ in 0..2 {
        let started = Instant::now();
        for _ in 0..rounds {
            std::hint::black_box(entry_to(std::hint::black_box(&entry)).encode_to_vec());
        }
        let prost_write = per_job(started);
        let started = Instant::now();
        for _ in 0..rounds {
            std::hint::black_box(fast::entry_bytes(std::hint::black_box(&entry)));
        }
        let fast_write = per_job(started);
        let bytes = Bytes::from(bytes_of(&entry));
        let started = Instant::now();
        for _ in 0..rounds {
            let e = pb::Entry::decode(std::hint::black_box(bytes.clone())).unwrap();
            std::hint::black_box(entry_from(e).unwrap());
        }
        let prost_read = per_job(started);
        let started = Instant::now();
        for _ in 0..rounds {
            std::hint::black_box(fast::entry(std::hint::black_box(&bytes)).unwrap());
        }
        let fast_read = per_job(started);
        println!(
            "per job: write {prost_write:.0} ns through prost, {fast_write:.0} ns straight; \
             read {prost_read:.0} ns through prost, {fast_read:.0} ns straight"
        );
    }
}
