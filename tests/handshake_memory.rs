//! Issue 19, fault 4: a connection that has not said Hello must not make the broker
//! hold memory by declaring a large frame. Before Hello only a Hello-sized frame
//! (`max_hello_frame_bytes`) is accepted, read buffers grow with the bytes that arrive
//! (never by a declared length), and all connections without Hello share one budget
//! (`handshake_memory_bytes`). Before the fix the 8 MiB frame limit applied before
//! Hello and the codec reserved the declared length at once: 100 such connections took
//! the broker from 9 to 811 MiB.

mod common;

use std::time::Duration;

use common::{temp_data_dir, ChildBroker, Wire};
use squall_proto::ErrorCode;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

const MIB: u64 = 1024 * 1024;
/// Connections that each declare a frame just under the 8 MiB limit and send 1 MiB of it.
const CONNECTIONS: usize = 100;
const SENT_PER_CONNECTION: usize = 1024 * 1024;
/// What the broker may grow by while they are open (they hold about 100 MiB if the body
/// bytes are buffered, 800 MiB if the declared lengths are reserved and touched).
const RSS_GROWTH_BOUND: u64 = 40 * MIB;

fn prefix(len: u32) -> [u8; 4] {
    len.to_be_bytes()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_frames_declared_before_hello_do_not_grow_the_broker() {
    let (_dir, path) = temp_data_dir();
    let broker = ChildBroker::spawn(&path, &["--fsync", "never"]);
    // Let start-up allocations settle.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = broker.rss_bytes();
    let declared = (8 * MIB - 1024) as u32;
    let body = vec![0x5a_u8; SENT_PER_CONNECTION];
    let mut conns = Vec::with_capacity(CONNECTIONS);
    for _ in 0..CONNECTIONS {
        let mut s = TcpStream::connect(broker.addr).await.expect("connect");
        // A refused connection may be reset while we still write: that is the point.
        if s.write_all(&prefix(declared)).await.is_ok() {
            let _ = s.write_all(&body).await;
        }
        conns.push(s);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let during = broker.rss_bytes();
    let growth = during.saturating_sub(before);
    eprintln!(
        "broker RSS {} MiB before, {} MiB with {CONNECTIONS} connections declaring {declared} bytes",
        before / MIB,
        during / MIB
    );
    assert!(
        growth < RSS_GROWTH_BOUND,
        "RSS grew by {} MiB",
        growth / MIB
    );
    drop(conns);
}

#[tokio::test]
async fn an_oversize_frame_before_hello_is_refused_at_once() {
    let (_dir, path) = temp_data_dir();
    let broker = ChildBroker::spawn(&path, &[]);
    // 1 MiB: far below max_frame_bytes (8 MiB), far above a Hello (16 KiB allowed).
    let mut w = Wire::connect(broker.addr).await;
    w.send_raw(&prefix(1024 * 1024)).await;
    let (id, e) = w.expect_error().await;
    assert_eq!((id, e.code), (0, ErrorCode::FrameTooLarge), "{e:?}");
    assert!(w.closed_by_peer().await);
    // After Hello the full limit applies.
    let mut w = Wire::hello(broker.addr).await;
    let r = w
        .call(squall_proto::v1::request::Op::Publish(
            squall_proto::v1::Publish {
                tasks: vec![common::spec("hs", &"p".repeat(64 * 1024))],
                ..Default::default()
            },
        ))
        .await;
    assert!(r.is_ok(), "{r:?}");
}

#[tokio::test]
async fn connections_without_hello_share_one_memory_budget() {
    let (_dir, path) = temp_data_dir();
    // 256 KiB for all of them: room for a few dozen Hello-sized buffers.
    let broker = ChildBroker::spawn(&path, &["--handshake-memory-bytes", "256 KiB"]);
    let declared = 15 * 1024;
    let mut partial = prefix(declared).to_vec();
    partial.extend(vec![0_u8; declared as usize - 100]);
    let mut conns = Vec::new();
    for _ in 0..64 {
        let mut w = Wire::connect(broker.addr).await;
        w.send_raw(&partial).await;
        conns.push(w);
    }
    let mut refused = 0;
    for w in &mut conns {
        if let Ok((0, e)) = tokio::time::timeout(Duration::from_millis(200), w.expect_error()).await
        {
            assert_eq!(e.code, ErrorCode::TooManyConnections, "{e:?}");
            refused += 1;
        }
    }
    assert!(
        (1..64).contains(&refused),
        "{refused} of 64 partial Hellos refused"
    );
    drop(conns);
    // Once they are gone the budget is free again: a Hello goes through.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut w = Wire::hello(broker.addr).await;
    assert!(w
        .call(squall_proto::v1::request::Op::Ping(Default::default()))
        .await
        .is_ok());
}
