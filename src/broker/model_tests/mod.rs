//! Model test of the delivery engine with restarts, in the style of sled's own tests:
//! proptest drives `Engine` with random operation sequences (publish with or without
//! an expiry, subscribe, dispatch, ack, nack, extend, release, undeliverable, time,
//! disconnect, schedule add/remove/pause/resume and fires, restart) while a
//! deliberately simple reference model predicts every outcome: deliveries, the
//! in-flight cap, the rate limit's windows, expiry (never delivered after it; dead with
//! reason `expired` or dropped, per queue), and exactly one task per due tick of a
//! schedule with its catch-up rule. Every job the engine's caller would submit is
//! applied to `MemStore`, an in-memory stand-in of `store/`; a restart keeps the
//! confirmed jobs plus a random part of the unconfirmed tail (what a crash may leave)
//! and rebuilds a fresh engine from it as `server::start` does.
//!
//! Each minimised failure is kept in `regressions.rs` as a named test with a short
//! postmortem. `SQUALL_MODEL_CASES=5000 cargo test --lib model_tests` runs a longer
//! search.

use proptest::prelude::*;

use super::*;
use crate::model::{
    CatchUp, Millis, Mutation, NewTask, QueueConfig, StatePatch, TaskBody, TaskId, TaskState,
    TaskStatus,
};

const T0: Millis = 1_000_000;
const MAX_LEASE_MS: u64 = 5_000;
/// The engine's `attempt_write_after_ms` here: shorter than the queues' leases, so
/// that counts are written on their own as well as with settlements.
const COUNT_AFTER_MS: Millis = 300;
const QUEUES: [&str; 3] = ["a", "b", "c"];
/// Connection slots the operations pick from.
const SLOTS: usize = 3;
/// A connection id the engine never hands out: settling from it must be refused.
const STRANGER: ConnId = 1 << 40;
/// Deliveries remembered for settling (older ones are dropped).
const HANDED: usize = 16;
/// Schedule names the operations pick from.
const SCHEDULES: [&str; 3] = ["s0", "s1", "s2"];
/// The cron expressions schedules use, with the period the model derives ticks from
/// (each divides a minute, so ticks are multiples of it in UTC): six fields every
/// second, every five seconds, and the five-field form every minute.
const CRONS: [(&str, Millis); 3] = [
    ("* * * * * *", 1_000),
    ("*/5 * * * * *", 5_000),
    ("* * * * *", 60_000),
];

/// Queue "a" runs on the engine defaults (an expired task goes to the dead set); "b"
/// and "c" on their own persisted configurations: immediate retries, no attempt limit
/// unless the task sets one, and "b" has at most [`B_MAX_IN_FLIGHT`] tasks leased at
/// once and drops expired tasks, "c" delivers at most [`C_RATE`] per second with a
/// burst of [`C_BURST`].
/// Queues keep no results (`result_ttl` 0), so an ack removes the task: the model's
/// "acked = gone from the store" invariant. Retention is the store's model test's.
const B_MAX_IN_FLIGHT: u32 = 2;
const C_RATE: u32 = 4;
const C_BURST: u32 = 3;

fn queue_config(q: usize) -> QueueConfig {
    match q {
        0 => QueueConfig {
            lease_ms: 1_000,
            max_attempts: 3,
            backoff_min_ms: 100,
            backoff_max_ms: 800,
            result_ttl_ms: 0,
            ..QueueConfig::default()
        },
        1 => QueueConfig {
            lease_ms: 400,
            max_attempts: 0,
            backoff_min_ms: 0,
            backoff_max_ms: 0,
            result_ttl_ms: 0,
            max_in_flight: B_MAX_IN_FLIGHT,
            drop_expired: true,
            ..QueueConfig::default()
        },
        _ => QueueConfig {
            lease_ms: 1_000,
            max_attempts: 0,
            backoff_min_ms: 0,
            backoff_max_ms: 0,
            result_ttl_ms: 0,
            rate_limit: C_RATE,
            rate_burst: C_BURST,
            ..QueueConfig::default()
        },
    }
}

/// An engine as `server::start` builds one: defaults, then persisted queue configs.
fn new_engine(now: Millis) -> Engine {
    let mut engine = Engine::new(
        EngineConfig {
            queue_defaults: queue_config(0),
            max_lease_ms: MAX_LEASE_MS,
            rng_seed: now,
            attempt_write_after_ms: COUNT_AFTER_MS,
        },
        now,
    );
    for (q, name) in QUEUES.iter().enumerate().skip(1) {
        engine.set_queue_config(name, queue_config(q));
    }
    engine
}

/// How a nack asks for the retry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum NackOp {
    Backoff,
    After(u64),
    Dead,
}

/// How the store writer completes a schedule's fire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FireOp {
    /// Stored, and the completion runs at once.
    Stored,
    /// Submitted; it completes at a later `FireDone` (or a crash decides).
    Pending,
    /// Refused with STORAGE: nothing was written.
    Failed,
}

