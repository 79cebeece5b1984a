//! The one place that turns openraft's messages into the cluster protocol's protobuf
//! messages (`proto/cluster.proto`) and back. Used by the network (both sides), the
//! log (an entry on disk is its protobuf encoding) and the state machine's snapshot.
//! Nothing here does I/O.

mod fast;
mod mutations;

use std::collections::{BTreeMap, BTreeSet};

use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::{CommittedLeaderId, EntryPayload, SnapshotMeta};
use prost::Message;
use squall_proto::cluster as pb;

use super::types::{
    Command, Entry, LogId, Member, Membership, NodeId, StoredMembership, TypeConfig, Vote,
};

/// A cluster message that does not say what openraft needs.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed cluster message: {0}")]
pub struct CodecError(pub String);

fn missing(what: &str) -> CodecError {
    CodecError(format!("{what} is missing"))
}

pub(crate) fn vote_to(v: &Vote) -> pb::Vote {
    pb::Vote {
        term: v.leader_id.term,
        node_id: v.leader_id.node_id,
        committed: v.committed,
    }
}

pub(crate) fn vote_from(v: Option<pb::Vote>) -> Result<Vote, CodecError> {
    let v = v.ok_or_else(|| missing("vote"))?;
    Ok(if v.committed {
        Vote::new_committed(v.term, v.node_id)
    } else {
        Vote::new(v.term, v.node_id)
    })
}

pub(crate) fn log_id_to(id: &LogId) -> pb::LogId {
    pb::LogId {
        term: id.leader_id.term,
        node_id: id.leader_id.node_id,
        index: id.index,
    }
}

pub(crate) fn opt_log_id_to(id: &Option<LogId>) -> Option<pb::LogId> {
    id.as_ref().map(log_id_to)
}

pub(crate) fn log_id_from(id: pb::LogId) -> LogId {
    LogId::new(CommittedLeaderId::new(id.term, id.node_id), id.index)
}

pub(crate) fn opt_log_id_from(id: Option<pb::LogId>) -> Option<LogId> {
    id.map(log_id_from)
}

fn member_to(m: &Member) -> pb::Member {
    pb::Member {
        client_addr: m.client_addr.clone(),
        cluster_addr: m.cluster_addr.clone(),
    }
}

pub(crate) fn membership_to(m: &Membership) -> pb::Membership {
    pb::Membership {
        configs: m
            .get_joint_config()
            .iter()
            .map(|ids| pb::NodeIds {
                ids: ids.iter().copied().collect(),
            })
            .collect(),
        nodes: m.nodes().map(|(id, n)| (*id, member_to(n))).collect(),
    }
}

pub(crate) fn membership_from(m: Option<pb::Membership>) -> Result<Membership, CodecError> {
    let m = m.ok_or_else(|| missing("membership"))?;
    let configs: Vec<BTreeSet<NodeId>> = m
        .configs
        .into_iter()
        .map(|c| c.ids.into_iter().collect())
        .collect();
    let nodes: BTreeMap<NodeId, Member> = m
        .nodes
        .into_iter()
        .map(|(id, n)| {
            let member = Member {
                client_addr: n.client_addr,
                cluster_addr: n.cluster_addr,
            };
            (id, member)
        })
        .collect();
    if let Some(voter) = configs.iter().flatten().find(|id| !nodes.contains_key(id)) {
        return Err(CodecError(format!("voter {voter} has no address")));
    }
    Ok(Membership::new(configs, nodes))
}

pub(crate) fn stored_membership_to(m: &StoredMembership) -> pb::StoredMembership {
    pb::StoredMembership {
        log_id: opt_log_id_to(m.log_id()),
        membership: Some(membership_to(m.membership())),
    }
}

pub(crate) fn stored_membership_from(
    m: Option<pb::StoredMembership>,
) -> Result<StoredMembership, CodecError> {
    let m = m.ok_or_else(|| missing("stored membership"))?;
    Ok(StoredMembership::new(
        opt_log_id_from(m.log_id),
        membership_from(m.membership)?,
    ))
}

pub(crate) fn entry_to(e: &Entry) -> pb::Entry {
    let payload = match &e.payload {
        EntryPayload::Blank => pb::entry::Payload::Blank(pb::Blank {}),
        EntryPayload::Membership(m) => pb::entry::Payload::Membership(membership_to(m)),
        EntryPayload::Normal(command) => mutations::command_to(command),
    };
    pb::Entry {
        log_id: Some(log_id_to(&e.log_id)),
        payload: Some(payload),
    }
}

