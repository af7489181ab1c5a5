//! 2-D max pooling and its backward, on plain `f32` slices.
//!
//! Why it exists: burn's max pooling always computes the argmax indices too (its plain forward
//! calls the one with indices: 8–10 % of a vgg11 step), and its VJP needs them from a forward
//! with indices, which recomputing through burn cost 17 % of a lenet5 step. Here the forward
//! keeps only the maxima, and the backward finds each window's argmax again while it routes
//! the gradient, in one pass over the input. Both take the first maximum in row-major window
//! order (a NaN wins, so it propagates), as burn and PyTorch do, and skip positions in the
//! padding (they hold −∞ there). The layout is NCHW, as burn's.

use pulp::{Arch, Simd, WithSimd};

use crate::block::window_output;
use crate::tensor::fill_chunks;

/// The geometry of a square pooling window, the same stride and padding in both directions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct PoolGeometry {
    /// Input height.
    pub height: usize,
    /// Input width.
    pub width: usize,
    /// Window size (k×k).
    pub kernel: usize,
    /// Stride.
    pub stride: usize,
    /// Padding on every side.
    pub padding: usize,
}

impl PoolGeometry {
    /// The input positions `start..end` that window `index` covers along a side of `size`.
    fn window(&self, index: usize, size: usize) -> std::ops::Range<usize> {
        let start = index * self.stride;
        start.saturating_sub(self.padding)..(start + self.kernel - self.padding).min(size)
    }

    /// Output size along a side of `size` (the geometry comes from a checked block).
    fn output(&self, size: usize) -> usize {
        window_output(size, self.kernel, self.stride, self.padding)
            .unwrap_or_else(|| panic!("a pooling window that does not fit: {self:?}"))
    }

    /// Values of one input plane and of one output plane; checks that `x` holds whole planes.
    fn plane_lens(&self, x: &[f32]) -> (usize, usize) {
        let plane_in = self.height * self.width;
        assert!(
            plane_in > 0 && x.len().is_multiple_of(plane_in),
            "max-pool input of {} values for {self:?}",
            x.len()
        );
        (plane_in, self.output(self.height) * self.output(self.width))
    }
}

/// Whether `value` takes the place of the window's maximum so far, `best`: it is larger, or the
/// first NaN (a NaN wins, so it propagates).
#[inline(always)]
fn beats(value: f32, best: f32) -> bool {
    // `|` and `&`, not `||` and `&&`: no branches, so that the comparisons of the 2×2
    // loop become selects.
    (value > best) | (value.is_nan() & !best.is_nan())
}

/// Calls `visit(output_index, argmax)` for every window of one plane (`[height, width]`): the
/// plane index of its first maximum.
fn for_each_argmax(geometry: &PoolGeometry, plane: &[f32], mut visit: impl FnMut(usize, usize)) {
    let (height_out, width_out) = (
        geometry.output(geometry.height),
        geometry.output(geometry.width),
    );
    let width = geometry.width;
    for oh in 0..height_out {
        let rows = geometry.window(oh, geometry.height);
        for ow in 0..width_out {
            let columns = geometry.window(ow, geometry.width);
            let mut best = rows.start * width + columns.start;
            for ih in rows.clone() {
                let row_start = ih * width + columns.start;
                for (at, &value) in plane[row_start..][..columns.len()].iter().enumerate() {
                    if beats(value, plane[best]) {
                        best = row_start + at;
                    }
                }
            }
            visit(oh * width_out + ow, best);
        }
    }
}

/// Max pooling of `x` (`[planes, height, width]` flattened, a plane per image and channel):
/// `[planes, height_out, width_out]` flattened. Runs on the current rayon pool (planes split
/// between its threads).
///
/// # Panics
/// If the length of `x` does not match `geometry` (a broken invariant of the caller).
pub(crate) fn max_pool_forward(geometry: &PoolGeometry, x: &[f32]) -> Vec<f32> {
    let (plane_in, plane_out) = geometry.plane_lens(x);
    fill_chunks(x.len() / plane_in * plane_out, plane_out, |plane, out| {
        let x = &x[plane * plane_in..][..plane_in];
        pool_plane(geometry, x, PoolPass::Forward { out });
    })
}

