//! Where task bodies live, and reading them back. sled holds only a body reference
//! (`record::BodyRef`) per task; the bytes are in a journal segment (a body written
//! since the last checkpoint) or in a payload file under `<data>/payload/` (a body a
//! checkpoint moved out of a segment it removed). Payload files are append-only, are
//! written only by the checkpoint thread ([`Appender`]) and removed by it once their
//! live bodies have been moved on (compaction, `relocate.rs`). What is live is decided
//! by sled alone: a body is live while its task's `B` record points at it.
//!
//! Payload file format: `{n:016x}.dat`, a sequence of entries
//! `id u64 LE | len u32 LE | crc32 u32 LE (of the body) | body (len bytes)`. A file
//! is never appended to after a restart (a torn tail stays unreferenced), so a scan
//! stops at the first entry that does not fit. Reads take `len` bytes at the
//! reference's offset and check the reference's checksum: memory per read is one
//! body, and nothing is cached but open file handles.

use std::collections::{BTreeMap, HashMap};
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use parking_lot::Mutex;

use super::journal;
use super::record::{BodyFile, BodyRef};
use crate::model::TaskId;

/// Name of the payload directory inside the data directory.
pub(crate) const PAYLOAD_DIR: &str = "payload";
/// Extension of payload files.
const EXT: &str = "dat";
/// Bytes of an entry header: id, length, checksum.
const ENTRY_HEADER: u64 = 16;
/// Bytes read at a time by [`Bodies::read_ranges`].
const READ_PIECE: usize = 64 * 1024;
/// Open file handles kept for reads. Past it, handles are dropped and reopened.
const MAX_OPEN_FILES: usize = 64;

/// Body files as readers and the writer see them; shared through the store.
pub(crate) struct Bodies {
    journal_dir: PathBuf,
    payload_dir: PathBuf,
    /// Open handles for reads.
    open: Mutex<HashMap<BodyFile, Arc<File>>>,
    /// Live bytes per payload file, as far as this process knows: counted at open
    /// from sled's references, raised when a checkpoint moves bodies in, lowered when
    /// the writer removes a reference. Only decides when a file is worth compacting;
    /// what is moved or removed is decided by sled's references.
    live: Mutex<BTreeMap<u64, u64>>,
}

impl Bodies {
    pub(crate) fn new(journal_dir: PathBuf, payload_dir: PathBuf) -> Bodies {
        Bodies {
            journal_dir,
            payload_dir,
            open: Mutex::new(HashMap::new()),
            live: Mutex::new(BTreeMap::new()),
        }
    }

    pub(crate) fn payload_dir(&self) -> &Path {
        &self.payload_dir
    }

    fn path(&self, file: BodyFile) -> PathBuf {
        match file {
            BodyFile::Journal(first_seq) => journal::segment_file(&self.journal_dir, first_seq),
            BodyFile::Payload(n) => payload_path(&self.payload_dir, n),
        }
    }

    fn handle(&self, file: BodyFile) -> io::Result<Arc<File>> {
        if let Some(f) = self.open.lock().get(&file) {
            return Ok(f.clone());
        }
        let f = Arc::new(File::open(self.path(file))?);
        let mut open = self.open.lock();
        if open.len() >= MAX_OPEN_FILES {
            open.clear();
        }
        open.insert(file, f.clone());
        Ok(f)
    }

    /// Reads the body `r` points at and checks it. `NotFound` means the file is gone:
    /// the body was moved since its reference was read (read the reference again).
    pub(crate) fn read(&self, r: &BodyRef) -> io::Result<Vec<u8>> {
        let file = self.handle(r.file)?;
        let mut buf = vec![0u8; r.len as usize];
        file.read_exact_at(&mut buf, r.offset).map_err(|e| {
            if e.kind() == io::ErrorKind::UnexpectedEof {
                self.unless_moved(
                    r.file,
                    format!("{:?} ends before the body at {}", r.file, r.offset),
                )
            } else {
                e
            }
        })?;
        if crc32fast::hash(&buf) != r.crc {
            return Err(self.unless_moved(
                r.file,
                format!(
                    "the body at {:?} offset {} fails its checksum",
                    r.file, r.offset
                ),
            ));
        }
        Ok(buf)
    }

