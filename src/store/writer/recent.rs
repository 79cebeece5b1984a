//! The writer's cache of the task states it wrote recently. A delivery's attempt count
//! and an ack each read the state record the publish wrote moments before; found here,
//! that read is a hash lookup instead of a search of sled's 1,024-entry leaves. What
//! does not live here: anything sled does not hold yet (a batch's writes enter only
//! once the batch is journaled and applied), and any other kind of record.
//!
//! Only the writer thread writes `S` records (the checkpoint thread writes the floor and
//! swaps body references), so a state found here is the state sled holds. Bounded: two
//! generations of at most [`GENERATION`] tasks each; when the young one fills, the old
//! one is dropped whole. A miss reads sled, as before the cache.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

use sled::InlineArray;

use crate::model::TaskId;
use crate::store::keys;

/// Tasks per generation: the states of the tasks published, delivered or settled in
/// the last few thousand jobs, at about 100 bytes each (key, value, map slot).
const GENERATION: usize = 16_384;

/// A task's state as sled holds it: `None` once removed.
type State = Option<InlineArray>;

/// Recently written task states, by task id.
#[derive(Default)]
pub(super) struct RecentStates {
    young: Ids<State>,
    old: Ids<State>,
    /// Writes of the batch being built, entered once it is applied.
    pending: Vec<(TaskId, State)>,
}

impl RecentStates {
    /// The state of task `id` as sled holds it, if the cache knows: `Some(None)` means
    /// the task was removed.
    pub(super) fn get(&self, id: TaskId) -> Option<State> {
        self.young.get(&id).or_else(|| self.old.get(&id)).cloned()
    }

    /// Notes a write the batch being built makes (any key; only task states are kept).
    pub(super) fn staged(&mut self, key: &[u8], value: &State) {
        if let Some(id) = keys::state_id(key) {
            self.pending.push((id, value.clone()));
        }
    }

    /// The batch was applied to sled: its state writes are what sled holds now.
    pub(super) fn applied(&mut self) {
        for (id, state) in self.pending.drain(..) {
            if self.young.len() >= GENERATION {
                self.old = std::mem::take(&mut self.young);
            }
            self.young.insert(id, state);
        }
        debug_assert!(self.young.len() <= GENERATION && self.old.len() <= GENERATION);
    }

    /// The batch was not applied (its journal write failed): forget its writes.
    pub(super) fn discard(&mut self) {
        self.pending.clear();
    }
}

/// Which task bodies surely lie in the journal segment being appended to: removing
/// such a body's reference needs no read of it (only a reference into a payload file
/// changes the payload files' live bytes). A checkpoint moves bodies only out of
/// sealed segments, so a body is surely in the open segment when its task was not
/// published into any segment sealed since (nor before this writer started):
/// ids are compared with the highest id published into a sealed segment.
pub(super) struct JournalBodies {
    /// The open segment the writer last saw, and the highest id whose body went into it.
    segment: Option<u64>,
    segment_max: TaskId,
    /// Every id at or below this may have its body outside the open segment.
    sealed_max: TaskId,
}

impl JournalBodies {
    /// `existing`: ids below it may have been published before this writer started.
    pub(super) fn new(existing: TaskId) -> JournalBodies {
        JournalBodies {
            segment: None,
            segment_max: 0,
            sealed_max: existing,
        }
    }

    /// Takes note of the segment the journal appends to now (`None`: none is open):
    /// if it is not the one seen before, that one was sealed, with its bodies.
    pub(super) fn see(&mut self, open: Option<u64>) {
        if open != self.segment {
            self.sealed_max = self.sealed_max.max(self.segment_max);
            self.segment = open;
            self.segment_max = 0;
        }
    }

    /// A record holding the bodies of `ids` went into segment `into`.
    pub(super) fn appended(&mut self, into: Option<u64>, ids: impl Iterator<Item = TaskId>) {
        self.see(into);
        self.segment_max = ids.fold(self.segment_max, TaskId::max);
    }

    /// Whether task `id`'s body, if it has one, is surely in the open segment `open`.
    pub(super) fn surely_open(&mut self, open: Option<u64>, id: TaskId) -> bool {
        self.see(open);
        open.is_some() && id > self.sealed_max
    }
}

/// A map by task id. Ids are consecutive numbers, so a multiplicative hash spreads
/// them well and costs one multiplication (SipHash would cost more than the map).
type Ids<V> = HashMap<TaskId, V, BuildHasherDefault<IdHasher>>;

#[derive(Default)]
struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 ^ u64::from(b)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = n.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(byte: u8) -> State {
        Some(InlineArray::from(&[byte; 20][..]))
    }

    #[test]
    fn only_applied_state_writes_are_known_and_the_cache_stays_bounded() {
        let mut recent = RecentStates::default();
        recent.staged(&keys::state(1), &state(1));
        recent.staged(&keys::body(1), &state(9));
        assert_eq!(recent.get(1), None, "not applied yet");
        recent.applied();
        assert_eq!(recent.get(1), Some(state(1)));

        recent.staged(&keys::state(1), &None);
        recent.discard();
        assert_eq!(
            recent.get(1),
            Some(state(1)),
            "a discarded batch changes nothing"
        );
        recent.staged(&keys::state(1), &None);
        recent.applied();
        assert_eq!(recent.get(1), Some(None), "a removal is known as such");

        for id in 2..(3 * GENERATION as u64) {
            recent.staged(&keys::state(id), &state(2));
        }
        recent.applied();
        assert!(recent.young.len() + recent.old.len() <= 2 * GENERATION);
        assert_eq!(recent.get(1), None, "the oldest generation was dropped");
        assert_eq!(recent.get(3 * GENERATION as u64 - 1), Some(state(2)));
    }

    #[test]
    fn bodies_are_surely_in_the_open_segment_only_if_published_after_every_seal() {
        let mut bodies = JournalBodies::new(100);
        assert!(
            !bodies.surely_open(Some(1), 100),
            "published before the writer"
        );
        assert!(bodies.surely_open(Some(1), 101));
        assert!(!bodies.surely_open(None, 101), "no open segment");
        bodies.appended(Some(1), [101, 150, 120].into_iter());
        assert!(bodies.surely_open(Some(1), 150));
        // Segment 1 sealed, segment 9 opened: its bodies may move.
        bodies.appended(Some(9), [140].into_iter());
        assert!(!bodies.surely_open(Some(9), 150));
        assert!(
            !bodies.surely_open(Some(9), 140),
            "140 is below a sealed body's id"
        );
        assert!(bodies.surely_open(Some(9), 151));
        // Sealed without a new segment yet (a seal, a failed write).
        assert!(!bodies.surely_open(None, 151));
        assert!(!bodies.surely_open(Some(12), 140));
    }
}
