//! Closed-form backward passes for blocks whose vector-Jacobian product is a pair of GEMMs.
//!
//! Graph-mode gradients with other weights than the forward's (spec §9 item 1) need, per
//! block, `∂(out · g)/∂θ` and `∂(out · g)/∂x` evaluated at the saved input and the backward's
//! weights. Through autodiff that means re-running the block's forward (one GEMM for a linear
//! block) only to build a graph; profiling showed that re-run at 19% of all instructions of a
//! TiMePReSt run on an MLP. For a linear block `y = x·W + b` the products are known in closed
//! form — `∂W = xᵀ·g`, `∂b = Σ_rows g`, `∂x = g·Wᵀ` — so the re-run is skipped. Blocks without
//! a closed form here return `None` and take the autodiff path.
//!
//! A closed form has a second use: it does not depend on how the rows are grouped, so the
//! micro-batches of one nF1B backward can be stacked into one batch (see `backward_stacked`).

use burn::tensor::Tensor;

use crate::Block;

/// Whether [`direct_vjp`] handles `block`.
pub(super) fn has_closed_form(block: &Block) -> bool {
    matches!(block, Block::Linear { .. } | Block::Relu { .. })
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
) -> Option<(Vec<Tensor<1>>, Option<Tensor<2>>)> {
    let (input, output) = match *block {
        Block::Linear { input, output, .. } => (input, output),
        // The weighted part of a ReLU block is the identity (the mask is already in `g`).
        Block::Relu { .. } => return Some((Vec::new(), need_input_grad.then(|| g.clone()))),
        _ => return None,
    };
    let [weight, _bias] = params else {
        panic!(
            "linear block with {} parameter tensors instead of 2",
            params.len()
        );
    };
    let weight_grad = x
        .clone()
        .transpose()
        .matmul(g.clone())
        .reshape([input * output]);
    let bias_grad = g.clone().sum_dim(0).reshape([output]);
    let input_grad = need_input_grad.then(|| {
        g.clone()
            .matmul(weight.clone().reshape([input, output]).transpose())
    });
    Some((vec![weight_grad, bias_grad], input_grad))
}
