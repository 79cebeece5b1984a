//! The hub's handlers for connections, subscriptions and leases, one function per
//! command: register and disconnect, subscribe and unsubscribe, ack, nack, release,
//! extend, task status; and the store's reports that change what the engine holds
//! (published tasks committed, dead tasks swept, an unstored ack restored).

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use tracing::{debug, info};

use super::state::Hub;
use crate::broker::{Committed, ConnId, NackMode, SubId};
use crate::model::{Millis, TaskId, TaskState};
use crate::server::msg::{Failure, LeaseHolder, OutTx, Outbound, Reply, ReqId, Reservation};

impl Hub {
    /// A connection finished its handshake.
    pub(super) fn register(&mut self, conn: ConnId, out: OutTx, name: Arc<str>, peer: SocketAddr) {
        self.outboxes.insert(conn, out);
        self.names.insert(conn, (name, peer));
    }

    /// A connection closed: its leases return to ready at once.
    pub(super) fn disconnect(&mut self, conn: ConnId, now: Millis) {
        self.outboxes.remove(&conn);
        self.names.remove(&conn);
        self.engine.disconnect(conn, now, &mut self.effects);
        debug!(conn, "connection released");
    }

    pub(super) fn subscribe(&mut self, conn: ConnId, req: ReqId, queue: &str, prefetch: u32) {
        match self.engine.subscribe(conn, req, queue, prefetch) {
            Ok(()) => {
                debug!(conn, sub = req, queue = %queue, prefetch, "subscribed");
                self.reply(conn, req, Reply::Subscribed(req));
            }
            Err(e) => self.refuse(conn, req, Failure::Engine(e)),
        }
    }

    pub(super) fn unsubscribe(&mut self, conn: ConnId, req: ReqId, sub: SubId) {
        match self.engine.unsubscribe(conn, sub) {
            Ok(()) => self.reply(conn, req, Reply::Ok),
            Err(e) => self.refuse(conn, req, Failure::Engine(e)),
        }
    }

    pub(super) fn ack(
        &mut self,
        conn: ConnId,
        req: ReqId,
        task: TaskId,
        token: u64,
        result: Bytes,
        now: Millis,
    ) {
        match self.engine.ack(conn, task, token, result, now) {
            // Succeeded even when the queue keeps nothing (then the change is a Remove).
            Ok(acked) => self.acks.push((conn, req, task, acked)),
            Err(e) => self.refuse(conn, req, Failure::Engine(e)),
        }
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn nack(
        &mut self,
        conn: ConnId,
        req: ReqId,
        task: TaskId,
        token: u64,
        mode: NackMode,
        reason: &str,
        now: Millis,
    ) {
        match self.engine.nack(conn, task, token, mode, reason, now) {
            Ok(m) => self.persist_then_reply(conn, req, m, Reply::Ok),
            Err(e) => self.refuse(conn, req, Failure::Engine(e)),
        }
    }

    /// A delivery its consumer never started on comes back without an attempt.
    pub(super) fn release_unseen(
        &mut self,
        conn: ConnId,
        req: ReqId,
        task: TaskId,
        token: u64,
        now: Millis,
    ) {
        match self.engine.release_unseen(conn, task, token, now) {
            Ok(m) => self.persist_then_reply(conn, req, m, Reply::Ok),
            Err(e) => self.refuse(conn, req, Failure::Engine(e)),
        }
    }

    pub(super) fn extend(
        &mut self,
        conn: ConnId,
        req: ReqId,
        task: TaskId,
        token: u64,
        extend_ms: u64,
        now: Millis,
    ) {
        match self.engine.extend(conn, task, token, extend_ms, now) {
            Ok(deadline_ms) => self.reply(conn, req, Reply::Extended { deadline_ms }),
            Err(e) => self.refuse(conn, req, Failure::Engine(e)),
        }
    }

    /// Hands a status request to the asking connection with the task's lease, if any
    /// (the connection's writer half reads the rest from the store).
    pub(super) fn task_status(&self, conn: ConnId, req: ReqId, task: TaskId) {
        let lease = self.engine.lease_of(task).map(|l| LeaseHolder {
            conn: l.conn,
            consumer: self
                .names
                .get(&l.conn)
                .map(|(name, _)| name.clone())
                .unwrap_or_else(|| Arc::from("")),
            deadline_ms: l.deadline_ms,
            attempt: l.attempt,
        });
        self.send(conn, Outbound::Status { req, task, lease });
    }

    /// Published tasks are durable: the engine learns them, and their reserved room
    /// (bounded queues) is counted by the engine now.
    pub(super) fn committed(
        &mut self,
        tasks: &[Committed],
        reservation: Option<Reservation>,
        now: Millis,
    ) {
        self.engine.publish_committed(tasks, now);
        if let Some(r) = reservation {
            self.reservations.release(r);
        }
    }

    /// The retention sweep removed these dead tasks.
    pub(super) fn dead_swept(&mut self, removed: Vec<(Arc<str>, TaskId)>) {
        for (queue, id) in removed {
            self.engine.forget_dead(&queue, id);
        }
    }

    /// An ack was not stored: the task, pending in the store, is deliverable again.
    pub(super) fn restore_task(&mut self, task: TaskId, state: &TaskState, now: Millis) {
        info!(task, queue = %state.queue, "an ack was not stored: the task is deliverable again");
        self.engine.restore_task(task, state, now);
    }
}
