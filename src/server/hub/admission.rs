//! Admission of publishes to queues with a `max_length`. The hub counts the queue's
//! pending tasks (ready, delayed, leased) plus the tasks of publishes admitted but not
//! yet durable, and either reserves room and submits the publish, or answers
//! `QUEUE_FULL` with nothing stored. The reservation is released when the publish's
//! store job completes. (Which queues are bounded, for the readers: `bounded.rs`.)

use tracing::debug;

use super::state::{Hub, Reservations};
use crate::broker::{Committed, Engine};
use crate::server::done::Done;
use crate::server::msg::{Failure, Outbound, PublishJob, QueueFull, Reply, Reservation};
use crate::store::Muts;

impl Reservations {
    /// Admits `tasks` if every bounded queue they go to has room, and reserves it.
    pub(super) fn admit(
        &mut self,
        engine: &Engine,
        tasks: &[Committed],
    ) -> Result<Reservation, QueueFull> {
        let mut per_queue: Reservation = Vec::new();
        for t in tasks {
            match per_queue.iter_mut().find(|(q, _)| *q == t.queue) {
                Some((_, n)) => *n += 1,
                None => per_queue.push((t.queue.clone(), 1)),
            }
        }
        per_queue.retain(|(q, _)| engine.max_length(q) > 0);
        for (queue, adding) in &per_queue {
            let max_length = engine.max_length(queue);
            let pending = engine.pending_count(queue) + self.held.get(queue).copied().unwrap_or(0);
            if pending.saturating_add(*adding) > max_length {
                return Err(QueueFull {
                    queue: queue.clone(),
                    pending,
                    adding: *adding,
                    max_length,
                });
            }
        }
        for (queue, n) in &per_queue {
            *self.held.entry(queue.clone()).or_default() += n;
        }
        Ok(per_queue)
    }

    /// The store job of an admitted publish completed (its tasks are in the engine's
    /// count now, or were not stored).
    pub(super) fn release(&mut self, reservation: Reservation) {
        for (queue, n) in reservation {
            if let Some(held) = self.held.get_mut(&queue) {
                *held = held.saturating_sub(n);
                if *held == 0 {
                    self.held.remove(&queue);
                }
            }
        }
    }
}

impl Hub {
    /// Submits a publish to bounded queues if they have room, else answers QUEUE_FULL.
    pub(super) fn admit(&mut self, muts: Muts, mut job: PublishJob) {
        match self.reservations.admit(&self.engine, &job.committed) {
            Ok(r) => {
                job.reservation = Some(r);
                self.writer.submit(muts, Some(Done::Publish(job)));
            }
            Err(full) => {
                debug!(queue = %full.queue, pending = full.pending, max_length = full.max_length, "publish refused: queue full");
                let reply = Reply::Refused(Failure::QueueFull(full));
                let _ = job.out.send(Outbound::Reply {
                    req: job.req,
                    reply,
                });
            }
        }
    }
}
