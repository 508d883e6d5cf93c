//! The wire format: frame header, message types, encoding and decoding.
//!
//! Every frame is a 16-byte header followed by a payload:
//!
//! | bytes  | field                                   |
//! |--------|-----------------------------------------|
//! | 0..4   | magic `b"LGRD"`                         |
//! | 4..6   | protocol version, little-endian `u16`   |
//! | 6      | message kind                            |
//! | 7      | reserved, must be 0                     |
//! | 8..12  | payload length, little-endian `u32`     |
//! | 12..16 | reserved, must be 0                     |
//!
//! All integers are little-endian. Payload fields are laid out so that
//! every `u64` (and every row of keys or values) starts at a multiple of 8
//! bytes from the start of the frame. Decoding borrows keys and values from
//! the frame instead of copying them, and checks every length against the
//! bytes actually present: a malformed frame is a [`DecodeError`], never a
//! panic.

use std::fmt;

/// The first four bytes of every frame.
pub const MAGIC: [u8; 4] = *b"LGRD";
/// The protocol version this crate speaks. Peers of another version are
/// refused at their first frame. Version 2 added [`RowPiece`], version 3
/// [`PushHeld`].
pub const VERSION: u16 = 4;
/// Bytes in the frame header.
pub const HEADER_LEN: usize = 16;
/// The largest payload the codec accepts unless told otherwise (1 GiB).
pub const DEFAULT_MAX_PAYLOAD: usize = 1 << 30;

const KIND_HELLO: u8 = 1;
const KIND_WELCOME: u8 = 2;
const KIND_PUSH: u8 = 3;
const KIND_PUSH_ACK: u8 = 4;
const KIND_PULL_REQUEST: u8 = 5;
const KIND_PULL_RESPONSE: u8 = 6;
const KIND_PULL_TIMED_OUT: u8 = 7;
const KIND_LEAVE: u8 = 8;
const KIND_SHUTDOWN: u8 = 9;
const KIND_FAULT: u8 = 10;
const KIND_ROW_PIECE: u8 = 11;
const KIND_PUSH_HELD: u8 = 12;

/// Why a frame could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum DecodeError {
    /// Fewer bytes than a header.
    Truncated {
        /// Bytes present.
        len: usize,
    },
    /// The frame does not start with [`MAGIC`].
    BadMagic([u8; 4]),
    /// The peer speaks another protocol version.
    Version {
        /// The version in the frame.
        got: u16,
    },
    /// An unknown message kind.
    UnknownKind(u8),
    /// The header's payload length disagrees with the frame's size.
    LengthMismatch {
        /// Payload length in the header.
        header: usize,
        /// Payload bytes present.
        actual: usize,
    },
    /// The payload is larger than the receiver accepts.
    Oversized {
        /// Payload length in the header.
        len: usize,
        /// The receiver's limit.
        max: usize,
    },
    /// A field is inconsistent with the payload (a count that does not fit,
    /// a non-zero reserved field, invalid UTF-8, ...).
    Malformed(&'static str),
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DecodeError::Truncated { len } => {
                write!(
                    f,
                    "frame of {len} bytes is shorter than the {HEADER_LEN}-byte header"
                )
            }
            DecodeError::BadMagic(m) => write!(f, "bad magic {m:02x?}, expected {MAGIC:02x?}"),
            DecodeError::Version { got } => write!(
                f,
                "peer speaks protocol version {got}, this build speaks {VERSION}"
            ),
            DecodeError::UnknownKind(k) => write!(f, "unknown message kind {k}"),
            DecodeError::LengthMismatch { header, actual } => write!(
                f,
                "header announces a {header}-byte payload but {actual} bytes arrived"
            ),
            DecodeError::Oversized { len, max } => {
                write!(f, "payload of {len} bytes exceeds the limit of {max}")
            }
            DecodeError::Malformed(what) => write!(f, "malformed payload: {what}"),
        }
    }
}

impl std::error::Error for DecodeError {}

/// The keys of a push section or pull, either as they arrived (raw
/// little-endian bytes inside a frame) or as a slice to be encoded.
#[derive(Debug, Clone, Copy)]
pub enum Keys<'a> {
    /// Little-endian `u64`s inside a received frame.
    Wire(&'a [u8]),
    /// Keys to encode.
    Native(&'a [u64]),
}

impl<'a> Keys<'a> {
    /// Number of keys.
    pub fn len(&self) -> usize {
        match self {
            Keys::Wire(b) => b.len() / 8,
            Keys::Native(k) => k.len(),
        }
    }

    /// True if there are no keys.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The keys in order.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = u64> + 'a {
        let (wire, native): (&'a [u8], &'a [u64]) = match *self {
            Keys::Wire(b) => (b, &[]),
            Keys::Native(k) => (&[], k),
        };
        let wire = wire.chunks_exact(8).map(read_u64);
        let native = native.iter().copied();
        // Exactly one of the two is non-empty.
        KeysIter { wire, native }
    }

    /// Appends the keys to `out`.
    pub fn extend_into(&self, out: &mut Vec<u64>) {
        out.extend(self.iter());
    }

    fn write<'v>(&self, w: &mut Writer<impl Sink<'v>>) {
        match self {
            Keys::Wire(b) => w.bytes(b),
            Keys::Native(k) => k.iter().for_each(|&k| w.u64(k)),
        }
    }
}

struct KeysIter<A, B> {
    wire: A,
    native: B,
}

impl<A: Iterator<Item = u64>, B: Iterator<Item = u64>> Iterator for KeysIter<A, B> {
    type Item = u64;
    fn next(&mut self) -> Option<u64> {
        self.wire.next().or_else(|| self.native.next())
    }
    fn size_hint(&self) -> (usize, Option<usize>) {
        let (a, _) = self.wire.size_hint();
        let (b, _) = self.native.size_hint();
        (a + b, Some(a + b))
    }
}

impl<A: Iterator<Item = u64>, B: Iterator<Item = u64>> ExactSizeIterator for KeysIter<A, B> {}

