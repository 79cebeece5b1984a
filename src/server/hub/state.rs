//! What the hub owns ([`Hub`]: the engine, the connections' outboxes, the store
//! writer's handle, rates, reservations, the admin queue) and the few things every
//! handler does with it: answer a connection, persist a change and answer once it is
//! durable, store a turn's acks together (one job per connection), carry out the
//! engine's effects. The handlers themselves are in the sibling
//! files, one function per command.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;

use super::rates::Rates;
use crate::broker::{Acked, ConnId, Effect, Engine};
use crate::model::{IdMap, Millis, Mutation, TaskId};
use crate::server::bounded::Bounded;
use crate::server::done::{AckDone, Done, Restore, StoreWriter};
use crate::server::lease::LeaderLease;
use crate::server::msg::{AdminOp, Failure, Final, OutTx, Outbound, Reply, ReqId, WeakHubTx};
use crate::server::waiters::Waiters;
use crate::store::{Muts, Store};

/// Most acks of one connection stored as one job (`Hub::flush_acks`).
pub(super) const ACKS_PER_JOB: usize = 256;
/// Most bytes of results the acks of one job carry, unless a single ack's alone is
/// more (results are bounded by `max_payload_bytes`): a job is one journal record and,
/// in a cluster, part of one Raft entry.
pub(super) const ACK_JOB_RESULT_BYTES: usize = 1024 * 1024;

/// One store job of a turn's acks (`Hub::flush_acks`).
struct AckJob {
    conn: ConnId,
    muts: Vec<Mutation>,
    acks: Vec<AckDone>,
    result_bytes: usize,
}

impl AckJob {
    /// Whether one more ack, with `bytes` of result, fits.
    fn takes(&self, bytes: usize) -> bool {
        self.acks.len() < ACKS_PER_JOB && self.result_bytes + bytes <= ACK_JOB_RESULT_BYTES
    }
}

/// The hub's state. Only the hub task touches it; nothing here is shared but the
/// handles it was given.
pub(crate) struct Hub {
    pub(super) engine: Engine,
    pub(super) writer: StoreWriter,
    pub(super) outboxes: IdMap<ConnId, OutTx>,
    /// Client name (or peer address) and peer address of each connection, for lease
    /// holders in task status and peek.
    pub(super) names: IdMap<ConnId, (Arc<str>, SocketAddr)>,
    pub(super) waiters: Arc<Waiters>,
    pub(super) effects: Vec<Effect>,
    /// Per-queue rates over the last minute (`rates.rs`).
    pub(super) rates: Rates,
    /// Which queues are bounded, for the connections; refreshed after admin changes.
    pub(super) bounded: Arc<Bounded>,
    pub(super) default_max_length: u64,
    /// Room reserved in bounded queues by publishes not yet durable.
    pub(super) reservations: Reservations,
    /// Only asked whether it failed (then nothing is dispatched: a delivery's body
    /// could not be read, and its requeue would spin). Never read here.
    pub(super) store: Store,
    /// Shared by every ack job's completion (one reference count each, no
    /// allocation): how to give a task back if its ack is not stored.
    pub(super) restore: Arc<Restore>,
    /// The acks of this turn, stored together at its end (`flush_acks`).
    pub(super) acks: Vec<(ConnId, ReqId, TaskId, Acked)>,
    /// Admin changes: the one in flight and those waiting for it (`admin.rs`).
    pub(super) admin_queue: AdminQueue,
    /// The hub's own command channel, for completions that report back.
    pub(super) me: WeakHubTx,
    /// Whether this broker serves (always on a single node; in a cluster only while
    /// it leads, `leading.rs`): otherwise nothing is dispatched and no schedule fires.
    pub(super) leading: bool,
    /// A cluster member's leader lease: it dispatches only while the lease holds
    /// (`server/lease.rs`). `None` on a single node.
    pub(super) lease: Option<Arc<LeaderLease>>,
}

/// The hub's count of admitted, not yet durable tasks per bounded queue
/// (`admission.rs`).
#[derive(Debug, Default)]
pub(crate) struct Reservations {
    pub(super) held: HashMap<Arc<str>, u64>,
}

/// The admin changes waiting for the one in flight, oldest first (`admin.rs`).
#[derive(Debug, Default)]
pub(crate) struct AdminQueue {
    pub(super) waiting: VecDeque<(ConnId, ReqId, AdminOp)>,
    pub(super) busy: bool,
}

impl Hub {
    pub(crate) fn new(
        engine: Engine,
        writer: StoreWriter,
        waiters: Arc<Waiters>,
        bounded: Arc<Bounded>,
        default_max_length: u64,
        store: Store,
        me: WeakHubTx,
    ) -> Hub {
        Hub {
            restore: Arc::new(Restore {
                store: store.clone(),
                hub: me.clone(),
            }),
            acks: Vec::new(),
            admin_queue: AdminQueue::default(),
            me,
            store,
            bounded,
            default_max_length,
            reservations: Reservations::default(),
            engine,
            writer,
            outboxes: IdMap::default(),
            names: IdMap::default(),
            waiters,
            effects: Vec::new(),
            rates: Rates::default(),
            leading: true,
            lease: None,
        }
    }

