//! The worker client's state machine: coalesced pushes with sequence
//! numbers kept until acknowledged, and the SSP cache that answers pulls
//! locally while they are fresh enough.
//!
//! Sans-IO: methods take what arrived and say what to send; the runtime
//! (`Worker`) encodes and moves frames.
//!
//! # Freshness (lazy communication)
//! A row fetched from a server is tagged with the server's visible clock
//! `m`: it holds every update from clocks below `m`. A worker at clock `c`
//! under SSP(s) needs every update from clocks `<= c - s - 1`, so a cached
//! row is fresh while `m >= c - s`; only otherwise does a pull go to the
//! server, which parks it until the slowest worker reaches `c - s`. Under
//! BSP (`s = 0`) that means once per clock; under Async (no bound) a row is
//! reused within the clock it was fetched in and fetched again after.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use super::codec::{
    FaultCode, Keys, Message, PUSH_HEAD_LEN, PullRequest, PullResponse, PullTimedOut, Push,
    RowPiece, Section, Sections, Welcome, decode, push_section_len,
};
use super::server::{STATUS_NEVER_CONNECTED, status_from_code};
use crate::clock::{Consistency, GateTimeout, VectorClock, WorkerId};
use crate::element::{
    Element, ElementKind, add_le_slice, le_bytes, replay_le, replay_le_bytes, write_le_slice,
};
use crate::error::{Error, Result};
use crate::idhash::IdMap;
use crate::table::ShardMap;
use crate::transport::{KeptFrame, Stash};

/// What every participant must agree on about one table.
#[derive(Debug, Clone, PartialEq)]
pub struct TableInfo {
    /// The table's name.
    pub name: String,
    /// Its element type.
    pub kind: ElementKind,
    /// Elements per row.
    pub width: usize,
    /// Its consistency model.
    pub consistency: Consistency,
    /// Which server shard owns which key.
    pub map: ShardMap,
    /// `Some(k)` if the table's update rule applies a delta as
    /// `x += k * d` ([`Update::replay_scale`](crate::Update::replay_scale)):
    /// the worker then replays its own pushes onto its cached rows, so
    /// that its reads include them.
    pub replay: Option<f64>,
    /// Whether two deltas pushed to one row within a clock are summed
    /// ([`Update::sums_deltas`](crate::Update::sums_deltas)); if not, the
    /// later replaces the earlier.
    pub sums_deltas: bool,
}

impl TableInfo {
    /// Bytes per row on the wire.
    pub fn row_bytes(&self) -> usize {
        self.width * self.kind.size()
    }
}

/// Counters a worker client keeps, so the effect of lazy communication and
/// coalescing is visible.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ClientStats {
    /// Frames sent, of any kind.
    pub messages_sent: u64,
    /// Bytes of frames sent.
    pub bytes_sent: u64,
    /// Frames received.
    pub messages_received: u64,
    /// Bytes of frames received.
    pub bytes_received: u64,
    /// Push messages sent (one per shard per clock, plus explicit flushes,
    /// and more where a push is longer than the largest frame).
    pub push_messages: u64,
    /// Pull request messages sent.
    pub pull_messages: u64,
    /// Rows passed to `push`.
    pub rows_pushed: u64,
    /// Of those, rows summed into a row already pending for the same clock.
    pub rows_coalesced: u64,
    /// Of the rows pushed, rows kept in the transport's memory until they
    /// were sent and acknowledged ([`Endpoint::stash`](crate::transport::Endpoint::stash)):
    /// long rows over shared memory, which the server applies in place.
    pub rows_stashed: u64,
    /// Rows asked for by `pull`.
    pub rows_pulled: u64,
    /// Of those, rows answered from the cache.
    pub rows_from_cache: u64,
    /// Rows cached in the frame that brought them, where it landed in
    /// transport memory ([`Endpoint::keep_frame`](crate::transport::Endpoint::keep_frame)):
    /// long pulled rows over RDMA, never copied out of the ring the
    /// server's device wrote them to.
    pub rows_kept: u64,
    /// Of those, rows copied out of their frame after all, because the
    /// frames kept crowded their sender's room
    /// ([`Endpoint::kept_frames_crowd`](crate::transport::Endpoint::kept_frames_crowd)).
    pub kept_rows_copied: u64,
    /// Cached rows dropped to keep the cache within its budget
    /// ([`ClusterSpec::cache_bytes`](crate::ClusterSpec::cache_bytes)).
    pub rows_evicted: u64,
    /// The worker's own pushes replayed onto cached rows, so that its
    /// reads include them ([`TableInfo::replay`]).
    pub own_pushes_replayed: u64,
    /// Connections to a server re-established after they dropped.
    pub reconnects: u64,
}

/// Unacknowledged pushes per shard before a worker waits for
/// acknowledgements (the runtime's `clock` does): what is kept for
/// resending stays bounded.
pub(crate) const MAX_UNACKED: usize = 64;

/// Buffers of replaced cached rows kept for rows that arrive in pieces.
const SPARE_ROWS: usize = 2;

/// Rows at least this long are pending in a stash of the transport's
/// memory when it lends one ([`ClientCore::pending_add_stashing`]).
pub const STASH_MIN_ROW: usize = 64 << 10;

/// Where a pending row's deltas are.
#[derive(Debug, Clone, Copy)]
enum Slot {
    /// At this byte offset in [`Rows::values`].
    Inline(usize),
    /// In [`Rows::stashed`] at this index.
    Stashed(usize),
}

/// Rows pending for one table and shard: deltas summed per key.
#[derive(Debug, Default)]
struct Rows {
    index: IdMap<u64, Slot>,
    keys: Vec<u64>,
    values: Vec<u8>,
    /// Long rows kept in transport memory, each sent as a push of its own.
    stashed: Vec<(u64, Stash)>,
}

impl Rows {
    fn is_empty(&self) -> bool {
        self.keys.is_empty() && self.stashed.is_empty()
    }

    /// Empties the set, keeping its allocations for the next clock (and
    /// giving stashes back to the transport).
    fn clear(&mut self) {
        self.index.clear();
        self.keys.clear();
        self.values.clear();
        self.stashed.clear();
    }
}

/// A push sent but not yet acknowledged, kept to resend after a reconnect.
#[derive(Debug)]
struct Sent {
    seq: u64,
    clock: u64,
    tick: bool,
    sections: Vec<(u32, Rows)>,
    /// One long row kept in a stash, `(table, key, stash)`: the push's
    /// last section, its values the stash's first bytes.
    stashed: Option<(u32, u64, Stash)>,
}

#[derive(Debug, Default)]
struct Link {
    /// The sequence number of the next push.
    next_seq: u64,
    /// Sent (or, while not welcomed, queued) and not yet acknowledged.
    unacked: VecDeque<Sent>,
    /// `(seq, hold_from)` of the latest [`PushHeld`](super::PushHeld) on
    /// this connection: the shard took every push through `seq`, holding
    /// back those for clock `hold_from` and later. Cleared once those are
    /// acknowledged, and when the connection drops (the shard says it
    /// again for each resend).
    held: Option<(u64, u64)>,
    /// True between the server's welcome and a disconnect. Pushes made
    /// while false are queued and sent, in order, after the next welcome,
    /// so the server never sees a sequence gap.
    welcomed: bool,
    /// The worker's clock as the shard's first welcome gave it (`None`
    /// until then): 0 for a new worker, more for a process that takes the
    /// place of one that is gone.
    joined_at: Option<u64>,
}

impl Link {
    /// A protocol error unless push `seq` went out on this link: `what`
    /// (a message from `shard`) named it.
    fn check_sent(&self, shard: usize, seq: u64, what: &str) -> Result<()> {
        if seq >= self.next_seq {
            return Err(protocol(
                shard,
                format!("{what} for push {seq}, which was never sent"),
            ));
        }
        Ok(())
    }
}

#[derive(Debug)]
struct Cached {
    /// Every update from clocks below this is in `values`.
    data_clock: u64,
    /// The worker's clock when the row was fetched.
    fetched_at: u64,
    /// The worker pushed to the row without replaying the push onto it
    /// ([`ClientCore::replay_push`]): it answers no pull, and the next
    /// answer from the server replaces it (its buffer is reused).
    lacks_own_push: bool,
    /// The row's little-endian bytes are `values[at..at + row_bytes]`: a
    /// row adopted with its frame ([`ClientCore::on_owned_frame`],
    /// [`ClientCore::on_kept_frame`]) lies where it arrived, after the
    /// frame's header.
    values: RowBytes,
    at: usize,
    /// When the row was last asked for ([`ClientCore::plan_pull`]'s count
    /// when it was fetched or answered a pull): the least recently used
    /// rows are dropped first when the cache outgrows its budget.
    used: u64,
}

/// What a received frame holds: see [`ClientCore::rows_in`].
enum InFrame<'f> {
    /// The rows of a response to request `req`, at version `clock`,
    /// from byte `at` of the frame on.
    Rows { req: u64, clock: u64, at: usize },
    /// Any other message.
    Other(Message<'f>),
}

/// The buffer a cached row lies in.
#[derive(Debug)]
enum RowBytes {
    /// The worker's own.
    Owned(Vec<u8>),
    /// A frame kept in transport memory, shared by the rows it brought.
    Kept(KeptFrame),
}

impl RowBytes {
    fn bytes(&self) -> &[u8] {
        match self {
            RowBytes::Owned(v) => v,
            RowBytes::Kept(f) => f,
        }
    }

    /// The worker's own buffer, for reuse (a new one in place of a kept
    /// frame, which is released). Its old bytes stay: whoever takes it
    /// replaces them, and a transport that pools it as a frame buffer
    /// (`take_frame`) need not zero-fill what it already holds.
    fn into_spare(self) -> Vec<u8> {
        match self {
            RowBytes::Owned(v) => v,
            RowBytes::Kept(_) => Vec::new(),
        }
    }
}

/// A pull request in flight.
#[derive(Debug)]
struct Request {
    shard: usize,
    table: u32,
    keys: Vec<u64>,
    min_clock: u64,
    timeout_ms: u64,
    outcome: Option<Result<()>>,
    /// The row's pieces so far, while it arrives in pieces.
    assembly: Option<Assembly>,
}

/// What the transport carries: see [`ClientCore::set_frame_limit`].
#[derive(Debug, Clone, Copy)]
struct FrameLimit {
    max_frame: usize,
    rows_in_pieces: bool,
}

/// A long row arriving in pieces ([`RowPiece`]): the bytes so far, in order.
#[derive(Debug)]
struct Assembly {
    values: Vec<u8>,
    /// Every piece must come from the same version of the row.
    clock: u64,
}

