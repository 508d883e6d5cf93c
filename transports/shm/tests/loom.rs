//! Loom models of the shared-memory transport's lock-free parts: the
//! single-producer single-consumer ring and the doorbell's futex protocol.
//!
//! Run with:
//! `RUSTFLAGS="--cfg laggard_loom" LOOM_MAX_PREEMPTIONS=2 cargo test -p laggard-shm --release --test loom`
//!
//! The ring's data region is modelled as loom atomics accessed Relaxed, so
//! a payload read that is not ordered after its write (a missing
//! Release/Acquire on the positions) can return a stale value and fail
//! the content checks. The futex is modelled with a mutex and a condition
//! variable that never times out, so a lost wake-up is a deadlock loom
//! reports.
#![cfg(laggard_loom)]

use std::time::{Duration, Instant};

use laggard::sync::{Arc, AtomicU64, Ordering, model, thread};
use laggard_shm::loom_api::{
    Consumer, Doorbell, Producer, RingCtl, Unsent, max_frame, published_at,
};

fn far() -> Instant {
    Instant::now() + Duration::from_secs(3600)
}

/// A ring of `cap` bytes: its shared words and data region.
struct Ring {
    ctl: RingCtl,
    words: Vec<AtomicU64>,
}

fn ring(cap: usize) -> Arc<Ring> {
    Arc::new(Ring {
        ctl: RingCtl::with(0),
        words: (0..cap / 8).map(|_| AtomicU64::new(0)).collect(),
    })
}

impl Ring {
    fn word(&self, pos: u64, i: usize) -> &AtomicU64 {
        let cap = self.words.len() as u64 * 8;
        &self.words[((pos % cap) / 8) as usize + i]
    }

    /// Writes frame `n` (`words` words, each `n * 100 + i`), retrying while
    /// the ring is full; `bell` is rung after publishing when given.
    fn send(&self, producer: &mut Producer, n: u64, words: usize, bell: Option<&Doorbell>) {
        let r = loop {
            match producer.reserve(&self.ctl, &self.words, words as u64 * 8) {
                Ok(Some(r)) => break r,
                Ok(None) => thread::yield_now(),
                Err(e) => panic!("{e:?}"),
            }
        };
        for i in 0..words {
            self.word(r.payload, i)
                .store(n * 100 + i as u64, Ordering::Relaxed);
        }
        if producer.complete(&self.words, r.record, true) {
            if let Some(bell) = bell {
                bell.ring();
            }
        }
    }

    /// Checks that taken frame `n` holds what `send` wrote.
    fn check(&self, taken: &laggard_shm::loom_api::Taken, n: u64, words: usize) {
        assert_eq!(
            taken.len,
            words as u64 * 8,
            "frame {n} has the wrong length"
        );
        for i in 0..words {
            assert_eq!(
                self.word(taken.payload, i).load(Ordering::Relaxed),
                n * 100 + i as u64,
                "frame {n} word {i} is stale"
            );
        }
    }
}

/// Frames arrive in order and intact across a wrap, with the producer
/// waiting for room; the consumer releases out of order.
#[test]
fn ring_delivers_in_order_across_the_wrap() {
    model(|| {
        let r = ring(64); // frames of up to 24 bytes
        assert_eq!(max_frame(64), 24);
        let sizes = [3usize, 2, 3];
        let p = r.clone();
        let producer = thread::spawn(move || {
            let mut producer = Producer::default();
            for (n, &w) in sizes.iter().enumerate() {
                p.send(&mut producer, n as u64, w, None);
            }
        });
        let mut consumer = Consumer::default();
        let mut held = None;
        for (n, &w) in sizes.iter().enumerate() {
            let taken = loop {
                match consumer.next(&r.ctl, &r.words) {
                    Ok(Some(t)) => break t,
                    Ok(None) => thread::yield_now(),
                    Err(e) => panic!("{e:?}"),
                }
            };
            r.check(&taken, n as u64, w);
            // Hold the first frame until the second is read.
            match held.take() {
                None if n == 0 => held = Some(taken),
                Some(first) => {
                    consumer.release(&r.ctl, taken.start, taken.end);
                    consumer.release(&r.ctl, first.start, first.end);
                }
                None => {
                    consumer.release(&r.ctl, taken.start, taken.end);
                }
            }
        }
        producer.join().unwrap();
        // The last frame's record ends on the first one's payload, two
        // laps on: publishing it zeroed the word there, so the consumer
        // finds nothing rather than a stale header.
        assert_eq!(consumer.next(&r.ctl, &r.words), Ok(None));
    });
}

