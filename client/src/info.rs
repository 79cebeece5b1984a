//! `ServerInfo` and `Limits`: what the broker said about itself in its `HelloOk`.
//! Plain data; the handshake that fills them lives in `conn.rs`.

use squall_proto::v1;

/// What the broker announced in its handshake answer (`HelloOk`). Refreshed on every
/// reconnect.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ServerInfo {
    /// The protocol version the broker speaks on this connection.
    pub protocol_version: u32,
    /// The broker's software version.
    pub server_version: String,
    /// The broker node's id.
    pub node_id: String,
    /// The broker's limits; the client checks requests against them before sending.
    pub limits: Limits,
    /// Set when the broker is the leader of a cluster (the only member that serves
    /// clients): the cluster and its members.
    pub cluster: Option<ClusterInfo>,
}

/// The cluster a leader announced in its `HelloOk`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClusterInfo {
    /// The same for every member of one cluster, different for another cluster.
    pub cluster_id: String,
    /// The leader's node id.
    pub leader: u64,
    /// Every member: node id and client address.
    pub members: Vec<(u64, String)>,
}

/// The broker's resource limits. A value of 0 means the broker did not announce it
/// (the client then skips the matching local check).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Limits {
    /// Largest frame the broker accepts, in bytes.
    pub max_frame_bytes: u32,
    /// Largest task payload, in bytes.
    pub max_payload_bytes: u32,
    /// Most tasks in one publish.
    pub max_batch: u32,
    /// Largest prefetch of one subscription.
    pub max_prefetch: u32,
    /// Longest lease, in milliseconds.
    pub max_lease_ms: u64,
    /// Most requests outstanding on one connection.
    pub max_inflight_requests: u32,
}

impl From<v1::HelloOk> for ServerInfo {
    fn from(ok: v1::HelloOk) -> Self {
        ServerInfo {
            protocol_version: ok.protocol_version,
            server_version: ok.server_version,
            node_id: ok.node_id,
            limits: ok.limits.map(Limits::from).unwrap_or_default(),
            cluster: ok.cluster.map(|c| ClusterInfo {
                cluster_id: c.cluster_id,
                leader: c.leader,
                members: c
                    .members
                    .into_iter()
                    .map(|m| (m.node_id, m.client_addr))
                    .collect(),
            }),
        }
    }
}

impl From<v1::Limits> for Limits {
    fn from(l: v1::Limits) -> Self {
        Limits {
            max_frame_bytes: l.max_frame_bytes,
            max_payload_bytes: l.max_payload_bytes,
            max_batch: l.max_batch,
            max_prefetch: l.max_prefetch,
            max_lease_ms: l.max_lease_ms,
            max_inflight_requests: l.max_inflight_requests,
        }
    }
}
