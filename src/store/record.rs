//! The on-disk encoding of task states, task bodies and queue configurations: a
//! hand-written compact binary format. Nothing here knows about sled or key layout
//! (that is `keys.rs`), and no protobuf is involved.
//!
//! Every record starts with a version byte ([`VERSION`]). Integers are fixed-width
//! little-endian; strings and byte strings are a `u32` length then the bytes; an
//! optional value is a `0`/`1` tag byte then the value. Decoding checks every length
//! against what is left, rejects unknown tags and trailing bytes, and never panics:
//! a bad record is a [`DecodeError`] that the caller turns into `StoreError::Corrupt`.
//!
//! State record (v1): `version u8, status u8, priority i32, attempts u32,
//! max_attempts u32, lease_ms u64, not_before_ms u64, created_ms u64, updated_ms u64,
//! queue str, last_error opt<str>`, then `expires_ms u64` only for a task that expires.
//!
//! Body record (v1): `version u8, created_ms u64, payload bytes, header_count u32,
//! (name str, value bytes)*, idempotency_key opt<str>`.
//!
//! Queue record (v1): `version u8, lease_ms u64, max_attempts u32, backoff_min_ms u64,
//! backoff_max_ms u64, max_length u64, paused bool(u8), result_ttl_ms u64,
//! dedup_window_ms u64`, then (written since schedules and flow control; a record
//! without them reads as their defaults) `max_in_flight u32, rate_limit u32,
//! rate_burst u32, drop_expired bool(u8)`, then (written since `keep_acked`; a record
//! without it reads as its default, `false`) `keep_acked bool(u8)`.

use std::sync::Arc;

use bytes::Bytes;

use crate::model::{Millis, QueueConfig, StatePatch, TaskBody, TaskState, TaskStatus};

mod body_ref;
mod producer;
mod retained;
mod schedule;
pub(crate) use body_ref::*;
pub use producer::PRODUCER_RING;
pub(crate) use producer::*;
pub(crate) use retained::*;
pub(crate) use schedule::*;

/// The record format version written by this build.
pub(crate) const VERSION: u8 = 1;

/// Why a record could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct DecodeError(pub(crate) String);

impl DecodeError {
    fn new(reason: impl Into<String>) -> DecodeError {
        DecodeError(reason.into())
    }
}

/// A field too long for its `u32` length prefix (over 4 GiB): the record is refused
/// rather than written truncated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct TooLarge {
    /// Which field.
    pub(crate) field: &'static str,
    /// Its length in bytes.
    pub(crate) len: usize,
}

/// A task state whose strings borrow from somewhere else: the stored bytes when
/// decoded, a [`TaskState`] when about to be encoded. Lets the writer patch a stored
/// state and the recovery scan intern queue names without allocating.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct StateView<'a> {
    pub(crate) status: TaskStatus,
    pub(crate) priority: i32,
    pub(crate) attempts: u32,
    pub(crate) max_attempts: u32,
    pub(crate) lease_ms: u64,
    pub(crate) not_before_ms: Millis,
    pub(crate) created_ms: Millis,
    pub(crate) updated_ms: Millis,
    pub(crate) queue: &'a str,
    pub(crate) last_error: Option<&'a str>,
    /// 0 = never expires (then the record carries no expiry field).
    pub(crate) expires_ms: Millis,
}