    /// The error for a body that is not where its reference says: `NotFound` when its
    /// file is a journal segment that no longer has its name (a checkpoint moved the
    /// body on and recycled the segment, whose bytes a handle opened before may now
    /// read as newer records), `InvalidData` with `what` otherwise.
    fn unless_moved(&self, file: BodyFile, what: String) -> io::Error {
        if matches!(file, BodyFile::Journal(_)) && !self.path(file).exists() {
            self.open.lock().remove(&file);
            return io::Error::new(io::ErrorKind::NotFound, what);
        }
        io::Error::new(io::ErrorKind::InvalidData, what)
    }

    /// Reads the byte ranges `wanted` (offsets within the body, clamped to it) of the
    /// body `r` points at, checking the whole body's checksum on the way in pieces of
    /// [`READ_PIECE`] bytes: memory is the ranges plus one piece, whatever the body's
    /// size. `head` first reads the body's first bytes unchecked to choose the ranges
    /// (the pass that follows checks them with the rest). Errors as [`Bodies::read`].
    pub(crate) fn read_ranges(
        &self,
        r: &BodyRef,
        head: usize,
        wanted: impl FnOnce(&[u8]) -> Vec<std::ops::Range<u64>>,
    ) -> io::Result<Vec<Vec<u8>>> {
        let file = self.handle(r.file)?;
        let len = u64::from(r.len);
        let eof = |e: io::Error| {
            if e.kind() == io::ErrorKind::UnexpectedEof {
                self.unless_moved(
                    r.file,
                    format!("{:?} ends before the body at {}", r.file, r.offset),
                )
            } else {
                e
            }
        };
        let mut first = vec![0u8; head.min(r.len as usize)];
        file.read_exact_at(&mut first, r.offset).map_err(eof)?;
        let ranges: Vec<std::ops::Range<u64>> = wanted(&first)
            .into_iter()
            .map(|w| w.start.min(len)..w.end.min(len).max(w.start.min(len)))
            .collect();
        let mut out: Vec<Vec<u8>> = ranges
            .iter()
            .map(|w| Vec::with_capacity((w.end - w.start) as usize))
            .collect();
        let mut hasher = crc32fast::Hasher::new();
        let mut piece = vec![0u8; READ_PIECE.min(r.len as usize)];
        let mut at = 0u64;
        while at < len {
            let n = (len - at).min(READ_PIECE as u64) as usize;
            file.read_exact_at(&mut piece[..n], r.offset + at)
                .map_err(eof)?;
            let bytes = &piece[..n];
            hasher.update(bytes);
            for (w, o) in ranges.iter().zip(out.iter_mut()) {
                let from = w.start.max(at);
                let to = w.end.min(at + n as u64);
                if from < to {
                    o.extend_from_slice(&bytes[(from - at) as usize..(to - at) as usize]);
                }
            }
            at += n as u64;
        }
        if hasher.finalize() != r.crc {
            return Err(self.unless_moved(
                r.file,
                format!(
                    "the body at {:?} offset {} fails its checksum",
                    r.file, r.offset
                ),
            ));
        }
        debug_assert!(out
            .iter()
            .zip(&ranges)
            .all(|(o, w)| o.len() as u64 == w.end - w.start));
        Ok(out)
    }

    /// Drops the read handles of files that were removed (or are about to be).
    pub(crate) fn forget(&self, removed: impl Fn(BodyFile) -> bool) {
        self.open.lock().retain(|file, _| !removed(*file));
    }

    /// A reference into payload file `n` of `len` bytes was removed.
    pub(crate) fn freed(&self, n: u64, len: u64) {
        if let Some(live) = self.live.lock().get_mut(&n) {
            *live = live.saturating_sub(len);
        }
    }

    /// A reference into payload file `n` of `len` bytes was made.
    pub(crate) fn added(&self, n: u64, len: u64) {
        *self.live.lock().entry(n).or_default() += len;
    }

    /// Live bytes of payload file `n`.
    pub(crate) fn live(&self, n: u64) -> u64 {
        self.live.lock().get(&n).copied().unwrap_or(0)
    }

    /// Payload file `n` is gone.
    pub(crate) fn removed(&self, n: u64) {
        self.live.lock().remove(&n);
        self.forget(|f| f == BodyFile::Payload(n));
    }

    /// Live bytes of every payload file (for metrics and tests).
    pub(crate) fn live_bytes(&self) -> u64 {
        self.live.lock().values().sum()
    }
}

/// Appends bodies to the newest payload file; owned by the checkpoint thread.
pub(crate) struct Appender {
    dir: PathBuf,
    /// A file is closed for appends past this size (twice a journal segment); a
    /// closed file is compacted once less than half of it is live.
    file_bytes: u64,
    current: Option<Current>,
    next: u64,
    /// A file was created since the directory was last synced.
    dir_dirty: bool,
}

