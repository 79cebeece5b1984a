//! The leader's side of replicating the queue state: the broker's store jobs
//! (`store::WriterHandle::submit`, through [`store::Route`]) become Raft client
//! writes, proposed in submission order; each job's completion waits, keyed by its
//! proposal number, until the state machine (`state.rs`) applies the committed entry
//! to this node's store and completes it. Jobs are proposed together, several to an
//! entry (`Command::Jobs`): at most [`PIPELINE`] entries are in flight (proposed, not
//! yet applied), and the jobs that arrive meanwhile make the next entry, so that under
//! load the per-entry cost of consensus (openraft appends and fsyncs each client write
//! on its own) is paid once per batch, and at low load a job is proposed at once. A
//! job submitted to a node that is not the leader is refused at once with
//! `StoreError::NotLeader`, naming the leader.
//!
//! Not here: applying entries (`state.rs`), and what the broker does when this node
//! gains or loses the leadership (`server/lead.rs`).

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Instant;

use futures_util::stream::{FuturesUnordered, StreamExt};
use openraft::ServerState;
use parking_lot::Mutex;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use super::timings::Timings;
use super::types::{Command, Job, Member, NodeId, Origin, Raft};
use crate::histogram::micros;
use crate::store::{low_space_reason, Completion, Muts, Route, SpaceGuard, StoreError};

/// A completion the state machine can put around a submitter's: it completes
/// `then` (the job's own completion, on the node that proposed it) with the outcome
/// and report of the applied job, then calls `tell` with the outcome.
pub trait Applying: Completion + Sized {
    /// Wraps `then` (if any) for a job the state machine applies: durable elsewhere
    /// ([`Completion::durable_elsewhere`]: the entry is on a majority's log).
    fn applying(then: Option<Self>, tell: Signal) -> Self;

    /// A completion for an empty job that `tell`s once everything submitted before it
    /// is durable in this member's store (before the state file records an applied
    /// id, which no restart would apply again).
    fn barrier(tell: Signal) -> Self;
}

/// How a job the state machine submitted tells it its outcome: the jobs of one
/// `apply` share one [`Latch`] (no allocation per job), a barrier has a channel.
pub enum Signal {
    /// A job of entry `LogId`, counted by the latch.
    Job(Arc<Latch>, super::types::LogId),
    /// A barrier's own channel.
    Once(tokio::sync::oneshot::Sender<Result<(), StoreError>>),
}

impl Signal {
    /// Reports the job's outcome.
    pub fn tell(self, result: Result<(), StoreError>) {
        match self {
            Signal::Job(latch, log_id) => latch.done(log_id, result),
            Signal::Once(tx) => {
                let _ = tx.send(result);
            }
        }
    }
}

/// Counts the jobs of one `apply` still unfinished and keeps the first failure (jobs
/// complete in submission order). Starts at one, the waiter's own count, so that it
/// cannot reach zero while jobs are still being submitted.
pub struct Latch {
    left: std::sync::atomic::AtomicUsize,
    failed: Mutex<Option<(super::types::LogId, StoreError)>>,
    all_done: Mutex<Option<tokio::sync::oneshot::Sender<()>>>,
}

impl Latch {
    /// A latch and what its waiter awaits.
    pub(super) fn new() -> (Arc<Latch>, tokio::sync::oneshot::Receiver<()>) {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let latch = Latch {
            left: std::sync::atomic::AtomicUsize::new(1),
            failed: Mutex::new(None),
            all_done: Mutex::new(Some(tx)),
        };
        (Arc::new(latch), rx)
    }

    /// One more job to wait for, before it is submitted.
    pub(super) fn expect(self: &Arc<Latch>, log_id: super::types::LogId) -> Signal {
        let before = self.left.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        debug_assert!(before >= 1, "a job expected after the waiter let go");
        Signal::Job(self.clone(), log_id)
    }

    fn done(&self, log_id: super::types::LogId, result: Result<(), StoreError>) {
        if let Err(e) = result {
            self.failed.lock().get_or_insert((log_id, e));
        }
        self.count_down();
    }

