//! The JSON bodies of the HTTP API (`/api/v1`), plain data with serde and their OpenAPI
//! schemas. Built by the broker side of [`super::Backend`]; read by the handlers, the
//! dashboard's templates and the OpenAPI document. No logic beyond small conversions.

use std::collections::BTreeMap;

use base64::Engine as _;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

/// One queue: depth by state, consumers, rates over the last minute, totals since
/// start-up and its configuration.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct QueueView {
    /// Queue name.
    pub name: String,
    /// Tasks waiting for a consumer.
    pub ready: u64,
    /// Tasks waiting for their not-before time.
    pub delayed: u64,
    /// Tasks held by consumers under a lease.
    pub leased: u64,
    /// Tasks in the dead set.
    pub dead: u64,
    /// Whether delivery is paused.
    pub paused: bool,
    /// Subscriptions on the queue.
    pub consumers: u64,
    /// Age of the oldest ready task, if any.
    pub oldest_ready_age_ms: Option<u64>,
    /// Publishes per second (last minute).
    pub publish_rate: f64,
    /// Deliveries per second.
    pub deliver_rate: f64,
    /// Acks per second.
    pub ack_rate: f64,
    /// Nacks per second.
    pub nack_rate: f64,
    /// Lease expiries per second.
    pub expire_rate: f64,
    /// Tasks moved to the dead set per second.
    pub dead_rate: f64,
    /// Counts since the broker started.
    pub totals: QueueTotals,
    /// The queue's settings.
    pub config: QueueSettings,
}

/// Event counts of a queue since the broker started.
#[derive(Debug, Clone, Default, Serialize, ToSchema)]
pub struct QueueTotals {
    /// Tasks published.
    pub published: u64,
    /// Deliveries made.
    pub delivered: u64,
    /// Acks.
    pub acked: u64,
    /// Nacks.
    pub nacked: u64,
    /// Leases that ran out.
    pub expired: u64,
    /// Tasks moved to the dead set.
    pub dead_lettered: u64,
    /// Deliveries of a task delivered before.
    pub redelivered: u64,
    /// Tasks not started by their expiry (dead-lettered with reason `expired`, or
    /// dropped).
    pub expired_tasks: u64,
}

/// A queue's settings.
#[derive(Debug, Clone, Default, Serialize, ToSchema)]
pub struct QueueSettings {
    /// Default lease of a delivery.
    pub lease_ms: u64,
    /// Deliveries before a task is dead (0 = unlimited).
    pub max_attempts: u32,
    /// Retry backoff: first delay.
    pub backoff_min_ms: u64,
    /// Retry backoff: cap.
    pub backoff_max_ms: u64,
    /// Most pending tasks (0 = unbounded).
    pub max_length: u64,
    /// How long succeeded and dead records are kept.
    pub result_ttl_ms: u64,
    /// How long an idempotency key is remembered.
    pub dedup_window_ms: u64,
    /// Most tasks leased at once across all consumers (0 = no cap).
    pub max_in_flight: u32,
    /// Most deliveries per second (0 = no limit).
    pub rate_limit: u32,
    /// The rate limit's burst as set (0 = one second's worth).
    pub rate_burst: u32,
    /// Tasks not started by their expiry are removed instead of dead-lettered.
    pub drop_expired: bool,
    /// An ack without a result keeps a succeeded record too (by default only an ack
    /// with a result does).
    pub keep_acked: bool,
}

/// A page of queues in name order.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct QueuePage {
    /// The queues.
    pub queues: Vec<QueueView>,
    /// Whether more queues follow (ask again with `after` = the last name).
    pub more: bool,
}

/// A periodic schedule: what it publishes where, and how far it got. Read-only in the
/// API (`squall schedule add|remove|pause|resume` change schedules).
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ScheduleView {
    /// Schedule name.
    pub name: String,
    /// The queue its tasks go to.
    pub queue: String,
    /// Cron expression (six fields with seconds first, or five).
    pub cron: String,
    /// IANA time zone the expression is read in.
    pub tz: String,
    /// Ticks missed while the broker was down: `none`, `one` or `all`.
    pub catch_up: String,
    /// Paused schedules do not fire.
    pub paused: bool,
    /// Priority of its tasks.
    pub priority: i32,
    /// Delivery limit of its tasks (0 = the queue's).
    pub max_attempts: u32,
    /// Payload size of its tasks.
    pub payload_bytes: u64,
    /// Its next tick (unix ms; none while paused).
    pub next_run_ms: Option<u64>,
    /// Its last tick that fired (unix ms; none before the first).
    pub last_run_ms: Option<u64>,
    /// The task its last published tick made (none before the first).
    pub last_task: Option<u64>,
    /// When it was created (unix ms).
    pub created_at_ms: u64,
}

