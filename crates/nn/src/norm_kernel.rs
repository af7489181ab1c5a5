//! Batch normalisation with batch statistics and its backward, on plain `f32` slices.
//!
//! Why it exists: through autodiff, burn differentiates its batch norm as the dozen tensor
//! operations it is made of (means, differences, squares, broadcasts), each one a pass over
//! memory with a freshly allocated output; a conv model's step spent 6 % of its time there,
//! and burn's forward (which transposes the input to compute its statistics) another 5 %.
//! The forward here reads the input twice for the statistics and once to write `γ·x̂ + β`;
//! the backward needs three reads of the input, two of the output gradient and one write:
//!
//! - per channel, over the `n = batch · positions` values: the mean `μ`, the biased variance
//!   `σ²`, `Σg` and `Σg·(x − μ)` (with `x̂ = (x − μ)/√(σ² + ε)`);
//! - `∂β = Σg`, `∂γ = Σg·x̂`, and `∂x = γ/√(σ² + ε) · (g − Σg/n − x̂ · Σg·x̂/n)`.
//!
//! Channel sums accumulate in `f64` across images (per image plane in `f32` lanes), so the
//! result differs from autodiff's only in the last bits. The layout is NCHW, as burn's.

use rayon::prelude::*;

/// Lanes of the per-plane `f32` sums (a multiple of every SIMD width in use, so the compiler
/// vectorises the loops).
const LANES: usize = 8;

/// `Σ f(a_i, b_i)` over two equally long slices, in [`LANES`] independent `f32` partial sums.
fn lane_sum(a: &[f32], b: &[f32], f: impl Fn(f32, f32) -> f32) -> f64 {
    let mut lanes = [0.0f32; LANES];
    let (a_chunks, b_chunks) = (a.chunks_exact(LANES), b.chunks_exact(LANES));
    let tail: f32 = (a_chunks.remainder().iter())
        .zip(b_chunks.remainder())
        .map(|(&x, &y)| f(x, y))
        .sum();
    for (ca, cb) in a_chunks.zip(b_chunks) {
        for k in 0..LANES {
            lanes[k] += f(ca[k], cb[k]);
        }
    }
    lanes.iter().map(|&v| f64::from(v)).sum::<f64>() + f64::from(tail)
}

/// The NCHW layout of a batch norm's input: `batch` images of `channels` planes of
/// `positions` values.
#[derive(Clone, Copy, Debug)]
struct Planes {
    channels: usize,
    positions: usize,
    batch: usize,
}

impl Planes {
    /// The layout of `x` with `channels` channels of `positions` values per image.
    ///
    /// # Panics
    /// If `x` does not hold whole images (a broken invariant of the caller).
    fn of(x: &[f32], channels: usize, positions: usize) -> Self {
        let image_len = channels * positions;
        assert!(
            image_len > 0 && x.len().is_multiple_of(image_len),
            "batch norm input of {} values for {channels} channels × {positions} positions",
            x.len()
        );
        Self {
            channels,
            positions,
            batch: x.len() / image_len,
        }
    }

    /// Values per channel over the batch (`n`).
    fn count(&self) -> f64 {
        (self.batch * self.positions) as f64
    }

    /// Plane `(b, c)` of `data`.
    fn plane<'a>(&self, data: &'a [f32], b: usize, c: usize) -> &'a [f32] {
        &data[(b * self.channels + c) * self.positions..][..self.positions]
    }

    /// Per channel, the batch mean and the biased batch variance of `x`.
    fn moments(&self, x: &[f32]) -> Vec<[f64; 2]> {
        (0..self.channels)
            .into_par_iter()
            .map(|c| {
                let planes = || (0..self.batch).map(|b| self.plane(x, b, c));
                let mean = planes().map(|p| lane_sum(p, p, |v, _| v)).sum::<f64>() / self.count();
                let centre = mean as f32;
                let squares: f64 = planes()
                    .map(|p| lane_sum(p, p, |v, _| (v - centre) * (v - centre)))
                    .sum();
                [mean, squares / self.count()]
            })
            .collect()
    }

    /// `out[b, c, ·] = f(constants[c], x[b, c, ·], other[b, c, ·])` elementwise, images split
    /// between the current pool's threads (the channel's constants are read once per plane).
    fn map(
        &self,
        x: &[f32],
        other: &[f32],
        constants: &[[f32; 4]],
        f: impl Fn([f32; 4], f32, f32) -> f32 + Sync,
    ) -> Vec<f32> {
        let mut out = vec![0.0f32; x.len()];
        out.par_chunks_mut(self.channels * self.positions)
            .enumerate()
            .for_each(|(b, image)| {
                for ((c, out), &constants) in image
                    .chunks_exact_mut(self.positions)
                    .enumerate()
                    .zip(constants)
                {
                    let (xp, op) = (self.plane(x, b, c), self.plane(other, b, c));
                    for ((o, &xv), &ov) in out.iter_mut().zip(xp).zip(op) {
                        *o = f(constants, xv, ov);
                    }
                }
            });
        out
    }
}

