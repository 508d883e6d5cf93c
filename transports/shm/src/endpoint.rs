//! The shared-memory transport and its endpoints.
//!
//! Binding a name creates the endpoint's mailbox segment. Connecting
//! creates a connection segment (two rings), claims a slot in the other
//! endpoint's mailbox, writes the segment's name there and rings its
//! doorbell; the other side attaches, unlinks the name (both sides keep
//! their mappings) and reports [`Event::Connected`].
//!
//! A lent buffer is a slot of the ring the peer reads, so a frame is
//! written once, by its sender, into memory its receiver reads in place.

use std::fmt;
use std::io;
use std::ops::{Deref, DerefMut};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use laggard::idhash::IdMap;
use laggard::transport::{Endpoint, Event, PeerId, Stash, StashMemory, StashPool, Transport};
use laggard::{Error, Result};

use crate::config::ShmConfig;
use crate::doorbell::Doorbell;
use crate::layout::{self, Header, Owner};
use crate::ring::{self, Consumer, Producer, RingCtl, Taken};
use crate::segment::{self, OpenError, Segment};
use crate::slots;
use crate::stash::{self, WHERE_LEN};
use crate::unsent::Unsent;

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// A shared-memory network: the endpoints of one cluster on this host.
/// Cheap to clone. Independent cluster ids never see each other.
///
/// ```
/// use std::time::{Duration, Instant};
/// use laggard::transport::{Endpoint, Event, Transport};
/// use laggard_shm::ShmTransport;
///
/// let net = ShmTransport::new(&format!("doc{}", std::process::id()))?;
/// let mut server = net.bind("server")?;
/// let mut client = net.bind("client")?;
/// let soon = Instant::now() + Duration::from_secs(5);
/// let peer = client.connect("server", soon)?;
/// let mut buf = client.lend(peer, 5, soon)?; // a slot of the server's ring
/// buf.copy_from_slice(b"hello");
/// client.send(buf)?;
/// assert!(matches!(server.recv(soon)?, Some(Event::Connected(_))));
/// match server.recv(soon)? {
///     Some(Event::Frame(_, frame)) => assert_eq!(&*frame, b"hello"), // read in place
///     other => panic!("unexpected {other:?}"),
/// }
/// # Ok::<(), laggard::Error>(())
/// ```
#[derive(Clone)]
pub struct ShmTransport {
    cluster: String,
    cfg: Arc<ShmConfig>,
    me: Owner,
    /// Numbers the connection segments this value (and its clones) make;
    /// with `nonce`, their names are unique even among several transports
    /// of one cluster in one process.
    serial: Arc<AtomicU64>,
    nonce: u64,
}

impl fmt::Debug for ShmTransport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ShmTransport")
            .field("cluster", &self.cluster)
            .field("dir", &self.cfg.dir)
            .finish_non_exhaustive()
    }
}

fn transport_error(reason: String) -> Error {
    Error::Transport { reason }
}

impl ShmTransport {
    /// The network of cluster `cluster` with default settings. The id
    /// (1 to 32 ASCII letters, digits or `_`) is part of every segment's
    /// name; all processes of one cluster use the same one.
    pub fn new(cluster: &str) -> Result<Self> {
        Self::with_config(cluster, ShmConfig::default())
    }

    /// The network of cluster `cluster` with settings `cfg`.
    pub fn with_config(cluster: &str, cfg: ShmConfig) -> Result<Self> {
        if cluster.is_empty()
            || cluster.len() > 32
            || !cluster
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_')
        {
            return Err(Error::InvalidConfig {
                what: "cluster id",
                reason: format!("{cluster:?}: use 1 to 32 ASCII letters, digits or '_'"),
            });
        }
        cfg.validate()?;
        let me = Owner::current().map_err(|e| {
            transport_error(format!(
                "cannot read this process's start time from /proc: {e}"
            ))
        })?;
        let serial = Arc::new(AtomicU64::new(0));
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        let nonce = nanos ^ (Arc::as_ptr(&serial) as u64).rotate_left(32);
        Ok(ShmTransport {
            cluster: cluster.to_owned(),
            cfg: Arc::new(cfg),
            me,
            serial,
            nonce,
        })
    }

    /// The cluster id.
    pub fn cluster(&self) -> &str {
        &self.cluster
    }

    /// The settings.
    pub fn config(&self) -> &ShmConfig {
        &self.cfg
    }

    /// The file names of this cluster's segments that exist now, with any
    /// half-made ones (for checking that nothing was left behind).
    pub fn segments(&self) -> Vec<String> {
        self.files_starting(&segment::cluster_prefix(&self.cluster))
    }

    /// The segments (and half-made ones) in the directory whose names
    /// start with `prefix`.
    fn files_starting(&self, prefix: &str) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(&self.cfg.dir)
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| e.file_name().into_string().ok())
            .filter(|n| n.starts_with(prefix) || segment::temp_file_owner(n, prefix).is_some())
            .collect();
        names.sort();
        names
    }

    /// Removes this cluster's segments whose creating process no longer
    /// runs (left by crashed runs), and half-made ones of processes that
    /// died while creating them; returns their paths. Segments of live
    /// processes, of processes in another PID namespace (whose pids say
    /// nothing here) and files that are not laggard segments are left.
    pub fn remove_stale(&self) -> Vec<PathBuf> {
        self.remove_stale_starting(&segment::cluster_prefix(&self.cluster))
    }

    /// [`remove_stale`](Self::remove_stale) for the segments of every
    /// cluster in this transport's directory, not only its own: what runs
    /// that crashed left under cluster ids of their own (a launcher's pid,
    /// a job id) that no later run will use again. The same segments are
    /// left: those of live processes, of another PID namespace, and files
    /// that are not laggard segments.
    pub fn remove_stale_of_every_cluster(&self) -> Vec<PathBuf> {
        self.remove_stale_starting(segment::PREFIX)
    }

    fn remove_stale_starting(&self, prefix: &str) -> Vec<PathBuf> {
        let mut removed = Vec::new();
        for name in self.files_starting(prefix) {
            let path = self.cfg.dir.join(&name);
            // A segment half made by a process that died while creating it.
            let stale = match segment::temp_file_owner(&name, prefix) {
                Some(pid) => !segment::pid_exists(pid),
                None => Segment::open(&path)
                    .is_ok_and(|(_, h)| !h.owner.elsewhere(&self.me) && !h.owner.is_alive()),
            };
            if stale && std::fs::remove_file(&path).is_ok() {
                removed.push(path);
            }
        }
        removed
    }

    fn mailbox_header(&self, name: &str) -> Header {
        Header {
            kind: layout::KIND_MAILBOX,
            total: layout::MAILBOX_LEN as u64,
            owner: self.me,
            param: layout::SLOTS as u64,
            stash: 0,
            name: name.to_owned(),
        }
    }
}

