//! The partition study behind `timeprest partition`: how a model splits into pipeline stages,
//! and what that split is predicted to deliver.
//!
//! Choosing W and the split is the first decision of a pipeline run, and it is cheap to get
//! wrong: one heavy stage sets the pace of all. [`study_partition`] builds the model (for a data
//! set's input shape, or a given one), checks that profiling it fits in memory, measures every
//! block's forward and backward on this machine, splits it (by a [`PartitionMethod`] or by hand)
//! and returns per stage the blocks, parameters, the activation it sends on and its measured
//! time. It then replays the schedule with those times through the cost-model simulator
//! ([`timeprest_schedule::simulate_costs`]) for every partition method, so the split can be
//! compared before any training.
//!
//! The study takes a plain [`PartitionRequest`] (what the flags say, without clap) and returns
//! numbers, not text, in a [`PartitionStudy`]: the CLI only parses the flags and prints, and the
//! study can be tested without running the binary. A value the user can fix is refused as
//! [`ReportError::Invalid`] naming its flag, in the words the CLI prints.

use std::ops::Range;
use std::path::PathBuf;

use timeprest_data::LoadOptions;
use timeprest_nn::{
    AvailableMemory, Block, BlockProfile, GptConfig, ModelSize, ModelSpec, NnError,
    PartitionMethod, ProfiledCost, Shape, Workload, partition_balanced, partition_manual,
    partition_uniform, profile_blocks,
};
use timeprest_schedule::{ScheduleConfig, ScheduleKind, generate, simulate_costs};
use timeprest_train::config::{check_split_stages, microbatch_size};

use crate::ReportError;

/// What to study: the values of `timeprest partition`'s flags.
#[derive(Clone, Debug, PartialEq)]
pub struct PartitionRequest {
    /// The model's name (one of [`timeprest_nn::MODEL_NAMES`]).
    pub model: String,
    /// The model's sizes.
    pub size: ModelSize,
    /// Take the input shape and classes from this data set (otherwise `input` and `classes`,
    /// or `seq_len` and `classes` for `gpt`).
    pub dataset: Option<String>,
    /// Directory (or file) of the data set; refused without `dataset`.
    pub data_dir: Option<PathBuf>,
    /// Input shape when no data set is given (not for `gpt`, which takes 1x1xT).
    pub input: Shape,
    /// Classes when no data set is given (for `gpt`: the vocabulary size).
    pub classes: usize,
    /// Characters per sample of a `text:PATH` data set, or the context length T of `gpt`
    /// when no data set is given.
    pub seq_len: usize,
    /// W: pipeline stages.
    pub num_stages: u32,
    /// The partition method of the split studied per stage, when `manual_split` is empty.
    pub method: PartitionMethod,
    /// A split by hand: the first block of each stage after the first (empty: use `method`).
    pub manual_split: Vec<usize>,
    /// M: samples per mini-batch.
    pub batch_size: usize,
    /// N: micro-batches per mini-batch (blocks are timed on micro-batches of M/N samples).
    pub num_microbatches: u32,
    /// Schedule of the throughput predictions.
    pub schedule: ScheduleKind,
    /// Mini-batches in each simulated run.
    pub num_minibatches: u32,
    /// Timed runs per block after one warm-up, of which the median is used (0 counts as 1).
    pub repeats: usize,
    /// Intra-op threads each block is timed on, as a stage of a training run has.
    pub threads_per_stage: usize,
}

/// Where the model's input shape and classes came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum InputSource {
    /// The data set of this name.
    Dataset(String),
    /// The input shape and classes of the request (`--input`, `--classes`).
    Input,
    /// For `gpt` without a data set: T from `--seq-len`, the vocabulary from `--classes`.
    SeqLenAndClasses,
}

