//! Bookkeeping of one connection direction's ring, with no verbs in it.
//!
//! The receiver owns a registered ring of `cap` bytes. The sender keeps a
//! mirror of it, a registered buffer of the same size: a lent buffer is the
//! mirror's bytes at some offset, and sending it is one RDMA WRITE WITH
//! IMMEDIATE of those bytes to the same offset of the receiver's ring. The
//! immediate value carries the offset (in 8-byte units); the completion
//! carries the length. Positions grow without bound; `pos % cap` is the
//! offset. A frame never wraps: one that would is placed at the ring's
//! start, and the bytes skipped belong to it.
//!
//! The receiver releases frames in any order; the released prefix (`head`)
//! and the count of released frames are the credit the sender reads back.

use std::collections::VecDeque;

/// Frames are placed at multiples of this.
pub(crate) const ALIGN: u64 = 8;

fn align(len: u64) -> u64 {
    len.div_ceil(ALIGN) * ALIGN
}

/// Where a frame of `size` (aligned) bytes goes in a ring of `cap` bytes
/// whose frames so far end at `tail`: at `tail`, or at the ring's start
/// if it would wrap.
fn placement(cap: u64, tail: u64, size: u64) -> u64 {
    let offset = tail % cap;
    if offset + size > cap {
        tail + (cap - offset)
    } else {
        tail
    }
}

/// Where a reserved frame goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Reservation {
    /// Offset in the ring (a multiple of [`ALIGN`]).
    pub offset: u64,
    /// The reservation's number, counting from 0 on this connection.
    pub seq: u64,
}

/// The sender's view: where the next frame goes and whether there is room.
#[derive(Debug)]
pub(crate) struct SendRing {
    cap: u64,
    tail: u64,
    head: u64,
    reserved: u64,
    released: u64,
    max_in_flight: u64,
}

impl SendRing {
    /// A ring of `cap` bytes (a power of two) at the receiver, which keeps
    /// room for `max_in_flight` unreleased frames.
    pub fn new(cap: u64, max_in_flight: u64) -> Self {
        debug_assert!(cap.is_power_of_two());
        SendRing {
            cap,
            tail: 0,
            head: 0,
            reserved: 0,
            released: 0,
            max_in_flight,
        }
    }

    /// The largest frame: half the ring, so one can always be placed once
    /// the ring is empty.
    pub fn max_frame(&self) -> u64 {
        self.cap / 2
    }

    /// The most frames the receiver keeps room for unreleased.
    pub fn max_in_flight(&self) -> u64 {
        self.max_in_flight
    }

    /// Reserves room for a frame of `len` bytes, if there is some now.
    pub fn reserve(&mut self, len: u64) -> Option<Reservation> {
        debug_assert!(len <= self.max_frame());
        if self.reserved - self.released >= self.max_in_flight {
            return None;
        }
        let size = align(len);
        let start = placement(self.cap, self.tail, size);
        if start + size - self.head > self.cap {
            return None;
        }
        self.tail = start + size;
        let r = Reservation {
            offset: start % self.cap,
            seq: self.reserved,
        };
        self.reserved += 1;
        Some(r)
    }

    /// Takes the receiver's credit: everything before `head` and `released`
    /// frames were released. Stale or impossible values are ignored (they
    /// only ever grow, up to what was sent).
    pub fn credit(&mut self, head: u64, released: u64) -> bool {
        let mut changed = false;
        if head > self.head && head <= self.tail {
            self.head = head;
            changed = true;
        }
        if released > self.released && released <= self.reserved {
            self.released = released;
            changed = true;
        }
        changed
    }

    /// Half the ring's bytes, or half the frames allowed in flight, are
    /// unreleased as far as the sender knows: time to ask for credit.
    pub fn half_used(&self) -> bool {
        (self.tail - self.head) * 2 > self.cap
            || (self.reserved - self.released) * 2 > self.max_in_flight
    }

    /// Every reserved frame was released.
    pub fn drained(&self) -> bool {
        self.released == self.reserved
    }
}

/// Why a frame the peer announced is impossible.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Violation(pub String);

