//! The checker of the cluster tests (issue 15, proof 6): one ledger that records every
//! publish attempt with its outcome, every delivery and every confirmed ack, from any
//! number of producers and consumers, and checks the delivery promises in one place.
//! Not here: the load that feeds it (`load.rs`) and the faults (the tests).
//!
//! A publish attempt is identified by its payload (unique per attempt). Its outcome is
//! what the client was told:
//! * confirmed, with the task id;
//! * refused: the client says nothing was applied (`ClientError::nothing_was_applied`:
//!   a typed refusal other than `NOT_LEADER`, or never sent);
//! * unknown: a timeout, a lost connection, a `NOT_LEADER` of a change that may still
//!   commit under the next leader.
//!
//! The promises checked:
//! 1. every confirmed publish is delivered at least once (`all_delivered`);
//! 2. nothing is delivered whose publish was refused (or never attempted);
//! 3. nothing is delivered after its task's ack was confirmed: duplicates are only of
//!    tasks whose ack was never confirmed. "Delivered" is when the consumer's client
//!    received it: a delivery that waited in the client's prefetch buffer while the
//!    task was acked elsewhere was handed out before (its lease died with the
//!    connection of a deposed leader; the consumer's ack of it fails);
//! 4. a delivery of a confirmed publish carries the id the publish was confirmed with.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use squall_client::{ClientError, Published};

/// What the client was told about one publish.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// No answer yet.
    InFlight,
    /// Confirmed with this task id.
    Confirmed(u64),
    /// Certainly not applied (the client's word), with the error.
    Refused(String),
    /// Maybe applied, maybe not.
    Unknown(String),
}

#[derive(Debug)]
struct Attempt {
    started: Instant,
    answered: Option<Instant>,
    outcome: Outcome,
}

#[derive(Default)]
struct State {
    attempts: HashMap<String, Attempt>,
    /// Task ids of the deliveries of each payload, in the order they came.
    deliveries: HashMap<String, Vec<u64>>,
    /// When each payload's ack was confirmed.
    acked: HashMap<String, Instant>,
    /// Broken promises, found as they happened (2, 3, 4).
    violations: Vec<String>,
}

/// The ledger; share it with `Arc`.
#[derive(Default)]
pub struct Checker {
    state: Mutex<State>,
}

/// Counts of what the ledger saw, for the test's log line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Summary {
    pub attempts: usize,
    pub confirmed: usize,
    pub refused: usize,
    pub unknown: usize,
    /// Payloads delivered at least once.
    pub delivered: usize,
    /// Deliveries beyond each payload's first.
    pub redeliveries: usize,
    /// Payloads delivered although their publish's outcome was unknown.
    pub unknown_delivered: usize,
    pub acked: usize,
}

impl std::fmt::Display for Summary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} publishes: {} confirmed, {} refused, {} unknown ({} of them delivered); \
             {} delivered, {} redeliveries, {} acks confirmed",
            self.attempts,
            self.confirmed,
            self.refused,
            self.unknown,
            self.unknown_delivered,
            self.delivered,
            self.redeliveries,
            self.acked
        )
    }
}

/// The outcome the client's answer to a publish means.
pub fn outcome_of(result: &Result<Published, ClientError>) -> Outcome {
    match result {
        Ok(p) => Outcome::Confirmed(p.id),
        Err(e) if e.nothing_was_applied() => Outcome::Refused(e.to_string()),
        Err(e) => Outcome::Unknown(e.to_string()),
    }
}

impl Checker {
    /// A publish of `payload` is about to be sent. Payloads must be unique.
    pub fn publishing(&self, payload: &str) {
        let mut s = self.state.lock();
        let attempt = Attempt {
            started: Instant::now(),
            answered: None,
            outcome: Outcome::InFlight,
        };
        let old = s.attempts.insert(payload.to_owned(), attempt);
        assert!(
            old.is_none(),
            "payload {payload} published twice by the test"
        );
    }

    /// The client answered the publish of `payload`.
    pub fn published(&self, payload: &str, result: &Result<Published, ClientError>) {
        self.answered(payload, outcome_of(result));
    }

    /// The publish of `payload` ended with `outcome`.
    pub fn answered(&self, payload: &str, outcome: Outcome) {
        let mut s = self.state.lock();
        let s = &mut *s;
        let attempt = s
            .attempts
            .get_mut(payload)
            .unwrap_or_else(|| panic!("an answer to {payload}, never published"));
        attempt.answered = Some(Instant::now());
        attempt.outcome = outcome;
        // Delivered before the answer came (possible: the consumer may be faster than the
        // producer's reply); check now what the delivery check could not.
        for &id in s.deliveries.get(payload).into_iter().flatten() {
            check_delivery(&mut s.violations, payload, &attempt.outcome, id);
        }
    }

