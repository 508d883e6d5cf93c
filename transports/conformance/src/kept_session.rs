//! A check through the whole runtime for transports that let frames be
//! kept ([`Endpoint::keep_frame`](laggard::transport::Endpoint::keep_frame)):
//! pulled rows cached where their frames landed read exactly what was
//! pushed, also when the kept frames crowd the server's room and are
//! copied out.

use std::time::{Duration, Instant};

use laggard::proto::ClientStats;
use laggard::transport::Transport;
use laggard::{ClusterSpec, Consistency, Server, TableSpec, Worker, WorkerId};

/// `i64`s per row of [`pulled_rows_read_right_when_kept`]'s table: 65,608
/// bytes, long enough for a frame of one row to be kept.
pub const KEPT_ROW_WIDTH: usize = 8_201;
/// Rows of the table.
pub const KEPT_KEYS: u64 = 10;
/// Clocks the worker runs.
pub const KEPT_CLOCKS: u64 = 8;

/// What the worker pushes to `key` at `clock`, element `i`.
fn delta(key: u64, clock: u64, i: usize) -> i64 {
    (key as i64 + 1) * 1_000_003 + clock as i64 * 7_919 + i as i64
}

/// Runs one worker and one server over `net` for [`KEPT_CLOCKS`] clocks of
/// a BSP table of [`KEPT_KEYS`] rows of [`KEPT_ROW_WIDTH`] `i64`s. Each
/// clock the worker pushes every row, ends the clock and pulls every row
/// back: on even clocks all in one call (a response of several rows,
/// split by the largest frame), on odd ones one by one (some read in
/// place, [`Worker::pull_with`]). Every row read must be exactly the sum
/// of the pushes so far. Returns the worker's counters: where the
/// transport keeps frames, `rows_kept` counts the rows cached in them and
/// `kept_rows_copied` those copied out because they crowded the server.
///
/// # Panics
/// If any call fails or any row read differs.
pub fn pulled_rows_read_right_when_kept<T: Transport>(net: &T) -> ClientStats {
    let spec = ClusterSpec::new(1, 1)
        .table(
            "kept",
            TableSpec::<i64>::dense(0..KEPT_KEYS, KEPT_ROW_WIDTH).consistency(Consistency::Bsp),
        )
        .timeout(Duration::from_secs(60));
    let soon = Instant::now() + Duration::from_secs(30);
    let server = Server::new(net.bind(&spec.server_name(0)).unwrap(), &spec, 0).unwrap();
    std::thread::scope(|s| {
        let serving = s.spawn(move || server.run_until_workers_done());
        let ep = net.bind(&spec.worker_name(0)).unwrap();
        let mut worker = Worker::connect(ep, &spec, WorkerId(0), soon).unwrap();
        let t = worker.table::<i64>("kept").unwrap();
        let keys: Vec<u64> = (0..KEPT_KEYS).collect();
        let mut sums = vec![vec![0i64; KEPT_ROW_WIDTH]; KEPT_KEYS as usize];
        let mut rows = vec![0i64; KEPT_KEYS as usize * KEPT_ROW_WIDTH];
        for clock in 0..KEPT_CLOCKS {
            for &key in &keys {
                let d: Vec<i64> = (0..KEPT_ROW_WIDTH).map(|i| delta(key, clock, i)).collect();
                worker.push(&t, &[key], &d).unwrap();
                for (sum, d) in sums[key as usize].iter_mut().zip(d) {
                    *sum += d;
                }
            }
            worker.clock().unwrap();
            if clock % 2 == 0 {
                worker.pull(&t, &keys, &mut rows).unwrap();
            } else {
                for &key in &keys {
                    let row = &mut rows[key as usize * KEPT_ROW_WIDTH..][..KEPT_ROW_WIDTH];
                    if key % 2 == 0 {
                        worker.pull(&t, &[key], row).unwrap();
                    } else {
                        worker
                            .pull_with(&t, key, |got| row.copy_from_slice(got))
                            .unwrap();
                    }
                }
            }
            for (key, row) in rows.chunks_exact(KEPT_ROW_WIDTH).enumerate() {
                assert!(
                    row == sums[key],
                    "clock {clock}: row {key} is not the sum of its pushes"
                );
            }
        }
        let stats = worker.stats();
        worker.leave().unwrap();
        serving.join().unwrap().unwrap();
        stats
    })
}
