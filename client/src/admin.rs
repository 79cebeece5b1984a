//! Queue administration: the `Client` methods operators and tools use (`queues`,
//! `queue`, `set_queue_config`, `pause`, `resume`, `peek`, `purge`, `redrive`,
//! `delete_queue`) and the plain data types they return. Requests go over the same
//! pipelined connection as everything else (`conn.rs`).

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use squall_proto::v1::{self, request::Op, response};
use squall_proto::ErrorCode;

use crate::client::Client;
use crate::conn::unexpected;
use crate::error::{ClientError, Result};
use crate::publish::{duration_ms_ceil, from_unix_ms};

/// One queue's state, counters and configuration, as [`Client::queues`] and
/// [`Client::queue`] report them.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct QueueInfo {
    /// Queue name.
    pub name: String,
    /// Tasks ready for delivery.
    pub ready: u64,
    /// Tasks waiting for their delay to pass.
    pub delayed: u64,
    /// Tasks held by consumers under a lease.
    pub leased: u64,
    /// Tasks in the dead set.
    pub dead: u64,
    /// Subscriptions.
    pub consumers: u64,
    /// Lifetime totals since the broker started.
    pub totals: QueueTotals,
    /// Per-second rates over the last minute.
    pub rates: QueueRates,
    /// Age of the oldest ready task; `None` when nothing is ready.
    pub oldest_ready_age: Option<Duration>,
    /// Paused: publishes are accepted, nothing is delivered.
    pub paused: bool,
    /// The queue's configuration.
    pub config: QueueSettings,
}

/// Lifetime counters of a queue since the broker started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct QueueTotals {
    /// Tasks published.
    pub published: u64,
    /// Deliveries.
    pub delivered: u64,
    /// Deliveries of tasks delivered before (retries).
    pub redelivered: u64,
    /// Acks.
    pub acked: u64,
    /// Nacks.
    pub nacked: u64,
    /// Leases that ran out.
    pub expired: u64,
    /// Tasks moved to the dead set.
    pub dead_lettered: u64,
    /// Tasks that expired before their first delivery.
    pub expired_tasks: u64,
}

/// Events per second, averaged over the last minute.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
#[non_exhaustive]
pub struct QueueRates {
    /// Publishes per second.
    pub published: f64,
    /// Deliveries per second.
    pub delivered: f64,
    /// Acks per second.
    pub acked: f64,
    /// Nacks per second.
    pub nacked: f64,
    /// Lease expiries per second.
    pub expired: f64,
    /// Tasks moved to the dead set per second.
    pub dead_lettered: f64,
}

/// A queue's configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct QueueSettings {
    /// Default lease of a delivery.
    pub lease: Duration,
    /// Deliveries before a task is dead (0 = unlimited).
    pub max_attempts: u32,
    /// Retry backoff: first delay.
    pub backoff_min: Duration,
    /// Retry backoff: cap.
    pub backoff_max: Duration,
    /// Most pending tasks (0 = unbounded).
    pub max_length: u64,
    /// How long succeeded and dead records are kept.
    pub result_ttl: Duration,
    /// Idempotency-key window.
    pub dedup_window: Duration,
    /// Paused.
    pub paused: bool,
    /// Most tasks leased at once across all consumers (0 = no cap).
    pub max_in_flight: u32,
    /// Most deliveries per second (0 = no limit).
    pub rate_limit: u32,
    /// Deliveries the rate limit's bucket holds when full (0 = `rate_limit`).
    pub rate_burst: u32,
    /// Tasks not started by their expiry are dropped instead of dead-lettered.
    pub drop_expired: bool,
    /// An ack without a result keeps a succeeded record too (by default only an ack
    /// with a result does; see [`QueueConfigUpdate::keep_acked`]).
    pub keep_acked: bool,
}

/// A configuration change for [`Client::set_queue_config`]: only what is set changes.
///
/// ```
/// use std::time::Duration;
/// use squall_client::QueueConfigUpdate;
///
/// let update = QueueConfigUpdate::new()
///     .lease(Duration::from_secs(30))
///     .max_attempts(5)
///     .backoff(Duration::from_secs(1), Duration::from_secs(600));
/// assert!(!update.is_empty());
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[must_use]
pub struct QueueConfigUpdate {
    lease: Option<Duration>,
    max_attempts: Option<u32>,
    backoff_min: Option<Duration>,
    backoff_max: Option<Duration>,
    max_length: Option<u64>,
    result_ttl: Option<Duration>,
    dedup_window: Option<Duration>,
    max_in_flight: Option<u32>,
    rate_limit: Option<u32>,
    rate_burst: Option<u32>,
    drop_expired: Option<bool>,
    keep_acked: Option<bool>,
}

