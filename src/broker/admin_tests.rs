//! Unit tests of queue administration on the engine: peek changes nothing and orders
//! each state, configuration is validated, purge / redrive / delete keep the indexes
//! consistent. End-to-end admin behaviour over TCP is in `tests/admin.rs`.

use std::sync::Arc;

use super::*;
use crate::model::{Mutation, QueueConfig, TaskStatus};

const T0: u64 = 1_000_000;

fn engine() -> Engine {
    let config = EngineConfig {
        queue_defaults: QueueConfig {
            lease_ms: 1_000,
            max_attempts: 2,
            backoff_min_ms: 100,
            backoff_max_ms: 1_000,
            ..QueueConfig::default()
        },
        max_lease_ms: 60_000,
        ..EngineConfig::default()
    };
    Engine::new(config, T0)
}

fn publish(e: &mut Engine, queue: &str, id: u64, priority: i32, not_before_ms: u64) {
    e.publish_committed(
        &[Committed {
            queue: Arc::from(queue),
            id,
            priority,
            not_before_ms,
            max_attempts: 0,
            lease_ms: 0,
            expires_ms: 0,
        }],
        T0,
    );
}

fn step(e: &mut Engine, now: u64) -> Vec<Dispatch> {
    let mut out = Vec::new();
    e.tick(now, &mut out);
    e.dispatch(now, &mut out);
    out.into_iter()
        .filter_map(|x| match x {
            Effect::Deliver(d) => Some(d),
            Effect::Persist(_) => None,
        })
        .collect()
}

fn ids(p: &[Peeked]) -> Vec<u64> {
    p.iter().map(|x| x.id).collect()
}

/// One queue with tasks in every state: 1 and 2 ready (2 has higher priority),
/// 3 delayed, 4 leased on conn 7, 5 dead.
fn every_state() -> Engine {
    let mut e = engine();
    publish(&mut e, "q", 5, 0, 0);
    e.subscribe(7, 1, "q", 1).unwrap();
    let d = step(&mut e, T0);
    e.nack(7, 5, d[0].token, NackMode::Dead, "boom", T0)
        .unwrap();
    publish(&mut e, "q", 4, 0, 0);
    assert_eq!(step(&mut e, T0).len(), 1, "4 is leased");
    e.unsubscribe(7, 1).unwrap();
    publish(&mut e, "q", 1, 0, 0);
    publish(&mut e, "q", 2, 9, 0);
    publish(&mut e, "q", 3, 0, T0 + 5_000);
    e
}

#[test]
fn peek_lists_each_state_in_order_and_changes_nothing() {
    let e = every_state();
    let before = e.snapshot();
    let ready = e.peek("q", TaskView::Ready, 10).unwrap();
    assert_eq!(ids(&ready), vec![2, 1], "delivery order: priority first");
    let delayed = e.peek("q", TaskView::Delayed, 10).unwrap();
    assert_eq!(
        (ids(&delayed), delayed[0].not_before_ms),
        (vec![3], T0 + 5_000)
    );
    let leased = e.peek("q", TaskView::Leased, 10).unwrap();
    assert_eq!(ids(&leased), vec![4]);
    let lease = leased[0].lease.expect("lease shown");
    assert_eq!(
        (lease.conn, lease.sub, lease.deadline_ms),
        (7, 1, T0 + 1_000)
    );
    assert_eq!(leased[0].attempts, 1);
    let dead = e.peek("q", TaskView::Dead, 10).unwrap();
    assert_eq!((ids(&dead), dead[0].attempts), (vec![5], 1));
    assert_eq!(ids(&e.peek("q", TaskView::Ready, 1).unwrap()), vec![2]);
    assert_eq!(e.snapshot(), before, "peeking changed the queue");
    assert_eq!(e.oldest_ready("q"), Some(1));
    assert_eq!(
        e.peek("nope", TaskView::Ready, 1),
        Err(AdminError::NoSuchQueue("nope".into()))
    );
}

#[test]
fn ready_peek_matches_dispatch_order_on_a_large_heap() {
    let mut e = engine();
    for id in 1..=500u64 {
        publish(&mut e, "q", id, (id % 7) as i32, 0);
    }
    let peeked = ids(&e.peek("q", TaskView::Ready, 50).unwrap());
    e.subscribe(1, 1, "q", 50).unwrap();
    let delivered: Vec<u64> = step(&mut e, T0).iter().map(|d| d.task).collect();
    assert_eq!(peeked, delivered);
}

