//! The TCP transport: endpoints that listen on a socket, connections with
//! credit-based flow control, heartbeats and graceful close.
//!
//! Threads: each endpoint has an acceptor (blocked in `accept`, with a
//! short-lived thread per handshake) and a keeper (returns credit that is
//! due and found no frame to ride on, sends heartbeats, reads on its tick).
//! Connections have no thread: a thread that waits reads every connection
//! itself, straight into pooled frame buffers (see [`crate::reading`]).
//! Sends are written by the sending thread itself (header and payload in
//! one vectored write). So a frame costs no thread hand-off either way.

use std::collections::HashMap;
use std::fmt;
use std::fs::File;
use std::io::{self, BufReader, IoSlice, Read};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::ops::{Deref, DerefMut};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use laggard::idhash::IdMap;
use laggard::transport::{Endpoint, Event, PeerId, Transport};
use laggard::{Error, Result};

use crate::config::TcpConfig;
use crate::descriptors;
use crate::flow::{Flow, Inbox, Pop, Stalled};
use crate::reading::{self, Readers, Reading, SharedStream, Waker};
use crate::wire::{Accept, HEADER_LEN, Header, Hello, Kind};

/// Buffers kept per endpoint for reuse, and the largest one kept.
const POOL_BUFFERS: usize = 8;
const POOL_MAX_BYTES: usize = 64 << 20;
/// Read buffer per connection: small frames arrive many per system call;
/// larger reads bypass it and land in the frame's own buffer.
const READ_BUFFER: usize = 64 << 10;
/// First and longest pause between attempts to connect.
const RETRY_MIN: Duration = Duration::from_millis(10);
const RETRY_MAX: Duration = Duration::from_millis(200);
/// How long a refusal for want of descriptors waits to be written and for
/// the peer to hang up.
const REFUSE_WAIT: Duration = Duration::from_secs(1);

pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Critical sections here leave their state consistent before anything
    // that could panic, so a poisoned lock is still usable.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A network of TCP endpoints: which name listens at which address.
/// Cheap to clone; clones share the address book.
///
/// Names bound here without a known address listen on an ephemeral port of
/// [`TcpConfig::listen_ip`] and are added to the book, so endpoints of one
/// process find each other with no setup. Endpoints in other processes or
/// on other hosts are added with [`address`](Self::address) (the
/// [bootstrap](crate::bootstrap) does this from the cluster map).
///
/// ```
/// use std::time::{Duration, Instant};
/// use laggard::transport::{Endpoint, Event, Transport};
/// use laggard_tcp::TcpTransport;
///
/// let net = TcpTransport::new();
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
pub struct TcpTransport {
    book: Arc<Book>,
    cfg: TcpConfig,
}

#[derive(Default)]
struct Book {
    addrs: Mutex<HashMap<String, SocketAddr>>,
    /// Names bound by live endpoints; true where the address was chosen
    /// at bind time (and is forgotten at drop).
    bound: Mutex<HashMap<String, bool>>,
    /// Transport threads still running, over every endpoint.
    threads: AtomicUsize,
    /// What lives as long as the transport and its endpoints (the
    /// bootstrap's coordinator, answering late joins).
    kept: Mutex<Vec<Box<dyn std::any::Any + Send>>>,
}

impl fmt::Debug for TcpTransport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TcpTransport")
            .field("addresses", &*lock(&self.book.addrs))
            .field("config", &self.cfg)
            .finish()
    }
}

impl Default for TcpTransport {
    fn default() -> Self {
        Self::new()
    }
}

impl TcpTransport {
    /// A transport with the default settings and an empty address book.
    pub fn new() -> Self {
        TcpTransport {
            book: Arc::default(),
            cfg: TcpConfig::default(),
        }
    }

    /// Keeps `thing` until the transport and every endpoint bound through
    /// it are dropped.
    pub(crate) fn keep_alive(&self, thing: Box<dyn std::any::Any + Send>) {
        lock(&self.book.kept).push(thing);
    }

    /// A transport with these settings.
    pub fn with_config(cfg: TcpConfig) -> Result<Self> {
        cfg.validate()?;
        Ok(TcpTransport {
            book: Arc::default(),
            cfg,
        })
    }

    /// The transport's settings.
    pub fn config(&self) -> &TcpConfig {
        &self.cfg
    }

    /// Records that `name` listens at `addr` (an endpoint bound here under
    /// `name` will listen there).
    pub fn address(self, name: &str, addr: SocketAddr) -> Self {
        self.set_address(name, addr);
        self
    }

    /// As [`address`](Self::address), through a shared reference.
    pub fn set_address(&self, name: &str, addr: SocketAddr) {
        lock(&self.book.addrs).insert(name.to_owned(), addr);
    }

    /// Where `name` listens, if known.
    pub fn address_of(&self, name: &str) -> Option<SocketAddr> {
        lock(&self.book.addrs).get(name).copied()
    }

    /// Names bound by endpoints that are still alive.
    pub fn bound_names(&self) -> Vec<String> {
        let mut names: Vec<String> = lock(&self.book.bound).keys().cloned().collect();
        names.sort();
        names
    }

    /// Transport threads still running (zero once every endpoint was
    /// dropped).
    pub fn live_threads(&self) -> usize {
        // Relaxed: a count for reports and tests; each thread's work is
        // ordered by the join that follows its decrement.
        self.book.threads.load(Ordering::Relaxed)
    }

