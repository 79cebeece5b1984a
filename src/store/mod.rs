//! The store: Squall's only use of sled and of the journal (its write-ahead log). Key
//! layout, record encoding, the single group-commit writer, checkpoints, journal
//! replay and the recovery scan live here. It knows nothing of sockets, protobuf or
//! the broker's in-memory indexes.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use bytes::Bytes;
use crossbeam_channel::SendError;

use crate::histogram::{Histogram, BATCH_SIZES, LATENCY_MICROS};
use crate::model::{QueueConfig, TaskBody, TaskId, TaskState};

mod checkpoint;
mod datadir;
pub(crate) mod journal;
mod keys;
mod policy;
mod pool;
mod record;
mod report;
#[cfg(test)]
mod retention_tests;
#[cfg(test)]
mod schedule_tests;
mod status;
#[cfg(test)]
mod tests;
mod volume;
mod writer;

pub use datadir::DataDirProblem;
pub use report::{Duplicate, JobReport, SweepStats};
pub use status::{Retained, TaskRecord};
pub use volume::{Sizing, VolumeTooSmall, MIN_SEGMENT_BYTES};

use pool::{Db, DbPool};
use writer::{Done, Job, Msg, WriterLoop};

/// sled's leaf fanout: the default, measured fastest for this workload.
const LEAF_FANOUT: usize = 1024;

/// sled's background flush period: a year, i.e. never while running. sled is flushed
/// only by checkpoints (`checkpoint.rs`), which check the free space first and report
/// an error instead of aborting as sled's flusher does. Some period must be set: with
/// none, sled flushes whenever any tree handle is dropped, iterators included.
const SLED_BACKGROUND_FLUSH_MS: usize = 365 * 24 * 3600 * 1000;

/// Name of the journal's directory inside the data directory.
const JOURNAL_DIR: &str = "journal";

/// The default size of a journal segment.
pub const DEFAULT_JOURNAL_SEGMENT_BYTES: u64 = 32 * 1024 * 1024;

/// How the writer makes a batch durable before confirming it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FsyncMode {
    /// fsync every batch before confirming any of it (the default).
    Always,
    /// Confirm once written to the journal; fsync at most every interval. A killed
    /// process loses nothing (the kernel has the writes); a power loss can lose the
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
    /// Size of a journal segment file (preallocated). A checkpoint follows each full
    /// segment; the free space a checkpoint needs is twice this. On a small volume the
    /// store uses smaller segments (a 32nd of the volume, 1 MiB at least:
    /// [`Sizing`]).
    pub journal_segment_bytes: u64,
}

impl StoreConfig {
    /// Settings with the default cache and journal segment size.
    pub fn new(path: impl Into<PathBuf>, fsync: FsyncMode) -> StoreConfig {
        StoreConfig {
            path: path.into(),
            fsync,
            cache_bytes: 64 * 1024 * 1024,
            journal_segment_bytes: DEFAULT_JOURNAL_SEGMENT_BYTES,
        }
    }
}

/// Store failures.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// An I/O error of the journal or sled (disk full, permission, ...).
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
    /// The data directory cannot be used: missing rights, not a directory, held by
    /// another broker, or its contents could not be opened.
    #[error("data directory {} {reason}", path.display())]
    DataDir {
        /// The directory.
        path: PathBuf,
        /// What kind of problem (decides the exit code).
        problem: DataDirProblem,
        /// What is wrong, in words, starting with a verb ("is not writable ...").
        reason: String,
    },
    /// The writer has shut down.
    #[error("the store writer has shut down")]
    Closed,
    /// The journal cannot write now (a full disk); the broker retries by itself.
    #[error("storage unavailable: {0}")]
    Unavailable(Arc<str>),
    /// The volume holding the data directory is too small for the store (at open).
    #[error(transparent)]
    VolumeTooSmall(#[from] VolumeTooSmall),
    /// A checkpoint (sled flush) failed; the store accepts no change until the broker
    /// restarts.
    #[error("the store failed earlier and accepts no changes until the broker is restarted ({0})")]
    Failed(Arc<str>),
}

