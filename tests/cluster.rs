//! Scale-out end to end: three brokers as child processes on loopback ports, 30 queues
//! spread over them by the client's rendezvous hashing, one `ClusterWorker` draining
//! all of them. Mid-run one node is killed (-9) and restarted on the same address: no
//! confirmed task is lost, calls for its queues fail at once with the node named while
//! the others keep working, and the worker picks the node up again when it is back.
//! The CLI is checked against the same cluster (`--server a,b,c`).

mod common;

use std::collections::{BTreeMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{wait_until, ChildBroker};
use parking_lot::Mutex;
use squall_client::{
    Client, ClientError, ClusterClient, Message, ReconnectPolicy, Task, TaskError, TaskState,
};

const NODES: usize = 3;
const QUEUES: usize = 30;
const PER_QUEUE: usize = 10;

fn broker_args(i: usize) -> Vec<String> {
    [
        "--node-id",
        &format!("n{i}"),
        "--queue-lease",
        "5s",
        "--queue-backoff",
        "50ms..200ms",
    ]
    .map(String::from)
    .to_vec()
}

fn spawn(i: usize, dir: &std::path::Path, on: Option<std::net::SocketAddr>) -> ChildBroker {
    let args = broker_args(i);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    match on {
        None => ChildBroker::spawn(dir, &args),
        Some(addr) => ChildBroker::spawn_on(dir, addr, &args),
    }
}

/// `squall` with `args`; returns (exit code, stdout, stderr).
async fn squall(args: &[&str]) -> (i32, String, String) {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_squall"))
        .args(args)
        .env_remove("SQUALL_SERVER")
        .output()
        .await
        .expect("run squall");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_worker_drains_thirty_queues_across_a_node_restart() {
    let dirs: Vec<tempfile::TempDir> = (0..NODES).map(|_| tempfile::tempdir().unwrap()).collect();
    let data: Vec<PathBuf> = dirs.iter().map(|d| d.path().join("data")).collect();
    let mut brokers: Vec<Option<ChildBroker>> =
        (0..NODES).map(|i| Some(spawn(i, &data[i], None))).collect();
    let addrs: Vec<_> = brokers.iter().map(|b| b.as_ref().unwrap().addr).collect();
    let specs: Vec<String> = (0..NODES).map(|i| format!("n{i}={}", addrs[i])).collect();
    let server_list = specs.join(",");

    let cluster: ClusterClient = Client::builder()
        .client_name("cluster-test")
        .reconnect(
            ReconnectPolicy::default()
                .initial_delay(Duration::from_millis(50))
                .max_delay(Duration::from_millis(200)),
        )
        .request_timeout(Duration::from_secs(5))
        .connect_cluster(&specs)
        .await
        .expect("cluster connects");
    assert_eq!(cluster.nodes().collect::<Vec<_>>(), ["n0", "n1", "n2"]);

    // 30 queues; every node owns some.
    let queues: Vec<String> = (0..QUEUES).map(|i| format!("q{i:02}")).collect();
    let mut owned: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for q in &queues {
        owned.entry(cluster.node_of(q)).or_default().push(q);
    }
    assert_eq!(owned.len(), NODES, "every node owns some queues: {owned:?}");
    let on = |node: &str| owned[node].clone();

    // One batch spanning every node: split per node, results in the caller's order.
    let batch: Vec<Message> = (0..PER_QUEUE)
        .flat_map(|n| {
            queues
                .iter()
                .map(move |q| Message::new(q.clone(), format!("{q}/{n}")))
        })
        .collect();
    let published = cluster.publish_batch(batch.clone()).await.expect("publish");
    assert_eq!(published.len(), batch.len());
    for (m, p) in batch.iter().zip(&published).step_by(7) {
        let status = cluster.task(m.queue(), p.id).await.expect("status");
        assert_eq!(
            status.queue,
            m.queue(),
            "result order matches message order"
        );
        assert_ne!(status.state, TaskState::Unknown);
    }
    let expected: Arc<Mutex<HashSet<String>>> = Arc::new(Mutex::new(
        batch
            .iter()
            .map(|m| String::from_utf8(m.payload().to_vec()).unwrap())
            .collect(),
    ));

    // One worker over all 30 queues, each subscribed on its node.
    let handled: Arc<Mutex<HashSet<String>>> = Arc::default();
    let seen = handled.clone();
    let worker = cluster
        .workers(queues.clone())
        .concurrency(2)
        .grace_period(Duration::from_secs(2));
    let stop = worker.shutdown_handle();
    let running = tokio::spawn(worker.run(move |task: Task| {
        let seen = seen.clone();
        async move {
            tokio::time::sleep(Duration::from_millis(5)).await;
            let payload = String::from_utf8(task.payload().to_vec()).map_err(TaskError::dead)?;
            seen.lock().insert(payload);
            Ok::<_, TaskError>(())
        }
    }));
    wait_until(
        "the worker handles some tasks",
        Duration::from_secs(20),
        || handled.lock().len() >= 60,
    )
    .await;

    // Kill n1 mid-run.
    brokers[1].take().unwrap().kill9();
    wait_until(
        "the client notices n1 is gone",
        Duration::from_secs(10),
        || !cluster.is_node_connected("n1"),
    )
    .await;
    let (down_q, up_q) = (on("n1")[0], on("n0")[0]);
    let started = Instant::now();
    let err = cluster.publish(down_q, "lost?").await.unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(1), "fails fast");
    match &err {
        ClientError::NodeUnavailable { node, addr, .. } => {
            assert_eq!(node, "n1");
            assert_eq!(addr, &addrs[1].to_string());
        }
        other => panic!("expected NodeUnavailable for n1, got {other:?}"),
    }
    assert!(err.nothing_was_applied());
    assert!(err.to_string().contains("n1"), "{err}");
    assert!(matches!(
        cluster.queue(down_q).await,
        Err(ClientError::NodeUnavailable { .. })
    ));
    // A batch touching the down node sends nothing, not even its other parts.
    let mixed = [
        Message::new(up_q, "mixed/up"),
        Message::new(down_q, "mixed/down"),
    ];
    assert!(matches!(
        cluster.publish_batch(mixed).await,
        Err(ClientError::NodeUnavailable { ref node, .. }) if node == "n1"
    ));
    // The other nodes keep working.
    for q in on("n0").into_iter().chain(on("n2")) {
        let payload = format!("{q}/while-n1-down");
        cluster
            .publish(q, payload.clone())
            .await
            .expect("other nodes work");
        expected.lock().insert(payload);
    }
    // The CLI lists the nodes that answer, names the one that does not, and exits 69.
    let (code, stdout, stderr) = squall(&["queues", "--server", &server_list]).await;
    assert_eq!(code, 69, "stdout: {stdout}\nstderr: {stderr}");
    assert!(stdout.starts_with("NODE "), "{stdout}");
    assert!(stderr.contains("n1"), "{stderr}");

    // Restart n1 on the same address: the client reconnects, the worker re-subscribes.
    brokers[1] = Some(spawn(1, &data[1], Some(addrs[1])));
    wait_until(
        "the client reconnects to n1",
        Duration::from_secs(10),
        || cluster.is_node_connected("n1"),
    )
    .await;
    for q in on("n1") {
        let payload = format!("{q}/after-restart");
        cluster
            .publish(q, payload.clone())
            .await
            .expect("n1 is back");
        expected.lock().insert(payload);
    }

    // Every confirmed task is handled: nothing lost on the killed node.
    let want = expected.lock().clone();
    wait_until(
        "every confirmed task is handled",
        Duration::from_secs(30),
        || want.is_subset(&handled.lock()),
    )
    .await;
    stop.cancel();
    let report = running.await.unwrap().expect("worker stops cleanly");
    assert!(report.acked as usize >= want.len() - 60, "{report:?}");
    let handled = handled.lock().clone();
    assert!(
        !handled.contains("lost?") && !handled.contains("mixed/up"),
        "nothing sent"
    );

    // Each node holds exactly the queues it owns; the CLI shows them with their node.
    for node in cluster.queues().await {
        let names: Vec<String> = node
            .queues
            .expect("all up")
            .into_iter()
            .map(|q| q.name)
            .collect();
        let mine: Vec<&str> = on(&node.node);
        assert_eq!(names, mine, "queues on {}", node.node);
    }
    let (code, stdout, stderr) = squall(&["queues", "--server", &server_list, "--json"]).await;
    assert_eq!(code, 0, "{stderr}");
    let rows: Vec<serde_json::Value> = serde_json::from_str(&stdout).unwrap();
    assert_eq!(rows.len(), QUEUES);
    for row in &rows {
        let (name, node) = (row["name"].as_str().unwrap(), row["node"].as_str().unwrap());
        assert_eq!(node, cluster.node_of(name), "{row}");
        assert_eq!(row["owner"], row["node"], "nothing left behind: {row}");
    }
    // Queue commands and `task --queue` go to the owning node.
    let (code, stdout, stderr) =
        squall(&["publish", "--server", &server_list, down_q, "cli"]).await;
    assert_eq!(code, 0, "{stderr}");
    let id = stdout.trim();
    let (code, stdout, stderr) = squall(&[
        "task",
        id,
        "--queue",
        down_q,
        "--server",
        &server_list,
        "--json",
    ])
    .await;
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stdout.contains(&format!("\"queue\":\"{down_q}\"")),
        "{stdout}"
    );
    let (code, _, stderr) = squall(&["task", id, "--server", &server_list]).await;
    assert_eq!(code, 64, "a cluster needs --queue: {stderr}");

    cluster.close().await;
    for b in brokers.into_iter().flatten() {
        b.kill9();
    }
}

