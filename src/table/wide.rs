//! Wide rows: plain element storage behind a per-row reader-writer spin word.
//!
//! A narrow row keeps its elements in atomic cells so that pulls can copy
//! it optimistically under the row's sequence lock. That costs little for
//! short rows, but element-wise atomic accesses cannot be vectorised: a
//! pull of a million-element row is a million scalar loads instead of a
//! `memcpy`, and a push a million scalar read-modify-writes instead of a
//! SIMD loop. Optimistic copying of plain memory is not an option either:
//! in Rust's memory model a copy that overlaps a write is a data race even
//! if the copy is thrown away.
//!
//! So rows of at least [`WIDE_ROW_CELLS`] cells (values plus update state)
//! store plain elements and exclude writers from readers instead: a pull
//! holds the row's word in shared mode for one `copy_from_slice`, a push
//! holds it exclusively while the update rule runs over a plain `&mut [T]`.
//! The word is writer-preferring: once a push waits, new pulls of that row
//! wait behind it, so a stream of pulls cannot starve pushes. Nobody sleeps
//! holding it, and every waiter spins briefly and then yields.

use std::fmt;

use crate::element::Element;
use crate::sync::{AtomicU64, Backoff, Ordering, UnsafeCell};
use crate::update::{RowMut, Update};

/// Rows with at least this many cells (values plus update state) are
/// stored wide (see [`is_wide`]). Below it the atomic cells of a narrow row are as fast as a
/// vectorised loop, and pulls stay optimistic.
pub(crate) const WIDE_ROW_CELLS: usize = 256;

/// True if rows of `cells` cells (values plus update state) are stored wide.
pub(crate) fn is_wide(cells: usize) -> bool {
    cells >= WIDE_ROW_CELLS
}

/// Set while a writer holds the word.
const WRITER: u64 = 1;
/// Set by a writer that waits for readers to leave; new readers wait too.
const WRITER_WAITING: u64 = 2;
/// One reader; the bits above the two flags count the readers.
const READER: u64 = 4;

/// A reader-writer spin word: many readers or one writer.
#[derive(Debug)]
struct RwWord {
    state: AtomicU64,
}

/// Shared access; dropping it (also on unwind) lets writers in.
struct ReadGuard<'a>(&'a RwWord);

/// Exclusive access; dropping it (also on unwind) publishes the writes.
struct WriteGuard<'a>(&'a RwWord);

impl RwWord {
    fn new() -> Self {
        RwWord {
            state: AtomicU64::new(0),
        }
    }

    /// Takes the word shared, spinning (then yielding) while a writer holds
    /// it or waits for it.
    fn read(&self) -> ReadGuard<'_> {
        self.lock_shared();
        ReadGuard(self)
    }

    /// Takes the word shared without a guard; [`unlock_shared`](Self::unlock_shared)
    /// gives it back.
    fn lock_shared(&self) {
        let mut backoff = Backoff::new();
        loop {
            // Relaxed: only a guess for the CAS, which orders the access.
            let state = self.state.load(Ordering::Relaxed);
            if state & (WRITER | WRITER_WAITING) == 0
                // SYNC POINT: Acquire on success pairs with the Release
                // `fetch_and` in `WriteGuard::drop`: the copy this reader
                // makes sees everything the last writer stored.
                && self
                    .state
                    .compare_exchange_weak(
                        state,
                        state + READER,
                        Ordering::Acquire,
                        Ordering::Relaxed,
                    )
                    .is_ok()
            {
                return;
            }
            backoff.snooze();
        }
    }

    /// Gives back one shared hold taken with [`lock_shared`](Self::lock_shared).
    fn unlock_shared(&self) {
        // SYNC POINT: Release pairs with the Acquire CAS in `RwWord::write`:
        // everything the holder read happens-before the next writer's stores.
        self.state.fetch_sub(READER, Ordering::Release);
    }

    /// Takes the word exclusively, spinning (then yielding) while readers
    /// or another writer hold it. Announces itself so that no new reader
    /// gets in meanwhile.
    fn write(&self) -> WriteGuard<'_> {
        let mut backoff = Backoff::new();
        loop {
            // Relaxed: only a guess for the CAS, which orders the access.
            let state = self.state.load(Ordering::Relaxed);
            if state & !WRITER_WAITING == 0 {
                // SYNC POINT: Acquire on success pairs with the Release
                // `fetch_sub` in `ReadGuard::drop` and the Release
                // `fetch_and` in `WriteGuard::drop`: every earlier reader's
                // copy and writer's stores happen-before this writer's
                // stores. Taking the word clears WRITER_WAITING; another
                // waiting writer sets it again on its next round.
                if self
                    .state
                    .compare_exchange_weak(state, WRITER, Ordering::Acquire, Ordering::Relaxed)
                    .is_ok()
                {
                    return WriteGuard(self);
                }
            } else if state & WRITER_WAITING == 0 {
                // Relaxed: the flag only holds new readers back; it
                // publishes nothing.
                self.state.fetch_or(WRITER_WAITING, Ordering::Relaxed);
            }
            backoff.snooze();
        }
    }
}

