//! Unit tests of the engine with an explicit clock: ordering, credit, balancing, leases,
//! retries, dead-lettering and recovery. End-to-end behaviour over TCP is in `tests/`.

use std::sync::Arc;

use bytes::Bytes;

use super::*;
use crate::model::{Mutation, QueueConfig, StatePatch, TaskState, TaskStatus};

const T0: u64 = 1_000_000;

fn engine() -> Engine {
    let config = EngineConfig {
        queue_defaults: QueueConfig {
            lease_ms: 1_000,
            max_attempts: 3,
            backoff_min_ms: 100,
            backoff_max_ms: 1_000,
            ..QueueConfig::default()
        },
        // Later than these tests look, but for those of the attempt counts.
        attempt_write_after_ms: 60_000,
        ..EngineConfig::default()
    };
    Engine::new(config, T0)
}

fn task(id: u64, priority: i32) -> Committed {
    Committed {
        queue: Arc::from("q"),
        id,
        priority,
        not_before_ms: 0,
        max_attempts: 0,
        lease_ms: 0,
        expires_ms: 0,
    }
}

/// Runs tick + dispatch at `now`, returning the deliveries and the persisted mutations.
fn step(e: &mut Engine, now: u64) -> (Vec<Dispatch>, Vec<Mutation>) {
    let mut out = Vec::new();
    e.tick(now, &mut out);
    e.dispatch(now, &mut out);
    split(out)
}

fn split(out: Vec<Effect>) -> (Vec<Dispatch>, Vec<Mutation>) {
    let mut d = Vec::new();
    let mut m = Vec::new();
    for e in out {
        match e {
            Effect::Deliver(x) => d.push(x),
            Effect::Persist(x) => m.push(x),
        }
    }
    (d, m)
}

fn ids(d: &[Dispatch]) -> Vec<u64> {
    d.iter().map(|x| x.task).collect()
}

fn snapshot(e: &Engine) -> QueueSnapshot {
    e.snapshot().into_iter().find(|q| &*q.name == "q").unwrap()
}

#[test]
fn higher_priority_first_then_fifo() {
    let mut e = engine();
    e.publish_committed(
        &[task(1, 0), task(2, 5), task(3, 0), task(4, 5), task(5, 1)],
        T0,
    );
    e.subscribe(1, 1, "q", 10).unwrap();
    let (d, _) = step(&mut e, T0);
    assert_eq!(ids(&d), vec![2, 4, 5, 1, 3]);
}

#[test]
fn prefetch_bounds_unsettled_deliveries() {
    let mut e = engine();
    e.publish_committed(&(1..=10).map(|i| task(i, 0)).collect::<Vec<_>>(), T0);
    e.subscribe(1, 1, "q", 3).unwrap();
    let (d, _) = step(&mut e, T0);
    assert_eq!(ids(&d), vec![1, 2, 3]);
    assert!(step(&mut e, T0).0.is_empty(), "no credit, no delivery");
    e.ack(1, d[1].task, d[1].token, Bytes::new(), T0).unwrap();
    let (d2, _) = step(&mut e, T0);
    assert_eq!(ids(&d2), vec![4], "one settled, one refilled");
}

#[test]
fn least_in_flight_wins_and_ties_go_round_robin() {
    let mut e = engine();
    e.subscribe(1, 1, "q", 10).unwrap();
    e.subscribe(2, 1, "q", 10).unwrap();
    e.subscribe(3, 1, "q", 10).unwrap();
    e.publish_committed(&(1..=6).map(|i| task(i, 0)).collect::<Vec<_>>(), T0);
    let (d, _) = step(&mut e, T0);
    let conns: Vec<u64> = d.iter().map(|x| x.conn).collect();
    assert_eq!(conns, vec![1, 2, 3, 1, 2, 3], "ties rotate");
    // Connection 3 settles both of its tasks: it now has the fewest in flight.
    for x in d.iter().filter(|x| x.conn == 3) {
        e.ack(3, x.task, x.token, Bytes::new(), T0).unwrap();
    }
    e.publish_committed(&[task(7, 0), task(8, 0), task(9, 0)], T0);
    let (d, _) = step(&mut e, T0);
    let conns: Vec<u64> = d.iter().map(|x| x.conn).collect();
    assert_eq!(conns[..2], [3, 3], "least in flight first: {conns:?}");
}

