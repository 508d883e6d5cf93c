#![no_main]

// The seeds (and their helpers) are for the stable corpus replay in
// tests/fuzz_corpus.rs, not for this target.
#[allow(dead_code)]
#[path = "../src/checkpoint.rs"]
mod checkpoint;

libfuzzer_sys::fuzz_target!(|data: &[u8]| checkpoint::run(data));
