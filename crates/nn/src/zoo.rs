//! The model zoo: LeNet-5, AlexNet, VGG-11/16, ResNet-18/50 and a small GPT as sequences of
//! blocks.
//!
//! The seed papers evaluate VGG-16, ResNet-50 and AlexNet; users of a pipeline trainer expect
//! them, and LeNet-5 is the small one that trains on a CPU in minutes. Each architecture is
//! written once, as the block sequence of a well-known 32×32 (CIFAR) variant, and adapts to
//! the data's input shape (any channel count; any size the network can take):
//!
//! - `lenet5`: conv5×5(6)–pool–conv5×5(16)–pool–fc120–fc84–fc, ReLU and max pooling (the
//!   modern variant); the first convolution pads by 2 when the input is smaller than 32×32,
//!   so 28×28 MNIST images give the classic 16×5×5 features.
//! - `alexnet`: the CIFAR AlexNet of `bearpaw/pytorch-classification` (conv11×11/4, conv5×5,
//!   three conv3×3, three max pools, one linear classifier).
//! - `vgg11`, `vgg16`: `kuangliu/pytorch-cifar`'s VGG with batch norm (conv3×3–BN–ReLU,
//!   max pools, a linear classifier on 512 features), plus a global average pool so inputs
//!   larger than 32×32 work too (the identity on 32×32).
//! - `resnet18`, `resnet50`: `kuangliu/pytorch-cifar`'s ResNet (3×3 stem without max pool,
//!   four groups of basic or bottleneck blocks, global average pool, linear classifier).
//!
//! - `gpt` ([`GptConfig`]): a decoder-only transformer language model for `text:PATH` data:
//!   token + learned position embedding (one block), `depth` pre-LayerNorm decoder layers
//!   (causal multi-head self-attention and a GELU MLP of width 4d, both residual, one block
//!   each), and a head (final layer norm, linear to the vocabulary). Its context length T is
//!   the data's window length and its vocabulary the data's classes; `--embed-dim`, `--heads`
//!   and `--depth` (one number: the layers) size it.
//!
//! No dropout anywhere: it would need random masks per micro-batch that a graph-mode backward
//! must reproduce, and the CIFAR variants above train well without it.
//!
//! `width` multiplies every channel count and hidden width (rounded, at least 1), and `depth`
//! overrides the number of residual blocks per group, so tests and CPU runs can use small
//! versions of the same architectures. With `width` 1 and default depth the parameter counts
//! equal the reference implementations' (tested).

use serde::{Deserialize, Serialize};
use timeprest_data::Dataset;

use crate::block::{
    BasicBlock, BatchNorm2d, Block, Bottleneck, Conv2d, DecoderLayer, Embedding, GlobalAvgPool,
    Linear, LmHead, MaxPool2d, Shape,
};
use crate::memory::{MAX_BLOCKS, MAX_LAYER_WIDTH, flag_number, joined, too_deep, too_wide};
use crate::{MlpConfig, ModelSpec, NnError};

/// Names accepted by `--model`.
pub const MODEL_NAMES: [&str; 8] = [
    "mlp", "lenet5", "alexnet", "vgg11", "vgg16", "resnet18", "resnet50", "gpt",
];

/// A convolutional architecture of the zoo.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Arch {
    /// LeNet-5.
    Lenet5,
    /// AlexNet, CIFAR variant.
    Alexnet,
    /// VGG-11 with batch norm.
    Vgg11,
    /// VGG-16 with batch norm.
    Vgg16,
    /// ResNet-18 (basic blocks 2, 2, 2, 2).
    Resnet18,
    /// ResNet-50 (bottleneck blocks 3, 4, 6, 3).
    Resnet50,
}

impl Arch {
    /// The name `--model` uses.
    pub fn name(self) -> &'static str {
        match self {
            Arch::Lenet5 => "lenet5",
            Arch::Alexnet => "alexnet",
            Arch::Vgg11 => "vgg11",
            Arch::Vgg16 => "vgg16",
            Arch::Resnet18 => "resnet18",
            Arch::Resnet50 => "resnet50",
        }
    }

    /// The architecture called `name`, if any.
    pub fn from_name(name: &str) -> Option<Self> {
        [
            Arch::Lenet5,
            Arch::Alexnet,
            Arch::Vgg11,
            Arch::Vgg16,
            Arch::Resnet18,
            Arch::Resnet50,
        ]
        .into_iter()
        .find(|a| a.name() == name)
    }

    /// Residual blocks per group by default (empty for networks without groups).
    pub fn default_depth(self) -> Vec<usize> {
        match self {
            Arch::Resnet18 => vec![2, 2, 2, 2],
            Arch::Resnet50 => vec![3, 4, 6, 3],
            _ => Vec::new(),
        }
    }
}

