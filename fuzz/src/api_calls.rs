//! Drives the core crate's public API with calls decoded from arbitrary
//! bytes: table specs (valid or not, row limits included), pushes and pulls with any widths and
//! keys, shard visits, and staleness-gate operations. Any panic is a bug:
//! bad input must come back as an `Error`.
//!
//! Shared by the cargo-fuzz target (`fuzz/fuzz_targets/api_calls.rs`) and the
//! stable corpus replay test (`tests/fuzz_corpus.rs`).

use std::time::Instant;

use laggard::{
    Adagrad, Adam, Consistency, Init, Placement, Sgd, StalenessGate, Sum, Table, TableSpec,
    WorkerId,
};

/// Reads bytes from the input, yielding zeros once it runs out.
struct Bytes<'a>(&'a [u8]);

impl Bytes<'_> {
    fn u8(&mut self) -> u8 {
        let (&b, rest) = self.0.split_first().unwrap_or((&0, &[]));
        self.0 = rest;
        b
    }
    fn u64(&mut self) -> u64 {
        (0..8).fold(0, |acc, _| (acc << 8) | u64::from(self.u8()))
    }
    fn f64(&mut self) -> f64 {
        f64::from_bits(self.u64())
    }
    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// A table spec, and the row limit per shard it sets, if any.
fn spec(b: &mut Bytes<'_>) -> (TableSpec<f32>, Option<usize>) {
    let first = b.u8();
    let width = usize::from(first % 9); // 0 is invalid on purpose
    // From the same byte, so that older corpus inputs keep their meaning
    // otherwise, and most keep a valid table: a row limit of 1 to 3 rows
    // for a sparse table, rarely 0 (invalid) or one for a dense table
    // (which refuses it).
    let code = first / 9 % 16;
    let dense = b.u8() % 2 == 0;
    let limit = match (dense, code) {
        (true, 1) | (false, 0..=3) => Some(usize::from(code)),
        _ => None,
    };
    let mut spec = if dense {
        // Keep dense tables small: the harness, not the library, bounds memory.
        let start = b.u64() % 1_000_000;
        let len = u64::from(b.u8()) * 16;
        TableSpec::dense(start..start + len, width)
    } else {
        TableSpec::sparse(width)
    };
    spec = spec.shards(usize::from(b.u8() % 6));
    spec = match b.u8() % 4 {
        0 => spec.placement(Placement::Range),
        1 => spec.placement(Placement::RoundRobin),
        2 => spec.placement(Placement::Hash),
        _ => spec,
    };
    if let Some(rows) = limit {
        spec = spec.max_rows_per_shard(rows);
    }
    spec = match b.u8() % 5 {
        0 => spec.update(Sum),
        1 => spec.update(Sgd::new(b.f64()).momentum(b.f64())),
        2 => spec.update(Adagrad::new(b.f64())),
        3 => spec.update(Adam::new(b.f64()).betas(b.f64(), b.f64())),
        _ => spec,
    };
    let spec = match b.u8() % 3 {
        0 => spec.init(Init::Constant(b.f64())),
        1 => spec.init(Init::Uniform {
            low: b.f64(),
            high: b.f64(),
            seed: b.u64(),
        }),
        _ => spec,
    };
    (spec, limit)
}

fn key(b: &mut Bytes<'_>) -> u64 {
    match b.u8() % 3 {
        0 => u64::from(b.u8()),
        1 => 1_000_000 + u64::from(b.u8()),
        _ => b.u64(),
    }
}

/// Runs the calls encoded in `data`. Panics only on a bug in laggard.
pub fn run(data: &[u8]) {
    let mut b = Bytes(data);
    let (spec, limit) = spec(&mut b);
    let table = Table::new(spec).ok();
    let consistency = match b.u8() % 3 {
        0 => Consistency::Bsp,
        1 => Consistency::Ssp {
            staleness: u64::from(b.u8() % 4),
        },
        _ => Consistency::Async,
    };
    let gate = StalenessGate::new(usize::from(b.u8() % 5), consistency);
    let mut buf = vec![0f32; 64];
    while !b.is_empty() {
        let op = b.u8();
        let len = usize::from(b.u8() % 64);
        let worker = WorkerId(u32::from(b.u8() % 6));
        match (op % 10, &table) {
            (0, Some(t)) => drop(t.push(key(&mut b), &buf[..len])),
            (1, Some(t)) => drop(t.pull(key(&mut b), &mut buf[..len])),
            (2, Some(t)) => {
                let keys: Vec<u64> = (0..len % 5).map(|_| key(&mut b)).collect();
                drop(t.push_batch(&keys, &buf[..len]));
            }
            (3, Some(t)) => {
                let keys: Vec<u64> = (0..len % 5).map(|_| key(&mut b)).collect();
                drop(t.pull_batch(&keys, &mut buf[..len]));
            }
            (4, Some(t)) => drop(t.visit_shard(len % 7, |r| assert_eq!(r.values.len(), t.width()))),
            (5, _) => drop(gate.advance(worker)),
            (6, _) => drop(if op & 0x80 == 0 {
                gate.leave(worker)
            } else {
                gate.declare_dead(worker)
            }),
            (7, _) => drop(gate.join()),
            (8, _) => drop(gate.wait_to_read(worker, u64::from(b.u8()), Instant::now())),
            (9, _) => buf.iter_mut().for_each(|x| *x = f32::from(b.u8()) - 128.0),
            _ => {}
        }
    }
    if let Some(t) = &table {
        let rows: Vec<usize> = (0..t.shard_map().shards())
            .map(|s| {
                let mut n = 0;
                t.visit_shard(s, |_| n += 1)
                    .expect("every shard of the map exists");
                n
            })
            .collect();
        assert_eq!(rows.iter().sum::<usize>(), t.rows());
        if let Some(limit) = limit {
            assert!(rows.iter().all(|&n| n <= limit), "{rows:?} past {limit}");
        }
    }
}
