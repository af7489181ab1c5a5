//! Convolutions on plain `f32` slices: forward, input gradient and weight gradient, each a
//! GEMM per chunk of images on the `gemm` crate.
//!
//! Why it exists: profiling training steps put burn's convolutions at most of a conv model's
//! time: its weight gradient (a convolution of the input with the output gradient, batch and
//! channels swapped, so the GEMM it reaches has a 9-row output for 3×3 kernels) at 30 % of a
//! resnet18 step, and its direct ("small channel") forward at 47 % of an alexnet step. Here all
//! three products work on the images' unrolled patches (`col`, `[C·k·k, OH·OW]` per image,
//! built in NCHW order straight from the input; zero where a patch reads padding):
//!
//! - forward: `y_b = W · col_b (+ b)`, `W` as `[OC, C·k·k]`;
//! - input gradient: `col_b' = Wᵀ · g_b`, folded back onto the positions each patch read;
//! - weight gradient: `∂W = Σ_b g_b · col_bᵀ`, in burn's and PyTorch's `[OC, C, k, k]` layout
//!   (summed as its transpose, see [`conv2d_weight_grad`]).
//!
//! Patches are copied out of an image (and added back for the input gradient) in runs where
//! the runs are long and through a table of image indices where they are short: small maps and
//! large strides ([`PatchLayout`]).
//!
//! A few images are multiplied at once (their patches side by side, up to [`CHUNK_BYTES`]) so
//! that each GEMM has a long inner or outer dimension, and chunks are split between the threads
//! of the current rayon pool. A 1×1 convolution with stride 1 on a map of at least
//! [`POINTWISE_MIN_POSITIONS`] positions skips the patches: an image is its own `col`, so each
//! image is multiplied in place (ResNet-50 at width 0.25: 1.05–1.10× per training step).
//!
//! Small maps, where many taps read padding, take one of two other paths:
//! - a map whose every output position reads all of it (3×3 kernels on 2×2 maps), in a batch
//!   large enough, is multiplied as the dense matrix of the convolution's linear map
//!   ([`dense`]; AlexNet at width 0.25: 1.35× per step at 1 thread, 1.46× at 2);
//! - otherwise, where at least a fifth of the (position, tap) pairs read padding (3×3 kernels
//!   on 4×4 maps, 5×5 ones on 4×4), the output positions are multiplied in classes that read
//!   the same taps, with no padding in their patches ([`valid_taps`]; AlexNet at width 1:
//!   1.42× per step at 1 thread).
//!
//! Only the CPU device uses them (the slices are the tensors' host data); a GPU keeps burn's.

mod dense;
mod direct;
mod valid_taps;

use std::cell::RefCell;

use rayon::prelude::*;

use crate::block::window_output;
use crate::gemm_kernel::{Operand, gemm_into};
use crate::tensor::{fill_chunks, transpose};

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
        self.output(self.height)
    }

    /// Output width.
    pub fn width_out(&self) -> usize {
        self.output(self.width)
    }

    /// Output size along a side of `size` (the geometry comes from a checked block).
    fn output(&self, size: usize) -> usize {
        window_output(size, self.kernel, self.stride, self.padding)
            .unwrap_or_else(|| panic!("a convolution window that does not fit: {self:?}"))
    }

    /// The output indices `o` whose input index `o·s + offset − p` lies inside `0..size`.
    fn inside(&self, offset: usize, size: usize, size_out: usize) -> std::ops::Range<usize> {
        let first = self.padding.saturating_sub(offset).div_ceil(self.stride);
        let last = (size + self.padding)
            .checked_sub(offset + 1)
            .map_or(0, |max| (max / self.stride + 1).min(size_out));
        first..last.max(first)
    }

    /// The kernel offsets `i` for which output index `out` reads inside `0..size`:
    /// `0 ≤ out·s + i − p < size`.
    fn inside_taps(&self, out: usize, size: usize) -> std::ops::Range<usize> {
        let start = out * self.stride;
        self.padding.saturating_sub(start)
            ..(size + self.padding).saturating_sub(start).min(self.kernel)
    }

    /// The (output position, tap) pairs that read the image, over one image and channel pair.
    fn inside_pairs(&self) -> usize {
        let side = |size: usize, size_out: usize| -> usize {
            (0..size_out)
                .map(|out| self.inside_taps(out, size).len())
                .sum()
        };
        side(self.height, self.height_out()) * side(self.width, self.width_out())
    }

    /// Output positions per channel (OH·OW).
    fn positions(&self) -> usize {
        self.height_out() * self.width_out()
    }

    /// Whether every output position reads exactly its own input position (a 1×1 kernel,
    /// stride 1, no padding; ResNet-50's bottleneck ends and projections): an image's unrolled
    /// patches are then the image itself (`[C, H·W]`), so the products read and write the
    /// images in place instead of through copies.
    /// Only on maps of at least [`POINTWISE_MIN_POSITIONS`] positions: on smaller ones a GEMM per
    /// image is too thin, and several images side by side (one copy) multiply faster.
    fn is_pointwise(&self) -> bool {
        self.kernel == 1
            && self.stride == 1
            && self.padding == 0
            && self.positions() >= POINTWISE_MIN_POSITIONS
    }

    /// Rows of the unrolled patches: one per (input channel, kernel row, kernel column).
    fn patch_rows(&self) -> usize {
        self.channels_in * self.kernel * self.kernel
    }

    /// The (input channel, kernel row, kernel column) of patch row `row`.
    fn patch_row(&self, row: usize) -> (usize, usize, usize) {
        let kernel = self.kernel;
        (
            row / (kernel * kernel),
            (row / kernel) % kernel,
            row % kernel,
        )
    }
}

/// Where one patch row of one output row reads the image: the output columns whose input lies
/// inside the image, and the image offset of the first of them (input columns follow with the
/// stride).
struct RowSpan {
    columns: std::ops::Range<usize>,
    image_offset: usize,
}

