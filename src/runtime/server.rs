//! A server shard: the protocol state machine driven over an endpoint.

use std::any::Any;
use std::panic::{self, AssertUnwindSafe};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::spec::ClusterSpec;
use super::storage::ServerTables;
use crate::element::Element;
use crate::error::{Error, Result};
use crate::proto::{
    Fault, FaultCode, Message, Output, PullResponse, RowPiece, ServerConfig, ServerCore,
    ServerStats, ShardTables, pull_response_head, pull_response_layout, write_pull_response,
};
use crate::table::Table;
use crate::transport::{Endpoint, Event, PeerId};

/// The longest a server sleeps without checking its timers.
const IDLE: Duration = Duration::from_millis(100);

/// How a server's run ended: its counters and the final vector clock
/// (each worker's clock and whether it left or was declared dead).
#[derive(Debug, Clone)]
pub struct ServerReport {
    /// The shard's counters.
    pub stats: ServerStats,
    /// Every worker's last clock and status, as this shard saw them.
    pub clocks: crate::clock::VectorClock,
}

/// One server shard: owns its part of every table, applies pushes with the
/// tables' update rules, tracks the vector clock and parks pulls until the
/// slowest worker allows them. [`run`](Self::run) serves until a controller
/// sends `Shutdown`.
pub struct Server<E: Endpoint> {
    ep: E,
    core: ServerCore,
    tables: ServerTables,
    spec: ClusterSpec,
    shard: usize,
    typed: Vec<Arc<dyn Any + Send + Sync>>,
    send_timeout: Duration,
    out: Vec<Output>,
    on_clock: Option<ClockHook>,
}

/// The smallest multiple of `every` (at least 1) above `clock`.
fn first_multiple_above(clock: u64, every: u64) -> u64 {
    (clock / every).saturating_add(1).saturating_mul(every)
}

/// What [`Server::on_clock`] registered.
struct ClockHook {
    every: u64,
    /// The next multiple of `every` the slowest worker must reach.
    next: u64,
    call: Box<dyn FnMut(u64) -> Result<()> + Send>,
}

impl<E: Endpoint> std::fmt::Debug for Server<E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("endpoint", &self.ep.name())
            .field("core", &self.core)
            .finish_non_exhaustive()
    }
}

impl<E: Endpoint> Server<E> {
    /// Server shard `shard` of the cluster, reachable at `ep`.
    pub fn new(ep: E, spec: &ClusterSpec, shard: usize) -> Result<Self> {
        spec.validate()?;
        if shard >= spec.servers {
            return Err(Error::ShardOutOfRange {
                shard,
                shards: spec.servers,
            });
        }
        let mut parts = Vec::new();
        let mut typed = Vec::new();
        for t in &spec.tables {
            let (part, table) = (t.make_part)(shard)?;
            parts.push(part);
            typed.push(table);
        }
        let core = ServerCore::new(ServerConfig {
            shard: shard as u32,
            workers: spec.workers as u32,
            schema: spec.fingerprint(),
            dead_after: spec.dead_after,
            max_payload: spec.max_payload,
        });
        Ok(Server {
            ep,
            core,
            tables: ServerTables { parts },
            spec: spec.clone(),
            shard,
            typed,
            send_timeout: spec.timeout,
            out: Vec::new(),
            on_clock: None,
        })
    }

    /// This server's part of table number `index`, for inspection and
    /// checkpoints (the in-process cluster hands these out).
    pub(crate) fn typed_part(&self, index: usize) -> Arc<dyn Any + Send + Sync> {
        self.typed[index].clone()
    }

    /// The shard this server serves.
    pub fn shard(&self) -> usize {
        self.shard
    }

    /// This server's part of table `name` (a [`Table::for_shard`] of its
    /// shard), shared with the server: load a checkpoint into it before
    /// [`run`](Self::run) to resume training
    /// ([`checkpoint::load`](crate::checkpoint::load)), and save one from
    /// it while the server runs or after it stopped
    /// ([`checkpoint::save`](crate::checkpoint::save)). Pushes and pulls
    /// should go through workers; the table is not told about clocks.
    ///
    /// ```
    /// use laggard::{ClusterSpec, Server, TableSpec, checkpoint};
    /// use laggard::transport::{InProcess, Transport};
    ///
    /// let spec = ClusterSpec::new(2, 1).table("w", TableSpec::<f32>::dense(0..8, 4));
    /// let net = InProcess::new();
    /// let server = Server::new(net.bind(&spec.server_name(1))?, &spec, 1)?;
    /// let part = server.table::<f32>("w")?;
    /// assert_eq!(part.rows(), 4); // keys 4..8
    /// let mut saved = Vec::new();
    /// checkpoint::save(&part, &mut saved)?; // a File next to the server, in practice
    /// # Ok::<(), laggard::Error>(())
    /// ```
    pub fn table<T: Element>(&self, name: &str) -> Result<Arc<Table<T>>> {
        let (index, _) = self.spec.typed_table::<T>(name)?;
        downcast_part(&self.typed[index])
    }

