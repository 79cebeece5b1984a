//! cargo-fuzz target: arbitrary bytes as one `Request` body: decoding, round trip and
//! the queue-name rule (see `squall_fuzz::request`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| squall_fuzz::request(data));
