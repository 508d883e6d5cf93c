//! One connection: its queue pair, completion queue, registered rings, and
//! the protocol that runs over them.
//!
//! ## The protocol
//! - **Frames.** The sender writes a frame from its mirror ring to the same
//!   offset of the receiver's ring with one RDMA WRITE WITH IMMEDIATE; the
//!   immediate value is the offset in 8-byte units, the completion's length
//!   is the frame's. RC delivers the writes, and their completions, in
//!   order.
//! - **Credit is read, not sent.** The receiver releases frames in any
//!   order. When the released prefix grows, whoever released the frame
//!   stores `(head, released frames, check)` in its own control page: three
//!   plain stores, no message, so a round trip of two frames is two
//!   writes. The sender fetches that word with an RDMA READ when it needs
//!   room: when a reservation fails or a flush waits, and ahead of time
//!   once half its ring or half its frame quota is in flight. The peer's
//!   CPU takes no part, so a sender waiting on a receiver whose user has
//!   stopped polling still sees every release. One READ is in flight at a
//!   time; one that brought nothing new delays the next a little more (up
//!   to [`READ_BACKOFF_MAX`](crate::credit::READ_BACKOFF_MAX)). The check
//!   word tells a read that raced the stores (a torn read), which is
//!   retried.
//! - **Receives.** Every WRITE WITH IMMEDIATE consumes a posted receive.
//!   Each side keeps `recv_depth` posted and re-posts as it polls (before
//!   the frame can be released); a sender keeps at most `recv_depth - 2`
//!   frames unreleased, so its frames and the close always find one.
//! - **Close.** A closing side posts a zero-length write tagged
//!   [`IMM_CLOSE`] after its last frame, waits (at most the linger time)
//!   for its completion, then closes the TCP side channel. A peer whose
//!   side channel ends without a close crashed.
//! - **Lent buffers dropped unsent** still take their place in the ring;
//!   they are announced as padding ([`IMM_PAD`]) so both sides keep
//!   counting alike.

use std::collections::VecDeque;
use std::io;
use std::net::TcpStream;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use ibverbs_sys as ffi;

use crate::config::RdmaConfig;
use crate::credit::{CreditRead, credit_check};
use crate::held::WriteLog;
use crate::hello::Hello;
use crate::ring::{ALIGN, RecvRing, SendRing, Violation};
use crate::stash::{RdmaStash, StashRegion};
use crate::verbs::{
    self, Channel, Cq, Device, Gather, Mr, Path, Qp, QpAddress, Registration, Remote,
};
use laggard::transport::HeldRow;

/// Control messages have this bit set in their immediate value.
const IMM_CONTROL: u32 = 1 << 31;
/// The peer closed the connection; nothing follows.
const IMM_CLOSE: u32 = IMM_CONTROL | 2;
/// A lent buffer dropped unsent: counts as an (empty, unseen) frame.
const IMM_PAD: u32 = 1 << 30;
/// The offset bits of a data or padding immediate (in 8-byte units).
const IMM_OFFSET: u32 = IMM_PAD - 1;

const WR_DATA: u64 = 1;
const WR_READ: u64 = 2;
const WR_CLOSE: u64 = 3;
const WR_RECV: u64 = 4;
/// The bits of a work request id that say which of the above it is; a
/// frame write's id also carries its number above them.
const WR_KIND: u64 = 7;
const WR_NUMBER_SHIFT: u32 = 3;

/// One frame write in this many asks for a work completion (and the close
/// and every READ do): each completion costs the device and the poller
/// work, and nothing waits for a frame's own (the peer's release of it
/// says more). Failed writes complete regardless. The send queue cannot
/// overflow: the sender learns of releases only through READs, whose
/// (signalled, in-order) completions reclaim every slot before them, so
/// the slots in use are at most the frames it counts unreleased, a READ
/// and the close.
const SIGNAL_EVERY: u32 = 16;

