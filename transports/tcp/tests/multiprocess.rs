//! Clusters of real processes on loopback, and on two network namespaces
//! joined by a veth pair (different addresses, as on two hosts).
//!
//! The processes are this test binary itself, started with
//! `LAGGARD_TEST_CHILD` set and filtered to `child_process`, which then
//! plays its part instead of testing.

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

mod common;

use common::child::{CHILD, as_child};
use laggard::{ClusterSpec, Consistency, Sum, TableSpec, WorkerStatus};
use laggard_tcp::{Bootstrap, Role};

const KEYS: u64 = 8;

fn spec(boot: &Bootstrap, consistency: Consistency, dead_after: Duration) -> ClusterSpec {
    ClusterSpec::new(boot.servers(), boot.workers())
        .table(
            "t",
            TableSpec::<i64>::dense(0..KEYS, 2)
                .update(Sum)
                .consistency(consistency),
        )
        .dead_after(dead_after)
        .timeout(Duration::from_secs(60))
}

fn delta(worker: u32, clock: u64, key: u64) -> [i64; 2] {
    [
        1,
        i64::from(worker) * 100_000 + clock as i64 * 10 + key as i64,
    ]
}

/// What one process does when started as a child.
#[test]
fn child_process() {
    let Ok(mode) = std::env::var(CHILD) else {
        return; // a normal test run: nothing to do
    };
    if mode == "sleeps" {
        // Says it started (its pid, in a file of its own) and sleeps,
        // printing nothing: a rank busy computing.
        let dir = std::env::var("TEST_PIDS").unwrap();
        let pid = std::process::id();
        std::fs::write(format!("{dir}/{pid}"), b"").unwrap();
        std::thread::sleep(Duration::from_secs(120));
        return;
    }
    if mode == "prints-latin1" {
        // A line that is not UTF-8 (a Latin-1 é), then more lines for a
        // while: a launcher that stopped reading would break the pipe.
        let mut out = std::io::stdout();
        out.write_all(b"\ncaf\xe9\n").unwrap();
        for i in 0..100 {
            writeln!(out, "line {i} after it").unwrap();
            std::thread::sleep(Duration::from_millis(10));
        }
        return;
    }
    let clocks: u64 = std::env::var("TEST_CLOCKS").unwrap().parse().unwrap();
    let boot = Bootstrap::from_env().unwrap();
    let (consistency, dead_after) = match mode.as_str() {
        "sum" => (Consistency::Bsp, Duration::from_secs(10)),
        "kill" | "crash-once" | "server-dies" => {
            (Consistency::Ssp { staleness: 1 }, Duration::from_secs(1))
        }
        "never-connects" | "server-fails" => (Consistency::Async, Duration::from_secs(1)),
        other => panic!("unknown child mode {other}"),
    };
    let spec = spec(&boot, consistency, dead_after);
    let workers = boot.workers() as u32;
    let node = boot.join(&spec).unwrap();
    match node.role() {
        Role::Server(shard) if mode == "server-fails" => {
            // Fails before it serves (a checkpoint it cannot load, say).
            println!("shard {shard}: failing before it serves");
            std::process::exit(4);
        }
        Role::Server(shard) => {
            let report = node.run_server().unwrap();
            for (w, c, status) in report.clocks.iter() {
                if status == WorkerStatus::Dead {
                    println!("shard {shard}: worker {} declared dead at clock {c}", w.0);
                }
            }
            println!("shard {shard}: replaced {}", report.stats.workers_replaced);
            println!("shard {shard}: done");
        }
        Role::Worker(id) if mode == "never-connects" && id.0 + 1 == workers => {
            // Fails after the rendezvous, before it connects to a server
            // (loading its data, say).
            println!("worker {}: gone before connecting", id.0);
        }
        Role::Worker(id) => {
            let mut worker = node.worker().unwrap();
            let t = worker.table::<i64>("t").unwrap();
            let keys: Vec<u64> = (0..KEYS).collect();
            let mut rows = vec![0i64; KEYS as usize * 2];
            // A process that took the place of a killed one goes on from
            // the worker's clock.
            let joined = worker.current_clock();
            println!("worker {}: joined at clock {joined}", id.0);
            for c in joined..clocks {
                let deltas: Vec<i64> = keys.iter().flat_map(|&k| delta(id.0, c, k)).collect();
                let step = worker
                    .pull(&t, &keys, &mut rows)
                    .and_then(|()| worker.push(&t, &keys, &deltas))
                    .and_then(|()| worker.clock());
                if let Err(e) = step {
                    assert_eq!(mode, "server-dies", "worker {}: {e}", id.0);
                    // Its killed shard is gone for good: the error says
                    // which, and the worker stops (dropped, not left).
                    println!("worker {}: failed at clock {c}: {e}", id.0);
                    return;
                }
                println!("worker {}: clock {}", id.0, c + 1);
                // The last worker's first process fails at clock 20; its
                // launcher (`laggard-launch --restarts`) starts it again.
                let first = std::env::var("LAGGARD_RESTART").is_ok_and(|r| r == "0");
                if mode == "crash-once" && id.0 + 1 == workers && first && c + 1 == 20 {
                    // Once its pushes are in, so the new process's clock
                    // is known: 20.
                    let ticket = worker.flush().unwrap();
                    let deadline = Instant::now() + Duration::from_secs(30);
                    worker.wait_applied(&ticket, deadline).unwrap();
                    std::process::exit(3);
                }
                if mode == "kill" || mode == "server-dies" {
                    std::thread::sleep(Duration::from_millis(2));
                }
            }
            if mode == "sum" {
                // BSP: at clock `clocks` every push of every worker is in.
                worker.pull(&t, &keys, &mut rows).unwrap();
                for k in 0..KEYS {
                    let mut expect = [0i64; 2];
                    for w in 0..workers {
                        for c in 0..clocks {
                            let d = delta(w, c, k);
                            expect[0] += d[0];
                            expect[1] += d[1];
                        }
                    }
                    assert_eq!(rows[k as usize * 2..k as usize * 2 + 2], expect, "key {k}");
                }
                println!("worker {}: sums exact", id.0);
            }
            worker.leave().unwrap();
        }
    }
}

