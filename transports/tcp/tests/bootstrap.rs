//! Misconfigured jobs fail with a clear error within the deadline, never
//! hang. Each "process" here is a thread with its own `Bootstrap`.

use std::time::{Duration, Instant};

use laggard::{ClusterSpec, Error, TableSpec};
use laggard_tcp::{Bootstrap, Role};

fn spec(servers: usize, workers: usize) -> ClusterSpec {
    ClusterSpec::new(servers, workers).table("t", TableSpec::<i64>::dense(0..4, 1))
}

fn port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Runs each bootstrap's join on its own thread.
fn join_all(boots: Vec<(Bootstrap, ClusterSpec)>) -> Vec<Result<Role, Error>> {
    let handles: Vec<_> = boots
        .into_iter()
        .map(|(b, s)| std::thread::spawn(move || b.join(&s).map(|n| n.role())))
        .collect();
    handles.into_iter().map(|h| h.join().unwrap()).collect()
}

#[test]
fn a_well_formed_job_gets_its_roles() {
    let coord = format!("127.0.0.1:{}", port());
    let boots = (0..3)
        .map(|r| (Bootstrap::new(r, 3, 1, &coord), spec(1, 2)))
        .collect();
    let roles: Vec<Role> = join_all(boots).into_iter().map(Result::unwrap).collect();
    assert_eq!(roles[0], Role::Server(0));
    assert!(matches!(roles[1], Role::Worker(w) if w.0 == 0));
    assert!(matches!(roles[2], Role::Worker(w) if w.0 == 1));
}

#[test]
fn a_mismatched_world_size_is_reported_to_everyone() {
    let coord = format!("127.0.0.1:{}", port());
    let t = Duration::from_secs(10);
    let boots = vec![
        (Bootstrap::new(0, 3, 1, &coord).timeout(t), spec(1, 2)),
        (Bootstrap::new(1, 4, 1, &coord).timeout(t), spec(1, 3)),
    ];
    let started = Instant::now();
    for r in join_all(boots) {
        let err = r.unwrap_err().to_string();
        assert!(err.contains("says the job has 4 processes"), "{err}");
    }
    assert!(started.elapsed() < t);
}

#[test]
fn two_processes_claiming_one_rank_are_refused() {
    let coord = format!("127.0.0.1:{}", port());
    let t = Duration::from_secs(10);
    let boots = vec![
        (Bootstrap::new(0, 3, 1, &coord).timeout(t), spec(1, 2)),
        (Bootstrap::new(1, 3, 1, &coord).timeout(t), spec(1, 2)),
        (Bootstrap::new(1, 3, 1, &coord).timeout(t), spec(1, 2)),
    ];
    let errors: Vec<String> = join_all(boots)
        .into_iter()
        .map(|r| r.unwrap_err().to_string())
        .collect();
    for e in &errors {
        assert!(e.contains("rank 1 is claimed by two processes"), "{e}");
    }
}

#[test]
fn different_specs_are_refused() {
    let coord = format!("127.0.0.1:{}", port());
    let other = ClusterSpec::new(1, 1).table("u", TableSpec::<i64>::dense(0..4, 1));
    let boots = vec![
        (Bootstrap::new(0, 2, 1, &coord), spec(1, 1)),
        (Bootstrap::new(1, 2, 1, &coord), other),
    ];
    for r in join_all(boots) {
        let err = r.unwrap_err().to_string();
        assert!(err.contains("different cluster spec"), "{err}");
    }
}

#[test]
fn an_unreachable_coordinator_is_an_error_at_the_deadline() {
    let coord = format!("127.0.0.1:{}", port()); // nobody listens there
    let t = Duration::from_millis(500);
    let started = Instant::now();
    let err = Bootstrap::new(1, 2, 1, &coord)
        .timeout(t)
        .join(&spec(1, 1))
        .unwrap_err();
    assert!(matches!(err, Error::NoResponse { .. }), "{err:?}");
    assert!(err.to_string().contains("coordinator"), "{err}");
    assert!(started.elapsed() < t + Duration::from_secs(2));
}

#[test]
fn missing_ranks_are_named_at_the_deadline() {
    let coord = format!("127.0.0.1:{}", port());
    let err = Bootstrap::new(0, 3, 1, &coord)
        .timeout(Duration::from_millis(300))
        .join(&spec(1, 2))
        .unwrap_err()
        .to_string();
    assert!(err.contains("missing ranks [1, 2]"), "{err}");
}

