//! Direct convolutions for few output channels at stride 1, on the machine's widest vectors.
//!
//! Why: the unrolled patches copy every input value `k·k` times, once per tap, so that one
//! GEMM can multiply them. That pays where the GEMM is wide, but a convolution with a handful
//! of output channels (LeNet-5's first two: 3 → 6 and 6 → 16 channels, and at width 0.25
//! 3 → 2 and 2 → 4) multiplies each copied value only a few times. The copies then cost more
//! than the products: the patch unrolling and its `memmove` took 32 % of a width-0.25 LeNet-5
//! step, and its first stage was that one convolution.
//!
//! How: an image row-major with its padding around it (a copy only where the convolution
//! pads) is read at "extended" positions `q = oh·W' + ow` (`W'` the padded width), which run
//! over the output rows and the `k − 1` columns past each row's end. At stride 1 tap
//! `(c, i, j)` of every extended position reads the padded image at `q + c·H'·W' + i·W' + j`:
//! one contiguous slice per tap, so each tap multiplies whole vectors of positions with no
//! copy at all. The columns past a row's end read the next row's first values; the forward
//! drops them, and the weight gradient multiplies them by zero.
//!
//! - forward: for a vector of positions, up to [`BLOCK`] output channels accumulate in
//!   registers over all taps (one load of the image per tap, one multiply-add per channel);
//! - weight gradient: per tap, the dot products of its image slice with up to [`BLOCK`]
//!   channels' output gradients;
//! - input gradient: the forward of the transposed convolution (the output gradient padded by
//!   `k − 1 − p`, the kernels flipped, input and output channels swapped), so it applies where
//!   the *input* has few channels.
//!
//! The vectors are `pulp`'s, chosen at run time (AVX-512, AVX2 + FMA, or scalar), as `gemm`
//! chooses its own.

use pulp::{Arch, Simd, WithSimd};

use super::{ConvGeometry, summed_over_threads, with_scratch};
use crate::tensor::{fill_chunks, transpose};

/// The most output channels a convolution multiplies directly. At 16 the patches' GEMM is
/// faster for the weight gradient (6 → 16 channels on 14×14 maps, batch 128: 2.44 ms directly
/// against 1.80 ms through the patches on one thread).
const MAX_CHANNELS_OUT: usize = 8;

/// Output channels accumulated together, each in its own vector register.
const BLOCK: usize = 8;

impl ConvGeometry {
    /// Whether to multiply directly: stride 1, padding narrower than the kernel (so the
    /// transposed convolution of the input gradient needs no negative padding), few output
    /// channels, and not a 1×1 convolution read in place.
    pub(super) fn multiplies_directly(&self) -> bool {
        self.reads_taps_as_slices() && self.channels_out <= MAX_CHANNELS_OUT && !self.is_pointwise()
    }

    /// Whether to compute the input gradient directly: the transposed convolution (whose
    /// forward it is) multiplies directly, i.e. the input has few channels.
    pub(super) fn input_grad_directly(&self) -> bool {
        self.reads_taps_as_slices() && self.transposed().multiplies_directly()
    }

    /// Whether the direct kernels can compute this convolution at all: stride 1 (each tap
    /// reads one contiguous slice of the padded image) and padding narrower than the kernel
    /// (the transposed convolution needs no negative padding).
    fn reads_taps_as_slices(&self) -> bool {
        self.stride == 1 && self.padding < self.kernel
    }

    /// Checks that the direct kernels can compute this convolution (a broken invariant of the
    /// caller otherwise).
    fn assert_reads_taps_as_slices(&self) {
        assert!(
            self.reads_taps_as_slices(),
            "a direct convolution of {self:?}"
        );
    }

    /// Height and width of an image with its padding.
    fn padded_sides(&self) -> (usize, usize) {
        (
            self.height + 2 * self.padding,
            self.width + 2 * self.padding,
        )
    }