    /// Has `call(clock)` run on the server's own thread each time the
    /// slowest active worker's clock, as this shard sees it, reaches a
    /// multiple of `every` (once per crossing, with that multiple; a jump
    /// past several multiples calls it once, with the first). Until then
    /// the shard holds back the pushes of faster workers for that clock or
    /// later, unapplied and unacknowledged ([`ServerCore::hold_from`](crate::proto::ServerCore::hold_from)),
    /// and applies them once `call` returned. So a checkpoint saved from
    /// `call` ([`checkpoint::save_at`](crate::checkpoint::save_at) of
    /// [`table`](Self::table)s taken beforehand, with `clock`) holds
    /// exactly the pushes of clocks below `clock`, under every consistency
    /// model, and a job resumed from it with [`start_at`](Self::start_at)
    /// makes no clock twice and leaves none out. A worker that runs that
    /// far ahead may wait there for acknowledgements, once it has too many
    /// unacknowledged pushes. An error from `call` stops the server with
    /// that error. `every` must be at least 1.
    ///
    /// The shard serves nothing while `call` runs: a call longer than the
    /// spec's [`timeout`](ClusterSpec::timeout) makes the workers waiting
    /// on it time out. For a large table, save into memory (`save_at` into
    /// a `Vec`, at memory speed) and write the bytes out on another thread.
    ///
    /// ```
    /// use std::sync::{Arc, Mutex};
    /// use laggard::{ClusterSpec, Server, TableSpec, checkpoint};
    /// use laggard::transport::{InProcess, Transport};
    ///
    /// let spec = ClusterSpec::new(1, 2).table("w", TableSpec::<f32>::dense(0..8, 4));
    /// let net = InProcess::new();
    /// let mut server = Server::new(net.bind(&spec.server_name(0))?, &spec, 0)?;
    /// let (weights, latest) = (server.table::<f32>("w")?, Arc::new(Mutex::new(Vec::new())));
    /// let keep = latest.clone();
    /// server.on_clock(100, move |clock| {
    ///     let mut bytes = Vec::new(); // a file in practice
    ///     checkpoint::save_at(&weights, clock, &mut bytes)?;
    ///     *keep.lock().unwrap() = bytes;
    ///     Ok(())
    /// })?;
    /// # Ok::<(), laggard::Error>(())
    /// ```
    pub fn on_clock(
        &mut self,
        every: u64,
        call: impl FnMut(u64) -> Result<()> + Send + 'static,
    ) -> Result<()> {
        if every == 0 {
            return Err(crate::error::invalid(
                "clock hook interval",
                "0 clocks; call it every 1 or more clocks",
            ));
        }
        // Before serving, every worker is at the clock the shard starts
        // at (0, or `start_at`'s).
        let start = self.core.clocks().min_active().unwrap_or(0);
        let next = first_multiple_above(start, every);
        self.on_clock = Some(ClockHook {
            every,
            next,
            call: Box::new(call),
        });
        self.hold_from(Some(next), Instant::now());
        Ok(())
    }

