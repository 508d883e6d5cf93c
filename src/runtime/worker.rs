//! A worker: the client state machine driven over an endpoint, with typed
//! push, pull and clock calls.

use std::collections::VecDeque;
use std::marker::PhantomData;
use std::time::{Duration, Instant};

use super::server::{send_message, send_stashed};
use super::spec::ClusterSpec;
use crate::clock::WorkerId;
use crate::element::{Element, le_view, read_le_slice};
use crate::error::{Error, Result};
use crate::idhash::{IdMap, IdSet};
use crate::proto::{ClientCore, ClientStats, Hello, MAX_UNACKED, Message, Role, decode};
use crate::transport::{Endpoint, Event, PeerId, Stash};

/// How long a worker waits beyond a pull's deadline for the server's own
/// timeout report (which names the workers behind) before giving up on
/// the server itself.
const SERVER_GRACE: Duration = Duration::from_millis(500);
/// How long [`Worker::connect`] waits before trying again when a shard
/// says another connection still speaks for the worker.
const CLAIMED_RETRY: Duration = Duration::from_millis(20);
/// How much longer than its transport takes to report a dead process's
/// connection gone ([`Endpoint::reports_dead_peers_within`])
/// [`Worker::connect`] lets another connection hold the worker's id
/// before it concludes that a live process holds it: time for the server
/// to take the report in and answer.
const CLAIMED_GRACE: Duration = Duration::from_secs(2);

/// How long `leave` tries to reach a shard again to repeat a leave whose
/// delivery it could not confirm.
const LEAVE_RECONNECT: Duration = Duration::from_secs(2);

/// A typed handle to one of the cluster's tables, from [`Worker::table`].
#[derive(Debug)]
pub struct TableHandle<T> {
    index: u32,
    width: usize,
    /// The fingerprint of the spec it was opened with: a handle of another
    /// cluster's worker names another table at `index`, or none.
    schema: u64,
    _elem: PhantomData<fn() -> T>,
}

impl<T> Clone for TableHandle<T> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<T> Copy for TableHandle<T> {}

impl<T> TableHandle<T> {
    /// Elements per row.
    pub fn width(&self) -> usize {
        self.width
    }
}

/// A pull in flight, from [`Worker::start_pull`]; finish it with
/// [`Worker::finish_pull`].
#[derive(Debug)]
#[must_use = "a pull ticket does nothing until finished"]
pub struct PullTicket<T> {
    table: TableHandle<T>,
    keys: Vec<u64>,
    reqs: Vec<u64>,
    started: Instant,
    /// The session of the worker that started it: request ids are the
    /// worker's own.
    issuer: u64,
}

/// Pushes in flight, from [`Worker::start_clock`] or [`Worker::flush`];
/// wait for the servers to apply them with [`Worker::wait_applied`].
#[derive(Debug, Clone)]
#[must_use = "a push ticket does nothing unless waited on"]
pub struct PushTicket {
    seqs: ShardSeqs,
    /// The session of the worker that sent the pushes: sequence numbers
    /// are the worker's own.
    issuer: u64,
}

/// The last push sent to each shard, as a ticket keeps it: inline for up
/// to [`INLINE_SHARDS`] shards, so that a flush or clock on a small
/// cluster allocates nothing for its ticket.
#[derive(Debug, Clone)]
enum ShardSeqs {
    Inline {
        len: usize,
        seqs: [u64; INLINE_SHARDS],
    },
    Heap(Vec<u64>),
}

/// Shards whose sequence numbers a [`PushTicket`] holds without
/// allocating.
const INLINE_SHARDS: usize = 4;

impl ShardSeqs {
    /// `seqs`, one per shard in shard order.
    fn collect(seqs: impl ExactSizeIterator<Item = u64>) -> Self {
        if seqs.len() > INLINE_SHARDS {
            return ShardSeqs::Heap(seqs.collect());
        }
        let mut inline = [0; INLINE_SHARDS];
        let mut len = 0;
        for (slot, seq) in inline.iter_mut().zip(seqs) {
            *slot = seq;
            len += 1;
        }
        ShardSeqs::Inline { len, seqs: inline }
    }

    fn as_slice(&self) -> &[u64] {
        match self {
            ShardSeqs::Inline { len, seqs } => &seqs[..*len],
            ShardSeqs::Heap(seqs) => seqs,
        }
    }
}

