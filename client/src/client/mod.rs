//! `Client`: the cheap-to-clone handle, its request methods (publish, subscribe, ping),
//! and the supervisor task that reconnects with backoff and re-subscribes live
//! subscriptions. Socket I/O and request/answer matching are in `conn.rs`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use parking_lot::Mutex;
use squall_proto::v1::{self, request::Op, response};
use squall_proto::ErrorCode;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::config::{ClientBuilder, Config};
use crate::conn::unexpected;
use crate::error::{ClientError, Result};
use crate::info::ServerInfo;
use crate::publish::{
    check_batch_len, check_spec, confirmed, duration_ms_ceil, Message, PublishOptions, Published,
    TaskId,
};
use crate::status::{TaskOutcome, TaskStatus};
use crate::subscription::{SubscribeBuilder, Subscription};
use crate::worker::Worker;

mod link;

use self::link::{supervise, Link, Shared, SubRecord};

/// How many times a publish that is safe to repeat (numbered by its producer, or with
/// an idempotency key on every task) is sent again after its outcome was unknown.
const PUBLISH_RETRIES: u32 = 2;
/// A wait the broker ended this close to the caller's deadline counts as timed out
/// (the two clocks round differently); further from it, the client waits again.
const WAIT_AGAIN_MIN: Duration = Duration::from_millis(50);

/// A connection to a Squall broker. Cheap to clone (an `Arc` inside) and meant to be
/// shared: every clone pipelines its requests over the same TCP connection.
///
/// The connection is kept up in the background: when it is lost the client
/// reconnects with capped exponential backoff and jitter
/// ([`ReconnectPolicy`](crate::ReconnectPolicy)) and re-subscribes every live
/// [`Subscription`]. Calls made meanwhile wait up to
/// [`wait_for_connection`](ClientBuilder::wait_for_connection), then fail with
/// [`ClientError::Unavailable`]; every call is bounded by the request timeout.
///
/// Background tasks end when every `Client` clone and every `Subscription` is dropped,
/// or on [`close`](Client::close).
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

struct Inner {
    shared: Arc<Shared>,
    supervisor: Mutex<Option<JoinHandle<()>>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.shared.shutdown.cancel();
    }
}

