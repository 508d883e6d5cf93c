//! TCP for laggard: a [`Transport`](laggard::transport::Transport) between
//! processes and hosts, and the bootstrap that assembles a cluster under
//! the launchers people already use.
//!
//! ## The transport
//! [`TcpTransport`] moves frames over TCP with `TCP_NODELAY`:
//! - **Framing.** A 16-byte header, written with the payload in one
//!   vectored write; frames are read straight into their own (pooled)
//!   buffer, so a large row is copied only by the kernel.
//! - **Flow control.** Each direction of a connection has a window granted
//!   by the receiver. Lending a buffer reserves credit; the receiver returns
//!   it as it releases frames (on the headers of its own frames, or alone
//!   after a short delay). A sender facing a slow receiver waits in `lend`,
//!   and memory stays bounded on both sides.
//! - **Liveness.** Idle connections exchange heartbeats; a connection
//!   silent for `dead_after` (or a failed write) is reported as
//!   [`Event::Disconnected`](laggard::transport::Event::Disconnected), and
//!   every waiting call returns an error.
//!
//! The runtime's workers reconnect after a connection is lost and resend
//! what was not acknowledged; the servers' (worker, sequence) bookkeeping
//! makes sure no push is lost or applied twice.
//!
//! ```
//! use laggard::{ClusterSpec, Server, Worker, WorkerId, Sum, TableSpec};
//! use laggard::transport::Transport;
//! use laggard_tcp::TcpTransport;
//! use std::time::{Duration, Instant};
//!
//! let spec = ClusterSpec::new(1, 1).table("t", TableSpec::<i64>::dense(0..4, 2).update(Sum));
//! let net = TcpTransport::new();
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
//! serving.join().unwrap()?; // the server stops once every worker has left
//! # Ok::<(), laggard::Error>(())
//! ```

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod bootstrap;
mod config;
mod descriptors;
mod endpoint;
mod flow;
mod reading;
mod wire;

pub use bootstrap::{Bootstrap, Member, Node, Role};
pub use config::TcpConfig;
pub use endpoint::{TcpBuf, TcpEndpoint, TcpFrame, TcpTransport};

/// The flow-control and queue primitives, exposed for the loom models in
/// `tests/loom.rs` only.
#[cfg(laggard_loom)]
#[doc(hidden)]
pub mod loom_api {
    pub use crate::flow::{Flow, Inbox, Pop, Stalled, wait_reading};
}