/// Calls `visit(row, oh, span)` for every patch row `row = (c, i, j)` and output row `oh`,
/// with `span` `None` where that output row reads only padding. Patch row `(c, i, j)` of output
/// position `(oh, ow)` reads `image[c, oh·s + i − p, ow·s + j − p]`.
fn for_each_patch_row(
    geometry: &ConvGeometry,
    mut visit: impl FnMut(usize, usize, Option<RowSpan>),
) {
    let ConvGeometry {
        height,
        width,
        stride,
        padding,
        ..
    } = *geometry;
    let (height_out, width_out) = (geometry.height_out(), geometry.width_out());
    for row in 0..geometry.patch_rows() {
        let (channel, i, j) = geometry.patch_row(row);
        let rows_inside = geometry.inside(i, height, height_out);
        let columns = geometry.inside(j, width, width_out);
        for oh in 0..height_out {
            let span = rows_inside.contains(&oh).then(|| RowSpan {
                image_offset: (channel * height + oh * stride + i - padding) * width
                    + columns.start * stride
                    + j
                    - padding,
                columns: columns.clone(),
            });
            visit(row, oh, span);
        }
    }
}

/// How a convolution's patches are copied out of an image and added back onto it: runs of
/// the image are copied where they are long, and a table of indices serves the rest. Measured
/// per unrolled value (one thread, docs/benchmarks.md): a copy per run costs about 0.2–0.3 ns
/// on runs of 28 or more values but 1.5–7 ns on runs of 2–8 (2×2 to 8×8 maps, strides of 2
/// and 4), where the table takes 0.5–1 ns whatever the shape. The small maps of AlexNet and the
/// last ResNet stages are such runs (a width-0.25 AlexNet step: 1.3× faster with the table).
#[derive(Debug)]
enum PatchLayout {
    /// Each patch row reads one contiguous run of the image (see [`reads_contiguous_runs`]),
    /// used where that run has at least [`SHORTEST_COPIED_RUN`] values.
    Contiguous,
    /// Each (patch row, output row) reads one run of the image, strided by the convolution's:
    /// used at stride 1 where an output row has at least [`SHORTEST_COPIED_ROW`] values.
    Rows,
    /// The image index every unrolled value reads, `[C·k·k, OH·OW]` row-major, with
    /// [`READS_PADDING`] where it reads padding: built once per kernel call, then one indexed
    /// load per value.
    Table(Vec<u32>),
}

/// The fewest values of a patch row's contiguous run for which [`PatchLayout::Contiguous`]
/// beats the table (8×8 maps copy, 4×4 ones use the table).
const SHORTEST_COPIED_RUN: usize = 32;

/// The fewest values of an output row for which [`PatchLayout::Rows`] beats the table (a
/// 28-column row copies in half the table's time, a 10-column one takes as long).
const SHORTEST_COPIED_ROW: usize = 12;

/// The [`PatchLayout::Table`] entry of a value that reads padding (no image has that many
/// values: [`PatchLayout::table`] checks).
const READS_PADDING: u32 = u32::MAX;

impl PatchLayout {
    /// The layout for `geometry`.
    fn new(geometry: &ConvGeometry) -> Self {
        if reads_contiguous_runs(geometry) {
            if geometry.positions() >= SHORTEST_COPIED_RUN {
                return Self::Contiguous;
            }
        } else if geometry.stride == 1 && geometry.width_out() >= SHORTEST_COPIED_ROW {
            return Self::Rows;
        }
        Self::table(geometry)
    }

    /// The [`PatchLayout::Table`] of `geometry`.
    fn table(geometry: &ConvGeometry) -> Self {
        assert!(
            geometry.image_len() < READS_PADDING as usize,
            "an image too large to index with u32: {geometry:?}"
        );
        let (positions, width_out, stride) =
            (geometry.positions(), geometry.width_out(), geometry.stride);
        let mut table = vec![READS_PADDING; geometry.patch_rows() * positions];
        for_each_patch_row(geometry, |row, oh, span| {
            let Some(RowSpan {
                columns,
                image_offset,
            }) = span
            else {
                return;
            };
            let out = &mut table[row * positions + oh * width_out..][columns];
            for (k, entry) in out.iter_mut().enumerate() {
                // In range: checked against the image size above.
                *entry = (image_offset + k * stride) as u32;
            }
        });
        Self::Table(table)
    }

    /// Unrolls the patches of one image (`[C, H, W]`) into its `OH·OW` columns of `col`
    /// (`C·k·k` rows of `row_len` values, the image's columns starting at `first_column`):
    /// `col[(c, i, j), (oh, ow)] = image[c, oh·s + i − p, ow·s + j − p]`, zero outside the
    /// image.
    fn unroll(
        &self,
        geometry: &ConvGeometry,
        image: &[f32],
        col: &mut [f32],
        row_len: usize,
        first_column: usize,
    ) {
        let table = match self {
            Self::Contiguous => {
                return unroll_contiguous(geometry, image, col, row_len, first_column);
            }
            Self::Rows => return unroll_rows(geometry, image, col, row_len, first_column),
            Self::Table(table) => table,
        };
        let positions = geometry.positions();
        for (reads, out) in table
            .chunks_exact(positions)
            .zip(col.chunks_exact_mut(row_len))
        {
            let out = &mut out[first_column..][..positions];
            for (value, &read) in out.iter_mut().zip(reads) {
                *value = image.get(read as usize).copied().unwrap_or(0.0);
            }
        }
    }

