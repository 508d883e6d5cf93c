//! The in-process transport: endpoints in one process, connected by
//! queues. The default for tests and the quickstart.
//!
//! Zero-copy: a lent buffer is a `Vec` that moves, unchanged, into the
//! receiver's queue and out as the received frame; when the receiver drops
//! the frame the allocation goes back to the connection's pool, so a
//! steady stream of frames allocates nothing.
//!
//! Each direction of a connection has a credit of `capacity` bytes:
//! lending reserves the frame's length, releasing the received frame
//! returns it. A sender facing a slow receiver waits in `lend`.
//!
//! Locks: each inbox and each direction has its own mutex, and no code
//! holds two at once, so there is no lock order to get wrong.
//!
//! Waiting: `recv` spins briefly, then yields the processor for up to
//! 50 µs, and only then sleeps on its inbox's condition variable. Senders
//! notify only a receiver that sleeps (a notification is a system call
//! even when nobody waits), and returned credit wakes only a sender that
//! waits for it.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::ops::{Deref, DerefMut};
use std::time::{Duration, Instant};

use super::{Endpoint, Event, PeerId, Transport};
use crate::error::{Error, Result};
use crate::idhash::IdMap;
use crate::sync::{Arc, Backoff, Condvar, Mutex, MutexGuard, lock, wait_until};

/// Default credit per connection direction: 256 MiB.
const DEFAULT_CAPACITY: usize = 256 << 20;
/// Allocations kept per direction for reuse.
const POOL: usize = 4;
/// How long `recv` goes on yielding, once its spin is over, before it
/// sleeps.
const YIELD_FOR: std::time::Duration = std::time::Duration::from_micros(50);

/// A namespace of in-process endpoints. Cheap to clone; clones share the
/// namespace. Independent `InProcess` values are independent networks, so
/// two clusters in one process never see each other.
///
/// ```
/// use std::time::{Duration, Instant};
/// use laggard::transport::{Endpoint, Event, InProcess, Transport};
///
/// let net = InProcess::new();
/// let mut server = net.bind("server")?;
/// let mut client = net.bind("client")?;
/// let soon = Instant::now() + Duration::from_secs(5);
/// let peer = client.connect("server", soon)?;
/// let mut buf = client.lend(peer, 5, soon)?;
/// buf.copy_from_slice(b"hello");
/// client.send(buf)?;
/// assert!(matches!(server.recv(soon)?, Some(Event::Connected(_))));
/// match server.recv(soon)? {
///     Some(Event::Frame(_, frame)) => assert_eq!(&*frame, b"hello"),
///     other => panic!("unexpected {other:?}"),
/// }
/// # Ok::<(), laggard::Error>(())
/// ```
#[derive(Clone)]
pub struct InProcess {
    registry: Arc<Registry>,
    capacity: usize,
}

impl fmt::Debug for InProcess {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("InProcess")
            .field("capacity", &self.capacity)
            .finish_non_exhaustive()
    }
}

impl Default for InProcess {
    fn default() -> Self {
        Self::new()
    }
}

impl InProcess {
    /// A new, empty namespace with the default credit (256 MiB per
    /// connection direction).
    pub fn new() -> Self {
        Self::with_capacity(DEFAULT_CAPACITY)
    }

    /// A new namespace whose connections let at most `bytes` unread bytes
    /// queue per direction; also the largest frame.
    pub fn with_capacity(bytes: usize) -> Self {
        InProcess {
            registry: Arc::new(Registry {
                names: Mutex::new(HashMap::new()),
                bound: Condvar::new(),
            }),
            capacity: bytes.max(1),
        }
    }

    /// Names currently bound (for tests that check nothing leaked).
    pub fn bound_names(&self) -> Vec<String> {
        let mut names: Vec<_> = lock(&self.registry.names).keys().cloned().collect();
        names.sort();
        names
    }
}

impl Transport for InProcess {
    type Endpoint = InProcessEndpoint;

