//! Closed-form backward passes (vector-Jacobian products) of the image blocks: convolutions,
//! batch norms, pools and residual blocks.
//!
//! A stage of such blocks needs no autodiff graph (see `BurnStage`): its forward keeps each
//! block's input and output and, for a block of several layers, every layer's input
//! ([`Block::forward_recording`]); its backward walks the layers of each block's layer paths
//! in reverse with the rules below. Where the backward reads other weights than the forward (a
//! stale-weight policy in graph mode), a residual block's inner activations are recomputed from
//! its saved input with the backward's weights, exactly what re-running the block under
//! autodiff would differentiate.
//!
//! - convolution `y = W ⊛ x + b`: `∂W` is the correlation of the input with the output
//!   gradient, `∂b = Σ g` over images and positions, `∂x` the transposed convolution of `g`
//!   ([`crate::conv_kernel`] on the CPU; burn's `conv2d_weight_backward` and
//!   `conv_transpose2d` elsewhere);
//! - batch norm with batch statistics: [`crate::norm_kernel`] on the CPU;
//! - ReLU inside a block: `g` masked where the layer's input was not positive;
//! - max pooling: [`crate::pool_kernel`] routes each output gradient to its window's first
//!   maximum; global average pooling spreads it evenly; average pooling (in no zoo model)
//!   takes burn's VJP of the pool alone, at the saved input;
//! - a residual block: the main path and the shortcut each from the output gradient, their
//!   input gradients summed (an identity shortcut passes `g` through).

use std::ops::Range;

use burn::tensor::Tensor;
use burn::tensor::module::{conv_transpose2d, conv2d_weight_backward};
use burn::tensor::ops::{ConvOptions, ConvTransposeOptions};

use super::{BN_EPSILON, Block, Layer, LayerPaths, Norm, conv_geometry};
use crate::conv_kernel::{ConvGeometry, conv2d_input_grad, conv2d_weight_grad};
use crate::norm_kernel::batch_norm_backward;
use crate::pool_kernel::max_pool_backward;
use crate::tensor::{host_values, on_cpu, tensor1, values};

/// Parameter gradients (in parameter order) and, if it was asked for, the input gradient.
pub(crate) type Vjp<const D: usize> = (Vec<Tensor<1>>, Option<Tensor<D>>);

impl Block {
    /// Whether [`Block::spatial_vjp`] has a closed form for this block: a convolution block
    /// on any device; on the CPU, where the batch-norm kernel reads host memory, every image
    /// block.
    pub(crate) fn has_spatial_vjp(&self) -> bool {
        match self {
            Block::Conv2d { .. } => true,
            Block::BatchNorm2d { .. }
            | Block::MaxPool2d { .. }
            | Block::AvgPool2d { .. }
            | Block::GlobalAvgPool { .. }
            | Block::BasicBlock { .. }
            | Block::Bottleneck { .. } => on_cpu(),
            _ => false,
        }
    }

