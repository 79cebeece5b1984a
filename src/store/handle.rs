//! The public face of the group-commit writer: [`Writer`] (owns the thread),
//! [`WriterHandle`] (submits jobs from any thread), [`Muts`], and [`Route`] (where a
//! cluster member's handle sends jobs instead: its Raft group). The thread's loop is
//! `writer.rs`.

use std::sync::Arc;
use std::thread::JoinHandle;

use flume::SendError;

use super::snapshot::{DumpStats, SnapshotJob};
use super::writer::{Done, Job, Msg, WriterLoop};
use super::{checkpoint, io_error, Completion, JobReport, Store, StoreError, WriterStats};

impl Store {
    /// Starts the single writer thread (and the checkpoint thread). A store has one
    /// writer: a second call gets a writer that fails every job with `Closed`.
    pub fn start_writer<C: Completion>(&self) -> Writer<C> {
        let (tx, rx) = flume::unbounded();
        let stats = Arc::new(WriterStats::default());
        let Some(journal) = self.inner.journal.lock().take() else {
            tracing::error!("the store's writer was started twice");
            return Writer {
                handle: WriterHandle { tx, route: None },
                thread: None,
                stats,
            };
        };
        self.inner.journal_bodies.lock().start(journal.next_seq());
        let checkpointer = checkpoint::Checkpointer::start(
            self.inner.dbs.detach(),
            self.inner.clone(),
            stats.clone(),
            self.inner.journal_dir.clone(),
            self.inner.sizing.checkpoint_reserve,
        );
        let db = self.inner.dbs.detach();
        let writer = WriterLoop::new(
            db,
            journal,
            checkpointer,
            self.inner.clone(),
            rx,
            stats.clone(),
        );
        let thread = std::thread::Builder::new()
            .name("squall-writer".into())
            .spawn(move || writer.run());
        let thread = match thread {
            Ok(thread) => Some(thread),
            Err(error) => {
                // The receiver went down with the closure: every job gets `Closed`.
                tracing::error!(%error, "could not start the store writer thread");
                None
            }
        };
        Writer {
            handle: WriterHandle { tx, route: None },
            thread,
            stats,
        }
    }
}

/// Mutations of one job: almost always one, so that case does not allocate.
#[derive(Debug)]
pub enum Muts {
    /// A single mutation.
    One(crate::model::Mutation),
    /// Several, applied in the same batch.
    Many(Vec<crate::model::Mutation>),
    /// Several, shared with whoever else holds them (a replicated entry's job, which
    /// the Raft log keeps in memory too): applied without a copy; with their task
    /// payload bytes, counted when they were made (see [`Muts::shared`]).
    Shared(std::sync::Arc<[crate::model::Mutation]>, usize),
    /// A publish whose every task a cluster member found removed again within the
    /// same held-back entries (`cluster/state.rs`, `Deferred`): none of its tasks is
    /// written, but its ids still raise the watermark and its number, if it has one,
    /// is checked and remembered like the publish's own. Made only there.
    Netted(NettedPublish),
}

/// What remains of a publish whose tasks were all inserted and removed within one
/// group of a member's held-back entries ([`Muts::Netted`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NettedPublish {
    /// The producer and number of a numbered publish.
    pub numbered: Option<(std::sync::Arc<str>, u64)>,
    /// Its first task's id and that task's creation time (the producer table's).
    pub first: crate::model::TaskId,
    /// When its first task was created (`TaskState::created_ms`).
    pub created_ms: crate::model::Millis,
    /// How many tasks it inserted.
    pub tasks: u32,
    /// Its highest task id.
    pub max_id: crate::model::TaskId,
}

impl Muts {
    /// Shared mutations `muts`, whose task payloads are `payload_bytes` long: the
    /// writer bounds its groups by them without reading every task (a replicated
    /// entry's job is applied long after it was decoded, out of the cache).
    pub fn shared(muts: std::sync::Arc<[crate::model::Mutation]>, payload_bytes: usize) -> Muts {
        debug_assert_eq!(payload_bytes, super::payload_bytes_of(&muts));
        Muts::Shared(muts, payload_bytes)
    }

    /// The mutations, in order.
    pub fn into_vec(self) -> Vec<crate::model::Mutation> {
        match self {
            Muts::One(m) => vec![m],
            Muts::Many(ms) => ms,
            Muts::Shared(ms, _) => ms.to_vec(),
            Muts::Netted(_) => {
                debug_assert!(false, "a netted publish is never proposed");
                Vec::new()
            }
        }
    }
}

/// The group-commit writer: owns the thread; dropping it without `shutdown` detaches
/// it, and the thread then exits (after a final flush) once every handle is dropped.
pub struct Writer<C: Completion> {
    handle: WriterHandle<C>,
    thread: Option<JoinHandle<Result<(), StoreError>>>,
    stats: Arc<WriterStats>,
}

/// A cloneable sender of jobs to the writer.
pub struct WriterHandle<C: Completion> {
    tx: flume::Sender<Msg<C>>,
    /// Cluster mode: jobs go here (the Raft group), and reach this writer only once
    /// committed. `None` on a single node: jobs go straight to the writer.
    route: Option<Arc<dyn Route<C>>>,
}

/// Where a cluster member's jobs go instead of the local writer: the Raft group
/// (`cluster::Proposer`), whose state machine applies each committed job to every
/// member's store through a plain handle and only then completes `done`.
pub trait Route<C: Completion>: Send + Sync + 'static {
    /// Takes one job; `done` is completed exactly once (applied, or refused).
    fn submit(&self, muts: Muts, done: Option<C>);
}

