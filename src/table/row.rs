//! Rows in storage, and the sequence lock of narrow rows: exclusive
//! writers, optimistic readers.
//!
//! Writers (pushes) take the row by moving its sequence number from even to
//! odd with a CAS, apply the update rule, and release it by storing the next
//! even number. Readers (pulls) copy the row without writing anything and
//! keep the copy only if the sequence was even and unchanged around it;
//! after a few failed attempts a reader takes the write lock itself, so a
//! stream of writers cannot starve it. The cells are atomics accessed with
//! `Relaxed` ordering, so an optimistic read that overlaps a write is a
//! retry, never a data race.
//!
//! The orderings follow Boehm, "Can seqlocks get along with programming
//! language memory models?" (MSPC 2012).

use crate::element::Element;
use crate::sync::{AtomicU64, Backoff, Ordering, fence};
use crate::table::wide::WideRow;
use crate::update::{RowMut, Update};

/// How many optimistic reads a pull tries before it takes the write lock.
const OPTIMISTIC_READS: u32 = 4;

/// A row's sequence number: even when no writer holds the row, odd while one does.
#[derive(Debug)]
pub(crate) struct SeqLock {
    seq: AtomicU64,
}

/// Write access to a row; releasing it (also on unwind) publishes the writes.
pub(crate) struct WriteGuard<'a> {
    lock: &'a SeqLock,
    odd: u64,
}

impl SeqLock {
    pub(crate) fn new() -> Self {
        SeqLock {
            seq: AtomicU64::new(0),
        }
    }

    /// Takes the row for writing, spinning (then yielding) while another
    /// writer holds it.
    pub(crate) fn write(&self) -> WriteGuard<'_> {
        let mut backoff = Backoff::new();
        loop {
            let seq = self.seq.load(Ordering::Relaxed);
            if seq & 1 == 0
                // Acquire on success: pairs with the Release store in
                // `WriteGuard::drop` of the previous holder, so this writer
                // reads the cells as that holder left them.
                && self
                    .seq
                    .compare_exchange_weak(seq, seq + 1, Ordering::Acquire, Ordering::Relaxed)
                    .is_ok()
            {
                // SYNC POINT: this Release fence orders the odd sequence
                // before the cell stores that follow. It pairs with the
                // Acquire fence in `read`: a reader that saw any of those
                // stores then sees an odd or newer sequence and retries.
                fence(Ordering::Release);
                return WriteGuard {
                    lock: self,
                    odd: seq + 1,
                };
            }
            backoff.snooze();
        }
    }

    /// Runs `copy` until it ran while no writer held the row, and returns
    /// its result. `copy` may run more than once; only the last run counts.
    pub(crate) fn read<R>(&self, mut copy: impl FnMut() -> R) -> R {
        let mut backoff = Backoff::new();
        for _ in 0..OPTIMISTIC_READS {
            // Acquire: pairs with the Release store in `WriteGuard::drop`,
            // so the copy sees every write of writers that have finished.
            let before = self.seq.load(Ordering::Acquire);
            if before & 1 == 0 {
                let result = copy();
                // SYNC POINT: pairs with the Release fence in `write`.
                fence(Ordering::Acquire);
                // Relaxed: ordered after the copy by the fence above.
                if self.seq.load(Ordering::Relaxed) == before {
                    return result;
                }
            }
            backoff.snooze();
        }
        // Writers kept the row busy: read under the write lock instead.
        let _guard = self.write();
        copy()
    }
}

impl Drop for WriteGuard<'_> {
    fn drop(&mut self) {
        // SYNC POINT: Release pairs with the Acquire load in `SeqLock::read`
        // and the Acquire CAS in `SeqLock::write`: the cell stores made
        // under this guard happen-before whoever sees the new even number.
        self.lock.seq.store(self.odd + 1, Ordering::Release);
    }
}

/// A narrow row in storage: its lock, then `width` value cells followed by
/// the update rule's state cells.
#[derive(Clone, Copy)]
pub(crate) struct NarrowRow<'a, T: Element> {
    pub(crate) lock: &'a SeqLock,
    pub(crate) cells: &'a [T::Cell],
}

impl<T: Element> NarrowRow<'_, T> {
    /// Applies `delta` with `update` under the row's write lock.
    #[inline]
    fn apply(&self, width: usize, update: &dyn Update<T>, delta: &[T]) {
        let _guard = self.lock.write();
        let (values, state) = self.cells.split_at(width);
        update.apply(&mut RowMut::new(values), &mut RowMut::new(state), delta);
    }

    /// Copies the row's first `out.len()` cells, optimistically.
    #[inline]
    fn read_into(&self, out: &mut [T]) {
        let cells = &self.cells[..out.len()];
        self.lock.read(|| {
            for (o, c) in out.iter_mut().zip(cells) {
                *o = T::load(c);
            }
        })
    }
}

/// One row in storage, narrow (atomic cells under a sequence lock) or wide
/// (plain elements under a reader-writer word; see [`super::wide`]).
pub(crate) enum RowRef<'a, T: Element> {
    Narrow(NarrowRow<'a, T>),
    Wide(&'a WideRow<T>),
}

impl<T: Element> RowRef<'_, T> {
    /// Applies `delta` (`width` elements) with `update`, excluding every
    /// other push to the row.
    #[inline]
    pub(crate) fn apply(&self, width: usize, update: &dyn Update<T>, delta: &[T]) {
        match self {
            RowRef::Narrow(row) => row.apply(width, update, delta),
            RowRef::Wide(row) => row.apply(width, update, delta),
        }
    }

    /// Copies the row's first `out.len()` cells into `out`: its values
    /// (`out.len() == width`), or values and then state (`out.len() ==
    /// cells`). A consistent copy, never a torn one.
    #[inline]
    pub(crate) fn read_into(&self, out: &mut [T]) {
        match self {
            RowRef::Narrow(row) => row.read_into(out),
            RowRef::Wide(row) => row.read_into(out),
        }
    }

    /// Calls `f` with the row's `width` values, consistent: a wide row's in
    /// place (held shared, so pushes to it wait until `f` returns), a
    /// narrow row's as a copy.
    pub(crate) fn with_values<R>(&self, width: usize, f: impl FnOnce(&[T]) -> R) -> R {
        match self {
            RowRef::Narrow(row) => {
                let mut values = vec![T::ZERO; width];
                row.read_into(&mut values);
                f(&values)
            }
            RowRef::Wide(row) => row.with_cells(width, f),
        }
    }
}