impl Transport for ShmTransport {
    type Endpoint = ShmEndpoint;

    fn bind(&self, name: &str) -> Result<ShmEndpoint> {
        if name.is_empty() || name.len() > layout::NAME_MAX {
            return Err(transport_error(format!(
                "endpoint name {name:?}: use 1 to {} bytes",
                layout::NAME_MAX
            )));
        }
        let path = segment::mailbox_path(&self.cfg.dir, &self.cluster, name);
        if path.file_name().is_some_and(|f| f.len() > 250) {
            return Err(transport_error(format!(
                "endpoint name {name:?} is too long for a file name once escaped"
            )));
        }
        let header = self.mailbox_header(name);
        let mut attempts = 0;
        let seg = loop {
            attempts += 1;
            match Segment::create(&path, &header, layout::MAILBOX_LEN as u64) {
                Ok(seg) => break seg,
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists && attempts < 3 => {
                    match Segment::open(&path) {
                        Ok((old, h))
                            if h.owner.elsewhere(&self.me) && !Mailbox::closed_in(&old) =>
                        {
                            return Err(transport_error(format!(
                                "endpoint name {name:?} is bound by process {} of another PID \
                                 namespace (another container sharing {}), which cannot be \
                                 told from a crashed one here: give each job its own cluster \
                                 id or directory",
                                h.owner.pid,
                                self.cfg.dir.display()
                            )));
                        }
                        Ok((old, h)) if h.owner.is_alive() && !Mailbox::closed_in(&old) => {
                            return Err(transport_error(format!(
                                "endpoint name {name:?} is already bound (by process {})",
                                h.owner.pid
                            )));
                        }
                        // A crashed or closed endpoint's mailbox: stale.
                        Ok(_) => {
                            let _ = std::fs::remove_file(&path);
                        }
                        Err(OpenError::Io(e)) if e.kind() == io::ErrorKind::NotFound => {}
                        Err(OpenError::Io(e)) => {
                            return Err(transport_error(format!(
                                "cannot open {}: {e}",
                                path.display()
                            )));
                        }
                        Err(OpenError::Invalid(why)) => {
                            return Err(transport_error(format!(
                                "{} is in the way and is not a usable laggard segment ({why}); \
                                 remove it",
                                path.display()
                            )));
                        }
                    }
                }
                Err(e) => {
                    return Err(transport_error(format!(
                        "cannot create the segment {}: {e}{}",
                        path.display(),
                        room_hint(&e)
                    )));
                }
            }
        };
        let mailbox = Arc::new(Mailbox {
            seg,
            owner: self.me,
        });
        Ok(ShmEndpoint {
            net: self.clone(),
            name: name.to_owned(),
            path,
            mailbox,
            conns: IdMap::default(),
            order: Vec::new(),
            rr: 0,
            next_peer: 0,
            scanned: 0,
            next_check: Instant::now() + self.cfg.liveness_interval,
        })
    }
}

/// A mapped mailbox segment.
#[derive(Debug)]
struct Mailbox {
    seg: Segment,
    owner: Owner,
}

impl Mailbox {
    fn doorbell(&self) -> &Doorbell {
        // SAFETY: MB_DOORBELL is in bounds (length checked on open) and
        // 128-aligned; Doorbell is two AtomicU32s, valid for any bytes, and
        // the mapping lives as long as `self`.
        unsafe { &*(self.seg.ptr(layout::MB_DOORBELL) as *const Doorbell) }
    }

    fn closed_in(seg: &Segment) -> bool {
        // Acquire: pairs with the Release store in `ShmEndpoint::drop`.
        seg.u32_at(layout::MB_CLOSED).load(Ordering::Acquire) != 0
    }

    fn slot(&self, i: usize, field: usize) -> &AtomicU32 {
        self.seg
            .u32_at(layout::MB_SLOTS + i * layout::SLOT_SIZE + field)
    }
}

/// One connection, shared by the endpoint and its outstanding buffers and
/// frames.
struct Conn {
    seg: Segment,
    /// 0 if we connected, 1 if we accepted. We write ring `side`.
    side: usize,
    cap: u64,
    /// Bytes of the connector's stash (after the rings).
    stash: u64,
    /// Its free blocks, kept by the connector (side 0) only.
    stash_pool: Mutex<StashPool>,
    peer_mailbox: Mailbox,
    /// Our endpoint's mailbox, whose doorbell a buffer dropped unsent
    /// rings (the endpoint may be asleep, with later frames held back).
    own_mailbox: Arc<Mailbox>,
    peer_name: String,
    /// Buffers lent on ring `side` and dropped unsent; the ring's producer
    /// is the endpoint's (`Link::producer`).
    unsent: Unsent,
    consumer: Mutex<Consumer>,
    /// How far `take` has read the incoming ring: the consumer's read
    /// position, copied out so that `work_at` checks for frames without
    /// taking the consumer's lock in every round of a spin. Only the
    /// endpoint's thread (`take`, `has_more`) touches it, so Relaxed.
    taken_to: AtomicU64,
    /// The peer's process died or broke the ring's rules.
    failed: AtomicBool,
    why: Mutex<Option<String>>,
    /// The connection segment's path while it may still exist (we created
    /// it and the peer may not have attached yet).
    file: Option<PathBuf>,
}

impl Conn {
    #[allow(clippy::too_many_arguments)]
    fn new(
        seg: Segment,
        side: usize,
        cap: u64,
        stash: u64,
        peer_mailbox: Mailbox,
        own_mailbox: Arc<Mailbox>,
        peer_name: String,
        file: Option<PathBuf>,
    ) -> Self {
        // The data regions `words` reads without checking again.
        for ring in 0..2 {
            let cap = cap as usize;
            seg.u64s_at(layout::CONN_DATA + ring * cap, cap / 8);
        }
        Conn {
            seg,
            side,
            cap,
            stash,
            stash_pool: Mutex::new(StashPool::new(
                if side == 0 { stash } else { 0 },
                layout::STASH_ALIGN,
            )),
            peer_mailbox,
            own_mailbox,
            peer_name,
            unsent: Unsent::new(),
            consumer: Mutex::new(Consumer::default()),
            taken_to: AtomicU64::new(0),
            failed: AtomicBool::new(false),
            why: Mutex::new(None),
            file,
        }
    }

