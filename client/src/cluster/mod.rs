//! `ClusterClient`: several independent brokers, or replicated clusters, used as one.
//! Each queue belongs to one node, chosen by rendezvous hashing of the queue name over
//! the node names (`rendezvous.rs`; a replicated cluster is one node named by its
//! cluster id, however many of its members are listed); every call about a queue goes
//! to that node through the node's own [`Client`], which reconnects by itself (to a
//! cluster's leader). `ClusterWorker` runs a handler over many queues, each subscribed
//! on its owning node.
//!
//! This module knows nothing of sockets or frames: it routes calls to per-node
//! `Client`s. The nodes (clusters) never talk to each other. The node list is the
//! client's configuration.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use parking_lot::Mutex;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::admin::{PeekedTask, QueueConfigUpdate, QueueInfo, StateFilter};
use crate::backoff::ReconnectPolicy;
use crate::client::Client;
use crate::config::ClientBuilder;
use crate::error::{ClientError, Result};
use crate::publish::{confirmed, Message, PublishOptions, Published, TaskId};
use crate::rendezvous::rendezvous_owner;
use crate::status::{TaskOutcome, TaskStatus};
use crate::subscription::SubscribeBuilder;
use crate::worker::Worker;

mod worker;

pub use self::worker::ClusterWorker;

/// Several independent Squall brokers used as one: each queue lives on one node,
/// chosen by rendezvous hashing of the queue name over the node names (see
/// [`rendezvous_weight`](crate::rendezvous_weight)). Cheap to clone.
///
/// Made by [`Client::cluster`] or [`ClientBuilder::connect_cluster`]. Each node is
/// `ADDR` or `NAME=ADDR`; the name (the address when none is given) is what the hash
/// uses, so **every client of a cluster must list the same node names** (in any
/// order). Name the nodes when clients reach them by different addresses (inside and
/// outside a container network); the client warns when a named node reports a
/// different `node_id`.
///
/// * Publishing, subscribing, workers, task status and the queue admin calls go to the
///   queue's node. A batch spanning several nodes is split per node and sent in
///   parallel; it is all-or-nothing per node only (see
///   [`publish_batch`](Self::publish_batch)).
/// * Task ids are per node, so status calls name the queue:
///   [`task(queue, id)`](Self::task), [`wait_result(queue, id, ..)`](Self::wait_result).
/// * A node that is down: calls for its queues fail at once with
///   [`ClientError::NodeUnavailable`] naming it (nothing was sent), other queues keep
///   working, and the node's client reconnects in the background (re-subscribing its
///   subscriptions and workers) when it is back.
/// * Adding a node moves only the queues that hash to it, about `1/n` of them. Drain a
///   queue on its old node before moving it (docs/operations.md).
/// * Addresses whose leader announces the same cluster id (members of one replicated
///   cluster) are one node, named by the cluster id: list any members of each cluster
///   (a cluster outgrows itself by adding another cluster). An address that does not
///   answer at start is left out when a cluster that answered names it as a member.
///
/// ```no_run
/// # async fn demo() -> Result<(), squall_client::ClientError> {
/// use squall_client::Client;
///
/// let cluster = Client::cluster(["squall-0=10.0.0.1:7600", "squall-1=10.0.0.2:7600"]).await?;
/// let published = cluster.publish("emails", "hello").await?;
/// println!("task {} on {}", published.id, cluster.node_of("emails"));
/// let status = cluster.task("emails", published.id).await?;
/// # let _ = status; Ok(()) }
/// ```
#[derive(Clone)]
pub struct ClusterClient {
    inner: Arc<ClusterInner>,
}

struct ClusterInner {
    nodes: Vec<Arc<Node>>,
    names: Vec<Arc<str>>,
    shutdown: CancellationToken,
    dialers: Mutex<Vec<JoinHandle<()>>>,
}

