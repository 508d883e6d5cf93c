//! Property tests: random operation sequences against a sequential model
//! (`HashMap<u64, Vec<_>>` with the same update formula), and concurrent
//! integer pushes whose final table must be the exact sum.

use std::collections::HashMap;
use std::thread;

use laggard::{Placement, Sgd, Sum, Table, TableSpec};
use proptest::prelude::*;

#[derive(Debug, Clone)]
enum Op {
    Push(u64, Vec<i64>),
    PushBatch(Vec<u64>, Vec<i64>),
    Pull(u64, usize),
    PullBatch(Vec<u64>),
}

const WIDTH: usize = 3;

fn key() -> impl Strategy<Value = u64> {
    // Mostly valid keys of a 0..20 dense table, sometimes outside it.
    prop_oneof![8 => 0..20u64, 1 => 20..25u64, 1 => any::<u64>()]
}

fn row(width: usize) -> impl Strategy<Value = Vec<i64>> {
    prop::collection::vec(-1000..1000i64, width)
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (key(), prop_oneof![9 => row(WIDTH), 1 => row(WIDTH + 1)]).prop_map(|(k, r)| Op::Push(k, r)),
        2 => prop::collection::vec(key(), 0..4).prop_flat_map(|keys| {
            let n = keys.len() * WIDTH;
            (Just(keys), prop_oneof![9 => row(n), 1 => row(n + 1)])
        }).prop_map(|(k, r)| Op::PushBatch(k, r)),
        3 => (key(), prop_oneof![9 => Just(WIDTH), 1 => Just(WIDTH - 1)]).prop_map(|(k, w)| Op::Pull(k, w)),
        1 => prop::collection::vec(key(), 0..4).prop_map(Op::PullBatch),
    ]
}

/// The sequential model: a map of rows, with the dense table's key range
/// (or none, for sparse) and the same `Sum` rule.
struct Model {
    rows: HashMap<u64, Vec<i64>>,
    dense: Option<std::ops::Range<u64>>,
}

impl Model {
    fn valid(&self, key: u64) -> bool {
        self.dense.as_ref().is_none_or(|r| r.contains(&key))
    }
    fn push(&mut self, key: u64, delta: &[i64]) {
        let row = self.rows.entry(key).or_insert_with(|| vec![0; WIDTH]);
        row.iter_mut().zip(delta).for_each(|(x, d)| *x += d);
    }
    fn get(&self, key: u64) -> Vec<i64> {
        self.rows
            .get(&key)
            .cloned()
            .unwrap_or_else(|| vec![0; WIDTH])
    }
}

fn check(
    spec: TableSpec<i64>,
    dense: Option<std::ops::Range<u64>>,
    ops: Vec<Op>,
) -> Result<(), TestCaseError> {
    let table = Table::new(spec).unwrap();
    let mut model = Model {
        rows: HashMap::new(),
        dense,
    };
    for op in ops {
        match op {
            Op::Push(k, d) => {
                let ok = model.valid(k) && d.len() == WIDTH;
                prop_assert_eq!(table.push(k, &d).is_ok(), ok);
                if ok {
                    model.push(k, &d);
                }
            }
            Op::PushBatch(keys, d) => {
                let ok = keys.iter().all(|&k| model.valid(k)) && d.len() == keys.len() * WIDTH;
                prop_assert_eq!(table.push_batch(&keys, &d).is_ok(), ok);
                if ok {
                    for (k, d) in keys.iter().zip(d.chunks(WIDTH)) {
                        model.push(*k, d);
                    }
                }
            }
            Op::Pull(k, w) => {
                let mut out = vec![0; w];
                let ok = model.valid(k) && w == WIDTH;
                prop_assert_eq!(table.pull(k, &mut out).is_ok(), ok);
                if ok {
                    prop_assert_eq!(out, model.get(k));
                }
            }
            Op::PullBatch(keys) => {
                let mut out = vec![0; keys.len() * WIDTH];
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
        ops in prop::collection::vec(op(), 0..60),
        shards in 1..5usize,
        round_robin in any::<bool>(),
    ) {
        let placement = if round_robin { Placement::RoundRobin } else { Placement::Range };
        let spec = TableSpec::dense(0..20, WIDTH).shards(shards).placement(placement).update(Sum);
        check(spec, Some(0..20), ops)?;
    }

    #[test]
    fn sparse_table_matches_the_sequential_model(
        ops in prop::collection::vec(op(), 0..60),
        shards in 1..5usize,
    ) {
        check(TableSpec::sparse(WIDTH).shards(shards), None, ops)?;
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
    ) {
        let spec = if sparse { TableSpec::<i64>::sparse(4).shards(3) } else { TableSpec::dense(0..8, 4).shards(3) };
        let table = Table::new(spec).unwrap();
        thread::scope(|s| {
            for ops in &per_thread {
                let table = &table;
                s.spawn(move || {
                    for &(k, d) in ops {
                        table.push(k, &[d, 2 * d, -d, 1]).unwrap();
                    }
                });
            }
        });
        let mut expected = [[0i64; 4]; 8];
        for &(k, d) in per_thread.iter().flatten() {
            let e = &mut expected[k as usize];
            e[0] += d; e[1] += 2 * d; e[2] -= d; e[3] += 1;
        }
        for (k, e) in expected.iter().enumerate() {
            let mut out = [0i64; 4];
            table.pull(k as u64, &mut out).unwrap();
            prop_assert_eq!(&out, e);
        }
    }
}
