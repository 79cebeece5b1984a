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
//! | `b'C'` + schedule name bytes     | schedule record               |
//! | `b'D'` + queue + `0x00` + key    | idempotency key record        |
//! | `b'M'` + `b"next_id"`            | id watermark (u64 big-endian) |
//! | `b'P'` + producer id bytes       | producer record (its numbered publishes) |
//! | `b'M'` + `b"raft_applied"`       | cluster mode: last applied Raft entry (term, node, index; u64 BE each) |
//! | `b'M'` + `b"cluster_id"`         | cluster mode: the cluster's id (UTF-8), set once |
//! | `b'Q'` + queue name bytes        | queue config record           |
//! | `b'R'` + id (u64 big-endian)     | retention record (result)     |
//! | `b'S'` + id (u64 big-endian)     | task state record             |
//! | `b'X'` + expiry (u64 BE) + `b'T'` + id | empty (expiry index: task record) |
//! | `b'X'` + expiry (u64 BE) + `b'D'` + `D` key minus its prefix | empty (expiry index: idempotency key) |
//! | `b'X'` + expiry (u64 BE) + `b'P'` + producer id bytes | empty (expiry index: producer record) |
//!
//! Queue names never contain `0x00`, so a `D` key splits unambiguously. Big-endian
//! expiry times make a forward scan of `X` visit the earliest expiries first, so the
//! retention sweep reads only what is due.
//! Big-endian ids make sled's byte order the id order, so a forward range scan of the
//! `S` prefix visits tasks oldest first.

use crate::model::TaskId;

/// Prefix of task state records.
pub(crate) const STATE: u8 = b'S';
/// Prefix of task body records.
pub(crate) const BODY: u8 = b'B';
/// Prefix of queue configuration records.
pub(crate) const QUEUE: u8 = b'Q';
/// Prefix of schedule records ("cron").
pub(crate) const SCHEDULE: u8 = b'C';

/// Prefix of retention records (the result of a succeeded task, the expiry of a
/// succeeded or dead one).
pub(crate) const RESULT: u8 = b'R';
/// Prefix of idempotency-key records.
pub(crate) const DEDUP: u8 = b'D';
/// Prefix of producer records.
pub(crate) const PRODUCER: u8 = b'P';
/// Prefix of the expiry index.
pub(crate) const EXPIRY: u8 = b'X';
/// Expiry-index kind byte of a task record.
pub(crate) const EXPIRY_TASK: u8 = b'T';
/// Expiry-index kind byte of an idempotency key.
pub(crate) const EXPIRY_DEDUP: u8 = b'D';
/// Expiry-index kind byte of a producer record.
pub(crate) const EXPIRY_PRODUCER: u8 = b'P';

/// The key of the id watermark: the next id never handed out before a restart.
pub(crate) const WATERMARK: &[u8] = b"Mnext_id";

/// The key of the journal floor: every journal record below it is in sled (written
/// by the writer before each checkpoint, made durable by the checkpoint's flush).
pub(crate) const JOURNAL_FLOOR: &[u8] = b"Mjournal_floor";

/// The key of the last Raft log entry applied to this store (cluster mode only),
/// written in the same batch as that entry's mutations.
pub(crate) const RAFT_APPLIED: &[u8] = b"Mraft_applied";

/// The key of the cluster's id (cluster mode only), written once by the first
/// `Mutation::ClusterId` applied.
pub(crate) const CLUSTER_ID: &[u8] = b"Mcluster_id";

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

/// Key of a schedule's record.
pub(crate) fn schedule(name: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(1 + name.len());
    key.push(SCHEDULE);
    key.extend_from_slice(name.as_bytes());
    key
}

/// The id of a task key (`S` or `B`), if the key has the right shape.
pub(crate) fn task_id(key: &[u8]) -> Option<TaskId> {
    let id: [u8; 8] = key.get(1..)?.try_into().ok()?;
    Some(TaskId::from_be_bytes(id))
}

/// The name of a `Q` or `C` key, if it is UTF-8.
pub(crate) fn queue_name(key: &[u8]) -> Option<&str> {
    std::str::from_utf8(key.get(1..)?).ok()
}

/// Key of a task's retention record.
pub(crate) fn result(id: TaskId) -> [u8; TASK_KEY_LEN] {
    task_key(RESULT, id)
}

