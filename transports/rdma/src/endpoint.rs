//! The transport and its endpoints: binding, the side-channel acceptor,
//! connecting, and the event loop over the connections' completion queues.

use std::collections::{HashMap, HashSet, VecDeque};
use std::fmt;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::ops::{Deref, DerefMut};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak, mpsc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use laggard::transport::{Endpoint, Event, HeldRow, KeptFrame, PeerId, Stash, Transport};
use laggard::{Error, Result};
use rustix::event::{PollFd, PollFlags};

use crate::config::RdmaConfig;
use crate::conn::{self, Conn, HeldWrite, Pending, Progress, Tail};
use crate::held::RowRegions;
use crate::hello::{self, Hello, Reply};
use crate::preflight::{self, DeviceInfo};
use crate::stash::RdmaStash;
use crate::verbs::{Channel, Device, Path};

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn transport_error(reason: String) -> Error {
    Error::Transport { reason }
}

/// The longest a sleeping wait goes without looking at the side channels.
const MAX_SLEEP: Duration = Duration::from_millis(10);
/// Handshakes an endpoint runs at once; each is bounded by
/// `RdmaConfig::handshake_timeout`.
const MAX_HANDSHAKES: usize = 64;

/// The opened device, shared by every endpoint of a transport.
struct Opened {
    dev: Arc<Device>,
    path: Path,
    info: DeviceInfo,
}

struct Shared {
    cfg: RdmaConfig,
    addresses: Mutex<HashMap<String, SocketAddr>>,
    bound: Mutex<HashSet<String>>,
    opened: Mutex<Option<Arc<Opened>>>,
}

/// RDMA verbs between processes and hosts: reliable-connected queue pairs,
/// frames moved by one-sided RDMA WRITE WITH IMMEDIATE straight into the
/// receiver's registered ring (see the crate docs).
///
/// Endpoint names map to side-channel (TCP) addresses: an endpoint bound
/// to a name with an [`address`](Self::address) listens there; any other
/// listens on an ephemeral port of [`RdmaConfig::listen_ip`], recorded for
/// endpoints of this transport value to find.
#[derive(Clone)]
pub struct RdmaTransport {
    shared: Arc<Shared>,
}

impl fmt::Debug for RdmaTransport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RdmaTransport")
            .field("config", &self.shared.cfg)
            .finish_non_exhaustive()
    }
}

impl Default for RdmaTransport {
    fn default() -> Self {
        Self::new()
    }
}

impl RdmaTransport {
    /// A network with default settings. The device is opened, and checked
    /// by [`preflight`](crate::preflight), at the first bind.
    pub fn new() -> Self {
        Self::with_config(RdmaConfig::default()).expect("the default settings are valid")
    }

    /// A network with the given settings; invalid settings are an error.
    pub fn with_config(cfg: RdmaConfig) -> Result<Self> {
        cfg.validate()?;
        Ok(RdmaTransport {
            shared: Arc::new(Shared {
                cfg,
                addresses: Mutex::new(HashMap::new()),
                bound: Mutex::new(HashSet::new()),
                opened: Mutex::new(None),
            }),
        })
    }

    /// The settings.
    pub fn config(&self) -> &RdmaConfig {
        &self.shared.cfg
    }

    /// Gives `name` the side-channel address `addr` (builder form of
    /// [`set_address`](Self::set_address)).
    pub fn address(self, name: &str, addr: SocketAddr) -> Self {
        self.set_address(name, addr);
        self
    }

    /// Gives `name` the side-channel address `addr`: binding `name` listens
    /// there, connecting to `name` goes there.
    pub fn set_address(&self, name: &str, addr: SocketAddr) {
        lock(&self.shared.addresses).insert(name.to_owned(), addr);
    }

    /// The side-channel address of `name`, if known.
    pub fn address_of(&self, name: &str) -> Option<SocketAddr> {
        lock(&self.shared.addresses).get(name).copied()
    }

    /// The device in use, once an endpoint was bound.
    pub fn device_info(&self) -> Option<DeviceInfo> {
        lock(&self.shared.opened).as_ref().map(|o| o.info.clone())
    }

