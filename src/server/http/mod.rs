//! The broker's side of the HTTP port: [`HubBackend`] answers what `crate::http` asks
//! (its [`Backend`] trait) from the running broker. Queue reads and actions go to the
//! hub as admin requests of one internal connection (`HTTP_CONN`), the same path as the
//! protocol's admin requests, so an action is answered only once durable; task data
//! (payload previews, task status, the oldest ready task's age) is read from the store
//! here, as a connection's writer half does. Before recovery ends only the probes and
//! the metrics answer; everything else is `SHUTTING_DOWN` (503). Serving HTTP itself
//! (routes, auth, pages) is `crate::http`; the Prometheus encoding is `exposition.rs`.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use futures_util::future::BoxFuture;
use parking_lot::Mutex;
use squall_proto::ErrorCode;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use self::cluster_metrics::ClusterSample;
use self::exposition::{QueueSample, ScrapedQueues, StoreHealth};
use crate::broker::{QueueConfigUpdate, TaskView};
use crate::cluster::types::RaftMetrics;
use crate::config::ServerConfig;
use crate::http::types::*;
use crate::http::{Action, ActionDone, ApiError, Backend, Health, HttpOptions, MetricsText};
use crate::server::clock::now_ms;
use crate::server::conn::wire;
use crate::server::error::ServerError;
use crate::server::lead::Leadership;
use crate::server::metrics::Metrics;
use crate::server::msg::{
    AdminOp, AdminReply, ConnectionInfo, Failure, HubCmd, HubTx, Outbound, PeekedTask, QueueStatus,
    RateView, Reply, TaskPhase, TaskReport, HTTP_CONN,
};
use crate::server::{reads, tls};
use crate::store::{Store, WriterStats};

mod cluster_metrics;
mod exposition;

/// The running broker, as far as the HTTP side needs it.
pub(crate) struct Live {
    pub(crate) hub: HubTx,
    pub(crate) store: Store,
    pub(crate) writer: Arc<WriterStats>,
    /// Queues exported one by one (`metrics_queue_limit`).
    pub(crate) queue_limit: usize,
    /// On a cluster member: its Raft metrics and leadership.
    pub(crate) cluster: Option<ClusterProbe>,
}

/// What the HTTP side reads of a cluster member: openraft's metrics (for `/metrics`
/// and `/readyz`) and the leadership watcher's count of leader changes.
pub(crate) struct ClusterProbe {
    pub(crate) metrics: tokio::sync::watch::Receiver<RaftMetrics>,
    pub(crate) leadership: Arc<Leadership>,
    pub(crate) snapshots: Arc<crate::cluster::snapshot::SnapshotCounters>,
    pub(crate) timings: Arc<crate::cluster::timings::Timings>,
    pub(crate) heard: Arc<crate::cluster::heard::Heard>,
}

/// What one peeked task costs an answer beyond its payload preview (as the protocol's
/// admin answers count it); a peek stops before `max_frame_bytes`.
const PEEK_ITEM_OVERHEAD: usize = 512;

/// Answers of the hub to the HTTP side's requests, by request id.
type Pending = Arc<Mutex<HashMap<u64, oneshot::Sender<Outbound>>>>;

/// [`Backend`] on the hub and the store.
pub(crate) struct HubBackend {
    metrics: Arc<Metrics>,
    node_id: String,
    /// Largest answer built from store reads (a list or peek stops before it).
    max_answer_bytes: usize,
    live: OnceLock<Live>,
    pending: Pending,
    next_req: AtomicU64,
    /// Routes the hub's answers to `pending`; ends when the hub lets go of its outbox.
    router: Mutex<Option<JoinHandle<()>>>,
}

impl HubBackend {
    fn new(config: &ServerConfig, metrics: Arc<Metrics>) -> HubBackend {
        HubBackend {
            metrics,
            node_id: config.node_id.clone(),
            max_answer_bytes: config.max_frame_bytes,
            live: OnceLock::new(),
            pending: Arc::default(),
            next_req: AtomicU64::new(1),
            router: Mutex::new(None),
        }
    }