/// One worker's protocol state.
#[derive(Debug)]
pub struct ClientCore {
    worker: u32,
    clock: u64,
    tables: Arc<[TableInfo]>,
    links: Vec<Link>,
    /// `pending[shard][table]`: deltas not yet sent.
    pending: Vec<Vec<Rows>>,
    cache: Vec<IdMap<u64, Cached>>,
    next_req: u64,
    requests: IdMap<u64, Request>,
    /// Emptied row sets of acknowledged pushes, for the next clocks: a
    /// push then allocates nothing (a large row, no fresh pages either).
    spare: Vec<Rows>,
    /// Emptied section lists of acknowledged pushes, likewise.
    spare_sections: Vec<Vec<(u32, Rows)>>,
    /// How many row sets (and section lists) `spare` keeps: as many as
    /// pushes may run ahead of their acknowledgements, to every shard. A
    /// set is made only when none is spare, so the pool never holds more
    /// than were in use at once, and reuse is last-in first-out, so a few
    /// long pushes do not give every set a long buffer. A pipeline that
    /// deepens again then reuses its buffers instead of dropping them and
    /// allocating fresh ones (fresh pages cost the kernel a fault and
    /// zeroing each: half a second for a 64 MiB row on the 2-core VM of
    /// `benches/README.md`, every time a stream of such pushes went one
    /// deeper than a pool of 4).
    spare_cap: usize,
    /// Buffers of cached rows replaced by rows that came in pieces, for
    /// the next such row to be assembled in.
    spare_rows: Vec<Vec<u8>>,
    /// See [`rows_restarted`](Self::rows_restarted).
    rows_restarted: u64,
    /// Cached rows in kept frames ([`RowBytes::Kept`]).
    kept_rows: usize,
    /// Bytes of cached rows (each row's length, wherever it lies).
    cached_bytes: usize,
    /// See [`set_cache_limit`](Self::set_cache_limit).
    cache_limit: usize,
    /// Calls of [`plan_pull`](Self::plan_pull) so far: the clock of the
    /// cache's least-recently-used order.
    pulls_planned: u64,
    /// See [`set_frame_limit`](Self::set_frame_limit).
    frame_limit: Option<FrameLimit>,
    stats: ClientStats,
}

impl ClientCore {
    /// A worker at clock 0 talking to `shards` server shards.
    pub fn new(worker: u32, shards: usize, tables: Arc<[TableInfo]>) -> Self {
        ClientCore {
            worker,
            clock: 0,
            links: (0..shards)
                .map(|_| Link {
                    next_seq: 1,
                    unacked: VecDeque::new(),
                    held: None,
                    welcomed: false,
                    joined_at: None,
                })
                .collect(),
            pending: (0..shards)
                .map(|_| tables.iter().map(|_| Rows::default()).collect())
                .collect(),
            cache: tables.iter().map(|_| IdMap::default()).collect(),
            tables,
            next_req: 1,
            requests: IdMap::default(),
            spare: Vec::new(),
            spare_sections: Vec::new(),
            spare_cap: MAX_UNACKED * shards,
            spare_rows: Vec::new(),
            rows_restarted: 0,
            kept_rows: 0,
            cached_bytes: 0,
            cache_limit: usize::MAX,
            pulls_planned: 0,
            frame_limit: None,
            stats: ClientStats::default(),
        }
    }

    /// The worker's id.
    pub fn worker(&self) -> u32 {
        self.worker
    }

    /// The worker's current clock (clocks finished so far).
    pub fn clock(&self) -> u64 {
        self.clock
    }

    /// The tables.
    pub fn tables(&self) -> &[TableInfo] {
        &self.tables
    }

    /// The counters.
    pub fn stats(&self) -> ClientStats {
        self.stats
    }

    /// Mutable counters, for the runtime's frame and byte counts.
    pub fn stats_mut(&mut self) -> &mut ClientStats {
        &mut self.stats
    }

    fn table(&self, table: u32) -> Result<&TableInfo> {
        self.tables
            .get(table as usize)
            .ok_or_else(|| Error::UnknownTable {
                name: format!("#{table}"),
                known: self.tables.iter().map(|t| t.name.clone()).collect(),
            })
    }

    /// Adds `delta` (one row of `table`'s elements) to the pending push for
    /// `key`. Deltas for one key within one clock are summed, so the server
    /// applies the update rule once per key per clock.
    pub fn pending_add<T: Element>(&mut self, table: u32, key: u64, delta: &[T]) -> Result<()> {
        self.pending_add_stashing(table, key, delta, None)
    }

    /// [`pending_add`](Self::pending_add), keeping the row in `stash` if
    /// [`wants_stash`](Self::wants_stash) asked for one of this length (a
    /// row of at least [`STASH_MIN_ROW`] bytes not pending yet) and the
    /// transport lent it ([`Endpoint::stash`](crate::transport::Endpoint::stash)).
    /// A stashed row goes as a push of its own, its deltas the frame's
    /// tail ([`with_push_stash`](Self::with_push_stash)). A stash that is
    /// not used is dropped, giving its memory back.
    pub fn pending_add_stashing<T: Element>(
        &mut self,
        table: u32,
        key: u64,
        delta: &[T],
        stash: Option<Stash>,
    ) -> Result<()> {
        self.add_pending(table, key, delta, stash)?;
        self.replay_push(table, key, delta);
        Ok(())
    }

    /// Read-my-writes, at a push: a cached copy of the row gets the delta
    /// replayed onto it if it can still answer a pull at the next clock
    /// (later reads may come from it); otherwise it is marked as lacking
    /// the push, and the next read of the row goes to the server, whose
    /// answer gets the pushes it had not applied replayed onto it
    /// ([`replay_unapplied`](Self::replay_unapplied)). Only for tables
    /// whose rule is linear ([`TableInfo::replay`]).
    fn replay_push<T: Element>(&mut self, table: u32, key: u64, delta: &[T]) {
        let info = &self.tables[table as usize];
        let (Some(k), consistency, row_bytes) = (info.replay, info.consistency, info.row_bytes())
        else {
            return;
        };
        let Some(row) = self.cache[table as usize].get_mut(&key) else {
            return;
        };
        if !is_fresh(consistency, row, self.clock + 1) {
            row.lacks_own_push = true;
            return;
        }
        if own_row(row, row_bytes, &mut self.spare_rows) {
            self.kept_rows -= 1;
        }
        if let RowBytes::Owned(own) = &mut row.values {
            replay_le(&mut own[row.at..row.at + row_bytes], delta, k);
            self.stats.own_pushes_replayed += 1;
        }
    }

    /// Read-my-writes, at an answer: replays onto the cached row `key` of
    /// `table`, just answered by `shard`, the worker's pushes to it that
    /// the shard had not applied when it answered. Those are exactly the
    /// ones not acknowledged yet: a shard acknowledges a push when it
    /// applies it, and its acknowledgements and answers come in the order
    /// it made them, on one connection. Pending pushes are added too.
    /// True if the row changed.
    fn replay_unapplied(&mut self, shard: usize, table: u32, key: u64) -> bool {
        let info = &self.tables[table as usize];
        let (Some(k), kind, row_bytes) = (info.replay, info.kind, info.row_bytes()) else {
            return false;
        };
        let (Some(link), Some(pending)) = (
            self.links.get(shard),
            self.pending.get(shard).and_then(|p| p.get(table as usize)),
        ) else {
            return false;
        };
        let mut any = false;
        unapplied_deltas(link, pending, table, key, row_bytes, |_| any = true);
        let row = match self.cache[table as usize].get_mut(&key) {
            Some(row) if any => row,
            _ => return false,
        };
        if own_row(row, row_bytes, &mut self.spare_rows) {
            self.kept_rows -= 1;
        }
        let RowBytes::Owned(own) = &mut row.values else {
            return false;
        };
        let cells = &mut own[row.at..row.at + row_bytes];
        let replayed = &mut self.stats.own_pushes_replayed;
        unapplied_deltas(link, pending, table, key, row_bytes, |delta| {
            replay_le_bytes(kind, cells, delta, k);
            *replayed += 1;
        });
        true
    }

    /// Adds `delta` to the pending push row `key` of `table`.
    fn add_pending<T: Element>(
        &mut self,
        table: u32,
        key: u64,
        delta: &[T],
        stash: Option<Stash>,
    ) -> Result<()> {
        let info = self.table(table)?;
        let shard = info.map.shard_of(key)?;
        let row_bytes = info.row_bytes();
        if info.kind != T::KIND || delta.len() * T::SIZE != row_bytes {
            return Err(Error::WidthMismatch {
                expected: info.width,
                got: delta.len(),
            });
        }
        if let Some(limit) = self.frame_limit {
            let needs = PUSH_HEAD_LEN + push_section_len(1, row_bytes);
            if needs > limit.max_frame {
                return Err(Error::Transport {
                    reason: format!(
                        "a row of table {:?} is {row_bytes} bytes: a push of it needs a \
                         {needs}-byte frame, more than the largest the transport carries \
                         ({} bytes); {FRAME_LIMIT_ADVICE}",
                        info.name, limit.max_frame
                    ),
                });
            }
        }
        let sums = info.sums_deltas;
        self.stats.rows_pushed += 1;
        let rows = &mut self.pending[shard][table as usize];
        let coalesce = |pending: &mut [u8]| {
            if sums {
                add_le_slice(pending, delta);
            } else {
                write_le_slice(delta, pending);
            }
        };
        match rows.index.get(&key) {
            Some(&Slot::Inline(at)) => {
                self.stats.rows_coalesced += 1;
                coalesce(&mut rows.values[at..at + row_bytes]);
            }
            Some(&Slot::Stashed(i)) => {
                self.stats.rows_coalesced += 1;
                coalesce(&mut rows.stashed[i].1[..row_bytes]);
            }
            None if row_bytes >= STASH_MIN_ROW => {
                let mut block = match stash {
                    Some(block) if block.len() == row_bytes.next_multiple_of(8) => block,
                    _ => return self.add_inline(shard, table, key, row_bytes, delta),
                };
                write_le_slice(delta, &mut block[..row_bytes]);
                // The frame's padding after the values must be zeros.
                block[row_bytes..].fill(0);
                rows.index.insert(key, Slot::Stashed(rows.stashed.len()));
                rows.stashed.push((key, block));
                self.stats.rows_stashed += 1;
            }
            None => return self.add_inline(shard, table, key, row_bytes, delta),
        }
        Ok(())
    }

    /// Adds a row not pending yet to the pending push's own buffer.
    fn add_inline<T: Element>(
        &mut self,
        shard: usize,
        table: u32,
        key: u64,
        row_bytes: usize,
        delta: &[T],
    ) -> Result<()> {
        let rows = &mut self.pending[shard][table as usize];
        let at = rows.values.len();
        match le_bytes(delta) {
            Some(bytes) => rows.values.extend_from_slice(bytes),
            None => {
                rows.values.resize(at + row_bytes, 0);
                write_le_slice(delta, &mut rows.values[at..]);
            }
        }
        rows.keys.push(key);
        rows.index.insert(key, Slot::Inline(at));
        Ok(())
    }

    /// Where a delta for `key` of `table` would be stashed, `(shard,
    /// bytes)`: for a row of at least [`STASH_MIN_ROW`] bytes not pending
    /// yet; `None` otherwise (or for an unknown table or key, which
    /// [`pending_add`](Self::pending_add) reports).
    pub fn wants_stash(&self, table: u32, key: u64) -> Option<(usize, usize)> {
        let info = self.tables.get(table as usize)?;
        let row_bytes = info.row_bytes();
        if row_bytes < STASH_MIN_ROW {
            return None;
        }
        let shard = info.map.shard_of(key).ok()?;
        let pending = self.pending[shard][table as usize].index.contains_key(&key);
        (!pending).then(|| (shard, row_bytes.next_multiple_of(8)))
    }

    /// The sequence number of the oldest push to `shard` sent with a
    /// stashed row and not yet acknowledged: its acknowledgement gives a
    /// stash block back.
    pub fn oldest_stashed_unacked(&self, shard: usize) -> Option<u64> {
        let link = self.links.get(shard)?;
        link.unacked
            .iter()
            .find(|s| s.stashed.is_some())
            .map(|s| s.seq)
    }

    /// Moves pending deltas into pushes, one per shard that has any, or one
    /// per shard if `tick` (finishing the current clock, which every shard
    /// must learn). Returns `(shard, seq)` of each push to send now with
    /// [`with_push`](Self::with_push); pushes to a shard that is between
    /// connections wait for its welcome ([`on_welcome`](Self::on_welcome)).
    pub fn flush(&mut self, tick: bool) -> Vec<(usize, u64)> {
        let mut out = Vec::new();
        self.flush_into(tick, &mut out);
        out
    }

