//! Starts a laggard cluster on this host: S server and P worker processes
//! of one program, each with the environment the bootstrap reads
//! (`LAGGARD_RANK`, `LAGGARD_WORLD_SIZE`, `LAGGARD_COORDINATOR`,
//! `LAGGARD_SERVERS`), their output prefixed by rank.
//!
//! ```text
//! laggard-launch --servers 2 --workers 4 [--port 29500] [--timeout-s 600] -- PROGRAM [ARGS...]
//! ```
//!
//! Exits 0 once every process exited successfully; otherwise says which
//! ranks failed and how, and exits 1. With `--timeout-s`, processes still
//! running at the deadline are killed.
//!
//! With `--restarts N`, a worker's rank whose process fails is started
//! again, up to N times per rank, with `LAGGARD_RESTART` set to how many
//! times it was (0 for the first start); the new process joins late at
//! the coordinator and takes the worker's place at its clock. A server's
//! rank is not restarted: its table lives nowhere else. (On one host the
//! bootstrap makes the lowest ranks the servers.) So once a server's
//! process fails, the job cannot finish: the others get a moment to exit
//! by themselves (a shard that stops tells its workers why), and those
//! still running are then stopped rather than left to wait for it.
//!
//! The ranks do not outlive the launcher: if it is killed (by a scheduler,
//! `timeout` or `kill`, with any signal), each rank gets SIGTERM.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// How long the other processes have to exit by themselves once a
/// server's process failed, before they are stopped.
const AFTER_SERVER_FAILED: Duration = Duration::from_secs(2);

struct Args {
    servers: usize,
    workers: usize,
    port: Option<u16>,
    timeout: Option<Duration>,
    restarts: u64,
    program: Vec<String>,
}

fn parse() -> Result<Args, String> {
    let mut args = std::env::args().skip(1);
    let mut a = Args {
        servers: 1,
        workers: 2,
        port: None,
        timeout: None,
        restarts: 0,
        program: Vec::new(),
    };
    while let Some(flag) = args.next() {
        if flag == "--" {
            a.program = args.by_ref().collect();
            break;
        }
        let value = args.next().ok_or(format!("{flag} needs a value"))?;
        let num = |v: &str| v.parse::<u64>().map_err(|e| format!("{flag} {v}: {e}"));
        match flag.as_str() {
            "--servers" => a.servers = num(&value)? as usize,
            "--workers" => a.workers = num(&value)? as usize,
            "--port" => {
                let port = num(&value)?;
                a.port = Some(
                    u16::try_from(port).map_err(|_| format!("{flag} {port}: not a TCP port"))?,
                );
            }
            "--timeout-s" => a.timeout = Some(Duration::from_secs(num(&value)?)),
            "--restarts" => a.restarts = num(&value)?,
            other => return Err(format!("unknown flag {other}")),
        }
    }
    if a.program.is_empty() {
        return Err("no program given; put it after `--`".into());
    }
    if a.servers == 0 || a.workers == 0 {
        return Err("need at least one server and one worker".into());
    }
    Ok(a)
}

/// Copies `stream` line by line, prefixed by `rank`, on a thread of its
/// own until it ends (the process exited and closed it); fails if the
/// system refuses the thread.
///
/// It reads to the end whatever comes: bytes that are not UTF-8 are
/// shown as U+FFFD, and once the launcher's own output is gone (piped
/// into `head`, say) the lines are dropped. Stopping early instead would
/// close the pipe, and the rank's next print would kill it (a broken
/// pipe).
fn forward(
    rank: usize,
    stream: impl std::io::Read + Send + 'static,
    err: bool,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new().spawn(move || {
        let mut stream = BufReader::new(stream);
        let mut line = Vec::new();
        loop {
            line.clear();
            match stream.read_until(b'\n', &mut line) {
                Ok(0) => return,
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(_) => return,
            }
            let text = String::from_utf8_lossy(&line);
            let text = text.trim_end_matches(['\n', '\r']);
            let _ = if err {
                writeln!(std::io::stderr().lock(), "[rank {rank}] {text}")
            } else {
                writeln!(std::io::stdout().lock(), "[rank {rank}] {text}")
            };
        }
    })
}

/// Makes the process `command` starts get SIGTERM once the launcher has
/// died, however it died: a rank left running would go on training (or
/// waiting, holding its port and shared memory) with no one to collect its
/// output or stop it.
#[cfg(target_os = "linux")]
#[allow(unsafe_code)]
fn die_with_launcher(command: &mut Command) {
    use rustix::process::{Signal, getpid, getppid, set_parent_process_death_signal};
    use std::os::unix::process::CommandExt;
    let launcher = getpid();
    let in_child = move || -> std::io::Result<()> {
        set_parent_process_death_signal(Some(Signal::TERM))?;
        // The launcher may have died between the fork and the line above;
        // then no signal will come, so do not start the program at all.
        if getppid() != Some(launcher) {
            return Err(rustix::io::Errno::SRCH.into());
        }
        Ok(())
    };
    // SAFETY: `in_child` runs in the forked child before exec, where only
    // async-signal-safe work is sound: two raw system calls through rustix
    // (`prctl`, `getppid`) and an error from a raw errno: no allocation, no lock.
    unsafe {
        command.pre_exec(in_child);
    }
}

