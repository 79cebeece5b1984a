//! The store: Squall's only use of sled and of the journal (its write-ahead log). Key
//! layout, record encoding, the single group-commit writer, checkpoints, journal
//! replay and the recovery scan live here. It knows nothing of sockets, protobuf or
//! the broker's in-memory indexes.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use crate::histogram::{Histogram, BATCH_SIZES, LATENCY_MICROS};
use crate::model::{TaskBody, TaskId, TaskState};

mod body_cache;
#[cfg(test)]
mod body_tests;
mod checkpoint;
mod datadir;
mod handle;
pub(crate) mod journal;
mod keys;
#[cfg(test)]
mod model_tests;
mod open;
mod payload;
mod policy;
mod pool;
mod record;
mod relocate;
mod report;
#[cfg(test)]
mod retention_tests;
#[cfg(test)]
mod schedule_tests;
mod sled_repair;
pub(crate) mod snapshot;
mod status;
mod tasks;
#[cfg(test)]
mod tasks_tests;
#[cfg(test)]
pub(crate) mod tests;
mod volume;
pub(crate) use volume::{low_space_reason, SpaceGuard};
mod writer;
pub(crate) use writer::payload_bytes_of;

pub use datadir::DataDirProblem;
pub use handle::{Muts, NettedPublish, Route, Writer, WriterHandle};
pub use open::RecoveryStats;
pub use record::PRODUCER_RING;
pub use report::{Duplicate, JobReport, SequenceRefusal, SweepStats};
pub use snapshot::{verify as verify_dump, DumpStats};
pub use status::{Retained, TaskRecord};
pub use volume::{Sizing, VolumeTooSmall, MIN_SEGMENT_BYTES};
pub use writer::PRODUCER_WINDOW_MS;

use body_cache::BodyCache;
use pool::{Db, DbPool};

/// The share of the configured cache given to the bodies of recently published tasks
/// (`body_cache.rs`); the task table and sled's page cache get the rest.
fn body_cache_bytes(cache_bytes: usize) -> usize {
    cache_bytes / 8
}

/// The share of the configured cache one generation of the task table may hold
/// (`tasks.rs`: at most [`tasks::MAX_FROZEN`] frozen ones and the active one).
fn task_generation_bytes(cache_bytes: usize) -> usize {
    cache_bytes / 16
}

/// What sled's page cache gets of the configured cache.
fn sled_cache_bytes(cache_bytes: usize) -> usize {
    let table = task_generation_bytes(cache_bytes) * (tasks::MAX_FROZEN + 1);
    cache_bytes - body_cache_bytes(cache_bytes) - table
}

/// sled's leaf fanout: the default, measured fastest for this workload.
const LEAF_FANOUT: usize = 1024;

/// sled's background flush period: a year, i.e. never while running. sled is flushed
/// only by checkpoints (`checkpoint.rs`), which check the free space first and report
/// an error instead of aborting as sled's flusher does. Some period must be set: with
/// none, sled flushes whenever any tree handle is dropped, iterators included.
const SLED_BACKGROUND_FLUSH_MS: usize = 365 * 24 * 3600 * 1000;

