//! Thin owning wrappers over the raw verbs (`ibverbs-sys`): each handle
//! releases its resource on drop, keeps what it depends on alive through an
//! `Arc`, and is counted in [`Live`] so tests can prove nothing leaked.
//!
//! The safe `ibverbs` crate is not used: its handles borrow each other with
//! lifetimes (they cannot live together in one connection struct), its raw
//! pointers are private (so its objects cannot be mixed with the verbs it
//! lacks: RDMA WRITE with immediate data, completion channels), and it
//! fixes the port to 1.

use std::ffi::CStr;
use std::io;
use std::os::raw::{c_int, c_void};
use std::ptr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use ibverbs_sys as ffi;

/// Counts of the verbs resources alive, for leak checks.
#[derive(Debug, Default)]
pub(crate) struct Live {
    pub mrs: AtomicUsize,
    pub qps: AtomicUsize,
    pub cqs: AtomicUsize,
}

impl Live {
    fn up(c: &AtomicUsize) {
        // Relaxed: a statistic read only by leak checks after the threads
        // that changed it were joined (which orders the accesses).
        c.fetch_add(1, Ordering::Relaxed);
    }
    fn down(c: &AtomicUsize) {
        // Relaxed: as in `up`.
        c.fetch_sub(1, Ordering::Relaxed);
    }
    /// What is still registered or created, as names for a leak report.
    pub fn report(&self) -> Vec<String> {
        let mut out = Vec::new();
        for (what, c) in [
            ("memory region", &self.mrs),
            ("queue pair", &self.qps),
            ("completion queue", &self.cqs),
        ] {
            // Relaxed: see `up`.
            let n = c.load(Ordering::Relaxed);
            if n > 0 {
                out.push(format!("{n} {what}(s)"));
            }
        }
        out
    }
}

/// The name of a work-completion status, as libibverbs spells it.
pub(crate) fn status_name(status: ffi::ibv_wc_status::Type) -> String {
    // SAFETY: ibv_wc_status_str returns a pointer to a static string for
    // any value (an "unknown" string for values it does not know).
    let s = unsafe { CStr::from_ptr(ffi::ibv_wc_status_str(status)) };
    s.to_string_lossy().into_owned()
}

/// The names of the RDMA devices present (empty on a machine without any).
pub(crate) fn device_names() -> io::Result<Vec<String>> {
    let mut n: c_int = 0;
    // SAFETY: ibv_get_device_list writes the count into `n` and returns a
    // NULL-terminated array we free below with ibv_free_device_list.
    let list = unsafe { ffi::ibv_get_device_list(&mut n) };
    if list.is_null() {
        return Err(io::Error::last_os_error());
    }
    let mut names = Vec::new();
    for i in 0..n.max(0) as usize {
        // SAFETY: `list` holds `n` valid device pointers; the name is a
        // NUL-terminated string owned by the device.
        let name = unsafe { CStr::from_ptr(ffi::ibv_get_device_name(*list.add(i))) };
        names.push(name.to_string_lossy().into_owned());
    }
    // SAFETY: `list` came from ibv_get_device_list and is freed once.
    unsafe { ffi::ibv_free_device_list(list) };
    Ok(names)
}

/// An open device context with one protection domain.
pub(crate) struct Device {
    ctx: *mut ffi::ibv_context,
    pd: *mut ffi::ibv_pd,
    /// Scatter-gather entries each send of this device's queue pairs
    /// takes: the device's most, at most [`MAX_SEND_SGE`].
    pub send_sge: u32,
    pub live: Live,
}

// SAFETY: verbs contexts and protection domains may be used from any
// thread (libibverbs serialises internally); we never mutate them through
// these pointers.
unsafe impl Send for Device {}
// SAFETY: as for Send.
unsafe impl Sync for Device {}

