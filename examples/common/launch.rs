//! What the one-command multi-process demos (`train_shm`, `train_rdma`)
//! share: their common flags, starting one process per role (the program
//! re-runs itself with the role in the environment) and waiting for them,
//! and what a server or worker process does once it has its endpoint.
//! Needs the `logreg` and `worker` modules at the crate root.

#![allow(dead_code)]

use std::process::{Child, Command};
use std::time::Instant;

use laggard::transport::Endpoint;
use laggard::{ClusterSpec, Consistency, Server, Sgd, TableSpec, Worker, WorkerId};

use crate::logreg::{ROW_WIDTH, ROWS};
use crate::worker::{self, Schedule, parse_consistency};

/// The flags every launcher takes.
#[derive(Debug, Clone)]
pub struct Common {
    pub servers: usize,
    pub workers: usize,
    pub consistency: Consistency,
    pub schedule: Schedule,
    pub busy_poll: bool,
    /// `--crash-at CLOCK`: the last worker's first process exits at that
    /// clock, and the launcher starts it again, once.
    pub crash_at: Option<u64>,
}

impl Common {
    /// Parses the command line: `--servers`, `--workers`, `--consistency`,
    /// the schedule's flags and `--busy-poll`, and whatever `extra`
    /// accepts (`Ok(false)` for a flag it does not know).
    pub fn parse(
        mut extra: impl FnMut(&str, &str) -> Result<bool, String>,
    ) -> Result<Common, String> {
        let mut c = Common {
            servers: 1,
            workers: 4,
            consistency: Consistency::Ssp { staleness: 3 },
            schedule: Schedule::default(),
            busy_poll: false,
            crash_at: None,
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
                "--crash-at" => {
                    let at = value.parse().map_err(|e| format!("{flag} {value}: {e}"))?;
                    c.crash_at = Some(at);
                }
                _ if c.schedule.parse_flag(&flag, &value)? => {}
                _ if extra(&flag, &value)? => {}
                other => return Err(format!("unknown flag {other}")),
            }
        }
        if c.servers == 0 || c.workers == 0 {
            return Err("--servers and --workers must be at least 1".into());
        }
        Ok(c)
    }

    /// The demo's cluster: the logistic regression's weights, one table.
    pub fn spec(&self) -> ClusterSpec {
        ClusterSpec::new(self.servers, self.workers).table(
            "weights",
            TableSpec::<f32>::dense(0..ROWS, ROW_WIDTH)
                .update(Sgd::new(0.5))
                .consistency(self.consistency),
        )
    }

    /// Every server shard's role, then every worker's.
    pub fn roles(&self) -> (Vec<String>, Vec<String>) {
        (
            (0..self.servers).map(|s| format!("server:{s}")).collect(),
            (0..self.workers).map(|w| format!("worker:{w}")).collect(),
        )
    }
}

