#![no_main]

#[path = "../src/api_calls.rs"]
mod api_calls;

libfuzzer_sys::fuzz_target!(|data: &[u8]| api_calls::run(data));
