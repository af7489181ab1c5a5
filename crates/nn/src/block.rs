//! Blocks: the units a model is made of, and the places a pipeline can be cut.
//!
//! A block is a pure description (`Copy`, hashable, serialisable): its input shape, its kind
//! and its hyper-parameters. Its parameters are plain 1-D tensors held elsewhere
//! ([`BlockParams`](crate::BlockParams)), and its forward is a function of (input, parameters,
//! normalisation statistics) built from burn's functional ops. Residual blocks (ResNet's
//! `BasicBlock` and `Bottleneck`) are *one* block each, so a pipeline cut never falls inside a
//! skip connection, and the partitioner sees the same units as the papers' layer tables.
//!
//! Every weighted block is described once, as small [`LayerPaths`] of primitive layers (linear,
//! convolution, batch norm, layer norm, embedding table, ReLU, and for residual blocks a
//! shortcut): the parameter names, file shapes, memory layouts, initialisation and
//! running-statistics buffers all come from that one description, and the convolutional
//! blocks' forward too, so they cannot disagree. The transformer blocks of `gpt` (token and
//! position embedding, decoder layer, language-model head; see [`crate::transformer`]) take
//! their parameters from their layer paths in order.
//!
//! Messages between stages are `[batch, features]`; a block that works on images reshapes its
//! input to `[batch, channels, height, width]` and flattens its output again (row-major
//! `c, h, w`, the order of `torch.flatten`). That is why there is no separate `Flatten`
//! block: a linear block after a convolution reads the flattened features directly. The
//! transformer blocks likewise view `[batch, T·d]` as `[batch·T, d]` (shape `[1, T, d]` per
//! sample).
//!
//! The forward is split into a *weighted* part and an optional trailing ReLU
//! ([`Block::has_relu`]). Graph-mode gradients (`docs/algorithms.md` §4.1) re-run the weighted
//! part on the saved block input with the backward's weights and take the ReLU mask from the
//! forward's saved output. For a residual block the weighted part is the whole block up to its
//! final ReLU, so its *inner* activations (inner ReLU masks, the batch statistics of its inner
//! batch norms) are recomputed from the saved block input with the backward's weights.

use burn::tensor::Tensor;
use burn::tensor::activation::relu;
use burn::tensor::module::{avg_pool2d, batch_norm, batch_norm_train, conv2d, max_pool2d};
use burn::tensor::ops::{AvgPoolOptions, ConvOptions, MaxPoolOptions};
use serde::{Deserialize, Serialize};

use crate::conv_kernel::{ConvGeometry, conv2d_forward};
use crate::norm_kernel::batch_norm_forward;
use crate::pool_kernel::{PoolGeometry, max_pool_forward};
use crate::tensor::{host_values, tensor1, tensor2};
use crate::transformer;

mod vjp;

pub(crate) use vjp::{Vjp, relu_backward};

/// The shape of one sample: `[channels, height, width]`.
pub type Shape = [usize; 3];

/// ε of batch normalisation (PyTorch's default).
pub const BN_EPSILON: f64 = 1e-5;

/// Momentum of the running statistics (PyTorch's default):
/// `running ← (1 − m)·running + m·batch`.
pub const BN_MOMENTUM: f64 = 0.1;

/// Channel expansion of a bottleneck block (ResNet-50).
pub const BOTTLENECK_EXPANSION: usize = 4;

/// Width of a decoder layer's MLP as a multiple of the embedding width (GPT's 4).
pub const MLP_EXPANSION: usize = 4;

/// Multiply-adds that unrolling one patch value costs, forward and backward together with the
/// fold, on this crate's CPU convolution kernels: fitted to the residual blocks of a
/// width-0.25 ResNet-18 profiled on one thread of the 2-core CI machine (2026-11-30: 0.022 ns
/// per multiply-add, about 3.9 ns per patch value), where a 16-channel block on a 32×32 map
/// took 5× the time of a 128-channel one on a 4×4 map with the same multiply-adds. With it
/// the ops split of ResNet-18/50 at W = 2 and 4 is within 12 % of the profiled optimum (was
/// 20–57 %); VGG-16's is 26–50 % off (was 16–31 %).
pub const PATCH_VALUE_OPS: f64 = 180.0;

