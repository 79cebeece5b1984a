//! Replication (issue 15): three brokers started with cluster flags form a Raft group
//! by themselves, agree on one leader, elect a new one after the leader is killed
//! with -9, and take the killed node back as a follower when it restarts with its
//! data. `squall cluster status --json` reports the same. The members share a cluster
//! token: a request without it is refused. Under load, a leader killed with -9 loses
//! no confirmed publish and brings back no task whose ack was confirmed; clients given
//! every member follow the leader by themselves.
//!
//! The tests of this file run one at a time (`SERIAL`): two three-node clusters at
//! once on a 2-core machine would mostly measure the machine.

mod common;

#[path = "common/cluster/mod.rs"]
mod cluster;

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use cluster::ledger::Checker;
use cluster::load::Load;
use cluster::*;
use common::ChildBroker;
use squall::cluster::net::{CallError, NodeClient};
use squall_client::{PublishOptions, TaskOutcome, TaskState};
use squall_proto::cluster::{self as pb, node_request::Op};

/// One cluster at a time.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

async fn cli_status(node: SocketAddr) -> serde_json::Value {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_squall"))
        .args(["cluster", "status", "--json", "--node", &node.to_string()])
        .env("SQUALL_CLUSTER_TOKEN", TOKEN)
        .output()
        .await
        .expect("run squall cluster status");
    assert!(
        out.status.success(),
        "squall cluster status failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("JSON")
}

/// Whether `squall cluster status --json` names `leader` and gives every member its role.
fn cli_agrees(report: &serde_json::Value, leader: u64) -> bool {
    let nodes = report["nodes"].as_array().map_or(&[][..], Vec::as_slice);
    report["leader"] == leader
        && nodes.len() == NODES as usize
        && nodes.iter().all(|n| {
            let want = if n["id"] == leader {
                "leader"
            } else {
                "follower"
            };
            n["role"] == want
        })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_elect_a_leader_and_another_after_it_is_killed() {
    let _serial = SERIAL.lock().await;
    let (_dirs, members) = members(NODES);
    let peers = peers_of(&members);
    let mut brokers: Vec<Option<ChildBroker>> =
        members.iter().map(|m| Some(start(m, &peers))).collect();

    // Formed by themselves: no init step.
    let all: Vec<&Member> = members.iter().collect();
    let (leader, term) = agreed_leader(&all).await;

    // Without the token: refused, and the connection closed.
    let mut stranger = NodeClient::new(members[0].cluster.to_string(), 1 << 20);
    match stranger
        .call(Op::Status(pb::StatusRequest {}), Duration::from_secs(5))
        .await
    {
        Err(CallError::Remote(e)) => {
            assert_eq!(e.kind(), pb::node_error::Kind::Unauthenticated, "{e:?}")
        }
        other => panic!("a request without the token was answered: {other:?}"),
    }

    // The CLI reports the same, asked through any member. (Each call asks every member
    // anew; on a loaded machine an election may slip in between, so look a few times.)
    let asked = members[(leader as usize) % members.len()].cluster;
    let mut report = cli_status(asked).await;
    for _ in 0..20 {
        if cli_agrees(&report, leader) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
        report = cli_status(asked).await;
    }
    assert!(cli_agrees(&report, leader), "leader {leader}: {report:#}");
    for n in report["nodes"].as_array().expect("nodes") {
        let m = &members[n["id"].as_u64().unwrap() as usize - 1];
        assert_eq!(n["cluster_addr"], m.cluster.to_string());
        if n["addr"] != "" {
            assert_eq!(n["addr"], m.client.to_string(), "client address handed out");
        }
    }

    // Kill the leader with -9: the two others elect one of themselves, in a later term.
    brokers[leader as usize - 1]
        .take()
        .expect("running")
        .kill9();
    let survivors: Vec<&Member> = members.iter().filter(|m| m.id != leader).collect();
    let (new_leader, new_term) = agreed_leader(&survivors).await;
    assert_ne!(new_leader, leader);
    assert!(new_term > term, "term {new_term} after {term}");

    // The killed node comes back with its data and rejoins: all three agree on one
    // leader again, in the new term or later, and the restarted node applied its entries.
    let old = &members[leader as usize - 1];
    brokers[leader as usize - 1] = Some(start(old, &peers));
    let (_, again_term) = agreed_leader(&all).await;
    assert!(again_term >= new_term);
    let view = status(old.cluster)
        .await
        .expect("the restarted node answers");
    assert!(
        view.applied.is_some_and(|a| a.index >= 1),
        "it applied the cluster's entries: {view:?}"
    );
}

/// `squall cluster add-node` makes a fourth node a voter (after it caught up as a
/// learner), asked through a member that is not the leader; `remove-node` takes it out
/// again. Changes that make no sense are refused with a reason.
/// An idle cluster appends nothing to its log: the retention sweep (once a second) is
/// proposed only when the expiry index holds something due. Before, every sweep was a
/// Raft entry, synced on every member once a second (negative control: without the
/// check in `server/sweeper.rs` the leader's log grows by about one entry a second
/// here).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_cluster_appends_nothing_to_its_log() {
    let _serial = SERIAL.lock().await;
    let (_dirs, members) = members(NODES);
    let peers = peers_of(&members);
    let _brokers: Vec<ChildBroker> = members.iter().map(|m| start(m, &peers)).collect();
    let all: Vec<&Member> = members.iter().collect();
    let (leader, _) = agreed_leader(&all).await;
    let leader = &members[leader as usize - 1];
    // Formation's own entries (the leader's blank entry, the cluster id) settle first.
    let mut last = last_log_index(leader).await;
    for _ in 0..20 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let now = last_log_index(leader).await;
        if now == last {
            break;
        }
        last = now;
    }
    applied_up_to(leader, last).await;
    tokio::time::sleep(Duration::from_millis(3_500)).await;
    assert_eq!(
        last_log_index(leader).await,
        last,
        "an idle cluster's log grew (a sweep with nothing due was proposed?)"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_is_added_as_a_voter_and_removed_again() {
    let _serial = SERIAL.lock().await;
    let (_dirs, members) = members(4);
    let peers = |n: usize| peers_of(&members[..n]);
    let mut brokers: Vec<ChildBroker> = members[..3].iter().map(|m| start(m, &peers(3))).collect();
    let first: Vec<&Member> = members[..3].iter().collect();
    let (leader, _) = agreed_leader(&first).await;
    let everyone = |n: usize| {
        let addrs: Vec<String> = members[..n].iter().map(|m| m.client.to_string()).collect();
        addrs.join(",")
    };
    let id_before = cluster_id(&everyone(3)).await;
    // The new node names the members and itself; it finds a formed cluster and waits.
    let new = &members[3];
    brokers.push(start(new, &peers(4)));

    let follower = members[..3]
        .iter()
        .find(|m| m.id != leader)
        .expect("a follower");
    let via = follower.cluster.to_string();
    let said = add_node(new, &via).await;
    assert!(
        said.contains("voters: 1, 2, 3, 4; learners: none"),
        "{said}"
    );
    for m in &members {
        let view = membership_is(m, &[1, 2, 3, 4]).await;
        if m.id == 4 {
            assert!(
                view.role == "follower" || view.role == "leader",
                "the new node votes: {view:?}"
            );
        }
    }
    // The cluster's id does not change with its membership.
    assert_eq!(cluster_id(&everyone(4)).await, id_before, "after add-node");

    // Refused, with the reason: a member that does not exist, a voter added twice.
    let out = cluster_cli(&["remove-node", "9", "--node", &via]).await;
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("node 9 is not a member"), "{err}");
    let out = cluster_cli(&["add-node", "2", "x:1", "y:2", "--node", &via]).await;
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("node 2 is already a voter"), "{err}");

    let out = cluster_cli(&["remove-node", "4", "--node", &via]).await;
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "remove-node failed: {said}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(said.contains("voters: 1, 2, 3; learners: none"), "{said}");
    for m in &members[..3] {
        membership_is(m, &[1, 2, 3]).await;
    }
    assert_eq!(
        cluster_id(&everyone(3)).await,
        id_before,
        "after remove-node"
    );
    // The leader's last contacts name its members only: the removed node's would
    // grow forever (negative control run: without the members-only filter in
    // `cluster_metrics.rs` it fails).
    let (leader, _) = agreed_leader(&first).await;
    let http = brokers[leader as usize - 1].http.expect("HTTP port");
    let contact = |page: &str, id: u64| {
        sample(
            page,
            &format!("squall_cluster_last_contact_seconds{{node=\"{id}\"}}"),
        )
    };
    let deadline = Instant::now() + WITHIN;
    loop {
        let (_, page) = common::http_get(http, "/metrics").await;
        let others = members[..3].iter().filter(|m| m.id != leader);
        if others.clone().all(|m| contact(&page, m.id).is_some()) {
            assert_eq!(contact(&page, 4), None, "{page}");
            break;
        }
        assert!(Instant::now() < deadline, "no contacts: {page}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for b in brokers {
        b.terminate();
    }
}

/// The cluster's id as its leader announces it at Hello (a client given `everyone`).
async fn cluster_id(everyone: &str) -> String {
    let client = cluster_client(everyone).await;
    let info = client
        .server_info()
        .cluster
        .expect("a leader announces its cluster");
    client.close().await;
    assert_eq!(info.cluster_id.len(), 32, "a 128-bit id: {info:?}");
    info.cluster_id
}

/// Proof 1 of the issue: under load (four producers, one consumer acking), the leader
/// is killed with -9. A new leader confirms publishes within the bound, and the
/// checker finds every promise kept (every confirmed publish delivered, nothing
/// refused delivered, no task back after its confirmed ack). The clients are given
/// every member and follow the leader (and re-subscribe) by themselves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_killed_under_load_loses_no_confirmed_publish_and_brings_back_no_acked_task() {
    let _serial = SERIAL.lock().await;
    let mut cluster = three().await;
    let probe = cluster_client(&cluster.everyone).await;
    let info = probe.server_info();
    let described = info.cluster.expect("a cluster's leader says so in HelloOk");
    assert_eq!(
        described.leader.to_string(),
        info.node_id,
        "connected to the leader"
    );
    assert_eq!(described.members.len(), NODES as usize);
    let leader = described.leader;

    let checker = Arc::new(Checker::default());
    let load = Load::start(
        &cluster.everyone,
        "replicated",
        4,
        Duration::ZERO,
        checker.clone(),
    )
    .await;
    load.confirms(200, WITHIN).await;
    assert!(checker.summary().acked > 0, "no acks before the kill");

    let killed_at = Instant::now();
    cluster.take(leader).kill9();
    // The new leader confirms publishes.
    let deadline = Instant::now() + WITHIN;
    let failover = loop {
        if let Some(first) = checker.first_confirmed_after(killed_at) {
            break first - killed_at;
        }
        assert!(
            Instant::now() < deadline,
            "no publish confirmed after the kill"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    load.confirms(100, WITHIN).await;
    let summary = load.finish().await;
    eprintln!(
        "leader {leader} killed: first publish confirmed by the new leader after {failover:?}; {summary}"
    );
    assert!(
        failover < Duration::from_secs(15),
        "failover took {failover:?}"
    );
}

/// With TLS configured (`tls.cert`, `tls.key`, `cluster.tls_ca`) the cluster port
/// speaks TLS: the members form a cluster and elect a leader over it, the CLI reaches
/// them with the CA, and a plain-TCP request gets no answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_tls_configured_the_cluster_port_speaks_tls() {
    let _serial = SERIAL.lock().await;
    let (_dirs, members) = members(NODES);
    let pki_dir = tempfile::tempdir().unwrap();
    let (ca, cert, key) = common::pki::pki(pki_dir.path(), &["127.0.0.1"]);
    let peers = peers_of(&members);
    let ca_line = format!("tls_ca = \"{}\"\n", ca.display());
    let (cert, key) = (cert.to_str().unwrap(), key.to_str().unwrap());
    let brokers: Vec<ChildBroker> = members
        .iter()
        .map(|m| {
            let flags = ["--tls-cert", cert, "--tls-key", key];
            start_with(m, args_with(m, &peers, &ca_line, &flags))
        })
        .collect();
    let pem = std::fs::read(&ca).unwrap();
    let tls = squall_client::tls_connector(&pem, "ca.pem").unwrap();

    // They agree on a leader, talking TLS (the status requests too).
    let deadline = Instant::now() + WITHIN;
    let leader = loop {
        let mut leaders = Vec::new();
        for m in &members {
            leaders.push(
                status_over(m.cluster, Some(tls.clone()))
                    .await
                    .and_then(|v| v.leader),
            );
        }
        if leaders.iter().all(|l| l.is_some() && *l == leaders[0]) {
            break leaders[0].expect("checked");
        }
        assert!(
            Instant::now() < deadline,
            "no agreed leader over TLS: {leaders:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };

    // Plain TCP gets no answer (the server waits for a TLS ClientHello, then drops it).
    assert!(
        status(members[0].cluster).await.is_none(),
        "a plain-TCP status request was answered"
    );
    // The CLI, given the CA, reports the same leader.
    let out = cluster_cli(&[
        "status",
        "--json",
        "--node",
        &members[0].cluster.to_string(),
        "--tls-ca",
        ca.to_str().unwrap(),
    ])
    .await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(report["leader"], leader, "{report:#}");
    for b in brokers {
        b.terminate();
    }
}

/// Proof 7 of the issue, and what a leader change does to leases: a delayed task, a
/// dead task, an acked task's result and an idempotency key, stored under one leader,
/// are all there under the next (killed with -9 between); a task leased under the old
/// leader is ready again with its attempt counted, and an ack with the old lease's
/// token is refused `LEASE_EXPIRED` (tokens carry the term).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delays_dead_tasks_results_keys_and_attempts_survive_a_leader_change() {
    let _serial = SERIAL.lock().await;
    let Three {
        _dirs,
        members,
        peers: _,
        mut brokers,
        everyone,
        ..
    } = three().await;
    let client = cluster_client(&everyone).await;
    let leader: u64 = client.server_info().node_id.parse().unwrap();
    let within = Duration::from_secs(10);

    let delay = Duration::from_secs(4);
    let delayed_at = std::time::SystemTime::now();
    let Settled {
        delayed,
        keyed,
        dead,
        done,
    } = settled_state(&client, delay, within).await;
    let leased = client.publish("s-leased", "held").await.unwrap().id;
    let mut held = client.subscribe("s-leased").await.unwrap();
    let d = next_delivery(&mut held, within).await;
    assert_eq!(d.id(), leased);
    let old_token = d.lease_token();
    // Neither settled nor released: leased until the leader dies. The subscription
    // goes too, or the client would subscribe again on the new leader, which could
    // deliver the task again before the status below is asked.
    std::mem::forget(d);
    drop(held);
    // A lease open for `ATTEMPT_WRITE_AFTER_MS` has its attempt count proposed on its
    // own; a change confirmed after that is committed after it (the log is ordered).
    // A kill sooner would not count the delivery (documented).
    tokio::time::sleep(Duration::from_millis(
        squall::broker::ATTEMPT_WRITE_AFTER_MS + 300,
    ))
    .await;
    client.publish("s-other", "after").await.unwrap();

    brokers[leader as usize - 1]
        .take()
        .expect("the leader runs")
        .kill9();
    let client = cluster_client(&everyone).await;
    let new_leader: u64 = client.server_info().node_id.parse().unwrap();
    assert_ne!(new_leader, leader);

    let status = client.task(dead).await.unwrap();
    assert_eq!(status.state, TaskState::Dead, "{status:?}");
    assert_eq!(status.last_error.as_deref(), Some("poisoned on purpose"));
    match client.wait_result(done, within).await.unwrap() {
        TaskOutcome::Succeeded(s) => assert_eq!(s.result.as_deref(), Some(&b"the result"[..])),
        other => panic!("the result is gone: {other:?}"),
    }
    let again = client
        .publish_with(
            "s-keyed",
            "twice",
            PublishOptions::new().idempotency_key("k-1"),
        )
        .await
        .unwrap();
    assert!(
        again.duplicate && again.id == keyed,
        "{again:?} for {keyed}"
    );

    // Leased under the old leader: ready again, its attempt counted; the old token is
    // refused by the new leader.
    let status = client.task(leased).await.unwrap();
    assert_eq!(status.state, TaskState::Ready, "{status:?}");
    assert_eq!(status.attempts, 1, "{status:?}");
    let serving = members[new_leader as usize - 1].client;
    let mut wire = common::Wire::hello(serving).await;
    let stale = squall_proto::v1::Delivery {
        task_id: leased,
        lease_token: old_token,
        ..Default::default()
    };
    let refused = wire
        .ack(&stale)
        .await
        .expect_err("an old term's lease was accepted");
    assert_eq!(
        refused.code,
        squall_proto::ErrorCode::LeaseExpired,
        "{}",
        refused.message
    );

    // The delayed task comes on time, not before.
    let mut sub = client.subscribe("s-delayed").await.unwrap();
    let d = tokio::time::timeout(delay + within, sub.recv())
        .await
        .expect("the delayed task is delivered")
        .unwrap()
        .unwrap();
    assert_eq!(d.id(), delayed);
    let waited = delayed_at.elapsed().unwrap();
    assert!(
        waited + Duration::from_millis(50) >= delay,
        "delivered after {waited:?}"
    );
}

/// A follower killed with -9 and its data directory deleted, while the leader's log
/// still starts at entry 1 (by snapshot once it does not: tests/replication_snapshot.rs),
/// comes back empty and is sent every entry by the leader; its store then holds what the cluster confirmed
/// (tasks still pending, acked ones succeeded).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_whose_data_is_deleted_catches_up_from_the_leader() {
    let _serial = SERIAL.lock().await;
    let Three {
        _dirs,
        members,
        peers,
        mut brokers,
        everyone,
        ..
    } = three().await;
    let client = cluster_client(&everyone).await;
    let leader: u64 = client.server_info().node_id.parse().unwrap();
    let mut ids = Vec::new();
    for i in 0..50 {
        ids.push(client.publish("wiped", format!("t{i}")).await.unwrap().id);
    }
    let mut sub = client.subscribe("wiped").prefetch(10).await.unwrap();
    let mut acked = HashSet::new();
    for _ in 0..10 {
        let d = tokio::time::timeout(WITHIN, sub.recv())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        acked.insert(d.id());
        // With a result, so that the ack leaves a record to find on the wiped node.
        d.ack_with("done").await.unwrap();
    }
    drop(sub);

    let wiped = members.iter().find(|m| m.id != leader).expect("a follower");
    let slot = wiped.id as usize - 1;
    brokers[slot].take().expect("it runs").kill9();
    std::fs::remove_dir_all(&wiped.dir).unwrap();
    std::fs::create_dir_all(&wiped.dir).unwrap();
    // The cluster goes on without it.
    client.publish("wiped", "while away").await.unwrap();
    let target = status(members[leader as usize - 1].cluster)
        .await
        .and_then(|s| s.last_log)
        .expect("the leader's log")
        .index;
    brokers[slot] = Some(start(wiped, &peers));
    let deadline = Instant::now() + WITHIN;
    loop {
        let applied = status(wiped.cluster)
            .await
            .and_then(|s| s.applied)
            .map_or(0, |a| a.index);
        if applied >= target {
            break;
        }
        assert!(Instant::now() < deadline, "applied {applied} of {target}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let stopped = brokers[slot].take().unwrap().terminate_within(WITHIN);
    assert!(stopped.success(), "{stopped:?}");

    let store = squall::store::Store::open(&squall::store::StoreConfig::new(
        &wiped.dir,
        squall::store::FsyncMode::Always,
    ))
    .expect("the caught-up store opens");
    let mut pending = 0;
    store
        .recover(|id, state| {
            if state.status == squall::model::TaskStatus::Pending {
                assert!(
                    !acked.contains(&id),
                    "acked task {id} is pending on the wiped node"
                );
                pending += 1;
            }
        })
        .unwrap();
    assert_eq!(
        pending, 41,
        "40 unacked and the one published while it was away"
    );
    for id in &acked {
        let state = store.get_state(*id).unwrap().expect("a retained result");
        assert_eq!(state.status, squall::model::TaskStatus::Succeeded);
    }
}

/// Three members agreed on a leader (its id and term), and three tasks published to
/// `queue` (payloads `{prefix}0..2`) through a client that follows the leader.
async fn three_with_publishes(
    queue: &str,
    prefix: &str,
) -> (Three, u64, u64, squall_client::Client) {
    let cluster = three().await;
    let all: Vec<&Member> = cluster.members.iter().collect();
    let (leader, term) = agreed_leader(&all).await;
    let client = cluster_client(&cluster.everyone).await;
    for i in 0..3 {
        client.publish(queue, format!("{prefix}{i}")).await.unwrap();
    }
    (cluster, leader, term, client)
}

/// `/metrics` of each member describes the cluster (term, role, leader, log and
/// applied index, voters; on the leader each follower's lag), and `/readyz` is 200 on
/// every member that knows a leader, 503 on one that knows none: here the last member
/// left once the two others were killed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_and_readiness_describe_the_cluster() {
    let _serial = SERIAL.lock().await;
    // Three publishes: three proposals at least (one each, as nothing else waits).
    let (
        Three {
            _dirs,
            members,
            mut brokers,
            ..
        },
        leader,
        term,
        client,
    ) = three_with_publishes("metered", "m").await;
    let https: Vec<SocketAddr> = brokers
        .iter()
        .map(|b| b.as_ref().and_then(|b| b.http).expect("HTTP port"))
        .collect();
    let http = |i: usize| https[i];

    // The leader's page names both followers' lag once it has replicated to them.
    let deadline = Instant::now() + WITHIN;
    let page = loop {
        let (_, page) = common::http_get(http(leader as usize - 1), "/metrics").await;
        let lags = members
            .iter()
            .filter(|m| m.id != leader)
            .filter(|m| {
                let name = format!(
                    "squall_cluster_replication_lag_entries{{node=\"{}\"}}",
                    m.id
                );
                sample(&page, &name).is_some()
            })
            .count();
        if lags == 2 {
            break page;
        }
        assert!(Instant::now() < deadline, "no lag per follower: {page}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(
        sample(&page, "squall_cluster_is_leader"),
        Some(1.0),
        "{page}"
    );
    assert_eq!(sample(&page, "squall_cluster_voters"), Some(3.0), "{page}");
    assert!(sample(&page, "squall_cluster_term").is_some_and(|t| t >= term as f64));
    assert!(sample(&page, "squall_cluster_applied_index").is_some_and(|i| i >= 1.0));
    // How long the Raft work took: every append synced, applies, the three proposals.
    let count = |page: &str, name: &str| sample(page, &format!("squall_cluster_{name}_count"));
    for name in ["log_append_seconds", "log_fsync_seconds", "apply_seconds"] {
        assert!(
            count(&page, name).is_some_and(|c| c >= 1.0),
            "{name}: {page}"
        );
    }
    assert!(
        count(&page, "proposal_seconds").is_some_and(|c| c >= 3.0),
        "{page}"
    );
    assert!(
        sample(&page, "squall_cluster_proposal_jobs_sum").is_some_and(|j| j >= 3.0),
        "{page}"
    );
    for m in members.iter().filter(|m| m.id != leader) {
        let (status, _) = common::http_get(http(m.id as usize - 1), "/readyz").await;
        assert_eq!(status, 200, "a follower that knows the leader is ready");
        let (_, page) = common::http_get(http(m.id as usize - 1), "/metrics").await;
        assert_eq!(
            sample(&page, "squall_cluster_is_leader"),
            Some(0.0),
            "{page}"
        );
        assert_eq!(
            sample(&page, "squall_cluster_leader_id"),
            Some(leader as f64)
        );
        assert!(sample(&page, "squall_cluster_leader_changes_total").is_some_and(|c| c >= 1.0));
        // A follower appends what the leader sends it, and proposes nothing.
        assert!(
            count(&page, "log_fsync_seconds").is_some_and(|c| c >= 1.0),
            "{page}"
        );
        assert_eq!(count(&page, "proposal_seconds"), Some(0.0), "{page}");
    }
    client.close().await;

    // Kill the leader and one follower: the last member knows no leader any more.
    let last = members
        .iter()
        .find(|m| m.id != leader)
        .expect("a follower")
        .id;
    for m in members.iter().filter(|m| m.id != last) {
        brokers[m.id as usize - 1].take().expect("running").kill9();
    }
    let deadline = Instant::now() + WITHIN;
    loop {
        let (status, _) = common::http_get(http(last as usize - 1), "/readyz").await;
        if status == 503 {
            break;
        }
        assert!(Instant::now() < deadline, "still ready without any leader");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (_, page) = common::http_get(http(last as usize - 1), "/metrics").await;
    assert_eq!(
        sample(&page, "squall_cluster_leader_known"),
        Some(0.0),
        "{page}"
    );
    assert_eq!(sample(&page, "squall_ready"), Some(0.0), "{page}");
}

/// `squall cluster status --json` gives each member its commit index (at least its
/// applied index; on an idle cluster every entry is committed) and the leader's last
/// contact with it, and each follower's own last contact with the leader; `/metrics`
/// says the same (`squall_cluster_commit_index`, `squall_cluster_last_contact_seconds`).
/// A follower stopped for 1.5 s shows it: its last contact ages past a second while
/// the other follower's stays under one (heartbeats every 50 ms). Negative controls
/// run: without the record of an answer in `net.rs` every `last_contact_ms` is null
/// and the test fails; recording failed calls too keeps the stopped follower's fresh,
/// and it fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_reports_commit_index_and_last_contact() {
    let _serial = SERIAL.lock().await;
    let (
        Three {
            _dirs,
            members,
            mut brokers,
            ..
        },
        leader,
        _,
        _client,
    ) = three_with_publishes("contact", "c").await;
    let asked = members[leader as usize - 1].cluster;
    let node = |report: &serde_json::Value, id: u64| -> serde_json::Value {
        report["nodes"]
            .as_array()
            .and_then(|n| n.iter().find(|n| n["id"] == id).cloned())
            .unwrap_or_default()
    };
    let ms = |v: &serde_json::Value| v.as_u64();
    // Once everything is replicated: every member has committed what the leader
    // logged, applied it, and heard from the leader (and it from them) just now.
    let deadline = Instant::now() + WITHIN;
    let report = loop {
        let report = cli_status(asked).await;
        let last = node(&report, leader)["last_log_index"].as_u64();
        let settled = report["leader"] == leader
            && members.iter().all(|m| {
                let n = node(&report, m.id);
                let fresh = |v: &serde_json::Value| ms(v).is_some_and(|ms| ms < 2_000);
                n["commit_index"].as_u64() == last
                    && n["applied_index"].as_u64() == last
                    && (m.id == leader
                        || (fresh(&n["last_contact_ms"]) && fresh(&n["leader_contact_ms"])))
            });
        if settled {
            break report;
        }
        assert!(Instant::now() < deadline, "never settled: {report:#}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(node(&report, leader)["last_contact_ms"], 0, "{report:#}");
    assert!(node(&report, leader)["leader_contact_ms"].is_null());

    let stopped = members.iter().find(|m| m.id != leader).unwrap().id;
    let other = members
        .iter()
        .find(|m| m.id != leader && m.id != stopped)
        .unwrap()
        .id;
    brokers[stopped as usize - 1]
        .take()
        .expect("running")
        .kill9();
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let report = cli_status(asked).await;
    let gone = node(&report, stopped);
    assert_eq!(gone["reachable"], false, "{report:#}");
    assert!(
        ms(&gone["last_contact_ms"]).is_some_and(|ms| ms >= 1_000),
        "the stopped follower's last contact ages: {report:#}"
    );
    assert!(
        ms(&node(&report, other)["last_contact_ms"]).is_some_and(|ms| ms < 1_000),
        "the running follower's stays fresh: {report:#}"
    );
    let http = brokers[leader as usize - 1]
        .as_ref()
        .and_then(|b| b.http)
        .expect("HTTP port");
    let (_, page) = common::http_get(http, "/metrics").await;
    let contact = |id: u64| {
        sample(
            &page,
            &format!("squall_cluster_last_contact_seconds{{node=\"{id}\"}}"),
        )
    };
    assert!(contact(stopped).is_some_and(|s| s >= 1.0), "{page}");
    assert!(contact(other).is_some_and(|s| s < 1.0), "{page}");
    let commit = sample(&page, "squall_cluster_commit_index");
    let applied = sample(&page, "squall_cluster_applied_index");
    assert!(
        commit.is_some() && commit >= applied && applied >= Some(1.0),
        "{page}"
    );
}
