//! The shared-memory transport, each figure against a baseline in the same
//! run. Server and worker are threads of this process, but everything
//! between them goes through `/dev/shm` segments and futexes exactly as
//! between processes.
//!
//! - `shm_small_64B`: a 64-byte push and its acknowledgement (push, flush,
//!   wait until applied), in busy-poll mode, against a two-thread
//!   cache-line ping-pong (measured first and again last, to show a
//!   change of the threads' placement midway); the same with 31 more workers connected and
//!   idle (a server looks at every connection when it waits for a frame).
//!   Also the transport alone: a 64-byte frame and an
//!   8-byte reply, between two threads and (to show what the transport's
//!   own code costs) with both endpoints on one thread, and the frames of a
//!   push and its acknowledgement (136 and 32 bytes); and the floor of
//!   any transport: the push's and the acknowledgement's frames through
//!   two bare rings, with no software around them.
//! - `shm_small_64B_paired`: the floor, the transport alone with the
//!   push's and acknowledgement's frames, and the push + ack, each reported
//!   directly as a multiple of the ping-pong ("x ping-pong"): every few
//!   milliseconds of a benchmark are divided by ping-pongs timed right
//!   after them, because this VM's host moves its vCPUs more often than a
//!   run takes (see `paired`).
//! - `shm_large_{4,64}MiB`: one row pushed (and applied), or pulled after a
//!   clock made the cached copy stale, against `memcpy` of the same size.
//!   Also the transport alone: the row written into a lent ring slot by the
//!   sender and copied out by the receiver; and the floor of any push,
//!   with no transport or protocol: the delta written into memory another
//!   thread reads, which then adds it into a row. `laggard_push_stream`:
//!   pushes back to back (each ending its clock, none waited for) until
//!   the server applied all of them: push bandwidth, measured as
//!   `tcp_push_stream_*` measures it over TCP; and a model of it with no
//!   transport or protocol (`model_push_stream`): each delta copied once,
//!   into one of two buffers in turn, while another thread adds the last
//!   into a row.

use std::hint::black_box;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use criterion::measurement::{Measurement, ValueFormatter};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use laggard::transport::{Endpoint, Event, PeerId, Transport};
use laggard::{ClusterSpec, Consistency, Server, ServerReport, TableSpec, Worker, WorkerId};
use laggard_benches::push_stream;
use laggard_shm::{ShmConfig, ShmEndpoint, ShmTransport};

fn net(tag: &str, cfg: ShmConfig) -> ShmTransport {
    ShmTransport::with_config(&format!("bench{tag}{}", std::process::id()), cfg).unwrap()
}

fn far() -> Instant {
    Instant::now() + Duration::from_secs(60)
}

/// One server shard on a thread and worker 0, over `net`.
fn cluster(
    spec: &ClusterSpec,
    net: &ShmTransport,
) -> (
    Worker<ShmEndpoint>,
    JoinHandle<laggard::Result<ServerReport>>,
) {
    let server = Server::new(net.bind(&spec.server_name(0)).unwrap(), spec, 0).unwrap();
    let serving = std::thread::spawn(move || server.run_until_workers_done());
    let ep = net.bind(&spec.worker_name(0)).unwrap();
    let worker = Worker::connect(ep, spec, WorkerId(0), far()).unwrap();
    (worker, serving)
}

/// A second thread that answers every odd value of `line` with the next
/// even one, until `stop`.
fn pingpong_partner(line: Arc<AtomicU64>, stop: Arc<AtomicBool>) -> JoinHandle<()> {
    std::thread::spawn(move || {
        while !stop.load(Ordering::Relaxed) {
            let v = line.load(Ordering::Acquire);
            if v % 2 == 1 {
                line.store(v + 1, Ordering::Release);
            } else {
                std::hint::spin_loop();
            }
        }
    })
}

/// One round trip of `line` to a [`pingpong_partner`] and back.
fn pingpong_round(line: &AtomicU64) {
    let v = line.load(Ordering::Relaxed) + 1;
    line.store(v, Ordering::Release);
    while line.load(Ordering::Acquire) != v + 1 {
        std::hint::spin_loop();
    }
}

