//! Unit tests of task expiry with an explicit clock: a task not started by its expiry
//! is never delivered, whether the expiry index or dispatch sees it first; delayed and
//! ready tasks both; dead with reason `expired` or dropped; counts, redrive, restarts
//! and the bound on work per tick.

use std::sync::Arc;

use super::*;
use crate::model::{Mutation, QueueConfig, StatePatch, TaskState, TaskStatus};

const T0: u64 = 1_000_000;

fn engine() -> Engine {
    Engine::new(EngineConfig::default(), T0)
}

fn task(id: u64, not_before_ms: u64, expires_ms: u64) -> Committed {
    Committed {
        queue: Arc::from("q"),
        id,
        priority: 0,
        not_before_ms,
        max_attempts: 0,
        lease_ms: 0,
        expires_ms,
    }
}

fn step(e: &mut Engine, now: u64, dispatch: bool) -> (Vec<Dispatch>, Vec<Mutation>) {
    let mut out = Vec::new();
    e.tick(now, &mut out);
    if dispatch {
        e.dispatch(now, &mut out);
    }
    let mut d = Vec::new();
    let mut m = Vec::new();
    for x in out {
        match x {
            Effect::Deliver(x) => d.push(x),
            Effect::Persist(x) => m.push(x),
        }
    }
    (d, m)
}

fn counts(e: &Engine) -> (u64, u64, u64, u64, u64) {
    let s = e.queue_snapshot("q").unwrap();
    (
        s.ready,
        s.delayed,
        s.leased,
        s.dead,
        s.counters.expired_tasks,
    )
}

fn expired_patch(id: u64, now: u64) -> Mutation {
    Mutation::Patch {
        id,
        patch: StatePatch {
            status: Some(TaskStatus::Dead),
            last_error: Some(Some(REASON_EXPIRED.into())),
            updated_ms: now,
            ..StatePatch::default()
        },
    }
}

#[test]
fn a_ready_task_nobody_takes_goes_dead_at_its_expiry_and_is_never_delivered() {
    let mut e = engine();
    e.publish_committed(&[task(1, 0, T0 + 100), task(2, 0, 0)], T0);
    assert_eq!(e.next_wakeup(), Some(T0 + 100));
    assert_eq!(step(&mut e, T0 + 99, true).1, vec![]);
    let (_, m) = step(&mut e, T0 + 100, true);
    assert_eq!(m, vec![expired_patch(1, T0 + 100)]);
    assert_eq!(counts(&e), (1, 0, 0, 1, 1));
    assert_eq!(e.pending_count("q"), 1);
    // Its old heap entry is skipped: only task 2 is delivered.
    e.subscribe(1, 1, "q", 10).unwrap();
    let (d, _) = step(&mut e, T0 + 200, true);
    assert_eq!(d.iter().map(|d| d.task).collect::<Vec<_>>(), vec![2]);
    assert_eq!(counts(&e), (0, 0, 1, 1, 1));
    let peeked = e.peek("q", TaskView::Ready, 10).unwrap();
    assert!(peeked.is_empty());
}

#[test]
fn an_expiry_racing_a_dispatch_is_decided_by_the_clock_not_by_who_looks_first() {
    // Dispatch without a tick first (the index not yet looked at): dispatch refuses.
    let mut e = engine();
    e.subscribe(1, 1, "q", 10).unwrap();
    e.publish_committed(&[task(1, 0, T0 + 100)], T0);
    let mut out = Vec::new();
    e.dispatch(T0 + 100, &mut out);
    assert_eq!(out, vec![Effect::Persist(expired_patch(1, T0 + 100))]);
    // The index entry that fires afterwards finds nothing to do.
    let (d, m) = step(&mut e, T0 + 100, true);
    assert!(d.is_empty() && m.is_empty(), "{d:?} {m:?}");
    assert_eq!(counts(&e), (0, 0, 0, 1, 1));

    // One millisecond earlier the task is delivered, and a started task never expires:
    // its lease runs out, it is retried and delivered again after its expiry.
    let mut e = engine();
    e.subscribe(1, 1, "q", 10).unwrap();
    e.publish_committed(&[task(1, 0, T0 + 100)], T0);
    let (d, _) = step(&mut e, T0 + 99, true);
    assert_eq!(d.len(), 1);
    let lease_end = d[0].deadline_ms;
    let (d, m) = step(&mut e, lease_end, true);
    assert!(d.is_empty());
    assert!(!m.contains(&expired_patch(1, lease_end)));
    let (d, _) = step(&mut e, lease_end + 600_000, true);
    assert_eq!((d.len(), d[0].attempt), (1, 2), "retried after its expiry");
    assert_eq!(counts(&e).4, 0);
}

