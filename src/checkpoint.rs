//! Checkpoints: every row a table stores, with its update rule's state,
//! written to bytes and read back into a table.
//!
//! A server shard saves its part of each table ([`save`]) while it serves
//! or after it stopped, and a restarted one loads it ([`load`]) before it
//! serves again. Training then resumes where the checkpoint was taken:
//! the rows and every optimizer's per-row state (momentum, Adagrad's
//! sums, Adam's moments and step count) come back exactly. Each row is
//! saved consistent on its own (as [`Table::visit_shard`] reads it); a
//! checkpoint taken while pushes arrive is not one snapshot of the whole
//! table, which SGD tolerates as it tolerates staleness.
//!
//! ```
//! use laggard::{Adam, Table, TableSpec, checkpoint};
//!
//! let spec = || TableSpec::<f32>::sparse(4).update(Adam::new(0.01));
//! let trained = Table::new(spec())?;
//! trained.push(7, &[0.1, 0.2, 0.3, 0.4])?;
//!
//! let mut bytes = Vec::new(); // a `File` in practice
//! let saved = checkpoint::save(&trained, &mut bytes)?;
//! assert_eq!(saved.rows, 1);
//!
//! let resumed = Table::new(spec())?;
//! let loaded = checkpoint::load(&resumed, &bytes[..], checkpoint::Foreign::Refuse)?;
//! assert_eq!(loaded.restored, 1);
//! let mut row = [0.0; 4];
//! resumed.pull(7, &mut row)?;
//! # let mut same = [0.0; 4];
//! # trained.pull(7, &mut same)?;
//! # assert_eq!(row, same);
//! # Ok::<(), laggard::Error>(())
//! ```
//!
//! The core does no I/O of its own: `save` and `load` take any `Write` and
//! `Read`. To replace a checkpoint file only once the new one is whole,
//! write beside it, sync, and rename over it (a crash mid-save then leaves
//! the old checkpoint in place; `transports/tcp/examples/train_tcp.rs`
//! does this):
//!
//! ```
//! # use laggard::{Table, TableSpec, checkpoint};
//! # let table = Table::new(TableSpec::<f32>::dense(0..4, 2))?;
//! # let dir = std::env::temp_dir().join(format!("laggard-doc-{}", std::process::id()));
//! # std::fs::create_dir_all(&dir)?;
//! let (path, partial) = (dir.join("weights.ckpt"), dir.join("weights.ckpt.partial"));
//! let mut file = std::fs::File::create(&partial)?;
//! checkpoint::save(&table, &mut file)?;
//! file.sync_all()?;
//! std::fs::rename(&partial, &path)?;
//! # std::fs::remove_dir_all(&dir)?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # The clock a checkpoint was taken at
//!
//! [`save_at`] records the clock the workers had reached (a server's
//! [`on_clock`](crate::Server::on_clock) hook is handed it), and
//! [`load`] and [`verify`] return it. A server shard that loads one
//! before it serves starts its workers there
//! ([`Server::start_at`](crate::Server::start_at)), so a job that
//! resumes goes on from that clock instead of clock 0: a learning-rate
//! schedule or a training loop keyed by the clock continues as if
//! nothing had happened.
//!
//! # Format (version 2, little-endian)
//!
//! | bytes | field |
//! | --- | --- |
//! | 8 | magic `LGGDCKPT` |
//! | 4 | format version (2) |
//! | 1 | element type ([`ElementKind`]), then 3 zero bytes |
//! | 8 | row width |
//! | 8 | update-state elements per row |
//! | 8 | the clock it was taken at (not in version 1, whose files load as clock 0) |
//!
//! then per row a byte `1`, the key (8 bytes) and the row's values and
//! state (`(width + state) × element size` bytes); then a byte `0`, the
//! number of rows (8 bytes) and a checksum of everything before it (8
//! bytes). A checksum that does not match, a truncated file, a wrong
//! element type, width or state length, or bytes after the end are errors
//! ([`Error::Checkpoint`]) that say which. [`verify`] finds them without
//! restoring anything.

use std::io::{BufReader, BufWriter, Read, Write};