/// The control page: our published credit (which the peer reads) and
/// where our READ of the peer's lands, on separate cache lines.
const CTL_LEN: usize = 4096;
const CREDIT_OUT: usize = 0;
const CREDIT_IN: usize = 64;
const CREDIT_LEN: u32 = 24;
/// Torn reads in a row after which the peer's credit word is taken for
/// garbage.
const TORN_READS_MAX: u32 = 1000;

/// How long a side channel may be closed before a close arrives in band,
/// before the peer is taken for crashed.
const CLOSE_GRACE: Duration = Duration::from_millis(100);

/// How often polling looks at the side channel (a crashed peer is seen
/// within this plus [`CLOSE_GRACE`]).
const SIDE_CHANNEL_CHECK: Duration = Duration::from_millis(1);

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// What a frame's write gathers after the frame's head, from where it lies.
#[derive(Debug, Default)]
pub(crate) enum Tail {
    /// Nothing: the whole frame is in the mirror ring.
    #[default]
    None,
    /// A stash block, which its owner leaves unchanged until the frame is
    /// released (`send_stashed`).
    Stash(Gather),
    /// Rows held until the write's completion (`send_held`).
    Held(HeldWrite),
}

impl Tail {
    /// What the write gathers.
    fn gathers(&self) -> &[Gather] {
        match self {
            Tail::None => &[],
            Tail::Stash(g) => std::slice::from_ref(g),
            Tail::Held(h) => &h.gathers,
        }
    }

    /// Bytes the write gathers after the head.
    pub fn len(&self) -> usize {
        self.gathers().iter().map(|g| g.len as usize).sum()
    }
}

/// Rows a frame's write reads where they lie, held (with the registrations
/// the write reads them through) until its completion is polled, or its
/// queue pair destroyed. Counted in the endpoint's count of held writes
/// while it lives.
pub(crate) struct HeldWrite {
    gathers: Vec<Gather>,
    // Dropped in this order: the rows let go of before the registrations.
    _rows: Vec<HeldRow>,
    _regions: Vec<Arc<Registration>>,
    count: Arc<AtomicUsize>,
}

impl HeldWrite {
    /// `rows`, read through `gathers` (one each) in `regions`; adds one to
    /// `count` until dropped.
    pub fn new(
        gathers: Vec<Gather>,
        rows: Vec<HeldRow>,
        regions: Vec<Arc<Registration>>,
        count: &Arc<AtomicUsize>,
    ) -> Self {
        // Relaxed: the count only tells `release_held` whether to poll; the
        // rows' own holds order the memory (their release pairs with the
        // acquire of the next push to them).
        count.fetch_add(1, Ordering::Relaxed);
        HeldWrite {
            gathers,
            _rows: rows,
            _regions: regions,
            count: Arc::clone(count),
        }
    }
}

impl Drop for HeldWrite {
    fn drop(&mut self) {
        // Relaxed: as in `new`.
        self.count.fetch_sub(1, Ordering::Relaxed);
    }
}

impl std::fmt::Debug for HeldWrite {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "HeldWrite({} rows)", self.gathers.len())
    }
}

/// What became of a lent buffer, by reservation number.
#[derive(Debug)]
enum Lent {
    Out,
    /// `len` bytes at `offset` of the mirror ring, followed by `tail`.
    Sent {
        offset: u64,
        len: u32,
        tail: Tail,
    },
    Dropped {
        offset: u64,
    },
}

/// What the endpoint learns from polling a connection.
#[derive(Debug)]
pub(crate) enum Progress {
    /// A frame arrived: its id, offset and length in the receive ring.
    Frame { id: u64, offset: u64, len: usize },
    /// The connection ended (closed by the peer, or failed: the reason).
    Ended(Option<String>),
}

/// The half-built connection: resources made, receives posted, the queue
/// pair in INIT, waiting for the peer's hello.
pub(crate) struct Pending {
    qp: Qp,
    recv_mr: Mr,
    ctl_mr: Mr,
    cq: Cq,
    psn: u32,
    recv_depth: u32,
    stash_len: u64,
}

