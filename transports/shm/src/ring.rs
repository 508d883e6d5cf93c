//! The single-producer, single-consumer byte ring that carries one
//! direction of a connection.
//!
//! Positions are byte counters that only grow (`u64`, so they never wrap in
//! practice); a position's place in the data region is `pos % cap`. The
//! producer owns `tail` (everything before it is published), the consumer
//! owns `head` (everything before it is released and may be overwritten).
//!
//! Records are 8-byte aligned: an 8-byte header word (`kind << 32 | len`)
//! followed by `len` payload bytes padded to 8. A frame never wraps: when
//! it does not fit before the end of the region, a pad record fills the
//! rest and the frame starts at the beginning. A lent buffer that is
//! dropped unsent turns into a pad record of the same size (the endpoint
//! completes it as such: see `unsent`).
//!
//! Frames may be released out of order (a received frame is an owned value
//! that can be dropped anywhere); `head` advances over the longest released
//! prefix. The producer may have several buffers lent at once; they are
//! published in the order they were lent.
//!
//! Everything the consumer reads from the shared words is checked: a peer
//! that writes garbage gets its connection closed, never an out-of-bounds
//! access. The data region is accessed as `AtomicU64` words here (headers);
//! payload bytes are written and read through the lent buffer and the
//! received frame, ordered by the same `tail`/`head` publication.

use std::collections::{BTreeMap, VecDeque};

use laggard::sync::{AtomicU64, Ordering};

/// Size of a record header.
pub const HEADER: u64 = 8;
/// A record holding a frame.
const KIND_FRAME: u64 = 1;
/// A record to skip: the filler before a wrap, or a buffer dropped unsent.
const KIND_PAD: u64 = 2;
/// A record holding a frame whose tail lies in the sender's stash: its
/// last 16 bytes say where (the endpoint reads and checks them).
const KIND_STASHED: u64 = 3;

/// The largest frame a ring of `cap` bytes carries: at most half of it, so
/// a frame always fits once the ring is empty, wherever the wrap falls.
pub fn max_frame(cap: u64) -> u64 {
    (cap / 2 - HEADER).min(u64::from(u32::MAX))
}

/// How far into the ring the producer goes before it checks whether it
/// can start over at the beginning.
fn recycle_after(cap: u64) -> u64 {
    (cap / 4).min(64 << 10)
}

fn padded(len: u64) -> u64 {
    len.div_ceil(8) * 8
}

fn header(kind: u64, len: u64) -> u64 {
    kind << 32 | len
}

/// The two shared words of one ring, each on its own cache line because
/// different processes write them.
#[repr(C)]
pub struct RingCtl {
    tail: AtomicU64,
    _pad_tail: [u8; 120],
    head: AtomicU64,
    _pad_head: [u8; 120],
}

impl RingCtl {
    /// A ring's words outside a segment, with the given positions (loom
    /// models and the fuzz target; in a segment they start zeroed).
    pub fn with(tail: u64, head: u64) -> Self {
        RingCtl {
            tail: AtomicU64::new(tail),
            _pad_tail: [0; 120],
            head: AtomicU64::new(head),
            _pad_head: [0; 120],
        }
    }

    /// The published position (for a doorbell predicate).
    pub fn tail(&self) -> u64 {
        // Acquire: pairs with the producer's Release store in `publish`.
        self.tail.load(Ordering::Acquire)
    }

    /// The released position (for a doorbell predicate).
    pub fn head(&self) -> u64 {
        // Acquire: pairs with the consumer's Release store in `release`.
        self.head.load(Ordering::Acquire)
    }
}

/// The peer broke the ring's rules; the connection must be dropped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Corrupt(pub String);

/// A region of `words.len() * 8` bytes seen as words; the capacity.
fn cap_of(words: &[AtomicU64]) -> u64 {
    words.len() as u64 * 8
}

