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
use squall_proto::fields::{Fields, LEN, VARINT};

use crate::server::msg::{ReqId, Request, TaskSpec};

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
    debug_assert!(r.at_end(), "every byte read");
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
