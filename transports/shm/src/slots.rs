//! The connect slots of a mailbox: how a connecting process hands the
//! owner the name of a new connection segment, lock-free.
//!
//! A slot's state goes FREE → CLAIMED (a connector's CAS) → READY (the
//! connector wrote the name, then published it) → FREE (the owner read
//! it). After setting READY the connector bumps the mailbox's `posted`
//! count; the owner scans the slots only when `posted` moved since its
//! last complete scan, so a quiet mailbox costs one load to check.
//!
//! The name itself is written and read by the callers between these steps;
//! the orderings here publish it.

use laggard::sync::{AtomicU32, Ordering};

/// Slot states.
pub const FREE: u32 = 0;
/// Slot states.
pub const CLAIMED: u32 = 1;
/// Slot states.
pub const READY: u32 = 2;

/// Connector: claims the first free slot of `states`, if any.
pub fn claim<'a>(states: impl IntoIterator<Item = &'a AtomicU32>) -> Option<usize> {
    states.into_iter().position(|state| {
        // Acquire: pairs with the owner's Release in `free`; its reads of
        // the slot happen before our writes.
        state
            .compare_exchange(FREE, CLAIMED, Ordering::Acquire, Ordering::Relaxed)
            .is_ok()
    })
}

/// Connector: publishes the claimed slot `state` (its name is written) and
/// counts the post.
pub fn post(state: &AtomicU32, posted: &AtomicU32) {
    // Release: pairs with the Acquire load in `is_ready`; the name
    // written before is visible to the owner that sees READY.
    state.store(READY, Ordering::Release);
    // Release: pairs with the Acquire load in `posted`; an owner that sees
    // the new count then sees READY in its scan.
    posted.fetch_add(1, Ordering::Release);
}

/// Owner: the mailbox's count of posts.
pub fn posted(posted: &AtomicU32) -> u32 {
    // Acquire: pairs with the Release increment in `post`.
    posted.load(Ordering::Acquire)
}

/// Owner: whether a slot holds a published name.
pub fn is_ready(state: &AtomicU32) -> bool {
    // Acquire: pairs with the Release store in `post`.
    state.load(Ordering::Acquire) == READY
}

/// Owner: frees a slot whose name it has read (or whose claimer died).
pub fn free(state: &AtomicU32, pid: &AtomicU32) {
    // Relaxed: published by the Release store below.
    pid.store(0, Ordering::Relaxed);
    // Release: pairs with the next claimer's Acquire CAS in `claim`.
    state.store(FREE, Ordering::Release);
}