    /// The waiter lets go of its own count (once every job is submitted).
    pub(super) fn release(&self) {
        self.count_down();
    }

    fn count_down(&self) {
        let before = self.left.fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
        debug_assert!(before >= 1, "counted down below zero");
        if before == 1 {
            if let Some(tx) = self.all_done.lock().take() {
                let _ = tx.send(());
            }
        }
    }

    /// The first failure, once every job finished.
    pub(super) fn failure(&self) -> Option<(super::types::LogId, StoreError)> {
        debug_assert_eq!(self.left.load(std::sync::atomic::Ordering::Acquire), 0);
        self.failed.lock().take()
    }
}

/// Entries proposed and not yet applied (or refused) before the proposer waits and
/// lets the next jobs gather into one entry. Measured on loopback (BENCHMARKS.md,
/// three members on two cores): 1, 2 and 4 gave the same throughput within noise;
/// deeper pipelines make smaller entries, whose fixed cost (openraft appends and
/// syncs each on its own, on every member) is what a busy cluster runs out of.
pub const PIPELINE: usize = 2;

/// Most mutations in one entry (a job is never split: one entry may exceed this by
/// its last job).
const ENTRY_MUTATIONS: usize = 4_096;

/// Most task payload bytes in one entry (as [`ENTRY_MUTATIONS`]); well below the
/// cluster port's frame limit, so that an AppendEntries of several entries fits.
const ENTRY_PAYLOAD_BYTES: usize = 1024 * 1024;

/// What the proposer hands the task that proposes (`propose`).
pub(crate) enum Proposal<C> {
    /// A job: its proposal number, content and submitter's completion. The
    /// completion joins the pending map when its job is gathered into an entry (one
    /// lock for the entry's jobs), not at submission: the map's lock, which the state
    /// machine takes too, was contended by every submitting connection.
    Job(u64, Job, Option<C>),
    /// Answered once every job sent before it is in the pending map or refused.
    Flush(tokio::sync::oneshot::Sender<()>),
}

/// Completions of proposed jobs not yet applied, by proposal number (shared by the
/// proposing task, which puts an entry's in when it gathers its jobs, and the state
/// machine, which takes them out when it applies the entry; one lock each per entry).
pub(crate) type Pending<C> = Arc<Mutex<crate::model::IdMap<u64, C>>>;

/// What openraft's metrics say about leadership, for refusals.
type Metrics = watch::Receiver<super::types::RaftMetrics>;

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
    tx: mpsc::UnboundedSender<Proposal<C>>,
}

