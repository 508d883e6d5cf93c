//! Training with stragglers: logistic regression by P workers of an
//! in-process laggard cluster (S server shards, the in-process transport),
//! under BSP, SSP(s) and Async, on the same data and the same straggler
//! schedule.
//!
//! Each clock a worker pulls the weights (from its cache while fresh enough
//! for the table's consistency model, otherwise from the servers, which
//! hold the pull until the slowest worker allows it), computes a minibatch
//! gradient, pushes it (the servers apply SGD) and calls `clock()`. Compute
//! is simulated by a short sleep; a straggling clock takes longer. Delays
//! are drawn from a seeded generator per clock, so every model sees the
//! same schedule.
//!
//! Straggler schedules (`--stragglers`):
//! - `one` (default): on each clock, with probability `--straggle-prob`, one
//!   worker (a different one each time, drawn at random) is slow, as when
//!   interference hits one machine at a time;
//! - `all`: every worker is slow on a clock independently with that
//!   probability;
//! - a list such as `0,2`: only those workers are, independently.
//!
//! Prints progress while it runs, then a table (time to target loss, final
//! loss, messages), and writes `train_stragglers.csv` and
//! `train_stragglers.svg` (loss vs wall time and vs iteration) to `--out`.
//!
//! ```text
//! cargo run --release --example train_stragglers -- [--workers 4] [--servers 2]
//!     [--clocks 150] [--compute-ms 2] [--straggle-prob 0.5] [--straggle-ms 20]
//!     [--stragglers one|all|0,2] [--out target/train_stragglers]
//! ```

use std::fmt::Write as _;
use std::io::Write as _;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use laggard::{Cluster, ClusterSpec, Consistency, Sgd, TableSpec};

#[path = "common/args.rs"]
mod args;
#[path = "common/logreg.rs"]
mod logreg;
#[path = "common/monitor.rs"]
mod monitor;

use args::{check_threads, millis};
use logreg::{Data, FEATURES, ROW_WIDTH, ROWS, SAMPLES, generate, loss, rand};

#[derive(Clone)]
enum Stragglers {
    One,
    All,
    Only(Vec<u32>),
}

struct Config {
    workers: u32,
    servers: usize,
    clocks: u64,
    compute: Duration,
    straggle_prob: f64,
    straggle: Duration,
    stragglers: Stragglers,
    out: PathBuf,
}

fn parse_args() -> Result<Config, String> {
    let mut c = Config {
        workers: 4,
        servers: 2,
        clocks: 150,
        compute: Duration::from_millis(2),
        straggle_prob: 0.5,
        straggle: Duration::from_millis(20),
        stragglers: Stragglers::One,
        out: PathBuf::from("target/train_stragglers"),
    };
    let args: Vec<String> = std::env::args().skip(1).collect();
    for pair in args.chunks(2) {
        let flag = pair[0].as_str();
        let value = pair.get(1).ok_or(format!("{flag} needs a value"))?;
        let num = |v: &str| v.parse::<f64>().map_err(|e| format!("{flag} {v}: {e}"));
        match flag {
            "--workers" => c.workers = num(value)? as u32,
            "--servers" => c.servers = num(value)? as usize,
            "--clocks" => c.clocks = num(value)? as u64,
            "--compute-ms" => c.compute = millis(flag, value)?,
            "--straggle-prob" => c.straggle_prob = num(value)?,
            "--straggle-ms" => c.straggle = millis(flag, value)?,
            "--stragglers" if value == "one" => c.stragglers = Stragglers::One,
            "--stragglers" if value == "all" => c.stragglers = Stragglers::All,
            "--stragglers" => {
                c.stragglers = Stragglers::Only(
                    value
                        .split(',')
                        .map(|w| num(w).map(|w| w as u32))
                        .collect::<Result<_, _>>()?,
                )
            }
            "--out" => c.out = PathBuf::from(value),
            other => return Err(format!("unknown flag {other}")),
        }
    }
    if c.workers == 0 || c.servers == 0 || c.clocks == 0 || !(0.0..=1.0).contains(&c.straggle_prob)
    {
        return Err(
            "need --workers, --servers and --clocks >= 1 and --straggle-prob in [0, 1]".into(),
        );
    }
    check_threads(c.workers as usize, c.servers)?;
    Ok(c)
}

