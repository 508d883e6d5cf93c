//! Rows long enough (256 KiB) that a push goes out from the worker's
//! pending buffer and a pull response from the server's table, over real
//! sockets: pulled whole (cached on the worker in the frame it came in,
//! and read there in place by `pull_with`) or in pieces (the default,
//! [`TcpConfig::row_piece_bytes`]), every BSP read holds every push of
//! earlier clocks and is never torn, and the final rows are the exact
//! sums. In pieces, a row longer than the largest frame can be pulled.

use std::time::{Duration, Instant};

use laggard::transport::{Endpoint, Transport};
use laggard::{Cluster, ClusterSpec, Consistency, Init, Server, TableSpec, Worker, WorkerId};
use laggard_tcp::{TcpConfig, TcpTransport};

const WORKERS: usize = 2;
const CLOCKS: u64 = 8;
const WIDTH: usize = 32 << 10;

fn delta(worker: usize, clock: u64, key: u64) -> i64 {
    (worker as i64 + 1) * 1000 + clock as i64 * 7 + key as i64
}

#[test]
fn long_rows_pulled_whole_are_exact_and_never_torn() {
    exact_and_never_torn(TcpConfig::default().row_piece_bytes(0), None);
}

#[test]
fn long_rows_pulled_in_pieces_are_exact_and_never_torn() {
    // 16 pieces per row.
    exact_and_never_torn(
        TcpConfig::default().row_piece_bytes(16 << 10),
        Some(16 << 10),
    );
}

/// Two workers push and pull both long rows every clock over endpoints
/// of `cfg`, whose servers send rows in pieces of `piece` bytes.
fn exact_and_never_torn(cfg: TcpConfig, piece: Option<usize>) {
    let spec = ClusterSpec::new(2, WORKERS)
        .table(
            "long",
            TableSpec::<i64>::dense(0..2, WIDTH).consistency(Consistency::Bsp),
        )
        .timeout(Duration::from_secs(30));
    let net = TcpTransport::with_config(cfg).unwrap();
    let servers: Vec<_> = (0..2)
        .map(|shard| {
            let ep = net.bind(&spec.server_name(shard)).unwrap();
            assert_eq!(ep.row_piece_len(), piece);
            let server = Server::new(ep, &spec, shard).unwrap();
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

const HUGE: usize = 40_000;

/// Pulls row 0 of table `huge`.
fn read_huge<E: Endpoint>(worker: &mut Worker<E>) -> laggard::Result<Vec<f32>> {
    let huge = worker.table::<f32>("huge")?;
    let mut row = vec![0f32; HUGE];
    worker.pull(&huge, &[0], &mut row)?;
    Ok(row)
}

/// A cluster spec with one row of `huge`, random from `seed`, and that
/// row as the in-process transport (rows whole) pulls it.
fn huge_row(seed: u64) -> (ClusterSpec, Vec<f32>) {
    let spec = ClusterSpec::new(1, 1)
        .table(
            "huge",
            TableSpec::<f32>::dense(0..1, HUGE).init(Init::Uniform {
                low: -1.0,
                high: 1.0,
                seed,
            }),
        )
        .timeout(Duration::from_secs(30));
    let cluster = Cluster::start(spec.clone()).unwrap();
    let whole = cluster.run_workers(read_huge).unwrap().remove(0);
    cluster.shutdown().unwrap();
    (spec, whole)
}

/// A row of 40,000 `f32` (160,000 bytes) with frames of at most 64 KiB:
/// it cannot be pushed (refused at once), but it can be pulled, in pieces
/// of 32 KiB, and reads as the in-process transport (rows whole) gives it.
#[test]
fn a_row_longer_than_the_largest_frame_is_pulled_in_pieces() {
    let (spec, whole) = huge_row(7);

    let cfg = TcpConfig::default().max_frame_len(64 << 10);
    let net = TcpTransport::with_config(cfg).unwrap();
    let server_ep = net.bind(&spec.server_name(0)).unwrap();
    assert_eq!(server_ep.row_piece_len(), Some(32 << 10));
    let server = Server::new(server_ep, &spec, 0).unwrap();
    let serving = std::thread::spawn(move || server.run_until_workers_done());
    let ep = net.bind(&spec.worker_name(0)).unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut worker = Worker::connect(ep, &spec, WorkerId(0), deadline).unwrap();
    assert_eq!(read_huge(&mut worker).unwrap(), whole);
    let huge = worker.table::<f32>("huge").unwrap();
    let err = worker.push(&huge, &[0], &vec![1f32; HUGE]).unwrap_err();
    // It says which settings bound a frame.
    assert!(
        err.to_string()
            .contains("more than the largest the transport carries")
            && err.to_string().contains("TcpConfig::max_frame_len")
            && err.to_string().contains("ClusterSpec::max_payload"),
        "unexpected error: {err}"
    );
    worker.leave().unwrap();
    serving.join().unwrap().unwrap();
}

/// A worker whose settings send rows whole (so it takes whole frames)
/// still reads rows a server of other settings sends in pieces.
#[test]
fn a_worker_expecting_whole_rows_reads_rows_sent_in_pieces() {
    let (spec, whole) = huge_row(9);

    let servers =
        TcpTransport::with_config(TcpConfig::default().row_piece_bytes(16 << 10)).unwrap();
    let server_ep = servers.bind(&spec.server_name(0)).unwrap();
    assert_eq!(server_ep.row_piece_len(), Some(16 << 10));
    let at = servers.address_of(&spec.server_name(0)).unwrap();
    let server = Server::new(server_ep, &spec, 0).unwrap();
    let serving = std::thread::spawn(move || server.run_until_workers_done());

    let workers = TcpTransport::with_config(TcpConfig::default().row_piece_bytes(0))
        .unwrap()
        .address(&spec.server_name(0), at);
    let ep = workers.bind(&spec.worker_name(0)).unwrap();
    assert_eq!(ep.row_piece_len(), None);
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut worker = Worker::connect(ep, &spec, WorkerId(0), deadline).unwrap();
    assert_eq!(read_huge(&mut worker).unwrap(), whole);
    assert!(
        worker.stats().messages_received >= 10,
        "{:?}",
        worker.stats()
    );
    worker.leave().unwrap();
    serving.join().unwrap().unwrap();
}
