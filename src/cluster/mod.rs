//! Replication on openraft (issue 15, in progress): one Raft group per cluster whose
//! state machine is the queue state. Here live the type configuration (`types.rs`),
//! the conversion to the node-to-node protocol (`codec/`), the Raft log on the
//! journal's segment format (`log.rs`), the leader's proposals of the broker's store
//! jobs (`replicate.rs`), what a member has heard beyond openraft's metrics (the
//! commit index, the last contact with each member: `heard.rs`), the state machine
//! that applies committed jobs to the store (`state.rs`), its snapshots (`snapshot.rs`), the cluster port (`net.rs`),
//! membership changes (`membership.rs`), and the node that ties them together and
//! forms a new cluster by itself (this file).
//!
//! Sockets of the client port and the broker's engine are not touched here: what the
//! broker does when this node gains or loses the leadership is `server/lead.rs`.
//! What is not built yet: docs/design/replication.md.

pub mod codec;
pub mod heard;
pub mod log;
pub mod membership;
pub mod net;
pub(crate) mod netting;
pub mod replicate;
pub mod snapshot;
pub mod state;
pub mod timings;
pub mod types;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use squall_proto::cluster as pb;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::{ClusterConfig, Peer};
use crate::store::{Store, WriterHandle};
use replicate::{Applying, Pending, Proposer};
use types::{Member, NodeId, Raft};

/// Name of the cluster's directory inside the data directory.
pub const RAFT_DIR: &str = "raft";

/// How long a formation probe waits for a peer's answer.
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);

/// How often a pristine node probes its peers while it waits for a majority.
const FORMATION_PROBE_INTERVAL: Duration = Duration::from_millis(300);

/// Probe rounds a pristine node waits for every peer before it forms the cluster with
/// a bare majority (about 3 s). The membership it writes holds the client address of
/// each peer that answered; one that had not answered is listed without one, so that
/// clients cannot be sent to it (HelloOk, NOT_LEADER), and members that formed with
/// different answers hold different addresses. Waiting a little for everyone makes
/// that the exception (a peer down at formation), not the rule of a staggered start.
const FORMATION_GRACE_ROUNDS: u32 = 10;

/// Why the node could not start.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// The Raft log, vote or state could not be read or created.
    #[error("raft data in {path}: {source}")]
    Storage {
        /// The directory.
        path: String,
        /// What failed.
        source: std::io::Error,
    },
    /// The cluster port could not be bound.
    #[error("cannot listen on the cluster port {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// openraft refused to start (a configuration it rejects or a storage error).
    #[error("raft: {0}")]
    Raft(String),
}

/// The openraft settings of a Squall cluster. Heartbeats and election timeouts for a
/// LAN. openraft 0.9 starts an election `election_timeout_max` (its leader lease: no
/// member votes sooner) plus a random `election_timeout` after the last heartbeat, and
/// twice `election_timeout_max` more when another member has a longer log: with 50 ms
/// heartbeats and 250-500 ms, a new leader 0.75-1 s after the old one's death, 2 s at
/// worst (issue 15 asks for the first publish confirmed within 3 s at p99; at 400-800
/// ms that worst case was 3.2 s before a client's first try). The broker's own lease
/// (`server/lease.rs`) is half the shortest timeout, 125 ms: 2 heartbeats. A snapshot
/// of the queue state when `snapshot_logs` entries or `snapshot_log_bytes` of log were
/// applied since the last one (`snapshot::trigger`), the log purged behind it but for
/// the last [`LOGS_KEPT_BEHIND`] entries and [`LOG_BYTES_KEPT_BEHIND`] bytes of them
/// (a member further behind is sent the snapshot).
/// Snapshots travel in chunks of at most a quarter of the cluster port's frame limit
/// (and openraft's 3 MiB); a snapshot's last chunk is answered once the follower has
/// installed it (its whole store replaced): that answer may take a while.
pub fn raft_config(config: &ClusterConfig) -> openraft::Config {
    let defaults = openraft::Config::default();
    let chunk = (config.max_frame_bytes as u64 / 4).min(defaults.snapshot_max_chunk_size);
    openraft::Config {
        cluster_name: "squall".to_owned(),
        heartbeat_interval: 50,
        election_timeout_min: 250,
        election_timeout_max: 500,
        // Snapshots are asked for by `snapshot::trigger` (entries or bytes since the
        // last one, whichever comes first, and once the snapshot is large as much log
        // as it); openraft's own policy counts entries only.
        snapshot_policy: openraft::SnapshotPolicy::Never,
        max_in_snapshot_log_to_keep: config.snapshot_logs.min(LOGS_KEPT_BEHIND),
        install_snapshot_timeout: SNAPSHOT_RPC_TIMEOUT_MS,
        snapshot_max_chunk_size: chunk,
        ..defaults
    }
}

