//! Checkpoints: rows and update state saved and restored exactly, training
//! that resumes from one as if it had not stopped, and every kind of bad
//! checkpoint an error.

use std::sync::Arc;
use std::thread;

use laggard::checkpoint::{self, Foreign, Loaded};
use laggard::{
    Adagrad, Adam, Cluster, ClusterSpec, Consistency, Element, Error, Init, Placement, Server, Sgd,
    Table, TableSpec,
};
use proptest::prelude::*;

/// Every row the table stores, with its state, sorted by key.
fn rows<T: Element>(table: &Table<T>) -> Vec<(u64, Vec<T>, Vec<T>)> {
    let mut all = Vec::new();
    for shard in 0..table.shard_map().shards() {
        table
            .visit_shard(shard, |r| {
                all.push((r.key, r.values.to_vec(), r.state.to_vec()))
            })
            .unwrap();
    }
    all.sort_by_key(|r| r.0);
    all
}

fn saved<T: Element>(table: &Table<T>) -> Vec<u8> {
    let mut bytes = Vec::new();
    let s = checkpoint::save(table, &mut bytes).unwrap();
    assert_eq!(s.bytes, bytes.len() as u64);
    bytes
}

fn checkpoint_error<V: std::fmt::Debug>(r: laggard::Result<V>) -> String {
    match r {
        Err(Error::Checkpoint { reason }) => reason,
        other => panic!("expected a checkpoint error, got {other:?}"),
    }
}

/// Saves `trained`, loads it into `fresh()`, checks every row and its
/// state came back, then pushes the same deltas to both: the restored
/// table must apply them exactly as the original does (the update rule's
/// state came along).
fn round_trip(spec: impl Fn() -> TableSpec<f32>, keys: &[u64]) {
    let trained = Table::new(spec()).unwrap();
    let width = trained.width();
    for (i, &key) in keys.iter().enumerate() {
        let delta: Vec<f32> = (0..width)
            .map(|j| (i * 7 + j) as f32 * 0.01 - 0.3)
            .collect();
        trained.push(key, &delta).unwrap();
        trained.push(key, &delta).unwrap();
    }
    let bytes = saved(&trained);
    let resumed = Table::new(spec()).unwrap();
    let loaded = checkpoint::load(&resumed, &bytes[..], Foreign::Refuse).unwrap();
    assert_eq!(loaded.skipped, 0);
    assert_eq!(loaded.restored as usize, trained.rows());
    assert_eq!(rows(&resumed), rows(&trained));
    let delta = vec![0.25f32; width];
    for &key in keys {
        trained.push(key, &delta).unwrap();
        resumed.push(key, &delta).unwrap();
    }
    assert_eq!(rows(&resumed), rows(&trained));
}

#[test]
fn narrow_wide_dense_and_sparse_rows_come_back_with_their_state() {
    // Narrow rows (atomic cells) with Adam's moments and step count.
    round_trip(
        || {
            TableSpec::<f32>::dense(0..20, 3)
                .shards(3)
                .update(Adam::new(0.1))
        },
        &[0, 5, 19],
    );
    // Wide rows (plain memory) with momentum and a varying learning rate.
    round_trip(
        || {
            TableSpec::<f32>::dense(10..14, 300).update(
                Sgd::with_schedule(laggard::Schedule::InverseSqrt { sigma: 0.5 }).momentum(0.9),
            )
        },
        &[10, 13],
    );
    // Sparse rows, created by the load, with Adagrad's sums.
    round_trip(
        || {
            TableSpec::<f32>::sparse(4)
                .shards(4)
                .placement(Placement::Hash)
                .init(Init::Uniform {
                    low: -1.0,
                    high: 1.0,
                    seed: 3,
                })
                .update(Adagrad::new(0.1))
        },
        &[u64::MAX, 0, 1 << 40, 12345],
    );
}

#[test]
fn an_empty_sparse_table_round_trips() {
    let t = Table::new(TableSpec::<i64>::sparse(2)).unwrap();
    let bytes = saved(&t);
    let fresh = Table::new(TableSpec::<i64>::sparse(2)).unwrap();
    let loaded = checkpoint::load(&fresh, &bytes[..], Foreign::Refuse).unwrap();
    assert_eq!(loaded.restored, 0);
    assert_eq!(fresh.rows(), 0);
}

