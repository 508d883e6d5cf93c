//! The conformance suite for laggard transports.
//!
//! Every transport (in-process, shared memory, TCP, RDMA) runs the same
//! checks through [`run_all`], or one at a time through the individual
//! functions. A transport plugs in with a [`Factory`] that makes fresh,
//! independent networks.
//!
//! ```
//! use laggard::transport::InProcess;
//! use laggard_conformance::Factory;
//!
//! struct InProc;
//! impl Factory for InProc {
//!     type T = InProcess;
//!     fn transport(&self) -> InProcess { InProcess::new() }
//!     fn with_buffering(&self, bytes: usize) -> InProcess { InProcess::with_capacity(bytes) }
//!     fn leaks(&self, t: &InProcess) -> Vec<String> { t.bound_names() }
//! }
//! laggard_conformance::ordering_per_connection(&InProc);
//! ```

#![warn(missing_docs)]

mod kept_session;
mod stash_session;
mod stopped_session;

pub use kept_session::{KEPT_CLOCKS, KEPT_KEYS, KEPT_ROW_WIDTH, pulled_rows_read_right_when_kept};
pub use stash_session::{STASH_CLOCKS, STASH_KEYS, STASH_ROW_WIDTH, stashed_pushes_sum_exactly};
pub use stopped_session::{STOPPED_REASON, a_busy_worker_hears_why_its_shard_stopped};

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use laggard::Error;
use laggard::transport::{Endpoint, Event, HeldRow, PeerId, Stash, Transport};

/// Makes transports for the suite.
pub trait Factory: Sync {
    /// The transport under test.
    type T: Transport;

    /// A fresh network with default settings.
    fn transport(&self) -> Self::T;

    /// A fresh network whose connections buffer at most about `bytes`
    /// unread bytes per direction, for the backpressure check.
    fn with_buffering(&self, bytes: usize) -> Self::T;

    /// What `t` still holds after every endpoint was dropped (names,
    /// segments, sockets...): empty if nothing leaked.
    fn leaks(&self, t: &Self::T) -> Vec<String>;
}

/// How long any single step of the suite may block.
const STEP: Duration = Duration::from_secs(20);

fn deadline() -> Instant {
    Instant::now() + STEP
}

/// Sends a frame holding `bytes`.
pub fn send_bytes<E: Endpoint>(ep: &mut E, peer: PeerId, bytes: &[u8]) -> laggard::Result<()> {
    let mut buf = ep.lend(peer, bytes.len(), deadline())?;
    buf.copy_from_slice(bytes);
    ep.send(buf)
}

/// The next frame's peer and bytes, skipping connection events; panics if
/// none arrives within the step deadline or the peer disconnects.
fn next_frame<E: Endpoint>(ep: &mut E) -> (PeerId, Vec<u8>) {
    next_frame_from(ep, false)
}

/// As [`next_frame`]; with `finished_ok`, disconnects (of peers that sent
/// everything) are skipped too.
fn next_frame_from<E: Endpoint>(ep: &mut E, finished_ok: bool) -> (PeerId, Vec<u8>) {
    loop {
        match ep.recv(deadline()).expect("recv") {
            Some(Event::Frame(peer, frame)) => return (peer, frame.to_vec()),
            Some(Event::Connected(_)) => {}
            Some(Event::Disconnected(_)) if finished_ok => {}
            Some(Event::Disconnected(p)) => panic!("unexpected disconnect of {p}"),
            None => panic!("no frame within {STEP:?}"),
        }
    }
}

/// Runs every check.
pub fn run_all<F: Factory>(f: &F) {
    ordering_per_connection(f);
    large_frames(f);
    frames_sent_in_parts_arrive_whole(f);
    stashed_frames_arrive_whole(f);
    held_rows_arrive_whole_and_are_let_go(f);
    taken_frames_keep_their_bytes_and_release_credit(f);
    kept_frames_keep_their_bytes_until_they_crowd(f);
    many_concurrent_connections(f);
    peer_drop_is_an_error(f);
    backpressure_when_the_receiver_is_slow(f);
    recv_returns_at_its_deadline(f);
    clean_shutdown_leaks_nothing(f);
}

