//! The Raft log: openraft's `RaftLogStorage` on the store's journal format
//! (`store/journal.rs`, opaque records numbered by their Raft index, in
//! `<data_dir>/raft/log/`), plus the vote and the purge point in `<data_dir>/raft/meta`
//! (replaced whole and synced on every change). An entry on disk is its protobuf
//! encoding (`codec.rs`). What lives in memory is an index of where each entry is
//! (24 bytes an entry), and the most recent entries themselves (at most
//! [`RECENT_ENTRIES`] of them and [`RECENT_BYTES`] of task payloads): replicating an
//! entry to each follower and applying it read it back soon after its append, and
//! from memory that is a reference count, not a read and decode. The state machine
//! is in `state.rs`.
//!
//! Durability: an append returns (and confirms to openraft) only after one
//! `fdatasync` of the whole batch; a truncation is synced before the next append; the
//! vote is synced before `save_vote` returns; the purge point is synced before any
//! segment is deleted. The commit index openraft reports (`save_committed`) is kept
//! in memory only (`heard.rs`), for status and metrics: it is never read back.

use std::collections::{HashMap, VecDeque};
use std::fmt::Debug;
use std::fs::File;
use std::io;
use std::ops::{Bound, RangeBounds};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use openraft::storage::{LogFlushed, LogState, RaftLogReader, RaftLogStorage};
use openraft::{AnyError, ErrorSubject, ErrorVerb, StorageIOError};
use parking_lot::{Mutex, RwLock};
use prost::Message;
use squall_proto::cluster as pb;

use super::codec;
use super::heard::Heard;
use super::timings::Timings;
use super::types::{Entry, LogId, StorageError, TypeConfig, Vote};
use crate::histogram::micros;
use crate::store::journal::{self, Journal, Location};

/// Size of a Raft log segment file (preallocated).
pub const SEGMENT_BYTES: u64 = 32 * 1024 * 1024;

/// Most entries kept in memory after their append.
pub const RECENT_ENTRIES: usize = 4_096;

/// Most task payload bytes (and a small allowance per mutation) of the entries kept
/// in memory.
pub const RECENT_BYTES: usize = 32 * 1024 * 1024;

const META: &str = "meta";

/// The log storage handed to openraft. Cheap to clone (it is one node's log).
#[derive(Clone)]
pub struct LogStore {
    writer: Arc<Mutex<LogWriter>>,
    index: Arc<RwLock<Index>>,
    timings: Arc<Timings>,
    heard: Arc<Heard>,
}

/// The reader handed to replication tasks and the state machine worker.
#[derive(Clone)]
pub struct LogReader {
    index: Arc<RwLock<Index>>,
}

struct LogWriter {
    dir: PathBuf,
    journal: Journal,
    meta: pb::LogMeta,
    timings: Arc<Timings>,
}

/// Where each entry is. `entries[i]` is the entry of index `first + i`.
struct Index {
    dir: PathBuf,
    first: u64,
    entries: VecDeque<(LogId, Location)>,
    purged: Option<LogId>,
    files: HashMap<u64, Arc<File>>,
    /// The last entries appended (a suffix of the log), with their encodings and
    /// sizes.
    recent: VecDeque<(Entry, Bytes, usize)>,
    /// Encodings of entries a follower received, by index, while openraft appends
    /// them (`Encoded::offer`): the log writes these bytes rather than encode again.
    received: HashMap<u64, (LogId, Bytes)>,
    /// What `recent` holds, by [`entry_size`].
    recent_bytes: usize,
}

/// What an entry kept in memory counts against [`RECENT_BYTES`].
fn entry_size(entry: &Entry) -> usize {
    match &entry.payload {
        openraft::EntryPayload::Normal(super::types::Command::Jobs(jobs)) => jobs
            .iter()
            .map(|job| job.payload_bytes() + 64 * job.muts.len())
            .sum(),
        openraft::EntryPayload::Normal(super::types::Command::Received(r)) => {
            r.payload_bytes + 64 * r.mutations
        }
        _ => 64,
    }
}

