//! Vector clocks and the staleness gate that enforces BSP, SSP and Async.
//!
//! Each worker has a clock: the number of iterations it has completed.
//! Under SSP with staleness `s`, a worker at clock `c` must see every update
//! from clocks `<= c - s - 1` of every worker, so it may read only once
//! every active worker's clock is at least `c - s`. BSP is `s = 0`; Async
//! never waits. The [`StalenessGate`] holds the vector of clocks and blocks
//! readers (with a deadline) until the rule holds.

use std::fmt;
use std::sync::PoisonError;
use std::time::{Duration, Instant};

use crate::error::{Error, Result};
use crate::sync::{AtomicU64, Backoff, CachePadded, Condvar, Mutex, MutexGuard, Ordering};

/// A worker's index in a cluster (`0..P`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct WorkerId(pub u32);

impl fmt::Display for WorkerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "worker {}", self.0)
    }
}

/// How stale a worker's reads may be, chosen per table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Consistency {
    /// Bulk synchronous parallel: every worker waits at each clock for all
    /// others. Equivalent to sequential execution; stalls on stragglers.
    #[default]
    Bsp,
    /// Stale synchronous parallel: the fastest worker may be at most
    /// `staleness` clocks ahead of the slowest. A worker at clock `c`
    /// reads every update of clocks `<= c - s - 1`, from every worker, and
    /// may see newer ones.
    ///
    /// Its own updates it reads at once (read-my-writes, as in Petuum's
    /// SSP) if the table's rule is linear
    /// ([`Update::replay_scale`](crate::Update::replay_scale): [`Sum`](crate::Sum),
    /// and [`Sgd`](crate::Sgd) at a constant rate without momentum): the
    /// worker replays its pushes onto its cached rows. Under any other rule
    /// (one such as [`Adam`](crate::Adam) needs the server's state) a row
    /// answered from the cache may lack the worker's own pushes of its last
    /// `s` clocks, so a step size must suit gradients up to `s + 1` clocks
    /// stale even for rows only one worker pushes to; a step that
    /// converges under BSP may oscillate under a large `s`.
    /// [`Schedule::ssp_theorem`](crate::Schedule::ssp_theorem) shrinks the
    /// step with the bound.
    Ssp {
        /// The bound `s`; `Ssp { staleness: 0 }` behaves as `Bsp`.
        staleness: u64,
    },
    /// No waiting at all: staleness is unbounded. A row a worker pulled
    /// answers its pulls from the cache for the rest of that clock; its
    /// first pull after the next `clock` fetches the row again, as the
    /// server has it then. (A loop that never calls `clock` keeps reading
    /// its first answers; it must call `clock` or `flush` to send its
    /// pushes anyway.)
    Async,
}

impl Consistency {
    /// The staleness bound: `Some(0)` for BSP, `None` (unbounded) for Async.
    pub fn staleness(&self) -> Option<u64> {
        match *self {
            Consistency::Bsp => Some(0),
            Consistency::Ssp { staleness } => Some(staleness),
            Consistency::Async => None,
        }
    }

    /// The clock every active worker must have reached before a worker at
    /// `clock` may read: `clock - s`, or `None` if it never waits.
    pub fn required_min(&self, clock: u64) -> Option<u64> {
        self.staleness().map(|s| clock.saturating_sub(s))
    }
}

impl fmt::Display for Consistency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Consistency::Bsp => f.write_str("BSP"),
            Consistency::Ssp { staleness } => write!(f, "SSP(s={staleness})"),
            Consistency::Async => f.write_str("Async"),
        }
    }
}

/// Whether a worker still takes part.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum WorkerStatus {
    /// Running; its clock holds back readers.
    Active,
    /// Left cleanly; no longer holds anyone back.
    Left,
    /// Declared dead (e.g. missed its heartbeat deadline); no longer holds
    /// anyone back.
    Dead,
}

impl WorkerStatus {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            WorkerStatus::Active => "active",
            WorkerStatus::Left => "left",
            WorkerStatus::Dead => "dead",
        }
    }
}