/// One block of a model: the unit that partitioning assigns to stages.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Block {
    /// `y = x · W + b`, then ReLU if `relu`. Parameters: `weight` (`[out, in]` in files,
    /// `[in, out]` in memory) and `bias` (`[out]`).
    Linear {
        /// Input features.
        input: usize,
        /// Output features.
        output: usize,
        /// Whether a ReLU follows.
        relu: bool,
    },
    /// A square 2-D convolution (`weight` `[out, in, k, k]`, optional `bias`), then ReLU if
    /// `relu`.
    Conv2d {
        /// Input shape.
        input: Shape,
        /// Output channels.
        channels: usize,
        /// Kernel side.
        kernel: usize,
        /// Stride.
        stride: usize,
        /// Zero padding on every side.
        padding: usize,
        /// Whether the convolution has a bias.
        bias: bool,
        /// Whether a ReLU follows.
        relu: bool,
    },
    /// Batch normalisation over channels (`weight` γ, `bias` β; buffers `running_mean`,
    /// `running_var`), then ReLU if `relu`.
    BatchNorm2d {
        /// Input shape.
        input: Shape,
        /// Whether a ReLU follows.
        relu: bool,
    },
    /// A ReLU on its own.
    Relu {
        /// Features per sample.
        features: usize,
    },
    /// Square max pooling.
    MaxPool2d {
        /// Input shape.
        input: Shape,
        /// Window side.
        kernel: usize,
        /// Stride.
        stride: usize,
        /// Padding (ignored positions).
        padding: usize,
    },
    /// Square average pooling (padding counted, as PyTorch's default).
    AvgPool2d {
        /// Input shape.
        input: Shape,
        /// Window side.
        kernel: usize,
        /// Stride.
        stride: usize,
        /// Zero padding.
        padding: usize,
    },
    /// Mean over each channel's whole map: `[c, h, w] → [c, 1, 1]`.
    GlobalAvgPool {
        /// Input shape.
        input: Shape,
    },
    /// ResNet's basic block: conv3×3(stride)–BN–ReLU–conv3×3–BN, plus the input (through a
    /// 1×1 conv + BN when the shape changes), then ReLU.
    BasicBlock {
        /// Input shape.
        input: Shape,
        /// Output channels.
        planes: usize,
        /// Stride of the first convolution and of the shortcut.
        stride: usize,
    },
    /// ResNet's bottleneck block: conv1×1–BN–ReLU–conv3×3(stride)–BN–ReLU–conv1×1 (×4
    /// channels)–BN, plus the input (projected when the shape changes), then ReLU.
    Bottleneck {
        /// Input shape.
        input: Shape,
        /// Inner channels; the block outputs `4 × planes`.
        planes: usize,
        /// Stride of the 3×3 convolution and of the shortcut.
        stride: usize,
    },
    /// Token embedding plus learned position embedding: `T` token ids (stored as `f32`) →
    /// `[T, d]`. Parameters `token.weight` `[vocab, d]` and `position.weight` `[T, d]`.
    Embedding {
        /// T: tokens per sample.
        seq_len: usize,
        /// Distinct tokens.
        vocab_size: usize,
        /// d: embedding width.
        embed_dim: usize,
    },
    /// One pre-LayerNorm decoder layer: `x + Attn(LN(x))` with causal multi-head
    /// self-attention, then `x + MLP(LN(x))` with a GELU MLP of width `4d`. Parameters
    /// `ln1.*`, `attn.qkv.*` (`[3d, d]`, queries, keys and values stacked), `attn.proj.*`,
    /// `ln2.*`, `mlp.fc.*`, `mlp.proj.*`.
    DecoderLayer {
        /// T: tokens per sample.
        seq_len: usize,
        /// d: embedding width.
        embed_dim: usize,
        /// Attention heads (they divide d).
        heads: usize,
    },
    /// The language-model head: final layer norm (`ln.*`), then a linear map to the
    /// vocabulary (`head.*`): `[T, d]` → `[T, vocab]` logits.
    LmHead {
        /// T: tokens per sample.
        seq_len: usize,
        /// d: embedding width.
        embed_dim: usize,
        /// Distinct tokens.
        vocab_size: usize,
    },
}