impl Device {
    /// Opens the device called `name`.
    pub fn open(name: &str) -> io::Result<Arc<Device>> {
        let mut n: c_int = 0;
        // SAFETY: as in device_names.
        let list = unsafe { ffi::ibv_get_device_list(&mut n) };
        if list.is_null() {
            return Err(io::Error::last_os_error());
        }
        let mut ctx = ptr::null_mut();
        for i in 0..n.max(0) as usize {
            // SAFETY: as in device_names.
            let dev = unsafe { *list.add(i) };
            // SAFETY: as in device_names.
            let dev_name = unsafe { CStr::from_ptr(ffi::ibv_get_device_name(dev)) };
            if dev_name.to_bytes() == name.as_bytes() {
                // SAFETY: `dev` is a valid device of the live list; a
                // context stays valid after the list is freed.
                ctx = unsafe { ffi::ibv_open_device(dev) };
                break;
            }
        }
        let err = io::Error::last_os_error();
        // SAFETY: freed once, after its last use.
        unsafe { ffi::ibv_free_device_list(list) };
        if ctx.is_null() {
            return Err(err);
        }
        // SAFETY: `ctx` is an open context.
        let pd = unsafe { ffi::ibv_alloc_pd(ctx) };
        if pd.is_null() {
            let err = io::Error::last_os_error();
            // SAFETY: closing the context we opened, nothing uses it.
            unsafe { ffi::ibv_close_device(ctx) };
            return Err(err);
        }
        let mut attr = ffi::ibv_device_attr::default();
        // SAFETY: `ctx` is an open context and `attr` a writable
        // ibv_device_attr that outlives the call.
        let rc = unsafe { ffi::ibv_query_device(ctx, &mut attr) };
        if rc != 0 {
            // SAFETY: releasing what we made above, which nothing uses.
            unsafe {
                ffi::ibv_dealloc_pd(pd);
                ffi::ibv_close_device(ctx);
            }
            return Err(io::Error::from_raw_os_error(rc));
        }
        Ok(Arc::new(Device {
            ctx,
            pd,
            send_sge: (attr.max_sge.max(0) as u32).clamp(MIN_SEND_SGE, MAX_SEND_SGE),
            live: Live::default(),
        }))
    }

    /// The attributes of `port`.
    pub fn port(&self, port: u8) -> io::Result<ffi::ibv_port_attr> {
        let mut attr = ffi::ibv_port_attr::default();
        // SAFETY: the exported ibv_query_port fills the leading fields of
        // the port attributes (its compat layout is a prefix of
        // ibv_port_attr), which outlives the call.
        let rc = unsafe { ffi::ibv_query_port(self.ctx, port, &mut attr as *mut _ as *mut _) };
        if rc != 0 {
            return Err(io::Error::from_raw_os_error(rc));
        }
        Ok(attr)
    }

    /// The entry at `index` of `port`'s GID table, if it is in use.
    pub fn gid(&self, port: u8, index: u32) -> Option<ffi::ibv_gid_entry> {
        let mut entry = ffi::ibv_gid_entry::default();
        // SAFETY: `entry` is a valid, writable ibv_gid_entry of the size
        // we pass.
        let rc = unsafe {
            ffi::_ibv_query_gid_ex(
                self.ctx,
                port as u32,
                index,
                &mut entry,
                0,
                std::mem::size_of::<ffi::ibv_gid_entry>(),
            )
        };
        (rc == 0).then_some(entry)
    }
}

impl Drop for Device {
    fn drop(&mut self) {
        // SAFETY: every object made from this PD and context holds an
        // Arc<Device>, so none is left when the last Arc drops.
        unsafe {
            ffi::ibv_dealloc_pd(self.pd);
            ffi::ibv_close_device(self.ctx);
        }
    }
}

/// A completion channel: a file descriptor that becomes readable when an
/// armed completion queue gets a completion.
pub(crate) struct Channel {
    ch: *mut ffi::ibv_comp_channel,
    _dev: Arc<Device>,
}

// SAFETY: the channel is only read through its fd and ibv_get_cq_event,
// both safe from any thread.
unsafe impl Send for Channel {}
// SAFETY: as for Send.
unsafe impl Sync for Channel {}

impl Channel {
    pub fn new(dev: &Arc<Device>) -> io::Result<Arc<Channel>> {
        // SAFETY: the context is open.
        let ch = unsafe { ffi::ibv_create_comp_channel(dev.ctx) };
        if ch.is_null() {
            return Err(io::Error::last_os_error());
        }
        let channel = Channel {
            ch,
            _dev: dev.clone(),
        };
        // Non-blocking, so draining events never blocks.
        let fd = channel.fd();
        // SAFETY: `fd` is the channel's open descriptor for the channel's
        // lifetime; we only change its flags.
        let borrowed = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
        let flags = rustix::fs::fcntl_getfl(borrowed)?;
        rustix::fs::fcntl_setfl(borrowed, flags | rustix::fs::OFlags::NONBLOCK)?;
        Ok(Arc::new(channel))
    }

