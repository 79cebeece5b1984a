//! The fuzz harnesses, shared by the cargo-fuzz targets (`fuzz_targets/`) and by the
//! stable-toolchain fallback driver (`src/bin/random.rs`): arbitrary bytes through the
//! broker's frame splitter and request decoding, with the properties checked here.
//!
//! Request validation in the broker (`squall::server::connection`) is a method of the
//! connection and needs its shared state, so it is only reachable through a socket; the
//! pure part of it, `squall_proto::validate_queue_name`, is checked here against an
//! independent statement of the rule. The socket path is covered by the proptest in
//! `tests/fuzz_connection.rs`.

use bytes::BytesMut;
use prost::Message;
use squall_proto::v1::{self, request::Op};
use squall_proto::{
    encode_frame, split_frame, validate_queue_name, FrameError, LENGTH_PREFIX_BYTES,
    MAX_QUEUE_NAME_LEN,
};

/// Frame size limits the `frames` harness picks from (by the first input byte): small,
/// so that both "too large" and "complete" frames are common.
const MAXES: [usize; 6] = [0, 1, 7, 64, 1024, 4096];

/// Feeds `data` to `split_frame` in chunks the way the broker's read loop does, and
/// decodes every complete frame as a `Request`.
///
/// Input layout: byte 0 picks the frame size limit, byte 1 the chunk size (1..=64),
/// the rest is the byte stream. Properties:
/// - nothing panics;
/// - `TooLarge` comes as soon as the prefix is readable, with the announced length,
///   before the buffer grows and without consuming anything;
/// - a complete frame is exactly the announced length, never above the limit;
/// - "need more bytes" consumes nothing;
/// - the buffer never grows past a small multiple of what the stream and limit need.
pub fn frames(data: &[u8]) {
    let [pick, chunk, stream @ ..] = data else {
        return;
    };
    let max = MAXES[usize::from(*pick) % MAXES.len()];
    let chunk = 1 + usize::from(*chunk) % 64;
    let mut buf = BytesMut::new();
    let mut fed = 0usize;
    for piece in stream.chunks(chunk) {
        buf.extend_from_slice(piece);
        fed += piece.len();
        loop {
            match split_once(&mut buf, max) {
                Step::Frame => continue,
                Step::NeedMore => break,
                Step::Closed => return,
            }
        }
        let bound = 2 * (fed + LENGTH_PREFIX_BYTES + max) + 64 * 1024;
        assert!(
            buf.capacity() <= bound,
            "buffer grew to {} bytes after {fed} bytes fed with max {max}",
            buf.capacity()
        );
    }
}

enum Step {
    Frame,
    NeedMore,
    Closed,
}

fn split_once(buf: &mut BytesMut, max: usize) -> Step {
    let cap_before = buf.capacity();
    let before = buf.clone();
    let announced = (buf.len() >= LENGTH_PREFIX_BYTES)
        .then(|| u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize);
    match split_frame(buf, max) {
        Ok(Some(body)) => {
            assert_eq!(Some(body.len()), announced, "frame length is the prefix");
            assert!(body.len() <= max, "frame of {} over max {max}", body.len());
            assert_eq!(
                &before[LENGTH_PREFIX_BYTES..LENGTH_PREFIX_BYTES + body.len()],
                &body[..]
            );
            assert_eq!(buf.len(), before.len() - LENGTH_PREFIX_BYTES - body.len());
            if let Ok(req) = v1::Request::decode(body.clone()) {
                check_request(&req);
            }
            if let Ok(msg) = v1::ServerMessage::decode(body) {
                assert_eq!(round_trip(&msg), msg, "server message round trip");
            }
            Step::Frame
        }
        Ok(None) => {
            assert_eq!(&buf[..], &before[..], "waiting consumes nothing");
            if let Some(len) = announced {
                assert!(
                    len <= max,
                    "an oversized prefix must be refused, not awaited"
                );
            }
            Step::NeedMore
        }
        Err(FrameError::TooLarge { len, max: m }) => {
            assert_eq!(Some(len), announced, "the error names the announced length");
            assert!(len > max && m == max);
            assert_eq!(buf.capacity(), cap_before, "refused before any growth");
            assert_eq!(&buf[..], &before[..], "refusal consumes nothing");
            Step::Closed
        }
        Err(other) => panic!("split_frame only refuses sizes, got {other}"),
    }
}

/// Decodes `data` as one `Request` body and, if it decodes, checks it.
pub fn request(data: &[u8]) {
    if let Ok(req) = v1::Request::decode(data) {
        check_request(&req);
    }
}

/// Properties of any decoded request: it survives encode/decode unchanged (also as a
/// frame), and every queue name it carries gets the verdict of the written rule.
fn check_request(req: &v1::Request) {
    assert_eq!(&round_trip(req), req, "request round trip");
    let mut framed = BytesMut::new();
    encode_frame(req, &mut framed);
    let body = match split_frame(&mut framed, usize::MAX) {
        Ok(Some(body)) => body,
        other => panic!("an encoded frame splits whole: {other:?}"),
    };
    assert!(framed.is_empty());
    assert_eq!(
        v1::Request::decode(body).ok().as_ref(),
        Some(req),
        "frame round trip"
    );
    match &req.op {
        Some(Op::Publish(p)) => {
            for t in &p.tasks {
                check_queue_name(&t.queue);
            }
        }
        Some(Op::Subscribe(s)) => check_queue_name(&s.queue),
        _ => {}
    }
}

fn round_trip<M: Message + Default>(msg: &M) -> M {
    match M::decode(msg.encode_to_vec().as_slice()) {
        Ok(m) => m,
        Err(e) => panic!("re-encoded message does not decode: {e}"),
    }
}

/// `[A-Za-z0-9._:-]{1,200}`, stated independently of the implementation.
fn check_queue_name(name: &str) {
    let expected = (1..=MAX_QUEUE_NAME_LEN).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._:-".contains(&b));
    assert_eq!(
        validate_queue_name(name).is_ok(),
        expected,
        "queue name {name:?}"
    );
}
