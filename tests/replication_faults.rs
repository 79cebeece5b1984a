//! Replication under faults (issue 15), each checked by the one checker
//! (`common/cluster/ledger.rs`, proof 6): a leader cut off from the majority by a TCP
//! proxy between the members (proof 2), a rolling restart of every member under load
//! (proof 3), the leader killed and restarted at once, every member killed at once,
//! and membership 3 -> 4 -> 3 under load with the leader itself removed (proof 5).
//!
//! The tests of this file run one at a time (`SERIAL`): two three-node clusters at
//! once on a 2-core machine would mostly measure the machine.

#[path = "common/cluster/mod.rs"]
mod cluster;
mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use cluster::ledger::{Checker, Outcome};
use cluster::load::Load;
use cluster::*;
use squall_client::{CancellationToken, Client, ReconnectPolicy};

/// One cluster at a time.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The bound on electing a new leader once the old one is cut off.
const ELECTION: Duration = Duration::from_secs(3);

/// Proof 2 of the issue: the leader is cut off from both other members by the proxy
/// between the cluster ports, its client port still reachable. Under load, what it is
/// sent meanwhile is never confirmed (it times out or fails), the majority elects a
/// leader within 3 s and confirms publishes; the cut-off leader hands out nothing (its
/// leader lease ran out: tasks the majority delivered and saw acked meanwhile are not
/// delivered again by it); once the links heal the old leader rejoins as a follower,
/// nothing it was sent while cut off is ever delivered, and the checker finds every
/// promise kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_cut_off_from_the_majority_confirms_nothing_and_rejoins_as_a_follower() {
    let _serial = SERIAL.lock().await;
    let cluster = three_behind_proxies().await;
    let proxies = cluster.proxies.as_ref().expect("behind proxies");
    let (old, _) = agreed_leader(&cluster.all()).await;
    let checker = Arc::new(Checker::default());
    let load = Load::start(
        &cluster.everyone,
        "parted",
        2,
        Duration::from_millis(5),
        checker.clone(),
    )
    .await;
    load.confirms(50, WITHIN).await;
    // Tasks nobody consumes before the cut.
    let producer = cluster_client(&cluster.everyone).await;
    let held: Vec<String> = (0..20).map(|i| format!("held-{i}")).collect();
    for payload in &held {
        checker.publishing(payload);
        let published = producer.publish("held", payload.clone()).await;
        checker.published(payload, &published);
        published.expect("published before the cut");
    }
    // A client of the old leader only, whose publishes can go nowhere else.
    let stale_client = Client::builder()
        .request_timeout(Duration::from_millis(1500))
        .reconnect(ReconnectPolicy::disabled())
        .connect(cluster.member(old).client)
        .await
        .unwrap();

    let cut_at = Instant::now();
    proxies.isolate(old);
    let healed = CancellationToken::new();
    let stale = tokio::spawn(publish_until(
        stale_client.clone(),
        "stale".into(),
        checker.clone(),
        healed.clone(),
    ));
    let majority = cluster.others(old);
    let (new, _) = agreed_leader_within(&majority, NODES as usize, WITHIN).await;
    let elected = cut_at.elapsed();
    assert_ne!(new, old);
    // The majority goes on: a load through its members is confirmed.
    let load_majority = Load::start(
        &Three::clients_of(&majority),
        "parted",
        1,
        Duration::from_millis(5),
        checker.clone(),
    )
    .await;
    load_majority.confirms(50, WITHIN).await;
    // The majority hands out the held tasks and sees them acked; the cut-off leader,
    // which still holds them ready, must not hand them out again.
    let consume_held = Load::start(
        &Three::clients_of(&majority),
        "held",
        0,
        Duration::ZERO,
        checker.clone(),
    )
    .await;
    let deadline = Instant::now() + WITHIN;
    while !held.iter().all(|p| checker.was_acked(p)) {
        assert!(
            Instant::now() < deadline,
            "the held tasks were not all acked"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let from_old = stale_client.subscribe("held").prefetch(32).await;
    if let Ok(mut sub) = from_old {
        let mut again = Vec::new();
        while let Ok(Some(Ok(d))) = tokio::time::timeout(Duration::from_secs(1), sub.recv()).await {
            let payload = String::from_utf8_lossy(d.payload()).into_owned();
            checker.delivered(&payload, d.id(), Instant::now(), "from the cut-off leader");
            again.push(payload);
        }
        assert!(
            again.is_empty(),
            "the cut-off leader handed out {} tasks acked meanwhile: {again:?}",
            again.len()
        );
    }

    proxies.heal_all();
    let (leader, _) = agreed_leader(&cluster.all()).await;
    assert_ne!(
        leader, old,
        "the old leader took over again (possible, but then the check below is weaker)"
    );
    let view = status(cluster.member(old).cluster)
        .await
        .expect("it answers");
    assert_eq!(view.role, "follower", "{view:?}");
    healed.cancel();
    let stale = stale.await.unwrap();
    assert!(!stale.is_empty(), "nothing was sent to the cut-off leader");

    let mut load_majority = load_majority;
    load_majority.stop_producing().await;
    let summary = load.finish().await;
    load_majority.finish().await;
    consume_held.finish().await;
    for payload in &stale {
        let outcome = checker.outcome(payload).expect("recorded");
        assert!(
            matches!(outcome, Outcome::Unknown(_) | Outcome::Refused(_)),
            "the cut-off leader confirmed {payload}: {outcome:?}"
        );
        assert!(
            !checker.was_delivered(payload),
            "{payload}, sent to the cut-off leader only, was delivered"
        );
    }
    eprintln!(
        "leader {old} cut off: node {new} agreed on after {elected:?}; {} publishes to the \
         cut-off leader, none confirmed; {summary}",
        stale.len()
    );
    assert!(
        elected <= ELECTION,
        "the majority took {elected:?} to elect a leader"
    );
}

/// Publishes payloads `prefix-N` to the queue "parted" through `client` one after the
/// other until `stop` (or the connection is gone), each recorded in `checker`; returns
/// the payloads sent.
async fn publish_until(
    client: Client,
    prefix: String,
    checker: Arc<Checker>,
    stop: CancellationToken,
) -> Vec<String> {
    let mut sent = Vec::new();
    while !stop.is_cancelled() {
        let payload = format!("{prefix}-{}", sent.len());
        checker.publishing(&payload);
        let published = client.publish("parted", payload.clone()).await;
        checker.published(&payload, &published);
        sent.push(payload);
        if published.is_err() && !client.is_connected() {
            break;
        }
    }
    sent
}

/// Three members and four producers publishing to `queue` as fast as they are
/// answered, with a consumer; returns once 100 publishes are confirmed.
async fn three_under_full_load(queue: &str) -> (Three, Load) {
    let cluster = three().await;
    let checker = Arc::new(Checker::default());
    let load = Load::start(&cluster.everyone, queue, 4, Duration::ZERO, checker).await;
    load.confirms(100, WITHIN).await;
    (cluster, load)
}

/// How a member is stopped in the rolling restart.
#[derive(Debug, Clone, Copy)]
enum Stop {
    /// SIGTERM: a graceful shutdown.
    Term,
    /// SIGKILL: no shutdown, no flush.
    Kill9,
}

/// Proof 3 of the issue: a rolling restart of all three members under load. Each is
/// stopped in turn (a follower with SIGTERM, the leader with kill -9, the last one
/// with SIGTERM, whatever its role by then), restarted with its data, and the next is
/// stopped only once it has rejoined (caught up with the leader's log) and the
/// cluster confirms publishes again. The checker finds every promise kept: no
/// confirmed task lost, none back after its confirmed ack.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_restart_under_load_loses_no_confirmed_task() {
    let _serial = SERIAL.lock().await;
    let mut cluster = three().await;
    let checker = Arc::new(Checker::default());
    let load = Load::start(
        &cluster.everyone,
        "rolling",
        2,
        Duration::from_millis(5),
        checker.clone(),
    )
    .await;
    load.confirms(50, WITHIN).await;

    let (leader, _) = agreed_leader(&cluster.all()).await;
    let follower = cluster.others(leader)[0].id;
    let last = cluster.others(leader)[1].id;
    for (id, how) in [
        (follower, Stop::Term),
        (leader, Stop::Kill9),
        (last, Stop::Term),
    ] {
        let broker = cluster.take(id);
        match how {
            Stop::Term => {
                let exit = broker.terminate_within(WITHIN);
                assert!(exit.success(), "node {id} stopped with {exit:?}");
            }
            Stop::Kill9 => broker.kill9(),
        }
        // The others go on without it (a new leader if it led).
        load.confirms(20, WITHIN).await;
        cluster.restart(id);
        let (leader, _) = agreed_leader(&cluster.all()).await;
        let target = last_log_index(cluster.member(leader)).await;
        applied_up_to(cluster.member(id), target).await;
        eprintln!("node {id} stopped ({how:?}), restarted and caught up (leader {leader})");
    }
    load.confirms(20, WITHIN).await;
    let summary = load.finish().await;
    eprintln!("rolling restart: {summary}");
}

