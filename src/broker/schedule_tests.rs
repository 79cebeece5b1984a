//! Unit tests of schedules with an explicit clock: cron in time zones across DST
//! changes, five- and six-field forms, catch-up after a restart, exactly one task per
//! tick whether a fire's job is stored or lost, and bad input.

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::Bytes;
use chrono::TimeZone;

use super::*;
use crate::model::{CatchUp, Mutation, Schedule, TaskId};

fn utc_ms(y: i32, mo: u32, d: u32, h: u32, mi: u32, s: u32) -> u64 {
    chrono::Utc
        .with_ymd_and_hms(y, mo, d, h, mi, s)
        .single()
        .unwrap()
        .timestamp_millis() as u64
}

/// Every tick of `timer` in `[from, to)`.
fn ticks(timer: &Timer, from: u64, to: u64) -> Vec<u64> {
    let mut out = Vec::new();
    let mut after = from - 1;
    while let Some(t) = timer.next_after(after) {
        if t >= to {
            break;
        }
        out.push(t);
        after = t;
    }
    out
}

#[test]
fn hourly_ticks_follow_absolute_time_across_both_dst_changes() {
    let timer = Timer::parse("0 0 * * * *", "America/New_York").unwrap();
    // 2026-03-08 local day is 23 hours long (02:00 EST -> 03:00 EDT).
    let spring = ticks(
        &timer,
        utc_ms(2026, 3, 8, 5, 0, 0),
        utc_ms(2026, 3, 9, 4, 0, 0),
    );
    assert_eq!(spring.len(), 23, "{spring:?}");
    // 2026-11-01 is 25 hours long (02:00 EDT -> 01:00 EST): 01:00 comes twice.
    let fall = ticks(
        &timer,
        utc_ms(2026, 11, 1, 4, 0, 0),
        utc_ms(2026, 11, 2, 5, 0, 0),
    );
    assert_eq!(fall.len(), 25, "{fall:?}");
    for w in spring.windows(2).chain(fall.windows(2)) {
        assert_eq!(w[1] - w[0], 3_600_000, "one hour apart in absolute time");
    }
}

#[test]
fn a_daily_tick_in_a_skipped_or_repeated_hour_fires_once_that_day() {
    let timer = Timer::parse("30 1 * * *", "America/New_York").unwrap();
    // 01:30 happens twice on 2026-11-01: fired once.
    let fall = ticks(
        &timer,
        utc_ms(2026, 11, 1, 4, 0, 0),
        utc_ms(2026, 11, 2, 5, 0, 0),
    );
    assert_eq!(
        fall,
        vec![utc_ms(2026, 11, 1, 5, 30, 0)],
        "the first 01:30 (EDT)"
    );
    // 02:30 does not exist on 2026-03-08: still once that day, not skipped.
    let timer = Timer::parse("0 30 2 * * *", "America/New_York").unwrap();
    let spring = ticks(
        &timer,
        utc_ms(2026, 3, 8, 5, 0, 0),
        utc_ms(2026, 3, 9, 4, 0, 0),
    );
    assert_eq!(spring.len(), 1, "{spring:?}");
    assert!(
        spring[0] >= utc_ms(2026, 3, 8, 7, 0, 0),
        "after the gap (03:00 EDT)"
    );
}

#[test]
fn five_and_six_field_expressions_and_zones() {
    let five = Timer::parse("*/5 * * * *", "").unwrap();
    let t = utc_ms(2026, 1, 1, 0, 2, 30);
    assert_eq!(five.next_after(t), Some(utc_ms(2026, 1, 1, 0, 5, 0)));
    let six = Timer::parse("0 */5 * * * *", "UTC").unwrap();
    assert_eq!(six.next_after(t), Some(utc_ms(2026, 1, 1, 0, 5, 0)));
    let secs = Timer::parse("*/10 * * * * *", "UTC").unwrap();
    assert_eq!(secs.next_after(t + 1), Some(t + 10_000), "sub-second start");
    assert_eq!(secs.latest_at_or_before(t + 9_999), Some(t));
    // Asia/Shanghai is UTC+8 without DST: 09:00 there is 01:00 UTC.
    let sh = Timer::parse("0 0 9 * * *", "Asia/Shanghai").unwrap();
    assert_eq!(
        sh.next_after(utc_ms(2026, 6, 1, 0, 0, 0)),
        Some(utc_ms(2026, 6, 1, 1, 0, 0))
    );
}