impl Config {
    /// How long worker `w` computes on clock `c`: the same for every model.
    fn compute_time(&self, w: u32, c: u64) -> Duration {
        let slow = match &self.stragglers {
            Stragglers::One => {
                rand(c ^ 0x5eed) < self.straggle_prob
                    && (rand(c ^ 0xfeed) * self.workers as f64) as u32 == w
            }
            Stragglers::All => rand(((u64::from(w)) << 32 | c) ^ 0x5eed) < self.straggle_prob,
            Stragglers::Only(ws) => {
                ws.contains(&w) && rand(((u64::from(w)) << 32 | c) ^ 0x5eed) < self.straggle_prob
            }
        };
        self.compute + if slow { self.straggle } else { Duration::ZERO }
    }
}

/// One model's run: (wall time, mean clock, loss) samples and counters.
struct Run {
    name: String,
    samples: Vec<(Duration, f64, f64)>,
    wall: Duration,
    pull_messages: u64,
    messages: u64,
    bytes: u64,
}

fn train(cfg: &Config, data: &Data, consistency: Consistency) -> laggard::Result<Run> {
    let spec = ClusterSpec::new(cfg.servers, cfg.workers as usize).table(
        "weights",
        TableSpec::<f32>::dense(0..ROWS, ROW_WIDTH)
            .update(Sgd::new(0.5))
            .consistency(consistency),
    );
    let cluster = Cluster::start(spec)?;
    let keys: Vec<u64> = (0..ROWS).collect();
    let clocks: Vec<AtomicU64> = (0..cfg.workers).map(|_| AtomicU64::new(0)).collect();
    let done = AtomicBool::new(false);
    let start = Instant::now();
    let mut samples = Vec::new();
    let stats = std::thread::scope(|s| -> laggard::Result<_> {
        // Monitor: sample the loss of the servers' current weights.
        let monitor = s.spawn(|| {
            let mut weights = vec![0f32; FEATURES];
            monitor::watch(&done, Duration::from_millis(10), || {
                cluster.read::<f32>("weights", &keys, &mut weights)?;
                let mean_clock = clocks
                    .iter()
                    // Relaxed: a progress figure for display, ordered with nothing.
                    .map(|c| c.load(Ordering::Relaxed))
                    .sum::<u64>() as f64
                    / cfg.workers as f64;
                let l = loss(data, &weights);
                samples.push((start.elapsed(), mean_clock, l));
                Ok(format!(
                    "{consistency:<9} clock {:>6.1}/{}  loss {l:.4}  {:>6.2?}",
                    mean_clock,
                    cfg.clocks,
                    start.elapsed()
                ))
            })
        });
        let stats = cluster.run_workers(|worker| {
            let weights = worker.table::<f32>("weights")?;
            let w = worker.id().0;
            let mut x = vec![0f32; FEATURES];
            let mut grad = vec![0f32; FEATURES];
            for clock in 0..cfg.clocks {
                worker.pull(&weights, &keys, &mut x)?;
                logreg::gradient(data, &x, w, cfg.workers, clock, &mut grad);
                std::thread::sleep(cfg.compute_time(w, clock));
                worker.push(&weights, &keys, &grad)?;
                worker.clock()?;
                // Relaxed: read only for the progress display.
                clocks[w as usize].store(clock + 1, Ordering::Relaxed);
            }
            Ok(worker.stats())
        });
        // Release pairs with the Acquire load in `monitor::watch`.
        done.store(true, Ordering::Release);
        monitor.join().expect("monitor panicked")?;
        stats
    })?;
    let wall = start.elapsed();
    cluster.shutdown()?;
    Ok(Run {
        name: consistency.to_string(),
        samples,
        wall,
        pull_messages: stats.iter().map(|s| s.pull_messages).sum(),
        messages: stats.iter().map(|s| s.messages_sent).sum(),
        bytes: stats.iter().map(|s| s.bytes_sent).sum(),
    })
}

