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
//!     [--checkpoint DIR [--checkpoint-every CLOCKS]] [--resume DIR] [--crash-at CLOCK]
//! ```
//!
//! On each clock one worker (drawn at random, the same draw in every
//! process) straggles with probability `--straggle-prob`. Each worker
//! prints its progress; worker 0 prints the final loss of the weights it
//! pulls at the end. Each server prints what it applied and which workers,
//! if any, it declared dead.
//!
//! With `--checkpoint DIR`, each server shard saves its part of the
//! weights (values and optimizer state) to
//! `DIR/weights.SHARD-of-SHARDS.clock-CLOCK` once the workers are done,
//! and with `--checkpoint-every N` also each time the slowest worker
//! reaches a multiple of N clocks (from the server's clock hook, so each
//! is one snapshot of the shard; a crash loses at most N clocks). Each
//! shard keeps its two latest files. With `--resume DIR`, each server
//! shard picks the latest clock for which `DIR` holds every shard's file
//! (the shards of a killed job may have saved different clocks last) and
//! all of them verify (a file damaged on disk sends it back to the clock
//! before, saying so), loads all of them, keeping the rows it owns (so a run may resume on
//! another number of server shards), and starts the workers at that
//! clock: they go on from there to `--clocks`.
//!
//! With `--crash-at CLOCK`, the last worker's process exits without
//! leaving when it reaches CLOCK (once its pushes were applied), for
//! trying what happens then: under
//! `laggard-launch --restarts 1` the launcher starts that rank again, and
//! the new process takes the worker's place at its clock and finishes.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::time::Duration;

use laggard::checkpoint::{self, Foreign};
use laggard::{ClusterSpec, Consistency, Error, Sgd, Table, TableSpec, WorkerStatus};
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
    checkpoint: Option<PathBuf>,
    checkpoint_every: Option<u64>,
    resume: Option<PathBuf>,
    crash_at: Option<u64>,
}

fn parse_args() -> Result<Config, String> {
    let mut c = Config {
        consistency: Consistency::Ssp { staleness: 3 },
        schedule: Schedule::default(),
        dead_after: Duration::from_secs(3),
        checkpoint: None,
        checkpoint_every: None,
        resume: None,
        crash_at: None,
    };
    let args: Vec<String> = std::env::args().skip(1).collect();
    for pair in args.chunks(2) {
        let flag = pair[0].as_str();
        let value = pair.get(1).ok_or(format!("{flag} needs a value"))?;
        match flag {
            "--consistency" => c.consistency = parse_consistency(value)?,
            "--dead-after-ms" => {
                c.dead_after = worker::millis(flag, value)?;
            }
            "--checkpoint" => c.checkpoint = Some(value.into()),
            "--checkpoint-every" => {
                let n = value.parse().map_err(|e| format!("{flag} {value}: {e}"))?;
                c.checkpoint_every = Some(n);
            }
            "--resume" => c.resume = Some(value.into()),
            "--crash-at" => {
                let at = value
                    .parse()
                    .map_err(|e| format!("--crash-at {value}: {e}"))?;
                c.crash_at = Some(at);
            }
            _ if c.schedule.parse_flag(flag, value)? => {}
            other => return Err(format!("unknown flag {other}")),
        }
    }
    if c.checkpoint_every.is_some() && c.checkpoint.is_none() {
        return Err("--checkpoint-every needs --checkpoint DIR".into());
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
            let mut server = node.server()?;
            let weights = server.table::<f32>("weights")?;
            if let Some(dir) = &cfg.resume {
                let (rows, clock, passed_over) = resume(&weights, dir)?;
                for why in passed_over {
                    eprintln!("server shard {shard}: passed over the checkpoint of {why}");
                }
                server.start_at(clock)?;
                println!(
                    "server shard {shard}: resumed {rows} rows from {} at clock {clock}",
                    dir.display()
                );
            }
            let saving = cfg.checkpoint.as_ref().map(|dir| Saving {
                dir: dir.clone(),
                shard,
                shards: spec.servers(),
            });
            if let (Some(every), Some(saving)) = (cfg.checkpoint_every, &saving) {
                let (weights, saving) = (weights.clone(), saving.clone());
                server.on_clock(every, move |clock| {
                    let (saved, _) = saving.save(&weights, clock)?;
                    println!(
                        "server shard {shard}: clock {clock}: saved {} rows",
                        saved.rows
                    );
                    Ok(())
                })?;
            }
            let report = server.run_until_workers_done()?;
            if let Some(saving) = &saving {
                // Every worker left at its last clock, or was declared
                // dead (and holds no one back, as in the clock hook): a
                // job resumed from here starts at the earliest of the rest.
                let clock = report
                    .clocks
                    .iter()
                    .filter(|&(_, _, status)| status != WorkerStatus::Dead)
                    .map(|(_, clock, _)| clock)
                    .min()
                    .unwrap_or(0);
                let (saved, file) = saving.save(&weights, clock)?;
                println!(
                    "server shard {shard}: saved {} rows ({} bytes) to {}",
                    saved.rows,
                    saved.bytes,
                    file.display()
                );
            }
            let dead = worker::declared_dead(&report.clocks);
            println!(
                "server shard {shard}: {} pushes applied, {} pulls ({} waited for slower workers)",
                report.stats.pushes, report.stats.pulls, report.stats.pulls_parked
            );
            if report.stats.pushes_held > 0 {
                println!(
                    "server shard {shard}: {} pushes of faster workers held back until a \
                     checkpoint was taken",
                    report.stats.pushes_held
                );
            }
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
            worker::train_or_crash(
                &mut worker,
                id.0,
                workers,
                cfg.consistency,
                &cfg.schedule,
                cfg.crash_at,
            )?;
            let stats = worker.leave()?;
            println!(
                "worker {}: {} messages, {} pulls sent, {} reconnects",
                id.0, stats.messages_sent, stats.pull_messages, stats.reconnects
            );
        }
    }
    Ok(())
}

