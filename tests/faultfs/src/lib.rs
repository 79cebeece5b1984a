//! `squall-faultfs`: a test-only FUSE filesystem that behaves like a disk with a volatile
//! write cache, for power-loss and storage-fault tests (in the manner of Jepsen's LazyFS).
//!
//! It passes every operation through to a backing directory, and remembers what is not
//! yet durable: for each file, the bytes that unsynced writes overwrote (and its length
//! at the last `fsync`/`fdatasync`); for each directory, the entries created, removed or
//! renamed since its last directory `fsync`. On [`FaultFs::cut_power`] it puts all of
//! that back (optionally keeping a random prefix of each file's last unsynced write, a
//! torn write), so the backing directory then holds exactly what a power loss would
//! leave. It also fails writes, syncs or file creation with a chosen errno on paths that
//! contain a chosen pattern ([`FaultFs::fail`]), and delays syncs ([`FaultFs::delay_syncs`]).
//!
//! What does not live here: anything about Squall. The tests mount it (in-process, on a
//! FUSE session thread of the test), point a broker's data directory into it, and drive
//! it through the [`FaultFs`] handle, which also unmounts on drop (lazily, so that a
//! failing test never leaves a mount behind).
//!
//! Model, precisely: a write is durable once an `fsync` or `fdatasync` of its file
//! returns after it; a file's length likewise. A directory entry (create, mkdir,
//! unlink, rmdir, rename) is durable once its directory is `fsync`ed (a rename: both
//! directories). A sync that is delayed covers the writes made up to its end. Nothing
//! else is durable. Hard links and symlinks are refused (`EPERM`).

use std::collections::{BTreeMap, HashMap};
use std::ffi::{CString, OsStr};
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fuser::{
    Config, Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo,
    LockOwner, MountOption, OpenFlags, RenameFlags, ReplyAttr, ReplyCreate, ReplyData,
    ReplyDirectory, ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs, ReplyWrite, Request, TimeOrNow,
    WriteFlags,
};
use parking_lot::Mutex;
use rand::{Rng, SeedableRng};

/// The granularity at which overwritten bytes are remembered.
const PAGE: u64 = 4096;
/// Where removed entries wait (in the backing root, hidden) until their removal is durable.
const TRASH: &str = ".faultfs-trash";
/// Attributes and entries are never cached by the kernel: the backing directory is the truth.
const TTL: Duration = Duration::ZERO;

/// What a fault applies to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    /// `write` and `fallocate` on a file.
    Write,
    /// `fsync`/`fdatasync` of a file or a directory.
    Sync,
    /// Creating a file or a directory, or a new name by renaming onto a name that
    /// does not exist (a full directory refuses both).
    Create,
}

/// A fault: every matching operation after the first `skip` fails with `errno`.
#[derive(Clone, Debug)]
struct Fault {
    op: Op,
    pattern: String,
    errno: i32,
    skip: u64,
}

/// Counters of what the filesystem saw.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// `fsync`/`fdatasync` of files that succeeded.
    pub file_syncs: u64,
    /// `fsync` of directories that succeeded.
    pub dir_syncs: u64,
    /// Writes that succeeded.
    pub writes: u64,
    /// Operations failed by an injected fault.
    pub injected: u64,
}

/// What a power cut discarded.
#[derive(Clone, Debug, Default)]
pub struct CutReport {
    /// Files whose content or length went back to their last sync.
    pub files_rolled_back: usize,
    /// Bytes written since the last sync of their file (all lost, but for torn prefixes).
    pub unsynced_bytes: u64,
    /// Directory entries (creations, removals, renames) undone, last first.
    pub entries_undone: Vec<String>,
    /// Torn writes: file, offset, bytes kept of how many.
    pub torn: Vec<(PathBuf, u64, usize, usize)>,
}

/// What a power cut leaves of the last unsynced write of each file.
#[derive(Clone, Copy, Debug)]
pub enum Tear {
    /// Nothing unsynced survives.
    None,
    /// A random prefix (possibly empty, never whole) of each file's last unsynced write
    /// survives, drawn from this seed.
    Seeded(u64),
}

/// A file's unsynced changes: enough to put it back as it was at its last sync.
#[derive(Default)]
struct Unsynced {
    durable_len: u64,
    /// Page number -> the bytes it held at the last sync (only below `durable_len`).
    pages: BTreeMap<u64, Vec<u8>>,
    last_write: Option<(u64, Vec<u8>)>,
    bytes: u64,
}

