//! Dispatch: hands ready tasks to subscriptions with free credit (least in flight,
//! round-robin on ties), within the queue's flow control: `max_in_flight` leases at
//! once across all consumers, and a token bucket of `rate_limit` deliveries per second
//! (`rate_burst` when full). A task whose expiry passed before its first delivery is
//! not delivered: it goes to the dead set (or is dropped) here (`expiry.rs`). A
//! delivery's attempt count is written when its lease ends, or on its own once the
//! lease has been open for `attempt_write_after_ms` (`write_due_attempts`).

use std::cmp::Reverse;

use super::engine::{attempts_patch, ConnId, Dispatch, Effect, Engine};
use super::expiry::expire_entry;
use super::queue::{Lease, QueueIdx};
use crate::model::Millis;

impl Engine {
    /// Hands ready tasks to subscriptions with free credit.
    pub fn dispatch(&mut self, now: Millis, out: &mut Vec<Effect>) {
        let dirty = std::mem::take(&mut self.dirty);
        let mut full = Vec::new();
        for idx in dirty.iter().copied() {
            self.dispatch_queue(idx, now, out, &mut full);
            // Connections whose window just filled: pause their other subscriptions.
            for conn in full.drain(..) {
                self.set_conn_paused(conn, true);
            }
        }
        // Reuse the allocation.
        self.dirty = dirty;
        self.dirty.clear();
    }

    fn dispatch_queue(
        &mut self,
        idx: QueueIdx,
        now: Millis,
        out: &mut Vec<Effect>,
        full: &mut Vec<ConnId>,
    ) {
        let max_lease = self.config.max_lease_ms;
        let window = self.delivery_window;
        let q = &mut self.queues[idx as usize];
        q.dirty = false;
        if q.config.paused || q.held {
            return;
        }
        let rate = q.config.rate_limit;
        if rate > 0 {
            q.bucket.refill(rate, q.config.effective_burst(), now);
        }
        // A lease that ends (settled, expired, released) marks the queue dirty again.
        let cap = u64::from(q.config.max_in_flight);
        while q.ready_len() > 0 {
            if cap > 0 && q.leased >= cap {
                break;
            }
            if rate > 0 && !q.bucket.has_token() {
                self.throttled.insert((q.bucket.next_token_at(rate), idx));
                break;
            }
            let Some(slot) = q.pick_subscriber() else {
                break;
            };
            let Some(mut entry) = q.pop_ready() else {
                break;
            };
            let mut expires_ms = 0;
            if entry.attempts == 0 && !self.expiring.is_empty() {
                if let Some(waiting) = self.expiring.remove(&entry.id) {
                    self.expiry_index.remove(&(waiting.expires_ms, entry.id));
                    if waiting.expires_ms <= now {
                        out.push(Effect::Persist(expire_entry(q, entry, now)));
                        continue;
                    }
                    expires_ms = waiting.expires_ms;
                }
            }
            if rate > 0 {
                let took = q.bucket.take();
                debug_assert!(took, "a token was there");
            }
            debug_assert!(cap == 0 || q.leased < cap);
            entry.attempts += 1;
            let lease_ms = if entry.lease_ms > 0 {
                u64::from(entry.lease_ms)
            } else {
                q.config.lease_ms
            }
            .min(max_lease);
            let deadline_ms = now.saturating_add(lease_ms);
            let token = self.next_token;
            self.next_token = self.next_token.wrapping_add(1);
            let s = &mut q.subs[slot];
            s.in_flight += 1;
            let (conn, sub, sub_slot) = (s.conn, s.sub, s.uid);
            if let Some(window) = window {
                let count = self.unwritten.entry(conn).or_default();
                *count += 1;
                if *count >= window {
                    for s in q.subs.iter_mut().filter(|s| s.conn == conn) {
                        s.paused = true;
                    }
                    full.push(conn);
                }
            }
            q.leased += 1;
            q.counters.delivered += 1;
            if entry.attempts > 1 {
                q.counters.redelivered += 1;
            }
            let max_attempts = q.effective_max_attempts(&entry);
            self.leases.insert(
                entry.id,
                Lease {
                    token,
                    deadline_ms,
                    conn,
                    sub,
                    slot: sub_slot,
                    queue: idx,
                    entry,
                    expires_ms,
                    attempt_written: false,
                },
            );
            self.deadlines.push(Reverse((deadline_ms, entry.id, token)));
            // The attempt is written with the settlement, or on its own once the
            // lease has been open for a while (`write_due_attempts`).
            let write_at = now.saturating_add(self.config.attempt_write_after_ms);
            self.attempts_due.push_back((write_at, entry.id, token));
            out.push(Effect::Deliver(Dispatch {
                conn,
                sub,
                task: entry.id,
                token,
                attempt: entry.attempts,
                max_attempts,
                deadline_ms,
                priority: entry.priority,
                queue: q.name.clone(),
            }));
        }
    }

    /// Writes the attempt count of each lease open since `attempt_write_after_ms`
    /// before `now` and not ended: at most `limit` of them, oldest first.
    pub(super) fn write_due_attempts(&mut self, now: Millis, limit: usize, out: &mut Vec<Effect>) {
        let mut written = 0;
        while let Some(&(at, task, token)) = self.attempts_due.front() {
            if at > now || written == limit {
                break;
            }
            self.attempts_due.pop_front();
            let Some(lease) = self.leases.get_mut(&task) else {
                continue;
            };
            if lease.token != token || lease.attempt_written {
                continue;
            }
            debug_assert!(lease.entry.attempts > 0, "a lease counts its delivery");
            lease.attempt_written = true;
            written += 1;
            out.push(Effect::Persist(attempts_patch(
                task,
                lease.entry.attempts,
                now,
            )));
        }
        debug_assert!(self
            .attempts_due
            .front()
            .is_none_or(|&(at, _, _)| at > now || written == limit));
    }
}
