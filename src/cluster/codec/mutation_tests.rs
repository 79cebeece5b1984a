//! Round trips of the replicated command: every `Mutation` kind with arbitrary field
//! values, through the entry's protobuf bytes (what the Raft log stores and the
//! network sends), comes back equal; malformed messages are errors.

use std::sync::Arc;

use bytes::Bytes;
use openraft::{CommittedLeaderId, EntryPayload};
use proptest::prelude::*;
use prost::Message;
use squall_proto::cluster as pb;

use super::{entry_from, entry_to};
use crate::cluster::types::{Command, Entry, Job, LogId, Origin};
use crate::model::{
    CatchUp, Mutation, NewTask, QueueConfig, Schedule, StatePatch, TaskBody, TaskState, TaskStatus,
};

fn name() -> impl Strategy<Value = Arc<str>> {
    "[A-Za-z0-9._:-]{0,12}".prop_map(Arc::from)
}

fn status() -> impl Strategy<Value = TaskStatus> {
    prop_oneof![
        Just(TaskStatus::Pending),
        Just(TaskStatus::Dead),
        Just(TaskStatus::Succeeded)
    ]
}

fn blob() -> impl Strategy<Value = Bytes> {
    proptest::collection::vec(any::<u8>(), 0..40).prop_map(Bytes::from)
}

fn headers() -> impl Strategy<Value = Vec<(String, Bytes)>> {
    proptest::collection::vec(("[a-z]{0,6}", blob()), 0..3)
}

prop_compose! {
    fn state()(
        queue in name(), status in status(), priority in any::<i32>(),
        attempts in any::<u32>(), max_attempts in any::<u32>(), lease_ms in any::<u64>(),
        not_before_ms in any::<u64>(), created_ms in any::<u64>(), updated_ms in any::<u64>(),
        last_error in proptest::option::of(".{0,10}"), expires_ms in any::<u64>(),
    ) -> TaskState {
        TaskState {
            queue, status, priority, attempts, max_attempts, lease_ms, not_before_ms,
            created_ms, updated_ms, last_error, expires_ms,
        }
    }
}

prop_compose! {
    fn body()(
        created_ms in any::<u64>(), payload in blob(), headers in headers(),
        idempotency_key in proptest::option::of(".{0,10}"),
    ) -> TaskBody {
        TaskBody { created_ms, payload, headers, idempotency_key }
    }
}

prop_compose! {
    fn patch()(
        status in proptest::option::of(status()), attempts in any::<Option<u32>>(),
        not_before_ms in any::<Option<u64>>(),
        last_error in proptest::option::of(proptest::option::of(".{0,10}")),
        updated_ms in any::<u64>(),
    ) -> StatePatch {
        StatePatch { status, attempts, not_before_ms, last_error, updated_ms }
    }
}

prop_compose! {
    fn queue_config()(
        lease_ms in any::<u64>(), max_attempts in any::<u32>(), backoff_min_ms in any::<u64>(),
        backoff_max_ms in any::<u64>(), max_length in any::<u64>(), paused in any::<bool>(),
        result_ttl_ms in any::<u64>(), dedup_window_ms in any::<u64>(),
        max_in_flight in any::<u32>(), rate_limit in any::<u32>(), rate_burst in any::<u32>(),
        drop_expired in any::<bool>(), keep_acked in any::<bool>(),
    ) -> QueueConfig {
        QueueConfig {
            lease_ms, max_attempts, backoff_min_ms, backoff_max_ms, max_length, paused,
            result_ttl_ms, dedup_window_ms, max_in_flight, rate_limit, rate_burst,
            drop_expired, keep_acked,
        }
    }
}

prop_compose! {
    fn schedule()(
        name in name(), queue in name(), cron in ".{0,12}", tz in "[A-Za-z/]{0,12}",
        payload in blob(), headers in headers(), priority in any::<i32>(),
        max_attempts in any::<u32>(),
        catch_up in prop_oneof![Just(CatchUp::None), Just(CatchUp::One), Just(CatchUp::All)],
        paused in any::<bool>(), since_ms in any::<u64>(), last_run_ms in any::<u64>(),
        last_task in any::<u64>(), created_ms in any::<u64>(),
    ) -> Schedule {
        Schedule {
            name, queue, cron, tz, payload, headers, priority, max_attempts, catch_up,
            paused, since_ms, last_run_ms, last_task, created_ms,
        }
    }
}