/// `∂x` of max pooling `x` (`[planes, height, width]` flattened) for the output gradient `g`
/// (`[planes, height_out, width_out]`): each output's gradient goes to its window's first
/// maximum. Runs on the current rayon pool (planes split between its threads).
///
/// # Panics
/// If the slice lengths do not match `geometry` (a broken invariant of the caller).
pub(crate) fn max_pool_backward(geometry: &PoolGeometry, x: &[f32], g: &[f32]) -> Vec<f32> {
    let (plane_in, plane_out) = geometry.plane_lens(x);
    assert_eq!(
        g.len() / plane_out,
        x.len() / plane_in,
        "max-pool output gradient"
    );
    fill_chunks(x.len(), plane_in, |plane, dx| {
        let x = &x[plane * plane_in..][..plane_in];
        let g = &g[plane * plane_out..][..plane_out];
        pool_plane(geometry, x, PoolPass::Backward { g, dx });
    })
}

/// Pools one plane `x` (`[height, width]`): the 2×2 windows side by side through
/// [`PairedPlane`], any other geometry through [`for_each_argmax`].
fn pool_plane(geometry: &PoolGeometry, x: &[f32], pass: PoolPass<'_>) {
    if geometry.is_pairs() {
        Arch::new().dispatch(PairedPlane { geometry, x, pass });
        return;
    }
    match pass {
        PoolPass::Forward { out } => for_each_argmax(geometry, x, |at, best| out[at] = x[best]),
        PoolPass::Backward { g, dx } => for_each_argmax(geometry, x, |at, best| dx[best] += g[at]),
    }
}

impl PoolGeometry {
    /// Whether the windows are 2×2 side by side with no padding (the zoo's pooling), which
    /// [`PairedPlane`] pools.
    fn is_pairs(&self) -> bool {
        self.kernel == 2 && self.stride == 2 && self.padding == 0
    }
}

/// What pooling a plane computes.
enum PoolPass<'a> {
    /// The maxima, into `out` (`[height_out, width_out]`).
    Forward { out: &'a mut [f32] },
    /// The plane's input gradient `dx` (zeroed; an odd last row or column stays zero) for its
    /// output gradient `g`: each window's gradient goes to its first maximum.
    Backward { g: &'a [f32], dx: &'a mut [f32] },
}

/// One plane of 2×2 pooling with the windows side by side (see [`PoolGeometry::is_pairs`]),
/// as a `pulp` operation: [`pool_pairs`] compiled for the machine's vector extensions. LLVM
/// does not vectorise it across windows, but its selects become single instructions (AVX-512
/// mask moves): a width-0.25 LeNet-5 step ran 1.10× as fast as with the baseline x86-64 build
/// of the same code.
struct PairedPlane<'a> {
    geometry: &'a PoolGeometry,
    /// The input plane (`[height, width]`).
    x: &'a [f32],
    pass: PoolPass<'a>,
}

impl WithSimd for PairedPlane<'_> {
    type Output = ();

    #[inline(always)]
    fn with_simd<S: Simd>(self, _simd: S) {
        pool_pairs(self.geometry, self.x, self.pass);
    }
}

/// One plane `x` (`[height, width]`) of 2×2 pooling with the windows side by side (see
/// [`PoolGeometry::is_pairs`]): each window's four values in row-major order, with neither the
/// general path's window ranges nor branches (the general path was 15 % of a width-0.25 vgg11
/// step; a 2×2 one that branched on each comparison 28 % of a width-0.25 LeNet-5 step, and
/// made the step 1.26× as long as with this one).
#[inline(always)]
fn pool_pairs(geometry: &PoolGeometry, x: &[f32], pass: PoolPass<'_>) {
    let width = geometry.width;
    let width_out = geometry.output(width);
    // Two input rows per output row, cut to the columns the windows cover.
    let row_pairs = x.chunks_exact(2 * width).map(|rows| {
        let (top, bottom) = rows.split_at(width);
        (&top[..2 * width_out], &bottom[..2 * width_out])
    });
    match pass {
        PoolPass::Forward { out } => {
            for ((top, bottom), out) in row_pairs.zip(out.chunks_exact_mut(width_out)) {
                for ((top, bottom), out) in top.chunks_exact(2).zip(bottom.chunks_exact(2)).zip(out)
                {
                    *out = first_maximum([top[0], top[1], bottom[0], bottom[1]]).1;
                }
            }
        }
        PoolPass::Backward { g, dx } => {
            let dx_pairs = dx.chunks_exact_mut(2 * width);
            for (((top, bottom), g), dx) in row_pairs.zip(g.chunks_exact(width_out)).zip(dx_pairs) {
                let (dx_top, dx_bottom) = dx.split_at_mut(width);
                for ((((top, bottom), &g), dx_top), dx_bottom) in top
                    .chunks_exact(2)
                    .zip(bottom.chunks_exact(2))
                    .zip(g)
                    .zip(dx_top.chunks_exact_mut(2))
                    .zip(dx_bottom.chunks_exact_mut(2))
                {
                    let (best, _) = first_maximum([top[0], top[1], bottom[0], bottom[1]]);
                    let routed = |at: usize| if best == at { g } else { 0.0 };
                    (dx_top[0], dx_top[1]) = (routed(0), routed(1));
                    (dx_bottom[0], dx_bottom[1]) = (routed(2), routed(3));
                }
            }
        }
    }
}

