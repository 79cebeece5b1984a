//! The journal: the store's write-ahead log of segment files. The writer appends every
//! group it commits as one checksummed record of the sled writes it makes and makes it
//! durable with one `fdatasync` of one file before confirming the group; sled is then
//! only the indexed copy of the journal's effect, flushed at checkpoints
//! (`checkpoint.rs`). This file knows segment files and the record format. It knows
//! nothing of sled, keys, tasks or threads. The cluster's Raft log (`cluster/log.rs`)
//! is a second journal of the same format whose records are opaque bodies numbered by
//! their Raft index (`open_records`, `append_record`, `read_record`, `truncate_from`,
//! `reset`); the store's own journal never uses those.
//!
//! Format. A directory of segment files, each named by the sequence number of its
//! first record (`{seq:016x}.log`) and preallocated to its capacity, so that an append
//! needs no new blocks: a full disk shows when a segment is created, never in the
//! middle of a record. A record is
//!
//! ```text
//! len: u32 LE (of the body) | crc32: u32 LE (of seq + body) | seq: u64 LE | body
//! body = entry*   entry = 1 | klen: u32 | key | vlen: u32 | value     (put)
//!                       | 2 | klen: u32 | key                         (remove)
//! ```
//!
//! A segment's records have consecutive sequence numbers; it ends at a zero length
//! (preallocated space reads as zeros), at a record that does not fit, whose checksum
//! fails or whose number is not the next. The next segment may start past the number
//! expected (a record whose write failed used its number and was never confirmed).
//! Writes are whole values, so replaying a record whose effect sled already holds
//! changes nothing.
//!
//! Bodies. A put's value stays where it was written until its segment is removed, so
//! the store may point at it ([`ValueAt`]: the segment and the value's file offset)
//! instead of copying it; the store moves what it still points at elsewhere before a
//! checkpoint removes the store journal's segments ([`scan_below`]). The store's
//! segments are removed only through its checkpoint.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Bytes of a record header: length, checksum, sequence number.
const HEADER: usize = 16;
const PUT: u8 = 1;
const REMOVE: u8 = 2;
/// Capacity of the record buffer kept between groups.
const BUF_KEEP_BYTES: usize = 4 * 1024 * 1024;
/// Extension of segment files.
const EXT: &str = "log";
/// Extension of spare segment files ([`recycle_below`]).
const SPARE_EXT: &str = "spare";
/// Spare segments kept at most: two are enough for the writer never to wait for a
/// fresh one while checkpoints keep up, and bound the disk they hold.
pub(crate) const MAX_SPARES: usize = 2;

/// Where a put's value lies: the segment (by its first record's number) and the byte
/// offset of the value in that file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ValueAt {
    pub(crate) segment: u64,
    pub(crate) offset: u64,
}

/// One write found by replay, or the end of the record holding the writes before it.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Entry<'a> {
    /// Set `key` to `value`, which lies at the location.
    Put(&'a [u8], &'a [u8], ValueAt),
    /// Remove `key`.
    Remove(&'a [u8]),
    /// The writes since the previous `End` form one record.
    End,
}

/// What replay found.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct Replayed {
    /// Segment files read (those below the floor are not read, only removed).
    pub(crate) segments: usize,
    /// Records applied.
    pub(crate) records: u64,
    /// Bytes of the records applied.
    pub(crate) bytes: u64,
    /// Per segment kept (by first record number): the bytes its valid records span.
    /// A value located past that (in `interval` or `never` mode, a record applied to
    /// sled but never synced before a power loss) is gone.
    pub(crate) extents: Vec<(u64, u64)>,
}

/// Where a record is: the segment holding it (named by its first record's number), the
/// record's offset in it and its length with the header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Location {
    /// The segment's first record number.
    pub(crate) segment: u64,
    /// Byte offset of the record's header.
    pub(crate) offset: u64,
    /// Bytes of header and body.
    pub(crate) len: u64,
}

