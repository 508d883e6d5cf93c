//! Reading an endpoint's connections without a thread each.
//!
//! Every socket is nonblocking. Whichever thread has to wait (in `recv`,
//! for credit, for a flush, or for room to write) takes the endpoint's
//! reading lock and polls every connection, reading whatever arrived
//! straight into frame buffers: a frame is handed to nobody, so a waiting
//! thread is woken by the kernel itself, as a thread blocked in `read` on
//! a plain socket is. The keeper also reads on its tick, so heartbeats are
//! seen while the endpoint's user is busy elsewhere.
//!
//! A thread that waits for room to write also reads, so two endpoints
//! writing to each other never both wait for the other to read.

use std::io::{self, BufReader, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::net::UnixStream;
use std::sync::{Arc, TryLockError};
use std::time::{Duration, Instant};

use rustix::event::{PollFd, PollFlags, Timespec, poll};

use crate::config::TcpConfig;
use laggard::sync::MutexGuard;

use crate::endpoint::{Conn, Incoming, Shared, TcpFrame, lock};
use crate::flow::wait_reading;
use crate::wire::{HEADER_LEN, Header, Kind};

/// A connection's socket as its reader reads it: the same descriptor its
/// writer writes to (`Conn::socket`), not a duplicate, so a connection
/// holds one file descriptor.
pub(crate) struct SharedStream(pub(crate) Arc<TcpStream>);

impl Read for SharedStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        (&*self.0).read(buf)
    }

    fn read_vectored(&mut self, bufs: &mut [io::IoSliceMut<'_>]) -> io::Result<usize> {
        (&*self.0).read_vectored(bufs)
    }
}

/// The reading side of one connection: what is left of a frame that
/// arrived in pieces.
pub(crate) struct Reading {
    pub(crate) conn: Arc<Conn>,
    /// The connection's entry in `Shared::sockets`.
    pub(crate) token: u64,
    reader: BufReader<SharedStream>,
    header: [u8; HEADER_LEN],
    /// Header bytes read so far (while no body is being read).
    header_got: usize,
    /// The data frame being read: its buffer, length and bytes read.
    body: Option<(Vec<u8>, usize, usize)>,
    last_read: Instant,
}

impl Reading {
    /// Takes over a connection after its handshake; `reader` may hold
    /// bytes that arrived with the handshake. Makes the socket
    /// nonblocking.
    pub(crate) fn new(
        conn: Arc<Conn>,
        token: u64,
        reader: BufReader<SharedStream>,
    ) -> io::Result<Self> {
        reader.get_ref().0.set_nonblocking(true)?;
        Ok(Reading {
            conn,
            token,
            reader,
            header: [0; HEADER_LEN],
            header_got: 0,
            body: None,
            last_read: Instant::now(),
        })
    }

    /// Reads until the socket has nothing more, queueing each frame that
    /// completes. An error ends the connection, for the reason returned.
    fn read_available(&mut self, shared: &Arc<Shared>) -> Result<(), String> {
        let cfg = &shared.cfg;
        loop {
            // Never empty: a body is read while `got < len` (grown first if
            // the bytes so far fill it), a header while
            // `header_got < HEADER_LEN`; so 0 is end of stream.
            let (target, clean) = match &mut self.body {
                Some((data, len, got)) => {
                    if *got == data.len() {
                        grow_body(data, *len);
                    }
                    let end = (*len).min(data.len());
                    (&mut data[*got..end], false)
                }
                None => (&mut self.header[self.header_got..], self.header_got == 0),
            };
            let n = match self.reader.read(target) {
                Ok(0) => return Err(describe(&io::ErrorKind::UnexpectedEof.into(), clean, cfg)),
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(describe(&e, false, cfg)),
            };
            self.last_read = Instant::now();
            match &mut self.body {
                Some((_, len, got)) => {
                    *got += n;
                    if *got == *len {
                        let (data, len, _) = self.body.take().expect("a body is being read");
                        self.deliver(shared, data, len)?;
                    }
                }
                None => {
                    self.header_got += n;
                    if self.header_got == HEADER_LEN {
                        self.header_got = 0;
                        self.on_header(shared)?;
                    }
                }
            }
        }
    }