    /// A consumer's client received the task `id` carrying `payload` at `received`;
    /// `how` says how (attempt, serving node), for the report of a broken promise.
    pub fn delivered(&self, payload: &str, id: u64, received: Instant, how: &str) {
        let mut s = self.state.lock();
        let s = &mut *s;
        match s.attempts.get(payload) {
            Some(a) => check_delivery(&mut s.violations, payload, &a.outcome, id),
            None => s.violations.push(format!(
                "task {id} delivered {payload:?} ({how}), which nobody published"
            )),
        }
        if let Some(&at) = s.acked.get(payload).filter(|&&at| at < received) {
            s.violations.push(format!(
                "task {id} ({payload}) delivered again ({how}) {:?} after its ack was confirmed",
                received - at
            ));
        }
        s.deliveries.entry(payload.to_owned()).or_default().push(id);
    }

    /// The ack of the delivery of `payload` was confirmed.
    pub fn acked(&self, payload: &str) {
        self.state
            .lock()
            .acked
            .entry(payload.to_owned())
            .or_insert_with(Instant::now);
    }

    /// Confirmed publishes not delivered (yet).
    pub fn undelivered(&self) -> Vec<String> {
        let s = self.state.lock();
        let mut missing: Vec<String> = s
            .attempts
            .iter()
            .filter(|(p, a)| {
                matches!(a.outcome, Outcome::Confirmed(_)) && !s.deliveries.contains_key(*p)
            })
            .map(|(p, _)| p.clone())
            .collect();
        missing.sort();
        missing
    }

    /// Waits until every confirmed publish has been delivered (promise 1), failing the
    /// test after `within` with what is missing.
    pub async fn all_delivered(&self, within: Duration) {
        let deadline = Instant::now() + within;
        loop {
            let missing = self.undelivered();
            if missing.is_empty() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{} confirmed publishes never delivered within {within:?}, e.g. {:?}\n{}",
                missing.len(),
                &missing[..missing.len().min(10)],
                self.summary()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// When the first publish that started at or after `t` was confirmed (a leader
    /// killed at `t`: the first publish its successor confirmed).
    pub fn first_confirmed_after(&self, t: Instant) -> Option<Instant> {
        let s = self.state.lock();
        s.attempts
            .values()
            .filter(|a| a.started >= t && matches!(a.outcome, Outcome::Confirmed(_)))
            .filter_map(|a| a.answered)
            .min()
    }

    /// The outcome of the publish of `payload`.
    pub fn outcome(&self, payload: &str) -> Option<Outcome> {
        self.state
            .lock()
            .attempts
            .get(payload)
            .map(|a| a.outcome.clone())
    }

    /// Whether the ack of `payload` was confirmed.
    pub fn was_acked(&self, payload: &str) -> bool {
        self.state.lock().acked.contains_key(payload)
    }

    /// Whether `payload` was delivered.
    pub fn was_delivered(&self, payload: &str) -> bool {
        self.state.lock().deliveries.contains_key(payload)
    }

    pub fn summary(&self) -> Summary {
        let s = self.state.lock();
        let count = |f: fn(&Outcome) -> bool| s.attempts.values().filter(|a| f(&a.outcome)).count();
        Summary {
            attempts: s.attempts.len(),
            confirmed: count(|o| matches!(o, Outcome::Confirmed(_))),
            refused: count(|o| matches!(o, Outcome::Refused(_))),
            unknown: count(|o| matches!(o, Outcome::Unknown(_) | Outcome::InFlight)),
            delivered: s.deliveries.len(),
            redeliveries: s.deliveries.values().map(|d| d.len() - 1).sum(),
            unknown_delivered: s
                .deliveries
                .keys()
                .filter(|p| {
                    s.attempts.get(*p).is_some_and(|a| {
                        matches!(a.outcome, Outcome::Unknown(_) | Outcome::InFlight)
                    })
                })
                .count(),
            acked: s.acked.len(),
        }
    }

    /// The promises, all at once: `Err` lists every one broken (promise 1 counts only
    /// what is undelivered now: call after `all_delivered` or when the consumers are done).
    pub fn check(&self) -> Result<Summary, String> {
        let summary = self.summary();
        let mut broken = self.state.lock().violations.clone();
        let missing = self.undelivered();
        if !missing.is_empty() {
            broken.push(format!(
                "{} confirmed publishes never delivered, e.g. {:?}",
                missing.len(),
                &missing[..missing.len().min(10)]
            ));
        }
        if broken.is_empty() {
            return Ok(summary);
        }
        let mut report = format!("{} broken promises ({summary}):", broken.len());
        for b in broken.iter().take(20) {
            let _ = write!(report, "\n  {b}");
        }
        Err(report)
    }

    /// `check`, failing the test on any broken promise.
    pub fn verify(&self) -> Summary {
        self.check().unwrap_or_else(|report| panic!("{report}"))
    }
}

/// Promises 2 and 4 for one delivery of `payload` (task `id`) whose publish had `outcome`.
fn check_delivery(violations: &mut Vec<String>, payload: &str, outcome: &Outcome, id: u64) {
    match outcome {
        Outcome::Refused(why) => violations.push(format!(
            "task {id} ({payload}) delivered although its publish was refused: {why}"
        )),
        Outcome::Confirmed(confirmed) if *confirmed != id => violations.push(format!(
            "{payload} was confirmed as task {confirmed} but delivered as task {id}"
        )),
        _ => {}
    }
}
