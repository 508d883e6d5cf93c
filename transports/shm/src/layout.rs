//! What lies where in a segment, and the checks a segment passes before
//! anything in it is used.
//!
//! Two kinds of segment, both pointer-free (offsets only) and laid out with
//! every word that two processes write on a cache line of its own:
//!
//! **Mailbox** (one per bound endpoint, named after it):
//!
//! | offset | contents |
//! |---|---|
//! | 0 | header: magic, version, kind, total length, owner (pid, start time), slot count, endpoint name |
//! | 256 | `closed` flag (the endpoint was dropped); at 264, `posted`: connections posted so far |
//! | 384 | doorbell (futex word, sleepers) |
//! | 512 | connect slots, [`SLOT_SIZE`] bytes each: state, claimer pid, connection segment name |
//!
//! **Connection** (one per connection, created by the connecting side):
//!
//! | offset | contents |
//! |---|---|
//! | 0 | header: magic, version, kind, total length, ring capacity, connector (pid, start time, endpoint name), stash size |
//! | 256, 384 | `closed` flag of side 0 (connector) and side 1 (acceptor) |
//! | 512 | `accepted` flag |
//! | 1024, 1280 | the `head` word of ring 0 (connector → acceptor) and of ring 1 (a ring's records publish themselves: see `ring.rs`) |
//! | 4096 | ring 0's data, then ring 1's |
//! | 4096 + 2 × capacity | the connector's stash: pending pushes it writes and the acceptor reads in place |
//!
//! Headers are plain native-endian integers (both ends share the host);
//! they are written once, before the segment's name is published, and
//! only read afterwards.

use std::fmt;

/// "LAGGSHM1".
pub const MAGIC: u64 = u64::from_le_bytes(*b"LAGGSHM1");
/// Bumped whenever anything in this file changes meaning.
pub const VERSION: u32 = 3;
/// Segment kinds.
pub const KIND_MAILBOX: u32 = 1;
/// Segment kinds.
pub const KIND_CONNECTION: u32 = 2;

/// Longest endpoint name (bytes of UTF-8).
pub const NAME_MAX: usize = 160;

const OFF_MAGIC: usize = 0;
const OFF_VERSION: usize = 8;
const OFF_KIND: usize = 12;
const OFF_TOTAL: usize = 16;
const OFF_PID: usize = 24;
const OFF_START: usize = 32;
const OFF_PARAM: usize = 40; // slot count (mailbox) or ring capacity (connection)
const OFF_NAME_LEN: usize = 48;
/// The owner's PID namespace (added in these once-zero bytes, so builds
/// before it read segments of builds after it, and the other way round:
/// 0 means not known).
const OFF_PIDNS: usize = 52;
const OFF_NAME: usize = 56;
const OFF_STASH: usize = OFF_NAME + NAME_MAX; // stash size (connection), 0 (mailbox)
/// Bytes of the header both kinds share.
pub const HEADER_LEN: usize = OFF_STASH + 8;

/// Mailbox: the `closed` word.
pub const MB_CLOSED: usize = 256;
/// Mailbox: how many connections were posted to the slots (so the owner
/// scans them only when this moved).
pub const MB_POSTED: usize = 264;
/// Mailbox: the doorbell.
pub const MB_DOORBELL: usize = 384;
/// Mailbox: the first connect slot.
pub const MB_SLOTS: usize = 512;
/// Connect slots per mailbox.
pub const SLOTS: usize = 64;
/// Bytes per connect slot.
pub const SLOT_SIZE: usize = 256;
/// Slot: state word (see `slots`).
pub const SLOT_STATE: usize = 0;
/// Slot: the claimer's pid (0 while unknown).
pub const SLOT_PID: usize = 4;
/// Slot: length of the connection segment's name.
pub const SLOT_NAME_LEN: usize = 8;
/// Slot: the connection segment's file name.
pub const SLOT_NAME: usize = 16;
/// Longest connection segment file name.
pub const SLOT_NAME_MAX: usize = SLOT_SIZE - SLOT_NAME;
/// A mailbox's total size.
pub const MAILBOX_LEN: usize = MB_SLOTS + SLOTS * SLOT_SIZE;

/// Connection: `closed` word of side `s` is at `CONN_CLOSED + s * 128`.
pub const CONN_CLOSED: usize = 256;
/// Connection: the `accepted` word.
pub const CONN_ACCEPTED: usize = 512;
/// Connection: ring `r`'s `head` word is at `CONN_RINGS + r * 256`.
pub const CONN_RINGS: usize = 1024;
/// Connection: ring `r`'s data is at `CONN_DATA + r * cap`.
pub const CONN_DATA: usize = 4096;
/// Smallest and largest ring capacity.
pub const RING_MIN: u64 = 4096;
/// Smallest and largest ring capacity.
pub const RING_MAX: u64 = 1 << 40;
/// Largest stash; a stash's size is a multiple of [`STASH_ALIGN`].
pub const STASH_MAX: u64 = 1 << 40;
/// Stash blocks start at multiples of this (a cache line).
pub const STASH_ALIGN: u64 = 64;

