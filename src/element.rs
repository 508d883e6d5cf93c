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

    /// Bytes per element on the wire (little-endian).
    #[doc(hidden)]
    const SIZE: usize;
    /// The element type's code on the wire (see [`ElementKind`]).
    #[doc(hidden)]
    const KIND: ElementKind;
    /// Writes `self` as `SIZE` little-endian bytes at the start of `out`.
    #[doc(hidden)]
    fn write_le(self, out: &mut [u8]);
    /// Reads a value from the first `SIZE` little-endian bytes of `bytes`.
    #[doc(hidden)]
    fn read_le(bytes: &[u8]) -> Self;
    /// Addition that wraps for integers instead of panicking on overflow
    /// (an overflowing delta from the network is not a reason to panic).
    #[doc(hidden)]
    fn wrapping_add(self, other: Self) -> Self;
}

/// The element type of a table as a value: what the wire protocol and the
/// cluster schema record, so two processes can check they agree.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ElementKind {
    /// `f32`
    F32,
    /// `f64`
    F64,
    /// `i32`
    I32,
    /// `i64`
    I64,
    /// `u32`
    U32,
    /// `u64`
    U64,
}

impl ElementKind {
    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            ElementKind::F32 | ElementKind::I32 | ElementKind::U32 => 4,
            ElementKind::F64 | ElementKind::I64 | ElementKind::U64 => 8,
        }
    }

    /// The Rust name of the type, e.g. `"f32"`.
    pub fn name(self) -> &'static str {
        match self {
            ElementKind::F32 => "f32",
            ElementKind::F64 => "f64",
            ElementKind::I32 => "i32",
            ElementKind::I64 => "i64",
            ElementKind::U32 => "u32",
            ElementKind::U64 => "u64",
        }
    }

    /// Whether the kind is `f32` or `f64`.
    pub(crate) fn is_float(self) -> bool {
        matches!(self, ElementKind::F32 | ElementKind::F64)
    }

    /// A stable one-byte code.
    pub(crate) fn code(self) -> u8 {
        self as u8
    }

    /// The kind whose [`code`](Self::code) is `code`, if any.
    pub(crate) fn from_code(code: u8) -> Option<Self> {
        use ElementKind::*;
        [F32, F64, I32, I64, U32, U64]
            .into_iter()
            .find(|k| k.code() == code)
    }
}

impl std::fmt::Display for ElementKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Views little-endian wire bytes as elements without copying, where that
/// is exact: on a little-endian host, with `bytes` aligned for `T` and a
/// whole number of elements long. `None` otherwise; convert instead.
pub(crate) fn le_view<T: Element>(bytes: &[u8]) -> Option<&[T]> {
    if cfg!(target_endian = "big") {
        return None;
    }
    // `Element` is sealed: only f32, f64, i32, i64, u32 and u64, plain
    // numbers without padding for which every bit pattern is valid.
    // SAFETY: so any initialised bytes may be read as `T`; `align_to`
    // yields only whole, aligned elements inside `bytes`, borrowed as it is.
    let (head, mid, tail) = unsafe { bytes.align_to::<T>() };
    (head.is_empty() && tail.is_empty()).then_some(mid)
}

/// As [`le_view`], for writing: elements written through the view land in
/// `bytes` as their little-endian encoding.
pub(crate) fn le_view_mut<T: Element>(bytes: &mut [u8]) -> Option<&mut [T]> {
    if cfg!(target_endian = "big") {
        return None;
    }
    // SAFETY: every bit pattern is a valid `T` (see `le_view`) and bytes
    // have no invariants, so reading and writing `T`s through the aligned
    // middle slice is sound; it borrows `bytes` mutably.
    let (head, mid, tail) = unsafe { bytes.align_to_mut::<T>() };
    (head.is_empty() && tail.is_empty()).then_some(mid)
}

