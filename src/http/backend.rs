//! What the HTTP side asks of the broker, as one narrow trait: health, metrics, queue
//! list and detail, peek, schedules, task lookup, connections, overview and the
//! administrative actions. The server implements it on top of the hub (reads from the
//! engine, task data from the store, actions through the same hub path as the
//! protocol's admin requests, answered once durable). Requests arrive here already
//! validated (names, ranges, authorisation); nothing here knows about HTTP.

use futures_util::future::BoxFuture;

use super::error::ApiError;
use super::types::{
    ConfigChange, ConnectionList, Overview, PeekState, QueuePage, QueueView, SchedulePage,
    TaskDetail, TaskList,
};

/// Whether the broker is alive and ready, for `/healthz` and `/readyz`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Health {
    /// Recovery is done and shutdown has not started.
    pub ready: bool,
    /// The store failed: restart the broker.
    pub failed: Option<String>,
    /// Nothing can be stored now (e.g. the disk is full); resumes by itself.
    pub unavailable: Option<String>,
}

/// A metrics scrape's answer.
#[derive(Debug, Clone)]
pub struct MetricsText {
    /// Its content type (Prometheus text or OpenMetrics).
    pub content_type: &'static str,
    /// The exposition.
    pub body: String,
}

/// An administrative change of one queue.
#[derive(Debug, Clone)]
pub enum Action {
    /// Stop deliveries.
    Pause(String),
    /// Resume deliveries.
    Resume(String),
    /// Remove tasks (in one state, or every pending and dead one).
    Purge {
        /// The queue.
        queue: String,
        /// Only this state.
        state: Option<PeekState>,
    },
    /// Move dead tasks back to ready.
    Redrive {
        /// The queue.
        queue: String,
        /// At most this many.
        limit: Option<u64>,
    },
    /// Change settings.
    Configure(String, ConfigChange),
    /// Remove the queue with its tasks.
    Delete(String),
}

impl Action {
    /// The queue it changes.
    pub fn queue(&self) -> &str {
        match self {
            Action::Pause(q)
            | Action::Resume(q)
            | Action::Configure(q, _)
            | Action::Delete(q)
            | Action::Purge { queue: q, .. }
            | Action::Redrive { queue: q, .. } => q,
        }
    }
}

/// What a durable action answers.
#[derive(Debug, Clone)]
pub enum ActionDone {
    /// The queue after a configuration change, pause or resume.
    Queue(Box<QueueView>),
    /// Tasks purged, redriven, or removed with a deleted queue.
    Count(u64),
}

/// The broker as the HTTP side sees it. Every method is answered by the running broker
/// (or with `SHUTTING_DOWN` while it recovers or stops).
pub trait Backend: Send + Sync + 'static {
    /// The node's id (shown in the dashboard's header).
    fn node_id(&self) -> String;
    /// Liveness and readiness; cheap, no waiting.
    fn health(&self) -> Health;
    /// The Prometheus text (`openmetrics`: the OpenMetrics format).
    fn metrics(&self, openmetrics: bool) -> BoxFuture<'_, Result<MetricsText, ApiError>>;
    /// Up to `limit` queues whose names sort after `after`.
    fn queues(&self, after: String, limit: usize) -> BoxFuture<'_, Result<QueuePage, ApiError>>;
    /// One queue (`NOT_FOUND` if it does not exist).
    fn queue(&self, name: String) -> BoxFuture<'_, Result<QueueView, ApiError>>;
    /// Up to `limit` tasks of a queue in one state, with `preview` payload bytes each.
    fn peek(
        &self,
        queue: String,
        state: PeekState,
        limit: usize,
        preview: usize,
    ) -> BoxFuture<'_, Result<TaskList, ApiError>>;
    /// Up to `limit` schedules whose names sort after `after`.
    fn schedules(
        &self,
        after: String,
        limit: usize,
    ) -> BoxFuture<'_, Result<SchedulePage, ApiError>>;
    /// A task's status (state `unknown` if the broker does not know it).
    fn task(&self, id: u64) -> BoxFuture<'_, Result<TaskDetail, ApiError>>;
    /// Up to `limit` client connections of the protocol port.
    fn connections(&self, limit: usize) -> BoxFuture<'_, Result<ConnectionList, ApiError>>;
    /// Health, store, totals and latency quantiles.
    fn overview(&self) -> BoxFuture<'_, Result<Overview, ApiError>>;
    /// Carries out an action; answers once it is durable.
    fn act(&self, action: Action) -> BoxFuture<'_, Result<ActionDone, ApiError>>;
}
