//! # laggard
//!
//! The core of an embeddable parameter server for distributed machine
//! learning: a sharded table of parameters that many threads push gradients
//! into and pull weights from at once, server-side [`Update`] rules (sum,
//! SGD, Adagrad, Adam, or your own), and a vector-clock [`StalenessGate`]
//! that enforces BSP, SSP(s) or Async consistency.
//!
//! ```
//! use std::time::{Duration, Instant};
//! use laggard::{Consistency, Sgd, StalenessGate, Table, TableSpec, WorkerId};
//!
//! // A dense table of 8 rows of 4 floats, in 2 shards, updated by SGD.
//! let weights = Table::new(TableSpec::<f32>::dense(0..8, 4).shards(2).update(Sgd::new(0.5)))?;
//! let gate = StalenessGate::new(2, Consistency::Ssp { staleness: 1 });
//!
//! std::thread::scope(|s| {
//!     for w in 0..2 {
//!         let (weights, gate) = (&weights, &gate);
//!         s.spawn(move || -> laggard::Result<()> {
//!             let me = WorkerId(w);
//!             let mut row = [0.0f32; 4];
//!             let mut clock = 0;
//!             for _ in 0..10 {
//!                 // Read only once no worker is more than s clocks behind.
//!                 gate.wait_to_read(me, clock, Instant::now() + Duration::from_secs(10))?;
//!                 weights.pull(3, &mut row)?;
//!                 // Gradient of (x - 1)^2 / 2 for every element.
//!                 let grad = row.map(|x| x - 1.0);
//!                 weights.push(3, &grad)?;
//!                 clock = gate.advance(me)?;
//!             }
//!             gate.leave(me)
//!         });
//!     }
//! });
//!
//! let mut row = [0.0f32; 4];
//! weights.pull(3, &mut row)?;
//! assert!(row.iter().all(|x| (x - 1.0).abs() < 1e-3));
//! # Ok::<(), laggard::Error>(())
//! ```
//!
//! ## Pieces
//! - [`Table`] / [`TableSpec`]: dense or sparse rows of a fixed width over
//!   `f32`, `f64`, `i32`, `i64`, `u32` or `u64`, sharded by a [`ShardMap`].
//!   No `Mutex` or `RwLock` on push or pull; a pull never sees a torn row;
//!   every push is applied exactly once (each operation documents its
//!   progress guarantee).
//! - [`Update`]: the server-side rule, with per-row state sharded with the
//!   row. Built in: [`Sum`], [`Assign`], [`Sgd`] (with momentum and
//!   [`Schedule`]s, including the SSP theorem's), [`Adagrad`], [`Adam`].
//! - [`StalenessGate`] / [`VectorClock`] / [`Consistency`]: the SSP read rule
//!   (a worker at clock `c` waits until every active worker reached
//!   `c - s`), with deadlines and timeouts that say who is behind.
//! - [`checkpoint`]: every row of a table (or of one server shard's part)
//!   with its update state, saved to bytes and restored exactly, so
//!   training resumes where it stopped.
//!
//! There is no global state: any number of tables and gates can coexist in
//! one process.
//!
//! ## Model checking
//! Every concurrent structure imports its primitives from one shim module,
//! so `RUSTFLAGS="--cfg laggard_loom" cargo test --release --test loom`
//! runs the loom models against the real code.

#![warn(missing_docs)]
#![deny(unsafe_op_in_unsafe_fn)]

pub mod checkpoint;
mod clock;
mod element;
mod error;
pub mod idhash;
pub mod proto;
mod runtime;
mod schedule;
#[doc(hidden)]
pub mod sync;
mod table;
pub mod transport;
mod update;

pub use clock::{Consistency, GateTimeout, StalenessGate, VectorClock, WorkerId, WorkerStatus};
pub use element::{Element, ElementKind, Float};
pub use error::{Error, Result};
pub use runtime::{
    Cluster, ClusterSpec, PullTicket, PushTicket, Server, ServerReport, TableHandle, Worker,
};
pub use schedule::Schedule;
pub use table::{Init, Placement, RowSnapshot, ShardMap, Table, TableSpec};
pub use update::{Adagrad, Adam, Assign, RowMut, Sgd, Sum, Update};

/// The README's examples, compiled and run as doctests so they stay true.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
