//! Sparse tables with a row limit per shard (`max_rows_per_shard`): a
//! push that would create a row past it is refused, changes nothing, and
//! says which table is full; rows promised to pushes a server holds back
//! for its clock hook are counted as taken.

use std::collections::HashSet;
use std::thread;
use std::time::{Duration, Instant};

use laggard::checkpoint::{self, Foreign};
use laggard::transport::{InProcess, Transport};
use laggard::{
    Cluster, ClusterSpec, Consistency, Error, Server, Table, TableSpec, Worker, WorkerId,
};
use proptest::prelude::*;

fn limited(limit: usize) -> TableSpec<i64> {
    TableSpec::<i64>::sparse(2)
        .max_rows_per_shard(limit)
        .consistency(Consistency::Async)
}

#[test]
fn a_limit_is_for_sparse_tables_and_at_least_one_row() {
    let dense = TableSpec::<i64>::dense(0..4, 2).max_rows_per_shard(2);
    let err = Table::new(dense).unwrap_err().to_string();
    assert!(err.contains("only sparse tables have a row limit"), "{err}");
    let err = Table::new(limited(0)).unwrap_err().to_string();
    assert!(
        err.contains("a shard must be allowed one row at least"),
        "{err}"
    );
}

proptest! {
    /// Against a set of the rows that exist: a push (or a batch) succeeds
    /// exactly when the rows it would create fit within the limit, and a
    /// refused one creates nothing.
    #[test]
    fn pushes_create_rows_up_to_the_limit_and_no_further(
        limit in 1usize..6,
        shards in 1usize..3,
        batches in prop::collection::vec(prop::collection::vec(0u64..12, 1..4), 1..25),
    ) {
        let table = Table::new(limited(limit).shards(shards)).unwrap();
        let map = table.shard_map().clone();
        let mut rows: HashSet<u64> = HashSet::new();
        for keys in batches {
            let mut after = rows.clone();
            after.extend(keys.iter().copied());
            let fits = (0..shards).all(|s| {
                after.iter().filter(|&&k| map.shard_of(k).unwrap() == s).count() <= limit
            });
            let deltas = vec![1i64; keys.len() * 2];
            let pushed = if keys.len() == 1 {
                table.push(keys[0], &deltas)
            } else {
                table.push_batch(&keys, &deltas)
            };
            match pushed {
                Ok(()) => {
                    prop_assert!(fits, "{keys:?} went past the limit");
                    rows = after;
                }
                Err(Error::TableFull { limit: l, .. }) => {
                    prop_assert!(!fits, "{keys:?} was refused but fits");
                    prop_assert_eq!(l, limit);
                }
                Err(e) => panic!("unexpected error: {e}"),
            }
            prop_assert_eq!(table.rows(), rows.len());
        }
    }
}

#[test]
fn a_push_past_the_limit_is_refused_whole_and_names_the_table() {
    let spec = ClusterSpec::new(1, 1).table("emb", limited(3));
    let cluster = Cluster::start(spec).unwrap();
    let mut worker = cluster.worker(0).unwrap();
    let t = worker.table::<i64>("emb").unwrap();
    for key in [1, 2, 3] {
        worker.push(&t, &[key], &[1, 1]).unwrap();
    }
    worker.clock().unwrap();
    // One push: a row that exists and one that would be the fourth.
    worker.push(&t, &[3, 4], &[10, 10, 10, 10]).unwrap();
    let err = worker
        .clock()
        .and_then(|_| {
            let ticket = worker.flush()?;
            worker.wait_applied(&ticket, Instant::now() + Duration::from_secs(10))
        })
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("sparse table \"emb\": shard 0 holds its limit of 3 rows"),
        "{err}"
    );
    assert!(err.contains("TableSpec::max_rows_per_shard"), "{err}");
    drop(worker);
    // Nothing of the refused push was applied, not even to row 3.
    let mut rows = [0i64; 6];
    cluster.read::<i64>("emb", &[1, 2, 3], &mut rows).unwrap();
    assert_eq!(rows, [1; 6]);
    let stats = cluster.shutdown().unwrap();
    assert_eq!(stats[0].rows_applied, 3);
}

#[test]
fn rows_promised_to_held_pushes_are_not_given_to_others() {
    // A shard holds pushes for clock 2 and later back for its clock hook
    // until the slowest worker gets there. Worker 0 runs ahead and pushes
    // a new row for clock 2: held, with its row promised. Worker 1, still
    // at clock 0, may then create one row of the two the limit allows,
    // not two: the second is refused, so the held push still fits when
    // the hold moves and is applied.
    let spec = ClusterSpec::new(1, 2)
        .dead_after(Duration::from_millis(200))
        .table("emb", limited(2));
    let net = InProcess::new();
    let mut server = Server::new(net.bind(&spec.server_name(0)).unwrap(), &spec, 0).unwrap();
    server.on_clock(2, |_| Ok(())).unwrap();
    let table = server.table::<i64>("emb").unwrap();
    let serving = thread::spawn(move || server.run_until_workers_done());
    let deadline = || Instant::now() + Duration::from_secs(10);
    let connect = |w: u32| {
        let ep = net.bind(&spec.worker_name(w as usize)).unwrap();
        Worker::connect(ep, &spec, WorkerId(w), deadline()).unwrap()
    };
    let (mut ahead, mut behind) = (connect(0), connect(1));
    let t = ahead.table::<i64>("emb").unwrap();
    ahead.clock().unwrap();
    ahead.clock().unwrap();
    ahead.push(&t, &[10], &[1, 1]).unwrap();
    let held = ahead.flush().unwrap();
    // Wait until the shard took it and said it holds it back.
    let taken = Instant::now() + Duration::from_secs(10);
    loop {
        let soon = Instant::now() + Duration::from_millis(100);
        let err = ahead.wait_applied(&held, soon).unwrap_err().to_string();
        if err.contains("holds back those for clock 2") {
            break;
        }
        assert!(Instant::now() < taken, "the push was not held: {err}");
    }
    behind.push(&t, &[11], &[1, 1]).unwrap();
    let ticket = behind.flush().unwrap();
    behind.wait_applied(&ticket, deadline()).unwrap();
    behind.push(&t, &[12], &[1, 1]).unwrap();
    let err = behind
        .flush()
        .and_then(|ticket| behind.wait_applied(&ticket, deadline()))
        .unwrap_err()
        .to_string();
    assert!(err.contains("holds its limit of 2 rows"), "{err}");
    // Worker 1 is gone (declared dead once its connection dropped); the
    // hold moves, and worker 0's push is applied.
    drop(behind);
    ahead.leave().unwrap();
    let report = serving.join().unwrap().unwrap();
    assert_eq!(report.stats.rows_applied, 2);
    assert_eq!(table.rows(), 2);
    let mut row = [0i64; 2];
    for key in [10, 11] {
        table.pull(key, &mut row).unwrap();
        assert_eq!(row, [1, 1], "row {key}");
    }
}

#[test]
fn a_checkpoint_with_more_rows_than_the_limit_says_so() {
    let roomy = Table::new(limited(3)).unwrap();
    for key in [4, 5, 6] {
        roomy.push(key, &[1, 1]).unwrap();
    }
    let mut bytes = Vec::new();
    checkpoint::save(&roomy, &mut bytes).unwrap();
    let tight = Table::new(limited(2)).unwrap();
    let err = checkpoint::load(&tight, &bytes[..], Foreign::Refuse)
        .unwrap_err()
        .to_string();
    assert!(err.contains("cannot be restored"), "{err}");
    assert!(err.contains("shard 0 holds its limit of 2 rows"), "{err}");
}
