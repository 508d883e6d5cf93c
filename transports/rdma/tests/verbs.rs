//! The RDMA transport on real verbs, beyond the conformance suite: a whole
//! cluster through the runtime, failures (a killed peer process, a
//! completion error, a hostile side channel, a refused connection) and
//! limits. Needs an RDMA device (soft-RoCE is enough): run through
//! `guest/guest.sh`.
//!
//! Child processes are this test binary itself, started with
//! `LAGGARD_RDMA_TEST_CHILD` set and filtered to `child_process`.

use std::io::Write;
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use laggard::transport::{Endpoint, Event, Transport};
use laggard::{ClusterSpec, Consistency, Error, Server, Sum, TableSpec, Worker, WorkerId};
use laggard_rdma::{RdmaConfig, RdmaTransport};

const CHILD: &str = "LAGGARD_RDMA_TEST_CHILD";

fn soon(secs: u64) -> Instant {
    Instant::now() + Duration::from_secs(secs)
}

fn next_event<E: Endpoint>(ep: &mut E) -> Event<E::Frame> {
    ep.recv(soon(20)).unwrap().expect("an event within 20 s")
}

/// Why connecting `ep` to `name` fails (it must).
fn connect_error(ep: &mut laggard_rdma::RdmaEndpoint, name: &str) -> String {
    ep.connect(name, soon(10))
        .expect_err("the connection must be refused")
        .to_string()
}

/// What this binary does when started as a child.
#[test]
fn child_process() {
    let Ok(addr) = std::env::var(CHILD) else {
        return; // a normal test run
    };
    let net = RdmaTransport::new().address("watcher", addr.parse().unwrap());
    let mut ep = net.bind("victim").unwrap();
    let peer = ep.connect("watcher", soon(20)).unwrap();
    let mut buf = ep.lend(peer, 5, soon(20)).unwrap();
    buf.copy_from_slice(b"alive");
    ep.send(buf).unwrap();
    ep.flush(peer, soon(20)).unwrap();
    std::thread::sleep(Duration::from_secs(600));
}

#[test]
fn a_cluster_sums_exactly_and_releases_every_registration() {
    let (servers, workers, clocks, keys) = (2, 3, 20u64, 16u64);
    let spec = ClusterSpec::new(servers, workers)
        .table(
            "t",
            TableSpec::<i64>::dense(0..keys, 4)
                .update(Sum)
                .consistency(Consistency::Bsp),
        )
        .timeout(Duration::from_secs(60));
    let net = RdmaTransport::new();
    std::thread::scope(|s| {
        let mut serving = Vec::new();
        for shard in 0..servers {
            let server =
                Server::new(net.bind(&spec.server_name(shard)).unwrap(), &spec, shard).unwrap();
            serving.push(s.spawn(move || server.run_until_workers_done().unwrap()));
        }
        let mut running = Vec::new();
        for w in 0..workers {
            let (net, spec) = (&net, &spec);
            running.push(s.spawn(move || {
                let ep = net.bind(&spec.worker_name(w)).unwrap();
                let mut worker = Worker::connect(ep, spec, WorkerId(w as u32), soon(20)).unwrap();
                let t = worker.table::<i64>("t").unwrap();
                let all: Vec<u64> = (0..keys).collect();
                let mut rows = vec![0i64; keys as usize * 4];
                for c in 0..clocks {
                    let delta: Vec<i64> = (0..keys * 4)
                        .map(|i| (w as i64 + 1) * (c as i64 + 1) + i as i64)
                        .collect();
                    worker.push(&t, &all, &delta).unwrap();
                    worker.clock().unwrap();
                    worker.pull(&t, &all, &mut rows).unwrap();
                }
                worker.leave().unwrap();
                rows
            }));
        }
        // The last pull of each worker follows every worker's last push
        // and clock (BSP), so it is the exact sum of all pushes.
        let expected: Vec<i64> = (0..keys as i64 * 4)
            .map(|i| {
                let mut sum = 0;
                for w in 0..workers as i64 {
                    for c in 0..clocks as i64 {
                        sum += (w + 1) * (c + 1) + i;
                    }
                }
                sum
            })
            .collect();
        for r in running {
            assert_eq!(r.join().unwrap(), expected);
        }
        for h in serving {
            h.join().unwrap();
        }
    });
    assert_eq!(
        net.leaks(),
        Vec::<String>::new(),
        "registrations or names left behind"
    );
}