/// A buffer dropped unsent becomes padding the consumer skips, and a
/// later frame is still delivered.
#[test]
fn an_unsent_buffer_is_skipped() {
    model(|| {
        let r = ring(64);
        let p = r.clone();
        let producer = thread::spawn(move || {
            let mut producer = Producer::default();
            let dropped = producer.reserve(&p.ctl, &p.words, 16).unwrap().unwrap();
            p.send(&mut producer, 1, 2, None); // lent after, published after
            producer.complete(&p.words, dropped.record, false);
        });
        let mut consumer = Consumer::default();
        let taken = loop {
            match consumer.next(&r.ctl, &r.words) {
                Ok(Some(t)) => break t,
                Ok(None) => thread::yield_now(),
                Err(e) => panic!("{e:?}"),
            }
        };
        r.check(&taken, 1, 2);
        producer.join().unwrap();
    });
}

/// A buffer dropped unsent on another thread, while a frame lent after it
/// waits behind it: the dropper hands its place over (`Unsent`) and rings
/// the endpoint's doorbell; the endpoint, asleep on it, wakes, pads the
/// place, and the later frame reaches the consumer whole.
#[test]
fn a_buffer_dropped_unsent_elsewhere_releases_the_frames_behind_it() {
    model(|| {
        let r = ring(64);
        let bell = Arc::new(Doorbell::new()); // the sending endpoint's
        let unsent = Arc::new(Unsent::new());
        let mut producer = Producer::default();
        let dropped = producer.reserve(&r.ctl, &r.words, 16).unwrap().unwrap();
        r.send(&mut producer, 1, 2, None); // complete, but behind `dropped`
        assert!(!published_at(&r.words, 0));
        let (u, b) = (unsent.clone(), bell.clone());
        let dropper = thread::spawn(move || {
            u.push(dropped.record);
            b.ring();
        });
        assert!(bell.wait(Instant::now(), far(), Duration::ZERO, false, || {
            unsent.pending()
        }));
        let mut records = Vec::new();
        unsent.take(&mut records);
        assert_eq!(records, [dropped.record]);
        assert!(producer.complete(&r.words, dropped.record, false));
        let mut consumer = Consumer::default();
        let taken = consumer.next(&r.ctl, &r.words).unwrap().unwrap();
        r.check(&taken, 1, 2);
        dropper.join().unwrap();
    });
}

/// A producer publishes a two-word frame and rings the consumer's doorbell
/// while the consumer waits on it, asleep or (`busy_poll`) spinning until
/// its deadline; either way the consumer sees the frame, whole.
fn a_waiting_receiver_sees_a_frame(busy_poll: bool) {
    model(move || {
        let r = ring(64);
        let bell = Arc::new(Doorbell::new());
        let (p, b) = (r.clone(), bell.clone());
        let producer = thread::spawn(move || {
            let mut producer = Producer::default();
            p.send(&mut producer, 7, 2, Some(&b));
        });
        let mut consumer = Consumer::default();
        // The endpoint's `has_more`: whether a record is published where
        // the consumer reads next.
        let read = consumer.read_pos();
        let woke = bell.wait(Instant::now(), far(), Duration::ZERO, busy_poll, || {
            published_at(&r.words, read)
        });
        assert!(woke);
        let taken = consumer.next(&r.ctl, &r.words).unwrap().unwrap();
        r.check(&taken, 7, 2);
        producer.join().unwrap();
    });
}

/// A consumer asleep on its doorbell is woken by the frame's publication.
#[test]
fn a_sleeping_receiver_is_woken_by_a_frame() {
    a_waiting_receiver_sees_a_frame(false);
}

/// A busy-polled consumer, which never sleeps, sees the frame as well.
#[test]
fn a_busy_polled_receiver_sees_a_frame() {
    a_waiting_receiver_sees_a_frame(true);
}

/// A full 64-byte ring, the producer's doorbell, and a consumer thread that
/// takes the first frame, releases it and rings.
fn full_ring_with_a_releasing_consumer()
-> (Arc<Ring>, Arc<Doorbell>, Producer, thread::JoinHandle<()>) {
    let r = ring(64);
    let bell = Arc::new(Doorbell::new()); // the producer's
    let mut producer = Producer::default();
    r.send(&mut producer, 1, 3, None); // 32 of 64 bytes
    // 24 more, and the header word after them (which publishing zeroes):
    // full.
    r.send(&mut producer, 2, 2, None);
    let (c, b) = (r.clone(), bell.clone());
    let consumer = thread::spawn(move || {
        let mut consumer = Consumer::default();
        let t = consumer.next(&c.ctl, &c.words).unwrap().unwrap();
        if consumer.release(&c.ctl, t.start, t.end) {
            b.ring();
        }
    });
    (r, bell, producer, consumer)
}

