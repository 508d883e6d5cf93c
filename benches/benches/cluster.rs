//! Many workers training through one in-process cluster, the default
//! transport: 8 worker threads and 2 server shards on however many cores
//! the machine has (2 here, so the threads outnumber the cores), each
//! worker pulling 256 rows of 64 `f32`, summing them and pushing a delta
//! to every row once per clock. The baseline, in the same run, does the
//! same work with 8 threads reading and adding into one shared `Table`
//! directly: no servers, no messages, no consistency model. The ratio is
//! what the parameter server's protocol, transport and waiting cost on a
//! busy machine. Throughput counts worker clocks.

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use laggard::{Cluster, ClusterSpec, Consistency, Table, TableSpec};

const WORKERS: usize = 8;
const KEYS: u64 = 256;
const WIDTH: usize = 64;

/// One worker's step on `rows`: read them all and make a delta (the
/// "gradient").
fn compute(rows: &[f32], grads: &mut [f32]) {
    black_box(rows.iter().sum::<f32>());
    grads.fill(0.001);
}

fn cluster(c: &mut Criterion) {
    let mut g = c.benchmark_group("cluster_8_workers");
    g.throughput(Throughput::Elements(WORKERS as u64));
    g.sample_size(10);
    let keys: Vec<u64> = (0..KEYS).collect();
    let spec_of = |consistency| {
        ClusterSpec::new(2, WORKERS).table(
            "w",
            TableSpec::<f32>::dense(0..KEYS, WIDTH).consistency(consistency),
        )
    };

    g.bench_function("baseline_threads_sharing_a_table", |b| {
        let table = Table::new(TableSpec::<f32>::dense(0..KEYS, WIDTH)).unwrap();
        b.iter_custom(|clocks| {
            let started = Instant::now();
            std::thread::scope(|s| {
                for _ in 0..WORKERS {
                    s.spawn(|| {
                        let mut rows = vec![0f32; KEYS as usize * WIDTH];
                        let mut grads = rows.clone();
                        for _ in 0..clocks {
                            table.pull_batch(&keys, &mut rows).unwrap();
                            compute(&rows, &mut grads);
                            table.push_batch(&keys, &grads).unwrap();
                        }
                    });
                }
            });
            started.elapsed()
        })
    });

    for (name, consistency) in [
        ("laggard_ssp2", Consistency::Ssp { staleness: 2 }),
        ("laggard_bsp", Consistency::Bsp),
    ] {
        g.bench_function(name, |b| {
            b.iter_custom(|clocks| {
                let cluster = Cluster::start(spec_of(consistency)).unwrap();
                let started = Instant::now();
                cluster
                    .run_workers(|worker| -> laggard::Result<()> {
                        let table = worker.table::<f32>("w")?;
                        let mut rows = vec![0f32; KEYS as usize * WIDTH];
                        let mut grads = rows.clone();
                        for _ in 0..clocks {
                            worker.pull(&table, &keys, &mut rows)?;
                            compute(&rows, &mut grads);
                            worker.push(&table, &keys, &grads)?;
                            worker.clock()?;
                        }
                        Ok(())
                    })
                    .unwrap();
                let took = started.elapsed();
                cluster.shutdown().unwrap();
                took
            })
        });
    }
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().warm_up_time(Duration::from_millis(500)).measurement_time(Duration::from_secs(3));
    targets = cluster
}
criterion_main!(benches);