/// Most entries kept in the Raft log behind a snapshot (fewer when `snapshot_logs` is
/// smaller): a member only slightly behind catches up from the log, not a snapshot.
const LOGS_KEPT_BEHIND: u64 = 10_000;

/// Most encoded bytes of those entries (fewer when `snapshot_log_bytes` is smaller):
/// entries of up to a megabyte each would otherwise keep 10 GB of log on disk.
const LOG_BYTES_KEPT_BEHIND: u64 = 64 * 1024 * 1024;

/// How long the leader waits for the answer to one chunk of a snapshot, the last one
/// included (the follower answers it once the snapshot is installed).
const SNAPSHOT_RPC_TIMEOUT_MS: u64 = 30_000;

/// A number for this run of the broker: proposals of an earlier run of the same node
/// (still in the log after a restart) must not match a job of this one.
fn run_number() -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    nanos ^ (u64::from(std::process::id()) << 48)
}

/// A running cluster member: the Raft node, its cluster port, and the formation task.
pub struct Node {
    id: NodeId,
    raft: Raft,
    local_addr: SocketAddr,
    stop: CancellationToken,
    tasks: TaskTracker,
    snapshots: Arc<snapshot::SnapshotCounters>,
    timings: Arc<timings::Timings>,
    heard: Arc<heard::Heard>,
    /// Submits what the state machine held back and waits for the store (shutdown).
    flush_held: FlushHeld,
}

type FlushHeld = Box<
    dyn FnOnce() -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>> + Send + Sync,
>;

impl Node {
    /// Opens the Raft data in `data_dir/raft`, binds the cluster port and starts the
    /// node, whose state machine applies committed entries to `store` through
    /// `writer` (the store's own handle). Returns the node and the route that the
    /// broker's store jobs must take (`WriterHandle::routed`). A node whose log is
    /// empty forms the cluster with `cluster.peers` once a majority of them answers,
    /// unless one of them already belongs to a cluster.
    pub async fn start<C: Applying>(
        id: NodeId,
        config: &ClusterConfig,
        client_addr: String,
        data_dir: &Path,
        store: Store,
        writer: WriterHandle<C>,
        tls: net::ClusterTls,
    ) -> Result<(Node, Arc<Proposer<C>>), ClusterError> {
        let listen = config
            .listen
            .ok_or_else(|| ClusterError::Raft("cluster.listen is not set".into()))?;
        let dir = data_dir.join(RAFT_DIR);
        let storage = |source| ClusterError::Storage {
            path: dir.display().to_string(),
            source,
        };
        let log = log::LogStore::open(&dir).map_err(storage)?;
        let timings = log.timings();
        let heard = log.heard();
        let run = run_number();
        let pending: Pending<C> = Pending::default();
        // Before anything is applied: committed entries are applied whatever the space.
        store.set_replicated();
        // A member delivers nothing until it leads (`server/lead.rs` turns it on).
        store.set_caching_bodies(false);
        let mut machine = state::StateMachine::open(&dir, &store, writer, pending.clone(), id, run)
            .map_err(storage)?;
        machine.resume_install().await.map_err(storage)?;
        machine.set_timings(timings.clone());
        let snapshots = machine.counters();
        let deferred = machine.deferred();
        let listener = TcpListener::bind(listen)
            .await
            .map_err(|source| ClusterError::Bind {
                addr: listen,
                source,
            })?;
        let local_addr = listener.local_addr().map_err(|source| ClusterError::Bind {
            addr: listen,
            source,
        })?;
        let raft_config = Arc::new(
            raft_config(config)
                .validate()
                .map_err(|e| ClusterError::Raft(e.to_string()))?,
        );
        let token = bytes::Bytes::from(config.token.clone().into_bytes());
        let encoded = log.encoded();
        let network = net::Network {
            max_frame: config.max_frame_bytes,
            token: token.clone(),
            tls: tls.connector.clone(),
            encoded: encoded.clone(),
            heard: heard.clone(),
        };
        let raft = Raft::new(id, raft_config, network, log, machine)
            .await
            .map_err(|e| ClusterError::Raft(e.to_string()))?;
        let stop = CancellationToken::new();
        let tasks = TaskTracker::new();
        let ctx = net::ServerContext {
            raft: raft.clone(),
            id,
            client_addr: client_addr.clone(),
            max_frame: config.max_frame_bytes,
            connections: Arc::new(tokio::sync::Semaphore::new(config.max_connections)),
            token: token.clone(),
            tls: tls.acceptor.clone(),
            encoded: encoded.clone(),
            heard: heard.clone(),
        };
        tasks.spawn(net::serve(listener, ctx, stop.clone(), tasks.clone()));
        let formation = Formation {
            id,
            client_addr,
            peers: config.peers.clone(),
            max_frame: config.max_frame_bytes,
            token,
            tls: tls.connector.clone(),
        };
        tasks.spawn(formation.run(raft.clone(), stop.clone()));
        tasks.spawn(snapshot::trigger(
            raft.clone(),
            encoded,
            snapshot::Policy {
                logs: config.snapshot_logs,
                bytes: config.snapshot_log_bytes,
                kept_bytes: config.snapshot_log_bytes.min(LOG_BYTES_KEPT_BEHIND),
            },
            snapshots.clone(),
            stop.clone(),
        ));
        tasks.spawn(state::run_deferred(deferred.clone(), stop.clone()));
        let (proposer, proposals) = Proposer::new(
            id,
            run,
            pending.clone(),
            raft.metrics(),
            store.publish_space(),
        );
        tasks.spawn(replicate::propose(
            raft.clone(),
            proposals,
            pending,
            timings.clone(),
            stop.clone(),
        ));
        tracing::info!(
            node = id,
            cluster_addr = %local_addr,
            peers = config.peers.len(),
            tls = tls.is_on(),
            "cluster node started"
        );
        let node = Node {
            id,
            raft,
            local_addr,
            stop,
            tasks,
            snapshots,
            timings,
            heard,
            flush_held: Box::new(move || Box::pin(async move { deferred.flush_now().await })),
        };
        Ok((node, Arc::new(proposer)))
    }