#[test]
fn bsp_pulls_see_every_push_of_earlier_clocks() {
    let (workers, clocks) = (3usize, 10u64);
    let spec = ClusterSpec::new(1, workers)
        .table(
            "t",
            TableSpec::<i64>::dense(0..2, 2)
                .update(Sum)
                .consistency(Consistency::Bsp),
        )
        .timeout(Duration::from_secs(60));
    let net = RdmaTransport::new();
    std::thread::scope(|s| {
        let server = Server::new(net.bind(&spec.server_name(0)).unwrap(), &spec, 0).unwrap();
        let serving = s.spawn(move || server.run_until_workers_done().unwrap());
        let mut running = Vec::new();
        for w in 0..workers {
            let (net, spec) = (&net, &spec);
            running.push(s.spawn(move || {
                let ep = net.bind(&spec.worker_name(w)).unwrap();
                let mut worker = Worker::connect(ep, spec, WorkerId(w as u32), soon(20)).unwrap();
                let t = worker.table::<i64>("t").unwrap();
                let mut row = [0i64; 2];
                for c in 0..clocks {
                    worker.push(&t, &[1], &[1, w as i64]).unwrap();
                    worker.clock().unwrap();
                    worker.pull(&t, &[1], &mut row).unwrap();
                    // BSP: after clock c+1, every worker's pushes of clocks
                    // 0..=c are in.
                    assert!(
                        row[0] >= workers as i64 * (c as i64 + 1),
                        "clock {c}: {row:?}"
                    );
                }
                worker.leave().unwrap();
            }));
        }
        for r in running {
            r.join().unwrap();
        }
        serving.join().unwrap();
    });
    assert!(net.leaks().is_empty(), "{:?}", net.leaks());
}

#[test]
fn a_killed_peer_process_is_a_disconnect() {
    let net = RdmaTransport::new();
    let mut watcher = net.bind("watcher").unwrap();
    let addr = watcher.side_channel().unwrap();
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "child_process", "--nocapture"])
        .env(CHILD, addr.to_string())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let peer = match next_event(&mut watcher) {
        Event::Connected(p) => p,
        e => panic!("expected a connection, got {e:?}"),
    };
    match next_event(&mut watcher) {
        Event::Frame(p, f) => assert_eq!((p, &f[..]), (peer, &b"alive"[..])),
        e => panic!("expected the frame, got {e:?}"),
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let start = Instant::now();
    match next_event(&mut watcher) {
        Event::Disconnected(p) => assert_eq!(p, peer),
        e => panic!("expected a disconnect, got {e:?}"),
    }
    assert!(
        start.elapsed() < Duration::from_secs(10),
        "took {:?}",
        start.elapsed()
    );
    match watcher.lend(peer, 8, soon(5)) {
        Err(Error::Disconnected { reason, .. }) => {
            assert!(
                reason.contains("ended") || reason.contains("without a close"),
                "{reason}"
            )
        }
        other => panic!("lend to a dead peer: {other:?}"),
    }
}

#[test]
fn a_completion_error_fails_waiting_calls() {
    let net = RdmaTransport::new();
    let mut server = net.bind("cerr-server").unwrap();
    let mut client = net.bind("cerr-client").unwrap();
    let peer = client.connect("cerr-server", soon(20)).unwrap();
    client.inject_remote_access_error(peer);
    let mut buf = client.lend(peer, 64, soon(5)).unwrap();
    buf.fill(7);
    client.send(buf).unwrap();
    match client.flush(peer, soon(20)) {
        Err(Error::Disconnected { reason, .. }) => {
            assert!(
                reason.contains("remote access error") || reason.contains("RDMA WRITE"),
                "{reason}"
            )
        }
        other => panic!("flush after a failed write: {other:?}"),
    }
    // The server sees its peer go, and nothing is delivered from it.
    loop {
        match next_event(&mut server) {
            Event::Connected(_) => {}
            Event::Disconnected(_) => break,
            Event::Frame(..) => panic!("a frame from a failed write"),
        }
    }
    drop((server, client));
    assert!(net.leaks().is_empty(), "{:?}", net.leaks());
}