/// Reads the body of record `seq` at `at` in `file` (its segment), checking its length,
/// number and checksum.
pub(crate) fn read_record(file: &File, seq: u64, at: Location) -> io::Result<Vec<u8>> {
    let len = usize::try_from(at.len)
        .ok()
        .filter(|&len| len > HEADER)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "bad record location"))?;
    let mut data = vec![0u8; len];
    file.read_exact_at(&mut data, at.offset)?;
    match record_at(&data, 0, seq) {
        Some((body, found)) if found == len => Ok(body.to_vec()),
        _ => Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "journal record {seq} at offset {} of segment {:016x} is not valid",
                at.offset, at.segment
            ),
        )),
    }
}

/// Opens segment `first_seq` of `dir` for reading.
pub(crate) fn open_segment(dir: &Path, first_seq: u64) -> io::Result<File> {
    File::open(segment_path(dir, first_seq))
}

/// The open journal: appends to the current segment.
pub(crate) struct Journal {
    dir: PathBuf,
    segment_bytes: u64,
    current: Option<Segment>,
    /// Number of the next record.
    next_seq: u64,
    /// The record being built: header space, then entries.
    buf: Vec<u8>,
    /// Written since the last sync.
    unsynced: bool,
    /// Where the last record appended is.
    last_record: Option<Location>,
}

struct Segment {
    file: File,
    first_seq: u64,
    offset: u64,
    capacity: u64,
    created: Instant,
}

