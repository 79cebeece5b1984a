//! The replicated command (`Command::Jobs`) and the store mutations it carries,
//! to and from `proto/cluster.proto`. Every domain struct is destructured whole, so a
//! field added to `model` does not compile until it is carried here. No I/O.

use std::sync::Arc;

use squall_proto::cluster as pb;

use super::{missing, CodecError};
use crate::cluster::types::{Command, Job, Origin};
use crate::model::{
    CatchUp, Mutation, NewTask, QueueConfig, Schedule, StatePatch, TaskBody, TaskState, TaskStatus,
};

/// An entry's payload: one job as `Mutations` (what a single job always was), several
/// as `Jobs`.
pub(crate) fn command_to(c: &Command) -> pb::entry::Payload {
    let jobs = match c {
        Command::Jobs(jobs) => jobs.clone(),
        // Not reached: a received entry is written and sent as the bytes it came in
        // as (`codec::entry_bytes`); decoded whole here all the same.
        Command::Received(received) => super::fast::received_jobs(received)
            .expect("a received entry's jobs decode (checked when it arrived)")
            .into(),
    };
    debug_assert!(!jobs.is_empty(), "a command carries at least one job");
    match &jobs[..] {
        [one] => pb::entry::Payload::Mutations(job_to(one)),
        many => pb::entry::Payload::Jobs(pb::Jobs {
            jobs: many.iter().map(job_to).collect(),
        }),
    }
}

fn job_to(job: &Job) -> pb::Mutations {
    let Job { origin, muts, .. } = job;
    let Origin { node, run, seq } = *origin;
    pb::Mutations {
        origin_node: node,
        origin_run: run,
        origin_seq: seq,
        items: muts.iter().map(mutation_to).collect(),
    }
}

pub(crate) fn job_from(m: pb::Mutations) -> Result<Job, CodecError> {
    let pb::Mutations {
        origin_node,
        origin_run,
        origin_seq,
        items,
    } = m;
    let muts = items
        .into_iter()
        .map(mutation_from)
        .collect::<Result<Vec<_>, _>>()?;
    let origin = Origin {
        node: origin_node,
        run: origin_run,
        seq: origin_seq,
    };
    Ok(Job::new(origin, muts.into()))
}

pub(super) fn mutation_to(m: &Mutation) -> pb::Mutation {
    use pb::mutation::Kind;
    let kind = match m {
        Mutation::Insert(task) => {
            let NewTask { id, state, body } = &**task;
            Kind::Insert(Box::new(pb::Insert {
                id: *id,
                state: Some(state_to(state)),
                body: Some(body_to(body)),
            }))
        }
        Mutation::Patch { id, patch } => {
            let StatePatch {
                status,
                attempts,
                not_before_ms,
                last_error,
                updated_ms,
            } = patch;
            Kind::Patch(Box::new(pb::Patch {
                id: *id,
                status: status.map(|s| s as u32),
                attempts: *attempts,
                not_before_ms: *not_before_ms,
                set_last_error: last_error.is_some(),
                last_error: last_error.clone().flatten(),
                updated_ms: *updated_ms,
            }))
        }
        Mutation::Remove { id } => Kind::Remove(pb::TaskRef { id: *id }),
        Mutation::Succeed {
            id,
            result,
            updated_ms,
        } => Kind::Succeed(pb::Succeed {
            id: *id,
            result: result.clone(),
            updated_ms: *updated_ms,
        }),
        Mutation::Sweep { now, limit } => Kind::Sweep(pb::Sweep {
            now: *now,
            limit: *limit,
        }),
        Mutation::PutQueue { name, config } => Kind::PutQueue(Box::new(pb::PutQueue {
            name: name.to_string(),
            config: Some(queue_config_to(config)),
        })),
        Mutation::RemoveQueue { name } => Kind::RemoveQueue(pb::QueueRef {
            name: name.to_string(),
        }),
        Mutation::PutSchedule(schedule) => Kind::PutSchedule(Box::new(schedule_to(schedule))),
        Mutation::RemoveSchedule { name } => Kind::RemoveSchedule(pb::QueueRef {
            name: name.to_string(),
        }),
        Mutation::Applied { term, node, index } => Kind::Applied(pb::LogId {
            term: *term,
            node_id: *node,
            index: *index,
        }),
        Mutation::ClusterId(id) => Kind::ClusterId(id.to_string()),
        Mutation::Numbered { producer, sequence } => Kind::Numbered(pb::Numbered {
            producer: producer.to_string(),
            sequence: *sequence,
        }),
    };
    pb::Mutation { kind: Some(kind) }
}