#[tokio::test]
async fn an_unreachable_node_fails_only_its_queues_until_it_appears() {
    let dir = tempfile::tempdir().unwrap();
    let up = spawn(0, &dir.path().join("a"), None);
    // A port nobody listens on (yet).
    let free = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let specs = [format!("n0={}", up.addr), format!("n1={free}")];
    let cluster = Client::cluster(&specs)
        .await
        .expect("one node is enough to start");
    let queues: Vec<String> = (0..20).map(|i| format!("q{i:02}")).collect();
    let (mine, theirs): (Vec<&String>, Vec<&String>) =
        queues.iter().partition(|q| cluster.node_of(q) == "n0");
    assert!(!mine.is_empty() && !theirs.is_empty());
    cluster
        .publish(mine[0].as_str(), "x")
        .await
        .expect("n0 works");
    let err = cluster.publish(theirs[0].as_str(), "x").await.unwrap_err();
    assert!(
        matches!(err, ClientError::NodeUnavailable { ref node, .. } if node == "n1"),
        "{err}"
    );
    assert!(matches!(
        cluster.worker(theirs[0].as_str()),
        Err(ClientError::NodeUnavailable { .. })
    ));

    // The node appears: the background dialler finds it.
    let late = spawn(1, &dir.path().join("b"), Some(free));
    wait_until("n1 is dialled", Duration::from_secs(15), || {
        cluster.is_node_connected("n1")
    })
    .await;
    cluster
        .publish(theirs[0].as_str(), "x")
        .await
        .expect("n1 works");
    cluster.close().await;
    drop((up, late));

    // Nothing reachable at all is an error; so is a bad list.
    let none = Client::cluster([free.to_string()]).await.unwrap_err();
    assert!(matches!(none, ClientError::Unavailable { .. }), "{none}");
    let twice = Client::cluster(["a=127.0.0.1:1", "a=127.0.0.1:2"])
        .await
        .unwrap_err();
    assert!(matches!(twice, ClientError::Config(_)), "{twice}");
}