    fn ctl(&self, ring: usize) -> &RingCtl {
        // SAFETY: the ring words lie inside the segment's fixed header
        // area (CONN_RINGS + 2 * 256 <= CONN_DATA <= len, checked on open),
        // 128-aligned; RingCtl is atomics and padding, valid for any bytes.
        unsafe { &*(self.seg.ptr(layout::CONN_RINGS + ring * 256) as *const RingCtl) }
    }

    fn words(&self, ring: usize) -> &[AtomicU64] {
        let cap = self.cap as usize;
        debug_assert!(ring < 2);
        // Bounds checked once, in `new`, rather than on each of the several
        // calls every frame makes.
        // SAFETY: inside the segment (`new`), 8-aligned, accessed only as
        // atomic words or through lent buffers and frames ordered by the
        // ring's positions; the mapping lives as long as `self`.
        unsafe {
            std::slice::from_raw_parts(
                self.seg.ptr(layout::CONN_DATA + ring * cap) as *const AtomicU64,
                cap / 8,
            )
        }
    }

    fn data(&self, ring: usize, pos: u64) -> *mut u8 {
        self.seg.ptr(
            layout::CONN_DATA + ring * self.cap as usize + ring::offset(pos, self.cap) as usize,
        )
    }

    /// Where byte `off` of the stash lies; `off` at most its size.
    fn stash_at(&self, off: u64) -> *mut u8 {
        debug_assert!(off <= self.stash);
        self.seg
            .ptr((layout::stash_offset(self.cap) + off) as usize)
    }

    /// Where the tail of a received frame lies in the peer's stash, from
    /// the 16 bytes that end its payload (`taken.stashed`): `(offset,
    /// length)`, checked to lie inside the stash.
    fn stash_tail(&self, taken: &Taken) -> std::result::Result<(u64, u64), String> {
        if self.side != 1 {
            return Err("the accepting side sent a frame with a stashed tail".into());
        }
        if taken.len < WHERE_LEN {
            return Err(format!(
                "a {}-byte frame is too short to say where its stashed tail is",
                taken.len
            ));
        }
        let at = self.data(0, taken.payload + taken.len - WHERE_LEN);
        let mut where_ = [0u8; WHERE_LEN as usize];
        // SAFETY: `Consumer::next` checked that the record, payload
        // included, lies inside ring 0's data region and was published;
        // the producer does not touch it until the frame is released.
        unsafe { std::ptr::copy_nonoverlapping(at, where_.as_mut_ptr(), where_.len()) };
        stash::tail_where(where_, self.stash)
    }

    fn closed(&self, side: usize) -> &AtomicU32 {
        debug_assert!(side < 2);
        self.header_word(layout::CONN_CLOSED + side * 128)
    }

    fn accepted(&self) -> &AtomicU32 {
        self.header_word(layout::CONN_ACCEPTED)
    }

    /// The shared word at `off`, a 4-aligned offset inside the segment's
    /// fixed header (before `CONN_DATA`): `peer_gone` reads two of these
    /// on every lend, send and look for frames, so they are not checked
    /// again each time as `Segment::u32_at` would.
    fn header_word(&self, off: usize) -> &AtomicU32 {
        debug_assert!(off % 4 == 0 && off + 4 <= layout::CONN_DATA);
        // SAFETY: before CONN_DATA, which `new` checked lies inside the
        // segment; 4-aligned in a page-aligned mapping; shared words are
        // only accessed atomically; the mapping lives as long as `self`.
        unsafe { &*(self.seg.ptr(off) as *const AtomicU32) }
    }

    fn fail(&self, why: String) {
        lock(&self.why).get_or_insert(why);
        self.failed.store(true, Ordering::Release);
    }

    /// Whether the peer will send nothing more and read nothing more.
    fn peer_gone(&self) -> bool {
        // Acquire (all three): pair with the Release stores of the flags
        // (`fail`, `close`, `accept`, the mailbox's drop); frames published
        // before the flag are seen by the ring check that follows.
        self.failed.load(Ordering::Acquire)
            || self.closed(1 - self.side).load(Ordering::Acquire) != 0
            || (self.side == 0
                && self.accepted().load(Ordering::Acquire) == 0
                && Mailbox::closed_in(&self.peer_mailbox.seg))
    }

    fn gone_error(&self) -> Error {
        let why = lock(&self.why).clone();
        Error::Disconnected {
            peer: self.peer_name.clone(),
            reason: why.unwrap_or_else(|| "the peer closed the shared-memory connection".into()),
        }
    }

    /// Marks our side closed and tells the peer.
    fn close(&self) {
        // Release: pairs with the Acquire load in the peer's `peer_gone`.
        self.closed(self.side).store(1, Ordering::Release);
        self.peer_mailbox.doorbell().ring();
    }

    fn take(&self) -> std::result::Result<Option<Taken>, ring::Corrupt> {
        let rx = 1 - self.side;
        let mut consumer = lock(&self.consumer);
        let taken = consumer.next(self.ctl(rx), self.words(rx));
        // Relaxed: see `taken_to`.
        self.taken_to.store(consumer.read_pos(), Ordering::Relaxed);
        taken
    }

    /// Whether the peer published something `take` has not read.
    fn has_more(&self) -> bool {
        // Relaxed: see `taken_to`.
        ring::published_at(
            self.words(1 - self.side),
            self.taken_to.load(Ordering::Relaxed),
        )
    }

    /// Turns the buffers dropped unsent since the last call into padding
    /// (`producer` is this connection's), publishing what waited behind
    /// them.
    #[inline]
    fn reap_unsent(&self, producer: &mut Producer) {
        // Inlined: lend, send and every look at the connection call this,
        // and it almost always has nothing to do.
        if self.unsent.pending() {
            self.pad_unsent(producer);
        }
    }

    fn pad_unsent(&self, producer: &mut Producer) {
        let mut records = Vec::new();
        self.unsent.take(&mut records);
        let tx = self.side;
        let mut moved = false;
        for record in records {
            moved |= producer.complete(self.words(tx), record, false);
        }
        if moved {
            self.peer_mailbox.doorbell().ring();
        }
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        if let Some(file) = &self.file {
            let _ = std::fs::remove_file(file);
        }
    }
}

