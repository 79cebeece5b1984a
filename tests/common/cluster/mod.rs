//! Clusters for the replication tests (issue 15): members as child brokers on
//! 127.0.0.1 with their own ports and data directories, started with cluster flags and
//! a shared cluster token, their views over the cluster port, a client that follows
//! the leader; the checker (`ledger.rs`), the load that feeds it (`load.rs`) and the
//! TCP proxy that partitions members (`proxy.rs`). Included by the replication test
//! files only (`#[path]`), next to `common`.
#![allow(dead_code)]

pub mod ledger;
pub mod load;
pub mod proxy;

use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use squall::cluster::net::NodeClient;
use squall_client::{Client, Delivery, PublishOptions, ReconnectPolicy, Subscription, TaskId};
use squall_proto::cluster::{self as pb, node_request::Op, node_response::Result as Reply};

use crate::common::ChildBroker;
use proxy::Proxies;

pub const NODES: u64 = 3;
pub const TOKEN: &str = "cluster-secret";
/// Generous: elections take about a second; the machine running CI is loaded.
pub const WITHIN: Duration = Duration::from_secs(30);

/// A port that is free now, below Linux's ephemeral range (32768-60999): a port the
/// kernel handed out for `127.0.0.1:0` may be handed out again as the source port of
/// a connection (a probe, a client) before the member binds it, which then fails to
/// start.
/// A port is handed out once per test process: two members of one cluster given the
/// same free port (picked independently, bound only later) made one of them fail to
/// start now and then.
pub fn free_addr() -> SocketAddr {
    use std::hash::{BuildHasher, RandomState};
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    let random = RandomState::new();
    let mut given = GIVEN.lock().unwrap();
    for attempt in 0u32..1000 {
        let port = 20_000 + (random.hash_one(attempt) % 12_000) as u16;
        if given.contains(&port) {
            continue;
        }
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        if TcpListener::bind(addr).is_ok() {
            given.push(port);
            return addr;
        }
    }
    panic!("no free port in 20000-31999");
}

pub struct Member {
    pub id: u64,
    pub client: SocketAddr,
    /// Its cluster port (where it listens; the tests ask it for its view here).
    pub cluster: SocketAddr,
    pub dir: PathBuf,
}

/// Members 1..=n, each with its own ports and data directory (kept alive by the
/// returned `TempDir`s).
pub fn members(n: u64) -> (Vec<tempfile::TempDir>, Vec<Member>) {
    let dirs: Vec<tempfile::TempDir> = (0..n).map(|_| tempfile::tempdir().unwrap()).collect();
    let members = (1..=n)
        .map(|id| Member {
            id,
            client: free_addr(),
            cluster: free_addr(),
            dir: dirs[id as usize - 1].path().to_owned(),
        })
        .collect();
    (dirs, members)
}

/// `--peers` naming `members` at their cluster ports.
pub fn peers_of(members: &[Member]) -> String {
    peers_at(members, |m| m.cluster)
}

/// `--peers` naming `members` at `addr(member)`.
pub fn peers_at(members: &[Member], addr: impl Fn(&Member) -> SocketAddr) -> String {
    members
        .iter()
        .map(|m| format!("{}@{}", m.id, addr(m)))
        .collect::<Vec<_>>()
        .join(",")
}

pub fn args(m: &Member, peers: &str) -> Vec<String> {
    args_with(m, peers, "", &[])
}

/// `args` with more lines in the `[cluster]` table of the file and more flags.
pub fn args_with(m: &Member, peers: &str, cluster_toml: &str, flags: &[&str]) -> Vec<String> {
    args_with_config_in(m, peers, &m.dir, cluster_toml, flags)
}

/// `args_with`, the configuration file written in `config_dir` (one per member).
pub fn args_with_config_in(
    m: &Member,
    peers: &str,
    config_dir: &std::path::Path,
    cluster_toml: &str,
    flags: &[&str],
) -> Vec<String> {
    // The token from a file, as an operator would give it (never on a command line).
    let config = config_dir.join(format!("cluster-{}.toml", m.id));
    let file = format!("[cluster]\ntoken = \"{TOKEN}\"\n{cluster_toml}");
    std::fs::write(&config, file).unwrap();
    let mut args: Vec<String> = vec![
        "--config".into(),
        config.to_str().unwrap().into(),
        "--node-id".into(),
        m.id.to_string(),
        "--cluster-listen".into(),
        m.cluster.to_string(),
        "--peers".into(),
        peers.into(),
    ];
    args.extend(flags.iter().map(|f| f.to_string()));
    args
}

pub fn start(m: &Member, peers: &str) -> ChildBroker {
    start_with(m, args(m, peers))
}

pub fn start_with(m: &Member, args: Vec<String>) -> ChildBroker {
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    ChildBroker::spawn_on(&m.dir, m.client, &args)
}

pub async fn status(addr: SocketAddr) -> Option<pb::StatusReply> {
    status_over(addr, None).await
}