impl Pending {
    pub fn new(
        dev: &Arc<Device>,
        channel: &Arc<Channel>,
        cfg: &RdmaConfig,
        path: &Path,
    ) -> io::Result<Pending> {
        // Sends in flight: frames (bounded by the peer's receives, which
        // we do not know yet; at most 65536) plus a READ and a close (see
        // SIGNAL_EVERY).
        let send_depth = cfg.recv_depth + 16;
        let cq = Cq::new(dev, channel, send_depth + cfg.recv_depth + 16)?;
        let qp = Qp::new(dev, &cq, send_depth, cfg.recv_depth, path.port)?;
        let recv_mr = Mr::new(dev, cfg.ring_bytes as usize, Remote::Write)?;
        let ctl_mr = Mr::new(dev, CTL_LEN, Remote::Read)?;
        // Nothing released yet: a zeroed page would fail the check.
        store_credit(&ctl_mr, 0, 0);
        for _ in 0..cfg.recv_depth {
            qp.post_recv(WR_RECV)?;
        }
        let psn = random_psn();
        Ok(Pending {
            qp,
            recv_mr,
            ctl_mr,
            cq,
            psn,
            recv_depth: cfg.recv_depth,
            stash_len: cfg.stash_len(),
        })
    }

    /// Our half of the handshake.
    pub fn hello(&self, name: &str, target: &str, lid: u16, gid: [u8; 16]) -> Hello {
        Hello {
            name: name.to_owned(),
            target: target.to_owned(),
            qp: QpAddress {
                qpn: self.qp.qpn(),
                psn: self.psn,
                lid,
                gid,
            },
            ring_addr: self.recv_mr.addr(),
            ring_len: self.recv_mr.len() as u64,
            ring_rkey: self.recv_mr.rkey(),
            credit_addr: self.ctl_mr.addr() + CREDIT_OUT as u64,
            credit_rkey: self.ctl_mr.rkey(),
            recv_depth: self.recv_depth,
        }
    }

    /// Connects the queue pair to the peer that sent `remote` and makes the
    /// mirror of its ring.
    pub fn finish(
        self,
        dev: &Arc<Device>,
        path: &Path,
        remote: &Hello,
        stream: TcpStream,
    ) -> io::Result<Conn> {
        let send_mr = Mr::new(dev, remote.ring_len as usize, Remote::None)?;
        self.qp.connect(path, self.psn, &remote.qp)?;
        stream.set_nonblocking(true)?;
        // The peer keeps `remote.recv_depth` receives posted; leave room
        // for the close. Our own send queue holds `recv_depth + 16`: as
        // many frames, a READ and the close.
        let reserve = 2;
        let max_in_flight = u64::from(
            remote
                .recv_depth
                .min(self.recv_depth)
                .saturating_sub(reserve)
                .max(1),
        );
        let recv_len = self.recv_mr.len() as u64;
        Ok(Conn {
            peer: remote.name.clone(),
            state: Mutex::new(State {
                qp: self.qp,
                send_mr,
                recv_mr: self.recv_mr,
                ctl_mr: self.ctl_mr,
                cq: self.cq,
                remote_ring: (remote.ring_addr, remote.ring_rkey),
                remote_credit: (remote.credit_addr, remote.credit_rkey),
                send: SendRing::new(remote.ring_len, max_in_flight),
                recv: RecvRing::new(recv_len),
                lent: VecDeque::new(),
                first_lent: 0,
                writes: WriteLog::default(),
                credit_read: CreditRead::default(),
                unsignaled: 0,
                arrived: Vec::new(),
                closing: false,
                close_done: false,
                ended: false,
                side_channel_closed: None,
                side_channel_checked: Instant::now(),
                failure: None,
                stash: match self.stash_len {
                    0 => Stash::Unavailable,
                    len => Stash::Unregistered(len),
                },
            }),
            stream,
        })
    }
}

