//! The SSP convergence bound, checked empirically on a convex problem.
//!
//! Theorem (Ho et al., "More effective distributed ML via a stale
//! synchronous parallel parameter server", NIPS 2013): for convex f_t that
//! are L-Lipschitz, a feasible set with D(x||x') = ½||x - x'||² <= F² for all
//! its points, P workers, staleness s, and steps η_t = σ/√t with
//! σ = F / (L √(2(s+1)P)), the regret of T updates satisfies
//!
//!   R[X] = (1/T) Σ_t f_t(x̃_t) - f(x*) <= 4 F L √(2(s+1)P / T).
//!
//! Here f_t is the logistic loss of the minibatch behind update t, at the
//! (possibly stale) weights x̃_t the worker pulled; f is the mean logistic
//! loss over the data. How the assumptions are met:
//! - convex: the logistic loss is;
//! - L-Lipschitz: a sample's loss has gradient (σ(z) - y)·a with
//!   |σ(z) - y| <= 1, so L = the largest ||a_i|| of the data (computed);
//! - F: the feasible set is the ball of radius R = 4 around 0, so
//!   F² = ½(2R)²; the test asserts every weight vector the run produced
//!   stayed in the ball, so the unprojected run is the projected one;
//! - f(x*): replaced by a lower bound, f(x̂) - ||∇f(x̂)||·2R for the x̂ that
//!   long full-batch gradient descent finds (convexity), so the regret
//!   measured is an upper bound of the true regret;
//! - t counts updates of the row: each push applies the step once, and
//!   pushes are coalesced per worker and clock, so t runs over all workers'
//!   updates as in the theorem (T = P × clocks).

use std::sync::Mutex;

use laggard::{Cluster, ClusterSpec, Consistency, Schedule, Sgd, TableSpec};

const D: usize = 8;
const N: usize = 2_000;
const BATCH: usize = 16;
const RADIUS: f64 = 4.0;

fn rand(seed: u64) -> f64 {
    let mut z = seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    ((z ^ (z >> 31)) >> 11) as f64 / (1u64 << 53) as f64
}

struct Data {
    a: Vec<[f64; D]>,
    y: Vec<f64>,
}

fn data() -> Data {
    let truth: Vec<f64> = (0..D).map(|j| rand(j as u64) * 2.0 - 1.0).collect();
    let mut d = Data {
        a: Vec::new(),
        y: Vec::new(),
    };
    for i in 0..N {
        let mut a = [0.0; D];
        for (j, x) in a.iter_mut().enumerate() {
            *x = rand(1_000 + (i * D + j) as u64) * 2.0 - 1.0;
        }
        let z: f64 = a.iter().zip(&truth).map(|(a, t)| a * t).sum();
        d.y.push(if rand(500_000 + i as u64) < 1.0 / (1.0 + (-z).exp()) {
            1.0
        } else {
            0.0
        });
        d.a.push(a);
    }
    d
}

fn sample_loss(a: &[f64; D], y: f64, x: &[f64]) -> f64 {
    let z: f64 = a.iter().zip(x).map(|(a, x)| a * x).sum();
    z.max(0.0) + (-z.abs()).exp().ln_1p() - y * z
}

fn sample_grad(a: &[f64; D], y: f64, x: &[f64], g: &mut [f64], scale: f64) {
    let z: f64 = a.iter().zip(x).map(|(a, x)| a * x).sum();
    let err = 1.0 / (1.0 + (-z).exp()) - y;
    g.iter_mut().zip(a).for_each(|(g, a)| *g += scale * err * a);
}

fn full_loss(d: &Data, x: &[f64]) -> f64 {
    d.a.iter()
        .zip(&d.y)
        .map(|(a, &y)| sample_loss(a, y, x))
        .sum::<f64>()
        / N as f64
}

fn norm(v: &[f64]) -> f64 {
    v.iter().map(|x| x * x).sum::<f64>().sqrt()
}

