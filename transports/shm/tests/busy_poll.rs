//! Busy-polled endpoints (which never sleep) and endpoints that sleep on
//! their futex, in one cluster: each sees the other's frames, whichever
//! side of the connection each is on, and a sleeper is woken by its
//! busy-polled peer's ring.

use std::thread;
use std::time::{Duration, Instant};

use laggard::transport::{Endpoint, Event, PeerId, Transport};
use laggard_conformance::send_bytes;
use laggard_shm::{ShmConfig, ShmEndpoint, ShmTransport};

fn soon() -> Instant {
    Instant::now() + Duration::from_secs(10)
}

/// Two networks of one cluster: one busy-polled, one that sleeps at once
/// when it waits. Liveness checks are an hour apart, so a sleeper is
/// woken by a ring or by its deadline, never by a check: a missed ring
/// makes a wait time out.
fn networks(tag: &str) -> (ShmTransport, ShmTransport) {
    let id = format!("busy{tag}{}", std::process::id());
    let cfg = ShmConfig::default()
        .ring_bytes(1 << 16)
        .liveness_interval(Duration::from_secs(3600));
    let busy = ShmTransport::with_config(&id, cfg.clone().busy_poll(true)).unwrap();
    let sleepy = ShmTransport::with_config(&id, cfg.spin(Duration::ZERO)).unwrap();
    (busy, sleepy)
}

fn recv_byte(ep: &mut ShmEndpoint, what: &str) -> u8 {
    match ep.recv(soon()).unwrap() {
        Some(Event::Frame(_, frame)) => frame[0],
        other => panic!("{what}: expected a frame, got {other:?}"),
    }
}

/// Each side answers the other's frame after a pause, so the waiting side
/// is spinning (busy) or asleep on its futex (sleepy) when it arrives.
fn ping_pong(mut waiter: ShmEndpoint, to_waiter: PeerId, mut asker: ShmEndpoint, to_asker: PeerId) {
    let answering = thread::spawn(move || {
        for i in 0..10u8 {
            let got = recv_byte(&mut waiter, "the answering side");
            assert_eq!(got, i);
            thread::sleep(Duration::from_millis(3));
            send_bytes(&mut waiter, to_asker, &[got]).unwrap();
        }
    });
    for i in 0..10u8 {
        thread::sleep(Duration::from_millis(3));
        send_bytes(&mut asker, to_waiter, &[i]).unwrap();
        assert_eq!(recv_byte(&mut asker, "the asking side"), i);
    }
    answering.join().unwrap();
}

/// Binds a server on `acceptor` and a client on `connector`, connects
/// them, and has them exchange frames both ways.
fn connect_and_exchange(acceptor: &ShmTransport, connector: &ShmTransport) {
    let mut server = acceptor.bind("server").unwrap();
    let mut client = connector.bind("client").unwrap();
    let to_server = client.connect("server", soon()).unwrap();
    let to_client = match server.recv(soon()).unwrap() {
        Some(Event::Connected(peer)) => peer,
        other => panic!("expected a connection, got {other:?}"),
    };
    ping_pong(server, to_server, client, to_client);
}

#[test]
fn a_sleeping_acceptor_and_a_busy_connector_wake_each_other() {
    let (busy, sleepy) = networks("acc");
    connect_and_exchange(&sleepy, &busy);
}

#[test]
fn a_busy_acceptor_and_a_sleeping_connector_wake_each_other() {
    let (busy, sleepy) = networks("con");
    connect_and_exchange(&busy, &sleepy);
}
