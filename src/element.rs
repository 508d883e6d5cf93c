//! Element types a table can hold, and the atomic cells that store them.
//!
//! A row is a slice of cells, one atomic word per element. Cells are only
//! ever accessed with `Relaxed` loads and stores; the row's sequence lock
//! (see `table::row`) supplies every ordering guarantee. Storing elements in
//! atomics (rather than plain memory read optimistically) keeps optimistic
//! reads free of data races, so the design is sound under the Rust memory
//! model and checkable by loom.

use std::fmt::Debug;
use std::ops::{Add, Mul, Sub};

use crate::sync::{AtomicU32, AtomicU64, Ordering};

mod sealed {
    pub trait Sealed {}
}

/// A value type a table can store: `f32`, `f64`, `i32`, `i64`, `u32` or `u64`.
///
/// Integer tables make exact tests possible (a `Sum` over integers does not
/// depend on the order of the terms); float tables are what models use.
/// The trait is sealed: each element needs an atomic cell of its own size.
pub trait Element:
    sealed::Sealed
    + Copy
    + Send
    + Sync
    + Default
    + PartialEq
    + PartialOrd
    + Debug
    + Add<Output = Self>
    + Sub<Output = Self>
    + Mul<Output = Self>
    + 'static
{
    /// The additive identity.
    const ZERO: Self;
    /// The type's name, as written in Rust (`"f32"`), for error messages.
    const NAME: &'static str;

    /// Converts from `f64` as the `as` operator does (saturating for integers).
    fn from_f64(v: f64) -> Self;
    /// Converts to `f64` as the `as` operator does.
    fn to_f64(self) -> f64;

    /// The atomic word that stores one element.
    #[doc(hidden)]
    type Cell: Send + Sync + Debug;
    #[doc(hidden)]
    fn new_cell(v: Self) -> Self::Cell;
    /// A `Relaxed` load; ordering comes from the row's sequence lock.
    #[doc(hidden)]
    fn load(cell: &Self::Cell) -> Self;
    /// A `Relaxed` store; ordering comes from the row's sequence lock.
    #[doc(hidden)]
    fn store(cell: &Self::Cell, v: Self);
}

/// A floating-point [`Element`] (`f32` or `f64`): what gradient-based
/// update rules such as [`Sgd`](crate::Sgd) and [`Adam`](crate::Adam) need.
pub trait Float: Element + std::ops::Div<Output = Self> + std::ops::Neg<Output = Self> {
    /// The square root.
    fn sqrt(self) -> Self;
    /// `self` raised to an integer power.
    fn powi(self, n: i32) -> Self;
}

macro_rules! element {
    ($t:ty, $cell:ty, $bits:ty, $to_bits:expr, $from_bits:expr) => {
        impl sealed::Sealed for $t {}
        impl Element for $t {
            const ZERO: Self = 0 as $t;
            const NAME: &'static str = stringify!($t);
            #[inline]
            fn from_f64(v: f64) -> Self {
                v as $t
            }
            #[inline]
            fn to_f64(self) -> f64 {
                self as f64
            }
            type Cell = $cell;
            #[inline]
            fn new_cell(v: Self) -> Self::Cell {
                <$cell>::new($to_bits(v))
            }
            #[inline]
            fn load(cell: &Self::Cell) -> Self {
                // Relaxed: the seqlock's fences order this load (see table::row).
                $from_bits(cell.load(Ordering::Relaxed))
            }
            #[inline]
            fn store(cell: &Self::Cell, v: Self) {
                // Relaxed: the seqlock's fences order this store (see table::row).
                cell.store($to_bits(v), Ordering::Relaxed)
            }
        }
    };
}

element!(f32, AtomicU32, u32, f32::to_bits, f32::from_bits);
element!(f64, AtomicU64, u64, f64::to_bits, f64::from_bits);
element!(u32, AtomicU32, u32, |v: u32| v, |v: u32| v);
element!(u64, AtomicU64, u64, |v: u64| v, |v: u64| v);
element!(i32, AtomicU32, u32, |v: i32| v as u32, |v: u32| v as i32);
element!(i64, AtomicU64, u64, |v: i64| v as u64, |v: u64| v as i64);

macro_rules! float {
    ($t:ty) => {
        impl Float for $t {
            #[inline]
            fn sqrt(self) -> Self {
                <$t>::sqrt(self)
            }
            #[inline]
            fn powi(self, n: i32) -> Self {
                <$t>::powi(self, n)
            }
        }
    };
}
float!(f32);
float!(f64);

#[cfg(all(test, not(laggard_loom)))]
mod tests {
    use super::*;

    fn round_trip<T: Element>(v: T) {
        let cell = T::new_cell(v);
        assert_eq!(T::load(&cell), v);
        T::store(&cell, T::ZERO);
        assert_eq!(T::load(&cell), T::ZERO);
    }

    #[test]
    fn cells_round_trip_every_element_type() {
        round_trip(-1.5f32);
        round_trip(f64::MIN_POSITIVE);
        round_trip(u32::MAX);
        round_trip(u64::MAX);
        round_trip(i32::MIN);
        round_trip(-7i64);
    }

    #[test]
    fn float_conversions_follow_as() {
        assert_eq!(i32::from_f64(1e20), i32::MAX);
        assert_eq!(u64::from_f64(-3.0), 0);
        assert_eq!(f32::from_f64(0.5).to_f64(), 0.5);
    }
}
