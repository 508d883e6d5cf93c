//! Long pending push rows wait in the connection's stash and the server
//! applies them in place ([`laggard::transport::Endpoint::stash`]): frames
//! with stashed tails arrive whole, stash blocks come back when freed, a
//! stash of another connection is copied, and pushes through the stash sum
//! exactly as over the in-process transport, also when the stash is full.

use std::time::{Duration, Instant};

use laggard::transport::{Endpoint, Event, PeerId, Transport};
use laggard::{Cluster, ClusterSpec, Consistency, Server, TableSpec, Worker, WorkerId};
use laggard_shm::{ShmConfig, ShmEndpoint, ShmTransport};

fn soon() -> Instant {
    Instant::now() + Duration::from_secs(10)
}

fn net(tag: &str, cfg: ShmConfig) -> ShmTransport {
    ShmTransport::with_config(&format!("stash{tag}{}", std::process::id()), cfg).unwrap()
}

/// A connected pair: (client, its peer id, server, the client's id there).
fn pair(net: &ShmTransport) -> (ShmEndpoint, PeerId, ShmEndpoint, PeerId) {
    let mut server = net.bind("server").unwrap();
    let mut client = net.bind("client").unwrap();
    let peer = client.connect("server", soon()).unwrap();
    let Some(Event::Connected(back)) = server.recv(soon()).unwrap() else {
        panic!("no connection")
    };
    (client, peer, server, back)
}

/// The next frame `ep` receives, with its tail apart: (bytes, tail).
fn next_frame(ep: &mut ShmEndpoint) -> (Vec<u8>, Vec<u8>) {
    match ep.recv(soon()).unwrap() {
        Some(Event::Frame(_, frame)) => (frame.to_vec(), ep.frame_tail(&frame).to_vec()),
        other => panic!("expected a frame, got {other:?}"),
    }
}

#[test]
fn a_stashed_tail_is_read_in_place_and_its_block_comes_back() {
    let net = net(
        "inplace",
        ShmConfig::default()
            .ring_bytes(64 << 10)
            .stash_bytes(256 << 10),
    );
    let (mut client, peer, mut server, back) = pair(&net);
    // Only the connecting side has a stash.
    assert!(server.stash(back, 64).is_none());

    let mut block = client.stash(peer, 100_000).expect("room for 100,000 bytes");
    assert_eq!(block.len(), 100_000);
    for (i, b) in block.iter_mut().enumerate() {
        *b = (i % 251) as u8;
    }
    // Longer than the ring's largest frame: the tail does not go through it.
    assert!(block.len() > client.max_frame_len());
    client
        .send_stashed(peer, b"the head", &block, soon())
        .unwrap();
    let (head, tail) = next_frame(&mut server);
    assert_eq!(head, b"the head");
    assert_eq!(tail, &block[..]);

    // 256 KiB hold two such blocks; a third waits for one to come back.
    let second = client.stash(peer, 100_000).expect("a second block");
    assert!(client.stash(peer, 100_000).is_none(), "the stash is full");
    drop(block);
    let third = client
        .stash(peer, 100_000)
        .expect("the first block, given back");
    drop((second, third));
    assert!(
        client.stash(peer, 256 << 10).is_some(),
        "everything came back"
    );
    drop((client, server));
    assert!(net.segments().is_empty(), "left {:?}", net.segments());
}

#[test]
fn a_stash_of_another_connection_is_copied_into_the_frame() {
    let net = net("other", ShmConfig::default().ring_bytes(1 << 20));
    let (mut client, first, mut server, _) = pair(&net);
    let mut block = client.stash(first, 4096).unwrap();
    block.fill(7);
    // As after a reconnect: the same endpoints, a new connection.
    let second = client.connect("server", soon()).unwrap();
    assert!(matches!(
        server.recv(soon()).unwrap(),
        Some(Event::Connected(_))
    ));
    client
        .send_stashed(second, b"head", &block, soon())
        .unwrap();
    let (bytes, tail) = next_frame(&mut server);
    assert!(tail.is_empty(), "a foreign stash must be copied");
    assert_eq!(bytes, [&b"head"[..], &[7; 4096]].concat());
    // A stash of no room at all lends nothing.
    let none = net_without_stash();
    drop(none);
}

/// Settings with no stash: nothing is lent, pushes go through the ring.
fn net_without_stash() -> ShmTransport {
    let net = net("none", ShmConfig::default().stash_bytes(0));
    let (mut client, peer, _server, _) = pair(&net);
    assert!(client.stash(peer, 64).is_none());
    net
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
        .timeout(Duration::from_secs(30))
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

fn run_over_shm(cfg: ShmConfig, tag: &str, workers: usize) -> (Vec<Vec<i64>>, u64, ShmTransport) {
    let spec = spec(workers);
    let net = net(tag, cfg);
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
    (all, stashed, net)
}

#[test]
fn stashed_pushes_sum_exactly_as_in_process() {
    let cluster = Cluster::start(spec(2)).unwrap();
    let expected = cluster.run_workers(session).unwrap();
    cluster.shutdown().unwrap();
    let sum: i64 = (0..WIDTH as i64)
        .map(|i| i * 2 * CLOCKS as i64)
        .sum::<i64>();
    assert!(
        expected[0].iter().sum::<i64>() > sum,
        "the reference is not trivial"
    );

    // Room for every row of a clock and more: every row is stashed (the
    // second push of key 0 in a clock is summed into its stashed row).
    let (got, stashed, net) = run_over_shm(ShmConfig::default(), "roomy", 2);
    assert_eq!(got, expected);
    assert_eq!(
        stashed,
        2 * CLOCKS * KEYS,
        "rows that went through the stash"
    );
    assert!(net.segments().is_empty(), "left {:?}", net.segments());

    // Room for one row: a clock's other rows go through the ring, and
    // each clock's first row waits for the block the last clock's
    // acknowledgement gives back, rather than going through the ring.
    let one_row = ShmConfig::default().stash_bytes(131_136);
    let (got, stashed, net) = run_over_shm(one_row, "tight", 1);
    assert_eq!(got[0], {
        let cluster = Cluster::start(spec(1)).unwrap();
        let rows = cluster.run_workers(session).unwrap().remove(0);
        cluster.shutdown().unwrap();
        rows
    });
    assert_eq!(stashed, CLOCKS, "one row per clock through the stash");
    assert!(net.segments().is_empty(), "left {:?}", net.segments());
}
