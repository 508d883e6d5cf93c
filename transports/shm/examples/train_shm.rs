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

use std::time::{Duration, Instant};

use laggard::transport::Transport;
use laggard_shm::{ShmConfig, ShmTransport};

#[path = "../../../examples/common/launch.rs"]
mod launch;
#[path = "../../../examples/common/logreg.rs"]
mod logreg;
#[path = "../../../examples/common/worker.rs"]
mod worker;

use launch::{Common, Role};

const ROLE: &str = "LAGGARD_SHM_ROLE";
const CLUSTER: &str = "LAGGARD_SHM_CLUSTER";

fn main() {
    let cfg = match Common::parse(|_, _| Ok(false)) {
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

fn transport(cfg: &Common, cluster: &str) -> laggard::Result<ShmTransport> {
    ShmTransport::with_config(cluster, ShmConfig::default().busy_poll(cfg.busy_poll))
}

/// Starts one process per server shard and worker, waits for all of them,
/// and checks that they left nothing behind.
fn launch(cfg: &Common) -> Result<(), String> {
    let cluster = format!("train{}", std::process::id());
    let net = transport(cfg, &cluster).map_err(|e| e.to_string())?;
    // Runs that crashed used cluster ids of their own (their launcher's
    // pid): what they left is removed whatever its cluster.
    say_removed(
        &net.remove_stale_of_every_cluster(),
        "stale",
        "of crashed runs",
    );
    println!(
        "launcher: {} server and {} worker processes over shared memory (cluster {cluster}), {}",
        cfg.servers, cfg.workers, cfg.consistency
    );
    let (servers, workers) = cfg.roles();
    let roles = servers.into_iter().chain(workers).collect();
    let ran = launch::run_roles(ROLE, &[(CLUSTER, &cluster)], roles);
    // Every process has ended: what one that was killed left is stale.
    say_removed(
        &net.remove_stale(),
        "",
        "that processes which did not finish left",
    );
    ran?;
    let left = net.segments();
    if !left.is_empty() {
        return Err(format!("segments left in /dev/shm: {left:?}"));
    }
    println!("launcher: every process finished; nothing left in /dev/shm");
    Ok(())
}

/// Says how many segments were removed (if any), as `removed N [kind]
/// segment(s) [whose]`.
fn say_removed(removed: &[std::path::PathBuf], kind: &str, whose: &str) {
    let n = removed.len();
    if n > 0 {
        let noun = if n == 1 { "segment" } else { "segments" };
        let kind = if kind.is_empty() {
            String::new()
        } else {
            format!("{kind} ")
        };
        println!("launcher: removed {n} {kind}{noun} {whose}");
    }
}

fn run_role(cfg: &Common, role: &str) -> laggard::Result<()> {
    let cluster = std::env::var(CLUSTER).unwrap_or_default();
    let net = transport(cfg, &cluster)?;
    let spec = cfg.spec().dead_after(Duration::from_secs(3));
    match Role::parse(role)? {
        Role::Server(shard) => {
            launch::serve(net.bind(&spec.server_name(shard))?, cfg, &spec, shard)
        }
        Role::Worker(id) => {
            let ep = net.bind(&spec.worker_name(id as usize))?;
            let deadline = Instant::now() + Duration::from_secs(30);
            launch::train(ep, cfg, &spec, id, deadline)
        }
    }
}