    fn bind(&self, name: &str) -> Result<InProcessEndpoint> {
        let inbox = Arc::new(Inbox {
            name: name.to_owned(),
            state: Mutex::new(InboxState {
                queue: VecDeque::new(),
                closed: false,
                next_peer: 0,
                sleeping: false,
            }),
            ready: Condvar::new(),
        });
        {
            let mut names = lock(&self.registry.names);
            if names.contains_key(name) {
                return Err(Error::Transport {
                    reason: format!("endpoint name {name:?} is already bound"),
                });
            }
            names.insert(name.to_owned(), inbox.clone());
        }
        self.registry.bound.notify_all();
        Ok(InProcessEndpoint {
            registry: self.registry.clone(),
            capacity: self.capacity,
            inbox,
            peers: IdMap::default(),
        })
    }
}

struct Registry {
    names: Mutex<HashMap<String, Arc<Inbox>>>,
    /// Notified when a name is bound.
    bound: Condvar,
}

/// Where an endpoint's events queue up.
struct Inbox {
    name: String,
    state: Mutex<InboxState>,
    /// Notified when a delivery is queued.
    ready: Condvar,
}

struct InboxState {
    queue: VecDeque<Delivery>,
    closed: bool,
    next_peer: u64,
    /// Whether the endpoint's thread sleeps on `ready`: a delivery only
    /// notifies then (a notification is a system call even with nobody
    /// asleep, and the receiver usually finds the frame while spinning).
    sleeping: bool,
}

impl Inbox {
    /// Queues `delivery`, or gives it back if the endpoint is gone.
    fn deliver(&self, delivery: Delivery) -> std::result::Result<(), Delivery> {
        let sleeping = {
            let mut state = lock(&self.state);
            if state.closed {
                return Err(delivery);
            }
            state.queue.push_back(delivery);
            state.sleeping
        };
        // The receiver sets `sleeping` under the lock and releases the lock
        // only inside the wait, so it cannot miss this notification: either
        // it queued itself before this delivery took the lock (seen above),
        // or it takes the lock after and finds the delivery queued.
        if sleeping {
            self.ready.notify_one();
        }
        Ok(())
    }

    fn new_peer_id(&self) -> PeerId {
        let mut state = lock(&self.state);
        state.next_peer += 1;
        PeerId(state.next_peer)
    }
}

enum Delivery {
    Connected(PeerId, Arc<Link>, usize),
    Frame(PeerId, InProcessFrame),
    Disconnected(PeerId),
}

/// A connection: side 0 connected to side 1.
struct Link {
    /// `dirs[i]` carries frames from side `i` to the other side.
    dirs: [Direction; 2],
    /// `ends[i]` is side `i`'s inbox and the id it knows the link by.
    ends: [(Arc<Inbox>, PeerId); 2],
}

impl Link {
    fn close(&self) {
        self.dirs.iter().for_each(Direction::close);
    }
}

/// One direction's credit and buffer pool.
struct Direction {
    state: Mutex<DirState>,
    /// Notified when credit comes back or the direction closes.
    changed: Condvar,
    capacity: usize,
}

struct DirState {
    in_flight: usize,
    closed: bool,
    /// Buffers for reuse. Each keeps the length it was last written to,
    /// so a lend that fits one needs no zero-filling.
    pool: Vec<Vec<u8>>,
    /// Threads asleep on `changed`: a release notifies only then.
    waiting: usize,
}

impl Direction {
    fn new(capacity: usize) -> Self {
        Direction {
            state: Mutex::new(DirState {
                in_flight: 0,
                closed: false,
                pool: Vec::new(),
                waiting: 0,
            }),
            changed: Condvar::new(),
            capacity,
        }
    }

    fn close(&self) {
        lock(&self.state).closed = true;
        self.changed.notify_all();
    }

    /// Waits until `ready` holds for the state, and returns it locked; at
    /// the deadline gives up with the bytes still unread.
    fn wait(
        &self,
        deadline: Instant,
        mut ready: impl FnMut(&DirState) -> bool,
    ) -> std::result::Result<MutexGuard<'_, DirState>, usize> {
        let mut state = lock(&self.state);
        while !ready(&state) {
            state.waiting += 1;
            let (guard, waiting) = wait_until(&self.changed, state, deadline);
            state = guard;
            state.waiting -= 1;
            if !waiting && !ready(&state) {
                return Err(state.in_flight);
            }
        }
        Ok(state)
    }

    /// Returns `len` bytes of credit and a buffer for reuse.
    fn release(&self, len: usize, buf: Vec<u8>) {
        let waiting = {
            let mut state = lock(&self.state);
            state.in_flight -= len;
            if state.pool.len() < POOL {
                state.pool.push(buf);
            }
            state.waiting > 0
        };
        // A waiter counts itself under the lock and releases it only inside
        // the wait, so none is missed (as for `Inbox::deliver`).
        if waiting {
            self.changed.notify_all();
        }
    }
}