/// A delta handed from one thread to another, as in the push floor.
struct Handoff {
    delta: std::sync::Mutex<Vec<f32>>,
    /// Rounds written and applied so far.
    round: AtomicU64,
    applied: AtomicU64,
    stop: AtomicBool,
}

/// A second thread that adds each round's delta into a row of its own.
fn push_applier(handoff: Arc<Handoff>, len: usize) -> JoinHandle<()> {
    std::thread::spawn(move || {
        let mut row = vec![0f32; len];
        let mut seen = 0;
        while !handoff.stop.load(Ordering::Relaxed) {
            let round = handoff.round.load(Ordering::Acquire);
            if round == seen {
                std::hint::spin_loop();
                continue;
            }
            for (x, d) in row.iter_mut().zip(handoff.delta.lock().unwrap().iter()) {
                *x += d;
            }
            black_box(&mut row);
            seen = round;
            handoff.applied.store(round, Ordering::Release);
        }
    })
}

/// A push stream without a transport: a writer copies each round's delta into
/// one of `slots.len()` buffers in turn (waiting while that buffer's last
/// round is not applied), an applier adds each into a row of its own, so
/// copying and adding overlap as pushes in flight let them.
struct Pipeline {
    slots: Vec<std::sync::Mutex<Vec<f32>>>,
    /// Rounds written and applied so far.
    written: AtomicU64,
    applied: AtomicU64,
    stop: AtomicBool,
}

impl Pipeline {
    fn new(depth: usize, len: usize) -> Arc<Self> {
        Arc::new(Pipeline {
            slots: (0..depth)
                .map(|_| std::sync::Mutex::new(vec![1f32; len]))
                .collect(),
            written: AtomicU64::new(0),
            applied: AtomicU64::new(0),
            stop: AtomicBool::new(false),
        })
    }

    /// Writes `rounds` more deltas and waits until all were applied.
    fn run(&self, delta: &[f32], rounds: u64) {
        let depth = self.slots.len() as u64;
        let first = self.written.load(Ordering::Relaxed);
        for r in first..first + rounds {
            while r >= self.applied.load(Ordering::Acquire) + depth {
                std::hint::spin_loop();
            }
            self.slots[(r % depth) as usize]
                .lock()
                .unwrap()
                .copy_from_slice(black_box(delta));
            self.written.store(r + 1, Ordering::Release);
        }
        while self.applied.load(Ordering::Acquire) < first + rounds {
            std::hint::spin_loop();
        }
    }

    fn applier(self: Arc<Self>, len: usize) -> JoinHandle<()> {
        std::thread::spawn(move || {
            let mut row = vec![0f32; len];
            let depth = self.slots.len() as u64;
            let mut next = 0;
            while !self.stop.load(Ordering::Relaxed) {
                if self.written.load(Ordering::Acquire) == next {
                    std::hint::spin_loop();
                    continue;
                }
                let slot = self.slots[(next % depth) as usize].lock().unwrap();
                for (x, d) in row.iter_mut().zip(slot.iter()) {
                    *x += d;
                }
                drop(slot);
                black_box(&mut row);
                next += 1;
                self.applied.store(next, Ordering::Release);
            }
        })
    }
}

/// The floor of any frame exchange between two threads: two bare
/// single-producer, single-consumer rings of words, with none of a
/// transport's checks, wake-ups or bookkeeping, carrying a `request`-byte
/// frame one way and a `reply`-byte frame back (each after an 8-byte
/// header word), the sizes of a 64-byte push and its acknowledgement. The
/// reader polls the header word it reads next, as laggard's rings do (the
/// writer zeroes the word past each record before it publishes the
/// record's header). What it costs beyond the ping-pong is the frames'
/// cache lines crossing cores, which any transport pays.
struct BareRing {
    /// Words released by the reader, on cache lines of its own.
    head: Padded,
    words: Vec<AtomicU64>,
}

#[repr(align(128))]
struct Padded(AtomicU64);

