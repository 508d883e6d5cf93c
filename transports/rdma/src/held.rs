//! Held table rows ([`HeldRow`]), so that a pull response is written by
//! the device straight from the server's table: their registrations, and
//! the log of posted writes that holds them until their completion.
//!
//! A row's memory is registered the first time it is sent and reused for
//! every later send of it: registration pins pages and costs a system call
//! (and, on hardware, a command to the device), far more than one send.
//! A registration is kept for as long as the row's owner (its table) can
//! be upgraded, which is as long as the row stays at its address; then it
//! is dropped at the next sweep, or replaced when the address comes back
//! with another owner.

use std::any::Any;
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Weak};

use laggard::transport::HeldRow;

use crate::verbs::{Device, Gather, Registration};

/// Sweeps for registrations of rows whose owner is gone start at this many
/// registrations (and at twice as many as the last sweep kept).
const FIRST_SWEEP: usize = 64;

/// Rows registered at most: beyond, rows not yet registered are copied.
/// Each registration takes a device resource and pins its pages; a table
/// with more wide rows than this sends those beyond it the way a transport
/// without this path would.
const MAX_REGIONS: usize = 1 << 16;

/// One registered row.
struct Region {
    len: usize,
    owner: Weak<dyn Any + Send + Sync>,
    mr: Arc<Registration>,
}

/// The rows an endpoint has registered, by address.
#[derive(Default)]
pub(crate) struct RowRegions {
    regions: HashMap<u64, Region>,
    next_sweep: usize,
}

impl RowRegions {
    /// How the device reads `row`, registering it with `dev` first if it
    /// is not yet: its gather entry and the registration (which a write of
    /// it must keep until its completion). `None` if it cannot be
    /// registered (the memlock limit is reached, say): the caller copies.
    pub fn gather(
        &mut self,
        dev: &Arc<Device>,
        row: &HeldRow,
    ) -> Option<(Gather, Arc<Registration>)> {
        let len = u32::try_from(row.len()).ok()?;
        let addr = row.as_ptr() as u64;
        let owner = row.owner();
        let known = self
            .regions
            .get(&addr)
            .filter(|r| r.len >= row.len() && r.owner.ptr_eq(&owner));
        let mr = match known {
            Some(region) => Arc::clone(&region.mr),
            None => {
                self.sweep();
                if self.regions.len() >= MAX_REGIONS && !self.regions.contains_key(&addr) {
                    return None;
                }
                let mr = Arc::new(
                    Registration::register(dev, row.as_ptr().cast_mut(), row.len(), 0).ok()?,
                );
                self.regions.insert(
                    addr,
                    Region {
                        len: row.len(),
                        owner,
                        mr: Arc::clone(&mr),
                    },
                );
                mr
            }
        };
        let lkey = mr.lkey();
        Some((Gather { addr, len, lkey }, mr))
    }

    /// Drops the registrations of rows whose owner is gone, once there are
    /// enough of them to look.
    fn sweep(&mut self) {
        if self.regions.len() < self.next_sweep.max(FIRST_SWEEP) {
            return;
        }
        self.regions.retain(|_, r| r.owner.strong_count() > 0);
        self.next_sweep = self.regions.len() * 2;
    }
}

/// A connection's frame writes, numbered as they are posted, and what each
/// write that reads held rows holds until its completion. Completions come
/// in order, so one for write `n` (successful or not) means that every
/// write up to `n` is done with its memory.
pub(crate) struct WriteLog<T> {
    posted: u64,
    held: VecDeque<(u64, T)>,
}

impl<T> Default for WriteLog<T> {
    fn default() -> Self {
        WriteLog {
            posted: 0,
            held: VecDeque::new(),
        }
    }
}

impl<T> WriteLog<T> {
    /// The number the next write posted gets.
    pub fn next(&self) -> u64 {
        self.posted + 1
    }

    /// The next write was posted; it holds `held`, if given, until done.
    pub fn posted(&mut self, held: Option<T>) {
        self.posted += 1;
        if let Some(h) = held {
            self.held.push_back((self.posted, h));
        }
    }

    /// Writes up to number `done` completed: drops what they held.
    pub fn done(&mut self, done: u64) {
        while self.held.front().is_some_and(|(n, _)| *n <= done) {
            self.held.pop_front();
        }
    }

    /// Whether a posted write still holds something.
    pub fn holding(&self) -> bool {
        !self.held.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::cell::RefCell;
    use std::rc::Rc;

    /// Records its number when dropped.
    struct Held(u64, Rc<RefCell<Vec<u64>>>);

    impl Drop for Held {
        fn drop(&mut self) {
            self.1.borrow_mut().push(self.0);
        }
    }

    proptest! {
        /// Against a model: a write's held rows are let go of exactly when
        /// a completion of it or of a later write arrives, never before,
        /// and once.
        #[test]
        fn held_rows_go_exactly_when_their_write_is_done(
            ops in proptest::collection::vec((any::<bool>(), any::<bool>(), 0u64..4), 1..200),
        ) {
            let dropped = Rc::new(RefCell::new(Vec::new()));
            let mut log = WriteLog::default();
            let mut completed = 0u64;
            let mut holding = Vec::new();
            for (post, held, ahead) in ops {
                if post {
                    let n = log.next();
                    log.posted(held.then(|| Held(n, Rc::clone(&dropped))));
                    if held {
                        holding.push(n);
                    }
                } else {
                    // Completions arrive in order, each for a posted write.
                    let posted = log.next() - 1;
                    completed = (completed + ahead).min(posted);
                    log.done(completed);
                    let (gone, kept): (Vec<u64>, Vec<u64>) =
                        holding.iter().partition(|&&n| n <= completed);
                    holding = kept;
                    let mut seen = dropped.borrow_mut();
                    let mut now: Vec<u64> = seen.drain(..).collect();
                    now.sort_unstable();
                    prop_assert_eq!(now, gone);
                }
                prop_assert_eq!(log.holding(), !holding.is_empty());
            }
        }
    }
}
