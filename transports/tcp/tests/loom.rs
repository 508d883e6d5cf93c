//! Loom models of the TCP transport's concurrency: credit flow control,
//! the keeper's inbox, and the loop every waiting call runs
//! (`wait_reading`: whoever holds the reading lock polls and reads every
//! connection).
//!
//! Run with:
//! `RUSTFLAGS="--cfg laggard_loom" LOOM_MAX_PREEMPTIONS=2 cargo test -p laggard-tcp --release --test loom`
//!
//! The poll is modelled by [`Polled`]: a socket the peer writes credit
//! frames into and the endpoint's waker, with a condition variable for the
//! kernel's wake-up. Loom's condition variable never times out, so a
//! waiter that sleeps in a poll nothing will end (a lost wake-up) shows up
//! as a deadlock, which loom reports.
#![cfg(laggard_loom)]

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use laggard::sync::{Arc, AtomicUsize, Condvar, Mutex, Ordering, lock, model, thread};
use laggard_tcp::loom_api::{Flow, Inbox, Pop, Stalled, wait_reading};

fn far() -> Instant {
    Instant::now() + Duration::from_secs(3600)
}

/// What the modelled `poll` watches: one connection's socket (credit
/// frames written by the peer, not read yet) and the endpoint's waker.
#[derive(Default)]
struct PollState {
    socket: VecDeque<u32>,
    rung: bool,
}

#[derive(Default)]
struct Polled {
    state: Mutex<PollState>,
    changed: Condvar,
}

impl Polled {
    /// The peer writes a frame returning `credit`.
    fn write(&self, credit: u32) {
        lock(&self.state).socket.push_back(credit);
        self.changed.notify_all();
    }

    /// A thread rings the waker (`Waker::wake`).
    fn wake(&self) {
        lock(&self.state).rung = true;
        self.changed.notify_all();
    }

    /// `poll`: with `sleep`, waits until the socket or the waker is
    /// readable; without, only looks. Says which are readable.
    fn poll(&self, sleep: bool) -> (bool, bool) {
        let mut state = lock(&self.state);
        while sleep && state.socket.is_empty() && !state.rung {
            state = self.changed.wait(state).unwrap();
        }
        (state.rung, !state.socket.is_empty())
    }

    /// `Waker::clear`, after a poll saw the waker readable.
    fn clear(&self) {
        lock(&self.state).rung = false;
    }

    /// Reads every frame the socket holds.
    fn read(&self) -> Vec<u32> {
        lock(&self.state).socket.drain(..).collect()
    }
}

/// `reading::pump` for one connection whose frames return credit to
/// `flow`: poll, clear the waker if it rang, read what arrived.
fn pump(polled: &Polled, flow: &Flow, timeout: Duration) {
    let (rung, readable) = polled.poll(!timeout.is_zero());
    if rung {
        polled.clear();
    }
    if readable {
        for credit in polled.read() {
            flow.credited(credit).unwrap();
        }
    }
}

/// A sender's wait for room for `len` bytes, as `TcpEndpoint::reserve`
/// waits: in `wait_reading`, polling `polled` for credit frames.
fn wait_to_reserve(
    reading: &Mutex<()>,
    flow: &Flow,
    polled: &Polled,
    len: usize,
) -> Option<Result<(), Stalled>> {
    let ready = || flow.try_reserve(len).map(|ok| ok.then_some(())).transpose();
    wait_reading(
        reading,
        far(),
        Duration::ZERO,
        Duration::from_secs(1),
        ready,
        |_, t| pump(polled, flow, t),
    )
}

/// A sender out of credit waits in `wait_reading`; the credit comes back
/// while it polls, or while the keeper holds the reading lock and reads it
/// (the sender then waits for the lock, and sees the credit once it has
/// it). Either way the sender gets through.
#[test]
fn a_waiting_sender_sees_credit_whoever_reads_it() {
    model(|| {
        let flow = Arc::new(Flow::with_granted(10, 1 << 20));
        assert_eq!(flow.try_reserve(8), Ok(true));
        let polled = Arc::new(Polled::default());
        let reading = Arc::new(Mutex::new(()));
        let (f, p, r) = (flow.clone(), polled.clone(), reading.clone());
        let sender = thread::spawn(move || wait_to_reserve(&r, &f, &p, 8));
        let p = polled.clone();
        let peer = thread::spawn(move || p.write(8));
        let (f, p, r) = (flow.clone(), polled.clone(), reading.clone());
        let keeper = thread::spawn(move || {
            if let Ok(_reading) = r.try_lock() {
                pump(&p, &f, Duration::ZERO);
            }
        });
        peer.join().unwrap();
        keeper.join().unwrap();
        assert_eq!(sender.join().unwrap(), Some(Ok(())));
        assert_eq!(flow.outstanding(), 8, "the credit was counted once");
    });
}