/// Why this node does not take changes, naming the leader if one is known, or the
/// members if this node is not one of them (removed, or not added yet; listed without
/// " at ", which the clients read as the leader's address).
pub fn not_leader(metrics: &super::types::RaftMetrics) -> String {
    let me = metrics.id;
    let membership = metrics.membership_config.membership();
    // (A cluster not formed yet has no members at all: nobody is one yet.)
    if membership.get_node(&me).is_none() && membership.nodes().next().is_some() {
        let members = membership
            .nodes()
            .map(|(id, m)| format!("node {id} ({})", m.client_addr))
            .collect::<Vec<_>>()
            .join(", ");
        return format!(
            "node {me} is not a member of the cluster (removed, or not added yet); its members: {members}"
        );
    }
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
    ) -> (Proposer<C>, mpsc::UnboundedReceiver<Proposal<C>>) {
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
    /// Jobs proposed and not yet applied or refused: once [`flushed`](Self::flushed)
    /// has answered, every job submitted before it.
    pub fn waiting(&self) -> usize {
        self.pending.lock().len()
    }

    /// Waits until every job submitted so far is proposed (counted by
    /// [`waiting`](Self::waiting)) or refused; at once if the proposing task ended.
    pub async fn flushed(&self) {
        let (tx, rx) = tokio::sync::oneshot::channel();
        if self.tx.send(Proposal::Flush(tx)).is_ok() {
            let _ = rx.await;
        }
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
        let job = Job::new(Origin { seq, ..self.origin }, muts.into_vec().into());
        if let Err(mpsc::error::SendError(Proposal::Job(_, _, Some(done)))) =
            self.tx.send(Proposal::Job(seq, job, done))
        {
            done.complete(Err(StoreError::Closed));
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

/// Takes `first` and the jobs queued behind it, up to the size of one entry, and puts
/// their completions in the pending map (before the entry is proposed: the state
/// machine looks for them when it applies it). `None` when only flush requests came
/// (each answered once the jobs before it are in the map).
fn gather<C: Completion>(
    first: Proposal<C>,
    rx: &mut mpsc::UnboundedReceiver<Proposal<C>>,
    pending: &Pending<C>,
) -> Option<(Vec<u64>, Command)> {
    let (mut mutations, mut bytes) = (0, 0);
    let mut seqs = Vec::new();
    let mut jobs = Vec::new();
    let mut dones = Vec::new();
    let mut flushes = Vec::new();
    let mut next = Some(first);
    while let Some(proposal) = next.take() {
        match proposal {
            Proposal::Job(seq, job, done) => {
                mutations += job.muts.len();
                bytes += job.payload_bytes();
                seqs.push(seq);
                jobs.push(job);
                dones.extend(done.map(|done| (seq, done)));
            }
            Proposal::Flush(tx) => flushes.push(tx),
        }
        if mutations < ENTRY_MUTATIONS && bytes < ENTRY_PAYLOAD_BYTES {
            next = rx.try_recv().ok();
        }
    }
    debug_assert_eq!(seqs.len(), jobs.len());
    debug_assert!(dones.len() <= jobs.len());
    if !dones.is_empty() {
        pending.lock().extend(dones);
    }
    for tx in flushes {
        let _ = tx.send(());
    }
    (!jobs.is_empty()).then(|| (seqs, Command::Jobs(jobs.into())))
}

/// Why a proposal failed after it was made: this node stopped leading before its entry
/// committed. Names the new leader as `not_leader` does (" at ADDR", which the clients
/// follow) when openraft knows it.
pub(super) fn leadership_lost(e: &openraft::error::ClientWriteError<NodeId, Member>) -> String {
    use openraft::error::ClientWriteError;
    const UNKNOWN: &str =
        "this node stopped being the leader before the change was committed; its outcome is unknown";
    match e {
        ClientWriteError::ForwardToLeader(f) => match (f.leader_id, &f.leader_node) {
            (Some(id), Some(node)) => {
                format!("{UNKNOWN}; the leader is node {id} at {}", node.client_addr)
            }
            (Some(id), None) => format!("{UNKNOWN}; the leader is node {id}"),
            _ => format!("{UNKNOWN}; no leader is known yet"),
        },
        other => format!("{UNKNOWN} ({other})"),
    }
}

/// Proposes the jobs `rx` carries to Raft in their order, several to an entry (see
/// the module documentation), and refuses those whose proposal fails (this node
/// stopped being the leader before the entry committed: the outcome is unknown to
/// the submitter). Runs until `stop`; then every job still waiting is completed with
/// an outcome-unknown refusal.
pub(crate) async fn propose<C: Completion>(
    raft: Raft,
    mut rx: mpsc::UnboundedReceiver<Proposal<C>>,
    pending: Pending<C>,
    timings: Arc<Timings>,
    stop: CancellationToken,
) {
    let mut waiting = FuturesUnordered::new();
    loop {
        tokio::select! {
            biased;
            _ = stop.cancelled() => break,
            Some((seqs, outcome, proposed)) = waiting.next() => {
                let outcome: (Vec<u64>, Result<_, _>) = (seqs, outcome);
                match outcome.1 {
                    // Applied: the state machine completed the jobs.
                    Ok(Ok(_)) => timings.proposal_micros.observe(micros(Instant::elapsed(&proposed))),
                    Ok(Err(e)) => {
                        let why: Arc<str> = Arc::from(leadership_lost(&e));
                        for seq in outcome.0 {
                            refuse(&pending, seq, StoreError::NotLeader(why.clone()));
                        }
                    }
                    // The raft node stopped: the entry may be on a majority's log.
                    Err(_) => {
                        let why: Arc<str> = Arc::from(
                            "the raft node stopped before the change was known to be \
                             committed; its outcome is unknown",
                        );
                        for seq in outcome.0 {
                            refuse(&pending, seq, StoreError::NotLeader(why.clone()));
                        }
                    }
                }
            }
            next = rx.recv(), if waiting.len() < PIPELINE => {
                let Some(first) = next else { break };
                let Some((seqs, command)) = gather(first, &mut rx, &pending) else {
                    continue;
                };
                timings.proposal_jobs.observe(seqs.len() as u64);
                let proposed = Instant::now();
                match raft.client_write_ff(command).await {
                    Ok(answer) => waiting.push(async move { (seqs, answer.await, proposed) }),
                    Err(fatal) => {
                        let why: Arc<str> = Arc::from(format!("the raft node stopped: {fatal}"));
                        for seq in seqs {
                            refuse(&pending, seq, StoreError::NotLeader(why.clone()));
                        }
                    }
                }
            }
        }
    }
    // Jobs not gathered yet are refused with the others (and flush requests answered).
    rx.close();
    let mut left: Vec<C> = pending.lock().drain().map(|(_, done)| done).collect();
    while let Ok(proposal) = rx.try_recv() {
        if let Proposal::Job(_, _, Some(done)) = proposal {
            left.push(done);
        }
    }
    for done in left {
        let why = "the broker stopped before the change was committed; its outcome is unknown";
        done.complete(Err(StoreError::NotLeader(Arc::from(why))));
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;

    use super::super::tests::Tell;
    use super::*;
    use crate::model::Mutation;

    fn proposer(
        dir: &std::path::Path,
    ) -> (Proposer<Tell>, mpsc::UnboundedReceiver<Proposal<Tell>>) {
        proposer_with(dir, Pending::default())
    }

    /// A proposer that believes it leads, its completions pending in `pending`.
    fn proposer_with(
        dir: &std::path::Path,
        pending: Pending<Tell>,
    ) -> (Proposer<Tell>, mpsc::UnboundedReceiver<Proposal<Tell>>) {
        let mut metrics = openraft::RaftMetrics::new_initial(1);
        metrics.state = ServerState::Leader;
        let (_tx, rx) = watch::channel(metrics);
        let space = SpaceGuard::new(dir.to_path_buf(), 0);
        Proposer::new(1, 7, pending, rx, space)
    }

    /// A completion that counts its outcomes: (successes, refusals as `Closed`).
    fn counted(outcomes: &Arc<[AtomicUsize; 2]>) -> Tell {
        let outcomes = outcomes.clone();
        Tell(Box::new(move |result| {
            let i = usize::from(matches!(result, Err(StoreError::Closed)));
            outcomes[i].fetch_add(1, Relaxed);
        }))
    }

    fn job(id: u64) -> Muts {
        Muts::One(Mutation::Remove { id })
    }

    /// A job's completion waits in the pending map (where the state machine finds it)
    /// once the job is gathered into an entry, before the entry is proposed; a flush
    /// request sent after the jobs is answered then, not before.
    #[tokio::test]
    async fn jobs_are_pending_once_gathered_and_a_flush_answers_after_them() {
        let dir = tempfile::tempdir().unwrap();
        let (proposer, mut rx) = proposer(dir.path());
        let outcomes = Arc::new([AtomicUsize::new(0), AtomicUsize::new(0)]);
        for id in 1..=3 {
            proposer.submit(job(id), Some(counted(&outcomes)));
        }
        proposer.submit(job(4), None);
        let proposer = Arc::new(proposer);
        let flushing = tokio::spawn({
            let proposer = proposer.clone();
            async move { proposer.flushed().await }
        });
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        assert!(
            !flushing.is_finished(),
            "flushed before its jobs were gathered"
        );
        assert_eq!(proposer.waiting(), 0, "pending before gathered");

        let first = rx.recv().await.expect("a proposal");
        let (seqs, command) = gather(first, &mut rx, &proposer.pending).expect("jobs");
        assert_eq!(seqs, vec![1, 2, 3, 4]);
        let Command::Jobs(jobs) = command else {
            panic!("the proposer makes jobs")
        };
        assert_eq!(jobs.len(), 4);
        assert!(jobs
            .iter()
            .zip(&seqs)
            .all(|(j, &s)| j.origin.seq == s && j.origin.run == 7));
        assert_eq!(proposer.waiting(), 3, "the three with a completion");
        tokio::time::timeout(std::time::Duration::from_secs(5), flushing)
            .await
            .expect("the flush is answered once its jobs are pending")
            .unwrap();
        assert_eq!(outcomes[0].load(Relaxed) + outcomes[1].load(Relaxed), 0);
    }

    /// Jobs still in the channel when the proposing task stops (never gathered into
    /// an entry, so not in the pending map) are refused like the pending ones, with
    /// an outcome-unknown `NOT_LEADER`: not dropped, which would answer `Closed`.
    /// (Negative control: without the channel's drain in `propose`, they are
    /// answered `Closed` and this fails.)
    #[tokio::test]
    async fn jobs_left_in_the_channel_at_stop_are_refused_as_outcome_unknown() {
        let dir = tempfile::tempdir().unwrap();
        let pending = Pending::default();
        let (store, writer, machine) =
            super::super::tests::open_machine(dir.path(), pending.clone());
        let log = super::super::log::LogStore::open(&dir.path().join(super::super::RAFT_DIR))
            .expect("log opens");
        let network = super::super::net::Network {
            max_frame: 1 << 20,
            token: bytes::Bytes::new(),
            tls: None,
            encoded: log.encoded(),
            heard: log.heard(),
        };
        let config = openraft::Config {
            cluster_name: "test".to_owned(),
            ..Default::default()
        };
        let raft = Raft::new(
            1,
            Arc::new(config.validate().unwrap()),
            network,
            log,
            machine,
        )
        .await
        .expect("raft starts");
        let (proposer, rx) = proposer_with(dir.path(), pending.clone());
        let unknown = Arc::new(AtomicUsize::new(0));
        let others = Arc::new(AtomicUsize::new(0));
        for id in 1..=3 {
            let (unknown, others) = (unknown.clone(), others.clone());
            proposer.submit(
                job(id),
                Some(Tell(Box::new(move |result| match result {
                    Err(StoreError::NotLeader(why)) if why.contains("outcome is unknown") => {
                        unknown.fetch_add(1, Relaxed);
                    }
                    _ => {
                        others.fetch_add(1, Relaxed);
                    }
                }))),
            );
        }
        assert_eq!(
            pending.lock().len(),
            0,
            "not gathered yet: in the channel only"
        );
        let stop = CancellationToken::new();
        stop.cancel();
        let timings = Arc::new(Timings::default());
        tokio::time::timeout(
            std::time::Duration::from_secs(5),
            propose(raft.clone(), rx, pending.clone(), timings, stop),
        )
        .await
        .expect("a stopped proposing task ends at once");
        assert_eq!(unknown.load(Relaxed), 3, "each refused as outcome unknown");
        assert_eq!(others.load(Relaxed), 0);
        raft.shutdown().await.expect("raft stops");
        drop(raft);
        writer.shutdown().expect("writer stops");
        drop(store);
    }

    /// With the proposing task gone, a job is refused at once with `Closed` and a
    /// flush returns at once.
    #[tokio::test]
    async fn a_proposer_whose_task_ended_refuses_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let (proposer, rx) = proposer(dir.path());
        drop(rx);
        let outcomes = Arc::new([AtomicUsize::new(0), AtomicUsize::new(0)]);
        proposer.submit(job(1), Some(counted(&outcomes)));
        assert_eq!(outcomes[1].load(Relaxed), 1, "refused with Closed");
        tokio::time::timeout(std::time::Duration::from_secs(5), proposer.flushed())
            .await
            .expect("no task to wait for");
        assert_eq!(proposer.waiting(), 0);
    }
}