impl Journal {
    /// Opens the journal in `dir` (creating it), replaying through `apply` every record
    /// numbered `floor` or later, in order. Segments holding only records below the
    /// floor (already in sled) and segments with no valid record are removed. No
    /// segment is created until the first append or [`Journal::ensure_segment`].
    pub(crate) fn open(
        dir: &Path,
        segment_bytes: u64,
        floor: u64,
        mut apply: impl FnMut(Entry<'_>) -> io::Result<()>,
    ) -> io::Result<(Journal, Replayed)> {
        Journal::open_records(dir, segment_bytes, floor, |_, body, at| {
            let body_at = ValueAt {
                segment: at.segment,
                offset: at.offset + HEADER as u64,
            };
            for entry in Entries::new(body, body_at) {
                apply(entry?)?;
            }
            apply(Entry::End)
        })
    }

    /// [`Journal::open`] for a journal of opaque records (the cluster's Raft log):
    /// `record` gets each record numbered `floor` or later with its number, its body
    /// and where it is, in order. A record appended with [`Journal::append_record`]
    /// comes back byte for byte.
    pub(crate) fn open_records(
        dir: &Path,
        segment_bytes: u64,
        floor: u64,
        mut record: impl FnMut(u64, &[u8], Location) -> io::Result<()>,
    ) -> io::Result<(Journal, Replayed)> {
        create_dir_synced(dir)?;
        let segments = list(dir)?;
        let mut replayed = Replayed::default();
        let mut next_seq = floor;
        let mut useless = Vec::new();
        for (i, (first_seq, path)) in segments.iter().enumerate() {
            let last_seq = segments.get(i + 1).map(|(s, _)| s.saturating_sub(1));
            if last_seq.is_some_and(|last| last < floor) {
                useless.push(path.clone());
                continue;
            }
            if *first_seq < next_seq && *first_seq >= floor {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!(
                        "journal segment {} starts at record {first_seq}, before record \
                         {next_seq} that an earlier segment holds",
                        path.display()
                    ),
                ));
            }
            let data = std::fs::read(path)?;
            replayed.segments += 1;
            let mut seq = *first_seq;
            let mut pos = 0;
            let mut valid = 0u64;
            while let Some((body, len)) = record_at(&data, pos, seq) {
                if seq >= floor {
                    let at = Location {
                        segment: *first_seq,
                        offset: pos as u64,
                        len: len as u64,
                    };
                    record(seq, body, at)?;
                    replayed.records += 1;
                    replayed.bytes += len as u64;
                }
                valid += 1;
                pos += len;
                seq += 1;
            }
            if valid == 0 {
                useless.push(path.clone());
            } else {
                replayed.extents.push((*first_seq, pos as u64));
            }
            next_seq = next_seq.max(seq);
        }
        let segment_bytes = segment_bytes.max(HEADER as u64 * 4);
        for (_, spare) in spares(dir)? {
            // Spares of another segment size (the setting changed) are never used.
            if std::fs::metadata(&spare)?.len() != segment_bytes {
                useless.push(spare);
            }
        }
        for path in useless {
            std::fs::remove_file(&path)?;
        }
        let journal = Journal {
            dir: dir.to_owned(),
            segment_bytes,
            current: None,
            next_seq,
            buf: Vec::with_capacity(64 * 1024),
            unsynced: false,
            last_record: None,
        };
        Ok((journal, replayed))
    }

    /// Appends one opaque record (see [`Journal::open_records`]) numbered
    /// [`Journal::next_seq`], `fdatasync`ing it when `sync`; returns where it is. Errors
    /// as [`Journal::append`].
    pub(crate) fn append_record(&mut self, body: &[u8], sync: bool) -> io::Result<Location> {
        self.begin();
        self.buf.extend_from_slice(body);
        let len = self.buf.len() as u64;
        self.append(sync)?;
        let segment = self
            .current
            .as_ref()
            .expect("a successful append leaves its segment");
        debug_assert!(segment.offset >= len);
        Ok(Location {
            segment: segment.first_seq,
            offset: segment.offset - len,
            len,
        })
    }

    /// Removes record `seq`, found at `at`, and every record after it, durably: the
    /// next append is numbered `seq` again (Raft truncating a conflicting suffix).
    /// Segments after `at`'s are deleted; inside `at`'s segment the record's header is
    /// zeroed and synced, which ends the segment there for replay.
    pub(crate) fn truncate_from(&mut self, seq: u64, at: Location) -> io::Result<()> {
        debug_assert!(at.segment <= seq && seq < self.next_seq.max(seq + 1));
        let synced = self.sync();
        self.current = None;
        self.unsynced = false;
        synced?;
        for (first, path) in list(&self.dir)? {
            if first > at.segment {
                std::fs::remove_file(path)?;
            }
        }
        let path = segment_path(&self.dir, at.segment);
        if at.segment == seq {
            std::fs::remove_file(path)?;
        } else {
            let file = OpenOptions::new().write(true).open(path)?;
            file.write_all_at(&[0u8; HEADER], at.offset)?;
            file.sync_data()?;
        }
        sync_dir(&self.dir)?;
        self.next_seq = seq;
        Ok(())
    }

    /// Removes every segment; the next append is numbered `next_seq` (a Raft log
    /// purged past its last entry, after a snapshot was installed).
    pub(crate) fn reset(&mut self, next_seq: u64) -> io::Result<()> {
        self.current = None;
        self.unsynced = false;
        remove_all(&self.dir)?;
        self.next_seq = next_seq;
        Ok(())
    }

    /// The size of a segment (of a spare, [`recycle_below`]).
    pub(crate) fn segment_bytes(&self) -> u64 {
        self.segment_bytes
    }

    /// The number the next record gets: every record below it is in a segment that
    /// is sealed or current.
    pub(crate) fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// Starts a new record (dropping any entries of an unfinished one).
    pub(crate) fn begin(&mut self) {
        self.buf.clear();
        // A group of large payloads does not keep its buffer for good.
        if self.buf.capacity() > BUF_KEEP_BYTES {
            self.buf.shrink_to(BUF_KEEP_BYTES);
        }
        self.buf.resize(HEADER, 0);
    }

    /// Adds a write to the record being built. Returns where the value starts in the
    /// record: once appended, it lies at [`Journal::last_record`]'s offset plus this.
    pub(crate) fn put(&mut self, key: &[u8], value: Option<&[u8]>) -> u64 {
        self.buf.push(if value.is_some() { PUT } else { REMOVE });
        put_bytes(&mut self.buf, key);
        let at = self.buf.len() + 4;
        if let Some(value) = value {
            put_bytes(&mut self.buf, value);
        }
        at as u64
    }

    /// The length of the record being built, to [`Journal::rewind`] to.
    pub(crate) fn mark(&self) -> usize {
        self.buf.len()
    }

    /// Drops the entries added since `mark` (a job that failed half-way).
    pub(crate) fn rewind(&mut self, mark: usize) {
        debug_assert!(mark >= HEADER && mark <= self.buf.len());
        self.buf.truncate(mark.max(HEADER));
    }

    /// Where the last record appended is (its segment, header offset and length).
    pub(crate) fn last_record(&self) -> Option<Location> {
        self.last_record
    }

    /// Writes the record being built, in the current segment or a new one, and
    /// `fdatasync`s it when `sync`. Returns the checkpoint floor when a segment holding
    /// records was sealed to make room (every record below the floor is in a sealed
    /// segment; this record is not). On an error nothing is confirmed: the segment is sealed where it
    /// is (a torn or unsynced record at its end is never replayed after a later one)
    /// and the next append starts a new segment.
    pub(crate) fn append(&mut self, sync: bool) -> io::Result<Option<u64>> {
        let body_len = self.buf.len() - HEADER;
        let body_len32 = u32::try_from(body_len).map_err(|_| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("a group of {body_len} bytes is over the 4 GiB record limit"),
            )
        })?;
        let len = self.buf.len() as u64;
        let sealed = self.make_room(len)?;
        let seq = self.next_seq;
        self.buf[0..4].copy_from_slice(&body_len32.to_le_bytes());
        self.buf[8..16].copy_from_slice(&seq.to_le_bytes());
        let crc = crc32fast::hash(&self.buf[8..]);
        self.buf[4..8].copy_from_slice(&crc.to_le_bytes());
        // The number is used even if the write fails: the record may be on disk.
        self.next_seq += 1;
        let segment = self.current.as_mut().expect("make_room left a segment");
        let mut result = segment.file.write_all_at(&self.buf, segment.offset);
        if result.is_ok() {
            self.last_record = Some(Location {
                segment: segment.first_seq,
                offset: segment.offset,
                len,
            });
            segment.offset += len;
            self.unsynced = true;
            if sync {
                result = self.sync();
            }
        }
        if let Err(e) = result {
            self.current = None;
            self.unsynced = false;
            return Err(e);
        }
        Ok(sealed)
    }

    /// `fdatasync`s what was appended since the last sync.
    pub(crate) fn sync(&mut self) -> io::Result<()> {
        if !self.unsynced {
            return Ok(());
        }
        let Some(segment) = &self.current else {
            return Ok(());
        };
        if let Err(e) = segment.file.sync_data() {
            self.current = None;
            self.unsynced = false;
            return Err(e);
        }
        self.unsynced = false;
        Ok(())
    }

    /// Whether anything is appended but not yet synced.
    pub(crate) fn unsynced(&self) -> bool {
        self.unsynced
    }

    /// When the current segment was created, if it holds records.
    pub(crate) fn current_since(&self) -> Option<Instant> {
        self.current
            .as_ref()
            .filter(|s| s.first_seq < self.next_seq)
            .map(|s| s.created)
    }

    /// Seals the current segment if it holds records (syncing what is unsynced).
    /// Returns the checkpoint floor: every record below it is in a sealed segment.
    pub(crate) fn seal(&mut self) -> io::Result<u64> {
        if self.current_since().is_some() {
            let synced = self.sync();
            self.current = None;
            synced?;
        }
        Ok(self.next_seq)
    }

    /// Creates the next segment now if there is none (after a seal or an error), so
    /// that the next append does not pay for it. An error means no space or an I/O
    /// fault: appends fail until this succeeds.
    pub(crate) fn ensure_segment(&mut self) -> io::Result<()> {
        if self.current.is_none() {
            self.current = Some(self.create(self.segment_bytes)?);
        }
        Ok(())
    }

    /// Makes sure the current segment has `len` bytes free; returns the floor if it
    /// sealed a segment that held records.
    fn make_room(&mut self, len: u64) -> io::Result<Option<u64>> {
        let mut sealed = None;
        if let Some(segment) = &self.current {
            if segment.offset + len <= segment.capacity {
                return Ok(None);
            }
            if segment.first_seq < self.next_seq {
                // Interval and never modes: what it holds is synced before it is left.
                self.sync()?;
                sealed = Some(self.next_seq);
            } else {
                // Empty but too small for this record: replaced by a larger one.
                std::fs::remove_file(segment_path(&self.dir, segment.first_seq))?;
            }
            self.current = None;
        }
        self.current = Some(self.create(len.max(self.segment_bytes))?);
        Ok(sealed)
    }

    /// Creates, preallocates and syncs a segment starting at the next number, and
    /// syncs the directory, so that records synced into it cannot vanish with it.
    fn create(&self, capacity: u64) -> io::Result<Segment> {
        if capacity == self.segment_bytes {
            if let Some(segment) = self.reuse_spare()? {
                return Ok(segment);
            }
        }
        let path = segment_path(&self.dir, self.next_seq);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)?;
        let prepared = preallocate(&file, capacity)
            .and_then(|()| file.sync_all())
            .and_then(|()| sync_dir(&self.dir));
        if let Err(e) = prepared {
            drop(file);
            let _ = std::fs::remove_file(&path);
            return Err(e);
        }
        tracing::debug!(
            first_seq = self.next_seq,
            capacity,
            "journal segment created"
        );
        Ok(Segment {
            file,
            first_seq: self.next_seq,
            offset: 0,
            capacity,
            created: Instant::now(),
        })
    }

    /// Makes a spare ([`recycle_below`]) the segment starting at the next number, if
    /// there is one of the segment size: renamed, not truncated, and the directory
    /// synced, so that records synced into it cannot vanish with it. Its old records
    /// are numbered below any record this journal appends from now on.
    fn reuse_spare(&self) -> io::Result<Option<Segment>> {
        for (old_first, spare) in spares(&self.dir)? {
            debug_assert!(old_first < self.next_seq, "a spare held older records");
            let file = match OpenOptions::new().read(true).write(true).open(&spare) {
                Ok(file) => file,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e),
            };
            if file.metadata()?.len() != self.segment_bytes {
                drop(file);
                std::fs::remove_file(&spare)?;
                continue;
            }
            let path = segment_path(&self.dir, self.next_seq);
            std::fs::rename(&spare, &path)?;
            if let Err(e) = sync_dir(&self.dir) {
                drop(file);
                let _ = std::fs::remove_file(&path);
                return Err(e);
            }
            tracing::debug!(
                first_seq = self.next_seq,
                capacity = self.segment_bytes,
                "journal segment recycled"
            );
            return Ok(Some(Segment {
                file,
                first_seq: self.next_seq,
                offset: 0,
                capacity: self.segment_bytes,
                created: Instant::now(),
            }));
        }
        Ok(None)
    }
}