impl std::fmt::Display for InputSource {
    /// `data set NAME`, or the flags that gave the shape.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            InputSource::Dataset(name) => write!(f, "data set {name}"),
            InputSource::Input => f.write_str("--input"),
            InputSource::SeqLenAndClasses => f.write_str("--seq-len, --classes"),
        }
    }
}

/// How a split was chosen.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SplitSource {
    /// By a partition method.
    Method(PartitionMethod),
    /// By hand ([`PartitionRequest::manual_split`]).
    Manual,
}

/// The activation a stage sends to the next one for each micro-batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SentActivation {
    /// Its shape per sample (the stage's last block's output shape).
    pub shape: Shape,
    /// Its size for one micro-batch, in bytes (f32 values).
    pub bytes: usize,
}

/// One stage of the studied split.
#[derive(Clone, Debug, PartialEq)]
pub struct StageRow {
    /// The stage's blocks (indices into the model's blocks).
    pub blocks: Range<usize>,
    /// The label of its first block.
    pub first_block: String,
    /// The label of its last block (the same as `first_block` for a one-block stage).
    pub last_block: String,
    /// Its parameters.
    pub param_count: usize,
    /// What it sends on per micro-batch; `None` for the last stage, which computes the loss.
    pub sends: Option<SentActivation>,
    /// Measured forward time of its blocks on one micro-batch, in seconds.
    pub forward_seconds: f64,
    /// Measured backward time of its blocks on one micro-batch, in seconds.
    pub backward_seconds: f64,
}

/// What the cost-model simulator predicts for one split.
#[derive(Clone, Debug, PartialEq)]
pub struct MethodPrediction {
    /// How the split was chosen.
    pub split_source: SplitSource,
    /// The split: the first block of each stage after the first.
    pub cut_points: Vec<usize>,
    /// Predicted training throughput, in samples per second.
    pub samples_per_second: f64,
    /// Fraction of the stages' time spent idle, in [0, 1].
    pub bubble_fraction: f64,
    /// Forward plus backward time of one micro-batch on the slowest stage, in seconds.
    pub slowest_stage_seconds: f64,
}

/// What [`study_partition`] found.
#[derive(Clone, Debug, PartialEq)]
pub struct PartitionStudy {
    /// The model's name.
    pub model: &'static str,
    /// Its input shape per sample.
    pub input_shape: Shape,
    /// Its classes (for `gpt`: the vocabulary size).
    pub num_classes: usize,
    /// Targets per sample: 1 for a classifier, T for a language model.
    pub targets_per_sample: usize,
    /// Where the input shape and classes came from.
    pub input_source: InputSource,
    /// The model's blocks, the units a split cuts between.
    pub num_blocks: usize,
    /// The model's parameters.
    pub param_count: usize,
    /// Samples per micro-batch (M/N), the batch the blocks were timed on.
    pub microbatch_size: usize,
    /// Timed runs per block, of which the median was used.
    pub repeats: usize,
    /// How the split of `stages` was chosen.
    pub split_source: SplitSource,
    /// The split studied, stage by stage.
    pub stages: Vec<StageRow>,
    /// The prediction for every partition method in [`PartitionMethod::ALL`]'s order, then
    /// for the split by hand when one is given.
    pub predictions: Vec<MethodPrediction>,
}

