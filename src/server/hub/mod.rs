//! The hub: one task that owns the broker engine. Connection readers, the store
//! writer's completions, the sweeper and the HTTP side send it commands (`msg.rs`); it
//! applies them in batches per turn, expires leases on time, and turns the engine's
//! effects into deliveries (to connection outboxes) and store jobs. It never reads a
//! socket or the store, never encodes protobuf (it answers with domain replies) and
//! holds no lock.
//!
//! Here: the loop and the dispatch of each command to its handler. `state.rs` holds
//! what the hub owns; `settle.rs` the per-request handlers of deliveries and leases,
//! `admin.rs` queue administration, `schedules.rs` the schedule ticker and schedule
//! administration, `admission.rs` publishes to bounded queues,
//! `rates.rs` and `scrape.rs` what operators read.

mod admin;
mod admission;
mod leading;
mod rates;
mod schedules;
mod scrape;
mod settle;
mod state;
#[cfg(test)]
mod tests;

use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::Instant;
use tracing::info;

pub(crate) use self::state::Hub;
use crate::model::Millis;
use crate::server::clock::now_ms;
use crate::server::msg::HubCmd;

/// Most commands handled per turn before dispatching.
const BATCH: usize = 1024;

/// While the store cannot record attempts, how often the hub looks whether it can
/// deliver again.
const STORE_RETRY: Duration = Duration::from_millis(250);

/// While a leader's lease has lapsed (no quorum heard from lately), how often the hub
/// looks whether it holds again.
const LEASE_RETRY: Duration = Duration::from_millis(10);

impl Hub {
    /// Runs until `Shutdown` arrives or every sender is gone.
    pub(crate) async fn run(mut self, mut rx: mpsc::UnboundedReceiver<HubCmd>) {
        let mut cmds = Vec::with_capacity(BATCH);
        loop {
            // Nothing is delivered while attempts cannot be recorded, nor by a cluster
            // member that does not lead or whose leader lease lapsed.
            let leased = self.may_dispatch();
            let dispatching = leased && self.store.unavailable().is_none();
            let wake = if dispatching && self.engine.needs_dispatch() {
                Instant::now()
            } else if self.engine.needs_dispatch() && self.leading && !leased {
                // A quorum's next heartbeat answer renews it.
                Instant::now() + LEASE_RETRY
            } else if self.engine.needs_dispatch() {
                // Look again soon: the store resumes by itself once space returns.
                Instant::now() + STORE_RETRY
            } else {
                let next = [self.engine.next_wakeup(), self.engine.next_schedule_run()]
                    .into_iter()
                    .flatten()
                    .min()
                    .unwrap_or(u64::MAX);
                deadline_instant(next.min(self.rates.next_due()))
            };
            let received = tokio::select! {
                n = rx.recv_many(&mut cmds, BATCH) => n,
                _ = tokio::time::sleep_until(wake) => 0,
            };
            if received == 0 && rx.is_closed() && rx.is_empty() {
                break;
            }
            // Looked at again after the wait: a lease may have run out meanwhile.
            let dispatching = dispatching && self.may_dispatch();
            if self.turn(cmds.drain(..), now_ms(), dispatching) {
                info!(
                    leases = self.engine.lease_count(),
                    "hub stopped dispatching"
                );
                break;
            }
        }
    }

    /// One turn at time `now`: handles `cmds`, expires what is due, dispatches (unless
    /// `dispatching` is false or a `Shutdown` came) and carries out the effects.
    /// Returns whether a `Shutdown` came.
    pub(crate) fn turn(
        &mut self,
        cmds: impl IntoIterator<Item = HubCmd>,
        now: Millis,
        dispatching: bool,
    ) -> bool {
        let mut stop = false;
        for cmd in cmds {
            if matches!(cmd, HubCmd::Shutdown) {
                stop = true;
                continue;
            }
            self.handle(cmd, now);
        }
        self.flush_acks();
        if !stop && self.leading {
            self.fire_schedules(now);
        }
        self.engine.tick(now, &mut self.effects);
        if !stop && dispatching {
            self.engine.dispatch(now, &mut self.effects);
        }
        self.apply_effects(now);
        let engine = &self.engine;
        self.rates
            .maybe_sample(now, engine.queue_slots(), |slot| engine.counters_at(slot));
        stop
    }

    /// Hands one command to its handler.
    fn handle(&mut self, cmd: HubCmd, now: Millis) {
        match cmd {
            HubCmd::Register {
                conn,
                out,
                name,
                peer,
            } => self.register(conn, out, name, peer),
            HubCmd::Disconnect { conn } => self.disconnect(conn, now),
            HubCmd::Subscribe {
                conn,
                req,
                queue,
                prefetch,
            } => self.subscribe(conn, req, &queue, prefetch),
            HubCmd::Unsubscribe { conn, req, sub } => self.unsubscribe(conn, req, sub),
            HubCmd::Ack {
                conn,
                req,
                task,
                token,
                result,
            } => self.ack(conn, req, task, token, result, now),
            HubCmd::Nack {
                conn,
                req,
                task,
                token,
                mode,
                reason,
            } => self.nack(conn, req, task, token, mode, &reason, now),
            HubCmd::ReleaseUnseen {
                conn,
                req,
                task,
                token,
            } => self.release_unseen(conn, req, task, token, now),
            HubCmd::Extend {
                conn,
                req,
                task,
                token,
                extend_ms,
            } => self.extend(conn, req, task, token, extend_ms, now),
            HubCmd::GetTask { conn, req, task } => self.task_status(conn, req, task),
            HubCmd::Connections { limit, reply } => {
                let _ = reply.send(self.connections(limit));
            }
            HubCmd::Committed(tasks, reservation) => self.committed(&tasks, reservation, now),
            HubCmd::CommittedMany(all) => {
                for (tasks, reservation) in all {
                    self.committed(&tasks, reservation, now);
                }
            }
            HubCmd::Publish { muts, job } => self.admit(muts, *job),
            HubCmd::Release(r) => self.reservations.release(r),
            HubCmd::Written { conn, n } => self.engine.written(conn, n),
            HubCmd::Undeliverable {
                conn,
                task,
                token,
                requeue,
            } => self.engine.undeliverable(conn, task, token, requeue, now),
            HubCmd::Admin { conn, req, op } => self.admin(conn, req, op, now),
            HubCmd::AdminDurable(outcome) => self.admin_durable(*outcome, now),
            HubCmd::ScheduleDurable(outcome) => self.schedule_durable(*outcome, now),
            HubCmd::FireDone {
                schedule,
                tick,
                stored,
                committed,
            } => self.fire_done(&schedule, tick, stored, &committed, now),
            HubCmd::Scrape { limit, reply } => {
                let _ = reply.send(self.scrape(limit, now));
            }
            HubCmd::DeadSwept(removed) => self.dead_swept(removed),
            HubCmd::Restore { task, state } => self.restore_task(task, &state, now),
            HubCmd::Lead { engine, fixes } => self.lead(*engine.0, fixes),
            HubCmd::Follow => self.follow(),
            HubCmd::Shutdown => {}
        }
    }
}

/// The `Instant` of unix time `at_ms`.
fn deadline_instant(at_ms: u64) -> Instant {
    let now = now_ms();
    Instant::now() + Duration::from_millis(at_ms.saturating_sub(now))
}