/// Removes every segment that holds only records below `floor`, once what they hold
/// is durable elsewhere (sled, for the store's journal; a snapshot, for the Raft log),
/// keeping up to [`MAX_SPARES`] of those exactly `spare_bytes` long as spares (renamed,
/// not removed) for [`Journal`] to write its next segments into. Returns how many it
/// took away. A spare's blocks are already written, so an `fdatasync` into it changes
/// no extent and no size: it writes the data and flushes, where one into a fresh
/// `fallocate`d segment also writes the inode (`benches/fsync-recycled.py`: about a
/// third less time per sync). What a spare still holds are records numbered below
/// `floor`, which no replay takes for the next record of a segment named at or above
/// it. A handle opened on a segment before it was recycled may read newer records
/// there: readers check what they read (number, checksum) and look again.
pub(crate) fn recycle_below(dir: &Path, floor: u64, spare_bytes: u64) -> io::Result<usize> {
    let segments = list(dir)?;
    let mut spares = spares(dir)?.len();
    let mut removed = 0;
    for (i, (first, path)) in segments.iter().enumerate() {
        let next_first = segments.get(i + 1).map(|(s, _)| *s);
        if next_first.is_some_and(|next| next <= floor) {
            debug_assert!(*first < floor, "a segment below the floor starts below it");
            let keep = spares < MAX_SPARES
                && std::fs::metadata(path).is_ok_and(|m| m.len() == spare_bytes);
            if keep {
                std::fs::rename(path, spare_path(dir, *first))?;
                spares += 1;
            } else {
                std::fs::remove_file(path)?;
            }
            removed += 1;
        }
    }
    if removed > 0 {
        sync_dir(dir)?;
    }
    Ok(removed)
}