    /// The adjoint of [`PatchLayout::unroll`]: adds every value of the image's columns of `col`
    /// to the image position it was read from (`image` is `[C, H, W]`, accumulated into). May
    /// zero the values of `col` that read padding.
    fn fold(
        &self,
        geometry: &ConvGeometry,
        col: &mut [f32],
        row_len: usize,
        first_column: usize,
        image: &mut [f32],
    ) {
        let table = match self {
            Self::Contiguous => {
                return fold_contiguous(geometry, col, row_len, first_column, image);
            }
            Self::Rows => return fold_rows(geometry, col, row_len, first_column, image),
            Self::Table(table) => table,
        };
        let positions = geometry.positions();
        for (reads, values) in table.chunks_exact(positions).zip(col.chunks_exact(row_len)) {
            for (&read, value) in reads.iter().zip(&values[first_column..][..positions]) {
                if let Some(target) = image.get_mut(read as usize) {
                    *target += value;
                }
            }
        }
    }
}

/// [`PatchLayout::unroll`] one (patch row, output row) at a time.
fn unroll_rows(
    geometry: &ConvGeometry,
    image: &[f32],
    col: &mut [f32],
    row_len: usize,
    first_column: usize,
) {
    let (width_out, stride) = (geometry.width_out(), geometry.stride);
    for_each_patch_row(geometry, |row, oh, span| {
        let out = &mut col[row * row_len + first_column + oh * width_out..][..width_out];
        let Some(RowSpan {
            columns,
            image_offset,
        }) = span
        else {
            out.fill(0.0);
            return;
        };
        out[..columns.start].fill(0.0);
        out[columns.end..].fill(0.0);
        let out = &mut out[columns];
        if stride == 1 {
            out.copy_from_slice(&image[image_offset..image_offset + out.len()]);
        } else {
            let read = image[image_offset..].iter().step_by(stride);
            out.iter_mut().zip(read).for_each(|(o, v)| *o = *v);
        }
    });
}

/// [`PatchLayout::fold`] one (patch row, output row) at a time.
fn fold_rows(
    geometry: &ConvGeometry,
    col: &mut [f32],
    row_len: usize,
    first_column: usize,
    image: &mut [f32],
) {
    let (width_out, stride) = (geometry.width_out(), geometry.stride);
    for_each_patch_row(geometry, |row, oh, span| {
        let Some(RowSpan {
            columns,
            image_offset,
        }) = span
        else {
            return;
        };
        let values = &col[row * row_len + first_column + oh * width_out..][columns];
        let target = image[image_offset..].iter_mut().step_by(stride);
        target.zip(values).for_each(|(t, v)| *t += v);
    });
}

/// Whether the patch rows of this convolution read the image in contiguous runs: stride 1
/// and as many output as input columns (a "same" convolution, `2p = k − 1`, with `p` below the
/// width). Output rows `oh` of patch row `(c, i, j)` then read input rows `oh + i − p` shifted
/// by `j − p` columns, so all of them are one contiguous run of the image in which only the
/// `|j − p|` columns that wrap around a row edge are wrong (they read padding). One copy per
/// patch row instead of one per output row: the short copies cost a third of a width-0.25
/// resnet18 step.
fn reads_contiguous_runs(geometry: &ConvGeometry) -> bool {
    geometry.stride == 1
        && geometry.width_out() == geometry.width
        && geometry.padding < geometry.width
}

/// One patch row's contiguous run of the image (see [`reads_contiguous_runs`]): its output
/// rows that read inside the image, `[rows, W]` row-major.
struct ContiguousRun {
    /// The patch row `(c, i, j)`.
    row: usize,
    /// The output rows that read inside the image.
    rows: std::ops::Range<usize>,
    /// The image index read by element `skip_front` of the rows; element `e` in
    /// `skip_front..rows.len()·W − skip_back` reads `image[image_start + e − skip_front]`.
    image_start: usize,
    /// Wrapped columns at the front (`p − j`) and back (`j − p`) of every output row.
    skip_front: usize,
    skip_back: usize,
}

impl ContiguousRun {
    /// The elements that read the image, and where the first of them reads.
    fn run(&self, width: usize) -> (std::ops::Range<usize>, usize) {
        let len = self.rows.len() * width;
        (self.skip_front..len - self.skip_back, self.image_start)
    }

    /// Zeroes the wrapped columns of the run's rows (`[rows, W]` row-major).
    fn zero_wrapped(&self, rows: &mut [f32], width: usize) {
        for out_row in rows.chunks_exact_mut(width) {
            out_row[..self.skip_front].fill(0.0);
            out_row[width - self.skip_back..].fill(0.0);
        }
    }
}

/// Calls `visit` with the contiguous run of every patch row of a convolution that
/// [`reads_contiguous_runs`].
fn for_each_contiguous_run(geometry: &ConvGeometry, mut visit: impl FnMut(ContiguousRun)) {
    let ConvGeometry {
        height,
        width,
        padding,
        ..
    } = *geometry;
    let height_out = geometry.height_out();
    for row in 0..geometry.patch_rows() {
        let (channel, i, j) = geometry.patch_row(row);
        let rows = geometry.inside(i, height, height_out);
        let start = if rows.is_empty() {
            0
        } else {
            (channel * height + rows.start + i - padding) * width + j.max(padding) - padding
        };
        visit(ContiguousRun {
            row,
            rows,
            image_start: start,
            skip_front: padding.saturating_sub(j),
            skip_back: j.saturating_sub(padding),
        });
    }
}

/// [`PatchLayout::unroll`] of a convolution that [`reads_contiguous_runs`]: one copy per patch row.
fn unroll_contiguous(
    geometry: &ConvGeometry,
    image: &[f32],
    col: &mut [f32],
    row_len: usize,
    first_column: usize,
) {
    let width = geometry.width;
    let positions = geometry.positions();
    for_each_contiguous_run(geometry, |patch| {
        let out = &mut col[patch.row * row_len + first_column..][..positions];
        out[..patch.rows.start * width].fill(0.0);
        out[patch.rows.end * width..].fill(0.0);
        if patch.rows.is_empty() {
            return;
        }
        let out = &mut out[patch.rows.start * width..patch.rows.end * width];
        let (run, start) = patch.run(width);
        out[run.clone()].copy_from_slice(&image[start..start + run.len()]);
        patch.zero_wrapped(out, width);
    });
}

