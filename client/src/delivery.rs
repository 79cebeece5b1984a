//! A received task: `Task` (its data), `Lease` (the right to settle it, bound to the
//! connection it arrived on) and `Delivery` (both, with the public settle methods).
//! Receiving deliveries is `subscription.rs`; automatic lease extension is `worker/`.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use squall_proto::v1::{self, request::Op, response};
use tracing::{debug, warn};

use crate::conn::{unexpected, Conn};
use crate::error::{ClientError, Result};
use crate::publish::{duration_ms_ceil, from_unix_ms};

/// The data of a delivered task. A [`Worker`](crate::Worker) handler receives one;
/// a [`Delivery`] exposes the same accessors.
#[derive(Debug, Clone, PartialEq)]
pub struct Task {
    id: u64,
    queue: String,
    attempt: u32,
    max_attempts: u32,
    priority: i32,
    payload: Bytes,
    headers: BTreeMap<String, Bytes>,
    created_at_ms: u64,
    deadline_ms: u64,
    lease_token: u64,
}

impl Task {
    /// The task id.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// The queue it came from.
    pub fn queue(&self) -> &str {
        &self.queue
    }

    /// Which delivery this is: 1 for the first.
    pub fn attempt(&self) -> u32 {
        self.attempt
    }

    /// Deliveries allowed before the task goes to the dead set.
    pub fn max_attempts(&self) -> u32 {
        self.max_attempts
    }

    /// True when a failure now sends the task to the dead set instead of retrying it.
    pub fn is_last_attempt(&self) -> bool {
        self.max_attempts != 0 && self.attempt >= self.max_attempts
    }

    /// The task's priority.
    pub fn priority(&self) -> i32 {
        self.priority
    }

    /// The payload (cheap to clone).
    pub fn payload(&self) -> &Bytes {
        &self.payload
    }

    /// Takes the payload out, leaving an empty one.
    pub fn take_payload(&mut self) -> Bytes {
        std::mem::take(&mut self.payload)
    }

    /// All headers.
    pub fn headers(&self) -> &BTreeMap<String, Bytes> {
        &self.headers
    }

    /// One header's value.
    pub fn header(&self, name: &str) -> Option<&Bytes> {
        self.headers.get(name)
    }

    /// When the task was published (broker clock).
    pub fn created_at(&self) -> SystemTime {
        from_unix_ms(self.created_at_ms)
    }

    /// When the lease of this delivery ends unless extended (broker clock). Updated by
    /// [`Delivery::extend`].
    pub fn deadline(&self) -> SystemTime {
        from_unix_ms(self.deadline_ms)
    }

    /// The fencing token of this delivery, unique per delivery.
    pub fn lease_token(&self) -> u64 {
        self.lease_token
    }

    pub(crate) fn deadline_ms(&self) -> u64 {
        self.deadline_ms
    }
}

/// The right to settle one delivery. Bound to the connection the delivery came on:
/// the broker frees a connection's leases when it closes, so once that connection has
/// ended every settle fails locally with `LeaseExpired`, without a round trip.
///
/// Dropped unsettled (and the connection still up), it releases the task for
/// immediate redelivery with a `Nack { delay_ms: 0 }` (counts as an attempt) and logs
/// a warning.
pub(crate) struct Lease {
    conn: Arc<Conn>,
    task_id: u64,
    token: u64,
    settled: bool,
}

impl Lease {
    /// Marks the lease used and returns its connection, or `LeaseExpired` when it was
    /// already used or its connection has ended.
    fn take(&mut self) -> Result<&Arc<Conn>> {
        if self.settled || self.conn.is_closed() {
            self.settled = true;
            return Err(ClientError::LeaseExpired {
                task_id: self.task_id,
            });
        }
        self.settled = true;
        Ok(&self.conn)
    }

    /// Sends the ack now when an in-flight permit is free (else when first polled).
    fn ack_now(mut self, result: Bytes) -> Settlement {
        let (task_id, lease_token) = (self.task_id, self.token);
        let op = move || {
            Op::Ack(v1::Ack {
                task_id,
                lease_token,
                result: result.clone(),
            })
        };
        let conn = match self.take() {
            Ok(conn) => conn.clone(),
            Err(e) => return Settlement(SettlementInner::Failed(Some(e))),
        };
        Settlement(match conn.send_now(op(), "ack") {
            Ok(Some(sent)) => SettlementInner::Sent { sent, task_id },
            Err(e) => SettlementInner::Failed(Some(e.for_lease(task_id))),
            // No permit free: sent when polled, as `ack` does.
            Ok(None) => SettlementInner::Later(Box::pin(async move {
                expect_ok("ack", conn.call(op(), "ack").await, task_id)
            })),
        })
    }