/// One table's rows inside a push: keys and their deltas as little-endian
/// bytes (`keys.len() × width × element size`; the receiver checks the
/// size against its schema).
#[derive(Debug, Clone, Copy)]
pub struct Section<'a> {
    /// The table's index in the cluster schema.
    pub table: u32,
    /// The rows' keys.
    pub keys: Keys<'a>,
    /// The deltas, row after row.
    pub values: &'a [u8],
}

impl Section<'_> {
    fn encoded_len(&self) -> usize {
        push_section_len(self.keys.len(), self.values.len())
    }
}

/// Bytes of a push frame before its sections: the header and the push's
/// own fields.
pub(crate) const PUSH_HEAD_LEN: usize = HEADER_LEN + 32;

/// Bytes a push section of `rows` keys and `value_bytes` bytes of deltas
/// adds to its frame.
pub(crate) fn push_section_len(rows: usize, value_bytes: usize) -> usize {
    16 + 8 * rows + pad8(value_bytes)
}

/// The sections of a push: parsed lazily from a received frame (already
/// validated), or a slice to encode.
#[derive(Debug, Clone, Copy)]
pub enum Sections<'a> {
    /// Validated sections inside a received frame.
    Wire {
        /// The section bytes.
        bytes: &'a [u8],
        /// The frame's tail, if it was sent apart from the rest
        /// ([`decode_split`]): the last section's values and their padding.
        tail: &'a [u8],
        /// How many sections they hold.
        count: usize,
    },
    /// Sections to encode.
    Native(&'a [Section<'a>]),
}

impl<'a> Sections<'a> {
    /// Number of sections.
    pub fn len(&self) -> usize {
        match self {
            Sections::Wire { count, .. } => *count,
            Sections::Native(s) => s.len(),
        }
    }

    /// True if the push carries no rows (a bare clock tick).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Calls `f` with each section in order: the sections of a push being
    /// sent as the list they are, without [`iter`](Self::iter)'s parsing
    /// machinery (encoding a push looks at them twice).
    fn for_each(&self, mut f: impl FnMut(&Section<'a>)) {
        match *self {
            Sections::Native(list) => list.iter().for_each(f),
            wire => wire.iter().for_each(|s| f(&s)),
        }
    }

    /// The sections in order.
    pub fn iter(&self) -> impl Iterator<Item = Section<'a>> + 'a {
        let (mut wire, native): (Option<Reader<'a>>, &'a [Section<'a>]) = match *self {
            Sections::Wire { bytes, tail, .. } => (Some(Reader::with_tail(bytes, tail)), &[]),
            Sections::Native(s) => (None, s),
        };
        let mut native = native.iter().copied();
        std::iter::from_fn(move || match &mut wire {
            // Validated by `decode`, so this cannot fail; stop if it somehow does.
            Some(r) if !r.is_empty() => read_section(r).ok(),
            Some(_) => None,
            None => native.next(),
        })
    }
}

/// A participant introduces itself to a server shard.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hello {
    /// Who is connecting.
    pub role: Role,
    /// Fingerprint of the connecting side's cluster schema; the server
    /// refuses a peer whose schema differs from its own.
    pub schema: u64,
    /// An id for this connection attempt (logged; lets a server tell a
    /// reconnect from a stale connection).
    pub session: u64,
}

/// Who is on the other end of a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// A worker, with its id.
    Worker(u32),
    /// The process that started the cluster and may shut it down.
    Controller,
}

/// A server shard accepts a participant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Welcome {
    /// The shard's index.
    pub shard: u32,
    /// Number of workers the shard expects.
    pub workers: u32,
    /// The highest push sequence number from this worker the shard has
    /// applied (0 if none): the worker resends everything after it.
    pub applied_seq: u64,
    /// The worker's clock as the shard knows it.
    pub clock: u64,
}

/// A batch of deltas from one worker (possibly none), optionally closing
/// the worker's clock.
#[derive(Debug, Clone, Copy)]
pub struct Push<'a> {
    /// The sending worker.
    pub worker: u32,
    /// Sequence number, per worker and shard, starting at 1 and increasing
    /// by one per push: a resent push (same number) is applied once.
    pub seq: u64,
    /// The clock the deltas belong to.
    pub clock: u64,
    /// True if the worker finished `clock` with this push (it is now at
    /// `clock + 1`).
    pub tick: bool,
    /// The rows, per table.
    pub sections: Sections<'a>,
}

/// A server acknowledges that a push was applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PushAck {
    /// The push's sequence number.
    pub seq: u64,
    /// The server's slowest active clock after the push.
    pub min_clock: u64,
}

/// A server took a push, and every earlier one of the worker's, but holds
/// it back unapplied for a clock hook
/// ([`ServerCore::hold_from`](super::ServerCore::hold_from)); a
/// [`PushAck`] follows once it is applied. A worker leaving the cluster
/// need not wait for that: the push is the server's to apply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PushHeld {
    /// The push's sequence number.
    pub seq: u64,
    /// When the server took it, it held back pushes for this clock and
    /// later (the clock its hook runs at next), until its slowest active
    /// worker gets there.
    pub hold_from: u64,
}

/// A worker asks for rows that reflect every update from clocks below
/// `min_clock`.
#[derive(Debug, Clone, Copy)]
pub struct PullRequest<'a> {
    /// Request id, unique per worker connection.
    pub req: u64,
    /// The server answers once every active worker reached this clock.
    pub min_clock: u64,
    /// How long the server may park the request, in milliseconds.
    pub timeout_ms: u64,
    /// The table.
    pub table: u32,
    /// The rows.
    pub keys: Keys<'a>,
}

/// A server's answer to a pull.
#[derive(Debug, Clone, Copy)]
pub struct PullResponse<'a> {
    /// The request answered.
    pub req: u64,
    /// The rows include every update from clocks below this one.
    pub clock: u64,
    /// The table.
    pub table: u32,
    /// Number of rows.
    pub rows: u32,
    /// The rows' values, little-endian, row after row.
    pub values: &'a [u8],
}