    pub fn fd(&self) -> c_int {
        // SAFETY: `ch` is valid for our lifetime.
        unsafe { (*self.ch).fd }
    }

    /// Takes every pending event off the channel and acknowledges it.
    pub fn drain(&self) {
        loop {
            let mut cq = ptr::null_mut();
            let mut ctx = ptr::null_mut();
            // SAFETY: the channel is valid and non-blocking; on success
            // `cq` is a live CQ of this channel (destroying a CQ discards
            // its pending events).
            let rc = unsafe { ffi::ibv_get_cq_event(self.ch, &mut cq, &mut ctx) };
            if rc != 0 {
                return;
            }
            // SAFETY: acknowledging the one event just taken for `cq`.
            unsafe { ffi::ibv_ack_cq_events(cq, 1) };
        }
    }
}

impl Drop for Channel {
    fn drop(&mut self) {
        // SAFETY: every CQ on this channel holds an Arc<Channel>, so all
        // were destroyed before this runs.
        unsafe { ffi::ibv_destroy_comp_channel(self.ch) };
    }
}

/// A completion queue attached to a channel.
pub(crate) struct Cq {
    cq: *mut ffi::ibv_cq,
    _channel: Arc<Channel>,
    dev: Arc<Device>,
}

// SAFETY: polling and arming a CQ is thread-safe in libibverbs; the owner
// serialises them anyway (the CQ lives inside one connection's lock).
unsafe impl Send for Cq {}
// SAFETY: as for Send.
unsafe impl Sync for Cq {}

impl Cq {
    pub fn new(dev: &Arc<Device>, channel: &Arc<Channel>, entries: u32) -> io::Result<Cq> {
        // SAFETY: the context and channel are valid; the CQ keeps both
        // alive through its Arcs.
        let cq = unsafe {
            ffi::ibv_create_cq(dev.ctx, entries as c_int, ptr::null_mut(), channel.ch, 0)
        };
        if cq.is_null() {
            return Err(io::Error::last_os_error());
        }
        Live::up(&dev.live.cqs);
        Ok(Cq {
            cq,
            _channel: channel.clone(),
            dev: dev.clone(),
        })
    }

    /// Polls up to `out.len()` completions; returns how many were written.
    pub fn poll(&self, out: &mut [ffi::ibv_wc]) -> io::Result<usize> {
        // SAFETY: the CQ is valid; poll_cq writes at most `out.len()`
        // entries into `out`.
        let n = unsafe {
            let ops = &(*(*self.cq).context).ops;
            ops.poll_cq.expect("poll_cq")(self.cq, out.len() as c_int, out.as_mut_ptr() as *mut _)
        };
        if n < 0 {
            return Err(io::Error::other("ibv_poll_cq failed"));
        }
        Ok(n as usize)
    }

    /// Asks for an event on the channel at the next completion.
    pub fn arm(&self) -> io::Result<()> {
        // SAFETY: the CQ is valid.
        let rc = unsafe {
            let ops = &(*(*self.cq).context).ops;
            ops.req_notify_cq.expect("req_notify_cq")(self.cq, 0)
        };
        if rc != 0 {
            return Err(io::Error::from_raw_os_error(rc));
        }
        Ok(())
    }
}

impl Drop for Cq {
    fn drop(&mut self) {
        // Every event taken for this CQ was acknowledged at once
        // (Channel::drain); the kernel discards the ones not yet taken.
        // SAFETY: the QP using this CQ was destroyed first (Conn drops its
        // QP before its CQ), and no event for it is unacknowledged.
        unsafe { ffi::ibv_destroy_cq(self.cq) };
        Live::down(&self.dev.live.cqs);
    }
}

/// Page-aligned memory registered with the device, deregistered and
/// unmapped on drop.
pub(crate) struct Mr {
    // Dropped in this order: deregistered before it is unmapped.
    reg: Registration,
    map: memmap2::MmapMut,
}