    fn spawn(&self, what: &str, f: impl FnOnce() + Send + 'static) -> Result<JoinHandle<()>> {
        let book = self.book.clone();
        // Relaxed: a counter only (see `live_threads`).
        book.threads.fetch_add(1, Ordering::Relaxed);
        let counted = book.clone();
        std::thread::Builder::new()
            .name(format!("laggard-tcp {what}"))
            .spawn(move || {
                f();
                // Relaxed: a counter only (see `live_threads`).
                counted.threads.fetch_sub(1, Ordering::Relaxed);
            })
            .map_err(|e| {
                // Relaxed: a counter only (see `live_threads`).
                book.threads.fetch_sub(1, Ordering::Relaxed);
                Error::Transport {
                    reason: format!("could not start a {what} thread: {e}"),
                }
            })
    }
}

impl TcpTransport {
    /// Binds `name` to a listener the caller already opened (the bootstrap
    /// opens it before roles are known). The address book learns its
    /// address.
    pub fn bind_on(&self, name: &str, listener: TcpListener) -> Result<TcpEndpoint> {
        self.claim(name, false)?;
        self.start(name, listener, false)
    }

    /// Marks `name` bound; `auto` says its address was chosen here.
    fn claim(&self, name: &str, auto: bool) -> Result<()> {
        let mut bound = lock(&self.book.bound);
        if bound.contains_key(name) {
            return Err(Error::Transport {
                reason: format!("the name {name:?} is already bound by a live endpoint"),
            });
        }
        bound.insert(name.to_owned(), auto);
        Ok(())
    }

    fn start(&self, name: &str, listener: TcpListener, auto: bool) -> Result<TcpEndpoint> {
        let started = listener
            .local_addr()
            .map_err(|e| Error::Transport {
                reason: format!("cannot read the listening address of {name:?}: {e}"),
            })
            .and_then(|local| {
                if auto || self.address_of(name).is_none() {
                    self.set_address(name, local);
                }
                TcpEndpoint::start(self.clone(), name, listener, local)
            });
        if started.is_err() {
            lock(&self.book.bound).remove(name);
        }
        started
    }
}

impl Transport for TcpTransport {
    type Endpoint = TcpEndpoint;

    fn bind(&self, name: &str) -> Result<TcpEndpoint> {
        let known = self.address_of(name);
        self.claim(name, known.is_none())?;
        let at = known.unwrap_or(SocketAddr::new(self.cfg.listen_ip, 0));
        match TcpListener::bind(at) {
            Ok(listener) => self.start(name, listener, known.is_none()),
            Err(e) => {
                lock(&self.book.bound).remove(name);
                Err(Error::Transport {
                    reason: format!(
                        "cannot listen on {at} for {name:?}: {e}{}",
                        if e.kind() == io::ErrorKind::AddrInUse {
                            " (another process holds the port: pick another, or stop it)"
                        } else {
                            ""
                        }
                    ),
                })
            }
        }
    }
}

/// Everything an endpoint's threads share.
pub(crate) struct Shared {
    name: String,
    pub(crate) cfg: TcpConfig,
    pub(crate) inbox: Inbox<Incoming>,
    /// Connections with released credit to return.
    pub(crate) keeper: Inbox<Arc<Conn>>,
    conns: Mutex<IdMap<PeerId, Arc<Conn>>>,
    /// The connections being read; whoever holds the lock reads them.
    /// (The shim's mutex: `flow::wait_reading` waits on it, and that loop
    /// is model-checked.)
    pub(crate) readers: laggard::sync::Mutex<Readers>,
    /// Connections whose handshake finished, for the next thread that reads to adopt.
    pub(crate) joining: Mutex<Vec<Reading>>,
    /// Wakes a thread polling `readers` when a connection joins.
    pub(crate) waker: Waker,
    /// Every socket still open, to cut them at drop.
    pub(crate) sockets: Mutex<HashMap<u64, Arc<TcpStream>>>,
    threads: Mutex<Vec<JoinHandle<()>>>,
    pub(crate) pool: Pool,
    next_id: AtomicU64,
    stopping: AtomicBool,
}

impl Shared {
    fn next_id(&self) -> u64 {
        // Relaxed: a unique counter; nothing else is published through it.
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    fn stopping(&self) -> bool {
        // Acquire: pairs with the Release store in `TcpEndpoint::drop`.
        self.stopping.load(Ordering::Acquire)
    }

    fn keep(&self, handle: JoinHandle<()>) {
        let mut threads = lock(&self.threads);
        // Reap threads of connections that ended meanwhile.
        let (done, running): (Vec<_>, Vec<_>) =
            threads.drain(..).partition(JoinHandle::is_finished);
        *threads = running;
        threads.push(handle);
        drop(threads);
        for h in done {
            let _ = h.join();
        }
    }
}

pub(crate) enum Incoming {
    Connected(PeerId),
    Frame(PeerId, TcpFrame),
    Disconnected(PeerId),
}

/// One connection.
pub(crate) struct Conn {
    pub(crate) id: PeerId,
    peer_name: String,
    pub(crate) flow: Flow,
    /// When the last frame was written; held while writing, so that
    /// frames never interleave.
    last_write: Mutex<Instant>,
    /// The connection's one socket, which its reader shares: written to
    /// under `last_write`, shut down from any thread.
    pub(crate) socket: Arc<TcpStream>,
}

impl Conn {
    fn new(id: PeerId, peer_name: String, windows: (usize, usize), socket: Arc<TcpStream>) -> Self {
        let (theirs, ours) = windows;
        Conn {
            id,
            peer_name,
            flow: Flow::with_granted(theirs, ours as u64),
            socket,
            last_write: Mutex::new(Instant::now()),
        }
    }

