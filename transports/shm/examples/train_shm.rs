//! Training with stragglers over shared memory: the same logistic
//! regression as the in-process demo, with every server shard and every
//! worker a process of its own on this host.
//!
//! One command starts them all (this program re-runs itself once per
//! role) and waits for them:
//!
//! ```text
//! cargo run --release -p laggard-shm --example train_shm -- \
//!     [--servers 1] [--workers 4] [--consistency bsp|ssp:3|async] [--clocks 150]
//!     [--compute-ms 2] [--straggle-prob 0.5] [--straggle-ms 20] [--busy-poll]
//! ```
//!
//! On each clock one worker (drawn at random, the same draw in every
//! process) straggles with probability `--straggle-prob`. Worker 0 prints
//! the final loss; each server prints what it applied. At the end the
//! launcher checks that nothing was left in `/dev/shm`.

use std::process::{Child, Command};
use std::time::{Duration, Instant};

use laggard::transport::Transport;
use laggard::{ClusterSpec, Consistency, Server, Sgd, TableSpec, Worker, WorkerId};
use laggard_shm::{ShmConfig, ShmTransport};

#[path = "../../../examples/common/logreg.rs"]
mod logreg;
#[path = "../../../examples/common/worker.rs"]
mod worker;

use logreg::{ROW_WIDTH, ROWS};
use worker::{Schedule, parse_consistency};

const ROLE: &str = "LAGGARD_SHM_ROLE";
const CLUSTER: &str = "LAGGARD_SHM_CLUSTER";

struct Config {
    servers: usize,
    workers: usize,
    consistency: Consistency,
    schedule: Schedule,
    busy_poll: bool,
}

fn parse_args() -> Result<Config, String> {
    let mut c = Config {
        servers: 1,
        workers: 4,
        consistency: Consistency::Ssp { staleness: 3 },
        schedule: Schedule::default(),
        busy_poll: false,
    };
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        if flag == "--busy-poll" {
            c.busy_poll = true;
            continue;
        }
        let value = args.next().ok_or(format!("{flag} needs a value"))?;
        let count = || {
            value
                .parse::<usize>()
                .map_err(|e| format!("{flag} {value}: {e}"))
        };
        match flag.as_str() {
            "--servers" => c.servers = count()?,
            "--workers" => c.workers = count()?,
            "--consistency" => c.consistency = parse_consistency(&value)?,
            _ if c.schedule.parse_flag(&flag, &value)? => {}
            other => return Err(format!("unknown flag {other}")),
        }
    }
    if c.servers == 0 || c.workers == 0 {
        return Err("--servers and --workers must be at least 1".into());
    }
    Ok(c)
}

fn main() {
    let cfg = match parse_args() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("train_shm: {e}");
            std::process::exit(2);
        }
    };
    let result = match std::env::var(ROLE) {
        Ok(role) => run_role(&cfg, &role).map_err(|e| e.to_string()),
        Err(_) => launch(&cfg),
    };
    if let Err(e) = result {
        eprintln!("train_shm: {e}");
        std::process::exit(1);
    }
}

fn spec(cfg: &Config) -> ClusterSpec {
    ClusterSpec::new(cfg.servers, cfg.workers)
        .table(
            "weights",
            TableSpec::<f32>::dense(0..ROWS, ROW_WIDTH)
                .update(Sgd::new(0.5))
                .consistency(cfg.consistency),
        )
        .dead_after(Duration::from_secs(3))
}

fn transport(cfg: &Config, cluster: &str) -> laggard::Result<ShmTransport> {
    ShmTransport::with_config(cluster, ShmConfig::default().busy_poll(cfg.busy_poll))
}

/// Starts one process per server shard and worker, waits for all of them,
/// and checks that they left nothing behind.
fn launch(cfg: &Config) -> Result<(), String> {
    let cluster = format!("train{}", std::process::id());
    let net = transport(cfg, &cluster).map_err(|e| e.to_string())?;
    let stale = net.remove_stale();
    if !stale.is_empty() {
        println!("launcher: removed {} stale segments", stale.len());
    }
    let me = std::env::current_exe().map_err(|e| e.to_string())?;
    let args: Vec<String> = std::env::args().skip(1).collect();
    let roles: Vec<String> = (0..cfg.servers)
        .map(|s| format!("server:{s}"))
        .chain((0..cfg.workers).map(|w| format!("worker:{w}")))
        .collect();
    println!(
        "launcher: {} server and {} worker processes over shared memory (cluster {cluster}), {}",
        cfg.servers, cfg.workers, cfg.consistency
    );
    let children: Vec<(String, Child)> = roles
        .into_iter()
        .map(|role| {
            let child = Command::new(&me)
                .args(&args)
                .env(ROLE, &role)
                .env(CLUSTER, &cluster)
                .spawn()
                .map_err(|e| format!("cannot start {role}: {e}"))?;
            Ok((role, child))
        })
        .collect::<Result<_, String>>()?;
    let mut failed = Vec::new();
    for (role, mut child) in children {
        match child.wait() {
            Ok(status) if status.success() => {}
            Ok(status) => failed.push(format!("{role} ({status})")),
            Err(e) => failed.push(format!("{role} ({e})")),
        }
    }
    if !failed.is_empty() {
        return Err(format!("failed: {}", failed.join(", ")));
    }
    let left = net.segments();
    if !left.is_empty() {
        return Err(format!("segments left in /dev/shm: {left:?}"));
    }
    println!("launcher: every process finished; nothing left in /dev/shm");
    Ok(())
}

fn run_role(cfg: &Config, role: &str) -> laggard::Result<()> {
    let cluster = std::env::var(CLUSTER).unwrap_or_default();
    let net = transport(cfg, &cluster)?;
    let spec = spec(cfg);
    match role.split_once(':') {
        Some(("server", shard)) => {
            let shard: usize = shard.parse().unwrap_or(usize::MAX);
            let ep = net.bind(&spec.server_name(shard))?;
            let report = Server::new(ep, &spec, shard)?.run_until_workers_done()?;
            println!(
                "server shard {shard}: {} pushes applied, {} pulls ({} waited for slower workers)",
                report.stats.pushes, report.stats.pulls, report.stats.pulls_parked
            );
            Ok(())
        }
        Some(("worker", id)) => {
            let id: u32 = id.parse().unwrap_or(u32::MAX);
            train(cfg, &net, &spec, id)
        }
        _ => Err(laggard::Error::InvalidConfig {
            what: "role",
            reason: format!("{role:?}: expected server:N or worker:N"),
        }),
    }
}

fn train(cfg: &Config, net: &ShmTransport, spec: &ClusterSpec, id: u32) -> laggard::Result<()> {
    let ep = net.bind(&spec.worker_name(id as usize))?;
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut worker = Worker::connect(ep, spec, WorkerId(id), deadline)?;
    let workers = cfg.workers as u32;
    worker::train(&mut worker, id, workers, cfg.consistency, &cfg.schedule)?;
    let stats = worker.leave()?;
    println!(
        "worker {id}: {} messages, {} pulls sent",
        stats.messages_sent, stats.pull_messages
    );
    Ok(())
}
