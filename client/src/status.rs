//! Task status and results as the client sees them: `TaskStatus` (what
//! [`Client::task`](crate::Client::task) returns), its `TaskState`, the `LeaseInfo` of a
//! leased task, and `TaskOutcome` (what [`Client::wait_result`](crate::Client::wait_result)
//! returns). Plain data converted from the wire `TaskInfo`; the calls live in `client/mod.rs`.

use std::fmt;
use std::time::SystemTime;

use bytes::Bytes;
use squall_proto::v1;

use crate::publish::{from_unix_ms, TaskId};

/// Where a task is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum TaskState {
    /// The broker has no record of the task: never published, or its record is gone
    /// (acked without a result on a queue without `keep_acked`, acked on a queue whose
    /// result TTL is 0, or past the queue's result TTL).
    Unknown,
    /// Waiting to be delivered.
    Ready,
    /// Waiting for its not-before time (a delay or a retry backoff).
    Delayed,
    /// Delivered to a consumer, under a live lease.
    Leased,
    /// Acked.
    Succeeded,
    /// In the dead set.
    Dead,
}

impl TaskState {
    /// True for `Succeeded` and `Dead`: the task will not change any more (until an
    /// operator redrives a dead one).
    pub fn is_final(self) -> bool {
        matches!(self, TaskState::Succeeded | TaskState::Dead)
    }

    /// Lower-case name: `unknown`, `ready`, `delayed`, `leased`, `succeeded`, `dead`.
    pub fn as_str(self) -> &'static str {
        match self {
            TaskState::Unknown => "unknown",
            TaskState::Ready => "ready",
            TaskState::Delayed => "delayed",
            TaskState::Leased => "leased",
            TaskState::Succeeded => "succeeded",
            TaskState::Dead => "dead",
        }
    }

    fn from_wire(state: i32) -> TaskState {
        match v1::TaskState::try_from(state) {
            Ok(v1::TaskState::Ready) => TaskState::Ready,
            Ok(v1::TaskState::Delayed) => TaskState::Delayed,
            Ok(v1::TaskState::Leased) => TaskState::Leased,
            Ok(v1::TaskState::Succeeded) => TaskState::Succeeded,
            Ok(v1::TaskState::Dead) => TaskState::Dead,
            // A state a newer broker knows and this client does not.
            Ok(v1::TaskState::Unknown) | Err(_) => TaskState::Unknown,
        }
    }
}

impl fmt::Display for TaskState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Who holds a leased task.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseInfo {
    /// The broker's id of the consumer's connection.
    pub connection_id: u64,
    /// The consumer's client name ([`ClientBuilder::client_name`](crate::ClientBuilder::client_name)),
    /// or its address when it sent none.
    pub consumer: String,
    /// When the lease runs out unless extended.
    pub deadline: SystemTime,
}

/// A task's status, read from the broker.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct TaskStatus {
    /// The task id.
    pub id: TaskId,
    /// Where the task is. For [`TaskState::Unknown`] the other fields are empty.
    pub state: TaskState,
    /// Its queue.
    pub queue: String,
    /// Its priority.
    pub priority: i32,
    /// Deliveries so far (the live one included).
    pub attempts: u32,
    /// Deliveries allowed (0 = unlimited).
    pub max_attempts: u32,
    /// Reason of the last failed attempt; for a dead task, why it died.
    pub last_error: Option<String>,
    /// Set when the task is leased.
    pub lease: Option<LeaseInfo>,
    /// When it was published.
    pub created_at: Option<SystemTime>,
    /// Its last change.
    pub updated_at: Option<SystemTime>,
    /// Not delivered before this time.
    pub not_before: Option<SystemTime>,
    /// The ack's result payload, for a succeeded task (empty when the ack had none).
    pub result: Option<Bytes>,
    /// When the broker forgets a succeeded or dead task (`None`: it keeps it until an
    /// operator acts, or the task is not finished).
    pub expires_at: Option<SystemTime>,
}

fn time(ms: u64) -> Option<SystemTime> {
    (ms > 0).then(|| from_unix_ms(ms))
}