/// Removes every segment and every spare: at shutdown, after the last checkpoint, when
/// the writer has sealed its last segment and appends no more.
pub(crate) fn remove_all(dir: &Path) -> io::Result<usize> {
    let segments = list(dir)?;
    let spares = spares(dir)?;
    for (_, path) in segments.iter().chain(&spares) {
        std::fs::remove_file(path)?;
    }
    if !segments.is_empty() || !spares.is_empty() {
        sync_dir(dir)?;
    }
    Ok(segments.len())
}

/// Bytes of every segment file and spare (their allocated capacity).
pub(crate) fn disk_bytes(dir: &Path) -> u64 {
    let mut files = list(dir).unwrap_or_default();
    files.extend(spares(dir).unwrap_or_default());
    files
        .iter()
        .filter_map(|(_, p)| std::fs::metadata(p).ok())
        .map(|m| m.len())
        .sum()
}

/// Bytes available to this process on the file system holding `dir`.
pub(crate) fn free_bytes(dir: &Path) -> io::Result<u64> {
    statvfs(dir).map(|st| st.0)
}

/// Bytes of the file system holding `dir` (its size, used or not).
pub(crate) fn volume_bytes(dir: &Path) -> io::Result<u64> {
    statvfs(dir).map(|st| st.1)
}

