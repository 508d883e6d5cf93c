//! The conformance checks for kept frames ([`Endpoint::keep_frame`]) over
//! a transport that keeps them: the in-process transport, wrapped so that
//! its receivers keep every frame and report crowding when the frames
//! kept from a peer take half a connection's room. No transport of the
//! workspace keeps frames (RDMA, which does, runs the same checks in its
//! soft-RoCE guest), so this is how the worker's side of keeping is
//! checked on every machine.
//!
//! The wrapper also holds the rows a server sends with
//! [`Endpoint::send_held`] until [`Endpoint::release_held`], as an RDMA
//! device does until its write completes: a server that applied a push to
//! a row it still held would wait on itself for ever, which the session
//! checks below would catch by not finishing.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use laggard::Result;
use laggard::transport::{
    Endpoint, Event, HeldRow, InProcess, InProcessBuf, InProcessEndpoint, InProcessFrame,
    KeptFrame, PeerId, Transport,
};
use laggard_conformance::Factory;

/// In-process connections whose receivers keep frames.
struct Keeping {
    net: InProcess,
    capacity: usize,
    /// Rows sent with `send_held`, by every endpoint.
    rows_held: Arc<AtomicUsize>,
}

impl Keeping {
    fn new(capacity: usize) -> Self {
        Keeping {
            net: InProcess::with_capacity(capacity),
            capacity,
            rows_held: Arc::default(),
        }
    }
}

impl Transport for Keeping {
    type Endpoint = KeepingEndpoint;
    fn bind(&self, name: &str) -> Result<KeepingEndpoint> {
        Ok(KeepingEndpoint {
            inner: self.net.bind(name)?,
            capacity: self.capacity,
            kept: HashMap::new(),
            held: Vec::new(),
            rows_held: Arc::clone(&self.rows_held),
        })
    }
}

struct KeepingEndpoint {
    inner: InProcessEndpoint,
    capacity: usize,
    /// Bytes of frames kept and not yet dropped, per peer.
    kept: HashMap<PeerId, Arc<AtomicUsize>>,
    /// Rows sent with `send_held` and not yet released.
    held: Vec<HeldRow>,
    rows_held: Arc<AtomicUsize>,
}

/// A received frame and the peer it came from.
struct FromPeer(PeerId, InProcessFrame);

impl std::ops::Deref for FromPeer {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.1
    }
}

/// A kept frame that counts its bytes as kept until dropped.
struct Counted {
    frame: InProcessFrame,
    kept: Arc<AtomicUsize>,
}

impl AsRef<[u8]> for Counted {
    fn as_ref(&self) -> &[u8] {
        &self.frame
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        self.kept.fetch_sub(self.frame.len(), Ordering::SeqCst);
    }
}

impl Endpoint for KeepingEndpoint {
    type Buf = InProcessBuf;
    type Frame = FromPeer;