/// What the peer may do to a registered buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Remote {
    /// Nothing: only local work requests use it.
    None,
    /// RDMA WRITE into it.
    Write,
    /// RDMA READ from it.
    Read,
}

impl Mr {
    /// Maps `len` bytes (zeroed) and registers them for local writes and
    /// what `remote` allows the peer.
    pub fn new(dev: &Arc<Device>, len: usize, remote: Remote) -> io::Result<Mr> {
        let mut map = memmap2::MmapMut::map_anon(len.max(1))?;
        let mut access = ffi::ibv_access_flags::IBV_ACCESS_LOCAL_WRITE;
        match remote {
            Remote::None => {}
            Remote::Write => access |= ffi::ibv_access_flags::IBV_ACCESS_REMOTE_WRITE,
            Remote::Read => access |= ffi::ibv_access_flags::IBV_ACCESS_REMOTE_READ,
        }
        // The mapping outlives the registration (`reg` drops first).
        let reg = Registration::register(dev, map.as_mut_ptr(), map.len(), access.0 as c_int)?;
        Ok(Mr { reg, map })
    }

    pub fn addr(&self) -> u64 {
        self.map.as_ptr() as u64
    }
    /// The device it is registered with.
    pub fn device(&self) -> &Arc<Device> {
        &self.reg.dev
    }
    pub fn ptr(&self) -> *mut u8 {
        self.map.as_ptr() as *mut u8
    }
    pub fn len(&self) -> usize {
        self.map.len()
    }
    pub fn lkey(&self) -> u32 {
        self.reg.lkey()
    }
    pub fn rkey(&self) -> u32 {
        self.reg.rkey()
    }
}

/// A registration of memory with the device (an `ibv_mr`), deregistered
/// on drop: the half of [`Mr`] that registers its mapping, and on its own
/// the registration of memory laggard does not own (a table row, for the
/// device to read in local work requests).
pub(crate) struct Registration {
    mr: *mut ffi::ibv_mr,
    dev: Arc<Device>,
}

// SAFETY: the registration is only read (its keys); the memory is reached
// by the device in work requests whose callers keep it as they must, and
// by the CPU only through its owner's synchronisation.
unsafe impl Send for Registration {}
// SAFETY: as for Send.
unsafe impl Sync for Registration {}

impl Registration {
    /// Registers `len` bytes at `addr` with `access` (`ibv_access_flags`;
    /// 0 for the device's local reads, in sends). The pages stay pinned
    /// until the drop, whatever becomes of the memory meanwhile: freed
    /// memory is not reused by the device (only work requests whose caller
    /// keeps the bytes read or write them).
    pub fn register(
        dev: &Arc<Device>,
        addr: *mut u8,
        len: usize,
        access: c_int,
    ) -> io::Result<Registration> {
        // SAFETY: registration reads nothing; it pins the pages of the
        // range, which the caller's pointer and length say are mapped.
        let mr = unsafe { ffi::ibv_reg_mr(dev.pd, addr as *mut c_void, len, access) };
        if mr.is_null() {
            return Err(io::Error::last_os_error());
        }
        Live::up(&dev.live.mrs);
        Ok(Registration {
            mr,
            dev: dev.clone(),
        })
    }

    pub fn lkey(&self) -> u32 {
        // SAFETY: the registration is valid for our lifetime.
        unsafe { (*self.mr).lkey }
    }

    pub fn rkey(&self) -> u32 {
        // SAFETY: as in lkey.
        unsafe { (*self.mr).rkey }
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        // SAFETY: every work request that used this registration completed
        // or was flushed: a connection's QPs are destroyed (or moved to the
        // error state and drained) before its memory drops, and a write of
        // held rows keeps the rows' registrations (an Arc) until its
        // completion, or until its queue pair is destroyed.
        unsafe { ffi::ibv_dereg_mr(self.mr) };
        Live::down(&self.dev.live.mrs);
    }
}

/// What a queue pair needs to know of its remote end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct QpAddress {
    pub qpn: u32,
    pub psn: u32,
    pub lid: u16,
    pub gid: [u8; 16],
}

/// How a queue pair reaches its peer.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Path {
    pub port: u8,
    pub gid_index: Option<u8>,
    pub mtu: ffi::ibv_mtu,
}

