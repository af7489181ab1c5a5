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

use std::ops::Range;

use rayon::prelude::*;

use super::ConvGeometry;
use crate::gemm_kernel::{Operand, gemm_into};
use crate::tensor::fill_chunks;

/// The largest dense matrix built (values, 64 MiB; VGG-16's 2×2 maps of 512 channels at full
/// width need 4 M).
const MAX_DENSE_VALUES: usize = 1 << 24;

/// How many multiply-adds the dense matrix must save per value of it: building it and
/// packing it for the GEMM cost per value what the batch saves on it, so a small batch keeps
/// the patches (now the [tap classes](super::valid_taps)). `D` has `OC·C·P'·P` values, and the
/// batch saves `B·OC·C·P'·(k² − P)` multiply-adds, so the dense path needs `B·(k² − P) ≥
/// 32·P`. Measured on AlexNet, whose small maps were then 2×2 (3×3 kernels: `B ≥ 26`) and 4×4
/// (5×5: `B ≥ 57`), at 1 thread: batches of 64 ran 1.35× (width 0.25), 1.18× (0.5) and 1.08×
/// (1) as fast as with the patches; micro-batches of 16 with every small map dense ran 0.93×
/// (0.25), 0.64× (0.5) and 0.53× (1). On 2×2 maps the tap classes do the same multiply-adds
/// as `D`; they ran as fast as it at 1 thread (0.96–1.13×, batches of 32 and 64) and slower
/// at 2 (one GEMM per class and thread, four classes one after the other).
const DENSE_SAVING_PER_VALUE: usize = 32;

/// The [`ConvGeometry::tap_table`] entry of an (output, input) position pair that no tap
/// joins.
const NO_TAP: usize = usize::MAX;

impl ConvGeometry {
    /// Whether to multiply by the dense matrix: the map has fewer positions than the kernel
    /// has taps, the matrix has no more entries than the taps that read the image (3×3
    /// kernels on 2×2 maps, not 5×5 ones on 4×4 maps, which [`super::valid_taps`] multiplies
    /// with a quarter fewer multiply-adds), the batch saves enough arithmetic per value of the
    /// matrix ([`DENSE_SAVING_PER_VALUE`]), and the matrix is small enough to build per call.
    pub(super) fn multiplies_dense(&self) -> bool {
        let (positions_in, taps) = (self.positions_in(), self.kernel * self.kernel);
        positions_in < taps
            && positions_in * self.positions() <= self.inside_pairs()
            && self.batch * (taps - positions_in) >= DENSE_SAVING_PER_VALUE * positions_in
            // `D` is `[OC·P', C·P]`: an output image's values by an input image's.
            && self.output_len() * self.image_len() <= MAX_DENSE_VALUES
    }

    /// Input positions per channel (H·W).
    fn positions_in(&self) -> usize {
        self.height * self.width
    }

