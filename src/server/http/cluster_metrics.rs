//! The cluster's part of `/metrics`, on a cluster member only: this node's Raft term,
//! role, known leader, last log, commit and applied index, the time since it last
//! heard from each member, membership size, the leader changes it has seen, its
//! snapshots (last one's index and size, purge point, built and installed) and, on
//! the leader, each member's replication lag and the age of the last quorum
//! acknowledgement; and how long its Raft log appends and syncs, its applies and (on
//! the leader) its proposals take (`cluster/timings.rs`). Read at
//! each scrape; nothing is kept here. Not here: the broker's and the queues' metrics
//! (`exposition.rs`).

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Unit;

use super::exposition::{counter, gauge, histogram, MICROS};
use crate::histogram::HistogramSnapshot;
use std::sync::atomic::Ordering::Relaxed;

use crate::cluster::heard::Heard;
use crate::cluster::snapshot::SnapshotCounters;
use crate::cluster::timings::Timings;
use crate::cluster::types::{NodeId, RaftMetrics};

/// One scrape's view of the cluster from this node.
#[derive(Debug)]
pub(crate) struct ClusterSample {
    term: u64,
    leader: Option<NodeId>,
    is_leader: bool,
    last_log_index: u64,
    commit_index: u64,
    applied_index: u64,
    /// Seconds since this node last heard from each member (`Heard`).
    contacts: Vec<(NodeId, f64)>,
    voters: usize,
    learners: usize,
    leader_changes: u64,
    /// Leader only: entries each other member is behind the leader's last log entry.
    lag: Vec<(NodeId, u64)>,
    /// Leader only: milliseconds since a quorum last acknowledged it.
    quorum_ack_ms: Option<u64>,
    /// The last entry in this node's snapshot, and the last purged from its log.
    snapshot_index: u64,
    purged_index: u64,
    /// Snapshots built and installed since the node started.
    snapshots_built: u64,
    snapshots_installed: u64,
    /// Bytes of the current snapshot file.
    snapshot_bytes: u64,
    /// `cluster/timings.rs`'s histograms.
    log_append: HistogramSnapshot,
    log_sync: HistogramSnapshot,
    apply: HistogramSnapshot,
    proposal: HistogramSnapshot,
    proposal_jobs: HistogramSnapshot,
}

impl ClusterSample {
    /// Reads `m`, openraft's metrics of this node; `leader_changes` as counted by the
    /// leadership watcher; `snapshots` as the state machine counts them; `timings`
    /// as the node observes them; `heard` as the node has heard them (read after `m`:
    /// the commit index is never below the applied one).
    pub(crate) fn read(
        m: &RaftMetrics,
        leader_changes: u64,
        snapshots: &SnapshotCounters,
        timings: &Timings,
        heard: &Heard,
    ) -> ClusterSample {
        let membership = m.membership_config.membership();
        let voters = membership.voter_ids().count();
        let learners = membership.learner_ids().count();
        let last_log_index = m.last_log_index.unwrap_or(0);
        let is_leader = m.state == openraft::ServerState::Leader;
        let lag: Vec<(NodeId, u64)> = m
            .replication
            .iter()
            .flatten()
            .filter(|(id, _)| **id != m.id)
            .map(|(id, matched)| {
                let matched = matched.as_ref().map_or(0, |l| l.index);
                (*id, last_log_index.saturating_sub(matched))
            })
            .collect();
        debug_assert!(is_leader || lag.is_empty(), "only a leader replicates");
        let applied_index = m.last_applied.map(|l| l.index);
        let commit_index = heard.commit_index(applied_index).unwrap_or(0);
        debug_assert!(commit_index >= applied_index.unwrap_or(0));
        debug_assert!(voters >= 1 || m.membership_config.log_id().is_none());
        ClusterSample {
            term: m.current_term,
            leader: m.current_leader,
            is_leader,
            last_log_index,
            commit_index,
            applied_index: applied_index.unwrap_or(0),
            // Current members only: a removed member's age would grow forever.
            contacts: heard
                .contacts()
                .into_iter()
                .filter(|(id, _)| *id != m.id && membership.get_node(id).is_some())
                .map(|(id, age)| (id, age.as_secs_f64()))
                .collect(),
            voters,
            learners,
            leader_changes,
            lag,
            quorum_ack_ms: m.millis_since_quorum_ack,
            snapshot_index: m.snapshot.map_or(0, |l| l.index),
            purged_index: m.purged.map_or(0, |l| l.index),
            snapshots_built: snapshots.built.load(Relaxed),
            snapshots_installed: snapshots.installed.load(Relaxed),
            snapshot_bytes: snapshots.bytes.load(Relaxed),
            log_append: timings.log_append_micros.snapshot(),
            log_sync: timings.log_sync_micros.snapshot(),
            apply: timings.apply_micros.snapshot(),
            proposal: timings.proposal_micros.snapshot(),
            proposal_jobs: timings.proposal_jobs.snapshot(),
        }
    }
}