fn write_csv(path: &PathBuf, runs: &[Run]) -> std::io::Result<()> {
    let mut csv = String::from("model,seconds,iteration,loss\n");
    for r in runs {
        for &(t, it, l) in &r.samples {
            writeln!(csv, "{},{:.4},{:.2},{:.6}", r.name, t.as_secs_f64(), it, l).unwrap();
        }
    }
    std::fs::write(path, csv)
}

/// Two panels: loss vs wall time and loss vs iteration, one line per model.
fn write_svg(path: &PathBuf, runs: &[Run]) -> std::io::Result<()> {
    const COLORS: [&str; 6] = [
        "#d62728", "#1f77b4", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b",
    ];
    let (pw, ph, margin) = (420.0, 300.0, 55.0);
    let losses = runs.iter().flat_map(|r| r.samples.iter().map(|s| s.2));
    let (lo, hi) = losses.fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), l| {
        (a.min(l), b.max(l))
    });
    let (lo, hi) = (lo - 0.02 * (hi - lo), hi + 0.02 * (hi - lo) + 1e-9);
    let max_t = runs
        .iter()
        .map(|r| r.wall.as_secs_f64())
        .fold(0.0, f64::max);
    let max_it = runs
        .iter()
        .flat_map(|r| r.samples.iter().map(|s| s.1))
        .fold(1.0, f64::max);
    let mut svg = format!(
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{}" height="{}" font-family="sans-serif" font-size="12">
<rect width="100%" height="100%" fill="white"/>
"#,
        2.0 * (pw + margin) + margin,
        ph + 2.0 * margin + 20.0
    );
    for (panel, (label, xmax)) in [("wall time (s)", max_t), ("iteration (mean clock)", max_it)]
        .into_iter()
        .enumerate()
    {
        let x0 = margin + panel as f64 * (pw + margin);
        let y0 = margin;
        writeln!(
            svg,
            r#"<rect x="{x0}" y="{y0}" width="{pw}" height="{ph}" fill="none" stroke="black"/>
<text x="{}" y="{}" text-anchor="middle">{label}</text>
<text x="{}" y="{}" text-anchor="middle" transform="rotate(-90 {} {})">training loss</text>
<text x="{x0}" y="{}" text-anchor="start">0</text>
<text x="{}" y="{}" text-anchor="end">{xmax:.1}</text>
<text x="{}" y="{}" text-anchor="end">{hi:.3}</text>
<text x="{}" y="{}" text-anchor="end">{lo:.3}</text>"#,
            x0 + pw / 2.0,
            y0 + ph + 32.0,
            x0 - 40.0,
            y0 + ph / 2.0,
            x0 - 40.0,
            y0 + ph / 2.0,
            y0 + ph + 15.0,
            x0 + pw,
            y0 + ph + 15.0,
            x0 - 4.0,
            y0 + 10.0,
            x0 - 4.0,
            y0 + ph
        )
        .unwrap();
        for (i, r) in runs.iter().enumerate() {
            let points: Vec<String> = r
                .samples
                .iter()
                .map(|&(t, it, l)| {
                    let x = if panel == 0 { t.as_secs_f64() } else { it };
                    let px = x0 + pw * x / xmax.max(1e-9);
                    let py = y0 + ph * (hi - l) / (hi - lo);
                    format!("{px:.1},{py:.1}")
                })
                .collect();
            writeln!(
                svg,
                r#"<polyline fill="none" stroke="{}" stroke-width="1.5" points="{}"/>"#,
                COLORS[i % COLORS.len()],
                points.join(" ")
            )
            .unwrap();
        }
    }
    for (i, r) in runs.iter().enumerate() {
        let x = margin + i as f64 * 120.0;
        let y = ph + 2.0 * margin + 10.0;
        writeln!(
            svg,
            r#"<line x1="{x}" y1="{}" x2="{}" y2="{}" stroke="{}" stroke-width="3"/><text x="{}" y="{y}">{}</text>"#,
            y - 4.0,
            x + 20.0,
            y - 4.0,
            COLORS[i % COLORS.len()],
            x + 25.0,
            r.name
        )
        .unwrap();
    }
    svg.push_str("</svg>\n");
    std::fs::write(path, svg)
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
        Stragglers::One => "one worker at a time (drawn per clock)".to_string(),
        Stragglers::All => "any worker, independently".to_string(),
        Stragglers::Only(ws) => format!("workers {ws:?}, independently"),
    };
    println!(
        "logistic regression, {FEATURES} features, {SAMPLES} samples; {} workers and {} server shards \
         (in-process transport), {} clocks, {:?} compute per clock;",
        cfg.workers, cfg.servers, cfg.clocks, cfg.compute
    );
    println!(
        "stragglers: {who} takes {:?} longer on a clock with probability {}\n",
        cfg.straggle, cfg.straggle_prob
    );
    let models = [
        Consistency::Bsp,
        Consistency::Ssp { staleness: 1 },
        Consistency::Ssp { staleness: 3 },
        Consistency::Ssp { staleness: 8 },
        Consistency::Async,
    ];
    let mut runs = Vec::new();
    for model in models {
        match train(&cfg, &data, model) {
            Ok(run) => runs.push(run),
            Err(e) => {
                eprintln!("training under {model} failed: {e}");
                std::process::exit(1);
            }
        }
    }
    // Target: within 2% of the best loss any model reached.
    let best = runs
        .iter()
        .flat_map(|r| r.samples.iter().map(|s| s.2))
        .fold(f64::INFINITY, f64::min);
    let target = best * 1.02;
    let reach = |r: &Run| r.samples.iter().find(|s| s.2 <= target).map(|s| s.0);
    println!("\ntarget loss {target:.4} (best reached {best:.4} + 2%)\n");
    println!(
        "{:<10} {:>15} {:>8} {:>8} {:>10} {:>10} {:>10} {:>9}",
        "model", "time to target", "vs BSP", "final", "wall", "pull msgs", "all msgs", "MB sent"
    );
    let bsp = reach(&runs[0]);
    for r in &runs {
        let t = reach(r);
        let ratio = match (t, bsp) {
            (Some(t), Some(b)) => format!("{:.2}x", t.as_secs_f64() / b.as_secs_f64()),
            _ => "-".into(),
        };
        let t = t.map_or("not reached".into(), |t| format!("{t:.2?}"));
        println!(
            "{:<10} {:>15} {:>8} {:>8.4} {:>10.2?} {:>10} {:>10} {:>9.2}",
            r.name,
            t,
            ratio,
            r.samples.last().map_or(f64::NAN, |s| s.2),
            r.wall,
            r.pull_messages,
            r.messages,
            r.bytes as f64 / 1e6
        );
    }
    let written = std::fs::create_dir_all(&cfg.out).and_then(|()| {
        let csv = cfg.out.join("train_stragglers.csv");
        let svg = cfg.out.join("train_stragglers.svg");
        write_csv(&csv, &runs)?;
        write_svg(&svg, &runs)?;
        Ok((csv, svg))
    });
    match written {
        Ok((csv, svg)) => println!("\nwrote {} and {}", csv.display(), svg.display()),
        Err(e) => {
            eprintln!("could not write results to {}: {e}", cfg.out.display());
            std::process::exit(1);
        }
    }
    std::io::stdout().flush().ok();
}
