//! An endpoint reads its connections even while its user is not waiting
//! for them: its keeper reads while the user is busy elsewhere, and a
//! write that finds its socket full reads meanwhile. So a peer writing a
//! frame longer than the sockets can buffer finishes its write, and is not
//! declared dead for reading nothing, while the receiver computes; and two
//! endpoints writing long frames to each other at once both finish.

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

/// Two endpoints that write long frames to each other at once, neither
/// calling `recv` until its own write is done: each reads while its socket
/// is full, so both writes finish and both frames arrive whole.
#[test]
fn endpoints_writing_to_each_other_at_once_both_finish() {
    let cfg = TcpConfig::default()
        .heartbeat(Duration::from_millis(50))
        .dead_after(Duration::from_millis(400));
    let net = TcpTransport::with_config(cfg).unwrap();
    let mut a = net.bind("a").unwrap();
    let mut b = net.bind("b").unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let to_b = a.connect("b", deadline).unwrap();
    let to_a = match b.recv(deadline).unwrap() {
        Some(Event::Connected(p)) => p,
        other => panic!("expected the connection, got {other:?}"),
    };
    let barrier = std::sync::Arc::new(std::sync::Barrier::new(2));
    let run = |mut ep: laggard_tcp::TcpEndpoint, peer, seed: usize| {
        let barrier = barrier.clone();
        std::thread::spawn(move || -> laggard::Result<()> {
            let mut buf = ep.lend(peer, LEN, deadline)?;
            for (i, b) in buf.iter_mut().enumerate() {
                *b = byte(i + seed);
            }
            barrier.wait();
            ep.send(buf)?;
            match ep.recv(deadline)? {
                Some(Event::Frame(p, frame)) => {
                    assert_eq!(p, peer);
                    assert_eq!(frame.len(), LEN);
                    let other = 1 - seed;
                    let wrong = frame
                        .iter()
                        .enumerate()
                        .position(|(i, b)| *b != byte(i + other));
                    assert_eq!(wrong, None, "the frame arrived whole");
                }
                other => panic!("expected the frame, got {other:?}"),
            }
            ep.flush(peer, deadline)
        })
    };
    let from_a = run(a, to_b, 0);
    let from_b = run(b, to_a, 1);
    from_a.join().unwrap().expect("a's write and read finished");
    from_b.join().unwrap().expect("b's write and read finished");
}
