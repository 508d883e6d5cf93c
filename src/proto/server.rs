//! The server shard's state machine: registration, idempotent pushes, the
//! vector clock, and pulls parked until the slowest worker allows them
//! (Bösen-style).
//!
//! Sans-IO: [`ServerCore::on_frame`], [`ServerCore::on_disconnect`] and
//! [`ServerCore::poll`] take input and the current time and append
//! [`Output`]s; the caller moves them over a transport. Table storage is
//! reached through the [`ShardTables`] trait, so the machine can be driven
//! against a model in tests.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use super::codec::{
    self, DecodeError, Fault, FaultCode, Hello, Keys, Message, PullTimedOut, PushAck, PushHeld,
    Role, Welcome,
};
use crate::clock::{VectorClock, WorkerId, WorkerStatus};
use crate::error::Result;
use crate::idhash::IdMap;
use crate::transport::PeerId;

/// What a server shard needs from its table storage.
pub trait ShardTables {
    /// Number of tables.
    fn len(&self) -> usize;

    /// True if there are no tables.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Checks that `table` exists, every key belongs to this shard, and
    /// `value_len` is `keys × width × element size` (pass `None` for a
    /// pull, which carries no values). For a push to a table with a row
    /// limit, also that the rows it would create fit within it, rows
    /// promised to held pushes ([`promise`](Self::promise)) counted as
    /// created; that error ([`Error::TableFull`](crate::Error::TableFull))
    /// names the table.
    fn check(&self, table: u32, keys: Keys<'_>, value_len: Option<usize>) -> Result<()>;

    /// Promises room to the rows a checked push section to `keys` will
    /// create when it is applied (the push is held back): until
    /// [`unpromise`](Self::unpromise), `check` counts them as created.
    /// Returns their keys, for `unpromise`: none for a table without a
    /// row limit.
    fn promise(&mut self, table: u32, keys: Keys<'_>) -> Result<Vec<u64>>;

    /// Gives back the room [`promise`](Self::promise) promised to `keys`.
    fn unpromise(&mut self, table: u32, keys: &[u64]);

    /// Applies a checked push section with the table's update rule.
    fn apply(&mut self, table: u32, keys: Keys<'_>, values: &[u8]) -> Result<()>;

    /// Bytes per row of `table` on the wire.
    fn row_bytes(&self, table: u32) -> usize;
}

/// Settings of one server shard.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// This shard's index.
    pub shard: u32,
    /// Number of workers in the cluster (ids `0..workers`).
    pub workers: u32,
    /// The cluster schema's fingerprint; peers with another are refused.
    pub schema: u64,
    /// A worker whose connection dropped without `Leave` is declared dead
    /// after this long, and stops holding the others back.
    pub dead_after: Duration,
    /// The largest payload accepted.
    pub max_payload: usize,
}

/// Something the server must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    /// Send a control message.
    Send(PeerId, Reply),
    /// Send rows: encode a pull response for `keys` of `table`, reading the
    /// values from storage at encoding time.
    Rows {
        /// Who asked.
        peer: PeerId,
        /// The request.
        req: u64,
        /// The rows include every update from clocks below this.
        clock: u64,
        /// The table.
        table: u32,
        /// The keys, in the order asked.
        keys: Vec<u64>,
    },
    /// Drop the connection (after sending what precedes this output).
    Close(PeerId),
    /// Stop serving.
    Stop,
}

/// A control message the server sends (owned, unlike [`Message`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// Registration accepted.
    Welcome(Welcome),
    /// A push was applied (or was a duplicate of one that was).
    PushAck(PushAck),
    /// A push was taken but is held back (or was a duplicate of one that
    /// is).
    PushHeld(PushHeld),
    /// A parked pull expired.
    PullTimedOut(PullTimedOut),
    /// A fatal error; a [`Output::Close`] follows.
    Fault(FaultCode, String),
}

impl Reply {
    /// The message to encode.
    pub fn message(&self) -> Message<'_> {
        match self {
            Reply::Welcome(w) => Message::Welcome(*w),
            Reply::PushAck(a) => Message::PushAck(*a),
            Reply::PushHeld(h) => Message::PushHeld(*h),
            Reply::PullTimedOut(t) => Message::PullTimedOut(t.clone()),
            Reply::Fault(code, text) => Message::Fault(Fault {
                code: *code as u32,
                text,
            }),
        }
    }
}

