//! Replays the checked-in fuzz corpus on the stable toolchain: every input
//! the fuzzer kept must still run without a panic.

#[path = "../fuzz/src/api_calls.rs"]
mod api_calls;

#[test]
fn fuzz_corpus_replays_without_panics() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/api_calls");
    let mut inputs = 0;
    for entry in std::fs::read_dir(&dir).expect("the corpus directory is checked in") {
        let path = entry.unwrap().path();
        api_calls::run(&std::fs::read(&path).unwrap());
        inputs += 1;
    }
    assert!(
        inputs >= 10,
        "only {inputs} corpus inputs in {}",
        dir.display()
    );
}