    /// A hub of a cluster member, which serves only once told it leads
    /// (`HubCmd::Lead`), and then dispatches only while `lease` holds.
    pub(crate) fn following(mut self, lease: Arc<LeaderLease>) -> Hub {
        self.leading = false;
        self.lease = Some(lease);
        self
    }

    /// Whether this broker may hand out tasks now: always on a single node; in a
    /// cluster while it leads and its leader lease holds.
    pub(super) fn may_dispatch(&self) -> bool {
        self.leading && self.lease.as_ref().is_none_or(|l| l.holds())
    }

    /// Sends `msg` to connection `conn`, if it is still registered.
    pub(super) fn send(&self, conn: ConnId, msg: Outbound) {
        if let Some(out) = self.outboxes.get(&conn) {
            let _ = out.send(msg);
        }
    }

    /// Answers request `req` of connection `conn`.
    pub(super) fn reply(&self, conn: ConnId, req: ReqId, reply: Reply) {
        self.send(conn, Outbound::Reply { req, reply });
    }

    /// Refuses request `req` of connection `conn`.
    pub(super) fn refuse(&self, conn: ConnId, req: ReqId, failure: Failure) {
        self.reply(conn, req, Reply::Refused(failure));
    }

    /// Persists `m`, then confirms request `req` on `conn` once it is durable (and
    /// wakes the task's result waiters if `m` finishes the task, as [`Final::of`]
    /// reads it).
    pub(super) fn persist_then_reply(&self, conn: ConnId, req: ReqId, m: Mutation, ok: Reply) {
        let out = self.outboxes.get(&conn);
        let done = match Final::of(&m) {
            Some((task, state)) => Some(Done::Finished {
                reply: out.map(|out| (out.clone(), req)),
                task,
                state,
                waiters: self.waiters.clone(),
            }),
            None => out.map(|out| Done::Reply {
                out: out.clone(),
                req,
                ok,
            }),
        };
        self.writer.submit(Muts::One(m), done);
    }

    /// Stores the acks gathered this turn (`acks`): one job per connection of up to
    /// [`ACKS_PER_JOB`] of its acks (and [`ACK_JOB_RESULT_BYTES`] of their results),
    /// in the order they came, each ack's change after
    /// its delivery's count when the engine asks for it. Each is confirmed once its job
    /// is durable; an ack whose job is not stored gives its task back (`Done::Acks`).
    pub(super) fn flush_acks(&mut self) {
        if self.acks.is_empty() {
            return;
        }
        let mut jobs: Vec<AckJob> = Vec::new();
        // Each connection's latest job: only it may take the connection's next ack, so
        // that its acks stay in order.
        let mut latest: IdMap<ConnId, usize> = IdMap::default();
        for (conn, req, task, acked) in self.acks.drain(..) {
            let Acked {
                attempt,
                change,
                attempts,
            } = acked;
            let bytes = match &change {
                Mutation::Succeed { result, .. } => result.len(),
                _ => 0,
            };
            let at = match latest.get(&conn) {
                Some(&at) if jobs[at].takes(bytes) => at,
                _ => {
                    jobs.push(AckJob {
                        conn,
                        muts: Vec::new(),
                        acks: Vec::new(),
                        result_bytes: 0,
                    });
                    latest.insert(conn, jobs.len() - 1);
                    jobs.len() - 1
                }
            };
            let job = &mut jobs[at];
            job.muts.extend(attempt);
            job.muts.push(change);
            job.result_bytes += bytes;
            job.acks.push(AckDone {
                req,
                task,
                attempts,
            });
        }
        for job in jobs {
            debug_assert!(!job.acks.is_empty() && job.muts.len() >= job.acks.len());
            debug_assert!(job.acks.len() == 1 || job.result_bytes <= ACK_JOB_RESULT_BYTES);
            let done = Done::Acks {
                out: self.outboxes.get(&job.conn).cloned(),
                acks: job.acks,
                waiters: self.waiters.clone(),
                restore: self.restore.clone(),
            };
            self.writer.submit(Muts::Many(job.muts), Some(done));
        }
        debug_assert!(self.acks.is_empty());
    }

    /// Persists a change nobody waits for, except result waiters when it finishes a task.
    pub(super) fn persist(&self, m: Mutation) {
        let done = Final::of(&m).map(|(task, state)| Done::Finished {
            reply: None,
            task,
            state,
            waiters: self.waiters.clone(),
        });
        self.writer.submit(Muts::One(m), done);
    }

    /// Carries out what the engine decided: store jobs and deliveries.
    pub(super) fn apply_effects(&mut self, now: Millis) {
        let mut effects = std::mem::take(&mut self.effects);
        for effect in effects.drain(..) {
            match effect {
                Effect::Persist(m) => self.persist(m),
                Effect::Deliver(d) => match self.outboxes.get(&d.conn) {
                    Some(out) => {
                        // A closed outbox means the connection is going away; its
                        // Disconnect will release the lease.
                        let _ = out.send(Outbound::Deliver(d));
                    }
                    None => self
                        .engine
                        .undeliverable(d.conn, d.task, d.token, true, now),
                },
            }
        }
        // Keep the allocation.
        self.effects = effects;
    }
}
