//! A check through the whole runtime: a worker that was busy (computing)
//! while its server shard stopped on an error of its own hears the shard's
//! reason once it calls again, though the connection has closed by then.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use laggard::transport::Transport;
use laggard::{ClusterSpec, Consistency, Error, Server, TableSpec, Worker, WorkerId};

/// What the shard's clock hook says when it fails, and so what both
/// workers must hear.
pub const STOPPED_REASON: &str =
    "the shard stopped: checkpoint: no room left on the disk for clock 2";

/// Runs one server shard and two workers over `net` under BSP. The
/// shard's clock hook fails at clock 2 (a checkpoint finding the disk
/// full), which stops the shard: it tells its workers why, waits for them
/// to close their connections (at most the spec's 5-second timeout) and
/// closes its own. Worker 0, waiting in its pull of clock 2 for worker 1,
/// hears the reason at once. Worker 1
/// reaches clock 2 (so the hook runs) and then does nothing until the
/// shard is gone, as if computing; its next pull must fail with the
/// shard's reason too, not with a timeout or a dropped connection.
///
/// # Panics
/// If either worker ends any other way, or the shard does not return the
/// hook's error.
pub fn a_busy_worker_hears_why_its_shard_stopped<T: Transport>(net: &T) {
    let spec = ClusterSpec::new(1, 2)
        .table(
            "w",
            TableSpec::<f32>::dense(0..8, 4).consistency(Consistency::Bsp),
        )
        .timeout(Duration::from_secs(5))
        .dead_after(Duration::from_secs(60));
    let stopped = AtomicBool::new(false);
    let mut server = Server::new(net.bind(&spec.server_name(0)).unwrap(), &spec, 0).unwrap();
    server
        .on_clock(2, |clock| {
            Err(Error::Checkpoint {
                reason: format!("no room left on the disk for clock {clock}"),
            })
        })
        .unwrap();
    std::thread::scope(|s| {
        let (spec, stopped) = (&spec, &stopped);
        let serving = s.spawn(move || {
            // The shard's endpoint is dropped (its connections closed)
            // by the time this returns.
            let ended = server.run_until_workers_done();
            stopped.store(true, Ordering::Release);
            ended
        });
        let workers: Vec<_> = (0..2)
            .map(|id| {
                s.spawn(move || -> laggard::Result<()> {
                    let ep = net.bind(&spec.worker_name(id))?;
                    let soon = Instant::now() + Duration::from_secs(30);
                    let mut worker = Worker::connect(ep, spec, WorkerId(id as u32), soon)?;
                    let table = worker.table::<f32>("w")?;
                    let mut rows = [0f32; 8];
                    for clock in 0..10 {
                        worker.push(&table, &[0, 4], &[1.0; 8])?;
                        worker.clock()?;
                        if id == 1 && clock == 1 {
                            let busy_until = Instant::now() + Duration::from_secs(60);
                            while !stopped.load(Ordering::Acquire) && Instant::now() < busy_until {
                                std::thread::sleep(Duration::from_millis(10));
                            }
                        }
                        worker.pull(&table, &[0, 4], &mut rows)?;
                    }
                    worker.leave().map(drop)
                })
            })
            .collect();
        for (id, worker) in workers.into_iter().enumerate() {
            match worker.join().unwrap() {
                Err(Error::Remote { peer, message }) => {
                    assert_eq!(peer, "server shard 0", "worker {id}");
                    assert_eq!(message, STOPPED_REASON, "worker {id}");
                }
                other => panic!("worker {id}: expected shard 0's reason, got {other:?}"),
            }
        }
        match serving.join().unwrap() {
            Err(Error::Checkpoint { reason }) => assert!(reason.contains("clock 2"), "{reason}"),
            other => panic!("expected the hook's error from the shard, got {other:?}"),
        }
    });
}
