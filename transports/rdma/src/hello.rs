//! The side-channel handshake: before any verbs traffic, the two ends of a
//! connection exchange, over TCP, what each needs to reach the other (queue
//! pair number, GID or LID, packet sequence number) and where it may write
//! (its receive ring, where the peer writes, and its credit word, which the
//! peer reads: addresses, keys, sizes).
//!
//! Everything read from the socket is checked; a malformed message is an
//! error naming what was wrong, never a panic.

use std::io::{self, Read, Write};

use crate::verbs::QpAddress;

const MAGIC: [u8; 8] = *b"LGRDMA\0\x02";
const KIND_HELLO: u8 = 1;
const KIND_REFUSE: u8 = 2;
/// The longest body accepted (names are at most 255 bytes each).
const MAX_BODY: usize = 1024;
/// The smallest and largest receive ring a peer may announce.
pub(crate) const RING_MIN: u64 = 4096;
pub(crate) const RING_MAX: u64 = 1 << 33;

/// One side's half of the handshake.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Hello {
    /// The sender's endpoint name.
    pub name: String,
    /// The endpoint name the sender means to reach.
    pub target: String,
    pub qp: QpAddress,
    /// The sender's receive ring: where the peer writes frames.
    pub ring_addr: u64,
    pub ring_len: u64,
    pub ring_rkey: u32,
    /// The sender's credit word: where the peer reads how far the sender
    /// got in the ring.
    pub credit_addr: u64,
    pub credit_rkey: u32,
    /// Receives the sender keeps posted: how many frames the peer may have
    /// in flight.
    pub recv_depth: u32,
}

/// What the acceptor answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Reply {
    Accept(Hello),
    Refuse(String),
}

fn bad(what: impl Into<String>) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("malformed RDMA handshake: {}", what.into()),
    )
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    let bytes = &s.as_bytes()[..s.len().min(255)];
    out.push(bytes.len() as u8);
    out.extend_from_slice(bytes);
}

fn frame(kind: u8, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(16 + body.len());
    out.extend_from_slice(&MAGIC);
    out.push(kind);
    out.extend_from_slice(&[0; 3]);
    out.extend_from_slice(&(body.len() as u32).to_le_bytes());
    out.extend_from_slice(body);
    out
}

impl Hello {
    pub fn encode(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(128);
        b.extend_from_slice(&self.qp.qpn.to_le_bytes());
        b.extend_from_slice(&self.qp.psn.to_le_bytes());
        b.extend_from_slice(&self.qp.lid.to_le_bytes());
        b.extend_from_slice(&self.qp.gid);
        b.extend_from_slice(&self.ring_addr.to_le_bytes());
        b.extend_from_slice(&self.ring_len.to_le_bytes());
        b.extend_from_slice(&self.ring_rkey.to_le_bytes());
        b.extend_from_slice(&self.credit_addr.to_le_bytes());
        b.extend_from_slice(&self.credit_rkey.to_le_bytes());
        b.extend_from_slice(&self.recv_depth.to_le_bytes());
        put_str(&mut b, &self.name);
        put_str(&mut b, &self.target);
        frame(KIND_HELLO, &b)
    }
}

/// Reads fields off a body, failing on truncation.
struct Cursor<'a>(&'a [u8]);

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize, what: &str) -> io::Result<&'a [u8]> {
        if self.0.len() < n {
            return Err(bad(format!("truncated at {what}")));
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }
    fn u16(&mut self, what: &str) -> io::Result<u16> {
        Ok(u16::from_le_bytes(
            self.take(2, what)?.try_into().unwrap_or_default(),
        ))
    }
    fn u32(&mut self, what: &str) -> io::Result<u32> {
        Ok(u32::from_le_bytes(
            self.take(4, what)?.try_into().unwrap_or_default(),
        ))
    }
    fn u64(&mut self, what: &str) -> io::Result<u64> {
        Ok(u64::from_le_bytes(
            self.take(8, what)?.try_into().unwrap_or_default(),
        ))
    }
    fn string(&mut self, what: &str) -> io::Result<String> {
        let len = self.take(1, what)?[0] as usize;
        let bytes = self.take(len, what)?;
        String::from_utf8(bytes.to_vec()).map_err(|_| bad(format!("{what} is not UTF-8")))
    }
}