    /// A whole header arrived: credit, asks and heartbeats are handled at
    /// once; a data frame's body is read next.
    fn on_header(&mut self, shared: &Arc<Shared>) -> Result<(), String> {
        let header = Header::decode(&self.header, shared.cfg.max_frame_len)
            .map_err(|e| format!("the peer broke the framing: {e}"))?;
        let conn = &self.conn;
        conn.flow.credited(header.credit)?;
        match header.kind {
            Kind::Data => {
                let len = header.len as usize;
                conn.flow.arrived(len)?;
                let data = shared.pool.take_for_arrival(len, FIRST_BODY);
                if len == 0 {
                    self.deliver(shared, data, 0)
                } else {
                    self.body = Some((data, len, 0));
                    Ok(())
                }
            }
            Kind::Ask => {
                if conn.flow.asked() && shared.keeper.push(conn.clone()).is_err() {
                    return Err("the endpoint was dropped".into());
                }
                Ok(())
            }
            Kind::Credit | Kind::Heartbeat => Ok(()),
            other => Err(format!(
                "the peer sent a {other:?} frame after the handshake"
            )),
        }
    }

    fn deliver(&mut self, shared: &Arc<Shared>, data: Vec<u8>, len: usize) -> Result<(), String> {
        if self.conn.flow.closed_here() {
            shared.pool.put(data);
            return Ok(());
        }
        let frame = TcpFrame::new(data, len, self.conn.clone(), shared);
        if shared
            .inbox
            .push(Incoming::Frame(self.conn.id, frame))
            .is_err()
        {
            return Err("the endpoint was dropped".into());
        }
        Ok(())
    }

    /// Ends the connection for `reason`: waiters fail, the socket is shut
    /// down, and the endpoint's user hears of it unless it closed the
    /// connection itself.
    fn end(self, shared: &Arc<Shared>, reason: &str) {
        let conn = &self.conn;
        let here = conn.flow.closed_here();
        conn.flow.close(reason, false);
        let _ = conn.socket.shutdown(Shutdown::Both);
        lock(&shared.sockets).remove(&self.token);
        if let Some((data, ..)) = self.body {
            shared.pool.put(data);
        }
        if !here {
            let _ = shared.inbox.push(Incoming::Disconnected(conn.id));
        }
    }
}

/// The most a frame's body gets before its bytes arrive (unless a pooled
/// buffer already holds it); [`grow_body`] doubles it as they do.
const FIRST_BODY: usize = 256 << 10;

/// Makes room for more of a `len`-byte body whose buffer the bytes so far
/// fill: doubles it, up to `len`. A peer must send about half of what it
/// makes the endpoint allocate.
fn grow_body(data: &mut Vec<u8>, len: usize) {
    let next = data.len().saturating_mul(2).max(FIRST_BODY).min(len);
    if next > data.len() {
        // Exactly: the buffer is pooled by its capacity, which must not
        // end up twice the frame's length.
        data.reserve_exact(next - data.len());
        data.resize(next, 0);
    }
}

/// Why reading failed, for the user.
fn describe(e: &io::Error, clean_boundary: bool, cfg: &TcpConfig) -> String {
    match e.kind() {
        io::ErrorKind::UnexpectedEof if clean_boundary => "the peer closed the connection".into(),
        io::ErrorKind::UnexpectedEof => "the connection ended in the middle of a frame".into(),
        io::ErrorKind::TimedOut => format!(
            "nothing (not even a heartbeat) arrived for {:?}: the peer or the network is down",
            cfg.dead_after
        ),
        _ => format!("reading from the socket failed: {e}"),
    }
}

/// Wakes a thread polling the endpoint's connections (when a connection
/// joins, or the endpoint drops).
pub(crate) struct Waker {
    rx: UnixStream,
    tx: UnixStream,
}

impl Waker {
    pub(crate) fn new() -> io::Result<Self> {
        let (rx, tx) = UnixStream::pair()?;
        rx.set_nonblocking(true)?;
        tx.set_nonblocking(true)?;
        Ok(Waker { rx, tx })
    }

    pub(crate) fn wake(&self) {
        // A full pipe wakes the poller already.
        let _ = (&self.tx).write(&[1]);
    }

    fn clear(&self) {
        let mut sink = [0u8; 64];
        while matches!((&self.rx).read(&mut sink), Ok(n) if n > 0) {}
    }
}

/// The connections an endpoint reads; whoever holds this lock reads.
pub(crate) type Readers = Vec<Reading>;

