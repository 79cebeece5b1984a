//! The messages that pass between the server's actors — connection readers, connection
//! writer halves, the hub and the store writer — as plain data: requests decoded from
//! the wire, commands to the hub, what goes into a connection's outbox, and the domain
//! replies and failures the wire edge (`conn/wire.rs`) encodes. No logic and no
//! protobuf here: an actor's file holds its loop and handlers, this file holds what
//! they say to each other.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use squall_proto::ErrorCode;
use tokio::sync::{mpsc, oneshot};

use super::metrics::PublishTimer;
use crate::broker::{
    AdminError, AdminPlan, Committed, ConnId, Dispatch, Engine, EngineError, NackMode, Peeked,
    QueueConfigUpdate, QueueSnapshot, ScheduleError, ScheduleSpec, ScheduleView, SubId,
    SubscriptionView, TaskView,
};
use crate::model::{Millis, Mutation, TaskId, TaskState};
use crate::store::{Muts, StoreError};

/// A request's id on its connection (the subscription id, for a subscription).
pub(crate) type ReqId = u64;

/// Sender side of a connection's outbox (read by its writer half).
pub(crate) type OutTx = mpsc::UnboundedSender<Outbound>;
/// A connection's outbox, held without keeping the connection alive.
pub(crate) type WeakOutTx = mpsc::WeakUnboundedSender<Outbound>;
/// Sender side of the hub's command channel.
pub(crate) type HubTx = mpsc::UnboundedSender<HubCmd>;
/// One publish's durable tasks and its reservation, as `HubCmd::Committed` carries them.
pub(crate) type CommittedPublish = (Vec<Committed>, Option<Reservation>);
/// The hub's command channel, held without keeping the hub alive.
pub(crate) type WeakHubTx = mpsc::WeakUnboundedSender<HubCmd>;

// ---------------------------------------------------------------------------------
// Requests, as the wire edge decodes them (the reader validates and routes them).

/// One client request, decoded from its frame but not yet validated.
#[derive(Debug)]
pub(crate) enum Request {
    Hello(Hello),
    Ping,
    Publish {
        tasks: Vec<TaskSpec>,
        /// The producer's id and the publish's number, when the producer numbers it.
        numbered: Option<(String, u64)>,
    },
    Subscribe {
        queue: String,
        prefetch: u32,
    },
    Unsubscribe {
        sub: SubId,
    },
    Ack {
        task: TaskId,
        token: u64,
        result: Bytes,
    },
    Nack {
        task: TaskId,
        token: u64,
        dead: bool,
        delay_ms: Option<u64>,
        reason: String,
    },
    /// A delivery its consumer never started on.
    Release {
        task: TaskId,
        token: u64,
    },
    Extend {
        task: TaskId,
        token: u64,
        extend_ms: u64,
    },
    GetTask {
        task: TaskId,
    },
    GetPayload {
        task: TaskId,
    },
    WaitResult {
        task: TaskId,
        timeout_ms: u64,
    },
    Admin(AdminRequest),
}

/// The first request of a connection.
#[derive(Debug)]
pub(crate) struct Hello {
    pub(crate) protocol_version: u32,
    pub(crate) client_name: String,
    pub(crate) token: String,
}

/// One task of a publish, as the client sent it.
#[derive(Debug)]
pub(crate) struct TaskSpec {
    pub(crate) queue: String,
    pub(crate) payload: Bytes,
    pub(crate) headers: Vec<(String, Bytes)>,
    pub(crate) priority: i32,
    pub(crate) delay_ms: u64,
    pub(crate) run_at_ms: u64,
    pub(crate) max_attempts: u32,
    pub(crate) lease_ms: u64,
    /// Empty for none.
    pub(crate) idempotency_key: String,
    /// 0 = never expires.
    pub(crate) expires_in_ms: u64,
}

/// An administrative request as the client sent it (the reader validates it into an
/// [`AdminOp`]).
#[derive(Debug)]
pub(crate) enum AdminRequest {
    ListQueues {
        after: String,
        limit: u32,
    },
    GetQueue {
        queue: String,
    },
    SetQueueConfig {
        queue: String,
        update: QueueConfigUpdate,
    },
    SetPaused {
        queue: String,
        paused: bool,
    },
    Peek {
        queue: String,
        state: StateFilter,
        limit: u32,
        preview_bytes: u32,
    },
    Purge {
        queue: String,
        state: StateFilter,
    },
    Redrive {
        queue: String,
        limit: u32,
    },
    DeleteQueue {
        queue: String,
    },
    AddSchedule(ScheduleSpec),
    ListSchedules {
        after: String,
        limit: u32,
    },
    RemoveSchedule {
        name: String,
    },
    SetSchedulePaused {
        name: String,
        paused: bool,
    },
}