pub(super) fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (any::<u64>(), state(), body())
            .prop_map(|(id, state, body)| Mutation::Insert(Box::new(NewTask { id, state, body }))),
        (any::<u64>(), patch()).prop_map(|(id, patch)| Mutation::Patch { id, patch }),
        any::<u64>().prop_map(|id| Mutation::Remove { id }),
        (any::<u64>(), blob(), any::<u64>()).prop_map(|(id, result, updated_ms)| {
            Mutation::Succeed {
                id,
                result,
                updated_ms,
            }
        }),
        (any::<u64>(), any::<u32>()).prop_map(|(now, limit)| Mutation::Sweep { now, limit }),
        (name(), queue_config()).prop_map(|(name, config)| Mutation::PutQueue { name, config }),
        name().prop_map(|name| Mutation::RemoveQueue { name }),
        schedule().prop_map(|s| Mutation::PutSchedule(Box::new(s))),
        name().prop_map(|name| Mutation::RemoveSchedule { name }),
        (any::<u64>(), any::<u64>(), any::<u64>())
            .prop_map(|(term, node, index)| Mutation::Applied { term, node, index }),
        name().prop_map(Mutation::ClusterId),
        (name(), any::<u64>())
            .prop_map(|(producer, sequence)| Mutation::Numbered { producer, sequence }),
    ]
}

fn through_the_wire(entry: &Entry) -> Entry {
    let bytes = entry_to(entry).encode_to_vec();
    entry_from(pb::Entry::decode(bytes.as_slice()).expect("decodes")).expect("converts")
}

proptest! {
    #[test]
    fn every_mutation_survives_the_entry_encoding(
        jobs in proptest::collection::vec(
            (proptest::collection::vec(mutation(), 0..8), any::<u64>(), any::<u64>(), any::<u64>()),
            1..4,
        ),
        index in 1..u64::MAX,
    ) {
        let jobs = jobs
            .into_iter()
            .map(|(muts, node, run, seq)| Job::new(Origin { node, run, seq }, muts.into()))
            .collect::<Vec<_>>()
            .into();
        let entry = Entry {
            log_id: LogId::new(CommittedLeaderId::new(3, 1), index),
            payload: EntryPayload::Normal(Command::Jobs(jobs)),
        };
        prop_assert_eq!(through_the_wire(&entry), entry);
    }
}

fn entry_with(mutation: pb::Mutation) -> pb::Entry {
    pb::Entry {
        log_id: Some(pb::LogId {
            term: 1,
            node_id: 1,
            index: 1,
        }),
        payload: Some(pb::entry::Payload::Mutations(pb::Mutations {
            items: vec![mutation],
            ..Default::default()
        })),
    }
}

#[test]
fn malformed_mutations_are_errors() {
    use pb::mutation::Kind;
    let unknown_kind = pb::Mutation { kind: None };
    let bad_status = pb::Mutation {
        kind: Some(Kind::Patch(Box::new(pb::Patch {
            status: Some(7),
            ..Default::default()
        }))),
    };
    let stateless_insert = pb::Mutation {
        kind: Some(Kind::Insert(Box::new(pb::Insert {
            id: 1,
            state: None,
            body: Some(pb::TaskBody::default()),
        }))),
    };
    let bad_catch_up = pb::Mutation {
        kind: Some(Kind::PutSchedule(Box::new(pb::Schedule {
            catch_up: 3,
            ..Default::default()
        }))),
    };
    let configless_queue = pb::Mutation {
        kind: Some(Kind::PutQueue(Box::new(pb::PutQueue {
            name: "q".into(),
            config: None,
        }))),
    };
    for m in [
        unknown_kind,
        bad_status,
        stateless_insert,
        bad_catch_up,
        configless_queue,
    ] {
        let what = format!("{m:?}");
        assert!(entry_from(entry_with(m)).is_err(), "{what} was accepted");
    }
}