/// A convolutional network: architecture, input shape, classes and size knobs.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NetConfig {
    /// The architecture.
    pub arch: Arch,
    /// Shape of one input sample `[channels, height, width]`.
    pub input: Shape,
    /// Output classes.
    pub classes: usize,
    /// Channel and hidden-width multiplier (1 = the reference size).
    pub width: f64,
    /// Residual blocks per group (ResNets; empty = the architecture's default).
    pub depth: Vec<usize>,
}

/// VGG configurations: output channels of each conv3×3, 0 for a 2×2 max pool.
const VGG11: [usize; 13] = [64, 0, 128, 0, 256, 256, 0, 512, 512, 0, 512, 512, 0];
const VGG16: [usize; 18] = [
    64, 64, 0, 128, 128, 0, 256, 256, 256, 0, 512, 512, 512, 0, 512, 512, 512, 0,
];

/// Appends blocks while tracking the current shape, failing with the model and input named.
struct Builder<'a> {
    config: &'a NetConfig,
    shape: Shape,
    blocks: Vec<Block>,
}

impl Builder<'_> {
    /// `channels` times the width multiplier, rounded, at least 1; refused beyond
    /// [`MAX_LAYER_WIDTH`] (an `as usize` cast would saturate, and later products overflow).
    fn scale(&self, channels: usize) -> Result<usize, NnError> {
        let scaled = (channels as f64 * self.config.width).round().max(1.0);
        if scaled > MAX_LAYER_WIDTH as f64 {
            return Err(too_wide(
                format!("--width {}", flag_number(self.config.width)),
                self.config.arch.name(),
                "channels",
                scaled,
            ));
        }
        Ok(scaled as usize)
    }

    fn push(&mut self, block: Block) -> Result<(), NnError> {
        if let Err(why) = block.check() {
            let [c, h, w] = self.config.input;
            return Err(NnError::InvalidModel(format!(
                "model {} cannot take {c}×{h}×{w} inputs: block {} ({}) {why}",
                self.config.arch.name(),
                self.blocks.len(),
                block.label()
            )));
        }
        self.shape = block.output_shape();
        self.blocks.push(block);
        Ok(())
    }

    fn conv(
        &mut self,
        channels: usize,
        kernel: usize,
        stride: usize,
        padding: usize,
        bias: bool,
        relu: bool,
    ) -> Result<(), NnError> {
        let channels = self.scale(channels)?;
        self.push(Block::Conv2d(Conv2d {
            input: self.shape,
            channels,
            kernel,
            stride,
            padding,
            bias,
            relu,
        }))
    }

    fn norm_relu(&mut self) -> Result<(), NnError> {
        self.push(Block::BatchNorm2d(BatchNorm2d {
            input: self.shape,
            relu: true,
        }))
    }

    fn max_pool(&mut self, kernel: usize) -> Result<(), NnError> {
        self.push(Block::MaxPool2d(MaxPool2d {
            input: self.shape,
            kernel,
            stride: kernel,
            padding: 0,
        }))
    }

    fn global_pool(&mut self) -> Result<(), NnError> {
        self.push(Block::GlobalAvgPool(GlobalAvgPool { input: self.shape }))
    }

    /// A linear layer of `output` features (scaled unless it is the classifier).
    fn linear(&mut self, output: usize, classifier: bool) -> Result<(), NnError> {
        let output = if classifier {
            output
        } else {
            self.scale(output)?
        };
        // Saturating: a flattened map too large to count is refused by the memory check.
        let input = self.shape.iter().fold(1usize, |n, &s| n.saturating_mul(s));
        self.push(Block::Linear(Linear {
            input,
            output,
            relu: !classifier,
        }))
    }
}