/// (available, total) bytes of the file system holding `dir`.
fn statvfs(dir: &Path) -> io::Result<(u64, u64)> {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(dir.as_os_str().as_bytes())
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    let mut st = std::mem::MaybeUninit::<libc::statvfs>::uninit();
    // SAFETY: `path` is NUL-terminated and `st` is written by statvfs on success.
    let rc = unsafe { libc::statvfs(path.as_ptr(), st.as_mut_ptr()) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: statvfs returned 0, so it filled `st`.
    let st = unsafe { st.assume_init() };
    #[allow(clippy::unnecessary_cast)] // the field types differ between platforms
    Ok((
        (st.f_bavail as u64).saturating_mul(st.f_frsize as u64),
        (st.f_blocks as u64).saturating_mul(st.f_frsize as u64),
    ))
}

/// The segment files of `dir`, by first sequence number.
pub(crate) fn list(dir: &Path) -> io::Result<Vec<(u64, PathBuf)>> {
    files(dir, EXT)
}

/// The spare segment files of `dir` ([`recycle_below`]), by the first sequence number
/// they held.
fn spares(dir: &Path) -> io::Result<Vec<(u64, PathBuf)>> {
    files(dir, SPARE_EXT)
}

/// The files of `dir` named `{number:016x}.{ext}`, by number.
fn files(dir: &Path, ext: &str) -> io::Result<Vec<(u64, PathBuf)>> {
    let mut segments = Vec::new();
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(segments),
        Err(e) => return Err(e),
    };
    for entry in entries {
        let path = entry?.path();
        if path.extension().and_then(|e| e.to_str()) != Some(ext) {
            continue;
        }
        let first = path
            .file_stem()
            .and_then(|s| s.to_str())
            .filter(|s| s.len() == 16)
            .and_then(|s| u64::from_str_radix(s, 16).ok());
        if let Some(first) = first {
            segments.push((first, path));
        }
    }
    segments.sort_unstable_by_key(|(first, _)| *first);
    Ok(segments)
}