/// A piece of the one row a pull asked for, server to worker: a server
/// sends a long row in pieces, in order, when its transport asks for that
/// ([`Endpoint::row_piece_len`](crate::transport::Endpoint::row_piece_len)),
/// so the worker copies one piece out while the next one is written.
#[derive(Debug, Clone, Copy)]
pub struct RowPiece<'a> {
    /// The request answered.
    pub req: u64,
    /// The row includes every update from clocks below this one.
    pub clock: u64,
    /// The table.
    pub table: u32,
    /// Where `values` starts in the row, in bytes.
    pub offset: u64,
    /// The whole row's length in bytes.
    pub total: u64,
    /// This piece of the row's values, little-endian.
    pub values: &'a [u8],
}

/// A server gave up on a parked pull: the workers in `clocks` did not
/// reach `needed` within the request's timeout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PullTimedOut {
    /// The request.
    pub req: u64,
    /// The clock every active worker had to reach.
    pub needed: u64,
    /// How long the request was parked, in microseconds.
    pub waited_us: u64,
    /// Every worker's id, status (0 active, 1 left, 2 dead, 3 active but
    /// never connected to this shard) and clock.
    pub clocks: Vec<(u32, u32, u64)>,
}

/// A fatal error report; the sender drops the connection after it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fault<'a> {
    /// A machine-readable code (see [`FaultCode`]).
    pub code: u32,
    /// A message for humans.
    pub text: &'a str,
}

/// Codes carried by a [`Fault`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum FaultCode {
    /// The peer broke the protocol.
    Protocol = 1,
    /// The peer's cluster schema differs.
    Schema = 2,
    /// Another connection already speaks for this worker.
    DuplicateWorker = 3,
    /// A push or pull named an unknown table, wrong width or foreign key.
    BadRequest = 4,
    /// The server is shutting down.
    ShuttingDown = 5,
}

