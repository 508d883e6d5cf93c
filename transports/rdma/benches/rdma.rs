//! RDMA benchmarks, meant to run inside the soft-RoCE guest next to
//! perftest (`guest/guest.sh run IMAGE bench`), which reports each figure
//! as a ratio to `ib_write_bw` / `ib_write_lat` run in the same guest:
//! absolute numbers under emulation mean nothing.
//!
//! - `rdma_stream/N`: one-way stream of N-byte frames (lend, fill nothing,
//!   send; the receiver drops each), the transport's counterpart of
//!   `ib_write_bw -s N`.
//! - `rdma_pingpong_64B`: a 64-byte frame there and back; half of it is
//!   the counterpart of `ib_write_lat -s 64`.
//! - `rdma_push_applied/N` and `rdma_pull/N`: the runtime's push of an
//!   N-byte row (f32) until the server applied it, and a pull of one,
//!   through a server over RDMA.
//! - `rdma_pull_with/N`: the same pull read in place in the worker's cache
//!   (`Worker::pull_with`), without the copy into a caller's buffer.
//! - `rdma_pull_rows/N`: a pull of [`PULLED_ROWS`] N-byte rows in one call,
//!   as a worker pulls the rows it trains on at each clock; the rows are
//!   in flight together, as `ib_write_bw`'s writes are, so this is the
//!   runtime's pull bandwidth for N-byte rows (64 KiB only: longer rows
//!   already fill a transfer on their own).
//! - `rdma_push_stream/N`: pushes of an N-byte row back to back, each
//!   ending its clock and none waited for, until the server applied all of
//!   them: the runtime's push bandwidth, the counterpart of
//!   `ib_write_bw -s N`, which also keeps many writes in flight.
//! - `cpu_pass/copy` and `cpu_pass/add`: one pass over a 64 KiB `f32` row
//!   (`copy_from_slice`; `x += d`), what each copy or update rule in a
//!   push or pull costs the emulated CPUs, for comparison with the
//!   transfer's time.
//! - `cpu_pass/register`: registering a 64 KiB buffer for remote writes
//!   and deregistering it, what a pull written by the server straight into
//!   the caller's slice would cost each time (the caller's memory may be
//!   freed after the call, so its registration cannot be kept), against
//!   `cpu_pass/copy`, which such a pull would save.

use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use ibverbs_sys as ffi;
use laggard::transport::{Endpoint, Event, Transport};
use laggard::{ClusterSpec, Consistency, Server, Sum, TableSpec, Worker, WorkerId};
use laggard_rdma::{RdmaConfig, RdmaTransport};

const SIZES: [usize; 3] = [64 << 10, 1 << 20, 16 << 20];

/// Rows pulled at once by `rdma_pull_rows`.
const PULLED_ROWS: usize = 16;

fn soon() -> Instant {
    Instant::now() + Duration::from_secs(60)
}

fn net() -> RdmaTransport {
    RdmaTransport::with_config(RdmaConfig::default().ring_bytes(64 << 20).busy_poll(true)).unwrap()
}

/// A receiver thread that drops every frame until its peer goes.
fn sink(mut ep: impl Endpoint + 'static) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        loop {
            match ep.recv(soon()) {
                Ok(Some(Event::Disconnected(_))) | Ok(None) | Err(_) => return,
                Ok(Some(_)) => {}
            }
        }
    })
}

fn stream(c: &mut Criterion) {
    let mut g = c.benchmark_group("rdma_stream");
    for size in SIZES {
        let net = net();
        let server = net.bind("stream-server").unwrap();
        let mut client = net.bind("stream-client").unwrap();
        let peer = client.connect("stream-server", soon()).unwrap();
        let receiving = sink(server);
        g.throughput(Throughput::Bytes(size as u64));
        g.bench_function(format!("{size}"), |b| {
            b.iter_custom(|iters| {
                let start = Instant::now();
                for _ in 0..iters {
                    let buf = client.lend(peer, size, soon()).unwrap();
                    client.send(buf).unwrap();
                }
                client.flush(peer, soon()).unwrap();
                start.elapsed()
            })
        });
        drop(client);
        receiving.join().unwrap();
    }
    g.finish();
}

