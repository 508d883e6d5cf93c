//! The crate's error type.

use std::fmt;
use std::time::Duration;

use crate::clock::{GateTimeout, WorkerId};

/// A specialized `Result` for laggard operations.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in laggard, with messages that say what to
/// change.
///
/// No operation panics on bad input: wrong row widths, keys outside a dense
/// table, invalid configuration values and waits that pass their deadline
/// all come back as an `Error`.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum Error {
    /// A configuration value is invalid; `what` names the setting.
    InvalidConfig {
        /// The setting, e.g. `"table width"`.
        what: &'static str,
        /// Why the value was rejected, and what would be accepted.
        reason: String,
    },
    /// A row passed in or out has the wrong number of elements.
    WidthMismatch {
        /// The table's row width.
        expected: usize,
        /// The length of the slice that was passed.
        got: usize,
    },
    /// A batch's value buffer is not `keys × width` elements long.
    BatchShape {
        /// Number of keys in the batch.
        keys: usize,
        /// The table's row width.
        width: usize,
        /// Length of the value buffer that was passed.
        values: usize,
    },
    /// A key outside a dense table's key range.
    KeyOutOfRange {
        /// The offending key.
        key: u64,
        /// First key of the table.
        first: u64,
        /// Last key of the table (inclusive).
        last: u64,
    },
    /// A shard index that the table does not have.
    ShardOutOfRange {
        /// The requested shard.
        shard: usize,
        /// How many shards the table has.
        shards: usize,
    },
    /// A worker id that the staleness gate does not know.
    UnknownWorker {
        /// The offending id.
        worker: WorkerId,
        /// How many workers the gate has seen join.
        workers: usize,
    },
    /// The worker has left or was declared dead, so it may not advance or wait.
    WorkerNotActive {
        /// The worker.
        worker: WorkerId,
        /// `"left"` or `"dead"`.
        state: &'static str,
    },
    /// A blocking wait passed its deadline.
    Timeout(Box<GateTimeout>),
    /// Memory for a table could not be allocated.
    OutOfMemory {
        /// How many bytes were requested.
        bytes: usize,
    },
    /// A push would create a row in a sparse table's shard that holds its
    /// limit of rows already ([`TableSpec::max_rows_per_shard`](crate::TableSpec::max_rows_per_shard)).
    TableFull {
        /// The table's name, where the table belongs to a cluster.
        table: Option<String>,
        /// The shard that is full.
        shard: usize,
        /// Its limit.
        limit: usize,
    },
    /// A key that belongs to another server shard was sent to this one.
    KeyNotOwned {
        /// The key.
        key: u64,
        /// The shard the key belongs to.
        owner: usize,
        /// The shard that received it.
        shard: usize,
    },
    /// No table of that name is configured in the cluster.
    UnknownTable {
        /// The name asked for.
        name: String,
        /// The names the cluster has.
        known: Vec<String>,
    },
    /// A table handle opened on a worker of another cluster (one whose
    /// spec differs), which would name another table here, or none.
    ForeignTable {
        /// The handle's table index in its own cluster.
        index: usize,
        /// Its row width there.
        width: usize,
    },
    /// A push or pull ticket handed to a worker other than the one that
    /// issued it.
    ForeignTicket {
        /// "push" or "pull".
        kind: &'static str,
    },
    /// The table exists but holds another element type.
    TableType {
        /// The table's name.
        name: String,
        /// The element type the table holds.
        holds: &'static str,
        /// The element type asked for.
        asked: &'static str,
    },
    /// A peer sent something the protocol does not allow (a malformed,
    /// truncated, oversized or wrong-version frame, or a message out of
    /// place). The connection to that peer is dropped.
    Protocol {
        /// Who sent it.
        peer: String,
        /// What was wrong.
        reason: String,
    },
    /// The connection to a peer is gone (it closed, crashed or was dropped).
    Disconnected {
        /// The peer.
        peer: String,
        /// What was in progress or why the link closed.
        reason: String,
    },
    /// A peer answered a request with an error.
    Remote {
        /// The peer that reported it.
        peer: String,
        /// Its message.
        message: String,
    },
    /// A server shard refused this worker because another process's
    /// connection still speaks for the same worker id: two processes were
    /// given one rank, or the process this one takes the place of is not
    /// yet seen gone. [`Worker::connect`](crate::Worker::connect) waits
    /// for the latter until its deadline.
    WorkerClaimed {
        /// The shard that refused.
        peer: String,
        /// The shard's message (which process holds the id).
        message: String,
    },
    /// A transport-level wait (connecting, sending under backpressure,
    /// awaiting a reply) passed its deadline.
    NoResponse {
        /// What was awaited, e.g. "a reply to pull request 7 from server 1".
        what: String,
        /// How long the wait lasted.
        waited: Duration,
    },
    /// The transport could not do what was asked (e.g. an endpoint name is
    /// already bound).
    Transport {
        /// What failed and why.
        reason: String,
    },
    /// A restored row's update state has the wrong number of elements for
    /// the table's update rule.
    StateMismatch {
        /// State elements per row that the table's update rule keeps.
        expected: usize,
        /// The length of the state that was passed.
        got: usize,
    },
    /// A checkpoint could not be written or read: an I/O error, or bytes
    /// that are not a checkpoint of this table (another format, element
    /// type, row width or update rule; truncated or corrupted).
    Checkpoint {
        /// What was wrong, and where in the checkpoint.
        reason: String,
    },
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::InvalidConfig { what, reason } => write!(f, "invalid {what}: {reason}"),
            Error::WidthMismatch { expected, got } => write!(
                f,
                "row width mismatch: the table's rows have {expected} elements but the slice has {got}"
            ),
            Error::BatchShape {
                keys,
                width,
                values,
            } => write!(
                f,
                "batch shape mismatch: {keys} keys of width {width} need {} values, but the buffer has {values}",
                keys.saturating_mul(*width)
            ),
            Error::KeyOutOfRange { key, first, last } => write!(
                f,
                "key {key} is outside the dense table's key range {first}..={last}"
            ),
            Error::ShardOutOfRange { shard, shards } => {
                write!(
                    f,
                    "shard {shard} does not exist: the table has {shards} shards"
                )
            }
            Error::UnknownWorker { worker, workers } => write!(
                f,
                "{worker} is unknown: the gate has {workers} workers (ids 0..{workers})"
            ),
            Error::WorkerNotActive { worker, state } => {
                write!(f, "{worker} has {state} and can no longer advance or wait")
            }
            Error::Timeout(t) => t.fmt(f),
            Error::OutOfMemory { bytes } => {
                write!(
                    f,
                    "could not allocate {bytes} bytes for the table; shrink its key range or width"
                )
            }
            Error::TableFull {
                table,
                shard,
                limit,
            } => {
                match table {
                    Some(name) => write!(f, "sparse table {name:?}: ")?,
                    None => f.write_str("sparse table: ")?,
                }
                let rows = if *limit == 1 { "row" } else { "rows" };
                write!(
                    f,
                    "shard {shard} holds its limit of {limit} {rows} \
                     (TableSpec::max_rows_per_shard), so a push that would create another \
                     is refused and changes nothing; raise the limit, or map the keys into \
                     a smaller space"
                )
            }
            Error::KeyNotOwned { key, owner, shard } => write!(
                f,
                "key {key} belongs to server shard {owner} but was sent to shard {shard}; \
                 the participants disagree on the placement map"
            ),
            Error::UnknownTable { name, known } => {
                write!(f, "no table named {name:?}; the cluster has {known:?}")
            }
            Error::ForeignTable { index, width } => write!(
                f,
                "this table handle (table #{index} of rows of {width} elements) was opened on a \
                 worker of another cluster, whose spec differs from this worker's; open the \
                 table on this worker (Worker::table)"
            ),
            Error::ForeignTicket { kind } => write!(
                f,
                "this {kind} ticket was issued by another worker, whose pushes and pulls are \
                 numbered apart from this one's; wait on it with the worker that issued it"
            ),
            Error::TableType { name, holds, asked } => write!(
                f,
                "table {name:?} holds {holds} elements but was opened as {asked}"
            ),
            Error::Protocol { peer, reason } => {
                write!(
                    f,
                    "protocol error from {peer}: {reason}; the connection was dropped"
                )
            }
            Error::Disconnected { peer, reason } => write!(f, "{peer} disconnected: {reason}"),
            Error::Remote { peer, message } => write!(f, "{peer} reported: {message}"),
            Error::WorkerClaimed { peer, message } => write!(f, "{peer} reported: {message}"),
            Error::NoResponse { what, waited } => {
                write!(f, "gave up after {waited:.3?} waiting for {what}")
            }
            Error::Transport { reason } => write!(f, "transport error: {reason}"),
            Error::StateMismatch { expected, got } => write!(
                f,
                "update state mismatch: the table's update rule keeps {expected} state elements \
                 per row but {got} were given; restore rows into a table with the update rule \
                 they were saved with"
            ),
            Error::Checkpoint { reason } => write!(f, "checkpoint: {reason}"),
        }
    }
}