/// An endpoint of an [`InProcess`] network.
pub struct InProcessEndpoint {
    registry: Arc<Registry>,
    capacity: usize,
    inbox: Arc<Inbox>,
    peers: IdMap<PeerId, (Arc<Link>, usize)>,
}

impl fmt::Debug for InProcessEndpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("InProcessEndpoint")
            .field("name", &self.inbox.name)
            .field("peers", &self.peers.len())
            .finish_non_exhaustive()
    }
}

impl InProcessEndpoint {
    fn link(&self, peer: PeerId) -> Result<(Arc<Link>, usize)> {
        self.peers
            .get(&peer)
            .cloned()
            .ok_or_else(|| Error::Disconnected {
                peer: format!("{peer} of {}", self.inbox.name),
                reason: "no such connection (it closed or never existed)".into(),
            })
    }

    fn gone(&self, peer: PeerId, link: &Link, side: usize) -> Error {
        Error::Disconnected {
            peer: format!("{} ({peer})", link.ends[1 - side].0.name),
            reason: format!("the connection from {} is closed", self.inbox.name),
        }
    }
}

impl Endpoint for InProcessEndpoint {
    type Buf = InProcessBuf;
    type Frame = InProcessFrame;

    fn name(&self) -> &str {
        &self.inbox.name
    }

    fn connect(&mut self, name: &str, deadline: Instant) -> Result<PeerId> {
        let started = Instant::now();
        let target = {
            let mut names = lock(&self.registry.names);
            loop {
                if let Some(inbox) = names.get(name) {
                    break inbox.clone();
                }
                let (guard, waiting) = wait_until(&self.registry.bound, names, deadline);
                names = guard;
                if !waiting {
                    return Err(Error::NoResponse {
                        what: format!("an endpoint named {name:?} to connect to"),
                        waited: started.elapsed(),
                    });
                }
            }
        };
        let mine = self.inbox.new_peer_id();
        let theirs = target.new_peer_id();
        let link = Arc::new(Link {
            dirs: [Direction::new(self.capacity), Direction::new(self.capacity)],
            ends: [(self.inbox.clone(), mine), (target.clone(), theirs)],
        });
        if target
            .deliver(Delivery::Connected(theirs, link.clone(), 1))
            .is_err()
        {
            return Err(Error::Disconnected {
                peer: name.to_owned(),
                reason: "the endpoint closed while connecting".into(),
            });
        }
        self.peers.insert(mine, (link, 0));
        Ok(mine)
    }

    fn lend(&mut self, peer: PeerId, len: usize, deadline: Instant) -> Result<InProcessBuf> {
        let (link, side) = self.link(peer)?;
        let dir = &link.dirs[side];
        if len > dir.capacity {
            return Err(Error::Transport {
                reason: format!(
                    "a {len}-byte frame exceeds the connection's {}-byte capacity; \
                     build the InProcess network with a larger capacity",
                    dir.capacity
                ),
            });
        }
        let started = Instant::now();
        let waited = dir.wait(deadline, |s| s.closed || s.in_flight + len <= dir.capacity);
        let mut state = waited.map_err(|unread| Error::NoResponse {
            what: format!(
                "room to send {len} bytes to {}, which has {unread} bytes unread",
                link.ends[1 - side].0.name
            ),
            waited: started.elapsed(),
        })?;
        if state.closed {
            drop(state);
            return Err(self.gone(peer, &link, side));
        }
        state.in_flight += len;
        let mut data = super::take_pooled(&mut state.pool, len);
        drop(state);
        // Reused buffers keep their old bytes (the encoder overwrites every
        // byte of a frame); only growth is zero-filled.
        if data.len() < len {
            data.resize(len, 0);
        }
        Ok(InProcessBuf {
            data: Some(data),
            len,
            link,
            side,
        })
    }