impl QueueConfigUpdate {
    /// An update that changes nothing yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Default lease of a delivery (within the broker's max lease).
    pub fn lease(mut self, lease: Duration) -> Self {
        self.lease = Some(lease);
        self
    }

    /// Deliveries before a task is dead (0 = unlimited).
    pub fn max_attempts(mut self, n: u32) -> Self {
        self.max_attempts = Some(n);
        self
    }

    /// Retry backoff range: the first retry waits about `min`, later ones double up to
    /// `max`. The broker refuses `min > max`.
    pub fn backoff(mut self, min: Duration, max: Duration) -> Self {
        self.backoff_min = Some(min);
        self.backoff_max = Some(max);
        self
    }

    /// Most pending tasks (0 = unbounded).
    pub fn max_length(mut self, n: u64) -> Self {
        self.max_length = Some(n);
        self
    }

    /// How long succeeded and dead records are kept.
    pub fn result_ttl(mut self, ttl: Duration) -> Self {
        self.result_ttl = Some(ttl);
        self
    }

    /// Idempotency-key window.
    pub fn dedup_window(mut self, window: Duration) -> Self {
        self.dedup_window = Some(window);
        self
    }

    /// Most tasks of the queue leased at once, across all consumers and connections
    /// (0 = no cap).
    pub fn max_in_flight(mut self, n: u32) -> Self {
        self.max_in_flight = Some(n);
        self
    }

    /// Most deliveries per second, a token bucket holding `burst` (0 = `per_second`);
    /// `per_second` 0 removes the limit.
    pub fn rate_limit(mut self, per_second: u32, burst: u32) -> Self {
        self.rate_limit = Some(per_second);
        self.rate_burst = Some(burst);
        self
    }

    /// Drop tasks not started by their expiry instead of moving them to the dead set.
    pub fn drop_expired(mut self, drop: bool) -> Self {
        self.drop_expired = Some(drop);
        self
    }

    /// Whether an ack without a result keeps a succeeded record (readable with
    /// `Client::task` and `wait_result` for the result TTL). By default only an ack
    /// that carries a result does; an ack without one removes the task at once, and
    /// its status then reads `Unknown`.
    pub fn keep_acked(mut self, keep: bool) -> Self {
        self.keep_acked = Some(keep);
        self
    }

    /// True when nothing would change.
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }

    fn into_request(self, queue: String) -> v1::SetQueueConfig {
        let ms = |d: Option<Duration>| d.map(duration_ms_ceil);
        v1::SetQueueConfig {
            queue,
            lease_ms: ms(self.lease),
            max_attempts: self.max_attempts,
            backoff_min_ms: ms(self.backoff_min),
            backoff_max_ms: ms(self.backoff_max),
            max_length: self.max_length,
            result_ttl_ms: ms(self.result_ttl),
            dedup_window_ms: ms(self.dedup_window),
            max_in_flight: self.max_in_flight,
            rate_limit: self.rate_limit,
            rate_burst: self.rate_burst,
            drop_expired: self.drop_expired,
            keep_acked: self.keep_acked,
        }
    }
}

/// The states a task can be inspected or purged in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StateFilter {
    /// Waiting for a consumer.
    Ready,
    /// Waiting for its delay to pass.
    Delayed,
    /// Held by a consumer under a lease.
    Leased,
    /// In the dead set.
    Dead,
}

impl StateFilter {
    /// Every state, in lifecycle order.
    pub const ALL: [StateFilter; 4] = [
        StateFilter::Ready,
        StateFilter::Delayed,
        StateFilter::Leased,
        StateFilter::Dead,
    ];

    /// The lowercase name (`ready`, `delayed`, `leased`, `dead`).
    pub fn as_str(self) -> &'static str {
        match self {
            StateFilter::Ready => "ready",
            StateFilter::Delayed => "delayed",
            StateFilter::Leased => "leased",
            StateFilter::Dead => "dead",
        }
    }

    fn to_wire(state: Option<StateFilter>) -> i32 {
        let f = match state {
            None => v1::TaskStateFilter::Unspecified,
            Some(StateFilter::Ready) => v1::TaskStateFilter::Ready,
            Some(StateFilter::Delayed) => v1::TaskStateFilter::Delayed,
            Some(StateFilter::Leased) => v1::TaskStateFilter::Leased,
            Some(StateFilter::Dead) => v1::TaskStateFilter::Dead,
        };
        f as i32
    }

    fn from_wire(raw: i32) -> Result<StateFilter> {
        match v1::TaskStateFilter::try_from(raw) {
            Ok(v1::TaskStateFilter::Ready) => Ok(StateFilter::Ready),
            Ok(v1::TaskStateFilter::Delayed) => Ok(StateFilter::Delayed),
            Ok(v1::TaskStateFilter::Leased) => Ok(StateFilter::Leased),
            Ok(v1::TaskStateFilter::Dead) => Ok(StateFilter::Dead),
            _ => Err(ClientError::Protocol(format!(
                "peeked task with unknown state {raw}"
            ))),
        }
    }
}

