//! An endpoint reads its connections even while its user is not waiting
//! for them: its keeper reads while the user is busy elsewhere, and a
//! write that finds its socket full reads meanwhile. So a peer writing a
//! frame longer than the sockets can buffer finishes its write, and is not
//! declared dead for reading nothing, while the receiver computes; and two
//! endpoints writing long frames to each other at once both finish.

use std::time::{Duration, Instant};

use laggard::transport::{Endpoint, Event, PeerId, Transport};
use laggard_tcp::{TcpConfig, TcpEndpoint, TcpTransport};

const LEN: usize = 32 << 20;

fn byte(i: usize) -> u8 {
    (i.wrapping_mul(31) ^ (i >> 13)) as u8
}

/// A write that makes no progress for this long fails its connection.
/// Long enough that a keeper thread starved by a loaded machine (a debug
/// build, other test binaries) is not mistaken for a dead peer: with
/// 400 ms, CI once saw the receiver drop the writer mid-frame.
const DEAD_AFTER: Duration = Duration::from_millis(1500);

/// The two tests each move 32 MiB or more through loopback with their
/// threads busy; one at a time, so neither starves the other's keepers.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Two endpoints of a transport whose peers are declared dead after
/// [`DEAD_AFTER`], the first connected to the second: the first's id for
/// the second, the second's for the first, and the deadline for the test.
fn connected_pair() -> (TcpEndpoint, PeerId, TcpEndpoint, PeerId, Instant) {
    let cfg = TcpConfig::default()
        .heartbeat(Duration::from_millis(50))
        .dead_after(DEAD_AFTER);
    let net = TcpTransport::with_config(cfg).unwrap();
    let mut connecting = net.bind("connecting").unwrap();
    let mut accepting = net.bind("accepting").unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let to_accepting = connecting.connect("accepting", deadline).unwrap();
    let to_connecting = match accepting.recv(deadline).unwrap() {
        Some(Event::Connected(p)) => p,
        other => panic!("expected the connection, got {other:?}"),
    };
    (connecting, to_accepting, accepting, to_connecting, deadline)
}

#[test]
fn a_busy_receiver_still_reads_so_a_long_write_completes() {
    let _serial = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    // The receiver stays busy for several times `DEAD_AFTER`.
    let (mut sender, peer, mut receiver, from, deadline) = connected_pair();

    let writing = std::thread::spawn(move || -> laggard::Result<_> {
        let mut buf = sender.lend(peer, LEN, deadline)?;
        for (i, b) in buf.iter_mut().enumerate() {
            *b = byte(i);
        }
        sender.send(buf)?;
        Ok(sender)
    });
    // Busy: no call on the receiver for three times `DEAD_AFTER`.
    std::thread::sleep(3 * DEAD_AFTER);
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
    let _serial = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let (a, to_b, b, to_a, deadline) = connected_pair();
    let barrier = std::sync::Arc::new(std::sync::Barrier::new(2));
    let run = |mut ep: TcpEndpoint, peer, seed: usize| {
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