    /// What this transport still holds: bound names, and verbs resources
    /// (memory regions, queue pairs, completion queues) not yet released.
    /// Empty once every endpoint and frame was dropped.
    pub fn leaks(&self) -> Vec<String> {
        let mut out: Vec<String> = lock(&self.shared.bound)
            .iter()
            .map(|n| format!("bound name {n}"))
            .collect();
        out.sort();
        if let Some(o) = lock(&self.shared.opened).as_ref() {
            out.extend(o.dev.live.report());
        }
        out
    }

    fn open(&self) -> Result<Arc<Opened>> {
        let mut opened = lock(&self.shared.opened);
        if let Some(o) = opened.as_ref() {
            return Ok(o.clone());
        }
        let (dev, path, info) = preflight::open(&self.shared.cfg)?;
        let o = Arc::new(Opened { dev, path, info });
        *opened = Some(o.clone());
        Ok(o)
    }
}

impl Transport for RdmaTransport {
    type Endpoint = RdmaEndpoint;

    fn bind(&self, name: &str) -> Result<RdmaEndpoint> {
        let opened = self.open()?;
        if !lock(&self.shared.bound).insert(name.to_owned()) {
            return Err(transport_error(format!(
                "endpoint name {name:?} is already bound"
            )));
        }
        let fail = |e: Error| {
            lock(&self.shared.bound).remove(name);
            e
        };
        let given = self.address_of(name);
        let listen_on = given.unwrap_or(SocketAddr::new(self.shared.cfg.listen_ip, 0));
        let listener = TcpListener::bind(listen_on).map_err(|e| {
            fail(transport_error(format!(
                "{name}: cannot listen on {listen_on} for the RDMA side channel: {e}"
            )))
        })?;
        let local = listener
            .local_addr()
            .map_err(|e| fail(transport_error(e.to_string())))?;
        if given.is_none() {
            self.set_address(name, local);
        }
        let setup = |e: io::Error| {
            fail(transport_error(format!(
                "{name}: setting up the endpoint failed: {e}"
            )))
        };
        listener.set_nonblocking(true).map_err(setup)?;
        let channel = Channel::new(&opened.dev).map_err(setup)?;
        let wake = Arc::new(
            rustix::event::eventfd(
                0,
                rustix::event::EventfdFlags::NONBLOCK | rustix::event::EventfdFlags::CLOEXEC,
            )
            .map_err(|e| setup(e.into()))?,
        );
        let stop = Arc::new(AtomicBool::new(false));
        let (tx, incoming) = mpsc::channel();
        let acceptor = {
            let ctx = Acceptor {
                name: name.to_owned(),
                cfg: self.shared.cfg.clone(),
                opened: opened.clone(),
                channel: channel.clone(),
                wake: wake.clone(),
                stop: stop.clone(),
                tx,
            };
            std::thread::Builder::new()
                .name(format!("laggard-rdma-accept-{name}"))
                .spawn(move || ctx.run(listener))
                .map_err(setup)?
        };
        Ok(RdmaEndpoint {
            name: name.to_owned(),
            shared: self.shared.clone(),
            opened,
            channel,
            wake,
            stop,
            acceptor: Some(acceptor),
            incoming,
            auto_address: given.is_none().then_some(local),
            conns: HashMap::new(),
            ended: HashMap::new(),
            next_peer: 0,
            events: VecDeque::new(),
            progress: Vec::new(),
            held: Arc::default(),
            holders: Vec::new(),
            regions: RowRegions::default(),
        })
    }
}

/// The side-channel acceptor of one endpoint: it runs the handshake of
/// every incoming connection, each on a thread of its own (so a silent or
/// slow client delays nobody else), and hands finished ones to the
/// endpoint.
#[derive(Clone)]
struct Acceptor {
    name: String,
    cfg: RdmaConfig,
    opened: Arc<Opened>,
    channel: Arc<Channel>,
    wake: Arc<OwnedFd>,
    stop: Arc<AtomicBool>,
    tx: mpsc::Sender<Arc<Conn>>,
}

