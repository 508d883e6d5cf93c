//! Clusters of real processes on this host, talking through shared memory
//! (long pushed rows through the stash that the server process reads).
//!
//! The processes are this test binary itself, started with
//! `LAGGARD_SHM_TEST_CHILD` set and filtered to `child_process`, which then
//! plays its part instead of testing.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use laggard::transport::{Endpoint, Event, Transport};
use laggard::{
    ClusterSpec, Consistency, Error, Server, Sum, TableSpec, Worker, WorkerId, WorkerStatus,
};
use laggard_shm::ShmTransport;

const CHILD: &str = "LAGGARD_SHM_TEST_CHILD";
const KEYS: u64 = 8;
/// Elements of a row of the `long` table: 131,080 bytes, long enough that
/// workers keep pending pushes of it in the connection's stash, which the
/// server process applies in place.
const LONG: usize = 16_385;

fn spec(servers: usize, workers: usize, mode: &str) -> ClusterSpec {
    let (consistency, dead_after) = match mode {
        "kill" => (Consistency::Ssp { staleness: 1 }, Duration::from_secs(1)),
        _ => (Consistency::Bsp, Duration::from_secs(10)),
    };
    ClusterSpec::new(servers, workers)
        .table(
            "t",
            TableSpec::<i64>::dense(0..KEYS, 2)
                .update(Sum)
                .consistency(consistency),
        )
        .table(
            "long",
            TableSpec::<i64>::dense(0..2, LONG)
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

/// Worker `worker`'s delta for element `i` of both `long` rows at `clock`.
fn long_delta(worker: u32, clock: u64, i: usize) -> i64 {
    (i64::from(worker) + 1) * (clock as i64 + 1) * 1000 + i as i64
}

fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| panic!("{name} is set for children"))
}

/// What one process does when started as a child.
#[test]
fn child_process() {
    let Ok(role) = std::env::var(CHILD) else {
        return; // a normal test run: nothing to do
    };
    let net = ShmTransport::new(&env("SHM_CLUSTER")).unwrap();
    let mode = env("SHM_MODE");
    if mode == "peer" {
        // Transport level: connect, send one frame, then wait to be killed.
        let mut ep = net.bind("victim").unwrap();
        let peer = ep
            .connect("watcher", Instant::now() + Duration::from_secs(20))
            .unwrap();
        let mut buf = ep
            .lend(peer, 5, Instant::now() + Duration::from_secs(20))
            .unwrap();
        buf.copy_from_slice(b"alive");
        ep.send(buf).unwrap();
        std::thread::sleep(Duration::from_secs(600));
        return;
    }
    let servers: usize = env("SHM_SERVERS").parse().unwrap();
    let workers: usize = env("SHM_WORKERS").parse().unwrap();
    let clocks: u64 = env("SHM_CLOCKS").parse().unwrap();
    let spec = spec(servers, workers, &mode);
    match role.split_once(':') {
        Some(("server", shard)) => {
            let shard: usize = shard.parse().unwrap();
            let ep = net.bind(&spec.server_name(shard)).unwrap();
            let report = Server::new(ep, &spec, shard)
                .unwrap()
                .run_until_workers_done()
                .unwrap();
            for (w, c, status) in report.clocks.iter() {
                if status == WorkerStatus::Dead {
                    println!("shard {shard}: worker {} declared dead at clock {c}", w.0);
                }
            }
            println!("shard {shard}: replaced {}", report.stats.workers_replaced);
            println!("shard {shard}: done");
        }
        Some(("worker", id)) => {
            let id: u32 = id.parse().unwrap();
            let ep = net.bind(&spec.worker_name(id as usize)).unwrap();
            let deadline = Instant::now() + Duration::from_secs(30);
            let mut worker = Worker::connect(ep, &spec, WorkerId(id), deadline).unwrap();
            let t = worker.table::<i64>("t").unwrap();
            let keys: Vec<u64> = (0..KEYS).collect();
            let mut rows = vec![0i64; KEYS as usize * 2];
            // A process that took the place of a killed one goes on from
            // the worker's clock.
            let joined = worker.current_clock();
            println!("worker {id}: joined at clock {joined}");
            for c in joined..clocks {
                worker.pull(&t, &keys, &mut rows).unwrap();
                let deltas: Vec<i64> = keys.iter().flat_map(|&k| delta(id, c, k)).collect();
                worker.push(&t, &keys, &deltas).unwrap();
                if mode == "sum" {
                    let long = worker.table::<i64>("long").unwrap();
                    let row: Vec<i64> = (0..LONG).map(|i| long_delta(id, c, i)).collect();
                    worker
                        .push(&long, &[0, 1], &[row.clone(), row].concat())
                        .unwrap();
                }
                worker.clock().unwrap();
                println!("worker {id}: clock {}", c + 1);
                if mode == "kill" {
                    std::thread::sleep(Duration::from_millis(2));
                }
            }
            if mode == "sum" {
                // BSP: at clock `clocks` every push of every worker is in.
                worker.pull(&t, &keys, &mut rows).unwrap();
                for k in 0..KEYS {
                    let mut want = [0i64; 2];
                    for w in 0..workers as u32 {
                        for c in 0..clocks {
                            let d = delta(w, c, k);
                            want[0] += d[0];
                            want[1] += d[1];
                        }
                    }
                    let got = &rows[k as usize * 2..k as usize * 2 + 2];
                    assert_eq!(got, want, "key {k}");
                }
                let long = worker.table::<i64>("long").unwrap();
                let mut both = vec![0i64; 2 * LONG];
                worker.pull(&long, &[0, 1], &mut both).unwrap();
                for (i, &got) in both.iter().enumerate() {
                    let want: i64 = (0..workers as u32)
                        .flat_map(|w| (0..clocks).map(move |c| long_delta(w, c, i % LONG)))
                        .sum();
                    assert_eq!(got, want, "long row element {i}");
                }
                println!("worker {id}: stashed {}", worker.stats().rows_stashed);
                println!("worker {id}: sums exact");
            }
            worker.leave().unwrap();
        }
        _ => panic!("unknown child role {role}"),
    }
}

