//! Replays the checked-in `shm_attach` fuzz corpus on the stable toolchain:
//! every segment image the fuzzer kept must be checked without a panic.

use std::path::Path;

#[test]
fn shm_attach_corpus_replays_without_panics() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus/shm_attach");
    let inputs: Vec<Vec<u8>> = std::fs::read_dir(&dir)
        .expect("the corpus directory is checked in")
        .map(|entry| std::fs::read(entry.unwrap().path()).unwrap())
        .collect();
    assert!(
        inputs.len() >= 10,
        "only {} inputs in {}",
        inputs.len(),
        dir.display()
    );
    inputs.iter().for_each(|i| laggard_shm::fuzz_attach(i));
}
