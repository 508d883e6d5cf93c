//! The runtime: servers and workers that drive the protocol's state
//! machines over a transport, and an in-process cluster.

mod cluster;
mod server;
mod spec;
mod storage;
mod worker;

pub use cluster::Cluster;
pub use server::{Server, ServerReport};
pub use spec::ClusterSpec;
pub use worker::{PullTicket, PushTicket, TableHandle, Worker};