/// Stores a credit in the control page `ctl`, where the peer's READs find
/// it. Callers hold the connection's state (or own `ctl` outright).
fn store_credit(ctl: &Mr, head: u64, released: u64) {
    let out = ctl.ptr().wrapping_add(CREDIT_OUT) as *const AtomicU64;
    // SAFETY: CREDIT_OUT + 24 lies inside the control page, which lives
    // as long as `ctl` and is 8-aligned (a page-aligned mapping); only the
    // peer's device reads it concurrently, and only the caller writes it.
    let [h, r, c] = unsafe { [&*out, &*out.add(1), &*out.add(2)] };
    h.store(head, Ordering::Relaxed);
    r.store(released, Ordering::Relaxed);
    // Release: the released frames' last reads by this process, and the
    // two words above, come before the check word. It pairs with the peer
    // device's READ, whose copy made before the check word was stored is
    // told by the check (State::credit_arrived).
    c.store(credit_check(head, released), Ordering::Release);
}

fn random_psn() -> u32 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    h.write_u128(now.as_nanos());
    h.write_u32(std::process::id());
    (h.finish() as u32) & 0xff_ffff
}

/// A live connection, shared by the endpoint and the frames and buffers
/// lent from it.
pub(crate) struct Conn {
    /// The peer's endpoint name.
    pub peer: String,
    state: Mutex<State>,
    stream: TcpStream,
}

struct State {
    // Verbs resources, in drop order: the queue pair before the memory it
    // accessed and the completion queue it used.
    qp: Qp,
    send_mr: Mr,
    recv_mr: Mr,
    ctl_mr: Mr,
    cq: Cq,
    remote_ring: (u64, u32),
    remote_credit: (u64, u32),
    send: SendRing,
    recv: RecvRing,
    /// Lent buffers not yet posted, from reservation `first_lent` on.
    lent: VecDeque<Lent>,
    first_lent: u64,
    /// Frame writes posted, and the held rows of those that read some,
    /// until their completion (or the queue pair's end, which drops them
    /// after it).
    writes: WriteLog<HeldWrite>,
    /// Our READs of the peer's credit.
    credit_read: CreditRead,
    /// Frame writes posted since the last signalled one.
    unsignaled: u32,
    /// What polling found, for the endpoint to take (polling also happens
    /// on releasing threads).
    arrived: Vec<Progress>,
    /// We posted our close.
    closing: bool,
    /// Our close completed (everything before it was delivered).
    close_done: bool,
    /// The end was reported to the endpoint.
    ended: bool,
    /// When the side channel was seen closed without a close in band.
    side_channel_closed: Option<Instant>,
    /// When the side channel was last looked at.
    side_channel_checked: Instant,
    /// Why the connection failed, if it did.
    failure: Option<String>,
    /// Where long push rows wait for their acknowledgement (after the
    /// queue pair, so it is deregistered after it).
    stash: Stash,
}

/// A connection's stash, registered on first use.
enum Stash {
    /// Not yet registered: this many bytes when it is.
    Unregistered(u64),
    /// Being registered, by the one call that found it unregistered.
    Registering,
    Ready(Arc<StashRegion>),
    /// None configured, or registering it failed.
    Unavailable,
}

impl State {
    fn fail(&mut self, why: String) {
        if self.failure.is_none() {
            self.failure = Some(why);
            self.qp.fail();
        }
    }

    /// Stores the current credit in our control page, where the peer's
    /// READs find it.
    fn publish_credit(&mut self) {
        let (head, released) = self.recv.credit();
        store_credit(&self.ctl_mr, head, released);
    }

