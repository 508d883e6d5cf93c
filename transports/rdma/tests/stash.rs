//! Long pending push rows wait in the connection's registered stash, and
//! the device gathers each straight into the server's ring with the rest
//! of its frame ([`laggard::transport::Endpoint::stash`]): such frames
//! arrive whole, stash blocks come back when freed, a stash of another
//! connection is copied, and pushes through the stash sum exactly as over
//! the in-process transport, also when the stash is full. Needs an RDMA
//! device (soft-RoCE is enough): run through `guest/guest.sh`.

use std::time::{Duration, Instant};

use laggard::transport::{Endpoint, Event, PeerId, Transport};
use laggard::{Cluster, ClusterSpec, Consistency, Server, TableSpec, Worker, WorkerId};
use laggard_rdma::{RdmaConfig, RdmaEndpoint, RdmaTransport};

fn soon() -> Instant {
    Instant::now() + Duration::from_secs(20)
}

/// A client connected to `server`: (client, its peer id for the server).
fn connect(net: &RdmaTransport, name: &str, server: &mut RdmaEndpoint) -> (RdmaEndpoint, PeerId) {
    let mut client = net.bind(name).unwrap();
    let peer = client.connect(server.name(), soon()).unwrap();
    let Some(Event::Connected(_)) = server.recv(soon()).unwrap() else {
        panic!("no connection")
    };
    (client, peer)
}

/// The next frame `ep` receives, whole.
fn next_frame(ep: &mut RdmaEndpoint) -> Vec<u8> {
    match ep.recv(soon()).unwrap() {
        Some(Event::Frame(_, frame)) => {
            assert!(
                ep.frame_tail(&frame).is_empty(),
                "tails arrive in the frame"
            );
            frame.to_vec()
        }
        other => panic!("expected a frame, got {other:?}"),
    }
}

#[test]
fn a_stashed_tail_arrives_in_the_frame_and_its_block_comes_back() {
    let net = RdmaTransport::with_config(
        RdmaConfig::default()
            .ring_bytes(512 << 10)
            .stash_bytes(256 << 10),
    )
    .unwrap();
    let mut server = net.bind("server").unwrap();
    let (mut client, peer) = connect(&net, "client", &mut server);

    let mut block = client.stash(peer, 100_000).expect("room for 100,000 bytes");
    assert_eq!(block.len(), 100_000);
    for (i, b) in block.iter_mut().enumerate() {
        *b = (i % 251) as u8;
    }
    client
        .send_stashed(peer, b"the head", &block, soon())
        .unwrap();
    assert_eq!(next_frame(&mut server), [b"the head", &block[..]].concat());

    // 256 KiB hold two such blocks; a third waits for one to come back.
    let second = client.stash(peer, 100_000).expect("a second block");
    assert!(client.stash(peer, 100_000).is_none(), "the stash is full");
    drop(block);
    let mut third = client
        .stash(peer, 100_000)
        .expect("the first block, given back");
    third.fill(7);

    // A block of another connection is copied into the frame.
    let mut other_server = net.bind("other-server").unwrap();
    let (mut other, other_peer) = connect(&net, "other-client", &mut other_server);
    let mut foreign = other.stash(other_peer, 70_000).expect("the other stash");
    foreign.fill(9);
    client.send_stashed(peer, b"h", &foreign, soon()).unwrap();
    assert_eq!(next_frame(&mut server), [b"h", &foreign[..]].concat());
    // And this connection's block still goes in place after it.
    client.send_stashed(peer, b"", &third, soon()).unwrap();
    assert_eq!(next_frame(&mut server), &third[..]);

    drop((second, third, foreign));
    assert!(
        client.stash(peer, 256 << 10).is_some(),
        "everything came back"
    );
    drop((client, server, other, other_server));
    assert_eq!(net.leaks(), Vec::<String>::new(), "registrations left");
}

#[test]
fn without_a_stash_nothing_is_lent() {
    let net = RdmaTransport::with_config(RdmaConfig::default().stash_bytes(0)).unwrap();
    let mut server = net.bind("server").unwrap();
    let (mut client, peer) = connect(&net, "client", &mut server);
    assert!(client.stash(peer, 64).is_none());
}

