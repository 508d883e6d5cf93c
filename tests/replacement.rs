//! A new process takes the place of a worker whose process is gone: it
//! goes on from the worker's clock and sequence numbers, before or after
//! the servers declared the worker dead, and the old process is refused
//! should it come back. Checked end to end over the in-process transport,
//! and on the protocol's state machines where a schedule must be exact
//! (shards that disagree on the worker's clock, sessions refused).

use std::sync::mpsc;
use std::time::{Duration, Instant};

use laggard::proto::{
    ClientCore, Hello, Keys, Message, Output, Reply, Role, ServerConfig, ServerCore, ShardTables,
    TableInfo, Welcome, decode,
};
use laggard::transport::{InProcessEndpoint, PeerId, Transport};
use laggard::{
    Cluster, ClusterSpec, Consistency, ElementKind, Placement, ShardMap, TableSpec, Worker,
    WorkerId, WorkerStatus,
};

/// One clock of worker `w`: a pull (which under BSP waits for everyone),
/// then `w + 1` pushed to every key.
fn step(worker: &mut Worker<InProcessEndpoint>, keys: &[u64]) {
    let t = worker.table::<i64>("w").unwrap();
    let mut rows = vec![0i64; keys.len()];
    worker.pull(&t, keys, &mut rows).unwrap();
    let w = i64::from(worker.id().0);
    worker.push(&t, keys, &vec![w + 1; keys.len()]).unwrap();
    worker.clock().unwrap();
}

/// The worker's process dies once its pushes were applied: dropped
/// without `leave`, so its connections close.
fn crash(mut worker: Worker<InProcessEndpoint>) {
    let ticket = worker.flush().unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    worker.wait_applied(&ticket, deadline).unwrap();
    drop(worker);
}

/// Steps `worker` until its clock is `clocks`, then leaves.
fn run_to(mut worker: Worker<InProcessEndpoint>, clocks: u64, keys: &[u64]) {
    while worker.current_clock() < clocks {
        step(&mut worker, keys);
    }
    worker.leave().unwrap();
}

fn spec(dead_after: Duration) -> ClusterSpec {
    ClusterSpec::new(2, 2)
        .dead_after(dead_after)
        .timeout(Duration::from_secs(20))
        .table(
            "w",
            TableSpec::<i64>::dense(0..8, 1).consistency(Consistency::Bsp),
        )
}

#[test]
fn a_new_process_takes_the_place_of_a_crashed_worker() {
    let cluster = Cluster::start(spec(Duration::from_secs(3600))).unwrap();
    let keys: Vec<u64> = (0..8).collect();
    std::thread::scope(|s| {
        let survivor = s.spawn(|| {
            let mut worker = cluster.worker(0).unwrap();
            for _ in 0..6 {
                step(&mut worker, &keys);
            }
            worker.leave().unwrap();
        });
        let mut first = cluster.worker(1).unwrap();
        for _ in 0..3 {
            step(&mut first, &keys);
        }
        // Every push of the three clocks applied, then the process dies
        // (no `leave`): its connections close.
        crash(first);
        let second = cluster.worker(1).unwrap();
        assert_eq!(
            second.current_clock(),
            3,
            "the replacement resumes at the worker's clock"
        );
        run_to(second, 6, &keys);
        survivor.join().unwrap();
    });
    let mut rows = vec![0i64; keys.len()];
    cluster.read("w", &keys, &mut rows).unwrap();
    // Exactly once: worker 0 pushed 1 six times, worker 1 pushed 2 on
    // three clocks in each process.
    assert_eq!(rows, vec![6 + 2 * 6; keys.len()]);
    let stats = cluster.shutdown().unwrap();
    for s in &stats {
        assert_eq!(s.workers_replaced, 1);
        assert_eq!(s.workers_declared_dead, 0);
        assert_eq!(s.duplicate_pushes, 0);
    }
}