/// Takes the reading lock for a thread that must not wait for it (the
/// keeper, a writer that found its socket full).
pub(crate) fn try_readers(shared: &Arc<Shared>) -> Option<MutexGuard<'_, Readers>> {
    match shared.readers.try_lock() {
        Ok(guard) => Some(guard),
        Err(TryLockError::Poisoned(p)) => Some(p.into_inner()),
        Err(TryLockError::WouldBlock) => None,
    }
}

/// Polls every connection (and `writable`, for room to write) for up to
/// `timeout`, then reads every connection that has something. Adopts
/// connections that joined meanwhile, and ends those that broke or whose
/// peer was silent for `dead_after`.
pub(crate) fn pump(
    shared: &Arc<Shared>,
    readers: &mut Readers,
    timeout: Duration,
    writable: Option<BorrowedFd<'_>>,
) {
    let joined = {
        let mut joining = lock(&shared.joining);
        let joined = joining.len();
        readers.append(&mut joining);
        joined
    };
    // Joined connections may hold bytes read with their handshake, which
    // poll does not see: read them at once.
    let first_new = readers.len() - joined;
    let timeout = if joined > 0 { Duration::ZERO } else { timeout };
    let ready = {
        let mut fds = Vec::with_capacity(readers.len() + 2);
        fds.push(PollFd::new(&shared.waker.rx, PollFlags::IN));
        for r in readers.iter() {
            fds.push(PollFd::new(&*r.reader.get_ref().0, PollFlags::IN));
        }
        if let Some(fd) = writable {
            fds.push(PollFd::from_borrowed_fd(fd, PollFlags::OUT));
        }
        let spec = Timespec::try_from(timeout).unwrap_or(Timespec {
            tv_sec: i64::MAX,
            tv_nsec: 0,
        });
        // An interrupted poll is retried by the caller's loop.
        let _ = poll(&mut fds, Some(&spec));
        let ready: Vec<bool> = fds[1..=readers.len()]
            .iter()
            .map(|fd| !fd.revents().is_empty())
            .collect();
        if !fds[0].revents().is_empty() {
            shared.waker.clear();
        }
        ready
    };
    let now = Instant::now();
    let dead_after = shared.cfg.dead_after;
    let mut ended = Vec::new();
    for (i, r) in readers.iter_mut().enumerate() {
        let mut outcome = Ok(());
        if ready[i] || i >= first_new {
            outcome = r.read_available(shared);
        }
        if outcome.is_ok() && now.saturating_duration_since(r.last_read) >= dead_after {
            outcome = Err(describe(
                &io::ErrorKind::TimedOut.into(),
                false,
                &shared.cfg,
            ));
        }
        if let Err(reason) = outcome {
            ended.push((i, reason));
        }
    }
    // From the last, so the indices of the others stay put.
    for (i, reason) in ended.into_iter().rev() {
        readers.swap_remove(i).end(shared, &reason);
    }
}

/// Waits until `ready` gives a value or `deadline` passes, reading every
/// connection meanwhile (see [`wait_reading`]). `ready` runs with the
/// reading lock held, so nothing read by another thread is missed. Spins
/// (polling without sleeping) for up to `TcpConfig::spin` first.
pub(crate) fn wait_for<R>(
    shared: &Arc<Shared>,
    deadline: Instant,
    ready: impl FnMut() -> Option<R>,
) -> Option<R> {
    // Each sleep is long enough to cost nothing, and short enough that a
    // silent peer is noticed within a fraction of `dead_after`.
    let longest = shared.cfg.heartbeat / 2;
    wait_reading(
        &shared.readers,
        deadline,
        shared.cfg.spin,
        longest,
        ready,
        |readers, timeout| pump(shared, readers, timeout, None),
    )
}

/// Waits until `socket` has room to write, reading every connection
/// meanwhile if no other thread is reading them. Gives up after `timeout`.
pub(crate) fn wait_writable(shared: &Arc<Shared>, socket: &TcpStream, timeout: Duration) {
    let fd = socket.as_fd();
    if let Some(mut readers) = try_readers(shared) {
        pump(
            shared,
            &mut readers,
            timeout.min(shared.cfg.heartbeat / 2),
            Some(fd),
        );
        return;
    }
    // Another thread is reading; wait for room alone, briefly, and look
    // again.
    let mut fds = [PollFd::from_borrowed_fd(fd, PollFlags::OUT)];
    let spec = Timespec::try_from(timeout.min(Duration::from_millis(1))).unwrap_or(Timespec {
        tv_sec: 0,
        tv_nsec: 1_000_000,
    });
    let _ = poll(&mut fds, Some(&spec));
}
