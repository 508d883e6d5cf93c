//! Dense storage: every key of a range preallocated, row index = key offset.

use crate::element::Element;
use crate::error::{Error, Result};
use crate::table::init::Init;
use crate::table::row::{NarrowRow, RowRef, SeqLock};
use crate::table::wide::{WideRow, is_wide};

/// The rows of one shard of a dense table.
#[derive(Debug)]
pub(crate) enum DenseShard<T: Element> {
    /// Narrow rows, in one allocation.
    Narrow {
        locks: Box<[SeqLock]>,
        /// `rows × stride` cells: each row's values, then its update state.
        cells: Box<[T::Cell]>,
        stride: usize,
    },
    /// Wide rows, one allocation each.
    Wide(Box<[WideRow<T>]>),
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
        if is_wide(stride) {
            let mut wide = reserve(rows)?;
            for row in 0..rows {
                let mut cells = reserve(stride)?;
                cells.extend(init.cells::<T>(key_of(row as u64), width, state_len));
                wide.push(WideRow::new(cells.into()));
            }
            return Ok(DenseShard::Wide(wide.into()));
        }
        let total = rows
            .checked_mul(stride)
            .ok_or(Error::OutOfMemory { bytes: usize::MAX })?;
        let mut cells = reserve(total)?;
        let mut locks = reserve(rows)?;
        for row in 0..rows {
            cells.extend(
                init.cells(key_of(row as u64), width, state_len)
                    .map(T::new_cell),
            );
            locks.push(SeqLock::new());
        }
        Ok(DenseShard::Narrow {
            locks: locks.into(),
            cells: cells.into(),
            stride,
        })
    }

    /// Number of rows.
    pub(crate) fn len(&self) -> usize {
        match self {
            DenseShard::Narrow { locks, .. } => locks.len(),
            DenseShard::Wide(rows) => rows.len(),
        }
    }

    /// Row `local`, which must be `< len()`.
    #[inline]
    pub(crate) fn row(&self, local: usize) -> RowRef<'_, T> {
        match self {
            DenseShard::Narrow {
                locks,
                cells,
                stride,
            } => {
                let start = local * stride;
                RowRef::Narrow(NarrowRow {
                    lock: &locks[local],
                    cells: &cells[start..start + stride],
                })
            }
            DenseShard::Wide(rows) => RowRef::Wide(&rows[local]),
        }
    }
}

/// An empty vector with room for `len` items, or `OutOfMemory`.
pub(super) fn reserve<V>(len: usize) -> Result<Vec<V>> {
    let mut v = Vec::new();
    v.try_reserve_exact(len).map_err(|_| Error::OutOfMemory {
        bytes: len.saturating_mul(std::mem::size_of::<V>()),
    })?;
    Ok(v)
}