impl Drop for ReadGuard<'_> {
    fn drop(&mut self) {
        self.0.unlock_shared();
    }
}

impl Drop for WriteGuard<'_> {
    fn drop(&mut self) {
        // SYNC POINT: Release pairs with the Acquire CASes in `RwWord::read`
        // and `RwWord::write`. `fetch_and` keeps a WRITER_WAITING flag that
        // another writer set meanwhile.
        self.0.state.fetch_and(!WRITER, Ordering::Release);
    }
}

/// A wide row: its word, then `width` values followed by the update
/// rule's state, as plain elements.
pub(crate) struct WideRow<T: Element> {
    word: RwWord,
    cells: UnsafeCell<Box<[T]>>,
}

// SAFETY: the elements are only reached through `apply` (holding the word
// exclusively) and `read_into` and `with_cells` (holding it shared), so no
// two threads ever access them in a conflicting way; `T: Element` is
// `Send + Sync`.
unsafe impl<T: Element> Sync for WideRow<T> {}

impl<T: Element> WideRow<T> {
    /// A row holding `cells` (values then state).
    pub(crate) fn new(cells: Box<[T]>) -> Self {
        WideRow {
            word: RwWord::new(),
            cells: UnsafeCell::new(cells),
        }
    }

    /// Applies `delta` with `update` holding the row exclusively.
    #[inline]
    pub(crate) fn apply(&self, width: usize, update: &dyn Update<T>, delta: &[T]) {
        let _guard = self.word.write();
        self.cells.with_mut(|cells| {
            // SAFETY: the write guard excludes every other reader and writer
            // of the cells until it drops, after this borrow ends.
            let cells = unsafe { &mut **cells };
            let (values, state) = cells.split_at_mut(width);
            update.apply(&mut RowMut::plain(values), &mut RowMut::plain(state), delta);
        });
    }

    /// Calls `f` with the row's first `len` cells in place, holding the
    /// row shared while it runs: pushes to the row wait until it returns.
    #[inline]
    pub(crate) fn with_cells<R>(&self, len: usize, f: impl FnOnce(&[T]) -> R) -> R {
        let _guard = self.word.read();
        self.cells.with(|cells| {
            // SAFETY: as in `read_into`: the read guard excludes writers
            // until it drops, after this borrow (and `f`) ends.
            let cells = unsafe { &**cells };
            f(&cells[..len])
        })
    }

    /// Takes the row shared, as `with_cells` does for the length of a call,
    /// until [`release_hold`](Self::release_hold), and returns where its
    /// first `len` cells are: for a row sent from where it lies by a device
    /// that reads it after this call returns. Pushes to the row wait until
    /// the hold is released.
    pub(crate) fn hold(&self, len: usize) -> *const T {
        self.word.lock_shared();
        // The cells' address only; they are read (by whoever has the
        // pointer) while the word is held shared, which excludes writers.
        self.cells.with(|cells| {
            // SAFETY: the shared hold taken above excludes writers; the
            // borrow only lasts to take the address.
            let cells = unsafe { &**cells };
            cells[..len].as_ptr()
        })
    }

