//! Convolutions on small maps, multiplying only the taps that read the image.
//!
//! Why: the unrolled patches hold every tap of every output position, and where a tap reads
//! padding the patch holds a zero that the GEMM still multiplies. On large maps that is a few
//! per cent, but a 3×3 kernel with padding 1 reads padding in 16 % of its (position, tap)
//! pairs on an 8×8 map and 31 % on a 4×4 one, and a 5×5 kernel with padding 2 on a 4×4 map in
//! 51 %. Those maps are most of a VGG's arithmetic at width 1 (PyTorch's oneDNN skips them).
//!
//! How: along each side, the output indices that read the same kernel offsets form runs (the
//! first outputs, the middle, the last ones), so the output positions fall into rectangles
//! that read one rectangle of taps each, a [`TapClass`]. A class's patches hold only its taps,
//! none of them padding, and each class is multiplied on its own. The weight is reordered
//! once per call tap-major (`[OC, k, k, C]`), so a class's taps of one kernel row, over all
//! input channels, are one contiguous run of the weight's columns: the GEMMs read the weight
//! in place, one per kernel row of the class (one in all where the class reads whole kernel
//! rows).

use std::ops::Range;

use rayon::prelude::*;

use super::{ConvGeometry, summed_over_threads, with_scratch};
use crate::gemm_kernel::{Operand, gemm_into};
use crate::tensor::fill_chunks;

impl ConvGeometry {
    /// Along one side of `size` inputs and `size_out` outputs: the runs of output indices
    /// that read the same kernel offsets, with those offsets.
    fn side_classes(&self, size: usize, size_out: usize) -> Vec<(Range<usize>, Range<usize>)> {
        let mut classes: Vec<(Range<usize>, Range<usize>)> = Vec::new();
        for out in 0..size_out {
            let taps = self.inside_taps(out, size);
            match classes.last_mut() {
                Some((outputs, run_taps)) if *run_taps == taps => outputs.end = out + 1,
                _ => classes.push((out..out + 1, taps)),
            }
        }
        classes
    }

    /// Whether to multiply by [`TapClass`]es: at most 80 % of the (position, tap) pairs read
    /// the image (the patches would multiply at least 20 % zeros: maps of 4×4 and smaller for
    /// 3×3 kernels), and the convolution is not multiplied in place.
    pub(super) fn skips_padding(&self) -> bool {
        !self.is_pointwise()
            && 5 * self.inside_pairs() <= 4 * self.kernel * self.kernel * self.positions()
    }

    /// The weight (`[OC, C, k, k]`) reordered tap-major, `[OC, k, k, C]`.
    fn tap_major(&self, weight: &[f32]) -> Vec<f32> {
        let (channels, taps) = (self.channels_in, self.kernel * self.kernel);
        fill_chunks(weight.len(), channels * taps, |o, out| {
            let kernels = &weight[o * channels * taps..][..channels * taps];
            for (c, kernel) in kernels.chunks_exact(taps).enumerate() {
                for (tap, &value) in kernel.iter().enumerate() {
                    out[tap * channels + c] = value;
                }
            }
        })
    }

    /// Every class of output positions that reads at least one tap, in row-major order.
    fn tap_classes(&self) -> Vec<TapClass> {
        let rows = self.side_classes(self.height, self.height_out());
        let columns = self.side_classes(self.width, self.width_out());
        let mut classes = Vec::new();
        for (rows, kernel_rows) in &rows {
            for (columns, kernel_columns) in &columns {
                if !kernel_rows.is_empty() && !kernel_columns.is_empty() {
                    classes.push(TapClass::new(
                        self,
                        rows.clone(),
                        columns.clone(),
                        kernel_rows.clone(),
                        kernel_columns.clone(),
                    ));
                }
            }
        }
        classes
    }

    /// Images per chunk of a class: [`ConvGeometry::chunk_images`] for its patches.
    fn class_chunk(&self, class: &TapClass) -> usize {
        let positions = class.positions.len();
        self.chunk_images(4 * class.patch_rows * positions, positions)
    }
}

/// Output positions that read the same taps: a rectangle of the output map and the rectangle
/// of kernel offsets each of its positions reads inside the image.
struct TapClass {
    /// The class's output positions (`oh·OW + ow`), row-major.
    positions: Vec<usize>,
    /// Patch rows: one per (kernel row, kernel column, input channel) of the class's taps, in
    /// that order (the tap-major weight's column order).
    patch_rows: usize,
    /// For every patch row, the image index (`[C, H, W]`) each position reads: `[patch rows,
    /// positions]` row-major.
    reads: Vec<u32>,
    /// The class's patch rows in runs that are contiguous columns of the tap-major weight:
    /// (first weight column, first patch row, rows).
    runs: Vec<(usize, usize, usize)>,
}

