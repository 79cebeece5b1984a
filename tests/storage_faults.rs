//! Storage faults under load, injected by the fault filesystem (`tests/faultfs`) at a
//! seeded moment (its seed printed; `SQUALL_POWER_SEED` reproduces it): ENOSPC on
//! journal appends, ENOSPC on journal segment creation, EIO on journal syncs, and EIO
//! or ENOSPC on sled's files (which fails the checkpoint's flush).
//!
//! Each checks what the client sees (STORAGE, never a confirmation of what could not
//! be written), that nothing refused is ever delivered, that the broker recovers
//! in-process once the fault clears where the design allows it (journal faults) or
//! stops with exit code 75 where it does not (a failed sled flush), and, after a power
//! cut (or, after failed journal syncs, a clean restart that keeps every byte written)
//! and a restart, that nothing confirmed was lost, no confirmed ack undone and nothing
//! refused brought back.

mod common;

use std::time::{Duration, Instant};

use common::fault_disk::{check, seeds, FaultDisk, Ledger, Load};
use common::{http_get, ChildBroker};
use rand::{Rng, SeedableRng};
use squall_client::ErrorCode;
use squall_faultfs::{Op, Tear};

const SEGMENT: (&str, &str) = ("SQUALL_JOURNAL_SEGMENT_BYTES", "256 KiB");