impl<'a> StateView<'a> {
    /// A view of an in-memory state.
    pub(crate) fn of(state: &'a TaskState) -> StateView<'a> {
        StateView {
            status: state.status,
            priority: state.priority,
            attempts: state.attempts,
            max_attempts: state.max_attempts,
            lease_ms: state.lease_ms,
            not_before_ms: state.not_before_ms,
            created_ms: state.created_ms,
            updated_ms: state.updated_ms,
            queue: &state.queue,
            last_error: state.last_error.as_deref(),
            expires_ms: state.expires_ms,
        }
    }

    /// Applies the `Some` fields of `patch` and its `updated_ms`.
    pub(crate) fn apply(&mut self, patch: &'a StatePatch) {
        if let Some(status) = patch.status {
            self.status = status;
        }
        if let Some(attempts) = patch.attempts {
            self.attempts = attempts;
        }
        if let Some(not_before_ms) = patch.not_before_ms {
            self.not_before_ms = not_before_ms;
        }
        if let Some(last_error) = &patch.last_error {
            self.last_error = last_error.as_deref();
        }
        self.updated_ms = patch.updated_ms;
    }

    /// An owned state sharing `queue` (the caller's interned copy of `self.queue`).
    pub(crate) fn to_state(self, queue: Arc<str>) -> TaskState {
        debug_assert_eq!(&*queue, self.queue);
        TaskState {
            queue,
            status: self.status,
            priority: self.priority,
            attempts: self.attempts,
            max_attempts: self.max_attempts,
            lease_ms: self.lease_ms,
            not_before_ms: self.not_before_ms,
            created_ms: self.created_ms,
            updated_ms: self.updated_ms,
            last_error: self.last_error.map(str::to_owned),
            expires_ms: self.expires_ms,
        }
    }
}

/// Appends the state record of `state` to `out`.
pub(crate) fn encode_state(state: &StateView<'_>, out: &mut Vec<u8>) -> Result<(), TooLarge> {
    out.reserve(48 + state.queue.len() + state.last_error.map_or(0, |e| e.len() + 4));
    out.push(VERSION);
    out.push(state.status as u8);
    out.extend_from_slice(&state.priority.to_le_bytes());
    out.extend_from_slice(&state.attempts.to_le_bytes());
    out.extend_from_slice(&state.max_attempts.to_le_bytes());
    for n in [
        state.lease_ms,
        state.not_before_ms,
        state.created_ms,
        state.updated_ms,
    ] {
        out.extend_from_slice(&n.to_le_bytes());
    }
    put_bytes(out, "queue", state.queue.as_bytes())?;
    put_opt_str(out, "last_error", state.last_error)?;
    if state.expires_ms != 0 {
        out.extend_from_slice(&state.expires_ms.to_le_bytes());
    }
    Ok(())
}

/// Where `encode_state` puts the fixed fields a patch changes, and where the fixed
/// part ends.
const STATUS_AT: usize = 1;
const ATTEMPTS_AT: usize = 6;
const NOT_BEFORE_AT: usize = 22;
const UPDATED_AT: usize = 38;
const FIXED_LEN: usize = 46;

/// Writes to `out` the state record `record` with `patch` applied, byte for byte what
/// `decode_state`, [`StateView::apply`] and `encode_state` write, without building the
/// view: the patch's fields are fixed-size, at fixed offsets. `None` (and `out` left to
/// the caller) for a patch that changes the last error, and for a record that is not
/// exactly what `encode_state` writes (`decode_state` would refuse it, or write it back
/// otherwise): the caller decodes then.
pub(crate) fn patch_state(record: &[u8], patch: &StatePatch, out: &mut Vec<u8>) -> Option<()> {
    if patch.last_error.is_some() || record.len() < FIXED_LEN || record[0] != VERSION {
        return None;
    }
    TaskStatus::from_u8(record[STATUS_AT])?;
    let len_at = |at: usize| -> Option<usize> {
        let bytes: [u8; 4] = record.get(at..at.checked_add(4)?)?.try_into().ok()?;
        Some(u32::from_le_bytes(bytes) as usize)
    };
    // The queue, the optional last error, then the expiry (8 bytes, never 0) or nothing.
    let mut at = FIXED_LEN + 4;
    let queue_end = at.checked_add(len_at(FIXED_LEN)?)?;
    std::str::from_utf8(record.get(at..queue_end)?).ok()?;
    at = queue_end;
    match *record.get(at)? {
        0 => at += 1,
        1 => {
            let from = at.checked_add(5)?;
            let to = from.checked_add(len_at(at + 1)?)?;
            std::str::from_utf8(record.get(from..to)?).ok()?;
            at = to;
        }
        _ => return None,
    }
    match record.len().checked_sub(at)? {
        0 => {}
        8 if record[at..] != [0; 8] => {}
        _ => return None,
    }
    out.clear();
    out.extend_from_slice(record);
    if let Some(status) = patch.status {
        out[STATUS_AT] = status as u8;
    }
    if let Some(attempts) = patch.attempts {
        out[ATTEMPTS_AT..ATTEMPTS_AT + 4].copy_from_slice(&attempts.to_le_bytes());
    }
    if let Some(not_before_ms) = patch.not_before_ms {
        out[NOT_BEFORE_AT..NOT_BEFORE_AT + 8].copy_from_slice(&not_before_ms.to_le_bytes());
    }
    out[UPDATED_AT..UPDATED_AT + 8].copy_from_slice(&patch.updated_ms.to_le_bytes());
    debug_assert_eq!(out.len(), record.len());
    debug_assert!(decode_state(out).is_ok());
    Some(())
}

/// Decodes a state record; its strings borrow from `record`.
pub(crate) fn decode_state(record: &[u8]) -> Result<StateView<'_>, DecodeError> {
    let mut r = Reader::new(record)?;
    let tag = r.u8("status")?;
    let status = TaskStatus::from_u8(tag)
        .ok_or_else(|| DecodeError::new(format!("unknown task status {tag}")))?;
    let view = StateView {
        status,
        priority: r.i32("priority")?,
        attempts: r.u32("attempts")?,
        max_attempts: r.u32("max_attempts")?,
        lease_ms: r.u64("lease_ms")?,
        not_before_ms: r.u64("not_before_ms")?,
        created_ms: r.u64("created_ms")?,
        updated_ms: r.u64("updated_ms")?,
        queue: r.str("queue")?,
        last_error: r.opt_str("last_error")?,
        // Written only for tasks that expire.
        expires_ms: if r.remaining() > 0 {
            r.u64("expires_ms")?
        } else {
            0
        },
    };
    r.finish()?;
    Ok(view)
}