#[test]
fn a_delayed_task_can_expire_before_its_delay_ends() {
    let mut e = engine();
    e.subscribe(1, 1, "q", 10).unwrap();
    e.publish_committed(
        &[task(1, T0 + 500, T0 + 200), task(2, T0 + 100, T0 + 300)],
        T0,
    );
    assert_eq!(counts(&e), (0, 2, 0, 0, 0));
    // Task 2's delay ends first: delivered before its expiry.
    let (d, _) = step(&mut e, T0 + 100, true);
    assert_eq!(d[0].task, 2);
    // Task 1 expires while still delayed.
    let (d, m) = step(&mut e, T0 + 200, true);
    assert!(d.is_empty());
    assert_eq!(m, vec![expired_patch(1, T0 + 200)]);
    assert_eq!(counts(&e), (0, 0, 1, 1, 1));
    let count_due = T0 + 100 + ATTEMPT_WRITE_AFTER_MS;
    assert_eq!(e.next_wakeup(), Some(d_deadline(&e).min(count_due)));
}

fn d_deadline(e: &Engine) -> u64 {
    e.lease_of(2).unwrap().deadline_ms
}

#[test]
fn a_queue_that_drops_expired_tasks_removes_them() {
    let mut e = engine();
    e.set_queue_config(
        "q",
        QueueConfig {
            drop_expired: true,
            ..QueueConfig::default()
        },
    );
    e.publish_committed(&[task(1, 0, T0 + 10), task(2, T0 + 50, T0 + 20)], T0);
    let (_, m) = step(&mut e, T0 + 30, true);
    assert_eq!(
        m,
        vec![Mutation::Remove { id: 1 }, Mutation::Remove { id: 2 }]
    );
    assert_eq!(counts(&e), (0, 0, 0, 0, 2));
}

#[test]
fn an_expired_task_redriven_is_delivered_once_and_purges_count_it_once() {
    let mut e = engine();
    e.publish_committed(&[task(1, 0, T0 + 10), task(2, 0, T0 + 10)], T0);
    step(&mut e, T0 + 10, true);
    assert_eq!(counts(&e), (0, 0, 0, 2, 2));
    e.redrive("q", Some(1), T0 + 20).unwrap();
    assert_eq!(counts(&e), (1, 0, 0, 1, 2));
    assert_eq!(e.peek("q", TaskView::Ready, 10).unwrap()[0].id, 1);
    e.subscribe(1, 1, "q", 10).unwrap();
    let (d, _) = step(&mut e, T0 + 30, true);
    assert_eq!(d.iter().map(|d| d.task).collect::<Vec<_>>(), vec![1]);
    // Purging the other dead one leaves its old ready entry nothing to count.
    let removed = e.purge("q", Some(TaskView::Dead)).unwrap();
    assert_eq!(removed.len(), 1);
    assert_eq!(counts(&e), (0, 0, 1, 0, 2));
    assert_eq!(e.pending_count("q"), 1);
}

