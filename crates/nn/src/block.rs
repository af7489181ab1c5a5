//! Blocks: the units a model is made of, and the places a pipeline can be cut.
//!
//! A block is a pure description (`Copy`, hashable, serialisable): its input shape, its kind
//! and its hyper-parameters. Its parameters are plain 1-D tensors held elsewhere
//! ([`BlockParams`](crate::BlockParams)), and its forward is a function of (input, parameters,
//! normalisation statistics) built from burn's functional ops. Residual blocks (ResNet's
//! `BasicBlock` and `Bottleneck`) are *one* block each, so a pipeline cut never falls inside a
//! skip connection, and the partitioner sees the same units as the papers' layer tables.
//!
//! Each kind of block is a plain struct in a module of its family (`linear`, `conv`,
//! `batch_norm`, `pool`, `residual`, `transformer`) that implements the private `BlockKind`
//! trait: its shape rules, checks, label, parameter layout, cost counts, forward and
//! closed-form backward sit together there, so adding a kind means one struct, one trait
//! implementation and one variant of [`Block`]. [`Block`] is the serialisable sum of the kinds;
//! its one `match` picks the kind, and its methods delegate to it. What several kinds share is
//! here (window arithmetic, the image view of messages) or in `layers` (the primitive layers,
//! the layer-path forward and cost) and `vjp` (the layer-path backward).
//!
//! Every weighted block is described once, as small [`LayerPaths`] of primitive layers (linear,
//! convolution, batch norm, layer norm, embedding table, ReLU, and for residual blocks a
//! shortcut): the parameter names, file shapes, memory layouts, initialisation and
//! running-statistics buffers all come from that one description, and the convolutional
//! blocks' forward too, so they cannot disagree. The transformer blocks of `gpt` (token and
//! position embedding, decoder layer, language-model head) take their parameters from their
//! layer paths in order.
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
use serde::{Deserialize, Serialize};

mod batch_norm;
mod conv;
mod layers;
mod linear;
mod pool;
mod residual;
mod transformer;
mod vjp;

use crate::elementwise_kernel::relu;
pub use batch_norm::BatchNorm2d;
pub use conv::Conv2d;
pub(crate) use layers::{Init, Norm, TensorInfo};
use layers::{Layer, LayerPaths, layer_paths_forward, layer_paths_ops};
pub(crate) use linear::linear_weight_grad;
pub use linear::{Linear, Relu};
pub use pool::{AvgPool2d, GlobalAvgPool, MaxPool2d};
pub use residual::{BasicBlock, Bottleneck};
pub use transformer::{DecoderLayer, Embedding, LmHead};
pub(crate) use vjp::Vjp;
use vjp::layer_paths_vjp;

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
/// fold, on this crate's CPU convolution kernels. Fitted together with [`NORM_VALUE_OPS`] to
/// one-thread profiles of every zoo conv model at width 0.25 on the 2-core CI machine
/// (2026-12-01, 32-image micro-batches, with glibc's allocator kept off `mmap` as it is in a
/// training run): a 16-channel residual block on a 32×32 map takes twice the time of a
/// 128-channel one on a 4×4 map with the same multiply-adds. With both constants the ops
/// split's slowest stage is within 10 % of the profiled optimum's for lenet5, alexnet,
/// vgg11/16 and resnet18/50 at W = 2 and 4 (mean 1.011; with 180 and 1, the constants
/// fitted to the slower kernels of 2026-11-30, mean 1.144 and up to 1.50).
pub const PATCH_VALUE_OPS: f64 = 16.0;

/// Multiply-adds that batch-normalising one value costs, forward and backward together
/// (statistics, normalisation, and the backward's sums and input gradient: about seven passes
/// over memory), on this crate's CPU kernels; fitted with [`PATCH_VALUE_OPS`].
pub const NORM_VALUE_OPS: f64 = 60.0;