/// Called by the writer once the batch holding a job is durable (or failed).
pub trait Completion: Send + 'static {
    /// Consumes the completion with the batch's outcome.
    fn complete(self, result: Result<(), StoreError>);

    /// What the writer calls: the outcome plus what it decided about the job
    /// (duplicate inserts, sweep statistics). The default ignores the report.
    fn complete_with(self, result: Result<(), StoreError>, report: JobReport<'_>)
    where
        Self: Sized,
    {
        let _ = report;
        self.complete(result);
    }
}

/// Counters of the writer, readable from any thread. Updated once per batch or flush,
/// never per job, so they cost the hot path nothing.
#[derive(Debug)]
pub struct WriterStats {
    /// Batches applied.
    pub batches: std::sync::atomic::AtomicU64,
    /// Jobs confirmed.
    pub jobs: std::sync::atomic::AtomicU64,
    /// Mutations applied.
    pub mutations: std::sync::atomic::AtomicU64,
    /// fsyncs of the journal performed.
    pub flushes: std::sync::atomic::AtomicU64,
    /// Total microseconds spent in them.
    pub flush_micros: std::sync::atomic::AtomicU64,
    /// Checkpoints done (sled flushes that let journal segments go).
    pub checkpoints: std::sync::atomic::AtomicU64,
    /// Total microseconds spent in checkpoints.
    pub checkpoint_micros: std::sync::atomic::AtomicU64,
    /// Per batch: microseconds from the first job taken to the last job completed
    /// (stage, apply, fsync, confirm).
    pub commit_latency_micros: Histogram,
    /// Per batch: jobs it confirmed together (the group-commit batch size).
    pub batch_jobs: Histogram,
    /// Per journal fsync: microseconds spent in it.
    pub flush_latency_micros: Histogram,
}

impl Default for WriterStats {
    fn default() -> Self {
        WriterStats {
            batches: AtomicU64::new(0),
            jobs: AtomicU64::new(0),
            mutations: AtomicU64::new(0),
            flushes: AtomicU64::new(0),
            flush_micros: AtomicU64::new(0),
            checkpoints: AtomicU64::new(0),
            checkpoint_micros: AtomicU64::new(0),
            commit_latency_micros: Histogram::new(LATENCY_MICROS),
            batch_jobs: Histogram::new(BATCH_SIZES),
            flush_latency_micros: Histogram::new(LATENCY_MICROS),
        }
    }
}

/// A handle to an open data directory. Cheap to clone.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
    /// What `open` replayed from the journal.
    replayed: journal::Replayed,
}

/// The open database, shared by every `Store` clone and the writer thread. sled's
/// directory lock is released when the last of them is dropped.
pub(crate) struct Inner {
    /// Handles for readers (a sled handle is not `Sync`; see `pool.rs`).
    dbs: DbPool,
    fsync: FsyncMode,
    /// The next id `allocate_ids` hands out.
    next_id: AtomicU64,
    /// The highest id watermark persisted (`M next_id`); only the writer raises it.
    watermark: AtomicU64,
    /// Queue retention and idempotency settings; only the writer changes them.
    policies: parking_lot::RwLock<policy::Policies>,
    /// Why the store failed, once a checkpoint failed (see [`Store::failure`]).
    failure: parking_lot::Mutex<Option<Arc<str>>>,
    failed: std::sync::atomic::AtomicBool,
    /// Why the journal cannot write now (a full disk), until a write succeeds again.
    degraded: parking_lot::Mutex<Option<Arc<str>>>,
    is_degraded: std::sync::atomic::AtomicBool,
    /// The journal opened and replayed by `open`, until the writer takes it.
    journal: parking_lot::Mutex<Option<journal::Journal>>,
    journal_dir: PathBuf,
    /// Keeps other brokers out of the data directory while this store lives.
    _lock: datadir::DirLock,
    /// Free bytes a checkpoint needs.
    /// How the store uses its volume (segment size, reserves).
    sizing: Sizing,
    /// Why publishes are refused, while free space is below the publish reserve.
    low_space: parking_lot::Mutex<Option<Arc<str>>>,
}

