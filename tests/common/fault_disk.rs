//! A broker data directory on the fault filesystem (`squall-faultfs`), a seeded publish
//! and consume load whose clients keep a ledger of what the broker confirmed, and the
//! checker that compares a restarted broker against that ledger. Used by
//! `tests/power_loss.rs` and `tests/storage_faults.rs`; the filesystem itself lives in
//! `tests/faultfs/`.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use squall_client::{Client, ErrorCode, ReconnectPolicy, TaskState};
use squall_faultfs::FaultFs;

/// A temporary backing directory, a mount point, and the fault filesystem mounted there.
pub struct FaultDisk {
    _dir: tempfile::TempDir,
    backing: PathBuf,
    mnt: PathBuf,
    fs: Option<FaultFs>,
    /// Queues that earlier rounds on this disk drained to empty (see [`check_drained`]).
    pub drained: Vec<String>,
}

impl FaultDisk {
    /// Mounts a fresh fault filesystem, or says loudly why the test is skipped. Under CI
    /// (`CI` set) a missing FUSE fails the test instead: CI must have it.
    pub fn new(test: &str) -> Option<FaultDisk> {
        if let Some(why) = squall_faultfs::unavailable() {
            assert!(
                std::env::var_os("CI").is_none(),
                "{test}: FUSE is required in CI but {why}"
            );
            eprintln!(
                "\n*** SKIPPED {test}: FUSE is unavailable here ({why}); \
                 the power-loss and storage-fault tests did not run ***\n"
            );
            return None;
        }
        let dir = tempfile::tempdir().expect("temp dir");
        let backing = dir.path().join("backing");
        let mnt = dir.path().join("mnt");
        std::fs::create_dir(&backing).unwrap();
        std::fs::create_dir(&mnt).unwrap();
        // The data directory exists before the broker starts, as an operator's would.
        std::fs::create_dir(backing.join("data")).unwrap();
        let fs = FaultFs::mount(&backing, &mnt).expect("mount the fault filesystem");
        Some(FaultDisk {
            _dir: dir,
            backing,
            mnt,
            fs: Some(fs),
            drained: Vec::new(),
        })
    }

    pub fn fs(&self) -> &FaultFs {
        self.fs.as_ref().expect("mounted")
    }

    /// The broker's data directory, inside the mount.
    pub fn data_dir(&self) -> PathBuf {
        self.mnt.join("data")
    }

    pub fn backing(&self) -> &Path {
        &self.backing
    }

