//! The runtime end to end over the in-process transport: exactness under
//! BSP, the SSP read guarantee, lazy communication, timeouts, failures and
//! bad input.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use laggard::proto::{Hello, Message, Role};
use laggard::transport::{Endpoint, Event, Transport};
use laggard::{Cluster, ClusterSpec, Consistency, Error, Placement, TableSpec, WorkerId};

/// Deltas worker `w` pushes to `key` at clock `c`: distinct per (w, c, key)
/// so any lost or doubled push shows in the sums.
fn delta(w: usize, c: u64, key: u64) -> i64 {
    (w as i64 + 1) * 1_000 + c as i64 * 10 + key as i64
}

#[test]
fn bsp_integer_sum_equals_the_sequential_result() {
    let (servers, workers, clocks, keys) = (3, 4, 12u64, 20u64);
    let spec = ClusterSpec::new(servers, workers).table(
        "t",
        TableSpec::<i64>::dense(0..keys, 3)
            .placement(Placement::RoundRobin)
            .consistency(Consistency::Bsp),
    );
    let cluster = Cluster::start(spec).unwrap();
    cluster
        .run_workers(|worker| {
            let t = worker.table::<i64>("t")?;
            let w = worker.id().0 as usize;
            let mut row = vec![0; 3 * keys as usize];
            let all: Vec<u64> = (0..keys).collect();
            for c in 0..clocks {
                worker.pull(&t, &all, &mut row)?;
                // Two pushes to the same key in one clock are coalesced.
                for key in (w as u64..keys).step_by(2) {
                    let d = delta(w, c, key);
                    worker.push(&t, &[key], &[d, 1, -d])?;
                    worker.push(&t, &[key], &[0, 1, 0])?;
                }
                worker.clock()?;
            }
            Ok(())
        })
        .unwrap();
    let mut expected = vec![0i64; 3 * keys as usize];
    for w in 0..workers {
        for c in 0..clocks {
            for key in (w as u64..keys).step_by(2) {
                let d = delta(w, c, key);
                let row = &mut expected[3 * key as usize..][..3];
                row[0] += d;
                row[1] += 2;
                row[2] -= d;
            }
        }
    }
    let mut got = vec![0i64; 3 * keys as usize];
    cluster
        .read::<i64>("t", &(0..keys).collect::<Vec<_>>(), &mut got)
        .unwrap();
    assert_eq!(got, expected);
    let stats = cluster.shutdown().unwrap();
    // One push per worker per clock per shard, plus the final flush.
    let pushes: u64 = stats.iter().map(|s| s.pushes).sum();
    assert!(pushes >= (workers as u64) * clocks * servers as u64);
    assert_eq!(stats.iter().map(|s| s.duplicate_pushes).sum::<u64>(), 0);
}

/// Rows long enough (128 KiB) that each pull response is kept in the
/// worker's cache in the frame it came in. Every BSP pull at clock `c` sees
/// all pushes of earlier clocks and some of clock `c` (a worker that got
/// there first may have pushed already), never a torn row; a second pull
/// in the clock is answered from the cache with the same row; the final
/// rows are the exact sums.
#[test]
fn long_rows_pulled_every_clock_are_exact() {
    let (workers, clocks, width) = (3, 6u64, 16 << 10);
    let spec = ClusterSpec::new(2, workers).table(
        "long",
        TableSpec::<i64>::dense(0..2, width).consistency(Consistency::Bsp),
    );
    // What row `key` may hold at clock `c`: every push of clocks below
    // `c`, plus any subset of the other workers' pushes of clock `c`.
    let allowed = |me: usize, c: u64, key: u64| -> Vec<i64> {
        let before: i64 = (0..workers)
            .flat_map(|w| (0..c).map(move |c| delta(w, c, key)))
            .sum();
        let others: Vec<i64> = (0..workers)
            .filter(|&w| w != me)
            .map(|w| delta(w, c, key))
            .collect();
        (0..1u32 << others.len())
            .map(|set| {
                let early: i64 = (0..others.len())
                    .filter(|i| set >> i & 1 == 1)
                    .map(|i| others[i])
                    .sum();
                before + early
            })
            .collect()
    };
    let cluster = Cluster::start(spec).unwrap();
    cluster
        .run_workers(|worker| {
            let long = worker.table::<i64>("long")?;
            let w = worker.id().0 as usize;
            let mut row = vec![0; width];
            let mut again = vec![0; width];
            for c in 0..clocks {
                for key in 0..2 {
                    worker.pull(&long, &[key], &mut row)?;
                    assert!(
                        allowed(w, c, key).contains(&row[0]),
                        "worker {w} at clock {c} read row {key} as {}",
                        row[0]
                    );
                    assert!(row.iter().all(|&x| x == row[0]), "row {key} torn");
                    worker.pull(&long, &[key], &mut again)?;
                    assert!(
                        again == row,
                        "the cached row {key} changed within clock {c}"
                    );
                    worker.push(&long, &[key], &vec![delta(w, c, key); width])?;
                }
                worker.clock()?;
            }
            Ok(())
        })
        .unwrap();
    let mut got = vec![0i64; 2 * width];
    cluster.read::<i64>("long", &[0, 1], &mut got).unwrap();
    for key in 0..2u64 {
        let want: i64 = (0..workers)
            .flat_map(|w| (0..clocks).map(move |c| delta(w, c, key)))
            .sum();
        assert!(
            got[key as usize * width..][..width]
                .iter()
                .all(|&x| x == want)
        );
    }
    let stats = cluster.shutdown().unwrap();
    assert_eq!(stats.iter().map(|s| s.duplicate_pushes).sum::<u64>(), 0);
}

