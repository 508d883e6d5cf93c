//! A server shard that stops on its own (its clock hook failed, or its
//! update rule or clock hook panicked) tells its workers why: each fails
//! at once with that reason, instead of taking the closed connection for a
//! network fault, reconnecting until its deadline and reporting a timeout
//! that does not say the shard is gone. The cluster then stops its other
//! shards and passes the panic on. A shard serving until its workers are
//! done that no worker ever reaches stops too, and a worker still active
//! when its cluster is shut down hears that.

use std::panic::{self, AssertUnwindSafe};
use std::time::{Duration, Instant};

use laggard::proto::{
    FaultCode, Hello, Keys, Message, Output, Reply, Role, ServerConfig, ServerCore, ShardTables,
};
use laggard::transport::{PeerId, Transport};
use laggard::{
    Cluster, ClusterSpec, Consistency, Error, RowMut, Server, TableSpec, Update, transport,
};

/// Adds the delta, but panics on a delta of 42: a bug in a user's rule.
#[derive(Debug)]
struct PanicsOn42;

impl Update<f32> for PanicsOn42 {
    fn apply(&self, row: &mut RowMut<'_, f32>, _state: &mut RowMut<'_, f32>, delta: &[f32]) {
        assert!(delta[0] != 42.0, "the rule cannot take 42");
        row.zip_update(delta, |x, d| x + d);
    }
}

/// Two shards (keys 0..4 on shard 0, 4..8 on shard 1) and two workers
/// under BSP, with a timeout far longer than a failure takes to report:
/// a worker that had to wait it out would fail the test by its error.
fn spec() -> ClusterSpec {
    ClusterSpec::new(2, 2)
        .table(
            "w",
            TableSpec::<f32>::dense(0..8, 4)
                .update(PanicsOn42)
                .consistency(Consistency::Bsp),
        )
        .timeout(Duration::from_secs(120))
}

/// Each worker, on its own thread: pushes to both shards and pulls from
/// both for ten clocks; worker 1 pushes 42 to key `bad_key`, if any, at
/// clock 2. Returns how each worker's run ended.
fn train(cluster: &Cluster, bad_key: Option<u64>) -> Vec<laggard::Result<()>> {
    std::thread::scope(|s| {
        let runs: Vec<_> = (0..2)
            .map(|id| {
                s.spawn(move || -> laggard::Result<()> {
                    let mut worker = cluster.worker(id)?;
                    let table = worker.table::<f32>("w")?;
                    let mut rows = [0f32; 8];
                    for clock in 0..10 {
                        let bad = bad_key.filter(|_| id == 1 && clock == 2);
                        let (key, delta) = bad.map_or((0, 1.0), |key| (key, 42.0));
                        worker.push(&table, &[key, 4], &[[delta; 4], [1.0; 4]].concat())?;
                        worker.clock()?;
                        worker.pull(&table, &[0, 4], &mut rows)?;
                    }
                    worker.leave().map(drop)
                })
            })
            .collect();
        runs.into_iter().map(|r| r.join().unwrap()).collect()
    })
}

/// Asserts that `run` failed with shard `shard`'s own report containing
/// `why`.
fn told(run: &laggard::Result<()>, shard: usize, why: &str) {
    match run {
        Err(Error::Remote { peer, message }) => {
            assert_eq!(peer, &format!("server shard {shard}"));
            assert!(message.starts_with("the shard stopped: "), "{message}");
            assert!(message.contains(why), "{message}");
        }
        other => panic!("expected shard {shard}'s report of {why:?}, got {other:?}"),
    }
}

/// The text of a caught panic.
fn text(payload: Box<dyn std::any::Any + Send>) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_default()
}

#[test]
fn a_panicking_update_rule_stops_its_shard_and_its_workers_hear_why() {
    let cluster = Cluster::start(spec()).unwrap();
    let runs = train(&cluster, Some(1));
    for run in &runs {
        told(
            run,
            0,
            "it panicked while serving (the rule cannot take 42)",
        );
    }
    // Shard 1 is stopped as usual, then shard 0's panic goes on.
    let stopped = panic::catch_unwind(AssertUnwindSafe(|| cluster.shutdown()));
    assert_eq!(text(stopped.unwrap_err()), "the rule cannot take 42");
}

#[test]
fn a_cluster_dropped_after_a_shard_panicked_does_not_panic_again() {
    let cluster = Cluster::start(spec()).unwrap();
    let runs = train(&cluster, Some(5));
    for run in &runs {
        told(run, 1, "the rule cannot take 42");
    }
    // Dropping happens during unwinds too, where a second panic aborts.
    drop(cluster);
}

/// A cluster whose shard 0 runs `hook` every 3 clocks.
fn with_hook(hook: fn(u64) -> laggard::Result<()>) -> Cluster {
    Cluster::start_with(
        spec(),
        |server: &mut Server<transport::InProcessEndpoint>| {
            if server.shard() == 0 {
                server.on_clock(3, hook)?;
            }
            Ok(())
        },
    )
    .unwrap()
}

#[test]
fn a_failing_clock_hook_stops_its_shard_and_its_workers_hear_why() {
    let cluster = with_hook(|clock| {
        Err(Error::Checkpoint {
            reason: format!("no room left on the disk for clock {clock}"),
        })
    });
    let runs = train(&cluster, None);
    for run in &runs {
        told(run, 0, "no room left on the disk for clock 3");
    }
    match cluster.shutdown() {
        Err(Error::Checkpoint { reason }) => assert!(reason.contains("clock 3"), "{reason}"),
        other => panic!("expected the hook's error, got {other:?}"),
    }
}

