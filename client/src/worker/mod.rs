//! `Worker`: runs an async handler per task with bounded concurrency, extends leases
//! while handlers run, settles by the handler's result, and drains gracefully on
//! shutdown. `TaskError` and `HandlerOutput` are the handler's vocabulary. Everything
//! here is built on the public `Subscription`/`Delivery` API plus the internal `Lease`.

use std::fmt;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::sync::Semaphore;
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::client::Client;
use crate::delivery::{log_settle_error, Lease, Task};
use crate::error::{ClientError, Result};
use crate::publish::unix_ms;
use crate::subscription::Subscription;

mod handler;

use self::handler::Action;
pub use self::handler::{HandlerOutput, TaskError};

/// Default number of handlers running at once.
pub const DEFAULT_CONCURRENCY: usize = 8;
/// Default time running handlers get to finish after shutdown is requested.
pub const DEFAULT_GRACE_PERIOD: Duration = Duration::from_secs(30);

/// The smallest lease extension step a worker uses (an extension every third of it).
const MIN_LEASE_EXTENSION: Duration = Duration::from_millis(3);

/// The tuning a [`Worker`] runs with, set through its builder (or a
/// [`ClusterWorker`](crate::ClusterWorker)'s, which hands it to each queue's worker).
#[derive(Debug, Clone)]
pub(crate) struct Settings {
    pub(crate) concurrency: usize,
    pub(crate) prefetch: Option<u32>,
    pub(crate) grace_period: Duration,
    pub(crate) lease_extension: Option<Duration>,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            concurrency: DEFAULT_CONCURRENCY,
            prefetch: None,
            grace_period: DEFAULT_GRACE_PERIOD,
            lease_extension: None,
        }
    }
}

impl Settings {
    pub(crate) fn set_concurrency(&mut self, n: usize) {
        self.concurrency = n.max(1);
    }

    pub(crate) fn set_lease_extension(&mut self, by: Duration) {
        self.lease_extension = Some(by.max(MIN_LEASE_EXTENSION));
    }
}
/// The builder methods [`Worker`] and [`ClusterWorker`](crate::ClusterWorker) share,
/// written once: both hold their tuning in `settings: Settings` and their shutdown
/// trigger in `shutdown: CancellationToken`. (A `ClusterWorker` hands its settings to
/// each queue's `Worker`; its concurrency and prefetch are per queue.)
macro_rules! settings_builder {
    () => {
        /// Handlers running at once (at least 1; default 8; for a `ClusterWorker`, per queue).
        pub fn concurrency(mut self, n: usize) -> Self {
            self.settings.set_concurrency(n);
            self
        }

        /// The subscription's prefetch (default: the concurrency, capped at the broker's
        /// `max_prefetch`). More than the concurrency lets tasks wait locally with their
        /// lease running, un-extended.
        pub fn prefetch(mut self, n: u32) -> Self {
            self.settings.prefetch = Some(n);
            self
        }

        /// Time running handlers get to finish once shutdown is requested (default 30 s).
        pub fn grace_period(mut self, d: Duration) -> Self {
            self.settings.grace_period = d;
            self
        }

        /// How far each automatic extension pushes the lease, and so (a third of it) how
        /// often it is extended.
        ///
        /// By default it is the lease length observed on each delivery (its deadline minus
        /// the local time at receipt), which assumes the client's and the broker's clocks
        /// agree to within a fraction of the lease. Set it to the queue's lease to rely on
        /// no clock at all.
        pub fn lease_extension(mut self, by: Duration) -> Self {
            self.settings.set_lease_extension(by);
            self
        }

        /// Use `token` as the shutdown trigger: cancelling it starts the graceful shutdown
        /// (of every queue, for a `ClusterWorker`).
        pub fn shutdown_token(mut self, token: CancellationToken) -> Self {
            self.shutdown = token;
            self
        }

        /// The token that triggers this worker's graceful shutdown when cancelled.
        pub fn shutdown_handle(&self) -> CancellationToken {
            self.shutdown.clone()
        }
    };
}
pub(crate) use settings_builder;