/// Where position `pos` lies in a region of `cap` bytes: `pos % cap`,
/// taken with a mask (a division costs about as much as the rest of a
/// frame's bookkeeping). `cap` is a power of two: `ShmConfig` rounds it
/// up to one, and attaching checks it of every segment.
pub fn offset(pos: u64, cap: u64) -> u64 {
    debug_assert!(cap.is_power_of_two(), "ring capacity {cap}");
    pos & (cap - 1)
}

fn word(words: &[AtomicU64], pos: u64) -> &AtomicU64 {
    &words[(offset(pos, cap_of(words)) / 8) as usize]
}

/// A lent, not yet published, record.
#[derive(Debug)]
struct Lent {
    start: u64,
    end: u64,
    ready: bool,
}

/// The producer's private state.
#[derive(Debug, Default)]
pub struct Producer {
    reserved: u64,
    published: u64,
    /// The consumer's `head` when last read: the shared word (written by
    /// the other process) is only read again when this leaves too little
    /// room, which saves a cache-line transfer per frame.
    head_seen: u64,
    lent: VecDeque<Lent>,
}

/// Where a lent buffer lies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reservation {
    /// Start of the record (its key for [`Producer::complete`]).
    pub record: u64,
    /// Position of the payload; [`offset`] gives its place in the data region.
    pub payload: u64,
}

impl Producer {
    /// Reserves room for a `len`-byte frame, or `None` when the consumer
    /// has not released enough yet. `len` must be at most [`max_frame`].
    pub fn reserve(
        &mut self,
        ctl: &RingCtl,
        words: &[AtomicU64],
        len: u64,
    ) -> Result<Option<Reservation>, Corrupt> {
        let cap = cap_of(words);
        debug_assert!(len <= max_frame(cap));
        let need = HEADER + padded(len);
        let at = offset(self.reserved, cap);
        let mut filler = if at + need > cap { cap - at } else { 0 };
        // Far into the ring with this frame fitting before `at`: if the
        // reader has released the beginning of this lap, start over there,
        // so a connection that is not backed up keeps reusing its first
        // pages (hot in cache, and the rest of the ring is never touched).
        // The reader need not have caught up: a long row streamed in
        // pieces keeps one or two pieces unread while it flows.
        let recycle = filler == 0 && at >= recycle_after(cap) && need <= at;
        if recycle || self.reserved + filler + need - self.head_seen > cap {
            let head = ctl.head();
            if head > self.published || head < self.head_seen {
                return Err(Corrupt(format!(
                    "the reader released up to byte {head}, outside the {}..={} it may",
                    self.head_seen, self.published
                )));
            }
            self.head_seen = head;
            // `reserved - at` is where this lap began.
            if recycle && head >= self.reserved - at + need {
                filler = cap - at;
            }
            if self.reserved + filler + need - head > cap {
                return Ok(None);
            }
        }
        if filler > 0 {
            // Relaxed: published by the Release store of `tail`.
            word(words, self.reserved).store(header(KIND_PAD, filler - HEADER), Ordering::Relaxed);
        }
        let record = self.reserved + filler;
        // Relaxed: published by the Release store of `tail`.
        word(words, record).store(header(KIND_FRAME, len), Ordering::Relaxed);
        self.lent.push_back(Lent {
            start: self.reserved,
            end: record + need,
            ready: false,
        });
        self.reserved = record + need;
        Ok(Some(Reservation {
            record,
            payload: record + HEADER,
        }))
    }

    /// Marks the lent, unpublished record at `record` as a frame whose tail
    /// lies in the stash (published by [`complete`](Self::complete), as
    /// the frame is).
    pub fn mark_stashed(&self, words: &[AtomicU64], record: u64) {
        // Relaxed: published by the Release store of `tail` in `complete`;
        // only this producer writes the word of a record it has lent.
        let h = word(words, record).load(Ordering::Relaxed);
        word(words, record).store(header(KIND_STASHED, h & 0xffff_ffff), Ordering::Relaxed);
    }