fn no_such_connection(peer: PeerId, endpoint: &str) -> Error {
    Error::Disconnected {
        peer: format!("{peer} of {endpoint}"),
        reason: "no such connection (it closed or never existed)".into(),
    }
}

/// What to do when the segment directory is full.
const ROOM_HINT: &str = "give the segment directory more room (a container's /dev/shm is 64 MiB \
     unless started with --shm-size; `mount -o remount,size=4G /dev/shm` on a host) or use \
     smaller rings (ShmConfig::ring_bytes)";

/// [`ROOM_HINT`] after an error that says the directory is full.
fn room_hint(e: &io::Error) -> String {
    if e.kind() == io::ErrorKind::StorageFull {
        format!("; {ROOM_HINT}")
    } else {
        String::new()
    }
}

/// A connection as its endpoint holds it.
struct Link {
    conn: Arc<Conn>,
    /// The producer of the connection's outgoing ring: only this endpoint
    /// lends and sends on it, so it needs no lock (see `Unsent`).
    producer: Producer,
    /// What this endpoint, the only writer of both, has reserved of the
    /// file system's memory ([`Segment::reserve`]).
    reserved: Reserved,
}

/// Bytes reserved from the start of a connection's outgoing ring's data
/// region and of its stash. Rings are written front to back (and reused
/// from the front), so a prefix of each is what has been written.
#[derive(Default)]
struct Reserved {
    ring: u64,
    stash: u64,
}

/// Reserves more of a region starting at `base` of at most `cap` bytes
/// (see [`Segment::reserve`]), so that its first `upto` bytes are, `done`
/// being reserved already: at least twice as much as before (a few system
/// calls per connection in all), or exactly `upto` if the file system has
/// no room for that.
fn reserve_prefix(seg: &Segment, base: u64, cap: u64, done: &mut u64, upto: u64) -> io::Result<()> {
    if upto <= *done {
        return Ok(());
    }
    let generous = upto.max(done.saturating_mul(2)).max(RESERVE_STEP).min(cap);
    let reached = match seg.reserve(base + *done, generous - *done) {
        Ok(()) => generous,
        Err(_) if generous > upto => {
            seg.reserve(base + *done, upto - *done)?;
            upto
        }
        Err(e) => return Err(e),
    };
    *done = reached;
    Ok(())
}

/// The least that [`reserve_prefix`] reserves at a time: as far as a ring
/// goes before it starts over at its beginning when the reader keeps up
/// (`ring::recycle_after`), so a connection of small messages reserves it
/// once.
const RESERVE_STEP: u64 = 64 << 10;

/// An endpoint of a [`ShmTransport`] network.
pub struct ShmEndpoint {
    net: ShmTransport,
    name: String,
    path: PathBuf,
    mailbox: Arc<Mailbox>,
    conns: IdMap<PeerId, Link>,
    /// The connections in the order `poll` visits them, each beside its
    /// `Conn` (also in `conns`), so that looking at a quiet one costs a few
    /// loads and no lookup: a waiting server looks at every worker's
    /// connection in each round of its spin (`work_at`).
    order: Vec<(PeerId, Arc<Conn>)>,
    rr: usize,
    next_peer: u64,
    next_check: Instant,
    /// The mailbox's `posted` count when its slots were last scanned.
    scanned: u32,
}

impl fmt::Debug for ShmEndpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ShmEndpoint")
            .field("name", &self.name)
            .field("peers", &self.conns.len())
            .finish_non_exhaustive()
    }
}

impl ShmEndpoint {
    #[inline]
    fn link(&mut self, peer: PeerId) -> Result<&mut Link> {
        let name = &self.name;
        self.conns
            .get_mut(&peer)
            .ok_or_else(|| no_such_connection(peer, name))
    }

    fn add(&mut self, conn: Conn) -> PeerId {
        self.next_peer += 1;
        let peer = PeerId(self.next_peer);
        let link = Link {
            conn: Arc::new(conn),
            producer: Producer::default(),
            reserved: Reserved::default(),
        };
        self.order.push((peer, link.conn.clone()));
        self.conns.insert(peer, link);
        peer
    }

    fn remove(&mut self, peer: PeerId) -> Option<Arc<Conn>> {
        self.order.retain(|(p, _)| *p != peer);
        self.conns.remove(&peer).map(|link| link.conn)
    }

    /// Waits on our doorbell until `ready` or `until` (capped at the next
    /// liveness check, which it runs instead when due). `now` is the
    /// caller's latest reading of the clock.
    fn wait(&mut self, now: Instant, until: Instant, mut ready: impl FnMut(&Self) -> bool) {
        if now >= self.next_check {
            self.check_liveness();
            return;
        }
        let this = &*self;
        let cfg = &this.net.cfg;
        this.mailbox.doorbell().wait(
            now,
            until.min(this.next_check),
            cfg.spin,
            cfg.busy_poll,
            || ready(this),
        );
    }

    /// Marks connections whose peer process died, and frees connect
    /// slots claimed by processes that died before finishing.
    fn check_liveness(&mut self) {
        for Link { conn, .. } in self.conns.values() {
            let owner = conn.peer_mailbox.owner;
            if !conn.failed.load(Ordering::Acquire) && !owner.is_alive() {
                conn.fail(format!(
                    "its process (pid {}) is gone without closing the connection",
                    owner.pid
                ));
            }
        }
        for i in 0..layout::SLOTS {
            // Acquire: pairs with the claimer's Relaxed pid store after its
            // Acquire CAS; a pid of 0 means "not yet written".
            let state = self
                .mailbox
                .slot(i, layout::SLOT_STATE)
                .load(Ordering::Acquire);
            let pid = self
                .mailbox
                .slot(i, layout::SLOT_PID)
                .load(Ordering::Relaxed);
            if state == slots::CLAIMED && pid != 0 && !segment::pid_exists(pid) {
                self.free_slot(i);
            }
        }
        self.next_check = Instant::now() + self.net.cfg.liveness_interval;
    }

    fn free_slot(&self, i: usize) {
        slots::free(
            self.mailbox.slot(i, layout::SLOT_STATE),
            self.mailbox.slot(i, layout::SLOT_PID),
        );
    }

    /// The mailbox's count of posted connections.
    fn posted(&self) -> u32 {
        slots::posted(self.mailbox.seg.u32_at(layout::MB_POSTED))
    }