/// ε of layer normalisation (PyTorch's default).
pub const LN_EPSILON: f64 = 1e-5;

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
enum Layer {
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
    fn params(self, prefix: &str) -> Vec<TensorInfo> {
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
    fn buffers(self, prefix: &str) -> Vec<TensorInfo> {
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
struct LayerPaths {
    main: Vec<(&'static str, Layer)>,
    shortcut: Option<Vec<(&'static str, Layer)>>,
}

impl LayerPaths {
    fn single(layer: Layer) -> Self {
        Self {
            main: vec![("", layer)],
            shortcut: None,
        }
    }

    fn layers(&self) -> impl Iterator<Item = &(&'static str, Layer)> {
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

/// `(n + 2p − k) / s + 1`, or `None` if the window does not fit or the stride is 0.
pub(crate) fn window_output(
    n: usize,
    kernel: usize,
    stride: usize,
    padding: usize,
) -> Option<usize> {
    let padded = n + 2 * padding;
    if kernel == 0 || stride == 0 || padded < kernel {
        return None;
    }
    Some((padded - kernel) / stride + 1)
}

impl Block {
    /// Shape of one input sample (`[features, 1, 1]` for a linear or ReLU block, `[1, 1, T]`
    /// token ids for an embedding, `[1, T, d]` for the other transformer blocks).
    pub fn input_shape(&self) -> Shape {
        match *self {
            Block::Linear { input, .. } => [input, 1, 1],
            Block::Relu { features } => [features, 1, 1],
            Block::Embedding { seq_len, .. } => [1, 1, seq_len],
            Block::DecoderLayer {
                seq_len, embed_dim, ..
            }
            | Block::LmHead {
                seq_len, embed_dim, ..
            } => [1, seq_len, embed_dim],
            Block::Conv2d { input, .. }
            | Block::BatchNorm2d { input, .. }
            | Block::MaxPool2d { input, .. }
            | Block::AvgPool2d { input, .. }
            | Block::GlobalAvgPool { input }
            | Block::BasicBlock { input, .. }
            | Block::Bottleneck { input, .. } => input,
        }
    }

    /// Whether the block reads images (`[c, h, w]`), not flat features or sequences.
    pub fn is_spatial(&self) -> bool {
        !matches!(
            self,
            Block::Linear { .. }
                | Block::Relu { .. }
                | Block::Embedding { .. }
                | Block::DecoderLayer { .. }
                | Block::LmHead { .. }
        )
    }

    /// Why this block cannot run, if it cannot: a zero size, a window larger than its
    /// (padded) input, which is what a too-small image gives, or heads that do not divide the
    /// embedding width.
    pub fn check(&self) -> Result<(), String> {
        let [c, h, w] = self.input_shape();
        if c == 0 || h == 0 || w == 0 {
            return Err(format!("has an empty input {c}×{h}×{w}"));
        }
        let window = |kernel, stride, padding| match (
            window_output(h, kernel, stride, padding),
            window_output(w, kernel, stride, padding),
        ) {
            (Some(_), Some(_)) => Ok(()),
            _ => Err(format!(
                "cannot apply a {kernel}×{kernel} window (stride {stride}, padding \
                     {padding}) to a {h}×{w} map"
            )),
        };
        match *self {
            Block::Linear { output: 0, .. } => Err("has 0 outputs".into()),
            Block::Conv2d { channels: 0, .. } => Err("has 0 output channels".into()),
            Block::BasicBlock { planes: 0, .. } | Block::Bottleneck { planes: 0, .. } => {
                Err("has 0 planes".into())
            }
            Block::Embedding { vocab_size: 0, .. } | Block::LmHead { vocab_size: 0, .. } => {
                Err("has an empty vocabulary".into())
            }
            Block::DecoderLayer {
                embed_dim, heads, ..
            } if heads == 0 || !embed_dim.is_multiple_of(heads) => Err(format!(
                "cannot split the embedding width {embed_dim} into {heads} attention heads"
            )),
            Block::Conv2d {
                kernel,
                stride,
                padding,
                ..
            }
            | Block::MaxPool2d {
                kernel,
                stride,
                padding,
                ..
            }
            | Block::AvgPool2d {
                kernel,
                stride,
                padding,
                ..
            } => window(kernel, stride, padding),
            Block::BasicBlock { stride, .. } | Block::Bottleneck { stride, .. } => {
                window(3, stride, 1)
            }
            _ => Ok(()),
        }
    }

    /// Shape of one output sample (`[features, 1, 1]` for a linear block). Meaningful only
    /// for a block that passes [`Block::check`].
    pub fn output_shape(&self) -> Shape {
        let [c, h, w] = self.input_shape();
        let map = |k, s, p| {
            [
                window_output(h, k, s, p).unwrap_or(0),
                window_output(w, k, s, p).unwrap_or(0),
            ]
        };
        match *self {
            Block::Linear { output, .. } => [output, 1, 1],
            Block::Relu { .. } | Block::BatchNorm2d { .. } | Block::DecoderLayer { .. } => {
                [c, h, w]
            }
            Block::Embedding {
                seq_len, embed_dim, ..
            } => [1, seq_len, embed_dim],
            Block::LmHead {
                seq_len,
                vocab_size,
                ..
            } => [1, seq_len, vocab_size],
            Block::Conv2d {
                channels,
                kernel,
                stride,
                padding,
                ..
            } => {
                let [oh, ow] = map(kernel, stride, padding);
                [channels, oh, ow]
            }
            Block::MaxPool2d {
                kernel,
                stride,
                padding,
                ..
            }
            | Block::AvgPool2d {
                kernel,
                stride,
                padding,
                ..
            } => {
                let [oh, ow] = map(kernel, stride, padding);
                [c, oh, ow]
            }
            Block::GlobalAvgPool { .. } => [c, 1, 1],
            Block::BasicBlock { planes, stride, .. } => {
                let [oh, ow] = map(3, stride, 1);
                [planes, oh, ow]
            }
            Block::Bottleneck { planes, stride, .. } => {
                let [oh, ow] = map(3, stride, 1);
                [BOTTLENECK_EXPANSION * planes, oh, ow]
            }
        }
    }

    /// Features each sample has on the way in.
    pub fn input_features(&self) -> usize {
        self.input_shape().iter().product()
    }

    /// Features each sample has on the way out.
    pub fn output_features(&self) -> usize {
        self.output_shape().iter().product()
    }

    /// A short human-readable description, e.g. `conv3x3 64`, `bottleneck 128/2` or
    /// `decoder 64/4h`.
    pub fn label(&self) -> String {
        match *self {
            Block::Linear { input, output, .. } => format!("linear {input}->{output}"),
            Block::Conv2d {
                channels,
                kernel,
                stride,
                ..
            } => {
                let s = if stride == 1 {
                    String::new()
                } else {
                    format!("/{stride}")
                };
                format!("conv{kernel}x{kernel} {channels}{s}")
            }
            Block::BatchNorm2d { input, .. } => format!("bn {}", input[0]),
            Block::Relu { .. } => "relu".into(),
            Block::MaxPool2d { kernel, .. } => format!("maxpool{kernel}"),
            Block::AvgPool2d { kernel, .. } => format!("avgpool{kernel}"),
            Block::GlobalAvgPool { .. } => "global-avgpool".into(),
            Block::BasicBlock { planes, stride, .. } => format!("basic {planes}/{stride}"),
            Block::Bottleneck { planes, stride, .. } => {
                format!("bottleneck {planes}/{stride}")
            }
            Block::Embedding {
                vocab_size,
                embed_dim,
                ..
            } => format!("embedding {vocab_size}->{embed_dim}"),
            Block::DecoderLayer {
                embed_dim, heads, ..
            } => format!("decoder {embed_dim}/{heads}h"),
            Block::LmHead {
                embed_dim,
                vocab_size,
                ..
            } => format!("lm-head {embed_dim}->{vocab_size}"),
        }
    }

    /// The weighted part as primitive layers, or `None` for a weight-free block.
    fn layer_paths(&self) -> Option<LayerPaths> {
        let conv = |in_channels, out_channels, kernel, stride, padding| Layer::Conv {
            in_channels,
            out_channels,
            kernel,
            stride,
            padding,
            bias: false,
        };
        let norm = |channels| Layer::Norm { channels };
        let projection = |c: usize, out: usize, stride: usize| {
            if stride != 1 || c != out {
                vec![
                    ("shortcut.0", conv(c, out, 1, stride, 0)),
                    ("shortcut.1", norm(out)),
                ]
            } else {
                Vec::new()
            }
        };
        match *self {
            Block::Linear { input, output, .. } => {
                Some(LayerPaths::single(Layer::Linear { input, output }))
            }
            Block::Conv2d {
                input,
                channels,
                kernel,
                stride,
                padding,
                bias,
                ..
            } => Some(LayerPaths::single(Layer::Conv {
                in_channels: input[0],
                out_channels: channels,
                kernel,
                stride,
                padding,
                bias,
            })),
            Block::BatchNorm2d { input, .. } => Some(LayerPaths::single(norm(input[0]))),
            Block::BasicBlock {
                input,
                planes,
                stride,
            } => Some(LayerPaths {
                main: vec![
                    ("conv1", conv(input[0], planes, 3, stride, 1)),
                    ("bn1", norm(planes)),
                    ("", Layer::Relu),
                    ("conv2", conv(planes, planes, 3, 1, 1)),
                    ("bn2", norm(planes)),
                ],
                shortcut: Some(projection(input[0], planes, stride)),
            }),
            Block::Bottleneck {
                input,
                planes,
                stride,
            } => {
                let out = BOTTLENECK_EXPANSION * planes;
                Some(LayerPaths {
                    main: vec![
                        ("conv1", conv(input[0], planes, 1, 1, 0)),
                        ("bn1", norm(planes)),
                        ("", Layer::Relu),
                        ("conv2", conv(planes, planes, 3, stride, 1)),
                        ("bn2", norm(planes)),
                        ("", Layer::Relu),
                        ("conv3", conv(planes, out, 1, 1, 0)),
                        ("bn3", norm(out)),
                    ],
                    shortcut: Some(projection(input[0], out, stride)),
                })
            }
            Block::Embedding {
                seq_len,
                vocab_size,
                embed_dim,
            } => Some(LayerPaths {
                main: vec![
                    (
                        "token",
                        Layer::Embedding {
                            rows: vocab_size,
                            width: embed_dim,
                        },
                    ),
                    (
                        "position",
                        Layer::Embedding {
                            rows: seq_len,
                            width: embed_dim,
                        },
                    ),
                ],
                shortcut: None,
            }),
            Block::DecoderLayer { embed_dim: d, .. } => {
                let linear = |input, output| Layer::Linear { input, output };
                let norm = Layer::FeatureNorm { features: d };
                Some(LayerPaths {
                    main: vec![
                        ("ln1", norm),
                        ("attn.qkv", linear(d, 3 * d)),
                        ("attn.proj", linear(d, d)),
                        ("ln2", norm),
                        ("mlp.fc", linear(d, MLP_EXPANSION * d)),
                        ("mlp.proj", linear(MLP_EXPANSION * d, d)),
                    ],
                    shortcut: None,
                })
            }
            Block::LmHead {
                embed_dim,
                vocab_size,
                ..
            } => Some(LayerPaths {
                main: vec![
                    (
                        "ln",
                        Layer::FeatureNorm {
                            features: embed_dim,
                        },
                    ),
                    (
                        "head",
                        Layer::Linear {
                            input: embed_dim,
                            output: vocab_size,
                        },
                    ),
                ],
                shortcut: None,
            }),
            Block::Relu { .. }
            | Block::MaxPool2d { .. }
            | Block::AvgPool2d { .. }
            | Block::GlobalAvgPool { .. } => None,
        }
    }

    /// The trainable parameter tensors, in order.
    pub(crate) fn param_infos(&self) -> Vec<TensorInfo> {
        self.layer_paths().map_or_else(Vec::new, |paths| {
            paths
                .layers()
                .flat_map(|(prefix, l)| l.params(prefix))
                .collect()
        })
    }

    /// The buffers (batch norms' running statistics), in order.
    pub(crate) fn buffer_infos(&self) -> Vec<TensorInfo> {
        self.layer_paths().map_or_else(Vec::new, |paths| {
            paths
                .layers()
                .flat_map(|(prefix, l)| l.buffers(prefix))
                .collect()
        })
    }

    /// The cost of one sample's forward, counted from the shapes alone, in multiply-adds: those
    /// of linear layers, convolutions and attention; [`PATCH_VALUE_OPS`] per value a
    /// convolution unrolls (`C·k·k` per output position; none for a 1×1 stride-1 one), the
    /// memory work of this crate's CPU kernels in multiply-add equivalents; one per value of an
    /// elementwise layer (normalisation, ReLU, pooling windows, embedding lookups). A
    /// deterministic stand-in for the block's compute time: what
    /// [`PartitionMethod::Ops`](crate::PartitionMethod::Ops) balances. Backward costs about
    /// twice the forward for every kind of layer here, so the forward's count ranks stages as
    /// forward + backward would.
    pub fn forward_ops(&self) -> f64 {
        let [c, h, w] = self.input_shape();
        let values = |shape: Shape| (shape[0] * shape[1] * shape[2]) as f64;
        match *self {
            Block::Relu { features } => features as f64,
            Block::GlobalAvgPool { .. } => values([c, h, w]),
            Block::MaxPool2d { kernel, .. } | Block::AvgPool2d { kernel, .. } => {
                values(self.output_shape()) * (kernel * kernel) as f64
            }
            Block::DecoderLayer {
                seq_len, embed_dim, ..
            } => {
                let (seq, d) = (seq_len as f64, embed_dim as f64);
                // Per position: the layer paths' linear layers (qkv, projection, MLP) and norms;
                // attention: scores and the weighted sum of values, seq × seq × d each.
                seq * self.layer_paths_ops([1, 1, 1]) + 2.0 * seq * seq * d
            }
            Block::LmHead { seq_len, .. } => seq_len as f64 * self.layer_paths_ops([1, 1, 1]),
            Block::Embedding {
                seq_len, embed_dim, ..
            } => 2.0 * (seq_len * embed_dim) as f64,
            Block::Linear { .. }
            | Block::Conv2d { .. }
            | Block::BatchNorm2d { .. }
            | Block::BasicBlock { .. }
            | Block::Bottleneck { .. } => self.layer_paths_ops([c, h, w]),
        }
    }

    /// [`Block::forward_ops`] of the layers of the block's layer paths (main path and shortcut,
    /// each from `input`), with their linear and norm layers applied to one position.
    fn layer_paths_ops(&self, input: Shape) -> f64 {
        let Some(paths) = self.layer_paths() else {
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
                    Layer::Norm { channels } => channels as f64 * positions,
                    Layer::FeatureNorm { features } => features as f64,
                    Layer::Embedding { width, .. } => width as f64,
                    Layer::Relu => c as f64 * positions,
                };
            }
            ops
        };
        path_ops(&paths.main) + paths.shortcut.as_deref().map_or(0.0, path_ops)
    }

    /// Number of scalar parameters (buffers excluded, as PyTorch counts).
    pub fn param_count(&self) -> usize {
        self.param_sizes().iter().sum()
    }

    /// Names of the parameter tensors, in order (the suffix after `layers.<i>.`, e.g. `weight`
    /// or `conv1.weight`).
    pub fn param_names(&self) -> Vec<String> {
        self.param_infos().into_iter().map(|t| t.name).collect()
    }

    /// Names of the buffers (running statistics), in order.
    pub fn buffer_names(&self) -> Vec<String> {
        self.buffer_infos().into_iter().map(|t| t.name).collect()
    }

    /// Names of everything a version of the block stores: the parameters, then the buffers
    /// (the order of [`BlockParams::to_file_layout`](crate::BlockParams::to_file_layout)).
    pub fn state_names(&self) -> Vec<String> {
        let mut names = self.param_names();
        names.extend(self.buffer_names());
        names
    }

    /// Number of elements of each tensor of [`Block::state_names`], in order.
    pub fn state_sizes(&self) -> Vec<usize> {
        let mut sizes = self.param_sizes();
        sizes.extend(self.buffer_sizes());
        sizes
    }

    /// Shapes of the parameter tensors in files (PyTorch layout), in order.
    pub fn file_shapes(&self) -> Vec<Vec<usize>> {
        self.param_infos().into_iter().map(|t| t.shape).collect()
    }

    /// Number of elements of each parameter tensor, in order.
    pub fn param_sizes(&self) -> Vec<usize> {
        self.param_infos().iter().map(TensorInfo::len).collect()
    }

    /// Number of elements of each buffer, in order.
    pub fn buffer_sizes(&self) -> Vec<usize> {
        self.buffer_infos().iter().map(TensorInfo::len).collect()
    }

    /// Whether the forward ends with a ReLU applied to the weighted part's output.
    pub fn has_relu(&self) -> bool {
        match *self {
            Block::Linear { relu, .. }
            | Block::Conv2d { relu, .. }
            | Block::BatchNorm2d { relu, .. } => relu,
            Block::Relu { .. } | Block::BasicBlock { .. } | Block::Bottleneck { .. } => true,
            Block::MaxPool2d { .. }
            | Block::AvgPool2d { .. }
            | Block::GlobalAvgPool { .. }
            | Block::Embedding { .. }
            | Block::DecoderLayer { .. }
            | Block::LmHead { .. } => false,
        }
    }

    /// The forward before the trailing ReLU. `x` is `[batch, input_features]`; `params` may be
    /// plain or autodiff tensors, as long as they match `x`.
    pub(crate) fn forward_weighted(
        &self,
        x: Tensor<2>,
        params: &[Tensor<1>],
        norm: Norm<'_>,
    ) -> Tensor<2> {
        self.forward_weighted_recording(x, params, norm, None)
    }

    /// [`Block::forward_weighted`] that also appends the input of every layer of the block's
    /// layer paths (main path, then shortcut; nothing for a block without them) to
    /// `layer_inputs`: what the closed-form backward ([`Block::spatial_vjp`]) needs of a
    /// residual block.
    fn forward_weighted_recording(
        &self,
        x: Tensor<2>,
        params: &[Tensor<1>],
        norm: Norm<'_>,
        layer_inputs: Option<&mut Vec<Tensor<4>>>,
    ) -> Tensor<2> {
        let batch = x.dims()[0];
        let [c, h, w] = self.input_shape();
        let image = || x.clone().reshape([batch, c, h, w]);
        let out = match *self {
            Block::Linear { input, output, .. } => {
                let [weight, bias] = params else {
                    panic!(
                        "linear block with {} parameter tensors instead of 2",
                        params.len()
                    );
                };
                return affine(x, weight, bias, input, output);
            }
            Block::Embedding {
                seq_len,
                vocab_size,
                embed_dim,
            } => return transformer::embed(x, params, seq_len, vocab_size, embed_dim),
            Block::DecoderLayer {
                seq_len,
                embed_dim,
                heads,
            } => return transformer::decoder_layer(x, params, seq_len, embed_dim, heads),
            Block::LmHead {
                seq_len,
                embed_dim,
                vocab_size,
            } => return transformer::lm_head(x, params, seq_len, embed_dim, vocab_size),
            Block::Relu { .. } => return x,
            Block::MaxPool2d {
                kernel,
                stride,
                padding,
                ..
            } => {
                let geometry = self.max_pool_geometry();
                if let Some(x) = host_values(&x) {
                    let pooled = max_pool_forward(&geometry, &x);
                    return tensor2(pooled, batch, self.output_features());
                }
                max_pool2d(
                    image(),
                    MaxPoolOptions::new([kernel, kernel])
                        .with_stride([stride, stride])
                        .with_padding([padding, padding]),
                )
            }
            Block::AvgPool2d {
                kernel,
                stride,
                padding,
                ..
            } => avg_pool2d(
                image(),
                AvgPoolOptions::new([kernel, kernel])
                    .with_stride([stride, stride])
                    .with_padding([padding, padding]),
            ),
            Block::GlobalAvgPool { .. } => {
                return x.reshape([batch, c, h * w]).mean_dim(2).reshape([batch, c]);
            }
            Block::Conv2d { .. }
            | Block::BatchNorm2d { .. }
            | Block::BasicBlock { .. }
            | Block::Bottleneck { .. } => {
                let paths = self
                    .layer_paths()
                    .expect("weighted blocks have layer paths");
                run_layer_paths(&paths, image(), params, norm, layer_inputs)
            }
        };
        out.reshape([batch, self.output_features()])
    }

    /// The window geometry of a [`Block::MaxPool2d`].
    pub(crate) fn max_pool_geometry(&self) -> PoolGeometry {
        let Block::MaxPool2d {
            input: [_, height, width],
            kernel,
            stride,
            padding,
        } = *self
        else {
            panic!("max_pool_geometry of {self:?}");
        };
        PoolGeometry {
            height,
            width,
            kernel,
            stride,
            padding,
        }
    }

    /// The whole forward of the block.
    pub(crate) fn forward(&self, x: Tensor<2>, params: &[Tensor<1>], norm: Norm<'_>) -> Tensor<2> {
        self.forward_recording(x, params, norm, None)
    }

    /// [`Block::forward`] that records the input of every layer of the block's layer paths in
    /// `layer_inputs` if given (see [`Block::spatial_vjp`]).
    pub(crate) fn forward_recording(
        &self,
        x: Tensor<2>,
        params: &[Tensor<1>],
        norm: Norm<'_>,
        layer_inputs: Option<&mut Vec<Tensor<4>>>,
    ) -> Tensor<2> {
        let pre = self.forward_weighted_recording(x, params, norm, layer_inputs);
        if self.has_relu() { relu(pre) } else { pre }
    }
}

/// `x · W + b` for `x` `[rows, input]`, a weight in memory layout (`[input, output]`
/// flattened) and a bias `[output]`.
pub(crate) fn affine(
    x: Tensor<2>,
    weight: &Tensor<1>,
    bias: &Tensor<1>,
    input: usize,
    output: usize,
) -> Tensor<2> {
    x.matmul(weight.clone().reshape([input, output]))
        .add(bias.clone().reshape([1, output]))
}

/// Runs the layers of `paths` on `x` (`[batch, c, h, w]`), consuming `params` in order;
/// appends each layer's input to `layer_inputs` if given (main path, then shortcut).
fn run_layer_paths(
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
        Some(layers) if layers.is_empty() => main.add(x),
        Some(layers) => {
            let shortcut = run(layers, x);
            main.add(shortcut)
        }
    }
}

/// The geometry of convolution layer `layer` on an input of `dims` (`[batch, c, h, w]`).
fn conv_geometry(layer: Layer, [batch, _, height, width]: [usize; 4]) -> ConvGeometry {
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