/// One block of a model: the unit that partitioning assigns to stages. Each variant holds its
/// kind's hyper-parameters; serialised as `{"<kind>": {<hyper-parameters>}}`, e.g.
/// `{"linear": {"input": 784, "output": 128, "relu": true}}`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Block {
    /// A fully connected layer (see [`Linear`]).
    Linear(Linear),
    /// A square 2-D convolution (see [`Conv2d`]).
    Conv2d(Conv2d),
    /// Batch normalisation over channels (see [`BatchNorm2d`]).
    BatchNorm2d(BatchNorm2d),
    /// A ReLU on its own (see [`Relu`]).
    Relu(Relu),
    /// Square max pooling (see [`MaxPool2d`]).
    MaxPool2d(MaxPool2d),
    /// Square average pooling (see [`AvgPool2d`]).
    AvgPool2d(AvgPool2d),
    /// The mean over each channel's whole map (see [`GlobalAvgPool`]).
    GlobalAvgPool(GlobalAvgPool),
    /// ResNet's basic block (see [`BasicBlock`]).
    BasicBlock(BasicBlock),
    /// ResNet's bottleneck block (see [`Bottleneck`]).
    Bottleneck(Bottleneck),
    /// Token plus position embedding (see [`Embedding`]).
    Embedding(Embedding),
    /// One pre-LayerNorm transformer decoder layer (see [`DecoderLayer`]).
    DecoderLayer(DecoderLayer),
    /// The language-model head (see [`LmHead`]).
    LmHead(LmHead),
}

/// The facts of one kind of block, which [`Block`] delegates to: implemented once per kind,
/// beside that kind's hyper-parameters, so that nothing else needs to know the kinds apart.
trait BlockKind {
    /// Shape of one input sample (see [`Block::input_shape`]).
    fn input_shape(&self) -> Shape;

    /// Shape of one output sample, for a block that passes its checks.
    fn output_shape(&self) -> Shape;

    /// Whether the block reads images (`[c, h, w]`), not flat features or sequences.
    fn is_spatial(&self) -> bool;

    /// Why the block cannot run, if it cannot, for an input that is not empty. The default:
    /// every input fits.
    fn check(&self) -> Result<(), String> {
        Ok(())
    }

    /// A short human-readable description (see [`Block::label`]).
    fn label(&self) -> String;

    /// The weighted part as primitive layers, or `None` for a weight-free block.
    fn layer_paths(&self) -> Option<LayerPaths> {
        None
    }

    /// The cost of one sample's forward in multiply-adds (see [`Block::forward_ops`]). The
    /// default counts the layer paths' layers, the whole forward of the kinds they describe.
    fn forward_ops(&self) -> f64 {
        layer_paths_ops(self.layer_paths(), self.input_shape())
    }

    /// Values per sample that the forward keeps for its backward: its output, and for a
    /// composite block the outputs of its inner layers.
    fn activation_values(&self) -> f64 {
        product(self.output_shape())
    }

    /// Whether the forward ends with a ReLU applied to the weighted part's output (the
    /// default: no).
    fn has_relu(&self) -> bool {
        false
    }

    /// The forward before the trailing ReLU on `x` (`[batch, input_features]`), appending the
    /// input of every layer of the block's layer paths to `layer_inputs` if given (see
    /// [`Block::forward_recording`]). The default runs the layer paths: the whole forward of
    /// the kinds they describe completely (convolution, batch norm, residual blocks).
    fn forward_weighted(
        &self,
        x: Tensor<2>,
        params: &[Tensor<1>],
        norm: Norm<'_>,
        layer_inputs: Option<&mut Vec<Tensor<4>>>,
    ) -> Tensor<2> {
        layer_paths_forward(self, x, params, norm, layer_inputs)
    }

    /// Whether [`BlockKind::closed_form_vjp`] has a closed form on this device.
    fn has_closed_form(&self) -> bool {
        false
    }

    /// The closed-form VJP of the weighted part (see [`Block::closed_form_vjp`]), `None` where
    /// [`BlockKind::has_closed_form`] does not hold. The default is the VJP of the layer paths,
    /// layer by layer, for the kinds whose default forward runs them.
    fn closed_form_vjp(
        &self,
        x: &Tensor<2>,
        params: &[Tensor<1>],
        g: &Tensor<2>,
        need_input_grad: bool,
        _defer_weight_grad: bool,
        layer_inputs: Option<&[Tensor<4>]>,
    ) -> Option<Vjp<2>> {
        self.has_closed_form()
            .then(|| layer_paths_vjp(self, x, params, g, need_input_grad, layer_inputs))
    }

    /// Whether the closed-form VJP leaves the weight gradient out when asked to defer it (see
    /// [`Block::defers_weight_grad`]).
    fn defers_weight_grad(&self) -> bool {
        false
    }

    /// Whether the VJP at micro-batches stacked along the rows equals their VJPs one by one
    /// (see [`Block::stacks_rows`]).
    fn stacks_rows(&self) -> bool {
        true
    }
}

