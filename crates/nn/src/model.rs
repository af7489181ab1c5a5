//! Models as explicit parameter tensors: specs, initialisation, evaluation.
//!
//! A model is a sequence of [`Block`]s; a pipeline stage owns a contiguous range of them. Each
//! block's parameters are plain (non-autodiff) 1-D tensors in a fixed order, and its forward is
//! a function of (input, parameters). We deliberately do not use burn's `Module`: weight
//! versions, blends, predictions and optimizer steps are then simple maps over lists of
//! tensors, a stage can run the same block with any weight set (the heart of this project),
//! and the forward of one block can be re-run on a saved input for the "graph" gradient mode.
//! Storing every parameter flattened to 1-D makes those maps uniform across block kinds; a
//! block reshapes its parameters when it runs (free for contiguous data).
//!
//! Besides its trainable parameters a block may hold *buffers*: the running mean and variance
//! of its batch norms. They are state that belongs to a weight version (`docs/algorithms.md`
//! §4.3, the project's reading of an open choice, §6 row 14): every [`BlockParams`] carries its
//! own, so the version store keeps them with each stored version, and evaluation of a version
//! uses that version's statistics.
//!
//! Parameters are named `layers.<i>.<name>` with the global block index `i`, so names do not
//! depend on how the model is split. In files they use PyTorch's layouts (a linear weight is
//! `[out, in]`, a convolution weight `[out, in, k, k]`); in memory a linear weight is
//! `[in, out]` row-major so the forward is `x · W + b` without a transpose.

use burn::tensor::Tensor;
use burn::tensor::activation::log_softmax;
use serde::{Deserialize, Serialize};
use timeprest_data::Dataset;

use crate::NnError;
use crate::block::{Block, Init, Linear, Norm, Shape};
use crate::memory::{MAX_LAYER_WIDTH, too_wide};
use crate::tensor::{count_correct, one_hot, scalar, tensor1, tensor2, to_vec, transpose};
use crate::zoo::{GptConfig, NetConfig};

/// A multi-layer perceptron: `input → hidden[0] → … → classes`, ReLU after every hidden layer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MlpConfig {
    /// Input features.
    pub input: usize,
    /// Widths of the hidden layers (may be empty: a linear classifier).
    pub hidden: Vec<usize>,
    /// Output classes.
    pub classes: usize,
}

impl MlpConfig {
    /// The name `--model` gives it.
    pub const NAME: &'static str = "mlp";
}

/// A model architecture.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ModelSpec {
    /// A multi-layer perceptron.
    Mlp(MlpConfig),
    /// A convolutional network of the model zoo (LeNet-5, AlexNet, VGG, ResNet).
    Net(NetConfig),
    /// A decoder-only transformer language model.
    Gpt(GptConfig),
}

/// The parameters of one block: its kind, its trainable tensors and its buffers, flattened, in
/// the block's order (see [`Block::param_names`] and [`Block::buffer_names`]).
#[derive(Clone, Debug)]
pub struct BlockParams {
    /// What the tensors parameterise.
    pub block: Block,
    /// The parameter tensors (1-D, plain, in memory layout).
    pub tensors: Vec<Tensor<1>>,
    /// The buffers (batch norms' running mean and variance), 1-D, plain; empty for blocks
    /// without batch norm.
    pub buffers: Vec<Tensor<1>>,
}

/// The parameters of a whole model (or of one stage): one entry per block.
pub type ModelParams = Vec<BlockParams>;

impl ModelSpec {
    /// The blocks of the model, in order.
    ///
    /// # Panics
    /// If the spec is invalid (see [`ModelSpec::validate`], which every constructor of
    /// parameters calls first).
    pub fn blocks(&self) -> Vec<Block> {
        match self.try_blocks() {
            Ok(blocks) => blocks,
            Err(e) => panic!("blocks() of an invalid model spec: {e}"),
        }
    }