    /// Attaches to connections waiting in our slots; the first new one.
    fn accept(&mut self) -> Option<PeerId> {
        let posted = self.posted();
        if posted == self.scanned {
            return None;
        }
        for i in 0..layout::SLOTS {
            if !slots::is_ready(self.mailbox.slot(i, layout::SLOT_STATE)) {
                continue;
            }
            let base = layout::MB_SLOTS + i * layout::SLOT_SIZE;
            let len = self
                .mailbox
                .slot(i, layout::SLOT_NAME_LEN)
                .load(Ordering::Relaxed) as usize;
            let file = (len <= layout::SLOT_NAME_MAX)
                .then(|| self.mailbox.seg.read_bytes(base + layout::SLOT_NAME, len));
            self.free_slot(i);
            let Some(Ok(file)) = file.map(String::from_utf8) else {
                continue;
            };
            // A connector that vanished, or garbage, is skipped: there is
            // nobody to report it to.
            if let Ok(conn) = self.attach(&file) {
                // More may wait: `scanned` stays behind until a scan
                // finds nothing.
                return Some(self.add(conn));
            }
        }
        self.scanned = posted;
        None
    }

    fn attach(&self, file: &str) -> std::result::Result<Conn, String> {
        let prefix = segment::cluster_prefix(&self.net.cluster);
        let safe = file.starts_with(&prefix)
            && file
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if !safe {
            return Err(format!(
                "{file:?} is not a connection segment of this cluster"
            ));
        }
        let path = self.net.cfg.dir.join(file);
        let (seg, header) = Segment::open(&path).map_err(|e| format!("{e:?}"))?;
        // Both sides keep their mappings; the name is no longer needed.
        let _ = std::fs::remove_file(&path);
        if header.kind != layout::KIND_CONNECTION {
            return Err(format!("{file} is not a connection segment"));
        }
        // A well-formed connection we refuse is closed on our side, so its
        // connector learns of the refusal instead of filling the ring.
        let refuse = |why: String| {
            // Release: pairs with the Acquire load in the connector's
            // `peer_gone`.
            seg.u32_at(layout::CONN_CLOSED + 128)
                .store(1, Ordering::Release);
            why
        };
        let mb_path = segment::mailbox_path(&self.net.cfg.dir, &self.net.cluster, &header.name);
        let (mb, mb_header) = Segment::open(&mb_path)
            .map_err(|e| refuse(format!("{}'s mailbox: {e:?}", header.name)))?;
        if mb_header.owner != header.owner || mb_header.kind != layout::KIND_MAILBOX {
            return Err(refuse(format!(
                "{}'s mailbox belongs to another process",
                header.name
            )));
        }
        let peer_mailbox = Mailbox {
            seg: mb,
            owner: header.owner,
        };
        let conn = Conn::new(
            seg,
            1,
            header.param,
            header.stash,
            peer_mailbox,
            self.mailbox.clone(),
            header.name,
            None,
        );
        // Release: pairs with the connector's Acquire load in `peer_gone`.
        conn.accepted().store(1, Ordering::Release);
        Ok(conn)
    }

    /// Where `poll`'s round of the connections starts: after the one it
    /// served last (past the end after the last connection, or after
    /// removals: at the first).
    fn round_start(&self) -> usize {
        if self.rr < self.order.len() {
            self.rr
        } else {
            0
        }
    }

    /// The `k`th connection of a round from `start`, without a division.
    fn round_index(&self, start: usize, k: usize) -> usize {
        let n = self.order.len();
        if start + k >= n {
            start + k - n
        } else {
            start + k
        }
    }

    /// Something for `recv` to do (without doing it): where in `order`
    /// `poll` should start looking, if anything waits. Looks in `poll`'s
    /// order, so that `poll` can start at the connection found here rather
    /// than walk again past the quiet ones before it (a server whose one
    /// busy worker was served last comes round to it after all the others).
    fn work_at(&self) -> Option<usize> {
        let start = self.round_start();
        if self.posted() != self.scanned {
            return Some(start);
        }
        (0..self.order.len())
            .map(|k| self.round_index(start, k))
            .find(|&idx| {
                let c = &self.order[idx].1;
                c.has_more() || c.peer_gone() || c.unsent.pending()
            })
    }

    /// The next event if one is ready, looking at the connections in turn
    /// from `from` (where `work_at` found something) or else from where
    /// the last look stopped.
    fn poll(&mut self, from: Option<usize>) -> Option<Event<ShmFrame>> {
        if let Some(peer) = self.accept() {
            return Some(Event::Connected(peer));
        }
        let n = self.order.len();
        let start = from
            .filter(|&i| i < n)
            .unwrap_or_else(|| self.round_start());
        for k in 0..n {
            let idx = self.round_index(start, k);
            let peer = self.order[idx].0;
            // Padding a buffer dropped unsent takes the connection's
            // producer, which lives in `conns`.
            if self.order[idx].1.unsent.pending() {
                if let Some(Link { conn, producer, .. }) = self.conns.get_mut(&peer) {
                    conn.reap_unsent(producer);
                }
            }
            let conn = &self.order[idx].1;
            // Checked before the ring: frames sent before the close are
            // delivered first.
            let gone = conn.peer_gone();
            // A quiet connection costs a few loads, not the consumer's
            // lock and a count on its `Arc`: a server visits every
            // worker's connection each time it looks for a frame.
            if !gone && !conn.has_more() {
                continue;
            }
            let conn = conn.clone();
            match conn.take() {
                Ok(Some(taken)) => {
                    self.rr = idx + 1;
                    let tail = match taken.stashed.then(|| conn.stash_tail(&taken)) {
                        None => None,
                        Some(Ok(tail)) => Some(tail),
                        Some(Err(why)) => {
                            // Released with the frame, before the close.
                            drop(ShmFrame {
                                conn: conn.clone(),
                                taken,
                                tail: None,
                            });
                            conn.fail(format!("it broke the stash protocol: {why}"));
                            self.remove(peer);
                            conn.close();
                            return Some(Event::Disconnected(peer));
                        }
                    };
                    return Some(Event::Frame(peer, ShmFrame { conn, taken, tail }));
                }
                Ok(None) if !gone => {}
                Ok(None) => {
                    self.remove(peer);
                    conn.close();
                    return Some(Event::Disconnected(peer));
                }
                Err(ring::Corrupt(why)) => {
                    conn.fail(format!("it broke the ring protocol: {why}"));
                    self.remove(peer);
                    conn.close();
                    return Some(Event::Disconnected(peer));
                }
            }
        }
        None
    }
}

impl Endpoint for ShmEndpoint {
    type Buf = ShmBuf;
    type Frame = ShmFrame;

