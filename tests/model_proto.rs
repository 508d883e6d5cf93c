//! The protocol's state machines under random schedules, without threads
//! or transports: per-connection FIFO queues delivered in a random order,
//! with connections cut and re-established mid-run (in-flight frames lost,
//! unacknowledged pushes resent).
//!
//! One-row pull answers come whole or, in some runs, in pieces of a few
//! elements (as a shared-memory server sends long rows). In some runs the
//! worker's frames hold one row at most, so its pushes of a clock go as
//! several messages and its pulls as several requests per shard.
//!
//! Workers are also replaced mid-run: between clocks, once its pushes were
//! acknowledged, a worker's process "dies" (its connections close, frames
//! in flight are lost) and a new client with another session takes its
//! place, going on from the clock and sequence numbers the shards have.
//!
//! The cluster has two tables with the same keys: one under SSP(s), the
//! other under a model of its own (BSP, SSP with another bound, or Async),
//! as a consistency model is chosen per table. Every clock each worker
//! pulls and pushes every row of both.
//!
//! Checked: no worker at clock `c` ever reads a row missing an update from
//! a clock `<= c - s - 1`, for its table's `s` (none under Async), nor one
//! of another row or table; every push is applied exactly once (final sums
//! equal the clocks each worker finished); and every schedule runs to
//! completion.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use laggard::proto::{
    ClientCore, Hello, Keys, Message, Output, PullResponse, Role, RowPiece, ServerConfig,
    ServerCore, ShardTables, TableInfo, decode,
};
use laggard::transport::{KeptFrame, PeerId};
use laggard::{Consistency, ElementKind, Error, Placement, ShardMap};
use proptest::prelude::*;

const MAX: usize = 1 << 20;
/// Keys each shard owns.
const KEYS_PER_SHARD: usize = 2;
/// Tables of the cluster: the first under SSP(s), the second under a
/// consistency model of its own (BSP, another SSP bound, or Async), with
/// the same keys, so a row answered or cached under the wrong table shows.
const TABLES: usize = 2;
/// Elements after the workers' counts in every row, so that rows are long
/// enough for a frame limit to fit one row but not two, for pushes and
/// pull answers alike. The first counts the row's key once per push, so a
/// row read under another key's name shows; the rest stay zero.
const PAD: usize = 4;

/// What every push to row `key` of table `t` adds to the element after
/// the workers' counts: a row read under another row's name shows.
fn tag(t: u32, key: u64) -> i64 {
    key as i64 + 100 * i64::from(t)
}

/// Every `(table, key)` of the cluster's `keys` keys per table.
fn every_row(keys: u64) -> impl Iterator<Item = (u32, u64)> {
    (0..TABLES as u32).flat_map(move |t| (0..keys).map(move |k| (t, k)))
}

/// Storage model: `TABLES` tables of i64 rows of width P + PAD, Sum rule.
struct Model {
    width: usize,
    rows: HashMap<(u32, u64), Vec<i64>>,
    shard: usize,
    map: ShardMap,
}

impl ShardTables for Model {
    fn len(&self) -> usize {
        TABLES
    }
    fn check(&self, table: u32, keys: Keys<'_>, value_len: Option<usize>) -> laggard::Result<()> {
        assert!((table as usize) < TABLES);
        if let Some(len) = value_len {
            assert_eq!(len, keys.len() * self.width * 8);
        }
        for k in keys.iter() {
            assert_eq!(self.map.shard_of(k)?, self.shard);
        }
        Ok(())
    }
    // No table here has a row limit: there is no room to promise.
    fn promise(&mut self, _: u32, _: Keys<'_>) -> laggard::Result<Vec<u64>> {
        Ok(Vec::new())
    }
    fn unpromise(&mut self, _: u32, _: &[u64]) {}
    fn apply(&mut self, table: u32, keys: Keys<'_>, values: &[u8]) -> laggard::Result<()> {
        for (k, row) in keys.iter().zip(values.chunks_exact(self.width * 8)) {
            let r = self
                .rows
                .entry((table, k))
                .or_insert_with(|| vec![0; self.width]);
            for (x, b) in r.iter_mut().zip(row.chunks_exact(8)) {
                *x += i64::from_le_bytes(b.try_into().unwrap());
            }
        }
        Ok(())
    }
    fn row_bytes(&self, _: u32) -> usize {
        self.width * 8
    }
}