#[derive(Debug)]
struct Parked {
    peer: PeerId,
    req: u64,
    table: u32,
    keys: Vec<u64>,
    min_clock: u64,
    since: Instant,
    deadline: Instant,
}

/// Counters a server keeps.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ServerStats {
    /// Push messages applied.
    pub pushes: u64,
    /// Push messages recognised as resends and not applied again.
    pub duplicate_pushes: u64,
    /// Rows applied.
    pub rows_applied: u64,
    /// Pull requests received.
    pub pulls: u64,
    /// Pull requests that had to wait for slower workers.
    pub pulls_parked: u64,
    /// Parked pulls that timed out.
    pub pulls_timed_out: u64,
    /// Workers declared dead after losing their connection.
    pub workers_declared_dead: u64,
    /// Workers whose process was replaced by a new one (a new session
    /// registering after the old one's connection was gone), dead ones
    /// included.
    pub workers_replaced: u64,
    /// Connections dropped for protocol errors or bad requests.
    pub peers_dropped: u64,
    /// Pushes kept back until the slowest worker reached a clock
    /// ([`ServerCore::hold_from`]; a server's clock hook does this), then
    /// applied.
    pub pushes_held: u64,
}

/// One server shard's protocol state.
#[derive(Debug)]
pub struct ServerCore {
    cfg: ServerConfig,
    clocks: VectorClock,
    /// Highest applied push sequence number per worker.
    applied: Vec<u64>,
    roles: IdMap<PeerId, Role>,
    /// The connection speaking for each worker.
    conn_of: Vec<Option<PeerId>>,
    /// The session (process) speaking for each worker.
    session_of: Vec<Option<u64>>,
    /// Sessions that spoke for each worker before a replacement took over:
    /// refused if they come back, since their sequence numbers and clock
    /// are no longer the worker's.
    replaced: Vec<Vec<u64>>,
    /// When each worker's connection dropped without `Leave`.
    lost_at: Vec<Option<Instant>>,
    parked: Vec<Parked>,
    /// See [`hold_from`](ServerCore::hold_from).
    hold_from: Option<u64>,
    /// Pushes for clocks at or past `hold_from`, in arrival order, not yet
    /// applied or acknowledged.
    held: VecDeque<HeldPush>,
    stopped: bool,
    stats: ServerStats,
}

/// A push kept back by [`ServerCore::hold_from`], with its rows copied
/// out of the frame.
#[derive(Debug)]
struct HeldPush {
    worker: u32,
    seq: u64,
    clock: u64,
    /// `(table, keys, values)` of each section.
    sections: Vec<(u32, Vec<u64>, Vec<u8>)>,
    /// `(table, keys)`: the rows it will create in tables with a row
    /// limit, promised to it ([`ShardTables::promise`]) until it is applied.
    creates: Vec<(u32, Vec<u64>)>,
}

impl ServerCore {
    /// A shard with every worker at clock 0, none connected yet.
    pub fn new(cfg: ServerConfig) -> Self {
        let n = cfg.workers as usize;
        ServerCore {
            clocks: VectorClock::new(n),
            applied: vec![0; n],
            roles: IdMap::default(),
            conn_of: vec![None; n],
            session_of: vec![None; n],
            replaced: vec![Vec::new(); n],
            lost_at: vec![None; n],
            parked: Vec::new(),
            hold_from: None,
            held: VecDeque::new(),
            stopped: false,
            stats: ServerStats::default(),
            cfg,
        }
    }

    /// Starts every worker at `clock` instead of 0, as a shard restored
    /// from a checkpoint taken at that clock does: each worker's Welcome
    /// carries it, and the worker goes on from there. Only before any
    /// worker said hello; an error otherwise.
    pub fn start_at(&mut self, clock: u64) -> crate::error::Result<()> {
        if let Some(w) = self.session_of.iter().position(Option::is_some) {
            return Err(crate::error::invalid(
                "starting clock",
                format!(
                    "worker {w} already joined at clock {}; set the starting clock before \
                     the server serves",
                    self.clocks.get(WorkerId(w as u32)).map_or(0, |(c, _)| c)
                ),
            ));
        }
        for w in 0..self.cfg.workers {
            self.clocks.set(WorkerId(w), clock, WorkerStatus::Active);
        }
        Ok(())
    }

    /// The vector clock as this shard knows it.
    pub fn clocks(&self) -> &VectorClock {
        &self.clocks
    }

