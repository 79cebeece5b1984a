//! The model test's schedules: what the model knows of each schedule (`MSched`), the
//! operations (add, remove, pause, resume, the hub's ticker and a fire's completion),
//! the restart's loading, and the checks: every fire holds exactly the ticks the
//! model predicts (the latest due tick, or every due one oldest first for catch-up
//! `all`; none at or before the schedule's floor, so exactly one task per tick), its
//! job holds the ticks' tasks and the schedule's new last run, and the views and the
//! ticker's wake-up agree with the model.
//!
//! Ticks are derived here from the cron's period (each divides a minute), not from
//! the cron parser: tick `k` of a schedule with period `p` is at `k * p` ms.

use super::*;
use crate::broker::schedule::{tick_key, FIRE_BATCH, FIRE_RETRY_MS, HEADER_SCHEDULE, HEADER_TICK};
use crate::model::Schedule;

/// Most fires per ticker turn, as the hub asks for.
const FIRES_PER_TURN: usize = 64;
/// Time zones the schedules are read in: the offsets are whole minutes, so ticks of
/// the model's crons fall at the same instants in each.
const ZONES: [&str; 3] = ["", "Europe/Paris", "Asia/Kolkata"];
/// The header every schedule's task carries besides the schedule's own two.
const HEADER: (&str, &[u8]) = ("origin", b"model");

/// A schedule as the model knows it.
#[derive(Debug, Clone)]
pub(in crate::broker::model_tests) struct MSched {
    queue: usize,
    cron: usize,
    catch_up: CatchUp,
    priority: i32,
    paused: bool,
    since: Millis,
    last_run: Millis,
    last_task: TaskId,
    /// No tick at or before it fires.
    floor: Millis,
    /// After a fire that was not stored: not before this.
    retry_at: Millis,
    /// The fire in flight: its last tick and last task (0 when it published none).
    firing: Option<(Millis, TaskId)>,
}

impl MSched {
    fn period(&self) -> Millis {
        CRONS[self.cron].1
    }

    /// The first tick strictly after `t`.
    fn next_after(&self, t: Millis) -> Millis {
        (t / self.period() + 1) * self.period()
    }

    /// When the ticker takes it (none while paused or firing).
    fn armed(&self) -> Option<Millis> {
        (!self.paused && self.firing.is_none())
            .then(|| self.next_after(self.floor).max(self.retry_at))
    }

    /// The ticks a fire at `now` publishes.
    fn due(&self, now: Millis) -> Vec<Millis> {
        let p = self.period();
        match self.catch_up {
            CatchUp::None | CatchUp::One => {
                let latest = now / p * p;
                if latest > self.floor {
                    vec![latest]
                } else {
                    Vec::new()
                }
            }
            CatchUp::All => (self.floor / p + 1..)
                .map(|k| k * p)
                .take_while(|&t| t <= now)
                .take(FIRE_BATCH)
                .collect(),
        }
    }

    /// The floor a stored record gives (at start-up, or applied after a change).
    fn floor_of(def: &Schedule) -> Millis {
        def.last_run_ms.max(def.since_ms)
    }

    fn of_record(def: &Schedule, now: Millis) -> MSched {
        let queue = QUEUES.iter().position(|q| **q == *def.queue);
        let cron = CRONS.iter().position(|(c, _)| *c == def.cron);
        let mut floor = MSched::floor_of(def);
        if def.catch_up == CatchUp::None {
            floor = floor.max(now);
        }
        MSched {
            queue: queue.expect("a model queue"),
            cron: cron.expect("a model cron"),
            catch_up: def.catch_up,
            priority: def.priority,
            paused: def.paused,
            since: def.since_ms,
            last_run: def.last_run_ms,
            last_task: def.last_task,
            floor,
            retry_at: 0,
            firing: None,
        }
    }
}

/// A fire whose job was submitted and has not completed.
#[derive(Debug, Clone)]
pub(in crate::broker::model_tests) struct PendingFire {
    schedule: Arc<str>,
    last_tick: Millis,
    last_task: TaskId,
    /// Its job in the store stand-in.
    place: usize,
    committed: Vec<Committed>,
}

fn name_of(name: u8) -> Arc<str> {
    Arc::from(SCHEDULES[usize::from(name) % SCHEDULES.len()])
}

