//! The TCP transport, each figure against a baseline in the same run.
//!
//! - `tcp_roundtrip_*`: push + clock + pull of one row between one worker
//!   and one server over loopback (BSP, so the pull goes to the server),
//!   against a raw `TcpStream` echo of the same bytes (the row out, the row
//!   back) on loopback.
//! - `tcp_push_stream_*`: pushes of one row, back to back (each ending its
//!   clock, none waited for), until the server applied all of them,
//!   against a raw `TcpStream` writing the same bytes to a reader that
//!   acknowledges the last one: push bandwidth against raw bandwidth.
//! - `tcp_pull_*`: a clock (which makes the cached row stale) and a pull of
//!   one row, against a raw request of 16 bytes answered with the row's
//!   bytes: pull bandwidth against raw request/response bandwidth.
//! - `tcp_push_scaling`: one worker pushes 1 MiB (64 rows of 4096 f32, SGD)
//!   per clock and waits for the servers to apply it, with the table on two
//!   server shards against one.

use std::hint::black_box;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use laggard::transport::Transport;
use laggard::{ClusterSpec, Consistency, Server, ServerReport, Sgd, TableSpec, Worker, WorkerId};
use laggard_benches::push_stream;
use laggard_tcp::{TcpEndpoint, TcpTransport};

/// A raw loopback connection: `serve` runs on a thread with the accepted
/// end; the connecting end is returned. Both ends have Nagle off.
fn raw_pair(serve: impl FnOnce(TcpStream) + Send + 'static) -> (TcpStream, JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let server = std::thread::spawn(move || {
        let (s, _) = listener.accept().unwrap();
        s.set_nodelay(true).unwrap();
        serve(s);
    });
    let client = TcpStream::connect(addr).unwrap();
    client.set_nodelay(true).unwrap();
    (client, server)
}

/// A raw echo: the far side reads `len` bytes and writes them back.
fn echo_pair(len: usize) -> (TcpStream, JoinHandle<()>) {
    raw_pair(move |mut s| {
        let mut buf = vec![0u8; len];
        while s.read_exact(&mut buf).is_ok() {
            if s.write_all(&buf).is_err() {
                break;
            }
        }
    })
}

/// Starts `spec`'s servers on threads over `net`, and connects worker 0.
fn cluster(
    spec: &ClusterSpec,
    net: &TcpTransport,
) -> (
    Worker<TcpEndpoint>,
    Vec<JoinHandle<laggard::Result<ServerReport>>>,
) {
    let servers = (0..spec.servers())
        .map(|shard| {
            let server =
                Server::new(net.bind(&spec.server_name(shard)).unwrap(), spec, shard).unwrap();
            std::thread::spawn(move || server.run_until_workers_done())
        })
        .collect();
    let ep = net.bind(&spec.worker_name(0)).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let worker = Worker::connect(ep, spec, WorkerId(0), deadline).unwrap();
    (worker, servers)
}

fn roundtrip(c: &mut Criterion) {
    for bytes in [4usize << 10, 64 << 10, 1 << 20, 16 << 20] {
        let len = bytes / 4;
        let mut g = c.benchmark_group(format!("tcp_roundtrip_{}KiB", bytes >> 10));
        g.throughput(Throughput::Bytes(2 * bytes as u64));
        if bytes >= 1 << 20 {
            g.sample_size(10);
        }

        let (mut client, echo) = echo_pair(bytes);
        let out = vec![7u8; bytes];
        let mut back = vec![0u8; bytes];
        g.bench_function("baseline_raw_tcp_echo", |b| {
            b.iter(|| {
                client.write_all(black_box(&out)).unwrap();
                client.read_exact(&mut back).unwrap();
                black_box(&mut back);
            })
        });
        drop(client);
        echo.join().unwrap();

        let spec = ClusterSpec::new(1, 1).table(
            "row",
            TableSpec::<f32>::dense(0..1, len).consistency(Consistency::Bsp),
        );
        let net = TcpTransport::new();
        let (mut worker, servers) = cluster(&spec, &net);
        let table = worker.table::<f32>("row").unwrap();
        let delta = vec![0.25f32; len];
        let mut row = vec![0f32; len];
        g.bench_function("laggard_push_clock_pull", |b| {
            b.iter(|| {
                worker.push(&table, &[0], black_box(&delta)).unwrap();
                worker.clock().unwrap();
                worker.pull(&table, &[0], &mut row).unwrap();
                black_box(&mut row);
            })
        });
        g.finish();
        worker.leave().unwrap();
        for s in servers {
            s.join().unwrap().unwrap();
        }
    }
}

/// A raw sink: for each batch, the far side reads a 16-byte count, that
/// many bytes, and answers one byte.
fn sink_pair() -> (TcpStream, JoinHandle<()>) {
    raw_pair(|mut s| {
        let mut want = [0u8; 16];
        let mut buf = vec![0u8; 1 << 20];
        while s.read_exact(&mut want).is_ok() {
            let mut left = u128::from_le_bytes(want) as usize;
            while left > 0 {
                let n = left.min(buf.len());
                if s.read_exact(&mut buf[..n]).is_err() {
                    return;
                }
                left -= n;
            }
            if s.write_all(&[1]).is_err() {
                return;
            }
        }
    })
}