/// Builds the model of `request`, times its blocks and studies its split and every partition
/// method's predicted throughput.
///
/// # Errors
/// [`ReportError::Invalid`] naming the flag for a value the user can fix (a model that cannot
/// take the input, a data set that cannot be loaded, a batch that cannot be cut into the
/// micro-batches, a split or stage count that does not fit the model);
/// [`ReportError::Model`] for a model too large for this machine's memory (its message names
/// the size flags) or one that cannot be profiled; [`ReportError::Data`] for a data directory
/// the data set does not read; [`ReportError::Schedule`] and [`ReportError::Simulation`] if a
/// prediction's schedule cannot be generated or simulated.
pub fn study_partition(request: &PartitionRequest) -> Result<PartitionStudy, ReportError> {
    let (spec, input_source) = build_model(request)?;
    let microbatch_size = microbatch_size(request.batch_size, request.num_microbatches)
        .map_err(|reason| ReportError::invalid("--batch-size", reason))?;
    // Profiling builds every block's weights and runs one micro-batch through each block.
    let profiling = Workload {
        microbatch_size,
        microbatches_in_flight: 1,
        microbatches_with_activations: 1,
        optimizer_state_sets: 0,
    };
    spec.check_memory(&profiling, &AvailableMemory::of_this_machine())?;
    let blocks = spec.blocks();
    let num_stages = request.num_stages as usize;
    let manual = if request.manual_split.is_empty() {
        None
    } else {
        let split = partition_manual(&request.manual_split, blocks.len())
            .map_err(|e| ReportError::invalid("--split", e))?;
        check_split_stages(request.manual_split.len(), request.num_stages)
            .map_err(|reason| ReportError::invalid("--split", reason))?;
        Some(split)
    };
    partition_uniform(blocks.len(), num_stages).map_err(|e| ReportError::invalid("--stages", e))?;
    let repeats = request.repeats.max(1);
    let profiles = profile_blocks(&spec, microbatch_size, repeats, request.threads_per_stage)?;
    let costs = BlockCosts::new(&blocks, &profiles);
    let (split_source, split) = match manual {
        Some(split) => (SplitSource::Manual, split),
        None => (
            SplitSource::Method(request.method),
            costs.split(request.method, num_stages)?,
        ),
    };
    let stages = split
        .iter()
        .enumerate()
        .map(|(s, range)| {
            stage_row(
                &blocks,
                &profiles,
                range.clone(),
                s + 1 == split.len(),
                microbatch_size,
            )
        })
        .collect();
    let mut splits = PartitionMethod::ALL
        .iter()
        .map(|&method| {
            Ok((
                SplitSource::Method(method),
                costs.split(method, num_stages)?,
            ))
        })
        .collect::<Result<Vec<_>, NnError>>()?;
    if split_source == SplitSource::Manual {
        splits.push((SplitSource::Manual, split));
    }
    let predictions = splits
        .into_iter()
        .map(|(source, split)| predict(request, &profiles, source, &split))
        .collect::<Result<_, _>>()?;
    Ok(PartitionStudy {
        model: spec.name(),
        input_shape: spec.input_shape(),
        num_classes: spec.num_classes(),
        targets_per_sample: spec.targets_per_sample(),
        input_source,
        num_blocks: blocks.len(),
        param_count: spec.param_count(),
        microbatch_size,
        repeats,
        split_source,
        stages,
        predictions,
    })
}

/// The model of `request`, for its data set's samples or for its input shape and classes.
fn build_model(request: &PartitionRequest) -> Result<(ModelSpec, InputSource), ReportError> {
    let name = request.model.as_str();
    match &request.dataset {
        Some(dataset) => {
            timeprest_data::check_data_dir(dataset, request.data_dir.as_deref())?;
            let options = LoadOptions {
                data_dir: request.data_dir.as_deref(),
                seq_len: request.seq_len,
            };
            let data = timeprest_data::load(dataset, &options)
                .map_err(|e| ReportError::invalid(format!("--dataset {dataset}"), e))?;
            let spec = ModelSpec::for_data(name, &data.train, &request.size)
                .map_err(|e| model_error(e, ""))?;
            Ok((spec, InputSource::Dataset(dataset.clone())))
        }
        None => {
            if let Some(dir) = &request.data_dir {
                return Err(ReportError::invalid(
                    format!("--data-dir {}", dir.display()),
                    "no --dataset is given to read from it",
                ));
            }
            let (input, source) = if name == GptConfig::NAME {
                ([1, 1, request.seq_len], InputSource::SeqLenAndClasses)
            } else {
                (request.input, InputSource::Input)
            };
            let spec = ModelSpec::from_name(name, input, request.classes, &request.size)
                .map_err(|e| model_error(e, &format!(" ({source})")))?;
            Ok((spec, source))
        }
    }
}

