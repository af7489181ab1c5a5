//! Element-wise CPU kernels that split their output between the threads of the current rayon
//! pool: the ReLU, its VJP, the sum of a residual block's two paths and the SGD step. They make
//! their outputs with [`fill_chunks`], as every CPU kernel of the crate does.
//!
//! Why not burn's own element-wise operations: they run on the calling thread, so with two
//! threads per stage they were the part of a ResNet step the second thread waited on (with
//! the zeroing and first touch of fresh output buffers, about a tenth of a width-0.25
//! ResNet-18 step on two threads). Each kernel here gives the same value as burn's operation
//! for every element (NaN included), so results do not change; a tensor that is not plain host
//! memory (autodiff, GPU) still goes to burn.

use std::mem::MaybeUninit;

use burn::tensor::Tensor;
use burn_flex::{Flex, FlexTensor};
use rayon::prelude::*;

use crate::tensor::{ELEMENTWISE_CHUNK, fill_chunks, host_values, tensor1, values};

/// `f(a[i], b[i])` for every `i`, on the current rayon pool.
fn zip_map(a: &[f32], b: &[f32], f: impl Fn(f32, f32) -> f32 + Sync) -> Vec<f32> {
    assert_eq!(
        a.len(),
        b.len(),
        "element-wise operands of different lengths"
    );
    fill_chunks(a.len(), ELEMENTWISE_CHUNK, |index, out| {
        let start = index * ELEMENTWISE_CHUNK;
        for ((o, &x), &y) in out.iter_mut().zip(&a[start..]).zip(&b[start..]) {
            *o = f(x, y);
        }
    })
}

/// `values[i] = f(values[i], other[i])` for every `i`, on the current rayon pool.
fn zip_in_place(values: &mut [f32], other: &[f32], f: impl Fn(f32, f32) -> f32 + Sync) {
    assert_eq!(
        values.len(),
        other.len(),
        "element-wise operands of different lengths"
    );
    values
        .par_chunks_mut(ELEMENTWISE_CHUNK)
        .zip(other.par_chunks(ELEMENTWISE_CHUNK))
        .for_each(|(chunk, other)| {
            for (v, &o) in chunk.iter_mut().zip(other) {
                *v = f(*v, o);
            }
        });
}

/// A tensor handed to an element-wise kernel.
enum Taken<const D: usize> {
    /// A plain CPU tensor whose buffer nothing else shares (contiguous from its start): the
    /// kernel may overwrite it.
    Unique(FlexTensor),
    /// Any other tensor.
    Other(Tensor<D>),
}

impl<const D: usize> Taken<D> {
    fn new(tensor: Tensor<D>) -> Self {
        if host_values(&tensor).is_none() {
            return Taken::Other(tensor);
        }
        let host = tensor
            .try_into_primitive::<Flex>()
            .expect("a tensor with host values is a Flex tensor");
        let layout = host.layout();
        if host.is_unique() && layout.is_contiguous() && layout.start_offset() == 0 {
            Taken::Unique(host)
        } else {
            Taken::Other(Tensor::from_primitive::<Flex>(host))
        }
    }

    fn into_tensor(self) -> Tensor<D> {
        match self {
            Taken::Unique(host) => Tensor::from_primitive::<Flex>(host),
            Taken::Other(tensor) => tensor,
        }
    }
}

/// The `len` values of a [`Taken::Unique`] tensor, to overwrite.
fn values_mut(host: &mut FlexTensor) -> &mut [f32] {
    let len = host.layout().num_elements();
    &mut host.storage_mut::<f32>()[..len]
}

/// `max(v, 0)`, NaN kept (as burn's `relu`).
fn relu_value(v: f32) -> f32 {
    if v.is_nan() || v > 0.0 { v } else { 0.0 }
}