/// A raw responder: the far side answers every 16-byte request with
/// `len` bytes.
fn responder_pair(len: usize) -> (TcpStream, JoinHandle<()>) {
    raw_pair(move |mut s| {
        let mut req = [0u8; 16];
        let row = vec![3u8; len];
        while s.read_exact(&mut req).is_ok() {
            if s.write_all(&row).is_err() {
                break;
            }
        }
    })
}

/// Push and pull bandwidth of large rows, each against the raw socket
/// doing the same transfer.
fn bandwidth(c: &mut Criterion) {
    for bytes in [1usize << 20, 16 << 20] {
        let len = bytes / 4;
        let spec = ClusterSpec::new(1, 1)
            .table(
                "pushed",
                TableSpec::<f32>::dense(0..1, len).consistency(Consistency::Async),
            )
            .table(
                "pulled",
                TableSpec::<f32>::dense(0..1, len).consistency(Consistency::Bsp),
            );
        let net = TcpTransport::new();
        let (mut worker, servers) = cluster(&spec, &net);
        let pushed = worker.table::<f32>("pushed").unwrap();
        let pulled = worker.table::<f32>("pulled").unwrap();
        let delta = vec![0.25f32; len];
        let mut row = vec![0f32; len];

        let mut g = c.benchmark_group(format!("tcp_push_stream_{}KiB", bytes >> 10));
        g.throughput(Throughput::Bytes(bytes as u64));
        g.sample_size(10);
        let (mut client, sink) = sink_pair();
        let out = vec![7u8; bytes];
        g.bench_function("baseline_raw_tcp_stream", |b| {
            b.iter_custom(|iters| {
                let start = Instant::now();
                client
                    .write_all(&(u128::from(iters) * bytes as u128).to_le_bytes())
                    .unwrap();
                for _ in 0..iters {
                    client.write_all(black_box(&out)).unwrap();
                }
                client.read_exact(&mut [0u8]).unwrap();
                start.elapsed()
            })
        });
        drop(client);
        sink.join().unwrap();
        g.bench_function("laggard_push_stream", |b| {
            b.iter_custom(|iters| push_stream(&mut worker, &pushed, 0, &delta, iters))
        });
        g.finish();

        let mut g = c.benchmark_group(format!("tcp_pull_{}KiB", bytes >> 10));
        g.throughput(Throughput::Bytes(bytes as u64));
        g.sample_size(10);
        let (mut client, responder) = responder_pair(bytes);
        let mut back = vec![0u8; bytes];
        g.bench_function("baseline_raw_tcp_request_response", |b| {
            b.iter(|| {
                client.write_all(&[0u8; 16]).unwrap();
                client.read_exact(&mut back).unwrap();
                black_box(&mut back);
            })
        });
        drop(client);
        responder.join().unwrap();
        g.bench_function("laggard_clock_pull", |b| {
            b.iter(|| {
                worker.clock().unwrap();
                worker.pull(&pulled, &[0], &mut row).unwrap();
                black_box(&mut row);
            })
        });
        // The same pull read in place in the worker's cache (`pull_with`):
        // no copy into a caller's buffer, as the raw reader makes none.
        g.bench_function("laggard_clock_pull_with", |b| {
            b.iter(|| {
                worker.clock().unwrap();
                let at = worker.pull_with(&pulled, 0, |row| row.as_ptr()).unwrap();
                black_box(at);
            })
        });
        g.finish();
        worker.leave().unwrap();
        for s in servers {
            s.join().unwrap().unwrap();
        }
    }
}

fn scaling(c: &mut Criterion) {
    const ROWS: u64 = 64;
    const WIDTH: usize = 4096;
    let mut g = c.benchmark_group("tcp_push_scaling");
    g.throughput(Throughput::Bytes(ROWS * (WIDTH * 4) as u64));
    g.sample_size(20);
    let keys: Vec<u64> = (0..ROWS).collect();
    let deltas = vec![0.5f32; ROWS as usize * WIDTH];
    for servers in [1, 2] {
        let spec = ClusterSpec::new(servers, 1).table(
            "w",
            TableSpec::<f32>::dense(0..ROWS, WIDTH)
                .update(Sgd::new(0.01))
                .consistency(Consistency::Async),
        );
        let net = TcpTransport::new();
        let (mut worker, handles) = cluster(&spec, &net);
        let table = worker.table::<f32>("w").unwrap();
        let name = if servers == 1 {
            "baseline_1_server"
        } else {
            "laggard_2_servers"
        };
        g.bench_function(name, |b| {
            b.iter(|| {
                worker.push(&table, &keys, black_box(&deltas)).unwrap();
                let ticket = worker.start_clock().unwrap();
                worker
                    .wait_applied(&ticket, Instant::now() + Duration::from_secs(30))
                    .unwrap();
            })
        });
        worker.leave().unwrap();
        for h in handles {
            h.join().unwrap().unwrap();
        }
    }
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().warm_up_time(Duration::from_millis(300)).measurement_time(Duration::from_secs(2));
    targets = roundtrip, bandwidth, scaling
}
criterion_main!(benches);