fn small() -> (Table<i32>, Vec<u8>) {
    let spec = || TableSpec::<i32>::dense(0..3, 2);
    let t = Table::new(spec()).unwrap();
    t.push(1, &[5, -5]).unwrap();
    let bytes = saved(&t);
    (Table::new(spec()).unwrap(), bytes)
}

#[test]
fn every_truncation_is_an_error_that_says_so() {
    let (fresh, bytes) = small();
    for len in 0..bytes.len() {
        let reason = checkpoint_error(checkpoint::load(&fresh, &bytes[..len], Foreign::Refuse));
        assert!(reason.contains("truncated"), "cut at {len}: {reason}");
        let verified = checkpoint_error(checkpoint::verify(&fresh, &bytes[..len]));
        assert_eq!(verified, reason, "cut at {len}");
    }
}

#[test]
fn every_flipped_bit_is_found() {
    let (fresh, bytes) = small();
    for at in 0..bytes.len() {
        for bit in 0..8 {
            let mut bad = bytes.clone();
            bad[at] ^= 1 << bit;
            checkpoint_error(checkpoint::load(&fresh, &bad[..], Foreign::Refuse));
            checkpoint_error(checkpoint::verify(&fresh, &bad[..]));
        }
    }
}

#[test]
fn verify_finds_a_bad_checkpoint_before_any_row_changes() {
    let spec = || TableSpec::<f32>::dense(0..3, 2).update(Sgd::new(1.0).momentum(0.5));
    let trained = Table::new(spec()).unwrap();
    for key in 0..3 {
        trained.push(key, &[1.0, 2.0]).unwrap();
    }
    let good = saved(&trained);
    let fresh = Table::new(spec()).unwrap();
    assert_eq!(checkpoint::verify(&fresh, &good[..]).unwrap().rows, 3);
    // A bit of the last row's values flipped: `load` restores the rows
    // before it and then finds the checksum wrong; `verify` finds it and
    // changes nothing.
    let mut bad = good.clone();
    let last_value = bad.len() - 8 - 8 - 1 - 4;
    bad[last_value] ^= 1;
    let reason = checkpoint_error(checkpoint::verify(&fresh, &bad[..]));
    assert!(reason.contains("checksum"), "{reason}");
    assert_eq!(rows(&fresh), rows(&Table::new(spec()).unwrap()));
    checkpoint_error(checkpoint::load(&fresh, &bad[..], Foreign::Refuse));
    assert_ne!(rows(&fresh), rows(&Table::new(spec()).unwrap()));
    // The good file then loads whole.
    checkpoint::load(&fresh, &good[..], Foreign::Refuse).unwrap();
    assert_eq!(rows(&fresh), rows(&trained));
}

#[test]
fn bytes_after_the_end_are_an_error() {
    let (fresh, mut bytes) = small();
    bytes.push(0);
    let reason = checkpoint_error(checkpoint::load(&fresh, &bytes[..], Foreign::Refuse));
    assert!(reason.contains("follow the end"), "{reason}");
}

/// A load to try, in a table of some other shape.
type LoadCase<'a> = Box<dyn Fn() -> laggard::Result<Loaded> + 'a>;