/// Who made a segment: a process, told apart from a later process with
/// the same pid by its start time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Owner {
    /// Process id, in the PID namespace `pidns`.
    pub pid: u32,
    /// Start time in clock ticks since boot (`/proc/<pid>/stat`, field 22).
    pub start: u64,
    /// The inode number of the process's PID namespace
    /// (`/proc/self/ns/pid`), 0 if not known; pids and start times can be
    /// checked only from within that namespace.
    pub pidns: u32,
}

/// A segment header, decoded and checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    /// `KIND_MAILBOX` or `KIND_CONNECTION`.
    pub kind: u32,
    /// The segment's total length.
    pub total: u64,
    /// Its creator.
    pub owner: Owner,
    /// Slot count (mailbox) or ring capacity (connection).
    pub param: u64,
    /// Bytes of the connector's stash (connection); 0 for a mailbox.
    pub stash: u64,
    /// The endpoint's name (mailbox) or the connector's (connection).
    pub name: String,
}

/// Why a segment was rejected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invalid(pub String);

impl fmt::Display for Invalid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

fn u32_at(b: &[u8], off: usize) -> u32 {
    u32::from_ne_bytes(b[off..off + 4].try_into().expect("4 bytes"))
}

fn u64_at(b: &[u8], off: usize) -> u64 {
    u64::from_ne_bytes(b[off..off + 8].try_into().expect("8 bytes"))
}

/// The total length of a connection segment with rings of `cap` bytes
/// and a stash of `stash` bytes.
pub fn connection_len(cap: u64, stash: u64) -> Option<u64> {
    cap.checked_mul(2)?
        .checked_add(CONN_DATA as u64)?
        .checked_add(stash)
}

/// Where a connection's stash starts.
pub fn stash_offset(cap: u64) -> u64 {
    CONN_DATA as u64 + 2 * cap
}

impl Header {
    /// Encodes the header into the first [`HEADER_LEN`] bytes of `out`.
    pub fn encode(&self, out: &mut [u8]) {
        let out = &mut out[..HEADER_LEN];
        out.fill(0);
        out[OFF_MAGIC..8].copy_from_slice(&MAGIC.to_ne_bytes());
        out[OFF_VERSION..12].copy_from_slice(&VERSION.to_ne_bytes());
        out[OFF_KIND..16].copy_from_slice(&self.kind.to_ne_bytes());
        out[OFF_TOTAL..24].copy_from_slice(&self.total.to_ne_bytes());
        out[OFF_PID..28].copy_from_slice(&self.owner.pid.to_ne_bytes());
        out[OFF_START..40].copy_from_slice(&self.owner.start.to_ne_bytes());
        out[OFF_PARAM..48].copy_from_slice(&self.param.to_ne_bytes());
        let name = self.name.as_bytes();
        out[OFF_NAME_LEN..52].copy_from_slice(&(name.len() as u32).to_ne_bytes());
        out[OFF_PIDNS..56].copy_from_slice(&self.owner.pidns.to_ne_bytes());
        out[OFF_NAME..OFF_NAME + name.len()].copy_from_slice(name);
        out[OFF_STASH..OFF_STASH + 8].copy_from_slice(&self.stash.to_ne_bytes());
    }