pub(crate) fn entry_from(e: pb::Entry) -> Result<Entry, CodecError> {
    let log_id = log_id_from(e.log_id.ok_or_else(|| missing("entry log id"))?);
    let payload = match e.payload {
        Some(pb::entry::Payload::Blank(_)) => EntryPayload::Blank,
        Some(pb::entry::Payload::Membership(m)) => {
            EntryPayload::Membership(membership_from(Some(m))?)
        }
        Some(pb::entry::Payload::Mutations(m)) => {
            EntryPayload::Normal(Command::Jobs(vec![mutations::job_from(m)?].into()))
        }
        Some(pb::entry::Payload::Jobs(jobs)) => {
            if jobs.jobs.is_empty() {
                return Err(missing("jobs of a jobs entry"));
            }
            let jobs = jobs.jobs.into_iter().map(mutations::job_from);
            EntryPayload::Normal(Command::Jobs(jobs.collect::<Result<Vec<_>, _>>()?.into()))
        }
        // Also what a newer version's command looks like to this one.
        None => {
            return Err(missing(
                "entry payload (a command this version does not know?)",
            ))
        }
    };
    Ok(Entry { log_id, payload })
}

pub(crate) use fast::{received_jobs, sketch, JobReader};

/// The entry encoded in `bytes` (its task payloads are slices of them, not copies):
/// the hot path's kinds read field by field (`fast.rs`), anything else through prost.
pub(crate) fn decode_entry(bytes: &bytes::Bytes) -> Result<Entry, CodecError> {
    if let Some(entry) = fast::entry(bytes) {
        return Ok(entry);
    }
    let decoded = pb::Entry::decode(bytes.clone())
        .map_err(|e| CodecError(format!("an entry does not decode: {e}")))?;
    entry_from(decoded)
}

/// An entry's encoding: what the Raft log holds and the cluster port carries. The hot
/// path's kinds are written straight from the entry (`fast.rs`, the same bytes),
/// anything else through prost.
pub(crate) fn entry_bytes(e: &Entry) -> bytes::Bytes {
    if let EntryPayload::Normal(Command::Received(received)) = &e.payload {
        return received.bytes.clone();
    }
    fast::entry_bytes(e).unwrap_or_else(|| entry_to(e).encode_to_vec().into())
}

/// The request with each entry's encoding given by `bytes_of` (the log's own, when
/// it still holds it: see `log::Encoded`).
pub(crate) fn append_to(
    r: &AppendEntriesRequest<TypeConfig>,
    bytes_of: impl Fn(&Entry) -> bytes::Bytes,
) -> pb::AppendEntries {
    pb::AppendEntries {
        vote: Some(vote_to(&r.vote)),
        prev_log_id: opt_log_id_to(&r.prev_log_id),
        entries: r.entries.iter().map(bytes_of).collect(),
        leader_commit: opt_log_id_to(&r.leader_commit),
    }
}

/// Each entry's log id with the bytes it came in as (for the log: `log::Encoded`).
pub(crate) type Received = Vec<(LogId, bytes::Bytes)>;

/// The request, and the bytes each entry came in as.
pub(crate) fn append_from(
    r: pb::AppendEntries,
) -> Result<(AppendEntriesRequest<TypeConfig>, Received), CodecError> {
    let mut entries = Vec::with_capacity(r.entries.len());
    let mut raw = Vec::with_capacity(r.entries.len());
    for bytes in r.entries {
        // Checked whole now, decoded into store jobs only if its tasks are not netted
        // while the member holds it back (`netting.rs`).
        let entry = match sketch(&bytes) {
            Some(entry) => entry,
            None => decode_entry(&bytes)?,
        };
        raw.push((entry.log_id, bytes));
        entries.push(entry);
    }
    let request = AppendEntriesRequest {
        vote: vote_from(r.vote)?,
        prev_log_id: opt_log_id_from(r.prev_log_id),
        entries,
        leader_commit: opt_log_id_from(r.leader_commit),
    };
    Ok((request, raw))
}

