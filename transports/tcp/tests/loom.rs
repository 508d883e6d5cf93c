//! Loom models of the TCP transport's wait/notify protocols: credit flow
//! control and the inbox that reader threads fill.
//!
//! Run with:
//! `RUSTFLAGS="--cfg laggard_loom" LOOM_MAX_PREEMPTIONS=2 cargo test -p laggard-tcp --release --test loom`
//!
//! Loom's condition variable never times out, so a lost wake-up shows up
//! as a deadlock, which loom reports.
#![cfg(laggard_loom)]

use std::time::{Duration, Instant};

use laggard::sync::{Arc, AtomicUsize, Ordering, model, thread};
use laggard_tcp::loom_api::{Flow, Inbox, Pop, Stalled};

fn far() -> Instant {
    Instant::now() + Duration::from_secs(3600)
}

/// A sender out of credit is woken when the receiver returns credit.
#[test]
fn a_sender_waiting_for_credit_is_woken_by_its_return() {
    model(|| {
        let flow = Arc::new(Flow::with_granted(10, 1 << 20));
        flow.reserve(8, far(), || {}).unwrap();
        let (f1, f2) = (flow.clone(), flow.clone());
        let sender = thread::spawn(move || f1.reserve(8, far(), || {}));
        let reader = thread::spawn(move || f2.credited(8).unwrap());
        reader.join().unwrap();
        assert_eq!(sender.join().unwrap(), Ok(()));
    });
}

/// A sender out of credit is woken when the connection closes, and told
/// why.
#[test]
fn a_sender_waiting_for_credit_is_woken_by_close() {
    model(|| {
        let flow = Arc::new(Flow::with_granted(10, 1 << 20));
        flow.reserve(10, far(), || {}).unwrap();
        let (f1, f2) = (flow.clone(), flow.clone());
        let sender = thread::spawn(move || f1.reserve(1, far(), || {}));
        let reader = thread::spawn(move || f2.close("gone", false));
        reader.join().unwrap();
        assert_eq!(sender.join().unwrap(), Err(Stalled::Closed("gone".into())));
    });
}

/// Two senders racing for the credit of one frame never overdraw the
/// window: exactly one gets through; the other waits until the close.
#[test]
fn racing_senders_never_overdraw_the_window() {
    model(|| {
        let flow = Arc::new(Flow::with_granted(4, 1 << 20));
        flow.reserve(4, far(), || {}).unwrap();
        let through = Arc::new(AtomicUsize::new(0));
        let senders: Vec<_> = (0..2)
            .map(|_| {
                let (f, t) = (flow.clone(), through.clone());
                thread::spawn(move || {
                    let r = f.reserve(4, far(), || {});
                    if r.is_ok() {
                        t.fetch_add(1, Ordering::SeqCst);
                    }
                    r
                })
            })
            .collect();
        let (f, t) = (flow.clone(), through.clone());
        let reader = thread::spawn(move || {
            f.credited(4).unwrap();
            while t.load(Ordering::SeqCst) == 0 {
                thread::yield_now();
            }
            f.close("done", false);
        });
        reader.join().unwrap();
        let results: Vec<_> = senders.into_iter().map(|s| s.join().unwrap()).collect();
        assert_eq!(
            results.iter().filter(|r| r.is_ok()).count(),
            1,
            "{results:?}"
        );
        assert!(results.contains(&Err(Stalled::Closed("done".into()))));
    });
}

/// `drained` (flush) wakes once every byte sent was released.
#[test]
fn flush_is_woken_when_the_last_frame_is_released() {
    model(|| {
        let flow = Arc::new(Flow::with_granted(100, 1 << 20));
        flow.reserve(3, far(), || {}).unwrap();
        flow.reserve(5, far(), || {}).unwrap();
        let (f1, f2) = (flow.clone(), flow.clone());
        let flusher = thread::spawn(move || f1.drained(far(), || {}));
        let reader = thread::spawn(move || {
            f2.credited(3).unwrap();
            f2.credited(5).unwrap();
        });
        reader.join().unwrap();
        assert_eq!(flusher.join().unwrap(), Ok(()));
    });
}

/// Returns the credit due on `receiver` (the peer's side of the
/// connection) to `sender`, as the keeper does.
fn return_credit(receiver: &Flow, sender: &Flow) {
    sender.credited(receiver.take_credit()).unwrap();
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
        // ask makes the credit due.)
        let sender = Arc::new(Flow::with_granted(10, 1 << 20));
        let receiver = Arc::new(Flow::with_granted(1 << 20, 100));
        sender.reserve(8, far(), || {}).unwrap();
        receiver.arrived(8).unwrap();
        let (s1, r1) = (sender.clone(), receiver.clone());
        let waiter = thread::spawn(move || {
            // The ask travels behind the frame; the peer's reader handles
            // it, and its keeper sends what is due.
            s1.reserve(8, far(), || {
                if r1.asked() {
                    return_credit(&r1, &s1);
                }
            })
        });
        let (s2, r2) = (sender.clone(), receiver.clone());
        let releaser = thread::spawn(move || {
            if r2.released(8) {
                return_credit(&r2, &s2);
            }
        });
        releaser.join().unwrap();
        assert_eq!(waiter.join().unwrap(), Ok(()));
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

/// A waiting receiver is woken by a push; items come out in order.
#[test]
fn the_inbox_wakes_its_reader_and_keeps_order() {
    model(|| {
        let inbox = Arc::new(Inbox::new());
        let (i1, i2) = (inbox.clone(), inbox.clone());
        let reader = thread::spawn(move || {
            let a = i1.pop(far());
            let b = i1.pop(far());
            (a, b)
        });
        let writer = thread::spawn(move || {
            i2.push(1).unwrap();
            i2.push(2).unwrap();
        });
        writer.join().unwrap();
        assert_eq!(reader.join().unwrap(), (Pop::Item(1), Pop::Item(2)));
    });
}

/// A waiting receiver is woken by close; a push after close is refused.
#[test]
fn closing_the_inbox_wakes_its_reader() {
    model(|| {
        let inbox: Arc<Inbox<u32>> = Arc::new(Inbox::new());
        let (i1, i2) = (inbox.clone(), inbox.clone());
        let reader = thread::spawn(move || i1.pop(far()));
        let closer = thread::spawn(move || drop(i2.close()));
        closer.join().unwrap();
        assert_eq!(reader.join().unwrap(), Pop::Closed);
        assert_eq!(inbox.push(7), Err(7));
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

/// A peer that returns its last credit and then closes: a waiting flush
/// succeeds (everything was consumed), whichever it sees first.
#[test]
fn flush_succeeds_when_the_last_credit_precedes_the_close() {
    model(|| {
        let flow = Arc::new(Flow::with_granted(100, 1 << 20));
        flow.reserve(6, far(), || {}).unwrap();
        let (f1, f2) = (flow.clone(), flow.clone());
        let flusher = thread::spawn(move || f1.drained(far(), || {}));
        let reader = thread::spawn(move || {
            f2.credited(6).unwrap();
            f2.close("the peer closed the connection", false);
        });
        reader.join().unwrap();
        assert_eq!(flusher.join().unwrap(), Ok(()));
    });
}
