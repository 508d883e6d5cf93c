//! A worker's row cache within its budget (`ClusterSpec::cache_bytes`):
//! pulls stay correct and the SSP guarantee holds while rows are dropped,
//! and a started pull whose cached rows were dropped before it finished
//! pulls them again.

use std::time::{Duration, Instant};

use laggard::{Cluster, ClusterSpec, Consistency, TableSpec};

/// Under SSP(1), two workers push 1 to each of 64 sparse rows of 16
/// `i64` per clock and pull a sliding window of them, with room for 6
/// rows in the cache: every pulled row has at least the pushes SSP
/// guarantees (both workers' clocks up to c - 2) and at most all pushes
/// made, rows are dropped, and the final sums are exact.
#[test]
fn pulls_stay_within_ssp_bounds_while_the_cache_drops_rows() {
    let (workers, clocks, keys, width) = (2usize, 12u64, 64u64, 16usize);
    let spec = ClusterSpec::new(2, workers)
        .table(
            "emb",
            TableSpec::<i64>::sparse(width).consistency(Consistency::Ssp { staleness: 1 }),
        )
        .cache_bytes(6 * width * 8)
        .timeout(Duration::from_secs(20));
    let cluster = Cluster::start(spec).unwrap();
    let evicted = cluster
        .run_workers(|worker| {
            let emb = worker.table::<i64>("emb")?;
            let mut rows = vec![0i64; 8 * width];
            for c in 0..clocks {
                // A window of 8 keys that moves by 5 each clock.
                let window: Vec<u64> = (0..8).map(|i| (c * 5 + i) % keys).collect();
                worker.pull(&emb, &window, &mut rows)?;
                for (key, row) in window.iter().zip(rows.chunks_exact(width)) {
                    let least = (workers as u64 * c.saturating_sub(1)) as i64;
                    let most = (workers as u64 * clocks) as i64;
                    assert!(
                        row.iter().all(|&v| v >= least && v <= most),
                        "key {key} at clock {c}: {row:?} outside {least}..={most}"
                    );
                }
                let all: Vec<u64> = (0..keys).collect();
                worker.push(&emb, &all, &vec![1i64; keys as usize * width])?;
                worker.clock()?;
            }
            Ok(worker.stats().rows_evicted)
        })
        .unwrap();
    assert!(evicted.iter().all(|&e| e > 0), "rows dropped: {evicted:?}");
    let mut row = vec![0i64; width];
    for key in 0..keys {
        cluster.read::<i64>("emb", &[key], &mut row).unwrap();
        assert_eq!(
            row,
            vec![(workers as u64 * clocks) as i64; width],
            "key {key}"
        );
    }
    cluster.shutdown().unwrap();
}

/// A pull started from the cache, then another pull that drops those rows
/// for the budget, then the first finished: its rows are pulled again.
#[test]
fn a_started_pull_whose_rows_were_dropped_pulls_them_again() {
    let spec = ClusterSpec::new(1, 1)
        .table("w", TableSpec::<i64>::dense(0..40, 2))
        .cache_bytes(8 * 2 * 8);
    let cluster = Cluster::start(spec).unwrap();
    let mut worker = cluster.worker(0).unwrap();
    let w = worker.table::<i64>("w").unwrap();
    let keys: Vec<u64> = (0..40).collect();
    let deltas: Vec<i64> = keys.iter().flat_map(|&k| [k as i64, -(k as i64)]).collect();
    worker.push(&w, &keys, &deltas).unwrap();
    let ticket = worker.start_clock().unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    worker.wait_applied(&ticket, deadline).unwrap();

    let mut first = [0i64; 8];
    worker.pull(&w, &[0, 1, 2, 3], &mut first).unwrap();
    let cached = worker.stats().rows_from_cache;
    let started = worker.start_pull(&w, &[3, 2, 1, 0]).unwrap();
    assert_eq!(
        worker.stats().rows_from_cache,
        cached + 4,
        "all from the cache"
    );
    // Two more pulls: the first brings the cache over budget, the second
    // drops the least recently used rows, those of `started`.
    let mut other = vec![0i64; 2 * 16];
    worker.pull(&w, &keys[10..26], &mut other).unwrap();
    worker.pull(&w, &keys[30..32], &mut other[..4]).unwrap();
    assert!(worker.stats().rows_evicted >= 4, "{:?}", worker.stats());
    let mut out = [0i64; 8];
    worker.finish_pull(started, &mut out, deadline).unwrap();
    assert_eq!(out, [3, -3, 2, -2, 1, -1, 0, 0]);
    worker.leave().unwrap();
    cluster.shutdown().unwrap();
}
