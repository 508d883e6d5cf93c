//! The sharded parameter table.
//!
//! A [`Table`] holds rows of a fixed width keyed by `u64`, split into shards
//! by a [`ShardMap`]. Dense tables preallocate every key of a range (model
//! weights); sparse tables create rows on first push (embeddings over huge
//! key spaces). Any number of threads may push and pull at once. Pushes to
//! one row are serialized by a word in that row. Narrow rows (fewer than
//! 256 elements of values plus update state) keep atomic cells under a
//! sequence lock, and pulls copy them optimistically without writing shared
//! memory. Wide rows keep plain elements, which pushes update and pulls copy
//! with vectorised loops, holding the row's reader-writer word exclusively
//! or shared.

mod dense;
mod init;
mod placement;
mod row;
mod sparse;
mod wide;

use std::any::Any;
use std::ops::Range;
use std::sync::{Arc, Weak};

pub use init::Init;
pub use placement::{Placement, ShardMap};

use crate::clock::Consistency;
use crate::element::Element;
use crate::error::{Error, Result, invalid};
use crate::update::{RowMut, Sum, Update};
use dense::DenseShard;
use row::RowRef;
use sparse::SparseShard;
use wide::WideRow;

use crate::transport::HeldMemory;

/// Dense or sparse storage, with what each needs.
#[derive(Debug, Clone, PartialEq)]
enum Kind {
    Dense { keys: Range<u64> },
    Sparse { capacity: usize },
}

/// The description of a table: storage kind, row width, update rule,
/// sharding, initial values and consistency model. Build a [`Table`] from it
/// with [`Table::new`]; everything is validated there.
///
/// ```
/// use laggard::{Consistency, Init, Placement, Sgd, TableSpec};
///
/// let spec = TableSpec::<f32>::dense(0..1_000, 16)
///     .update(Sgd::new(0.05))
///     .shards(4)
///     .placement(Placement::RoundRobin)
///     .init(Init::Uniform { low: -0.1, high: 0.1, seed: 7 })
///     .consistency(Consistency::Ssp { staleness: 3 });
/// assert_eq!(spec.width(), 16);
/// ```
#[derive(Debug, Clone)]
pub struct TableSpec<T: Element> {
    kind: Kind,
    width: usize,
    update: Arc<dyn Update<T>>,
    shards: usize,
    placement: Option<Placement>,
    init: Init,
    consistency: Consistency,
    max_rows_per_shard: Option<usize>,
}

impl<T: Element> TableSpec<T> {
    fn with_kind(kind: Kind, width: usize) -> Self {
        TableSpec {
            kind,
            width,
            update: Arc::new(Sum),
            shards: 1,
            placement: None,
            init: Init::Zeros,
            consistency: Consistency::Bsp,
            max_rows_per_shard: None,
        }
    }

    /// A dense table with one row of `width` elements for every key in `keys`.
    pub fn dense(keys: Range<u64>, width: usize) -> Self {
        Self::with_kind(Kind::Dense { keys }, width)
    }

    /// A sparse table of `width`-element rows, created on first push, for
    /// any `u64` key.
    pub fn sparse(width: usize) -> Self {
        Self::with_kind(Kind::Sparse { capacity: 0 }, width)
    }

    /// The update rule applied to pushes (default [`Sum`]).
    pub fn update<U: Update<T>>(mut self, rule: U) -> Self {
        self.update = Arc::new(rule);
        self
    }

    /// The update rule, already shared.
    pub fn update_shared(mut self, rule: Arc<dyn Update<T>>) -> Self {
        self.update = rule;
        self
    }

    /// Number of shards (default 1).
    pub fn shards(mut self, shards: usize) -> Self {
        self.shards = shards;
        self
    }

    /// How keys map to shards (default: `Range` for dense, `Hash` for sparse).
    pub fn placement(mut self, placement: Placement) -> Self {
        self.placement = Some(placement);
        self
    }

    /// Initial values of rows (default zeros).
    pub fn init(mut self, init: Init) -> Self {
        self.init = init;
        self
    }

    /// The consistency model workers use with this table (default BSP).
    pub fn consistency(mut self, consistency: Consistency) -> Self {
        self.consistency = consistency;
        self
    }

