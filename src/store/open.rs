//! Opening a data directory: the directory lock, sizing to the volume, sled, the
//! journal's replay into sled (bodies become references into the journal), the
//! payload files' live bytes, the id watermark; and the recovery scan that hands
//! every stored task state to the engine (also run by a cluster member that becomes
//! leader, while its writer runs).

use std::collections::HashSet;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;

use super::body_cache::BodyCache;
use super::pool::{Db, DbPool};
use super::record::{BodyFile, BodyRef, StoredBody};
use super::tasks::{Slot, TaskTable};
use super::{
    body_cache_bytes, corrupt, corrupt_reason, datadir, io_error, journal, keys, payload, policy,
    record, sled_cache_bytes, sled_repair, task_generation_bytes, DataDirProblem, Inner, Sizing,
    Store, StoreConfig, StoreError, JOURNAL_DIR, LEAF_FANOUT, SLED_BACKGROUND_FLUSH_MS,
    SLED_ZSTD_LEVEL,
};
use crate::model::{QueueConfig, TaskId, TaskState};

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
        sled_repair::repair(&config.path).map_err(io_error)?;
        let db = sled::Config::new()
            .path(&config.path)
            .cache_capacity_bytes(sled_cache_bytes(config.cache_bytes))
            .flush_every_ms(Some(SLED_BACKGROUND_FLUSH_MS))
            .zstd_compression_level(SLED_ZSTD_LEVEL)
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
        let payload_dir = config.path.join(payload::PAYLOAD_DIR);
        std::fs::create_dir_all(&payload_dir).map_err(io_error)?;
        sync_created(&config.path).map_err(io_error)?;
        let bodies = payload::Bodies::new(journal_dir.clone(), payload_dir);
        let next_payload_file = check_bodies(&db, &bodies, &replayed.extents)?;
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
                replicated: std::sync::atomic::AtomicBool::new(false),
                bodies,
                recent_bodies: BodyCache::new(body_cache_bytes(config.cache_bytes)),
                tasks: TaskTable::new(task_generation_bytes(config.cache_bytes), next_id),
                journal_bodies: parking_lot::Mutex::default(),
                next_payload_file,
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
        let mut emit = |id: TaskId, value: &[u8]| -> Result<(), StoreError> {
            let view = record::decode_state(value).map_err(|e| corrupt(&keys::state(id), e))?;
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
            Ok(())
        };
        // sled's states, corrected by the task table's newer ones (empty at start-up;
        // a cluster member rebuilds its engine while its writer runs).
        let mut newer = self.inner.tasks.records(Slot::State).into_iter().peekable();
        for item in crate::store::pool::scan_prefix(&self.inner.dbs.get(), keys::STATE) {
            let (key, value) = item.map_err(io_error)?;
            let id = keys::task_id(&key)
                .ok_or_else(|| corrupt_reason(&key, "state key is not 'S' + 8-byte id"))?;
            let mut replaced = false;
            while let Some((table_id, state)) = newer.next_if(|(t, _)| *t <= id) {
                replaced |= table_id == id;
                if let Some(state) = state {
                    emit(table_id, &state)?;
                }
            }
            if !replaced {
                emit(id, &value)?;
            }
        }
        for (id, state) in newer {
            if let Some(state) = state {
                emit(id, &state)?;
            }
        }
        // Belt and braces: the watermark is written with every insert, but never hand
        // out an id that is already stored.
        if let Some(id) = highest {
            self.inner.next_id.fetch_max(id.saturating_add(1), Relaxed);
            self.inner.tasks.raise_fresh_from(id.saturating_add(1));
        }
        tracing::debug!(tasks = stats.tasks, queues = names.len(), "store recovered");
        Ok(stats)
    }

    /// Every persisted queue configuration.
    pub fn queues(&self) -> Result<Vec<(Arc<str>, QueueConfig)>, StoreError> {
        let mut queues = Vec::new();
        for item in crate::store::pool::scan_prefix(&self.inner.dbs.get(), keys::QUEUE) {
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
        for item in crate::store::pool::scan_prefix(&self.inner.dbs.get(), keys::SCHEDULE) {
            let (key, value) = item.map_err(io_error)?;
            let name = keys::queue_name(&key)
                .ok_or_else(|| corrupt_reason(&key, "schedule name is not UTF-8"))?;
            let schedule = record::decode_schedule(name, &value).map_err(|e| corrupt(&key, e))?;
            schedules.push(schedule);
        }
        Ok(schedules)
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
            // A body stays in the journal: sled gets a reference to it (until a
            // checkpoint moves it to a payload file).
            journal::Entry::Put(k, v, at)
                if k.first() == Some(&keys::BODY) && record::is_inline_body(v) =>
            {
                let r = BodyRef {
                    file: BodyFile::Journal(at.segment),
                    offset: at.offset,
                    len: u32::try_from(v.len()).map_err(std::io::Error::other)?,
                    crc: crc32fast::hash(v),
                };
                batch.insert(k, &r.encode()[..]);
            }
            journal::Entry::Put(k, v, _) => batch.insert(k, v),
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
        for item in crate::store::pool::scan_prefix(db, prefix) {
            let (key, _) = item.map_err(io_error)?;
            if let Some(id) = keys::task_id(&key) {
                highest = highest.max(Some(id));
            }
        }
    }
    Ok(highest)
}

