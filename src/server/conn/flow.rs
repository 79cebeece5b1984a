//! Flow control between the two halves of one connection ([`Flow`]: unanswered
//! requests, reserved answer bytes, the reader's pause) and the read-buffer charge a
//! connection holds before Hello ([`HandshakeCharge`]).

use std::collections::HashMap;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};

/// Far enough in the future to mean "never" for a timer.
pub(super) const NEVER: Duration = Duration::from_secs(365 * 24 * 3600);

/// Counters the reader and writer halves of one connection share.
#[derive(Debug, Default)]
pub(crate) struct Flow {
    /// Requests read whose answer has not been written yet (requests with id 0 are
    /// refused, so every counted request has exactly one answer with its id).
    pub(super) inflight: AtomicU32,
    /// Set while the reader waits for answers to drain.
    pub(super) reader_waiting: AtomicBool,
    /// Woken by the writer when `inflight` drops back to the limit.
    pub(super) drained: Notify,
    /// The queue prefixes the connection's token is limited to, set at Hello: task
    /// status answers about other queues are sent as "unknown".
    pub(super) prefixes: std::sync::OnceLock<Arc<[String]>>,
    /// Bytes that admin answers not yet written may take (`answer_cost`), counted
    /// against `max_unsent_bytes`: the reader stops reading while they exceed it, so a
    /// client that asks for answers without reading them cannot make the broker build
    /// them without bound.
    pub(super) reserved: AtomicUsize,
    /// The reservations by request id, released when the answer is encoded.
    reservations: parking_lot::Mutex<HashMap<u64, usize>>,
}

impl Flow {
    /// Counts `bytes` for the answer to request `req`.
    pub(super) fn reserve(&self, req: u64, bytes: usize) {
        if let Some(old) = self.reservations.lock().insert(req, bytes) {
            // A repeated request id: its first reservation goes.
            self.reserved.fetch_sub(old, Relaxed);
        }
        self.reserved.fetch_add(bytes, Relaxed);
    }

    /// The answer to `req` is encoded: its reservation, if any, is free again.
    pub(super) fn release(&self, req: u64) {
        if self.reserved.load(Relaxed) == 0 {
            return;
        }
        let Some(bytes) = self.reservations.lock().remove(&req) else {
            return;
        };
        self.reserved.fetch_sub(bytes, Relaxed);
        if self.reader_waiting.load(Relaxed) {
            self.drained.notify_one();
        }
    }

    /// The writer wrote `answers` answers.
    pub(super) fn answered(&self, answers: u32, max: u32) {
        if answers == 0 {
            return;
        }
        let left = self
            .inflight
            .fetch_sub(answers, Relaxed)
            .saturating_sub(answers);
        if left <= max && self.reader_waiting.load(Relaxed) {
            self.drained.notify_one();
        }
    }
}

/// Read-buffer bytes a connection holds before Hello, counted against the budget all
/// such connections share (`handshake_memory_bytes`); given back at Hello or close.
pub(super) struct HandshakeCharge {
    budget: Arc<Semaphore>,
    held: Option<OwnedSemaphorePermit>,
    bytes: usize,
}

impl HandshakeCharge {
    pub(super) fn new(budget: Arc<Semaphore>) -> HandshakeCharge {
        HandshakeCharge {
            budget,
            held: None,
            bytes: 0,
        }
    }

    /// Raises the charge to `bytes`; false if the shared budget cannot cover it.
    pub(super) fn cover(&mut self, bytes: usize) -> bool {
        let Some(more) = bytes.checked_sub(self.bytes).filter(|&m| m > 0) else {
            return true;
        };
        let Ok(more) = u32::try_from(more) else {
            return false;
        };
        match self.budget.clone().try_acquire_many_owned(more) {
            Ok(permit) => {
                match &mut self.held {
                    Some(held) => held.merge(permit),
                    None => self.held = Some(permit),
                }
                self.bytes = bytes;
                true
            }
            Err(_) => false,
        }
    }

    pub(super) fn release(&mut self) {
        self.held = None;
        self.bytes = 0;
    }
}