pub(crate) fn append_reply_to(r: &AppendEntriesResponse<NodeId>) -> pb::AppendEntriesReply {
    use pb::append_entries_reply::Result as R;
    let result = match r {
        AppendEntriesResponse::Success => R::Success(pb::Blank {}),
        AppendEntriesResponse::PartialSuccess(m) => R::Partial(pb::PartialSuccess {
            matching: opt_log_id_to(m),
        }),
        AppendEntriesResponse::Conflict => R::Conflict(pb::Blank {}),
        AppendEntriesResponse::HigherVote(v) => R::HigherVote(vote_to(v)),
    };
    pb::AppendEntriesReply {
        result: Some(result),
    }
}

pub(crate) fn append_reply_from(
    r: pb::AppendEntriesReply,
) -> Result<AppendEntriesResponse<NodeId>, CodecError> {
    use pb::append_entries_reply::Result as R;
    Ok(match r.result.ok_or_else(|| missing("append result"))? {
        R::Success(_) => AppendEntriesResponse::Success,
        R::Partial(p) => AppendEntriesResponse::PartialSuccess(opt_log_id_from(p.matching)),
        R::Conflict(_) => AppendEntriesResponse::Conflict,
        R::HigherVote(v) => AppendEntriesResponse::HigherVote(vote_from(Some(v))?),
    })
}

pub(crate) fn vote_request_to(r: &VoteRequest<NodeId>) -> pb::VoteRequest {
    pb::VoteRequest {
        vote: Some(vote_to(&r.vote)),
        last_log_id: opt_log_id_to(&r.last_log_id),
    }
}

pub(crate) fn vote_request_from(r: pb::VoteRequest) -> Result<VoteRequest<NodeId>, CodecError> {
    Ok(VoteRequest {
        vote: vote_from(r.vote)?,
        last_log_id: opt_log_id_from(r.last_log_id),
    })
}

pub(crate) fn vote_reply_to(r: &VoteResponse<NodeId>) -> pb::VoteReply {
    pb::VoteReply {
        vote: Some(vote_to(&r.vote)),
        vote_granted: r.vote_granted,
        last_log_id: opt_log_id_to(&r.last_log_id),
    }
}

pub(crate) fn vote_reply_from(r: pb::VoteReply) -> Result<VoteResponse<NodeId>, CodecError> {
    Ok(VoteResponse {
        vote: vote_from(r.vote)?,
        vote_granted: r.vote_granted,
        last_log_id: opt_log_id_from(r.last_log_id),
    })
}

pub(crate) fn snapshot_meta_to(m: &SnapshotMeta<NodeId, Member>) -> pb::SnapshotMeta {
    pb::SnapshotMeta {
        last_log_id: opt_log_id_to(&m.last_log_id),
        last_membership: Some(stored_membership_to(&m.last_membership)),
        snapshot_id: m.snapshot_id.clone(),
    }
}

pub(crate) fn snapshot_meta_from(
    m: Option<pb::SnapshotMeta>,
) -> Result<SnapshotMeta<NodeId, Member>, CodecError> {
    let m = m.ok_or_else(|| missing("snapshot meta"))?;
    Ok(SnapshotMeta {
        last_log_id: opt_log_id_from(m.last_log_id),
        last_membership: stored_membership_from(m.last_membership)?,
        snapshot_id: m.snapshot_id,
    })
}

pub(crate) fn install_to(r: &InstallSnapshotRequest<TypeConfig>) -> pb::InstallSnapshot {
    pb::InstallSnapshot {
        vote: Some(vote_to(&r.vote)),
        meta: Some(snapshot_meta_to(&r.meta)),
        offset: r.offset,
        data: r.data.clone().into(),
        done: r.done,
    }
}

pub(crate) fn install_from(
    r: pb::InstallSnapshot,
) -> Result<InstallSnapshotRequest<TypeConfig>, CodecError> {
    Ok(InstallSnapshotRequest {
        vote: vote_from(r.vote)?,
        meta: snapshot_meta_from(r.meta)?,
        offset: r.offset,
        data: r.data.to_vec(),
        done: r.done,
    })
}

pub(crate) fn install_reply_to(r: &InstallSnapshotResponse<NodeId>) -> pb::InstallSnapshotReply {
    pb::InstallSnapshotReply {
        vote: Some(vote_to(&r.vote)),
    }
}

pub(crate) fn install_reply_from(
    r: pb::InstallSnapshotReply,
) -> Result<InstallSnapshotResponse<NodeId>, CodecError> {
    Ok(InstallSnapshotResponse {
        vote: vote_from(r.vote)?,
    })
}

