//! The training problem the demos share: logistic regression on a
//! synthetic, seeded data set, so every run sees the same data.

#![allow(dead_code)]

/// Features per sample (the model's weights).
pub const FEATURES: usize = 32;
/// Elements per table row.
pub const ROW_WIDTH: usize = 8;
/// Rows holding the weights.
pub const ROWS: u64 = (FEATURES / ROW_WIDTH) as u64;
/// Samples in the data set.
pub const SAMPLES: usize = 8_000;
/// Samples per worker per clock.
pub const BATCH: usize = 32;

/// A small deterministic generator (splitmix64), so runs are reproducible.
pub fn rand(seed: u64) -> f64 {
    let mut z = seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    ((z ^ (z >> 31)) >> 11) as f64 / (1u64 << 53) as f64
}

pub struct Data {
    pub x: Vec<[f32; FEATURES]>,
    pub y: Vec<f32>,
}

pub fn generate() -> Data {
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

pub fn sigmoid(z: f32) -> f32 {
    1.0 / (1.0 + (-z).exp())
}

/// Mean logistic loss over the whole data set.
pub fn loss(data: &Data, w: &[f32]) -> f64 {
    let total: f64 = data
        .x
        .iter()
        .zip(&data.y)
        .map(|(x, &y)| {
            let z = x.iter().zip(w).map(|(a, b)| a * b).sum::<f32>() as f64;
            // log(1 + e^z) - y z, computed stably.
            z.max(0.0) + (-z.abs()).exp().ln_1p() - y as f64 * z
        })
        .sum();
    total / data.x.len() as f64
}

/// Worker `w`'s minibatch gradient of the logistic loss at weights `x` on
/// clock `clock`, scaled so the workers' gradients sum to one step.
pub fn gradient(data: &Data, x: &[f32], w: u32, workers: u32, clock: u64, grad: &mut [f32]) {
    grad.iter_mut().for_each(|g| *g = 0.0);
    for b in 0..BATCH {
        let i = (w as usize + workers as usize * (clock as usize * BATCH + b)) % SAMPLES;
        let z: f32 = data.x[i].iter().zip(x).map(|(a, b)| a * b).sum();
        let err = sigmoid(z) - data.y[i];
        let scale = err / (BATCH as f32 * workers as f32);
        grad.iter_mut()
            .zip(&data.x[i])
            .for_each(|(g, a)| *g += scale * a);
    }
}