impl TapClass {
    fn new(
        geometry: &ConvGeometry,
        rows: Range<usize>,
        columns: Range<usize>,
        kernel_rows: Range<usize>,
        kernel_columns: Range<usize>,
    ) -> Self {
        let ConvGeometry {
            channels_in,
            height,
            width,
            kernel,
            stride,
            padding,
            ..
        } = *geometry;
        assert!(
            geometry.image_len() < u32::MAX as usize,
            "an image too large to index with u32: {geometry:?}"
        );
        let width_out = geometry.width_out();
        let positions: Vec<usize> = rows
            .clone()
            .flat_map(|oh| columns.clone().map(move |ow| oh * width_out + ow))
            .collect();
        let mut reads = Vec::with_capacity(
            kernel_rows.len() * kernel_columns.len() * channels_in * positions.len(),
        );
        for i in kernel_rows.clone() {
            for j in kernel_columns.clone() {
                for c in 0..channels_in {
                    for oh in rows.clone() {
                        for ow in columns.clone() {
                            let (ih, iw) = (oh * stride + i - padding, ow * stride + j - padding);
                            // In range: checked against the image size above.
                            reads.push(((c * height + ih) * width + iw) as u32);
                        }
                    }
                }
            }
        }
        let run_len = kernel_columns.len() * channels_in;
        let runs = if kernel_columns.len() == kernel {
            vec![(
                kernel_rows.start * kernel * channels_in,
                0,
                kernel_rows.len() * run_len,
            )]
        } else {
            kernel_rows
                .clone()
                .enumerate()
                .map(|(n, i)| {
                    (
                        (i * kernel + kernel_columns.start) * channels_in,
                        n * run_len,
                        run_len,
                    )
                })
                .collect()
        };
        Self {
            patch_rows: kernel_rows.len() * run_len,
            positions,
            reads,
            runs,
        }
    }

    /// Unrolls the class's patches of images `start..start + count` of `x` side by side into
    /// `col` (`[patch rows, count·positions]`).
    fn unroll(&self, image_len: usize, x: &[f32], start: usize, count: usize, col: &mut [f32]) {
        let positions = self.positions.len();
        let columns = count * positions;
        for i in 0..count {
            let image = &x[(start + i) * image_len..][..image_len];
            for (reads, out) in self
                .reads
                .chunks_exact(positions)
                .zip(col.chunks_exact_mut(columns))
            {
                for (value, &read) in out[i * positions..][..positions].iter_mut().zip(reads) {
                    *value = image[read as usize];
                }
            }
        }
    }

    /// Copies the class's positions of the output-shaped values (`[B, OC, OH·OW]`) of images
    /// `start..start + count` into `chunk` as `[OC, count·positions]`.
    fn gather(
        &self,
        geometry: &ConvGeometry,
        g: &[f32],
        start: usize,
        count: usize,
        chunk: &mut [f32],
    ) {
        let (output_len, positions_out) = (geometry.output_len(), geometry.positions());
        let positions = self.positions.len();
        let columns = count * positions;
        for i in 0..count {
            let image = &g[(start + i) * output_len..][..output_len];
            for (channel, row) in image
                .chunks_exact(positions_out)
                .zip(chunk.chunks_exact_mut(columns))
            {
                for (value, &position) in row[i * positions..][..positions]
                    .iter_mut()
                    .zip(&self.positions)
                {
                    *value = channel[position];
                }
            }
        }
    }

    /// The weight's columns of one run as a `[OC, rows]` operand.
    fn weight_run<'a>(
        geometry: &ConvGeometry,
        weight_t: &'a [f32],
        (column, rows): (usize, usize),
    ) -> Operand<'a> {
        let row_len = geometry.patch_rows();
        Operand::rows(
            &weight_t[column..][..(geometry.channels_out - 1) * row_len + rows],
            row_len,
        )
    }
}

/// For every class in order, and every chunk of images of it on the current pool:
/// `work(class, first image, the chunk's images of out, patches scratch, output scratch)`, where
/// `out` holds `item_len` values per image (the output for the forward, the input gradient for
/// its fold) and the scratch buffers are cut to the chunk's patches and output-shaped values.
fn for_each_class_chunk(
    geometry: &ConvGeometry,
    out: &mut [f32],
    item_len: usize,
    work: impl Fn(&TapClass, usize, &mut [f32], &mut [f32], &mut [f32]) + Sync,
) {
    for class in geometry.tap_classes() {
        let chunk = geometry.class_chunk(&class);
        out.par_chunks_mut(chunk * item_len)
            .enumerate()
            .for_each(|(index, out_chunk)| {
                let columns = out_chunk.len() / item_len * class.positions.len();
                let lens = [class.patch_rows * columns, geometry.channels_out * columns];
                with_scratch(lens, |col, values| {
                    work(&class, index * chunk, out_chunk, col, values);
                });
            });
    }
}