    /// For sparse tables: the number of rows expected, to size the trie's
    /// root. Rows beyond it are fine; it only saves a level or two.
    pub fn capacity_hint(mut self, rows: usize) -> Self {
        if let Kind::Sparse { capacity } = &mut self.kind {
            *capacity = rows;
        }
        self
    }

    /// For sparse tables: the most rows each shard may hold (unlimited by
    /// default). A push that would create a row past it is refused with
    /// [`Error::TableFull`], and changes nothing, so a runaway key space
    /// (features hashed into all of `u64`, a bug that makes every key new)
    /// is an error the job can report, not a server process killed for its
    /// memory. A row costs `(width + Update::state_len) × element size`
    /// bytes plus some tens of bytes for its place in the trie; sparse keys
    /// are spread over the shards by hash, so leave some room above
    /// `rows / shards`.
    ///
    /// ```
    /// use laggard::{Error, Table, TableSpec};
    ///
    /// let table = Table::new(TableSpec::<f32>::sparse(4).max_rows_per_shard(2))?;
    /// table.push(7, &[1.0; 4])?;
    /// table.push(9, &[1.0; 4])?;
    /// table.push(7, &[1.0; 4])?; // an existing row is always there to push to
    /// assert!(matches!(table.push(11, &[1.0; 4]), Err(Error::TableFull { limit: 2, .. })));
    /// assert_eq!(table.rows(), 2);
    /// # Ok::<(), laggard::Error>(())
    /// ```
    pub fn max_rows_per_shard(mut self, rows: usize) -> Self {
        self.max_rows_per_shard = Some(rows);
        self
    }

    /// Elements per row.
    pub fn width(&self) -> usize {
        self.width
    }

    /// The row limit per shard ([`max_rows_per_shard`](Self::max_rows_per_shard)), if set.
    pub fn row_limit(&self) -> Option<usize> {
        self.max_rows_per_shard
    }

    /// True for a dense table.
    pub fn is_dense(&self) -> bool {
        matches!(self.kind, Kind::Dense { .. })
    }

    /// The consistency model.
    pub fn consistency_model(&self) -> Consistency {
        self.consistency
    }

    /// The update rule.
    pub fn update_rule(&self) -> &Arc<dyn Update<T>> {
        &self.update
    }

    /// The initial values.
    pub fn initial_values(&self) -> Init {
        self.init
    }

    /// The shard map this spec describes, or why it is invalid.
    pub fn shard_map(&self) -> Result<ShardMap> {
        match &self.kind {
            Kind::Dense { keys } => {
                if keys.is_empty() {
                    return Err(invalid("dense key range", format!("{keys:?} is empty")));
                }
                let placement = self.placement.unwrap_or(Placement::Range);
                if placement == Placement::Hash {
                    return Err(invalid(
                        "placement",
                        "dense tables need Range or RoundRobin placement; Hash is for sparse tables",
                    ));
                }
                ShardMap::new(placement, self.shards, keys.start..=keys.end - 1)
            }
            Kind::Sparse { .. } => ShardMap::new(
                self.placement.unwrap_or(Placement::Hash),
                self.shards,
                0..=u64::MAX,
            ),
        }
    }
}

#[derive(Debug)]
enum Storage<T: Element> {
    Dense(Box<[DenseShard<T>]>),
    Sparse(Box<[SparseShard<T>]>),
}

/// A wide row held shared ([`Table::hold_row`]); dropping it lets pushes
/// to the row in again.
pub(crate) struct RowHold<T: Element> {
    /// Keeps the row where it is: rows never move or go away while their
    /// table lives.
    table: Arc<Table<T>>,
    row: *const WideRow<T>,
    values: *const T,
    width: usize,
}

// SAFETY: the pointers point into `table`'s storage, which `table` keeps
// alive and in place; the row is held shared, so nobody writes the values
// while this lives, and reading them (the only access) from any thread is
// what a shared hold allows. `T: Element` is `Send + Sync`.
unsafe impl<T: Element> Send for RowHold<T> {}
// SAFETY: as for Send: every access through a shared reference is a read.
unsafe impl<T: Element> Sync for RowHold<T> {}

