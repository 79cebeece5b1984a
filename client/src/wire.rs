//! The client's reader of the broker's frames: the frequent messages (a delivery
//! without headers, the answer to a publish, an ack or a ping) are read field by field
//! straight into prost's structs, without prost's generic merge; anything else
//! (another kind of answer, a header, an embedded message given twice, which prost
//! merges, a field out of its type, an unknown field, bytes that do not decode) is left
//! to prost, which reads it exactly as before, errors included. A scalar given twice is
//! read as prost reads it: the last one. Not here: what a message means (`conn.rs`).

use bytes::{Bytes, BytesMut};
use prost::Message;
use squall_proto::fields::{Fields, LEN, VARINT};
use squall_proto::v1::{self, response, server_message::Kind};
use squall_proto::{reserve_frame, split_frame, FrameError};

/// Reads the broker's frames ([`decode_server_message`]), refusing any longer than
/// `max_frame`.
#[derive(Debug)]
pub(crate) struct ServerCodec {
    max_frame: usize,
}

impl ServerCodec {
    pub(crate) fn new(max_frame: usize) -> ServerCodec {
        ServerCodec { max_frame }
    }
}

impl tokio_util::codec::Decoder for ServerCodec {
    type Item = v1::ServerMessage;
    type Error = FrameError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<v1::ServerMessage>, FrameError> {
        match split_frame(src, self.max_frame)? {
            Some(body) => Ok(Some(decode_server_message(body)?)),
            None => {
                reserve_frame(src);
                Ok(None)
            }
        }
    }
}

/// One frame's body as prost decodes it: read field by field when it is one of the
/// frequent messages in the form the broker writes them, by prost otherwise.
pub(crate) fn decode_server_message(body: Bytes) -> Result<v1::ServerMessage, prost::DecodeError> {
    match fast(&body) {
        Some(message) => Ok(message),
        None => v1::ServerMessage::decode(body),
    }
}

fn fast(body: &Bytes) -> Option<v1::ServerMessage> {
    let mut fields = Fields::new(body, 0, body.len());
    let (number, wire) = fields.key()??;
    if wire != LEN {
        return None;
    }
    let (from, to) = fields.len_delimited()?;
    // One kind, given once.
    if !fields.at_end() {
        return None;
    }
    let kind = match number {
        1 => Kind::Response(answer(body, from, to)?),
        2 => Kind::Delivery(delivery(body, from, to)?),
        _ => return None,
    };
    Some(v1::ServerMessage { kind: Some(kind) })
}

fn answer(body: &Bytes, from: usize, to: usize) -> Option<v1::Response> {
    let mut fields = Fields::new(body, from, to);
    let mut out = v1::Response::default();
    while let Some((number, wire)) = fields.key()? {
        match (number, wire) {
            (1, VARINT) => out.id = fields.varint()?,
            // The oneof: one of these, once (prost merges a message given twice).
            (11, LEN) if out.result.is_none() => {
                let (a, b) = fields.len_delimited()?;
                out.result = Some(response::Result::Publish(publish_ok(body, a, b)?));
            }
            (13 | 17, LEN) if out.result.is_none() => {
                let (a, b) = fields.len_delimited()?;
                // Empty messages; anything inside is prost's to skip.
                if a != b {
                    return None;
                }
                out.result = Some(if number == 13 {
                    response::Result::Ok(v1::Empty {})
                } else {
                    response::Result::Pong(v1::Pong {})
                });
            }
            _ => return None,
        }
    }
    debug_assert!(fields.at_end());
    Some(out)
}

fn publish_ok(body: &Bytes, from: usize, to: usize) -> Option<v1::PublishOk> {
    let mut fields = Fields::new(body, from, to);
    let mut tasks = Vec::new();
    while let Some((number, wire)) = fields.key()? {
        if (number, wire) != (1, LEN) {
            return None;
        }
        let (a, b) = fields.len_delimited()?;
        let mut task = Fields::new(body, a, b);
        let mut published = v1::Published::default();
        while let Some((number, wire)) = task.key()? {
            match (number, wire) {
                (1, VARINT) => published.task_id = task.varint()?,
                (2, VARINT) => published.duplicate = task.varint()? != 0,
                _ => return None,
            }
        }
        tasks.push(published);
    }
    Some(v1::PublishOk { tasks })
}

fn delivery(body: &Bytes, from: usize, to: usize) -> Option<v1::Delivery> {
    let mut fields = Fields::new(body, from, to);
    let mut d = v1::Delivery::default();
    while let Some((number, wire)) = fields.key()? {
        // Headers (9, a map) and anything else: prost's.
        match (number, wire) {
            (1, VARINT) => d.subscription_id = fields.varint()?,
            (2, VARINT) => d.task_id = fields.varint()?,
            (3, VARINT) => d.lease_token = fields.varint()?,
            // As prost reads uint32 and int32: the varint's low bits.
            (4, VARINT) => d.attempt = fields.varint()? as u32,
            (5, VARINT) => d.max_attempts = fields.varint()? as u32,
            (6, VARINT) => d.deadline_ms = fields.varint()?,
            (7, VARINT) => d.priority = fields.varint()? as i32,
            (8, LEN) => d.payload = fields.bytes()?,
            (10, VARINT) => d.created_at_ms = fields.varint()?,
            (11, LEN) => d.queue = fields.string()?,
            _ => return None,
        }
    }
    Some(d)
}

#[cfg(test)]
#[path = "wire_tests.rs"]
mod tests;
