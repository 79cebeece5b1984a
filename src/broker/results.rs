//! What the engine knows about one task for a status read (who holds its lease, and
//! until when) and the bookkeeping of finished tasks the store removes. The task's
//! persisted state and result are the store's; this is only the in-memory part.

use super::admin::LeaseView;
use super::engine::Engine;
use crate::model::TaskId;

impl Engine {
    /// The live lease of `task`, if it is leased.
    pub fn lease_of(&self, task: TaskId) -> Option<LeaseView> {
        self.leases.get(&task).map(|l| LeaseView {
            conn: l.conn,
            sub: l.sub,
            deadline_ms: l.deadline_ms,
            attempt: l.entry.attempts,
        })
    }

    /// The retention sweep removed dead task `id` of `queue`.
    pub fn forget_dead(&mut self, queue: &str, id: TaskId) {
        if let Some(&idx) = self.by_name.get(queue) {
            self.queues[idx as usize].dead.remove(&id);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use bytes::Bytes;

    use super::*;
    use crate::broker::{Committed, Effect, EngineConfig};
    use crate::model::{Mutation, QueueConfig, TaskStatus};

    const T0: u64 = 1_000_000;

    fn deliver_one(e: &mut Engine, queue: &str, id: TaskId) -> u64 {
        e.publish_committed(
            &[Committed {
                queue: Arc::from(queue),
                id,
                priority: 0,
                not_before_ms: 0,
                max_attempts: 0,
                lease_ms: 0,
                expires_ms: 0,
            }],
            T0,
        );
        e.subscribe(1, id, queue, 1).unwrap();
        let mut out = Vec::new();
        e.dispatch(T0, &mut out);
        out.into_iter()
            .find_map(|x| match x {
                Effect::Deliver(d) => Some(d.token),
                Effect::Persist(_) => None,
            })
            .expect("delivered")
    }

    #[test]
    fn a_lease_is_visible_until_settled_and_acks_follow_result_retention() {
        let mut e = Engine::new(EngineConfig::default(), T0);
        e.set_queue_config(
            "none",
            QueueConfig {
                result_ttl_ms: 0,
                ..QueueConfig::default()
            },
        );
        let token = deliver_one(&mut e, "kept", 1);
        let lease = e.lease_of(1).expect("leased");
        assert_eq!((lease.conn, lease.attempt), (1, 1));
        assert_eq!(lease.deadline_ms, T0 + QueueConfig::default().lease_ms);
        let m = e
            .ack(1, 1, token, Bytes::from_static(b"r"), T0 + 1)
            .unwrap();
        assert!(matches!(m.change, Mutation::Succeed { id: 1, .. }));
        assert_eq!(e.lease_of(1), None);

        let token = deliver_one(&mut e, "none", 2);
        let m = e
            .ack(1, 2, token, Bytes::from_static(b"r"), T0 + 1)
            .unwrap();
        assert_eq!(
            m.change,
            Mutation::Remove { id: 2 },
            "the queue keeps no results"
        );
    }

    #[test]
    fn an_ack_without_a_result_keeps_a_record_only_on_a_keep_acked_queue() {
        let mut e = Engine::new(EngineConfig::default(), T0);
        e.set_queue_config(
            "all",
            QueueConfig {
                keep_acked: true,
                ..QueueConfig::default()
            },
        );
        let token = deliver_one(&mut e, "default", 1);
        let m = e.ack(1, 1, token, Bytes::new(), T0 + 1).unwrap();
        assert_eq!(
            m.change,
            Mutation::Remove { id: 1 },
            "nothing to keep by default"
        );
        let token = deliver_one(&mut e, "default", 2);
        let m = e
            .ack(1, 2, token, Bytes::from_static(b"r"), T0 + 1)
            .unwrap();
        assert!(
            matches!(m.change, Mutation::Succeed { id: 2, .. }),
            "a result is kept"
        );
        let token = deliver_one(&mut e, "all", 3);
        let m = e.ack(1, 3, token, Bytes::new(), T0 + 1).unwrap();
        assert!(
            matches!(m.change, Mutation::Succeed { id: 3, .. }),
            "keep_acked keeps every ack"
        );
    }

    #[test]
    fn swept_dead_tasks_leave_the_dead_count() {
        let mut e = Engine::new(EngineConfig::default(), T0);
        let dead = crate::model::TaskState {
            queue: Arc::from("q"),
            status: TaskStatus::Dead,
            priority: 0,
            attempts: 1,
            max_attempts: 0,
            lease_ms: 0,
            not_before_ms: 0,
            created_ms: T0,
            updated_ms: T0,
            last_error: None,
            expires_ms: 0,
        };
        for id in 1..=3 {
            e.recover_task(id, &dead, T0);
        }
        e.forget_dead("q", 2);
        e.forget_dead("q", 3);
        e.forget_dead("q", 3);
        e.forget_dead("no-such-queue", 5);
        let q = e.snapshot().into_iter().find(|q| &*q.name == "q").unwrap();
        assert_eq!(q.dead, 1, "only task 1 is left");
    }
}