#[test]
fn a_restart_keeps_expiries_and_expires_what_passed_while_down() {
    let mut e = engine();
    let state = |expires_ms, attempts| TaskState {
        queue: Arc::from("q"),
        status: TaskStatus::Pending,
        priority: 0,
        attempts,
        max_attempts: 0,
        lease_ms: 0,
        not_before_ms: 0,
        created_ms: T0,
        updated_ms: T0,
        last_error: None,
        expires_ms,
    };
    let now = T0 + 1_000;
    assert_eq!(e.recover_task(1, &state(T0 + 500, 0), now), None);
    assert_eq!(e.recover_task(2, &state(T0 + 5_000, 0), now), None);
    // Started before the crash: no longer subject to its expiry.
    assert_eq!(e.recover_task(3, &state(T0 + 500, 1), now), None);
    let (_, m) = step(&mut e, now, false);
    assert_eq!(m, vec![expired_patch(1, now)]);
    let (_, m) = step(&mut e, T0 + 5_000, false);
    assert_eq!(m, vec![expired_patch(2, T0 + 5_000)]);
    assert_eq!(counts(&e), (1, 0, 0, 2, 2));
}

#[test]
fn one_tick_expires_a_bounded_number_and_asks_to_come_back() {
    let mut e = engine();
    let n = EXPIRY_BATCH as u64 + 10;
    let tasks: Vec<Committed> = (1..=n).map(|id| task(id, 0, T0 + 1)).collect();
    e.publish_committed(&tasks, T0);
    let (_, m) = step(&mut e, T0 + 1, false);
    assert_eq!(m.len(), EXPIRY_BATCH);
    assert_eq!(e.next_wakeup(), Some(T0 + 1), "more is due now");
    let (_, m) = step(&mut e, T0 + 1, false);
    assert_eq!(m.len(), 10);
    assert_eq!(e.next_wakeup(), None);
    assert_eq!(e.expiring_count(), 0);
    assert_eq!(counts(&e), (0, 0, 0, n, n));
}

#[test]
fn a_delivery_given_back_unseen_brings_the_expiry_back() {
    // Released by its consumer before its expiry, then not taken again in time.
    let mut e = engine();
    e.subscribe(1, 1, "q", 1).unwrap();
    e.publish_committed(&[task(1, 0, T0 + 100)], T0);
    let (d, _) = step(&mut e, T0 + 10, true);
    e.unsubscribe(1, 1).unwrap();
    let m = e.release_unseen(1, 1, d[0].token, T0 + 20).unwrap();
    assert!(matches!(
        m,
        Mutation::Patch {
            patch: StatePatch {
                attempts: Some(0),
                ..
            },
            ..
        }
    ));
    assert_eq!(
        e.next_wakeup(),
        Some(T0 + 100),
        "its expiry is watched again"
    );
    let (_, m) = step(&mut e, T0 + 100, true);
    assert_eq!(m, vec![expired_patch(1, T0 + 100)]);
    assert_eq!(counts(&e), (0, 0, 0, 1, 1));

    // Released after its expiry passed: expired at the next tick, never redelivered.
    let mut e = engine();
    e.subscribe(1, 1, "q", 1).unwrap();
    e.publish_committed(&[task(1, 0, T0 + 100)], T0);
    let (d, _) = step(&mut e, T0 + 10, true);
    e.release_unseen(1, 1, d[0].token, T0 + 500).unwrap();
    let (d, m) = step(&mut e, T0 + 500, true);
    assert!(d.is_empty(), "{d:?}");
    assert_eq!(m, vec![expired_patch(1, T0 + 500)]);

    // A delivery the hub could not send, likewise.
    let mut e = engine();
    e.subscribe(1, 1, "q", 1).unwrap();
    e.publish_committed(&[task(1, 0, T0 + 100)], T0);
    let (d, _) = step(&mut e, T0 + 10, true);
    e.undeliverable(1, 1, d[0].token, true, T0 + 10);
    let (d, m) = step(&mut e, T0 + 100, true);
    assert!(d.is_empty(), "{d:?}");
    assert_eq!(m, vec![expired_patch(1, T0 + 100)]);
}
