//! Settings of an RDMA network.

use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use laggard::{Error, Result};

use crate::hello::{RING_MAX, RING_MIN};

/// Settings for [`RdmaTransport`](crate::RdmaTransport). Every process of
/// a cluster should use the same ones.
///
/// ```
/// use std::time::Duration;
/// use laggard_rdma::RdmaConfig;
///
/// let cfg = RdmaConfig::default()
///     .device("mlx5_0")          // default: the first device found
///     .ring_bytes(64 << 20)      // frames up to 32 MiB
///     .busy_poll(true);          // lowest latency, one core per waiting thread
/// assert_eq!(cfg.max_frame_len(), 32 << 20);
/// cfg.validate().unwrap();
/// ```
#[derive(Debug, Clone)]
pub struct RdmaConfig {
    pub(crate) device: Option<String>,
    pub(crate) port: u8,
    pub(crate) gid_index: Option<u8>,
    pub(crate) ring_bytes: u64,
    pub(crate) max_peer_ring: Option<u64>,
    pub(crate) stash: Option<u64>,
    pub(crate) recv_depth: u32,
    pub(crate) spin: Duration,
    pub(crate) busy_poll: bool,
    pub(crate) listen_ip: IpAddr,
    pub(crate) handshake_timeout: Duration,
    pub(crate) linger: Duration,
}

impl Default for RdmaConfig {
    /// The first device, port 1, its best RoCE GID, 16 MiB rings (frames up
    /// to 8 MiB) and stashes, 256 frames in flight per connection, spin
    /// 50 µs before sleeping on the completion channel, side channel on
    /// 127.0.0.1.
    fn default() -> Self {
        RdmaConfig {
            device: None,
            port: 1,
            gid_index: None,
            ring_bytes: 16 << 20,
            max_peer_ring: None,
            stash: None,
            recv_depth: 256,
            spin: Duration::from_micros(50),
            busy_poll: false,
            listen_ip: IpAddr::V4(Ipv4Addr::LOCALHOST),
            handshake_timeout: Duration::from_secs(10),
            linger: Duration::from_secs(1),
        }
    }
}

impl RdmaConfig {
    /// The verbs device to use, by name (`ibv_devices` lists them); by
    /// default the first one found.
    pub fn device(mut self, name: &str) -> Self {
        self.device = Some(name.to_owned());
        self
    }

    /// The device port (default 1).
    pub fn port(mut self, port: u8) -> Self {
        self.port = port;
        self
    }

    /// The GID table index to use on RoCE. By default the first RoCE v2
    /// GID holding an IPv4 address, else the first RoCE v2 GID, else the
    /// first RoCE v1 GID.
    pub fn gid_index(mut self, index: u8) -> Self {
        self.gid_index = Some(index);
        self
    }

    /// Bytes of each connection's receive ring, rounded up to a power of
    /// two (4 KiB to 16 GiB). The sender keeps a registered mirror of the
    /// same size, so each connection registers twice this, counted against
    /// the memlock limit. The largest frame is half of it.
    pub fn ring_bytes(mut self, bytes: u64) -> Self {
        self.ring_bytes = bytes.max(1).next_power_of_two();
        self
    }

    /// The largest receive ring a peer may announce (default: this
    /// endpoint's own [`ring_bytes`](Self::ring_bytes), as every process of
    /// a cluster should use the same settings). Each connection registers
    /// a mirror of the peer's ring, pinned in memory, so without a limit a
    /// peer could make this process pin up to 16 GiB per connection; a
    /// connection to or from a peer with a larger ring is refused, saying
    /// so.
    pub fn max_peer_ring_bytes(mut self, bytes: u64) -> Self {
        self.max_peer_ring = Some(bytes);
        self
    }

    /// The largest receive ring a peer may announce.
    pub(crate) fn peer_ring_limit(&self) -> u64 {
        self.max_peer_ring.unwrap_or(self.ring_bytes)
    }