/// Every message of the protocol.
#[derive(Debug, Clone)]
pub enum Message<'a> {
    /// Connection setup, participant to server.
    Hello(Hello),
    /// Connection accepted, server to participant.
    Welcome(Welcome),
    /// Deltas and/or a clock tick, worker to server.
    Push(Push<'a>),
    /// A push was applied, server to worker.
    PushAck(PushAck),
    /// A push was taken but is held back, server to worker.
    PushHeld(PushHeld),
    /// A pull, worker to server.
    PullRequest(PullRequest<'a>),
    /// Rows, server to worker.
    PullResponse(PullResponse<'a>),
    /// A piece of one long row, server to worker.
    RowPiece(RowPiece<'a>),
    /// A parked pull expired, server to worker.
    PullTimedOut(PullTimedOut),
    /// The worker is done; it no longer holds anyone back.
    Leave {
        /// The worker.
        worker: u32,
    },
    /// Controller to server: stop serving.
    Shutdown,
    /// A fatal error; the connection closes.
    Fault(Fault<'a>),
}

impl<'a> Message<'a> {
    fn kind(&self) -> u8 {
        match self {
            Message::Hello(_) => KIND_HELLO,
            Message::Welcome(_) => KIND_WELCOME,
            Message::Push(_) => KIND_PUSH,
            Message::PushAck(_) => KIND_PUSH_ACK,
            Message::PushHeld(_) => KIND_PUSH_HELD,
            Message::PullRequest(_) => KIND_PULL_REQUEST,
            Message::PullResponse(_) => KIND_PULL_RESPONSE,
            Message::RowPiece(_) => KIND_ROW_PIECE,
            Message::PullTimedOut(_) => KIND_PULL_TIMED_OUT,
            Message::Leave { .. } => KIND_LEAVE,
            Message::Shutdown => KIND_SHUTDOWN,
            Message::Fault(_) => KIND_FAULT,
        }
    }

    /// A short name for logs and errors.
    pub fn name(&self) -> &'static str {
        match self {
            Message::Hello(_) => "hello",
            Message::Welcome(_) => "welcome",
            Message::Push(_) => "push",
            Message::PushAck(_) => "push ack",
            Message::PushHeld(_) => "push held",
            Message::PullRequest(_) => "pull request",
            Message::PullResponse(_) => "pull response",
            Message::RowPiece(_) => "row piece",
            Message::PullTimedOut(_) => "pull timeout",
            Message::Leave { .. } => "leave",
            Message::Shutdown => "shutdown",
            Message::Fault(_) => "fault",
        }
    }

    fn payload_len(&self) -> usize {
        match self {
            Message::Hello(_) | Message::Welcome(_) => 24,
            Message::Push(p) => {
                let mut sections = 0;
                p.sections.for_each(|s| sections += s.encoded_len());
                PUSH_HEAD_LEN - HEADER_LEN + sections
            }
            Message::PushAck(_) | Message::PushHeld(_) => 16,
            Message::PullRequest(p) => 32 + 8 * p.keys.len(),
            Message::PullResponse(p) => 32 + pad8(p.values.len()),
            Message::RowPiece(p) => 48 + pad8(p.values.len()),
            Message::PullTimedOut(t) => 32 + 16 * t.clocks.len(),
            Message::Leave { .. } => 8,
            Message::Shutdown => 0,
            Message::Fault(f) => 8 + pad8(f.text.len()),
        }
    }

    /// Bytes the encoded frame takes, header included.
    pub fn encoded_len(&self) -> usize {
        HEADER_LEN + self.payload_len()
    }

    /// Encodes the frame into the start of `out`, which must hold at least
    /// [`encoded_len`](Self::encoded_len) bytes; returns the bytes written.
    ///
    /// # Panics
    /// If `out` is too short (a caller bug: the length is known up front).
    pub fn encode(&self, out: &mut [u8]) -> usize {
        let len = self.encoded_len();
        self.encode_known_len(out, len);
        len
    }

    /// [`encode`](Self::encode) for a caller that has worked out
    /// [`encoded_len`](Self::encoded_len) already (to size `out`), so that
    /// a small message's sections are not walked twice.
    pub(crate) fn encode_known_len(&self, out: &mut [u8], len: usize) {
        self.write(&mut Writer::new(&mut out[..len]), len - HEADER_LEN);
    }

    /// Encodes the frame in pieces, leaving the bulk values (a push's
    /// deltas, a pull response's rows) where they are, for a transport
    /// that can send them without copying them into a frame first
    /// ([`Endpoint::send_parts`](crate::transport::Endpoint::send_parts)).
    pub fn encode_parts(&self) -> EncodedParts<'a> {
        let mut w = Writer {
            sink: SplitSink {
                head: Vec::new(),
                values: Vec::new(),
            },
            pos: 0,
        };
        self.write(&mut w, self.payload_len());
        let SplitSink { head, values } = w.sink;
        EncodedParts { head, values }
    }

    /// Writes the frame, whose payload takes `payload_len` bytes (the
    /// caller has worked it out already to size the output).
    fn write(&self, w: &mut Writer<impl Sink<'a>>, payload_len: usize) {
        debug_assert_eq!(payload_len, self.payload_len());
        write_header(w, self.kind(), payload_len);
        match self {
            Message::Hello(h) => {
                let (role, worker) = match h.role {
                    Role::Worker(id) => (0, id),
                    Role::Controller => (1, 0),
                };
                w.u32(role);
                w.u32(worker);
                w.u64(h.schema);
                w.u64(h.session);
            }
            Message::Welcome(m) => {
                w.u32(m.shard);
                w.u32(m.workers);
                w.u64(m.applied_seq);
                w.u64(m.clock);
            }
            Message::Push(p) => {
                w.u32(p.worker);
                w.u32(u32::from(p.tick));
                w.u64(p.seq);
                w.u64(p.clock);
                w.u32(p.sections.len() as u32);
                w.u32(0);
                p.sections.for_each(|s| write_section(w, s));
            }
            Message::PushAck(a) => {
                w.u64(a.seq);
                w.u64(a.min_clock);
            }
            Message::PushHeld(h) => {
                w.u64(h.seq);
                w.u64(h.hold_from);
            }
            Message::PullRequest(p) => {
                w.u64(p.req);
                w.u64(p.min_clock);
                w.u64(p.timeout_ms);
                w.u32(p.table);
                w.u32(p.keys.len() as u32);
                p.keys.write(w);
            }
            Message::PullResponse(p) => {
                write_pull_response_head(w, p.req, p.clock, p.table, p.rows, p.values.len());
                w.values(p.values);
                w.pad8();
            }
            Message::RowPiece(p) => {
                w.u64(p.req);
                w.u64(p.clock);
                w.u32(p.table);
                w.u32(0);
                w.u64(p.offset);
                w.u64(p.total);
                w.u64(p.values.len() as u64);
                w.values(p.values);
                w.pad8();
            }
            Message::PullTimedOut(t) => {
                w.u64(t.req);
                w.u64(t.needed);
                w.u64(t.waited_us);
                w.u32(t.clocks.len() as u32);
                w.u32(0);
                for &(worker, status, clock) in &t.clocks {
                    w.u32(worker);
                    w.u32(status);
                    w.u64(clock);
                }
            }
            Message::Leave { worker } => {
                w.u32(*worker);
                w.u32(0);
            }
            Message::Shutdown => {}
            Message::Fault(f) => {
                w.u32(f.code);
                w.u32(f.text.len() as u32);
                w.bytes(f.text.as_bytes());
                w.pad8();
            }
        }
        debug_assert_eq!(w.pos, self.encoded_len());
    }

    /// Encodes into a new vector (for tests and small control messages).
    pub fn to_vec(&self) -> Vec<u8> {
        let mut out = vec![0; self.encoded_len()];
        self.encode(&mut out);
        out
    }
}

/// Frame length and offset of the values of a pull response whose values
/// take `value_len` bytes: lets a server write rows straight into a send
/// buffer with [`write_pull_response`].
pub fn pull_response_layout(value_len: usize) -> (usize, usize) {
    (HEADER_LEN + 32 + pad8(value_len), HEADER_LEN + 32)
}

/// Length of a pull response's head: its bytes before the values.
pub const PULL_RESPONSE_HEAD_LEN: usize = HEADER_LEN + 32;

/// The head of a pull response of `rows` rows whose values take
/// `value_len` bytes, a multiple of 8: the frame is this head followed by
/// the values, for a server that sends them from where they lie
/// ([`Endpoint::send_held`](crate::transport::Endpoint::send_held)).
///
/// # Panics
/// If `value_len` is not a multiple of 8 (the frame would need padding
/// after the values).
pub fn pull_response_head(
    req: u64,
    clock: u64,
    table: u32,
    rows: u32,
    value_len: usize,
) -> [u8; PULL_RESPONSE_HEAD_LEN] {
    assert_eq!(value_len % 8, 0, "pull response values need padding");
    let mut head = [0u8; PULL_RESPONSE_HEAD_LEN];
    let mut w = Writer::new(&mut head);
    write_header(&mut w, KIND_PULL_RESPONSE, 32 + value_len);
    write_pull_response_head(&mut w, req, clock, table, rows, value_len);
    head
}

/// Writes a pull response's header into `frame` (as long as
/// [`pull_response_layout`] says) and returns the region for its values,
/// which the caller fills.
///
/// # Panics
/// If `frame` is not exactly the length the layout gives.
pub fn write_pull_response(
    frame: &mut [u8],
    req: u64,
    clock: u64,
    table: u32,
    rows: u32,
    value_len: usize,
) -> &mut [u8] {
    let (len, offset) = pull_response_layout(value_len);
    assert_eq!(frame.len(), len, "pull response frame has the wrong length");
    let mut w = Writer::new(frame);
    write_header(&mut w, KIND_PULL_RESPONSE, len - HEADER_LEN);
    write_pull_response_head(&mut w, req, clock, table, rows, value_len);
    // Zero the padding so no stale bytes leave the process.
    frame[offset + value_len..].fill(0);
    &mut frame[offset..offset + value_len]
}

fn write_pull_response_head<'v>(
    w: &mut Writer<impl Sink<'v>>,
    req: u64,
    clock: u64,
    table: u32,
    rows: u32,
    value_len: usize,
) {
    w.u64(req);
    w.u64(clock);
    w.u32(table);
    w.u32(rows);
    w.u64(value_len as u64);
}

fn write_section<'v>(w: &mut Writer<impl Sink<'v>>, s: &Section<'v>) {
    w.u32(s.table);
    w.u32(s.keys.len() as u32);
    w.u64(s.values.len() as u64);
    s.keys.write(w);
    w.values(s.values);
    w.pad8();
}

