//! Membership changes on the leader (`squall cluster add-node` / `remove-node`): a node
//! added joins as a learner and is made a voter once its log has caught up with the
//! leader's; a node removed leaves the cluster. Not here: forming a new cluster
//! (`mod.rs`), the sockets (`net.rs`), the command line (`cli/cluster.rs`).

use std::collections::BTreeSet;
use std::time::Duration;

use openraft::error::{ClientWriteError, RaftError};
use openraft::ChangeMembers;
use squall_proto::cluster as pb;
use squall_proto::cluster::node_response::Result as Reply;

use super::net::node_error;
use super::types::{Member, NodeId, Raft};

/// How long a new learner may take to catch up before the change gives up (it stays a
/// learner, replicated to, and the operator can ask again).
pub const CATCH_UP_TIMEOUT: Duration = Duration::from_secs(60);

/// Carries out `change` if this node is the leader; the answer is the membership once
/// the change is committed, or an error saying why not (`NOT_LEADER` naming the leader).
pub async fn change(raft: &Raft, change: pb::ChangeMembership) -> Reply {
    match change.change {
        Some(pb::change_membership::Change::Add(add)) => {
            let Some(member) = add.member.filter(|m| !m.cluster_addr.is_empty()) else {
                return error(
                    pb::node_error::Kind::BadRequest,
                    "add-node needs the new node's cluster address",
                );
            };
            let member = Member {
                client_addr: member.client_addr,
                cluster_addr: member.cluster_addr,
            };
            add_node(raft, add.node_id, member).await
        }
        Some(pb::change_membership::Change::Remove(remove)) => {
            remove_node(raft, remove.node_id).await
        }
        None => error(
            pb::node_error::Kind::BadRequest,
            "a membership change without a change",
        ),
    }
}

async fn add_node(raft: &Raft, id: NodeId, member: Member) -> Reply {
    let (voters, _) = members(raft);
    if voters.contains(&id) {
        return error(
            pb::node_error::Kind::BadRequest,
            format!("node {id} is already a voter"),
        );
    }
    tracing::info!(node = id, %member, "adding a node: as a learner until it has caught up");
    // Blocking: returns once the leader sees the learner's log up to date.
    match tokio::time::timeout(CATCH_UP_TIMEOUT, raft.add_learner(id, member, true)).await {
        Err(_) => {
            return error(
                pb::node_error::Kind::Other,
                format!(
                    "node {id} was added as a learner but had not caught up within {}s; \
                     it stays a learner (ask again to make it a voter)",
                    CATCH_UP_TIMEOUT.as_secs()
                ),
            )
        }
        Ok(Err(e)) => return write_error(raft, e),
        Ok(Ok(_)) => {}
    }
    let (mut voters, _) = members(raft);
    voters.insert(id);
    debug_assert!(voters.contains(&id));
    commit(raft, ChangeMembers::ReplaceAllVoters(voters)).await
}

async fn remove_node(raft: &Raft, id: NodeId) -> Reply {
    let (voters, learners) = members(raft);
    let change = if voters.contains(&id) {
        let rest: BTreeSet<NodeId> = voters.iter().copied().filter(|v| *v != id).collect();
        if rest.is_empty() {
            return error(
                pb::node_error::Kind::BadRequest,
                format!("node {id} is the only voter: a cluster cannot remove its last member"),
            );
        }
        ChangeMembers::ReplaceAllVoters(rest)
    } else if learners.contains(&id) {
        ChangeMembers::RemoveNodes(BTreeSet::from([id]))
    } else {
        return error(
            pb::node_error::Kind::BadRequest,
            format!("node {id} is not a member of this cluster"),
        );
    };
    tracing::info!(node = id, "removing a node from the cluster");
    commit(raft, change).await
}

/// Commits `change` (both steps of a joint change) without keeping removed voters as
/// learners.
async fn commit(raft: &Raft, change: ChangeMembers<NodeId, Member>) -> Reply {
    match raft.change_membership(change, false).await {
        Ok(written) => {
            let (voters, learners) = members(raft);
            Reply::Change(pb::ChangeMembershipReply {
                voters: voters.into_iter().collect(),
                learners: learners.into_iter().collect(),
                log_index: written.log_id.index,
            })
        }
        Err(e) => write_error(raft, e),
    }
}

/// The voters and the learners of the membership this node last saw.
fn members(raft: &Raft) -> (BTreeSet<NodeId>, BTreeSet<NodeId>) {
    let metrics = raft.metrics().borrow().clone();
    let membership = metrics.membership_config.membership();
    let voters: BTreeSet<NodeId> = membership.voter_ids().collect();
    let learners: BTreeSet<NodeId> = membership.learner_ids().collect();
    debug_assert!(voters.is_disjoint(&learners));
    (voters, learners)
}

fn write_error(raft: &Raft, e: RaftError<NodeId, ClientWriteError<NodeId, Member>>) -> Reply {
    match e {
        RaftError::APIError(ClientWriteError::ForwardToLeader(f)) => {
            let mut e = node_error(
                pb::node_error::Kind::NotLeader,
                match f.leader_id {
                    Some(id) => format!("node {} is not the leader; node {id} is", raft_id(raft)),
                    None => format!("node {} is not the leader; none is known", raft_id(raft)),
                },
            );
            e.leader_id = f.leader_id;
            e.leader_addr = f.leader_node.map(|n| n.cluster_addr).unwrap_or_default();
            Reply::Error(e)
        }
        RaftError::APIError(ClientWriteError::ChangeMembershipError(e)) => {
            error(pb::node_error::Kind::BadRequest, e.to_string())
        }
        RaftError::Fatal(e) => error(pb::node_error::Kind::Stopped, e.to_string()),
    }
}

fn raft_id(raft: &Raft) -> NodeId {
    raft.metrics().borrow().id
}

fn error(kind: pb::node_error::Kind, message: impl Into<String>) -> Reply {
    Reply::Error(node_error(kind, message))
}
