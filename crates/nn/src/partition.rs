//! Splitting a model's blocks into pipeline stages: by count, by parameters, by arithmetic, by
//! measured time, or by hand.
//!
//! A pipeline runs at the pace of its slowest stage, so the useful split is the contiguous one
//! that minimises the largest per-stage cost. [`partition_balanced`] finds it exactly with the
//! classic dynamic program over prefix sums (as PipeDream's and torchgpipe's partitioners do):
//! `best[k][i]` = the smallest possible maximum stage cost when the first `i` blocks form `k`
//! stages. The costs are parameter counts ([`PartitionMethod::Params`]), each block's forward
//! arithmetic counted from its shapes ([`PartitionMethod::Ops`], the default: deterministic, free
//! to compute, within 10 % of the profiled optimum on every zoo conv model at 2 and 4 stages;
//! see `Block::forward_ops`), or forward + backward times
//! measured on this machine by [`profile_blocks`] ([`PartitionMethod::Time`]: closest to the
//! truth, but a measurement, so two runs of one command may split differently).
//! [`ProfiledCost`] turns the measured times of a split into the schedule crate's
//! [`CostModel`], so the simulator can predict the pipeline's throughput before training.

use std::fmt;
use std::ops::Range;
use std::str::FromStr;
use std::time::Instant;

use burn::tensor::Tensor;
use serde::{Deserialize, Serialize};
use timeprest_schedule::CostModel;

use crate::block::Norm;
use crate::tensor::tensor2;
use crate::{Block, BlockParams, ModelParams, ModelSpec, NnError, init_params};

/// How to choose the split when none is given by hand.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize, clap::ValueEnum,
)]
#[serde(rename_all = "kebab-case")]
pub enum PartitionMethod {
    /// Equal numbers of blocks (the first stages one more when it does not divide).
    Uniform,
    /// Balanced parameter counts.
    Params,
    /// Balanced forward arithmetic, counted from the blocks' shapes (`Block::forward_ops`).
    #[default]
    Ops,
    /// Balanced measured forward + backward time.
    Time,
}

impl PartitionMethod {
    /// All methods, in `--partition`'s order.
    pub const ALL: [PartitionMethod; 4] = [
        PartitionMethod::Uniform,
        PartitionMethod::Params,
        PartitionMethod::Ops,
        PartitionMethod::Time,
    ];

    /// The name `--partition` uses.
    pub fn name(self) -> &'static str {
        match self {
            PartitionMethod::Uniform => "uniform",
            PartitionMethod::Params => "params",
            PartitionMethod::Ops => "ops",
            PartitionMethod::Time => "time",
        }
    }
}

impl fmt::Display for PartitionMethod {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for PartitionMethod {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|m| m.name() == s)
            .ok_or_else(|| {
                format!("unknown partition method `{s}`; valid: uniform, params, ops, time")
            })
    }
}