/// A batch norm's output and the batch statistics it normalised with.
#[derive(Debug)]
pub(crate) struct BatchNormOutput {
    /// `γ·x̂ + β`, in the input's layout.
    pub output: Vec<f32>,
    /// Per channel, the batch mean.
    pub mean: Vec<f32>,
    /// Per channel, the unbiased batch variance (what PyTorch's running variance tracks).
    pub unbiased_variance: Vec<f32>,
}

/// `y = γ·(x − μ)/√(σ² + ε) + β` with the batch statistics of `x` (`[batch, channels,
/// positions]` flattened, `channels = gamma.len()`). Runs on the current rayon pool.
///
/// # Panics
/// If the slice lengths do not match (a broken invariant of the caller).
pub(crate) fn batch_norm_forward(
    x: &[f32],
    gamma: &[f32],
    beta: &[f32],
    positions: usize,
    epsilon: f64,
) -> BatchNormOutput {
    let planes = Planes::of(x, gamma.len(), positions);
    assert_eq!(beta.len(), gamma.len(), "batch norm β");
    let moments = planes.moments(x);
    // y = x·k + m per channel: k = γ/√(σ² + ε), m = β − μ·k.
    let affine: Vec<[f32; 4]> = (moments.iter().zip(gamma).zip(beta))
        .map(|((&[mean, variance], &gamma), &beta)| {
            let k = f64::from(gamma) / (variance + epsilon).sqrt();
            [k as f32, (f64::from(beta) - mean * k) as f32, 0.0, 0.0]
        })
        .collect();
    let n = planes.count();
    let unbiased = if n > 1.0 { n / (n - 1.0) } else { 1.0 };
    BatchNormOutput {
        output: planes.map(x, x, &affine, |[k, m, _, _], v, _| v * k + m),
        mean: moments.iter().map(|&[mean, _]| mean as f32).collect(),
        unbiased_variance: moments
            .iter()
            .map(|&[_, var]| (var * unbiased) as f32)
            .collect(),
    }
}

/// The gradients of a batch norm's `γ`, `β` and (if asked for) input.
#[derive(Debug)]
pub(crate) struct BatchNormGrads {
    /// `∂x`, `[batch, channels, positions]` flattened, if it was asked for.
    pub input: Option<Vec<f32>>,
    /// `∂γ`, one per channel.
    pub gamma: Vec<f32>,
    /// `∂β`, one per channel.
    pub beta: Vec<f32>,
}

