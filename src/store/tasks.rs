//! The task records changed since they were last applied to sled, in memory: a task's
//! state (`S`), body reference (`B`) and retained result (`R`). The journal is the
//! durable truth of these changes; sled gets only what is still there when a
//! generation is applied, so a task published and settled within one generation
//! costs journal bytes and never a sled write of its body reference. What does not
//! live here: every other kind of record (queues, schedules, idempotency keys, the
//! expiry index, metadata go to sled with each batch), and anything not yet journaled.
//!
//! Generations: the writer merges each journaled group into the *active* one; at a
//! journal seal, or when the active one outgrows its budget, it is *frozen* (immutable,
//! shared by `Arc`) and a new one starts. Frozen generations are applied to sled oldest
//! first by whoever calls [`TaskTable::apply_oldest`] (the checkpoint thread before it
//! moves bodies and flushes; the writer when too many wait, or to settle everything),
//! and dropped once applied. Readers look in the active generation, then the frozen
//! ones newest first, then sled: a change is always visible in exactly one of those
//! places or a newer one.
//!
//! Architecture Invariant: sled is never *behind* the table for a key the table does
//! not hold, and a generation is applied only after every older one. Applying one may
//! skip a write a newer generation overrides (the newer one carries it to sled; after
//! a crash, replaying the journal from the checkpoint floor rewrites it), so sled may
//! lag for such keys only while the newer generation is in memory. A task is *fresh*
//! in a generation when neither sled nor an older generation holds any of its records
//! (ids at or past the watermark when the generation started): its removals are
//! nothing to apply, and a fresh task whose records are all removed leaves the table.

use std::collections::{BTreeMap, VecDeque};
use std::io;
use std::sync::Arc;

use parking_lot::{Mutex, RwLock};
use sled::InlineArray;

use super::keys;
use super::payload::Bodies;
use super::pool::Db;
use super::record::{self, BodyFile, BodyRef, StoredBody};
use crate::model::{IdMap, TaskId};

/// A record's value: `None` once removed.
pub(crate) type Value = Option<InlineArray>;

/// Task ids applied to sled per `sled::Batch` (bounds the batch and the time a reader
/// lock is held while deciding what to skip).
const APPLY_CHUNK: usize = 2048;

/// Frozen generations that may wait for the checkpoint thread; the writer applies the
/// oldest itself before freezing one more (bounds the table's memory).
pub(crate) const MAX_FROZEN: usize = 2;

/// What one task's change costs in memory beyond its values' bytes: the map slot and
/// the values' allocation headers, roughly.
const CHANGE_OVERHEAD: usize = 96;

/// The three task records a generation holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Slot {
    State = 0,
    Body = 1,
    Result = 2,
}

const SLOTS: [Slot; 3] = [Slot::State, Slot::Body, Slot::Result];

impl Slot {
    /// The slot and task of a task record's key; `None` for any other key.
    pub(crate) fn of_key(key: &[u8]) -> Option<(Slot, TaskId)> {
        if key.len() != keys::TASK_KEY_LEN {
            return None;
        }
        let slot = match key[0] {
            keys::STATE => Slot::State,
            keys::BODY => Slot::Body,
            keys::RESULT => Slot::Result,
            _ => return None,
        };
        Some((slot, keys::task_id(key)?))
    }

    pub(crate) fn key(self, id: TaskId) -> [u8; keys::TASK_KEY_LEN] {
        match self {
            Slot::State => keys::state(id),
            Slot::Body => keys::body(id),
            Slot::Result => keys::result(id),
        }
    }
}

/// One task's changes in one generation (or one group being staged).
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct Change {
    /// Per slot: untouched (`None`), removed (`Some(None)`) or written.
    slots: [Option<Value>; 3],
    /// Per slot, the bytes of its written value (0 otherwise), kept beside it for
    /// [`cost`](Self::cost): a value's length is read through its pointer, a cache
    /// miss once another group wrote it (`Change::cost` was 2.5% of a busy leader).
    lens: [u32; 3],
    /// Neither sled nor an older generation holds any record of this task.
    fresh: bool,
}

impl Change {
    /// The slot's value as of this change: `None` if it does not know (look older).
    pub(crate) fn get(&self, slot: Slot) -> Option<Value> {
        match &self.slots[slot as usize] {
            Some(value) => Some(value.clone()),
            None if self.fresh => Some(None),
            None => None,
        }
    }

    pub(crate) fn set(&mut self, slot: Slot, value: Value) {
        self.lens[slot as usize] = value.as_ref().map_or(0, |v| v.len() as u32);
        self.slots[slot as usize] = Some(value);
    }

