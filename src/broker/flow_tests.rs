//! Unit tests of per-queue flow control with an explicit clock: the in-flight cap
//! across many consumers and connections, and the rate limit's burst and long-run rate.

use std::sync::Arc;

use super::*;
use crate::model::{Mutation, QueueConfig};

const T0: u64 = 1_000_000;

fn engine_with(config: QueueConfig) -> Engine {
    let mut e = Engine::new(EngineConfig::default(), T0);
    e.set_queue_config("q", config);
    e
}

fn publish(e: &mut Engine, first: u64, n: u64, now: u64) {
    let tasks: Vec<Committed> = (first..first + n)
        .map(|id| Committed {
            queue: Arc::from("q"),
            id,
            priority: 0,
            not_before_ms: 0,
            max_attempts: 0,
            lease_ms: 0,
            expires_ms: 0,
        })
        .collect();
    e.publish_committed(&tasks, now);
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

#[test]
fn the_in_flight_cap_holds_across_many_consumers_and_refills_as_leases_end() {
    const CAP: u64 = 5;
    let mut e = engine_with(QueueConfig {
        max_in_flight: CAP as u32,
        lease_ms: 10_000,
        ..QueueConfig::default()
    });
    // 8 connections, two subscriptions each, every one with room for 1,000.
    for conn in 1..=8u64 {
        for sub in 1..=2u64 {
            e.subscribe(conn, sub, "q", 1_000).unwrap();
        }
    }
    publish(&mut e, 1, 500, T0);
    let mut now = T0;
    let mut held: Vec<Dispatch> = step(&mut e, now);
    assert_eq!(held.len() as u64, CAP);
    let mut delivered = held.len() as u64;
    let mut round = 0u64;
    while delivered < 500 {
        round += 1;
        now += 10;
        // Settle some of what is held in three ways: ack, nack, lease expiry.
        let settle = (round % 3 + 1) as usize;
        for d in held.drain(..settle.min(held.len())) {
            match round % 3 {
                0 => drop(
                    e.ack(d.conn, d.task, d.token, Default::default(), now)
                        .unwrap(),
                ),
                1 => drop(
                    e.nack(d.conn, d.task, d.token, NackMode::Dead, "", now)
                        .unwrap(),
                ),
                _ => drop(e.release_unseen(d.conn, d.task, d.token, now).unwrap()),
            }
        }
        let more = step(&mut e, now);
        delivered += more.iter().filter(|d| d.attempt == 1).count() as u64;
        held.extend(more);
        assert!(e.lease_count() as u64 <= CAP, "{} leased", e.lease_count());
        assert_eq!(e.lease_count(), held.len());
        assert!(round < 10_000, "stuck at {delivered}");
    }
    // Lease expiry frees room too.
    let before = e.lease_count();
    assert_eq!(before as u64, CAP);
    let after = step(&mut e, now + 10_000);
    assert!(!after.is_empty(), "expired leases make room");
    assert!(e.lease_count() as u64 <= CAP);
}

#[test]
fn a_cap_of_zero_is_no_cap_and_a_lowered_cap_stops_new_deliveries() {
    let mut e = engine_with(QueueConfig::default());
    e.subscribe(1, 1, "q", 100).unwrap();
    publish(&mut e, 1, 50, T0);
    assert_eq!(step(&mut e, T0).len(), 50);
    e.set_queue_config(
        "q",
        QueueConfig {
            max_in_flight: 10,
            ..QueueConfig::default()
        },
    );
    publish(&mut e, 51, 5, T0);
    assert!(
        step(&mut e, T0).is_empty(),
        "50 leased is over the new cap of 10"
    );
}

/// Deliveries made at each millisecond `T0..T0 + ms` with consumers that always
/// have room (every delivery acked at once).
fn deliveries_per_ms(e: &mut Engine, ms: u64) -> Vec<u64> {
    let mut times = Vec::new();
    let mut now = T0;
    while now < T0 + ms {
        for d in step(e, now) {
            times.push(now);
            let m = e.ack(d.conn, d.task, d.token, Default::default(), now);
            assert!(
                matches!(m.map(|a| a.change), Ok(Mutation::Remove { .. })),
                "an ack without a result keeps nothing"
            );
        }
        // Jump to the engine's own wake-up when it has one, as the hub does.
        now = match e.next_wakeup() {
            Some(t) if t > now => t.min(now + 7),
            _ => now + 1,
        };
    }
    times
}

#[test]
fn the_rate_limit_allows_its_burst_then_holds_its_long_run_rate() {
    let mut e = engine_with(QueueConfig {
        rate_limit: 50,
        rate_burst: 10,
        ..QueueConfig::default()
    });
    for conn in 1..=4 {
        e.subscribe(conn, 1, "q", 1_000).unwrap();
    }
    publish(&mut e, 1, 5_000, T0);
    let times = deliveries_per_ms(&mut e, 60_000);
    // The burst goes at once.
    assert_eq!(times.iter().filter(|&&t| t == T0).count(), 10);
    // Then 50 per second: over a minute, 10 + 50 * 60 (the last token lands at the end).
    let total = times.len() as u64;
    assert!((3_000..=3_010).contains(&total), "{total} in 60 s");
    // Any one-second window after the burst holds 50 (± the token at the edge).
    for start in (T0 + 1_000..T0 + 59_000).step_by(997) {
        let n = times
            .iter()
            .filter(|&&t| t >= start && t < start + 1_000)
            .count();
        assert!(
            (49..=51).contains(&n),
            "{n} deliveries in the second from {start}"
        );
    }
}

#[test]
fn a_rate_limited_queue_wakes_the_hub_for_its_next_token() {
    let mut e = engine_with(QueueConfig {
        rate_limit: 4,
        rate_burst: 1,
        ..QueueConfig::default()
    });
    e.subscribe(1, 1, "q", 100).unwrap();
    publish(&mut e, 1, 3, T0);
    assert_eq!(step(&mut e, T0).len(), 1);
    // Nothing else is due but the next token, 250 ms later.
    assert_eq!(e.next_wakeup(), Some(T0 + 250));
    assert!(step(&mut e, T0 + 249).is_empty());
    assert_eq!(step(&mut e, T0 + 250).len(), 1);
}
