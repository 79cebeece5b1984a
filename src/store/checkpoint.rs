//! The checkpointer: the one thread that flushes sled. A checkpoint moves the bodies
//! sled still points at in the journal segments below its floor into payload files
//! (and compacts payload files that are mostly dead: `relocate.rs`), records the floor
//! in sled, makes sled's copy of the journal durable (one sled flush), and then
//! removes the journal segments and payload files that copy no longer needs. It never
//! appends to the journal or applies a batch; the writer decides when a checkpoint is
//! due (see `writer.rs`).
//!
//! Why in that order: the floor tells a restart which segments it may drop, so it
//! must not be durable before the bodies in them have moved; and a file is removed
//! only after the flush that holds every reference away from it.
//!
//! Architecture Invariant: a sled flush runs only here (and in sled's own drop at
//! exit, which then finds nothing to write), and never when the file system has less
//! than the reserve free: in this sled alpha a failed flush leaves the tree unable to
//! flush again in the process, so the store then fails for good (`Inner::fail`).

use std::path::PathBuf;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};

use super::record::BodyFile;

use super::payload::{self, Appender};
use super::pool::Db;
use super::{journal, keys, relocate, Inner, StoreError, WriterStats};

/// How long a checkpoint postponed for lack of space waits before it looks again.
const RETRY: Duration = Duration::from_secs(1);

/// How long shutdown waits for the last checkpoint. Past it the broker exits anyway:
/// the journal holds everything and the next start replays it.
const STOP_WAIT: Duration = Duration::from_secs(20);

enum Req {
    /// Checkpoint every record below this floor.
    Floor(u64),
    /// Apply the task table's frozen generations to sled (no flush).
    Apply,
    /// A last checkpoint, then exit and say how it went.
    Stop(u64, Sender<Result<(), StoreError>>),
}

/// The handle of the checkpointer thread.
pub(crate) struct Checkpointer {
    tx: Sender<Req>,
    thread: Option<JoinHandle<()>>,
}

struct Worker {
    db: Db,
    store: Arc<Inner>,
    stats: Arc<WriterStats>,
    dir: PathBuf,
    /// Free bytes below which no flush is attempted.
    reserve: u64,
    /// Set while checkpoints wait for space, so that the warning is logged once.
    short_of_space: bool,
    /// Where moved bodies go.
    appender: Appender,
}

enum Outcome {
    Done,
    Postponed,
    Failed,
}

impl Checkpointer {
    pub(crate) fn start(
        db: Db,
        store: Arc<Inner>,
        stats: Arc<WriterStats>,
        dir: PathBuf,
        reserve: u64,
    ) -> Checkpointer {
        let (tx, rx) = crossbeam_channel::unbounded();
        let appender = Appender::new(
            store.bodies.payload_dir().to_owned(),
            store.next_payload_file,
            store.sizing.segment_bytes.saturating_mul(2),
        );
        let worker = Worker {
            db,
            store,
            stats,
            dir,
            reserve,
            short_of_space: false,
            appender,
        };
        let thread = std::thread::Builder::new()
            .name("squall-checkpoint".into())
            .spawn(move || worker.run(rx));
        let thread = match thread {
            Ok(t) => Some(t),
            Err(error) => {
                tracing::error!(%error, "could not start the checkpoint thread; the journal will only grow");
                None
            }
        };
        Checkpointer { tx, thread }
    }

    /// Asks for a checkpoint of every record below `floor` (the writer has recorded
    /// the floor in sled already).
    pub(crate) fn request(&self, floor: u64) {
        let _ = self.tx.send(Req::Floor(floor));
    }

    /// Asks for the task table's frozen generations to be applied to sled.
    pub(crate) fn apply_tasks(&self) {
        let _ = self.tx.send(Req::Apply);
    }

    /// A last checkpoint and the thread's end, waiting at most [`STOP_WAIT`].
    pub(crate) fn stop(mut self, floor: u64) -> Result<(), StoreError> {
        let (reply_tx, reply_rx) = crossbeam_channel::bounded(1);
        if self.tx.send(Req::Stop(floor, reply_tx)).is_err() {
            return Err(StoreError::Closed);
        }
        match reply_rx.recv_timeout(STOP_WAIT) {
            Ok(result) => {
                if let Some(thread) = self.thread.take() {
                    let _ = thread.join();
                }
                result
            }
            Err(_) => {
                tracing::error!(
                    "the last checkpoint did not finish in {STOP_WAIT:?}; exiting without it \
                     (the journal holds every confirmed change and is replayed at the next start)"
                );
                Err(StoreError::Closed)
            }
        }
    }
}

impl Worker {
    fn run(mut self, rx: Receiver<Req>) {
        let mut pending: Option<u64> = None;
        loop {
            let first = if pending.is_some() {
                rx.recv_timeout(RETRY)
            } else {
                rx.recv().map_err(|_| RecvTimeoutError::Disconnected)
            };
            let first = match first {
                Ok(req) => Some(req),
                Err(RecvTimeoutError::Timeout) => None,
                Err(RecvTimeoutError::Disconnected) => return,
            };
            // Later requests supersede earlier ones.
            let mut apply = false;
            for req in first.into_iter().chain(rx.try_iter()) {
                match req {
                    Req::Floor(floor) => pending = pending.max(Some(floor)),
                    Req::Apply => apply = true,
                    Req::Stop(floor, reply) => {
                        let floor = pending.map_or(floor, |p| p.max(floor));
                        return self.finish(floor, reply);
                    }
                }
            }
            if apply && !self.apply_tasks() {
                std::mem::forget(self);
                return;
            }
            let Some(floor) = pending else { continue };
            match self.checkpoint(floor) {
                Outcome::Done => pending = None,
                Outcome::Postponed => {}
                Outcome::Failed => {
                    // sled cannot flush again: never drop its handle.
                    std::mem::forget(self);
                    return;
                }
            }
        }
    }

