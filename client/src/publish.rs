//! Publishing types: `PublishOptions`, `Message` (one task of a batch), `Published`, and
//! their mapping to the wire `TaskSpec`, with the cheap client-side checks. The
//! `publish*` methods themselves live on `Client` in `client/mod.rs`.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use squall_proto::{v1, ErrorCode};

use crate::error::ClientError;
use crate::ServerInfo;

/// A task id, assigned by the broker (unique and increasing per node).
pub type TaskId = u64;

/// The broker's durable confirmation of one published task.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Published {
    /// The task's id.
    pub id: TaskId,
    /// True when an earlier publish with the same idempotency key already created the
    /// task (`id` is then that task's id).
    pub duplicate: bool,
}

/// Per-task options of a publish. All default to the queue's configuration.
///
/// ```
/// use std::time::Duration;
/// use squall_client::PublishOptions;
///
/// let opts = PublishOptions::new()
///     .priority(5)
///     .delay(Duration::from_secs(30))
///     .max_attempts(3)
///     .lease(Duration::from_secs(60))
///     .header("trace-id", "abc123")
///     .idempotency_key("order-17-confirmation");
/// # let _ = opts;
/// ```
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PublishOptions {
    priority: i32,
    delay: Option<Duration>,
    run_at: Option<SystemTime>,
    max_attempts: u32,
    lease: Option<Duration>,
    headers: BTreeMap<String, Bytes>,
    idempotency_key: Option<String>,
    expires_in: Option<Duration>,
}

impl PublishOptions {
    /// Options that leave everything to the queue's defaults.
    pub fn new() -> Self {
        Self::default()
    }

    /// Higher runs first; FIFO within a priority (default 0).
    pub fn priority(mut self, priority: i32) -> Self {
        self.priority = priority;
        self
    }

    /// Do not deliver before `now + delay`. With [`run_at`](Self::run_at) too, the
    /// later of the two applies.
    pub fn delay(mut self, delay: Duration) -> Self {
        self.delay = Some(delay);
        self
    }

    /// Do not deliver before this wall-clock time (the broker's clock decides).
    pub fn run_at(mut self, at: SystemTime) -> Self {
        self.run_at = Some(at);
        self
    }

    /// Deliveries allowed before the task goes to the dead set (0 = the queue's default).
    pub fn max_attempts(mut self, n: u32) -> Self {
        self.max_attempts = n;
        self
    }

    /// Lease duration of each delivery of this task (default: the queue's). The broker
    /// caps it at its `max_lease_ms`.
    pub fn lease(mut self, lease: Duration) -> Self {
        self.lease = Some(lease);
        self
    }

    /// The task expires if it is not delivered within `expires_in` of its publish: it
    /// then goes to the dead set with reason `expired` (or is dropped, per the queue's
    /// `drop_expired`) without ever reaching a consumer.
    pub fn expires_in(mut self, expires_in: Duration) -> Self {
        self.expires_in = Some(expires_in);
        self
    }

    /// Adds a header (a later value for the same name replaces the earlier one).
    pub fn header(mut self, name: impl Into<String>, value: impl Into<Bytes>) -> Self {
        self.headers.insert(name.into(), value.into());
        self
    }

    /// An idempotency key: another publish to the same queue with the same key within
    /// the queue's dedup window (5 minutes by default) creates nothing and returns the
    /// first task's id with [`Published::duplicate`] set, whatever that task's state.
    /// This is what makes a publish safe to retry after a timeout or a lost connection;
    /// the client does so itself when every task of the publish has a key. At most
    /// 1024 bytes.
    pub fn idempotency_key(mut self, key: impl Into<String>) -> Self {
        self.idempotency_key = Some(key.into());
        self
    }

    /// True when an idempotency key is set.
    pub fn has_idempotency_key(&self) -> bool {
        self.idempotency_key.is_some()
    }

    /// The wire form of one task with these options.
    pub(crate) fn into_spec(self, queue: String, payload: Bytes) -> v1::TaskSpec {
        v1::TaskSpec {
            queue,
            payload,
            headers: self.headers,
            priority: self.priority,
            delay_ms: self.delay.map_or(0, duration_ms_ceil),
            run_at_ms: self.run_at.map_or(0, unix_ms),
            max_attempts: self.max_attempts,
            lease_ms: self.lease.map_or(0, duration_ms_ceil),
            idempotency_key: self.idempotency_key.unwrap_or_default(),
            expires_in_ms: self.expires_in.map_or(0, duration_ms_ceil),
        }
    }
}

