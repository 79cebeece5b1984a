//! The encoding of a producer record (`P`): the numbered publishes the store remembers
//! for one producer, so that a publish sent again (its outcome unknown after a lost
//! connection or a leader change) is answered with the first one's tasks. What the
//! writer does with it is `writer/producers.rs`; here is only the record and its ring.
//!
//! Producer record (v1): `version u8, last_ms u64, floor u64, count u16`, then `count`
//! remembered publishes in ascending sequence order, each three unsigned LEB128
//! varints: its sequence's distance from the previous one's (from `floor` for the
//! first), its first task id's zigzag distance from the previous one's (from 0), and
//! its number of tasks. Varints keep the record at a few bytes per publish: it is
//! rewritten once per group that numbers a publish of the producer.

use std::collections::VecDeque;

use super::{DecodeError, Reader, VERSION};
use crate::model::{Millis, TaskId};

/// How many numbered publishes the store remembers per producer: a number older than
/// the oldest of them is refused (`SEQUENCE_TOO_OLD`).
pub const PRODUCER_RING: usize = 256;

/// One remembered publish.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Remembered {
    pub(crate) sequence: u64,
    /// The id of its first task; the others follow it (ids of one publish are
    /// allocated together).
    pub(crate) first: TaskId,
    pub(crate) tasks: u32,
}

/// What the store knows of one producer.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct ProducerRecord {
    /// The time of its latest numbered publish (the record expires a window later).
    pub(crate) last_ms: Millis,
    /// Numbers below it are no longer known either way.
    pub(crate) floor: u64,
    /// At most [`PRODUCER_RING`], ascending by sequence, all at or above `floor`.
    pub(crate) ring: VecDeque<Remembered>,
}

/// What a numbered publish is, against a producer record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Seen {
    /// Not applied before: apply it.
    New,
    /// Applied before, with these tasks.
    Repeat(Remembered),
    /// Below the floor: whether it was applied is forgotten.
    TooOld {
        /// The record's floor.
        floor: u64,
    },
}

impl ProducerRecord {
    /// Whether `sequence` was applied before, is new, or is too old to tell.
    pub(crate) fn seen(&self, sequence: u64) -> Seen {
        if sequence < self.floor {
            return Seen::TooOld { floor: self.floor };
        }
        match self.ring.binary_search_by_key(&sequence, |r| r.sequence) {
            Ok(i) => Seen::Repeat(self.ring[i]),
            Err(_) => Seen::New,
        }
    }

    /// Remembers a publish applied at `now`; past [`PRODUCER_RING`] publishes the
    /// oldest is forgotten and the floor moves above it.
    pub(crate) fn remember(&mut self, publish: Remembered, now: Millis) {
        debug_assert_eq!(self.seen(publish.sequence), Seen::New, "remembered twice");
        let at = self.ring.partition_point(|r| r.sequence < publish.sequence);
        self.ring.insert(at, publish);
        if self.ring.len() > PRODUCER_RING {
            let oldest = self.ring.pop_front().expect("the ring is not empty");
            self.floor = oldest.sequence + 1;
        }
        self.last_ms = self.last_ms.max(now);
        debug_assert!(self.ring.len() <= PRODUCER_RING);
        debug_assert!(self.ring.front().is_none_or(|r| r.sequence >= self.floor));
    }
}

/// Appends a producer record to `out`.
pub(crate) fn encode_producer(record: &ProducerRecord, out: &mut Vec<u8>) {
    debug_assert!(record.ring.len() <= PRODUCER_RING);
    out.reserve(19 + record.ring.len() * 4);
    out.push(VERSION);
    out.extend_from_slice(&record.last_ms.to_le_bytes());
    out.extend_from_slice(&record.floor.to_le_bytes());
    out.extend_from_slice(&(record.ring.len() as u16).to_le_bytes());
    let (mut sequence, mut first) = (record.floor, 0u64);
    for r in &record.ring {
        debug_assert!(r.sequence >= sequence, "the ring is ascending");
        put_varint(out, r.sequence - sequence);
        put_varint(out, zigzag(r.first.wrapping_sub(first) as i64));
        put_varint(out, u64::from(r.tasks));
        (sequence, first) = (r.sequence, r.first);
    }
}

