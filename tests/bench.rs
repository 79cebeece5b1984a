//! `squall bench` end to end: the binary spawns its own broker on a temporary directory,
//! drives it, verifies every message id and prints its report. Small runs only: these
//! check that the load generator counts correctly, not how fast anything is (the
//! numbers live in BENCHMARKS.md, measured by `benches/compare.sh`).

mod common;

use std::process::Command;

use common::ChildBroker;

fn bench(args: &[&str]) -> serde_json::Value {
    let out = Command::new(env!("CARGO_BIN_EXE_squall"))
        .arg("bench")
        .args(["--spawn", "--json", "--size", "64"])
        .args(args)
        .output()
        .expect("run squall bench");
    assert!(
        out.status.success(),
        "squall bench failed: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("the report is JSON")
}

#[test]
fn a_spawned_run_confirms_and_delivers_every_message_once() {
    let r = bench(&[
        "--messages",
        "3000",
        "--producers",
        "2",
        "--consumers",
        "2",
        "--window",
        "16",
        "--batch",
        "4",
    ]);
    assert_eq!(r["confirmed"], 3000, "{r}");
    assert_eq!(r["delivered"], 3000, "{r}");
    assert_eq!(r["lost"], 0, "{r}");
    assert_eq!(r["duplicates"], 0, "{r}");
    assert_eq!(r["end_to_end"]["samples"], 3000, "{r}");
    assert!(r["msgs_per_s"].as_f64().unwrap() > 0.0, "{r}");
    assert!(
        r["broker_cpu_s"].as_f64().is_some(),
        "the spawned broker's CPU time: {r}"
    );
}

#[test]
fn a_fixed_rate_run_keeps_its_schedule_and_measures_every_message() {
    // 400 messages at 2,000/s take about 0.2 s when the schedule is kept.
    let r = bench(&["--messages", "400", "--rate", "2000"]);
    assert_eq!(r["rate"], 2000, "{r}");
    assert_eq!(r["lost"], 0, "{r}");
    assert_eq!(r["end_to_end"]["samples"], 400, "{r}");
    assert_eq!(r["publish_confirm"]["samples"], 400, "{r}");
    let elapsed = r["elapsed_s"].as_f64().unwrap();
    assert!(
        elapsed >= 0.19,
        "sent faster than the schedule: {elapsed} s"
    );
    // Latency counts from the scheduled time, so it is never negative or zero-clamped
    // for all samples (a wrong clock base once made end-to-end read 1 µs).
    assert!(r["end_to_end"]["p50_us"].as_u64().unwrap() > 1, "{r}");
}

#[test]
fn a_run_against_a_broker_started_elsewhere_reports_its_cpu_given_its_pid() {
    let dir = tempfile::tempdir().unwrap();
    let broker = ChildBroker::spawn(dir.path(), &[]);
    let run = |pid: Option<u32>| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_squall"));
        cmd.arg("bench")
            .args(["--json", "--size", "64", "--messages", "2000"])
            .args(["--server", &broker.addr.to_string()]);
        if let Some(pid) = pid {
            cmd.args(["--broker-pid", &pid.to_string()]);
        }
        let out = cmd.output().expect("run squall bench");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice::<serde_json::Value>(&out.stdout).expect("the report is JSON")
    };
    let r = run(Some(broker.pid()));
    assert_eq!(r["lost"], 0, "{r}");
    assert!(
        r["broker_cpu_s"].as_f64().is_some_and(|s| s > 0.0),
        "the broker's CPU time over the run: {r}"
    );
    let r = run(None);
    assert!(r["broker_cpu_s"].is_null(), "no pid, no CPU figure: {r}");
}
