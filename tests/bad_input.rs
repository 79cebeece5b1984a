//! Bad input over real TCP: each malformed frame or invalid request gets its typed error
//! code, protocol violations close only the offending connection, the broker keeps
//! serving everyone else, and nothing stored changes.

mod common;

use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use common::{spec, TestBroker, Wire};
use squall_proto::v1::{self, request::Op};
use squall_proto::{ErrorCode, PROTOCOL_VERSION};

/// A healthy client still publishes and consumes, and the queue holds exactly `expect`.
async fn still_serving(broker: &TestBroker, good: &mut Wire, queue: &str, expect: &[&str]) {
    good.publish("health", "ping").await;
    good.subscribe(queue, 100).await;
    let mut got = Vec::new();
    for _ in 0..expect.len() {
        let d = good.delivery().await;
        got.push(String::from_utf8(d.payload.to_vec()).unwrap());
    }
    assert_eq!(got, expect);
    assert!(
        good.try_delivery(Duration::from_millis(300))
            .await
            .is_none(),
        "nothing else was stored in {queue}"
    );
    let _ = broker;
}

#[tokio::test]
async fn oversized_frame_is_refused_with_an_error_frame_and_the_connection_closed() {
    let broker = TestBroker::start_with(|c| {
        c.max_frame_bytes = 64 * 1024;
        c.max_payload_bytes = 32 * 1024;
    })
    .await;
    let mut good = Wire::hello(broker.addr).await;
    let mut bad = Wire::hello(broker.addr).await;
    // Announce 4 GiB - 1 and send nothing more: refused from the prefix alone.
    bad.send_raw(&u32::MAX.to_be_bytes()).await;
    let (id, err) = bad.expect_error().await;
    assert_eq!((id, err.code), (0, ErrorCode::FrameTooLarge));
    assert!(
        err.message.contains("65536"),
        "names the limit: {}",
        err.message
    );
    assert!(bad.closed_by_peer().await);
    // Just above the limit, with a body that is actually sent.
    let mut big = Wire::hello(broker.addr).await;
    let mut frame = BytesMut::new();
    frame.put_u32(64 * 1024 + 1);
    frame.put_bytes(0, 64 * 1024 + 1);
    big.send_raw(&frame).await;
    assert_eq!(big.expect_error().await.1.code, ErrorCode::FrameTooLarge);
    still_serving(&broker, &mut good, "health", &["ping"]).await;
}

#[tokio::test]
async fn undecodable_protobuf_is_malformed_frame() {
    let broker = TestBroker::start().await;
    let mut good = Wire::hello(broker.addr).await;
    let mut bad = Wire::hello(broker.addr).await;
    let mut frame = BytesMut::new();
    frame.put_u32(4);
    frame.put_slice(&[0xff, 0xff, 0xff, 0xff]);
    bad.send_raw(&frame).await;
    let (id, err) = bad.expect_error().await;
    assert_eq!((id, err.code), (0, ErrorCode::MalformedFrame));
    assert!(bad.closed_by_peer().await);
    still_serving(&broker, &mut good, "health", &["ping"]).await;
}

/// Publishes that arrive in the same read as a malformed frame were valid: they are
/// stored although the connection is closed for the frame after them (the reader
/// hands the publishes of one read to the store together, and a reader that stops
/// hands over what it holds). Negative control run: without that last hand-off
/// (`conn/mod.rs`) the queue is empty and the test fails.
#[tokio::test]
async fn publishes_before_a_malformed_frame_in_one_read_are_stored() {
    let broker = TestBroker::start().await;
    let mut good = Wire::hello(broker.addr).await;
    let mut bad = Wire::hello(broker.addr).await;
    let mut bytes = BytesMut::new();
    for i in 0..5u64 {
        let publish = v1::Request {
            id: 100 + i,
            op: Some(Op::Publish(v1::Publish {
                tasks: vec![spec("held", &format!("p{i}"))],
                ..Default::default()
            })),
        };
        squall_proto::encode_frame(&publish, &mut bytes);
    }
    bytes.put_u32(4);
    bytes.put_slice(&[0xff, 0xff, 0xff, 0xff]);
    bad.send_raw(&bytes).await;
    assert!(bad.closed_by_peer().await);
    still_serving(&broker, &mut good, "held", &["p0", "p1", "p2", "p3", "p4"]).await;
}

