//! The one place that chooses between `std` and `loom` primitives.
//!
//! Every concurrent structure in the crate imports its atomics, locks and
//! spin hints from here, so building with `RUSTFLAGS="--cfg laggard_loom"`
//! swaps all of them for loom's model-checked versions at once.
//!
//! The module is public (and hidden from the docs) only so that laggard's
//! own transport crates build their wait/notify structures on the same
//! switch; it is not part of the stable API.

#[cfg(not(laggard_loom))]
pub use std::sync::atomic::{AtomicPtr, AtomicU32, AtomicU64, AtomicUsize, Ordering, fence};
#[cfg(not(laggard_loom))]
pub use std::sync::{Arc, Condvar, Mutex, MutexGuard};

/// A cell whose accesses loom tracks (it reports any two that race);
/// std's `UnsafeCell` with the same closure interface otherwise.
#[cfg(laggard_loom)]
pub(crate) use loom::cell::UnsafeCell;
#[cfg(laggard_loom)]
pub use loom::sync::atomic::{AtomicPtr, AtomicU32, AtomicU64, AtomicUsize, Ordering, fence};
#[cfg(laggard_loom)]
pub use loom::sync::{Arc, Condvar, Mutex, MutexGuard};
/// Runs a loom model (only under `laggard_loom`).
#[cfg(laggard_loom)]
pub use loom::{model, thread};
/// Threads: std's, or loom's under `laggard_loom`.
#[cfg(not(laggard_loom))]
pub use std::thread;

/// Exponential backoff for the short spin-waits in this crate: a few rounds
/// of `spin_loop` hints, then yielding the time slice so a waiting thread
/// never burns a core while the thread it waits for is descheduled.
#[derive(Debug, Default)]
pub struct Backoff {
    step: u32,
}

impl Backoff {
    /// After this many doublings the backoff yields instead of spinning.
    const SPIN_LIMIT: u32 = 6;

    pub fn new() -> Self {
        Backoff { step: 0 }
    }

    /// Waits a little longer than the previous call did.
    #[inline]
    pub fn snooze(&mut self) {
        #[cfg(laggard_loom)]
        {
            // Under loom every spin is a scheduling point; one is enough.
            loom::thread::yield_now();
        }
        #[cfg(not(laggard_loom))]
        {
            if self.step <= Self::SPIN_LIMIT {
                for _ in 0..(1u32 << self.step) {
                    std::hint::spin_loop();
                }
            } else {
                std::thread::yield_now();
            }
        }
        self.step = self.step.saturating_add(1);
    }

    /// True once the backoff has stopped spinning and started yielding:
    /// the point where a waiter should consider parking.
    ///
    /// Under loom it is true from the start: spinning is only an
    /// optimisation, and loom's yields would let the awaited thread finish
    /// first, hiding the parking path from the model checker.
    pub fn is_completed(&self) -> bool {
        cfg!(laggard_loom) || self.step > Self::SPIN_LIMIT
    }
}

/// `std::cell::UnsafeCell` behind the interface of loom's: raw pointers are
/// handed to a closure, so loom builds can check every access for races.
#[cfg(not(laggard_loom))]
#[derive(Debug)]
pub(crate) struct UnsafeCell<T>(std::cell::UnsafeCell<T>);

#[cfg(not(laggard_loom))]
impl<T> UnsafeCell<T> {
    pub(crate) fn new(value: T) -> Self {
        UnsafeCell(std::cell::UnsafeCell::new(value))
    }

    /// Calls `f` with a pointer for reading the value.
    #[inline]
    pub(crate) fn with<R>(&self, f: impl FnOnce(*const T) -> R) -> R {
        f(self.0.get())
    }

    /// Calls `f` with a pointer for writing the value.
    #[inline]
    pub(crate) fn with_mut<R>(&self, f: impl FnOnce(*mut T) -> R) -> R {
        f(self.0.get())
    }
}

/// Pads and aligns a value to 128 bytes (two cache lines, because x86_64
/// prefetches adjacent lines in pairs), so that an independently written hot
/// atomic does not share a line with its neighbours.
#[derive(Debug, Default)]
#[repr(align(128))]
pub(crate) struct CachePadded<T>(pub(crate) T);

impl<T> std::ops::Deref for CachePadded<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.0
    }
}

/// Locks `m`, ignoring poisoning: every critical section in laggard leaves
/// its state consistent before anything that could panic, so a poisoned
/// lock is still usable.
pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Waits on `cv` until notified or `deadline`; the flag is false once the
/// deadline has passed (without waiting).
pub fn wait_until<'a, T>(
    cv: &Condvar,
    guard: MutexGuard<'a, T>,
    deadline: std::time::Instant,
) -> (MutexGuard<'a, T>, bool) {
    let now = std::time::Instant::now();
    if now >= deadline {
        return (guard, false);
    }
    let (guard, _) = cv
        .wait_timeout(guard, deadline - now)
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    (guard, true)
}
