//! The transport's own framing on a TCP stream: a 16-byte header before
//! every frame, and the handshake that names both ends.
//!
//! ```text
//! 0..4   magic "LGTC"
//! 4      version (2)
//! 5      kind: 1 data, 2 credit, 3 heartbeat, 4 hello, 5 accept, 6 refuse,
//!        7 ask
//! 6..8   reserved, zero
//! 8..12  payload length (u32, little-endian)
//! 12..16 credit returned to the receiver of this header, in bytes (u32)
//! ```
//!
//! Every header carries credit, so a data frame going one way returns the
//! credit of frames released the other way without a message of its own.
//! Credit that finds no frame to ride on is sent on its own only when it
//! is needed: when the peer asks for it (an `ask`, sent by a peer that has
//! to wait for credit: its window is full, or it flushes), or when half
//! of the window granted to the peer is unreturned.
//! Everything here validates what it reads: a stream that is not laggard's,
//! or a peer that breaks the rules, is an error naming what was wrong.

use std::fmt;

/// Bytes in a header.
pub(crate) const HEADER_LEN: usize = 16;
const MAGIC: [u8; 4] = *b"LGTC";
const VERSION: u8 = 2;
/// The longest handshake payload accepted (names and a reason).
pub(crate) const MAX_CONTROL: u32 = 4096;

/// What a header announces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// A frame for the endpoint's user.
    Data,
    /// Nothing but the credit field.
    Credit,
    /// Nothing but "still alive".
    Heartbeat,
    /// The connecting side's handshake: window, target and own name.
    Hello,
    /// The accepting side's answer: its window and name.
    Accept,
    /// The accepting side refuses; the payload says why.
    Refuse,
    /// "Return my credit": the sender waits for it (its window is full,
    /// or it flushes).
    Ask,
}

impl Kind {
    fn code(self) -> u8 {
        match self {
            Kind::Data => 1,
            Kind::Credit => 2,
            Kind::Heartbeat => 3,
            Kind::Hello => 4,
            Kind::Accept => 5,
            Kind::Refuse => 6,
            Kind::Ask => 7,
        }
    }

    fn from_code(code: u8) -> Option<Kind> {
        Some(match code {
            1 => Kind::Data,
            2 => Kind::Credit,
            3 => Kind::Heartbeat,
            4 => Kind::Hello,
            5 => Kind::Accept,
            6 => Kind::Refuse,
            7 => Kind::Ask,
            _ => return None,
        })
    }
}

/// A decoded header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Header {
    pub(crate) kind: Kind,
    pub(crate) len: u32,
    pub(crate) credit: u32,
}

impl Header {
    pub(crate) fn new(kind: Kind, len: u32, credit: u32) -> Self {
        Header { kind, len, credit }
    }

    pub(crate) fn encode(&self) -> [u8; HEADER_LEN] {
        let mut b = [0u8; HEADER_LEN];
        b[..4].copy_from_slice(&MAGIC);
        b[4] = VERSION;
        b[5] = self.kind.code();
        b[8..12].copy_from_slice(&self.len.to_le_bytes());
        b[12..16].copy_from_slice(&self.credit.to_le_bytes());
        b
    }

    /// Decodes and checks a header; `max_len` bounds data payloads.
    pub(crate) fn decode(b: &[u8; HEADER_LEN], max_len: usize) -> Result<Header, WireError> {
        if b[..4] != MAGIC {
            return Err(WireError::NotLaggard);
        }
        if b[4] != VERSION {
            return Err(WireError::Version(b[4]));
        }
        let kind = Kind::from_code(b[5]).ok_or(WireError::Kind(b[5]))?;
        if b[6..8] != [0, 0] {
            return Err(WireError::Reserved);
        }
        let len = u32::from_le_bytes(b[8..12].try_into().expect("4 bytes"));
        let credit = u32::from_le_bytes(b[12..16].try_into().expect("4 bytes"));
        let ok = match kind {
            Kind::Data => len as usize <= max_len,
            Kind::Credit | Kind::Heartbeat | Kind::Ask => len == 0,
            Kind::Hello | Kind::Accept | Kind::Refuse => len <= MAX_CONTROL,
        };
        if !ok {
            return Err(WireError::Length { kind, len });
        }
        Ok(Header { kind, len, credit })
    }
}

/// The connecting side's handshake payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Hello {
    /// Bytes the connecting side lets the other send ahead of its reading.
    pub(crate) window: u64,
    /// The name the connecting side wants to reach.
    pub(crate) to: String,
    /// The connecting side's own name.
    pub(crate) from: String,
}

impl Hello {
    pub(crate) fn encode(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(12 + self.to.len() + self.from.len());
        b.extend_from_slice(&self.window.to_le_bytes());
        b.extend_from_slice(&(self.to.len() as u32).to_le_bytes());
        b.extend_from_slice(self.to.as_bytes());
        b.extend_from_slice(self.from.as_bytes());
        b
    }

