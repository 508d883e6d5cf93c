//! Saving and loading a checkpoint of a 16 MiB table (1,024 rows of 4,096
//! `f32`), against `copy_from_slice` of the same number of bytes, measured
//! in the same run: what a checkpoint costs beyond moving its bytes once
//! (reading each row under its lock, encoding, the checksum, the buffered
//! writer's copy; on load, decoding and restoring each row under its lock).

use std::hint::black_box;
use std::time::Duration;

use criterion::measurement::WallTime;
use criterion::{BenchmarkGroup, Criterion, Throughput, criterion_group, criterion_main};
use laggard::checkpoint::{self, Foreign};
use laggard::{Table, TableSpec};

const ROWS: u64 = 1024;
const WIDTH: usize = 4096;
const BYTES: usize = ROWS as usize * WIDTH * 4;

fn table() -> Table<f32> {
    Table::new(TableSpec::<f32>::dense(0..ROWS, WIDTH)).unwrap()
}

/// The group's baseline: `copy_from_slice` of as many bytes.
fn memcpy_baseline(g: &mut BenchmarkGroup<'_, WallTime>, from: &[u8], to: &mut [u8]) {
    g.bench_function("baseline_memcpy", |b| {
        b.iter(|| {
            to.copy_from_slice(black_box(from));
            black_box(&mut *to);
        })
    });
}

fn checkpoints(c: &mut Criterion) {
    let trained = table();
    let delta: Vec<f32> = (0..WIDTH).map(|i| i as f32 * 0.25).collect();
    for key in 0..ROWS {
        trained.push(key, &delta).unwrap();
    }
    let from = vec![1u8; BYTES];
    let mut to = vec![0u8; BYTES];
    let mut saved = Vec::with_capacity(BYTES + (1 << 20));

    let mut g = c.benchmark_group("checkpoint_save");
    g.throughput(Throughput::Bytes(BYTES as u64));
    memcpy_baseline(&mut g, &from, &mut to);
    g.bench_function("laggard_save", |b| {
        b.iter(|| {
            saved.clear();
            checkpoint::save(&trained, &mut saved).unwrap();
            black_box(&mut saved);
        })
    });
    g.finish();

    let restored = table();
    let mut g = c.benchmark_group("checkpoint_load");
    g.throughput(Throughput::Bytes(BYTES as u64));
    memcpy_baseline(&mut g, &from, &mut to);
    g.bench_function("laggard_load", |b| {
        b.iter(|| checkpoint::load(&restored, black_box(&saved[..]), Foreign::Refuse).unwrap())
    });
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(20).warm_up_time(Duration::from_millis(500)).measurement_time(Duration::from_secs(3));
    targets = checkpoints
}
criterion_main!(benches);