/// Rows of 16,385 `i64`s (131,080 bytes: long enough to be stashed, and
/// not a multiple of 64).
const WIDTH: usize = 16_385;
const KEYS: u64 = 3;
const CLOCKS: u64 = 6;

fn spec(workers: usize) -> ClusterSpec {
    ClusterSpec::new(1, workers)
        .table(
            "long",
            TableSpec::<i64>::dense(0..KEYS, WIDTH).consistency(Consistency::Bsp),
        )
        .timeout(Duration::from_secs(60))
}

/// Each clock, pushes every key (key 0 twice, summed in its pending row)
/// with values that say which worker, clock and element; then reads every
/// row after the last clock.
fn session<E: Endpoint>(worker: &mut Worker<E>) -> laggard::Result<Vec<i64>> {
    let t = worker.table::<i64>("long")?;
    let w = worker.id().0 as i64 + 1;
    for clock in 0..CLOCKS as i64 {
        for key in 0..KEYS {
            let delta: Vec<i64> = (0..WIDTH as i64).map(|i| w * (clock + 1) + i).collect();
            worker.push(&t, &[key], &delta)?;
        }
        worker.push(&t, &[0], &vec![w; WIDTH])?;
        worker.clock()?;
    }
    let mut rows = vec![0i64; KEYS as usize * WIDTH];
    worker.pull(&t, &(0..KEYS).collect::<Vec<_>>(), &mut rows)?;
    Ok(rows)
}

/// `session` on `workers` workers over RDMA: their rows and how many rows
/// went through a stash.
fn run_over_rdma(cfg: RdmaConfig, workers: usize) -> (Vec<Vec<i64>>, u64) {
    let spec = spec(workers);
    let net = RdmaTransport::with_config(cfg).unwrap();
    let server = Server::new(net.bind(&spec.server_name(0)).unwrap(), &spec, 0).unwrap();
    let serving = std::thread::spawn(move || server.run_until_workers_done());
    let threads: Vec<_> = (0..workers)
        .map(|w| {
            let ep = net.bind(&spec.worker_name(w)).unwrap();
            let spec = spec.clone();
            std::thread::spawn(move || {
                let mut worker = Worker::connect(ep, &spec, WorkerId(w as u32), soon()).unwrap();
                let rows = session(&mut worker).unwrap();
                let stashed = worker.stats().rows_stashed;
                worker.leave().unwrap();
                (rows, stashed)
            })
        })
        .collect();
    let mut all = Vec::new();
    let mut stashed = 0;
    for t in threads {
        let (rows, s) = t.join().unwrap();
        all.push(rows);
        stashed += s;
    }
    serving.join().unwrap().unwrap();
    assert_eq!(net.leaks(), Vec::<String>::new(), "registrations left");
    (all, stashed)
}

#[test]
fn stashed_pushes_sum_exactly_as_in_process() {
    let cluster = Cluster::start(spec(2)).unwrap();
    let expected = cluster.run_workers(session).unwrap();
    cluster.shutdown().unwrap();

    // Room for every row of a clock and more: every row is stashed (the
    // second push of key 0 in a clock is summed into its stashed row).
    let (got, stashed) = run_over_rdma(RdmaConfig::default(), 2);
    assert_eq!(got, expected);
    assert_eq!(
        stashed,
        2 * CLOCKS * KEYS,
        "rows that went through the stash"
    );

    // Room for one row: a clock's other rows go through the ring, and
    // each clock's first row waits for the block the last clock's
    // acknowledgement gives back.
    let (got, stashed) = run_over_rdma(RdmaConfig::default().stash_bytes(131_136), 1);
    assert_eq!(got[0], {
        let cluster = Cluster::start(spec(1)).unwrap();
        let rows = cluster.run_workers(session).unwrap().remove(0);
        cluster.shutdown().unwrap();
        rows
    });
    assert_eq!(stashed, CLOCKS, "one row per clock through the stash");
}