    /// Registers with the hub as connection `HTTP_CONN` and starts routing its answers.
    fn go_live(&self, live: Live, addr: SocketAddr) {
        let (out, rx) = mpsc::unbounded_channel();
        let _ = live.hub.send(HubCmd::Register {
            conn: HTTP_CONN,
            out,
            name: Arc::from("http"),
            peer: addr,
        });
        *self.router.lock() = Some(tokio::spawn(route_answers(rx, self.pending.clone())));
        let _ = self.live.set(live);
    }

    fn live(&self) -> Result<&Live, ApiError> {
        self.live
            .get()
            .ok_or_else(|| ApiError::unavailable("the broker is still recovering"))
    }

    /// Sends the command `make(req)` to the hub and waits for its answer to `req`.
    async fn ask(&self, make: impl FnOnce(u64) -> HubCmd) -> Result<Outbound, ApiError> {
        let live = self.live()?;
        let req = self.next_req.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        self.pending.lock().insert(req, tx);
        // Whether answered, failed or abandoned (the caller timed out), the entry goes.
        let _forget = Forget(&self.pending, req);
        live.hub
            .send(make(req))
            .map_err(|_| ApiError::unavailable("the broker is shutting down"))?;
        rx.await
            .map_err(|_| ApiError::unavailable("the broker is shutting down"))
    }

    async fn admin(&self, op: AdminOp) -> Result<Outbound, ApiError> {
        self.ask(|req| HubCmd::Admin {
            conn: HTTP_CONN,
            req,
            op,
        })
        .await
    }
}

struct Forget<'a>(&'a Pending, u64);

impl Drop for Forget<'_> {
    fn drop(&mut self) {
        self.0.lock().remove(&self.1);
    }
}

async fn route_answers(mut rx: mpsc::UnboundedReceiver<Outbound>, pending: Pending) {
    while let Some(out) = rx.recv().await {
        if let Outbound::Replies(replies) = out {
            for (req, reply) in replies {
                if let Some(tx) = pending.lock().remove(&req) {
                    let _ = tx.send(Outbound::Reply { req, reply });
                }
            }
            continue;
        }
        let req = match &out {
            Outbound::Reply { req, .. } | Outbound::Status { req, .. } => *req,
            Outbound::Admin(
                AdminReply::Queues { req, .. }
                | AdminReply::Peek { req, .. }
                | AdminReply::Schedules { req, .. },
            ) => *req,
            _ => continue,
        };
        if let Some(tx) = pending.lock().remove(&req) {
            let _ = tx.send(out);
        }
    }
}

/// The API error of a refusal: the broker's code and message, as on the wire.
fn refused(f: Failure) -> ApiError {
    let (code, message) = wire::code_and_message(f);
    ApiError::new(code, message)
}

/// An answer that is not the one asked for: a refusal, or a bug.
fn other(out: Outbound, what: &str) -> ApiError {
    match out {
        Outbound::Reply {
            reply: Reply::Refused(f),
            ..
        } => refused(f),
        _ => unexpected(what),
    }
}

fn unexpected(what: &str) -> ApiError {
    ApiError::new(
        ErrorCode::Internal,
        format!("unexpected answer from the hub to {what}"),
    )
}

