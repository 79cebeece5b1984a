//! Clients of replicated clusters (issue 15).
//!
//! Producer numbers: the Rust client numbers every publish it sends to a replicated
//! cluster (its producer id and a sequence number), and the cluster turns them into
//! idempotency keys of the replicated state. A publish whose outcome the client could
//! not know (the leader applied it, its answer was lost, the leader was killed with -9)
//! is sent again to the new leader by the client itself, and is not created twice. The
//! same publish to a queue whose dedup window is 0 (nothing remembered) IS created
//! twice: the negative control, in the same run.
//!
//! Several clusters as one: single brokers and every member of a cluster given to a
//! `ClusterClient` (and to the CLI's `--server`) are one node per broker and one per
//! cluster, named by its cluster id; queues spread over them by rendezvous hashing.

mod common;

#[path = "common/cluster/mod.rs"]
mod cluster;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use cluster::{cluster_client, three};
use common::ChildBroker;
use squall_client::{rendezvous_owner, Client, QueueConfigUpdate};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// A TCP relay in front of one broker that can swallow the broker's answers from now
/// on (`mute`): what the client sent still arrives, and the client never learns how it
/// ended.
struct MuteProxy {
    addr: SocketAddr,
    mute: Arc<AtomicBool>,
}

impl MuteProxy {
    async fn start(target: SocketAddr) -> MuteProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mute = Arc::new(AtomicBool::new(false));
        let muted = mute.clone();
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = TcpStream::connect(target).await else {
                    continue;
                };
                tokio::spawn(relay(client, server, muted.clone()));
            }
        });
        MuteProxy { addr, mute }
    }

    fn mute(&self) {
        self.mute.store(true, Ordering::SeqCst);
    }
}

