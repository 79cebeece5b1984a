//! cargo-fuzz target: arbitrary bytes through the frame splitter and `Request` decoding
//! (see `squall_fuzz::frames` for the input layout and the properties).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| squall_fuzz::frames(data));
