//! Authorisation of one request against the grant of the token presented at Hello
//! (only for restricted tokens: the reader skips it for unrestricted ones). The
//! task's queue of `GetPayload` and status answers is checked when the writer half
//! reads it (`writer.rs`, hiding other queues' tasks).

use crate::auth::{ops, Grant};
use crate::server::msg::{AdminRequest, Request};

/// Checks `req` against `grant`; the error says what the token may not do.
pub(super) fn authorize(grant: &Grant, req: &Request) -> Result<(), String> {
    let (need, queue): (u32, Option<&str>) = match req {
        Request::Hello(_) | Request::Ping => return Ok(()),
        Request::Publish { tasks, .. } => {
            allow(grant, ops::PUBLISH, "publish")?;
            for t in tasks {
                allow_queue(grant, &t.queue)?;
            }
            return Ok(());
        }
        Request::Subscribe { queue, .. } => (ops::SUBSCRIBE, Some(queue)),
        Request::Unsubscribe { .. }
        | Request::Ack { .. }
        | Request::Nack { .. }
        | Request::Release { .. }
        | Request::Extend { .. } => (ops::SETTLE, None),
        Request::GetTask { .. } | Request::WaitResult { .. } => (ops::STATUS, None),
        Request::Admin(AdminRequest::ListQueues { .. }) => {
            allow(grant, ops::ADMIN, "queue administration")?;
            if grant.prefixes().is_some() {
                return Err(format!(
                    "token `{}` is limited to some queues and may not list them all; ask for each queue by name",
                    grant.name
                ));
            }
            return Ok(());
        }
        // A schedule is named, not its queue: only tokens for every queue may touch
        // schedules by name. Adding one names its queue (checked below).
        Request::Admin(
            AdminRequest::ListSchedules { .. }
            | AdminRequest::RemoveSchedule { .. }
            | AdminRequest::SetSchedulePaused { .. },
        ) => {
            allow(grant, ops::ADMIN, "schedule administration")?;
            if grant.prefixes().is_some() {
                return Err(format!(
                    "token `{}` is limited to some queues and may not list, pause or remove schedules",
                    grant.name
                ));
            }
            return Ok(());
        }
        // The task's queue is checked against the prefixes when it is read.
        Request::GetPayload { .. } => (ops::ADMIN, None),
        Request::Admin(a) => (ops::ADMIN, a.queue()),
    };
    let what = match need {
        ops::SUBSCRIBE => "subscribe",
        ops::SETTLE => "settle deliveries",
        ops::STATUS => "read task status",
        _ => "queue administration",
    };
    allow(grant, need, what)?;
    match queue {
        Some(q) => allow_queue(grant, q),
        None => Ok(()),
    }
}

fn allow(grant: &Grant, need: u32, what: &str) -> Result<(), String> {
    if grant.allows(need) {
        return Ok(());
    }
    Err(format!(
        "token `{}` may not {what} (its role does not allow it)",
        grant.name
    ))
}

fn allow_queue(grant: &Grant, queue: &str) -> Result<(), String> {
    if grant.allows_queue(queue) {
        return Ok(());
    }
    Err(format!(
        "token `{}` may not use queue `{queue}`: it is limited to the prefixes {:?}",
        grant.name,
        grant.prefixes().map(|p| &p[..]).unwrap_or_default()
    ))
}