#[test]
fn each_delivery_counts_an_attempt_written_with_its_settlement_or_once_the_lease_lasts() {
    let mut e = engine();
    e.publish_committed(&[task(1, 0), task(2, 0), task(3, 0)], T0);
    e.subscribe(1, 1, "q", 3).unwrap();
    let (d, m) = step(&mut e, T0);
    assert_eq!(ids(&d), vec![1, 2, 3]);
    assert_eq!((d[0].attempt, d[0].max_attempts), (1, 3));
    assert_eq!(d[0].deadline_ms, T0 + 1_000);
    assert_eq!(m, vec![], "nothing written at delivery");
    assert_eq!(
        e.next_wakeup(),
        Some(T0 + 1_000),
        "the first lease's deadline"
    );
    // Acked in time: the removed task never needed its count.
    let acked = e.ack(1, 1, d[0].token, Bytes::new(), T0 + 5).unwrap();
    assert_eq!(acked.attempt, None);
    // Nacked in time: the settlement carries the count.
    let m = e
        .nack(1, 2, d[1].token, NackMode::Dead, "", T0 + 5)
        .unwrap();
    assert!(
        matches!(&m, Mutation::Patch { patch, .. } if patch.attempts == Some(1)),
        "{m:?}"
    );
    // Task 3 stays leased (extended): its count is written once the lease lasts.
    e.extend(1, 3, d[2].token, 100_000, T0 + 500).unwrap();
    assert!(step(&mut e, T0 + 59_999).1.is_empty());
    let (_, m) = step(&mut e, T0 + 60_000);
    assert_eq!(
        m,
        vec![Mutation::Patch {
            id: 3,
            patch: StatePatch {
                attempts: Some(1),
                updated_ms: T0 + 60_000,
                ..StatePatch::default()
            }
        }]
    );
    assert!(step(&mut e, T0 + 90_000).1.is_empty(), "written once");
}

#[test]
fn a_due_attempt_count_is_written_before_its_lease_expires_in_the_same_tick() {
    let mut e = Engine::new(
        EngineConfig {
            queue_defaults: QueueConfig {
                lease_ms: 1_000,
                ..QueueConfig::default()
            },
            ..EngineConfig::default()
        },
        T0,
    );
    assert_eq!(e.config.attempt_write_after_ms, ATTEMPT_WRITE_AFTER_MS);
    e.publish_committed(&[task(1, 0)], T0);
    e.subscribe(1, 1, "q", 1).unwrap();
    let (d, m) = step(&mut e, T0);
    assert_eq!((ids(&d), m), (vec![1], vec![]));
    let (_, m) = step(&mut e, T0 + ATTEMPT_WRITE_AFTER_MS.max(1_000));
    assert_eq!(m.len(), 2, "{m:?}");
    assert!(
        matches!(&m[0], Mutation::Patch { patch, .. } if patch.attempts == Some(1) && patch.last_error.is_none())
    );
    assert!(
        matches!(&m[1], Mutation::Patch { patch, .. } if patch.attempts == Some(1) && patch.last_error.is_some())
    );
}

#[test]
fn expired_lease_is_redelivered_after_backoff_and_old_token_is_fenced() {
    let mut e = engine();
    e.publish_committed(&[task(1, 0)], T0);
    e.subscribe(1, 1, "q", 1).unwrap();
    e.subscribe(2, 1, "q", 1).unwrap();
    let (d, _) = step(&mut e, T0);
    let first = d[0].clone();
    // Not yet expired one millisecond before the deadline.
    assert!(step(&mut e, first.deadline_ms - 1).1.is_empty());
    let (d, m) = step(&mut e, first.deadline_ms);
    assert!(d.is_empty(), "backoff delays the retry");
    assert!(matches!(&m[0], Mutation::Patch { patch, .. }
        if patch.last_error == Some(Some(REASON_LEASE_EXPIRED.into()))));
    assert_eq!(snapshot(&e).delayed, 1);
    let wake = e.next_wakeup().unwrap();
    assert!(wake >= first.deadline_ms + 50 && wake <= first.deadline_ms + 100);
    let (d, _) = step(&mut e, wake);
    assert_eq!(ids(&d), vec![1]);
    assert_eq!(d[0].attempt, 2);
    assert_ne!(d[0].token, first.token);
    assert_eq!(
        e.ack(first.conn, 1, first.token, Bytes::new(), T0),
        Err(EngineError::LeaseExpired { task: 1 }),
        "the late holder is fenced off"
    );
    assert!(e.ack(d[0].conn, 1, d[0].token, Bytes::new(), T0).is_ok());
    assert_eq!(snapshot(&e).counters.expired, 1);
}