impl fmt::Display for StateFilter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for StateFilter {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, Self::Err> {
        StateFilter::ALL
            .into_iter()
            .find(|t| t.as_str().eq_ignore_ascii_case(s))
            .ok_or_else(|| format!("`{s}` is not a task state: ready, delayed, leased or dead"))
    }
}

/// A task seen by [`Client::peek`], without any change to it.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct PeekedTask {
    /// Task id.
    pub id: u64,
    /// Its state.
    pub state: StateFilter,
    /// Priority.
    pub priority: i32,
    /// Deliveries so far.
    pub attempts: u32,
    /// Deliveries allowed (0 = unlimited).
    pub max_attempts: u32,
    /// When it was published.
    pub created_at: SystemTime,
    /// Its last state change.
    pub updated_at: SystemTime,
    /// Delayed tasks: when they become ready.
    pub not_before: Option<SystemTime>,
    /// Leased tasks: who holds the lease (connection, subscription, peer, client name).
    pub lease_holder: Option<String>,
    /// Leased tasks: the lease deadline.
    pub lease_deadline: Option<SystemTime>,
    /// Reason of the last failed attempt.
    pub last_error: Option<String>,
    /// The payload's first bytes (the broker's preview, 1 KiB by default), or all of
    /// it when `truncated` is false; [`Client::payload`] reads the whole of it.
    pub payload: Bytes,
    /// Headers (left out, and `truncated` set, when larger than the preview).
    pub headers: BTreeMap<String, Bytes>,
    /// The payload was cut to the preview, or the headers left out.
    pub truncated: bool,
    /// Size of the whole payload.
    pub payload_bytes: u64,
}

/// A task's whole payload and headers, from [`Client::payload`].
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct TaskPayload {
    /// Task id.
    pub id: u64,
    /// Its queue.
    pub queue: String,
    /// The payload.
    pub payload: Bytes,
    /// The headers.
    pub headers: BTreeMap<String, Bytes>,
}

/// Most tasks one [`Client::peek`] returns (the broker's cap).
pub const MAX_PEEK: u32 = 1000;

impl Client {
    /// Every queue with its counts, totals, rates and configuration, sorted by name.
    /// The broker answers a page at a time; this asks for pages until the last.
    pub async fn queues(&self) -> Result<Vec<QueueInfo>> {
        let mut all = Vec::new();
        let mut after = String::new();
        loop {
            let (page, more) = self.queue_page(&after, 0).await?;
            match (more, page.last()) {
                (true, Some(last)) => after = last.name.clone(),
                _ => {
                    all.extend(page);
                    return Ok(all);
                }
            }
            all.extend(page);
        }
    }

    /// One page of queues sorted by name: those after `after` ("" = from the first),
    /// at most `limit` (0 = the broker's default of 1000), and whether more follow.
    pub async fn queue_page(&self, after: &str, limit: u32) -> Result<(Vec<QueueInfo>, bool)> {
        let op = Op::ListQueues(v1::ListQueues {
            after: after.to_owned(),
            limit,
        });
        match self.call(op, "list queues").await? {
            response::Result::Queues(list) => {
                let page = list
                    .queues
                    .into_iter()
                    .map(queue_info)
                    .collect::<Result<Vec<_>>>()?;
                Ok((page, list.more))
            }
            other => Err(unexpected("list queues", other)),
        }
    }

    /// A task's whole payload and headers ([`Client::peek`] carries previews). A task
    /// that is gone is `ClientError::Server` with [`ErrorCode::NotFound`].
    pub async fn payload(&self, id: u64) -> Result<TaskPayload> {
        let op = Op::GetPayload(v1::GetPayload { task_id: id });
        match self.call(op, "get payload").await? {
            response::Result::Payload(p) => Ok(TaskPayload {
                id: p.task_id,
                queue: p.queue,
                payload: p.payload,
                headers: p.headers.into_iter().collect(),
            }),
            other => Err(unexpected("get payload", other)),
        }
    }

