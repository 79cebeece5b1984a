//! The encoding of a `B` record that points at a task's body instead of holding it: the
//! body (an encoded body record, see the parent module) lives in a journal segment or
//! a payload file, and sled keeps only where. Nothing here reads files (`payload.rs`).
//!
//! Body reference (its own tag instead of the version byte, so that a `B` value is
//! either a whole body record, as data directories written before it hold, or this):
//! `tag u8 (0x80), kind u8 (1 journal segment, 2 payload file), file u64, offset u64,
//! len u32, crc32 u32` (26 bytes). `file` is the journal segment's first record number
//! or the payload file's number; `offset` is where the body's bytes start in it; the
//! checksum covers those `len` bytes, so a read that finds other bytes says so.

use super::{DecodeError, VERSION};

/// First byte of a body reference.
const TAG: u8 = 0x80;
const KIND_JOURNAL: u8 = 1;
const KIND_PAYLOAD: u8 = 2;
/// Bytes of an encoded body reference.
pub(crate) const BODY_REF_LEN: usize = 26;

/// Which file holds a body.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) enum BodyFile {
    /// The journal segment whose first record has this number.
    Journal(u64),
    /// The payload file with this number.
    Payload(u64),
}

/// Where a body's bytes are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct BodyRef {
    pub(crate) file: BodyFile,
    pub(crate) offset: u64,
    pub(crate) len: u32,
    pub(crate) crc: u32,
}

/// What a `B` value holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum StoredBody<'a> {
    /// The whole body record (data directories from before body references).
    Inline(&'a [u8]),
    /// A reference to the body in a file.
    Ref(BodyRef),
}

impl BodyRef {
    pub(crate) fn encode(&self) -> [u8; BODY_REF_LEN] {
        let mut out = [0u8; BODY_REF_LEN];
        out[0] = TAG;
        let (kind, file) = match self.file {
            BodyFile::Journal(n) => (KIND_JOURNAL, n),
            BodyFile::Payload(n) => (KIND_PAYLOAD, n),
        };
        out[1] = kind;
        out[2..10].copy_from_slice(&file.to_le_bytes());
        out[10..18].copy_from_slice(&self.offset.to_le_bytes());
        out[18..22].copy_from_slice(&self.len.to_le_bytes());
        out[22..26].copy_from_slice(&self.crc.to_le_bytes());
        out
    }
}

/// Whether a `B` value is a whole body record (as the journal carries every body).
pub(crate) fn is_inline_body(value: &[u8]) -> bool {
    value.first() == Some(&VERSION)
}

/// Decodes a `B` value.
pub(crate) fn decode_stored_body(value: &[u8]) -> Result<StoredBody<'_>, DecodeError> {
    match value.first() {
        Some(&VERSION) => Ok(StoredBody::Inline(value)),
        Some(&TAG) => {
            let bytes: &[u8; BODY_REF_LEN] = value.try_into().map_err(|_| {
                DecodeError(format!(
                    "body reference is {} bytes, expected {BODY_REF_LEN}",
                    value.len()
                ))
            })?;
            let u64_at = |at: usize| {
                let mut b = [0u8; 8];
                b.copy_from_slice(&bytes[at..at + 8]);
                u64::from_le_bytes(b)
            };
            let u32_at = |at: usize| {
                let mut b = [0u8; 4];
                b.copy_from_slice(&bytes[at..at + 4]);
                u32::from_le_bytes(b)
            };
            let file = match bytes[1] {
                KIND_JOURNAL => BodyFile::Journal(u64_at(2)),
                KIND_PAYLOAD => BodyFile::Payload(u64_at(2)),
                kind => return Err(DecodeError(format!("unknown body file kind {kind}"))),
            };
            Ok(StoredBody::Ref(BodyRef {
                file,
                offset: u64_at(10),
                len: u32_at(18),
                crc: u32_at(22),
            }))
        }
        Some(tag) => Err(DecodeError(format!("unknown body record tag {tag}"))),
        None => Err(DecodeError("empty body record".into())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn body_refs_round_trip_and_bad_ones_are_errors() {
        for file in [BodyFile::Journal(7), BodyFile::Payload(u64::MAX)] {
            let r = BodyRef {
                file,
                offset: 1 << 40,
                len: 65_536,
                crc: 0xdead_beef,
            };
            let encoded = r.encode();
            assert!(!is_inline_body(&encoded));
            assert_eq!(decode_stored_body(&encoded), Ok(StoredBody::Ref(r)));
            assert!(decode_stored_body(&encoded[..25]).is_err());
            let mut bad = encoded;
            bad[1] = 9;
            assert!(decode_stored_body(&bad).is_err());
        }
        assert_eq!(
            decode_stored_body(&[VERSION, 1, 2]),
            Ok(StoredBody::Inline(&[VERSION, 1, 2]))
        );
        assert!(decode_stored_body(&[]).is_err());
        assert!(decode_stored_body(&[0x42]).is_err());
    }
}
