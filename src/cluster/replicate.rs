//! The leader's side of replicating the queue state: the broker's store jobs
//! (`store::WriterHandle::submit`, through [`store::Route`]) become Raft client
//! writes, proposed in submission order; each job's completion waits, keyed by its
//! proposal number, until the state machine (`state.rs`) applies the committed entry
//! to this node's store and completes it. A job submitted to a node that is not the
//! leader is refused at once with `StoreError::NotLeader`, naming the leader.
//!
//! Not here: applying entries (`state.rs`), and what the broker does when this node
//! gains or loses the leadership (`server/lead.rs`).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;

use futures_util::stream::{FuturesUnordered, StreamExt};
use openraft::ServerState;
use parking_lot::Mutex;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use super::types::{Command, Member, NodeId, Origin, Raft};
use crate::store::{low_space_reason, Completion, Muts, Route, SpaceGuard, StoreError};

/// A completion the state machine can put around a submitter's: it completes
/// `then` (the job's own completion, on the node that proposed it) with the outcome
/// and report of the applied job, then calls `tell` with the outcome.
pub trait Applying: Completion + Sized {
    /// Wraps `then` (if any) for a job the state machine applies.
    fn applying(then: Option<Self>, tell: Box<dyn FnOnce(Result<(), StoreError>) + Send>) -> Self;
}

/// Completions of proposed jobs not yet applied, by proposal number (shared by the
/// proposer and the state machine, which takes each out when it applies its entry).
pub(crate) type Pending<C> = Arc<Mutex<HashMap<u64, C>>>;

/// What openraft's metrics say about leadership, for refusals.
type Metrics = watch::Receiver<openraft::RaftMetrics<NodeId, Member>>;

/// The `store::Route` of a cluster member: see the module documentation.
pub struct Proposer<C: Completion> {
    origin: Origin,
    /// The free space of this member's volume: a publish is refused before it is
    /// proposed while the space is below the publish reserve, as on a single node
    /// (the members apply committed publishes whatever their space).
    space: Mutex<SpaceGuard>,
    next_seq: AtomicU64,
    pending: Pending<C>,
    metrics: Metrics,
    tx: mpsc::UnboundedSender<(u64, Command)>,
}

/// Why this node does not take changes, naming the leader if one is known.
pub fn not_leader(metrics: &openraft::RaftMetrics<NodeId, Member>) -> String {
    let me = metrics.id;
    match metrics.current_leader {
        Some(leader) if leader != me => {
            let addr = metrics
                .membership_config
                .membership()
                .get_node(&leader)
                .map(|m| m.client_addr.clone())
                .unwrap_or_default();
            format!("node {me} is not the cluster's leader; the leader is node {leader} at {addr}")
        }
        Some(_) => {
            format!("node {me} was just elected leader and is not serving yet; retry shortly")
        }
        None => format!(
            "node {me} knows no leader of the cluster (an election is under way); retry shortly"
        ),
    }
}

impl<C: Completion> Proposer<C> {
    /// A proposer for node `origin.node`'s broker run `origin.run`; the receiver is
    /// for [`propose`].
    pub(crate) fn new(
        node: NodeId,
        run: u64,
        pending: Pending<C>,
        metrics: Metrics,
        space: SpaceGuard,
    ) -> (Proposer<C>, mpsc::UnboundedReceiver<(u64, Command)>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let proposer = Proposer {
            origin: Origin { node, run, seq: 0 },
            space: Mutex::new(space),
            next_seq: AtomicU64::new(1),
            pending,
            metrics,
            tx,
        };
        (proposer, rx)
    }
}

impl<C: Completion> Proposer<C> {
    /// Jobs proposed and not yet applied or refused.
    pub fn waiting(&self) -> usize {
        self.pending.lock().len()
    }
}

impl<C: Completion> Proposer<C> {
    /// A job that inserts tasks is refused while the free space is below the publish
    /// reserve (kept for settlements, purges and checkpoints, which give space back).
    fn refuse_publish(&self, muts: &Muts) -> Option<StoreError> {
        if !muts.inserts() {
            return None;
        }
        let mut space = self.space.lock();
        let free = space.short()?;
        Some(StoreError::Unavailable(low_space_reason(
            free,
            space.reserve(),
        )))
    }
}

impl<C: Completion> Route<C> for Proposer<C> {
    fn submit(&self, muts: Muts, done: Option<C>) {
        let refusal = {
            let metrics = self.metrics.borrow();
            (metrics.state != ServerState::Leader).then(|| not_leader(&metrics))
        };
        if let Some(why) = refusal {
            if let Some(done) = done {
                done.complete(Err(StoreError::NotLeader(Arc::from(why))));
            }
            return;
        }
        if let Some(short) = self.refuse_publish(&muts) {
            if let Some(done) = done {
                done.complete(Err(short));
            }
            return;
        }
        let seq = self.next_seq.fetch_add(1, Relaxed);
        if let Some(done) = done {
            self.pending.lock().insert(seq, done);
        }
        let command = Command::Mutations {
            origin: Origin { seq, ..self.origin },
            muts: muts.into_vec(),
        };
        if self.tx.send((seq, command)).is_err() {
            refuse(&self.pending, seq, StoreError::Closed);
        }
    }
}

/// Completes proposal `seq` with `error` if the state machine has not taken it.
fn refuse<C: Completion>(pending: &Pending<C>, seq: u64, error: StoreError) {
    let done = pending.lock().remove(&seq);
    if let Some(done) = done {
        done.complete(Err(error));
    }
}

/// Proposes the jobs `rx` carries to Raft in their order, and refuses those whose
/// proposal fails (this node stopped being the leader before the entry committed:
/// the outcome is unknown to the submitter). Runs until `stop`; then every job still
/// waiting is completed with `StoreError::Closed`.
pub(crate) async fn propose<C: Completion>(
    raft: Raft,
    mut rx: mpsc::UnboundedReceiver<(u64, Command)>,
    pending: Pending<C>,
    stop: CancellationToken,
) {
    let mut waiting = FuturesUnordered::new();
    loop {
        tokio::select! {
            biased;
            _ = stop.cancelled() => break,
            Some((seq, outcome)) = waiting.next() => {
                let outcome: (u64, Result<_, _>) = (seq, outcome);
                match outcome.1 {
                    // Applied: the state machine completed the job.
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) => {
                        let why = format!(
                            "this node stopped being the leader before the change was \
                             committed; its outcome is unknown ({e})"
                        );
                        refuse(&pending, seq, StoreError::NotLeader(Arc::from(why)));
                    }
                    Err(_) => refuse(&pending, seq, StoreError::Closed),
                }
            }
            next = rx.recv() => {
                let Some((seq, command)) = next else { break };
                match raft.client_write_ff(command).await {
                    Ok(answer) => waiting.push(async move { (seq, answer.await) }),
                    Err(fatal) => {
                        let why = format!("the raft node stopped: {fatal}");
                        refuse(&pending, seq, StoreError::NotLeader(Arc::from(why)));
                    }
                }
            }
        }
    }
    let left: Vec<C> = pending.lock().drain().map(|(_, done)| done).collect();
    for done in left {
        let why = "the broker stopped before the change was committed; its outcome is unknown";
        done.complete(Err(StoreError::NotLeader(Arc::from(why))));
    }
}