    /// Writes one frame: header and payload (the concatenation of its
    /// parts) in one vectored write.
    fn write(
        &self,
        shared: &Arc<Shared>,
        kind: Kind,
        payload: &[&[u8]],
        credit: u32,
    ) -> io::Result<()> {
        let len: usize = payload.iter().map(|p| p.len()).sum();
        let header = Header::new(kind, len as u32, credit).encode();
        let mut last_write = lock(&self.last_write);
        write_reading(shared, &self.socket, &header, payload)?;
        *last_write = Instant::now();
        Ok(())
    }

    /// Writes a frame, taking any credit to return along; on failure the
    /// connection is closed and the reason returned.
    fn send(
        &self,
        shared: &Arc<Shared>,
        kind: Kind,
        payload: &[&[u8]],
    ) -> std::result::Result<(), String> {
        let credit = self.flow.take_credit();
        self.write(shared, kind, payload, credit).map_err(|e| {
            let reason = format!("writing to the socket failed: {e}");
            self.flow.close(&reason, false);
            // Reading sees the shutdown and reports the disconnect.
            let _ = self.socket.shutdown(Shutdown::Both);
            reason
        })
    }

    /// Asks the peer for its credit, because this side has to wait for it.
    /// A failed write closes the connection, which ends the wait.
    fn ask(&self, shared: &Arc<Shared>) {
        let _ = self.send(shared, Kind::Ask, &[]);
    }

    /// Closes from this side: nothing more is sent or delivered; the peer
    /// sees end-of-stream after every frame already written.
    fn close_here(&self, shared: &Arc<Shared>) {
        let first = self.flow.closed().is_none();
        self.flow
            .close("the connection was closed by this endpoint", true);
        let _writing = lock(&self.last_write);
        if first {
            // Return the credit of frames released here, so a peer
            // flushing to us sees its frames consumed.
            let credit = self.flow.take_credit();
            if credit > 0 {
                let header = Header::new(Kind::Credit, 0, credit).encode();
                let _ = write_reading(shared, &self.socket, &header, &[]);
            }
        }
        let _ = self.socket.shutdown(Shutdown::Write);
    }

    fn idle_for(&self, now: Instant) -> Option<Duration> {
        // A writer busy elsewhere is not idle.
        let last_write = self.last_write.try_lock().ok()?;
        Some(now.saturating_duration_since(*last_write))
    }

    fn error(&self, stalled: Stalled, wanted: usize, waited: Duration) -> Error {
        match stalled {
            Stalled::TimedOut { outstanding } => Error::NoResponse {
                what: format!(
                    "{} to read what was sent to it ({outstanding} bytes unread of its \
                     {}-byte window, {wanted} more to send)",
                    self.peer_name,
                    self.flow.window()
                ),
                waited,
            },
            Stalled::Closed(reason) => Error::Disconnected {
                peer: self.peer_name.clone(),
                reason,
            },
        }
    }
}

/// Writes a frame on a blocking socket (during the handshake): one
/// vectored write, more if the socket takes only part of it. A write that
/// times out is an error.
fn write_all_vectored(stream: &TcpStream, header: &[u8], payload: &[&[u8]]) -> io::Result<()> {
    write_frame(stream, header, payload, |e, _| Err(e))
}

/// Writes a frame on a connection's nonblocking socket. While the socket
/// is full it reads every connection (so the peer, perhaps itself waiting
/// to write to us, is read); a peer that reads nothing for `dead_after` is
/// an error.
fn write_reading(
    shared: &Arc<Shared>,
    stream: &TcpStream,
    header: &[u8],
    payload: &[&[u8]],
) -> io::Result<()> {
    let dead_after = shared.cfg.dead_after;
    write_frame(stream, header, payload, |_, stuck| {
        if stuck >= dead_after {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("the peer read nothing for {stuck:?}"),
            ));
        }
        reading::wait_writable(shared, stream, dead_after - stuck);
        Ok(())
    })
}

