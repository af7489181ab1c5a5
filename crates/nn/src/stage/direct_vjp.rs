//! Closed-form backward passes for blocks whose vector-Jacobian product is a pair of GEMMs.
//!
//! Graph-mode gradients with other weights than the forward's (spec §9 item 1) need, per
//! block, `∂(out · g)/∂θ` and `∂(out · g)/∂x` evaluated at the saved input and the backward's
//! weights. Through autodiff that means re-running the block's forward (one GEMM for a linear
//! block) only to build a graph; profiling showed that re-run at 19% of all instructions of a
//! TiMePReSt run on an MLP. For a linear block `y = x·W + b` the products are known in closed
//! form — `∂W = xᵀ·g`, `∂b = Σ_rows g`, `∂x = g·Wᵀ` — so the re-run is skipped. A convolution
//! block likewise: `∂W` is burn's weight-gradient convolution, `∂b` sums `g` over batch and
//! positions, `∂x` is the transposed convolution of `g` (with the output padding that restores
//! the input size when the stride drops rows). Blocks without a closed form here return `None`
//! and take the autodiff path.
//!
//! Stacking (see `backward_stacked`): the micro-batches of one nF1B backward that read one
//! weight set can be differentiated as one batch when every block of the stage treats samples
//! independently ([`stacks_rows`]); closed-form or not, each block then runs once per backward
//! with M rows instead of N times with M/N.

use burn::tensor::Tensor;
use burn::tensor::module::{conv_transpose2d, conv2d_weight_backward};
use burn::tensor::ops::{ConvOptions, ConvTransposeOptions};

use crate::Block;

/// Whether the block's VJP at several micro-batches stacked along the rows equals their VJPs
/// taken one by one (rows stacked, parameter gradients summed): true for every block that
/// treats samples independently, false for those normalising with batch statistics, whose
/// re-run on the stack would mix the micro-batches' statistics.
pub(super) fn stacks_rows(block: &Block) -> bool {
    match block {
        Block::Linear { .. }
        | Block::Conv2d { .. }
        | Block::Relu { .. }
        | Block::MaxPool2d { .. }
        | Block::AvgPool2d { .. }
        | Block::GlobalAvgPool { .. }
        | Block::Embedding { .. }
        | Block::DecoderLayer { .. }
        | Block::LmHead { .. } => true,
        Block::BatchNorm2d { .. } | Block::BasicBlock { .. } | Block::Bottleneck { .. } => false,
    }
}

/// Whether [`direct_vjp`] has a closed form for `block` (it never returns `None` for it).
pub(super) fn has_closed_form(block: &Block) -> bool {
    matches!(
        block,
        Block::Linear { .. } | Block::Relu { .. } | Block::Conv2d { .. }
    )
}

/// Parameter gradients (in the block's parameter order) and, if asked for, the input gradient
/// of `block` at input `x` (`[batch, in]`, plain) and weights `params`, for the gradient `g`
/// of the block's weighted output (before any trailing ReLU). `None` if the block has no
/// closed form here.
pub(super) fn direct_vjp(
    block: &Block,
    x: &Tensor<2>,
    params: &[Tensor<1>],
    g: &Tensor<2>,
    need_input_grad: bool,
    defer_linear_weight: bool,
) -> Option<(Vec<Tensor<1>>, Option<Tensor<2>>)> {
    let (input, output) = match *block {
        Block::Linear { input, output, .. } => (input, output),
        // The weighted part of a ReLU block is the identity (the mask is already in `g`).
        Block::Relu { .. } => return Some((Vec::new(), need_input_grad.then(|| g.clone()))),
        Block::Conv2d { .. } => return Some(conv_vjp(block, x, params, g, need_input_grad)),
        _ => return None,
    };
    let [weight, _bias] = params else {
        panic!(
            "linear block with {} parameter tensors instead of 2",
            params.len()
        );
    };
    let bias_grad = g.clone().sum_dim(0).reshape([output]);
    let input_grad = need_input_grad.then(|| {
        g.clone()
            .matmul(weight.clone().reshape([input, output]).transpose())
    });
    if defer_linear_weight {
        return Some((vec![bias_grad], input_grad));
    }
    let weight_grad = linear_weight_grad(x, g).reshape([input * output]);
    Some((vec![weight_grad, bias_grad], input_grad))
}

/// `xᵀ·g`: the weight gradient of a linear block (`[in, out]`) at input rows `x` and output
/// gradient rows `g`; with several micro-batches stacked along the rows, their sum.
pub(super) fn linear_weight_grad(x: &Tensor<2>, g: &Tensor<2>) -> Tensor<2> {
    x.clone().transpose().matmul(g.clone())
}