/// A directory change not yet covered by a directory fsync.
enum DirOp {
    Created {
        parent: u64,
        path: PathBuf,
        dir: bool,
    },
    Removed {
        parent: u64,
        path: PathBuf,
        trash: PathBuf,
    },
    Renamed {
        from_parent: u64,
        to_parent: u64,
        from: PathBuf,
        to: PathBuf,
        replaced: Option<PathBuf>,
        from_synced: bool,
        to_synced: bool,
    },
}

struct State {
    root: PathBuf,
    /// Set by a power cut: every later operation fails with EIO.
    dead: bool,
    /// Inode -> path relative to the root ("" for the root).
    nodes: HashMap<u64, PathBuf>,
    inos: HashMap<PathBuf, u64>,
    next_ino: u64,
    handles: HashMap<u64, (u64, Arc<File>)>,
    next_fh: u64,
    files: HashMap<u64, Unsynced>,
    dir_ops: Vec<DirOp>,
    next_trash: u64,
    faults: Vec<Fault>,
    /// Successful file syncs per path (relative), for tests that count them.
    syncs_by_path: HashMap<PathBuf, u64>,
    /// A power cut armed to happen at the n-th write from now (counting only writes
    /// to paths containing the pattern, if one is set).
    armed: Option<(u64, Tear)>,
    armed_pattern: Option<String>,
    /// What the power cut dropped, once it happened.
    cut_report: Option<CutReport>,
}

struct Shared {
    state: Mutex<State>,
    sync_delay: Mutex<Duration>,
    file_syncs: AtomicU64,
    dir_syncs: AtomicU64,
    writes: AtomicU64,
    injected: AtomicU64,
}

type Res<T> = Result<T, Errno>;

fn errno(e: io::Error) -> Errno {
    Errno::from_i32(e.raw_os_error().unwrap_or(libc::EIO))
}

impl State {
    fn check_alive(&self) -> Res<()> {
        if self.dead {
            Err(Errno::EIO)
        } else {
            Ok(())
        }
    }

    fn rel(&self, ino: INodeNo) -> Res<PathBuf> {
        self.check_alive()?;
        self.nodes.get(&ino.0).cloned().ok_or(Errno::ENOENT)
    }

    fn child(&self, parent: INodeNo, name: &OsStr) -> Res<PathBuf> {
        let dir = self.rel(parent)?;
        if dir.as_os_str().is_empty() && name == TRASH {
            return Err(Errno::ENOENT);
        }
        Ok(dir.join(name))
    }

    fn ino_of(&mut self, rel: &Path) -> u64 {
        if let Some(ino) = self.inos.get(rel) {
            return *ino;
        }
        let ino = self.next_ino;
        self.next_ino += 1;
        self.nodes.insert(ino, rel.to_owned());
        self.inos.insert(rel.to_owned(), ino);
        ino
    }

    fn attr_of(&mut self, rel: &Path) -> Res<FileAttr> {
        let md = fs::symlink_metadata(self.root.join(rel)).map_err(errno)?;
        let ino = self.ino_of(rel);
        Ok(attr(ino, &md))
    }

    /// The fault for `op` on `rel`, if one fires now.
    fn fault(&mut self, op: Op, rel: &Path) -> Option<Errno> {
        let path = rel.to_string_lossy();
        for f in &mut self.faults {
            if f.op == op && path.contains(&f.pattern) {
                if f.skip > 0 {
                    f.skip -= 1;
                    continue;
                }
                return Some(Errno::from_i32(f.errno));
            }
        }
        None
    }

    /// The undo record of `ino`, started with the file's current length as durable.
    fn unsynced(&mut self, ino: u64, file: &File) -> Res<&mut Unsynced> {
        match self.files.entry(ino) {
            std::collections::hash_map::Entry::Occupied(e) => Ok(e.into_mut()),
            std::collections::hash_map::Entry::Vacant(e) => {
                let len = file.metadata().map_err(errno)?.len();
                Ok(e.insert(Unsynced {
                    durable_len: len,
                    ..Unsynced::default()
                }))
            }
        }
    }

    /// Remembers the synced bytes of `[off, off + len)` before they are overwritten.
    fn save_range(&mut self, ino: u64, file: &File, off: u64, len: u64) -> Res<()> {
        let u = self.unsynced(ino, file)?;
        let end = off.saturating_add(len).min(u.durable_len);
        if off >= end {
            return Ok(());
        }
        for page in off / PAGE..=(end - 1) / PAGE {
            if u.pages.contains_key(&page) {
                continue;
            }
            let start = page * PAGE;
            let mut old = vec![0u8; PAGE.min(u.durable_len - start) as usize];
            file.read_exact_at(&mut old, start).map_err(errno)?;
            u.pages.insert(page, old);
        }
        Ok(())
    }