#[test]
fn a_panicking_clock_hook_stops_its_shard_and_its_workers_hear_why() {
    let cluster = with_hook(|clock| panic!("the hook broke at clock {clock}"));
    let runs = train(&cluster, None);
    for run in &runs {
        told(
            run,
            0,
            "it panicked while serving (the hook broke at clock 3)",
        );
    }
    let stopped = panic::catch_unwind(AssertUnwindSafe(|| cluster.shutdown()));
    assert_eq!(text(stopped.unwrap_err()), "the hook broke at clock 3");
}

/// Storage for the state-machine test: one table nobody pushes to.
struct NoRows;

impl ShardTables for NoRows {
    fn len(&self) -> usize {
        1
    }
    fn check(&self, _: u32, _: Keys<'_>, _: Option<usize>) -> laggard::Result<()> {
        Ok(())
    }
    // No table here has a row limit: there is no room to promise.
    fn promise(&mut self, _: u32, _: Keys<'_>) -> laggard::Result<Vec<u64>> {
        Ok(Vec::new())
    }
    fn unpromise(&mut self, _: u32, _: &[u64]) {}
    fn apply(&mut self, _: u32, _: Keys<'_>, _: &[u8]) -> laggard::Result<()> {
        Ok(())
    }
    fn row_bytes(&self, _: u32) -> usize {
        8
    }
}

#[test]
fn a_failing_shard_tells_every_peer_and_leaves_the_closing_to_them() {
    let mut core = ServerCore::new(ServerConfig {
        shard: 0,
        workers: 2,
        schema: 7,
        dead_after: Duration::from_secs(10),
        max_payload: 1 << 20,
    });
    let now = Instant::now();
    let mut out = Vec::new();
    for (peer, role) in [
        (3, Role::Worker(0)),
        (5, Role::Worker(1)),
        (9, Role::Controller),
    ] {
        let hello = Message::Hello(Hello {
            role,
            schema: 7,
            session: peer,
        });
        core.on_frame(PeerId(peer), &hello.to_vec(), now, &mut NoRows, &mut out);
    }
    out.clear();
    assert!(core.has_peers());

    core.fail("the shard stopped: why", &mut out);
    assert!(core.is_stopped());
    let told: Vec<u64> = out
        .iter()
        .filter_map(|o| match o {
            Output::Send(peer, Reply::Fault(code, text)) => {
                assert_eq!(*code, FaultCode::ShuttingDown);
                assert_eq!(text, "the shard stopped: why");
                Some(peer.0)
            }
            Output::Stop => None,
            other => panic!("only faults and the stop, got {other:?}"),
        })
        .collect();
    assert_eq!(told, [3, 5, 9]);
    assert!(matches!(out.last(), Some(Output::Stop)));

    // The peers close their connections; the shard waits for that.
    for peer in [3, 9] {
        core.on_disconnect(PeerId(peer), now);
        assert!(core.has_peers());
    }
    core.on_disconnect(PeerId(5), now);
    assert!(!core.has_peers());
}

#[test]
fn a_shard_serving_until_its_workers_are_done_stops_if_none_ever_comes() {
    // Worker processes that all fail before connecting (a missing data
    // file, say) used to leave their server process waiting for ever.
    let spec = spec().timeout(Duration::from_millis(500));
    let net = transport::InProcess::new();
    let server = Server::new(net.bind(&spec.server_name(0)).unwrap(), &spec, 0).unwrap();
    let serving = std::thread::spawn(move || server.run_until_workers_done());
    let give_up = Instant::now() + Duration::from_secs(60);
    while !serving.is_finished() && Instant::now() < give_up {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(serving.is_finished(), "the shard still waits for a worker");
    match serving.join().unwrap() {
        Err(Error::NoResponse { what, .. }) => assert!(
            what.starts_with(
                "any of its 2 workers to connect to server shard 0 (none did: workers 0-1 are \
                 behind)"
            ),
            "{what}"
        ),
        other => panic!("expected a timeout, got {other:?}"),
    }
}

#[test]
fn a_worker_still_active_when_its_cluster_shuts_down_hears_why() {
    // It used to take the closed connections for a network fault and
    // retry them until its timeout: "server shards to answer a pull".
    let cluster = Cluster::start(spec()).unwrap();
    let mut worker = cluster.worker(0).unwrap();
    let table = worker.table::<f32>("w").unwrap();
    worker.push(&table, &[1, 5], &[1.0; 8]).unwrap();
    worker.clock().unwrap();
    let stats = cluster.shutdown().unwrap();
    assert_eq!(stats.iter().map(|s| s.pushes).sum::<u64>(), 2);
    let mut rows = [0f32; 8];
    let why = "the shard was shut down by its controller while this worker was still active";
    let pulled = worker.pull(&table, &[1, 5], &mut rows);
    let left = worker.leave().map(drop);
    for run in [pulled, left] {
        match run {
            // Whichever shard's report the worker reads first.
            Err(Error::Remote { peer, message }) => {
                assert!(
                    peer == "server shard 0" || peer == "server shard 1",
                    "{peer}"
                );
                assert_eq!(message, why);
            }
            other => panic!("expected a shard's report, got {other:?}"),
        }
    }
}