impl Harness {
    pub(super) fn add_schedule(&mut self, name: u8, queue: u8, cron: u8, catch_up: u8, prio: i8) {
        let (now, name) = (self.now, name_of(name));
        let queue = usize::from(queue) % QUEUES.len();
        let cron = usize::from(cron) % CRONS.len();
        let catch_up = CatchUp::from_u8(catch_up % 3).expect("0..3");
        let tz = ZONES[SCHEDULES.iter().position(|s| **s == *name).unwrap_or(0)];
        let spec = ScheduleSpec {
            name: name.to_string(),
            queue: QUEUES[queue].to_owned(),
            cron: CRONS[cron].0.to_owned(),
            tz: tz.to_owned(),
            payload: Bytes::from_static(b"tick"),
            headers: vec![(HEADER.0.to_owned(), Bytes::from_static(HEADER.1))],
            priority: i32::from(prio),
            max_attempts: 0,
            catch_up,
        };
        let got = self.engine.plan_schedule_add(spec, now);
        if self.scheds.contains_key(&name) {
            assert_eq!(got, Err(ScheduleError::Exists(name.to_string())));
            return;
        }
        let def = got.expect("a valid schedule");
        assert_eq!(
            (def.since_ms, def.last_run_ms, def.last_task, def.paused),
            (now, 0, 0, false)
        );
        assert_eq!(def.tz, if tz.is_empty() { "UTC" } else { tz });
        self.scheds.insert(
            name.clone(),
            MSched {
                queue,
                cron,
                catch_up,
                priority: i32::from(prio),
                paused: false,
                since: now,
                last_run: 0,
                last_task: 0,
                floor: now,
                retry_at: 0,
                firing: None,
            },
        );
        self.store_schedule(def);
    }

    /// As the hub does with a planned change: hold, persist (confirmed), apply.
    fn store_schedule(&mut self, def: Schedule) {
        self.engine.hold_schedule(&def.name, true);
        self.store
            .persist(Mutation::PutSchedule(Box::new(def.clone())), true);
        self.engine.apply_schedule(def).expect("a planned record");
    }

    pub(super) fn remove_schedule(&mut self, name: u8) {
        let name = name_of(name);
        let got = self.engine.plan_schedule_remove(&name);
        if self.scheds.remove(&name).is_none() {
            assert_eq!(got, Err(ScheduleError::NotFound(name.to_string())));
            return;
        }
        assert_eq!(got.as_deref(), Ok(&*name));
        self.engine.hold_schedule(&name, true);
        self.store
            .persist(Mutation::RemoveSchedule { name: name.clone() }, true);
        self.engine.remove_schedule(&name);
    }

    /// Pause, or resume: ticks that passed while paused never fire.
    pub(super) fn pause_schedule(&mut self, name: u8, paused: bool) {
        let (now, name) = (self.now, name_of(name));
        let got = self.engine.plan_schedule_pause(&name, paused, now);
        let Some(s) = self.scheds.get_mut(&name) else {
            assert_eq!(got, Err(ScheduleError::NotFound(name.to_string())));
            return;
        };
        let def = got.expect("a known schedule");
        // The record carries a fire in flight: it was submitted first, lands first.
        if let Some((tick, task)) = s.firing {
            s.last_run = tick;
            if task != 0 {
                s.last_task = task;
            }
        }
        if s.paused && !paused {
            s.since = now;
        }
        s.paused = paused;
        assert_eq!(
            (def.paused, def.since_ms, def.last_run_ms, def.last_task),
            (s.paused, s.since, s.last_run, s.last_task),
            "schedule {name}'s record (paused, since, last run, last task)"
        );
        s.floor = s.floor.max(MSched::floor_of(&def));
        self.store_schedule(def);
    }