/// [`super::conv2d_forward`] where [padding is skipped](ConvGeometry::skips_padding): per class
/// and chunk of images, `Y_class = W_class · col_class (+ b)`.
pub(super) fn forward(
    geometry: &ConvGeometry,
    x: &[f32],
    weight: &[f32],
    bias: Option<&[f32]>,
) -> Vec<f32> {
    let (image_len, output_len, positions_out) = (
        geometry.image_len(),
        geometry.output_len(),
        geometry.positions(),
    );
    let weight_t = geometry.tap_major(weight);
    // Positions that read only padding keep the bias.
    let mut y = fill_chunks(geometry.batch * output_len, output_len, |_, image| {
        if let Some(bias) = bias {
            for (row, b) in image.chunks_exact_mut(positions_out).zip(bias) {
                row.fill(*b);
            }
        }
    });
    for_each_class_chunk(
        geometry,
        &mut y,
        output_len,
        |class, start, y_chunk, col, product| {
            let (count, positions) = (y_chunk.len() / output_len, class.positions.len());
            let columns = count * positions;
            class.unroll(image_len, x, start, count, col);
            for (n, &(column, first_row, rows)) in class.runs.iter().enumerate() {
                gemm_into(
                    product,
                    (geometry.channels_out, columns, rows),
                    TapClass::weight_run(geometry, &weight_t, (column, rows)),
                    Operand::rows(&col[first_row * columns..], columns),
                    n > 0,
                );
            }
            for (i, image) in y_chunk.chunks_exact_mut(output_len).enumerate() {
                for (channel, values) in image
                    .chunks_exact_mut(positions_out)
                    .zip(product.chunks_exact(columns))
                {
                    for (&position, value) in class
                        .positions
                        .iter()
                        .zip(&values[i * positions..][..positions])
                    {
                        channel[position] += value;
                    }
                }
            }
        },
    );
    y
}

/// [`super::conv2d_input_grad`] where [padding is skipped](ConvGeometry::skips_padding): per
/// class and chunk of images, `col_class = W_classᵀ · G_class`, added onto the image positions
/// it was read from. The classes add in a fixed order, whatever the threads.
pub(super) fn input_grad(geometry: &ConvGeometry, weight: &[f32], g: &[f32]) -> Vec<f32> {
    let image_len = geometry.image_len();
    let weight_t = geometry.tap_major(weight);
    let mut dx = fill_chunks(geometry.batch * image_len, image_len, |_, _| {});
    for_each_class_chunk(
        geometry,
        &mut dx,
        image_len,
        |class, start, dx_chunk, col, g_chunk| {
            let (count, positions) = (dx_chunk.len() / image_len, class.positions.len());
            let columns = count * positions;
            class.gather(geometry, g, start, count, g_chunk);
            for &(column, first_row, rows) in &class.runs {
                gemm_into(
                    &mut col[first_row * columns..][..rows * columns],
                    (rows, columns, geometry.channels_out),
                    TapClass::weight_run(geometry, &weight_t, (column, rows)).t(),
                    Operand::rows(g_chunk, columns),
                    false,
                );
            }
            for (i, image) in dx_chunk.chunks_exact_mut(image_len).enumerate() {
                for (reads, values) in class
                    .reads
                    .chunks_exact(positions)
                    .zip(col.chunks_exact(columns))
                {
                    for (&read, value) in reads.iter().zip(&values[i * positions..][..positions]) {
                        image[read as usize] += value;
                    }
                }
            }
        },
    );
    dx
}

/// [`super::conv2d_weight_grad`] where [padding is skipped](ConvGeometry::skips_padding): per
/// class, `∂W_classᵀ += col_class · G_classᵀ` into the tap-major `∂Wᵀ` (`[k·k·C, OC]`), each
/// thread over its share of the images, the shares added in thread order.
pub(super) fn weight_grad(geometry: &ConvGeometry, x: &[f32], g: &[f32]) -> Vec<f32> {
    let (channels_out, rows_t) = (geometry.channels_out, geometry.patch_rows());
    let grad_len = channels_out * rows_t;
    let classes = geometry.tap_classes();
    let partial = |images: Range<usize>| {
        let mut grad_t = vec![0.0; grad_len];
        for class in &classes {
            let chunk = geometry.class_chunk(class);
            let positions = class.positions.len();
            let mut start = images.start;
            while start < images.end {
                let count = chunk.min(images.end - start);
                let columns = count * positions;
                let lens = [class.patch_rows * columns, channels_out * columns];
                with_scratch(lens, |col, g_chunk| {
                    class.unroll(geometry.image_len(), x, start, count, col);
                    class.gather(geometry, g, start, count, g_chunk);
                    for &(column, first_row, rows) in &class.runs {
                        gemm_into(
                            &mut grad_t[column * channels_out..][..rows * channels_out],
                            (rows, channels_out, columns),
                            Operand::rows(&col[first_row * columns..], columns),
                            Operand::transposed(g_chunk, columns),
                            true,
                        );
                    }
                });
                start += count;
            }
        }
        grad_t
    };
    let grad_t = summed_over_threads(geometry.batch, grad_len, partial);
    // `∂Wᵀ[(i, j, c), o]` to `∂W[o, c, i, j]`.
    let (channels, taps) = (geometry.channels_in, geometry.kernel * geometry.kernel);
    fill_chunks(grad_len, channels * taps, |o, kernels| {
        for (c, kernel) in kernels.chunks_exact_mut(taps).enumerate() {
            for (tap, value) in kernel.iter_mut().enumerate() {
                *value = grad_t[(tap * channels + c) * channels_out + o];
            }
        }
    })
}