impl From<v1::TaskInfo> for TaskStatus {
    fn from(t: v1::TaskInfo) -> Self {
        let state = TaskState::from_wire(t.state);
        TaskStatus {
            id: t.task_id,
            state,
            queue: t.queue,
            priority: t.priority,
            attempts: t.attempts,
            max_attempts: t.max_attempts,
            last_error: t.last_error,
            lease: t.lease.map(|l| LeaseInfo {
                connection_id: l.connection_id,
                consumer: l.consumer,
                deadline: from_unix_ms(l.deadline_ms),
            }),
            created_at: time(t.created_at_ms),
            updated_at: time(t.updated_at_ms),
            not_before: time(t.not_before_ms),
            result: (state == TaskState::Succeeded).then_some(t.result),
            expires_at: time(t.expires_at_ms),
        }
    }
}

/// How a [`wait_result`](crate::Client::wait_result) ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TaskOutcome {
    /// The task was acked; [`TaskStatus::result`] holds the ack's result payload.
    Succeeded(TaskStatus),
    /// The task is in the dead set; [`TaskStatus::last_error`] says why.
    Dead(TaskStatus),
    /// The timeout passed first; the task's status at that moment.
    TimedOut(TaskStatus),
    /// The broker has no record of the task (never published, or its record is gone:
    /// acked without a result on a queue without `keep_acked`, acked on a queue whose
    /// result TTL is 0, or past the queue's result TTL).
    Unknown,
}

impl TaskOutcome {
    /// The status the outcome carries (`None` for `Unknown`).
    pub fn status(&self) -> Option<&TaskStatus> {
        match self {
            TaskOutcome::Succeeded(s) | TaskOutcome::Dead(s) | TaskOutcome::TimedOut(s) => Some(s),
            TaskOutcome::Unknown => None,
        }
    }

    /// The result payload of a succeeded task.
    pub fn result(&self) -> Option<&Bytes> {
        match self {
            TaskOutcome::Succeeded(s) => s.result.as_ref(),
            _ => None,
        }
    }

    pub(crate) fn of(status: TaskStatus) -> TaskOutcome {
        match status.state {
            TaskState::Succeeded => TaskOutcome::Succeeded(status),
            TaskState::Dead => TaskOutcome::Dead(status),
            TaskState::Unknown => TaskOutcome::Unknown,
            _ => TaskOutcome::TimedOut(status),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_task_info_maps_to_status() {
        let info = v1::TaskInfo {
            task_id: 7,
            state: v1::TaskState::Leased as i32,
            queue: "jobs".into(),
            priority: 3,
            attempts: 2,
            max_attempts: 5,
            last_error: Some("boom".into()),
            lease: Some(v1::LeaseHolder {
                connection_id: 9,
                consumer: "worker-1".into(),
                deadline_ms: 1_700_000_000_000,
            }),
            created_at_ms: 1_600_000_000_000,
            updated_at_ms: 1_650_000_000_000,
            not_before_ms: 0,
            result: Bytes::from_static(b"ignored unless succeeded"),
            expires_at_ms: 0,
        };
        let s = TaskStatus::from(info);
        assert_eq!(s.state, TaskState::Leased);
        assert_eq!(s.lease.as_ref().unwrap().consumer, "worker-1");
        assert_eq!(s.not_before, None);
        assert_eq!(s.result, None);
        assert!(matches!(TaskOutcome::of(s), TaskOutcome::TimedOut(_)));

        let done = TaskStatus::from(v1::TaskInfo {
            task_id: 7,
            state: v1::TaskState::Succeeded as i32,
            result: Bytes::from_static(b"42"),
            ..Default::default()
        });
        let outcome = TaskOutcome::of(done);
        assert_eq!(outcome.result(), Some(&Bytes::from_static(b"42")));
        let unknown = TaskStatus::from(v1::TaskInfo {
            task_id: 7,
            state: 99,
            ..Default::default()
        });
        assert_eq!(unknown.state, TaskState::Unknown);
        assert_eq!(TaskOutcome::of(unknown), TaskOutcome::Unknown);
        assert!(TaskState::Dead.is_final() && !TaskState::Delayed.is_final());
        assert_eq!(TaskState::Succeeded.to_string(), "succeeded");
    }
}
