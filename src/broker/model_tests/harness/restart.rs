//! The model test's crash and restart: what the store kept decides every task's and
//! schedule's state in the model, and a fresh engine is rebuilt from it.

use super::*;

impl Harness {
    /// kill -9 and start again `down_ms` later: connections and fires in flight are
    /// gone, the store keeps what a crash keeps, and a fresh engine is rebuilt from
    /// it: schedules, then tasks in id order.
    pub(super) fn restart(&mut self, keep: u8, down_ms: u64) {
        self.now += 1 + down_ms;
        let now = self.now;
        self.store.crash(keep);
        self.engine = new_engine(now);
        self.slots = [None; SLOTS];
        self.subs.clear();
        self.delivered_at = Default::default();
        // Connection ids start again at 1 in a new process: stale deliveries held by
        // clients now carry ids of other connections, and only tokens fence them.
        self.next_conn = 1;
        self.load_schedules();
        let mut buried = BTreeSet::new();
        let mut unborn = Vec::new();
        for (id, t) in self.tasks.iter_mut() {
            let Some(rec) = self.store.durable.tasks.get(id) else {
                match t.state {
                    MState::Submitted => unborn.push(*id),
                    MState::Acked | MState::Dropped => {}
                    _ => panic!("task {id} lost while {:?}", t.state),
                }
                continue;
            };
            assert_ne!(t.state, MState::Acked, "acked task {id} came back");
            t.attempts = rec.attempts;
            t.phantom = false;
            t.unwritten_since = None;
            t.last_error = rec.last_error.clone();
            // Only a task never delivered (as stored) still expires.
            t.expiry = 0;
            t.state = match rec.status {
                TaskStatus::Dead => MState::Dead,
                TaskStatus::Succeeded => panic!("the engine never keeps results"),
                // Leases are not persisted: a leased task is pending again with its
                // attempts counted, or dead if that was its last one.
                TaskStatus::Pending if t.exhausted() => {
                    buried.insert(*id);
                    t.last_error = Some(REASON_RESTARTED.to_owned());
                    MState::Dead
                }
                TaskStatus::Pending => {
                    if rec.attempts == 0 {
                        t.expiry = rec.expires_ms;
                    }
                    MState::Ready {
                        not_before: rec.not_before_ms,
                        delayed: rec.not_before_ms > now,
                    }
                }
            };
        }
        for id in unborn {
            self.tasks.remove(&id);
        }
        let durable = self.store.durable.tasks.clone();
        for (id, state) in &durable {
            match self.engine.recover_task(*id, state, now) {
                Some(m) => {
                    assert!(buried.remove(id), "task {id} buried at recovery");
                    let Mutation::Patch { patch, .. } = &m else {
                        panic!("recovery fixes are patches, got {m:?}");
                    };
                    assert_eq!(patch.status, Some(TaskStatus::Dead));
                    assert_eq!(patch.last_error, Some(Some(REASON_RESTARTED.into())));
                    self.store.persist(m, false);
                }
                None => assert!(!buried.contains(id), "task {id} not buried at recovery"),
            }
        }
    }
}
