//! The in-process transport passes the conformance suite.

use laggard::transport::InProcess;
use laggard_conformance::Factory;

struct InProc;

impl Factory for InProc {
    type T = InProcess;
    fn transport(&self) -> InProcess {
        InProcess::new()
    }
    fn with_buffering(&self, bytes: usize) -> InProcess {
        InProcess::with_capacity(bytes)
    }
    fn leaks(&self, t: &InProcess) -> Vec<String> {
        t.bound_names()
    }
}

#[test]
fn ordering_per_connection() {
    laggard_conformance::ordering_per_connection(&InProc);
}

#[test]
fn large_frames() {
    laggard_conformance::large_frames(&InProc);
}

#[test]
fn frames_sent_in_parts_arrive_whole() {
    laggard_conformance::frames_sent_in_parts_arrive_whole(&InProc);
}

#[test]
fn stashed_frames_arrive_whole() {
    laggard_conformance::stashed_frames_arrive_whole(&InProc);
}

#[test]
fn held_rows_arrive_whole_and_are_let_go() {
    laggard_conformance::held_rows_arrive_whole_and_are_let_go(&InProc);
}

#[test]
fn taken_frames_keep_their_bytes_and_release_credit() {
    laggard_conformance::taken_frames_keep_their_bytes_and_release_credit(&InProc);
}

#[test]
fn kept_frames_keep_their_bytes_until_they_crowd() {
    let crowded = laggard_conformance::kept_frames_keep_their_bytes_until_they_crowd(&InProc);
    assert_eq!(crowded, 0, "this transport keeps no frames");
}

#[test]
fn many_concurrent_connections() {
    laggard_conformance::many_concurrent_connections(&InProc);
}

#[test]
fn peer_drop_is_an_error() {
    laggard_conformance::peer_drop_is_an_error(&InProc);
}

#[test]
fn backpressure_when_the_receiver_is_slow() {
    laggard_conformance::backpressure_when_the_receiver_is_slow(&InProc);
}

#[test]
fn recv_returns_at_its_deadline() {
    laggard_conformance::recv_returns_at_its_deadline(&InProc);
}

#[test]
fn clean_shutdown_leaks_nothing() {
    laggard_conformance::clean_shutdown_leaks_nothing(&InProc);
}

#[test]
fn a_busy_worker_hears_why_its_shard_stopped() {
    laggard_conformance::a_busy_worker_hears_why_its_shard_stopped(&InProcess::new());
}