use crate::element::{Element, ElementKind, le_bytes, le_bytes_mut, read_le_slice, write_le_slice};
use crate::error::{Error, Result};
use crate::table::{RowSnapshot, Table};

const MAGIC: [u8; 8] = *b"LGGDCKPT";
/// The format [`save_at`] writes.
const VERSION: u32 = 2;
/// The first format, without a clock; still read.
const VERSION_1: u32 = 1;
/// The header's fields common to every version (the clock follows in
/// version 2).
const HEADER_LEN: usize = 32;
const ROW: u8 = 1;
const END: u8 = 0;
/// Buffer for reading and writing, so that rows of a few elements do not
/// each cost a system call.
const BUFFER: usize = 256 << 10;

/// What [`save`] wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Saved {
    /// Rows written.
    pub rows: u64,
    /// Bytes written, header and trailer included.
    pub bytes: u64,
}

/// What [`load`] restored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Loaded {
    /// Rows restored into the table.
    pub restored: u64,
    /// Rows left out because the table does not store their keys
    /// ([`Foreign::Skip`]).
    pub skipped: u64,
    /// The clock the checkpoint was taken at ([`save_at`]; 0 for one
    /// written by [`save`] or by format version 1).
    pub clock: u64,
}

/// What [`load`] does with a row whose key the table does not store (it
/// belongs to another server shard).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Foreign {
    /// Fail with the error of the first such row: the checkpoint was meant
    /// for exactly this table or shard.
    Refuse,
    /// Leave such rows out: each server shard of a cluster with another
    /// shard count loads every shard's checkpoint and keeps its own rows.
    Skip,
}

/// Writes every row `table` stores (all shards of a [`Table::new`], the
/// one shard of a [`Table::for_shard`]) with its update state to `out`,
/// through a buffer, and flushes it. Pushes may go on meanwhile; each row
/// is written as it was before or after any push, never torn. The
/// checkpoint records clock 0; [`save_at`] records another.
pub fn save<T: Element>(table: &Table<T>, out: impl Write) -> Result<Saved> {
    save_at(table, 0, out)
}

/// [`save`], recording that the checkpoint was taken at `clock`: the
/// clock a server's [`on_clock`](crate::Server::on_clock) hook is called
/// with, or the clock every worker finished at. [`load`] returns it, for
/// [`Server::start_at`](crate::Server::start_at).
///
/// ```
/// use laggard::{Table, TableSpec, checkpoint};
///
/// let table = Table::new(TableSpec::<f32>::dense(0..8, 2))?;
/// let mut bytes = Vec::new();
/// checkpoint::save_at(&table, 40, &mut bytes)?;
/// let resumed = Table::new(TableSpec::<f32>::dense(0..8, 2))?;
/// let loaded = checkpoint::load(&resumed, &bytes[..], checkpoint::Foreign::Refuse)?;
/// assert_eq!((loaded.restored, loaded.clock), (8, 40));
/// # Ok::<(), laggard::Error>(())
/// ```
pub fn save_at<T: Element>(table: &Table<T>, clock: u64, out: impl Write) -> Result<Saved> {
    let mut out = Writer {
        out: BufWriter::with_capacity(BUFFER, out),
        digest: Digest::default(),
        bytes: 0,
    };
    out.put(&header::<T>(table.width(), table.state_len()))?;
    out.put(&clock.to_le_bytes())?;
    let mut rows = 0u64;
    let mut scratch = Vec::new();
    let mut failed = None;
    for shard in 0..table.shard_map().shards() {
        table.visit_shard(shard, |row| {
            if failed.is_some() {
                return;
            }
            match put_row(&mut out, &row, &mut scratch) {
                Ok(()) => rows += 1,
                Err(e) => failed = Some(e),
            }
        })?;
        if let Some(e) = failed.take() {
            return Err(e);
        }
    }
    out.put(&[END])?;
    out.put(&rows.to_le_bytes())?;
    let sum = out.digest.clone().finish();
    out.put(&sum.to_le_bytes())?;
    out.out
        .flush()
        .map_err(|e| checkpoint(format!("could not write: {e}")))?;
    Ok(Saved {
        rows,
        bytes: out.bytes,
    })
}