/// Longest failure reason sent to the broker; longer texts are cut.
const MAX_REASON_BYTES: usize = 4096;
/// Shortest lease the auto-extension assumes (guards against clock skew making the
/// observed lease look tiny and the worker extend in a tight loop).
const MIN_ASSUMED_LEASE: Duration = Duration::from_secs(1);

/// What a worker did, returned when it stops.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WorkerReport {
    /// Tasks acked after their handler returned `Ok`.
    pub acked: u64,
    /// Tasks nacked for a retry (handler `Err` or panic).
    pub retried: u64,
    /// Tasks sent to the dead set by [`TaskError::dead`].
    pub dead: u64,
    /// Tasks returned to the broker unfinished at shutdown.
    pub returned: u64,
    /// Settles that failed (lease lost, connection lost, timeout): these tasks are
    /// redelivered by the broker.
    pub settle_failed: u64,
}

#[derive(Default)]
struct Counters {
    acked: AtomicU64,
    retried: AtomicU64,
    dead: AtomicU64,
    returned: AtomicU64,
    settle_failed: AtomicU64,
}

impl Counters {
    fn report(&self) -> WorkerReport {
        WorkerReport {
            acked: self.acked.load(Ordering::Relaxed),
            retried: self.retried.load(Ordering::Relaxed),
            dead: self.dead.load(Ordering::Relaxed),
            returned: self.returned.load(Ordering::Relaxed),
            settle_failed: self.settle_failed.load(Ordering::Relaxed),
        }
    }