    /// Why a peer announcing a receive ring of `peer_ring` bytes is
    /// refused, if it is.
    pub(crate) fn refuse_peer_ring(&self, peer: &str, peer_ring: u64) -> Option<String> {
        let limit = self.peer_ring_limit();
        (peer_ring > limit).then(|| {
            format!(
                "{peer} announced a receive ring of {peer_ring} bytes, more than the {limit}                  this endpoint registers a mirror for (RdmaConfig::max_peer_ring_bytes; by                  default its own ring_bytes): use the same RdmaConfig::ring_bytes in every                  process"
            )
        })
    }

    /// Receives kept posted per connection: at most this many frames (less
    /// two, for control messages) are in flight to an endpoint (default
    /// 256, at least 4).
    pub fn recv_depth(mut self, depth: u32) -> Self {
        self.recv_depth = depth;
        self
    }

    /// How long a waiting call polls its completion queues before it
    /// sleeps on the completion channel (default 50 µs).
    pub fn spin(mut self, spin: Duration) -> Self {
        self.spin = spin;
        self
    }

    /// Never sleep: waiting calls poll until their deadline (one core per
    /// waiting thread, lowest latency).
    pub fn busy_poll(mut self, on: bool) -> Self {
        self.busy_poll = on;
        self
    }

    /// The address endpoints listen on for the side channel (connection
    /// setup and liveness), default 127.0.0.1. Across hosts, an address
    /// the peers can reach (or 0.0.0.0 with addresses given through
    /// [`RdmaTransport::address`](crate::RdmaTransport::address)).
    pub fn listen_ip(mut self, ip: IpAddr) -> Self {
        self.listen_ip = ip;
        self
    }

    /// Bytes of each connection's stash (default: as many as
    /// [`ring_bytes`](Self::ring_bytes); 0: no stash). A worker keeps a
    /// pending push row of 64 KiB or more there until the server
    /// acknowledged it, and the device gathers the row from there straight
    /// into the server's ring, so a push copies it once instead of twice.
    /// The stash is registered (pinned) on a connection's first push of
    /// such a row, so servers never register one. If registering fails
    /// (the memlock limit, say), rows are copied as without a stash; a
    /// push waits for room held by unacknowledged pushes.
    pub fn stash_bytes(mut self, bytes: u64) -> Self {
        self.stash = Some(bytes);
        self
    }

    /// Bytes of each connection's stash, 0 for none.
    pub(crate) fn stash_len(&self) -> u64 {
        self.stash.unwrap_or(self.ring_bytes)
    }

    /// How long a connection's handshake may take once the peer answered
    /// (default 10 s).
    pub fn handshake_timeout(mut self, timeout: Duration) -> Self {
        self.handshake_timeout = timeout;
        self
    }

    /// How long closing a connection waits for its last writes to complete
    /// (default 1 s).
    pub fn linger(mut self, linger: Duration) -> Self {
        self.linger = linger;
        self
    }

    /// The largest frame an endpoint with these settings accepts.
    pub fn max_frame_len(&self) -> usize {
        (self.ring_bytes / 2) as usize
    }

    /// The most bytes each connection registers: its ring, the mirror of
    /// the peer's (at most [`max_peer_ring_bytes`](Self::max_peer_ring_bytes))
    /// and a page of control words. A connection that stashes a push row
    /// also registers its [stash](Self::stash_bytes), if it can.
    pub fn registered_per_connection(&self) -> u64 {
        self.ring_bytes + self.peer_ring_limit() + 4096
    }