    fn truncate(&mut self, ino: u64, file: &File, size: u64) -> Res<()> {
        let durable = self.unsynced(ino, file)?.durable_len;
        if size < durable {
            self.save_range(ino, file, size, durable - size)?;
        }
        file.set_len(size).map_err(errno)
    }

    fn trash_path(&mut self) -> PathBuf {
        self.next_trash += 1;
        Path::new(TRASH).join(self.next_trash.to_string())
    }

    /// Moves the entry at `rel` to the trash (so that a power cut can bring it back) and
    /// re-points the inodes under it.
    fn move_to_trash(&mut self, rel: &Path) -> Res<PathBuf> {
        let trash = self.trash_path();
        fs::rename(self.root.join(rel), self.root.join(&trash)).map_err(errno)?;
        self.repoint(rel, &trash);
        Ok(trash)
    }

    /// After a rename of `from` to `to`: every inode at or under `from` is now under `to`.
    fn repoint(&mut self, from: &Path, to: &Path) {
        let moved: Vec<(u64, PathBuf)> = self
            .nodes
            .iter()
            .filter_map(|(ino, p)| {
                p.strip_prefix(from).ok().map(|rest| {
                    let new = if rest.as_os_str().is_empty() {
                        to.to_owned()
                    } else {
                        to.join(rest)
                    };
                    (*ino, new)
                })
            })
            .collect();
        for (ino, new) in moved {
            if let Some(old) = self.nodes.insert(ino, new.clone()) {
                if self.inos.get(&old) == Some(&ino) {
                    self.inos.remove(&old);
                }
            }
            self.inos.insert(new, ino);
        }
    }

    fn sync_dir(&mut self, ino: u64) {
        let root = self.root.clone();
        self.dir_ops.retain_mut(|op| match op {
            DirOp::Created { parent, .. } => *parent != ino,
            DirOp::Removed { parent, trash, .. } => {
                if *parent == ino {
                    let _ = remove_any(&root.join(&*trash));
                    false
                } else {
                    true
                }
            }
            DirOp::Renamed {
                from_parent,
                to_parent,
                replaced,
                from_synced,
                to_synced,
                ..
            } => {
                *from_synced |= *from_parent == ino;
                *to_synced |= *to_parent == ino;
                if *from_synced && *to_synced {
                    if let Some(r) = replaced {
                        let _ = remove_any(&root.join(&*r));
                    }
                    false
                } else {
                    true
                }
            }
        });
    }

    /// The power cut: everything not durable goes back to its last durable state.
    fn cut(&mut self, tear: Tear) -> CutReport {
        self.dead = true;
        let mut report = CutReport::default();
        let mut rng = match tear {
            Tear::Seeded(seed) => Some(rand::rngs::SmallRng::seed_from_u64(seed)),
            Tear::None => None,
        };
        let mut files: Vec<(u64, Unsynced)> = self.files.drain().collect();
        files.sort_by_key(|(ino, _)| *ino);
        for (ino, u) in files {
            let Some(rel) = self.nodes.get(&ino) else {
                continue;
            };
            let path = self.root.join(rel);
            let Ok(file) = OpenOptions::new().write(true).open(&path) else {
                continue;
            };
            report.files_rolled_back += 1;
            report.unsynced_bytes += u.bytes;
            for (page, old) in &u.pages {
                let _ = file.write_all_at(old, page * PAGE);
            }
            let _ = file.set_len(u.durable_len);
            let last = u.last_write.filter(|(_, data)| !data.is_empty());
            if let (Some(rng), Some((off, data))) = (rng.as_mut(), last) {
                let keep = rng.random_range(0..data.len());
                if keep > 0 {
                    let _ = file.write_all_at(&data[..keep], off);
                }
                report.torn.push((rel.clone(), off, keep, data.len()));
            }
        }
        for op in self.dir_ops.drain(..).rev() {
            let root = &self.root;
            match op {
                DirOp::Created { path, dir, .. } => {
                    report
                        .entries_undone
                        .push(format!("created {}", path.display()));
                    let p = root.join(path);
                    let _ = if dir {
                        fs::remove_dir_all(p)
                    } else {
                        fs::remove_file(p)
                    };
                }
                DirOp::Removed { path, trash, .. } => {
                    report
                        .entries_undone
                        .push(format!("removed {}", path.display()));
                    let _ = fs::rename(root.join(trash), root.join(path));
                }
                DirOp::Renamed {
                    from, to, replaced, ..
                } => {
                    report.entries_undone.push(format!(
                        "renamed {} to {}",
                        from.display(),
                        to.display()
                    ));
                    let _ = fs::rename(root.join(&to), root.join(from));
                    if let Some(r) = replaced {
                        let _ = fs::rename(root.join(r), root.join(to));
                    }
                }
            }
        }
        self.handles.clear();
        report
    }
}