#[derive(Debug, PartialEq)]
enum Phase {
    NeedPull,
    Pulling(Vec<u64>),
    NeedPush,
    Leaving,
    Done,
}

struct Sim {
    workers: usize,
    shards: usize,
    clocks: u64,
    servers: Vec<(ServerCore, Model)>,
    clients: Vec<ClientCore>,
    phase: Vec<Phase>,
    /// `peer[w][s]`: the server-side id of worker w's connection to shard s.
    peer: Vec<Vec<PeerId>>,
    next_peer: u64,
    /// Frames in flight per (worker, shard): to the server, to the worker.
    up: HashMap<(usize, usize), VecDeque<Vec<u8>>>,
    down: HashMap<(usize, usize), VecDeque<Vec<u8>>>,
    now: Instant,
    violations: Vec<String>,
    duplicated: u64,
    /// Frames to a worker are handed over in turn as an owned buffer
    /// (`on_owned_frame`, which keeps a one-row pull response in the cache
    /// as it is), as a kept frame (`on_kept_frame`, which caches the rows
    /// of any pull response where they lie in it; every fifth time the
    /// worker then copies its kept rows out, as when they crowd their
    /// sender) and decoded in place (`on_message`).
    delivered: u64,
    /// If set, one-row pull answers go in pieces of this many bytes.
    piece: Option<usize>,
    /// Keys of the table: `KEYS_PER_SHARD` per shard.
    keys: u64,
    /// Whether the workers' frames hold one row at most.
    one_row_frames: bool,
    /// The workers' cache budget in rows, if any.
    cache_rows: Option<usize>,
    /// The clock each shard holds pushes from, if any.
    hold: Vec<Option<u64>>,
    /// Each worker's current session (process).
    session: Vec<u64>,
    /// Workers whose new process waits for every shard's welcome before
    /// it joins ([`ClientCore::join`]) and does anything else.
    joining: Vec<bool>,
    /// Workers replaced so far.
    replaced: u64,
    tables: Arc<[TableInfo]>,
}

impl Sim {
    // One argument per generated parameter of the proptest below.
    #[allow(clippy::too_many_arguments)]
    fn new(
        workers: usize,
        shards: usize,
        clocks: u64,
        consistency: [Consistency; TABLES],
        piece: Option<usize>,
        one_row_frames: bool,
        cache_rows: Option<usize>,
        read_my_writes: bool,
    ) -> Self {
        let keys = (shards * KEYS_PER_SHARD) as u64;
        let width = workers + PAD;
        let map = ShardMap::new(Placement::RoundRobin, shards, 0..=(keys - 1)).unwrap();
        let tables: Arc<[TableInfo]> = consistency
            .iter()
            .enumerate()
            .map(|(t, &consistency)| TableInfo {
                name: format!("t{t}"),
                kind: ElementKind::I64,
                width,
                consistency,
                map: map.clone(),
                // The Sum rule: replayable, so workers read their own pushes.
                replay: read_my_writes.then_some(1.0),
                sums_deltas: true,
            })
            .collect();
        let servers = (0..shards)
            .map(|s| {
                let core = ServerCore::new(ServerConfig {
                    shard: s as u32,
                    workers: workers as u32,
                    schema: 7,
                    dead_after: Duration::from_secs(3600),
                    max_payload: MAX,
                });
                let model = Model {
                    width,
                    rows: HashMap::new(),
                    shard: s,
                    map: map.clone(),
                };
                (core, model)
            })
            .collect();
        let mut sim = Sim {
            workers,
            shards,
            clocks,
            servers,
            clients: (0..workers)
                .map(|w| client(w, shards, &tables, one_row_frames, piece, cache_rows))
                .collect(),
            phase: (0..workers).map(|_| Phase::NeedPull).collect(),
            peer: vec![vec![PeerId(0); shards]; workers],
            next_peer: 1,
            up: HashMap::new(),
            down: HashMap::new(),
            now: Instant::now(),
            violations: Vec::new(),
            duplicated: 0,
            delivered: 0,
            piece,
            keys,
            one_row_frames,
            cache_rows,
            hold: vec![None; shards],
            session: (0..workers as u64).collect(),
            joining: vec![false; workers],
            replaced: 0,
            tables,
        };
        for w in 0..workers {
            for s in 0..shards {
                sim.connect(w, s);
            }
        }
        sim
    }