fn write_header<'v>(w: &mut Writer<impl Sink<'v>>, kind: u8, payload: usize) {
    w.bytes(&MAGIC);
    w.u16(VERSION);
    w.u8(kind);
    w.u8(0);
    w.u32(payload as u32);
    w.u32(0);
}

/// Checks a frame's header and returns its payload, without parsing it.
pub fn split_frame(frame: &[u8], max_payload: usize) -> Result<(u8, &[u8]), DecodeError> {
    split_frame_with_tail(frame, 0, max_payload)
}

/// [`split_frame`] for a frame whose last `tail_len` bytes came apart
/// from `frame` ([`decode_split`]).
fn split_frame_with_tail(
    frame: &[u8],
    tail_len: usize,
    max_payload: usize,
) -> Result<(u8, &[u8]), DecodeError> {
    if frame.len() < HEADER_LEN {
        return Err(DecodeError::Truncated { len: frame.len() });
    }
    let mut r = Reader::new(frame);
    let magic: [u8; 4] = r.take(4)?.try_into().expect("4 bytes");
    if magic != MAGIC {
        return Err(DecodeError::BadMagic(magic));
    }
    let version = r.u16()?;
    if version != VERSION {
        return Err(DecodeError::Version { got: version });
    }
    let kind = r.u8()?;
    if r.u8()? != 0 {
        return Err(DecodeError::Malformed("reserved header byte is not zero"));
    }
    let len = r.u32()? as usize;
    if r.u32()? != 0 {
        return Err(DecodeError::Malformed("reserved header word is not zero"));
    }
    if len > max_payload {
        return Err(DecodeError::Oversized {
            len,
            max: max_payload,
        });
    }
    let payload = &frame[HEADER_LEN..];
    let actual = payload.len().saturating_add(tail_len);
    if actual != len {
        return Err(DecodeError::LengthMismatch {
            header: len,
            actual,
        });
    }
    Ok((kind, payload))
}

/// Decodes one frame (exactly one: trailing bytes are an error), borrowing
/// keys and values from it.
///
/// ```
/// use laggard::proto::{decode, Message, PushAck, DEFAULT_MAX_PAYLOAD};
///
/// let frame = Message::PushAck(PushAck { seq: 7, min_clock: 3 }).to_vec();
/// match decode(&frame, DEFAULT_MAX_PAYLOAD)? {
///     Message::PushAck(ack) => assert_eq!(ack.seq, 7),
///     other => panic!("decoded {}", other.name()),
/// }
/// assert!(decode(&frame[..frame.len() - 1], DEFAULT_MAX_PAYLOAD).is_err());
/// # Ok::<(), laggard::proto::DecodeError>(())
/// ```
pub fn decode(frame: &[u8], max_payload: usize) -> Result<Message<'_>, DecodeError> {
    decode_split(frame, &[], max_payload)
}

