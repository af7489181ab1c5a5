//! The primitive layers that weighted blocks are described by, and what is derived from that
//! one description: parameter and buffer names, file shapes, memory layouts and
//! initialisation ([`TensorInfo`]), the forward of the image blocks' layer paths
//! (convolution, batch norm, inner ReLU, shortcut) and their shape-counted cost.
//!
//! Shared by every kind with weights, so that the linear, convolution, batch-norm, residual and
//! transformer blocks take their parameters in one order and cannot disagree on it; the
//! layer-by-layer backward of the same layer paths is in `vjp`.

use burn::tensor::Tensor;
use burn::tensor::module::{batch_norm, batch_norm_train, conv2d};
use burn::tensor::ops::ConvOptions;

use super::{
    BN_EPSILON, BlockKind, NORM_VALUE_OPS, PATCH_VALUE_OPS, Shape, flatten, image, window_output,
};
use crate::conv_kernel::{ConvGeometry, conv2d_forward};
use crate::elementwise_kernel::{add, relu};
use crate::norm_kernel::batch_norm_forward;
use crate::tensor::{host_values, tensor1};

/// How a parameter or buffer starts.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) enum Init {
    /// Uniform in `±bound`.
    Uniform(f64),
    /// Every element equal to this.
    Const(f32),
}

/// One parameter (or buffer) tensor of a block: name suffix, shape in files, initialisation,
/// and whether memory holds it transposed (a linear weight: `[out, in]` in files, `[in, out]`
/// in memory, so the forward is `x · W + b`).
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct TensorInfo {
    pub(crate) name: String,
    pub(crate) shape: Vec<usize>,
    pub(crate) init: Init,
    pub(crate) transposed_in_memory: bool,
}

impl TensorInfo {
    fn new(prefix: &str, name: &str, shape: Vec<usize>, init: Init) -> Self {
        let name = if prefix.is_empty() {
            name.to_owned()
        } else {
            format!("{prefix}.{name}")
        };
        Self {
            name,
            shape,
            init,
            transposed_in_memory: false,
        }
    }

    fn transposed(self) -> Self {
        Self {
            transposed_in_memory: true,
            ..self
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.shape.iter().product()
    }
}

/// A primitive layer of a [`LayerPaths`].
#[derive(Clone, Copy, Debug)]
pub(super) enum Layer {
    Linear {
        input: usize,
        output: usize,
    },
    Conv {
        in_channels: usize,
        out_channels: usize,
        kernel: usize,
        stride: usize,
        padding: usize,
        bias: bool,
    },
    Norm {
        channels: usize,
    },
    /// Layer normalisation over the features of each position (PyTorch's `LayerNorm`).
    FeatureNorm {
        features: usize,
    },
    /// A lookup table of `rows` vectors of `width`.
    Embedding {
        rows: usize,
        width: usize,
    },
    Relu,
}

impl Layer {
    /// Parameters in order, PyTorch names and layouts, PyTorch's default initialisation
    /// (Kaiming-uniform with a = √5, i.e. `±1/√fan_in`, for weights and biases; γ = 1, β = 0;
    /// embedding tables uniform with PyTorch's unit variance, `±√3`).
    pub(super) fn params(self, prefix: &str) -> Vec<TensorInfo> {
        match self {
            Layer::Linear { input, output } => {
                let bound = Init::Uniform(1.0 / (input as f64).sqrt());
                vec![
                    TensorInfo::new(prefix, "weight", vec![output, input], bound).transposed(),
                    TensorInfo::new(prefix, "bias", vec![output], bound),
                ]
            }
            Layer::Embedding { rows, width } => vec![TensorInfo::new(
                prefix,
                "weight",
                vec![rows, width],
                Init::Uniform(3f64.sqrt()),
            )],
            Layer::Conv {
                in_channels,
                out_channels,
                kernel,
                bias,
                ..
            } => {
                let fan_in = in_channels * kernel * kernel;
                let bound = Init::Uniform(1.0 / (fan_in as f64).sqrt());
                let shape = vec![out_channels, in_channels, kernel, kernel];
                let mut params = vec![TensorInfo::new(prefix, "weight", shape, bound)];
                if bias {
                    params.push(TensorInfo::new(prefix, "bias", vec![out_channels], bound));
                }
                params
            }
            Layer::Norm { channels: features } | Layer::FeatureNorm { features } => vec![
                TensorInfo::new(prefix, "weight", vec![features], Init::Const(1.0)),
                TensorInfo::new(prefix, "bias", vec![features], Init::Const(0.0)),
            ],
            Layer::Relu => Vec::new(),
        }
    }