#[test]
fn a_worker_declared_dead_comes_back_at_the_slowest_active_clock() {
    let cluster = Cluster::start(spec(Duration::from_millis(100))).unwrap();
    let keys: Vec<u64> = (0..8).collect();
    let (at_five_tx, at_five_rx) = mpsc::channel();
    let (back_tx, back_rx) = mpsc::channel::<()>();
    let (cluster_ref, keys_ref) = (&cluster, &keys[..]);
    std::thread::scope(|s| {
        let survivor = s.spawn(move || {
            let (cluster, keys) = (cluster_ref, keys_ref);
            let mut worker = cluster.worker(0).unwrap();
            // Under BSP worker 0 waits for worker 1 until it is declared
            // dead, then goes on alone.
            for _ in 0..5 {
                step(&mut worker, keys);
            }
            at_five_tx.send(()).unwrap();
            // Bounded, so that a replacement that fails to connect fails
            // the test instead of leaving this thread waiting.
            back_rx
                .recv_timeout(Duration::from_secs(30))
                .expect("the replacement did not connect");
            for _ in 5..10 {
                step(&mut worker, keys);
            }
            worker.leave().unwrap();
        });
        let mut first = cluster.worker(1).unwrap();
        step(&mut first, &keys);
        crash(first);
        at_five_rx.recv_timeout(Duration::from_secs(60)).unwrap();
        let second = cluster.worker(1).unwrap();
        // Worker 0 finished clock 5 and waits: the worker comes back there,
        // not at clock 1 where it died (that would hold worker 0 back for
        // four clocks it already went through).
        assert_eq!(second.current_clock(), 5);
        back_tx.send(()).unwrap();
        run_to(second, 10, &keys);
        survivor.join().unwrap();
    });
    let mut rows = vec![0i64; keys.len()];
    cluster.read("w", &keys, &mut rows).unwrap();
    // Worker 0: ten clocks of 1. Worker 1: one clock of 2 before it died,
    // five after it came back.
    assert_eq!(rows, vec![10 + 2 * 6; keys.len()]);
    let stats = cluster.shutdown().unwrap();
    for s in &stats {
        assert_eq!(s.workers_declared_dead, 1);
        assert_eq!(s.workers_replaced, 1);
    }
}

#[test]
fn a_second_process_is_refused_while_the_first_is_connected() {
    let cluster = Cluster::start(spec(Duration::from_secs(3600))).unwrap();
    let first = cluster.worker(1).unwrap();
    // Another process (an endpoint of another name) claims worker 1,
    // within `wait`: refused, with the shard's reason.
    let claim = |name: &str, wait: Duration| {
        let other = cluster.network().bind(name).unwrap();
        let deadline = Instant::now() + wait;
        let err = Worker::connect(other, cluster.spec(), WorkerId(1), deadline).unwrap_err();
        assert!(
            matches!(err, laggard::Error::WorkerClaimed { .. }),
            "{err:?}"
        );
        let text = err.to_string();
        assert!(text.contains("two processes claim the same rank"), "{text}");
        text
    };
    // It waits for the first one's connection to go, and fails at its
    // deadline.
    claim("another process", Duration::from_millis(300));
    // With time to spare, it does not wait out its deadline: the
    // in-process transport reports a dead process's connection gone at
    // once, so a connection that holds on past a grace is a live one.
    let text = claim("a third process", Duration::from_secs(60));
    assert!(
        text.contains("longer than the transport takes to report a dead process's connection gone"),
        "{text}"
    );
    first.leave().unwrap();
    // A worker that left cannot be taken over.
    let err = cluster.worker(1).unwrap_err();
    assert!(
        err.to_string().contains("has left and cannot rejoin"),
        "{err}"
    );
}

/// Storage for the state-machine tests: one table of `i64` rows of width
/// 1, summed.
struct Sums {
    rows: Vec<i64>,
}

impl ShardTables for Sums {
    fn len(&self) -> usize {
        1
    }
    fn check(&self, _: u32, keys: Keys<'_>, _: Option<usize>) -> laggard::Result<()> {
        assert!(keys.iter().all(|k| (k as usize) < self.rows.len()));
        Ok(())
    }
    // No table here has a row limit: there is no room to promise.
    fn promise(&mut self, _: u32, _: Keys<'_>) -> laggard::Result<Vec<u64>> {
        Ok(Vec::new())
    }
    fn unpromise(&mut self, _: u32, _: &[u64]) {}
    fn apply(&mut self, _: u32, keys: Keys<'_>, values: &[u8]) -> laggard::Result<()> {
        for (k, v) in keys.iter().zip(values.chunks_exact(8)) {
            self.rows[k as usize] += i64::from_le_bytes(v.try_into().unwrap());
        }
        Ok(())
    }
    fn row_bytes(&self, _: u32) -> usize {
        8
    }
}

/// One server shard of `workers` workers, driven by hand.
struct Shard {
    core: ServerCore,
    tables: Sums,
    now: Instant,
}

impl Shard {
    fn new(shard: u32, workers: u32, dead_after: Duration) -> Self {
        Shard {
            core: ServerCore::new(ServerConfig {
                shard,
                workers,
                schema: 7,
                dead_after,
                max_payload: 1 << 20,
            }),
            tables: Sums { rows: vec![0; 4] },
            now: Instant::now(),
        }
    }