    /// Posts a READ of the peer's credit, unless one is in flight or the
    /// last ones brought nothing and the next is not due yet.
    fn want_credit(&mut self) {
        if self.failure.is_some() || self.closing {
            return;
        }
        let now = Instant::now();
        if !self.credit_read.start(now) {
            return;
        }
        let local = self.ctl_mr.addr() + CREDIT_IN as u64;
        // SAFETY: the 24 bytes at CREDIT_IN lie in the control page; only
        // this READ writes them, and they are read only at its completion
        // (credit_arrived), one READ at a time.
        let posted = unsafe {
            self.qp
                .read(WR_READ, &self.ctl_mr, local, CREDIT_LEN, self.remote_credit)
        };
        if let Err(e) = posted {
            self.fail(format!(
                "posting an RDMA READ of the peer's credit failed: {e}"
            ));
        }
    }

    /// A READ of the peer's credit completed: takes what it brought.
    fn credit_arrived(&mut self) {
        let inp = self.ctl_mr.ptr().wrapping_add(CREDIT_IN) as *const u64;
        // SAFETY: CREDIT_IN + 24 lies inside the control page, 8-aligned;
        // the READ that wrote it completed, and no other is in flight.
        let [head, released, check] = unsafe {
            [
                inp.read_volatile(),
                inp.add(1).read_volatile(),
                inp.add(2).read_volatile(),
            ]
        };
        let now = Instant::now();
        if check != credit_check(head, released) {
            if self.credit_read.torn() > TORN_READS_MAX {
                self.fail("the peer's credit word stays inconsistent".into());
            }
            return;
        }
        let grew = self.send.credit(head, released);
        self.credit_read.done(now, grew);
    }

    /// The sender's view needs fresh credit soon: ask ahead of time.
    fn credit_low(&mut self) {
        if self.send.half_used() {
            self.want_credit();
        }
    }

    /// Posts every lent buffer that is next in line and settled.
    fn post_ready(&mut self) -> io::Result<()> {
        while matches!(
            self.lent.front(),
            Some(Lent::Sent { .. } | Lent::Dropped { .. })
        ) {
            let Some(front) = self.lent.pop_front() else {
                break;
            };
            let (len, tail, offset, imm) = match front {
                Lent::Sent { offset, len, tail } => (len, tail, offset, (offset / ALIGN) as u32),
                Lent::Dropped { offset } => {
                    (0, Tail::None, offset, IMM_PAD | (offset / ALIGN) as u32)
                }
                Lent::Out => unreachable!("only settled buffers are taken"),
            };
            self.first_lent += 1;
            if self.failure.is_some() {
                // Never posted: its held rows (if any) go at once.
                continue;
            }
            let (addr, rkey) = self.remote_ring;
            // A write that reads held rows asks for its completion, which
            // lets go of them.
            let held = matches!(tail, Tail::Held(_));
            let signaled = held || self.unsignaled + 1 >= SIGNAL_EVERY;
            self.unsignaled = if signaled { 0 } else { self.unsignaled + 1 };
            let number = self.writes.next();
            // SAFETY: [offset, offset + len) is this reservation's part of
            // the mirror ring, which nobody touches until the receiver
            // releases it (after the write landed there). A stash tail is a
            // stash block (`RdmaStash`), registered while its region lives
            // (the state holds it) and, by `send_stashed`'s contract, left
            // unchanged until the frame was released. Held rows are held
            // unchanged, with their registrations, until this write's
            // completion is polled (`completion`) or the queue pair is
            // destroyed (`writes` drops after `qp`).
            unsafe {
                self.qp.write_imm(
                    WR_DATA | (number << WR_NUMBER_SHIFT),
                    &self.send_mr,
                    self.send_mr.addr() + offset,
                    len,
                    tail.gathers(),
                    (addr + offset, rkey),
                    imm,
                    signaled,
                )?
            };
            self.writes.posted(match tail {
                Tail::Held(h) => Some(h),
                _ => None,
            });
        }
        Ok(())
    }

