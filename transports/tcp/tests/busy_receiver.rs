//! An endpoint whose user is busy elsewhere, in no call of the endpoint,
//! still reads its connections: its keeper does. So a peer writing a
//! frame longer than the sockets can buffer finishes its write, and is not
//! declared dead for reading nothing, while the receiver computes.

use std::time::{Duration, Instant};

use laggard::transport::{Endpoint, Event, Transport};
use laggard_tcp::{TcpConfig, TcpTransport};

const LEN: usize = 32 << 20;

fn byte(i: usize) -> u8 {
    (i.wrapping_mul(31) ^ (i >> 13)) as u8
}

#[test]
fn a_busy_receiver_still_reads_so_a_long_write_completes() {
    // A write that makes no progress for `dead_after` fails the
    // connection; the receiver stays busy for several times that.
    let dead_after = Duration::from_millis(400);
    let cfg = TcpConfig::default()
        .heartbeat(Duration::from_millis(50))
        .dead_after(dead_after);
    let net = TcpTransport::with_config(cfg).unwrap();
    let mut receiver = net.bind("receiver").unwrap();
    let mut sender = net.bind("sender").unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let peer = sender.connect("receiver", deadline).unwrap();
    let from = match receiver.recv(deadline).unwrap() {
        Some(Event::Connected(p)) => p,
        other => panic!("expected the connection, got {other:?}"),
    };

    let writing = std::thread::spawn(move || -> laggard::Result<_> {
        let mut buf = sender.lend(peer, LEN, deadline)?;
        for (i, b) in buf.iter_mut().enumerate() {
            *b = byte(i);
        }
        sender.send(buf)?;
        Ok(sender)
    });
    // Busy: no call on the receiver for three times `dead_after`.
    std::thread::sleep(3 * dead_after);
    let mut sender = writing
        .join()
        .unwrap()
        .expect("the write finished while the receiver was busy");

    match receiver.recv(deadline).unwrap() {
        Some(Event::Frame(p, frame)) => {
            assert_eq!(p, from);
            assert_eq!(frame.len(), LEN);
            let wrong = frame.iter().enumerate().position(|(i, b)| *b != byte(i));
            assert_eq!(wrong, None, "the frame arrived whole");
        }
        other => panic!("expected the frame, got {other:?}"),
    }
    sender.flush(peer, deadline).unwrap();
}