/// Bytes a WRITE may carry inline (small frames).
const INLINE_MAX: u32 = 64;

/// Scatter-gather entries per send that laggard asks for at most: a
/// frame's head in the mirror ring, then its tail (a stash block, or the
/// table rows of a pull response) where it lies.
pub(crate) const MAX_SEND_SGE: u32 = 32;

/// Scatter-gather entries per send that laggard needs: a frame's head and
/// a stashed tail. A device with fewer is not supported.
const MIN_SEND_SGE: u32 = 2;

/// Bytes of registered memory a write gathers after its first part: a
/// stashed tail, or a held row ([`Qp::write_imm`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Gather {
    /// Address of the first byte.
    pub addr: u64,
    /// Bytes.
    pub len: u32,
    /// Local key of the memory region holding them.
    pub lkey: u32,
}

/// A reliable-connected queue pair.
pub(crate) struct Qp {
    qp: *mut ffi::ibv_qp,
    dev: Arc<Device>,
}

// SAFETY: posting to a QP is thread-safe in libibverbs; the owner
// serialises posts anyway (under its connection's lock).
unsafe impl Send for Qp {}
// SAFETY: as for Send.
unsafe impl Sync for Qp {}

fn modify(
    qp: *mut ffi::ibv_qp,
    attr: &mut ffi::ibv_qp_attr,
    mask: ffi::ibv_qp_attr_mask,
) -> io::Result<()> {
    // SAFETY: `qp` is valid and `attr` outlives the call.
    let rc = unsafe { ffi::ibv_modify_qp(qp, attr, mask.0 as c_int) };
    if rc != 0 {
        return Err(io::Error::from_raw_os_error(rc));
    }
    Ok(())
}

impl Qp {
    /// Creates an RC queue pair on `cq` (sends and receives) and moves it
    /// to INIT with remote writes and reads allowed (each buffer's
    /// registration says which it allows).
    pub fn new(
        dev: &Arc<Device>,
        cq: &Cq,
        send_depth: u32,
        recv_depth: u32,
        port: u8,
    ) -> io::Result<Qp> {
        let mut init = ffi::ibv_qp_init_attr {
            qp_context: ptr::null_mut(),
            send_cq: cq.cq,
            recv_cq: cq.cq,
            srq: ptr::null_mut(),
            cap: ffi::ibv_qp_cap {
                max_send_wr: send_depth,
                max_recv_wr: recv_depth,
                max_send_sge: dev.send_sge,
                max_recv_sge: 1,
                max_inline_data: INLINE_MAX,
            },
            qp_type: ffi::ibv_qp_type::IBV_QPT_RC,
            sq_sig_all: 0,
        };
        // SAFETY: the PD and CQ are valid and outlive the QP (Arc<Device>;
        // the connection destroys its QP before its CQ).
        let qp = unsafe { ffi::ibv_create_qp(dev.pd, &mut init) };
        if qp.is_null() {
            return Err(io::Error::last_os_error());
        }
        Live::up(&dev.live.qps);
        let this = Qp {
            qp,
            dev: dev.clone(),
        };
        let mut attr = ffi::ibv_qp_attr {
            qp_state: ffi::ibv_qp_state::IBV_QPS_INIT,
            pkey_index: 0,
            port_num: port,
            qp_access_flags: (ffi::ibv_access_flags::IBV_ACCESS_LOCAL_WRITE
                | ffi::ibv_access_flags::IBV_ACCESS_REMOTE_WRITE
                | ffi::ibv_access_flags::IBV_ACCESS_REMOTE_READ)
                .0,
            ..Default::default()
        };
        use ffi::ibv_qp_attr_mask as m;
        modify(
            this.qp,
            &mut attr,
            m::IBV_QP_STATE | m::IBV_QP_PKEY_INDEX | m::IBV_QP_PORT | m::IBV_QP_ACCESS_FLAGS,
        )?;
        Ok(this)
    }

    pub fn qpn(&self) -> u32 {
        // SAFETY: valid for our lifetime.
        unsafe { (*self.qp).qp_num }
    }

