//! Convolutions on maps smaller than their kernel, as one dense matrix.
//!
//! Why: on a map of `P = H·W` positions, a k×k convolution's unrolled patches hold `C·k²`
//! values per output position, and when `P < k²` most of them read padding (a 3×3 kernel on a
//! 2×2 map reads 4 of its 9 taps: the last layers of AlexNet and VGG on 32×32 images). Building
//! them costs a table lookup per value, as much as the product, and the product multiplies the
//! zeros. But a convolution is a linear map from an image's `C·P` values to its output's
//! `OC·P'`: written out as a matrix `D` (`[OC·P', C·P]`, whose entry for output `(o, p')` and
//! input `(c, p)` is `W[o, c, i, j]` when output position `p'` reads input position `p`
//! through tap `(i, j)`, and zero when it does not read it), the three products are GEMMs on
//! the images as they lie in memory, `[B, C·P]` and `[B, OC·P']`:
//!
//! - forward `Y = X · Dᵀ (+ b)`;
//! - input gradient `∂X = G · D`;
//! - weight gradient `∂D = Gᵀ · X`, and `∂W[o, c, i, j]` the sum of the entries of `∂D` that
//!   hold tap `(i, j)` of `W[o, c]`.
//!
//! That is `OC·C·P'·P` multiply-adds against the patches' `OC·C·P'·k²`, and no unrolling.

use super::{ConvGeometry, Operand, gemm_into, summed_over_threads};
use crate::elementwise_kernel::fill_chunks;

/// The largest dense matrix built (values, 4 MiB): a 2×2 map of 256 channels in and out. A
/// larger matrix is streamed from memory to be built and again to be packed by every GEMM
/// (the batch is its only reuse), and each thread packs all of it: with up to 3 M values
/// (AlexNet at width 1) a step took 1.10× as long as with the patches on 2 threads (0.95× on
/// one), so those layers keep the patches.
const MAX_DENSE_VALUES: usize = 1 << 20;

/// The [`ConvGeometry::tap_table`] entry of an (output, input) position pair that no tap
/// joins.
const NO_TAP: usize = usize::MAX;

impl ConvGeometry {
    /// Whether the dense matrix does less arithmetic than the patches (a map of fewer positions
    /// than the kernel has taps) and is small enough to build per call.
    pub(super) fn is_small_map(&self) -> bool {
        let positions_in = self.height * self.width;
        positions_in < self.kernel * self.kernel
            && self.channels_out * self.positions() * self.channels_in * positions_in
                <= MAX_DENSE_VALUES
    }

    /// For every output position `p'` (rows) and input position `p` (columns), the tap
    /// `i·k + j` through which `p'` reads `p`, or [`NO_TAP`]: output `(oh, ow)` reads input
    /// `(oh·s + i − p, ow·s + j − p)` where that lies inside the map.
    fn tap_table(&self) -> Vec<usize> {
        let (width_out, positions_in) = (self.width_out(), self.height * self.width);
        let mut table = vec![NO_TAP; self.positions() * positions_in];
        for (position_out, row) in table.chunks_exact_mut(positions_in).enumerate() {
            let (oh, ow) = (position_out / width_out, position_out % width_out);
            for i in self.inside_taps(oh, self.height) {
                for j in self.inside_taps(ow, self.width) {
                    let ih = oh * self.stride + i - self.padding;
                    let iw = ow * self.stride + j - self.padding;
                    row[ih * self.width + iw] = i * self.kernel + j;
                }
            }
        }
        table
    }

    /// The kernel offsets `i` for which output index `out` reads inside `0..size`:
    /// `0 ≤ out·s + i − p < size`.
    fn inside_taps(&self, out: usize, size: usize) -> std::ops::Range<usize> {
        let start = out * self.stride;
        self.padding.saturating_sub(start)
            ..(size + self.padding).saturating_sub(start).min(self.kernel)
    }

    /// Values of the dense matrix's rows (`C·P`) and its number of rows (`OC·P'`).
    fn dense_shape(&self) -> (usize, usize) {
        (
            self.channels_in * self.height * self.width,
            self.channels_out * self.positions(),
        )
    }