/// The leader killed with -9 and started again at once (a supervisor's immediate
/// restart), three times under load: it comes back before the others' election
/// timeout, and openraft restores it as leader of its old term, with committed entries
/// its store had not applied yet. It must apply them before it serves: their tasks
/// are then in the engine it builds (before the fix in `server/lead.rs`, `caught_up`,
/// they reached only the store and were never delivered). The checker finds every
/// promise kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_restarted_at_once_after_kill_9_loses_no_confirmed_task() {
    let _serial = SERIAL.lock().await;
    let (mut cluster, load) = three_under_full_load("quick").await;
    let mut resumed = 0;
    for round in 1..=3 {
        let (leader, term) = agreed_leader(&cluster.all()).await;
        cluster.take(leader).kill9();
        cluster.restart(leader);
        let (now, now_term) = agreed_leader(&cluster.all()).await;
        if (now, now_term) == (leader, term) {
            resumed += 1;
        }
        load.confirms(100, WITHIN).await;
        eprintln!(
            "round {round}: leader {leader} (term {term}) killed and restarted; leader now \
             {now} (term {now_term})"
        );
    }
    let summary = load.finish().await;
    eprintln!("{resumed} of 3 restarts resumed as leader of the old term; {summary}");
}

/// Every member killed with -9 at once and all started again, three times under load
/// (a host running all three losing its processes, not its disk): each member then
/// replays its store's journal and its Raft log, one of them is restored as leader or
/// a new one elected, and the load goes on. The checker finds every promise kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_member_killed_at_once_three_times_loses_no_confirmed_task() {
    let _serial = SERIAL.lock().await;
    let (mut cluster, load) = three_under_full_load("all-killed").await;
    for round in 1..=3 {
        for id in 1..=NODES {
            cluster.take(id).kill9();
        }
        for id in 1..=NODES {
            cluster.restart(id);
        }
        let (leader, term) = agreed_leader(&cluster.all()).await;
        load.confirms(100, WITHIN).await;
        eprintln!("round {round}: all three killed and restarted; leader {leader} (term {term})");
    }
    let summary = load.finish().await;
    eprintln!("{summary}");
}

