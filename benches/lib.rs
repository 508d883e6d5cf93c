//! Criterion benchmarks for laggard live in `benches/`; see `README.md`
//! for how to run them and the ratios measured so far. This library holds
//! what more than one of them measures the same way.

use std::hint::black_box;
use std::time::{Duration, Instant};

use laggard::transport::Endpoint;
use laggard::{Element, TableHandle, Worker};

/// Pushes `delta` to `key` of `table` `pushes` times back to back, each
/// push ending its clock and none waited for, then waits until the servers
/// applied all of them: push bandwidth over any transport. Returns the
/// time it all took.
pub fn push_stream<E: Endpoint, T: Element>(
    worker: &mut Worker<E>,
    table: &TableHandle<T>,
    key: u64,
    delta: &[T],
    pushes: u64,
) -> Duration {
    let start = Instant::now();
    let mut last = None;
    for _ in 0..pushes {
        worker.push(table, &[key], black_box(delta)).unwrap();
        last = Some(worker.start_clock().unwrap());
    }
    if let Some(ticket) = last {
        let deadline = Instant::now() + Duration::from_secs(60);
        worker.wait_applied(&ticket, deadline).unwrap();
    }
    start.elapsed()
}