    /// Checks the settings; the error says which is wrong.
    pub fn validate(&self) -> Result<()> {
        let bad = |what, reason: String| Err(Error::InvalidConfig { what, reason });
        if !(RING_MIN..=RING_MAX).contains(&self.ring_bytes) {
            return bad(
                "RdmaConfig::ring_bytes",
                format!(
                    "{} is not between {RING_MIN} and {RING_MAX}",
                    self.ring_bytes
                ),
            );
        }
        if let Some(limit) = self.max_peer_ring {
            if !(RING_MIN..=RING_MAX).contains(&limit) {
                return bad(
                    "RdmaConfig::max_peer_ring_bytes",
                    format!("{limit} is not between {RING_MIN} and {RING_MAX}"),
                );
            }
        }
        if self.stash_len() > RING_MAX {
            return bad(
                "RdmaConfig::stash_bytes",
                format!("{} is more than {RING_MAX}", self.stash_len()),
            );
        }
        if !(4..=1 << 16).contains(&self.recv_depth) {
            return bad(
                "RdmaConfig::recv_depth",
                format!("{} is not in 4..=65536", self.recv_depth),
            );
        }
        if self.port == 0 {
            return bad(
                "RdmaConfig::port",
                "0 is not a port; ports count from 1".into(),
            );
        }
        if self.handshake_timeout.is_zero() {
            return bad("RdmaConfig::handshake_timeout", "it is zero".into());
        }
        laggard::check_wait("RdmaConfig::handshake_timeout", self.handshake_timeout)?;
        laggard::check_wait("RdmaConfig::spin", self.spin)?;
        laggard::check_wait("RdmaConfig::linger", self.linger)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_peer_ring_above_the_limit_is_refused_with_the_setting_to_change() {
        let cfg = RdmaConfig::default().ring_bytes(1 << 16);
        assert_eq!(cfg.refuse_peer_ring("w", 1 << 16), None, "the same ring");
        assert_eq!(cfg.refuse_peer_ring("w", 1 << 12), None, "a smaller ring");
        let why = cfg
            .refuse_peer_ring("w", 1 << 33)
            .expect("8 GiB is refused");
        assert!(
            why.contains("w announced a receive ring of 8589934592 bytes, more than the 65536")
                && why.contains("RdmaConfig::max_peer_ring_bytes"),
            "{why}"
        );
        assert_eq!(cfg.registered_per_connection(), 2 * (1 << 16) + 4096);
        let raised = cfg.max_peer_ring_bytes(1 << 20);
        assert_eq!(raised.refuse_peer_ring("w", 1 << 20), None);
        assert!(raised.refuse_peer_ring("w", 1 << 21).is_some());
        assert_eq!(
            raised.registered_per_connection(),
            (1 << 16) + (1 << 20) + 4096
        );
    }

    #[test]
    fn a_wait_past_thirty_years_is_refused_not_an_overflow() {
        let err = RdmaConfig::default()
            .handshake_timeout(Duration::MAX)
            .validate()
            .unwrap_err()
            .to_string();
        assert!(err.contains("RdmaConfig::handshake_timeout"), "{err}");
        assert!(
            RdmaConfig::default()
                .linger(Duration::MAX)
                .validate()
                .is_err()
        );
    }

    #[test]
    fn the_stash_follows_the_ring_unless_set() {
        let cfg = RdmaConfig::default().ring_bytes(1 << 20);
        assert_eq!(cfg.stash_len(), 1 << 20);
        assert_eq!(cfg.clone().stash_bytes(0).stash_len(), 0);
        assert_eq!(cfg.clone().stash_bytes(4096).stash_len(), 4096);
        let err = cfg.stash_bytes(RING_MAX + 1).validate().unwrap_err();
        assert!(err.to_string().contains("RdmaConfig::stash_bytes"), "{err}");
    }

    #[test]
    fn a_peer_ring_limit_outside_the_ring_sizes_is_invalid() {
        for bad in [0, 1 << 34] {
            let err = RdmaConfig::default()
                .max_peer_ring_bytes(bad)
                .validate()
                .unwrap_err();
            assert!(err.to_string().contains("max_peer_ring_bytes"), "{err}");
        }
        RdmaConfig::default()
            .max_peer_ring_bytes(1 << 20)
            .validate()
            .unwrap();
    }
}