    /// The shard's counters.
    pub fn stats(&self) -> ServerStats {
        self.stats
    }

    /// True once a controller asked the shard to stop.
    pub fn is_stopped(&self) -> bool {
        self.stopped
    }

    /// The shard cannot go on (its own code panicked, say): stops it and
    /// tells every connected peer why, with a
    /// [`Fault`](crate::proto::Fault) each peer takes as final rather than
    /// as a dropped connection to retry. The connections stay open, so
    /// that a peer sending meanwhile does not take the shard for a
    /// network fault before it reads why; each peer closes its own
    /// ([`has_peers`](Self::has_peers) says when all have).
    pub fn fail(&mut self, reason: &str, out: &mut Vec<Output>) {
        self.stop_telling(|_, _| true, reason, out);
    }

    /// Stops the shard: drops the parked pulls, sends `reason` (a
    /// `ShuttingDown` fault) to each peer whose role `told` picks (given
    /// the workers' clocks), in the order of their ids, and asks to stop.
    fn stop_telling(
        &mut self,
        told: impl Fn(&Role, &VectorClock) -> bool,
        reason: &str,
        out: &mut Vec<Output>,
    ) {
        let mut peers: Vec<PeerId> = self
            .roles
            .iter()
            .filter(|(_, role)| told(role, &self.clocks))
            .map(|(&peer, _)| peer)
            .collect();
        peers.sort_unstable();
        self.stopped = true;
        self.parked.clear();
        for peer in peers {
            out.push(Output::Send(
                peer,
                Reply::Fault(FaultCode::ShuttingDown, reason.to_owned()),
            ));
        }
        out.push(Output::Stop);
    }

    /// Whether any peer that said hello is still connected.
    pub fn has_peers(&self) -> bool {
        !self.roles.is_empty()
    }

    /// Whether any worker has said hello to this shard yet.
    pub fn any_worker_joined(&self) -> bool {
        self.session_of.iter().any(Option::is_some)
    }

    /// True once every worker has left or been declared dead: nobody can
    /// push or pull any more.
    pub fn workers_done(&self) -> bool {
        self.clocks.min_active().is_none()
    }

    /// Pulls currently parked.
    pub fn parked(&self) -> usize {
        self.parked.len()
    }

    /// The earliest time [`poll`](Self::poll) has something to do.
    pub fn next_deadline(&self) -> Option<Instant> {
        let parked = self.parked.iter().map(|p| p.deadline);
        let lost = self
            .lost_at
            .iter()
            .flatten()
            // A `dead_after` too long to add to a reading of the clock
            // never passes.
            .filter_map(|&t| t.checked_add(self.cfg.dead_after));
        parked.chain(lost).min()
    }

    /// The clock the table's contents reflect: every update from clocks
    /// below it is applied.
    fn visible_clock(&self) -> u64 {
        let clock = self
            .clocks
            .min_active()
            .unwrap_or_else(|| self.clocks.iter().map(|(_, c, _)| c).max().unwrap_or(0));
        // Pushes for the hold clock and later may be held back: rows do
        // not include them, so they reflect no clock past it.
        self.hold_from.map_or(clock, |hold| clock.min(hold))
    }

    /// Holds back every push for clock `clock` or later, unapplied and
    /// unacknowledged, until the hold moves past it; `None` applies them
    /// all. Pushes for earlier clocks are applied as they come. While the
    /// slowest active worker is below `clock`, the shard's tables then
    /// hold exactly the pushes of clocks below it, whatever the
    /// consistency model: what a checkpoint taken at `clock` must hold (a
    /// server's [`on_clock`](crate::Server::on_clock) hook holds from its
    /// next multiple). Pulls are answered as of `clock` at the latest,
    /// and a worker whose pushes are held waits for their
    /// acknowledgements once it has too many unacknowledged.
    ///
    /// Moving the hold applies the pushes it no longer holds, in the order
    /// they came, acknowledges them to their workers' connections and
    /// answers the pulls that waited for them.
    pub fn hold_from(
        &mut self,
        clock: Option<u64>,
        tables: &mut dyn ShardTables,
        out: &mut Vec<Output>,
    ) {
        self.hold_from = clock;
        let mut kept = VecDeque::new();
        while let Some(push) = self.held.pop_front() {
            if clock.is_some_and(|hold| push.clock >= hold) {
                kept.push_back(push);
            } else {
                self.apply_held(push, tables, out);
            }
        }
        self.held = kept;
        self.release(out);
    }

