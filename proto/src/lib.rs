//! Squall's wire protocol: the generated protobuf types (`v1`; `cluster` for node to
//! node), the length-prefixed frame codec, the protocol constants and the queue-name
//! rule shared by the broker and its clients. No I/O lives here beyond the `tokio_util` codec adapter.

use std::marker::PhantomData;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use prost::Message;

/// Generated protobuf types for protocol version 1.
#[allow(missing_docs, clippy::all, clippy::pedantic)]
pub mod v1 {
    include!(concat!(env!("OUT_DIR"), "/squall.v1.rs"));
}

/// Generated protobuf types of the node-to-node protocol (`cluster.proto`): what the
/// members of a cluster say to each other on the cluster port. Clients never use them.
#[allow(missing_docs, clippy::all, clippy::pedantic)]
pub mod cluster {
    include!(concat!(env!("OUT_DIR"), "/squall.cluster.v1.rs"));
}

pub mod fields;

pub use v1::ErrorCode;

/// The protocol version this crate speaks, sent in `Hello`.
pub const PROTOCOL_VERSION: u32 = 1;

/// Default maximum frame body size (8 MiB).
pub const DEFAULT_MAX_FRAME_BYTES: usize = 8 * 1024 * 1024;

/// Size of the length prefix in front of every frame.
pub const LENGTH_PREFIX_BYTES: usize = 4;

/// Longest allowed queue name.
pub const MAX_QUEUE_NAME_LEN: usize = 200;