    /// Moves the QP to ready-to-send, connected to `remote`.
    pub fn connect(&self, path: &Path, local_psn: u32, remote: &QpAddress) -> io::Result<()> {
        use ffi::ibv_qp_attr_mask as m;
        let mut attr = ffi::ibv_qp_attr {
            qp_state: ffi::ibv_qp_state::IBV_QPS_RTR,
            path_mtu: path.mtu,
            dest_qp_num: remote.qpn,
            rq_psn: remote.psn,
            max_dest_rd_atomic: 1,
            min_rnr_timer: 12,
            ..Default::default()
        };
        attr.ah_attr.dlid = remote.lid;
        attr.ah_attr.port_num = path.port;
        if let Some(index) = path.gid_index {
            attr.ah_attr.is_global = 1;
            attr.ah_attr.grh.dgid.raw = remote.gid;
            attr.ah_attr.grh.sgid_index = index;
            attr.ah_attr.grh.hop_limit = 64;
        }
        modify(
            self.qp,
            &mut attr,
            m::IBV_QP_STATE
                | m::IBV_QP_AV
                | m::IBV_QP_PATH_MTU
                | m::IBV_QP_DEST_QPN
                | m::IBV_QP_RQ_PSN
                | m::IBV_QP_MAX_DEST_RD_ATOMIC
                | m::IBV_QP_MIN_RNR_TIMER,
        )?;
        let mut attr = ffi::ibv_qp_attr {
            qp_state: ffi::ibv_qp_state::IBV_QPS_RTS,
            timeout: 14,
            retry_cnt: 7,
            // 7 = retry forever on "receiver not ready"; credit keeps the
            // receiver's queue from running dry, so this never loops.
            rnr_retry: 7,
            sq_psn: local_psn,
            max_rd_atomic: 1,
            ..Default::default()
        };
        modify(
            self.qp,
            &mut attr,
            m::IBV_QP_STATE
                | m::IBV_QP_TIMEOUT
                | m::IBV_QP_RETRY_CNT
                | m::IBV_QP_RNR_RETRY
                | m::IBV_QP_SQ_PSN
                | m::IBV_QP_MAX_QP_RD_ATOMIC,
        )
    }

    /// Moves the QP to the error state: outstanding work requests complete
    /// with a flush error, and the peer's next operation fails.
    pub fn fail(&self) {
        let mut attr = ffi::ibv_qp_attr {
            qp_state: ffi::ibv_qp_state::IBV_QPS_ERR,
            ..Default::default()
        };
        let _ = modify(self.qp, &mut attr, ffi::ibv_qp_attr_mask::IBV_QP_STATE);
    }