#[test]
fn settling_needs_the_right_token_and_connection() {
    let mut e = engine();
    e.publish_committed(&[task(1, 0)], T0);
    e.subscribe(1, 1, "q", 1).unwrap();
    let (d, _) = step(&mut e, T0);
    let lease = &d[0];
    let expired = Err(EngineError::LeaseExpired { task: 1 });
    assert_eq!(e.ack(1, 1, lease.token + 1, Bytes::new(), T0), expired);
    assert_eq!(
        e.ack(2, 1, lease.token, Bytes::new(), T0),
        expired,
        "another connection"
    );
    assert_eq!(
        e.ack(1, 99, lease.token, Bytes::new(), T0),
        Err(EngineError::LeaseExpired { task: 99 })
    );
    assert_eq!(
        e.ack(1, 1, lease.token, Bytes::from_static(b"done"), T0 + 5),
        Ok(Acked {
            // The kept record needs the delivery's count, not written yet.
            attempt: Some(Mutation::Patch {
                id: 1,
                patch: StatePatch {
                    attempts: Some(1),
                    updated_ms: T0 + 5,
                    ..StatePatch::default()
                }
            }),
            change: Mutation::Succeed {
                id: 1,
                result: Bytes::from_static(b"done"),
                updated_ms: T0 + 5
            },
            attempts: 1,
        })
    );
    assert_eq!(
        e.ack(1, 1, lease.token, Bytes::new(), T0),
        expired,
        "acked twice"
    );
}

#[test]
fn disconnect_returns_leases_to_ready_at_once() {
    let mut e = engine();
    e.publish_committed(&[task(1, 0), task(2, 0)], T0);
    e.subscribe(1, 1, "q", 5).unwrap();
    let (d, _) = step(&mut e, T0);
    assert_eq!(d.len(), 2);
    let mut out = Vec::new();
    e.disconnect(1, T0 + 10, &mut out);
    assert_eq!(out.len(), 2, "each release persists its reason");
    let s = snapshot(&e);
    assert_eq!((s.ready, s.leased, s.consumers), (2, 0, 0));
    e.subscribe(2, 1, "q", 5).unwrap();
    let (d, _) = step(&mut e, T0 + 10);
    assert_eq!(ids(&d), vec![1, 2], "ready immediately, order kept");
    assert!(d.iter().all(|x| x.attempt == 2));
}

#[test]
fn max_attempts_sends_to_dead_with_the_last_reason() {
    // Three attempts ended three different ways; the third ends in the dead set.
    let mut e = engine();
    e.publish_committed(&[task(1, 0)], T0);
    e.subscribe(1, 1, "q", 1).unwrap();
    let (d, _) = step(&mut e, T0);
    e.nack(1, 1, d[0].token, NackMode::After(0), "boom", T0)
        .unwrap();
    let (d, _) = step(&mut e, T0);
    assert_eq!(d[0].attempt, 2);
    let mut out = Vec::new();
    e.disconnect(1, T0, &mut out);
    e.subscribe(2, 1, "q", 1).unwrap();
    let (d, _) = step(&mut e, T0);
    assert_eq!(d[0].attempt, 3);
    let (_, m) = step(&mut e, d[0].deadline_ms);
    assert_eq!(
        m,
        vec![Mutation::Patch {
            id: 1,
            patch: StatePatch {
                status: Some(TaskStatus::Dead),
                attempts: Some(3),
                last_error: Some(Some(REASON_LEASE_EXPIRED.into())),
                updated_ms: d[0].deadline_ms,
                ..StatePatch::default()
            }
        }]
    );
    let s = snapshot(&e);
    assert_eq!((s.ready, s.delayed, s.leased, s.dead), (0, 0, 0, 1));
    assert!(
        step(&mut e, d[0].deadline_ms + 10_000).0.is_empty(),
        "never delivered again"
    );
}

