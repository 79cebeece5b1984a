//! Which queues have a `max_length` ([`Bounded`]): a table the hub keeps current and
//! connection readers read, at the cost of one atomic load per publish while no queue
//! is bounded. Publishes to unbounded queues (the default) go from the reader straight
//! to the store writer; a publish to a bounded queue goes through the hub for
//! admission (`hub/admission.rs`).

use std::collections::HashSet;
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