impl Drop for ClusterInner {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// One node: its name, address and connection state.
struct Node {
    name: Arc<str>,
    addr: Arc<str>,
    /// Whether the name was given (`NAME=ADDR`), so it is checked against `node_id`.
    named: bool,
    state: watch::Sender<NodeState>,
}

enum NodeState {
    /// Never connected yet: the first dial failed; a background task keeps dialling.
    Dialing { reason: String },
    /// Connected once; the node's `Client` reconnects by itself from now on.
    Connected(Client),
    /// The cluster client was closed.
    Closed,
}

/// One node's answer to [`ClusterClient::queues`].
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct NodeQueues {
    /// The node's name.
    pub node: String,
    /// The node's address.
    pub addr: String,
    /// Its queues, or why they could not be listed.
    pub queues: Result<Vec<QueueInfo>>,
}

/// A node of the list: its name, its address, and whether the name was given.
type NodeSpec = (String, String, bool);

/// Parses `ADDR` or `NAME=ADDR`.
fn parse_node(spec: &str) -> Result<NodeSpec> {
    let spec = spec.trim();
    let (name, addr, named) = match spec.split_once('=') {
        Some((name, addr)) => (name.trim(), addr.trim(), true),
        None => (spec, spec, false),
    };
    if name.is_empty() || addr.is_empty() {
        return Err(ClientError::Config(format!(
            "cluster node `{spec}` is not ADDR or NAME=ADDR"
        )));
    }
    Ok((name.to_owned(), addr.to_owned(), named))
}

/// Checks and parses a node list: at least one node, names and addresses distinct.
fn parse_nodes<I, S>(nodes: I) -> Result<Vec<(String, String, bool)>>
where
    I: IntoIterator<Item = S>,
    S: AsRef<str>,
{
    let parsed = nodes
        .into_iter()
        .map(|s| parse_node(s.as_ref()))
        .collect::<Result<Vec<_>>>()?;
    if parsed.is_empty() {
        return Err(ClientError::Config(
            "a cluster needs at least one node".into(),
        ));
    }
    let mut names = std::collections::HashSet::new();
    let mut addrs = std::collections::HashSet::new();
    for (name, addr, _) in &parsed {
        if !names.insert(name.as_str()) || !addrs.insert(addr.as_str()) {
            return Err(ClientError::Config(format!(
                "cluster node `{name}` ({addr}) is listed twice"
            )));
        }
    }
    Ok(parsed)
}

impl Client {
    /// Connects to a cluster of independent nodes with default settings; see
    /// [`ClusterClient`] and [`ClientBuilder::connect_cluster`].
    pub async fn cluster<I, S>(nodes: I) -> Result<ClusterClient>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        ClientBuilder::new().connect_cluster(nodes).await
    }
}

impl ClientBuilder {
    /// Connects to every node of a cluster (`ADDR` or `NAME=ADDR` each), with this
    /// builder's settings for each node's connection.
    ///
    /// Nodes are dialled in parallel. A node that cannot be reached now does not fail
    /// the call: its queues fail with [`ClientError::NodeUnavailable`] until a
    /// background task (backing off from 100 ms to 5 s) reaches it. Fails with
    /// [`ClientError::Config`] for an empty list or a node listed twice, and with
    /// [`ClientError::Unavailable`] when no node at all can be reached.
    pub async fn connect_cluster<I, S>(self, nodes: I) -> Result<ClusterClient>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let specs = parse_nodes(nodes)?;
        let start = Instant::now();
        let dials = specs
            .iter()
            .map(|(_, addr, _)| self.clone().connect(addr.clone()));
        let dialed = futures_util::future::join_all(dials).await;
        let shutdown = CancellationToken::new();
        let mut nodes = Vec::with_capacity(specs.len());
        let mut failures = Vec::new();
        for ((name, addr, named), result) in one_node_per_cluster(specs, dialed).await? {
            let state = match result {
                Ok(client) => NodeState::Connected(client),
                Err(e @ ClientError::Config(_)) => return Err(e),
                Err(e) => {
                    warn!(node = %name, addr = %addr, error = %e, "cluster node unreachable; dialling it in the background");
                    failures.push(format!("{name} ({addr}): {e}"));
                    NodeState::Dialing {
                        reason: e.to_string(),
                    }
                }
            };
            let node = Arc::new(Node {
                name: name.into(),
                addr: addr.into(),
                named,
                state: watch::Sender::new(state),
            });
            node.check_identity();
            nodes.push(node);
        }
        if failures.len() == nodes.len() {
            return Err(ClientError::Unavailable {
                waited: start.elapsed(),
                reason: format!("no node of the cluster answered: {}", failures.join("; ")),
            });
        }
        let dialers = nodes
            .iter()
            .filter(|n| matches!(&*n.state.borrow(), NodeState::Dialing { .. }))
            .map(|n| tokio::spawn(dial_until_up(n.clone(), self.clone(), shutdown.clone())))
            .collect();
        let names = nodes.iter().map(|n| n.name.clone()).collect();
        Ok(ClusterClient {
            inner: Arc::new(ClusterInner {
                nodes,
                names,
                shutdown,
                dialers: Mutex::new(dialers),
            }),
        })
    }
}