fn remove_any(path: &Path) -> io::Result<()> {
    if path.is_dir() {
        fs::remove_dir_all(path)
    } else {
        fs::remove_file(path)
    }
}

fn attr(ino: u64, md: &fs::Metadata) -> FileAttr {
    let ft = md.file_type();
    let kind = if ft.is_dir() {
        FileType::Directory
    } else if ft.is_symlink() {
        FileType::Symlink
    } else {
        FileType::RegularFile
    };
    let time = |s: i64, ns: i64| {
        UNIX_EPOCH
            + Duration::new(
                u64::try_from(s).unwrap_or(0),
                u32::try_from(ns).unwrap_or(0),
            )
    };
    FileAttr {
        ino: INodeNo(ino),
        size: md.len(),
        blocks: md.blocks(),
        atime: time(md.atime(), md.atime_nsec()),
        mtime: time(md.mtime(), md.mtime_nsec()),
        ctime: time(md.ctime(), md.ctime_nsec()),
        crtime: time(md.ctime(), md.ctime_nsec()),
        kind,
        perm: (md.mode() & 0o7777) as u16,
        nlink: md.nlink() as u32,
        uid: md.uid(),
        gid: md.gid(),
        rdev: md.rdev() as u32,
        blksize: md.blksize() as u32,
        flags: 0,
    }
}

/// The FUSE side: each operation locks the state, passes through, and records.
struct Fs {
    shared: Arc<Shared>,
}

impl Fs {
    fn injected(&self, e: Errno) -> Errno {
        self.shared.injected.fetch_add(1, Relaxed);
        e
    }

    fn handle(&self, fh: FileHandle) -> Res<(u64, Arc<File>)> {
        let st = self.shared.state.lock();
        st.check_alive()?;
        st.handles.get(&fh.0).cloned().ok_or(Errno::EBADF)
    }

    fn do_create(
        &self,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        flags: i32,
    ) -> Res<(FileAttr, u64)> {
        let mut st = self.shared.state.lock();
        let rel = st.child(parent, name)?;
        if let Some(e) = st.fault(Op::Create, &rel) {
            return Err(self.injected(e));
        }
        let path = st.root.join(&rel);
        let existed = path.symlink_metadata().is_ok();
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .create_new(flags & libc::O_EXCL != 0)
            .mode(mode)
            .open(&path)
            .map_err(errno)?;
        let attr = st.attr_of(&rel)?;
        if !existed {
            st.dir_ops.push(DirOp::Created {
                parent: parent.0,
                path: rel,
                dir: false,
            });
        } else if flags & libc::O_TRUNC != 0 {
            st.truncate(attr.ino.0, &file, 0)?;
        }
        let fh = st.next_fh;
        st.next_fh += 1;
        st.handles.insert(fh, (attr.ino.0, Arc::new(file)));
        Ok((attr, fh))
    }

    fn do_write(&self, ino: INodeNo, fh: FileHandle, offset: u64, data: &[u8]) -> Res<()> {
        let mut st = self.shared.state.lock();
        let rel = st.rel(ino)?;
        let (_, file) = st.handles.get(&fh.0).cloned().ok_or(Errno::EBADF)?;
        if let Some(e) = st.fault(Op::Write, &rel) {
            return Err(self.injected(e));
        }
        st.save_range(ino.0, &file, offset, data.len() as u64)?;
        file.write_all_at(data, offset).map_err(errno)?;
        let u = st.unsynced(ino.0, &file)?;
        u.last_write = Some((offset, data.to_vec()));
        u.bytes += data.len() as u64;
        self.shared.writes.fetch_add(1, Relaxed);
        let counted = st
            .armed_pattern
            .as_ref()
            .is_none_or(|p| rel.to_string_lossy().contains(p.as_str()));
        let armed = if counted { st.armed.take() } else { None };
        if let Some((n, tear)) = armed {
            if n <= 1 {
                // The power fails while this write is in the cache: it never returns.
                let report = st.cut(tear);
                st.cut_report = Some(report);
                return Err(Errno::EIO);
            }
            st.armed = Some((n - 1, tear));
        }
        Ok(())
    }

