//! Bytes from the network that are not what the transport expects: each
//! is an error for that connection only, never a panic or a hang, and the
//! endpoint keeps serving.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use laggard::transport::{Endpoint, Event, Transport};
use laggard_tcp::{TcpConfig, TcpTransport};

fn header(kind: u8, len: u32, credit: u32) -> [u8; 16] {
    let mut b = [0u8; 16];
    b[..4].copy_from_slice(b"LGTC");
    b[4] = 2; // the framing version
    b[5] = kind;
    b[8..12].copy_from_slice(&len.to_le_bytes());
    b[12..16].copy_from_slice(&credit.to_le_bytes());
    b
}

/// Connects with a raw socket and completes the handshake as `from`.
fn handshake(addr: std::net::SocketAddr, to: &str, from: &str) -> TcpStream {
    let mut s = TcpStream::connect(addr).unwrap();
    let mut hello = Vec::new();
    hello.extend_from_slice(&(1u64 << 20).to_le_bytes());
    hello.extend_from_slice(&(to.len() as u32).to_le_bytes());
    hello.extend_from_slice(to.as_bytes());
    hello.extend_from_slice(from.as_bytes());
    s.write_all(&header(4, hello.len() as u32, 0)).unwrap();
    s.write_all(&hello).unwrap();
    let mut h = [0u8; 16];
    s.read_exact(&mut h).unwrap();
    assert_eq!(h[5], 5, "expected an accept");
    let len = u32::from_le_bytes(h[8..12].try_into().unwrap()) as usize;
    let mut rest = vec![0u8; len];
    s.read_exact(&mut rest).unwrap();
    s
}

fn next_event<E: Endpoint>(ep: &mut E) -> Event<E::Frame> {
    ep.recv(Instant::now() + Duration::from_secs(10))
        .unwrap()
        .expect("an event")
}

#[test]
fn broken_framing_and_ignored_credit_drop_only_that_connection() {
    let net = TcpTransport::with_config(TcpConfig::default().window(64 << 10)).unwrap();
    let mut server = net.bind("server").unwrap();
    let addr = server.local_addr();

    // Not laggard at all: refused at the handshake, nothing reaches recv.
    let mut junk = TcpStream::connect(addr).unwrap();
    junk.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut answer = Vec::new();
    let _ = junk.read_to_end(&mut answer);
    assert!(String::from_utf8_lossy(&answer).contains("magic"));

    // Wrong target name: refused with a reason.
    let mut s = TcpStream::connect(addr).unwrap();
    let mut hello = Vec::new();
    hello.extend_from_slice(&1u64.to_le_bytes());
    hello.extend_from_slice(&5u32.to_le_bytes());
    hello.extend_from_slice(b"other");
    s.write_all(&header(4, hello.len() as u32, 0)).unwrap();
    s.write_all(&hello).unwrap();
    let mut answer = Vec::new();
    let _ = s.read_to_end(&mut answer);
    assert!(String::from_utf8_lossy(&answer).contains("not \"other\""));

    // A bad header after the handshake.
    let mut s = handshake(addr, "server", "garbler");
    assert!(matches!(next_event(&mut server), Event::Connected(_)));
    s.write_all(&[0xAB; 16]).unwrap();
    assert!(matches!(next_event(&mut server), Event::Disconnected(_)));

    // Credit for frames never sent.
    let mut s = handshake(addr, "server", "creditor");
    assert!(matches!(next_event(&mut server), Event::Connected(_)));
    s.write_all(&header(2, 0, 1000)).unwrap();
    assert!(matches!(next_event(&mut server), Event::Disconnected(_)));

    // A sender ignoring its credit: two window-sized frames, unread.
    let mut s = handshake(addr, "server", "flooder");
    let Event::Connected(flooder) = next_event(&mut server) else {
        panic!("expected a connection")
    };
    let frame = vec![1u8; 48 << 10];
    for _ in 0..2 {
        let _ = s.write_all(&header(1, frame.len() as u32, 0));
        let _ = s.write_all(&frame);
    }
    let mut frames = Vec::new();
    loop {
        match next_event(&mut server) {
            Event::Frame(p, f) if p == flooder => frames.push(f), // held, not released
            Event::Disconnected(p) if p == flooder => break,
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(frames.len(), 1, "the frame beyond the window was refused");
    drop(frames);

    // A frame longer than the endpoint accepts.
    let mut s = handshake(addr, "server", "giant");
    assert!(matches!(next_event(&mut server), Event::Connected(_)));
    s.write_all(&header(1, u32::MAX, 0)).unwrap();
    assert!(matches!(next_event(&mut server), Event::Disconnected(_)));

    // The endpoint still serves a well-behaved peer.
    let mut client = net.bind("client").unwrap();
    let soon = Instant::now() + Duration::from_secs(10);
    let peer = client.connect("server", soon).unwrap();
    let mut buf = client.lend(peer, 3, soon).unwrap();
    buf.copy_from_slice(b"ok!");
    client.send(buf).unwrap();
    assert!(matches!(next_event(&mut server), Event::Connected(_)));
    match next_event(&mut server) {
        Event::Frame(_, f) => assert_eq!(&*f, b"ok!"),
        other => panic!("unexpected {other:?}"),
    }
}

/// This process's resident memory, in bytes.
fn resident_bytes() -> usize {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap();
    let pages: usize = statm.split_whitespace().nth(1).unwrap().parse().unwrap();
    pages * 4096
}

/// A peer that announces a frame near the longest allowed and sends a few
/// bytes of it makes the endpoint allocate about what arrived, not what it
/// announced; the connection then ends, cut in the middle of a frame.
#[test]
fn an_announced_frame_costs_only_what_arrives() {
    let net = TcpTransport::new();
    let mut server = net.bind("server").unwrap();
    let mut s = handshake(server.local_addr(), "server", "boaster");
    assert!(matches!(next_event(&mut server), Event::Connected(_)));
    let before = resident_bytes();
    s.write_all(&header(1, 1 << 30, 0)).unwrap();
    s.write_all(&[7u8; 1000]).unwrap();
    // The endpoint reads the header and the bytes while it waits.
    let quiet = server.recv(Instant::now() + Duration::from_millis(300));
    assert!(matches!(quiet, Ok(None)), "{quiet:?}");
    let grown = resident_bytes().saturating_sub(before);
    assert!(
        grown < 64 << 20,
        "a peer announcing 1 GiB and sending 1000 bytes made the endpoint take {grown} bytes"
    );
    drop(s);
    assert!(matches!(next_event(&mut server), Event::Disconnected(_)));
}