/// One side's private position in a [`BareRing`].
#[derive(Default)]
struct BareEnd {
    pos: u64,
    head_seen: u64,
}

impl BareRing {
    /// 64 KiB, as much of a ring as laggard's keeps reusing when its
    /// reader keeps up.
    const WORDS: u64 = 8 << 10;
    /// The header of the rest of a lap the writer skipped.
    const SKIP: u64 = u64::MAX;

    fn new() -> Self {
        BareRing {
            head: Padded(AtomicU64::new(0)),
            words: (0..Self::WORDS).map(|_| AtomicU64::new(0)).collect(),
        }
    }

    /// Where a record of `n` words plus its header starts at or after
    /// `pos`: records do not wrap, the rest of a lap is skipped (marked by
    /// a `SKIP` header).
    fn place(pos: u64, n: u64) -> u64 {
        let at = pos % Self::WORDS;
        if at + n + 1 > Self::WORDS {
            pos + Self::WORDS - at
        } else {
            pos
        }
    }

    fn send(&self, end: &mut BareEnd, n: u64, value: u64) {
        let start = Self::place(end.pos, n);
        // The record, and the word after it that publishing zeroes.
        let room = |head: u64| start + n + 2 - head <= Self::WORDS;
        while !room(end.head_seen) {
            std::hint::spin_loop();
            // Acquire: pairs with the reader's Release store of `head`.
            end.head_seen = self.head.0.load(Ordering::Acquire);
        }
        let at = (start % Self::WORDS) as usize;
        for w in &self.words[at + 1..=at + n as usize] {
            w.store(value, Ordering::Relaxed);
        }
        // Relaxed: published by the Release store of the header.
        self.words[((start + n + 1) % Self::WORDS) as usize].store(0, Ordering::Relaxed);
        // Release: pairs with the reader's Acquire load in `recv`.
        self.words[at].store(n, Ordering::Release);
        if start != end.pos {
            // Release: the reader reaches the record through this.
            self.words[(end.pos % Self::WORDS) as usize].store(Self::SKIP, Ordering::Release);
        }
        end.pos = start + n + 1;
    }

    /// Waits for the next record and returns the sum of its words.
    fn recv(&self, end: &mut BareEnd) -> u64 {
        let mut at = (end.pos % Self::WORDS) as usize;
        let n = loop {
            // Acquire: pairs with the writer's Release stores in `send`.
            match self.words[at].load(Ordering::Acquire) {
                0 => std::hint::spin_loop(),
                Self::SKIP => {
                    end.pos += Self::WORDS - at as u64;
                    at = 0;
                }
                n => break n,
            }
        };
        let sum = self.words[at + 1..=at + n as usize]
            .iter()
            .map(|w| w.load(Ordering::Relaxed))
            .fold(0u64, u64::wrapping_add);
        end.pos += n + 1;
        // Release: pairs with the writer's Acquire load in `send`.
        self.head.0.store(end.pos, Ordering::Release);
        sum
    }
}

/// A `request`-byte frame and a `reply`-byte frame back through two
/// [`BareRing`]s, the far side answering on a thread of its own.
struct BareExchange {
    to_far: Arc<BareRing>,
    to_near: Arc<BareRing>,
    outbound: BareEnd,
    inbound: BareEnd,
    words_in: u64,
    value: u64,
    stop: Arc<AtomicBool>,
    far_side: JoinHandle<()>,
}

