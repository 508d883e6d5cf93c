//! Settings of the TCP transport.

use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use laggard::{Error, Result};

/// How a [`TcpTransport`](crate::TcpTransport)'s endpoints listen, buffer
/// and detect dead peers. Build with [`TcpConfig::default`] and the
/// setters; [`validate`](Self::validate) says what is wrong.
///
/// ```
/// use std::time::Duration;
/// use laggard_tcp::TcpConfig;
///
/// let cfg = TcpConfig::default()
///     .window(16 << 20)
///     .heartbeat(Duration::from_millis(200))
///     .dead_after(Duration::from_secs(2));
/// cfg.validate()?;
/// # Ok::<(), laggard::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct TcpConfig {
    pub(crate) window: usize,
    pub(crate) max_frame_len: usize,
    pub(crate) heartbeat: Duration,
    pub(crate) dead_after: Duration,
    pub(crate) linger: Duration,
    pub(crate) listen_ip: IpAddr,
    pub(crate) spin: Duration,
    pub(crate) row_piece_bytes: usize,
}

impl Default for TcpConfig {
    /// A 64 MiB window per connection direction, frames up to 1 GiB and a
    /// little more, a heartbeat every 500 ms, a silent peer declared gone
    /// after 5 s, listening on loopback, a waiting call polling without
    /// sleeping for up to 50 us before it sleeps, and long pulled rows sent
    /// in pieces of 256 KiB.
    fn default() -> Self {
        TcpConfig {
            window: 64 << 20,
            max_frame_len: (1 << 30) + (64 << 10),
            heartbeat: Duration::from_millis(500),
            dead_after: Duration::from_secs(5),
            linger: Duration::from_secs(1),
            listen_ip: IpAddr::V4(Ipv4Addr::LOCALHOST),
            spin: Duration::from_micros(50),
            row_piece_bytes: 256 << 10,
        }
    }
}

impl TcpConfig {
    /// Bytes a peer may send ahead of this endpoint's reading, per
    /// connection: the most an endpoint buffers for one peer (a single
    /// frame larger than the window is still admitted on its own).
    pub fn window(mut self, bytes: usize) -> Self {
        self.window = bytes;
        self
    }

    /// The longest frame an endpoint sends or accepts (at most 4 GiB − 1).
    /// A frame's buffer grows as its bytes arrive, so a peer announcing a
    /// long frame costs the endpoint only about what it actually sends.
    pub fn max_frame_len(mut self, bytes: usize) -> Self {
        self.max_frame_len = bytes;
        self
    }

    /// How often an idle connection sends a heartbeat.
    pub fn heartbeat(mut self, every: Duration) -> Self {
        self.heartbeat = every;
        self
    }

    /// How long a connection may stay silent (no data, no heartbeat)
    /// before it is declared lost; also bounds a stalled write.
    pub fn dead_after(mut self, after: Duration) -> Self {
        self.dead_after = after;
        self
    }

    /// How long dropping an endpoint waits for its peers to close their
    /// side before cutting the connections.
    pub fn linger(mut self, linger: Duration) -> Self {
        self.linger = linger;
        self
    }

    /// The address endpoints listen on when the transport has none for
    /// their name (default loopback; `0.0.0.0` for every interface).
    pub fn listen_ip(mut self, ip: IpAddr) -> Self {
        self.listen_ip = ip;
        self
    }

    /// How long a waiting call (`recv` waiting for a frame, a send or
    /// `flush` waiting for credit) polls its connections without sleeping,
    /// yielding between rounds, before it sleeps in `poll`. An answer over
    /// loopback or a LAN usually arrives sooner than a sleeping thread is
    /// woken, so spinning halves small-message round trips; it costs CPU
    /// while waiting. Zero sleeps at once.
    pub fn spin(mut self, spin: Duration) -> Self {
        self.spin = spin;
        self
    }

    /// How many bytes of a long row a server sends per frame when a worker
    /// pulls the row on its own (default 256 KiB). The worker copies each
    /// piece into its cache and the caller's slice while the next is on
    /// its way, so the copies read memory the socket has just written (in
    /// the core's cache) and overlap the transfer; a pull of a 16 MiB row
    /// over loopback took about 60% of the time it took whole. A row may
    /// then be longer than the largest frame. Pieces are at most half of
    /// [`max_frame_len`](Self::max_frame_len); below 4 KiB (0 included),
    /// rows go whole, each in one frame handed to the worker's cache
    /// without a copy. Servers and workers should agree: a worker that
    /// expects whole rows accepts pieces, but a server sending whole rows
    /// refuses a pull of a row longer than its largest frame.
    pub fn row_piece_bytes(mut self, bytes: usize) -> Self {
        self.row_piece_bytes = bytes;
        self
    }

    /// The piece length pulled rows go in, if they go in pieces.
    pub(crate) fn row_piece_len(&self) -> Option<usize> {
        let piece = self.row_piece_bytes.min(self.max_frame_len / 2);
        // Shorter pieces would be sent longer than asked (the runtime's
        // floor), maybe longer than a frame: such rows go whole.
        (piece >= laggard::transport::MIN_ROW_PIECE).then_some(piece)
    }

    /// Returns the first problem with the settings, if any.
    pub fn validate(&self) -> Result<()> {
        let invalid = |what: &'static str, reason: String| Error::InvalidConfig { what, reason };
        if self.window == 0 {
            return Err(invalid("tcp window", "must be at least one byte".into()));
        }
        if self.max_frame_len == 0 || self.max_frame_len > u32::MAX as usize {
            return Err(invalid(
                "tcp max frame length",
                format!(
                    "{} bytes; use between 1 and {} (the header's length field is 32 bits)",
                    self.max_frame_len,
                    u32::MAX
                ),
            ));
        }
        laggard::check_wait("TcpConfig::heartbeat", self.heartbeat)?;
        laggard::check_wait("TcpConfig::dead_after", self.dead_after)?;
        laggard::check_wait("TcpConfig::linger", self.linger)?;
        laggard::check_wait("TcpConfig::spin", self.spin)?;
        if self.heartbeat.is_zero() || self.heartbeat >= self.dead_after {
            return Err(invalid(
                "tcp heartbeat",
                format!(
                    "every {:?} with peers declared lost after {:?}; the heartbeat must be \
                     shorter (a few heartbeats per dead_after)",
                    self.heartbeat, self.dead_after
                ),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_wait_past_thirty_years_is_refused_not_an_overflow() {
        let err = TcpConfig::default()
            .dead_after(Duration::MAX)
            .validate()
            .unwrap_err()
            .to_string();
        assert!(err.contains("TcpConfig::dead_after"), "{err}");
        assert!(
            TcpConfig::default()
                .linger(Duration::MAX)
                .validate()
                .is_err()
        );
    }
}