impl AdminRequest {
    /// The queue the request names, if it names one.
    pub(crate) fn queue(&self) -> Option<&str> {
        match self {
            AdminRequest::ListQueues { .. }
            | AdminRequest::ListSchedules { .. }
            | AdminRequest::RemoveSchedule { .. }
            | AdminRequest::SetSchedulePaused { .. } => None,
            AdminRequest::AddSchedule(spec) => Some(&spec.queue),
            AdminRequest::GetQueue { queue }
            | AdminRequest::SetQueueConfig { queue, .. }
            | AdminRequest::SetPaused { queue, .. }
            | AdminRequest::Peek { queue, .. }
            | AdminRequest::Purge { queue, .. }
            | AdminRequest::Redrive { queue, .. }
            | AdminRequest::DeleteQueue { queue } => Some(queue),
        }
    }
}

/// A task-state filter as sent: a known view (`None` = unspecified) or a number this
/// broker does not know (refused when the request is validated).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum StateFilter {
    Known(Option<TaskView>),
    Unknown(i32),
}

/// A validated administrative request.
#[derive(Debug)]
pub(crate) enum AdminOp {
    List {
        after: String,
        limit: usize,
    },
    Get(String),
    Configure(String, QueueConfigUpdate),
    SetPaused(String, bool),
    Peek {
        queue: String,
        state: TaskView,
        limit: usize,
        preview: usize,
    },
    Purge {
        queue: String,
        state: Option<TaskView>,
    },
    Redrive {
        queue: String,
        limit: Option<usize>,
    },
    Delete(String),
    AddSchedule(ScheduleSpec),
    ListSchedules {
        after: String,
        limit: usize,
    },
    RemoveSchedule(String),
    PauseSchedule(String, bool),
}

// ---------------------------------------------------------------------------------
// Replies: what a request is answered with, before the wire edge encodes it.

/// The domain answer to one request.
#[derive(Debug)]
pub(crate) enum Reply {
    /// Done, nothing to report (settlements, unsubscribe).
    Ok,
    Pong,
    Hello(Box<Welcome>),
    /// Per task of the publish, in order.
    Published(Vec<Published>),
    Subscribed(SubId),
    Extended {
        deadline_ms: u64,
    },
    /// Tasks an admin change touched.
    Count(u64),
    Task(Box<TaskReport>),
    Payload(Box<TaskPayload>),
    /// A schedule as it is now (added, paused or resumed).
    Schedule(Box<ScheduleView>),
    Refused(Failure),
}

/// What the broker tells a client at Hello.
#[derive(Debug, Clone)]
pub(crate) struct Welcome {
    pub(crate) node_id: String,
    pub(crate) max_frame_bytes: u32,
    pub(crate) max_payload_bytes: u32,
    pub(crate) max_batch: u32,
    pub(crate) max_prefetch: u32,
    pub(crate) max_lease_ms: u64,
    pub(crate) max_inflight_requests: u32,
    /// Cluster mode: the cluster this node leads.
    pub(crate) cluster: Option<ClusterView>,
}

/// An engine rebuilt from the store for a new leader (`HubCmd::Lead`).
pub(crate) struct RebuiltEngine(pub(crate) Box<Engine>);

impl std::fmt::Debug for RebuiltEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RebuiltEngine")
    }
}

/// What a cluster's leader tells its clients at Hello.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ClusterView {
    /// The cluster's id: random, set once by its first leader in the replicated
    /// state, the same on every member whatever the membership, and another
    /// cluster's differs.
    pub(crate) cluster_id: String,
    /// The leader's node id (this node's, when it answers Hello).
    pub(crate) leader: u64,
    /// Every member's node id and client address, by id.
    pub(crate) members: Vec<(u64, String)>,
}

/// One published task: its id, or the id of the task an idempotency key already named.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Published {
    pub(crate) task_id: TaskId,
    pub(crate) duplicate: bool,
}

/// Why a request was refused. The wire edge maps each to its fixed error code, in one
/// place (`wire::code`).
#[derive(Debug)]
pub(crate) enum Failure {
    /// A settlement or subscription the engine refused.
    Engine(EngineError),
    /// An admin request the engine refused.
    Admin(AdminError),
    /// A schedule change the engine refused.
    Schedule(ScheduleError),
    /// A publish to a bounded queue without room: nothing was stored.
    QueueFull(QueueFull),
    /// The store could not write or read (the message says which): a refused change
    /// has not happened.
    Storage(String),
    /// A broker bug.
    Internal(String),
    /// A request the protocol refuses (validation, limits, handshake), with its code.
    Protocol(ErrorCode, String),
}