#[test]
fn disconnect_on_last_attempt_is_dead_with_reason() {
    let mut e = engine();
    let mut t = task(1, 0);
    t.max_attempts = 1;
    e.publish_committed(&[t], T0);
    e.subscribe(1, 1, "q", 1).unwrap();
    step(&mut e, T0);
    let mut out = Vec::new();
    e.disconnect(1, T0, &mut out);
    assert!(
        matches!(&out[0], Effect::Persist(Mutation::Patch { patch, .. })
        if patch.status == Some(TaskStatus::Dead)
        && patch.last_error == Some(Some(REASON_DISCONNECTED.into())))
    );
}

#[test]
fn release_unseen_undoes_the_attempt_and_keeps_the_order() {
    // One attempt allowed: a release must not use it up, a disconnect would.
    let mut e = engine();
    let (mut t1, mut t2) = (task(1, 0), task(2, 0));
    t1.max_attempts = 1;
    t2.max_attempts = 1;
    e.publish_committed(&[t1, t2], T0);
    e.subscribe(1, 1, "q", 2).unwrap();
    let (d, m) = step(&mut e, T0);
    assert_eq!(ids(&d), vec![1, 2]);
    assert_eq!(m.len(), 0, "a delivery's attempt is written later");
    assert!(
        e.release_unseen(1, 2, d[0].token, T0).is_err(),
        "wrong token"
    );
    assert!(
        e.release_unseen(2, 2, d[1].token, T0).is_err(),
        "another connection"
    );
    let m = e.release_unseen(1, 2, d[1].token, T0 + 5).unwrap();
    assert_eq!(
        m,
        Mutation::Patch {
            id: 2,
            patch: StatePatch {
                attempts: Some(0),
                updated_ms: T0 + 5,
                ..StatePatch::default()
            }
        }
    );
    assert!(
        e.release_unseen(1, 2, d[1].token, T0 + 5).is_err(),
        "released once"
    );
    let s = snapshot(&e);
    assert_eq!((s.ready, s.leased, s.dead), (1, 1, 0));
    e.ack(1, 1, d[0].token, Bytes::new(), T0 + 6).unwrap();
    let (d, _) = step(&mut e, T0 + 6);
    assert_eq!(ids(&d), vec![2]);
    assert_eq!(d[0].attempt, 1, "the released delivery was not an attempt");
}

#[test]
fn nack_modes() {
    let mut e = engine();
    e.publish_committed(&[task(1, 0), task(2, 0), task(3, 0)], T0);
    e.subscribe(1, 1, "q", 3).unwrap();
    let (d, _) = step(&mut e, T0);
    // Explicit delay: not a millisecond early.
    e.nack(1, 1, d[0].token, NackMode::After(500), "later", T0)
        .unwrap();
    // Dead now, whatever the attempts.
    let m = e
        .nack(1, 2, d[1].token, NackMode::Dead, "poison", T0)
        .unwrap();
    assert!(
        matches!(m, Mutation::Patch { patch, .. } if patch.status == Some(TaskStatus::Dead)
        && patch.last_error == Some(Some("poison".into())))
    );
    // Backoff: first retry waits between min/2 and min.
    let m = e.nack(1, 3, d[2].token, NackMode::Backoff, "", T0).unwrap();
    let Mutation::Patch { patch, .. } = m else {
        panic!("expected a patch")
    };
    let nb = patch.not_before_ms.unwrap();
    assert!((T0 + 50..=T0 + 100).contains(&nb), "{}", nb - T0);
    assert_eq!(patch.last_error, Some(Some(REASON_NACKED.into())));
    assert!(step(&mut e, T0 + 49).0.is_empty());
    assert_eq!(ids(&step(&mut e, nb).0), vec![3]);
    assert!(step(&mut e, T0 + 499).0.is_empty());
    assert_eq!(ids(&step(&mut e, T0 + 500).0), vec![1]);
    assert_eq!(snapshot(&e).dead, 1);
}

