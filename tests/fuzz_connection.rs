//! Proptest over arbitrary byte streams sent to a real connection: one in-process
//! broker, and per case a raw TCP connection that (maybe) says Hello, then sends bytes
//! biased towards plausible traffic (well-formed requests, random bodies behind correct
//! length prefixes, random and oversized lengths, truncated frames, raw noise), then
//! half-closes. The broker must answer only with well-formed frames and close the
//! connection; afterwards a normal client still publishes and consumes, and the tasks
//! published before the fuzzing are all still there, never delivered.
//!
//! `SQUALL_FUZZ_CASES=1000 cargo test --test fuzz_connection` runs a longer search.

mod common;

use std::cell::RefCell;
use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use common::{spec, TestBroker, Wire, WAIT};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use squall_proto::v1::{self, request::Op, server_message::Kind};
use squall_proto::{decode_frame, encode_frame, ErrorCode, PROTOCOL_VERSION};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The queue whose tasks must survive the fuzzing untouched. The fuzzer's queue names
/// never match it, so nothing it sends can lease these tasks.
const KEEP: &str = "keep";
const MAX_FRAME: usize = 4096;

/// One piece of a fuzzed byte stream.
#[derive(Debug, Clone)]
enum Piece {
    /// A well-formed frame of a (possibly nonsensical) request.
    Frame(v1::Request),
    /// A correct length prefix in front of random bytes.
    Body(Vec<u8>),
    /// Any length prefix, then a few bytes.
    Length(u32, Vec<u8>),
    /// A well-formed frame cut short.
    Truncated(v1::Request, usize),
    /// Noise.
    Raw(Vec<u8>),
}

#[derive(Debug, Clone)]
struct Stream {
    hello: bool,
    pieces: Vec<Piece>,
}

fn queue_name() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => Just("fz".to_owned()),
        2 => Just("fz.b:c-d_e".to_owned()),
        4 => "[a-z0-9]{1,3}".prop_map(|s| format!("fz-{s}")),
        1 => Just(String::new()),
        1 => Just("has space".to_owned()),
        1 => Just("é".to_owned()),
        1 => Just("x".repeat(201)),
    ]
}

fn task_spec() -> impl Strategy<Value = v1::TaskSpec> {
    (
        queue_name(),
        prop::collection::vec(any::<u8>(), 0..48),
        any::<i32>(),
        prop_oneof![Just(0u64), Just(10), any::<u64>()],
        prop_oneof![Just(0u32), 1..4u32, any::<u32>()],
        prop_oneof![6 => Just(0u64), 1 => Just(100), 1 => any::<u64>()],
        prop_oneof![8 => Just(String::new()), 1 => "[a-z]{1,4}"],
    )
        .prop_map(
            |(queue, payload, priority, delay_ms, max_attempts, lease_ms, key)| v1::TaskSpec {
                queue,
                payload: Bytes::from(payload),
                priority,
                delay_ms,
                max_attempts,
                lease_ms,
                idempotency_key: key,
                ..Default::default()
            },
        )
}

