//! Replays the checked-in fuzz corpora on the stable toolchain: every input
//! the fuzzers kept must still run without a panic, and the seeds each
//! target's body offers must be in its corpus.

#[path = "../fuzz/src/api_calls.rs"]
mod api_calls;
#[path = "../fuzz/src/checkpoint.rs"]
mod checkpoint;
#[path = "../fuzz/src/frames.rs"]
mod frames;

use std::path::{Path, PathBuf};

fn corpus_dir(target: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target)
}

fn corpus(target: &str) -> Vec<Vec<u8>> {
    std::fs::read_dir(corpus_dir(target))
        .expect("the corpus directory is checked in")
        .map(|entry| std::fs::read(entry.unwrap().path()).unwrap())
        .collect()
}

/// Runs every input of `target`'s corpus, which must hold at least ten.
fn replay(target: &str, run: fn(&[u8])) {
    let inputs = corpus(target);
    assert!(
        inputs.len() >= 10,
        "only {} inputs in {}",
        inputs.len(),
        corpus_dir(target).display()
    );
    inputs.iter().for_each(|i| run(i));
}

/// Runs each seed, and checks it is in `target`'s corpus.
fn seeds_in_corpus(target: &str, seeds: Vec<Vec<u8>>, run: fn(&[u8])) {
    let inputs = corpus(target);
    for seed in seeds {
        run(&seed);
        assert!(
            inputs.contains(&seed),
            "a {target} seed is missing from the corpus; run `cargo test --test fuzz_corpus -- --ignored`"
        );
    }
}

/// Writes the seeds into `target`'s corpus directory as `seed-NN`.
fn write_seeds(target: &str, seeds: Vec<Vec<u8>>) {
    let dir = corpus_dir(target);
    std::fs::create_dir_all(&dir).unwrap();
    for (i, seed) in seeds.iter().enumerate() {
        std::fs::write(dir.join(format!("seed-{i:02}")), seed).unwrap();
    }
}

#[test]
fn api_calls_corpus_replays_without_panics() {
    replay("api_calls", api_calls::run);
}

#[test]
fn frames_corpus_replays_without_panics() {
    replay("frames", frames::run);
}

#[test]
fn frame_seeds_are_valid_and_in_the_corpus() {
    seeds_in_corpus("frames", frames::seeds(), frames::run);
}

/// Writes the frame seeds into the corpus (run once after changing them).
#[test]
#[ignore]
fn write_frame_seeds() {
    write_seeds("frames", frames::seeds());
}

#[test]
fn checkpoint_corpus_replays_without_panics() {
    replay("checkpoint", checkpoint::run);
}

#[test]
fn checkpoint_seeds_load_and_are_in_the_corpus() {
    seeds_in_corpus("checkpoint", checkpoint::seeds(), checkpoint::run);
}

/// Writes the checkpoint seeds into the corpus (run once after changing
/// them).
#[test]
#[ignore]
fn write_checkpoint_seeds() {
    write_seeds("checkpoint", checkpoint::seeds());
}