#[test]
fn bad_expressions_and_zones_are_typed_errors() {
    assert!(matches!(
        Timer::parse("61 * * * *", ""),
        Err(ScheduleError::InvalidCron { .. })
    ));
    assert!(matches!(
        Timer::parse("* * *", ""),
        Err(ScheduleError::InvalidCron { .. })
    ));
    assert_eq!(
        Timer::parse("* * * * *", "Mars/Olympus").unwrap_err(),
        ScheduleError::UnknownTimeZone("Mars/Olympus".into())
    );
    let e = Engine::new(EngineConfig::default(), T0);
    let never = ScheduleSpec {
        cron: "0 0 0 30 2 *".into(), // 30 February
        ..spec("x", CatchUp::One)
    };
    assert!(e.plan_schedule_add(never, T0).is_err());
}

const T0: u64 = 1_780_000_000_000; // a whole second

fn spec(name: &str, catch_up: CatchUp) -> ScheduleSpec {
    ScheduleSpec {
        name: name.into(),
        queue: "q".into(),
        cron: "* * * * * *".into(), // every second
        tz: String::new(),
        payload: Bytes::from_static(b"tick"),
        headers: vec![("b".into(), Bytes::new()), ("a".into(), Bytes::new())],
        priority: 2,
        max_attempts: 4,
        catch_up,
    }
}

/// A broker's durable side for these tests: schedule records and the ticks of the
/// tasks stored, applied job by job as the store would.
#[derive(Default)]
struct Disk {
    schedules: BTreeMap<Arc<str>, Schedule>,
    /// Task id -> the tick in its idempotency key.
    tasks: BTreeMap<TaskId, u64>,
}

impl Disk {
    fn store(&mut self, muts: &[Mutation]) {
        for m in muts {
            match m {
                Mutation::Insert(t) => {
                    let key = t.body.idempotency_key.as_deref().unwrap();
                    let tick = key.rsplit(':').next().unwrap().parse().unwrap();
                    self.tasks.insert(t.id, tick);
                }
                Mutation::PutSchedule(s) => {
                    self.schedules.insert(s.name.clone(), (**s).clone());
                }
                Mutation::RemoveSchedule { name } => {
                    self.schedules.remove(name);
                }
                other => panic!("unexpected {other:?}"),
            }
        }
    }

    fn start(&self, now: u64) -> Engine {
        let mut e = Engine::new(EngineConfig::default(), now);
        for s in self.schedules.values() {
            e.load_schedule(s.clone(), now).unwrap();
        }
        e
    }
}

struct Ids(u64);

impl Ids {
    fn alloc(&mut self, n: u64) -> u64 {
        let first = self.0;
        self.0 += n;
        first
    }
}

/// One hub turn: fires due schedules, stores (or loses) their jobs, reports back.
fn turn(e: &mut Engine, disk: &mut Disk, ids: &mut Ids, now: u64, store: bool) -> usize {
    let fires = e.take_due_fires(now, 16, |n| ids.alloc(n));
    let n = fires.len();
    for fire in fires {
        if store {
            disk.store(&fire.mutations);
        }
        e.fire_done(&fire.schedule, fire.last_tick, store, &fire.committed, now);
    }
    n
}

fn add(e: &mut Engine, disk: &mut Disk, spec: ScheduleSpec, now: u64) {
    let s = e.plan_schedule_add(spec, now).unwrap();
    disk.store(&[Mutation::PutSchedule(Box::new(s.clone()))]);
    e.apply_schedule(s).unwrap();
}

fn tick_list(disk: &Disk) -> Vec<u64> {
    disk.tasks.values().copied().collect()
}

#[test]
fn each_tick_publishes_once_and_a_restart_catches_up_once() {
    let mut disk = Disk::default();
    let mut ids = Ids(1);
    let mut e = Engine::new(EngineConfig::default(), T0);
    add(&mut e, &mut disk, spec("s", CatchUp::One), T0);
    assert_eq!(e.next_schedule_run(), Some(T0 + 1_000));
    assert_eq!(
        e.next_wakeup(),
        None,
        "the engine's own wake-ups exclude schedules"
    );
    // Turns every 250 ms for 5 s: one task per second, none twice.
    let mut now = T0;
    while now < T0 + 5_000 {
        now += 250;
        turn(&mut e, &mut disk, &mut ids, now, true);
    }
    let expected: Vec<u64> = (1..=5).map(|s| T0 + s * 1_000).collect();
    assert_eq!(tick_list(&disk), expected);
    // Tasks are in the engine, ready, with the schedule's settings.
    assert_eq!(e.pending_count("q"), 5);
    // The broker dies at T0 + 5.5 s and is back at T0 + 9.2 s: ticks 6..9 were missed.
    let restart = T0 + 9_200;
    let mut e = disk.start(restart);
    assert_eq!(turn(&mut e, &mut disk, &mut ids, restart, true), 1);
    assert_eq!(turn(&mut e, &mut disk, &mut ids, restart + 300, true), 0);
    turn(&mut e, &mut disk, &mut ids, T0 + 10_000, true);
    let mut expected = expected;
    expected.extend([T0 + 9_000, T0 + 10_000]);
    assert_eq!(
        tick_list(&disk),
        expected,
        "one catch-up run, for the latest missed tick"
    );
    let view = &e.schedule_views()[0];
    assert_eq!(view.schedule.last_run_ms, T0 + 10_000);
    assert_eq!(view.schedule.last_task, *disk.tasks.keys().last().unwrap());
    assert_eq!(view.next_run_ms, Some(T0 + 11_000));
}

