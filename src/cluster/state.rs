//! The Raft state machine: the queue state, held in this node's store. A committed
//! `Command::Jobs` entry is applied as one store group (its jobs sent together,
//! sharing the entry's mutations) through the store's own writer (its journal, then
//! sled), followed in the same group by `Mutation::Applied` (the entry's log id,
//! `M raft_applied`), so that the entry and the record of its application are one
//! atomic batch and a restart re-applies exactly from the entry after it. On the node
//! that proposed the entry, a job carries the submitter's completion (found in the
//! proposer's pending map), which therefore runs once the entry is committed and
//! applied here. `apply` returns once every job of its batch is applied; the store
//! syncs them within 50 milliseconds, not before (the entry is already on a
//! majority's synced Raft log: `Completion::durable_elsewhere`), and a member that
//! loses that unsynced tail applies the entries again at restart. A job the store
//! refuses is a storage error, which stops the Raft node (openraft's rule).
//!
//! The membership and its log id live beside the store in `<data_dir>/raft/state`
//! (replaced whole and synced when a membership entry is applied, and after a batch
//! that ends with an entry carrying no command, each time after a barrier job has
//! made everything before it durable in the store); the last applied entry is the
//! later of the file's and the store's.
//!
//! Snapshots (`snapshot.rs` for the file): building one asks the store's writer for a
//! dump from within `get_snapshot_builder`, which openraft calls between two `apply`s,
//! so the dump is exactly the state at the applied id. Installing one (a member far
//! behind or wiped) checks the received file whole, makes it the current snapshot,
//! writes the `installing` mark, has the writer replace the store's content with the
//! dump (durable when it answers), records the membership and applied id, and removes
//! the mark. A node that finds the mark at start (it stopped half-way) installs the
//! current snapshot again before it starts (`resume_install`).

use std::io::{self, Seek};
use std::path::{Path, PathBuf};

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Instant;

use openraft::storage::{RaftStateMachine, Snapshot};
use openraft::{
    AnyError, CommittedLeaderId, EntryPayload, ErrorSubject, ErrorVerb, SnapshotMeta,
    StorageIOError,
};
use prost::Message;
use squall_proto::cluster as pb;
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

use super::codec;
use super::netting::{self, HeldJobs};
use super::replicate::{Applying, Latch, Pending, Signal};
use super::snapshot::{
    self as file, snap_err, SnapshotBuilder, SnapshotCounters, RECEIVING, SNAPSHOT,
};
use super::timings::Timings;
use super::types::{
    Command, Entry, Job, LogId, Member, NodeId, StorageError, StoredMembership, TypeConfig,
};
use crate::histogram::micros;
use crate::model::Mutation;
use crate::store::{Muts, Store, StoreError, WriterHandle};

const STATE: &str = "state";
/// Present while the store's content may be part old, part the current snapshot's.
const INSTALLING: &str = "installing";

/// What the state machine holds.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Machine {
    applied: Option<LogId>,
    membership: StoredMembership,
}

/// The state machine handed to openraft.
pub struct StateMachine<C: Applying> {
    dir: PathBuf,
    machine: Machine,
    /// The store's own writer (not routed through Raft).
    writer: WriterHandle<C>,
    /// Completions of this broker run's proposals, by proposal number.
    pending: Pending<C>,
    node: NodeId,
    run: u64,
    counters: Arc<SnapshotCounters>,
    timings: Arc<Timings>,
    /// Held while the current snapshot file is replaced: by an install here, and by a
    /// build, which openraft runs beside the state machine (`SnapshotBuilder`).
    replacing: Arc<parking_lot::Mutex<()>>,
    /// Committed entries of another leader not yet submitted to the store.
    deferred: Arc<Deferred<C>>,
}