/// [`direct_vjp`] of a [`Block::Conv2d`].
fn conv_vjp(
    block: &Block,
    x: &Tensor<2>,
    params: &[Tensor<1>],
    g: &Tensor<2>,
    need_input_grad: bool,
) -> (Vec<Tensor<1>>, Option<Tensor<2>>) {
    let Block::Conv2d {
        input: [channels_in, height, width],
        channels,
        kernel,
        stride,
        padding,
        bias,
        ..
    } = *block
    else {
        panic!("conv_vjp of {block:?}");
    };
    let batch = x.dims()[0];
    let [_, _, height_out, width_out] = block_output_shape(block, batch);
    let weight = params[0]
        .clone()
        .reshape([channels, channels_in, kernel, kernel]);
    let x = x.clone().reshape([batch, channels_in, height, width]);
    let g = g.clone().reshape([batch, channels, height_out, width_out]);
    let options = ConvOptions::new([stride, stride], [padding, padding], [1, 1], 1);
    let weight_grad = conv2d_weight_backward(x, weight.clone(), g.clone(), options)
        .reshape([channels * channels_in * kernel * kernel]);
    let mut grads = vec![weight_grad];
    if bias {
        grads.push(
            g.clone()
                .sum_dim(0)
                .sum_dim(2)
                .sum_dim(3)
                .reshape([channels]),
        );
    }
    let input_grad = need_input_grad.then(|| {
        // The rows and columns a strided forward dropped at the far edge come back as output
        // padding, so the transposed convolution returns exactly the input size.
        let dropped = |size_in: usize, size_out: usize| {
            let covered = (size_out - 1) * stride + kernel;
            (size_in + 2 * padding).saturating_sub(covered)
        };
        let padding_out = [dropped(height, height_out), dropped(width, width_out)];
        conv_transpose2d(
            g,
            weight,
            None,
            ConvTransposeOptions::new([stride, stride], [padding, padding], padding_out, [1, 1], 1),
        )
        .reshape([batch, channels_in * height * width])
    });
    (grads, input_grad)
}

/// `[batch, channels, height, width]` of a spatial block's output.
fn block_output_shape(block: &Block, batch: usize) -> [usize; 4] {
    let [channels, height, width] = block.output_shape();
    [batch, channels, height, width]
}

#[cfg(test)]
mod tests {
    use burn::tensor::Tensor;

    use super::*;
    use crate::block::Norm;
    use crate::tensor::{tensor1, tensor2, to_vec};

    /// The VJP by autodiff through the block's weighted forward, as the fallback computes it.
    fn autodiff_vjp(
        block: &Block,
        x: &Tensor<2>,
        params: &[Tensor<1>],
        g: &Tensor<2>,
    ) -> (Vec<Vec<f32>>, Vec<f32>) {
        let x = x.clone().autodiff().require_grad();
        let leaves: Vec<Tensor<1>> = params
            .iter()
            .map(|t| t.clone().autodiff().require_grad())
            .collect();
        let out = block.forward_weighted(x.clone(), &leaves, Norm::Batch(&mut Vec::new()));
        let grads = out.mul(g.clone().autodiff()).sum().backward();
        let param_grads = leaves
            .iter()
            .map(|l| to_vec(&l.grad(&grads).unwrap().inner()))
            .collect();
        (param_grads, to_vec(&x.grad(&grads).unwrap().inner()))
    }

    fn values(n: usize, seed: usize) -> Vec<f32> {
        (0..n)
            .map(|i| (((i * 7 + seed * 13) % 17) as f32 - 8.0) / 8.0)
            .collect()
    }

    fn assert_close(what: &str, a: &[f32], b: &[f32]) {
        assert_eq!(a.len(), b.len(), "{what}: lengths");
        for (i, (x, y)) in a.iter().zip(b).enumerate() {
            assert!(
                (x - y).abs() <= 1e-4 * (1.0 + y.abs()),
                "{what}[{i}]: {x} vs {y}"
            );
        }
    }

    #[test]
    fn closed_forms_equal_autodiff_for_linear_and_convolution_blocks() {
        let blocks = [
            Block::Linear {
                input: 5,
                output: 3,
                relu: true,
            },
            // Stride 2 on an even size drops a column at the far edge: output padding needed.
            Block::Conv2d {
                input: [2, 6, 6],
                channels: 3,
                kernel: 3,
                stride: 2,
                padding: 1,
                bias: true,
                relu: true,
            },
            Block::Conv2d {
                input: [3, 5, 4],
                channels: 2,
                kernel: 3,
                stride: 1,
                padding: 0,
                bias: false,
                relu: false,
            },
            Block::Conv2d {
                input: [1, 7, 7],
                channels: 2,
                kernel: 2,
                stride: 3,
                padding: 0,
                bias: true,
                relu: false,
            },
        ];
        let batch = 3;
        for block in blocks {
            let params: Vec<Tensor<1>> = block
                .param_sizes()
                .iter()
                .enumerate()
                .map(|(k, &n)| tensor1(values(n, k + 1)))
                .collect();
            let x = tensor2(
                values(batch * block.input_features(), 5),
                batch,
                block.input_features(),
            );
            let g = tensor2(
                values(batch * block.output_features(), 9),
                batch,
                block.output_features(),
            );
            let (grads, input_grad) = direct_vjp(&block, &x, &params, &g, true, false).unwrap();
            let (expected_grads, expected_input_grad) = autodiff_vjp(&block, &x, &params, &g);
            assert_eq!(grads.len(), expected_grads.len(), "{block:?}");
            for (k, (got, expected)) in grads.iter().zip(&expected_grads).enumerate() {
                assert_close(&format!("{block:?} parameter {k}"), &to_vec(got), expected);
            }
            assert_close(
                &format!("{block:?} input"),
                &to_vec(&input_grad.unwrap()),
                &expected_input_grad,
            );
        }
    }
}
