//! Admission of publishes to queues with a `max_length`. Publishes to unbounded queues
//! (the default) go from the connection straight to the store writer; the connection
//! learns which queues are bounded from [`Bounded`], a table the hub keeps current, at
//! the cost of one atomic load per publish while no queue is bounded. A publish to a
//! bounded queue goes through the hub, which counts the queue's pending tasks (ready,
//! delayed, leased) plus the tasks of publishes admitted but not yet durable, and
//! either reserves room and submits the publish, or answers `QUEUE_FULL` with nothing
//! stored. The reservation is released when the publish's store job completes.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;

use parking_lot::RwLock;

use crate::broker::{Committed, Engine};

/// Which queues have a `max_length`, as the connections need to know it.
#[derive(Debug, Default)]
pub(crate) struct Bounded {
    /// False while no queue is bounded: the fast path.
    any: AtomicBool,
    /// Whether queues are bounded by default (`queue.max_length` above 0).
    default_bounded: AtomicBool,
    /// Queues bounded differently from the default.
    exceptions: RwLock<HashSet<Arc<str>>>,
}

impl Bounded {
    /// Whether any task of `tasks` goes to a bounded queue.
    pub(crate) fn applies(&self, tasks: &[Committed]) -> bool {
        if !self.any.load(Relaxed) {
            return false;
        }
        let default_bounded = self.default_bounded.load(Relaxed);
        let exceptions = self.exceptions.read();
        let mut last: Option<&str> = None;
        for t in tasks {
            if last == Some(&*t.queue) {
                continue;
            }
            last = Some(&t.queue);
            if exceptions.contains(&t.queue) != default_bounded {
                return true;
            }
        }
        false
    }

    /// Re-reads every queue's bound from the engine (after a configuration change).
    pub(crate) fn refresh(&self, engine: &Engine, default_max_length: u64) {
        let default_bounded = default_max_length > 0;
        let exceptions: HashSet<Arc<str>> = engine.max_length_exceptions().into_iter().collect();
        let any = default_bounded || !exceptions.is_empty();
        *self.exceptions.write() = exceptions;
        self.default_bounded.store(default_bounded, Relaxed);
        self.any.store(any, Relaxed);
    }
}

/// Tasks admitted per queue, released when their store job completes.
pub(crate) type Reservation = Vec<(Arc<str>, u64)>;

/// The hub's count of admitted, not yet durable tasks per bounded queue.
#[derive(Debug, Default)]
pub(crate) struct Reservations {
    held: HashMap<Arc<str>, u64>,
}

/// A publish that would overfill a queue.
#[derive(Debug)]
pub(crate) struct QueueFull {
    pub(crate) queue: Arc<str>,
    pub(crate) pending: u64,
    pub(crate) adding: u64,
    pub(crate) max_length: u64,
}

impl std::fmt::Display for QueueFull {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "queue {} holds {} pending tasks and its max_length is {}: {} more do not fit; nothing was published",
            self.queue, self.pending, self.max_length, self.adding
        )
    }
}

impl Reservations {
    /// Admits `tasks` if every bounded queue they go to has room, and reserves it.
    pub(crate) fn admit(
        &mut self,
        engine: &Engine,
        tasks: &[Committed],
    ) -> Result<Reservation, QueueFull> {
        let mut per_queue: Reservation = Vec::new();
        for t in tasks {
            match per_queue.iter_mut().find(|(q, _)| *q == t.queue) {
                Some((_, n)) => *n += 1,
                None => per_queue.push((t.queue.clone(), 1)),
            }
        }
        per_queue.retain(|(q, _)| engine.max_length(q) > 0);
        for (queue, adding) in &per_queue {
            let max_length = engine.max_length(queue);
            let pending = engine.pending_count(queue) + self.held.get(queue).copied().unwrap_or(0);
            if pending.saturating_add(*adding) > max_length {
                return Err(QueueFull {
                    queue: queue.clone(),
                    pending,
                    adding: *adding,
                    max_length,
                });
            }
        }
        for (queue, n) in &per_queue {
            *self.held.entry(queue.clone()).or_default() += n;
        }
        Ok(per_queue)
    }

    /// The store job of an admitted publish completed (its tasks are in the engine's
    /// count now, or were not stored).
    pub(crate) fn release(&mut self, reservation: Reservation) {
        for (queue, n) in reservation {
            if let Some(held) = self.held.get_mut(&queue) {
                *held = held.saturating_sub(n);
                if *held == 0 {
                    self.held.remove(&queue);
                }
            }
        }
    }
}