/// A model that cannot be built, as `--model: …` (with `context` appended), except a model
/// too large for memory, whose message already names its size flags.
fn model_error(error: NnError, context: &str) -> ReportError {
    match error {
        NnError::TooLarge { .. } => ReportError::Model(error),
        other => ReportError::invalid("--model", format!("{other}{context}")),
    }
}

/// Every block's cost by each measure a partition method balances.
struct BlockCosts {
    params: Vec<f64>,
    ops: Vec<f64>,
    times: Vec<f64>,
}

impl BlockCosts {
    fn new(blocks: &[Block], profiles: &[BlockProfile]) -> Self {
        Self {
            params: blocks.iter().map(|b| b.param_count() as f64).collect(),
            ops: blocks.iter().map(Block::forward_ops).collect(),
            times: profiles.iter().map(BlockProfile::total).collect(),
        }
    }

    /// The split of the blocks into `num_stages` stages by `method`.
    fn split(
        &self,
        method: PartitionMethod,
        num_stages: usize,
    ) -> Result<Vec<Range<usize>>, NnError> {
        match method {
            PartitionMethod::Uniform => partition_uniform(self.params.len(), num_stages),
            PartitionMethod::Params => partition_balanced(&self.params, num_stages),
            PartitionMethod::Ops => partition_balanced(&self.ops, num_stages),
            PartitionMethod::Time => partition_balanced(&self.times, num_stages),
        }
    }
}

/// The stage of `blocks[range]`; `last` when it is the pipeline's last stage.
fn stage_row(
    blocks: &[Block],
    profiles: &[BlockProfile],
    range: Range<usize>,
    last: bool,
    microbatch_size: usize,
) -> StageRow {
    let shape = blocks[range.end - 1].output_shape();
    let sends = (!last).then(|| SentActivation {
        shape,
        bytes: shape.iter().product::<usize>() * microbatch_size * size_of::<f32>(),
    });
    StageRow {
        first_block: blocks[range.start].label(),
        last_block: blocks[range.end - 1].label(),
        param_count: blocks[range.clone()].iter().map(Block::param_count).sum(),
        sends,
        forward_seconds: profiles[range.clone()].iter().map(|p| p.forward).sum(),
        backward_seconds: profiles[range.clone()].iter().map(|p| p.backward).sum(),
        blocks: range,
    }
}