    /// The blocks of the model, or why the spec is unusable.
    ///
    /// # Errors
    /// [`NnError::InvalidModel`] naming the model, the input shape and the block that fails.
    pub fn try_blocks(&self) -> Result<Vec<Block>, NnError> {
        match self {
            ModelSpec::Mlp(mlp) => {
                if mlp.input == 0 || mlp.classes == 0 || mlp.hidden.contains(&0) {
                    return Err(NnError::InvalidModel(format!(
                        "MLP widths must be positive: input {}, hidden {:?}, classes {}",
                        mlp.input, mlp.hidden, mlp.classes
                    )));
                }
                if let Some(&width) = mlp.hidden.iter().find(|&&w| w > MAX_LAYER_WIDTH) {
                    return Err(too_wide(self.size_flags(), "mlp", "features", width as f64));
                }
                let widths: Vec<usize> = std::iter::once(mlp.input)
                    .chain(mlp.hidden.iter().copied())
                    .chain(std::iter::once(mlp.classes))
                    .collect();
                let last = widths.len() - 2;
                Ok(widths
                    .windows(2)
                    .enumerate()
                    .map(|(i, w)| {
                        Block::Linear(Linear {
                            input: w[0],
                            output: w[1],
                            relu: i != last,
                        })
                    })
                    .collect())
            }
            ModelSpec::Net(net) => net.blocks(),
            ModelSpec::Gpt(gpt) => gpt.blocks(),
        }
    }

    /// Number of blocks (the most stages the model can be split into).
    pub fn num_blocks(&self) -> usize {
        match self {
            ModelSpec::Mlp(mlp) => mlp.hidden.len() + 1,
            ModelSpec::Net(_) => self.try_blocks().map_or(0, |b| b.len()),
            ModelSpec::Gpt(gpt) => gpt.layers + 2,
        }
    }

    /// Number of scalar parameters.
    pub fn param_count(&self) -> usize {
        self.blocks().iter().map(Block::param_count).sum()
    }

    /// Input features per sample.
    pub fn input_features(&self) -> usize {
        self.input_shape().iter().product()
    }

    /// Shape of one input sample (`[features, 1, 1]` for an MLP, which takes any shape with
    /// that many features; `[1, 1, T]` token ids for `gpt`).
    pub fn input_shape(&self) -> Shape {
        match self {
            ModelSpec::Mlp(mlp) => [mlp.input, 1, 1],
            ModelSpec::Net(net) => net.input,
            ModelSpec::Gpt(gpt) => [1, 1, gpt.seq_len],
        }
    }

    /// Output classes (for `gpt`: the vocabulary size, the classes of every position).
    pub fn num_classes(&self) -> usize {
        match self {
            ModelSpec::Mlp(mlp) => mlp.classes,
            ModelSpec::Net(net) => net.classes,
            ModelSpec::Gpt(gpt) => gpt.vocab_size,
        }
    }

    /// Predictions per sample: 1 for a classifier, T (one next token per position) for `gpt`.
    /// The output has `num_classes() · targets_per_sample()` features.
    pub fn targets_per_sample(&self) -> usize {
        match self {
            ModelSpec::Mlp(_) | ModelSpec::Net(_) => 1,
            ModelSpec::Gpt(gpt) => gpt.seq_len,
        }
    }

    /// The model's name, as `--model` spells it.
    pub fn name(&self) -> &'static str {
        match self {
            ModelSpec::Mlp(_) => MlpConfig::NAME,
            ModelSpec::Net(net) => net.arch.name(),
            ModelSpec::Gpt(_) => GptConfig::NAME,
        }
    }

    /// Checks that every size is positive and that every block fits its input.
    ///
    /// # Errors
    /// [`NnError::InvalidModel`] naming the problem.
    pub fn validate(&self) -> Result<(), NnError> {
        self.try_blocks().map(drop)
    }

    /// Checks that `data` (samples of shape `[c, h, w]`, `classes` classes, targets per
    /// sample) fits the model.
    ///
    /// # Errors
    /// [`NnError::Mismatch`] naming the model, the data set and both shapes.
    pub fn check_data(&self, data: &Dataset) -> Result<(), NnError> {
        let [c, h, w] = data.shape;
        let shape_fits = match self {
            ModelSpec::Mlp(mlp) => data.num_features == mlp.input,
            ModelSpec::Net(_) | ModelSpec::Gpt(_) => data.shape == self.input_shape(),
        };
        if !shape_fits
            || data.num_classes != self.num_classes()
            || data.targets_per_sample != self.targets_per_sample()
        {
            let [mc, mh, mw] = self.input_shape();
            let per_position = |targets: usize| match targets {
                1 => String::new(),
                t => format!(" at each of {t} positions"),
            };
            return Err(NnError::Mismatch(format!(
                "model {} takes {mc}×{mh}×{mw} inputs and gives {} classes{}, but data set {} \
                 has {c}×{h}×{w} samples and {} classes{}",
                self.name(),
                self.num_classes(),
                per_position(self.targets_per_sample()),
                data.name,
                data.num_classes,
                per_position(data.targets_per_sample),
            )));
        }
        Ok(())
    }
}