/// Merges the addresses whose leader announced the same cluster id into one node named
/// by that id (the first connection kept, the others closed); a single broker stays a
/// node of its own. An address that did not answer is dropped when a cluster that
/// answered names it as a member. Two nodes named alike are a configuration error.
async fn one_node_per_cluster(
    specs: Vec<NodeSpec>,
    dialed: Vec<Result<Client>>,
) -> Result<Vec<(NodeSpec, Result<Client>)>> {
    let mut kept: Vec<(usize, NodeSpec, Result<Client>)> = Vec::new();
    let mut clusters: Vec<String> = Vec::new();
    let mut members: std::collections::HashSet<String> = std::collections::HashSet::new();
    let mut failed = Vec::new();
    for (i, ((name, addr, named), result)) in specs.into_iter().zip(dialed).enumerate() {
        let client = match result {
            Ok(client) => client,
            Err(e) => {
                failed.push((i, (name, addr, named), e));
                continue;
            }
        };
        let Some(cluster) = client.server_info().cluster else {
            kept.push((i, (name, addr, named), Ok(client)));
            continue;
        };
        members.extend(cluster.members.iter().map(|(_, a)| a.clone()));
        if clusters.contains(&cluster.cluster_id) {
            client.close().await;
            continue;
        }
        clusters.push(cluster.cluster_id.clone());
        kept.push((i, (cluster.cluster_id, addr, false), Ok(client)));
    }
    for (i, spec, e) in failed {
        if !members.contains(&spec.1) {
            kept.push((i, spec, Err(e)));
        }
    }
    kept.sort_by_key(|(i, _, _)| *i);
    let mut names = std::collections::HashSet::new();
    for (_, (name, _, _), _) in &kept {
        if !names.insert(name.clone()) {
            return Err(ClientError::Config(format!(
                "node name `{name}` is also a cluster's id; name the nodes otherwise"
            )));
        }
    }
    Ok(kept
        .into_iter()
        .map(|(_, spec, result)| (spec, result))
        .collect())
}

/// Dials a node that was unreachable at start until it answers or the cluster client
/// closes; from then on its `Client` reconnects by itself.
async fn dial_until_up(node: Arc<Node>, builder: ClientBuilder, shutdown: CancellationToken) {
    let policy = ReconnectPolicy::default();
    let mut failures = 0u32;
    loop {
        let delay = policy.delay(failures, rand::random::<f64>());
        let dialed = tokio::select! {
            _ = shutdown.cancelled() => return,
            dialed = async {
                tokio::time::sleep(delay).await;
                builder.clone().connect(node.addr.to_string()).await
            } => dialed,
        };
        match dialed {
            Ok(client) => {
                info!(node = %node.name, addr = %node.addr, "cluster node reachable");
                node.state.send_replace(NodeState::Connected(client));
                node.check_identity();
                return;
            }
            Err(e) => {
                failures = failures.saturating_add(1);
                node.state.send_replace(NodeState::Dialing {
                    reason: e.to_string(),
                });
            }
        }
    }
}

impl Node {
    /// The node's client if it is connected now; otherwise `NodeUnavailable` at once.
    fn connected(&self) -> Result<Client> {
        match &*self.state.borrow() {
            NodeState::Connected(c) if c.is_connected() => Ok(c.clone()),
            NodeState::Connected(_) => Err(self.unavailable("connection lost; reconnecting")),
            NodeState::Dialing { reason } => Err(self.unavailable(reason)),
            NodeState::Closed => Err(ClientError::Closed),
        }
    }

