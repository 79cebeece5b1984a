//! The model test's settlements: ack, nack, extend, release, undeliverable and
//! disconnect of deliveries a client holds (possibly long after they ended), each
//! checked against the model's live lease.

use super::*;

impl Harness {
    fn pick(&self, pick: u16) -> Option<Handed> {
        if self.handed.is_empty() {
            return None;
        }
        Some(self.handed[usize::from(pick) % self.handed.len()])
    }

    /// Whether `token` on `conn` is the task's live lease in the model. A lease past
    /// its deadline stays live until a tick expires it (the hub settles commands
    /// before it ticks); nobody else can hold the task meanwhile.
    fn live(&self, task: TaskId, on: ConnId, with: u64) -> bool {
        matches!(self.tasks.get(&task).map(|t| &t.state),
            Some(MState::Leased { token, conn, .. }) if *token == with && *conn == on)
    }

    pub(super) fn ack(&mut self, pick: u16, stranger: bool) {
        let Some(h) = self.pick(pick) else { return };
        let conn = if stranger { STRANGER } else { h.conn };
        let live = self.live(h.task, conn, h.token);
        let got = self
            .engine
            .ack(conn, h.task, h.token, Bytes::new(), self.now);
        if !live {
            assert_eq!(got, Err(EngineError::LeaseExpired { task: h.task }));
            return;
        }
        let attempts = self.tasks[&h.task].attempts;
        let removed = Acked {
            attempt: None,
            change: Mutation::Remove { id: h.task },
            attempts,
        };
        assert_eq!(got, Ok(removed), "a removed task needs no count");
        self.store.persist(Mutation::Remove { id: h.task }, true);
        if let Some(t) = self.tasks.get_mut(&h.task) {
            t.state = MState::Acked;
        }
    }

    pub(super) fn nack(&mut self, pick: u16, mode: NackOp, reason: &str) {
        let Some(h) = self.pick(pick) else { return };
        let live = self.live(h.task, h.conn, h.token);
        let engine_mode = match mode {
            NackOp::Backoff => NackMode::Backoff,
            NackOp::After(ms) => NackMode::After(ms),
            NackOp::Dead => NackMode::Dead,
        };
        let got = self
            .engine
            .nack(h.conn, h.task, h.token, engine_mode, reason, self.now);
        if !live {
            assert_eq!(got, Err(EngineError::LeaseExpired { task: h.task }));
            return;
        }
        let m = got.expect("live lease nacked");
        let Mutation::Patch { id, patch } = &m else {
            panic!("a nack persists a patch, got {m:?}");
        };
        assert_eq!(*id, h.task);
        self.end_lease(h.task, patch, Ending::Nack(mode, reason));
        self.store.persist(m, true);
    }

    pub(super) fn extend(&mut self, pick: u16, ms: u64) {
        let Some(h) = self.pick(pick) else { return };
        let now = self.now;
        let live = self.live(h.task, h.conn, h.token);
        let got = self.engine.extend(h.conn, h.task, h.token, ms, now);
        let t = self.tasks.get_mut(&h.task).expect("known task");
        match &mut t.state {
            MState::Leased { deadline, .. } if live && *deadline > now => {
                *deadline = now + ms.min(MAX_LEASE_MS);
                assert_eq!(got, Ok(*deadline));
            }
            _ => assert_eq!(got, Err(EngineError::LeaseExpired { task: h.task })),
        }
    }

    /// The consumer gives the delivery back unseen: ready again at once, the attempt
    /// counted at delivery undone in the store before the release is confirmed.
    pub(super) fn release(&mut self, pick: u16) {
        let Some(h) = self.pick(pick) else { return };
        let (now, live) = (self.now, self.live(h.task, h.conn, h.token));
        let got = self.engine.release_unseen(h.conn, h.task, h.token, now);
        if !live {
            assert_eq!(got, Err(EngineError::LeaseExpired { task: h.task }));
            return;
        }
        let t = self.tasks.get_mut(&h.task).expect("known task");
        let MState::Leased { not_before, .. } = t.state else {
            unreachable!("live lease")
        };
        t.attempts -= 1;
        let want = Mutation::Patch {
            id: h.task,
            patch: StatePatch {
                attempts: Some(t.attempts),
                updated_ms: now,
                ..StatePatch::default()
            },
        };
        assert_eq!(got.as_ref(), Ok(&want), "release of task {}", h.task);
        t.phantom = false;
        t.unwritten_since = None;
        if t.attempts == 0 {
            t.expiry = t.expires_ms; // still not started: its expiry applies again
        }
        t.state = MState::Ready {
            not_before,
            delayed: false,
        };
        self.store.persist(want, true);
    }

    /// The hub could not read the body: the task is ready again at once, and the
    /// delivery that never left does not count as an attempt.
    pub(super) fn undeliverable(&mut self, pick: u16) {
        let Some(h) = self.pick(pick) else { return };
        let live = self.live(h.task, h.conn, h.token);
        self.engine
            .undeliverable(h.conn, h.task, h.token, true, self.now);
        if !live {
            return;
        }
        let t = self.tasks.get_mut(&h.task).expect("known task");
        let MState::Leased { not_before, .. } = t.state else {
            unreachable!("live lease")
        };
        t.attempts -= 1;
        // The store counted the delivery only if its count was written.
        t.phantom = t.phantom || t.unwritten_since.is_none();
        t.unwritten_since = None;
        if t.attempts == 0 {
            t.expiry = t.expires_ms;
        }
        t.state = MState::Ready {
            not_before,
            delayed: false,
        };
    }

    pub(super) fn disconnect(&mut self, slot: u8) {
        let now = self.now;
        let Some(conn) = self.slots[usize::from(slot) % SLOTS].take() else {
            let mut out = Vec::new();
            self.engine.disconnect(STRANGER, now, &mut out);
            assert!(out.is_empty(), "an unknown connection holds nothing");
            return;
        };
        self.subs.retain(|s| s.conn != conn);
        let mut held: BTreeSet<TaskId> = self
            .tasks
            .iter()
            .filter(|(_, t)| matches!(t.state, MState::Leased { conn: c, .. } if c == conn))
            .map(|(&id, _)| id)
            .collect();
        let mut out = Vec::new();
        self.engine.disconnect(conn, now, &mut out);
        for effect in out {
            let Effect::Persist(m @ Mutation::Patch { .. }) = effect else {
                panic!("disconnect only persists releases, got {effect:?}");
            };
            let Mutation::Patch { id, patch } = &m else {
                unreachable!()
            };
            assert!(held.remove(id), "task {id} released but not held by {conn}");
            self.end_lease(*id, patch, Ending::Disconnected);
            self.store.persist(m, false);
        }
        assert!(held.is_empty(), "leases of {conn} not released: {held:?}");
    }
}
