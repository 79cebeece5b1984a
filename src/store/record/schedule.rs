//! The encoding of schedule records (`C` + name): a periodic schedule's definition and
//! how far it got. Same conventions as the parent module: a version byte, fixed-width
//! little-endian integers, length-prefixed strings and bytes, strict decoding. The name
//! is the key's; nothing here knows the key layout.
//!
//! Schedule record (v1): `version u8, queue str, cron str, tz str, payload bytes,
//! header_count u32, (name str, value bytes)*, priority i32, max_attempts u32,
//! catch_up u8, paused bool(u8), since_ms u64, last_run_ms u64, last_task u64,
//! created_ms u64`.

use std::sync::Arc;

use bytes::Bytes;

use super::{put_bytes, put_len, DecodeError, Reader, TooLarge, VERSION};
use crate::model::{CatchUp, Schedule};

/// Appends the record of `s` (all but its name) to `out`.
pub(crate) fn encode_schedule(s: &Schedule, out: &mut Vec<u8>) -> Result<(), TooLarge> {
    out.push(VERSION);
    put_bytes(out, "queue", s.queue.as_bytes())?;
    put_bytes(out, "cron", s.cron.as_bytes())?;
    put_bytes(out, "tz", s.tz.as_bytes())?;
    put_bytes(out, "payload", &s.payload)?;
    put_len(out, "headers", s.headers.len())?;
    for (name, value) in &s.headers {
        put_bytes(out, "header name", name.as_bytes())?;
        put_bytes(out, "header value", value)?;
    }
    out.extend_from_slice(&s.priority.to_le_bytes());
    out.extend_from_slice(&s.max_attempts.to_le_bytes());
    out.push(s.catch_up as u8);
    out.push(u8::from(s.paused));
    for t in [s.since_ms, s.last_run_ms, s.last_task, s.created_ms] {
        out.extend_from_slice(&t.to_le_bytes());
    }
    Ok(())
}

/// Decodes the record of the schedule called `name`.
pub(crate) fn decode_schedule(name: &str, record: &[u8]) -> Result<Schedule, DecodeError> {
    let mut r = Reader::new(record)?;
    let queue: Arc<str> = Arc::from(r.str("queue")?);
    let cron = r.str("cron")?.to_owned();
    let tz = r.str("tz")?.to_owned();
    let payload = Bytes::copy_from_slice(&record[r.range("payload")?]);
    let count = r.u32("header count")? as usize;
    let mut headers = Vec::with_capacity(count.min(r.remaining() / 8));
    for _ in 0..count {
        let name = r.str("header name")?.to_owned();
        let value = Bytes::copy_from_slice(&record[r.range("header value")?]);
        headers.push((name, value));
    }
    let priority = r.i32("priority")?;
    let max_attempts = r.u32("max_attempts")?;
    let tag = r.u8("catch_up")?;
    let catch_up = CatchUp::from_u8(tag)
        .ok_or_else(|| DecodeError::new(format!("catch_up: unknown tag {tag}")))?;
    let schedule = Schedule {
        name: Arc::from(name),
        queue,
        cron,
        tz,
        payload,
        headers,
        priority,
        max_attempts,
        catch_up,
        paused: r.flag("paused")?,
        since_ms: r.u64("since_ms")?,
        last_run_ms: r.u64("last_run_ms")?,
        last_task: r.u64("last_task")?,
        created_ms: r.u64("created_ms")?,
    };
    r.finish()?;
    Ok(schedule)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schedule() -> Schedule {
        Schedule {
            name: Arc::from("nightly"),
            queue: Arc::from("reports"),
            cron: "0 30 2 * * *".into(),
            tz: "Asia/Shanghai".into(),
            payload: Bytes::from_static(b"{\"kind\":\"daily\"}"),
            headers: vec![("a".into(), Bytes::from_static(&[0, 255]))],
            priority: -3,
            max_attempts: 7,
            catch_up: CatchUp::All,
            paused: true,
            since_ms: 1,
            last_run_ms: 2,
            last_task: 3,
            created_ms: 4,
        }
    }

    #[test]
    fn a_schedule_record_round_trips() {
        let s = schedule();
        let mut out = Vec::new();
        encode_schedule(&s, &mut out).unwrap();
        assert_eq!(decode_schedule("nightly", &out).unwrap(), s);
    }

    #[test]
    fn damaged_schedule_records_are_errors() {
        let mut out = Vec::new();
        encode_schedule(&schedule(), &mut out).unwrap();
        for cut in 0..out.len() {
            assert!(decode_schedule("n", &out[..cut]).is_err(), "cut at {cut}");
        }
        let mut long = out.clone();
        long.push(0);
        assert!(decode_schedule("n", &long).is_err());
        let tag = out.len() - 34;
        assert_eq!(out[tag], CatchUp::All as u8);
        out[tag] = 9;
        assert!(decode_schedule("n", &out)
            .unwrap_err()
            .0
            .contains("catch_up"));
    }
}
