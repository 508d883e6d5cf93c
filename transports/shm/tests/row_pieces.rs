//! Long rows pulled over shared memory come in pieces
//! ([`laggard::transport::Endpoint::row_piece_len`]), and pushes and pulls
//! of several rows longer than the largest frame go as several messages:
//! the worker sees the same values as over the in-process transport, which
//! sends everything whole, and rows longer than the largest frame can be
//! pulled (a push of one is refused at once).

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

/// Over three clocks: pushes to both rows of `wide` at once (48,000 bytes,
/// more than a frame of a 64 KiB ring), pulls them at once and each on its
/// own, and pulls `huge`; returns every row pulled, in order.
fn session<E: Endpoint>(worker: &mut Worker<E>) -> laggard::Result<Vec<Vec<f32>>> {
    let wide = worker.table::<f32>("wide")?;
    let huge = worker.table::<f32>("huge")?;
    // Row 0 falls by 0.25 * i per clock, row 1 grows by 0.5 * i.
    let deltas: Vec<f32> = (0..WIDE)
        .map(|i| i as f32 * -0.25)
        .chain((0..WIDE).map(|i| i as f32 * 0.5))
        .collect();
    let mut pulled = Vec::new();
    for _ in 0..3 {
        worker.push(&wide, &[0, 1], &deltas)?;
        worker.clock()?;
        let mut both = vec![0f32; 2 * WIDE];
        worker.pull(&wide, &[0, 1], &mut both)?;
        for key in [0, 1] {
            let mut row = vec![0f32; WIDE];
            worker.pull(&wide, &[key], &mut row)?;
            let whole = &both[key as usize * WIDE..][..WIDE];
            assert!(row == whole, "row {key} pulled alone differs");
        }
        pulled.push(both);
        // Read in place where it was assembled from its pieces; then a
        // second pull in the same clock comes from the cache.
        let row = worker.pull_with(&huge, 0, |row| row.to_vec())?;
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
    let stats = worker.stats();
    assert!(
        stats.push_messages >= 6,
        "three clocks of two-row pushes in {} messages",
        stats.push_messages
    );
    // A row longer than any frame cannot be pushed here: refused at once,
    // and the worker goes on.
    let huge = worker.table::<f32>("huge").unwrap();
    let started = Instant::now();
    let err = worker.push(&huge, &[0], &vec![1f32; HUGE]).unwrap_err();
    assert!(
        err.to_string().contains("largest"),
        "unexpected error: {err}"
    );
    assert!(
        started.elapsed() < spec.default_timeout(),
        "the refusal waited for the timeout"
    );
    let wide = worker.table::<f32>("wide").unwrap();
    let mut one = vec![0f32; WIDE];
    worker.clock().unwrap();
    worker.pull(&wide, &[1], &mut one).unwrap();
    worker.leave().unwrap();
    serving.join().unwrap().unwrap();

    assert_eq!(pieces.len(), whole.len());
    for (i, (a, b)) in pieces.iter().zip(&whole).enumerate() {
        assert!(a == b, "pull {i} differs between pieces and whole rows");
    }
    // The pushes arrived: from the first clock's pull to the third, two
    // clocks of deltas on both rows of `wide` (element 2: -0.5 and +1.0).
    let fell = whole[4][2] - whole[0][2];
    let grown = whole[4][WIDE + 2] - whole[0][WIDE + 2];
    assert!((fell + 1.0).abs() < 1e-5, "row 0 fell by {fell}");
    assert!((grown - 2.0).abs() < 1e-5, "row 1 grew by {grown}");
    assert!(
        net.segments().is_empty(),
        "segments left: {:?}",
        net.segments()
    );
}