/// Committed entries of another leader that a member holds back, to submit several
/// as one store group in which neither the publish nor the ack of a task settled
/// within the group is written: `netting.rs` takes such tasks out of the entries
/// received as they came (`Command::Received`, never decoded into store jobs), and
/// the store's `WriterLoop::find_netted` nets those of decoded ones. Shared by the
/// state machine, the flush timer ([`run_deferred`]) and the node's shutdown
/// ([`Deferred::flush_now`]). Held at most [`DEFER_FOR`], [`DEFER_MUTATIONS`] mutations or [`DEFER_BYTES`] of
/// payloads; submitted before anything that needs the store to hold every applied
/// entry: an entry of this node's own (it leads: `lead.rs` rebuilds its engine from
/// the store once its first entry is applied), a blank or membership entry (the state
/// file records it), a snapshot build, and a shutdown. Dropped by a snapshot install
/// (older than the snapshot). What a kill loses is applied again at restart from the
/// Raft log (the store's `M raft_applied` says where from), as an unsynced store tail is.
pub struct Deferred<C: Applying> {
    held: parking_lot::Mutex<Held>,
    writer: WriterHandle<C>,
    /// Wakes the flush timer when the first entry is held.
    wake: tokio::sync::Notify,
    /// A flush the timer submitted that the store refused: the next `apply` reports it
    /// (a storage error, which stops the Raft node).
    failure: parking_lot::Mutex<Option<(LogId, StoreError)>>,
    /// The latches of the timer's flushes not yet checked by the state machine:
    /// registered under the `held` lock, so that once a group the state machine
    /// submits after its own flush call is applied, every one of them is complete and
    /// its failure known (the writer applies groups in order), whether or not the
    /// timer task has looked yet.
    timer_flushes: parking_lot::Mutex<Vec<Arc<Latch>>>,
}

#[derive(Default)]
struct Held {
    entries: Vec<(LogId, HeldJobs)>,
    mutations: usize,
    bytes: usize,
    since: Option<Instant>,
}

/// What the log messages call the entries a member holds back.
const HELD: &str = "held-back committed entries";

/// Most mutations held back before they are submitted.
pub const DEFER_MUTATIONS: usize = 16_384;
/// Most payload bytes held back before they are submitted.
pub const DEFER_BYTES: usize = 8 * 1024 * 1024;
/// Longest an entry is held back.
pub const DEFER_FOR: std::time::Duration = std::time::Duration::from_millis(50);

impl<C: Applying> Deferred<C> {
    fn new(writer: WriterHandle<C>) -> Deferred<C> {
        Deferred {
            held: parking_lot::Mutex::default(),
            writer,
            wake: tokio::sync::Notify::new(),
            failure: parking_lot::Mutex::new(None),
            timer_flushes: parking_lot::Mutex::default(),
        }
    }

    /// Holds entry `log_id`; true when the bounds say it is time to submit.
    fn hold(&self, log_id: LogId, jobs: HeldJobs) -> bool {
        let mut held = self.held.lock();
        debug_assert!(held
            .entries
            .last()
            .is_none_or(|(last, _)| last.index < log_id.index));
        held.mutations += jobs.mutations();
        held.bytes += jobs.payload_bytes();
        held.entries.push((log_id, jobs));
        if held.since.is_none() {
            held.since = Some(Instant::now());
            self.wake.notify_one();
        }
        held.mutations >= DEFER_MUTATIONS || held.bytes >= DEFER_BYTES
    }

    /// When the oldest held entry must be submitted, if any is held.
    fn due(&self) -> Option<Instant> {
        self.held.lock().since.map(|since| since + DEFER_FOR)
    }

    /// Submits the held entries as one store group (their netted tasks taken out:
    /// `netting::group`), followed by the record that the last of them is applied,
    /// each job expected by `applied`'s latch (made if none).
    /// Under the lock, so that two flushes reach the writer in the log's order.
    /// False if a received job did not decode: nothing was submitted, and the
    /// failure is in the latch.
    #[must_use]
    fn flush(&self, applied: &mut Applied) -> bool {
        self.flush_as(applied, false)
    }

