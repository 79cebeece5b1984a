//! A consumer that does not read its socket: the broker stops delivering to it once
//! `max_unsent_bytes` wait to be written to it, keeps serving everyone else, and
//! resumes when the consumer reads again. Memory is bounded by construction (the
//! writer half holds at most the limit plus one frame); the test checks the behaviour
//! that bounds it: how many tasks the hub handed to the stuck connection (its leases)
//! stays near what the socket buffers and the limit can hold, far below its credit.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use common::{http_get, TestBroker, Wire, WAIT};
use squall_proto::v1::{self, request::Op, server_message::Kind};
use squall_proto::{decode_frame, encode_frame, PROTOCOL_VERSION};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

const PAYLOAD: usize = 64 * 1024;
const TASKS: usize = 400;
const LIMIT: usize = 256 * 1024;

/// A raw connection with a small receive buffer that says Hello and subscribes, then
/// reads nothing.
async fn stuck_consumer(addr: SocketAddr, queue: &str) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(16 * 1024).unwrap();
    let mut stream = socket.connect(addr).await.unwrap();
    let mut buf = BytesMut::new();
    encode_frame(
        &v1::Request {
            id: 1,
            op: Some(Op::Hello(v1::Hello {
                protocol_version: PROTOCOL_VERSION,
                client_name: "stuck".into(),
                token: String::new(),
            })),
        },
        &mut buf,
    );
    encode_frame(
        &v1::Request {
            id: 2,
            op: Some(Op::Subscribe(v1::Subscribe {
                queue: queue.into(),
                prefetch: 10_000,
            })),
        },
        &mut buf,
    );
    stream.write_all(&buf).await.unwrap();
    stream
}

async fn leased(w: &mut Wire, queue: &str) -> (u64, u64) {
    match w
        .call(Op::GetQueue(v1::GetQueue {
            queue: queue.into(),
        }))
        .await
    {
        Ok(v1::response::Result::Queue(q)) => (q.leased, q.ready),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn a_consumer_that_reads_nothing_stops_getting_deliveries_and_others_get_the_rest() {
    let broker = TestBroker::start_with(|c| {
        c.max_unsent_bytes = LIMIT;
        c.queue_defaults.lease_ms = 60_000;
    })
    .await;
    let mut producer = Wire::hello(broker.addr).await;
    let payload = Bytes::from(vec![b'x'; PAYLOAD]);
    for chunk in 0..TASKS / 50 {
        let tasks = (0..50)
            .map(|i| v1::TaskSpec {
                queue: "big".into(),
                payload: payload.clone(),
                headers: [("n".to_owned(), Bytes::from(format!("{chunk}-{i}")))].into(),
                ..Default::default()
            })
            .collect();
        producer.publish_spec(tasks).await.unwrap();
    }
    let mut stuck = stuck_consumer(broker.addr, "big").await;

    // Deliveries to the stuck connection stop: its leases settle below its credit.
    let mut last = (0, 0);
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let now = leased(&mut producer, "big").await;
        if now == last && now.0 > 0 {
            break;
        }
        last = now;
    }
    let (held, ready) = last;
    eprintln!(
        "stuck consumer holds {held} of {TASKS} tasks of {PAYLOAD} bytes ({} KiB) with a limit of {} KiB",
        held as usize * PAYLOAD / 1024,
        LIMIT / 1024
    );
    assert!(held > 0, "the stuck consumer got some deliveries");
    assert!(
        (held as usize) < TASKS / 2,
        "deliveries did not stop: {held} of {TASKS} leased to a consumer that reads nothing"
    );
    assert_eq!(held + ready, TASKS as u64);
    let (_, metrics) = http_get(broker.http_addr(), "/metrics").await;
    assert!(
        metrics.contains("squall_connections_paused 1\n"),
        "{metrics}"
    );

    // The broker keeps serving: another consumer gets every other task.
    let mut good = Wire::hello(broker.addr).await;
    good.subscribe("big", 64).await;
    for _ in 0..ready {
        let d = good.delivery().await;
        good.ack(&d).await.unwrap();
    }
    producer.publish("other", "still accepted").await;

    // The stuck consumer reads again: it gets what it holds, and is resumed.
    let mut buf = BytesMut::new();
    let mut got = 0u64;
    while got < held {
        if let Some(m) = decode_frame::<v1::ServerMessage>(&mut buf, 64 << 20).unwrap() {
            if let Some(Kind::Delivery(_)) = m.kind {
                got += 1;
            }
            continue;
        }
        let n = tokio::time::timeout(WAIT, stuck.read_buf(&mut buf))
            .await
            .expect("deliveries flow once read")
            .unwrap();
        assert!(n > 0, "connection closed");
    }
    let mut resumed = false;
    for _ in 0..100 {
        let (_, metrics) = http_get(broker.http_addr(), "/metrics").await;
        if metrics.contains("squall_connections_paused 0\n") {
            resumed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(resumed, "deliveries resumed after the consumer read");
}