/// `values` as their little-endian bytes, without copying, on a
/// little-endian host; `None` on a big-endian one.
pub(crate) fn le_bytes<T: Element>(values: &[T]) -> Option<&[u8]> {
    if cfg!(target_endian = "big") {
        return None;
    }
    let (ptr, len) = (values.as_ptr().cast::<u8>(), std::mem::size_of_val(values));
    // SAFETY: `T` is a plain number without padding (see `le_view`): all
    // `len` bytes behind `values` are initialised, `u8` needs no alignment,
    // and the slice borrows `values`.
    Some(unsafe { std::slice::from_raw_parts(ptr, len) })
}

/// `values` as their little-endian bytes, for writing, without copying, on
/// a little-endian host; `None` on a big-endian one.
pub(crate) fn le_bytes_mut<T: Element>(values: &mut [T]) -> Option<&mut [u8]> {
    if cfg!(target_endian = "big") {
        return None;
    }
    let (ptr, len) = (
        values.as_mut_ptr().cast::<u8>(),
        std::mem::size_of_val(values),
    );
    // SAFETY: as in `le_bytes`; and every bit pattern is a valid `T`, so
    // whatever bytes are written leave valid elements behind. The slice
    // borrows `values` mutably.
    Some(unsafe { std::slice::from_raw_parts_mut(ptr, len) })
}

/// Writes `values` into `out` as little-endian bytes (`out.len()` must be
/// `values.len() * T::SIZE`): one `memcpy` on a little-endian host.
pub(crate) fn write_le_slice<T: Element>(values: &[T], out: &mut [u8]) {
    debug_assert_eq!(out.len(), values.len() * T::SIZE);
    match le_bytes(values) {
        Some(bytes) => out.copy_from_slice(bytes),
        None => {
            for (v, o) in values.iter().zip(out.chunks_exact_mut(T::SIZE)) {
                v.write_le(o);
            }
        }
    }
}

/// Reads little-endian `bytes` into `out` (`bytes.len()` must be
/// `out.len() * T::SIZE`): one `memcpy` on a little-endian host, whatever
/// the alignment of `bytes`.
pub(crate) fn read_le_slice<T: Element>(bytes: &[u8], out: &mut [T]) {
    debug_assert_eq!(bytes.len(), out.len() * T::SIZE);
    match le_bytes_mut(out) {
        Some(out) => out.copy_from_slice(bytes),
        None => {
            for (o, b) in out.iter_mut().zip(bytes.chunks_exact(T::SIZE)) {
                *o = T::read_le(b);
            }
        }
    }
}

/// Adds `delta` element-wise (wrapping for integers) into the row encoded
/// as little-endian `bytes` (`bytes.len()` must be `delta.len() * T::SIZE`),
/// in place: a vectorisable loop where the bytes can be viewed as `T`s.
pub(crate) fn add_le_slice<T: Element>(bytes: &mut [u8], delta: &[T]) {
    debug_assert_eq!(bytes.len(), delta.len() * T::SIZE);
    match le_view_mut::<T>(bytes) {
        Some(row) => {
            for (x, &d) in row.iter_mut().zip(delta) {
                *x = x.wrapping_add(d);
            }
        }
        None => {
            for (d, b) in delta.iter().zip(bytes.chunks_exact_mut(T::SIZE)) {
                T::read_le(b).wrapping_add(*d).write_le(b);
            }
        }
    }
}

/// Applies `delta` to a little-endian `row` as a linear update rule does,
/// `x += k * d` element by element (wrapping for integers, where `k` is
/// 1): how a worker replays its own pushes onto its cached copy of a row
/// ([`Update::replay_scale`](crate::Update::replay_scale)).
pub(crate) fn replay_le<T: Element>(row: &mut [u8], delta: &[T], k: f64) {
    debug_assert_eq!(row.len(), delta.len() * T::SIZE);
    let k = T::from_f64(k);
    for (d, b) in delta.iter().zip(row.chunks_exact_mut(T::SIZE)) {
        T::read_le(b).wrapping_add(k * *d).write_le(b);
    }
}