    /// Takes every completion off the queue.
    fn poll(&mut self) {
        let mut wcs = [ffi::ibv_wc::default(); 32];
        loop {
            let n = match self.cq.poll(&mut wcs) {
                Ok(n) => n,
                Err(e) => {
                    self.fail(format!("polling the completion queue failed: {e}"));
                    return;
                }
            };
            for wc in &wcs[..n] {
                self.completion(wc);
            }
            if n < wcs.len() {
                return;
            }
        }
    }

    fn completion(&mut self, wc: &ffi::ibv_wc) {
        let kind = wc.wr_id() & WR_KIND;
        if kind == WR_READ {
            self.credit_read.landed();
        }
        // Completions come in order: this write and every one before it
        // are done with their rows, whatever its status.
        if kind == WR_DATA {
            self.writes.done(wc.wr_id() >> WR_NUMBER_SHIFT);
        }
        if let Some((status, vendor)) = wc.error() {
            let flushed = status == ffi::ibv_wc_status::IBV_WC_WR_FLUSH_ERR;
            if !(flushed && (self.failure.is_some() || self.closing)) {
                let what = match kind {
                    WR_RECV => "a receive",
                    WR_READ => "an RDMA READ of the peer's credit",
                    _ => "an RDMA WRITE",
                };
                self.fail(format!(
                    "{what} completed with {} (vendor error {vendor:#x})",
                    verbs::status_name(status)
                ));
            }
            return;
        }
        match kind {
            WR_READ => self.credit_arrived(),
            WR_CLOSE => self.close_done = true,
            WR_DATA => {}
            WR_RECV => {
                if let Err(e) = self.qp.post_recv(WR_RECV) {
                    self.fail(format!("re-posting a receive failed: {e}"));
                    return;
                }
                let Some(imm) = wc.imm_data() else {
                    self.fail("the peer sent a message without immediate data".into());
                    return;
                };
                let imm = u32::from_be(imm);
                match imm {
                    IMM_CLOSE => self.arrived.push(Progress::Ended(None)),
                    imm if imm & IMM_CONTROL != 0 => {
                        self.fail(format!("unknown control message {imm:#x}"))
                    }
                    imm => {
                        let offset = u64::from(imm & IMM_OFFSET) * ALIGN;
                        let len = if imm & IMM_PAD != 0 {
                            0
                        } else {
                            wc.len() as u64
                        };
                        match self.recv.arrive(offset, len) {
                            Err(Violation(why)) => {
                                self.fail(format!("the peer broke the ring protocol: {why}"))
                            }
                            Ok(id) if imm & IMM_PAD != 0 => self.release(id),
                            Ok(id) => self.arrived.push(Progress::Frame {
                                id,
                                offset,
                                len: len as usize,
                            }),
                        }
                    }
                }
            }
            other => self.fail(format!("a completion with unknown work request id {other}")),
        }
    }

    fn release(&mut self, id: u64) {
        if self.recv.release(id).is_some() {
            self.publish_credit();
        }
    }
}

impl Conn {
    /// Polls completions and the side channel; returns what the endpoint
    /// must hear of, in order.
    pub fn progress(&self, out: &mut Vec<Progress>) {
        let mut st = lock(&self.state);
        if st.ended {
            return;
        }
        // Look at the side channel first (a system call, so at most every
        // SIDE_CHANNEL_CHECK), then drain the completions: a close sent
        // before the side channel closed is then seen.
        if st.side_channel_closed.is_none()
            && st.side_channel_checked.elapsed() >= SIDE_CHANNEL_CHECK
        {
            st.side_channel_checked = Instant::now();
            if !self.side_channel_open() {
                st.side_channel_closed = Some(Instant::now());
            }
        }
        st.poll();
        out.append(&mut st.arrived);
        let ended_in_band = out.iter().any(|p| matches!(p, Progress::Ended(_)));
        if !ended_in_band {
            if let Some(since) = st.side_channel_closed {
                if since.elapsed() >= CLOSE_GRACE {
                    st.fail(
                        "the peer's process ended or its side channel broke without a close".into(),
                    );
                }
            }
            if let Some(why) = &st.failure {
                out.push(Progress::Ended(Some(why.clone())));
            }
        }
        if out.iter().any(|p| matches!(p, Progress::Ended(_))) {
            st.ended = true;
        }
    }

