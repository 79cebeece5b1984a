//! What answers read from the store: a task's status (the state the store holds plus
//! the lease the hub reported, since leases live only in memory), a task's payload, a
//! queue's oldest ready age and peeked tasks — as domain values (`msg.rs`) that the
//! wire edge encodes. Called from connection writer halves and the HTTP side, which may
//! read the store; never from the hub.

use super::msg::{
    Final, LeaseHolder, PeekItem, PeekedTask, QueueStatus, TaskPayload, TaskPhase, TaskReport,
};
use crate::model::{Millis, TaskId, TaskStatus};
use crate::store::{BodyPreview, Store, StoreError};

/// The status of `task` now. `finished` is what the mutation that finished the task
/// said, for when its record is already gone (an ack on a queue keeping no results).
pub(crate) fn task_report(
    store: &Store,
    task: TaskId,
    lease: Option<&LeaseHolder>,
    finished: Option<Final>,
    now_ms: u64,
) -> Result<TaskReport, StoreError> {
    let Some(record) = store.get_record(task)? else {
        let state = match finished {
            Some(Final::Succeeded) => TaskPhase::Succeeded,
            Some(Final::Dead) => TaskPhase::Dead,
            Some(Final::Removed) | None => TaskPhase::Unknown,
        };
        return Ok(TaskReport {
            task_id: task,
            state,
            ..TaskReport::default()
        });
    };
    let s = record.state;
    let lease = lease.filter(|_| s.status == TaskStatus::Pending);
    let state = match s.status {
        TaskStatus::Succeeded => TaskPhase::Succeeded,
        TaskStatus::Dead => TaskPhase::Dead,
        TaskStatus::Pending if lease.is_some() => TaskPhase::Leased,
        TaskStatus::Pending if s.not_before_ms > now_ms => TaskPhase::Delayed,
        TaskStatus::Pending => TaskPhase::Ready,
    };
    let max_attempts = match s.max_attempts {
        0 => store.queue_config(&s.queue).max_attempts,
        n => n,
    };
    let (result, expires_at_ms) = match record.retained {
        Some(r) => (r.result, r.expires_ms),
        None => (Default::default(), 0),
    };
    Ok(TaskReport {
        task_id: task,
        state,
        queue: s.queue.to_string(),
        priority: s.priority,
        attempts: lease.map_or(s.attempts, |l| l.attempt.max(s.attempts)),
        max_attempts,
        last_error: s.last_error,
        lease: lease.cloned(),
        created_at_ms: s.created_ms,
        updated_at_ms: s.updated_ms,
        not_before_ms: s.not_before_ms,
        result,
        expires_at_ms,
    })
}

/// A task's whole payload and headers (`None` once it is gone). Bounded by the
/// publish that stored them, which fitted in one frame.
pub(crate) fn task_payload(store: &Store, task: TaskId) -> Result<Option<TaskPayload>, StoreError> {
    let Some(state) = store.get_state(task)? else {
        return Ok(None);
    };
    let Some(body) = store.get_body(task)? else {
        return Ok(None);
    };
    Ok(Some(TaskPayload {
        task_id: task,
        queue: state.queue.to_string(),
        payload: body.payload,
        headers: body.headers,
    }))
}

/// Whether a wait for this task is over: it finished, or the broker does not know it.
pub(crate) fn wait_is_over(report: &TaskReport) -> bool {
    matches!(
        report.state,
        TaskPhase::Succeeded | TaskPhase::Dead | TaskPhase::Unknown
    )
}

/// Age of the queue's oldest ready task from its stored creation time; one small read.
pub(crate) fn oldest_ready_age_ms(q: &QueueStatus, store: &Store, now: Millis) -> Option<u64> {
    let id = q.oldest_ready?;
    match store.get_state(id) {
        Ok(Some(state)) => Some(now.saturating_sub(state.created_ms)),
        // Settled meanwhile, or unreadable: no age rather than a wrong one.
        _ => None,
    }
}

/// A peeked task with at most `preview` payload bytes, and its headers only if they
/// take no more than that either (`None` if it was settled or removed meanwhile).
pub(crate) fn peeked_task(
    item: PeekItem,
    store: &Store,
    preview: usize,
) -> Result<Option<PeekedTask>, StoreError> {
    let p = item.peeked;
    let Some(state) = store.get_state(p.id)? else {
        return Ok(None);
    };
    // Only the preview's bytes are read into memory, however large the body.
    let body = store
        .get_body_preview(p.id, preview)?
        .unwrap_or(BodyPreview {
            headers: Some(Vec::new()),
            ..BodyPreview::default()
        });
    let payload_bytes = body.payload_len;
    let mut truncated = payload_bytes > preview as u64;
    let payload = body.payload;
    let headers = match body.headers {
        Some(headers)
            if headers
                .iter()
                .map(|(k, v)| k.len() + v.len())
                .sum::<usize>()
                <= preview =>
        {
            headers
        }
        Some(_) | None => {
            truncated = true;
            Vec::new()
        }
    };
    let lease = p.lease;
    Ok(Some(PeekedTask {
        task_id: p.id,
        state: p.state,
        priority: p.priority,
        attempts: p.attempts,
        max_attempts: p.max_attempts,
        created_at_ms: state.created_ms,
        updated_at_ms: state.updated_ms,
        not_before_ms: p.not_before_ms,
        lease_holder: item.holder.map(|h| h.to_string()).unwrap_or_default(),
        lease_deadline_ms: lease.map_or(0, |l| l.deadline_ms),
        last_error: state.last_error.unwrap_or_default(),
        payload,
        headers,
        truncated,
        payload_bytes,
    }))
}
