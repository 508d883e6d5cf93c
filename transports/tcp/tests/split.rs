//! Pushes and pulls longer than the largest frame (`TcpConfig::max_frame_len`,
//! here 64 KiB) go as several messages: two workers push and pull all 64
//! rows of 8 KiB (512 KiB) at once every clock, under BSP, over real
//! sockets; every read holds every push of the earlier clocks (and maybe
//! the other worker's of the current one), and the final rows are the
//! exact sums.

use std::time::{Duration, Instant};

use laggard::transport::{Endpoint, Transport};
use laggard::{ClusterSpec, Consistency, Server, TableSpec, Worker, WorkerId};
use laggard_tcp::{TcpConfig, TcpTransport};

const WORKERS: usize = 2;
const CLOCKS: u64 = 4;
const KEYS: u64 = 64;
const WIDTH: usize = 1024;

fn delta(worker: usize, clock: u64, key: u64) -> i64 {
    (worker as i64 + 1) * 1000 + clock as i64 * 7 + key as i64
}

/// What row `key` holds once every worker pushed clocks `0..clocks`.
fn sum(clocks: u64, key: u64) -> i64 {
    (0..WORKERS)
        .flat_map(|w| (0..clocks).map(move |c| delta(w, c, key)))
        .sum()
}

#[test]
fn pushes_and_pulls_longer_than_a_frame_go_as_several_messages() {
    let spec = ClusterSpec::new(1, WORKERS)
        .table(
            "t",
            TableSpec::<i64>::dense(0..KEYS, WIDTH).consistency(Consistency::Bsp),
        )
        .timeout(Duration::from_secs(30));
    let net = TcpTransport::with_config(TcpConfig::default().max_frame_len(64 << 10)).unwrap();
    let server_ep = net.bind(&spec.server_name(0)).unwrap();
    assert!(server_ep.max_frame_len() < KEYS as usize * WIDTH * 8 / 4);
    let server = Server::new(server_ep, &spec, 0).unwrap();
    let serving = std::thread::spawn(move || server.run_until_workers_done());
    let keys: Vec<u64> = (0..KEYS).collect();
    let workers: Vec<_> = (0..WORKERS)
        .map(|w| {
            let (net, spec, keys) = (net.clone(), spec.clone(), keys.clone());
            std::thread::spawn(move || {
                let ep = net.bind(&spec.worker_name(w)).unwrap();
                let soon = Instant::now() + Duration::from_secs(30);
                let mut worker = Worker::connect(ep, &spec, WorkerId(w as u32), soon).unwrap();
                let t = worker.table::<i64>("t").unwrap();
                let mut rows = vec![0i64; keys.len() * WIDTH];
                for c in 0..=CLOCKS {
                    worker.pull(&t, &keys, &mut rows).unwrap();
                    for (&key, row) in keys.iter().zip(rows.chunks_exact(WIDTH)) {
                        // BSP: every push of the earlier clocks. The other
                        // worker may already have pushed this clock (it
                        // waits in its next pull), never a later one.
                        let (before, other) = (sum(c, key), delta(1 - w, c, key));
                        assert!(
                            row[0] == before || (c < CLOCKS && row[0] == before + other),
                            "worker {w} at clock {c} read row {key} as {}, not {before}",
                            row[0],
                        );
                        assert!(row.iter().all(|&x| x == row[0]), "row {key} torn");
                    }
                    if c == CLOCKS {
                        break;
                    }
                    let deltas: Vec<i64> = keys
                        .iter()
                        .flat_map(|&key| std::iter::repeat_n(delta(w, c, key), WIDTH))
                        .collect();
                    worker.push(&t, &keys, &deltas).unwrap();
                    worker.clock().unwrap();
                }
                let stats = worker.leave().unwrap();
                // 512 KiB per clock through 64 KiB frames.
                assert!(stats.push_messages >= 9 * CLOCKS, "{stats:?}");
                assert!(stats.pull_messages >= 9 * (CLOCKS + 1), "{stats:?}");
            })
        })
        .collect();
    for w in workers {
        w.join().unwrap();
    }
    let report = serving.join().unwrap().unwrap();
    assert_eq!(report.stats.duplicate_pushes, 0);
}
