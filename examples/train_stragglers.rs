//! Training with stragglers: logistic regression by P worker threads that
//! share one parameter table, under BSP, SSP(s) and Async, on the same data
//! and the same straggler schedule.
//!
//! Workers drive the core crate's [`Table`] and [`StalenessGate`] directly
//! (the networked runtime builds on these). Each clock a worker waits until
//! the consistency model lets it read, pulls the weights, computes a
//! minibatch gradient, pushes it (the table applies SGD), and advances its
//! clock. A worker's compute is simulated by a short sleep; a straggler's
//! clock takes longer. Delays are drawn from a seeded generator per
//! (worker, clock), so every model sees the same schedule.
//!
//! ```text
//! cargo run --release --example train_stragglers -- [--workers 4] [--clocks 150]
//!     [--compute-ms 2] [--straggle-prob 0.15] [--straggle-ms 25] [--stragglers all|0,2]
//! ```

use std::time::{Duration, Instant};

use laggard::{Consistency, Sgd, StalenessGate, Table, TableSpec, WorkerId};

const FEATURES: usize = 32;
const ROW_WIDTH: usize = 8;
const ROWS: u64 = (FEATURES / ROW_WIDTH) as u64;
const SAMPLES: usize = 8_000;
const BATCH: usize = 32;

struct Config {
    workers: u32,
    clocks: u64,
    compute: Duration,
    straggle_prob: f64,
    straggle: Duration,
    stragglers: Option<Vec<u32>>,
}

fn parse_args() -> Result<Config, String> {
    let mut c = Config {
        workers: 4,
        clocks: 150,
        compute: Duration::from_millis(2),
        straggle_prob: 0.15,
        straggle: Duration::from_millis(25),
        stragglers: None,
    };
    let args: Vec<String> = std::env::args().skip(1).collect();
    for pair in args.chunks(2) {
        let (flag, value) = (
            pair[0].as_str(),
            pair.get(1).ok_or(format!("{} needs a value", pair[0]))?,
        );
        let num = |v: &str| v.parse::<f64>().map_err(|e| format!("{flag} {v}: {e}"));
        match flag {
            "--workers" => c.workers = num(value)? as u32,
            "--clocks" => c.clocks = num(value)? as u64,
            "--compute-ms" => c.compute = Duration::from_secs_f64(num(value)? / 1e3),
            "--straggle-prob" => c.straggle_prob = num(value)?,
            "--straggle-ms" => c.straggle = Duration::from_secs_f64(num(value)? / 1e3),
            "--stragglers" if value == "all" => c.stragglers = None,
            "--stragglers" => {
                c.stragglers = Some(
                    value
                        .split(',')
                        .map(|w| num(w).map(|w| w as u32))
                        .collect::<Result<_, _>>()?,
                )
            }
            other => return Err(format!("unknown flag {other}")),
        }
    }
    if c.workers == 0 || c.clocks == 0 || !(0.0..=1.0).contains(&c.straggle_prob) {
        return Err("need --workers >= 1, --clocks >= 1 and --straggle-prob in [0, 1]".into());
    }
    Ok(c)
}

/// A small deterministic generator (splitmix64), so runs are reproducible.
fn rand(seed: u64) -> f64 {
    let mut z = seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    ((z ^ (z >> 31)) >> 11) as f64 / (1u64 << 53) as f64
}

struct Data {
    x: Vec<[f32; FEATURES]>,
    y: Vec<f32>,
}

fn generate() -> Data {
    let truth: Vec<f64> = (0..FEATURES).map(|j| rand(j as u64) * 4.0 - 2.0).collect();
    let mut data = Data {
        x: Vec::with_capacity(SAMPLES),
        y: Vec::with_capacity(SAMPLES),
    };
    for i in 0..SAMPLES {
        let mut x = [0f32; FEATURES];
        for (j, xj) in x.iter_mut().enumerate() {
            *xj = (rand(1_000_000 + (i * FEATURES + j) as u64) * 2.0 - 1.0) as f32;
        }
        let z: f64 = x.iter().zip(&truth).map(|(&a, b)| a as f64 * b).sum();
        let p = 1.0 / (1.0 + (-z).exp());
        data.y.push(if rand(9_000_000 + i as u64) < p {
            1.0
        } else {
            0.0
        });
        data.x.push(x);
    }
    data
}

fn sigmoid(z: f32) -> f32 {
    1.0 / (1.0 + (-z).exp())
}

/// Mean logistic loss over the whole data set.
fn loss(data: &Data, w: &[f32]) -> f64 {
    let total: f64 = data
        .x
        .iter()
        .zip(&data.y)
        .map(|(x, &y)| {
            let z: f32 = x.iter().zip(w).map(|(a, b)| a * b).sum();
            // log(1 + e^z) - y z, computed stably.
            let z = z as f64;
            z.max(0.0) + (-z.abs()).exp().ln_1p() - y as f64 * z
        })
        .sum();
    total / data.x.len() as f64
}

struct Run {
    name: String,
    samples: Vec<(Duration, f64)>,
    wall: Duration,
    waits: u64,
}