    fn do_fsync(&self, ino: INodeNo, dir: bool) -> Res<()> {
        {
            let mut st = self.shared.state.lock();
            let rel = st.rel(ino)?;
            if let Some(e) = st.fault(Op::Sync, &rel) {
                return Err(self.injected(e));
            }
        }
        let delay = *self.shared.sync_delay.lock();
        if !delay.is_zero() {
            std::thread::sleep(delay);
        }
        let mut st = self.shared.state.lock();
        let rel = st.rel(ino)?;
        if dir {
            st.sync_dir(ino.0);
            self.shared.dir_syncs.fetch_add(1, Relaxed);
        } else {
            st.files.remove(&ino.0);
            *st.syncs_by_path.entry(rel).or_default() += 1;
            self.shared.file_syncs.fetch_add(1, Relaxed);
        }
        Ok(())
    }

    fn do_fallocate(&self, ino: INodeNo, fh: FileHandle, off: u64, len: u64, mode: i32) -> Res<()> {
        let mut st = self.shared.state.lock();
        let rel = st.rel(ino)?;
        let (_, file) = st.handles.get(&fh.0).cloned().ok_or(Errno::EBADF)?;
        if let Some(e) = st.fault(Op::Write, &rel) {
            return Err(self.injected(e));
        }
        if mode & (libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_ZERO_RANGE) != 0 {
            st.save_range(ino.0, &file, off, len)?;
        } else {
            st.unsynced(ino.0, &file)?;
        }
        let (off, len) = (off as libc::off_t, len as libc::off_t);
        use std::os::fd::AsRawFd;
        // SAFETY: a valid open descriptor; fallocate only reads its arguments.
        if unsafe { libc::fallocate(file.as_raw_fd(), mode, off, len) } != 0 {
            return Err(errno(io::Error::last_os_error()));
        }
        Ok(())
    }

    fn do_setattr(&self, ino: INodeNo, mode: Option<u32>, size: Option<u64>) -> Res<FileAttr> {
        let mut st = self.shared.state.lock();
        let rel = st.rel(ino)?;
        let path = st.root.join(&rel);
        if let Some(size) = size {
            if let Some(e) = st.fault(Op::Write, &rel) {
                return Err(self.injected(e));
            }
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .open(&path)
                .map_err(errno)?;
            st.truncate(ino.0, &file, size)?;
        }
        if let Some(mode) = mode {
            fs::set_permissions(&path, fs::Permissions::from_mode(mode & 0o7777)).map_err(errno)?;
        }
        st.attr_of(&rel)
    }

    fn do_remove(&self, parent: INodeNo, name: &OsStr, dir: bool) -> Res<()> {
        let mut st = self.shared.state.lock();
        let rel = st.child(parent, name)?;
        let path = st.root.join(&rel);
        let md = path.symlink_metadata().map_err(errno)?;
        if dir != md.is_dir() {
            return Err(if dir { Errno::ENOTDIR } else { Errno::EISDIR });
        }
        if dir && fs::read_dir(&path).map_err(errno)?.next().is_some() {
            return Err(Errno::ENOTEMPTY);
        }
        let trash = st.move_to_trash(&rel)?;
        st.dir_ops.push(DirOp::Removed {
            parent: parent.0,
            path: rel,
            trash,
        });
        Ok(())
    }

    fn do_rename(
        &self,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
    ) -> Res<()> {
        let mut st = self.shared.state.lock();
        let from = st.child(parent, name)?;
        let to = st.child(newparent, newname)?;
        if flags.contains(RenameFlags::RENAME_EXCHANGE) {
            return Err(Errno::EINVAL);
        }
        st.root.join(&from).symlink_metadata().map_err(errno)?;
        let replaced = if st.root.join(&to).symlink_metadata().is_ok() {
            if flags.contains(RenameFlags::RENAME_NOREPLACE) {
                return Err(Errno::EEXIST);
            }
            Some(st.move_to_trash(&to)?)
        } else {
            if let Some(e) = st.fault(Op::Create, &to) {
                return Err(self.injected(e));
            }
            None
        };
        fs::rename(st.root.join(&from), st.root.join(&to)).map_err(errno)?;
        st.repoint(&from, &to);
        st.dir_ops.push(DirOp::Renamed {
            from_parent: parent.0,
            to_parent: newparent.0,
            from,
            to,
            replaced,
            from_synced: false,
            to_synced: false,
        });
        Ok(())
    }
}