fn pingpong(c: &mut Criterion) {
    let net = net();
    let mut server = net.bind("pp-server").unwrap();
    let mut client = net.bind("pp-client").unwrap();
    let peer = client.connect("pp-server", soon()).unwrap();
    let echoing = std::thread::spawn(move || {
        loop {
            match server.recv(soon()) {
                Ok(Some(Event::Frame(from, frame))) => {
                    let mut buf = server.lend(from, frame.len(), soon()).unwrap();
                    buf.copy_from_slice(&frame);
                    drop(frame);
                    server.send(buf).unwrap();
                }
                Ok(Some(Event::Connected(_))) => {}
                _ => return,
            }
        }
    });
    c.bench_function("rdma_pingpong_64B", |b| {
        b.iter(|| {
            let mut buf = client.lend(peer, 64, soon()).unwrap();
            buf.fill(1);
            client.send(buf).unwrap();
            loop {
                if let Some(Event::Frame(_, f)) = client.recv(soon()).unwrap() {
                    return f.len();
                }
            }
        })
    });
    drop(client);
    echoing.join().unwrap();
}

fn pushpull(c: &mut Criterion) {
    for size in SIZES {
        let width = size / 4;
        // Pushes go to an Async table; pulls read a BSP one, where each
        // clock makes the cached row stale so the pull fetches it again.
        let spec = ClusterSpec::new(1, 1)
            .table(
                "row",
                TableSpec::<f32>::dense(0..1, width)
                    .update(Sum)
                    .consistency(Consistency::Async),
            )
            .table(
                "pulled",
                TableSpec::<f32>::dense(0..1, width).consistency(Consistency::Bsp),
            )
            .table(
                "pulled_rows",
                TableSpec::<f32>::dense(0..PULLED_ROWS as u64, width).consistency(Consistency::Bsp),
            )
            .timeout(Duration::from_secs(60));
        let net = net();
        let server = Server::new(net.bind(&spec.server_name(0)).unwrap(), &spec, 0).unwrap();
        let serving = std::thread::spawn(move || server.run_until_workers_done().unwrap());
        let ep = net.bind(&spec.worker_name(0)).unwrap();
        let mut worker = Worker::connect(ep, &spec, WorkerId(0), soon()).unwrap();
        let table = worker.table::<f32>("row").unwrap();
        let pulled = worker.table::<f32>("pulled").unwrap();
        let pulled_rows = worker.table::<f32>("pulled_rows").unwrap();
        let keys: Vec<u64> = (0..PULLED_ROWS as u64).collect();
        let delta = vec![1.0f32; width];
        let mut row = vec![0f32; width];
        let mut g = c.benchmark_group("rdma_push_applied");
        g.throughput(Throughput::Bytes(size as u64));
        g.bench_function(format!("{size}"), |b| {
            b.iter(|| {
                worker.push(&table, &[0], &delta).unwrap();
                let ticket = worker.flush().unwrap();
                worker.wait_applied(&ticket, soon()).unwrap();
            })
        });
        g.finish();
        let mut g = c.benchmark_group("rdma_push_stream");
        g.throughput(Throughput::Bytes(size as u64));
        g.bench_function(format!("{size}"), |b| {
            b.iter_custom(|iters| {
                let start = Instant::now();
                let mut last = None;
                for _ in 0..iters {
                    worker.push(&table, &[0], &delta).unwrap();
                    last = Some(worker.start_clock().unwrap());
                }
                if let Some(ticket) = last {
                    worker.wait_applied(&ticket, soon()).unwrap();
                }
                start.elapsed()
            })
        });
        g.finish();
        let mut g = c.benchmark_group("rdma_pull");
        g.throughput(Throughput::Bytes(size as u64));
        g.bench_function(format!("{size}"), |b| {
            b.iter(|| {
                worker.clock().unwrap();
                worker.pull(&pulled, &[0], &mut row).unwrap();
            })
        });
        g.finish();
        let mut g = c.benchmark_group("rdma_pull_with");
        g.throughput(Throughput::Bytes(size as u64));
        g.bench_function(format!("{size}"), |b| {
            b.iter(|| {
                worker.clock().unwrap();
                let at = worker.pull_with(&pulled, 0, |row| row.as_ptr()).unwrap();
                std::hint::black_box(at);
            })
        });
        g.finish();
        if size == SIZES[0] {
            let mut rows = vec![0f32; width * PULLED_ROWS];
            let mut g = c.benchmark_group("rdma_pull_rows");
            g.throughput(Throughput::Bytes((size * PULLED_ROWS) as u64));
            g.bench_function(format!("{size}"), |b| {
                b.iter(|| {
                    worker.clock().unwrap();
                    worker.pull(&pulled_rows, &keys, &mut rows).unwrap();
                })
            });
            g.finish();
        }
        worker.leave().unwrap();
        serving.join().unwrap();
    }
}