pub async fn status_over(
    addr: SocketAddr,
    tls: Option<tokio_rustls::TlsConnector>,
) -> Option<pb::StatusReply> {
    let token = bytes::Bytes::from_static(TOKEN.as_bytes());
    let mut client = NodeClient::new(addr.to_string(), 1 << 20)
        .with_token(token)
        .with_tls(tls);
    match client
        .call(Op::Status(pb::StatusRequest {}), Duration::from_secs(1))
        .await
    {
        Ok(Reply::Status(s)) => Some(s),
        _ => None,
    }
}

/// Waits until every node in `members` reports the same leader (one of them) in the
/// same term, with all `NODES` voters in its membership; returns (leader, term).
pub async fn agreed_leader(members: &[&Member]) -> (u64, u64) {
    agreed_leader_within(members, NODES as usize, WITHIN).await
}

/// `agreed_leader` with `voters` voters in the membership, failing after `within`.
pub async fn agreed_leader_within(
    members: &[&Member],
    voters: usize,
    within: Duration,
) -> (u64, u64) {
    let deadline = Instant::now() + within;
    loop {
        let mut views = Vec::new();
        for m in members {
            views.push(status(m.cluster).await);
        }
        let agreed = views.iter().all(|v| {
            v.as_ref().is_some_and(|v| {
                v.leader.is_some()
                    && v.leader == views[0].as_ref().and_then(|f| f.leader)
                    && v.term == views[0].as_ref().map_or(0, |f| f.term)
                    && v.membership
                        .as_ref()
                        .is_some_and(|m| m.configs.len() == 1 && m.configs[0].ids.len() == voters)
            })
        });
        if agreed {
            let first = views[0].as_ref().expect("checked");
            let leader = first.leader.expect("checked");
            let leaders = views
                .iter()
                .flatten()
                .filter(|v| v.role == "leader")
                .count();
            if members.iter().any(|m| m.id == leader) && leaders == 1 {
                return (leader, first.term);
            }
        }
        assert!(
            Instant::now() < deadline,
            "no agreed leader within {within:?}: {views:#?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until `m` has applied the log up to `index` at least.
pub async fn applied_up_to(m: &Member, index: u64) {
    let deadline = Instant::now() + WITHIN;
    loop {
        let applied = status(m.cluster)
            .await
            .and_then(|s| s.applied)
            .map_or(0, |a| a.index);
        if applied >= index {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "node {} applied {applied} of {index}",
            m.id
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The last log index of the leader `m`.
pub async fn last_log_index(m: &Member) -> u64 {
    status(m.cluster)
        .await
        .and_then(|s| s.last_log)
        .expect("the node's log")
        .index
}

/// Waits until `m` reports a settled membership (no joint change under way) whose
/// voters are `voters` and which has no learners, and a leader.
pub async fn membership_is(m: &Member, voters: &[u64]) -> pb::StatusReply {
    let deadline = Instant::now() + WITHIN;
    loop {
        let view = status(m.cluster).await;
        if let Some(v) = &view {
            if let Some(ms) = &v.membership {
                let mut ids = ms
                    .configs
                    .first()
                    .map(|c| c.ids.clone())
                    .unwrap_or_default();
                ids.sort_unstable();
                let members: Vec<u64> = ms.nodes.keys().copied().collect();
                if ms.configs.len() == 1 && ids == voters && members == voters && v.leader.is_some()
                {
                    return v.clone();
                }
            }
        }
        assert!(
            Instant::now() < deadline,
            "node {} never saw voters {voters:?}: {view:#?}",
            m.id
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `squall cluster ARGS` with the cluster token.
pub async fn cluster_cli(args: &[&str]) -> std::process::Output {
    tokio::process::Command::new(env!("CARGO_BIN_EXE_squall"))
        .arg("cluster")
        .args(args)
        .env("SQUALL_CLUSTER_TOKEN", TOKEN)
        .output()
        .await
        .expect("run squall cluster")
}

/// `squall cluster ARGS`, failing the test unless it succeeds; its standard output.
pub async fn cluster_cli_ok(args: &[&str]) -> String {
    let out = cluster_cli(args).await;
    let said = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "squall cluster {args:?} failed: {said}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    said
}

/// `squall cluster add-node` of member `new`, asked through the cluster port `via`;
/// its standard output (the test fails unless it succeeds).
pub async fn add_node(new: &Member, via: &str) -> String {
    let (id, client, cluster) = (
        new.id.to_string(),
        new.client.to_string(),
        new.cluster.to_string(),
    );
    cluster_cli_ok(&["add-node", &id, &client, &cluster, "--node", via]).await
}

/// Three members started, agreed on a leader; `everyone` is their client addresses.
/// With `proxies`, every node-to-node connection goes through them.
pub struct Three {
    pub _dirs: Vec<tempfile::TempDir>,
    pub members: Vec<Member>,
    pub peers: String,
    pub brokers: Vec<Option<ChildBroker>>,
    pub everyone: String,
    pub proxies: Option<Proxies>,
}

impl Three {
    pub fn member(&self, id: u64) -> &Member {
        &self.members[id as usize - 1]
    }

    pub fn broker(&self, id: u64) -> &ChildBroker {
        self.brokers[id as usize - 1].as_ref().expect("running")
    }

    /// Takes member `id`'s broker out (to stop it).
    pub fn take(&mut self, id: u64) -> ChildBroker {
        self.brokers[id as usize - 1].take().expect("running")
    }

    /// Starts member `id` again with its data.
    pub fn restart(&mut self, id: u64) {
        let broker = start(&self.members[id as usize - 1], &self.peers);
        self.brokers[id as usize - 1] = Some(broker);
    }

    pub fn all(&self) -> Vec<&Member> {
        self.members.iter().collect()
    }

    pub fn others(&self, id: u64) -> Vec<&Member> {
        self.members.iter().filter(|m| m.id != id).collect()
    }

    /// The client addresses of `members`, comma-separated.
    pub fn clients_of(members: &[&Member]) -> String {
        members
            .iter()
            .map(|m| m.client.to_string())
            .collect::<Vec<_>>()
            .join(",")
    }
}

pub async fn three() -> Three {
    start_three(false).await
}

/// Three members whose node-to-node links go through `Proxies` (cut with them).
pub async fn three_behind_proxies() -> Three {
    start_three(true).await
}

async fn start_three(proxied: bool) -> Three {
    let (dirs, members) = members(NODES);
    let proxies = if proxied {
        let ids: Vec<u64> = members.iter().map(|m| m.id).collect();
        let listen: Vec<SocketAddr> = members.iter().map(|m| m.cluster).collect();
        Some(Proxies::start(&ids, |id| listen[id as usize - 1]).await)
    } else {
        None
    };
    let peers = match &proxies {
        Some(p) => peers_at(&members, |m| p.addr_of(m.id)),
        None => peers_of(&members),
    };
    let brokers = members.iter().map(|m| Some(start(m, &peers))).collect();
    let all: Vec<&Member> = members.iter().collect();
    agreed_leader(&all).await;
    let everyone = Three::clients_of(&all);
    Three {
        _dirs: dirs,
        members,
        peers,
        brokers,
        everyone,
        proxies,
    }
}

/// A client given every member: it finds the leader by itself. Retries while the
/// cluster has no serving leader yet.
pub async fn cluster_client(everyone: &str) -> Client {
    let deadline = Instant::now() + WITHIN;
    loop {
        let connected = Client::builder()
            .request_timeout(Duration::from_secs(10))
            .wait_for_connection(WITHIN)
            .reconnect(
                ReconnectPolicy::default()
                    .initial_delay(Duration::from_millis(50))
                    .max_delay(Duration::from_millis(500)),
            )
            .connect(everyone)
            .await;
        match connected {
            Ok(client) => return client,
            Err(e) => {
                assert!(Instant::now() < deadline, "no leader serves clients: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// The id of the member `client` is connected to (the leader when it connected).
pub fn serving(client: &Client) -> u64 {
    client
        .server_info()
        .node_id
        .parse()
        .expect("a numeric node id")
}

/// The value of the sample `name` (exact, labels included) in a Prometheus text page.
pub fn sample(page: &str, name: &str) -> Option<f64> {
    page.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

/// The next delivery on `sub`, failing the test after `within`.
pub async fn next_delivery(sub: &mut Subscription, within: Duration) -> Delivery {
    tokio::time::timeout(within, sub.recv())
        .await
        .expect("a delivery in time")
        .expect("the subscription is open")
        .expect("a delivery")
}

/// The tasks of [`settled_state`]: one of each kind a leader change or a snapshot must
/// keep.
pub struct Settled {
    pub delayed: TaskId,
    pub keyed: TaskId,
    pub dead: TaskId,
    pub done: TaskId,
}

/// Through `client`: a task delayed by `delay` (queue `s-delayed`), one published with
/// the idempotency key `k-1` (`s-keyed`), one dead after failing its only attempt
/// (`s-dead`) and one acked with the result "the result" (`s-results`).
pub async fn settled_state(client: &Client, delay: Duration, within: Duration) -> Settled {
    let published = |queue: &'static str, payload: &'static str, options: PublishOptions| {
        let client = client.clone();
        async move {
            client
                .publish_with(queue, payload, options)
                .await
                .expect("publish")
                .id
        }
    };
    let delayed = published("s-delayed", "later", PublishOptions::new().delay(delay)).await;
    let keyed = published(
        "s-keyed",
        "once",
        PublishOptions::new().idempotency_key("k-1"),
    )
    .await;
    let dead = published("s-dead", "poison", PublishOptions::new().max_attempts(1)).await;
    let done = published("s-results", "work", PublishOptions::new()).await;
    let mut sub = client.subscribe("s-dead").await.unwrap();
    let d = next_delivery(&mut sub, within).await;
    assert_eq!(d.id(), dead);
    d.fail("poisoned on purpose").await.unwrap();
    let mut sub = client.subscribe("s-results").await.unwrap();
    let d = next_delivery(&mut sub, within).await;
    assert_eq!(d.id(), done);
    d.ack_with("the result").await.unwrap();
    Settled {
        delayed,
        keyed,
        dead,
        done,
    }
}