    fn send(&mut self, mut buf: InProcessBuf) -> Result<()> {
        let data = buf.data.take().expect("an unsent buffer holds its data");
        let (len, link, side) = (buf.len, buf.link.clone(), buf.side);
        drop(buf);
        let (inbox, peer) = &link.ends[1 - side];
        let frame = InProcessFrame {
            credit: len,
            data,
            link: link.clone(),
            dir: side,
        };
        match inbox.deliver(Delivery::Frame(*peer, frame)) {
            Ok(()) => Ok(()),
            // Dropping the frame returned inside the error releases its credit.
            Err(_) => Err(self.gone(link.ends[side].1, &link, side)),
        }
    }

    /// Swaps the buffers: no copy (see [`take_owned`](super::take_owned)).
    fn take_frame(&mut self, mut frame: InProcessFrame, into: &mut Vec<u8>) {
        // Dropping the frame pools what it holds then (`into`'s old
        // allocation, or its own after a copy) and returns its credit.
        let len = frame.credit;
        super::take_owned(&mut frame.data, len, into);
    }

    fn flush(&mut self, peer: PeerId, deadline: Instant) -> Result<()> {
        let (link, side) = self.link(peer)?;
        let dir = &link.dirs[side];
        let started = Instant::now();
        dir.wait(deadline, |s| s.closed || s.in_flight == 0)
            .map_err(|unread| Error::NoResponse {
                what: format!(
                    "{} to read the {unread} bytes sent to it",
                    link.ends[1 - side].0.name
                ),
                waited: started.elapsed(),
            })
            .map(drop)
    }

    fn recv(&mut self, deadline: Instant) -> Result<Option<Event<InProcessFrame>>> {
        // Spin briefly before sleeping: a reply usually follows within
        // microseconds, and waking a sleeping thread costs more than that.
        // Then yield for a while: on a busy machine that lets other threads
        // run, and on an idle one it catches a reply that takes tens of
        // microseconds (a long row applied, a pull answered) without the
        // cost of sleeping and being woken.
        let mut backoff = Backoff::new();
        let mut yield_until = None;
        loop {
            if !lock(&self.inbox.state).queue.is_empty() {
                break;
            }
            let now = Instant::now();
            if now >= deadline {
                break;
            }
            if !backoff.is_completed() {
                backoff.snooze();
                continue;
            }
            if cfg!(laggard_loom) || now >= *yield_until.get_or_insert(now + YIELD_FOR) {
                break;
            }
            crate::sync::thread::yield_now();
        }
        let delivery = {
            let mut state = lock(&self.inbox.state);
            loop {
                if let Some(d) = state.queue.pop_front() {
                    break d;
                }
                state.sleeping = true;
                let (guard, waiting) = wait_until(&self.inbox.ready, state, deadline);
                state = guard;
                state.sleeping = false;
                if !waiting {
                    return Ok(None);
                }
            }
        };
        Ok(Some(match delivery {
            Delivery::Connected(peer, link, side) => {
                self.peers.insert(peer, (link, side));
                Event::Connected(peer)
            }
            Delivery::Frame(peer, frame) => Event::Frame(peer, frame),
            Delivery::Disconnected(peer) => {
                self.peers.remove(&peer);
                Event::Disconnected(peer)
            }
        }))
    }

    fn disconnect(&mut self, peer: PeerId) {
        if let Some((link, side)) = self.peers.remove(&peer) {
            link.close();
            let (inbox, theirs) = &link.ends[1 - side];
            // If their endpoint is gone too there is nobody to tell.
            let _ = inbox.deliver(Delivery::Disconnected(*theirs));
        }
    }

    fn max_frame_len(&self) -> usize {
        self.capacity
    }

    /// At once: a dropped endpoint (a worker's thread that panicked or
    /// returned) closes its connections as it goes.
    fn reports_dead_peers_within(&self) -> Option<Duration> {
        Some(Duration::ZERO)
    }

    fn peer_name(&self, peer: PeerId) -> String {
        match self.peers.get(&peer) {
            Some((link, side)) => link.ends[1 - side].0.name.clone(),
            None => peer.to_string(),
        }
    }
}

