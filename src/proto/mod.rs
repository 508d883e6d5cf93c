//! The sans-IO wire protocol: message types and their codec, and the state
//! machines of a server shard and a worker client.
//!
//! Nothing here touches a socket, a thread or a clock of its own: the
//! state machines take received messages and the current time, and say
//! what to send. The runtime ([`Server`](crate::Server),
//! [`Worker`](crate::Worker)) moves those frames over a
//! [`Transport`](crate::transport::Transport); tests and fuzzers drive the
//! machines directly.
//!
//! Idempotency: every push carries `(worker, seq)`; a server applies
//! sequence number `n + 1` after `n`, acknowledges a resent `<= n` without
//! applying it again, and treats a gap as a protocol error. A worker keeps
//! each push until it is acknowledged and, on reconnecting, resends those
//! after the `applied_seq` in the server's [`Welcome`].

mod client;
mod codec;
mod server;

pub(crate) use client::MAX_UNACKED;
pub use client::{ClientCore, ClientStats, STASH_MIN_ROW, TableInfo};
pub use codec::{
    DEFAULT_MAX_PAYLOAD, DecodeError, EncodedParts, Fault, FaultCode, HEADER_LEN, Hello, Keys,
    MAGIC, Message, PULL_RESPONSE_HEAD_LEN, PullRequest, PullResponse, PullTimedOut, Push, PushAck,
    PushHeld, Role, RowPiece, Section, Sections, VERSION, Welcome, decode, decode_split,
    pull_response_head, pull_response_layout, split_frame, write_pull_response,
};
pub use server::{Output, Reply, ServerConfig, ServerCore, ServerStats, ShardTables};