    /// The last of worker `w`'s pushes that is applied: the last this
    /// shard took, unless some are held back.
    fn applied_through(&self, w: u32) -> u64 {
        self.held
            .iter()
            .find(|h| h.worker == w)
            .map_or(self.applied[w as usize], |h| h.seq - 1)
    }

    /// Acknowledges push `seq` to `peer`, with the clock the tables reflect.
    fn acknowledge(&self, peer: PeerId, seq: u64, out: &mut Vec<Output>) {
        let ack = PushAck {
            seq,
            min_clock: self.visible_clock(),
        };
        out.push(Output::Send(peer, Reply::PushAck(ack)));
    }

    /// Tells `peer` that push `seq` is taken but held back: it need not
    /// wait for the acknowledgement to leave.
    fn say_held(&self, peer: PeerId, seq: u64, out: &mut Vec<Output>) {
        let held = PushHeld {
            seq,
            hold_from: self.hold_from.unwrap_or_default(),
        };
        out.push(Output::Send(peer, Reply::PushHeld(held)));
    }

    /// Pushes held back now ([`hold_from`](Self::hold_from)).
    pub fn held(&self) -> usize {
        self.held.len()
    }

    /// Applies a push that was held back and acknowledges it on the
    /// worker's current connection. If storage refuses it (it was checked
    /// when it came, so only out of memory), it and the worker's later
    /// held pushes are forgotten, the worker's sequence number and clock
    /// go back to before it, and its connection is closed: the worker
    /// sends them again, since none was acknowledged.
    fn apply_held(&mut self, push: HeldPush, tables: &mut dyn ShardTables, out: &mut Vec<Output>) {
        let (w, wi) = (push.worker, push.worker as usize);
        // Its rows now take the room promised them.
        unpromise(&push, tables);
        for (table, keys, values) in &push.sections {
            if let Err(e) = tables.apply(*table, Keys::Native(keys), values) {
                let (forgotten, kept): (VecDeque<_>, VecDeque<_>) = std::mem::take(&mut self.held)
                    .into_iter()
                    .partition(|h| h.worker == w);
                self.held = kept;
                forgotten.iter().for_each(|h| unpromise(h, tables));
                self.applied[wi] = push.seq - 1;
                if let Some((_, status)) = self.clocks.get(WorkerId(w)) {
                    self.clocks.set(WorkerId(w), push.clock, status);
                }
                if let Some(peer) = self.conn_of[wi] {
                    self.drop_peer(peer, FaultCode::BadRequest, e.to_string(), out);
                }
                return;
            }
            self.stats.rows_applied += keys.len() as u64;
        }
        self.stats.pushes += 1;
        if let Some(peer) = self.conn_of[wi] {
            self.acknowledge(peer, push.seq, out);
        }
    }

    /// Handles one received frame from `peer`.
    pub fn on_frame(
        &mut self,
        peer: PeerId,
        frame: &[u8],
        now: Instant,
        tables: &mut dyn ShardTables,
        out: &mut Vec<Output>,
    ) {
        self.on_split_frame(peer, frame, &[], now, tables, out);
    }

    /// Handles one received frame from `peer` whose last bytes, `tail`,
    /// arrived apart from the rest ([`codec::decode_split`]).
    pub fn on_split_frame(
        &mut self,
        peer: PeerId,
        frame: &[u8],
        tail: &[u8],
        now: Instant,
        tables: &mut dyn ShardTables,
        out: &mut Vec<Output>,
    ) {
        match codec::decode_split(frame, tail, self.cfg.max_payload) {
            Ok(msg) => self.on_message(peer, msg, now, tables, out),
            Err(e) => self.drop_peer(peer, FaultCode::Protocol, decode_reason(&e), out),
        }
    }

    fn drop_peer(&mut self, peer: PeerId, code: FaultCode, text: String, out: &mut Vec<Output>) {
        self.stats.peers_dropped += 1;
        out.push(Output::Send(peer, Reply::Fault(code, text)));
        out.push(Output::Close(peer));
        // What a closed connection means is decided when the transport
        // reports it (`on_disconnect`), as for any other disconnect.
    }