/// Decodes one frame whose last bytes, `tail`, arrived apart from the
/// rest, `frame` ([`Endpoint::frame_tail`](crate::transport::Endpoint::frame_tail)):
/// the same message [`decode`] gives for their concatenation. Only a push
/// may have a tail, and it must start where a field starts: a sender puts
/// its last section's values and their padding there (what
/// [`EncodedParts::split_values`] leaves out of the head). Anything
/// else is an error.
///
/// ```
/// use laggard::proto::{decode, decode_split, Keys, Message, Push, Section, Sections};
///
/// let values = [5u8; 16];
/// let section = [Section { table: 0, keys: Keys::Native(&[9]), values: &values }];
/// let push = Message::Push(Push {
///     worker: 1, seq: 1, clock: 0, tick: true, sections: Sections::Native(&section),
/// });
/// let whole = push.to_vec();
/// let (head, tail) = whole.split_at(whole.len() - 16);
/// let max = 1 << 20;
/// match decode_split(head, tail, max)? {
///     Message::Push(p) => assert_eq!(p.sections.iter().next().unwrap().values, &values),
///     other => panic!("decoded {}", other.name()),
/// }
/// // A tail that cuts a field in two is refused.
/// let (head, tail) = whole.split_at(whole.len() - 20);
/// assert!(decode_split(head, tail, max).is_err());
/// # assert!(decode(&whole, max).is_ok());
/// # Ok::<(), laggard::proto::DecodeError>(())
/// ```
pub fn decode_split<'a>(
    frame: &'a [u8],
    tail: &'a [u8],
    max_payload: usize,
) -> Result<Message<'a>, DecodeError> {
    let (kind, payload) = split_frame_with_tail(frame, tail.len(), max_payload)?;
    if !tail.is_empty() && kind != KIND_PUSH {
        return Err(DecodeError::Malformed("only a push may have a tail"));
    }
    let mut r = Reader::new(payload);
    let msg = match kind {
        KIND_HELLO => {
            let role = r.u32()?;
            let worker = r.u32()?;
            let role = match role {
                0 => Role::Worker(worker),
                1 if worker == 0 => Role::Controller,
                _ => return Err(DecodeError::Malformed("unknown role")),
            };
            Message::Hello(Hello {
                role,
                schema: r.u64()?,
                session: r.u64()?,
            })
        }
        KIND_WELCOME => Message::Welcome(Welcome {
            shard: r.u32()?,
            workers: r.u32()?,
            applied_seq: r.u64()?,
            clock: r.u64()?,
        }),
        KIND_PUSH => {
            let worker = r.u32()?;
            let tick = match r.u32()? {
                0 => false,
                1 => true,
                _ => return Err(DecodeError::Malformed("unknown push flags")),
            };
            let seq = r.u64()?;
            let clock = r.u64()?;
            let count = r.u32()? as usize;
            r.zero_u32()?;
            let bytes = r.rest();
            // Validate every section now, so `Sections::iter` cannot fail
            // (a field cut in two by the tail is an error here).
            let mut check = Reader::with_tail(bytes, tail);
            for _ in 0..count {
                read_section(&mut check)?;
            }
            if !check.is_empty() {
                return Err(DecodeError::Malformed("bytes after the last push section"));
            }
            Message::Push(Push {
                worker,
                seq,
                clock,
                tick,
                sections: Sections::Wire { bytes, tail, count },
            })
        }
        KIND_PUSH_ACK => Message::PushAck(PushAck {
            seq: r.u64()?,
            min_clock: r.u64()?,
        }),
        KIND_PUSH_HELD => Message::PushHeld(PushHeld {
            seq: r.u64()?,
            hold_from: r.u64()?,
        }),
        KIND_PULL_REQUEST => {
            let req = r.u64()?;
            let min_clock = r.u64()?;
            let timeout_ms = r.u64()?;
            let table = r.u32()?;
            let rows = r.u32()? as usize;
            let keys = r.take(rows.checked_mul(8).ok_or(COUNT)?)?;
            Message::PullRequest(PullRequest {
                req,
                min_clock,
                timeout_ms,
                table,
                keys: Keys::Wire(keys),
            })
        }
        KIND_PULL_RESPONSE => {
            let req = r.u64()?;
            let clock = r.u64()?;
            let table = r.u32()?;
            let rows = r.u32()?;
            let value_len = usize::try_from(r.u64()?).map_err(|_| COUNT)?;
            let values = r.take_padded(value_len)?;
            Message::PullResponse(PullResponse {
                req,
                clock,
                table,
                rows,
                values,
            })
        }
        KIND_ROW_PIECE => {
            let req = r.u64()?;
            let clock = r.u64()?;
            let table = r.u32()?;
            r.zero_u32()?;
            let offset = r.u64()?;
            let total = r.u64()?;
            let value_len = r.u64()?;
            if offset.checked_add(value_len).is_none_or(|end| end > total) {
                return Err(DecodeError::Malformed("a row piece reaches past its row"));
            }
            let value_len = usize::try_from(value_len).map_err(|_| COUNT)?;
            let values = r.take_padded(value_len)?;
            Message::RowPiece(RowPiece {
                req,
                clock,
                table,
                offset,
                total,
                values,
            })
        }
        KIND_PULL_TIMED_OUT => {
            let req = r.u64()?;
            let needed = r.u64()?;
            let waited_us = r.u64()?;
            let count = r.u32()? as usize;
            r.zero_u32()?;
            if count.checked_mul(16) != Some(r.remaining()) {
                return Err(COUNT);
            }
            let mut clocks = Vec::with_capacity(count);
            for _ in 0..count {
                let worker = r.u32()?;
                // A shard lists every worker's clock once: an id past the
                // list would make the receiver's vector clock that long.
                if worker as usize >= count {
                    return Err(DecodeError::Malformed(
                        "a pull timeout lists a worker's clock past the number it lists",
                    ));
                }
                clocks.push((worker, r.u32()?, r.u64()?));
            }
            Message::PullTimedOut(PullTimedOut {
                req,
                needed,
                waited_us,
                clocks,
            })
        }
        KIND_LEAVE => {
            let worker = r.u32()?;
            r.zero_u32()?;
            Message::Leave { worker }
        }
        KIND_SHUTDOWN => Message::Shutdown,
        KIND_FAULT => {
            let code = r.u32()?;
            let len = r.u32()? as usize;
            let text = std::str::from_utf8(r.take_padded(len)?)
                .map_err(|_| DecodeError::Malformed("fault text is not UTF-8"))?;
            Message::Fault(Fault { code, text })
        }
        other => return Err(DecodeError::UnknownKind(other)),
    };
    if !r.is_empty() {
        return Err(DecodeError::Malformed("bytes after the end of the message"));
    }
    Ok(msg)
}

const COUNT: DecodeError = DecodeError::Malformed("a count or length does not fit the payload");

fn read_section<'a>(r: &mut Reader<'a>) -> Result<Section<'a>, DecodeError> {
    let table = r.u32()?;
    let rows = r.u32()? as usize;
    let value_len = usize::try_from(r.u64()?).map_err(|_| COUNT)?;
    let keys = r.take(rows.checked_mul(8).ok_or(COUNT)?)?;
    let values = r.take_padded(value_len)?;
    Ok(Section {
        table,
        keys: Keys::Wire(keys),
        values,
    })
}

/// `n` rounded up to a multiple of 8.
fn pad8(n: usize) -> usize {
    n.div_ceil(8) * 8
}

fn read_u64(b: &[u8]) -> u64 {
    u64::from_le_bytes(b.try_into().expect("8 bytes"))
}

/// Reads fields off a byte slice, then off a tail that arrived apart
/// from it (no field may lie in both); every read is bounds-checked.
struct Reader<'a> {
    bytes: &'a [u8],
    tail: &'a [u8],
}

impl<'a> Reader<'a> {
    fn new(bytes: &'a [u8]) -> Self {
        Reader { bytes, tail: &[] }
    }

    fn with_tail(bytes: &'a [u8], tail: &'a [u8]) -> Self {
        Reader { bytes, tail }
    }

    fn is_empty(&self) -> bool {
        self.bytes.is_empty() && self.tail.is_empty()
    }

    /// Bytes left before the tail (the tail only matters to pushes).
    fn remaining(&self) -> usize {
        self.bytes.len()
    }

    /// What is left before the tail.
    fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.bytes)
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        if self.bytes.is_empty() && n > 0 {
            self.bytes = std::mem::take(&mut self.tail);
        }
        if n > self.bytes.len() {
            if !self.tail.is_empty() {
                return Err(DecodeError::Malformed(
                    "a field lies partly in the frame and partly in its tail",
                ));
            }
            return Err(COUNT);
        }
        let (head, tail) = self.bytes.split_at(n);
        self.bytes = tail;
        Ok(head)
    }

    fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.take(1)?[0])
    }

    fn u16(&mut self) -> Result<u16, DecodeError> {
        Ok(u16::from_le_bytes(
            self.take(2)?.try_into().expect("2 bytes"),
        ))
    }

    fn u32(&mut self) -> Result<u32, DecodeError> {
        Ok(u32::from_le_bytes(
            self.take(4)?.try_into().expect("4 bytes"),
        ))
    }

    fn u64(&mut self) -> Result<u64, DecodeError> {
        Ok(read_u64(self.take(8)?))
    }

    fn zero_u32(&mut self) -> Result<(), DecodeError> {
        match self.u32()? {
            0 => Ok(()),
            _ => Err(DecodeError::Malformed("reserved field is not zero")),
        }
    }

    /// Skips the zero padding after a `len`-byte field.
    /// `len` bytes followed by the zeros that pad them to a multiple of 8.
    fn take_padded(&mut self, len: usize) -> Result<&'a [u8], DecodeError> {
        let bytes = self.take(len)?;
        if self.take(pad8(len) - len)?.iter().any(|&b| b != 0) {
            return Err(DecodeError::Malformed("padding is not zero"));
        }
        Ok(bytes)
    }
}