    fn count(&self, counter: &AtomicU64, settled: Result<()>, op: &str, task: u64) {
        match settled {
            Ok(()) => {
                counter.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => {
                log_settle_error(op, task, &e);
                self.settle_failed.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

/// Runs a handler for every task of a queue.
///
/// - At most [`concurrency`](Worker::concurrency) handlers run at once; the
///   subscription's prefetch defaults to the same number, so tasks do not wait in a
///   local buffer while their lease runs.
/// - While a handler runs its lease is extended every third of the lease.
/// - `Ok` acks (with the handler's result payload, see [`HandlerOutput`]); `Err` nacks
///   with the error's text ([`TaskError`] picks retry, retry-after or dead); a panic
///   nacks with the panic message.
/// - Shutdown (the [`shutdown_token`](Worker::shutdown_token) is cancelled, or the
///   future given to [`run_until`](Worker::run_until) resolves): stop taking tasks and
///   return buffered ones, wait for running handlers up to the
///   [`grace_period`](Worker::grace_period), then abort the rest and return their tasks
///   to the broker for redelivery.
///
/// ```no_run
/// # async fn demo() -> Result<(), squall_client::ClientError> {
/// use squall_client::{Client, Task, TaskError, Worker};
///
/// let client = Client::connect("127.0.0.1:7600").await?;
/// let report = Worker::new(client, "emails")
///     .concurrency(16)
///     .run_until(
///         |task: Task| async move {
///             let text = std::str::from_utf8(task.payload()).map_err(TaskError::dead)?;
///             println!("sending {text}");
///             Ok::<_, TaskError>(())
///         },
///         tokio::signal::ctrl_c(),
///     )
///     .await?;
/// println!("acked {} tasks", report.acked);
/// # Ok(()) }
/// ```
#[must_use = "a worker does nothing until .run(handler).await"]
pub struct Worker {
    client: Client,
    queue: String,
    settings: Settings,
    shutdown: CancellationToken,
    max_tasks: Option<u64>,
    stop_when: Option<StopWhen>,
}

/// A condition on what the worker did so far that ends its run.
type StopWhen = Arc<dyn Fn(&WorkerReport) -> bool + Send + Sync>;

impl fmt::Debug for Worker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Worker")
            .field("queue", &self.queue)
            .field("concurrency", &self.settings.concurrency)
            .field("prefetch", &self.settings.prefetch)
            .field("grace_period", &self.settings.grace_period)
            .finish_non_exhaustive()
    }
}

impl Worker {
    /// A worker for `queue` with the defaults (concurrency 8, grace period 30 s).
    pub fn new(client: Client, queue: impl Into<String>) -> Self {
        Self::with_settings(
            client,
            queue.into(),
            Settings::default(),
            CancellationToken::new(),
        )
    }

    /// A worker with settings made elsewhere (a `ClusterWorker`'s, for one queue).
    pub(crate) fn with_settings(
        client: Client,
        queue: String,
        settings: Settings,
        shutdown: CancellationToken,
    ) -> Self {
        Worker {
            client,
            queue,
            settings,
            shutdown,
            max_tasks: None,
            stop_when: None,
        }
    }

    /// Stops after taking `n` tasks: no delivery is taken after the `n`-th, the
    /// running handlers finish (within the grace period) and are settled, then
    /// [`run`](Self::run) returns. Deliveries still buffered go back without an
    /// attempt counted.
    pub fn max_tasks(mut self, n: u64) -> Self {
        self.max_tasks = Some(n);
        self
    }

    /// Stops once `done` says so, asked after each task is settled with what the
    /// worker did so far (for example `|r| r.acked >= 100`, or `|r| r.dead > 0`). The
    /// stop is graceful, as for [`max_tasks`](Self::max_tasks); handlers already
    /// running when it becomes true still finish, so the report may go past it.
    pub fn stop_when(
        mut self,
        done: impl Fn(&WorkerReport) -> bool + Send + Sync + 'static,
    ) -> Self {
        self.stop_when = Some(Arc::new(done));
        self
    }

    settings_builder!();

    /// Runs until `signal` resolves (for example `tokio::signal::ctrl_c()`), then shuts
    /// down gracefully. See [`run`](Worker::run).
    pub async fn run_until<F, Fut, R, S>(self, handler: F, signal: S) -> Result<WorkerReport>
    where
        F: Fn(Task) -> Fut + Send + Sync + 'static,
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

    /// Runs the handler for every task until shutdown is requested, then drains
    /// gracefully and returns what it did.
    ///
    /// Returns `Err` if subscribing fails or the subscription ends for good (the client
    /// was closed, or reconnecting gave up); running handlers are drained the same way
    /// first.
    pub async fn run<F, Fut, R>(self, handler: F) -> Result<WorkerReport>
    where
        F: Fn(Task) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = std::result::Result<R, TaskError>> + Send + 'static,
        R: HandlerOutput,
    {
        let prefetch = self.effective_prefetch();
        let mut sub = tokio::select! {
            sub = self.client.subscribe(self.queue.clone()).prefetch(prefetch) => sub?,
            _ = self.shutdown.cancelled() => return Ok(WorkerReport::default()),
        };
        info!(queue = %self.queue, concurrency = self.settings.concurrency, prefetch, "worker started");
        let ctx = Arc::new(DriveContext {
            handler,
            hard_stop: CancellationToken::new(),
            lease_extension: self.settings.lease_extension,
            counters: Counters::default(),
            stop_when: self.stop_when.clone(),
            stopped: CancellationToken::new(),
        });
        let slots = Arc::new(Semaphore::new(self.settings.concurrency));
        let mut running = JoinSet::new();
        let ended = self.dispatch(&mut sub, &ctx, &slots, &mut running).await;
        self.drain(sub, &ctx, &mut running).await;
        let report = ctx.counters.report();
        info!(queue = %self.queue, ?report, "worker stopped");
        match ended {
            Some(err) => Err(err),
            None => Ok(report),
        }
    }

    fn effective_prefetch(&self) -> u32 {
        let p = self.configured_prefetch();
        // Never hold more than will be taken.
        match self.max_tasks {
            Some(n) => p.min(u32::try_from(n.max(1)).unwrap_or(u32::MAX)),
            None => p,
        }
    }

    fn configured_prefetch(&self) -> u32 {
        if let Some(p) = self.settings.prefetch {
            return p;
        }
        let wanted = u32::try_from(self.settings.concurrency).unwrap_or(u32::MAX);
        match self.client.server_info().limits.max_prefetch {
            0 => wanted,
            max => wanted.min(max),
        }
    }

    /// Takes deliveries while a handler slot is free, until shutdown or the end of the
    /// subscription (`Some(err)` if it ended without a shutdown request).
    async fn dispatch<F, Fut, R>(
        &self,
        sub: &mut Subscription,
        ctx: &Arc<DriveContext<F>>,
        slots: &Arc<Semaphore>,
        running: &mut JoinSet<()>,
    ) -> Option<ClientError>
    where
        F: Fn(Task) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = std::result::Result<R, TaskError>> + Send + 'static,
        R: HandlerOutput,
    {
        let mut taken = 0u64;
        loop {
            if self.max_tasks.is_some_and(|n| taken >= n) {
                debug!(queue = %self.queue, taken, "worker took its max_tasks; stopping");
                return None;
            }
            let slot = tokio::select! {
                biased;
                _ = self.shutdown.cancelled() => return None,
                _ = ctx.stopped.cancelled() => return None,
                Some(done) = running.join_next(), if !running.is_empty() => {
                    log_join(done);
                    continue;
                }
                slot = slots.clone().acquire_owned() => match slot {
                    Ok(slot) => slot,
                    Err(_) => return None,
                },
            };
            let next = tokio::select! {
                biased;
                _ = self.shutdown.cancelled() => return None,
                _ = ctx.stopped.cancelled() => return None,
                next = sub.recv() => next,
            };
            match next {
                Some(Ok(delivery)) => {
                    taken += 1;
                    let ctx = ctx.clone();
                    running.spawn(async move {
                        ctx.drive(delivery).await;
                        drop(slot);
                    });
                }
                Some(Err(e)) => {
                    warn!(queue = %self.queue, error = %e, "subscription ended with an error; worker stopping");
                    return Some(e);
                }
                None => {
                    warn!(queue = %self.queue, "subscription ended (client closed); worker stopping");
                    return Some(ClientError::Closed);
                }
            }
        }
    }

    /// Graceful shutdown: stop new deliveries and return the buffered ones, give
    /// running handlers the grace period, then abort and return the rest.
    async fn drain<F>(
        &self,
        mut sub: Subscription,
        ctx: &DriveContext<F>,
        running: &mut JoinSet<()>,
    ) {
        // Buffered deliveries never reached a handler: they go back without an attempt.
        match sub.stop_and_release().await {
            Ok(n) => {
                ctx.counters.returned.fetch_add(n as u64, Ordering::Relaxed);
            }
            Err(e) => {
                debug!(queue = %self.queue, error = %e, "stopping the subscription failed; dropping it (that gives back what it buffers)");
            }
        }
        drop(sub);
        if !running.is_empty() {
            info!(queue = %self.queue, running = running.len(), grace = ?self.settings.grace_period, "waiting for running handlers");
        }
        let waited = tokio::time::timeout(self.settings.grace_period, async {
            while let Some(done) = running.join_next().await {
                log_join(done);
            }
        })
        .await;
        if waited.is_err() {
            warn!(queue = %self.queue, unfinished = running.len(), "grace period over; returning unfinished tasks to the broker");
            ctx.hard_stop.cancel();
            while let Some(done) = running.join_next().await {
                log_join(done);
            }
        }
    }
}

fn log_join(done: std::result::Result<(), tokio::task::JoinError>) {
    if let Err(e) = done {
        warn!(error = %e, "worker task failed");
    }
}

/// Aborts a spawned handler when the task driving it goes away (worker dropped).
struct AbortOnDrop<T>(JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

struct DriveContext<F> {
    handler: F,
    hard_stop: CancellationToken,
    lease_extension: Option<Duration>,
    counters: Counters,
    /// The worker's stop condition, asked after each settle.
    stop_when: Option<StopWhen>,
    /// Cancelled once `stop_when` held: the worker takes no more tasks.
    stopped: CancellationToken,
}

impl<F, Fut, R> DriveContext<F>
where
    F: Fn(Task) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = std::result::Result<R, TaskError>> + Send + 'static,
    R: HandlerOutput,
{
    /// Runs the handler for one delivery, extending its lease meanwhile, then settles.
    async fn drive(&self, delivery: crate::Delivery) {
        let (task, mut lease) = delivery.into_parts();
        let task_id = task.id();
        let extension = self
            .lease_extension
            .unwrap_or_else(|| observed_lease(task.deadline_ms(), SystemTime::now()));
        let mut next_extend =
            Instant::now() + first_extend_after(task.deadline_ms(), SystemTime::now(), extension);
        let mut extending = true;
        let mut handle = AbortOnDrop(tokio::spawn((self.handler)(task)));
        let outcome = loop {
            tokio::select! {
                biased;
                joined = &mut handle.0 => break joined,
                _ = self.hard_stop.cancelled() => {
                    handle.0.abort();
                    let returned = lease
                        .nack(Some(Duration::ZERO), false, "worker shut down before the handler finished".into())
                        .await;
                    self.counters.count(&self.counters.returned, returned, "return", task_id);
                    return;
                }
                _ = tokio::time::sleep_until(next_extend), if extending => {
                    match lease.extend(extension).await {
                        Ok(_) => {
                            debug!(task = task_id, by = ?extension, "lease extended");
                            next_extend = Instant::now() + extension / 3;
                        }
                        Err(e) => {
                            warn!(task = task_id, error = %e, "could not extend the lease; the task may be redelivered while its handler runs");
                            extending = false;
                        }
                    }
                }
            }
        };
        self.settle(lease, task_id, outcome).await;
        if let Some(done) = &self.stop_when {
            if done(&self.counters.report()) {
                self.stopped.cancel();
            }
        }
    }

    async fn settle(
        &self,
        mut lease: Lease,
        task_id: u64,
        outcome: std::result::Result<std::result::Result<R, TaskError>, tokio::task::JoinError>,
    ) {
        let c = &self.counters;
        match outcome {
            Ok(Ok(output)) => c.count(
                &c.acked,
                lease.ack(output.into_result()).await,
                "ack",
                task_id,
            ),
            Ok(Err(err)) => {
                let reason = truncate_reason(err.message);
                match err.action {
                    Action::Dead => {
                        debug!(task = task_id, reason = %reason, "handler failed for good; dead-lettering");
                        c.count(
                            &c.dead,
                            lease.nack(None, true, reason).await,
                            "fail",
                            task_id,
                        )
                    }
                    Action::Retry(delay) => {
                        debug!(task = task_id, reason = %reason, ?delay, "handler failed; retrying");
                        c.count(
                            &c.retried,
                            lease.nack(delay, false, reason).await,
                            "nack",
                            task_id,
                        )
                    }
                }
            }
            Err(join) => {
                let reason = match join.try_into_panic() {
                    Ok(panic) => format!("handler panicked: {}", panic_message(&*panic)),
                    Err(_) => "handler was cancelled".to_owned(),
                };
                warn!(task = task_id, reason = %reason, "handler did not complete");
                c.count(
                    &c.retried,
                    lease.nack(None, false, truncate_reason(reason)).await,
                    "nack",
                    task_id,
                )
            }
        }
    }
}

fn panic_message(panic: &(dyn std::any::Any + Send)) -> &str {
    if let Some(s) = panic.downcast_ref::<&'static str>() {
        s
    } else if let Some(s) = panic.downcast_ref::<String>() {
        s
    } else {
        "non-string panic payload"
    }
}

/// The lease length seen on a delivery: its deadline minus the local time, at least
/// [`MIN_ASSUMED_LEASE`].
fn observed_lease(deadline_ms: u64, now: SystemTime) -> Duration {
    let remaining = Duration::from_millis(deadline_ms.saturating_sub(unix_ms(now)));
    remaining.max(MIN_ASSUMED_LEASE)
}

/// When to extend first: after a third of what is left of the lease, and never later
/// than a third of the extension length.
fn first_extend_after(deadline_ms: u64, now: SystemTime, extension: Duration) -> Duration {
    let remaining = Duration::from_millis(deadline_ms.saturating_sub(unix_ms(now)));
    (remaining / 3).min(extension / 3)
}

fn truncate_reason(mut reason: String) -> String {
    if reason.len() > MAX_REASON_BYTES {
        let mut cut = MAX_REASON_BYTES;
        while !reason.is_char_boundary(cut) {
            cut -= 1;
        }
        reason.truncate(cut);
    }
    reason
}

#[cfg(test)]
mod tests;