impl Inner {
    /// Marks the store failed (once): after a failed flush, sled 1.0.0-alpha.124 cannot
    /// flush again in this process (its next flush waits forever for the failed
    /// epoch), so nothing may be confirmed any more, and its handles must never be
    /// dropped (dropping the last one flushes). The broker reports unhealthy and fails
    /// every change with `Failed` until it is restarted; the restart replays the
    /// journal, which holds every confirmed change.
    pub(crate) fn fail(&self, error: &StoreError) {
        let mut failure = self.failure.lock();
        if failure.is_some() {
            return;
        }
        *failure = Some(Arc::from(error.to_string()));
        self.failed.store(true, Relaxed);
        self.dbs.leak_on_drop();
        tracing::error!(
            %error,
            "STORE FAILED: a checkpoint (sled flush) failed. Nothing is confirmed from now \
             on (publishes and acks answer STORAGE) and /healthz and /readyz say 503. \
             Everything confirmed before is in the journal and safe. Fix the I/O error or \
             free disk space; the broker stops by itself (exit code 75) for its supervisor to \
             restart it: the index cannot recover in this process, and the restart \
             replays the journal."
        );
    }

    /// Why the store failed, if it did.
    pub(crate) fn failure(&self) -> Option<StoreError> {
        if !self.failed.load(Relaxed) {
            return None;
        }
        self.failure.lock().clone().map(StoreError::Failed)
    }

    /// The journal cannot write (a full disk): changes answer STORAGE and the
    /// broker is not ready until a write succeeds again. Logged once per episode.
    pub(crate) fn degrade(&self, error: &std::io::Error) {
        let mut degraded = self.degraded.lock();
        if degraded.is_none() {
            tracing::error!(
                %error,
                "STORE UNAVAILABLE: the journal cannot write (disk full?). Changes answer \
                 STORAGE and /readyz says 503; everything confirmed is safe. The broker \
                 retries every second and resumes by itself once space returns."
            );
        }
        *degraded = Some(Arc::from(format!(
            "the journal cannot write, retrying every second: {error}"
        )));
        self.is_degraded.store(true, Relaxed);
    }

    /// A journal write succeeded: the store is available again.
    pub(crate) fn undegrade(&self) {
        if !self.is_degraded.load(Relaxed) {
            return;
        }
        self.is_degraded.store(false, Relaxed);
        if self.degraded.lock().take().is_some() {
            tracing::info!("store available again: the journal writes");
        }
    }

    pub(crate) fn degraded(&self) -> bool {
        self.is_degraded.load(Relaxed)
    }

    /// Why changes cannot be stored now: the store failed, or the journal cannot write.
    pub(crate) fn unavailable(&self) -> Option<StoreError> {
        if let Some(failure) = self.failure() {
            return Some(failure);
        }
        if !self.is_degraded.load(Relaxed) {
            return None;
        }
        let reason = self.degraded.lock().clone()?;
        Some(StoreError::Unavailable(reason))
    }
}

/// What the recovery scan found.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct RecoveryStats {
    /// State records read.
    pub tasks: u64,
    /// Journal records replayed into sled at open.
    pub journal_records: u64,
    /// Bytes of those records.
    pub journal_bytes: u64,
}