impl Filesystem for Fs {
    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let mut st = self.shared.state.lock();
        match st.child(parent, name).and_then(|rel| st.attr_of(&rel)) {
            Ok(a) => reply.entry(&TTL, &a, Generation(0)),
            Err(e) => reply.error(e),
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        let mut st = self.shared.state.lock();
        match st.rel(ino).and_then(|rel| st.attr_of(&rel)) {
            Ok(a) => reply.attr(&TTL, &a),
            Err(e) => reply.error(e),
        }
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        _uid: Option<u32>,
        _gid: Option<u32>,
        size: Option<u64>,
        _atime: Option<TimeOrNow>,
        _mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        match self.do_setattr(ino, mode, size) {
            Ok(a) => reply.attr(&TTL, &a),
            Err(e) => reply.error(e),
        }
    }

    fn mknod(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        _rdev: u32,
        reply: ReplyEntry,
    ) {
        if mode & libc::S_IFMT != libc::S_IFREG {
            return reply.error(Errno::EPERM);
        }
        match self.do_create(parent, name, mode & !umask & 0o7777, libc::O_EXCL) {
            Ok((a, fh)) => {
                self.shared.state.lock().handles.remove(&fh);
                reply.entry(&TTL, &a, Generation(0))
            }
            Err(e) => reply.error(e),
        }
    }

    fn mkdir(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        reply: ReplyEntry,
    ) {
        let result = (|| {
            let mut st = self.shared.state.lock();
            let rel = st.child(parent, name)?;
            if let Some(e) = st.fault(Op::Create, &rel) {
                return Err(self.injected(e));
            }
            let path = st.root.join(&rel);
            fs::create_dir(&path).map_err(errno)?;
            fs::set_permissions(&path, fs::Permissions::from_mode(mode & !umask & 0o7777))
                .map_err(errno)?;
            st.dir_ops.push(DirOp::Created {
                parent: parent.0,
                path: rel.clone(),
                dir: true,
            });
            st.attr_of(&rel)
        })();
        match result {
            Ok(a) => reply.entry(&TTL, &a, Generation(0)),
            Err(e) => reply.error(e),
        }
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        match self.do_remove(parent, name, false) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        match self.do_remove(parent, name, true) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        match self.do_rename(parent, name, newparent, newname, flags) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let result = (|| {
            let mut st = self.shared.state.lock();
            let rel = st.rel(ino)?;
            let path = st.root.join(&rel);
            // Read-write whatever was asked, so that overwritten bytes can be read first.
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .open(&path)
                .or_else(|_| File::open(&path))
                .map_err(errno)?;
            if flags.0 & libc::O_TRUNC != 0 {
                if let Some(e) = st.fault(Op::Write, &rel) {
                    return Err(self.injected(e));
                }
                st.truncate(ino.0, &file, 0)?;
            }
            let fh = st.next_fh;
            st.next_fh += 1;
            st.handles.insert(fh, (ino.0, Arc::new(file)));
            Ok(fh)
        })();
        match result {
            Ok(fh) => reply.opened(FileHandle(fh), FopenFlags::empty()),
            Err(e) => reply.error(e),
        }
    }

    fn read(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let result = self.handle(fh).and_then(|(_, file)| {
            let mut buf = vec![0u8; size as usize];
            let mut n = 0;
            while n < buf.len() {
                match file.read_at(&mut buf[n..], offset + n as u64) {
                    Ok(0) => break,
                    Ok(k) => n += k,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(errno(e)),
                }
            }
            buf.truncate(n);
            Ok(buf)
        });
        match result {
            Ok(data) => reply.data(&data),
            Err(e) => reply.error(e),
        }
    }

    fn write(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        match self.do_write(ino, fh, offset, data) {
            Ok(()) => reply.written(data.len() as u32),
            Err(e) => reply.error(e),
        }
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        // close(2), not a sync: nothing becomes durable.
        reply.ok();
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        self.shared.state.lock().handles.remove(&fh.0);
        reply.ok();
    }

