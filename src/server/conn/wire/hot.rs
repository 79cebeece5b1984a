//! The two requests of the hot path, read field by field from the frame's bytes: a
//! publish whose tasks carry no headers, and an ack. Straight into the domain
//! [`Request`], without prost's intermediate `v1` structs (a publish's tasks were
//! decoded into one vector and converted into another).
//!
//! Only the canonical form is taken: a field this does not know, a header, an
//! operation set twice, a wire type other than the schema's or anything malformed
//! returns `None`, and the frame goes to prost, which decides (and names the error).
//! So the fast path never accepts what prost would refuse and, for what it takes,
//! yields what prost would (`hot_tests` checks both on arbitrary requests and bytes).

use bytes::Bytes;

use crate::server::msg::{ReqId, Request, TaskSpec};

/// Protobuf wire types, also for the hand-written encoders in `wire.rs` (which imports
/// them from here: server files never import each other both ways).
pub(super) const VARINT: u64 = 0;
pub(super) const LEN: u64 = 2;

/// A publish (tasks without headers) or an ack, with its request id; `None` for
/// anything else.
pub(super) fn decode(body: &Bytes) -> Option<(ReqId, Request)> {
    let mut r = Fields::new(body, 0, body.len());
    let mut id = 0;
    let mut op = None;
    while let Some((field, wire_type)) = r.key()? {
        match (field, wire_type) {
            (1, VARINT) => id = r.varint()?,
            (11, LEN) if op.is_none() => {
                let (from, to) = r.len_delimited()?;
                op = Some(publish(body, from, to)?);
            }
            (14, LEN) if op.is_none() => {
                let (from, to) = r.len_delimited()?;
                op = Some(ack(body, from, to)?);
            }
            _ => return None,
        }
    }
    debug_assert!(r.pos == body.len(), "every byte read");
    Some((id, op?))
}

fn publish(body: &Bytes, from: usize, to: usize) -> Option<Request> {
    let mut r = Fields::new(body, from, to);
    let mut tasks = Vec::with_capacity(1);
    let mut producer_id = String::new();
    let mut sequence = 0;
    while let Some((field, wire_type)) = r.key()? {
        match (field, wire_type) {
            (1, LEN) => {
                let (from, to) = r.len_delimited()?;
                tasks.push(task_spec(body, from, to)?);
            }
            (2, LEN) => producer_id = r.string()?,
            (3, VARINT) => sequence = r.varint()?,
            _ => return None,
        }
    }
    Some(Request::Publish {
        tasks,
        numbered: (!producer_id.is_empty()).then_some((producer_id, sequence)),
    })
}

fn task_spec(body: &Bytes, from: usize, to: usize) -> Option<TaskSpec> {
    let mut r = Fields::new(body, from, to);
    let mut t = TaskSpec {
        queue: String::new(),
        payload: Bytes::new(),
        headers: Vec::new(),
        priority: 0,
        delay_ms: 0,
        run_at_ms: 0,
        max_attempts: 0,
        lease_ms: 0,
        idempotency_key: String::new(),
        expires_in_ms: 0,
    };
    while let Some((field, wire_type)) = r.key()? {
        match (field, wire_type) {
            (1, LEN) => t.queue = r.string()?,
            (2, LEN) => t.payload = r.bytes()?,
            // prost reads int32 and uint32 from a varint by truncation.
            (4, VARINT) => t.priority = r.varint()? as i32,
            (5, VARINT) => t.delay_ms = r.varint()?,
            (6, VARINT) => t.run_at_ms = r.varint()?,
            (7, VARINT) => t.max_attempts = r.varint()? as u32,
            (8, VARINT) => t.lease_ms = r.varint()?,
            (9, LEN) => t.idempotency_key = r.string()?,
            (10, VARINT) => t.expires_in_ms = r.varint()?,
            // Headers (3) and anything unknown: prost's.
            _ => return None,
        }
    }
    Some(t)
}

fn ack(body: &Bytes, from: usize, to: usize) -> Option<Request> {
    let mut r = Fields::new(body, from, to);
    let (mut task, mut token, mut result) = (0, 0, Bytes::new());
    while let Some((field, wire_type)) = r.key()? {
        match (field, wire_type) {
            (1, VARINT) => task = r.varint()?,
            (2, VARINT) => token = r.varint()?,
            (3, LEN) => result = r.bytes()?,
            _ => return None,
        }
    }
    Some(Request::Ack {
        task,
        token,
        result,
    })
}

/// A reader of one message's fields, `body[pos..end]`.
struct Fields<'a> {
    body: &'a Bytes,
    pos: usize,
    end: usize,
}

impl<'a> Fields<'a> {
    fn new(body: &'a Bytes, pos: usize, end: usize) -> Fields<'a> {
        debug_assert!(pos <= end && end <= body.len());
        Fields { body, pos, end }
    }

    /// The next field's number and wire type; `Some(None)` at the end of the message,
    /// `None` for a key prost would refuse.
    fn key(&mut self) -> Option<Option<(u64, u64)>> {
        if self.pos == self.end {
            return Some(None);
        }
        let key = self.varint()?;
        let field = key >> 3;
        if key > u64::from(u32::MAX) || field == 0 {
            return None;
        }
        Some(Some((field, key & 7)))
    }

    /// A varint of at most ten bytes whose value fits 64 bits (as prost requires).
    /// Not prost's own `decode_key`/`decode_varint` on a slice: through them the
    /// broker ran 1.9% more instructions per message (callgrind, 20,000 messages).
    fn varint(&mut self) -> Option<u64> {
        let bytes = &self.body[self.pos..self.end];
        let mut value = 0u64;
        for (i, &b) in bytes.iter().enumerate().take(10) {
            if i == 9 && b > 1 {
                return None;
            }
            value |= u64::from(b & 0x7f) << (7 * i);
            if b < 0x80 {
                self.pos += i + 1;
                return Some(value);
            }
        }
        None
    }

    /// A length-delimited field's range of `body`.
    fn len_delimited(&mut self) -> Option<(usize, usize)> {
        let len = usize::try_from(self.varint()?).ok()?;
        let from = self.pos;
        let to = from.checked_add(len).filter(|&to| to <= self.end)?;
        self.pos = to;
        Some((from, to))
    }

    fn bytes(&mut self) -> Option<Bytes> {
        let (from, to) = self.len_delimited()?;
        Some(self.body.slice(from..to))
    }

    /// A string field; `None` unless it is UTF-8 (prost refuses the frame then).
    fn string(&mut self) -> Option<String> {
        let (from, to) = self.len_delimited()?;
        std::str::from_utf8(&self.body[from..to])
            .ok()
            .map(str::to_owned)
    }
}