/// The index and value of the first maximum of `values` in order (see [`beats`]), by selects
/// rather than branches.
#[inline(always)]
fn first_maximum(values: [f32; 4]) -> (usize, f32) {
    let mut best = (0, values[0]);
    for (at, value) in values.into_iter().enumerate().skip(1) {
        let wins = beats(value, best.1);
        best = (
            if wins { at } else { best.0 },
            if wins { value } else { best.1 },
        );
    }
    best
}

#[cfg(test)]
mod tests {
    use burn::tensor::module::max_pool2d;
    use burn::tensor::ops::MaxPoolOptions;

    use super::*;
    use crate::kernel_test_support::bits;
    use crate::tensor::{tensor2, to_vec};

    #[test]
    fn the_forward_equals_burns_max_pooling_with_padding_ties_and_odd_sizes() {
        for (height, width, kernel, stride, padding) in [
            (7, 6, 3, 2, 1),
            (5, 5, 2, 2, 0),
            (4, 7, 3, 1, 1),
            (6, 6, 2, 3, 0),
            (6, 8, 2, 2, 0),
            (7, 5, 2, 2, 0),
        ] {
            let geometry = PoolGeometry {
                height,
                width,
                kernel,
                stride,
                padding,
            };
            let planes = 3;
            // Few distinct values (ties) and negatives (padding must not win).
            let x: Vec<f32> = (0..planes * height * width)
                .map(|i| ((i * 7 % 5) as f32) - 3.0)
                .collect();
            let expected = max_pool2d(
                tensor2(x.clone(), 1, x.len()).reshape([1, planes, height, width]),
                MaxPoolOptions::new([kernel, kernel])
                    .with_stride([stride, stride])
                    .with_padding([padding, padding]),
            );
            assert_eq!(
                max_pool_forward(&geometry, &x),
                to_vec(&expected),
                "{geometry:?}"
            );
        }
    }

    /// The 2×2 path takes the same first maximum as the general one, in the forward and the
    /// backward: ties, NaNs, signed zeros and −∞, odd sizes (the last row or column dropped).
    #[test]
    fn paired_windows_pool_and_route_as_the_general_path() {
        let specials = [
            0.0,
            -0.0,
            1.0,
            1.0,
            f32::NAN,
            f32::NEG_INFINITY,
            -2.0,
            1.0,
            0.0,
        ];
        for (height, width) in [(6, 8), (7, 5), (9, 34), (2, 2)] {
            let geometry = PoolGeometry {
                height,
                width,
                kernel: 2,
                stride: 2,
                padding: 0,
            };
            assert!(geometry.is_pairs());
            let planes = 3;
            let x: Vec<f32> = (0..planes * height * width)
                .map(|i| specials[(i * 5 + i / 7) % specials.len()])
                .collect();
            let (plane_in, plane_out) = geometry.plane_lens(&x);
            let g: Vec<f32> = (0..planes * plane_out).map(|i| i as f32 + 1.0).collect();
            let mut forward = vec![0.0; planes * plane_out];
            let mut backward = vec![0.0; x.len()];
            for plane in 0..planes {
                let x = &x[plane * plane_in..][..plane_in];
                for_each_argmax(&geometry, x, |at, best| {
                    forward[plane * plane_out + at] = x[best];
                    backward[plane * plane_in + best] += g[plane * plane_out + at];
                });
            }
            let what = format!("{geometry:?}");
            assert_eq!(
                bits(&max_pool_forward(&geometry, &x)),
                bits(&forward),
                "{what}"
            );
            let got = max_pool_backward(&geometry, &x, &g);
            assert_eq!(bits(&got), bits(&backward), "{what}");
        }
    }
}
