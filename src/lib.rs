//! # laggard
//!
//! The core of an embeddable parameter server for distributed machine
//! learning: a sharded table of parameters that many workers push gradients
//! into and pull weights from at once, server-side [`Update`] rules (sum,
//! SGD, Adagrad, Adam, or your own), a vector-clock [`StalenessGate`]
//! that enforces BSP, SSP(s) or Async consistency per table, and the
//! runtime that runs server shards and workers over any [`transport`].
//!
//! ## A cluster
//!
//! Server shards hold the tables; each [`Worker`] pulls rows (from its
//! cache while they are fresh enough for the table's consistency model),
//! pushes deltas (summed locally until the clock ends) and advances its
//! clock (waiting only when it would get too far ahead). [`Cluster`] runs
//! it all in one process, over the in-process transport:
//!
//! ```
//! use laggard::{Cluster, ClusterSpec, Consistency, Sgd, TableSpec};
//!
//! // 2 server shards, 4 workers; 1,000 rows of 16 floats under SSP(2).
//! let spec = ClusterSpec::new(2, 4).table(
//!     "weights",
//!     TableSpec::<f32>::dense(0..1_000, 16)
//!         .update(Sgd::new(0.2))
//!         .consistency(Consistency::Ssp { staleness: 2 }),
//! );
//! let cluster = Cluster::start(spec)?;
//! cluster.run_workers(|worker| {
//!     let weights = worker.table::<f32>("weights")?;
//!     let keys: Vec<u64> = (0..8).map(|i| 8 * u64::from(worker.id().0) + i).collect();
//!     let mut rows = vec![0.0f32; keys.len() * 16];
//!     for _ in 0..50 {
//!         worker.pull(&weights, &keys, &mut rows)?;
//!         // Gradient of (x - 1)^2 / 2 for every element.
//!         let grads: Vec<f32> = rows.iter().map(|x| x - 1.0).collect();
//!         worker.push(&weights, &keys, &grads)?;
//!         worker.clock()?;
//!     }
//!     Ok(())
//! })?;
//! let mut row = [0.0f32; 16];
//! cluster.read("weights", &[31], &mut row)?;
//! assert!(row.iter().all(|x| (x - 1.0).abs() < 1e-3));
//! cluster.shutdown()?;
//! # Ok::<(), laggard::Error>(())
//! ```
//!
//! The same worker code runs with servers and workers in separate
//! processes or on other hosts: bind an endpoint of a transport crate
//! (`laggard-shm` for processes on one host, `laggard-tcp` across hosts,
//! `laggard-rdma` over RDMA verbs), then [`Server::new`] and
//! [`Server::run`] in each server process, [`Worker::connect`] in each
//! worker process.
//!
//! ## Without the runtime
//!
//! The table and the gate are usable on their own, for threads that share
//! one process:
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
//! - [`Cluster`] / [`ClusterSpec`] / [`Server`] / [`Worker`]: the runtime.
//!   Workers cache pulled rows, coalesce pushes per clock and read their
//!   own pushes at once (for linear rules, see
//!   [`Update::replay_scale`]); servers park pulls until the slowest
//!   worker allows them, apply every push exactly once (also across
//!   reconnects), and declare a silent worker dead so it stops holding
//!   the others back. Every blocking call has a deadline.
//! - [`transport`]: the `Transport` / `Endpoint` traits every transport
//!   implements (shaped so that shared memory and RDMA need not copy), and
//!   the in-process transport.
//! - [`proto`]: the wire protocol, sans-IO: the codec and the server's and
//!   worker's state machines, driven by the runtime and testable without
//!   threads or sockets.
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
pub use error::{Error, LONGEST_WAIT, Result, check_wait};
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