/// [`PatchLayout::fold`] of a convolution that [`reads_contiguous_runs`]: the wrapped columns of
/// `col` (gradients of padding reads, which are dropped) are zeroed, then each patch row is one
/// contiguous addition.
fn fold_contiguous(
    geometry: &ConvGeometry,
    col: &mut [f32],
    row_len: usize,
    first_column: usize,
    image: &mut [f32],
) {
    let width = geometry.width;
    for_each_contiguous_run(geometry, |patch| {
        if patch.rows.is_empty() {
            return;
        }
        let values = &mut col[patch.row * row_len + first_column..]
            [patch.rows.start * width..patch.rows.end * width];
        patch.zero_wrapped(values, width);
        let (run, start) = patch.run(width);
        let target = &mut image[start..start + run.len()];
        target
            .iter_mut()
            .zip(&values[run])
            .for_each(|(t, v)| *t += v);
    });
}

thread_local! {
    /// Each thread's two scratch buffers (unrolled patches, and gathered gradients or a
    /// product), kept between calls so that the kernels neither allocate nor zero them per
    /// chunk (measured: zeroing fresh buffers was 9 % of a resnet18 step). Nothing is read
    /// from them that the same chunk did not write.
    static SCRATCH: RefCell<[Vec<f32>; 2]> = const { RefCell::new([Vec::new(), Vec::new()]) };
}

/// Runs `f` on this thread's scratch buffers, cut to `lens` (grown if shorter; the values are
/// what earlier chunks left there). `f` must not start rayon work of its own.
fn with_scratch<R>(lens: [usize; 2], f: impl FnOnce(&mut [f32], &mut [f32]) -> R) -> R {
    SCRATCH.with(|scratch| {
        let mut buffers = scratch.borrow_mut();
        for (buffer, &len) in buffers.iter_mut().zip(&lens) {
            if buffer.len() < len {
                buffer.resize(len, 0.0);
            }
        }
        let [first, second] = &mut *buffers;
        f(&mut first[..lens[0]], &mut second[..lens[1]])
    })
}

/// The smallest map (output positions) on which a 1×1 convolution multiplies each image in
/// place rather than copying several side by side (see [`ConvGeometry::is_pointwise`]).
const POINTWISE_MIN_POSITIONS: usize = 256;

/// The most bytes of unrolled patches a thread builds before multiplying them: a few images'
/// worth, so that each GEMM has a long inner dimension but its operands stay in cache: half of
/// a core's L2 on the machines we measure (1 MiB per core). 512 KiB ran width-0.25
/// resnet18 / vgg11 / resnet50 steps 7–10 % faster than 2 MiB on two threads (and 0–8 % on
/// one); 256 KiB was no faster.
const CHUNK_BYTES: usize = 512 << 10;

/// The fewest output positions (images × positions per image) a chunk's GEMM multiplies,
/// even if its patches then exceed [`CHUNK_BYTES`]: `gemm` runs that dimension through
/// micro-kernels 64 rows tall, and one 4×4 image (16 positions) per GEMM, the wide channels'
/// lot (512 channels at width 1: 295 KiB of patches per image), left it to the 16-row edge
/// kernel, a third as fast.
const MIN_CHUNK_POSITIONS: usize = 64;

impl ConvGeometry {
    /// Values of one input image (`C·H·W`).
    fn image_len(&self) -> usize {
        self.channels_in * self.height * self.width
    }

    /// Values of one output image (`OC·OH·OW`).
    fn output_len(&self) -> usize {
        self.channels_out * self.positions()
    }

    /// Checks that operand `what` holds `expected` values (a broken invariant of the caller
    /// otherwise).
    fn check_len(&self, what: &str, values: &[f32], expected: usize) {
        assert_eq!(values.len(), expected, "{what} of {self:?}");
    }

    /// Images unrolled together for one GEMM: as many as fit [`CHUNK_BYTES`], but no more than
    /// an even share of the batch between the current pool's threads, and a size whose chunks
    /// the threads can share evenly.
    fn images_per_chunk(&self) -> usize {
        self.chunk_images(4 * self.patch_rows() * self.positions(), self.positions())
    }

    /// [`ConvGeometry::images_per_chunk`] for images of `col_bytes` unrolled patches over
    /// `positions` output positions each.
    fn chunk_images(&self, col_bytes: usize, positions: usize) -> usize {
        let threads = rayon::current_num_threads().max(1);
        let fewest = MIN_CHUNK_POSITIONS.div_ceil(positions.max(1));
        let most = (CHUNK_BYTES / col_bytes.max(1))
            .max(fewest)
            .clamp(1, self.batch.div_ceil(threads).max(1));
        if threads == 1 {
            // Nothing to share: the largest chunk.
            return most;
        }
        // The size whose chunks the threads share most evenly: the fewest images on the
        // busiest thread, larger chunks first among equals (64 images on 2 threads with room
        // for 7 per chunk: chunks of 4, 32 images each, rather than 35 and 29 with chunks of 7).
        (1..=most)
            .rev()
            .min_by_key(|&size| self.batch.div_ceil(size).div_ceil(threads) * size)
            .unwrap_or(1)
    }

    /// Unrolls the patches of images `start..start + count` of `x` side by side into `col`
    /// (`[C·k·k, count·OH·OW]`).
    fn unroll_chunk(
        &self,
        layout: &PatchLayout,
        x: &[f32],
        start: usize,
        count: usize,
        col: &mut [f32],
    ) {
        let (image_len, positions) = (self.image_len(), self.positions());
        for i in 0..count {
            let image = &x[(start + i) * image_len..][..image_len];
            layout.unroll(self, image, col, count * positions, i * positions);
        }
    }

