//! The key layout of the one sled tree: a one-byte prefix per record kind, then the
//! record's own key. Nothing here encodes or decodes values (that is `record.rs`).
//!
//! Everything lives in sled's default tree because a `sled::Batch` is atomic within a
//! single tree only: one tree lets one batch cover states, bodies, queues and the id
//! watermark at once.
//!
//! | key                              | value                         |
//! |----------------------------------|-------------------------------|
//! | `b'B'` + id (u64 big-endian)     | task body record              |
//! | `b'M'` + `b"next_id"`            | id watermark (u64 big-endian) |
//! | `b'Q'` + queue name bytes        | queue config record           |
//! | `b'S'` + id (u64 big-endian)     | task state record             |
//!
//! Big-endian ids make sled's byte order the id order, so a forward range scan of the
//! `S` prefix visits tasks oldest first.

use crate::model::TaskId;

/// Prefix of task state records.
pub(crate) const STATE: u8 = b'S';
/// Prefix of task body records.
pub(crate) const BODY: u8 = b'B';
/// Prefix of queue configuration records.
pub(crate) const QUEUE: u8 = b'Q';

/// The key of the id watermark: the next id never handed out before a restart.
pub(crate) const WATERMARK: &[u8] = b"Mnext_id";

/// Length of a task key: prefix + big-endian id.
pub(crate) const TASK_KEY_LEN: usize = 9;

/// Key of a task's state record.
pub(crate) fn state(id: TaskId) -> [u8; TASK_KEY_LEN] {
    task_key(STATE, id)
}

/// Key of a task's body record.
pub(crate) fn body(id: TaskId) -> [u8; TASK_KEY_LEN] {
    task_key(BODY, id)
}

fn task_key(prefix: u8, id: TaskId) -> [u8; TASK_KEY_LEN] {
    let mut key = [0u8; TASK_KEY_LEN];
    key[0] = prefix;
    key[1..].copy_from_slice(&id.to_be_bytes());
    key
}

/// Key of a queue's configuration record.
pub(crate) fn queue(name: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(1 + name.len());
    key.push(QUEUE);
    key.extend_from_slice(name.as_bytes());
    key
}

/// The half-open key range `[prefix, prefix + 1)` holding every key of one kind.
pub(crate) fn prefix_range(prefix: u8) -> std::ops::Range<[u8; 1]> {
    [prefix]..[prefix + 1]
}

/// The id of a task key (`S` or `B`), if the key has the right shape.
pub(crate) fn task_id(key: &[u8]) -> Option<TaskId> {
    let id: [u8; 8] = key.get(1..)?.try_into().ok()?;
    Some(TaskId::from_be_bytes(id))
}

/// The queue name of a `Q` key, if it is UTF-8.
pub(crate) fn queue_name(key: &[u8]) -> Option<&str> {
    std::str::from_utf8(key.get(1..)?).ok()
}

/// Lower-case hex of a key, for [`super::StoreError::Corrupt`].
pub(crate) fn hex(key: &[u8]) -> String {
    use std::fmt::Write;
    let mut out = String::with_capacity(key.len() * 2);
    for byte in key {
        let _ = write!(out, "{byte:02x}");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn task_keys_sort_by_id() {
        let ids = [1u64, 2, 255, 256, 65_536, u64::MAX - 1, u64::MAX];
        let keys: Vec<_> = ids.iter().map(|&id| state(id)).collect();
        assert!(keys.windows(2).all(|w| w[0] < w[1]));
        for (&id, key) in ids.iter().zip(&keys) {
            assert_eq!(task_id(key), Some(id));
            assert!(prefix_range(STATE).contains(key.first_chunk::<1>().unwrap()));
        }
    }

    #[test]
    fn malformed_keys_are_rejected() {
        assert_eq!(task_id(b"S"), None);
        assert_eq!(task_id(b"S12345678x"), None);
        assert_eq!(queue_name(b""), None);
        assert_eq!(queue_name(b"Q\xff"), None);
        assert_eq!(queue_name(b"Qjobs"), Some("jobs"));
        assert_eq!(hex(&[0x53, 0x00, 0xff]), "5300ff");
    }
}
