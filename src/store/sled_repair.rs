//! A repair of sled's metadata directory, run before sled opens it, for a power cut
//! that sled 1.0.0-alpha.124 does not survive. Only file names are touched here (never
//! file contents); sled's own recovery does the rest. Nothing else about sled lives here.
//!
//! sled keeps its metadata as `metadata/snapshot_ID` plus `metadata/log_ID` files. Its
//! recovery folds the snapshot and every newer log into a new snapshot named after
//! the newest log, then deletes the old snapshot. Two gaps, both found by
//! `tests/power_loss.rs`:
//! - When no log is newer than the snapshot (a cut undid the creation of the empty log
//!   sled makes at every open or rotation: it does not sync the directory after it),
//!   the new snapshot has the old one's name and is deleted right after it was written.
//!   The data is then only in memory: the next open finds an older snapshot or none
//!   and the store goes back in time (or sled hangs on what is left).
//! - An older snapshot whose removal a cut undid is meant to be removed by sled, but
//!   sled removes it by a path relative to the working directory, so it stays, and is
//!   what the next open falls back to after the first gap.
//!
//! The repair removes every snapshot older than the newest (the newest was synced and
//! renamed into place after it contained them) and, when no log is newer than the
//! newest snapshot, creates an empty one, so sled's recovery writes the next snapshot
//! under a new name. Pinned to sled's file names by the test below: an upgrade of sled
//! that renames them fails it.

use std::fs::{self, File};
use std::io;
use std::path::Path;

/// sled's metadata directory inside the data directory.
const METADATA_DIR: &str = "metadata";
const SNAPSHOT_PREFIX: &str = "snapshot_";
const LOG_PREFIX: &str = "log_";

/// The id of a sled metadata file named `prefix` + 16 hex digits (not a `.tmp` one).
fn id_after(name: &str, prefix: &str) -> Option<u64> {
    let digits = name.strip_prefix(prefix)?;
    if digits.len() != 16 {
        return None;
    }
    u64::from_str_radix(digits, 16).ok()
}

/// What the metadata directory holds: its snapshots' ids and its newest log's id.
fn listing(dir: &Path) -> io::Result<(Vec<u64>, Option<u64>)> {
    let mut snapshots = Vec::new();
    let mut newest_log = None;
    for entry in fs::read_dir(dir)? {
        let name = entry?.file_name();
        let Some(name) = name.to_str() else { continue };
        if let Some(id) = id_after(name, SNAPSHOT_PREFIX) {
            snapshots.push(id);
        } else if let Some(id) = id_after(name, LOG_PREFIX) {
            newest_log = newest_log.max(Some(id));
        }
    }
    Ok((snapshots, newest_log))
}