impl NetConfig {
    /// The blocks, in order.
    ///
    /// # Errors
    /// [`NnError::InvalidModel`] if a size is zero, `width` is not a positive number, `depth`
    /// does not fit the architecture, or the input is too small (naming the model, the input
    /// shape and the first block that cannot run).
    pub fn blocks(&self) -> Result<Vec<Block>, NnError> {
        let name = self.arch.name();
        if !(self.width.is_finite() && self.width > 0.0) {
            return Err(NnError::InvalidModel(format!(
                "model {name}: width multiplier {} must be a positive number",
                self.width
            )));
        }
        if self.classes == 0 {
            return Err(NnError::InvalidModel(format!("model {name}: 0 classes")));
        }
        let mut b = Builder {
            config: self,
            shape: self.input,
            blocks: Vec::new(),
        };
        match self.arch {
            Arch::Lenet5 => {
                let padding = if self.input[1] < 32 || self.input[2] < 32 {
                    2
                } else {
                    0
                };
                b.conv(6, 5, 1, padding, true, true)?;
                b.max_pool(2)?;
                b.conv(16, 5, 1, 0, true, true)?;
                b.max_pool(2)?;
                b.linear(120, false)?;
                b.linear(84, false)?;
                b.linear(self.classes, true)?;
            }
            Arch::Alexnet => {
                b.conv(64, 11, 4, 5, true, true)?;
                b.max_pool(2)?;
                b.conv(192, 5, 1, 2, true, true)?;
                b.max_pool(2)?;
                b.conv(384, 3, 1, 1, true, true)?;
                b.conv(256, 3, 1, 1, true, true)?;
                b.conv(256, 3, 1, 1, true, true)?;
                b.max_pool(2)?;
                b.linear(self.classes, true)?;
            }
            Arch::Vgg11 | Arch::Vgg16 => {
                let layers: &[usize] = if self.arch == Arch::Vgg11 {
                    &VGG11
                } else {
                    &VGG16
                };
                for &channels in layers {
                    if channels == 0 {
                        b.max_pool(2)?;
                    } else {
                        b.conv(channels, 3, 1, 1, true, false)?;
                        b.norm_relu()?;
                    }
                }
                b.global_pool()?;
                b.linear(self.classes, true)?;
            }
            Arch::Resnet18 | Arch::Resnet50 => {
                let depth = if self.depth.is_empty() {
                    self.arch.default_depth()
                } else {
                    self.depth.clone()
                };
                if depth.len() != 4 || depth.contains(&0) {
                    return Err(NnError::InvalidModel(format!(
                        "model {name}: depth must be 4 positive numbers of blocks per group, \
                         got {depth:?}"
                    )));
                }
                let residual_blocks: f64 = depth.iter().map(|&d| d as f64).sum();
                if residual_blocks > MAX_BLOCKS as f64 {
                    let flags = format!("--depth {}", joined(&depth));
                    return Err(too_deep(flags, name, residual_blocks + 4.0));
                }
                b.conv(64, 3, 1, 1, false, false)?;
                b.norm_relu()?;
                for (group, (&blocks, planes)) in depth.iter().zip([64, 128, 256, 512]).enumerate()
                {
                    let planes = b.scale(planes)?;
                    for i in 0..blocks {
                        let stride = if group > 0 && i == 0 { 2 } else { 1 };
                        let input = b.shape;
                        b.push(if self.arch == Arch::Resnet18 {
                            Block::BasicBlock(BasicBlock {
                                input,
                                planes,
                                stride,
                            })
                        } else {
                            Block::Bottleneck(Bottleneck {
                                input,
                                planes,
                                stride,
                            })
                        })?;
                    }
                }
                b.global_pool()?;
                b.linear(self.classes, true)?;
            }
        }
        Ok(b.blocks)
    }
}

/// A decoder-only transformer language model (`gpt`): sizes of its blocks.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GptConfig {
    /// T: tokens per sample (the context length).
    pub seq_len: usize,
    /// Distinct tokens.
    pub vocab_size: usize,
    /// d: embedding width.
    pub embed_dim: usize,
    /// Attention heads per layer (they divide d).
    pub heads: usize,
    /// Decoder layers.
    pub layers: usize,
}

impl GptConfig {
    /// The name `--model` uses.
    pub const NAME: &'static str = "gpt";
    /// Embedding width unless told otherwise: small enough to train on a CPU in seconds.
    pub const DEFAULT_EMBED_DIM: usize = 64;
    /// Attention heads unless told otherwise.
    pub const DEFAULT_HEADS: usize = 4;
    /// Decoder layers unless told otherwise.
    pub const DEFAULT_LAYERS: usize = 2;

    /// The blocks: embedding, `layers` decoder layers, head.
    ///
    /// # Errors
    /// [`NnError::InvalidModel`] if a size is zero or the heads do not divide the embedding
    /// width.
    pub fn blocks(&self) -> Result<Vec<Block>, NnError> {
        let GptConfig {
            seq_len,
            vocab_size,
            embed_dim,
            heads,
            layers,
        } = *self;
        if [seq_len, vocab_size, embed_dim, heads, layers].contains(&0) {
            return Err(NnError::InvalidModel(format!(
                "model gpt: every size must be positive: sequence length {seq_len}, vocabulary \
                 {vocab_size}, embedding width {embed_dim}, heads {heads}, layers {layers}"
            )));
        }
        if embed_dim > MAX_LAYER_WIDTH {
            return Err(too_wide(
                format!("--embed-dim {embed_dim}"),
                Self::NAME,
                "embedding features",
                embed_dim as f64,
            ));
        }
        if layers > MAX_BLOCKS {
            return Err(too_deep(
                format!("--depth {layers}"),
                Self::NAME,
                layers as f64 + 2.0,
            ));
        }
        let layer = Block::DecoderLayer(DecoderLayer {
            seq_len,
            embed_dim,
            heads,
        });
        if let Err(why) = layer.check() {
            return Err(NnError::InvalidModel(format!(
                "model gpt: a decoder layer {why}"
            )));
        }
        let embedding = Block::Embedding(Embedding {
            seq_len,
            vocab_size,
            embed_dim,
        });
        let head = Block::LmHead(LmHead {
            seq_len,
            embed_dim,
            vocab_size,
        });
        Ok(std::iter::once(embedding)
            .chain(std::iter::repeat_n(layer, layers))
            .chain(std::iter::once(head))
            .collect())
    }
}