    pub(crate) async fn ack(&mut self, result: Bytes) -> Result<()> {
        let op = Op::Ack(v1::Ack {
            task_id: self.task_id,
            lease_token: self.token,
            result,
        });
        let task_id = self.task_id;
        let answer = self.take()?.call(op, "ack").await;
        expect_ok("ack", answer, task_id)
    }

    pub(crate) async fn nack(
        &mut self,
        delay: Option<Duration>,
        dead: bool,
        reason: String,
    ) -> Result<()> {
        let op = Op::Nack(v1::Nack {
            task_id: self.task_id,
            lease_token: self.token,
            delay_ms: delay.map(duration_ms_ceil),
            dead,
            reason,
        });
        let task_id = self.task_id;
        let answer = self.take()?.call(op, "nack").await;
        expect_ok("nack", answer, task_id)
    }

    /// Pushes the deadline to broker-now + `by`; returns the new deadline (unix ms).
    pub(crate) async fn extend(&self, by: Duration) -> Result<u64> {
        if self.settled || self.conn.is_closed() {
            return Err(ClientError::LeaseExpired {
                task_id: self.task_id,
            });
        }
        let op = Op::Extend(v1::Extend {
            task_id: self.task_id,
            lease_token: self.token,
            extend_ms: duration_ms_ceil(by),
        });
        match self.conn.call(op, "extend").await {
            Ok(response::Result::Extend(ok)) => Ok(ok.deadline_ms),
            Ok(other) => Err(unexpected("extend", other)),
            Err(e) => Err(e.for_lease(self.task_id)),
        }
    }

    /// Returns the task for immediate redelivery without waiting for the answer.
    pub(crate) fn release(&mut self, reason: &str) {
        if self.settled {
            return;
        }
        self.settled = true;
        self.conn.send_oneway(Op::Nack(v1::Nack {
            task_id: self.task_id,
            lease_token: self.token,
            delay_ms: Some(0),
            dead: false,
            reason: reason.to_owned(),
        }));
    }

    /// Gives the task back as never started, without waiting for the answer: ready
    /// again at once, and this delivery does not count as an attempt.
    pub(crate) fn release_unseen_oneway(&mut self) {
        if self.settled {
            return;
        }
        self.settled = true;
        self.conn.send_oneway(Op::Release(v1::Release {
            task_id: self.task_id,
            lease_token: self.token,
        }));
    }

    pub(crate) async fn release_unseen(&mut self) -> Result<()> {
        let op = Op::Release(v1::Release {
            task_id: self.task_id,
            lease_token: self.token,
        });
        let task_id = self.task_id;
        let answer = self.take()?.call(op, "release").await;
        expect_ok("release", answer, task_id)
    }

    pub(crate) fn is_connection_closed(&self) -> bool {
        self.conn.is_closed()
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        if self.settled || self.conn.is_closed() {
            return;
        }
        warn!(
            task = self.task_id,
            "delivery dropped without ack or nack; releasing it for redelivery"
        );
        self.release("released: the delivery was dropped without being settled");
    }
}

/// An ack already sent ([`Delivery::ack_now`]): awaiting it gives the broker's
/// confirmation, with the same errors as [`Delivery::ack`]. Dropping it does not take
/// the ack back (it was sent); only its confirmation goes unheard.
#[must_use = "the ack is sent; await this to learn whether the broker confirmed it"]
pub struct Settlement(SettlementInner);

enum SettlementInner {
    Sent {
        sent: crate::conn::Sent,
        task_id: u64,
    },
    Later(std::pin::Pin<Box<dyn std::future::Future<Output = Result<()>> + Send>>),
    Failed(Option<ClientError>),
}

impl std::fmt::Debug for Settlement {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = match &self.0 {
            SettlementInner::Sent { task_id, .. } => format!("sent (task {task_id})"),
            SettlementInner::Later(_) => "to be sent when polled".to_owned(),
            SettlementInner::Failed(_) => "failed".to_owned(),
        };
        f.debug_tuple("Settlement").field(&state).finish()
    }
}

impl std::future::Future for Settlement {
    type Output = Result<()>;

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<()>> {
        use std::task::Poll;
        match &mut self.0 {
            SettlementInner::Sent { sent, task_id } => {
                let task_id = *task_id;
                match std::pin::Pin::new(sent).poll(cx) {
                    Poll::Ready(answer) => Poll::Ready(expect_ok("ack", answer, task_id)),
                    Poll::Pending => Poll::Pending,
                }
            }
            SettlementInner::Later(future) => future.as_mut().poll(cx),
            SettlementInner::Failed(error) => Poll::Ready(Err(error
                .take()
                .expect("a settlement is not polled after it resolved"))),
        }
    }
}