impl BareExchange {
    fn start(request: u64, reply: u64) -> Self {
        let (to_far, to_near) = (Arc::new(BareRing::new()), Arc::new(BareRing::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let words_out = reply.div_ceil(8);
        let far_side = {
            let (to_far, to_near, stop) = (to_far.clone(), to_near.clone(), stop.clone());
            std::thread::spawn(move || {
                let (mut inbound, mut outbound) = (BareEnd::default(), BareEnd::default());
                loop {
                    let sum = to_far.recv(&mut inbound);
                    if stop.load(Ordering::Relaxed) {
                        return;
                    }
                    to_near.send(&mut outbound, words_out, sum);
                }
            })
        };
        BareExchange {
            to_far,
            to_near,
            outbound: BareEnd::default(),
            inbound: BareEnd::default(),
            words_in: request.div_ceil(8),
            value: 0,
            stop,
            far_side,
        }
    }

    /// One request and its reply.
    fn round(&mut self) {
        self.value += 1;
        self.to_far
            .send(&mut self.outbound, self.words_in, self.value);
        black_box(self.to_near.recv(&mut self.inbound));
    }

    fn finish(mut self) {
        self.stop.store(true, Ordering::Relaxed);
        self.to_far.send(&mut self.outbound, 1, 0);
        self.far_side.join().unwrap();
    }
}

/// Times a `request`-byte frame and a `reply`-byte frame back through two
/// [`BareRing`]s.
fn bare_ring_exchange(
    g: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    name: &str,
    request: u64,
    reply: u64,
) {
    let mut exchange = BareExchange::start(request, reply);
    g.bench_function(name, |b| b.iter(|| exchange.round()));
    exchange.finish();
}

/// A transport-level echo: the far side answers each frame with an
/// `reply`-byte frame, until the connection closes. Returns the echo's
/// thread and a client endpoint connected to it, after one exchange: the
/// echo has then accepted the connection, so dropping the client ends the
/// echo even when a benchmark filter skipped every exchange.
fn echo_server(
    net: &ShmTransport,
    name: &str,
    reply: usize,
    copy_out: bool,
) -> (JoinHandle<()>, ShmEndpoint, PeerId) {
    let mut ep = net.bind(name).unwrap();
    let mut client = net.bind(&format!("{name}-client")).unwrap();
    let echo = std::thread::spawn(move || {
        let mut sink = Vec::new();
        // Renewed every 1024 frames rather than read per frame: the clock
        // would cost the echo tens of nanoseconds per reply.
        let (mut deadline, mut frames) = (far(), 0u32);
        loop {
            frames = frames.wrapping_add(1);
            if frames % 1024 == 0 {
                deadline = far();
            }
            match ep.recv(deadline).unwrap() {
                Some(Event::Frame(peer, frame)) => {
                    if copy_out {
                        sink.clear();
                        sink.extend_from_slice(&frame);
                        black_box(&sink);
                    }
                    drop(frame);
                    let mut buf = ep.lend(peer, reply, deadline).unwrap();
                    buf.fill(1);
                    ep.send(buf).unwrap();
                }
                Some(Event::Connected(_)) => {}
                Some(Event::Disconnected(_)) | None => return,
            }
        }
    });
    let peer = client.connect(name, far()).unwrap();
    let buf = client.lend(peer, 1, far()).unwrap();
    client.send(buf).unwrap();
    while !matches!(client.recv(far()).unwrap(), Some(Event::Frame(..))) {}
    (echo, client, peer)
}

/// A `frame`-byte frame to an [`echo_server`] and its reply.
fn echo_round(client: &mut ShmEndpoint, peer: PeerId, frame: usize, deadline: Instant) {
    let mut buf = client.lend(peer, frame, deadline).unwrap();
    buf.fill(3);
    client.send(buf).unwrap();
    loop {
        if let Some(Event::Frame(_, reply)) = client.recv(deadline).unwrap() {
            black_box(&*reply);
            return;
        }
    }
}

/// The small-message baseline: a round trip of one cache line between two
/// threads.
fn pingpong(g: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>, name: &str) {
    let line = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let partner = pingpong_partner(line.clone(), stop.clone());
    g.bench_function(name, |b| b.iter(|| pingpong_round(&line)));
    stop.store(true, Ordering::Relaxed);
    partner.join().unwrap();
}

fn small(c: &mut Criterion) {
    let mut g = c.benchmark_group("shm_small_64B");
    pingpong(&mut g, "baseline_cacheline_pingpong");

    let busy = ShmConfig::default().busy_poll(true).ring_bytes(1 << 20);
    // Deadlines are made outside the timed loops: reading the clock costs
    // tens of nanoseconds, a fair share of these round trips. This one
    // serves the whole group, so it lies an hour away rather than `far()`'s
    // minute, which a long `--measurement-time` could outlast.
    let deadline = Instant::now() + Duration::from_secs(3600);
    // With more workers connected and idle: the server looks at every
    // worker's connection for each frame it waits for.
    for idle in [0, 31] {
        let spec = ClusterSpec::new(1, 1 + idle).table(
            "small",
            TableSpec::<f32>::dense(0..1, 16).consistency(Consistency::Async),
        );
        let shm = net(&format!("small{idle}"), busy.clone());
        let (mut worker, serving) = cluster(&spec, &shm);
        let idlers: Vec<_> = (1..=idle)
            .map(|w| {
                let ep = shm.bind(&spec.worker_name(w)).unwrap();
                Worker::connect(ep, &spec, WorkerId(w as u32), far()).unwrap()
            })
            .collect();
        let table = worker.table::<f32>("small").unwrap();
        let delta = [0.5f32; 16];
        let name = match idle {
            0 => "laggard_push_ack_busy_poll".to_owned(),
            n => format!("laggard_push_ack_busy_poll_{n}_idle_workers"),
        };
        g.bench_function(name, |b| {
            b.iter(|| {
                worker.push(&table, &[0], black_box(&delta)).unwrap();
                let ticket = worker.flush().unwrap();
                worker.wait_applied(&ticket, deadline).unwrap();
            })
        });
        worker.leave().unwrap();
        for idler in idlers {
            idler.leave().unwrap();
        }
        serving.join().unwrap().unwrap();
    }

    // The frames of a 64-byte push (136 bytes) and its acknowledgement
    // (32), as `Worker::stats` counts them.
    bare_ring_exchange(&mut g, "floor_bare_ring_exchange", 136, 32);

    // The transport alone: a 64-byte frame and an 8-byte reply; then the
    // frames the floor moves (a push's and its acknowledgement's), so that
    // floor, transport and push + ack compare the same bytes.
    let shm = net("frame", busy);
    for (name, frame, reply) in [
        ("laggard_transport_frame_reply_busy", 64, 8),
        ("laggard_transport_push_ack_frames_busy", 136, 32),
    ] {
        let (echo, mut client, peer) = echo_server(&shm, &format!("echo{frame}"), reply, false);
        g.bench_function(name, |b| {
            b.iter(|| echo_round(&mut client, peer, frame, deadline))
        });
        drop(client);
        echo.join().unwrap();
    }

    // The same exchange with both endpoints on this thread: what the
    // transport's own code costs, with no cache line crossing cores.
    let shm = net(
        "one",
        ShmConfig::default().busy_poll(true).ring_bytes(1 << 20),
    );
    let mut near = shm.bind("near").unwrap();
    let mut far_end = shm.bind("far").unwrap();
    let to_far = near.connect("far", far()).unwrap();
    let to_near = loop {
        if let Some(Event::Connected(p)) = far_end.recv(far()).unwrap() {
            break p;
        }
    };
    let frame_from = |ep: &mut ShmEndpoint| match ep.recv(deadline).unwrap() {
        Some(Event::Frame(_, frame)) => frame,
        other => panic!("expected a frame, got {other:?}"),
    };
    g.bench_function("laggard_transport_frame_reply_one_thread", |b| {
        b.iter(|| {
            let mut buf = near.lend(to_far, 64, deadline).unwrap();
            buf.fill(3);
            near.send(buf).unwrap();
            black_box(&*frame_from(&mut far_end));
            let mut buf = far_end.lend(to_near, 8, deadline).unwrap();
            buf.fill(1);
            far_end.send(buf).unwrap();
            black_box(&*frame_from(&mut near));
        })
    });
    // Again at the end: on this VM the two threads' placement can change
    // midway (the ping-pong then moves by 2-5x), and a run whose two
    // ping-pongs differ that much has no baseline for its ratios.
    pingpong(&mut g, "baseline_cacheline_pingpong_after");
    g.finish();
}

/// A criterion measurement whose values are multiples of a cache-line
/// ping-pong, for `shm_small_64B_paired`: each benchmark there returns its
/// time divided by the ping-pong's, measured right beside it (see
/// [`paired`]). Only `iter_custom` gives such values; `iter` cannot.
struct PingPongs;

impl Measurement for PingPongs {
    type Intermediate = ();
    type Value = f64;

    fn start(&self) {}

    fn end(&self, (): ()) -> f64 {
        panic!("PingPongs values come from iter_custom; b.iter has no ping-pong to divide by")
    }

    fn add(&self, a: &f64, b: &f64) -> f64 {
        a + b
    }

    fn zero(&self) -> f64 {
        0.0
    }

    fn to_f64(&self, value: &f64) -> f64 {
        *value
    }

    fn formatter(&self) -> &dyn ValueFormatter {
        &PingPongs
    }
}

impl ValueFormatter for PingPongs {
    fn scale_values(&self, _: f64, _: &mut [f64]) -> &'static str {
        "x ping-pong"
    }

    fn scale_throughputs(&self, _: f64, _: &Throughput, _: &mut [f64]) -> &'static str {
        "x ping-pong"
    }