/// Where a [`Writer`] puts the frame. Generic rather than an enum, so that
/// encoding into a slice (every frame of every hot path) compiles to plain
/// stores without a branch per field.
trait Sink<'v> {
    /// Appends `b`, which starts at byte `pos` of the frame.
    fn bytes(&mut self, pos: usize, b: &[u8]);
    /// Appends a bulk value region, which starts at byte `pos`.
    fn values(&mut self, pos: usize, b: &'v [u8]);
}

/// Into a byte slice of exactly the frame's size.
struct SliceSink<'o>(&'o mut [u8]);

impl<'v> Sink<'v> for SliceSink<'_> {
    #[inline]
    fn bytes(&mut self, pos: usize, b: &[u8]) {
        self.0[pos..pos + b.len()].copy_from_slice(b);
    }

    #[inline]
    fn values(&mut self, pos: usize, b: &'v [u8]) {
        self.bytes(pos, b);
    }
}

/// Into `head`, except bulk value regions, which stay where they are and
/// are recorded as `(offset in head, bytes)`.
struct SplitSink<'v> {
    head: Vec<u8>,
    values: Vec<(usize, &'v [u8])>,
}

impl<'v> Sink<'v> for SplitSink<'v> {
    fn bytes(&mut self, _pos: usize, b: &[u8]) {
        self.head.extend_from_slice(b);
    }

    fn values(&mut self, _pos: usize, b: &'v [u8]) {
        self.values.push((self.head.len(), b));
    }
}

/// Writes fields of a frame; `pos` counts every byte of the frame so far,
/// value regions left in place included.
struct Writer<S> {
    sink: S,
    pos: usize,
}

impl<'o> Writer<SliceSink<'o>> {
    fn new(out: &'o mut [u8]) -> Self {
        Writer {
            sink: SliceSink(out),
            pos: 0,
        }
    }
}

impl<'v, S: Sink<'v>> Writer<S> {
    #[inline]
    fn bytes(&mut self, b: &[u8]) {
        self.sink.bytes(self.pos, b);
        self.pos += b.len();
    }

    /// A bulk value region: copied into a slice sink, left in place (and
    /// recorded) by a split one.
    #[inline]
    fn values(&mut self, b: &'v [u8]) {
        self.sink.values(self.pos, b);
        self.pos += b.len();
    }

    #[inline]
    fn u8(&mut self, v: u8) {
        self.bytes(&[v]);
    }

    #[inline]
    fn u16(&mut self, v: u16) {
        self.bytes(&v.to_le_bytes());
    }

    #[inline]
    fn u32(&mut self, v: u32) {
        self.bytes(&v.to_le_bytes());
    }

    #[inline]
    fn u64(&mut self, v: u64) {
        self.bytes(&v.to_le_bytes());
    }

    fn pad8(&mut self) {
        let zeros = [0u8; 8];
        let n = pad8(self.pos) - self.pos;
        // Most values are whole words already: no call to copy nothing.
        if n > 0 {
            self.bytes(&zeros[..n]);
        }
    }
}

/// A frame encoded in pieces: the bulk value regions stay where they are,
/// everything else is in one small buffer. [`parts`](Self::parts) gives
/// the pieces in order; their concatenation is the frame
/// [`Message::encode`] writes.
#[derive(Debug)]
pub struct EncodedParts<'v> {
    head: Vec<u8>,
    values: Vec<(usize, &'v [u8])>,
}

impl<'v> EncodedParts<'v> {
    /// For a frame whose one bulk value region ends it (a push of one
    /// section, a pull response of one row): the bytes before the values,
    /// and the values. Only their zero padding follows them, so the frame
    /// is these bytes, the values and `pad8(values.len()) - values.len()`
    /// zeros. `None` for any other frame.
    pub fn split_values(&self) -> Option<(&[u8], &'v [u8])> {
        let [(at, values)] = self.values[..] else {
            return None;
        };
        let rest = &self.head[at..];
        (rest.len() == pad8(values.len()) - values.len() && rest.iter().all(|&b| b == 0))
            .then(|| (&self.head[..at], values))
    }

    /// The frame's pieces in order (empty pieces left out).
    pub fn parts(&self) -> Vec<&[u8]> {
        let mut parts = Vec::with_capacity(2 * self.values.len() + 1);
        let mut from = 0;
        for &(at, bytes) in &self.values {
            parts.push(&self.head[from..at]);
            parts.push(bytes);
            from = at;
        }
        parts.push(&self.head[from..]);
        parts.retain(|p| !p.is_empty());
        parts
    }
}

#[cfg(all(test, not(laggard_loom)))]
mod tests {
    use super::*;

    #[test]
    fn a_pull_response_head_then_its_values_is_the_encoded_response() {
        let values: Vec<u8> = (0..64u8).collect();
        let msg = Message::PullResponse(PullResponse {
            req: 7,
            clock: 3,
            table: 2,
            rows: 2,
            values: &values,
        });
        let mut frame = pull_response_head(7, 3, 2, 2, values.len()).to_vec();
        frame.extend_from_slice(&values);
        assert_eq!(frame, msg.to_vec());
    }