fn mutation_from(m: pb::Mutation) -> Result<Mutation, CodecError> {
    use pb::mutation::Kind;
    let kind = m
        .kind
        .ok_or_else(|| missing("mutation (a kind this version does not know?)"))?;
    Ok(match kind {
        Kind::Insert(insert) => {
            let pb::Insert { id, state, body } = *insert;
            Mutation::Insert(Box::new(NewTask {
                id,
                state: state_from(state.ok_or_else(|| missing("inserted task state"))?)?,
                body: body_from(body.ok_or_else(|| missing("inserted task body"))?),
            }))
        }
        Kind::Patch(patch) => {
            let pb::Patch {
                id,
                status,
                attempts,
                not_before_ms,
                set_last_error,
                last_error,
                updated_ms,
            } = *patch;
            Mutation::Patch {
                id,
                patch: StatePatch {
                    status: status.map(status_from).transpose()?,
                    attempts,
                    not_before_ms,
                    last_error: set_last_error.then_some(last_error),
                    updated_ms,
                },
            }
        }
        Kind::Remove(pb::TaskRef { id }) => Mutation::Remove { id },
        Kind::Succeed(pb::Succeed {
            id,
            result,
            updated_ms,
        }) => Mutation::Succeed {
            id,
            result,
            updated_ms,
        },
        Kind::Sweep(pb::Sweep { now, limit }) => Mutation::Sweep { now, limit },
        Kind::PutQueue(put) => {
            let pb::PutQueue { name, config } = *put;
            Mutation::PutQueue {
                name: Arc::from(name),
                config: queue_config_from(config.ok_or_else(|| missing("queue configuration"))?),
            }
        }
        Kind::RemoveQueue(pb::QueueRef { name }) => Mutation::RemoveQueue {
            name: Arc::from(name),
        },
        Kind::PutSchedule(s) => Mutation::PutSchedule(Box::new(schedule_from(*s)?)),
        Kind::RemoveSchedule(pb::QueueRef { name }) => Mutation::RemoveSchedule {
            name: Arc::from(name),
        },
        Kind::Applied(pb::LogId {
            term,
            node_id,
            index,
        }) => Mutation::Applied {
            term,
            node: node_id,
            index,
        },
        Kind::ClusterId(id) => Mutation::ClusterId(Arc::from(id)),
        Kind::Numbered(pb::Numbered { producer, sequence }) => Mutation::Numbered {
            producer: Arc::from(producer),
            sequence,
        },
    })
}

fn status_from(tag: u32) -> Result<TaskStatus, CodecError> {
    u8::try_from(tag)
        .ok()
        .and_then(TaskStatus::from_u8)
        .ok_or_else(|| CodecError(format!("task status {tag} is unknown")))
}

fn state_to(s: &TaskState) -> pb::TaskState {
    let TaskState {
        queue,
        status,
        priority,
        attempts,
        max_attempts,
        lease_ms,
        not_before_ms,
        created_ms,
        updated_ms,
        last_error,
        expires_ms,
    } = s;
    pb::TaskState {
        queue: queue.to_string(),
        status: *status as u32,
        priority: *priority,
        attempts: *attempts,
        max_attempts: *max_attempts,
        lease_ms: *lease_ms,
        not_before_ms: *not_before_ms,
        created_ms: *created_ms,
        updated_ms: *updated_ms,
        last_error: last_error.clone(),
        expires_ms: *expires_ms,
    }
}

fn state_from(s: pb::TaskState) -> Result<TaskState, CodecError> {
    let pb::TaskState {
        queue,
        status,
        priority,
        attempts,
        max_attempts,
        lease_ms,
        not_before_ms,
        created_ms,
        updated_ms,
        last_error,
        expires_ms,
    } = s;
    Ok(TaskState {
        queue: Arc::from(queue),
        status: status_from(status)?,
        priority,
        attempts,
        max_attempts,
        lease_ms,
        not_before_ms,
        created_ms,
        updated_ms,
        last_error,
        expires_ms,
    })
}

