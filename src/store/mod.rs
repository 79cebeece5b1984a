//! The store: Squall's only use of sled. Key layout, record encoding, the single
//! group-commit writer and the recovery scan live here. It knows nothing of sockets,
//! protobuf or the broker's in-memory indexes.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::model::{QueueConfig, TaskBody, TaskId, TaskState};

/// How the writer makes a batch durable before confirming it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FsyncMode {
    /// fsync every batch before confirming any of it (the default).
    Always,
    /// Confirm once applied; fsync at most every interval. A crash can lose the
    /// confirmations of the last interval.
    Interval(Duration),
    /// Confirm once applied; never fsync on the hot path (only on shutdown).
    Never,
}

/// Store settings.
#[derive(Debug, Clone)]
pub struct StoreConfig {
    /// Data directory.
    pub path: PathBuf,
    /// Durability mode.
    pub fsync: FsyncMode,
    /// sled cache size in bytes.
    pub cache_bytes: usize,
}

/// Store failures.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// An I/O error from sled (disk full, permission, ...).
    #[error("storage I/O error: {0}")]
    Io(Arc<std::io::Error>),
    /// A record could not be decoded.
    #[error("corrupt record under key {key:?}: {reason}")]
    Corrupt {
        /// Hex of the key.
        key: String,
        /// What was wrong.
        reason: String,
    },
    /// The writer has shut down.
    #[error("the store writer has shut down")]
    Closed,
}

/// Called by the writer once the batch holding a job is durable (or failed).
pub trait Completion: Send + 'static {
    /// Consumes the completion with the batch's outcome.
    fn complete(self, result: Result<(), StoreError>);
}

/// Counters of the writer, readable from any thread.
#[derive(Debug, Default)]
pub struct WriterStats {
    /// Batches applied.
    pub batches: std::sync::atomic::AtomicU64,
    /// Jobs confirmed.
    pub jobs: std::sync::atomic::AtomicU64,
    /// Mutations applied.
    pub mutations: std::sync::atomic::AtomicU64,
    /// fsyncs (sled flushes) performed.
    pub flushes: std::sync::atomic::AtomicU64,
    /// Total microseconds spent in flush.
    pub flush_micros: std::sync::atomic::AtomicU64,
}

/// A handle to an open data directory. Cheap to clone.
#[derive(Clone)]
pub struct Store {
    _todo: (),
}

/// What the recovery scan found.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct RecoveryStats {
    /// State records read.
    pub tasks: u64,
}

impl Store {
    /// Opens (or creates) the data directory.
    pub fn open(_config: &StoreConfig) -> Result<Store, StoreError> {
        todo!()
    }

    /// Calls `f` for every stored task state, in id order.
    pub fn recover(&self, _f: impl FnMut(TaskId, TaskState)) -> Result<RecoveryStats, StoreError> {
        todo!()
    }

    /// Every persisted queue configuration.
    pub fn queues(&self) -> Result<Vec<(Arc<str>, QueueConfig)>, StoreError> {
        todo!()
    }

    /// Reserves `n` consecutive new task ids and returns the first.
    pub fn allocate_ids(&self, _n: u64) -> TaskId {
        todo!()
    }

    /// Reads a task's body (payload and headers).
    pub fn get_body(&self, _id: TaskId) -> Result<Option<TaskBody>, StoreError> {
        todo!()
    }

    /// Reads a task's state.
    pub fn get_state(&self, _id: TaskId) -> Result<Option<TaskState>, StoreError> {
        todo!()
    }

    /// Starts the single writer thread.
    pub fn start_writer<C: Completion>(&self) -> Writer<C> {
        todo!()
    }
}

/// Mutations of one job: almost always one, so that case does not allocate.
#[derive(Debug)]
pub enum Muts {
    /// A single mutation.
    One(crate::model::Mutation),
    /// Several, applied in the same batch.
    Many(Vec<crate::model::Mutation>),
}

/// The group-commit writer: owns the thread; dropping it without `shutdown` detaches it.
pub struct Writer<C: Completion> {
    handle: WriterHandle<C>,
}

/// A cloneable sender of jobs to the writer.
pub struct WriterHandle<C: Completion> {
    _c: std::marker::PhantomData<C>,
}

impl<C: Completion> Clone for WriterHandle<C> {
    fn clone(&self) -> Self {
        todo!()
    }
}

impl<C: Completion> Writer<C> {
    /// A handle to submit jobs from any thread.
    pub fn handle(&self) -> WriterHandle<C> {
        self.handle.clone()
    }

    /// Writer counters.
    pub fn stats(&self) -> Arc<WriterStats> {
        todo!()
    }

    /// Applies everything submitted so far, flushes, and joins the thread.
    pub fn shutdown(self) -> Result<(), StoreError> {
        todo!()
    }
}

impl<C: Completion> WriterHandle<C> {
    /// Queues a job; `done` is completed after the batch holding it is durable
    /// (per the fsync mode). After shutdown, `done` gets `StoreError::Closed`.
    pub fn submit(&self, _muts: Muts, _done: Option<C>) {
        todo!()
    }
}