/// One worker of a cluster.
///
/// - [`push`](Self::push) adds deltas to a local buffer, summed per key;
///   nothing is sent until [`clock`](Self::clock) (or
///   [`flush`](Self::flush)), which sends one message per server shard.
/// - [`pull`](Self::pull) answers from the worker's cache while the cached
///   rows are fresh enough for its clock and the table's consistency model,
///   and otherwise asks the servers, which hold the request until the
///   slowest worker allows it.
/// - Every blocking call has a deadline (the cluster's default timeout, or
///   one passed to the `_by` variants); a timeout names the workers behind.
///
/// A worker reads its own pushes at once where the table's update rule is
/// linear ([`Update::replay_scale`](crate::Update::replay_scale): `Sum`,
/// and `Sgd` at a constant rate): it replays them onto its cached rows.
/// Under other rules its deltas become visible to its pulls once the
/// servers applied them (after `clock` or `flush`), as everyone else's do.
///
/// If a connection to a server drops, the worker reconnects (for up to the
/// spec's `dead_after`, after which the server would have declared it
/// dead), and resends the pushes the server had not acknowledged and the
/// pulls it had not answered. Each call tries to reconnect only until its
/// own deadline, so a call never outlasts its timeout waiting for a server
/// that is gone; the next call tries again. The server applies each push
/// exactly once by its sequence number, so nothing is lost or applied
/// twice.
///
/// If a worker's process dies, a new process may take its place: a
/// [`connect`](Self::connect) with the same id, once the servers have seen
/// the old connection close (before or after they declared the worker
/// dead), goes on from that worker's clock ([`current_clock`](Self::current_clock))
/// and sequence numbers. Pushes the old process sent that were not yet
/// acknowledged are lost with it (a caller that waited for them with
/// [`wait_applied`](Self::wait_applied) knows they were not); acknowledged
/// ones stay applied. A worker declared dead comes back at the slowest
/// active worker's clock, so it holds back no one who went on without it.
/// The old process, should it come back, is refused.
pub struct Worker<E: Endpoint> {
    ep: E,
    core: ClientCore,
    spec: ClusterSpec,
    peers: Vec<PeerId>,
    shard_of: IdMap<PeerId, usize>,
    /// The pushes a flush has to send, kept to reuse its allocation.
    to_send: Vec<(usize, u64)>,
    /// Connections replaced by a reconnect; their late events are ignored.
    stale: IdSet<PeerId>,
    /// Per shard, when its connection dropped, until a new one is welcomed.
    lost_since: Vec<Option<Instant>>,
    /// Per shard whose connection dropped and could not be made again
    /// within the deadline of the call that noticed: why the last attempt
    /// failed. Later calls try again within their own deadlines, until
    /// `dead_after` has passed since the drop.
    reconnect_pending: Vec<Option<Error>>,
    /// What this worker says when it (re)connects.
    session: u64,
    /// Shards that took this worker's leave; their connections may close.
    left_shards: Vec<bool>,
    /// While `leave` repeats a leave it could not confirm: the shard, and
    /// until when it may reconnect to it (see `LEAVE_RECONNECT`).
    leave_retry: Option<(usize, Instant)>,
    /// Set when a shard's connection failed for good; every later call
    /// reports it.
    broken: Option<Error>,
    left: bool,
    /// A buffer for the next long frame to be moved into
    /// ([`Endpoint::take_frame`]); a long pulled row stays in the cache in
    /// the frame it came in.
    frame_spare: Vec<u8>,
    /// Whether long frames are kept ([`Endpoint::keep_frame`]) or taken
    /// ([`Endpoint::take_frame`]): not where
    /// rows come in pieces ([`Endpoint::row_piece_len`]). Long rows are
    /// then copied piece by piece, and a transport that asks for pieces
    /// may copy every frame out of its own memory, so taking one could
    /// copy it twice.
    takes_frames: bool,
    /// Events `last_words` received while looking for a dropped
    /// connection's last frames, for `pump` to handle first.
    deferred: VecDeque<Event<E::Frame>>,
    /// The spec's fingerprint, which every table handle it takes must bear.
    schema: u64,
}

/// Copies the whole elements of `bytes` (a row's first bytes, as far as
/// they arrived) that `copied` has not yet into `out`. `copied` is the
/// count of restarted rows ([`ClientCore::rows_restarted`]) and the bytes
/// copied at the last call; after a restart everything is copied again.
/// Returns the new `copied`.
fn copy_row_prefix<T: Element>(
    bytes: &[u8],
    restarts: u64,
    copied: (u64, usize),
    out: &mut [T],
) -> (u64, usize) {
    let from = if restarts == copied.0 { copied.1 } else { 0 };
    let to = (bytes.len() / T::SIZE).min(out.len()) * T::SIZE;
    if to > from {
        read_le_slice(&bytes[from..to], &mut out[from / T::SIZE..to / T::SIZE]);
    }
    (restarts, to.max(from))
}

/// Frames this long or longer are kept where they landed in transport
/// memory, where the transport allows ([`Endpoint::keep_frame`]), or else
/// moved out of the transport (no copy where it owns heap buffers); the
/// rows a pull response brings in one are cached where they lie. Shorter
/// frames are decoded in place.
const TAKE_FRAMES_FROM: usize = 64 << 10;

impl<E: Endpoint> std::fmt::Debug for Worker<E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Worker")
            .field("worker", &self.core.worker())
            .field("clock", &self.core.clock())
            .field("endpoint", &self.ep.name())
            .finish_non_exhaustive()
    }
}

