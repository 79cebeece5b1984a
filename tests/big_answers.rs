//! Issue 19, fault 5: answers larger than any client reads. Queue lists come in pages
//! (the client and `squall queues` follow them), peeked tasks carry a payload preview
//! (the whole payload is a separate `GetPayload`), admin answers are counted against
//! the connection's unsent budget, and no answer is ever a frame above the frame limit.
//! Before the fix three 4 MiB tasks made `squall peek` exit 69 ("frame of 12583015
//! bytes exceeds 8454144"), 35,000 queues with 200-character names did the same to
//! `squall queues`, and 10 connections asking for such peeks without reading added
//! 727 MiB to the broker.

mod common;

use std::process::Command;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use common::{spec, temp_data_dir, ChildBroker, TestBroker, Wire};
use squall_proto::v1::{self, request::Op, response};
use squall_proto::{decode_frame, encode_frame, ErrorCode, PROTOCOL_VERSION};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const MIB: usize = 1024 * 1024;
const BIG: usize = 4 * MIB;

fn squall(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_squall"))
        .args(args)
        .output()
        .expect("run squall")
}

fn big_task(queue: &str, fill: u8) -> v1::TaskSpec {
    v1::TaskSpec {
        queue: queue.into(),
        payload: Bytes::from(vec![fill; BIG]),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_4_mib_tasks_then_squall_peek_works() {
    let broker = TestBroker::start().await;
    let mut w = Wire::hello(broker.addr).await;
    for fill in [b'a', b'b', b'c'] {
        w.publish_spec(vec![big_task("big", fill)])
            .await
            .expect("publish 4 MiB");
    }
    let addr = broker.addr.to_string();
    let out = squall(&["peek", "big", "--server", &addr]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "squall peek: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(text.lines().count(), 4, "a header and three tasks:\n{text}");

    let out = squall(&["peek", "big", "--json", "--server", &addr]);
    assert!(out.status.success());
    let rows: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(rows.len(), 3);
    for row in &rows {
        assert_eq!(row["payload_bytes"], BIG, "{row}");
        assert_eq!(row["truncated"], true);
        assert_eq!(row["payload"].as_str().unwrap().len(), 1024, "the preview");
    }

    // The whole payloads, one bounded request each.
    let out = squall(&["peek", "big", "--json", "--full", "--server", &addr]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    let full: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    for (row, fill) in full.iter().zip(["a", "b", "c"]) {
        assert_eq!(row["payload"].as_str().unwrap(), fill.repeat(BIG));
        assert!(row.get("truncated").is_none());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thirty_five_thousand_long_queue_names_then_squall_queues_works() {
    const QUEUES: usize = 35_000;
    let broker = TestBroker::start().await;
    let name = |i: usize| format!("{i:0>200}");
    let mut w = Wire::hello(broker.addr).await;
    for start in (0..QUEUES).step_by(1000) {
        let tasks = (start..start + 1000).map(|i| spec(&name(i), "x")).collect();
        w.publish_spec(tasks).await.expect("publish");
    }
    // The first page stops at its limit and says more follow.
    let page = w
        .call(Op::ListQueues(v1::ListQueues {
            after: String::new(),
            limit: 0,
        }))
        .await;
    match page {
        Ok(response::Result::Queues(list)) => {
            assert_eq!(list.queues.len(), 1000);
            assert!(list.more);
        }
        other => panic!("{other:?}"),
    }

    let addr = broker.addr.to_string();
    let out = squall(&["queues", "--json", "--server", &addr]);
    assert!(
        out.status.success(),
        "squall queues: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let list: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).expect("a JSON list");
    let names: Vec<String> = list
        .iter()
        .map(|v| v["name"].as_str().unwrap().to_owned())
        .collect();
    let expected: Vec<String> = (0..QUEUES).map(name).collect();
    assert_eq!(names, expected, "every queue once, in order");
    let out = squall(&["queues", "--server", &addr]);
    assert!(out.status.success());
}

/// Every frame the broker sends on `stream` until it has answered `answers` requests,
/// checked against `max_frame`.
async fn answers_within(
    stream: &mut TcpStream,
    answers: usize,
    max_frame: usize,
) -> Vec<v1::Response> {
    let mut buf = BytesMut::new();
    let mut got = Vec::new();
    while got.len() < answers {
        match decode_frame::<v1::ServerMessage>(&mut buf, max_frame) {
            Ok(Some(m)) => match m.kind {
                Some(v1::server_message::Kind::Response(r)) => got.push(r),
                other => panic!("{other:?}"),
            },
            Ok(None) => {
                let n = tokio::time::timeout(Duration::from_secs(30), stream.read_buf(&mut buf))
                    .await
                    .expect("an answer in time")
                    .expect("read");
                assert!(n > 0, "closed");
            }
            Err(e) => panic!("a frame above the limit of {max_frame}: {e}"),
        }
    }
    got
}

async fn hello(addr: std::net::SocketAddr) -> TcpStream {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let mut buf = BytesMut::new();
    let hello = Op::Hello(v1::Hello {
        protocol_version: PROTOCOL_VERSION,
        client_name: "big-answers".into(),
        token: String::new(),
    });
    encode_frame(
        &v1::Request {
            id: 1,
            op: Some(hello),
        },
        &mut buf,
    );
    s.write_all(&buf).await.unwrap();
    answers_within(&mut s, 1, 64 * 1024).await;
    s
}

/// The worst case: tasks stored under a large frame limit, read back under a small
/// one. Peeks fit by previews and by stopping early; a whole payload that cannot fit
/// is refused with ANSWER_TOO_LARGE instead of being sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_answer_is_a_frame_above_the_limit() {
    let (_dir, path) = temp_data_dir();
    let broker = ChildBroker::spawn(&path, &[]);
    let mut w = Wire::hello(broker.addr).await;
    let mut headers = std::collections::BTreeMap::new();
    headers.insert("h".to_owned(), Bytes::from(vec![b'h'; 100 * 1024]));
    for _ in 0..40 {
        let task = v1::TaskSpec {
            headers: headers.clone(),
            payload: Bytes::from(vec![b'p'; 100 * 1024]),
            ..spec("worst", "")
        };
        w.publish_spec(vec![task]).await.expect("publish");
    }
    drop(w);
    let status = broker.terminate();
    assert!(status.success());

    const SMALL: usize = 128 * 1024;
    let broker = ChildBroker::spawn(
        &path,
        &[
            "--max-frame-bytes",
            "128 KiB",
            "--max-payload-bytes",
            "64 KiB",
        ],
    );
    let mut s = hello(broker.addr).await;
    let mut buf = BytesMut::new();
    let requests = [
        Op::Peek(v1::Peek {
            queue: "worst".into(),
            limit: 1000,
            preview_bytes: 64 * 1024,
            ..Default::default()
        }),
        Op::Peek(v1::Peek {
            queue: "worst".into(),
            limit: 1000,
            ..Default::default()
        }),
        Op::ListQueues(v1::ListQueues::default()),
    ];
    for (i, op) in requests.into_iter().enumerate() {
        encode_frame(
            &v1::Request {
                id: 10 + i as u64,
                op: Some(op),
            },
            &mut buf,
        );
    }
    s.write_all(&buf).await.unwrap();
    let got = answers_within(&mut s, 3, SMALL).await;
    let result = |id: u64| {
        got.iter()
            .find(|r| r.id == id)
            .and_then(|r| r.result.clone())
            .expect("answered")
    };
    match result(10) {
        response::Result::Peek(p) => {
            assert!(
                !p.tasks.is_empty() && p.tasks.len() < 40,
                "{}",
                p.tasks.len()
            );
            assert!(p.more, "the peek stopped early and says so");
            assert!(p.tasks.iter().all(|t| t.truncated && t.headers.is_empty()));
        }
        other => panic!("{other:?}"),
    }
    let first = match result(11) {
        response::Result::Peek(p) => {
            assert_eq!(p.tasks.len(), 40);
            assert!(!p.more);
            p.tasks[0].task_id
        }
        other => panic!("{other:?}"),
    };
    assert!(matches!(result(12), response::Result::Queues(_)));
    // The whole task (200 KiB) cannot be one 128 KiB frame: refused, not sent.
    let mut buf = BytesMut::new();
    let op = Op::GetPayload(v1::GetPayload { task_id: first });
    encode_frame(
        &v1::Request {
            id: 20,
            op: Some(op),
        },
        &mut buf,
    );
    s.write_all(&buf).await.unwrap();
    let got = answers_within(&mut s, 1, SMALL).await;
    match &got[0].result {
        Some(response::Result::Error(e)) => {
            assert_eq!(e.code, ErrorCode::AnswerTooLarge as i32, "{e:?}")
        }
        other => panic!("{other:?}"),
    }
}

/// Connections that ask for big peeks and read nothing: each answer is small, and the
/// answers waiting to be built count against the connection's unsent budget (1 MiB
/// here), so the broker holds about that much per connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_reading_connections_asking_for_big_peeks_do_not_grow_the_broker() {
    const CONNECTIONS: usize = 10;
    const PEEKS: u64 = 200;
    let (_dir, path) = temp_data_dir();
    let broker = ChildBroker::spawn(&path, &["--fsync", "never", "--max-unsent-bytes", "1 MiB"]);
    let mut w = Wire::hello(broker.addr).await;
    for fill in [b'a', b'b', b'c'] {
        w.publish_spec(vec![big_task("big", fill)])
            .await
            .expect("publish 4 MiB");
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = broker.rss_bytes();
    let mut conns = Vec::new();
    for _ in 0..CONNECTIONS {
        let mut s = hello(broker.addr).await;
        let mut buf = BytesMut::new();
        for id in 2..2 + PEEKS {
            let peek = Op::Peek(v1::Peek {
                queue: "big".into(),
                limit: 3,
                // As much as the broker shows (before the fix: everything).
                preview_bytes: u32::MAX,
                ..Default::default()
            });
            encode_frame(&v1::Request { id, op: Some(peek) }, &mut buf);
        }
        // Written without reading anything back; the broker may stop reading.
        let _ = tokio::time::timeout(Duration::from_secs(2), s.write_all(&buf)).await;
        conns.push(s);
    }
    // The peak over a few seconds: the broker reads and encodes at its own pace.
    let mut during = 0;
    for _ in 0..24 {
        tokio::time::sleep(Duration::from_millis(250)).await;
        during = during.max(broker.rss_bytes());
    }
    let growth = during.saturating_sub(before) as usize;
    eprintln!(
        "broker RSS {} MiB before, {} MiB with {CONNECTIONS} connections not reading {PEEKS} peeks each",
        before / MIB as u64,
        during / MIB as u64
    );
    assert!(growth < 40 * MIB, "RSS grew by {} MiB", growth / MIB);
    drop(conns);
}
