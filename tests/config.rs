//! `squall serve` configuration end to end: the TOML file, `SQUALL_*` variables and
//! flags in that order of precedence (observed through the limits the broker
//! announces), and invalid configuration exiting 64 naming the key before any port is
//! bound.

mod common;

use std::net::TcpListener;
use std::path::Path;
use std::process::{Command, Stdio};

use common::{temp_data_dir, ChildBroker};
use squall_client::Client;

/// A port that was free a moment ago.
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn write(path: &Path, text: &str) {
    std::fs::write(path, text).expect("write config");
}

#[tokio::test]
async fn flags_beat_env_beat_file() {
    let (dir, data) = temp_data_dir();
    let file = dir.path().join("squall.toml");
    write(
        &file,
        "max_batch = 7\nmax_prefetch = 22\nnode_id = \"from-file\"\n[queue]\nlease = \"3s\"\n",
    );
    let broker = ChildBroker::spawn_env(
        &data,
        &["--config", file.to_str().unwrap(), "--node-id", "from-flag"],
        &[
            ("SQUALL_MAX_PREFETCH", "33"),
            ("SQUALL_NODE_ID", "from-env"),
        ],
    );
    let c = Client::connect(broker.addr).await.unwrap();
    let info = c.server_info();
    assert_eq!(info.limits.max_batch, 7, "file over default");
    assert_eq!(info.limits.max_prefetch, 33, "env over file");
    assert_eq!(info.node_id, "from-flag", "flag over env");
    c.publish("q", "x").await.unwrap();
    let q = c.queue("q").await.unwrap();
    assert_eq!(q.config.lease.as_millis(), 3_000, "[queue] defaults apply");
    c.close().await;
    assert!(broker.terminate().success());
}

#[test]
fn the_shipped_file_starts_a_broker() {
    let (_dir, data) = temp_data_dir();
    let file = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/squall.toml");
    let broker = ChildBroker::spawn(&data, &["--config", file]);
    assert!(broker.http.is_some());
    assert!(broker.terminate().success());
}

/// Runs `squall serve` expecting it to refuse its configuration: exit 64, the key
/// named on standard error, neither port bound.
fn refuses(args: &[&str], env: &[(&str, &str)], key: &str) {
    let (listen, http) = (free_port(), free_port());
    let (listen_s, http_s) = (format!("127.0.0.1:{listen}"), format!("127.0.0.1:{http}"));
    let (_dir, data) = temp_data_dir();
    let out = Command::new(env!("CARGO_BIN_EXE_squall"))
        .args(["serve", "--listen", &listen_s, "--http", &http_s])
        .arg("--data-dir")
        .arg(&data)
        .args(args)
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .output()
        .expect("run squall");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(64), "{args:?} {env:?}: {stderr}");
    assert!(
        stderr.contains(&format!("`{key}`")),
        "{key} not named: {stderr}"
    );
    assert!(
        !stderr.contains("listening on") && !stderr.contains("health checks at"),
        "a port was bound: {stderr}"
    );
    assert!(!data.exists(), "the data directory was opened");
    // Nothing holds the ports: we can bind both.
    TcpListener::bind(&listen_s).expect("protocol port free");
    TcpListener::bind(&http_s).expect("http port free");
}

#[test]
fn invalid_configuration_exits_64_naming_the_key_before_binding() {
    let dir = tempfile::tempdir().unwrap();
    let file = |name: &str, text: &str| {
        let p = dir.path().join(name);
        write(&p, text);
        p.to_str().unwrap().to_owned()
    };
    let unknown = file("unknown.toml", "max_batch = 10\nmax_bach = 3\n");
    refuses(&["--config", &unknown], &[], "max_bach");
    let bad_value = file("bad.toml", "[queue]\nlease = \"soon\"\n");
    refuses(&["--config", &bad_value], &[], "queue.lease");
    let inconsistent = file(
        "inconsistent.toml",
        "[queue]\nbackoff_min = \"10m\"\nbackoff_max = \"1m\"\n",
    );
    refuses(&["--config", &inconsistent], &[], "queue.backoff_min");
    refuses(&["--config", "/nonexistent/squall.toml"], &[], "config");
    refuses(&[], &[("SQUALL_MAX_BATCH", "lots")], "max_batch");
    refuses(&["--max-payload-bytes", "64 MiB"], &[], "max_payload_bytes");
    refuses(&["--queue-backoff", "5m"], &[], "queue.backoff_min");
    // A bad flag beats a good file, and is named.
    let good = file("good.toml", "max_batch = 10\n");
    refuses(&["--config", &good, "--max-batch", "x"], &[], "max_batch");
}