    /// Completes the lent record at `record`: `sent` publishes its frame,
    /// otherwise it becomes a pad. Returns whether `tail` moved (so the
    /// consumer should be woken).
    pub fn complete(
        &mut self,
        ctl: &RingCtl,
        words: &[AtomicU64],
        record: u64,
        sent: bool,
    ) -> bool {
        let holds = |l: &Lent| l.start <= record && record < l.end;
        // Usually the only buffer lent, so the first: looked at before
        // searching the queue.
        let lent = match self.lent.front_mut() {
            Some(first) if holds(first) => first,
            _ => match self.lent.iter_mut().find(|l| holds(l)) {
                Some(lent) => lent,
                None => return false,
            },
        };
        if !sent {
            // Relaxed: published by the Release store of `tail`.
            word(words, record).store(
                header(KIND_PAD, lent.end - record - HEADER),
                Ordering::Relaxed,
            );
        }
        lent.ready = true;
        let before = self.published;
        while self.lent.front().is_some_and(|l| l.ready) {
            self.published = self.lent.pop_front().map_or(self.published, |l| l.end);
        }
        if self.published == before {
            return false;
        }
        // Release: pairs with the consumer's Acquire load in `next`; the
        // headers and payloads before `published` are visible with it.
        ctl.tail.store(self.published, Ordering::Release);
        true
    }

    /// The consumer's `head` as this producer last read it. After
    /// [`reserve`](Self::reserve) found no room, it is the value read then.
    pub fn head_seen(&self) -> u64 {
        self.head_seen
    }

    /// Bytes published and not yet released by the consumer.
    pub fn unread(&self, ctl: &RingCtl) -> u64 {
        self.published.saturating_sub(ctl.head())
    }

    /// Whether everything published was released.
    pub fn drained(&self, ctl: &RingCtl) -> bool {
        ctl.head() >= self.published
    }
}

/// A frame the consumer took from the ring.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Taken {
    /// Start of its record: the key for [`Consumer::release`].
    pub start: u64,
    /// End of its record.
    pub end: u64,
    /// Position of the payload.
    pub payload: u64,
    /// Payload length.
    pub len: u64,
    /// Whether the frame's tail lies in the sender's stash
    /// ([`Producer::mark_stashed`]).
    pub stashed: bool,
}

/// The consumer's private state.
#[derive(Debug, Default)]
pub struct Consumer {
    read: u64,
    head: u64,
    released: BTreeMap<u64, u64>,
}

impl Consumer {
    /// How far [`next`](Self::next) has read: everything before it was
    /// taken (frames) or released (pads). The producer published something
    /// not yet taken while [`RingCtl::tail`] differs from it.
    pub fn read_pos(&self) -> u64 {
        self.read
    }

    /// The next frame, skipping pads, or `None` if the ring is empty.
    pub fn next(&mut self, ctl: &RingCtl, words: &[AtomicU64]) -> Result<Option<Taken>, Corrupt> {
        let cap = cap_of(words);
        loop {
            let tail = ctl.tail();
            if tail == self.read {
                return Ok(None);
            }
            let avail = tail.wrapping_sub(self.read);
            if tail < self.read || avail > cap {
                return Err(Corrupt(format!(
                    "the writer published up to byte {tail}, but {} were read and the ring holds {cap}",
                    self.read
                )));
            }
            let at = offset(self.read, cap);
            // Relaxed: ordered by the Acquire load of `tail` above.
            let h = word(words, self.read).load(Ordering::Relaxed);
            let (kind, len) = (h >> 32, h & 0xffff_ffff);
            let size = HEADER + padded(len);
            if at + size > cap || size > avail {
                return Err(Corrupt(format!(
                    "a record of {len} bytes at offset {at} overruns the ring ({avail} bytes published, capacity {cap})"
                )));
            }
            let start = self.read;
            self.read += size;
            match kind {
                KIND_PAD => {
                    self.release(ctl, start, self.read);
                }
                KIND_FRAME | KIND_STASHED => {
                    return Ok(Some(Taken {
                        start,
                        end: self.read,
                        payload: start + HEADER,
                        len,
                        stashed: kind == KIND_STASHED,
                    }));
                }
                other => {
                    return Err(Corrupt(format!(
                        "unknown record kind {other} at offset {at}"
                    )));
                }
            }
        }
    }