    fn connect(&mut self, w: usize, s: usize) {
        self.peer[w][s] = PeerId(self.next_peer);
        self.next_peer += 1;
        let hello = Message::Hello(Hello {
            role: Role::Worker(w as u32),
            schema: 7,
            session: self.session[w],
        });
        self.up.entry((w, s)).or_default().push_back(hello.to_vec());
    }

    /// Cuts the connection: frames in flight are lost; the worker
    /// reconnects and its pull in flight (if any) fails and is retried.
    fn cut(&mut self, w: usize, s: usize) {
        self.up.entry((w, s)).or_default().clear();
        self.down.entry((w, s)).or_default().clear();
        let old = self.peer[w][s];
        self.servers[s].0.on_disconnect(old, self.now);
        let err = Error::Disconnected {
            peer: "sim".into(),
            reason: "cut".into(),
        };
        self.clients[w].fail_shard(s, &err);
        if let Phase::Pulling(reqs) = &self.phase[w] {
            for &r in reqs {
                let _ = self.clients[w].take_outcome(r);
            }
            self.phase[w] = Phase::NeedPull;
        }
        self.connect(w, s);
    }

    /// Between clocks, once every shard welcomed worker `w` and
    /// acknowledged its every push, its process dies and a new one takes its place: the connections close,
    /// frames in flight are lost, and a new client with a new session
    /// connects to every shard.
    fn replace(&mut self, w: usize) {
        let core = &self.clients[w];
        if self.phase[w] != Phase::NeedPull
            || self.joining[w]
            || !core.acked_through(&core.last_sent())
            || !(0..self.shards).all(|s| core.is_welcomed(s))
        {
            return;
        }
        for s in 0..self.shards {
            self.up.entry((w, s)).or_default().clear();
            self.down.entry((w, s)).or_default().clear();
            self.servers[s].0.on_disconnect(self.peer[w][s], self.now);
        }
        self.clients[w] = client(
            w,
            self.shards,
            &self.tables,
            self.one_row_frames,
            self.piece,
            self.cache_rows,
        );
        self.session[w] += 1_000;
        self.joining[w] = true;
        self.replaced += 1;
        for s in 0..self.shards {
            self.connect(w, s);
        }
    }

    /// The network delivers the push at the front of the queue twice (as a
    /// retransmission would).
    fn duplicate_push(&mut self, w: usize, s: usize) {
        let q = self.up.entry((w, s)).or_default();
        if let Some(front) = q
            .front()
            .filter(|f| matches!(decode(f, MAX), Ok(Message::Push(_))))
        {
            let copy = front.clone();
            q.push_front(copy);
            self.duplicated += 1;
        }
    }