/// Frames on one connection arrive in the order they were sent, intact.
pub fn ordering_per_connection<F: Factory>(f: &F) {
    let t = f.transport();
    let mut server = t.bind("order-server").unwrap();
    let mut client = t.bind("order-client").unwrap();
    let peer = client.connect("order-server", deadline()).unwrap();
    let n = 2_000u32;
    std::thread::scope(|s| {
        s.spawn(|| {
            for i in 0..n {
                let len = 8 + (i as usize % 61);
                let mut frame = vec![(i % 251) as u8; len];
                frame[..4].copy_from_slice(&i.to_le_bytes());
                send_bytes(&mut client, peer, &frame).unwrap();
            }
        });
        for i in 0..n {
            let (_, frame) = next_frame(&mut server);
            assert_eq!(
                u32::from_le_bytes(frame[..4].try_into().unwrap()),
                i,
                "out of order"
            );
            assert_eq!(frame.len(), 8 + (i as usize % 61));
            assert!(
                frame[4..].iter().all(|&b| b == (i % 251) as u8),
                "frame {i} corrupted"
            );
        }
    });
}

/// Frames of many megabytes arrive intact, in both directions.
pub fn large_frames<F: Factory>(f: &F) {
    let t = f.transport();
    let mut server = t.bind("large-server").unwrap();
    let mut client = t.bind("large-client").unwrap();
    let peer = client.connect("large-server", deadline()).unwrap();
    let len = (16 << 20).min(client.max_frame_len());
    let pattern: Vec<u8> = (0..len).map(|i| (i * 7 % 253) as u8).collect();
    std::thread::scope(|s| {
        s.spawn(|| send_bytes(&mut client, peer, &pattern).unwrap());
        let (from, frame) = next_frame(&mut server);
        assert!(frame == pattern, "large frame corrupted");
        send_bytes(&mut server, from, &frame).unwrap();
    });
    let (_, back) = next_frame(&mut client);
    assert!(back == pattern, "large reply corrupted");
}

/// A frame sent in parts ([`Endpoint::send_parts`]) arrives as their
/// concatenation, in order with frames sent from lent buffers, and waits
/// for the receiver like any other frame: with a window of a few frames,
/// many frames in parts all arrive intact.
pub fn frames_sent_in_parts_arrive_whole<F: Factory>(f: &F) {
    let t = f.with_buffering(256 << 10);
    let mut server = t.bind("parts-server").unwrap();
    let mut client = t.bind("parts-client").unwrap();
    let peer = client.connect("parts-server", deadline()).unwrap();
    let frames = 60usize;
    let expected = |i: usize| -> Vec<u8> {
        let len = [5, 100 << 10, 3][i % 3];
        (0..len).map(|j| ((i * 31 + j) % 251) as u8).collect()
    };
    std::thread::scope(|s| {
        s.spawn(|| {
            for i in 0..frames {
                let frame = expected(i);
                if i % 4 == 3 {
                    send_bytes(&mut client, peer, &frame).unwrap();
                } else {
                    // Split anywhere, with an empty part thrown in.
                    let cut = frame.len() / 3;
                    let parts = [&frame[..cut], &[][..], &frame[cut..]];
                    client.send_parts(peer, &parts, deadline()).unwrap();
                }
            }
        });
        for i in 0..frames {
            let (_, frame) = next_frame(&mut server);
            assert!(
                frame == expected(i),
                "frame {i} in parts corrupted or out of order"
            );
        }
    });
}