/// Proof 5 of the issue: membership 3 -> 4 -> 3 under load. A fourth node is added
/// (`squall cluster add-node`: a learner, then a voter), then the leader itself is
/// removed (`remove-node`): it steps down, the three left elect a leader among them,
/// and the clients follow. The checker finds every promise kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn membership_three_to_four_to_three_under_load_loses_nothing() {
    let _serial = SERIAL.lock().await;
    let (_dirs, members) = members(4);
    let peers = |n: usize| peers_of(&members[..n]);
    let mut brokers: Vec<Option<common::ChildBroker>> = members[..3]
        .iter()
        .map(|m| Some(start(m, &peers(3))))
        .collect();
    let first: Vec<&Member> = members[..3].iter().collect();
    let (leader, _) = agreed_leader(&first).await;
    let all: Vec<&Member> = members.iter().collect();
    let checker = Arc::new(Checker::default());
    let load = Load::start(
        &Three::clients_of(&all),
        "members",
        2,
        Duration::from_millis(5),
        checker.clone(),
    )
    .await;
    load.confirms(50, WITHIN).await;

    let new = &members[3];
    brokers.push(Some(start(new, &peers(4))));
    let via = members[leader as usize - 1].cluster.to_string();
    let said = add_node(new, &via).await;
    assert!(
        said.contains("voters: 1, 2, 3, 4; learners: none"),
        "{said}"
    );
    for m in &members {
        membership_is(m, &[1, 2, 3, 4]).await;
    }
    load.confirms(30, WITHIN).await;

    let said = cluster_cli_ok(&["remove-node", &leader.to_string(), "--node", &via]).await;
    let left: Vec<&Member> = members.iter().filter(|m| m.id != leader).collect();
    let voters: Vec<u64> = left.iter().map(|m| m.id).collect();
    let listed = voters
        .iter()
        .map(u64::to_string)
        .collect::<Vec<_>>()
        .join(", ");
    assert!(
        said.contains(&format!("voters: {listed}; learners: none")),
        "{said}"
    );
    for m in &left {
        membership_is(m, &voters).await;
    }
    let (new_leader, _) = agreed_leader_within(&left, 3, WITHIN).await;
    assert_ne!(new_leader, leader);
    // The removed leader no longer names itself: it says it is not a member and
    // lists those who are.
    let mut wire = common::Wire::connect(members[leader as usize - 1].client).await;
    let refused = wire
        .call(squall_proto::v1::request::Op::Hello(
            squall_proto::v1::Hello {
                protocol_version: squall_proto::PROTOCOL_VERSION,
                client_name: "test".into(),
                token: String::new(),
            },
        ))
        .await
        .expect_err("a removed member serves no client");
    assert_eq!(
        refused.code,
        squall_proto::ErrorCode::NotLeader,
        "{refused:?}"
    );
    assert!(
        refused.message.contains("is not a member of the cluster")
            && refused.message.contains(&format!("node {new_leader} (")),
        "{refused:?}"
    );
    // Soon: the removed leader closes its client connections at once (were they left
    // open until its unanswerable proposals timed out, this took 20 s and more).
    load.confirms(30, Duration::from_secs(10)).await;
    let summary = load.finish().await;
    eprintln!("3 -> 4 -> 3 (node 4 added, leader {leader} removed): {summary}");
    // Killed, not stopped: a leader left without a quorum does not finish a graceful
    // stop (SIGTERM) today (docs/design/replication.md, not done).
    drop(brokers);
}

