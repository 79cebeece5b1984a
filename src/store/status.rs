//! Reads for task status and results: a task's state together with its retention
//! record, and the configuration a queue runs with. Readers run on any thread while
//! the writer works; nothing here writes.

use bytes::Bytes;

use super::{corrupt, keys, record, Store, StoreError};
use crate::model::{Millis, QueueConfig, TaskId, TaskState, TaskStatus};

/// What the store holds about one task, without its payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskRecord {
    /// The persisted state.
    pub state: TaskState,
    /// For a succeeded or dead task with a retention record: when the record expires
    /// and the ack's result. `None` when the task is pending, or dead on a queue that
    /// keeps dead tasks until an operator acts.
    pub retained: Option<Retained>,
}

/// The retention record of a finished task.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Retained {
    /// When the sweep removes the task's records.
    pub expires_ms: Millis,
    /// The ack's result payload (empty for a dead task or an ack without one).
    pub result: Bytes,
}

impl Store {
    /// Reads a task's state and retention record (two point reads, no payload).
    pub fn get_record(&self, id: TaskId) -> Result<Option<TaskRecord>, StoreError> {
        let Some(state) = self.get_state(id)? else {
            return Ok(None);
        };
        let retained = match state.status {
            TaskStatus::Pending => None,
            TaskStatus::Succeeded | TaskStatus::Dead => self.get_retained(id)?,
        };
        Ok(Some(TaskRecord { state, retained }))
    }

    fn get_retained(&self, id: TaskId) -> Result<Option<Retained>, StoreError> {
        let key = keys::result(id);
        let Some(value) = self.task_record(super::tasks::Slot::Result, id)? else {
            return Ok(None);
        };
        let value = Bytes::from_owner(value);
        let view = record::decode_retained(&value).map_err(|e| corrupt(&key, e))?;
        Ok(Some(Retained {
            expires_ms: view.expires_ms,
            result: value.slice(view.result),
        }))
    }

    /// The configuration `queue` runs with, as the store applies it (its `Q` record,
    /// else the defaults given to [`Store::set_queue_defaults`]).
    pub fn queue_config(&self, queue: &str) -> QueueConfig {
        self.inner.policies.read().get(queue).clone()
    }

    /// The configuration of queues without a `Q` record (call before starting the
    /// writer; the store applies their result retention and idempotency window).
    pub fn set_queue_defaults(&self, defaults: QueueConfig) {
        self.inner.policies.write().set_defaults(defaults);
    }
}