    /// The node's client, connected now or reconnecting (a `Worker` or subscription
    /// made on it continues across reconnects); `NodeUnavailable` if never connected.
    fn client(&self) -> Result<Client> {
        match &*self.state.borrow() {
            NodeState::Connected(c) => Ok(c.clone()),
            NodeState::Dialing { reason } => Err(self.unavailable(reason)),
            NodeState::Closed => Err(ClientError::Closed),
        }
    }

    /// Waits until the node has a client (or the cluster closes: `None`).
    async fn wait_client(&self, stop: &CancellationToken) -> Option<Client> {
        let mut rx = self.state.subscribe();
        tokio::select! {
            _ = stop.cancelled() => None,
            state = rx.wait_for(|s| !matches!(s, NodeState::Dialing { .. })) => match state.ok().as_deref() {
                Some(NodeState::Connected(c)) => Some(c.clone()),
                _ => None,
            },
        }
    }

    fn unavailable(&self, reason: &str) -> ClientError {
        ClientError::NodeUnavailable {
            node: self.name.to_string(),
            addr: self.addr.to_string(),
            reason: reason.to_owned(),
        }
    }

    /// Names the node in errors that say nothing was sent or that the connection broke.
    fn name_error(&self, e: ClientError) -> ClientError {
        match e {
            ClientError::Unavailable { reason, .. } => self.unavailable(&reason),
            ClientError::ConnectionLost { reason } => ClientError::ConnectionLost {
                reason: format!("node {} ({}): {reason}", self.name, self.addr),
            },
            other => other,
        }
    }

    /// Warns when a node named in the list reports another `node_id`: the list is
    /// probably wired wrong, and queues would be looked for on the wrong node.
    fn check_identity(&self) {
        if let NodeState::Connected(c) = &*self.state.borrow() {
            let reported = c.server_info().node_id;
            if self.named && !reported.is_empty() && *reported != *self.name {
                warn!(node = %self.name, addr = %self.addr, reported = %reported, "cluster node reports a different node_id than its name in the node list; check the list");
            }
        }
    }
}

