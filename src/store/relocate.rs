//! Moving live bodies, on the checkpoint thread: out of the journal segments a
//! checkpoint is about to remove, and out of payload files that are mostly dead
//! (compaction), into the newest payload file. Nothing here flushes sled or removes a
//! file: the checkpoint does that after, in that order (`checkpoint.rs`).
//!
//! Architecture Invariant: a body's reference in sled is changed only by a
//! compare-and-swap from the exact reference found to one whose bytes are already
//! synced, so a concurrent removal by the writer (an ack) wins and the copy is just
//! dead bytes; and a file is removed only after a sled flush that holds every swap
//! away from it, so the durable index never points into a removed file.

use std::io;
use std::path::Path;

use super::journal;
use super::keys;
use super::payload::{self, Appender, Bodies};
use super::pool::{self, Db};
use super::record::{self, BodyFile, BodyRef, StoredBody};
use crate::model::TaskId;

/// Payload files compacted per checkpoint at most, so that one checkpoint's work is
/// bounded; the next checkpoint takes the next ones.
const COMPACT_PER_CHECKPOINT: usize = 2;

/// What a pass moved.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Moved {
    pub(crate) bodies: u64,
    pub(crate) bytes: u64,
}

/// The range of task ids whose bodies each journal segment this writer created holds,
/// so that a checkpoint of such segments needs no scan of them. Noted by the writer
/// for every body of a record right after the record is appended, before any
/// checkpoint of its segment is requested; read by the checkpoint thread.
///
/// Architecture Invariant: for a segment numbered at or above `tracked_from` (created
/// by this process's writer, after every record replay found), the range covers every
/// body written into it, and a segment without an entry holds no body. A segment below
/// `tracked_from` (from before a restart, or the one the writer started in) is scanned.
#[derive(Debug)]
pub(crate) struct JournalBodyIds {
    tracked_from: u64,
    ranges: std::collections::BTreeMap<u64, (TaskId, TaskId)>,
}

impl Default for JournalBodyIds {
    fn default() -> Self {
        JournalBodyIds {
            // Nothing is tracked until a writer starts.
            tracked_from: u64::MAX,
            ranges: std::collections::BTreeMap::new(),
        }
    }
}

impl JournalBodyIds {
    /// A writer starts: segments from `next_seq` on are its own.
    pub(crate) fn start(&mut self, next_seq: u64) {
        debug_assert!(self.ranges.is_empty(), "one writer a store");
        self.tracked_from = next_seq;
        self.ranges.clear();
    }

    /// A body of task `id` was written into segment `segment`.
    pub(crate) fn note(&mut self, segment: u64, id: TaskId) {
        let range = self.ranges.entry(segment).or_insert((id, id));
        *range = (range.0.min(id), range.1.max(id));
        debug_assert!(range.0 <= range.1);
    }

    /// For a checkpoint of the segments numbered `segments` (those below its floor):
    /// `Some` with the range of ids their bodies belong to (`None` inside: no body)
    /// when every one is tracked; `None` when one must be scanned.
    #[allow(clippy::option_option)]
    pub(crate) fn range_of(&self, segments: &[u64]) -> Option<Option<(TaskId, TaskId)>> {
        if segments.iter().any(|&n| n < self.tracked_from) {
            return None;
        }
        Some(segments.iter().filter_map(|n| self.ranges.get(n)).fold(
            None,
            |acc: Option<(TaskId, TaskId)>, &(lo, hi)| {
                Some(acc.map_or((lo, hi), |(a, b)| (a.min(lo), b.max(hi))))
            },
        ))
    }

    /// The segments below `floor` are gone.
    pub(crate) fn forget_below(&mut self, floor: u64) {
        self.ranges = self.ranges.split_off(&floor);
    }
}

/// One planned move: the reference found and the synced copy.
struct Move {
    id: TaskId,
    from: BodyRef,
    to: BodyRef,
}

