//! Helpers shared by the tests that need an RDMA device.

use std::time::{Duration, Instant};

use laggard::transport::{Endpoint, Event, PeerId, Transport};
use laggard_rdma::{RdmaEndpoint, RdmaTransport};

/// A deadline for one step of a test.
pub fn soon() -> Instant {
    Instant::now() + Duration::from_secs(20)
}

/// A client connected to `server`: (client, its peer id for the server).
pub fn connect(
    net: &RdmaTransport,
    name: &str,
    server: &mut RdmaEndpoint,
) -> (RdmaEndpoint, PeerId) {
    let mut client = net.bind(name).unwrap();
    let peer = client.connect(server.name(), soon()).unwrap();
    let Some(Event::Connected(_)) = server.recv(soon()).unwrap() else {
        panic!("no connection")
    };
    (client, peer)
}