    /// Handles one decoded message from `peer`.
    pub fn on_message(
        &mut self,
        peer: PeerId,
        msg: Message<'_>,
        now: Instant,
        tables: &mut dyn ShardTables,
        out: &mut Vec<Output>,
    ) {
        let role = self.roles.get(&peer).copied();
        match (role, msg) {
            (None, Message::Hello(hello)) => self.on_hello(peer, hello, out),
            (Some(Role::Worker(w)), Message::Push(push)) if push.worker == w => {
                self.on_push(peer, w, push, tables, out)
            }
            (Some(Role::Worker(_)), Message::PullRequest(req)) => {
                self.stats.pulls += 1;
                if let Err(e) = tables.check(req.table, req.keys, None) {
                    return self.drop_peer(peer, FaultCode::BadRequest, e.to_string(), out);
                }
                let mut keys = Vec::with_capacity(req.keys.len());
                req.keys.extend_into(&mut keys);
                let parked = Parked {
                    peer,
                    req: req.req,
                    table: req.table,
                    keys,
                    min_clock: req.min_clock,
                    since: now,
                    // The peer's number: bounded, so that no platform's
                    // clock overflows adding it.
                    deadline: now
                        + Duration::from_millis(req.timeout_ms).min(crate::error::LONGEST_WAIT),
                };
                if self.visible_clock() >= parked.min_clock {
                    self.answer(parked, out);
                } else {
                    self.stats.pulls_parked += 1;
                    self.parked.push(parked);
                }
            }
            (Some(Role::Worker(w)), Message::Leave { worker }) if worker == w => {
                self.retire(w, WorkerStatus::Left, now, out);
            }
            (Some(Role::Controller), Message::Shutdown) => {
                // Every worker still active is told, parked or not: one
                // that calls again after the shard is gone then fails with
                // this reason rather than retrying a closed connection
                // until its timeout. (A worker that left is done.)
                let active = |role: &Role, clocks: &VectorClock| match role {
                    Role::Worker(w) => {
                        clocks.get(WorkerId(*w)).map(|(_, s)| s) == Some(WorkerStatus::Active)
                    }
                    Role::Controller => false,
                };
                self.stop_telling(
                    active,
                    "the shard was shut down by its controller while this worker was still \
                     active",
                    out,
                );
            }
            (Some(_), Message::Fault(_)) => out.push(Output::Close(peer)),
            (role, msg) => {
                let who = match role {
                    None => "an unregistered peer".to_owned(),
                    Some(Role::Controller) => "the controller".to_owned(),
                    Some(Role::Worker(w)) => format!("worker {w}"),
                };
                let text = format!("unexpected {} from {who}", msg.name());
                self.drop_peer(peer, FaultCode::Protocol, text, out);
            }
        }
    }

