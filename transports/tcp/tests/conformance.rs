//! The TCP transport passes the conformance suite.

use laggard_conformance::Factory;
use laggard_tcp::{TcpConfig, TcpTransport};

struct Tcp;

impl Factory for Tcp {
    type T = TcpTransport;
    fn transport(&self) -> TcpTransport {
        TcpTransport::new()
    }
    fn with_buffering(&self, bytes: usize) -> TcpTransport {
        TcpTransport::with_config(TcpConfig::default().window(bytes)).unwrap()
    }
    fn leaks(&self, t: &TcpTransport) -> Vec<String> {
        let mut leaks = t.bound_names();
        if t.live_threads() > 0 {
            leaks.push(format!(
                "{} transport threads still running",
                t.live_threads()
            ));
        }
        leaks
    }
}

#[test]
fn ordering_per_connection() {
    laggard_conformance::ordering_per_connection(&Tcp);
}

#[test]
fn large_frames() {
    laggard_conformance::large_frames(&Tcp);
}

#[test]
fn frames_sent_in_parts_arrive_whole() {
    laggard_conformance::frames_sent_in_parts_arrive_whole(&Tcp);
}

#[test]
fn stashed_frames_arrive_whole() {
    laggard_conformance::stashed_frames_arrive_whole(&Tcp);
}

#[test]
fn held_rows_arrive_whole_and_are_let_go() {
    laggard_conformance::held_rows_arrive_whole_and_are_let_go(&Tcp);
}

#[test]
fn taken_frames_keep_their_bytes_and_release_credit() {
    laggard_conformance::taken_frames_keep_their_bytes_and_release_credit(&Tcp);
}

#[test]
fn kept_frames_keep_their_bytes_until_they_crowd() {
    let crowded = laggard_conformance::kept_frames_keep_their_bytes_until_they_crowd(&Tcp);
    assert_eq!(crowded, 0, "this transport keeps no frames");
}

#[test]
fn many_concurrent_connections() {
    laggard_conformance::many_concurrent_connections(&Tcp);
}

#[test]
fn peer_drop_is_an_error() {
    laggard_conformance::peer_drop_is_an_error(&Tcp);
}

#[test]
fn backpressure_when_the_receiver_is_slow() {
    laggard_conformance::backpressure_when_the_receiver_is_slow(&Tcp);
}

#[test]
fn recv_returns_at_its_deadline() {
    laggard_conformance::recv_returns_at_its_deadline(&Tcp);
}

#[test]
fn clean_shutdown_leaks_nothing() {
    laggard_conformance::clean_shutdown_leaks_nothing(&Tcp);
}