impl<T: Element> HeldMemory for RowHold<T> {
    fn bytes(&self) -> &[u8] {
        // SAFETY: `values` is the start of the row's `width` values (see
        // `WideRow::hold`), held shared until this hold drops, after this
        // borrow ends; `T` is a plain number without padding, so its bytes
        // are initialised, and on this (little-endian) host they are the
        // wire format.
        unsafe { std::slice::from_raw_parts(self.values.cast::<u8>(), self.width * T::SIZE) }
    }

    fn owner(&self) -> Weak<dyn Any + Send + Sync> {
        let owner: Arc<dyn Any + Send + Sync> = self.table.clone();
        Arc::downgrade(&owner)
    }
}

impl<T: Element> Drop for RowHold<T> {
    fn drop(&mut self) {
        // SAFETY: `row` is alive (`table` keeps it) and this is the one
        // release of the hold `hold_row` took; `bytes()` borrows end before
        // the hold drops.
        unsafe { (*self.row).release_hold() };
    }
}

/// One row as seen by [`Table::visit_shard`]: its key, values and the
/// update rule's state, copied consistently.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RowSnapshot<'a, T> {
    /// The row's key.
    pub key: u64,
    /// The row's values (`width` elements).
    pub values: &'a [T],
    /// The update rule's per-row state (`state_len` elements).
    pub state: &'a [T],
}

/// A sharded table of rows, safe to push to and pull from on any number of
/// threads at once.
///
/// ```
/// use laggard::{Table, TableSpec};
///
/// let table = Table::new(TableSpec::<i64>::dense(0..100, 4).shards(2))?;
/// table.push(7, &[1, 2, 3, 4])?;
/// table.push_batch(&[7, 8], &[10, 10, 10, 10, 1, 1, 1, 1])?;
/// let mut rows = [0; 8];
/// table.pull_batch(&[7, 8], &mut rows)?;
/// assert_eq!(rows, [11, 12, 13, 14, 1, 1, 1, 1]);
/// assert!(table.push(100, &[0; 4]).is_err()); // outside 0..100
/// # Ok::<(), laggard::Error>(())
/// ```
///
/// # Progress guarantees
/// - **pull** of a *narrow* row (values plus update state under 256
///   elements) copies it optimistically and retries if a push to that row
///   overlapped the copy; after four such retries it takes the row's write
///   lock, so it finishes even under a continuous stream of pushes. A pull
///   of a *wide* row holds the row's word shared for one `memcpy`; it spins,
///   then yields, only while a push to that same row holds the word or
///   waits for it. Either way a pull never waits for pushes to other rows.
///   A pull of a sparse row finds it wait-free (one load per trie level, at
///   most 16 levels).
/// - **push** holds the row's word exclusively while it applies the update
///   rule to that one row (no allocation, no system calls under it). It
///   spins, then yields, only while another push to the *same row* holds
///   the word, or (wide rows) pulls of that row are copying it; once it
///   waits, new pulls of the row wait behind it, so pulls cannot starve it.
///   A push that creates a sparse row is lock-free: its CAS fails only when
///   another insert into the same trie slot succeeded.
/// - No operation takes a `Mutex` or `RwLock`.
#[derive(Debug)]
pub struct Table<T: Element> {
    spec: TableSpec<T>,
    map: ShardMap,
    width: usize,
    state_len: usize,
    storage: Storage<T>,
    /// `Some(s)` when only shard `s` is stored here (a server's part of a
    /// distributed table); keys of other shards are rejected.
    owned: Option<usize>,
}

impl<T: Element> Table<T> {
    /// Builds a table, validating the spec and allocating dense rows.
    pub fn new(spec: TableSpec<T>) -> Result<Self> {
        Self::build(spec, None)
    }

