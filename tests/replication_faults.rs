//! Replication under faults (issue 15), each checked by the one checker
//! (`common/cluster/ledger.rs`, proof 6): a rolling restart of every member under
//! load (proof 3).
//!
//! The tests of this file run one at a time (`SERIAL`): two three-node clusters at
//! once on a 2-core machine would mostly measure the machine.

#[path = "common/cluster/mod.rs"]
mod cluster;
mod common;

use std::sync::Arc;
use std::time::Duration;

use cluster::ledger::Checker;
use cluster::load::Load;
use cluster::*;

/// One cluster at a time.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

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