    fn name(&self) -> &str {
        &self.name
    }

    fn connect(&mut self, name: &str, deadline: Instant) -> Result<PeerId> {
        let started = Instant::now();
        let cfg = self.net.cfg.clone();
        let mb_path = segment::mailbox_path(&cfg.dir, &self.net.cluster, name);
        let no_response = |what: String| Error::NoResponse {
            what,
            waited: started.elapsed(),
        };
        // The peer's mailbox: wait for it to be bound (by a live process).
        let mut stale_owner = None;
        let (mailbox, header) = loop {
            match Segment::open(&mb_path) {
                Ok((seg, h)) if h.owner.elsewhere(&self.net.me) && !Mailbox::closed_in(&seg) => {
                    return Err(transport_error(format!(
                        "{} is bound by process {} of another PID namespace (another \
                         container): laggard-shm tells a crashed peer by its pid, so every \
                         process of a cluster must share one PID namespace (run them in one \
                         container, or share it: docker run --pid=container:NAME)",
                        mb_path.display(),
                        h.owner.pid
                    )));
                }
                Ok((seg, h)) if h.owner.is_alive() && !Mailbox::closed_in(&seg) => break (seg, h),
                // Stale: its owner closed it, or is no process we can see.
                Ok((seg, h)) => {
                    // Its namespace known to be this one: it died.
                    let died = h.owner.pidns != 0 && h.owner.pidns == self.net.me.pidns;
                    stale_owner = (!Mailbox::closed_in(&seg)).then_some((h.owner.pid, died));
                }
                Err(OpenError::Io(e)) if e.kind() == io::ErrorKind::NotFound => {}
                Err(OpenError::Io(e)) => {
                    return Err(transport_error(format!(
                        "cannot open {}: {e}",
                        mb_path.display()
                    )));
                }
                Err(OpenError::Invalid(why)) => {
                    return Err(transport_error(format!(
                        "{} is not a usable laggard mailbox: {why}",
                        mb_path.display()
                    )));
                }
            }
            let now = Instant::now();
            if now >= deadline {
                let seen = match stale_owner {
                    Some((pid, true)) => format!(
                        "; {} is there, but its owner, process {pid}, died without closing it",
                        mb_path.display()
                    ),
                    Some((pid, false)) => format!(
                        "; {} is there, but its owner, process {pid}, is not running here: \
                         it died, or it runs in another PID namespace (another container), \
                         and every process of a laggard-shm cluster must share one",
                        mb_path.display()
                    ),
                    None => String::new(),
                };
                return Err(no_response(format!(
                    "an endpoint named {name:?} to connect to (cluster {}, {}){seen}",
                    self.net.cluster,
                    cfg.dir.display()
                )));
            }
            std::thread::sleep((deadline - now).min(std::time::Duration::from_millis(2)));
        };
        if header.kind != layout::KIND_MAILBOX {
            return Err(transport_error(format!(
                "{} is not a mailbox",
                mb_path.display()
            )));
        }
        let peer_mailbox = Mailbox {
            seg: mailbox,
            owner: header.owner,
        };
        // Our connection segment.
        let serial = self.net.serial.fetch_add(1, Ordering::Relaxed);
        let file = segment::connection_file(&self.net.cluster, self.net.me, self.net.nonce, serial);
        let path = cfg.dir.join(&file);
        let cap = cfg.ring_capacity();
        let stash = cfg.stash_capacity();
        let total = layout::connection_len(cap, stash).expect("sizes checked by the config");
        let seg = Segment::create(
            &path,
            &Header {
                kind: layout::KIND_CONNECTION,
                total,
                owner: self.net.me,
                param: cap,
                stash,
                name: self.name.clone(),
            },
            layout::CONN_DATA as u64,
        )
        .map_err(|e| {
            transport_error(format!(
                "cannot create {}: {e}{}",
                path.display(),
                room_hint(&e)
            ))
        })?;
        let conn = Conn::new(
            seg,
            0,
            cap,
            stash,
            peer_mailbox,
            self.mailbox.clone(),
            name.to_owned(),
            Some(path),
        );
        // Claim a slot in the peer's mailbox and post the segment's name.
        let slot = loop {
            let mb = &conn.peer_mailbox;
            let free = slots::claim((0..layout::SLOTS).map(|i| mb.slot(i, layout::SLOT_STATE)));
            if let Some(i) = free {
                break i;
            }
            if conn.peer_gone() || !conn.peer_mailbox.owner.is_alive() {
                return Err(conn.gone_error());
            }
            if Instant::now() >= deadline {
                return Err(no_response(format!(
                    "a free connect slot at {name:?} (all {} are taken)",
                    layout::SLOTS
                )));
            }
            std::thread::sleep(std::time::Duration::from_micros(200));
        };
        let base = layout::MB_SLOTS + slot * layout::SLOT_SIZE;
        let mb = &conn.peer_mailbox;
        mb.slot(slot, layout::SLOT_PID)
            .store(self.net.me.pid, Ordering::Relaxed);
        mb.slot(slot, layout::SLOT_NAME_LEN)
            .store(file.len() as u32, Ordering::Relaxed);
        mb.seg
            .write_bytes(base + layout::SLOT_NAME, file.as_bytes());
        slots::post(
            mb.slot(slot, layout::SLOT_STATE),
            mb.seg.u32_at(layout::MB_POSTED),
        );
        mb.doorbell().ring();
        Ok(self.add(conn))
    }