/// ε of layer normalisation (PyTorch's default).
pub const LN_EPSILON: f64 = 1e-5;

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

/// Product of sizes in `f64` (never overflows).
pub(crate) fn product(sizes: impl IntoIterator<Item = usize>) -> f64 {
    sizes.into_iter().map(|s| s as f64).product()
}

/// Features of a sample of `shape`.
fn features(shape: Shape) -> usize {
    shape.iter().product()
}

/// `x` (`[batch, c·h·w]`) viewed as images of `[c, h, w]`.
fn image(x: Tensor<2>, [c, h, w]: Shape) -> Tensor<4> {
    let batch = x.dims()[0];
    x.reshape([batch, c, h, w])
}

/// Images `y` flattened to the rows of a message of samples of `shape`.
fn flatten(y: Tensor<4>, shape: Shape) -> Tensor<2> {
    let batch = y.dims()[0];
    y.reshape([batch, features(shape)])
}

/// Why a square window (`kernel`, `stride`, `padding`) cannot slide over the map of `input`,
/// if it cannot.
fn check_window(input: Shape, kernel: usize, stride: usize, padding: usize) -> Result<(), String> {
    let [_, h, w] = input;
    match (
        window_output(h, kernel, stride, padding),
        window_output(w, kernel, stride, padding),
    ) {
        (Some(_), Some(_)) => Ok(()),
        _ => Err(format!(
            "cannot apply a {kernel}×{kernel} window (stride {stride}, padding \
                 {padding}) to a {h}×{w} map"
        )),
    }
}

/// Height and width of the map a square window leaves of the map of `input` (0 where it
/// does not fit).
fn window_map(input: Shape, kernel: usize, stride: usize, padding: usize) -> [usize; 2] {
    let [_, h, w] = input;
    [
        window_output(h, kernel, stride, padding).unwrap_or(0),
        window_output(w, kernel, stride, padding).unwrap_or(0),
    ]
}

impl Block {
    /// The kind of block, with its facts: the one place that tells the kinds apart.
    fn kind(&self) -> &dyn BlockKind {
        match self {
            Block::Linear(kind) => kind,
            Block::Conv2d(kind) => kind,
            Block::BatchNorm2d(kind) => kind,
            Block::Relu(kind) => kind,
            Block::MaxPool2d(kind) => kind,
            Block::AvgPool2d(kind) => kind,
            Block::GlobalAvgPool(kind) => kind,
            Block::BasicBlock(kind) => kind,
            Block::Bottleneck(kind) => kind,
            Block::Embedding(kind) => kind,
            Block::DecoderLayer(kind) => kind,
            Block::LmHead(kind) => kind,
        }
    }

    /// Shape of one input sample (`[features, 1, 1]` for a linear or ReLU block, `[1, 1, T]`
    /// token ids for an embedding, `[1, T, d]` for the other transformer blocks).
    pub fn input_shape(&self) -> Shape {
        self.kind().input_shape()
    }

    /// Whether the block reads images (`[c, h, w]`), not flat features or sequences.
    pub fn is_spatial(&self) -> bool {
        self.kind().is_spatial()
    }

    /// Why this block cannot run, if it cannot: a zero size, a window larger than its
    /// (padded) input, which is what a too-small image gives, or heads that do not divide the
    /// embedding width.
    pub fn check(&self) -> Result<(), String> {
        let [c, h, w] = self.input_shape();
        if c == 0 || h == 0 || w == 0 {
            return Err(format!("has an empty input {c}×{h}×{w}"));
        }
        self.kind().check()
    }

    /// Shape of one output sample (`[features, 1, 1]` for a linear block). Meaningful only
    /// for a block that passes [`Block::check`].
    pub fn output_shape(&self) -> Shape {
        self.kind().output_shape()
    }

    /// Features each sample has on the way in.
    pub fn input_features(&self) -> usize {
        features(self.input_shape())
    }

    /// Features each sample has on the way out.
    pub fn output_features(&self) -> usize {
        features(self.output_shape())
    }

    /// A short human-readable description, e.g. `conv3x3 64`, `bottleneck 128/2` or
    /// `decoder 64/4h`.
    pub fn label(&self) -> String {
        self.kind().label()
    }