    fn scale_for_machines(&self, _: &mut [f64]) -> &'static str {
        "x ping-pong"
    }
}

/// Rounds of the benchmarked exchange timed in one slice, and ping-pongs
/// timed beside each slice: a few milliseconds each, short next to how
/// often this VM's host moves its vCPUs.
const SLICE_ROUNDS: u64 = 2000;
const SLICE_PINGPONGS: u64 = 2000;

/// Rounds run before a slice is timed: a new thread may start on the busy
/// vCPU, fresh ring pages fault on first touch, and a new worker's pools
/// and caches fill.
const SLICE_WARM_UP: u64 = 3000;

/// The time of `n` calls of `round`, after `SLICE_WARM_UP` untimed ones.
fn timed_after_warm_up(n: u64, mut round: impl FnMut()) -> Duration {
    (0..SLICE_WARM_UP).for_each(|_| round());
    let start = Instant::now();
    (0..n).for_each(|_| round());
    start.elapsed()
}

/// The time of `rounds` cache-line ping-pongs with a new partner thread.
fn pingpong_slice(rounds: u64) -> Duration {
    let line = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let partner = pingpong_partner(line.clone(), stop.clone());
    let took = timed_after_warm_up(rounds, || pingpong_round(&line));
    stop.store(true, Ordering::Relaxed);
    partner.join().unwrap();
    took
}