    /// [`flush`](Self::flush), appending to `out` (a buffer the caller
    /// reuses) instead of allocating.
    pub fn flush_into(&mut self, tick: bool, out: &mut Vec<(usize, u64)>) {
        let max_frame = self.frame_limit.map_or(usize::MAX, |l| l.max_frame);
        for (shard, link) in self.links.iter_mut().enumerate() {
            let pending = &mut self.pending[shard];
            if !tick && pending.iter().all(Rows::is_empty) {
                continue;
            }
            let spare = &mut self.spare;
            let mut sections = self.spare_sections.pop().unwrap_or_default();
            sections.extend(
                pending
                    .iter_mut()
                    .enumerate()
                    .filter(|(_, rows)| !rows.is_empty())
                    .map(|(t, rows)| {
                        // Reuse the row sets of acknowledged pushes.
                        let fresh = spare.pop().unwrap_or_default();
                        (t as u32, std::mem::replace(rows, fresh))
                    }),
            );
            // Stashed rows go last, as pushes of their own.
            let mut stashed = Vec::new();
            let mut i = 0;
            while i < sections.len() {
                let (table, rows) = &mut sections[i];
                stashed.extend(rows.stashed.drain(..).map(|(key, s)| (*table, key, s)));
                if rows.keys.is_empty() {
                    let (_, mut rows) = sections.remove(i);
                    if spare.len() < self.spare_cap {
                        rows.clear();
                        spare.push(rows);
                    }
                } else {
                    i += 1;
                }
            }
            let clock = self.clock;
            let mut send = |sections, stashed, tick| {
                let seq = link.next_seq;
                link.next_seq += 1;
                link.unacked.push_back(Sent {
                    seq,
                    clock,
                    tick,
                    sections,
                    stashed,
                });
                if link.welcomed {
                    self.stats.push_messages += 1;
                    out.push((shard, seq));
                }
            };
            let last_stashed = stashed.len();
            if !sections.is_empty() || stashed.is_empty() {
                let tick_here = tick && stashed.is_empty();
                if push_len(&sections) <= max_frame {
                    send(sections, None, tick_here);
                } else {
                    // More than the largest frame: several pushes, in order,
                    // the clock's tick with the last. Every row fits a frame on
                    // its own (`pending_add` checks).
                    let pushes =
                        split_push(sections, &self.tables, max_frame, spare, self.spare_cap);
                    let n = pushes.len();
                    for (i, sections) in pushes.into_iter().enumerate() {
                        send(sections, None, tick_here && i + 1 == n);
                    }
                }
            } else if self.spare_sections.len() < self.spare_cap {
                self.spare_sections.push(sections);
            }
            for (i, row) in stashed.into_iter().enumerate() {
                send(Vec::new(), Some(row), tick && i + 1 == last_stashed);
            }
        }
        if tick {
            self.clock += 1;
        }
    }

    /// Calls `f` with the push `seq` to `shard` as a message, if it is still
    /// unacknowledged.
    pub fn with_push<R>(
        &self,
        shard: usize,
        seq: u64,
        f: impl FnOnce(&Message<'_>) -> R,
    ) -> Option<R> {
        self.with_push_stash(shard, seq, |msg, _| f(msg))
    }

    /// [`with_push`](Self::with_push), with the stash the push's last
    /// section's values lie in, if they do: the push is then sent as
    /// [`EncodedParts::split_values`](super::EncodedParts::split_values)'s
    /// head with the stash as its tail
    /// ([`Endpoint::send_stashed`](crate::transport::Endpoint::send_stashed)).
    pub fn with_push_stash<R>(
        &self,
        shard: usize,
        seq: u64,
        f: impl FnOnce(&Message<'_>, Option<&Stash>) -> R,
    ) -> Option<R> {
        let sent = self
            .links
            .get(shard)?
            .unacked
            .iter()
            .find(|s| s.seq == seq)?;
        fn section((table, rows): &(u32, Rows)) -> Section<'_> {
            Section {
                table: *table,
                keys: Keys::Native(&rows.keys),
                values: &rows.values,
            }
        }
        let push = |sections: &[Section<'_>]| {
            let msg = Message::Push(Push {
                worker: self.worker,
                seq,
                clock: sent.clock,
                tick: sent.tick,
                sections: Sections::Native(sections),
            });
            f(&msg, sent.stashed.as_ref().map(|(_, _, s)| s))
        };
        if let Some((table, key, stash)) = &sent.stashed {
            // A stashed row is a push of its own (`flush_into`).
            debug_assert!(sent.sections.is_empty());
            let row_bytes = self.tables[*table as usize].row_bytes();
            let only = Section {
                table: *table,
                keys: Keys::Native(std::slice::from_ref(key)),
                values: &stash[..row_bytes],
            };
            return Some(push(std::slice::from_ref(&only)));
        }
        // Most pushes touch one table: no list to allocate for those.
        Some(match sent.sections.as_slice() {
            [] => push(&[]),
            [one] => push(std::slice::from_ref(&section(one))),
            many => push(&many.iter().map(section).collect::<Vec<_>>()),
        })
    }

    /// Pushes to `shard` not yet acknowledged.
    pub fn unacked(&self, shard: usize) -> usize {
        self.links.get(shard).map_or(0, |l| l.unacked.len())
    }

    /// The highest sequence number sent to each shard so far (0 if none).
    pub fn last_sent(&self) -> Vec<u64> {
        self.last_sent_iter().collect()
    }

    /// [`last_sent`](Self::last_sent), shard by shard, without a `Vec`.
    pub fn last_sent_iter(&self) -> impl ExactSizeIterator<Item = u64> + '_ {
        self.links.iter().map(|l| l.next_seq - 1)
    }

    /// True once every shard acknowledged every push up to `seqs[shard]`.
    pub fn acked_through(&self, seqs: &[u64]) -> bool {
        self.links
            .iter()
            .zip(seqs)
            .all(|(l, &seq)| l.unacked.front().is_none_or(|s| s.seq > seq))
    }

    /// True once every shard took every push up to `seqs[shard]`: applied
    /// it (acknowledged) or holds it back for a clock hook
    /// ([`PushHeld`](super::PushHeld)), to apply whether or not this
    /// worker stays. What a worker waits for before it leaves.
    pub fn taken_through(&self, seqs: &[u64]) -> bool {
        self.links.iter().zip(seqs).all(|(l, &seq)| {
            l.unacked.front().is_none_or(|s| s.seq > seq)
                || l.held.is_some_and(|(held, _)| held >= seq)
        })
    }

    /// Why pushes to `shard` wait for their acknowledgement, if the shard
    /// said: `(seq, hold_from)`, it took pushes through `seq` and holds
    /// back those for clock `hold_from` and later.
    pub fn held_back(&self, shard: usize) -> Option<(u64, u64)> {
        let link = self.links.get(shard)?;
        link.held.filter(|_| !link.unacked.is_empty())
    }

    /// A shard (re)accepted this worker: forgets pushes it already applied
    /// and returns the sequence numbers to resend, in order.
    pub fn on_welcome(&mut self, shard: usize, welcome: &Welcome) -> Result<Vec<u64>> {
        let link = self
            .links
            .get_mut(shard)
            .ok_or_else(|| protocol(shard, "welcome from an unknown shard"))?;
        if welcome.shard as usize != shard {
            return Err(protocol(
                shard,
                format!("the server says it is shard {}", welcome.shard),
            ));
        }
        if link.joined_at.is_none() {
            // The first welcome from this shard. A worker whose process was
            // replaced is known to the shard already: this process goes on
            // from the sequence number and clock the shard has for it.
            let fresh = link.next_seq == 1 && link.unacked.is_empty() && self.clock == 0;
            if welcome.applied_seq > 0 || welcome.clock > 0 {
                if !fresh {
                    return Err(protocol(
                        shard,
                        format!(
                            "the shard knows this worker from another process (push {}, \
                             clock {}), but this one already made pushes of its own",
                            welcome.applied_seq, welcome.clock
                        ),
                    ));
                }
                link.next_seq = welcome.applied_seq + 1;
            }
            link.joined_at = Some(welcome.clock);
        }
        if welcome.applied_seq >= link.next_seq {
            return Err(protocol(
                shard,
                format!(
                    "the server applied push {} but this worker only sent {}",
                    welcome.applied_seq,
                    link.next_seq - 1
                ),
            ));
        }
        while link
            .unacked
            .front()
            .is_some_and(|s| s.seq <= welcome.applied_seq)
        {
            link.unacked.pop_front();
        }
        link.welcomed = true;
        let resend: Vec<u64> = link.unacked.iter().map(|s| s.seq).collect();
        self.stats.push_messages += resend.len() as u64;
        Ok(resend)
    }

    /// Once every shard welcomed this worker ([`on_welcome`](Self::on_welcome)),
    /// takes up the clock of the process it replaces, if any: the latest
    /// clock a shard has for the worker (shards may differ, if that process
    /// stopped between its pushes to them). A shard behind gets an empty
    /// push finishing each clock it lacks. Returns `(shard, seq)` of those
    /// pushes, to send with [`with_push`](Self::with_push); nothing for a
    /// new worker, at clock 0 everywhere.
    pub fn join(&mut self) -> Result<Vec<(usize, u64)>> {
        let mut joined = Vec::with_capacity(self.links.len());
        for (shard, link) in self.links.iter().enumerate() {
            joined.push(
                link.joined_at
                    .ok_or_else(|| protocol(shard, "joining before the shard's welcome"))?,
            );
        }
        let (ahead, clock) = joined
            .iter()
            .copied()
            .enumerate()
            .max_by_key(|&(_, c)| c)
            .unwrap_or((0, 0));
        if clock <= self.clock {
            return Ok(Vec::new());
        }
        if self.pending.iter().flatten().any(|rows| !rows.is_empty())
            || self.links.iter().any(|l| !l.unacked.is_empty())
        {
            return Err(protocol(
                ahead,
                format!(
                    "the shard has this worker at clock {clock} (another process spoke for \
                     it), but this one already made pushes of its own"
                ),
            ));
        }
        let mut out = Vec::new();
        for (shard, (link, &at)) in self.links.iter_mut().zip(&joined).enumerate() {
            for c in at..clock {
                let seq = link.next_seq;
                link.next_seq += 1;
                link.unacked.push_back(Sent {
                    seq,
                    clock: c,
                    tick: true,
                    sections: Vec::new(),
                    stashed: None,
                });
                if link.welcomed {
                    self.stats.push_messages += 1;
                    out.push((shard, seq));
                }
            }
        }
        self.clock = clock;
        Ok(out)
    }

