//! Buffers dropped unsent, handed from whichever thread dropped them to
//! the endpoint, which alone drives its rings' producers.
//!
//! The producer's state belongs to the endpoint (`lend` and `send` take
//! `&mut self`), so the common path (lend, fill, send) takes no lock. A
//! lent buffer may still be dropped unsent anywhere: it then records its
//! place here and rings the endpoint's doorbell, and the endpoint turns
//! the place into padding the next time it lends, sends, flushes or looks
//! for frames, so that later frames are not held back behind it.
//!
//! The places are kept in the endpoint's private memory, never in the
//! shared segment: a peer cannot forge one.

use laggard::sync::{AtomicU32, Mutex, Ordering, lock};

/// Ring positions of buffers dropped unsent and not yet padded.
#[derive(Debug)]
pub struct Unsent {
    /// 1 after each push, 0 again from the `take` that will see it.
    pending: AtomicU32,
    records: Mutex<Vec<u64>>,
}

impl Unsent {
    /// Nothing dropped yet.
    pub fn new() -> Self {
        Unsent {
            pending: AtomicU32::new(0),
            records: Mutex::new(Vec::new()),
        }
    }

    /// Records that the buffer lent at `record` will never be sent. The
    /// caller then rings the endpoint's doorbell.
    pub fn push(&self, record: u64) {
        lock(&self.records).push(record);
        // Release: pairs with the Acquire swap in `take`; a `take` that
        // sees the flag finds the record under the lock.
        self.pending.store(1, Ordering::Release);
    }

    /// Whether `take` may return something: a cheap check for a spinning
    /// endpoint. The doorbell's fences order it after a ring.
    pub fn pending(&self) -> bool {
        // Relaxed: only a hint; `take` synchronises.
        self.pending.load(Ordering::Relaxed) != 0
    }

    /// Appends the records pushed since the last `take` to `out`.
    pub fn take(&self, out: &mut Vec<u64>) {
        // Acquire: pairs with the Release store in `push`.
        if self.pending.swap(0, Ordering::Acquire) != 0 {
            out.append(&mut lock(&self.records));
        }
    }
}

impl Default for Unsent {
    fn default() -> Self {
        Self::new()
    }
}