impl ClusterClient {
    /// The node names, in the order given.
    pub fn nodes(&self) -> impl Iterator<Item = &str> + '_ {
        self.inner.names.iter().map(|n| &**n)
    }

    /// The address of the node named `node`.
    pub fn node_addr(&self, node: &str) -> Option<&str> {
        self.find(node).map(|n| &*n.addr)
    }

    /// The name of the node that owns `queue`.
    pub fn node_of(&self, queue: &str) -> &str {
        &self.owner(queue).name
    }

    /// True while the node named `node` has a live connection.
    pub fn is_node_connected(&self, node: &str) -> bool {
        self.find(node).is_some_and(|n| n.connected().is_ok())
    }

    /// The [`Client`] of the node that owns `queue`, for anything this type does not
    /// wrap. Fails with [`ClientError::NodeUnavailable`] if that node has never been
    /// reached; the client returned may be reconnecting.
    pub fn client_for(&self, queue: &str) -> Result<Client> {
        self.owner(queue).client()
    }

    fn find(&self, node: &str) -> Option<&Arc<Node>> {
        self.inner.nodes.iter().find(|n| &*n.name == node)
    }

    fn owner(&self, queue: &str) -> &Arc<Node> {
        let i = rendezvous_owner(&self.inner.names, queue).unwrap_or(0);
        &self.inner.nodes[i]
    }

    /// Runs `call` on the owning node's client if it is connected now.
    async fn on_owner<T, F, Fut>(&self, queue: &str, call: F) -> Result<T>
    where
        F: FnOnce(Client) -> Fut,
        Fut: Future<Output = Result<T>>,
    {
        let node = self.owner(queue);
        let client = node.connected()?;
        call(client).await.map_err(|e| node.name_error(e))
    }

    /// Publishes one task on the queue's node; see [`Client::publish`].
    pub async fn publish(
        &self,
        queue: impl Into<String>,
        payload: impl Into<Bytes>,
    ) -> Result<Published> {
        self.publish_with(queue, payload, PublishOptions::default())
            .await
    }

    /// Publishes one task with options on the queue's node; see [`Client::publish_with`].
    pub async fn publish_with(
        &self,
        queue: impl Into<String>,
        payload: impl Into<Bytes>,
        options: PublishOptions,
    ) -> Result<Published> {
        let queue = queue.into();
        let payload = payload.into();
        self.on_owner(&queue.clone(), |c| async move {
            c.publish_with(queue, payload, options).await
        })
        .await
    }

    /// Publishes tasks of any queues; returns one [`Published`] per message, in order.
    ///
    /// The batch is split per owning node and the parts are sent in parallel. Every
    /// node involved must be connected, or nothing is sent
    /// ([`ClientError::NodeUnavailable`]). Each part is all-or-nothing on its node, but
    /// the batch as a whole is not: if one part fails after another was stored, the
    /// error is returned and the stored part stays. Give every task an idempotency
    /// key to make sending the whole batch again safe.
    pub async fn publish_batch<I, M>(&self, messages: I) -> Result<Vec<Published>>
    where
        I: IntoIterator<Item = M>,
        M: Into<Message>,
    {
        // node index -> (positions in the batch, messages)
        let mut parts: BTreeMap<usize, (Vec<usize>, Vec<Message>)> = BTreeMap::new();
        let mut total = 0;
        for (pos, message) in messages.into_iter().map(Into::into).enumerate() {
            let node = rendezvous_owner(&self.inner.names, message.queue()).unwrap_or(0);
            let part = parts.entry(node).or_default();
            part.0.push(pos);
            part.1.push(message);
            total += 1;
        }
        let mut sends = Vec::with_capacity(parts.len());
        for (node, (positions, batch)) in parts {
            let node = &self.inner.nodes[node];
            let client = node.connected()?;
            sends.push(async move {
                let result = client.publish_batch(batch).await;
                (node, positions, result)
            });
        }
        let mut out: Vec<Option<Published>> = vec![None; total];
        for (node, positions, result) in futures_util::future::join_all(sends).await {
            let published = result.map_err(|e| node.name_error(e))?;
            let published = confirmed(published.into_iter(), positions.len())?;
            for (pos, p) in positions.into_iter().zip(published) {
                out[pos] = Some(p);
            }
        }
        // Every position belongs to exactly one part, each confirmed in full.
        confirmed(
            out.into_iter().flatten().collect::<Vec<_>>().into_iter(),
            total,
        )
    }

    /// Starts a subscription on the queue's node: `cluster.subscribe(q)?.prefetch(8).await?`.
    /// The subscription survives that node's reconnects like any other.
    pub fn subscribe(&self, queue: impl Into<String>) -> Result<SubscribeBuilder> {
        let queue = queue.into();
        let node = self.owner(&queue);
        Ok(node.connected()?.subscribe(queue))
    }

    /// A [`Worker`] for `queue` on its node (the node's client may be reconnecting; the
    /// worker subscribes when it runs). For many queues use [`workers`](Self::workers).
    pub fn worker(&self, queue: impl Into<String>) -> Result<Worker> {
        let queue = queue.into();
        Ok(self.owner(&queue).client()?.worker(queue))
    }

    /// The status of task `id` of `queue`. Task ids are per node (two nodes can both
    /// have a task 7), so the queue says which node to ask.
    pub async fn task(&self, queue: &str, id: TaskId) -> Result<TaskStatus> {
        self.on_owner(queue, |c| async move { c.task(id).await })
            .await
    }

    /// Waits for task `id` of `queue` to finish; see [`Client::wait_result`].
    pub async fn wait_result(
        &self,
        queue: &str,
        id: TaskId,
        timeout: Duration,
    ) -> Result<TaskOutcome> {
        self.on_owner(queue, |c| async move { c.wait_result(id, timeout).await })
            .await
    }

    /// Every node's queues, asked in parallel; a node that cannot answer has its error
    /// in [`NodeQueues::queues`]. In node-list order.
    pub async fn queues(&self) -> Vec<NodeQueues> {
        let asks = self.inner.nodes.iter().map(|node| async move {
            let queues = match node.connected() {
                Ok(c) => c.queues().await.map_err(|e| node.name_error(e)),
                Err(e) => Err(e),
            };
            NodeQueues {
                node: node.name.to_string(),
                addr: node.addr.to_string(),
                queues,
            }
        });
        futures_util::future::join_all(asks).await
    }

    /// One queue, from its node; see [`Client::queue`].
    pub async fn queue(&self, queue: &str) -> Result<QueueInfo> {
        let q = queue.to_owned();
        self.on_owner(queue, |c| async move { c.queue(q).await })
            .await
    }

    /// Changes a queue's configuration on its node; see [`Client::set_queue_config`].
    pub async fn set_queue_config(
        &self,
        queue: &str,
        update: QueueConfigUpdate,
    ) -> Result<QueueInfo> {
        let q = queue.to_owned();
        self.on_owner(
            queue,
            |c| async move { c.set_queue_config(q, update).await },
        )
        .await
    }

    /// Pauses a queue on its node; see [`Client::pause`].
    pub async fn pause(&self, queue: &str) -> Result<QueueInfo> {
        let q = queue.to_owned();
        self.on_owner(queue, |c| async move { c.pause(q).await })
            .await
    }

    /// Resumes a queue on its node; see [`Client::resume`].
    pub async fn resume(&self, queue: &str) -> Result<QueueInfo> {
        let q = queue.to_owned();
        self.on_owner(queue, |c| async move { c.resume(q).await })
            .await
    }

    /// Peeks at a queue on its node; see [`Client::peek`].
    pub async fn peek(
        &self,
        queue: &str,
        state: StateFilter,
        limit: u32,
    ) -> Result<Vec<PeekedTask>> {
        let q = queue.to_owned();
        self.on_owner(queue, |c| async move { c.peek(q, state, limit).await })
            .await
    }

    /// Purges a queue on its node; see [`Client::purge`].
    pub async fn purge(&self, queue: &str, state: Option<StateFilter>) -> Result<u64> {
        let q = queue.to_owned();
        self.on_owner(queue, |c| async move { c.purge(q, state).await })
            .await
    }

    /// Redrives a queue's dead tasks on its node; see [`Client::redrive`].
    pub async fn redrive(&self, queue: &str, limit: Option<u32>) -> Result<u64> {
        let q = queue.to_owned();
        self.on_owner(queue, |c| async move { c.redrive(q, limit).await })
            .await
    }

    /// Deletes a queue on its node; see [`Client::delete_queue`].
    pub async fn delete_queue(&self, queue: &str) -> Result<u64> {
        let q = queue.to_owned();
        self.on_owner(queue, |c| async move { c.delete_queue(q).await })
            .await
    }

    /// Closes every node's client and stops dialling unreachable nodes; see
    /// [`Client::close`]. Idempotent.
    pub async fn close(&self) {
        self.inner.shutdown.cancel();
        let dialers = std::mem::take(&mut *self.inner.dialers.lock());
        for dialer in dialers {
            let _ = dialer.await;
        }
        for node in &self.inner.nodes {
            if let NodeState::Connected(c) = node.state.send_replace(NodeState::Closed) {
                c.close().await;
            }
        }
    }
}