    /// Plans a pull of `keys` from `table`: rows fresh in the cache need no
    /// message; the others are asked of their shards. Returns the request
    /// ids to send with [`with_request`](Self::with_request) (empty if the
    /// cache answers everything).
    pub fn plan_pull(&mut self, table: u32, keys: &[u64], timeout: Duration) -> Result<Vec<u64>> {
        let info = self.table(table)?;
        let consistency = info.consistency;
        let map = info.map.clone();
        let row_bytes = info.row_bytes();
        let per_request = self.rows_per_request(table, row_bytes)?;
        if self.cached_bytes > self.cache_limit {
            self.shrink_cache();
        }
        self.pulls_planned += 1;
        let mut misses: Vec<Vec<u64>> = vec![Vec::new(); self.links.len()];
        let cache = &mut self.cache[table as usize];
        let mut from_cache = 0;
        for &key in keys {
            let shard = map.shard_of(key)?;
            match cache.get_mut(&key) {
                Some(row) if is_fresh(consistency, row, self.clock) => {
                    row.used = self.pulls_planned;
                    from_cache += 1;
                }
                _ => misses[shard].push(key),
            }
        }
        for keys in &mut misses {
            keys.sort_unstable();
            keys.dedup();
        }
        self.stats.rows_from_cache += from_cache;
        self.stats.rows_pulled += keys.len() as u64;
        let min_clock = consistency.required_min(self.clock).unwrap_or(0);
        let timeout_ms = timeout.as_millis().min(u128::from(u64::MAX)) as u64;
        let mut reqs = Vec::new();
        let mut ask = |shard, keys| {
            let req = self.next_req;
            self.next_req += 1;
            self.requests.insert(
                req,
                Request {
                    shard,
                    table,
                    keys,
                    min_clock,
                    timeout_ms,
                    outcome: None,
                    assembly: None,
                },
            );
            self.stats.pull_messages += 1;
            reqs.push(req);
        };
        for (shard, keys) in misses.into_iter().enumerate() {
            if keys.len() <= per_request {
                if !keys.is_empty() {
                    ask(shard, keys);
                }
            } else {
                // Answers longer than the largest frame: several requests.
                keys.chunks(per_request)
                    .for_each(|part| ask(shard, part.to_vec()));
            }
        }
        Ok(reqs)
    }

