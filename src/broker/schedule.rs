//! Periodic schedules: cron expressions (six fields with seconds first, or the usual
//! five) read in an IANA time zone with its DST rules, parsed by `croner` with zones
//! from `chrono-tz` (no home-made parser); which ticks are due and what a tick
//! publishes; the catch-up rule for ticks missed while the broker was down.
//!
//! Exactly one task per tick: a tick's task and the schedule's new last run are one
//! store job (one journal record), and the task carries the idempotency key
//! `schedule:NAME:TICK_MS`; its headers name the schedule and the tick
//! (`squall-schedule`, `squall-tick-ms`). A schedule fires again only after its previous fire is
//! durable (`Engine::fire_done`), so a restart finds either both or neither.
//!
//! Pure like the rest of `broker/`: time is an argument, ids come from the caller,
//! the store write is returned as mutations. The ticker is the hub's.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use bytes::Bytes;
use chrono::TimeZone;
use chrono_tz::Tz;
use croner::parser::{CronParser, Seconds};
use croner::Cron;

use super::engine::{Committed, Engine};
use crate::model::TaskStatus;
use crate::model::{CatchUp, Millis, Mutation, NewTask, Schedule, TaskBody, TaskId, TaskState};

/// Header of a schedule's task: the schedule's name.
pub const HEADER_SCHEDULE: &str = "squall-schedule";
/// Header of a schedule's task: its tick, unix milliseconds.
pub const HEADER_TICK: &str = "squall-tick-ms";

/// Most ticks one fire publishes (catch-up `all` after a long outage goes on in
/// later turns).
pub const FIRE_BATCH: usize = 64;
/// After a fire that could not be stored, the schedule tries again this much later.
pub const FIRE_RETRY_MS: Millis = 1_000;

/// What an operator asks for when adding a schedule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScheduleSpec {
    /// Unique name.
    pub name: String,
    /// Target queue.
    pub queue: String,
    /// Cron expression (six or five fields).
    pub cron: String,
    /// IANA time zone; empty = UTC.
    pub tz: String,
    /// Payload of each task.
    pub payload: Bytes,
    /// Headers of each task.
    pub headers: Vec<(String, Bytes)>,
    /// Priority of each task.
    pub priority: i32,
    /// Per-task delivery limit (0 = the queue's).
    pub max_attempts: u32,
    /// Missed-ticks policy.
    pub catch_up: CatchUp,
}

/// Why a schedule change was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScheduleError {
    /// The cron expression does not parse.
    #[error(
        "cron expression {expr:?} is not valid: {reason} (six fields with seconds first, or five)"
    )]
    InvalidCron {
        /// The expression.
        expr: String,
        /// The parser's reason.
        reason: String,
    },
    /// The time zone is not an IANA name.
    #[error("unknown time zone {0:?} (use an IANA name such as Asia/Shanghai, or UTC)")]
    UnknownTimeZone(String),
    /// The expression parses but has no future tick.
    #[error("cron expression {0:?} never fires")]
    NeverFires(String),
    /// A schedule of that name exists.
    #[error("schedule {0:?} already exists (remove it first)")]
    Exists(String),
    /// No schedule of that name.
    #[error("schedule {0:?} does not exist")]
    NotFound(String),
    /// The broker holds its limit of schedules.
    #[error("the broker already has {0} schedules, its limit (max_schedules)")]
    TooMany(usize),
}

/// A parsed cron expression in its time zone.
#[derive(Debug, Clone)]
pub struct Timer {
    cron: Cron,
    tz: Tz,
}

impl Timer {
    /// Parses `expr` (six fields with seconds first, or five) in zone `tz` ("" = UTC).
    pub fn parse(expr: &str, tz: &str) -> Result<Timer, ScheduleError> {
        let tz: Tz = match tz {
            "" => Tz::UTC,
            name => name
                .parse()
                .map_err(|_| ScheduleError::UnknownTimeZone(name.to_owned()))?,
        };
        let cron = CronParser::builder()
            .seconds(Seconds::Optional)
            .build()
            .parse(expr)
            .map_err(|e| ScheduleError::InvalidCron {
                expr: expr.to_owned(),
                reason: e.to_string(),
            })?;
        Ok(Timer { cron, tz })
    }

