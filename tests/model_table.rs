//! Property tests: random operation sequences against a sequential model
//! (`HashMap<u64, Vec<_>>` with the same update formula), and concurrent
//! integer pushes whose final table must be the exact sum.

use std::collections::HashMap;
use std::thread;

use std::sync::Arc;

use laggard::{Adagrad, Adam, Placement, Schedule, Sgd, Sum, Table, TableSpec, Update};
use proptest::prelude::*;

#[derive(Debug, Clone)]
enum Op {
    Push(u64, Vec<i64>),
    PushBatch(Vec<u64>, Vec<i64>),
    Pull(u64, usize),
    PullBatch(Vec<u64>),
}

/// A narrow width, and a wide one (rows of 256 cells and more are stored
/// as plain elements behind a reader-writer word instead of atomic cells).
const WIDTHS: [usize; 2] = [3, 260];

fn key() -> impl Strategy<Value = u64> {
    // Mostly valid keys of a 0..20 dense table, sometimes outside it.
    prop_oneof![8 => 0..20u64, 1 => 20..25u64, 1 => any::<u64>()]
}

fn row(width: usize) -> impl Strategy<Value = Vec<i64>> {
    prop::collection::vec(-1000..1000i64, width)
}

fn op(width: usize) -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (key(), prop_oneof![9 => row(width), 1 => row(width + 1)]).prop_map(|(k, r)| Op::Push(k, r)),
        2 => prop::collection::vec(key(), 0..4).prop_flat_map(move |keys| {
            let n = keys.len() * width;
            (Just(keys), prop_oneof![9 => row(n), 1 => row(n + 1)])
        }).prop_map(|(k, r)| Op::PushBatch(k, r)),
        3 => (key(), prop_oneof![9 => Just(width), 1 => Just(width - 1)]).prop_map(|(k, w)| Op::Pull(k, w)),
        1 => prop::collection::vec(key(), 0..4).prop_map(Op::PullBatch),
    ]
}

/// A row width from `WIDTHS` and a sequence of operations for it.
fn width_and_ops() -> impl Strategy<Value = (usize, Vec<Op>)> {
    prop::sample::select(&WIDTHS[..])
        .prop_flat_map(|width| (Just(width), prop::collection::vec(op(width), 0..60)))
}

/// The sequential model: a map of rows, with the dense table's key range
/// (or none, for sparse) and the same `Sum` rule.
struct Model {
    rows: HashMap<u64, Vec<i64>>,
    dense: Option<std::ops::Range<u64>>,
    width: usize,
}

impl Model {
    fn valid(&self, key: u64) -> bool {
        self.dense.as_ref().is_none_or(|r| r.contains(&key))
    }
    fn push(&mut self, key: u64, delta: &[i64]) {
        let row = self.rows.entry(key).or_insert_with(|| vec![0; self.width]);
        row.iter_mut().zip(delta).for_each(|(x, d)| *x += d);
    }
    fn get(&self, key: u64) -> Vec<i64> {
        self.rows
            .get(&key)
            .cloned()
            .unwrap_or_else(|| vec![0; self.width])
    }
}

fn check(
    spec: TableSpec<i64>,
    dense: Option<std::ops::Range<u64>>,
    ops: Vec<Op>,
) -> Result<(), TestCaseError> {
    let width = spec.width();
    let table = Table::new(spec).unwrap();
    let mut model = Model {
        rows: HashMap::new(),
        dense,
        width,
    };
    for op in ops {
        match op {
            Op::Push(k, d) => {
                let ok = model.valid(k) && d.len() == width;
                prop_assert_eq!(table.push(k, &d).is_ok(), ok);
                if ok {
                    model.push(k, &d);
                }
            }
            Op::PushBatch(keys, d) => {
                let ok = keys.iter().all(|&k| model.valid(k)) && d.len() == keys.len() * width;
                prop_assert_eq!(table.push_batch(&keys, &d).is_ok(), ok);
                if ok {
                    for (k, d) in keys.iter().zip(d.chunks(width)) {
                        model.push(*k, d);
                    }
                }
            }
            Op::Pull(k, w) => {
                let mut out = vec![0; w];
                let ok = model.valid(k) && w == width;
                prop_assert_eq!(table.pull(k, &mut out).is_ok(), ok);
                if ok {
                    prop_assert_eq!(out, model.get(k));
                }
            }
            Op::PullBatch(keys) => {
                let mut out = vec![0; keys.len() * width];
                let ok = keys.iter().all(|&k| model.valid(k));
                prop_assert_eq!(table.pull_batch(&keys, &mut out).is_ok(), ok);
                if ok {
                    let expected: Vec<i64> = keys.iter().flat_map(|&k| model.get(k)).collect();
                    prop_assert_eq!(out, expected);
                }
            }
        }
    }
    // Every row the model has is in the table, found by visiting the shards.
    let mut visited = HashMap::new();
    for shard in 0..table.shard_map().shards() {
        table
            .visit_shard(shard, |r| {
                visited.insert(r.key, r.values.to_vec());
            })
            .unwrap();
    }
    for (k, row) in &model.rows {
        prop_assert_eq!(visited.get(k), Some(row));
    }
    Ok(())
}