    /// Decodes and checks the header of a segment whose file is `file_len`
    /// bytes long, given (at least) its first [`HEADER_LEN`] bytes.
    pub fn decode(bytes: &[u8], file_len: u64) -> Result<Header, Invalid> {
        if bytes.len() < HEADER_LEN || file_len < HEADER_LEN as u64 {
            return Err(Invalid(format!(
                "{file_len} bytes is too short for a laggard segment (truncated?)"
            )));
        }
        if u64_at(bytes, OFF_MAGIC) != MAGIC {
            return Err(Invalid(
                "no laggard magic number: not a laggard segment, or not yet initialised".into(),
            ));
        }
        let version = u32_at(bytes, OFF_VERSION);
        if version != VERSION {
            return Err(Invalid(format!(
                "layout version {version}, this build speaks {VERSION}: \
                 every process of a cluster must run the same laggard-shm"
            )));
        }
        let kind = u32_at(bytes, OFF_KIND);
        let total = u64_at(bytes, OFF_TOTAL);
        let param = u64_at(bytes, OFF_PARAM);
        let stash = u64_at(bytes, OFF_STASH);
        if total != file_len {
            return Err(Invalid(format!(
                "the header says {total} bytes but the file has {file_len} (truncated?)"
            )));
        }
        match kind {
            KIND_MAILBOX => {
                if param != SLOTS as u64 || total != MAILBOX_LEN as u64 || stash != 0 {
                    return Err(Invalid(format!(
                        "a mailbox of {total} bytes with {param} slots and a {stash}-byte \
                         stash; expected {MAILBOX_LEN} bytes with {SLOTS} and none"
                    )));
                }
            }
            KIND_CONNECTION => {
                if !param.is_power_of_two() || !(RING_MIN..=RING_MAX).contains(&param) {
                    return Err(Invalid(format!(
                        "ring capacity {param} is not a power of two in {RING_MIN}..={RING_MAX}"
                    )));
                }
                if stash > STASH_MAX || stash % STASH_ALIGN != 0 {
                    return Err(Invalid(format!(
                        "stash size {stash} is not a multiple of {STASH_ALIGN} up to {STASH_MAX}"
                    )));
                }
                if connection_len(param, stash) != Some(total) {
                    return Err(Invalid(format!(
                        "a connection with {param}-byte rings and a {stash}-byte stash must \
                         be {} bytes, not {total}",
                        CONN_DATA as u64 + 2 * param + stash
                    )));
                }
            }
            other => return Err(Invalid(format!("unknown segment kind {other}"))),
        }
        let name_len = u32_at(bytes, OFF_NAME_LEN) as usize;
        if name_len > NAME_MAX {
            return Err(Invalid(format!(
                "a {name_len}-byte name (at most {NAME_MAX})"
            )));
        }
        let name = std::str::from_utf8(&bytes[OFF_NAME..OFF_NAME + name_len])
            .map_err(|_| Invalid("the endpoint name is not UTF-8".into()))?
            .to_owned();
        let owner = Owner {
            pid: u32_at(bytes, OFF_PID),
            start: u64_at(bytes, OFF_START),
            pidns: u32_at(bytes, OFF_PIDNS),
        };
        if owner.pid == 0 {
            return Err(Invalid("the segment names no owner process".into()));
        }
        Ok(Header {
            kind,
            total,
            owner,
            param,
            stash,
            name,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mailbox() -> Header {
        Header {
            kind: KIND_MAILBOX,
            total: MAILBOX_LEN as u64,
            owner: Owner {
                pid: 7,
                start: 99,
                pidns: 0xf000_0001,
            },
            param: SLOTS as u64,
            stash: 0,
            name: "server-0".into(),
        }
    }

    #[test]
    fn headers_round_trip() {
        let mut bytes = vec![0u8; HEADER_LEN];
        mailbox().encode(&mut bytes);
        assert_eq!(Header::decode(&bytes, MAILBOX_LEN as u64), Ok(mailbox()));
        let conn = Header {
            kind: KIND_CONNECTION,
            total: connection_len(1 << 16, 1 << 20).unwrap(),
            param: 1 << 16,
            stash: 1 << 20,
            ..mailbox()
        };
        conn.encode(&mut bytes);
        assert_eq!(Header::decode(&bytes, conn.total), Ok(conn.clone()));
        // A stash that is not whole cache lines, or does not match the
        // file's length, is refused.
        for (stash, total) in [(100, conn.total - (1 << 20) + 100), (1 << 19, conn.total)] {
            Header {
                stash,
                total,
                ..conn.clone()
            }
            .encode(&mut bytes);
            assert!(Header::decode(&bytes, total).is_err(), "stash {stash}");
        }
    }

    #[test]
    fn bad_headers_are_errors() {
        let mut bytes = vec![0u8; HEADER_LEN];
        mailbox().encode(&mut bytes);
        let full = MAILBOX_LEN as u64;
        // (byte to change, new value, file length, expected words)
        let cases = [
            (0, 0x4d, full, "magic"),
            (8, 9, full, "version"),
            (0, b'L', 100, "too short"),
            (0, b'L', full - 8, "truncated"),
            (12, 5, full, "kind"),
            (48, 255, full, "name"),
            (56, 0xff, full, "UTF-8"),
            (24, 0, full, "owner"),
            (OFF_STASH, 64, full, "stash"),
        ];
        for (at, value, len, expect) in cases {
            let mut b = bytes.clone();
            b[at] = value;
            let err = Header::decode(&b, len).unwrap_err();
            assert!(err.0.contains(expect), "{expect}: got {err}");
        }
    }
}