    pub(crate) fn decode(b: &[u8]) -> Result<Hello, WireError> {
        let bad = || WireError::Handshake("a malformed hello".into());
        if b.len() < 12 {
            return Err(bad());
        }
        let window = u64::from_le_bytes(b[..8].try_into().expect("8 bytes"));
        let to_len = u32::from_le_bytes(b[8..12].try_into().expect("4 bytes")) as usize;
        let rest = &b[12..];
        if to_len > rest.len() {
            return Err(bad());
        }
        let to = std::str::from_utf8(&rest[..to_len]).map_err(|_| bad())?;
        let from = std::str::from_utf8(&rest[to_len..]).map_err(|_| bad())?;
        Ok(Hello {
            window,
            to: to.to_owned(),
            from: from.to_owned(),
        })
    }
}

/// The accepting side's handshake payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Accept {
    pub(crate) window: u64,
    pub(crate) name: String,
}

impl Accept {
    pub(crate) fn encode(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(8 + self.name.len());
        b.extend_from_slice(&self.window.to_le_bytes());
        b.extend_from_slice(self.name.as_bytes());
        b
    }

    pub(crate) fn decode(b: &[u8]) -> Result<Accept, WireError> {
        let bad = || WireError::Handshake("a malformed accept".into());
        if b.len() < 8 {
            return Err(bad());
        }
        let window = u64::from_le_bytes(b[..8].try_into().expect("8 bytes"));
        let name = std::str::from_utf8(&b[8..]).map_err(|_| bad())?;
        Ok(Accept {
            window,
            name: name.to_owned(),
        })
    }
}

/// Why bytes on a stream were refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum WireError {
    /// The magic is wrong: the peer does not speak laggard-tcp.
    NotLaggard,
    /// Another framing version.
    Version(u8),
    /// An unknown frame kind.
    Kind(u8),
    /// Reserved bytes that are not zero.
    Reserved,
    /// A length not allowed for the kind.
    Length { kind: Kind, len: u32 },
    /// A handshake that does not parse or does not fit.
    Handshake(String),
}

impl fmt::Display for WireError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WireError::NotLaggard => write!(
                f,
                "the stream does not start with laggard-tcp's magic; is something else listening there?"
            ),
            WireError::Version(v) => write!(
                f,
                "framing version {v}, this build speaks {VERSION}; run the same laggard version everywhere"
            ),
            WireError::Kind(k) => write!(f, "unknown frame kind {k}"),
            WireError::Reserved => write!(f, "reserved header bytes are not zero"),
            WireError::Length { kind, len } => {
                write!(f, "a {kind:?} frame of {len} bytes is longer than allowed")
            }
            WireError::Handshake(what) => write!(f, "handshake failed: {what}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_round_trip_and_bad_ones_are_errors() {
        let h = Header::new(Kind::Data, 4096, 77);
        assert_eq!(Header::decode(&h.encode(), 1 << 20), Ok(h));
        assert_eq!(
            Header::decode(&h.encode(), 100),
            Err(WireError::Length {
                kind: Kind::Data,
                len: 4096
            })
        );
        let mut b = h.encode();
        b[0] = b'X';
        assert_eq!(Header::decode(&b, 1 << 20), Err(WireError::NotLaggard));
        let mut b = h.encode();
        b[4] = 9;
        assert_eq!(Header::decode(&b, 1 << 20), Err(WireError::Version(9)));
        let mut b = h.encode();
        b[5] = 0;
        assert_eq!(Header::decode(&b, 1 << 20), Err(WireError::Kind(0)));
        let mut b = h.encode();
        b[7] = 1;
        assert_eq!(Header::decode(&b, 1 << 20), Err(WireError::Reserved));
        let hb = Header::new(Kind::Heartbeat, 3, 0).encode();
        assert!(Header::decode(&hb, 1 << 20).is_err());
        let ask = Header::new(Kind::Ask, 0, 5);
        assert_eq!(Header::decode(&ask.encode(), 1 << 20), Ok(ask));
        let ask = Header::new(Kind::Ask, 1, 0).encode();
        assert!(Header::decode(&ask, 1 << 20).is_err());
    }

    #[test]
    fn handshakes_round_trip_and_garbage_is_an_error() {
        let hello = Hello {
            window: 1 << 20,
            to: "laggard-server-0".into(),
            from: "laggard-worker-3".into(),
        };
        assert_eq!(Hello::decode(&hello.encode()), Ok(hello));
        let accept = Accept {
            window: 99,
            name: "s".into(),
        };
        assert_eq!(Accept::decode(&accept.encode()), Ok(accept));
        assert!(Hello::decode(&[1, 2, 3]).is_err());
        let mut b = vec![0u8; 12];
        b[8] = 200; // target name longer than the payload
        assert!(Hello::decode(&b).is_err());
        assert!(Accept::decode(&[0; 7]).is_err());
        assert!(Accept::decode(&[0, 0, 0, 0, 0, 0, 0, 0, 0xff]).is_err());
    }
}
