//! An endpoint takes frames from its connections in turn: a peer that keeps
//! its ring full does not make another's frames wait behind all of its own
//! (a server shard with one busy worker still hears the others).

use std::time::{Duration, Instant};

use laggard::transport::{Endpoint, Event, Transport};
use laggard_conformance::send_bytes;
use laggard_shm::{ShmConfig, ShmTransport};

fn soon() -> Instant {
    Instant::now() + Duration::from_secs(10)
}

#[test]
fn frames_waiting_on_several_connections_are_taken_in_turn() {
    let cfg = ShmConfig::default().ring_bytes(1 << 16);
    let net = ShmTransport::with_config(&format!("fair{}", std::process::id()), cfg).unwrap();
    let mut server = net.bind("server").unwrap();
    let mut a = net.bind("a").unwrap();
    let mut b = net.bind("b").unwrap();
    let a_to = a.connect("server", soon()).unwrap();
    let b_to = b.connect("server", soon()).unwrap();
    // Both rings hold all their frames before the server takes any.
    const EACH: u8 = 20;
    for i in 0..EACH {
        send_bytes(&mut a, a_to, &[b'a', i]).unwrap();
        send_bytes(&mut b, b_to, &[b'b', i]).unwrap();
    }
    let mut taken = Vec::new();
    while taken.len() < 2 * EACH as usize {
        match server.recv(soon()).unwrap() {
            Some(Event::Frame(_, frame)) => taken.push(frame.to_vec()),
            Some(Event::Connected(_)) => {}
            other => panic!("expected frames, got {other:?}"),
        }
    }
    // Each peer's frames in the order it sent them...
    for peer in [b'a', b'b'] {
        let seq: Vec<u8> = taken
            .iter()
            .filter(|f| f[0] == peer)
            .map(|f| f[1])
            .collect();
        assert_eq!(
            seq,
            (0..EACH).collect::<Vec<_>>(),
            "frames of {}",
            peer as char
        );
    }
    // ...and the peers in turn, while both have frames waiting.
    for pair in taken.chunks(2) {
        assert_ne!(
            pair[0][0],
            pair[1][0],
            "two frames in a row from one peer while the other had some waiting: {:?}",
            taken.iter().map(|f| f[0] as char).collect::<String>()
        );
    }
}