    /// Releases a taken record; returns whether `head` moved (so the
    /// producer should be woken).
    pub fn release(&mut self, ctl: &RingCtl, start: u64, end: u64) -> bool {
        if start != self.head {
            self.released.insert(start, end);
            return false;
        }
        self.head = end;
        while let Some(next) = self.released.remove(&self.head) {
            self.head = next;
        }
        // Release: pairs with the producer's Acquire load in `reserve` and
        // `drained`; our reads of the released bytes happen before it
        // overwrites them.
        ctl.head.store(self.head, Ordering::Release);
        true
    }
}

#[cfg(all(test, not(laggard_loom)))]
mod tests {
    use super::*;

    /// A reader that keeps up: the writer starts over at the beginning
    /// instead of walking the whole ring, so only its first pages are used.
    #[test]
    fn a_ring_that_keeps_up_reuses_its_first_pages() {
        let cap = 1u64 << 20;
        let ctl = RingCtl::with(0, 0);
        let words: Vec<AtomicU64> = (0..cap / 8).map(|_| AtomicU64::new(0)).collect();
        let (mut producer, mut consumer) = (Producer::default(), Consumer::default());
        let mut furthest = 0;
        for n in 0..10_000u64 {
            let r = producer.reserve(&ctl, &words, 100).unwrap().unwrap();
            words[((r.payload % cap) / 8) as usize].store(n, Ordering::Relaxed);
            assert!(producer.complete(&ctl, &words, r.record, true));
            let t = consumer.next(&ctl, &words).unwrap().unwrap();
            assert_eq!(
                words[((t.payload % cap) / 8) as usize].load(Ordering::Relaxed),
                n
            );
            consumer.release(&ctl, t.start, t.end);
            furthest = furthest.max(t.end % cap);
        }
        assert!(
            furthest <= recycle_after(cap) + 112,
            "used {furthest} bytes"
        );
        assert!(consumer.next(&ctl, &words).unwrap().is_none());
    }

    /// A reader one frame behind (a row streamed in pieces: the reader
    /// copies one while the writer writes the next) still lets the writer
    /// start over at the beginning once the first frames are released.
    #[test]
    fn a_ring_streaming_one_frame_ahead_reuses_its_first_pages() {
        let cap = 1u64 << 20;
        let len = 100 << 10;
        let ctl = RingCtl::with(0, 0);
        let words: Vec<AtomicU64> = (0..cap / 8).map(|_| AtomicU64::new(0)).collect();
        let (mut producer, mut consumer) = (Producer::default(), Consumer::default());
        let mut unread = std::collections::VecDeque::new();
        let mut furthest = 0;
        for _ in 0..1000 {
            let r = producer.reserve(&ctl, &words, len).unwrap().unwrap();
            producer.complete(&ctl, &words, r.record, true);
            unread.push_back(consumer.next(&ctl, &words).unwrap().unwrap());
            if unread.len() == 2 {
                let t = unread.pop_front().unwrap();
                consumer.release(&ctl, t.start, t.end);
                furthest = furthest.max(t.end % cap);
            }
        }
        assert!(furthest <= 3 * (len + 8), "used {furthest} bytes");
    }

    /// A reader that falls behind: the writer goes on into the rest of the
    /// ring (it never waits for room it could use).
    #[test]
    fn a_backed_up_ring_uses_all_of_it() {
        let cap = 1u64 << 16;
        let ctl = RingCtl::with(0, 0);
        let words: Vec<AtomicU64> = (0..cap / 8).map(|_| AtomicU64::new(0)).collect();
        let mut producer = Producer::default();
        let mut sent = 0;
        while let Some(r) = producer.reserve(&ctl, &words, 1000).unwrap() {
            producer.complete(&ctl, &words, r.record, true);
            sent += 1;
        }
        assert_eq!(sent, cap / 1008, "frames until full");
    }
}