    fn round_trip(msg: Message<'_>) -> Vec<u8> {
        let frame = msg.to_vec();
        assert_eq!(frame.len() % 8, 0, "{} frame not padded", msg.name());
        let back = decode(&frame, DEFAULT_MAX_PAYLOAD).expect("decodes");
        assert_eq!(back.to_vec(), frame, "{} did not round-trip", msg.name());
        let split = msg.encode_parts();
        assert_eq!(split.parts().concat(), frame, "{} in parts", msg.name());
        frame
    }

    #[test]
    fn every_message_round_trips() {
        let keys = [3u64, 1 << 40];
        let values = [1u8, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12];
        let sections = [
            Section {
                table: 0,
                keys: Keys::Native(&keys),
                values: &values,
            },
            Section {
                table: 2,
                keys: Keys::Native(&[]),
                values: &[],
            },
        ];
        round_trip(Message::Hello(Hello {
            role: Role::Worker(3),
            schema: 99,
            session: 5,
        }));
        round_trip(Message::Hello(Hello {
            role: Role::Controller,
            schema: 1,
            session: 2,
        }));
        round_trip(Message::Welcome(Welcome {
            shard: 1,
            workers: 4,
            applied_seq: 10,
            clock: 3,
        }));
        let frame = round_trip(Message::Push(Push {
            worker: 2,
            seq: 9,
            clock: 4,
            tick: true,
            sections: Sections::Native(&sections),
        }));
        let Message::Push(p) = decode(&frame, DEFAULT_MAX_PAYLOAD).unwrap() else {
            panic!("not a push")
        };
        let got: Vec<_> = p.sections.iter().collect();
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].keys.iter().collect::<Vec<_>>(), keys);
        assert_eq!(got[0].values, values);
        round_trip(Message::PushAck(PushAck {
            seq: 1,
            min_clock: 2,
        }));
        round_trip(Message::PushHeld(PushHeld {
            seq: 3,
            hold_from: 4,
        }));
        round_trip(Message::PullRequest(PullRequest {
            req: 1,
            min_clock: 2,
            timeout_ms: 3,
            table: 4,
            keys: Keys::Native(&keys),
        }));
        round_trip(Message::PullResponse(PullResponse {
            req: 1,
            clock: 2,
            table: 0,
            rows: 1,
            values: &values[..5],
        }));
        round_trip(Message::RowPiece(RowPiece {
            req: 1,
            clock: 2,
            table: 3,
            offset: 16,
            total: 40,
            values: &values[..5],
        }));
        round_trip(Message::PullTimedOut(PullTimedOut {
            req: 1,
            needed: 5,
            waited_us: 100,
            clocks: vec![(0, 0, 5), (1, 2, 1)],
        }));
        round_trip(Message::Leave { worker: 7 });
        round_trip(Message::Shutdown);
        round_trip(Message::Fault(Fault {
            code: FaultCode::Schema as u32,
            text: "schemas differ",
        }));
    }

    #[test]
    fn a_push_in_parts_leaves_its_deltas_where_they_are() {
        let keys = [1u64, 2];
        let values = vec![5u8; 1000];
        let sections = [Section {
            table: 0,
            keys: Keys::Native(&keys),
            values: &values,
        }];
        let msg = Message::Push(Push {
            worker: 1,
            seq: 2,
            clock: 3,
            tick: false,
            sections: Sections::Native(&sections),
        });
        let split = msg.encode_parts();
        let parts = split.parts();
        assert!(
            parts.iter().any(|p| std::ptr::eq(*p, &values[..])),
            "the deltas were copied"
        );
        assert_eq!(parts.concat(), msg.to_vec());
    }

    #[test]
    fn pull_response_written_in_place_matches_encode() {
        let values = [9u8; 12];
        let expected = Message::PullResponse(PullResponse {
            req: 4,
            clock: 8,
            table: 1,
            rows: 3,
            values: &values,
        })
        .to_vec();
        let (len, _) = pull_response_layout(values.len());
        let mut frame = vec![0xAA; len];
        write_pull_response(&mut frame, 4, 8, 1, 3, values.len()).copy_from_slice(&values);
        assert_eq!(frame, expected);
    }

    #[test]
    fn bad_frames_are_errors() {
        let good = Message::Leave { worker: 1 }.to_vec();
        assert!(matches!(
            decode(&good[..3], 1 << 20),
            Err(DecodeError::Truncated { .. })
        ));
        let mut bad = good.clone();
        bad[0] = b'X';
        assert!(matches!(
            decode(&bad, 1 << 20),
            Err(DecodeError::BadMagic(_))
        ));
        let mut bad = good.clone();
        bad[4..6].copy_from_slice(&(VERSION + 1).to_le_bytes());
        assert_eq!(
            decode(&bad, 1 << 20).unwrap_err(),
            DecodeError::Version { got: VERSION + 1 }
        );
        let mut bad = good.clone();
        bad[6] = 200;
        assert_eq!(
            decode(&bad, 1 << 20).unwrap_err(),
            DecodeError::UnknownKind(200)
        );
        let mut long = good.clone();
        long.extend_from_slice(&[0; 8]);
        assert!(matches!(
            decode(&long, 1 << 20),
            Err(DecodeError::LengthMismatch { .. })
        ));
        assert!(matches!(
            decode(&good, 4),
            Err(DecodeError::Oversized { .. })
        ));
        // A pull request claiming more keys than it carries.
        let mut req = Message::PullRequest(PullRequest {
            req: 1,
            min_clock: 0,
            timeout_ms: 0,
            table: 0,
            keys: Keys::Native(&[1, 2]),
        })
        .to_vec();
        req[HEADER_LEN + 28] = 255;
        assert!(matches!(
            decode(&req, 1 << 20),
            Err(DecodeError::Malformed(_))
        ));
        // A row piece that reaches past the row it claims to be part of,
        // and one whose end overflows.
        for (offset, total) in [(36, 40), (u64::MAX - 2, u64::MAX)] {
            let piece = Message::RowPiece(RowPiece {
                req: 1,
                clock: 0,
                table: 0,
                offset,
                total,
                values: &[1; 5],
            })
            .to_vec();
            assert_eq!(
                decode(&piece, 1 << 20).unwrap_err(),
                DecodeError::Malformed("a row piece reaches past its row")
            );
        }
    }
}
