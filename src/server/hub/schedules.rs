//! Periodic schedules in the hub: the ticker and schedule administration. The ticker
//! runs inside the hub's turn (no task of its own, so it ends with the hub): at most
//! [`FIRES_PER_TURN`] due schedules fire per turn, each as one store job holding its
//! tick's task and the schedule's new last run, and fires again only once that job
//! completed (`Engine::fire_done`). Changes (add, pause, resume, remove) go through the
//! admin queue, one at a time like queue changes: planned by the engine, persisted,
//! then applied and answered. Reads (list) are answered at once.

use std::sync::Arc;

use tracing::{info, warn};

use super::state::Hub;
use crate::broker::{Committed, ConnId};
use crate::model::{Millis, Mutation};
use crate::server::done::Done;
use crate::server::msg::{
    AdminOp, AdminReply, Failure, Outbound, Reply, ReqId, ScheduleChange, ScheduleOutcome,
};
use crate::store::Muts;

/// Most schedules fired per hub turn; the rest fire on the next turns.
pub(super) const FIRES_PER_TURN: usize = 64;

impl Hub {
    /// Fires the schedules due at `now` (bounded per turn).
    pub(super) fn fire_schedules(&mut self, now: Millis) {
        if self.engine.next_schedule_run().is_none_or(|at| at > now) {
            return;
        }
        let store = &self.store;
        let fires = self
            .engine
            .take_due_fires(now, FIRES_PER_TURN, |n| store.allocate_ids(n));
        for fire in fires {
            if fire.skipped > 0 {
                warn!(schedule = %fire.schedule, skipped = fire.skipped, "schedule ticks skipped: the queue is full");
            }
            let done = Done::Fire {
                hub: self.me.clone(),
                schedule: fire.schedule,
                tick: fire.last_tick,
                committed: fire.committed,
            };
            self.writer.submit(Muts::Many(fire.mutations), Some(done));
        }
    }

    /// A fire's job completed.
    pub(super) fn fire_done(
        &mut self,
        schedule: &str,
        tick: Millis,
        stored: bool,
        committed: &[Committed],
        now: Millis,
    ) {
        if !stored {
            warn!(
                schedule,
                "a schedule's tick could not be stored; it is tried again"
            );
        }
        self.engine
            .fire_done(schedule, tick, stored, committed, now);
    }

    /// Whether `op` is a schedule change (then `start_schedule_change` takes it).
    pub(super) fn is_schedule_change(op: &AdminOp) -> bool {
        matches!(
            op,
            AdminOp::AddSchedule(_) | AdminOp::RemoveSchedule(_) | AdminOp::PauseSchedule(..)
        )
    }

    /// Plans a schedule change and persists it; the admin queue stays busy until
    /// `schedule_durable`. Returns false when the change was refused at once.
    pub(super) fn start_schedule_change(
        &mut self,
        conn: ConnId,
        req: ReqId,
        op: AdminOp,
        now: Millis,
    ) -> bool {
        let planned = match op {
            AdminOp::AddSchedule(spec) => self
                .engine
                .plan_schedule_add(spec, now)
                .map(|s| ScheduleChange::Put(Box::new(s))),
            AdminOp::PauseSchedule(name, paused) => self
                .engine
                .plan_schedule_pause(&name, paused, now)
                .map(|s| ScheduleChange::Put(Box::new(s))),
            AdminOp::RemoveSchedule(name) => self
                .engine
                .plan_schedule_remove(&name)
                .map(ScheduleChange::Remove),
            _ => return false,
        };
        let change = match planned {
            Ok(change) => change,
            Err(e) => {
                self.refuse(conn, req, Failure::Schedule(e));
                return false;
            }
        };
        let m = match &change {
            ScheduleChange::Put(s) => {
                self.engine.hold_schedule(&s.name, true);
                Mutation::PutSchedule(s.clone())
            }
            ScheduleChange::Remove(name) => {
                self.engine.hold_schedule(name, true);
                Mutation::RemoveSchedule { name: name.clone() }
            }
        };
        self.admin_queue.busy = true;
        let done = Done::Schedule {
            hub: self.me.clone(),
            conn,
            req,
            change,
        };
        self.writer.submit(Muts::One(m), Some(done));
        true
    }

    /// A schedule change's job completed: applies it if durable, answers, and starts
    /// the next admin change.
    pub(super) fn schedule_durable(&mut self, outcome: ScheduleOutcome, now: Millis) {
        let ScheduleOutcome {
            conn,
            req,
            change,
            result,
        } = outcome;
        let reply = match (change, result) {
            (ScheduleChange::Put(s), Ok(())) => {
                let name: Arc<str> = s.name.clone();
                info!(schedule = %name, queue = %s.queue, cron = %s.cron, tz = %s.tz, paused = s.paused, "schedule stored");
                match self.engine.apply_schedule(*s) {
                    Ok(()) => match self.engine.schedule_view(&name) {
                        Some(v) => Reply::Schedule(Box::new(v)),
                        None => Reply::Refused(Failure::Internal("schedule vanished".into())),
                    },
                    Err(e) => Reply::Refused(Failure::Schedule(e)),
                }
            }
            (ScheduleChange::Remove(name), Ok(())) => {
                info!(schedule = %name, "schedule removed");
                self.engine.remove_schedule(&name);
                Reply::Ok
            }
            (change, Err(e)) => {
                let name = match &change {
                    ScheduleChange::Put(s) => s.name.clone(),
                    ScheduleChange::Remove(name) => name.clone(),
                };
                self.engine.hold_schedule(&name, false);
                Reply::Refused(Failure::Storage(format!(
                    "not persisted: {e}; nothing was changed"
                )))
            }
        };
        self.send(conn, Outbound::Reply { req, reply });
        self.admin_queue.busy = false;
        self.next_admin_change(now);
    }

    /// Answers a page of schedules.
    pub(super) fn list_schedules(&self, conn: ConnId, req: ReqId, after: &str, limit: usize) {
        let (list, more) = self.engine.schedule_page(after, limit);
        self.send(
            conn,
            Outbound::Admin(AdminReply::Schedules { req, list, more }),
        );
    }
}
