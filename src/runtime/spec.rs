//! The cluster's shape, as every participant must agree on it.

use std::any::Any;
use std::sync::Arc;
use std::time::Duration;

use super::storage::{ErasedPart, Part};
use crate::clock::Consistency;
use crate::element::Element;
use crate::error::{Error, Result, invalid};
use crate::proto::{DEFAULT_MAX_PAYLOAD, TableInfo};
use crate::table::{Placement, Table, TableSpec};

type MakePart =
    dyn Fn(usize) -> Result<(Box<dyn ErasedPart>, Arc<dyn Any + Send + Sync>)> + Send + Sync;

/// The default budget of a worker's row cache: see [`ClusterSpec::cache_bytes`].
const DEFAULT_CACHE_BYTES: usize = 1 << 30;

/// One table of the cluster: what workers need to know, and how a server
/// builds its part.
#[derive(Clone)]
pub(crate) struct TableDef {
    pub(crate) info: TableInfo,
    pub(crate) make_part: Arc<MakePart>,
}

/// The shape of a cluster: `servers` server shards, `workers` workers and
/// the tables, plus the timeouts everyone uses. Build the same spec in
/// every process of a multi-process cluster; participants compare its
/// [`fingerprint`](Self::fingerprint) when they connect and refuse a peer
/// configured differently.
///
/// Every table is split across all servers: its spec's shard count is set
/// to `servers`, and its placement (range, round-robin or hash) decides
/// which server owns which key.
///
/// ```
/// use laggard::{ClusterSpec, Consistency, Sgd, TableSpec};
///
/// let spec = ClusterSpec::new(2, 4)
///     .table("weights", TableSpec::<f32>::dense(0..1000, 8)
///         .update(Sgd::new(0.1))
///         .consistency(Consistency::Ssp { staleness: 2 }));
/// spec.validate()?;
/// assert_eq!(spec.table_names(), ["weights"]);
/// # Ok::<(), laggard::Error>(())
/// ```
#[derive(Clone)]
pub struct ClusterSpec {
    pub(crate) servers: usize,
    pub(crate) workers: usize,
    pub(crate) tables: Vec<TableDef>,
    pub(crate) timeout: Duration,
    pub(crate) dead_after: Duration,
    pub(crate) max_payload: usize,
    pub(crate) cache_bytes: usize,
    errors: Vec<Error>,
}

impl std::fmt::Debug for ClusterSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterSpec")
            .field("servers", &self.servers)
            .field("workers", &self.workers)
            .field("tables", &self.table_names())
            .field("timeout", &self.timeout)
            .field("dead_after", &self.dead_after)
            .field("cache_bytes", &self.cache_bytes)
            .finish_non_exhaustive()
    }
}

impl ClusterSpec {
    /// A cluster of `servers` server shards and `workers` workers, no
    /// tables yet. Default timeout for blocking calls 30 s; a worker whose
    /// connection drops is declared dead after 10 s; each worker caches up
    /// to 1 GiB of pulled rows.
    pub fn new(servers: usize, workers: usize) -> Self {
        let mut errors = Vec::new();
        if servers == 0 {
            errors.push(invalid(
                "server count",
                "a cluster needs at least one server",
            ));
        }
        if workers == 0 || workers > u32::MAX as usize {
            errors.push(invalid(
                "worker count",
                format!("{workers} workers; use between 1 and {}", u32::MAX),
            ));
        }
        ClusterSpec {
            servers,
            workers,
            tables: Vec::new(),
            timeout: Duration::from_secs(30),
            dead_after: Duration::from_secs(10),
            max_payload: DEFAULT_MAX_PAYLOAD,
            cache_bytes: DEFAULT_CACHE_BYTES,
            errors,
        }
    }

