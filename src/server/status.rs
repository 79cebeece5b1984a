//! Task status answers: the wire `TaskInfo` built from what the store holds (state,
//! retained result), the lease the hub reported (leases live only in memory) and the
//! clock. Called from connection writer halves, which may read the store.

use std::sync::Arc;

use squall_proto::v1::{self, TaskState as WireState};

use super::waiters::Final;
use crate::broker::ConnId;
use crate::model::{TaskId, TaskStatus};
use crate::store::{Store, StoreError};

/// Who holds a task's lease, as the hub saw it.
#[derive(Debug, Clone)]
pub(crate) struct LeaseHolder {
    pub(crate) conn: ConnId,
    /// Client name from Hello, else the peer address.
    pub(crate) consumer: Arc<str>,
    pub(crate) deadline_ms: u64,
    /// The live delivery's attempt number (the store may lag by one).
    pub(crate) attempt: u32,
}

/// The status of `task` now. `finished` is what the mutation that finished the task
/// said, for when its record is already gone (an ack on a queue keeping no results).
pub(crate) fn task_info(
    store: &Store,
    task: TaskId,
    lease: Option<&LeaseHolder>,
    finished: Option<Final>,
    now_ms: u64,
) -> Result<v1::TaskInfo, StoreError> {
    let Some(record) = store.get_record(task)? else {
        let state = match finished {
            Some(Final::Succeeded) => WireState::Succeeded,
            Some(Final::Dead) => WireState::Dead,
            Some(Final::Removed) | None => WireState::Unknown,
        };
        return Ok(v1::TaskInfo {
            task_id: task,
            state: state as i32,
            ..v1::TaskInfo::default()
        });
    };
    let s = record.state;
    let lease = lease.filter(|_| s.status == TaskStatus::Pending);
    let state = match s.status {
        TaskStatus::Succeeded => WireState::Succeeded,
        TaskStatus::Dead => WireState::Dead,
        TaskStatus::Pending if lease.is_some() => WireState::Leased,
        TaskStatus::Pending if s.not_before_ms > now_ms => WireState::Delayed,
        TaskStatus::Pending => WireState::Ready,
    };
    let max_attempts = match s.max_attempts {
        0 => store.queue_config(&s.queue).max_attempts,
        n => n,
    };
    let (result, expires_at_ms) = match record.retained {
        Some(r) => (r.result, r.expires_ms),
        None => (Default::default(), 0),
    };
    Ok(v1::TaskInfo {
        task_id: task,
        state: state as i32,
        queue: s.queue.to_string(),
        priority: s.priority,
        attempts: lease.map_or(s.attempts, |l| l.attempt.max(s.attempts)),
        max_attempts,
        last_error: s.last_error,
        lease: lease.map(|l| v1::LeaseHolder {
            connection_id: l.conn,
            consumer: l.consumer.to_string(),
            deadline_ms: l.deadline_ms,
        }),
        created_at_ms: s.created_ms,
        updated_at_ms: s.updated_ms,
        not_before_ms: s.not_before_ms,
        result,
        expires_at_ms,
    })
}

/// A task's whole payload and headers (`None` once it is gone). Bounded by the
/// publish that stored them, which fitted in one frame.
pub(crate) fn task_payload(
    store: &Store,
    task: TaskId,
) -> Result<Option<v1::TaskPayload>, StoreError> {
    let Some(state) = store.get_state(task)? else {
        return Ok(None);
    };
    let Some(body) = store.get_body(task)? else {
        return Ok(None);
    };
    Ok(Some(v1::TaskPayload {
        task_id: task,
        queue: state.queue.to_string(),
        payload: body.payload,
        headers: body.headers.into_iter().collect(),
    }))
}

/// Whether a wait for this task is over: it finished, or the broker does not know it.
pub(crate) fn wait_is_over(info: &v1::TaskInfo) -> bool {
    matches!(
        WireState::try_from(info.state),
        Ok(WireState::Succeeded | WireState::Dead | WireState::Unknown)
    )
}