    fn lend(&mut self, peer: PeerId, len: usize, deadline: Instant) -> Result<ShmBuf> {
        // Read only once a reservation fails: the clock costs about as much
        // as the rest of a lend.
        let mut started = None;
        loop {
            let dir = &self.net.cfg.dir;
            let Link {
                conn,
                producer,
                reserved,
            } = self
                .conns
                .get_mut(&peer)
                .ok_or_else(|| no_such_connection(peer, &self.name))?;
            let max = ring::max_frame(conn.cap) as usize;
            if len > max {
                return Err(transport_error(format!(
                    "a {len}-byte frame exceeds this connection's largest frame ({max} bytes); \
                     use ShmConfig::ring_bytes of at least {}",
                    (len as u64 + 8) * 2
                )));
            }
            if conn.peer_gone() {
                return Err(conn.gone_error());
            }
            let tx = conn.side;
            conn.reap_unsent(producer);
            match producer.place(conn.ctl(tx), conn.words(tx), len as u64) {
                Ok(Some(place)) => {
                    let upto = place.reaches(conn.cap);
                    if upto > reserved.ring {
                        let base = (layout::CONN_DATA + tx * conn.cap as usize) as u64;
                        reserve_prefix(&conn.seg, base, conn.cap, &mut reserved.ring, upto)
                            .map_err(|e| {
                                transport_error(format!(
                                    "cannot take memory in {} for a {len}-byte frame to {}: \
                                     {e}{}",
                                    dir.display(),
                                    conn.peer_name,
                                    room_hint(&e)
                                ))
                            })?;
                    }
                    let r = producer.commit(place);
                    return Ok(ShmBuf {
                        conn: conn.clone(),
                        peer,
                        record: r.record,
                        payload: r.payload,
                        len,
                        sent: false,
                        stashed: false,
                    });
                }
                Ok(None) => {}
                Err(ring::Corrupt(why)) => {
                    conn.fail(format!("it broke the ring protocol: {why}"));
                    return Err(conn.gone_error());
                }
            }
            // The reservation that found no room has just read `head`:
            // waiting for it to move misses no release made since.
            let head = producer.head_seen();
            let unread = producer.unread(conn.ctl(tx));
            let conn = conn.clone();
            let now = Instant::now();
            let started = *started.get_or_insert(now);
            if now >= deadline {
                return Err(Error::NoResponse {
                    what: format!(
                        "room to send {len} bytes to {}, which has {unread} bytes unread",
                        conn.peer_name
                    ),
                    waited: now - started,
                });
            }
            // A buffer dropped unsent may be what holds the room.
            self.wait(now, deadline, |_| {
                conn.ctl(tx).head() != head || conn.peer_gone() || conn.unsent.pending()
            });
        }
    }

    fn send(&mut self, mut buf: ShmBuf) -> Result<()> {
        // On an error, dropping `buf` turns it into a pad.
        if buf.conn.peer_gone() {
            return Err(buf.conn.gone_error());
        }
        // Only the endpoint that lent a buffer drives its ring.
        let Some(Link { producer, .. }) = self
            .conns
            .get_mut(&buf.peer)
            .filter(|link| Arc::ptr_eq(&link.conn, &buf.conn))
        else {
            return Err(Error::Disconnected {
                peer: buf.conn.peer_name.clone(),
                reason: "the buffer was lent by another endpoint, or for a connection \
                         closed since"
                    .into(),
            });
        };
        buf.sent = true;
        let conn = &buf.conn;
        conn.reap_unsent(producer);
        let tx = conn.side;
        if buf.stashed {
            producer.mark_stashed(buf.record);
        }
        let moved = producer.complete(conn.words(tx), buf.record, true);
        if moved {
            conn.peer_mailbox.doorbell().ring();
        }
        Ok(())
    }

    fn flush(&mut self, peer: PeerId, deadline: Instant) -> Result<()> {
        let mut started = None;
        loop {
            let Link { conn, producer, .. } = self.link(peer)?;
            let tx = conn.side;
            conn.reap_unsent(producer);
            if producer.drained(conn.ctl(tx)) || conn.peer_gone() {
                return Ok(());
            }
            let unread = producer.unread(conn.ctl(tx));
            let conn = conn.clone();
            let now = Instant::now();
            let started = *started.get_or_insert(now);
            if now >= deadline {
                return Err(Error::NoResponse {
                    what: format!("{} to read the {unread} bytes sent to it", conn.peer_name),
                    waited: now - started,
                });
            }
            let head = conn.ctl(tx).head();
            self.wait(now, deadline, |_| {
                conn.ctl(tx).head() != head || conn.peer_gone() || conn.unsent.pending()
            });
        }
    }

    fn recv(&mut self, deadline: Instant) -> Result<Option<Event<ShmFrame>>> {
        let mut from = None;
        loop {
            if let Some(event) = self.poll(from.take()) {
                return Ok(Some(event));
            }
            let now = Instant::now();
            if now >= deadline {
                return Ok(None);
            }
            self.wait(now, deadline, |ep| {
                from = ep.work_at();
                from.is_some()
            });
        }
    }

    /// A block of the connection's stash, if this side connected (workers
    /// do) and the stash has `len` bytes free.
    fn stash(&mut self, peer: PeerId, len: usize) -> Option<Stash> {
        let Link { conn, reserved, .. } = self.conns.get_mut(&peer)?;
        if conn.side != 0 || conn.peer_gone() {
            return None;
        }
        let off = lock(&conn.stash_pool).take(len as u64)?;
        let base = layout::stash_offset(conn.cap);
        // With no room for it, the row goes through the ring instead
        // (whose `lend` says so if there is no room there either).
        let upto = off + len as u64;
        if reserve_prefix(&conn.seg, base, conn.stash, &mut reserved.stash, upto).is_err() {
            lock(&conn.stash_pool).give_back(off, len as u64);
            return None;
        }
        Some(Stash::new(ShmStash {
            conn: conn.clone(),
            off,
            len,
        }))
    }

    /// Sends `head` and where the stash lies; the peer reads the stash in
    /// place. A stash of another connection (one before a reconnect) is
    /// copied into the frame.
    fn send_stashed(
        &mut self,
        peer: PeerId,
        head: &[u8],
        tail: &Stash,
        deadline: Instant,
    ) -> Result<()> {
        let ours = tail.memory().downcast_ref::<ShmStash>().filter(|s| {
            self.conns
                .get(&peer)
                .is_some_and(|link| Arc::ptr_eq(&link.conn, &s.conn))
        });
        let Some(ShmStash { off, len, .. }) = ours else {
            return self.send_parts(peer, &[head, tail], deadline);
        };
        let (off, len) = (*off, *len as u64);
        let mut buf = self.lend(peer, head.len() + 16, deadline)?;
        buf[..head.len()].copy_from_slice(head);
        buf[head.len()..head.len() + 8].copy_from_slice(&off.to_le_bytes());
        buf[head.len() + 8..].copy_from_slice(&len.to_le_bytes());
        buf.stashed = true;
        self.send(buf)
    }