#[test]
fn a_coordinator_port_in_use_is_a_clear_error() {
    let taken = std::net::TcpListener::bind("0.0.0.0:0").unwrap();
    let coord = format!("127.0.0.1:{}", taken.local_addr().unwrap().port());
    let err = Bootstrap::new(0, 2, 1, &coord)
        .join(&spec(1, 1))
        .unwrap_err()
        .to_string();
    assert!(err.contains("cannot listen for the rendezvous"), "{err}");
}

#[test]
fn a_spec_that_does_not_match_the_job_is_refused_before_joining() {
    let err = Bootstrap::new(0, 3, 1, "127.0.0.1:1")
        .join(&spec(2, 1))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("ClusterSpec::new(boot.servers(), boot.workers())"),
        "{err}"
    );
    let err = Bootstrap::new(0, 2, 2, "127.0.0.1:1")
        .join(&spec(2, 1))
        .unwrap_err()
        .to_string();
    assert!(err.contains("at least one of each role"), "{err}");
}

#[test]
fn a_worker_rank_can_join_late_and_a_server_rank_cannot() {
    // Ranks 0 and 1 are the server shards (one host: lowest ranks first),
    // ranks 2 and 3 the workers.
    let coord = format!("127.0.0.1:{}", port());
    let handles: Vec<_> = (0..4)
        .map(|r| {
            let boot = Bootstrap::new(r, 4, 2, &coord);
            std::thread::spawn(move || boot.join(&spec(2, 2)).unwrap())
        })
        .collect();
    let nodes: Vec<_> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    assert_eq!(nodes[1].role(), Role::Server(1));
    // Stray connections that say nothing hold up no late join (each used
    // to hold the coordinator for half a second: these, ten seconds).
    let strays: Vec<_> = (0..20)
        .map(|_| std::net::TcpStream::connect(&coord).unwrap())
        .collect();
    // A new process for rank 3 (worker 1), while rank 0 runs: it gets the
    // map, with itself at its new address.
    let t = Duration::from_secs(5);
    let late = Bootstrap::new(3, 4, 2, &coord)
        .timeout(t)
        .join(&spec(2, 2))
        .unwrap();
    assert!(matches!(late.role(), Role::Worker(w) if w.0 == 1));
    let me = late.members().iter().find(|m| m.rank == 3).unwrap();
    let before = nodes[3].members().iter().find(|m| m.rank == 3).unwrap();
    assert_ne!(me.addr, before.addr, "the map names the new process");
    drop(strays);
    let servers: Vec<_> = late.members().iter().filter(|m| m.rank < 2).collect();
    assert_eq!(servers, nodes[0].members()[..2].iter().collect::<Vec<_>>());
    // A server's rank cannot be taken over, and a process of another job
    // is refused as at the rendezvous.
    let err = Bootstrap::new(1, 4, 2, &coord)
        .timeout(t)
        .join(&spec(2, 2))
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("only a worker's rank can be taken over"),
        "{err}"
    );
    let err = Bootstrap::new(3, 5, 2, &coord)
        .timeout(t)
        .join(&spec(2, 3))
        .unwrap_err();
    assert!(
        err.to_string().contains("says the job has 5 processes"),
        "{err}"
    );
    // Once rank 0's node is gone, so is its coordinator.
    drop(nodes);
    let short = Duration::from_millis(300);
    let err = Bootstrap::new(2, 4, 2, &coord)
        .timeout(short)
        .join(&spec(2, 2))
        .unwrap_err();
    assert!(matches!(err, Error::NoResponse { .. }), "{err}");
}

/// Connects to the coordinator at `coord` once it listens (rank 0 is
/// starting on another thread).
fn connect_when_listening(coord: &str) -> std::net::TcpStream {
    let until = Instant::now() + Duration::from_secs(10);
    loop {
        match std::net::TcpStream::connect(coord) {
            Ok(s) => return s,
            Err(_) if Instant::now() < until => std::thread::sleep(Duration::from_millis(5)),
            Err(e) => panic!("the coordinator at {coord} never listened: {e}"),
        }
    }
}

/// Ranks 1 and 2 of a three-process job, started once `before_others`
/// (given the coordinator's address) returned what it keeps open; then
/// every rank's role.
fn join_around<T>(before_others: impl FnOnce(&str) -> T) -> (Vec<Result<Role, Error>>, T) {
    let coord = format!("127.0.0.1:{}", port());
    // Long enough that a coordinator stuck on the stray connection would
    // still be stuck when the others give up: they would fail, not wait.
    let t = Duration::from_secs(10);
    let rank0 = {
        let boot = Bootstrap::new(0, 3, 1, &coord).timeout(t);
        std::thread::spawn(move || boot.join(&spec(1, 2)).map(|n| n.role()))
    };
    let kept = before_others(&coord);
    let mut roles = join_all(
        (1..3)
            .map(|r| (Bootstrap::new(r, 3, 1, &coord).timeout(t), spec(1, 2)))
            .collect(),
    );
    roles.insert(0, rank0.join().unwrap());
    (roles, kept)
}

