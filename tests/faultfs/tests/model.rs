//! The fault filesystem's model, checked directly: what a power cut keeps and drops,
//! torn writes, directory entries, injected errors and counted syncs.

use std::fs::{self, File};
use std::io::{ErrorKind, Write};
use std::os::unix::fs::FileExt;
use std::path::Path;

use squall_faultfs::{FaultFs, Op, Tear};

/// Mounts over a fresh backing directory, or skips loudly where FUSE cannot be used
/// (under CI that fails instead).
fn mount(dir: &Path) -> Option<FaultFs> {
    if let Some(why) = squall_faultfs::unavailable() {
        assert!(
            std::env::var_os("CI").is_none(),
            "FUSE is required in CI: {why}"
        );
        eprintln!("\n*** SKIPPED faultfs model test: {why} ***\n");
        return None;
    }
    fs::create_dir_all(dir.join("backing")).unwrap();
    fs::create_dir_all(dir.join("mnt")).unwrap();
    Some(FaultFs::mount(&dir.join("backing"), &dir.join("mnt")).unwrap())
}

fn sync_dir(path: &Path) {
    File::open(path).unwrap().sync_all().unwrap();
}

#[test]
fn a_power_cut_keeps_exactly_what_was_synced() {
    let dir = tempfile::tempdir().unwrap();
    let Some(ffs) = mount(dir.path()) else { return };
    let mnt = ffs.path().to_owned();
    // Synced file, synced entry.
    let mut a = File::create(mnt.join("a")).unwrap();
    a.write_all(b"durable").unwrap();
    a.sync_data().unwrap();
    sync_dir(&mnt);
    // Then more writes to it, not synced: an overwrite and an append.
    a.write_all_at(b"XX", 0).unwrap();
    a.write_all_at(b" and more", 7).unwrap();
    // A file whose data is synced but whose entry is not.
    let mut b = File::create(mnt.join("b")).unwrap();
    b.write_all(b"orphan").unwrap();
    b.sync_all().unwrap();
    // A synced entry removed without a directory sync comes back.
    fs::remove_file(mnt.join("a")).unwrap_or(());
    assert_eq!(fs::read(mnt.join("b")).unwrap(), b"orphan");
    drop((a, b));
    let report = ffs.cut_power(Tear::None);
    assert!(report.unsynced_bytes >= 11, "{report:?}");
    assert_eq!(report.entries_undone.len(), 2, "{report:?}");
    drop(ffs);

    let backing = dir.path().join("backing");
    assert_eq!(fs::read(backing.join("a")).unwrap(), b"durable");
    assert!(!backing.join("b").exists(), "an entry never synced is gone");
}

#[test]
fn a_cut_during_an_armed_write_tears_it_at_most() {
    let dir = tempfile::tempdir().unwrap();
    let Some(ffs) = mount(dir.path()) else { return };
    let mnt = ffs.path().to_owned();
    let f = File::create(mnt.join("log")).unwrap();
    f.sync_all().unwrap();
    sync_dir(&mnt);
    f.write_all_at(&[1u8; 512], 0).unwrap();
    f.sync_data().unwrap();
    ffs.arm_cut(2, Tear::Seeded(7));
    f.write_all_at(&[2u8; 512], 512).unwrap();
    let err = f.write_all_at(&[3u8; 4096], 1024).unwrap_err();
    assert_eq!(
        err.raw_os_error(),
        Some(libc::EIO),
        "the cut write never returns"
    );
    assert!(f.sync_data().is_err(), "nothing works after the cut");
    let report = ffs.cut_report().expect("the cut happened");
    drop(f);
    drop(ffs);
    let data = fs::read(dir.path().join("backing/log")).unwrap();
    assert_eq!(&data[..512], &[1u8; 512], "the synced write stays");
    // The kernel splits the 4 KiB write at the page boundary: the cut comes during
    // its first part.
    let (_, off, kept, len) = report.torn[0].clone();
    assert_eq!(off, 1024);
    assert!(kept < len, "a torn write is never whole");
    // The unsynced 512 bytes before it are gone (zeros where the file was extended).
    if data.len() > 512 {
        assert!(
            data[512..1024].iter().all(|&b| b == 0),
            "unsynced write kept"
        );
        assert!(data[1024..].iter().all(|&b| b == 3));
        assert_eq!(data.len(), 1024 + kept);
    }
}

#[test]
fn a_cut_armed_on_a_pattern_counts_only_writes_to_matching_paths() {
    let dir = tempfile::tempdir().unwrap();
    let Some(ffs) = mount(dir.path()) else { return };
    let mnt = ffs.path().to_owned();
    fs::create_dir(mnt.join("payload")).unwrap();
    let other = File::create(mnt.join("journal.log")).unwrap();
    let target = File::create(mnt.join("payload/0.dat")).unwrap();
    ffs.arm_cut_matching("payload/", 2, Tear::Seeded(1));
    for i in 0..10u64 {
        other.write_all_at(b"not counted", i * 16).unwrap();
    }
    target.write_all_at(b"first", 0).unwrap();
    assert!(ffs.cut_report().is_none(), "one matching write so far");
    other.write_all_at(b"still not counted", 512).unwrap();
    let err = target.write_all_at(b"second", 5).unwrap_err();
    assert_eq!(
        err.raw_os_error(),
        Some(libc::EIO),
        "the cut came at the second"
    );
    assert!(ffs.cut_report().is_some());
}

#[test]
fn faults_fail_matching_operations_from_the_chosen_one_and_syncs_are_counted() {
    let dir = tempfile::tempdir().unwrap();
    let Some(ffs) = mount(dir.path()) else { return };
    let mnt = ffs.path().to_owned();
    fs::create_dir(mnt.join("journal")).unwrap();
    ffs.fail(Op::Write, "journal/", libc::ENOSPC, 1);
    ffs.fail(Op::Create, "journal/seg2", libc::EIO, 0);
    let mut f = File::create(mnt.join("journal/seg1")).unwrap();
    f.write_all(b"first passes").unwrap();
    let err = f.write_all(b"second fails").unwrap_err();
    assert_eq!(err.kind(), ErrorKind::StorageFull);
    let err = File::create(mnt.join("journal/seg2")).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EIO));
    File::create(mnt.join("other"))
        .unwrap()
        .write_all(b"ok")
        .unwrap();
    // A rename onto a new name creates it; onto an existing name it does not.
    let err = fs::rename(mnt.join("other"), mnt.join("journal/seg2")).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EIO));
    File::create(mnt.join("journal/seg3")).unwrap();
    ffs.fail(Op::Create, "journal/seg3", libc::EIO, 0);
    fs::rename(mnt.join("other"), mnt.join("journal/seg3")).unwrap();
    ffs.clear_faults();
    f.write_all(b"passes again").unwrap();
    let before = ffs.syncs_matching("journal/");
    f.sync_data().unwrap();
    f.sync_data().unwrap();
    assert_eq!(ffs.syncs_matching("journal/") - before, 2);
    assert!(ffs.stats().injected >= 2);
}