impl Acceptor {
    fn run(self, listener: TcpListener) {
        // Handshakes in progress, with their streams to cut them short
        // when the endpoint drops.
        let mut handshakes: Vec<(JoinHandle<()>, TcpStream)> = Vec::new();
        // Acquire: pairs with the Release store in RdmaEndpoint::drop.
        while !self.stop.load(Ordering::Acquire) {
            let mut fds = [PollFd::new(&listener, PollFlags::IN)];
            let timeout = rustix::event::Timespec {
                tv_sec: 0,
                tv_nsec: 50_000_000,
            };
            let _ = rustix::event::poll(&mut fds, Some(&timeout));
            handshakes.retain(|(h, _)| !h.is_finished());
            match listener.accept() {
                // At the limit, a connection is closed unanswered; its
                // connector tries again until its deadline.
                Ok(_) if handshakes.len() >= MAX_HANDSHAKES => {}
                Ok((stream, _)) => {
                    let Ok(cut) = stream.try_clone() else {
                        continue;
                    };
                    let me = self.clone();
                    let spawned = std::thread::Builder::new()
                        .name(format!("laggard-rdma-handshake-{}", self.name))
                        .spawn(move || me.hand_over(stream));
                    if let Ok(h) = spawned {
                        handshakes.push((h, cut));
                    }
                }
                Err(e)
                    if e.kind() == io::ErrorKind::WouldBlock
                        || e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => std::thread::sleep(Duration::from_millis(10)),
            }
        }
        for (_, stream) in &handshakes {
            let _ = stream.shutdown(std::net::Shutdown::Both);
        }
        for (h, _) in handshakes {
            let _ = h.join();
        }
    }

    /// Runs one handshake and hands the connection to the endpoint.
    fn hand_over(&self, stream: TcpStream) {
        if let Ok(conn) = self.handshake(stream) {
            if self.tx.send(Arc::new(conn)).is_ok() {
                wake(&self.wake);
            }
        }
    }

    /// The acceptor's side: read the hello, make the connection, answer,
    /// and wait for the connector's "ready".
    fn handshake(&self, mut stream: TcpStream) -> io::Result<Conn> {
        stream.set_nonblocking(false)?;
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(self.cfg.handshake_timeout))?;
        stream.set_write_timeout(Some(self.cfg.handshake_timeout))?;
        let remote = match hello::read(&mut stream)? {
            Reply::Accept(h) => h,
            Reply::Refuse(_) => return Err(io::Error::other("a refusal where a hello belongs")),
        };
        if remote.target != self.name {
            let reason = format!(
                "no endpoint named {:?} here (this is {:?})",
                remote.target, self.name
            );
            hello::write_refuse(&mut stream, &reason)?;
            return Err(io::Error::other(reason));
        }
        if let Some(reason) = self.cfg.refuse_peer_ring(&remote.name, remote.ring_len) {
            hello::write_refuse(&mut stream, &reason)?;
            return Err(io::Error::new(io::ErrorKind::InvalidData, reason));
        }
        let o = &self.opened;
        let pending = match Pending::new(&o.dev, &self.channel, &self.cfg, &o.path) {
            Ok(p) => p,
            Err(e) => {
                hello::write_refuse(
                    &mut stream,
                    &format!("{} could not make a queue pair: {e}", self.name),
                )?;
                return Err(e);
            }
        };
        let ours = pending.hello(&self.name, &remote.name, o.info.lid, o.info.gid);
        let conn = pending.finish(&o.dev, &o.path, &remote, stream.try_clone()?)?;
        stream.set_nonblocking(false)?;
        hello::write_hello(&mut stream, &ours)?;
        let mut ready = [0u8; 1];
        stream.read_exact(&mut ready)?;
        stream.set_nonblocking(true)?;
        Ok(conn)
    }
}

fn wake(fd: &OwnedFd) {
    let _ = rustix::io::write(fd, &1u64.to_ne_bytes());
}

/// One participant's end of its RDMA connections. Made by
/// [`RdmaTransport::bind`](laggard::transport::Transport::bind).
pub struct RdmaEndpoint {
    name: String,
    shared: Arc<Shared>,
    opened: Arc<Opened>,
    channel: Arc<Channel>,
    wake: Arc<OwnedFd>,
    stop: Arc<AtomicBool>,
    acceptor: Option<JoinHandle<()>>,
    incoming: mpsc::Receiver<Arc<Conn>>,
    auto_address: Option<SocketAddr>,
    conns: HashMap<PeerId, Arc<Conn>>,
    /// Why each ended connection ended, for the errors of later calls.
    ended: HashMap<PeerId, String>,
    next_peer: u64,
    events: VecDeque<Event<RdmaFrame>>,
    progress: Vec<Progress>,
    /// Writes that hold table rows ([`Endpoint::send_held`]), until their
    /// completions are polled.
    held: Arc<AtomicUsize>,
    /// The connections those writes went to (some may be gone).
    holders: Vec<Weak<Conn>>,
    /// Table rows registered for sending in place.
    regions: RowRegions,
}