fn expect_ok(op: &str, answer: Result<response::Result>, task_id: u64) -> Result<()> {
    match answer {
        Ok(response::Result::Ok(_)) => Ok(()),
        Ok(other) => Err(unexpected(op, other)),
        Err(e) => Err(e.for_lease(task_id)),
    }
}

/// One delivery of a task under a lease: read it, then settle it exactly once with
/// [`ack`](Self::ack), [`ack_with`](Self::ack_with), [`nack`](Self::nack),
/// [`nack_after`](Self::nack_after), [`nack_with`](Self::nack_with) or
/// [`fail`](Self::fail); [`extend`](Self::extend) the lease while working.
///
/// **Dropping a delivery without settling it releases the task** for immediate
/// redelivery (a `Nack` with delay 0, which counts as an attempt) and logs a warning.
///
/// **Leases never survive a reconnect**: the broker frees a connection's leases when
/// it closes. Settling a delivery that arrived on a connection that has since ended
/// fails at once with [`ClientError::LeaseExpired`], without a round trip; the task is
/// redelivered. A settle in flight when the connection drops fails with
/// [`ClientError::ConnectionLost`] (it may or may not have been applied).
///
/// ```no_run
/// # async fn demo(mut d: squall_client::Delivery) -> Result<(), squall_client::ClientError> {
/// use std::time::Duration;
/// if d.payload().is_empty() {
///     d.fail("empty payload").await?;             // dead set now, with a reason
/// } else if d.attempt() < 3 {
///     d.extend(Duration::from_secs(60)).await?;   // more time
///     d.nack_after(Duration::from_secs(5)).await?; // retry in 5 s
/// } else {
///     d.ack().await?;
/// }
/// # Ok(()) }
/// ```
pub struct Delivery {
    task: Task,
    lease: Lease,
}

impl Delivery {
    pub(crate) fn new(d: v1::Delivery, conn: Arc<Conn>) -> Self {
        let lease = Lease {
            conn,
            task_id: d.task_id,
            token: d.lease_token,
            settled: false,
        };
        let task = Task {
            id: d.task_id,
            queue: d.queue,
            attempt: d.attempt,
            max_attempts: d.max_attempts,
            priority: d.priority,
            payload: d.payload,
            headers: d.headers,
            created_at_ms: d.created_at_ms,
            deadline_ms: d.deadline_ms,
            lease_token: d.lease_token,
        };
        Delivery { task, lease }
    }

    pub(crate) fn into_parts(self) -> (Task, Lease) {
        (self.task, self.lease)
    }

    /// True when the connection this delivery came on has ended (its lease is gone).
    pub(crate) fn is_stale(&self) -> bool {
        self.lease.is_connection_closed()
    }

    /// The task's data.
    pub fn task(&self) -> &Task {
        &self.task
    }

    /// The task id.
    pub fn id(&self) -> u64 {
        self.task.id
    }

    /// The queue it came from.
    pub fn queue(&self) -> &str {
        &self.task.queue
    }

    /// Which delivery this is: 1 for the first.
    pub fn attempt(&self) -> u32 {
        self.task.attempt
    }

    /// Deliveries allowed before the task goes to the dead set.
    pub fn max_attempts(&self) -> u32 {
        self.task.max_attempts
    }

    /// True when a failure now sends the task to the dead set instead of retrying it.
    pub fn is_last_attempt(&self) -> bool {
        self.task.is_last_attempt()
    }

    /// The payload (cheap to clone).
    pub fn payload(&self) -> &Bytes {
        &self.task.payload
    }

    /// All headers.
    pub fn headers(&self) -> &BTreeMap<String, Bytes> {
        &self.task.headers
    }

    /// One header's value.
    pub fn header(&self, name: &str) -> Option<&Bytes> {
        self.task.headers.get(name)
    }

    /// The task's priority.
    pub fn priority(&self) -> i32 {
        self.task.priority
    }

    /// When the task was published (broker clock).
    pub fn created_at(&self) -> SystemTime {
        self.task.created_at()
    }

    /// When the lease ends unless extended (broker clock).
    pub fn deadline(&self) -> SystemTime {
        self.task.deadline()
    }

    /// The fencing token of this delivery.
    pub fn lease_token(&self) -> u64 {
        self.task.lease_token
    }

    /// Done: the task is removed (or kept as a result, per the queue's retention).
    pub async fn ack(mut self) -> Result<()> {
        self.lease.ack(Bytes::new()).await
    }