/// A page of schedules in name order.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct SchedulePage {
    /// The schedules.
    pub schedules: Vec<ScheduleView>,
    /// Whether more schedules follow (ask again with `after` = the last name).
    pub more: bool,
}

/// Task states an operator can look at.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum PeekState {
    /// Waiting for a consumer.
    Ready,
    /// Waiting for its not-before time.
    Delayed,
    /// Held by a consumer.
    Leased,
    /// In the dead set.
    Dead,
}

impl PeekState {
    /// Lower-case name, as in the API.
    pub fn as_str(self) -> &'static str {
        match self {
            PeekState::Ready => "ready",
            PeekState::Delayed => "delayed",
            PeekState::Leased => "leased",
            PeekState::Dead => "dead",
        }
    }
}

/// Query of `GET /api/v1/queues` and `GET /api/v1/schedules`.
#[derive(Debug, Clone, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// List the queues whose names sort after this one.
    #[param(max_length = 200)]
    pub after: Option<String>,
    /// Most queues (1..=1000; default 1000).
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<u32>,
}

/// Query of `GET /api/v1/queues/{name}/tasks`.
#[derive(Debug, Clone, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct PeekQuery {
    /// Which tasks (default `ready`).
    pub state: Option<PeekState>,
    /// Most tasks (1..=1000; default 20).
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<u32>,
    /// Payload bytes per task (1..=65536; default 1024).
    #[param(minimum = 1, maximum = 65536)]
    pub preview_bytes: Option<u32>,
}

/// A task seen by peek, with a payload preview.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct TaskPreview {
    /// Task id.
    pub id: u64,
    /// Its state.
    pub state: PeekState,
    /// Priority (higher first).
    pub priority: i32,
    /// Deliveries so far.
    pub attempts: u32,
    /// Delivery limit (0 = unlimited).
    pub max_attempts: u32,
    /// When it was published (unix ms).
    pub created_at_ms: u64,
    /// Last change (unix ms).
    pub updated_at_ms: u64,
    /// Delayed tasks: when they become ready (unix ms).
    pub not_before_ms: u64,
    /// Leased tasks: who holds it.
    pub lease_holder: Option<String>,
    /// Leased tasks: the lease deadline (unix ms).
    pub lease_deadline_ms: Option<u64>,
    /// The last failure, if any.
    pub last_error: Option<String>,
    /// The payload preview as text (invalid UTF-8 replaced).
    pub payload: String,
    /// The payload preview, base64.
    pub payload_base64: String,
    /// Whole payload size.
    pub payload_bytes: u64,
    /// Whether the preview (or the headers) were cut.
    pub truncated: bool,
    /// Headers (values as text, invalid UTF-8 replaced).
    pub headers: BTreeMap<String, String>,
}

/// Peeked tasks.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct TaskList {
    /// The tasks, in delivery order (dead: oldest first).
    pub tasks: Vec<TaskPreview>,
    /// Whether the answer stopped short of the limit because of its size (ask for
    /// smaller previews or fewer tasks).
    pub more: bool,
}

/// A task's status.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct TaskDetail {
    /// Task id.
    pub id: u64,
    /// `ready`, `delayed`, `leased`, `succeeded`, `dead` or `unknown` (never existed,
    /// removed, or its record expired).
    pub state: String,
    /// Its queue (empty when unknown).
    pub queue: String,
    /// Priority.
    pub priority: i32,
    /// Deliveries so far.
    pub attempts: u32,
    /// Delivery limit (0 = unlimited).
    pub max_attempts: u32,
    /// The last failure.
    pub last_error: Option<String>,
    /// Leased: who holds it.
    pub lease_holder: Option<String>,
    /// Leased: the lease deadline (unix ms).
    pub lease_deadline_ms: Option<u64>,
    /// Published (unix ms; 0 when unknown).
    pub created_at_ms: u64,
    /// Last change (unix ms).
    pub updated_at_ms: u64,
    /// Not before (unix ms).
    pub not_before_ms: u64,
    /// Succeeded: the result as text (invalid UTF-8 replaced).
    pub result: Option<String>,
    /// Succeeded: the result, base64.
    pub result_base64: Option<String>,
    /// When a finished task's record is removed (unix ms; 0 = never).
    pub expires_at_ms: u64,
    /// Whether the state is final (succeeded, dead, unknown).
    pub finished: bool,
}

/// One subscription of a connection.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct SubscriptionView {
    /// Subscription id (per connection).
    pub id: u64,
    /// Its queue.
    pub queue: String,
    /// Credit: most unacked deliveries.
    pub prefetch: u32,
    /// Deliveries it holds now.
    pub in_flight: u32,
}

