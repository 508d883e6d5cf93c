//! Training with stragglers over RDMA verbs: the same logistic regression
//! as the in-process demo, with every server shard and every worker a
//! process of its own, on one host or split across two.
//!
//! ```text
//! train_rdma [--servers 1] [--workers 4] [--consistency bsp|ssp:3|async]
//!            [--clocks 150] [--compute-ms 2] [--straggle-prob 0.5] [--straggle-ms 20]
//!            [--here all|servers|workers] [--server-ip 127.0.0.1] [--base-port 7400]
//!            [--busy-poll]
//! ```
//!
//! This program starts (re-running itself) the roles `--here` names:
//! every process by default, or only the servers or only the workers, so
//! that one host can run the servers and another the workers. Server shard
//! `i` listens for the side channel on `--server-ip`, port
//! `--base-port + i`; workers reach the servers there. Each process checks
//! at the end that it released every RDMA registration.

use std::net::{IpAddr, SocketAddr};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use laggard::transport::Transport;
use laggard::{ClusterSpec, Consistency, Server, Sgd, TableSpec, Worker, WorkerId};
use laggard_rdma::{RdmaConfig, RdmaTransport};

#[path = "../../../examples/common/logreg.rs"]
mod logreg;
#[path = "../../../examples/common/worker.rs"]
mod worker;

use logreg::{ROW_WIDTH, ROWS};
use worker::{Schedule, parse_consistency};

const ROLE: &str = "LAGGARD_RDMA_ROLE";

struct Config {
    servers: usize,
    workers: usize,
    consistency: Consistency,
    schedule: Schedule,
    here: String,
    server_ip: IpAddr,
    base_port: u16,
    busy_poll: bool,
}

fn parse_args() -> Result<Config, String> {
    let mut c = Config {
        servers: 1,
        workers: 4,
        consistency: Consistency::Ssp { staleness: 3 },
        schedule: Schedule::default(),
        here: "all".into(),
        server_ip: IpAddr::from([127, 0, 0, 1]),
        base_port: 7400,
        busy_poll: false,
    };
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        if flag == "--busy-poll" {
            c.busy_poll = true;
            continue;
        }
        let value = args.next().ok_or(format!("{flag} needs a value"))?;
        let bad = |e: &dyn std::fmt::Display| format!("{flag} {value}: {e}");
        match flag.as_str() {
            "--servers" => c.servers = value.parse().map_err(|e| bad(&e))?,
            "--workers" => c.workers = value.parse().map_err(|e| bad(&e))?,
            "--consistency" => c.consistency = parse_consistency(&value)?,
            "--here" if ["all", "servers", "workers"].contains(&value.as_str()) => c.here = value,
            "--here" => return Err(bad(&"expected all, servers or workers")),
            "--server-ip" => c.server_ip = value.parse().map_err(|e| bad(&e))?,
            "--base-port" => c.base_port = value.parse().map_err(|e| bad(&e))?,
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
            eprintln!("train_rdma: {e}");
            std::process::exit(2);
        }
    };
    let result = match std::env::var(ROLE) {
        Ok(role) => run_role(&cfg, &role).map_err(|e| e.to_string()),
        Err(_) => launch(&cfg),
    };
    if let Err(e) = result {
        eprintln!("train_rdma: {e}");
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
        .dead_after(Duration::from_secs(5))
        .timeout(Duration::from_secs(120))
}

/// The network as every process sees it: server shard `i` at
/// `server_ip:base_port + i`.
fn transport(cfg: &Config, spec: &ClusterSpec) -> laggard::Result<RdmaTransport> {
    let rdma = RdmaConfig::default().busy_poll(cfg.busy_poll);
    let net = RdmaTransport::with_config(rdma)?;
    for i in 0..cfg.servers {
        let port =
            cfg.base_port
                .checked_add(i as u16)
                .ok_or_else(|| laggard::Error::InvalidConfig {
                    what: "--base-port",
                    reason: "too high for this many servers".into(),
                })?;
        net.set_address(&spec.server_name(i), SocketAddr::new(cfg.server_ip, port));
    }
    Ok(net)
}

/// Starts one process per role run here and waits for all of them.
fn launch(cfg: &Config) -> Result<(), String> {
    match laggard_rdma::preflight(&RdmaConfig::default()) {
        Ok(info) => println!("launcher: RDMA device {info}"),
        Err(e) => return Err(e.to_string()),
    }
    let me = std::env::current_exe().map_err(|e| e.to_string())?;
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut roles = Vec::new();
    if cfg.here != "workers" {
        roles.extend((0..cfg.servers).map(|s| format!("server:{s}")));
    }
    if cfg.here != "servers" {
        roles.extend((0..cfg.workers).map(|w| format!("worker:{w}")));
    }
    println!(
        "launcher: {} processes here ({}) of {} servers and {} workers over RDMA, {}",
        roles.len(),
        cfg.here,
        cfg.servers,
        cfg.workers,
        cfg.consistency
    );
    let children: Vec<(String, Child)> = roles
        .into_iter()
        .map(|role| {
            let child = Command::new(&me)
                .args(&args)
                .env(ROLE, &role)
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
    println!("launcher: every process finished and released its registrations");
    Ok(())
}

fn run_role(cfg: &Config, role: &str) -> laggard::Result<()> {
    let spec = spec(cfg);
    let net = transport(cfg, &spec)?;
    match role.split_once(':') {
        Some(("server", shard)) => {
            let shard: usize = shard.parse().unwrap_or(usize::MAX);
            let ep = net.bind(&spec.server_name(shard))?;
            let report = Server::new(ep, &spec, shard)?.run_until_workers_done()?;
            println!(
                "server shard {shard}: {} pushes applied, {} pulls ({} waited for slower workers)",
                report.stats.pushes, report.stats.pulls, report.stats.pulls_parked
            );
        }
        Some(("worker", id)) => {
            let id: u32 = id.parse().unwrap_or(u32::MAX);
            let ep = net.bind(&spec.worker_name(id as usize))?;
            let deadline = Instant::now() + Duration::from_secs(60);
            let mut worker = Worker::connect(ep, &spec, WorkerId(id), deadline)?;
            worker::train(
                &mut worker,
                id,
                cfg.workers as u32,
                cfg.consistency,
                &cfg.schedule,
            )?;
            let stats = worker.leave()?;
            println!(
                "worker {id}: {} messages, {} pulls sent",
                stats.messages_sent, stats.pull_messages
            );
        }
        _ => {
            return Err(laggard::Error::InvalidConfig {
                what: "role",
                reason: format!("{role:?}: expected server:N or worker:N"),
            });
        }
    }
    let leaks = net.leaks();
    if !leaks.is_empty() {
        return Err(laggard::Error::Transport {
            reason: format!("{role} left behind: {leaks:?}"),
        });
    }
    Ok(())
}
