//! Rows a transport may send from where they lie: [`HeldRow`].

use std::any::Any;
use std::fmt;
use std::ops::Deref;
use std::sync::{Arc, Weak};

/// Memory behind a [`HeldRow`]: its bytes, unchanged while it lives, and
/// what keeps them at their address.
pub(crate) trait HeldMemory: Send + Sync {
    /// The bytes; the same address and contents for this value's life.
    fn bytes(&self) -> &[u8];
    /// Upgradable for as long as [`bytes`](Self::bytes) stays at its
    /// address (not necessarily unchanged) in later holds of the same row.
    fn owner(&self) -> Weak<dyn Any + Send + Sync>;
}

/// Bytes held unchanged, where they lie, until dropped: a table row that a
/// server answers a pull with ([`Endpoint::send_held`](super::Endpoint::send_held)).
///
/// While a row of a table is held, pushes to that row wait, so a transport
/// whose device reads the row after `send_held` returned (RDMA) reads the
/// version that was sent. Derefs to the bytes.
///
/// [`owner`](Self::owner) says for how long the bytes stay at their
/// address, beyond this hold: a transport may keep a registration of that
/// memory with its device (registered once, used by every later send of
/// the row) for as long as the owner can be upgraded.
///
/// ```
/// use std::sync::Arc;
/// use laggard::transport::HeldRow;
///
/// let row = HeldRow::new(Arc::new(vec![1u8, 2, 3]));
/// assert_eq!(&*row, &[1, 2, 3]);
/// assert!(row.owner().upgrade().is_some());
/// ```
pub struct HeldRow(Box<dyn HeldMemory>);

impl HeldRow {
    /// Holds `bytes`, whose owner is the `Arc`. `bytes.as_ref()` must give
    /// the same bytes, at the same address and unchanged, for as long as
    /// the `Arc`'s allocation lives: true of a `Vec<u8>` or `Box<[u8]>`,
    /// which nobody can change or move while it is shared, and of anything
    /// else without interior mutability.
    pub fn new<B: AsRef<[u8]> + Send + Sync + 'static>(bytes: Arc<B>) -> Self {
        HeldRow(Box::new(SharedBytes(bytes)))
    }

    /// Wraps the crate's own held memory (a table row).
    pub(crate) fn from_memory(memory: impl HeldMemory + 'static) -> Self {
        HeldRow(Box::new(memory))
    }

    /// Upgradable for as long as these bytes stay at their address (their
    /// contents may change once this hold is dropped).
    pub fn owner(&self) -> Weak<dyn Any + Send + Sync> {
        self.0.owner()
    }
}

impl Deref for HeldRow {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        self.0.bytes()
    }
}

impl fmt::Debug for HeldRow {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "HeldRow({} bytes at {:p})", self.len(), self.as_ptr())
    }
}

struct SharedBytes<B>(Arc<B>);

impl<B: AsRef<[u8]> + Send + Sync + 'static> HeldMemory for SharedBytes<B> {
    fn bytes(&self) -> &[u8] {
        (*self.0).as_ref()
    }

    fn owner(&self) -> Weak<dyn Any + Send + Sync> {
        let owner: Arc<dyn Any + Send + Sync> = self.0.clone();
        Arc::downgrade(&owner)
    }
}