/// `max(x, 0)` element-wise, NaN kept (as burn's `relu`); in `x`'s own buffer where nothing
/// else reads it.
pub(crate) fn relu<const D: usize>(x: Tensor<D>) -> Tensor<D> {
    let x = match Taken::new(x) {
        Taken::Unique(mut host) => {
            values_mut(&mut host)
                .par_chunks_mut(ELEMENTWISE_CHUNK)
                .for_each(|chunk| chunk.iter_mut().for_each(|v| *v = relu_value(*v)));
            return Tensor::from_primitive::<Flex>(host);
        }
        Taken::Other(x) => x,
    };
    let Some(values) = host_values(&x) else {
        return burn::tensor::activation::relu(x);
    };
    let out = fill_chunks(values.len(), ELEMENTWISE_CHUNK, |index, out| {
        let start = index * ELEMENTWISE_CHUNK;
        for (o, &v) in out.iter_mut().zip(&values[start..]) {
            *o = relu_value(v);
        }
    });
    tensor1(out).reshape(x.dims())
}

/// The mask of the ReLU's VJP: `g` where the activation `a` is positive, 0 elsewhere (NaN
/// included).
fn relu_mask(g: f32, a: f32) -> f32 {
    if a > 0.0 { g } else { 0.0 }
}

/// The VJP of a ReLU: `g` where `activation` (the ReLU's input or output) is positive, 0
/// elsewhere (NaN included); in `g`'s own buffer where nothing else reads it.
pub(crate) fn relu_backward<const D: usize>(g: Tensor<D>, activation: &Tensor<D>) -> Tensor<D> {
    let Some(activation_values) = host_values(activation) else {
        return g.mask_fill(activation.clone().lower_equal_elem(0.0), 0.0);
    };
    match Taken::new(g) {
        Taken::Unique(mut host) => {
            zip_in_place(values_mut(&mut host), &activation_values, relu_mask);
            Tensor::from_primitive::<Flex>(host)
        }
        Taken::Other(g) => {
            let masked = zip_map(&values(&g), &activation_values, relu_mask);
            tensor1(masked).reshape(g.dims())
        }
    }
}

/// `a + b` element-wise, in the buffer of an operand nothing else reads.
pub(crate) fn add<const D: usize>(a: Tensor<D>, b: Tensor<D>) -> Tensor<D> {
    assert_eq!(a.dims(), b.dims(), "element-wise sum of different shapes");
    let sum = |x: f32, y: f32| x + y;
    // Addition commutes exactly, so either operand can take the sum.
    let (target, other) = match Taken::new(a) {
        Taken::Unique(host) => (Taken::Unique(host), b),
        Taken::Other(a) => (Taken::new(b), a),
    };
    match (target, host_values(&other)) {
        (Taken::Unique(mut host), Some(values)) => {
            zip_in_place(values_mut(&mut host), &values, sum);
            Tensor::from_primitive::<Flex>(host)
        }
        (target, _) => {
            let target = target.into_tensor();
            match (host_values(&target), host_values(&other)) {
                (Some(left), Some(right)) => {
                    tensor1(zip_map(&left, &right, sum)).reshape(target.dims())
                }
                _ => target.add(other),
            }
        }
    }
}

/// SGD's hyper-parameters for one step, as the f32 values burn's scalar operations use
/// (`None` for a momentum or weight decay of 0, which the rule leaves out).
#[derive(Clone, Copy, Debug)]
pub(crate) struct SgdStep {
    /// Learning rate η.
    pub lr: f32,
    /// Momentum μ, if any.
    pub momentum: Option<f32>,
    /// Nesterov momentum (with `momentum` only).
    pub nesterov: bool,
    /// L2 weight decay λ, if any.
    pub weight_decay: Option<f32>,
}

/// The momentum buffer a step writes: the old one's own storage where nothing else reads it,
/// else a copy.
enum MomentumBuffer {
    Host(FlexTensor),
    Copied(Vec<f32>),
}

impl MomentumBuffer {
    fn values_mut(&mut self) -> &mut [f32] {
        match self {
            MomentumBuffer::Host(host) => values_mut(host),
            MomentumBuffer::Copied(values) => values,
        }
    }

    fn into_tensor(self) -> Tensor<1> {
        match self {
            MomentumBuffer::Host(host) => Tensor::from_primitive::<Flex>(host),
            MomentumBuffer::Copied(values) => tensor1(values),
        }
    }
}

