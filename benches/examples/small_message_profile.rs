//! The 64-byte push-and-acknowledge round trip of `benches/benches/shm.rs`
//! (`shm_small_64B/laggard_push_ack_busy_poll`) as a plain program, to run
//! under `valgrind --tool=callgrind`. Instruction counts per call are the
//! same from run to run on a VM whose timings are not, so they show where a
//! small message's time goes, and whether a change made it cheaper, when
//! criterion's figures are lost in the noise. `benches/README.md` gives the
//! counts and how to read them.
//!
//! ```text
//! cargo run --release -p laggard-benches --example small_message_profile -- [ROUND_TRIPS] [IDLE_WORKERS]
//! ```

use std::time::{Duration, Instant};

use laggard::transport::Transport;
use laggard::{ClusterSpec, Consistency, Server, TableSpec, Worker, WorkerId};
use laggard_shm::{ShmConfig, ShmTransport};

fn arg(i: usize, default: usize) -> usize {
    std::env::args().nth(i).map_or(default, |s| {
        s.parse()
            .unwrap_or_else(|_| panic!("argument {i} must be a count, not {s:?}"))
    })
}

fn main() {
    let round_trips = arg(1, 100_000).max(1);
    let idle = arg(2, 0);
    let cfg = ShmConfig::default().busy_poll(true).ring_bytes(1 << 20);
    let shm = ShmTransport::with_config(&format!("profile{}", std::process::id()), cfg)
        .expect("a shared-memory network");
    let spec = ClusterSpec::new(1, 1 + idle).table(
        "small",
        TableSpec::<f32>::dense(0..1, 16).consistency(Consistency::Async),
    );
    let server = Server::new(shm.bind(&spec.server_name(0)).unwrap(), &spec, 0).unwrap();
    let serving = std::thread::spawn(move || server.run_until_workers_done());
    let deadline = Instant::now() + Duration::from_secs(3600);
    let connect = |w: usize| {
        let ep = shm.bind(&spec.worker_name(w)).unwrap();
        Worker::connect(ep, &spec, WorkerId(w as u32), deadline).unwrap()
    };
    let mut worker = connect(0);
    // Connected and quiet: the server still looks at their connections.
    let idlers: Vec<_> = (1..=idle).map(connect).collect();
    let table = worker.table::<f32>("small").unwrap();
    let delta = [0.5f32; 16];
    let started = Instant::now();
    for _ in 0..round_trips {
        worker.push(&table, &[0], &delta).unwrap();
        let ticket = worker.flush().unwrap();
        worker.wait_applied(&ticket, deadline).unwrap();
    }
    let each = started.elapsed() / round_trips as u32;
    println!("{round_trips} round trips with {idle} idle workers: {each:?} each");
    worker.leave().unwrap();
    for idler in idlers {
        idler.leave().unwrap();
    }
    serving.join().unwrap().unwrap();
}