/// Key of an idempotency key of `queue`.
pub(crate) fn dedup(queue: &str, key: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(2 + queue.len() + key.len());
    out.push(DEDUP);
    out.extend_from_slice(queue.as_bytes());
    out.push(0);
    out.extend_from_slice(key.as_bytes());
    out
}

/// Key of a producer's record.
pub(crate) fn producer(id: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(1 + id.len());
    key.push(PRODUCER);
    key.extend_from_slice(id.as_bytes());
    key
}

/// Expiry-index key of a task record due at `expires_ms`.
pub(crate) fn expiry_task(expires_ms: u64, id: TaskId) -> [u8; 18] {
    let mut key = [0u8; 18];
    key[0] = EXPIRY;
    key[1..9].copy_from_slice(&expires_ms.to_be_bytes());
    key[9] = EXPIRY_TASK;
    key[10..].copy_from_slice(&id.to_be_bytes());
    key
}

/// Expiry-index key of the idempotency key stored under `dedup_key` (a `D` key).
pub(crate) fn expiry_dedup(expires_ms: u64, dedup_key: &[u8]) -> Vec<u8> {
    let mut key = Vec::with_capacity(9 + dedup_key.len());
    key.push(EXPIRY);
    key.extend_from_slice(&expires_ms.to_be_bytes());
    key.extend_from_slice(dedup_key);
    key
}

/// Expiry-index key of the record of producer `id`.
pub(crate) fn expiry_producer(expires_ms: u64, id: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(10 + id.len());
    key.push(EXPIRY);
    key.extend_from_slice(&expires_ms.to_be_bytes());
    key.push(EXPIRY_PRODUCER);
    key.extend_from_slice(id.as_bytes());
    key
}

/// The exclusive end of the expiry-index entries due at or before `now`.
pub(crate) fn expiry_due_end(now: u64) -> [u8; 9] {
    let mut key = [0u8; 9];
    key[0] = EXPIRY;
    key[1..].copy_from_slice(&now.saturating_add(1).to_be_bytes());
    key
}

/// What an expiry-index entry points at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Expiring<'a> {
    /// A succeeded or dead task.
    Task(TaskId),
    /// An idempotency key: its full `D` key.
    Dedup(&'a [u8]),
    /// A producer record: the producer's id.
    Producer(&'a str),
}

/// Splits an expiry-index key into its due time and target.
pub(crate) fn parse_expiry(key: &[u8]) -> Option<(u64, Expiring<'_>)> {
    if key.first() != Some(&EXPIRY) {
        return None;
    }
    let due = u64::from_be_bytes(key.get(1..9)?.try_into().ok()?);
    match *key.get(9)? {
        EXPIRY_TASK => {
            let id: [u8; 8] = key.get(10..)?.try_into().ok()?;
            Some((due, Expiring::Task(TaskId::from_be_bytes(id))))
        }
        EXPIRY_DEDUP => Some((due, Expiring::Dedup(&key[9..]))),
        EXPIRY_PRODUCER => std::str::from_utf8(&key[10..])
            .ok()
            .map(|id| (due, Expiring::Producer(id))),
        _ => None,
    }
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
            assert_eq!(key[0], STATE);
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

    #[test]
    fn expiry_keys_sort_by_due_time_and_parse_back() {
        let d = dedup("jobs", "order-1");
        assert_eq!(d, b"Djobs\x00order-1");
        let a = expiry_task(5, 99);
        let b = expiry_dedup(6, &d);
        let c = expiry_task(256, 1);
        assert!(a.as_slice() < b.as_slice() && b.as_slice() < c.as_slice());
        assert!(c.as_slice() < expiry_due_end(256).as_slice());
        assert!(expiry_due_end(255).as_slice() <= c.as_slice());
        assert_eq!(parse_expiry(&a), Some((5, Expiring::Task(99))));
        assert_eq!(parse_expiry(&b), Some((6, Expiring::Dedup(&d[..]))));
        let p = expiry_producer(6, "p-1");
        assert!(b.as_slice() < p.as_slice() && p.as_slice() < c.as_slice());
        assert_eq!(parse_expiry(&p), Some((6, Expiring::Producer("p-1"))));
        assert_eq!(producer("p-1"), b"Pp-1");
        assert_eq!(parse_expiry(b"X1234"), None);
        assert_eq!(parse_expiry(&a[..17]), None);
        let mut bad = a;
        bad[9] = b'?';
        assert_eq!(parse_expiry(&bad), None);
    }
}