/// A connection whose handshake finished is queued (its `Connected` event
/// first, then the connection itself for the reading to adopt) and the
/// waker rung, by the acceptor's thread. A waiter asleep in `poll` sees
/// the event, and its next wait adopts the connection.
#[test]
fn a_connection_that_joins_wakes_the_waiter_and_is_adopted() {
    model(|| {
        let inbox: Arc<Inbox<u32>> = Arc::new(Inbox::new());
        let joining: Arc<Mutex<Vec<u32>>> = Arc::default();
        let polled = Arc::new(Polled::default());
        let reading: Arc<Mutex<Vec<u32>>> = Arc::default();
        let adopted = Arc::new(AtomicUsize::new(0));

        let (i, j, p) = (inbox.clone(), joining.clone(), polled.clone());
        let acceptor = thread::spawn(move || {
            i.push(7).unwrap();
            lock(&j).push(7);
            p.wake();
        });
        let (i, j, p, r, a) = (
            inbox.clone(),
            joining.clone(),
            polled.clone(),
            reading.clone(),
            adopted.clone(),
        );
        let waiter = thread::spawn(move || {
            let flow = Flow::with_granted(10, 10);
            // `reading::pump`: adopt what joined (and read it at once,
            // without sleeping), then poll.
            let mut adopt_and_pump = |readers: &mut Vec<u32>, timeout: Duration| {
                let joined = std::mem::take(&mut *lock(&j));
                a.fetch_add(joined.len(), Ordering::SeqCst);
                let timeout = if joined.is_empty() {
                    timeout
                } else {
                    Duration::ZERO
                };
                readers.extend(joined);
                pump(&p, &flow, timeout);
            };
            let long = Duration::from_secs(1);
            let event = wait_reading(
                &r,
                far(),
                Duration::ZERO,
                long,
                || match i.try_pop() {
                    Pop::Item(id) => Some(id),
                    Pop::Empty | Pop::Closed => None,
                },
                &mut adopt_and_pump,
            );
            let adopted = wait_reading(
                &r,
                far(),
                Duration::ZERO,
                long,
                || (a.load(Ordering::SeqCst) == 1).then_some(()),
                &mut adopt_and_pump,
            );
            (event, adopted)
        });
        acceptor.join().unwrap();
        assert_eq!(waiter.join().unwrap(), (Some(7), Some(())));
        assert_eq!(*lock(&reading), [7]);
    });
}

/// Two senders racing for the credit of one frame never overdraw the
/// window: at most one gets through, and what is outstanding is what got
/// through.
#[test]
fn racing_senders_never_overdraw_the_window() {
    model(|| {
        let flow = Arc::new(Flow::with_granted(4, 1 << 20));
        assert_eq!(flow.try_reserve(4), Ok(true));
        let senders: Vec<_> = (0..2)
            .map(|_| {
                let f = flow.clone();
                thread::spawn(move || f.try_reserve(4))
            })
            .collect();
        let f = flow.clone();
        let reader = thread::spawn(move || f.credited(4).unwrap());
        reader.join().unwrap();
        let through = senders
            .into_iter()
            .map(|s| s.join().unwrap())
            .filter(|r| *r == Ok(true))
            .count();
        assert!(through <= 1);
        assert_eq!(flow.outstanding(), 4 * through);
    });
}

/// A peer that returns its last credit and then closes: a flush that looks
/// meanwhile sees "not yet" or "drained", never the close.
#[test]
fn flush_succeeds_when_the_last_credit_precedes_the_close() {
    model(|| {
        let flow = Arc::new(Flow::with_granted(100, 1 << 20));
        assert_eq!(flow.try_reserve(6), Ok(true));
        let f1 = flow.clone();
        let flusher = thread::spawn(move || f1.is_drained());
        let f2 = flow.clone();
        let reader = thread::spawn(move || {
            f2.credited(6).unwrap();
            f2.close("the peer closed the connection", false);
        });
        reader.join().unwrap();
        let seen = flusher.join().unwrap();
        assert!(seen.is_ok(), "{seen:?}");
        assert_eq!(flow.is_drained(), Ok(true));
    });
}

