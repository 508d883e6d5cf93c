//! A worker's part in the multi-process demos (`train_tcp`, `train_shm`,
//! `train_rdma`): the same training loop and straggler schedule whatever
//! the transport.
//! Needs the `logreg` module at the crate root.

#![allow(dead_code)]

use std::time::{Duration, Instant};

use laggard::transport::Endpoint;
use laggard::{Consistency, VectorClock, Worker, WorkerStatus};

#[path = "args.rs"]
mod args;
pub use args::millis;

use crate::logreg::{self, FEATURES, ROWS, generate, loss, rand};

/// The straggler schedule and the run's length.
#[derive(Debug, Clone)]
pub struct Schedule {
    /// Clocks to run.
    pub clocks: u64,
    /// Compute time per clock.
    pub compute: Duration,
    /// Probability that some worker straggles on a clock.
    pub straggle_prob: f64,
    /// Extra time the straggler takes.
    pub straggle: Duration,
}

impl Default for Schedule {
    fn default() -> Self {
        Schedule {
            clocks: 150,
            compute: Duration::from_millis(2),
            straggle_prob: 0.5,
            straggle: Duration::from_millis(20),
        }
    }
}

impl Schedule {
    /// Applies `--clocks`, `--compute-ms`, `--straggle-prob` or
    /// `--straggle-ms`; `Ok(false)` if `flag` is none of them.
    pub fn parse_flag(&mut self, flag: &str, value: &str) -> Result<bool, String> {
        let num = || {
            value
                .parse::<f64>()
                .map_err(|e| format!("{flag} {value}: {e}"))
        };
        match flag {
            "--clocks" => self.clocks = num()? as u64,
            "--compute-ms" => self.compute = millis(flag, value)?,
            "--straggle-prob" => self.straggle_prob = num()?,
            "--straggle-ms" => self.straggle = millis(flag, value)?,
            _ => return Ok(false),
        }
        Ok(true)
    }
}

/// `bsp`, `ssp:N` or `async`.
pub fn parse_consistency(s: &str) -> Result<Consistency, String> {
    match s {
        "bsp" => Ok(Consistency::Bsp),
        "async" => Ok(Consistency::Async),
        s => match s.strip_prefix("ssp:").map(str::parse) {
            Some(Ok(staleness)) => Ok(Consistency::Ssp { staleness }),
            _ => Err(format!("--consistency {s}: use bsp, ssp:N or async")),
        },
    }
}

/// Trains worker `id` of `workers` on table "weights" for the schedule's
/// clocks; on each clock one worker (the same draw in every process)
/// straggles with the schedule's probability. Worker 0 finally prints the
/// loss of the weights it pulls from the servers.
pub fn train<E: Endpoint>(
    worker: &mut Worker<E>,
    id: u32,
    workers: u32,
    consistency: Consistency,
    s: &Schedule,
) -> laggard::Result<()> {
    let data = generate();
    let weights = worker.table::<f32>("weights")?;
    let keys: Vec<u64> = (0..ROWS).collect();
    let mut x = vec![0f32; FEATURES];
    let mut grad = vec![0f32; FEATURES];
    let start = Instant::now();
    // From the worker's clock: 0, or where the worker was if this process
    // took the place of one that died.
    for clock in worker.current_clock()..s.clocks {
        worker.pull(&weights, &keys, &mut x)?;
        logreg::gradient(&data, &x, id, workers, clock, &mut grad);
        let slow = rand(clock ^ 0x5eed) < s.straggle_prob
            && (rand(clock ^ 0xfeed) * f64::from(workers)) as u32 == id;
        std::thread::sleep(s.compute + if slow { s.straggle } else { Duration::ZERO });
        worker.push(&weights, &keys, &grad)?;
        worker.clock()?;
        if (clock + 1) % 25 == 0 {
            println!("worker {id}: clock {}  {:.2?}", clock + 1, start.elapsed());
        }
    }
    if id == 0 {
        worker.clear_cache();
        worker.pull(&weights, &keys, &mut x)?;
        println!(
            "worker 0: {consistency} after {} clocks in {:.2?}: loss {:.4}",
            s.clocks,
            start.elapsed(),
            loss(&data, &x)
        );
    }
    Ok(())
}

/// The exit code of a process that `--crash-at` stopped: a launcher that
/// restarts failed workers starts it again.
pub const CRASH_EXIT: i32 = 3;

/// How many times a launcher restarted this process (`LAGGARD_RESTART`;
/// 0 for the first process of a rank).
pub fn restarts() -> u64 {
    std::env::var("LAGGARD_RESTART")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// [`train`], for trying what happens when a worker's process dies: with
/// `crash_at`, the last worker's first process exits (with
/// [`CRASH_EXIT`], without leaving) once it reached that clock and its
/// pushes were applied. A process that starts past clock 0 says where:
/// a restart took the worker's place there, a first process joined a job
/// resumed from a checkpoint. Returns without leaving.
pub fn train_or_crash<E: Endpoint>(
    worker: &mut Worker<E>,
    id: u32,
    workers: u32,
    consistency: Consistency,
    s: &Schedule,
    crash_at: Option<u64>,
) -> laggard::Result<()> {
    let restarts = restarts();
    if let Some(at) = crash_at.filter(|_| id + 1 == workers && restarts == 0) {
        let first = Schedule {
            clocks: at.min(s.clocks),
            ..s.clone()
        };
        train(worker, id, workers, consistency, &first)?;
        // Once its pushes are in, so that the next process's clock is
        // `at` (without this, the last clock's may be lost).
        let ticket = worker.flush()?;
        worker.wait_applied(&ticket, Instant::now() + Duration::from_secs(30))?;
        eprintln!("worker {id}: exiting at clock {at} without leaving (--crash-at)");
        std::process::exit(CRASH_EXIT);
    }
    let clock = worker.current_clock();
    if restarts > 0 && id + 1 == workers {
        // It goes on where the last one stopped (or later, if that one
        // was declared dead meanwhile), never from further back.
        if let Some(at) = crash_at.filter(|&at| clock < at) {
            return Err(laggard::Error::Transport {
                reason: format!(
                    "worker {id} restarted at clock {clock}, not at {at} where its last \
                     process exited"
                ),
            });
        }
    }
    match clock {
        0 => {}
        _ if restarts > 0 => println!("worker {id}: took the worker's place at clock {clock}"),
        _ => println!("worker {id}: starts at clock {clock}, the checkpoint's"),
    }
    train(worker, id, workers, consistency, s)
}

/// The workers a server declared dead, each with its clock, for printing.
pub fn declared_dead(clocks: &VectorClock) -> Vec<String> {
    clocks
        .iter()
        .filter(|&(_, _, status)| status == WorkerStatus::Dead)
        .map(|(w, c, _)| format!("worker {} (at clock {c})", w.0))
        .collect()
}