    /// Calls `f` with the shard and message of pull request `req`.
    pub fn with_request<R>(&self, req: u64, f: impl FnOnce(usize, &Message<'_>) -> R) -> Option<R> {
        let r = self.requests.get(&req)?;
        Some(f(
            r.shard,
            &Message::PullRequest(PullRequest {
                req,
                min_clock: r.min_clock,
                timeout_ms: r.timeout_ms,
                table: r.table,
                keys: Keys::Native(&r.keys),
            }),
        ))
    }

    /// The outcome of request `req` once it has one (and forgets it), or
    /// `None` while it is in flight.
    pub fn take_outcome(&mut self, req: u64) -> Option<Result<()>> {
        match self.requests.get(&req) {
            Some(r) if r.outcome.is_some() => self.requests.remove(&req).and_then(|r| r.outcome),
            Some(_) => None,
            None => Some(Err(Error::Transport {
                reason: format!("pull request {req} is unknown (already collected?)"),
            })),
        }
    }

    /// Tells the worker the largest frame its transport carries (and its
    /// servers accept), and whether a row pulled on its own may come in
    /// pieces (and so be longer). A push longer than that goes as several
    /// push messages, the clock's tick with the last; a pull whose answer
    /// from some shard would be longer asks that shard in several requests.
    /// A row that no frame can carry is refused at once: by
    /// [`pending_add`](Self::pending_add), and by
    /// [`plan_pull`](Self::plan_pull) unless rows come in pieces. Without a
    /// limit, every push and every shard's answer is one frame.
    pub fn set_frame_limit(&mut self, max_frame: usize, rows_in_pieces: bool) {
        self.frame_limit = Some(FrameLimit {
            max_frame,
            rows_in_pieces,
        });
    }

    /// How many rows of `table` one pull request may ask for, so that the
    /// request and its answer fit the transport's largest frame (see
    /// [`set_frame_limit`](Self::set_frame_limit)); an error if not even
    /// one row fits and rows do not come in pieces.
    fn rows_per_request(&self, table: u32, row_bytes: usize) -> Result<usize> {
        let Some(limit) = self.frame_limit else {
            return Ok(usize::MAX);
        };
        // A request and its answer both start with 48 bytes (header and
        // fields); then 8 bytes per key, or the rows padded to 8 bytes.
        let (head, _) = super::codec::pull_response_layout(0);
        let room = limit.max_frame.saturating_sub(head);
        let by_request = room / 8;
        let by_answer = match room / 8 * 8 / row_bytes.max(1) {
            0 if limit.rows_in_pieces => 1,
            rows => rows,
        };
        if by_answer == 0 {
            return Err(Error::Transport {
                reason: format!(
                    "a row of table {:?} is {row_bytes} bytes: the answer to a pull of it \
                     needs a {}-byte frame, more than the largest the transport carries \
                     ({} bytes); {FRAME_LIMIT_ADVICE}",
                    self.tables[table as usize].name,
                    super::codec::pull_response_layout(row_bytes).0,
                    limit.max_frame
                ),
            });
        }
        if by_request == 0 {
            return Err(Error::Transport {
                reason: format!(
                    "a pull request needs a {}-byte frame, more than the largest the \
                     transport carries ({} bytes); {FRAME_LIMIT_ADVICE}",
                    head + 8,
                    limit.max_frame
                ),
            });
        }
        Ok(by_answer.min(by_request))
    }

    /// The first bytes of the row that request `req` is receiving in
    /// pieces, as far as they arrived (empty before the first piece), or
    /// `None` if the request is unknown. Lets a caller copy each piece out
    /// while it is fresh in the cache; see
    /// [`rows_restarted`](Self::rows_restarted).
    pub fn assembled(&self, req: u64) -> Option<&[u8]> {
        let r = self.requests.get(&req)?;
        Some(r.assembly.as_ref().map_or(&[][..], |a| &a.values))
    }

    /// How many rows arriving in pieces were dropped half-way (by a lost
    /// connection) and will come again from their first byte, maybe as
    /// another version, or changed once complete (by the worker's own
    /// pushes replayed onto them). A caller that copied bytes of
    /// [`assembled`](Self::assembled) must copy again from the start when
    /// this changed since.
    pub fn rows_restarted(&self) -> u64 {
        self.rows_restarted
    }

    /// The cached row `key` of `table`, as little-endian bytes.
    pub fn cached(&self, table: u32, key: u64) -> Option<&[u8]> {
        let row_bytes = self.tables.get(table as usize)?.row_bytes();
        let row = self.cache.get(table as usize)?.get(&key)?;
        row.values.bytes().get(row.at..row.at + row_bytes)
    }

    /// Forgets every cached row (the next pulls go to the servers).
    pub fn clear_cache(&mut self) {
        self.cache.iter_mut().for_each(IdMap::clear);
        self.kept_rows = 0;
        self.cached_bytes = 0;
    }

    /// Bounds the bytes of cached rows (all tables together; unbounded
    /// until this is called). Whenever a pull is planned with the cache
    /// over `bytes`, rows first go that are too stale to answer a pull at
    /// the worker's clock, then the least recently asked for, until the
    /// cache holds at most three quarters of `bytes`. The rows one pull
    /// brings are all cached until the next is planned, even past the
    /// bound. A row dropped while a started pull still needs it (a
    /// [`plan_pull`](Self::plan_pull) between another's plan and the
    /// reading of its rows) is missing from [`cached`](Self::cached):
    /// plan it again.
    pub fn set_cache_limit(&mut self, bytes: usize) {
        self.cache_limit = bytes;
    }

    /// Bytes of rows cached now (each row's length; a row kept in its
    /// frame keeps the whole frame alive, which may be more).
    pub fn cached_bytes(&self) -> usize {
        self.cached_bytes
    }

    /// Caches `row` as `key` of `table`; returns the row it replaces.
    /// Keeps the count of rows in kept frames and of cached bytes.
    fn put_cached(&mut self, table: u32, key: u64, row: Cached) -> Option<Cached> {
        if matches!(row.values, RowBytes::Kept(_)) {
            self.kept_rows += 1;
        }
        let old = self.cache[table as usize].insert(key, row);
        match &old {
            Some(Cached {
                values: RowBytes::Kept(_),
                ..
            }) => self.kept_rows -= 1,
            Some(_) => {}
            None => self.cached_bytes += self.tables[table as usize].row_bytes(),
        }
        old
    }

    /// Drops cached rows until the cache is within three quarters of its
    /// limit: first every row no pull at the worker's clock could be
    /// answered from, then the least recently used.
    fn shrink_cache(&mut self) {
        let target = self.cache_limit / 4 * 3;
        let mut stale = Vec::new();
        let mut by_use = Vec::new();
        for (table, cache) in self.cache.iter().enumerate() {
            let consistency = self.tables[table].consistency;
            for (&key, row) in cache {
                if is_fresh(consistency, row, self.clock) {
                    by_use.push((row.used, table as u32, key));
                } else {
                    stale.push((table as u32, key));
                }
            }
        }
        for (table, key) in stale {
            self.evict(table, key);
        }
        if self.cached_bytes <= target {
            return;
        }
        by_use.sort_unstable();
        for (_, table, key) in by_use {
            if self.cached_bytes <= target {
                break;
            }
            self.evict(table, key);
        }
    }

    /// Drops cached row `key` of `table` (releasing its frame, if it is
    /// the last row kept in one), keeping the counts.
    fn evict(&mut self, table: u32, key: u64) {
        let Some(row) = self.cache[table as usize].remove(&key) else {
            return;
        };
        if matches!(row.values, RowBytes::Kept(_)) {
            self.kept_rows -= 1;
        }
        self.cached_bytes -= self.tables[table as usize].row_bytes();
        self.spare_row(row.values);
        self.stats.rows_evicted += 1;
    }

    /// Whether any cached row lies in a kept frame
    /// ([`on_kept_frame`](Self::on_kept_frame)).
    pub fn keeps_frames(&self) -> bool {
        self.kept_rows > 0
    }

    /// Copies every cached row that lies in a kept frame into a buffer of
    /// its own, releasing the frames: what a worker does when its endpoint
    /// says kept frames crowd a sender
    /// ([`Endpoint::kept_frames_crowd`](crate::transport::Endpoint::kept_frames_crowd)).
    pub fn copy_out_kept_rows(&mut self) {
        if self.kept_rows == 0 {
            return;
        }
        for (table, cache) in self.cache.iter_mut().enumerate() {
            let row_bytes = self.tables[table].row_bytes();
            for row in cache.values_mut() {
                if own_row(row, row_bytes, &mut self.spare_rows) {
                    self.stats.kept_rows_copied += 1;
                }
            }
        }
        self.kept_rows = 0;
    }

    /// The connection to `shard` dropped and a new one is being made:
    /// pushes for it are held until the next welcome, and requests in
    /// flight stay pending, to be resent then (see
    /// [`open_requests`](Self::open_requests)).
    pub fn link_lost(&mut self, shard: usize) {
        if let Some(link) = self.links.get_mut(shard) {
            link.welcomed = false;
            link.held = None;
        }
        // Rows kept in frames of the lost connection would keep its
        // memory (an RDMA ring stays registered) for as long as they are
        // cached, and nothing would ask for it back: copy them out.
        self.copy_out_kept_rows();
        // A row that was arriving in pieces is requested again and comes
        // again from its first piece, maybe as a newer version.
        for r in self.requests.values_mut() {
            if r.shard == shard && r.assembly.take().is_some() {
                self.rows_restarted += 1;
            }
        }
    }

    /// Whether `shard` has welcomed this worker on its current connection.
    pub fn is_welcomed(&self, shard: usize) -> bool {
        self.links.get(shard).is_some_and(|l| l.welcomed)
    }

    /// Requests to `shard` still waiting for an answer, oldest first.
    pub fn open_requests(&self, shard: usize) -> Vec<u64> {
        let mut reqs: Vec<u64> = self
            .requests
            .iter()
            .filter(|(_, r)| r.shard == shard && r.outcome.is_none())
            .map(|(&id, _)| id)
            .collect();
        reqs.sort_unstable();
        reqs
    }

    /// The connection to `shard` is gone for good: fails every request in
    /// flight to it with `err`, and holds pushes for it until the next
    /// welcome.
    pub fn fail_shard(&mut self, shard: usize, err: &Error) {
        if let Some(link) = self.links.get_mut(shard) {
            link.welcomed = false;
        }
        for r in self.requests.values_mut() {
            if r.shard == shard && r.outcome.is_none() {
                r.outcome = Some(Err(err.clone()));
            }
        }
    }

    /// Handles a frame from `shard` given as an owned buffer, decoding it
    /// (payloads up to `max_payload`). A response carrying one row is kept
    /// in the cache as it is, frame and all, rather than copied out of it.
    /// Returns a buffer for the caller to reuse: the cache entry's old one,
    /// or `frame` itself when it was not kept.
    pub fn on_owned_frame(
        &mut self,
        shard: usize,
        frame: Vec<u8>,
        max_payload: usize,
    ) -> Result<Vec<u8>> {
        let (req, data_clock, at) = match self.rows_in(shard, &frame, max_payload, 1)? {
            InFrame::Rows { req, clock, at } => (req, clock, at),
            InFrame::Other(msg) => return self.on_message(shard, msg).map(|()| frame),
        };
        let r = self.requests.get_mut(&req).expect("checked above");
        r.outcome = Some(Ok(()));
        let (table, key) = (r.table, r.keys[0]);
        let row = Cached {
            data_clock,
            fetched_at: self.clock,
            lacks_own_push: false,
            values: RowBytes::Owned(frame),
            at,
            used: self.pulls_planned,
        };
        let old = self.put_cached(table, key, row);
        self.replay_unapplied(shard, table, key);
        Ok(old.map(|c| c.values.into_spare()).unwrap_or_default())
    }

    /// Handles a frame from `shard` kept in transport memory
    /// ([`Endpoint::keep_frame`](crate::transport::Endpoint::keep_frame)),
    /// decoding it (payloads up to `max_payload`). The rows of a pull
    /// response are cached where they lie in the frame, which stays kept
    /// until every one of them is replaced or copied out
    /// ([`copy_out_kept_rows`](Self::copy_out_kept_rows)); any other
    /// message is handled as [`on_message`](Self::on_message) does, and
    /// the frame released.
    pub fn on_kept_frame(
        &mut self,
        shard: usize,
        frame: KeptFrame,
        max_payload: usize,
    ) -> Result<()> {
        let (req, data_clock, at) = match self.rows_in(shard, &frame, max_payload, u32::MAX)? {
            InFrame::Rows { req, clock, at } => (req, clock, at),
            InFrame::Other(msg) => return self.on_message(shard, msg),
        };
        let r = self.requests.get_mut(&req).expect("checked above");
        r.outcome = Some(Ok(()));
        let (table, keys) = (r.table, std::mem::take(&mut r.keys));
        let row_bytes = self.tables[table as usize].row_bytes();
        for (i, &key) in keys.iter().enumerate() {
            let row = Cached {
                data_clock,
                fetched_at: self.clock,
                lacks_own_push: false,
                values: RowBytes::Kept(frame.clone()),
                at: at + i * row_bytes,
                used: self.pulls_planned,
            };
            if let Some(old) = self.put_cached(table, key, row) {
                self.spare_row(old.values);
            }
            self.stats.rows_kept += 1;
            self.replay_unapplied(shard, table, key);
        }
        if let Some(r) = self.requests.get_mut(&req) {
            r.keys = keys;
        }
        Ok(())
    }

    /// Decodes `frame` (payloads up to `max_payload`): if it is a response
    /// of 1 to `max_rows` rows to an open request of ours, checked,
    /// where its rows lie in the frame; otherwise its message.
    fn rows_in<'f>(
        &self,
        shard: usize,
        frame: &'f [u8],
        max_payload: usize,
        max_rows: u32,
    ) -> Result<InFrame<'f>> {
        match decode(frame, max_payload) {
            Ok(Message::PullResponse(resp)) if (1..=max_rows).contains(&resp.rows) => {
                // Where the rows lie in the frame (decoding borrows it).
                let at = (resp.values.as_ptr() as usize).checked_sub(frame.as_ptr() as usize);
                match at.filter(|at| at + resp.values.len() <= frame.len()) {
                    Some(at) => {
                        self.check_response(shard, &resp)?;
                        Ok(InFrame::Rows {
                            req: resp.req,
                            clock: resp.clock,
                            at,
                        })
                    }
                    None => Ok(InFrame::Other(Message::PullResponse(resp))),
                }
            }
            Ok(msg) => Ok(InFrame::Other(msg)),
            Err(e) => Err(protocol(shard, e.to_string())),
        }
    }

    /// Keeps the buffer of a replaced cached row for a row to come, if
    /// it is the worker's own and few are kept.
    fn spare_row(&mut self, values: RowBytes) {
        if let RowBytes::Owned(v) = values {
            if self.spare_rows.len() < SPARE_ROWS {
                self.spare_rows.push(v);
            }
        }
    }

    /// Checks that `resp` answers a pull request of ours from `shard` that
    /// is still open, with rows of the right shape; returns the row size.
    fn check_response(&self, shard: usize, resp: &PullResponse<'_>) -> Result<usize> {
        let r = self.open_request(shard, resp.req, resp.table, "response")?;
        let row_bytes = self.tables[r.table as usize].row_bytes();
        if resp.rows as usize != r.keys.len() || resp.values.len() != r.keys.len() * row_bytes {
            return Err(protocol(
                shard,
                format!("response to request {} does not match it", resp.req),
            ));
        }
        Ok(row_bytes)
    }

    /// Pull request `req`, if it is ours, still open, sent to `shard` and
    /// for `table`, as a `what` from that shard must answer; otherwise the
    /// shard broke the protocol.
    fn open_request(&self, shard: usize, req: u64, table: u32, what: &str) -> Result<&Request> {
        let Some(r) = self.requests.get(&req) else {
            return Err(protocol(shard, format!("{what} for unknown request {req}")));
        };
        if r.shard != shard || r.table != table || r.outcome.is_some() {
            return Err(protocol(
                shard,
                format!(
                    "{what} does not match request {req} (another shard or table, or answered)"
                ),
            ));
        }
        Ok(r)
    }

    /// Appends a piece of a long row to its request's assembly; the last
    /// piece moves the row into the cache and completes the request.
    /// Pieces must come in order, from one version of the row, and add up
    /// to exactly the row.
    fn on_row_piece(&mut self, shard: usize, piece: &RowPiece<'_>) -> Result<()> {
        let r = self.open_request(shard, piece.req, piece.table, "row piece")?;
        let row_bytes = self.tables[r.table as usize].row_bytes();
        let r = self.requests.get_mut(&piece.req).expect("checked above");
        let so_far = r.assembly.as_ref().map_or(0, |a| a.values.len());
        if r.keys.len() != 1
            || piece.total != row_bytes as u64
            || piece.offset != so_far as u64
            || r.assembly.as_ref().is_some_and(|a| a.clock != piece.clock)
        {
            return Err(protocol(
                shard,
                format!(
                    "the piece at byte {} of {} does not continue the row of request {} \
                     ({so_far} of its {row_bytes} bytes arrived)",
                    piece.offset, piece.total, piece.req
                ),
            ));
        }
        let assembly = r.assembly.get_or_insert_with(|| {
            let mut values = self.spare_rows.pop().unwrap_or_default();
            values.clear();
            values.reserve_exact(row_bytes);
            Assembly {
                values,
                clock: piece.clock,
            }
        });
        assembly.values.extend_from_slice(piece.values);
        if assembly.values.len() < row_bytes {
            return Ok(());
        }
        let Assembly { values, clock } = r.assembly.take().expect("assembled above");
        r.outcome = Some(Ok(()));
        let (table, key) = (r.table, r.keys[0]);
        let row = Cached {
            data_clock: clock,
            fetched_at: self.clock,
            lacks_own_push: false,
            values: RowBytes::Owned(values),
            at: 0,
            used: self.pulls_planned,
        };
        if let Some(old) = self.put_cached(table, key, row) {
            self.spare_row(old.values);
        }
        if self.replay_unapplied(shard, table, key) {
            // The row's first bytes, copied out as they came, changed.
            self.rows_restarted += 1;
        }
        Ok(())
    }

    /// Handles a message from `shard`. An error means the shard broke the
    /// protocol or reported a fault; the connection should be dropped.
    pub fn on_message(&mut self, shard: usize, msg: Message<'_>) -> Result<()> {
        match msg {
            Message::PushAck(ack) => {
                let link = self
                    .links
                    .get_mut(shard)
                    .ok_or_else(|| unknown_shard(shard))?;
                link.check_sent(shard, ack.seq, "an ack")?;
                if link.held.is_some_and(|(held, _)| held <= ack.seq) {
                    link.held = None;
                }
                while link.unacked.front().is_some_and(|s| s.seq <= ack.seq) {
                    if let Some(mut sent) = link.unacked.pop_front() {
                        for (_, mut rows) in sent.sections.drain(..) {
                            if self.spare.len() < self.spare_cap {
                                rows.clear();
                                self.spare.push(rows);
                            }
                        }
                        if self.spare_sections.len() < self.spare_cap {
                            self.spare_sections.push(sent.sections);
                        }
                    }
                }
                Ok(())
            }
            Message::PushHeld(held) => {
                let link = self
                    .links
                    .get_mut(shard)
                    .ok_or_else(|| unknown_shard(shard))?;
                link.check_sent(shard, held.seq, "a hold")?;
                if link.unacked.front().is_some_and(|s| s.seq <= held.seq)
                    && link.held.is_none_or(|(seq, _)| seq <= held.seq)
                {
                    link.held = Some((held.seq, held.hold_from));
                }
                Ok(())
            }
            Message::PullResponse(resp) => {
                let row_bytes = self.check_response(shard, &resp)?;
                let r = self.requests.get_mut(&resp.req).expect("checked above");
                r.outcome = Some(Ok(()));
                let (table, keys) = (r.table, std::mem::take(&mut r.keys));
                for (&key, values) in keys.iter().zip(resp.values.chunks_exact(row_bytes)) {
                    // A row of the worker's own is overwritten in place;
                    // one in a kept frame gets a buffer.
                    if let Some(Cached {
                        data_clock,
                        fetched_at,
                        lacks_own_push,
                        values: RowBytes::Owned(own),
                        at,
                        used,
                    }) = self.cache[table as usize].get_mut(&key)
                    {
                        own.clear();
                        own.extend_from_slice(values);
                        (*data_clock, *fetched_at, *at) = (resp.clock, self.clock, 0);
                        *lacks_own_push = false;
                        *used = self.pulls_planned;
                    } else {
                        let row = Cached {
                            data_clock: resp.clock,
                            fetched_at: self.clock,
                            lacks_own_push: false,
                            values: RowBytes::Owned(values.to_vec()),
                            at: 0,
                            used: self.pulls_planned,
                        };
                        self.put_cached(table, key, row);
                    }
                    self.replay_unapplied(shard, table, key);
                }
                if let Some(r) = self.requests.get_mut(&resp.req) {
                    r.keys = keys;
                }
                Ok(())
            }
            Message::RowPiece(piece) => self.on_row_piece(shard, &piece),
            Message::PullTimedOut(t) => {
                let Some(r) = self.requests.get_mut(&t.req) else {
                    return Err(protocol(
                        shard,
                        format!("timeout of unknown request {}", t.req),
                    ));
                };
                let consistency = self.tables[r.table as usize].consistency;
                r.outcome = Some(Err(timeout_error(self.worker, self.clock, consistency, &t)));
                Ok(())
            }
            Message::Fault(f) if f.code == FaultCode::DuplicateWorker as u32 => {
                Err(Error::WorkerClaimed {
                    peer: format!("server shard {shard}"),
                    message: f.text.to_owned(),
                })
            }
            Message::Fault(f) => Err(Error::Remote {
                peer: format!("server shard {shard}"),
                message: f.text.to_owned(),
            }),
            other => Err(protocol(shard, format!("unexpected {}", other.name()))),
        }
    }
}