/// A producer asleep waiting for room is woken when the consumer releases.
#[test]
fn a_sleeping_sender_is_woken_by_a_release() {
    model(|| {
        let (r, bell, mut producer, consumer) = full_ring_with_a_releasing_consumer();
        let mut reserved = None;
        let woke = bell.wait(Instant::now(), far(), Duration::ZERO, false, || {
            reserved = producer.reserve(&r.ctl, &r.words, 16).unwrap();
            reserved.is_some()
        });
        assert!(woke && reserved.is_some());
        consumer.join().unwrap();
    });
}

/// The endpoint's `lend`: a reservation that finds no room waits for
/// `head` to move from the value that reservation read
/// (`Producer::head_seen`), not from a value read before it, and no
/// release made in between is missed.
#[test]
fn a_sender_waiting_on_the_head_it_saw_misses_no_release() {
    model(|| {
        let (r, bell, mut producer, consumer) = full_ring_with_a_releasing_consumer();
        loop {
            if producer.reserve(&r.ctl, &r.words, 16).unwrap().is_some() {
                break;
            }
            let seen = producer.head_seen();
            assert!(bell.wait(Instant::now(), far(), Duration::ZERO, false, || {
                r.ctl.head() != seen
            }));
        }
        consumer.join().unwrap();
    });
}

/// Two ringers and one sleeper: every ring is seen (the sleeper wakes for
/// the second change even if it slept after the first).
#[test]
fn the_doorbell_loses_no_wake_up_between_two_ringers() {
    model(|| {
        let bell = Arc::new(Doorbell::new());
        let count = Arc::new(AtomicU64::new(0));
        let ringers: Vec<_> = (0..2)
            .map(|_| {
                let (b, c) = (bell.clone(), count.clone());
                thread::spawn(move || {
                    c.fetch_add(1, Ordering::Relaxed);
                    b.ring();
                })
            })
            .collect();
        loop {
            let seen = count.load(Ordering::Relaxed);
            if seen == 2 {
                break;
            }
            assert!(bell.wait(Instant::now(), far(), Duration::ZERO, false, || {
                count.load(Ordering::Relaxed) != seen
            }));
        }
        for r in ringers {
            r.join().unwrap();
        }
    });
}

/// Two connectors post through one connect slot (so it is reused) while
/// the owner sleeps on its doorbell and scans only when `posted` moved:
/// each name arrives exactly once and intact, and no post is missed.
#[test]
fn connect_slots_deliver_every_post_once() {
    use laggard::sync::AtomicU32;
    use laggard_shm::loom_api::{claim, free, is_ready, post, posted};

    struct Mailbox {
        state: AtomicU32,
        pid: AtomicU32,
        name: AtomicU64,
        posted: AtomicU32,
        bell: Doorbell,
    }
    model(|| {
        let mb = Arc::new(Mailbox {
            state: AtomicU32::new(0),
            pid: AtomicU32::new(0),
            name: AtomicU64::new(0),
            posted: AtomicU32::new(0),
            bell: Doorbell::new(),
        });
        let connectors: Vec<_> = (1..=2u64)
            .map(|n| {
                let mb = mb.clone();
                thread::spawn(move || {
                    while claim([&mb.state]).is_none() {
                        thread::yield_now();
                    }
                    mb.pid.store(n as u32, Ordering::Relaxed);
                    mb.name.store(n * 11, Ordering::Relaxed);
                    post(&mb.state, &mb.posted);
                    mb.bell.ring();
                })
            })
            .collect();
        let mut scanned = 0;
        let mut got = Vec::new();
        while got.len() < 2 {
            let seen = posted(&mb.posted);
            if seen == scanned {
                assert!(
                    mb.bell
                        .wait(Instant::now(), far(), Duration::ZERO, false, || {
                            posted(&mb.posted) != scanned
                        })
                );
                continue;
            }
            if is_ready(&mb.state) {
                got.push(mb.name.load(Ordering::Relaxed));
                free(&mb.state, &mb.pid);
            } else {
                scanned = seen;
            }
        }
        got.sort();
        assert_eq!(got, [11, 22]);
        for c in connectors {
            c.join().unwrap();
        }
    });
}
