//! Moving frames between endpoints: the [`Transport`] trait and the
//! in-process transport.
//!
//! A transport knows nothing of pushes and pulls; it moves opaque frames
//! (the protocol's encoded messages) between named endpoints, in order per
//! connection. The trait is shaped so that shared-memory and RDMA
//! transports can be zero-copy:
//!
//! - **Lent buffers.** A sender asks the endpoint for a buffer of the frame's
//!   exact length ([`Endpoint::lend`]) and encodes into it. A shared-memory
//!   transport lends a slot of the ring the receiver reads; an RDMA
//!   transport lends registered memory (registered once, reused), or a slot
//!   of the receiver's buffer that a one-sided WRITE fills. No transport has
//!   to copy the frame before it moves.
//! - **Credits and backpressure.** Lending reserves room at the receiver;
//!   when the receiver has too many unread bytes, `lend` waits (until its
//!   deadline). This is the credit scheme RDMA needs anyway (a WRITE needs a
//!   free remote slot) and what bounds memory everywhere else.
//! - **Asynchronous completion.** [`Endpoint::send`] hands the buffer over
//!   and returns; completion (the receiver released the frame, or a work
//!   completion arrived) is separate, and [`Endpoint::flush`] waits for it.
//! - **Borrowed receive.** [`Endpoint::recv`] hands out a frame that derefs
//!   to the bytes where they landed (ring slot, registered buffer); dropping
//!   it returns the space to the sender. A transport may let the receiver
//!   keep a frame for as long as it likes ([`Endpoint::keep_frame`]), as
//!   long as it says when kept frames crowd the sender
//!   ([`Endpoint::kept_frames_crowd`]): the worker caches long pulled rows
//!   so, never copying them out of the transport's memory.
//! - **Held rows.** A server sends a long pull response as its head and
//!   the rows where they lie in the table ([`Endpoint::send_held`]); a
//!   transport whose device reads memory in place (RDMA) sends them from
//!   there and holds them until its write completes
//!   ([`Endpoint::release_held`]), so neither side's CPU copies the rows.
//!
//! Every blocking call takes a deadline. A peer that goes away shows up as
//! an [`Event::Disconnected`] to the other side and makes sends to it fail,
//! never hang.

mod held;
mod inproc;
mod stash_pool;

use std::ops::{Deref, DerefMut};
use std::time::{Duration, Instant};

use crate::error::Result;

pub(crate) use held::HeldMemory;
pub use held::HeldRow;
pub use inproc::{InProcess, InProcessBuf, InProcessEndpoint, InProcessFrame};
pub use stash_pool::StashPool;

/// The shortest row piece a server sends, whatever its transport asks for
/// ([`Endpoint::row_piece_len`]): shorter pieces would cost more in
/// messages than they save.
pub const MIN_ROW_PIECE: usize = 4 << 10;

/// [`Endpoint::take_frame`] for a transport whose frame is the first `len`
/// bytes of a heap buffer `frame`: swaps `frame` and `into` (no copy), so
/// `into`'s old allocation is what the transport keeps. A frame whose
/// allocation is more than twice its length (a pooled buffer reused for a
/// shorter frame) is copied instead, so a short frame never leaves a long
/// allocation in the caller's hands.
///
/// ```
/// let mut frame = vec![7u8; 100];
/// let mut into = vec![1u8; 10];
/// laggard::transport::take_owned(&mut frame, 100, &mut into);
/// assert_eq!(into, [7u8; 100]);
/// assert_eq!(frame, [1u8; 10]); // the caller's old buffer, for reuse
///
/// // A 10-byte frame in a 1000-byte pooled buffer is copied out.
/// let mut pooled = Vec::with_capacity(1000);
/// pooled.resize(10, 3u8);
/// laggard::transport::take_owned(&mut pooled, 10, &mut into);
/// assert_eq!(into, [3u8; 10]);
/// assert!(pooled.capacity() >= 1000); // stays with the transport
/// ```
pub fn take_owned(frame: &mut Vec<u8>, len: usize, into: &mut Vec<u8>) {
    if frame.capacity() / 2 > len {
        into.clear();
        into.extend_from_slice(&frame[..len]);
    } else {
        std::mem::swap(frame, into);
        into.truncate(len);
    }
}