/// Errors of the frame codec.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// The length prefix announced more than the configured maximum; nothing was allocated.
    #[error("frame of {len} bytes exceeds the maximum of {max} bytes")]
    TooLarge {
        /// Announced length.
        len: usize,
        /// Configured maximum.
        max: usize,
    },
    /// The frame body is not a decodable protobuf message.
    #[error("frame is not a valid protobuf message: {0}")]
    Decode(#[from] prost::DecodeError),
    /// The underlying transport failed.
    #[error("transport error: {0}")]
    Io(#[from] std::io::Error),
}

impl FrameError {
    /// The wire error code a peer should receive for this error.
    pub fn code(&self) -> ErrorCode {
        match self {
            FrameError::TooLarge { .. } => ErrorCode::FrameTooLarge,
            FrameError::Decode(_) => ErrorCode::MalformedFrame,
            FrameError::Io(_) => ErrorCode::Internal,
        }
    }
}

/// Appends `msg` to `dst` as one frame (length prefix + body).
///
/// The body is encoded into a slice of `dst` sized to it ([`frame_room`]), not into
/// `dst` itself: prost writes a varint a byte at a time, and each byte put into a
/// `BytesMut` is an out-of-line `extend_from_slice` (a capacity check and a one-byte
/// copy), where a byte put into a slice is a store. Zeroing the slice first costs less
/// than the calls it saves (`BENCHMARKS.md`, "What each change gained").
pub fn encode_frame<M: Message>(msg: &M, dst: &mut BytesMut) {
    let len = msg.encoded_len();
    let mut body = frame_room(dst, len);
    // Cannot fail: the slice is exactly `encoded_len` bytes long.
    msg.encode(&mut body)
        .expect("the slice was sized by encoded_len, encode cannot run out of space");
    debug_assert!(body.is_empty(), "encoded_len and encode disagree");
}

/// Appends a frame's length prefix for a body of `len` bytes and room for the body,
/// zeroed; returns the room, which the caller fills exactly (prost in
/// [`encode_frame`], or a hand-written encoder of a hot message).
#[inline]
pub fn frame_room(dst: &mut BytesMut, len: usize) -> &mut [u8] {
    let start = dst.len();
    dst.reserve(LENGTH_PREFIX_BYTES + len);
    dst.put_u32(len as u32);
    dst.resize(start + LENGTH_PREFIX_BYTES + len, 0);
    debug_assert_eq!(dst.len() - start, LENGTH_PREFIX_BYTES + len);
    &mut dst[start + LENGTH_PREFIX_BYTES..]
}

/// Splits the next complete frame body off `src`.
///
/// Returns `Ok(None)` when more bytes are needed. A length above `max` is refused as
/// soon as the 4-byte prefix is read. Nothing is reserved for the body: a peer's
/// declared length is only a claim, and the caller grows its buffer with the bytes
/// that actually arrive (the broker does; see [`FrameCodec`] for the client).
pub fn split_frame(src: &mut BytesMut, max: usize) -> Result<Option<Bytes>, FrameError> {
    if src.len() < LENGTH_PREFIX_BYTES {
        return Ok(None);
    }
    let len = u32::from_be_bytes([src[0], src[1], src[2], src[3]]) as usize;
    if len > max {
        return Err(FrameError::TooLarge { len, max });
    }
    if src.len() < LENGTH_PREFIX_BYTES + len {
        return Ok(None);
    }
    src.advance(LENGTH_PREFIX_BYTES);
    Ok(Some(src.split_to(len).freeze()))
}

/// Decodes the next complete frame of type `M` from `src`.
pub fn decode_frame<M: Message + Default>(
    src: &mut BytesMut,
    max: usize,
) -> Result<Option<M>, FrameError> {
    match split_frame(src, max)? {
        Some(body) => Ok(Some(M::decode(body)?)),
        None => Ok(None),
    }
}

/// A `tokio_util` codec that writes `Out` frames and reads `In` frames.
///
/// The client uses `FrameCodec<Request, ServerMessage>`; the broker reads and writes
/// frames with [`split_frame`] and [`encode_frame`] directly to batch its writes.
#[derive(Debug)]
pub struct FrameCodec<Out, In> {
    max_frame: usize,
    _marker: PhantomData<fn(Out) -> In>,
}

impl<Out, In> FrameCodec<Out, In> {
    /// A codec refusing frames longer than `max_frame` bytes.
    pub fn new(max_frame: usize) -> Self {
        FrameCodec {
            max_frame,
            _marker: PhantomData,
        }
    }
}

impl<Out, In> Default for FrameCodec<Out, In> {
    fn default() -> Self {
        Self::new(DEFAULT_MAX_FRAME_BYTES)
    }
}

impl<Out: Message, In> tokio_util::codec::Encoder<Out> for FrameCodec<Out, In> {
    type Error = FrameError;

    fn encode(&mut self, item: Out, dst: &mut BytesMut) -> Result<(), FrameError> {
        encode_frame(&item, dst);
        Ok(())
    }
}

impl<Out, In: Message + Default> tokio_util::codec::Decoder for FrameCodec<Out, In> {
    type Item = In;
    type Error = FrameError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<In>, FrameError> {
        let frame = decode_frame(src, self.max_frame)?;
        if frame.is_none() {
            reserve_frame(src);
        }
        Ok(frame)
    }
}

/// Once a frame's length prefix is in `src` but not the whole frame, makes room for
/// the rest at once: what a client does, which trusts its broker (the length was
/// already checked against the frame limit). A broker reading clients must not.
pub fn reserve_frame(src: &mut BytesMut) {
    if src.len() >= LENGTH_PREFIX_BYTES {
        let len = u32::from_be_bytes([src[0], src[1], src[2], src[3]]) as usize;
        src.reserve((LENGTH_PREFIX_BYTES + len).saturating_sub(src.len()));
    }
}

/// Why a queue name was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QueueNameError {
    /// The name is empty.
    #[error("queue name is empty")]
    Empty,
    /// The name is longer than [`MAX_QUEUE_NAME_LEN`].
    #[error("queue name is {0} bytes long; the maximum is 200")]
    TooLong(usize),
    /// The name holds a character outside `[A-Za-z0-9._:-]`.
    #[error("queue name {name:?} contains {ch:?}; allowed are A-Z a-z 0-9 . _ : -")]
    BadChar {
        /// The refused name.
        name: String,
        /// The first refused character.
        ch: char,
    },
}

