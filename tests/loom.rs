//! Loom models of every concurrent protocol in the core crate.
//!
//! Run with:
//! `RUSTFLAGS="--cfg laggard_loom" LOOM_MAX_PREEMPTIONS=2 cargo test --release --test loom`
//!
//! Every participant runs on a spawned thread and the model's main thread
//! only sets up and checks: loom explores interleavings between spawned
//! threads reliably, but can miss those between the main thread and a
//! thread it spawned before that thread first runs.
#![cfg(laggard_loom)]

use std::time::{Duration, Instant};

use laggard::transport::{Endpoint, Event, InProcess, Transport};
use laggard::{Consistency, StalenessGate, Table, TableSpec, WorkerId};
use loom::sync::Arc;
use loom::thread;

fn far() -> Instant {
    // loom's condition variable never times out; the deadline only has to
    // be valid.
    Instant::now() + Duration::from_secs(3600)
}

/// Runs `a` and `b` on two spawned threads and returns their results.
fn both<A, B, RA, RB>(a: A, b: B) -> (RA, RB)
where
    A: FnOnce() -> RA + Send + 'static,
    B: FnOnce() -> RB + Send + 'static,
    RA: Send + 'static,
    RB: Send + 'static,
{
    let a = thread::spawn(a);
    let b = thread::spawn(b);
    (a.join().unwrap(), b.join().unwrap())
}

fn pull(table: &Table<i64>, key: u64) -> [i64; 2] {
    let mut row = [0; 2];
    table.pull(key, &mut row).unwrap();
    row
}

fn dense_row() -> Arc<Table<i64>> {
    Arc::new(Table::new(TableSpec::<i64>::dense(0..1, 2)).unwrap())
}

/// Two writers push to the same dense row: both pushes are applied, once.
#[test]
fn concurrent_pushes_to_one_row_are_exactly_once() {
    loom::model(|| {
        let table = dense_row();
        let (t1, t2) = (Arc::clone(&table), Arc::clone(&table));
        both(
            move || t1.push(0, &[1, 10]).unwrap(),
            move || t2.push(0, &[2, 20]).unwrap(),
        );
        assert_eq!(pull(&table, 0), [3, 30]);
    });
}

/// A pull racing two pushes sees the row after 0, 1 or 2 of them, never a
/// mix of elements from different states.
#[test]
fn pull_racing_push_never_sees_a_torn_row() {
    loom::model(|| {
        let table = dense_row();
        let (w, r) = (Arc::clone(&table), Arc::clone(&table));
        let ((), seen) = both(
            move || {
                w.push(0, &[1, 1]).unwrap();
                w.push(0, &[1, 1]).unwrap();
            },
            move || pull(&r, 0),
        );
        assert!(
            seen[0] == seen[1] && (0..=2).contains(&seen[0]),
            "torn read {seen:?}"
        );
        assert_eq!(pull(&table, 0), [2, 2]);
    });
}

/// Cells of a wide row: at this width the table stores plain elements behind
/// a reader-writer word, and loom checks every access to them for races.
const WIDE: usize = 256;

fn wide_row() -> Arc<Table<i64>> {
    Arc::new(Table::new(TableSpec::<i64>::dense(0..1, WIDE)).unwrap())
}

/// The wide row's value if all its elements are equal; panics on a torn row.
fn pull_wide(table: &Table<i64>) -> i64 {
    let mut row = vec![0; WIDE];
    table.pull(0, &mut row).unwrap();
    assert!(row.iter().all(|&x| x == row[0]), "torn wide row {row:?}");
    row[0]
}

/// Two writers push to the same wide row: both pushes are applied, once.
#[test]
fn concurrent_pushes_to_one_wide_row_are_exactly_once() {
    loom::model(|| {
        let table = wide_row();
        let (t1, t2) = (Arc::clone(&table), Arc::clone(&table));
        both(
            move || t1.push(0, &[1; WIDE]).unwrap(),
            move || t2.push(0, &[2; WIDE]).unwrap(),
        );
        assert_eq!(pull_wide(&table), 3);
    });
}

