//! The answers a connection's writer half completes with store reads before it encodes
//! them: task status (with the lease the hub reported), result waits, payloads and
//! admin answers (queue ages, peeked tasks). The reads are `reads.rs`, the encoding the
//! wire edge's; this file decides what to read for which outbox message.

use super::shared::Shared;
use super::wait::unreadable;
use super::wire::{self, Answer};
use crate::model::TaskId;
use crate::server::clock::now_ms;
use crate::server::msg::{AdminReply, Failure, LeaseHolder, Reply};
use crate::server::reads;
use squall_proto::ErrorCode;

/// The status of `task`, with its lease as the hub saw it.
pub(super) fn status(shared: &Shared, task: TaskId, lease: Option<&LeaseHolder>) -> Reply {
    match reads::task_report(&shared.store, task, lease, None, now_ms()) {
        Ok(report) => Reply::Task(Box::new(report)),
        Err(e) => unreadable(task, &e),
    }
}

/// A task's whole payload, or NOT_FOUND once it is gone.
pub(super) fn payload(shared: &Shared, task: TaskId) -> Reply {
    match reads::task_payload(&shared.store, task) {
        Ok(Some(p)) => Reply::Payload(Box::new(p)),
        Ok(None) => Reply::Refused(Failure::Protocol(
            ErrorCode::NotFound,
            format!("no task {task}"),
        )),
        Err(e) => unreadable(task, &e),
    }
}

/// Reads what an admin answer needs from the store and builds it: lists and peeks stop
/// before they grow past `room` bytes (and say that more follow).
pub(super) fn admin(shared: &Shared, reply: AdminReply, room: usize) -> Answer {
    let store = &shared.store;
    let now = now_ms();
    match reply {
        AdminReply::Queues {
            req,
            single: true,
            mut queues,
            ..
        } => {
            let q = queues.pop();
            let age = q
                .as_ref()
                .and_then(|q| reads::oldest_ready_age_ms(q, store, now));
            wire::queue_answer(req, q.as_ref().map(|q| (q, age)))
        }
        AdminReply::Queues {
            req, queues, more, ..
        } => {
            let items = queues
                .iter()
                .map(|q| (q, reads::oldest_ready_age_ms(q, store, now)));
            wire::queue_list_answer(req, items, more, room)
        }
        AdminReply::Peek {
            req,
            items,
            preview,
        } => {
            let tasks = items
                .into_iter()
                .map(|item| reads::peeked_task(item, store, preview));
            wire::peek_answer(req, tasks, room)
        }
        AdminReply::Schedules { req, list, more } => {
            wire::schedule_list_answer(req, &list, more, room)
        }
    }
}
