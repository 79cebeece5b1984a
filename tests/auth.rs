//! Authentication and authorisation end to end: tokens in the configuration (hashed),
//! UNAUTHENTICATED at Hello, FORBIDDEN per request by role and queue prefix, the Rust
//! client and the CLI with `--token`, and `squall token hash`.

mod common;

use std::io::Write;
use std::process::{Command, Stdio};

use common::{spec, ChildBroker, TestBroker, Wire};
use squall::auth::{Role, TokenEntry, TokenHash};
use squall::config::ServerConfig;
use squall_proto::v1::{self, request::Op, response};
use squall_proto::{ErrorCode, PROTOCOL_VERSION};

fn token(name: &str, secret: &str, role: Role, queues: &[&str]) -> TokenEntry {
    TokenEntry {
        name: name.into(),
        hash: TokenHash::new(secret),
        role,
        queues: queues.iter().map(|q| q.to_string()).collect(),
    }
}

fn secured(c: &mut ServerConfig) {
    c.auth.tokens = vec![
        token("prod", "p-secret", Role::Producer, &[]),
        token("cons", "c-secret", Role::Consumer, &[]),
        token("boss", "a-secret", Role::Admin, &[]),
        token("billing", "b-secret", Role::Producer, &["billing."]),
        token("billing-admin", "ba-secret", Role::Admin, &["billing."]),
    ];
}

async fn hello_with(
    broker: &TestBroker,
    secret: &str,
) -> (Wire, Result<response::Result, common::WireError>) {
    let mut w = Wire::connect(broker.addr).await;
    let r = w
        .call(Op::Hello(v1::Hello {
            protocol_version: PROTOCOL_VERSION,
            client_name: "auth-test".into(),
            token: secret.into(),
        }))
        .await;
    (w, r)
}

async fn login(broker: &TestBroker, secret: &str) -> Wire {
    let (w, r) = hello_with(broker, secret).await;
    assert!(matches!(r, Ok(response::Result::Hello(_))), "{r:?}");
    w
}

fn forbidden<T: std::fmt::Debug>(r: Result<T, common::WireError>) {
    match r {
        Err(e) => assert_eq!(e.code, ErrorCode::Forbidden, "{e:?}"),
        Ok(v) => panic!("allowed: {v:?}"),
    }
}

#[tokio::test]
async fn hello_without_a_valid_token_is_unauthenticated_and_closed() {
    let broker = TestBroker::start_with(secured).await;
    for bad in ["", "p-secret ", "nope", "sha256"] {
        let (mut w, r) = hello_with(&broker, bad).await;
        let e = r.unwrap_err();
        assert_eq!(e.code, ErrorCode::Unauthenticated, "{bad:?}: {e:?}");
        assert!(!e.message.contains("secret"), "{e:?}");
        assert!(w.closed_by_peer().await, "{bad:?}");
    }
    let mut w = login(&broker, "p-secret").await;
    w.publish("jobs", "ok").await;
}

#[tokio::test]
async fn roles_allow_their_operations_and_refuse_the_rest_with_forbidden() {
    let broker = TestBroker::start_with(secured).await;
    let mut producer = login(&broker, "p-secret").await;
    let mut consumer = login(&broker, "c-secret").await;
    let mut admin = login(&broker, "a-secret").await;

    let id = producer.publish("jobs", "one").await;
    forbidden(
        producer
            .call(Op::Subscribe(v1::Subscribe {
                queue: "jobs".into(),
                prefetch: 1,
            }))
            .await,
    );
    forbidden(
        producer
            .call(Op::ListQueues(v1::ListQueues::default()))
            .await,
    );
    // Still open and usable after a refusal; status is allowed.
    assert!(matches!(
        producer
            .call(Op::GetTask(v1::GetTask { task_id: id }))
            .await,
        Ok(response::Result::Task(_))
    ));

    forbidden(consumer.publish_spec(vec![spec("jobs", "no")]).await);
    forbidden(
        consumer
            .call(Op::Purge(v1::Purge {
                queue: "jobs".into(),
                ..Default::default()
            }))
            .await,
    );
    consumer.subscribe("jobs", 1).await;
    let d = consumer.delivery().await;
    assert_eq!(d.task_id, id);
    consumer.ack(&d).await.unwrap();

    assert!(matches!(
        admin.call(Op::ListQueues(v1::ListQueues::default())).await,
        Ok(response::Result::Queues(_))
    ));
    admin.publish("jobs", "admin may publish").await;
    admin.subscribe("jobs", 1).await;
}