fn queue_view(q: &QueueStatus, store: &Store, now: u64) -> QueueView {
    let s = &q.snapshot;
    let c = &s.counters;
    let r = &q.rates;
    QueueView {
        name: s.name.to_string(),
        ready: s.ready,
        delayed: s.delayed,
        leased: s.leased,
        dead: s.dead,
        paused: s.config.paused,
        consumers: s.consumers,
        oldest_ready_age_ms: reads::oldest_ready_age_ms(q, store, now),
        publish_rate: r.published,
        deliver_rate: r.delivered,
        ack_rate: r.acked,
        nack_rate: r.nacked,
        expire_rate: r.expired,
        dead_rate: r.dead_lettered,
        totals: QueueTotals {
            published: c.published,
            delivered: c.delivered,
            acked: c.acked,
            nacked: c.nacked,
            expired: c.expired,
            dead_lettered: c.dead_lettered,
            redelivered: c.redelivered,
            expired_tasks: c.expired_tasks,
        },
        config: QueueSettings {
            lease_ms: s.config.lease_ms,
            max_attempts: s.config.max_attempts,
            backoff_min_ms: s.config.backoff_min_ms,
            backoff_max_ms: s.config.backoff_max_ms,
            max_length: s.config.max_length,
            result_ttl_ms: s.config.result_ttl_ms,
            dedup_window_ms: s.config.dedup_window_ms,
            max_in_flight: s.config.max_in_flight,
            rate_limit: s.config.rate_limit,
            rate_burst: s.config.rate_burst,
            drop_expired: s.config.drop_expired,
            keep_acked: s.config.keep_acked,
        },
    }
}

fn schedule_view(v: &crate::broker::ScheduleView) -> ScheduleView {
    let s = &v.schedule;
    ScheduleView {
        name: s.name.to_string(),
        queue: s.queue.to_string(),
        cron: s.cron.clone(),
        tz: s.tz.clone(),
        catch_up: s.catch_up.as_str().to_owned(),
        paused: s.paused,
        priority: s.priority,
        max_attempts: s.max_attempts,
        payload_bytes: s.payload.len() as u64,
        next_run_ms: v.next_run_ms,
        last_run_ms: (s.last_run_ms > 0).then_some(s.last_run_ms),
        last_task: (s.last_task > 0).then_some(s.last_task),
        created_at_ms: s.created_ms,
    }
}

fn task_view(s: PeekState) -> TaskView {
    match s {
        PeekState::Ready => TaskView::Ready,
        PeekState::Delayed => TaskView::Delayed,
        PeekState::Leased => TaskView::Leased,
        PeekState::Dead => TaskView::Dead,
    }
}

fn peek_state(v: TaskView) -> PeekState {
    match v {
        TaskView::Ready => PeekState::Ready,
        TaskView::Delayed => PeekState::Delayed,
        TaskView::Leased => PeekState::Leased,
        TaskView::Dead => PeekState::Dead,
    }
}

fn preview_of(t: PeekedTask) -> TaskPreview {
    let (payload, payload_base64) = text_and_base64(&t.payload);
    TaskPreview {
        id: t.task_id,
        state: peek_state(t.state),
        priority: t.priority,
        attempts: t.attempts,
        max_attempts: t.max_attempts,
        created_at_ms: t.created_at_ms,
        updated_at_ms: t.updated_at_ms,
        not_before_ms: t.not_before_ms,
        lease_holder: (!t.lease_holder.is_empty()).then_some(t.lease_holder),
        lease_deadline_ms: (t.lease_deadline_ms > 0).then_some(t.lease_deadline_ms),
        last_error: (!t.last_error.is_empty()).then_some(t.last_error),
        payload,
        payload_base64,
        payload_bytes: t.payload_bytes,
        truncated: t.truncated,
        headers: t
            .headers
            .into_iter()
            .map(|(k, v)| (k, String::from_utf8_lossy(&v).into_owned()))
            .collect(),
    }
}