/// What to do about a frame longer than the largest a worker may send or
/// receive: that is the lower of the transport's limit and the spec's.
const FRAME_LIMIT_ADVICE: &str = "raise the lower of the limits: the transport's largest frame \
     (ShmConfig::ring_bytes or RdmaConfig::ring_bytes, a frame being at most about half a \
     ring; TcpConfig::max_frame_len; InProcess::with_capacity) and ClusterSpec::max_payload";

/// A message said to come from `shard`, which this worker does not have
/// (the caller's mistake: shards are numbered from 0).
fn unknown_shard(shard: usize) -> Error {
    protocol(shard, "a message from a shard this worker does not have")
}

/// Bytes of the push frame carrying `sections`.
fn push_len(sections: &[(u32, Rows)]) -> usize {
    PUSH_HEAD_LEN
        + sections
            .iter()
            .map(|(_, rows)| push_section_len(rows.keys.len(), rows.values.len()))
            .sum::<usize>()
}

/// How many rows of `row_bytes` bytes a push section may hold in `room`
/// bytes of frame.
fn rows_fitting(room: usize, row_bytes: usize) -> usize {
    let Some(avail) = room.checked_sub(push_section_len(0, 0)) else {
        return 0;
    };
    let mut rows = avail / (8 + row_bytes);
    while rows > 0 && push_section_len(rows, rows * row_bytes) > room {
        rows -= 1;
    }
    rows
}

/// If `row` lies in a kept frame, copies it into a buffer of the
/// worker's own (from `spare`, if any), releasing its share of the frame;
/// true if it did.
fn own_row(row: &mut Cached, row_bytes: usize, spare: &mut Vec<Vec<u8>>) -> bool {
    let RowBytes::Kept(frame) = &row.values else {
        return false;
    };
    let mut own = spare.pop().unwrap_or_default();
    own.clear();
    own.extend_from_slice(&frame[row.at..row.at + row_bytes]);
    row.values = RowBytes::Owned(own);
    row.at = 0;
    true
}

/// Calls `f` with each delta of the worker's own for row `key` of
/// `table` that its shard has not applied as far as the worker knows:
/// in pushes sent (or queued) and not acknowledged, on `link`, then in
/// `pending`, not sent yet.
fn unapplied_deltas(
    link: &Link,
    pending: &Rows,
    table: u32,
    key: u64,
    row_bytes: usize,
    mut f: impl FnMut(&[u8]),
) {
    for sent in &link.unacked {
        // A stashed row is a push of its own; the row sets it came from
        // still list it, without its values.
        match &sent.stashed {
            Some((t, k, stash)) if *t == table && *k == key => f(&stash[..row_bytes]),
            _ => {}
        }
        for (t, rows) in &sent.sections {
            if let (true, Some(&Slot::Inline(at))) = (*t == table, rows.index.get(&key)) {
                f(&rows.values[at..at + row_bytes]);
            }
        }
    }
    match pending.index.get(&key) {
        Some(&Slot::Inline(at)) => f(&pending.values[at..at + row_bytes]),
        Some(&Slot::Stashed(i)) => {
            if let Some((_, stash)) = pending.stashed.get(i) {
                f(&stash[..row_bytes]);
            }
        }
        None => {}
    }
}

/// Splits the sections of a push longer than `max_frame` into pushes that
/// each fit, rows in their order. A section that fits a frame moves whole;
/// one that must be cut is copied, part by part, into row sets from
/// `spare`, and its own set goes back there (if `spare` holds fewer than
/// `spare_cap`).
fn split_push(
    sections: Vec<(u32, Rows)>,
    tables: &[TableInfo],
    max_frame: usize,
    spare: &mut Vec<Rows>,
    spare_cap: usize,
) -> Vec<Vec<(u32, Rows)>> {
    let mut pushes = Vec::new();
    let mut current = Vec::new();
    let mut len = PUSH_HEAD_LEN;
    for (table, mut rows) in sections {
        let whole = push_section_len(rows.keys.len(), rows.values.len());
        if len + whole > max_frame && PUSH_HEAD_LEN + whole <= max_frame {
            pushes.push(std::mem::take(&mut current));
            len = PUSH_HEAD_LEN;
        }
        if len + whole <= max_frame {
            len += whole;
            current.push((table, rows));
            continue;
        }
        let row_bytes = tables[table as usize].row_bytes();
        let n = rows.keys.len();
        let mut start = 0;
        while start < n {
            let fit = rows_fitting(max_frame.saturating_sub(len), row_bytes).min(n - start);
            if fit == 0 && !current.is_empty() {
                pushes.push(std::mem::take(&mut current));
                len = PUSH_HEAD_LEN;
                continue;
            }
            // A row longer than any frame is refused by `pending_add`; one
            // that slipped through goes alone, and its send reports it.
            let fit = fit.max(1);
            let mut part = spare.pop().unwrap_or_default();
            // Indexed as any row set, for read-my-writes.
            for (i, &key) in rows.keys[start..start + fit].iter().enumerate() {
                part.index.insert(key, Slot::Inline(i * row_bytes));
            }
            part.keys.extend_from_slice(&rows.keys[start..start + fit]);
            part.values
                .extend_from_slice(&rows.values[start * row_bytes..(start + fit) * row_bytes]);
            len += push_section_len(fit, fit * row_bytes);
            current.push((table, part));
            start += fit;
        }
        rows.clear();
        if spare.len() < spare_cap {
            spare.push(rows);
        }
    }
    if !current.is_empty() || pushes.is_empty() {
        pushes.push(current);
    }
    pushes
}

fn is_fresh(consistency: Consistency, row: &Cached, clock: u64) -> bool {
    if row.lacks_own_push {
        return false;
    }
    match consistency.required_min(clock) {
        Some(min) => row.data_clock >= min,
        None => row.fetched_at == clock,
    }
}

fn protocol(shard: usize, reason: impl Into<String>) -> Error {
    Error::Protocol {
        peer: format!("server shard {shard}"),
        reason: reason.into(),
    }
}

/// The error a worker sees when a server gave up on its parked pull.
fn timeout_error(worker: u32, clock: u64, consistency: Consistency, t: &PullTimedOut) -> Error {
    let mut clocks = VectorClock::new(0);
    let mut never_connected = Vec::new();
    for &(w, status, c) in &t.clocks {
        clocks.set(WorkerId(w), c, status_from_code(status));
        if status == STATUS_NEVER_CONNECTED {
            never_connected.push(WorkerId(w));
        }
    }
    Error::from(GateTimeout {
        waiter: Some((WorkerId(worker), clock)),
        needed: t.needed,
        consistency,
        waited: Duration::from_micros(t.waited_us),
        behind: clocks.behind(t.needed),
        never_connected,
        clocks,
    })
}

#[cfg(all(test, not(laggard_loom)))]
mod tests {
    use super::*;
    use crate::proto::PushAck;
    use crate::table::{Placement, ShardMap};
    use crate::transport::StashMemory;

    /// A BSP table of keys 0..=9, all on one shard.
    fn table(name: &str, kind: ElementKind, width: usize) -> TableInfo {
        TableInfo {
            name: name.into(),
            kind,
            width,
            consistency: Consistency::Bsp,
            map: ShardMap::new(Placement::RoundRobin, 1, 0..=9).unwrap(),
            replay: None,
            sums_deltas: true,
        }
    }

    /// Worker 0 of one shard with `tables`.
    fn core_with(tables: Vec<TableInfo>) -> ClientCore {
        ClientCore::new(0, 1, Arc::from(tables))
    }

    #[test]
    fn a_message_from_a_shard_the_worker_lacks_is_an_error() {
        // It used to index past the worker's shards and panic.
        use crate::proto::PushHeld;
        let mut core = core_with(vec![table("t", ElementKind::I64, 4)]);
        let ack = Message::PushAck(PushAck {
            seq: 1,
            min_clock: 0,
        });
        let held = Message::PushHeld(PushHeld {
            seq: 1,
            hold_from: 0,
        });
        for msg in [ack, held] {
            let err = core.on_message(3, msg).unwrap_err().to_string();
            assert!(err.contains("a shard this worker does not have"), "{err}");
        }
    }

    /// A worker of one shard with one `i64` table of width 4 (32-byte rows)
    /// and a pull of `keys` in flight; returns the request (0 if no keys).
    fn pulling(keys: &[u64]) -> (ClientCore, u64) {
        let mut core = core_with(vec![table("t", ElementKind::I64, 4)]);
        let reqs = core.plan_pull(0, keys, Duration::from_secs(1)).unwrap();
        (core, reqs.first().copied().unwrap_or(0))
    }

    /// The worker of [`pulling`] with no pull in flight, welcomed by its
    /// shard, so its pushes go out.
    fn welcomed() -> ClientCore {
        let (mut core, _) = pulling(&[]);
        let welcome = Welcome {
            shard: 0,
            workers: 1,
            applied_seq: 0,
            clock: 0,
        };
        assert!(core.on_welcome(0, &welcome).unwrap().is_empty());
        core
    }

    /// A stash in heap memory that counts the blocks alive in `alive`.
    #[derive(Debug)]
    struct HeapStash(Vec<u8>, Arc<std::sync::atomic::AtomicUsize>);

    impl StashMemory for HeapStash {
        fn bytes(&self) -> &[u8] {
            &self.0
        }
        fn bytes_mut(&mut self) -> &mut [u8] {
            &mut self.0
        }
        fn as_any(&self) -> &dyn std::any::Any {
            self
        }
    }

    impl Drop for HeapStash {
        fn drop(&mut self) {
            self.1.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
        }
    }

