//! Waking a sleeping endpoint from another process: a futex word that
//! every event bumps.
//!
//! Each endpoint has one doorbell in its mailbox segment. Whoever gives it
//! something to do (publishes a frame to it, releases room it waits for,
//! asks to connect, closes a connection) changes the shared state first and
//! then rings. The endpoint spins on its condition briefly, then sleeps on
//! the futex.
//!
//! No lost wake-ups: the sleeper announces itself (`sleepers`), fences, and
//! re-checks its condition; the ringer changes the state, fences, and then
//! reads `sleepers`. The two SeqCst fences make sure at least one side sees
//! the other (store-buffering). If the ringer sees a sleeper it bumps `seq`
//! and wakes it; the sleeper's `futex_wait` compares `seq` with the value
//! read before its re-check, so a bump that lands before it sleeps makes
//! the wait return at once.

use std::time::{Duration, Instant};

use laggard::sync::{AtomicU32, Ordering, fence};

/// The shared words, on one cache line of the mailbox.
#[repr(C)]
pub struct Doorbell {
    seq: AtomicU32,
    sleepers: AtomicU32,
    /// The loom stand-in for the kernel's futex queue.
    #[cfg(laggard_loom)]
    park: (laggard::sync::Mutex<()>, laggard::sync::Condvar),
}

#[cfg(laggard_loom)]
impl Default for Doorbell {
    fn default() -> Self {
        Self::new()
    }
}

impl Doorbell {
    /// A fresh doorbell (loom models; in a segment it starts zeroed).
    #[cfg(laggard_loom)]
    pub fn new() -> Self {
        Doorbell {
            seq: AtomicU32::new(0),
            sleepers: AtomicU32::new(0),
            park: (laggard::sync::Mutex::new(()), laggard::sync::Condvar::new()),
        }
    }

    /// Wakes the owner if it sleeps. Call after changing what it waits on.
    pub fn ring(&self) {
        // SeqCst: the store-buffering pair of the fence in `wait`; either
        // we see its `sleepers` or it sees our change.
        fence(Ordering::SeqCst);
        if self.sleepers.load(Ordering::Relaxed) != 0 {
            // Release: the waiter's futex compare reads this bump.
            self.seq.fetch_add(1, Ordering::Release);
            self.wake();
        }
    }

    /// Waits until `ready()` holds or `until` passes: spins (and yields)
    /// for up to `spin`, then sleeps on the futex unless `busy_poll`, in
    /// which case it spins to the end. Returns `ready()`'s last answer.
    ///
    /// `started` is the caller's latest reading of the clock, which the
    /// spin is timed from: the caller has just read it to check its own
    /// deadline, and on a busy-polled connection a clock read costs about
    /// as much as the rest of a check, so the first 15 checks go without.
    pub fn wait(
        &self,
        started: Instant,
        until: Instant,
        spin: Duration,
        busy_poll: bool,
        mut ready: impl FnMut() -> bool,
    ) -> bool {
        let mut rounds = 0u32;
        loop {
            if ready() {
                return true;
            }
            // Reading the clock costs more than a check; do it every 16th.
            if cfg!(laggard_loom) || rounds % 16 == 15 {
                let now = Instant::now();
                if now >= until {
                    return false;
                }
                if !busy_poll && now - started >= spin {
                    break;
                }
            }
            rounds = rounds.wrapping_add(1);
            if cfg!(laggard_loom) || rounds % 1024 == 0 {
                laggard::sync::thread::yield_now();
            } else {
                std::hint::spin_loop();
            }
        }
        // Sleep until rung; a wake-up that finds `ready()` still false
        // (another event, or a stale `seen`) sleeps again.
        loop {
            // Acquire: pairs with the Release bump in `ring`.
            let seen = self.seq.load(Ordering::Acquire);
            self.sleepers.fetch_add(1, Ordering::Relaxed);
            // SeqCst: pairs with the fence in `ring` (see the module docs).
            fence(Ordering::SeqCst);
            let done = if ready() {
                Some(true)
            } else {
                let now = Instant::now();
                if now >= until {
                    Some(false)
                } else {
                    self.sleep(seen, until - now);
                    None
                }
            };
            self.sleepers.fetch_sub(1, Ordering::Relaxed);
            if let Some(done) = done {
                return done;
            }
        }
    }

    #[cfg(not(laggard_loom))]
    fn sleep(&self, seen: u32, timeout: Duration) {
        use rustix::thread::futex;
        let timeout = futex::Timespec {
            tv_sec: timeout.as_secs().min(i64::MAX as u64) as i64,
            tv_nsec: i64::from(timeout.subsec_nanos()),
        };
        // Not FUTEX_PRIVATE: the word is shared between processes. Every
        // outcome (woken, value changed, timed out, interrupted) sends the
        // caller back to check its condition.
        let _ = futex::wait(&self.seq, futex::Flags::empty(), seen, Some(&timeout));
    }

    #[cfg(not(laggard_loom))]
    fn wake(&self) {
        use rustix::thread::futex;
        let _ = futex::wake(&self.seq, futex::Flags::empty(), u32::MAX);
    }

    /// The futex model: compare and sleep atomically under the queue lock;
    /// no timeout, so a lost wake-up is a deadlock loom reports.
    #[cfg(laggard_loom)]
    fn sleep(&self, seen: u32, _timeout: Duration) {
        let guard = laggard::sync::lock(&self.park.0);
        if self.seq.load(Ordering::SeqCst) == seen {
            drop(self.park.1.wait(guard));
        }
    }

    #[cfg(laggard_loom)]
    fn wake(&self) {
        let _guard = laggard::sync::lock(&self.park.0);
        self.park.1.notify_all();
    }
}
