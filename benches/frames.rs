//! Frame encode/decode cost per message type: the work every request and delivery pays
//! in the codec, without I/O.

use bytes::{Bytes, BytesMut};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use prost::Message;
use squall_proto::v1::{self, request::Op, server_message::Kind};
use squall_proto::{encode_frame, split_frame};

fn publish(payload: usize) -> v1::Request {
    v1::Request {
        id: 42,
        op: Some(Op::Publish(v1::Publish {
            tasks: vec![v1::TaskSpec {
                queue: "jobs".into(),
                payload: Bytes::from(vec![b'x'; payload]),
                priority: 1,
                ..Default::default()
            }],
            ..Default::default()
        })),
    }
}

fn ack() -> v1::Request {
    v1::Request {
        id: 43,
        op: Some(Op::Ack(v1::Ack {
            task_id: 123_456,
            lease_token: 987_654_321,
            result: Bytes::new(),
        })),
    }
}

fn request(op: Op) -> v1::Request {
    v1::Request {
        id: 44,
        op: Some(op),
    }
}

/// A publish of `n` tasks of 256 B (a producer's batch).
fn publish_batch(n: usize) -> v1::Request {
    let task = v1::TaskSpec {
        queue: "jobs".into(),
        payload: Bytes::from(vec![b'x'; 256]),
        ..Default::default()
    };
    request(Op::Publish(v1::Publish {
        tasks: vec![task; n],
        ..Default::default()
    }))
}

fn delivery(payload: usize) -> v1::ServerMessage {
    v1::ServerMessage {
        kind: Some(Kind::Delivery(v1::Delivery {
            subscription_id: 7,
            task_id: 123_456,
            lease_token: 987_654_321,
            attempt: 1,
            max_attempts: 5,
            deadline_ms: 1_800_000_000_000,
            priority: 1,
            payload: Bytes::from(vec![b'x'; payload]),
            headers: Default::default(),
            created_at_ms: 1_800_000_000_000,
            queue: "jobs".into(),
        })),
    }
}

fn round_trip<M: Message + Default>(c: &mut Criterion, name: &str, msg: M) {
    let mut group = c.benchmark_group(name);
    group.throughput(Throughput::Elements(1));
    let mut buf = BytesMut::with_capacity(64 * 1024);
    group.bench_function("encode", |b| {
        b.iter(|| {
            buf.clear();
            encode_frame(&msg, &mut buf);
        })
    });
    let mut frame = BytesMut::new();
    encode_frame(&msg, &mut frame);
    let frame = frame.freeze();
    group.bench_function("decode", |b| {
        b.iter(|| {
            let mut src = BytesMut::from(&frame[..]);
            let body = split_frame(&mut src, 1 << 20).unwrap().unwrap();
            M::decode(body).unwrap()
        })
    });
    group.finish();
}

fn frames(c: &mut Criterion) {
    round_trip(c, "publish_256B", publish(256));
    round_trip(c, "publish_64x256B", publish_batch(64));
    round_trip(c, "ack", ack());
    round_trip(
        c,
        "hello",
        request(Op::Hello(v1::Hello {
            protocol_version: 1,
            client_name: "worker-17".into(),
            token: "sq_0123456789abcdef0123456789abcdef".into(),
        })),
    );
    round_trip(
        c,
        "subscribe",
        request(Op::Subscribe(v1::Subscribe {
            queue: "jobs".into(),
            prefetch: 64,
        })),
    );
    round_trip(
        c,
        "nack",
        request(Op::Nack(v1::Nack {
            task_id: 123_456,
            lease_token: 987_654_321,
            delay_ms: Some(5_000),
            reason: "upstream timed out".into(),
            ..Default::default()
        })),
    );
    round_trip(
        c,
        "extend",
        request(Op::Extend(v1::Extend {
            task_id: 123_456,
            lease_token: 987_654_321,
            extend_ms: 30_000,
        })),
    );
    round_trip(
        c,
        "get_task",
        request(Op::GetTask(v1::GetTask { task_id: 123_456 })),
    );
    round_trip(
        c,
        "peek",
        request(Op::Peek(v1::Peek {
            queue: "jobs".into(),
            limit: 20,
            ..Default::default()
        })),
    );
    round_trip(c, "delivery_256B", delivery(256));
    round_trip(c, "delivery_64KiB", delivery(64 * 1024));
}

criterion_group!(benches, frames);
criterion_main!(benches);