    /// Starts every worker at `clock` instead of 0: the clock of the
    /// checkpoint this shard was restored from
    /// ([`Loaded::clock`](crate::checkpoint::Loaded::clock)). Workers that
    /// connect join there ([`Worker::current_clock`](crate::Worker::current_clock)
    /// says so, for the training loop) and the clock hook next runs at the
    /// first multiple of its interval above `clock`. Every shard of a
    /// cluster must start at the same clock. Call it before
    /// [`run`](Self::run).
    ///
    /// ```
    /// use laggard::{ClusterSpec, Server, TableSpec, checkpoint};
    /// use laggard::transport::{InProcess, Transport};
    ///
    /// let spec = ClusterSpec::new(1, 2).table("w", TableSpec::<f32>::dense(0..8, 4));
    /// let net = InProcess::new();
    /// let mut server = Server::new(net.bind(&spec.server_name(0))?, &spec, 0)?;
    /// let weights = server.table::<f32>("w")?;
    /// # let mut file = Vec::new();
    /// # checkpoint::save_at(&weights, 40, &mut file)?;
    /// let loaded = checkpoint::load(&weights, &file[..], checkpoint::Foreign::Refuse)?;
    /// server.start_at(loaded.clock)?; // the workers go on from clock 40
    /// # Ok::<(), laggard::Error>(())
    /// ```
    pub fn start_at(&mut self, clock: u64) -> Result<()> {
        self.core.start_at(clock)?;
        if let Some(hook) = &mut self.on_clock {
            hook.next = first_multiple_above(clock, hook.every);
            let next = hook.next;
            self.hold_from(Some(next), Instant::now());
        }
        Ok(())
    }

    /// Moves the shard's hold ([`ServerCore::hold_from`]), applying the
    /// pushes it no longer holds; their acknowledgements go out with the
    /// round's other outputs.
    fn hold_from(&mut self, clock: Option<u64>, now: Instant) {
        let mut tables = ApplyAfterRelease {
            tables: &mut self.tables,
            ep: &mut self.ep,
            deadline: now + self.send_timeout,
        };
        self.core.hold_from(clock, &mut tables, &mut self.out);
    }

    /// Runs the clock hook if the slowest worker reached its next multiple.
    fn clock_hook(&mut self) -> Result<()> {
        // Without a hook this is one branch per round of the serving loop
        // (the small-message path); the workers' clocks are looked at only
        // when there is a hook to call.
        let Some(hook) = &mut self.on_clock else {
            return Ok(());
        };
        let next = match self.core.clocks().min_active() {
            Some(min) if min >= hook.next => {
                let reached = hook.next;
                hook.next = first_multiple_above(min, hook.every);
                (hook.call)(reached)?;
                hook.next
            }
            Some(_) => return Ok(()),
            // No worker is active, so none will reach the hold: what dead
            // workers left held is applied, and the hold stays for any
            // worker that comes back.
            None if self.core.held() > 0 => {
                let next = hook.next;
                self.hold_from(None, Instant::now());
                next
            }
            None => return Ok(()),
        };
        self.hold_from(Some(next), Instant::now());
        self.deliver(Instant::now());
        Ok(())
    }

    /// Serves until a controller sends `Shutdown`; returns the counters.
    /// Fails if the endpoint itself fails or the clock hook does; the
    /// connected workers are then told the shard stopped, and why, as they
    /// are before a panic in a table's update rule or the hook goes on.
    pub fn run(self) -> Result<ServerStats> {
        self.serve(false).map(|report| report.stats)
    }

    /// Serves until a controller sends `Shutdown` or every worker has left
    /// or been declared dead (nobody can push or pull any more): what the
    /// server process of a multi-process cluster runs. The report says
    /// how each worker ended.
    ///
    /// Fails with [`Error::NoResponse`] if no worker has connected within
    /// the spec's [`timeout`](ClusterSpec::timeout) of the start: worker
    /// processes that all failed before connecting would otherwise leave
    /// it waiting for ever. (Once one has connected, the others may take
    /// their time; only a worker seen to go is declared dead.)
    pub fn run_until_workers_done(self) -> Result<ServerReport> {
        self.serve(true)
    }

    /// Serves. Should serving stop on an error (the clock hook's, say) or
    /// a panic of this shard's own code (a table's update rule or the
    /// clock hook), every connected peer is told that the shard stopped
    /// and why, so that workers fail at once with that reason instead of
    /// retrying a dropped connection until their deadline. Then the error
    /// is returned, or the panic goes on.
    fn serve(mut self, until_done: bool) -> Result<ServerReport> {
        let served = panic::catch_unwind(AssertUnwindSafe(|| self.serve_rounds(until_done)));
        let why = match served {
            Ok(Ok(report)) => return Ok(report),
            Ok(Err(ref e)) => e.to_string(),
            Err(ref payload) => format!(
                "it panicked while serving ({}); the pushes it had not acknowledged may be \
                 partly applied",
                panic_message(&**payload)
            ),
        };
        // What the stop interrupted is dropped, not delivered.
        self.out.clear();
        let reason = format!("the shard stopped: {why}");
        self.core.fail(&reason, &mut self.out);
        // One bound for all the telling: peers that do not read are not
        // waited for one after the other.
        let by = Instant::now() + self.send_timeout;
        for output in std::mem::take(&mut self.out) {
            // `fail` asks for faults to send, and to stop.
            if let Output::Send(peer, reply) = output {
                if send_message(&mut self.ep, peer, &reply.message(), by).is_err() {
                    self.ep.disconnect(peer);
                    self.core.on_disconnect(peer, Instant::now());
                }
            }
        }
        self.linger(by);
        served.unwrap_or_else(|payload| panic::resume_unwind(payload))
    }