/// Reads a checkpoint written by [`save`] from `input` (through a
/// buffer) and restores each of its rows into `table`
/// ([`Table::restore_row`]); `foreign` says what happens to rows whose
/// keys the table does not store. Rows of the table that the checkpoint
/// lacks keep their values.
///
/// The table must have the element type, row width and update state
/// length the checkpoint was saved with. Rows are restored as they are
/// read, so on an error (a corrupted or truncated checkpoint is found out
/// at the latest by the checksum at its end) the rows before the bad one
/// were restored: start again from a fresh table, or [`verify`] the
/// checkpoint before loading it.
pub fn load<T: Element>(table: &Table<T>, input: impl Read, foreign: Foreign) -> Result<Loaded> {
    let mut loaded = Loaded {
        restored: 0,
        skipped: 0,
        clock: 0,
    };
    let (_, clock) = read_rows(table, input, |row, at, key, values| {
        match table.restore_cells(key, values) {
            Ok(()) => loaded.restored += 1,
            Err(Error::KeyNotOwned { .. }) if foreign == Foreign::Skip => loaded.skipped += 1,
            Err(e) => {
                return Err(checkpoint(format!(
                    "row {row} (key {key}, byte {at}) cannot be restored: {e}"
                )));
            }
        }
        Ok(())
    })?;
    loaded.clock = clock;
    Ok(loaded)
}

/// What [`verify`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Verified {
    /// Rows in the checkpoint.
    pub rows: u64,
    /// The clock it was taken at, as [`Loaded::clock`].
    pub clock: u64,
}

/// Reads a checkpoint from `input` through to its checksum, as [`load`]
/// would for `table`, and restores nothing: an error says what is wrong
/// (truncated, corrupted, or saved from a table of another element type,
/// width or update rule) before any row changed. [`load`] restores rows
/// as it reads them, so a caller that must not touch a live table with a
/// bad file verifies it first and loads it after (reading it twice).
/// Whether the table stores the checkpoint's keys is left to `load`.
///
/// ```
/// use laggard::{Table, TableSpec, checkpoint};
///
/// let table = Table::new(TableSpec::<f32>::dense(0..8, 2))?;
/// let mut bytes = Vec::new();
/// checkpoint::save(&table, &mut bytes)?;
/// assert_eq!(checkpoint::verify(&table, &bytes[..])?.rows, 8);
/// let last = bytes.len() - 1;
/// bytes[last] ^= 1; // one bit of the checksum
/// assert!(checkpoint::verify(&table, &bytes[..]).is_err());
/// # Ok::<(), laggard::Error>(())
/// ```
pub fn verify<T: Element>(table: &Table<T>, input: impl Read) -> Result<Verified> {
    let (rows, clock) = read_rows(table, input, |_, _, _, _| Ok(()))?;
    Ok(Verified { rows, clock })
}