/// A pull of a wide row racing two pushes sees it after 0, 1 or 2 of them.
#[test]
fn pull_racing_push_never_sees_a_torn_wide_row() {
    loom::model(|| {
        let table = wide_row();
        let (w, r) = (Arc::clone(&table), Arc::clone(&table));
        let ((), seen) = both(
            move || {
                w.push(0, &[1; WIDE]).unwrap();
                w.push(0, &[1; WIDE]).unwrap();
            },
            move || pull_wide(&r),
        );
        assert!((0..=2).contains(&seen), "impossible wide row value {seen}");
        assert_eq!(pull_wide(&table), 2);
    });
}

/// Two pulls share a wide row while a push waits for them (and holds new
/// pulls back): the push still gets in, and each pull sees it whole or not.
///
/// One preemption is enough to reach that schedule (the first pull is
/// preempted holding the row, the push arrives and announces itself, the
/// second pull arrives and waits), and it is the bound this model runs
/// with. With two, loom gives up on the model ("exceeded maximum number
/// of branches", even with 20,000 allowed), the error it reports for
/// spinning without progress: a preemption spent keeping the first pull
/// descheduled lets the two spinning threads yield to each other without
/// end.
#[test]
fn push_waiting_for_two_pulls_of_a_wide_row() {
    let mut builder = loom::model::Builder::new();
    builder.preemption_bound = Some(1);
    builder.check(|| {
        let table = wide_row();
        let (w, r1, r2) = (Arc::clone(&table), Arc::clone(&table), Arc::clone(&table));
        let reader = thread::spawn(move || pull_wide(&r1));
        let (seen, ()) = both(
            move || pull_wide(&r2),
            move || w.push(0, &[5; WIDE]).unwrap(),
        );
        let first = reader.join().unwrap();
        for v in [first, seen] {
            assert!(v == 0 || v == 5, "impossible wide row value {v}");
        }
        assert_eq!(pull_wide(&table), 5);
    });
}

/// Two threads create the same sparse row at once: one row, both pushes.
#[test]
fn sparse_insert_racing_insert_of_the_same_key() {
    loom::model(|| {
        let table = Arc::new(Table::new(TableSpec::<i64>::sparse(2)).unwrap());
        let (t1, t2) = (Arc::clone(&table), Arc::clone(&table));
        both(
            move || t1.push(42, &[1, 0]).unwrap(),
            move || t2.push(42, &[0, 1]).unwrap(),
        );
        assert_eq!(table.rows(), 1);
        assert_eq!(pull(&table, 42), [1, 1]);
    });
}

/// Two threads race to create different rows in a shard with room for
/// one: exactly one creates its row, the other is refused, and the count
/// is exact afterwards.
#[test]
fn sparse_inserts_racing_for_the_last_row_of_a_limited_shard() {
    loom::model(|| {
        let spec = TableSpec::<i64>::sparse(2).max_rows_per_shard(1);
        let table = Arc::new(Table::new(spec).unwrap());
        let (t1, t2) = (Arc::clone(&table), Arc::clone(&table));
        let (a, b) = both(
            move || t1.push(1, &[1, 1]).is_ok(),
            move || t2.push(2, &[2, 2]).is_ok(),
        );
        assert!(a != b, "one insert, not {}", u8::from(a) + u8::from(b));
        assert_eq!(table.rows(), 1);
        let (key, row) = if a { (1, [1, 1]) } else { (2, [2, 2]) };
        assert_eq!(pull(&table, key), row);
    });
}

/// Two threads create the same row of a shard with room for one: both
/// pushes land in it, and the reservation of the insert that lost the
/// race is given back.
#[test]
fn sparse_insert_racing_insert_of_the_same_key_in_a_limited_shard() {
    loom::model(|| {
        let spec = TableSpec::<i64>::sparse(2).max_rows_per_shard(2);
        let table = Arc::new(Table::new(spec).unwrap());
        let (t1, t2) = (Arc::clone(&table), Arc::clone(&table));
        both(
            move || t1.push(42, &[1, 0]).unwrap(),
            move || t2.push(42, &[0, 1]).unwrap(),
        );
        assert_eq!(table.rows(), 1);
        assert_eq!(pull(&table, 42), [1, 1]);
        table.push(7, &[1, 1]).unwrap();
        assert!(matches!(
            table.push(8, &[1, 1]),
            Err(laggard::Error::TableFull { .. })
        ));
    });
}