/// A frame sent with [`Endpoint::send_stashed`] arrives as its head
/// followed by its tail: read in place ([`Endpoint::frame_tail`]) where the
/// transport lends stashes ([`Endpoint::stash`]), copied into the frame
/// where it does not (then the tail is a heap [`Stash`]). Blocks are kept
/// until a flush says their frames were released, as a worker keeps them
/// until acknowledged, and given back for reuse after.
pub fn stashed_frames_arrive_whole<F: Factory>(f: &F) {
    let t = f.with_buffering(256 << 10);
    let mut server = t.bind("stash-server").unwrap();
    let mut client = t.bind("stash-client").unwrap();
    let peer = client.connect("stash-server", deadline()).unwrap();
    let frames = 24usize;
    let head = |i: usize| -> Vec<u8> { (0..8 + 8 * (i % 3)).map(|j| (i + j) as u8).collect() };
    let tail = |i: usize| -> Vec<u8> {
        let len = [100 << 10, (64 << 10) + 8, 8][i % 3];
        (0..len).map(|j| ((i * 13 + j) % 241) as u8).collect()
    };
    std::thread::scope(|s| {
        s.spawn(|| {
            let mut held = Vec::new();
            for i in 0..frames {
                let want = tail(i);
                let mut block = match client.stash(peer, want.len()) {
                    Some(block) => block,
                    None => {
                        // Full, or no stash at all: once every frame sent
                        // was released, the held blocks may go.
                        client.flush(peer, deadline()).unwrap();
                        held.clear();
                        client
                            .stash(peer, want.len())
                            .unwrap_or_else(|| Stash::new(vec![0u8; want.len()]))
                    }
                };
                assert_eq!(block.len(), want.len(), "a stash of the wrong length");
                block.copy_from_slice(&want);
                client
                    .send_stashed(peer, &head(i), &block, deadline())
                    .unwrap();
                held.push(block);
            }
            client.flush(peer, deadline()).unwrap();
        });
        let mut i = 0;
        while i < frames {
            match server.recv(deadline()).expect("recv") {
                Some(Event::Frame(_, frame)) => {
                    let got = [&frame[..], server.frame_tail(&frame)].concat();
                    assert!(
                        got == [head(i), tail(i)].concat(),
                        "stashed frame {i} corrupted or out of order"
                    );
                    i += 1;
                }
                Some(Event::Connected(_)) => {}
                Some(Event::Disconnected(p)) => panic!("unexpected disconnect of {p}"),
                None => panic!("no frame {i} within {STEP:?}"),
            }
        }
    });
}

/// [`Endpoint::send_held`] sends its head and then its rows as one frame,
/// intact and in order with the frames around it, and every row is let go
/// of once [`Endpoint::release_held`] returned: rows of several lengths,
/// the same rows again (a transport may keep what it registered of them),
/// more rows in one frame than a device gathers in one write, plain frames
/// between. Rows sent to a receiver that is not receiving are let go of
/// too (a device's writes complete without the peer's CPU).
pub fn held_rows_arrive_whole_and_are_let_go<F: Factory>(f: &F) {
    let t = f.with_buffering(4 << 20);
    let mut server = t.bind("held-server").unwrap();
    let mut client = t.bind("held-client").unwrap();
    let peer = client.connect("held-server", deadline()).unwrap();
    let rows: Vec<Arc<Vec<u8>>> = (0..48usize)
        .map(|r| {
            let len = [64 << 10, 8, (64 << 10) + 8, 1000][r % 4];
            Arc::new((0..len).map(|j| ((r * 7 + j) % 239) as u8).collect())
        })
        .collect();
    // Frame i: a plain frame, one row, three rows, or 40 short rows (some
    // twice), after a head.
    let picked = |i: usize| -> Vec<usize> {
        match i % 4 {
            0 => vec![],
            1 => vec![i % 48],
            2 => vec![i % 48, (i + 1) % 48, (i + 2) % 48],
            _ => (0..40).map(|k| (2 * (i + k) + 1) % 48).collect(),
        }
    };
    let head = |i: usize| -> Vec<u8> { (0..8 + 8 * (i % 3)).map(|j| (i * 3 + j) as u8).collect() };
    let expected = |i: usize| -> Vec<u8> {
        let mut frame = head(i);
        for r in picked(i) {
            frame.extend_from_slice(&rows[r]);
        }
        frame
    };
    let send = |client: &mut <F::T as Transport>::Endpoint, i: usize| {
        if picked(i).is_empty() {
            send_bytes(client, peer, &head(i)).unwrap();
        } else {
            let held = picked(i)
                .into_iter()
                .map(|r| HeldRow::new(Arc::clone(&rows[r])))
                .collect();
            client.send_held(peer, &head(i), held, deadline()).unwrap();
        }
    };
    let all_let_go = |rows: &[Arc<Vec<u8>>]| {
        for (r, row) in rows.iter().enumerate() {
            assert_eq!(
                Arc::strong_count(row),
                1,
                "row {r} is still held after release_held returned"
            );
        }
    };
    client
        .release_held(deadline())
        .expect("releasing with nothing held");
    // Before the receiver looks at anything.
    let early = 4;
    for i in 0..early {
        send(&mut client, i);
    }
    client
        .release_held(deadline())
        .expect("releasing rows sent to a receiver that is not receiving");
    all_let_go(&rows);
    let frames = 120usize;
    std::thread::scope(|s| {
        s.spawn(|| {
            for i in early..frames {
                send(&mut client, i);
            }
            client.release_held(deadline()).unwrap();
            client.flush(peer, deadline()).unwrap();
        });
        for i in 0..frames {
            let (_, frame) = next_frame(&mut server);
            assert!(
                frame == expected(i),
                "frame {i} ({} rows) corrupted or out of order",
                picked(i).len()
            );
        }
    });
    all_let_go(&rows);
}

