//! The openraft type configuration of a Squall cluster: node ids, what a member is,
//! the replicated commands and the snapshot's carrier. No behaviour lives here.

use std::fmt;

/// A node's id in the Raft group: `node_id` of its configuration, a number.
pub type NodeId = u64;

/// A member of the cluster as every node knows it (carried in the replicated
/// membership).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Member {
    /// Where clients reach it: its advertised protocol address (`cluster.advertise`,
    /// default `listen`). Empty while not yet known: a peer that was down when the
    /// cluster formed.
    pub client_addr: String,
    /// Where the other nodes reach it: its cluster port.
    pub cluster_addr: String,
}

impl fmt::Display for Member {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (clients: {})", self.cluster_addr, self.client_addr)
    }
}

/// Who proposed a command: the leader's broker that submitted the job, so that its
/// state machine can tell the job's submitter once the entry is applied. Other nodes
/// ignore it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct Origin {
    /// The proposing node.
    pub node: NodeId,
    /// A number drawn when the proposing broker started: proposals of an earlier run
    /// of the same node (still in the log after a restart) match no waiting job.
    pub run: u64,
    /// The proposal's number within its run.
    pub seq: u64,
}

/// The store mutations of one job of the leader's broker (what
/// `store::WriterHandle::submit` was given), applied in order, as one store job, by
/// every member's state machine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Job {
    /// Who proposed it.
    pub origin: Origin,
    /// The mutations, in order (shared: the store applies them without a copy).
    pub muts: std::sync::Arc<[crate::model::Mutation]>,
    /// The task payload bytes of `muts`, counted where the job is made (the tasks
    /// are in the cache there): the log's memory bound, the held-back entries' and
    /// the store's group bounds read it here instead of through every task again.
    payload_bytes: usize,
}

impl Job {
    /// Job `origin` of `muts`.
    pub fn new(origin: Origin, muts: std::sync::Arc<[crate::model::Mutation]>) -> Job {
        let payload_bytes = crate::store::payload_bytes_of(&muts);
        Job {
            origin,
            muts,
            payload_bytes,
        }
    }

    /// The task payload bytes its mutations carry.
    pub fn payload_bytes(&self) -> usize {
        debug_assert_eq!(
            self.payload_bytes,
            crate::store::payload_bytes_of(&self.muts)
        );
        self.payload_bytes
    }

    /// Its mutations as a store job, shared (not copied) and with their payload bytes.
    pub fn store_muts(&self) -> crate::store::Muts {
        crate::store::Muts::shared(self.muts.clone(), self.payload_bytes)
    }
}

/// A replicated command: the queue state's changes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// Jobs of the leader's broker proposed together as one entry (at least one),
    /// applied in order and atomically (one store group) by every member: the
    /// per-entry cost of consensus (a log append and its fsync on each member, a
    /// round trip) is paid once for all of them. Shared: the Raft log keeps recent
    /// entries in memory (`log.rs`), and replicating or applying one clones it.
    Jobs(std::sync::Arc<[Job]>),
    /// Another leader's entry of jobs as a member received it, not yet decoded into
    /// store jobs: what netting its tasks needs was read from it (`codec/fast.rs`,
    /// `sketch`), and a member's held-back entries (`state.rs`, `Deferred`) decode
    /// only the jobs whose tasks are not all inserted and removed again while held.
    /// The leader proposes `Jobs` only.
    Received(std::sync::Arc<Received>),
}

/// An entry of jobs as received ([`Command::Received`]).
#[derive(Debug)]
pub struct Received {
    /// The entry's encoding, as the log writes it (its tasks decode from it).
    pub bytes: bytes::Bytes,
    /// Its jobs, in order.
    pub jobs: Vec<JobSketch>,
    /// Every insert, removal, patch and success of its jobs, in order (`JobSketch::events`).
    pub events: Vec<Event>,
    /// The task payload bytes of its jobs.
    pub payload_bytes: usize,
    /// How many mutations its jobs hold.
    pub mutations: usize,
}

impl PartialEq for Received {
    fn eq(&self, other: &Received) -> bool {
        self.bytes == other.bytes
    }
}

impl Eq for Received {}

/// One job of a [`Received`] entry.
#[derive(Debug, Clone)]
pub struct JobSketch {
    /// Where the job's message lies in the entry's bytes.
    pub at: std::ops::Range<usize>,
    /// Its events in [`Received::events`].
    pub events: std::ops::Range<usize>,
    /// How many mutations it holds (events and the rest).
    pub mutations: usize,
    /// Whether it holds only inserts (and a numbering after them): a publish.
    pub publish: bool,
    /// A numbered publish's producer and number.
    pub numbered: Option<(std::sync::Arc<str>, u64)>,
    /// Its first insert's creation time (`TaskState::created_ms`), if it inserts.
    pub first_created_ms: crate::model::Millis,
}

/// What netting needs of one mutation (the store's `find_netted` rule).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// A task inserted; `nettable` when it has no idempotency key.
    Insert {
        id: crate::model::TaskId,
        nettable: bool,
    },
    /// A task removed (settled).
    Remove(crate::model::TaskId),
    /// A task patched or succeeded: not nettable.
    Touch(crate::model::TaskId),
}

openraft::declare_raft_types!(
    /// Squall's Raft types.
    pub TypeConfig:
        D = Command,
        R = (),
        NodeId = NodeId,
        Node = Member,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = tokio::fs::File,
        Responder = openraft::impls::OneshotResponder<TypeConfig>,
        AsyncRuntime = openraft::TokioRuntime,
);

/// The running Raft node.
pub type Raft = openraft::Raft<TypeConfig>;
/// A log id (leader term and node, index).
pub type LogId = openraft::LogId<NodeId>;
/// A vote (term, node, committed).
pub type Vote = openraft::Vote<NodeId>;
/// A log entry.
pub type Entry = openraft::Entry<TypeConfig>;
/// A membership (voter sets and every member's addresses).
pub type Membership = openraft::Membership<NodeId, Member>;
/// A membership with the log id of the entry that set it.
pub type StoredMembership = openraft::StoredMembership<NodeId, Member>;
/// A storage failure as openraft wants it.
pub type StorageError = openraft::StorageError<NodeId>;
/// openraft's full metrics of a node (sent on every turn of its core's loop).
pub type RaftMetrics = openraft::RaftMetrics<NodeId, Member>;
/// openraft's server metrics of a node: role, vote, leader, membership (sent when one
/// of them changes).
pub type RaftServerMetrics = openraft::metrics::RaftServerMetrics<NodeId, Member>;
