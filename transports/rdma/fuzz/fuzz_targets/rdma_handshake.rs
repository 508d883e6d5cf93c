//! Arbitrary bytes on an RDMA endpoint's side channel: the handshake
//! decoder returns a message or an error, never panics. The corpus lives
//! in `tests/corpus/handshake` and is replayed on stable by
//! `cargo test --test fuzz_corpus`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = laggard_rdma::fuzz_handshake(data);
});