    /// The trainable parameter tensors, in order.
    pub(crate) fn param_infos(&self) -> Vec<TensorInfo> {
        self.kind().layer_paths().map_or_else(Vec::new, |paths| {
            paths
                .layers()
                .flat_map(|(prefix, l)| l.params(prefix))
                .collect()
        })
    }

    /// The buffers (batch norms' running statistics), in order.
    pub(crate) fn buffer_infos(&self) -> Vec<TensorInfo> {
        self.kind().layer_paths().map_or_else(Vec::new, |paths| {
            paths
                .layers()
                .flat_map(|(prefix, l)| l.buffers(prefix))
                .collect()
        })
    }

    /// The cost of one sample's forward, counted from the shapes alone, in multiply-adds: those
    /// of linear layers, convolutions and attention; [`PATCH_VALUE_OPS`] per value a
    /// convolution unrolls (`C·k·k` per output position; none for a 1×1 stride-1 one), the
    /// memory work of this crate's CPU kernels in multiply-add equivalents; [`NORM_VALUE_OPS`]
    /// per value a batch norm normalises; one per value of the other elementwise layers
    /// (layer normalisation, ReLU, pooling windows, embedding lookups). A
    /// deterministic stand-in for the block's compute time: what
    /// [`PartitionMethod::Ops`](crate::PartitionMethod::Ops) balances. Backward costs about
    /// twice the forward for every kind of layer here, so the forward's count ranks stages as
    /// forward + backward would.
    pub fn forward_ops(&self) -> f64 {
        self.kind().forward_ops()
    }

    /// Values per sample that the block's forward keeps for its backward: its output, and for
    /// a composite block the outputs of its inner layers.
    pub(crate) fn activation_values(&self) -> f64 {
        self.kind().activation_values()
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
        self.kind().has_relu()
    }

    /// The forward before the trailing ReLU. `x` is `[batch, input_features]`; `params` may be
    /// plain or autodiff tensors, as long as they match `x`.
    pub(crate) fn forward_weighted(
        &self,
        x: Tensor<2>,
        params: &[Tensor<1>],
        norm: Norm<'_>,
    ) -> Tensor<2> {
        self.kind().forward_weighted(x, params, norm, None)
    }

    /// The whole forward of the block.
    pub(crate) fn forward(&self, x: Tensor<2>, params: &[Tensor<1>], norm: Norm<'_>) -> Tensor<2> {
        self.forward_recording(x, params, norm, None)
    }

    /// [`Block::forward`] that also appends the input of every layer of the block's layer
    /// paths (main path, then shortcut; nothing for a block without them) to `layer_inputs` if
    /// given: what the closed-form backward ([`Block::closed_form_vjp`]) needs of a residual
    /// block.
    pub(crate) fn forward_recording(
        &self,
        x: Tensor<2>,
        params: &[Tensor<1>],
        norm: Norm<'_>,
        layer_inputs: Option<&mut Vec<Tensor<4>>>,
    ) -> Tensor<2> {
        let pre = self.kind().forward_weighted(x, params, norm, layer_inputs);
        if self.has_relu() { relu(pre) } else { pre }
    }

    /// Whether [`Block::closed_form_vjp`] has a closed form for this block (it never returns
    /// `None` then): a linear, ReLU or convolution block on any device; on the CPU, where the
    /// batch-norm kernel reads host memory, every image block.
    pub(crate) fn has_closed_form(&self) -> bool {
        self.kind().has_closed_form()
    }

    /// Parameter gradients (in the block's parameter order) and, if asked for, the input
    /// gradient of the block at input `x` (`[batch, in]`, plain) and weights `params`, for the
    /// gradient `g` of the block's weighted output (before any trailing ReLU). `None` if the
    /// block has no closed form here (the transformer blocks; on a GPU the image blocks other
    /// than convolutions).
    ///
    /// `defer_weight_grad`: leave out the weight gradient of a block that
    /// [defers it](Block::defers_weight_grad). `layer_inputs`: the layer inputs a forward with
    /// these same weights recorded ([`Block::forward_recording`]); without them a block of
    /// several layers re-runs its forward from `x` with `params` to get them.
    pub(crate) fn closed_form_vjp(
        &self,
        x: &Tensor<2>,
        params: &[Tensor<1>],
        g: &Tensor<2>,
        need_input_grad: bool,
        defer_weight_grad: bool,
        layer_inputs: Option<&[Tensor<4>]>,
    ) -> Option<Vjp<2>> {
        if !self.has_closed_form() {
            return None;
        }
        self.kind().closed_form_vjp(
            x,
            params,
            g,
            need_input_grad,
            defer_weight_grad,
            layer_inputs,
        )
    }