/// Reads a checkpoint for `table` from `input`, calling `each(row, byte,
/// key, values and state)` for every row as it is read, then checks the
/// row count, the checksum and that nothing follows. Returns the rows and
/// the clock the checkpoint was taken at.
fn read_rows<T: Element>(
    table: &Table<T>,
    input: impl Read,
    mut each: impl FnMut(u64, u64, u64, &[T]) -> Result<()>,
) -> Result<(u64, u64)> {
    let mut input = Reader {
        input: BufReader::with_capacity(BUFFER, input),
        digest: Digest::default(),
        offset: 0,
    };
    let mut header = [0u8; HEADER_LEN];
    input.take(&mut header, "the header")?;
    let clock = match check_header::<T>(&header, table.width(), table.state_len())? {
        VERSION_1 => 0,
        _ => {
            let mut clock = [0u8; 8];
            input.take(&mut clock, "the header's clock")?;
            u64::from_le_bytes(clock)
        }
    };
    let cells = table.width() + table.state_len();
    let mut scratch = Vec::new();
    let mut values = vec![T::ZERO; cells];
    let mut rows = 0u64;
    loop {
        let at = input.offset;
        let mut head = [0u8; 9];
        input.take(&mut head[..1], "a row or the end marker")?;
        match head[0] {
            ROW => {}
            END => break,
            tag => {
                return Err(checkpoint(format!(
                    "byte {at}: found {tag:#04x} where a row (0x01) or the end (0x00) \
                     belongs; the checkpoint is corrupted"
                )));
            }
        }
        input.take(&mut head[1..], "a row")?;
        let key = u64::from_le_bytes(head[1..].try_into().expect("8 bytes"));
        match le_bytes_mut(&mut values) {
            Some(bytes) => input.take(bytes, "a row")?,
            None => {
                scratch.resize(cells * T::SIZE, 0);
                input.take(&mut scratch, "a row")?;
                read_le_slice(&scratch, &mut values);
            }
        }
        each(rows, at, key, &values)?;
        rows += 1;
    }
    let (mut count, mut sum) = ([0u8; 8], [0u8; 8]);
    input.take(&mut count, "the row count")?;
    let computed = input.digest.clone().finish();
    input.take_unhashed(&mut sum, "the checksum")?;
    let (count, sum) = (u64::from_le_bytes(count), u64::from_le_bytes(sum));
    if count != rows {
        return Err(checkpoint(format!(
            "the end marker counts {count} rows but {rows} were read; the checkpoint is corrupted"
        )));
    }
    if sum != computed {
        return Err(checkpoint(
            "the checksum does not match the contents; the checkpoint is corrupted".into(),
        ));
    }
    match input.input.bytes().next() {
        None => Ok((rows, clock)),
        Some(Ok(_)) => Err(checkpoint(format!(
            "bytes follow the end of the checkpoint (at byte {}); is this a \
             concatenation of files?",
            input.offset
        ))),
        Some(Err(e)) => Err(checkpoint(format!("could not read: {e}"))),
    }
}

fn checkpoint(reason: String) -> Error {
    Error::Checkpoint { reason }
}

fn header<T: Element>(width: usize, state_len: usize) -> [u8; HEADER_LEN] {
    let mut h = [0u8; HEADER_LEN];
    h[..8].copy_from_slice(&MAGIC);
    h[8..12].copy_from_slice(&VERSION.to_le_bytes());
    h[12] = T::KIND.code();
    h[16..24].copy_from_slice(&(width as u64).to_le_bytes());
    h[24..32].copy_from_slice(&(state_len as u64).to_le_bytes());
    h
}

/// Checks the header's common fields against the table; returns the
/// format version (1 or 2).
fn check_header<T: Element>(h: &[u8; HEADER_LEN], width: usize, state_len: usize) -> Result<u32> {
    if h[..8] != MAGIC {
        return Err(checkpoint(format!(
            "the input is not a laggard checkpoint: it starts with {:02x?}, not \"LGGDCKPT\"",
            &h[..8]
        )));
    }
    let version = u32::from_le_bytes(h[8..12].try_into().expect("4 bytes"));
    if version != VERSION && version != VERSION_1 {
        return Err(checkpoint(format!(
            "format version {version}; this laggard reads versions {VERSION_1} and {VERSION}"
        )));
    }
    if h[12] != T::KIND.code() || h[13..16] != [0; 3] {
        let holds = ElementKind::from_code(h[12]).map_or("an unknown element type", |k| k.name());
        return Err(checkpoint(format!(
            "it holds {holds} rows but the table holds {}",
            T::NAME
        )));
    }
    let saved_width = u64::from_le_bytes(h[16..24].try_into().expect("8 bytes"));
    if saved_width != width as u64 {
        return Err(checkpoint(format!(
            "its rows have {saved_width} elements but the table's have {width}"
        )));
    }
    let saved_state = u64::from_le_bytes(h[24..32].try_into().expect("8 bytes"));
    if saved_state != state_len as u64 {
        return Err(checkpoint(format!(
            "its rows carry {saved_state} update-state elements but the table's update rule \
             keeps {state_len}; load it into a table with the update rule it was saved with"
        )));
    }
    Ok(version)
}