/// Decodes a producer record.
pub(crate) fn decode_producer(bytes: &[u8]) -> Result<ProducerRecord, DecodeError> {
    let mut r = Reader::new(bytes)?;
    let last_ms = r.u64("last_ms")?;
    let floor = r.u64("floor")?;
    let count = u16::from_le_bytes(r.array("count")?) as usize;
    if count > PRODUCER_RING {
        return Err(DecodeError::new(format!(
            "{count} remembered publishes, more than {PRODUCER_RING}"
        )));
    }
    let mut ring = VecDeque::with_capacity(count);
    let (mut sequence, mut first) = (floor, 0u64);
    for _ in 0..count {
        let step = varint(&mut r, "sequence")?;
        if step == 0 && !ring.is_empty() {
            return Err(DecodeError::new("a sequence remembered twice"));
        }
        sequence = sequence
            .checked_add(step)
            .ok_or_else(|| DecodeError::new("sequence overflows"))?;
        first = first.wrapping_add(unzigzag(varint(&mut r, "first")?) as u64);
        let tasks = u32::try_from(varint(&mut r, "tasks")?)
            .map_err(|_| DecodeError::new("task count overflows u32"))?;
        ring.push_back(Remembered {
            sequence,
            first,
            tasks,
        });
    }
    r.finish()?;
    Ok(ProducerRecord {
        last_ms,
        floor,
        ring,
    })
}

fn zigzag(v: i64) -> u64 {
    ((v << 1) ^ (v >> 63)) as u64
}

fn unzigzag(v: u64) -> i64 {
    ((v >> 1) as i64) ^ -((v & 1) as i64)
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn varint(r: &mut Reader<'_>, field: &'static str) -> Result<u64, DecodeError> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let byte = r.u8(field)?;
        let bits = u64::from(byte & 0x7f);
        if shift == 63 && bits > 1 {
            return Err(DecodeError::new(format!("{field}: varint overflows u64")));
        }
        v |= bits << shift;
        if byte & 0x80 == 0 {
            return Ok(v);
        }
    }
    Err(DecodeError::new(format!(
        "{field}: varint longer than 10 bytes"
    )))
}

#[cfg(test)]
mod tests {
    use super::super::tests::check_damage;
    use super::*;

    fn publish(sequence: u64, first: TaskId, tasks: u32) -> Remembered {
        Remembered {
            sequence,
            first,
            tasks,
        }
    }

    #[test]
    fn producer_records_round_trip_and_reject_damage() {
        let mut rec = ProducerRecord::default();
        let encode = |rec: &ProducerRecord| {
            let mut out = Vec::new();
            encode_producer(rec, &mut out);
            out
        };
        assert_eq!(decode_producer(&encode(&rec)), Ok(rec.clone()));
        // Out of order, ids going down as well as up, a wide jump in sequence.
        for (seq, first, tasks) in [
            (3, 100, 1),
            (1, 90, 2),
            (2, 7, 1000),
            (u64::MAX - 1, u64::MAX - 5, 5),
        ] {
            rec.remember(publish(seq, first, tasks), seq);
        }
        let bytes = encode(&rec);
        assert_eq!(decode_producer(&bytes), Ok(rec.clone()));
        check_damage(&bytes, |b| decode_producer(b).map(drop));
    }

    #[test]
    fn the_ring_forgets_the_oldest_and_raises_the_floor() {
        let mut rec = ProducerRecord::default();
        // Sent in pairs swapped: 2, 1, 4, 3, ...
        for n in 0..PRODUCER_RING as u64 + 10 {
            let seq = if n % 2 == 0 { n + 2 } else { n };
            rec.remember(publish(seq, 1000 + seq, 1), 5);
        }
        assert_eq!(rec.ring.len(), PRODUCER_RING);
        let oldest = rec.ring.front().unwrap().sequence;
        assert_eq!(rec.floor, oldest);
        assert_eq!(rec.seen(oldest - 1), Seen::TooOld { floor: oldest });
        assert_eq!(
            rec.seen(oldest),
            Seen::Repeat(publish(oldest, 1000 + oldest, 1))
        );
        let newest = rec.ring.back().unwrap().sequence;
        assert_eq!(rec.seen(newest + 1), Seen::New);
        // A few bytes per remembered publish.
        let mut out = Vec::new();
        encode_producer(&rec, &mut out);
        assert!(out.len() < 19 + 4 * PRODUCER_RING, "{} bytes", out.len());
    }

    #[test]
    fn a_gap_left_by_a_publish_still_in_flight_stays_new() {
        let mut rec = ProducerRecord::default();
        rec.remember(publish(1, 10, 1), 1);
        rec.remember(publish(3, 12, 1), 2);
        assert_eq!(rec.seen(2), Seen::New);
        assert_eq!(rec.seen(0), Seen::New);
        assert_eq!(rec.last_ms, 2);
    }
}