    /// Delivers `msg` from `peer` and returns the server's replies to it.
    fn deliver(&mut self, peer: PeerId, msg: &Message<'_>) -> Vec<Reply> {
        let mut out = Vec::new();
        self.core
            .on_frame(peer, &msg.to_vec(), self.now, &mut self.tables, &mut out);
        out.into_iter()
            .filter_map(|o| match o {
                Output::Send(p, reply) if p == peer => Some(reply),
                _ => None,
            })
            .collect()
    }

    fn hello(&mut self, peer: PeerId, worker: u32, session: u64) -> Result<Welcome, String> {
        let hello = Message::Hello(Hello {
            role: Role::Worker(worker),
            schema: 7,
            session,
        });
        match self.deliver(peer, &hello).as_slice() {
            [Reply::Welcome(w)] => Ok(*w),
            [Reply::Fault(_, text)] => Err(text.clone()),
            other => panic!("unexpected replies {other:?}"),
        }
    }
}

fn tables(shards: usize) -> std::sync::Arc<[TableInfo]> {
    std::sync::Arc::from(vec![TableInfo {
        name: "w".into(),
        kind: ElementKind::I64,
        width: 1,
        consistency: Consistency::Bsp,
        map: ShardMap::new(Placement::RoundRobin, shards, 0..=3).unwrap(),
        replay: Some(1.0),
        sums_deltas: true,
    }])
}

/// Delivers to `shard` every push `client` has for it from `seqs`.
fn send_pushes(client: &ClientCore, shard: &mut Shard, index: usize, peer: PeerId, seqs: &[u64]) {
    for &seq in seqs {
        let msg = client
            .with_push(index, seq, |m| m.to_vec())
            .expect("an unacknowledged push");
        let msg = decode(&msg, 1 << 20).unwrap();
        let replies = shard.deliver(peer, &msg);
        assert!(
            matches!(replies.as_slice(), [Reply::PushAck(_)]),
            "push {seq} to shard {index}: {replies:?}"
        );
    }
}

#[test]
fn a_replacement_brings_a_shard_that_is_behind_up_to_the_worker_clock() {
    // The old process finished clock 0 on both shards and clock 1 on
    // shard 0 only, then died: the shards disagree on its clock.
    let mut shards = [
        Shard::new(0, 1, Duration::from_secs(3600)),
        Shard::new(1, 1, Duration::from_secs(3600)),
    ];
    let mut old = ClientCore::new(0, 2, tables(2));
    for (i, shard) in shards.iter_mut().enumerate() {
        let welcome = shard.hello(PeerId(1), 0, 0xa).unwrap();
        assert!(old.on_welcome(i, &welcome).unwrap().is_empty());
    }
    assert!(
        old.join().unwrap().is_empty(),
        "a new worker has nothing to catch up"
    );
    for clock in 0..2u64 {
        for key in 0..4 {
            old.pending_add(0, key, &[1i64]).unwrap();
        }
        let sent = old.flush(true);
        for (i, shard) in shards.iter_mut().enumerate() {
            let seqs: Vec<u64> = sent.iter().filter(|s| s.0 == i).map(|s| s.1).collect();
            if clock == 0 || i == 0 {
                send_pushes(&old, shard, i, PeerId(1), &seqs);
            }
        }
    }
    for shard in &mut shards {
        shard.core.on_disconnect(PeerId(1), shard.now);
    }
    let mut new = ClientCore::new(0, 2, tables(2));
    let mut welcomes = Vec::new();
    for (i, shard) in shards.iter_mut().enumerate() {
        let welcome = shard.hello(PeerId(2), 0, 0xb).unwrap();
        assert!(new.on_welcome(i, &welcome).unwrap().is_empty());
        welcomes.push((welcome.applied_seq, welcome.clock));
    }
    assert_eq!(welcomes, [(2, 2), (1, 1)]);
    let catch_up = new.join().unwrap();
    assert_eq!(
        catch_up,
        [(1, 2)],
        "one empty push finishing clock 1 on shard 1"
    );
    assert_eq!(new.clock(), 2);
    send_pushes(&new, &mut shards[1], 1, PeerId(2), &[2]);
    // Both shards now have the worker at clock 2, and the next push
    // continues each shard's sequence numbers.
    for shard in &shards {
        assert_eq!(
            shard.core.clocks().get(WorkerId(0)),
            Some((2, WorkerStatus::Active))
        );
    }
    for key in 0..4 {
        new.pending_add(0, key, &[10i64]).unwrap();
    }
    let sent = new.flush(true);
    assert_eq!(sent, [(0, 3), (1, 3)]);
    for (i, shard) in shards.iter_mut().enumerate() {
        send_pushes(&new, shard, i, PeerId(2), &[3]);
    }
    // Shard 0 (keys 0 and 2) has both old clocks; shard 1 (keys 1 and 3)
    // lost the old clock 1, which it never acknowledged.
    assert_eq!(shards[0].tables.rows, [12, 0, 12, 0]);
    assert_eq!(shards[1].tables.rows, [0, 11, 0, 11]);
    assert!(shards.iter().all(|s| s.core.stats().workers_replaced == 1));
}