    /// The first tick strictly after `after_ms`.
    pub fn next_after(&self, after_ms: Millis) -> Option<Millis> {
        let start = self.at(after_ms - after_ms % 1_000)?;
        let next = self.cron.find_next_occurrence(&start, false).ok()?;
        u64::try_from(next.timestamp_millis()).ok()
    }

    /// The last tick at or before `at_ms`.
    pub fn latest_at_or_before(&self, at_ms: Millis) -> Option<Millis> {
        let start = self.at(at_ms - at_ms % 1_000)?;
        let prev = self.cron.find_previous_occurrence(&start, true).ok()?;
        u64::try_from(prev.timestamp_millis()).ok()
    }

    fn at(&self, ms: Millis) -> Option<chrono::DateTime<Tz>> {
        self.tz
            .timestamp_millis_opt(i64::try_from(ms).ok()?)
            .single()
    }
}

/// One schedule in memory.
#[derive(Debug)]
struct Slot {
    def: Schedule,
    timer: Timer,
    /// No tick at or before it fires: the last run, the creation or resume time, or
    /// (catch-up `none`) the start-up time.
    floor: Millis,
    /// Its key in `Schedules::due`, when armed.
    armed: Option<Millis>,
    /// The fire in flight: its last tick and last task (0 when it publishes nothing).
    firing: Option<(Millis, TaskId)>,
    /// An admin change of it is in flight: it does not fire.
    held: bool,
    /// After a fire that failed: not before this.
    retry_at: Millis,
}

impl Slot {
    fn view(&self) -> ScheduleView {
        ScheduleView {
            schedule: self.def.clone(),
            next_run_ms: if self.def.paused {
                None
            } else {
                self.armed.or_else(|| self.timer.next_after(self.floor))
            },
        }
    }

    fn new(def: Schedule, timer: Timer, floor: Millis) -> Slot {
        Slot {
            def,
            timer,
            floor,
            armed: None,
            firing: None,
            held: false,
            retry_at: 0,
        }
    }
}

/// Default of the most schedules the broker keeps (`max_schedules`).
pub const DEFAULT_MAX_SCHEDULES: usize = 10_000;

/// Every schedule, and the armed ones by their next tick.
#[derive(Debug)]
pub struct Schedules {
    slots: BTreeMap<Arc<str>, Slot>,
    due: BTreeSet<(Millis, Arc<str>)>,
    max: usize,
}

impl Default for Schedules {
    fn default() -> Self {
        Schedules {
            slots: BTreeMap::new(),
            due: BTreeSet::new(),
            max: DEFAULT_MAX_SCHEDULES,
        }
    }
}

impl Schedules {
    /// Re-computes a slot's place in `due`.
    fn arm(&mut self, name: &Arc<str>) {
        let Some(slot) = self.slots.get_mut(name) else {
            return;
        };
        if let Some(at) = slot.armed.take() {
            self.due.remove(&(at, name.clone()));
        }
        if slot.def.paused || slot.held || slot.firing.is_some() {
            return;
        }
        if let Some(next) = slot.timer.next_after(slot.floor) {
            let at = next.max(slot.retry_at);
            slot.armed = Some(at);
            self.due.insert((at, name.clone()));
        }
    }
}

/// A schedule as shown to operators.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScheduleView {
    /// The stored schedule.
    pub schedule: Schedule,
    /// Its next tick (none while paused, or when the expression has no more).
    pub next_run_ms: Option<Millis>,
}

/// What one fire of a schedule writes: the tasks of its ticks and the schedule's new
/// last run, to be stored as one job.
#[derive(Debug, Clone)]
pub struct Fire {
    /// The schedule.
    pub schedule: Arc<str>,
    /// The tick it records as its last run.
    pub last_tick: Millis,
    /// The job: inserts first (in tick order), then the schedule's record.
    pub mutations: Vec<Mutation>,
    /// The inserted tasks, for [`Engine::fire_done`] (same order as the inserts).
    pub committed: Vec<Committed>,
    /// Ticks passed over because the queue was full.
    pub skipped: usize,
}