    #[test]
    fn long_rows_are_stashed_and_go_last_as_pushes_of_their_own() {
        use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
        // Rows of 65,540 bytes (16,385 i32s: not a multiple of 8) and of
        // 8 bytes, in two tables.
        let width = STASH_MIN_ROW / 4 + 1;
        let mut core = core_with(vec![
            table("long", ElementKind::I32, width),
            table("short", ElementKind::I64, 1),
        ]);
        let welcome = Welcome {
            shard: 0,
            workers: 1,
            applied_seq: 0,
            clock: 0,
        };
        core.on_welcome(0, &welcome).unwrap();
        let alive = Arc::new(AtomicUsize::new(0));
        // What the runtime does: a stash of the length asked for, if asked.
        let stash = |core: &ClientCore, table: u32, key: u64| {
            let (shard, len) = core.wants_stash(table, key)?;
            assert_eq!((shard, len), (0, (width * 4).next_multiple_of(8)));
            alive.fetch_add(1, Relaxed);
            // Unspecified bytes: the core must write every one it sends.
            Some(Stash::new(HeapStash(vec![0xee; len], alive.clone())))
        };
        assert_eq!(
            core.wants_stash(0, 3),
            Some((0, (width * 4).next_multiple_of(8)))
        );
        assert_eq!(core.wants_stash(1, 3), None, "short rows go inline");
        for key in [3, 5, 3] {
            let block = stash(&core, 0, key);
            core.pending_add_stashing(0, key, &vec![key as i32; width], block)
                .unwrap();
        }
        assert_eq!(
            core.wants_stash(0, 3),
            None,
            "a pending row is not stashed again"
        );
        let block = stash(&core, 1, 7);
        core.pending_add_stashing(1, 7, &[70i64], block).unwrap();
        assert_eq!(alive.load(Relaxed), 2);
        assert_eq!(core.stats().rows_stashed, 2);
        assert_eq!(core.stats().rows_coalesced, 1);

        let pushes = core.flush(true);
        assert_eq!(
            pushes.len(),
            3,
            "the inline rows, then one push per stashed row"
        );
        let mut seen = Vec::new();
        for &(shard, seq) in &pushes {
            core.with_push_stash(shard, seq, |msg, stash| {
                let Message::Push(p) = msg else {
                    panic!("not a push")
                };
                let whole = msg.to_vec();
                let sections: Vec<_> = p.sections.iter().collect();
                match stash {
                    None => {
                        assert_eq!(sections.len(), 1);
                        assert_eq!(sections[0].table, 1);
                        assert!(!p.tick, "the tick goes with the last push");
                    }
                    Some(stash) => {
                        let [last] = sections[..] else {
                            panic!("one section")
                        };
                        let key = last.keys.iter().next().unwrap();
                        let want: Vec<u8> = (0..width)
                            .flat_map(|_| (key as i32 * if key == 3 { 2 } else { 1 }).to_le_bytes())
                            .collect();
                        assert_eq!(last.values, &want[..]);
                        // The frame is the head `split_values` gives,
                        // then the stash, padding included.
                        let parts = msg.encode_parts();
                        let (head, values) = parts.split_values().unwrap();
                        assert_eq!(values.as_ptr(), stash.as_ptr());
                        assert_eq!([head, &stash[..]].concat(), whole);
                        seen.push((key, p.tick));
                    }
                }
            })
            .unwrap();
        }
        assert_eq!(seen, [(3, false), (5, true)]);
        // The stash blocks stay until their pushes are acknowledged.
        let ack = Message::PushAck(PushAck {
            seq: pushes[1].1,
            min_clock: 1,
        });
        core.on_message(0, ack).unwrap();
        assert_eq!(alive.load(Relaxed), 1);
        assert_eq!(core.oldest_stashed_unacked(0), Some(pushes[2].1));
        let ack = Message::PushAck(PushAck {
            seq: pushes[2].1,
            min_clock: 1,
        });
        core.on_message(0, ack).unwrap();
        assert_eq!(alive.load(Relaxed), 0);
        assert_eq!(core.oldest_stashed_unacked(0), None);
    }

    #[test]
    fn a_row_the_transport_cannot_stash_goes_inline() {
        let width = STASH_MIN_ROW / 8;
        let mut core = core_with(vec![table("long", ElementKind::I64, width)]);
        core.pending_add_stashing(0, 1, &vec![2i64; width], None)
            .unwrap();
        // A block of the wrong length is not used either, and is dropped.
        let (_, len) = core.wants_stash(0, 2).unwrap();
        let alive = Arc::new(std::sync::atomic::AtomicUsize::new(1));
        let short = Stash::new(HeapStash(vec![0; len - 8], alive.clone()));
        core.pending_add_stashing(0, 2, &vec![3i64; width], Some(short))
            .unwrap();
        assert_eq!(alive.load(std::sync::atomic::Ordering::Relaxed), 0);
        assert_eq!(core.stats().rows_stashed, 0);
        assert_eq!(core.pending[0][0].keys, [1, 2]);
    }

