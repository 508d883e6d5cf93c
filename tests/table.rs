//! Table behaviour: operations, errors for bad input, update rules, and
//! concurrent pushes and pulls.

use std::sync::Arc;
use std::thread;

use laggard::{
    Adagrad, Adam, Assign, Error, Init, Placement, RowMut, Schedule, Sgd, Sum, Table, TableSpec,
    Update,
};

#[test]
fn dense_push_pull_round_trip_across_placements() {
    for placement in [Placement::Range, Placement::RoundRobin] {
        for shards in [1, 3, 8] {
            let t = Table::new(
                TableSpec::<i64>::dense(100..150, 3)
                    .shards(shards)
                    .placement(placement),
            )
            .unwrap();
            for key in 100..150u64 {
                t.push(key, &[key as i64, 1, -(key as i64)]).unwrap();
            }
            let mut row = [0i64; 3];
            for key in 100..150u64 {
                t.pull(key, &mut row).unwrap();
                assert_eq!(
                    row,
                    [key as i64, 1, -(key as i64)],
                    "{placement:?}, {shards} shards"
                );
            }
            assert_eq!(t.rows(), 50);
        }
    }
}

#[test]
fn bad_input_is_an_error_and_changes_nothing() {
    let t = Table::new(TableSpec::<f32>::dense(0..10, 4)).unwrap();
    assert_eq!(
        t.push(0, &[1.0; 3]),
        Err(Error::WidthMismatch {
            expected: 4,
            got: 3
        })
    );
    assert_eq!(
        t.pull(0, &mut [0.0; 5]),
        Err(Error::WidthMismatch {
            expected: 4,
            got: 5
        })
    );
    assert_eq!(
        t.push(10, &[1.0; 4]),
        Err(Error::KeyOutOfRange {
            key: 10,
            first: 0,
            last: 9
        })
    );
    assert_eq!(
        t.push_batch(&[1, 2], &[1.0; 7]),
        Err(Error::BatchShape {
            keys: 2,
            width: 4,
            values: 7
        })
    );
    // One bad key in a batch: nothing is applied.
    assert!(t.push_batch(&[1, 99], &[1.0; 8]).is_err());
    let mut row = [9.0f32; 4];
    t.pull(1, &mut row).unwrap();
    assert_eq!(row, [0.0; 4]);
    assert_eq!(
        t.visit_shard(1, |_| {}),
        Err(Error::ShardOutOfRange {
            shard: 1,
            shards: 1
        })
    );
    let msg = t.push(10, &[1.0; 4]).unwrap_err().to_string();
    assert!(msg.contains("key 10") && msg.contains("0..=9"), "{msg}");
}

#[test]
fn invalid_specs_are_errors() {
    let cases: Vec<(TableSpec<f32>, &str)> = vec![
        (TableSpec::dense(0..10, 0), "width"),
        (TableSpec::dense(5..5, 2), "key range"),
        (
            TableSpec::dense(0..10, 2).placement(Placement::Hash),
            "placement",
        ),
        (TableSpec::dense(0..10, 2).shards(0), "shard count"),
        (
            TableSpec::dense(0..10, 2).update(Sgd::new(-1.0)),
            "learning rate",
        ),
        (
            TableSpec::dense(0..10, 2).update(Sgd::new(0.1).momentum(1.0)),
            "momentum",
        ),
        (
            TableSpec::dense(0..10, 2).update(Adam::new(0.1).betas(0.9, 1.5)),
            "beta2",
        ),
        (
            TableSpec::dense(0..10, 2).update(Adagrad::new(f64::NAN)),
            "learning rate",
        ),
        (
            TableSpec::dense(0..10, 2).init(Init::Uniform {
                low: 1.0,
                high: 0.0,
                seed: 0,
            }),
            "initializer",
        ),
        (TableSpec::dense(0..u64::MAX, 1 << 20), "allocate"),
    ];
    for (spec, needle) in cases {
        let err = Table::new(spec).unwrap_err().to_string();
        assert!(err.contains(needle), "{err:?} should mention {needle:?}");
    }
}

