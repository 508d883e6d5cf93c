#![no_main]

// Arbitrary bytes as a shared-memory segment: the header checks that run
// on attach, then a receiver reading the rings of anything that passes.
libfuzzer_sys::fuzz_target!(|data: &[u8]| laggard_shm::fuzz_attach(data));
