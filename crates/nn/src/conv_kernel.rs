//! The weight gradient of a 2-D convolution as one GEMM per image, on plain `f32` slices.
//!
//! Why it exists: profiling one training step of resnet18 (`--width 0.25`, batch 64, one
//! thread) put burn's `conv2d_weight_backward` at 30 % of all samples, more than the forward
//! convolutions (22 %). Burn computes `∂W` as a convolution of the input with the output
//! gradient, batch and channels swapped, so the "kernel" is a whole output plane: the swapped
//! tensors are copied to contiguous layout, converted to channels-last and unrolled, and the
//! GEMM it reaches has a 9-row output (3×3 kernels). Here `∂W = Σ_b g_b · col_bᵀ` instead, with
//! `col_b` the image's unrolled patches (`[C·k·k, OH·OW]`, built in NCHW order straight from
//! the input) and `g_b` the image's output gradient (`[OC, OH·OW]`): GEMMs with the output `[OC, C·k·k]` in burn's and PyTorch's `[out, in, kh, kw]` layout,
//! accumulated in place; a few images are multiplied at once (their patches side by side, up to
//! [`CHUNK_BYTES`]) so that each GEMM has a long inner dimension. With several threads the images are split between them, each thread
//! summing into its own gradient, and the partial gradients are added at the end.
//!
//! Only the CPU device uses it (the slices are the tensors' host data); a GPU keeps burn's.

use rayon::prelude::*;

/// The geometry of a 2-D convolution with a square kernel, the same stride and padding in
/// both directions, no dilation and one group (every convolution of the model zoo).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct ConvGeometry {
    /// Images in the batch.
    pub batch: usize,
    /// Input channels.
    pub channels_in: usize,
    /// Input height.
    pub height: usize,
    /// Input width.
    pub width: usize,
    /// Output channels.
    pub channels_out: usize,
    /// Kernel size (k×k).
    pub kernel: usize,
    /// Stride.
    pub stride: usize,
    /// Zero padding on every side.
    pub padding: usize,
}

impl ConvGeometry {
    /// Output height.
    pub fn height_out(&self) -> usize {
        (self.height + 2 * self.padding - self.kernel) / self.stride + 1
    }

    /// Output width.
    pub fn width_out(&self) -> usize {
        (self.width + 2 * self.padding - self.kernel) / self.stride + 1
    }

    /// Output positions per channel (OH·OW).
    fn positions(&self) -> usize {
        self.height_out() * self.width_out()
    }

    /// Rows of the unrolled patches: one per (input channel, kernel row, kernel column).
    fn patch_rows(&self) -> usize {
        self.channels_in * self.kernel * self.kernel
    }
}

/// Unrolls the patches of one image (`[C, H, W]`) into its `OH·OW` columns of `col`
/// (`C·k·k` rows of `row_len` values, the image's columns starting at `first_column`):
/// `col[(c, i, j), (oh, ow)] = image[c, oh·s + i − p, ow·s + j − p]`, zero outside the image.
fn unroll_patches(
    geometry: &ConvGeometry,
    image: &[f32],
    col: &mut [f32],
    row_len: usize,
    first_column: usize,
) {
    let ConvGeometry {
        height,
        width,
        kernel,
        stride,
        padding,
        ..
    } = *geometry;
    let (height_out, width_out) = (geometry.height_out(), geometry.width_out());
    let positions = geometry.positions();
    // The output columns `ow` whose input column `ow·s + j − p` lies inside the image.
    let inside = |offset: usize, size: usize, size_out: usize| {
        let first = padding.saturating_sub(offset).div_ceil(stride);
        let last = (size + padding)
            .checked_sub(offset + 1)
            .map_or(0, |max| (max / stride + 1).min(size_out));
        first..last.max(first)
    };
    // `col` may be longer than this chunk's `[C·k·k, row_len]` (the last chunk of a thread can
    // hold fewer images than the buffer was sized for).
    let rows = geometry.patch_rows();
    for (row, col_row) in col[..rows * row_len].chunks_exact_mut(row_len).enumerate() {
        let col_row = &mut col_row[first_column..first_column + positions];
        let channel = row / (kernel * kernel);
        let (i, j) = ((row / kernel) % kernel, row % kernel);
        let plane = &image[channel * height * width..(channel + 1) * height * width];
        let rows_inside = inside(i, height, height_out);
        let columns_inside = inside(j, width, width_out);
        for (oh, out) in col_row.chunks_exact_mut(width_out).enumerate() {
            if !rows_inside.contains(&oh) {
                out.fill(0.0);
                continue;
            }
            let input_row = &plane[(oh * stride + i - padding) * width..][..width];
            out[..columns_inside.start].fill(0.0);
            out[columns_inside.end..].fill(0.0);
            let (first, last) = (columns_inside.start, columns_inside.end);
            if stride == 1 {
                out[first..last]
                    .copy_from_slice(&input_row[first + j - padding..last + j - padding]);
            } else {
                for ow in first..last {
                    out[ow] = input_row[ow * stride + j - padding];
                }
            }
        }
    }
}