/// Starts rank `rank` of a job, optionally inside network namespace `ns`.
fn start(
    mode: &str,
    rank: usize,
    world: usize,
    servers: usize,
    coordinator: &str,
    clocks: u64,
    ns: Option<(&str, &str)>,
) -> Child {
    let exe = std::env::current_exe().unwrap();
    let mut cmd = match ns {
        Some((ns, _)) => {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", ns]).arg(&exe);
            c
        }
        None => Command::new(&exe),
    };
    as_child(&mut cmd, mode)
        .env("TEST_CLOCKS", clocks.to_string())
        .env("LAGGARD_RANK", rank.to_string())
        .env("LAGGARD_WORLD_SIZE", world.to_string())
        .env("LAGGARD_SERVERS", servers.to_string())
        .env("LAGGARD_COORDINATOR", coordinator)
        .env("LAGGARD_TIMEOUT_MS", "30000")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    if let Some((_, host)) = ns {
        cmd.env("LAGGARD_HOST", host);
    }
    cmd.spawn().expect("start a child process")
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Waits for `child` to exit, killing it at `deadline`; whether it exited
/// successfully by itself.
fn wait_or_kill(child: &mut Child, deadline: Instant) -> bool {
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status.success();
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Waits for every child (at most `limit`), returning each one's output.
fn finish(children: Vec<Child>, limit: Duration) -> Vec<(bool, String)> {
    let deadline = Instant::now() + limit;
    children
        .into_iter()
        .map(|mut c| {
            let out = c.stdout.take().unwrap();
            let reader = std::thread::spawn(move || {
                let mut s = String::new();
                for line in BufReader::new(out).lines().map_while(Result::ok) {
                    s.push_str(&line);
                    s.push('\n');
                }
                s
            });
            let ok = wait_or_kill(&mut c, deadline);
            (ok, reader.join().unwrap())
        })
        .collect()
}

/// Starts every rank of a job of `servers` and `workers` processes on
/// loopback in `mode`, for `clocks` clocks; returns them in rank order.
fn start_on_loopback(mode: &str, (servers, workers): (usize, usize), clocks: u64) -> Vec<Child> {
    let world = servers + workers;
    let coord = format!("127.0.0.1:{}", free_port());
    (0..world)
        .map(|r| start(mode, r, world, servers, &coord, clocks, None))
        .collect()
}

/// Runs a job of `servers` and `workers` processes on loopback in `mode`
/// for `clocks` clocks; every process must finish successfully within
/// `limit`. Returns each rank's output.
fn run_on_loopback(
    mode: &str,
    (servers, workers): (usize, usize),
    clocks: u64,
    limit: Duration,
) -> Vec<String> {
    let results = finish(start_on_loopback(mode, (servers, workers), clocks), limit);
    for (rank, (ok, out)) in results.iter().enumerate() {
        assert!(
            ok,
            "rank {rank} failed or did not finish; its output:\n{out}"
        );
    }
    results.into_iter().map(|(_, out)| out).collect()
}

#[test]
fn processes_on_loopback_compute_exact_sums() {
    let workers = 3;
    let outputs = run_on_loopback("sum", (2, workers), 30, Duration::from_secs(120));
    let exact = outputs
        .iter()
        .filter(|out| out.contains("sums exact"))
        .count();
    assert_eq!(exact, workers);
}

/// Starts a job of one server shard and three workers (one host: rank 0
/// is the server, ranks 1..=3 are workers 0..=2), 300 clocks in mode
/// kill, and kills worker 2 once it is well into the run. Returns the
/// other ranks' processes and the coordinator's address.
fn start_and_kill_worker_2() -> (Vec<Child>, String) {
    let (servers, workers) = (1, 3);
    let world = servers + workers;
    let coord = format!("127.0.0.1:{}", free_port());
    let mut children: Vec<Child> = (0..world)
        .map(|r| start("kill", r, world, servers, &coord, 300, None))
        .collect();
    let mut victim = children.pop().unwrap();
    let mut lines = BufReader::new(victim.stdout.take().unwrap()).lines();
    let started = Instant::now();
    loop {
        let line = lines.next().expect("the victim's output ended").unwrap();
        if line.contains("worker 2: clock 20") {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the victim never got going"
        );
    }
    victim.kill().unwrap();
    victim.wait().unwrap();
    (children, coord)
}

#[test]
fn a_killed_worker_is_declared_dead_and_the_others_finish() {
    let (children, _) = start_and_kill_worker_2();
    // The others are held back at most `dead_after` (1 s), then go on.
    let results = finish(children, Duration::from_secs(120));
    for (rank, (ok, out)) in results.iter().enumerate() {
        assert!(ok, "rank {rank} failed; its output:\n{out}");
    }
    let server = &results[0].1;
    assert!(
        server.contains("worker 2 declared dead"),
        "the server did not report the dead worker:\n{server}"
    );
    for (w, (_, out)) in results[1..].iter().enumerate() {
        assert!(out.contains(&format!("worker {w}: clock 300")), "{out}");
    }
}

#[test]
fn a_killed_worker_rank_is_taken_over_by_a_new_process() {
    // Rank 3 (worker 2) is started again once killed, as a launcher
    // restarting a failed process would. The new process joins late at
    // the coordinator (rank 0), which answers with the map, and goes on
    // from worker 2's clock.
    let (mut children, coord) = start_and_kill_worker_2();
    children.push(start("kill", 3, 4, 1, &coord, 300, None));
    let results = finish(children, Duration::from_secs(120));
    for (rank, (ok, out)) in results.iter().enumerate() {
        assert!(ok, "rank {rank} failed; its output:\n{out}");
    }
    let replacement = &results[3].1;
    let joined: u64 = replacement
        .lines()
        .find_map(|l| l.split_once("worker 2: joined at clock ").map(|(_, c)| c))
        .unwrap_or_else(|| panic!("no join line:\n{replacement}"))
        .trim()
        .parse()
        .unwrap();
    assert!(joined >= 20, "joined at clock {joined}");
    assert!(replacement.contains("worker 2: clock 300"), "{replacement}");
    assert!(
        results[0].1.contains("shard 0: replaced 1"),
        "{}",
        results[0].1
    );
}

/// Runs `laggard-launch` with `args` (and a 120 s timeout) over this test
/// binary as `child_process` in `mode`, for `clocks` clocks; returns its
/// output, and its stdout and stderr as text.
fn launch(args: &[&str], mode: &str, clocks: u64) -> (std::process::Output, String, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_laggard-launch"));
    cmd.args(args)
        .args(["--timeout-s", "120", "--"])
        .arg(std::env::current_exe().unwrap());
    let out = as_child(&mut cmd, mode)
        .env("TEST_CLOCKS", clocks.to_string())
        .env("LAGGARD_TIMEOUT_MS", "30000")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    (out, stdout, stderr)
}

#[test]
fn laggard_launch_starts_a_failed_worker_rank_again() {
    // The launcher starts this test binary for every rank (as
    // `child_process`, in mode crash-once); rank 3, worker 2, exits at
    // clock 20 the first time.
    let (out, stdout, stderr) = launch(
        &["--servers", "1", "--workers", "3", "--restarts", "1"],
        "crash-once",
        100,
    );
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(
        stderr.contains("rank 3 exited with code 3; starting it again (1 of 1)"),
        "{stderr}"
    );
    assert!(stdout.contains("worker 2: joined at clock 20"), "{stdout}");
    assert!(stdout.contains("worker 2: clock 100"), "{stdout}");
    assert!(stdout.contains("shard 0: replaced 1"), "{stdout}");
}

#[test]
fn laggard_launch_stops_the_job_once_a_server_rank_failed() {
    // The workers would wait for the server until their deadline (30 s);
    // the launcher stops them instead, and says why.
    let (out, stdout, stderr) = launch(&["--servers", "1", "--workers", "2"], "server-fails", 10);
    assert_eq!(out.status.code(), Some(1), "{stdout}\n{stderr}");
    assert!(
        stdout.contains("shard 0: failing before it serves"),
        "{stdout}"
    );
    assert!(stderr.contains("rank 0 exited with code 4"), "{stderr}");
    for rank in [1, 2] {
        assert!(
            stderr.contains(&format!(
                "rank {rank} was stopped: server rank 0 failed, so the job cannot finish"
            )),
            "{stderr}"
        );
    }
}

/// Whether process `pid` has ended (gone, or a zombie no one reaped yet).
fn ended(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the command's closing parenthesis.
        Ok(stat) => stat
            .rsplit_once(") ")
            .is_some_and(|(_, rest)| rest.starts_with('Z') || rest.starts_with('X')),
        Err(_) => true,
    }
}

#[test]
fn laggard_launch_takes_its_ranks_with_it_when_it_is_killed() {
    // A scheduler or `timeout` stops a job by signalling the launcher it
    // started. Its ranks used to live on, orphans training without it
    // (or holding a port and /dev/shm) until they next printed.
    let pids = std::env::temp_dir().join(format!("laggard-launch-pids-{}", std::process::id()));
    std::fs::create_dir_all(&pids).unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_laggard-launch"));
    cmd.args(["--servers", "1", "--workers", "2", "--"])
        .arg(std::env::current_exe().unwrap());
    let mut launcher = as_child(&mut cmd, "sleeps")
        .env("TEST_PIDS", &pids)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let ranks = |dir: &std::path::Path| -> Vec<u32> {
        std::fs::read_dir(dir)
            .unwrap()
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
            .collect()
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    while ranks(&pids).len() < 3 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let started = ranks(&pids);
    let terminate = rustix::process::Pid::from_raw(launcher.id() as i32).unwrap();
    rustix::process::kill_process(terminate, rustix::process::Signal::TERM).unwrap();
    launcher.wait().unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !started.iter().all(|&p| ended(p)) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let orphans: Vec<u32> = started.iter().copied().filter(|&p| !ended(p)).collect();
    for &p in &orphans {
        if let Some(pid) = rustix::process::Pid::from_raw(p as i32) {
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
        }
    }
    std::fs::remove_dir_all(&pids).unwrap();
    assert_eq!(started.len(), 3, "the launcher started {started:?}");
    assert!(
        orphans.is_empty(),
        "ranks {orphans:?} outlived their launcher"
    );
}

#[test]
fn laggard_launch_passes_on_output_that_is_not_utf8() {
    // It used to stop reading a rank's output at its first line that was
    // not UTF-8, so the rank's next print hit a broken pipe and killed it.
    let (out, stdout, stderr) = launch(&["--servers", "1", "--workers", "1"], "prints-latin1", 0);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    for rank in [0, 1] {
        assert!(
            stdout.contains(&format!("[rank {rank}] caf\u{FFFD}\n")),
            "{stdout}"
        );
        assert!(
            stdout.contains(&format!("[rank {rank}] line 99 after it\n")),
            "{stdout}"
        );
    }
}

#[test]
fn laggard_launch_refuses_a_port_past_65535() {
    // It used to keep the port's low 16 bits: 70000 became 4464.
    let out = Command::new(env!("CARGO_BIN_EXE_laggard-launch"))
        .args(["--port", "70000", "--", "true"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("--port 70000: not a TCP port"), "{stderr}");
}

/// Two network namespaces joined by a veth pair, removed on drop.
struct Netns {
    names: [String; 2],
}

impl Netns {
    fn create() -> Result<Netns, String> {
        let id = std::process::id() % 100_000;
        let names = [format!("lgA{id}"), format!("lgB{id}")];
        let (va, vb) = (format!("lva{id}"), format!("lvb{id}"));
        let ns = Netns { names };
        let [a, b] = &ns.names;
        let steps: Vec<Vec<&str>> = vec![
            vec!["netns", "add", a],
            vec!["netns", "add", b],
            vec!["link", "add", &va, "type", "veth", "peer", "name", &vb],
            vec!["link", "set", &va, "netns", a],
            vec!["link", "set", &vb, "netns", b],
            vec!["-n", a, "addr", "add", "10.231.0.1/24", "dev", &va],
            vec!["-n", b, "addr", "add", "10.231.0.2/24", "dev", &vb],
            vec!["-n", a, "link", "set", &va, "up"],
            vec!["-n", b, "link", "set", &vb, "up"],
            vec!["-n", a, "link", "set", "lo", "up"],
            vec!["-n", b, "link", "set", "lo", "up"],
        ];
        for step in steps {
            let out = Command::new("ip")
                .args(&step)
                .output()
                .map_err(|e| format!("cannot run ip: {e}"))?;
            if !out.status.success() {
                return Err(format!(
                    "`ip {}` failed: {}",
                    step.join(" "),
                    String::from_utf8_lossy(&out.stderr).trim()
                ));
            }
        }
        Ok(ns)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        for n in &self.names {
            let _ = Command::new("ip").args(["netns", "del", n]).output();
        }
    }
}

#[test]
fn servers_and_workers_on_different_addresses() {
    let ns = match Netns::create() {
        Ok(ns) => ns,
        Err(why) => {
            eprintln!(
                "SKIPPED: cannot create network namespaces here ({why}); run as root with iproute2"
            );
            return;
        }
    };
    let [a, b] = [ns.names[0].as_str(), ns.names[1].as_str()];
    // Rank 0 (coordinator and, being alone on its host, a server) in
    // namespace A; the other ranks in namespace B.
    let (servers, workers) = (2, 3);
    let world = servers + workers;
    let coord = "10.231.0.1:29631";
    let children: Vec<Child> = (0..world)
        .map(|r| {
            let place = if r == 0 {
                (a, "10.231.0.1")
            } else {
                (b, "10.231.0.2")
            };
            start("sum", r, world, servers, coord, 20, Some(place))
        })
        .collect();
    let results = finish(children, Duration::from_secs(120));
    for (rank, (ok, out)) in results.iter().enumerate() {
        assert!(ok, "rank {rank} failed; its output:\n{out}");
    }
    // Placement spread the servers: one per host.
    assert!(results[0].1.contains("shard 0: done"), "{}", results[0].1);
    assert!(results[1].1.contains("shard 1: done"), "{}", results[1].1);
    let exact = results
        .iter()
        .filter(|(_, out)| out.contains("sums exact"))
        .count();
    assert_eq!(exact, workers);
}

#[test]
fn a_killed_server_shard_is_an_error_for_every_worker_not_a_hang() {
    // Ranks 0 and 1 are server shards 0 and 1 (one host: lowest ranks
    // first), ranks 2 and 3 workers 0 and 1.
    let mut children = start_on_loopback("server-dies", (2, 2), 100_000);
    let (tx, rx) = std::sync::mpsc::channel();
    let outputs: Vec<_> = children
        .iter_mut()
        .map(|c| {
            let out = c.stdout.take().unwrap();
            let tx = tx.clone();
            std::thread::spawn(move || {
                let mut s = String::new();
                for line in BufReader::new(out).lines().map_while(Result::ok) {
                    let _ = tx.send(line.clone());
                    s.push_str(&line);
                    s.push('\n');
                }
                s
            })
        })
        .collect();
    drop(tx);
    loop {
        let line = rx
            .recv_timeout(Duration::from_secs(60))
            .expect("worker 0 never reached clock 20");
        if line.contains("worker 0: clock 20") {
            break;
        }
    }
    let mut shard_1 = children.remove(1);
    shard_1.kill().unwrap();
    shard_1.wait().unwrap();
    // The others end by themselves: the workers once they gave up
    // reconnecting to shard 1 (for `dead_after`, 1 s), shard 0 once it
    // declared them dead.
    let deadline = Instant::now() + Duration::from_secs(120);
    let ended: Vec<bool> = children
        .iter_mut()
        .map(|c| wait_or_kill(c, deadline))
        .collect();
    let mut outputs: Vec<String> = outputs.into_iter().map(|h| h.join().unwrap()).collect();
    outputs.remove(1);
    for (i, (ok, out)) in ended.iter().zip(&outputs).enumerate() {
        let rank = if i == 0 { 0 } else { i + 1 };
        assert!(ok, "rank {rank} did not end by itself; its output:\n{out}");
    }
    for out in &outputs[1..] {
        let failed = out
            .lines()
            .find(|l| l.contains("failed at clock"))
            .unwrap_or_else(|| panic!("a worker went on without shard 1:\n{out}"));
        assert!(failed.contains("server shard 1"), "{failed}");
    }
}

#[test]
fn a_worker_that_never_connects_does_not_keep_the_server_forever() {
    // Rank 0 is the server; ranks 1 and 2 workers 0 and 1. Worker 1's
    // process ends after the rendezvous without connecting; worker 0
    // trains (Async) and leaves. The server used to wait for worker 1
    // forever.
    let outputs = run_on_loopback("never-connects", (1, 2), 30, Duration::from_secs(60));
    assert!(outputs[1].contains("worker 0: clock 30"), "{}", outputs[1]);
    let server = &outputs[0];
    assert!(
        server.contains("worker 1 declared dead at clock 0"),
        "the server did not give up on the worker that never came:\n{server}"
    );
}