fn check_stages(num_blocks: usize, num_stages: usize) -> Result<(), NnError> {
    if num_stages == 0 || num_stages > num_blocks {
        return Err(NnError::TooManyStages {
            num_blocks,
            num_stages,
        });
    }
    Ok(())
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
    check_stages(num_blocks, num_stages)?;
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

/// The contiguous split of blocks with costs `costs` into `num_stages` non-empty stages that
/// minimises the largest stage cost (exact dynamic program, O(W·n²)). Among optimal splits it
/// returns the one whose stages end earliest, scanning from the last stage.
///
/// # Errors
/// [`NnError::TooManyStages`] if `num_stages` is 0 or larger than `costs.len()`, and
/// [`NnError::InvalidModel`] if a cost is negative or not finite.
pub fn partition_balanced(costs: &[f64], num_stages: usize) -> Result<Vec<Range<usize>>, NnError> {
    let n = costs.len();
    check_stages(n, num_stages)?;
    if let Some(bad) = costs.iter().find(|c| !(c.is_finite() && **c >= 0.0)) {
        return Err(NnError::InvalidModel(format!(
            "block cost {bad} must be finite and >= 0"
        )));
    }
    let mut prefix = vec![0.0; n + 1];
    for (i, c) in costs.iter().enumerate() {
        prefix[i + 1] = prefix[i] + c;
    }
    // best[k][i]: k + 1 stages over the first i blocks; cut[k][i]: where the last one starts.
    let mut best = vec![vec![f64::INFINITY; n + 1]; num_stages];
    let mut cut = vec![vec![0usize; n + 1]; num_stages];
    best[0][1..].copy_from_slice(&prefix[1..]);
    for k in 1..num_stages {
        for i in k + 1..=n {
            for j in k..i {
                let cost = best[k - 1][j].max(prefix[i] - prefix[j]);
                if cost < best[k][i] {
                    best[k][i] = cost;
                    cut[k][i] = j;
                }
            }
        }
    }
    let mut ranges = Vec::with_capacity(num_stages);
    let mut end = n;
    for k in (0..num_stages).rev() {
        let start = if k == 0 { 0 } else { cut[k][end] };
        ranges.push(start..end);
        end = start;
    }
    ranges.reverse();
    Ok(ranges)
}

/// The split given by hand: `cuts` are the first blocks of stages 1, 2, … (`--split 3,7,12`
/// makes stages `0..3, 3..7, 7..12, 12..n`).
///
/// # Errors
/// [`NnError::InvalidModel`] if the cuts are not strictly increasing within `1..num_blocks`.
pub fn partition_manual(cuts: &[usize], num_blocks: usize) -> Result<Vec<Range<usize>>, NnError> {
    let mut start = 0;
    let mut ranges = Vec::with_capacity(cuts.len() + 1);
    for &cut in cuts {
        if cut <= start || cut >= num_blocks {
            return Err(NnError::InvalidModel(format!(
                "split {cuts:?}: cut points must increase strictly and lie in 1..{num_blocks} \
                 (the model has {num_blocks} blocks); {cut} does not"
            )));
        }
        ranges.push(start..cut);
        start = cut;
    }
    ranges.push(start..num_blocks);
    Ok(ranges)
}

/// Measured time of one block for one micro-batch, in seconds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct BlockProfile {
    /// Forward, with autodiff recording (as in training).
    pub forward: f64,
    /// Backward: the input gradient and the parameter gradients.
    pub backward: f64,
}

impl BlockProfile {
    /// Forward plus backward.
    pub fn total(&self) -> f64 {
        self.forward + self.backward
    }
}

/// Median of `values` (which must not be empty).
fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

/// Measures each block's forward and backward on a micro-batch of `batch` samples: one warm-up
/// run, then the median of `repeats` runs. Inputs are realistic: block `i` gets what the
/// initialised blocks before it output for a fixed pseudo-random input (token ids for a
/// language model). Each block runs the path a graph-mode stage runs: the closed-form backward
/// where the block has one, autodiff otherwise, on a pool of `threads` intra-op threads (a
/// stage's `--threads-per-stage`: profiled on all cores, a one-thread stage looked 1.6× faster
/// than it trains).
///
/// # Errors
/// [`NnError::InvalidModel`] if the spec is invalid or `batch`, `repeats` or `threads` is 0;
/// [`NnError::ThreadPool`] if the threads cannot be started.
pub fn profile_blocks(
    spec: &ModelSpec,
    batch: usize,
    repeats: usize,
    threads: usize,
) -> Result<Vec<BlockProfile>, NnError> {
    if batch == 0 || repeats == 0 || threads == 0 {
        return Err(NnError::InvalidModel(format!(
            "profiling needs a batch, repeats and threads of at least 1, got {batch}, {repeats} \
             and {threads}"
        )));
    }
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .map_err(|e| NnError::ThreadPool {
            threads,
            cause: e.to_string(),
        })?;
    pool.install(|| profile_on_this_pool(spec, batch, repeats))
}