/// Takes from `pool` the buffer that best serves a frame of `len` bytes:
/// the shortest one at least that long, else the longest one (the least to
/// grow), or a new, empty one. For transports that pool frame buffers and
/// keep each one's initialised length, so that a reused buffer is never
/// zero-filled again.
///
/// ```
/// let mut pool = vec![vec![0u8; 10], vec![0u8; 500], vec![0u8; 100]];
/// assert_eq!(laggard::transport::take_pooled(&mut pool, 80).len(), 100);
/// assert_eq!(laggard::transport::take_pooled(&mut pool, 800).len(), 500);
/// assert_eq!(laggard::transport::take_pooled(&mut pool, 800).len(), 10);
/// assert!(laggard::transport::take_pooled(&mut pool, 800).is_empty());
/// ```
pub fn take_pooled(pool: &mut Vec<Vec<u8>>, len: usize) -> Vec<u8> {
    let by_len = |(_, b): &(usize, &Vec<u8>)| b.len();
    let fits = pool.iter().enumerate().filter(|(_, b)| b.len() >= len);
    let pick = fits
        .min_by_key(by_len)
        .or_else(|| pool.iter().enumerate().max_by_key(by_len))
        .map(|(i, _)| i);
    pick.map(|i| pool.swap_remove(i)).unwrap_or_default()
}

/// Transport memory a stash lies in: see [`Stash`].
pub trait StashMemory: Send + std::fmt::Debug + 'static {
    /// The block's bytes.
    fn bytes(&self) -> &[u8];
    /// The block's bytes, to write.
    fn bytes_mut(&mut self) -> &mut [u8];
    /// The block as [`Any`](std::any::Any), so the transport that lent it
    /// can recognise its own blocks in
    /// [`send_stashed`](Endpoint::send_stashed).
    fn as_any(&self) -> &dyn std::any::Any;
}

/// Heap memory as a stash: what a caller can send with
/// [`Endpoint::send_stashed`] when the transport lends none (it is copied
/// into the frame, as by the default).
impl StashMemory for Vec<u8> {
    fn bytes(&self) -> &[u8] {
        self
    }
    fn bytes_mut(&mut self) -> &mut [u8] {
        self
    }
    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}

/// A block of transport memory lent by [`Endpoint::stash`] for bytes sent
/// later as the tail of a frame; derefs to its bytes. Dropping it gives
/// the memory back to the transport.
#[derive(Debug)]
pub struct Stash(Box<dyn StashMemory>);

impl Stash {
    /// Wraps a transport's block.
    pub fn new(memory: impl StashMemory) -> Self {
        Stash(Box::new(memory))
    }

    /// The transport's block, to recognise it (`downcast_ref`).
    pub fn memory(&self) -> &dyn std::any::Any {
        self.0.as_any()
    }
}

impl Deref for Stash {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        self.0.bytes()
    }
}

impl DerefMut for Stash {
    fn deref_mut(&mut self) -> &mut [u8] {
        self.0.bytes_mut()
    }
}

/// A received frame's bytes, kept where they landed rather than copied
/// out ([`Endpoint::keep_frame`]); derefs to the frame's bytes. Clones
/// share the frame, which is released to its sender when the last clone
/// is dropped.
#[derive(Clone)]
pub struct KeptFrame(std::sync::Arc<dyn AsRef<[u8]> + Send + Sync>);

impl KeptFrame {
    /// Wraps a transport's frame.
    pub fn new(frame: impl AsRef<[u8]> + Send + Sync + 'static) -> Self {
        KeptFrame(std::sync::Arc::new(frame))
    }
}

impl Deref for KeptFrame {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        (*self.0).as_ref()
    }
}

impl std::fmt::Debug for KeptFrame {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "KeptFrame({} bytes)", self.len())
    }
}