/// [`replay_le`] for a delta that is itself little-endian bytes of
/// `kind`.
pub(crate) fn replay_le_bytes(kind: ElementKind, row: &mut [u8], delta: &[u8], k: f64) {
    fn typed<T: Element>(row: &mut [u8], delta: &[u8], k: f64) {
        debug_assert_eq!(row.len(), delta.len());
        let k = T::from_f64(k);
        for (b, d) in row
            .chunks_exact_mut(T::SIZE)
            .zip(delta.chunks_exact(T::SIZE))
        {
            T::read_le(b).wrapping_add(k * T::read_le(d)).write_le(b);
        }
    }
    match kind {
        ElementKind::F32 => typed::<f32>(row, delta, k),
        ElementKind::F64 => typed::<f64>(row, delta, k),
        ElementKind::I32 => typed::<i32>(row, delta, k),
        ElementKind::I64 => typed::<i64>(row, delta, k),
        ElementKind::U32 => typed::<u32>(row, delta, k),
        ElementKind::U64 => typed::<u64>(row, delta, k),
    }
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
    ($t:ty, $kind:ident, $cell:ty, $bits:ty, $to_bits:expr, $from_bits:expr, $wrapping_add:expr) => {
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
            const SIZE: usize = std::mem::size_of::<$t>();
            const KIND: ElementKind = ElementKind::$kind;
            #[inline]
            fn write_le(self, out: &mut [u8]) {
                out[..Self::SIZE].copy_from_slice(&self.to_le_bytes());
            }
            #[inline]
            fn read_le(bytes: &[u8]) -> Self {
                let mut b = [0u8; std::mem::size_of::<$t>()];
                b.copy_from_slice(&bytes[..Self::SIZE]);
                <$t>::from_le_bytes(b)
            }
            #[inline]
            fn wrapping_add(self, other: Self) -> Self {
                $wrapping_add(self, other)
            }
        }
    };
}

element!(
    f32,
    F32,
    AtomicU32,
    u32,
    f32::to_bits,
    f32::from_bits,
    |a: f32, b| a + b
);
element!(
    f64,
    F64,
    AtomicU64,
    u64,
    f64::to_bits,
    f64::from_bits,
    |a: f64, b| a + b
);
element!(
    u32,
    U32,
    AtomicU32,
    u32,
    |v: u32| v,
    |v: u32| v,
    u32::wrapping_add
);
element!(
    u64,
    U64,
    AtomicU64,
    u64,
    |v: u64| v,
    |v: u64| v,
    u64::wrapping_add
);
element!(
    i32,
    I32,
    AtomicU32,
    u32,
    |v: i32| v as u32,
    |v: u32| v as i32,
    i32::wrapping_add
);
element!(
    i64,
    I64,
    AtomicU64,
    u64,
    |v: i64| v as u64,
    |v: u64| v as i64,
    i64::wrapping_add
);

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
    fn little_endian_round_trip_and_add() {
        let mut bytes = [0u8; 16];
        write_le_slice(&[-3i64, 5], &mut bytes);
        let mut back = [0i64; 2];
        read_le_slice(&bytes, &mut back);
        assert_eq!(back, [-3, 5]);
        assert_eq!(i64::MAX.wrapping_add(1), i64::MIN);
        assert_eq!(f32::KIND.size(), 4);
    }

    #[test]
    fn replays_match_the_rules_they_stand_for() {
        // Sgd at rate 0.25: x - 0.25 * g, the same bits as the server's.
        let (x, g) = ([1.5f32, -2.0, 0.1], [0.3f32, -4.0, 7.0]);
        let mut row = [0u8; 12];
        write_le_slice(&x, &mut row);
        replay_le(&mut row, &g, -0.25);
        let mut got = [0f32; 3];
        read_le_slice(&row, &mut got);
        let want: Vec<f32> = x.iter().zip(&g).map(|(x, g)| x - 0.25 * g).collect();
        assert_eq!(got.to_vec(), want);
        // The same delta as bytes, on f64 and on a sum that wraps.
        let mut row = [0u8; 16];
        write_le_slice(&[1.0f64, 2.0], &mut row);
        let mut delta = [0u8; 16];
        write_le_slice(&[0.5f64, -1.0], &mut delta);
        replay_le_bytes(ElementKind::F64, &mut row, &delta, -2.0);
        let mut back = [0f64; 2];
        read_le_slice(&row, &mut back);
        assert_eq!(back, [0.0, 4.0]);
        write_le_slice(&[u64::MAX, 7], &mut row);
        write_le_slice(&[2u64, 3], &mut delta);
        replay_le_bytes(ElementKind::U64, &mut row, &delta, 1.0);
        let mut sums = [0u64; 2];
        read_le_slice(&row, &mut sums);
        assert_eq!(sums, [1, 10]);
    }

    #[test]
    fn float_conversions_follow_as() {
        assert_eq!(i32::from_f64(1e20), i32::MAX);
        assert_eq!(u64::from_f64(-3.0), 0);
        assert_eq!(f32::from_f64(0.5).to_f64(), 0.5);
    }
}