fn task_detail(t: TaskReport) -> TaskDetail {
    let name = match t.state {
        TaskPhase::Ready => "ready",
        TaskPhase::Delayed => "delayed",
        TaskPhase::Leased => "leased",
        TaskPhase::Succeeded => "succeeded",
        TaskPhase::Dead => "dead",
        TaskPhase::Unknown => "unknown",
    };
    let finished = matches!(
        t.state,
        TaskPhase::Succeeded | TaskPhase::Dead | TaskPhase::Unknown
    );
    let result = (t.state == TaskPhase::Succeeded).then(|| text_and_base64(&t.result));
    TaskDetail {
        id: t.task_id,
        state: name.to_owned(),
        queue: t.queue,
        priority: t.priority,
        attempts: t.attempts,
        max_attempts: t.max_attempts,
        last_error: t.last_error.filter(|e| !e.is_empty()),
        lease_holder: t.lease.as_ref().map(|l| l.consumer.to_string()),
        lease_deadline_ms: t.lease.as_ref().map(|l| l.deadline_ms),
        created_at_ms: t.created_at_ms,
        updated_at_ms: t.updated_at_ms,
        not_before_ms: t.not_before_ms,
        result_base64: result.as_ref().map(|(_, b)| b.clone()),
        result: result.map(|(text, _)| text),
        expires_at_ms: t.expires_at_ms,
        finished,
    }
}

fn quantiles(h: &crate::histogram::Histogram) -> Quantiles {
    let s = h.snapshot();
    Quantiles {
        count: s.count,
        p50_us: s.quantile(0.5),
        p99_us: s.quantile(0.99),
    }
}

impl HubBackend {
    /// `/readyz`: recovered and serving; on a cluster member, also a leader known (the
    /// leader serves clients, a follower tells them where it is; a member that knows
    /// no leader, during an election or cut off from the majority, can do neither).
    fn ready(&self) -> bool {
        let cluster_ok = self
            .live
            .get()
            .and_then(|l| l.cluster.as_ref())
            .is_none_or(|c| c.metrics.borrow().current_leader.is_some());
        self.metrics.is_ready() && cluster_ok
    }
}

impl Backend for HubBackend {
    fn node_id(&self) -> String {
        self.node_id.clone()
    }

    fn health(&self) -> Health {
        let store = self.live.get().map(|l| &l.store);
        Health {
            ready: self.ready(),
            failed: store.and_then(|s| s.failure()).map(|e| e.to_string()),
            unavailable: store
                .and_then(|s| s.refusing_publishes())
                .map(|e| e.to_string()),
        }
    }