/// Appends the body record of `body` to `out`.
pub(crate) fn encode_body(body: &TaskBody, out: &mut Vec<u8>) -> Result<(), TooLarge> {
    let headers_len: usize = body
        .headers
        .iter()
        .map(|(name, value)| 8 + name.len() + value.len())
        .sum();
    out.reserve(
        18 + body.payload.len()
            + headers_len
            + body.idempotency_key.as_ref().map_or(0, |k| 4 + k.len()),
    );
    out.push(VERSION);
    out.extend_from_slice(&body.created_ms.to_le_bytes());
    put_bytes(out, "payload", &body.payload)?;
    put_len(out, "headers", body.headers.len())?;
    for (name, value) in &body.headers {
        put_bytes(out, "header name", name.as_bytes())?;
        put_bytes(out, "header value", value)?;
    }
    put_opt_str(out, "idempotency_key", body.idempotency_key.as_deref())
}

/// Decodes a body record. The payload and header values are slices of `record`
/// (no copy); header names and the idempotency key are copied.
pub(crate) fn decode_body(record: Bytes) -> Result<TaskBody, DecodeError> {
    let mut r = Reader::new(&record)?;
    let created_ms = r.u64("created_ms")?;
    let payload = r.range("payload")?;
    let count = r.u32("header count")? as usize;
    // Each header takes at least 8 bytes, so a corrupt count cannot make us reserve
    // more than the record could hold.
    let mut headers = Vec::with_capacity(count.min(r.remaining() / 8));
    for _ in 0..count {
        let name = r.str("header name")?.to_owned();
        let value = r.range("header value")?;
        headers.push((name, value));
    }
    let idempotency_key = r.opt_str("idempotency_key")?.map(str::to_owned);
    r.finish()?;
    Ok(TaskBody {
        created_ms,
        payload: record.slice(payload),
        headers: headers
            .into_iter()
            .map(|(name, value)| (name, record.slice(value)))
            .collect(),
        idempotency_key,
    })
}

/// Where a body record's payload starts: version, created_ms, payload length.
pub(crate) const BODY_PAYLOAD_AT: usize = 13;