#[test]
fn a_hostile_side_channel_does_not_hurt_the_endpoint() {
    // Handshakes may take a minute, far beyond the honest client's
    // deadline: it gets in only because the silent client's handshake does
    // not hold up the others.
    let cfg = RdmaConfig::default().handshake_timeout(Duration::from_secs(60));
    let net = RdmaTransport::with_config(cfg).unwrap();
    let mut server = net.bind("target").unwrap();
    let addr = server.side_channel().unwrap();
    // Garbage, a wrong magic, a truncated hello, an oversized length.
    for bytes in [
        &b"GET / HTTP/1.1\r\n\r\n"[..],
        &[0u8; 16][..],
        b"LGRDMA\0\x02\x01\0\0\0\xff\xff\xff\xff",
    ] {
        let mut s = TcpStream::connect(addr).unwrap();
        s.write_all(bytes).unwrap();
    }
    // A client that connects and says nothing, and stays.
    let silent = TcpStream::connect(addr).unwrap();
    std::thread::sleep(Duration::from_millis(100));
    let mut client = net.bind("honest").unwrap();
    let peer = client.connect("target", soon(20)).unwrap();
    laggard_conformance::send_bytes(&mut client, peer, b"still here").unwrap();
    loop {
        match next_event(&mut server) {
            Event::Connected(_) => {}
            Event::Frame(_, f) => {
                assert_eq!(&f[..], b"still here");
                break;
            }
            e => panic!("{e:?}"),
        }
    }
    // The endpoint drops promptly, cutting the silent handshake short, and
    // leaves nothing registered.
    drop((client, server));
    assert!(net.leaks().is_empty(), "{:?}", net.leaks());
    drop(silent);
}

#[test]
fn connecting_to_the_wrong_name_is_refused() {
    let net = RdmaTransport::new();
    let server = net.bind("real-name").unwrap();
    net.set_address("alias", server.side_channel().unwrap());
    let mut client = net.bind("lost").unwrap();
    let err = connect_error(&mut client, "alias");
    assert!(
        err.contains("refused") && err.contains("no endpoint named \"alias\""),
        "{err}"
    );
    let err = client
        .connect("nobody", Instant::now() + Duration::from_millis(200))
        .unwrap_err();
    assert!(matches!(err, Error::NoResponse { .. }), "{err}");
}

#[test]
fn oversized_frames_and_bad_settings_are_errors() {
    let net = RdmaTransport::with_config(RdmaConfig::default().ring_bytes(1 << 16)).unwrap();
    let _server = net.bind("small-server").unwrap();
    let mut client = net.bind("small-client").unwrap();
    let peer = client.connect("small-server", soon(20)).unwrap();
    let err = client.lend(peer, 1 << 16, soon(5)).unwrap_err().to_string();
    assert!(err.contains("exceeds its largest"), "{err}");
    assert!(net.bind("small-server").is_err(), "a name bound twice");
    let err = RdmaTransport::with_config(RdmaConfig::default().recv_depth(1)).unwrap_err();
    assert!(err.to_string().contains("recv_depth"), "{err}");
    let bad_device =
        RdmaTransport::with_config(RdmaConfig::default().device("no-such-device0")).unwrap();
    let err = bad_device.bind("x").unwrap_err().to_string();
    assert!(
        err.contains("no RDMA device named \"no-such-device0\""),
        "{err}"
    );
    let bad_gid = RdmaTransport::with_config(RdmaConfig::default().gid_index(200)).unwrap();
    let err = bad_gid.bind("y").unwrap_err().to_string();
    assert!(err.contains("GID index 200"), "{err}");
}