/// A publish that would overfill a queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct QueueFull {
    pub(crate) queue: Arc<str>,
    pub(crate) pending: u64,
    pub(crate) adding: u64,
    pub(crate) max_length: u64,
}

impl std::fmt::Display for QueueFull {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "queue {} holds {} pending tasks and its max_length is {}: {} more do not fit; nothing was published",
            self.queue, self.pending, self.max_length, self.adding
        )
    }
}

/// A task's state as a status answer reports it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) enum TaskPhase {
    /// The broker does not know the task (never published, or removed).
    #[default]
    Unknown,
    Ready,
    Delayed,
    Leased,
    Succeeded,
    Dead,
}

/// The status of one task (`GetTask`, `WaitResult`).
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct TaskReport {
    pub(crate) task_id: TaskId,
    pub(crate) state: TaskPhase,
    /// Empty when the task is unknown.
    pub(crate) queue: String,
    pub(crate) priority: i32,
    pub(crate) attempts: u32,
    pub(crate) max_attempts: u32,
    pub(crate) last_error: Option<String>,
    pub(crate) lease: Option<LeaseHolder>,
    pub(crate) created_at_ms: u64,
    pub(crate) updated_at_ms: u64,
    pub(crate) not_before_ms: u64,
    pub(crate) result: Bytes,
    pub(crate) expires_at_ms: u64,
}

/// Who holds a task's lease, as the hub saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct LeaseHolder {
    pub(crate) conn: ConnId,
    /// Client name from Hello, else the peer address.
    pub(crate) consumer: Arc<str>,
    pub(crate) deadline_ms: u64,
    /// The live delivery's attempt number (the store may lag by one).
    pub(crate) attempt: u32,
}

/// A task's whole payload (`GetPayload`).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct TaskPayload {
    pub(crate) task_id: TaskId,
    pub(crate) queue: String,
    pub(crate) payload: Bytes,
    pub(crate) headers: Vec<(String, Bytes)>,
}

/// The final state a task reached, as the finishing mutation says (the record itself
/// may be gone already: an ack on a queue that keeps no results).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Final {
    Succeeded,
    Dead,
    /// Removed by an operator (purge, delete-queue) or dropped at its expiry: its
    /// waiters learn the task is gone.
    Removed,
}

// ---------------------------------------------------------------------------------
// Admin answers and queue views.

/// Events per second over the last minute (`hub/rates.rs`).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub(crate) struct RateView {
    pub(crate) published: f64,
    pub(crate) delivered: f64,
    pub(crate) acked: f64,
    pub(crate) nacked: f64,
    pub(crate) expired: f64,
    pub(crate) dead_lettered: f64,
}

/// One queue as the hub sees it: the engine's snapshot, its rates and the id of its
/// oldest ready task (whose age is read from the store by whoever encodes it).
#[derive(Debug, Clone)]
pub(crate) struct QueueStatus {
    pub(crate) snapshot: QueueSnapshot,
    pub(crate) rates: RateView,
    pub(crate) oldest_ready: Option<TaskId>,
}

/// A peeked task and, when leased, a description of its holder.
#[derive(Debug)]
pub(crate) struct PeekItem {
    pub(crate) peeked: Peeked,
    pub(crate) holder: Option<Arc<str>>,
}

/// An admin answer that the connection's writer half completes with store reads.
#[derive(Debug)]
pub(crate) enum AdminReply {
    /// ListQueues (`single == false`) or one queue (GetQueue, SetQueueConfig, SetPaused).
    Queues {
        req: ReqId,
        single: bool,
        queues: Vec<QueueStatus>,
        /// A list page that is not the last.
        more: bool,
    },
    Peek {
        req: ReqId,
        items: Vec<PeekItem>,
        preview: usize,
    },
    /// A page of schedules (cut at the answer's room).
    Schedules {
        req: ReqId,
        list: Vec<ScheduleView>,
        more: bool,
    },
}

/// A client connection as operators see it (`HubCmd::Connections`).
#[derive(Debug)]
pub(crate) struct ConnectionInfo {
    pub(crate) conn: ConnId,
    /// Client name from Hello, else the peer address.
    pub(crate) name: Arc<str>,
    pub(crate) peer: SocketAddr,
    pub(crate) subscriptions: Vec<SubscriptionView>,
}