impl Index {
    /// The index of the first entry held in memory (`next_index` when none is).
    fn recent_first(&self) -> u64 {
        self.next_index() - self.recent.len() as u64
    }

    /// Keeps `entries` (just appended) in memory, forgetting the oldest beyond the
    /// bounds.
    fn remember(&mut self, entries: Vec<Entry>, encoded: Vec<Bytes>) {
        debug_assert_eq!(entries.len(), encoded.len());
        for (entry, bytes) in entries.into_iter().zip(encoded) {
            let size = entry_size(&entry);
            self.recent_bytes += size;
            self.recent.push_back((entry, bytes, size));
        }
        while self.recent.len() > RECENT_ENTRIES
            || (self.recent_bytes > RECENT_BYTES && self.recent.len() > 1)
        {
            let (_, _, size) = self.recent.pop_front().expect("not empty");
            self.recent_bytes -= size;
        }
        debug_assert!(self.recent.len() <= self.entries.len());
        debug_assert!(self
            .recent
            .back()
            .is_none_or(|(e, _, _)| e.log_id.index + 1 == self.next_index()));
    }

    /// Forgets the entries in memory at or after index `from` (truncated).
    fn forget_recent_from(&mut self, from: u64) {
        while self
            .recent
            .back()
            .is_some_and(|(e, _, _)| e.log_id.index >= from)
        {
            let (_, _, size) = self.recent.pop_back().expect("not empty");
            self.recent_bytes -= size;
        }
    }

    /// Forgets the entries in memory up to index `upto` (purged).
    fn forget_recent_upto(&mut self, upto: u64) {
        while self
            .recent
            .front()
            .is_some_and(|(e, _, _)| e.log_id.index <= upto)
        {
            let (_, _, size) = self.recent.pop_front().expect("not empty");
            self.recent_bytes -= size;
        }
    }

    /// The entry of `index` and its encoding if they are held in memory.
    fn recent(&self, index: u64) -> Option<&(Entry, Bytes, usize)> {
        let i = usize::try_from(index.checked_sub(self.recent_first())?).ok()?;
        self.recent.get(i)
    }
}

/// The encodings of this node's log entries, for the cluster port (`net.rs`): the
/// leader sends the bytes it appended instead of encoding each entry again for every
/// follower, and a follower offers the bytes it received to its log for the append.
#[derive(Clone)]
pub struct Encoded {
    index: Arc<RwLock<Index>>,
}

/// Encodings offered to the log; withdrawn when dropped (the append is over, or the
/// request was abandoned), so that the offers never outlive the requests in progress.
pub struct Offered {
    index: Arc<RwLock<Index>>,
    ids: Vec<u64>,
}

impl Encoded {
    /// The encoding of the entry `id` if the log still holds it in memory.
    pub fn get(&self, id: &LogId) -> Option<Bytes> {
        let index = self.index.read();
        let (entry, bytes, _) = index.recent(id.index)?;
        (entry.log_id == *id).then(|| bytes.clone())
    }

    /// The encoded size of the entries from index `from` to `to`, both included, that
    /// the log holds (purged ones count nothing).
    pub fn bytes_between(&self, from: u64, to: u64) -> u64 {
        let index = self.index.read();
        index.held(from, to).map(|(_, at)| at.len).sum()
    }

    /// The index up to which (included) the log should be purged so that the entries it
    /// keeps up to `upto` (the last snapshot's) take at most `keep_bytes`; `None` when
    /// they already do. Entries after `upto` are not counted: they are not purgeable.
    pub fn purge_point(&self, upto: u64, keep_bytes: u64) -> Option<u64> {
        let index = self.index.read();
        let mut kept = 0u64;
        for (id, at) in index.held(0, upto).rev() {
            kept += at.len;
            if kept > keep_bytes {
                return Some(id.index);
            }
        }
        None
    }