    fn serve_rounds(&mut self, until_done: bool) -> Result<ServerReport> {
        let finished = |core: &ServerCore| core.is_stopped() || (until_done && core.workers_done());
        let started = Instant::now();
        // Serving until the workers are done: by when the first must come.
        let mut first_by = until_done.then_some(started + self.send_timeout);
        while !finished(&self.core) {
            let now = Instant::now();
            let wake = self
                .core
                .next_deadline()
                .map_or(now + IDLE, |d| d.min(now + IDLE));
            let event = self.ep.recv(wake)?;
            // One reading of the clock serves the whole round: a small
            // message's round trip costs a few of them otherwise.
            let now = Instant::now();
            match event {
                None | Some(Event::Connected(_)) => {}
                Some(Event::Frame(peer, frame)) => {
                    // The frame (and its tail) is released before any
                    // acknowledgement of it goes out, in `deliver`.
                    let tail = self.ep.frame_tail(&frame);
                    let mut tables = ApplyAfterRelease {
                        tables: &mut self.tables,
                        ep: &mut self.ep,
                        deadline: now + self.send_timeout,
                    };
                    self.core
                        .on_split_frame(peer, &frame, tail, now, &mut tables, &mut self.out);
                }
                Some(Event::Disconnected(peer)) => self.core.on_disconnect(peer, now),
            }
            self.core.poll(now, &mut self.out);
            self.deliver(now);
            self.clock_hook()?;
            if let Some(by) = first_by {
                if self.core.any_worker_joined() {
                    first_by = None;
                } else if now >= by {
                    return Err(self.no_worker_came(started));
                }
            }
        }
        Ok(ServerReport {
            stats: self.core.stats(),
            clocks: self.core.clocks().clone(),
        })
    }

    /// Serving until the workers are done, none came within the timeout.
    fn no_worker_came(&self, started: Instant) -> Error {
        let workers = self.spec.workers;
        let which = if workers == 1 {
            "worker 0 is behind".to_string()
        } else {
            format!("workers 0-{} are behind", workers - 1)
        };
        Error::NoResponse {
            what: format!(
                "any of its {workers} workers to connect to server shard {} (none did: \
                 {which}). A worker process that failed before connecting never will; \
                 if they need longer to start, raise ClusterSpec::timeout",
                self.shard
            ),
            waited: started.elapsed(),
        }
    }

    /// After [`ServerCore::fail`]: waits until every peer, told why the
    /// shard stopped, closed its connection, or until `deadline`. A peer
    /// whose send found the connection closed would take that for a
    /// network fault and retry it, never reading why.
    fn linger(&mut self, deadline: Instant) {
        while self.core.has_peers() {
            match self.ep.recv(deadline) {
                Ok(Some(Event::Disconnected(peer))) => {
                    self.core.on_disconnect(peer, Instant::now())
                }
                // Frames are left unanswered: the peer was told.
                Ok(Some(_)) => {}
                Ok(None) | Err(_) => return,
            }
        }
    }

    /// Sends what the state machine asked for. A peer that cannot be sent
    /// to is disconnected; that never stops the server.
    ///
    /// Each send may wait `send_timeout` from when it starts, so one slow
    /// peer cannot use up the others' time; the first starts at `now`, the
    /// round's reading of the clock.
    fn deliver(&mut self, now: Instant) {
        let mut outputs = std::mem::take(&mut self.out);
        let mut first = Some(now);
        for output in outputs.drain(..) {
            let deadline = first.take().unwrap_or_else(Instant::now) + self.send_timeout;
            let (peer, sent) = match output {
                Output::Send(peer, reply) => {
                    let msg = reply.message();
                    (
                        peer,
                        send_message(&mut self.ep, peer, &msg, deadline).map(drop),
                    )
                }
                Output::Rows {
                    peer,
                    req,
                    clock,
                    table,
                    keys,
                } => match self.answer_too_long(req, table, &keys) {
                    None => (
                        peer,
                        self.send_rows(peer, req, clock, table, &keys, deadline),
                    ),
                    // Tell the worker why before closing the connection:
                    // failing the send would only make it ask again.
                    Some(why) => {
                        let fault = Message::Fault(Fault {
                            code: FaultCode::BadRequest as u32,
                            text: &why,
                        });
                        let _ = send_message(&mut self.ep, peer, &fault, deadline);
                        (peer, Err(Error::Transport { reason: why }))
                    }
                },
                Output::Close(peer) => {
                    self.ep.disconnect(peer);
                    self.core.on_disconnect(peer, Instant::now());
                    continue;
                }
                Output::Stop => continue,
            };
            if sent.is_err() {
                self.ep.disconnect(peer);
                self.core.on_disconnect(peer, Instant::now());
            }
        }
        self.out = outputs;
    }

