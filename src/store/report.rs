//! What the writer tells a job's completion besides success: which inserts were
//! duplicates of an earlier publish with the same idempotency key or producer number,
//! why a numbered publish was refused, and what a retention sweep did. Plain data.

use std::sync::Arc;

use crate::model::TaskId;

/// An insert that was not applied because its idempotency key is already known.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Duplicate {
    /// Position of the insert among the job's mutations.
    pub index: usize,
    /// The task the key's first publish created.
    pub original: TaskId,
}

/// Why a numbered publish ([`Mutation::Numbered`](crate::model::Mutation::Numbered))
/// was refused. Nothing of its job was applied; the job itself succeeds, so that a
/// replicated cluster applies the entry on every member alike.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SequenceRefusal {
    /// The number is below the oldest the store remembers for the producer: whether a
    /// publish with it was applied before is no longer known.
    TooOld {
        /// The oldest number still remembered.
        floor: u64,
    },
    /// The number was applied before, by a publish of a different number of tasks:
    /// the producer reused it for another publish.
    Reused {
        /// How many tasks the first publish with the number had.
        tasks: u32,
    },
}

/// What one retention sweep job did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SweepStats {
    /// Expiry-index entries examined (and removed).
    pub examined: u32,
    /// Succeeded or dead tasks removed.
    pub removed_tasks: u32,
    /// Idempotency keys and producer records forgotten.
    pub removed_keys: u32,
    /// Dead tasks removed, with their queue (so the broker drops them from its dead
    /// sets).
    pub removed_dead: Vec<(Arc<str>, TaskId)>,
    /// True when the sweep stopped at its limit: more entries may be due.
    pub more: bool,
}

impl SweepStats {
    pub(crate) fn note_dead(&mut self, queue: &str, id: TaskId) {
        // Consecutive removals are usually of one queue: share its name.
        let name = match self.removed_dead.last() {
            Some((q, _)) if &**q == queue => q.clone(),
            _ => Arc::from(queue),
        };
        self.removed_dead.push((name, id));
    }
}

/// Everything the writer reports to a job's completion.
#[derive(Debug, Clone, Copy, Default)]
pub struct JobReport<'a> {
    /// Inserts of the job that were duplicates, in order.
    pub duplicates: &'a [Duplicate],
    /// Set for a job holding a [`Mutation::Sweep`](crate::model::Mutation::Sweep).
    pub sweep: Option<&'a SweepStats>,
    /// Set for a numbered publish that was refused (then nothing of it was applied).
    pub refused: Option<SequenceRefusal>,
}