    fn worker_step(&mut self, w: usize) {
        if self.joining[w] {
            return;
        }
        let core = &mut self.clients[w];
        match &self.phase[w] {
            Phase::NeedPull => {
                let keys: Vec<u64> = (0..self.keys).collect();
                let mut reqs = Vec::new();
                for t in 0..TABLES as u32 {
                    reqs.extend(core.plan_pull(t, &keys, Duration::from_secs(3600)).unwrap());
                }
                for &r in &reqs {
                    let (s, frame) = core.with_request(r, |s, m| (s, m.to_vec())).unwrap();
                    if self.one_row_frames {
                        let Message::PullRequest(p) = decode(&frame, MAX).unwrap() else {
                            panic!("not a pull request")
                        };
                        assert_eq!(p.keys.len(), 1, "a pull of two rows in one request");
                    }
                    self.up.entry((w, s)).or_default().push_back(frame);
                }
                self.phase[w] = Phase::Pulling(reqs);
                self.worker_step(w);
            }
            Phase::Pulling(reqs) => {
                let mut pending = Vec::new();
                for &r in reqs {
                    match core.take_outcome(r) {
                        None => pending.push(r),
                        Some(Ok(())) => {}
                        Some(Err(e)) => panic!("pull failed: {e}"),
                    }
                }
                if !pending.is_empty() {
                    self.phase[w] = Phase::Pulling(pending);
                    return;
                }
                // Check each table's guarantee on every key.
                let c = core.clock();
                for (t, key) in every_row(self.keys) {
                    let row = core.cached(t, key).unwrap();
                    let element =
                        |i: usize| i64::from_le_bytes(row[i * 8..][..8].try_into().unwrap());
                    let pushes: i64 = (0..self.workers).map(element).sum();
                    if element(self.workers) != tag(t, key) * pushes {
                        self.violations.push(format!(
                            "worker {w} read table {t} key {key}'s row as {:?}: another row's",
                            (0..self.workers + 1).map(element).collect::<Vec<_>>()
                        ));
                    }
                    // Read-my-writes: every push of the worker's own, the
                    // ones the shard has not applied yet included.
                    let own = element(w);
                    if self.tables[t as usize].replay.is_some() && own as u64 != c {
                        self.violations.push(format!(
                            "worker {w} at clock {c} read table {t} key {key} with {own} of its own pushes"
                        ));
                    }
                    // Every worker runs all clocks (one that left had
                    // pushed them all first), so all must be at c - s
                    // (c under BSP; nothing is required under Async).
                    // Worked out here, not by the library's own rule.
                    let consistency = self.tables[t as usize].consistency;
                    let needed = match consistency {
                        Consistency::Bsp => c,
                        Consistency::Ssp { staleness } => c.saturating_sub(staleness),
                        Consistency::Async => 0,
                    };
                    for other in 0..self.workers {
                        let seen = element(other);
                        if (seen as u64) < needed {
                            self.violations.push(format!(
                                "worker {w} at clock {c} saw table {t} ({consistency}) key {key} with {seen} clocks of worker {other} (needs {needed})"
                            ));
                        }
                    }
                }
                self.phase[w] = Phase::NeedPush;
            }
            Phase::NeedPush => {
                for (t, key) in every_row(self.keys) {
                    let mut delta = vec![0i64; self.workers + PAD];
                    delta[w] = 1;
                    delta[self.workers] = tag(t, key);
                    core.pending_add(t, key, &delta).unwrap();
                }
                let sent = core.flush(true);
                for (s, seq) in sent {
                    let frame = core.with_push(s, seq, |m| m.to_vec()).unwrap();
                    if self.one_row_frames {
                        let Message::Push(p) = decode(&frame, MAX).unwrap() else {
                            panic!("not a push")
                        };
                        let rows: usize = p.sections.iter().map(|s| s.keys.len()).sum();
                        assert_eq!(rows, 1, "a push of {rows} rows in one frame");
                    }
                    self.up.entry((w, s)).or_default().push_back(frame);
                }
                self.phase[w] = if core.clock() == self.clocks {
                    Phase::Leaving
                } else {
                    Phase::NeedPull
                };
            }
            Phase::Leaving => {
                // As `Worker::leave`: only once every shard took every
                // push, applying it (acknowledged) or holding it back for a
                // hook, which applies it later (`finish` and the final
                // exactness check: exactly once, though the worker left).
                let sent = core.last_sent();
                if core.taken_through(&sent) {
                    // An acknowledged push is applied (not merely held).
                    let acked = core.acked_through(&sent);
                    for (s, (_, model)) in self.servers.iter().enumerate().filter(|_| acked) {
                        for (key, row) in &model.rows {
                            if row[w] as u64 != self.clocks {
                                self.violations.push(format!(
                                    "worker {w}'s pushes are all acknowledged, but shard {s} \
                                     applied {} clocks of them to (table, key) {key:?}",
                                    row[w]
                                ));
                            }
                        }
                    }
                    for s in 0..self.shards {
                        let leave = Message::Leave { worker: w as u32 }.to_vec();
                        self.up.entry((w, s)).or_default().push_back(leave);
                    }
                    self.phase[w] = Phase::Done;
                }
            }
            Phase::Done => {}
        }
    }

    fn deliver_up(&mut self, w: usize, s: usize) -> bool {
        let Some(frame) = self.up.entry((w, s)).or_default().pop_front() else {
            return false;
        };
        let peer = self.peer[w][s];
        let mut out = Vec::new();
        let (core, model) = &mut self.servers[s];
        core.on_frame(peer, &frame, self.now, model, &mut out);
        self.route(s, out);
        true
    }

    /// Moves shard `s`'s hold to `clock` (see `ServerCore::hold_from`)
    /// and routes what that sends.
    fn hold(&mut self, s: usize, clock: Option<u64>) {
        self.hold[s] = clock;
        let mut out = Vec::new();
        let (core, model) = &mut self.servers[s];
        core.hold_from(clock, model, &mut out);
        self.route(s, out);
    }

    /// As a clock hook does: once shard `s`'s slowest active worker
    /// reached its hold, moves the hold `1 + ahead` clocks past it.
    fn hook(&mut self, s: usize, ahead: u64) {
        let min = self.servers[s].0.clocks().min_active();
        if let (Some(min), Some(hold)) = (min, self.hold[s]) {
            if min >= hold {
                self.hold(s, Some(min + 1 + ahead));
            }
        }
    }