impl fmt::Debug for RdmaEndpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RdmaEndpoint")
            .field("name", &self.name)
            .field("connections", &self.conns.len())
            .finish_non_exhaustive()
    }
}

impl RdmaEndpoint {
    /// The side-channel address this endpoint listens on.
    pub fn side_channel(&self) -> Option<SocketAddr> {
        self.auto_address
            .or_else(|| lock(&self.shared.addresses).get(&self.name).copied())
    }

    /// Makes the next frame to `peer` fail with a remote access error, as
    /// a wrong key or a peer that deregistered its memory would: for tests
    /// of completion-error handling only.
    #[doc(hidden)]
    pub fn inject_remote_access_error(&mut self, peer: PeerId) {
        if let Some(c) = self.conns.get(&peer) {
            c.corrupt_remote_key();
        }
    }

    /// Sends one frame: `head`, copied into the mirror ring, then `tail`,
    /// which the device gathers from where it lies.
    fn send_gathered(
        &mut self,
        peer: PeerId,
        head: &[u8],
        tail: Tail,
        deadline: Instant,
    ) -> Result<()> {
        let mut buf = self.lend(peer, head.len() + tail.len(), deadline)?;
        buf[..head.len()].copy_from_slice(head);
        buf.tail = tail;
        self.send(buf)
    }

    fn conn(&self, peer: PeerId) -> Result<Arc<Conn>> {
        self.conns.get(&peer).cloned().ok_or_else(|| {
            let reason = match self.ended.get(&peer) {
                Some(why) => why.clone(),
                None => "no such connection (it was closed or never existed)".into(),
            };
            Error::Disconnected {
                peer: peer.to_string(),
                reason,
            }
        })
    }

    fn add(&mut self, conn: Arc<Conn>) -> PeerId {
        let peer = PeerId(self.next_peer);
        self.next_peer += 1;
        self.conns.insert(peer, conn);
        peer
    }

    /// Takes finished handshakes and every connection's completions; turns
    /// them into events. Returns whether anything happened.
    fn progress(&mut self) -> bool {
        let before = self.events.len();
        while let Ok(conn) = self.incoming.try_recv() {
            let peer = self.add(conn);
            self.events.push_back(Event::Connected(peer));
        }
        let mut ended = Vec::new();
        for (&peer, conn) in &self.conns {
            self.progress.clear();
            conn.progress(&mut self.progress);
            for p in self.progress.drain(..) {
                match p {
                    Progress::Frame { id, offset, len } => {
                        let ptr = conn.frame_ptr(offset);
                        self.events.push_back(Event::Frame(
                            peer,
                            RdmaFrame {
                                conn: conn.clone(),
                                id,
                                ptr,
                                len,
                            },
                        ));
                    }
                    Progress::Ended(why) => {
                        let why =
                            why.unwrap_or_else(|| format!("{} closed the connection", conn.peer));
                        ended.push((peer, why));
                        self.events.push_back(Event::Disconnected(peer));
                    }
                }
            }
        }
        for (peer, why) in ended {
            if let Some(conn) = self.conns.remove(&peer) {
                conn.shut_side_channel();
            }
            self.ended.insert(peer, why);
        }
        self.events.len() > before
    }

