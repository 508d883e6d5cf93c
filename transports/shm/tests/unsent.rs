//! A lent buffer dropped unsent on another thread holds back none of the
//! frames lent after it, even while the endpoint that lent it sleeps.

use std::thread;
use std::time::{Duration, Instant};

use laggard::transport::{Endpoint, Event, PeerId, Transport};
use laggard_conformance::send_bytes;
use laggard_shm::{ShmConfig, ShmEndpoint, ShmTransport};

fn soon() -> Instant {
    Instant::now() + Duration::from_secs(10)
}

/// The next frame before `deadline`, skipping the connection's arrival.
fn frame(ep: &mut ShmEndpoint, deadline: Instant) -> Option<(PeerId, Vec<u8>)> {
    loop {
        match ep.recv(deadline).unwrap() {
            Some(Event::Frame(peer, frame)) => return Some((peer, frame.to_vec())),
            Some(Event::Connected(_)) => {}
            Some(Event::Disconnected(p)) => panic!("{p} disconnected"),
            None => return None,
        }
    }
}

#[test]
fn a_buffer_dropped_unsent_elsewhere_holds_back_no_later_frame() {
    // Both endpoints sleep as soon as they wait and check their peers only
    // hourly, so before its deadline only a ring wakes either of them.
    let cfg = ShmConfig::default()
        .ring_bytes(1 << 16)
        .spin(Duration::ZERO)
        .liveness_interval(Duration::from_secs(3600));
    let net = ShmTransport::with_config(&format!("unsent{}", std::process::id()), cfg).unwrap();
    let mut server = net.bind("server").unwrap();
    let mut client = net.bind("client").unwrap();
    let to_server = client.connect("server", soon()).unwrap();

    let first = client.lend(to_server, 8, soon()).unwrap();
    send_bytes(&mut client, to_server, b"second").unwrap();
    // Lent after `first`, so it is published after it: not yet.
    let shortly = Instant::now() + Duration::from_millis(50);
    assert_eq!(frame(&mut server, shortly), None);

    let answering = thread::spawn(move || {
        let (peer, got) = frame(&mut server, soon()).expect("the frame behind the dropped buffer");
        assert_eq!(got, b"second");
        send_bytes(&mut server, peer, b"ok").unwrap();
        server
    });
    let dropping = thread::spawn(move || {
        thread::sleep(Duration::from_millis(20));
        drop(first);
    });
    // The client sleeps here until the drop rings it; it then turns
    // `first` into padding, which lets "second" go, and the answer comes.
    let answer = frame(&mut client, soon()).map(|(_, bytes)| bytes);
    assert_eq!(answer.as_deref(), Some(&b"ok"[..]));
    dropping.join().unwrap();
    answering.join().unwrap();
}