    /// Whether the TCP side channel is still open (the peer's process is
    /// alive and has not closed it).
    fn side_channel_open(&self) -> bool {
        let mut byte = [0u8; 1];
        match self.stream.peek(&mut byte) {
            Ok(0) => false,
            Ok(_) => true,
            Err(e) => {
                e.kind() == io::ErrorKind::WouldBlock || e.kind() == io::ErrorKind::Interrupted
            }
        }
    }

    /// Why sends fail, if they do.
    pub fn failure(&self) -> Option<String> {
        let st = lock(&self.state);
        if let Some(f) = &st.failure {
            return Some(f.clone());
        }
        (st.ended || st.closing).then(|| "the connection was closed".to_owned())
    }

    /// The largest frame this connection can carry to the peer.
    pub fn max_frame(&self) -> usize {
        lock(&self.state).send.max_frame() as usize
    }

    /// Reserves a frame of `len` bytes, if there is room now: its
    /// reservation number and where its bytes are in the mirror ring.
    /// Without room, fetches the peer's credit (the caller waits for it).
    pub fn reserve(&self, len: usize) -> Option<(u64, *mut u8)> {
        let mut st = lock(&self.state);
        let Some(r) = st.send.reserve(len as u64) else {
            st.want_credit();
            return None;
        };
        st.credit_low();
        st.lent.push_back(Lent::Out);
        Some((r.seq, st.send_mr.ptr().wrapping_add(r.offset as usize)))
    }

    /// Sends (or, with `send` false, abandons) reservation `seq`: its first
    /// `len` bytes, then `tail` (the reservation's length is the two
    /// together).
    pub fn settle(
        &self,
        seq: u64,
        ptr: *mut u8,
        len: usize,
        tail: Tail,
        send: bool,
    ) -> io::Result<()> {
        let mut st = lock(&self.state);
        let offset = ptr as u64 - st.send_mr.addr();
        let i = (seq - st.first_lent) as usize;
        st.lent[i] = if send {
            Lent::Sent {
                offset,
                len: len as u32,
                tail,
            }
        } else {
            Lent::Dropped { offset }
        };
        st.post_ready()
    }

    /// A block of `len` bytes of the stash, registering the stash on first
    /// use; `None` if there is none (configured so, or registering failed),
    /// no room, or the connection ended.
    ///
    /// The registration (pinning up to `stash_bytes` of memory, which can
    /// take milliseconds) runs without the connection's lock, so frames
    /// released and completions polled meanwhile do not wait for it;
    /// a stash asked for meanwhile is `None` and the row is copied.
    pub fn stash(&self, len: usize) -> Option<RdmaStash> {
        let mut st = lock(&self.state);
        if st.failure.is_some() || st.closing {
            return None;
        }
        if let Stash::Unregistered(bytes) = st.stash {
            st.stash = Stash::Registering;
            let device = Arc::clone(st.send_mr.device());
            drop(st);
            let registered = Mr::new(&device, bytes as usize, Remote::None);
            st = lock(&self.state);
            st.stash = match registered {
                Ok(mr) => Stash::Ready(StashRegion::new(mr)),
                Err(_) => Stash::Unavailable,
            };
            if st.failure.is_some() || st.closing {
                return None;
            }
        }
        match &st.stash {
            Stash::Ready(region) => region.take(len),
            Stash::Unregistered(_) | Stash::Registering | Stash::Unavailable => None,
        }
    }

    /// Takes the completions that arrived (for `release_held`): those of
    /// writes of held rows let go of them. Whether any write still holds
    /// rows.
    pub fn reap(&self) -> bool {
        let mut st = lock(&self.state);
        st.poll();
        st.writes.holding()
    }