    /// Waits until `ready` holds (it is asked after each round of
    /// progress) or `until`; spins first, then sleeps on the completion
    /// channel and the acceptor's wake-up.
    fn wait(
        &mut self,
        until: Instant,
        mut ready: impl FnMut(&mut Self) -> Result<bool>,
    ) -> Result<bool> {
        let spin_until = Instant::now() + self.shared.cfg.spin;
        loop {
            self.progress();
            if ready(self)? {
                return Ok(true);
            }
            let now = Instant::now();
            if now >= until {
                return Ok(false);
            }
            if self.shared.cfg.busy_poll || now < spin_until {
                std::hint::spin_loop();
                continue;
            }
            // Arm every queue, then look once more: a completion that came
            // before arming is seen now, one after it raises an event.
            for conn in self.conns.values() {
                conn.arm();
            }
            self.progress();
            if ready(self)? {
                return Ok(true);
            }
            // A READ of a peer's credit that was put off must still go out
            // on time: wake for it.
            let wake_at = self
                .conns
                .values()
                .filter_map(|c| c.credit_due())
                .fold(until, Instant::min);
            let sleep = wake_at
                .saturating_duration_since(Instant::now())
                .min(MAX_SLEEP);
            // SAFETY: the channel's fd stays open while `self.channel` lives.
            let channel_fd = unsafe { BorrowedFd::borrow_raw(self.channel.fd()) };
            let wake_fd = self.wake.as_fd();
            let mut fds = [
                PollFd::new(&channel_fd, PollFlags::IN),
                PollFd::new(&wake_fd, PollFlags::IN),
            ];
            let timeout = rustix::event::Timespec {
                tv_sec: 0,
                tv_nsec: sleep.as_nanos() as i64,
            };
            let _ = rustix::event::poll(&mut fds, Some(&timeout));
            self.channel.drain();
            let mut buf = [0u8; 8];
            let _ = rustix::io::read(&*self.wake, &mut buf);
        }
    }

    fn connect_once(
        &mut self,
        name: &str,
        addr: SocketAddr,
        until: Instant,
    ) -> io::Result<Arc<Conn>> {
        let left = until
            .saturating_duration_since(Instant::now())
            .max(Duration::from_millis(1));
        let mut stream = TcpStream::connect_timeout(&addr, left)?;
        stream.set_nodelay(true)?;
        let timeout = self.shared.cfg.handshake_timeout.min(left);
        stream.set_read_timeout(Some(timeout))?;
        stream.set_write_timeout(Some(timeout))?;
        let o = self.opened.clone();
        let pending = Pending::new(&o.dev, &self.channel, &self.shared.cfg, &o.path)?;
        let ours: Hello = pending.hello(&self.name, name, o.info.lid, o.info.gid);
        hello::write_hello(&mut stream, &ours)?;
        let remote = match hello::read(&mut stream)? {
            Reply::Accept(h) => h,
            Reply::Refuse(reason) => {
                return Err(io::Error::new(
                    io::ErrorKind::PermissionDenied,
                    format!("{name} refused: {reason}"),
                ));
            }
        };
        if remote.name != name {
            return Err(io::Error::other(format!(
                "{addr} answered as {:?}, not {name:?}",
                remote.name
            )));
        }
        // Refused before the mirror of its ring is registered; the peer
        // sees the side channel end without the "ready" byte.
        if let Some(reason) = self.shared.cfg.refuse_peer_ring(name, remote.ring_len) {
            return Err(io::Error::new(io::ErrorKind::InvalidData, reason));
        }
        let conn = pending.finish(&o.dev, &o.path, &remote, stream.try_clone()?)?;
        stream.set_nonblocking(false)?;
        stream.write_all(&[1])?;
        stream.set_nonblocking(true)?;
        Ok(Arc::new(conn))
    }
}

impl Endpoint for RdmaEndpoint {
    type Buf = RdmaBuf;
    type Frame = RdmaFrame;

    fn name(&self) -> &str {
        &self.name
    }

    fn connect(&mut self, name: &str, deadline: Instant) -> Result<PeerId> {
        let start = Instant::now();
        let mut last_error = String::from("no side-channel address is known for it");
        loop {
            let addr = lock(&self.shared.addresses).get(name).copied();
            if let Some(addr) = addr {
                match self.connect_once(name, addr, deadline) {
                    Ok(conn) => return Ok(self.add(conn)),
                    Err(e)
                        if e.kind() == io::ErrorKind::PermissionDenied
                            || e.kind() == io::ErrorKind::InvalidData =>
                    {
                        return Err(transport_error(format!(
                            "{}: connecting to {name} at {addr}: {e}",
                            self.name
                        )));
                    }
                    Err(e) => last_error = format!("{addr}: {e}"),
                }
            }
            if Instant::now() >= deadline {
                return Err(Error::NoResponse {
                    what: format!(
                        "{name} to accept an RDMA connection from {} (last: {last_error})",
                        self.name
                    ),
                    waited: start.elapsed(),
                });
            }
            std::thread::sleep(
                Duration::from_millis(10).min(deadline.saturating_duration_since(Instant::now())),
            );
        }
    }