#[cfg(test)]
mod view_tests {
    use super::*;

    /// The slice helpers (one `memcpy` or a vector loop on little-endian
    /// hosts) agree with converting element by element, at every alignment.
    fn slice_helpers_match_elementwise<T: Element>(values: &[T], delta: &[T]) {
        let n = values.len() * T::SIZE;
        let mut expected = vec![0u8; n];
        for (v, o) in values.iter().zip(expected.chunks_exact_mut(T::SIZE)) {
            v.write_le(o);
        }
        let mut buf = vec![0u8; n + 8];
        for off in 0..8 {
            let bytes = &mut buf[off..off + n];
            write_le_slice(values, bytes);
            assert_eq!(bytes, &expected[..], "write at offset {off}");
            let mut back = vec![T::ZERO; values.len()];
            read_le_slice(bytes, &mut back);
            assert_eq!(back, values, "read at offset {off}");
            add_le_slice(bytes, delta);
            let mut sum = vec![T::ZERO; values.len()];
            read_le_slice(bytes, &mut sum);
            let want: Vec<T> = values
                .iter()
                .zip(delta)
                .map(|(&v, &d)| v.wrapping_add(d))
                .collect();
            assert_eq!(sum, want, "add at offset {off}");
        }
    }

    #[test]
    fn slice_helpers_match_elementwise_conversion() {
        slice_helpers_match_elementwise(&[1.5f32, -2.0, 3.25], &[0.5, 0.5, -1.0]);
        slice_helpers_match_elementwise(&[1.5f64, -2.0e300], &[1.0, 2.0e300]);
        slice_helpers_match_elementwise(&[i32::MAX, -7], &[1, 7]);
        slice_helpers_match_elementwise(&[i64::MIN, 3], &[-1, 4]);
        slice_helpers_match_elementwise(&[u32::MAX, 0], &[2, 9]);
        slice_helpers_match_elementwise(&[u64::MAX, 1 << 40], &[1, 1]);
    }

    #[test]
    fn views_agree_with_the_converting_path() {
        let values = [1.5f32, -2.0, 3.25];
        let mut bytes = vec![0u8; 12];
        write_le_slice(&values, &mut bytes);
        if let Some(b) = le_bytes(&values) {
            assert_eq!(b, &bytes[..]);
        }
        // An aligned view reads what the converter wrote; a misaligned or
        // ragged one is refused.
        let mut buf = [0u8; 32];
        let off = buf.as_ptr().align_offset(4);
        let aligned = &mut buf[off..off + 16];
        aligned[..12].copy_from_slice(&bytes);
        if let Some(v) = le_view::<f32>(&aligned[..12]) {
            assert_eq!(v, &values);
        }
        assert!(le_view::<f32>(&aligned[1..13]).is_none());
        assert!(le_view::<f32>(&aligned[..11]).is_none());
        if let Some(v) = le_view_mut::<f32>(&mut aligned[..12]) {
            v[1] = 7.0;
        }
        let mut back = [0f32; 3];
        read_le_slice(&aligned[..12], &mut back);
        assert_eq!(
            back[1],
            if cfg!(target_endian = "little") {
                7.0
            } else {
                -2.0
            }
        );
    }
}
