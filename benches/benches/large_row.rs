//! Push (Sgd) and pull of one large dense row, against a plain axpy loop
//! and `copy_from_slice` of the same size, measured in the same run.

use std::hint::black_box;
use std::time::Duration;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use laggard::{Sgd, Table, TableSpec};

const LEN: usize = 1 << 20; // 1M f32 = 4 MiB

fn large_row(c: &mut Criterion) {
    let table = Table::new(TableSpec::<f32>::dense(0..1, LEN).update(Sgd::new(1e-6))).unwrap();
    let grad: Vec<f32> = (0..LEN).map(|i| (i % 7) as f32 * 0.5).collect();
    let mut plain = vec![0f32; LEN];
    let mut out = vec![0f32; LEN];

    let mut g = c.benchmark_group("large_row_push");
    g.throughput(Throughput::Bytes((LEN * 4) as u64));
    g.bench_function("baseline_axpy_loop", |b| {
        b.iter(|| {
            let lr = black_box(1e-6f32);
            for (x, g) in plain.iter_mut().zip(&grad) {
                *x -= lr * g;
            }
            black_box(&mut plain);
        })
    });
    g.bench_function("laggard_push_sgd", |b| {
        b.iter(|| table.push(0, black_box(&grad)).unwrap())
    });
    g.finish();

    let mut g = c.benchmark_group("large_row_pull");
    g.throughput(Throughput::Bytes((LEN * 4) as u64));
    g.bench_function("baseline_memcpy", |b| {
        b.iter(|| {
            out.copy_from_slice(black_box(&plain));
            black_box(&mut out);
        })
    });
    g.bench_function("laggard_pull", |b| {
        b.iter(|| {
            table.pull(0, &mut out).unwrap();
            black_box(&mut out);
        })
    });
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(30).warm_up_time(Duration::from_millis(500)).measurement_time(Duration::from_secs(3));
    targets = large_row
}
criterion_main!(benches);