/// Every worker's clock and status, indexed by [`WorkerId`].
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct VectorClock {
    entries: Vec<(u64, WorkerStatus)>,
}

impl VectorClock {
    /// `workers` active workers, all at clock 0.
    pub fn new(workers: usize) -> Self {
        VectorClock {
            entries: vec![(0, WorkerStatus::Active); workers],
        }
    }

    /// Number of workers ever registered.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True if no worker was ever registered.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Sets a worker's clock and status; ids beyond the end are added
    /// (workers in between start active at clock 0).
    pub fn set(&mut self, worker: WorkerId, clock: u64, status: WorkerStatus) {
        let i = worker.0 as usize;
        if i >= self.entries.len() {
            self.entries.resize(i + 1, (0, WorkerStatus::Active));
        }
        self.entries[i] = (clock, status);
    }

    /// A worker's clock and status.
    pub fn get(&self, worker: WorkerId) -> Option<(u64, WorkerStatus)> {
        self.entries.get(worker.0 as usize).copied()
    }

    /// The smallest clock among active workers, `None` if none is active.
    pub fn min_active(&self) -> Option<u64> {
        self.entries
            .iter()
            .filter(|e| e.1 == WorkerStatus::Active)
            .map(|e| e.0)
            .min()
    }

    /// Active workers whose clock is below `clock`, slowest first.
    pub fn behind(&self, clock: u64) -> Vec<(WorkerId, u64)> {
        let mut behind: Vec<_> = self
            .iter()
            .filter(|&(_, c, status)| status == WorkerStatus::Active && c < clock)
            .map(|(w, c, _)| (w, c))
            .collect();
        behind.sort_by_key(|&(w, c)| (c, w));
        behind
    }

    /// Every worker with its clock and status.
    pub fn iter(&self) -> impl Iterator<Item = (WorkerId, u64, WorkerStatus)> + '_ {
        self.entries
            .iter()
            .enumerate()
            .map(|(i, &(c, s))| (WorkerId(i as u32), c, s))
    }
}

/// A wait on the gate passed its deadline. Says who waited, for what, and
/// which workers were behind.
#[derive(Debug, Clone, PartialEq)]
pub struct GateTimeout {
    /// The waiting worker and its clock, if a worker waited (a server
    /// parking a request has no clock of its own).
    pub waiter: Option<(WorkerId, u64)>,
    /// The clock every active worker had to reach.
    pub needed: u64,
    /// The table's consistency model.
    pub consistency: Consistency,
    /// How long the wait lasted.
    pub waited: Duration,
    /// Active workers below `needed`, slowest first, with their clocks.
    pub behind: Vec<(WorkerId, u64)>,
    /// Those of `behind` that never connected to the server shard whose
    /// wait this was: more likely gone before they joined (a worker
    /// process that failed at start) or still starting than slow.
    pub never_connected: Vec<WorkerId>,
    /// The whole vector clock when the wait gave up.
    pub clocks: VectorClock,
}

impl fmt::Display for GateTimeout {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.waiter {
            Some((w, c)) => write!(f, "{w} at clock {c}")?,
            None => f.write_str("a request")?,
        }
        write!(
            f,
            " timed out after {:.3?} waiting under {} for every active worker to reach clock {}",
            self.waited, self.consistency, self.needed
        )?;
        if self.behind.is_empty() {
            return f.write_str(" (no worker is behind any more)");
        }
        f.write_str("; behind: ")?;
        for (i, (w, c)) in self.behind.iter().enumerate() {
            let sep = if i == 0 { "" } else { ", " };
            write!(f, "{sep}{w} at clock {c} ({} short", self.needed - c)?;
            if self.never_connected.contains(w) {
                f.write_str(", never connected")?;
            }
            f.write_str(")")?;
        }
        if !self.never_connected.is_empty() {
            f.write_str(
                ". A worker that never connected has not started yet, or its process \
                 failed before it joined: look at that worker's own output",
            )?;
        }
        Ok(())
    }
}

