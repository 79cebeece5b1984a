//! An in-test TCP proxy in front of each member's cluster port, so a test can cut the
//! link between two members (both directions) and heal it, while every client port
//! stays reachable. Each member gets a proxy address; the members' `--peers` name those,
//! so every node-to-node connection goes through a proxy. Not here: the client ports
//! (never proxied) and the members themselves (`mod.rs`).
//!
//! The proxy in front of member T learns which member S dialed a connection from the
//! first Raft request on it: AppendEntries, Vote and InstallSnapshot all carry the
//! sender's vote, whose node is the sender (a leader or a candidate). Requests that name
//! no sender (formation probes, status) pass whatever is cut. Cutting S-T closes every
//! connection between them at once and closes each new one at its first Raft request:
//! to both nodes it looks like a peer that refuses connections.

use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;

use parking_lot::Mutex;
use prost::Message;
use squall_client::CancellationToken;
use squall_proto::cluster::{node_request::Op, NodeRequest};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;

/// Largest frame the proxy forwards (the cluster's default `max_frame_bytes`).
const MAX_FRAME: usize = 64 << 20;

#[derive(Default)]
struct Links {
    /// Cut pairs, smaller id first.
    cut: Mutex<HashSet<(u64, u64)>>,
    /// Open connections whose sender is known: (sender, target, its token).
    open: Mutex<Vec<(u64, u64, CancellationToken)>>,
}

fn pair(a: u64, b: u64) -> (u64, u64) {
    (a.min(b), a.max(b))
}

impl Links {
    fn is_cut(&self, a: u64, b: u64) -> bool {
        self.cut.lock().contains(&pair(a, b))
    }
}

/// The proxies of a cluster's members; dropping it stops them and closes every
/// connection through them.
pub struct Proxies {
    addrs: BTreeMap<u64, SocketAddr>,
    links: Arc<Links>,
    stop: CancellationToken,
    _tasks: JoinSet<()>,
}

impl Proxies {
    /// A proxy for each member id in `ids` (bound now, on 127.0.0.1:0), forwarding to
    /// `upstream(id)` (its cluster port) once the member listens there.
    pub async fn start(ids: &[u64], upstream: impl Fn(u64) -> SocketAddr) -> Proxies {
        let links = Arc::new(Links::default());
        let stop = CancellationToken::new();
        let mut tasks = JoinSet::new();
        let mut addrs = BTreeMap::new();
        for &id in ids {
            let listener = TcpListener::bind("127.0.0.1:0")
                .await
                .expect("bind a proxy");
            addrs.insert(id, listener.local_addr().expect("proxy address"));
            tasks.spawn(accept(
                listener,
                id,
                upstream(id),
                links.clone(),
                stop.clone(),
            ));
        }
        Proxies {
            addrs,
            links,
            stop,
            _tasks: tasks,
        }
    }

    /// The address the other members dial to reach member `id`.
    pub fn addr_of(&self, id: u64) -> SocketAddr {
        self.addrs[&id]
    }

    /// Cuts the link between members `a` and `b`, both directions: open connections
    /// closed, new ones refused.
    pub fn cut(&self, a: u64, b: u64) {
        self.links.cut.lock().insert(pair(a, b));
        let mut open = self.links.open.lock();
        open.retain(|(s, t, token)| {
            let hit = pair(*s, *t) == pair(a, b);
            if hit {
                token.cancel();
            }
            !hit && !token.is_cancelled()
        });
    }

    /// Cuts `node` off from every other member.
    pub fn isolate(&self, node: u64) {
        let others: Vec<u64> = self.addrs.keys().copied().filter(|&o| o != node).collect();
        for other in others {
            self.cut(node, other);
        }
    }

    /// Heals the link between `a` and `b`.
    pub fn heal(&self, a: u64, b: u64) {
        self.links.cut.lock().remove(&pair(a, b));
    }

    /// Heals every link.
    pub fn heal_all(&self) {
        self.links.cut.lock().clear();
    }
}

impl Drop for Proxies {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

async fn accept(
    listener: TcpListener,
    target: u64,
    upstream: SocketAddr,
    links: Arc<Links>,
    stop: CancellationToken,
) {
    let mut conns = JoinSet::new();
    loop {
        let accepted = tokio::select! {
            _ = stop.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        let Ok((down, _)) = accepted else { continue };
        let token = stop.child_token();
        conns.spawn(relay(down, target, upstream, links.clone(), token));
        // Reap the finished ones so the set stays as small as the open connections.
        while conns.try_join_next().is_some() {}
    }
}

/// Forwards one connection to member `target` until either side closes it or its
/// link is cut.
async fn relay(
    down: TcpStream,
    target: u64,
    upstream: SocketAddr,
    links: Arc<Links>,
    token: CancellationToken,
) {
    let Ok(up) = TcpStream::connect(upstream).await else {
        return; // The member is down: the dialer sees its connection closed.
    };
    let _ = down.set_nodelay(true);
    let _ = up.set_nodelay(true);
    let (mut down_rx, mut down_tx) = down.into_split();
    let (mut up_rx, mut up_tx) = up.into_split();
    let requests = async {
        let mut sender = None;
        loop {
            let mut len = [0u8; 4];
            down_rx.read_exact(&mut len).await?;
            let n = u32::from_be_bytes(len) as usize;
            if n > MAX_FRAME {
                return Ok::<(), std::io::Error>(());
            }
            let mut body = vec![0u8; n];
            down_rx.read_exact(&mut body).await?;
            if sender.is_none() {
                sender = sender_of(&body);
                if let Some(s) = sender {
                    links.open.lock().push((s, target, token.clone()));
                }
            }
            if sender.is_some_and(|s| links.is_cut(s, target)) {
                return Ok(());
            }
            up_tx.write_all(&len).await?;
            up_tx.write_all(&body).await?;
        }
    };
    let replies = tokio::io::copy(&mut up_rx, &mut down_tx);
    tokio::select! {
        _ = token.cancelled() => {}
        _ = requests => {}
        _ = replies => {}
    }
    token.cancel();
}

/// The member that sent this request, when it is a Raft request.
fn sender_of(frame: &[u8]) -> Option<u64> {
    let request = NodeRequest::decode(frame).ok()?;
    let vote = match request.op? {
        Op::Append(a) => a.vote,
        Op::Vote(v) => v.vote,
        Op::Snapshot(s) => s.vote,
        _ => None,
    };
    vote.map(|v| v.node_id)
}