#[test]
fn sparse_rows_are_created_on_first_push() {
    let init = Init::Uniform {
        low: -1.0,
        high: 1.0,
        seed: 42,
    };
    let t = Table::new(TableSpec::<f64>::sparse(2).shards(4).init(init)).unwrap();
    let mut before = [0.0; 2];
    t.pull(u64::MAX, &mut before).unwrap();
    assert_eq!(t.rows(), 0, "a pull does not create a row");
    assert!(before.iter().all(|x| (-1.0..1.0).contains(x)));
    t.push(u64::MAX, &[0.5, 0.5]).unwrap();
    let mut after = [0.0; 2];
    t.pull(u64::MAX, &mut after).unwrap();
    assert_eq!(
        after,
        [before[0] + 0.5, before[1] + 0.5],
        "the row starts from its initial values"
    );
    assert_eq!(t.rows(), 1);
}

#[test]
fn sparse_table_holds_many_keys_that_share_trie_prefixes() {
    let t = Table::new(TableSpec::<u64>::sparse(1).shards(3)).unwrap();
    // Under Miri, which tracks every allocation, fewer.
    let n = if cfg!(miri) { 1_000 } else { 20_000u64 };
    let keys: Vec<u64> = (0..n)
        .map(|i| i.wrapping_mul(0x9e37_79b9_7f4a_7c15))
        .collect();
    for &k in &keys {
        t.push(k, &[k]).unwrap();
    }
    assert_eq!(t.rows(), keys.len());
    let mut row = [0u64];
    for &k in &keys {
        t.pull(k, &mut row).unwrap();
        assert_eq!(row[0], k);
    }
    let mut seen = 0;
    for shard in 0..3 {
        t.visit_shard(shard, |r| {
            assert_eq!(r.values, &[r.key]);
            assert_eq!(t.shard_map().shard_of(r.key).unwrap(), shard);
            seen += 1;
        })
        .unwrap();
    }
    assert_eq!(seen, keys.len());
}

#[test]
fn visit_shard_reports_values_and_update_state() {
    let t = Table::new(
        TableSpec::<f64>::dense(0..4, 2)
            .shards(2)
            .update(Adagrad::new(0.1)),
    )
    .unwrap();
    t.push(3, &[2.0, 0.0]).unwrap();
    let mut rows = Vec::new();
    t.visit_shard(1, |r| {
        rows.push((r.key, r.values.to_vec(), r.state.to_vec()))
    })
    .unwrap();
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[0], (2, vec![0.0, 0.0], vec![0.0, 0.0]));
    assert_eq!(rows[1].0, 3);
    assert_eq!(
        rows[1].2,
        vec![4.0, 0.0],
        "Adagrad's accumulator lives beside the row"
    );
}