#[tokio::test]
async fn a_request_before_hello_is_refused() {
    let broker = TestBroker::start().await;
    let mut w = Wire::connect(broker.addr).await;
    let id = w
        .send(Op::Publish(v1::Publish {
            tasks: vec![spec("early", "x")],
            ..Default::default()
        }))
        .await;
    let (got, err) = w.expect_error().await;
    assert_eq!((got, err.code), (id, ErrorCode::HelloRequired));
    assert!(w.closed_by_peer().await);
    let mut good = Wire::hello(broker.addr).await;
    still_serving(&broker, &mut good, "early", &[]).await;
}

#[tokio::test]
async fn an_unknown_protocol_version_is_refused() {
    let broker = TestBroker::start().await;
    let mut w = Wire::connect(broker.addr).await;
    let id = w
        .send(Op::Hello(v1::Hello {
            protocol_version: PROTOCOL_VERSION + 41,
            client_name: "future".into(),
            token: String::new(),
        }))
        .await;
    let (got, err) = w.expect_error().await;
    assert_eq!((got, err.code), (id, ErrorCode::UnsupportedVersion));
    assert!(err.message.contains(&PROTOCOL_VERSION.to_string()));
    assert!(w.closed_by_peer().await);
}

#[tokio::test]
async fn invalid_tasks_get_typed_errors_and_store_nothing() {
    let broker = TestBroker::start_with(|c| c.max_payload_bytes = 1024).await;
    let mut w = Wire::hello(broker.addr).await;
    let cases: Vec<(v1::TaskSpec, ErrorCode)> = vec![
        (spec("bad queue", "x"), ErrorCode::InvalidQueueName),
        (spec("", "x"), ErrorCode::InvalidQueueName),
        (spec(&"q".repeat(201), "x"), ErrorCode::InvalidQueueName),
        (spec("q", ""), ErrorCode::EmptyPayload),
        (
            v1::TaskSpec {
                payload: Bytes::from(vec![b'x'; 1025]),
                ..spec("q", "")
            },
            ErrorCode::PayloadTooLarge,
        ),
    ];
    for (task, code) in cases {
        let err = w.publish_spec(vec![task]).await.unwrap_err();
        assert_eq!(err.code, code, "{}", err.message);
    }
    // One bad task rejects the whole batch: the valid ones are not stored either.
    let err = w
        .publish_spec(vec![
            spec("q", "valid"),
            spec("q", ""),
            spec("q", "also valid"),
        ])
        .await
        .unwrap_err();
    assert_eq!(err.code, ErrorCode::EmptyPayload);
    assert!(err.message.contains("nothing was published"));
    let err = w.publish_spec(vec![]).await.unwrap_err();
    assert_eq!(err.code, ErrorCode::BadRequest);
    // Subscribing with a bad name or no credit is refused too.
    let err = w
        .call(Op::Subscribe(v1::Subscribe {
            queue: "no/slash".into(),
            prefetch: 1,
        }))
        .await
        .unwrap_err();
    assert_eq!(err.code, ErrorCode::InvalidQueueName);
    let err = w
        .call(Op::Subscribe(v1::Subscribe {
            queue: "q".into(),
            prefetch: 0,
        }))
        .await
        .unwrap_err();
    assert_eq!(err.code, ErrorCode::BadRequest);
    // The same connection keeps working, and the queue holds only what was valid.
    w.publish("q", "the only task").await;
    still_serving(&broker, &mut w, "q", &["the only task"]).await;
}