    /// Values of one padded image (`C·H'·W'`).
    fn padded_image_len(&self) -> usize {
        let (padded_height, padded_width) = self.padded_sides();
        self.channels_in * padded_height * padded_width
    }

    /// Where output row `oh` of `channel` starts among the extended positions of all output
    /// channels (`[OC, extended positions]`).
    fn extended_row(&self, channel: usize, oh: usize) -> usize {
        channel * self.extended_positions() + oh * self.padded_sides().1
    }

    /// Extended positions of one output channel: the output rows at the padded width, without
    /// the last row's columns past its end (which would read past the image).
    fn extended_positions(&self) -> usize {
        let (_, padded_width) = self.padded_sides();
        (self.height_out() - 1) * padded_width + self.width_out()
    }

    /// Where each tap `(c, i, j)` (the weight's order) starts reading a padded image.
    fn tap_offsets(&self) -> Vec<usize> {
        let (padded_height, padded_width) = self.padded_sides();
        (0..self.patch_rows())
            .map(|row| {
                let (c, i, j) = self.patch_row(row);
                c * padded_height * padded_width + i * padded_width + j
            })
            .collect()
    }

    /// Copies `image` (`[C, H, W]`) into `padded` (`[C, H', W']`) with zeros around it.
    fn pad_image(&self, image: &[f32], padded: &mut [f32]) {
        let (padded_height, padded_width) = self.padded_sides();
        let p = self.padding;
        padded.fill(0.0);
        for (channel, plane) in image.chunks_exact(self.height * self.width).enumerate() {
            let padded_plane = &mut padded[channel * padded_height * padded_width..];
            for (h, row) in plane.chunks_exact(self.width).enumerate() {
                padded_plane[(h + p) * padded_width + p..][..self.width].copy_from_slice(row);
            }
        }
    }

    /// Image `b` of `x` with its padding: `x`'s own values where the convolution does not pad,
    /// else a copy in `scratch`.
    fn padded_image<'a>(&self, x: &'a [f32], b: usize, scratch: &'a mut [f32]) -> &'a [f32] {
        let image = &x[b * self.image_len()..][..self.image_len()];
        if self.padding == 0 {
            return image;
        }
        self.pad_image(image, scratch);
        scratch
    }

    /// The convolution whose forward is this one's input gradient: input and output channels
    /// swapped, on the output map, padded by `k − 1 − p`.
    fn transposed(&self) -> ConvGeometry {
        ConvGeometry {
            channels_in: self.channels_out,
            height: self.height_out(),
            width: self.width_out(),
            channels_out: self.channels_in,
            padding: self.kernel - 1 - self.padding,
            ..*self
        }
    }

    /// The weight of [`ConvGeometry::transposed`]: `w'[c, o, i, j] = w[o, c, k−1−i, k−1−j]`.
    fn transposed_weight(&self, weight: &[f32]) -> Vec<f32> {
        let (channels, channels_out, taps) = (
            self.channels_in,
            self.channels_out,
            self.kernel * self.kernel,
        );
        let mut flipped = vec![0.0; weight.len()];
        for o in 0..channels_out {
            for c in 0..channels {
                let kernel = &weight[(o * channels + c) * taps..][..taps];
                let target = &mut flipped[(c * channels_out + o) * taps..][..taps];
                for (t, value) in target.iter_mut().enumerate() {
                    *value = kernel[taps - 1 - t];
                }
            }
        }
        flipped
    }
}

/// The forward `W ⊛ x + b` (see [`super::conv2d_forward`]) for a geometry of stride 1 with
/// padding narrower than the kernel, on the machine's widest vectors.
pub(super) fn forward(
    geometry: &ConvGeometry,
    x: &[f32],
    weight: &[f32],
    bias: Option<&[f32]>,
) -> Vec<f32> {
    forward_on(Arch::new(), geometry, x, weight, bias)
}