/// Adds `g_chunk · colᵀ` to `weight_grad` (`[OC, C·k·k]`), where `g_chunk` (`[OC, columns]`)
/// and `col` (`[C·k·k, columns]`) hold the output gradients and patches of a chunk of images.
fn accumulate_chunk(
    geometry: &ConvGeometry,
    g_chunk: &[f32],
    col: &[f32],
    columns: usize,
    weight_grad: &mut [f32],
) {
    let rows = geometry.patch_rows();
    assert!(g_chunk.len() >= geometry.channels_out * columns);
    assert!(col.len() >= rows * columns);
    assert_eq!(weight_grad.len(), geometry.channels_out * rows);
    // SAFETY: the strides below address only the checked prefixes of the three slices: the
    // output `[OC, rows]` row-major, the left operand `g_chunk` as `[OC, columns]` row-major,
    // and the right operand `colᵀ` (`[columns, rows]`) read from `col` (`[rows, columns]`
    // row-major) by swapping its strides. `weight_grad` does not alias the inputs (it is a
    // distinct `&mut`).
    unsafe {
        gemm::gemm(
            geometry.channels_out,
            rows,
            columns,
            weight_grad.as_mut_ptr(),
            1,
            rows as isize,
            true,
            g_chunk.as_ptr(),
            1,
            columns as isize,
            col.as_ptr(),
            columns as isize,
            1,
            1.0,
            1.0,
            false,
            false,
            false,
            gemm::Parallelism::None,
        );
    }
}

/// The most bytes of unrolled patches a thread builds before multiplying them: a few images'
/// worth, so that each GEMM has a long inner dimension but its operands stay in cache.
const CHUNK_BYTES: usize = 2 << 20;

