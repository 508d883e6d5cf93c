//! Dense storage: every key of a range preallocated, row index = key offset.

use crate::element::Element;
use crate::error::{Error, Result};
use crate::table::init::Init;
use crate::table::row::{RowRef, SeqLock};

/// The rows of one shard of a dense table, in one allocation.
#[derive(Debug)]
pub(crate) struct DenseShard<T: Element> {
    locks: Box<[SeqLock]>,
    /// `rows × stride` cells: each row's values, then its update state.
    cells: Box<[T::Cell]>,
    stride: usize,
}

impl<T: Element> DenseShard<T> {
    /// Allocates `rows` rows of `width` values and `state_len` state cells;
    /// `key_of(i)` gives the key of row `i`, for the initial values.
    pub(crate) fn new(
        rows: usize,
        width: usize,
        state_len: usize,
        init: &Init,
        key_of: impl Fn(u64) -> u64,
    ) -> Result<Self> {
        let stride = width + state_len;
        let total = rows
            .checked_mul(stride)
            .ok_or(Error::OutOfMemory { bytes: usize::MAX })?;
        let bytes = total.saturating_mul(std::mem::size_of::<T::Cell>());
        let mut cells = Vec::new();
        cells
            .try_reserve_exact(total)
            .map_err(|_| Error::OutOfMemory { bytes })?;
        let mut locks = Vec::new();
        locks
            .try_reserve_exact(rows)
            .map_err(|_| Error::OutOfMemory {
                bytes: rows.saturating_mul(8),
            })?;
        for row in 0..rows {
            let key = key_of(row as u64);
            cells.extend((0..width).map(|i| T::new_cell(init.value(key, i))));
            cells.extend((0..state_len).map(|_| T::new_cell(T::ZERO)));
            locks.push(SeqLock::new());
        }
        Ok(DenseShard {
            locks: locks.into(),
            cells: cells.into(),
            stride,
        })
    }

    /// Number of rows.
    pub(crate) fn len(&self) -> usize {
        self.locks.len()
    }

    /// Row `local`, which must be `< len()`.
    #[inline]
    pub(crate) fn row(&self, local: usize) -> RowRef<'_, T> {
        let start = local * self.stride;
        RowRef {
            lock: &self.locks[local],
            cells: &self.cells[start..start + self.stride],
        }
    }
}