fn cluster(tag: &str) -> String {
    format!("{tag}{}", std::process::id())
}

fn spawn(
    cluster: &str,
    role: &str,
    mode: &str,
    servers: usize,
    workers: usize,
    clocks: u64,
) -> Child {
    Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "child_process",
            "--nocapture",
            "--test-threads",
            "1",
        ])
        .env(CHILD, role)
        .env("SHM_CLUSTER", cluster)
        .env("SHM_MODE", mode)
        .env("SHM_SERVERS", servers.to_string())
        .env("SHM_WORKERS", workers.to_string())
        .env("SHM_CLOCKS", clocks.to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap()
}

/// Waits for `child` and returns its output lines; panics if it failed.
fn finish(role: &str, child: Child) -> Vec<String> {
    let out = child.wait_with_output().unwrap();
    let lines: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_owned)
        .collect();
    assert!(out.status.success(), "{role} failed: {out:?}\n{lines:#?}");
    lines
}

#[test]
fn processes_sum_exactly_and_leave_nothing_behind() {
    let cluster = cluster("sum");
    let (servers, workers, clocks) = (2, 3, 30);
    let mut children = Vec::new();
    for s in 0..servers {
        let role = format!("server:{s}");
        children.push((
            role.clone(),
            spawn(&cluster, &role, "sum", servers, workers, clocks),
        ));
    }
    for w in 0..workers {
        let role = format!("worker:{w}");
        children.push((
            role.clone(),
            spawn(&cluster, &role, "sum", servers, workers, clocks),
        ));
    }
    let mut exact = 0;
    let mut stashed = 0;
    for (role, child) in children {
        let lines = finish(&role, child);
        exact += lines.iter().filter(|l| l.ends_with("sums exact")).count();
        stashed += lines
            .iter()
            .filter_map(|l| {
                l.split_once(": stashed ")
                    .map(|(_, n)| n.parse::<u64>().unwrap())
            })
            .sum::<u64>();
    }
    assert_eq!(exact, workers, "every worker checks the sums");
    // Each long row of each clock waited in a stash that another process
    // (its server) applied in place.
    assert_eq!(
        stashed,
        2 * workers as u64 * clocks,
        "rows pushed through the stash"
    );
    let net = ShmTransport::new(&cluster).unwrap();
    assert_eq!(
        net.segments(),
        Vec::<String>::new(),
        "segments left in /dev/shm"
    );
}

/// Starts one server shard and three workers for `clocks` clocks in mode
/// kill, and kills worker 2 once it is well into the run (at clock 20).
/// Returns the server's process and the other workers'.
fn start_and_kill_worker_2(cluster: &str, clocks: u64) -> (Child, Vec<Child>) {
    let workers = 3;
    let server = spawn(cluster, "server:0", "kill", 1, workers, clocks);
    let others = [0, 1]
        .iter()
        .map(|w| spawn(cluster, &format!("worker:{w}"), "kill", 1, workers, clocks))
        .collect();
    let mut victim = spawn(cluster, "worker:2", "kill", 1, workers, clocks);
    let out = victim.stdout.take().unwrap();
    for line in BufReader::new(out).lines() {
        if line.unwrap() == "worker 2: clock 20" {
            break;
        }
    }
    victim.kill().unwrap();
    victim.wait().unwrap();
    (server, others)
}

