//! Closed-form backward passes for blocks whose vector-Jacobian product is a pair of GEMMs.
//!
//! Graph-mode gradients with other weights than the forward's (`docs/algorithms.md` §4.1) need,
//! per block, `∂(out · g)/∂θ` and `∂(out · g)/∂x` evaluated at the saved input and the
//! backward's weights. Through autodiff that means re-running the block's forward (one GEMM for
//! a linear block) only to build a graph; profiling showed that re-run at 19% of all
//! instructions of a TiMePReSt run on an MLP. For a linear block `y = x·W + b` the products are
//! known in closed form — `∂W = xᵀ·g`, `∂b = Σ_rows g`, `∂x = g·Wᵀ` — so the re-run is skipped.
//! Image blocks (convolutions, batch norms, pools, residual blocks) have theirs beside their
//! forward ([`Block::spatial_vjp`]). Blocks without a closed form (the transformer blocks)
//! return `None` and take the autodiff path.
//!
//! Stacking (see `backward_stacked`): the micro-batches of one nF1B backward that read one
//! weight set can be differentiated as one batch when every block of the stage treats samples
//! independently ([`stacks_rows`]); closed-form or not, each block then runs once per backward
//! with M rows instead of N times with M/N.

use burn::tensor::Tensor;

use crate::Block;
use crate::block::{Vjp, relu_backward};

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
pub(crate) fn has_closed_form(block: &Block) -> bool {
    matches!(block, Block::Linear { .. } | Block::Relu { .. }) || block.has_spatial_vjp()
}

/// Parameter gradients (in the block's parameter order) and, if asked for, the input gradient
/// of `block` at input `x` (`[batch, in]`, plain) and weights `params`, for the gradient `g`
/// of the block's weighted output (before any trailing ReLU). `None` if the block has no
/// closed form here. `layer_inputs`: what a forward with these same weights recorded for an
/// image block ([`Block::spatial_vjp`]).
pub(super) fn direct_vjp(
    block: &Block,
    x: &Tensor<2>,
    params: &[Tensor<1>],
    g: &Tensor<2>,
    need_input_grad: bool,
    defer_linear_weight: bool,
    layer_inputs: Option<&[Tensor<4>]>,
) -> Option<Vjp<2>> {
    let (input, output) = match *block {
        Block::Linear { input, output, .. } => (input, output),
        // The weighted part of a ReLU block is the identity (the mask is already in `g`).
        Block::Relu { .. } => return Some((Vec::new(), need_input_grad.then(|| g.clone()))),
        _ => return block.spatial_vjp(x, params, g, need_input_grad, layer_inputs),
    };
    let [weight, _bias] = params else {
        panic!(
            "linear block with {} parameter tensors instead of 2",
            params.len()
        );
    };
    let bias_grad = g.clone().sum_dim(0).reshape([output]);
    let input_grad = need_input_grad.then(|| linear_input_grad(weight, g, input, output));
    if defer_linear_weight {
        return Some((vec![bias_grad], input_grad));
    }
    let weight_grad = linear_weight_grad(x, g).reshape([input * output]);
    Some((vec![weight_grad, bias_grad], input_grad))
}

/// The whole backward of one block in graph mode, as a stage runs it when the block has a
/// closed form: the ReLU mask from the forward's output `out`, then [`direct_vjp`] at input
/// `x` with the weight gradients included (not deferred). `None` without a closed form. What
/// [`profile_blocks`](crate::profile_blocks) times, so that profiles measure the training path.
pub(crate) fn closed_form_backward(
    block: &Block,
    x: &Tensor<2>,
    params: &[Tensor<1>],
    out: &Tensor<2>,
    g: Tensor<2>,
    layer_inputs: &[Tensor<4>],
) -> Option<Vjp<2>> {
    let g = if block.has_relu() {
        relu_backward(g, out)
    } else {
        g
    };
    direct_vjp(block, x, params, &g, true, false, Some(layer_inputs))
}

/// `g·Wᵀ`: the input gradient of a linear block with weight `W` (`[in, out]`, flattened) for
/// output gradient rows `g` (`[rows, out]`), computed as `(W·gᵀ)ᵀ`.
///
/// Why transposed: written directly, `gemm` splits the product along the rows of `Wᵀ` and must
/// gather them from `W` with a stride of `out` (a transposing copy of the whole weight per
/// call); as `W·gᵀ` it streams `W` row by row as the right operand, with only `g` packed. On a
/// 1024×1024 weight that made a 32-row product cost per row what a 128-row one does (1.7×
/// before). The result is a transposed view; consumers read it through its strides.
fn linear_input_grad(weight: &Tensor<1>, g: &Tensor<2>, input: usize, output: usize) -> Tensor<2> {
    weight
        .clone()
        .reshape([input, output])
        .matmul(g.clone().transpose())
        .transpose()
}

/// `xᵀ·g`: the weight gradient of a linear block (`[in, out]`) at input rows `x` and output
/// gradient rows `g`; with several micro-batches stacked along the rows, their sum.
pub(super) fn linear_weight_grad(x: &Tensor<2>, g: &Tensor<2>) -> Tensor<2> {
    x.clone().transpose().matmul(g.clone())
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
    fn closed_forms_equal_autodiff_for_linear_and_image_blocks() {
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
            Block::BatchNorm2d {
                input: [3, 5, 3],
                relu: true,
            },
            Block::MaxPool2d {
                input: [2, 7, 6],
                kernel: 3,
                stride: 2,
                padding: 1,
            },
            Block::AvgPool2d {
                input: [2, 6, 5],
                kernel: 2,
                stride: 2,
                padding: 0,
            },
            Block::GlobalAvgPool { input: [3, 3, 5] },
            // Identity shortcut; projection shortcut with a stride that drops a column.
            Block::BasicBlock {
                input: [2, 5, 5],
                planes: 2,
                stride: 1,
            },
            Block::BasicBlock {
                input: [2, 6, 5],
                planes: 3,
                stride: 2,
            },
            Block::Bottleneck {
                input: [3, 5, 4],
                planes: 2,
                stride: 2,
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
            let (expected_grads, expected_input_grad) = autodiff_vjp(&block, &x, &params, &g);
            // Layer inputs recomputed from `x`, and recorded by a forward with these weights.
            let mut recorded = Vec::new();
            block.forward_recording(
                x.clone(),
                &params,
                Norm::Batch(&mut Vec::new()),
                Some(&mut recorded),
            );
            for layer_inputs in [None, Some(recorded.as_slice())] {
                let (grads, input_grad) =
                    direct_vjp(&block, &x, &params, &g, true, false, layer_inputs).unwrap();
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
}