    /// Checks that no shard applied a push for a clock at or past its
    /// hold: each worker's element of a row counts its applied clocks.
    fn check_hold(&mut self) {
        for (s, (_, model)) in self.servers.iter().enumerate() {
            let Some(hold) = self.hold[s] else { continue };
            for (key, row) in &model.rows {
                if row[..self.workers].iter().any(|&n| n as u64 > hold) {
                    self.violations.push(format!(
                        "shard {s} applied pushes past the hold at clock {hold}: (table, key) {key:?} is {row:?}"
                    ));
                }
            }
        }
    }

    /// Sends what shard `s` output to the workers whose connections it
    /// names (to none, if that connection is gone).
    fn route(&mut self, s: usize, out: Vec<Output>) {
        let model = &self.servers[s].1;
        for o in out {
            let (p, bytes) = match o {
                Output::Send(_, laggard::proto::Reply::Fault(_, text)) => {
                    panic!("server fault: {text}")
                }
                Output::Send(p, reply) => (p, reply.message().to_vec()),
                Output::Rows {
                    peer,
                    req,
                    clock,
                    table,
                    keys,
                } => {
                    let mut values = Vec::new();
                    for k in &keys {
                        let row = model
                            .rows
                            .get(&(table, *k))
                            .cloned()
                            .unwrap_or(vec![0; model.width]);
                        row.iter()
                            .for_each(|x| values.extend_from_slice(&x.to_le_bytes()));
                    }
                    // A one-row answer may go in pieces, one frame each.
                    if let (Some(piece), [_]) = (self.piece, &keys[..]) {
                        let Some(dest) = (0..self.workers).find(|&x| self.peer[x][s] == peer)
                        else {
                            continue;
                        };
                        for (i, part) in values.chunks(piece).enumerate() {
                            let msg = Message::RowPiece(RowPiece {
                                req,
                                clock,
                                table,
                                offset: (i * piece) as u64,
                                total: values.len() as u64,
                                values: part,
                            });
                            self.down
                                .entry((dest, s))
                                .or_default()
                                .push_back(msg.to_vec());
                        }
                        continue;
                    }
                    let msg = Message::PullResponse(PullResponse {
                        req,
                        clock,
                        table,
                        rows: keys.len() as u32,
                        values: &values,
                    });
                    (peer, msg.to_vec())
                }
                other => panic!("unexpected server output {other:?}"),
            };
            // Route to whichever worker owns that server-side peer id.
            if let Some(dest) = (0..self.workers).find(|&x| self.peer[x][s] == p) {
                self.down.entry((dest, s)).or_default().push_back(bytes);
            }
        }
    }

    fn deliver_down(&mut self, w: usize, s: usize) -> bool {
        let Some(frame) = self.down.entry((w, s)).or_default().pop_front() else {
            return false;
        };
        let core = &mut self.clients[w];
        self.delivered += 1;
        match decode(&frame, MAX).unwrap() {
            Message::Welcome(welcome) => {
                for seq in core.on_welcome(s, &welcome).unwrap() {
                    let frame = core.with_push(s, seq, |m| m.to_vec()).unwrap();
                    self.up.entry((w, s)).or_default().push_back(frame);
                }
                // A new process joins once every shard welcomed it.
                if self.joining[w] && (0..self.shards).all(|s| core.is_welcomed(s)) {
                    for (s, seq) in core.join().unwrap() {
                        let frame = core.with_push(s, seq, |m| m.to_vec()).unwrap();
                        self.up.entry((w, s)).or_default().push_back(frame);
                    }
                    self.joining[w] = false;
                }
            }
            _ if self.delivered % 3 == 0 => {
                core.on_owned_frame(s, frame, MAX).unwrap();
            }
            _ if self.delivered % 3 == 1 => {
                core.on_kept_frame(s, KeptFrame::new(frame), MAX).unwrap();
                if self.delivered % 5 == 0 {
                    core.copy_out_kept_rows();
                }
            }
            msg => core.on_message(s, msg).unwrap(),
        }
        true
    }