/// [`Endpoint::take_frame`] moves a frame's exact bytes into the given
/// buffer, whatever that buffer held before (longer, shorter, reused), and
/// releases the frame: with a window of a few frames, many frames taken
/// into one buffer all arrive, and the sender's flush sees them consumed.
pub fn taken_frames_keep_their_bytes_and_release_credit<F: Factory>(f: &F) {
    let frames = 40usize;
    let expected = |i: usize| -> Vec<u8> {
        let len = [100 << 10, 7, 64 << 10, 1][i % 4];
        (0..len).map(|j| ((i * 17 + j) % 253) as u8).collect()
    };
    stream_frames(f, "take", frames, &expected, |server| {
        let mut buf = vec![9u8; 3 << 10];
        let mut i = 0;
        while i < frames {
            match server.recv(deadline()).expect("recv") {
                Some(Event::Frame(_, frame)) => {
                    server.take_frame(frame, &mut buf);
                    assert!(buf == expected(i), "frame {i} changed when taken");
                    i += 1;
                }
                Some(Event::Connected(_)) => {}
                Some(Event::Disconnected(p)) => panic!("unexpected disconnect of {p}"),
                None => panic!("no frame {i} within {STEP:?}"),
            }
        }
    });
}

/// Frames kept where they landed ([`Endpoint::keep_frame`]) keep their
/// bytes until dropped, and a receiver that keeps every frame and drops
/// the kept ones only when [`Endpoint::kept_frames_crowd`] says so never
/// makes its sender wait for good: many frames through a connection with
/// room for a few all arrive, each intact when kept and when dropped, and
/// the sender's flush sees them all released. A transport that keeps no
/// frames gives each back, and passes. Returns how many times the kept
/// frames crowded the connection (0 where none are kept).
pub fn kept_frames_keep_their_bytes_until_they_crowd<F: Factory>(f: &F) -> usize {
    let frames = 60usize;
    let expected = |i: usize| -> Vec<u8> {
        let len = [100 << 10, 7, 64 << 10, 1, 20 << 10][i % 5];
        (0..len).map(|j| ((i * 31 + j) % 251) as u8).collect()
    };
    stream_frames(f, "keep", frames, &expected, |server| {
        let mut kept = Vec::new();
        let mut crowded = 0;
        let mut i = 0;
        while i < frames {
            match server.recv(deadline()).expect("recv") {
                Some(Event::Frame(from, frame)) => {
                    match server.keep_frame(frame) {
                        Ok(frame) => {
                            assert!(*frame == expected(i), "frame {i} changed when kept");
                            kept.push((i, frame));
                        }
                        Err(frame) => assert!(*frame == expected(i), "frame {i} changed"),
                    }
                    if server.kept_frames_crowd(from) {
                        crowded += 1;
                        for (j, frame) in kept.drain(..) {
                            assert!(*frame == expected(j), "kept frame {j} changed");
                        }
                    }
                    i += 1;
                }
                Some(Event::Connected(_)) => {}
                Some(Event::Disconnected(p)) => panic!("unexpected disconnect of {p}"),
                None => panic!("no frame {i} within {STEP:?} (are kept frames crowding?)"),
            }
        }
        for (j, frame) in kept.drain(..) {
            assert!(*frame == expected(j), "kept frame {j} changed");
        }
        crowded
    })
}