/// Waits for the workers `start_and_kill_worker_2` left running; each
/// must reach `clocks`.
fn others_finish(others: Vec<Child>, clocks: u64) {
    for (w, child) in others.into_iter().enumerate() {
        let lines = finish(&format!("worker {w}"), child);
        assert!(
            lines
                .iter()
                .any(|l| l.ends_with(&format!("clock {clocks}"))),
            "{lines:#?}"
        );
    }
}

#[test]
fn a_killed_worker_is_declared_dead_and_its_segment_cleaned_up() {
    let cluster = cluster("kill");
    let clocks = 400;
    let (server, others) = start_and_kill_worker_2(&cluster, clocks);
    others_finish(others, clocks);
    let lines = finish("server", server);
    assert!(
        lines.iter().any(|l| l.contains("worker 2 declared dead")),
        "the server reports the dead worker: {lines:#?}"
    );
    // The killed process's mailbox is all that is left; it is stale.
    let net = ShmTransport::new(&cluster).unwrap();
    let left = net.segments();
    assert_eq!(left.len(), 1, "{left:?}");
    assert!(left[0].ends_with("laggard-worker-2"), "{left:?}");
    // So is a segment a dead process was still creating (pid 2^22 + 1 is
    // above the kernel's pid limit, so no process has it).
    let half = format!(".{}.4194305.tmp", left[0]);
    std::fs::write(format!("/dev/shm/{half}"), b"half").unwrap();
    assert_eq!(net.segments().len(), 2);
    let removed = net.remove_stale();
    assert_eq!(removed.len(), 2, "{removed:?}");
    assert_eq!(net.segments(), Vec::<String>::new());
}

#[test]
fn a_killed_worker_is_replaced_by_a_new_process_that_goes_on_from_its_clock() {
    let cluster = cluster("replace");
    let (workers, clocks) = (3, 400);
    let (server, others) = start_and_kill_worker_2(&cluster, clocks);
    // A new process for worker 2, as a launcher restarting a failed rank
    // would start it. It binds the killed process's name (its mailbox is
    // stale) and goes on from worker 2's clock, whether or not the server
    // declared it dead meanwhile.
    let replacement = spawn(&cluster, "worker:2", "kill", 1, workers, clocks);
    let lines = finish("the replacement", replacement);
    let joined: u64 = lines
        .iter()
        .find_map(|l| l.split_once("worker 2: joined at clock ").map(|(_, c)| c))
        .unwrap_or_else(|| panic!("the replacement says where it joined: {lines:#?}"))
        .parse()
        .unwrap();
    assert!(
        joined >= 20,
        "joined at clock {joined}, before the killed process got to"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.ends_with(&format!("worker 2: clock {clocks}"))),
        "{lines:#?}"
    );
    others_finish(others, clocks);
    let lines = finish("server", server);
    assert!(
        lines.iter().any(|l| l.ends_with("shard 0: replaced 1")),
        "{lines:#?}"
    );
    // Everyone left at the end: the replacement is not reported dead.
    assert!(
        !lines.iter().any(|l| l.contains("declared dead")),
        "{lines:#?}"
    );
    let net = ShmTransport::new(&cluster).unwrap();
    assert_eq!(
        net.segments(),
        Vec::<String>::new(),
        "segments left in /dev/shm"
    );
}

#[test]
fn a_crashed_peer_is_a_disconnect_within_the_liveness_interval() {
    let cluster = cluster("crash");
    let net = ShmTransport::new(&cluster).unwrap();
    let mut watcher = net.bind("watcher").unwrap();
    let mut child = spawn(&cluster, "peer", "peer", 0, 0, 0);
    let deadline = Instant::now() + Duration::from_secs(30);
    let peer = match watcher.recv(deadline).unwrap() {
        Some(Event::Connected(p)) => p,
        other => panic!("expected a connection, got {other:?}"),
    };
    match watcher.recv(deadline).unwrap() {
        Some(Event::Frame(p, f)) => assert_eq!((p, &*f), (peer, &b"alive"[..])),
        other => panic!("expected a frame, got {other:?}"),
    }
    child.kill().unwrap();
    child.wait().unwrap();
    // The default liveness interval is 50 ms; the deadline allows plenty
    // for a slow CI machine. The process sent no close: only the liveness
    // check can tell.
    match watcher
        .recv(Instant::now() + Duration::from_secs(10))
        .unwrap()
    {
        Some(Event::Disconnected(p)) => assert_eq!(p, peer),
        other => panic!("expected a disconnect, got {other:?}"),
    }
    let err = watcher
        .lend(peer, 8, Instant::now() + Duration::from_secs(1))
        .unwrap_err();
    assert!(matches!(err, Error::Disconnected { .. }), "{err:?}");
    drop(watcher);
    // The victim's mailbox is stale: rebinding its name replaces it.
    let again = net
        .bind("victim")
        .expect("a dead process's name can be bound");
    drop(again);
    assert_eq!(net.segments(), Vec::<String>::new());
}