    /// This node's id.
    pub fn id(&self) -> NodeId {
        self.id
    }

    /// The bound address of the cluster port.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The Raft node.
    pub fn raft(&self) -> &Raft {
        &self.raft
    }

    /// Snapshots this node built and installed since it started.
    pub fn snapshots(&self) -> Arc<snapshot::SnapshotCounters> {
        self.snapshots.clone()
    }

    /// How long this node's appends, applies and proposals take.
    pub fn timings(&self) -> Arc<timings::Timings> {
        self.timings.clone()
    }

    /// What this node has heard of the cluster (commit index, last contacts).
    pub fn heard(&self) -> Arc<heard::Heard> {
        self.heard.clone()
    }

    /// This node's view of the cluster.
    pub fn status(&self) -> pb::StatusReply {
        net::status(&self.raft, &self.heard)
    }

    /// Stops the cluster port and the formation task, then the Raft node.
    pub async fn shutdown(self) {
        self.stop.cancel();
        self.tasks.close();
        self.tasks.wait().await;
        if let Err(e) = self.raft.shutdown().await {
            tracing::warn!(error = %e, "raft node did not stop cleanly");
        }
        // Nothing is applied any more: what the state machine held back goes to the
        // store, so that a stopped member's store holds every entry it applied.
        (self.flush_held)().await;
        tracing::info!(node = self.id, "cluster node stopped");
    }
}

/// Forms a new cluster from `peers` once a majority of them answers.
struct Formation {
    id: NodeId,
    client_addr: String,
    peers: Vec<Peer>,
    max_frame: usize,
    token: bytes::Bytes,
    tls: Option<tokio_rustls::TlsConnector>,
}

impl Formation {
    async fn run(self, raft: Raft, stop: CancellationToken) {
        let mut clients: BTreeMap<NodeId, net::NodeClient> = self
            .peers
            .iter()
            .filter(|p| p.id != self.id)
            .map(|p| {
                let client = net::NodeClient::new(p.addr.clone(), self.max_frame)
                    .with_token(self.token.clone())
                    .with_tls(self.tls.clone());
                (p.id, client)
            })
            .collect();
        self.form(&raft, &mut clients, &stop).await;
        self.fill_client_addrs(&raft, &mut clients, &stop).await;
    }