/// The size knobs of `--model`: what the command line says besides the name.
#[derive(Clone, Debug, PartialEq)]
pub struct ModelSize {
    /// MLP hidden widths.
    pub hidden: Vec<usize>,
    /// Channel multiplier of the convolutional networks.
    pub width: f64,
    /// Residual blocks per group (ResNets), or decoder layers (`gpt`, one number); empty =
    /// default.
    pub depth: Vec<usize>,
    /// Embedding width of `gpt`.
    pub embed_dim: usize,
    /// Attention heads of `gpt`.
    pub heads: usize,
}

impl Default for ModelSize {
    /// The reference sizes: the MLP of `timeprest train`'s default, width 1, default depth,
    /// `gpt`'s default width and heads.
    fn default() -> Self {
        Self {
            hidden: vec![128, 64],
            width: 1.0,
            depth: Vec::new(),
            embed_dim: GptConfig::DEFAULT_EMBED_DIM,
            heads: GptConfig::DEFAULT_HEADS,
        }
    }
}

impl ModelSpec {
    /// The model `name` (one of [`MODEL_NAMES`]) for the samples of `data`, sized by `size`:
    /// [`ModelSpec::from_name`] with the data's shape and classes, checked against the data.
    ///
    /// # Errors
    /// The errors of [`ModelSpec::from_name`] (with the data set named), and
    /// [`NnError::Mismatch`] naming model, data set and shapes if the data does not fit (e.g. a
    /// classifier on a language-modelling set).
    pub fn for_data(name: &str, data: &Dataset, size: &ModelSize) -> Result<Self, NnError> {
        if name != GptConfig::NAME && data.targets_per_sample != 1 {
            let [c, h, w] = data.shape;
            return Err(NnError::Mismatch(format!(
                "model {name} predicts one class per sample, but data set {} has {c}×{h}×{w} \
                 samples with {} targets each (a language-modelling set: use --model gpt)",
                data.name, data.targets_per_sample
            )));
        }
        let spec =
            Self::from_name(name, data.shape, data.num_classes, size).map_err(|e| match e {
                NnError::InvalidModel(why) => {
                    NnError::InvalidModel(format!("{why} (data set {})", data.name))
                }
                other => other,
            })?;
        spec.check_data(data)?;
        Ok(spec)
    }

    /// The model `name` (one of [`MODEL_NAMES`]) for samples of shape `input` and `classes`
    /// classes, sized by `size`. `gpt` takes `[1, 1, T]` token windows and `classes` is its
    /// vocabulary.
    ///
    /// # Errors
    /// [`NnError::InvalidModel`] for an unknown name (listing the valid ones), or a spec that
    /// cannot take `input` (naming model, input shape and the failing block).
    pub fn from_name(
        name: &str,
        input: Shape,
        classes: usize,
        size: &ModelSize,
    ) -> Result<Self, NnError> {
        let spec = if name == GptConfig::NAME {
            let [c, h, w] = input;
            if [c, h] != [1, 1] {
                return Err(NnError::InvalidModel(format!(
                    "model gpt takes windows of 1×1×T token ids (a text:PATH data set), not \
                     {c}×{h}×{w} inputs"
                )));
            }
            let layers = match size.depth[..] {
                [] => GptConfig::DEFAULT_LAYERS,
                [layers] => layers,
                _ => {
                    return Err(NnError::InvalidModel(format!(
                        "model gpt: depth must be one number of decoder layers, got {:?}",
                        size.depth
                    )));
                }
            };
            ModelSpec::Gpt(GptConfig {
                seq_len: w,
                vocab_size: classes,
                embed_dim: size.embed_dim,
                heads: size.heads,
                layers,
            })
        } else if name == MlpConfig::NAME {
            ModelSpec::Mlp(MlpConfig {
                input: input.iter().product(),
                hidden: size.hidden.clone(),
                classes,
            })
        } else {
            let arch = Arch::from_name(name).ok_or_else(|| {
                NnError::InvalidModel(format!(
                    "unknown model `{name}`; valid models: {}",
                    MODEL_NAMES.join(", ")
                ))
            })?;
            ModelSpec::Net(NetConfig {
                arch,
                input,
                classes,
                width: size.width,
                depth: size.depth.clone(),
            })
        };
        spec.validate()?;
        Ok(spec)
    }
}