/// Every clock for which `dir` holds a checkpoint file of every shard of
/// the run that saved them (`weights.SHARD-of-SHARDS.clock-CLOCK`), the
/// latest first, with those files. Files a save did not finish
/// (`.partial`) are left out.
fn complete_checkpoints(dir: &Path) -> laggard::Result<Vec<(u64, Vec<PathBuf>)>> {
    // (shards, clock) -> the files of that clock, by shard.
    let mut found: BTreeMap<(usize, u64), BTreeMap<usize, PathBuf>> = BTreeMap::new();
    for entry in std::fs::read_dir(dir).map_err(|e| io_error("cannot list", dir, e))? {
        let path = entry.map_err(|e| io_error("cannot list", dir, e))?.path();
        if let Some((shard, shards, clock)) = path.file_name().and_then(|n| parse_name(n.to_str()?))
        {
            found
                .entry((shards, clock))
                .or_default()
                .insert(shard, path);
        }
    }
    let mut complete: Vec<(u64, Vec<PathBuf>)> = found
        .into_iter()
        .filter(|((shards, _), files)| files.len() == *shards)
        .map(|((_, clock), files)| (clock, files.into_values().collect()))
        .collect();
    if complete.is_empty() {
        return Err(Error::Checkpoint {
            reason: format!(
                "{} holds no complete checkpoint: no clock has a `weights.SHARD-of-SHARDS.clock-CLOCK` \
                 file of every shard",
                dir.display()
            ),
        });
    }
    complete.sort_by_key(|(clock, _)| std::cmp::Reverse(*clock));
    Ok(complete)
}

/// `(shard, shards, clock)` of a file named `weights.SHARD-of-SHARDS.clock-CLOCK`.
fn parse_name(name: &str) -> Option<(usize, usize, u64)> {
    let (shards, clock) = name.strip_prefix("weights.")?.split_once(".clock-")?;
    let (shard, shards) = shards.split_once("-of-")?;
    let (shard, shards) = (shard.parse().ok()?, shards.parse().ok()?);
    (shard < shards).then_some((shard, shards, clock.parse().ok()?))
}