    /// The VJP of the block's weighted part (before any trailing ReLU) at input `x`
    /// (`[batch, input_features]`, plain) and weights `params`, for the output gradient `g`
    /// (`[batch, output_features]`); `None` if the block is not an image block.
    ///
    /// `layer_inputs` are the layer inputs a forward with these same weights recorded
    /// ([`Block::forward_recording`]); without them a block of several layers re-runs its
    /// forward from `x` with `params` to get them.
    pub(crate) fn spatial_vjp(
        &self,
        x: &Tensor<2>,
        params: &[Tensor<1>],
        g: &Tensor<2>,
        need_input_grad: bool,
        layer_inputs: Option<&[Tensor<4>]>,
    ) -> Option<Vjp<2>> {
        if !self.has_spatial_vjp() {
            return None;
        }
        let batch = x.dims()[0];
        let [c, h, w] = self.input_shape();
        let [co, ho, wo] = self.output_shape();
        let image = x.clone().reshape([batch, c, h, w]);
        let g = g.clone().reshape([batch, co, ho, wo]);
        let (grads, input_grad) = match (self.layer_paths(), *self) {
            (None, Block::MaxPool2d { .. }) => {
                let geometry = self.max_pool_geometry();
                let input_grad = need_input_grad.then(|| {
                    let dx = max_pool_backward(&geometry, &values(&image), &values(&g));
                    tensor1(dx).reshape([batch, c, h, w])
                });
                (Vec::new(), input_grad)
            }
            (None, Block::GlobalAvgPool { .. }) => {
                // Every position of a channel receives its output gradient over h·w.
                let input_grad = need_input_grad.then(|| {
                    g.div_scalar((h * w) as f64)
                        .expand([batch, c, h, w])
                        .reshape([batch, c, h, w])
                });
                (Vec::new(), input_grad)
            }
            (None, _) => {
                // An average pool (no zoo model has one): burn's VJP of the pool alone.
                let input_grad = need_input_grad.then(|| {
                    autodiff_input_grad(image, g, |x| {
                        let features = self.forward_weighted(
                            x.reshape([batch, c * h * w]),
                            &[],
                            Norm::Batch(&mut Vec::new()),
                        );
                        features.reshape([batch, co, ho, wo])
                    })
                });
                (Vec::new(), input_grad)
            }
            (Some(paths), _) => {
                let recorded;
                let layer_inputs = match layer_inputs {
                    Some(inputs) => inputs,
                    None if paths.main.len() == 1 && paths.shortcut.is_none() => {
                        std::slice::from_ref(&image)
                    }
                    None => {
                        let mut inputs = Vec::new();
                        super::run_layer_paths(
                            &paths,
                            image.clone(),
                            params,
                            Norm::Batch(&mut Vec::new()),
                            Some(&mut inputs),
                        );
                        recorded = inputs;
                        &recorded
                    }
                };
                layer_paths_vjp(&paths, layer_inputs, params, g, need_input_grad)
            }
        };
        Some((grads, input_grad.map(|dx| dx.reshape([batch, c * h * w]))))
    }
}

/// The VJP of a ReLU: `g` where `activation` (the ReLU's input or output) is positive, 0
/// elsewhere; one pass over host memory on the CPU.
pub(crate) fn relu_backward<const D: usize>(g: Tensor<D>, activation: &Tensor<D>) -> Tensor<D> {
    let dims = g.dims();
    let Some(activation) = host_values(activation) else {
        return g.mask_fill(activation.clone().lower_equal_elem(0.0), 0.0);
    };
    let masked = (values(&g).iter().zip(activation.iter()))
        .map(|(&g, &a)| if a > 0.0 { g } else { 0.0 })
        .collect();
    tensor1(masked).reshape(dims)
}

/// The input gradient of `f` at `x` for the output gradient `g`, by burn's autodiff of `f`
/// alone.
fn autodiff_input_grad(
    x: Tensor<4>,
    g: Tensor<4>,
    f: impl FnOnce(Tensor<4>) -> Tensor<4>,
) -> Tensor<4> {
    let leaf = x.autodiff().require_grad();
    let grads = f(leaf.clone()).mul(g.autodiff()).sum().backward();
    match leaf.grad(&grads) {
        Some(grad) => grad.inner(),
        None => panic!("no input gradient from the autodiff of a pool"),
    }
}

/// The VJP of layer paths from the inputs of its layers (main path, then shortcut).
fn layer_paths_vjp(
    paths: &LayerPaths,
    layer_inputs: &[Tensor<4>],
    params: &[Tensor<1>],
    g: Tensor<4>,
    need_input_grad: bool,
) -> Vjp<4> {
    let layers: Vec<Layer> = paths.layers().map(|&(_, layer)| layer).collect();
    assert_eq!(
        layer_inputs.len(),
        layers.len(),
        "layer inputs recorded for layer paths of {} layers",
        layers.len()
    );
    let mut offsets = vec![0];
    for layer in &layers {
        offsets.push(offsets.last().copied().unwrap_or(0) + layer.params("").len());
    }
    assert_eq!(
        offsets[layers.len()],
        params.len(),
        "parameters of the layer paths"
    );
    let mut grads: Vec<Vec<Tensor<1>>> = vec![Vec::new(); layers.len()];
    // Layers `range` in reverse from the gradient of their output; the gradient of their first
    // input if `need_first`.
    let mut walk = |range: Range<usize>, mut g: Tensor<4>, need_first: bool| {
        for k in range.clone().rev() {
            let need = need_first || k > range.start;
            let (layer_grads, input_grad) = layer_vjp(
                layers[k],
                &layer_inputs[k],
                &params[offsets[k]..offsets[k + 1]],
                g,
                need,
            );
            grads[k] = layer_grads;
            match input_grad {
                Some(input_grad) => g = input_grad,
                None => return None,
            }
        }
        Some(g)
    };
    let main = 0..paths.main.len();
    let input_grad = match &paths.shortcut {
        None => walk(main, g, need_input_grad),
        Some(shortcut) => {
            let main_grad = walk(main.clone(), g.clone(), need_input_grad);
            let shortcut_grad = if shortcut.is_empty() {
                need_input_grad.then_some(g)
            } else {
                walk(main.end..main.end + shortcut.len(), g, need_input_grad)
            };
            main_grad.zip(shortcut_grad).map(|(a, b)| a.add(b))
        }
    };
    (grads.into_iter().flatten().collect(), input_grad)
}

