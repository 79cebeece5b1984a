//! Cluster mode: what the broker does as this node gains and loses the Raft
//! leadership. Only the leader serves clients ([`Leadership::admit`], asked at
//! Hello: a follower answers `NOT_LEADER` naming the leader). A node that becomes
//! leader waits until every entry before its term is applied to its store, rebuilds
//! the hub's engine from the store as at start-up (leases are not replicated: every
//! task leased under the old leader is ready again, its attempt counted), with lease
//! tokens carrying the term, and only then admits clients. A node that stops leading
//! closes its client connections (their leases die with them) and stops dispatching.
//! The cluster's id is replicated state: the first leader that finds none in its
//! store proposes a random one (`Mutation::ClusterId`, the first applied stays) and
//! serves only once it is applied, so every leader tells clients the same id for the
//! cluster's whole life, whatever its membership.
//!
//! Not here: proposing and applying entries (`cluster/`); a single node has none of
//! this (no watcher runs, `Shared::lead` is `None`).

use std::sync::Arc;

use openraft::ServerState;
use parking_lot::Mutex;
use tokio::sync::{oneshot, watch};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::done::Done;
use super::lease::LeaderLease;
use super::msg::{ClusterView, HubCmd, HubTx, RebuiltEngine};
use super::startup::{build_engine, engine_config};
use crate::cluster::replicate::{not_leader, Signal};
use crate::config::ServerConfig;
use crate::model::Mutation;
use crate::store::{Muts, Store, WriterHandle};

use crate::cluster::types::RaftMetrics as Metrics;

/// Whether this node serves clients now, and what a refused client is told.
pub(crate) struct Leadership {
    state: Mutex<LeadState>,
    /// Times this node saw another node become leader (`/metrics`).
    leader_changes: std::sync::atomic::AtomicU64,
}

struct LeadState {
    /// The term served and its token (cancelled when the term's leadership ends,
    /// closing every connection admitted under it; a child of the shutdown token).
    serving: Option<(u64, CancellationToken, ClusterView)>,
    /// Why a client is refused while not serving.
    refusal: String,
}