/// Makes what opening created in `dir` durable before anything is confirmed: sled
/// writes its settings file (`durability_cookie`) without syncing it, and neither it
/// nor the journal directory syncs `dir`. Without this a power loss before the first
/// checkpoint leaves the settings file empty (sled then cannot open the store) or the
/// journal directory gone (found by `tests/power_loss.rs`).
fn sync_created(dir: &Path) -> std::io::Result<()> {
    match std::fs::File::open(dir.join("durability_cookie")) {
        Ok(cookie) => cookie.sync_all()?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    journal::sync_dir(dir)
}

impl Store {
    /// Opens (or creates) the data directory and replays the journal into sled.
    pub fn open(config: &StoreConfig) -> Result<Store, StoreError> {
        let lock = datadir::prepare(&config.path)?;
        let sizing =
            Sizing::for_dir(&config.path, config.journal_segment_bytes).map_err(io_error)??;
        if sizing.segment_bytes < config.journal_segment_bytes {
            tracing::warn!(
                volume_bytes = sizing.volume_bytes,
                configured = config.journal_segment_bytes,
                segment_bytes = sizing.segment_bytes,
                "the data volume is small: journal segments shrunk to a 32nd of it"
            );
        }
        if let Ok(free) = journal::free_bytes(&config.path) {
            if free < sizing.publish_reserve {
                tracing::warn!(
                    free,
                    reserve = sizing.publish_reserve,
                    "little free disk space: publishes are refused with STORAGE until there \
                     is more than the reserve; settlements and purges work"
                );
            }
        }
        let db = sled::Config::new()
            .path(&config.path)
            .cache_capacity_bytes(config.cache_bytes)
            .flush_every_ms(Some(SLED_BACKGROUND_FLUSH_MS))
            .open::<LEAF_FANOUT>()
            .map_err(|e| {
                // sled's own lock: held a moment longer than ours within one process
                // (its metadata thread releases it); another process is stopped by ours.
                let (problem, reason) = if e.kind() == std::io::ErrorKind::WouldBlock {
                    (DataDirProblem::InUse, "is still held by sled".to_owned())
                } else {
                    (
                        DataDirProblem::Unreadable,
                        format!("cannot be opened: {}", datadir::plain(&e)),
                    )
                };
                datadir::data_dir_error(&config.path, problem, reason)
            })?;
        let journal_dir = config.path.join(JOURNAL_DIR);
        let (journal, replayed) = replay(&db, &journal_dir, sizing.segment_bytes)?;
        sync_created(&config.path).map_err(io_error)?;
        let watermark = read_watermark(&db)?;
        let policies = policy::Policies::load(&db, QueueConfig::default())?;
        let next_id = match watermark {
            Some(w) => w,
            None => highest_task_id(&db)?.map_or(1, |id| id.saturating_add(1)),
        }
        .max(1);
        tracing::debug!(
            path = %config.path.display(),
            next_id,
            fsync = ?config.fsync,
            journal_records = replayed.records,
            journal_segments = replayed.segments,
            "store opened"
        );
        Ok(Store {
            inner: Arc::new(Inner {
                dbs: DbPool::new(db),
                fsync: config.fsync,
                next_id: AtomicU64::new(next_id),
                watermark: AtomicU64::new(watermark.unwrap_or(0)),
                policies: parking_lot::RwLock::new(policies),
                failure: parking_lot::Mutex::new(None),
                failed: std::sync::atomic::AtomicBool::new(false),
                degraded: parking_lot::Mutex::new(None),
                is_degraded: std::sync::atomic::AtomicBool::new(false),
                journal: parking_lot::Mutex::new(Some(journal)),
                journal_dir,
                _lock: lock,
                sizing,
                low_space: parking_lot::Mutex::new(None),
            }),
            replayed,
        })
    }

    /// Calls `f` for every stored task state, in id order.
    pub fn recover(
        &self,
        mut f: impl FnMut(TaskId, TaskState),
    ) -> Result<RecoveryStats, StoreError> {
        // A million tasks of one queue share one allocation of its name.
        let mut names: HashSet<Arc<str>> = HashSet::new();
        let mut stats = RecoveryStats {
            journal_records: self.replayed.records,
            journal_bytes: self.replayed.bytes,
            ..RecoveryStats::default()
        };
        let mut highest = None;
        for item in self.inner.dbs.get().range(keys::prefix_range(keys::STATE)) {
            let (key, value) = item.map_err(io_error)?;
            let id = keys::task_id(&key)
                .ok_or_else(|| corrupt_reason(&key, "state key is not 'S' + 8-byte id"))?;
            let view = record::decode_state(&value).map_err(|e| corrupt(&key, e))?;
            let queue = match names.get(view.queue) {
                Some(name) => name.clone(),
                None => {
                    let name: Arc<str> = Arc::from(view.queue);
                    names.insert(name.clone());
                    name
                }
            };
            f(id, view.to_state(queue));
            stats.tasks += 1;
            highest = Some(id);
        }
        // Belt and braces: the watermark is written with every insert, but never hand
        // out an id that is already stored.
        if let Some(id) = highest {
            self.inner.next_id.fetch_max(id.saturating_add(1), Relaxed);
        }
        tracing::debug!(tasks = stats.tasks, queues = names.len(), "store recovered");
        Ok(stats)
    }

    /// Every persisted queue configuration.
    pub fn queues(&self) -> Result<Vec<(Arc<str>, QueueConfig)>, StoreError> {
        let mut queues = Vec::new();
        for item in self.inner.dbs.get().range(keys::prefix_range(keys::QUEUE)) {
            let (key, value) = item.map_err(io_error)?;
            let name = keys::queue_name(&key)
                .ok_or_else(|| corrupt_reason(&key, "queue name is not UTF-8"))?;
            let config = record::decode_queue(&value).map_err(|e| corrupt(&key, e))?;
            queues.push((Arc::from(name), config));
        }
        Ok(queues)
    }

    /// Every persisted schedule, in name order.
    pub fn schedules(&self) -> Result<Vec<crate::model::Schedule>, StoreError> {
        let mut schedules = Vec::new();
        for item in self
            .inner
            .dbs
            .get()
            .range(keys::prefix_range(keys::SCHEDULE))
        {
            let (key, value) = item.map_err(io_error)?;
            let name = keys::queue_name(&key)
                .ok_or_else(|| corrupt_reason(&key, "schedule name is not UTF-8"))?;
            let schedule = record::decode_schedule(name, &value).map_err(|e| corrupt(&key, e))?;
            schedules.push(schedule);
        }
        Ok(schedules)
    }

    /// Why the store failed, if it did (a checkpoint failed). Once failed it stays
    /// failed until the process restarts.
    pub fn failure(&self) -> Option<StoreError> {
        self.inner.failure()
    }

    /// Why changes cannot be stored now, if they cannot: the store failed, or the
    /// journal cannot write (a full disk; this passes once a write succeeds).
    pub fn unavailable(&self) -> Option<StoreError> {
        self.inner.unavailable()
    }

    /// Why publishes are refused now, if they are: the store cannot store anything
    /// ([`Store::unavailable`]), or the free disk space is below the reserve kept for
    /// settlements and purges. Readiness reports this; dispatching goes on.
    pub fn refusing_publishes(&self) -> Option<StoreError> {
        self.unavailable().or_else(|| {
            let reason = self.inner.low_space.lock().clone()?;
            Some(StoreError::Unavailable(reason))
        })
    }

    /// How the store uses its volume.
    pub fn sizing(&self) -> Sizing {
        self.inner.sizing
    }

    /// Bytes of journal segment files on disk.
    pub fn journal_disk_bytes(&self) -> u64 {
        journal::disk_bytes(&self.inner.journal_dir)
    }

    /// Reserves `n` consecutive new task ids and returns the first.
    pub fn allocate_ids(&self, n: u64) -> TaskId {
        self.inner.next_id.fetch_add(n, Relaxed)
    }

    /// Reads a task's body (payload and headers).
    pub fn get_body(&self, id: TaskId) -> Result<Option<TaskBody>, StoreError> {
        let key = keys::body(id);
        let Some(value) = self.inner.dbs.get().get(key).map_err(io_error)? else {
            return Ok(None);
        };
        // The payload and header values are slices of sled's own buffer: no copy.
        record::decode_body(Bytes::from_owner(value))
            .map(Some)
            .map_err(|e| corrupt(&key, e))
    }

    /// Reads a task's state.
    pub fn get_state(&self, id: TaskId) -> Result<Option<TaskState>, StoreError> {
        let key = keys::state(id);
        let Some(value) = self.inner.dbs.get().get(key).map_err(io_error)? else {
            return Ok(None);
        };
        let view = record::decode_state(&value).map_err(|e| corrupt(&key, e))?;
        Ok(Some(view.to_state(Arc::from(view.queue))))
    }

    /// Starts the single writer thread (and the checkpoint thread). A store has one
    /// writer: a second call gets a writer that fails every job with `Closed`.
    pub fn start_writer<C: Completion>(&self) -> Writer<C> {
        let (tx, rx) = crossbeam_channel::unbounded();
        let stats = Arc::new(WriterStats::default());
        let Some(journal) = self.inner.journal.lock().take() else {
            tracing::error!("the store's writer was started twice");
            return Writer {
                handle: WriterHandle { tx },
                thread: None,
                stats,
            };
        };
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
            handle: WriterHandle { tx },
            thread,
            stats,
        }
    }
}