#[test]
fn configuration_is_validated_as_a_whole_and_persisted() {
    let mut e = engine();
    let m = e
        .configure_queue(
            "q",
            &QueueConfigUpdate {
                lease_ms: Some(5_000),
                max_attempts: Some(9),
                ..QueueConfigUpdate::default()
            },
        )
        .unwrap();
    let Mutation::PutQueue { name, config } = m else {
        panic!("expected PutQueue, got {m:?}");
    };
    assert_eq!(
        (&*name, config.lease_ms, config.max_attempts),
        ("q", 5_000, 9)
    );
    assert_eq!(config.backoff_min_ms, 100, "unset fields keep their value");
    assert_eq!(e.queue_config("q"), Some(&config));
    let too_long = QueueConfigUpdate {
        lease_ms: Some(61_000),
        ..QueueConfigUpdate::default()
    };
    assert!(matches!(
        e.configure_queue("q", &too_long),
        Err(AdminError::Invalid { field: "lease", .. })
    ));
    // Only the minimum given, above the current maximum: inconsistent.
    let inverted = QueueConfigUpdate {
        backoff_min_ms: Some(5_000),
        ..QueueConfigUpdate::default()
    };
    assert!(matches!(
        e.configure_queue("q", &inverted),
        Err(AdminError::Invalid {
            field: "backoff",
            ..
        })
    ));
    assert_eq!(
        e.queue_config("q"),
        Some(&config),
        "refused changes apply nothing"
    );
}

#[test]
fn pause_and_resume_are_persisted_and_gate_delivery() {
    let mut e = engine();
    let m = e.set_paused("q", true);
    assert!(matches!(m, Mutation::PutQueue { ref config, .. } if config.paused));
    publish(&mut e, "q", 1, 0, 0);
    e.subscribe(1, 1, "q", 1).unwrap();
    assert!(step(&mut e, T0).is_empty());
    e.set_paused("q", false);
    assert_eq!(step(&mut e, T0).len(), 1);
}

#[test]
fn purge_by_state_and_default_leaves_leases() {
    let mut e = every_state();
    assert_eq!(e.purge("q", Some(TaskView::Dead)).unwrap(), vec![5]);
    let mut all = e.purge("q", None).unwrap();
    all.sort_unstable();
    assert_eq!(all, vec![1, 2, 3]);
    let s = e.queue_snapshot("q").unwrap();
    assert_eq!((s.ready, s.delayed, s.leased, s.dead), (0, 0, 1, 0));
    assert_eq!(e.next_wakeup(), Some(T0 + 1_000), "only the lease is left");
    assert_eq!(e.purge("q", Some(TaskView::Leased)).unwrap(), vec![4]);
    assert_eq!(e.lease_count(), 0);
    assert!(e.peek("q", TaskView::Leased, 10).unwrap().is_empty());
}

#[test]
fn purging_leases_frees_credit() {
    let mut e = engine();
    publish(&mut e, "q", 1, 0, 0);
    publish(&mut e, "q", 2, 0, 0);
    e.subscribe(1, 1, "q", 1).unwrap();
    let first = step(&mut e, T0).remove(0);
    assert!(step(&mut e, T0).is_empty(), "credit is used up");
    e.purge("q", Some(TaskView::Leased)).unwrap();
    assert_eq!(
        e.ack(1, first.task, first.token, bytes::Bytes::new(), T0),
        Err(EngineError::LeaseExpired { task: first.task }),
        "the holder is fenced off"
    );
    let d = step(&mut e, T0);
    assert_eq!(d.iter().map(|d| d.task).collect::<Vec<_>>(), vec![2]);
    // The old lease's deadline passes without effect.
    assert!(step(&mut e, T0 + 1_000).is_empty());
}

#[test]
fn redrive_resets_attempts_oldest_first() {
    let mut e = engine();
    for id in 1..=3 {
        publish(&mut e, "q", id, 0, 0);
    }
    e.subscribe(1, 1, "q", 10).unwrap();
    for d in step(&mut e, T0) {
        e.nack(1, d.task, d.token, NackMode::Dead, "bad", T0)
            .unwrap();
    }
    assert_eq!(e.queue_snapshot("q").unwrap().dead, 3);
    let m = e.redrive("q", Some(2), T0).unwrap();
    assert_eq!(m.len(), 2);
    assert!(matches!(&m[0], Mutation::Patch { id: 1, patch }
        if patch.status == Some(TaskStatus::Pending) && patch.attempts == Some(0)));
    let s = e.queue_snapshot("q").unwrap();
    assert_eq!((s.ready, s.dead), (2, 1));
    let d = step(&mut e, T0);
    assert_eq!(
        d.iter().map(|d| (d.task, d.attempt)).collect::<Vec<_>>(),
        vec![(1, 1), (2, 1)],
        "attempts start over"
    );
    assert_eq!(e.redrive("q", None, T0).unwrap().len(), 1);
    assert_eq!(e.queue_snapshot("q").unwrap().dead, 0);
}