    /// Builds the part of a table that one server shard stores: rows of
    /// shard `shard` only (dense rows of other shards are not allocated).
    /// Pushes and pulls of keys that belong to another shard return
    /// [`Error::KeyNotOwned`].
    ///
    /// ```
    /// use laggard::{Error, Table, TableSpec};
    ///
    /// let part = Table::for_shard(TableSpec::<i64>::dense(0..100, 2).shards(2), 1)?;
    /// part.push(60, &[1, 1])?;
    /// assert!(matches!(part.push(10, &[1, 1]), Err(Error::KeyNotOwned { owner: 0, .. })));
    /// assert_eq!(part.rows(), 50);
    /// # Ok::<(), laggard::Error>(())
    /// ```
    pub fn for_shard(spec: TableSpec<T>, shard: usize) -> Result<Self> {
        let shards = spec.shard_map()?.shards();
        if shard >= shards {
            return Err(Error::ShardOutOfRange { shard, shards });
        }
        Self::build(spec, Some(shard))
    }

    fn build(spec: TableSpec<T>, owned: Option<usize>) -> Result<Self> {
        let width = spec.width;
        if width == 0 {
            return Err(invalid("table width", "rows need at least one element"));
        }
        spec.update.validate()?;
        spec.init.validate()?;
        let map = spec.shard_map()?;
        let limit = match (&spec.kind, spec.max_rows_per_shard) {
            (_, None) => usize::MAX,
            (Kind::Dense { .. }, Some(_)) => {
                return Err(invalid(
                    "max_rows_per_shard",
                    "only sparse tables have a row limit; a dense table's rows are its key range",
                ));
            }
            (Kind::Sparse { .. }, Some(0)) => {
                return Err(invalid(
                    "max_rows_per_shard",
                    "0 would refuse every push; a shard must be allowed one row at least",
                ));
            }
            (Kind::Sparse { .. }, Some(limit)) => limit,
        };
        let state_len = spec.update.state_len(width);
        // A rule of the user's may ask for any amount of state: one row of
        // it must be addressable before anything is allocated or indexed.
        let row_fits = width
            .checked_add(state_len)
            .and_then(|cells| cells.checked_mul(std::mem::size_of::<T>()))
            .is_some_and(|bytes| bytes <= isize::MAX as usize);
        if !row_fits {
            return Err(invalid(
                "table width",
                format!(
                    "a row of {width} elements and {state_len} elements of update-rule state \
                     (Update::state_len) is larger than any memory"
                ),
            ));
        }
        let storage = match spec.kind {
            Kind::Dense { .. } => {
                let shards = (0..map.shards())
                    .map(|shard| {
                        let stored = owned.is_none_or(|o| o == shard);
                        let rows = if stored { map.shard_len(shard) } else { 0 };
                        let rows = usize::try_from(rows)
                            .map_err(|_| Error::OutOfMemory { bytes: usize::MAX })?;
                        DenseShard::new(rows, width, state_len, &spec.init, |local| {
                            map.key_at(shard, local)
                        })
                    })
                    .collect::<Result<_>>()?;
                Storage::Dense(shards)
            }
            Kind::Sparse { capacity } => Storage::Sparse(
                (0..map.shards())
                    .map(|shard| {
                        let stored = owned.is_none_or(|o| o == shard);
                        let capacity = if stored { capacity / map.shards() } else { 0 };
                        let capacity = capacity.min(limit);
                        SparseShard::new(shard, capacity, limit, width, state_len, spec.init)
                    })
                    .collect(),
            ),
        };
        Ok(Table {
            spec,
            map,
            width,
            state_len,
            storage,
            owned,
        })
    }

    /// The shard this table stores alone, if it was built with
    /// [`Table::for_shard`].
    pub fn owned_shard(&self) -> Option<usize> {
        self.owned
    }

    /// Checks that `shard` (where `key` lives) is stored here.
    #[inline]
    fn check_owned(&self, key: u64, shard: usize) -> Result<usize> {
        match self.owned {
            Some(owned) if owned != shard => Err(Error::KeyNotOwned {
                key,
                owner: shard,
                shard: owned,
            }),
            _ => Ok(shard),
        }
    }

    /// The shard of `key`, if the key is valid and its shard stored here.
    #[inline]
    fn stored_shard(&self, key: u64) -> Result<usize> {
        self.check_owned(key, self.map.shard_of(key)?)
    }