    /// Until this node belongs to a cluster (formed here, or another's found), or stops.
    async fn form(
        &self,
        raft: &Raft,
        clients: &mut BTreeMap<NodeId, net::NodeClient>,
        stop: &CancellationToken,
    ) {
        let majority = self.peers.len() / 2 + 1;
        let mut rounds = 0u32;
        loop {
            match raft.is_initialized().await {
                Ok(false) => {}
                Ok(true) => {
                    tracing::debug!("formation: this node belongs to a cluster");
                    return;
                }
                Err(e) => {
                    tracing::debug!(error = %e, "formation: the raft node stopped");
                    return;
                }
            }
            // Every peer at once: one slow or silent peer costs one timeout, not one each.
            let probes = clients.iter_mut().map(|(id, client)| async move {
                let probe = pb::node_request::Op::Probe(pb::Probe {});
                (*id, client.call(probe, PROBE_TIMEOUT).await)
            });
            let answers = futures_util::future::join_all(probes).await;
            let mut members = BTreeMap::new();
            let mut initialized_peer = None;
            members.insert(self.id, Some(self.client_addr.clone()));
            for (id, answer) in answers {
                let client_addr = match answer {
                    Ok(pb::node_response::Result::Probe(p)) if p.node_id == id => {
                        if p.initialized {
                            initialized_peer = Some(id);
                        }
                        Some(p.client_addr)
                    }
                    Ok(pb::node_response::Result::Probe(p)) => {
                        tracing::warn!(
                            peer = id,
                            answered = p.node_id,
                            "a peer answers with another node id"
                        );
                        None
                    }
                    _ => None,
                };
                members.insert(id, client_addr);
            }
            if let Some(peer) = initialized_peer {
                tracing::info!(
                    peer,
                    "a peer already belongs to a cluster: waiting to be contacted by its leader"
                );
                return;
            }
            let up = members.values().filter(|addr| addr.is_some()).count();
            if up == members.len() || (up >= majority && rounds >= FORMATION_GRACE_ROUNDS) {
                let addrs: BTreeMap<NodeId, &str> =
                    self.peers.iter().map(|p| (p.id, p.addr.as_str())).collect();
                let members: BTreeMap<NodeId, Member> = members
                    .into_iter()
                    .map(|(id, client_addr)| {
                        let member = Member {
                            client_addr: client_addr.unwrap_or_default(),
                            cluster_addr: addrs.get(&id).copied().unwrap_or_default().to_owned(),
                        };
                        (id, member)
                    })
                    .collect();
                match raft.initialize(members).await {
                    Ok(()) => tracing::info!(node = self.id, up, "cluster formed"),
                    Err(e) => tracing::debug!(error = %e, "cluster already formed"),
                }
                return;
            }
            if rounds % 10 == 0 {
                tracing::info!(
                    up,
                    majority,
                    "waiting for a majority of the peers to form the cluster"
                );
            }
            rounds = rounds.wrapping_add(1);
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(FORMATION_PROBE_INTERVAL) => {}
            }
        }
    }

    /// On the leader: fills in the client address of a member listed without one (it
    /// had not answered when the cluster formed) once it answers a probe, by a
    /// membership change of that member's data alone (`SetNodes`: the same voters at
    /// the same cluster addresses), so that clients can be sent to it. Ends once every
    /// member has one.
    async fn fill_client_addrs(
        &self,
        raft: &Raft,
        clients: &mut BTreeMap<NodeId, net::NodeClient>,
        stop: &CancellationToken,
    ) {
        loop {
            let (leading, known, missing): (bool, bool, Vec<(NodeId, Member)>) = {
                let m = raft.metrics().borrow().clone();
                let membership = m.membership_config.membership();
                let missing = membership
                    .nodes()
                    .filter(|(_, n)| n.client_addr.is_empty())
                    .map(|(id, n)| (*id, n.clone()))
                    .collect();
                let known = membership.nodes().next().is_some();
                (m.state == openraft::ServerState::Leader, known, missing)
            };
            // Done once the metrics show a membership with every address. Right after
            // `initialize` returns they may still show none (openraft reports its
            // metrics at the end of the turn that answered it): that is not done.
            if missing.is_empty() && (known || raft.is_initialized().await.is_err()) {
                return;
            }
            for (id, member) in missing.into_iter().filter(|_| leading) {
                let Some(client) = clients.get_mut(&id) else {
                    continue;
                };
                let probe = pb::node_request::Op::Probe(pb::Probe {});
                let Ok(pb::node_response::Result::Probe(p)) =
                    client.call(probe, PROBE_TIMEOUT).await
                else {
                    continue;
                };
                if p.node_id != id || p.client_addr.is_empty() {
                    continue;
                }
                let member = Member {
                    client_addr: p.client_addr,
                    cluster_addr: member.cluster_addr,
                };
                let change = openraft::ChangeMembers::SetNodes(BTreeMap::from([(id, member)]));
                match raft.change_membership(change, false).await {
                    Ok(_) => tracing::info!(node = id, "a member's client address filled in"),
                    Err(e) => {
                        tracing::debug!(node = id, error = %e, "client address not filled in yet")
                    }
                }
            }
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
        }
    }
}

#[cfg(test)]
mod netting_tests;
#[cfg(test)]
mod snapshot_tests;
#[cfg(test)]
mod tests;
