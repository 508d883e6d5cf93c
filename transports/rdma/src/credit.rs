//! The credit word's check, and when a sender reads its peer's credit;
//! no verbs in either.
//!
//! A sender fetches the receiver's credit word with an RDMA READ when it
//! needs room (see the protocol in `conn`). One READ is in flight at a
//! time. A READ that brought nothing new delays the next one, doubling
//! from 2 µs up to [`READ_BACKOFF_MAX`], so a sender waiting on a busy
//! receiver does not keep its device (or, under soft-RoCE, its CPU) busy
//! with READs; one that brought credit, or a torn one, lets the next go at
//! once. A torn READ is one that copied the word while its owner was
//! storing a new credit: [`credit_check`] tells it.

use std::time::{Duration, Instant};

/// The longest a sender goes between READs of the peer's credit when they
/// keep bringing nothing new.
pub(crate) const READ_BACKOFF_MAX: Duration = Duration::from_micros(100);

/// The pacing of one connection's READs of the peer's credit.
#[derive(Debug, Default)]
pub(crate) struct CreditRead {
    in_flight: bool,
    /// READs in a row that brought nothing new.
    fruitless: u32,
    /// Torn READs in a row.
    torn: u32,
    /// No READ before this.
    not_before: Option<Instant>,
    /// A READ was wanted before `not_before`.
    deferred: bool,
}

impl CreditRead {
    /// Whether a READ may be posted now; if so, it counts as in flight.
    pub fn start(&mut self, now: Instant) -> bool {
        if self.in_flight {
            return false;
        }
        if self.not_before.is_some_and(|t| now < t) {
            self.deferred = true;
            return false;
        }
        self.in_flight = true;
        self.deferred = false;
        true
    }

    /// The READ completed (successfully or not).
    pub fn landed(&mut self) {
        self.in_flight = false;
    }

    /// The READ brought a consistent credit; `grew` if it was news.
    pub fn done(&mut self, now: Instant, grew: bool) {
        self.torn = 0;
        if grew {
            self.fruitless = 0;
            self.not_before = None;
        } else {
            self.fruitless = (self.fruitless + 1).min(16);
            self.not_before = Some(now + backoff(self.fruitless));
        }
    }

    /// The READ raced the peer's stores: the next may go at once. Returns
    /// the torn READs in a row.
    pub fn torn(&mut self) -> u32 {
        self.torn += 1;
        self.not_before = None;
        self.torn
    }

    /// When a READ that was wanted but deferred is due.
    pub fn due(&self) -> Option<Instant> {
        if self.deferred && !self.in_flight {
            self.not_before
        } else {
            None
        }
    }
}

/// The check word stored after a credit's two words, `(head, released)`:
/// a READ that raced the stores sees a check that does not match the words
/// it got. `mix` (splitmix64's finaliser) is a bijection, so the check
/// differs whenever exactly one of the two words differs: a copy holding
/// one word of an older credit is always told. Words of three different
/// credits match only by coincidence.
pub(crate) fn credit_check(head: u64, released: u64) -> u64 {
    fn mix(mut z: u64) -> u64 {
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    const SALT: u64 = 0x6c61_6767_6172_6421;
    mix(mix(head ^ SALT) ^ released)
}

/// The pause after `fruitless` READs in a row brought nothing.
fn backoff(fruitless: u32) -> Duration {
    Duration::from_micros(1 << fruitless.min(7)).min(READ_BACKOFF_MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// A credit with one word from another credit never passes the
        /// check of either.
        #[test]
        fn a_copy_with_one_stale_word_fails_the_check(
            head in any::<u64>(),
            released in any::<u64>(),
            other in any::<u64>(),
        ) {
            prop_assume!(other != head && other != released);
            let (h, r) = (head, released);
            prop_assert_ne!(credit_check(other, r), credit_check(h, r));
            prop_assert_ne!(credit_check(h, other), credit_check(h, r));
        }
    }

    /// One whole READ: posted, landed, bringing news or not.
    fn read(c: &mut CreditRead, now: Instant, news: bool) {
        assert!(c.start(now), "a READ may go now");
        c.landed();
        c.done(now, news);
    }

    #[test]
    fn one_read_at_a_time() {
        let now = Instant::now();
        let mut c = CreditRead::default();
        assert!(c.start(now));
        assert!(!c.start(now), "a second READ while one is in flight");
        assert_eq!(
            c.due(),
            None,
            "nothing deferred: the READ in flight answers"
        );
        c.landed();
        c.done(now, true);
        assert!(c.start(now), "news lets the next READ go at once");
    }

    #[test]
    fn fruitless_reads_back_off_up_to_the_limit() {
        let mut c = CreditRead::default();
        let mut pauses = Vec::new();
        let mut now = Instant::now();
        for _ in 0..12 {
            read(&mut c, now, false);
            assert!(!c.start(now), "the next READ waits");
            let due = c.due().expect("a deferred READ has a due time");
            pauses.push(due - now);
            now = due;
        }
        let us: Vec<u128> = pauses.iter().map(|d| d.as_micros()).collect();
        assert_eq!(&us[..6], &[2, 4, 8, 16, 32, 64]);
        assert!(us[6..].iter().all(|&p| p == 100), "{us:?}");
        read(&mut c, now, true);
        assert!(c.start(now), "news ends the backoff");
    }

    #[test]
    fn a_torn_read_is_retried_at_once_and_counted() {
        let now = Instant::now();
        let mut c = CreditRead::default();
        read(&mut c, now, false);
        assert!(!c.start(now));
        assert_eq!(c.torn(), 1);
        assert!(c.start(now), "a torn READ does not wait");
        c.landed();
        assert_eq!(c.torn(), 2);
        read(&mut c, now, true);
        c.start(now);
        c.landed();
        assert_eq!(c.torn(), 1, "a consistent READ resets the count");
    }
}
