//! The RDMA transport passes the conformance suite. Needs an RDMA device
//! (soft-RoCE is enough): run through `guest/guest.sh`, or on a host with
//! one. Without a device every test fails with the preflight's message.

use laggard_conformance::Factory;
use laggard_rdma::{RdmaConfig, RdmaTransport};

struct Rdma;

impl Factory for Rdma {
    type T = RdmaTransport;
    fn transport(&self) -> RdmaTransport {
        RdmaTransport::new()
    }
    fn with_buffering(&self, bytes: usize) -> RdmaTransport {
        RdmaTransport::with_config(RdmaConfig::default().ring_bytes(bytes as u64)).unwrap()
    }
    fn leaks(&self, t: &RdmaTransport) -> Vec<String> {
        t.leaks()
    }
}

#[test]
fn ordering_per_connection() {
    laggard_conformance::ordering_per_connection(&Rdma);
}

#[test]
fn large_frames() {
    laggard_conformance::large_frames(&Rdma);
}

#[test]
fn frames_sent_in_parts_arrive_whole() {
    laggard_conformance::frames_sent_in_parts_arrive_whole(&Rdma);
}

#[test]
fn stashed_frames_arrive_whole() {
    laggard_conformance::stashed_frames_arrive_whole(&Rdma);
}

#[test]
fn held_rows_arrive_whole_and_are_let_go() {
    laggard_conformance::held_rows_arrive_whole_and_are_let_go(&Rdma);
}

#[test]
fn taken_frames_keep_their_bytes_and_release_credit() {
    laggard_conformance::taken_frames_keep_their_bytes_and_release_credit(&Rdma);
}

#[test]
fn kept_frames_keep_their_bytes_until_they_crowd() {
    let crowded = laggard_conformance::kept_frames_keep_their_bytes_until_they_crowd(&Rdma);
    assert!(crowded > 0, "the frames kept never crowded a 256 KiB ring");
}

/// Pulled rows are cached where the server's device wrote them, in the
/// ring, and read right; with room for a few rows only, they crowd the
/// ring and are copied out, and the server never waits for good.
#[test]
fn pulled_rows_read_right_where_they_are_kept() {
    for ring in [64 << 20, 1 << 20] {
        let net = RdmaTransport::with_config(RdmaConfig::default().ring_bytes(ring)).unwrap();
        let stats = laggard_conformance::pulled_rows_read_right_when_kept(&net);
        assert!(
            stats.rows_kept > 0,
            "{ring}-byte ring: no row kept: {stats:?}"
        );
        if ring == 1 << 20 {
            assert!(
                stats.kept_rows_copied > 0,
                "rows kept never crowded a 1 MiB ring: {stats:?}"
            );
        }
        assert_eq!(net.leaks(), Vec::<String>::new());
    }
}

#[test]
fn many_concurrent_connections() {
    laggard_conformance::many_concurrent_connections(&Rdma);
}

#[test]
fn peer_drop_is_an_error() {
    laggard_conformance::peer_drop_is_an_error(&Rdma);
}

#[test]
fn backpressure_when_the_receiver_is_slow() {
    laggard_conformance::backpressure_when_the_receiver_is_slow(&Rdma);
}

#[test]
fn recv_returns_at_its_deadline() {
    laggard_conformance::recv_returns_at_its_deadline(&Rdma);
}

#[test]
fn clean_shutdown_leaks_nothing() {
    laggard_conformance::clean_shutdown_leaks_nothing(&Rdma);
}

#[test]
fn a_busy_worker_hears_why_its_shard_stopped() {
    let net = Rdma.transport();
    laggard_conformance::a_busy_worker_hears_why_its_shard_stopped(&net);
    assert_eq!(net.leaks(), Vec::<String>::new());
}