/// One SGD step of `theta` with gradient `grad` and momentum buffer `buffer` (`None` before
/// the first step), in one pass on the current rayon pool: the new weights in a fresh buffer,
/// and `buffer` replaced by the updated momentum (in its own storage where nothing else reads
/// it). Each value goes through the f32 operations of `optim`'s tensor form of the rule, in
/// the same order, so the result is the same bit for bit. `None`, with nothing changed, where
/// a tensor is not plain host memory (the caller then steps with burn's operations).
pub(crate) fn sgd_step(
    theta: &Tensor<1>,
    grad: &Tensor<1>,
    buffer: &mut Option<Tensor<1>>,
    step: SgdStep,
) -> Option<Tensor<1>> {
    let theta_values = host_values(theta)?;
    let grad_values = host_values(grad)?;
    assert_eq!(
        theta_values.len(),
        grad_values.len(),
        "SGD step: weights and gradient of different lengths"
    );
    if buffer.as_ref().is_some_and(|b| host_values(b).is_none()) {
        return None;
    }
    let SgdStep {
        lr,
        momentum,
        nesterov,
        weight_decay,
    } = step;
    let decay = weight_decay.unwrap_or(0.0);
    let Some(momentum) = momentum else {
        let next = match weight_decay {
            Some(_) => zip_map(&theta_values, &grad_values, |t, g| t - (g + t * decay) * lr),
            None => zip_map(&theta_values, &grad_values, |t, g| t - g * lr),
        };
        return Some(tensor1(next));
    };
    let len = theta_values.len();
    let first = buffer.is_none();
    let mut momentum_buffer = match buffer.take().map(Taken::new) {
        None => MomentumBuffer::Copied(vec![0.0; len]),
        Some(Taken::Unique(host)) => MomentumBuffer::Host(host),
        Some(Taken::Other(b)) => MomentumBuffer::Copied(values(&b).to_vec()),
    };
    let b_values = momentum_buffer.values_mut();
    assert_eq!(
        b_values.len(),
        len,
        "SGD step: momentum buffer of another length"
    );
    // One loop per variant, so that each is a straight vectorisable pass.
    let chunk_step = match (first, nesterov, weight_decay.is_some()) {
        (false, false, false) => momentum_chunk::<false, false, false>,
        (false, false, true) => momentum_chunk::<false, false, true>,
        (false, true, false) => momentum_chunk::<false, true, false>,
        (false, true, true) => momentum_chunk::<false, true, true>,
        (true, false, false) => momentum_chunk::<true, false, false>,
        (true, false, true) => momentum_chunk::<true, false, true>,
        (true, true, false) => momentum_chunk::<true, true, false>,
        (true, true, true) => momentum_chunk::<true, true, true>,
    };
    let constants = [lr, momentum, decay];
    let mut next: Vec<f32> = Vec::with_capacity(len);
    next.spare_capacity_mut()[..len]
        .par_chunks_mut(ELEMENTWISE_CHUNK)
        .zip(b_values.par_chunks_mut(ELEMENTWISE_CHUNK))
        .zip(theta_values.par_chunks(ELEMENTWISE_CHUNK))
        .zip(grad_values.par_chunks(ELEMENTWISE_CHUNK))
        .for_each(|(((out, b), theta), grad)| chunk_step(out, b, theta, grad, constants));
    // SAFETY: the chunks cover `0..len`, and the loop wrote every element of each.
    unsafe { next.set_len(len) };
    *buffer = Some(momentum_buffer.into_tensor());
    Some(tensor1(next))
}