/// Repairs `data_dir/metadata` (see the module docs); a missing directory (a new
/// store) needs nothing. Runs under the data directory's lock, before sled opens.
pub(super) fn repair(data_dir: &Path) -> io::Result<()> {
    let dir = data_dir.join(METADATA_DIR);
    let (snapshots, newest_log) = match listing(&dir) {
        Ok(found) => found,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    let Some(&newest) = snapshots.iter().max() else {
        return Ok(());
    };
    let mut changed = false;
    for &stale in snapshots.iter().filter(|&&id| id < newest) {
        tracing::warn!(
            stale,
            newest,
            "removing a sled metadata snapshot older than the newest (a power cut undid its \
             removal)"
        );
        fs::remove_file(dir.join(format!("{SNAPSHOT_PREFIX}{stale:016x}")))?;
        changed = true;
    }
    if newest_log.is_none_or(|log| log <= newest) {
        let next = newest + 1;
        tracing::warn!(
            snapshot = newest,
            log = next,
            "sled's metadata has no log after its newest snapshot (a power cut undid its \
             creation): creating an empty one so that sled keeps the snapshot"
        );
        File::create(dir.join(format!("{LOG_PREFIX}{next:016x}")))?.sync_all()?;
        changed = true;
    }
    if changed {
        File::open(&dir)?.sync_all()?;
    }
    let (snapshots, newest_log) = listing(&dir)?;
    debug_assert_eq!(snapshots, [newest], "one snapshot is left");
    debug_assert!(newest_log > Some(newest), "a log follows the snapshot");
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use tempfile::TempDir;

    use super::*;
    use crate::store::tests::{commit, config, insert, reopen, TestDone};
    use crate::store::{FsyncMode, Muts};

    fn files(dir: &Path, prefix: &str) -> Vec<(u64, PathBuf)> {
        let mut found: Vec<(u64, PathBuf)> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter_map(|p| {
                let id = id_after(p.file_name()?.to_str()?, prefix)?;
                Some((id, p))
            })
            .collect();
        found.sort();
        found
    }

    /// The cut found by `tests/power_loss.rs`, made by hand: sled's open after a cut
    /// finds its newest snapshot, an older one whose removal was undone, and no log
    /// after them (the empty log's creation was undone). Both opens after it must
    /// find every task. Negative control: without `repair` in `Store::open` the second
    /// open finds none (sled fell back to the stale snapshot).
    #[test]
    fn a_cut_that_undoes_sleds_new_log_and_old_snapshot_removal_loses_nothing() {
        let dir = TempDir::new().unwrap();
        let cfg = config(&dir, FsyncMode::Always);
        let meta = cfg.path.join(METADATA_DIR);
        {
            let store = reopen(&cfg);
            assert_eq!(store.allocate_ids(50), 1);
            let writer = store.start_writer::<TestDone>();
            let inserts = (1..=50).map(|id| insert(id, "q")).collect();
            commit(&writer.handle(), Muts::Many(inserts)).unwrap();
            writer.shutdown().unwrap();
        }
        // What the next open will remove: its snapshot, kept to put back.
        let stale: Vec<(PathBuf, Vec<u8>)> = files(&meta, SNAPSHOT_PREFIX)
            .into_iter()
            .map(|(_, p)| {
                let bytes = fs::read(&p).unwrap();
                (p, bytes)
            })
            .collect();
        assert_eq!(stale.len(), 1, "one snapshot after a clean stop");
        drop(reopen(&cfg));
        let (snapshots, logs) = (files(&meta, SNAPSHOT_PREFIX), files(&meta, LOG_PREFIX));
        assert_eq!(snapshots.len(), 1, "{snapshots:?}");
        assert_ne!(snapshots[0].1, stale[0].0, "a newer snapshot");
        // The cut: the empty new log goes, the old snapshot comes back.
        for (id, log) in logs {
            assert!(id > snapshots[0].0, "{log:?} is newer than the snapshot");
            assert_eq!(fs::metadata(&log).unwrap().len(), 0, "{log:?} is empty");
            fs::remove_file(log).unwrap();
        }
        for (path, bytes) in &stale {
            fs::write(path, bytes).unwrap();
        }
        for open in 1..=2 {
            let store = reopen(&cfg);
            let found = store.recover(|_, _| {}).unwrap().tasks;
            assert_eq!(found, 50, "open {open} after the cut");
        }
        let (snapshots, logs) = listing(&meta).unwrap();
        assert_eq!(snapshots.len(), 1, "{snapshots:?}");
        assert!(logs > snapshots.first().copied(), "{logs:?} {snapshots:?}");
    }

    #[test]
    fn only_sleds_metadata_names_count() {
        assert_eq!(
            id_after("snapshot_000000000000001f", SNAPSHOT_PREFIX),
            Some(31)
        );
        assert_eq!(
            id_after("snapshot_000000000000001f.tmp", SNAPSHOT_PREFIX),
            None
        );
        assert_eq!(id_after("log_0000000000000002", LOG_PREFIX), Some(2));
        assert_eq!(id_after("log_2", LOG_PREFIX), None);
        assert_eq!(id_after("DO_NOT_PUT_YOUR_FILES_HERE", LOG_PREFIX), None);
    }
}