#[test]
fn update_rules_match_their_formulas() {
    fn run<U: Update<f64>>(rule: U, grads: &[[f64; 2]]) -> [f64; 2] {
        let t = Table::new(
            TableSpec::<f64>::dense(0..1, 2)
                .update(rule)
                .init(Init::Constant(1.0)),
        )
        .unwrap();
        for g in grads {
            t.push(0, g).unwrap();
        }
        let mut row = [0.0; 2];
        t.pull(0, &mut row).unwrap();
        row
    }
    let grads = [[0.5, -1.0], [0.25, 2.0], [-1.0, 0.0]];
    let close = |a: [f64; 2], b: [f64; 2]| a.iter().zip(&b).all(|(x, y)| (x - y).abs() < 1e-12);

    assert_eq!(run(Sum, &grads), [1.0 - 0.25, 1.0 + 1.0]);
    assert_eq!(run(Assign, &grads), [-1.0, 0.0]);
    assert!(close(run(Sgd::new(0.1), &grads), [1.0 + 0.025, 1.0 - 0.1]));

    // Momentum: v = 0.9 v + g; x -= 0.1 v.
    let (mut x, mut v) = ([1.0f64; 2], [0.0f64; 2]);
    for g in &grads {
        for i in 0..2 {
            v[i] = 0.9 * v[i] + g[i];
            x[i] -= 0.1 * v[i];
        }
    }
    assert!(close(run(Sgd::new(0.1).momentum(0.9), &grads), x));

    // A schedule is indexed by the row's push count: eta_t = 1 / sqrt(t).
    let mut x = [1.0f64; 2];
    for (t, g) in grads.iter().enumerate() {
        for i in 0..2 {
            x[i] -= g[i] / ((t + 1) as f64).sqrt();
        }
    }
    assert!(close(
        run(
            Sgd::with_schedule(Schedule::InverseSqrt { sigma: 1.0 }),
            &grads
        ),
        x
    ));

    let (mut x, mut a) = ([1.0f64; 2], [0.0f64; 2]);
    for g in &grads {
        for i in 0..2 {
            a[i] += g[i] * g[i];
            x[i] -= 0.1 * g[i] / (a[i].sqrt() + 1e-8);
        }
    }
    assert!(close(run(Adagrad::new(0.1), &grads), x));

    let (mut x, mut m, mut v) = ([1.0f64; 2], [0.0f64; 2], [0.0f64; 2]);
    for (t, g) in grads.iter().enumerate() {
        let t = (t + 1) as i32;
        for i in 0..2 {
            m[i] = 0.9 * m[i] + 0.1 * g[i];
            v[i] = 0.999 * v[i] + 0.001 * g[i] * g[i];
            let (mh, vh) = (
                m[i] / (1.0 - 0.9f64.powi(t)),
                v[i] / (1.0 - 0.999f64.powi(t)),
            );
            x[i] -= 0.01 * mh / (vh.sqrt() + 1e-8);
        }
    }
    assert!(close(run(Adam::new(0.01), &grads), x));
}

#[derive(Debug)]
struct PanicsOnNegative;

impl Update<i64> for PanicsOnNegative {
    fn apply(&self, row: &mut RowMut<'_, i64>, _: &mut RowMut<'_, i64>, delta: &[i64]) {
        assert!(delta[0] >= 0, "negative delta");
        row.zip_update(delta, |x, d| x + d);
    }
}

#[test]
fn a_panicking_update_rule_releases_the_row() {
    // Width 1 is a narrow row (atomic cells); 300 a wide one (plain elements).
    for width in [1, 300] {
        let spec = TableSpec::<i64>::dense(0..1, width).update(PanicsOnNegative);
        let t = Arc::new(Table::new(spec).unwrap());
        let t2 = Arc::clone(&t);
        assert!(
            thread::spawn(move || t2.push(0, &vec![-1; width]))
                .join()
                .is_err()
        );
        // The row is not left locked: another push and a pull complete.
        t.push(0, &vec![5; width]).unwrap();
        let mut row = vec![0; width];
        t.pull(0, &mut row).unwrap();
        assert_eq!(row, vec![5; width]);
    }
}

#[test]
fn two_tables_in_one_process_are_independent() {
    let a = Table::new(TableSpec::<i32>::dense(0..2, 1)).unwrap();
    let b = Table::new(TableSpec::<i32>::dense(0..2, 1)).unwrap();
    a.push(0, &[1]).unwrap();
    let mut row = [7];
    b.pull(0, &mut row).unwrap();
    assert_eq!(row, [0]);
}

/// Many threads push to a few hot rows of an integer table; every push is
/// applied exactly once, and every pull sees a whole row (all elements of a
/// row always move together, so a torn read would show unequal elements).
fn concurrent_pushes_and_untorn_pulls(spec: TableSpec<i64>) {
    const THREADS: usize = 4;
    // Under Miri, which runs every spin of a contended row, fewer.
    const PUSHES: i64 = if cfg!(miri) { 25 } else { 2_000 };
    let width = spec.width();
    let table = Table::new(spec).unwrap();
    let keys = [3u64, 5, 7];
    thread::scope(|s| {
        for t in 0..THREADS {
            let table = &table;
            s.spawn(move || {
                let mut row = vec![0i64; width];
                for i in 0..PUSHES {
                    let key = keys[(i as usize + t) % keys.len()];
                    table.push(key, &vec![i % 7 + 1; width]).unwrap();
                    table.pull(keys[i as usize % keys.len()], &mut row).unwrap();
                    assert!(row.iter().all(|&x| x == row[0]), "torn row: {row:?}");
                }
            });
        }
    });
    let expected: i64 = (0..PUSHES).map(|i| i % 7 + 1).sum::<i64>() * THREADS as i64;
    let mut total = 0;
    let mut row = vec![0i64; width];
    for key in keys {
        table.pull(key, &mut row).unwrap();
        total += row[0];
    }
    assert_eq!(total, expected);
}