    fn on_hello(&mut self, peer: PeerId, hello: Hello, out: &mut Vec<Output>) {
        if hello.schema != self.cfg.schema {
            let text = format!(
                "cluster schema {:#018x} differs from this server's {:#018x}: the processes \
                 were configured with different cluster specs (the numbers of servers or \
                 workers, or the tables: names, element types, widths, key ranges, placement \
                 or consistency models)",
                hello.schema, self.cfg.schema
            );
            return self.drop_peer(peer, FaultCode::Schema, text, out);
        }
        let welcome = match hello.role {
            Role::Controller => Welcome {
                shard: self.cfg.shard,
                workers: self.cfg.workers,
                applied_seq: 0,
                clock: self.visible_clock(),
            },
            Role::Worker(w) => {
                let Some((clock, status)) = self.clocks.get(WorkerId(w)) else {
                    let text = format!(
                        "worker id {w} is out of range: the cluster has {} workers",
                        self.cfg.workers
                    );
                    return self.drop_peer(peer, FaultCode::Protocol, text, out);
                };
                let wi = w as usize;
                if self.replaced[wi].contains(&hello.session) {
                    let text = format!(
                        "worker {w} was taken over by another process (session {:#x}); this \
                         one (session {:#x}) no longer speaks for it",
                        self.session_of[wi].unwrap_or_default(),
                        hello.session
                    );
                    return self.drop_peer(peer, FaultCode::Protocol, text, out);
                }
                if status == WorkerStatus::Left && self.session_of[wi] == Some(hello.session) {
                    // The worker reconnected to repeat a leave whose
                    // delivery it could not confirm; leaving again is a
                    // no-op, and it can do nothing else.
                    self.roles.insert(peer, hello.role);
                    let welcome = Welcome {
                        shard: self.cfg.shard,
                        workers: self.cfg.workers,
                        applied_seq: self.applied_through(w),
                        clock,
                    };
                    return out.push(Output::Send(peer, Reply::Welcome(welcome)));
                }
                // A new process claiming a worker that another one spoke for.
                let replacing = self.session_of[wi].filter(|&s| s != hello.session);
                let refused = match status {
                    WorkerStatus::Active => None,
                    WorkerStatus::Dead if replacing.is_some() => None,
                    WorkerStatus::Dead if self.session_of[wi].is_none() => Some(format!(
                        "worker {w} never connected before every other worker was gone, so \
                         it was declared dead: the job is over"
                    )),
                    WorkerStatus::Dead => Some(format!(
                        "worker {w} has been declared dead and this process cannot rejoin as \
                         it; a new process (a new `Worker`) may take its place"
                    )),
                    WorkerStatus::Left => Some(format!(
                        "worker {w} has left and cannot rejoin: its process said it was done"
                    )),
                };
                if let Some(text) = refused {
                    return self.drop_peer(peer, FaultCode::Protocol, text, out);
                }
                if let Some(other) = self.conn_of[wi] {
                    if replacing.is_some() {
                        let text = format!(
                            "worker {w} is already connected as {other} from another process \
                             (session {:#x}, this one {:#x}): two processes claim the same rank",
                            self.session_of[wi].unwrap_or_default(),
                            hello.session
                        );
                        return self.drop_peer(peer, FaultCode::DuplicateWorker, text, out);
                    }
                    // The same process reconnected before this shard noticed
                    // its old connection drop: the new one takes over. Its
                    // resends are deduplicated by sequence number.
                    self.roles.remove(&other);
                    self.parked.retain(|p| p.peer != other);
                    out.push(Output::Close(other));
                }
                let mut clock = clock;
                if let Some(old) = replacing {
                    // The process that spoke for the worker is gone (its
                    // connection closed, and it may have been declared
                    // dead): this one takes its place. It goes on from the
                    // sequence number and clock this shard has for the
                    // worker (the Welcome says both); pushes the old
                    // process sent and this shard never acknowledged are
                    // lost with it. A dead worker comes back no earlier
                    // than the slowest active one, so nobody's reads go
                    // back in time and it holds back no one who went on.
                    self.replaced[wi].push(old);
                    self.stats.workers_replaced += 1;
                    if status == WorkerStatus::Dead {
                        clock = clock.max(self.visible_clock());
                        self.clocks.set(WorkerId(w), clock, WorkerStatus::Active);
                    }
                }
                self.session_of[wi] = Some(hello.session);
                self.conn_of[wi] = Some(peer);
                self.lost_at[wi] = None;
                // The same process learns which of its pushes are applied
                // (and resends the rest, held ones included, which are
                // acknowledged once applied); a new one goes on after
                // every push this shard took, held ones included.
                let applied_seq = match replacing {
                    Some(_) => self.applied[wi],
                    None => self.applied_through(w),
                };
                Welcome {
                    shard: self.cfg.shard,
                    workers: self.cfg.workers,
                    applied_seq,
                    clock,
                }
            }
        };
        self.roles.insert(peer, hello.role);
        out.push(Output::Send(peer, Reply::Welcome(welcome)));
    }