    fn lend(&mut self, peer: PeerId, len: usize, deadline: Instant) -> Result<RdmaBuf> {
        let conn = self.conn(peer)?;
        let max = conn.max_frame();
        if len > max {
            return Err(transport_error(format!(
                "a frame of {len} bytes to {} exceeds its largest ({max} bytes, half its ring; raise RdmaConfig::ring_bytes)",
                conn.peer
            )));
        }
        let start = Instant::now();
        let mut got = None;
        let ready = self.wait(deadline, |_| {
            if let Some(why) = conn.failure() {
                return Err(Error::Disconnected {
                    peer: conn.peer.clone(),
                    reason: why,
                });
            }
            got = conn.reserve(len);
            Ok(got.is_some())
        })?;
        match (ready, got) {
            (true, Some((seq, ptr))) => Ok(RdmaBuf {
                conn,
                seq,
                ptr,
                len,
                tail: Tail::None,
                sent: false,
            }),
            _ => Err(Error::NoResponse {
                what: format!(
                    "room for a {len} byte frame in {}'s receive ring (it is not releasing frames)",
                    conn.peer
                ),
                waited: start.elapsed(),
            }),
        }
    }

    fn send(&mut self, mut buf: RdmaBuf) -> Result<()> {
        buf.sent = true;
        let conn = buf.conn.clone();
        if let Some(why) = conn.failure() {
            conn.settle(buf.seq, buf.ptr, 0, Tail::None, false).ok();
            return Err(Error::Disconnected {
                peer: conn.peer.clone(),
                reason: why,
            });
        }
        // A gathered tail ends the frame: the mirror holds the rest.
        let tail = std::mem::take(&mut buf.tail);
        let head = buf.len - tail.len();
        conn.settle(buf.seq, buf.ptr, head, tail, true)
            .map_err(|e| Error::Disconnected {
                peer: conn.peer.clone(),
                reason: format!("posting an RDMA WRITE failed: {e}"),
            })
    }

    fn flush(&mut self, peer: PeerId, deadline: Instant) -> Result<()> {
        let conn = self.conn(peer)?;
        let start = Instant::now();
        let done = self.wait(deadline, |_| {
            if conn.drained() {
                return Ok(true);
            }
            match conn.failure() {
                Some(why) => Err(Error::Disconnected {
                    peer: conn.peer.clone(),
                    reason: why,
                }),
                None => Ok(false),
            }
        })?;
        if done {
            Ok(())
        } else {
            Err(Error::NoResponse {
                what: format!("{} to release every frame sent to it", conn.peer),
                waited: start.elapsed(),
            })
        }
    }

    fn recv(&mut self, deadline: Instant) -> Result<Option<Event<RdmaFrame>>> {
        if let Some(e) = self.events.pop_front() {
            return Ok(Some(e));
        }
        self.wait(deadline, |ep| Ok(!ep.events.is_empty()))?;
        Ok(self.events.pop_front())
    }

    /// A block of the connection's registered stash (registered on the
    /// connection's first call; see [`RdmaConfig::stash_bytes`]), if it has
    /// `len` bytes free.
    fn stash(&mut self, peer: PeerId, len: usize) -> Option<Stash> {
        let conn = self.conn(peer).ok()?;
        conn.stash(len).map(Stash::new)
    }

    /// One RDMA WRITE of the frame, gathered from `head` (copied into the
    /// mirror ring) and the stash block in place: the receiver gets an
    /// ordinary frame. A stash of another connection (one before a
    /// reconnect) is copied into the mirror instead.
    fn send_stashed(
        &mut self,
        peer: PeerId,
        head: &[u8],
        tail: &Stash,
        deadline: Instant,
    ) -> Result<()> {
        let conn = self.conn(peer)?;
        let ours = tail
            .memory()
            .downcast_ref::<RdmaStash>()
            .filter(|block| conn.owns(block));
        let Some(block) = ours else {
            return self.send_parts(peer, &[head, tail], deadline);
        };
        self.send_gathered(peer, head, Tail::Stash(block.gather()), deadline)
    }