    /// One queue. A queue that does not exist is `ClientError::Server` with
    /// [`ErrorCode::NotFound`].
    pub async fn queue(&self, queue: impl Into<String>) -> Result<QueueInfo> {
        let queue = checked(queue)?;
        self.queue_answer(Op::GetQueue(v1::GetQueue { queue }), "get queue")
            .await
    }

    /// Changes a queue's configuration (creating the queue if needed) and returns it.
    /// The change is durable when this returns. Refused with
    /// [`ErrorCode::BadRequest`] when the result is inconsistent (a lease above the
    /// broker's maximum, a backoff minimum above its maximum).
    pub async fn set_queue_config(
        &self,
        queue: impl Into<String>,
        update: QueueConfigUpdate,
    ) -> Result<QueueInfo> {
        let queue = checked(queue)?;
        if update.is_empty() {
            return Err(ClientError::invalid(
                ErrorCode::BadRequest,
                "the configuration update changes nothing",
            ));
        }
        let op = Op::SetQueueConfig(Box::new(update.into_request(queue)));
        self.queue_answer(op, "set queue config").await
    }

    /// Pauses a queue (creating it if needed): publishes are still accepted, nothing
    /// is delivered until [`resume`](Client::resume). Durable when this returns.
    pub async fn pause(&self, queue: impl Into<String>) -> Result<QueueInfo> {
        self.set_paused(queue, true).await
    }

    /// Resumes a paused queue.
    pub async fn resume(&self, queue: impl Into<String>) -> Result<QueueInfo> {
        self.set_paused(queue, false).await
    }

    async fn set_paused(&self, queue: impl Into<String>, paused: bool) -> Result<QueueInfo> {
        let queue = checked(queue)?;
        let op = Op::SetPaused(v1::SetPaused { queue, paused });
        self.queue_answer(op, "pause or resume").await
    }

    /// Up to `limit` tasks of a queue in `state` (1..=[`MAX_PEEK`]) with a preview of
    /// their payloads, without changing anything: no lease, no attempt, no counter.
    /// Ready tasks come in delivery order, delayed ones by due time, leased ones by
    /// deadline, dead ones oldest first. Fewer come when they would not fit in one
    /// frame of the broker's.
    pub async fn peek(
        &self,
        queue: impl Into<String>,
        state: StateFilter,
        limit: u32,
    ) -> Result<Vec<PeekedTask>> {
        let queue = checked(queue)?;
        if limit == 0 || limit > MAX_PEEK {
            return Err(ClientError::invalid(
                ErrorCode::BadRequest,
                format!("peek limit {limit} is outside 1..={MAX_PEEK}"),
            ));
        }
        let op = Op::Peek(v1::Peek {
            queue,
            state: StateFilter::to_wire(Some(state)),
            limit,
            preview_bytes: 0,
        });
        match self.call(op, "peek").await? {
            response::Result::Peek(ok) => ok.tasks.into_iter().map(peeked_task).collect(),
            other => Err(unexpected("peek", other)),
        }
    }

    /// Removes a queue's tasks in `state`, or with `None` every task that is not
    /// leased (ready, delayed, dead). Purging leased tasks ends their leases: their
    /// holders' acks get [`ClientError::LeaseExpired`]. Returns how many were removed,
    /// once the removal is durable.
    pub async fn purge(&self, queue: impl Into<String>, state: Option<StateFilter>) -> Result<u64> {
        let queue = checked(queue)?;
        let op = Op::Purge(v1::Purge {
            queue,
            state: StateFilter::to_wire(state),
        });
        self.count_answer(op, "purge").await
    }

    /// Moves up to `limit` dead tasks (oldest first; `None` = all) back to ready with
    /// their attempts reset. Returns how many moved.
    pub async fn redrive(&self, queue: impl Into<String>, limit: Option<u32>) -> Result<u64> {
        let queue = checked(queue)?;
        let limit = match limit {
            Some(0) => {
                return Err(ClientError::invalid(
                    ErrorCode::BadRequest,
                    "redrive limit must be at least 1 (or None for all)",
                ))
            }
            Some(n) => n,
            None => 0,
        };
        self.count_answer(Op::Redrive(v1::Redrive { queue, limit }), "redrive")
            .await
    }

    /// Deletes a queue: every task in it, its configuration and its subscriptions
    /// (their streams end with [`ClientError::SubscriptionEnded`]). Returns how many
    /// tasks were removed. Publishing or subscribing to the name again creates a new,
    /// empty queue.
    pub async fn delete_queue(&self, queue: impl Into<String>) -> Result<u64> {
        let queue = checked(queue)?;
        self.count_answer(Op::DeleteQueue(v1::DeleteQueue { queue }), "delete queue")
            .await
    }