#[test]
fn delete_removes_every_task_and_ends_subscriptions() {
    let mut e = every_state();
    e.subscribe(8, 3, "q", 4).unwrap();
    publish(&mut e, "other", 10, 0, T0 + 100);
    let deleted = e.delete_queue("q").unwrap();
    assert_eq!(deleted.tasks, vec![1, 2, 3, 4, 5]);
    assert_eq!(deleted.ended, vec![(8, 3)]);
    assert!(!e.has_queue("q"));
    assert_eq!(
        e.snapshot()
            .iter()
            .map(|q| q.name.to_string())
            .collect::<Vec<_>>(),
        vec!["other"]
    );
    assert_eq!(e.lease_count(), 0);
    assert_eq!(e.next_wakeup(), Some(T0 + 100), "only other's delayed task");
    assert_eq!(e.unsubscribe(8, 3), Err(EngineError::NoSuchSubscription(3)));
    // The name is free again; the slot is reused and starts empty with defaults.
    publish(&mut e, "fresh", 11, 0, 0);
    let fresh = e.queue_snapshot("fresh").unwrap();
    assert_eq!((fresh.ready, fresh.dead, fresh.consumers), (1, 0, 0));
    assert_eq!(e.snapshot().len(), 2);
    // The released delayed task of `other` still lands in `other`.
    e.tick(T0 + 100, &mut Vec::new());
    assert_eq!(e.queue_snapshot("other").unwrap().ready, 1);
    assert_eq!(
        e.delete_queue("q"),
        Err(AdminError::NoSuchQueue("q".into()))
    );
}

/// Cost of the operator scans on a large queue. Not run by default; measured with
/// `cargo test --release -p squall --lib measure_admin_scans -- --ignored --nocapture`.
#[test]
#[ignore]
fn measure_admin_scans() {
    let mut e = engine();
    let n = 1_000_000u64;
    let tasks: Vec<Committed> = (1..=n)
        .map(|id| Committed {
            queue: Arc::from("q"),
            id,
            priority: (id % 10) as i32,
            not_before_ms: 0,
            max_attempts: 0,
            lease_ms: 0,
            expires_ms: 0,
        })
        .collect();
    e.publish_committed(&tasks, T0);
    let t = std::time::Instant::now();
    assert_eq!(e.oldest_ready("q"), Some(1));
    println!("oldest_ready over {n} ready: {:?}", t.elapsed());
    for limit in [20, 1000] {
        let t = std::time::Instant::now();
        assert_eq!(e.peek("q", TaskView::Ready, limit).unwrap().len(), limit);
        println!("peek ready limit {limit} over {n} ready: {:?}", t.elapsed());
    }
    let t = std::time::Instant::now();
    assert_eq!(
        e.purge("q", Some(TaskView::Ready)).unwrap().len(),
        n as usize
    );
    println!("purge {n} ready (in memory): {:?}", t.elapsed());
}

fn all_views(e: &Engine) -> Vec<Vec<u64>> {
    [
        TaskView::Ready,
        TaskView::Delayed,
        TaskView::Leased,
        TaskView::Dead,
    ]
    .into_iter()
    .map(|s| ids(&e.peek("q", s, 100).unwrap()))
    .collect()
}

#[test]
fn plans_change_nothing_until_applied() {
    let mut e = every_state();
    let before = (e.snapshot(), all_views(&e));
    let plans = [
        e.plan_configure(
            "q",
            &QueueConfigUpdate {
                lease_ms: Some(5_000),
                ..QueueConfigUpdate::default()
            },
        )
        .unwrap(),
        e.plan_pause("q", true),
        e.plan_purge("q", None).unwrap(),
        e.plan_purge("q", Some(TaskView::Leased)).unwrap(),
        e.plan_redrive("q", None, T0).unwrap(),
        e.plan_delete("q").unwrap(),
    ];
    assert_eq!((e.snapshot(), all_views(&e)), before, "planning is pure");
    assert_eq!(plans[2].tasks, vec![1, 2, 3, 5]);
    assert_eq!(plans[3].tasks, vec![4]);
    assert_eq!(plans[4].tasks, vec![5]);
    assert_eq!(plans[5].tasks, vec![1, 2, 3, 4, 5]);
    let muts: Vec<Mutation> = plans[5].mutations().collect();
    assert_eq!(muts.len(), 6);
    assert!(matches!(muts[5], Mutation::RemoveQueue { .. }));
    // A plan that did not become durable is never applied: the hub just drops it.
    // One that did is applied, and only then is it visible.
    e.apply_admin(&plans[2], &plans[2].tasks, true);
    assert_eq!(all_views(&e), vec![vec![], vec![], vec![4], vec![]]);
}

