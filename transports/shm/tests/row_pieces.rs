//! Long rows pulled over shared memory come in pieces
//! ([`laggard::transport::Endpoint::row_piece_len`]): the worker sees the
//! same values as over the in-process transport, which sends rows whole,
//! and rows longer than the largest frame can be pulled on their own (a
//! pull of several that would not fit one frame is refused at once).

use std::time::{Duration, Instant};

use laggard::transport::{Endpoint, Transport};
use laggard::{Cluster, ClusterSpec, Consistency, Init, Server, TableSpec, Worker, WorkerId};
use laggard_shm::{ShmConfig, ShmTransport};

/// 6000 `f32` (24,000 bytes: one frame, several pieces) and 40,000 `f32`
/// (160,000 bytes: more than the largest frame of a 64 KiB ring).
const WIDE: usize = 6000;
const HUGE: usize = 40_000;

fn spec() -> ClusterSpec {
    let uniform = |seed| Init::Uniform {
        low: -1.0,
        high: 1.0,
        seed,
    };
    ClusterSpec::new(1, 1)
        .table(
            "wide",
            TableSpec::<f32>::dense(0..2, WIDE)
                .init(uniform(1))
                .consistency(Consistency::Bsp),
        )
        .table(
            "huge",
            TableSpec::<f32>::dense(0..1, HUGE)
                .init(uniform(2))
                .consistency(Consistency::Bsp),
        )
        .timeout(Duration::from_secs(30))
}

/// Pushes to `wide`, then pulls each long row over three clocks; returns
/// every row pulled, in order.
fn session<E: Endpoint>(worker: &mut Worker<E>) -> laggard::Result<Vec<Vec<f32>>> {
    let wide = worker.table::<f32>("wide")?;
    let huge = worker.table::<f32>("huge")?;
    let delta: Vec<f32> = (0..WIDE).map(|i| i as f32 * 0.5).collect();
    let mut pulled = Vec::new();
    for _ in 0..3 {
        worker.push(&wide, &[1], &delta)?;
        worker.clock()?;
        for key in [0, 1] {
            let mut row = vec![0f32; WIDE];
            worker.pull(&wide, &[key], &mut row)?;
            pulled.push(row);
        }
        let mut row = vec![0f32; HUGE];
        worker.pull(&huge, &[0], &mut row)?;
        // A second pull in the same clock comes from the cache.
        let mut again = vec![0f32; HUGE];
        worker.pull(&huge, &[0], &mut again)?;
        assert_eq!(row, again, "the cached row differs from the pulled one");
        pulled.push(row);
    }
    Ok(pulled)
}

#[test]
fn long_rows_in_pieces_read_as_rows_sent_whole() {
    let spec = spec();
    let cluster = Cluster::start(spec.clone()).unwrap();
    let whole = cluster.run_workers(session).unwrap().remove(0);
    cluster.shutdown().unwrap();

    // A 64 KiB ring: frames up to 32 KiB, rows in 16 KiB pieces.
    let cfg = ShmConfig::default().ring_bytes(64 << 10);
    let net = ShmTransport::with_config(&format!("pieces{}", std::process::id()), cfg).unwrap();
    let server_ep = net.bind(&spec.server_name(0)).unwrap();
    assert_eq!(server_ep.row_piece_len(), Some(16 << 10));
    assert!(server_ep.max_frame_len() < HUGE * 4);
    let server = Server::new(server_ep, &spec, 0).unwrap();
    let serving = std::thread::spawn(move || server.run_until_workers_done());
    let ep = net.bind(&spec.worker_name(0)).unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut worker = Worker::connect(ep, &spec, WorkerId(0), deadline).unwrap();
    let pieces = session(&mut worker).unwrap();
    // Two long rows from one shard go as one frame, which is too long for
    // this ring: refused at once, and the worker goes on.
    let wide = worker.table::<f32>("wide").unwrap();
    let mut two = vec![0f32; 2 * WIDE];
    worker.clock().unwrap(); // the cached rows are stale now
    let started = Instant::now();
    let err = worker.pull(&wide, &[0, 1], &mut two).unwrap_err();
    assert!(
        err.to_string().contains("largest frame"),
        "unexpected error: {err}"
    );
    assert!(
        started.elapsed() < spec.default_timeout(),
        "the refusal waited for the timeout"
    );
    let mut one = vec![0f32; WIDE];
    worker.pull(&wide, &[1], &mut one).unwrap();
    worker.leave().unwrap();
    serving.join().unwrap().unwrap();

    assert_eq!(pieces.len(), whole.len());
    for (i, (a, b)) in pieces.iter().zip(&whole).enumerate() {
        assert!(a == b, "pull {i} differs between pieces and whole rows");
    }
    // The pushes arrived: three clocks of the delta on row 1 of `wide`.
    let grown = whole[7][2] - whole[1][2];
    assert!((grown - 2.0).abs() < 1e-5, "row 1 grew by {grown}");
    assert!(
        net.segments().is_empty(),
        "segments left: {:?}",
        net.segments()
    );
}
