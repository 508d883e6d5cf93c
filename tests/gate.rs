//! The staleness gate: the SSP read rule, deadlines, membership changes and
//! wake-ups across threads.

use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use laggard::{Consistency, Error, StalenessGate, WorkerId, WorkerStatus};

fn soon() -> Instant {
    Instant::now() + Duration::from_millis(20)
}

fn later() -> Instant {
    Instant::now() + Duration::from_secs(30)
}

#[test]
fn bsp_waits_for_everyone_to_finish_the_clock() {
    let gate = StalenessGate::new(3, Consistency::Bsp);
    gate.wait_to_read(WorkerId(0), 0, soon()).unwrap();
    assert_eq!(gate.advance(WorkerId(0)).unwrap(), 1);
    assert!(!gate.can_read(1));
    gate.advance(WorkerId(1)).unwrap();
    assert!(gate.wait_to_read(WorkerId(0), 1, soon()).is_err());
    gate.advance(WorkerId(2)).unwrap();
    gate.wait_to_read(WorkerId(0), 1, soon()).unwrap();
}

#[test]
fn ssp_allows_s_clocks_of_lead() {
    let gate = StalenessGate::new(2, Consistency::Ssp { staleness: 2 });
    for _ in 0..2 {
        gate.advance(WorkerId(0)).unwrap();
    }
    assert!(gate.can_read(2));
    gate.advance(WorkerId(0)).unwrap();
    assert!(!gate.can_read(3));
    gate.advance(WorkerId(1)).unwrap();
    assert!(gate.can_read(3));
}

#[test]
fn async_never_waits() {
    let gate = StalenessGate::new(2, Consistency::Async);
    for _ in 0..100 {
        gate.advance(WorkerId(0)).unwrap();
    }
    gate.wait_to_read(WorkerId(0), 100, Instant::now()).unwrap();
}

#[test]
fn timeout_names_the_waiter_the_need_and_who_is_behind() {
    let gate = StalenessGate::new(4, Consistency::Ssp { staleness: 1 });
    for w in [0, 2] {
        for _ in 0..3 {
            gate.advance(WorkerId(w)).unwrap();
        }
    }
    gate.advance(WorkerId(3)).unwrap();
    let err = gate.wait_to_read(WorkerId(0), 3, soon()).unwrap_err();
    let Error::Timeout(t) = &err else {
        panic!("expected a timeout, got {err:?}")
    };
    assert_eq!(t.waiter, Some((WorkerId(0), 3)));
    assert_eq!(t.needed, 2);
    assert_eq!(t.behind, vec![(WorkerId(1), 0), (WorkerId(3), 1)]);
    let msg = err.to_string();
    for needle in [
        "worker 0 at clock 3",
        "SSP(s=1)",
        "reach clock 2",
        "worker 1 at clock 0 (2 short)",
        "worker 3 at clock 1 (1 short)",
    ] {
        assert!(msg.contains(needle), "{msg:?} lacks {needle:?}");
    }
}

#[test]
fn leaving_or_dying_releases_the_others() {
    let gate = StalenessGate::new(3, Consistency::Bsp);
    gate.advance(WorkerId(0)).unwrap();
    gate.advance(WorkerId(1)).unwrap();
    assert!(!gate.can_read(1));
    gate.declare_dead(WorkerId(2)).unwrap();
    assert!(gate.can_read(1));
    assert_eq!(
        gate.advance(WorkerId(2)),
        Err(Error::WorkerNotActive {
            worker: WorkerId(2),
            state: "dead"
        })
    );
    gate.leave(WorkerId(1)).unwrap();
    gate.leave(WorkerId(1)).unwrap();
    assert_eq!(
        gate.snapshot().get(WorkerId(1)),
        Some((1, WorkerStatus::Left))
    );
    for _ in 0..5 {
        gate.advance(WorkerId(0)).unwrap();
    }
    gate.wait_to_read(WorkerId(0), 6, soon()).unwrap();
    gate.leave(WorkerId(0)).unwrap();
    assert_eq!(gate.min_clock(), None);
}

#[test]
fn unknown_workers_are_errors() {
    let gate = StalenessGate::new(2, Consistency::Bsp);
    assert_eq!(
        gate.advance(WorkerId(2)),
        Err(Error::UnknownWorker {
            worker: WorkerId(2),
            workers: 2
        })
    );
    assert!(gate.leave(WorkerId(9)).is_err());
}

#[test]
fn a_joining_worker_starts_at_the_slowest_clock() {
    let gate = StalenessGate::new(2, Consistency::Bsp);
    gate.advance(WorkerId(0)).unwrap();
    gate.advance(WorkerId(0)).unwrap();
    gate.advance(WorkerId(1)).unwrap();
    let new = gate.join();
    assert_eq!(new, WorkerId(2));
    assert_eq!(gate.snapshot().get(new), Some((1, WorkerStatus::Active)));
    assert_eq!(gate.min_clock(), Some(1));
}

#[test]
fn a_sleeping_reader_is_woken_by_the_last_advance() {
    let gate = Arc::new(StalenessGate::new(2, Consistency::Bsp));
    gate.advance(WorkerId(0)).unwrap();
    let g = Arc::clone(&gate);
    let reader = thread::spawn(move || g.wait_to_read(WorkerId(0), 1, later()));
    thread::sleep(Duration::from_millis(30)); // let it park
    gate.advance(WorkerId(1)).unwrap();
    reader.join().unwrap().unwrap();
}

#[test]
fn bsp_lockstep_across_threads_never_loses_a_wakeup() {
    const WORKERS: u32 = 4;
    const CLOCKS: u64 = 300;
    let gate = StalenessGate::new(WORKERS as usize, Consistency::Bsp);
    let progress: Vec<_> = (0..WORKERS)
        .map(|_| std::sync::atomic::AtomicU64::new(0))
        .collect();
    thread::scope(|s| {
        for w in 0..WORKERS {
            let (gate, progress) = (&gate, &progress);
            s.spawn(move || {
                let me = WorkerId(w);
                let mut clock = 0;
                while clock < CLOCKS {
                    gate.wait_to_read(me, clock, later()).unwrap();
                    for p in progress {
                        // Every worker has finished clock - 1.
                        assert!(p.load(std::sync::atomic::Ordering::SeqCst) >= clock);
                    }
                    progress[w as usize].fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    clock = gate.advance(me).unwrap();
                }
            });
        }
    });
    assert_eq!(gate.min_clock(), Some(CLOCKS));
}