    /// Lays `newer` over this change (this one's freshness stands: it is older).
    fn overlay(&mut self, newer: Change) {
        let slots = self.slots.iter_mut().zip(&mut self.lens);
        for ((mine, my_len), (theirs, their_len)) in
            slots.zip(newer.slots.into_iter().zip(newer.lens))
        {
            if theirs.is_some() {
                *mine = theirs;
                *my_len = their_len;
            }
        }
        debug_assert!(self.lens_match());
    }

    /// Whether `lens` says each slot's length (what `cost` relies on).
    fn lens_match(&self) -> bool {
        self.slots.iter().zip(&self.lens).all(|(slot, &len)| {
            slot.as_ref()
                .and_then(|v| v.as_ref())
                .map_or(0, |v| v.len())
                == len as usize
        })
    }

    /// A fresh task with nothing left: the table need not remember it.
    fn is_void(&self) -> bool {
        self.fresh && self.slots.iter().all(|s| matches!(s, None | Some(None)))
    }

    fn cost(&self) -> usize {
        debug_assert!(self.lens_match(), "a slot's length is kept with it");
        CHANGE_OVERHEAD + self.lens.iter().map(|&len| len as usize).sum::<usize>()
    }

    fn touches(&self, slot: Slot) -> bool {
        self.slots[slot as usize].is_some()
    }
}

/// Changes by task id.
pub(crate) type Changes = Ids<Change>;

struct Generations {
    active: Changes,
    /// Estimated bytes of `active`.
    active_cost: usize,
    /// Oldest first.
    frozen: VecDeque<Arc<Changes>>,
    /// Tasks with ids from here on are fresh in the active generation.
    fresh_from: TaskId,
}

/// The shared table: written by the writer thread only, read by every reader.
pub(crate) struct TaskTable {
    gens: RwLock<Generations>,
    /// Held while a generation is applied, so that they are applied one at a time,
    /// oldest first.
    applying: Mutex<()>,
    /// Bytes past which the active generation is frozen.
    budget: usize,
}

impl TaskTable {
    /// A table whose active generation holds about `budget` bytes at most, for a
    /// store whose task ids are all below `fresh_from`.
    pub(crate) fn new(budget: usize, fresh_from: TaskId) -> TaskTable {
        TaskTable {
            gens: RwLock::new(Generations {
                active: Changes::default(),
                active_cost: 0,
                frozen: VecDeque::new(),
                fresh_from,
            }),
            applying: Mutex::new(()),
            budget,
        }
    }

    /// The value of task `id`'s `slot` record if the table knows it (`Some(None)`:
    /// removed, or never written); `None`: sled holds the truth.
    pub(crate) fn get(&self, slot: Slot, id: TaskId) -> Option<Value> {
        let gens = self.gens.read();
        std::iter::once(&gens.active)
            .chain(gens.frozen.iter().rev().map(|g| &**g))
            .find_map(|g| g.get(&id).and_then(|c| c.get(slot)))
    }

    /// The writer: a journaled group's changes join the active generation (a group's
    /// changes are never fresh: whether a task is, is decided here). Returns whether
    /// the generation outgrew its budget (then freeze it).
    pub(crate) fn merge(&self, group: &mut Changes) -> bool {
        if group.is_empty() {
            return false;
        }
        let mut gens = self.gens.write();
        let Generations {
            active,
            active_cost,
            fresh_from,
            ..
        } = &mut *gens;
        for (id, change) in group.drain() {
            match active.entry(id) {
                std::collections::hash_map::Entry::Occupied(mut e) => {
                    let before = e.get().cost();
                    e.get_mut().overlay(change);
                    if e.get().is_void() {
                        e.remove();
                        *active_cost = active_cost.saturating_sub(before);
                    } else {
                        *active_cost = (*active_cost + e.get().cost()).saturating_sub(before);
                    }
                }
                std::collections::hash_map::Entry::Vacant(e) => {
                    let mut change = change;
                    debug_assert!(!change.fresh, "a group's change is never fresh");
                    change.fresh = id >= *fresh_from;
                    if !change.is_void() {
                        *active_cost += change.cost();
                        e.insert(change);
                    }
                }
            }
        }
        gens.active_cost > self.budget
    }

    /// The writer: freezes the active generation (nothing if it is empty); the next
    /// one's fresh tasks are those from `watermark` on (every id inserted so far is
    /// below it). Returns the number of frozen generations now waiting.
    pub(crate) fn freeze(&self, watermark: TaskId) -> usize {
        let mut gens = self.gens.write();
        gens.fresh_from = gens.fresh_from.max(watermark);
        if !gens.active.is_empty() {
            let active = std::mem::take(&mut gens.active);
            gens.active_cost = 0;
            gens.frozen.push_back(Arc::new(active));
        }
        gens.frozen.len()
    }

