//! The Raft state machine of this version: the cluster's replicated membership and
//! the last applied log id, kept in `<data_dir>/raft/state` (replaced whole and synced
//! after every applied batch), with snapshots of the same in `<data_dir>/raft/snapshot`.
//! The queue state (engine + store) is NOT here yet: no command exists that would
//! change it (`types::Command` is empty; issue 15 continues).

use std::io;
use std::path::{Path, PathBuf};

use openraft::storage::{RaftSnapshotBuilder, RaftStateMachine, Snapshot};
use openraft::{AnyError, EntryPayload, ErrorSubject, ErrorVerb, SnapshotMeta, StorageIOError};
use prost::Message;
use squall_proto::cluster as pb;
use tokio::io::{AsyncReadExt, AsyncSeekExt};

use super::codec;
use super::types::{Entry, LogId, Member, NodeId, StorageError, StoredMembership, TypeConfig};

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
pub struct StateMachine {
    dir: PathBuf,
    machine: Machine,
}

/// Builds a snapshot of the state as it was when the builder was taken.
pub struct SnapshotBuilder {
    dir: PathBuf,
    machine: Machine,
}

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

impl StateMachine {
    /// Opens the state in `dir` (`<data_dir>/raft`): the state file, or the snapshot
    /// if the state file is missing, or the empty state.
    pub fn open(dir: &Path) -> io::Result<StateMachine> {
        std::fs::create_dir_all(dir)?;
        let machine = match read_optional(&dir.join(STATE))? {
            Some(bytes) => decode(&bytes, &dir.join(STATE))?.0,
            None => match read_optional(&dir.join(SNAPSHOT))? {
                Some(bytes) => decode(&bytes, &dir.join(SNAPSHOT))?.0,
                None => Machine::default(),
            },
        };
        Ok(StateMachine {
            dir: dir.to_owned(),
            machine,
        })
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

impl RaftStateMachine<TypeConfig> for StateMachine {
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
        for entry in entries {
            debug_assert!(self
                .machine
                .applied
                .is_none_or(|a| a.index < entry.log_id.index));
            self.machine.applied = Some(entry.log_id);
            match entry.payload {
                EntryPayload::Blank => {}
                EntryPayload::Membership(m) => {
                    self.machine.membership = StoredMembership::new(Some(entry.log_id), m);
                }
                EntryPayload::Normal(command) => match command {},
            }
            replies.push(());
        }
        if !replies.is_empty() {
            self.persist().await?;
        }
        Ok(replies)
    }

    async fn get_snapshot_builder(&mut self) -> SnapshotBuilder {
        SnapshotBuilder {
            dir: self.dir.clone(),
            machine: self.machine.clone(),
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