#[test]
fn delayed_tasks_are_not_delivered_early() {
    let mut e = engine();
    let mut t = task(1, 9);
    t.not_before_ms = T0 + 30_000;
    e.publish_committed(&[t, task(2, 0)], T0);
    e.subscribe(1, 1, "q", 10).unwrap();
    assert_eq!(ids(&step(&mut e, T0).0), vec![2]);
    assert_eq!(e.next_wakeup(), Some(T0 + 1_000), "lease of task 2 first");
    assert!(step(&mut e, T0 + 29_999).0.is_empty());
    assert_eq!(ids(&step(&mut e, T0 + 30_000).0), vec![1]);
}

#[test]
fn extend_pushes_the_deadline_with_a_cap() {
    let mut e = Engine::new(
        EngineConfig {
            max_lease_ms: 5_000,
            queue_defaults: QueueConfig {
                lease_ms: 1_000,
                ..QueueConfig::default()
            },
            ..EngineConfig::default()
        },
        T0,
    );
    e.publish_committed(&[task(1, 0)], T0);
    e.subscribe(1, 1, "q", 1).unwrap();
    let (d, _) = step(&mut e, T0);
    let tok = d[0].token;
    let counted = |m: &[Mutation]| {
        m.iter()
            .all(|m| matches!(m, Mutation::Patch { patch, .. } if patch.last_error.is_none()))
    };
    assert_eq!(e.extend(1, 1, tok, 2_000, T0 + 900), Ok(T0 + 2_900));
    assert_eq!(
        e.extend(1, 1, tok, 60_000, T0 + 900),
        Ok(T0 + 5_900),
        "capped"
    );
    // The old deadline passes without expiring the lease (its count is written).
    assert!(counted(&step(&mut e, T0 + 1_000).1));
    assert_eq!(
        e.extend(1, 1, tok + 1, 10, T0),
        Err(EngineError::LeaseExpired { task: 1 })
    );
    let (_, m) = step(&mut e, T0 + 5_900);
    assert_eq!(m.len(), 1, "expires at the extended deadline");
    assert_eq!(
        e.extend(1, 1, tok, 10, T0 + 5_901),
        Err(EngineError::LeaseExpired { task: 1 })
    );
}

#[test]
fn unsubscribe_stops_deliveries_but_keeps_leases() {
    let mut e = engine();
    e.publish_committed(&[task(1, 0), task(2, 0)], T0);
    e.subscribe(1, 7, "q", 1).unwrap();
    let (d, _) = step(&mut e, T0);
    e.unsubscribe(1, 7).unwrap();
    assert_eq!(e.unsubscribe(1, 7), Err(EngineError::NoSuchSubscription(7)));
    assert!(e.ack(1, d[0].task, d[0].token, Bytes::new(), T0).is_ok());
    assert!(step(&mut e, T0).0.is_empty());
    assert_eq!(e.subscribe(1, 8, "q", 1), Ok(()));
    assert_eq!(
        e.subscribe(1, 8, "q", 1),
        Err(EngineError::DuplicateSubscription(8))
    );
}

#[test]
fn paused_queue_delivers_nothing_until_resumed() {
    let mut e = engine();
    e.set_queue_config(
        "q",
        QueueConfig {
            paused: true,
            ..QueueConfig::default()
        },
    );
    e.publish_committed(&[task(1, 0)], T0);
    e.subscribe(1, 1, "q", 1).unwrap();
    assert!(step(&mut e, T0).0.is_empty());
    e.set_queue_config("q", QueueConfig::default());
    assert_eq!(ids(&step(&mut e, T0).0), vec![1]);
}

fn stored(status: TaskStatus, attempts: u32, not_before_ms: u64) -> TaskState {
    TaskState {
        queue: Arc::from("q"),
        status,
        priority: 0,
        attempts,
        max_attempts: 0,
        lease_ms: 0,
        not_before_ms,
        created_ms: T0,
        updated_ms: T0,
        last_error: None,
        expires_ms: 0,
    }
}