impl Client {
    /// Connects to the broker at `addr` (`host:port`) with default settings.
    ///
    /// `addr` may list several members of one cluster, comma-separated: the client
    /// connects to whichever leads (a member that does not lead refuses with
    /// `NOT_LEADER` naming the leader), learns every member from the leader, and after
    /// a leader change reconnects to the new leader and re-subscribes by itself.
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), squall_client::ClientError> {
    /// let client = squall_client::Client::connect("127.0.0.1:7600").await?;
    /// let published = client.publish("emails", "hello").await?;
    /// println!("task {} is durable", published.id);
    /// # Ok(()) }
    /// ```
    pub async fn connect(addr: impl ToString) -> Result<Client> {
        ClientBuilder::new().connect(addr).await
    }

    /// A builder for a client with non-default settings.
    pub fn builder() -> ClientBuilder {
        ClientBuilder::new()
    }

    pub(crate) async fn connect_with(addr: String, config: Config) -> Result<Client> {
        let addr: Arc<str> = addr.into();
        let members = link::members_of(&addr);
        let conn = link::dial_leader(&members, &config, 1).await?;
        info!(addr = %addr, node = %conn.info().node_id, server_version = %conn.info().server_version, "connected to squall broker");
        let shared = Arc::new(Shared {
            addr,
            members: Mutex::new(members),
            config,
            link: watch::Sender::new(Link::Up(conn.clone())),
            info: Mutex::new(conn.info().clone()),
            subs: Mutex::new(HashMap::new()),
            next_sub_key: AtomicU64::new(1),
            generation: AtomicU64::new(1),
            shutdown: CancellationToken::new(),
            producer: Arc::from(format!("{:032x}", rand::random::<u128>())),
            next_sequence: AtomicU64::new(1),
        });
        shared.learn(&conn);
        let supervisor = tokio::spawn(supervise(shared.clone(), conn));
        Ok(Client {
            inner: Arc::new(Inner {
                shared,
                supervisor: Mutex::new(Some(supervisor)),
            }),
        })
    }

    fn shared(&self) -> &Arc<Shared> {
        &self.inner.shared
    }

    /// Publishes one task with default options; returns once it is durable.
    ///
    /// On a single broker it is not retried by the client: on [`ClientError::Timeout`]
    /// or [`ClientError::ConnectionLost`] the outcome is unknown; publish again only
    /// with an idempotency key ([`PublishOptions::idempotency_key`]); with one,
    /// [`publish_with`](Self::publish_with) retries by itself. To a replicated cluster
    /// every publish is numbered (this client's producer id and a sequence number), so
    /// one whose outcome is unknown (a leader change) is sent again by itself, and the
    /// cluster answers a repeat with the first tasks' ids.
    pub async fn publish(
        &self,
        queue: impl Into<String>,
        payload: impl Into<Bytes>,
    ) -> Result<Published> {
        self.publish_with(queue, payload, PublishOptions::default())
            .await
    }

    /// Publishes one task with `options`; returns once it is durable.
    ///
    /// With an [`idempotency_key`](PublishOptions::idempotency_key), a publish whose
    /// outcome is unknown (timeout, lost connection) is sent again, up to twice; a
    /// repeat that finds the first attempt stored returns its id with
    /// [`Published::duplicate`] set.
    ///
    /// ```no_run
    /// # async fn demo(client: squall_client::Client) -> Result<(), squall_client::ClientError> {
    /// use std::time::Duration;
    /// use squall_client::PublishOptions;
    ///
    /// let opts = PublishOptions::new().priority(10).delay(Duration::from_secs(60)).header("tenant", "acme");
    /// let published = client.publish_with("reports", r#"{"month":"2024-05"}"#, opts).await?;
    /// # let _ = published; Ok(()) }
    /// ```
    pub async fn publish_with(
        &self,
        queue: impl Into<String>,
        payload: impl Into<Bytes>,
        options: PublishOptions,
    ) -> Result<Published> {
        let spec = options.into_spec(queue.into(), payload.into());
        let mut published = self.publish_specs(vec![spec]).await?;
        published
            .pop()
            .ok_or_else(|| ClientError::Protocol("publish confirmed no task".into()))
    }

    /// Publishes several tasks (any queues) in one round trip, confirmed together after
    /// one durable write: all or nothing. Returns one [`Published`] per message, in order.
    ///
    /// ```no_run
    /// # async fn demo(client: squall_client::Client) -> Result<(), squall_client::ClientError> {
    /// use squall_client::{Message, PublishOptions};
    ///
    /// let ids = client
    ///     .publish_batch([
    ///         Message::new("emails", "a"),
    ///         Message::new("emails", "b").with_options(PublishOptions::new().priority(5)),
    ///     ])
    ///     .await?;
    /// assert_eq!(ids.len(), 2);
    /// # Ok(()) }
    /// ```
    pub async fn publish_batch<I, M>(&self, messages: I) -> Result<Vec<Published>>
    where
        I: IntoIterator<Item = M>,
        M: Into<Message>,
    {
        let specs = messages.into_iter().map(|m| m.into().into_spec()).collect();
        self.publish_specs(specs).await
    }

    async fn publish_specs(&self, specs: Vec<v1::TaskSpec>) -> Result<Vec<Published>> {
        let shared = self.shared();
        if shared.config.validate_locally {
            let info = shared.info();
            check_batch_len(specs.len(), &info)?;
            for spec in &specs {
                check_spec(spec, &info)?;
            }
        }
        let expected = specs.len();
        // To a cluster, every publish is numbered: each task without a key of its own
        // gets one made of the producer id and the number, in the replicated state.
        // Numbered, or with an idempotency key on every task, a publish whose outcome is
        // unknown is sent again: the broker answers a repeat with the first tasks' ids.
        let (producer_id, mut sequence) = if shared.info().cluster.is_some() {
            let sequence = shared.next_sequence.fetch_add(1, Ordering::Relaxed);
            (shared.producer.to_string(), sequence)
        } else {
            (String::new(), 0)
        };
        let retry = !producer_id.is_empty() || specs.iter().all(|s| !s.idempotency_key.is_empty());
        let mut specs = specs;
        let mut attempt = 0;
        let mut renumbered = false;
        let answer = loop {
            let retries_left = retry && attempt < PUBLISH_RETRIES;
            let tasks = if retries_left {
                specs.clone()
            } else {
                std::mem::take(&mut specs)
            };
            let conn = shared.conn().await?;
            let publish = v1::Publish {
                tasks,
                producer_id: producer_id.clone(),
                sequence,
            };
            match conn.call(Op::Publish(publish), "publish").await {
                Err(
                    e @ (ClientError::Timeout { .. }
                    | ClientError::ConnectionLost { .. }
                    | ClientError::Server {
                        code: ErrorCode::NotLeader,
                        ..
                    }),
                ) if retries_left => {
                    attempt += 1;
                    warn!(error = %e, attempt, sequence, "publish outcome unknown; sending it again with the same producer number or idempotency keys");
                }
                // Refused unseen: the broker no longer remembers numbers this old (more
                // than 256 later ones of this producer overtook it). Never sent before,
                // it stored nothing anywhere: a new number is safe (once).
                Err(ClientError::Server {
                    code: ErrorCode::SequenceTooOld,
                    ..
                }) if attempt == 0 && !renumbered && !specs.is_empty() => {
                    renumbered = true;
                    sequence = shared.next_sequence.fetch_add(1, Ordering::Relaxed);
                    warn!(
                        sequence,
                        "publish number too old for the broker; sending it under a new one"
                    );
                }
                other => break other?,
            }
        };
        match answer {
            response::Result::Publish(ok) => {
                confirmed(ok.tasks.into_iter().map(Published::from), expected)
            }
            other => Err(unexpected("publish", other)),
        }
    }

    /// Starts a subscription to `queue`; set the prefetch on the builder, then `.await`.
    pub fn subscribe(&self, queue: impl Into<String>) -> SubscribeBuilder {
        SubscribeBuilder::new(self.clone(), queue.into())
    }

    /// A [`Worker`] for `queue` on this client (same as [`Worker::new`]).
    pub fn worker(&self, queue: impl Into<String>) -> Worker {
        Worker::new(self.clone(), queue)
    }

    /// The status of task `id`: its state (ready, delayed, leased, succeeded, dead, or
    /// unknown when the broker has no record of it), attempts, last error, lease
    /// holder, timestamps, and for a succeeded task the ack's result.
    ///
    /// ```no_run
    /// # async fn demo(client: squall_client::Client) -> Result<(), squall_client::ClientError> {
    /// use squall_client::TaskState;
    ///
    /// let published = client.publish("reports", "2024-05").await?;
    /// let status = client.task(published.id).await?;
    /// if status.state == TaskState::Leased {
    ///     let lease = status.lease.as_ref().expect("a leased task has a holder");
    ///     println!("worker {} has it until {:?}", lease.consumer, lease.deadline);
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn task(&self, id: TaskId) -> Result<TaskStatus> {
        let conn = self.shared().conn().await?;
        match conn
            .call(Op::GetTask(v1::GetTask { task_id: id }), "task status")
            .await?
        {
            response::Result::Task(info) => Ok(TaskStatus::from(*info)),
            other => Err(unexpected("task status", other)),
        }
    }

    /// Waits until task `id` has succeeded or is dead, for at most `timeout`. The broker
    /// pushes the answer when the task's final state is durable (no polling), and
    /// answers at once for a task that finished before the wait began (while its record
    /// is retained: the queue's result TTL, 1 hour by default).
    ///
    /// Returns [`TaskOutcome::TimedOut`] with the task's current status when the
    /// timeout passes first, and [`TaskOutcome::Unknown`] when the broker has no
    /// record of the task. A lost connection does not end the wait: it is resumed on
    /// the next connection for the time left (waiting changes nothing on the broker).
    ///
    /// ```no_run
    /// # async fn demo(client: squall_client::Client) -> Result<(), squall_client::ClientError> {
    /// use std::time::Duration;
    /// use squall_client::TaskOutcome;
    ///
    /// let id = client.publish("thumbnails", "img-17.png").await?.id;
    /// match client.wait_result(id, Duration::from_secs(30)).await? {
    ///     TaskOutcome::Succeeded(status) => println!("result: {:?}", status.result),
    ///     TaskOutcome::Dead(status) => println!("failed: {:?}", status.last_error),
    ///     TaskOutcome::TimedOut(status) => println!("still {} after 30 s", status.state),
    ///     TaskOutcome::Unknown => println!("no such task"),
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn wait_result(&self, id: TaskId, timeout: Duration) -> Result<TaskOutcome> {
        // A year stands in for "forever" (and keeps the deadline representable).
        let deadline = Instant::now() + timeout.min(Duration::from_secs(365 * 24 * 3600));
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let conn = self.shared().conn().await?;
            let op = Op::WaitResult(v1::WaitResult {
                task_id: id,
                timeout_ms: duration_ms_ceil(left),
            });
            // The broker answers by `left`; give the answer the usual time to arrive.
            let bound = left.saturating_add(conn.request_timeout());
            let status = match conn.call_with_timeout(op, "wait_result", bound).await {
                Ok(response::Result::Task(info)) => TaskStatus::from(*info),
                Ok(other) => return Err(unexpected("wait_result", other)),
                Err(ClientError::ConnectionLost { reason }) if Instant::now() < deadline => {
                    debug!(task = id, %reason, "connection lost during wait_result; waiting again");
                    continue;
                }
                Err(e) => return Err(e),
            };
            let outcome = TaskOutcome::of(status);
            // A broker holds a wait at most an hour: wait again for what is left.
            let more = deadline.saturating_duration_since(Instant::now()) > WAIT_AGAIN_MIN;
            if !(matches!(outcome, TaskOutcome::TimedOut(_)) && more) {
                return Ok(outcome);
            }
        }
    }

    /// One round trip to the broker; returns its duration.
    pub async fn ping(&self) -> Result<Duration> {
        let conn = self.shared().conn().await?;
        let start = Instant::now();
        match conn.call(Op::Ping(v1::Ping {}), "ping").await? {
            response::Result::Pong(_) => Ok(start.elapsed()),
            other => Err(unexpected("ping", other)),
        }
    }

    /// One request/answer round trip on the live connection (waiting, bounded, while
    /// reconnecting). A broker `Error` answer is `ClientError::Server`.
    pub(crate) async fn call(&self, op: Op, name: &'static str) -> Result<response::Result> {
        let conn = self.shared().conn().await?;
        conn.call(op, name).await
    }

    /// What the broker announced in its last handshake (version, node id, limits).
    pub fn server_info(&self) -> ServerInfo {
        ServerInfo::clone(&self.shared().info())
    }

    /// The broker address this client dials.
    pub fn addr(&self) -> &str {
        &self.shared().addr
    }

    /// True while a connection is up (false while reconnecting or after close).
    pub fn is_connected(&self) -> bool {
        matches!(&*self.shared().link.borrow(), Link::Up(c) if !c.is_closed())
    }

    /// Closes the connection and stops the background tasks, for every clone of this
    /// client. Calls in flight fail with [`ClientError::ConnectionLost`], later calls
    /// with [`ClientError::Closed`]; subscriptions end. Leases held are freed by the
    /// broker. Idempotent.
    pub async fn close(&self) {
        self.shared().shutdown.cancel();
        let supervisor = self.inner.supervisor.lock().take();
        if let Some(handle) = supervisor {
            let _ = handle.await;
        }
    }

    pub(crate) async fn open_subscription(
        &self,
        queue: String,
        prefetch: u32,
    ) -> Result<Subscription> {
        let shared = self.shared();
        if shared.config.validate_locally {
            crate::check_queue_name(&queue)?;
            check_prefetch(prefetch, &shared.info())?;
        }
        let conn = shared.conn().await?;
        let key = shared.next_sub_key.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = mpsc::unbounded_channel();
        shared.subs.lock().insert(
            key,
            SubRecord {
                queue: queue.clone(),
                prefetch,
                tx: tx.clone(),
                current: None,
            },
        );
        // Built before attaching so that a failure (or a dropped future) cleans up
        // the registry entry through Subscription's Drop.
        let sub = Subscription::new(self.clone(), key, queue.clone(), prefetch, rx);
        shared.attach(&conn, key, &queue, prefetch, tx).await?;
        debug!(queue = %queue, prefetch, "subscribed");
        Ok(sub)
    }

    /// Explicit unsubscribe: tells the broker, then detaches so the stream ends after
    /// what is buffered.
    pub(crate) async fn close_subscription(&self, key: u64) -> Result<()> {
        let shared = self.shared();
        let current = shared.subs.lock().get(&key).and_then(|r| r.current.clone());
        let result = match current.and_then(|(conn, id)| Some((conn.upgrade()?, id))) {
            Some((conn, id)) if !conn.is_closed() => {
                let op = Op::Unsubscribe(v1::Unsubscribe {
                    subscription_id: id,
                });
                match conn.call(op, "unsubscribe").await {
                    Ok(response::Result::Ok(_)) => Ok(()),
                    Ok(other) => Err(unexpected("unsubscribe", other)),
                    // Nothing to stop on a dead connection: it took the subscription along.
                    Err(ClientError::ConnectionLost { .. }) => Ok(()),
                    Err(e) => Err(e),
                }
            }
            _ => Ok(()),
        };
        if let Some(record) = shared.subs.lock().remove(&key) {
            if let Some((conn, id)) = record.current {
                if let Some(conn) = conn.upgrade() {
                    conn.remove_route(id);
                }
            }
        }
        result
    }

    /// A subscription the broker ended: forget it, so that no reconnect re-subscribes it.
    pub(crate) fn detach_subscription(&self, key: u64) {
        let record = self.shared().subs.lock().remove(&key);
        drop(record);
    }

    /// Drop path of a subscription: forget it and tell the broker without waiting.
    pub(crate) fn forget_subscription(&self, key: u64) {
        let record = self.shared().subs.lock().remove(&key);
        let Some(SubRecord {
            current: Some((conn, id)),
            ..
        }) = record
        else {
            return;
        };
        if let Some(conn) = conn.upgrade() {
            conn.remove_route(id);
            conn.send_oneway(Op::Unsubscribe(v1::Unsubscribe {
                subscription_id: id,
            }));
        }
    }
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("addr", &self.shared().addr)
            .field("connected", &self.is_connected())
            .finish_non_exhaustive()
    }
}