    fn frame_tail<'f>(&self, frame: &'f ShmFrame) -> &'f [u8] {
        frame.tail()
    }

    fn disconnect(&mut self, peer: PeerId) {
        if let Some(conn) = self.remove(peer) {
            conn.close();
        }
    }

    fn max_frame_len(&self) -> usize {
        self.net.cfg.max_frame_len()
    }

    /// Rows come in pieces: the receiver copies every frame out of the
    /// ring, so it can copy one piece while the sender writes the next.
    fn row_piece_len(&self) -> Option<usize> {
        Some(self.net.cfg.row_piece_len())
    }

    /// [`ShmConfig::liveness_interval`](crate::ShmConfig::liveness_interval):
    /// a waiting endpoint checks that often whether its peers' processes
    /// still run.
    fn reports_dead_peers_within(&self) -> Option<Duration> {
        Some(self.net.cfg.liveness_interval)
    }

    fn peer_name(&self, peer: PeerId) -> String {
        match self.conns.get(&peer) {
            Some(link) => link.conn.peer_name.clone(),
            None => peer.to_string(),
        }
    }
}

impl Drop for ShmEndpoint {
    fn drop(&mut self) {
        // The name goes first: once `closed` is set, another process may
        // treat the file as stale and bind the name anew, and removing the
        // file after that would remove its mailbox.
        let _ = std::fs::remove_file(&self.path);
        // Release: pairs with the Acquire loads in `Mailbox::closed_in`.
        self.mailbox
            .seg
            .u32_at(layout::MB_CLOSED)
            .store(1, Ordering::Release);
        for (_, link) in self.conns.drain() {
            link.conn.close();
        }
        self.order.clear();
        // Connections posted but never accepted: their creators see the
        // closed mailbox within a liveness interval and give up.
    }
}

/// A buffer lent by [`ShmEndpoint::lend`]: a slot of the ring the peer
/// reads. Dropping it unsent turns the slot into padding: the endpoint
/// does that, woken if it waits, so frames lent after it still go.
pub struct ShmBuf {
    conn: Arc<Conn>,
    /// The connection's id at the endpoint that lent it.
    peer: PeerId,
    record: u64,
    payload: u64,
    len: usize,
    sent: bool,
    /// The frame's tail is in the stash: its last 16 bytes say where.
    stashed: bool,
}

impl fmt::Debug for ShmBuf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ShmBuf({} bytes)", self.len)
    }
}

impl Deref for ShmBuf {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        let ptr = self.conn.data(self.conn.side, self.payload);
        // The consumer reads these bytes only once `send` publishes them.
        // SAFETY: `reserve` gave [payload, payload + len), inside the data
        // region and unwrapped, to this buffer alone; the mapping outlives it.
        unsafe { std::slice::from_raw_parts(ptr, self.len) }
    }
}

impl DerefMut for ShmBuf {
    fn deref_mut(&mut self) -> &mut [u8] {
        let ptr = self.conn.data(self.conn.side, self.payload);
        // SAFETY: as in `deref`; `&mut self` makes this the only view.
        unsafe { std::slice::from_raw_parts_mut(ptr, self.len) }
    }
}

impl Drop for ShmBuf {
    fn drop(&mut self) {
        if !self.sent {
            // The endpoint pads the slot (see `Unsent`): it may be on
            // another thread, asleep, with later frames waiting behind it.
            self.conn.unsent.push(self.record);
            self.conn.own_mailbox.doorbell().ring();
        }
    }
}

/// A received frame, read in place in the ring; dropping it releases the
/// space to the sender. A frame whose tail the sender left in its stash
/// ([`Endpoint::send_stashed`]) derefs to the part before the tail;
/// [`Endpoint::frame_tail`] gives the tail, read in place too.
pub struct ShmFrame {
    conn: Arc<Conn>,
    taken: Taken,
    /// `(offset, length)` of the tail in the peer's stash, checked.
    tail: Option<(u64, u64)>,
}

impl ShmFrame {
    /// The tail in the peer's stash, if the frame has one.
    fn tail(&self) -> &[u8] {
        let Some((off, len)) = self.tail else {
            return &[];
        };
        // The sender does not write a block it sent until the server
        // acknowledged the push, which it does after releasing the frame; a
        // sender that breaks that rule changes bytes we only read as plain
        // bytes (as a ring frame's would be).
        // SAFETY: `Conn::stash_tail` checked that [off, off + len) lies
        // inside the stash, inside the mapping, which outlives `self`.
        unsafe { std::slice::from_raw_parts(self.conn.stash_at(off), len as usize) }
    }
}

impl fmt::Debug for ShmFrame {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.tail {
            None => write!(f, "ShmFrame({} bytes)", self.taken.len),
            Some((_, tail)) => write!(
                f,
                "ShmFrame({} bytes and {tail} in the stash)",
                self.taken.len - WHERE_LEN
            ),
        }
    }
}

impl Deref for ShmFrame {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        let ptr = self.conn.data(1 - self.conn.side, self.taken.payload);
        // The last 16 bytes of a frame with a stashed tail say where it is.
        let len = self.taken.len - if self.tail.is_some() { WHERE_LEN } else { 0 };
        // SAFETY: `Consumer::next` checked that the record lies inside the
        // data region and inside what was published; the producer does not
        // touch it again until we release it in `drop`.
        unsafe { std::slice::from_raw_parts(ptr, len as usize) }
    }
}

/// A block of a connection's stash ([`Endpoint::stash`]), where a worker
/// keeps a long pending push row until the server acknowledged it; the
/// server reads it in place. Dropping it frees the block.
pub struct ShmStash {
    conn: Arc<Conn>,
    off: u64,
    len: usize,
}

impl fmt::Debug for ShmStash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ShmStash({} bytes at {})", self.len, self.off)
    }
}

impl StashMemory for ShmStash {
    fn bytes(&self) -> &[u8] {
        // SAFETY: the pool gave [off, off + len) inside the stash to this
        // block alone; the peer only reads the stash; the mapping outlives
        // `self` (it holds the connection).
        unsafe { std::slice::from_raw_parts(self.conn.stash_at(self.off), self.len) }
    }

    fn bytes_mut(&mut self) -> &mut [u8] {
        // SAFETY: as in `bytes`; `&mut self` makes this the only view here;
        // the peer reads a block only between its push's send and the
        // acknowledgement, while the worker does not write it.
        unsafe { std::slice::from_raw_parts_mut(self.conn.stash_at(self.off), self.len) }
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}

impl Drop for ShmStash {
    fn drop(&mut self) {
        lock(&self.conn.stash_pool).give_back(self.off, self.len as u64);
    }
}

impl Drop for ShmFrame {
    fn drop(&mut self) {
        let rx = 1 - self.conn.side;
        let moved =
            lock(&self.conn.consumer).release(self.conn.ctl(rx), self.taken.start, self.taken.end);
        if moved {
            self.conn.peer_mailbox.doorbell().ring();
        }
    }
}