    /// Elements per row.
    pub fn width(&self) -> usize {
        self.width
    }

    /// State elements the update rule keeps per row.
    pub fn state_len(&self) -> usize {
        self.state_len
    }

    /// The spec the table was built from.
    pub fn spec(&self) -> &TableSpec<T> {
        &self.spec
    }

    /// Which shard owns which key.
    pub fn shard_map(&self) -> &ShardMap {
        &self.map
    }

    /// Number of rows that exist: every key for a dense table, the rows
    /// pushed so far for a sparse one.
    pub fn rows(&self) -> usize {
        match &self.storage {
            Storage::Dense(shards) => shards.iter().map(DenseShard::len).sum(),
            Storage::Sparse(shards) => shards.iter().map(SparseShard::len).sum(),
        }
    }

    /// `key`'s row, created first in a sparse table.
    #[inline]
    fn row_for_push(&self, key: u64) -> Result<RowRef<'_, T>> {
        Ok(match &self.storage {
            Storage::Dense(shards) => {
                let (shard, local) = self.map.locate(key)?;
                shards[self.check_owned(key, shard)?].row(local as usize)
            }
            Storage::Sparse(shards) => shards[self.stored_shard(key)?].insert(key)?.row(),
        })
    }

    /// `key`'s row, or `None` for a sparse row never pushed.
    #[inline]
    fn row_for_pull(&self, key: u64) -> Result<Option<RowRef<'_, T>>> {
        Ok(match &self.storage {
            Storage::Dense(shards) => {
                let (shard, local) = self.map.locate(key)?;
                Some(shards[self.check_owned(key, shard)?].row(local as usize))
            }
            Storage::Sparse(shards) => shards[self.stored_shard(key)?]
                .find(key)
                .map(|leaf| leaf.row()),
        })
    }

    fn check_width(&self, got: usize) -> Result<()> {
        if got == self.width {
            Ok(())
        } else {
            Err(Error::WidthMismatch {
                expected: self.width,
                got,
            })
        }
    }

    fn check_batch(&self, keys: &[u64], values: usize) -> Result<()> {
        if keys.len().checked_mul(self.width) != Some(values) {
            return Err(Error::BatchShape {
                keys: keys.len(),
                width: self.width,
                values,
            });
        }
        self.check_keys(keys)
    }

    /// The keys among `keys` whose rows do not exist yet, each once,
    /// leaving out those `skip` picks; with how many of them each shard
    /// stores. Every key must be valid and stored here.
    pub(crate) fn missing_rows(
        &self,
        keys: impl Iterator<Item = u64>,
        skip: &dyn Fn(u64) -> bool,
    ) -> Result<(Vec<u64>, Vec<usize>)> {
        let Storage::Sparse(shards) = &self.storage else {
            return Ok((Vec::new(), Vec::new()));
        };
        let mut missing = std::collections::HashSet::new();
        let mut per_shard = vec![0usize; shards.len()];
        for key in keys {
            let shard = self.stored_shard(key)?;
            if shards[shard].find(key).is_none() && !skip(key) && missing.insert(key) {
                per_shard[shard] += 1;
            }
        }
        Ok((missing.into_iter().collect(), per_shard))
    }

    /// Checks that the rows pushing to `keys` would create fit within the
    /// row limit ([`TableSpec::max_rows_per_shard`]) of their shards, with
    /// `spoken` rows spoken for already in each shard concerned (by pushes
    /// not applied yet; a server's part is one shard), whose keys
    /// `promised` picks: those count as created.
    /// Every key must be valid and stored here. Exact while no other
    /// thread creates rows meanwhile, as on a server, whose own thread
    /// alone pushes.
    pub(crate) fn check_room(
        &self,
        keys: impl Iterator<Item = u64>,
        promised: &dyn Fn(u64) -> bool,
        spoken: usize,
    ) -> Result<()> {
        let Storage::Sparse(shards) = &self.storage else {
            return Ok(());
        };
        if self.spec.max_rows_per_shard.is_none() {
            return Ok(());
        }
        let (_, per_shard) = self.missing_rows(keys, promised)?;
        for (shard, &wanted) in shards.iter().zip(&per_shard) {
            let after = shard.len().saturating_add(spoken).saturating_add(wanted);
            if wanted > 0 && after > shard.limit() {
                return Err(shard.full());
            }
        }
        Ok(())
    }

    /// Checks that every key is valid for this table and stored here,
    /// without touching any row.
    pub fn check_keys(&self, keys: &[u64]) -> Result<()> {
        keys.iter()
            .try_for_each(|&key| self.stored_shard(key).map(drop))
    }

    /// Applies `delta` (`width` elements) to row `key` with the table's
    /// update rule, creating the row first in a sparse table.
    pub fn push(&self, key: u64, delta: &[T]) -> Result<()> {
        self.check_width(delta.len())?;
        self.row_for_push(key)?
            .apply(self.width, &*self.spec.update, delta);
        Ok(())
    }

    /// Pushes one delta per key: `deltas` holds `keys.len() × width`
    /// elements, row after row. Every key is checked before any is applied,
    /// so an invalid batch changes nothing; so is the room for the rows it
    /// creates in a sparse table with a row limit, unless other threads
    /// create rows in the same shards meanwhile.
    pub fn push_batch(&self, keys: &[u64], deltas: &[T]) -> Result<()> {
        self.check_batch(keys, deltas.len())?;
        self.check_room(keys.iter().copied(), &|_| false, 0)?;
        for (&key, delta) in keys.iter().zip(deltas.chunks_exact(self.width)) {
            self.row_for_push(key)?
                .apply(self.width, &*self.spec.update, delta);
        }
        Ok(())
    }

    /// Copies row `key` into `out` (`width` elements). A sparse row that was
    /// never pushed reads as its initial values; it is not created.
    pub fn pull(&self, key: u64, out: &mut [T]) -> Result<()> {
        self.check_width(out.len())?;
        self.pull_unchecked_width(key, out)
    }

    fn pull_unchecked_width(&self, key: u64, out: &mut [T]) -> Result<()> {
        match self.row_for_pull(key)? {
            Some(row) => row.read_into(out),
            None => self.fill_initial(key, out),
        }
        Ok(())
    }

    /// Fills `out` with the initial values of row `key` (a sparse row
    /// that was never pushed to).
    fn fill_initial(&self, key: u64, out: &mut [T]) {
        out.iter_mut()
            .enumerate()
            .for_each(|(i, o)| *o = self.spec.init.value(key, i));
    }

    /// Calls `f` with row `key`'s values: in place for a wide row, which is
    /// held shared while `f` runs (pushes to that row wait until it
    /// returns), a copy otherwise. For a server that sends a long row
    /// straight from the table; only its own thread pushes, so nothing
    /// waits on it.
    pub(crate) fn with_row<R>(&self, key: u64, f: impl FnOnce(&[T]) -> R) -> Result<R> {
        Ok(match self.row_for_pull(key)? {
            Some(row) => row.with_values(self.width, f),
            None => {
                let mut values = vec![T::ZERO; self.width];
                self.fill_initial(key, &mut values);
                f(&values)
            }
        })
    }

    /// Holds row `key`'s values shared, in place, until the hold is
    /// dropped (pushes to the row wait meanwhile): for a server whose
    /// transport sends the row from where it lies. `None` where the row has
    /// no such place: a narrow row (kept in atomic cells), a sparse row
    /// never pushed, or a big-endian host (rows are sent little-endian).
    pub(crate) fn hold_row(self: &Arc<Self>, key: u64) -> Result<Option<RowHold<T>>> {
        if cfg!(target_endian = "big") {
            return Ok(None);
        }
        let Some(RowRef::Wide(row)) = self.row_for_pull(key)? else {
            return Ok(None);
        };
        let values = row.hold(self.width);
        Ok(Some(RowHold {
            table: Arc::clone(self),
            row,
            values,
            width: self.width,
        }))
    }

    /// Copies one row per key into `out` (`keys.len() × width` elements).
    /// Each row is consistent on its own; the batch is not one snapshot.
    pub fn pull_batch(&self, keys: &[u64], out: &mut [T]) -> Result<()> {
        self.check_batch(keys, out.len())?;
        for (&key, out) in keys.iter().zip(out.chunks_exact_mut(self.width)) {
            self.pull_unchecked_width(key, out)?;
        }
        Ok(())
    }

    /// Sets row `key` to exactly `row.values` with update state
    /// `row.state`, as [`visit_shard`](Self::visit_shard) gave them (e.g.
    /// read back from a checkpoint), creating the row first in a sparse
    /// table. Excludes pushes to the row as a push does; the rule is not
    /// applied. A row of the wrong width or state length, or a key this
    /// table does not store, is an error and changes nothing.
    ///
    /// ```
    /// use laggard::{Adam, Table, TableSpec};
    ///
    /// let spec = || TableSpec::<f32>::dense(0..4, 2).update(Adam::new(0.1));
    /// let (trained, fresh) = (Table::new(spec())?, Table::new(spec())?);
    /// trained.push(1, &[0.5, -0.5])?;
    /// trained.visit_shard(0, |row| fresh.restore_row(row).unwrap())?;
    /// trained.push(1, &[0.5, -0.5])?; // Adam's moments and step count came along,
    /// fresh.push(1, &[0.5, -0.5])?; // so both apply the second push alike
    /// let (mut a, mut b) = ([0.0; 2], [0.0; 2]);
    /// trained.pull(1, &mut a)?;
    /// fresh.pull(1, &mut b)?;
    /// assert_eq!(a, b);
    /// # Ok::<(), laggard::Error>(())
    /// ```
    pub fn restore_row(&self, row: RowSnapshot<'_, T>) -> Result<()> {
        self.check_width(row.values.len())?;
        if row.state.len() != self.state_len {
            return Err(Error::StateMismatch {
                expected: self.state_len,
                got: row.state.len(),
            });
        }
        let cells: Vec<T> = row.values.iter().chain(row.state).copied().collect();
        self.restore_cells(row.key, &cells)
    }

    /// [`restore_row`](Self::restore_row) from the row's values followed
    /// by its state, as one slice (a checkpoint's record).
    pub(crate) fn restore_cells(&self, key: u64, cells: &[T]) -> Result<()> {
        if cells.len() != self.width + self.state_len {
            return Err(Error::StateMismatch {
                expected: self.state_len,
                got: cells.len().saturating_sub(self.width),
            });
        }
        self.row_for_push(key)?.apply(self.width, &Overwrite, cells);
        Ok(())
    }

    /// Calls `f` with a consistent copy of every row of shard `shard`
    /// (values and update state), e.g. to write a checkpoint. Dense rows
    /// come in key order, sparse rows in no particular order; rows pushed
    /// concurrently are seen before or after the push, never torn.
    pub fn visit_shard(&self, shard: usize, mut f: impl FnMut(RowSnapshot<'_, T>)) -> Result<()> {
        if shard >= self.map.shards() {
            return Err(Error::ShardOutOfRange {
                shard,
                shards: self.map.shards(),
            });
        }
        let mut buf = vec![T::ZERO; self.width + self.state_len];
        let mut emit = |key: u64, row: RowRef<'_, T>| {
            row.read_into(&mut buf);
            let (values, state) = buf.split_at(self.width);
            f(RowSnapshot { key, values, state });
        };
        match &self.storage {
            Storage::Dense(shards) => {
                for local in 0..shards[shard].len() {
                    emit(
                        self.map.key_at(shard, local as u64),
                        shards[shard].row(local),
                    );
                }
            }
            Storage::Sparse(shards) => shards[shard].for_each(|leaf| emit(leaf.key, leaf.row())),
        }
        Ok(())
    }
}

/// The rule [`Table::restore_row`] applies: the "delta" is the row's values
/// followed by its state, and both are copied in as they are.
#[derive(Debug)]
struct Overwrite;

impl<T: Element> Update<T> for Overwrite {
    fn apply(&self, row: &mut RowMut<'_, T>, state: &mut RowMut<'_, T>, cells: &[T]) {
        let (values, saved_state) = cells.split_at(row.len());
        row.zip_update(values, |_, v| v);
        state.zip_update(saved_state, |_, v| v);
    }
}