    /// Copies the output-shaped values (`[B, OC, OH·OW]`) of images `start..start + count`
    /// into `chunk` as `[OC, count·OH·OW]`, images side by side.
    fn gather_outputs(&self, values: &[f32], start: usize, count: usize, chunk: &mut [f32]) {
        let (output_len, positions) = (self.output_len(), self.positions());
        let columns = count * positions;
        for i in 0..count {
            let image = &values[(start + i) * output_len..][..output_len];
            for (o, row) in image.chunks_exact(positions).enumerate() {
                chunk[o * columns + i * positions..][..positions].copy_from_slice(row);
            }
        }
    }
}

/// The forward `W ⊛ x + b` of a convolution with input `x` (`[B, C, H, W]`), weight
/// (`[OC, C, k, k]`) and optional bias (`[OC]`), flattened row-major; `[B, OC, OH, OW]`
/// flattened. Runs on the current rayon pool: chunks of images are split between its threads.
///
/// # Panics
/// If the slice lengths do not match `geometry` (a broken invariant of the caller).
pub(crate) fn conv2d_forward(
    geometry: &ConvGeometry,
    x: &[f32],
    weight: &[f32],
    bias: Option<&[f32]>,
) -> Vec<f32> {
    geometry.check_len("input", x, geometry.batch * geometry.image_len());
    geometry.check_len(
        "weight",
        weight,
        geometry.channels_out * geometry.patch_rows(),
    );
    if geometry.multiplies_dense() {
        return dense::forward(geometry, x, weight, bias);
    }
    if geometry.skips_padding() {
        return valid_taps::forward(geometry, x, weight, bias);
    }
    if geometry.multiplies_directly() {
        return direct::forward(geometry, x, weight, bias);
    }
    forward_by_patches(geometry, x, weight, bias)
}

/// [`conv2d_forward`] through the unrolled patches (any geometry).
fn forward_by_patches(
    geometry: &ConvGeometry,
    x: &[f32],
    weight: &[f32],
    bias: Option<&[f32]>,
) -> Vec<f32> {
    let (rows, positions, output_len) = (
        geometry.patch_rows(),
        geometry.positions(),
        geometry.output_len(),
    );
    let len = geometry.batch * output_len;
    if geometry.is_pointwise() {
        // `y_b = W · x_b`, each image's output written in place.
        let image_len = geometry.image_len();
        return fill_chunks(len, output_len, |b, y| {
            gemm_into(
                y,
                (geometry.channels_out, positions, rows),
                Operand::rows(weight, rows),
                Operand::rows(&x[b * image_len..][..image_len], positions),
                false,
            );
            if let Some(bias) = bias {
                for (row, b) in y.chunks_exact_mut(positions).zip(bias) {
                    row.iter_mut().for_each(|v| *v += b);
                }
            }
        });
    }
    let chunk = geometry.images_per_chunk();
    let layout = PatchLayout::new(geometry);
    fill_chunks(len, output_len * chunk, |index, out_chunk| {
        let count = out_chunk.len() / output_len;
        let columns = count * positions;
        with_scratch(
            [rows * columns, geometry.channels_out * columns],
            |col, product| {
                geometry.unroll_chunk(&layout, x, index * chunk, count, col);
                gemm_into(
                    product,
                    (geometry.channels_out, columns, rows),
                    Operand::rows(weight, rows),
                    Operand::rows(col, columns),
                    false,
                );
                for (i, image) in out_chunk.chunks_exact_mut(output_len).enumerate() {
                    for (o, row) in image.chunks_exact_mut(positions).enumerate() {
                        row.copy_from_slice(&product[o * columns + i * positions..][..positions]);
                        if let Some(bias) = bias {
                            row.iter_mut().for_each(|v| *v += bias[o]);
                        }
                    }
                }
            },
        );
    })
}

/// `∂x` (`[B, C, H, W]` flattened) of a convolution with weight `[OC, C, k, k]` for the output
/// gradient `g` (`[B, OC, OH, OW]`): per chunk of images `Wᵀ·g` gives the gradient of every
/// unrolled patch, which is folded back onto the positions it was read from. Runs on the
/// current rayon pool: chunks of images are split between its threads.
///
/// # Panics
/// If the slice lengths do not match `geometry` (a broken invariant of the caller).
pub(crate) fn conv2d_input_grad(geometry: &ConvGeometry, weight: &[f32], g: &[f32]) -> Vec<f32> {
    geometry.check_len(
        "weight",
        weight,
        geometry.channels_out * geometry.patch_rows(),
    );
    geometry.check_len("output gradient", g, geometry.batch * geometry.output_len());
    if geometry.multiplies_dense() {
        return dense::input_grad(geometry, weight, g);
    }
    if geometry.skips_padding() {
        return valid_taps::input_grad(geometry, weight, g);
    }
    if geometry.input_grad_directly() {
        return direct::input_grad(geometry, weight, g);
    }
    input_grad_by_patches(geometry, weight, g)
}

/// [`conv2d_input_grad`] through the unrolled patches (any geometry).
fn input_grad_by_patches(geometry: &ConvGeometry, weight: &[f32], g: &[f32]) -> Vec<f32> {
    let (rows, positions, image_len) = (
        geometry.patch_rows(),
        geometry.positions(),
        geometry.image_len(),
    );
    let len = geometry.batch * image_len;
    if geometry.is_pointwise() {
        // `∂x_b = Wᵀ · g_b`: the patches' gradient is the image's, nothing to fold.
        let output_len = geometry.output_len();
        return fill_chunks(len, image_len, |b, dx_image| {
            gemm_into(
                dx_image,
                (rows, positions, geometry.channels_out),
                Operand::transposed(weight, rows),
                Operand::rows(&g[b * output_len..][..output_len], positions),
                false,
            );
        });
    }
    let chunk = geometry.images_per_chunk();
    let layout = PatchLayout::new(geometry);
    fill_chunks(len, image_len * chunk, |index, dx_chunk| {
        let count = dx_chunk.len() / image_len;
        let columns = count * positions;
        with_scratch(
            [rows * columns, geometry.channels_out * columns],
            |col, g_chunk| {
                geometry.gather_outputs(g, index * chunk, count, g_chunk);
                gemm_into(
                    col,
                    (rows, columns, geometry.channels_out),
                    Operand::transposed(weight, rows),
                    Operand::rows(g_chunk, columns),
                    false,
                );
                for (i, image) in dx_chunk.chunks_exact_mut(image_len).enumerate() {
                    layout.fold(geometry, col, columns, i * positions, image);
                }
            },
        );
    })
}