    /// [`Deferred::flush`]; `timer`: the timer's, whose latch the state machine
    /// checks later ([`Deferred::timer_failure`]).
    pub(super) fn flush_as(&self, applied: &mut Applied, timer: bool) -> bool {
        let mut held = self.held.lock();
        let Some(&(last, _)) = held.entries.last() else {
            return true;
        };
        let (latch, _) = applied.get_or_insert_with(Latch::new);
        if timer {
            self.timer_flushes.lock().push(latch.clone());
        }
        let mut together = match netting::group(&held.entries) {
            Ok(jobs) => {
                let mut together = Vec::with_capacity(jobs.len() + 1);
                for (log_id, muts) in jobs {
                    together.push((muts, Some(C::applying(None, latch.expect(log_id)))));
                }
                together
            }
            Err(e) => {
                // Nothing of them reaches the store, nor the record that they were
                // applied: the failure stops the Raft node (`settle`), and a restart
                // applies them again from the log.
                let failure = StoreError::Io(Arc::new(io::Error::new(
                    io::ErrorKind::InvalidData,
                    e.to_string(),
                )));
                latch.expect(e.0).tell(Err(failure));
                *held = Held::default();
                return false;
            }
        };
        together.push((
            Muts::One(Mutation::Applied {
                term: last.leader_id.term,
                node: last.leader_id.node_id,
                index: last.index,
            }),
            None,
        ));
        *held = Held::default();
        self.writer.submit_together(together);
        true
    }

    /// Submits what is held and waits until the store applied it: the node's
    /// shutdown, once its Raft node stopped applying. A failure is logged.
    pub async fn flush_now(&self) {
        let mut applied = None;
        let _ = self.flush(&mut applied);
        // A failure is logged by `settle`; nothing applies after a shutdown.
        let _ = StateMachine::<C>::settle(&mut applied).await;
    }

    /// The first failure of the timer's flushes submitted before the last flush call
    /// of the state machine, once a group it submitted after that call is applied
    /// (then they are all complete); forgets them.
    fn timer_failure(&self) -> Option<(LogId, StoreError)> {
        let latches = std::mem::take(&mut *self.timer_flushes.lock());
        latches.iter().find_map(|latch| latch.failure())
    }

    /// Forgets what is held (a snapshot about to be installed holds all of it).
    fn drop_held(&self) {
        *self.held.lock() = Held::default();
    }
}

/// Submits held-back entries once they are [`DEFER_FOR`] old when no `apply` did
/// (the leader went quiet), until `stop`.
pub async fn run_deferred<C: Applying>(deferred: Arc<Deferred<C>>, stop: CancellationToken) {
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = deferred.wake.notified() => {}
        }
        while let Some(due) = deferred.due() {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep_until(due.into()) => {}
            }
            if deferred.due().is_some_and(|due| due <= Instant::now()) {
                let mut applied = None;
                // An entry that did not decode is in the latch's failure too.
                let _ = deferred.flush_as(&mut applied, true);
                if let Some((latch, done)) = applied {
                    latch.release();
                    let _ = done.await;
                    if let Some(failure) = latch.failure() {
                        tracing::error!(error = %failure.1, index = failure.0.index, "{HELD} could not be applied to the store");
                        deferred.failure.lock().get_or_insert(failure);
                    }
                }
            }
        }
    }
}

/// The jobs submitted to the store writer since `apply` last waited: one latch for
/// them all, made with the first (see `replicate::Latch`).
type Applied = Option<(Arc<Latch>, oneshot::Receiver<()>)>;

fn sm_err(verb: ErrorVerb, e: &io::Error) -> StorageError {
    StorageIOError::new(ErrorSubject::StateMachine, verb, AnyError::new(e)).into()
}