/// `iters` rounds of an exchange in ping-pongs. `slice(n)` sets up the
/// exchange's threads, times `n` rounds (after `SLICE_WARM_UP` untimed
/// ones) and tears them down, so that no third thread spins meanwhile;
/// each slice is then divided by the mean of `SLICE_PINGPONGS` ping-pongs
/// timed right after it. On this VM the host moves the two vCPUs (most
/// likely between cores on different dies) more often than a run takes,
/// and a ping-pong measured at the start and end of a run does not tell
/// which placement each benchmark in between ran in; a slice of a few
/// milliseconds and the ping-pongs right after it mostly share one.
fn paired(iters: u64, mut slice: impl FnMut(u64) -> Duration) -> f64 {
    let mut left = iters;
    let mut multiples = 0.0;
    while left > 0 {
        let n = left.min(SLICE_ROUNDS);
        let took = slice(n).as_secs_f64();
        let pingpong = pingpong_slice(SLICE_PINGPONGS).as_secs_f64() / SLICE_PINGPONGS as f64;
        multiples += took / pingpong;
        left -= n;
    }
    multiples
}

/// The floor, the transport alone with the same frames, and the 64-byte
/// push + ack, in multiples of a ping-pong timed beside each slice of them.
fn small_paired(c: &mut Criterion<PingPongs>) {
    let mut g = c.benchmark_group("shm_small_64B_paired");
    g.bench_function("floor_bare_ring_exchange", |b| {
        b.iter_custom(|iters| {
            paired(iters, |n| {
                let mut exchange = BareExchange::start(136, 32);
                let took = timed_after_warm_up(n, || exchange.round());
                exchange.finish();
                took
            })
        })
    });
    let busy = ShmConfig::default().busy_poll(true).ring_bytes(1 << 20);
    let mut slices = 0u64;
    g.bench_function("laggard_transport_push_ack_frames_busy", |b| {
        b.iter_custom(|iters| {
            paired(iters, |n| {
                slices += 1;
                let shm = net(&format!("paired{slices}_"), busy.clone());
                let (echo, mut client, peer) = echo_server(&shm, "echo", 32, false);
                let deadline = far();
                let took = timed_after_warm_up(n, || echo_round(&mut client, peer, 136, deadline));
                drop(client);
                echo.join().unwrap();
                took
            })
        })
    });
    let spec = ClusterSpec::new(1, 1).table(
        "small",
        TableSpec::<f32>::dense(0..1, 16).consistency(Consistency::Async),
    );
    let delta = [0.5f32; 16];
    g.bench_function("laggard_push_ack_busy_poll", |b| {
        b.iter_custom(|iters| {
            paired(iters, |n| {
                slices += 1;
                let shm = net(&format!("paired{slices}_"), busy.clone());
                let (mut worker, serving) = cluster(&spec, &shm);
                let table = worker.table::<f32>("small").unwrap();
                let deadline = far();
                let took = timed_after_warm_up(n, || {
                    worker.push(&table, &[0], black_box(&delta)).unwrap();
                    let ticket = worker.flush().unwrap();
                    worker.wait_applied(&ticket, deadline).unwrap();
                });
                worker.leave().unwrap();
                serving.join().unwrap().unwrap();
                took
            })
        })
    });
    g.finish();
}