    /// Adds a table. Its shard count becomes the number of servers.
    /// Problems (a duplicate name, an invalid spec) are reported by
    /// [`validate`](Self::validate) and by whatever builds on the spec.
    pub fn table<T: Element>(mut self, name: &str, spec: TableSpec<T>) -> Self {
        if self.tables.iter().any(|t| t.info.name == name) {
            self.errors
                .push(invalid("table name", format!("{name:?} is used twice")));
            return self;
        }
        let spec = spec.shards(self.servers.max(1));
        let map = match spec.shard_map() {
            Ok(map) => map,
            Err(e) => {
                self.errors.push(e);
                return self;
            }
        };
        let rule = spec.update_rule();
        let sums_deltas = rule.sums_deltas();
        let info = TableInfo {
            name: name.to_owned(),
            kind: T::KIND,
            width: spec.width(),
            consistency: spec.consistency_model(),
            map,
            sums_deltas,
            // Integer tables replay only sums: `k * d` could overflow. A
            // replay adds the pending (summed) deltas.
            replay: rule
                .replay_scale()
                .filter(|&k| k.is_finite() && (T::KIND.is_float() || k == 1.0) && sums_deltas),
        };
        if info.width == 0 {
            self.errors.push(invalid(
                "table width",
                format!("table {name:?} has width 0"),
            ));
        }
        let part_name = name.to_owned();
        let make_part =
            move |shard: usize| -> Result<(Box<dyn ErasedPart>, Arc<dyn Any + Send + Sync>)> {
                let table = Arc::new(Table::for_shard(spec.clone(), shard)?);
                Ok((Box::new(Part::new(table.clone(), &part_name)), table))
            };
        self.tables.push(TableDef {
            info,
            make_part: Arc::new(make_part),
        });
        self
    }

    /// How long blocking calls (pull, waiting for acknowledgements,
    /// connecting) wait by default.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// How long a server waits for a worker whose connection dropped before
    /// declaring it dead, so it stops holding the others back.
    pub fn dead_after(mut self, after: Duration) -> Self {
        self.dead_after = after;
        self
    }

    /// The largest frame payload accepted (default 1 GiB).
    pub fn max_payload(mut self, bytes: usize) -> Self {
        self.max_payload = bytes;
        self
    }

    /// The most bytes of pulled rows each worker keeps in its cache, all
    /// tables together (default 1 GiB; `usize::MAX` for no bound). A
    /// worker that pulls more distinct rows than that (a sparse table's
    /// embeddings, say) does not grow without end: when a pull finds the
    /// cache over the budget, rows too stale to answer a pull at the
    /// worker's clock go first, then the least recently pulled, down to
    /// three quarters of it ([`ClientStats::rows_evicted`](crate::proto::ClientStats::rows_evicted)
    /// counts them). The rows of one pull are all kept until the next
    /// starts, so a single pull larger than the budget still works. A
    /// setting of each worker's own: processes of one cluster may differ.
    ///
    /// ```
    /// use laggard::{Cluster, ClusterSpec, TableSpec};
    ///
    /// // Room for about four rows of 64 f32.
    /// let spec = ClusterSpec::new(1, 1)
    ///     .table("emb", TableSpec::<f32>::sparse(64))
    ///     .cache_bytes(4 * 64 * 4);
    /// let cluster = Cluster::start(spec)?;
    /// let evicted = cluster.run_workers(|worker| {
    ///     let emb = worker.table::<f32>("emb")?;
    ///     let mut row = [0.0f32; 64];
    ///     for key in 0..100 {
    ///         worker.pull(&emb, &[key], &mut row)?;
    ///     }
    ///     Ok(worker.stats().rows_evicted)
    /// })?;
    /// assert!(evicted[0] >= 90);
    /// cluster.shutdown()?;
    /// # Ok::<(), laggard::Error>(())
    /// ```
    pub fn cache_bytes(mut self, bytes: usize) -> Self {
        self.cache_bytes = bytes;
        self
    }

    /// Number of server shards.
    pub fn servers(&self) -> usize {
        self.servers
    }

    /// Number of workers.
    pub fn workers(&self) -> usize {
        self.workers
    }

    /// The default timeout of blocking calls.
    pub fn default_timeout(&self) -> Duration {
        self.timeout
    }

    /// The tables' names, in the order they were added.
    pub fn table_names(&self) -> Vec<&str> {
        self.tables.iter().map(|t| t.info.name.as_str()).collect()
    }

    /// What workers know of the tables.
    pub fn table_infos(&self) -> Arc<[TableInfo]> {
        self.tables.iter().map(|t| t.info.clone()).collect()
    }

    /// Returns the first problem with the spec, if any.
    pub fn validate(&self) -> Result<()> {
        if let Some(e) = self.errors.first() {
            return Err(e.clone());
        }
        if self.tables.is_empty() {
            return Err(invalid(
                "tables",
                "the cluster has no tables; add one with `table`",
            ));
        }
        if self.timeout.is_zero() {
            return Err(invalid("timeout", "must be greater than zero"));
        }
        crate::check_wait("timeout", self.timeout)?;
        crate::check_wait("dead_after", self.dead_after)
    }

