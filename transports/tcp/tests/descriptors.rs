//! A process with few file descriptors to spare: its endpoint takes one
//! descriptor per connection, and once none is left it refuses further
//! connections with a message naming the limit, instead of leaving them
//! unanswered until the connecting side's deadline; rank 0's coordinator,
//! which holds a connection per process while they join, fails the
//! rendezvous at once with that reason, instead of naming ranks missing at
//! the deadline.
//!
//! The process short of descriptors is a child (this test binary, started
//! with `LAGGARD_TEST_CHILD` set and filtered to `child_process`) that
//! lowers its own limit.

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

mod common;

use common::child::{CHILD, as_child};
use laggard::transport::{Endpoint, Transport};
use laggard::{ClusterSpec, Error, TableSpec};
use laggard_tcp::{Bootstrap, TcpTransport};
use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};

/// Descriptors the child may open beyond those it has at its start.
const SPARE: u64 = 12;

/// Lowers this process's descriptor limit to `SPARE` more than it has
/// open.
fn leave_few_descriptors() {
    let open = std::fs::read_dir("/proc/self/fd").unwrap().count() as u64;
    let hard = getrlimit(Resource::Nofile).maximum;
    let few = Rlimit {
        current: Some(open + SPARE),
        maximum: hard,
    };
    setrlimit(Resource::Nofile, few).unwrap();
}

/// The job of the rendezvous test: 1 server, `2 * SPARE` workers.
fn rendezvous_spec() -> ClusterSpec {
    ClusterSpec::new(1, 2 * SPARE as usize).table("t", TableSpec::<i64>::dense(0..4, 1))
}

const RENDEZVOUS_WORLD: usize = 2 * SPARE as usize + 1;

/// What the child does, with few descriptors: `endpoint` binds an
/// endpoint, prints its address and accepts connections until its stdin
/// closes; `coordinator` is rank 0 of a rendezvous at
/// `LAGGARD_COORDINATOR` and prints how it ended.
#[test]
fn child_process() {
    let Ok(mode) = std::env::var(CHILD) else {
        return; // a normal test run: nothing to do
    };
    leave_few_descriptors();
    match mode.as_str() {
        "endpoint" => {
            let mut ep = TcpTransport::new().bind("few").unwrap();
            println!("ADDR {}", ep.local_addr());
            std::io::stdout().flush().unwrap();
            // Accept (the endpoint's own threads do) and take the events
            // until the parent closes stdin.
            let done = std::thread::spawn(|| {
                let mut line = String::new();
                let _ = std::io::stdin().read_line(&mut line);
            });
            while !done.is_finished() {
                let _ = ep.recv(Instant::now() + Duration::from_millis(20));
            }
            // Dropped with no descriptor to spare: it must still end (its
            // acceptor used to be woken with a connection of its own).
            let mut hog = Vec::new();
            while let Ok(file) = std::fs::File::open("/dev/null") {
                hog.push(file);
            }
            drop(ep);
        }
        "coordinator" => {
            let coord = std::env::var("LAGGARD_COORDINATOR").unwrap();
            let joined = Bootstrap::new(0, RENDEZVOUS_WORLD, 1, &coord)
                .timeout(Duration::from_secs(30))
                .join(&rendezvous_spec());
            match joined {
                Ok(_) => println!("RESULT joined"),
                Err(e) => println!("RESULT {e}"),
            }
        }
        other => panic!("unknown child mode {other}"),
    }
}

/// Starts this test binary as a child in `mode`.
fn child(mode: &str, coordinator: &str) -> std::process::Child {
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    as_child(&mut cmd, mode)
        .env("LAGGARD_COORDINATOR", coordinator)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap()
}

/// The text after `tag` on the first line of `child`'s output that has it
/// (after the test harness's "test child_process ... ").
fn printed(child: &mut std::process::Child, tag: &str) -> String {
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    for line in lines.by_ref() {
        if let Some((_, text)) = line.unwrap().split_once(tag) {
            // Read the rest, so the child's last lines find a reader.
            std::thread::spawn(move || lines.for_each(drop));
            return text.trim().to_owned();
        }
    }
    panic!("the child printed no {tag:?}");
}

#[test]
fn connections_past_the_descriptor_limit_are_refused_with_the_reason() {
    let mut child = child("endpoint", "");
    let addr = printed(&mut child, "ADDR ").parse().unwrap();
    let net = TcpTransport::new();
    net.set_address("few", addr);
    let mut endpoints = Vec::new();
    let (mut connected, mut refused) = (0, 0);
    for i in 0..3 * SPARE {
        let mut ep = net.bind(&format!("client{i}")).unwrap();
        match ep.connect("few", Instant::now() + Duration::from_secs(10)) {
            Ok(_) => connected += 1,
            Err(Error::Remote { peer, message }) => {
                assert_eq!(peer, "few");
                assert!(
                    message.contains("no file descriptor left") && message.contains("ulimit -n"),
                    "{message}"
                );
                refused += 1;
            }
            Err(other) => panic!("connection {i}: expected a refusal, got {other}"),
        }
        endpoints.push(ep);
    }
    drop(child.stdin.take());
    let ended = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break Some(status);
        }
        if Instant::now() >= ended {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(
        status.is_some_and(|s| s.success()),
        "the child's endpoint, dropped with no descriptor to spare, did not end: {status:?}"
    );
    // One descriptor per connection: all but a few of the spare ones
    // (the endpoint's own listener, wake-up pair and reserve) serve one.
    assert!(
        connected + 4 >= SPARE,
        "only {connected} connections with {SPARE} spare descriptors"
    );
    assert!(refused > 0, "the limit was never reached");
}

#[test]
fn a_coordinator_without_descriptors_for_every_rank_says_so_to_all() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let coord = format!("127.0.0.1:{port}");
    let mut rank0 = child("coordinator", &coord);
    let ranks: Vec<_> = (1..RENDEZVOUS_WORLD)
        .map(|rank| {
            let coord = coord.clone();
            std::thread::spawn(move || {
                Bootstrap::new(rank, RENDEZVOUS_WORLD, 1, &coord)
                    .timeout(Duration::from_secs(30))
                    .join(&rendezvous_spec())
                    .map(drop)
            })
        })
        .collect();
    let why = "rank 0 has no file descriptor left for the rendezvous";
    for (rank, joined) in ranks.into_iter().enumerate() {
        match joined.join().unwrap() {
            Err(e) => assert!(e.to_string().contains(why), "rank {}: {e}", rank + 1),
            Ok(()) => panic!("rank {} joined a rendezvous that cannot happen", rank + 1),
        }
    }
    let result = printed(&mut rank0, "RESULT ");
    assert!(
        result.contains(why) && result.contains("ulimit -n"),
        "{result}"
    );
    let _ = rank0.wait();
}
