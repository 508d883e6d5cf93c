//! Shared memory for laggard: a [`Transport`](laggard::transport::Transport)
//! between processes on one host, at close to memory speed.
//!
//! - **Segments.** Each bound endpoint has a mailbox segment and each
//!   connection a segment of its own, as files in `/dev/shm` (what
//!   `shm_open` uses), mode 0600, named after the cluster id. Their layout
//!   is `#[repr(C)]`-style fixed offsets, pointer-free, with every word two
//!   processes write on its own cache line; opening one checks owner,
//!   mode, magic, layout version and sizes, so a truncated, corrupted or
//!   foreign segment is an error, never undefined behaviour.
//! - **Rings.** Each direction of a connection is a lock-free
//!   single-producer single-consumer ring. A lent buffer *is* a slot of the
//!   ring the receiver reads, and a received frame is read in place: a row
//!   is written once, by its sender, into memory the receiver reads.
//! - **Stash.** Each connection segment ends in memory the connecting
//!   side (a worker) keeps long pending push rows in until they are
//!   acknowledged ([`ShmConfig::stash_bytes`]); the server applies them in
//!   place, so a pushed row costs the worker one copy, not two.
//! - **Waiting.** Calls spin briefly, then sleep on a futex in the waiting
//!   endpoint's mailbox; [`ShmConfig::busy_poll`] never sleeps.
//! - **Failures.** A peer that drops its endpoint closes its connections;
//!   a peer process that dies is noticed (pid and start time) within
//!   [`ShmConfig::liveness_interval`]; either becomes
//!   [`Event::Disconnected`](laggard::transport::Event::Disconnected) and
//!   an error for waiting calls. Connection segments are unlinked as soon
//!   as both sides have them mapped and mailboxes when their endpoint
//!   drops, so a clean shutdown leaves nothing in `/dev/shm`;
//!   [`ShmTransport::remove_stale`] clears what crashed runs of the
//!   cluster left ([`ShmTransport::remove_stale_of_every_cluster`]: of any
//!   cluster).
//!
//! ```
//! use laggard::{ClusterSpec, Server, Sum, TableSpec, Worker, WorkerId};
//! use laggard::transport::Transport;
//! use laggard_shm::ShmTransport;
//! use std::time::{Duration, Instant};
//!
//! let spec = ClusterSpec::new(1, 1).table("t", TableSpec::<i64>::dense(0..4, 2).update(Sum));
//! let net = ShmTransport::new(&format!("docs{}", std::process::id()))?;
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
//! assert!(net.segments().is_empty()); // nothing left in /dev/shm
//! # Ok::<(), laggard::Error>(())
//! ```

#![warn(missing_docs)]

#[cfg(not(laggard_loom))]
mod config;
mod doorbell;
#[cfg(not(laggard_loom))]
mod endpoint;
#[cfg(not(laggard_loom))]
mod layout;
mod ring;
#[cfg(not(laggard_loom))]
mod segment;
mod slots;
#[cfg(not(laggard_loom))]
mod stash;
mod unsent;

#[cfg(not(laggard_loom))]
pub use config::ShmConfig;
#[cfg(not(laggard_loom))]
pub use endpoint::{ShmBuf, ShmEndpoint, ShmFrame, ShmStash, ShmTransport};

/// Checks arbitrary bytes as a segment the way attaching does, and, if
/// they pass as a connection, reads its rings the way a receiver does.
/// For the fuzz target and its corpus replay; never panics.
#[doc(hidden)]
#[cfg(not(laggard_loom))]
pub fn fuzz_attach(bytes: &[u8]) {
    use std::sync::atomic::AtomicU64;
    let bytes_len = bytes.len() as u64;
    let Ok(header) = layout::Header::decode(bytes, bytes_len) else {
        return;
    };
    if header.kind != layout::KIND_CONNECTION || header.param > 1 << 20 {
        return;
    }
    let cap = header.param as usize;
    let words = |from: usize, count: usize| -> Vec<AtomicU64> {
        bytes[from..from + count * 8]
            .chunks_exact(8)
            .map(|w| AtomicU64::new(u64::from_ne_bytes(w.try_into().expect("8 bytes"))))
            .collect()
    };
    for r in 0..2 {
        let head_at = layout::CONN_RINGS + r * 256;
        let head = u64::from_ne_bytes(bytes[head_at..head_at + 8].try_into().expect("8 bytes"));
        let ctl = ring::RingCtl::with(head);
        let data = words(layout::CONN_DATA + r * cap, cap / 8);
        let mut consumer = ring::Consumer::default();
        for _ in 0..cap / 8 + 1 {
            match consumer.next(&ctl, &data) {
                Ok(Some(t)) => {
                    assert!(t.payload + t.len <= t.end, "frame overruns its record");
                    if t.stashed && t.len >= stash::WHERE_LEN {
                        // Where its tail is, checked as the receiver does.
                        let at = layout::CONN_DATA + r * cap + (t.payload % cap as u64) as usize;
                        let at = at + (t.len - stash::WHERE_LEN) as usize;
                        let where_ = bytes[at..at + 16].try_into().expect("16 bytes");
                        if let Ok((off, len)) = stash::tail_where(where_, header.stash) {
                            let start = layout::stash_offset(header.param) + off;
                            assert!(start + len <= bytes_len, "a checked tail overruns");
                        }
                    }
                    consumer.release(&ctl, t.start, t.end);
                }
                Ok(None) | Err(_) => break,
            }
        }
        let mut producer = ring::Producer::default();
        let _ = producer.reserve(&ctl, &data, 8);
    }
}

/// The ring and doorbell, exposed for the loom models in `tests/loom.rs`
/// only.
#[cfg(laggard_loom)]
#[doc(hidden)]
pub mod loom_api {
    pub use crate::doorbell::Doorbell;
    pub use crate::ring::{Consumer, Producer, RingCtl, Taken, max_frame, published_at};
    pub use crate::slots::{claim, free, is_ready, post, posted};
    pub use crate::unsent::Unsent;
}