    /// Fails the connection if a write of held rows has not completed:
    /// the device then flushes it, and the next `reap` lets go of them.
    pub fn fail_if_holding(&self, why: &str) {
        let mut st = lock(&self.state);
        if st.writes.holding() {
            st.fail(why.to_owned());
        }
    }

    /// Whether `block` is a block of this connection's stash.
    pub fn owns(&self, block: &RdmaStash) -> bool {
        matches!(&lock(&self.state).stash, Stash::Ready(region) if block.is_in(region))
    }

    /// Every frame sent was released by the peer. If not, fetches the
    /// peer's credit (the caller waits for it).
    pub fn drained(&self) -> bool {
        let mut st = lock(&self.state);
        if st.lent.is_empty() && st.send.drained() {
            return true;
        }
        st.want_credit();
        false
    }

    /// When a deferred READ of the peer's credit is due, if one is: a
    /// sleeping waiter must wake by then.
    pub fn credit_due(&self) -> Option<Instant> {
        lock(&self.state).credit_read.due()
    }

    /// The receive ring's bytes at `offset`.
    pub fn frame_ptr(&self, offset: u64) -> *const u8 {
        lock(&self.state)
            .recv_mr
            .ptr()
            .wrapping_add(offset as usize)
    }

    /// Releases frame `id`'s space.
    pub fn release(&self, id: u64) {
        lock(&self.state).release(id);
    }

    /// Whether the frames received and not released could make the peer
    /// wait: a frame of the largest size would not fit after them, or one
    /// more frame would exceed the peer's quota ([`RecvRing::crowded`]).
    pub fn recv_crowded(&self) -> bool {
        let st = lock(&self.state);
        st.recv.crowded(st.send.max_in_flight())
    }

    /// Arms the completion queue: the channel gets an event at the next
    /// completion.
    pub fn arm(&self) {
        let st = lock(&self.state);
        if let Err(e) = st.cq.arm() {
            drop(st);
            lock(&self.state).fail(format!("arming the completion queue failed: {e}"));
        }
    }

    /// Starts closing: posts the close after everything sent so far.
    pub fn start_close(&self) {
        let mut st = lock(&self.state);
        if st.closing || st.failure.is_some() || st.ended {
            st.closing = true;
            return;
        }
        st.closing = true;
        // Everything settled before the close goes out before it.
        if st.post_ready().is_err() {
            st.close_done = true;
            return;
        }
        // SAFETY: a zero-length write reads no local memory.
        let posted = unsafe {
            st.qp.write_imm(
                WR_CLOSE,
                &st.ctl_mr,
                st.ctl_mr.addr(),
                0,
                &[],
                st.remote_ring,
                IMM_CLOSE,
                true,
            )
        };
        if posted.is_err() {
            st.close_done = true;
        }
    }

    /// Whether our close completed, or can no longer.
    pub fn close_settled(&self) -> bool {
        let mut st = lock(&self.state);
        st.poll();
        st.arrived.clear();
        st.close_done || st.failure.is_some()
    }

    /// Replaces the key of the peer's ring with a wrong one, so the next
    /// frame's write fails at the peer with a remote access error (tests).
    pub fn corrupt_remote_key(&self) {
        let mut st = lock(&self.state);
        st.remote_ring.1 ^= 0x5a5a_5a5a;
    }

    /// Ends the side channel (the peer sees the close, or a crash).
    pub fn shut_side_channel(&self) {
        let _ = self.stream.shutdown(std::net::Shutdown::Both);
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        self.shut_side_channel();
    }
}

/// Closes `conns`: posts each one's close, waits until they completed or
/// `linger` passed, and ends their side channels.
pub(crate) fn close_all(conns: &[Arc<Conn>], linger: Duration) {
    for c in conns {
        c.start_close();
    }
    let until = Instant::now() + linger;
    while Instant::now() < until && !conns.iter().all(|c| c.close_settled()) {
        std::thread::sleep(Duration::from_micros(200));
    }
    for c in conns {
        c.shut_side_channel();
    }
}
