//! 2-D max pooling and its backward, on plain `f32` slices.
//!
//! Why it exists: burn's max pooling always computes the argmax indices too (its plain forward
//! calls the one with indices: 8–10 % of a vgg11 step), and its VJP needs them from a forward
//! with indices, which recomputing through burn cost 17 % of a lenet5 step. Here the forward
//! keeps only the maxima, and the backward finds each window's argmax again while it routes
//! the gradient, in one pass over the input. Both take the first maximum in row-major window
//! order (a NaN wins, so it propagates), as burn and PyTorch do, and skip positions in the
//! padding (they hold −∞ there). The layout is NCHW, as burn's.

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
fn beats(value: f32, best: f32) -> bool {
    value > best || (value.is_nan() && !best.is_nan())
}

/// Calls `visit(output_index, argmax)` for every window of one plane (`[height, width]`): the
/// plane index of its first maximum.
fn for_each_argmax(geometry: &PoolGeometry, plane: &[f32], mut visit: impl FnMut(usize, usize)) {
    let (height_out, width_out) = (
        geometry.output(geometry.height),
        geometry.output(geometry.width),
    );
    let width = geometry.width;
    if geometry.kernel == 2 && geometry.stride == 2 && geometry.padding == 0 {
        // The zoo's pooling (2×2 windows side by side): each window's four positions in
        // row-major order, without the general path's window ranges (measured: the general
        // path was 15 % of a width-0.25 vgg11 step).
        for oh in 0..height_out {
            let (top, bottom) = plane[2 * oh * width..].split_at(width);
            let offset = 2 * oh * width;
            for ow in 0..width_out {
                let at = 2 * ow;
                let mut best = offset + at;
                let mut best_value = top[at];
                for (candidate, value) in [
                    (offset + at + 1, top[at + 1]),
                    (offset + width + at, bottom[at]),
                    (offset + width + at + 1, bottom[at + 1]),
                ] {
                    if beats(value, best_value) {
                        (best, best_value) = (candidate, value);
                    }
                }
                visit(oh * width_out + ow, best);
            }
        }
        return;
    }
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
        for_each_argmax(geometry, x, |at, best| out[at] = x[best]);
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
        for_each_argmax(geometry, x, |at, best| dx[best] += g[at]);
    })
}

#[cfg(test)]
mod tests {
    use burn::tensor::module::max_pool2d;
    use burn::tensor::ops::MaxPoolOptions;

    use super::*;
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
}