/// The VJP of `y = γ·x̂ + β` normalised with the batch statistics of `x`
/// (`[batch, channels, positions]` flattened, `channels = gamma.len()`), for the output
/// gradient `g` (same layout). Runs on the current rayon pool (channels, then images, split
/// between its threads).
///
/// # Panics
/// If the slice lengths do not match (a broken invariant of the caller).
pub(crate) fn batch_norm_backward(
    x: &[f32],
    g: &[f32],
    gamma: &[f32],
    positions: usize,
    epsilon: f64,
    need_input_grad: bool,
) -> BatchNormGrads {
    let planes = Planes::of(x, gamma.len(), positions);
    assert_eq!(g.len(), x.len(), "batch norm output gradient");
    let n = planes.count();
    // Per channel: mean, 1/√(σ² + ε), Σg, Σg·(x − μ).
    let stats: Vec<[f64; 4]> = (planes.moments(x).into_par_iter().enumerate())
        .map(|(c, [mean, variance])| {
            let centre = mean as f32;
            let (mut g_sum, mut g_centred) = (0.0, 0.0);
            for b in 0..planes.batch {
                let (xp, gp) = (planes.plane(x, b, c), planes.plane(g, b, c));
                g_sum += lane_sum(gp, gp, |v, _| v);
                g_centred += lane_sum(xp, gp, |v, w| w * (v - centre));
            }
            [mean, 1.0 / (variance + epsilon).sqrt(), g_sum, g_centred]
        })
        .collect();
    let input = need_input_grad.then(|| {
        // ∂x = k·(g − a − (x − μ)·s): k = γ/√(σ² + ε), a = Σg/n, s = Σg·(x − μ)/(n·(σ² + ε)).
        let coefficients: Vec<[f32; 4]> = (stats.iter().zip(gamma))
            .map(|(&[mean, inv_std, g_sum, g_centred], &gamma)| {
                [
                    mean as f32,
                    (f64::from(gamma) * inv_std) as f32,
                    (g_sum / n) as f32,
                    (g_centred * inv_std * inv_std / n) as f32,
                ]
            })
            .collect();
        planes.map(x, g, &coefficients, |[mean, k, a, s], xv, gv| {
            k * (gv - a - (xv - mean) * s)
        })
    });
    BatchNormGrads {
        input,
        gamma: stats
            .iter()
            .map(|&[_, inv_std, _, g_centred]| (g_centred * inv_std) as f32)
            .collect(),
        beta: stats.iter().map(|&[_, _, g_sum, _]| g_sum as f32).collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel_test_support::{assert_near, pool, pseudo_random};

    /// The VJP by its definition, in f64: `x̂`, then the three sums, then `∂x` element by
    /// element.
    fn reference(
        x: &[f32],
        g: &[f32],
        gamma: &[f32],
        positions: usize,
        epsilon: f64,
    ) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
        let channels = gamma.len();
        let batch = x.len() / (channels * positions);
        let n = (batch * positions) as f64;
        let index = |b: usize, c: usize, p: usize| (b * channels + c) * positions + p;
        let (mut dx, mut dgamma, mut dbeta) =
            (vec![0.0; x.len()], vec![0.0; channels], vec![0.0; channels]);
        for c in 0..channels {
            let values =
                || (0..batch).flat_map(move |b| (0..positions).map(move |p| index(b, c, p)));
            let mean = values().map(|i| f64::from(x[i])).sum::<f64>() / n;
            let var = values()
                .map(|i| (f64::from(x[i]) - mean).powi(2))
                .sum::<f64>()
                / n;
            let std = (var + epsilon).sqrt();
            let x_hat = |i: usize| (f64::from(x[i]) - mean) / std;
            dbeta[c] = values().map(|i| f64::from(g[i])).sum();
            dgamma[c] = values().map(|i| f64::from(g[i]) * x_hat(i)).sum();
            for i in values() {
                dx[i] = f64::from(gamma[c]) / std
                    * (f64::from(g[i]) - dbeta[c] / n - x_hat(i) * dgamma[c] / n);
            }
        }
        (dx, dgamma, dbeta)
    }

    /// The forward by its definition, in f64: per channel mean and biased variance, and
    /// `γ·(x − μ)/√(σ² + ε) + β`.
    fn reference_forward(
        x: &[f32],
        gamma: &[f32],
        beta: &[f32],
        positions: usize,
        epsilon: f64,
    ) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
        let channels = gamma.len();
        let (mut mean, mut variance) = (vec![0.0; channels], vec![0.0; channels]);
        let channel_of = |i: usize| i / positions % channels;
        let n = (x.len() / channels) as f64;
        for (i, &v) in x.iter().enumerate() {
            mean[channel_of(i)] += f64::from(v) / n;
        }
        for (i, &v) in x.iter().enumerate() {
            variance[channel_of(i)] += (f64::from(v) - mean[channel_of(i)]).powi(2) / n;
        }
        let output = (x.iter().enumerate())
            .map(|(i, &v)| {
                let c = channel_of(i);
                f64::from(gamma[c]) * (f64::from(v) - mean[c]) / (variance[c] + epsilon).sqrt()
                    + f64::from(beta[c])
            })
            .collect();
        (mean, variance, output)
    }

    /// Deterministic values in `offset ± scale`.
    fn values(len: usize, seed: u32, scale: f32, offset: f32) -> Vec<f32> {
        let unit = pseudo_random(len, seed);
        unit.into_iter().map(|v| offset + scale * v).collect()
    }

    #[test]
    fn the_batch_norm_forward_and_backward_equal_their_definitions_on_odd_shapes() {
        // (batch, channels, positions): lane tails, one position, one image, many channels.
        for (batch, channels, positions) in [(3, 2, 35), (1, 5, 9), (4, 3, 1), (2, 17, 16)] {
            let len = batch * channels * positions;
            // An offset mean and a spread far from 1, so centring and scaling both matter.
            let x = values(len, 1, 3.0, 2.5);
            let g = values(len, 2, 1.0, 0.1);
            let gamma = values(channels, 3, 0.5, 1.0);
            let expected = reference(&x, &g, &gamma, positions, 1e-5);
            for threads in [1, 3] {
                let got = pool(threads)
                    .install(|| batch_norm_backward(&x, &g, &gamma, positions, 1e-5, true));
                let what = format!("{batch}×{channels}×{positions}, {threads} threads");
                assert_near(&format!("{what} ∂x"), &got.input.unwrap(), &expected.0);
                assert_near(&format!("{what} ∂γ"), &got.gamma, &expected.1);
                assert_near(&format!("{what} ∂β"), &got.beta, &expected.2);
            }
            let without = batch_norm_backward(&x, &g, &gamma, positions, 1e-5, false);
            assert!(without.input.is_none());
            let beta = values(channels, 4, 0.5, 0.0);
            let forward = batch_norm_forward(&x, &gamma, &beta, positions, 1e-5);
            let (mean, variance, output) = reference_forward(&x, &gamma, &beta, positions, 1e-5);
            let n = (batch * positions) as f64;
            let unbiased: Vec<f64> = (variance.iter())
                .map(|v| if n > 1.0 { v * n / (n - 1.0) } else { *v })
                .collect();
            assert_near("forward output", &forward.output, &output);
            assert_near("forward mean", &forward.mean, &mean);
            assert_near("forward variance", &forward.unbiased_variance, &unbiased);
        }
    }
}