    /// Offers the received encodings of entries about to be appended.
    pub fn offer(&self, entries: Vec<(LogId, Bytes)>) -> Offered {
        let mut index = self.index.write();
        let ids = entries.iter().map(|(id, _)| id.index).collect();
        for (id, bytes) in entries {
            index.received.insert(id.index, (id, bytes));
        }
        Offered {
            index: self.index.clone(),
            ids,
        }
    }
}

impl Drop for Offered {
    fn drop(&mut self) {
        let mut index = self.index.write();
        for i in &self.ids {
            index.received.remove(i);
        }
    }
}

impl Index {
    /// The entries the log holds from index `from` to `to`, both included.
    fn held(&self, from: u64, to: u64) -> std::collections::vec_deque::Iter<'_, (LogId, Location)> {
        let first = from.max(self.first);
        let end = to.saturating_add(1).min(self.next_index()).max(first);
        let skip = (first - self.first) as usize;
        let entries = self.entries.range(skip..skip + (end - first) as usize);
        debug_assert!(entries
            .clone()
            .next()
            .is_none_or(|(id, _)| id.index == first));
        entries
    }

    fn last(&self) -> Option<LogId> {
        self.entries.back().map(|(id, _)| *id).or(self.purged)
    }

    fn next_index(&self) -> u64 {
        self.first + self.entries.len() as u64
    }

    fn get(&self, index: u64) -> Option<(LogId, Location)> {
        let i = usize::try_from(index.checked_sub(self.first)?).ok()?;
        self.entries.get(i).copied()
    }

    /// An open handle of segment `first_seq` (opened once, shared by readers).
    fn file(&mut self, segment: u64) -> io::Result<Arc<File>> {
        if let Some(f) = self.files.get(&segment) {
            return Ok(f.clone());
        }
        let f = Arc::new(journal::open_segment(&self.dir, segment)?);
        self.files.insert(segment, f.clone());
        Ok(f)
    }

    /// Forgets open handles of segments at or after `segment` (they were cut or
    /// deleted; a segment of the same name may be created again).
    fn forget_files_from(&mut self, segment: u64) {
        self.files.retain(|&first, _| first < segment);
    }
}

fn io_err(subject: ErrorSubject<u64>, verb: ErrorVerb, e: &io::Error) -> StorageError {
    StorageIOError::new(subject, verb, AnyError::new(e)).into()
}

fn write_logs(e: &io::Error) -> StorageError {
    io_err(ErrorSubject::Logs, ErrorVerb::Write, e)
}

fn write_vote(e: &io::Error) -> StorageError {
    io_err(ErrorSubject::Vote, ErrorVerb::Write, e)
}

fn read_logs(e: &io::Error) -> StorageError {
    io_err(ErrorSubject::Logs, ErrorVerb::Read, e)
}

fn invalid(message: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, message)
}

impl LogStore {
    /// How long this log's appends and their syncs take (shared with the node's state
    /// machine and proposer, which observe theirs into it).
    pub fn timings(&self) -> Arc<Timings> {
        self.timings.clone()
    }

    /// What this node has heard of the cluster (the commit index, which openraft
    /// reports to the log; shared with the cluster port, which records contacts).
    pub fn heard(&self) -> Arc<Heard> {
        self.heard.clone()
    }

    /// The encodings of this log's entries, for the cluster port.
    pub fn encoded(&self) -> Encoded {
        Encoded {
            index: self.index.clone(),
        }
    }

    /// Opens (creating) the log in `dir` (`<data_dir>/raft`): reads the meta file and
    /// indexes every entry after the purge point. An entry that does not decode, or a
    /// gap in the indexes, is an error (the log is not used).
    pub fn open(dir: &Path) -> io::Result<LogStore> {
        LogStore::open_with_segments(dir, SEGMENT_BYTES)
    }