impl Leadership {
    pub(crate) fn new() -> Leadership {
        Leadership {
            state: Mutex::new(LeadState {
                serving: None,
                refusal: "this node has not joined its cluster yet; retry shortly".to_owned(),
            }),
            leader_changes: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// Times this node has seen a leader other than the one before (the first leader
    /// it learns of counts).
    pub(crate) fn leader_changes(&self) -> u64 {
        self.leader_changes
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// At Hello: the token that closes the connection when this leadership ends and
    /// what to tell the client, or why it is refused (`NOT_LEADER`).
    pub(crate) fn admit(&self) -> Result<(CancellationToken, ClusterView), String> {
        let state = self.state.lock();
        match &state.serving {
            Some((_, token, view)) => Ok((token.clone(), view.clone())),
            None => Err(state.refusal.clone()),
        }
    }

    /// The term this node serves, if any.
    fn serving_term(&self) -> Option<u64> {
        self.state.lock().serving.as_ref().map(|(term, _, _)| *term)
    }

    fn serve(&self, term: u64, token: CancellationToken, view: ClusterView) {
        self.state.lock().serving = Some((term, token, view));
    }

    /// Stops serving: connections admitted under the term are closed.
    fn step_down(&self, refusal: String) {
        let ended = {
            let mut state = self.state.lock();
            state.refusal = refusal;
            state.serving.take()
        };
        if let Some((_, token, _)) = ended {
            token.cancel();
        }
    }

    /// The members changed while serving the same term (`add-node`, `remove-node`).
    fn update_view(&self, view: ClusterView) {
        if let Some((_, _, served)) = &mut self.state.lock().serving {
            *served = view;
        }
    }

    fn set_refusal(&self, refusal: String) {
        self.state.lock().refusal = refusal;
    }
}

/// The longest a change of openraft's metrics waits before the watcher takes it: how
/// late a leadership is noticed (against elections of 250–500 ms) and how often the
/// leader lease is renewed at most (against heartbeats every 50 ms and a lease of half
/// the shortest election timeout; the lease is counted from the quorum's last
/// acknowledgement either way, so a later renewal only shortens it).
pub(crate) const LOOK_GAP: std::time::Duration = std::time::Duration::from_millis(2);

/// What the watcher needs.
pub(crate) struct LeadWatch {
    pub(crate) metrics: watch::Receiver<Metrics>,
    pub(crate) leadership: Arc<Leadership>,
    /// Renewed from the metrics while this node leads, at most every [`LOOK_GAP`]
    /// (`lease.rs`).
    pub(crate) lease: Arc<LeaderLease>,
    pub(crate) store: Store,
    /// The routed writer handle (through Raft): how the first leader sets the id.
    pub(crate) writer: WriterHandle<Done>,
    /// The cluster's id once read from the store (it never changes).
    pub(crate) cluster_id: Option<String>,
    pub(crate) hub: HubTx,
    pub(crate) config: ServerConfig,
    /// The connections' shutdown token: each term's token is its child.
    pub(crate) conn_cancel: CancellationToken,
    /// The engine's delivery window (the connections' writer halves decide it).
    pub(crate) delivery_window: u32,
}

/// The term this node leads with every earlier entry applied, if it does.
fn ready_term(m: &Metrics) -> Option<u64> {
    let applied_term = m.last_applied.map(|l| l.leader_id.term);
    (m.state == ServerState::Leader && applied_term == Some(m.current_term))
        .then_some(m.current_term)
}

/// Whether every entry of this node's log is applied. A leader starts serving only
/// then: being leader of a term whose entry is applied does not imply it when the
/// node was restarted as leader of its old term (openraft restores its own committed
/// vote and appends no new entry), with committed entries of that term not yet
/// applied to its store. Their tasks would reach the store after the engine was
/// built from it, never the engine (found by `tests/replication_power.rs`). While it
/// serves, its log runs ahead of its applied entries (that is the proposals' path).
fn caught_up(m: &Metrics) -> bool {
    let applied = m.last_applied.map(|l| l.index);
    m.last_log_index.is_none_or(|last| applied >= Some(last))
}

fn view_of(m: &Metrics, cluster_id: String) -> ClusterView {
    let membership = &m.membership_config;
    ClusterView {
        cluster_id,
        leader: m.id,
        members: membership
            .membership()
            .nodes()
            .map(|(id, member)| (*id, member.client_addr.clone()))
            .collect(),
    }
}

/// The leader lease as `m` tells it: held while this node leads and a quorum
/// acknowledged a heartbeat lately (always when it is the only voter).
fn renew_lease(lease: &LeaderLease, m: &Metrics) {
    if m.state != ServerState::Leader {
        return lease.lapse();
    }
    let mut voters = m.membership_config.membership().voter_ids();
    let alone = voters.next() == Some(m.id) && voters.next().is_none();
    match m.millis_since_quorum_ack {
        _ if alone => lease.hold_alone(),
        Some(ms) => lease.renew(std::time::Duration::from_millis(ms)),
        None => lease.lapse(),
    }
}

impl LeadWatch {
    /// Follows openraft's metrics until `stop`.
    pub(crate) async fn run(mut self, stop: CancellationToken) {
        let mut last_leader = None;
        loop {
            let (ready, caught_up, refusal, leader) = {
                let m = self.metrics.borrow_and_update();
                renew_lease(&self.lease, &m);
                (
                    ready_term(&m),
                    caught_up(&m),
                    not_leader(&m),
                    m.current_leader,
                )
            };
            if leader.is_some() && leader != last_leader {
                self.leadership
                    .leader_changes
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                last_leader = leader;
            }
            let serving = self.leadership.serving_term();
            match (serving, ready) {
                (Some(s), Some(r)) if s == r => {
                    if let Some(id) = &self.cluster_id {
                        let view = view_of(&self.metrics.borrow(), id.clone());
                        self.leadership.update_view(view);
                    }
                }
                (_, Some(term)) => {
                    if serving.is_some() {
                        self.follow(refusal.clone());
                    }
                    if caught_up {
                        self.lead(term).await;
                    } else {
                        self.leadership.set_refusal(refusal);
                    }
                }
                (Some(_), None) => self.follow(refusal),
                (None, None) => self.leadership.set_refusal(refusal),
            }
            // openraft sends its metrics on every turn of its loop, thousands of times a
            // second under load: looking at each woke this task (and the core, to wake
            // it) once per turn. A change is taken at most LOOK_GAP after it was sent.
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = tokio::time::sleep(LOOK_GAP) => {}
            }
            tokio::select! {
                _ = stop.cancelled() => break,
                changed = self.metrics.changed() => if changed.is_err() { break },
            }
        }
        self.leadership
            .step_down("the broker is shutting down".to_owned());
    }

    fn follow(&self, refusal: String) {
        info!(%refusal, "no longer the cluster's leader: client connections closed, dispatching stopped");
        self.leadership.step_down(refusal);
        let _ = self.hub.send(HubCmd::Follow);
        // A follower delivers nothing: its store stops keeping bodies in memory.
        self.store.set_caching_bodies(false);
    }

    /// The cluster's id: read from the store, or (the cluster's first leader) a random
    /// one proposed and applied first. `None` if it cannot be had now (the proposal
    /// failed: no longer leader, or the store refused).
    async fn cluster_id(&mut self) -> Option<String> {
        if let Some(id) = &self.cluster_id {
            return Some(id.clone());
        }
        match self.store.cluster_id() {
            Ok(Some(id)) => {
                self.cluster_id = Some(id.clone());
                return Some(id);
            }
            Ok(None) => {}
            Err(e) => {
                warn!(error = %e, "cannot read the cluster's id from the store: not serving");
                return None;
            }
        }
        let fresh = format!("{:032x}", rand::random::<u128>());
        let (tx, rx) = oneshot::channel();
        self.writer.submit(
            Muts::One(Mutation::ClusterId(fresh.as_str().into())),
            Some(Done::Applied {
                then: None,
                tell: Signal::Once(tx),
                replicated: false,
            }),
        );
        match rx.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                warn!(error = %e, "the cluster's id was not set: not serving");
                return None;
            }
            Err(_) => return None,
        }
        // The first id applied stays (another leader's, in a race): read it back.
        let id = self.store.cluster_id().ok().flatten()?;
        info!(cluster_id = %id, "the cluster's id is set");
        self.cluster_id = Some(id.clone());
        Some(id)
    }