/// The simulator's prediction for `split` under the schedule of `request`.
fn predict(
    request: &PartitionRequest,
    profiles: &[BlockProfile],
    split_source: SplitSource,
    split: &[Range<usize>],
) -> Result<MethodPrediction, ReportError> {
    let config = ScheduleConfig::new(
        split.len() as u32,
        request.num_microbatches,
        request.num_minibatches,
    );
    let schedule = generate(request.schedule, &config)?;
    let cost = ProfiledCost::new(profiles, split);
    let timeline = simulate_costs(&schedule, &cost)?;
    let samples = f64::from(request.num_minibatches) * request.batch_size as f64;
    let slowest_stage_seconds = cost
        .forward
        .iter()
        .zip(&cost.backward)
        .map(|(f, b)| f + b)
        .fold(0.0, f64::max);
    Ok(MethodPrediction {
        split_source,
        cut_points: split.iter().skip(1).map(|r| r.start).collect(),
        samples_per_second: samples / timeline.makespan().max(f64::MIN_POSITIVE),
        bubble_fraction: timeline.bubble_fraction(),
        slowest_stage_seconds,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// LeNet-5 (7 blocks) on 1x28x28 inputs, 3 stages, M = 6 in N = 3 micro-batches, timed
    /// once: a study of a few hundred milliseconds.
    fn lenet5() -> PartitionRequest {
        PartitionRequest {
            model: "lenet5".into(),
            size: ModelSize::default(),
            dataset: None,
            data_dir: None,
            input: [1, 28, 28],
            classes: 10,
            seq_len: 16,
            num_stages: 3,
            method: PartitionMethod::Time,
            manual_split: Vec::new(),
            batch_size: 6,
            num_microbatches: 3,
            schedule: ScheduleKind::Nf1b,
            num_minibatches: 4,
            repeats: 1,
            threads_per_stage: 1,
        }
    }

    /// The flag and message of an [`ReportError::Invalid`], or a panic naming what came instead.
    fn invalid(request: &PartitionRequest) -> (String, String) {
        match study_partition(request) {
            Err(ReportError::Invalid { flag, reason }) => (flag, reason),
            other => panic!("expected an invalid-input error, got {other:?}"),
        }
    }

    #[test]
    fn the_stages_cover_every_block_in_order_and_every_parameter() {
        let request = lenet5();
        let study = study_partition(&request).unwrap();
        let spec = ModelSpec::from_name("lenet5", [1, 28, 28], 10, &ModelSize::default()).unwrap();
        let blocks = spec.blocks();
        assert_eq!(study.model, "lenet5");
        assert_eq!(study.input_shape, [1, 28, 28]);
        assert_eq!((study.num_classes, study.targets_per_sample), (10, 1));
        assert_eq!(study.input_source, InputSource::Input);
        assert_eq!(study.num_blocks, blocks.len());
        assert_eq!(study.param_count, spec.param_count());
        assert_eq!(study.microbatch_size, 2);
        assert_eq!(
            study.split_source,
            SplitSource::Method(PartitionMethod::Time)
        );

        assert_eq!(study.stages.len(), 3);
        let mut next = 0;
        for (s, stage) in study.stages.iter().enumerate() {
            assert_eq!(
                stage.blocks.start,
                next,
                "stage {s} starts where {} ends",
                s - 1
            );
            assert!(!stage.blocks.is_empty(), "stage {s} is empty");
            next = stage.blocks.end;
            assert_eq!(stage.first_block, blocks[stage.blocks.start].label());
            assert_eq!(stage.last_block, blocks[stage.blocks.end - 1].label());
            assert!(stage.forward_seconds > 0.0 && stage.backward_seconds > 0.0);
            match &stage.sends {
                Some(sent) => {
                    // What a stage sends is what the next stage's first block takes (which
                    // may see it flattened).
                    assert_eq!(sent.shape, blocks[stage.blocks.end - 1].output_shape());
                    let [c, h, w] = sent.shape;
                    let next = blocks[stage.blocks.end].input_shape();
                    assert_eq!(c * h * w, next.iter().product::<usize>());
                    assert_eq!(sent.bytes, c * h * w * 2 * 4);
                }
                None => assert_eq!(s, 2, "only the last stage sends nothing"),
            }
        }
        assert_eq!(next, blocks.len());
        let params: usize = study.stages.iter().map(|s| s.param_count).sum();
        assert_eq!(params, spec.param_count());

        let sources: Vec<SplitSource> = study.predictions.iter().map(|p| p.split_source).collect();
        let methods: Vec<SplitSource> = PartitionMethod::ALL
            .into_iter()
            .map(SplitSource::Method)
            .collect();
        assert_eq!(sources, methods);
        for p in &study.predictions {
            assert_eq!(p.cut_points.len(), 2, "{p:?}");
            assert!(
                p.samples_per_second.is_finite() && p.samples_per_second > 0.0,
                "{p:?}"
            );
            assert!((0.0..1.0).contains(&p.bubble_fraction), "{p:?}");
            assert!(p.slowest_stage_seconds > 0.0, "{p:?}");
        }
        // The studied split is the one its method predicts for.
        let time = &study.predictions[3];
        let starts: Vec<usize> = study.stages[1..].iter().map(|s| s.blocks.start).collect();
        assert_eq!(time.cut_points, starts);
        let slowest = study
            .stages
            .iter()
            .map(|s| s.forward_seconds + s.backward_seconds)
            .fold(0.0, f64::max);
        assert!((time.slowest_stage_seconds - slowest).abs() <= 1e-9 * slowest);
        // The uniform split of 7 blocks into 3 stages.
        assert_eq!(study.predictions[0].cut_points, vec![3, 5]);
    }

    #[test]
    fn a_split_by_hand_is_studied_and_predicted_after_the_methods() {
        let request = PartitionRequest {
            manual_split: vec![2, 5],
            ..lenet5()
        };
        let study = study_partition(&request).unwrap();
        assert_eq!(study.split_source, SplitSource::Manual);
        let ranges: Vec<Range<usize>> = study.stages.iter().map(|s| s.blocks.clone()).collect();
        assert_eq!(ranges, vec![0..2, 2..5, 5..7]);
        assert_eq!(study.predictions.len(), PartitionMethod::ALL.len() + 1);
        let manual = study.predictions.last().unwrap();
        assert_eq!(manual.split_source, SplitSource::Manual);
        assert_eq!(manual.cut_points, vec![2, 5]);
    }

    #[test]
    fn values_the_user_can_fix_are_refused_naming_their_flag() {
        let split = |cuts: Vec<usize>, num_stages| PartitionRequest {
            manual_split: cuts,
            num_stages,
            ..lenet5()
        };
        assert_eq!(
            invalid(&split(vec![2, 5], 4)),
            (
                "--split".into(),
                "2 cut points make 3 stages, but --stages is 4".into()
            )
        );
        let (flag, reason) = invalid(&split(vec![5, 2], 3));
        assert_eq!(flag, "--split");
        assert!(reason.contains("must increase strictly"), "{reason}");
        let (flag, reason) = invalid(&split(Vec::new(), 8));
        assert_eq!(flag, "--stages");
        assert!(reason.contains("7 blocks into 8 stages"), "{reason}");
        let batch = PartitionRequest {
            batch_size: 2,
            ..lenet5()
        };
        assert_eq!(
            invalid(&batch),
            (
                "--batch-size".into(),
                "2 samples cannot be split into 3 micro-batches".into()
            )
        );
        let no_microbatches = PartitionRequest {
            num_microbatches: 0,
            ..lenet5()
        };
        assert_eq!(invalid(&no_microbatches).0, "--batch-size");
        let dir = PartitionRequest {
            data_dir: Some("/data".into()),
            ..lenet5()
        };
        assert_eq!(
            invalid(&dir),
            (
                "--data-dir /data".into(),
                "no --dataset is given to read from it".into()
            )
        );
        let too_small = PartitionRequest {
            model: "vgg16".into(),
            input: [1, 8, 8],
            ..lenet5()
        };
        let (flag, reason) = invalid(&too_small);
        assert_eq!(flag, "--model");
        assert!(reason.ends_with(" (--input)"), "{reason}");
        let (flag, _) = invalid(&PartitionRequest {
            dataset: Some("no-such-set".into()),
            ..lenet5()
        });
        assert_eq!(flag, "--dataset no-such-set");
    }

    #[test]
    fn a_data_set_gives_the_input_shape_and_classes() {
        let request = PartitionRequest {
            model: "mlp".into(),
            dataset: Some("digits".into()),
            num_stages: 2,
            ..lenet5()
        };
        let study = study_partition(&request).unwrap();
        assert_eq!(study.input_source, InputSource::Dataset("digits".into()));
        // The MLP takes the 1x8x8 digits flattened.
        assert_eq!(study.input_shape, [64, 1, 1]);
        assert_eq!(study.num_classes, 10);
        assert_eq!(study.stages.len(), 2);
        assert_eq!(study.input_source.to_string(), "data set digits");
    }
}