fn request() -> impl Strategy<Value = v1::Request> {
    let op = prop_oneof![
        1 => (prop_oneof![Just(PROTOCOL_VERSION), any::<u32>()], "[a-z]{0,6}").prop_map(
            |(protocol_version, client_name)| Op::Hello(v1::Hello {
                protocol_version,
                client_name,
                token: String::new(),
            })
        ),
        3 => prop::collection::vec(task_spec(), 0..3)
            .prop_map(|tasks| Op::Publish(v1::Publish {
                tasks,
                ..Default::default()
            })),
        2 => (queue_name(), prop_oneof![1 => Just(0u32), 4 => 1..4u32, 1 => any::<u32>()])
            .prop_map(|(queue, prefetch)| Op::Subscribe(v1::Subscribe { queue, prefetch })),
        1 => any::<u64>().prop_map(|subscription_id| Op::Unsubscribe(v1::Unsubscribe {
            subscription_id
        })),
        1 => (any::<u64>(), any::<u64>()).prop_map(|(task_id, lease_token)| Op::Ack(v1::Ack {
            task_id,
            lease_token,
            result: Bytes::new(),
        })),
        1 => (any::<u64>(), any::<u64>(), any::<Option<u64>>(), any::<bool>(), ".{0,8}").prop_map(
            |(task_id, lease_token, delay_ms, dead, reason)| Op::Nack(v1::Nack {
                task_id,
                lease_token,
                delay_ms,
                dead,
                reason,
            })
        ),
        1 => (any::<u64>(), any::<u64>(), any::<u64>()).prop_map(
            |(task_id, lease_token, extend_ms)| Op::Extend(v1::Extend {
                task_id,
                lease_token,
                extend_ms,
            })
        ),
        1 => Just(Op::Ping(v1::Ping {})),
    ];
    (any::<u64>(), prop::option::weighted(0.95, op)).prop_map(|(id, op)| v1::Request { id, op })
}

fn piece() -> impl Strategy<Value = Piece> {
    let length = prop_oneof![
        any::<u32>(),
        0..(MAX_FRAME as u32 + 64),
        Just(u32::MAX),
        Just(MAX_FRAME as u32 + 1),
    ];
    prop_oneof![
        8 => request().prop_map(Piece::Frame),
        2 => prop::collection::vec(any::<u8>(), 0..96).prop_map(Piece::Body),
        1 => (length, prop::collection::vec(any::<u8>(), 0..16))
            .prop_map(|(n, tail)| Piece::Length(n, tail)),
        1 => (request(), any::<usize>()).prop_map(|(r, cut)| Piece::Truncated(r, cut)),
        1 => prop::collection::vec(any::<u8>(), 0..64).prop_map(Piece::Raw),
    ]
}

fn stream() -> impl Strategy<Value = Stream> {
    (
        prop::bool::weighted(0.75),
        prop::collection::vec(piece(), 0..10),
    )
        .prop_map(|(hello, pieces)| Stream { hello, pieces })
}

fn encode(stream: &Stream) -> BytesMut {
    let mut out = BytesMut::new();
    if stream.hello {
        let hello = Op::Hello(v1::Hello {
            protocol_version: PROTOCOL_VERSION,
            client_name: "fuzz".into(),
            token: String::new(),
        });
        encode_frame(
            &v1::Request {
                id: 1,
                op: Some(hello),
            },
            &mut out,
        );
    }
    for piece in &stream.pieces {
        match piece {
            Piece::Frame(r) => encode_frame(r, &mut out),
            Piece::Body(body) => {
                out.extend_from_slice(&(body.len() as u32).to_be_bytes());
                out.extend_from_slice(body);
            }
            Piece::Length(n, tail) => {
                out.extend_from_slice(&n.to_be_bytes());
                out.extend_from_slice(tail);
            }
            Piece::Truncated(r, cut) => {
                let mut frame = BytesMut::new();
                encode_frame(r, &mut frame);
                out.extend_from_slice(&frame[..cut % frame.len()]);
            }
            Piece::Raw(bytes) => out.extend_from_slice(bytes),
        }
    }
    out
}