/// Three keys whose hashes share the first trie level of a small sparse
/// table (16 root slots, indexed by the top 4 bits of the hash).
fn colliding_keys() -> (u64, u64, u64) {
    // The same bijective mixer the table uses.
    fn mix64(mut z: u64) -> u64 {
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    let slot = |k: u64| mix64(k) >> 60;
    let mut same = (1..).filter(|&k| slot(k) == slot(0));
    (0, same.next().unwrap(), same.next().unwrap())
}

/// Different keys inserted into one trie slot at once (one thread may split
/// the slot while the other fills it) are all kept, and a concurrent reader
/// of one of them sees it absent or complete.
#[test]
fn sparse_inserts_of_colliding_keys_are_all_kept() {
    let (a, b, c) = colliding_keys();
    loom::model(move || {
        let table = Arc::new(Table::new(TableSpec::<i64>::sparse(2)).unwrap());
        table.push(a, &[1, 1]).unwrap();
        let (t1, t2) = (Arc::clone(&table), Arc::clone(&table));
        let ((), seen_b) = both(
            move || t1.push(b, &[2, 2]).unwrap(),
            move || {
                t2.push(c, &[3, 3]).unwrap();
                pull(&t2, b)
            },
        );
        assert!(seen_b == [0, 0] || seen_b == [2, 2], "{seen_b:?}");
        assert_eq!(table.rows(), 3);
        assert_eq!(
            (pull(&table, a), pull(&table, b), pull(&table, c)),
            ([1, 1], [2, 2], [3, 3])
        );
    });
}

/// BSP: a worker that waits at clock 1 sees the other worker's clock-0 push
/// once the wait returns, and is never left asleep (loom reports a deadlock
/// if the wake-up is lost).
#[test]
fn gate_wait_advance_sees_the_push_and_never_loses_the_wakeup() {
    loom::model(|| {
        let gate = Arc::new(StalenessGate::new(2, Consistency::Bsp));
        let table = dense_row();
        let (g1, t1) = (Arc::clone(&gate), Arc::clone(&table));
        let (g0, t0) = (Arc::clone(&gate), Arc::clone(&table));
        let ((), seen) = both(
            move || {
                t1.push(0, &[1, 1]).unwrap();
                g1.advance(WorkerId(1)).unwrap();
            },
            move || {
                let clock = g0.advance(WorkerId(0)).unwrap();
                g0.wait_to_read(WorkerId(0), clock, far()).unwrap();
                pull(&t0, 0)
            },
        );
        assert_eq!(seen, [1, 1], "admitted before the clock-0 push was visible");
    });
}

/// A worker that leaves instead of advancing releases a waiting reader.
#[test]
fn gate_leave_releases_a_waiter() {
    loom::model(|| {
        let gate = Arc::new(StalenessGate::new(2, Consistency::Bsp));
        let (g1, g0) = (Arc::clone(&gate), Arc::clone(&gate));
        both(
            move || g1.leave(WorkerId(1)).unwrap(),
            move || {
                let clock = g0.advance(WorkerId(0)).unwrap();
                g0.wait_to_read(WorkerId(0), clock, far()).unwrap();
            },
        );
    });
}

/// SSP(1): a worker at clock 2 is admitted only once the other worker
/// finished clock 0, and then sees that clock's push (it may or may not
/// see the clock-1 push).
#[test]
fn gate_never_admits_a_read_that_violates_the_bound() {
    loom::model(|| {
        let gate = Arc::new(StalenessGate::new(2, Consistency::Ssp { staleness: 1 }));
        let table = dense_row();
        let (g1, t1) = (Arc::clone(&gate), Arc::clone(&table));
        let (g0, t0) = (Arc::clone(&gate), Arc::clone(&table));
        let ((), seen) = both(
            move || {
                for _ in 0..2 {
                    t1.push(0, &[1, 1]).unwrap();
                    g1.advance(WorkerId(1)).unwrap();
                }
            },
            move || {
                g0.advance(WorkerId(0)).unwrap();
                let clock = g0.advance(WorkerId(0)).unwrap();
                g0.wait_to_read(WorkerId(0), clock, far()).unwrap();
                pull(&t0, 0)
            },
        );
        assert!(
            seen[0] >= 1,
            "read at clock 2 with s=1 missed the clock-0 update: {seen:?}"
        );
    });
}

/// A connected pair on a network whose connections hold `capacity` unread
/// bytes per direction.
fn pair(
    capacity: usize,
) -> (
    laggard::transport::InProcessEndpoint,
    laggard::transport::InProcessEndpoint,
    laggard::transport::PeerId,
) {
    let net = InProcess::with_capacity(capacity);
    let mut a = net.bind("a").unwrap();
    let b = net.bind("b").unwrap();
    let peer = a.connect("b", far()).unwrap();
    (a, b, peer)
}

fn send(
    ep: &mut laggard::transport::InProcessEndpoint,
    peer: laggard::transport::PeerId,
    byte: u8,
) -> laggard::Result<()> {
    let mut buf = ep.lend(peer, 4, far())?;
    buf.fill(byte);
    ep.send(buf)
}

/// Receives until a frame arrives; returns its first byte.
fn recv_frame(ep: &mut laggard::transport::InProcessEndpoint) -> u8 {
    loop {
        match ep.recv(far()).unwrap() {
            Some(Event::Frame(_, frame)) => return frame[0],
            Some(_) => {}
            None => unreachable!("loom never times out"),
        }
    }
}

#[test]
fn inproc_sender_blocked_on_credit_is_woken_by_the_receiver() {
    loom::model(|| {
        // Room for one 4-byte frame: the second lend waits for the first
        // frame to be released.
        let (mut a, mut b, peer) = pair(4);
        let (sent, got) = both(
            move || {
                send(&mut a, peer, 1).unwrap();
                send(&mut a, peer, 2).unwrap();
                a
            },
            move || {
                let first = recv_frame(&mut b);
                let second = recv_frame(&mut b);
                (first, second, b)
            },
        );
        assert_eq!((got.0, got.1), (1, 2), "frames arrive in order");
        drop(sent);
    });
}

#[test]
fn inproc_sender_blocked_on_credit_fails_when_the_receiver_goes_away() {
    loom::model(|| {
        let (mut a, b, peer) = pair(4);
        let (second, ()) = both(
            move || {
                // Fails at once if b is already gone.
                let _ = send(&mut a, peer, 1);
                // Blocks until b is dropped, then must fail, not hang.
                send(&mut a, peer, 2)
            },
            move || drop(b),
        );
        // Either the first frame was still unread (the second send waited
        // and failed) or b was already gone when it was sent.
        assert!(second.is_err());
    });
}

#[test]
fn inproc_disconnect_wakes_a_sender_blocked_on_credit() {
    loom::model(|| {
        let (mut a, mut b, peer) = pair(4);
        let (second, _kept) = both(
            move || {
                send(&mut a, peer, 1).unwrap();
                // No credit until b releases the frame, which it keeps:
                // only the disconnect can wake this send.
                send(&mut a, peer, 2)
            },
            move || loop {
                if let Some(Event::Frame(from, frame)) = b.recv(far()).unwrap() {
                    b.disconnect(from);
                    return (frame, b);
                }
            },
        );
        assert!(second.is_err());
    });
}

#[test]
fn inproc_receiver_sees_frames_then_the_disconnect() {
    loom::model(|| {
        let (mut a, mut b, peer) = pair(64);
        let (_, events) = both(
            move || {
                send(&mut a, peer, 7).unwrap();
                drop(a);
            },
            move || {
                let mut events = Vec::new();
                loop {
                    match b.recv(far()).unwrap() {
                        Some(Event::Connected(_)) => events.push(0),
                        Some(Event::Frame(_, f)) => events.push(f[0]),
                        Some(Event::Disconnected(_)) => break,
                        None => unreachable!(),
                    }
                }
                events
            },
        );
        assert_eq!(events, vec![0, 7]);
    });
}
