//! What this member has heard of the cluster that openraft 0.9's metrics do not say:
//! the commit index (openraft tells the log store each time it commits,
//! `RaftLogStorage::save_committed`, on the leader and on followers alike) and when it
//! last heard from each other member (on the leader, an answer to one of its requests,
//! heartbeats included; on a follower, an append accepted from the leader). Read by
//! `squall cluster status` (`net::status`) and `/metrics`; kept in memory only (a
//! restarted member knows its applied index, which the commit index is never below).
//! Not here: openraft's own metrics (term, roles, log and applied index, matched
//! indexes), which are read from openraft, and the timings (`timings.rs`).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use super::types::NodeId;

/// Most members remembered: far above any cluster's size (3 or 5 voters and a learner
/// or two), so that only a stream of made-up ids could reach it; past it the member
/// heard from longest ago is forgotten.
const MEMBERS_KEPT: usize = 64;

/// The commit index and the last contact with each member; one per node, shared by
/// its log store, its cluster port (both sides) and its status readers.
#[derive(Debug, Default)]
pub struct Heard {
    /// The last committed entry's index plus one (0: none committed since start).
    committed: AtomicU64,
    /// When this member last heard from each other member.
    contacts: Mutex<HashMap<NodeId, Instant>>,
}

impl Heard {
    /// openraft committed every entry up to `index`.
    pub fn committed_upto(&self, index: u64) {
        let told = index.saturating_add(1);
        let before = self.committed.fetch_max(told, Ordering::AcqRel);
        debug_assert!(self.committed.load(Ordering::Acquire) >= before.max(told));
    }

    /// The commit index as this member knows it: the last one openraft told it, but
    /// never below `applied` (only committed entries are applied, and a member that
    /// restarted has not been told again what it applied before).
    pub fn commit_index(&self, applied: Option<u64>) -> Option<u64> {
        let told = self.committed.load(Ordering::Acquire).checked_sub(1);
        let index = told.max(applied);
        debug_assert!(
            index >= applied,
            "the commit index is at least the applied one"
        );
        index
    }

    /// This member just heard from `member`.
    pub fn heard_from(&self, member: NodeId) {
        let now = Instant::now();
        let mut contacts = self.contacts.lock();
        if contacts.len() >= MEMBERS_KEPT && !contacts.contains_key(&member) {
            let oldest = contacts
                .iter()
                .min_by_key(|(_, at)| **at)
                .map(|(id, _)| *id);
            if let Some(oldest) = oldest {
                contacts.remove(&oldest);
            }
        }
        contacts.insert(member, now);
        debug_assert!(contacts.len() <= MEMBERS_KEPT);
    }

    /// How long ago this member last heard from each member it has heard from.
    pub fn contacts(&self) -> Vec<(NodeId, Duration)> {
        let now = Instant::now();
        let contacts = self.contacts.lock();
        let mut ages: Vec<(NodeId, Duration)> = contacts
            .iter()
            .map(|(id, at)| (*id, now.saturating_duration_since(*at)))
            .collect();
        drop(contacts);
        ages.sort_unstable_by_key(|(id, _)| *id);
        ages
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_commit_index_is_the_last_told_and_never_below_the_applied_one() {
        let heard = Heard::default();
        assert_eq!(heard.commit_index(None), None);
        assert_eq!(heard.commit_index(Some(7)), Some(7), "a restarted member");
        heard.committed_upto(0);
        assert_eq!(heard.commit_index(None), Some(0));
        heard.committed_upto(12);
        assert_eq!(heard.commit_index(Some(9)), Some(12));
        // Told out of order (never by openraft, but the index only goes forward).
        heard.committed_upto(10);
        assert_eq!(heard.commit_index(Some(9)), Some(12));
    }

    #[test]
    fn contacts_age_and_stay_bounded() {
        let heard = Heard::default();
        heard.heard_from(2);
        std::thread::sleep(Duration::from_millis(20));
        heard.heard_from(3);
        let ages = heard.contacts();
        assert_eq!(ages.len(), 2);
        assert_eq!((ages[0].0, ages[1].0), (2, 3));
        assert!(ages[0].1 >= Duration::from_millis(20), "{ages:?}");
        assert!(ages[1].1 < ages[0].1, "{ages:?}");
        for id in 100..100 + 2 * MEMBERS_KEPT as u64 {
            heard.heard_from(id);
        }
        let ages = heard.contacts();
        assert_eq!(ages.len(), MEMBERS_KEPT);
        assert!(
            ages.iter().all(|(id, _)| *id >= 100 + MEMBERS_KEPT as u64),
            "the oldest are forgotten first"
        );
    }
}
