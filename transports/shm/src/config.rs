//! Settings of a shared-memory network.

use std::path::{Path, PathBuf};
use std::time::Duration;

use laggard::{Error, Result};

use crate::layout::{RING_MAX, RING_MIN, STASH_ALIGN, STASH_MAX};

/// Settings for [`ShmTransport`](crate::ShmTransport). Every process of a
/// cluster should use the same ones.
///
/// ```
/// use std::time::Duration;
/// use laggard_shm::ShmConfig;
///
/// let cfg = ShmConfig::default()
///     .ring_bytes(256 << 20)      // frames up to 128 MiB
///     .busy_poll(true)            // lowest latency, one core per waiting thread
///     .liveness_interval(Duration::from_millis(20));
/// assert_eq!(cfg.max_frame_len(), (128 << 20) - 8);
/// ```
#[derive(Debug, Clone)]
pub struct ShmConfig {
    pub(crate) dir: PathBuf,
    pub(crate) ring_bytes: u64,
    pub(crate) spin: Duration,
    pub(crate) busy_poll: bool,
    pub(crate) liveness_interval: Duration,
    pub(crate) row_piece_bytes: usize,
    /// `None`: as long as a ring.
    pub(crate) stash_bytes: Option<u64>,
}

impl Default for ShmConfig {
    /// Segments in `/dev/shm`, 64 MiB rings (frames up to 32 MiB), spin
    /// 50 µs before sleeping, peers checked every 50 ms, pulled rows in
    /// pieces of 128 KiB, a stash as long as a ring for pending pushes.
    fn default() -> Self {
        ShmConfig {
            dir: PathBuf::from("/dev/shm"),
            ring_bytes: 64 << 20,
            spin: Duration::from_micros(50),
            busy_poll: false,
            liveness_interval: Duration::from_millis(50),
            row_piece_bytes: 128 << 10,
            stash_bytes: None,
        }
    }
}

impl ShmConfig {
    /// The directory segments live in (default `/dev/shm`). It must be on
    /// a memory file system (tmpfs) for the transport to be fast.
    pub fn dir(mut self, dir: impl AsRef<Path>) -> Self {
        self.dir = dir.as_ref().to_owned();
        self
    }

    /// Bytes of each connection direction's ring, rounded up to a power of
    /// two (at least 4 KiB). It bounds the unread bytes per direction, and
    /// the largest frame is half of it. Memory is used only as far as the
    /// ring is written: while the reader keeps up, the writer starts over
    /// at the beginning after 64 KiB (or a quarter of the ring), so an
    /// idle or request-response connection touches little more than that
    /// and its largest frame.
    pub fn ring_bytes(mut self, bytes: u64) -> Self {
        self.ring_bytes = bytes;
        self
    }

    /// How long a waiting call spins before it sleeps on the futex.
    pub fn spin(mut self, spin: Duration) -> Self {
        self.spin = spin;
        self
    }

    /// Never sleep: waiting calls spin until their deadline. The lowest
    /// latency, at the price of a busy core per waiting thread.
    pub fn busy_poll(mut self, on: bool) -> Self {
        self.busy_poll = on;
        self
    }

    /// How often a waiting call checks that its peers' processes still
    /// run; a crashed peer is reported within about this long.
    pub fn liveness_interval(mut self, every: Duration) -> Self {
        self.liveness_interval = every;
        self
    }

    /// How much of a long row a server sends per frame when the row is
    /// pulled on its own (default 128 KiB): the worker copies each piece
    /// out of the ring, into its cache and the caller's slice, while the
    /// server writes the next, and such a row may be longer than the
    /// largest frame. Pieces that fit the cores' caches several times over
    /// are fastest (with a 2 MiB L2, 128-256 KiB pieces pulled 4 MiB rows
    /// in about 60% of the time 1 MiB pieces took). At most a quarter of
    /// the ring is used, so two pieces are always in flight; no piece is
    /// shorter than 4 KiB.
    pub fn row_piece_bytes(mut self, bytes: usize) -> Self {
        self.row_piece_bytes = bytes;
        self
    }

    /// Bytes of each connection's stash (by default as many as a ring
    /// holds; rounded up to a multiple of 64; 0 for none): memory the
    /// connecting side (a worker) keeps long pending push rows in, from a
    /// clock's first delta of a row until the server acknowledged it, and
    /// that the server applies them from in place. A pushed row then costs
    /// the worker one copy (the delta into the stash) instead of two (into
    /// its own pending push, then into the ring). Rows of 64 KiB and more
    /// are stashed while there is room (a push waits for room that pushes
    /// awaiting acknowledgement hold); the others go through the ring.
    /// Like the rings, only what is written uses memory.
    pub fn stash_bytes(mut self, bytes: u64) -> Self {
        self.stash_bytes = Some(bytes);
        self
    }

    /// The stash size these settings give.
    pub(crate) fn stash_capacity(&self) -> u64 {
        self.stash_bytes
            .unwrap_or_else(|| self.ring_capacity())
            .min(STASH_MAX)
            .next_multiple_of(STASH_ALIGN)
    }

    /// The piece length a server of these settings sends pulled rows in.
    pub(crate) fn row_piece_len(&self) -> usize {
        self.row_piece_bytes.min(self.ring_capacity() as usize / 4)
    }

    /// The ring capacity these settings give.
    pub(crate) fn ring_capacity(&self) -> u64 {
        self.ring_bytes
            .clamp(RING_MIN, RING_MAX)
            .checked_next_power_of_two()
            .unwrap_or(RING_MAX)
    }

    /// The largest frame a connection carries.
    pub fn max_frame_len(&self) -> usize {
        crate::ring::max_frame(self.ring_capacity()) as usize
    }

    pub(crate) fn validate(&self) -> Result<()> {
        let bad = |what, reason: String| Err(Error::InvalidConfig { what, reason });
        if self.ring_bytes > RING_MAX {
            return bad(
                "ring bytes",
                format!(
                    "{} is more than the {RING_MAX} a ring may hold",
                    self.ring_bytes
                ),
            );
        }
        if let Some(bytes) = self.stash_bytes.filter(|&b| b > STASH_MAX) {
            return bad(
                "stash bytes",
                format!("{bytes} is more than the {STASH_MAX} a stash may hold"),
            );
        }
        if self.liveness_interval.is_zero() {
            return bad(
                "liveness interval",
                "must be positive (it bounds how long a crashed peer goes unnoticed)".into(),
            );
        }
        laggard::check_wait("ShmConfig::spin", self.spin)?;
        laggard::check_wait("ShmConfig::liveness_interval", self.liveness_interval)?;
        if !self.dir.is_dir() {
            return bad(
                "segment directory",
                format!(
                    "{} is not a directory; use a tmpfs such as /dev/shm",
                    self.dir.display()
                ),
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_wait_past_thirty_years_is_refused_not_an_overflow() {
        for cfg in [
            ShmConfig::default().liveness_interval(Duration::MAX),
            ShmConfig::default().spin(Duration::MAX),
        ] {
            let err = cfg.validate().unwrap_err().to_string();
            assert!(err.contains("longer than the 30 years"), "{err}");
        }
    }
}