/// Checks a queue name against `[A-Za-z0-9._:-]{1,200}`.
pub fn validate_queue_name(name: &str) -> Result<(), QueueNameError> {
    if name.is_empty() {
        return Err(QueueNameError::Empty);
    }
    if name.len() > MAX_QUEUE_NAME_LEN {
        return Err(QueueNameError::TooLong(name.len()));
    }
    if let Some(ch) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | ':' | '-')))
    {
        return Err(QueueNameError::BadChar {
            name: name.to_owned(),
            ch,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::v1::{self, request::Op, Request};
    use super::*;

    /// The wire numbers are a public contract: this test fails if one ever changes.
    #[test]
    fn error_codes_are_pinned() {
        let pinned = [
            (ErrorCode::Unspecified, 0),
            (ErrorCode::BadRequest, 1),
            (ErrorCode::Unauthenticated, 2),
            (ErrorCode::Forbidden, 3),
            (ErrorCode::NotFound, 4),
            (ErrorCode::LeaseExpired, 5),
            (ErrorCode::QueueFull, 6),
            (ErrorCode::PayloadTooLarge, 7),
            (ErrorCode::QueuePaused, 8),
            (ErrorCode::UnsupportedVersion, 9),
            (ErrorCode::ShuttingDown, 10),
            (ErrorCode::Storage, 11),
            (ErrorCode::Internal, 12),
            (ErrorCode::FrameTooLarge, 13),
            (ErrorCode::MalformedFrame, 14),
            (ErrorCode::HelloRequired, 15),
            (ErrorCode::InvalidQueueName, 16),
            (ErrorCode::EmptyPayload, 17),
            (ErrorCode::TooManyConnections, 18),
            (ErrorCode::TooManyRequests, 19),
            (ErrorCode::Timeout, 20),
            (ErrorCode::AnswerTooLarge, 40),
            (ErrorCode::ScheduleExists, 46),
            (ErrorCode::InvalidSchedule, 47),
            (ErrorCode::NotLeader, 48),
            (ErrorCode::SequenceTooOld, 49),
        ];
        for (code, number) in pinned {
            assert_eq!(code as i32, number, "{code:?} changed its wire number");
            assert_eq!(ErrorCode::try_from(number).ok(), Some(code));
        }
        for unused in [21, 41, 45, 50] {
            assert!(
                ErrorCode::try_from(unused).is_err(),
                "a new code was added: pin it here"
            );
        }
    }

    #[test]
    fn frames_round_trip_and_split_across_reads() {
        let req = Request {
            id: 7,
            op: Some(Op::Ping(v1::Ping {})),
        };
        let mut buf = BytesMut::new();
        encode_frame(&req, &mut buf);
        encode_frame(&req, &mut buf);
        let whole = buf.clone();
        // Feed one byte at a time: a frame appears only when complete.
        let mut partial = BytesMut::new();
        let mut got = Vec::new();
        for b in whole.iter() {
            partial.put_u8(*b);
            if let Some(r) = decode_frame::<Request>(&mut partial, 1024).unwrap() {
                got.push(r);
            }
        }
        assert_eq!(got, vec![req.clone(), req]);
        assert!(partial.is_empty());
    }

    #[test]
    fn oversized_length_is_refused_before_allocating() {
        let mut buf = BytesMut::from(&u32::MAX.to_be_bytes()[..]);
        let cap_before = buf.capacity();
        let err = split_frame(&mut buf, DEFAULT_MAX_FRAME_BYTES).unwrap_err();
        assert!(matches!(err, FrameError::TooLarge { len, .. } if len == u32::MAX as usize));
        assert_eq!(err.code(), ErrorCode::FrameTooLarge);
        assert_eq!(
            buf.capacity(),
            cap_before,
            "no buffer was grown for the body"
        );
    }

    /// A declared length within the limit reserves nothing either: the buffer grows
    /// only with bytes that arrive.
    #[test]
    fn a_declared_length_reserves_nothing() {
        let mut buf = BytesMut::with_capacity(64);
        buf.put_u32(DEFAULT_MAX_FRAME_BYTES as u32);
        buf.put_slice(b"partial");
        assert!(split_frame(&mut buf, DEFAULT_MAX_FRAME_BYTES)
            .unwrap()
            .is_none());
        assert_eq!(buf.capacity(), 64, "nothing reserved for the declared body");
    }

    #[test]
    fn garbage_body_is_a_decode_error() {
        let mut buf = BytesMut::new();
        buf.put_u32(3);
        buf.put_slice(&[0xff, 0xff, 0xff]);
        let err = decode_frame::<Request>(&mut buf, 1024).unwrap_err();
        assert_eq!(err.code(), ErrorCode::MalformedFrame);
    }

    #[test]
    fn queue_names() {
        for ok in ["jobs", "a", "A-b_c.d:e", &"x".repeat(200)] {
            assert_eq!(validate_queue_name(ok), Ok(()), "{ok}");
        }
        assert_eq!(validate_queue_name(""), Err(QueueNameError::Empty));
        assert_eq!(
            validate_queue_name(&"x".repeat(201)),
            Err(QueueNameError::TooLong(201))
        );
        for bad in ["a b", "a/b", "é", "a*"] {
            assert!(
                matches!(
                    validate_queue_name(bad),
                    Err(QueueNameError::BadChar { .. })
                ),
                "{bad}"
            );
        }
    }
}