/// Sends `head` and `rows` as one frame with [`Endpoint::send_parts`]: what
/// [`Endpoint::send_held`] does by default, for a transport that sends
/// some held rows in place and copies others.
pub fn send_held_as_parts<E: Endpoint + ?Sized>(
    ep: &mut E,
    peer: PeerId,
    head: &[u8],
    rows: &[HeldRow],
    deadline: Instant,
) -> Result<()> {
    let mut parts: Vec<&[u8]> = Vec::with_capacity(rows.len() + 1);
    parts.push(head);
    parts.extend(rows.iter().map(|row| &**row));
    ep.send_parts(peer, &parts, deadline)
}

/// A connection as one endpoint sees it. Ids are local to the endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PeerId(pub u64);

impl std::fmt::Display for PeerId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "peer {}", self.0)
    }
}

/// What [`Endpoint::recv`] returns.
#[derive(Debug)]
pub enum Event<F> {
    /// Another endpoint connected to this one.
    Connected(PeerId),
    /// A frame arrived from a peer; drop it to release its space.
    Frame(PeerId, F),
    /// A peer closed the connection, dropped its endpoint or failed. Frames
    /// it sent before are delivered first.
    Disconnected(PeerId),
}

/// A way to create endpoints that can reach each other: a network (one
/// in-process namespace, a shared-memory directory, a TCP cluster map).
pub trait Transport: Send + Sync {
    /// The endpoints this transport creates.
    type Endpoint: Endpoint;

    /// Creates an endpoint reachable by other endpoints of this transport
    /// under `name`. Binding a name that is in use is an error.
    fn bind(&self, name: &str) -> Result<Self::Endpoint>;
}

/// One participant's end of its connections.
///
/// An endpoint is driven by one thread at a time (`Send`, not `Sync`).
pub trait Endpoint: Send {
    /// A buffer lent for one outgoing frame, exactly as long as asked for.
    type Buf: DerefMut<Target = [u8]> + Send;
    /// A received frame, borrowed from the transport until dropped.
    type Frame: Deref<Target = [u8]> + Send;

    /// The name this endpoint is bound to.
    fn name(&self) -> &str;

    /// Connects to the endpoint bound to `name`, waiting for it to appear
    /// until `deadline`. The other side sees [`Event::Connected`].
    fn connect(&mut self, name: &str, deadline: Instant) -> Result<PeerId>;

    /// Lends a buffer for a frame of `len` bytes to `peer`, waiting until
    /// `deadline` while the peer has too many unread bytes.
    fn lend(&mut self, peer: PeerId, len: usize, deadline: Instant) -> Result<Self::Buf>;

    /// Sends a lent buffer's frame; returns once the transport owns it.
    /// Frames to one peer arrive in the order they were sent.
    fn send(&mut self, buf: Self::Buf) -> Result<()>;

    /// Sends one frame made of `parts`, in order: the same as lending a
    /// buffer for their concatenation, copying them in and sending it
    /// (the same waiting, the same errors), which is what this default
    /// does. A transport that can write scattered bytes without gathering
    /// them first (TCP's vectored writes) overrides it, so bulk rows go
    /// out without that copy.
    fn send_parts(&mut self, peer: PeerId, parts: &[&[u8]], deadline: Instant) -> Result<()> {
        let len = parts.iter().map(|p| p.len()).sum();
        let mut buf = self.lend(peer, len, deadline)?;
        let mut at = 0;
        for part in parts {
            buf[at..at + part.len()].copy_from_slice(part);
            at += part.len();
        }
        self.send(buf)
    }