/// The payload length a body record's first [`BODY_PAYLOAD_AT`] bytes declare.
pub(crate) fn body_payload_len(head: &[u8]) -> Option<u64> {
    let mut r = Reader::new(head.get(..BODY_PAYLOAD_AT)?).ok()?;
    r.u64("created_ms").ok()?;
    r.u32("payload").ok().map(u64::from)
}

/// A body record for a preview, made of a body record's first bytes (`head`: through
/// a prefix of the payload) and its bytes after the payload (`tail`; `None` gives a
/// body without headers or key). `decode_body` reads it as any body record.
pub(crate) fn preview_record(head: &[u8], tail: Option<&[u8]>) -> Vec<u8> {
    let prefix = head.len().saturating_sub(BODY_PAYLOAD_AT);
    let mut out = Vec::with_capacity(head.len() + tail.map_or(5, <[u8]>::len));
    out.extend_from_slice(&head[..head.len().min(9)]);
    // A prefix of a payload that fitted a u32 fits one.
    out.extend_from_slice(&(prefix as u32).to_le_bytes());
    out.extend_from_slice(&head[head.len().min(BODY_PAYLOAD_AT)..]);
    match tail {
        Some(tail) => out.extend_from_slice(tail),
        // No headers, no idempotency key.
        None => out.extend_from_slice(&[0, 0, 0, 0, 0]),
    }
    debug_assert!(out.len() >= head.len());
    out
}

/// Appends the queue record of `config` to `out`.
pub(crate) fn encode_queue(config: &QueueConfig, out: &mut Vec<u8>) {
    out.reserve(68);
    out.push(VERSION);
    out.extend_from_slice(&config.lease_ms.to_le_bytes());
    out.extend_from_slice(&config.max_attempts.to_le_bytes());
    out.extend_from_slice(&config.backoff_min_ms.to_le_bytes());
    out.extend_from_slice(&config.backoff_max_ms.to_le_bytes());
    out.extend_from_slice(&config.max_length.to_le_bytes());
    out.push(u8::from(config.paused));
    out.extend_from_slice(&config.result_ttl_ms.to_le_bytes());
    out.extend_from_slice(&config.dedup_window_ms.to_le_bytes());
    out.extend_from_slice(&config.max_in_flight.to_le_bytes());
    out.extend_from_slice(&config.rate_limit.to_le_bytes());
    out.extend_from_slice(&config.rate_burst.to_le_bytes());
    out.push(u8::from(config.drop_expired));
    out.push(u8::from(config.keep_acked));
}

/// Decodes a queue record.
pub(crate) fn decode_queue(record: &[u8]) -> Result<QueueConfig, DecodeError> {
    let mut r = Reader::new(record)?;
    let mut config = QueueConfig {
        lease_ms: r.u64("lease_ms")?,
        max_attempts: r.u32("max_attempts")?,
        backoff_min_ms: r.u64("backoff_min_ms")?,
        backoff_max_ms: r.u64("backoff_max_ms")?,
        max_length: r.u64("max_length")?,
        paused: r.flag("paused")?,
        result_ttl_ms: r.u64("result_ttl_ms")?,
        dedup_window_ms: r.u64("dedup_window_ms")?,
        ..QueueConfig::default()
    };
    // Records written before flow control end here.
    if r.remaining() > 0 {
        config.max_in_flight = r.u32("max_in_flight")?;
        config.rate_limit = r.u32("rate_limit")?;
        config.rate_burst = r.u32("rate_burst")?;
        config.drop_expired = r.flag("drop_expired")?;
    }
    // Records written before `keep_acked` end here: it reads as its default.
    if r.remaining() > 0 {
        config.keep_acked = r.flag("keep_acked")?;
    }
    r.finish()?;
    Ok(config)
}

/// Decodes the id watermark (a bare big-endian u64, no version byte).
pub(crate) fn decode_watermark(record: &[u8]) -> Result<u64, DecodeError> {
    let bytes: [u8; 8] = record.try_into().map_err(|_| {
        DecodeError::new(format!("watermark is {} bytes, expected 8", record.len()))
    })?;
    Ok(u64::from_be_bytes(bytes))
}

