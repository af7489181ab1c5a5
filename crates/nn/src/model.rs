//! Models as explicit parameter tensors: specs, blocks, initialisation, partitioning, evaluation.
//!
//! A model is a sequence of *blocks*; a pipeline stage owns a contiguous range of them. Each
//! block's parameters are plain (non-autodiff) 1-D tensors in a fixed order, and its forward is
//! a function of (input, parameters). We deliberately do not use burn's `Module`: weight
//! versions, blends, predictions and optimizer steps are then simple maps over lists of
//! tensors, a stage can run the same block with any weight set (the heart of this project),
//! and the forward of one block can be re-run on a saved input for the "graph" gradient mode.
//! Storing every parameter flattened to 1-D makes those maps uniform across block kinds; a
//! block reshapes its parameters when it runs (free for contiguous data).
//!
//! Parameters are named `layers.<i>.<name>` with the global block index `i`, so names do not
//! depend on how the model is split. In files they use PyTorch's layouts (a linear weight is
//! `[out, in]`); in memory a linear weight is `[in, out]` row-major so the forward is
//! `x · W + b` without a transpose.

use std::ops::Range;

use burn::tensor::Tensor;
use burn::tensor::activation::{log_softmax, relu};
use serde::{Deserialize, Serialize};
use timeprest_data::Dataset;

use crate::NnError;
use crate::tensor::{count_correct, one_hot, scalar, tensor1, tensor2, to_vec};

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

/// A model architecture.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ModelSpec {
    /// A multi-layer perceptron.
    Mlp(MlpConfig),
}

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
}

/// The parameters of one block: its kind and its tensors, flattened, in the block's order
/// (see [`Block::param_names`]).
#[derive(Clone, Debug)]
pub struct BlockParams {
    /// What the tensors parameterise.
    pub block: Block,
    /// The parameter tensors (1-D, plain, in memory layout).
    pub tensors: Vec<Tensor<1>>,
}

/// The parameters of a whole model (or of one stage): one entry per block.
pub type ModelParams = Vec<BlockParams>;

impl ModelSpec {
    /// The blocks of the model, in order.
    pub fn blocks(&self) -> Vec<Block> {
        match self {
            ModelSpec::Mlp(mlp) => {
                let widths: Vec<usize> = std::iter::once(mlp.input)
                    .chain(mlp.hidden.iter().copied())
                    .chain(std::iter::once(mlp.classes))
                    .collect();
                let last = widths.len() - 2;
                widths
                    .windows(2)
                    .enumerate()
                    .map(|(i, w)| Block::Linear {
                        input: w[0],
                        output: w[1],
                        relu: i != last,
                    })
                    .collect()
            }
        }
    }

    /// Number of blocks (the most stages the model can be split into).
    pub fn num_blocks(&self) -> usize {
        match self {
            ModelSpec::Mlp(mlp) => mlp.hidden.len() + 1,
        }
    }

    /// Number of scalar parameters.
    pub fn param_count(&self) -> usize {
        self.blocks().iter().map(Block::param_count).sum()
    }

    /// Input features per sample.
    pub fn input_features(&self) -> usize {
        match self {
            ModelSpec::Mlp(mlp) => mlp.input,
        }
    }

    /// Output classes.
    pub fn num_classes(&self) -> usize {
        match self {
            ModelSpec::Mlp(mlp) => mlp.classes,
        }
    }

    /// Checks that every width is positive.
    ///
    /// # Errors
    /// [`NnError::InvalidModel`] naming the zero width.
    pub fn validate(&self) -> Result<(), NnError> {
        match self {
            ModelSpec::Mlp(mlp) => {
                if mlp.input == 0 || mlp.classes == 0 || mlp.hidden.contains(&0) {
                    return Err(NnError::InvalidModel(format!(
                        "MLP widths must be positive: input {}, hidden {:?}, classes {}",
                        mlp.input, mlp.hidden, mlp.classes
                    )));
                }
                Ok(())
            }
        }
    }
}

impl Block {
    /// Features each sample has on the way in.
    pub fn input_features(&self) -> usize {
        match *self {
            Block::Linear { input, .. } => input,
        }
    }