struct Current {
    n: u64,
    file: File,
    len: u64,
    synced: bool,
}

impl Appender {
    /// An appender that starts a new file numbered `next` at its first append.
    pub(crate) fn new(dir: PathBuf, next: u64, file_bytes: u64) -> Appender {
        Appender {
            dir,
            file_bytes,
            current: None,
            next,
            dir_dirty: false,
        }
    }

    /// The file appends go to now, if one is open.
    pub(crate) fn current(&self) -> Option<u64> {
        self.current.as_ref().map(|c| c.n)
    }

    /// Appends one body of task `id`; the reference is valid once [`Appender::sync`]
    /// returned.
    pub(crate) fn append(&mut self, id: TaskId, body: &[u8]) -> io::Result<BodyRef> {
        let len = u32::try_from(body.len())
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "body over 4 GiB"))?;
        if self
            .current
            .as_ref()
            .is_none_or(|c| c.len >= self.file_bytes)
        {
            self.roll()?;
        }
        let current = self.current.as_mut().expect("roll opened a file");
        let crc = crc32fast::hash(body);
        let mut header = [0u8; ENTRY_HEADER as usize];
        header[0..8].copy_from_slice(&id.to_le_bytes());
        header[8..12].copy_from_slice(&len.to_le_bytes());
        header[12..16].copy_from_slice(&crc.to_le_bytes());
        let at = current.len;
        current.file.write_all_at(&header, at)?;
        current.file.write_all_at(body, at + ENTRY_HEADER)?;
        current.len = at + ENTRY_HEADER + u64::from(len);
        current.synced = false;
        Ok(BodyRef {
            file: BodyFile::Payload(current.n),
            offset: at + ENTRY_HEADER,
            len,
            crc,
        })
    }

    /// Makes everything appended durable (and the files' directory entries).
    pub(crate) fn sync(&mut self) -> io::Result<()> {
        if let Some(current) = self.current.as_mut().filter(|c| !c.synced) {
            current.file.sync_data()?;
            current.synced = true;
        }
        if self.dir_dirty {
            journal::sync_dir(&self.dir)?;
            self.dir_dirty = false;
        }
        Ok(())
    }

    fn roll(&mut self) -> io::Result<()> {
        // The file left is synced by whoever syncs before referencing into it.
        if let Some(current) = self.current.take() {
            if !current.synced {
                current.file.sync_data()?;
            }
        }
        let n = self.next;
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(payload_path(&self.dir, n))?;
        self.next += 1;
        self.dir_dirty = true;
        self.current = Some(Current {
            n,
            file,
            len: 0,
            synced: false,
        });
        tracing::debug!(file = n, "payload file created");
        Ok(())
    }
}

/// Calls `f` with every whole entry of payload file `n` (id, reference, body), in
/// order, reading one entry at a time.
pub(crate) fn scan(
    dir: &Path,
    n: u64,
    mut f: impl FnMut(TaskId, BodyRef, &[u8]) -> io::Result<()>,
) -> io::Result<()> {
    let file = File::open(payload_path(dir, n))?;
    let size = file.metadata()?.len();
    let mut pos = 0u64;
    let mut body = Vec::new();
    while pos + ENTRY_HEADER <= size {
        let mut header = [0u8; ENTRY_HEADER as usize];
        file.read_exact_at(&mut header, pos)?;
        let id = u64::from_le_bytes(header[0..8].try_into().expect("8 bytes"));
        let len = u32::from_le_bytes(header[8..12].try_into().expect("4 bytes"));
        let crc = u32::from_le_bytes(header[12..16].try_into().expect("4 bytes"));
        let end = pos + ENTRY_HEADER + u64::from(len);
        if end > size {
            break;
        }
        body.clear();
        body.resize(len as usize, 0);
        file.read_exact_at(&mut body, pos + ENTRY_HEADER)?;
        let r = BodyRef {
            file: BodyFile::Payload(n),
            offset: pos + ENTRY_HEADER,
            len,
            crc,
        };
        f(id, r, &body)?;
        pos = end;
    }
    Ok(())
}

/// The payload files of `dir` with their sizes, by number.
pub(crate) fn list(dir: &Path) -> io::Result<Vec<(u64, u64)>> {
    let mut files = Vec::new();
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(files),
        Err(e) => return Err(e),
    };
    for entry in entries {
        let entry = entry?;
        let path = entry.path();
        if path.extension().and_then(|e| e.to_str()) != Some(EXT) {
            continue;
        }
        let n = path
            .file_stem()
            .and_then(|s| s.to_str())
            .filter(|s| s.len() == 16)
            .and_then(|s| u64::from_str_radix(s, 16).ok());
        if let Some(n) = n {
            files.push((n, entry.metadata()?.len()));
        }
    }
    files.sort_unstable();
    Ok(files)
}

