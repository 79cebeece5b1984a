//! The retention sweep's driver: a task that asks the store writer, once per
//! `sweep_interval` and only when the expiry index holds something due, to remove what
//! expired (succeeded and dead records past the queue's result TTL, idempotency keys
//! past their window), at most [`SWEEP_LIMIT`] index entries per job. When a job stops
//! at its limit the next one follows after a short pause instead of a whole interval,
//! so a backlog drains without ever handing the writer one unbounded job. The removals
//! themselves are the writer's (`store/writer/retention.rs`). On a cluster member only
//! the leader's sweep is accepted (it is replicated like any change); a follower's is
//! refused quietly.

use std::time::Duration;

use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use super::clock::now_ms;
use super::done::{Done, StoreWriter};
use super::msg::{HubCmd, HubTx};
use crate::model::Mutation;
use crate::store::{Muts, Store, StoreError};

/// Most expiry-index entries one sweep job examines (each removes at most one task or
/// one idempotency key).
pub(crate) const SWEEP_LIMIT: u32 = 1_000;
/// Pause between two sweep jobs while a backlog drains.
const BACKLOG_PAUSE: Duration = Duration::from_millis(10);

/// The running sweep task.
pub(crate) struct Sweeper {
    stop: CancellationToken,
    task: JoinHandle<()>,
}

impl Sweeper {
    pub(crate) fn start(
        store: Store,
        writer: StoreWriter,
        hub: HubTx,
        interval: Duration,
    ) -> Sweeper {
        let stop = CancellationToken::new();
        let task = tokio::spawn(run(store, writer, hub, interval, stop.clone()));
        Sweeper { stop, task }
    }

    /// Stops the task and waits for it (a sweep job in flight is not waited for).
    pub(crate) async fn stop(self) {
        self.stop.cancel();
        if let Err(e) = self.task.await {
            warn!(error = %e, "sweep task failed");
        }
    }
}

async fn run(
    store: Store,
    writer: StoreWriter,
    hub: HubTx,
    interval: Duration,
    stop: CancellationToken,
) {
    let mut pause = interval;
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(pause) => {}
        }
        let now = now_ms();
        // Nothing due: no job (on a cluster, no Raft entry on every member). A read
        // error sweeps anyway, so that the writer reports it.
        if matches!(store.expiry_due(now), Ok(false)) {
            pause = interval;
            continue;
        }
        let (tx, rx) = oneshot::channel();
        let sweep = Mutation::Sweep {
            now,
            limit: SWEEP_LIMIT,
        };
        writer.submit(Muts::One(sweep), Some(Done::Swept { tx }));
        // Not waited for past the stop: on a cluster leader that lost its majority the
        // job never commits (the writer or the Raft node completes it later, unread).
        let outcome = tokio::select! {
            _ = stop.cancelled() => return,
            outcome = rx => outcome,
        };
        pause = match outcome {
            Ok(Ok(stats)) => {
                if stats.examined > 0 {
                    debug!(
                        examined = stats.examined,
                        tasks = stats.removed_tasks,
                        keys = stats.removed_keys,
                        more = stats.more,
                        "retention sweep"
                    );
                }
                if !stats.removed_dead.is_empty() {
                    let _ = hub.send(HubCmd::DeadSwept(stats.removed_dead));
                }
                if stats.more {
                    BACKLOG_PAUSE
                } else {
                    interval
                }
            }
            // A cluster member that is not the leader: the leader sweeps for everyone
            // (its sweep is replicated); this one tries again after the interval.
            Ok(Err(StoreError::NotLeader(_))) => interval,
            Ok(Err(e)) => {
                warn!(error = %e, "retention sweep failed; retrying after the interval");
                interval
            }
            // The writer is gone: the broker is stopping.
            Err(_) => return,
        };
    }
}