/// Writes the header and the payload (the concatenation of its parts) in
/// one vectored write, more if the socket takes only part. When it has no
/// room (`WouldBlock`), `full` is given that error and how long no byte
/// went out, and either waits for room or fails the write.
fn write_frame(
    stream: &TcpStream,
    header: &[u8],
    payload: &[&[u8]],
    mut full: impl FnMut(io::Error, Duration) -> io::Result<()>,
) -> io::Result<()> {
    let mut slices: Vec<IoSlice<'_>> = std::iter::once(header)
        .chain(payload.iter().copied())
        .filter(|part| !part.is_empty())
        .map(IoSlice::new)
        .collect();
    let mut bufs = &mut slices[..];
    let mut progress = Instant::now();
    while !bufs.is_empty() {
        // `sendmsg` with MSG_NOSIGNAL, not `write_vectored` (`writev`): a
        // peer gone mid-write must be an error (EPIPE), never a SIGPIPE,
        // which kills a host program that does not ignore it, as a Rust
        // one does but a C or C++ one embedding laggard may not.
        let sent = rustix::net::sendmsg(
            stream,
            bufs,
            &mut rustix::net::SendAncillaryBuffer::default(),
            rustix::net::SendFlags::NOSIGNAL,
        )
        .map_err(io::Error::from);
        match sent {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => {
                IoSlice::advance_slices(&mut bufs, n);
                progress = Instant::now();
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => full(e, progress.elapsed())?,
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Reusable buffers, so a steady stream of frames allocates (and faults
/// in) nothing.
pub(crate) struct Pool {
    bufs: Mutex<Vec<Vec<u8>>>,
}

impl Pool {
    /// A buffer of at least `len` initialised bytes (contents
    /// unspecified). Buffers keep their initialised length between uses,
    /// so a reused buffer is never zeroed again.
    pub(crate) fn take(&self, len: usize) -> Vec<u8> {
        self.take_for_arrival(len, len)
    }

    /// A buffer for a frame of `len` bytes still to arrive: a pooled one
    /// that holds it if there is one, else one of at least
    /// `min(len, first)` initialised bytes, which the reader grows as the
    /// bytes arrive. So a peer that announces a long frame and sends
    /// little makes the endpoint allocate little.
    pub(crate) fn take_for_arrival(&self, len: usize, first: usize) -> Vec<u8> {
        let mut v = self.pick(len);
        let want = len.min(first);
        if v.len() < want {
            v.resize(want, 0);
        }
        v
    }

    /// The pooled buffer that best serves `len` bytes
    /// ([`take_pooled`](laggard::transport::take_pooled)).
    fn pick(&self, len: usize) -> Vec<u8> {
        laggard::transport::take_pooled(&mut lock(&self.bufs), len)
    }

    pub(crate) fn put(&self, v: Vec<u8>) {
        if v.capacity() == 0 || v.capacity() > POOL_MAX_BYTES {
            return;
        }
        let mut bufs = lock(&self.bufs);
        if bufs.len() < POOL_BUFFERS {
            bufs.push(v);
        }
    }
}

/// One participant's end of its TCP connections; see [`TcpTransport`].
pub struct TcpEndpoint {
    transport: TcpTransport,
    shared: Arc<Shared>,
    local: SocketAddr,
    /// The listening socket, which the acceptor blocks on.
    listener: Arc<TcpListener>,
    acceptor: Option<JoinHandle<()>>,
    keeper: Option<JoinHandle<()>>,
}

impl fmt::Debug for TcpEndpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TcpEndpoint")
            .field("name", &self.shared.name)
            .field("listening", &self.local)
            .finish_non_exhaustive()
    }
}

impl TcpEndpoint {
    fn start(
        transport: TcpTransport,
        name: &str,
        listener: TcpListener,
        local: SocketAddr,
    ) -> Result<Self> {
        let waker = Waker::new().map_err(|e| Error::Transport {
            reason: format!("cannot create the wake-up socket pair for {name:?}: {e}"),
        })?;
        let shared = Arc::new(Shared {
            name: name.to_owned(),
            cfg: transport.cfg.clone(),
            inbox: Inbox::new(),
            keeper: Inbox::new(),
            conns: Mutex::default(),
            readers: laggard::sync::Mutex::new(Vec::new()),
            joining: Mutex::default(),
            waker,
            sockets: Mutex::default(),
            threads: Mutex::default(),
            pool: Pool {
                bufs: Mutex::default(),
            },
            next_id: AtomicU64::new(0),
            stopping: AtomicBool::new(false),
        });
        let listener = Arc::new(listener);
        let mut ep = TcpEndpoint {
            transport: transport.clone(),
            shared: shared.clone(),
            local,
            listener: listener.clone(),
            acceptor: None,
            keeper: None,
        };
        let (s, t) = (shared.clone(), transport.clone());
        ep.acceptor = Some(transport.spawn("acceptor", move || accept_loop(&t, &s, &listener))?);
        let s = shared;
        ep.keeper = Some(transport.spawn("keeper", move || keeper_loop(&s))?);
        Ok(ep)
    }

    /// The address this endpoint listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    fn conn(&self, peer: PeerId) -> Result<Arc<Conn>> {
        lock(&self.shared.conns)
            .get(&peer)
            .cloned()
            .ok_or_else(|| Error::Disconnected {
                peer: peer.to_string(),
                reason: "no open connection has this id (it was closed)".into(),
            })
    }

    /// Reserves credit for a frame of `len` bytes to `peer`, waiting until
    /// `deadline` while the peer has too much unread.
    fn reserve(&self, peer: PeerId, len: usize, deadline: Instant) -> Result<Arc<Conn>> {
        let conn = self.conn(peer)?;
        if len > self.shared.cfg.max_frame_len {
            return Err(Error::Transport {
                reason: format!(
                    "a frame of {len} bytes is longer than the {} this transport sends \
                     (TcpConfig::max_frame_len)",
                    self.shared.cfg.max_frame_len
                ),
            });
        }
        self.wait_flow(&conn, len, deadline, |flow| flow.try_reserve(len))?;
        Ok(conn)
    }

    /// Waits until `check` finds `conn`'s flow ready, reading the
    /// connections meanwhile (after asking the peer for its credit), or
    /// until `deadline`. `len` is the frame waited for, for the error.
    fn wait_flow(
        &self,
        conn: &Conn,
        len: usize,
        deadline: Instant,
        check: impl Fn(&Flow) -> std::result::Result<bool, Stalled>,
    ) -> Result<()> {
        let started = Instant::now();
        let stalled = |s| conn.error(s, len, started.elapsed());
        if check(&conn.flow).map_err(stalled)? {
            return Ok(());
        }
        conn.ask(&self.shared);
        let got = reading::wait_for(&self.shared, deadline, || {
            check(&conn.flow).map(|ok| ok.then_some(())).transpose()
        });
        match got {
            Some(Ok(())) => Ok(()),
            Some(Err(s)) => Err(stalled(s)),
            None => Err(stalled(Stalled::TimedOut {
                outstanding: conn.flow.outstanding(),
            })),
        }
    }

    /// Adopts a connection whose handshake finished: it is read from now.
    fn join(&self, conn: Arc<Conn>, token: u64, reader: BufReader<SharedStream>) -> Result<()> {
        join_reading(&self.shared, conn, token, reader).map_err(|e| Error::Transport {
            reason: format!("cannot make the socket nonblocking: {e}"),
        })
    }
}

impl Endpoint for TcpEndpoint {
    type Buf = TcpBuf;
    type Frame = TcpFrame;

    fn name(&self) -> &str {
        &self.shared.name
    }

    fn connect(&mut self, name: &str, deadline: Instant) -> Result<PeerId> {
        let started = Instant::now();
        let (stream, reader, accept) = handshake(&self.transport, &self.shared, name, deadline)
            .map_err(|e| e.into_error(name, started.elapsed()))?;
        let id = PeerId(self.shared.next_id());
        let window = usize::try_from(accept.window).unwrap_or(usize::MAX);
        let windows = (window, self.shared.cfg.window);
        let conn = Arc::new(Conn::new(id, accept.name, windows, stream.clone()));
        lock(&self.shared.conns).insert(id, conn.clone());
        let token = self.shared.next_id();
        lock(&self.shared.sockets).insert(token, stream);
        if let Err(e) = self.join(conn.clone(), token, reader) {
            lock(&self.shared.conns).remove(&id);
            conn.close_here(&self.shared);
            return Err(e);
        }
        Ok(id)
    }

    fn lend(&mut self, peer: PeerId, len: usize, deadline: Instant) -> Result<TcpBuf> {
        let conn = self.reserve(peer, len, deadline)?;
        Ok(TcpBuf {
            data: self.shared.pool.take(len),
            len,
            conn,
            sent: false,
        })
    }

    fn send(&mut self, mut buf: TcpBuf) -> Result<()> {
        buf.sent = true;
        let data = std::mem::take(&mut buf.data);
        let sent = send_data(&self.shared, &buf.conn, &[&data[..buf.len]]);
        self.shared.pool.put(data);
        sent
    }

    /// Writes the parts straight from where they are, header first, in
    /// one vectored write: no copy into a lent buffer.
    fn send_parts(&mut self, peer: PeerId, parts: &[&[u8]], deadline: Instant) -> Result<()> {
        let len = parts.iter().map(|p| p.len()).sum();
        let conn = self.reserve(peer, len, deadline)?;
        // The credit reserved is spent as a sent lent buffer's is, also if
        // the write fails (the connection is closed then).
        send_data(&self.shared, &conn, parts)
    }

    /// Swaps the frame's pooled buffer into `into` (no copy); `into`'s old
    /// allocation joins the pool in its place (see
    /// [`laggard::transport::take_owned`]).
    fn take_frame(&mut self, mut frame: TcpFrame, into: &mut Vec<u8>) {
        let len = frame.len;
        laggard::transport::take_owned(&mut frame.data, len, into);
        // Dropping the frame pools what it holds now and releases the
        // frame's credit.
    }

    fn flush(&mut self, peer: PeerId, deadline: Instant) -> Result<()> {
        let conn = self.conn(peer)?;
        self.wait_flow(&conn, 0, deadline, Flow::is_drained)
    }

    fn recv(&mut self, deadline: Instant) -> Result<Option<Event<TcpFrame>>> {
        let shared = &self.shared;
        loop {
            let popped = reading::wait_for(shared, deadline, || match shared.inbox.try_pop() {
                Pop::Item(i) => Some(Some(i)),
                Pop::Closed => Some(None),
                Pop::Empty => None,
            });
            let Some(Some(incoming)) = popped else {
                return Ok(None);
            };
            match incoming {
                Incoming::Connected(p) => return Ok(Some(Event::Connected(p))),
                Incoming::Frame(p, frame) => {
                    // Frames of a connection closed here meanwhile are dropped.
                    if lock(&self.shared.conns).contains_key(&p) {
                        return Ok(Some(Event::Frame(p, frame)));
                    }
                }
                Incoming::Disconnected(p) => {
                    if lock(&self.shared.conns).remove(&p).is_some() {
                        return Ok(Some(Event::Disconnected(p)));
                    }
                }
            }
        }
    }

    fn disconnect(&mut self, peer: PeerId) {
        if let Some(conn) = lock(&self.shared.conns).remove(&peer) {
            conn.close_here(&self.shared);
        }
    }

    fn max_frame_len(&self) -> usize {
        self.shared.cfg.max_frame_len
    }

    fn row_piece_len(&self) -> Option<usize> {
        self.shared.cfg.row_piece_len()
    }

    /// [`TcpConfig::dead_after`](crate::TcpConfig::dead_after): a killed
    /// process's sockets close at once, and a host that went silent is
    /// declared gone after that long without a frame or heartbeat.
    fn reports_dead_peers_within(&self) -> Option<Duration> {
        Some(self.shared.cfg.dead_after)
    }

    fn peer_name(&self, peer: PeerId) -> String {
        match lock(&self.shared.conns).get(&peer) {
            Some(conn) => conn.peer_name.clone(),
            None => peer.to_string(),
        }
    }
}

impl Drop for TcpEndpoint {
    fn drop(&mut self) {
        let shared = &self.shared;
        // Release: pairs with the Acquire load in `Shared::stopping`.
        shared.stopping.store(true, Ordering::Release);
        // Wake the acceptor: shutting a listening socket down makes a
        // blocked `accept` return (on Linux). Failing that, with a
        // connection of our own, which needs a spare file descriptor.
        if rustix::net::shutdown(&*self.listener, rustix::net::Shutdown::Read).is_err() {
            let mut wake = self.local;
            if wake.ip().is_unspecified() {
                wake.set_ip(match wake {
                    SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
                    SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
                });
            }
            let _ = TcpStream::connect_timeout(&wake, Duration::from_secs(1));
        }
        if let Some(h) = self.acceptor.take() {
            let _ = h.join();
        }
        // Frames never received are released first, so their credit goes
        // back with the close.
        drop(shared.inbox.close());
        // Close every connection: peers see end-of-stream after what was
        // written, and close their side, which ends our reading of them.
        let conns: Vec<Arc<Conn>> = lock(&shared.conns).drain().map(|(_, c)| c).collect();
        for conn in &conns {
            conn.close_here(shared);
        }
        drop(shared.keeper.close());
        if let Some(h) = self.keeper.take() {
            let _ = h.join();
        }
        let end = Instant::now() + shared.cfg.linger;
        loop {
            let handshaking = lock(&shared.threads).iter().any(|h| !h.is_finished());
            let mut readers = laggard::sync::lock(&shared.readers);
            let reading = !readers.is_empty() || !lock(&shared.joining).is_empty();
            let now = Instant::now();
            if now >= end || !(handshaking || reading) {
                break;
            }
            let pause = (end - now).min(Duration::from_millis(1));
            reading::pump(shared, &mut readers, pause, None);
        }
        laggard::sync::lock(&shared.readers).clear();
        lock(&shared.joining).clear();
        // Peers that did not close in time are cut off.
        for s in lock(&shared.sockets).values() {
            let _ = s.shutdown(Shutdown::Both);
        }
        let threads: Vec<_> = lock(&shared.threads).drain(..).collect();
        for h in threads {
            let _ = h.join();
        }
        let mut bound = lock(&self.transport.book.bound);
        if bound.remove(&shared.name) == Some(true) {
            lock(&self.transport.book.addrs).remove(&shared.name);
        }
    }
}

/// Why a connection attempt failed.
enum ConnectError {
    /// Nobody accepted before the deadline; the last attempt's error.
    Unreachable(String),
    /// The endpoint refused, saying why.
    Refused(String),
    /// The other side broke the handshake.
    Protocol(String),
}

impl ConnectError {
    fn into_error(self, name: &str, waited: Duration) -> Error {
        match self {
            ConnectError::Unreachable(last) => Error::NoResponse {
                what: format!("endpoint {name:?} to accept a connection (last attempt: {last})"),
                waited,
            },
            ConnectError::Refused(message) => Error::Remote {
                peer: name.to_owned(),
                message,
            },
            ConnectError::Protocol(reason) => Error::Protocol {
                peer: name.to_owned(),
                reason,
            },
        }
    }
}

/// Connects to `name` and runs the handshake, retrying until `deadline`
/// while nobody listens or a connection breaks during the handshake.
fn handshake(
    transport: &TcpTransport,
    shared: &Arc<Shared>,
    name: &str,
    deadline: Instant,
) -> std::result::Result<(Arc<TcpStream>, BufReader<SharedStream>, Accept), ConnectError> {
    let mut pause = RETRY_MIN;
    loop {
        let last = match transport.address_of(name) {
            None => format!("no address is known for {name:?}"),
            Some(addr) => {
                let left = deadline.saturating_duration_since(Instant::now());
                match TcpStream::connect_timeout(&addr, left.max(Duration::from_millis(1))) {
                    Ok(stream) => match greet(stream, shared, name, deadline) {
                        Ok(done) => return Ok(done),
                        Err(Greeting::Io(e)) if timed_out(&e) => format!(
                            "{addr}: the connection was accepted, but the endpoint did not \
                             answer the handshake in time (is its process stopped or \
                             overloaded, or is something else listening there?)"
                        ),
                        Err(Greeting::Io(e)) => format!("{addr}: during the handshake: {e}"),
                        Err(Greeting::Failed(e)) => return Err(e),
                    },
                    Err(e) => format!("{addr}: {e}"),
                }
            }
        };
        if Instant::now() + pause >= deadline {
            return Err(ConnectError::Unreachable(last));
        }
        std::thread::sleep(pause);
        pause = (pause * 2).min(RETRY_MAX);
    }
}

/// Whether a blocking read or write gave up at its timeout (which Linux
/// reports as `WouldBlock`, "Resource temporarily unavailable").
fn timed_out(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}

enum Greeting {
    /// The connection broke; worth another attempt.
    Io(io::Error),
    /// The other side answered, negatively.
    Failed(ConnectError),
}

impl From<io::Error> for Greeting {
    fn from(e: io::Error) -> Self {
        Greeting::Io(e)
    }
}

/// The connecting side of the handshake on a fresh stream.
fn greet(
    stream: TcpStream,
    shared: &Arc<Shared>,
    name: &str,
    deadline: Instant,
) -> std::result::Result<(Arc<TcpStream>, BufReader<SharedStream>, Accept), Greeting> {
    stream.set_nodelay(true)?;
    let left = deadline.saturating_duration_since(Instant::now());
    let left = left.max(Duration::from_millis(1));
    stream.set_read_timeout(Some(left))?;
    stream.set_write_timeout(Some(left))?;
    let hello = Hello {
        window: shared.cfg.window as u64,
        to: name.to_owned(),
        from: shared.name.clone(),
    }
    .encode();
    let header = Header::new(Kind::Hello, hello.len() as u32, 0).encode();
    write_all_vectored(&stream, &header, &[&hello])?;
    let stream = Arc::new(stream);
    let mut reader = BufReader::with_capacity(READ_BUFFER, SharedStream(stream.clone()));
    let mut hb = [0u8; HEADER_LEN];
    reader.read_exact(&mut hb)?;
    let failed = |reason: String| Greeting::Failed(ConnectError::Protocol(reason));
    let header =
        Header::decode(&hb, shared.cfg.max_frame_len).map_err(|e| failed(e.to_string()))?;
    let mut payload = vec![0u8; header.len as usize];
    reader.read_exact(&mut payload)?;
    match header.kind {
        Kind::Accept => {
            let accept = Accept::decode(&payload).map_err(|e| failed(e.to_string()))?;
            if accept.name != name {
                return Err(failed(format!(
                    "the endpoint there is {:?}, not {name:?} (a stale address?)",
                    accept.name
                )));
            }
            let dead = Some(shared.cfg.dead_after);
            stream.set_read_timeout(dead)?;
            stream.set_write_timeout(dead)?;
            Ok((stream, reader, accept))
        }
        Kind::Refuse => Err(Greeting::Failed(ConnectError::Refused(
            String::from_utf8_lossy(&payload).into_owned(),
        ))),
        other => Err(failed(format!("expected an accept, got a {other:?} frame"))),
    }
}

fn accept_loop(transport: &TcpTransport, shared: &Arc<Shared>, listener: &TcpListener) {
    // One descriptor held in reserve: when the process has none left, it
    // is given up for a moment to accept a connection and tell the peer
    // why it cannot be served, rather than leave the peer waiting in the
    // backlog until its deadline for an answer that never comes.
    let mut reserve = File::open("/dev/null").ok();
    for stream in listener.incoming() {
        if shared.stopping() {
            break;
        }
        let stream = match stream {
            Ok(s) => s,
            Err(e) => {
                if descriptors::out_of_descriptors(&e) && reserve.take().is_some() {
                    if let Ok((stream, _)) = listener.accept() {
                        refuse_for_descriptors(&stream, &shared.name, &e);
                    }
                    reserve = File::open("/dev/null").ok();
                }
                // Out of descriptors or an aborted connection: try again
                // shortly rather than spin.
                std::thread::sleep(RETRY_MIN);
                continue;
            }
        };
        let token = shared.next_id();
        let stream = Arc::new(stream);
        lock(&shared.sockets).insert(token, stream.clone());
        let s = shared.clone();
        match transport.spawn("handshake", move || accept_conn(&s, stream, token)) {
            Ok(h) => shared.keep(h),
            Err(_) => {
                if let Some(s) = lock(&shared.sockets).remove(&token) {
                    let _ = s.shutdown(Shutdown::Both);
                }
            }
        }
    }
}

/// Answers a connection this process has no descriptor to serve with a
/// refusal that says so (`failed`: the error that said so), then closes
/// it. What the peer sent (its hello) is read until the peer hangs up, at
/// most [`REFUSE_WAIT`] in all, so that closing with it unread does not
/// reset the connection before the peer reads why.
fn refuse_for_descriptors(stream: &TcpStream, name: &str, failed: &io::Error) {
    let why = format!(
        "endpoint {name:?} cannot take another connection: its process has no file \
         descriptor left (one per connection): {}",
        descriptors::advice(failed)
    );
    let until = Instant::now() + REFUSE_WAIT;
    let _ = stream.set_write_timeout(Some(REFUSE_WAIT));
    let header = Header::new(Kind::Refuse, why.len() as u32, 0).encode();
    if write_all_vectored(stream, &header, &[why.as_bytes()]).is_ok() {
        let _ = stream.shutdown(Shutdown::Write);
        // Until the peer hangs up, but no longer than `until` in all: the
        // acceptor waits meanwhile.
        let mut hello = [0u8; 256];
        loop {
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() || stream.set_read_timeout(Some(left)).is_err() {
                break;
            }
            if !matches!((&*stream).read(&mut hello), Ok(n) if n > 0) {
                break;
            }
        }
    }
}

/// The accepting side of a handshake, then the connection's reader.
fn accept_conn(shared: &Arc<Shared>, stream: Arc<TcpStream>, token: u64) {
    let cfg = &shared.cfg;
    let setup = (|| -> io::Result<Option<(Arc<Conn>, BufReader<SharedStream>)>> {
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(cfg.dead_after))?;
        stream.set_write_timeout(Some(cfg.dead_after))?;
        let mut reader = BufReader::with_capacity(READ_BUFFER, SharedStream(stream.clone()));
        let mut hb = [0u8; HEADER_LEN];
        reader.read_exact(&mut hb)?;
        let refuse = |why: String| -> io::Result<Option<_>> {
            let h = Header::new(Kind::Refuse, why.len() as u32, 0).encode();
            write_all_vectored(&stream, &h, &[why.as_bytes()])?;
            Ok(None)
        };
        let header = match Header::decode(&hb, cfg.max_frame_len) {
            Ok(h) if h.kind == Kind::Hello => h,
            Ok(h) => return refuse(format!("expected a hello, got a {:?} frame", h.kind)),
            Err(e) => return refuse(e.to_string()),
        };
        let mut payload = vec![0u8; header.len as usize];
        reader.read_exact(&mut payload)?;
        let hello = match Hello::decode(&payload) {
            Ok(h) => h,
            Err(e) => return refuse(e.to_string()),
        };
        if hello.to != shared.name {
            return refuse(format!(
                "this endpoint is {:?}, not {:?} (a stale address?)",
                shared.name, hello.to
            ));
        }
        if shared.stopping() {
            return refuse(format!("endpoint {:?} is shutting down", shared.name));
        }
        let id = PeerId(shared.next_id());
        let window = usize::try_from(hello.window).unwrap_or(usize::MAX);
        let windows = (window, cfg.window);
        let conn = Arc::new(Conn::new(id, hello.from, windows, stream.clone()));
        lock(&shared.conns).insert(id, conn.clone());
        let accept = Accept {
            window: cfg.window as u64,
            name: shared.name.clone(),
        }
        .encode();
        if let Err(e) = conn.write(shared, Kind::Accept, &[&accept], 0) {
            lock(&shared.conns).remove(&id);
            return Err(e);
        }
        Ok(Some((conn, reader)))
    })();
    if let Ok(Some((conn, reader))) = setup {
        // Connected is queued before any frame of the connection can be.
        if shared.inbox.push(Incoming::Connected(conn.id)).is_ok()
            && join_reading(shared, conn.clone(), token, reader).is_ok()
        {
            return;
        }
        lock(&shared.conns).remove(&conn.id);
    }
    if let Some(s) = lock(&shared.sockets).remove(&token) {
        let _ = s.shutdown(Shutdown::Both);
    }
}

/// Hands a connection whose handshake finished to whoever reads next.
fn join_reading(
    shared: &Arc<Shared>,
    conn: Arc<Conn>,
    token: u64,
    reader: BufReader<SharedStream>,
) -> io::Result<()> {
    let reading = Reading::new(conn, token, reader)?;
    lock(&shared.joining).push(reading);
    shared.waker.wake();
    Ok(())
}

/// Returns credit that is due and found no frame to ride on (the peer
/// asked for it, or half its window is unreturned), sends heartbeats on
/// idle connections, and reads the connections if nobody else is (so a
/// peer's heartbeats are seen while the endpoint's user is busy).
fn keeper_loop(shared: &Arc<Shared>) {
    let cfg = &shared.cfg;
    let tick = cfg.heartbeat / 2;
    let mut due = Vec::new();
    loop {
        if !shared.keeper.drain(Instant::now() + tick, &mut due) {
            return;
        }
        if !due.is_empty() {
            for conn in due.drain(..) {
                let credit = conn.flow.take_credit();
                if credit > 0 && conn.flow.closed().is_none() {
                    if let Err(e) = conn.write(shared, Kind::Credit, &[], credit) {
                        conn.flow.restore_credit(credit);
                        conn.flow
                            .close(&format!("writing to the socket failed: {e}"), false);
                        let _ = conn.socket.shutdown(Shutdown::Both);
                    }
                }
            }
        }
        let now = Instant::now();
        let conns: Vec<Arc<Conn>> = lock(&shared.conns).values().cloned().collect();
        for conn in conns {
            if conn.idle_for(now).is_some_and(|idle| idle >= tick) && conn.flow.closed().is_none() {
                let _ = conn.send(shared, Kind::Heartbeat, &[]);
            }
        }
        if let Some(mut readers) = reading::try_readers(shared) {
            reading::pump(shared, &mut readers, Duration::ZERO, None);
        }
    }
}

/// Writes a data frame of `parts` on `conn`, whose credit the caller
/// reserved.
fn send_data(shared: &Arc<Shared>, conn: &Conn, parts: &[&[u8]]) -> Result<()> {
    if let Some(reason) = conn.flow.closed() {
        return Err(Error::Disconnected {
            peer: conn.peer_name.clone(),
            reason,
        });
    }
    conn.send(shared, Kind::Data, parts)
        .map_err(|reason| Error::Disconnected {
            peer: conn.peer_name.clone(),
            reason,
        })
}

/// A buffer lent for one frame; send it with [`Endpoint::send`]. Dropping
/// it unsent gives its credit back.
pub struct TcpBuf {
    /// A pooled buffer; the frame is its first `len` bytes.
    data: Vec<u8>,
    len: usize,
    conn: Arc<Conn>,
    sent: bool,
}

impl fmt::Debug for TcpBuf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TcpBuf({} bytes to {})", self.len, self.conn.peer_name)
    }
}

