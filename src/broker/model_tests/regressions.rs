//! The model test's fixed sequences: a smoke walk through every operation, and each
//! minimised failure the random search found, with its postmortem.

use super::*;

/// A fixed walk through every operation, so a broken harness fails here first.
#[test]
fn lifecycle_smoke() {
    use Op::*;
    check(&[
        Publish {
            queue: 0,
            priority: 0,
            delay_ms: 0,
            max_attempts: 0,
            lease_ms: 0,
            expires_in: 0,
        },
        Publish {
            queue: 0,
            priority: 2,
            delay_ms: 700,
            max_attempts: 2,
            lease_ms: 300,
            expires_in: 0,
        },
        Publish {
            queue: 1,
            priority: -1,
            delay_ms: 0,
            max_attempts: 0,
            lease_ms: 8_000,
            expires_in: 0,
        },
        Subscribe {
            conn: 0,
            sub: 1,
            queue: 0,
            prefetch: 2,
        },
        Subscribe {
            conn: 1,
            sub: 1,
            queue: 1,
            prefetch: 1,
        },
        Dispatch,
        Nack {
            pick: 0,
            mode: NackOp::Backoff,
            reason: true,
        },
        Extend { pick: 1, ms: 2_000 },
        Advance { ms: 1_000 },
        Dispatch,
        Ack {
            pick: 2,
            stranger: false,
        },
        Undeliverable { pick: 3 },
        Restart {
            keep: 128,
            down_ms: 0,
        },
        Subscribe {
            conn: 2,
            sub: 3,
            queue: 0,
            prefetch: 3,
        },
        Advance { ms: 60_000 },
        Dispatch,
        Nack {
            pick: 4,
            mode: NackOp::Dead,
            reason: false,
        },
        Disconnect { conn: 2 },
    ]);
}

/// Postmortem: a delivery the hub could not send (`undeliverable` with requeue) went
/// back to ready with its attempt still counted, so the next delivery said attempt 2
/// for a task delivered once, and a task requeued on its last attempt was delivered
/// past `max_attempts`. Fixed in `Engine::undeliverable`: the unsent delivery is not
/// counted.
#[test]
fn regression_unsent_delivery_is_not_an_attempt() {
    use Op::*;
    check(&[
        Subscribe {
            conn: 0,
            sub: 1,
            queue: 0,
            prefetch: 1,
        },
        Publish {
            queue: 0,
            priority: 0,
            delay_ms: 0,
            max_attempts: 1,
            lease_ms: 0,
            expires_in: 0,
        },
        Dispatch,
        Undeliverable { pick: 0 },
        Dispatch,
    ]);
}

/// Postmortem: credit was returned by (connection, subscription id). After
/// unsubscribing and subscribing again with the same id (ids are request ids, chosen
/// by the client), settling a lease of the old subscription freed a slot of the new
/// one, and the new one got more unsettled deliveries than its prefetch. Fixed with a
/// unique `SubSlot::uid` that each lease remembers.
#[test]
fn regression_reused_subscription_id_keeps_its_prefetch() {
    use Op::*;
    let publish = Publish {
        queue: 0,
        priority: 0,
        delay_ms: 0,
        max_attempts: 0,
        lease_ms: 0,
        expires_in: 0,
    };
    let subscribe = Subscribe {
        conn: 0,
        sub: 1,
        queue: 0,
        prefetch: 1,
    };
    check(&[
        subscribe.clone(),
        publish.clone(),
        publish.clone(),
        publish,
        Dispatch,
        Unsubscribe { conn: 0, sub: 1 },
        subscribe,
        Dispatch,
        Ack {
            pick: 0,
            stranger: false,
        },
        Dispatch,
    ]);
}

/// Postmortem: a fire completes the firing of its schedule by name. A schedule removed
/// and added again under the same name while its fire was in flight had the old fire's
/// completion end the new schedule's own fire: its last run moved to a tick whose job
/// was not durable yet, and the new fire's completion found nothing to finish.
#[test]
fn regression_a_fire_completes_only_its_own_schedule() {
    use Op::*;
    let add = AddSchedule {
        name: 0,
        queue: 0,
        cron: 0,
        catch_up: 1,
        priority: 0,
    };
    check(&[
        add.clone(),
        Advance { ms: 1_000 },
        Fire {
            how: FireOp::Pending,
        },
        RemoveSchedule { name: 0 },
        add,
        Advance { ms: 1_000 },
        Fire {
            how: FireOp::Pending,
        },
        FireDone,
        FireDone,
    ]);
}