/// The VJP of one layer of an image block at its input `x` (`[batch, c, h, w]`).
fn layer_vjp(
    layer: Layer,
    x: &Tensor<4>,
    params: &[Tensor<1>],
    g: Tensor<4>,
    need_input_grad: bool,
) -> Vjp<4> {
    match layer {
        Layer::Conv { bias, .. } => {
            let geometry = conv_geometry(layer, x.dims());
            conv_vjp(&geometry, x, &params[0], bias, g, need_input_grad)
        }
        Layer::Norm { channels } => {
            let [batch, _, height, width] = x.dims();
            let grads = batch_norm_backward(
                &values(x),
                &values(&g),
                &values(&params[0]),
                height * width,
                BN_EPSILON,
                need_input_grad,
            );
            let input_grad = grads
                .input
                .map(|dx| tensor1(dx).reshape([batch, channels, height, width]));
            (vec![tensor1(grads.gamma), tensor1(grads.beta)], input_grad)
        }
        Layer::Relu => (Vec::new(), need_input_grad.then(|| relu_backward(g, x))),
        Layer::Linear { .. } | Layer::FeatureNorm { .. } | Layer::Embedding { .. } => {
            panic!("a {layer:?} layer inside an image block")
        }
    }
}

/// The VJP of a convolution (weight `[OC, C, k, k]` flattened, optional bias) at input `x`.
fn conv_vjp(
    geometry: &ConvGeometry,
    x: &Tensor<4>,
    weight: &Tensor<1>,
    bias: bool,
    g: Tensor<4>,
    need_input_grad: bool,
) -> Vjp<4> {
    let ConvGeometry {
        channels_in,
        height,
        width,
        channels_out,
        kernel,
        stride,
        padding,
        ..
    } = *geometry;
    let weight = weight
        .clone()
        .reshape([channels_out, channels_in, kernel, kernel]);
    let weight_grad = if on_cpu() {
        tensor1(conv2d_weight_grad(geometry, &values(x), &values(&g)))
    } else {
        let options = ConvOptions::new([stride, stride], [padding, padding], [1, 1], 1);
        conv2d_weight_backward(x.clone(), weight.clone(), g.clone(), options)
            .reshape([channels_out * channels_in * kernel * kernel])
    };
    let mut grads = vec![weight_grad];
    if bias {
        grads.push(
            g.clone()
                .sum_dim(0)
                .sum_dim(2)
                .sum_dim(3)
                .reshape([channels_out]),
        );
    }
    let input_grad = need_input_grad.then(|| {
        if on_cpu() {
            let dx = conv2d_input_grad(geometry, &values(&weight), &values(&g));
            return tensor1(dx).reshape([geometry.batch, channels_in, height, width]);
        }
        // The rows and columns a strided forward dropped at the far edge come back as output
        // padding, so the transposed convolution returns exactly the input size.
        let dropped = |size_in: usize, size_out: usize| {
            let covered = (size_out - 1) * stride + kernel;
            (size_in + 2 * padding).saturating_sub(covered)
        };
        let padding_out = [
            dropped(height, geometry.height_out()),
            dropped(width, geometry.width_out()),
        ];
        conv_transpose2d(
            g,
            weight,
            None,
            ConvTransposeOptions::new([stride, stride], [padding, padding], padding_out, [1, 1], 1),
        )
    });
    (grads, input_grad)
}
