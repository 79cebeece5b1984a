//! The cluster port: how nodes talk to each other. The client side implements
//! openraft's `RaftNetwork` over one TCP connection per peer and purpose, one request
//! at a time, in the client port's framing (`squall_proto::FrameCodec`) with the
//! messages of `proto/cluster.proto`; the server side accepts those connections and
//! hands each request to the local Raft node. Only this file touches the cluster
//! port's sockets; message conversion is `codec.rs`.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use openraft::error::{
    InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, SnapshotMismatch,
    Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::{ServerState, SnapshotSegmentId};
use squall_proto::cluster::{self as pb, node_request::Op, node_response::Result as Reply};
use squall_proto::FrameCodec;
use subtle::ConstantTimeEq;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::codec::Framed;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::codec::{self, CodecError};
use super::types::{Member, NodeId, Raft, TypeConfig};

type ClientConn = Framed<TcpStream, FrameCodec<pb::NodeRequest, pb::NodeResponse>>;
type ServerConn = Framed<TcpStream, FrameCodec<pb::NodeResponse, pb::NodeRequest>>;

/// Longest a connection attempt to a peer may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// Why a call to a peer failed.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// The peer could not be reached (connection refused or timed out).
    #[error("cannot connect to {addr}: {source}")]
    Unreachable {
        /// Its cluster address.
        addr: String,
        /// Why.
        source: std::io::Error,
    },
    /// The connection failed or the answer did not come in time.
    #[error("{0}")]
    Network(std::io::Error),
    /// The peer answered with an error.
    #[error("the peer refused: {}", .0.message)]
    Remote(Box<pb::NodeError>),
    /// The answer is not what was asked for, or does not decode.
    #[error(transparent)]
    Codec(#[from] CodecError),
}

/// One connection to one peer, opened on first use and again after a failure.
pub struct NodeClient {
    addr: String,
    max_frame: usize,
    token: Bytes,
    conn: Option<ClientConn>,
    next_id: u64,
}

impl NodeClient {
    /// A client of the node at `addr` (not connected yet).
    pub fn new(addr: impl Into<String>, max_frame: usize) -> NodeClient {
        NodeClient {
            addr: addr.into(),
            max_frame,
            token: Bytes::new(),
            conn: None,
            next_id: 1,
        }
    }

    /// Sends `token` (`cluster.token`) with every request.
    pub fn with_token(mut self, token: Bytes) -> NodeClient {
        self.token = token;
        self
    }

    /// Sends `op` and waits for its answer, within `timeout` (connecting included).
    pub async fn call(&mut self, op: Op, timeout: Duration) -> Result<Reply, CallError> {
        let result = tokio::time::timeout(timeout, self.exchange(op)).await;
        let result = result.unwrap_or_else(|_| {
            Err(CallError::Network(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("no answer from {} within {timeout:?}", self.addr),
            )))
        });
        if matches!(result, Err(CallError::Network(_) | CallError::Codec(_))) {
            self.conn = None; // a late answer must not be taken for the next request's
        }
        result
    }

    async fn exchange(&mut self, op: Op) -> Result<Reply, CallError> {
        if self.conn.is_none() {
            let connect = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(&self.addr));
            let stream = match connect.await {
                Ok(Ok(s)) => s,
                Ok(Err(source)) => {
                    return Err(CallError::Unreachable {
                        addr: self.addr.clone(),
                        source,
                    })
                }
                Err(_) => {
                    return Err(CallError::Unreachable {
                        addr: self.addr.clone(),
                        source: std::io::ErrorKind::TimedOut.into(),
                    })
                }
            };
            let _ = stream.set_nodelay(true);
            self.conn = Some(Framed::new(stream, FrameCodec::new(self.max_frame)));
        }
        let conn = self.conn.as_mut().expect("connected above");
        let id = self.next_id;
        self.next_id += 1;
        let request = pb::NodeRequest {
            id,
            token: self.token.clone(),
            op: Some(op),
        };
        conn.send(request)
            .await
            .map_err(|e| CallError::Network(std::io::Error::other(e.to_string())))?;
        let response = match conn.next().await {
            Some(Ok(r)) => r,
            Some(Err(e)) => return Err(CallError::Network(std::io::Error::other(e.to_string()))),
            None => {
                return Err(CallError::Network(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    format!("{} closed the connection", self.addr),
                )))
            }
        };
        if response.id != id {
            return Err(CodecError(format!("answer {} to request {id}", response.id)).into());
        }
        match response.result {
            Some(Reply::Error(e)) => Err(CallError::Remote(Box::new(e))),
            Some(reply) => Ok(reply),
            None => Err(CodecError("an answer without a result".into()).into()),
        }
    }
}

