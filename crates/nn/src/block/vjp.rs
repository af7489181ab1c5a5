//! Closed-form backward passes (vector-Jacobian products) shared by the block kinds: the
//! layer-by-layer VJP of layer paths (convolution, batch-norm and residual blocks), the view of
//! messages as images that every image block's VJP goes through, and the ReLU's mask.
//!
//! A stage of blocks with closed forms needs no autodiff graph (see `BurnStage`): its forward
//! keeps each block's input and output and, for a block of several layers, every layer's input
//! ([`Block::forward_recording`]); its backward walks the layers of each block's layer paths
//! in reverse with the rules below. Where the backward reads other weights than the forward (a
//! stale-weight policy in graph mode), a residual block's inner activations are recomputed from
//! its saved input with the backward's weights, exactly what re-running the block under
//! autodiff would differentiate. Each kind's own closed form (linear, ReLU, pools) sits with
//! the kind; stacking micro-batches into one backward is allowed where every block of a stage
//! [stacks rows](Block::stacks_rows).
//!
//! - convolution `y = W ⊛ x + b`: `∂W` is the correlation of the input with the output
//!   gradient, `∂b = Σ g` over images and positions, `∂x` the transposed convolution of `g`
//!   ([`crate::conv_kernel`] on the CPU; burn's `conv2d_weight_backward` and
//!   `conv_transpose2d` elsewhere);
//! - batch norm with batch statistics: [`crate::norm_kernel`] on the CPU;
//! - ReLU inside a block: `g` masked where the layer's input was not positive;
//! - a residual block: the main path and the shortcut each from the output gradient, their
//!   input gradients summed (an identity shortcut passes `g` through).

use std::ops::Range;

use burn::tensor::Tensor;
use burn::tensor::module::{conv_transpose2d, conv2d_weight_backward};
use burn::tensor::ops::{ConvOptions, ConvTransposeOptions};

use super::layers::{Layer, LayerPaths, conv_geometry, run_layer_paths};
use super::{BN_EPSILON, Block, BlockKind, Norm};
use crate::conv_kernel::{ConvGeometry, conv2d_input_grad, conv2d_weight_grad};
use crate::elementwise_kernel::{add, relu_backward};
use crate::norm_kernel::batch_norm_backward;
use crate::tensor::{on_cpu, tensor1, values};

/// Parameter gradients (in parameter order) and, if it was asked for, the input gradient.
pub(crate) type Vjp<const D: usize> = (Vec<Tensor<1>>, Option<Tensor<D>>);

impl Block {
    /// The whole backward of the block in graph mode, as a stage runs it when the block has a
    /// closed form: the ReLU mask from the forward's output `out`, then
    /// [`Block::closed_form_vjp`] at input `x` with the weight gradients included (not
    /// deferred). `None` without a closed form. What [`profile_blocks`](crate::profile_blocks)
    /// times, so that profiles measure the training path.
    pub(crate) fn closed_form_backward(
        &self,
        x: &Tensor<2>,
        params: &[Tensor<1>],
        out: &Tensor<2>,
        g: Tensor<2>,
        layer_inputs: &[Tensor<4>],
    ) -> Option<Vjp<2>> {
        let g = if self.has_relu() {
            relu_backward(g, out)
        } else {
            g
        };
        self.closed_form_vjp(x, params, &g, true, false, Some(layer_inputs))
    }
}

/// The VJP of an image block at input `x` (`[batch, input_features]`) for the output gradient
/// `g` (`[batch, output_features]`): `vjp` of the input and the gradient viewed as images
/// (`[batch, c, h, w]`), its input gradient flattened back.
pub(super) fn image_vjp<K: BlockKind + ?Sized>(
    kind: &K,
    x: &Tensor<2>,
    g: &Tensor<2>,
    vjp: impl FnOnce(Tensor<4>, Tensor<4>) -> Vjp<4>,
) -> Vjp<2> {
    let batch = x.dims()[0];
    let [c, h, w] = kind.input_shape();
    let [co, ho, wo] = kind.output_shape();
    let image = x.clone().reshape([batch, c, h, w]);
    let g = g.clone().reshape([batch, co, ho, wo]);
    let (grads, input_grad) = vjp(image, g);
    (grads, input_grad.map(|dx| dx.reshape([batch, c * h * w])))
}