#[test]
fn concurrent_dense_pushes_are_exactly_once_and_pulls_untorn() {
    concurrent_pushes_and_untorn_pulls(TableSpec::dense(0..16, 64).shards(2));
}

#[test]
fn concurrent_sparse_pushes_are_exactly_once_and_pulls_untorn() {
    concurrent_pushes_and_untorn_pulls(TableSpec::sparse(64).shards(2));
}

#[test]
fn concurrent_wide_dense_pushes_are_exactly_once_and_pulls_untorn() {
    concurrent_pushes_and_untorn_pulls(TableSpec::dense(0..16, 1024).shards(2));
}

#[test]
fn concurrent_wide_sparse_pushes_are_exactly_once_and_pulls_untorn() {
    concurrent_pushes_and_untorn_pulls(TableSpec::sparse(1024).shards(2));
}

#[test]
fn only_linear_rules_offer_a_replay() {
    use laggard::{Adagrad, Adam, Assign, Schedule, Sgd, Sum, Update};
    assert_eq!(Update::<f32>::replay_scale(&Sum), Some(1.0));
    assert_eq!(Update::<f32>::replay_scale(&Sgd::new(0.25)), Some(-0.25));
    assert_eq!(
        Update::<f32>::replay_scale(&Sgd::new(0.25).momentum(0.9)),
        None
    );
    let varying = Schedule::ssp_theorem(1.0, 1.0, 2, 4).unwrap();
    assert_eq!(
        Update::<f32>::replay_scale(&Sgd::with_schedule(varying)),
        None
    );
    assert_eq!(Update::<f32>::replay_scale(&Assign), None);
    assert_eq!(Update::<f32>::replay_scale(&Adagrad::new(0.1)), None);
    assert_eq!(Update::<f32>::replay_scale(&Adam::new(0.1)), None);
    // Only Assign keeps the later of two deltas instead of their sum.
    assert!(!Update::<f32>::sums_deltas(&Assign));
    assert!(Update::<f32>::sums_deltas(&Sum));
    assert!(Update::<f32>::sums_deltas(&Adam::new(0.1)));
}

/// An update rule of the user's can ask for any amount of per-row state.
/// A row that no memory could hold is an error when the table is built;
/// one larger than the address space, in a sparse table (whose rows are
/// made by pushes), is an error at its first push. Both used to end the
/// process: an overflow panic, and an allocation failure's abort.
#[test]
fn rows_no_memory_can_hold_are_errors_not_aborts() {
    #[derive(Debug)]
    struct Hoard(usize);
    impl Update<f32> for Hoard {
        fn state_len(&self, _width: usize) -> usize {
            self.0
        }
        fn apply(&self, _: &mut RowMut<'_, f32>, _: &mut RowMut<'_, f32>, _: &[f32]) {}
    }
    let err = Table::new(TableSpec::<f32>::dense(0..4, 2).update(Hoard(usize::MAX))).unwrap_err();
    assert!(err.to_string().contains("Update::state_len"), "{err}");
    // 2^48 bytes a row: past any address space of today.
    let huge = Table::new(TableSpec::<f32>::sparse(2).update(Hoard(1 << 46))).unwrap();
    let err = huge.push(7, &[1.0, 2.0]).unwrap_err();
    assert!(matches!(err, Error::OutOfMemory { .. }), "{err:?}");
}
