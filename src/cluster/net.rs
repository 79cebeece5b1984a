//! The cluster port: how nodes talk to each other. The client side implements
//! openraft's `RaftNetwork` over one TCP connection per peer and purpose, one request
//! at a time, in the client port's framing (`squall_proto::FrameCodec`) with the
//! messages of `proto/cluster.proto`; the server side accepts those connections and
//! hands each request to the local Raft node. With TLS configured both sides speak TLS
//! (`ClusterTls`: this node's certificate, the members' CA). Only this file touches the
//! cluster port's sockets; message conversion is `codec.rs`.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use openraft::error::{
    InstallSnapshotError, NetworkError, PayloadTooLarge, RPCError, RaftError, RemoteError,
    SnapshotMismatch, Unreachable,
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
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::{TlsAcceptor, TlsConnector};
use tokio_util::codec::Framed;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::codec::{self, CodecError};
use super::heard::Heard;
use super::types::{Member, NodeId, Raft, TypeConfig};

/// The bytes of one cluster connection: TCP, or TLS over TCP.
pub trait Io: AsyncRead + AsyncWrite + Unpin + Send + Sync {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send + Sync> Io for T {}

type ClientConn = Framed<Box<dyn Io>, FrameCodec<pb::NodeRequest, pb::NodeResponse>>;
type ServerConn = Framed<Box<dyn Io>, FrameCodec<pb::NodeResponse, pb::NodeRequest>>;

/// Longest a connection attempt to a peer may take (the TLS handshake has as long again).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// Longest an accepted connection may take to finish its TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

/// TLS on the cluster port, or none: this node's certificate for the connections it
/// accepts, and the CA it checks the other members' certificates against for the
/// connections it makes. Both or neither (`cluster.tls_ca` with `tls.cert`/`tls.key`).
#[derive(Clone, Default)]
pub struct ClusterTls {
    /// Serves accepted connections with this node's certificate.
    pub acceptor: Option<TlsAcceptor>,
    /// Checks the members' certificates on connections this node makes.
    pub connector: Option<TlsConnector>,
}

impl ClusterTls {
    /// TLS as `server` (`tls.cert`, `tls.key`) and `cluster` (`cluster.tls_ca`) configure
    /// it (their `validate` has checked they go together). Unreadable or unusable files
    /// are configuration errors naming their key.
    pub fn from_config(
        server: &crate::config::ServerConfig,
        cluster: &crate::config::ClusterConfig,
    ) -> Result<ClusterTls, crate::config::ConfigError> {
        let Some(ca) = &cluster.tls_ca else {
            return Ok(ClusterTls::default());
        };
        let error = |reason: String| crate::config::ConfigError {
            key: "cluster.tls_ca".to_owned(),
            reason,
        };
        let acceptor = crate::server::tls::acceptor(server)?
            .ok_or_else(|| error("needs tls.cert and tls.key".to_owned()))?;
        let pem =
            std::fs::read(ca).map_err(|e| error(format!("cannot read {}: {e}", ca.display())))?;
        let connector = squall_client::tls_connector(&pem, &ca.display().to_string())
            .map_err(|e| error(e.to_string()))?;
        Ok(ClusterTls {
            acceptor: Some(acceptor),
            connector: Some(connector),
        })
    }

    /// Whether the cluster port speaks TLS.
    pub fn is_on(&self) -> bool {
        debug_assert_eq!(self.acceptor.is_some(), self.connector.is_some());
        self.acceptor.is_some()
    }
}

/// Opens a TLS session over `stream` to `addr` (HOST:PORT; the certificate must name HOST).
async fn tls_connect(
    connector: &TlsConnector,
    addr: &str,
    stream: TcpStream,
) -> std::io::Result<Box<dyn Io>> {
    let host = addr.rsplit_once(':').map_or(addr, |(h, _)| h);
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let name = rustls_pki_types::ServerName::try_from(host.to_owned()).map_err(|e| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("`{host}` is not a TLS server name: {e}"),
        )
    })?;
    let stream = tokio::time::timeout(CONNECT_TIMEOUT, connector.connect(name, stream))
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "TLS handshake"))??;
    Ok(Box::new(stream))
}

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
    tls: Option<TlsConnector>,
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
            tls: None,
            conn: None,
            next_id: 1,
        }
    }

    /// Speaks TLS to the node, checking its certificate with `connector` (if any).
    pub fn with_tls(mut self, connector: Option<TlsConnector>) -> NodeClient {
        self.tls = connector;
        self
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
            let io: Box<dyn Io> = match &self.tls {
                None => Box::new(stream),
                Some(connector) => {
                    tls_connect(connector, &self.addr, stream)
                        .await
                        .map_err(|source| CallError::Unreachable {
                            addr: self.addr.clone(),
                            source,
                        })?
                }
            };
            self.conn = Some(Framed::new(io, FrameCodec::new(self.max_frame)));
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
    /// Checks the members' certificates, with TLS on.
    pub tls: Option<TlsConnector>,
    /// The log's encodings of its entries, sent as they are.
    pub encoded: super::log::Encoded,
    /// Where each answer from a peer is recorded.
    pub heard: Arc<Heard>,
}

