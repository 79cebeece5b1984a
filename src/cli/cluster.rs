//! `squall cluster status [--json]`: the members of a cluster, each one's role, term,
//! last log, commit and applied index, replication lag and last contact, asked over
//! the cluster port (the
//! node named by `--node`, then every member it knows). `squall cluster add-node` and
//! `remove-node`: membership changes, sent to the leader (found through `--node`).

use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Subcommand};
use serde_json::json;
use squall::cluster::net::{CallError, NodeClient};
use squall_proto::cluster::{self as pb, node_request::Op, node_response::Result as Reply};

/// Cluster membership and roles.
#[derive(Debug, Args)]
pub struct ClusterArgs {
    #[command(subcommand)]
    command: ClusterCommand,
}

#[derive(Debug, Subcommand)]
enum ClusterCommand {
    /// The members, each one's role, term, log, commit and applied index, lag and
    /// last contact.
    Status(StatusArgs),
    /// Adds a node: it joins as a learner and becomes a voter once it has caught up.
    /// Start it first with `--peers` naming the members and itself.
    AddNode(AddNodeArgs),
    /// Removes a node from the cluster (it stops being replicated to; stop it after).
    RemoveNode(RemoveNodeArgs),
}

/// Where to reach the cluster.
#[derive(Debug, Args)]
struct NodeArgs {
    /// The cluster port of any member (a change goes to the leader).
    #[arg(
        long,
        env = "SQUALL_CLUSTER_NODE",
        default_value = "127.0.0.1:7700",
        value_name = "ADDR"
    )]
    node: String,
    /// The cluster token (`cluster.token` of the members), if they have one.
    #[arg(
        long,
        env = "SQUALL_CLUSTER_TOKEN",
        hide_env_values = true,
        default_value = ""
    )]
    token: String,
    /// The CA (PEM) of the members' certificates, when the cluster port speaks TLS
    /// (`cluster.tls_ca` of the members).
    #[arg(long, env = "SQUALL_CLUSTER_TLS_CA", value_name = "FILE")]
    tls_ca: Option<std::path::PathBuf>,
}

impl NodeArgs {
    /// What every connection to a member needs: the token, and TLS if asked for.
    fn dialer(&self) -> anyhow::Result<Dialer> {
        let tls = match &self.tls_ca {
            None => None,
            Some(path) => {
                let pem = std::fs::read(path)
                    .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))?;
                Some(squall_client::tls_connector(
                    &pem,
                    &path.display().to_string(),
                )?)
            }
        };
        Ok(Dialer {
            token: bytes::Bytes::from(self.token.clone().into_bytes()),
            tls,
        })
    }
}

/// Opens connections to members.
struct Dialer {
    token: bytes::Bytes,
    tls: Option<tokio_rustls::TlsConnector>,
}

impl Dialer {
    fn client(&self, addr: &str) -> NodeClient {
        NodeClient::new(addr, MAX_FRAME)
            .with_token(self.token.clone())
            .with_tls(self.tls.clone())
    }
}

#[derive(Debug, Args)]
struct AddNodeArgs {
    /// The new node's id (its `--node-id`).
    id: u64,
    /// Where clients reach it (its `--advertise`, default its `--listen`).
    client_addr: String,
    /// Its cluster port (its `--cluster-listen`).
    cluster_addr: String,
    #[command(flatten)]
    cluster: NodeArgs,
}

#[derive(Debug, Args)]
struct RemoveNodeArgs {
    /// The id of the node to remove.
    id: u64,
    #[command(flatten)]
    cluster: NodeArgs,
}

#[derive(Debug, Args)]
struct StatusArgs {
    /// Print JSON: {"leader": ID, "term": T, "nodes": [{"id", "role", "addr", ...}]}.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    cluster: NodeArgs,
}

const TIMEOUT: Duration = Duration::from_secs(2);
/// A membership change waits for a new node to catch up (bounded on the leader).
const CHANGE_TIMEOUT: Duration =
    Duration::from_secs(squall::cluster::membership::CATCH_UP_TIMEOUT.as_secs() + 30);