    /// Delivers and steps round-robin until everyone is done, with no
    /// hold.
    fn finish(&mut self) {
        for s in 0..self.shards {
            self.hold(s, None);
        }
        for _ in 0..100_000 {
            let mut progressed = false;
            for w in 0..self.workers {
                for s in 0..self.shards {
                    progressed |= self.deliver_up(w, s);
                    progressed |= self.deliver_down(w, s);
                }
                let before = format!("{:?}", self.phase[w]);
                self.worker_step(w);
                progressed |= before != format!("{:?}", self.phase[w]);
            }
            if !progressed {
                break;
            }
        }
    }
}

/// Worker `w`'s protocol client, at clock 0, caching up to `cache_rows`
/// rows (unbounded if `None`).
fn client(
    w: usize,
    shards: usize,
    tables: &Arc<[TableInfo]>,
    one_row_frames: bool,
    piece: Option<usize>,
    cache_rows: Option<usize>,
) -> ClientCore {
    let mut core = ClientCore::new(w as u32, shards, tables.clone());
    if let Some(rows) = cache_rows {
        core.set_cache_limit(rows * tables[0].row_bytes());
    }
    if one_row_frames {
        // A push of one row: header and push fields (48), section head
        // (16), key (8), row. Two rows' pull answer (48 + 2 rows) is
        // longer, as rows are over 24 bytes.
        let width = tables[0].width;
        core.set_frame_limit(72 + width * 8, piece.is_some());
    }
    core
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(96))]
    #[test]
    fn ssp_guarantee_and_exactly_once_under_random_schedules(
        workers in 1usize..4,
        shards in 1usize..3,
        clocks in 1u64..6,
        staleness in 0u64..3,
        second in prop_oneof![
            Just(Consistency::Bsp),
            (0u64..3).prop_map(|staleness| Consistency::Ssp { staleness }),
            Just(Consistency::Async),
        ],
        schedule in proptest::collection::vec(any::<u16>(), 0..400),
        piece_elements in proptest::option::of(1usize..4),
        one_row_frames in any::<bool>(),
        cache_rows in proptest::option::of(0usize..4),
        hold_from in proptest::option::of(1u64..4),
        read_my_writes in any::<bool>(),
    ) {
        let piece = piece_elements.map(|n| n * 8);
        let mut sim =
            Sim::new(workers, shards, clocks, [Consistency::Ssp { staleness }, second], piece, one_row_frames, cache_rows, read_my_writes);
        // Shards that hold pushes from the start, as a server with a clock
        // hook does.
        for s in 0..shards {
            sim.hold(s, hold_from);
        }
        for choice in schedule {
            let choice = choice as usize;
            let w = choice % workers;
            let s = (choice / workers) % shards;
            match (choice / (workers * shards)) % 23 {
                0..=5 => sim.worker_step(w),
                6..=12 => { sim.deliver_up(w, s); }
                13..=18 => { sim.deliver_down(w, s); }
                19 => sim.duplicate_push(w, s),
                20 if sim.phase[w] != Phase::Done => sim.cut(w, s),
                21 => sim.replace(w),
                22 => sim.hook(s, (choice as u64 >> 12) % 3),
                _ => {}
            }
            sim.check_hold();
        }
        sim.finish();
        prop_assert_eq!(&sim.violations, &Vec::<String>::new());
        for w in 0..workers {
            prop_assert_eq!(&sim.phase[w], &Phase::Done, "worker {} did not finish", w);
        }
        let dups: u64 = sim.servers.iter().map(|(c, _)| c.stats().duplicate_pushes).sum();
        // Beyond the duplicates made, a worker resends only pushes a
        // shard held back when it reconnected (the Welcome says they are
        // not applied yet).
        if hold_from.is_none() {
            prop_assert!(dups <= sim.duplicated, "{} duplicates acknowledged, {} made", dups, sim.duplicated);
        }
        let mut exact = vec![clocks as i64; workers];
        exact.resize(workers + PAD, 0);
        for (t, key) in every_row(sim.keys) {
            // Exactly once: each worker's element counts its clocks.
            let shard = sim.servers[0].1.map.shard_of(key).unwrap();
            let (_, model) = &sim.servers[shard];
            let row = model.rows.get(&(t, key)).cloned().unwrap_or_default();
            exact[workers] = tag(t, key) * clocks as i64 * workers as i64;
            prop_assert_eq!(&row, &exact, "table {} key {}", t, key);
        }
        for (core, _) in &sim.servers {
            prop_assert_eq!(core.parked(), 0);
            prop_assert_eq!(core.stats().workers_replaced, sim.replaced);
        }
    }
}
