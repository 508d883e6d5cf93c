//! Registrations of held table rows ([`HeldRow`]), so that a pull response
//! is written by the device straight from the server's table.
//!
//! A row's memory is registered the first time it is sent and reused for
//! every later send of it: registration pins pages and costs a system call
//! (and, on hardware, a command to the device), far more than one send.
//! A registration is kept for as long as the row's owner (its table) can
//! be upgraded, which is as long as the row stays at its address; then it
//! is dropped at the next sweep, or replaced when the address comes back
//! with another owner.

use std::any::Any;
use std::collections::HashMap;
use std::sync::{Arc, Weak};

use laggard::transport::HeldRow;

use crate::verbs::{Device, ForeignMr, Gather};

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
    mr: Arc<ForeignMr>,
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
    pub fn gather(&mut self, dev: &Arc<Device>, row: &HeldRow) -> Option<(Gather, Arc<ForeignMr>)> {
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
                let mr = Arc::new(ForeignMr::register(dev, row.as_ptr(), row.len()).ok()?);
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
