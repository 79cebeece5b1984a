//! The encoding of the records kept for task status and idempotent publish: the
//! retention record (`R`: when a succeeded or dead task's record expires, and the
//! ack's result) and the idempotency-key record (`D`: the task a key created and when
//! the key expires). Same conventions as the parent module: a version byte, fixed-width
//! little-endian integers, length-prefixed bytes, strict decoding.
//!
//! Retention record (v1): `version u8, expires_ms u64, result bytes`.
//!
//! Idempotency-key record (v1): `version u8, task_id u64, expires_ms u64`.

use std::ops::Range;

use super::{put_bytes, DecodeError, Reader, TooLarge, VERSION};
use crate::model::{Millis, TaskId};

/// A decoded retention record; the result is a range of the record's bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RetainedView {
    pub(crate) expires_ms: Millis,
    pub(crate) result: Range<usize>,
}

/// Appends a retention record to `out`.
pub(crate) fn encode_retained(
    expires_ms: Millis,
    result: &[u8],
    out: &mut Vec<u8>,
) -> Result<(), TooLarge> {
    out.reserve(13 + result.len());
    out.push(VERSION);
    out.extend_from_slice(&expires_ms.to_le_bytes());
    put_bytes(out, "result", result)
}

/// Decodes a retention record.
pub(crate) fn decode_retained(record: &[u8]) -> Result<RetainedView, DecodeError> {
    let mut r = Reader::new(record)?;
    let view = RetainedView {
        expires_ms: r.u64("expires_ms")?,
        result: r.range("result")?,
    };
    r.finish()?;
    Ok(view)
}

/// Just the expiry of a retention record (the sweep needs nothing else).
pub(crate) fn retained_expiry(record: &[u8]) -> Result<Millis, DecodeError> {
    decode_retained(record).map(|v| v.expires_ms)
}

/// An idempotency-key record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct DedupRecord {
    /// The task the first publish with the key created.
    pub(crate) task: TaskId,
    /// When the key is forgotten.
    pub(crate) expires_ms: Millis,
}

/// The encoded idempotency-key record.
pub(crate) fn encode_dedup(record: DedupRecord) -> [u8; 17] {
    let mut out = [0u8; 17];
    out[0] = VERSION;
    out[1..9].copy_from_slice(&record.task.to_le_bytes());
    out[9..].copy_from_slice(&record.expires_ms.to_le_bytes());
    out
}

/// Decodes an idempotency-key record.
pub(crate) fn decode_dedup(record: &[u8]) -> Result<DedupRecord, DecodeError> {
    let mut r = Reader::new(record)?;
    let rec = DedupRecord {
        task: r.u64("task_id")?,
        expires_ms: r.u64("expires_ms")?,
    };
    r.finish()?;
    Ok(rec)
}

#[cfg(test)]
mod tests {
    use super::super::tests::check_damage;
    use super::*;

    #[test]
    fn retained_records_round_trip_and_reject_damage() {
        for result in [&b""[..], b"{\"ok\":true}", &[0, 255, 7]] {
            let mut out = Vec::new();
            encode_retained(1_700_000_000_000, result, &mut out).unwrap();
            let view = decode_retained(&out).unwrap();
            assert_eq!(view.expires_ms, 1_700_000_000_000);
            assert_eq!(&out[view.result.clone()], result);
            assert_eq!(retained_expiry(&out), Ok(1_700_000_000_000));
            check_damage(&out, |b| decode_retained(b).map(drop));
        }
    }

    #[test]
    fn dedup_records_round_trip_and_reject_damage() {
        let rec = DedupRecord {
            task: 42,
            expires_ms: 9_000,
        };
        let bytes = encode_dedup(rec);
        assert_eq!(decode_dedup(&bytes), Ok(rec));
        check_damage(&bytes, |b| decode_dedup(b).map(drop));
    }
}