/// A gauge family with one sample per member, labelled `node`.
fn per_node<N>(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    unit: Option<&Unit>,
    values: impl Iterator<Item = (NodeId, N)>,
) -> Result<(), std::fmt::Error>
where
    ConstGauge<N>: EncodeMetric,
{
    let mut family = enc.encode_descriptor(name, help, unit, MetricType::Gauge)?;
    for (node, value) in values {
        let labels = [("node", node.to_string())];
        ConstGauge::new(value).encode(family.encode_family(&labels)?)?;
    }
    Ok(())
}

impl Collector for ClusterSample {
    fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let enc = &mut enc;
        gauge(
            enc,
            "cluster_term",
            "This node's current Raft term.",
            self.term as i64,
        )?;
        gauge(
            enc,
            "cluster_is_leader",
            "1 while this node is the cluster's leader (the one that serves clients).",
            i64::from(self.is_leader),
        )?;
        gauge(
            enc,
            "cluster_leader_known",
            "1 while this node knows a leader; 0 during an election or when cut off from the majority.",
            i64::from(self.leader.is_some()),
        )?;
        if let Some(leader) = self.leader {
            gauge(
                enc,
                "cluster_leader_id",
                "The node id of the leader this node knows.",
                leader as i64,
            )?;
        }
        counter(
            enc,
            "cluster_leader_changes",
            "Times this node has seen another node become leader since it started.",
            self.leader_changes,
        )?;
        gauge(
            enc,
            "cluster_last_log_index",
            "Index of the last entry in this node's Raft log.",
            self.last_log_index as i64,
        )?;
        gauge(
            enc,
            "cluster_commit_index",
            "Index of the last entry this node knows to be committed (on a majority's log).",
            self.commit_index as i64,
        )?;
        gauge(
            enc,
            "cluster_applied_index",
            "Index of the last entry this node applied to its queues.",
            self.applied_index as i64,
        )?;
        gauge(
            enc,
            "cluster_voters",
            "Voting members of the cluster.",
            self.voters as i64,
        )?;
        gauge(
            enc,
            "cluster_learners",
            "Non-voting members (joining, catching up).",
            self.learners as i64,
        )?;
        gauge(
            enc,
            "cluster_snapshot_index",
            "Index of the last entry in this node's snapshot of the queue state (0: none).",
            self.snapshot_index as i64,
        )?;
        ConstGauge::new(self.snapshot_bytes as i64).encode(enc.encode_descriptor(
            "cluster_snapshot",
            "Size of this node's current snapshot file (0: none); once it is larger than cluster.snapshot_log_bytes, the next snapshot waits for as much log.",
            Some(&Unit::Bytes),
            MetricType::Gauge,
        )?)?;
        gauge(
            enc,
            "cluster_purged_index",
            "Index of the last entry purged from this node's Raft log (0: none).",
            self.purged_index as i64,
        )?;
        counter(
            enc,
            "cluster_snapshots_built",
            "Snapshots of the queue state this node built since it started.",
            self.snapshots_built,
        )?;
        counter(
            enc,
            "cluster_snapshots_installed",
            "Snapshots received from a leader that this node installed since it started.",
            self.snapshots_installed,
        )?;
        if self.is_leader {
            per_node(
                enc,
                "cluster_replication_lag_entries",
                "Leader only: log entries each other member is behind the leader.",
                None,
                self.lag.iter().map(|&(node, lag)| (node, lag as i64)),
            )?;
        }
        if !self.contacts.is_empty() {
            per_node(
                enc,
                "cluster_last_contact",
                "Time since this node last heard from each member: on the leader, the member's last answer; on a follower, the leader's last append.",
                Some(&Unit::Seconds),
                self.contacts.iter().copied(),
            )?;
        }
        histogram(
            enc,
            "cluster_log_append",
            "One append of entries to this node's Raft log as openraft waits for it (encode, write, fdatasync, thread hop).",
            Some(&Unit::Seconds),
            &self.log_append,
            MICROS,
        )?;
        histogram(
            enc,
            "cluster_log_fsync",
            "The fdatasync of one Raft log append alone.",
            Some(&Unit::Seconds),
            &self.log_sync,
            MICROS,
        )?;
        histogram(
            enc,
            "cluster_apply",
            "One apply of committed entries to this node's queues, until every job in them is applied.",
            Some(&Unit::Seconds),
            &self.apply,
            MICROS,
        )?;
        histogram(
            enc,
            "cluster_proposal",
            "Leader only: one proposal's round, from proposed until committed and applied here.",
            Some(&Unit::Seconds),
            &self.proposal,
            MICROS,
        )?;
        histogram(
            enc,
            "cluster_proposal_jobs",
            "Leader only: store jobs (publishes, acks, ...) carried by one proposal.",
            None,
            &self.proposal_jobs,
            1.0,
        )?;
        if let Some(ms) = self.quorum_ack_ms {
            ConstGauge::new(ms as f64 / 1000.0).encode(enc.encode_descriptor(
                "cluster_quorum_ack_age",
                "Leader only: time since a quorum of the members last acknowledged it.",
                Some(&Unit::Seconds),
                MetricType::Gauge,
            )?)?;
        }
        Ok(())
    }
}