/// The checker itself: each promise broken on purpose in a made-up history is
/// reported, and a history that keeps them passes.
#[test]
fn the_checker_reports_every_broken_promise() {
    use squall_client::{ClientError, Published};
    let ok = |id| -> Result<Published, ClientError> {
        Ok(Published {
            id,
            duplicate: false,
        })
    };
    let refused = || -> Result<Published, ClientError> {
        Err(ClientError::Server {
            code: squall_client::ErrorCode::QueueFull,
            message: "full".into(),
        })
    };
    let lost = || -> Result<Published, ClientError> {
        Err(ClientError::ConnectionLost {
            reason: "killed".into(),
        })
    };
    let history = |f: &dyn Fn(&Checker)| {
        let c = Checker::default();
        for (p, r) in [("a", ok(1)), ("b", refused()), ("c", lost()), ("d", ok(4))] {
            c.publishing(p);
            c.published(p, &r);
        }
        c.delivered("a", 1, Instant::now(), "");
        c.acked("a");
        c.delivered("d", 4, Instant::now(), "");
        c.delivered("d", 4, Instant::now(), "a duplicate before its ack: fine");
        c.acked("d");
        f(&c);
        c.check()
    };
    let kept = history(&|_| {}).expect("a history that keeps every promise");
    assert_eq!((kept.confirmed, kept.refused, kept.unknown), (2, 1, 1));
    assert_eq!(kept.redeliveries, 1);
    let broken = |f: &dyn Fn(&Checker), what: &str| {
        let report = history(f).expect_err(what);
        assert!(report.contains(what), "{what}: {report}");
    };
    broken(
        &|c| {
            c.publishing("e");
            c.published("e", &ok(5));
        },
        "confirmed publishes never delivered",
    );
    broken(
        &|c| c.delivered("b", 2, Instant::now(), ""),
        "although its publish was refused",
    );
    broken(
        &|c| c.delivered("z", 9, Instant::now(), ""),
        "which nobody published",
    );
    broken(
        &|c| c.delivered("a", 1, Instant::now(), ""),
        "after its ack was confirmed",
    );
    broken(
        &|c| c.delivered("d", 7, Instant::now(), ""),
        "confirmed as task 4 but delivered as task 7",
    );
    // Received before the ack was confirmed (it waited in a prefetch buffer): fine.
    let before = Instant::now() - Duration::from_secs(1);
    history(&|c| c.delivered("a", 1, before, "")).expect("received before the ack");
    // An unknown outcome may or may not be delivered.
    history(&|c| c.delivered("c", 3, Instant::now(), "")).expect("unknown, delivered");
}
