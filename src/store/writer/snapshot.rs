//! The writer thread's side of the cluster's snapshots (format and API:
//! `store/snapshot.rs`). Both jobs run between two groups, so that a dump is exactly
//! the state every earlier job left and an import races no job.
//!
//! Export first applies the task table to sled (`WriterLoop::settle_tasks`), then
//! reads sled (the writer's handle sees every applied batch) key by key and resolves
//! each body reference to the body's bytes. Import replaces the content as
//! ordinary journaled groups: first the removal of every key, then the dump's
//! records, bodies written into the journal record exactly as a publish writes them
//! (so a checkpoint later moves the survivors into payload files), then the applied
//! log id; it ends with a journal sync, so the new content is durable when the reply
//! is sent. Memory: one group of at most [`IMPORT_GROUP_BYTES`] (or one body, if
//! larger) and [`IMPORT_GROUP_WRITES`] writes.

use std::fs::File;
use std::io::{self, BufReader, BufWriter};
use std::ops::Bound;
use std::sync::atomic::Ordering::Relaxed;

use sled::InlineArray;

use super::{Completion, Staged, StagedBody, WriterLoop};
use crate::store::record::{self, BodyFile, BodyRef, StoredBody};
use crate::store::snapshot::{self, DumpReader, DumpStats, DumpWriter, SnapshotJob};
use crate::store::{io_error, keys, StoreError};

/// Bytes of one import group (journal record) before it is committed.
const IMPORT_GROUP_BYTES: usize = 4 * 1024 * 1024;
/// Writes of one import group.
const IMPORT_GROUP_WRITES: usize = 4096;

/// Attempts to read a body whose file a checkpoint may be moving it out of.
const BODY_READ_ATTEMPTS: usize = 4;

impl<C: Completion> WriterLoop<C> {
    /// Runs a snapshot job and replies.
    pub(super) fn snapshot_job(&mut self, job: SnapshotJob) {
        match job {
            SnapshotJob::Export { out, reply } => {
                let started = std::time::Instant::now();
                let result = self.export(out).map_err(io_error);
                if let Ok((_, stats)) = &result {
                    tracing::info!(
                        records = stats.records,
                        bytes = stats.bytes,
                        took_ms = started.elapsed().as_millis() as u64,
                        "store exported for a snapshot"
                    );
                }
                reply(result);
            }
            SnapshotJob::Import {
                input,
                applied,
                reply,
            } => {
                let started = std::time::Instant::now();
                let result = self.import(input, applied);
                match &result {
                    Ok(stats) => tracing::info!(
                        records = stats.records,
                        bytes = stats.bytes,
                        took_ms = started.elapsed().as_millis() as u64,
                        "store content replaced by a snapshot"
                    ),
                    Err(error) => tracing::error!(%error, "snapshot import failed"),
                }
                reply(result);
            }
        }
    }

    fn export(&mut self, out: File) -> io::Result<(File, DumpStats)> {
        // The journal is synced first: groups completed unsynced (committed Raft
        // entries) are then durable here before the Raft log is purged behind the
        // snapshot. Every task record still in memory reaches sled first.
        self.sync_journal().map_err(io::Error::other)?;
        self.settle_tasks().map_err(io::Error::other)?;
        let mut dump = DumpWriter::new(BufWriter::with_capacity(1 << 16, out))?;
        for item in self.db.iter() {
            let (key, value) = item?;
            if !snapshot::dumped(&key) {
                continue;
            }
            if key.first() == Some(&keys::BODY) {
                let body = self.body_bytes(&key, value)?;
                dump.record(&key, &body)?;
            } else {
                dump.record(&key, &value)?;
            }
        }
        let (out, stats) = dump.finish()?;
        let out = out.into_inner().map_err(|e| e.into_error())?;
        Ok((out, stats))
    }

