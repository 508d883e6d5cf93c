//! A connection's stash: registered memory where a worker keeps a long
//! pending push row until the server acknowledged it, and from which the
//! device gathers the row straight into the server's ring when the push
//! goes ([`Endpoint::send_stashed`](laggard::transport::Endpoint::send_stashed)),
//! so the row is not copied into the mirror ring first.

use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};

use laggard::transport::{StashMemory, StashPool};

use crate::verbs::{Gather, Mr};

/// Blocks start on cache lines, as the device reads them.
const ALIGN: u64 = 64;

/// One connection's registered stash and which parts of it are free.
pub(crate) struct StashRegion {
    mr: Mr,
    pool: Mutex<StashPool>,
}

impl StashRegion {
    /// The whole of `mr` as a stash.
    pub fn new(mr: Mr) -> Arc<Self> {
        let pool = StashPool::new(mr.len() as u64, ALIGN);
        Arc::new(StashRegion {
            mr,
            pool: Mutex::new(pool),
        })
    }

    /// A block of `len` bytes, if that many are free in one piece.
    pub fn take(self: &Arc<Self>, len: usize) -> Option<RdmaStash> {
        let off = self
            .pool
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take(len as u64)?;
        Some(RdmaStash {
            region: self.clone(),
            off,
            len,
        })
    }
}

/// A block of a connection's registered stash
/// ([`Endpoint::stash`](laggard::transport::Endpoint::stash)); dropping it
/// frees the block.
pub struct RdmaStash {
    region: Arc<StashRegion>,
    off: u64,
    len: usize,
}

impl RdmaStash {
    /// Whether the block belongs to `region`.
    pub(crate) fn is_in(&self, region: &Arc<StashRegion>) -> bool {
        Arc::ptr_eq(&self.region, region)
    }

    /// The block as a scatter-gather entry of a write.
    pub(crate) fn gather(&self) -> Gather {
        Gather {
            addr: self.region.mr.addr() + self.off,
            len: self.len as u32,
            lkey: self.region.mr.lkey(),
        }
    }

    fn ptr(&self) -> *mut u8 {
        self.region.mr.ptr().wrapping_add(self.off as usize)
    }
}

impl fmt::Debug for RdmaStash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RdmaStash({} bytes at {})", self.len, self.off)
    }
}

impl StashMemory for RdmaStash {
    fn bytes(&self) -> &[u8] {
        // SAFETY: the pool gave [off, off + len), inside the registered
        // mapping, to this block alone; the region (and so the mapping)
        // lives as long as `self` holds it. The device only reads it.
        unsafe { std::slice::from_raw_parts(self.ptr(), self.len) }
    }

    fn bytes_mut(&mut self) -> &mut [u8] {
        // SAFETY: as in `bytes`; `&mut self` makes this the only view here.
        // The device reads the block only between `send_stashed` and the
        // frame's release, while the caller leaves it unchanged.
        unsafe { std::slice::from_raw_parts_mut(self.ptr(), self.len) }
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}

impl Drop for RdmaStash {
    fn drop(&mut self) {
        self.region
            .pool
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .give_back(self.off, self.len as u64);
    }
}
