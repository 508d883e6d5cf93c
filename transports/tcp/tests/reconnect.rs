//! Connections cut mid-run: workers reconnect and resend, and the servers
//! apply every push exactly once.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::Proxy;
use laggard::transport::{Endpoint, Event, Transport};
use laggard::{ClusterSpec, Consistency, Error, Server, Sum, TableSpec, Worker, WorkerId};
use laggard_tcp::{TcpConfig, TcpTransport};

const WORKERS: usize = 3;
const SERVERS: usize = 2;
const CLOCKS: u64 = 200;
const KEYS: u64 = 16;

fn delta(worker: usize, clock: u64, key: u64) -> [i64; 2] {
    [
        1,
        (worker as i64 + 1) * 1000 + clock as i64 * 7 + key as i64,
    ]
}

#[test]
fn cutting_every_connection_mid_run_loses_and_duplicates_nothing() {
    let spec = ClusterSpec::new(SERVERS, WORKERS)
        .table(
            "t",
            TableSpec::<i64>::dense(0..KEYS, 2)
                .update(Sum)
                .consistency(Consistency::Bsp),
        )
        .timeout(Duration::from_secs(30));
    // Servers listen on their own transport; workers reach them through
    // proxies that cut every connection every few milliseconds.
    let server_net = TcpTransport::new();
    let mut servers = Vec::new();
    let mut proxies = Vec::new();
    let worker_net = TcpTransport::new();
    for shard in 0..SERVERS {
        let ep = server_net.bind(&spec.server_name(shard)).unwrap();
        let proxy = Proxy::start(ep.local_addr());
        worker_net.set_address(&spec.server_name(shard), proxy.addr);
        proxies.push(proxy);
        let server = Server::new(ep, &spec, shard).unwrap();
        servers.push(std::thread::spawn(move || server.run_until_workers_done()));
    }
    let proxies = Arc::new(proxies);
    let done = Arc::new(AtomicBool::new(false));
    // Cut whenever the workers made some progress since the last cut, so
    // there are many cuts and the run still moves forward between them.
    let progress = Arc::new(AtomicU64::new(0));
    let cutter = {
        let (proxies, done, progress) = (proxies.clone(), done.clone(), progress.clone());
        std::thread::spawn(move || {
            let mut i = 0u64;
            let mut last = 0;
            while !done.load(Ordering::SeqCst) {
                std::thread::sleep(Duration::from_millis(1));
                let now = progress.load(Ordering::SeqCst);
                if now >= last + 10 {
                    // At varying points of a clock: before, during and after
                    // its pushes reach the servers.
                    std::thread::sleep(Duration::from_micros((i * 137) % 900));
                    proxies[(i % SERVERS as u64) as usize].cut_all();
                    last = now;
                    i += 1;
                }
            }
        })
    };
    let results: Vec<_> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..WORKERS)
            .map(|w| {
                let (spec, net, progress) = (&spec, &worker_net, &progress);
                s.spawn(move || -> laggard::Result<(Vec<i64>, u64)> {
                    let ep = net.bind(&spec.worker_name(w))?;
                    let deadline = Instant::now() + Duration::from_secs(30);
                    let mut worker = Worker::connect(ep, spec, WorkerId(w as u32), deadline)?;
                    let t = worker.table::<i64>("t")?;
                    let keys: Vec<u64> = (0..KEYS).collect();
                    let mut rows = vec![0i64; (KEYS * 2) as usize];
                    for c in 0..CLOCKS {
                        worker.pull(&t, &keys, &mut rows)?;
                        // BSP: everything from clocks before c is in, and
                        // nothing beyond the other workers' clock-c pushes.
                        let w_all = WORKERS as i64;
                        let least = c as i64 * w_all;
                        for k in 0..KEYS {
                            let count = rows[(k * 2) as usize];
                            assert!(
                                (least..least + w_all).contains(&count),
                                "worker {w} at clock {c} read count {count} for key {k}; counts {:?}; stats {:?}",
                                rows.iter().step_by(2).collect::<Vec<_>>(),
                                worker.stats()
                            );
                        }
                        let deltas: Vec<i64> = keys.iter().flat_map(|&k| delta(w, c, k)).collect();
                        worker.push(&t, &keys, &deltas)?;
                        worker.clock()?;
                        progress.fetch_add(1, Ordering::SeqCst);
                    }
                    worker.pull(&t, &keys, &mut rows)?;
                    let reconnects = worker.stats().reconnects;
                    worker.leave()?;
                    Ok((rows, reconnects))
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    done.store(true, Ordering::SeqCst);
    cutter.join().unwrap();
    let reports: Vec<_> = servers.into_iter().map(|s| s.join().unwrap()).collect();
    let mut reconnects = 0;
    for r in results {
        let (rows, n) = r.expect("worker failed");
        reconnects += n;
        for k in 0..KEYS {
            let mut expect = [0i64; 2];
            for w in 0..WORKERS {
                for c in 0..CLOCKS {
                    let d = delta(w, c, k);
                    expect[0] += d[0];
                    expect[1] += d[1];
                }
            }
            assert_eq!(
                rows[(k * 2) as usize..(k * 2 + 2) as usize],
                expect,
                "key {k}"
            );
        }
    }
    let mut duplicates = 0;
    for report in reports {
        let report = report.unwrap();
        duplicates += report.stats.duplicate_pushes;
        assert_eq!(report.stats.workers_declared_dead, 0);
    }
    let cuts: usize = proxies.iter().map(|p| p.cuts.load(Ordering::SeqCst)).sum();
    assert!(cuts >= 20, "only {cuts} cuts happened");
    assert!(reconnects > 0, "no worker had to reconnect");
    eprintln!("{cuts} cuts, {reconnects} reconnects, {duplicates} resent pushes deduplicated");
}

#[test]
fn a_silent_peer_is_declared_lost_by_heartbeat_timeout() {
    let cfg = TcpConfig::default()
        .heartbeat(Duration::from_millis(50))
        .dead_after(Duration::from_millis(300));
    let server_net = TcpTransport::with_config(cfg.clone()).unwrap();
    let client_net = TcpTransport::with_config(cfg).unwrap();
    let mut server = server_net.bind("silent-server").unwrap();
    let proxy = Proxy::start(server.local_addr());
    client_net.set_address("silent-server", proxy.addr);
    let mut client = client_net.bind("silent-client").unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let peer = client.connect("silent-server", deadline).unwrap();
    assert!(matches!(
        server.recv(deadline).unwrap(),
        Some(Event::Connected(_))
    ));
    // Idle but alive: heartbeats keep the connection up well past dead_after.
    assert!(
        client
            .recv(Instant::now() + Duration::from_millis(700))
            .unwrap()
            .is_none()
    );
    // The network goes silent without closing anything.
    proxy.blackhole(true);
    let started = Instant::now();
    let event = client.recv(deadline).unwrap();
    assert!(
        matches!(event, Some(Event::Disconnected(p)) if p == peer),
        "{event:?}"
    );
    assert!(started.elapsed() < Duration::from_secs(5));
    let mut buf = match client.lend(peer, 8, deadline) {
        Err(e) => {
            assert!(matches!(e, Error::Disconnected { .. }), "{e}");
            return;
        }
        Ok(buf) => buf,
    };
    buf.copy_from_slice(b"too late");
    let err = client.send(buf).unwrap_err();
    assert!(matches!(err, Error::Disconnected { .. }), "{err}");
}

#[test]
fn an_endpoint_that_accepts_but_never_answers_is_named_as_such() {
    // The kernel completes the connection into the backlog, but nothing
    // reads it: what a stopped (SIGSTOP) or wedged process looks like.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let net = TcpTransport::new();
    net.set_address("stopped-server", listener.local_addr().unwrap());
    let mut client = net.bind("hopeful-client").unwrap();
    let err = client
        .connect(
            "stopped-server",
            Instant::now() + Duration::from_millis(400),
        )
        .unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains("did not answer the handshake in time"),
        "unexpected error: {text}"
    );
    assert!(!text.contains("os error 11"), "unexpected error: {text}");
    drop(listener);
}