#[test]
fn catch_up_none_skips_and_all_fires_every_missed_tick_in_order() {
    for (mode, want) in [(CatchUp::None, 0usize), (CatchUp::All, 100)] {
        let mut disk = Disk::default();
        let mut ids = Ids(1);
        let mut e = Engine::new(EngineConfig::default(), T0);
        add(&mut e, &mut disk, spec("s", mode), T0);
        drop(e);
        // Down for 100 s.
        let restart = T0 + 100_500;
        let mut e = disk.start(restart);
        for k in 0..10 {
            turn(&mut e, &mut disk, &mut ids, restart + k, true);
        }
        let got = tick_list(&disk);
        assert_eq!(got.len(), want, "{mode:?}");
        let expected: Vec<u64> = (1..=want as u64).map(|s| T0 + s * 1_000).collect();
        assert_eq!(got, expected, "{mode:?}: oldest first, each once");
        turn(&mut e, &mut disk, &mut ids, T0 + 101_000, true);
        assert_eq!(*tick_list(&disk).last().unwrap(), T0 + 101_000);
    }
}

#[test]
fn a_lost_fire_is_retried_and_an_unfinished_fire_never_fires_twice() {
    let mut disk = Disk::default();
    let mut ids = Ids(1);
    let mut e = Engine::new(EngineConfig::default(), T0);
    add(&mut e, &mut disk, spec("s", CatchUp::One), T0);
    // A fire whose job is in flight: later turns do not fire the schedule again.
    let fires = e.take_due_fires(T0 + 1_000, 16, |n| ids.alloc(n));
    assert_eq!(fires.len(), 1);
    assert!(e
        .take_due_fires(T0 + 1_500, 16, |n| ids.alloc(n))
        .is_empty());
    // Its job fails (STORAGE): nothing stored, the tick is tried again a second later.
    e.fire_done(
        "s",
        fires[0].last_tick,
        false,
        &fires[0].committed,
        T0 + 1_500,
    );
    assert_eq!(e.pending_count("q"), 0, "a failed fire publishes nothing");
    assert_eq!(
        turn(&mut e, &mut disk, &mut ids, T0 + 2_000, true),
        0,
        "retry waits"
    );
    assert_eq!(turn(&mut e, &mut disk, &mut ids, T0 + 2_500, true), 1);
    assert_eq!(tick_list(&disk), [T0 + 2_000], "the latest due tick, once");
    // A crash with a fire's job lost: the restart fires that tick (not twice).
    let fires = e.take_due_fires(T0 + 3_000, 16, |n| ids.alloc(n));
    assert_eq!(fires.len(), 1);
    let mut e = disk.start(T0 + 3_100);
    turn(&mut e, &mut disk, &mut ids, T0 + 3_100, true);
    turn(&mut e, &mut disk, &mut ids, T0 + 3_200, true);
    assert_eq!(tick_list(&disk), [T0 + 2_000, T0 + 3_000]);
    // A crash with a fire's job stored but not reported: the restart does not refire it.
    let fires = e.take_due_fires(T0 + 4_000, 16, |n| ids.alloc(n));
    disk.store(&fires[0].mutations);
    let mut e = disk.start(T0 + 4_100);
    assert_eq!(turn(&mut e, &mut disk, &mut ids, T0 + 4_100, true), 0);
    assert_eq!(tick_list(&disk), [T0 + 2_000, T0 + 3_000, T0 + 4_000]);
}

