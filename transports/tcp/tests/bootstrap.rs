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