/// Entry `log_id` (and what was applied with it) could not be applied to the store
/// (`what` says which entries): logged, and the storage error that stops the Raft node.
fn apply_failed(log_id: LogId, e: &StoreError, what: &str) -> StorageError {
    tracing::error!(error = %e, index = log_id.index, "{what} could not be applied to the store: the raft node stops");
    StorageIOError::new(
        ErrorSubject::Apply(log_id),
        ErrorVerb::Write,
        AnyError::new(e),
    )
    .into()
}

fn invalid(message: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, message)
}

fn encode(machine: &Machine, snapshot_id: &str) -> Vec<u8> {
    pb::MachineState {
        applied: codec::opt_log_id_to(&machine.applied),
        membership: Some(codec::stored_membership_to(&machine.membership)),
        snapshot_id: snapshot_id.to_owned(),
    }
    .encode_to_vec()
}

fn decode(bytes: &[u8], what: &Path) -> io::Result<(Machine, String)> {
    let state = pb::MachineState::decode(bytes)
        .map_err(|e| invalid(format!("{} does not decode: {e}", what.display())))?;
    let membership = codec::stored_membership_from(state.membership)
        .map_err(|e| invalid(format!("{}: {e}", what.display())))?;
    let machine = Machine {
        applied: codec::opt_log_id_from(state.applied),
        membership,
    };
    Ok((machine, state.snapshot_id))
}

/// Replaces `dir/name` with `bytes`, durably.
fn replace(dir: &Path, name: &str, bytes: &[u8]) -> io::Result<()> {
    let tmp = dir.join(format!("{name}.tmp"));
    std::fs::write(&tmp, bytes)?;
    std::fs::File::open(&tmp)?.sync_all()?;
    std::fs::rename(&tmp, dir.join(name))?;
    crate::store::journal::sync_dir(dir)
}

