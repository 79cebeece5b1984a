//! Snapshot files of the queue state (issue 15): `<data_dir>/raft/snapshot` is a
//! header (`b"SQSNAP02"`, a u32 LE length, the `MachineState` protobuf: the applied
//! log id, the membership and the snapshot's id) followed by a dump of the whole store
//! (`store/snapshot.rs`) taken at exactly that applied id. Here live the header, the
//! builder (a dump exported by the store's writer thread into a temporary file, synced
//! and renamed), the counters the metrics show, the check of a received file, and
//! the task that asks openraft for a snapshot when enough log was applied since the
//! last one ([`trigger`], [`due`]: as much log as the snapshot once it is large).
//! What the state machine does with a snapshot (install, resume an interrupted one) is
//! `state.rs`.

use std::fs::File;
use std::io::{self, Read, Seek, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;

use openraft::storage::{RaftSnapshotBuilder, Snapshot};
use openraft::{AnyError, ErrorSubject, ErrorVerb, SnapshotMeta, StorageIOError};
use tokio::sync::oneshot;

use super::types::{Member, NodeId, StorageError, TypeConfig};
use crate::store::{DumpStats, StoreError};

const MAGIC: &[u8; 8] = b"SQSNAP02";
/// The header is a membership and a log id: far below this.
const MAX_HEADER: u32 = 16 * 1024 * 1024;

/// The current snapshot, in the raft directory.
pub(super) const SNAPSHOT: &str = "snapshot";
/// A snapshot being received from the leader.
pub(super) const RECEIVING: &str = "snapshot.recv";
/// Prefix of a snapshot being built (its name ends with the snapshot's id).
const BUILDING: &str = "snapshot.build";

/// Snapshots this node built and installed since it started (for `/metrics`).
#[derive(Debug, Default)]
pub struct SnapshotCounters {
    /// Snapshots built from this node's store.
    pub built: AtomicU64,
    /// Snapshots received from a leader and installed into this node's store.
    pub installed: AtomicU64,
    /// Bytes of this node's current snapshot file (built, installed, or found at
    /// start; 0 without one): what the next snapshot's dump will cost, about.
    pub bytes: AtomicU64,
}

pub(super) fn snap_err(verb: ErrorVerb, e: &io::Error) -> StorageError {
    StorageIOError::new(ErrorSubject::Snapshot(None), verb, AnyError::new(e)).into()
}

fn invalid(message: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, message)
}

/// Writes the header (`state` is the encoded `MachineState`).
pub(super) fn write_header(out: &mut impl Write, state: &[u8]) -> io::Result<()> {
    let len = u32::try_from(state.len())
        .ok()
        .filter(|&l| l <= MAX_HEADER)
        .ok_or_else(|| invalid(format!("a snapshot header of {} bytes", state.len())))?;
    out.write_all(MAGIC)?;
    out.write_all(&len.to_le_bytes())?;
    out.write_all(state)
}

/// Reads the header from the start of `file`, leaving it positioned at the dump;
/// returns the encoded `MachineState`.
pub(super) fn read_header(file: &mut File, what: &Path) -> io::Result<Vec<u8>> {
    file.seek(io::SeekFrom::Start(0))?;
    let mut head = [0u8; 12];
    file.read_exact(&mut head)
        .map_err(|e| invalid(format!("{}: no snapshot header ({e})", what.display())))?;
    if &head[..8] != MAGIC {
        return Err(invalid(format!("{} is not a snapshot", what.display())));
    }
    let len = u32::from_le_bytes(head[8..].try_into().expect("4 bytes"));
    if len > MAX_HEADER {
        return Err(invalid(format!(
            "{}: a snapshot header of {len} bytes",
            what.display()
        )));
    }
    let mut state = vec![0u8; len as usize];
    file.read_exact(&mut state)?;
    Ok(state)
}

/// Removes snapshots left half-built by an earlier run.
pub(super) fn remove_leftovers(dir: &Path) -> io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        if entry.file_name().to_string_lossy().starts_with(BUILDING) {
            std::fs::remove_file(entry.path())?;
        }
    }
    Ok(())
}

/// Replaces `dir/name` with the synced file `from`, durably.
pub(super) fn install_file(from: &Path, dir: &Path, name: &str) -> io::Result<()> {
    std::fs::rename(from, dir.join(name))?;
    crate::store::journal::sync_dir(dir)
}

