//! The Raft state machine: the queue state, held in this node's store. A committed
//! `Command::Mutations` entry is applied as one store job through the store's own
//! writer (its journal, then sled) together with `Mutation::Applied` (the entry's log
//! id, `M raft_applied`), so that the entry and the record of its application are one
//! atomic batch and a restart re-applies exactly from the entry after it. On the node
//! that proposed the entry, the job carries the submitter's completion (found in the
//! proposer's pending map), which therefore runs once the entry is committed and
//! applied here. `apply` returns only after every job of its batch is durable; a job
//! the store refuses is a storage error, which stops the Raft node (openraft's rule).
//!
//! The membership and its log id live beside the store in `<data_dir>/raft/state`
//! (replaced whole and synced when a membership entry is applied, after every earlier
//! job of the batch is durable, and after a batch that ends with an entry carrying no
//! command); the last applied entry is the later of the file's and the store's. Snapshots hold the membership only: building one is
//! refused once queue commands were applied (the node's configuration never asks
//! for one: `SnapshotPolicy::Never`, the log is not purged), so no snapshot can lose
//! the queue state. Snapshots of the store itself are not built yet (issue 15).

use std::io;
use std::path::{Path, PathBuf};

use openraft::storage::{RaftSnapshotBuilder, RaftStateMachine, Snapshot};
use openraft::{
    AnyError, CommittedLeaderId, EntryPayload, ErrorSubject, ErrorVerb, SnapshotMeta,
    StorageIOError,
};
use prost::Message;
use squall_proto::cluster as pb;
use tokio::io::{AsyncReadExt, AsyncSeekExt};
use tokio::sync::oneshot;

use super::codec;
use super::replicate::{Applying, Pending};
use super::types::{
    Command, Entry, LogId, Member, NodeId, StorageError, StoredMembership, TypeConfig,
};
use crate::model::Mutation;
use crate::store::{Muts, Store, StoreError, WriterHandle};

const STATE: &str = "state";
const SNAPSHOT: &str = "snapshot";
const RECEIVING: &str = "snapshot.recv";
/// A snapshot of this state machine is a membership: far below this.
const MAX_SNAPSHOT_BYTES: u64 = 16 * 1024 * 1024;

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
    store: Store,
    /// The store's own writer (not routed through Raft).
    writer: WriterHandle<C>,
    /// Completions of this broker run's proposals, by proposal number.
    pending: Pending<C>,
    node: NodeId,
    run: u64,
}

/// Builds a snapshot of the state as it was when the builder was taken.
pub struct SnapshotBuilder {
    dir: PathBuf,
    machine: Machine,
    store: Store,
}

/// A job submitted to the store writer whose outcome `apply` waits for.
type Applied = (LogId, oneshot::Receiver<Result<(), StoreError>>);

fn sm_err(verb: ErrorVerb, e: &io::Error) -> StorageError {
    StorageIOError::new(ErrorSubject::StateMachine, verb, AnyError::new(e)).into()
}