#[test]
fn the_process_a_replacement_took_over_from_is_refused() {
    let mut shard = Shard::new(0, 2, Duration::from_secs(3600));
    shard.hello(PeerId(1), 0, 0xa).unwrap();
    shard.core.on_disconnect(PeerId(1), shard.now);
    let welcome = shard.hello(PeerId(2), 0, 0xb).unwrap();
    assert_eq!((welcome.applied_seq, welcome.clock), (0, 0));
    // The old process comes back, while its replacement is connected and
    // after it dropped too: refused both times.
    for peer in [PeerId(3), PeerId(4)] {
        let err = shard.hello(peer, 0, 0xa).unwrap_err();
        assert!(err.contains("taken over by another process"), "{err}");
        shard.core.on_disconnect(PeerId(2), shard.now);
    }
    // The replacement itself may reconnect.
    shard.hello(PeerId(5), 0, 0xb).unwrap();
    assert_eq!(shard.core.stats().workers_replaced, 1);
}

#[test]
fn a_process_declared_dead_cannot_rejoin_but_a_new_one_can() {
    let mut shard = Shard::new(0, 2, Duration::from_millis(10));
    for w in 0..2 {
        shard
            .hello(PeerId(u64::from(w) + 1), w, 0xa + u64::from(w))
            .unwrap();
    }
    // Worker 0 finishes three clocks; worker 1 none, then its connection
    // drops and it is declared dead.
    for seq in 1..=3u64 {
        let push = Message::Push(laggard::proto::Push {
            worker: 0,
            seq,
            clock: seq - 1,
            tick: true,
            sections: laggard::proto::Sections::Native(&[]),
        });
        assert!(matches!(
            shard.deliver(PeerId(1), &push).as_slice(),
            [Reply::PushAck(_)]
        ));
    }
    shard.core.on_disconnect(PeerId(2), shard.now);
    let mut out = Vec::new();
    shard
        .core
        .poll(shard.now + Duration::from_secs(1), &mut out);
    assert_eq!(shard.core.stats().workers_declared_dead, 1);
    let err = shard.hello(PeerId(3), 1, 0xb).unwrap_err();
    assert!(err.contains("declared dead"), "{err}");
    // A new process comes back at the slowest active worker's clock.
    let welcome = shard.hello(PeerId(4), 1, 0xc).unwrap();
    assert_eq!((welcome.applied_seq, welcome.clock), (0, 3));
    assert_eq!(
        shard.core.clocks().get(WorkerId(1)),
        Some((3, WorkerStatus::Active))
    );
    assert!(!shard.core.workers_done());
}

/// A shard restored from a checkpoint starts every worker at its clock
/// (`ServerCore::start_at`): each Welcome says so, pushes go on from
/// there, and the starting clock cannot change once a worker joined.
#[test]
fn a_shard_started_at_a_clock_welcomes_workers_there() {
    let mut shard = Shard::new(0, 2, Duration::from_secs(3600));
    shard.core.start_at(30).unwrap();
    assert_eq!(shard.core.clocks().min_active(), Some(30));
    let welcome = shard.hello(PeerId(1), 0, 0xa).unwrap();
    assert_eq!((welcome.applied_seq, welcome.clock), (0, 30));
    let push = Message::Push(laggard::proto::Push {
        worker: 0,
        seq: 1,
        clock: 30,
        tick: true,
        sections: laggard::proto::Sections::Native(&[]),
    });
    assert!(matches!(
        shard.deliver(PeerId(1), &push).as_slice(),
        [Reply::PushAck(_)]
    ));
    assert_eq!(
        shard.core.clocks().get(WorkerId(0)),
        Some((31, WorkerStatus::Active))
    );
    match shard.core.start_at(40) {
        Err(laggard::Error::InvalidConfig { what, reason }) => {
            assert_eq!(what, "starting clock");
            assert!(
                reason.contains("worker 0 already joined at clock 31"),
                "{reason}"
            );
        }
        other => panic!("expected a configuration error, got {other:?}"),
    }
    assert_eq!(shard.core.stats().workers_replaced, 0);
}

