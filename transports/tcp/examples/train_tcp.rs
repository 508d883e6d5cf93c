//! Training with stragglers over TCP: the same logistic regression as the
//! in-process demo, but every server shard and every worker is a process
//! of its own, assembled by the bootstrap from the launcher's environment.
//!
//! Run it under the bundled launcher (one host), or under torchrun, Slurm
//! or Open MPI (see the README):
//!
//! ```text
//! cargo build --release -p laggard-tcp --example train_tcp --bin laggard-launch
//! target/release/laggard-launch --servers 2 --workers 4 -- \
//!     target/release/examples/train_tcp [--consistency bsp|ssp:3|async] [--clocks 150]
//!     [--compute-ms 2] [--straggle-prob 0.5] [--straggle-ms 20] [--dead-after-ms 3000]
//! ```
//!
//! On each clock one worker (drawn at random, the same draw in every
//! process) straggles with probability `--straggle-prob`. Each worker
//! prints its progress; worker 0 prints the final loss of the weights it
//! pulls at the end. Each server prints what it applied and which workers,
//! if any, it declared dead.

use std::time::Duration;

use laggard::{ClusterSpec, Consistency, Sgd, TableSpec, WorkerStatus};
use laggard_tcp::{Bootstrap, Role};

#[path = "../../../examples/common/logreg.rs"]
mod logreg;
#[path = "../../../examples/common/worker.rs"]
mod worker;

use logreg::{ROW_WIDTH, ROWS};
use worker::{Schedule, parse_consistency};

struct Config {
    consistency: Consistency,
    schedule: Schedule,
    dead_after: Duration,
}

fn parse_args() -> Result<Config, String> {
    let mut c = Config {
        consistency: Consistency::Ssp { staleness: 3 },
        schedule: Schedule::default(),
        dead_after: Duration::from_secs(3),
    };
    let args: Vec<String> = std::env::args().skip(1).collect();
    for pair in args.chunks(2) {
        let flag = pair[0].as_str();
        let value = pair.get(1).ok_or(format!("{flag} needs a value"))?;
        match flag {
            "--consistency" => c.consistency = parse_consistency(value)?,
            "--dead-after-ms" => {
                let ms: f64 = value.parse().map_err(|e| format!("{flag} {value}: {e}"))?;
                c.dead_after = Duration::from_secs_f64(ms / 1e3);
            }
            _ if c.schedule.parse_flag(flag, value)? => {}
            other => return Err(format!("unknown flag {other}")),
        }
    }
    Ok(c)
}

fn main() {
    let cfg = match parse_args() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("train_tcp: {e}");
            std::process::exit(2);
        }
    };
    if let Err(e) = run(&cfg) {
        eprintln!("train_tcp: {e}");
        std::process::exit(1);
    }
}

fn run(cfg: &Config) -> laggard::Result<()> {
    let boot = Bootstrap::from_env()?;
    let workers = boot.workers() as u32;
    let spec = ClusterSpec::new(boot.servers(), boot.workers())
        .table(
            "weights",
            TableSpec::<f32>::dense(0..ROWS, ROW_WIDTH)
                .update(Sgd::new(0.5))
                .consistency(cfg.consistency),
        )
        .dead_after(cfg.dead_after);
    let node = boot.join(&spec)?;
    match node.role() {
        Role::Server(shard) => {
            let report = node.run_server()?;
            let dead: Vec<String> = report
                .clocks
                .iter()
                .filter(|&(_, _, status)| status == WorkerStatus::Dead)
                .map(|(w, c, _)| format!("worker {} (at clock {c})", w.0))
                .collect();
            println!(
                "server shard {shard}: {} pushes applied, {} pulls ({} waited for slower workers)",
                report.stats.pushes, report.stats.pulls, report.stats.pulls_parked
            );
            if !dead.is_empty() {
                println!(
                    "server shard {shard}: declared dead after {:?} without a connection: {}",
                    cfg.dead_after,
                    dead.join(", ")
                );
            }
        }
        Role::Worker(id) => {
            let mut worker = node.worker()?;
            worker::train(&mut worker, id.0, workers, cfg.consistency, &cfg.schedule)?;
            let stats = worker.leave()?;
            println!(
                "worker {}: {} messages, {} pulls sent, {} reconnects",
                id.0, stats.messages_sent, stats.pull_messages, stats.reconnects
            );
        }
    }
    Ok(())
}