    /// Gives back a hold taken with [`hold`](Self::hold).
    ///
    /// # Safety
    /// Once per hold, after the last read through its pointer: a second
    /// release would let a writer in while another holder still reads.
    pub(crate) unsafe fn release_hold(&self) {
        self.word.unlock_shared();
    }

    /// Copies the row's first `out.len()` cells into `out`, holding the row
    /// shared: a consistent copy, never a torn one.
    #[inline]
    pub(crate) fn read_into(&self, out: &mut [T]) {
        let _guard = self.word.read();
        self.cells.with(|cells| {
            // SAFETY: the read guard excludes writers until it drops, after
            // this borrow ends; other readers only read.
            let cells = unsafe { &**cells };
            out.copy_from_slice(&cells[..out.len()]);
        });
    }
}

impl<T: Element> fmt::Debug for WideRow<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The elements are not shown: reading them needs the word.
        f.debug_struct("WideRow").field("word", &self.word).finish()
    }
}

/// Loom models of a hold that outlives a borrow ([`WideRow::hold`]); run
/// with the crate's other models (`.ci/run`).
#[cfg(all(test, laggard_loom))]
mod loom_models {
    use super::*;
    use crate::sync::{Arc, AtomicUsize, thread};
    use crate::update::Sum;

    const WIDTH: usize = 4;

    /// The row's values, as the holder of a hold whose pointer is
    /// `values` reads them; panics if torn. The read goes through the
    /// row's cell, so that loom sees it: a read not ordered after the last
    /// push's writes (or before the next's) is a race it reports.
    fn read(row: &WideRow<i64>, values: usize) -> i64 {
        row.cells.with(|cells| {
            // SAFETY: the caller holds the row (a hold taken with
            // `hold(WIDTH)`, not yet released), which excludes writers.
            let cells = unsafe { &**cells };
            assert_eq!(cells.as_ptr() as usize, values, "the hold's pointer");
            assert!(cells.iter().all(|&v| v == cells[0]), "torn row {cells:?}");
            cells[0]
        })
    }

    /// A hold taken on one thread and released on another keeps a push out
    /// for all that time: both threads read the same, whole version of the
    /// row, and the push gets in after the release.
    ///
    /// Bounded to one preemption, as `tests/loom.rs`'s model of a push
    /// waiting for two pulls is and for the same reason: with more, the
    /// spinning threads yield to each other without end and loom gives up
    /// ("exceeded maximum number of branches").
    #[test]
    fn loom_a_push_waits_for_a_hold_released_on_another_thread() {
        let mut builder = loom::model::Builder::new();
        builder.preemption_bound = Some(1);
        builder.check(|| {
            let row = Arc::new(WideRow::new(vec![0i64; WIDTH].into()));
            let handed = Arc::new(AtomicUsize::new(0));
            let (r1, h1) = (Arc::clone(&row), Arc::clone(&handed));
            let holder = thread::spawn(move || {
                let values = r1.hold(WIDTH) as usize;
                let seen = read(&r1, values);
                // Release: hands the hold (and the row's address) over; pairs
                // with the Acquire load below.
                h1.store(values, Ordering::Release);
                seen
            });
            let (r2, h2) = (Arc::clone(&row), Arc::clone(&handed));
            let releaser = thread::spawn(move || {
                let values = loop {
                    // Acquire: pairs with the holder's Release store.
                    match h2.load(Ordering::Acquire) {
                        0 => thread::yield_now(),
                        v => break v,
                    }
                };
                let seen = read(&r2, values);
                // SAFETY: the one release of the holder's hold, after the
                // last read through it.
                unsafe { r2.release_hold() };
                seen
            });
            let r3 = Arc::clone(&row);
            let pusher = thread::spawn(move || r3.apply(WIDTH, &Sum, &[5; WIDTH]));
            let (first, second) = (holder.join().unwrap(), releaser.join().unwrap());
            pusher.join().unwrap();
            assert_eq!(first, second, "the row changed while it was held");
            assert!(first == 0 || first == 5, "impossible value {first}");
            let mut now = [0i64; WIDTH];
            row.read_into(&mut now);
            assert_eq!(now, [5; WIDTH]);
        });
    }
}