fn segment_path(dir: &Path, first_seq: u64) -> PathBuf {
    dir.join(format!("{first_seq:016x}.{EXT}"))
}

fn spare_path(dir: &Path, first_seq: u64) -> PathBuf {
    dir.join(format!("{first_seq:016x}.{SPARE_EXT}"))
}

pub(crate) fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Creates `dir` (and any missing parent) and syncs it and its parent, so that a power
/// cut cannot undo its creation (a directory's entry is durable only once the
/// directory holding it is synced). Synced also when it exists: a process that
/// crashed after creating it may not have synced it. Found by
/// `tests/replication_power.rs`: without it a cut took `<data_dir>/raft` away whole.
pub(crate) fn create_dir_synced(dir: &Path) -> io::Result<()> {
    std::fs::create_dir_all(dir)?;
    sync_dir(dir)?;
    match dir.parent().filter(|p| !p.as_os_str().is_empty()) {
        Some(parent) => sync_dir(parent),
        None => Ok(()),
    }
}

#[cfg(target_os = "linux")]
fn preallocate(file: &File, len: u64) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let len = libc::off_t::try_from(len)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "segment too large"))?;
    // SAFETY: a valid open descriptor; fallocate only reads its arguments.
    let rc = unsafe { libc::fallocate(file.as_raw_fd(), 0, 0, len) };
    if rc == 0 {
        return Ok(());
    }
    let err = io::Error::last_os_error();
    match err.raw_os_error() {
        // A file system without fallocate: reserve by writing zeros.
        Some(libc::EOPNOTSUPP) => write_zeros(file, len as u64),
        _ => Err(err),
    }
}

#[cfg(not(target_os = "linux"))]
fn preallocate(file: &File, len: u64) -> io::Result<()> {
    write_zeros(file, len)
}

fn write_zeros(file: &File, len: u64) -> io::Result<()> {
    let zeros = vec![0u8; 1 << 20];
    let mut at = 0;
    while at < len {
        let n = (len - at).min(zeros.len() as u64);
        file.write_all_at(&zeros[..n as usize], at)?;
        at += n;
    }
    Ok(())
}

fn put_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    // Keys and values are bounded far below 4 GiB by the record encoding.
    out.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
    out.extend_from_slice(bytes);
}

/// The body and total length of the record at `pos` if it is valid and numbered `seq`.
fn record_at(data: &[u8], pos: usize, seq: u64) -> Option<(&[u8], usize)> {
    let header = data.get(pos..pos + HEADER)?;
    let len = u32::from_le_bytes(header[0..4].try_into().ok()?) as usize;
    if len == 0 {
        return None;
    }
    let crc = u32::from_le_bytes(header[4..8].try_into().ok()?);
    let found_seq = u64::from_le_bytes(header[8..16].try_into().ok()?);
    let end = pos.checked_add(HEADER)?.checked_add(len)?;
    let checked = data.get(pos + 8..end)?;
    if found_seq != seq || crc32fast::hash(checked) != crc {
        return None;
    }
    Some((&checked[8..], HEADER + len))
}

