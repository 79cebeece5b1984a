//! How long this member's share of replication takes, as histograms that `/metrics`
//! exports (`server/http/cluster_metrics.rs`): the Raft log's appends as openraft
//! waits for them and the `fdatasync` inside them, the state machine's applies, and,
//! on the leader, each proposal's round from proposed to applied with the jobs it
//! carried. These are what a busy cluster's commit round is made of (BENCHMARKS.md).
//! Observed where the work happens (`log.rs`, `state.rs`, `replicate.rs`); nothing
//! here knows Prometheus, and openraft's own metrics (term, indexes, lag) are read
//! from openraft at each scrape, not kept here.

use crate::histogram::{Histogram, BATCH_SIZES, LATENCY_MICROS};

/// Bucket upper bounds for the Raft log's work, in microseconds: finer than
/// [`LATENCY_MICROS`] below a millisecond, where an `fdatasync` and an append are.
pub const LOG_MICROS: &[u64] = &[
    25, 50, 100, 150, 250, 400, 600, 1_000, 1_500, 2_500, 5_000, 10_000, 25_000, 100_000, 1_000_000,
];

/// The histograms; shared by the log, the state machine and the proposer of one node.
#[derive(Debug)]
pub struct Timings {
    /// One append of entries to the Raft log, from openraft's call to its return
    /// (encoding, write, `fdatasync`, the hop to a blocking thread and back): the
    /// time openraft 0.9's core waits before it goes on.
    pub log_append_micros: Histogram,
    /// The `fdatasync` of one append alone.
    pub log_sync_micros: Histogram,
    /// One `apply` of committed entries: their jobs submitted to the store until
    /// every one of them is applied there.
    pub apply_micros: Histogram,
    /// Leader only: one proposal's round, from its proposal to openraft until it is
    /// applied on this node (committed by a majority's logs, then applied).
    pub proposal_micros: Histogram,
    /// Leader only: the store jobs (publishes, acks, ...) one proposal carried.
    pub proposal_jobs: Histogram,
}

impl Default for Timings {
    fn default() -> Timings {
        Timings {
            log_append_micros: Histogram::new(LOG_MICROS),
            log_sync_micros: Histogram::new(LOG_MICROS),
            apply_micros: Histogram::new(LATENCY_MICROS),
            proposal_micros: Histogram::new(LATENCY_MICROS),
            proposal_jobs: Histogram::new(BATCH_SIZES),
        }
    }
}
