//! The bodies of recently published tasks, kept in memory so that a delivery soon
//! after its publish does not read the body back from its journal segment (a sled
//! lookup of the reference, a `pread`, a checksum). Filled and emptied only by the
//! writer, after the batch that inserted or removed the body is applied; read by
//! [`super::Store::get_body`]. What does not live here: bodies that outlived the cache
//! (a backlog is read from disk), and any other record.
//!
//! A body never changes while its task lives (a checkpoint moves its bytes, not their
//! content), so a body found here is the body on disk. Bounded by bytes: two
//! generations of at most half the capacity each (a body counts its length plus
//! [`ENTRY_OVERHEAD`]); when the young one fills, the old one is dropped whole. The
//! capacity is a share of the configured `cache_bytes` (see `open.rs`).

use std::sync::atomic::{AtomicBool, Ordering::Relaxed};

use bytes::Bytes;
use parking_lot::Mutex;

use crate::model::{IdMap, TaskId};

/// What one cached body costs beyond its bytes: the map slot, the `Bytes` handle and
/// the allocation's header, roughly.
const ENTRY_OVERHEAD: usize = 64;

/// Encoded bodies (as `record::encode_body` wrote them) by task id.
pub(crate) struct BodyCache {
    generations: Mutex<Generations>,
    /// Bytes one generation may hold.
    generation_bytes: usize,
    /// Off on a cluster member that does not lead, which delivers nothing: its writer
    /// then neither copies bodies for the cache nor keeps them (`set_enabled`).
    /// Changed only under the `generations` lock, so that `applied` sees it settled.
    enabled: AtomicBool,
}

#[derive(Default)]
struct Generations {
    young: IdMap<TaskId, Bytes>,
    young_bytes: usize,
    old: IdMap<TaskId, Bytes>,
}

fn cost(body: &Bytes) -> usize {
    body.len() + ENTRY_OVERHEAD
}

impl BodyCache {
    /// A cache of at most `capacity` bytes (0 caches nothing).
    pub(crate) fn new(capacity: usize) -> BodyCache {
        BodyCache {
            generations: Mutex::new(Generations::default()),
            generation_bytes: capacity / 2,
            enabled: AtomicBool::new(true),
        }
    }

    /// Whether bodies are cached now (the writer copies a body for the cache only
    /// then; a body that finds the cache turned on meanwhile without its copy is not
    /// cached: `applied` skips empty ones).
    pub(crate) fn enabled(&self) -> bool {
        self.generation_bytes > 0 && self.enabled.load(Relaxed)
    }

    /// Turns caching on or off; off empties the cache (a body kept while off could
    /// outlive its task: removals are not applied to a cache that is off).
    pub(crate) fn set_enabled(&self, on: bool) {
        let mut g = self.generations.lock();
        self.enabled.store(on, Relaxed);
        if !on {
            g.young.clear();
            g.old.clear();
            g.young_bytes = 0;
        }
        debug_assert!(on || (g.young.is_empty() && g.old.is_empty()));
    }

    /// The encoded body of task `id`, if cached.
    pub(crate) fn get(&self, id: TaskId) -> Option<Bytes> {
        let g = self.generations.lock();
        g.young.get(&id).or_else(|| g.old.get(&id)).cloned()
    }

    /// Caches the bodies just made durable and the removals just applied, in this
    /// order (a task published and settled in the same batch is not kept). A body
    /// must own its bytes: a slice would keep a larger buffer alive, uncounted.
    pub(crate) fn applied(
        &self,
        inserted: impl Iterator<Item = (TaskId, Bytes)>,
        removed: &[TaskId],
    ) {
        if self.generation_bytes == 0 {
            return;
        }
        let mut g = self.generations.lock();
        if !self.enabled.load(Relaxed) {
            debug_assert!(g.young.is_empty() && g.old.is_empty());
            return;
        }
        for (id, body) in inserted {
            // Not copied for the cache (it was off when the body was staged): an
            // encoded body is never empty.
            if body.is_empty() {
                continue;
            }
            let size = cost(&body);
            if size > self.generation_bytes {
                continue;
            }
            if g.young_bytes + size > self.generation_bytes {
                g.old = std::mem::take(&mut g.young);
                g.young_bytes = 0;
            }
            g.young_bytes += size;
            if let Some(replaced) = g.young.insert(id, body) {
                g.young_bytes -= cost(&replaced);
            }
        }
        for id in removed {
            if let Some(body) = g.young.remove(id) {
                g.young_bytes -= cost(&body);
            }
            g.old.remove(id);
        }
        debug_assert!(g.young_bytes <= self.generation_bytes);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(len: usize, byte: u8) -> Bytes {
        Bytes::from(vec![byte; len])
    }

    #[test]
    fn bodies_are_kept_until_removed_or_two_generations_old_and_stay_within_capacity() {
        // Room for two bodies of 36 + 64 bytes per generation.
        let cache = BodyCache::new(2 * 200);
        cache.applied([(1, body(36, 1)), (2, body(36, 2))].into_iter(), &[]);
        assert_eq!(cache.get(1), Some(body(36, 1)));
        cache.applied([(3, body(36, 3))].into_iter(), &[2]);
        assert_eq!(cache.get(2), None, "removed");
        assert_eq!(cache.get(1), Some(body(36, 1)), "in the old generation");
        cache.applied([(4, body(36, 4)), (5, body(36, 5))].into_iter(), &[]);
        assert_eq!(cache.get(1), None, "two generations old");
        assert_eq!(cache.get(5), Some(body(36, 5)));
        cache.applied([(6, body(36, 6))].into_iter(), &[6]);
        assert_eq!(cache.get(6), None, "published and settled in one batch");
        cache.applied([(7, body(1000, 7))].into_iter(), &[]);
        assert_eq!(cache.get(7), None, "larger than a generation");
        let g = cache.generations.lock();
        let held: usize = g.young.values().chain(g.old.values()).map(cost).sum();
        assert!(held <= 400, "{held} bytes held");
    }

    #[test]
    fn a_cache_turned_off_is_emptied_keeps_nothing_and_skips_bodies_not_copied() {
        let cache = BodyCache::new(2 * 200);
        cache.applied([(1, body(36, 1))].into_iter(), &[]);
        assert!(cache.enabled());
        cache.set_enabled(false);
        assert!(!cache.enabled());
        assert_eq!(cache.get(1), None, "emptied");
        cache.applied([(2, body(36, 2))].into_iter(), &[]);
        assert_eq!(cache.get(2), None, "kept nothing while off");
        cache.set_enabled(true);
        // Staged while it was off (not copied), applied once it is on: not kept.
        cache.applied([(3, Bytes::new()), (4, body(36, 4))].into_iter(), &[]);
        assert_eq!(cache.get(3), None);
        assert_eq!(cache.get(4), Some(body(36, 4)));
    }

    #[test]
    fn a_cache_of_no_bytes_holds_nothing() {
        let cache = BodyCache::new(0);
        cache.applied([(1, body(1, 1))].into_iter(), &[]);
        assert_eq!(cache.get(1), None);
    }
}