    fn on_push(
        &mut self,
        peer: PeerId,
        w: u32,
        push: codec::Push<'_>,
        tables: &mut dyn ShardTables,
        out: &mut Vec<Output>,
    ) {
        let wi = w as usize;
        let applied = self.applied[wi];
        if push.seq <= applied {
            // A resend after a reconnect: already applied, acknowledge
            // again; or held back (the Welcome said it was not applied),
            // acknowledged once it is.
            self.stats.duplicate_pushes += 1;
            if self.held.iter().any(|h| h.worker == w && h.seq == push.seq) {
                return self.say_held(peer, push.seq, out);
            }
            return self.acknowledge(peer, push.seq, out);
        }
        if push.seq != applied + 1 {
            let text = format!(
                "push sequence gap from worker {w}: got {}, expected {}",
                push.seq,
                applied + 1
            );
            return self.drop_peer(peer, FaultCode::Protocol, text, out);
        }
        let (clock, status) = self.clocks.get(WorkerId(w)).expect("registered worker");
        if status != WorkerStatus::Active {
            let text = format!("worker {w} pushed after it {}", status.as_str());
            return self.drop_peer(peer, FaultCode::Protocol, text, out);
        }
        if push.clock != clock {
            let text = format!(
                "worker {w} pushed for clock {} but is at clock {clock}",
                push.clock
            );
            return self.drop_peer(peer, FaultCode::Protocol, text, out);
        }
        if let Some(table) = repeated_table(&push.sections) {
            let text = format!("worker {w} pushed table {table} in two sections of one push");
            return self.drop_peer(peer, FaultCode::Protocol, text, out);
        }
        // Check every section before applying any, so a bad push changes
        // nothing (the room for the rows it creates in a table with a row
        // limit included).
        for s in push.sections.iter() {
            if let Err(e) = tables.check(s.table, s.keys, Some(s.values.len())) {
                return self.drop_peer(peer, FaultCode::BadRequest, e.to_string(), out);
            }
        }
        if self.hold_from.is_some_and(|hold| push.clock >= hold) {
            // Its rows' room is promised now: later pushes may not take it.
            let mut creates = Vec::new();
            for s in push.sections.iter() {
                match tables.promise(s.table, s.keys) {
                    Ok(keys) if keys.is_empty() => {}
                    Ok(keys) => creates.push((s.table, keys)),
                    Err(e) => {
                        creates
                            .iter()
                            .for_each(|(t, keys)| tables.unpromise(*t, keys));
                        return self.drop_peer(peer, FaultCode::BadRequest, e.to_string(), out);
                    }
                }
            }
            let sections = push
                .sections
                .iter()
                .map(|s| (s.table, s.keys.iter().collect(), s.values.to_vec()))
                .collect();
            self.held.push_back(HeldPush {
                worker: w,
                seq: push.seq,
                clock: push.clock,
                sections,
                creates,
            });
            self.stats.pushes_held += 1;
            self.applied[wi] = push.seq;
            self.say_held(peer, push.seq, out);
            if push.tick {
                self.clocks
                    .set(WorkerId(w), clock + 1, WorkerStatus::Active);
                self.release(out);
            }
            return;
        }
        for s in push.sections.iter() {
            if let Err(e) = tables.apply(s.table, s.keys, s.values) {
                // Checked above; storage refusing now (out of memory) is fatal
                // for this peer, and the push is not acknowledged.
                return self.drop_peer(peer, FaultCode::BadRequest, e.to_string(), out);
            }
            self.stats.rows_applied += s.keys.len() as u64;
        }
        self.applied[wi] = push.seq;
        self.stats.pushes += 1;
        if push.tick {
            self.clocks
                .set(WorkerId(w), clock + 1, WorkerStatus::Active);
        }
        self.acknowledge(peer, push.seq, out);
        if push.tick {
            self.release(out);
        }
    }

    fn retire(&mut self, w: u32, status: WorkerStatus, now: Instant, out: &mut Vec<Output>) {
        let (clock, current) = self.clocks.get(WorkerId(w)).expect("known worker");
        if current == WorkerStatus::Active {
            self.clocks.set(WorkerId(w), clock, status);
        }
        self.lost_at[w as usize] = None;
        self.expect_no_more(now);
        self.release(out);
    }

    /// A worker that never connected cannot be seen to go, so nothing
    /// declares it dead, and a server serving until its workers are done
    /// ([`workers_done`](Self::workers_done)) would wait for it forever: a
    /// process that failed before it connected hung the job. Once every
    /// worker that did connect has left or died, the others count as lost
    /// from `now`: they have [`ServerConfig::dead_after`] to come before
    /// they are declared dead too. (While any worker is active, one that
    /// starts slowly only holds the others back, as it should.)
    fn expect_no_more(&mut self, now: Instant) {
        let active = |w: usize| {
            self.clocks.get(WorkerId(w as u32)).map(|e| e.1) == Some(WorkerStatus::Active)
        };
        let joined = |w: usize| self.session_of[w].is_some();
        let workers = self.session_of.len();
        if !self.any_worker_joined() || (0..workers).any(|w| joined(w) && active(w)) {
            return;
        }
        for w in 0..workers {
            if !joined(w) && active(w) && self.lost_at[w].is_none() {
                self.lost_at[w] = Some(now);
            }
        }
    }

