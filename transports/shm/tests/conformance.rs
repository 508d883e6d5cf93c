//! The shared-memory transport passes the conformance suite.

use std::sync::atomic::{AtomicU32, Ordering};

use laggard_conformance::Factory;
use laggard_shm::{ShmConfig, ShmTransport};

struct Shm;

fn cluster() -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    format!(
        "conf{}_{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

impl Factory for Shm {
    type T = ShmTransport;
    fn transport(&self) -> ShmTransport {
        ShmTransport::new(&cluster()).unwrap()
    }
    fn with_buffering(&self, bytes: usize) -> ShmTransport {
        ShmTransport::with_config(&cluster(), ShmConfig::default().ring_bytes(bytes as u64))
            .unwrap()
    }
    fn leaks(&self, t: &ShmTransport) -> Vec<String> {
        t.segments()
    }
}

#[test]
fn ordering_per_connection() {
    laggard_conformance::ordering_per_connection(&Shm);
}

#[test]
fn large_frames() {
    laggard_conformance::large_frames(&Shm);
}

#[test]
fn frames_sent_in_parts_arrive_whole() {
    laggard_conformance::frames_sent_in_parts_arrive_whole(&Shm);
}

#[test]
fn stashed_frames_arrive_whole() {
    laggard_conformance::stashed_frames_arrive_whole(&Shm);
}

#[test]
fn held_rows_arrive_whole_and_are_let_go() {
    laggard_conformance::held_rows_arrive_whole_and_are_let_go(&Shm);
}

#[test]
fn taken_frames_keep_their_bytes_and_release_credit() {
    laggard_conformance::taken_frames_keep_their_bytes_and_release_credit(&Shm);
}

#[test]
fn kept_frames_keep_their_bytes_until_they_crowd() {
    let crowded = laggard_conformance::kept_frames_keep_their_bytes_until_they_crowd(&Shm);
    assert_eq!(crowded, 0, "this transport keeps no frames");
}

#[test]
fn many_concurrent_connections() {
    laggard_conformance::many_concurrent_connections(&Shm);
}

#[test]
fn peer_drop_is_an_error() {
    laggard_conformance::peer_drop_is_an_error(&Shm);
}

#[test]
fn backpressure_when_the_receiver_is_slow() {
    laggard_conformance::backpressure_when_the_receiver_is_slow(&Shm);
}

#[test]
fn recv_returns_at_its_deadline() {
    laggard_conformance::recv_returns_at_its_deadline(&Shm);
}

#[test]
fn clean_shutdown_leaks_nothing() {
    laggard_conformance::clean_shutdown_leaks_nothing(&Shm);
}

#[test]
fn a_busy_worker_hears_why_its_shard_stopped() {
    let net = Shm.transport();
    laggard_conformance::a_busy_worker_hears_why_its_shard_stopped(&net);
    assert_eq!(Shm.leaks(&net), Vec::<String>::new());
}