#[test]
fn a_checkpoint_of_another_table_shape_is_refused_before_any_row() {
    let bytes =
        saved(&Table::new(TableSpec::<f32>::dense(0..4, 2).update(Adam::new(0.1))).unwrap());
    let cases: Vec<(LoadCase<'_>, &str)> = vec![
        (
            Box::new(|| {
                let t = Table::new(TableSpec::<i32>::dense(0..4, 2)).unwrap();
                checkpoint::load(&t, &bytes[..], Foreign::Refuse)
            }),
            "holds f32 rows but the table holds i32",
        ),
        (
            Box::new(|| {
                let t =
                    Table::new(TableSpec::<f32>::dense(0..4, 3).update(Adam::new(0.1))).unwrap();
                checkpoint::load(&t, &bytes[..], Foreign::Refuse)
            }),
            "rows have 2 elements but the table's have 3",
        ),
        (
            Box::new(|| {
                let t = Table::new(TableSpec::<f32>::dense(0..4, 2)).unwrap();
                checkpoint::load(&t, &bytes[..], Foreign::Refuse)
            }),
            "carry 5 update-state elements but the table's update rule keeps 0",
        ),
        (
            Box::new(|| {
                let t = Table::new(TableSpec::<f32>::dense(0..4, 2)).unwrap();
                checkpoint::load(
                    &t,
                    &b"not a checkpoint at all, not at all"[..],
                    Foreign::Refuse,
                )
            }),
            "not a laggard checkpoint",
        ),
    ];
    for (load, says) in cases {
        let reason = checkpoint_error(load());
        assert!(reason.contains(says), "{reason:?} should say {says:?}");
    }
    let mut newer = bytes.clone();
    newer[8] = 3;
    let t = Table::new(TableSpec::<f32>::dense(0..4, 2).update(Adam::new(0.1))).unwrap();
    let reason = checkpoint_error(checkpoint::load(&t, &newer[..], Foreign::Refuse));
    assert!(reason.contains("version 3"), "{reason}");
    assert_eq!(
        rows(&t),
        rows(&Table::new(TableSpec::<f32>::dense(0..4, 2).update(Adam::new(0.1))).unwrap())
    );
}

#[test]
fn a_row_outside_the_table_is_an_error_naming_the_key() {
    let bytes = saved(&Table::new(TableSpec::<u64>::dense(0..10, 1)).unwrap());
    let smaller = Table::new(TableSpec::<u64>::dense(0..5, 1)).unwrap();
    let reason = checkpoint_error(checkpoint::load(&smaller, &bytes[..], Foreign::Skip));
    assert!(
        reason.contains("key 5") && reason.contains("outside"),
        "{reason}"
    );
}

#[test]
fn shard_parts_refuse_or_skip_foreign_rows_and_reshard() {
    let spec = |shards| TableSpec::<i64>::dense(0..30, 2).shards(shards);
    let whole = Table::new(spec(2)).unwrap();
    for key in 0..30 {
        whole.push(key, &[key as i64, 1]).unwrap();
    }
    // The checkpoints two server shards would write.
    let files: Vec<Vec<u8>> = (0..2)
        .map(|shard| {
            let part = Table::for_shard(spec(2), shard).unwrap();
            whole
                .visit_shard(shard, |r| part.restore_row(r).unwrap())
                .unwrap();
            saved(&part)
        })
        .collect();
    let other = Table::for_shard(spec(2), 1).unwrap();
    let reason = checkpoint_error(checkpoint::load(&other, &files[0][..], Foreign::Refuse));
    assert!(reason.contains("belongs to server shard 0"), "{reason}");
    // Three shards now: each loads both files and keeps its own rows.
    let mut restored = 0;
    let mut row = [0i64; 2];
    for shard in 0..3 {
        let part = Table::for_shard(spec(3), shard).unwrap();
        let mut skipped = 0;
        for file in &files {
            let l = checkpoint::load(&part, &file[..], Foreign::Skip).unwrap();
            restored += l.restored;
            skipped += l.skipped;
        }
        assert_eq!(skipped, 30 - part.rows() as u64);
        for key in (0..30).filter(|&k| part.shard_map().shard_of(k).unwrap() == shard) {
            part.pull(key, &mut row).unwrap();
            assert_eq!(row, [key as i64, 1]);
        }
    }
    assert_eq!(restored, 30);
}