#[tokio::test]
async fn queue_prefixes_limit_every_queue_a_token_names() {
    let broker = TestBroker::start_with(secured).await;
    let mut billing = login(&broker, "b-secret").await;
    let mut admin = login(&broker, "a-secret").await;
    billing.publish("billing.invoices", "ok").await;
    forbidden(billing.publish_spec(vec![spec("hr.payroll", "no")]).await);
    // One task outside the prefixes refuses the whole batch.
    forbidden(
        billing
            .publish_spec(vec![spec("billing.invoices", "a"), spec("hr.payroll", "b")])
            .await,
    );
    // A task in another queue looks unknown to a limited token.
    let other = admin.publish("hr.payroll", "secret salary").await;
    match billing
        .call(Op::GetTask(v1::GetTask { task_id: other }))
        .await
    {
        Ok(response::Result::Task(info)) => {
            assert_eq!(info.state, v1::TaskState::Unknown as i32, "{info:?}");
            assert!(info.queue.is_empty());
        }
        other => panic!("{other:?}"),
    }
    let mut billing_admin = login(&broker, "ba-secret").await;
    forbidden(
        billing_admin
            .call(Op::ListQueues(v1::ListQueues::default()))
            .await,
    );
    forbidden(
        billing_admin
            .call(Op::DeleteQueue(v1::DeleteQueue {
                queue: "hr.payroll".into(),
            }))
            .await,
    );
    assert!(matches!(
        billing_admin
            .call(Op::GetQueue(v1::GetQueue {
                queue: "billing.invoices".into()
            }))
            .await,
        Ok(response::Result::Queue(_))
    ));
    // Nothing of the refused batches was stored.
    match admin
        .call(Op::GetQueue(v1::GetQueue {
            queue: "billing.invoices".into(),
        }))
        .await
    {
        Ok(response::Result::Queue(q)) => assert_eq!(q.ready, 1, "{q:?}"),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn the_rust_client_presents_its_token() {
    let broker = TestBroker::start_with(secured).await;
    let err = squall_client::Client::connect(broker.addr)
        .await
        .unwrap_err();
    assert_eq!(
        err.code(),
        Some(squall_client::ErrorCode::Unauthenticated),
        "{err}"
    );
    let client = squall_client::Client::builder()
        .token("p-secret")
        .connect(broker.addr)
        .await
        .unwrap();
    client.publish("jobs", "hello").await.unwrap();
    let err = client.queues().await.unwrap_err();
    assert_eq!(
        err.code(),
        Some(squall_client::ErrorCode::Forbidden),
        "{err}"
    );
}

fn squall(args: &[&str], env: &[(&str, &str)], stdin: &str) -> (i32, String, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_squall"))
        .args(args)
        .env_remove("SQUALL_TOKEN")
        .envs(env.iter().copied())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run squall");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn token_hash_prints_an_entry_the_broker_accepts_and_the_cli_uses_the_token() {
    let dir = tempfile::tempdir().unwrap();
    let (code, entry, err) = squall(
        &["token", "hash", "--name", "ops", "--role", "admin"],
        &[],
        "correct horse battery staple\n",
    );
    assert_eq!(code, 0, "{err}");
    assert!(entry.contains("[[auth.tokens]]") && entry.contains("role = \"admin\""));
    assert!(!entry.contains("horse"), "{entry}");
    let config = dir.path().join("squall.toml");
    std::fs::write(&config, &entry).unwrap();
    let broker = ChildBroker::spawn(
        &dir.path().join("data"),
        &["--config", config.to_str().unwrap()],
    );
    let server = broker.addr.to_string();
    let (code, _, err) = squall(&["queues", "--server", &server], &[], "");
    assert_eq!(code, 77, "no token: {err}");
    assert!(err.contains("token"), "{err}");
    let (code, _, err) = squall(
        &["publish", "jobs", "x", "--server", &server],
        &[("SQUALL_TOKEN", "correct horse battery staple")],
        "",
    );
    assert_eq!(code, 0, "{err}");
    let (code, out, err) = squall(
        &[
            "queues",
            "--server",
            &server,
            "--token",
            "correct horse battery staple",
        ],
        &[],
        "",
    );
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("jobs"), "{out}");
    // A bad role is a usage error.
    let (code, _, _) = squall(&["token", "hash", "--role", "root", "x"], &[], "");
    assert_eq!(code, 64);
}