    fn metrics(&self, openmetrics: bool) -> BoxFuture<'_, Result<MetricsText, ApiError>> {
        Box::pin(async move {
            let live = self.live.get();
            let queues = match live {
                Some(live) => queue_samples(live).await?,
                None => ScrapedQueues::default(),
            };
            let writer = live.map(|l| &*l.writer);
            let store = live.map_or(StoreHealth::default(), |l| StoreHealth {
                failed: l.store.failure().is_some(),
                unavailable: l.store.refusing_publishes().is_some(),
                journal_bytes: l.store.journal_disk_bytes(),
            });
            let cluster = live.and_then(|l| l.cluster.as_ref()).map(|c| {
                let sample = ClusterSample::read(
                    &c.metrics.borrow(),
                    c.leadership.leader_changes(),
                    &c.snapshots,
                    &c.timings,
                    &c.heard,
                );
                Box::new(sample) as Box<dyn prometheus_client::collector::Collector>
            });
            let ready = self.ready();
            let body = exposition::render(
                &self.metrics,
                ready,
                writer,
                queues,
                store,
                cluster,
                openmetrics,
            )
            .map_err(|_| ApiError::new(ErrorCode::Internal, "encoding the metrics failed"))?;
            let content_type = if openmetrics {
                exposition::CONTENT_TYPE
            } else {
                exposition::TEXT_CONTENT_TYPE
            };
            Ok(MetricsText { content_type, body })
        })
    }

    fn queues(&self, after: String, limit: usize) -> BoxFuture<'_, Result<QueuePage, ApiError>> {
        Box::pin(async move {
            match self.admin(AdminOp::List { after, limit }).await? {
                Outbound::Admin(AdminReply::Queues { queues, more, .. }) => {
                    let store = &self.live()?.store;
                    let now = now_ms();
                    Ok(QueuePage {
                        queues: queues.iter().map(|q| queue_view(q, store, now)).collect(),
                        more,
                    })
                }
                other_answer => Err(other(other_answer, "a queue list")),
            }
        })
    }

    fn schedules(
        &self,
        after: String,
        limit: usize,
    ) -> BoxFuture<'_, Result<SchedulePage, ApiError>> {
        Box::pin(async move {
            match self.admin(AdminOp::ListSchedules { after, limit }).await? {
                Outbound::Admin(AdminReply::Schedules { list, more, .. }) => Ok(SchedulePage {
                    schedules: list.iter().map(schedule_view).collect(),
                    more,
                }),
                other_answer => Err(other(other_answer, "a schedule list")),
            }
        })
    }

    fn queue(&self, name: String) -> BoxFuture<'_, Result<QueueView, ApiError>> {
        Box::pin(async move {
            let answer = self.admin(AdminOp::Get(name)).await?;
            single_queue(answer, &self.live()?.store)
        })
    }

    fn peek(
        &self,
        queue: String,
        state: PeekState,
        limit: usize,
        preview_bytes: usize,
    ) -> BoxFuture<'_, Result<TaskList, ApiError>> {
        Box::pin(async move {
            let op = AdminOp::Peek {
                queue,
                state: task_view(state),
                limit,
                preview: preview_bytes,
            };
            match self.admin(op).await? {
                Outbound::Admin(AdminReply::Peek { items, preview, .. }) => {
                    let store = &self.live()?.store;
                    let mut tasks = Vec::with_capacity(items.len());
                    let mut size = 0;
                    let mut more = false;
                    for item in items {
                        let task = reads::peeked_task(item, store, preview).map_err(|e| {
                            ApiError::new(
                                ErrorCode::Storage,
                                format!("cannot read a peeked task: {e}"),
                            )
                        })?;
                        // Settled or removed since the hub looked: skipped.
                        let Some(task) = task else { continue };
                        size += task.payload.len() + PEEK_ITEM_OVERHEAD;
                        if size > self.max_answer_bytes {
                            more = true;
                            break;
                        }
                        tasks.push(preview_of(task));
                    }
                    Ok(TaskList { tasks, more })
                }
                other_answer => Err(other(other_answer, "a peek")),
            }
        })
    }

    fn task(&self, id: u64) -> BoxFuture<'_, Result<TaskDetail, ApiError>> {
        Box::pin(async move {
            let answer = self
                .ask(|req| HubCmd::GetTask {
                    conn: HTTP_CONN,
                    req,
                    task: id,
                })
                .await?;
            match answer {
                Outbound::Status { task, lease, .. } => {
                    let store = &self.live()?.store;
                    reads::task_report(store, task, lease.as_ref(), None, now_ms())
                        .map(task_detail)
                        .map_err(|e| {
                            ApiError::new(ErrorCode::Storage, format!("cannot read task {id}: {e}"))
                        })
                }
                other_answer => Err(other(other_answer, "a task lookup")),
            }
        })
    }

    fn connections(&self, limit: usize) -> BoxFuture<'_, Result<ConnectionList, ApiError>> {
        Box::pin(async move {
            let live = self.live()?;
            let (reply, rx) = oneshot::channel();
            live.hub
                .send(HubCmd::Connections { limit, reply })
                .map_err(|_| ApiError::unavailable("the broker is shutting down"))?;
            let (conns, more) = rx
                .await
                .map_err(|_| ApiError::unavailable("the broker is shutting down"))?;
            Ok(ConnectionList {
                connections: conns.into_iter().map(connection_view).collect(),
                more,
            })
        })
    }

    fn overview(&self) -> BoxFuture<'_, Result<Overview, ApiError>> {
        Box::pin(async move {
            let live = self.live()?;
            let (reply, rx) = oneshot::channel();
            live.hub
                .send(HubCmd::Scrape { limit: 0, reply })
                .map_err(|_| ApiError::unavailable("the broker is shutting down"))?;
            let scraped = rx
                .await
                .map_err(|_| ApiError::unavailable("the broker is shutting down"))?;
            let sum = scraped.others;
            let health = self.health();
            let (state, reason) = match (&health.failed, &health.unavailable) {
                (Some(f), _) => ("failed", Some(f.clone())),
                (None, Some(u)) => ("unavailable", Some(u.clone())),
                (None, None) => ("ok", None),
            };
            Ok(Overview {
                node_id: self.node_id.clone(),
                version: env!("CARGO_PKG_VERSION").to_owned(),
                health: state.to_owned(),
                health_reason: reason,
                ready: health.ready,
                journal_bytes: live.store.journal_disk_bytes(),
                queues: scraped.queues,
                ready_tasks: sum.as_ref().map_or(0, |s| s.ready),
                delayed_tasks: sum.as_ref().map_or(0, |s| s.delayed),
                leased_tasks: sum.as_ref().map_or(0, |s| s.leased),
                dead_tasks: sum.as_ref().map_or(0, |s| s.dead),
                connections: self.metrics.connections_open.load(Ordering::Relaxed).max(0) as u64,
                publish_confirm: quantiles(&self.metrics.publish_confirm_micros),
                commit: quantiles(&live.writer.commit_latency_micros),
            })
        })
    }

    fn act(&self, action: Action) -> BoxFuture<'_, Result<ActionDone, ApiError>> {
        Box::pin(async move {
            let op = match action {
                Action::Pause(q) => AdminOp::SetPaused(q, true),
                Action::Resume(q) => AdminOp::SetPaused(q, false),
                Action::Purge { queue, state } => AdminOp::Purge {
                    queue,
                    state: state.map(task_view),
                },
                Action::Redrive { queue, limit } => AdminOp::Redrive {
                    queue,
                    limit: limit.map(|l| usize::try_from(l).unwrap_or(usize::MAX)),
                },
                Action::Configure(queue, c) => AdminOp::Configure(
                    queue,
                    QueueConfigUpdate {
                        lease_ms: c.lease_ms,
                        max_attempts: c.max_attempts,
                        backoff_min_ms: c.backoff_min_ms,
                        backoff_max_ms: c.backoff_max_ms,
                        max_length: c.max_length,
                        result_ttl_ms: c.result_ttl_ms,
                        dedup_window_ms: c.dedup_window_ms,
                        max_in_flight: c.max_in_flight,
                        rate_limit: c.rate_limit,
                        rate_burst: c.rate_burst,
                        drop_expired: c.drop_expired,
                        keep_acked: c.keep_acked,
                    },
                ),
                Action::Delete(q) => AdminOp::Delete(q),
            };
            match self.admin(op).await? {
                Outbound::Reply {
                    reply: Reply::Count(n),
                    ..
                } => Ok(ActionDone::Count(n)),
                answer => single_queue(answer, &self.live()?.store)
                    .map(|q| ActionDone::Queue(Box::new(q))),
            }
        })
    }
}

