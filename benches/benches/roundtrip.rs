//! End-to-end push + pull round trip of one row through an in-process
//! cluster (1 server shard, 1 worker, BSP): the worker pushes the row,
//! finishes its clock, and pulls the row back from the server (the pull
//! must reflect the push). The baseline, in the same run, copies the same
//! bytes the round trip moves: the row once each way (`2 × row` bytes of
//! memcpy).

use std::hint::black_box;
use std::time::Duration;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use laggard::{Cluster, ClusterSpec, Consistency, TableSpec};

fn roundtrip(c: &mut Criterion) {
    for bytes in [4 << 10, 64 << 10, 1 << 20, 16 << 20] {
        let len = bytes / 4;
        let mut g = c.benchmark_group(format!("roundtrip_{}KiB", bytes >> 10));
        g.throughput(Throughput::Bytes(2 * bytes as u64));
        if bytes >= 1 << 20 {
            g.sample_size(10);
        }

        let src = vec![1.5f32; 2 * len];
        let mut dst = vec![0f32; 2 * len];
        g.bench_function("baseline_memcpy_2x_row", |b| {
            b.iter(|| {
                dst.copy_from_slice(black_box(&src));
                black_box(&mut dst);
            })
        });

        let spec = ClusterSpec::new(1, 1).table(
            "row",
            TableSpec::<f32>::dense(0..1, len).consistency(Consistency::Bsp),
        );
        let cluster = Cluster::start(spec).unwrap();
        let mut worker = cluster.worker(0).unwrap();
        let table = worker.table::<f32>("row").unwrap();
        let delta = vec![0.25f32; len];
        let mut out = vec![0f32; len];
        g.bench_function("laggard_push_clock_pull", |b| {
            b.iter(|| {
                worker.push(&table, &[0], black_box(&delta)).unwrap();
                worker.clock().unwrap();
                // BSP: the pull needs this clock's push, so it goes to the server.
                worker.pull(&table, &[0], &mut out).unwrap();
                black_box(&mut out);
            })
        });
        g.finish();
        worker.leave().unwrap();
        cluster.shutdown().unwrap();
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default().warm_up_time(Duration::from_millis(300)).measurement_time(Duration::from_secs(2));
    targets = roundtrip
}
criterion_main!(benches);