/// Makes the snapshot `f` (checked) the current one, durably. openraft hands over
/// the file `begin_receiving_snapshot` gave it (`received`, then renamed), or another
/// one (then copied, a buffer at a time).
pub(super) fn keep_as_current(mut f: File, received: &Path, dir: &Path) -> io::Result<()> {
    use std::os::unix::fs::MetadataExt;
    let ours = std::fs::metadata(received).ok();
    let theirs = f.metadata()?;
    let same = ours.is_some_and(|m| m.dev() == theirs.dev() && m.ino() == theirs.ino());
    if !same {
        f.seek(io::SeekFrom::Start(0))?;
        let mut copy = File::create(received)?;
        io::copy(&mut f, &mut copy)?;
        f = copy;
    }
    f.sync_all()?;
    drop(f);
    install_file(received, dir, SNAPSHOT)
}

type Dumped = oneshot::Receiver<Result<(File, DumpStats), StoreError>>;

/// Builds a snapshot whose dump the store's writer was asked for when the builder was
/// taken (so it holds exactly the state at `meta.last_log_id`).
pub struct SnapshotBuilder {
    pub(super) dir: PathBuf,
    pub(super) meta: SnapshotMeta<NodeId, Member>,
    /// The temporary file and the writer's answer, or why the build could not start.
    pub(super) started: Result<(PathBuf, Dumped), Arc<io::Error>>,
    pub(super) counters: Arc<SnapshotCounters>,
    /// The state machine's lock on replacing the current snapshot file.
    pub(super) replacing: Arc<parking_lot::Mutex<()>>,
}

/// Creates the temporary file of a snapshot and writes its header; the dump follows.
pub(super) fn start_file(dir: &Path, id: &str, state: &[u8]) -> io::Result<(PathBuf, File)> {
    let path = dir.join(format!("{BUILDING}-{id}"));
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&path)?;
    write_header(&mut file, state)?;
    Ok((path, file))
}

/// What a finished build leaves as the current snapshot: its own file (and its size),
/// or a newer one installed meanwhile (and what its header says).
enum Current {
    Ours(File, u64),
    Newer(File, SnapshotMeta<NodeId, Member>),
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError> {
        let started = std::mem::replace(
            &mut self.started,
            Err(Arc::new(io::Error::other("this builder was used already"))),
        );
        let (path, dumped) =
            started.map_err(|e| snap_err(ErrorVerb::Write, &io::Error::other(e.to_string())))?;
        let fail = |e: io::Error| {
            let _ = std::fs::remove_file(&path);
            snap_err(ErrorVerb::Write, &e)
        };
        let (file, stats) = match dumped.await {
            Ok(Ok(done)) => done,
            Ok(Err(e)) => return Err(fail(io::Error::other(e.to_string()))),
            Err(_) => return Err(fail(io::Error::other("the store writer has shut down"))),
        };
        let dir = self.dir.clone();
        let from = path.clone();
        let replacing = self.replacing.clone();
        let ours = self.meta.last_log_id;
        // openraft builds beside the state machine: a snapshot installed from the
        // leader meanwhile is newer than this one, and stays the current one. Either
        // way the file answered is opened under the lock, so it is the one decided on.
        let current = tokio::task::spawn_blocking(move || {
            file.sync_all()?;
            drop(file);
            let _replacing = replacing.lock();
            if let Some((file, meta)) =
                super::state::read_current(&dir)?.filter(|(_, meta)| meta.last_log_id > ours)
            {
                std::fs::remove_file(&from)?;
                return Ok(Current::Newer(file, meta));
            }
            install_file(&from, &dir, SNAPSHOT)?;
            let file = File::open(dir.join(SNAPSHOT))?;
            let size = file.metadata()?.len();
            Ok(Current::Ours(file, size))
        })
        .await
        .map_err(|e| io::Error::other(e.to_string()))
        .and_then(|r| r)
        .map_err(fail)?;
        let (file, size) = match current {
            Current::Ours(file, size) => (file, size),
            Current::Newer(file, meta) => {
                tracing::info!(
                    built = ?self.meta.last_log_id,
                    current = ?meta.last_log_id,
                    "raft snapshot built after a newer one was installed: the newer one stays"
                );
                return Ok(Snapshot {
                    meta,
                    snapshot: Box::new(tokio::fs::File::from_std(file)),
                });
            }
        };
        self.counters.bytes.store(size, Relaxed);
        self.counters.built.fetch_add(1, Relaxed);
        tracing::info!(
            snapshot = %self.meta.snapshot_id,
            applied = ?self.meta.last_log_id,
            records = stats.records,
            bytes = stats.bytes,
            "raft snapshot built"
        );
        Ok(Snapshot {
            meta: self.meta.clone(),
            snapshot: Box::new(tokio::fs::File::from_std(file)),
        })
    }
}