/// On a network of 256 KiB of buffering per connection, sends `frames`
/// frames, frame `i` holding `expected(i)`, from `{name}-client` to
/// `{name}-server` on a thread of its own (then flushes), while `receive`
/// runs on the server's endpoint; returns what `receive` returns.
fn stream_frames<F: Factory, R>(
    f: &F,
    name: &str,
    frames: usize,
    expected: &(dyn Fn(usize) -> Vec<u8> + Sync),
    receive: impl FnOnce(&mut <F::T as Transport>::Endpoint) -> R,
) -> R {
    let t = f.with_buffering(256 << 10);
    let mut server = t.bind(&format!("{name}-server")).unwrap();
    let mut client = t.bind(&format!("{name}-client")).unwrap();
    let peer = client
        .connect(&format!("{name}-server"), deadline())
        .unwrap();
    std::thread::scope(|s| {
        s.spawn(|| {
            for i in 0..frames {
                send_bytes(&mut client, peer, &expected(i)).unwrap();
            }
            client.flush(peer, deadline()).unwrap();
        });
        receive(&mut server)
    })
}

/// Many clients at once, each on its own connection and thread: every
/// frame arrives, in order per connection.
pub fn many_concurrent_connections<F: Factory>(f: &F) {
    let t = f.transport();
    let mut server = t.bind("many-server").unwrap();
    let (clients, frames) = (16usize, 200u32);
    std::thread::scope(|s| {
        for c in 0..clients {
            let t = &t;
            s.spawn(move || {
                let mut ep = t.bind(&format!("many-client-{c}")).unwrap();
                let peer = ep.connect("many-server", deadline()).unwrap();
                for i in 0..frames {
                    let mut frame = [0u8; 8];
                    frame[..4].copy_from_slice(&(c as u32).to_le_bytes());
                    frame[4..].copy_from_slice(&i.to_le_bytes());
                    send_bytes(&mut ep, peer, &frame).unwrap();
                }
                ep.flush(peer, deadline()).unwrap();
            });
        }
        let mut next: HashMap<u32, u32> = HashMap::new();
        let mut owner: HashMap<PeerId, u32> = HashMap::new();
        for _ in 0..clients as u32 * frames {
            // Clients that sent everything drop their endpoints meanwhile.
            let (peer, frame) = next_frame_from(&mut server, true);
            let c = u32::from_le_bytes(frame[..4].try_into().unwrap());
            let i = u32::from_le_bytes(frame[4..].try_into().unwrap());
            assert_eq!(
                *owner.entry(peer).or_insert(c),
                c,
                "two clients on one connection"
            );
            let expected = next.entry(c).or_insert(0);
            assert_eq!(i, *expected, "client {c}: frame {i} out of order");
            *expected += 1;
        }
        assert!(next.values().all(|&n| n == frames));
    });
}