fn single_queue(answer: Outbound, store: &Store) -> Result<QueueView, ApiError> {
    match answer {
        Outbound::Admin(AdminReply::Queues { queues, .. }) => queues
            .first()
            .map(|q| queue_view(q, store, now_ms()))
            .ok_or_else(|| unexpected("a queue read")),
        answer => Err(other(answer, "a queue read")),
    }
}

fn connection_view(c: ConnectionInfo) -> ConnectionView {
    let tasks_held = c.subscriptions.iter().map(|s| u64::from(s.in_flight)).sum();
    ConnectionView {
        id: c.conn,
        client: c.name.to_string(),
        address: c.peer.to_string(),
        subscriptions: c
            .subscriptions
            .into_iter()
            .map(|s| SubscriptionView {
                id: s.sub,
                queue: s.queue.to_string(),
                prefetch: s.prefetch,
                in_flight: s.in_flight,
            })
            .collect(),
        tasks_held,
    }
}

/// Asks the hub for the deepest queues' status (and the others' sum), then reads each
/// exported queue's oldest ready task's age.
async fn queue_samples(live: &Live) -> Result<ScrapedQueues, ApiError> {
    let (tx, rx) = oneshot::channel();
    live.hub
        .send(HubCmd::Scrape {
            limit: live.queue_limit,
            reply: tx,
        })
        .map_err(|_| ApiError::unavailable("the broker is shutting down"))?;
    let scraped = rx
        .await
        .map_err(|_| ApiError::unavailable("the broker is shutting down"))?;
    let now = now_ms();
    Ok(ScrapedQueues {
        top: scraped
            .top
            .into_iter()
            .map(|status| QueueSample {
                oldest_ready_age_ms: reads::oldest_ready_age_ms(&status, &live.store, now),
                status,
            })
            .collect(),
        others: scraped.others.map(|sum| QueueSample {
            // Rates are not summed: the sum's are zero (per-queue rates are for
            // operators, the counters are what Prometheus computes rates from).
            status: QueueStatus {
                snapshot: sum,
                rates: RateView::default(),
                oldest_ready: None,
            },
            oldest_ready_age_ms: None,
        }),
        count: scraped.queues,
    })
}