    async fn queue_answer(&self, op: Op, name: &'static str) -> Result<QueueInfo> {
        match self.call(op, name).await? {
            response::Result::Queue(q) => queue_info(*q),
            other => Err(unexpected(name, other)),
        }
    }

    async fn count_answer(&self, op: Op, name: &'static str) -> Result<u64> {
        match self.call(op, name).await? {
            response::Result::Count(c) => Ok(c.count),
            other => Err(unexpected(name, other)),
        }
    }
}

pub(crate) fn checked(queue: impl Into<String>) -> Result<String> {
    let queue = queue.into();
    crate::check_queue_name(&queue)?;
    Ok(queue)
}

fn queue_info(q: v1::QueueInfo) -> Result<QueueInfo> {
    let config = q.config.ok_or_else(|| {
        ClientError::Protocol(format!("queue {} came without its configuration", q.name))
    })?;
    let rates = q.rates.unwrap_or_default();
    Ok(QueueInfo {
        name: q.name,
        ready: q.ready,
        delayed: q.delayed,
        leased: q.leased,
        dead: q.dead,
        consumers: q.consumers,
        totals: QueueTotals {
            published: q.published,
            delivered: q.delivered,
            redelivered: q.redelivered,
            acked: q.acked,
            nacked: q.nacked,
            expired: q.expired,
            dead_lettered: q.dead_lettered,
            expired_tasks: q.expired_tasks,
        },
        rates: QueueRates {
            published: rates.published,
            delivered: rates.delivered,
            acked: rates.acked,
            nacked: rates.nacked,
            expired: rates.expired,
            dead_lettered: rates.dead_lettered,
        },
        oldest_ready_age: q.oldest_ready_age_ms.map(Duration::from_millis),
        paused: q.paused,
        config: QueueSettings {
            lease: Duration::from_millis(config.lease_ms),
            max_attempts: config.max_attempts,
            backoff_min: Duration::from_millis(config.backoff_min_ms),
            backoff_max: Duration::from_millis(config.backoff_max_ms),
            max_length: config.max_length,
            result_ttl: Duration::from_millis(config.result_ttl_ms),
            dedup_window: Duration::from_millis(config.dedup_window_ms),
            paused: config.paused,
            max_in_flight: config.max_in_flight,
            rate_limit: config.rate_limit,
            rate_burst: config.rate_burst,
            drop_expired: config.drop_expired,
            keep_acked: config.keep_acked,
        },
    })
}

fn peeked_task(t: v1::PeekedTask) -> Result<PeekedTask> {
    let nonzero = |ms: u64| (ms > 0).then(|| from_unix_ms(ms));
    let nonempty = |s: String| (!s.is_empty()).then_some(s);
    Ok(PeekedTask {
        id: t.task_id,
        state: StateFilter::from_wire(t.state)?,
        priority: t.priority,
        attempts: t.attempts,
        max_attempts: t.max_attempts,
        created_at: from_unix_ms(t.created_at_ms),
        updated_at: from_unix_ms(t.updated_at_ms),
        not_before: nonzero(t.not_before_ms),
        lease_holder: nonempty(t.lease_holder),
        lease_deadline: nonzero(t.lease_deadline_ms),
        last_error: nonempty(t.last_error),
        payload: t.payload,
        headers: t.headers.into_iter().collect(),
        truncated: t.truncated,
        payload_bytes: t.payload_bytes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn task_states_parse_and_print() {
        for s in StateFilter::ALL {
            assert_eq!(s.as_str().parse::<StateFilter>(), Ok(s));
            assert_eq!(
                StateFilter::from_wire(StateFilter::to_wire(Some(s))).ok(),
                Some(s)
            );
        }
        assert_eq!("DEAD".parse::<StateFilter>(), Ok(StateFilter::Dead));
        assert!("gone".parse::<StateFilter>().is_err());
    }

    #[test]
    fn an_update_sends_only_what_is_set() {
        let req = QueueConfigUpdate::new()
            .lease(Duration::from_millis(1500))
            .max_length(10)
            .into_request("q".into());
        assert_eq!(req.lease_ms, Some(1500));
        assert_eq!(req.max_length, Some(10));
        assert_eq!((req.max_attempts, req.backoff_min_ms), (None, None));
        assert!(QueueConfigUpdate::new().is_empty());
    }
}