fn train(cfg: &Config, data: &Data, consistency: Consistency) -> laggard::Result<Run> {
    let table = Table::new(
        TableSpec::<f32>::dense(0..ROWS, ROW_WIDTH)
            .shards(2)
            .update(Sgd::new(0.5)),
    )?;
    let gate = StalenessGate::new(cfg.workers as usize, consistency);
    let start = Instant::now();
    let waits = std::sync::atomic::AtomicU64::new(0);
    let keys: Vec<u64> = (0..ROWS).collect();
    let mut samples = Vec::new();
    std::thread::scope(|s| -> laggard::Result<()> {
        let handles: Vec<_> = (0..cfg.workers)
            .map(|w| {
                let (table, gate, keys, waits) = (&table, &gate, &keys, &waits);
                s.spawn(move || -> laggard::Result<()> {
                    let me = WorkerId(w);
                    let straggles = cfg.stragglers.as_ref().is_none_or(|s| s.contains(&w));
                    let mut weights = vec![0f32; FEATURES];
                    let mut grad = vec![0f32; FEATURES];
                    let mut clock = 0;
                    while clock < cfg.clocks {
                        if !gate.can_read(clock) {
                            waits.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        }
                        gate.wait_to_read(me, clock, Instant::now() + Duration::from_secs(60))?;
                        table.pull_batch(keys, &mut weights)?;
                        // Minibatch gradient of the logistic loss, from this worker's slice.
                        grad.iter_mut().for_each(|g| *g = 0.0);
                        for b in 0..BATCH {
                            let i = (w as usize
                                + cfg.workers as usize * (clock as usize * BATCH + b))
                                % SAMPLES;
                            let x = &data.x[i];
                            let z: f32 = x.iter().zip(&weights).map(|(a, b)| a * b).sum();
                            let err = sigmoid(z) - data.y[i];
                            grad.iter_mut().zip(x).for_each(|(g, a)| {
                                *g += err * a / (BATCH as f32 * cfg.workers as f32)
                            });
                        }
                        let mut pause = cfg.compute;
                        let seed = (u64::from(w) << 32) | clock;
                        if straggles && rand(seed ^ 0x5eed) < cfg.straggle_prob {
                            pause += cfg.straggle;
                        }
                        std::thread::sleep(pause);
                        table.push_batch(keys, &grad)?;
                        clock = gate.advance(me)?;
                    }
                    gate.leave(me)
                })
            })
            .collect();
        // Monitor: sample the loss of the current weights while training runs.
        let mut weights = vec![0f32; FEATURES];
        loop {
            table.pull_batch(&keys, &mut weights)?;
            samples.push((start.elapsed(), loss(data, &weights)));
            if handles.iter().all(|h| h.is_finished()) {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        for h in handles {
            h.join().expect("worker panicked")?;
        }
        Ok(())
    })?;
    let wall = start.elapsed();
    let mut weights = vec![0f32; FEATURES];
    table.pull_batch(&keys, &mut weights)?;
    samples.push((wall, loss(data, &weights)));
    Ok(Run {
        name: consistency.to_string(),
        samples,
        wall,
        waits: waits.into_inner(),
    })
}

fn main() {
    let cfg = match parse_args() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(2);
        }
    };
    let data = generate();
    let who = match &cfg.stragglers {
        None => "any worker".to_string(),
        Some(ws) => format!("workers {ws:?}"),
    };
    println!(
        "logistic regression, {} features, {} samples; {} workers x {} clocks, {:?} compute per clock;",
        FEATURES, SAMPLES, cfg.workers, cfg.clocks, cfg.compute
    );
    println!(
        "stragglers: {who} take {:?} longer on a clock with probability {}\n",
        cfg.straggle, cfg.straggle_prob
    );
    let models = [
        Consistency::Bsp,
        Consistency::Ssp { staleness: 1 },
        Consistency::Ssp { staleness: 3 },
        Consistency::Async,
    ];
    let mut runs = Vec::new();
    for model in models {
        print!("training under {model:<9} ... ");
        use std::io::Write;
        std::io::stdout().flush().ok();
        match train(&cfg, &data, model) {
            Ok(run) => {
                println!(
                    "done in {:.2?}, final loss {:.4}",
                    run.wall,
                    run.samples.last().unwrap().1
                );
                runs.push(run);
            }
            Err(e) => {
                eprintln!("failed: {e}");
                std::process::exit(1);
            }
        }
    }
    // Target: within 2% of the best loss any model reached.
    let best = runs
        .iter()
        .flat_map(|r| r.samples.iter().map(|s| s.1))
        .fold(f64::INFINITY, f64::min);
    let target = best * 1.02;
    let reach = |r: &Run| r.samples.iter().find(|s| s.1 <= target).map(|s| s.0);
    println!("\ntarget loss {target:.4} (best reached {best:.4} + 2%)\n");
    println!(
        "{:<10} {:>16} {:>11} {:>10} {:>13} {:>14}",
        "model", "time to target", "vs BSP", "final", "wall time", "blocked reads"
    );
    let bsp = reach(&runs[0]);
    for r in &runs {
        let t = reach(r);
        let ratio = match (t, bsp) {
            (Some(t), Some(b)) => format!("{:.2}x", t.as_secs_f64() / b.as_secs_f64()),
            _ => "-".into(),
        };
        let t = t.map_or("not reached".into(), |t| format!("{t:.2?}"));
        let fin = r.samples.last().unwrap().1;
        println!(
            "{:<10} {:>16} {:>11} {:>10.4} {:>13.2?} {:>14}",
            r.name, t, ratio, fin, r.wall, r.waits
        );
    }
}