/// File-layout values of state tensor `index` (parameters, then buffers) of `block` from its
/// memory-layout values, or back (`to_file` false). Only linear weights differ.
fn convert_layout(block: Block, index: usize, values: Vec<f32>, to_file: bool) -> Vec<f32> {
    match block.param_infos().get(index) {
        Some(info) if info.transposed_in_memory => {
            let [output, input] = info.shape[..] else {
                panic!("{block:?}: transposed tensor {} is not 2-D", info.name);
            };
            if to_file {
                transpose(&values, input, output)
            } else {
                transpose(&values, output, input)
            }
        }
        _ => values,
    }
}

impl BlockParams {
    /// Builds block parameters from file-layout (PyTorch) values, one vector per tensor: the
    /// parameters in order, then the buffers in order.
    ///
    /// # Panics
    /// If the number of vectors or their lengths do not fit `block` (a caller bug; files are
    /// checked by [`load_safetensors`](crate::load_safetensors)).
    pub fn from_file_layout(block: Block, values: Vec<Vec<f32>>) -> Self {
        let num_params = block.param_sizes().len();
        let sizes: Vec<usize> = block
            .param_sizes()
            .into_iter()
            .chain(block.buffer_sizes())
            .collect();
        assert_eq!(
            values.len(),
            sizes.len(),
            "{block:?}: wrong number of parameter and buffer tensors"
        );
        let mut tensors: Vec<Tensor<1>> = values
            .into_iter()
            .enumerate()
            .map(|(i, v)| {
                assert_eq!(
                    v.len(),
                    sizes[i],
                    "{block:?}: tensor {i} has {} values",
                    v.len()
                );
                tensor1(convert_layout(block, i, v, false))
            })
            .collect();
        let buffers = tensors.split_off(num_params);
        Self {
            block,
            tensors,
            buffers,
        }
    }

    /// The parameters, then the buffers, in file layout (PyTorch), one vector per tensor.
    pub fn to_file_layout(&self) -> Vec<Vec<f32>> {
        self.tensors
            .iter()
            .chain(&self.buffers)
            .enumerate()
            .map(|(i, t)| convert_layout(self.block, i, to_vec(t), true))
            .collect()
    }

    /// The parameters in memory layout, one vector per parameter (buffers excluded).
    pub fn values(&self) -> Vec<Vec<f32>> {
        self.tensors.iter().map(to_vec).collect()
    }

    /// Number of scalar parameters (buffers excluded).
    pub fn num_elements(&self) -> usize {
        self.tensors.iter().map(|t| t.shape().num_elements()).sum()
    }

    /// Bytes the parameters and buffers take (f32): what storing this version costs.
    pub fn bytes(&self) -> u64 {
        let buffers: usize = self.buffers.iter().map(|t| t.shape().num_elements()).sum();
        (self.num_elements() + buffers) as u64 * 4
    }

    /// The output of the block in evaluation mode (running statistics), without autodiff.
    pub fn forward_eval(&self, x: Tensor<2>) -> Tensor<2> {
        self.block
            .forward(x, &self.tensors, Norm::Running(&self.buffers))
    }

    /// Applies `f` to each parameter tensor, keeping the block and the buffers.
    pub(crate) fn map(&self, mut f: impl FnMut(usize, &Tensor<1>) -> Tensor<1>) -> Self {
        let tensors = self
            .tensors
            .iter()
            .enumerate()
            .map(|(i, t)| f(i, t))
            .collect();
        Self {
            block: self.block,
            tensors,
            buffers: self.buffers.clone(),
        }
    }

    /// These parameters with the running statistics moved towards the batch statistics
    /// `stats` (per batch norm: mean, unbiased variance) by [`BN_MOMENTUM`](crate::BN_MOMENTUM).
    ///
    /// # Panics
    /// If `stats` does not have one tensor per buffer (a caller bug).
    pub(crate) fn with_running_stats(&self, stats: &[Tensor<1>]) -> Self {
        assert_eq!(
            stats.len(),
            self.buffers.len(),
            "{:?}: batch statistics vs buffers",
            self.block
        );
        let m = crate::block::BN_MOMENTUM;
        let buffers = self
            .buffers
            .iter()
            .zip(stats)
            .map(|(old, batch)| {
                old.clone()
                    .mul_scalar(1.0 - m)
                    .add(batch.clone().mul_scalar(m))
            })
            .collect();
        Self {
            buffers,
            ..self.clone()
        }
    }
}