/// Writes a row's record: the tag and the key, then its values and state,
/// as they lie in memory on a little-endian host and converted through
/// `scratch` on a big-endian one.
fn put_row<T: Element, W: Write>(
    out: &mut Writer<W>,
    row: &RowSnapshot<'_, T>,
    scratch: &mut Vec<u8>,
) -> Result<()> {
    let mut head = [ROW; 9];
    head[1..].copy_from_slice(&row.key.to_le_bytes());
    out.put(&head)?;
    for cells in [row.values, row.state] {
        match le_bytes(cells) {
            Some(bytes) => out.put(bytes)?,
            None => {
                scratch.resize(cells.len() * T::SIZE, 0);
                write_le_slice(cells, scratch);
                out.put(scratch)?;
            }
        }
    }
    Ok(())
}

struct Writer<W: Write> {
    out: BufWriter<W>,
    digest: Digest,
    bytes: u64,
}

impl<W: Write> Writer<W> {
    fn put(&mut self, bytes: &[u8]) -> Result<()> {
        self.digest.update(bytes);
        self.bytes += bytes.len() as u64;
        self.out
            .write_all(bytes)
            .map_err(|e| checkpoint(format!("could not write: {e}")))
    }
}

struct Reader<R: Read> {
    input: BufReader<R>,
    digest: Digest,
    offset: u64,
}

impl<R: Read> Reader<R> {
    /// Fills `buf` and adds it to the checksum.
    fn take(&mut self, buf: &mut [u8], what: &str) -> Result<()> {
        self.take_unhashed(buf, what)?;
        self.digest.update(buf);
        Ok(())
    }

    fn take_unhashed(&mut self, buf: &mut [u8], what: &str) -> Result<()> {
        match self.input.read_exact(buf) {
            Ok(()) => {
                self.offset += buf.len() as u64;
                Ok(())
            }
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Err(checkpoint(format!(
                "it ends inside {what}, which starts at byte {}; the checkpoint is truncated",
                self.offset
            ))),
            Err(e) => Err(checkpoint(format!(
                "could not read at byte {}: {e}",
                self.offset
            ))),
        }
    }
}

/// A streaming checksum over 8-byte words in four independent lanes (word
/// `i` of each 32-byte block goes to lane `i`, so the lanes' multiplies
/// overlap instead of waiting on each other). Each step is a bijection of
/// its lane's state for a fixed word and of the word for a fixed state, and
/// the lanes are folded in order by the same step, so any change confined
/// to one word always changes the result; the total length is folded in
/// last. It finds corruption, not tampering.
#[derive(Clone)]
struct Digest {
    lanes: [u64; 4],
    pending: [u8; 32],
    pending_len: usize,
    len: u64,
}

impl Default for Digest {
    fn default() -> Self {
        Digest {
            lanes: [1, 2, 3, 4],
            pending: [0; 32],
            pending_len: 0,
            len: 0,
        }
    }
}

fn mix(state: u64, word: u64) -> u64 {
    (state ^ word)
        .wrapping_mul(0x9E37_79B9_7F4A_7C15)
        .rotate_left(29)
}

impl Digest {
    fn block(&mut self, block: &[u8]) {
        for (lane, word) in self.lanes.iter_mut().zip(block.chunks_exact(8)) {
            *lane = mix(*lane, u64::from_le_bytes(word.try_into().expect("8 bytes")));
        }
    }

    fn update(&mut self, mut bytes: &[u8]) {
        self.len += bytes.len() as u64;
        if self.pending_len > 0 {
            let n = (32 - self.pending_len).min(bytes.len());
            self.pending[self.pending_len..self.pending_len + n].copy_from_slice(&bytes[..n]);
            self.pending_len += n;
            bytes = &bytes[n..];
            if self.pending_len < 32 {
                return;
            }
            let block = self.pending;
            self.block(&block);
            self.pending_len = 0;
        }
        let mut blocks = bytes.chunks_exact(32);
        for block in &mut blocks {
            self.block(block);
        }
        let rest = blocks.remainder();
        self.pending[..rest.len()].copy_from_slice(rest);
        self.pending_len = rest.len();
    }

