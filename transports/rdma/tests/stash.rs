//! Long pending push rows wait in the connection's registered stash, and
//! the device gathers each straight into the server's ring with the rest
//! of its frame ([`laggard::transport::Endpoint::stash`]): such frames
//! arrive whole, stash blocks come back when freed, a stash of another
//! connection is copied, and pushes through the stash sum exactly as over
//! the in-process transport, also when the stash is full
//! ([`laggard_conformance::stashed_pushes_sum_exactly`]). Needs an RDMA
//! device (soft-RoCE is enough): run through `guest/guest.sh`.

use laggard::transport::{Endpoint, Event, Transport};
use laggard_conformance::{STASH_CLOCKS, STASH_KEYS, STASH_ROW_WIDTH, stashed_pushes_sum_exactly};
mod common;

use common::{connect, soon};
use laggard_rdma::{RdmaConfig, RdmaEndpoint, RdmaTransport};

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

#[test]
fn stashed_pushes_sum_exactly_as_in_process() {
    // Room for every row of a clock and more: every row is stashed.
    let roomy = RdmaTransport::with_config(RdmaConfig::default()).unwrap();
    assert_eq!(
        stashed_pushes_sum_exactly(&roomy, 2),
        2 * STASH_CLOCKS * STASH_KEYS,
        "rows that went through the stash"
    );
    assert_eq!(roomy.leaks(), Vec::<String>::new(), "registrations left");

    // Room for one row: a clock's other rows go through the ring, and
    // each clock's first row waits for the block the last clock's
    // acknowledgement gives back.
    let one_row = (STASH_ROW_WIDTH as u64 * 8).next_multiple_of(64);
    let tight = RdmaTransport::with_config(RdmaConfig::default().stash_bytes(one_row)).unwrap();
    assert_eq!(
        stashed_pushes_sum_exactly(&tight, 1),
        STASH_CLOCKS,
        "one row per clock through the stash"
    );
    assert_eq!(tight.leaks(), Vec::<String>::new(), "registrations left");
}