fn decode_hello(body: &[u8]) -> io::Result<Hello> {
    let mut c = Cursor(body);
    let qpn = c.u32("queue pair number")?;
    let psn = c.u32("packet sequence number")?;
    let lid = c.u16("LID")?;
    let gid: [u8; 16] = c.take(16, "GID")?.try_into().unwrap_or_default();
    let ring_addr = c.u64("ring address")?;
    let ring_len = c.u64("ring length")?;
    let ring_rkey = c.u32("ring key")?;
    let credit_addr = c.u64("credit address")?;
    let credit_rkey = c.u32("credit key")?;
    let recv_depth = c.u32("receive depth")?;
    let name = c.string("name")?;
    let target = c.string("target name")?;
    if !c.0.is_empty() {
        return Err(bad(format!("{} bytes after the names", c.0.len())));
    }
    if qpn == 0 || qpn > 0xff_ffff {
        return Err(bad(format!("queue pair number {qpn} is not a 24-bit QPN")));
    }
    if psn > 0xff_ffff {
        return Err(bad(format!(
            "packet sequence number {psn} does not fit 24 bits"
        )));
    }
    if !ring_len.is_power_of_two() || !(RING_MIN..=RING_MAX).contains(&ring_len) {
        return Err(bad(format!(
            "ring length {ring_len} is not a power of two in {RING_MIN}..={RING_MAX}"
        )));
    }
    if ring_addr.checked_add(ring_len).is_none() {
        return Err(bad("ring extends past the address space"));
    }
    if !(4..=1 << 16).contains(&recv_depth) {
        return Err(bad(format!(
            "receive depth {recv_depth} is not in 4..=65536"
        )));
    }
    Ok(Hello {
        name,
        target,
        qp: QpAddress { qpn, psn, lid, gid },
        ring_addr,
        ring_len,
        ring_rkey,
        credit_addr,
        credit_rkey,
        recv_depth,
    })
}

/// Decodes one message from its header and body bytes.
pub(crate) fn decode(header: &[u8; 16], body: &[u8]) -> io::Result<Reply> {
    if header[..8] != MAGIC {
        return Err(bad(
            "wrong magic (not a laggard-rdma peer, or another version)",
        ));
    }
    if header[9..12] != [0; 3] {
        return Err(bad("reserved bytes are not zero"));
    }
    match header[8] {
        KIND_HELLO => decode_hello(body).map(Reply::Accept),
        KIND_REFUSE => Ok(Reply::Refuse(String::from_utf8_lossy(body).into_owned())),
        k => Err(bad(format!("unknown message kind {k}"))),
    }
}

/// Reads one message from `r`.
pub(crate) fn read(r: &mut impl Read) -> io::Result<Reply> {
    let mut header = [0u8; 16];
    r.read_exact(&mut header)?;
    let len = u32::from_le_bytes([header[12], header[13], header[14], header[15]]) as usize;
    if len > MAX_BODY {
        return Err(bad(format!("body of {len} bytes (at most {MAX_BODY})")));
    }
    let mut body = vec![0u8; len];
    r.read_exact(&mut body)?;
    decode(&header, &body)
}

/// Writes a hello.
pub(crate) fn write_hello(w: &mut impl Write, hello: &Hello) -> io::Result<()> {
    w.write_all(&hello.encode())
}

/// Writes a refusal with its reason.
pub(crate) fn write_refuse(w: &mut impl Write, reason: &str) -> io::Result<()> {
    let reason = &reason.as_bytes()[..reason.len().min(MAX_BODY)];
    w.write_all(&frame(KIND_REFUSE, reason))
}

/// Fuzzing entry: decodes arbitrary bytes as one message.
pub(crate) fn decode_bytes(bytes: &[u8]) -> io::Result<Reply> {
    read(&mut &bytes[..])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Hello {
        Hello {
            name: "laggard-worker-3".into(),
            target: "laggard-server-0".into(),
            qp: QpAddress {
                qpn: 0x11,
                psn: 0xabcdef,
                lid: 0,
                gid: [7; 16],
            },
            ring_addr: 0x7f00_0000_0000,
            ring_len: 1 << 24,
            ring_rkey: 0x226,
            credit_addr: 0x7f00_1000_0000,
            credit_rkey: 0x3dd,
            recv_depth: 256,
        }
    }

    #[test]
    fn round_trip() {
        let h = sample();
        assert_eq!(decode_bytes(&h.encode()).unwrap(), Reply::Accept(h));
        let mut out = Vec::new();
        write_refuse(&mut out, "no such endpoint").unwrap();
        assert_eq!(
            decode_bytes(&out).unwrap(),
            Reply::Refuse("no such endpoint".into())
        );
    }

    #[test]
    fn every_truncation_is_an_error() {
        let bytes = sample().encode();
        for n in 0..bytes.len() {
            assert!(decode_bytes(&bytes[..n]).is_err(), "{n} bytes accepted");
        }
    }

    #[test]
    fn bad_fields_are_named() {
        let mut h = sample();
        h.ring_len = 5000;
        let err = decode_bytes(&h.encode()).unwrap_err().to_string();
        assert!(err.contains("ring length 5000"), "{err}");
        let mut h = sample();
        h.qp.qpn = 0;
        assert!(
            decode_bytes(&h.encode())
                .unwrap_err()
                .to_string()
                .contains("queue pair number")
        );
        let mut bytes = sample().encode();
        bytes[0] = b'X';
        assert!(
            decode_bytes(&bytes)
                .unwrap_err()
                .to_string()
                .contains("magic")
        );
        let mut bytes = sample().encode();
        bytes[12..16].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(
            decode_bytes(&bytes)
                .unwrap_err()
                .to_string()
                .contains("body of")
        );
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..200)) {
            let _ = decode_bytes(&bytes);
        }
    }
}