    /// Features each sample has on the way out.
    pub fn output_features(&self) -> usize {
        match *self {
            Block::Linear { output, .. } => output,
        }
    }

    /// Number of scalar parameters.
    pub fn param_count(&self) -> usize {
        self.param_sizes().iter().sum()
    }

    /// Names of the parameter tensors, in order (the suffix after `layers.<i>.`).
    pub fn param_names(&self) -> &'static [&'static str] {
        match self {
            Block::Linear { .. } => &["weight", "bias"],
        }
    }

    /// Shapes of the parameter tensors in files (PyTorch layout), in order.
    pub fn file_shapes(&self) -> Vec<Vec<usize>> {
        match *self {
            Block::Linear { input, output, .. } => vec![vec![output, input], vec![output]],
        }
    }

    /// Number of elements of each parameter tensor, in order.
    pub fn param_sizes(&self) -> Vec<usize> {
        self.file_shapes()
            .iter()
            .map(|s| s.iter().product())
            .collect()
    }

    /// Whether a ReLU follows the weighted part.
    pub fn has_relu(&self) -> bool {
        match *self {
            Block::Linear { relu, .. } => relu,
        }
    }

    /// The weight-dependent part of the forward (before the activation). `params` may be plain
    /// or autodiff tensors, as long as they match `x`.
    pub fn forward_weighted(&self, x: Tensor<2>, params: &[Tensor<1>]) -> Tensor<2> {
        match *self {
            Block::Linear { input, output, .. } => {
                let [weight, bias] = params else {
                    panic!(
                        "linear block with {} parameter tensors instead of 2",
                        params.len()
                    );
                };
                x.matmul(weight.clone().reshape([input, output]))
                    .add(bias.clone().reshape([1, output]))
            }
        }
    }

    /// The whole forward of the block.
    pub fn forward(&self, x: Tensor<2>, params: &[Tensor<1>]) -> Tensor<2> {
        let pre = self.forward_weighted(x, params);
        if self.has_relu() { relu(pre) } else { pre }
    }

    /// File-layout values of parameter `index` from its memory-layout values.
    fn memory_to_file(self, index: usize, values: Vec<f32>) -> Vec<f32> {
        match (self, index) {
            (Block::Linear { input, output, .. }, 0) => transpose(&values, input, output),
            _ => values,
        }
    }

    /// Memory-layout values of parameter `index` from its file-layout values.
    fn file_to_memory(self, index: usize, values: Vec<f32>) -> Vec<f32> {
        match (self, index) {
            (Block::Linear { input, output, .. }, 0) => transpose(&values, output, input),
            _ => values,
        }
    }
}

/// Row-major `[rows, cols]` → row-major `[cols, rows]`.
fn transpose(values: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    assert_eq!(
        values.len(),
        rows * cols,
        "transpose of {} values as [{rows}, {cols}]",
        values.len()
    );
    let mut out = vec![0.0; values.len()];
    for r in 0..rows {
        for c in 0..cols {
            out[c * rows + r] = values[r * cols + c];
        }
    }
    out
}

impl BlockParams {
    /// Builds block parameters from file-layout (PyTorch) values, one vector per parameter.
    ///
    /// # Panics
    /// If the number of vectors or their lengths do not fit `block` (a caller bug; files are
    /// checked by [`load_safetensors`](crate::load_safetensors)).
    pub fn from_file_layout(block: Block, values: Vec<Vec<f32>>) -> Self {
        let sizes = block.param_sizes();
        assert_eq!(
            values.len(),
            sizes.len(),
            "{block:?}: wrong number of parameter tensors"
        );
        let tensors = values
            .into_iter()
            .enumerate()
            .map(|(i, v)| {
                assert_eq!(
                    v.len(),
                    sizes[i],
                    "{block:?}: parameter {i} has {} values",
                    v.len()
                );
                tensor1(block.file_to_memory(i, v))
            })
            .collect();
        Self { block, tensors }
    }