/// The VJP of a block whose weighted part is its layer paths (a convolution, batch norm or
/// residual block), layer by layer; see [`Block::closed_form_vjp`] for the arguments.
pub(super) fn layer_paths_vjp<K: BlockKind + ?Sized>(
    kind: &K,
    x: &Tensor<2>,
    params: &[Tensor<1>],
    g: &Tensor<2>,
    need_input_grad: bool,
    layer_inputs: Option<&[Tensor<4>]>,
) -> Vjp<2> {
    let paths = kind
        .layer_paths()
        .expect("weighted blocks have layer paths");
    image_vjp(kind, x, g, |image, g| {
        let recorded;
        let layer_inputs = match layer_inputs {
            Some(inputs) => inputs,
            None if paths.main.len() == 1 && paths.shortcut.is_none() => {
                std::slice::from_ref(&image)
            }
            None => {
                let mut inputs = Vec::new();
                run_layer_paths(
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
        paths_vjp(&paths, layer_inputs, params, g, need_input_grad)
    })
}

/// The input gradient of `f` at `x` for the output gradient `g`, by burn's autodiff of `f`
/// alone.
pub(super) fn autodiff_input_grad(
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
fn paths_vjp(
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
            main_grad.zip(shortcut_grad).map(|(a, b)| add(a, b))
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

#[cfg(test)]
mod tests {
    use burn::tensor::Tensor;

    use super::*;
    use crate::block::{
        AvgPool2d, BasicBlock, BatchNorm2d, Bottleneck, Conv2d, GlobalAvgPool, Linear, MaxPool2d,
    };
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
            Block::Linear(Linear {
                input: 5,
                output: 3,
                relu: true,
            }),
            // Stride 2 on an even size drops a column at the far edge: output padding needed.
            Block::Conv2d(Conv2d {
                input: [2, 6, 6],
                channels: 3,
                kernel: 3,
                stride: 2,
                padding: 1,
                bias: true,
                relu: true,
            }),
            Block::Conv2d(Conv2d {
                input: [3, 5, 4],
                channels: 2,
                kernel: 3,
                stride: 1,
                padding: 0,
                bias: false,
                relu: false,
            }),
            Block::Conv2d(Conv2d {
                input: [1, 7, 7],
                channels: 2,
                kernel: 2,
                stride: 3,
                padding: 0,
                bias: true,
                relu: false,
            }),
            Block::BatchNorm2d(BatchNorm2d {
                input: [3, 5, 3],
                relu: true,
            }),
            Block::MaxPool2d(MaxPool2d {
                input: [2, 7, 6],
                kernel: 3,
                stride: 2,
                padding: 1,
            }),
            // The zoo's 2×2 windows side by side (their own path), on odd sides.
            Block::MaxPool2d(MaxPool2d {
                input: [2, 7, 5],
                kernel: 2,
                stride: 2,
                padding: 0,
            }),
            Block::AvgPool2d(AvgPool2d {
                input: [2, 6, 5],
                kernel: 2,
                stride: 2,
                padding: 0,
            }),
            Block::GlobalAvgPool(GlobalAvgPool { input: [3, 3, 5] }),
            // Identity shortcut; projection shortcut with a stride that drops a column.
            Block::BasicBlock(BasicBlock {
                input: [2, 5, 5],
                planes: 2,
                stride: 1,
            }),
            Block::BasicBlock(BasicBlock {
                input: [2, 6, 5],
                planes: 3,
                stride: 2,
            }),
            Block::Bottleneck(Bottleneck {
                input: [3, 5, 4],
                planes: 2,
                stride: 2,
            }),
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
                    (block.closed_form_vjp(&x, &params, &g, true, false, layer_inputs)).unwrap();
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