/// Replays the journal from sled's floor into sled. Records are applied in batches (a
/// replay is not made durable here: the journal still holds it until the first
/// checkpoint).
fn replay(
    db: &Db,
    dir: &std::path::Path,
    segment_bytes: u64,
) -> Result<(journal::Journal, journal::Replayed), StoreError> {
    const REPLAY_BATCH_WRITES: usize = 16_384;
    let floor = match db.get(keys::JOURNAL_FLOOR).map_err(io_error)? {
        Some(v) => record::decode_watermark(&v).map_err(|e| corrupt(keys::JOURNAL_FLOOR, e))?,
        None => 0,
    };
    let mut batch = sled::Batch::default();
    let mut writes = 0;
    let (journal, replayed) = journal::Journal::open(dir, segment_bytes, floor, |entry| {
        match entry {
            journal::Entry::Put(k, v) => batch.insert(k, v),
            journal::Entry::Remove(k) => batch.remove(k),
            journal::Entry::End => {
                if writes >= REPLAY_BATCH_WRITES {
                    db.apply_batch(std::mem::take(&mut batch))?;
                    writes = 0;
                }
                return Ok(());
            }
        }
        writes += 1;
        Ok(())
    })
    .map_err(io_error)?;
    db.apply_batch(batch).map_err(io_error)?;
    if replayed.records > 0 {
        tracing::info!(
            records = replayed.records,
            bytes = replayed.bytes,
            segments = replayed.segments,
            "journal replayed"
        );
    }
    Ok((journal, replayed))
}