/// `∂W` (`[OC, C, k, k]` flattened) of a convolution with input `x` (`[B, C, H, W]`) and
/// output gradient `g` (`[B, OC, OH, OW]`), both flattened row-major. Runs on the current rayon
/// pool: images are split between its threads.
///
/// # Panics
/// If the slice lengths do not match `geometry` (a broken invariant of the caller).
pub(crate) fn conv2d_weight_grad(geometry: &ConvGeometry, x: &[f32], g: &[f32]) -> Vec<f32> {
    let image_len = geometry.channels_in * geometry.height * geometry.width;
    let g_len = geometry.channels_out * geometry.positions();
    assert_eq!(x.len(), geometry.batch * image_len, "input of {geometry:?}");
    assert_eq!(
        g.len(),
        geometry.batch * g_len,
        "output gradient of {geometry:?}"
    );
    let grad_len = geometry.channels_out * geometry.patch_rows();
    let col_len = geometry.patch_rows() * geometry.positions();
    let threads = rayon::current_num_threads().clamp(1, geometry.batch.max(1));
    let images_per_thread = geometry.batch.div_ceil(threads).max(1);
    let positions = geometry.positions();
    let chunk = (CHUNK_BYTES / (4 * col_len).max(1)).clamp(1, images_per_thread);
    let partial = |images: std::ops::Range<usize>| {
        let mut weight_grad = vec![0.0; grad_len];
        let mut col = vec![0.0; col_len * chunk];
        let mut g_chunk = vec![0.0; g_len * chunk];
        let mut start = images.start;
        while start < images.end {
            let count = chunk.min(images.end - start);
            let columns = count * positions;
            for i in 0..count {
                let b = start + i;
                let image = &x[b * image_len..(b + 1) * image_len];
                unroll_patches(geometry, image, &mut col, columns, i * positions);
                let g_image = &g[b * g_len..(b + 1) * g_len];
                for (o, g_row) in g_image.chunks_exact(positions).enumerate() {
                    g_chunk[o * columns + i * positions..][..positions].copy_from_slice(g_row);
                }
            }
            accumulate_chunk(geometry, &g_chunk, &col, columns, &mut weight_grad);
            start += count;
        }
        weight_grad
    };
    if threads == 1 {
        return partial(0..geometry.batch);
    }
    (0..threads)
        .into_par_iter()
        .map(|t| partial(t * images_per_thread..((t + 1) * images_per_thread).min(geometry.batch)))
        .reduce_with(|mut sum, part| {
            sum.iter_mut().zip(&part).for_each(|(s, p)| *s += p);
            sum
        })
        .unwrap_or_else(|| vec![0.0; grad_len])
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `∂W` by its definition: `Σ_{b, oh, ow} g[b, o, oh, ow] · x[b, c, oh·s + i − p, ow·s + j − p]`.
    fn reference(geometry: &ConvGeometry, x: &[f32], g: &[f32]) -> Vec<f32> {
        let ConvGeometry {
            batch,
            channels_in,
            height,
            width,
            channels_out,
            kernel,
            stride,
            padding,
        } = *geometry;
        let (height_out, width_out) = (geometry.height_out(), geometry.width_out());
        let mut grad = vec![0.0f64; channels_out * channels_in * kernel * kernel];
        for b in 0..batch {
            for o in 0..channels_out {
                for c in 0..channels_in {
                    for i in 0..kernel {
                        for j in 0..kernel {
                            let mut sum = 0.0f64;
                            for oh in 0..height_out {
                                for ow in 0..width_out {
                                    let (ih, iw) = (oh * stride + i, ow * stride + j);
                                    if ih < padding
                                        || iw < padding
                                        || ih - padding >= height
                                        || iw - padding >= width
                                    {
                                        continue;
                                    }
                                    let xv = x[((b * channels_in + c) * height + ih - padding)
                                        * width
                                        + iw
                                        - padding];
                                    let gv = g[((b * channels_out + o) * height_out + oh)
                                        * width_out
                                        + ow];
                                    sum += f64::from(xv) * f64::from(gv);
                                }
                            }
                            grad[((o * channels_in + c) * kernel + i) * kernel + j] += sum;
                        }
                    }
                }
            }
        }
        grad.into_iter().map(|v| v as f32).collect()
    }

    /// Deterministic values in [-1, 1).
    fn values(len: usize, seed: u32) -> Vec<f32> {
        (0..len)
            .map(|i| {
                let h = (i as u32 ^ seed)
                    .wrapping_mul(2_654_435_761)
                    .rotate_left(13);
                (h % 2000) as f32 / 1000.0 - 1.0
            })
            .collect()
    }

    fn check(geometry: ConvGeometry) {
        let x = values(
            geometry.batch * geometry.channels_in * geometry.height * geometry.width,
            1,
        );
        let g = values(
            geometry.batch * geometry.channels_out * geometry.positions(),
            2,
        );
        let expected = reference(&geometry, &x, &g);
        // 2 threads leave one thread a shorter last chunk than its buffer holds.
        for threads in [1, 2, 3] {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            let got = pool.install(|| conv2d_weight_grad(&geometry, &x, &g));
            assert_eq!(got.len(), expected.len());
            for (k, (a, b)) in got.iter().zip(&expected).enumerate() {
                assert!(
                    (a - b).abs() <= 1e-4 * (1.0 + b.abs()),
                    "{geometry:?}, {threads} threads, element {k}: {a} vs {b}"
                );
            }
        }
    }

    #[test]
    fn the_weight_gradient_equals_its_definition_on_odd_shapes() {
        let base = ConvGeometry {
            batch: 3,
            channels_in: 2,
            height: 7,
            width: 5,
            channels_out: 3,
            kernel: 3,
            stride: 1,
            padding: 1,
        };
        check(base);
        // Stride 2 with even and odd sizes (the far edge drops a row or a column).
        check(ConvGeometry { stride: 2, ..base });
        check(ConvGeometry {
            stride: 2,
            height: 8,
            width: 6,
            ..base
        });
        // No padding, a large kernel, one image, a 1×1 kernel, padding larger than a stride.
        check(ConvGeometry {
            padding: 0,
            kernel: 5,
            height: 9,
            width: 11,
            ..base
        });
        check(ConvGeometry { batch: 1, ..base });
        check(ConvGeometry {
            kernel: 1,
            padding: 0,
            ..base
        });
        check(ConvGeometry {
            kernel: 5,
            padding: 2,
            stride: 3,
            height: 10,
            width: 13,
            ..base
        });
        // More threads than images.
        check(ConvGeometry { batch: 2, ..base });
    }
}