    /// No task id below `id` is fresh from now on (ids written to sled by other means).
    pub(crate) fn raise_fresh_from(&self, id: TaskId) {
        let mut gens = self.gens.write();
        gens.fresh_from = gens.fresh_from.max(id);
    }

    /// Frozen generations waiting to be applied.
    pub(crate) fn frozen(&self) -> usize {
        self.gens.read().frozen.len()
    }

    /// Applies the oldest frozen generation to sled and drops it; `false` if there was
    /// none. A body reference removed from sled is removed by compare-and-swap (the
    /// checkpoint may be swapping it to a payload file), and its payload file's live
    /// bytes drop. An error leaves the generation in place (the store then fails).
    pub(crate) fn apply_oldest(&self, db: &Db, bodies: &Bodies) -> io::Result<bool> {
        let _one_at_a_time = self.applying.lock();
        let Some(gen) = self.gens.read().frozen.front().cloned() else {
            return Ok(false);
        };
        let mut ids: Vec<TaskId> = gen.keys().copied().collect();
        ids.sort_unstable();
        let mut writes: Vec<(TaskId, Slot, &Value)> = Vec::with_capacity(APPLY_CHUNK);
        for chunk in ids.chunks(APPLY_CHUNK) {
            writes.clear();
            {
                let gens = self.gens.read();
                debug_assert!(gens.frozen.front().is_some_and(|g| Arc::ptr_eq(g, &gen)));
                let newer = || {
                    gens.frozen
                        .iter()
                        .skip(1)
                        .map(|g| &**g)
                        .chain(std::iter::once(&gens.active))
                };
                for id in chunk {
                    let change = &gen[id];
                    for slot in SLOTS {
                        let Some(value) = &change.slots[slot as usize] else {
                            continue;
                        };
                        if value.is_none() && change.fresh {
                            continue; // nothing of it reached sled
                        }
                        if newer().any(|g| g.get(id).is_some_and(|c| c.touches(slot))) {
                            continue; // the newer generation carries it
                        }
                        writes.push((*id, slot, value));
                    }
                }
            }
            let mut batch = sled::Batch::default();
            for &(id, slot, value) in &writes {
                let key = slot.key(id);
                match (slot, value) {
                    (Slot::Body, None) => remove_body(db, bodies, &key)?,
                    (_, None) => batch.remove(&key[..]),
                    (_, Some(value)) => batch.insert(&key[..], value.clone()),
                }
            }
            db.apply_batch(batch)?;
        }
        let popped = self.gens.write().frozen.pop_front();
        debug_assert!(popped.is_some_and(|g| Arc::ptr_eq(&g, &gen)));
        Ok(true)
    }

    /// Every `slot` record the table knows, by id (`None`: removed), for a scan of
    /// sled's records to be corrected with.
    pub(crate) fn records(&self, slot: Slot) -> BTreeMap<TaskId, Value> {
        let gens = self.gens.read();
        let mut records = BTreeMap::new();
        // Oldest first, so that newer generations overwrite.
        for g in gens.frozen.iter().map(|g| &**g).chain([&gens.active]) {
            for (id, change) in g {
                if let Some(value) = change.get(slot) {
                    records.insert(*id, value);
                }
            }
        }
        records
    }

    /// Whether the table holds nothing.
    pub(crate) fn is_empty(&self) -> bool {
        let gens = self.gens.read();
        gens.active.is_empty() && gens.frozen.is_empty()
    }
}

/// Removes a body reference from sled by compare-and-swap; a reference into a payload
/// file frees its bytes there.
fn remove_body(db: &Db, bodies: &Bodies, key: &[u8]) -> io::Result<()> {
    loop {
        let Some(current) = db.get(key)? else {
            return Ok(());
        };
        if db
            .compare_and_swap(key, Some(&current), None::<InlineArray>)?
            .is_err()
        {
            continue; // swapped to a payload file meanwhile: read again
        }
        if let Ok(StoredBody::Ref(BodyRef {
            file: BodyFile::Payload(n),
            len,
            ..
        })) = record::decode_stored_body(&current)
        {
            bodies.freed(n, u64::from(len));
        }
        return Ok(());
    }
}

/// A map by task id (`model::IdMap`).
pub(crate) type Ids<V> = IdMap<TaskId, V>;