/// How a bind error names the HTTP port's setting.
const HTTP_SETTING: &str = "the HTTP port, --http";

/// The HTTP port's lifecycle as the server drives it: started before recovery, handed
/// the live broker after it, stopped last.
pub(crate) struct HttpServer {
    server: crate::http::HttpServer,
    backend: Arc<HubBackend>,
}

impl HttpServer {
    /// Binds and starts serving, or does nothing when `config.http` is `None`.
    pub(crate) async fn start(
        config: &ServerConfig,
        metrics: Arc<Metrics>,
    ) -> Result<HttpServer, ServerError> {
        let tls = if config.tls.http {
            tls::acceptor(config)?
        } else {
            None
        };
        let options = HttpOptions {
            auth: config.auth.clone(),
            protect_metrics: config.auth.metrics,
            tls,
        };
        let backend = Arc::new(HubBackend::new(config, metrics));
        let server = crate::http::HttpServer::start(config.http, options, backend.clone())
            .await
            .map_err(|cause| ServerError::Bind {
                addr: config.http.unwrap_or(([127, 0, 0, 1], 0).into()),
                setting: HTTP_SETTING,
                cause,
            })?;
        Ok(HttpServer { server, backend })
    }

    /// The bound address, if serving.
    pub(crate) fn local_addr(&self) -> Option<SocketAddr> {
        self.server.local_addr()
    }

    /// Hands over the live broker after recovery.
    pub(crate) fn go_live(&self, live: Live) {
        if let Some(addr) = self.local_addr() {
            self.backend.go_live(live, addr);
        }
    }

    /// Stops serving; the answer router ends once the hub has let go of its outbox.
    pub(crate) async fn stop(self) {
        self.server.stop().await;
        let router = self.backend.router.lock().take();
        if let Some(router) = router {
            router.abort();
            let _ = router.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Answers the store writer sent together reach each waiting request.
    #[tokio::test]
    async fn answers_sent_together_reach_each_waiting_request() {
        let pending: Pending = Arc::default();
        let (tx, rx) = mpsc::unbounded_channel();
        let mut waiting = Vec::new();
        for req in [3, 4] {
            let (answer, answered) = oneshot::channel();
            pending.lock().insert(req, answer);
            waiting.push(answered);
        }
        let routing = tokio::spawn(route_answers(rx, pending.clone()));
        tx.send(Outbound::Replies(vec![
            (4, Reply::Count(40)),
            (3, Reply::Count(30)),
        ]))
        .unwrap();
        for (answered, want) in waiting.into_iter().zip([30, 40]) {
            let answer = tokio::time::timeout(std::time::Duration::from_secs(5), answered);
            match answer.await.expect("answered in time").unwrap() {
                Outbound::Reply {
                    reply: Reply::Count(n),
                    ..
                } => assert_eq!(n, want),
                other => panic!("{other:?}"),
            }
        }
        assert!(pending.lock().is_empty());
        drop(tx);
        routing.await.unwrap();
    }
}