#[test]
fn recovery_rebuilds_states_and_buries_tasks_leased_on_their_last_attempt() {
    let mut e = engine();
    assert_eq!(
        e.recover_task(1, &stored(TaskStatus::Pending, 0, 0), T0),
        None
    );
    assert_eq!(
        e.recover_task(2, &stored(TaskStatus::Pending, 1, T0 + 5_000), T0),
        None
    );
    assert_eq!(e.recover_task(3, &stored(TaskStatus::Dead, 3, 0), T0), None);
    assert_eq!(
        e.recover_task(4, &stored(TaskStatus::Succeeded, 1, 0), T0),
        None
    );
    // Attempts already at the limit: it was leased on its last attempt.
    let m = e.recover_task(5, &stored(TaskStatus::Pending, 3, 0), T0);
    assert!(matches!(m, Some(Mutation::Patch { id: 5, patch })
        if patch.status == Some(TaskStatus::Dead)
        && patch.last_error == Some(Some(REASON_RESTARTED.into()))));
    let s = snapshot(&e);
    assert_eq!((s.ready, s.delayed, s.leased, s.dead), (1, 1, 0, 2));
    e.subscribe(1, 1, "q", 10).unwrap();
    let (d, _) = step(&mut e, T0);
    assert_eq!(ids(&d), vec![1]);
    let (d, _) = step(&mut e, T0 + 5_000);
    assert_eq!(
        (ids(&d), d[0].attempt),
        (vec![2], 2),
        "attempt count survives"
    );
}

#[test]
fn a_full_delivery_window_pauses_a_connection_until_it_reports_progress() {
    let mut e = engine();
    e.set_delivery_window(Some(2));
    let tasks: Vec<_> = (1..=6).map(|id| task(id, 0)).collect();
    e.publish_committed(&tasks, T0);
    e.subscribe(1, 10, "q", 100).unwrap();
    e.subscribe(2, 20, "q", 1).unwrap();
    let (d, _) = step(&mut e, T0);
    // Connection 1 gets its window (2), connection 2 its credit (1).
    let to = |c: u64| d.iter().filter(|x| x.conn == c).count();
    assert_eq!((to(1), to(2)), (2, 1), "{:?}", ids(&d));
    assert!(step(&mut e, T0).0.is_empty(), "paused until written");
    e.written(1, 1);
    let (d, _) = step(&mut e, T0);
    assert_eq!(d.len(), 1);
    assert_eq!(d[0].conn, 1);
    // Progress of an unknown connection, or beyond what was delivered, is harmless.
    e.written(9, 5);
    e.written(1, 50);
    assert_eq!(step(&mut e, T0).0.len(), 2);
}

/// An ack the store refused: the task, dropped from the engine by the ack, comes back
/// as stored (here on its last attempt, which must not make it dead) and is delivered
/// again with the next attempt.
#[test]
fn a_task_whose_ack_was_not_stored_is_restored_and_delivered_again() {
    let mut e = engine();
    e.publish_committed(&[task(1, 0)], T0);
    e.subscribe(1, 1, "q", 1).unwrap();
    let (d, _) = step(&mut e, T0);
    e.ack(1, 1, d[0].token, Bytes::new(), T0).unwrap();
    assert_eq!(e.lease_count(), 0);
    assert!(
        step(&mut e, T0 + 1).0.is_empty(),
        "acked: nothing to deliver"
    );

    e.restore_task(1, &stored(TaskStatus::Pending, 3, 0), T0 + 2);
    let (d, _) = step(&mut e, T0 + 2);
    assert_eq!(ids(&d), vec![1]);
    assert_eq!(d[0].attempt, 4);
    assert_eq!(snapshot(&e).dead, 0);

    // Anything but a pending task is left alone.
    e.restore_task(2, &stored(TaskStatus::Succeeded, 3, 0), T0 + 3);
    assert_eq!(snapshot(&e).ready, 0);
}

/// Cluster mode: two leaders' engines rebuilt at the same clock (one per Raft term)
/// never give the same lease token, so a token from an earlier term's leader is never
/// a live lease of this one, whatever the nodes' clocks say.
#[test]
fn lease_tokens_carry_the_term_they_were_given_in() {
    let mut tokens = Vec::new();
    for term in [7, 8] {
        let mut e = engine();
        e.set_token_epoch(term);
        e.publish_committed(&[task(1, 0), task(2, 0)], T0);
        e.subscribe(1, 1, "q", 2).unwrap();
        let (d, _) = step(&mut e, T0);
        for lease in &d {
            assert_eq!(lease.token >> 40, term, "token {:#x}", lease.token);
            tokens.push(lease.token);
        }
    }
    let mut distinct = tokens.clone();
    distinct.sort_unstable();
    distinct.dedup();
    assert_eq!(distinct.len(), 4, "{tokens:x?}");
}