fn read_optional(path: &Path) -> io::Result<Option<Vec<u8>>> {
    match std::fs::read(path) {
        Ok(bytes) => Ok(Some(bytes)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

fn meta_of(machine: &Machine, snapshot_id: String) -> SnapshotMeta<NodeId, Member> {
    SnapshotMeta {
        last_log_id: machine.applied,
        last_membership: machine.membership.clone(),
        snapshot_id,
    }
}

/// The current snapshot in `dir`, opened at its start, and what its header says; none
/// if there is none yet.
pub(super) fn read_current(
    dir: &Path,
) -> io::Result<Option<(std::fs::File, SnapshotMeta<NodeId, Member>)>> {
    let path = dir.join(SNAPSHOT);
    let mut f = match std::fs::File::open(&path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let state = file::read_header(&mut f, &path)?;
    let (machine, id) = decode(&state, &path)?;
    f.seek(io::SeekFrom::Start(0))?;
    Ok(Some((f, meta_of(&machine, id))))
}

/// The log id the store recorded as applied.
fn store_applied(store: &Store) -> io::Result<Option<LogId>> {
    let applied = store
        .raft_applied()
        .map_err(|e| io::Error::other(e.to_string()))?;
    Ok(applied.map(|(term, node, index)| LogId::new(CommittedLeaderId::new(term, node), index)))
}

impl<C: Applying> StateMachine<C> {
    /// Opens the state in `dir` (`<data_dir>/raft`): the membership from the state
    /// file (none without one), the last applied
    /// entry from `store` or the state file, whichever is later. `writer` is the
    /// store's own (unrouted) handle; `pending` the proposer's map of node `node`'s
    /// broker run `run`.
    pub fn open(
        dir: &Path,
        store: &Store,
        writer: WriterHandle<C>,
        pending: Pending<C>,
        node: NodeId,
        run: u64,
    ) -> io::Result<StateMachine<C>> {
        crate::store::journal::create_dir_synced(dir)?;
        file::remove_leftovers(dir)?;
        let mut machine = match read_optional(&dir.join(STATE))? {
            Some(bytes) => decode(&bytes, &dir.join(STATE))?.0,
            None => Machine::default(),
        };
        machine.applied = machine.applied.max(store_applied(store)?);
        let counters = Arc::new(SnapshotCounters::default());
        match std::fs::metadata(dir.join(SNAPSHOT)) {
            Ok(m) => counters.bytes.store(m.len(), Relaxed),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        Ok(StateMachine {
            dir: dir.to_owned(),
            machine,
            deferred: Arc::new(Deferred::new(writer.clone())),
            writer,
            pending,
            node,
            run,
            counters,
            timings: Arc::default(),
            replacing: Arc::default(),
        })
    }

    /// Observes how long applies take into `timings` (the node's, shared with its log).
    pub fn set_timings(&mut self, timings: Arc<Timings>) {
        self.timings = timings;
    }

    /// The entries this machine holds back (for the flush timer and the shutdown).
    pub fn deferred(&self) -> Arc<Deferred<C>> {
        self.deferred.clone()
    }

    /// Snapshots built and installed since this machine was opened.
    pub fn counters(&self) -> Arc<SnapshotCounters> {
        self.counters.clone()
    }

    /// If an install was interrupted (the `installing` mark is there), installs the
    /// current snapshot again: the store may hold part of the old content and part of
    /// the snapshot's. Call before the Raft node starts.
    pub async fn resume_install(&mut self) -> io::Result<()> {
        if !self.dir.join(INSTALLING).exists() {
            return Ok(());
        }
        tracing::warn!("a snapshot install was interrupted: installing the snapshot again");
        let path = self.dir.join(SNAPSHOT);
        let (snapshot, machine) = tokio::task::spawn_blocking(move || {
            let mut f = std::fs::File::open(&path)?;
            let state = file::read_header(&mut f, &path)?;
            let (machine, _) = decode(&state, &path)?;
            Ok::<_, io::Error>((f, machine))
        })
        .await
        .map_err(|e| io::Error::other(e.to_string()))??;
        self.import(snapshot, &machine).await?;
        self.finish_install(machine)
            .await
            .map_err(|e| io::Error::other(e.to_string()))
    }

    /// Has the writer replace the store's content with the dump `snapshot` is
    /// positioned at.
    async fn import(&self, snapshot: std::fs::File, machine: &Machine) -> io::Result<()> {
        let applied = machine
            .applied
            .map(|l| (l.leader_id.term, l.leader_id.node_id, l.index));
        let (tx, rx) = oneshot::channel();
        self.writer.import_snapshot(snapshot, applied, move |r| {
            let _ = tx.send(r);
        });
        let stats = rx
            .await
            .unwrap_or(Err(StoreError::Closed))
            .map_err(|e| io::Error::other(e.to_string()))?;
        tracing::debug!(
            records = stats.records,
            bytes = stats.bytes,
            "snapshot imported"
        );
        Ok(())
    }

    /// The store holds the snapshot: record its membership and applied id, then
    /// remove the mark.
    async fn finish_install(&mut self, machine: Machine) -> Result<(), StorageError> {
        self.machine = machine;
        self.persist().await?;
        let dir = self.dir.clone();
        tokio::task::spawn_blocking(move || {
            std::fs::remove_file(dir.join(INSTALLING))?;
            crate::store::journal::sync_dir(&dir)
        })
        .await
        .map_err(|e| io::Error::other(e.to_string()))
        .and_then(|r| r)
        .map_err(|e| snap_err(ErrorVerb::Write, &e))
    }

    /// Submits the jobs of entry `log_id` to the store as one group (all applied and
    /// recovered together), followed by the record that `log_id` is applied; each
    /// job's completion is the submitter's (`pending`) if this broker run proposed it.
    /// The mutations are shared with the entry, not copied.
    fn submit(&self, jobs: &[Job], log_id: LogId, applied: &mut Applied) {
        debug_assert!(!jobs.is_empty(), "an entry's command carries a job");
        let (latch, _) = applied.get_or_insert_with(Latch::new);
        let mut together = Vec::with_capacity(jobs.len() + 1);
        // This run's own proposals (an entry's jobs are all one proposer's): their
        // completions, taken under one lock for the entry.
        let mine =
            |origin: &super::types::Origin| origin.node == self.node && origin.run == self.run;
        let mut pending = jobs
            .iter()
            .any(|j| mine(&j.origin))
            .then(|| self.pending.lock());
        for job in jobs {
            let then = match &mut pending {
                Some(pending) if mine(&job.origin) => pending.remove(&job.origin.seq),
                _ => None,
            };
            together.push((
                job.store_muts(),
                Some(C::applying(then, latch.expect(log_id))),
            ));
        }
        drop(pending);
        let record = Mutation::Applied {
            term: log_id.leader_id.term,
            node: log_id.leader_id.node_id,
            index: log_id.index,
        };
        together.push((Muts::One(record), None));
        debug_assert_eq!(together.len(), jobs.len() + 1);
        self.writer.submit_together(together);
    }

    /// Submits what is held back; if a received job of it did not decode, waits for
    /// what this call submitted before and fails (nothing after it is submitted).
    async fn flush_held(&self, jobs: &mut Applied) -> Result<(), StorageError> {
        if self.deferred.flush(jobs) {
            return Ok(());
        }
        Self::settle(jobs).await
    }

    /// Waits until every submitted job is applied (its sync follows: see the module
    /// documentation); a refused one is a storage error.
    async fn settle(jobs: &mut Applied) -> Result<(), StorageError> {
        let Some((latch, all_done)) = jobs.take() else {
            return Ok(());
        };
        latch.release();
        // Every job completes exactly once (a dropped one with `Closed`), so the latch
        // reaches zero; it holds the sender until then.
        let _ = all_done.await;
        match latch.failure() {
            Some((log_id, e)) => Err(apply_failed(log_id, &e, "a committed entry")),
            None => Ok(()),
        }
    }

    /// Waits until everything submitted to the store is applied and durable there; a
    /// timer's flush among it that failed is an error.
    async fn barrier(&self) -> Result<(), StorageError> {
        let (tx, rx) = oneshot::channel();
        self.writer
            .submit(Muts::Many(Vec::new()), Some(C::barrier(Signal::Once(tx))));
        if let Err(e) = rx.await.unwrap_or(Err(StoreError::Closed)) {
            tracing::error!(error = %e, "the store could not be synced: the raft node stops");
            return Err(sm_err(ErrorVerb::Write, &io::Error::other(e.to_string())));
        }
        match self.deferred.timer_failure() {
            Some((log_id, e)) => Err(apply_failed(log_id, &e, HELD)),
            None => Ok(()),
        }
    }

    /// Replaces the state file. First waits until everything submitted to the store
    /// is durable there (the store completes committed entries' jobs before its
    /// sync): the file's applied id is never applied again at restart.
    async fn persist(&self) -> Result<(), StorageError> {
        self.barrier().await?;
        let dir = self.dir.clone();
        let bytes = encode(&self.machine, "");
        tokio::task::spawn_blocking(move || replace(&dir, STATE, &bytes))
            .await
            .map_err(|e| io::Error::other(e.to_string()))
            .and_then(|r| r)
            .map_err(|e| sm_err(ErrorVerb::Write, &e))
    }
}

impl<C: Applying> RaftStateMachine<TypeConfig> for StateMachine<C> {
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), StorageError> {
        Ok((self.machine.applied, self.machine.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<()>, StorageError>
    where
        I: IntoIterator<Item = Entry> + Send,
        I::IntoIter: Send,
    {
        if let Some((log_id, e)) = self.deferred.failure.lock().take() {
            return Err(apply_failed(log_id, &e, HELD));
        }
        let start = Instant::now();
        let mut replies = Vec::new();
        let mut jobs: Applied = None;
        let mut last_in_store = true;
        for entry in entries {
            debug_assert!(self
                .machine
                .applied
                .is_none_or(|a| a.index < entry.log_id.index));
            let log_id = entry.log_id;
            last_in_store = false;
            let own = log_id.leader_id.node_id == self.node;
            // Another leader's: held back (see `Deferred`).
            let held = match &entry.payload {
                EntryPayload::Normal(Command::Jobs(jobs)) if !own => {
                    Some(HeldJobs::Decoded(jobs.clone()))
                }
                EntryPayload::Normal(Command::Received(received)) if !own => {
                    Some(HeldJobs::Received(received.clone()))
                }
                _ => None,
            };
            if let Some(held) = held {
                if self.deferred.hold(log_id, held) {
                    self.flush_held(&mut jobs).await?;
                }
                self.machine.applied = Some(log_id);
                replies.push(());
                last_in_store = true;
                continue;
            }
            // Everything before it reaches the store first.
            self.flush_held(&mut jobs).await?;
            match entry.payload {
                EntryPayload::Blank => {}
                EntryPayload::Membership(m) => {
                    // The state file says "applied up to here": everything before must
                    // be applied first (and `persist` makes it durable).
                    Self::settle(&mut jobs).await?;
                    self.machine.membership = StoredMembership::new(Some(log_id), m);
                    self.machine.applied = Some(log_id);
                    self.persist().await?;
                }
                EntryPayload::Normal(Command::Jobs(entry_jobs)) => {
                    self.submit(&entry_jobs, log_id, &mut jobs);
                    last_in_store = true;
                }
                // One of this node's own entries that came back from another leader
                // (a member whose data was replaced): decoded whole.
                EntryPayload::Normal(Command::Received(received)) => {
                    let entry_jobs = codec::received_jobs(&received).ok_or_else(|| {
                        sm_err(
                            ErrorVerb::Read,
                            &invalid(format!("entry {} does not decode", log_id.index)),
                        )
                    })?;
                    self.submit(&entry_jobs, log_id, &mut jobs);
                    last_in_store = true;
                }
            }
            self.machine.applied = Some(log_id);
            replies.push(());
        }
        if self.deferred.due().is_some_and(|due| due <= Instant::now()) {
            self.flush_held(&mut jobs).await?;
        }
        let submitted = jobs.is_some();
        Self::settle(&mut jobs).await?;
        if submitted {
            // Everything before what this call submitted is applied: a timer's flush
            // that failed is this call's failure, before the caller relies on the store
            // (a new leader rebuilds its engine from it).
            if let Some((log_id, e)) = self.deferred.timer_failure() {
                return Err(apply_failed(log_id, &e, HELD));
            }
        }
        if !replies.is_empty() {
            self.timings.apply_micros.observe(micros(start.elapsed()));
        }
        if !last_in_store && !replies.is_empty() {
            // The batch ended with a blank or membership entry: the state file
            // records it (the store records only entries that carry commands, so
            // that it holds an applied id only once it holds queue state).
            self.persist().await?;
        }
        Ok(replies)
    }

    async fn get_snapshot_builder(&mut self) -> SnapshotBuilder {
        // Called between two `apply`s, every job of which is applied: the export,
        // queued to the writer now, sees exactly the state at `machine.applied` (and
        // the writer syncs its journal before it dumps).
        // Held-back entries first, applied before the export is queued behind them.
        let mut held = None;
        let _ = self.deferred.flush(&mut held);
        let flushed = match Self::settle(&mut held).await {
            Ok(()) => self.barrier().await,
            Err(e) => Err(e),
        };
        let id = match self.machine.applied {
            Some(l) => format!("{}-{}-{}", l.leader_id.term, l.leader_id.node_id, l.index),
            None => "empty".to_owned(),
        };
        let id = format!("{id}-{}", crate::server::now_ms());
        let state = encode(&self.machine, &id);
        let started = flushed
            .map_err(|e| io::Error::other(e.to_string()))
            .and_then(|()| file::start_file(&self.dir, &id, &state))
            .map(|(path, out)| {
                let (tx, rx) = oneshot::channel();
                self.writer.export_snapshot(out, move |r| {
                    let _ = tx.send(r);
                });
                (path, rx)
            });
        SnapshotBuilder {
            dir: self.dir.clone(),
            meta: meta_of(&self.machine, id),
            started: started.map_err(Arc::new),
            counters: self.counters.clone(),
            replacing: self.replacing.clone(),
        }
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<tokio::fs::File>, StorageError> {
        let file = tokio::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(self.dir.join(RECEIVING))
            .await
            .map_err(|e| snap_err(ErrorVerb::Write, &e))?;
        Ok(Box::new(file))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<NodeId, Member>,
        snapshot: Box<tokio::fs::File>,
    ) -> Result<(), StorageError> {
        // Everything held back is older than the snapshot, which holds it: never
        // applied on top of it (a flush already submitted is replaced by the import,
        // queued behind it).
        self.deferred.drop_held();
        let started = std::time::Instant::now();
        let snapshot = (*snapshot).into_std().await;
        let dir = self.dir.clone();
        let want = meta.clone();
        let counters = self.counters.clone();
        let replacing = self.replacing.clone();
        // The whole file is checked before the store is touched; then it becomes the
        // current snapshot, and the mark says the store is being replaced.
        let checked = tokio::task::spawn_blocking(move || {
            let mut f = snapshot;
            let what = dir.join(RECEIVING);
            let state = file::read_header(&mut f, &what)?;
            let (machine, _) = decode(&state, &what)?;
            if machine.applied != want.last_log_id || machine.membership != want.last_membership {
                return Err(invalid(format!(
                    "snapshot {} holds {:?} where its meta says {:?}",
                    want.snapshot_id, machine.applied, want.last_log_id
                )));
            }
            let at = f.stream_position()?;
            let stats = crate::store::verify_dump(&mut f)?;
            // Until the file is reopened: a build finishing now must not replace it.
            let _replacing = replacing.lock();
            file::keep_as_current(f, &what, &dir)?;
            let mark = dir.join(INSTALLING);
            std::fs::File::create(&mark)?.sync_all()?;
            crate::store::journal::sync_dir(&dir)?;
            let mut f = std::fs::File::open(dir.join(SNAPSHOT))?;
            counters.bytes.store(f.metadata()?.len(), Relaxed);
            f.seek(io::SeekFrom::Start(at))?;
            Ok((f, machine, stats))
        })
        .await
        .map_err(|e| io::Error::other(e.to_string()))
        .and_then(|r| r);
        let (snapshot, machine, stats) = checked.map_err(|e| snap_err(ErrorVerb::Read, &e))?;
        self.import(snapshot, &machine)
            .await
            .map_err(|e| snap_err(ErrorVerb::Write, &e))?;
        self.finish_install(machine).await?;
        self.counters.installed.fetch_add(1, Relaxed);
        tracing::info!(
            snapshot = %meta.snapshot_id,
            applied = ?meta.last_log_id,
            records = stats.records,
            bytes = stats.bytes,
            took_ms = started.elapsed().as_millis() as u64,
            "raft snapshot installed"
        );
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, StorageError> {
        let dir = self.dir.clone();
        let read = tokio::task::spawn_blocking(move || read_current(&dir))
            .await
            .map_err(|e| io::Error::other(e.to_string()))
            .and_then(|r| r)
            .map_err(|e| snap_err(ErrorVerb::Read, &e))?;
        Ok(read.map(|(f, meta)| Snapshot {
            meta,
            snapshot: Box::new(tokio::fs::File::from_std(f)),
        }))
    }
}