impl Deref for TcpBuf {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.data[..self.len]
    }
}

impl DerefMut for TcpBuf {
    fn deref_mut(&mut self) -> &mut [u8] {
        &mut self.data[..self.len]
    }
}

impl Drop for TcpBuf {
    fn drop(&mut self) {
        if !self.sent {
            self.conn.flow.unreserve(self.len);
        }
    }
}

/// A received frame, read straight into its own buffer; dropping it
/// returns the sender's credit.
pub struct TcpFrame {
    /// A pooled buffer; the frame is its first `len` bytes.
    data: Vec<u8>,
    len: usize,
    conn: Arc<Conn>,
    shared: Arc<Shared>,
}

impl TcpFrame {
    pub(crate) fn new(data: Vec<u8>, len: usize, conn: Arc<Conn>, shared: &Arc<Shared>) -> Self {
        TcpFrame {
            data,
            len,
            conn,
            shared: shared.clone(),
        }
    }
}

impl fmt::Debug for TcpFrame {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "TcpFrame({} bytes from {})",
            self.len, self.conn.peer_name
        )
    }
}

impl Deref for TcpFrame {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.data[..self.len]
    }
}

impl Drop for TcpFrame {
    fn drop(&mut self) {
        let data = std::mem::take(&mut self.data);
        let len = self.len;
        self.shared.pool.put(data);
        if self.conn.flow.released(len) {
            // Due now (asked for, or half the window): the keeper sends it
            // unless a frame going back takes it first. If the endpoint is
            // gone there is nobody to return credit to.
            let _ = self.shared.keeper.push(self.conn.clone());
        }
    }
}