/// [`forward`] on the vectors of `arch`.
fn forward_on(
    arch: Arch,
    geometry: &ConvGeometry,
    x: &[f32],
    weight: &[f32],
    bias: Option<&[f32]>,
) -> Vec<f32> {
    geometry.assert_reads_taps_as_slices();
    let (channels_out, output_len, width_out) = (
        geometry.channels_out,
        geometry.output_len(),
        geometry.width_out(),
    );
    let extended = geometry.extended_positions();
    let offsets = geometry.tap_offsets();
    // `[taps, OC]`: a tap's channels side by side.
    let weights = transpose(weight, channels_out, geometry.patch_rows());
    fill_chunks(geometry.batch * output_len, output_len, |b, out| {
        with_scratch(
            [geometry.padded_image_len(), channels_out * extended],
            |scratch, products| {
                let image = geometry.padded_image(x, b, scratch);
                for taps in TapBlock::all(image, &offsets, channels_out) {
                    let (first, channels) = (taps.first, taps.channels);
                    arch.dispatch(ForwardBlock {
                        taps,
                        weights: &weights,
                        bias: bias.map(|bias| &bias[first..first + channels]),
                        products: &mut products[first * extended..][..channels * extended],
                    });
                }
                // Drop the columns past each row's end.
                for (row, values) in out.chunks_exact_mut(width_out).enumerate() {
                    let (channel, oh) = (row / geometry.height_out(), row % geometry.height_out());
                    values.copy_from_slice(
                        &products[geometry.extended_row(channel, oh)..][..width_out],
                    );
                }
            },
        );
    })
}

/// `∂x` (see [`super::conv2d_input_grad`]): the direct forward of the transposed convolution.
pub(super) fn input_grad(geometry: &ConvGeometry, weight: &[f32], g: &[f32]) -> Vec<f32> {
    input_grad_on(Arch::new(), geometry, weight, g)
}

/// [`input_grad`] on the vectors of `arch`.
fn input_grad_on(arch: Arch, geometry: &ConvGeometry, weight: &[f32], g: &[f32]) -> Vec<f32> {
    forward_on(
        arch,
        &geometry.transposed(),
        g,
        &geometry.transposed_weight(weight),
        None,
    )
}

/// `∂W` (see [`super::conv2d_weight_grad`]) for a geometry of stride 1 with padding narrower
/// than the kernel: each thread sums its share of the images, the partial sums are added in
/// thread order.
pub(super) fn weight_grad(geometry: &ConvGeometry, x: &[f32], g: &[f32]) -> Vec<f32> {
    weight_grad_on(Arch::new(), geometry, x, g)
}

/// [`weight_grad`] on the vectors of `arch`.
fn weight_grad_on(arch: Arch, geometry: &ConvGeometry, x: &[f32], g: &[f32]) -> Vec<f32> {
    geometry.assert_reads_taps_as_slices();
    let (channels_out, rows, output_len, width_out, positions) = (
        geometry.channels_out,
        geometry.patch_rows(),
        geometry.output_len(),
        geometry.width_out(),
        geometry.positions(),
    );
    let extended = geometry.extended_positions();
    let offsets = geometry.tap_offsets();
    let partial = |images: std::ops::Range<usize>| {
        // `[taps, OC]`, transposed at the end.
        let mut by_tap = vec![0.0; rows * channels_out];
        with_scratch(
            [geometry.padded_image_len(), channels_out * extended],
            |scratch, gradients| {
                // The columns past each row's end stay zero.
                gradients.fill(0.0);
                for b in images {
                    let image = geometry.padded_image(x, b, scratch);
                    let g_image = &g[b * output_len..][..output_len];
                    for (channel, plane) in g_image.chunks_exact(positions).enumerate() {
                        for (oh, row) in plane.chunks_exact(width_out).enumerate() {
                            gradients[geometry.extended_row(channel, oh)..][..width_out]
                                .copy_from_slice(row);
                        }
                    }
                    for taps in TapBlock::all(image, &offsets, channels_out) {
                        let (first, channels) = (taps.first, taps.channels);
                        arch.dispatch(WeightGradBlock {
                            taps,
                            gradients: &gradients[first * extended..][..channels * extended],
                            by_tap: &mut by_tap,
                        });
                    }
                }
            },
        );
        by_tap
    };
    let by_tap = summed_over_threads(geometry.batch, rows * channels_out, partial);
    transpose(&by_tap, rows, channels_out)
}

