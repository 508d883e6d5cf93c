//! Long rows pulled in pieces ([`Endpoint::row_piece_len`]), end to end
//! over the in-process transport with endpoints that ask for pieces: under
//! SSP with several workers pushing while others pull, every pulled row is
//! one version of the row (never pieces of two), and the final rows are
//! the exact sums. (`laggard-shm`'s own test runs pieces over shared
//! memory, where the transport asks for them itself.)

use std::time::{Duration, Instant};

use laggard::transport::{Endpoint, Event, InProcess, PeerId, Transport};
use laggard::{ClusterSpec, Consistency, Result, Server, Sum, TableSpec, Worker, WorkerId};

/// An in-process endpoint that asks servers for rows in pieces of
/// `piece` bytes; everything else is the endpoint's own.
struct Pieces<E> {
    ep: E,
    piece: usize,
}

impl<E: Endpoint> Endpoint for Pieces<E> {
    type Buf = E::Buf;
    type Frame = E::Frame;

    fn name(&self) -> &str {
        self.ep.name()
    }
    fn connect(&mut self, name: &str, deadline: Instant) -> Result<PeerId> {
        self.ep.connect(name, deadline)
    }
    fn lend(&mut self, peer: PeerId, len: usize, deadline: Instant) -> Result<E::Buf> {
        self.ep.lend(peer, len, deadline)
    }
    fn send(&mut self, buf: E::Buf) -> Result<()> {
        self.ep.send(buf)
    }
    fn flush(&mut self, peer: PeerId, deadline: Instant) -> Result<()> {
        self.ep.flush(peer, deadline)
    }
    fn recv(&mut self, deadline: Instant) -> Result<Option<Event<E::Frame>>> {
        self.ep.recv(deadline)
    }
    fn disconnect(&mut self, peer: PeerId) {
        self.ep.disconnect(peer)
    }
    fn max_frame_len(&self) -> usize {
        self.ep.max_frame_len()
    }
    fn peer_name(&self, peer: PeerId) -> String {
        self.ep.peer_name(peer)
    }
    fn row_piece_len(&self) -> Option<usize> {
        Some(self.piece)
    }
}

/// 3001 `i64` per row: 24,008 bytes, six 4 KiB pieces, the last one short.
const WIDTH: usize = 3001;
const WORKERS: usize = 3;
const CLOCKS: u64 = 6;

#[test]
fn rows_in_pieces_are_whole_versions_and_sum_exactly() {
    let spec = ClusterSpec::new(2, WORKERS)
        .table(
            "t",
            TableSpec::<i64>::dense(0..4, WIDTH)
                .update(Sum)
                .consistency(Consistency::Ssp { staleness: 1 }),
        )
        .timeout(Duration::from_secs(30));
    let net = InProcess::new();
    let piece = 4096;
    let servers: Vec<_> = (0..spec.servers())
        .map(|s| {
            let ep = Pieces {
                ep: net.bind(&spec.server_name(s)).unwrap(),
                piece,
            };
            let server = Server::new(ep, &spec, s).unwrap();
            std::thread::spawn(move || server.run_until_workers_done())
        })
        .collect();
    std::thread::scope(|scope| {
        for w in 0..WORKERS {
            let (net, spec) = (&net, &spec);
            scope.spawn(move || {
                let ep = Pieces {
                    ep: net.bind(&spec.worker_name(w)).unwrap(),
                    piece,
                };
                let deadline = Instant::now() + Duration::from_secs(30);
                let mut worker = Worker::connect(ep, spec, WorkerId(w as u32), deadline).unwrap();
                let t = worker.table::<i64>("t").unwrap();
                let mut row = vec![0i64; WIDTH];
                for c in 0..CLOCKS {
                    for key in 0..4u64 {
                        worker.pull(&t, &[key], &mut row).unwrap();
                        // Every push adds one value to the whole row, so a
                        // row put together from two versions shows.
                        assert!(
                            row.iter().all(|&x| x == row[0]),
                            "worker {w} pulled a torn row {key} at clock {c}"
                        );
                        let delta = vec![(w as i64 + 1) * 100 + key as i64; WIDTH];
                        worker.push(&t, &[key], &delta).unwrap();
                    }
                    worker.clock().unwrap();
                }
                // One clock more: under SSP(1) a pull then sees every push
                // (the last ones were made at clock CLOCKS - 1).
                worker.clock().unwrap();
                let per_clock: i64 = (1..=WORKERS as i64).map(|w| w * 100).sum();
                for key in 0..4u64 {
                    worker.pull(&t, &[key], &mut row).unwrap();
                    let expected = CLOCKS as i64 * (per_clock + WORKERS as i64 * key as i64);
                    assert!(
                        row.iter().all(|&x| x == expected),
                        "worker {w}: row {key} holds {}, not {expected}",
                        row[0]
                    );
                }
                worker.leave().unwrap();
            });
        }
    });
    for server in servers {
        server.join().unwrap().unwrap();
    }
}