    /// [`LogStore::open`] with segments of `segment_bytes` (tests use small ones so
    /// that purges take whole segments away).
    pub(crate) fn open_with_segments(dir: &Path, segment_bytes: u64) -> io::Result<LogStore> {
        journal::create_dir_synced(dir)?;
        let meta = read_meta(dir)?;
        let floor = meta.purged.map_or(0, |p| p.index + 1);
        let log_dir = dir.join("log");
        let mut entries = VecDeque::new();
        // Without a purge the log starts at its first entry; after one, right after it.
        let mut first = meta.purged.map(|p| p.index + 1);
        let (journal, _) =
            Journal::open_records(&log_dir, segment_bytes, floor, |seq, body, at| {
                let entry = pb::Entry::decode(body)
                    .map_err(|e| invalid(format!("raft log entry {seq} does not decode: {e}")))?;
                let id = codec::log_id_from(entry.log_id.unwrap_or_default());
                let expected = *first.get_or_insert(seq) + entries.len() as u64;
                if id.index != seq || seq != expected {
                    return Err(invalid(format!(
                    "raft log entry numbered {seq} holds index {} where {expected} was expected",
                    id.index
                )));
                }
                entries.push_back((id, at));
                Ok(())
            })?;
        let first = first.unwrap_or(floor);
        debug_assert_eq!(journal.next_seq(), first + entries.len() as u64);
        let index = Index {
            dir: log_dir.clone(),
            first,
            entries,
            purged: meta.purged.map(codec::log_id_from),
            files: HashMap::new(),
            recent: VecDeque::new(),
            recent_bytes: 0,
            received: HashMap::new(),
        };
        tracing::debug!(
            first = index.first,
            entries = index.entries.len(),
            purged = ?index.purged,
            "raft log opened"
        );
        let timings = Arc::new(Timings::default());
        Ok(LogStore {
            writer: Arc::new(Mutex::new(LogWriter {
                dir: dir.to_owned(),
                journal,
                meta,
                timings: timings.clone(),
            })),
            index: Arc::new(RwLock::new(index)),
            timings,
            heard: Arc::new(Heard::default()),
        })
    }

    /// Runs `f` on the writer (appends and syncs block); an error is reported to
    /// openraft through `err`. Only openraft's core calls this, and it awaits the
    /// result before it does anything else (0.9), so when the runtime has another
    /// worker to go on with the rest, `f` runs right here: the hop to a blocking
    /// thread and back cost a cluster 4–13% of its throughput (BENCHMARKS.md, the
    /// cluster's "sixth session"). With a single worker it goes to a
    /// blocking thread, so that the worker goes on with everything else.
    async fn blocking<T: Send + 'static>(
        &self,
        err: fn(&io::Error) -> StorageError,
        f: impl FnOnce(&mut LogWriter, &RwLock<Index>) -> io::Result<T> + Send + 'static,
    ) -> Result<T, StorageError> {
        let writer = self.writer.clone();
        let index = self.index.clone();
        if tokio::runtime::Handle::current().metrics().num_workers() >= 2 {
            return f(&mut writer.lock(), &index).map_err(|e| err(&e));
        }
        match tokio::task::spawn_blocking(move || f(&mut writer.lock(), &index)).await {
            Ok(result) => result.map_err(|e| err(&e)),
            Err(e) => Err(err(&io::Error::other(e.to_string()))),
        }
    }
}

impl LogWriter {
    fn save_meta(&self) -> io::Result<()> {
        let tmp = self.dir.join("meta.tmp");
        std::fs::write(&tmp, self.meta.encode_to_vec())?;
        File::open(&tmp)?.sync_all()?;
        std::fs::rename(&tmp, self.dir.join(META))?;
        journal::sync_dir(&self.dir)
    }