    /// The endpoint name of server shard `shard` (also what the
    /// multi-process transports use).
    pub fn server_name(&self, shard: usize) -> String {
        format!("laggard-server-{shard}")
    }

    /// The endpoint name of worker `worker`.
    pub fn worker_name(&self, worker: usize) -> String {
        format!("laggard-worker-{worker}")
    }

    /// A stable 64-bit digest of everything participants must agree on:
    /// server and worker counts, and each table's name, element type,
    /// width, consistency model and placement. Computed with FNV-1a, so
    /// it is the same in every process and build.
    pub fn fingerprint(&self) -> u64 {
        let mut h = Fnv::new();
        h.u64(self.servers as u64);
        h.u64(self.workers as u64);
        for t in &self.tables {
            let i = &t.info;
            h.bytes(i.name.as_bytes());
            h.u64(u64::from(i.kind.code()));
            h.u64(i.width as u64);
            match i.consistency {
                Consistency::Bsp => h.u64(0),
                Consistency::Ssp { staleness } => {
                    h.u64(1);
                    h.u64(staleness);
                }
                Consistency::Async => h.u64(2),
            }
            h.u64(match i.map.placement() {
                Placement::Range => 0,
                Placement::RoundRobin => 1,
                Placement::Hash => 2,
            });
            h.u64(i.map.shards() as u64);
            h.u64(*i.map.keys().start());
            h.u64(*i.map.keys().end());
            // Workers replay their own pushes with it: all must agree.
            if let Some(k) = i.replay {
                h.u64(k.to_bits());
            }
        }
        h.0
    }

    /// The index and description of table `name`, checked to hold `T`.
    pub(crate) fn typed_table<T: Element>(&self, name: &str) -> Result<(usize, &TableInfo)> {
        let index = self.table_index(name)?;
        let info = &self.tables[index].info;
        if info.kind != T::KIND {
            return Err(Error::TableType {
                name: name.to_owned(),
                holds: info.kind.name(),
                asked: T::NAME,
            });
        }
        Ok((index, info))
    }

    pub(crate) fn table_index(&self, name: &str) -> Result<usize> {
        self.tables
            .iter()
            .position(|t| t.info.name == name)
            .ok_or_else(|| Error::UnknownTable {
                name: name.to_owned(),
                known: self.tables.iter().map(|t| t.info.name.clone()).collect(),
            })
    }
}

/// FNV-1a, 64-bit.
struct Fnv(u64);

impl Fnv {
    fn new() -> Self {
        Fnv(0xcbf2_9ce4_8422_2325)
    }

    fn bytes(&mut self, b: &[u8]) {
        self.u64(b.len() as u64);
        for &x in b {
            self.0 ^= u64::from(x);
            self.0 = self.0.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }

    fn u64(&mut self, v: u64) {
        for x in v.to_le_bytes() {
            self.0 ^= u64::from(x);
            self.0 = self.0.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
}

#[cfg(all(test, not(laggard_loom)))]
mod tests {
    use super::*;
    use crate::TableSpec;

    #[test]
    fn a_wait_past_thirty_years_is_refused_not_an_overflow() {
        // `Duration::MAX` as "never time out" overflowed the clock when a
        // worker added it to now, and panicked.
        let spec = || ClusterSpec::new(1, 1).table("t", TableSpec::<f32>::dense(0..4, 2));
        let err = spec().timeout(Duration::MAX).validate().unwrap_err();
        assert!(err.to_string().contains("invalid timeout"), "{err}");
        assert!(
            err.to_string().contains("longer than the 30 years"),
            "{err}"
        );
        let err = spec().dead_after(Duration::MAX).validate().unwrap_err();
        assert!(err.to_string().contains("invalid dead_after"), "{err}");
        let err = crate::Cluster::start(spec().timeout(Duration::MAX)).map(drop);
        assert!(matches!(err, Err(Error::InvalidConfig { .. })), "{err:?}");
        spec()
            .timeout(crate::LONGEST_WAIT)
            .dead_after(crate::LONGEST_WAIT)
            .validate()
            .unwrap();
    }
}