    /// Non-trainable state: a batch norm's running mean (0) and variance (1).
    pub(super) fn buffers(self, prefix: &str) -> Vec<TensorInfo> {
        match self {
            Layer::Norm { channels } => vec![
                TensorInfo::new(prefix, "running_mean", vec![channels], Init::Const(0.0)),
                TensorInfo::new(prefix, "running_var", vec![channels], Init::Const(1.0)),
            ],
            _ => Vec::new(),
        }
    }
}

/// A weighted block as primitive layers: the main path, and for a residual block the shortcut
/// (`Some(empty)` = identity). Layers with parameters carry the PyTorch attribute name.
pub(super) struct LayerPaths {
    pub(super) main: Vec<(&'static str, Layer)>,
    pub(super) shortcut: Option<Vec<(&'static str, Layer)>>,
}

impl LayerPaths {
    pub(super) fn single(layer: Layer) -> Self {
        Self {
            main: vec![("", layer)],
            shortcut: None,
        }
    }

    pub(super) fn layers(&self) -> impl Iterator<Item = &(&'static str, Layer)> {
        self.main.iter().chain(self.shortcut.iter().flatten())
    }
}

/// How batch normalisation normalises during a forward.
pub(crate) enum Norm<'a> {
    /// With the batch's statistics; each batch norm appends its batch mean and *unbiased*
    /// variance (plain tensors) to the vector, for the running-statistics update.
    Batch(&'a mut Vec<Tensor<1>>),
    /// With running statistics: the block's buffers, in order.
    Running(&'a [Tensor<1>]),
}

/// Takes the next tensor of a block's parameter list.
fn next_tensor<'a>(tensors: &mut impl Iterator<Item = &'a Tensor<1>>, what: &str) -> Tensor<1> {
    match tensors.next() {
        Some(t) => t.clone(),
        None => panic!("block parameters end before {what} (parameters not checked?)"),
    }
}

/// [`Block::forward_ops`](crate::Block::forward_ops) of the layers of `paths` (main path and shortcut, each from
/// `input`), with their linear and norm layers applied to one position; 0 without paths.
pub(super) fn layer_paths_ops(paths: Option<LayerPaths>, input: Shape) -> f64 {
    let Some(paths) = paths else {
        return 0.0;
    };
    let path_ops = |layers: &[(&'static str, Layer)]| {
        let [mut c, mut h, mut w] = input;
        let mut ops = 0.0;
        for &(_, layer) in layers {
            let positions = (h * w) as f64;
            ops += match layer {
                Layer::Linear { input, output } => (input * output) as f64,
                Layer::Conv {
                    in_channels,
                    out_channels,
                    kernel,
                    stride,
                    padding,
                    ..
                } => {
                    h = window_output(h, kernel, stride, padding).unwrap_or(0);
                    w = window_output(w, kernel, stride, padding).unwrap_or(0);
                    c = out_channels;
                    let patch_values = (in_channels * kernel * kernel * h * w) as f64;
                    let unrolled = !(kernel == 1 && stride == 1 && padding == 0);
                    patch_values * out_channels as f64
                        + if unrolled {
                            PATCH_VALUE_OPS * patch_values
                        } else {
                            0.0
                        }
                }
                Layer::Norm { channels } => NORM_VALUE_OPS * channels as f64 * positions,
                Layer::FeatureNorm { features } => features as f64,
                Layer::Embedding { width, .. } => width as f64,
                Layer::Relu => c as f64 * positions,
            };
        }
        ops
    };
    path_ops(&paths.main) + paths.shortcut.as_deref().map_or(0.0, path_ops)
}

/// The forward of a block whose weighted part is its layer paths (a convolution, batch norm or
/// residual block) on `x` (`[batch, input_features]`), recording the layer inputs if asked.
pub(super) fn layer_paths_forward<K: BlockKind + ?Sized>(
    kind: &K,
    x: Tensor<2>,
    params: &[Tensor<1>],
    norm: Norm<'_>,
    layer_inputs: Option<&mut Vec<Tensor<4>>>,
) -> Tensor<2> {
    let paths = kind
        .layer_paths()
        .expect("weighted blocks have layer paths");
    let out = run_layer_paths(
        &paths,
        image(x, kind.input_shape()),
        params,
        norm,
        layer_inputs,
    );
    flatten(out, kind.output_shape())
}

/// Runs the layers of `paths` on `x` (`[batch, c, h, w]`), consuming `params` in order;
/// appends each layer's input to `layer_inputs` if given (main path, then shortcut).
pub(super) fn run_layer_paths(
    paths: &LayerPaths,
    x: Tensor<4>,
    params: &[Tensor<1>],
    mut norm: Norm<'_>,
    mut layer_inputs: Option<&mut Vec<Tensor<4>>>,
) -> Tensor<4> {
    let mut tensors = params.iter();
    let mut norms_done = 0;
    let mut run = |layers: &[(&'static str, Layer)], mut h: Tensor<4>| {
        for &(name, layer) in layers {
            if let Some(inputs) = layer_inputs.as_deref_mut() {
                inputs.push(h.clone());
            }
            h = match layer {
                Layer::Relu => relu(h),
                Layer::Conv { bias, .. } => {
                    let weight = next_tensor(&mut tensors, name);
                    let bias = bias.then(|| next_tensor(&mut tensors, name));
                    conv_layer(layer, h, weight, bias)
                }
                Layer::Norm { .. } => {
                    let gamma = next_tensor(&mut tensors, name);
                    let beta = next_tensor(&mut tensors, name);
                    let out = apply_norm(h, gamma, beta, &mut norm, norms_done);
                    norms_done += 1;
                    out
                }
                Layer::Linear { .. } | Layer::FeatureNorm { .. } | Layer::Embedding { .. } => {
                    panic!("a {layer:?} layer inside an image block")
                }
            };
        }
        h
    };
    let main = run(&paths.main, x.clone());
    match &paths.shortcut {
        None => main,
        Some(layers) if layers.is_empty() => add(main, x),
        Some(layers) => {
            let shortcut = run(layers, x);
            add(main, shortcut)
        }
    }
}

/// The geometry of convolution layer `layer` on an input of `dims` (`[batch, c, h, w]`).
pub(super) fn conv_geometry(layer: Layer, [batch, _, height, width]: [usize; 4]) -> ConvGeometry {
    let Layer::Conv {
        in_channels,
        out_channels,
        kernel,
        stride,
        padding,
        ..
    } = layer
    else {
        panic!("conv_geometry of {layer:?}");
    };
    ConvGeometry {
        batch,
        channels_in: in_channels,
        height,
        width,
        channels_out: out_channels,
        kernel,
        stride,
        padding,
    }
}

/// Convolution layer `layer` on `x` (`[batch, c, h, w]`) with its weight (`[OC, C, k, k]`
/// flattened) and bias: [`conv_kernel`](crate::conv_kernel) on plain CPU tensors, burn's
/// convolution on autodiff or GPU tensors.
fn conv_layer(layer: Layer, x: Tensor<4>, weight: Tensor<1>, bias: Option<Tensor<1>>) -> Tensor<4> {
    let geometry = conv_geometry(layer, x.dims());
    let output = [
        geometry.batch,
        geometry.channels_out,
        geometry.height_out(),
        geometry.width_out(),
    ];
    let host_bias = bias.as_ref().map(host_values);
    // Input and weight in host memory, and no bias or a bias in host memory.
    if let (Some(x), Some(weight), None | Some(Some(_))) =
        (host_values(&x), host_values(&weight), &host_bias)
    {
        let bias = host_bias.flatten();
        return tensor1(conv2d_forward(&geometry, &x, &weight, bias.as_deref())).reshape(output);
    }
    let ConvGeometry {
        channels_in,
        channels_out,
        kernel,
        stride,
        padding,
        ..
    } = geometry;
    let weight = weight.reshape([channels_out, channels_in, kernel, kernel]);
    let options = ConvOptions::new([stride, stride], [padding, padding], [1, 1], 1);
    conv2d(x, weight, bias, options)
}

/// Batch norm number `index` of a block on `x` (`[batch, c, h, w]`).
fn apply_norm(
    x: Tensor<4>,
    gamma: Tensor<1>,
    beta: Tensor<1>,
    norm: &mut Norm<'_>,
    index: usize,
) -> Tensor<4> {
    match norm {
        Norm::Running(buffers) => {
            let (Some(mean), Some(var)) = (buffers.get(2 * index), buffers.get(2 * index + 1))
            else {
                panic!(
                    "batch norm {index} has no running statistics ({} buffers)",
                    buffers.len()
                );
            };
            batch_norm(x, gamma, beta, mean.clone(), var.clone(), BN_EPSILON)
        }
        Norm::Batch(stats) => {
            let [b, _, h, w] = x.dims();
            if let (Some(x_values), Some(gamma), Some(beta)) =
                (host_values(&x), host_values(&gamma), host_values(&beta))
            {
                let out = batch_norm_forward(&x_values, &gamma, &beta, h * w, BN_EPSILON);
                stats.push(tensor1(out.mean));
                stats.push(tensor1(out.unbiased_variance));
                return tensor1(out.output).reshape(x.dims());
            }
            let n = (b * h * w) as f64;
            let out = batch_norm_train(x, gamma, beta, BN_EPSILON);
            // PyTorch's running variance uses the unbiased batch variance.
            let unbiased = if n > 1.0 { n / (n - 1.0) } else { 1.0 };
            stats.push(out.mean.inner());
            stats.push(out.variance.inner().mul_scalar(unbiased));
            out.output
        }
    }
}