    /// Lends memory for `len` bytes that stay a while before they are
    /// sent, as the tail of a frame ([`send_stashed`](Self::send_stashed)),
    /// to `peer`; `None` (the default) when the transport has no such
    /// memory, or none free now. Its bytes are unspecified (a block is
    /// reused as it is): the caller writes every byte it sends.
    ///
    /// A worker keeps a long pending push row in a stash, from its first
    /// delta of a clock until the server acknowledged it: a transport whose
    /// receiver can read the stash in place (shared memory), or whose
    /// device can send from it (RDMA, registered memory), then sends the
    /// row without copying it into a frame, so the worker copies a pushed
    /// row once. Nothing is sent while the stash is held; dropping it
    /// gives its memory back.
    fn stash(&mut self, peer: PeerId, len: usize) -> Option<Stash> {
        let _ = (peer, len);
        None
    }

    /// Sends one frame made of `head` followed by the bytes of `tail`, a
    /// stash: the same frame as [`send_parts`](Self::send_parts) of the
    /// two, which is what this default does. A transport whose receiver
    /// reads its stashes in place (shared memory) sends only `head` and
    /// where the tail lies, and hands the receiver the tail with
    /// [`frame_tail`](Self::frame_tail); one whose device can gather
    /// (RDMA) sends both in one write, read from where they lie. The stash
    /// must stay unchanged until the frame was released (the worker keeps a
    /// push's stash until the push is acknowledged, which the server does
    /// after releasing it); a stash lent for another connection, or by
    /// another endpoint, is copied as this default does.
    fn send_stashed(
        &mut self,
        peer: PeerId,
        head: &[u8],
        tail: &Stash,
        deadline: Instant,
    ) -> Result<()> {
        self.send_parts(peer, &[head, tail], deadline)
    }

    /// Sends one frame made of `head` followed by the bytes of `rows`, in
    /// order: the same frame as [`send_parts`](Self::send_parts) of them,
    /// which is what this default does (the rows are dropped, and so let
    /// go, once it returns).
    ///
    /// A transport whose device can read memory where it lies (RDMA) sends
    /// the rows from there, after `head`, with no copy, and keeps them
    /// until the device is done with them: pushes to a held table row wait
    /// meanwhile, so it must let them go in
    /// [`release_held`](Self::release_held). A server answers long pulls
    /// this way.
    fn send_held(
        &mut self,
        peer: PeerId,
        head: &[u8],
        rows: Vec<HeldRow>,
        deadline: Instant,
    ) -> Result<()> {
        send_held_as_parts(self, peer, head, &rows, deadline)
    }

    /// How many rows one [`send_held`](Self::send_held) sends from where
    /// they lie at most; 0 (the default) for a transport that copies them
    /// anyway. A server holds rows only for a transport that sends them in
    /// place, and only as many as it takes: holding costs an allocation
    /// per row, and a held row keeps pushes to it waiting.
    fn held_rows_per_frame(&self) -> usize {
        0
    }

    /// Lets go of every row an earlier [`send_held`](Self::send_held)
    /// still holds, waiting until `deadline` for the sends that read them;
    /// a connection whose sends are still not done by then is failed (so
    /// its device lets go of them). A server calls this before it applies
    /// a push: a held row would make the push wait for ever on its own
    /// thread. The default holds nothing and returns at once.
    fn release_held(&mut self, deadline: Instant) -> Result<()> {
        let _ = deadline;
        Ok(())
    }

