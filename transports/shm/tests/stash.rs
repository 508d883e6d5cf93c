//! Long pending push rows wait in the connection's stash and the server
//! applies them in place ([`laggard::transport::Endpoint::stash`]): frames
//! with stashed tails arrive whole, stash blocks come back when freed, a
//! stash of another connection is copied, and pushes through the stash sum
//! exactly as over the in-process transport, also when the stash is full.

use std::time::{Duration, Instant};

use laggard::transport::{Endpoint, Event, PeerId, Transport};
use laggard_conformance::{STASH_CLOCKS, STASH_KEYS, STASH_ROW_WIDTH, stashed_pushes_sum_exactly};
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

#[test]
fn stashed_pushes_sum_exactly_as_in_process() {
    // Room for every row of a clock and more: every row is stashed.
    let roomy = net("roomy", ShmConfig::default());
    assert_eq!(
        stashed_pushes_sum_exactly(&roomy, 2),
        2 * STASH_CLOCKS * STASH_KEYS,
        "rows that went through the stash"
    );
    assert!(roomy.segments().is_empty(), "left {:?}", roomy.segments());

    // Room for one row: a clock's other rows go through the ring, and
    // each clock's first row waits for the block the last clock's
    // acknowledgement gives back, rather than going through the ring.
    let one_row = (STASH_ROW_WIDTH as u64 * 8).next_multiple_of(64);
    let tight = net("tight", ShmConfig::default().stash_bytes(one_row));
    assert_eq!(
        stashed_pushes_sum_exactly(&tight, 1),
        STASH_CLOCKS,
        "one row per clock through the stash"
    );
    assert!(tight.segments().is_empty(), "left {:?}", tight.segments());
}
