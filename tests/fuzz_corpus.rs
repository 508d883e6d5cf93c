//! Replays the checked-in fuzz corpora on the stable toolchain: every input
//! the fuzzers kept must still run without a panic.

#[path = "../fuzz/src/api_calls.rs"]
mod api_calls;
#[path = "../fuzz/src/checkpoint.rs"]
mod checkpoint;
#[path = "../fuzz/src/frames.rs"]
mod frames;

use std::path::{Path, PathBuf};

fn corpus(target: &str) -> (PathBuf, Vec<Vec<u8>>) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target);
    let inputs: Vec<Vec<u8>> = std::fs::read_dir(&dir)
        .expect("the corpus directory is checked in")
        .map(|entry| std::fs::read(entry.unwrap().path()).unwrap())
        .collect();
    (dir, inputs)
}

#[test]
fn api_calls_corpus_replays_without_panics() {
    let (dir, inputs) = corpus("api_calls");
    assert!(
        inputs.len() >= 10,
        "only {} inputs in {}",
        inputs.len(),
        dir.display()
    );
    inputs.iter().for_each(|i| api_calls::run(i));
}

#[test]
fn frames_corpus_replays_without_panics() {
    let (dir, inputs) = corpus("frames");
    assert!(
        inputs.len() >= 10,
        "only {} inputs in {}",
        inputs.len(),
        dir.display()
    );
    inputs.iter().for_each(|i| frames::run(i));
}

#[test]
fn frame_seeds_are_valid_and_in_the_corpus() {
    let (_, inputs) = corpus("frames");
    for seed in frames::seeds() {
        frames::run(&seed);
        assert!(
            inputs.contains(&seed),
            "seed missing from the corpus; run `cargo test --test fuzz_corpus -- --ignored`"
        );
    }
}

/// Writes the seeds into the corpus directory (run once after changing them).
#[test]
#[ignore]
fn write_frame_seeds() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/frames");
    std::fs::create_dir_all(&dir).unwrap();
    for (i, seed) in frames::seeds().iter().enumerate() {
        std::fs::write(dir.join(format!("seed-{i:02}")), seed).unwrap();
    }
}

#[test]
fn checkpoint_corpus_replays_without_panics() {
    let (dir, inputs) = corpus("checkpoint");
    assert!(
        inputs.len() >= 10,
        "only {} inputs in {}",
        inputs.len(),
        dir.display()
    );
    inputs.iter().for_each(|i| checkpoint::run(i));
}

#[test]
fn checkpoint_seeds_load_and_are_in_the_corpus() {
    let (_, inputs) = corpus("checkpoint");
    for seed in checkpoint::seeds() {
        checkpoint::run(&seed);
        assert!(
            inputs.contains(&seed),
            "seed missing from the corpus; run `cargo test --test fuzz_corpus -- --ignored`"
        );
    }
}

/// Writes the checkpoint seeds into the corpus directory (run once after
/// changing them).
#[test]
#[ignore]
fn write_checkpoint_seeds() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/checkpoint");
    std::fs::create_dir_all(&dir).unwrap();
    for (i, seed) in checkpoint::seeds().iter().enumerate() {
        std::fs::write(dir.join(format!("seed-{i:02}")), seed).unwrap();
    }
}