/// Starts this program once per role, with the same arguments and `env`
/// plus `role_var` set to the role, and waits for every process; the
/// error names the roles that failed. A worker that exits with
/// [`worker::CRASH_EXIT`] (`--crash-at`) is started again, once, with
/// `LAGGARD_RESTART=1`.
pub fn run_roles(role_var: &str, env: &[(&str, &str)], roles: Vec<String>) -> Result<(), String> {
    let me = std::env::current_exe().map_err(|e| e.to_string())?;
    let args: Vec<String> = std::env::args().skip(1).collect();
    let start = |role: &str, restart: bool| {
        let mut command = Command::new(&me);
        command
            .args(&args)
            .envs(env.iter().copied())
            .env(role_var, role);
        if restart {
            command.env("LAGGARD_RESTART", "1");
        }
        command
            .spawn()
            .map_err(|e| format!("cannot start {role}: {e}"))
    };
    let mut children: Vec<(String, Child, bool)> = Vec::new();
    for role in roles {
        match start(&role, false) {
            Ok(child) => children.push((role, child, false)),
            Err(e) => {
                // Those started would wait for the missing one until
                // their deadline.
                for (_, child, _) in &mut children {
                    let _ = child.kill();
                    let _ = child.wait();
                }
                return Err(e);
            }
        }
    }
    let mut failed = Vec::new();
    // Looks at every process in turn, so a worker that exits to be
    // restarted is seen while the others still wait for it.
    while !children.is_empty() {
        let mut running = Vec::new();
        for (role, mut child, restarted) in children {
            match child.try_wait() {
                Ok(None) => running.push((role, child, restarted)),
                Ok(Some(status)) if status.success() => {}
                Ok(Some(status))
                    if status.code() == Some(worker::CRASH_EXIT)
                        && role.starts_with("worker:")
                        && !restarted =>
                {
                    println!("launcher: {role} exited at its --crash-at clock; starting it again");
                    // A failed restart is a failed role: the others go on
                    // (the servers declare the worker dead) and are waited for.
                    match start(&role, true) {
                        Ok(child) => running.push((role, child, true)),
                        Err(e) => failed.push(e),
                    }
                }
                Ok(Some(status)) => failed.push(format!("{role} ({status})")),
                Err(e) => failed.push(format!("{role} ({e})")),
            }
        }
        children = running;
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    if failed.is_empty() {
        Ok(())
    } else {
        Err(format!("failed: {}", failed.join(", ")))
    }
}

/// A process's role, from `server:N` or `worker:N`.
pub enum Role {
    Server(usize),
    Worker(u32),
}

impl Role {
    pub fn parse(role: &str) -> laggard::Result<Role> {
        let bad = || laggard::Error::InvalidConfig {
            what: "role",
            reason: format!("{role:?}: expected server:N or worker:N"),
        };
        match role.split_once(':') {
            Some(("server", shard)) => shard.parse().map(Role::Server).map_err(|_| bad()),
            Some(("worker", id)) => id.parse().map(Role::Worker).map_err(|_| bad()),
            _ => Err(bad()),
        }
    }
}

/// Serves shard `shard` of `spec` on `ep` until every worker is done, and
/// says what it applied. Unless a worker was declared dead, that must be
/// one push from each worker for each of the `cfg`'s clocks, exactly:
/// the demo checks itself (a worker whose process was replaced
/// included).
pub fn serve<E: Endpoint>(
    ep: E,
    cfg: &Common,
    spec: &ClusterSpec,
    shard: usize,
) -> laggard::Result<()> {
    let report = Server::new(ep, spec, shard)?.run_until_workers_done()?;
    let stats = report.stats;
    println!(
        "server shard {shard}: {} pushes applied, {} pulls ({} waited for slower workers)",
        stats.pushes, stats.pulls, stats.pulls_parked
    );
    let dead = worker::declared_dead(&report.clocks);
    if !dead.is_empty() {
        println!(
            "server shard {shard}: declared dead once their connection was gone: {}",
            dead.join(", ")
        );
    }
    let expected = cfg.workers as u64 * cfg.schedule.clocks;
    if stats.workers_declared_dead == 0 && stats.pushes != expected {
        return Err(laggard::Error::Transport {
            reason: format!(
                "server shard {shard} applied {} pushes, not one per worker and clock ({expected})",
                stats.pushes
            ),
        });
    }
    Ok(())
}

/// Connects worker `id` on `ep` (by `deadline`), trains, leaves, and says
/// what it sent.
pub fn train<E: Endpoint>(
    ep: E,
    cfg: &Common,
    spec: &ClusterSpec,
    id: u32,
    deadline: Instant,
) -> laggard::Result<()> {
    let mut worker = Worker::connect(ep, spec, WorkerId(id), deadline)?;
    worker::train_or_crash(
        &mut worker,
        id,
        cfg.workers as u32,
        cfg.consistency,
        &cfg.schedule,
        cfg.crash_at,
    )?;
    let stats = worker.leave()?;
    println!(
        "worker {id}: {} messages, {} pulls sent",
        stats.messages_sent, stats.pull_messages
    );
    Ok(())
}
