//! The data directory before sled and the journal open it: that it is a writable
//! directory, and the lock file that keeps a second broker out (naming the process
//! that holds it). Errors here name the path and say what is wrong in plain words; the
//! layout inside the directory lives in `mod.rs` and `journal.rs`.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

use super::StoreError;

/// The lock file inside the data directory; it holds the owner's pid as text.
pub(crate) const LOCK_FILE: &str = "squall.lock";

/// What is wrong with a data directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DataDirProblem {
    /// Another process holds the directory's lock.
    InUse,
    /// The directory cannot be created, is not a directory, or cannot be written.
    Unusable,
    /// Opening its contents failed (I/O error or damaged data).
    Unreadable,
}

/// Holds the data directory's lock until dropped (or the process ends).
#[derive(Debug)]
pub(crate) struct DirLock {
    _file: File,
}

/// Checks `path` (creating it if missing) and takes its lock.
pub(crate) fn prepare(path: &Path) -> Result<DirLock, StoreError> {
    let unusable = |reason: String| data_dir_error(path, DataDirProblem::Unusable, reason);
    match std::fs::metadata(path) {
        Ok(m) if !m.is_dir() => return Err(unusable("exists and is not a directory".into())),
        Ok(_) => {}
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::NotFound | std::io::ErrorKind::NotADirectory
            ) =>
        {
            // Synced with its parent: a power cut must not undo a data directory that
            // already holds confirmed work.
            super::journal::create_dir_synced(path)
                .map_err(|e| unusable(create_failed(path, &e)))?;
        }
        Err(e) => return Err(unusable(format!("cannot be used: {}", plain(&e)))),
    }
    if !writable(path) {
        return Err(unusable(format!(
            "is not writable by uid {}",
            // SAFETY: geteuid has no preconditions and cannot fail.
            unsafe { libc::geteuid() }
        )));
    }
    lock(path)
}

fn create_failed(path: &Path, e: &std::io::Error) -> String {
    // The first ancestor that exists is the one that refused.
    let parent = path.ancestors().skip(1).find(|p| p.exists());
    match (e.kind(), parent) {
        (std::io::ErrorKind::PermissionDenied, Some(p)) => format!(
            "cannot be created: {} is not writable by uid {}",
            p.display(),
            // SAFETY: as above.
            unsafe { libc::geteuid() }
        ),
        (_, Some(p)) if p.is_file() => {
            format!("cannot be created: {} is a file", p.display())
        }
        _ => format!("cannot be created: {}", plain(e)),
    }
}

/// access(2) with W_OK and X_OK: what the broker needs to create files inside.
fn writable(path: &Path) -> bool {
    let Ok(c) = std::ffi::CString::new(path.as_os_str().as_bytes()) else {
        return false;
    };
    // SAFETY: `c` is a valid NUL-terminated string that outlives the call.
    unsafe { libc::access(c.as_ptr(), libc::W_OK | libc::X_OK) == 0 }
}

fn lock(path: &Path) -> Result<DirLock, StoreError> {
    let lock_path = path.join(LOCK_FILE);
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&lock_path)
        .map_err(|e| {
            data_dir_error(
                path,
                DataDirProblem::Unusable,
                format!("cannot open {}: {}", lock_path.display(), plain(&e)),
            )
        })?;
    // SAFETY: flock on a descriptor this function owns.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        let e = std::io::Error::last_os_error();
        if e.kind() != std::io::ErrorKind::WouldBlock {
            return Err(data_dir_error(
                path,
                DataDirProblem::Unusable,
                format!("cannot lock {}: {}", lock_path.display(), plain(&e)),
            ));
        }
        let mut owner = String::new();
        let _ = file.read_to_string(&mut owner);
        let pid = match owner.trim().parse::<u32>() {
            Ok(pid) => format!(" (pid {pid})"),
            Err(_) => String::new(),
        };
        return Err(data_dir_error(
            path,
            DataDirProblem::InUse,
            format!("is already in use by another squall process{pid}"),
        ));
    }
    // Ours now: record who holds it, for the next one that tries.
    let recorded = file
        .set_len(0)
        .and_then(|()| file.rewind())
        .and_then(|()| writeln!(file, "{}", std::process::id()));
    if let Err(e) = recorded {
        tracing::warn!(path = %lock_path.display(), error = %e, "could not record the pid in the lock file");
    }
    Ok(DirLock { _file: file })
}

/// An error about the data directory at `path`.
pub(crate) fn data_dir_error(path: &Path, problem: DataDirProblem, reason: String) -> StoreError {
    StoreError::DataDir {
        path: PathBuf::from(path),
        problem,
        reason,
    }
}

/// An I/O error as words: the OS's description without sled's source location
/// (`sled:<file>.rs:<line> -> `) or the errno suffix.
pub(crate) fn plain(e: &std::io::Error) -> String {
    let text = e.to_string();
    let text = match text.rsplit_once(" -> ") {
        Some((location, rest)) if location.starts_with("sled:") || location.contains(".rs:") => {
            rest.to_owned()
        }
        _ => text,
    };
    match text.find(" (os error ") {
        Some(i) => text[..i].to_owned(),
        None => text,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sled_locations_and_errno_are_dropped() {
        let e = std::io::Error::other(
            "sled:/root/.cargo/registry/src/x/sled-1.0.0-alpha.124/src/heap.rs:744 -> Resource temporarily unavailable (os error 11)",
        );
        assert_eq!(plain(&e), "Resource temporarily unavailable");
        let e = std::io::Error::from_raw_os_error(libc::EACCES);
        assert_eq!(plain(&e), "Permission denied");
    }

    #[test]
    fn a_file_is_not_a_data_directory_and_a_second_lock_names_the_pid() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("file");
        std::fs::write(&file, b"x").unwrap();
        let e = prepare(&file).unwrap_err().to_string();
        assert!(e.contains("is not a directory"), "{e}");
        assert!(e.contains(&file.display().to_string()), "{e}");
        let e = prepare(&file.join("below")).unwrap_err().to_string();
        assert!(e.contains("is a file"), "{e}");

        let data = dir.path().join("data");
        let held = prepare(&data).unwrap();
        let e = prepare(&data).unwrap_err();
        assert!(
            matches!(
                &e,
                StoreError::DataDir {
                    problem: DataDirProblem::InUse,
                    ..
                }
            ),
            "{e:?}"
        );
        let pid = std::process::id();
        assert!(
            e.to_string().ends_with(&format!(
                "is already in use by another squall process (pid {pid})"
            )),
            "{e}"
        );
        drop(held);
        prepare(&data).expect("free again once the holder is gone");
    }
}
