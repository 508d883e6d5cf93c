//! Property tests for the staleness gate: random clock schedules against a
//! plain model of the SSP rule, and an instrumented run where workers push
//! to a table and every admitted read is checked against the bound.

use std::time::Instant;

use laggard::{Consistency, StalenessGate, Table, TableSpec, WorkerId, WorkerStatus};
use proptest::prelude::*;

#[derive(Debug, Clone)]
enum Step {
    Advance(u32),
    Leave(u32),
    Die(u32),
    Join,
    Read(u32),
}

fn step(workers: u32) -> impl Strategy<Value = Step> {
    prop_oneof![
        12 => (0..workers + 1).prop_map(Step::Advance),
        1 => (0..workers).prop_map(Step::Leave),
        1 => (0..workers).prop_map(Step::Die),
        1 => Just(Step::Join),
        8 => (0..workers).prop_map(Step::Read),
    ]
}

fn consistency() -> impl Strategy<Value = Consistency> {
    prop_oneof![
        Just(Consistency::Bsp),
        (0..4u64).prop_map(|staleness| Consistency::Ssp { staleness }),
        Just(Consistency::Async),
    ]
}

proptest! {
    /// The gate's clocks and its read decisions match a model that applies
    /// the SSP rule literally: a worker at clock c may read iff every
    /// active worker's clock is >= c - s.
    #[test]
    fn gate_matches_the_ssp_rule(
        workers in 1..5u32,
        consistency in consistency(),
        steps in prop::collection::vec(step(5), 0..120),
    ) {
        let gate = StalenessGate::new(workers as usize, consistency);
        let mut model: Vec<(u64, WorkerStatus)> = vec![(0, WorkerStatus::Active); workers as usize];
        for step in steps {
            match step {
                Step::Advance(w) => {
                    let r = gate.advance(WorkerId(w));
                    match model.get_mut(w as usize) {
                        Some((c, WorkerStatus::Active)) => { *c += 1; prop_assert_eq!(r.ok(), Some(*c)); }
                        _ => prop_assert!(r.is_err()),
                    }
                }
                Step::Leave(w) | Step::Die(w) => {
                    let status = if matches!(step, Step::Leave(_)) { WorkerStatus::Left } else { WorkerStatus::Dead };
                    let r = if status == WorkerStatus::Left { gate.leave(WorkerId(w)) } else { gate.declare_dead(WorkerId(w)) };
                    match model.get_mut(w as usize) {
                        Some(e) => { prop_assert!(r.is_ok()); if e.1 == WorkerStatus::Active { e.1 = status; } }
                        None => prop_assert!(r.is_err()),
                    }
                }
                Step::Join => {
                    let active_min = model.iter().filter(|e| e.1 == WorkerStatus::Active).map(|e| e.0).min();
                    let start = active_min.unwrap_or_else(|| model.iter().map(|e| e.0).max().unwrap_or(0));
                    prop_assert_eq!(gate.join(), WorkerId(model.len() as u32));
                    model.push((start, WorkerStatus::Active));
                }
                Step::Read(w) => {
                    let Some(&(clock, _)) = model.get(w as usize) else { continue };
                    let allowed = match consistency.staleness() {
                        None => true,
                        Some(s) => model.iter().all(|e| e.1 != WorkerStatus::Active || e.0 + s >= clock),
                    };
                    prop_assert_eq!(gate.can_read(clock), allowed);
                    prop_assert_eq!(gate.wait_to_read(WorkerId(w), clock, Instant::now()).is_ok(), allowed);
                }
            }
            let snapshot = gate.snapshot();
            let got: Vec<_> = snapshot.iter().map(|(_, c, s)| (c, s)).collect();
            prop_assert_eq!(&got, &model);
        }
    }

    /// Workers run in a random interleaving; at each clock a worker pushes
    /// +1 to its own row of an integer table, then advances. Whenever the
    /// gate admits a read by a worker at clock c, every active worker's row
    /// must already hold all its updates from clocks <= c - s - 1, i.e. be
    /// at least c - s. A worker that may not read yet simply waits its turn.
    #[test]
    fn admitted_reads_never_miss_an_update_older_than_the_bound(
        workers in 2..5u32,
        staleness in 0..3u64,
        schedule in prop::collection::vec(0..5u32, 1..300),
    ) {
        let gate = StalenessGate::new(workers as usize, Consistency::Ssp { staleness });
        let table = Table::new(TableSpec::<i64>::dense(0..u64::from(workers), 1)).unwrap();
        let mut clocks = vec![0u64; workers as usize];
        let mut reads = 0;
        for w in schedule.into_iter().map(|w| w % workers) {
            let clock = clocks[w as usize];
            if !gate.can_read(clock) {
                continue;
            }
            reads += 1;
            let mut row = [0i64];
            for other in 0..workers {
                table.pull(u64::from(other), &mut row).unwrap();
                prop_assert!(row[0] as u64 + staleness >= clock,
                    "worker {w} at clock {clock} read worker {other}'s row at {}", row[0]);
            }
            table.push(u64::from(w), &[1]).unwrap();
            clocks[w as usize] = gate.advance(WorkerId(w)).unwrap();
        }
        prop_assert!(reads > 0);
        // The fastest worker never got more than s + 1 clocks ahead.
        let (min, max) = (clocks.iter().min().unwrap(), clocks.iter().max().unwrap());
        prop_assert!(max - min <= staleness + 1);
    }
}