/// A push for a clock the shard holds back (a clock hook's) is answered
/// `PushHeld` at once, again when it is resent on a new connection, and
/// acknowledged once the hold moves past it: a worker may leave on the
/// first, the push is applied exactly once either way.
#[test]
fn a_held_push_is_said_held_again_when_resent_and_acknowledged_once_applied() {
    use laggard::proto::PushHeld;
    let mut shard = Shard::new(0, 1, Duration::from_secs(3600));
    let mut out = Vec::new();
    shard.core.hold_from(Some(0), &mut shard.tables, &mut out);
    let first = PeerId(1);
    let mut client = ClientCore::new(0, 1, tables(1));
    client
        .on_welcome(0, &shard.hello(first, 0, 1).unwrap())
        .unwrap();
    client.pending_add(0, 2, &[5i64]).unwrap();
    assert_eq!(client.flush(true), [(0, 1)]);
    let push = client.with_push(0, 1, |m| m.to_vec()).unwrap();
    let push = decode(&push, 1 << 20).unwrap();
    let held = Reply::PushHeld(PushHeld {
        seq: 1,
        hold_from: 0,
    });
    assert_eq!(shard.deliver(first, &push), std::slice::from_ref(&held));
    // Resent (as after a reconnect): held still, not applied twice.
    assert_eq!(shard.deliver(first, &push), [held]);
    assert_eq!(shard.tables.rows[2], 0);
    // The hold moves past clock 0: applied once, and acknowledged.
    let mut out = Vec::new();
    shard.core.hold_from(Some(1), &mut shard.tables, &mut out);
    assert_eq!(shard.tables.rows[2], 5);
    assert!(
        out.iter()
            .any(|o| matches!(o, Output::Send(p, Reply::PushAck(a)) if *p == first && a.seq == 1)),
        "{out:?}"
    );
}

/// A worker whose process fails before it ever connects is never seen to
/// go. While another worker is active it only holds that one back (it may
/// be slow to start); once every worker that connected is gone, it has
/// `dead_after` to come and is then declared dead, so a server serving
/// until its workers are done ends instead of waiting for it forever.
#[test]
fn a_worker_that_never_connects_is_declared_dead_once_the_others_are_gone() {
    let dead_after = Duration::from_secs(5);
    let mut shard = Shard::new(0, 2, dead_after);
    let start = shard.now;
    let first = PeerId(1);
    shard.hello(first, 0, 1).unwrap();
    let poll = |shard: &mut Shard, at: Duration| {
        let mut out = Vec::new();
        shard.core.poll(start + at, &mut out);
    };
    // Worker 1 never connects: long past dead_after, with worker 0 still
    // active, it is only waited for.
    poll(&mut shard, dead_after * 10);
    assert!(!shard.core.workers_done());
    assert_eq!(shard.core.stats().workers_declared_dead, 0);
    // Worker 0 leaves: worker 1 has dead_after from then.
    shard.now = start + dead_after * 11;
    assert!(
        shard
            .deliver(first, &Message::Leave { worker: 0 })
            .is_empty()
    );
    poll(&mut shard, dead_after * 11 + dead_after / 2);
    assert!(!shard.core.workers_done(), "declared dead too soon");
    poll(&mut shard, dead_after * 12);
    assert!(shard.core.workers_done());
    assert_eq!(shard.core.stats().workers_declared_dead, 1);
    assert_eq!(
        shard.core.clocks().get(WorkerId(1)),
        Some((0, WorkerStatus::Dead))
    );
    // Coming now, it is told the job is over.
    let err = shard.hello(PeerId(2), 1, 2).unwrap_err();
    assert!(err.contains("never connected"), "{err}");
}

#[test]
fn a_dead_after_of_duration_max_never_declares_anyone_dead() {
    // `ServerConfig` is public: `dead_after` may be `Duration::MAX` (no
    // limit). Added to the clock, it used to overflow and panic once a
    // worker's connection dropped.
    let mut shard = Shard::new(0, 1, Duration::MAX);
    shard.hello(PeerId(1), 0, 0xa).unwrap();
    shard.core.on_disconnect(PeerId(1), shard.now);
    let mut out = Vec::new();
    shard
        .core
        .poll(shard.now + Duration::from_secs(3600), &mut out);
    assert_eq!(shard.core.next_deadline(), None);
    assert!(!shard.core.workers_done());
    assert!(
        shard.hello(PeerId(2), 0, 0xa).is_ok(),
        "the worker comes back"
    );
}