impl Engine {
    /// Bounds the number of schedules (`max_schedules`); existing ones stay.
    pub fn set_max_schedules(&mut self, max: usize) {
        self.schedules.max = max;
    }

    /// Installs a stored schedule at start-up. Catch-up `none` skips every tick
    /// missed while the broker was down; `one` and `all` fire on the next turn.
    pub fn load_schedule(&mut self, def: Schedule, now: Millis) -> Result<(), ScheduleError> {
        let timer = Timer::parse(&def.cron, &def.tz)?;
        let mut floor = def.last_run_ms.max(def.since_ms);
        if def.catch_up == CatchUp::None {
            floor = floor.max(now);
        }
        let name = def.name.clone();
        self.schedules
            .slots
            .insert(name.clone(), Slot::new(def, timer, floor));
        self.schedules.arm(&name);
        Ok(())
    }

    /// Validates a new schedule and returns its record (not applied: persist it, then
    /// [`Engine::apply_schedule`]).
    pub fn plan_schedule_add(
        &self,
        spec: ScheduleSpec,
        now: Millis,
    ) -> Result<Schedule, ScheduleError> {
        if self.schedules.slots.contains_key(spec.name.as_str()) {
            return Err(ScheduleError::Exists(spec.name));
        }
        if self.schedules.slots.len() >= self.schedules.max {
            return Err(ScheduleError::TooMany(self.schedules.max));
        }
        let timer = Timer::parse(&spec.cron, &spec.tz)?;
        if timer.next_after(now).is_none() {
            return Err(ScheduleError::NeverFires(spec.cron));
        }
        let mut headers = spec.headers;
        headers.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(Schedule {
            name: Arc::from(spec.name),
            queue: Arc::from(spec.queue),
            cron: spec.cron,
            tz: if spec.tz.is_empty() {
                "UTC".to_owned()
            } else {
                spec.tz
            },
            payload: spec.payload,
            headers,
            priority: spec.priority,
            max_attempts: spec.max_attempts,
            catch_up: spec.catch_up,
            paused: false,
            since_ms: now,
            last_run_ms: 0,
            last_task: 0,
            created_ms: now,
        })
    }

    /// The record of a schedule paused or resumed (not applied). Ticks that pass while
    /// paused never fire: a resume starts from `now`.
    pub fn plan_schedule_pause(
        &self,
        name: &str,
        paused: bool,
        now: Millis,
    ) -> Result<Schedule, ScheduleError> {
        let slot = self
            .schedules
            .slots
            .get(name)
            .ok_or_else(|| ScheduleError::NotFound(name.to_owned()))?;
        let mut def = slot.def.clone();
        // A fire in flight was submitted first, so it lands first: this record must
        // not take its last run back.
        if let Some((tick, task)) = slot.firing {
            def.last_run_ms = tick;
            if task != 0 {
                def.last_task = task;
            }
        }
        if def.paused && !paused {
            def.since_ms = now;
        }
        def.paused = paused;
        Ok(def)
    }

    /// Checks a schedule exists before its removal is persisted.
    pub fn plan_schedule_remove(&self, name: &str) -> Result<Arc<str>, ScheduleError> {
        self.schedules
            .slots
            .get_key_value(name)
            .map(|(k, _)| k.clone())
            .ok_or_else(|| ScheduleError::NotFound(name.to_owned()))
    }

    /// Stops (or lets again) a schedule fire while a change of it is being persisted.
    pub fn hold_schedule(&mut self, name: &str, held: bool) {
        if let Some(slot) = self.schedules.slots.get_mut(name) {
            slot.held = held;
            let key = slot.def.name.clone();
            self.schedules.arm(&key);
        }
    }