    /// Answers every parked pull the clock now allows.
    fn release(&mut self, out: &mut Vec<Output>) {
        let visible = self.visible_clock();
        let (ready, waiting): (Vec<_>, Vec<_>) = std::mem::take(&mut self.parked)
            .into_iter()
            .partition(|p| visible >= p.min_clock);
        self.parked = waiting;
        for p in ready {
            self.answer(p, out);
        }
    }

    fn answer(&mut self, p: Parked, out: &mut Vec<Output>) {
        out.push(Output::Rows {
            peer: p.peer,
            req: p.req,
            clock: self.visible_clock(),
            table: p.table,
            keys: p.keys,
        });
    }

    /// A connection closed. A worker that did not say `Leave` is declared
    /// dead after [`ServerConfig::dead_after`] unless it reconnects.
    pub fn on_disconnect(&mut self, peer: PeerId, now: Instant) {
        self.parked.retain(|p| p.peer != peer);
        if let Some(Role::Worker(w)) = self.roles.remove(&peer) {
            let wi = w as usize;
            if self.conn_of[wi] == Some(peer) {
                self.conn_of[wi] = None;
                if self.clocks.get(WorkerId(w)).map(|e| e.1) == Some(WorkerStatus::Active) {
                    self.lost_at[wi] = Some(now);
                }
            }
        }
    }

    /// Expires parked pulls and declares lost workers dead, as of `now`.
    pub fn poll(&mut self, now: Instant, out: &mut Vec<Output>) {
        for w in 0..self.lost_at.len() {
            let passed = |t: Instant| t.checked_add(self.cfg.dead_after).is_some_and(|d| now >= d);
            if self.lost_at[w].is_some_and(passed) {
                self.stats.workers_declared_dead += 1;
                self.retire(w as u32, WorkerStatus::Dead, now, out);
            }
        }
        if !self.parked.iter().any(|p| now >= p.deadline) {
            return;
        }
        let (expired, waiting): (Vec<_>, Vec<_>) = std::mem::take(&mut self.parked)
            .into_iter()
            .partition(|p| now >= p.deadline);
        self.parked = waiting;
        for p in expired {
            self.stats.pulls_timed_out += 1;
            let clocks = self
                .clocks
                .iter()
                .map(|(w, c, s)| {
                    let absent =
                        s == WorkerStatus::Active && self.session_of[w.0 as usize].is_none();
                    let code = if absent {
                        STATUS_NEVER_CONNECTED
                    } else {
                        status_code(s)
                    };
                    (w.0, code, c)
                })
                .collect();
            let waited = now.saturating_duration_since(p.since);
            out.push(Output::Send(
                p.peer,
                Reply::PullTimedOut(PullTimedOut {
                    req: p.req,
                    needed: p.min_clock,
                    waited_us: waited.as_micros().min(u128::from(u64::MAX)) as u64,
                    clocks,
                }),
            ));
        }
    }
}

/// Gives back the room promised to the rows held push `push` creates.
fn unpromise(push: &HeldPush, tables: &mut dyn ShardTables) {
    for (table, keys) in &push.creates {
        tables.unpromise(*table, keys);
    }
}

/// A table that two sections of one push name, if any (a worker sends
/// each table's rows in one section).
fn repeated_table(sections: &codec::Sections<'_>) -> Option<u32> {
    if sections.len() < 2 {
        return None;
    }
    let mut tables: Vec<u32> = sections.iter().map(|s| s.table).collect();
    tables.sort_unstable();
    tables.windows(2).find(|p| p[0] == p[1]).map(|p| p[0])
}

fn decode_reason(e: &DecodeError) -> String {
    format!("undecodable frame: {e}")
}

/// A worker status as sent in [`PullTimedOut::clocks`].
pub(crate) fn status_code(s: WorkerStatus) -> u32 {
    match s {
        WorkerStatus::Active => 0,
        WorkerStatus::Left => 1,
        WorkerStatus::Dead => 2,
    }
}

/// The status sent in [`PullTimedOut::clocks`] for a worker that is
/// active but has never said hello to the shard.
pub(crate) const STATUS_NEVER_CONNECTED: u32 = 3;

/// The inverse of [`status_code`] (a worker that never connected is
/// active); unknown codes read as dead.
pub(crate) fn status_from_code(c: u32) -> WorkerStatus {
    match c {
        0 | STATUS_NEVER_CONNECTED => WorkerStatus::Active,
        1 => WorkerStatus::Left,
        _ => WorkerStatus::Dead,
    }
}