#[cfg(test)]
mod fast_tests;
#[cfg(test)]
mod mutation_tests;

#[cfg(test)]
mod tests {
    use super::*;

    fn member(i: u64) -> Member {
        Member {
            client_addr: format!("127.0.0.1:{}", 7600 + i),
            cluster_addr: format!("127.0.0.1:{}", 7700 + i),
        }
    }

    fn log_id(term: u64, node: u64, index: u64) -> LogId {
        LogId::new(CommittedLeaderId::new(term, node), index)
    }

    /// Every message kind survives encoding, including a joint membership with a
    /// learner and absent log ids.
    #[test]
    fn messages_round_trip_through_protobuf() {
        let nodes: BTreeMap<_, _> = (1..=4).map(|i| (i, member(i))).collect();
        let joint = Membership::new(
            vec![BTreeSet::from([1, 2, 3]), BTreeSet::from([2, 3])],
            nodes,
        );
        let entries = vec![
            Entry {
                log_id: log_id(1, 1, 1),
                payload: EntryPayload::Blank,
            },
            Entry {
                log_id: log_id(1, 1, 2),
                payload: EntryPayload::Membership(joint.clone()),
            },
        ];
        let req = AppendEntriesRequest::<TypeConfig> {
            vote: Vote::new_committed(3, 2),
            prev_log_id: None,
            entries,
            leader_commit: Some(log_id(1, 1, 1)),
        };
        let bytes = append_to(&req, entry_bytes).encode_to_vec();
        let (back, raw) = append_from(pb::AppendEntries::decode(&bytes[..]).unwrap()).unwrap();
        // Each entry came with the bytes it was sent as: its own encoding.
        let ids: Vec<_> = req.entries.iter().map(|e| e.log_id).collect();
        assert_eq!(raw.iter().map(|(id, _)| *id).collect::<Vec<_>>(), ids);
        for ((_, bytes), entry) in raw.iter().zip(&req.entries) {
            assert_eq!(bytes, &entry_bytes(entry));
        }
        assert_eq!(
            (
                back.vote,
                back.prev_log_id,
                &back.entries,
                back.leader_commit
            ),
            (req.vote, req.prev_log_id, &req.entries, req.leader_commit)
        );
        assert_eq!(
            back.entries[1].payload,
            EntryPayload::Membership(joint.clone())
        );

        for reply in [
            AppendEntriesResponse::Success,
            AppendEntriesResponse::PartialSuccess(None),
            AppendEntriesResponse::PartialSuccess(Some(log_id(2, 3, 9))),
            AppendEntriesResponse::Conflict,
            AppendEntriesResponse::HigherVote(Vote::new(7, 3)),
        ] {
            assert_eq!(append_reply_from(append_reply_to(&reply)).unwrap(), reply);
        }
        let vote = VoteRequest::new(Vote::new(4, 1), Some(log_id(3, 2, 10)));
        assert_eq!(vote_request_from(vote_request_to(&vote)).unwrap(), vote);
        let granted = VoteResponse::new(Vote::new(4, 1), None, true);
        assert_eq!(vote_reply_from(vote_reply_to(&granted)).unwrap(), granted);

        let meta = SnapshotMeta {
            last_log_id: Some(log_id(2, 1, 5)),
            last_membership: StoredMembership::new(Some(log_id(1, 1, 2)), joint),
            snapshot_id: "2-1-5-x".into(),
        };
        let install = InstallSnapshotRequest::<TypeConfig> {
            vote: Vote::new_committed(2, 1),
            meta,
            offset: 4096,
            data: vec![1, 2, 3],
            done: true,
        };
        let back = install_from(install_to(&install)).unwrap();
        assert_eq!(
            (back.vote, &back.meta, back.offset, &back.data, back.done),
            (
                install.vote,
                &install.meta,
                install.offset,
                &install.data,
                install.done
            )
        );
    }

    #[test]
    fn a_voter_without_an_address_or_a_missing_part_is_an_error() {
        let mut m = membership_to(&Membership::new(vec![BTreeSet::from([1, 2])], ()));
        m.nodes.remove(&2);
        assert!(membership_from(Some(m)).is_err());
        assert!(vote_from(None).is_err());
        let empty = pb::Entry {
            log_id: Some(log_id_to(&log_id(1, 1, 1))),
            payload: None,
        };
        assert!(entry_from(empty).is_err());
    }
}