/// [`profile_blocks`] on the current rayon pool.
fn profile_on_this_pool(
    spec: &ModelSpec,
    batch: usize,
    repeats: usize,
) -> Result<Vec<BlockProfile>, NnError> {
    let params: ModelParams = init_params(spec, 0)?;
    let features = spec.input_features();
    let values = (0..batch * features)
        .map(|i| {
            let draw = i * 7919 % 1000;
            match spec {
                ModelSpec::Gpt(gpt) => (draw % gpt.vocab_size) as f32,
                ModelSpec::Mlp(_) | ModelSpec::Net(_) => (draw as f32 / 500.0) - 1.0,
            }
        })
        .collect();
    let mut x = tensor2(values, batch, features);
    let mut profiles = Vec::with_capacity(params.len());
    for p in &params {
        let (mut forward, mut backward) = (Vec::new(), Vec::new());
        for run in 0..=repeats {
            let (forward_seconds, backward_seconds) = if p.block.has_closed_form() {
                time_closed_form(p, &x)
            } else {
                time_autodiff(p, &x)
            };
            if run > 0 {
                forward.push(forward_seconds);
                backward.push(backward_seconds);
            }
        }
        profiles.push(BlockProfile {
            forward: median(forward),
            backward: median(backward),
        });
        x = p.forward_eval(x);
    }
    Ok(profiles)
}

/// Seconds of one forward and one backward of block `p` at input `x` as a graph-mode stage
/// runs them when the block has a closed-form backward: a plain forward recording what the
/// backward reads, then the closed form (weight gradients included).
fn time_closed_form(p: &BlockParams, x: &Tensor<2>) -> (f64, f64) {
    let start = Instant::now();
    let mut layer_inputs = Vec::new();
    let out = p.block.forward_recording(
        x.clone(),
        &p.tensors,
        Norm::Batch(&mut Vec::new()),
        Some(&mut layer_inputs),
    );
    let middle = Instant::now();
    let grads = (p.block)
        .closed_form_backward(x, &p.tensors, &out, out.ones_like(), &layer_inputs)
        .expect("a block with a closed form has a closed-form backward");
    drop(grads);
    let end = Instant::now();
    ((middle - start).as_secs_f64(), (end - middle).as_secs_f64())
}

/// [`time_closed_form`] for a block without a closed form: its forward under autodiff and
/// autodiff's backward, as a stage runs them.
fn time_autodiff(p: &BlockParams, x: &Tensor<2>) -> (f64, f64) {
    let input = x.clone().autodiff().require_grad();
    let leaves: Vec<Tensor<1>> = p
        .tensors
        .iter()
        .map(|t| t.clone().autodiff().require_grad())
        .collect();
    let start = Instant::now();
    let out = p
        .block
        .forward(input, &leaves, Norm::Batch(&mut Vec::new()));
    let middle = Instant::now();
    let grads = out.sum().backward();
    drop(grads);
    let end = Instant::now();
    ((middle - start).as_secs_f64(), (end - middle).as_secs_f64())
}

/// The split of `spec` into `num_stages` stages by `method`; `Time` profiles the blocks on
/// micro-batches of `batch` samples first, on `threads` threads (a stage's).
///
/// # Errors
/// [`NnError::TooManyStages`] if the model has fewer blocks than stages, or the errors of
/// [`profile_blocks`].
pub fn partition_model(
    spec: &ModelSpec,
    method: PartitionMethod,
    num_stages: usize,
    batch: usize,
    threads: usize,
) -> Result<Vec<Range<usize>>, NnError> {
    let blocks = spec.try_blocks()?;
    match method {
        PartitionMethod::Uniform => partition_uniform(blocks.len(), num_stages),
        PartitionMethod::Params => {
            let costs: Vec<f64> = blocks.iter().map(|b| b.param_count() as f64).collect();
            partition_balanced(&costs, num_stages)
        }
        PartitionMethod::Ops => {
            let costs: Vec<f64> = blocks.iter().map(Block::forward_ops).collect();
            partition_balanced(&costs, num_stages)
        }
        PartitionMethod::Time => {
            check_stages(blocks.len(), num_stages)?;
            let costs: Vec<f64> = profile_blocks(spec, batch, 3, threads)?
                .iter()
                .map(BlockProfile::total)
                .collect();
            partition_balanced(&costs, num_stages)
        }
    }
}

/// Per-stage durations from measured block times: a stage's forward (backward) is the sum of
/// its blocks' forwards (backwards). Updates and transfers are taken as free (shared memory).
#[derive(Clone, Debug, PartialEq)]
pub struct ProfiledCost {
    /// Forward of one micro-batch, per stage.
    pub forward: Vec<f64>,
    /// Backward of one micro-batch, per stage.
    pub backward: Vec<f64>,
}