impl std::error::Error for Error {}

impl From<GateTimeout> for Error {
    fn from(t: GateTimeout) -> Self {
        Error::Timeout(Box::new(t))
    }
}

/// Shorthand for an [`Error::InvalidConfig`].
pub(crate) fn invalid(what: &'static str, reason: impl Into<String>) -> Error {
    Error::InvalidConfig {
        what,
        reason: reason.into(),
    }
}

/// The longest timeout or interval any setting of laggard's (or its
/// transports') may take: 30 years. Deadlines are the clock's reading plus
/// a setting, and a much longer one (`Duration::MAX`, meant as "never
/// time out") would overflow it. Every wait has a deadline: give a long
/// one.
pub const LONGEST_WAIT: Duration = Duration::from_secs(30 * 365 * 24 * 60 * 60);

/// `Ok` if `setting` (named `what`) is at most [`LONGEST_WAIT`], else the
/// [`Error::InvalidConfig`] that says so.
pub fn check_wait(what: &'static str, setting: Duration) -> Result<()> {
    if setting > LONGEST_WAIT {
        return Err(invalid(
            what,
            format!(
                "{setting:?} is longer than the 30 years a setting may take (a deadline \
                 past that overflows the clock); for a wait that should not time out, give \
                 a long one"
            ),
        ));
    }
    Ok(())
}