fn put_len(out: &mut Vec<u8>, field: &'static str, len: usize) -> Result<(), TooLarge> {
    let len32 = u32::try_from(len).map_err(|_| TooLarge { field, len })?;
    out.extend_from_slice(&len32.to_le_bytes());
    Ok(())
}

fn put_bytes(out: &mut Vec<u8>, field: &'static str, bytes: &[u8]) -> Result<(), TooLarge> {
    put_len(out, field, bytes.len())?;
    out.extend_from_slice(bytes);
    Ok(())
}

fn put_opt_str(out: &mut Vec<u8>, field: &'static str, s: Option<&str>) -> Result<(), TooLarge> {
    match s {
        None => {
            out.push(0);
            Ok(())
        }
        Some(s) => {
            out.push(1);
            put_bytes(out, field, s.as_bytes())
        }
    }
}

/// A bounds-checked cursor over one record.
struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    /// Starts reading a record, checking its version byte.
    fn new(buf: &'a [u8]) -> Result<Reader<'a>, DecodeError> {
        let mut r = Reader { buf, pos: 0 };
        let version = r.u8("version")?;
        if version != VERSION {
            return Err(DecodeError::new(format!(
                "unknown record version {version} (this build reads {VERSION})"
            )));
        }
        Ok(r)
    }

    fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    fn take(&mut self, n: usize, field: &'static str) -> Result<&'a [u8], DecodeError> {
        if n > self.remaining() {
            return Err(DecodeError::new(format!(
                "truncated at {field}: needs {n} bytes at offset {}, {} left",
                self.pos,
                self.remaining()
            )));
        }
        let bytes = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(bytes)
    }

    fn array<const N: usize>(&mut self, field: &'static str) -> Result<[u8; N], DecodeError> {
        let bytes = self.take(N, field)?;
        // `take` returned exactly N bytes.
        let mut out = [0u8; N];
        out.copy_from_slice(bytes);
        Ok(out)
    }

    fn u8(&mut self, field: &'static str) -> Result<u8, DecodeError> {
        Ok(self.array::<1>(field)?[0])
    }

    fn u32(&mut self, field: &'static str) -> Result<u32, DecodeError> {
        self.array(field).map(u32::from_le_bytes)
    }

    fn i32(&mut self, field: &'static str) -> Result<i32, DecodeError> {
        self.array(field).map(i32::from_le_bytes)
    }

    fn u64(&mut self, field: &'static str) -> Result<u64, DecodeError> {
        self.array(field).map(u64::from_le_bytes)
    }

    fn flag(&mut self, field: &'static str) -> Result<bool, DecodeError> {
        match self.u8(field)? {
            0 => Ok(false),
            1 => Ok(true),
            tag => Err(DecodeError::new(format!(
                "{field}: bad tag {tag}, expected 0 or 1"
            ))),
        }
    }

    /// A length-prefixed byte string, as a range of the record.
    fn range(&mut self, field: &'static str) -> Result<std::ops::Range<usize>, DecodeError> {
        let len = self.u32(field)? as usize;
        let start = self.pos;
        self.take(len, field)?;
        Ok(start..self.pos)
    }

    fn str(&mut self, field: &'static str) -> Result<&'a str, DecodeError> {
        let len = self.u32(field)? as usize;
        let bytes = self.take(len, field)?;
        std::str::from_utf8(bytes)
            .map_err(|e| DecodeError::new(format!("{field}: invalid UTF-8 ({e})")))
    }

    fn opt_str(&mut self, field: &'static str) -> Result<Option<&'a str>, DecodeError> {
        if self.flag(field)? {
            self.str(field).map(Some)
        } else {
            Ok(None)
        }
    }

    /// Fails if bytes are left over: a longer record is not one we wrote.
    fn finish(self) -> Result<(), DecodeError> {
        match self.remaining() {
            0 => Ok(()),
            extra => Err(DecodeError::new(format!("{extra} trailing bytes"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(super) fn state(last_error: Option<&str>) -> TaskState {
        TaskState {
            queue: Arc::from("emails.high"),
            status: TaskStatus::Dead,
            priority: -7,
            attempts: 3,
            max_attempts: 9,
            lease_ms: 45_000,
            not_before_ms: 1_700_000_000_123,
            created_ms: 1_700_000_000_000,
            updated_ms: 1_700_000_000_999,
            last_error: last_error.map(str::to_owned),
            expires_ms: 0,
        }
    }

    fn body() -> TaskBody {
        TaskBody {
            created_ms: 1_700_000_000_000,
            payload: Bytes::from_static(b"{\"to\":\"a@example.com\"}"),
            headers: vec![
                (
                    "content-type".into(),
                    Bytes::from_static(b"application/json"),
                ),
                ("empty".into(), Bytes::new()),
                ("trace".into(), Bytes::from_static(&[0, 1, 2, 255])),
            ],
            idempotency_key: Some("order-42".into()),
        }
    }

    fn encoded_state(s: &TaskState) -> Vec<u8> {
        let mut out = Vec::new();
        encode_state(&StateView::of(s), &mut out).unwrap();
        out
    }

    fn encoded_body(b: &TaskBody) -> Vec<u8> {
        let mut out = Vec::new();
        encode_body(b, &mut out).unwrap();
        out
    }

    fn encoded_queue(q: &QueueConfig) -> Vec<u8> {
        let mut out = Vec::new();
        encode_queue(q, &mut out);
        out
    }

    /// Every strict prefix and every single-byte corruption of `record` must decode to
    /// an error or a value, never panic; every strict prefix must be an error.
    pub(super) fn check_damage(record: &[u8], decode: impl Fn(&[u8]) -> Result<(), DecodeError>) {
        assert_eq!(decode(record), Ok(()));
        for len in 0..record.len() {
            assert!(
                decode(&record[..len]).is_err(),
                "prefix of {len} bytes decoded"
            );
        }
        let mut longer = record.to_vec();
        longer.push(0);
        assert!(decode(&longer).is_err(), "trailing byte accepted");
        for i in 0..record.len() {
            for flip in [0x01, 0x80, 0xff] {
                let mut bad = record.to_vec();
                bad[i] ^= flip;
                let _ = decode(&bad);
            }
        }
    }

    #[test]
    fn state_round_trips() {
        for s in [
            state(None),
            state(Some("timeout: worker died")),
            state(Some("")),
        ] {
            let bytes = encoded_state(&s);
            let view = decode_state(&bytes).unwrap();
            assert_eq!(view.to_state(s.queue.clone()), s);
        }
    }

    #[test]
    fn an_expiry_is_stored_only_for_tasks_that_expire() {
        let plain = encoded_state(&state(None));
        let expiring = TaskState {
            expires_ms: 1_700_000_600_000,
            ..state(None)
        };
        let bytes = encoded_state(&expiring);
        assert_eq!(bytes.len(), plain.len() + 8);
        assert_eq!(
            decode_state(&bytes)
                .unwrap()
                .to_state(expiring.queue.clone()),
            expiring
        );
        assert!(decode_state(&bytes[..bytes.len() - 1]).is_err());
    }

    #[test]
    fn body_round_trips() {
        for b in [body(), TaskBody::default()] {
            let decoded = decode_body(Bytes::from(encoded_body(&b))).unwrap();
            assert_eq!(decoded, b);
        }
    }

    #[test]
    fn queue_round_trips() {
        let paused = QueueConfig {
            paused: true,
            max_length: 10_000,
            ..QueueConfig::default()
        };
        for q in [QueueConfig::default(), paused] {
            assert_eq!(decode_queue(&encoded_queue(&q)).unwrap(), q);
        }
    }

    #[test]
    fn patch_applies_only_set_fields() {
        let s = state(Some("old"));
        let bytes = encoded_state(&s);
        let mut view = decode_state(&bytes).unwrap();
        let patch = StatePatch {
            attempts: Some(4),
            last_error: Some(None),
            updated_ms: 42,
            ..StatePatch::default()
        };
        view.apply(&patch);
        let patched = view.to_state(s.queue.clone());
        assert_eq!(
            patched,
            TaskState {
                attempts: 4,
                last_error: None,
                updated_ms: 42,
                ..s
            }
        );
    }

    #[test]
    fn damaged_records_are_errors_not_panics() {
        let s = encoded_state(&state(Some("boom")));
        check_damage(&s, |b| decode_state(b).map(drop));
        let b = encoded_body(&body());
        check_damage(&b, |r| decode_body(Bytes::copy_from_slice(r)).map(drop));
        let q = encoded_queue(&QueueConfig::default());
        // A record of the first layout (before flow control) still reads.
        check_damage(&q[..OLD_QUEUE_LEN], |r| decode_queue(r).map(drop));
        // So does one of the flow-control layout (before `keep_acked`).
        assert!(decode_queue(&q[..FLOW_QUEUE_LEN]).is_ok());
        for len in (OLD_QUEUE_LEN + 1)..q.len() {
            if len == FLOW_QUEUE_LEN {
                continue;
            }
            assert!(
                decode_queue(&q[..len]).is_err(),
                "prefix of {len} bytes decoded"
            );
        }
    }

    /// Length of a queue record written before `keep_acked`.
    const FLOW_QUEUE_LEN: usize = 67;

    /// Length of a queue record written before flow control.
    const OLD_QUEUE_LEN: usize = 54;

    #[test]
    fn queue_flow_settings_round_trip_and_old_records_read_as_defaults() {
        let q = QueueConfig {
            max_in_flight: 3,
            rate_limit: 50,
            rate_burst: 5,
            drop_expired: true,
            ..QueueConfig::default()
        };
        let bytes = encoded_queue(&q);
        assert_eq!(decode_queue(&bytes).unwrap(), q);
        let old = decode_queue(&bytes[..OLD_QUEUE_LEN]).unwrap();
        assert_eq!(old, QueueConfig::default());
        let mut bad = bytes.clone();
        bad[FLOW_QUEUE_LEN - 1] = 7;
        assert!(decode_queue(&bad).unwrap_err().0.contains("drop_expired"));
    }

    #[test]
    fn keep_acked_round_trips_and_older_records_read_it_as_false() {
        let q = QueueConfig {
            keep_acked: true,
            drop_expired: true,
            ..QueueConfig::default()
        };
        let bytes = encoded_queue(&q);
        assert_eq!(bytes.len(), FLOW_QUEUE_LEN + 1);
        assert_eq!(decode_queue(&bytes).unwrap(), q);
        let before = decode_queue(&bytes[..FLOW_QUEUE_LEN]).unwrap();
        assert_eq!(
            before,
            QueueConfig {
                keep_acked: false,
                ..q
            }
        );
        let mut bad = bytes.clone();
        *bad.last_mut().unwrap() = 7;
        assert!(decode_queue(&bad).unwrap_err().0.contains("keep_acked"));
    }

    #[test]
    fn specific_corruptions_are_named() {
        let mut s = encoded_state(&state(None));
        s[0] = 2;
        assert!(decode_state(&s).unwrap_err().0.contains("version 2"));
        s[0] = VERSION;
        s[1] = 9;
        assert!(decode_state(&s).unwrap_err().0.contains("status 9"));

        // A header count claiming billions of headers fails cleanly.
        let mut b = encoded_body(&TaskBody::default());
        b[13..17].copy_from_slice(&u32::MAX.to_le_bytes()); // after version, created_ms, payload
        assert!(decode_body(Bytes::from(b))
            .unwrap_err()
            .0
            .contains("truncated"));

        let mut q = encoded_queue(&QueueConfig::default());
        q[37] = 2; // version 1 + four u64 + one u32 before `paused`
        assert!(decode_queue(&q).unwrap_err().0.contains("paused"));

        assert_eq!(decode_watermark(&7u64.to_be_bytes()), Ok(7));
        assert!(decode_watermark(b"short").is_err());
    }
}

#[cfg(test)]
mod patch_tests {
    //! `patch_state` against decoding, applying and encoding again.
    use super::*;
    use proptest::prelude::*;

    fn any_state() -> impl Strategy<Value = TaskState> {
        (
            (0u8..3, any::<i32>(), any::<u32>(), any::<u32>()),
            (any::<u64>(), any::<u64>(), any::<u64>(), any::<u64>()),
            ("[a-z.é]{0,12}", proptest::option::of("[ -~é]{0,16}")),
            prop_oneof![Just(0u64), 1u64..],
        )
            .prop_map(
                |(
                    (status, priority, attempts, max),
                    (lease, nb, created, updated),
                    (queue, last_error),
                    expires_ms,
                )| TaskState {
                    queue: Arc::from(queue.as_str()),
                    status: TaskStatus::from_u8(status).unwrap(),
                    priority,
                    attempts,
                    max_attempts: max,
                    lease_ms: lease,
                    not_before_ms: nb,
                    created_ms: created,
                    updated_ms: updated,
                    last_error,
                    expires_ms,
                },
            )
    }

    fn any_patch() -> impl Strategy<Value = StatePatch> {
        (
            proptest::option::of(0u8..3),
            proptest::option::of(any::<u32>()),
            proptest::option::of(any::<u64>()),
            proptest::option::of(proptest::option::of("[a-z]{0,8}")),
            any::<u64>(),
        )
            .prop_map(
                |(status, attempts, not_before_ms, last_error, updated_ms)| StatePatch {
                    status: status.and_then(TaskStatus::from_u8),
                    attempts,
                    not_before_ms,
                    last_error,
                    updated_ms,
                },
            )
    }

    /// What the decoding path writes for `record` and `patch`, if it decodes.
    fn by_decoding(record: &[u8], patch: &StatePatch) -> Option<Vec<u8>> {
        let mut view = decode_state(record).ok()?;
        view.apply(patch);
        let mut out = Vec::new();
        encode_state(&view, &mut out).unwrap();
        Some(out)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        /// Every record `encode_state` writes is patched in place, to the same bytes,
        /// unless the patch changes the last error.
        #[test]
        fn a_patch_in_place_writes_what_decoding_writes(s in any_state(), patch in any_patch()) {
            let mut record = Vec::new();
            encode_state(&StateView::of(&s), &mut record).unwrap();
            let mut out = Vec::new();
            match patch_state(&record, &patch, &mut out) {
                Some(()) => prop_assert_eq!(Some(out), by_decoding(&record, &patch)),
                None => prop_assert!(patch.last_error.is_some(), "not patched in place"),
            }
        }

        /// A damaged record is patched in place only to what decoding writes.
        #[test]
        fn a_damaged_record_is_patched_in_place_only_as_decoding_patches_it(
            s in any_state(), patch in any_patch(), at in any::<usize>(), byte in any::<u8>(), cut in any::<bool>()
        ) {
            let mut record = Vec::new();
            encode_state(&StateView::of(&s), &mut record).unwrap();
            let at = at % record.len();
            if cut {
                record.truncate(at);
            } else {
                record[at] = byte;
            }
            let mut out = Vec::new();
            if patch_state(&record, &patch, &mut out).is_some() {
                prop_assert_eq!(Some(out), by_decoding(&record, &patch));
            }
        }
    }

    /// A record with an explicit zero expiry (never written, but decodable) is left to
    /// decoding, which writes it without.
    #[test]
    fn an_explicit_zero_expiry_is_left_to_decoding() {
        let mut record = Vec::new();
        encode_state(&StateView::of(&super::tests::state(None)), &mut record).unwrap();
        record.extend_from_slice(&[0; 8]);
        let patch = StatePatch {
            attempts: Some(1),
            updated_ms: 5,
            ..StatePatch::default()
        };
        assert!(patch_state(&record, &patch, &mut Vec::new()).is_none());
        assert_eq!(
            by_decoding(&record, &patch).unwrap().len(),
            record.len() - 8
        );
    }
}