const MAX_FRAME: usize = 64 * 1024 * 1024;

async fn ask(addr: &str, dialer: &Dialer) -> anyhow::Result<pb::StatusReply> {
    let mut client = dialer.client(addr);
    match client
        .call(Op::Status(pb::StatusRequest {}), TIMEOUT)
        .await?
    {
        Reply::Status(s) => Ok(s),
        other => anyhow::bail!("{addr} answered {other:?} to a status request"),
    }
}

/// Runs `squall cluster ...`.
pub async fn run(args: ClusterArgs) -> anyhow::Result<ExitCode> {
    match args.command {
        ClusterCommand::Status(a) => status(a).await,
        ClusterCommand::AddNode(a) => {
            let member = pb::Member {
                client_addr: a.client_addr,
                cluster_addr: a.cluster_addr,
            };
            let add = pb::AddNode {
                node_id: a.id,
                member: Some(member),
            };
            let r = change(&a.cluster, pb::change_membership::Change::Add(add)).await?;
            println!("node {} added; {}", a.id, describe(&r));
            Ok(ExitCode::SUCCESS)
        }
        ClusterCommand::RemoveNode(a) => {
            let remove = pb::RemoveNode { node_id: a.id };
            let r = change(&a.cluster, pb::change_membership::Change::Remove(remove)).await?;
            println!("node {} removed; {}", a.id, describe(&r));
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Asks the leader for `change`: first the node named, then whichever node it says
/// leads (an election may be under way: a few tries).
async fn change(
    at: &NodeArgs,
    change: pb::change_membership::Change,
) -> anyhow::Result<pb::ChangeMembershipReply> {
    let dialer = at.dialer()?;
    let mut addr = at.node.clone();
    let request = pb::ChangeMembership {
        change: Some(change),
    };
    for _ in 0..10 {
        let mut client = dialer.client(&addr);
        match client
            .call(Op::Change(request.clone()), CHANGE_TIMEOUT)
            .await
        {
            Ok(Reply::Change(r)) => return Ok(r),
            Ok(other) => anyhow::bail!("{addr} answered {other:?} to a membership change"),
            Err(CallError::Remote(e)) if e.kind() == pb::node_error::Kind::NotLeader => {
                if e.leader_addr.is_empty() {
                    tokio::time::sleep(Duration::from_millis(500)).await;
                } else {
                    addr = e.leader_addr;
                }
            }
            Err(e) => anyhow::bail!("cluster node {addr}: {e}"),
        }
    }
    anyhow::bail!("no leader took the change (asked through {})", at.node)
}

fn describe(r: &pb::ChangeMembershipReply) -> String {
    let list = |ids: &[u64]| {
        if ids.is_empty() {
            "none".to_owned()
        } else {
            ids.iter()
                .map(u64::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        }
    };
    format!(
        "voters: {}; learners: {} (log index {})",
        list(&r.voters),
        list(&r.learners),
        r.log_index
    )
}

async fn status(args: StatusArgs) -> anyhow::Result<ExitCode> {
    let dialer = args.cluster.dialer()?;
    let first = ask(&args.cluster.node, &dialer)
        .await
        .map_err(|e| anyhow::anyhow!("cluster node {}: {e}", args.cluster.node))?;
    let membership = first.membership.clone().unwrap_or_default();
    let voters: std::collections::BTreeSet<u64> = membership
        .configs
        .iter()
        .flat_map(|c| c.ids.iter().copied())
        .collect();
    // The leader's view gives the lag; ask it if it is not the node asked.
    let leader_view = match first.leader {
        Some(l) if l == first.node_id => Some(first.clone()),
        Some(l) => match membership.nodes.get(&l) {
            Some(m) => ask(&m.cluster_addr, &dialer).await.ok(),
            None => None,
        },
        None => None,
    };
    let leader_last = leader_view
        .as_ref()
        .and_then(|v| v.last_log.as_ref())
        .map(|l| l.index);
    let mut nodes = Vec::new();
    for (id, member) in &membership.nodes {
        let own = if *id == first.node_id {
            Ok(first.clone())
        } else {
            ask(&member.cluster_addr, &dialer).await
        };
        let matched = leader_view
            .as_ref()
            .and_then(|v| v.matched.get(id))
            .map(|l| l.index);
        let lag = match (leader_last, matched) {
            (Some(last), Some(m)) => Some(last.saturating_sub(m)),
            _ => None,
        };
        // The leader's view: how long ago it last heard from this member (0 for itself).
        let last_contact = leader_view.as_ref().and_then(|v| {
            if v.node_id == *id {
                Some(0)
            } else {
                v.heard_ms.get(id).copied()
            }
        });
        let node = match own {
            Ok(s) => json!({
                "id": id,
                "role": s.role,
                "voter": voters.contains(id),
                "addr": member.client_addr,
                "cluster_addr": member.cluster_addr,
                "term": s.term,
                "last_log_index": s.last_log.map(|l| l.index),
                "commit_index": s.committed.map(|l| l.index),
                "applied_index": s.applied.map(|l| l.index),
                "lag": lag,
                "last_contact_ms": last_contact,
                // Its own view: how long ago it last heard from the leader it knows.
                "leader_contact_ms": s.leader.filter(|l| l != id).and_then(|l| s.heard_ms.get(&l).copied()),
                "reachable": true,
            }),
            Err(e) => json!({
                "id": id,
                "role": "unreachable",
                "voter": voters.contains(id),
                "addr": member.client_addr,
                "cluster_addr": member.cluster_addr,
                "lag": lag,
                "last_contact_ms": last_contact,
                "reachable": false,
                "error": e.to_string(),
            }),
        };
        nodes.push(node);
    }
    let report = json!({
        "leader": first.leader,
        "term": first.term,
        "asked": first.node_id,
        "nodes": nodes,
    });
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_table(&report);
    }
    Ok(ExitCode::SUCCESS)
}

/// A last contact for the table: milliseconds up to 10 s, then seconds.
fn age(ms: u64) -> String {
    if ms < 10_000 {
        format!("{ms}ms")
    } else {
        format!("{}s", ms / 1000)
    }
}

/// The table `squall cluster status` prints; CONTACT is the leader's view (how long
/// ago it last heard from each member), as `last_contact_ms` in `--json`.
fn print_table(report: &serde_json::Value) {
    let leader = report["leader"]
        .as_u64()
        .map_or("none".to_owned(), |l| l.to_string());
    println!(
        "leader: {leader}   term: {}   (as node {} sees it)",
        report["term"], report["asked"]
    );
    println!(
        "{:<6} {:<12} {:<6} {:>9} {:>9} {:>9} {:>6} {:>8}  {:<22} CLUSTER ADDR",
        "ID", "ROLE", "TERM", "LAST LOG", "COMMIT", "APPLIED", "LAG", "CONTACT", "CLIENT ADDR"
    );
    let text = |v: &serde_json::Value| match v {
        serde_json::Value::Null => "-".to_owned(),
        serde_json::Value::String(s) if s.is_empty() => "?".to_owned(),
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    for n in report["nodes"].as_array().into_iter().flatten() {
        println!(
            "{:<6} {:<12} {:<6} {:>9} {:>9} {:>9} {:>6} {:>8}  {:<22} {}",
            text(&n["id"]),
            text(&n["role"]),
            text(&n["term"]),
            text(&n["last_log_index"]),
            text(&n["commit_index"]),
            text(&n["applied_index"]),
            text(&n["lag"]),
            n["last_contact_ms"].as_u64().map_or("-".to_owned(), age),
            text(&n["addr"]),
            text(&n["cluster_addr"]),
        );
    }
}