    /// Done, with a result payload the queue may retain.
    pub async fn ack_with(mut self, result: impl Into<Bytes>) -> Result<()> {
        self.lease.ack(result.into()).await
    }

    /// Done, **sent at once**: unlike [`ack`](Self::ack), which sends nothing until it
    /// is awaited, the ack is on its way when this returns, and the returned
    /// [`Settlement`] resolves to the broker's confirmation. A consumer can then keep
    /// many acks in flight while it works on the next deliveries, and collect their
    /// confirmations later (in any order, or in batches). Only when the connection
    /// already has its most requests in flight is the ack sent once the settlement is
    /// first awaited. Call it inside the tokio runtime.
    ///
    /// ```no_run
    /// # async fn demo(mut sub: squall_client::Subscription) -> Result<(), squall_client::ClientError> {
    /// let mut confirmations = Vec::new();
    /// while let Some(delivery) = sub.recv().await {
    ///     let delivery = delivery?;
    ///     // ... handle it ...
    ///     confirmations.push(delivery.ack_now());
    ///     if confirmations.len() == 64 {
    ///         for c in confirmations.drain(..) {
    ///             c.await?;
    ///         }
    ///     }
    /// }
    /// # Ok(()) }
    /// ```
    pub fn ack_now(self) -> Settlement {
        self.ack_now_with(Bytes::new())
    }

    /// [`ack_now`](Self::ack_now) with a result payload the queue may retain.
    pub fn ack_now_with(self, result: impl Into<Bytes>) -> Settlement {
        self.lease.ack_now(result.into())
    }

    /// Failed: retry after the queue's exponential backoff (or dead set if this was the
    /// last attempt).
    pub async fn nack(mut self) -> Result<()> {
        self.lease.nack(None, false, String::new()).await
    }

    /// Failed: retry after `delay` (or dead set if this was the last attempt).
    pub async fn nack_after(mut self, delay: Duration) -> Result<()> {
        self.lease.nack(Some(delay), false, String::new()).await
    }

    /// Failed with a reason recorded as the task's last error: retry after `delay`,
    /// or after the queue's backoff when `delay` is `None`.
    pub async fn nack_with(
        mut self,
        reason: impl Into<String>,
        delay: Option<Duration>,
    ) -> Result<()> {
        self.lease.nack(delay, false, reason.into()).await
    }

    /// Failed for good: the task goes to the dead set now, whatever its attempts, with
    /// `reason` as its last error.
    pub async fn fail(mut self, reason: impl Into<String>) -> Result<()> {
        self.lease.nack(None, true, reason.into()).await
    }

    /// Pushes the lease deadline to broker-now + `by` (capped by the broker's max lease)
    /// and returns the new deadline.
    pub async fn extend(&mut self, by: Duration) -> Result<SystemTime> {
        let deadline_ms = self.lease.extend(by).await?;
        self.task.deadline_ms = deadline_ms;
        Ok(from_unix_ms(deadline_ms))
    }

    /// Releases the task for immediate redelivery without logging a warning and without
    /// waiting for the broker's answer (a `Nack` with delay 0; counts as an attempt).
    pub fn release(mut self) {
        self.lease.release("released by the consumer");
    }

    /// Gives the task back as never started: it is ready again at once and this
    /// delivery does not count as an attempt. Returns once the broker has stored that.
    ///
    /// For a delivery that reached the program but never its handler (still buffered
    /// when the program stopped, or its output was closed before it was shown). A
    /// consumer that did start on the task must [`nack`](Self::nack) or
    /// [`release`](Self::release) it instead, so that a task that kills its handler
    /// still reaches the dead set after `max_attempts`.
    pub async fn release_unseen(mut self) -> Result<()> {
        self.lease.release_unseen().await
    }
}

impl std::fmt::Debug for Delivery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Delivery")
            .field("id", &self.task.id)
            .field("queue", &self.task.queue)
            .field("attempt", &self.task.attempt)
            .field("payload_len", &self.task.payload.len())
            .finish_non_exhaustive()
    }
}

/// Logs a settle failure at the level it deserves: a lost lease is expected under
/// at-least-once delivery, anything else is a warning.
pub(crate) fn log_settle_error(op: &str, task_id: u64, err: &ClientError) {
    match err {
        // Both are expected under at-least-once delivery: the broker frees a lease when
        // it expires or when the connection holding it closes, and redelivers the task.
        ClientError::LeaseExpired { .. } | ClientError::ConnectionLost { .. } => {
            debug!(task = task_id, op, error = %err, "lease gone before settling; the task will be redelivered")
        }
        other => warn!(task = task_id, op, error = %other, "settling the task failed"),
    }
}