/// The entries of a record body whose checksum matched; `at` is where the body lies.
struct Entries<'a> {
    body: &'a [u8],
    pos: usize,
    at: ValueAt,
}

impl<'a> Entries<'a> {
    fn new(body: &'a [u8], at: ValueAt) -> Entries<'a> {
        Entries { body, pos: 0, at }
    }

    fn bytes(&mut self) -> Option<&'a [u8]> {
        let len_bytes = self.body.get(self.pos..self.pos + 4)?;
        let len = u32::from_le_bytes(len_bytes.try_into().ok()?) as usize;
        let bytes = self
            .body
            .get(self.pos + 4..(self.pos + 4).checked_add(len)?)?;
        self.pos += 4 + len;
        Some(bytes)
    }
}

impl<'a> Iterator for Entries<'a> {
    type Item = io::Result<Entry<'a>>;

    fn next(&mut self) -> Option<Self::Item> {
        let &op = self.body.get(self.pos)?;
        self.pos += 1;
        let entry = match op {
            PUT => self.bytes().and_then(|k| {
                let at = ValueAt {
                    segment: self.at.segment,
                    offset: self.at.offset + self.pos as u64 + 4,
                };
                Some(Entry::Put(k, self.bytes()?, at))
            }),
            REMOVE => self.bytes().map(Entry::Remove),
            _ => None,
        };
        match entry {
            Some(entry) => Some(Ok(entry)),
            None => {
                self.pos = self.body.len();
                Some(Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "a journal record with a valid checksum does not parse",
                )))
            }
        }
    }
}

/// Calls `f` with every put of every valid record in the segments that start below
/// `floor`, in order. A floor is always a segment boundary (the number a sealed
/// segment's successor starts at), so these hold only records below it: everything
/// [`recycle_below`] takes away now, and the newest sealed segment, which it removes once
/// a successor exists, and which a restart removes as soon as the floor passes it.
/// Reads one record at a time (bounded by the largest record), not whole segments.
/// This is how a checkpoint finds the bodies it must move before the segments go.
pub(crate) fn scan_below(
    dir: &Path,
    floor: u64,
    mut f: impl FnMut(&[u8], &[u8], ValueAt) -> io::Result<()>,
) -> io::Result<()> {
    let segments = list(dir)?;
    let mut buf = Vec::new();
    for (first_seq, path) in &segments {
        if *first_seq >= floor {
            continue;
        }
        let file = match File::open(path) {
            Ok(file) => file,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        let size = file.metadata()?.len();
        let mut pos = 0u64;
        let mut seq = *first_seq;
        loop {
            let mut header = [0u8; HEADER];
            if pos + HEADER as u64 > size {
                break;
            }
            file.read_exact_at(&mut header, pos)?;
            let len = u32::from_le_bytes([header[0], header[1], header[2], header[3]]) as u64;
            if len == 0 || pos + HEADER as u64 + len > size {
                break;
            }
            // Grown (zeroed) only when a record is larger than any before it in this
            // segment: zeroing every record cost as much as reading it.
            let need = HEADER + len as usize;
            if buf.len() < need {
                buf.resize(need, 0);
            }
            let record = &mut buf[..need];
            file.read_exact_at(record, pos)?;
            let Some((body, _)) = record_at(record, 0, seq) else {
                break;
            };
            let at = ValueAt {
                segment: *first_seq,
                offset: pos + HEADER as u64,
            };
            for entry in Entries::new(body, at) {
                if let Entry::Put(key, value, at) = entry? {
                    f(key, value, at)?;
                }
            }
            pos += HEADER as u64 + len;
            seq += 1;
        }
        // A large record's buffer is not kept between segments.
        buf = Vec::new();
    }
    Ok(())
}

/// The path of the segment whose first record has number `first_seq`.
pub(crate) fn segment_file(dir: &Path, first_seq: u64) -> PathBuf {
    segment_path(dir, first_seq)
}

#[cfg(test)]
mod tests;