/// openraft's view of one peer.
pub struct PeerClient {
    target: NodeId,
    client: NodeClient,
    encoded: super::log::Encoded,
    heard: Arc<Heard>,
}

impl PeerClient {
    /// Records that the peer answered (whatever the answer, a refusal included) and
    /// passes the call's outcome on.
    fn answered(&self, outcome: Result<Reply, CallError>) -> Result<Reply, CallError> {
        if matches!(outcome, Ok(_) | Err(CallError::Remote(_))) {
            self.heard.heard_from(self.target);
        }
        outcome
    }
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = PeerClient;

    async fn new_client(&mut self, target: NodeId, node: &Member) -> PeerClient {
        PeerClient {
            target,
            client: NodeClient::new(node.cluster_addr.clone(), self.max_frame)
                .with_token(self.token.clone())
                .with_tls(self.tls.clone()),
            encoded: self.encoded.clone(),
            heard: self.heard.clone(),
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
        let entries = rpc.entries.len() as u64;
        let encoded = &self.encoded;
        let append = codec::append_to(&rpc, |entry| {
            encoded
                .get(&entry.log_id)
                .unwrap_or_else(|| codec::entry_bytes(entry))
        });
        // A frame over the limit would be refused by the peer: ask openraft for fewer
        // entries at once (a quarter of the frame is kept for the rest of the request).
        let bytes = prost::Message::encoded_len(&append);
        if entries > 1 && bytes > self.client.max_frame - self.client.max_frame / 4 {
            let fit = (entries * (self.client.max_frame as u64 / 2) / bytes as u64).max(1);
            return Err(RPCError::PayloadTooLarge(
                PayloadTooLarge::new_entries_hint(fit),
            ));
        }
        let op = Op::Append(append);
        let outcome = self.client.call(op, option.hard_ttl()).await;
        match self.answered(outcome) {
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
        let outcome = self.client.call(op, option.hard_ttl()).await;
        match self.answered(outcome) {
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
        let outcome = self.client.call(op, option.hard_ttl()).await;
        match self.answered(outcome) {
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
    /// Serves connections over TLS, with TLS on.
    pub tls: Option<TlsAcceptor>,
    /// Where received entries' encodings are offered to the log.
    pub encoded: super::log::Encoded,
    /// Where appends accepted from the leader are recorded, and what status reports.
    pub heard: Arc<Heard>,
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
            let io: Box<dyn Io> = match &ctx.tls {
                None => Box::new(stream),
                Some(acceptor) => {
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                        Ok(Ok(s)) => Box::new(s),
                        Ok(Err(e)) => {
                            tracing::debug!(%peer, error = %e, "cluster port: TLS handshake failed");
                            return;
                        }
                        Err(_) => {
                            tracing::debug!(%peer, "cluster port: TLS handshake timed out");
                            return;
                        }
                    }
                }
            };
            let conn = Framed::new(io, FrameCodec::new(ctx.max_frame));
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
            Ok((req, raw)) => {
                // Offered while openraft appends (it answers once they are on disk).
                let _offered = ctx.encoded.offer(raw);
                let sender = req.vote.leader_id().node_id;
                match ctx.raft.append_entries(req).await {
                    Ok(reply) => {
                        // From this node's leader (a stale one is told of the newer vote).
                        if !matches!(reply, AppendEntriesResponse::HigherVote(_)) {
                            ctx.heard.heard_from(sender);
                        }
                        Reply::Append(codec::append_reply_to(&reply))
                    }
                    Err(e) => raft_error(e),
                }
            }
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
        Op::Status(_) => Reply::Status(status(&ctx.raft, &ctx.heard)),
        Op::Change(c) => super::membership::change(&ctx.raft, c).await,
    }
}

/// This node's view of the cluster, from openraft's metrics and what it has `heard`.
pub fn status(raft: &Raft, heard: &Heard) -> pb::StatusReply {
    let m = raft.metrics().borrow().clone();
    // Read after the applied index, which it is never below (`Heard::commit_index`).
    let committed = heard
        .commit_index(m.last_applied.map(|l| l.index))
        .map(|index| pb::LogId {
            index,
            ..pb::LogId::default()
        });
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
        committed,
        heard_ms: heard
            .contacts()
            .into_iter()
            .map(|(id, age)| (id, age.as_millis().try_into().unwrap_or(u64::MAX)))
            .collect(),
    }
}
