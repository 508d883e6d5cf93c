//! A server's parts of the cluster's tables, behind one type-erased
//! interface so the protocol state machine can reach tables of any element
//! type.

use std::collections::HashMap;
use std::sync::Arc;

use crate::element::{Element, le_bytes, le_view, le_view_mut, read_le_slice, write_le_slice};
use crate::error::{Error, Result};
use crate::proto::{Keys, ShardTables};
use crate::table::Table;
use crate::transport::HeldRow;

/// One table's part on one server, any element type.
pub(crate) trait ErasedPart: Send {
    fn check(&self, keys: Keys<'_>, value_len: Option<usize>) -> Result<()>;
    /// [`ShardTables::promise`] for this table.
    fn promise(&mut self, keys: Keys<'_>) -> Result<Vec<u64>>;
    /// [`ShardTables::unpromise`] for this table.
    fn unpromise(&mut self, keys: &[u64]);
    fn apply(&mut self, keys: Keys<'_>, values: &[u8]) -> Result<()>;
    fn read(&mut self, keys: &[u64], out: &mut [u8]) -> Result<()>;
    /// Calls `send` with row `key` as little-endian bytes: in place where
    /// that is the host's format and the row is wide (held shared
    /// meanwhile), else converted into a scratch buffer.
    fn send_row(&mut self, key: u64, send: &mut dyn FnMut(&[u8]) -> Result<()>) -> Result<()>;
    /// Row `key` held in place as little-endian bytes, if it can be
    /// ([`Table::hold_row`]).
    fn hold_row(&self, key: u64) -> Result<Option<HeldRow>>;
    fn row_bytes(&self) -> usize;
}

/// A typed part: the table, its name in the cluster (for errors) and
/// scratch rows for converting wire bytes.
pub(crate) struct Part<T: Element> {
    table: Arc<Table<T>>,
    name: String,
    /// Whether the table has a row limit: pushes to one without need no
    /// look at their keys for it.
    limited: bool,
    /// The keys of rows promised to held pushes ([`ShardTables::promise`]),
    /// each with the number of pushes it was promised to.
    promised: HashMap<u64, u32>,
    row: Vec<T>,
}

impl<T: Element> Part<T> {
    pub(crate) fn new(table: Arc<Table<T>>, name: &str) -> Self {
        let row = vec![T::ZERO; table.width()];
        Part {
            limited: table.spec().row_limit().is_some(),
            table,
            name: name.to_owned(),
            promised: HashMap::new(),
            row,
        }
    }
}

impl<T: Element> ErasedPart for Part<T> {
    fn check(&self, keys: Keys<'_>, value_len: Option<usize>) -> Result<()> {
        if let Some(len) = value_len {
            let expected = keys.len().checked_mul(self.row_bytes());
            if expected != Some(len) {
                return Err(Error::BatchShape {
                    keys: keys.len(),
                    width: self.table.width(),
                    values: len / T::SIZE,
                });
            }
        }
        keys.iter()
            .try_for_each(|k| self.table.check_keys(std::slice::from_ref(&k)))?;
        if self.limited && value_len.is_some() {
            let promised = |key| self.promised.contains_key(&key);
            self.table
                .check_room(keys.iter(), &promised, self.promised.len())
                .map_err(|e| self.named(e))?;
        }
        Ok(())
    }

    fn promise(&mut self, keys: Keys<'_>) -> Result<Vec<u64>> {
        if !self.limited {
            return Ok(Vec::new());
        }
        let promised = &self.promised;
        let (missing, _) = self
            .table
            .missing_rows(keys.iter(), &|key| promised.contains_key(&key))?;
        for &key in &missing {
            *self.promised.entry(key).or_default() += 1;
        }
        Ok(missing)
    }

    fn unpromise(&mut self, keys: &[u64]) {
        for key in keys {
            if let Some(n) = self.promised.get_mut(key) {
                *n -= 1;
                if *n == 0 {
                    self.promised.remove(key);
                }
            }
        }
    }

    fn apply(&mut self, keys: Keys<'_>, values: &[u8]) -> Result<()> {
        let row_bytes = self.row_bytes();
        for (key, bytes) in keys.iter().zip(values.chunks_exact(row_bytes)) {
            // Straight from the frame where the wire format is the host's.
            match le_view::<T>(bytes) {
                Some(row) => self.table.push(key, row),
                None => {
                    read_le_slice(bytes, &mut self.row);
                    self.table.push(key, &self.row)
                }
            }
            .map_err(|e| self.named(e))?;
        }
        Ok(())
    }

    fn read(&mut self, keys: &[u64], out: &mut [u8]) -> Result<()> {
        let row_bytes = self.row_bytes();
        for (&key, bytes) in keys.iter().zip(out.chunks_exact_mut(row_bytes)) {
            // Straight into the response where the wire format is the host's.
            match le_view_mut::<T>(bytes) {
                Some(row) => self.table.pull(key, row)?,
                None => {
                    self.table.pull(key, &mut self.row)?;
                    write_le_slice(&self.row, bytes);
                }
            }
        }
        Ok(())
    }

    fn send_row(&mut self, key: u64, send: &mut dyn FnMut(&[u8]) -> Result<()>) -> Result<()> {
        self.table.with_row(key, |values| match le_bytes(values) {
            Some(bytes) => send(bytes),
            None => {
                let mut bytes = vec![0; std::mem::size_of_val(values)];
                write_le_slice(values, &mut bytes);
                send(&bytes)
            }
        })?
    }

    fn hold_row(&self, key: u64) -> Result<Option<HeldRow>> {
        Ok(self.table.hold_row(key)?.map(HeldRow::from_memory))
    }

    fn row_bytes(&self) -> usize {
        self.table.width() * T::SIZE
    }
}

impl<T: Element> Part<T> {
    /// `e` with the table's name, where it has a place for one.
    fn named(&self, e: Error) -> Error {
        match e {
            Error::TableFull { shard, limit, .. } => Error::TableFull {
                table: Some(self.name.clone()),
                shard,
                limit,
            },
            e => e,
        }
    }
}

/// Every table's part on one server.
pub(crate) struct ServerTables {
    pub(crate) parts: Vec<Box<dyn ErasedPart>>,
}

impl ServerTables {
    fn part(&self, table: u32) -> Result<&dyn ErasedPart> {
        self.parts
            .get(table as usize)
            .map(|p| &**p)
            .ok_or_else(|| unknown(table, self.parts.len()))
    }

    /// Calls `send` with one row's little-endian bytes (see
    /// [`ErasedPart::send_row`]).
    pub(crate) fn send_row(
        &mut self,
        table: u32,
        key: u64,
        send: &mut dyn FnMut(&[u8]) -> Result<()>,
    ) -> Result<()> {
        let n = self.parts.len();
        self.parts
            .get_mut(table as usize)
            .ok_or_else(|| unknown(table, n))?
            .send_row(key, send)
    }

    /// Every row of `keys` held in place ([`ErasedPart::hold_row`]), or
    /// `None` if one of them cannot be.
    pub(crate) fn hold_rows(&self, table: u32, keys: &[u64]) -> Result<Option<Vec<HeldRow>>> {
        let part = self.part(table)?;
        let mut rows = Vec::with_capacity(keys.len());
        for &key in keys {
            match part.hold_row(key)? {
                Some(row) => rows.push(row),
                None => return Ok(None),
            }
        }
        Ok(Some(rows))
    }

    /// Reads rows into a pull response's value region.
    pub(crate) fn read(&mut self, table: u32, keys: &[u64], out: &mut [u8]) -> Result<()> {
        let n = self.parts.len();
        self.parts
            .get_mut(table as usize)
            .ok_or_else(|| unknown(table, n))?
            .read(keys, out)
    }
}

fn unknown(table: u32, tables: usize) -> Error {
    Error::UnknownTable {
        name: format!("#{table}"),
        known: (0..tables).map(|t| format!("#{t}")).collect(),
    }
}

impl ShardTables for ServerTables {
    fn len(&self) -> usize {
        self.parts.len()
    }

    fn check(&self, table: u32, keys: Keys<'_>, value_len: Option<usize>) -> Result<()> {
        self.part(table)?.check(keys, value_len)
    }

    fn promise(&mut self, table: u32, keys: Keys<'_>) -> Result<Vec<u64>> {
        let n = self.parts.len();
        self.parts
            .get_mut(table as usize)
            .ok_or_else(|| unknown(table, n))?
            .promise(keys)
    }

    fn unpromise(&mut self, table: u32, keys: &[u64]) {
        if let Some(part) = self.parts.get_mut(table as usize) {
            part.unpromise(keys);
        }
    }

    fn apply(&mut self, table: u32, keys: Keys<'_>, values: &[u8]) -> Result<()> {
        let n = self.parts.len();
        self.parts
            .get_mut(table as usize)
            .ok_or_else(|| unknown(table, n))?
            .apply(keys, values)
    }

    fn row_bytes(&self, table: u32) -> usize {
        self.part(table).map_or(0, |p| p.row_bytes())
    }
}