/// Waits until the load has seen `n` refusals, failing the test after 30 s.
async fn wait_refused(load: &Load, n: usize, what: &str) {
    let t = Instant::now();
    while load.ledger.lock().refused.len() < n {
        assert!(t.elapsed() < Duration::from_secs(30), "no refusal: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Every refusal the clients saw was STORAGE (or SHUTTING_DOWN as the broker stops).
fn assert_refusals_are_storage(ledger: &Ledger) {
    for (key, code) in &ledger.refused {
        assert!(
            matches!(code, ErrorCode::Storage | ErrorCode::ShuttingDown),
            "publish {key:?} refused with {code:?}"
        );
    }
    for (id, code) in &ledger.ack_refused {
        assert!(
            matches!(code, ErrorCode::Storage | ErrorCode::ShuttingDown),
            "ack of {id} refused with {code:?}"
        );
    }
}

/// How the broker is restarted before the check.
#[derive(Clone, Copy, Debug)]
enum Restart {
    /// A power cut (what was not synced is gone), then a new broker.
    PowerCut,
    /// A clean stop and a new broker: whatever the broker wrote stays, including any
    /// record of a group whose sync failed. Checks that such a record (refused) is not
    /// replayed.
    Clean,
}

/// Restarts the broker as `how` says and checks the ledger.
async fn restart_and_check(
    disk: &mut FaultDisk,
    broker: Option<ChildBroker>,
    how: Restart,
    queue: &str,
    mut ledger: Ledger,
    seed: u64,
) {
    let (confirmed, refused, acked) = (
        ledger.confirmed.len(),
        ledger.refused.len(),
        ledger.acked.len(),
    );
    match how {
        Restart::Clean => {
            if let Some(b) = broker {
                assert!(b.terminate().success());
            }
        }
        Restart::PowerCut => {
            disk.fs().cut_power(Tear::Seeded(seed));
            if let Some(b) = broker {
                b.kill9();
            }
            disk.remount();
        }
    }
    let broker = ChildBroker::spawn_env(&disk.data_dir(), &[], &[SEGMENT]);
    let v = check(broker.addr, queue, &mut ledger).await;
    eprintln!(
        "seed {seed}: {how:?}: {confirmed} confirmed, {refused} refused, {acked} acks confirmed; after \
         the restart {} drained, {} lost, {} acks undone, {} violations",
        v.drained,
        v.lost.len(),
        v.unacked.len(),
        v.violations.len()
    );
    assert!(
        v.is_clean(),
        "seed {seed} (SQUALL_POWER_SEED={seed}): {v:?}"
    );
    assert!(broker.terminate().success());
}

/// A journal fault that clears: STORAGE while it lasts, /readyz 503, then the broker
/// resumes by itself; the restart (`how`) loses nothing confirmed and brings back
/// nothing refused.
async fn journal_fault(name: &str, op: Op, errno: i32, how: Restart) {
    let Some(mut disk) = FaultDisk::new(name) else {
        return;
    };
    let seed = seeds(1)[0];
    let mut rng = rand::rngs::SmallRng::seed_from_u64(seed);
    let queue = "faults";
    let broker = ChildBroker::spawn_env(&disk.data_dir(), &["--sweep-interval", "1h"], &[SEGMENT]);
    let load = Load::start(broker.addr, queue, 3, 1).await;
    load.wait_confirmed(30).await;
    let skip = rng.random_range(0..40);
    eprintln!("{name}: seed {seed}: the fault starts after {skip} more matching operations");
    disk.fs().fail(op, "journal/", errno, skip);
    wait_refused(&load, 3, name).await;
    let http = broker.http.expect("http on");
    let (status, body) = http_get(http, "/readyz").await;
    assert_eq!(
        status, 503,
        "not ready while the journal cannot write: {body}"
    );

    // The fault clears: the broker resumes by itself.
    disk.fs().clear_faults();
    let resumed_from = load.confirmed();
    load.wait_confirmed(resumed_from + 30).await;
    assert_eq!(http_get(http, "/readyz").await.0, 200, "ready again");
    let ledger = load.stop().await;
    assert_refusals_are_storage(&ledger);
    assert!(
        ledger.violations.is_empty(),
        "while running: {:?}",
        ledger.violations
    );
    restart_and_check(&mut disk, Some(broker), how, queue, ledger, seed).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enospc_on_journal_appends_answers_storage_and_resumes_in_process() {
    journal_fault(
        "storage_faults::journal_append_enospc",
        Op::Write,
        libc::ENOSPC,
        Restart::PowerCut,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enospc_on_journal_segment_creation_answers_storage_and_resumes_in_process() {
    journal_fault(
        "storage_faults::segment_create_enospc",
        Op::Create,
        libc::ENOSPC,
        Restart::PowerCut,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eio_on_journal_syncs_answers_storage_and_resumes_in_process() {
    journal_fault(
        "storage_faults::journal_sync_eio",
        Op::Sync,
        libc::EIO,
        Restart::Clean,
    )
    .await;
}

/// sled's files fail (writes with ENOSPC, or syncs with EIO): the next checkpoint's
/// flush fails, which this sled cannot get over in-process. The broker answers STORAGE
/// and stops with exit code 75; a power cut then loses nothing confirmed.
async fn sled_fault(name: &str, op: Op, errno: i32) {
    let Some(mut disk) = FaultDisk::new(name) else {
        return;
    };
    let seed = seeds(1)[0];
    let mut rng = rand::rngs::SmallRng::seed_from_u64(seed);
    let queue = "faults";
    let broker = ChildBroker::spawn_env(&disk.data_dir(), &["--sweep-interval", "1h"], &[SEGMENT]);
    let load = Load::start(broker.addr, queue, 3, 1).await;
    load.wait_confirmed(30).await;
    let skip = rng.random_range(0..20);
    eprintln!("{name}: seed {seed}: the fault starts after {skip} more matching operations");
    disk.fs().fail(op, "slabs/", errno, skip);
    let status = broker.wait_exit(Duration::from_secs(60));
    assert_eq!(status.code(), Some(75), "{status}");
    assert!(
        disk.fs().stats().injected > 0,
        "the injected fault was what failed"
    );
    let ledger = load.stop().await;
    assert_refusals_are_storage(&ledger);
    assert!(
        ledger.violations.is_empty(),
        "while running: {:?}",
        ledger.violations
    );
    disk.fs().clear_faults();
    restart_and_check(&mut disk, None, Restart::PowerCut, queue, ledger, seed).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enospc_on_sled_writes_fails_the_checkpoint_and_the_restart_loses_nothing() {
    sled_fault("storage_faults::sled_write_enospc", Op::Write, libc::ENOSPC).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eio_on_sled_syncs_fails_the_checkpoint_and_the_restart_loses_nothing() {
    sled_fault("storage_faults::sled_sync_eio", Op::Sync, libc::EIO).await;
}

/// A numbered publish (producer id and sequence, what a cluster client sends for
/// every publish) refused because its journal write failed was never stored: sent
/// again once the fault clears, it is stored as new, not answered as a duplicate of
/// the refused attempt (the writer keeps producer records loaded between groups, and
/// forgets them when a group fails to apply). Then the same number is a duplicate of
/// the stored one, and a restart still says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_numbered_publish_refused_by_a_journal_fault_is_stored_new_when_sent_again() {
    use common::{spec, Wire};
    use squall_proto::v1::{self, request::Op as ReqOp, response};

    let name = "storage_faults::numbered_publish_after_journal_fault";
    let Some(disk) = FaultDisk::new(name) else {
        return;
    };
    let args = ["--sweep-interval", "1h"];
    let broker = ChildBroker::spawn_env(&disk.data_dir(), &args, &[SEGMENT]);
    let publish = |sequence: u64| {
        ReqOp::Publish(v1::Publish {
            tasks: vec![spec("numbered", &format!("task {sequence}"))],
            producer_id: "producer-1".into(),
            sequence,
        })
    };
    let published = |answer: response::Result| match answer {
        response::Result::Publish(ok) => (ok.tasks[0].task_id, ok.tasks[0].duplicate),
        other => panic!("unexpected publish answer {other:?}"),
    };
    let mut wire = Wire::hello(broker.addr).await;
    let (first, dup) = published(wire.call(publish(1)).await.expect("confirmed"));
    assert!(!dup);

    disk.fs().fail(Op::Write, "journal/", libc::ENOSPC, 0);
    let refused = wire
        .call(publish(2))
        .await
        .expect_err("the journal cannot write");
    assert_eq!(refused.code, ErrorCode::Storage, "{refused:?}");
    assert!(
        disk.fs().stats().injected > 0,
        "the injected fault refused it"
    );
    disk.fs().clear_faults();

    // The broker resumes by itself; the same publish sent again is stored, as new.
    let deadline = Instant::now() + Duration::from_secs(30);
    let (second, dup) = loop {
        match wire.call(publish(2)).await {
            Ok(answer) => break published(answer),
            Err(e) if e.code == ErrorCode::Storage && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("not resumed: {e:?}"),
        }
    };
    assert!(
        !dup,
        "the refused attempt was never stored, yet its retry was answered as a duplicate of task {second}"
    );
    assert_ne!(second, first);
    let (again, dup) = published(wire.call(publish(2)).await.expect("confirmed"));
    assert_eq!((again, dup), (second, true), "a repeat of a stored publish");

    // Both tasks are there to be delivered, and nothing else.
    let mut consumer = Wire::hello(broker.addr).await;
    consumer.subscribe("numbered", 8).await;
    let mut delivered = vec![
        consumer.delivery().await.task_id,
        consumer.delivery().await.task_id,
    ];
    delivered.sort_unstable();
    assert_eq!(delivered, vec![first, second]);
    assert!(consumer
        .try_delivery(Duration::from_millis(300))
        .await
        .is_none());
    drop((wire, consumer));
    assert!(broker.terminate().success());

    // After a restart the number is still remembered.
    let broker = ChildBroker::spawn_env(&disk.data_dir(), &args, &[SEGMENT]);
    let mut wire = Wire::hello(broker.addr).await;
    let (again, dup) = published(wire.call(publish(2)).await.expect("confirmed"));
    assert_eq!((again, dup), (second, true));
    drop(wire);
    assert!(broker.terminate().success());
}