fn headers_to(headers: &[(String, bytes::Bytes)]) -> Vec<pb::Header> {
    headers
        .iter()
        .map(|(key, value)| pb::Header {
            key: key.clone(),
            value: value.clone(),
        })
        .collect()
}

fn headers_from(headers: Vec<pb::Header>) -> Vec<(String, bytes::Bytes)> {
    headers
        .into_iter()
        .map(|pb::Header { key, value }| (key, value))
        .collect()
}

fn body_to(b: &TaskBody) -> pb::TaskBody {
    let TaskBody {
        created_ms,
        payload,
        headers,
        idempotency_key,
    } = b;
    pb::TaskBody {
        created_ms: *created_ms,
        payload: payload.clone(),
        headers: headers_to(headers),
        idempotency_key: idempotency_key.clone(),
    }
}

fn body_from(b: pb::TaskBody) -> TaskBody {
    let pb::TaskBody {
        created_ms,
        payload,
        headers,
        idempotency_key,
    } = b;
    TaskBody {
        created_ms,
        payload,
        headers: headers_from(headers),
        idempotency_key,
    }
}

fn queue_config_to(c: &QueueConfig) -> pb::QueueConfig {
    let QueueConfig {
        lease_ms,
        max_attempts,
        backoff_min_ms,
        backoff_max_ms,
        max_length,
        paused,
        result_ttl_ms,
        dedup_window_ms,
        max_in_flight,
        rate_limit,
        rate_burst,
        drop_expired,
        keep_acked,
    } = *c;
    pb::QueueConfig {
        lease_ms,
        max_attempts,
        backoff_min_ms,
        backoff_max_ms,
        max_length,
        paused,
        result_ttl_ms,
        dedup_window_ms,
        max_in_flight,
        rate_limit,
        rate_burst,
        drop_expired,
        keep_acked,
    }
}

fn queue_config_from(c: pb::QueueConfig) -> QueueConfig {
    let pb::QueueConfig {
        lease_ms,
        max_attempts,
        backoff_min_ms,
        backoff_max_ms,
        max_length,
        paused,
        result_ttl_ms,
        dedup_window_ms,
        max_in_flight,
        rate_limit,
        rate_burst,
        drop_expired,
        keep_acked,
    } = c;
    QueueConfig {
        lease_ms,
        max_attempts,
        backoff_min_ms,
        backoff_max_ms,
        max_length,
        paused,
        result_ttl_ms,
        dedup_window_ms,
        max_in_flight,
        rate_limit,
        rate_burst,
        drop_expired,
        keep_acked,
    }
}

fn schedule_to(s: &Schedule) -> pb::Schedule {
    let Schedule {
        name,
        queue,
        cron,
        tz,
        payload,
        headers,
        priority,
        max_attempts,
        catch_up,
        paused,
        since_ms,
        last_run_ms,
        last_task,
        created_ms,
    } = s;
    pb::Schedule {
        name: name.to_string(),
        queue: queue.to_string(),
        cron: cron.clone(),
        tz: tz.clone(),
        payload: payload.clone(),
        headers: headers_to(headers),
        priority: *priority,
        max_attempts: *max_attempts,
        catch_up: *catch_up as u32,
        paused: *paused,
        since_ms: *since_ms,
        last_run_ms: *last_run_ms,
        last_task: *last_task,
        created_ms: *created_ms,
    }
}

fn schedule_from(s: pb::Schedule) -> Result<Schedule, CodecError> {
    let pb::Schedule {
        name,
        queue,
        cron,
        tz,
        payload,
        headers,
        priority,
        max_attempts,
        catch_up,
        paused,
        since_ms,
        last_run_ms,
        last_task,
        created_ms,
    } = s;
    let catch_up = u8::try_from(catch_up)
        .ok()
        .and_then(CatchUp::from_u8)
        .ok_or_else(|| CodecError(format!("schedule catch-up {catch_up} is unknown")))?;
    Ok(Schedule {
        name: Arc::from(name),
        queue: Arc::from(queue),
        cron,
        tz,
        payload,
        headers: headers_from(headers),
        priority,
        max_attempts,
        catch_up,
        paused,
        since_ms,
        last_run_ms,
        last_task,
        created_ms,
    })
}