    fn finish(mut self) -> u64 {
        if self.pending_len > 0 {
            self.pending[self.pending_len..].fill(0);
            let block = self.pending;
            self.block(&block);
        }
        let folded = self.lanes.iter().fold(0, |s, &lane| mix(s, lane));
        let s = mix(folded, self.len);
        s ^ (s >> 31)
    }
}

#[cfg(test)]
mod tests {
    use super::Digest;
    use proptest::prelude::*;

    fn digest(parts: &[&[u8]]) -> u64 {
        let mut d = Digest::default();
        parts.iter().for_each(|p| d.update(p));
        d.finish()
    }

    proptest! {
        /// `save` and `load` feed the same bytes in different pieces.
        #[test]
        fn the_digest_does_not_depend_on_how_bytes_are_split(
            bytes in prop::collection::vec(any::<u8>(), 0..300),
            cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..6),
        ) {
            let mut at: Vec<usize> = cuts.iter().map(|c| c.index(bytes.len() + 1)).collect();
            at.sort();
            let mut parts = Vec::new();
            let mut from = 0;
            for to in at {
                parts.push(&bytes[from..to]);
                from = to;
            }
            parts.push(&bytes[from..]);
            prop_assert_eq!(digest(&parts), digest(&[&bytes]));
        }

        /// Any change within one 8-byte word, anywhere, is seen.
        #[test]
        fn the_digest_sees_every_change_within_one_word(
            bytes in prop::collection::vec(any::<u8>(), 1..300),
            word in any::<prop::sample::Index>(),
            flips in any::<u64>(),
        ) {
            let word = word.index(bytes.len().div_ceil(8));
            let mut changed = bytes.clone();
            let span = &mut changed[word * 8..(word * 8 + 8).min(bytes.len())];
            for (b, f) in span.iter_mut().zip(flips.to_le_bytes()) {
                *b ^= f;
            }
            prop_assume!(changed != bytes);
            prop_assert_ne!(digest(&[&changed]), digest(&[&bytes]));
        }
    }

    /// A checkpoint of `table` in format version `version`, at `clock`
    /// (version 1 has no clock), with a checksum that matches.
    fn written_as(version: u32, table: &crate::Table<i32>, clock: u64) -> Vec<u8> {
        let mut v2 = Vec::new();
        super::save_at(table, clock, &mut v2).unwrap();
        let mut body = v2[..v2.len() - 8].to_vec();
        body[8..12].copy_from_slice(&version.to_le_bytes());
        if version == super::VERSION_1 {
            body.drain(super::HEADER_LEN..super::HEADER_LEN + 8);
        }
        let sum = digest(&[&body]);
        body.extend_from_slice(&sum.to_le_bytes());
        body
    }

    #[test]
    fn version_1_checkpoints_still_load_at_clock_0_and_later_versions_are_refused() {
        use super::{Foreign, load, verify};
        use crate::{Table, TableSpec};
        let spec = || TableSpec::<i32>::dense(0..3, 2);
        let table = Table::new(spec()).unwrap();
        table.push(1, &[5, 6]).unwrap();

        let v1 = written_as(1, &table, 0);
        let fresh = Table::new(spec()).unwrap();
        assert_eq!(verify(&fresh, &v1[..]).unwrap().clock, 0);
        let loaded = load(&fresh, &v1[..], Foreign::Refuse).unwrap();
        assert_eq!((loaded.restored, loaded.clock), (3, 0));
        let mut row = [0; 2];
        fresh.pull(1, &mut row).unwrap();
        assert_eq!(row, [5, 6]);

        assert_eq!(
            verify(&fresh, &written_as(2, &table, 9)[..]).unwrap().clock,
            9
        );
        let v3 = written_as(3, &table, 9);
        match verify(&fresh, &v3[..]) {
            Err(crate::Error::Checkpoint { reason }) => assert_eq!(
                reason,
                "format version 3; this laggard reads versions 1 and 2"
            ),
            other => panic!("expected a version error, got {other:?}"),
        }
    }
}