    /// The body record a `B` value stands for. A checkpoint may move the body and
    /// delete its file between the read of the reference and the file's: then the
    /// reference is read again.
    fn body_bytes(&self, key: &[u8], mut value: InlineArray) -> io::Result<Vec<u8>> {
        let bad = |e: record::DecodeError| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{}: {}", keys::hex(key), e.0),
            )
        };
        for _ in 0..BODY_READ_ATTEMPTS {
            let r = match record::decode_stored_body(&value).map_err(bad)? {
                StoredBody::Inline(bytes) => return Ok(bytes.to_vec()),
                StoredBody::Ref(r) => r,
            };
            match self.store.bodies.read(&r) {
                Err(e) if e.kind() == io::ErrorKind::NotFound => match self.db.get(key)? {
                    Some(again) => value = again,
                    None => return Err(e),
                },
                other => return other,
            }
        }
        Err(io::Error::other(format!(
            "the body of {} kept moving while it was read",
            keys::hex(key)
        )))
    }

    fn import(
        &mut self,
        input: File,
        applied: Option<(u64, u64, u64)>,
    ) -> Result<DumpStats, StoreError> {
        let mut group = ImportGroup::default();
        // The producer records loaded are the old content's.
        self.forget_producers();
        // The task table empties into sled: from here the import reads and writes
        // sled alone.
        self.settle_tasks()?;
        // 1. Remove every key (but the journal floor, which is this store's own).
        let mut after: Option<InlineArray> = None;
        loop {
            let start = match &after {
                Some(k) => Bound::Excluded(k.clone()),
                None => Bound::Unbounded,
            };
            let mut chunk = Vec::with_capacity(IMPORT_GROUP_WRITES);
            for item in self
                .db
                .range::<InlineArray, _>((start, Bound::Unbounded))
                .take(IMPORT_GROUP_WRITES)
            {
                chunk.push(item.map_err(io_error)?);
            }
            let Some((last, _)) = chunk.last() else { break };
            after = Some(last.clone());
            for (key, value) in chunk {
                if !snapshot::dumped(&key) {
                    continue;
                }
                if key.first() == Some(&keys::BODY) {
                    self.note_body_removal(&key, &value);
                }
                self.import_write(&mut group, key, None)?;
            }
        }
        // Removals and insertions of a body reference never share a group: the
        // insertion of a body's reference is skipped when its batch removes the key.
        self.import_commit(&mut group)?;
        // 2. The dump's records.
        let mut reader =
            DumpReader::new(BufReader::with_capacity(1 << 16, input)).map_err(io_error)?;
        let (mut key, mut value) = (Vec::new(), Vec::new());
        let mut watermark = None;
        while reader
            .next_into(&mut key, &mut value)
            .map_err(io_error)?
            .is_some()
        {
            if !snapshot::dumped(&key) || key == keys::RAFT_APPLIED {
                continue;
            }
            if key == keys::WATERMARK {
                watermark = <[u8; 8]>::try_from(&value[..]).ok().map(u64::from_be_bytes);
            }
            if key.first() == Some(&keys::BODY) {
                self.import_body(&mut group, &key, &value)?;
            } else {
                let v = InlineArray::from(&value[..]);
                self.import_write(&mut group, InlineArray::from(&key[..]), Some(v))?;
            }
        }
        // 3. The applied log id, then everything made durable.
        if let Some((term, node, index)) = applied {
            let mut id = [0u8; 24];
            id[..8].copy_from_slice(&term.to_be_bytes());
            id[8..16].copy_from_slice(&node.to_be_bytes());
            id[16..].copy_from_slice(&index.to_be_bytes());
            let key = InlineArray::from(keys::RAFT_APPLIED);
            self.import_write(&mut group, key, Some(InlineArray::from(&id[..])))?;
        }
        self.import_commit(&mut group)?;
        self.sync_journal()?;
        // The snapshot's allocator is the cluster's (its history includes this store's).
        let watermark = watermark.unwrap_or(0);
        self.store.watermark.store(watermark, Relaxed);
        self.store.next_id.fetch_max(watermark, Relaxed);
        // The imported ids were written to sled directly: the task table applies
        // the body references the import left it and counts no imported id as fresh.
        self.settle_tasks()?;
        self.store.policies.write().reload(&self.db)?;
        Ok(reader.stats())
    }

    /// A body reference is removed: its payload file's live bytes drop (at once: an
    /// import that fails half-way leaves them low, which only makes a compaction
    /// come sooner), and the cache of recent bodies forgets it.
    fn note_body_removal(&mut self, key: &[u8], value: &[u8]) {
        if let Ok(StoredBody::Ref(BodyRef {
            file: BodyFile::Payload(n),
            len,
            ..
        })) = record::decode_stored_body(value)
        {
            self.store.bodies.freed(n, u64::from(len));
        }
        if let Some(id) = keys::task_id(key) {
            self.removed_bodies.push(id);
        }
    }

    fn import_write(
        &mut self,
        group: &mut ImportGroup,
        key: InlineArray,
        value: Option<InlineArray>,
    ) -> Result<(), StoreError> {
        self.begin_import_group(group);
        self.journal.put(&key, value.as_deref());
        group.bytes += key.len() + value.as_ref().map_or(0, |v| v.len());
        match value {
            Some(value) => group.staged.batch.insert(key, value),
            None => group.staged.batch.remove(key),
        }
        group.staged.writes += 1;
        self.import_commit_if_full(group)
    }

    /// A body goes into the journal record; sled gets its reference once the record
    /// is appended (as a publish's body does).
    fn import_body(
        &mut self,
        group: &mut ImportGroup,
        key: &[u8],
        body: &[u8],
    ) -> Result<(), StoreError> {
        let id = keys::task_id(key).ok_or_else(|| {
            crate::store::corrupt_reason(key, "a body key of the dump is not 'B' + 8-byte id")
        })?;
        let len = u32::try_from(body.len())
            .map_err(|_| crate::store::corrupt_reason(key, "a body of the dump is over 4 GiB"))?;
        self.begin_import_group(group);
        let at = self.journal.put(key, Some(body));
        group.staged.bodies.push(StagedBody {
            id,
            // Only for the body cache: not copied while it is off (a follower's).
            bytes: if self.store.recent_bodies.enabled() {
                bytes::Bytes::copy_from_slice(body)
            } else {
                bytes::Bytes::new()
            },
            at,
            len,
            crc: crc32fast::hash(body),
        });
        group.staged.writes += 1;
        group.bytes += key.len() + body.len();
        self.import_commit_if_full(group)
    }

    fn begin_import_group(&mut self, group: &mut ImportGroup) {
        if !group.open {
            self.journal.begin();
            group.open = true;
        }
    }

    fn import_commit_if_full(&mut self, group: &mut ImportGroup) -> Result<(), StoreError> {
        if group.bytes >= IMPORT_GROUP_BYTES || group.staged.writes >= IMPORT_GROUP_WRITES {
            self.import_commit(group)?;
        }
        Ok(())
    }

    /// Journals and applies the group (unsynced: the import syncs once at its end).
    fn import_commit(&mut self, group: &mut ImportGroup) -> Result<(), StoreError> {
        if !group.open {
            return Ok(());
        }
        let staged = std::mem::take(&mut group.staged);
        *group = ImportGroup::default();
        debug_assert!(self.group.is_empty(), "an import runs between groups");
        let result = self.apply(staged);
        self.removed_bodies.clear();
        result
    }
}

/// The import group being built.
#[derive(Default)]
struct ImportGroup {
    staged: Staged,
    bytes: usize,
    /// Whether a journal record was begun for it.
    open: bool,
}