    /// Applies a durable schedule record (added, paused or resumed).
    pub fn apply_schedule(&mut self, def: Schedule) -> Result<(), ScheduleError> {
        let timer = Timer::parse(&def.cron, &def.tz)?;
        let name = def.name.clone();
        let floor = def.last_run_ms.max(def.since_ms);
        match self.schedules.slots.get_mut(&name) {
            Some(slot) => {
                slot.floor = slot.floor.max(floor);
                slot.def = def;
                slot.timer = timer;
                slot.held = false;
            }
            None => {
                let slot = Slot::new(def, timer, floor);
                self.schedules.slots.insert(name.clone(), slot);
            }
        }
        self.schedules.arm(&name);
        Ok(())
    }

    /// Forgets a schedule whose removal is durable.
    pub fn remove_schedule(&mut self, name: &str) {
        if let Some(slot) = self.schedules.slots.remove(name) {
            if let Some(at) = slot.armed {
                self.schedules.due.remove(&(at, slot.def.name.clone()));
            }
        }
    }

    /// Every schedule in name order, with its next tick.
    pub fn schedule_views(&self) -> Vec<ScheduleView> {
        self.schedules.slots.values().map(Slot::view).collect()
    }

    /// One schedule, with its next tick.
    pub fn schedule_view(&self, name: &str) -> Option<ScheduleView> {
        self.schedules.slots.get(name).map(Slot::view)
    }

    /// Up to `limit` schedules whose names sort after `after`, and whether more follow.
    pub fn schedule_page(&self, after: &str, limit: usize) -> (Vec<ScheduleView>, bool) {
        use std::ops::Bound;
        let mut range = self
            .schedules
            .slots
            .range::<str, _>((Bound::Excluded(after), Bound::Unbounded));
        let page = range.by_ref().take(limit).map(|(_, s)| s.view()).collect();
        (page, range.next().is_some())
    }

    /// Number of schedules.
    pub fn schedule_count(&self) -> usize {
        self.schedules.slots.len()
    }

    /// When the next schedule is due.
    pub fn next_schedule_run(&self) -> Option<Millis> {
        self.schedules.due.first().map(|(at, _)| *at)
    }

    /// The fires due at `now`, at most `limit`, each to be stored as one job and
    /// reported back with [`Engine::fire_done`]. `alloc(n)` hands out `n` consecutive
    /// task ids. A schedule does not fire again until its fire is done.
    pub fn take_due_fires(
        &mut self,
        now: Millis,
        limit: usize,
        mut alloc: impl FnMut(u64) -> TaskId,
    ) -> Vec<Fire> {
        let mut fires = Vec::new();
        while fires.len() < limit {
            let Some((at, name)) = self.schedules.due.first().cloned() else {
                break;
            };
            if at > now {
                break;
            }
            self.schedules.due.pop_first();
            let Some(slot) = self.schedules.slots.get_mut(&name) else {
                continue;
            };
            slot.armed = None;
            let ticks = due_ticks(slot, now);
            let Some(&last_tick) = ticks.last() else {
                // Nothing due after all (a retry wait ended early): look again later.
                self.schedules.arm(&name);
                continue;
            };
            let queue = slot.def.queue.clone();
            let room = self.queue_room(&queue);
            let publish = ticks.len().min(room);
            let first = if publish > 0 {
                alloc(publish as u64)
            } else {
                0
            };
            let slot = self
                .schedules
                .slots
                .get_mut(&name)
                .expect("looked up above");
            let fire = build_fire(
                &slot.def,
                &ticks[..publish],
                first,
                last_tick,
                now,
                ticks.len() - publish,
            );
            let last_task = if publish > 0 {
                first + publish as u64 - 1
            } else {
                0
            };
            slot.firing = Some((last_tick, last_task));
            fires.push(fire);
        }
        fires
    }

