//! Rows long enough (256 KiB) that a push goes out from the worker's
//! pending buffer, a pull response goes out from the server's table and is
//! cached on the worker in the frame it came in (and read there in place
//! by `pull_with`): over real sockets, every BSP read holds every push of
//! earlier clocks and is never torn, and the final rows are the exact sums.

use std::time::{Duration, Instant};

use laggard::transport::Transport;
use laggard::{ClusterSpec, Consistency, Server, TableSpec, Worker, WorkerId};
use laggard_tcp::TcpTransport;

const WORKERS: usize = 2;
const CLOCKS: u64 = 8;
const WIDTH: usize = 32 << 10;

fn delta(worker: usize, clock: u64, key: u64) -> i64 {
    (worker as i64 + 1) * 1000 + clock as i64 * 7 + key as i64
}

#[test]
fn long_rows_over_tcp_are_exact_and_never_torn() {
    let spec = ClusterSpec::new(2, WORKERS)
        .table(
            "long",
            TableSpec::<i64>::dense(0..2, WIDTH).consistency(Consistency::Bsp),
        )
        .timeout(Duration::from_secs(30));
    let net = TcpTransport::new();
    let servers: Vec<_> = (0..2)
        .map(|shard| {
            let server =
                Server::new(net.bind(&spec.server_name(shard)).unwrap(), &spec, shard).unwrap();
            std::thread::spawn(move || server.run_until_workers_done())
        })
        .collect();
    let workers: Vec<_> = (0..WORKERS)
        .map(|w| {
            let (net, spec) = (net.clone(), spec.clone());
            std::thread::spawn(move || {
                let ep = net.bind(&spec.worker_name(w)).unwrap();
                let soon = Instant::now() + Duration::from_secs(30);
                let mut worker = Worker::connect(ep, &spec, WorkerId(w as u32), soon).unwrap();
                let long = worker.table::<i64>("long").unwrap();
                let mut row = vec![0i64; WIDTH];
                for c in 0..CLOCKS {
                    for key in 0..2 {
                        worker.pull(&long, &[key], &mut row).unwrap();
                        let before: i64 = (0..WORKERS)
                            .flat_map(|w| (0..c).map(move |c| delta(w, c, key)))
                            .sum();
                        let other = delta(1 - w, c, key);
                        assert!(
                            row[0] == before || row[0] == before + other,
                            "worker {w} at clock {c} read row {key} as {}",
                            row[0]
                        );
                        assert!(row.iter().all(|&x| x == row[0]), "row {key} torn");
                        worker
                            .push(&long, &[key], &vec![delta(w, c, key); WIDTH])
                            .unwrap();
                    }
                    worker.clock().unwrap();
                }
                // Wait for the last clock of both workers, then read the sums.
                worker.clock().unwrap();
                for key in 0..2 {
                    let want: i64 = (0..WORKERS)
                        .flat_map(|w| (0..CLOCKS).map(move |c| delta(w, c, key)))
                        .sum();
                    // Read in place, in the frame it came in.
                    let exact = worker
                        .pull_with(&long, key, |row| row.iter().all(|&x| x == want))
                        .unwrap();
                    assert!(exact, "final row {key} wrong in place");
                    worker.pull(&long, &[key], &mut row).unwrap();
                    assert!(row.iter().all(|&x| x == want), "final row {key} wrong");
                }
                worker.leave().unwrap();
            })
        })
        .collect();
    for w in workers {
        w.join().unwrap();
    }
    for s in servers {
        let report = s.join().unwrap().unwrap();
        assert_eq!(report.stats.duplicate_pushes, 0);
    }
}