/// The connection id under which the HTTP side sends admin requests and task lookups
/// to the hub, like a client would (client connections are numbered from 1).
pub(crate) const HTTP_CONN: ConnId = 0;

/// The queues of one metrics scrape.
#[derive(Debug, Default)]
pub(crate) struct QueueScrape {
    /// The deepest queues (ready + delayed + leased + dead), sorted by name.
    pub(crate) top: Vec<QueueStatus>,
    /// The sum of every other queue, if there is any.
    pub(crate) others: Option<QueueSnapshot>,
    /// How many queues exist.
    pub(crate) queues: u64,
}

/// A planned admin change and how its store jobs went.
#[derive(Debug)]
pub(crate) struct AdminOutcome {
    pub(crate) conn: ConnId,
    pub(crate) req: ReqId,
    pub(crate) plan: AdminPlan,
    /// Per chunk of the plan's tasks: whether it is durable.
    pub(crate) durable: Vec<bool>,
    /// The first failure, if any.
    pub(crate) failure: Option<StoreError>,
}

/// A schedule change and how its store job went.
#[derive(Debug)]
pub(crate) struct ScheduleOutcome {
    pub(crate) conn: ConnId,
    pub(crate) req: ReqId,
    pub(crate) change: ScheduleChange,
    pub(crate) result: Result<(), StoreError>,
}

/// A planned schedule change (`hub/schedules.rs`).
#[derive(Debug, Clone)]
pub(crate) enum ScheduleChange {
    /// Added, paused or resumed: the new record.
    Put(Box<crate::model::Schedule>),
    Remove(Arc<str>),
}

// ---------------------------------------------------------------------------------
// Publishes.

/// Tasks admitted per queue, released when their store job completes.
pub(crate) type Reservation = Vec<(Arc<str>, u64)>;

/// A publish on its way to the store writer: whom to confirm, and what the hub must
/// learn once it is durable.
#[derive(Debug)]
pub(crate) struct PublishJob {
    pub(crate) out: OutTx,
    pub(crate) req: ReqId,
    pub(crate) hub: HubTx,
    pub(crate) committed: Vec<Committed>,
    pub(crate) timer: PublishTimer,
    /// Room the hub reserved in bounded queues, released on completion.
    pub(crate) reservation: Option<Reservation>,
}

// ---------------------------------------------------------------------------------
// The hub's commands.

/// What connections, the store writer's completions, the sweeper and the HTTP side
/// ask of the hub.
#[derive(Debug)]
pub(crate) enum HubCmd {
    /// A connection finished its handshake; deliveries and replies go to `out`.
    Register {
        conn: ConnId,
        out: OutTx,
        /// Client name from Hello, else the peer address (shown as a lease holder).
        name: Arc<str>,
        /// The peer address (shown by peek, for operators).
        peer: SocketAddr,
    },
    /// A connection closed.
    Disconnect { conn: ConnId },
    Subscribe {
        conn: ConnId,
        req: ReqId,
        queue: String,
        prefetch: u32,
    },
    Unsubscribe {
        conn: ConnId,
        req: ReqId,
        sub: SubId,
    },
    Ack {
        conn: ConnId,
        req: ReqId,
        task: TaskId,
        token: u64,
        result: Bytes,
    },
    Nack {
        conn: ConnId,
        req: ReqId,
        task: TaskId,
        token: u64,
        mode: NackMode,
        reason: String,
    },
    Extend {
        conn: ConnId,
        req: ReqId,
        task: TaskId,
        token: u64,
        extend_ms: u64,
    },
    /// A delivery its consumer never started on comes back without an attempt.
    ReleaseUnseen {
        conn: ConnId,
        req: ReqId,
        task: TaskId,
        token: u64,
    },
    /// Published tasks are durable (and the room reserved for them in bounded queues,
    /// if any, is theirs now).
    Committed(Vec<Committed>, Option<Reservation>),
    /// Several `Committed` of one group commit, in order (`done.rs`).
    CommittedMany(Vec<CommittedPublish>),
    /// A publish to a bounded queue, to admit (`hub/admission.rs`).
    Publish { muts: Muts, job: Box<PublishJob> },
    /// An admitted publish failed: its reserved room is free again.
    Release(Reservation),
    /// A connection's writer half wrote (or dropped) `n` more deliveries.
    Written { conn: ConnId, n: u32 },
    /// A delivery could not be sent.
    Undeliverable {
        conn: ConnId,
        task: TaskId,
        token: u64,
        requeue: bool,
    },
    /// A queue administration request (`hub/admin.rs`).
    Admin {
        conn: ConnId,
        req: ReqId,
        op: AdminOp,
    },
    /// The store jobs of an admin change completed (`hub/admin.rs`).
    AdminDurable(Box<AdminOutcome>),
    /// The store job of a schedule change completed (`hub/schedules.rs`).
    ScheduleDurable(Box<ScheduleOutcome>),
    /// A schedule's fire (its tick's tasks and its last run, one job) completed:
    /// `committed` are the tasks really inserted (not duplicates).
    FireDone {
        schedule: Arc<str>,
        /// The fire's last tick.
        tick: Millis,
        stored: bool,
        committed: Vec<Committed>,
    },
    /// The deepest queues' status and the sum of the others, for a metrics scrape:
    /// at most `limit` queues one by one.
    Scrape {
        limit: usize,
        reply: oneshot::Sender<QueueScrape>,
    },
    /// The client connections (at most `limit`, by id) with their subscriptions, and
    /// how many more there are, for the HTTP side.
    Connections {
        limit: usize,
        reply: oneshot::Sender<(Vec<ConnectionInfo>, u64)>,
    },
    /// Status of a task: the hub adds its lease and the connection reads the rest.
    GetTask {
        conn: ConnId,
        req: ReqId,
        task: TaskId,
    },
    /// The retention sweep removed dead tasks (queue, task).
    DeadSwept(Vec<(Arc<str>, TaskId)>),
    /// An ack was not stored: the task, pending in the store, is deliverable again.
    Restore { task: TaskId, state: TaskState },
    /// Cluster mode: this node leads a new term; serve with this engine, rebuilt from
    /// the store once every earlier entry was applied, and submit the recovery fixes.
    Lead {
        engine: RebuiltEngine,
        fixes: Vec<Mutation>,
    },
    /// Cluster mode: this node stopped leading: dispatch nothing, fire no schedule.
    Follow,
    /// Stop dispatching, hand pending persistence to the writer, and exit.
    Shutdown,
}