/// Every worker at clock `c` adds 1 to element `w` of row 0; a read at clock
/// `c` under SSP(s) must then see element `w' >= c - s` for every worker
/// `w'` still running (all its clocks `<= c - s - 1` are in).
fn ssp_instrumented_run(staleness: u64, slow: usize) {
    let workers = 4;
    let clocks = 15u64;
    let spec = ClusterSpec::new(2, workers).table(
        "progress",
        TableSpec::<u64>::dense(0..1, workers).consistency(Consistency::Ssp { staleness }),
    );
    let cluster = Cluster::start(spec).unwrap();
    let violations = Mutex::new(Vec::new());
    cluster
        .run_workers(|worker| {
            let t = worker.table::<u64>("progress")?;
            let w = worker.id().0 as usize;
            let mut row = vec![0u64; workers];
            for c in 0..clocks {
                if w == slow {
                    std::thread::sleep(Duration::from_millis(2));
                }
                worker.pull(&t, &[0], &mut row)?;
                for (other, &seen) in row.iter().enumerate() {
                    // Workers still running at this point have done at
                    // least `c - s` clocks if the guarantee holds.
                    if seen + staleness < c {
                        violations.lock().unwrap().push((w, c, other, seen));
                    }
                }
                let mut d = vec![0u64; workers];
                d[w] = 1;
                worker.push(&t, &[0], &d)?;
                worker.clock()?;
            }
            Ok(())
        })
        .unwrap();
    assert_eq!(violations.into_inner().unwrap(), vec![]);
    let mut row = vec![0u64; workers];
    cluster.read::<u64>("progress", &[0], &mut row).unwrap();
    assert_eq!(row, vec![clocks; workers]);
}

#[test]
fn ssp_reads_never_miss_updates_older_than_the_bound() {
    ssp_instrumented_run(0, 3);
    ssp_instrumented_run(1, 0);
    ssp_instrumented_run(3, 2);
}

#[test]
fn each_table_keeps_its_own_consistency_model() {
    // One cluster, one clock per worker, four tables under four models: a
    // read of each table at clock `c` must see every worker's clocks up to
    // `c - s` for that table's bound (none under Async), and the reader's
    // own pushes under all of them, while a straggler holds the others
    // back. Each table's row 0 counts, in element `w`, worker `w`'s clocks.
    let (workers, clocks, slow) = (4, 12u64, 1);
    let models = [
        ("bsp", Consistency::Bsp),
        ("ssp1", Consistency::Ssp { staleness: 1 }),
        ("ssp3", Consistency::Ssp { staleness: 3 }),
        ("async", Consistency::Async),
    ];
    let spec = models
        .iter()
        .fold(ClusterSpec::new(2, workers), |spec, &(name, c)| {
            spec.table(name, TableSpec::<u64>::dense(0..1, workers).consistency(c))
        });
    let cluster = Cluster::start(spec).unwrap();
    let violations = Mutex::new(Vec::new());
    cluster
        .run_workers(|worker| {
            let tables = models
                .iter()
                .map(|&(name, c)| Ok((name, c, worker.table::<u64>(name)?)))
                .collect::<laggard::Result<Vec<_>>>()?;
            let w = worker.id().0 as usize;
            let mut row = vec![0u64; workers];
            for c in 0..clocks {
                if w == slow {
                    std::thread::sleep(Duration::from_millis(3));
                }
                for (name, model, t) in &tables {
                    worker.pull(t, &[0], &mut row)?;
                    let needed = match model {
                        Consistency::Bsp => c,
                        Consistency::Ssp { staleness } => c.saturating_sub(*staleness),
                        Consistency::Async => 0,
                    };
                    for (other, &seen) in row.iter().enumerate() {
                        let own_wrong = other == w && seen != c;
                        if seen < needed || own_wrong {
                            violations
                                .lock()
                                .unwrap()
                                .push(format!("{name}: worker {w} at clock {c} saw {seen} clocks of worker {other}"));
                        }
                    }
                    let mut d = vec![0u64; workers];
                    d[w] = 1;
                    worker.push(t, &[0], &d)?;
                }
                worker.clock()?;
            }
            Ok(())
        })
        .unwrap();
    assert_eq!(violations.into_inner().unwrap(), Vec::<String>::new());
    for (name, _) in models {
        let mut row = vec![0u64; workers];
        cluster.read::<u64>(name, &[0], &mut row).unwrap();
        assert_eq!(row, vec![clocks; workers], "table {name}");
    }
    cluster.shutdown().unwrap();
}

