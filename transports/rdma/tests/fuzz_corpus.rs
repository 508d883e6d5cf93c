//! Replays the checked-in corpus of the `rdma_handshake` fuzz target
//! (`fuzz/fuzz_targets/rdma_handshake.rs`) on stable: every input decodes to
//! a message or an error, never a panic.

#[test]
fn handshake_corpus_replays() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/corpus/handshake");
    let mut n = 0;
    let mut accepted = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        let bytes = std::fs::read(entry.unwrap().path()).unwrap();
        accepted += usize::from(laggard_rdma::fuzz_handshake(&bytes));
        n += 1;
    }
    assert!(n >= 4, "the corpus has {n} inputs");
    assert!(accepted >= 1, "no input of the corpus is a valid handshake");
}