impl Drop for InProcessEndpoint {
    fn drop(&mut self) {
        {
            let mut names = lock(&self.registry.names);
            if names
                .get(&self.inbox.name)
                .is_some_and(|i| Arc::ptr_eq(i, &self.inbox))
            {
                names.remove(&self.inbox.name);
            }
        }
        let pending: Vec<Delivery> = {
            let mut state = lock(&self.inbox.state);
            state.closed = true;
            state.queue.drain(..).collect()
        };
        for delivery in pending {
            match delivery {
                // A connection nobody accepted yet: close it too.
                Delivery::Connected(_, link, side) => {
                    link.close();
                    let (inbox, theirs) = &link.ends[1 - side];
                    let _ = inbox.deliver(Delivery::Disconnected(*theirs));
                }
                // Dropping the frame returns its credit.
                Delivery::Frame(..) | Delivery::Disconnected(_) => {}
            }
        }
        let peers: Vec<PeerId> = self.peers.keys().copied().collect();
        for peer in peers {
            self.disconnect(peer);
        }
    }
}

/// A buffer lent by [`InProcessEndpoint::lend`]; dropping it unsent
/// returns its credit.
pub struct InProcessBuf {
    /// At least `len` bytes: a pooled buffer may be longer.
    data: Option<Vec<u8>>,
    len: usize,
    link: Arc<Link>,
    side: usize,
}

impl fmt::Debug for InProcessBuf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "InProcessBuf({} bytes)", self.len())
    }
}

impl Deref for InProcessBuf {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        self.data.as_deref().map_or(&[], |d| &d[..self.len])
    }
}

impl DerefMut for InProcessBuf {
    fn deref_mut(&mut self) -> &mut [u8] {
        self.data
            .as_deref_mut()
            .map_or(&mut [], |d| &mut d[..self.len])
    }
}

impl Drop for InProcessBuf {
    fn drop(&mut self) {
        if let Some(data) = self.data.take() {
            self.link.dirs[self.side].release(self.len, data);
        }
    }
}

/// A received frame; dropping it returns the sender's credit.
pub struct InProcessFrame {
    /// At least `credit` bytes: a pooled buffer may be longer.
    data: Vec<u8>,
    /// The frame's length, returned as credit on release (`data` may
    /// have been swapped for another buffer by then).
    credit: usize,
    link: Arc<Link>,
    dir: usize,
}

impl fmt::Debug for InProcessFrame {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "InProcessFrame({} bytes)", self.credit)
    }
}

impl Deref for InProcessFrame {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.data[..self.credit]
    }
}

impl Drop for InProcessFrame {
    fn drop(&mut self) {
        let data = std::mem::take(&mut self.data);
        self.link.dirs[self.dir].release(self.credit, data);
    }
}

#[cfg(all(test, not(laggard_loom)))]
mod tests {
    use std::time::Duration;

    use super::*;

    fn soon() -> Instant {
        Instant::now() + Duration::from_secs(5)
    }

    /// Sends `len` bytes of `byte` and returns what arrived.
    fn round(
        a: &mut InProcessEndpoint,
        b: &mut InProcessEndpoint,
        to_b: PeerId,
        len: usize,
        byte: u8,
    ) -> Vec<u8> {
        let mut buf = a.lend(to_b, len, soon()).unwrap();
        assert_eq!(buf.len(), len);
        buf.fill(byte);
        a.send(buf).unwrap();
        match b.recv(soon()).unwrap() {
            Some(Event::Frame(_, frame)) => frame.to_vec(),
            other => panic!("expected a frame, got {other:?}"),
        }
    }

    #[test]
    fn pooled_buffers_are_lent_at_the_asked_length_and_return_exact_credit() {
        let net = InProcess::with_capacity(4096);
        let mut a = net.bind("a").unwrap();
        let mut b = net.bind("b").unwrap();
        let to_b = a.connect("b", soon()).unwrap();
        assert!(matches!(b.recv(soon()).unwrap(), Some(Event::Connected(_))));
        // A long frame, then short ones lent from its pooled buffer, then
        // long again: every frame arrives at its own length.
        for (len, byte) in [(4096, 1), (10, 2), (3, 3), (4000, 4), (4096, 5)] {
            let got = round(&mut a, &mut b, to_b, len, byte);
            assert_eq!(got, vec![byte; len]);
        }
        // Each frame returned exactly its own length as credit: the whole
        // capacity is free again, and a buffer dropped unsent returns its
        // credit too.
        a.flush(to_b, soon()).unwrap();
        drop(a.lend(to_b, 7, soon()).unwrap());
        let full = a.lend(to_b, 4096, Instant::now() + Duration::from_millis(500));
        assert_eq!(full.unwrap().len(), 4096);
    }
}