/// A lower bound of min f over the ball.
fn optimum_lower_bound(d: &Data) -> f64 {
    let mut x = vec![0.0; D];
    let mut g = vec![0.0; D];
    for _ in 0..3_000 {
        g.iter_mut().for_each(|g| *g = 0.0);
        for (a, &y) in d.a.iter().zip(&d.y) {
            sample_grad(a, y, &x, &mut g, 1.0 / N as f64);
        }
        x.iter_mut().zip(&g).for_each(|(x, g)| *x -= 2.0 * g);
    }
    g.iter_mut().for_each(|g| *g = 0.0);
    for (a, &y) in d.a.iter().zip(&d.y) {
        sample_grad(a, y, &x, &mut g, 1.0 / N as f64);
    }
    assert!(norm(&x) < RADIUS, "the optimum lies outside the ball");
    full_loss(d, &x) - norm(&g) * 2.0 * RADIUS
}

/// Runs SSP(s) with the theorem's schedule; returns (regret, bound, largest
/// weight norm seen).
fn run(d: &Data, staleness: u64, workers: usize, clocks: u64, f_star: f64) -> (f64, f64, f64) {
    let l = d.a.iter().map(|a| norm(a)).fold(0.0, f64::max);
    let f = (0.5 * (2.0 * RADIUS).powi(2)).sqrt();
    let schedule = Schedule::ssp_theorem(f, l, staleness, workers as u64).unwrap();
    let spec = ClusterSpec::new(2, workers).table(
        "x",
        TableSpec::<f64>::dense(0..1, D)
            .update(Sgd::with_schedule(schedule))
            .consistency(Consistency::Ssp { staleness }),
    );
    let cluster = Cluster::start(spec).unwrap();
    let regret_terms = Mutex::new(Vec::new());
    cluster
        .run_workers(|worker| {
            let table = worker.table::<f64>("x")?;
            let w = worker.id().0 as usize;
            let mut x = vec![0.0; D];
            let mut g = vec![0.0; D];
            let mut mine = Vec::new();
            for c in 0..clocks {
                worker.pull(&table, &[0], &mut x)?;
                // Stragglers: worker 0 is slow every third clock.
                if w == 0 && c % 3 == 0 {
                    std::thread::sleep(std::time::Duration::from_millis(1));
                }
                let mut f_t = 0.0;
                g.iter_mut().for_each(|g| *g = 0.0);
                for b in 0..BATCH {
                    let i = (w + workers * (c as usize * BATCH + b)) % N;
                    f_t += sample_loss(&d.a[i], d.y[i], &x) / BATCH as f64;
                    sample_grad(&d.a[i], d.y[i], &x, &mut g, 1.0 / BATCH as f64);
                }
                mine.push((f_t, norm(&x)));
                worker.push(&table, &[0], &g)?;
                worker.clock()?;
            }
            regret_terms.lock().unwrap().extend(mine);
            Ok(())
        })
        .unwrap();
    let terms = regret_terms.into_inner().unwrap();
    let t = terms.len() as f64;
    assert_eq!(terms.len(), workers * clocks as usize);
    let regret = terms.iter().map(|p| p.0).sum::<f64>() / t - f_star;
    let bound = 4.0 * f * l * (2.0 * (staleness as f64 + 1.0) * workers as f64 / t).sqrt();
    let mut last = vec![0.0; D];
    cluster.read::<f64>("x", &[0], &mut last).unwrap();
    let largest = terms.iter().map(|p| p.1).fold(norm(&last), f64::max);
    (regret, bound, largest)
}

#[test]
fn ssp_regret_stays_under_the_theorem_bound() {
    let d = data();
    let f_star = optimum_lower_bound(&d);
    for staleness in [0, 2, 5] {
        let (regret, bound, largest) = run(&d, staleness, 4, 60, f_star);
        eprintln!(
            "s={staleness}: regret {regret:.4} bound {bound:.4} largest {largest:.3} f*>={f_star:.4}"
        );
        assert!(
            largest <= RADIUS,
            "weights left the feasible ball: norm {largest}"
        );
        assert!(
            regret <= bound,
            "SSP(s={staleness}): regret {regret} > bound {bound}"
        );
        // f(x*) was replaced by a lower bound, so the regret is positive.
        assert!(
            regret > 0.0,
            "regret {regret} below zero: the optimum bound is wrong"
        );
    }
    // The worst-case bound is loose; what it promises in shape (regret
    // falling as T grows) shows in the measurement too.
    let (short, _, _) = run(&d, 2, 4, 15, f_star);
    let (long, _, _) = run(&d, 2, 4, 120, f_star);
    assert!(
        long < short,
        "regret did not fall with T: {short} at T=60, {long} at T=480"
    );
}