#[test]
fn a_partly_durable_plan_applies_only_its_durable_tasks_and_no_queue_change() {
    let mut e = every_state();
    let plan = e.plan_delete("q").unwrap();
    // Only the first chunk (tasks 1 and 2) was stored: the queue is not deleted.
    let applied = e.apply_admin(&plan, &plan.tasks[..2], false);
    assert_eq!(applied.tasks, 2);
    assert!(applied.ended.is_empty());
    assert_eq!(all_views(&e), vec![vec![], vec![3], vec![4], vec![5]]);
    let config = e.plan_configure(
        "q",
        &QueueConfigUpdate {
            max_attempts: Some(9),
            ..QueueConfigUpdate::default()
        },
    );
    e.apply_admin(&config.unwrap(), &[], false);
    assert_eq!(e.queue_snapshot("q").unwrap().config.max_attempts, 2);
}

#[test]
fn a_held_queue_dispatches_nothing_and_apply_finds_tasks_that_moved() {
    let mut e = every_state();
    let plan = e.plan_purge("q", None).unwrap();
    e.hold_queue("q", true);
    e.subscribe(8, 1, "q", 10).unwrap();
    assert!(step(&mut e, T0).is_empty(), "nothing dispatched while held");
    // Meanwhile task 3's delay passes and task 4's lease expires: both move.
    assert!(step(&mut e, T0 + 10_000).is_empty(), "still held");
    // A task published meanwhile is not part of the plan.
    publish(&mut e, "q", 6, 0, 0);
    let applied = e.apply_admin(&plan, &plan.tasks, true);
    assert_eq!(applied.tasks, 4, "1, 2, 3 and 5 wherever they are now");
    e.hold_queue("q", false);
    let got: Vec<u64> = step(&mut e, T0 + 20_000).iter().map(|d| d.task).collect();
    assert_eq!(got.len(), 2);
    assert!(got.contains(&6) && got.contains(&4), "{got:?}");
}

#[test]
fn a_delete_applied_after_a_publish_keeps_the_new_task_in_a_fresh_queue() {
    let mut e = every_state();
    e.subscribe(8, 1, "q", 10).unwrap();
    let plan = e.plan_delete("q").unwrap();
    e.hold_queue("q", true);
    publish(&mut e, "q", 6, 0, 0);
    let applied = e.apply_admin(&plan, &plan.tasks, true);
    assert_eq!(applied.tasks, 5);
    assert_eq!(applied.ended, vec![(8, 1)]);
    let s = e.queue_snapshot("q").unwrap();
    assert_eq!((s.ready, s.consumers, s.dead), (1, 0, 0));
    assert_eq!(ids(&e.peek("q", TaskView::Ready, 10).unwrap()), vec![6]);
}

#[test]
fn a_redrive_plan_skips_tasks_swept_meanwhile() {
    let mut e = every_state();
    let plan = e.plan_redrive("q", None, T0).unwrap();
    assert_eq!(plan.tasks, vec![5]);
    e.forget_dead("q", 5);
    assert_eq!(e.apply_admin(&plan, &plan.tasks, true).tasks, 0);
    assert_eq!(e.queue_snapshot("q").unwrap().ready, 2);
}

#[test]
fn a_connections_subscriptions_show_their_credit_and_what_they_hold() {
    let mut e = engine();
    assert!(e.subscriptions_of(3).is_empty(), "unknown connection");
    publish(&mut e, "a", 1, 0, 0);
    publish(&mut e, "a", 2, 0, 0);
    e.subscribe(3, 10, "a", 5).unwrap();
    e.subscribe(3, 11, "b", 1).unwrap();
    e.subscribe(4, 10, "a", 1).unwrap();
    let d = step(&mut e, T0);
    assert_eq!(d.len(), 2);
    let held_by_3 = d.iter().filter(|d| d.conn == 3).count() as u32;
    let view = |e: &Engine, conn| {
        e.subscriptions_of(conn)
            .into_iter()
            .map(|s| (s.sub, s.queue.to_string(), s.prefetch, s.in_flight))
            .collect::<Vec<_>>()
    };
    assert_eq!(
        view(&e, 3),
        vec![
            (10, "a".to_owned(), 5, held_by_3),
            (11, "b".to_owned(), 1, 0)
        ]
    );
    assert_eq!(view(&e, 4), vec![(10, "a".to_owned(), 1, 2 - held_by_3)]);
    e.unsubscribe(3, 11).unwrap();
    assert_eq!(view(&e, 3).len(), 1);
}