    /// Posts an RDMA WRITE WITH IMMEDIATE of `len` bytes at `local` (in
    /// `mr`), followed by the bytes of each of `tail` (at most
    /// [`Device::send_sge`] - 1 of them), to the remote
    /// address under its key: one write, gathered from both. Up to
    /// [`INLINE_MAX`] bytes in all go inline (copied into the work request).
    /// Only a `signaled` one completes with a work completion when it
    /// succeeds; a failed one always does. The caller signals at least one
    /// in every send-queue depth's worth of work requests, so the queue's
    /// slots are reclaimed.
    ///
    /// # Safety
    /// `local..local+len` lies in `mr`, each tail's bytes lie in the memory
    /// region its key names, and all stay untouched until the device has
    /// read them: until the completion of this or a later work request is
    /// polled, or the peer has seen the write.
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn write_imm(
        &self,
        wr_id: u64,
        mr: &Mr,
        local: u64,
        len: u32,
        tail: &[Gather],
        remote: (u64, u32),
        imm: u32,
        signaled: bool,
    ) -> io::Result<()> {
        let mut sges = [ffi::ibv_sge {
            addr: local,
            length: len,
            lkey: mr.lkey(),
        }; MAX_SEND_SGE as usize];
        let mut n = usize::from(len > 0);
        for t in tail.iter().filter(|t| t.len > 0) {
            if n == self.dev.send_sge as usize {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!(
                        "a write gathers more parts than the device takes ({})",
                        self.dev.send_sge
                    ),
                ));
            }
            sges[n] = ffi::ibv_sge {
                addr: t.addr,
                length: t.len,
                lkey: t.lkey,
            };
            n += 1;
        }
        let total: u32 = sges[..n].iter().map(|s| s.length).sum();
        let mut flags = 0;
        if total <= INLINE_MAX {
            flags |= ffi::ibv_send_flags::IBV_SEND_INLINE.0;
        }
        if signaled {
            flags |= ffi::ibv_send_flags::IBV_SEND_SIGNALED.0;
        }
        let opcode = ffi::ibv_wr_opcode::IBV_WR_RDMA_WRITE_WITH_IMM;
        // SAFETY: the caller keeps the bytes registered and untouched.
        unsafe { self.post_send(wr_id, opcode, &mut sges[..n], flags, remote, imm) }
    }

    /// Posts a signalled RDMA READ of `len` bytes at the remote address
    /// into `local` (in `mr`).
    ///
    /// # Safety
    /// `local..local+len` lies in `mr`, and nothing else reads or writes
    /// those bytes until the work request's completion is polled.
    pub unsafe fn read(
        &self,
        wr_id: u64,
        mr: &Mr,
        local: u64,
        len: u32,
        remote: (u64, u32),
    ) -> io::Result<()> {
        let mut sge = [ffi::ibv_sge {
            addr: local,
            length: len,
            lkey: mr.lkey(),
        }];
        let opcode = ffi::ibv_wr_opcode::IBV_WR_RDMA_READ;
        let flags = ffi::ibv_send_flags::IBV_SEND_SIGNALED.0;
        // SAFETY: the caller leaves the bytes to the device until the
        // completion.
        unsafe { self.post_send(wr_id, opcode, &mut sge, flags, remote, 0) }
    }

    /// Posts one one-sided work request (`opcode`, with `flags`) gathering
    /// `sges` (at most the device's [`Device::send_sge`], none for an empty write) against
    /// the remote address.
    ///
    /// # Safety
    /// The bytes `sges` name are accessible to the device until it is done
    /// with them (at once for inline sends, else until the completion).
    unsafe fn post_send(
        &self,
        wr_id: u64,
        opcode: ffi::ibv_wr_opcode::Type,
        sges: &mut [ffi::ibv_sge],
        flags: u32,
        remote: (u64, u32),
        imm: u32,
    ) -> io::Result<()> {
        debug_assert!(
            sges.len() <= self.dev.send_sge as usize && sges.iter().all(|s| s.length > 0)
        );
        let mut wr = ffi::ibv_send_wr {
            wr_id,
            next: ptr::null_mut(),
            sg_list: sges.as_mut_ptr(),
            num_sge: sges.len() as c_int,
            opcode,
            send_flags: flags,
            ..Default::default()
        };
        wr.__bindgen_anon_1.imm_data = imm.to_be();
        wr.wr.rdma = ffi::ibv_send_wr__bindgen_ty_2__bindgen_ty_1 {
            remote_addr: remote.0,
            rkey: remote.1,
        };
        let mut bad = ptr::null_mut();
        // SAFETY: the QP is valid; `wr` and `sges` outlive the call (the
        // provider copies them); the caller keeps the bytes accessible.
        let rc = unsafe {
            let ops = &mut (*(*self.qp).context).ops;
            ops.post_send.expect("post_send")(self.qp, &mut wr, &mut bad)
        };
        if rc != 0 {
            return Err(io::Error::from_raw_os_error(rc));
        }
        Ok(())
    }

    /// Posts a receive with no buffer: it only takes an RDMA WRITE WITH
    /// IMMEDIATE's completion.
    pub fn post_recv(&self, wr_id: u64) -> io::Result<()> {
        let mut wr = ffi::ibv_recv_wr {
            wr_id,
            next: ptr::null_mut(),
            sg_list: ptr::null_mut(),
            num_sge: 0,
        };
        let mut bad = ptr::null_mut();
        // SAFETY: the QP is valid; `wr` outlives the call.
        let rc = unsafe {
            let ops = &mut (*(*self.qp).context).ops;
            ops.post_recv.expect("post_recv")(self.qp, &mut wr, &mut bad)
        };
        if rc != 0 {
            return Err(io::Error::from_raw_os_error(rc));
        }
        Ok(())
    }
}

impl Drop for Qp {
    fn drop(&mut self) {
        // SAFETY: the QP is valid; its CQ and the MRs it used outlive this
        // call (the connection drops them after the QP).
        unsafe { ffi::ibv_destroy_qp(self.qp) };
        Live::down(&self.dev.live.qps);
    }
}