// ---------------------------------------------------------------------------------
// A connection's outbox.

/// What a connection's writer half sends. The outbox is unbounded, but what can be in
/// it is bounded by the protocol: deliveries by the subscriptions' credit, answers by
/// requests.
#[derive(Debug)]
pub(crate) enum Outbound {
    /// The answer to request `req`.
    Reply { req: ReqId, reply: Reply },
    /// Answers of one group commit to this connection, in request order (the store
    /// writer's completions, sent together: `done.rs`).
    Replies(Vec<(ReqId, Reply)>),
    /// Read the task body from the store and send it as a delivery.
    Deliver(Dispatch),
    /// Complete an admin answer with store reads and send it.
    Admin(AdminReply),
    /// A subscription ended without being asked to (its queue was deleted).
    SubscriptionEnded {
        sub: SubId,
        queue: String,
        reason: &'static str,
    },
    /// Send this last error (request `req`, 0 for the connection), then close.
    Close { req: ReqId, failure: Failure },
    /// Read the task's state from the store and answer request `req` with its status.
    Status {
        req: ReqId,
        task: TaskId,
        lease: Option<LeaseHolder>,
    },
    /// A `WaitResult` request (the writer half keeps the connection's waits).
    Wait {
        req: ReqId,
        task: TaskId,
        timeout_ms: u64,
    },
    /// A waited-for task reached its final state durably.
    WaitDone {
        req: ReqId,
        task: TaskId,
        state: Final,
    },
    /// Everything committed before a wait's unknown-task check is completed: look again.
    Recheck { req: ReqId, task: TaskId },
    /// Read a task's whole payload from the store and answer request `req` with it.
    Payload { req: ReqId, task: TaskId },
}

/// A peeked task with at most the requested preview of its payload.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct PeekedTask {
    pub(crate) task_id: TaskId,
    pub(crate) state: TaskView,
    pub(crate) priority: i32,
    pub(crate) attempts: u32,
    pub(crate) max_attempts: u32,
    pub(crate) created_at_ms: u64,
    pub(crate) updated_at_ms: u64,
    pub(crate) not_before_ms: u64,
    /// Empty when not leased.
    pub(crate) lease_holder: String,
    pub(crate) lease_deadline_ms: u64,
    pub(crate) last_error: String,
    pub(crate) payload: Bytes,
    pub(crate) headers: Vec<(String, Bytes)>,
    /// The payload or the headers were cut to the preview size.
    pub(crate) truncated: bool,
    pub(crate) payload_bytes: u64,
}