    /// Whether [`Block::closed_form_vjp`] leaves the weight gradient out when asked to defer
    /// it: a linear block, whose `xᵀ·g` the caller takes over all micro-batches of a backward
    /// at once.
    pub(crate) fn defers_weight_grad(&self) -> bool {
        self.kind().defers_weight_grad()
    }

    /// Whether the block's VJP at several micro-batches stacked along the rows equals their
    /// VJPs taken one by one (rows stacked, parameter gradients summed): true for every block
    /// that treats samples independently, false for those normalising with batch statistics,
    /// whose re-run on the stack would mix the micro-batches' statistics.
    pub(crate) fn stacks_rows(&self) -> bool {
        self.kind().stacks_rows()
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Model specs and config files on disk hold blocks in the form of the struct variants
    /// that `Block` had before each kind became its own struct: the same text must still come
    /// out and go back in.
    #[test]
    fn serialised_form_is_that_of_the_former_struct_variants() {
        let cases = [
            (
                Block::Linear(Linear {
                    input: 5,
                    output: 3,
                    relu: true,
                }),
                r#"{"linear":{"input":5,"output":3,"relu":true}}"#,
            ),
            (
                Block::Conv2d(Conv2d {
                    input: [2, 6, 6],
                    channels: 3,
                    kernel: 3,
                    stride: 2,
                    padding: 1,
                    bias: true,
                    relu: false,
                }),
                r#"{"conv2d":{"input":[2,6,6],"channels":3,"kernel":3,"stride":2,"padding":1,"bias":true,"relu":false}}"#,
            ),
            (
                Block::BatchNorm2d(BatchNorm2d {
                    input: [3, 5, 3],
                    relu: true,
                }),
                r#"{"batch-norm2d":{"input":[3,5,3],"relu":true}}"#,
            ),
            (
                Block::Relu(Relu { features: 7 }),
                r#"{"relu":{"features":7}}"#,
            ),
            (
                Block::MaxPool2d(MaxPool2d {
                    input: [2, 7, 6],
                    kernel: 3,
                    stride: 2,
                    padding: 1,
                }),
                r#"{"max-pool2d":{"input":[2,7,6],"kernel":3,"stride":2,"padding":1}}"#,
            ),
            (
                Block::AvgPool2d(AvgPool2d {
                    input: [2, 6, 5],
                    kernel: 2,
                    stride: 2,
                    padding: 0,
                }),
                r#"{"avg-pool2d":{"input":[2,6,5],"kernel":2,"stride":2,"padding":0}}"#,
            ),
            (
                Block::GlobalAvgPool(GlobalAvgPool { input: [3, 3, 5] }),
                r#"{"global-avg-pool":{"input":[3,3,5]}}"#,
            ),
            (
                Block::BasicBlock(BasicBlock {
                    input: [2, 6, 5],
                    planes: 3,
                    stride: 2,
                }),
                r#"{"basic-block":{"input":[2,6,5],"planes":3,"stride":2}}"#,
            ),
            (
                Block::Bottleneck(Bottleneck {
                    input: [3, 5, 4],
                    planes: 2,
                    stride: 2,
                }),
                r#"{"bottleneck":{"input":[3,5,4],"planes":2,"stride":2}}"#,
            ),
            (
                Block::Embedding(Embedding {
                    seq_len: 8,
                    vocab_size: 11,
                    embed_dim: 4,
                }),
                r#"{"embedding":{"seq_len":8,"vocab_size":11,"embed_dim":4}}"#,
            ),
            (
                Block::DecoderLayer(DecoderLayer {
                    seq_len: 8,
                    embed_dim: 4,
                    heads: 2,
                }),
                r#"{"decoder-layer":{"seq_len":8,"embed_dim":4,"heads":2}}"#,
            ),
            (
                Block::LmHead(LmHead {
                    seq_len: 8,
                    embed_dim: 4,
                    vocab_size: 11,
                }),
                r#"{"lm-head":{"seq_len":8,"embed_dim":4,"vocab_size":11}}"#,
            ),
        ];
        for (block, json) in cases {
            assert_eq!(serde_json::to_string(&block).unwrap(), json, "{block:?}");
            let back: Block = serde_json::from_str(json).unwrap();
            assert_eq!(back, block, "{json}");
        }
    }
}
