//! Stable-toolchain fallback of the fuzz targets: runs the same harnesses as
//! `fuzz_targets/` over generated inputs for a given time, without libFuzzer or
//! coverage feedback. Inputs are biased towards plausible traffic: valid frames of
//! random requests, random bodies behind correct length prefixes, random and oversized
//! lengths, truncations and byte flips, plus plain random bytes.
//!
//! Usage: `random [seconds] [seed]` (defaults: 60 s, seed from the clock). A failing
//! input is printed in hex and the process exits with status 1.

use std::panic::{self, AssertUnwindSafe};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::{Bytes, BytesMut};
use squall_proto::encode_frame;
use squall_proto::v1::{self, request::Op};

/// splitmix64: tiny, fast, good enough to pick inputs.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }

    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }

    /// Up to `max - 1` random bytes.
    fn some_bytes(&mut self, max: usize) -> Vec<u8> {
        let n = self.below(max);
        self.bytes(n)
    }

    /// Up to `max - 1` characters.
    fn some_string(&mut self, max: usize) -> String {
        let n = self.below(max);
        self.string(n)
    }

    fn string(&mut self, n: usize) -> String {
        const CHARS: &[u8] = b"abcXYZ019._:-/ *\xc3";
        let raw: Vec<u8> = (0..n).map(|_| CHARS[self.below(CHARS.len())]).collect();
        String::from_utf8_lossy(&raw).into_owned()
    }

    fn queue_name(&mut self) -> String {
        match self.below(4) {
            0 => String::new(),
            1 => "q".repeat(195 + self.below(10)),
            _ => {
                let n = 1 + self.below(12);
                self.string(n)
            }
        }
    }
}

fn random_request(rng: &mut Rng) -> v1::Request {
    let op = match rng.below(9) {
        0 => Op::Hello(v1::Hello {
            protocol_version: rng.below(3) as u32,
            client_name: rng.string(8),
            token: rng.string(4),
        }),
        1 | 2 => Op::Publish(v1::Publish {
            tasks: (0..rng.below(4))
                .map(|_| {
                    let payload = rng.some_bytes(32);
                    v1::TaskSpec {
                        queue: rng.queue_name(),
                        payload: Bytes::from(payload),
                        headers: (0..rng.below(3))
                            .map(|_| (rng.string(3), Bytes::from(rng.bytes(3))))
                            .collect(),
                        priority: rng.next() as i32,
                        delay_ms: rng.next() >> rng.below(64),
                        run_at_ms: rng.next() >> rng.below(64),
                        max_attempts: rng.next() as u32,
                        lease_ms: rng.next() >> rng.below(64),
                        idempotency_key: rng.some_string(3),
                        expires_in_ms: rng.next() >> rng.below(64),
                    }
                })
                .collect(),
            producer_id: rng.some_string(3),
            sequence: rng.next(),
        }),
        3 => Op::Subscribe(v1::Subscribe {
            queue: rng.queue_name(),
            prefetch: rng.next() as u32,
        }),
        4 => Op::Unsubscribe(v1::Unsubscribe {
            subscription_id: rng.next(),
        }),
        5 => Op::Ack(v1::Ack {
            task_id: rng.next(),
            lease_token: rng.next(),
            result: Bytes::from(rng.some_bytes(8)),
        }),
        6 => Op::Nack(v1::Nack {
            task_id: rng.next(),
            lease_token: rng.next(),
            delay_ms: (rng.below(2) == 0).then(|| rng.next()),
            dead: rng.below(2) == 0,
            reason: rng.some_string(16),
        }),
        7 => Op::Extend(v1::Extend {
            task_id: rng.next(),
            lease_token: rng.next(),
            extend_ms: rng.next(),
        }),
        _ => Op::Ping(v1::Ping {}),
    };
    v1::Request {
        id: rng.next() >> rng.below(64),
        op: (rng.below(16) != 0).then_some(op),
    }
}

/// One plausible-looking frame (or a broken one) appended to `out`.
fn push_frame(rng: &mut Rng, out: &mut BytesMut) {
    match rng.below(6) {
        0..=2 => encode_frame(&random_request(rng), out),
        3 => {
            let body = rng.some_bytes(64);
            out.extend_from_slice(&(body.len() as u32).to_be_bytes());
            out.extend_from_slice(&body);
        }
        4 => {
            let len = match rng.below(3) {
                0 => u32::MAX,
                1 => rng.next() as u32,
                _ => rng.below(5000) as u32,
            };
            out.extend_from_slice(&len.to_be_bytes());
            out.extend_from_slice(&rng.some_bytes(16));
        }
        _ => {
            let mut f = BytesMut::new();
            encode_frame(&random_request(rng), &mut f);
            let cut = rng.below(f.len());
            out.extend_from_slice(&f[..cut]);
        }
    }
}

fn flip(rng: &mut Rng, data: &mut [u8]) {
    if data.is_empty() {
        return;
    }
    for _ in 0..rng.below(4) {
        let i = rng.below(data.len());
        data[i] ^= 1 << rng.below(8);
    }
}

/// Input for `frames`: limit pick, chunk size, then the stream.
fn frames_input(rng: &mut Rng) -> Vec<u8> {
    let mut out = BytesMut::new();
    out.extend_from_slice(&[rng.next() as u8, rng.next() as u8]);
    if rng.below(8) == 0 {
        out.extend_from_slice(&rng.some_bytes(512));
    } else {
        for _ in 0..1 + rng.below(8) {
            push_frame(rng, &mut out);
        }
    }
    let mut v = out.to_vec();
    if rng.below(3) == 0 {
        flip(rng, &mut v[2..]);
    }
    v
}

/// Input for `request`: an encoded request, sometimes damaged, or random bytes.
fn request_input(rng: &mut Rng) -> Vec<u8> {
    use prost::Message;
    if rng.below(8) == 0 {
        return rng.some_bytes(256);
    }
    let mut v = random_request(rng).encode_to_vec();
    if rng.below(2) == 0 {
        flip(rng, &mut v);
    }
    if rng.below(4) == 0 {
        v.truncate(rng.below(v.len() + 1));
    }
    v
}

fn run_one(name: &str, input: &[u8], harness: fn(&[u8])) {
    if panic::catch_unwind(AssertUnwindSafe(|| harness(input))).is_err() {
        let hex: String = input.iter().map(|b| format!("{b:02x}")).collect();
        eprintln!(
            "random: {name} failed on input ({} bytes): {hex}",
            input.len()
        );
        std::process::exit(1);
    }
}

fn main() {
    let mut args = std::env::args().skip(1);
    let secs: u64 = args.next().and_then(|s| s.parse().ok()).unwrap_or(60);
    let seed: u64 = args.next().and_then(|s| s.parse().ok()).unwrap_or_else(|| {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1)
    });
    let mut rng = Rng(seed);
    let deadline = Instant::now() + Duration::from_secs(secs);
    let (mut frames_runs, mut request_runs) = (0u64, 0u64);
    while Instant::now() < deadline {
        for _ in 0..256 {
            run_one("frames", &frames_input(&mut rng), squall_fuzz::frames);
            run_one("request", &request_input(&mut rng), squall_fuzz::request);
        }
        frames_runs += 256;
        request_runs += 256;
    }
    println!(
        "random: {frames_runs} frames inputs and {request_runs} request inputs in {secs} s (seed {seed}): no failure"
    );
}
