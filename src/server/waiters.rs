//! Who waits for which task's result (`WaitResult`): a registry shared by the
//! connection writer halves (which register, check the store, and time out) and the
//! store writer's completions (which wake the waiters once a task's final state is
//! durable). Whoever removes a waiter from the registry answers it, so every wait is
//! answered exactly once however the check, the wake-up and the timeout interleave.
//!
//! The registry holds no strong outbox sender: a closed connection's waits do not keep
//! its writer half alive, and the writer half removes them when it ends.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};

use parking_lot::Mutex;

use super::msg::{Final, Outbound, WeakOutTx};
use crate::broker::ConnId;
use crate::model::{Mutation, TaskId, TaskStatus};

impl Final {
    /// The task a mutation finishes, and how. A removal finishes it as removed (a task
    /// dropped at its expiry); an ack whose queue keeps no result is a removal too, but
    /// its settle names `Succeeded` itself.
    pub(crate) fn of(m: &Mutation) -> Option<(TaskId, Final)> {
        match m {
            Mutation::Succeed { id, .. } => Some((*id, Final::Succeeded)),
            Mutation::Remove { id } => Some((*id, Final::Removed)),
            Mutation::Patch { id, patch } => match patch.status {
                Some(TaskStatus::Dead) => Some((*id, Final::Dead)),
                Some(TaskStatus::Succeeded) => Some((*id, Final::Succeeded)),
                _ => None,
            },
            _ => None,
        }
    }
}

struct Waiter {
    conn: ConnId,
    req: u64,
    out: WeakOutTx,
}

/// The registry of waits, by task.
#[derive(Default)]
pub(crate) struct Waiters {
    /// Registered waiters; read without the lock so that a finishing task with nobody
    /// waiting (the common case) costs one atomic load.
    count: AtomicUsize,
    by_task: Mutex<HashMap<TaskId, Vec<Waiter>>>,
}

impl Waiters {
    /// Registers request `req` of connection `conn` as waiting for `task`.
    pub(crate) fn register(&self, task: TaskId, conn: ConnId, req: u64, out: WeakOutTx) {
        self.by_task
            .lock()
            .entry(task)
            .or_default()
            .push(Waiter { conn, req, out });
        self.count.fetch_add(1, Ordering::Relaxed);
    }

    /// Removes the waiter if it is still registered; true means the caller answers it.
    pub(crate) fn claim(&self, task: TaskId, conn: ConnId, req: u64) -> bool {
        let mut by_task = self.by_task.lock();
        let Some(list) = by_task.get_mut(&task) else {
            return false;
        };
        let Some(pos) = list.iter().position(|w| w.conn == conn && w.req == req) else {
            return false;
        };
        list.swap_remove(pos);
        if list.is_empty() {
            by_task.remove(&task);
        }
        self.count.fetch_sub(1, Ordering::Relaxed);
        true
    }

    /// `task` reached `state` durably: hands every waiter's answer to its connection.
    pub(crate) fn wake(&self, task: TaskId, state: Final) {
        if self.count.load(Ordering::Relaxed) == 0 {
            return;
        }
        let Some(list) = self.by_task.lock().remove(&task) else {
            return;
        };
        self.count.fetch_sub(list.len(), Ordering::Relaxed);
        for w in list {
            if let Some(out) = w.out.upgrade() {
                let _ = out.send(Outbound::WaitDone {
                    req: w.req,
                    task,
                    state,
                });
            }
        }
    }

    /// The tasks of `ids` that someone waits for.
    pub(crate) fn waited_among(&self, ids: &[TaskId]) -> Vec<TaskId> {
        if self.count.load(Ordering::Relaxed) == 0 {
            return Vec::new();
        }
        let by_task = self.by_task.lock();
        ids.iter()
            .copied()
            .filter(|id| by_task.contains_key(id))
            .collect()
    }

    /// Registered waiters.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.count.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use tokio::sync::mpsc;

    use super::*;

    #[test]
    fn each_waiter_is_answered_by_exactly_one_party() {
        let waiters = Waiters::default();
        let (tx, mut rx) = mpsc::unbounded_channel();
        waiters.register(7, 1, 10, tx.downgrade());
        waiters.register(7, 1, 11, tx.downgrade());
        waiters.register(8, 2, 10, tx.downgrade());
        assert_eq!(waiters.len(), 3);
        // The check path claims one; the wake-up then answers only the other.
        assert!(waiters.claim(7, 1, 10));
        assert!(!waiters.claim(7, 1, 10), "claimed twice");
        waiters.wake(7, Final::Succeeded);
        match rx.try_recv() {
            Ok(Outbound::WaitDone {
                req: 11,
                task: 7,
                state: Final::Succeeded,
            }) => {}
            other => panic!("unexpected {other:?}"),
        }
        assert!(rx.try_recv().is_err());
        assert!(!waiters.claim(7, 1, 11), "woken waiters are gone");
        assert_eq!(waiters.len(), 1);
        // A wake-up for a task nobody waits for does nothing.
        waiters.wake(9, Final::Dead);
        assert!(rx.try_recv().is_err());
        // A closed connection's waiter is dropped without an answer.
        drop(tx);
        waiters.wake(8, Final::Dead);
        assert_eq!(waiters.len(), 0);
    }

    #[test]
    fn finishing_mutations_are_recognised() {
        use crate::model::StatePatch;
        let dead = Mutation::Patch {
            id: 3,
            patch: StatePatch {
                status: Some(TaskStatus::Dead),
                ..StatePatch::default()
            },
        };
        let retry = Mutation::Patch {
            id: 3,
            patch: StatePatch {
                not_before_ms: Some(5),
                ..StatePatch::default()
            },
        };
        let ack = Mutation::Succeed {
            id: 4,
            result: bytes::Bytes::new(),
            updated_ms: 1,
        };
        assert_eq!(Final::of(&dead), Some((3, Final::Dead)));
        assert_eq!(Final::of(&ack), Some((4, Final::Succeeded)));
        assert_eq!(Final::of(&retry), None);
        let dropped = Mutation::Remove { id: 3 };
        assert_eq!(Final::of(&dropped), Some((3, Final::Removed)));
    }
}