    /// The hub's ticker: every due schedule fires the ticks the model predicts.
    pub(super) fn fire(&mut self, how: FireOp) {
        let now = self.now;
        let mut want: BTreeMap<Arc<str>, Vec<Millis>> = self
            .scheds
            .iter()
            .filter(|(_, s)| s.armed().is_some_and(|at| at <= now))
            .map(|(name, s)| (name.clone(), s.due(now)))
            .collect();
        let next = &mut self.next_task;
        let fires = self.engine.take_due_fires(now, FIRES_PER_TURN, |n| {
            let first = *next;
            *next += n;
            first
        });
        for fire in fires {
            let ticks = want
                .remove(&fire.schedule)
                .unwrap_or_else(|| panic!("schedule {} fired early", fire.schedule));
            self.check_fire(&fire, &ticks);
            let last_task = fire.committed.last().map_or(0, |c| c.id);
            let s = self.scheds.get_mut(&fire.schedule).expect("checked");
            s.firing = Some((fire.last_tick, last_task));
            if how == FireOp::Failed {
                let (name, tick) = (&fire.schedule, fire.last_tick);
                self.engine.fire_done(name, tick, false, &[], now);
                s.firing = None;
                s.retry_at = now + FIRE_RETRY_MS;
                continue;
            }
            for (c, m) in fire.committed.iter().zip(&fire.mutations) {
                let Mutation::Insert(t) = m else {
                    unreachable!("checked")
                };
                self.tasks.insert(c.id, scheduled_task(s, &t.state));
            }
            let place = self.store.submit(fire.mutations, how == FireOp::Stored);
            let pending = PendingFire {
                schedule: fire.schedule,
                last_tick: fire.last_tick,
                last_task,
                place,
                committed: fire.committed,
            };
            match how {
                FireOp::Stored => self.complete(pending),
                _ => self.fires.push_back(pending),
            }
        }
        assert!(want.is_empty(), "due schedules did not fire: {want:?}");
    }

    /// The oldest pending fire's job completes (the writer completes in order).
    pub(super) fn fire_done(&mut self) {
        if let Some(pending) = self.fires.pop_front() {
            self.complete(pending);
        }
    }

    /// Every pending fire completes.
    pub(super) fn complete_fires(&mut self) {
        while let Some(pending) = self.fires.pop_front() {
            self.complete(pending);
        }
    }

    fn complete(&mut self, f: PendingFire) {
        self.store.confirm_through(f.place);
        let (tick, now) = (f.last_tick, self.now);
        self.engine
            .fire_done(&f.schedule, tick, true, &f.committed, now);
        for c in &f.committed {
            let t = self.tasks.get_mut(&c.id).expect("inserted by the fire");
            assert_eq!(t.state, MState::Submitted);
            t.state = MState::Ready {
                not_before: 0,
                delayed: false,
            };
        }
        // A fire completes its own schedule's firing only, never that of a schedule
        // of the same name added since.
        let Some(s) = self.scheds.get_mut(&f.schedule) else {
            return;
        };
        if s.firing != Some((f.last_tick, f.last_task)) {
            return;
        }
        s.firing = None;
        s.last_run = f.last_tick;
        if f.last_task != 0 {
            s.last_task = f.last_task;
        }
        s.floor = s.floor.max(f.last_tick);
        s.retry_at = 0;
    }

    /// A fire's job: one insert per predicted tick (consecutive ids, the schedule's
    /// task with the tick's idempotency key and headers), then the schedule's record
    /// with its new last run.
    fn check_fire(&self, fire: &Fire, ticks: &[Millis]) {
        let name = &*fire.schedule;
        let s = &self.scheds[name];
        let published: Vec<Millis> = fire
            .mutations
            .iter()
            .filter_map(|m| match m {
                Mutation::Insert(t) => t.body.idempotency_key.clone(),
                _ => None,
            })
            .map(|key| {
                let tick = key.rsplit(':').next().and_then(|t| t.parse().ok());
                tick.unwrap_or_else(|| panic!("key {key:?}"))
            })
            .collect();
        assert_eq!(published, ticks, "schedule {name} fired at {}", self.now);
        assert_eq!((fire.last_tick, fire.skipped), (ticks[ticks.len() - 1], 0));
        assert_eq!(fire.committed.len(), ticks.len());
        assert_eq!(fire.mutations.len(), ticks.len() + 1);
        let first = fire.committed[0].id;
        for (i, (&tick, c)) in ticks.iter().zip(&fire.committed).enumerate() {
            let Mutation::Insert(t) = &fire.mutations[i] else {
                panic!("inserts first: {:?}", fire.mutations[i]);
            };
            assert_eq!((t.id, c.id), (first + i as u64, first + i as u64));
            assert_eq!(t.body.idempotency_key, Some(tick_key(name, tick)));
            let mut headers = vec![
                (HEADER.0.to_owned(), Bytes::from_static(HEADER.1)),
                (HEADER_SCHEDULE.to_owned(), Bytes::from(name.to_owned())),
                (HEADER_TICK.to_owned(), Bytes::from(tick.to_string())),
            ];
            headers.sort();
            assert_eq!(t.body.headers, headers);
            let st = &t.state;
            assert_eq!(
                (
                    &*st.queue,
                    st.status,
                    st.priority,
                    st.attempts,
                    st.not_before_ms
                ),
                (QUEUES[s.queue], TaskStatus::Pending, s.priority, 0, 0)
            );
            assert_eq!(st.expires_ms, 0);
            assert_eq!(
                (&*c.queue, c.priority, c.not_before_ms, c.expires_ms),
                (QUEUES[s.queue], s.priority, 0, 0)
            );
        }
        let Some(Mutation::PutSchedule(rec)) = fire.mutations.last() else {
            panic!("the schedule's record last: {:?}", fire.mutations.last());
        };
        let last = first + ticks.len() as u64 - 1;
        assert_eq!(
            (&*rec.name, rec.last_run_ms, rec.last_task, rec.paused),
            (name, fire.last_tick, last, false)
        );
        assert_eq!(rec.since_ms, s.since);
    }

