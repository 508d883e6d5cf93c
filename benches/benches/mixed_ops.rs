//! A mixed push/pull workload on 64-f32 rows over 1M keys, with 1 and 2
//! threads: laggard's dense table against `Mutex<HashMap<u64, Vec<f32>>>`,
//! `RwLock<Vec<f32>>` (one big array) and `DashMap<u64, Vec<f32>>`, all
//! measured in the same run on the same key sequence.

use std::collections::HashMap;
use std::hint::black_box;
use std::sync::{Mutex, RwLock};
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use dashmap::DashMap;
use laggard::{Sum, Table, TableSpec};

const KEYS: u64 = 1 << 20;
const WIDTH: usize = 64;

/// The operations every store must offer: add a delta to a row, copy a row out.
trait Store: Sync {
    fn push(&self, key: u64, delta: &[f32]);
    fn pull(&self, key: u64, out: &mut [f32]);
}

impl Store for Table<f32> {
    fn push(&self, key: u64, delta: &[f32]) {
        Table::push(self, key, delta).unwrap()
    }
    fn pull(&self, key: u64, out: &mut [f32]) {
        Table::pull(self, key, out).unwrap()
    }
}

impl Store for Mutex<HashMap<u64, Vec<f32>>> {
    fn push(&self, key: u64, delta: &[f32]) {
        let mut map = self.lock().unwrap();
        let row = map.get_mut(&key).unwrap();
        row.iter_mut().zip(delta).for_each(|(x, d)| *x += d);
    }
    fn pull(&self, key: u64, out: &mut [f32]) {
        out.copy_from_slice(&self.lock().unwrap()[&key]);
    }
}

impl Store for RwLock<Vec<f32>> {
    fn push(&self, key: u64, delta: &[f32]) {
        let mut all = self.write().unwrap();
        let start = key as usize * WIDTH;
        all[start..start + WIDTH]
            .iter_mut()
            .zip(delta)
            .for_each(|(x, d)| *x += d);
    }
    fn pull(&self, key: u64, out: &mut [f32]) {
        let start = key as usize * WIDTH;
        out.copy_from_slice(&self.read().unwrap()[start..start + WIDTH]);
    }
}

impl Store for DashMap<u64, Vec<f32>> {
    fn push(&self, key: u64, delta: &[f32]) {
        let mut row = self.get_mut(&key).unwrap();
        row.iter_mut().zip(delta).for_each(|(x, d)| *x += d);
    }
    fn pull(&self, key: u64, out: &mut [f32]) {
        out.copy_from_slice(&self.get(&key).unwrap());
    }
}

/// `iters` operations per thread: a pseudo-random key, then a push or a
/// pull (half each), the same sequence for every store.
fn run(store: &dyn Store, threads: u64, iters: u64) -> Duration {
    let start = Instant::now();
    std::thread::scope(|s| {
        for t in 0..threads {
            s.spawn(move || {
                let delta = [0.5f32; WIDTH];
                let mut out = [0f32; WIDTH];
                let mut x = 0x9e37_79b9_7f4a_7c15u64 ^ (t + 1);
                for _ in 0..iters {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    let key = x % KEYS;
                    if x & (1 << 40) == 0 {
                        store.push(key, &delta);
                    } else {
                        store.pull(key, &mut out);
                        black_box(&out);
                    }
                }
            });
        }
    });
    start.elapsed()
}

fn mixed(c: &mut Criterion) {
    let table = Table::new(
        TableSpec::<f32>::dense(0..KEYS, WIDTH)
            .shards(4)
            .update(Sum),
    )
    .unwrap();
    let mutex_map: Mutex<HashMap<u64, Vec<f32>>> =
        Mutex::new((0..KEYS).map(|k| (k, vec![0.0; WIDTH])).collect());
    let rwlock_vec = RwLock::new(vec![0f32; KEYS as usize * WIDTH]);
    let dash: DashMap<u64, Vec<f32>> = (0..KEYS).map(|k| (k, vec![0.0; WIDTH])).collect();
    let stores: [(&str, &dyn Store); 4] = [
        ("baseline_mutex_hashmap", &mutex_map),
        ("baseline_rwlock_vec", &rwlock_vec),
        ("baseline_dashmap", &dash),
        ("laggard_dense_table", &table),
    ];
    for threads in [1u64, 2] {
        let mut g = c.benchmark_group(format!("mixed_ops_{threads}_threads"));
        g.throughput(Throughput::Elements(threads));
        for (name, store) in stores {
            g.bench_function(BenchmarkId::from_parameter(name), |b| {
                b.iter_custom(|iters| run(store, threads, iters))
            });
        }
        g.finish();
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(20).warm_up_time(Duration::from_millis(500)).measurement_time(Duration::from_secs(2));
    targets = mixed
}
criterion_main!(benches);