/// Removes payload file `n` (and syncs the directory).
pub(crate) fn remove(dir: &Path, n: u64) -> io::Result<()> {
    match std::fs::remove_file(payload_path(dir, n)) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    journal::sync_dir(dir)
}

pub(crate) fn payload_path(dir: &Path, n: u64) -> PathBuf {
    dir.join(format!("{n:016x}.{EXT}"))
}

/// Total bytes of the payload files.
pub(crate) fn disk_bytes(dir: &Path) -> u64 {
    list(dir)
        .unwrap_or_default()
        .iter()
        .map(|(_, len)| len)
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn appended_bodies_read_back_scan_in_order_and_files_roll() {
        let dir = tempfile::tempdir().unwrap();
        let bodies = Bodies::new(dir.path().join("j"), dir.path().to_owned());
        let mut a = Appender::new(dir.path().to_owned(), 3, 1 << 20);
        let mut refs = Vec::new();
        for id in 0..5u64 {
            let body = vec![id as u8; 100 * (id as usize + 1)];
            refs.push((id, a.append(id, &body).unwrap(), body));
        }
        a.sync().unwrap();
        assert_eq!(a.current(), Some(3));
        for (_, r, body) in &refs {
            assert_eq!(&bodies.read(r).unwrap(), body);
        }
        let mut scanned = Vec::new();
        scan(dir.path(), 3, |id, r, body| {
            scanned.push((id, r, body.to_vec()));
            Ok(())
        })
        .unwrap();
        assert_eq!(scanned, refs);
        // A wrong checksum or a short file is an error, never other bytes.
        let mut bad = refs[1].1;
        bad.crc ^= 1;
        assert_eq!(
            bodies.read(&bad).unwrap_err().kind(),
            io::ErrorKind::InvalidData
        );
        bad = refs[4].1;
        bad.offset += 1000;
        assert_eq!(
            bodies.read(&bad).unwrap_err().kind(),
            io::ErrorKind::InvalidData
        );
        // A torn tail ends the scan.
        let path = payload_path(dir.path(), 3);
        let len = std::fs::metadata(&path).unwrap().len();
        File::options()
            .write(true)
            .open(&path)
            .unwrap()
            .set_len(len - 1)
            .unwrap();
        let mut count = 0;
        scan(dir.path(), 3, |_, _, _| {
            count += 1;
            Ok(())
        })
        .unwrap();
        assert_eq!(count, 4);
        assert_eq!(list(dir.path()).unwrap(), vec![(3, len - 1)]);
        remove(dir.path(), 3).unwrap();
        assert!(list(dir.path()).unwrap().is_empty());
    }

    #[test]
    fn a_body_in_a_recycled_journal_segment_reads_as_moved_never_as_other_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let journal_dir = dir.path().join("j");
        std::fs::create_dir(&journal_dir).unwrap();
        let bodies = Bodies::new(journal_dir.clone(), dir.path().to_owned());
        let body = vec![7u8; 300];
        let path = journal::segment_file(&journal_dir, 5);
        let mut data = vec![0u8; 1000];
        data[100..400].copy_from_slice(&body);
        std::fs::write(&path, &data).unwrap();
        let r = BodyRef {
            file: BodyFile::Journal(5),
            offset: 100,
            len: 300,
            crc: crc32fast::hash(&body),
        };
        // Read once: the handle is kept.
        assert_eq!(bodies.read(&r).unwrap(), body);
        // Other bytes where the body was, its segment still named: corruption.
        let file = File::options().write(true).open(&path).unwrap();
        file.write_all_at(&[1u8; 50], 150).unwrap();
        let err = bodies.read(&r).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData, "{err}");
        // The segment renamed (recycled) and written again, read through the kept
        // handle: moved, so the caller reads the reference again.
        std::fs::rename(&path, journal_dir.join("0000000000000005.spare")).unwrap();
        assert!(bodies.open.lock().contains_key(&r.file));
        let err = bodies.read(&r).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::NotFound, "{err}");
        let head = 0..10;
        let err = bodies
            .read_ranges(&r, 10, |_| Vec::from([head]))
            .unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::NotFound, "{err}");
    }
}