    fn fsync(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        match self.do_fsync(ino, false) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let result = (|| {
            let mut st = self.shared.state.lock();
            let rel = st.rel(ino)?;
            let mut entries = vec![
                (ino.0, FileType::Directory, OsStr::new(".").to_owned()),
                (ino.0, FileType::Directory, OsStr::new("..").to_owned()),
            ];
            for entry in fs::read_dir(st.root.join(&rel)).map_err(errno)? {
                let entry = entry.map_err(errno)?;
                let name = entry.file_name();
                if rel.as_os_str().is_empty() && name == TRASH {
                    continue;
                }
                let kind = match entry.file_type() {
                    Ok(t) if t.is_dir() => FileType::Directory,
                    Ok(t) if t.is_symlink() => FileType::Symlink,
                    _ => FileType::RegularFile,
                };
                let child = st.ino_of(&rel.join(&name));
                entries.push((child, kind, name));
            }
            Ok(entries)
        })();
        match result {
            Ok(entries) => {
                for (i, (ino, kind, name)) in entries.iter().enumerate().skip(offset as usize) {
                    if reply.add(INodeNo(*ino), i as u64 + 1, *kind, name) {
                        break;
                    }
                }
                reply.ok();
            }
            Err(e) => reply.error(e),
        }
    }

    fn fsyncdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        match self.do_fsync(ino, true) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        let root = self.shared.state.lock().root.clone();
        let Ok(c) = CString::new(root.as_os_str().as_bytes()) else {
            return reply.error(Errno::EINVAL);
        };
        // SAFETY: a valid C string and a zeroed out-parameter of the right type.
        let mut s: libc::statvfs = unsafe { std::mem::zeroed() };
        if unsafe { libc::statvfs(c.as_ptr(), &mut s) } != 0 {
            return reply.error(errno(io::Error::last_os_error()));
        }
        reply.statfs(
            s.f_blocks,
            s.f_bfree,
            s.f_bavail,
            s.f_files,
            s.f_ffree,
            s.f_bsize as u32,
            s.f_namemax as u32,
            s.f_frsize as u32,
        );
    }

    fn access(&self, _req: &Request, _ino: INodeNo, _mask: fuser::AccessFlags, reply: ReplyEmpty) {
        reply.ok();
    }

    fn create(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        match self.do_create(parent, name, mode & !umask & 0o7777, flags) {
            Ok((a, fh)) => {
                reply.created(&TTL, &a, Generation(0), FileHandle(fh), FopenFlags::empty())
            }
            Err(e) => reply.error(e),
        }
    }

    fn fallocate(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        match self.do_fallocate(ino, fh, offset, length, mode) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }
}

/// Why FUSE cannot be used here, or None if it can.
pub fn unavailable() -> Option<String> {
    if let Err(e) = OpenOptions::new().read(true).write(true).open("/dev/fuse") {
        return Some(format!("/dev/fuse cannot be opened: {e}"));
    }
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Some("not root: mount(2) of a FUSE filesystem is refused".into());
    }
    None
}

/// The mounted filesystem and its control handle. Dropping it unmounts (lazily).
pub struct FaultFs {
    shared: Arc<Shared>,
    mountpoint: PathBuf,
    backing: PathBuf,
    session: Option<fuser::BackgroundSession>,
}