/// One task of a batch for [`Client::publish_batch`](crate::Client::publish_batch).
///
/// `(queue, payload)` tuples convert into a `Message` with default options.
#[derive(Debug, Clone, PartialEq)]
pub struct Message {
    queue: String,
    payload: Bytes,
    options: PublishOptions,
}

impl Message {
    /// A task for `queue` with default options.
    pub fn new(queue: impl Into<String>, payload: impl Into<Bytes>) -> Self {
        Message {
            queue: queue.into(),
            payload: payload.into(),
            options: PublishOptions::default(),
        }
    }

    /// Replaces the task's options.
    pub fn with_options(mut self, options: PublishOptions) -> Self {
        self.options = options;
        self
    }

    /// The target queue.
    pub fn queue(&self) -> &str {
        &self.queue
    }

    /// The payload.
    pub fn payload(&self) -> &Bytes {
        &self.payload
    }

    /// The options.
    pub fn options(&self) -> &PublishOptions {
        &self.options
    }

    pub(crate) fn into_spec(self) -> v1::TaskSpec {
        self.options.into_spec(self.queue, self.payload)
    }
}

impl<Q: Into<String>, P: Into<Bytes>> From<(Q, P)> for Message {
    fn from((queue, payload): (Q, P)) -> Self {
        Message::new(queue, payload)
    }
}

impl<Q: Into<String>, P: Into<Bytes>> From<(Q, P, PublishOptions)> for Message {
    fn from((queue, payload, options): (Q, P, PublishOptions)) -> Self {
        Message::new(queue, payload).with_options(options)
    }
}

/// Checks a task the way the broker would, so an obviously bad publish fails fast
/// without a round trip. Limits of 0 mean "unknown" and are not checked.
pub(crate) fn check_spec(spec: &v1::TaskSpec, info: &ServerInfo) -> Result<(), ClientError> {
    crate::check_queue_name(&spec.queue)?;
    if spec.payload.is_empty() {
        return Err(ClientError::invalid(
            ErrorCode::EmptyPayload,
            format!(
                "task for queue {:?} has an empty payload; send at least one byte",
                spec.queue
            ),
        ));
    }
    let max = info.limits.max_payload_bytes as usize;
    if max > 0 && spec.payload.len() > max {
        return Err(ClientError::invalid(
            ErrorCode::PayloadTooLarge,
            format!(
                "payload of {} bytes exceeds the broker's max_payload_bytes of {max}; store large data elsewhere and publish a reference",
                spec.payload.len()
            ),
        ));
    }
    Ok(())
}

/// Checks the size of a batch against the broker's `max_batch` (0 = unknown).
pub(crate) fn check_batch_len(len: usize, info: &ServerInfo) -> Result<(), ClientError> {
    if len == 0 {
        return Err(ClientError::invalid(
            ErrorCode::BadRequest,
            "publish batch is empty; pass at least one message",
        ));
    }
    let max = info.limits.max_batch as usize;
    if max > 0 && len > max {
        return Err(ClientError::invalid(
            ErrorCode::BadRequest,
            format!("batch of {len} tasks exceeds the broker's max_batch of {max}; split it into smaller batches"),
        ));
    }
    Ok(())
}

/// The confirmation of a publish of `expected` tasks: one [`Published`] per task, in
/// order. Used by [`Client`](crate::Client) for its answer and by
/// [`ClusterClient`](crate::ClusterClient) for each node's part of a batch.
pub(crate) fn confirmed(
    tasks: impl ExactSizeIterator<Item = Published>,
    expected: usize,
) -> Result<Vec<Published>, ClientError> {
    if tasks.len() != expected {
        return Err(ClientError::Protocol(format!(
            "published {expected} tasks but the broker confirmed {}",
            tasks.len()
        )));
    }
    Ok(tasks.collect())
}

impl From<v1::Published> for Published {
    fn from(p: v1::Published) -> Self {
        Published {
            id: p.task_id,
            duplicate: p.duplicate,
        }
    }
}

/// Milliseconds, rounded up so that a non-zero duration never becomes 0 ("default").
pub(crate) fn duration_ms_ceil(d: Duration) -> u64 {
    let ms = d.as_millis();
    let ms = if d.subsec_nanos() % 1_000_000 != 0 {
        ms + 1
    } else {
        ms
    };
    u64::try_from(ms).unwrap_or(u64::MAX)
}