/// A client connection on the protocol port.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ConnectionView {
    /// Connection id.
    pub id: u64,
    /// Client name from Hello (else the address).
    pub client: String,
    /// Peer address.
    pub address: String,
    /// Its subscriptions.
    pub subscriptions: Vec<SubscriptionView>,
    /// Tasks it holds under leases.
    pub tasks_held: u64,
}

/// A page of connections.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ConnectionList {
    /// The connections (at most 1000, in id order).
    pub connections: Vec<ConnectionView>,
    /// Connections not listed.
    pub more: u64,
}

/// Latency quantiles from a histogram, in microseconds (bucket upper bounds).
#[derive(Debug, Clone, Copy, Default, Serialize, ToSchema)]
pub struct Quantiles {
    /// Observations.
    pub count: u64,
    /// Median.
    pub p50_us: Option<u64>,
    /// 99th percentile.
    pub p99_us: Option<u64>,
}

/// The broker at a glance.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Overview {
    /// Node id.
    pub node_id: String,
    /// Broker version.
    pub version: String,
    /// `ok`, `unavailable` (nothing can be stored now; resumes by itself) or `failed`
    /// (restart the broker).
    pub health: String,
    /// Why not ok.
    pub health_reason: Option<String>,
    /// Whether the broker accepts work (recovery done, not shutting down).
    pub ready: bool,
    /// Bytes of journal on disk.
    pub journal_bytes: u64,
    /// Queues.
    pub queues: u64,
    /// Sum over queues.
    pub ready_tasks: u64,
    /// Sum over queues.
    pub delayed_tasks: u64,
    /// Sum over queues.
    pub leased_tasks: u64,
    /// Sum over queues.
    pub dead_tasks: u64,
    /// Open client connections.
    pub connections: u64,
    /// Publish to confirmation.
    pub publish_confirm: Quantiles,
    /// Journal commit (append and sync).
    pub commit: Quantiles,
}

/// What one live update (`GET /api/v1/events`, event `queues`) carries.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct QueuesEvent {
    /// Unix ms when taken.
    pub at_ms: u64,
    /// The first queues in name order (at most 1000).
    pub queues: Vec<QueueView>,
    /// Whether more queues exist than sent.
    pub more: bool,
}

/// A configuration change: absent fields keep their value.
#[derive(Debug, Clone, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ConfigChange {
    /// Default lease of a delivery.
    pub lease_ms: Option<u64>,
    /// Deliveries before a task is dead (0 = unlimited).
    pub max_attempts: Option<u32>,
    /// Retry backoff: first delay.
    pub backoff_min_ms: Option<u64>,
    /// Retry backoff: cap.
    pub backoff_max_ms: Option<u64>,
    /// Most pending tasks (0 = unbounded).
    pub max_length: Option<u64>,
    /// How long succeeded and dead records are kept.
    pub result_ttl_ms: Option<u64>,
    /// How long an idempotency key is remembered.
    pub dedup_window_ms: Option<u64>,
    /// Most tasks leased at once across all consumers (0 = no cap).
    pub max_in_flight: Option<u32>,
    /// Most deliveries per second (0 = no limit).
    pub rate_limit: Option<u32>,
    /// The rate limit's burst: deliveries its token bucket holds when full (0 = one
    /// second's worth).
    pub rate_burst: Option<u32>,
    /// Remove tasks not started by their expiry instead of dead-lettering them.
    pub drop_expired: Option<bool>,
    /// Keep a succeeded record of acks without a result too.
    pub keep_acked: Option<bool>,
}

/// Body of `POST .../purge`.
#[derive(Debug, Clone, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PurgeRequest {
    /// Only tasks in this state (default: every pending and dead task).
    pub state: Option<PeekState>,
}

/// Body of `POST .../redrive`.
#[derive(Debug, Clone, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RedriveRequest {
    /// Most dead tasks to move back (default: all).
    pub limit: Option<u64>,
}

/// How many tasks an action touched.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Count {
    /// Tasks purged, redriven or removed with the queue.
    pub count: u64,
}

/// An error: the broker's error code name and what went wrong.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ErrorBody {
    /// The broker's error code, e.g. `NOT_FOUND`, `BAD_REQUEST`, `INVALID_QUEUE_NAME`.
    pub code: String,
    /// What was wrong and what to do.
    pub message: String,
}

/// Text for bytes that may not be UTF-8, and their base64.
pub fn text_and_base64(bytes: &[u8]) -> (String, String) {
    (
        String::from_utf8_lossy(bytes).into_owned(),
        base64::engine::general_purpose::STANDARD.encode(bytes),
    )
}