    /// After a restart: the schedules as stored, with the catch-up rule for the ticks
    /// missed while down (`none` skips them; `one` and `all` fire on the next turn).
    pub(super) fn load_schedules(&mut self) {
        let now = self.now;
        self.fires.clear();
        self.scheds.clear();
        for (name, def) in &self.store.durable.schedules {
            self.scheds
                .insert(name.clone(), MSched::of_record(def, now));
            self.engine
                .load_schedule(def.clone(), now)
                .expect("a stored schedule loads");
        }
    }

    /// The engine's schedules, their stored records and the ticker's wake-up agree
    /// with the model.
    pub(super) fn check_schedules(&self) {
        let views = self.engine.schedule_views();
        let names: Vec<&str> = views.iter().map(|v| &*v.schedule.name).collect();
        let want: Vec<&str> = self.scheds.keys().map(|n| &**n).collect();
        assert_eq!(names, want, "schedules");
        for v in &views {
            let (d, s) = (&v.schedule, &self.scheds[&*v.schedule.name]);
            assert_eq!(
                (&*d.queue, &*d.cron, d.catch_up, d.priority, d.paused),
                (
                    QUEUES[s.queue],
                    CRONS[s.cron].0,
                    s.catch_up,
                    s.priority,
                    s.paused
                ),
                "schedule {}",
                d.name
            );
            assert_eq!(
                (d.since_ms, d.last_run_ms, d.last_task),
                (s.since, s.last_run, s.last_task),
                "schedule {} (since, last run, last task)",
                d.name
            );
            let next = (!s.paused).then(|| s.armed().unwrap_or(s.next_after(s.floor)));
            assert_eq!(v.next_run_ms, next, "schedule {}'s next run", d.name);
            let rec = &self.store.current.schedules[&d.name];
            let stored_run = s.firing.map_or(s.last_run, |(tick, _)| tick);
            assert_eq!(
                (rec.paused, rec.since_ms, rec.last_run_ms),
                (s.paused, s.since, stored_run),
                "stored record of schedule {}",
                d.name
            );
        }
        let stored: Vec<&str> = self.store.current.schedules.keys().map(|n| &**n).collect();
        assert_eq!(stored, want, "stored schedules");
        let armed = self.scheds.values().filter_map(MSched::armed).min();
        assert_eq!(
            self.engine.next_schedule_run(),
            armed,
            "the ticker's wake-up"
        );
    }
}

/// The model task a fire inserted, not yet handed to the engine.
fn scheduled_task(s: &MSched, state: &TaskState) -> MTask {
    MTask {
        queue: s.queue,
        priority: s.priority,
        max_attempts: state.max_attempts,
        lease_ms: 0,
        attempts: 0,
        phantom: false,
        unwritten_since: None,
        state: MState::Submitted,
        last_error: None,
        expires_ms: 0,
        expiry: 0,
    }
}