/// Copies every body that sled still points at in a journal segment starting below
/// `floor` into payload files and swaps the references.
///
/// Most bodies there are dead by then (acked before the checkpoint), so the segments
/// are not asked about body by body (a sled lookup per body was 5.4% of a saturated
/// broker's instructions, nearly all of them misses): the range of task ids whose
/// bodies they hold comes from the writer's notes ([`JournalBodyIds`]), or from a scan
/// of them for a segment it did not write, and sled's live body references in that
/// range are read in one ordered pass. A reference into one of these segments is to a body
/// written there (a body record names its task), so the pass finds every one a lookup
/// per body would; the bytes are read where the reference says and checked against
/// its checksum. One that cannot be read is left (a lookup per body left it too:
/// the scan found no record there) and said so.
pub(crate) fn journal_bodies(
    db: &Db,
    bodies: &Bodies,
    appender: &mut Appender,
    journal_dir: &Path,
    floor: u64,
    tracked: &parking_lot::Mutex<JournalBodyIds>,
) -> io::Result<Moved> {
    let segments: Vec<u64> = journal::list(journal_dir)?
        .into_iter()
        .map(|(n, _)| n)
        .filter(|&n| n < floor)
        .collect();
    let known = tracked.lock().range_of(&segments);
    let ids = match known {
        Some(ids) => ids,
        None => {
            let mut ids: Option<(TaskId, TaskId)> = None;
            journal::scan_below(journal_dir, floor, |key, value, _| {
                if key.first() != Some(&keys::BODY) || !record::is_inline_body(value) {
                    return Ok(());
                }
                if let Some(id) = keys::task_id(key) {
                    ids = Some(ids.map_or((id, id), |(lo, hi)| (lo.min(id), hi.max(id))));
                }
                Ok(())
            })?;
            ids
        }
    };
    let Some((lo, hi)) = ids else {
        return Ok(Moved::default());
    };
    debug_assert!(lo <= hi);
    let mut moves = Vec::new();
    let end = hi
        .checked_add(1)
        .map_or_else(|| vec![keys::BODY + 1], |e| keys::body(e).to_vec());
    for item in pool::scan(db, &keys::body(lo), end) {
        let (key, value) = item?;
        let Some(id) = keys::task_id(&key) else {
            continue;
        };
        debug_assert!((lo..=hi).contains(&id));
        let Ok(StoredBody::Ref(from)) = record::decode_stored_body(&value) else {
            // Inline bodies (older data directories) stay where they are; a corrupt
            // reference is reported when it is read.
            continue;
        };
        if !matches!(from.file, BodyFile::Journal(segment) if segment < floor) {
            continue;
        }
        let body = match bodies.read(&from) {
            Ok(body) => body,
            Err(error) => {
                tracing::warn!(%error, id, "a body referenced in a journal segment being checkpointed could not be read there; left as it is");
                continue;
            }
        };
        let to = appender.append(id, &body)?;
        debug_assert_eq!(to.crc, from.crc, "the journal holds the body it was given");
        moves.push(Move { id, from, to });
    }
    swap(db, bodies, appender, moves)
}

/// Compacts up to [`COMPACT_PER_CHECKPOINT`] closed payload files less than half
/// live: copies their live bodies on and swaps the references. Returns the files
/// emptied (to be removed after the checkpoint's flush) and what was moved.
pub(crate) fn compact(
    db: &Db,
    bodies: &Bodies,
    appender: &mut Appender,
) -> io::Result<(Vec<u64>, Moved)> {
    let dir = bodies.payload_dir().to_owned();
    let current = appender.current();
    let due: Vec<u64> = payload::list(&dir)?
        .into_iter()
        .filter(|&(n, size)| Some(n) != current && bodies.live(n).saturating_mul(2) < size)
        .map(|(n, _)| n)
        .take(COMPACT_PER_CHECKPOINT)
        .collect();
    let mut total = Moved::default();
    for &n in &due {
        let mut moves = Vec::new();
        payload::scan(&dir, n, |id, from, body| {
            if referenced(db, id)? == Some(from) {
                let to = appender.append(id, body)?;
                moves.push(Move { id, from, to });
            }
            Ok(())
        })?;
        let moved = swap(db, bodies, appender, moves)?;
        total.bodies += moved.bodies;
        total.bytes += moved.bytes;
        tracing::debug!(
            file = n,
            bodies = moved.bodies,
            bytes = moved.bytes,
            "payload file compacted"
        );
    }
    Ok((due, total))
}

/// The body reference task `id` holds now, if any.
fn referenced(db: &Db, id: TaskId) -> io::Result<Option<BodyRef>> {
    let Some(value) = db.get(keys::body(id))? else {
        return Ok(None);
    };
    Ok(match record::decode_stored_body(&value) {
        Ok(StoredBody::Ref(r)) => Some(r),
        // Inline bodies (older data directories) stay where they are; a corrupt
        // reference is reported when it is read.
        _ => None,
    })
}

/// Syncs the copies, then swaps each reference that still points where it was found.
fn swap(db: &Db, bodies: &Bodies, appender: &mut Appender, moves: Vec<Move>) -> io::Result<Moved> {
    if moves.is_empty() {
        return Ok(Moved::default());
    }
    appender.sync()?;
    let mut moved = Moved::default();
    for m in moves {
        let key = keys::body(m.id);
        let swapped = db.compare_and_swap(key, Some(m.from.encode()), Some(m.to.encode()))?;
        if swapped.is_err() {
            continue; // removed (acked, purged) meanwhile: the copy is dead bytes
        }
        let len = u64::from(m.to.len);
        if let BodyFile::Payload(n) = m.to.file {
            bodies.added(n, len);
        }
        if let BodyFile::Payload(n) = m.from.file {
            bodies.freed(n, len);
        }
        moved.bodies += 1;
        moved.bytes += len;
    }
    Ok(moved)
}