impl ProfiledCost {
    /// The stage costs of `split` from per-block `profiles`.
    ///
    /// # Panics
    /// If a range of `split` lies outside `profiles` (a caller bug).
    pub fn new(profiles: &[BlockProfile], split: &[Range<usize>]) -> Self {
        let sum = |r: &Range<usize>, f: fn(&BlockProfile) -> f64| -> f64 {
            profiles[r.clone()].iter().map(f).sum()
        };
        Self {
            forward: split.iter().map(|r| sum(r, |p| p.forward)).collect(),
            backward: split.iter().map(|r| sum(r, |p| p.backward)).collect(),
        }
    }

    fn at(values: &[f64], stage: u32) -> f64 {
        values.get(stage as usize).copied().unwrap_or(0.0)
    }
}

impl CostModel for ProfiledCost {
    fn forward(&self, stage: u32) -> f64 {
        Self::at(&self.forward, stage)
    }
    fn backward_minibatch(&self, stage: u32, num_microbatches: u32) -> f64 {
        Self::at(&self.backward, stage) * f64::from(num_microbatches)
    }
    fn backward_microbatch(&self, stage: u32) -> f64 {
        Self::at(&self.backward, stage)
    }
    fn update(&self, _stage: u32) -> f64 {
        0.0
    }
    fn transfer(&self, _from_stage: u32, _to_stage: u32) -> f64 {
        0.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{BasicBlock, Conv2d, Linear, MaxPool2d, NORM_VALUE_OPS, PATCH_VALUE_OPS};

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

    /// The largest stage cost of `split`, summed directly.
    fn bottleneck(costs: &[f64], split: &[Range<usize>]) -> f64 {
        split
            .iter()
            .map(|r| costs[r.clone()].iter().sum::<f64>())
            .fold(0.0, f64::max)
    }

    /// Every split of `n` blocks into `w` non-empty contiguous stages.
    fn all_splits(n: usize, w: usize) -> Vec<Vec<Range<usize>>> {
        if w == 1 {
            return vec![vec![0..n]];
        }
        (w - 1..n)
            .flat_map(|last_start| {
                all_splits(last_start, w - 1).into_iter().map(move |mut s| {
                    s.push(last_start..n);
                    s
                })
            })
            .collect()
    }

    #[test]
    fn the_dynamic_program_is_optimal_against_brute_force() {
        let mut state = 0x9E37_79B9_u64;
        let mut next = || {
            state = state
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            (state >> 33) as f64 / (1u64 << 31) as f64
        };
        for case in 0..300 {
            let n = 1 + case % 9;
            // Some cases with zero-cost blocks and heavy outliers, like pools next to convs.
            let costs: Vec<f64> = (0..n)
                .map(|_| {
                    let r = next();
                    if r < 0.2 {
                        0.0
                    } else if r > 0.9 {
                        50.0 * r
                    } else {
                        r
                    }
                })
                .collect();
            for w in 1..=n {
                let split = partition_balanced(&costs, w).unwrap();
                assert_eq!(split.len(), w);
                assert_eq!((split[0].start, split[w - 1].end), (0, n));
                assert!(split.iter().all(|r| !r.is_empty()));
                assert!(split.windows(2).all(|p| p[0].end == p[1].start));
                let best = all_splits(n, w)
                    .iter()
                    .map(|s| bottleneck(&costs, s))
                    .fold(f64::INFINITY, f64::min);
                let got = bottleneck(&costs, &split);
                assert!(
                    (got - best).abs() <= 1e-9 * best.max(1.0),
                    "costs {costs:?}, {w} stages: got {got} ({split:?}), optimum {best}"
                );
            }
        }
        assert_eq!(
            partition_balanced(&[1.0, 1.0, 1.0, 6.0], 2).unwrap(),
            vec![0..3, 3..4]
        );
        assert!(partition_balanced(&[1.0], 2).is_err());
        assert!(partition_balanced(&[1.0, f64::NAN], 2).is_err());
    }

    #[test]
    fn manual_splits_are_checked() {
        assert_eq!(
            partition_manual(&[3, 7, 12], 15).unwrap(),
            vec![0..3, 3..7, 7..12, 12..15]
        );
        assert_eq!(partition_manual(&[], 4).unwrap(), vec![0..4]);
        for bad in [&[0][..], &[3, 3], &[5, 2], &[15]] {
            let err = partition_manual(bad, 15).unwrap_err().to_string();
            assert!(err.contains("split") && err.contains("15 blocks"), "{err}");
        }
    }

    #[test]
    fn forward_ops_count_each_layer_from_the_shapes() {
        let linear = Block::Linear(Linear {
            input: 784,
            output: 1024,
            relu: true,
        });
        assert_eq!(linear.forward_ops(), (784 * 1024) as f64);
        let conv2d = |input, channels, kernel, stride, padding| {
            Block::Conv2d(Conv2d {
                input,
                channels,
                kernel,
                stride,
                padding,
                bias: true,
                relu: true,
            })
        };
        let conv = conv2d([3, 32, 32], 16, 3, 2, 1);
        // Multiply-adds, and the 3·9 values unrolled per output position.
        let patches = (3 * 9 * 16 * 16) as f64;
        assert_eq!(
            conv.forward_ops(),
            16.0 * patches + PATCH_VALUE_OPS * patches
        );
        // conv1 (stride 2) + bn1 + relu + conv2 + bn2, and the 1×1 projection + its bn; a 1×1
        // stride-1 convolution unrolls nothing, a strided one does.
        let residual = Block::BasicBlock(BasicBlock {
            input: [16, 32, 32],
            planes: 32,
            stride: 2,
        });
        let positions = (16 * 16) as f64;
        let map = 32.0 * positions;
        let conv = |patch_values: f64| 32.0 * patch_values + PATCH_VALUE_OPS * patch_values;
        let norm = NORM_VALUE_OPS * map;
        let main = conv(16.0 * 9.0 * positions) + norm + map + conv(32.0 * 9.0 * positions) + norm;
        let shortcut = conv(16.0 * positions) + norm;
        assert_eq!(residual.forward_ops(), main + shortcut);
        let pointwise = conv2d([8, 4, 4], 16, 1, 1, 0);
        assert_eq!(pointwise.forward_ops(), (8 * 16 * 16) as f64);
        let pool = Block::MaxPool2d(MaxPool2d {
            input: [6, 28, 28],
            kernel: 2,
            stride: 2,
            padding: 0,
        });
        assert_eq!(pool.forward_ops(), (6 * 14 * 14 * 4) as f64);
    }

    #[test]
    fn the_ops_partition_balances_arithmetic_where_uniform_does_not() {
        // On 3×32×32 images LeNet-5's first convolution is more than half of its cost (352,800
        // of 658,024 multiply-adds, and 4 times the second's unrolled values): ops gives it a
        // stage alone, as profiling does (`timeprest partition --model lenet5 --dataset
        // synthetic --stages 2`: split 1 for both), where uniform puts 4 of the 7 blocks on
        // stage 0.
        let lenet5 = ModelSpec::from_name("lenet5", [3, 32, 32], 10, &Default::default()).unwrap();
        let ops = partition_model(&lenet5, PartitionMethod::Ops, 2, 8, 1).unwrap();
        assert_eq!(ops[0], 0..1);
        assert_ne!(
            ops,
            partition_model(&lenet5, PartitionMethod::Uniform, 2, 8, 1).unwrap()
        );
        // Deterministic: the same split every time, unlike a measurement.
        assert_eq!(
            ops,
            partition_model(&lenet5, PartitionMethod::Ops, 2, 8, 1).unwrap()
        );
        assert_eq!(PartitionMethod::default(), PartitionMethod::Ops);
    }

    #[test]
    fn method_names_round_trip() {
        for m in PartitionMethod::ALL {
            assert_eq!(m.name().parse::<PartitionMethod>(), Ok(m));
        }
        assert!(
            "fast"
                .parse::<PartitionMethod>()
                .unwrap_err()
                .contains("uniform")
        );
    }

    #[test]
    fn profiled_costs_sum_blocks_per_stage() {
        let p = |f, b| BlockProfile {
            forward: f,
            backward: b,
        };
        let profiles = [p(1.0, 2.0), p(3.0, 4.0), p(5.0, 6.0)];
        let cost = ProfiledCost::new(&profiles, &[0..2, 2..3]);
        assert_eq!(cost.forward, vec![4.0, 5.0]);
        assert_eq!(cost.backward_minibatch(1, 3), 18.0);
        assert_eq!(cost.backward_microbatch(0), 6.0);
    }
}