/// Sends one stream, half-closes, and reads until the broker closes. Everything the
/// broker sent must be well-formed frames with known error codes.
async fn send_case(addr: SocketAddr, stream: &Stream) -> Result<(), String> {
    let mut tcp = TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    // The broker may close first (protocol error): later writes then fail, which is
    // fine; what matters is how it behaves.
    let _ = tcp.write_all(&encode(stream)).await;
    let _ = tcp.shutdown().await;
    let mut received = BytesMut::new();
    let read_all = async {
        loop {
            match tcp.read_buf(&mut received).await {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
    };
    if tokio::time::timeout(WAIT, read_all).await.is_err() {
        return Err(format!(
            "the broker kept the connection open {WAIT:?} after EOF"
        ));
    }
    // A reset may cut the last frame short; every complete one must decode.
    loop {
        match decode_frame::<v1::ServerMessage>(&mut received, 64 << 20) {
            Ok(Some(msg)) => check_server_message(&msg)?,
            Ok(None) => break,
            Err(e) => return Err(format!("the broker sent a malformed frame: {e}")),
        }
    }
    Ok(())
}

fn check_server_message(msg: &v1::ServerMessage) -> Result<(), String> {
    match &msg.kind {
        Some(Kind::Response(v1::Response {
            result: Some(v1::response::Result::Error(e)),
            ..
        })) => {
            if ErrorCode::try_from(e.code).is_err() || e.code == 0 {
                return Err(format!("unknown error code in {e:?}"));
            }
            if e.message.is_empty() {
                return Err(format!("an error without a message: {e:?}"));
            }
            Ok(())
        }
        Some(Kind::Response(v1::Response {
            result: Some(_), ..
        })) => Ok(()),
        Some(Kind::Delivery(d)) if d.queue.starts_with("fz") => Ok(()),
        other => Err(format!("unexpected message {other:?}")),
    }
}

fn cases() -> u32 {
    std::env::var("SQUALL_FUZZ_CASES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(256)
}

#[test]
fn arbitrary_byte_streams_leave_the_broker_serving_and_stored_tasks_intact() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let broker = rt.block_on(TestBroker::start_with(|c| {
        c.max_frame_bytes = MAX_FRAME;
        c.max_payload_bytes = 1024;
    }));
    let addr = broker.addr;

    let (kept, control) = rt.block_on(async {
        let mut w = Wire::hello(addr).await;
        let mut kept = BTreeSet::new();
        for i in 0..8 {
            kept.insert(w.publish(KEEP, &format!("kept {i}")).await);
        }
        (kept, RefCell::new(Some(w)))
    });

    let mut runner = TestRunner::new(Config {
        cases: cases(),
        failure_persistence: None,
        ..Config::default()
    });
    let started = std::time::Instant::now();
    let result = runner.run(&stream(), |s| {
        rt.block_on(async {
            send_case(addr, &s).await?;
            // The broker still answers on a connection opened before the case.
            let mut w = control.take().expect("control connection");
            let pong = w.call(Op::Ping(v1::Ping {})).await;
            control.replace(Some(w));
            match pong {
                Ok(v1::response::Result::Pong(_)) => Ok(()),
                other => Err(format!("ping after the case: {other:?}")),
            }
        })
        .map_err(TestCaseError::fail)
    });
    if let Err(e) = result {
        panic!("{e}");
    }
    eprintln!(
        "fuzz_connection: {} cases in {:?}",
        cases(),
        started.elapsed()
    );

    rt.block_on(async {
        let mut w = Wire::hello(addr).await;
        w.subscribe(KEEP, 100).await;
        let mut seen = BTreeSet::new();
        while seen.len() < kept.len() {
            let d = w.delivery().await;
            assert_eq!(
                d.attempt, 1,
                "task {} was delivered during the fuzzing",
                d.task_id
            );
            assert!(seen.insert(d.task_id), "task {} twice", d.task_id);
            w.ack(&d).await.expect("ack");
        }
        assert_eq!(seen, kept, "the tasks published before the fuzzing");
        assert!(
            w.try_delivery(Duration::from_millis(200)).await.is_none(),
            "nothing else in the kept queue"
        );

        let id = w.publish_spec(vec![spec("after", "still works")]).await;
        let id = id.expect("publish after the fuzzing")[0];
        w.subscribe("after", 1).await;
        let d = w.delivery().await;
        assert_eq!(d.task_id, id);
        w.ack(&d).await.expect("ack after the fuzzing");
    });
    drop(control);
    drop(broker);
}