impl FaultFs {
    /// Mounts a fault filesystem at `mountpoint` over `backing` (both existing
    /// directories). Whatever the backing directory holds counts as durable.
    pub fn mount(backing: &Path, mountpoint: &Path) -> io::Result<FaultFs> {
        let backing = backing.canonicalize()?;
        let trash = backing.join(TRASH);
        let _ = fs::remove_dir_all(&trash);
        fs::create_dir_all(&trash)?;
        let mut nodes = HashMap::new();
        let mut inos = HashMap::new();
        nodes.insert(INodeNo::ROOT.0, PathBuf::new());
        inos.insert(PathBuf::new(), INodeNo::ROOT.0);
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                root: backing.clone(),
                dead: false,
                nodes,
                inos,
                next_ino: 2,
                handles: HashMap::new(),
                next_fh: 1,
                files: HashMap::new(),
                dir_ops: Vec::new(),
                next_trash: 0,
                faults: Vec::new(),
                syncs_by_path: HashMap::new(),
                armed: None,
                armed_pattern: None,
                cut_report: None,
            }),
            sync_delay: Mutex::new(Duration::ZERO),
            file_syncs: AtomicU64::new(0),
            dir_syncs: AtomicU64::new(0),
            writes: AtomicU64::new(0),
            injected: AtomicU64::new(0),
        });
        let mut config = Config::default();
        config.mount_options = vec![
            MountOption::FSName("squall-faultfs".into()),
            MountOption::NoAtime,
        ];
        config.n_threads = Some(4);
        let session = fuser::spawn_mount(
            Fs {
                shared: shared.clone(),
            },
            mountpoint,
            &config,
        )?;
        Ok(FaultFs {
            shared,
            mountpoint: mountpoint.to_owned(),
            backing,
            session: Some(session),
        })
    }

    /// Where the filesystem is mounted.
    pub fn path(&self) -> &Path {
        &self.mountpoint
    }

    /// The backing directory.
    pub fn backing(&self) -> &Path {
        &self.backing
    }

    /// Cuts the power: from now on every operation fails with EIO, and the backing
    /// directory is put back to what was durable (see the module documentation).
    /// Kill the processes using the mount next, then drop this and mount again.
    pub fn cut_power(&self, tear: Tear) -> CutReport {
        let mut st = self.shared.state.lock();
        st.armed = None;
        let report = st.cut(tear);
        st.cut_report = Some(report.clone());
        report
    }

    /// Arms a power cut that happens during the `writes`-th write from now (that write
    /// is the last unsynced one: with [`Tear::Seeded`] a prefix of it may survive).
    pub fn arm_cut(&self, writes: u64, tear: Tear) {
        let mut st = self.shared.state.lock();
        st.armed = Some((writes.max(1), tear));
        st.armed_pattern = None;
    }

    /// Like [`FaultFs::arm_cut`], counting only writes to paths (relative to the
    /// mount) that contain `pattern`.
    pub fn arm_cut_matching(&self, pattern: &str, writes: u64, tear: Tear) {
        let mut st = self.shared.state.lock();
        st.armed = Some((writes.max(1), tear));
        st.armed_pattern = Some(pattern.to_owned());
    }

    /// Matching writes still to come before an armed cut (none when nothing is armed).
    pub fn writes_before_cut(&self) -> Option<u64> {
        self.shared.state.lock().armed.as_ref().map(|(n, _)| *n)
    }

    /// What the power cut dropped, once it happened.
    pub fn cut_report(&self) -> Option<CutReport> {
        self.shared.state.lock().cut_report.clone()
    }

    /// From now on, every `op` on a path (relative to the mount) containing `pattern`
    /// fails with `errno` (`libc::ENOSPC`, `libc::EIO`), after the first `skip` of them.
    pub fn fail(&self, op: Op, pattern: &str, errno: i32, skip: u64) {
        self.shared.state.lock().faults.push(Fault {
            op,
            pattern: pattern.to_owned(),
            errno,
            skip,
        });
    }

    /// Ends every injected fault.
    pub fn clear_faults(&self) {
        self.shared.state.lock().faults.clear();
    }

    /// Every later sync (file or directory) takes `delay` longer.
    pub fn delay_syncs(&self, delay: Duration) {
        *self.shared.sync_delay.lock() = delay;
    }

    /// What the filesystem counted so far.
    pub fn stats(&self) -> Stats {
        Stats {
            file_syncs: self.shared.file_syncs.load(Relaxed),
            dir_syncs: self.shared.dir_syncs.load(Relaxed),
            writes: self.shared.writes.load(Relaxed),
            injected: self.shared.injected.load(Relaxed),
        }
    }

    /// Successful file syncs of paths (relative to the mount) that contain `pattern`.
    pub fn syncs_matching(&self, pattern: &str) -> u64 {
        self.shared
            .state
            .lock()
            .syncs_by_path
            .iter()
            .filter(|(p, _)| p.to_string_lossy().contains(pattern))
            .map(|(_, n)| n)
            .sum()
    }

    /// Bytes written since the last sync of their file, over all files.
    pub fn unsynced_bytes(&self) -> u64 {
        let st = self.shared.state.lock();
        st.files.values().map(|u| u.bytes).sum()
    }
}

impl Drop for FaultFs {
    fn drop(&mut self) {
        // Lazy: a process that still has a file open cannot keep the test from ending.
        if let Ok(c) = CString::new(self.mountpoint.as_os_str().as_bytes()) {
            // SAFETY: a valid C string.
            unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
        }
        if let Some(session) = self.session.take() {
            // The session thread ends when the kernel drops the connection (once no
            // process holds the mount); waiting for it is bounded, then it is left.
            let (tx, rx) = std::sync::mpsc::channel();
            std::thread::spawn(move || {
                let _ = session.join();
                let _ = tx.send(());
            });
            let _ = rx.recv_timeout(Duration::from_secs(5));
        }
    }
}