/// A tiny seeded generator (SplitMix64): deterministic across platforms and runs, and ours, so
/// initial weights never change with a dependency's version.
struct SplitMix64(u64);

impl SplitMix64 {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `[low, high)`, from 53 random bits.
    fn uniform(&mut self, low: f64, high: f64) -> f32 {
        let unit = (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
        (low + (high - low) * unit) as f32
    }
}

/// Initial parameters of `spec` for `seed`, like PyTorch's defaults: linear and convolution
/// weights and biases uniform in `±1/√fan_in` (Kaiming-uniform with a = √5); batch norm γ = 1,
/// β = 0, running mean 0 and running variance 1.
///
/// Each block draws from its own stream, seeded by `(seed, block index)`, so the result is
/// bit-identical across runs and independent of how the model is later split.
///
/// # Errors
/// [`NnError::InvalidModel`] if the spec is invalid.
pub fn init_params(spec: &ModelSpec, seed: u64) -> Result<ModelParams, NnError> {
    Ok(spec
        .try_blocks()?
        .into_iter()
        .enumerate()
        .map(|(index, block)| {
            let mut rng = SplitMix64(seed ^ (index as u64).wrapping_mul(0xD6E8_FEB8_6659_FD93));
            // Warm up so that neighbouring seeds give unrelated streams.
            rng.next_u64();
            let values = block
                .param_infos()
                .into_iter()
                .chain(block.buffer_infos())
                .map(|info| match info.init {
                    Init::Uniform(bound) => (0..info.len())
                        .map(|_| rng.uniform(-bound, bound))
                        .collect(),
                    Init::Const(value) => vec![value; info.len()],
                })
                .collect();
            BlockParams::from_file_layout(block, values)
        })
        .collect())
}

/// Checks that consecutive blocks fit (`output` of one = `input` of the next) and that every
/// block has the parameter and buffer sizes its kind needs.
pub(crate) fn check_chain(blocks: &[BlockParams]) -> Result<(), NnError> {
    for (i, pair) in blocks.windows(2).enumerate() {
        let (a, b) = (pair[0].block, pair[1].block);
        let fits = if b.is_spatial() {
            a.output_shape() == b.input_shape()
        } else {
            a.output_features() == b.input_features()
        };
        if !fits {
            let ([ac, ah, aw], [bc, bh, bw]) = (a.output_shape(), b.input_shape());
            return Err(NnError::Mismatch(format!(
                "block {i} outputs {ac}×{ah}×{aw} but block {} takes {bc}×{bh}×{bw}",
                i + 1
            )));
        }
    }
    for (i, p) in blocks.iter().enumerate() {
        let sizes = (p.block.param_sizes(), p.block.buffer_sizes());
        let count = |ts: &[Tensor<1>]| -> Vec<usize> {
            ts.iter().map(|t| t.shape().num_elements()).collect()
        };
        let found = (count(&p.tensors), count(&p.buffers));
        if found != sizes {
            return Err(NnError::Mismatch(format!(
                "block {i} ({:?}) needs parameter and buffer sizes {sizes:?}, has {found:?}",
                p.block
            )));
        }
    }
    Ok(())
}

/// Mean loss and accuracy of the model `params` (all blocks of `spec`) on `data`, in batches of
/// `batch_size`, without autodiff, batch norms using each block's running statistics. The loss
/// is softmax cross-entropy, averaged over targets: over samples for a classifier, over
/// predicted tokens for a language model (whose accuracy is then per token too).
///
/// # Errors
/// [`NnError::Mismatch`] if `params` do not belong to `spec`, or `data` does not fit the model
/// (shape, classes), or `data` is empty or `batch_size` is 0.
pub fn evaluate(
    spec: &ModelSpec,
    params: &[BlockParams],
    data: &Dataset,
    batch_size: usize,
) -> Result<(f64, f64), NnError> {
    let blocks = spec.try_blocks()?;
    if params.iter().map(|p| p.block).ne(blocks.iter().copied()) {
        return Err(NnError::Mismatch(
            "the parameters do not belong to the model spec".into(),
        ));
    }
    check_chain(params)?;
    spec.check_data(data)?;
    if data.is_empty() || batch_size == 0 {
        return Err(NnError::Mismatch(format!(
            "cannot evaluate {} samples in batches of {batch_size}",
            data.len()
        )));
    }
    let (mut loss_sum, mut correct) = (0.0, 0);
    let indices: Vec<usize> = (0..data.len()).collect();
    for batch in indices.chunks(batch_size) {
        let (features, labels) = data.gather(batch);
        let mut x = tensor2(features, batch.len(), data.num_features);
        for p in params {
            x = p.forward_eval(x);
        }
        correct += count_correct(&to_vec(&x), spec.num_classes(), &labels);
        loss_sum += scalar(&cross_entropy_sum(x, one_hot(&labels, spec.num_classes())));
    }
    let n = data.labels.len() as f64;
    Ok((loss_sum / n, correct as f64 / n))
}

/// Σ over targets of the softmax cross-entropy of `logits` against one-hot `targets`
/// (`[rows, classes]`, one row per target), as a one-element tensor. `logits` is
/// `[batch, T·classes]` with `batch · T = rows` (T = 1 for a classifier), viewed as
/// `[rows, classes]`; plain or autodiff alike.
pub(crate) fn cross_entropy_sum(logits: Tensor<2>, targets: Tensor<2>) -> Tensor<1> {
    log_softmax(logits.reshape(targets.dims()), 1)
        .mul(targets)
        .sum()
        .neg()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(hidden: Vec<usize>) -> ModelSpec {
        ModelSpec::Mlp(MlpConfig {
            input: 5,
            hidden,
            classes: 3,
        })
    }

    #[test]
    fn blocks_chain_widths_with_relu_except_last() {
        let s = spec(vec![7, 4]);
        assert_eq!(s.num_blocks(), 3);
        assert_eq!(
            s.blocks(),
            vec![
                Block::Linear(Linear {
                    input: 5,
                    output: 7,
                    relu: true
                }),
                Block::Linear(Linear {
                    input: 7,
                    output: 4,
                    relu: true
                }),
                Block::Linear(Linear {
                    input: 4,
                    output: 3,
                    relu: false
                }),
            ]
        );
        assert_eq!(s.param_count(), 5 * 7 + 7 + 7 * 4 + 4 + 4 * 3 + 3);
        assert!(spec(vec![0]).validate().is_err());
    }

    #[test]
    fn init_is_deterministic_seeded_and_in_pytorch_bounds() {
        let s = spec(vec![6]);
        let a = init_params(&s, 7).unwrap();
        let b = init_params(&s, 7).unwrap();
        let c = init_params(&s, 8).unwrap();
        for (pa, pb) in a.iter().zip(&b) {
            let (va, vb) = (pa.values(), pb.values());
            assert!(
                va.iter()
                    .flatten()
                    .zip(vb.iter().flatten())
                    .all(|(x, y)| x.to_bits() == y.to_bits())
            );
        }
        assert_ne!(a[0].values(), c[0].values());
        for p in &a {
            let bound = 1.0 / (p.block.input_features() as f32).sqrt();
            let v: Vec<f32> = p.values().concat();
            assert!(v.iter().all(|x| x.abs() <= bound), "{:?}", p.block);
            // Not degenerate: both signs occur.
            assert!(v.iter().any(|&x| x > 0.0) && v.iter().any(|&x| x < 0.0));
        }
    }

    #[test]
    fn file_layout_round_trips_and_transposes_the_weight() {
        let block = Block::Linear(Linear {
            input: 2,
            output: 3,
            relu: false,
        });
        // PyTorch [out=3, in=2].
        let file = vec![vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0], vec![0.5, 0.25, 0.125]];
        let p = BlockParams::from_file_layout(block, file.clone());
        assert_eq!(p.values()[0], vec![1.0, 3.0, 5.0, 2.0, 4.0, 6.0]);
        assert_eq!(p.to_file_layout(), file);
        // y = x Wᵀ + b as in PyTorch: x = [1, 1] → [3.5, 7.25, 11.125].
        let y = p.forward_eval(tensor2(vec![1.0, 1.0], 1, 2));
        assert_eq!(to_vec(&y), vec![3.5, 7.25, 11.125]);
    }
}