/// Reads the persisted id watermark. A damaged one is not fatal: the caller falls
/// back to scanning the stored ids.
fn read_watermark(db: &Db) -> Result<Option<u64>, StoreError> {
    let Some(value) = db.get(keys::WATERMARK).map_err(io_error)? else {
        return Ok(None);
    };
    match record::decode_watermark(&value) {
        Ok(w) => Ok(Some(w)),
        Err(e) => {
            tracing::warn!(reason = %e.0, "id watermark unreadable; rescanning task ids");
            Ok(None)
        }
    }
}

/// The highest id of any state or body record, by a forward scan of their keys
/// (reverse iteration is avoided in this sled alpha). Only needed when the watermark
/// is missing: a data directory that predates it, or a damaged one.
fn highest_task_id(db: &Db) -> Result<Option<TaskId>, StoreError> {
    let mut highest = None;
    for prefix in [keys::BODY, keys::STATE] {
        for key in db.range(keys::prefix_range(prefix)).keys() {
            let key = key.map_err(io_error)?;
            if let Some(id) = keys::task_id(&key) {
                highest = highest.max(Some(id));
            }
        }
    }
    Ok(highest)
}

pub(crate) fn io_error(error: std::io::Error) -> StoreError {
    StoreError::Io(Arc::new(error))
}

pub(crate) fn corrupt(key: &[u8], error: record::DecodeError) -> StoreError {
    corrupt_reason(key, error.0)
}

pub(crate) fn corrupt_reason(key: &[u8], reason: impl Into<String>) -> StoreError {
    StoreError::Corrupt {
        key: keys::hex(key),
        reason: reason.into(),
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

/// The group-commit writer: owns the thread; dropping it without `shutdown` detaches
/// it, and the thread then exits (after a final flush) once every handle is dropped.
pub struct Writer<C: Completion> {
    handle: WriterHandle<C>,
    thread: Option<JoinHandle<Result<(), StoreError>>>,
    stats: Arc<WriterStats>,
}

/// A cloneable sender of jobs to the writer.
pub struct WriterHandle<C: Completion> {
    tx: crossbeam_channel::Sender<Msg<C>>,
}

impl<C: Completion> Clone for WriterHandle<C> {
    fn clone(&self) -> Self {
        WriterHandle {
            tx: self.tx.clone(),
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
    /// Queues a job; `done` is completed after the batch holding it is durable
    /// (per the fsync mode). After shutdown, `done` gets `StoreError::Closed`.
    pub fn submit(&self, muts: Muts, done: Option<C>) {
        let job = Job {
            muts,
            done: Done::new(done),
        };
        if let Err(SendError(Msg::Job(job))) = self.tx.send(Msg::Job(job)) {
            job.done
                .complete(Err(StoreError::Closed), JobReport::default());
        }
    }
}
