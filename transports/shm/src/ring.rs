//! The single-producer, single-consumer byte ring that carries one
//! direction of a connection.
//!
//! Positions are byte counters that only grow (`u64`, so they never wrap in
//! practice); a position's place in the data region is `pos % cap`. The
//! consumer owns `head` (everything before it is released and may be
//! overwritten); the producer publishes a record by storing its header.
//!
//! Records are 8-byte aligned: an 8-byte header word (`kind << 32 | len`)
//! followed by `len` payload bytes padded to 8. A frame never wraps: when
//! it does not fit before the end of the region, a pad record fills the
//! rest and the frame starts at the beginning. A lent buffer that is
//! dropped unsent turns into a pad record of the same size (the endpoint
//! completes it as such: see `unsent`).
//!
//! **The header is the publication.** A header word of zero means nothing
//! is published there yet. To publish a record, the producer first zeroes
//! the word just past it (where the next header will go), then stores the
//! record's header with Release. A consumer that acquired a header therefore
//! finds, at the next record's place, either that zero or a header stored
//! later: never a stale word of an earlier lap. So the consumer polls the
//! word it will read next, and a frame costs it one cache-line transfer
//! from the producer's core, not two (a separate `tail` word, then the
//! record it points past). The producer keeps the word past every record
//! free for that zero: a record is reserved only when the eight bytes after
//! it were released too.
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
//! received frame, ordered by the same publication (headers) and release
//! (`head`).

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

/// The shared word of one ring the consumer writes, on cache lines of its
/// own (the producer writes the data region).
#[repr(C)]
pub struct RingCtl {
    head: AtomicU64,
    _pad: [u8; 248],
}