    /// Rebuilds the engine from the store and starts serving `term`.
    async fn lead(&mut self, term: u64) {
        let store = self.store.clone();
        let engine_config = engine_config(&self.config);
        let built = tokio::task::spawn_blocking(move || {
            store.raise_next_id();
            build_engine(&store, engine_config)
        })
        .await;
        let (mut engine, fixes, tasks) = match built {
            Ok(Ok(built)) => built,
            Ok(Err(e)) => {
                return warn!(error = %e, term, "cannot rebuild the engine from the store: not serving")
            }
            Err(e) => return warn!(error = %e, term, "engine rebuild failed: not serving"),
        };
        // Still the leader of that term? (The metrics may have moved meanwhile; the
        // loop looks again at once if they did.)
        let Some(cluster_id) = self.cluster_id().await else {
            return;
        };
        if ready_term(&self.metrics.borrow()) != Some(term) {
            return;
        }
        debug_assert!(
            self.leadership.serving_term().is_none(),
            "one term served at a time"
        );
        let view = view_of(&self.metrics.borrow(), cluster_id);
        engine.set_delivery_window(Some(self.delivery_window));
        engine.set_max_schedules(self.config.max_schedules);
        engine.set_token_epoch(term);
        let engine = RebuiltEngine(Box::new(engine));
        // Deliveries read bodies from here on: keep the newly published ones in memory.
        self.store.set_caching_bodies(true);
        if self.hub.send(HubCmd::Lead { engine, fixes }).is_err() {
            self.store.set_caching_bodies(false);
            return;
        }
        // Hellos admitted from now on register with the hub after `Lead`.
        self.leadership
            .serve(term, self.conn_cancel.child_token(), view);
        info!(
            term,
            recovered_tasks = tasks,
            "leading the cluster: serving clients"
        );
    }
}