/// One chunk of [`sgd_step`] with momentum: `g ← g + λθ` (with `DECAY`), `b ← μb + g` (`b ← g`
/// on the `FIRST` step), `d = g + μb` (`NESTEROV`) or `b`, `θ' = θ − ηd`, with
/// `[η, μ, λ] = constants`.
fn momentum_chunk<const FIRST: bool, const NESTEROV: bool, const DECAY: bool>(
    out: &mut [MaybeUninit<f32>],
    b: &mut [f32],
    theta: &[f32],
    grad: &[f32],
    [lr, momentum, decay]: [f32; 3],
) {
    let len = out.len();
    let (b, theta, grad) = (&mut b[..len], &theta[..len], &grad[..len]);
    for i in 0..len {
        let g = if DECAY {
            grad[i] + theta[i] * decay
        } else {
            grad[i]
        };
        let buffer = if FIRST { g } else { b[i] * momentum + g };
        b[i] = buffer;
        let direction = if NESTEROV {
            g + buffer * momentum
        } else {
            buffer
        };
        out[i].write(theta[i] - direction * lr);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel_test_support::{bits, pool};
    use crate::tensor::{tensor2, to_vec};

    /// Values that cross several chunks and end inside one, with signs, zeros of both signs,
    /// and NaN.
    fn odd_values(len: usize) -> Vec<f32> {
        (0..len)
            .map(|i| match i % 7 {
                0 => f32::NAN,
                1 => -0.0,
                2 => 0.0,
                k => (k as f32 - 4.5) * (i as f32).sqrt(),
            })
            .collect()
    }

    /// A transposed view (as a linear block's input gradient is) is read in row-major order
    /// through its strides: the ReLU's VJP of it equals the VJP of its contiguous copy, on a
    /// shape whose rows span several chunks and end inside one.
    #[test]
    fn relu_backward_reads_a_transposed_gradient_through_its_strides() {
        let (rows, cols) = (130, 257);
        let pool = pool(2);
        // [cols, rows] in memory, viewed as [rows, cols].
        let g = tensor2(odd_values(rows * cols), cols, rows).transpose();
        let activation = tensor2(
            odd_values(rows * cols).into_iter().rev().collect(),
            rows,
            cols,
        );
        assert!(host_values(&g).is_none(), "the view is not contiguous");
        let contiguous = tensor2(to_vec(&g), rows, cols);
        pool.install(|| {
            assert_eq!(bits(&values(&g)), bits(&to_vec(&g)));
            let expected = bits(&to_vec(&relu_backward(contiguous, &activation)));
            assert_eq!(bits(&to_vec(&relu_backward(g, &activation))), expected);
        });
    }

    #[test]
    fn the_kernels_give_burns_values_bit_for_bit() {
        // Three whole chunks and part of a fourth, as 5 columns.
        let rows = (3 * ELEMENTWISE_CHUNK).div_ceil(5) + 1;
        let len = 5 * rows;
        let pool = pool(2);
        let x = tensor2(odd_values(len), rows, 5);
        let y = tensor2(odd_values(len).into_iter().rev().collect(), rows, 5);
        let expected_relu = bits(&to_vec(&burn::tensor::activation::relu(x.clone())));
        let expected_sum = bits(&to_vec(&x.clone().add(y.clone())));
        let expected_mask: Vec<u32> = (to_vec(&y).iter().zip(to_vec(&x)))
            .map(|(&g, a)| if a > 0.0 { g } else { 0.0 }.to_bits())
            .collect();
        // A tensor nobody else holds (`fresh`) is overwritten in place; a shared one is copied.
        let fresh = |t: &Tensor<2>| tensor2(to_vec(t), rows, 5);
        let (x_bits, y_bits) = (bits(&to_vec(&x)), bits(&to_vec(&y)));
        assert!(matches!(Taken::new(fresh(&x)), Taken::Unique(_)));
        assert!(matches!(Taken::new(x.clone()), Taken::Other(_)));
        pool.install(|| {
            assert_eq!(bits(&to_vec(&relu(x.clone()))), expected_relu);
            assert_eq!(bits(&to_vec(&relu(fresh(&x)))), expected_relu);
            for (a, b) in [
                (x.clone(), y.clone()),
                (fresh(&x), y.clone()),
                (x.clone(), fresh(&y)),
                (fresh(&x), fresh(&y)),
            ] {
                assert_eq!(bits(&to_vec(&add(a, b))), expected_sum);
            }
            assert_eq!(bits(&to_vec(&relu_backward(y.clone(), &x))), expected_mask);
            let masked = relu_backward(fresh(&y), &x);
            assert_eq!(bits(&to_vec(&masked)), expected_mask);
            assert_eq!(masked.dims(), y.dims());
        });
        // The shared operands kept their values.
        assert_eq!((bits(&to_vec(&x)), bits(&to_vec(&y))), (x_bits, y_bits));
    }
}