    /// The last checkpoint, at shutdown.
    fn finish(mut self, floor: u64, reply: Sender<Result<(), StoreError>>) {
        let result = match self.checkpoint(floor) {
            Outcome::Done => {
                // The writer sealed its last segment: sled now holds everything.
                if let Err(error) = journal::remove_all(&self.dir) {
                    tracing::warn!(%error, "the journal could not be removed after the last checkpoint");
                }
                Ok(())
            }
            Outcome::Postponed => {
                // Dropping sled's handles would flush on a full disk: leave them,
                // the journal covers everything.
                self.store.dbs.leak_on_drop();
                std::mem::forget(self);
                tracing::warn!("no last checkpoint (too little disk space): the journal holds every change and is replayed at the next start");
                Ok(())
            }
            Outcome::Failed => {
                std::mem::forget(self);
                Err(StoreError::Closed)
            }
        };
        let _ = reply.send(result);
    }

    /// Applies the task table's frozen generations to sled (memory only: no flush,
    /// so no space is needed); `false` if the store failed.
    fn apply_tasks(&mut self) -> bool {
        if self.store.failure().is_some() {
            return false;
        }
        // Those frozen now (more may follow while these are applied).
        for _ in 0..self.store.tasks.frozen() {
            match self.store.tasks.apply_oldest(&self.db, &self.store.bodies) {
                Ok(true) => {}
                Ok(false) => return true,
                Err(error) => {
                    tracing::error!(%error, "task records could not be applied to sled");
                    self.store.fail(&super::io_error(error));
                    return false;
                }
            }
        }
        true
    }

    fn checkpoint(&mut self, floor: u64) -> Outcome {
        // The changes of the records below the floor reach sled before bodies move
        // (which reads sled's references) and before the flush.
        if !self.apply_tasks() {
            return Outcome::Failed;
        }
        match journal::free_bytes(&self.dir) {
            Ok(free) if free < self.reserve => {
                if !self.short_of_space {
                    self.short_of_space = true;
                    tracing::warn!(
                        free,
                        reserve = self.reserve,
                        "checkpoint postponed: too little disk space to flush the index safely; \
                         the journal keeps every change meanwhile and grows"
                    );
                }
                return Outcome::Postponed;
            }
            Ok(_) => {}
            Err(error) => tracing::warn!(%error, "could not read the free disk space"),
        }
        if std::mem::take(&mut self.short_of_space) {
            tracing::info!("disk space is back: checkpoints resume");
        }
        let start = Instant::now();
        let emptied = match self.move_bodies(floor) {
            Ok(emptied) => emptied,
            Err(error) => {
                // Nothing is removed and the floor stays where it is: the journal still
                // holds every body sled points at. Tried again in a second.
                tracing::warn!(%error, floor, "checkpoint postponed: live bodies could not be moved out of the journal");
                return Outcome::Postponed;
            }
        };
        if let Err(error) = self.db.insert(keys::JOURNAL_FLOOR, floor.to_be_bytes()) {
            tracing::error!(%error, floor, "could not record the journal floor");
            return Outcome::Postponed;
        }
        let flushed = self.db.flush().map(|_| ());
        if let Err(error) = flushed {
            tracing::error!(%error, floor, "checkpoint flush failed");
            self.store.fail(&super::io_error(error));
            return Outcome::Failed;
        }
        let took = start.elapsed();
        self.stats.checkpoints.fetch_add(1, Relaxed);
        self.stats
            .checkpoint_micros
            .fetch_add(crate::histogram::micros(took), Relaxed);
        // Handles first, once: a segment recycled below may be written again (a handle
        // opened meanwhile reads such a body as moved, `Bodies::read`).
        self.store
            .bodies
            .forget(|f| matches!(f, BodyFile::Journal(first) if first < floor));
        self.store.journal_bodies.lock().forget_below(floor);
        match journal::recycle_below(&self.dir, floor, self.store.sizing.segment_bytes) {
            Ok(removed) => {
                tracing::debug!(
                    floor,
                    removed,
                    took_ms = took.as_millis() as u64,
                    "checkpoint"
                )
            }
            Err(error) => {
                tracing::warn!(%error, floor, "checkpoint done, but old journal segments could not be removed")
            }
        }
        for n in emptied {
            match payload::remove(self.store.bodies.payload_dir(), n) {
                Ok(()) => self.store.bodies.removed(n),
                Err(error) => {
                    tracing::warn!(%error, file = n, "compacted payload file could not be removed")
                }
            }
        }
        Outcome::Done
    }

    /// Moves the live bodies of the journal segments below `floor` and compacts
    /// payload files; returns the payload files emptied.
    fn move_bodies(&mut self, floor: u64) -> std::io::Result<Vec<u64>> {
        let bodies = &self.store.bodies;
        let moved = relocate::journal_bodies(
            &self.db,
            bodies,
            &mut self.appender,
            &self.dir,
            floor,
            &self.store.journal_bodies,
        )?;
        let (emptied, compacted) = relocate::compact(&self.db, bodies, &mut self.appender)?;
        if moved.bodies + compacted.bodies > 0 || !emptied.is_empty() {
            tracing::debug!(
                floor,
                moved = moved.bodies,
                moved_bytes = moved.bytes,
                compacted = compacted.bodies,
                compacted_bytes = compacted.bytes,
                emptied = emptied.len(),
                "bodies moved"
            );
        }
        Ok(emptied)
    }
}
