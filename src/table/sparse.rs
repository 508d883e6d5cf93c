//! Sparse storage: rows created on first push, found through a lock-free
//! hash trie.
//!
//! Keys are hashed with a bijective mixer, so two distinct keys always have
//! distinct 64-bit hashes. The trie consumes the hash from its top bits: a
//! root array indexed by the first `root_bits` bits, then 16-way nodes, one
//! per 4 further bits. A slot holds nothing, a leaf (one row), or a node.
//! Inserting into an empty slot, or replacing a leaf by a node that holds
//! it one level down, is a single CAS; nothing is ever removed while the
//! table lives, so a reader holding a pointer never sees it freed and no
//! memory-reclamation scheme is needed. Depth is at most
//! `(64 - root_bits) / 4` levels whatever the keys are.
//!
//! A shard may have a row limit. An insert reserves its row in the shard's
//! count before it makes the leaf, and gives the reservation back if
//! another insert of the same key wins, so the count never passes the
//! limit; it includes rows being inserted at that moment.

use std::marker::PhantomData;
use std::ptr;

use crate::element::Element;
use crate::error::{Error, Result};
use crate::sync::{AtomicPtr, AtomicUsize, Ordering};
use crate::table::dense::reserve;
use crate::table::init::Init;
use crate::table::placement::mix64;
use crate::table::row::{NarrowRow, RowRef, SeqLock};
use crate::table::wide::{WideRow, is_wide};

const NODE_BITS: u32 = 4;
const FANOUT: usize = 1 << NODE_BITS;
/// Low pointer bit set on node pointers (nodes and leaves are 8-aligned).
const NODE_TAG: usize = 1;

/// An inner trie node. It has no `Drop`: the shard frees the whole trie.
struct Node {
    slots: [AtomicPtr<u8>; FANOUT],
}

/// One materialized row.
#[derive(Debug)]
pub(crate) struct Leaf<T: Element> {
    pub(crate) key: u64,
    body: LeafBody<T>,
}

/// A leaf's row: narrow or wide, as in dense shards.
#[derive(Debug)]
enum LeafBody<T: Element> {
    Narrow {
        lock: SeqLock,
        cells: Box<[T::Cell]>,
    },
    Wide(WideRow<T>),
}

impl<T: Element> Leaf<T> {
    pub(crate) fn row(&self) -> RowRef<'_, T> {
        match &self.body {
            LeafBody::Narrow { lock, cells } => RowRef::Narrow(NarrowRow { lock, cells }),
            LeafBody::Wide(row) => RowRef::Wide(row),
        }
    }
}

enum Slot<'a, T: Element> {
    Empty,
    Leaf(&'a Leaf<T>),
    Node(&'a Node),
}

/// The rows of one shard of a sparse table.
pub(crate) struct SparseShard<T: Element> {
    root: Box<[AtomicPtr<u8>]>,
    root_bits: u32,
    /// Rows inserted or being inserted (reserved, see `reserve_row`).
    rows: AtomicUsize,
    /// The most rows the shard may hold.
    limit: usize,
    /// The shard's index in its table, for errors.
    index: usize,
    width: usize,
    state_len: usize,
    init: Init,
    _owns: PhantomData<Box<Leaf<T>>>,
}

impl<T: Element> std::fmt::Debug for SparseShard<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SparseShard")
            .field("rows", &self.len())
            .field("root_slots", &self.root.len())
            .finish()
    }
}

impl<T: Element> SparseShard<T> {
    /// Shard `index` of its table, sized for about `capacity` rows (it
    /// grows past that freely), holding at most `limit` rows.
    pub(crate) fn new(
        index: usize,
        capacity: usize,
        limit: usize,
        width: usize,
        state_len: usize,
        init: Init,
    ) -> Self {
        // About four rows per root slot before nodes appear; a multiple of
        // NODE_BITS so the levels below consume whole nibbles.
        let wanted = (capacity / 4).max(1).next_power_of_two().trailing_zeros();
        let root_bits = wanted.div_ceil(NODE_BITS).clamp(1, 5) * NODE_BITS;
        let root = (0..1usize << root_bits)
            .map(|_| AtomicPtr::new(ptr::null_mut()))
            .collect();
        SparseShard {
            root,
            root_bits,
            rows: AtomicUsize::new(0),
            limit,
            index,
            width,
            state_len,
            init,
            _owns: PhantomData,
        }
    }