    /// One RDMA WRITE of the frame, gathered from `head` (copied into the
    /// mirror ring) and each row where it lies, in the table: a pull
    /// response goes from the server's table to the worker's ring with no
    /// copy. Each row's memory is registered on its first send and kept
    /// registered while its table lives. The rows stay held until the
    /// write's completion is polled (`release_held`, or any later wait of
    /// this endpoint's). Rows that cannot be registered, or more than the
    /// device gathers in one write, are copied into the mirror instead.
    fn send_held(
        &mut self,
        peer: PeerId,
        head: &[u8],
        rows: Vec<HeldRow>,
        deadline: Instant,
    ) -> Result<()> {
        let conn = self.conn(peer)?;
        let dev = Arc::clone(&self.opened.dev);
        let mut gathers = Vec::with_capacity(rows.len());
        let mut regions = Vec::with_capacity(rows.len());
        if rows.len() < dev.send_sge as usize {
            for row in &rows {
                let Some((gather, region)) = self.regions.gather(&dev, row) else {
                    break;
                };
                gathers.push(gather);
                regions.push(region);
            }
        }
        if gathers.len() < rows.len() {
            return laggard::transport::send_held_as_parts(self, peer, head, &rows, deadline);
        }
        if !self
            .holders
            .iter()
            .any(|h| h.as_ptr() == Arc::as_ptr(&conn))
        {
            self.holders.push(Arc::downgrade(&conn));
        }
        let tail = Tail::Held(HeldWrite::new(gathers, rows, regions, &self.held));
        self.send_gathered(peer, head, tail, deadline)
    }

    /// As many as the device gathers in one write, after the head.
    fn held_rows_per_frame(&self) -> usize {
        self.opened.dev.send_sge as usize - 1
    }

    /// Polls the connections that rows were sent to until every write of
    /// held rows completed. A connection whose writes are not done by
    /// `deadline` is failed (its peer is unreachable: the device's own
    /// retries would end it too), which flushes them; then they are let go
    /// of at once.
    fn release_held(&mut self, deadline: Instant) -> Result<()> {
        // Relaxed: see HeldWrite::new.
        if self.held.load(Ordering::Relaxed) == 0 {
            self.holders.clear();
            return Ok(());
        }
        let start = Instant::now();
        let mut failed_at = None;
        loop {
            // A connection that is gone dropped its writes' rows with it.
            self.holders.retain(|h| h.strong_count() > 0);
            for conn in self.holders.iter().filter_map(Weak::upgrade) {
                conn.reap();
            }
            if self.held.load(Ordering::Relaxed) == 0 {
                self.holders.clear();
                return Ok(());
            }
            let now = Instant::now();
            match failed_at {
                None if now >= deadline => {
                    let why = format!(
                        "its RDMA writes of table rows did not complete in {:?}",
                        now - start
                    );
                    for conn in self.holders.iter().filter_map(Weak::upgrade) {
                        conn.fail_if_holding(&why);
                    }
                    failed_at = Some(now);
                }
                Some(at) if now - at >= self.shared.cfg.linger => {
                    return Err(Error::NoResponse {
                        what: format!(
                            "the RDMA device to finish (or flush) its writes of table rows to {}",
                            self.holders
                                .iter()
                                .filter_map(Weak::upgrade)
                                .map(|c| c.peer.clone())
                                .collect::<Vec<_>>()
                                .join(", ")
                        ),
                        waited: now - start,
                    });
                }
                _ => std::thread::yield_now(),
            }
        }
    }

    /// Keeps the frame in the receive ring, where the peer's device wrote
    /// it: every frame can be kept, until [`kept_frames_crowd`](Self::kept_frames_crowd)
    /// says the peer could have to wait for it.
    fn keep_frame(&mut self, frame: RdmaFrame) -> std::result::Result<KeptFrame, RdmaFrame> {
        Ok(KeptFrame::new(frame))
    }

    /// Whether the frames `peer` sent that are not released could make it
    /// wait: a frame of the largest size (half the ring), placed as the
    /// peer places it, would not fit after them, or one more frame would
    /// exceed the frames the peer may have unreleased. False for an
    /// unknown or closed connection, whose frames hold back nobody.
    fn kept_frames_crowd(&self, peer: PeerId) -> bool {
        self.conns.get(&peer).is_some_and(|c| c.recv_crowded())
    }