fn snap_err(verb: ErrorVerb, e: &io::Error) -> StorageError {
    StorageIOError::new(ErrorSubject::Snapshot(None), verb, AnyError::new(e)).into()
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

/// The log id the store recorded as applied.
fn store_applied(store: &Store) -> io::Result<Option<LogId>> {
    let applied = store
        .raft_applied()
        .map_err(|e| io::Error::other(e.to_string()))?;
    Ok(applied.map(|(term, node, index)| LogId::new(CommittedLeaderId::new(term, node), index)))
}

impl<C: Applying> StateMachine<C> {
    /// Opens the state in `dir` (`<data_dir>/raft`): the membership from the state
    /// file (or the snapshot if the state file is missing, or none), the last applied
    /// entry from `store` or the state file, whichever is later. `writer` is the
    /// store's own (unrouted) handle; `pending` the proposer's map of node `node`'s
    /// broker run `run`.
    pub fn open(
        dir: &Path,
        store: Store,
        writer: WriterHandle<C>,
        pending: Pending<C>,
        node: NodeId,
        run: u64,
    ) -> io::Result<StateMachine<C>> {
        std::fs::create_dir_all(dir)?;
        let mut machine = match read_optional(&dir.join(STATE))? {
            Some(bytes) => decode(&bytes, &dir.join(STATE))?.0,
            None => match read_optional(&dir.join(SNAPSHOT))? {
                Some(bytes) => decode(&bytes, &dir.join(SNAPSHOT))?.0,
                None => Machine::default(),
            },
        };
        machine.applied = machine.applied.max(store_applied(&store)?);
        Ok(StateMachine {
            dir: dir.to_owned(),
            machine,
            store,
            writer,
            pending,
            node,
            run,
        })
    }

    /// Submits one store job: `muts` and the record that `log_id` is applied.
    fn submit(&self, mut muts: Vec<Mutation>, log_id: LogId, then: Option<C>) -> Applied {
        muts.push(Mutation::Applied {
            term: log_id.leader_id.term,
            node: log_id.leader_id.node_id,
            index: log_id.index,
        });
        let (tx, rx) = oneshot::channel();
        let tell = Box::new(move |result| {
            let _ = tx.send(result);
        });
        self.writer
            .submit(Muts::Many(muts), Some(C::applying(then, tell)));
        (log_id, rx)
    }

    /// Waits until every submitted job is durable; a refused one is a storage error.
    async fn settle(jobs: &mut Vec<Applied>) -> Result<(), StorageError> {
        for (log_id, outcome) in jobs.drain(..) {
            let outcome = outcome.await.unwrap_or(Err(StoreError::Closed));
            if let Err(e) = outcome {
                tracing::error!(error = %e, index = log_id.index, "a committed entry could not be applied to the store: the raft node stops");
                return Err(StorageIOError::new(
                    ErrorSubject::Apply(log_id),
                    ErrorVerb::Write,
                    AnyError::new(&e),
                )
                .into());
            }
        }
        Ok(())
    }

    async fn persist(&self) -> Result<(), StorageError> {
        let dir = self.dir.clone();
        let bytes = encode(&self.machine, "");
        tokio::task::spawn_blocking(move || replace(&dir, STATE, &bytes))
            .await
            .map_err(|e| io::Error::other(e.to_string()))
            .and_then(|r| r)
            .map_err(|e| sm_err(ErrorVerb::Write, &e))
    }
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError> {
        // A membership-only snapshot of a node that applied queue commands would lose
        // them on the node that installs it.
        let applied = store_applied(&self.store).map_err(|e| snap_err(ErrorVerb::Read, &e))?;
        if let Some(applied) = applied {
            let e = io::Error::other(format!(
                "snapshots of the queue state are not built yet (issue 15); this store \
                 applied entries up to {applied}"
            ));
            return Err(snap_err(ErrorVerb::Write, &e));
        }
        let id = match self.machine.applied {
            Some(l) => format!("{}-{}-{}", l.leader_id.term, l.leader_id.node_id, l.index),
            None => "empty".to_owned(),
        };
        let id = format!("{id}-{}", crate::server::now_ms());
        let bytes = encode(&self.machine, &id);
        let dir = self.dir.clone();
        tokio::task::spawn_blocking(move || replace(&dir, SNAPSHOT, &bytes))
            .await
            .map_err(|e| io::Error::other(e.to_string()))
            .and_then(|r| r)
            .map_err(|e| snap_err(ErrorVerb::Write, &e))?;
        let file = tokio::fs::File::open(self.dir.join(SNAPSHOT))
            .await
            .map_err(|e| snap_err(ErrorVerb::Read, &e))?;
        tracing::debug!(snapshot = %id, "raft snapshot built");
        Ok(Snapshot {
            meta: meta_of(&self.machine, id),
            snapshot: Box::new(file),
        })
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
        let mut replies = Vec::new();
        let mut jobs = Vec::new();
        let mut last_in_store = true;
        for entry in entries {
            debug_assert!(self
                .machine
                .applied
                .is_none_or(|a| a.index < entry.log_id.index));
            let log_id = entry.log_id;
            last_in_store = false;
            match entry.payload {
                EntryPayload::Blank => {}
                EntryPayload::Membership(m) => {
                    // The state file says "applied up to here": everything before must
                    // be durable first.
                    Self::settle(&mut jobs).await?;
                    self.machine.membership = StoredMembership::new(Some(log_id), m);
                    self.machine.applied = Some(log_id);
                    self.persist().await?;
                }
                EntryPayload::Normal(Command::Mutations { origin, muts }) => {
                    let then = (origin.node == self.node && origin.run == self.run)
                        .then(|| self.pending.lock().remove(&origin.seq))
                        .flatten();
                    jobs.push(self.submit(muts, log_id, then));
                    last_in_store = true;
                }
            }
            self.machine.applied = Some(log_id);
            replies.push(());
        }
        Self::settle(&mut jobs).await?;
        if !last_in_store && !replies.is_empty() {
            // The batch ended with a blank or membership entry: the state file
            // records it (the store records only entries that carry commands, so
            // that it holds an applied id only once it holds queue state).
            self.persist().await?;
        }
        Ok(replies)
    }

    async fn get_snapshot_builder(&mut self) -> SnapshotBuilder {
        SnapshotBuilder {
            dir: self.dir.clone(),
            machine: self.machine.clone(),
            store: self.store.clone(),
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
        mut snapshot: Box<tokio::fs::File>,
    ) -> Result<(), StorageError> {
        let mut bytes = Vec::new();
        let read = async {
            snapshot.seek(io::SeekFrom::Start(0)).await?;
            (&mut *snapshot)
                .take(MAX_SNAPSHOT_BYTES)
                .read_to_end(&mut bytes)
                .await
        };
        read.await.map_err(|e| snap_err(ErrorVerb::Read, &e))?;
        let what = self.dir.join(RECEIVING);
        let (machine, _) = decode(&bytes, &what).map_err(|e| snap_err(ErrorVerb::Read, &e))?;
        if machine.applied != meta.last_log_id || machine.membership != meta.last_membership {
            let e = invalid(format!(
                "snapshot {} holds {:?} where its meta says {:?}",
                meta.snapshot_id, machine.applied, meta.last_log_id
            ));
            return Err(snap_err(ErrorVerb::Read, &e));
        }
        let bytes = encode(&machine, &meta.snapshot_id);
        let dir = self.dir.clone();
        tokio::task::spawn_blocking(move || {
            replace(&dir, SNAPSHOT, &bytes)?;
            match std::fs::remove_file(dir.join(RECEIVING)) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
                _ => Ok(()),
            }
        })
        .await
        .map_err(|e| io::Error::other(e.to_string()))
        .and_then(|r| r)
        .map_err(|e| snap_err(ErrorVerb::Write, &e))?;
        self.machine = machine;
        self.persist().await?;
        tracing::info!(snapshot = %meta.snapshot_id, applied = ?meta.last_log_id, "raft snapshot installed");
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, StorageError> {
        let path = self.dir.join(SNAPSHOT);
        let Some(bytes) = read_optional(&path).map_err(|e| snap_err(ErrorVerb::Read, &e))? else {
            return Ok(None);
        };
        let (machine, id) = decode(&bytes, &path).map_err(|e| snap_err(ErrorVerb::Read, &e))?;
        let file = tokio::fs::File::open(&path)
            .await
            .map_err(|e| snap_err(ErrorVerb::Read, &e))?;
        Ok(Some(Snapshot {
            meta: meta_of(&machine, id),
            snapshot: Box::new(file),
        }))
    }
}