#[test]
fn a_failing_writer_is_an_error() {
    struct Full;
    impl std::io::Write for Full {
        fn write(&mut self, _: &[u8]) -> std::io::Result<usize> {
            Err(std::io::Error::other("disk full"))
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let t = Table::new(TableSpec::<f32>::dense(0..1000, 64)).unwrap();
    match checkpoint::save(&t, Full) {
        Err(Error::Checkpoint { reason }) => assert!(reason.contains("disk full"), "{reason}"),
        other => panic!("expected a checkpoint error, got {other:?}"),
    }
}

#[test]
fn restore_row_checks_width_state_and_key() {
    let t = Table::new(TableSpec::<f32>::dense(0..4, 2).update(Adam::new(0.1))).unwrap();
    let state = [0.0f32; 5];
    let row = |key, values: &'static [f32], state| laggard::RowSnapshot { key, values, state };
    assert!(matches!(
        t.restore_row(row(0, &[1.0], &state)),
        Err(Error::WidthMismatch {
            expected: 2,
            got: 1
        })
    ));
    assert!(matches!(
        t.restore_row(row(0, &[1.0, 2.0], &state[..4])),
        Err(Error::StateMismatch {
            expected: 5,
            got: 4
        })
    ));
    assert!(matches!(
        t.restore_row(row(4, &[1.0, 2.0], &state)),
        Err(Error::KeyOutOfRange { key: 4, .. })
    ));
    t.restore_row(row(3, &[1.0, 2.0], &state)).unwrap();
    let mut out = [0.0f32; 2];
    t.pull(3, &mut out).unwrap();
    assert_eq!(out, [1.0, 2.0]);
}

/// Saved while another thread pushes: every row is saved as it was
/// between two pushes (each push adds 1 to all of a wide row's elements),
/// never torn.
#[test]
fn a_checkpoint_taken_during_pushes_has_no_torn_rows() {
    let spec = || TableSpec::<i64>::dense(0..8, 512);
    let table = Arc::new(Table::new(spec()).unwrap());
    let pusher = {
        let table = table.clone();
        thread::spawn(move || {
            let ones = vec![1i64; 512];
            for i in 0..4000u64 {
                table.push(i % 8, &ones).unwrap();
            }
        })
    };
    let mut files = Vec::new();
    while !pusher.is_finished() || files.is_empty() {
        files.push(saved(&table));
    }
    pusher.join().unwrap();
    for file in files {
        let t = Table::new(spec()).unwrap();
        checkpoint::load(&t, &file[..], Foreign::Refuse).unwrap();
        for (key, values, _) in rows(&t) {
            assert!(values.iter().all(|&v| v == values[0]), "row {key} torn");
        }
    }
}

/// A cluster trains five clocks and its shards save their parts; a new
/// cluster loads them and trains five more: its rows end exactly where
/// those of a cluster that trained all ten clocks at once do.
#[test]
fn a_cluster_resumes_from_its_servers_checkpoints() {
    let spec = || {
        ClusterSpec::new(2, 1).table(
            "w",
            TableSpec::<f64>::dense(0..16, 4)
                .update(Adam::new(0.05))
                .consistency(Consistency::Bsp),
        )
    };
    let train = |cluster: &Cluster, from: u64, to: u64| {
        cluster
            .run_workers(|worker| {
                let w = worker.table::<f64>("w")?;
                let keys: Vec<u64> = (0..16).collect();
                let mut rows = vec![0.0; 64];
                for step in from..to {
                    worker.pull(&w, &keys, &mut rows)?;
                    let grads: Vec<f64> = rows
                        .iter()
                        .enumerate()
                        .map(|(i, x)| x - (i as f64 + step as f64) * 0.1)
                        .collect();
                    worker.push(&w, &keys, &grads)?;
                    worker.clock()?;
                }
                Ok(())
            })
            .unwrap();
    };
    let read = |cluster: &Cluster| {
        let mut out = vec![0.0f64; 64];
        cluster
            .read::<f64>("w", &(0..16).collect::<Vec<_>>(), &mut out)
            .unwrap();
        out
    };
    let first = Cluster::start(spec()).unwrap();
    train(&first, 0, 5);
    let files: Vec<Vec<u8>> = (0..2)
        .map(|shard| saved(&first.server_table::<f64>("w", shard).unwrap()))
        .collect();
    let second = Cluster::start(spec()).unwrap();
    for (shard, file) in files.iter().enumerate() {
        let part = second.server_table::<f64>("w", shard).unwrap();
        checkpoint::load(&part, &file[..], Foreign::Refuse).unwrap();
    }
    assert_eq!(read(&second), read(&first));
    train(&second, 5, 10);
    let straight = Cluster::start(spec()).unwrap();
    train(&straight, 0, 10);
    assert_eq!(read(&second), read(&straight));
    assert_ne!(read(&second), read(&first));
    assert!(matches!(
        first.server_table::<f64>("w", 2),
        Err(Error::ShardOutOfRange {
            shard: 2,
            shards: 2
        })
    ));
    assert!(matches!(
        first.server_table::<f32>("w", 0),
        Err(Error::TableType { .. })
    ));
    for cluster in [first, second, straight] {
        cluster.shutdown().unwrap();
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Any pushes to a sparse Adam table: the checkpoint restores every
    /// row and its state bit for bit.
    #[test]
    fn any_pushed_table_round_trips(
        pushes in prop::collection::vec((0u64..40, prop::collection::vec(-10.0f32..10.0, 3)), 0..60),
        shards in 1usize..4,
    ) {
        let spec = || TableSpec::<f32>::sparse(3).shards(shards).update(Adam::new(0.01));
        let t = Table::new(spec()).unwrap();
        for (key, delta) in &pushes {
            t.push(*key, delta).unwrap();
        }
        let bytes = saved(&t);
        let fresh = Table::new(spec()).unwrap();
        let loaded = checkpoint::load(&fresh, &bytes[..], Foreign::Refuse).unwrap();
        prop_assert_eq!(loaded.restored as usize, t.rows());
        let bits = |rows: Vec<(u64, Vec<f32>, Vec<f32>)>| -> Vec<(u64, Vec<u32>)> {
            rows.into_iter()
                .map(|(k, v, s)| (k, v.iter().chain(&s).map(|x| x.to_bits()).collect()))
                .collect()
        };
        prop_assert_eq!(bits(rows(&fresh)), bits(rows(&t)));
    }
}

/// Saved snapshots of one server shard, by the clock they were taken at.
type Snapshots = Arc<std::sync::Mutex<Vec<(u64, Vec<u8>)>>>;

/// What a run of [`train_with_hook`] ends with: each worker's first clock
/// and the rows of table "w" (keys 0 and 1) once every worker left.
struct Trained {
    first_clocks: Vec<u64>,
    rows: Vec<i64>,
}

/// A server shard whose clock hook saves table "w" every `every` clocks
/// (with [`checkpoint::save_at`]), serving on its own thread, and
/// `workers` workers on threads that each pull, push 1 to every element
/// and clock until clock `clocks`, under BSP. With `from`, the shard first
/// loads that checkpoint and starts at its clock.
fn train_with_hook(
    workers: u32,
    clocks: u64,
    every: u64,
    from: Option<&[u8]>,
) -> (laggard::Result<Trained>, Snapshots) {
    train_with_hook_under(Consistency::Bsp, workers, clocks, every, from)
}

/// [`train_with_hook`] under `consistency`, where worker 0 never pulls:
/// nothing holds it back, so it runs ahead of the others.
fn train_with_hook_under(
    consistency: Consistency,
    workers: u32,
    clocks: u64,
    every: u64,
    from: Option<&[u8]>,
) -> (laggard::Result<Trained>, Snapshots) {
    use laggard::transport::{InProcess, Transport};
    use laggard::{Worker, WorkerId};
    use std::time::{Duration, Instant};

    let spec = ClusterSpec::new(1, workers as usize)
        .table(
            "w",
            TableSpec::<i64>::dense(0..2, 3).consistency(consistency),
        )
        .timeout(Duration::from_secs(20));
    let net = InProcess::new();
    let mut server = Server::new(net.bind(&spec.server_name(0)).unwrap(), &spec, 0).unwrap();
    let weights = server.table::<i64>("w").unwrap();
    let snapshots: Snapshots = Arc::default();
    let (keep, hooked) = (snapshots.clone(), weights.clone());
    server
        .on_clock(every, move |clock| {
            let mut bytes = Vec::new();
            checkpoint::save_at(&hooked, clock, &mut bytes)?;
            keep.lock().unwrap().push((clock, bytes));
            Ok(())
        })
        .unwrap();
    if let Some(bytes) = from {
        let loaded = checkpoint::load(&weights, bytes, Foreign::Refuse).unwrap();
        server.start_at(loaded.clock).unwrap();
    }
    let serving = thread::spawn(move || server.run_until_workers_done().map(drop));
    let training: Vec<_> = (0..workers)
        .map(|id| {
            let ep = net.bind(&spec.worker_name(id as usize)).unwrap();
            let spec = spec.clone();
            thread::spawn(move || -> laggard::Result<u64> {
                let deadline = Instant::now() + Duration::from_secs(20);
                let mut worker = Worker::connect(ep, &spec, WorkerId(id), deadline)?;
                let w = worker.table::<i64>("w")?;
                let mut rows = [0i64; 6];
                let first = worker.current_clock();
                for _ in first..clocks {
                    if id > 0 || consistency == Consistency::Bsp {
                        worker.pull(&w, &[0, 1], &mut rows)?;
                    }
                    worker.push(&w, &[0, 1], &[1; 6])?;
                    worker.clock()?;
                }
                worker.leave()?;
                Ok(first)
            })
        })
        .collect();
    let first_clocks: laggard::Result<Vec<u64>> =
        training.into_iter().map(|t| t.join().unwrap()).collect();
    let trained = serving
        .join()
        .unwrap()
        .and(first_clocks)
        .map(|first_clocks| {
            let mut rows = vec![0i64; 6];
            weights.pull(0, &mut rows[..3]).unwrap();
            weights.pull(1, &mut rows[3..]).unwrap();
            Trained { first_clocks, rows }
        });
    (trained, snapshots)
}

/// Under BSP, with each worker pulling before it pushes, the snapshot the
/// hook takes at clock c holds exactly the pushes of clocks below c, and
/// says it was taken at c.
#[test]
fn a_servers_clock_hook_snapshots_exactly_the_clocks_before_it() {
    let (trained, snapshots) = train_with_hook(3, 7, 2, None);
    assert_eq!(trained.unwrap().first_clocks, [0, 0, 0]);
    let snapshots = snapshots.lock().unwrap();
    let clocks: Vec<u64> = snapshots.iter().map(|s| s.0).collect();
    assert_eq!(clocks, [2, 4, 6]);
    for (clock, bytes) in snapshots.iter() {
        let t = Table::new(TableSpec::<i64>::dense(0..2, 3)).unwrap();
        let loaded = checkpoint::load(&t, &bytes[..], Foreign::Refuse).unwrap();
        assert_eq!(loaded.clock, *clock);
        let mut row = [0i64; 3];
        for key in 0..2 {
            t.pull(key, &mut row).unwrap();
            assert_eq!(row, [3 * *clock as i64; 3], "snapshot at clock {clock}");
        }
    }
}

/// Under SSP and Async a worker that never pulls runs ahead of the
/// others, yet each snapshot holds exactly the pushes of clocks below its
/// clock: the server held that worker's later pushes back until the hook
/// ran. A job resumed from one ends where the whole job did.
#[test]
fn clock_hook_snapshots_are_exact_under_ssp_and_async() {
    for consistency in [Consistency::Ssp { staleness: 2 }, Consistency::Async] {
        let (whole, snapshots) = train_with_hook_under(consistency, 3, 9, 2, None);
        assert_eq!(whole.unwrap().rows, [27; 6], "{consistency:?}");
        let snapshots = snapshots.lock().unwrap().clone();
        let clocks: Vec<u64> = snapshots.iter().map(|s| s.0).collect();
        assert_eq!(clocks, [2, 4, 6, 8], "{consistency:?}");
        for (clock, bytes) in &snapshots {
            let t = Table::new(TableSpec::<i64>::dense(0..2, 3)).unwrap();
            checkpoint::load(&t, &bytes[..], Foreign::Refuse).unwrap();
            let mut row = [0i64; 3];
            for key in 0..2 {
                t.pull(key, &mut row).unwrap();
                assert_eq!(
                    row,
                    [3 * *clock as i64; 3],
                    "{consistency:?} at clock {clock}"
                );
            }
        }
        let (resumed, _) = train_with_hook_under(consistency, 3, 9, 2, Some(&snapshots[1].1));
        let resumed = resumed.unwrap();
        assert_eq!(resumed.first_clocks, [4, 4, 4]);
        assert_eq!(resumed.rows, [27; 6], "{consistency:?}");
    }
}

/// A job that resumes from the snapshot at clock 4 starts its workers at
/// clock 4, takes its next snapshot at 6 (not 4 again), and ends exactly
/// where the job that was never interrupted ended: no clock is made twice
/// and none is left out.
#[test]
fn a_job_resumed_from_a_snapshot_goes_on_from_its_clock() {
    let (whole, snapshots) = train_with_hook(3, 9, 2, None);
    let whole = whole.unwrap();
    assert_eq!(whole.rows, [27; 6]);
    let at_4 = snapshots.lock().unwrap()[1].clone();
    assert_eq!(at_4.0, 4);

    let (resumed, later) = train_with_hook(3, 9, 2, Some(&at_4.1));
    let resumed = resumed.unwrap();
    assert_eq!(resumed.first_clocks, [4, 4, 4]);
    assert_eq!(resumed.rows, whole.rows);
    let clocks: Vec<u64> = later.lock().unwrap().iter().map(|s| s.0).collect();
    assert_eq!(clocks, [6, 8]);
}

/// The in-process cluster prepares each server before it serves: a clock
/// hook runs there, and a cluster started from the snapshots resumes at
/// their clock. A starting clock set once a worker joined is an error.
#[test]
fn a_cluster_prepared_from_snapshots_resumes_at_their_clock() {
    use laggard::Cluster;
    use std::sync::Mutex;

    let spec = || {
        ClusterSpec::new(2, 2).table(
            "w",
            TableSpec::<i64>::dense(0..4, 2).consistency(Consistency::Bsp),
        )
    };
    let train = |cluster: &Cluster, to: u64| {
        cluster
            .run_workers(|worker| {
                let w = worker.table::<i64>("w")?;
                let mut rows = [0i64; 8];
                let first = worker.current_clock();
                for _ in first..to {
                    worker.pull(&w, &[0, 1, 2, 3], &mut rows)?;
                    worker.push(&w, &[0, 1, 2, 3], &[1; 8])?;
                    worker.clock()?;
                }
                Ok(first)
            })
            .unwrap()
    };
    // (shard, clock, bytes) of every snapshot.
    type Files = Arc<Mutex<Vec<(usize, u64, Vec<u8>)>>>;
    let files: Files = Arc::default();
    let cluster = Cluster::start_with(spec(), |server| {
        let (part, shard, files) = (server.table::<i64>("w")?, server.shard(), files.clone());
        server.on_clock(3, move |clock| {
            let mut bytes = Vec::new();
            checkpoint::save_at(&part, clock, &mut bytes)?;
            files.lock().unwrap().push((shard, clock, bytes));
            Ok(())
        })
    })
    .unwrap();
    assert_eq!(train(&cluster, 5), [0, 0]);
    cluster.shutdown().unwrap();
    let files = files.lock().unwrap().clone();
    let at_3: Vec<&(usize, u64, Vec<u8>)> = files.iter().filter(|f| f.1 == 3).collect();
    assert_eq!(
        at_3.len(),
        2,
        "one snapshot per shard at clock 3: {files:?}"
    );

    // Started at clock 3, a hook every 3 clocks is next due at 6, which
    // this run (to clock 5) does not reach.
    let hooked: Arc<Mutex<Vec<u64>>> = Arc::default();
    let resumed = Cluster::start_with(spec(), |server| {
        let part = server.table::<i64>("w")?;
        let (_, clock, bytes) = at_3.iter().find(|f| f.0 == server.shard()).unwrap();
        let loaded = checkpoint::load(&part, &bytes[..], Foreign::Refuse)?;
        assert_eq!(loaded.clock, *clock);
        server.start_at(loaded.clock)?;
        let hooked = hooked.clone();
        server.on_clock(3, move |clock| {
            hooked.lock().unwrap().push(clock);
            Ok(())
        })
    })
    .unwrap();
    assert_eq!(train(&resumed, 5), [3, 3]);
    assert_eq!(*hooked.lock().unwrap(), Vec::<u64>::new());
    let mut rows = [0i64; 8];
    resumed.read::<i64>("w", &[0, 1, 2, 3], &mut rows).unwrap();
    assert_eq!(
        rows, [10; 8],
        "2 workers x 5 clocks, 3 of them from the snapshot"
    );
    resumed.shutdown().unwrap();

    let failing = Cluster::start_with(spec(), |server| {
        if server.shard() == 1 {
            return Err(Error::Checkpoint {
                reason: "no file for shard 1".into(),
            });
        }
        Ok(())
    });
    assert!(matches!(failing, Err(Error::Checkpoint { .. })));
}

#[test]
fn a_clock_hook_that_fails_stops_its_server_with_the_error() {
    use laggard::transport::{InProcess, Transport};
    use laggard::{Worker, WorkerId};
    use std::time::{Duration, Instant};

    let spec = ClusterSpec::new(1, 1)
        .table("w", TableSpec::<i64>::dense(0..2, 3))
        .timeout(Duration::from_secs(5));
    let net = InProcess::new();
    let mut server = Server::new(net.bind(&spec.server_name(0)).unwrap(), &spec, 0).unwrap();
    assert!(matches!(
        server.on_clock(0, |_| Ok(())),
        Err(Error::InvalidConfig { .. })
    ));
    server
        .on_clock(1, |clock| {
            Err(Error::Checkpoint {
                reason: format!("disk full at clock {clock}"),
            })
        })
        .unwrap();
    let serving = thread::spawn(move || server.run_until_workers_done().map(drop));
    let ep = net.bind(&spec.worker_name(0)).unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut worker = Worker::connect(ep, &spec, WorkerId(0), deadline).unwrap();
    let w = worker.table::<i64>("w").unwrap();
    worker.push(&w, &[0], &[1, 1, 1]).unwrap();
    worker.clock().unwrap(); // the hook runs once the server took this clock
    drop(worker); // not left: the server is gone, or going
    match serving.join().unwrap() {
        Err(Error::Checkpoint { reason }) => assert_eq!(reason, "disk full at clock 1"),
        other => panic!("expected the hook's error, got {other:?}"),
    }
}

/// Under Async a fast worker may finish long before a slow one reaches the
/// clock hook that holds its last pushes back. It leaves at once: the
/// server has its pushes and applies them, exactly once, when the slow
/// worker gets there, while the hook's snapshots stay exact. It used to
/// wait for them to be applied, which is the slow worker's whole run, and
/// fail at the spec's timeout. Pushes that run more than `MAX_UNACKED`
/// (64) ahead wait for the hook instead (they are what bounds the server's
/// memory of held pushes), and a timeout there says why.
#[test]
fn a_fast_async_worker_leaves_without_waiting_for_the_clock_hook() {
    use laggard::Cluster;
    use std::sync::Mutex;
    use std::time::Duration;

    let run = |clocks: u64| {
        // Far less than the slow worker takes: leaving may not wait for it.
        let spec = ClusterSpec::new(1, 2)
            .table(
                "w",
                TableSpec::<i64>::dense(0..1, 1).consistency(Consistency::Async),
            )
            .timeout(Duration::from_millis(300));
        let hooked: Arc<Mutex<Vec<(u64, i64)>>> = Arc::default();
        let cluster = Cluster::start_with(spec, |server| {
            let (part, hooked) = (server.table::<i64>("w")?, hooked.clone());
            server.on_clock(10, move |clock| {
                let mut row = [0i64];
                part.pull(0, &mut row)?;
                hooked.lock().unwrap().push((clock, row[0]));
                Ok(())
            })
        })
        .unwrap();
        let done = cluster.run_workers(|worker| {
            let w = worker.table::<i64>("w")?;
            let slow = worker.id().0 == 1;
            for _ in 0..clocks {
                worker.push(&w, &[0], &[1])?;
                worker.clock()?;
                if slow {
                    thread::sleep(Duration::from_millis(20));
                }
            }
            Ok(())
        });
        let mut row = [0i64];
        cluster
            .server_table::<i64>("w", 0)
            .unwrap()
            .pull(0, &mut row)
            .unwrap();
        cluster.shutdown().unwrap();
        (done, row[0], hooked.lock().unwrap().clone())
    };

    let (done, total, hooked) = run(40);
    done.unwrap();
    assert_eq!(total, 80, "each worker's 40 pushes, exactly once");
    let expected: Vec<(u64, i64)> = [10, 20, 30, 40]
        .iter()
        .map(|&c| (c, 2 * c as i64))
        .collect();
    assert_eq!(hooked, expected, "each snapshot holds the clocks before it");

    // 100 clocks: the fast worker's 65th unacknowledged push waits for the
    // hook, which the slow worker reaches only seconds later.
    let (done, _, _) = run(100);
    let err = done.unwrap_err().to_string();
    assert!(
        err.contains("but holds back those for clock") && err.contains("every worker gets there"),
        "{err}"
    );
}