/// `∂W` (`[OC, C, k, k]` flattened) of a convolution with input `x` (`[B, C, H, W]`) and
/// output gradient `g` (`[B, OC, OH, OW]`), both flattened row-major: `Σ col · g_chunkᵀ` over
/// chunks of images, summed as `∂Wᵀ` (`[C·k·k, OC]`) and transposed at the end. Runs on the
/// current rayon pool: each thread sums the chunks of its share of the images, and the partial
/// sums are added at the end.
///
/// Why transposed: `gemm` computes a row-major product as its transpose and packs the left
/// operand of that into panels of 16 rows. For `∂W` that operand would be the unrolled patches
/// (`C·k·k` rows of a whole chunk's positions), gathered value by value; for `∂Wᵀ` it is the
/// output gradient, `OC` rows (one ninth of the values for a 3×3 convolution with as many
/// outputs as inputs). The products of a width-0.25 ResNet-18 take 2–2.7× less time so.
///
/// # Panics
/// If the slice lengths do not match `geometry` (a broken invariant of the caller).
pub(crate) fn conv2d_weight_grad(geometry: &ConvGeometry, x: &[f32], g: &[f32]) -> Vec<f32> {
    geometry.check_len("input", x, geometry.batch * geometry.image_len());
    geometry.check_len("output gradient", g, geometry.batch * geometry.output_len());
    if geometry.multiplies_dense() {
        return dense::weight_grad(geometry, x, g);
    }
    if geometry.skips_padding() {
        return valid_taps::weight_grad(geometry, x, g);
    }
    if geometry.multiplies_directly() {
        return direct::weight_grad(geometry, x, g);
    }
    weight_grad_by_patches(geometry, x, g)
}

/// [`conv2d_weight_grad`] through the unrolled patches (any geometry).
fn weight_grad_by_patches(geometry: &ConvGeometry, x: &[f32], g: &[f32]) -> Vec<f32> {
    let (rows, positions, channels_out) = (
        geometry.patch_rows(),
        geometry.positions(),
        geometry.channels_out,
    );
    let grad_len = channels_out * rows;
    let chunk = geometry.images_per_chunk();
    let layout = (!geometry.is_pointwise()).then(|| PatchLayout::new(geometry));
    // Whether to sum `∂W` itself: `gemm` packs the patches then instead of the output
    // gradient, so where they have fewer rows (a first layer: 27 patch rows for 64 outputs)
    // it transposes fewer values (the weight gradient of a 3-to-64-channel 3×3 convolution on
    // 32×32 images took 8.5 ms as `∂Wᵀ`, most of it packing).
    let direct = layout.is_some() && rows < channels_out;
    // `∂Wᵀ` (`∂W` if `direct`) summed over `images`.
    let partial = |images: std::ops::Range<usize>| {
        let mut grad = vec![0.0; grad_len];
        let Some(layout) = &layout else {
            // `Σ_b x_b · g_bᵀ` with each image read in place.
            let (image_len, output_len) = (geometry.image_len(), geometry.output_len());
            for b in images {
                gemm_into(
                    &mut grad,
                    (rows, channels_out, positions),
                    Operand::rows(&x[b * image_len..][..image_len], positions),
                    Operand::transposed(&g[b * output_len..][..output_len], positions),
                    true,
                );
            }
            return grad;
        };
        let lens = [rows * positions * chunk, channels_out * positions * chunk];
        with_scratch(lens, |col, g_chunk| {
            let mut start = images.start;
            while start < images.end {
                let count = chunk.min(images.end - start);
                let columns = count * positions;
                geometry.unroll_chunk(layout, x, start, count, col);
                geometry.gather_outputs(g, start, count, g_chunk);
                let (patches, gradients) =
                    (Operand::rows(col, columns), Operand::rows(g_chunk, columns));
                let (shape, lhs, rhs) = if direct {
                    ((channels_out, rows, columns), gradients, patches.t())
                } else {
                    ((rows, channels_out, columns), patches, gradients.t())
                };
                gemm_into(&mut grad, shape, lhs, rhs, true);
                start += count;
            }
        });
        grad
    };
    let grad = summed_over_threads(geometry.batch, grad_len, partial);
    if direct {
        return grad;
    }
    transpose(&grad, rows, channels_out)
}