/// A sender that must wait for credit asks for it once; the receiver sends
/// it on its own (no frame going back to ride on) whether the ask comes
/// before or after it releases the frame, and exactly once.
#[test]
fn a_sender_that_asks_gets_its_credit_whenever_the_release_happens() {
    model(|| {
        // `sender` is one side's view of the connection, `receiver` the
        // other side's; one 8-byte frame is in flight from the first. (The
        // receiver's 100 keeps 8 bytes below half its window, so only the
        // ask makes the credit due.) Credit the receiver sends travels
        // through `polled`, the sender's socket.
        let sender = Arc::new(Flow::with_granted(10, 1 << 20));
        let receiver = Arc::new(Flow::with_granted(1 << 20, 100));
        let polled = Arc::new(Polled::default());
        assert_eq!(sender.try_reserve(8), Ok(true));
        receiver.arrived(8).unwrap();
        // The keeper's job on the receiver: send what is due.
        let return_credit = |receiver: &Flow, polled: &Polled| {
            let credit = receiver.take_credit();
            if credit > 0 {
                polled.write(credit);
            }
        };
        let (s1, r1, p1) = (sender.clone(), receiver.clone(), polled.clone());
        let waiter = thread::spawn(move || {
            if s1.try_reserve(8) == Ok(true) {
                return Some(Ok(()));
            }
            // The ask travels behind the frame; the peer's reading
            // handles it, and its keeper sends what is due.
            if r1.asked() {
                return_credit(&r1, &p1);
            }
            wait_to_reserve(&Mutex::new(()), &s1, &p1, 8)
        });
        let (r2, p2) = (receiver.clone(), polled.clone());
        let releaser = thread::spawn(move || {
            if r2.released(8) {
                return_credit(&r2, &p2);
            }
        });
        releaser.join().unwrap();
        assert_eq!(waiter.join().unwrap(), Some(Ok::<(), Stalled>(())));
        // Nothing is returned twice: exactly the 8 bytes reserved last are
        // outstanding, and the receiver owes nothing more.
        assert_eq!(receiver.take_credit(), 0);
        assert!(sender.credited(9).is_err());
        assert_eq!(sender.credited(8), Ok(()));
    });
}

/// Credit released by one thread and taken to ride on a frame by another
/// is reported exactly once; releases the peer did not ask for, far below
/// half the window, are left to ride rather than sent on their own.
#[test]
fn released_credit_is_returned_exactly_once() {
    model(|| {
        let flow = Arc::new(Flow::with_granted(100, 1 << 20));
        flow.arrived(7).unwrap();
        let (f1, f2) = (flow.clone(), flow.clone());
        let releaser = thread::spawn(move || {
            let first = f1.released(3);
            let second = f1.released(4);
            (first, second)
        });
        let taker = thread::spawn(move || f2.take_credit());
        let (first, second) = releaser.join().unwrap();
        let taken = taker.join().unwrap();
        let rest = flow.take_credit();
        assert_eq!(taken + rest, 7);
        assert!(!first && !second);
    });
}

/// The keeper, asleep in `drain`, is woken by pushes; items come out in
/// order.
#[test]
fn the_inbox_wakes_its_reader_and_keeps_order() {
    model(|| {
        let inbox = Arc::new(Inbox::new());
        let (i1, i2) = (inbox.clone(), inbox.clone());
        let reader = thread::spawn(move || {
            let mut got = Vec::new();
            while got.len() < 2 {
                assert!(i1.drain(far(), &mut got));
            }
            got
        });
        let writer = thread::spawn(move || {
            i2.push(1).unwrap();
            i2.push(2).unwrap();
        });
        writer.join().unwrap();
        assert_eq!(reader.join().unwrap(), [1, 2]);
    });
}

/// The keeper asleep in `drain` is woken by close; a push after close is
/// refused.
#[test]
fn closing_the_inbox_wakes_its_reader() {
    model(|| {
        let inbox: Arc<Inbox<u32>> = Arc::new(Inbox::new());
        let (i1, i2) = (inbox.clone(), inbox.clone());
        let reader = thread::spawn(move || i1.drain(far(), &mut Vec::new()));
        let closer = thread::spawn(move || drop(i2.close()));
        closer.join().unwrap();
        assert!(!reader.join().unwrap());
        assert_eq!(inbox.push(7), Err(7));
        assert_eq!(inbox.try_pop(), Pop::Closed);
    });
}

/// Two readers' worth of pushes from two threads are all drained, none
/// twice.
#[test]
fn drain_takes_every_item_once() {
    model(|| {
        let inbox = Arc::new(Inbox::new());
        let writers: Vec<_> = (0..2u32)
            .map(|w| {
                let i = inbox.clone();
                thread::spawn(move || i.push(w).unwrap())
            })
            .collect();
        let i = inbox.clone();
        let reader = thread::spawn(move || {
            let mut got = Vec::new();
            while got.len() < 2 {
                assert!(i.drain(far(), &mut got));
            }
            got
        });
        for w in writers {
            w.join().unwrap();
        }
        let mut got = reader.join().unwrap();
        got.sort_unstable();
        assert_eq!(got, [0, 1]);
    });
}