/// Runs `once` a few times before it is timed. Criterion's warm-up is
/// time-bound, and with 64 MiB rows it can end before every page of the
/// rings and row buffers was first touched: a fresh page costs the kernel
/// a fault and zeroing (tens of microseconds each on this VM when the
/// other vCPU is busy), which a long-running job pays once, not per push.
fn warm_up(once: &mut impl FnMut()) {
    for _ in 0..4 {
        once();
    }
}

fn large(c: &mut Criterion) {
    for mib in [4usize, 64] {
        let bytes = mib << 20;
        let len = bytes / 4;
        let mut g = c.benchmark_group(format!("shm_large_{mib}MiB"));
        g.throughput(Throughput::Bytes(bytes as u64));
        g.sample_size(10);

        let src = vec![7u8; bytes];
        let mut dst = vec![0u8; bytes];
        g.bench_function("baseline_memcpy", |b| {
            b.iter(|| {
                dst.copy_from_slice(black_box(&src));
                black_box(&mut dst);
            })
        });

        // The least any push can cost, without a transport or a protocol:
        // the delta written into memory the other core reads (a push is
        // applied only when flushed, so it must be stored first), then added
        // into the row by that core. Copying and adding run one after the
        // other, as a flushed push and its application must.
        let handoff = Arc::new(Handoff {
            delta: std::sync::Mutex::new(vec![0f32; len]),
            round: AtomicU64::new(0),
            applied: AtomicU64::new(0),
            stop: AtomicBool::new(false),
        });
        let applier = push_applier(handoff.clone(), len);
        let floor_delta = vec![0.25f32; len];
        let mut round = 0;
        let mut push_floor = || {
            handoff
                .delta
                .lock()
                .unwrap()
                .copy_from_slice(black_box(&floor_delta));
            round += 1;
            handoff.round.store(round, Ordering::Release);
            while handoff.applied.load(Ordering::Acquire) != round {
                std::hint::spin_loop();
            }
        };
        warm_up(&mut push_floor);
        g.bench_function("floor_push_handoff", |b| b.iter(&mut push_floor));
        handoff.stop.store(true, Ordering::Relaxed);
        applier.join().unwrap();

        // A push stream without a transport: the copy of one delta
        // overlaps the add of the one before, as pushes in flight let them.
        let pipeline = Pipeline::new(2, len);
        let applier = pipeline.clone().applier(len);
        // Every buffer touched before timing.
        pipeline.run(&floor_delta, 8);
        g.bench_function("model_push_stream", |b| {
            b.iter_custom(|iters| {
                let started = Instant::now();
                pipeline.run(&floor_delta, iters);
                started.elapsed()
            })
        });
        pipeline.stop.store(true, Ordering::Relaxed);
        applier.join().unwrap();

        let cfg = ShmConfig::default().ring_bytes(4 * bytes as u64);
        let shm = net(&format!("big{mib}"), cfg.clone());
        let (echo, mut client, peer) = echo_server(&shm, "echo", 8, true);
        let mut in_out = || {
            let mut buf = client.lend(peer, bytes, far()).unwrap();
            buf.copy_from_slice(black_box(&src));
            client.send(buf).unwrap();
            loop {
                if let Some(Event::Frame(..)) = client.recv(far()).unwrap() {
                    break;
                }
            }
        };
        warm_up(&mut in_out);
        g.bench_function("laggard_transport_in_out", |b| b.iter(&mut in_out));
        drop(client);
        echo.join().unwrap();

        // Pushes go to an Async table; pulls read a BSP one, where each
        // clock makes the cached row stale so the pull fetches it again
        // (into the cached row's buffer, as in training).
        let spec = ClusterSpec::new(1, 1)
            .table(
                "row",
                TableSpec::<f32>::dense(0..1, len).consistency(Consistency::Async),
            )
            .table(
                "pulled",
                TableSpec::<f32>::dense(0..1, len).consistency(Consistency::Bsp),
            );
        let shm = net(&format!("row{mib}"), cfg);
        let (mut worker, serving) = cluster(&spec, &shm);
        let table = worker.table::<f32>("row").unwrap();
        let pulled = worker.table::<f32>("pulled").unwrap();
        let delta = vec![0.25f32; len];
        let mut row = vec![0f32; len];
        let push_applied = |worker: &mut Worker<ShmEndpoint>| {
            worker.push(&table, &[0], black_box(&delta)).unwrap();
            let ticket = worker.flush().unwrap();
            worker.wait_applied(&ticket, far()).unwrap();
        };
        warm_up(&mut || push_applied(&mut worker));
        g.bench_function("laggard_push_applied", |b| {
            b.iter(|| push_applied(&mut worker))
        });
        // Deep enough to fill the ring, so every page of it was touched.
        warm_up(&mut || {
            push_stream(&mut worker, &table, 0, &delta, 8);
        });
        // Push bandwidth: pushes back to back, each ending its clock and
        // none waited for, until the server applied all of them. The
        // worker writes the next push while the server applies the last.
        g.bench_function("laggard_push_stream", |b| {
            b.iter_custom(|iters| push_stream(&mut worker, &table, 0, &delta, iters))
        });
        let mut pull = |worker: &mut Worker<ShmEndpoint>| {
            worker.clock().unwrap();
            worker.pull(&pulled, &[0], &mut row).unwrap();
            black_box(&mut row);
        };
        warm_up(&mut || pull(&mut worker));
        g.bench_function("laggard_pull", |b| b.iter(|| pull(&mut worker)));
        // The same pull read in place in the worker's cache (`pull_with`):
        // no copy into a caller's buffer.
        let pull_with = |worker: &mut Worker<ShmEndpoint>| {
            worker.clock().unwrap();
            let at = worker.pull_with(&pulled, 0, |row| row.as_ptr()).unwrap();
            black_box(at);
        };
        g.bench_function("laggard_pull_with", |b| b.iter(|| pull_with(&mut worker)));
        g.finish();
        worker.leave().unwrap();
        serving.join().unwrap().unwrap();
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default().warm_up_time(Duration::from_millis(300)).measurement_time(Duration::from_secs(2));
    targets = small, large
}
criterion_group! {
    name = paired_benches;
    config = Criterion::default()
        .with_measurement(PingPongs)
        // Each sample sets up its threads anew (see `paired`): fewer,
        // longer samples.
        .sample_size(10)
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(2));
    targets = small_paired
}
criterion_main!(benches, paired_benches);
