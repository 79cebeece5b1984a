//! [`ClusterWorker`]: one handler over many queues of a cluster, one [`Worker`] per
//! queue on the queue's node, with the same settings and one shutdown; a queue whose
//! node is down waits for it and is re-subscribed when it is back.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::warn;

use super::{ClusterClient, Node};
use crate::client::Client;
use crate::delivery::Task;
use crate::error::{ClientError, Result};
use crate::worker::{HandlerOutput, Settings, TaskError, Worker, WorkerReport};

impl ClusterClient {
    /// A [`ClusterWorker`] running one handler over all of `queues`, each on its node.
    pub fn workers<I, S>(&self, queues: I) -> ClusterWorker
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        ClusterWorker::new(self.clone(), queues)
    }
}

/// Runs one handler over many queues of a cluster: one [`Worker`] per queue, on the
/// queue's node, with the same settings and one shutdown.
///
/// A queue whose node is unreachable when the worker starts waits for it; a node that
/// goes down while the worker runs is re-subscribed when it comes back (its leases
/// died with the connection, so its running tasks are redelivered). The worker ends
/// with an error only for a failure that waiting does not fix (the broker refusing a
/// subscription, a deleted queue, a closed client); the other queues are then drained
/// and stopped too.
///
/// ```no_run
/// # async fn demo(cluster: squall_client::ClusterClient) -> Result<(), squall_client::ClientError> {
/// use squall_client::{Task, TaskError};
///
/// let report = cluster
///     .workers(["emails", "reports", "thumbnails"])
///     .concurrency(4) // per queue
///     .run_until(
///         |task: Task| async move {
///             println!("{}: {} bytes", task.queue(), task.payload().len());
///             Ok::<_, TaskError>(())
///         },
///         tokio::signal::ctrl_c(),
///     )
///     .await?;
/// println!("acked {}", report.acked);
/// # Ok(()) }
/// ```
#[must_use = "a worker does nothing until .run(handler).await"]
pub struct ClusterWorker {
    cluster: ClusterClient,
    queues: Vec<String>,
    settings: Settings,
    shutdown: CancellationToken,
}

impl std::fmt::Debug for ClusterWorker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterWorker")
            .field("queues", &self.queues)
            .field("concurrency", &self.settings.concurrency)
            .finish_non_exhaustive()
    }
}

/// How long a queue's worker waits before subscribing again after a failure that
/// a reconnect can fix.
const RESUBSCRIBE_DELAY: Duration = Duration::from_millis(250);

impl ClusterWorker {
    /// A worker for `queues` on `cluster` with the [`Worker`] defaults.
    pub fn new<I, S>(cluster: ClusterClient, queues: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        ClusterWorker {
            cluster,
            queues: queues.into_iter().map(Into::into).collect(),
            settings: Settings::default(),
            shutdown: CancellationToken::new(),
        }
    }

    crate::worker::settings_builder!();

    /// Runs until `signal` resolves, then shuts down gracefully; see [`run`](Self::run).
    pub async fn run_until<F, Fut, R, S>(self, handler: F, signal: S) -> Result<WorkerReport>
    where
        F: Fn(Task) -> Fut + Clone + Send + Sync + 'static,
        Fut: Future<Output = std::result::Result<R, TaskError>> + Send + 'static,
        R: HandlerOutput,
        S: Future + Send,
    {
        let token = self.shutdown.clone();
        let run = self.run(handler);
        tokio::pin!(run);
        tokio::select! {
            report = &mut run => return report,
            _ = signal => token.cancel(),
        }
        run.await
    }

    /// Runs `handler` for every task of every queue until shutdown, then drains each
    /// queue's worker and returns the summed report. The handler is cloned once per
    /// queue (share state through an `Arc`).
    pub async fn run<F, Fut, R>(self, handler: F) -> Result<WorkerReport>
    where
        F: Fn(Task) -> Fut + Clone + Send + Sync + 'static,
        Fut: Future<Output = std::result::Result<R, TaskError>> + Send + 'static,
        R: HandlerOutput,
    {
        // Its own token, so that one queue's failure stops the others without
        // cancelling a token the caller handed in.
        let stop = self.shutdown.child_token();
        let mut running = JoinSet::new();
        for queue in &self.queues {
            let node = self.cluster.owner(queue).clone();
            let plan = self.plan_for(queue.clone(), stop.clone());
            let cluster_stop = self.cluster.inner.shutdown.clone();
            running.spawn(run_queue(node, plan, handler.clone(), cluster_stop));
        }
        let mut total = WorkerReport::default();
        let mut first_error = None;
        while let Some(done) = running.join_next().await {
            let result = done.unwrap_or_else(|e| {
                Err(ClientError::Protocol(format!(
                    "a queue's worker task failed: {e}"
                )))
            });
            match result {
                Ok(report) => add(&mut total, &report),
                Err(e) => {
                    if first_error.is_none() {
                        warn!(error = %e, "a queue's worker ended; stopping the others");
                        stop.cancel();
                        first_error = Some(e);
                    }
                }
            }
        }
        match first_error {
            Some(e) => Err(e),
            None => Ok(total),
        }
    }

    fn plan_for(&self, queue: String, shutdown: CancellationToken) -> QueuePlan {
        QueuePlan {
            queue,
            settings: self.settings.clone(),
            shutdown,
        }
    }
}

/// One queue's share of a `ClusterWorker`'s settings.
struct QueuePlan {
    queue: String,
    settings: Settings,
    shutdown: CancellationToken,
}

impl QueuePlan {
    fn worker(&self, client: Client) -> Worker {
        Worker::with_settings(
            client,
            self.queue.clone(),
            self.settings.clone(),
            self.shutdown.clone(),
        )
    }
}

/// One queue's worker: waits for its node, runs, and subscribes again after a
/// failure a reconnect fixes (the node was down when it subscribed).
async fn run_queue<F, Fut, R>(
    node: Arc<Node>,
    plan: QueuePlan,
    handler: F,
    cluster_stop: CancellationToken,
) -> Result<WorkerReport>
where
    F: Fn(Task) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = std::result::Result<R, TaskError>> + Send + 'static,
    R: HandlerOutput,
{
    let mut total = WorkerReport::default();
    let stop = plan.shutdown.clone();
    loop {
        let either = tokio::select! {
            _ = cluster_stop.cancelled() => None,
            c = node.wait_client(&stop) => c,
        };
        let Some(client) = either else {
            return Ok(total);
        };
        match plan.worker(client).run(handler.clone()).await {
            Ok(report) => {
                add(&mut total, &report);
                return Ok(total);
            }
            Err(
                e @ (ClientError::Unavailable { .. }
                | ClientError::Timeout { .. }
                | ClientError::ConnectionLost { .. }
                | ClientError::Io(_)),
            ) => {
                warn!(queue = %plan.queue, node = %node.name, error = %e, "worker could not subscribe; trying again");
                tokio::select! {
                    _ = stop.cancelled() => return Ok(total),
                    _ = tokio::time::sleep(RESUBSCRIBE_DELAY) => {}
                }
            }
            Err(e) => return Err(node.name_error(e)),
        }
    }
}

fn add(total: &mut WorkerReport, r: &WorkerReport) {
    total.acked += r.acked;
    total.retried += r.retried;
    total.dead += r.dead;
    total.returned += r.returned;
    total.settle_failed += r.settle_failed;
}