/// Unix time in milliseconds; times before 1970 become 0 (no constraint).
pub(crate) fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// The `SystemTime` of a unix-milliseconds timestamp.
pub(crate) fn from_unix_ms(ms: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(ms)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Limits;

    fn info(max_payload: u32, max_batch: u32) -> ServerInfo {
        ServerInfo {
            limits: Limits {
                max_payload_bytes: max_payload,
                max_batch,
                ..Limits::default()
            },
            ..ServerInfo::default()
        }
    }

    #[test]
    fn default_options_map_to_queue_defaults() {
        let spec = PublishOptions::new().into_spec("jobs".into(), Bytes::from_static(b"x"));
        assert_eq!(
            spec,
            v1::TaskSpec {
                queue: "jobs".into(),
                payload: Bytes::from_static(b"x"),
                ..Default::default()
            }
        );
    }

    #[test]
    fn every_option_maps_to_its_field() {
        let at = UNIX_EPOCH + Duration::from_millis(1_700_000_000_123);
        let spec = PublishOptions::new()
            .priority(-3)
            .delay(Duration::from_secs(30))
            .run_at(at)
            .max_attempts(7)
            .lease(Duration::from_millis(1500))
            .header("a", "1")
            .header("b", vec![0u8, 1])
            .header("a", "2")
            .idempotency_key("k-1")
            .into_spec("q".into(), Bytes::from_static(b"p"));
        assert_eq!(spec.priority, -3);
        assert_eq!(spec.delay_ms, 30_000);
        assert_eq!(spec.run_at_ms, 1_700_000_000_123);
        assert_eq!(spec.max_attempts, 7);
        assert_eq!(spec.lease_ms, 1500);
        assert_eq!(spec.idempotency_key, "k-1");
        assert_eq!(spec.headers.len(), 2);
        assert_eq!(spec.headers["a"], Bytes::from_static(b"2"));
        assert_eq!(spec.headers["b"], Bytes::from_static(&[0, 1]));
    }

    #[test]
    fn sub_millisecond_durations_round_up_not_to_default() {
        assert_eq!(duration_ms_ceil(Duration::ZERO), 0);
        assert_eq!(duration_ms_ceil(Duration::from_micros(1)), 1);
        assert_eq!(duration_ms_ceil(Duration::from_micros(1500)), 2);
        assert_eq!(duration_ms_ceil(Duration::from_millis(2)), 2);
        assert_eq!(duration_ms_ceil(Duration::MAX), u64::MAX);
        let spec = PublishOptions::new()
            .lease(Duration::from_micros(10))
            .into_spec("q".into(), Bytes::from_static(b"p"));
        assert_eq!(spec.lease_ms, 1);
    }

    #[test]
    fn run_at_before_epoch_means_no_constraint() {
        assert_eq!(unix_ms(UNIX_EPOCH - Duration::from_secs(1)), 0);
        assert_eq!(
            from_unix_ms(unix_ms(UNIX_EPOCH + Duration::from_millis(5))),
            UNIX_EPOCH + Duration::from_millis(5)
        );
    }

    #[test]
    fn messages_convert_from_tuples() {
        let m: Message = ("jobs", "hello").into();
        assert_eq!(m.queue(), "jobs");
        assert_eq!(m.payload(), &Bytes::from_static(b"hello"));
        let m: Message = ("jobs", "hello", PublishOptions::new().priority(2)).into();
        assert_eq!(m.into_spec().priority, 2);
    }

    #[test]
    fn local_checks_mirror_broker_codes() {
        let spec = |q: &str, p: &'static [u8]| v1::TaskSpec {
            queue: q.into(),
            payload: Bytes::from_static(p),
            ..Default::default()
        };
        let unknown = info(0, 0);
        assert!(check_spec(&spec("jobs", b"x"), &unknown).is_ok());
        let code = |r: Result<(), ClientError>| r.unwrap_err().code();
        assert_eq!(
            code(check_spec(&spec("a b", b"x"), &unknown)),
            Some(ErrorCode::InvalidQueueName)
        );
        assert_eq!(
            code(check_spec(&spec("jobs", b""), &unknown)),
            Some(ErrorCode::EmptyPayload)
        );
        assert_eq!(
            code(check_spec(&spec("jobs", b"12345"), &info(4, 0))),
            Some(ErrorCode::PayloadTooLarge)
        );
        assert!(check_spec(&spec("jobs", b"1234"), &info(4, 0)).is_ok());
        assert!(check_batch_len(10, &unknown).is_ok());
        assert_eq!(
            code(check_batch_len(0, &unknown)),
            Some(ErrorCode::BadRequest)
        );
        assert_eq!(
            code(check_batch_len(11, &info(0, 10))),
            Some(ErrorCode::BadRequest)
        );
        assert!(check_batch_len(10, &info(0, 10)).is_ok());
    }
}