fn check_prefetch(prefetch: u32, info: &ServerInfo) -> Result<()> {
    if prefetch == 0 {
        return Err(ClientError::invalid(
            ErrorCode::BadRequest,
            "prefetch must be at least 1",
        ));
    }
    let max = info.limits.max_prefetch;
    if max > 0 && prefetch > max {
        return Err(ClientError::invalid(
            ErrorCode::BadRequest,
            format!("prefetch {prefetch} exceeds the broker's max_prefetch of {max}"),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::info::Limits;

    #[test]
    fn prefetch_is_checked_against_the_broker_limit() {
        let unknown = ServerInfo::default();
        let limited = ServerInfo {
            limits: Limits {
                max_prefetch: 100,
                ..Limits::default()
            },
            ..ServerInfo::default()
        };
        assert!(check_prefetch(1, &unknown).is_ok());
        assert!(check_prefetch(u32::MAX, &unknown).is_ok());
        assert!(check_prefetch(100, &limited).is_ok());
        for (p, info) in [(0, &unknown), (101, &limited)] {
            let err = check_prefetch(p, info).unwrap_err();
            assert_eq!(err.code(), Some(ErrorCode::BadRequest), "{p}");
            assert!(err.nothing_was_applied());
        }
    }

    /// The handles are shared across tasks and threads; this fails to compile if a
    /// change makes one of them `!Send` or `!Sync`.
    #[test]
    fn handles_are_send_and_sync() {
        fn send_sync<T: Send + Sync>() {}
        fn send<T: Send>() {}
        send_sync::<Client>();
        send_sync::<ClientError>();
        send::<Subscription>();
        send::<crate::Delivery>();
        send::<crate::Worker>();
        fn future_is_send<F: std::future::Future + Send>(_: &F) {}
        let run = |w: crate::Worker| {
            let fut = w.run(|_t: crate::Task| async { Ok::<_, crate::TaskError>(()) });
            future_is_send(&fut);
        };
        let _ = run;
    }
}