    /// Number of materialized rows (and rows being inserted right now).
    pub(crate) fn len(&self) -> usize {
        // Relaxed: a count; nothing is ordered by it.
        self.rows.load(Ordering::Relaxed)
    }

    /// The most rows the shard may hold.
    pub(crate) fn limit(&self) -> usize {
        self.limit
    }

    /// The error for a row past the limit.
    pub(crate) fn full(&self) -> Error {
        Error::TableFull {
            table: None,
            shard: self.index,
            limit: self.limit,
        }
    }

    /// Reserves one row in the count, unless the shard is full.
    fn reserve_row(&self) -> Result<()> {
        // Relaxed: the count orders no memory; the modification order of
        // this one atomic alone keeps reservations within the limit.
        self.rows
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |rows| {
                (rows < self.limit).then_some(rows + 1)
            })
            .map(drop)
            .map_err(|_| self.full())
    }

    /// Gives back a reservation whose row was not inserted.
    fn release_row(&self) {
        // Relaxed: as in `reserve_row`.
        self.rows.fetch_sub(1, Ordering::Relaxed);
    }

    fn decode(&self, p: *mut u8) -> Slot<'_, T> {
        if p.is_null() {
            Slot::Empty
        } else if p.addr() & NODE_TAG != 0 {
            // A tagged non-null slot value was made in `insert` from
            // `Box::into_raw(Box<Node>)` and published with a Release CAS
            // that the Acquire load which produced `p` synchronizes with.
            // SAFETY: so the node is initialized; nodes are freed only by
            // `Drop`, which takes `&mut self`, so it outlives this borrow.
            Slot::Node(unsafe { &*p.map_addr(|a| a & !NODE_TAG).cast::<Node>() })
        } else {
            // SAFETY: as above, for a leaf made from `Box::into_raw(Box<Leaf<T>>)`.
            Slot::Leaf(unsafe { &*p.cast::<Leaf<T>>() })
        }
    }

    fn root_slot(&self, hash: u64) -> &AtomicPtr<u8> {
        &self.root[(hash >> (64 - self.root_bits)) as usize]
    }

    /// The row for `key`, if it was ever pushed. Wait-free: at most one
    /// load per trie level.
    pub(crate) fn find(&self, key: u64) -> Option<&Leaf<T>> {
        let hash = mix64(key);
        let mut slot = self.root_slot(hash);
        let mut shift = 64 - self.root_bits;
        loop {
            // Acquire: pairs with the Release CAS in `insert` that published
            // the pointer, so the pointee is fully initialized.
            match self.decode(slot.load(Ordering::Acquire)) {
                Slot::Empty => return None,
                Slot::Leaf(leaf) => return (leaf.key == key).then_some(leaf),
                Slot::Node(node) => {
                    shift -= NODE_BITS;
                    slot = &node.slots[((hash >> shift) as usize) & (FANOUT - 1)];
                }
            }
        }
    }

    /// The row for `key`, created (with the table's initial values) if it
    /// does not exist; `TableFull` if the shard holds its limit of rows,
    /// `OutOfMemory` if there is no memory for it. Lock-free: a CAS fails
    /// only because another insert into the same slot succeeded.
    pub(crate) fn insert(&self, key: u64) -> Result<&Leaf<T>> {
        let hash = mix64(key);
        let mut slot = self.root_slot(hash);
        let mut shift = 64 - self.root_bits;
        let mut fresh: Option<Box<Leaf<T>>> = None;
        loop {
            // Acquire: pairs with the Release CAS below (in other threads).
            let current = slot.load(Ordering::Acquire);
            match self.decode(current) {
                Slot::Empty => {
                    // A fresh leaf holds a reservation in the count.
                    let leaf = match fresh.take() {
                        Some(leaf) => leaf,
                        None => {
                            self.reserve_row()?;
                            self.new_leaf(key).inspect_err(|_| self.release_row())?
                        }
                    };
                    let leaf = Box::into_raw(leaf);
                    // Release on success publishes the leaf's initialized
                    // cells to the Acquire loads in `find` and `insert`;
                    // Acquire on failure lets us read what won the slot.
                    match slot.compare_exchange(
                        ptr::null_mut(),
                        leaf.cast(),
                        Ordering::Release,
                        Ordering::Acquire,
                    ) {
                        Ok(_) => {
                            // SAFETY: we just published `leaf`; it lives until Drop.
                            return Ok(unsafe { &*leaf });
                        }
                        // SAFETY: the CAS failed, so `leaf` was never shared;
                        // we still own the allocation we made it from.
                        Err(_) => fresh = Some(unsafe { Box::from_raw(leaf) }),
                    }
                }
                Slot::Leaf(leaf) if leaf.key == key => {
                    // Another insert of `key` won: ours was not needed.
                    if fresh.is_some() {
                        self.release_row();
                    }
                    return Ok(leaf);
                }
                Slot::Leaf(leaf) => {
                    // Two distinct keys have distinct hashes (mix64 is a
                    // bijection), so they differ in some bit below `shift`
                    // and there is room for another level.
                    debug_assert!(shift >= NODE_BITS);
                    let below = shift - NODE_BITS;
                    let node = Node {
                        slots: std::array::from_fn(|_| AtomicPtr::new(ptr::null_mut())),
                    };
                    let index = ((mix64(leaf.key) >> below) as usize) & (FANOUT - 1);
                    node.slots[index].store(current, Ordering::Relaxed);
                    let tagged = Box::into_raw(Box::new(node))
                        .map_addr(|a| a | NODE_TAG)
                        .cast::<u8>();
                    // Release publishes the node (and the moved leaf pointer).
                    if slot
                        .compare_exchange(current, tagged, Ordering::Release, Ordering::Acquire)
                        .is_err()
                    {
                        let node = tagged.map_addr(|a| a & !NODE_TAG).cast::<Node>();
                        // SAFETY: the CAS failed, so the node was never shared.
                        // `Node` has no Drop: the leaf it points to (still the trie's) lives on.
                        drop(unsafe { Box::from_raw(node) });
                    }
                    // Either way, look at the slot again.
                }
                Slot::Node(node) => {
                    shift -= NODE_BITS;
                    slot = &node.slots[((hash >> shift) as usize) & (FANOUT - 1)];
                }
            }
        }
    }

    /// A new row for `key`. Its cells are the one allocation a row's size
    /// decides (the table checked that a row is addressable), so that is
    /// where running out of memory is an error, not an abort.
    fn new_leaf(&self, key: u64) -> Result<Box<Leaf<T>>> {
        let len = self.width + self.state_len;
        let values = self.init.cells(key, self.width, self.state_len);
        let body = if is_wide(len) {
            let mut cells = reserve(len)?;
            cells.extend(values);
            LeafBody::Wide(WideRow::new(cells.into()))
        } else {
            let mut cells = reserve(len)?;
            cells.extend(values.map(T::new_cell));
            LeafBody::Narrow {
                lock: SeqLock::new(),
                cells: cells.into(),
            }
        };
        Ok(Box::new(Leaf { key, body }))
    }

    /// Calls `f` on every materialized row, in no particular order. Rows
    /// inserted concurrently may or may not be visited.
    pub(crate) fn for_each(&self, mut f: impl FnMut(&Leaf<T>)) {
        fn walk<T: Element>(
            shard: &SparseShard<T>,
            slot: &AtomicPtr<u8>,
            f: &mut dyn FnMut(&Leaf<T>),
        ) {
            // Acquire: pairs with the Release CAS in `insert`.
            match shard.decode(slot.load(Ordering::Acquire)) {
                Slot::Empty => {}
                Slot::Leaf(leaf) => f(leaf),
                Slot::Node(node) => node.slots.iter().for_each(|s| walk(shard, s, f)),
            }
        }
        self.root.iter().for_each(|s| walk(self, s, &mut f));
    }
}

impl<T: Element> Drop for SparseShard<T> {
    fn drop(&mut self) {
        fn free<T: Element>(p: *mut u8) {
            if p.is_null() {
                return;
            }
            if p.addr() & NODE_TAG != 0 {
                // `&mut` access to the shard means no other thread holds a
                // reference into the trie.
                // SAFETY: every node pointer came from `Box::into_raw` and is
                // reachable from exactly one slot, so it is freed exactly once.
                let node = unsafe { Box::from_raw(p.map_addr(|a| a & !NODE_TAG).cast::<Node>()) };
                // Relaxed: exclusive access, nothing to synchronize with.
                node.slots
                    .iter()
                    .for_each(|s| free::<T>(s.load(Ordering::Relaxed)));
            } else {
                // SAFETY: as above, for a leaf from `Box::into_raw(Box<Leaf<T>>)`.
                drop(unsafe { Box::from_raw(p.cast::<Leaf<T>>()) });
            }
        }
        // Relaxed: exclusive access, nothing to synchronize with.
        self.root
            .iter()
            .for_each(|s| free::<T>(s.load(Ordering::Relaxed)));
    }
}