/// Loads the latest complete checkpoint in `dir` whose files all verify
/// into this shard's part, keeping the rows it owns; returns how many rows
/// it restored, the clock, and why each later checkpoint was passed over
/// (a file damaged on disk, say: each shard keeps two, for this). Every
/// file is verified (and must say it was taken at that clock) before any
/// is loaded, so a bad one changes no row; every shard reads the same
/// files, so all of them pick the same clock.
fn resume(weights: &Table<f32>, dir: &Path) -> laggard::Result<(u64, u64, Vec<String>)> {
    let open = |path: &Path| File::open(path).map_err(|e| io_error("cannot open", path, e));
    let verify = |clock: u64, files: &[PathBuf]| -> laggard::Result<()> {
        for path in files {
            let verified = checkpoint::verify(weights, open(path)?).map_err(|e| named(path, e))?;
            if verified.clock != clock {
                return Err(Error::Checkpoint {
                    reason: format!(
                        "{} says it was taken at clock {}, its name at clock {clock}",
                        path.display(),
                        verified.clock
                    ),
                });
            }
        }
        Ok(())
    };
    let mut passed_over = Vec::new();
    let mut chosen = None;
    for (clock, files) in complete_checkpoints(dir)? {
        match verify(clock, &files) {
            Ok(()) => {
                chosen = Some((clock, files));
                break;
            }
            Err(e) => passed_over.push(format!("clock {clock}: {e}")),
        }
    }
    let Some((clock, files)) = chosen else {
        return Err(Error::Checkpoint {
            reason: format!(
                "no complete checkpoint in {} verifies: {}",
                dir.display(),
                passed_over.join("; ")
            ),
        });
    };
    let mut restored = 0;
    for path in &files {
        let loaded =
            checkpoint::load(weights, open(path)?, Foreign::Skip).map_err(|e| named(path, e))?;
        restored += loaded.restored;
    }
    Ok((restored, clock, passed_over))
}

/// A checkpoint error with the file it is about.
fn named(path: &Path, e: Error) -> Error {
    match e {
        Error::Checkpoint { reason } => Error::Checkpoint {
            reason: format!("{}: {reason}", path.display()),
        },
        other => other,
    }
}

/// Where and as which shard a server saves its checkpoints.
#[derive(Clone)]
struct Saving {
    dir: PathBuf,
    shard: usize,
    shards: usize,
}

impl Saving {
    /// Saves the shard's part of the weights, taken at `clock`, to
    /// `weights.SHARD-of-SHARDS.clock-CLOCK` in the directory, replacing a
    /// file there only once the new one is whole (written to
    /// `FILE.partial`, synced, and renamed over it); then removes this
    /// shard's files but the two latest, so that a job killed while its
    /// shards saved still finds a clock every shard saved.
    fn save(
        &self,
        weights: &Table<f32>,
        clock: u64,
    ) -> laggard::Result<(checkpoint::Saved, PathBuf)> {
        let dir = &self.dir;
        std::fs::create_dir_all(dir).map_err(|e| io_error("cannot create", dir, e))?;
        let prefix = format!("weights.{}-of-{}.clock-", self.shard, self.shards);
        let file = dir.join(format!("{prefix}{clock}"));
        let partial = dir.join(format!("{prefix}{clock}.partial"));
        let mut out = File::create(&partial).map_err(|e| io_error("cannot create", &partial, e))?;
        let saved = checkpoint::save_at(weights, clock, &mut out)?;
        out.sync_all()
            .map_err(|e| io_error("cannot sync", &partial, e))?;
        std::fs::rename(&partial, &file).map_err(|e| io_error("cannot rename", &partial, e))?;
        let mut mine = Vec::new();
        for entry in std::fs::read_dir(dir).map_err(|e| io_error("cannot list", dir, e))? {
            let path = entry.map_err(|e| io_error("cannot list", dir, e))?.path();
            let name = path
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(parse_name);
            if let Some((shard, shards, at)) = name {
                if (shard, shards) == (self.shard, self.shards) {
                    mine.push((at, path));
                }
            }
        }
        mine.sort();
        for (_, old) in mine.iter().rev().skip(2) {
            std::fs::remove_file(old).map_err(|e| io_error("cannot remove", old, e))?;
        }
        Ok((saved, file))
    }
}

fn io_error(what: &str, path: &Path, e: std::io::Error) -> Error {
    Error::Checkpoint {
        reason: format!("{what} {}: {e}", path.display()),
    }
}