    /// The piece length for a pull answer of `keys` (`value_len` bytes),
    /// if it goes in pieces ([`Endpoint::row_piece_len`]).
    fn piece_len(&self, keys: &[u64], value_len: usize) -> Option<usize> {
        let piece = self
            .ep
            .row_piece_len()
            .map(|p| (p & !63).max(crate::transport::MIN_ROW_PIECE))?;
        (keys.len() == 1 && value_len > piece).then_some(piece)
    }

    /// Why the answer to pull request `req` cannot be sent, if it is longer
    /// than the largest frame (and not sent in pieces). Workers split their
    /// pulls so that answers fit; another client of the protocol may not.
    fn answer_too_long(&self, req: u64, table: u32, keys: &[u64]) -> Option<String> {
        let value_len = keys.len() * ShardTables::row_bytes(&self.tables, table);
        let (len, _) = pull_response_layout(value_len);
        let max = self.ep.max_frame_len();
        (len > max && self.piece_len(keys, value_len).is_none()).then(|| {
            format!(
                "the answer to pull request {req} ({} rows) takes a {len}-byte frame, more \
                 than the largest this server's transport sends ({max} bytes); ask for \
                 fewer keys at a time",
                keys.len()
            )
        })
    }

    /// Encodes a pull response straight into the transport's buffer,
    /// reading the rows from the table into it. A response of one long row
    /// is sent in parts with the row in place ([`Endpoint::send_parts`]):
    /// over TCP its bytes go from the table to the socket with no copy.
    /// The row is held shared until the transport has it; this thread is
    /// the only one that pushes to its tables, so no push waits on that.
    /// Where the transport asks for it ([`Endpoint::row_piece_len`]), a
    /// long row goes out in pieces, one frame each, all read under that
    /// one hold, so they add up to one version of the row.
    ///
    /// Long responses whose rows all lie in place (wide rows) go out with
    /// [`Endpoint::send_held`] where the transport sends that many rows in
    /// place ([`Endpoint::held_rows_per_frame`]): it may keep holding them after
    /// this returns (an RDMA device reads them from the table), until
    /// [`Endpoint::release_held`], which [`ApplyAfterRelease`] calls before
    /// any push is applied.
    fn send_rows(
        &mut self,
        peer: PeerId,
        req: u64,
        clock: u64,
        table: u32,
        keys: &[u64],
        deadline: Instant,
    ) -> Result<()> {
        let value_len = keys.len() * ShardTables::row_bytes(&self.tables, table);
        if let [key] = *keys {
            if let Some(piece) = self.piece_len(keys, value_len) {
                let ep = &mut self.ep;
                return self.tables.send_row(table, key, &mut |values| {
                    let mut offset = 0;
                    for values in values.chunks(piece) {
                        let msg = Message::RowPiece(RowPiece {
                            req,
                            clock,
                            table,
                            offset: offset as u64,
                            total: value_len as u64,
                            values,
                        });
                        send_message(ep, peer, &msg, deadline)?;
                        offset += values.len();
                    }
                    Ok(())
                });
            }
        }
        if value_len >= SEND_IN_PARTS
            && value_len % 8 == 0
            && keys.len() <= self.ep.held_rows_per_frame()
        {
            if let Some(rows) = self.tables.hold_rows(table, keys)? {
                let head = pull_response_head(req, clock, table, keys.len() as u32, value_len);
                return self.ep.send_held(peer, &head, rows, deadline);
            }
        }
        if let [key] = *keys {
            if value_len >= SEND_IN_PARTS {
                let ep = &mut self.ep;
                return self.tables.send_row(table, key, &mut |values| {
                    let msg = Message::PullResponse(PullResponse {
                        req,
                        clock,
                        table,
                        rows: 1,
                        values,
                    });
                    ep.send_parts(peer, &msg.encode_parts().parts(), deadline)
                });
            }
        }
        let (len, _) = pull_response_layout(value_len);
        let mut buf = self.ep.lend(peer, len, deadline)?;
        let values = write_pull_response(&mut buf, req, clock, table, keys.len() as u32, value_len);
        self.tables.read(table, keys, values)?;
        self.ep.send(buf)
    }
}

