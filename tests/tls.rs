//! TLS on the protocol port with certificates generated in the test (rcgen): the Rust
//! client and the CLI trust a CA file; a plain-TCP client, a client trusting another
//! CA and a certificate for another name are refused; bad TLS settings stop the broker
//! with exit 64.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::pki::pki;
use common::{ChildBroker, TestBroker};

async fn tls_broker(dir: &Path, names: &[&str]) -> (TestBroker, PathBuf) {
    let (ca, cert, key) = pki(dir, names);
    let broker = TestBroker::start_with(|c| {
        c.tls.cert = Some(cert);
        c.tls.key = Some(key);
    })
    .await;
    (broker, ca)
}

#[tokio::test]
async fn the_client_publishes_and_consumes_over_tls() {
    let dir = tempfile::tempdir().unwrap();
    let (broker, ca) = tls_broker(dir.path(), &["localhost", "127.0.0.1"]).await;
    for addr in [
        broker.addr.to_string(),
        format!("localhost:{}", broker.addr.port()),
    ] {
        let client = squall_client::Client::builder()
            .tls_ca_file(&ca)
            .connect(&addr)
            .await
            .unwrap_or_else(|e| panic!("{addr}: {e}"));
        let big = vec![7u8; 1 << 20];
        let id = client.publish("secure", big.clone()).await.unwrap().id;
        let mut sub = client.subscribe("secure").prefetch(4).await.unwrap();
        let d = tokio::time::timeout(Duration::from_secs(10), sub.recv())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!((d.id(), d.payload().len()), (id, big.len()));
        d.ack().await.unwrap();
        client.close().await;
    }
}

#[tokio::test]
async fn plain_clients_wrong_cas_and_wrong_names_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (broker, _ca) = tls_broker(dir.path(), &["broker.example"]).await;
    let quick = || squall_client::Client::builder().connect_timeout(Duration::from_secs(3));
    // Plain TCP to a TLS port: no answer to Hello, the connection closes.
    assert!(quick().connect(broker.addr).await.is_err());
    // A CA that did not sign the certificate.
    let other = tempfile::tempdir().unwrap();
    let (other_ca, _, _) = pki(other.path(), &["broker.example"]);
    let err = quick()
        .tls_ca_file(&other_ca)
        .tls("broker.example")
        .connect(broker.addr)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("TLS"), "{err}");
    // The right CA, but the certificate does not name 127.0.0.1...
    let ca = dir.path().join("ca.pem");
    let err = quick()
        .tls_ca_file(&ca)
        .connect(broker.addr)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("TLS"), "{err}");
    // ...unless the client verifies the name the certificate carries.
    let client = quick()
        .tls_ca_file(&ca)
        .tls("broker.example")
        .connect(broker.addr)
        .await
        .unwrap();
    client.publish("q", "ok").await.unwrap();
}

#[tokio::test]
async fn a_silent_tls_connection_is_closed_at_the_handshake_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let (ca, cert, key) = pki(dir.path(), &["127.0.0.1"]);
    let broker = TestBroker::start_with(|c| {
        c.tls.cert = Some(cert);
        c.tls.key = Some(key);
        c.handshake_timeout = Duration::from_millis(300);
    })
    .await;
    let mut raw = tokio::net::TcpStream::connect(broker.addr).await.unwrap();
    let mut buf = [0u8; 16];
    let n = tokio::time::timeout(
        Duration::from_secs(5),
        tokio::io::AsyncReadExt::read(&mut raw, &mut buf),
    )
    .await
    .expect("closed by the broker");
    assert_eq!(n.unwrap_or(0), 0);
    // A proper client is unaffected.
    let client = squall_client::Client::builder()
        .tls_ca_file(&ca)
        .connect(broker.addr)
        .await
        .unwrap();
    client.publish("q", "ok").await.unwrap();
}

fn squall(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_squall"))
        .args(args)
        .env_remove("SQUALL_TLS_CA")
        .env_remove("SQUALL_TOKEN")
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn the_cli_talks_tls_with_tls_ca_and_bad_settings_exit_64() {
    let dir = tempfile::tempdir().unwrap();
    let (ca, cert, key) = pki(dir.path(), &["127.0.0.1"]);
    let (cert, key, ca) = (
        cert.to_str().unwrap(),
        key.to_str().unwrap(),
        ca.to_str().unwrap(),
    );
    let broker = ChildBroker::spawn(
        &dir.path().join("data"),
        &["--tls-cert", cert, "--tls-key", key],
    );
    let server = broker.addr.to_string();
    let (code, out, err) = squall(&["publish", "jobs", "hi", "--server", &server, "--tls-ca", ca]);
    assert_eq!(code, 0, "{err}");
    assert!(!out.trim().is_empty());
    let (code, out, err) = squall(&[
        "consume", "jobs", "--count", "1", "--server", &server, "--tls-ca", ca,
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("hi"), "{out}");
    let (code, _, err) = squall(&[
        "queues",
        "--server",
        &server,
        "--tls-ca",
        "/nonexistent.pem",
    ]);
    assert_eq!(code, 64, "{err}");
    drop(broker);

    // The broker refuses bad TLS settings before binding anything.
    let data = dir.path().join("data2");
    let data = data.to_str().unwrap();
    for (args, key_name) in [
        (vec!["--tls-cert", cert], "tls.key"),
        (
            vec!["--tls-cert", "/nonexistent.pem", "--tls-key", key],
            "tls.cert",
        ),
        (vec!["--tls-cert", cert, "--tls-key", cert], "tls.key"),
    ] {
        let mut all = vec![
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--http",
            "off",
            "--data-dir",
            data,
        ];
        all.extend(args);
        let (code, _, err) = squall(&all);
        assert_eq!(code, 64, "{err}");
        assert!(err.contains(key_name), "{key_name}: {err}");
    }
}