/// When a peer goes away, the other side sees a disconnect and its sends
/// fail; nothing hangs.
pub fn peer_drop_is_an_error<F: Factory>(f: &F) {
    let t = f.transport();
    let mut server = t.bind("drop-server").unwrap();
    let mut client = t.bind("drop-client").unwrap();
    let peer = client.connect("drop-server", deadline()).unwrap();
    send_bytes(&mut client, peer, b"before").unwrap();
    let (_, frame) = next_frame(&mut server);
    assert_eq!(frame, b"before");
    drop(server);
    let started = Instant::now();
    loop {
        match client.recv(deadline()).unwrap() {
            Some(Event::Disconnected(p)) => {
                assert_eq!(p, peer);
                break;
            }
            Some(_) => {}
            None => panic!("no disconnect event within {STEP:?}"),
        }
    }
    assert!(started.elapsed() < STEP);
    let err = send_bytes(&mut client, peer, b"after").unwrap_err();
    assert!(
        matches!(err, Error::Disconnected { .. }),
        "sending to a dropped peer gave {err:?}"
    );
}

/// A sender facing a receiver that does not read is held back (its lend
/// times out with an error naming the peer), and continues once the
/// receiver reads.
pub fn backpressure_when_the_receiver_is_slow<F: Factory>(f: &F) {
    let t = f.with_buffering(64 << 10);
    let mut server = t.bind("bp-server").unwrap();
    let mut client = t.bind("bp-client").unwrap();
    let peer = client.connect("bp-server", deadline()).unwrap();
    let frame = vec![5u8; 4 << 10];
    let mut sent = 0usize;
    let blocked = loop {
        let mut buf = match client.lend(
            peer,
            frame.len(),
            Instant::now() + Duration::from_millis(50),
        ) {
            Ok(buf) => buf,
            Err(e) => break e,
        };
        buf.copy_from_slice(&frame);
        client.send(buf).unwrap();
        sent += 1;
        assert!(sent < 100_000, "no backpressure after {sent} unread frames");
    };
    assert!(
        matches!(blocked, Error::NoResponse { .. }),
        "lend under backpressure gave {blocked:?}"
    );
    assert!(blocked.to_string().contains("bp-server"), "{blocked}");
    // Reading frees room; every frame sent so far is intact.
    for _ in 0..sent {
        let (_, got) = next_frame(&mut server);
        assert!(got == frame);
    }
    send_bytes(&mut client, peer, &frame).unwrap();
    assert!(next_frame(&mut server).1 == frame);
}

/// `recv` with nothing to receive returns `None` at its deadline.
pub fn recv_returns_at_its_deadline<F: Factory>(f: &F) {
    let t = f.transport();
    let mut ep = t.bind("idle").unwrap();
    let started = Instant::now();
    let got = ep.recv(started + Duration::from_millis(20)).unwrap();
    assert!(got.is_none());
    assert!(started.elapsed() >= Duration::from_millis(20));
    assert!(
        ep.recv(Instant::now()).unwrap().is_none(),
        "a past deadline polls"
    );
}

/// After traffic and drops, nothing is left behind and names can be
/// bound again.
pub fn clean_shutdown_leaks_nothing<F: Factory>(f: &F) {
    let t = f.transport();
    {
        let mut server = t.bind("clean-server").unwrap();
        let mut clients: Vec<_> = (0..4)
            .map(|c| t.bind(&format!("clean-client-{c}")).unwrap())
            .collect();
        for c in &mut clients {
            let peer = c.connect("clean-server", deadline()).unwrap();
            send_bytes(c, peer, b"hello").unwrap();
        }
        for _ in 0..4 {
            next_frame(&mut server);
        }
        // A frame still unread and a lent buffer never sent, at drop time.
        let peer = clients[0].connect("clean-server", deadline()).unwrap();
        send_bytes(&mut clients[0], peer, b"unread").unwrap();
        let _unsent = clients[1]
            .connect("clean-server", deadline())
            .and_then(|p| clients[1].lend(p, 16, deadline()));
        assert!(
            t.bind("clean-server").is_err(),
            "a bound name was bound twice"
        );
    }
    assert_eq!(
        f.leaks(&t),
        Vec::<String>::new(),
        "resources left after every endpoint dropped"
    );
    let _again = t.bind("clean-server").expect("the name is free again");
}