/// `partial(images)` summed over an even split of `0..batch` between the current pool's
/// threads (`len` values each; zeros for an empty batch). The partial sums are added in thread
/// order, so the result does not depend on how rayon scheduled the work (runs stay
/// bit-identical across transports and repetitions).
fn summed_over_threads(
    batch: usize,
    len: usize,
    partial: impl Fn(std::ops::Range<usize>) -> Vec<f32> + Sync,
) -> Vec<f32> {
    let threads = rayon::current_num_threads().clamp(1, batch.max(1));
    if threads == 1 {
        return partial(0..batch);
    }
    let images_per_thread = batch.div_ceil(threads);
    let partials: Vec<Vec<f32>> = (0..threads)
        .into_par_iter()
        .map(|t| partial(t * images_per_thread..((t + 1) * images_per_thread).min(batch)))
        .collect();
    let mut partials = partials.into_iter();
    let mut sum = partials.next().unwrap_or_else(|| vec![0.0; len]);
    for part in partials {
        sum.iter_mut().zip(&part).for_each(|(s, p)| *s += p);
    }
    sum
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel_test_support::{assert_near, pool, pseudo_random as values};

    /// Calls `visit(x_index, w_index, y_index)` for every product `x[b, c, ih, iw] ·
    /// w[o, c, i, j]` that output `y[b, o, oh, ow]` sums, `(ih, iw) = (oh·s + i − p, ow·s + j − p)`
    /// inside the image: the definition all three kernels are checked against.
    fn for_each_product(geometry: &ConvGeometry, mut visit: impl FnMut(usize, usize, usize)) {
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
        for b in 0..batch {
            for o in 0..channels_out {
                for c in 0..channels_in {
                    for i in 0..kernel {
                        for j in 0..kernel {
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
                                    visit(
                                        ((b * channels_in + c) * height + ih - padding) * width
                                            + iw
                                            - padding,
                                        ((o * channels_in + c) * kernel + i) * kernel + j,
                                        ((b * channels_out + o) * height_out + oh) * width_out + ow,
                                    );
                                }
                            }
                        }
                    }
                }
            }
        }
    }

    fn check(geometry: ConvGeometry) {
        let x = values(geometry.batch * geometry.image_len(), 1);
        let g = values(geometry.batch * geometry.output_len(), 2);
        let weight = values(geometry.channels_out * geometry.patch_rows(), 3);
        let bias = values(geometry.channels_out, 4);
        let mut output = vec![0.0f64; g.len()];
        for (k, value) in output.iter_mut().enumerate() {
            *value = f64::from(bias[k / geometry.positions() % geometry.channels_out]);
        }
        let mut input_grad = vec![0.0f64; x.len()];
        let mut weight_grad = vec![0.0f64; weight.len()];
        for_each_product(&geometry, |xi, wi, yi| {
            output[yi] += f64::from(weight[wi]) * f64::from(x[xi]);
            input_grad[xi] += f64::from(weight[wi]) * f64::from(g[yi]);
            weight_grad[wi] += f64::from(x[xi]) * f64::from(g[yi]);
        });
        // 2 threads leave one thread a shorter last chunk than its buffer holds.
        for threads in [1, 2, 3, 4] {
            let what = |kernel: &str| format!("{kernel} of {geometry:?}, {threads} threads");
            pool(threads).install(|| {
                // The default dispatch; the patches, which serve any geometry; the
                // padding-free classes, which serve any map (the default picks one of these or
                // the dense matrix).
                type Forward = fn(&ConvGeometry, &[f32], &[f32], Option<&[f32]>) -> Vec<f32>;
                type InputGrad = fn(&ConvGeometry, &[f32], &[f32]) -> Vec<f32>;
                type WeightGrad = fn(&ConvGeometry, &[f32], &[f32]) -> Vec<f32>;
                let mut paths: Vec<(&str, Forward, InputGrad, WeightGrad)> = vec![
                    ("", conv2d_forward, conv2d_input_grad, conv2d_weight_grad),
                    (
                        " by patches",
                        forward_by_patches,
                        input_grad_by_patches,
                        weight_grad_by_patches,
                    ),
                    (
                        " by tap classes",
                        valid_taps::forward,
                        valid_taps::input_grad,
                        valid_taps::weight_grad,
                    ),
                ];
                // Direct products serve stride 1 with padding narrower than the kernel, for
                // any number of channels.
                if geometry.stride == 1 && geometry.padding < geometry.kernel {
                    paths.push((
                        " directly",
                        direct::forward,
                        direct::input_grad,
                        direct::weight_grad,
                    ));
                }
                for (path, forward, input_grad_of, weight_grad_of) in paths {
                    let got = forward(&geometry, &x, &weight, Some(&bias));
                    assert_near(&what(&format!("forward{path}")), &got, &output);
                    let got = input_grad_of(&geometry, &weight, &g);
                    assert_near(&what(&format!("input gradient{path}")), &got, &input_grad);
                    let got = weight_grad_of(&geometry, &x, &g);
                    assert_near(&what(&format!("weight gradient{path}")), &got, &weight_grad);
                }
            });
        }
    }

    /// Geometries with odd shapes, strides and padding, covering every [`PatchLayout`] and the
    /// in-place 1×1 path.
    fn odd_geometries() -> Vec<ConvGeometry> {
        let mut geometries = Vec::new();
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
        geometries.push(base);
        // Stride 2 with even and odd sizes (the far edge drops a row or a column).
        geometries.push(ConvGeometry { stride: 2, ..base });
        geometries.push(ConvGeometry {
            stride: 2,
            height: 8,
            width: 6,
            ..base
        });
        // No padding, a large kernel, one image, a 1×1 kernel, padding larger than a stride.
        geometries.push(ConvGeometry {
            padding: 0,
            kernel: 5,
            height: 9,
            width: 11,
            ..base
        });
        geometries.push(ConvGeometry { batch: 1, ..base });
        geometries.push(ConvGeometry {
            kernel: 1,
            padding: 0,
            ..base
        });
        geometries.push(ConvGeometry {
            kernel: 5,
            padding: 2,
            stride: 3,
            height: 10,
            width: 13,
            ..base
        });
        // More threads than images; a 1×1 strided projection.
        geometries.push(ConvGeometry { batch: 2, ..base });
        // "Same" convolutions (the contiguous unroll): 5×5 with padding 2, one row, one column.
        geometries.push(ConvGeometry {
            kernel: 5,
            padding: 2,
            ..base
        });
        geometries.push(ConvGeometry {
            height: 1,
            width: 6,
            ..base
        });
        geometries.push(ConvGeometry {
            height: 4,
            width: 1,
            ..base
        });
        // Padding as wide as the image: the general unroll.
        geometries.push(ConvGeometry {
            kernel: 5,
            padding: 2,
            height: 3,
            width: 2,
            ..base
        });
        geometries.push(ConvGeometry {
            kernel: 1,
            padding: 0,
            stride: 2,
            height: 6,
            width: 7,
            ..base
        });
        // A 1×1 convolution on a map large enough to multiply each image in place.
        let pointwise = ConvGeometry {
            kernel: 1,
            padding: 0,
            height: 16,
            width: 17,
            ..base
        };
        assert!(pointwise.is_pointwise());
        geometries.push(pointwise);
        // AlexNet's 5×5 kernels on 4×4 maps: fewer multiply-adds by tap classes than by the
        // dense matrix, whatever the batch.
        let five_on_four = ConvGeometry {
            batch: 64,
            height: 4,
            width: 4,
            kernel: 5,
            padding: 2,
            ..base
        };
        assert!(five_on_four.skips_padding() && !five_on_four.multiplies_dense());
        geometries.push(five_on_four);
        // Maps with fewer positions than the kernel has taps and batches just large enough
        // for the dense matrix (every output position reads the whole map): AlexNet's 3×3
        // kernels on 2×2 maps, a 5×5 kernel with a stride of 2 on a 2×3 map, a 1×1 output,
        // 2 input channels on 4 threads (fewer shares than threads).
        let small_maps = [
            ConvGeometry {
                batch: 26,
                height: 2,
                width: 2,
                ..base
            },
            ConvGeometry {
                batch: 11,
                height: 2,
                width: 3,
                kernel: 5,
                padding: 2,
                stride: 2,
                ..base
            },
            ConvGeometry {
                batch: 26,
                height: 2,
                width: 2,
                stride: 2,
                ..base
            },
            ConvGeometry {
                batch: 10,
                height: 1,
                width: 2,
                ..base
            },
        ];
        for geometry in small_maps {
            assert!(geometry.multiplies_dense(), "{geometry:?}");
            let smaller_batch = ConvGeometry {
                batch: geometry.batch - 1,
                ..geometry
            };
            assert!(!smaller_batch.multiplies_dense(), "{smaller_batch:?}");
            geometries.push(geometry);
            geometries.push(smaller_batch);
        }
        // Rows wide enough to copy (no padding, stride 1).
        geometries.push(ConvGeometry {
            padding: 0,
            height: 5,
            width: 15,
            ..base
        });
        geometries
    }

    #[test]
    fn chunks_are_shared_evenly_between_threads() {
        // A 3×3 convolution of 128 channels on a 4×4 map: 7 images' patches fit a chunk.
        let geometry = ConvGeometry {
            batch: 64,
            channels_in: 128,
            height: 4,
            width: 4,
            channels_out: 128,
            kernel: 3,
            stride: 1,
            padding: 1,
        };
        let chunk_on = |threads| pool(threads).install(|| geometry.images_per_chunk());
        assert_eq!(chunk_on(1), 7);
        assert_eq!(chunk_on(2), 4);
        // 22 images on the busiest thread in chunks of 2, against 28 in chunks of 7.
        assert_eq!(chunk_on(3), 2);
    }

    #[test]
    fn the_kernels_equal_the_definition_on_odd_shapes() {
        for geometry in odd_geometries() {
            check(geometry);
        }
    }

    /// Every layout that applies to a geometry unrolls an image into what the definition reads
    /// and folds patch values back onto the positions they were read from.
    #[test]
    fn every_patch_layout_unrolls_and_folds_by_the_definition() {
        let mut chosen = Vec::new();
        for geometry in odd_geometries() {
            let one_image = ConvGeometry {
                batch: 1,
                channels_out: 1,
                ..geometry
            };
            if one_image.is_pointwise() {
                continue;
            }
            let image = values(one_image.image_len(), 5);
            let col_values = values(one_image.patch_rows() * one_image.positions(), 6);
            let mut unrolled = vec![0.0f64; col_values.len()];
            let mut folded = vec![0.0f64; image.len()];
            // With one image and one output channel, the weight index is the patch row and the
            // output index the position.
            for_each_product(&one_image, |xi, row, position| {
                let k = row * one_image.positions() + position;
                unrolled[k] = f64::from(image[xi]);
                folded[xi] += f64::from(col_values[k]);
            });
            chosen.push(std::mem::discriminant(&PatchLayout::new(&one_image)));
            let mut layouts = vec![PatchLayout::Rows, PatchLayout::table(&one_image)];
            if reads_contiguous_runs(&one_image) {
                layouts.push(PatchLayout::Contiguous);
            }
            // Two images side by side in `col`: this one's columns are the second half.
            let (positions, row_len) = (one_image.positions(), 2 * one_image.positions());
            for layout in &layouts {
                let what = |pass: &str| format!("{pass} of {one_image:?} by {layout:?}");
                let mut col = vec![f32::NAN; one_image.patch_rows() * row_len];
                layout.unroll(&one_image, &image, &mut col, row_len, positions);
                let got: Vec<f32> = col
                    .chunks_exact(row_len)
                    .flat_map(|row| row[positions..].iter().copied())
                    .collect();
                assert_near(&what("unroll"), &got, &unrolled);
                for (row, values) in col
                    .chunks_exact_mut(row_len)
                    .zip(col_values.chunks_exact(positions))
                {
                    row[positions..].copy_from_slice(values);
                }
                let mut got = vec![0.0f32; image.len()];
                layout.fold(&one_image, &mut col, row_len, positions, &mut got);
                assert_near(&what("fold"), &got, &folded);
            }
        }
        for layout in [
            PatchLayout::Contiguous,
            PatchLayout::Rows,
            PatchLayout::Table(Vec::new()),
        ] {
            assert!(
                chosen.contains(&std::mem::discriminant(&layout)),
                "no geometry takes {layout:?}"
            );
        }
    }
}
