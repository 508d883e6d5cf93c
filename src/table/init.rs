//! Initial values of rows.

use crate::element::Element;
use crate::error::{Result, invalid};
use crate::table::placement::mix64;

/// The values a row holds before its first push.
///
/// Initial values are a pure function of the key (and the element index),
/// so a pull of a sparse row that was never pushed returns the same values
/// the row will start from when it is created, on any server.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub enum Init {
    /// Every element zero (the default).
    #[default]
    Zeros,
    /// Every element the same value.
    Constant(f64),
    /// Uniform in `[low, high)`, pseudo-random from `(seed, key, index)`:
    /// reproducible, and the same on every participant.
    Uniform {
        /// Lower bound (inclusive).
        low: f64,
        /// Upper bound (exclusive).
        high: f64,
        /// Seed of the generator.
        seed: u64,
    },
}

impl Init {
    /// The initial value of element `index` of row `key`.
    #[inline]
    pub fn value<T: Element>(&self, key: u64, index: usize) -> T {
        match *self {
            Init::Zeros => T::ZERO,
            Init::Constant(v) => T::from_f64(v),
            Init::Uniform { low, high, seed } => {
                let bits = mix64(seed ^ mix64(key ^ mix64(index as u64)));
                let unit = (bits >> 11) as f64 / (1u64 << 53) as f64;
                T::from_f64(low + unit * (high - low))
            }
        }
    }

    /// A new row's cells: the initial values of row `key`'s `width`
    /// elements, then `state_len` zeros for the update rule's state.
    pub(crate) fn cells<T: Element>(
        &self,
        key: u64,
        width: usize,
        state_len: usize,
    ) -> impl Iterator<Item = T> + '_ {
        (0..width)
            .map(move |i| self.value(key, i))
            .chain((0..state_len).map(|_| T::ZERO))
    }

    pub(crate) fn validate(&self) -> Result<()> {
        match *self {
            Init::Zeros => Ok(()),
            Init::Constant(v) if v.is_finite() => Ok(()),
            Init::Uniform { low, high, .. }
                if low.is_finite() && high.is_finite() && low < high =>
            {
                Ok(())
            }
            other => Err(invalid(
                "table initializer",
                format!("{other:?} needs finite values with low < high"),
            )),
        }
    }
}