#[test]
fn a_silent_connection_to_the_coordinator_holds_up_nobody() {
    // A port scanner, a health check or a stray client that connects and
    // says nothing: the coordinator must not wait on it before the others.
    let (roles, silent) = join_around(connect_when_listening);
    for (rank, role) in roles.iter().enumerate() {
        assert!(role.is_ok(), "rank {rank}: {role:?}");
    }
    drop(silent);
}

#[test]
fn an_endless_line_to_the_coordinator_is_refused_and_holds_up_nobody() {
    use std::io::{Read, Write};
    let (roles, answer) = join_around(|coord| {
        let mut s = connect_when_listening(coord);
        // No line break, and the connection stays open: a coordinator
        // that read to the end of the line would buffer all of it and
        // wait for more.
        let _ = s.write_all(&vec![b'a'; 64 << 10]);
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut answer = Vec::new();
        // The coordinator answers and closes; closing with bytes unread
        // may reset the connection, which loses the answer: both are a
        // refusal.
        let _ = s.read_to_end(&mut answer);
        String::from_utf8_lossy(&answer).into_owned()
    });
    for (rank, role) in roles.iter().enumerate() {
        assert!(role.is_ok(), "rank {rank}: {role:?}");
    }
    assert!(
        answer.is_empty() || answer.contains("no line break in its first 1024 bytes"),
        "{answer}"
    );
}

#[test]
fn a_rendezvous_timeout_past_thirty_years_is_refused_not_an_overflow() {
    let err = Bootstrap::new(0, 2, 1, "127.0.0.1:1")
        .timeout(Duration::MAX)
        .join(&spec(1, 1))
        .map(|_| ())
        .unwrap_err()
        .to_string();
    assert!(err.contains("Bootstrap::timeout"), "{err}");
}

#[test]
fn an_ipv6_coordinator_address_works_end_to_end() {
    // Rank 0 listened for the rendezvous on IPv4 only, so a coordinator
    // at an IPv6 address (or a host name that resolves to one) was
    // unreachable, even for rank 0 itself.
    let Ok(probe) = std::net::TcpListener::bind("[::1]:0") else {
        eprintln!("SKIPPED: no IPv6 loopback here");
        return;
    };
    let coord = format!("[::1]:{}", probe.local_addr().unwrap().port());
    drop(probe);
    let spec = spec(1, 1);
    let handles: Vec<_> = (0..2)
        .map(|r| {
            let mut boot = Bootstrap::new(r, 2, 1, &coord).timeout(Duration::from_secs(20));
            if r == 1 {
                // Its own address given, in brackets as IPv6 often is.
                boot = boot.host("[::1]");
            }
            let spec = spec.clone();
            std::thread::spawn(move || -> laggard::Result<i64> {
                let node = boot.join(&spec)?;
                assert!(node.members().iter().all(|m| m.addr.is_ipv6()));
                match node.role() {
                    Role::Server(_) => node.run_server().map(|_| 0),
                    Role::Worker(_) => {
                        let mut worker = node.worker()?;
                        let t = worker.table::<i64>("t")?;
                        for _ in 0..3 {
                            worker.push(&t, &[1], &[2])?;
                            worker.clock()?;
                        }
                        let mut row = [0i64];
                        worker.pull(&t, &[1], &mut row)?;
                        worker.leave()?;
                        Ok(row[0])
                    }
                }
            })
        })
        .collect();
    let results: Vec<i64> = handles
        .into_iter()
        .map(|h| h.join().unwrap().unwrap())
        .collect();
    assert_eq!(results, [0, 6]);
}