    /// The tail of a received frame sent with
    /// [`send_stashed`](Self::send_stashed) and left where it lies: the
    /// frame's bytes are `frame` followed by these. Empty (the default)
    /// for every frame of a transport that copies tails into frames.
    fn frame_tail<'f>(&self, frame: &'f Self::Frame) -> &'f [u8] {
        let _ = frame;
        &[]
    }

    /// Moves a received frame's bytes into `into` (replacing what it held)
    /// and releases the frame, as dropping it would.
    ///
    /// The default copies. A transport whose frames own a heap buffer (TCP,
    /// in-process) swaps the two buffers instead, keeping `into`'s old
    /// allocation for later frames, so a large frame changes hands without
    /// a copy: the worker keeps a large pulled row in its cache this way.
    fn take_frame(&mut self, frame: Self::Frame, into: &mut Vec<u8>) {
        into.clear();
        into.extend_from_slice(&frame);
    }

    /// Keeps a received frame where it landed, for as long as the caller
    /// likes, instead of copying it out ([`take_frame`](Self::take_frame));
    /// or gives it back (`Err`, the default) when this transport's frames
    /// must not be kept.
    ///
    /// A kept frame holds its sender's room. A transport that keeps frames
    /// therefore reports, through [`kept_frames_crowd`](Self::kept_frames_crowd),
    /// when the frames received from a peer and not yet released take so
    /// much room that the peer may soon have to wait; the receiver must
    /// then copy out and drop the frames it keeps from that peer before it
    /// waits for more. The worker keeps long pulled rows in its cache this
    /// way, so a row written by the peer's device is read where it landed.
    fn keep_frame(&mut self, frame: Self::Frame) -> std::result::Result<KeptFrame, Self::Frame> {
        Err(frame)
    }

    /// Whether the frames received from `peer` and not released (kept
    /// ones above all) take half the room the peer may fill, in bytes or
    /// in frames: its sends may soon have to wait for them. Asked after
    /// every frame kept or received while frames are kept; always false
    /// (the default) for a transport whose frames are not kept. It must
    /// turn true early enough that a receiver that drops its kept frames
    /// whenever it does never makes a sender wait on them: at half the
    /// room, where no frame is longer than half of it.
    fn kept_frames_crowd(&self, peer: PeerId) -> bool {
        let _ = peer;
        false
    }

    /// Waits until every frame sent to `peer` was received and released,
    /// or `deadline`.
    fn flush(&mut self, peer: PeerId, deadline: Instant) -> Result<()>;

    /// The next event, or `None` if none came before `deadline` (a
    /// deadline in the past polls without blocking).
    fn recv(&mut self, deadline: Instant) -> Result<Option<Event<Self::Frame>>>;

    /// Closes the connection to `peer`; the peer sees
    /// [`Event::Disconnected`]. Unknown peers are ignored.
    fn disconnect(&mut self, peer: PeerId);

    /// The largest frame this endpoint can send.
    fn max_frame_len(&self) -> usize;

    /// How many bytes of a long row to send per frame, or `None` (the
    /// default) to send every row whole.
    ///
    /// A server asks its endpoint: a single-row pull whose row is longer
    /// than this is answered with pieces of this many bytes
    /// ([`RowPiece`](crate::proto::RowPiece) messages), in order, and such
    /// a row may be longer than the largest frame. The worker copies each
    /// piece into its cache and on into the caller's slice while the next
    /// is on its way, reading bytes still in the core's cache: a transport
    /// whose receiver copies every frame out of transport memory (a
    /// shared-memory ring) gains most, and over TCP it beats handing a
    /// whole row over without a copy. A worker whose endpoint asks for
    /// pieces copies pulled rows into its cache rather than taking frames
    /// over ([`take_frame`](Self::take_frame)). A server rounds the length
    /// down to a multiple of 64 bytes and up to [`MIN_ROW_PIECE`]. Both
    /// ends of a connection use the same transport, so the receiver's
    /// endpoint says the same.
    fn row_piece_len(&self) -> Option<usize> {
        None
    }

    /// How long, at most, this transport takes to report a connection
    /// gone ([`Event::Disconnected`]) once the process at its other end
    /// died (was killed, crashed, lost its host); `None` (the default) if
    /// it sets no bound.
    ///
    /// Both ends of a connection use the same transport, so a worker asks
    /// its own endpoint how soon a server notices a dead worker's
    /// connection. [`Worker::connect`](crate::Worker::connect) finding its
    /// id still held by another connection waits for that connection to
    /// be reported gone (its process may just have died); held longer than
    /// this bound, and a grace, it is another live process, and `connect`
    /// fails with [`Error::WorkerClaimed`](crate::Error::WorkerClaimed)
    /// then, not at its deadline.
    fn reports_dead_peers_within(&self) -> Option<Duration> {
        None
    }

    /// A name for `peer` in error messages (its endpoint name if known).
    fn peer_name(&self, peer: PeerId) -> String;
}
