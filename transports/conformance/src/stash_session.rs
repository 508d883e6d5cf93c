//! A check through the whole runtime for transports that lend a stash
//! ([`Endpoint::stash`](laggard::transport::Endpoint::stash)): pushes whose
//! rows go through it sum exactly as over the in-process transport.

use std::time::{Duration, Instant};

use laggard::transport::{Endpoint, Transport};
use laggard::{Cluster, ClusterSpec, Consistency, Server, TableSpec, Worker, WorkerId};

/// `i64`s per row of [`stashed_pushes_sum_exactly`]'s table: 131,080
/// bytes, long enough to be stashed, and not a multiple of 64.
pub const STASH_ROW_WIDTH: usize = 16_385;
/// Rows of the table, each pushed every clock (and the first twice).
pub const STASH_KEYS: u64 = 3;
/// Clocks each worker runs.
pub const STASH_CLOCKS: u64 = 6;

fn spec(workers: usize) -> ClusterSpec {
    ClusterSpec::new(1, workers)
        .table(
            "long",
            TableSpec::<i64>::dense(0..STASH_KEYS, STASH_ROW_WIDTH).consistency(Consistency::Bsp),
        )
        .timeout(Duration::from_secs(60))
}

/// Each clock, pushes every key (key 0 twice, summed in its pending row)
/// with values that say which worker, clock and element; then reads every
/// row after the last clock.
fn session<E: Endpoint>(worker: &mut Worker<E>) -> laggard::Result<Vec<i64>> {
    let t = worker.table::<i64>("long")?;
    let w = worker.id().0 as i64 + 1;
    for clock in 0..STASH_CLOCKS as i64 {
        for key in 0..STASH_KEYS {
            let delta: Vec<i64> = (0..STASH_ROW_WIDTH as i64)
                .map(|i| w * (clock + 1) + i)
                .collect();
            worker.push(&t, &[key], &delta)?;
        }
        worker.push(&t, &[0], &vec![w; STASH_ROW_WIDTH])?;
        worker.clock()?;
    }
    let mut rows = vec![0i64; STASH_KEYS as usize * STASH_ROW_WIDTH];
    worker.pull(&t, &(0..STASH_KEYS).collect::<Vec<_>>(), &mut rows)?;
    Ok(rows)
}

/// Runs a session of [`STASH_CLOCKS`] clocks, each pushing [`STASH_KEYS`]
/// rows of [`STASH_ROW_WIDTH`] `i64`s (one of them twice), on `workers`
/// workers and one server over `net`; checks that every worker ends with
/// exactly the rows the same session gives over the in-process transport,
/// and returns how many rows went through a stash, over all workers
/// ([`ClientStats::rows_stashed`](laggard::proto::ClientStats::rows_stashed)).
/// With room in the stash for a clock's rows that is
/// `workers * STASH_CLOCKS * STASH_KEYS` (the second push of key 0 is
/// summed into its stashed row).
///
/// # Panics
/// If any call fails or any row differs.
pub fn stashed_pushes_sum_exactly<T: Transport>(net: &T, workers: usize) -> u64 {
    let spec = spec(workers);
    let expected = {
        let cluster = Cluster::start(spec.clone()).expect("an in-process cluster");
        let rows = cluster
            .run_workers(session)
            .expect("the in-process session");
        cluster.shutdown().expect("an in-process shutdown");
        rows
    };
    let soon = Instant::now() + Duration::from_secs(30);
    let server = Server::new(net.bind(&spec.server_name(0)).unwrap(), &spec, 0).unwrap();
    std::thread::scope(|s| {
        let serving = s.spawn(move || server.run_until_workers_done());
        let running: Vec<_> = (0..workers)
            .map(|w| {
                let ep = net.bind(&spec.worker_name(w)).unwrap();
                let spec = &spec;
                s.spawn(move || {
                    let mut worker = Worker::connect(ep, spec, WorkerId(w as u32), soon).unwrap();
                    let rows = session(&mut worker).unwrap();
                    let stashed = worker.stats().rows_stashed;
                    worker.leave().unwrap();
                    (rows, stashed)
                })
            })
            .collect();
        let mut stashed = 0;
        for (w, r) in running.into_iter().enumerate() {
            let (rows, s) = r.join().unwrap();
            assert!(
                rows == expected[w],
                "worker {w}'s rows differ from in-process"
            );
            stashed += s;
        }
        serving.join().unwrap().unwrap();
        stashed
    })
}