#[test]
fn async_rows_are_cached_within_a_clock_and_fetched_again_after_it() {
    let spec = ClusterSpec::new(1, 2).table(
        "w",
        TableSpec::<i64>::dense(0..1, 1).consistency(Consistency::Async),
    );
    let cluster = Cluster::start(spec).unwrap();
    let (mut reader, mut writer) = (cluster.worker(0).unwrap(), cluster.worker(1).unwrap());
    let (r, w) = (
        reader.table::<i64>("w").unwrap(),
        writer.table::<i64>("w").unwrap(),
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut row = [0i64];
    reader.pull(&r, &[0], &mut row).unwrap();
    assert_eq!(row, [0]);
    // Another worker's push, applied: Async never waits for it, and the
    // reader's cache answers for the rest of its clock...
    writer.push(&w, &[0], &[5]).unwrap();
    let ticket = writer.flush().unwrap();
    writer.wait_applied(&ticket, deadline).unwrap();
    reader.pull(&r, &[0], &mut row).unwrap();
    assert_eq!(row, [0]);
    // ...and its next clock fetches the row again, with the push, though
    // the writer has not ticked.
    reader.clock().unwrap();
    reader.pull(&r, &[0], &mut row).unwrap();
    assert_eq!(row, [5]);
    reader.leave().unwrap();
    writer.leave().unwrap();
}

/// Runs one worker pattern and returns the pull messages the workers sent.
fn pull_messages(consistency: Consistency) -> u64 {
    let workers = 3;
    let spec = ClusterSpec::new(2, workers).table(
        "w",
        TableSpec::<f32>::dense(0..64, 4).consistency(consistency),
    );
    let cluster = Cluster::start(spec).unwrap();
    let stats = Mutex::new(Vec::new());
    cluster
        .run_workers(|worker| {
            let t = worker.table::<f32>("w")?;
            let keys: Vec<u64> = (0..64).collect();
            let mut rows = vec![0.0; 64 * 4];
            for _ in 0..20 {
                worker.pull(&t, &keys, &mut rows)?;
                worker.push(&t, &keys, &vec![0.5; 64 * 4])?;
                worker.clock()?;
            }
            stats.lock().unwrap().push(worker.stats());
            Ok(())
        })
        .unwrap();
    let stats = stats.into_inner().unwrap();
    stats.iter().map(|s| s.pull_messages).sum()
}

#[test]
fn ssp_sends_fewer_pull_messages_than_bsp() {
    let bsp = pull_messages(Consistency::Bsp);
    let ssp = pull_messages(Consistency::Ssp { staleness: 3 });
    // BSP refreshes every clock: 20 clocks × 2 shards × 3 workers.
    assert_eq!(bsp, 20 * 2 * 3);
    assert!(ssp * 2 <= bsp, "SSP(3) sent {ssp} pull messages, BSP {bsp}");
}

#[test]
fn pushes_are_coalesced_into_one_message_per_shard_per_clock() {
    let spec = ClusterSpec::new(2, 1).table("w", TableSpec::<i64>::dense(0..10, 1));
    let cluster = Cluster::start(spec).unwrap();
    let stats = cluster
        .run_workers(|worker| {
            let t = worker.table::<i64>("w")?;
            for _ in 0..5 {
                for key in 0..10 {
                    worker.push(&t, &[key], &[1])?;
                    worker.push(&t, &[key], &[1])?;
                }
                worker.clock()?;
            }
            Ok(worker.stats())
        })
        .unwrap();
    let s = stats[0];
    assert_eq!(s.rows_pushed, 100);
    assert_eq!(s.rows_coalesced, 50);
    assert_eq!(s.push_messages, 5 * 2);
    let mut row = [0i64; 10];
    cluster
        .read::<i64>("w", &(0..10).collect::<Vec<_>>(), &mut row)
        .unwrap();
    assert_eq!(row, [10; 10]);
}

/// Worker 0 of `workers` under SSP(1) goes two clocks ahead and pulls with
/// a 50 ms deadline, with workers `1..connected` connected and idle (the
/// rest never connect): the error it gets.
fn pull_timeout_of_a_fast_worker(workers: usize, connected: usize) -> Error {
    let spec = ClusterSpec::new(1, workers).table(
        "w",
        TableSpec::<f64>::dense(0..4, 2).consistency(Consistency::Ssp { staleness: 1 }),
    );
    let cluster = Cluster::start(spec).unwrap();
    let mut fast = cluster.worker(0).unwrap();
    let idle: Vec<_> = (1..connected).map(|w| cluster.worker(w).unwrap()).collect();
    let t = fast.table::<f64>("w").unwrap();
    fast.clock().unwrap();
    fast.clock().unwrap();
    let mut row = [0.0; 2];
    let deadline = Instant::now() + Duration::from_millis(50);
    let err = fast.pull_by(&t, &[1], &mut row, deadline).unwrap_err();
    drop(idle);
    err
}

#[test]
fn a_pull_that_times_out_names_the_workers_behind() {
    let err = pull_timeout_of_a_fast_worker(2, 2);
    let text = err.to_string();
    assert!(matches!(err, Error::Timeout(_)), "{text}");
    assert!(text.contains("worker 0 at clock 2"), "{text}");
    assert!(text.contains("behind: worker 1 at clock 0"), "{text}");
}

#[test]
fn a_pull_that_times_out_says_which_workers_never_connected() {
    // Worker 2 never connects, as when its process failed at start.
    let err = pull_timeout_of_a_fast_worker(3, 2);
    let text = err.to_string();
    let Error::Timeout(timeout) = &err else {
        panic!("not a timeout: {text}");
    };
    assert_eq!(timeout.never_connected, vec![WorkerId(2)]);
    assert!(text.contains("worker 1 at clock 0 (1 short), "), "{text}");
    assert!(
        text.contains("worker 2 at clock 0 (1 short, never connected)"),
        "{text}"
    );
    assert!(
        text.contains("its process failed before it joined"),
        "{text}"
    );
}

#[test]
fn a_worker_that_disappears_is_declared_dead_and_stops_holding_others_back() {
    let spec = ClusterSpec::new(2, 2)
        .dead_after(Duration::from_millis(50))
        .table("w", TableSpec::<i32>::dense(0..4, 1));
    let cluster = Cluster::start(spec).unwrap();
    let mut alive = cluster.worker(0).unwrap();
    let crashed = cluster.worker(1).unwrap();
    drop(crashed); // no Leave: the servers see a dropped connection
    let t = alive.table::<i32>("w").unwrap();
    let mut row = [0];
    for _ in 0..3 {
        alive.clock().unwrap();
        alive.pull(&t, &[0], &mut row).unwrap();
    }
    let stats = cluster.shutdown().unwrap();
    assert!(stats.iter().all(|s| s.workers_declared_dead == 1));
}

/// A worker whose server is gone keeps trying to reconnect until
/// `dead_after`, but each call gives up at its own deadline: with
/// `dead_after` an hour and calls timing out after 200 ms, a clock and a
/// pull that need the gone server each return (the pull with an error)
/// long before the watchdog.
#[test]
fn calls_of_a_worker_whose_server_is_gone_keep_their_deadlines() {
    use laggard::transport::InProcess;
    use laggard::{Server, Worker};
    use std::sync::mpsc;

    let spec = ClusterSpec::new(1, 1)
        .table(
            "w",
            TableSpec::<i32>::dense(0..4, 1).consistency(Consistency::Bsp),
        )
        .timeout(Duration::from_millis(200))
        .dead_after(Duration::from_secs(3600));
    let net = InProcess::new();
    let mut server = Server::new(net.bind(&spec.server_name(0)).unwrap(), &spec, 0).unwrap();
    // The server stops (its endpoint goes) once the worker's first clock
    // reached it.
    server
        .on_clock(1, |_| {
            Err(Error::Transport {
                reason: "stopped by the test".into(),
            })
        })
        .unwrap();
    let serving = std::thread::spawn(move || server.run_until_workers_done().map(drop));
    let ep = net.bind(&spec.worker_name(0)).unwrap();
    let (tx, rx) = mpsc::channel();
    let working = std::thread::spawn(move || {
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut worker = Worker::connect(ep, &spec, WorkerId(0), deadline).unwrap();
        let t = worker.table::<i32>("w").unwrap();
        worker.push(&t, &[0], &[1]).unwrap();
        let clocked = worker.clock();
        tx.send(format!("clock: {clocked:?}")).unwrap();
        let mut row = [0];
        let pulled = worker.pull(&t, &[0], &mut row);
        tx.send(format!("pull: {pulled:?}")).unwrap();
    });
    let watchdog = Duration::from_secs(120);
    let clocked = rx
        .recv_timeout(watchdog)
        .expect("clock() outlived its deadline");
    assert!(clocked.starts_with("clock: Ok"), "{clocked}");
    let pulled = rx
        .recv_timeout(watchdog)
        .expect("pull() outlived its deadline");
    assert!(pulled.starts_with("pull: Err"), "{pulled}");
    working.join().unwrap();
    assert!(serving.join().unwrap().is_err());
}

#[test]
fn two_clusters_in_one_process_are_independent() {
    let make = |n: i64| {
        let spec = ClusterSpec::new(1, 1).table("w", TableSpec::<i64>::dense(0..1, 1));
        let cluster = Cluster::start(spec).unwrap();
        cluster
            .run_workers(|worker| {
                let t = worker.table::<i64>("w")?;
                worker.push(&t, &[0], &[n])?;
                worker.clock().map(drop)
            })
            .unwrap();
        cluster
    };
    let (a, b) = (make(1), make(2));
    let (mut x, mut y) = ([0], [0]);
    a.read::<i64>("w", &[0], &mut x).unwrap();
    b.read::<i64>("w", &[0], &mut y).unwrap();
    assert_eq!((x, y), ([1], [2]));
}

#[test]
fn misconfiguration_is_an_error_not_a_panic() {
    assert!(
        ClusterSpec::new(0, 1)
            .table("w", TableSpec::<f32>::dense(0..4, 1))
            .validate()
            .is_err()
    );
    assert!(ClusterSpec::new(1, 1).validate().is_err());
    let dup = ClusterSpec::new(1, 1)
        .table("w", TableSpec::<f32>::dense(0..4, 1))
        .table("w", TableSpec::<f32>::dense(0..4, 1));
    assert!(
        dup.validate()
            .unwrap_err()
            .to_string()
            .contains("used twice")
    );
    let spec = ClusterSpec::new(1, 1).table("w", TableSpec::<f32>::dense(0..4, 2));
    let cluster = Cluster::start(spec).unwrap();
    let mut worker = cluster.worker(0).unwrap();
    assert!(matches!(
        worker.table::<f32>("nope"),
        Err(Error::UnknownTable { .. })
    ));
    assert!(matches!(
        worker.table::<i64>("w"),
        Err(Error::TableType { .. })
    ));
    let t = worker.table::<f32>("w").unwrap();
    assert!(matches!(
        worker.push(&t, &[1], &[1.0]),
        Err(Error::BatchShape { .. })
    ));
    assert!(matches!(
        worker.push(&t, &[9], &[1.0, 2.0]),
        Err(Error::KeyOutOfRange { .. })
    ));
    let mut out = [0.0; 3];
    assert!(matches!(
        worker.pull(&t, &[1], &mut out),
        Err(Error::BatchShape { .. })
    ));
    assert!(matches!(
        cluster.worker(5),
        Err(Error::UnknownWorker { .. })
    ));
}

#[test]
fn a_peer_with_another_schema_is_refused_with_a_reason() {
    let spec = ClusterSpec::new(1, 1).table("w", TableSpec::<f32>::dense(0..4, 1));
    let cluster = Cluster::start(spec.clone()).unwrap();
    // Another key range, and the same table with another number of
    // workers (which the message used to call "different tables").
    let others = [
        ClusterSpec::new(1, 1).table("w", TableSpec::<f32>::dense(0..8, 1)),
        ClusterSpec::new(1, 2).table("w", TableSpec::<f32>::dense(0..4, 1)),
    ];
    for other in others {
        let ep = cluster.network().bind(&other.worker_name(0)).unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        let err = laggard::Worker::connect(ep, &other, WorkerId(0), deadline).unwrap_err();
        assert!(
            err.to_string().contains(
                "the processes were configured with different cluster specs (the numbers of \
                 servers or workers, or the tables"
            ),
            "{err}"
        );
    }
}

#[test]
fn garbage_frames_drop_the_peer_and_the_server_keeps_serving() {
    let spec = ClusterSpec::new(1, 1).table("w", TableSpec::<i64>::dense(0..4, 1));
    let cluster = Cluster::start(spec.clone()).unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut rogue = cluster.network().bind("rogue").unwrap();
    let server = rogue.connect(&spec.server_name(0), deadline).unwrap();
    for junk in [&b"not a frame"[..], &[0u8; 64][..]] {
        let mut buf = rogue.lend(server, junk.len(), deadline).unwrap();
        buf.copy_from_slice(junk);
        rogue.send(buf).unwrap();
    }
    // The server answers with a fault and closes the connection.
    let mut closed = false;
    while let Some(event) = rogue.recv(deadline).unwrap() {
        if let Event::Disconnected(_) = event {
            closed = true;
            break;
        }
    }
    assert!(closed);
    // A rogue claiming to be worker 0 with the right schema, then a second
    // connection claiming the same worker: refused.
    let mut first = cluster.network().bind("first").unwrap();
    let peer = first.connect(&spec.server_name(0), deadline).unwrap();
    let hello = Message::Hello(Hello {
        role: Role::Worker(0),
        schema: spec.fingerprint(),
        session: 1,
    })
    .to_vec();
    let mut buf = first.lend(peer, hello.len(), deadline).unwrap();
    buf.copy_from_slice(&hello);
    first.send(buf).unwrap();
    assert!(matches!(
        first.recv(deadline).unwrap(),
        Some(Event::Frame(..))
    ));
    let ep = cluster.network().bind(&spec.worker_name(0)).unwrap();
    // The refusal comes at once; the deadline only bounds a hang. (At
    // 200 ms, a loaded machine let it pass before the welcome's wait began.)
    let bound = Instant::now() + Duration::from_secs(10);
    let err = laggard::Worker::connect(ep, &spec, WorkerId(0), bound).unwrap_err();
    assert!(err.to_string().contains("already connected"), "{err}");
    drop(first);
    // The server still serves a proper worker once the rogue is gone.
    let mut row = [0i64];
    let mut worker = cluster.worker(0);
    for _ in 0..50 {
        if worker.is_ok() {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
        worker = cluster.worker(0);
    }
    let mut worker = worker.unwrap();
    let t = worker.table::<i64>("w").unwrap();
    worker.push(&t, &[1], &[5]).unwrap();
    worker.clock().unwrap();
    worker.pull(&t, &[1], &mut row).unwrap();
    assert_eq!(row, [5]);
    let stats = cluster.shutdown().unwrap();
    assert!(stats[0].peers_dropped >= 2);
}

#[test]
fn non_blocking_pull_and_clock_tickets() {
    let spec = ClusterSpec::new(2, 1).table("w", TableSpec::<u64>::sparse(2));
    let cluster = Cluster::start(spec).unwrap();
    let mut worker = cluster.worker(0).unwrap();
    let t = worker.table::<u64>("w").unwrap();
    worker.push(&t, &[10, 1 << 40], &[1, 2, 3, 4]).unwrap();
    let ticket = worker.start_clock().unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    worker.wait_applied(&ticket, deadline).unwrap();
    let pull = worker.start_pull(&t, &[1 << 40, 10, 99]).unwrap();
    let mut out = [0u64; 6];
    worker.finish_pull(pull, &mut out, deadline).unwrap();
    assert_eq!(out, [3, 4, 1, 2, 0, 0]);
    worker.leave().unwrap();
}

#[test]
fn ssp_reads_include_the_workers_own_pushes() {
    // Under SSP(3) a cached row may miss 3 clocks of others' pushes, but
    // never the worker's own (read-my-writes), for linear rules: Sum, and
    // Sgd with a constant rate. Each worker pushes to a key of its own.
    let spec = ClusterSpec::new(2, 2)
        .table(
            "sum",
            TableSpec::<i64>::dense(0..2, 2).consistency(Consistency::Ssp { staleness: 3 }),
        )
        .table(
            "sgd",
            TableSpec::<f32>::dense(0..2, 4)
                .update(laggard::Sgd::new(0.5))
                .consistency(Consistency::Ssp { staleness: 3 }),
        )
        .table("bsp", TableSpec::<i64>::dense(0..2, 1));
    let cluster = Cluster::start(spec).unwrap();
    let stats = cluster
        .run_workers(|worker| {
            let sum = worker.table::<i64>("sum")?;
            let sgd = worker.table::<f32>("sgd")?;
            let bsp = worker.table::<i64>("bsp")?;
            let key = u64::from(worker.id().0);
            let (mut counts, mut x) = ([0i64; 2], [0f32; 4]);
            for t in 0..12i64 {
                worker.pull(&sum, &[key], &mut counts)?;
                assert_eq!(counts, [t, 2 * t], "worker {key} at clock {t}");
                worker.pull(&sgd, &[key], &mut x)?;
                // Gradient descent on (x - 1)^2 / 2, every step seen.
                let want = 1.0 - 0.5f32.powi(t as i32);
                assert!(
                    x.iter().all(|v| (v - want).abs() < 1e-5),
                    "worker {key} at clock {t}: {x:?}, not {want}"
                );
                worker.push(&sum, &[key], &[1, 2])?;
                let grad = x.map(|v| v - 1.0);
                worker.push(&sgd, &[key], &grad)?;
                // A pull in the same clock sees the push too, also where
                // the cached row could not answer at the next clock (BSP).
                worker.pull(&sum, &[key], &mut counts)?;
                assert_eq!(counts, [t + 1, 2 * (t + 1)]);
                let mut one = [0i64];
                worker.pull(&bsp, &[key], &mut one)?;
                assert_eq!(one, [t]);
                worker.push(&bsp, &[key], &[1])?;
                worker.pull(&bsp, &[key], &mut one)?;
                assert_eq!(one, [t + 1], "worker {key} at clock {t}, BSP");
                worker.clock()?;
            }
            Ok(worker.stats())
        })
        .unwrap();
    // The rows were answered from the cache, with the pushes replayed.
    assert!(
        stats
            .iter()
            .any(|s| s.rows_from_cache > 0 && s.own_pushes_replayed > 0)
    );
    cluster.shutdown().unwrap();
}

#[test]
fn assign_pushes_of_one_clock_leave_the_last_not_their_sum() {
    // Pushes to a key within a clock are coalesced before they are sent:
    // summed for gradient rules, the later replacing the earlier for
    // Assign, as pushing them one by one to the table would leave it.
    let spec = ClusterSpec::new(1, 1)
        .table(
            "set",
            TableSpec::<i64>::dense(0..2, 2).update(laggard::Assign),
        )
        .table("sum", TableSpec::<i64>::dense(0..2, 2));
    let cluster = Cluster::start(spec).unwrap();
    let mut worker = cluster.worker(0).unwrap();
    let (set, sum) = (
        worker.table::<i64>("set").unwrap(),
        worker.table::<i64>("sum").unwrap(),
    );
    for t in [&set, &sum] {
        worker.push(t, &[1], &[5, 6]).unwrap();
        worker.push(t, &[1], &[7, -1]).unwrap();
    }
    worker.clock().unwrap();
    let mut row = [0i64; 2];
    worker.pull(&set, &[1], &mut row).unwrap();
    assert_eq!(row, [7, -1]);
    worker.pull(&sum, &[1], &mut row).unwrap();
    assert_eq!(row, [12, 5]);
    worker.leave().unwrap();
}

#[test]
fn a_ticket_waits_for_every_shard_of_a_cluster_of_many() {
    // More shards than a ticket keeps inline.
    let shards = 7;
    let spec = ClusterSpec::new(shards, 1).table(
        "w",
        TableSpec::<i64>::dense(0..shards as u64, 1)
            .placement(Placement::RoundRobin)
            .consistency(Consistency::Async),
    );
    let cluster = Cluster::start(spec).unwrap();
    let mut worker = cluster.worker(0).unwrap();
    let t = worker.table::<i64>("w").unwrap();
    let keys: Vec<u64> = (0..shards as u64).collect();
    let deadline = Instant::now() + Duration::from_secs(30);
    for round in 1..=3 {
        let deltas: Vec<i64> = keys.iter().map(|&k| k as i64 + 1).collect();
        worker.push(&t, &keys, &deltas).unwrap();
        let ticket = worker.flush().unwrap();
        worker.wait_applied(&ticket, deadline).unwrap();
        let mut rows = vec![0i64; shards];
        cluster.read("w", &keys, &mut rows).unwrap();
        let want: Vec<i64> = keys.iter().map(|&k| round * (k as i64 + 1)).collect();
        assert_eq!(rows, want, "after round {round}");
    }
    worker.leave().unwrap();
}

#[test]
fn an_answer_longer_than_the_largest_frame_is_refused_with_a_fault() {
    // 10,000 `f32` per row: two rows' answer (80,048 bytes) does not fit
    // the 64 KiB frames of this network, one row does.
    let spec = ClusterSpec::new(1, 1).table("w", TableSpec::<f32>::dense(0..2, 10_000));
    let net = laggard::transport::InProcess::with_capacity(64 << 10);
    let server = laggard::Server::new(net.bind(&spec.server_name(0)).unwrap(), &spec, 0).unwrap();
    let serving = std::thread::spawn(move || server.run_until_workers_done());
    let deadline = Instant::now() + Duration::from_secs(10);
    // A client of the protocol that does not split its pulls (a `Worker`
    // does): the server refuses the answer with a fault and closes.
    let mut client = net.bind(&spec.worker_name(0)).unwrap();
    let server_peer = client.connect(&spec.server_name(0), deadline).unwrap();
    let send = |client: &mut laggard::transport::InProcessEndpoint, msg: Message<'_>| {
        let bytes = msg.to_vec();
        let mut buf = client.lend(server_peer, bytes.len(), deadline).unwrap();
        buf.copy_from_slice(&bytes);
        client.send(buf).unwrap();
    };
    send(
        &mut client,
        Message::Hello(Hello {
            role: Role::Worker(0),
            schema: spec.fingerprint(),
            session: 1,
        }),
    );
    send(
        &mut client,
        Message::PullRequest(laggard::proto::PullRequest {
            req: 1,
            min_clock: 0,
            timeout_ms: 1000,
            table: 0,
            keys: laggard::proto::Keys::Native(&[0, 1]),
        }),
    );
    let mut fault = None;
    loop {
        match client.recv(deadline).unwrap() {
            Some(Event::Frame(_, frame)) => {
                if let Message::Fault(f) = laggard::proto::decode(&frame, 1 << 20).unwrap() {
                    fault = Some(f.text.to_owned());
                }
            }
            Some(Event::Disconnected(_)) => break,
            other => panic!("expected a fault and a close, got {other:?}"),
        }
    }
    let fault = fault.expect("no fault before the close");
    assert!(fault.contains("80048-byte frame"), "{fault}");
    assert!(fault.contains("fewer keys"), "{fault}");
    drop(client);
    // A worker, which splits such a pull, gets both rows.
    let ep = net.bind(&spec.worker_name(0)).unwrap();
    let mut worker = laggard::Worker::connect(ep, &spec, WorkerId(0), deadline).unwrap();
    let w = worker.table::<f32>("w").unwrap();
    worker.push(&w, &[1], &[2.0; 10_000]).unwrap();
    worker.clock().unwrap();
    let mut rows = vec![0f32; 20_000];
    worker.pull(&w, &[0, 1], &mut rows).unwrap();
    assert!(rows[..10_000].iter().all(|&x| x == 0.0));
    assert!(rows[10_000..].iter().all(|&x| x == 2.0));
    worker.leave().unwrap();
    serving.join().unwrap().unwrap();
}

#[test]
fn a_table_handle_or_ticket_of_another_worker_is_refused() {
    // Cluster `a`'s table 0 has the shape of `b`'s: its handle used to
    // push into `b`'s other table unnoticed; its table 1, which `b` lacks,
    // made `push` panic (an index out of bounds).
    let a = Cluster::start(
        ClusterSpec::new(1, 1)
            .table("x", TableSpec::<f32>::dense(0..8, 4))
            .table("y", TableSpec::<f32>::dense(0..8, 16)),
    )
    .unwrap();
    let b_spec = ClusterSpec::new(1, 1).table("z", TableSpec::<f32>::dense(0..8, 4));
    let b = Cluster::start(b_spec.clone()).unwrap();
    let (wa, mut wb) = (a.worker(0).unwrap(), b.worker(0).unwrap());
    let (x, y) = (wa.table::<f32>("x").unwrap(), wa.table::<f32>("y").unwrap());
    let foreign = |r: laggard::Result<()>, index| match r {
        Err(e @ Error::ForeignTable { .. }) => {
            assert!(e.to_string().contains(&format!("table #{index} ")), "{e}");
            assert!(e.to_string().contains("another cluster"), "{e}");
        }
        other => panic!("expected ForeignTable, got {other:?}"),
    };
    foreign(wb.push(&x, &[1], &[1.0; 4]), 0);
    foreign(wb.push(&y, &[1], &[1.0; 16]), 1);
    foreign(wb.pull(&x, &[1], &mut [0.0; 4]), 0);
    foreign(wb.pull_with(&y, 1, |_| ()), 1);
    foreign(wb.start_pull(&x, &[1]).map(drop), 0);
    // Nor may a pull another cluster's worker started be finished here.
    let mut wa = wa;
    let started = wa.start_pull(&y, &[1]).unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    assert!(matches!(
        wb.finish_pull(started, &mut [0.0; 16], deadline),
        Err(Error::ForeignTicket { kind: "pull" })
    ));
    // Nothing reached `b`'s table; its own handle works.
    let z = wb.table::<f32>("z").unwrap();
    wb.clock().unwrap();
    let mut row = [9.0f32; 4];
    wb.pull(&z, &[1], &mut row).unwrap();
    assert_eq!(row, [0.0; 4]);
    // A cluster of the same spec has the same tables: its handles fit.
    let c = Cluster::start(b_spec).unwrap();
    let mut wc = c.worker(0).unwrap();
    wc.push(&z, &[1], &[1.0; 4]).unwrap();
    // But tickets are their worker's own: another's sequence numbers and
    // request ids would name this one's pushes and pulls.
    let pushed = wc.flush().unwrap();
    let pulling = wc.start_pull(&z, &[1]).unwrap();
    match wb.wait_applied(&pushed, deadline) {
        Err(e @ Error::ForeignTicket { kind: "push" }) => {
            assert!(e.to_string().contains("issued by another worker"), "{e}")
        }
        other => panic!("expected ForeignTicket, got {other:?}"),
    }
    assert!(matches!(
        wb.finish_pull(pulling, &mut [0.0; 4], deadline),
        Err(Error::ForeignTicket { kind: "pull" })
    ));
    wc.wait_applied(&pushed, deadline).unwrap();
    drop((wa, wb, wc));
    for cluster in [a, b, c] {
        cluster.shutdown().unwrap();
    }
}