/// One vector of `values` (`F32_LANES` of them or fewer, the rest zero).
#[inline(always)]
fn load<S: Simd>(simd: S, values: &[f32]) -> S::f32s {
    if values.len() == S::F32_LANES {
        S::as_simd_f32s(values).0[0]
    } else {
        simd.partial_load_f32s(values)
    }
}

/// Stores the first `values.len()` lanes of `vector` into `values`.
#[inline(always)]
fn store<S: Simd>(simd: S, values: &mut [f32], vector: S::f32s) {
    if values.len() == S::F32_LANES {
        S::as_mut_simd_f32s(values).0[0] = vector;
    } else {
        simd.partial_store_f32s(values, vector);
    }
}

/// Makes `$block` a `pulp` operation that calls `$run::<S, N, V>` for its channel count `N`
/// (1 to [`BLOCK`]), with `V` vectors of positions at once: each of the `N·V` accumulators is
/// a register, and at least eight of them are independent where the block allows it, so that
/// the multiply-adds do not wait on each other's latency (two channels, one vector at a time,
/// ran at a quarter of the core's rate).
macro_rules! block_operation {
    ($block:ident, $run:ident) => {
        impl WithSimd for $block<'_> {
            type Output = ();

            #[inline(always)]
            fn with_simd<S: Simd>(self, simd: S) -> Self::Output {
                match self.taps.channels {
                    1 => $run::<S, 1, 8>(simd, self),
                    2 => $run::<S, 2, 4>(simd, self),
                    3 => $run::<S, 3, 4>(simd, self),
                    4 => $run::<S, 4, 2>(simd, self),
                    5 => $run::<S, 5, 2>(simd, self),
                    6 => $run::<S, 6, 2>(simd, self),
                    7 => $run::<S, 7, 1>(simd, self),
                    8 => $run::<S, 8, 1>(simd, self),
                    channels => unreachable!("a block of {channels} channels"),
                }
            }
        }
    };
}

/// Positions of `0..extended` that steps of `V` whole vectors cover; the rest go one vector
/// at a time. (Loops, not an iterator of steps or a closure: those need not be compiled with
/// the caller's vector instructions, and ran ten times slower.)
#[inline(always)]
fn whole_steps<S: Simd, const V: usize>(extended: usize) -> usize {
    extended / (V * S::F32_LANES) * V * S::F32_LANES
}

/// What both kernels read for one block of output channels: a padded image, where each tap
/// starts reading it, and the block's channels.
#[derive(Clone, Copy)]
struct TapBlock<'a> {
    image: &'a [f32],
    offsets: &'a [usize],
    /// Output channels in all.
    channels_out: usize,
    /// The block's first output channel.
    first: usize,
    /// The block's channels, 1 to [`BLOCK`].
    channels: usize,
}

impl<'a> TapBlock<'a> {
    /// The blocks of `channels_out` output channels, [`BLOCK`] at a time, reading `image`.
    fn all(
        image: &'a [f32],
        offsets: &'a [usize],
        channels_out: usize,
    ) -> impl Iterator<Item = TapBlock<'a>> {
        (0..channels_out).step_by(BLOCK).map(move |first| TapBlock {
            image,
            offsets,
            channels_out,
            first,
            channels: BLOCK.min(channels_out - first),
        })
    }

    /// Where tap `tap`'s values of the block's channels start in a `[taps, OC]` array.
    fn at(&self, tap: usize) -> usize {
        tap * self.channels_out + self.first
    }
}

/// The forward products of a block of output channels for one padded image, at every extended
/// position.
struct ForwardBlock<'a> {
    taps: TapBlock<'a>,
    /// The weight `[taps, OC]`.
    weights: &'a [f32],
    bias: Option<&'a [f32]>,
    /// `[channels, extended positions]`.
    products: &'a mut [f32],
}