/// The vector clock of a table's workers, and the wait that enforces the
/// table's consistency model.
///
/// ```
/// use std::time::{Duration, Instant};
/// use laggard::{Consistency, StalenessGate, WorkerId};
///
/// let gate = StalenessGate::new(2, Consistency::Ssp { staleness: 1 });
/// let (fast, slow) = (WorkerId(0), WorkerId(1));
/// gate.advance(fast)?;
/// gate.advance(fast)?; // fast is at clock 2, slow at 0
/// let soon = Instant::now() + Duration::from_millis(10);
/// let err = gate.wait_to_read(fast, 2, soon).unwrap_err();
/// assert!(err.to_string().contains("worker 1 at clock 0"));
/// gate.advance(slow)?; // slow reaches 1 = 2 - s
/// gate.wait_to_read(fast, 2, soon)?;
/// # Ok::<(), laggard::Error>(())
/// ```
///
/// # Blocking and progress
/// `wait_to_read` and `wait_until` return at once, without locking, when the
/// rule already holds (an atomic load). Otherwise they spin briefly, then
/// sleep on a condition variable until a clock change or the deadline.
/// `advance`, `join`, `leave` and `declare_dead` take a short internal lock
/// (once per worker per clock, not per push or pull) and wake sleepers only
/// when the slowest active clock moves.
#[derive(Debug)]
pub struct StalenessGate {
    consistency: Consistency,
    /// The smallest active clock (`u64::MAX` when none is active): a copy
    /// of `clocks.min_active()` for the lock-free fast path, written only
    /// while `clocks` is locked.
    min_active: CachePadded<AtomicU64>,
    clocks: Mutex<VectorClock>,
    changed: Condvar,
}

impl StalenessGate {
    /// A gate for `workers` workers (ids `0..workers`), all at clock 0.
    pub fn new(workers: usize, consistency: Consistency) -> Self {
        let clocks = VectorClock::new(workers);
        StalenessGate {
            consistency,
            min_active: CachePadded(AtomicU64::new(clocks.min_active().unwrap_or(u64::MAX))),
            clocks: Mutex::new(clocks),
            changed: Condvar::new(),
        }
    }

    /// The consistency model the gate enforces.
    pub fn consistency(&self) -> Consistency {
        self.consistency
    }

    fn lock(&self) -> MutexGuard<'_, VectorClock> {
        // A panic elsewhere cannot leave the clocks half-updated (every
        // change is one assignment), so a poisoned lock is still usable.
        self.clocks.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Refreshes the fast-path copy of the minimum after a change, and wakes
    /// sleepers if it moved. Called with the lock held.
    fn publish(&self, clocks: &VectorClock) {
        let min = clocks.min_active().unwrap_or(u64::MAX);
        // Relaxed: only written under the lock, which orders this load.
        if self.min_active.load(Ordering::Relaxed) != min {
            // SYNC POINT: Release pairs with the Acquire loads in `wait_min`:
            // a reader that sees the new minimum also sees everything the
            // advancing worker did before `advance` (its pushes).
            self.min_active.store(min, Ordering::Release);
            self.changed.notify_all();
        }
    }

    fn entry(clocks: &mut VectorClock, worker: WorkerId) -> Result<&mut (u64, WorkerStatus)> {
        let workers = clocks.len();
        clocks
            .entries
            .get_mut(worker.0 as usize)
            .ok_or(Error::UnknownWorker { worker, workers })
    }

    /// Registers a new worker and returns its id. It starts at the slowest
    /// active clock (so it holds nobody back further), or at the highest
    /// clock seen if no worker is active.
    pub fn join(&self) -> WorkerId {
        let mut clocks = self.lock();
        let start = clocks
            .min_active()
            .unwrap_or_else(|| clocks.entries.iter().map(|e| e.0).max().unwrap_or(0));
        let id = WorkerId(clocks.entries.len() as u32);
        clocks.entries.push((start, WorkerStatus::Active));
        self.publish(&clocks);
        id
    }