    fn piece(req: u64, clock: u64, offset: u64, values: &[u8]) -> Message<'_> {
        Message::RowPiece(RowPiece {
            req,
            clock,
            table: 0,
            offset,
            total: 32,
            values,
        })
    }

    #[test]
    fn pieces_in_order_become_the_cached_row() {
        let (mut core, req) = pulling(&[3]);
        let row: Vec<u8> = (0..32).collect();
        core.on_message(0, piece(req, 1, 0, &row[..8])).unwrap();
        assert_eq!(core.assembled(req), Some(&row[..8]));
        assert!(core.cached(0, 3).is_none(), "cached before the last piece");
        core.on_message(0, piece(req, 1, 8, &row[8..])).unwrap();
        assert!(matches!(core.take_outcome(req), Some(Ok(()))));
        assert_eq!(core.cached(0, 3), Some(&row[..]));
    }

    #[test]
    fn pieces_that_do_not_continue_the_row_are_protocol_errors() {
        let bytes = [0u8; 32];
        // (what, request id added, clock, offset) of the second piece.
        let cases = [
            ("a gap", 0, 1, 16),
            ("another version", 0, 2, 8),
            ("an unknown request", 1, 1, 8),
        ];
        for (what, other_req, clock, offset) in cases {
            let (mut core, req) = pulling(&[3]);
            core.on_message(0, piece(req, 1, 0, &bytes[..8])).unwrap();
            let err = core.on_message(0, piece(req + other_req, clock, offset, &bytes[..8]));
            assert!(
                matches!(err, Err(Error::Protocol { .. })),
                "{what}: {err:?}"
            );
        }
        // A row of another length, and pieces for a pull of two rows.
        let (mut core, req) = pulling(&[3]);
        let long = Message::RowPiece(RowPiece {
            req,
            clock: 1,
            table: 0,
            offset: 0,
            total: 40,
            values: &bytes[..8],
        });
        assert!(matches!(
            core.on_message(0, long),
            Err(Error::Protocol { .. })
        ));
        let (mut core, req) = pulling(&[3, 4]);
        assert!(matches!(
            core.on_message(0, piece(req, 1, 0, &bytes[..8])),
            Err(Error::Protocol { .. })
        ));
    }

    #[test]
    fn a_pull_timeout_names_the_workers_behind_and_no_worker_past_its_list() {
        let timed_out = |req, clocks: Vec<(u32, u32, u64)>| {
            Message::PullTimedOut(PullTimedOut {
                req,
                needed: 3,
                waited_us: 10,
                clocks,
            })
        };
        // Worker 1 is behind: the pull's outcome says so.
        let (mut core, req) = pulling(&[3]);
        core.on_message(0, timed_out(req, vec![(0, 0, 5), (1, 0, 2)]))
            .unwrap();
        let err = core.take_outcome(req).unwrap().unwrap_err();
        assert!(err.to_string().contains("worker 1"), "{err}");
        // A worker id past the list (from a broken or hostile server) is a
        // protocol error, not a vector clock of four billion entries.
        let (mut core, req) = pulling(&[3]);
        let frame = timed_out(req, vec![(0, 0, 5), (u32::MAX, 0, 2)]).to_vec();
        let err = core.on_owned_frame(0, frame, 1 << 20);
        assert!(matches!(err, Err(Error::Protocol { .. })), "{err:?}");
    }

    #[test]
    fn a_held_push_is_taken_but_not_applied_until_acknowledged() {
        use crate::proto::PushHeld;
        let mut core = welcomed();
        let push = |core: &mut ClientCore| {
            core.pending_add(0, 1, &[1i64; 4]).unwrap();
            core.flush(true)
        };
        assert_eq!(push(&mut core), [(0, 1)]);
        assert_eq!(push(&mut core), [(0, 2)]);
        let held = |seq| Message::PushHeld(PushHeld { seq, hold_from: 2 });
        // Push 1 held: taken through 1, not 2; neither applied.
        core.on_message(0, held(1)).unwrap();
        assert!(core.taken_through(&[1]) && !core.taken_through(&[2]));
        assert!(!core.acked_through(&[1]));
        assert_eq!(core.held_back(0), Some((1, 2)));
        core.on_message(0, held(2)).unwrap();
        assert!(core.taken_through(&[2]));
        // Push 1 applied: push 2 is still held.
        let ack = |seq| Message::PushAck(PushAck { seq, min_clock: 2 });
        core.on_message(0, ack(1)).unwrap();
        assert!(core.acked_through(&[1]) && !core.acked_through(&[2]));
        assert_eq!(core.held_back(0), Some((2, 2)));
        // A lost connection forgets what the old one said: the resends
        // are held (or applied) again on the new one.
        core.link_lost(0);
        assert!(!core.taken_through(&[2]));
        assert_eq!(core.held_back(0), None);
        // A push the worker never sent cannot be held.
        let err = core.on_message(0, held(3)).unwrap_err();
        assert!(
            err.to_string()
                .contains("a hold for push 3, which was never sent"),
            "{err}"
        );
        // Once applied, nothing is held back.
        let mut core = welcomed();
        push(&mut core);
        core.on_message(0, held(1)).unwrap();
        core.on_message(0, ack(1)).unwrap();
        assert_eq!(core.held_back(0), None);
        assert!(core.acked_through(&[1]) && core.taken_through(&[1]));
    }

    #[test]
    fn a_pull_whose_answer_exceeds_the_largest_frame_asks_in_several_requests() {
        let (mut core, _) = pulling(&[]);
        let keys_of = |core: &ClientCore, reqs: &[u64]| -> Vec<Vec<u64>> {
            reqs.iter()
                .map(|&r| core.requests[&r].keys.clone())
                .collect()
        };
        // Two 32-byte rows need a 112-byte answer (16 header, 32 fields).
        core.set_frame_limit(112, false);
        let reqs = core.plan_pull(0, &[4, 3], Duration::from_secs(1)).unwrap();
        assert_eq!(keys_of(&core, &reqs), [vec![3, 4]]);
        core.set_frame_limit(111, false);
        let reqs = core
            .plan_pull(0, &[7, 5, 6], Duration::from_secs(1))
            .unwrap();
        assert_eq!(keys_of(&core, &reqs), [vec![5], vec![6], vec![7]]);
        assert_eq!(core.stats().pull_messages, 4);
        // Not even one row fits: refused at once, unless rows come in
        // pieces (then each row is asked for on its own).
        core.set_frame_limit(79, false);
        let err = core.plan_pull(0, &[8], Duration::from_secs(1));
        let Err(Error::Transport { reason }) = err else {
            panic!("expected a transport error, got {err:?}")
        };
        assert!(reason.contains("80-byte frame"), "{reason}");
        assert!(reason.contains("(79 bytes)"), "{reason}");
        assert_eq!(core.stats().rows_pulled, 5, "a refused pull was counted");
        core.set_frame_limit(56, true);
        let reqs = core.plan_pull(0, &[8, 9], Duration::from_secs(1)).unwrap();
        assert_eq!(keys_of(&core, &reqs), [vec![8], vec![9]]);
        // A request names each key in 8 bytes: for rows shorter than that,
        // the request is what must fit (here 2 keys; the answer, 4 rows).
        let mut narrow = core_with(vec![table("narrow", ElementKind::F32, 1)]);
        narrow.set_frame_limit(64, false);
        let reqs = narrow
            .plan_pull(0, &[0, 1, 2], Duration::from_secs(1))
            .unwrap();
        assert_eq!(keys_of(&narrow, &reqs), [vec![0, 1], vec![2]]);
        core.set_frame_limit(55, true);
        let err = core.plan_pull(0, &[0], Duration::from_secs(1)).unwrap_err();
        assert!(err.to_string().contains("56-byte frame"), "{err}");
    }

    /// A push of `keys` (rows of 32 bytes, values `key` in every element)
    /// through frames of at most `max_frame` bytes: each push message's
    /// (tick, keys, values).
    fn pushed(keys: &[u64], max_frame: usize) -> Vec<(bool, Vec<u64>, Vec<i64>)> {
        let mut core = welcomed();
        core.set_frame_limit(max_frame, false);
        for &key in keys {
            core.pending_add(0, key, &[key as i64; 4]).unwrap();
        }
        let sent = core.flush(true);
        assert_eq!(core.clock(), 1);
        sent.iter()
            .map(|&(shard, seq)| {
                core.with_push(shard, seq, |m| {
                    let frame = m.to_vec();
                    let Message::Push(p) = decode(&frame, 1 << 20).unwrap() else {
                        panic!("not a push")
                    };
                    assert_eq!(p.clock, 0);
                    let mut keys = Vec::new();
                    let mut values = Vec::new();
                    for s in p.sections.iter() {
                        s.keys.extend_into(&mut keys);
                        values.extend(
                            s.values
                                .chunks_exact(8)
                                .map(|b| i64::from_le_bytes(b.try_into().unwrap())),
                        );
                    }
                    assert!(m.encoded_len() <= max_frame, "{} bytes", m.encoded_len());
                    (p.tick, keys, values)
                })
                .unwrap()
            })
            .collect()
    }

    #[test]
    fn acknowledged_row_sets_are_reused_as_deep_as_pushes_ran_ahead() {
        let mut core = welcomed();
        // Ten pushes in flight, then all acknowledged at once.
        let depth = 10;
        let mut last = 0;
        for key in 0..depth {
            core.pending_add(0, key, &[1i64; 4]).unwrap();
            last = core.flush(true).last().unwrap().1;
        }
        let ack = Message::PushAck(PushAck {
            seq: last,
            min_clock: depth,
        });
        core.on_message(0, ack).unwrap();
        assert_eq!(core.unacked(0), 0);
        // As deep again: every push starts from a buffer that already
        // held a row, none from a new one.
        for key in 0..depth {
            core.pending_add(0, key, &[1i64; 4]).unwrap();
            core.flush(true);
            let capacity = core.pending[0][0].values.capacity();
            assert!(capacity >= 32, "push {key} left a fresh buffer pending");
        }
    }

    #[test]
    fn a_push_longer_than_the_largest_frame_goes_as_several() {
        let rows =
            |keys: &[u64]| -> Vec<i64> { keys.iter().flat_map(|&k| [k as i64; 4]).collect() };
        // One row: 48 bytes of push, 16 of section, 8 of key, 32 of row.
        assert_eq!(
            pushed(&[1, 2, 3], 184),
            [(true, vec![1, 2, 3], rows(&[1, 2, 3]))]
        );
        assert_eq!(
            pushed(&[1, 2, 3], 183),
            [
                (false, vec![1, 2], rows(&[1, 2])),
                (true, vec![3], rows(&[3]))
            ]
        );
        assert_eq!(
            pushed(&[5, 1, 2], 104),
            [
                (false, vec![5], rows(&[5])),
                (false, vec![1], rows(&[1])),
                (true, vec![2], rows(&[2]))
            ]
        );
        // No row fits: refused by `pending_add`, and nothing is pending.
        let (mut core, _) = pulling(&[]);
        core.set_frame_limit(103, false);
        let err = core.pending_add(0, 1, &[1i64; 4]).unwrap_err();
        assert!(err.to_string().contains("104-byte frame"), "{err}");
        assert!(core.flush(false).is_empty());
    }

    #[test]
    fn a_split_push_moves_whole_sections_where_they_fit() {
        let split = |max_frame| {
            let mut core = core_with(vec![
                table("a", ElementKind::I64, 4),
                table("b", ElementKind::I64, 1),
            ]);
            core.set_frame_limit(max_frame, false);
            core.pending_add(0, 1, &[1i64; 4]).unwrap();
            core.pending_add(0, 2, &[2i64; 4]).unwrap();
            core.pending_add(1, 3, &[3i64]).unwrap();
            core.flush(true);
            core.links[0]
                .unacked
                .iter()
                .map(|sent| {
                    let sections: Vec<(u32, Vec<u64>)> = sent
                        .sections
                        .iter()
                        .map(|(t, rows)| {
                            assert_eq!(rows.values.len(), rows.keys.len() * [32, 8][*t as usize]);
                            (*t, rows.keys.clone())
                        })
                        .collect();
                    (sent.tick, sections)
                })
                .collect::<Vec<_>>()
        };
        // Table a's section: 16 + 2 keys + 2 rows = 96 bytes; b's: 32.
        assert_eq!(split(176), [(true, vec![(0, vec![1, 2]), (1, vec![3])])]);
        assert_eq!(
            split(175),
            [(false, vec![(0, vec![1, 2])]), (true, vec![(1, vec![3])])]
        );
        assert_eq!(
            split(120),
            [
                (false, vec![(0, vec![1])]),
                (false, vec![(0, vec![2])]),
                (true, vec![(1, vec![3])])
            ]
        );
    }

    /// A frame kept by the transport that counts the copies alive.
    struct CountedFrame(Vec<u8>, Arc<std::sync::atomic::AtomicUsize>);

    impl AsRef<[u8]> for CountedFrame {
        fn as_ref(&self) -> &[u8] {
            &self.0
        }
    }

    impl Drop for CountedFrame {
        fn drop(&mut self) {
            self.1.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
        }
    }

    /// Answers `req`, a pull of keys 3 and 5, with a frame kept in
    /// transport memory; returns the rows' bytes and the count of live
    /// frames (1 until it is released).
    fn answer_kept(
        core: &mut ClientCore,
        req: u64,
    ) -> (Vec<u8>, Arc<std::sync::atomic::AtomicUsize>) {
        let rows: Vec<u8> = (0..64).collect();
        let frame = Message::PullResponse(PullResponse {
            req,
            clock: 1,
            table: 0,
            rows: 2,
            values: &rows,
        })
        .to_vec();
        let alive = Arc::new(std::sync::atomic::AtomicUsize::new(1));
        let kept = KeptFrame::new(CountedFrame(frame, alive.clone()));
        core.on_kept_frame(0, kept, 1 << 20).unwrap();
        assert!(matches!(core.take_outcome(req), Some(Ok(()))));
        (rows, alive)
    }

    #[test]
    fn kept_rows_are_read_in_place_until_replaced_or_copied_out() {
        use std::sync::atomic::Ordering::Relaxed;
        let (mut core, req) = pulling(&[3, 5]);
        let (rows, alive) = answer_kept(&mut core, req);
        assert_eq!(core.cached(0, 3), Some(&rows[..32]));
        assert_eq!(core.cached(0, 5), Some(&rows[32..]));
        assert!(core.keeps_frames());
        assert_eq!(core.stats().rows_kept, 2);
        assert_eq!(alive.load(Relaxed), 1, "the rows share the frame");
        // A lost link copies kept rows out: their frame is released.
        core.link_lost(0);
        assert_eq!(alive.load(Relaxed), 0);
        assert!(!core.keeps_frames());
        assert_eq!(core.stats().kept_rows_copied, 2);
        assert_eq!(core.cached(0, 3), Some(&rows[..32]));
        assert_eq!(core.cached(0, 5), Some(&rows[32..]));
    }

    #[test]
    fn a_lost_link_starts_the_row_over() {
        let (mut core, req) = pulling(&[3]);
        let old = [1u8; 32];
        let new = [2u8; 32];
        core.on_message(0, piece(req, 1, 0, &old[..16])).unwrap();
        assert_eq!(core.rows_restarted(), 0);
        core.link_lost(0);
        assert_eq!(core.rows_restarted(), 1);
        assert_eq!(core.assembled(req), Some(&[][..]));
        // The resent request is answered from the first byte again.
        core.on_message(0, piece(req, 2, 0, &new[..16])).unwrap();
        core.on_message(0, piece(req, 2, 16, &new[16..])).unwrap();
        assert!(matches!(core.take_outcome(req), Some(Ok(()))));
        assert_eq!(core.cached(0, 3), Some(&new[..]));
    }

    /// Answers request `req` of table 0 (width 4, `i64`) with the rows of
    /// `keys`, each filled with its key, as of clock `clock`.
    fn answer(core: &mut ClientCore, req: u64, keys: &[u64], clock: u64) {
        let mut values = Vec::new();
        for &key in keys {
            for _ in 0..4 {
                values.extend_from_slice(&(key as i64).to_le_bytes());
            }
        }
        let msg = Message::PullResponse(PullResponse {
            req,
            clock,
            table: 0,
            rows: keys.len() as u32,
            values: &values,
        });
        core.on_message(0, msg).unwrap();
        assert!(matches!(core.take_outcome(req), Some(Ok(()))));
    }

    fn cached_keys(core: &ClientCore) -> Vec<u64> {
        (0..=9).filter(|&k| core.cached(0, k).is_some()).collect()
    }

    #[test]
    fn a_cache_over_its_budget_drops_stale_rows_then_the_least_recently_used() {
        // 32-byte rows; room for 4, shrunk to 3 when over.
        let (mut core, _) = pulling(&[]);
        core.set_cache_limit(4 * 32);
        let reqs = core
            .plan_pull(0, &[0, 1, 2, 3], Duration::from_secs(1))
            .unwrap();
        answer(&mut core, reqs[0], &[0, 1, 2, 3], 0);
        // At the budget, not over it: nothing goes.
        let reqs = core.plan_pull(0, &[4], Duration::from_secs(1)).unwrap();
        answer(&mut core, reqs[0], &[4], 0);
        assert_eq!(core.cached_bytes(), 5 * 32);
        assert_eq!(cached_keys(&core), [0, 1, 2, 3, 4]);
        // Rows 2 and 3 answer a pull: now 0 and 1 were used least recently.
        assert!(
            core.plan_pull(0, &[2, 3], Duration::from_secs(1))
                .unwrap()
                .is_empty()
        );
        // Over budget: the next pull drops 0 and 1 first (all are fresh).
        let reqs = core.plan_pull(0, &[4, 9], Duration::from_secs(1)).unwrap();
        assert_eq!(cached_keys(&core), [2, 3, 4]);
        assert_eq!(core.stats().rows_evicted, 2);
        answer(&mut core, reqs[0], &[9], 0);
        // A clock later (BSP), rows of clock 0 cannot answer a pull: they
        // go first, whatever their use, and fresh ones stay.
        core.flush(true);
        let reqs = core.plan_pull(0, &[5, 6], Duration::from_secs(1)).unwrap();
        answer(&mut core, reqs[0], &[5, 6], 1);
        assert_eq!(cached_keys(&core), [2, 3, 4, 5, 6, 9]);
        let reqs = core.plan_pull(0, &[7], Duration::from_secs(1)).unwrap();
        assert_eq!(cached_keys(&core), [5, 6]);
        assert_eq!(core.cached_bytes(), 2 * 32);
        assert_eq!(core.stats().rows_evicted, 6);
        answer(&mut core, reqs[0], &[7], 1);
        assert_eq!(
            core.cached(0, 7),
            Some(&[7u8, 0, 0, 0, 0, 0, 0, 0].repeat(4)[..])
        );
        core.clear_cache();
        assert_eq!(core.cached_bytes(), 0);
    }

    #[test]
    fn kept_rows_dropped_for_the_budget_release_their_frame() {
        use std::sync::atomic::Ordering::Relaxed;
        let (mut core, req) = pulling(&[3, 5]);
        core.set_cache_limit(32);
        let (_, alive) = answer_kept(&mut core, req);
        assert_eq!(
            core.cached_bytes(),
            64,
            "one pull's rows stay, past the budget"
        );
        assert!(core.keeps_frames());
        core.plan_pull(0, &[7], Duration::from_secs(1)).unwrap();
        assert_eq!(cached_keys(&core), Vec::<u64>::new());
        assert!(!core.keeps_frames());
        assert_eq!(alive.load(Relaxed), 0, "the frame is released");
    }
}