impl std::fmt::Debug for ClusterClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let nodes: Vec<_> = self
            .inner
            .nodes
            .iter()
            .map(|n| (n.name.clone(), n.addr.clone(), n.connected().is_ok()))
            .collect();
        f.debug_struct("ClusterClient")
            .field("nodes (name, addr, connected)", &nodes)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_lists_are_checked() {
        assert_eq!(
            parse_node(" squall-0 = 10.0.0.1:7600 ").unwrap(),
            ("squall-0".into(), "10.0.0.1:7600".into(), true)
        );
        assert_eq!(
            parse_node("10.0.0.1:7600").unwrap(),
            ("10.0.0.1:7600".into(), "10.0.0.1:7600".into(), false)
        );
        for bad in ["", "=a:1", "a="] {
            assert!(
                matches!(parse_node(bad), Err(ClientError::Config(_))),
                "{bad:?}"
            );
        }
        assert!(matches!(
            parse_nodes(Vec::<String>::new()),
            Err(ClientError::Config(_))
        ));
        let twice = parse_nodes(["a=h:1", "a=h:2"]).unwrap_err();
        assert!(twice.to_string().contains("listed twice"), "{twice}");
        assert!(parse_nodes(["a=h:1", "b=h:1"]).is_err());
        assert_eq!(parse_nodes(["a=h:1", "b=h:2"]).unwrap().len(), 2);
    }
}