/// The receiver's view: where frames are and what was released.
#[derive(Debug)]
pub(crate) struct RecvRing {
    cap: u64,
    tail: u64,
    head: u64,
    /// End positions of unreleased-prefix frames, and whether released.
    pending: VecDeque<(u64, bool)>,
    /// The id of `pending[0]`.
    first_id: u64,
    released: u64,
}

impl RecvRing {
    pub fn new(cap: u64) -> Self {
        RecvRing {
            cap,
            tail: 0,
            head: 0,
            pending: VecDeque::new(),
            first_id: 0,
            released: 0,
        }
    }

    /// Accounts for a frame of `len` bytes the peer wrote at `offset`;
    /// returns its id. Checks the frame lies inside the ring, fits the
    /// largest frame, and overwrites nothing unreleased.
    pub fn arrive(&mut self, offset: u64, len: u64) -> Result<u64, Violation> {
        if offset >= self.cap || offset % ALIGN != 0 {
            return Err(Violation(format!(
                "frame at offset {offset} of a {} byte ring",
                self.cap
            )));
        }
        if len > self.cap / 2 || offset + len > self.cap {
            return Err(Violation(format!(
                "frame of {len} bytes at offset {offset} does not fit the {} byte ring",
                self.cap
            )));
        }
        let skip = (offset + self.cap - self.tail % self.cap) % self.cap;
        let end = self.tail + skip + align(len);
        if end - self.head > self.cap {
            return Err(Violation(format!(
                "frame at offset {offset} overwrites {} unreleased bytes",
                end - self.head - self.cap
            )));
        }
        self.tail = end;
        self.pending.push_back((end, false));
        Ok(self.first_id + self.pending.len() as u64 - 1)
    }

    /// Releases frame `id`; returns the new credit (head, released frames)
    /// if the released prefix grew.
    pub fn release(&mut self, id: u64) -> Option<(u64, u64)> {
        let i = id.checked_sub(self.first_id)? as usize;
        match self.pending.get_mut(i) {
            Some(entry) if !entry.1 => entry.1 = true,
            _ => return None,
        }
        let mut grew = false;
        while let Some(&(end, true)) = self.pending.front() {
            self.pending.pop_front();
            self.first_id += 1;
            self.head = end;
            self.released += 1;
            grew = true;
        }
        grew.then_some((self.head, self.released))
    }

    /// The current credit.
    pub fn credit(&self) -> (u64, u64) {
        (self.head, self.released)
    }