/// The server's tables as the protocol state machine sees them, with one
/// thing added: before a push is applied, the endpoint lets go of the rows
/// it still holds from [`Endpoint::send_held`] (waiting for its device
/// until `deadline`), since a push to a held row would wait on this very
/// thread for ever.
struct ApplyAfterRelease<'a, E> {
    tables: &'a mut ServerTables,
    ep: &'a mut E,
    deadline: Instant,
}

impl<E: Endpoint> ShardTables for ApplyAfterRelease<'_, E> {
    fn len(&self) -> usize {
        self.tables.len()
    }

    fn check(
        &self,
        table: u32,
        keys: crate::proto::Keys<'_>,
        value_len: Option<usize>,
    ) -> Result<()> {
        self.tables.check(table, keys, value_len)
    }

    fn promise(&mut self, table: u32, keys: crate::proto::Keys<'_>) -> Result<Vec<u64>> {
        self.tables.promise(table, keys)
    }

    fn unpromise(&mut self, table: u32, keys: &[u64]) {
        self.tables.unpromise(table, keys);
    }

    fn apply(&mut self, table: u32, keys: crate::proto::Keys<'_>, values: &[u8]) -> Result<()> {
        self.ep.release_held(self.deadline)?;
        self.tables.apply(table, keys, values)
    }

    fn row_bytes(&self, table: u32) -> usize {
        self.tables.row_bytes(table)
    }
}

/// Frames at least this long are sent in parts
/// ([`Endpoint::send_parts`]), so that a transport with vectored writes
/// sends a push's deltas straight from the worker's pending buffer.
/// Shorter ones are encoded into a lent buffer, which costs no allocation.
const SEND_IN_PARTS: usize = 64 << 10;

/// The text a panic was raised with, as the default hook prints it.
fn panic_message(payload: &(dyn Any + Send)) -> &str {
    payload
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("a panic with a payload that is not text")
}

/// Sends `msg`, encoded into a lent buffer or, if it is long, in parts;
/// returns the frame length.
pub(crate) fn send_message<E: Endpoint>(
    ep: &mut E,
    peer: PeerId,
    msg: &crate::proto::Message<'_>,
    deadline: Instant,
) -> Result<usize> {
    let len = msg.encoded_len();
    if len >= SEND_IN_PARTS {
        ep.send_parts(peer, &msg.encode_parts().parts(), deadline)?;
    } else {
        let mut buf = ep.lend(peer, len, deadline)?;
        msg.encode_known_len(&mut buf, len);
        ep.send(buf)?;
    }
    Ok(len)
}

/// Sends push `msg`, whose last section's values are the first bytes of
/// `stash`, as its head and the stash
/// ([`Endpoint::send_stashed`]); returns the frame length.
pub(crate) fn send_stashed<E: Endpoint>(
    ep: &mut E,
    peer: PeerId,
    msg: &crate::proto::Message<'_>,
    stash: &crate::transport::Stash,
    deadline: Instant,
) -> Result<usize> {
    let len = msg.encoded_len();
    let parts = msg.encode_parts();
    match parts.split_values() {
        Some((head, values))
            if values.as_ptr() == stash.as_ptr()
                && values.len().next_multiple_of(8) == stash.len() =>
        {
            ep.send_stashed(peer, head, stash, deadline)?;
        }
        _ => ep.send_parts(peer, &parts.parts(), deadline)?,
    }
    Ok(len)
}

/// A table part as the typed table it is (parts are built from the spec's
/// tables, so the type matches whenever the spec says it does).
pub(crate) fn downcast_part<T: Element>(
    part: &Arc<dyn Any + Send + Sync>,
) -> Result<Arc<Table<T>>> {
    part.clone()
        .downcast::<Table<T>>()
        .map_err(|_| Error::Transport {
            reason: "table part has an unexpected type".into(),
        })
}
