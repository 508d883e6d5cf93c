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
use std::time::{Duration, Instant};

use laggard::ClusterSpec;
use laggard::transport::Transport;
use laggard_rdma::{RdmaConfig, RdmaTransport};

#[path = "../../../examples/common/launch.rs"]
mod launch;
#[path = "../../../examples/common/logreg.rs"]
mod logreg;
#[path = "../../../examples/common/worker.rs"]
mod worker;

use launch::{Common, Role};

const ROLE: &str = "LAGGARD_RDMA_ROLE";

/// The flags of this demo beyond the common ones.
struct Config {
    common: Common,
    here: String,
    server_ip: IpAddr,
    base_port: u16,
}

fn parse_args() -> Result<Config, String> {
    let mut here = "all".to_owned();
    let mut server_ip = IpAddr::from([127, 0, 0, 1]);
    let mut base_port = 7400;
    let common = Common::parse(|flag, value| {
        let bad = |e: &dyn std::fmt::Display| format!("{flag} {value}: {e}");
        match flag {
            "--here" if ["all", "servers", "workers"].contains(&value) => here = value.to_owned(),
            "--here" => return Err(bad(&"expected all, servers or workers")),
            "--server-ip" => server_ip = value.parse().map_err(|e| bad(&e))?,
            "--base-port" => base_port = value.parse().map_err(|e| bad(&e))?,
            _ => return Ok(false),
        }
        Ok(true)
    })?;
    Ok(Config {
        common,
        here,
        server_ip,
        base_port,
    })
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

/// The network as every process sees it: server shard `i` at
/// `server_ip:base_port + i`.
fn transport(cfg: &Config, spec: &ClusterSpec) -> laggard::Result<RdmaTransport> {
    let rdma = RdmaConfig::default().busy_poll(cfg.common.busy_poll);
    let net = RdmaTransport::with_config(rdma)?;
    for i in 0..cfg.common.servers {
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
    let (servers, workers) = cfg.common.roles();
    let mut roles = Vec::new();
    if cfg.here != "workers" {
        roles.extend(servers);
    }
    if cfg.here != "servers" {
        roles.extend(workers);
    }
    println!(
        "launcher: {} processes here ({}) of {} servers and {} workers over RDMA, {}",
        roles.len(),
        cfg.here,
        cfg.common.servers,
        cfg.common.workers,
        cfg.common.consistency
    );
    launch::run_roles(ROLE, &[], roles)?;
    println!("launcher: every process finished and released its registrations");
    Ok(())
}

fn run_role(cfg: &Config, role: &str) -> laggard::Result<()> {
    let spec = cfg
        .common
        .spec()
        .dead_after(Duration::from_secs(5))
        .timeout(Duration::from_secs(120));
    let net = transport(cfg, &spec)?;
    match Role::parse(role)? {
        Role::Server(shard) => launch::serve(
            net.bind(&spec.server_name(shard))?,
            &cfg.common,
            &spec,
            shard,
        )?,
        Role::Worker(id) => {
            let ep = net.bind(&spec.worker_name(id as usize))?;
            let deadline = Instant::now() + Duration::from_secs(60);
            launch::train(ep, &cfg.common, &spec, id, deadline)?;
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