/// The first verbs device's context and a protection domain on it, for
/// `cpu_pass/register`; closed on drop.
struct Domain {
    ctx: *mut ffi::ibv_context,
    pd: *mut ffi::ibv_pd,
}

impl Domain {
    fn open() -> Option<Domain> {
        let mut n = 0;
        // SAFETY: `n` is a valid out-pointer; the list is freed below.
        let list = unsafe { ffi::ibv_get_device_list(&mut n) };
        if list.is_null() || n < 1 {
            return None;
        }
        // SAFETY: the list holds `n` >= 1 valid devices; a context stays
        // valid after the list is freed.
        let ctx = unsafe { ffi::ibv_open_device(*list) };
        // SAFETY: freed once, after its last use.
        unsafe { ffi::ibv_free_device_list(list) };
        if ctx.is_null() {
            return None;
        }
        // SAFETY: `ctx` is an open context.
        let pd = unsafe { ffi::ibv_alloc_pd(ctx) };
        if pd.is_null() {
            // SAFETY: opened above, closed once.
            unsafe { ffi::ibv_close_device(ctx) };
            return None;
        }
        Some(Domain { ctx, pd })
    }
}

impl Drop for Domain {
    fn drop(&mut self) {
        // SAFETY: every registration made in the domain was deregistered;
        // each is freed once.
        unsafe {
            ffi::ibv_dealloc_pd(self.pd);
            ffi::ibv_close_device(self.ctx);
        }
    }
}

fn cpu_pass(c: &mut Criterion) {
    let from = vec![1.0f32; 16 << 10];
    let mut to = vec![2.0f32; 16 << 10];
    let mut g = c.benchmark_group("cpu_pass");
    g.throughput(Throughput::Bytes(64 << 10));
    g.bench_function("copy", |b| {
        b.iter(|| to.copy_from_slice(std::hint::black_box(&from)))
    });
    g.bench_function("add", |b| {
        b.iter(|| {
            for (x, d) in to.iter_mut().zip(std::hint::black_box(&from)) {
                *x += *d;
            }
        })
    });
    match Domain::open() {
        Some(domain) => {
            let access = (ffi::ibv_access_flags::IBV_ACCESS_LOCAL_WRITE
                | ffi::ibv_access_flags::IBV_ACCESS_REMOTE_WRITE)
                .0 as std::os::raw::c_int;
            let len = std::mem::size_of_val(to.as_slice());
            g.bench_function("register", |b| {
                b.iter(|| {
                    // SAFETY: `to` is `len` bytes of live memory, mapped for
                    // the whole call; registration only pins its pages.
                    let mr =
                        unsafe { ffi::ibv_reg_mr(domain.pd, to.as_mut_ptr().cast(), len, access) };
                    assert!(
                        !mr.is_null(),
                        "ibv_reg_mr: {}",
                        std::io::Error::last_os_error()
                    );
                    // SAFETY: registered just above, used by no work request.
                    unsafe { ffi::ibv_dereg_mr(mr) };
                })
            });
        }
        None => eprintln!("cpu_pass/register skipped: no verbs device"),
    }
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3));
    targets = stream, pingpong, pushpull, cpu_pass
}
criterion_main!(benches);