impl RingCtl {
    /// A ring's word outside a segment, with the given position (loom
    /// models and the fuzz target; in a segment it starts zeroed).
    pub fn with(head: u64) -> Self {
        RingCtl {
            head: AtomicU64::new(head),
            _pad: [0; 248],
        }
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

/// Whether a record is published at `pos`, where the consumer will read
/// next (for a doorbell predicate: [`Consumer::next`] reads it again with
/// the ordering that makes the record's bytes visible).
pub fn published_at(words: &[AtomicU64], pos: u64) -> bool {
    // Relaxed: a hint only; `next` acquires the same word.
    word(words, pos).load(Ordering::Relaxed) != 0
}

/// A lent, not yet published, record: a frame at `record`, after a pad
/// from `start` when the frame did not fit before the end of the region.
#[derive(Debug)]
struct Lent {
    start: u64,
    record: u64,
    end: u64,
    /// The frame's header word, stored when the record is published.
    header: u64,
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

/// Where [`Producer::place`] would put a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Placement {
    start: u64,
    record: u64,
    len: u64,
}

impl Placement {
    /// How far from the data region's start committing this frame writes
    /// (its record and the word after it; a pad before the record lies
    /// where the last record ended), at most `cap` (the word after a
    /// record that ends the region is its first).
    #[inline]
    pub fn reaches(&self, cap: u64) -> u64 {
        (offset(self.record, cap) + HEADER + padded(self.len) + HEADER).min(cap)
    }
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
    /// has not released enough yet (the frame's record, and the header word
    /// after it). `len` must be at most [`max_frame`].
    pub fn reserve(
        &mut self,
        ctl: &RingCtl,
        words: &[AtomicU64],
        len: u64,
    ) -> Result<Option<Reservation>, Corrupt> {
        Ok(self.place(ctl, words, len)?.map(|p| self.commit(p)))
    }

    /// Where [`reserve`](Self::reserve) would put a `len`-byte frame, without
    /// reserving it: [`commit`](Self::commit) does, if nothing was reserved
    /// meanwhile. The endpoint looks at where the record lies first (the
    /// file system's memory behind it, see `Segment::reserve`).
    #[inline]
    pub fn place(
        &mut self,
        ctl: &RingCtl,
        words: &[AtomicU64],
        len: u64,
    ) -> Result<Option<Placement>, Corrupt> {
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
        let recycle = filler == 0 && at >= recycle_after(cap) && need + HEADER <= at;
        // Room for the record and the word after it, which publishing the
        // record zeroes (see the module docs).
        let room = need + HEADER;
        if recycle || self.reserved + filler + room - self.head_seen > cap {
            let head = ctl.head();
            if head > self.published || head < self.head_seen {
                return Err(Corrupt(format!(
                    "the reader released up to byte {head}, outside the {}..={} it may",
                    self.head_seen, self.published
                )));
            }
            self.head_seen = head;
            // `reserved - at` is where this lap began.
            if recycle && head >= self.reserved - at + room {
                filler = cap - at;
            }
            if self.reserved + filler + room - head > cap {
                return Ok(None);
            }
        }
        Ok(Some(Placement {
            start: self.reserved,
            record: self.reserved + filler,
            len,
        }))
    }

    /// Reserves the frame [`place`](Self::place) placed.
    #[inline]
    pub fn commit(&mut self, placement: Placement) -> Reservation {
        let Placement { start, record, len } = placement;
        debug_assert_eq!(start, self.reserved, "reserved since it was placed");
        let need = HEADER + padded(len);
        self.lent.push_back(Lent {
            start,
            record,
            end: record + need,
            header: header(KIND_FRAME, len),
            ready: false,
        });
        self.reserved = record + need;
        Reservation {
            record,
            payload: record + HEADER,
        }
    }

    /// Marks the lent, unpublished record at `record` as a frame whose tail
    /// lies in the stash (published by [`complete`](Self::complete), as
    /// the frame is).
    pub fn mark_stashed(&mut self, record: u64) {
        if let Some(lent) = self.lent.iter_mut().find(|l| l.record == record) {
            lent.header = header(KIND_STASHED, lent.header & 0xffff_ffff);
        }
    }

    /// Completes the lent record at `record`: `sent` publishes its frame,
    /// otherwise it becomes a pad. Returns whether anything was published
    /// (so the consumer should be woken).
    pub fn complete(&mut self, words: &[AtomicU64], record: u64, sent: bool) -> bool {
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
            lent.header = header(KIND_PAD, lent.end - lent.record - HEADER);
        }
        lent.ready = true;
        let before = self.published;
        while self.lent.front().is_some_and(|l| l.ready) {
            let Some(l) = self.lent.pop_front() else {
                break;
            };
            // The next record's header word: zero until that record is
            // published (`reserve` kept it free). Relaxed: published by
            // the Release stores below.
            word(words, l.end).store(0, Ordering::Relaxed);
            // Release (both): pair with the consumer's Acquire load in
            // `next`; this record's payload and the zero after it are
            // visible with its header. The frame's goes first: the
            // consumer reaches it only through the pad before it.
            word(words, l.record).store(l.header, Ordering::Release);
            if l.record > l.start {
                word(words, l.start).store(
                    header(KIND_PAD, l.record - l.start - HEADER),
                    Ordering::Release,
                );
            }
            self.published = l.end;
        }
        self.published != before
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
    /// not yet taken while [`published_at`] this position.
    pub fn read_pos(&self) -> u64 {
        self.read
    }

    /// The next frame, skipping pads, or `None` if the ring is empty. Skips
    /// at most a ring's worth of pads per call (then says `None`): a
    /// corrupt ring can hold nothing but pads, all the way round.
    pub fn next(&mut self, ctl: &RingCtl, words: &[AtomicU64]) -> Result<Option<Taken>, Corrupt> {
        let cap = cap_of(words);
        let first = self.read;
        while self.read - first < cap {
            let at = offset(self.read, cap);
            // Acquire: pairs with the producer's Release store of the
            // header in `complete`; the record's payload, and the zero
            // after it, are visible with it.
            let h = word(words, self.read).load(Ordering::Acquire);
            if h == 0 {
                return Ok(None);
            }
            let (kind, len) = (h >> 32, h & 0xffff_ffff);
            let size = HEADER + padded(len);
            // The producer may write up to a ring's worth past what was
            // released, the record and the header word after it.
            let may = cap - (self.read - self.head);
            if at + size > cap || size + HEADER > may {
                return Err(Corrupt(format!(
                    "a record of {len} bytes at offset {at} overruns the ring (capacity {cap}, {} bytes of it unreleased)",
                    self.read - self.head
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
        Ok(None)
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
mod model {
    //! The ring against a sequential model: any interleaving of lending,
    //! completing (sent or dropped unsent, in any order), taking and
    //! releasing (in any order) delivers exactly the sent frames, in the
    //! order they were lent, with the bytes written into them, and never
    //! lets the producer overwrite a frame the consumer still holds.

    use std::collections::VecDeque;

    use proptest::prelude::*;

    use super::*;

    const CAP: u64 = 1024;

    #[derive(Debug, Clone)]
    enum Op {
        /// Lend a buffer of this many bytes (up to the largest frame).
        Lend(u64),
        /// Complete the lent buffer at this index (mod the number lent),
        /// sent or not.
        Complete(usize, bool),
        /// Take the next frame.
        Take,
        /// Release the taken frame at this index (mod the number taken).
        Release(usize),
    }

    fn op() -> impl Strategy<Value = Op> {
        let max = max_frame(CAP);
        prop_oneof![
            3 => prop_oneof![0..=64u64, 0..=max].prop_map(Op::Lend),
            3 => (any::<usize>(), prop::bool::weighted(0.8)).prop_map(|(i, s)| Op::Complete(i, s)),
            3 => Just(Op::Take),
            2 => any::<usize>().prop_map(Op::Release),
        ]
    }

    /// Frame `id`'s bytes: `id` in every whole word of its payload.
    fn fill(words: &[AtomicU64], payload: u64, len: u64, id: u64) {
        for w in 0..len / 8 {
            word(words, payload + w * 8).store(id, Ordering::Relaxed);
        }
    }

    fn holds(words: &[AtomicU64], t: &Taken, id: u64) -> bool {
        (0..t.len / 8).all(|w| word(words, t.payload + w * 8).load(Ordering::Relaxed) == id)
    }

    struct Rig {
        ctl: RingCtl,
        words: Vec<AtomicU64>,
        producer: Producer,
        consumer: Consumer,
        next_id: u64,
        /// Lent and not yet completed: (id, record, len).
        lent: Vec<(u64, u64, u64)>,
        /// Every lent buffer in lend order, with its completion (if any).
        order: VecDeque<(u64, u64, Option<bool>)>,
        /// Sent frames published and not yet taken, in order: (id, len).
        published: VecDeque<(u64, u64)>,
        /// Taken and not yet released: (id, frame).
        taken: Vec<(u64, Taken)>,
        /// Whether the consumer found nothing more since the last
        /// publication (so it has also skipped, and released, every pad).
        caught_up: bool,
    }

    impl Rig {
        fn new() -> Self {
            Rig {
                ctl: RingCtl::with(0),
                words: (0..CAP / 8).map(|_| AtomicU64::new(0)).collect(),
                producer: Producer::default(),
                consumer: Consumer::default(),
                next_id: 1,
                lent: Vec::new(),
                order: VecDeque::new(),
                published: VecDeque::new(),
                taken: Vec::new(),
                caught_up: true,
            }
        }

        fn step(&mut self, op: Op) -> Result<(), TestCaseError> {
            match op {
                Op::Lend(len) => {
                    let drained = self.order.is_empty()
                        && self.published.is_empty()
                        && self.taken.is_empty()
                        && self.caught_up;
                    let r = self
                        .producer
                        .reserve(&self.ctl, &self.words, len)
                        .map_err(|e| TestCaseError::fail(format!("{e:?}")))?;
                    match r {
                        Some(r) => {
                            let id = self.next_id;
                            self.next_id += 1;
                            fill(&self.words, r.payload, len, id);
                            self.lent.push((id, r.record, len));
                            self.order.push_back((id, len, None));
                        }
                        // An empty ring takes any frame up to the largest.
                        None => prop_assert!(!drained, "an empty ring refused {} bytes", len),
                    }
                }
                Op::Complete(i, sent) if !self.lent.is_empty() => {
                    let (id, record, _) = self.lent.swap_remove(i % self.lent.len());
                    let moved = self.producer.complete(&self.words, record, sent);
                    if let Some(entry) = self.order.iter_mut().find(|e| e.0 == id) {
                        entry.2 = Some(sent);
                    }
                    let mut published_any = false;
                    while let Some(&(id, len, Some(sent))) = self.order.front() {
                        self.order.pop_front();
                        published_any = true;
                        if sent {
                            self.published.push_back((id, len));
                        }
                    }
                    prop_assert_eq!(moved, published_any);
                    self.caught_up &= !published_any;
                }
                Op::Complete(..) => {}
                Op::Take => {
                    let t = self
                        .consumer
                        .next(&self.ctl, &self.words)
                        .map_err(|e| TestCaseError::fail(format!("{e:?}")))?;
                    match (t, self.published.pop_front()) {
                        (None, None) => self.caught_up = true,
                        (Some(t), Some((id, len))) => {
                            prop_assert_eq!(t.len, len, "frame {} has the wrong length", id);
                            prop_assert!(
                                holds(&self.words, &t, id),
                                "frame {} is not what was written",
                                id
                            );
                            prop_assert!(!t.stashed);
                            self.taken.push((id, t));
                        }
                        (t, expected) => {
                            prop_assert!(false, "took {:?}, expected frame {:?}", t, expected);
                        }
                    }
                }
                Op::Release(i) if !self.taken.is_empty() => {
                    let (id, t) = self.taken.swap_remove(i % self.taken.len());
                    // Still intact: the producer wrote nothing over it.
                    prop_assert!(
                        holds(&self.words, &t, id),
                        "frame {} was overwritten while held",
                        id
                    );
                    self.consumer.release(&self.ctl, t.start, t.end);
                }
                Op::Release(_) => {}
            }
            // Nothing held was overwritten by a later lend.
            for (id, t) in &self.taken {
                prop_assert!(
                    holds(&self.words, t, *id),
                    "frame {} was overwritten while held",
                    id
                );
            }
            Ok(())
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn the_ring_delivers_what_was_sent_in_lend_order(ops in prop::collection::vec(op(), 1..300)) {
            let mut rig = Rig::new();
            for op in ops {
                rig.step(op)?;
            }
            // Everything still lent is sent, then all of it taken and
            // released: the ring ends empty and takes a largest frame.
            while !rig.lent.is_empty() {
                rig.step(Op::Complete(0, true))?;
            }
            while !rig.published.is_empty() {
                rig.step(Op::Take)?;
            }
            rig.step(Op::Take)?;
            while !rig.taken.is_empty() {
                rig.step(Op::Release(0))?;
            }
            rig.step(Op::Lend(max_frame(CAP)))?;
            prop_assert_eq!(rig.lent.len(), 1);
        }
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
        let ctl = RingCtl::with(0);
        let words: Vec<AtomicU64> = (0..cap / 8).map(|_| AtomicU64::new(0)).collect();
        let (mut producer, mut consumer) = (Producer::default(), Consumer::default());
        let mut furthest = 0;
        for n in 0..10_000u64 {
            let r = producer.reserve(&ctl, &words, 100).unwrap().unwrap();
            words[((r.payload % cap) / 8) as usize].store(n, Ordering::Relaxed);
            assert!(producer.complete(&words, r.record, true));
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
        let ctl = RingCtl::with(0);
        let words: Vec<AtomicU64> = (0..cap / 8).map(|_| AtomicU64::new(0)).collect();
        let (mut producer, mut consumer) = (Producer::default(), Consumer::default());
        let mut unread = std::collections::VecDeque::new();
        let mut furthest = 0;
        for _ in 0..1000 {
            let r = producer.reserve(&ctl, &words, len).unwrap().unwrap();
            producer.complete(&words, r.record, true);
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
        let ctl = RingCtl::with(0);
        let words: Vec<AtomicU64> = (0..cap / 8).map(|_| AtomicU64::new(0)).collect();
        let mut producer = Producer::default();
        let mut sent = 0;
        while let Some(r) = producer.reserve(&ctl, &words, 1000).unwrap() {
            producer.complete(&words, r.record, true);
            sent += 1;
        }
        assert_eq!(sent, cap / 1008, "frames until full");
    }
}