impl<E: Endpoint> Worker<E> {
    /// Connects worker `id` through `ep` to every server shard of `spec`
    /// (bound under [`ClusterSpec::server_name`]), waiting for them until
    /// `deadline`.
    ///
    /// If another process spoke for `id` before and is gone, this one takes
    /// its place at its clock (see [`Worker`]). While a shard still counts
    /// another process's connection as that worker's (it may not have seen
    /// a killed process's connection close yet), this waits and tries
    /// again. It fails with [`Error::WorkerClaimed`] once the connection
    /// has held on for longer than the transport takes to report a dead
    /// process's connection gone, plus a grace of two seconds
    /// ([`Endpoint::reports_dead_peers_within`]): another live process
    /// holds the id. For a transport that sets no such bound, it tries
    /// until the deadline. A worker that left cannot come back.
    pub fn connect(ep: E, spec: &ClusterSpec, id: WorkerId, deadline: Instant) -> Result<Self> {
        spec.validate()?;
        if id.0 as usize >= spec.workers {
            return Err(Error::UnknownWorker {
                worker: id,
                workers: spec.workers,
            });
        }
        // Unique per worker object: a reconnect of this object takes over
        // its old connection, while any other claimant of the id is
        // refused.
        let session = {
            use std::hash::{BuildHasher, Hasher};
            let mut h = std::collections::hash_map::RandomState::new().build_hasher();
            h.write_u32(std::process::id());
            h.write_u32(id.0);
            h.finish()
        };
        let mut ep = ep;
        let mut stale = IdSet::default();
        // Past this, a connection that still holds the id is a live
        // process's, not one a dead process left behind.
        let held_at_most = ep.reports_dead_peers_within().map(|d| d + CLAIMED_GRACE);
        let mut claimed_since = None;
        loop {
            let mut worker = Worker::new(ep, spec, id, session, stale);
            match worker.register(deadline) {
                Ok(()) => return Ok(worker),
                // Another connection still speaks for this worker: most
                // likely that of the process this one takes the place of,
                // which the shard has not yet seen close. Try again with
                // new connections, until the deadline or until it has held
                // on for longer than a dead process's could.
                Err(Error::WorkerClaimed {
                    peer: shard,
                    message,
                }) => {
                    let held = claimed_since.get_or_insert_with(Instant::now).elapsed();
                    if held_at_most.is_some_and(|most| held > most) {
                        return Err(Error::WorkerClaimed {
                            peer: shard,
                            message: format!(
                                "{message} (its connection still held the id after {held:.1?}, \
                                 longer than the transport takes to report a dead process's \
                                 connection gone)"
                            ),
                        });
                    }
                    if Instant::now() + CLAIMED_RETRY >= deadline {
                        return Err(Error::WorkerClaimed {
                            peer: shard,
                            message,
                        });
                    }
                    for &peer in &worker.peers {
                        if peer != PeerId(u64::MAX) {
                            worker.ep.disconnect(peer);
                            worker.stale.insert(peer);
                        }
                    }
                    (ep, stale) = (worker.ep, worker.stale);
                    std::thread::sleep(CLAIMED_RETRY);
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// A worker not yet connected.
    fn new(ep: E, spec: &ClusterSpec, id: WorkerId, session: u64, stale: IdSet<PeerId>) -> Self {
        let takes_frames = ep.row_piece_len().is_none();
        let mut core = ClientCore::new(id.0, spec.servers, spec.table_infos());
        core.set_cache_limit(spec.cache_bytes);
        // Frames longer than a server accepts would be refused there.
        let max_frame = ep
            .max_frame_len()
            .min(crate::proto::HEADER_LEN.saturating_add(spec.max_payload));
        core.set_frame_limit(max_frame, !takes_frames);
        Worker {
            core,
            ep,
            spec: spec.clone(),
            peers: vec![PeerId(u64::MAX); spec.servers],
            shard_of: IdMap::default(),
            to_send: Vec::new(),
            stale,
            lost_since: vec![None; spec.servers],
            reconnect_pending: vec![None; spec.servers],
            session,
            left_shards: vec![false; spec.servers],
            leave_retry: None,
            broken: None,
            left: false,
            frame_spare: Vec::new(),
            takes_frames,
            deferred: VecDeque::new(),
            schema: spec.fingerprint(),
        }
    }

    /// Connects to every shard, says hello, and waits for the welcomes;
    /// then joins at the worker's clock.
    fn register(&mut self, deadline: Instant) -> Result<()> {
        let hello = self.hello();
        for shard in 0..self.spec.servers {
            let peer = self.ep.connect(&self.spec.server_name(shard), deadline)?;
            self.peers[shard] = peer;
            self.shard_of.insert(peer, shard);
            let sent = send_message(&mut self.ep, peer, &hello, deadline);
            self.after_send(shard, sent, deadline)?;
        }
        // Registration rides on the reconnect machinery: a connection that
        // drops before its welcome is made again.
        let started = Instant::now();
        while !(0..self.spec.servers).all(|s| self.core.is_welcomed(s)) {
            self.check_ok()?;
            if !self.pump(deadline)? {
                let missing: Vec<_> = (0..self.spec.servers)
                    .filter(|&s| !self.core.is_welcomed(s))
                    .collect();
                return Err(Error::NoResponse {
                    what: format!("a welcome from server shards {missing:?}"),
                    waited: started.elapsed(),
                });
            }
        }
        self.check_ok()?;
        // A process taking the place of one that is gone goes on from the
        // worker's clock, bringing any shard that is behind up to it.
        for (shard, seq) in self.core.join()? {
            self.send_push(shard, seq, deadline)?;
        }
        Ok(())
    }

    fn hello(&self) -> Message<'static> {
        Message::Hello(Hello {
            role: Role::Worker(self.core.worker()),
            schema: self.spec.fingerprint(),
            session: self.session,
        })
    }

    fn shard(&self, peer: PeerId) -> Result<usize> {
        self.shard_of
            .get(&peer)
            .copied()
            .ok_or_else(|| Error::Protocol {
                peer: self.ep.peer_name(peer),
                reason: "a frame from a peer that is not a server of this cluster".into(),
            })
    }

    /// This worker's id.
    pub fn id(&self) -> WorkerId {
        WorkerId(self.core.worker())
    }

    /// The worker's clock: how many times it called [`clock`](Self::clock),
    /// plus, for a process that took the place of one that is gone, the
    /// clock it took over (a training loop resumes from there).
    pub fn current_clock(&self) -> u64 {
        self.core.clock()
    }

    /// Messages, bytes, and how many rows the cache and coalescing saved.
    pub fn stats(&self) -> ClientStats {
        self.core.stats()
    }

    /// The cluster this worker belongs to.
    pub fn spec(&self) -> &ClusterSpec {
        &self.spec
    }

    /// A typed handle to table `name`; fails if there is none or it holds
    /// another element type.
    pub fn table<T: Element>(&self, name: &str) -> Result<TableHandle<T>> {
        let (index, info) = self.spec.typed_table::<T>(name)?;
        Ok(TableHandle {
            index: index as u32,
            width: info.width,
            schema: self.schema,
            _elem: PhantomData,
        })
    }

    /// Ok if a ticket of `issuer`'s is this worker's: another worker's
    /// sequence numbers and request ids would name this one's own.
    fn check_issuer(&self, issuer: u64, kind: &'static str) -> Result<()> {
        if issuer == self.session {
            return Ok(());
        }
        Err(Error::ForeignTicket { kind })
    }

    /// Ok if `table` was opened on a worker of this cluster (of this spec,
    /// that is): another cluster's handle would name another table of
    /// this one, or none.
    fn check_handle<T: Element>(&self, table: &TableHandle<T>) -> Result<()> {
        if table.schema == self.schema {
            return Ok(());
        }
        Err(Error::ForeignTable {
            index: table.index as usize,
            width: table.width,
        })
    }

    fn check_ok(&self) -> Result<()> {
        match &self.broken {
            Some(e) => Err(e.clone()),
            None if self.left => Err(Error::WorkerNotActive {
                worker: self.id(),
                state: "left",
            }),
            None => Ok(()),
        }
    }

    /// Adds `deltas` (`keys.len() × width` elements, row after row) to the
    /// worker's pending pushes. Deltas for one key within one clock are
    /// summed; the servers receive them at the next [`clock`](Self::clock)
    /// or [`flush`](Self::flush).
    ///
    /// Does not wait, except in one case: a transport that keeps long
    /// pending rows in memory the server reads ([`Endpoint::stash`]:
    /// shared memory, for rows of
    /// [`STASH_MIN_ROW`](crate::proto::STASH_MIN_ROW) bytes and more) may
    /// have all of that memory held by pushes sent and not yet
    /// acknowledged. The push then waits, up to the cluster's timeout, for
    /// the oldest of them to be applied, as a send waits for a full ring.
    pub fn push<T: Element>(
        &mut self,
        table: &TableHandle<T>,
        keys: &[u64],
        deltas: &[T],
    ) -> Result<()> {
        self.check_ok()?;
        self.check_handle(table)?;
        let info = &self.core.tables()[table.index as usize];
        if keys.len().checked_mul(info.width) != Some(deltas.len()) {
            return Err(Error::BatchShape {
                keys: keys.len(),
                width: info.width,
                values: deltas.len(),
            });
        }
        for &key in keys {
            info.map.shard_of(key)?;
        }
        for (&key, delta) in keys.iter().zip(deltas.chunks_exact(table.width)) {
            // A long row may wait for its clock in the transport's memory,
            // from where it is sent without another copy.
            let block = match self.core.wants_stash(table.index, key) {
                Some((shard, len)) => self.stash_block(shard, len)?,
                None => None,
            };
            self.core
                .pending_add_stashing(table.index, key, delta, block)?;
        }
        Ok(())
    }

    /// A stash block of `len` bytes for a row pending to `shard`, if the
    /// transport lends one ([`Endpoint::stash`]). While the stash is full
    /// and pushes holding blocks of it await acknowledgement, waits (up to
    /// the cluster's timeout) for the oldest, as a send waits for room in
    /// a full ring: copying the row twice instead would only let the
    /// worker run further ahead of a server slower than it.
    fn stash_block(&mut self, shard: usize, len: usize) -> Result<Option<Stash>> {
        if !self.core.is_welcomed(shard) {
            return Ok(None);
        }
        if let Some(block) = self.ep.stash(self.peers[shard], len) {
            return Ok(Some(block));
        }
        let Some(seq) = self.core.oldest_stashed_unacked(shard) else {
            return Ok(None);
        };
        let seqs = (0..self.peers.len()).map(|s| if s == shard { seq } else { 0 });
        let ticket = PushTicket {
            seqs: ShardSeqs::collect(seqs),
            issuer: self.session,
        };
        let deadline = Instant::now() + self.spec.timeout;
        self.wait_applied(&ticket, deadline)?;
        Ok(self.ep.stash(self.peers[shard], len))
    }

    /// Pulls rows into `out` (`keys.len() × width` elements), waiting up to
    /// the cluster's default timeout. After an error, `out` may hold part
    /// of the rows.
    pub fn pull<T: Element>(
        &mut self,
        table: &TableHandle<T>,
        keys: &[u64],
        out: &mut [T],
    ) -> Result<()> {
        let deadline = Instant::now() + self.spec.timeout;
        self.pull_by(table, keys, out, deadline)
    }

    /// Pulls rows into `out`, waiting until `deadline` at most. After an
    /// error, `out` may hold part of the rows.
    pub fn pull_by<T: Element>(
        &mut self,
        table: &TableHandle<T>,
        keys: &[u64],
        out: &mut [T],
        deadline: Instant,
    ) -> Result<()> {
        self.check_handle(table)?;
        if keys.len().checked_mul(table.width) != Some(out.len()) {
            return Err(Error::BatchShape {
                keys: keys.len(),
                width: table.width,
                values: out.len(),
            });
        }
        let ticket = self.start_pull_by(table, keys, deadline)?;
        self.finish_pull(ticket, out, deadline)
    }

    /// Starts a pull without waiting: rows fresh in the cache need nothing,
    /// the others are requested from their shards now. The servers may
    /// park the requests for up to the cluster's default timeout.
    pub fn start_pull<T: Element>(
        &mut self,
        table: &TableHandle<T>,
        keys: &[u64],
    ) -> Result<PullTicket<T>> {
        self.check_handle(table)?;
        let deadline = Instant::now() + self.spec.timeout;
        self.start_pull_by(table, keys, deadline)
    }

    /// [`start_pull`](Self::start_pull) by `deadline`, for a handle its
    /// caller checked ([`check_handle`](Self::check_handle)).
    fn start_pull_by<T: Element>(
        &mut self,
        table: &TableHandle<T>,
        keys: &[u64],
        deadline: Instant,
    ) -> Result<PullTicket<T>> {
        self.check_ok()?;
        let now = Instant::now();
        let reqs =
            self.core
                .plan_pull(table.index, keys, deadline.saturating_duration_since(now))?;
        for &req in &reqs {
            self.send_request(req, deadline)?;
        }
        Ok(PullTicket {
            table: *table,
            keys: keys.to_vec(),
            reqs,
            started: now,
            issuer: self.session,
        })
    }

    /// Waits for a started pull and copies its rows into `out`
    /// (`keys × width` elements). A single long row that arrives in pieces
    /// ([`Endpoint::row_piece_len`]) is copied piece by piece as it comes;
    /// after an error, `out` may hold part of the rows.
    pub fn finish_pull<T: Element>(
        &mut self,
        ticket: PullTicket<T>,
        out: &mut [T],
        deadline: Instant,
    ) -> Result<()> {
        self.check_issuer(ticket.issuer, "pull")?;
        let width = ticket.table.width;
        if ticket.keys.len() * width != out.len() {
            return Err(Error::BatchShape {
                keys: ticket.keys.len(),
                width,
                values: out.len(),
            });
        }
        // A single row may arrive in pieces: each is copied into `out` as
        // it arrives, while it is fresh in the cache.
        let mut copied = (0, 0);
        let one_row = match (&ticket.reqs[..], &ticket.keys[..]) {
            ([req], [_]) => Some(*req),
            _ => None,
        };
        self.wait_pull(&ticket, deadline, |core| {
            if let Some(bytes) = one_row.and_then(|req| core.assembled(req)) {
                copied = copy_row_prefix(bytes, core.rows_restarted(), copied, out);
            }
        })?;
        let restarts = self.core.rows_restarted();
        let mut dropped = Vec::new();
        for (i, (&key, row)) in ticket
            .keys
            .iter()
            .zip(out.chunks_exact_mut(width))
            .enumerate()
        {
            let Ok(bytes) = self.cached_row(&ticket.table, key) else {
                dropped.push(i);
                continue;
            };
            // The pieces copied while they came are the cached row's
            // start unless a row started over since.
            let from = if copied.0 == restarts {
                copied.1 / T::SIZE
            } else {
                0
            };
            read_le_slice(&bytes[from * T::SIZE..], &mut row[from..]);
        }
        if dropped.is_empty() {
            return Ok(());
        }
        // Rows the cache dropped for its budget while this pull was
        // started but not finished (another pull planned meanwhile): pulled
        // again. Nothing plans a pull between this wait and the copy, so
        // they are cached for it.
        let keys: Vec<u64> = dropped.iter().map(|&i| ticket.keys[i]).collect();
        let again = self.start_pull_by(&ticket.table, &keys, deadline)?;
        self.wait_pull(&again, deadline, |_| {})?;
        for (&i, &key) in dropped.iter().zip(&keys) {
            let bytes = self.cached_row(&ticket.table, key)?;
            read_le_slice(bytes, &mut out[i * width..(i + 1) * width]);
        }
        Ok(())
    }

    /// Pulls row `key` as [`pull`](Self::pull) does (waiting up to the
    /// cluster's default timeout) and calls `f` with it where it lies in
    /// the worker's cache, without copying it into a buffer of the
    /// caller's: for reading a long row once (a sum, a forward pass) rather
    /// than keeping it. Where the cached bytes cannot be read as `T` in
    /// place (a big-endian host, or bytes not aligned for `T`), `f` gets a
    /// copy.
    ///
    /// ```
    /// use laggard::{Cluster, ClusterSpec, TableSpec};
    ///
    /// let spec = ClusterSpec::new(1, 1).table("w", TableSpec::<f32>::dense(0..4, 1000));
    /// let cluster = Cluster::start(spec)?;
    /// let norms = cluster.run_workers(|worker| {
    ///     let w = worker.table::<f32>("w")?;
    ///     worker.push(&w, &[2], &[0.5; 1000])?;
    ///     worker.clock()?;
    ///     worker.pull_with(&w, 2, |row| row.iter().map(|x| x * x).sum::<f32>())
    /// })?;
    /// assert_eq!(norms, [250.0]);
    /// cluster.shutdown()?;
    /// # Ok::<(), laggard::Error>(())
    /// ```
    pub fn pull_with<T: Element, R>(
        &mut self,
        table: &TableHandle<T>,
        key: u64,
        f: impl FnOnce(&[T]) -> R,
    ) -> Result<R> {
        self.check_handle(table)?;
        let deadline = Instant::now() + self.spec.timeout;
        let ticket = self.start_pull_by(table, &[key], deadline)?;
        self.wait_pull(&ticket, deadline, |_| {})?;
        let bytes = self.cached_row(table, key)?;
        Ok(match le_view::<T>(bytes) {
            Some(row) => f(row),
            None => {
                let mut row = vec![T::ZERO; table.width];
                read_le_slice(bytes, &mut row);
                f(&row)
            }
        })
    }

    /// Waits until every request of `ticket` has its outcome (the first
    /// error, if any), calling `progress` each time something arrived.
    fn wait_pull<T>(
        &mut self,
        ticket: &PullTicket<T>,
        deadline: Instant,
        mut progress: impl FnMut(&ClientCore),
    ) -> Result<()> {
        let mut first_err = None;
        for &req in &ticket.reqs {
            loop {
                if let Some(outcome) = self.core.take_outcome(req) {
                    if let Err(e) = outcome {
                        first_err.get_or_insert(e);
                    }
                    break;
                }
                progress(&self.core);
                // A shard failed for good (it stopped, say): the rows of
                // the others would come too late to matter.
                self.check_ok()?;
                if !self.pump(deadline + SERVER_GRACE)? {
                    let rows = match ticket.keys.len() {
                        1 => "1 row".to_string(),
                        n => format!("{n} rows"),
                    };
                    let what = format!(
                        "server shards to answer a pull of {rows} (worker {} at clock {})",
                        self.core.worker(),
                        self.core.clock()
                    );
                    return Err(Error::NoResponse {
                        what,
                        waited: ticket.started.elapsed(),
                    });
                }
            }
        }
        first_err.map_or(Ok(()), Err)
    }

    /// The cached bytes of row `key` of `table`, once a pull of it finished.
    fn cached_row<T: Element>(&self, table: &TableHandle<T>, key: u64) -> Result<&[u8]> {
        let row_bytes = table.width * T::SIZE;
        self.core
            .cached(table.index, key)
            .and_then(|bytes| bytes.get(..row_bytes))
            .ok_or_else(|| Error::Transport {
                reason: format!("row {key} missing from the cache after its pull"),
            })
    }

    /// Finishes the worker's current clock: sends the pending deltas and
    /// the clock tick, one message per server shard, and returns the new
    /// clock. Does not wait for the servers (a later pull waits if the
    /// consistency model requires); waits only if too many earlier pushes
    /// are still unacknowledged.
    pub fn clock(&mut self) -> Result<u64> {
        let ticket = self.start_clock()?;
        drop(ticket);
        Ok(self.core.clock())
    }

    /// [`clock`](Self::clock), returning a ticket to wait until the
    /// servers applied this clock's pushes.
    pub fn start_clock(&mut self) -> Result<PushTicket> {
        self.send_pending(true)
    }

    /// Sends pending deltas now without finishing the clock.
    pub fn flush(&mut self) -> Result<PushTicket> {
        self.send_pending(false)
    }

    fn send_pending(&mut self, tick: bool) -> Result<PushTicket> {
        self.check_ok()?;
        let now = Instant::now();
        let deadline = now + self.spec.timeout;
        // Backpressure: bound what is kept for resending.
        if (0..self.peers.len()).any(|s| self.core.unacked(s) >= MAX_UNACKED) {
            let ticket = self.ticket();
            self.wait_applied(&ticket, deadline)?;
        }
        let mut to_send = std::mem::take(&mut self.to_send);
        self.core.flush_into(tick, &mut to_send);
        let sent = to_send
            .drain(..)
            .try_for_each(|(shard, seq)| self.send_push(shard, seq, deadline));
        self.to_send = to_send;
        sent?;
        // Take in whatever acknowledgements have arrived, without waiting
        // (`now` has passed: no need to read the clock again for that).
        while self.pump(now)? {}
        Ok(self.ticket())
    }

    /// A ticket for every push sent so far.
    fn ticket(&self) -> PushTicket {
        PushTicket {
            seqs: ShardSeqs::collect(self.core.last_sent_iter()),
            issuer: self.session,
        }
    }

    /// Waits until the servers applied the pushes of `ticket`.
    ///
    /// A server with a clock hook ([`Server::on_clock`](crate::Server::on_clock))
    /// holds back pushes for the hook's clock and later until its slowest
    /// worker gets there; the timeout error then says so.
    pub fn wait_applied(&mut self, ticket: &PushTicket, deadline: Instant) -> Result<()> {
        self.check_issuer(ticket.issuer, "push")?;
        self.wait_pushes(ticket, deadline, ClientCore::acked_through, "apply")
    }

    /// Waits until `done` says the servers took the pushes of `ticket`
    /// (`verb`: what they were to do with them, for the timeout error).
    fn wait_pushes(
        &mut self,
        ticket: &PushTicket,
        deadline: Instant,
        done: fn(&ClientCore, &[u64]) -> bool,
        verb: &str,
    ) -> Result<()> {
        let started = Instant::now();
        while !done(&self.core, ticket.seqs.as_slice()) {
            self.check_ok()?;
            if !self.pump(deadline)? {
                let mut what = format!("server shards to {verb} pushes");
                for shard in 0..self.peers.len() {
                    if let Some((seq, hold_from)) = self.core.held_back(shard) {
                        what.push_str(&format!(
                            "; shard {shard} took them (through push {seq}) but holds back \
                             those for clock {hold_from} and later for its clock hook, until \
                             every worker gets there"
                        ));
                    }
                }
                return Err(Error::NoResponse {
                    what,
                    waited: started.elapsed(),
                });
            }
        }
        Ok(())
    }

    /// Sends the pending deltas, waits until every server applied them
    /// (or holds them back for its clock hook, to apply once the slowest
    /// worker gets there: a fast worker under Async need not wait for
    /// that), and leaves the cluster: the worker no longer holds anyone
    /// back. Returns the worker's counters.
    pub fn leave(mut self) -> Result<ClientStats> {
        let deadline = Instant::now() + self.spec.timeout;
        let ticket = self.flush()?;
        self.wait_pushes(&ticket, deadline, ClientCore::taken_through, "take")?;
        let msg = Message::Leave {
            worker: self.core.worker(),
        };
        let started = Instant::now();
        for shard in 0..self.peers.len() {
            loop {
                // After a reconnect, the shard must welcome the worker back
                // before it accepts the leave (unless it is gone meanwhile:
                // `pump` then gives up on it as below).
                while !self.core.is_welcomed(shard) && !self.left_shards[shard] {
                    self.check_ok()?;
                    if !self.pump(deadline)? {
                        return Err(Error::NoResponse {
                            what: format!("server shard {shard} to accept a reconnect"),
                            waited: started.elapsed(),
                        });
                    }
                }
                if self.left_shards[shard] {
                    break;
                }
                let peer = self.peers[shard];
                // The leave is confirmed once the shard consumed it; if the
                // connection drops first, reconnect and say it again (the
                // shard welcomes a worker that left back for exactly that,
                // and a second leave changes nothing).
                let sent = send_message(&mut self.ep, peer, &msg, deadline)
                    .and_then(|_| self.ep.flush(peer, deadline));
                match sent {
                    Ok(()) => {
                        self.left_shards[shard] = true;
                        break;
                    }
                    Err(e @ Error::Disconnected { .. }) => {
                        // A shard whose workers have all left stops serving,
                        // so one that cannot be reached again soon most
                        // likely took the leave. Either way every push was
                        // applied or is held there, and a shard that missed
                        // the leave declares the worker dead after
                        // `dead_after`.
                        // The same bound holds while the shard is to welcome
                        // the worker back (`pump`).
                        let soon = Instant::now() + LEAVE_RECONNECT.min(self.spec.dead_after);
                        self.leave_retry = Some((shard, soon));
                        if self.reconnect_by(shard, e, soon).is_err() {
                            self.give_up_leave(shard);
                            break;
                        }
                    }
                    Err(e) => return Err(self.fail(shard, e)),
                }
            }
        }
        self.leave_retry = None;
        self.left = true;
        Ok(self.core.stats())
    }

    /// `leave` could not reach `shard` again within `LEAVE_RECONNECT` to
    /// repeat a leave: done with it, as it most likely took the leave and
    /// stopped; the other shards still hear the leave.
    fn give_up_leave(&mut self, shard: usize) {
        self.broken = None;
        self.left_shards[shard] = true;
    }

    /// Forgets every cached row, so the next pulls go to the servers.
    pub fn clear_cache(&mut self) {
        self.core.clear_cache();
    }

    /// Sends pull request `req`, unless its shard is reconnecting (then it
    /// goes out with the resends once the shard welcomes the worker).
    fn send_request(&mut self, req: u64, deadline: Instant) -> Result<()> {
        let Some(shard) = self.core.with_request(req, |shard, _| shard) else {
            return Ok(());
        };
        if !self.core.is_welcomed(shard) {
            return Ok(());
        }
        let peer = self.peers[shard];
        let sent = self
            .core
            .with_request(req, |_, msg| {
                send_message(&mut self.ep, peer, msg, deadline)
            })
            .expect("request checked above");
        self.after_send(shard, sent, deadline)
    }

    /// Sends push `seq` to `shard`, unless its shard is still to be
    /// reconnected (then it goes out with the resends once the shard
    /// welcomes the worker back).
    fn send_push(&mut self, shard: usize, seq: u64, deadline: Instant) -> Result<()> {
        if self.reconnect_pending[shard].is_some() {
            return Ok(());
        }
        let peer = self.peers[shard];
        let Some(sent) = self
            .core
            .with_push_stash(shard, seq, |msg, stash| match stash {
                Some(stash) => send_stashed(&mut self.ep, peer, msg, stash, deadline),
                None => send_message(&mut self.ep, peer, msg, deadline),
            })
        else {
            // Acknowledged meanwhile.
            return Ok(());
        };
        self.after_send(shard, sent, deadline)
    }

    fn after_send(&mut self, shard: usize, sent: Result<usize>, deadline: Instant) -> Result<()> {
        match sent {
            Ok(len) => {
                let stats = self.core.stats_mut();
                stats.messages_sent += 1;
                stats.bytes_sent += len as u64;
                Ok(())
            }
            // What was not delivered is resent after the reconnect.
            Err(e @ Error::Disconnected { .. }) => self.reconnect(shard, e, deadline),
            Err(e) => Err(self.fail(shard, e)),
        }
    }

    /// The connection to `shard` dropped: makes a new one and says hello;
    /// the welcome (handled in `pump`) triggers the resends. Tries until
    /// `deadline` (the deadline of the call that noticed) or until
    /// `dead_after` has passed since the connection first dropped,
    /// whichever comes first. In the first case the shard is left to a
    /// later call (`reconnect_pending`); in the second it is failed for
    /// good.
    fn reconnect(&mut self, shard: usize, cause: Error, deadline: Instant) -> Result<()> {
        let since = *self.lost_since[shard].get_or_insert_with(Instant::now);
        let dead_at = since + self.spec.dead_after;
        if deadline >= dead_at {
            // It reads the connection's last words itself.
            return self.reconnect_by(shard, cause, dead_at);
        }
        if let Some(e) = self.last_words(shard)? {
            return Err(self.fail(shard, e));
        }
        self.reconnect_pending[shard] = self.try_reconnect(shard, cause, deadline).err();
        Ok(())
    }

    /// Reconnects to `shard` by `deadline`, or fails it for good.
    fn reconnect_by(&mut self, shard: usize, cause: Error, deadline: Instant) -> Result<()> {
        if let Some(e) = self.last_words(shard)? {
            return Err(self.fail(shard, e));
        }
        let since = *self.lost_since[shard].get_or_insert_with(Instant::now);
        match self.try_reconnect(shard, cause, deadline) {
            Ok(()) => {
                self.reconnect_pending[shard] = None;
                Ok(())
            }
            Err(last) => {
                let tried = since.elapsed();
                let e = Error::Disconnected {
                    peer: format!("server shard {shard}"),
                    reason: format!(
                        "the connection dropped and reconnecting failed for {tried:.1?}; \
                         last error: {last}"
                    ),
                };
                Err(self.fail(shard, e))
            }
        }
    }

    /// Reads what already arrived on the dropped connection to `shard`
    /// before it is given up: the error of a [`Fault`](Message::Fault)
    /// there, if any. A shard that stopped says why in its last frame, and
    /// a worker that was busy (computing) when it came may find the
    /// connection closed by the time it sends again; the reason, not the
    /// drop, is what its caller should hear. Other connections' events
    /// wait in `deferred` for `pump`; the dropped connection's other
    /// frames are dropped with it, as before (what they answered is
    /// resent after a reconnect).
    fn last_words(&mut self, shard: usize) -> Result<Option<Error>> {
        let old = self.peers[shard];
        if !self.shard_of.contains_key(&old) {
            return Ok(None); // given up already
        }
        // A deadline that has passed: only what already arrived.
        while let Some(event) = self.ep.recv(Instant::now())? {
            match event {
                Event::Frame(peer, frame) if peer == old => {
                    if let Ok(fault @ Message::Fault(_)) = decode(&frame, self.spec.max_payload) {
                        if let Err(e) = self.core.on_message(shard, fault) {
                            return Ok(Some(e));
                        }
                    }
                }
                Event::Disconnected(peer) if peer == old => break,
                other => self.deferred.push_back(other),
            }
        }
        Ok(None)
    }

    /// Tries to connect to `shard` again and say hello, until `deadline`;
    /// the last attempt's error (at first `cause`) if none succeeded.
    fn try_reconnect(
        &mut self,
        shard: usize,
        cause: Error,
        deadline: Instant,
    ) -> Result<(), Error> {
        self.core.link_lost(shard);
        let hello = self.hello();
        let mut last = cause;
        let mut pause = Duration::from_millis(10);
        loop {
            let old = self.peers[shard];
            if self.shard_of.remove(&old).is_some() {
                self.ep.disconnect(old);
                self.stale.insert(old);
            }
            if Instant::now() >= deadline {
                return Err(last);
            }
            let attempt = self
                .ep
                .connect(&self.spec.server_name(shard), deadline)
                .and_then(|peer| {
                    self.peers[shard] = peer;
                    self.shard_of.insert(peer, shard);
                    send_message(&mut self.ep, peer, &hello, deadline)
                });
            match attempt {
                Ok(_) => {
                    self.core.stats_mut().reconnects += 1;
                    return Ok(());
                }
                Err(e) => {
                    // An attempt can fail at once (a refusal, a connection
                    // cut during the hello): pause rather than spin.
                    last = e;
                    std::thread::sleep(
                        pause.min(deadline.saturating_duration_since(Instant::now())),
                    );
                    pause = (pause * 2).min(Duration::from_millis(200));
                }
            }
        }
    }

    /// A shard welcomed the worker on a new connection: resends what it
    /// has not applied or answered.
    fn on_rewelcome(&mut self, shard: usize, welcome: &crate::proto::Welcome) -> Result<()> {
        let resend = self.core.on_welcome(shard, welcome)?;
        self.lost_since[shard] = None;
        let deadline = Instant::now() + self.spec.timeout;
        for seq in resend {
            self.send_push(shard, seq, deadline)?;
        }
        for req in self.core.open_requests(shard) {
            self.send_request(req, deadline)?;
        }
        Ok(())
    }

    /// Marks the connection to `shard` as failed: requests to it fail, and
    /// so does every later call.
    fn fail(&mut self, shard: usize, e: Error) -> Error {
        self.core.fail_shard(shard, &e);
        self.ep.disconnect(self.peers[shard]);
        self.broken.get_or_insert(e.clone());
        e
    }

    /// Handles one incoming event, waiting until `deadline`; false if none
    /// came.
    fn pump(&mut self, deadline: Instant) -> Result<bool> {
        for shard in 0..self.reconnect_pending.len() {
            if let Some(cause) = self.reconnect_pending[shard].take() {
                // A failure for good marks the worker broken; callers see
                // that through `check_ok`.
                let _ = self.reconnect(shard, cause, deadline);
            }
        }
        let event = match self.deferred.pop_front() {
            Some(event) => event,
            None => match self.ep.recv(deadline)? {
                Some(event) => event,
                None => return Ok(false),
            },
        };
        match event {
            Event::Frame(peer, _) | Event::Disconnected(peer) if self.stale.contains(&peer) => {}
            Event::Frame(peer, frame) => {
                let shard = self.shard(peer)?;
                let stats = self.core.stats_mut();
                stats.messages_received += 1;
                stats.bytes_received += frame.len() as u64;
                let take = self.takes_frames && frame.len() >= TAKE_FRAMES_FROM;
                let handled = if take && self.core.is_welcomed(shard) {
                    match self.ep.keep_frame(frame) {
                        Ok(kept) => self.core.on_kept_frame(shard, kept, self.spec.max_payload),
                        Err(frame) => {
                            let mut buf = std::mem::take(&mut self.frame_spare);
                            self.ep.take_frame(frame, &mut buf);
                            self.core
                                .on_owned_frame(shard, buf, self.spec.max_payload)
                                .map(|spare| self.frame_spare = spare)
                        }
                    }
                } else {
                    let handled = match decode(&frame, self.spec.max_payload) {
                        Ok(Message::Welcome(w)) if !self.core.is_welcomed(shard) => {
                            self.on_rewelcome(shard, &w)
                        }
                        Ok(msg) => self.core.on_message(shard, msg),
                        Err(e) => Err(Error::Protocol {
                            peer: format!("server shard {shard}"),
                            reason: e.to_string(),
                        }),
                    };
                    drop(frame);
                    handled
                };
                if let Err(e) = handled {
                    if self.broken.is_none() {
                        self.fail(shard, e);
                    }
                }
                // Every frame but the kept ones is released by now: if
                // those crowd the server's room, let them go before
                // waiting for more (the server may be waiting for room).
                if self.core.keeps_frames() && self.ep.kept_frames_crowd(peer) {
                    self.core.copy_out_kept_rows();
                }
            }
            Event::Disconnected(peer) => {
                if let Some(&shard) = self.shard_of.get(&peer) {
                    if self.left_shards[shard] {
                        // A shard that took the leave may stop serving.
                        self.shard_of.remove(&peer);
                        self.stale.insert(peer);
                        return Ok(true);
                    }
                    let e = Error::Disconnected {
                        peer: format!("server shard {shard}"),
                        reason: "the connection closed".into(),
                    };
                    // Repeating a leave: the shard may have taken the first
                    // and stopped, so only `leave`'s short bound applies.
                    if let Some((_, by)) = self.leave_retry.filter(|&(s, _)| s == shard) {
                        if self.reconnect_by(shard, e, by).is_err() {
                            self.give_up_leave(shard);
                        }
                        return Ok(true);
                    }
                    // A failed reconnect marks the worker broken; callers
                    // see that through `check_ok`.
                    let _ = self.reconnect(shard, e, deadline);
                }
            }
            Event::Connected(peer) => self.ep.disconnect(peer),
        }
        Ok(true)
    }
}

#[cfg(all(test, not(laggard_loom)))]
mod tests {
    use super::{INLINE_SHARDS, ShardSeqs, copy_row_prefix};

    #[test]
    fn a_ticket_keeps_every_shards_sequence_number_inline_or_not() {
        for shards in [0, 1, INLINE_SHARDS, INLINE_SHARDS + 1, 3 * INLINE_SHARDS] {
            let seqs: Vec<u64> = (0..shards as u64).map(|s| 100 + s).collect();
            let kept = ShardSeqs::collect(seqs.iter().copied());
            assert_eq!(kept.as_slice(), &seqs[..], "{shards} shards");
            assert_eq!(
                matches!(kept, ShardSeqs::Inline { .. }),
                shards <= INLINE_SHARDS
            );
        }
    }

    #[test]
    fn a_row_prefix_is_copied_by_whole_elements_and_again_after_a_restart() {
        let row: Vec<u8> = [1u32, 2, 3, 4]
            .iter()
            .flat_map(|x| x.to_le_bytes())
            .collect();
        let mut out = [0u32; 4];
        // Six bytes: one whole element.
        let copied = copy_row_prefix(&row[..6], 0, (0, 0), &mut out);
        assert_eq!((copied, out), ((0, 4), [1, 0, 0, 0]));
        let copied = copy_row_prefix(&row[..12], 0, copied, &mut out);
        assert_eq!((copied, out), ((0, 12), [1, 2, 3, 0]));
        // After a restart the row comes again, maybe as another version:
        // what was copied before is overwritten.
        let other: Vec<u8> = [9u32, 8].iter().flat_map(|x| x.to_le_bytes()).collect();
        let copied = copy_row_prefix(&other, 1, copied, &mut out);
        assert_eq!((copied, out), ((1, 8), [9, 8, 3, 0]));
        // Nothing new arrived (a finished assembly reads as empty).
        assert_eq!(copy_row_prefix(&[], 1, copied, &mut out), (1, 8));
    }
}