/// The zstd level sled compresses leaves with at a checkpoint's flush: 1 rather than
/// sled's default 3, because compressing the dirty leaves was most of a checkpoint's
/// instructions (BENCHMARKS.md, issue 14 part 2) while sled holds only the small
/// index (states, references, results). Any level reads any other's leaves.
const SLED_ZSTD_LEVEL: i32 = 1;

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
    /// Cluster mode: this node is not the leader, which alone changes the queue state;
    /// the message names the leader (or says that none is known).
    #[error("{0}")]
    NotLeader(Arc<str>),
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

    /// Whether the job's changes are already durable elsewhere, so that the writer
    /// need not sync its journal before completing it: a committed Raft entry is on a
    /// majority's synced log, and a member that loses its unsynced journal tail applies
    /// the entry again at restart. The writer syncs such groups within
    /// `DEFERRED_SYNC` all the same. The default: no.
    fn durable_elsewhere(&self) -> bool {
        false
    }

    /// Runs `complete`, which completes one group's jobs on the writer's thread in
    /// submission order. A completion type may gather what its completions send and
    /// send it once at the end (one message per receiver instead of one per job); it
    /// must send all of it before returning. The default just runs it.
    fn in_group(complete: impl FnOnce())
    where
        Self: Sized,
    {
        complete();
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
    /// Tasks a group both inserted and removed, so wrote neither (a cluster member's
    /// held-back entries: `WriterLoop::find_netted`).
    pub netted: std::sync::atomic::AtomicU64,
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
            netted: AtomicU64::new(0),
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
    /// A cluster member's store: its jobs are committed Raft entries, applied whatever
    /// the free space (the leader checked the publish reserve before proposing).
    replicated: std::sync::atomic::AtomicBool,
    /// Where bodies are read from, and the payload files' live bytes.
    pub(crate) bodies: payload::Bodies,
    /// The bodies of recently published tasks (a share of `cache_bytes`).
    pub(crate) recent_bodies: BodyCache,
    /// Task records changed since they were last applied to sled (`tasks.rs`).
    pub(crate) tasks: tasks::TaskTable,
    /// The ids of the bodies in each journal segment the writer created (`relocate.rs`).
    pub(crate) journal_bodies: parking_lot::Mutex<relocate::JournalBodyIds>,
    /// The number of the first payload file this process creates.
    next_payload_file: u64,
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

impl Store {
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

    /// Tests: writes an undecodable state record for task `id`, straight into sled.
    #[cfg(test)]
    pub(crate) fn corrupt_state(&self, id: TaskId) {
        self.inner
            .dbs
            .get()
            .insert(keys::state(id), &b"\x01garbage"[..])
            .unwrap();
    }

    /// Whether recently published bodies are kept in memory for deliveries (on by
    /// default). A cluster member turns it off while it follows, since it delivers
    /// nothing, and on when it leads; off empties the cache.
    pub fn set_caching_bodies(&self, on: bool) {
        self.inner.recent_bodies.set_enabled(on);
    }

    /// Makes this a cluster member's store: from now on every job reaching its writer
    /// is a committed Raft entry, which every member must apply alike, so a publish is
    /// no longer refused for the publish reserve here (the leader checks the reserve
    /// before proposing: [`Store::publish_space`]). A job that really cannot be written
    /// still fails.
    pub fn set_replicated(&self) {
        self.inner
            .replicated
            .store(true, std::sync::atomic::Ordering::Relaxed);
    }

    /// A guard over the free space of this store's volume that answers whether a
    /// publish would eat into the publish reserve (a cluster leader asks it before
    /// proposing a publish).
    pub(crate) fn publish_space(&self) -> volume::SpaceGuard {
        volume::SpaceGuard::new(
            self.inner.journal_dir.clone(),
            self.inner.sizing.publish_reserve,
        )
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

    /// Cluster mode, on a node becoming leader: ids are allocated from at least the
    /// watermark that entries applied from other leaders raised, so that none is
    /// handed out twice.
    pub fn raise_next_id(&self) {
        let watermark = self.inner.watermark.load(Relaxed);
        self.inner.next_id.fetch_max(watermark, Relaxed);
    }

    /// Cluster mode: the cluster's id, once its first leader set it
    /// (`Mutation::ClusterId`); `None` before.
    pub fn cluster_id(&self) -> Result<Option<String>, StoreError> {
        let Some(value) = self
            .inner
            .dbs
            .get()
            .get(keys::CLUSTER_ID)
            .map_err(io_error)?
        else {
            return Ok(None);
        };
        String::from_utf8(value.to_vec())
            .map(Some)
            .map_err(|_| corrupt_reason(keys::CLUSTER_ID, "not UTF-8"))
    }

    /// Cluster mode: the last Raft entry applied to this store (leader term, leader
    /// node, index), as `Mutation::Applied` recorded it; `None` before the first.
    pub fn raft_applied(&self) -> Result<Option<(u64, u64, u64)>, StoreError> {
        let Some(value) = self
            .inner
            .dbs
            .get()
            .get(keys::RAFT_APPLIED)
            .map_err(io_error)?
        else {
            return Ok(None);
        };
        let word = |i: usize| {
            value
                .get(i * 8..i * 8 + 8)
                .and_then(|b| <[u8; 8]>::try_from(b).ok())
                .map(u64::from_be_bytes)
        };
        match (value.len(), word(0), word(1), word(2)) {
            (24, Some(term), Some(node), Some(index)) => Ok(Some((term, node, index))),
            _ => Err(corrupt_reason(keys::RAFT_APPLIED, "not 24 bytes")),
        }
    }

    /// Bytes of payload files on disk, and how many of them are live.
    pub fn payload_disk_bytes(&self) -> (u64, u64) {
        (
            payload::disk_bytes(self.inner.bodies.payload_dir()),
            self.inner.bodies.live_bytes(),
        )
    }

    /// Reads a task's body (payload and headers) from where its reference points: a
    /// journal segment or a payload file (or sled itself, for a body stored before
    /// bodies left sled), or from the cache of recently published bodies. One body's
    /// bytes in memory.
    pub fn get_body(&self, id: TaskId) -> Result<Option<TaskBody>, StoreError> {
        let key = keys::body(id);
        if let Some(body) = self.inner.recent_bodies.get(id) {
            return record::decode_body(body)
                .map(Some)
                .map_err(|e| corrupt(&key, e));
        }
        let record = match self.fetch_body(id, |bodies, r| bodies.read(r))? {
            None => return Ok(None),
            // The payload and header values are slices of sled's own buffer.
            Some(Fetched::Inline(value)) => value,
            Some(Fetched::File(bytes)) => Bytes::from(bytes),
        };
        record::decode_body(record)
            .map(Some)
            .map_err(|e| corrupt(&key, e))
    }

    /// A task's body with at most `max` bytes of its payload (copied), and its headers
    /// unless their encoding takes more than `max` + 64 KiB. The whole body's checksum
    /// is checked, but memory is `max` plus a small piece whatever the body's size:
    /// what a peek needs.
    pub fn get_body_preview(
        &self,
        id: TaskId,
        max: usize,
    ) -> Result<Option<BodyPreview>, StoreError> {
        const HEADER_SLACK: u64 = 64 * 1024;
        let key = keys::body(id);
        let fetched = self.fetch_body(id, |bodies, r| {
            let at = record::BODY_PAYLOAD_AT as u64;
            let mut payload_len = 0;
            let mut keep_tail = false;
            let parts = bodies.read_ranges(r, record::BODY_PAYLOAD_AT, |head| {
                payload_len = record::body_payload_len(head).unwrap_or(0);
                let tail = at + payload_len..u64::from(r.len);
                keep_tail = tail.end.saturating_sub(tail.start) <= max as u64 + HEADER_SLACK;
                vec![
                    0..at + payload_len.min(max as u64),
                    if keep_tail { tail } else { 0..0 },
                ]
            })?;
            let tail = keep_tail.then_some(parts[1].as_slice());
            Ok((
                record::preview_record(&parts[0], tail),
                payload_len,
                keep_tail,
            ))
        })?;
        let (record, payload_len, headers_read) = match fetched {
            None => return Ok(None),
            Some(Fetched::Inline(value)) => (value, None, true),
            Some(Fetched::File((record, len, kept))) => (Bytes::from(record), Some(len), kept),
        };
        let body = record::decode_body(record).map_err(|e| corrupt(&key, e))?;
        let payload_len = payload_len.unwrap_or(body.payload.len() as u64);
        debug_assert!(body.payload.len() as u64 <= payload_len);
        let payload = Bytes::copy_from_slice(&body.payload[..body.payload.len().min(max)]);
        debug_assert!(payload.len() <= max);
        Ok(Some(BodyPreview {
            payload,
            payload_len,
            headers: headers_read.then_some(body.headers),
        }))
    }

    /// Reads a task's `B` record and, for a reference, what `read` makes of the file
    /// it points at. A checkpoint may move the body and remove its file between the
    /// reference's read and the file's: then the reference has changed; read again.
    fn fetch_body<T>(
        &self,
        id: TaskId,
        mut read: impl FnMut(&payload::Bodies, &record::BodyRef) -> std::io::Result<T>,
    ) -> Result<Option<Fetched<T>>, StoreError> {
        let key = keys::body(id);
        let mut attempts = 0;
        loop {
            let Some(value) = self.task_record(tasks::Slot::Body, id)? else {
                return Ok(None);
            };
            let r = match record::decode_stored_body(&value).map_err(|e| corrupt(&key, e))? {
                record::StoredBody::Inline(_) => {
                    return Ok(Some(Fetched::Inline(Bytes::from_owner(value))))
                }
                record::StoredBody::Ref(r) => r,
            };
            match read(&self.inner.bodies, &r) {
                Ok(v) => return Ok(Some(Fetched::File(v))),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound && attempts < 3 => {
                    attempts += 1;
                }
                Err(e) if e.kind() == std::io::ErrorKind::InvalidData => {
                    return Err(corrupt_reason(&key, e.to_string()))
                }
                Err(e) => return Err(io_error(e)),
            }
        }
    }

    /// Reads a task's state.
    pub fn get_state(&self, id: TaskId) -> Result<Option<TaskState>, StoreError> {
        let key = keys::state(id);
        let Some(value) = self.task_record(tasks::Slot::State, id)? else {
            return Ok(None);
        };
        let view = record::decode_state(&value).map_err(|e| corrupt(&key, e))?;
        Ok(Some(view.to_state(Arc::from(view.queue))))
    }
}

impl Store {
    /// Whether the expiry index holds an entry due by `now`, i.e. whether a retention
    /// sweep would find anything to examine: the writer's sweep scans the same range of
    /// sled (`writer/retention.rs`). One range read; the sweeper skips a sweep that
    /// would find nothing, so an idle broker (or cluster) writes nothing for it.
    pub fn expiry_due(&self, now: crate::model::Millis) -> Result<bool, StoreError> {
        let db = self.inner.dbs.get();
        let first = pool::scan(&db, &[keys::EXPIRY], keys::expiry_due_end(now)).next();
        match first {
            None => Ok(false),
            Some(Ok((key, _))) => {
                debug_assert_eq!(key.first(), Some(&keys::EXPIRY));
                Ok(true)
            }
            Some(Err(e)) => Err(io_error(e)),
        }
    }

    /// A task record as the writer last left it: from the task table if it holds
    /// the record, else from sled.
    fn task_record(
        &self,
        slot: tasks::Slot,
        id: TaskId,
    ) -> Result<Option<sled::InlineArray>, StoreError> {
        match self.inner.tasks.get(slot, id) {
            Some(value) => Ok(value),
            None => self.inner.dbs.get().get(slot.key(id)).map_err(io_error),
        }
    }
}

/// A task's body as a peek shows it (`Store::get_body_preview`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct BodyPreview {
    /// The first bytes of the payload, at most the number asked for.
    pub payload: Bytes,
    /// The payload's whole length.
    pub payload_len: u64,
    /// The headers, or `None` if they were too long to read for a preview.
    pub headers: Option<Vec<(String, Bytes)>>,
}

/// A `B` record as `Store::fetch_body` found it.
enum Fetched<T> {
    /// The whole body record, stored in sled (data directories from before references).
    Inline(Bytes),
    /// What was read from the file a reference points at.
    File(T),
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