impl<C: Completion> Clone for WriterHandle<C> {
    fn clone(&self) -> Self {
        WriterHandle {
            tx: self.tx.clone(),
            route: self.route.clone(),
        }
    }
}

impl<C: Completion> Writer<C> {
    /// A handle to submit jobs from any thread.
    pub fn handle(&self) -> WriterHandle<C> {
        self.handle.clone()
    }

    /// Writer counters.
    pub fn stats(&self) -> Arc<WriterStats> {
        self.stats.clone()
    }

    /// Applies everything submitted so far, flushes, and joins the thread.
    pub fn shutdown(self) -> Result<(), StoreError> {
        // If the thread is already gone the send fails, and the join says why.
        let _ = self.handle.tx.send(Msg::Shutdown);
        let Some(thread) = self.thread else {
            return Err(StoreError::Closed);
        };
        match thread.join() {
            Ok(result) => result,
            Err(_) => {
                tracing::error!("the store writer thread panicked");
                Err(io_error(std::io::Error::other(
                    "the store writer thread panicked",
                )))
            }
        }
    }
}

impl<C: Completion> WriterHandle<C> {
    /// This handle with its jobs sent to `route` (a cluster member's Raft group).
    pub fn routed(&self, route: Arc<dyn Route<C>>) -> WriterHandle<C> {
        WriterHandle {
            tx: self.tx.clone(),
            route: Some(route),
        }
    }

    /// Queues a job; `done` is completed after the batch holding it is durable
    /// (per the fsync mode). After shutdown, `done` gets `StoreError::Closed`.
    pub fn submit(&self, muts: Muts, done: Option<C>) {
        if let Some(route) = &self.route {
            return route.submit(muts, done);
        }
        let job = Job {
            muts,
            done: Done::new(done),
        };
        if let Err(SendError(Msg::Job(job))) = self.tx.send(Msg::Job(job)) {
            job.done
                .complete(Err(StoreError::Closed), JobReport::default());
        }
    }

    /// Queues `jobs` in their order, as [`WriterHandle::submit`] would one by one, in
    /// one message to the writer (several jobs handed over at once: they are applied
    /// in one group, as [`WriterHandle::submit_together`]'s). Routed, each goes its
    /// route's way. Leaves `jobs` empty (its allocation kept for the next ones).
    pub fn submit_many(&self, jobs: &mut Vec<(Muts, Option<C>)>) {
        if let Some(route) = &self.route {
            for (muts, done) in jobs.drain(..) {
                route.submit(muts, done);
            }
        } else if jobs.len() == 1 {
            let (muts, done) = jobs.pop().expect("one job");
            self.submit(muts, done);
        } else {
            self.send_together(jobs.drain(..));
        }
        debug_assert!(jobs.is_empty());
    }

    /// Queues jobs that are applied in one group: durable, and recovered after a
    /// crash, all together or none of them (a replicated entry's jobs). Each `done`
    /// is completed as by [`WriterHandle::submit`]. Never routed.
    pub fn submit_together(&self, jobs: Vec<(Muts, Option<C>)>) {
        debug_assert!(
            self.route.is_none(),
            "jobs sent together are the local writer's"
        );
        self.send_together(jobs.into_iter());
    }

    /// Sends `jobs` to the writer as one message (`Msg::Jobs`: one group); nothing if
    /// there are none. A writer that is gone completes each with `Closed`.
    fn send_together(&self, jobs: impl Iterator<Item = (Muts, Option<C>)>) {
        let jobs: Vec<Job<C>> = jobs
            .map(|(muts, done)| Job {
                muts,
                done: Done::new(done),
            })
            .collect();
        if jobs.is_empty() {
            return;
        }
        if let Err(SendError(Msg::Jobs(jobs))) = self.tx.send(Msg::Jobs(jobs)) {
            for job in jobs {
                job.done
                    .complete(Err(StoreError::Closed), JobReport::default());
            }
        }
    }

    /// Cluster snapshots: appends a dump of the whole store to `out` (positioned where
    /// the dump starts; format in `store/snapshot.rs`), taken by the writer thread
    /// between two groups, so it is exactly the state every job submitted before this
    /// call left. `reply` gets `out` back (flushed, not synced) and the dump's size.
    /// Never routed: the local writer runs it.
    pub fn export_snapshot(
        &self,
        out: std::fs::File,
        reply: impl FnOnce(Result<(std::fs::File, DumpStats), StoreError>) + Send + 'static,
    ) {
        self.send_snapshot(SnapshotJob::Export {
            out,
            reply: Box::new(reply),
        });
    }

    /// Cluster snapshots: replaces the store's whole content with the dump `input`
    /// holds (positioned at the dump; check it first with [`super::verify_dump`]) and
    /// records `applied` (term, node, index) as the last Raft entry applied (none:
    /// the store holds no applied id). `reply`
    /// runs once the new content is durable. A failure half-way leaves the store
    /// holding part of each: import again.
    pub fn import_snapshot(
        &self,
        input: std::fs::File,
        applied: Option<(u64, u64, u64)>,
        reply: impl FnOnce(Result<DumpStats, StoreError>) + Send + 'static,
    ) {
        self.send_snapshot(SnapshotJob::Import {
            input,
            applied,
            reply: Box::new(reply),
        });
    }

    fn send_snapshot(&self, job: SnapshotJob) {
        if let Err(SendError(Msg::Snapshot(job))) = self.tx.send(Msg::Snapshot(job)) {
            match job {
                SnapshotJob::Export { reply, .. } => reply(Err(StoreError::Closed)),
                SnapshotJob::Import { reply, .. } => reply(Err(StoreError::Closed)),
            }
        }
    }
}