    /// The parameters in file layout (PyTorch), one vector per parameter.
    pub fn to_file_layout(&self) -> Vec<Vec<f32>> {
        self.tensors
            .iter()
            .enumerate()
            .map(|(i, t)| self.block.memory_to_file(i, to_vec(t)))
            .collect()
    }

    /// The parameters in memory layout, one vector per parameter.
    pub fn values(&self) -> Vec<Vec<f32>> {
        self.tensors.iter().map(to_vec).collect()
    }

    /// Number of scalar parameters.
    pub fn num_elements(&self) -> usize {
        self.tensors.iter().map(|t| t.shape().num_elements()).sum()
    }

    /// Bytes the tensors take (f32).
    pub fn bytes(&self) -> u64 {
        self.num_elements() as u64 * 4
    }

    /// Applies `f` to each tensor, keeping the block.
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

/// Initial parameters of `spec` for `seed`, like PyTorch's defaults: a linear layer's weight and
/// bias are uniform in `±1/√in` (Kaiming-uniform with a = √5).
///
/// Each block draws from its own stream, seeded by `(seed, block index)`, so the result is
/// bit-identical across runs and independent of how the model is later split.
///
/// # Errors
/// [`NnError::InvalidModel`] if the spec has a zero width.
pub fn init_params(spec: &ModelSpec, seed: u64) -> Result<ModelParams, NnError> {
    spec.validate()?;
    Ok(spec
        .blocks()
        .into_iter()
        .enumerate()
        .map(|(index, block)| {
            let mut rng = SplitMix64(seed ^ (index as u64).wrapping_mul(0xD6E8_FEB8_6659_FD93));
            // Warm up so that neighbouring seeds give unrelated streams.
            rng.next_u64();
            let values = match block {
                Block::Linear { input, .. } => {
                    let bound = 1.0 / (input as f64).sqrt();
                    block
                        .param_sizes()
                        .into_iter()
                        .map(|size| (0..size).map(|_| rng.uniform(-bound, bound)).collect())
                        .collect()
                }
            };
            BlockParams::from_file_layout(block, values)
        })
        .collect())
}

/// Splits `num_blocks` blocks into `num_stages` contiguous ranges, as balanced as possible (the
/// first `num_blocks % num_stages` stages get one block more).
///
/// # Errors
/// [`NnError::TooManyStages`] if `num_stages` is 0 or larger than `num_blocks`.
pub fn partition_uniform(
    num_blocks: usize,
    num_stages: usize,
) -> Result<Vec<Range<usize>>, NnError> {
    if num_stages == 0 || num_stages > num_blocks {
        return Err(NnError::TooManyStages {
            num_blocks,
            num_stages,
        });
    }
    let (base, extra) = (num_blocks / num_stages, num_blocks % num_stages);
    let mut start = 0;
    Ok((0..num_stages)
        .map(|stage| {
            let len = base + usize::from(stage < extra);
            let range = start..start + len;
            start += len;
            range
        })
        .collect())
}

/// Checks that consecutive blocks fit (`output` of one = `input` of the next).
pub(crate) fn check_chain(blocks: &[BlockParams]) -> Result<(), NnError> {
    for (i, pair) in blocks.windows(2).enumerate() {
        let (a, b) = (pair[0].block, pair[1].block);
        if a.output_features() != b.input_features() {
            return Err(NnError::Mismatch(format!(
                "block {i} outputs {} features but block {} takes {}",
                a.output_features(),
                i + 1,
                b.input_features()
            )));
        }
    }
    for (i, p) in blocks.iter().enumerate() {
        let sizes = p.block.param_sizes();
        let found: Vec<usize> = p.tensors.iter().map(|t| t.shape().num_elements()).collect();
        if found != sizes {
            return Err(NnError::Mismatch(format!(
                "block {i} ({:?}) needs parameter sizes {sizes:?}, has {found:?}",
                p.block
            )));
        }
    }
    Ok(())
}

/// Mean loss and accuracy of the model `params` (all blocks of `spec`) on `data`, in batches of
/// `batch_size`, without autodiff. The loss is softmax cross-entropy, averaged over samples.
///
/// # Errors
/// [`NnError::Mismatch`] if `params` do not belong to `spec`, or `data` does not fit the model
/// (features, classes), or `data` is empty or `batch_size` is 0.
pub fn evaluate(
    spec: &ModelSpec,
    params: &[BlockParams],
    data: &Dataset,
    batch_size: usize,
) -> Result<(f64, f64), NnError> {
    let blocks = spec.blocks();
    if params.iter().map(|p| p.block).ne(blocks.iter().copied()) {
        return Err(NnError::Mismatch(
            "the parameters do not belong to the model spec".into(),
        ));
    }
    check_chain(params)?;
    if data.num_features != spec.input_features() || data.num_classes != spec.num_classes() {
        return Err(NnError::Mismatch(format!(
            "data set {} has {} features and {} classes; the model takes {} and gives {}",
            data.name,
            data.num_features,
            data.num_classes,
            spec.input_features(),
            spec.num_classes()
        )));
    }
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
            x = p.block.forward(x, &p.tensors);
        }
        correct += count_correct(&to_vec(&x), spec.num_classes(), &labels);
        loss_sum += scalar(&cross_entropy_sum(x, one_hot(&labels, spec.num_classes())));
    }
    let n = data.len() as f64;
    Ok((loss_sum / n, correct as f64 / n))
}