/// When a member snapshots: once `logs` entries or `bytes` of Raft log were applied
/// since its last snapshot, whichever comes first; but a member whose last snapshot is
/// larger than `bytes` waits until the log since it is at least as large as the
/// snapshot ([`due`]).
#[derive(Debug, Clone, Copy)]
pub struct Policy {
    /// Entries applied since the last snapshot.
    pub logs: u64,
    /// Encoded bytes of the entries applied since the last snapshot.
    pub bytes: u64,
    /// Most encoded bytes of log kept behind the last snapshot (openraft's
    /// `max_in_snapshot_log_to_keep` counts entries, which can be large): the trigger
    /// purges further when they are more.
    pub kept_bytes: u64,
}

/// Whether a snapshot is due with `entries` entries of `log_bytes` encoded bytes
/// applied since the last snapshot, which is `snapshot_bytes` large (0: none). A
/// snapshot is a dump of the whole store, during which the member's store takes no
/// change (on the leader, nothing is confirmed): so once the snapshot outgrows
/// `policy.bytes`, the next waits until the log since it holds as many bytes as it,
/// and the time spent dumping stays a bounded share of the time spent writing that log
/// (the rule of Redis's AOF rewrite, `auto-aof-rewrite-percentage 100`), instead of a
/// pause of seconds every `policy.bytes` of log once the store holds gigabytes. The
/// disk holds at most about the snapshot's size again in log.
pub(super) fn due(policy: &Policy, entries: u64, log_bytes: u64, snapshot_bytes: u64) -> bool {
    debug_assert!(policy.logs > 0 && policy.bytes > 0);
    let outgrown = snapshot_bytes > policy.bytes;
    if outgrown && log_bytes < snapshot_bytes {
        return false;
    }
    let due = entries >= policy.logs || log_bytes >= policy.bytes;
    debug_assert!(!due || !outgrown || log_bytes >= snapshot_bytes);
    due
}

/// How often the trigger looks at the log.
const TRIGGER_EVERY: std::time::Duration = std::time::Duration::from_millis(500);

/// A snapshot asked for and not yet seen is asked for again after this long (openraft
/// ignores a request while it builds one).
const TRIGGER_RETRY: std::time::Duration = std::time::Duration::from_secs(30);

/// Asks openraft for a snapshot whenever `policy` says so, until `stop` (openraft's own
/// policy counts entries only; an entry carries one job at low load and hundreds
/// under load, so a count alone either snapshots a quiet cluster every few seconds,
/// each a dump of the whole store, or lets the log grow to gigabytes under load).
pub(super) async fn trigger(
    raft: super::types::Raft,
    log: super::log::Encoded,
    policy: Policy,
    counters: Arc<SnapshotCounters>,
    stop: tokio_util::sync::CancellationToken,
) {
    debug_assert!(policy.logs > 0 && policy.bytes > 0);
    let mut asked: Option<(Option<u64>, std::time::Instant)> = None;
    let mut purge_asked = 0u64;
    // The log's bytes from the entry after the last snapshot up to an applied entry,
    // as counted last time: applied entries never change, so each look adds only the
    // entries applied since (a large snapshot may wait for millions of entries).
    let mut counted: Option<(u64, u64, u64)> = None;
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(TRIGGER_EVERY) => {}
        }
        let (applied, last) = {
            let metrics = raft.metrics();
            let m = metrics.borrow();
            (
                m.last_applied.map(|id| id.index),
                m.snapshot.map(|id| id.index),
            )
        };
        if let Some(upto) = last.and_then(|s| log.purge_point(s, policy.kept_bytes)) {
            // openraft purges once no replication still reads those entries.
            if upto > purge_asked {
                tracing::debug!(upto, "purging the log behind the snapshot by size");
                if raft.trigger().purge_log(upto).await.is_err() {
                    return; // the Raft node stopped
                }
                purge_asked = upto;
            }
        }
        let Some(applied) = applied else { continue };
        if asked.is_some_and(|(at, when)| at == last && when.elapsed() < TRIGGER_RETRY) {
            continue; // being built
        }
        let since = last.map_or(0, |s| s + 1);
        let entries = (applied + 1).saturating_sub(since);
        let log_bytes = match counted {
            Some((from, upto, bytes)) if from == since && upto <= applied => {
                bytes + log.bytes_between(upto + 1, applied)
            }
            _ => log.bytes_between(since, applied),
        };
        debug_assert!(counted.is_none_or(|(from, _, b)| from != since || log_bytes >= b));
        counted = Some((since, applied, log_bytes));
        if due(&policy, entries, log_bytes, counters.bytes.load(Relaxed)) {
            tracing::debug!(entries, log_bytes, applied, "asking for a snapshot");
            if raft.trigger().snapshot().await.is_err() {
                return; // the Raft node stopped
            }
            asked = Some((last, std::time::Instant::now()));
        }
    }
}