/// Checks every body reference against the files: counts the live bytes of each
/// payload file, removes the payload files nothing references (copies a crash left
/// before their references were made durable, files emptied by a compaction whose
/// removal was cut short), and removes the tasks whose body was in a journal record
/// that a power loss took (only in `interval` and `never` modes, where sled may hold a
/// record that was never synced: their publishes were in the window those modes may
/// lose). Returns the number the next payload file gets. Reads only the small `B`
/// records.
fn check_bodies(
    db: &Db,
    bodies: &payload::Bodies,
    extents: &[(u64, u64)],
) -> Result<u64, StoreError> {
    let dir = bodies.payload_dir().to_owned();
    let files = payload::list(&dir).map_err(io_error)?;
    let mut lost = Vec::new();
    for item in crate::store::pool::scan_prefix(db, keys::BODY) {
        let (key, value) = item.map_err(io_error)?;
        let Ok(StoredBody::Ref(r)) = record::decode_stored_body(&value) else {
            continue;
        };
        let end = r.offset + u64::from(r.len);
        match r.file {
            BodyFile::Payload(n) => {
                if files.binary_search_by_key(&n, |(f, _)| *f).is_err() {
                    tracing::error!(key = %keys::hex(&key), file = n, "a task's body is in a payload file that is missing");
                }
                bodies.added(n, u64::from(r.len));
            }
            BodyFile::Journal(segment) => {
                let kept = extents
                    .iter()
                    .any(|&(first, valid)| first == segment && end <= valid);
                if !kept {
                    lost.extend(keys::task_id(&key));
                }
            }
        }
    }
    if !lost.is_empty() {
        tracing::warn!(
            tasks = lost.len(),
            first = lost.first().copied(),
            "tasks whose journal record was never synced (fsync interval or never) lost \
             their bodies in a power loss: removed"
        );
        let mut batch = sled::Batch::default();
        for id in lost {
            batch.remove(&keys::state(id)[..]);
            batch.remove(&keys::body(id)[..]);
            batch.remove(&keys::result(id)[..]);
        }
        db.apply_batch(batch).map_err(io_error)?;
    }
    for &(n, _) in &files {
        if bodies.live(n) == 0 {
            payload::remove(&dir, n).map_err(io_error)?;
            tracing::debug!(file = n, "unreferenced payload file removed");
        }
    }
    Ok(files.last().map_or(0, |(n, _)| n + 1))
}
