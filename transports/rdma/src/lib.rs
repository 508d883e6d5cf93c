//! RDMA verbs for laggard: a [`Transport`](laggard::transport::Transport)
//! between processes and hosts over InfiniBand or RoCE (including
//! soft-RoCE), with one-sided writes straight into the receiver's memory.
//!
//! ## How frames move
//! - **Connections** are reliable-connected (RC) queue pairs. Connection
//!   setup exchanges queue pair numbers, GIDs or LIDs, packet sequence
//!   numbers, ring addresses and keys over a TCP side channel, which then
//!   stays open to tell a crashed peer from a slow one.
//! - **Data path.** Each connection direction has a ring in the receiver's
//!   registered memory and a registered mirror of it at the sender. A
//!   lent buffer *is* the mirror's bytes; sending is one RDMA WRITE WITH
//!   IMMEDIATE of them to the same offset of the receiver's ring, and the
//!   received frame is read where it landed. A pull response is therefore
//!   written by the server's device straight into memory the worker reads.
//!   No copy is made by the transport on either side.
//! - **Held rows.** A server answers a long pull with
//!   [`Endpoint::send_held`](laggard::transport::Endpoint::send_held): one
//!   write gathered from the response's head (in the mirror) and each row
//!   where it lies in the server's table, registered on its first send and
//!   kept registered while the table lives. A row is held, so pushes to it
//!   wait, until the write's completion is polled; the server lets go of
//!   its rows ([`Endpoint::release_held`](laggard::transport::Endpoint::release_held))
//!   before it applies a push. So the server's CPU copies no pulled row.
//! - **Kept frames.** Frames may be kept in the ring
//!   ([`Endpoint::keep_frame`](laggard::transport::Endpoint::keep_frame)):
//!   the worker caches long pulled rows where the server's device wrote
//!   them, and copies them out only when they crowd the ring, that is when
//!   a frame of the largest size would no longer fit after them
//!   ([`Endpoint::kept_frames_crowd`](laggard::transport::Endpoint::kept_frames_crowd)).
//! - **Stash.** A worker's long pending push row waits in registered memory
//!   of its connection ([`RdmaStash`]); the push's write gathers the row
//!   from there, after the encoded head in the mirror, so the row is not
//!   copied into the mirror first ([`RdmaConfig::stash_bytes`]).
//! - **Credit.** The receiver releases frames in any order and stores how
//!   far it got in its own registered memory; the sender fetches that with
//!   an RDMA READ when it runs low on room, so no message is sent per
//!   released frame and a sender never waits on the receiver's CPU. `lend`
//!   waits for room: bounded queues, backpressure, no receiver-not-ready
//!   storms.
//! - **Memory** is registered once per connection (two rings and a page)
//!   and deregistered when the connection's last frame is dropped, and
//!   once per held table row, deregistered with its endpoint (or when the
//!   table is gone); [`RdmaTransport::leaks`] counts what is still
//!   registered.
//! - **Waiting** spins briefly, then sleeps on a completion channel.
//! - **Failures.** A completion error (retry exceeded, remote access error,
//!   flush) or a side channel that closes without an in-band close ends
//!   the connection: waiting calls return an error, `recv` reports
//!   [`Event::Disconnected`](laggard::transport::Event::Disconnected).
//!
//! ## Before anything else
//! [`preflight`] (run by the first `bind`) checks that a device exists,
//! its port is active, it has a usable GID (RoCE) or LID (InfiniBand), and
//! the memlock limit covers a connection's registered memory; each failure
//! says what to fix.
//!
//! ```no_run
//! use laggard::{ClusterSpec, Server, Worker, WorkerId, Sum, TableSpec};
//! use laggard::transport::Transport;
//! use laggard_rdma::RdmaTransport;
//! use std::time::{Duration, Instant};
//!
//! let spec = ClusterSpec::new(1, 1).table("t", TableSpec::<i64>::dense(0..4, 2).update(Sum));
//! let net = RdmaTransport::new();
//! let server = Server::new(net.bind(&spec.server_name(0))?, &spec, 0)?;
//! let serving = std::thread::spawn(move || server.run_until_workers_done());
//! let deadline = Instant::now() + Duration::from_secs(10);
//! let mut worker = Worker::connect(net.bind(&spec.worker_name(0))?, &spec, WorkerId(0), deadline)?;
//! let t = worker.table::<i64>("t")?;
//! worker.push(&t, &[3], &[1, 2])?;
//! worker.clock()?;
//! let mut row = [0i64; 2];
//! worker.pull(&t, &[3], &mut row)?;
//! assert_eq!(row, [1, 2]);
//! worker.leave()?;
//! serving.join().unwrap()?;
//! # Ok::<(), laggard::Error>(())
//! ```

#![warn(missing_docs)]

mod config;
mod conn;
mod credit;
mod endpoint;
mod held;
mod hello;
mod preflight;
mod ring;
mod stash;
mod verbs;

pub use config::RdmaConfig;
pub use endpoint::{RdmaBuf, RdmaEndpoint, RdmaFrame, RdmaTransport};
pub use preflight::{DeviceInfo, preflight};
pub use stash::RdmaStash;

/// Decodes arbitrary bytes as a side-channel handshake message; for the
/// fuzz target and its corpus replay only.
#[doc(hidden)]
pub fn fuzz_handshake(bytes: &[u8]) -> bool {
    hello::decode_bytes(bytes).is_ok()
}