    /// Waits (at most 60 s) for the cut armed after `writes` writes; its report.
    pub async fn wait_for_cut(&self, writes: u64) -> squall_faultfs::CutReport {
        let t = Instant::now();
        loop {
            if let Some(report) = self.fs().cut_report() {
                return report;
            }
            assert!(
                t.elapsed() < Duration::from_secs(60),
                "no cut after {writes} writes: {:?} of them still to come after 60 s",
                self.fs().writes_before_cut()
            );
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }

    /// Unmounts and mounts again over what the backing directory holds (after a cut:
    /// what a power loss left).
    pub fn remount(&mut self) {
        drop(self.fs.take());
        self.fs = Some(FaultFs::mount(&self.backing, &self.mnt).expect("mount again"));
    }
}

/// The seeds of the power cuts of one test: `SQUALL_POWER_SEED` alone reproduces one
/// cut; otherwise `SQUALL_POWER_CUTS` (default `default`) seeds from a random base.
pub fn seeds(default: usize) -> Vec<u64> {
    if let Some(seed) = std::env::var("SQUALL_POWER_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
    {
        return vec![seed];
    }
    let n = std::env::var("SQUALL_POWER_CUTS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default);
    let base: u64 = rand::random::<u32>() as u64;
    (0..n as u64).map(|i| base * 1000 + i).collect()
}

/// The payload of producer `p`'s `seq`th publish: a header naming it and filler derived
/// from it, so that any delivered task can be checked whole.
pub fn payload(p: u32, seq: u64) -> Vec<u8> {
    let mut out = format!("p{p}s{seq}|").into_bytes();
    let len = 64 + (seq.wrapping_mul(7919) % 1500) as usize;
    let mut x = (u64::from(p) << 32 ^ seq).wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    for _ in 0..len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.push(x as u8);
    }
    out
}

/// The (producer, seq) of a payload that is whole, or why it is not.
pub fn whole(bytes: &[u8]) -> Result<(u32, u64), String> {
    let bar = bytes
        .iter()
        .position(|&b| b == b'|')
        .ok_or_else(|| format!("no header in {} bytes", bytes.len()))?;
    let head = std::str::from_utf8(&bytes[..bar]).map_err(|e| e.to_string())?;
    let (p, s) = head
        .strip_prefix('p')
        .and_then(|h| h.split_once('s'))
        .ok_or_else(|| format!("bad header {head:?}"))?;
    let key = (
        p.parse().map_err(|_| format!("bad producer in {head:?}"))?,
        s.parse().map_err(|_| format!("bad seq in {head:?}"))?,
    );
    if payload(key.0, key.1) != bytes {
        return Err(format!("{head}: {} bytes, not whole", bytes.len()));
    }
    Ok(key)
}

/// What the clients were told.
#[derive(Default)]
pub struct Ledger {
    /// Confirmed publishes: task id -> (producer, seq).
    pub confirmed: HashMap<u64, (u32, u64)>,
    /// Publishes refused with an error code: (producer, seq) -> code.
    pub refused: HashMap<(u32, u64), ErrorCode>,
    /// Acks sent (an unconfirmed one may have become durable).
    pub ack_sent: HashSet<u64>,
    /// Confirmed acks.
    pub acked: HashSet<u64>,
    /// Acks refused with an error code.
    pub ack_refused: HashMap<u64, ErrorCode>,
    /// Deliveries that were not whole, or of a task whose ack was confirmed, or of a
    /// publish that was refused.
    pub violations: Vec<String>,
}

/// Producers and consumers on one queue of a running broker.
pub struct Load {
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    pub ledger: Arc<Mutex<Ledger>>,
}

pub async fn client(addr: SocketAddr) -> Client {
    Client::builder()
        .request_timeout(Duration::from_secs(10))
        .reconnect(ReconnectPolicy::disabled())
        .connect(addr)
        .await
        .expect("connect")
}

impl Load {
    /// Starts `producers` publishing connections (each one publish at a time) and
    /// `consumers` subscriptions that ack every delivery.
    pub async fn start(addr: SocketAddr, queue: &str, producers: u32, consumers: u32) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let ledger = Arc::new(Mutex::new(Ledger::default()));
        let mut tasks = Vec::new();
        for p in 0..producers {
            let c = client(addr).await;
            let (stop, ledger, queue) = (stop.clone(), ledger.clone(), queue.to_owned());
            tasks.push(tokio::spawn(async move {
                let mut seq = 0;
                while !stop.load(Ordering::Relaxed) {
                    match c.publish(queue.as_str(), payload(p, seq)).await {
                        Ok(done) => {
                            ledger.lock().confirmed.insert(done.id, (p, seq));
                        }
                        Err(e) => {
                            if let Some(code) = e.code() {
                                ledger.lock().refused.insert((p, seq), code);
                            } else {
                                break; // the connection is gone
                            }
                            tokio::time::sleep(Duration::from_millis(5)).await;
                        }
                    }
                    seq += 1;
                }
            }));
        }
        for _ in 0..consumers {
            let c = client(addr).await;
            let (stop, ledger) = (stop.clone(), ledger.clone());
            let mut sub = c.subscribe(queue).prefetch(16).await.expect("subscribe");
            tasks.push(tokio::spawn(async move {
                let _keep = &c;
                while !stop.load(Ordering::Relaxed) {
                    let d = match tokio::time::timeout(Duration::from_millis(100), sub.recv()).await
                    {
                        Err(_) => continue,
                        Ok(Some(Ok(d))) => d,
                        Ok(_) => break,
                    };
                    let id = d.id();
                    {
                        let mut l = ledger.lock();
                        note_delivery(&mut l, id, d.payload());
                        l.ack_sent.insert(id);
                    }
                    match d.ack().await {
                        Ok(()) => {
                            ledger.lock().acked.insert(id);
                        }
                        Err(e) => match e.code() {
                            Some(code) => {
                                // Refused: the ack has not happened, the task must stay.
                                let mut l = ledger.lock();
                                l.ack_refused.insert(id, code);
                                l.ack_sent.remove(&id);
                            }
                            None => break,
                        },
                    }
                }
            }));
        }
        Load {
            stop,
            tasks,
            ledger,
        }
    }

    pub fn confirmed(&self) -> usize {
        self.ledger.lock().confirmed.len()
    }

    /// Waits until `n` publishes are confirmed (failing the test after 30 s).
    pub async fn wait_confirmed(&self, n: usize) {
        let t = Instant::now();
        while self.confirmed() < n {
            assert!(
                t.elapsed() < Duration::from_secs(30),
                "only {} of {n} publishes confirmed",
                self.confirmed()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Stops the clients (the broker may be gone) and returns the ledger.
    pub async fn stop(self) -> Ledger {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.tasks {
            let _ = tokio::time::timeout(Duration::from_secs(15), t).await;
        }
        std::mem::take(&mut *self.ledger.lock())
    }
}

fn note_delivery(l: &mut Ledger, id: u64, payload: &[u8]) {
    match whole(payload) {
        Err(e) => l.violations.push(format!("task {id} is not whole: {e}")),
        Ok(key) => {
            if l.acked.contains(&id) {
                l.violations.push(format!(
                    "task {id} delivered again after its ack was confirmed"
                ));
            }
            if let Some(code) = l.refused.get(&key) {
                l.violations.push(format!(
                    "task {id} {key:?} delivered, but its publish was refused with {code:?}"
                ));
            }
        }
    }
}

/// What the restarted broker holds, against the ledger.
#[derive(Debug, Default)]
pub struct Verdict {
    /// Confirmed publishes the broker does not know (and whose ack was never sent).
    pub lost: Vec<u64>,
    /// Tasks whose ack was confirmed but that are pending again.
    pub unacked: Vec<u64>,
    /// Deliveries that were not whole, revived or refused (see [`Ledger::violations`]).
    pub violations: Vec<String>,
    /// Confirmed publishes checked.
    pub checked: usize,
    /// Tasks drained after the restart.
    pub drained: usize,
}

impl Verdict {
    pub fn is_clean(&self) -> bool {
        self.lost.is_empty() && self.unacked.is_empty() && self.violations.is_empty()
    }
}

/// Earlier rounds drained these queues and stopped the broker cleanly: they must still
/// be empty. A store that goes back in time after a cut (as sled's metadata once did,
/// one clean restart after the cut) fills them again.
pub async fn check_drained(addr: SocketAddr, queues: &[String], v: &mut Verdict) {
    let c = client(addr).await;
    for queue in queues {
        match c.queue(queue).await {
            Ok(info) if info.ready + info.delayed + info.leased == 0 => {}
            Ok(info) => v.violations.push(format!(
                "{queue}, drained in an earlier round, holds {info:?}"
            )),
            // An empty queue with no settings of its own leaves nothing on disk (its
            // acks kept no record), so after a restart it does not exist: still empty.
            Err(e) if e.code() == Some(squall_client::ErrorCode::NotFound) => {}
            Err(e) => v.violations.push(format!(
                "{queue}, drained in an earlier round, is gone: {e}"
            )),
        }
    }
    c.close().await;
}

/// Asks the restarted broker at `addr` about every confirmed publish of the ledger,
/// then drains `queue`, checking every delivery.
pub async fn check(addr: SocketAddr, queue: &str, ledger: &mut Ledger) -> Verdict {
    let c = client(addr).await;
    let mut v = Verdict::default();
    let mut ids: Vec<u64> = ledger.confirmed.keys().copied().collect();
    ids.sort_unstable();
    // Confirmed, not acked, pending: the drain must deliver each of them.
    let mut awaited = std::collections::BTreeSet::new();
    for id in ids {
        v.checked += 1;
        let status = c.task(id).await.expect("task status");
        if status.state != TaskState::Unknown && status.queue != queue {
            // The store went back in time and handed the id out again (a sled
            // metadata snapshot lost to a cut did this once): the confirmed task is gone.
            v.violations.push(format!(
                "confirmed task {id} of {queue} is now a task of {:?}",
                status.queue
            ));
            v.lost.push(id);
            continue;
        }
        match status.state {
            TaskState::Unknown if !ledger.ack_sent.contains(&id) => v.lost.push(id),
            TaskState::Ready | TaskState::Delayed | TaskState::Leased | TaskState::Dead
                if ledger.acked.contains(&id) =>
            {
                v.unacked.push(id)
            }
            TaskState::Ready | TaskState::Delayed | TaskState::Leased => {
                awaited.insert(id);
            }
            _ => {}
        }
    }
    // Drain: every pending task comes whole, none whose ack was confirmed.
    let mut sub = c.subscribe(queue).prefetch(64).await.expect("subscribe");
    let t = Instant::now();
    loop {
        let info = c.queue(queue).await.expect("queue info");
        if info.ready + info.delayed + info.leased == 0 {
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "drain: still {info:?}"
        );
        while let Ok(Some(Ok(d))) =
            tokio::time::timeout(Duration::from_millis(200), sub.recv()).await
        {
            v.drained += 1;
            awaited.remove(&d.id());
            note_delivery(ledger, d.id(), d.payload());
            if ledger.acked.contains(&d.id()) && !v.unacked.contains(&d.id()) {
                v.unacked.push(d.id());
            }
            ledger.acked.insert(d.id());
            d.ack().await.expect("ack while draining");
        }
    }
    for id in awaited {
        // The queue's counts said empty while the task said pending (a store gone back
        // in time once did this): never delivered is lost.
        v.violations.push(format!(
            "confirmed task {id} was pending but the drain never got it"
        ));
        v.lost.push(id);
    }
    v.violations.append(&mut ledger.violations);
    v.lost.sort_unstable();
    v.unacked.sort_unstable();
    c.close().await;
    v
}