    fn name(&self) -> &str {
        self.inner.name()
    }
    fn connect(&mut self, name: &str, deadline: Instant) -> Result<PeerId> {
        self.inner.connect(name, deadline)
    }
    fn lend(&mut self, peer: PeerId, len: usize, deadline: Instant) -> Result<InProcessBuf> {
        self.inner.lend(peer, len, deadline)
    }
    fn send(&mut self, buf: InProcessBuf) -> Result<()> {
        self.inner.send(buf)
    }
    fn send_held(
        &mut self,
        peer: PeerId,
        head: &[u8],
        rows: Vec<HeldRow>,
        deadline: Instant,
    ) -> Result<()> {
        laggard::transport::send_held_as_parts(&mut self.inner, peer, head, &rows, deadline)?;
        self.rows_held.fetch_add(rows.len(), Ordering::SeqCst);
        self.held.extend(rows);
        Ok(())
    }
    fn held_rows_per_frame(&self) -> usize {
        64
    }
    fn release_held(&mut self, _deadline: Instant) -> Result<()> {
        self.held.clear();
        Ok(())
    }
    fn take_frame(&mut self, frame: Self::Frame, into: &mut Vec<u8>) {
        self.inner.take_frame(frame.1, into)
    }
    fn keep_frame(&mut self, frame: Self::Frame) -> std::result::Result<KeptFrame, Self::Frame> {
        let kept = self.kept.entry(frame.0).or_default().clone();
        kept.fetch_add(frame.1.len(), Ordering::SeqCst);
        Ok(KeptFrame::new(Counted {
            frame: frame.1,
            kept,
        }))
    }
    fn kept_frames_crowd(&self, peer: PeerId) -> bool {
        // No frame is longer than half the room (`max_frame_len`).
        self.kept
            .get(&peer)
            .is_some_and(|k| k.load(Ordering::SeqCst) * 2 >= self.capacity)
    }
    fn flush(&mut self, peer: PeerId, deadline: Instant) -> Result<()> {
        self.inner.flush(peer, deadline)
    }
    fn recv(&mut self, deadline: Instant) -> Result<Option<Event<Self::Frame>>> {
        Ok(self.inner.recv(deadline)?.map(|event| match event {
            Event::Frame(peer, frame) => Event::Frame(peer, FromPeer(peer, frame)),
            Event::Connected(peer) => Event::Connected(peer),
            Event::Disconnected(peer) => Event::Disconnected(peer),
        }))
    }
    fn disconnect(&mut self, peer: PeerId) {
        self.inner.disconnect(peer)
    }
    fn max_frame_len(&self) -> usize {
        self.capacity / 2
    }
    fn peer_name(&self, peer: PeerId) -> String {
        self.inner.peer_name(peer)
    }
}

struct KeepingFactory;

impl Factory for KeepingFactory {
    type T = Keeping;
    fn transport(&self) -> Keeping {
        Keeping::new(64 << 20)
    }
    fn with_buffering(&self, bytes: usize) -> Keeping {
        Keeping::new(bytes)
    }
    fn leaks(&self, t: &Keeping) -> Vec<String> {
        t.net.bound_names()
    }
}

#[test]
fn kept_frames_keep_their_bytes_until_they_crowd() {
    let crowded =
        laggard_conformance::kept_frames_keep_their_bytes_until_they_crowd(&KeepingFactory);
    assert!(crowded > 0, "the frames kept never crowded the connection");
}

/// Runs the kept-rows session over `net` on a thread of its own, failing
/// if it does not finish in time (a server waiting on a row it holds).
fn session(net: Keeping) -> laggard::proto::ClientStats {
    let rows_held = Arc::clone(&net.rows_held);
    let (done, finished) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = done.send(laggard_conformance::pulled_rows_read_right_when_kept(&net));
    });
    let stats = finished
        .recv_timeout(std::time::Duration::from_secs(300))
        .expect("the session did not finish: did the server push to a row it still held?");
    assert!(rows_held.load(Ordering::SeqCst) > 0, "no row was sent held");
    stats
}

#[test]
fn held_rows_arrive_whole_and_are_let_go() {
    laggard_conformance::held_rows_arrive_whole_and_are_let_go(&KeepingFactory);
}

#[test]
fn pulled_rows_read_right_where_they_are_kept() {
    let stats = session(Keeping::new(64 << 20));
    assert!(stats.rows_kept > 0, "no row was kept: {stats:?}");
    assert_eq!(
        stats.kept_rows_copied, 0,
        "a roomy connection crowded: {stats:?}"
    );
}

#[test]
fn pulled_rows_kept_are_copied_out_when_they_crowd() {
    let stats = session(Keeping::new(1 << 20));
    assert!(stats.rows_kept > 0, "no row was kept: {stats:?}");
    assert!(
        stats.kept_rows_copied > 0,
        "1 MiB of room never crowded: {stats:?}"
    );
}