#[test]
fn the_task_of_a_tick_carries_the_schedule_and_the_tick_key() {
    let mut disk = Disk::default();
    let mut ids = Ids(70);
    let mut e = Engine::new(EngineConfig::default(), T0);
    add(&mut e, &mut disk, spec("nightly", CatchUp::One), T0);
    let fires = e.take_due_fires(T0 + 1_000, 16, |n| ids.alloc(n));
    let Mutation::Insert(task) = &fires[0].mutations[0] else {
        panic!("{:?}", fires[0].mutations);
    };
    assert_eq!(task.id, 70);
    assert_eq!(
        task.body.idempotency_key.as_deref(),
        Some(&*tick_key("nightly", T0 + 1_000))
    );
    assert_eq!(task.body.payload, Bytes::from_static(b"tick"));
    let names: Vec<&str> = task.body.headers.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(
        names,
        ["a", "b", HEADER_SCHEDULE, HEADER_TICK],
        "headers in key order"
    );
    let tick = &task.body.headers[3].1;
    assert_eq!(tick, &Bytes::from((T0 + 1_000).to_string()));
    assert_eq!((task.state.priority, task.state.max_attempts), (2, 4));
    let Mutation::PutSchedule(s) = &fires[0].mutations[1] else {
        panic!("the schedule's record is in the same job");
    };
    assert_eq!((s.last_run_ms, s.last_task), (T0 + 1_000, 70));
}

#[test]
fn pause_skips_ticks_resume_starts_from_now_and_remove_stops_firing() {
    let mut disk = Disk::default();
    let mut ids = Ids(1);
    let mut e = Engine::new(EngineConfig::default(), T0);
    add(&mut e, &mut disk, spec("s", CatchUp::All), T0);
    turn(&mut e, &mut disk, &mut ids, T0 + 1_000, true);
    let paused = e.plan_schedule_pause("s", true, T0 + 1_100).unwrap();
    e.hold_schedule("s", true);
    assert!(
        e.take_due_fires(T0 + 2_000, 16, |n| ids.alloc(n))
            .is_empty(),
        "held"
    );
    disk.store(&[Mutation::PutSchedule(Box::new(paused.clone()))]);
    e.apply_schedule(paused).unwrap();
    assert_eq!(
        turn(&mut e, &mut disk, &mut ids, T0 + 5_000, true),
        0,
        "paused"
    );
    assert_eq!(e.schedule_views()[0].next_run_ms, None);
    let resumed = e.plan_schedule_pause("s", false, T0 + 5_500).unwrap();
    e.apply_schedule(resumed).unwrap();
    turn(&mut e, &mut disk, &mut ids, T0 + 6_000, true);
    assert_eq!(
        tick_list(&disk),
        [T0 + 1_000, T0 + 6_000],
        "catch-up all skips paused time"
    );
    // A pause planned while a fire is in flight keeps that fire's last run.
    let fires = e.take_due_fires(T0 + 7_000, 16, |n| ids.alloc(n));
    let paused = e.plan_schedule_pause("s", true, T0 + 7_000).unwrap();
    assert_eq!(paused.last_run_ms, T0 + 7_000);
    e.hold_schedule("s", true);
    e.hold_schedule("s", false);
    assert!(
        e.take_due_fires(T0 + 8_000, 16, |n| ids.alloc(n))
            .is_empty(),
        "a schedule with a fire in flight does not fire"
    );
    e.fire_done(
        "s",
        fires[0].last_tick,
        true,
        &fires[0].committed,
        T0 + 8_000,
    );
    let name = e.plan_schedule_remove("s").unwrap();
    e.hold_schedule(&name, true);
    e.remove_schedule(&name);
    assert_eq!(e.next_schedule_run(), None);
    assert_eq!(
        e.plan_schedule_remove("s"),
        Err(ScheduleError::NotFound("s".into()))
    );
}

#[test]
fn adding_checks_the_name_and_the_limit_and_a_full_queue_skips_ticks() {
    let mut disk = Disk::default();
    let mut ids = Ids(1);
    let mut e = Engine::new(EngineConfig::default(), T0);
    e.set_max_schedules(2);
    add(&mut e, &mut disk, spec("a", CatchUp::One), T0);
    assert_eq!(
        e.plan_schedule_add(spec("a", CatchUp::One), T0),
        Err(ScheduleError::Exists("a".into()))
    );
    add(&mut e, &mut disk, spec("b", CatchUp::One), T0);
    assert_eq!(
        e.plan_schedule_add(spec("c", CatchUp::One), T0),
        Err(ScheduleError::TooMany(2))
    );
    e.remove_schedule("b");
    e.set_queue_config(
        "q",
        crate::model::QueueConfig {
            max_length: 2,
            ..Default::default()
        },
    );
    for s in 1..=4 {
        turn(&mut e, &mut disk, &mut ids, T0 + s * 1_000, true);
    }
    assert_eq!(disk.tasks.len(), 2, "the queue holds 2");
    assert_eq!(e.pending_count("q"), 2);
    let view = &e.schedule_views()[0];
    assert_eq!(
        view.schedule.last_run_ms,
        T0 + 4_000,
        "skipped ticks are done with"
    );
}