    /// Moves `worker` to its next clock and returns the new clock. Call it
    /// after the worker's pushes for the clock are applied: a reader
    /// released by this advance sees them.
    pub fn advance(&self, worker: WorkerId) -> Result<u64> {
        let mut clocks = self.lock();
        let entry = Self::entry(&mut clocks, worker)?;
        if entry.1 != WorkerStatus::Active {
            return Err(Error::WorkerNotActive {
                worker,
                state: entry.1.as_str(),
            });
        }
        entry.0 += 1;
        let clock = entry.0;
        self.publish(&clocks);
        Ok(clock)
    }

    fn retire(&self, worker: WorkerId, status: WorkerStatus) -> Result<()> {
        let mut clocks = self.lock();
        let entry = Self::entry(&mut clocks, worker)?;
        if entry.1 == WorkerStatus::Active {
            entry.1 = status;
            self.publish(&clocks);
        }
        Ok(())
    }

    /// `worker` leaves cleanly: it no longer holds anyone back. Leaving
    /// twice is harmless.
    pub fn leave(&self, worker: WorkerId) -> Result<()> {
        self.retire(worker, WorkerStatus::Left)
    }

    /// `worker` is declared dead (it stopped responding): it no longer holds
    /// anyone back.
    pub fn declare_dead(&self, worker: WorkerId) -> Result<()> {
        self.retire(worker, WorkerStatus::Dead)
    }

    /// A copy of the vector clock.
    pub fn snapshot(&self) -> VectorClock {
        self.lock().clone()
    }

    /// The slowest active worker's clock, or `None` if none is active.
    pub fn min_clock(&self) -> Option<u64> {
        // Acquire: pairs with the Release store in `publish`.
        let min = self.min_active.load(Ordering::Acquire);
        (min != u64::MAX).then_some(min)
    }

    /// True if a worker at `clock` may read now.
    pub fn can_read(&self, clock: u64) -> bool {
        match self.consistency.required_min(clock) {
            // Acquire: pairs with the Release store in `publish`.
            Some(needed) => self.min_active.load(Ordering::Acquire) >= needed,
            None => true,
        }
    }

    /// Blocks until `worker`, at `clock`, may read under the gate's
    /// consistency model, or until `deadline`. The timeout error names the
    /// workers that are behind and their clocks.
    pub fn wait_to_read(&self, worker: WorkerId, clock: u64, deadline: Instant) -> Result<()> {
        match self.consistency.required_min(clock) {
            Some(needed) => self.wait_min(needed, Some((worker, clock)), deadline),
            None => Ok(()),
        }
    }

    /// Blocks until every active worker has reached `clock`, or until
    /// `deadline` (how a server parks a request that needs fresher rows).
    pub fn wait_until(&self, clock: u64, deadline: Instant) -> Result<()> {
        self.wait_min(clock, None, deadline)
    }

    fn wait_min(
        &self,
        needed: u64,
        waiter: Option<(WorkerId, u64)>,
        deadline: Instant,
    ) -> Result<()> {
        // SYNC POINT: Acquire pairs with the Release store in `publish`.
        let reached = || self.min_active.load(Ordering::Acquire) >= needed;
        if reached() {
            return Ok(());
        }
        let start = Instant::now();
        let mut backoff = Backoff::new();
        while !backoff.is_completed() {
            backoff.snooze();
            if reached() {
                return Ok(());
            }
        }
        let mut clocks = self.lock();
        loop {
            // Under the lock, `min_active` is exact: it is only written with
            // the lock held, and `publish` notifies only after writing it,
            // so a change between this check and the wait cannot be missed.
            if reached() {
                return Ok(());
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(GateTimeout {
                    waiter,
                    needed,
                    consistency: self.consistency,
                    waited: now - start,
                    behind: clocks.behind(needed),
                    // Workers of a gate are there from its start.
                    never_connected: Vec::new(),
                    clocks: clocks.clone(),
                }
                .into());
            }
            clocks = self
                .changed
                .wait_timeout(clocks, deadline - now)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }
}
