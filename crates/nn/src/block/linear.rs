//! Blocks on flat features: the fully connected [`Linear`] block and the lone [`Relu`].
//!
//! Both read `[batch, features]` messages as they are. Their vector-Jacobian products are
//! known in closed form, so graph-mode gradients with other weights than the forward's
//! (`docs/algorithms.md` §4.1) skip re-running the forward only to build an autodiff graph:
//! profiling showed that re-run at 19% of all instructions of a TiMePReSt run on an MLP. For
//! `y = x·W + b` the products are `∂W = xᵀ·g`, `∂b = Σ_rows g`, `∂x = g·Wᵀ`; a ReLU block's
//! weighted part is the identity (its mask is applied to `g` before).

use burn::tensor::Tensor;
use serde::{Deserialize, Serialize};

use super::{BlockKind, Layer, LayerPaths, Norm, Shape, Vjp, affine};
use crate::gemm_kernel::{Operand, product_on_pool};
use crate::tensor::{host_or_strided_values, host_values, tensor2};

/// `y = x · W + b`, then ReLU if `relu`. Parameters: `weight` (`[out, in]` in files,
/// `[in, out]` in memory) and `bias` (`[out]`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Linear {
    /// Input features.
    pub input: usize,
    /// Output features.
    pub output: usize,
    /// Whether a ReLU follows.
    pub relu: bool,
}

/// A ReLU on its own.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Relu {
    /// Features per sample.
    pub features: usize,
}

impl BlockKind for Linear {
    fn input_shape(&self) -> Shape {
        [self.input, 1, 1]
    }

    fn output_shape(&self) -> Shape {
        [self.output, 1, 1]
    }

    fn is_spatial(&self) -> bool {
        false
    }

    fn check(&self) -> Result<(), String> {
        if self.output == 0 {
            return Err("has 0 outputs".into());
        }
        Ok(())
    }

    fn label(&self) -> String {
        format!("linear {}->{}", self.input, self.output)
    }

    fn layer_paths(&self) -> Option<LayerPaths> {
        Some(LayerPaths::single(Layer::Linear {
            input: self.input,
            output: self.output,
        }))
    }

    fn has_relu(&self) -> bool {
        self.relu
    }

    fn forward_weighted(
        &self,
        x: Tensor<2>,
        params: &[Tensor<1>],
        _norm: Norm<'_>,
        _layer_inputs: Option<&mut Vec<Tensor<4>>>,
    ) -> Tensor<2> {
        let [weight, bias] = params else {
            panic!(
                "linear block with {} parameter tensors instead of 2",
                params.len()
            );
        };
        affine(x, weight, bias, self.input, self.output)
    }

    fn has_closed_form(&self) -> bool {
        true
    }

    fn closed_form_vjp(
        &self,
        x: &Tensor<2>,
        params: &[Tensor<1>],
        g: &Tensor<2>,
        need_input_grad: bool,
        defer_weight_grad: bool,
        _layer_inputs: Option<&[Tensor<4>]>,
    ) -> Option<Vjp<2>> {
        let Linear { input, output, .. } = *self;
        let [weight, _bias] = params else {
            panic!(
                "linear block with {} parameter tensors instead of 2",
                params.len()
            );
        };
        let bias_grad = g.clone().sum_dim(0).reshape([output]);
        let input_grad = need_input_grad.then(|| linear_input_grad(weight, g, input, output));
        if defer_weight_grad {
            return Some((vec![bias_grad], input_grad));
        }
        let weight_grad = linear_weight_grad(x, g).reshape([input * output]);
        Some((vec![weight_grad, bias_grad], input_grad))
    }

    fn defers_weight_grad(&self) -> bool {
        true
    }
}

impl BlockKind for Relu {
    fn input_shape(&self) -> Shape {
        [self.features, 1, 1]
    }

    fn output_shape(&self) -> Shape {
        self.input_shape()
    }

    fn is_spatial(&self) -> bool {
        false
    }

    fn label(&self) -> String {
        "relu".into()
    }

    fn forward_ops(&self) -> f64 {
        self.features as f64
    }

    fn has_relu(&self) -> bool {
        true
    }

    fn forward_weighted(
        &self,
        x: Tensor<2>,
        _params: &[Tensor<1>],
        _norm: Norm<'_>,
        _layer_inputs: Option<&mut Vec<Tensor<4>>>,
    ) -> Tensor<2> {
        x
    }

    fn has_closed_form(&self) -> bool {
        true
    }

    fn closed_form_vjp(
        &self,
        _x: &Tensor<2>,
        _params: &[Tensor<1>],
        g: &Tensor<2>,
        need_input_grad: bool,
        _defer_weight_grad: bool,
        _layer_inputs: Option<&[Tensor<4>]>,
    ) -> Option<Vjp<2>> {
        // The weighted part of a ReLU block is the identity (the mask is already in `g`).
        Some((Vec::new(), need_input_grad.then(|| g.clone())))
    }
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
///
/// On CPU tensors `gemm` reads `x` through transposed strides and writes a fresh output on
/// the stage's threads, where burn's matmul first copied `x` into a contiguous transpose and
/// zeroed the output, both on one thread (together 5 % of an MLP step); burn's path serves
/// the rest (autodiff, GPU).
pub(crate) fn linear_weight_grad(x: &Tensor<2>, g: &Tensor<2>) -> Tensor<2> {
    let ([rows, input], [_, output]) = (x.dims(), g.dims());
    if let (Some(x_values), Some(g_values)) = (host_values(x), host_or_strided_values(g)) {
        let grad = product_on_pool(
            (input, output, rows),
            Operand::transposed(&x_values, input),
            Operand::rows(&g_values, output),
        );
        return tensor2(grad, input, output);
    }
    x.clone().transpose().matmul(g.clone())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel_test_support::{bits, pool, pseudo_random};
    use crate::tensor::to_vec;

    /// The CPU path equals burn's `xᵀ·g` bit for bit, with `g` contiguous and with `g` a
    /// transposed view (as the next block's input gradient is), on 1 and 2 threads.
    #[test]
    fn the_weight_gradient_equals_burns_matmul_bit_for_bit() {
        let (rows, input, output) = (45, 70, 33);
        let x = tensor2(pseudo_random(rows * input, 3), rows, input);
        let g = tensor2(pseudo_random(rows * output, 4), rows, output);
        let g_view = tensor2(to_vec(&g.clone().transpose()), output, rows).transpose();
        assert!(host_values(&g_view).is_none(), "the view is strided");
        let tensor_bits = |t: &Tensor<2>| bits(&to_vec(t));
        let expected = tensor_bits(&x.clone().transpose().matmul(g.clone()));
        for threads in [1, 2] {
            pool(threads).install(|| {
                assert_eq!(
                    tensor_bits(&linear_weight_grad(&x, &g)),
                    expected,
                    "{threads} threads"
                );
                assert_eq!(
                    tensor_bits(&linear_weight_grad(&x, &g_view)),
                    expected,
                    "view"
                );
            });
        }
    }
}
