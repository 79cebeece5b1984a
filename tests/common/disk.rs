//! Small real file systems for storage tests: a tmpfs mounted by the test (it runs as
//! root in CI) and unmounted on drop, and a filler that uses up its space.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

/// A tmpfs mounted for the test; unmounted on drop.
pub struct Tmpfs(PathBuf);

impl Tmpfs {
    /// Mounts a tmpfs of `size` (as `mount -o size=` reads it) on `dir`; `None` where
    /// mounting is not permitted.
    pub fn mount(dir: &Path, size: &str) -> Option<Tmpfs> {
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        ok.then(|| Tmpfs(dir.to_owned()))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// Writes zeros into `path` until the file system is full.
pub fn fill(path: &Path) {
    let mut f = std::fs::File::create(path).unwrap();
    let chunk = vec![0u8; 256 * 1024];
    while f.write_all(&chunk).is_ok() {}
    let _ = f.sync_all();
}

/// Writes `bytes` of zeros into `path` (fails the test if they do not fit).
pub fn fill_bytes(path: &Path, bytes: u64) {
    let mut f = std::fs::File::create(path).unwrap();
    let chunk = vec![0u8; 64 * 1024];
    let mut left = bytes;
    while left > 0 {
        let n = left.min(chunk.len() as u64) as usize;
        f.write_all(&chunk[..n]).unwrap();
        left -= n as u64;
    }
    f.sync_all().unwrap();
}

/// Bytes free on the file system holding `dir`.
pub fn free_bytes(dir: &Path) -> u64 {
    let out = Command::new("df")
        .args(["--output=avail", "-B1"])
        .arg(dir)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .nth(1)
        .and_then(|l| l.trim().parse().ok())
        .unwrap()
}

/// A broker data directory on a small tmpfs of its own that the test fills and frees.
pub struct FullableDisk {
    /// The broker's data directory.
    pub data: PathBuf,
    filler: PathBuf,
    _tmpfs: Tmpfs,
    env: Vec<(&'static str, String)>,
}

impl FullableDisk {
    /// Under `dir`, a disk of `size` whose broker uses journal segments of `segment`;
    /// `None`, said loudly, where mounting is not permitted (not root). Under CI, which
    /// runs as root, that fails the test instead.
    pub fn new(dir: &Path, size: &str, segment: &str) -> Option<FullableDisk> {
        let mnt = dir.join("mnt");
        std::fs::create_dir(&mnt).unwrap();
        let Some(tmpfs) = Tmpfs::mount(&mnt, size) else {
            assert!(
                std::env::var_os("CI").is_none(),
                "CI runs as root: mounting a tmpfs must work"
            );
            eprintln!("\n*** SKIPPED: mounting a tmpfs is not permitted here (not root) ***\n");
            return None;
        };
        Some(FullableDisk {
            data: mnt.join("data"),
            filler: mnt.join("filler"),
            _tmpfs: tmpfs,
            env: vec![("SQUALL_JOURNAL_SEGMENT_BYTES", segment.to_owned())],
        })
    }

    /// The environment the broker needs.
    pub fn env(&self) -> Vec<(&str, &str)> {
        self.env.iter().map(|(k, v)| (*k, v.as_str())).collect()
    }

    /// The disk fills up.
    pub fn fill(&self) {
        fill(&self.filler)
    }

    /// Space returns.
    pub fn free(&self) {
        std::fs::remove_file(&self.filler).unwrap()
    }
}

/// Incompressible bytes (so that sled cannot squeeze them into no space).
pub fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}