/// One step of a test sequence. Indexes (`queue`, `conn`, `pick`, `name`) are reduced
/// modulo what exists, so every sequence is valid and shrinks well.
#[derive(Debug, Clone)]
enum Op {
    Publish {
        queue: u8,
        priority: i8,
        delay_ms: u64,
        max_attempts: u8,
        lease_ms: u32,
        /// Not started within this many ms: expired (0 = never).
        expires_in: u64,
    },
    Subscribe {
        conn: u8,
        sub: u8,
        queue: u8,
        prefetch: u8,
    },
    Unsubscribe {
        conn: u8,
        sub: u8,
    },
    /// tick + dispatch at the current time, as the hub does after every batch.
    Dispatch,
    /// Dispatch without ticking first, as for tasks past a tick's expiry batch: the
    /// dispatch's own expiry check must catch them.
    DispatchUnticked,
    /// Expiry and delayed release only.
    Tick,
    Ack {
        pick: u16,
        stranger: bool,
    },
    Nack {
        pick: u16,
        mode: NackOp,
        reason: bool,
    },
    Extend {
        pick: u16,
        ms: u64,
    },
    /// The consumer gives a delivery back unseen.
    Release {
        pick: u16,
    },
    /// The hub could not send the delivery (body unreadable): back to ready.
    Undeliverable {
        pick: u16,
    },
    /// Moves the clock without ticking: settlements may arrive before the hub ticks.
    Advance {
        ms: u64,
    },
    Disconnect {
        conn: u8,
    },
    AddSchedule {
        name: u8,
        queue: u8,
        cron: u8,
        catch_up: u8,
        priority: i8,
    },
    RemoveSchedule {
        name: u8,
    },
    PauseSchedule {
        name: u8,
        paused: bool,
    },
    /// The hub's ticker: the due schedules fire, each as one job.
    Fire {
        how: FireOp,
    },
    /// The oldest pending fire's job completes, stored.
    FireDone,
    /// Crash and restart after `down_ms`. `keep` is how much of the unconfirmed log
    /// tail survived, in 255ths (255 = all of it, as after a clean flush).
    Restart {
        keep: u8,
        down_ms: u64,
    },
}

fn op() -> impl Strategy<Value = Op> {
    let publish = (
        0..3u8,
        -2..=2i8,
        prop_oneof![Just(0u64), Just(0), Just(50), Just(700), Just(3_000)],
        prop_oneof![Just(0u8), Just(0), Just(1), Just(2), Just(4)],
        prop_oneof![Just(0u32), Just(0), Just(300), Just(8_000)],
        prop_oneof![
            Just(0u64),
            Just(0),
            Just(1),
            Just(300),
            Just(1_000),
            Just(5_000)
        ],
    )
        .prop_map(
            |(queue, priority, delay_ms, max_attempts, lease_ms, expires_in)| Op::Publish {
                queue,
                priority,
                delay_ms,
                max_attempts,
                lease_ms,
                expires_in,
            },
        );
    let nack_mode = prop_oneof![
        Just(NackOp::Backoff),
        Just(NackOp::After(0)),
        Just(NackOp::After(300)),
        Just(NackOp::Dead),
    ];
    let add_schedule = (0..3u8, 0..3u8, 0..3u8, 0..3u8, -1..=1i8).prop_map(
        |(name, queue, cron, catch_up, priority)| Op::AddSchedule {
            name,
            queue,
            cron,
            catch_up,
            priority,
        },
    );
    let fire = prop_oneof![
        2 => Just(FireOp::Stored),
        1 => Just(FireOp::Pending),
        1 => Just(FireOp::Failed),
    ];
    prop_oneof![
        6 => publish,
        3 => (0..3u8, 1..=2u8, 0..3u8, 1..=3u8).prop_map(|(conn, sub, queue, prefetch)| {
            Op::Subscribe { conn, sub, queue, prefetch }
        }),
        2 => (0..3u8, 1..=2u8).prop_map(|(conn, sub)| Op::Unsubscribe { conn, sub }),
        6 => Just(Op::Dispatch),
        1 => Just(Op::DispatchUnticked),
        1 => Just(Op::Tick),
        5 => (any::<u16>(), prop::bool::weighted(0.1))
            .prop_map(|(pick, stranger)| Op::Ack { pick, stranger }),
        3 => (any::<u16>(), nack_mode, any::<bool>())
            .prop_map(|(pick, mode, reason)| Op::Nack { pick, mode, reason }),
        2 => (any::<u16>(), prop_oneof![Just(0u64), Just(200), Just(2_000), Just(60_000)])
            .prop_map(|(pick, ms)| Op::Extend { pick, ms }),
        1 => any::<u16>().prop_map(|pick| Op::Release { pick }),
        1 => any::<u16>().prop_map(|pick| Op::Undeliverable { pick }),
        5 => prop_oneof![Just(1u64), Just(99), Just(250), Just(1_000), Just(4_000), Just(60_000)]
            .prop_map(|ms| Op::Advance { ms }),
        1 => (0..3u8).prop_map(|conn| Op::Disconnect { conn }),
        2 => add_schedule,
        1 => (0..3u8).prop_map(|name| Op::RemoveSchedule { name }),
        1 => (0..3u8, any::<bool>()).prop_map(|(name, paused)| Op::PauseSchedule { name, paused }),
        3 => fire.prop_map(|how| Op::Fire { how }),
        1 => Just(Op::FireDone),
        1 => (
            prop_oneof![Just(255u8), any::<u8>()],
            prop_oneof![Just(0u64), Just(1_500), Just(7_000), Just(120_000)],
        )
            .prop_map(|(keep, down_ms)| Op::Restart { keep, down_ms }),
    ]
}

/// Runs `ops`, checking the model after each, then drains.
fn check(ops: &[Op]) {
    let mut h = Harness::new();
    for op in ops {
        h.run(op);
    }
    h.drain();
}

fn cases() -> u32 {
    std::env::var("SQUALL_MODEL_CASES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(512)
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: cases(),
        // Minimised failures become named tests in regressions.rs instead of a file.
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn engine_agrees_with_the_model_across_restarts(ops in prop::collection::vec(op(), 1..160)) {
        check(&ops);
    }
}

mod harness;
mod memstore;
mod regressions;

use harness::Harness;
use memstore::MemStore;