    fn disconnect(&mut self, peer: PeerId) {
        if let Some(conn) = self.conns.remove(&peer) {
            conn::close_all(&[conn], self.shared.cfg.linger);
        }
    }

    fn max_frame_len(&self) -> usize {
        self.shared.cfg.max_frame_len()
    }

    fn peer_name(&self, peer: PeerId) -> String {
        match self.conns.get(&peer) {
            Some(c) => c.peer.clone(),
            None => peer.to_string(),
        }
    }
}

impl Drop for RdmaEndpoint {
    fn drop(&mut self) {
        // Release: pairs with the Acquire load in Acceptor::run.
        self.stop.store(true, Ordering::Release);
        if let Some(a) = self.acceptor.take() {
            let _ = a.join();
        }
        let mut conns: Vec<Arc<Conn>> = self.conns.drain().map(|(_, c)| c).collect();
        conns.extend(self.incoming.try_iter());
        conn::close_all(&conns, self.shared.cfg.linger);
        self.events.clear();
        lock(&self.shared.bound).remove(&self.name);
        if let Some(addr) = self.auto_address {
            let mut map = lock(&self.shared.addresses);
            if map.get(&self.name) == Some(&addr) {
                map.remove(&self.name);
            }
        }
    }
}

/// A buffer lent for one frame: bytes of the registered mirror of the
/// peer's ring, sent from where they are.
pub struct RdmaBuf {
    conn: Arc<Conn>,
    seq: u64,
    ptr: *mut u8,
    len: usize,
    /// The frame's last bytes, gathered by the write from where they lie
    /// (a stash block, or held rows), not from the mirror.
    tail: Tail,
    sent: bool,
}

// SAFETY: the buffer's bytes are reserved for it alone until it is sent
// or dropped; the connection it points into is shared through an Arc.
unsafe impl Send for RdmaBuf {}

impl fmt::Debug for RdmaBuf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RdmaBuf({} bytes to {})", self.len, self.conn.peer)
    }
}

impl Deref for RdmaBuf {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        // SAFETY: `ptr..ptr+len` is this reservation's part of the mirror
        // ring (registered memory kept alive by `conn`), exclusively ours
        // until sent or dropped.
        unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
    }
}

impl DerefMut for RdmaBuf {
    fn deref_mut(&mut self) -> &mut [u8] {
        // SAFETY: as in deref; `&mut self` makes the access exclusive.
        unsafe { std::slice::from_raw_parts_mut(self.ptr, self.len) }
    }
}

impl Drop for RdmaBuf {
    fn drop(&mut self) {
        if !self.sent {
            let _ = self.conn.settle(self.seq, self.ptr, 0, Tail::None, false);
        }
    }
}

/// A received frame: the bytes where the peer's RDMA WRITE put them in
/// this endpoint's registered ring. Dropping it releases the space.
pub struct RdmaFrame {
    conn: Arc<Conn>,
    id: u64,
    ptr: *const u8,
    len: usize,
}

// SAFETY: the frame's bytes are not written by the peer until the frame
// is released (in Drop); the connection is shared through an Arc.
unsafe impl Send for RdmaFrame {}

// SAFETY: through a shared reference a frame only reads its bytes, which
// nobody writes until it is released (in Drop, by its one owner), and
// reads its `Arc<Conn>`, whose mutable state is behind a mutex; so a frame
// kept in several places ([`KeptFrame`]) is read from any thread safely.
unsafe impl Sync for RdmaFrame {}

impl AsRef<[u8]> for RdmaFrame {
    fn as_ref(&self) -> &[u8] {
        self
    }
}

impl fmt::Debug for RdmaFrame {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RdmaFrame({} bytes from {})", self.len, self.conn.peer)
    }
}

impl Deref for RdmaFrame {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        // SAFETY: `ptr..ptr+len` lies in the receive ring (checked when the
        // frame arrived), kept registered and mapped by `conn`; a peer that
        // keeps to the protocol does not write it before the release.
        unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
    }
}

impl Drop for RdmaFrame {
    fn drop(&mut self) {
        self.conn.release(self.id);
    }
}