    /// For every output position `p'` (rows) and input position `p` (columns), the tap
    /// `i·k + j` through which `p'` reads `p`, or [`NO_TAP`]: output `(oh, ow)` reads input
    /// `(oh·s + i − p, ow·s + j − p)` where that lies inside the map.
    fn tap_table(&self) -> Vec<usize> {
        let (width_out, positions_in) = (self.width_out(), self.positions_in());
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

    /// The block of the dense matrix `D` of `weight` (`[OC, C, k, k]`) for output channels
    /// `outputs` and input channels `inputs`: `[|outputs|·P', |inputs|·P]`, each row written
    /// in order through `table`, the [tap table](ConvGeometry::tap_table) (scattering the taps
    /// into a zeroed matrix instead cost 10 % of an AlexNet step).
    fn dense_block(
        &self,
        weight: &[f32],
        table: &[usize],
        outputs: Range<usize>,
        inputs: Range<usize>,
    ) -> Vec<f32> {
        let positions_in = self.positions_in();
        let taps_per_pair = self.kernel * self.kernel;
        let row_len = inputs.len() * positions_in;
        let rows_per_channel = self.positions() * row_len;
        let mut block = vec![0.0; outputs.len() * rows_per_channel];
        for (o, rows) in outputs.zip(block.chunks_exact_mut(rows_per_channel)) {
            let kernels = &weight[(o * self.channels_in + inputs.start) * taps_per_pair..]
                [..inputs.len() * taps_per_pair];
            for (row, taps) in rows
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
        }
        block
    }

    /// The block of `Dᵀ` for output channels `outputs` and every input channel: `[C·P,
    /// |outputs|·P']`, each row written in order through `table_by_input`, the [tap
    /// table](ConvGeometry::tap_table) transposed (`[P, P']`). The forward multiplies by `Dᵀ`,
    /// and `gemm` packs an operand stored this way with contiguous copies, where `D` itself
    /// had to be transposed while packing (the forward then ran at half the speed of the
    /// patches on AlexNet's 4×4 maps).
    fn dense_block_transposed(
        &self,
        weight: &[f32],
        table_by_input: &[usize],
        outputs: Range<usize>,
    ) -> Vec<f32> {
        let (positions_in, positions_out) = (self.positions_in(), self.positions());
        let taps_per_pair = self.kernel * self.kernel;
        let row_len = outputs.len() * positions_out;
        let mut block = vec![0.0; self.channels_in * positions_in * row_len];
        for (c, rows) in block.chunks_exact_mut(positions_in * row_len).enumerate() {
            for (row, taps) in rows
                .chunks_exact_mut(row_len)
                .zip(table_by_input.chunks_exact(positions_out))
            {
                for (values, o) in row.chunks_exact_mut(positions_out).zip(outputs.clone()) {
                    let kernel =
                        &weight[(o * self.channels_in + c) * taps_per_pair..][..taps_per_pair];
                    for (value, &tap) in values.iter_mut().zip(taps) {
                        *value = kernel.get(tap).copied().unwrap_or(0.0);
                    }
                }
            }
        }
        block
    }
}

/// `table` (`[rows, columns]`) transposed.
fn transposed(table: &[usize], rows: usize, columns: usize) -> Vec<usize> {
    (0..columns * rows)
        .map(|i| table[(i % rows) * columns + i / rows])
        .collect()
}

/// `0..count` channels cut into one contiguous share per thread of the current pool (fewer if
/// there are fewer channels), in order. Each thread builds, packs and multiplies only its own
/// block of `D`: with the batch split instead, every thread packed all of `D`, and two threads
/// gained 1.02× over one on a width-0.5 AlexNet step where one thread gained 1.18×.
fn channel_shares(count: usize) -> Vec<Range<usize>> {
    let threads = rayon::current_num_threads().clamp(1, count.max(1));
    let per_share = count.div_ceil(threads);
    (0..threads)
        .map(|t| t * per_share..((t + 1) * per_share).min(count))
        .filter(|share| !share.is_empty())
        .collect()
}

/// `block(share)` for every share on the current pool, in share order.
fn per_share<R: Send>(shares: &[Range<usize>], block: impl Fn(Range<usize>) -> R + Sync) -> Vec<R> {
    shares
        .par_iter()
        .map(|share| block(share.clone()))
        .collect()
}

/// The shares' blocks (`[B, width]` each, `width` values per image) side by side: `[B, Σ
/// width]`, each image's row the blocks' rows in share order.
fn side_by_side(blocks: Vec<Vec<f32>>, batch: usize) -> Vec<f32> {
    if blocks.len() == 1 {
        return blocks.into_iter().next().unwrap_or_default();
    }
    let widths: Vec<usize> = blocks.iter().map(|b| b.len() / batch.max(1)).collect();
    let row_len: usize = widths.iter().sum();
    let per_task = batch.div_ceil(rayon::current_num_threads().max(1)).max(1);
    fill_chunks(batch * row_len, per_task * row_len, |task, rows| {
        for (i, row) in rows.chunks_exact_mut(row_len).enumerate() {
            let image = task * per_task + i;
            let mut at = 0;
            for (block, &width) in blocks.iter().zip(&widths) {
                row[at..at + width].copy_from_slice(&block[image * width..][..width]);
                at += width;
            }
        }
    })
}

/// [`super::conv2d_forward`] where [dense](ConvGeometry::multiplies_dense): per share of output
/// channels, `Y_share = X · D_shareᵀ (+ b)`.
pub(super) fn forward(
    geometry: &ConvGeometry,
    x: &[f32],
    weight: &[f32],
    bias: Option<&[f32]>,
) -> Vec<f32> {
    let image_len = geometry.image_len();
    let (batch, positions) = (geometry.batch, geometry.positions());
    let table_by_input = transposed(&geometry.tap_table(), positions, geometry.positions_in());
    let shares = channel_shares(geometry.channels_out);
    let blocks = per_share(&shares, |outputs| {
        let dense_t = geometry.dense_block_transposed(weight, &table_by_input, outputs.clone());
        let width = outputs.len() * positions;
        let mut y = vec![0.0; batch * width];
        gemm_into(
            &mut y,
            (batch, width, image_len),
            Operand::rows(x, image_len),
            Operand::rows(&dense_t, width),
            false,
        );
        if let Some(bias) = bias {
            for image in y.chunks_exact_mut(width) {
                for (row, b) in image
                    .chunks_exact_mut(positions)
                    .zip(&bias[outputs.clone()])
                {
                    row.iter_mut().for_each(|v| *v += b);
                }
            }
        }
        y
    });
    side_by_side(blocks, batch)
}

/// [`super::conv2d_input_grad`] where [dense](ConvGeometry::multiplies_dense): per share of
/// input channels, `∂X_share = G · D_share` (`D`'s columns of those channels).
pub(super) fn input_grad(geometry: &ConvGeometry, weight: &[f32], g: &[f32]) -> Vec<f32> {
    let (batch, output_len) = (geometry.batch, geometry.output_len());
    let positions_in = geometry.positions_in();
    let table = geometry.tap_table();
    let shares = channel_shares(geometry.channels_in);
    let blocks = per_share(&shares, |inputs| {
        let dense = geometry.dense_block(weight, &table, 0..geometry.channels_out, inputs.clone());
        let width = inputs.len() * positions_in;
        let mut dx = vec![0.0; batch * width];
        gemm_into(
            &mut dx,
            (batch, width, output_len),
            Operand::rows(g, output_len),
            Operand::rows(&dense, width),
            false,
        );
        dx
    });
    side_by_side(blocks, batch)
}

/// [`super::conv2d_weight_grad`] where [dense](ConvGeometry::multiplies_dense): per share of
/// output channels, `∂D_share = G_shareᵀ · X` over the whole batch, folded onto the taps of
/// those channels' kernels. No thread sums part of the batch, so the result is the same for
/// any number of threads.
pub(super) fn weight_grad(geometry: &ConvGeometry, x: &[f32], g: &[f32]) -> Vec<f32> {
    let (image_len, output_len) = (geometry.image_len(), geometry.output_len());
    let positions_out = geometry.positions();
    let positions_in = geometry.positions_in();
    let taps_per_pair = geometry.kernel * geometry.kernel;
    let table = geometry.tap_table();
    let shares = channel_shares(geometry.channels_out);
    let blocks = per_share(&shares, |outputs| {
        let rows = outputs.len() * positions_out;
        let mut dense_grad = vec![0.0; rows * image_len];
        gemm_into(
            &mut dense_grad,
            (rows, image_len, geometry.batch),
            Operand::transposed(&g[outputs.start * positions_out..], output_len),
            Operand::rows(x, image_len),
            false,
        );
        // `∂W[o, c]` summed from `∂D`'s rows of output channel `o`, read in order.
        let per_channel_out = geometry.channels_in * taps_per_pair;
        let mut weight_grad = vec![0.0; outputs.len() * per_channel_out];
        for (block, kernels) in dense_grad
            .chunks_exact(positions_out * image_len)
            .zip(weight_grad.chunks_exact_mut(per_channel_out))
        {
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
        }
        weight_grad
    });
    blocks.concat()
}
