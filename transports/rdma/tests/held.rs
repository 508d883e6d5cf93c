//! Table rows sent held ([`laggard::transport::Endpoint::send_held`]) go
//! from where they lie: each row's memory is registered on its first send
//! and reused after, the rows arrive after the head in one frame, and
//! they are let go of once the write completed, also when it failed.
//! Needs an RDMA device (soft-RoCE is enough): run through
//! `guest/guest.sh`.

use std::sync::Arc;

use laggard::transport::{Endpoint, Event, HeldRow, Transport};
mod common;

use common::{connect, soon};
use laggard_rdma::{RdmaEndpoint, RdmaTransport};

/// Memory regions the transport has registered now.
fn regions(net: &RdmaTransport) -> usize {
    net.leaks()
        .iter()
        .find_map(|l| l.strip_suffix(" memory region(s)")?.parse().ok())
        .unwrap_or(0)
}

fn row(seed: usize, len: usize) -> Arc<Vec<u8>> {
    Arc::new((0..len).map(|j| ((seed * 31 + j) % 251) as u8).collect())
}

fn held(rows: &[Arc<Vec<u8>>]) -> Vec<HeldRow> {
    rows.iter().map(|r| HeldRow::new(Arc::clone(r))).collect()
}

fn expected(head: &[u8], rows: &[Arc<Vec<u8>>]) -> Vec<u8> {
    let mut frame = head.to_vec();
    rows.iter().for_each(|r| frame.extend_from_slice(r));
    frame
}

fn next_frame(ep: &mut RdmaEndpoint) -> Vec<u8> {
    match ep.recv(soon()).unwrap() {
        Some(Event::Frame(_, frame)) => frame.to_vec(),
        other => panic!("expected a frame, got {other:?}"),
    }
}

fn let_go(rows: &[Arc<Vec<u8>>]) -> bool {
    rows.iter().all(|r| Arc::strong_count(r) == 1)
}

#[test]
fn held_rows_are_registered_once_and_sent_in_place() {
    let net = RdmaTransport::new();
    let mut server = net.bind("server").unwrap();
    let (mut client, peer) = connect(&net, "client", &mut server);
    let rows: Vec<_> = (0..3).map(|i| row(i, (64 << 10) + 8 * i)).collect();
    let before = regions(&net);

    client
        .send_held(peer, b"head of 1", held(&rows), soon())
        .unwrap();
    assert_eq!(next_frame(&mut server), expected(b"head of 1", &rows));
    client.release_held(soon()).unwrap();
    assert!(let_go(&rows), "rows still held after release_held");
    assert_eq!(
        regions(&net),
        before + 3,
        "each row registered (sent from where it lies)"
    );

    // The same rows again, in another order: no new registration.
    let again = [Arc::clone(&rows[2]), Arc::clone(&rows[0])];
    client.send_held(peer, b"h2", held(&again), soon()).unwrap();
    assert_eq!(next_frame(&mut server), expected(b"h2", &again));
    drop(again);
    client.release_held(soon()).unwrap();
    assert!(let_go(&rows));
    assert_eq!(regions(&net), before + 3, "a row registered twice");

    // More rows than one write gathers are copied, not registered.
    let many: Vec<_> = (0..40).map(|i| row(10 + i, 1000)).collect();
    client
        .send_held(peer, b"many", held(&many), soon())
        .unwrap();
    assert_eq!(next_frame(&mut server), expected(b"many", &many));
    client.release_held(soon()).unwrap();
    assert!(let_go(&many));
    assert_eq!(regions(&net), before + 3, "copied rows were registered");

    drop(client);
    drop(server);
    assert!(net.leaks().is_empty(), "leaked: {:?}", net.leaks());
}

#[test]
fn rows_of_a_failed_write_are_let_go_and_the_connection_fails() {
    let net = RdmaTransport::new();
    let mut server = net.bind("server").unwrap();
    let (mut client, peer) = connect(&net, "client", &mut server);
    let rows: Vec<_> = (0..2).map(|i| row(i, 100 << 10)).collect();

    client.inject_remote_access_error(peer);
    client
        .send_held(peer, b"doomed", held(&rows), soon())
        .unwrap();
    client.release_held(soon()).unwrap();
    assert!(let_go(&rows), "the failed write's rows are still held");
    let err = client
        .send_held(peer, b"after", held(&rows), soon())
        .expect_err("a send on the failed connection");
    assert!(
        matches!(err, laggard::Error::Disconnected { .. }),
        "unexpected error {err}"
    );
    assert!(let_go(&rows), "rows of a refused send are still held");
}