#[tokio::test]
async fn settling_unknown_tasks_and_stale_tokens_is_lease_expired() {
    let broker = TestBroker::start().await;
    let mut w = Wire::hello(broker.addr).await;
    w.publish("settle", "x").await;
    w.subscribe("settle", 1).await;
    let d = w.delivery().await;
    let forged = v1::Delivery {
        lease_token: d.lease_token ^ 1,
        ..d.clone()
    };
    assert_eq!(
        w.ack(&forged).await.unwrap_err().code,
        ErrorCode::LeaseExpired
    );
    let unknown = v1::Delivery {
        task_id: 9_999,
        ..d.clone()
    };
    assert_eq!(
        w.nack(&unknown, None, false, "").await.unwrap_err().code,
        ErrorCode::LeaseExpired
    );
    // Another connection cannot settle a lease it does not hold, even with the token.
    let mut thief = Wire::hello(broker.addr).await;
    assert_eq!(
        thief.ack(&d).await.unwrap_err().code,
        ErrorCode::LeaseExpired
    );
    w.ack(&d).await.unwrap();
    assert_eq!(w.ack(&d).await.unwrap_err().code, ErrorCode::LeaseExpired);
}

/// Producer numbers over the wire (any broker honours them, not only a cluster): a
/// repeat is answered with the first publish's ids as duplicates; a number reused for
/// a publish of another size is BAD_REQUEST, one older than the 256 remembered is
/// SEQUENCE_TOO_OLD, a producer id over 128 bytes is BAD_REQUEST; none of these
/// stores anything.
#[tokio::test]
async fn producer_numbers_answer_repeats_and_refuse_what_they_cannot_tell() {
    let broker = TestBroker::start().await;
    let mut w = Wire::hello(broker.addr).await;
    let numbered = |producer: &str, sequence: u64, n: usize| {
        Op::Publish(v1::Publish {
            tasks: (0..n)
                .map(|i| spec("numbered", &format!("task {i}")))
                .collect(),
            producer_id: producer.into(),
            sequence,
        })
    };
    let published = |r: Result<v1::response::Result, common::WireError>| match r {
        Ok(v1::response::Result::Publish(ok)) => ok.tasks,
        other => panic!("expected a publish answer, got {other:?}"),
    };
    let first = published(w.call(numbered("p", 1, 2)).await);
    assert!(first.iter().all(|t| !t.duplicate));
    let again = published(w.call(numbered("p", 1, 2)).await);
    assert_eq!(
        again
            .iter()
            .map(|t| (t.task_id, t.duplicate))
            .collect::<Vec<_>>(),
        first.iter().map(|t| (t.task_id, true)).collect::<Vec<_>>(),
        "the repeat names the first publish's tasks"
    );
    let reused = w.call(numbered("p", 1, 3)).await.unwrap_err();
    assert_eq!(reused.code, ErrorCode::BadRequest, "{reused:?}");
    assert!(
        reused.message.contains("earlier publish of 2 task"),
        "{reused:?}"
    );
    for sequence in 2..=257 {
        published(w.call(numbered("p", sequence, 1)).await);
    }
    let old = w.call(numbered("p", 1, 2)).await.unwrap_err();
    assert_eq!(old.code, ErrorCode::SequenceTooOld, "{old:?}");
    let long = "x".repeat(129);
    let refused = w.call(numbered(&long, 1, 1)).await.unwrap_err();
    assert_eq!(refused.code, ErrorCode::BadRequest, "{refused:?}");
    assert!(refused.message.contains("producer id"), "{refused:?}");
    // Stored: the first publish's two tasks and the 256 later ones, nothing else.
    let admin = squall_client::Client::connect(broker.addr)
        .await
        .expect("connect");
    let info = admin.queue("numbered").await.unwrap();
    assert_eq!(info.ready, 2 + 256, "{info:?}");
    admin.close().await;
}