proptest! {
    #[test]
    fn dense_table_matches_the_sequential_model(
        (width, ops) in width_and_ops(),
        shards in 1..5usize,
        round_robin in any::<bool>(),
    ) {
        let placement = if round_robin { Placement::RoundRobin } else { Placement::Range };
        let spec = TableSpec::dense(0..20, width).shards(shards).placement(placement).update(Sum);
        check(spec, Some(0..20), ops)?;
    }

    #[test]
    fn sparse_table_matches_the_sequential_model(
        (width, ops) in width_and_ops(),
        shards in 1..5usize,
    ) {
        check(TableSpec::sparse(width).shards(shards), None, ops)?;
    }

    #[test]
    fn float_sgd_matches_the_same_formula_applied_sequentially(
        pushes in prop::collection::vec((0..4u64, prop::collection::vec(-10.0..10.0f64, 2)), 0..40),
    ) {
        let table = Table::new(TableSpec::<f64>::sparse(2).update(Sgd::new(0.05))).unwrap();
        let mut model: HashMap<u64, Vec<f64>> = HashMap::new();
        for (k, g) in &pushes {
            table.push(*k, g).unwrap();
            let row = model.entry(*k).or_insert_with(|| vec![0.0; 2]);
            row.iter_mut().zip(g).for_each(|(x, g)| *x -= 0.05 * g);
        }
        for (k, row) in model {
            let mut out = [0.0; 2];
            table.pull(k, &mut out).unwrap();
            prop_assert_eq!(out.to_vec(), row);
        }
    }

    #[test]
    fn concurrent_integer_sums_are_exact(
        per_thread in prop::collection::vec(
            prop::collection::vec((0..8u64, -100..100i64), 1..200), 2..5),
        sparse in any::<bool>(),
        width in prop::sample::select(&[4usize, 256][..]),
    ) {
        let spec = if sparse { TableSpec::<i64>::sparse(width).shards(3) } else { TableSpec::dense(0..8, width).shards(3) };
        let table = Table::new(spec).unwrap();
        // Element j of a push of `d` is `[d, 2d, -d, 1][j % 4]`.
        let delta = |d: i64| -> Vec<i64> { (0..width).map(|j| [d, 2 * d, -d, 1][j % 4]).collect() };
        thread::scope(|s| {
            for ops in &per_thread {
                let (table, delta) = (&table, &delta);
                s.spawn(move || {
                    let mut pulled = vec![0; width];
                    for &(k, d) in ops {
                        table.push(k, &delta(d)).unwrap();
                        // Pulls race the other threads' pushes; a row is
                        // never torn, so its columns keep their ratios.
                        table.pull(k, &mut pulled).unwrap();
                        for (j, &x) in pulled.iter().enumerate() {
                            let quarter = [pulled[0], 2 * pulled[0], -pulled[0], pulled[3]][j % 4];
                            assert_eq!(x, quarter, "row {k} torn at column {j}: {pulled:?}");
                        }
                    }
                });
            }
        });
        let mut expected = vec![vec![0i64; width]; 8];
        for &(k, d) in per_thread.iter().flatten() {
            expected[k as usize].iter_mut().zip(delta(d)).for_each(|(e, d)| *e += d);
        }
        for (k, e) in expected.iter().enumerate() {
            let mut out = vec![0i64; width];
            table.pull(k as u64, &mut out).unwrap();
            prop_assert_eq!(&out, e);
        }
    }

    #[test]
    fn wide_rows_apply_each_rule_as_narrow_rows_do(
        pushes in prop::collection::vec((0..3u64, prop::collection::vec(-4.0..4.0f64, 3)), 1..30),
        rule in 0..5usize,
    ) {
        // Every rule acts on each column independently (plus a per-row step
        // count), so the first three columns of a wide table (stored as
        // plain elements) must match a narrow table of three columns
        // (atomic cells) bit for bit.
        let update: Arc<dyn Update<f64>> = match rule {
            0 => Arc::new(Sum),
            1 => Arc::new(Sgd::new(0.1)),
            2 => Arc::new(Sgd::with_schedule(Schedule::InverseSqrt { sigma: 0.5 }).momentum(0.9)),
            3 => Arc::new(Adagrad::new(0.1)),
            _ => Arc::new(Adam::new(0.01)),
        };
        const WIDE: usize = 300;
        let narrow = Table::new(TableSpec::<f64>::sparse(3).update_shared(update.clone())).unwrap();
        let wide = Table::new(TableSpec::<f64>::dense(0..3, WIDE).update_shared(update)).unwrap();
        for (k, g) in &pushes {
            narrow.push(*k, g).unwrap();
            let mut wide_g = vec![0.5; WIDE];
            wide_g[..3].copy_from_slice(g);
            wide.push(*k, &wide_g).unwrap();
        }
        for k in 0..3 {
            let (mut a, mut b) = ([0.0; 3], vec![0.0; WIDE]);
            narrow.pull(k, &mut a).unwrap();
            wide.pull(k, &mut b).unwrap();
            prop_assert_eq!(&a[..], &b[..3]);
        }
    }
}