block_operation!(ForwardBlock, forward_block);

#[inline(always)]
fn forward_block<S: Simd, const N: usize, const V: usize>(simd: S, mut block: ForwardBlock<'_>) {
    let extended = block.products.len() / N;
    let mut bias = [0.0; N];
    if let Some(values) = block.bias {
        bias.copy_from_slice(values);
    }
    let (lanes, whole) = (S::F32_LANES, whole_steps::<S, V>(extended));
    let mut start = 0;
    while start < whole {
        forward_step::<S, N, V>(simd, &mut block, bias, start, lanes);
        start += V * lanes;
    }
    while start < extended {
        forward_step::<S, N, 1>(simd, &mut block, bias, start, lanes.min(extended - start));
        start += lanes;
    }
}

/// The products of `V` vectors of `len` positions from `start` (`len` below a whole vector
/// only where `V` is 1), stored into `block.products`.
#[inline(always)]
fn forward_step<S: Simd, const N: usize, const V: usize>(
    simd: S,
    block: &mut ForwardBlock<'_>,
    bias: [f32; N],
    start: usize,
    len: usize,
) {
    let (lanes, extended) = (S::F32_LANES, block.products.len() / N);
    let mut sums = [bias.map(|b| simd.splat_f32s(b)); V];
    let taps = block.taps;
    for (tap, &offset) in taps.offsets.iter().enumerate() {
        let weights = &block.weights[taps.at(tap)..][..N];
        for (v, sums) in sums.iter_mut().enumerate() {
            let x = load(simd, &taps.image[offset + start + v * lanes..][..len]);
            for (sum, &w) in sums.iter_mut().zip(weights) {
                *sum = simd.mul_add_e_f32s(simd.splat_f32s(w), x, *sum);
            }
        }
    }
    for (v, sums) in sums.iter().enumerate() {
        for (o, &sum) in sums.iter().enumerate() {
            let at = o * extended + start + v * lanes;
            store(simd, &mut block.products[at..][..len], sum);
        }
    }
}

/// Adds one padded image's weight gradient of a block of output channels to `by_tap`
/// (`[taps, OC]`).
struct WeightGradBlock<'a> {
    taps: TapBlock<'a>,
    /// The output gradient of the block's channels at every extended position (zero past each
    /// row's end), `[channels, extended positions]`.
    gradients: &'a [f32],
    by_tap: &'a mut [f32],
}

block_operation!(WeightGradBlock, weight_grad_block);

#[inline(always)]
fn weight_grad_block<S: Simd, const N: usize, const V: usize>(simd: S, block: WeightGradBlock<'_>) {
    let extended = block.gradients.len() / N;
    let (lanes, whole) = (S::F32_LANES, whole_steps::<S, V>(extended));
    let taps = block.taps;
    for (tap, &offset) in taps.offsets.iter().enumerate() {
        let x = &taps.image[offset..][..extended];
        let mut sums = [[simd.splat_f32s(0.0); N]; V];
        let mut start = 0;
        while start < whole {
            weight_grad_step::<S, N, V>(simd, &block, x, &mut sums, start, lanes);
            start += V * lanes;
        }
        let mut rest = [[simd.splat_f32s(0.0); N]; 1];
        while start < extended {
            let len = lanes.min(extended - start);
            weight_grad_step::<S, N, 1>(simd, &block, x, &mut rest, start, len);
            start += lanes;
        }
        let grad = &mut block.by_tap[taps.at(tap)..][..N];
        for (o, value) in grad.iter_mut().enumerate() {
            let mut sum = rest[0][o];
            for sums in &sums {
                sum = simd.add_f32s(sum, sums[o]);
            }
            *value += simd.reduce_sum_f32s(sum);
        }
    }
}