    fn append(&mut self, entries: Vec<Entry>, index: &RwLock<Index>) -> io::Result<()> {
        let start = entries.first().map(|e| e.log_id.index);
        {
            let mut index = index.write();
            let pristine = index.entries.is_empty() && index.purged.is_none();
            if let Some(start) = start.filter(|&s| pristine && s != self.journal.next_seq()) {
                // An empty log never purged begins where its first entry is.
                self.journal.reset(start)?;
                index.first = start;
                index.files.clear();
                index.forget_recent_from(0);
            }
        }
        // The bytes a follower received for these entries, if offered: the same
        // encoding, not made again.
        let offered: Vec<Option<Bytes>> = {
            let index = index.read();
            entries
                .iter()
                .map(|e| match index.received.get(&e.log_id.index) {
                    Some((id, bytes)) if *id == e.log_id => Some(bytes.clone()),
                    _ => None,
                })
                .collect()
        };
        let mut written = Vec::with_capacity(entries.len());
        let mut encoded = Vec::with_capacity(entries.len());
        for (entry, offered) in entries.iter().zip(offered) {
            let seq = self.journal.next_seq();
            if entry.log_id.index != seq {
                return Err(invalid(format!(
                    "raft log append of index {} where {seq} is next",
                    entry.log_id.index
                )));
            }
            let body = offered.unwrap_or_else(|| codec::entry_bytes(entry));
            written.push((entry.log_id, self.journal.append_record(&body, false)?));
            encoded.push(body);
        }
        let synced = Instant::now();
        self.journal.sync()?;
        self.timings
            .log_sync_micros
            .observe(micros(synced.elapsed()));
        let mut index = index.write();
        debug_assert_eq!(
            index.next_index() + written.len() as u64,
            self.journal.next_seq()
        );
        index.entries.extend(written);
        index.remember(entries, encoded);
        Ok(())
    }

    fn truncate(&mut self, from: u64, index: &RwLock<Index>) -> io::Result<()> {
        let Some((_, at)) = index.read().get(from) else {
            return Ok(()); // nothing at or after it
        };
        self.journal.truncate_from(from, at)?;
        let mut index = index.write();
        let keep = (from - index.first) as usize;
        index.forget_recent_from(from);
        index.entries.truncate(keep);
        index.forget_files_from(at.segment);
        Ok(())
    }

    fn purge(&mut self, upto: LogId, index: &RwLock<Index>) -> io::Result<()> {
        self.meta.purged = Some(codec::log_id_to(&upto));
        self.save_meta()?;
        let next = upto.index + 1;
        let (first, last) = {
            let index = index.read();
            (index.first, index.next_index())
        };
        if next <= first {
            // Already gone (purged before, or never held).
        } else if next >= last {
            self.journal.reset(next)?;
            let mut index = index.write();
            index.forget_recent_from(0);
            index.entries.clear();
            index.first = next;
            index.files.clear();
        } else {
            // The index first, so that no reader looks a purged entry up from now on;
            // then the segments go, up to two kept as spares for the next segments
            // (`journal::recycle_below`: a sync into written blocks is cheaper). A
            // reader that looked an entry up just before reads its bytes or sees it
            // purged (`LogReader::read_range`).
            let dir = {
                let mut index = index.write();
                index.forget_recent_upto(upto.index);
                while index.first < next {
                    index.entries.pop_front();
                    index.first += 1;
                }
                let oldest = index.entries.front().map_or(u64::MAX, |(_, at)| at.segment);
                index.files.retain(|&first, _| first >= oldest);
                index.dir.clone()
            };
            journal::recycle_below(&dir, next, self.journal.segment_bytes())?;
        }
        index.write().purged = Some(upto);
        Ok(())
    }
}

fn read_meta(dir: &Path) -> io::Result<pb::LogMeta> {
    match std::fs::read(dir.join(META)) {
        Ok(bytes) => pb::LogMeta::decode(&bytes[..])
            .map_err(|e| invalid(format!("{} does not decode: {e}", dir.join(META).display()))),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(pb::LogMeta::default()),
        Err(e) => Err(e),
    }
}