/// Copies both ways until either side ends, dropping the broker's bytes once muted.
async fn relay(client: TcpStream, server: TcpStream, mute: Arc<AtomicBool>) {
    let (mut cr, mut cw) = client.into_split();
    let (mut sr, mut sw) = server.into_split();
    let up = async {
        let mut buf = vec![0u8; 64 * 1024];
        while let Ok(n @ 1..) = cr.read(&mut buf).await {
            if sw.write_all(&buf[..n]).await.is_err() {
                break;
            }
        }
    };
    let down = async {
        let mut buf = vec![0u8; 64 * 1024];
        while let Ok(n @ 1..) = sr.read(&mut buf).await {
            if !mute.load(Ordering::SeqCst) && cw.write_all(&buf[..n]).await.is_err() {
                break;
            }
        }
    };
    tokio::select! {
        _ = up => {}
        _ = down => {}
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publish_sent_again_after_a_leader_kill_is_not_created_twice() {
    let mut cluster = three().await;
    let admin = cluster_client(&cluster.everyone).await;
    let leader = admin
        .server_info()
        .cluster
        .expect("a cluster's leader")
        .leader;
    // A queue that remembers no idempotency keys: producer numbers do not depend on
    // them.
    admin
        .set_queue_config(
            "forgetful",
            QueueConfigUpdate::new().dedup_window(Duration::ZERO),
        )
        .await
        .unwrap();

    let at = cluster.member(leader).client;
    let proxy = MuteProxy::start(at).await;
    let producer = Client::builder()
        .request_timeout(Duration::from_secs(60))
        .wait_for_connection(Duration::from_secs(30))
        .connect(proxy.addr.to_string())
        .await
        .unwrap();
    assert!(
        producer.server_info().cluster.is_some(),
        "the producer talks to the leader through the proxy"
    );
    proxy.mute();
    let first = tokio::spawn({
        let p = producer.clone();
        async move { p.publish("remembers", "once").await }
    });
    let second = tokio::spawn({
        let p = producer.clone();
        async move { p.publish("forgetful", "once").await }
    });
    // Both publishes are committed and applied (the leader counts them ready); their
    // answers are swallowed.
    let applied = |q: &'static str| {
        let admin = admin.clone();
        async move { admin.queue(q).await.map(|i| i.ready).unwrap_or(0) }
    };
    for _ in 0..300 {
        if applied("remembers").await == 1 && applied("forgetful").await == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(applied("remembers").await, 1, "the first send was applied");
    assert_eq!(applied("forgetful").await, 1, "the first send was applied");
    assert!(!first.is_finished() && !second.is_finished());

    cluster.take(leader).kill9();
    for (queue, sent) in [("remembers", first), ("forgetful", second)] {
        let published = sent.await.unwrap().expect("sent again to the new leader");
        assert!(
            published.duplicate,
            "the repeat to {queue} found the first send: {published:?}"
        );
        assert_eq!(
            applied(queue).await,
            1,
            "the publish to {queue} sent again was not created twice"
        );
    }
    let now = admin.server_info().cluster.expect("a new leader").leader;
    assert_ne!(now, leader, "the admin client follows the new leader");
    producer.close().await;
    admin.close().await;
}

/// Two single brokers and a three-member cluster, every member listed: three nodes,
/// the cluster once (named by its id); each queue lands on the node rendezvous
/// hashing picks, through the `ClusterClient` and through the CLI's `--server`; the
/// members' addresses alone are one broker to the CLI.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_single_nodes_and_a_cluster_are_three_nodes() {
    let cluster = three().await;
    let leader = cluster_client(&cluster.everyone).await;
    let id = leader.server_info().cluster.expect("a leader").cluster_id;
    let dirs = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
    let singles = [
        ChildBroker::spawn(dirs[0].path(), &["--node-id", "s1"]),
        ChildBroker::spawn(dirs[1].path(), &["--node-id", "s2"]),
    ];
    let mut list = vec![
        format!("s1={}", singles[0].addr),
        format!("s2={}", singles[1].addr),
    ];
    list.extend(cluster.members.iter().map(|m| m.client.to_string()));
    let client = Client::builder()
        .wait_for_connection(Duration::from_secs(30))
        .connect_cluster(&list)
        .await
        .unwrap();
    let names = ["s1", "s2", id.as_str()];
    assert_eq!(client.nodes().collect::<Vec<_>>(), names);
    let direct = [
        Client::connect(singles[0].addr).await.unwrap(),
        Client::connect(singles[1].addr).await.unwrap(),
        leader.clone(),
    ];
    // The cluster's name is its random id: as many queues as it takes for every node
    // to own some (12 left one without any in about 2% of runs), at least 12.
    let mut used = [0; 3];
    let mut queues = 0;
    while queues < 12 || used.contains(&0) {
        assert!(queues < 200, "rendezvous hashing left a node out: {used:?}");
        let queue = format!("q{queues}");
        queues += 1;
        client.publish(queue.as_str(), "x").await.unwrap();
        let owner = rendezvous_owner(&names, &queue).unwrap();
        assert_eq!(client.node_of(&queue), names[owner]);
        assert_eq!(direct[owner].queue(queue.as_str()).await.unwrap().ready, 1);
        used[owner] += 1;
    }
    // The CLI puts a queue of the cluster on the cluster (one publish, not three).
    let on_cluster = (0..queues)
        .map(|i| format!("q{i}"))
        .find(|q| rendezvous_owner(&names, q) == Some(2))
        .unwrap();
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_squall"))
        .args(["publish", "--server", &list.join(","), &on_cluster, "cli"])
        .env_remove("SQUALL_SERVER")
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(leader.queue(on_cluster.as_str()).await.unwrap().ready, 2);
    // A task id is the cluster's: `task` finds it through the members' addresses
    // alone; among several nodes it needs the queue.
    let id = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    let task = |server: String| {
        let id = id.clone();
        async move {
            tokio::process::Command::new(env!("CARGO_BIN_EXE_squall"))
                .args(["task", &id, "--server", &server])
                .env_remove("SQUALL_SERVER")
                .output()
                .await
                .unwrap()
        }
    };
    let out = task(cluster.everyone.clone()).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(task(list.join(",")).await.status.code(), Some(64));
    client.close().await;
    for c in direct {
        c.close().await;
    }
    for b in singles {
        b.terminate();
    }
}

/// A member down when the cluster formed is listed without its client address (the
/// others formed without it, after waiting a few seconds for it); once it is up, the
/// leader fills its address in, so clients can be sent to it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_down_at_formation_gets_its_client_address_once_up() {
    let (_dirs, members) = cluster::members(3);
    let peers = cluster::peers_of(&members);
    let first: Vec<ChildBroker> = members[..2]
        .iter()
        .map(|m| cluster::start(m, &peers))
        .collect();
    let two: Vec<&cluster::Member> = members[..2].iter().collect();
    cluster::agreed_leader(&two).await;
    let everyone = cluster::Three::clients_of(&two);
    let addr_of_3 = |c: &Client| {
        let info = c.server_info().cluster.expect("a leader");
        info.members
            .iter()
            .find(|(id, _)| *id == 3)
            .map(|(_, a)| a.clone())
            .expect("member 3 is listed")
    };
    let client = cluster_client(&everyone).await;
    assert_eq!(addr_of_3(&client), "", "not known while it is down");
    client.close().await;
    let third = cluster::start(&members[2], &peers);
    let mut known = String::new();
    for _ in 0..150 {
        let client = cluster_client(&everyone).await;
        known = addr_of_3(&client);
        client.close().await;
        if !known.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(known, members[2].client.to_string());
    third.terminate();
    for b in first {
        b.terminate();
    }
}

/// `squall bench` against a cluster whose leader is killed with -9 mid-run: its
/// clients follow the new leader, an ack refused because the lease died with the old
/// leader is not an error of the run (the task comes again: a duplicate), and the run
/// ends with every confirmed message delivered. (Negative control run: the consumer
/// treating such an ack as fatal, the bench exits with "connection to the broker
/// lost" and the test fails.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn squall_bench_rides_out_a_leader_kill() {
    let mut cluster = three().await;
    let admin = cluster_client(&cluster.everyone).await;
    let leader = admin.server_info().cluster.expect("a leader").leader;
    let via = cluster.others(leader)[0].client.to_string();
    // A fixed rate: the run lasts ~4 s whatever the build.
    let bench = tokio::process::Command::new(env!("CARGO_BIN_EXE_squall"))
        .args(["bench", "--server", &via, "--json", "--size", "64"])
        .args(["--rate", "1000", "--messages", "4000", "--prefetch", "16"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("run squall bench");
    // Killed mid-run: once the run's queue has seen some deliveries.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let queues = admin.queues().await.unwrap_or_default();
        if queues.iter().any(|q| q.totals.delivered >= 500) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the bench delivered nothing: {queues:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    admin.close().await;
    cluster.take(leader).kill9();
    let out = tokio::time::timeout(Duration::from_secs(60), bench.wait_with_output())
        .await
        .expect("the bench ends")
        .expect("the bench ran");
    assert!(
        out.status.success(),
        "squall bench failed: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).expect("the report is JSON");
    assert_eq!(r["confirmed"], 4000, "{r}");
    assert_eq!(r["delivered"], 4000, "{r}");
    assert_eq!(r["lost"], 0, "{r}");
}