    /// The dense matrix `D` (`[OC·P', C·P]`) of `weight` (`[OC, C, k, k]`), built on the
    /// current pool a block of rows per output channel, each row written in order (scattering
    /// the taps into a zeroed matrix instead cost 10 % of an AlexNet step).
    fn dense_matrix(&self, weight: &[f32]) -> Vec<f32> {
        let (row_len, rows) = self.dense_shape();
        let positions_in = self.height * self.width;
        let taps_per_pair = self.kernel * self.kernel;
        let table = self.tap_table();
        let per_channel_out = self.channels_in * taps_per_pair;
        fill_chunks(rows * row_len, self.positions() * row_len, |o, block| {
            let kernels = &weight[o * per_channel_out..][..per_channel_out];
            for (row, taps) in block
                .chunks_exact_mut(row_len)
                .zip(table.chunks_exact(positions_in))
            {
                for (values, kernel) in row
                    .chunks_exact_mut(positions_in)
                    .zip(kernels.chunks_exact(taps_per_pair))
                {
                    for (value, &tap) in values.iter_mut().zip(taps) {
                        *value = kernel.get(tap).copied().unwrap_or(0.0);
                    }
                }
            }
        })
    }
}

/// Images per task when a batch's rows are split between the current pool's threads.
fn images_per_task(batch: usize) -> usize {
    batch.div_ceil(rayon::current_num_threads().max(1)).max(1)
}

/// [`super::conv2d_forward`] for a [small map](ConvGeometry::is_small_map).
pub(super) fn forward(
    geometry: &ConvGeometry,
    x: &[f32],
    weight: &[f32],
    bias: Option<&[f32]>,
) -> Vec<f32> {
    let (image_len, output_len) = geometry.dense_shape();
    let dense = geometry.dense_matrix(weight);
    let per_task = images_per_task(geometry.batch);
    let positions = geometry.positions();
    fill_chunks(
        geometry.batch * output_len,
        per_task * output_len,
        |task, y| {
            let count = y.len() / output_len;
            gemm_into(
                y,
                (count, output_len, image_len),
                Operand::rows(
                    &x[task * per_task * image_len..][..count * image_len],
                    image_len,
                ),
                Operand::transposed(&dense, image_len),
                false,
            );
            if let Some(bias) = bias {
                for image in y.chunks_exact_mut(output_len) {
                    for (row, b) in image.chunks_exact_mut(positions).zip(bias) {
                        row.iter_mut().for_each(|v| *v += b);
                    }
                }
            }
        },
    )
}

/// [`super::conv2d_input_grad`] for a [small map](ConvGeometry::is_small_map).
pub(super) fn input_grad(geometry: &ConvGeometry, weight: &[f32], g: &[f32]) -> Vec<f32> {
    let (image_len, output_len) = geometry.dense_shape();
    let dense = geometry.dense_matrix(weight);
    let per_task = images_per_task(geometry.batch);
    fill_chunks(
        geometry.batch * image_len,
        per_task * image_len,
        |task, dx| {
            let count = dx.len() / image_len;
            gemm_into(
                dx,
                (count, image_len, output_len),
                Operand::rows(
                    &g[task * per_task * output_len..][..count * output_len],
                    output_len,
                ),
                Operand::rows(&dense, image_len),
                false,
            );
        },
    )
}

/// [`super::conv2d_weight_grad`] for a [small map](ConvGeometry::is_small_map).
pub(super) fn weight_grad(geometry: &ConvGeometry, x: &[f32], g: &[f32]) -> Vec<f32> {
    let (image_len, output_len) = geometry.dense_shape();
    // `∂D = Σ_b g_bᵀ · x_b` over each thread's share of the images.
    let dense_grad = summed_over_threads(geometry.batch, output_len * image_len, |images| {
        let mut partial = vec![0.0; output_len * image_len];
        let count = images.len();
        if count == 0 {
            // The last threads' shares can be empty (5 images on 4 threads: 2, 2, 1, 0).
            return partial;
        }
        gemm_into(
            &mut partial,
            (output_len, image_len, count),
            Operand::transposed(
                &g[images.start * output_len..][..count * output_len],
                output_len,
            ),
            Operand::rows(
                &x[images.start * image_len..][..count * image_len],
                image_len,
            ),
            false,
        );
        partial
    });
    // `∂W[o, c]` summed from `∂D`'s rows of output channel `o`, read in order, on the pool.
    let positions_in = geometry.height * geometry.width;
    let taps_per_pair = geometry.kernel * geometry.kernel;
    let table = geometry.tap_table();
    let per_channel_out = geometry.channels_in * taps_per_pair;
    let block_len = geometry.positions() * image_len;
    fill_chunks(
        geometry.channels_out * per_channel_out,
        per_channel_out,
        |o, kernels| {
            let block = &dense_grad[o * block_len..][..block_len];
            for (row, taps) in block
                .chunks_exact(image_len)
                .zip(table.chunks_exact(positions_in))
            {
                for (values, kernel) in row
                    .chunks_exact(positions_in)
                    .zip(kernels.chunks_exact_mut(taps_per_pair))
                {
                    for (value, &tap) in values.iter().zip(taps) {
                        if let Some(sum) = kernel.get_mut(tap) {
                            *sum += value;
                        }
                    }
                }
            }
        },
    )
}