    /// Whether the frames not yet in the released prefix could make the
    /// sender wait: a frame of the largest size (half the ring) would not
    /// fit after the last one arrived, as the sender places it
    /// ([`SendRing::reserve`]), or one more frame would exceed
    /// `max_frames` (what the sender may have unreleased). Once every
    /// frame that arrived is released, neither holds.
    pub fn crowded(&self, max_frames: u64) -> bool {
        let size = self.cap / 2;
        let start = placement(self.cap, self.tail, size);
        start + size - self.head > self.cap || self.pending.len() as u64 >= max_frames
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_frame_that_would_wrap_starts_over_at_zero() {
        let mut s = SendRing::new(64, 100);
        let mut r = RecvRing::new(64);
        let a = s.reserve(24).unwrap();
        let b = s.reserve(24).unwrap();
        assert_eq!((a.offset, b.offset), (0, 24));
        assert_eq!(
            s.reserve(24),
            None,
            "only 16 bytes left before the end, 0 after"
        );
        let (ia, ib) = (r.arrive(0, 24).unwrap(), r.arrive(24, 24).unwrap());
        assert_eq!(r.release(ib), None, "out of order: the prefix did not grow");
        let (head, released) = r.release(ia).unwrap();
        assert_eq!((head, released), (48, 2));
        assert!(s.credit(head, released));
        let c = s.reserve(24).unwrap();
        assert_eq!(c.offset, 0);
        assert_eq!(r.arrive(0, 24).unwrap(), 2);
        assert_eq!(
            r.release(2),
            Some((64 + 24, 3)),
            "the skipped tail belongs to the wrapped frame"
        );
    }

    #[test]
    fn impossible_frames_are_violations() {
        let mut r = RecvRing::new(64);
        assert!(r.arrive(64, 0).is_err());
        assert!(r.arrive(4, 8).is_err());
        assert!(r.arrive(0, 33).is_err());
        assert!(r.arrive(56, 16).is_err());
        r.arrive(0, 32).unwrap();
        r.arrive(32, 32).unwrap();
        let err = r.arrive(0, 8).unwrap_err();
        assert!(err.0.contains("overwrites"), "{err:?}");
    }

    #[test]
    fn in_flight_frames_are_bounded() {
        let mut s = SendRing::new(1 << 20, 2);
        s.reserve(0).unwrap();
        s.reserve(0).unwrap();
        assert_eq!(s.reserve(0), None);
        assert!(s.credit(0, 1));
        assert!(s.reserve(0).is_some());
    }

    #[test]
    fn a_kept_frame_crowds_the_ring_when_a_longest_frame_could_not_follow() {
        let mut r = RecvRing::new(64);
        let kept = r.arrive(0, 8).unwrap();
        assert!(!r.crowded(100), "32 bytes fit after it");
        let other = r.arrive(8, 32).unwrap();
        r.release(other);
        assert!(
            r.crowded(100),
            "a 32-byte frame would wrap to offset 0, where the kept one is"
        );
        r.release(kept);
        assert!(!r.crowded(100));
        let one = r.arrive(40, 8).unwrap();
        assert!(r.crowded(1), "one frame unreleased of one allowed");
        r.release(one);
        assert!(!r.crowded(1));
    }

    proptest! {
        /// A receiver that keeps random frames, and releases all it keeps
        /// whenever it is crowded, never makes the sender wait (for room or
        /// for frames) when the sender knows its credit.
        #[test]
        fn a_receiver_that_is_not_crowded_makes_no_sender_wait(
            frames in proptest::collection::vec((0u64..=512, any::<bool>()), 1..300),
        ) {
            let (cap, max_frames) = (1024, 8);
            let mut s = SendRing::new(cap, max_frames);
            let mut r = RecvRing::new(cap);
            let mut kept = Vec::new();
            for (len, keep) in frames {
                let res = s.reserve(len);
                prop_assert!(res.is_some(), "a {len}-byte frame waits");
                let id = r.arrive(res.unwrap().offset, len).unwrap();
                if keep {
                    kept.push(id);
                } else {
                    r.release(id);
                }
                if r.crowded(max_frames) {
                    for id in kept.drain(..) {
                        r.release(id);
                    }
                    prop_assert!(!r.crowded(max_frames), "crowded with nothing kept");
                }
                let (head, released) = r.credit();
                s.credit(head, released);
            }
        }

        /// A sender and receiver driven by random lengths and random
        /// release orders agree on every offset, never overlap unreleased
        /// frames, and the sender drains once everything is released.
        #[test]
        fn sender_and_receiver_agree(
            lens in proptest::collection::vec(0u64..=512, 1..200),
            order in proptest::collection::vec(any::<prop::sample::Index>(), 0..400),
        ) {
            let cap = 1024;
            let mut s = SendRing::new(cap, 8);
            let mut r = RecvRing::new(cap);
            let mut live: Vec<(u64, u64, u64)> = Vec::new(); // (id, offset, len)
            let mut order = order.into_iter();
            for len in lens {
                loop {
                    if let Some(res) = s.reserve(len) {
                        let id = r.arrive(res.offset, len).unwrap();
                        for &(_, o, l) in &live {
                            let disjoint = res.offset + len <= o || o + l <= res.offset;
                            prop_assert!(disjoint || len == 0 || l == 0, "overlap");
                        }
                        live.push((id, res.offset, len));
                        break;
                    }
                    prop_assert!(!live.is_empty(), "no room in an empty ring");
                    let pick = order.next().map(|i| i.index(live.len())).unwrap_or(0);
                    let (id, _, _) = live.swap_remove(pick);
                    if let Some((head, released)) = r.release(id) {
                        s.credit(head, released);
                    }
                }
            }
            for (id, _, _) in live.drain(..) {
                if let Some((head, released)) = r.release(id) {
                    s.credit(head, released);
                }
            }
            prop_assert!(s.drained());
        }
    }
}