    /// The fire of `schedule` whose last tick is `tick` completed: `stored` says
    /// whether its job is durable; `committed` are its tasks that were really inserted
    /// (not duplicates of an earlier fire of the same tick). They become deliverable
    /// now. Only that fire ends: a schedule removed and added again under the same
    /// name meanwhile has a fire of its own (a later tick) in flight, or none.
    pub fn fire_done(
        &mut self,
        schedule: &str,
        tick: Millis,
        stored: bool,
        committed: &[Committed],
        now: Millis,
    ) {
        if stored {
            self.publish_committed(committed, now);
        }
        let Some(slot) = self.schedules.slots.get_mut(schedule) else {
            return;
        };
        let key = slot.def.name.clone();
        let Some((tick, task)) = slot.firing.filter(|&(t, _)| t == tick) else {
            return;
        };
        slot.firing = None;
        if stored {
            slot.def.last_run_ms = tick;
            if task != 0 {
                slot.def.last_task = task;
            }
            slot.floor = slot.floor.max(tick);
            slot.retry_at = 0;
        } else {
            slot.retry_at = now + FIRE_RETRY_MS;
        }
        self.schedules.arm(&key);
    }

    /// How many more tasks queue `name` takes (its `max_length`), saturating.
    fn queue_room(&self, name: &str) -> usize {
        match self.max_length(name) {
            0 => usize::MAX,
            max => {
                usize::try_from(max.saturating_sub(self.pending_count(name))).unwrap_or(usize::MAX)
            }
        }
    }
}

/// The ticks a due schedule fires now: the latest due one (`none`, `one`), or every
/// due one oldest first, at most [`FIRE_BATCH`] (`all`).
fn due_ticks(slot: &Slot, now: Millis) -> Vec<Millis> {
    match slot.def.catch_up {
        CatchUp::None | CatchUp::One => slot
            .timer
            .latest_at_or_before(now)
            .filter(|&t| t > slot.floor)
            .into_iter()
            .collect(),
        CatchUp::All => {
            let mut ticks = Vec::new();
            let mut after = slot.floor;
            while ticks.len() < FIRE_BATCH {
                match slot.timer.next_after(after) {
                    Some(t) if t <= now => {
                        ticks.push(t);
                        after = t;
                    }
                    _ => break,
                }
            }
            ticks
        }
    }
}

/// The idempotency key of a schedule's tick.
pub fn tick_key(schedule: &str, tick_ms: Millis) -> String {
    format!("schedule:{schedule}:{tick_ms}")
}

fn build_fire(
    def: &Schedule,
    ticks: &[Millis],
    first: TaskId,
    last_tick: Millis,
    now: Millis,
    skipped: usize,
) -> Fire {
    let mut mutations = Vec::with_capacity(ticks.len() + 1);
    let mut committed = Vec::with_capacity(ticks.len());
    for (i, &tick) in ticks.iter().enumerate() {
        let id = first + i as u64;
        let mut headers = def.headers.clone();
        headers.push((
            HEADER_SCHEDULE.to_owned(),
            Bytes::from(def.name.to_string()),
        ));
        headers.push((HEADER_TICK.to_owned(), Bytes::from(tick.to_string())));
        headers.sort_by(|a, b| a.0.cmp(&b.0));
        committed.push(Committed {
            queue: def.queue.clone(),
            id,
            priority: def.priority,
            not_before_ms: 0,
            max_attempts: def.max_attempts,
            lease_ms: 0,
            expires_ms: 0,
        });
        mutations.push(Mutation::Insert(Box::new(NewTask {
            id,
            state: TaskState {
                queue: def.queue.clone(),
                status: TaskStatus::Pending,
                priority: def.priority,
                attempts: 0,
                max_attempts: def.max_attempts,
                lease_ms: 0,
                not_before_ms: 0,
                created_ms: now,
                updated_ms: now,
                last_error: None,
                expires_ms: 0,
            },
            body: TaskBody {
                created_ms: now,
                payload: def.payload.clone(),
                headers,
                idempotency_key: Some(tick_key(&def.name, tick)),
            },
        })));
    }
    let mut record = def.clone();
    record.last_run_ms = last_tick;
    if let Some(c) = committed.last() {
        record.last_task = c.id;
    }
    mutations.push(Mutation::PutSchedule(Box::new(record)));
    Fire {
        schedule: def.name.clone(),
        last_tick,
        mutations,
        committed,
        skipped,
    }
}