/// Adds the products of `V` vectors of `len` positions from `start` of one tap's image slice
/// `x` and the block's output gradients to `sums` (`len` below a whole vector only where `V`
/// is 1).
#[inline(always)]
fn weight_grad_step<S: Simd, const N: usize, const V: usize>(
    simd: S,
    block: &WeightGradBlock<'_>,
    x: &[f32],
    sums: &mut [[S::f32s; N]; V],
    start: usize,
    len: usize,
) {
    let (lanes, extended) = (S::F32_LANES, block.gradients.len() / N);
    for (v, sums) in sums.iter_mut().enumerate() {
        let at = start + v * lanes;
        let x = load(simd, &x[at..][..len]);
        for (o, sum) in sums.iter_mut().enumerate() {
            let g = load(simd, &block.gradients[o * extended + at..][..len]);
            *sum = simd.mul_add_e_f32s(g, x, *sum);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::{forward_by_patches, input_grad_by_patches, weight_grad_by_patches};
    use super::*;
    use crate::kernel_test_support::{assert_near, pool, pseudo_random as values};

    /// Every instruction set `pulp` can use on this machine, the scalar fallback included.
    fn instruction_sets() -> Vec<Arch> {
        #[allow(unused_mut)] // Only x86-64 adds the vector sets.
        let mut sets = vec![Arch::Scalar];
        #[cfg(target_arch = "x86_64")]
        {
            sets.extend(pulp::x86::V3::try_new().map(Arch::V3));
            sets.extend(pulp::x86::V4::try_new().map(Arch::V4));
        }
        sets
    }

    fn wide(values: &[f32]) -> Vec<f64> {
        values.iter().map(|&v| f64::from(v)).collect()
    }

    /// On every instruction set, the direct products equal those of the patches (which the
    /// kernel tests check against the definition), on geometries that take every step: whole
    /// steps of several vectors and a shorter last one, blocks of every channel count from 1
    /// to 8 and more channels than one block, padding, and one or two threads.
    #[test]
    fn every_instruction_set_multiplies_as_the_patches_do() {
        let base = ConvGeometry {
            batch: 3,
            channels_in: 3,
            height: 21,
            width: 19,
            channels_out: 2,
            kernel: 5,
            stride: 1,
            padding: 0,
        };
        let mut geometries: Vec<ConvGeometry> = (1..=BLOCK)
            .map(|channels_out| ConvGeometry {
                channels_out,
                ..base
            })
            .collect();
        geometries.push(ConvGeometry {
            channels_in: 10,
            channels_out: 11,
            kernel: 3,
            padding: 2,
            height: 9,
            width: 8,
            ..base
        });
        geometries.push(ConvGeometry {
            channels_in: 1,
            channels_out: 6,
            height: 28,
            width: 28,
            padding: 2,
            ..base
        });
        for geometry in geometries {
            let x = values(geometry.batch * geometry.image_len(), 1);
            let g = values(geometry.batch * geometry.output_len(), 2);
            let weight = values(geometry.channels_out * geometry.patch_rows(), 3);
            let bias = values(geometry.channels_out, 4);
            for threads in [1, 2] {
                pool(threads).install(|| {
                    let forward = wide(&forward_by_patches(&geometry, &x, &weight, Some(&bias)));
                    let input_grad = wide(&input_grad_by_patches(&geometry, &weight, &g));
                    let weight_grad = wide(&weight_grad_by_patches(&geometry, &x, &g));
                    for arch in instruction_sets() {
                        let what = |pass: &str| format!("{pass} of {geometry:?} on {arch:?}");
                        let got = forward_on(arch, &geometry, &x, &weight, Some(&bias));
                        assert_near(&what("forward"), &got, &forward);
                        let got = input_grad_on(arch, &geometry, &weight, &g);
                        assert_near(&what("input gradient"), &got, &input_grad);
                        let got = weight_grad_on(arch, &geometry, &x, &g);
                        assert_near(&what("weight gradient"), &got, &weight_grad);
                    }
                });
            }
        }
    }
}