#[test]
fn a_process_of_another_job_is_refused_and_the_job_goes_on() {
    // Two jobs of one program given one coordinator address (a sweep's
    // jobs on a node they share): job b's rank 1, there during job a's
    // rendezvous, must neither take job a's rank 1 nor make job a fail as
    // if its rank 1 joined twice.
    let coord = format!("127.0.0.1:{}", port());
    let t = Duration::from_secs(20);
    let start = |rank: usize, job: &'static str| {
        let coord = coord.clone();
        std::thread::spawn(move || {
            Bootstrap::new(rank, 3, 1, &coord)
                .job(job)
                .timeout(t)
                .join(&spec(1, 2))
        })
    };
    let rank0 = start(0, "a");
    let listening = Instant::now() + t;
    while std::net::TcpStream::connect(&coord).is_err() && Instant::now() < listening {
        std::thread::sleep(Duration::from_millis(5));
    }
    let stray = start(1, "b").join().unwrap();
    let err = stray.map(|n| n.role()).unwrap_err().to_string();
    assert!(err.contains("serves job a, not job b"), "{err}");
    let others = [start(1, "a"), start(2, "a")];
    let mut nodes = vec![rank0.join().unwrap()];
    nodes.extend(others.map(|h| h.join().unwrap()));
    for (rank, node) in nodes.iter().enumerate() {
        assert!(
            node.is_ok(),
            "job a's rank {rank}: {:?}",
            node.as_ref().err()
        );
    }
}

#[test]
fn rank_0_joins_its_own_coordinator_whatever_address_the_others_use() {
    // The others reach rank 0 at an address that rank 0 itself cannot
    // (a Kubernetes service without hairpin NAT, a port published out of
    // a container). Here: 192.0.2.1, an address reserved for examples,
    // which no host answers as rank 0. Rank 0 used to join through that
    // address, and the job failed at its deadline.
    let port = port();
    let t = Duration::from_secs(10);
    let boots = (0..3)
        .map(|r| {
            let coord = if r == 0 {
                format!("192.0.2.1:{port}")
            } else {
                format!("127.0.0.1:{port}")
            };
            let boot = Bootstrap::new(r, 3, 1, &coord).host("127.0.0.1").timeout(t);
            (boot, spec(1, 2))
        })
        .collect();
    let roles: Vec<Role> = join_all(boots).into_iter().map(Result::unwrap).collect();
    assert_eq!(roles[0], Role::Server(0));
}

#[test]
fn a_bootstrap_host_that_is_not_this_hosts_says_so() {
    // 192.0.2.1 is reserved for examples: no interface here has it.
    let err = Bootstrap::new(1, 2, 1, "127.0.0.1:1")
        .host("192.0.2.1")
        .join(&spec(1, 1))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("cannot listen on 192.0.2.1")
            && err.contains("must be an address of this host"),
        "{err}"
    );
}

#[test]
fn a_bootstrap_host_may_be_a_host_name() {
    // As in LAGGARD_HOST=$(hostname); it used to be refused as "not an IP
    // address".
    let coord = format!("127.0.0.1:{}", port());
    let boots = (0..2)
        .map(|r| {
            (
                Bootstrap::new(r, 2, 1, &coord).host("localhost"),
                spec(1, 1),
            )
        })
        .collect();
    for role in join_all(boots) {
        role.unwrap();
    }
    let err = Bootstrap::new(0, 2, 1, &coord)
        .host("no-such-host.invalid")
        .join(&spec(1, 1))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("neither an IP address nor a host name"),
        "{err}"
    );
}

#[test]
fn rank_0_failing_to_join_ends_its_rendezvous_at_once() {
    // Rank 0's listener cannot bind an address that is not this host's
    // (192.0.2.1 is reserved for examples). Its error used to wait for the
    // coordinator it had started, until the rendezvous deadline, and the
    // other ranks waited that long too.
    let coord = format!("127.0.0.1:{}", port());
    let t = Duration::from_secs(120);
    let rank0 = Bootstrap::new(0, 2, 1, &coord).host("192.0.2.1").timeout(t);
    let rank1 = Bootstrap::new(1, 2, 1, &coord).timeout(t);
    let (done_tx, done) = std::sync::mpsc::channel();
    for boot in [rank0, rank1] {
        let done_tx = done_tx.clone();
        std::thread::spawn(move || {
            let _ = done_tx.send(boot.join(&spec(1, 1)).map(|n| n.role()));
        });
    }
    // Far short of the deadline: both have ended by then, or the
    // rendezvous waited for it.
    let mut ended = Vec::new();
    for _ in 0..2 {
        match done.recv_timeout(Duration::from_secs(60)) {
            Ok(r) => ended.push(r.unwrap_err().to_string()),
            Err(_) => panic!("a rank still waits: {ended:?}"),
        }
    }
    assert!(
        ended
            .iter()
            .any(|e| e.contains("cannot listen on 192.0.2.1")),
        "{ended:?}"
    );
    assert!(
        ended
            .iter()
            .any(|e| e.contains("rank 0 could not take part")),
        "{ended:?}"
    );
}