fn bounds(range: &impl RangeBounds<u64>) -> (u64, Option<u64>) {
    let start = match range.start_bound() {
        Bound::Included(&s) => s,
        Bound::Excluded(&s) => s.saturating_add(1),
        Bound::Unbounded => 0,
    };
    let end = match range.end_bound() {
        Bound::Included(&e) => Some(e.saturating_add(1)),
        Bound::Excluded(&e) => Some(e),
        Bound::Unbounded => None,
    };
    (start, end)
}

impl LogReader {
    fn read_range(&self, range: impl RangeBounds<u64>) -> io::Result<Vec<Entry>> {
        let (start, end) = bounds(&range);
        let mut out = Vec::new();
        // What exists of the range: purged entries are skipped, as openraft expects.
        let mut at = start.max(self.index.read().first);
        loop {
            if end.is_some_and(|e| at >= e) {
                break;
            }
            if let Some((entry, _, _)) = self.index.read().recent(at) {
                out.push(entry.clone());
                at += 1;
                continue;
            }
            let found = {
                let mut index = self.index.write();
                index
                    .get(at)
                    .map(|(id, loc)| (id, loc, index.file(loc.segment)))
            };
            let Some((id, loc, file)) = found else { break };
            let body = match file.and_then(|file| journal::read_record(&file, at, loc)) {
                Ok(body) => body,
                // Purged since it was looked up: its segment may be gone, or recycled
                // and written again (the record's number and checksum then fail).
                Err(_) if at < self.index.read().first => break,
                Err(e) => return Err(e),
            };
            let entry = codec::decode_entry(&Bytes::from(body))
                .map_err(|e| invalid(format!("raft log entry {at}: {e}")))?;
            debug_assert_eq!(entry.log_id, id);
            out.push(entry);
            at += 1;
        }
        Ok(out)
    }
}

impl RaftLogReader<TypeConfig> for LogReader {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + Send>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError> {
        self.read_range(range).map_err(|e| read_logs(&e))
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + Send>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError> {
        self.get_log_reader().await.try_get_log_entries(range).await
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogReader;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError> {
        let index = self.index.read();
        Ok(LogState {
            last_purged_log_id: index.purged,
            last_log_id: index.last(),
        })
    }

    async fn get_log_reader(&mut self) -> LogReader {
        LogReader {
            index: self.index.clone(),
        }
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), StorageError> {
        let vote = codec::vote_to(vote);
        self.blocking(write_vote, move |w, _| {
            let old = w.meta.vote.replace(vote);
            w.save_meta().inspect_err(|_| w.meta.vote = old)
        })
        .await
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, StorageError> {
        let vote = self.writer.lock().meta.vote;
        vote.map(|v| codec::vote_from(Some(v)))
            .transpose()
            .map_err(|e| io_err(ErrorSubject::Vote, ErrorVerb::Read, &invalid(e.to_string())))
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), StorageError>
    where
        I: IntoIterator<Item = Entry> + Send,
        I::IntoIter: Send,
    {
        let entries: Vec<Entry> = entries.into_iter().collect();
        let start = Instant::now();
        let result = self
            .blocking(write_logs, move |w, index| w.append(entries, index))
            .await;
        self.timings
            .log_append_micros
            .observe(micros(start.elapsed()));
        match &result {
            Ok(()) => callback.log_io_completed(Ok(())),
            Err(e) => callback.log_io_completed(Err(io::Error::other(e.to_string()))),
        }
        result
    }

    /// Kept in memory for status and metrics only; `read_committed` keeps openraft's
    /// default (nothing saved), so that a restart applies only what the state machine
    /// says it applied and openraft's own commit since.
    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), StorageError> {
        if let Some(committed) = committed {
            self.heard.committed_upto(committed.index);
        }
        Ok(())
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        self.blocking(write_logs, move |w, index| w.truncate(log_id.index, index))
            .await
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        self.blocking(write_logs, move |w, index| w.purge(log_id, index))
            .await
    }
}
