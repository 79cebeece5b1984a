//! Cluster mode: the leader's lease, i.e. whether this leader heard from a quorum
//! recently enough that no other member can have been elected since, so that what it
//! hands out is still the cluster's state. The leadership watcher (`lead.rs`) renews it
//! from openraft's metrics; the hub dispatches only while it holds. Without it, a
//! leader cut off from the majority (or restarted with its old vote, or removed from
//! the cluster) keeps delivering tasks that the new leader may already have delivered
//! and seen acked. Not here: when this node leads (`lead.rs`), what it dispatches
//! (`hub/`). A single node has no lease (the hub never asks).

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

/// Until when this leader may dispatch.
#[derive(Debug)]
pub(crate) struct LeaderLease {
    /// How long after sending a heartbeat that a quorum acknowledged the lease holds.
    /// Less than the shortest election timeout: a member that received that heartbeat
    /// starts or grants no election before `election_timeout_min` has passed since, and
    /// every quorum that could elect another leader holds such a member.
    length: Duration,
    base: Instant,
    /// Milliseconds after `base` until which dispatching is allowed; 0 never,
    /// `u64::MAX` always (the only voter).
    until_ms: AtomicU64,
}

impl LeaderLease {
    /// A lapsed lease of `length`.
    pub(crate) fn new(length: Duration) -> LeaderLease {
        LeaderLease {
            length,
            base: Instant::now(),
            until_ms: AtomicU64::new(0),
        }
    }

    /// A quorum acknowledged a heartbeat sent `acked_ago` ago.
    pub(crate) fn renew(&self, acked_ago: Duration) {
        let now = self.base.elapsed().as_millis();
        let until = (now + self.length.as_millis()).saturating_sub(acked_ago.as_millis());
        let until = u64::try_from(until).unwrap_or(u64::MAX - 1);
        self.until_ms.store(until, Relaxed);
    }

    /// This node is the only voter: nobody else can be elected.
    pub(crate) fn hold_alone(&self) {
        self.until_ms.store(u64::MAX, Relaxed);
    }

    /// Not the leader (or no quorum acknowledged it yet).
    pub(crate) fn lapse(&self) {
        self.until_ms.store(0, Relaxed);
    }

    /// Whether this leader may dispatch now.
    pub(crate) fn holds(&self) -> bool {
        let until = self.until_ms.load(Relaxed);
        until == u64::MAX || u64::try_from(self.base.elapsed().as_millis()).is_ok_and(|n| n < until)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_lease_holds_from_the_acknowledged_heartbeat_for_its_length_only() {
        let lease = LeaderLease::new(Duration::from_millis(200));
        assert!(!lease.holds(), "lapsed until renewed");
        lease.renew(Duration::ZERO);
        assert!(lease.holds());
        // A heartbeat acknowledged, but sent longer ago than the lease: no lease.
        lease.renew(Duration::from_millis(500));
        assert!(!lease.holds());
        lease.renew(Duration::from_millis(100));
        assert!(lease.holds());
        std::thread::sleep(Duration::from_millis(150));
        assert!(
            !lease.holds(),
            "ran out 200 ms after the heartbeat was sent"
        );
        lease.hold_alone();
        assert!(lease.holds());
        lease.lapse();
        assert!(!lease.holds());
    }
}
