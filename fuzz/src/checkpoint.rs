//! Fuzz body for checkpoints: arbitrary bytes loaded into tables of a few
//! shapes must restore rows or fail with an error, never panic. Shared by
//! the libFuzzer target and the stable-toolchain corpus replay.

use laggard::checkpoint::{self, Foreign};
use laggard::{Adam, Table, TableSpec};

/// A narrow dense table with Adam's state; its checkpoints are the seeds.
fn dense() -> Table<f32> {
    Table::new(
        TableSpec::<f32>::dense(0..8, 3)
            .shards(2)
            .update(Adam::new(0.1)),
    )
    .expect("a valid spec")
}

/// Shard 1 of a sparse `i64` table (keys of shard 0 are foreign).
fn sparse_part() -> Table<i64> {
    Table::for_shard(TableSpec::<i64>::sparse(2).shards(2), 1).expect("a valid spec")
}

/// Loads `data` into fresh tables of each shape, refusing and skipping
/// foreign rows, and verifies it: `verify` must refuse whatever `load`
/// refuses, except a row the table cannot store (which `verify` does not
/// check), and accept what `load` accepts.
pub fn run(data: &[u8]) {
    let verified = (
        checkpoint::verify(&dense(), data),
        checkpoint::verify(&sparse_part(), data),
    );
    for foreign in [Foreign::Refuse, Foreign::Skip] {
        let loaded = (
            checkpoint::load(&dense(), data, foreign),
            checkpoint::load(&sparse_part(), data, foreign),
        );
        agree(&verified.0, &loaded.0);
        agree(&verified.1, &loaded.1);
    }
}

fn agree(
    verified: &laggard::Result<checkpoint::Verified>,
    loaded: &laggard::Result<checkpoint::Loaded>,
) {
    match (verified, loaded) {
        (Ok(v), Ok(l)) => {
            assert_eq!(v.rows, l.restored + l.skipped);
            assert_eq!(v.clock, l.clock);
        }
        (Err(_), Err(_)) => {}
        (Ok(_), Err(e)) => assert!(
            e.to_string().contains("cannot be restored"),
            "verified, but load failed with {e}"
        ),
        (Err(e), Ok(_)) => panic!("loaded, but verify failed with {e}"),
    }
}

/// Valid checkpoints of each shape, for the corpus.
pub fn seeds() -> Vec<Vec<u8>> {
    let t = dense();
    t.push(3, &[0.5, -1.0, 2.0]).expect("key 3 exists");
    let part = sparse_part();
    let whole = Table::new(TableSpec::<i64>::sparse(2).shards(2)).expect("a valid spec");
    for key in [1u64, 2, 3, 1 << 40] {
        whole
            .push(key, &[key as i64, -1])
            .expect("sparse keys are any u64");
    }
    whole
        .visit_shard(1, |row| part.restore_row(row).expect("shard 1's rows"))
        .expect("shard 1 exists");
    let mut seeds = Vec::new();
    for bytes in [save(&t, 0), save(&whole, 7), save(&part, 1 << 40)] {
        seeds.push(bytes);
    }
    seeds
}

fn save<T: laggard::Element>(t: &Table<T>, clock: u64) -> Vec<u8> {
    let mut bytes = Vec::new();
    checkpoint::save_at(t, clock, &mut bytes).expect("writing to a Vec");
    bytes
}