/// Elsewhere there is no parent-death signal: the ranks may outlive a
/// killed launcher.
#[cfg(not(target_os = "linux"))]
fn die_with_launcher(_command: &mut Command) {}

fn describe(status: ExitStatus) -> String {
    #[cfg(unix)]
    {
        use std::os::unix::process::ExitStatusExt;
        if let Some(sig) = status.signal() {
            return format!("was killed by signal {sig}");
        }
    }
    match status.code() {
        Some(code) => format!("exited with code {code}"),
        None => "ended abnormally".into(),
    }
}

fn main() {
    let args = match parse() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("laggard-launch: {e}");
            eprintln!(
                "usage: laggard-launch --servers S --workers P [--port N] [--timeout-s T] \
                 [--restarts N] -- PROGRAM [ARGS...]"
            );
            std::process::exit(2);
        }
    };
    let port = args.port.unwrap_or_else(|| {
        TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .unwrap_or(29500)
    });
    let world = args.servers + args.workers;
    let coordinator = format!("127.0.0.1:{port}");
    let forwarders = std::cell::RefCell::new(Vec::new());
    let start = |rank: usize, restart: u64| -> std::io::Result<Child> {
        let mut command = Command::new(&args.program[0]);
        command
            .args(&args.program[1..])
            .env("LAGGARD_RANK", rank.to_string())
            .env("LAGGARD_WORLD_SIZE", world.to_string())
            .env("LAGGARD_COORDINATOR", &coordinator)
            .env("LAGGARD_SERVERS", args.servers.to_string())
            .env("LAGGARD_RESTART", restart.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        die_with_launcher(&mut command);
        let mut child = command.spawn()?;
        let streams = [
            child.stdout.take().map(|out| forward(rank, out, false)),
            child.stderr.take().map(|err| forward(rank, err, true)),
        ];
        for forwarder in streams.into_iter().flatten() {
            match forwarder {
                Ok(thread) => forwarders.borrow_mut().push(thread),
                Err(e) => {
                    // Its output would have nowhere to go.
                    let _ = child.kill();
                    let _ = child.wait();
                    let why = format!("no thread to forward its output could be started: {e}");
                    return Err(std::io::Error::new(e.kind(), why));
                }
            }
        }
        Ok(child)
    };
    let mut children: Vec<(usize, Child)> = Vec::new();
    for rank in 0..world {
        match start(rank, 0) {
            Ok(child) => children.push((rank, child)),
            Err(e) => {
                eprintln!("laggard-launch: cannot start {:?}: {e}", args.program[0]);
                for (_, c) in &mut children {
                    let _ = c.kill();
                }
                std::process::exit(1);
            }
        }
    }
    let mut restarted = vec![0u64; world];
    let deadline = args.timeout.map(|t| Instant::now() + t);
    let mut failed = Vec::new();
    // The first server rank that failed, and when.
    let mut server_failed: Option<(usize, Instant)> = None;
    let mut running = children;
    while !running.is_empty() {
        let mut still = Vec::new();
        for (rank, mut child) in running {
            let status = child.try_wait();
            if let Ok(Some(status)) = &status {
                if !status.success() && rank < args.servers && server_failed.is_none() {
                    server_failed = Some((rank, Instant::now()));
                }
            }
            match status {
                Ok(Some(status)) if status.success() => {}
                Ok(Some(status)) if rank >= args.servers && restarted[rank] < args.restarts => {
                    restarted[rank] += 1;
                    eprintln!(
                        "laggard-launch: rank {rank} {}; starting it again ({} of {})",
                        describe(status),
                        restarted[rank],
                        args.restarts
                    );
                    match start(rank, restarted[rank]) {
                        Ok(child) => still.push((rank, child)),
                        Err(e) => failed.push(format!("rank {rank}: cannot start it again: {e}")),
                    }
                }
                Ok(Some(status)) => failed.push(format!("rank {rank} {}", describe(status))),
                Ok(None) if deadline.is_some_and(|d| Instant::now() >= d) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    failed.push(format!("rank {rank} was still running at the timeout"));
                }
                Ok(None) => match server_failed {
                    Some((server, at)) if at.elapsed() >= AFTER_SERVER_FAILED => {
                        let _ = child.kill();
                        let _ = child.wait();
                        failed.push(format!(
                            "rank {rank} was stopped: server rank {server} failed, so the job \
                             cannot finish"
                        ));
                    }
                    _ => still.push((rank, child)),
                },
                Err(e) => failed.push(format!("rank {rank}: cannot wait for it: {e}")),
            }
        }
        running = still;
        std::thread::sleep(Duration::from_millis(20));
    }
    // Every process has exited, so each output ends: print its last lines
    // before the verdict. (A process's own children could hold its output
    // open; they get a moment, not a wait without end.)
    let forwarders = forwarders.into_inner();
    let until = Instant::now() + Duration::from_secs(2);
    for f in forwarders {
        while !f.is_finished() && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    if failed.is_empty() {
        eprintln!("laggard-launch: all {world} processes finished");
    } else {
        eprintln!("laggard-launch: {}", failed.join("; "));
        std::process::exit(1);
    }
}