/// Creates the clients openraft replicates and votes through.
pub struct Network {
    /// Largest frame sent or accepted.
    pub max_frame: usize,
    /// The cluster token sent with every request.
    pub token: Bytes,
}

/// openraft's view of one peer.
pub struct PeerClient {
    target: NodeId,
    client: NodeClient,
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = PeerClient;

    async fn new_client(&mut self, target: NodeId, node: &Member) -> PeerClient {
        PeerClient {
            target,
            client: NodeClient::new(node.cluster_addr.clone(), self.max_frame)
                .with_token(self.token.clone()),
        }
    }
}

type RpcError<E = openraft::error::Infallible> = RPCError<NodeId, Member, RaftError<NodeId, E>>;

fn rpc_error<E: std::error::Error>(e: CallError) -> RpcError<E> {
    match e {
        CallError::Unreachable { .. } => RPCError::Unreachable(Unreachable::new(&e)),
        other => RPCError::Network(NetworkError::new(&other)),
    }
}

fn unexpected(reply: &Reply) -> CallError {
    CodecError(format!("unexpected answer {reply:?}")).into()
}

impl RaftNetwork<TypeConfig> for PeerClient {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RpcError> {
        let op = Op::Append(codec::append_to(&rpc));
        match self.client.call(op, option.hard_ttl()).await {
            Ok(Reply::Append(r)) => codec::append_reply_from(r).map_err(|e| rpc_error(e.into())),
            Ok(other) => Err(rpc_error(unexpected(&other))),
            Err(e) => Err(rpc_error(e)),
        }
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<InstallSnapshotResponse<NodeId>, RpcError<InstallSnapshotError>> {
        let op = Op::Snapshot(codec::install_to(&rpc));
        match self.client.call(op, option.hard_ttl()).await {
            Ok(Reply::Snapshot(r)) => codec::install_reply_from(r).map_err(|e| rpc_error(e.into())),
            Ok(other) => Err(rpc_error(unexpected(&other))),
            Err(CallError::Remote(e)) if e.kind() == pb::node_error::Kind::SnapshotMismatch => {
                let mismatch = SnapshotMismatch {
                    expect: SnapshotSegmentId {
                        id: e.expect_snapshot_id,
                        offset: e.expect_offset,
                    },
                    got: SnapshotSegmentId {
                        id: e.got_snapshot_id,
                        offset: e.got_offset,
                    },
                };
                let api = RaftError::APIError(InstallSnapshotError::SnapshotMismatch(mismatch));
                Err(RPCError::RemoteError(RemoteError::new(self.target, api)))
            }
            Err(e) => Err(rpc_error(e)),
        }
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RpcError> {
        let op = Op::Vote(codec::vote_request_to(&rpc));
        match self.client.call(op, option.hard_ttl()).await {
            Ok(Reply::Vote(r)) => codec::vote_reply_from(r).map_err(|e| rpc_error(e.into())),
            Ok(other) => Err(rpc_error(unexpected(&other))),
            Err(e) => Err(rpc_error(e)),
        }
    }
}

/// What the cluster port's server needs.
#[derive(Clone)]
pub struct ServerContext {
    /// The local Raft node.
    pub raft: Raft,
    /// This node's id.
    pub id: NodeId,
    /// Where clients reach this node.
    pub client_addr: String,
    /// Largest frame accepted.
    pub max_frame: usize,
    /// Connections open at once; past it a new one is closed at once.
    pub connections: Arc<tokio::sync::Semaphore>,
    /// The cluster token every request must carry; empty = none.
    pub token: Bytes,
}

/// Accepts cluster connections until `stop`; each is served in `tracker`.
pub async fn serve(
    listener: TcpListener,
    ctx: ServerContext,
    stop: CancellationToken,
    tracker: TaskTracker,
) {
    loop {
        let accepted = tokio::select! {
            _ = stop.cancelled() => return,
            a = listener.accept() => a,
        };
        let (stream, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!(error = %e, "cluster port: accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(permit) = ctx.connections.clone().try_acquire_owned() else {
            tracing::warn!(%peer, "cluster port: too many connections; closed");
            continue;
        };
        let _ = stream.set_nodelay(true);
        let ctx = ctx.clone();
        let stop = stop.clone();
        tracker.spawn(async move {
            let conn = Framed::new(stream, FrameCodec::new(ctx.max_frame));
            tokio::select! {
                _ = stop.cancelled() => {}
                r = serve_connection(conn, &ctx) => {
                    if let Err(e) = r {
                        tracing::debug!(%peer, error = %e, "cluster connection ended");
                    }
                }
            }
            drop(permit);
        });
    }
}

async fn serve_connection(
    mut conn: ServerConn,
    ctx: &ServerContext,
) -> Result<(), squall_proto::FrameError> {
    while let Some(request) = conn.next().await {
        let request = request?;
        if !bool::from(request.token.as_ref().ct_eq(ctx.token.as_ref())) {
            let e = node_error(
                pb::node_error::Kind::Unauthenticated,
                "wrong or missing cluster token",
            );
            let response = pb::NodeResponse {
                id: request.id,
                result: Some(Reply::Error(e)),
            };
            conn.send(response).await?;
            return Ok(()); // closes the connection
        }
        let result = match request.op {
            Some(op) => handle(op, ctx).await,
            None => Reply::Error(node_error(
                pb::node_error::Kind::BadRequest,
                "a request without an op",
            )),
        };
        let response = pb::NodeResponse {
            id: request.id,
            result: Some(result),
        };
        conn.send(response).await?;
    }
    Ok(())
}

pub(crate) fn node_error(kind: pb::node_error::Kind, message: impl Into<String>) -> pb::NodeError {
    pb::NodeError {
        kind: kind as i32,
        message: message.into(),
        ..pb::NodeError::default()
    }
}

fn raft_error<E: std::fmt::Display>(e: RaftError<NodeId, E>) -> Reply {
    let kind = match &e {
        RaftError::Fatal(_) => pb::node_error::Kind::Stopped,
        RaftError::APIError(_) => pb::node_error::Kind::Other,
    };
    Reply::Error(node_error(kind, e.to_string()))
}

fn bad(e: CodecError) -> Reply {
    Reply::Error(node_error(pb::node_error::Kind::BadRequest, e.to_string()))
}

async fn handle(op: Op, ctx: &ServerContext) -> Reply {
    match op {
        Op::Append(r) => match codec::append_from(r) {
            Ok(req) => match ctx.raft.append_entries(req).await {
                Ok(reply) => Reply::Append(codec::append_reply_to(&reply)),
                Err(e) => raft_error(e),
            },
            Err(e) => bad(e),
        },
        Op::Vote(r) => match codec::vote_request_from(r) {
            Ok(req) => match ctx.raft.vote(req).await {
                Ok(reply) => Reply::Vote(codec::vote_reply_to(&reply)),
                Err(e) => raft_error(e),
            },
            Err(e) => bad(e),
        },
        Op::Snapshot(r) => match codec::install_from(r) {
            Ok(req) => match ctx.raft.install_snapshot(req).await {
                Ok(reply) => Reply::Snapshot(codec::install_reply_to(&reply)),
                Err(RaftError::APIError(InstallSnapshotError::SnapshotMismatch(m))) => {
                    let mut e = node_error(pb::node_error::Kind::SnapshotMismatch, m.to_string());
                    e.expect_snapshot_id = m.expect.id;
                    e.expect_offset = m.expect.offset;
                    e.got_snapshot_id = m.got.id;
                    e.got_offset = m.got.offset;
                    Reply::Error(e)
                }
                Err(e) => raft_error(e),
            },
            Err(e) => bad(e),
        },
        Op::Probe(_) => match ctx.raft.is_initialized().await {
            Ok(initialized) => Reply::Probe(pb::ProbeReply {
                node_id: ctx.id,
                initialized,
                client_addr: ctx.client_addr.clone(),
            }),
            Err(e) => Reply::Error(node_error(pb::node_error::Kind::Stopped, e.to_string())),
        },
        Op::Status(_) => Reply::Status(status(&ctx.raft)),
        Op::Change(c) => super::membership::change(&ctx.raft, c).await,
    }
}

/// This node's view of the cluster, from openraft's metrics.
pub fn status(raft: &Raft) -> pb::StatusReply {
    let m = raft.metrics().borrow().clone();
    let role = match m.state {
        ServerState::Leader => "leader",
        ServerState::Follower => "follower",
        ServerState::Candidate => "candidate",
        ServerState::Learner => "learner",
        ServerState::Shutdown => "shutdown",
    };
    let last_log = m.last_log_index.map(|index| pb::LogId {
        index,
        ..pb::LogId::default()
    });
    pb::StatusReply {
        node_id: m.id,
        role: role.to_owned(),
        term: m.current_term,
        leader: m.current_leader,
        last_log,
        applied: codec::opt_log_id_to(&m.last_applied),
        purged: codec::opt_log_id_to(&m.purged),
        membership: Some(codec::membership_to(m.membership_config.membership())),
        matched: m
            .replication
            .iter()
            .flatten()
            .filter_map(|(id, matched)| Some((*id, codec::log_id_to(matched.as_ref()?))))
            .collect(),
        quorum_ack_ms: m.millis_since_quorum_ack,
    }
}