/// Σ over samples of the softmax cross-entropy of `logits` against one-hot `targets`
/// (both `[batch, classes]`, plain or autodiff alike), as a one-element tensor.
pub(crate) fn cross_entropy_sum(logits: Tensor<2>, targets: Tensor<2>) -> Tensor<1> {
    log_softmax(logits, 1).mul(targets).sum().neg()
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
                Block::Linear {
                    input: 5,
                    output: 7,
                    relu: true
                },
                Block::Linear {
                    input: 7,
                    output: 4,
                    relu: true
                },
                Block::Linear {
                    input: 4,
                    output: 3,
                    relu: false
                },
            ]
        );
        assert_eq!(s.param_count(), 5 * 7 + 7 + 7 * 4 + 4 + 4 * 3 + 3);
        assert!(spec(vec![0]).validate().is_err());
    }

    #[test]
    fn partition_is_contiguous_and_balanced() {
        assert_eq!(partition_uniform(5, 2).unwrap(), vec![0..3, 3..5]);
        assert_eq!(
            partition_uniform(4, 4).unwrap(),
            vec![0..1, 1..2, 2..3, 3..4]
        );
        assert_eq!(partition_uniform(7, 3).unwrap(), vec![0..3, 3..5, 5..7]);
        for blocks in 1..10 {
            for stages in 1..=blocks {
                let parts = partition_uniform(blocks, stages).unwrap();
                assert_eq!(parts.first().unwrap().start, 0);
                assert_eq!(parts.last().unwrap().end, blocks);
                assert!(parts.windows(2).all(|w| w[0].end == w[1].start));
                let lens: Vec<usize> = parts.iter().map(|r| r.len()).collect();
                assert!(lens.iter().max().unwrap() - lens.iter().min().unwrap() <= 1);
            }
        }
        let err = partition_uniform(3, 4).unwrap_err();
        assert!(matches!(
            err,
            NnError::TooManyStages {
                num_blocks: 3,
                num_stages: 4
            }
        ));
        assert!(err.to_string().contains("3 blocks into 4 stages"), "{err}");
        assert!(partition_uniform(3, 0).is_err());
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
        let block = Block::Linear {
            input: 2,
            output: 3,
            relu: false,
        };
        // PyTorch [out=3, in=2].
        let file = vec![vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0], vec![0.5, 0.25, 0.125]];
        let p = BlockParams::from_file_layout(block, file.clone());
        assert_eq!(p.values()[0], vec![1.0, 3.0, 5.0, 2.0, 4.0, 6.0]);
        assert_eq!(p.to_file_layout(), file);
        // y = x Wᵀ + b as in PyTorch: x = [1, 1] → [3.5, 7.25, 11.125].
        let y = block.forward(tensor2(vec![1.0, 1.0], 1, 2), &p.tensors);
        assert_eq!(to_vec(&y), vec![3.5, 7.25, 11.125]);
    }
}