/// A peer announcing a receive ring larger than this endpoint registers a
/// mirror for is refused before anything is registered, in either
/// direction, with the reason; the same settings connect.
#[test]
fn a_peer_with_a_larger_ring_is_refused() {
    let small = RdmaTransport::with_config(RdmaConfig::default().ring_bytes(1 << 16)).unwrap();
    let large = RdmaTransport::with_config(RdmaConfig::default().ring_bytes(1 << 20)).unwrap();
    let small_server = small.bind("small-ring").unwrap();
    let large_server = large.bind("large-ring").unwrap();
    small.set_address("large-ring", large_server.side_channel().unwrap());
    large.set_address("small-ring", small_server.side_channel().unwrap());

    // The acceptor refuses the connector's ring.
    let mut large_client = large.bind("large-client").unwrap();
    let err = connect_error(&mut large_client, "small-ring");
    assert!(
        err.contains("refused")
            && err.contains("receive ring of 1048576 bytes, more than the 65536")
            && err.contains("max_peer_ring_bytes"),
        "{err}"
    );
    // The connector refuses the acceptor's ring.
    let mut small_client = small.bind("small-client").unwrap();
    let err = connect_error(&mut small_client, "large-ring");
    assert!(
        err.contains("large-ring announced a receive ring of 1048576 bytes"),
        "{err}"
    );
    // Raising the limit admits the larger ring.
    let tolerant = RdmaTransport::with_config(
        RdmaConfig::default()
            .ring_bytes(1 << 16)
            .max_peer_ring_bytes(1 << 20),
    )
    .unwrap();
    tolerant.set_address("large-ring", large_server.side_channel().unwrap());
    let mut tolerant_client = tolerant.bind("tolerant-client").unwrap();
    tolerant_client.connect("large-ring", soon(10)).unwrap();
    drop(tolerant_client);
    drop((small_client, large_client, small_server, large_server));
    for net in [&small, &large, &tolerant] {
        assert!(net.leaks().is_empty(), "{:?}", net.leaks());
    }
}

/// A sender whose ring is full sees frames released on another thread
/// while the receiving endpoint is never polled again (it reads the
/// receiver's credit with RDMA READs; nothing at the receiver must run),
/// then sends on and flushes; every frame arrives intact.
#[test]
fn a_sender_sees_releases_while_the_receiver_is_idle() {
    // A ring of 8 KiB holds 8 frames of 1 KiB.
    let net = RdmaTransport::with_config(RdmaConfig::default().ring_bytes(8192)).unwrap();
    let mut server = net.bind("idle-receiver").unwrap();
    let mut client = net.bind("full-sender").unwrap();
    let peer = client.connect("idle-receiver", soon(20)).unwrap();
    let send = |client: &mut laggard_rdma::RdmaEndpoint, i: u8, until: Instant| {
        let mut buf = client.lend(peer, 1024, until)?;
        buf.fill(i);
        client.send(buf)
    };
    let mut sent = 0u8;
    while send(
        &mut client,
        sent,
        Instant::now() + Duration::from_millis(200),
    )
    .is_ok()
    {
        sent += 1;
        assert!(sent < 16, "an 8 KiB ring took {sent} frames of 1 KiB");
    }
    let mut held = Vec::new();
    while held.len() < usize::from(sent) {
        if let Event::Frame(_, f) = next_event(&mut server) {
            assert!(f.iter().all(|&b| b == held.len() as u8));
            held.push(f);
        }
    }
    // The server's endpoint is not touched from here on.
    let dropper = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(300));
        drop(held);
    });
    for i in sent..2 * sent {
        send(&mut client, i, soon(10)).expect("room once the frames are released");
    }
    dropper.join().unwrap();
    // The later frames were released nowhere yet: flush waits for them.
    let err = client.flush(peer, Instant::now() + Duration::from_millis(100));
    assert!(err.is_err(), "a flush before the receiver read the frames");
    let mut next = sent;
    while next < 2 * sent {
        if let Event::Frame(_, f) = next_event(&mut server) {
            assert!(f.iter().all(|&b| b == next), "frame {next}");
            next += 1;
        }
    }
    client.flush(peer, soon(10)).unwrap();
}
