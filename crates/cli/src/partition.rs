//! `timeprest partition`: how a model splits into pipeline stages, and what that split is
//! predicted to deliver.
//!
//! Choosing W and the split is the first decision of a pipeline run, and it is cheap to get
//! wrong: one heavy stage sets the pace of all. This command builds the model (for a data set's
//! input shape, or a given one), measures every block's forward and backward on this machine,
//! splits it (`--partition uniform|params|ops|time` or `--split`), and prints per stage the blocks,
//! parameters, the activation it sends on and its measured time. It then replays the schedule
//! with those times through the cost-model simulator (`timeprest_schedule::simulate_costs`) and
//! prints the predicted throughput of every partition method, so the split can be compared
//! before any training.

use std::ops::Range;
use std::path::PathBuf;

use clap::Args;
use timeprest_data::{DEFAULT_SEQ_LEN, LoadOptions};
use timeprest_nn::{
    AvailableMemory, Block, BlockProfile, GptConfig, MODEL_NAMES, ModelSpec, NnError,
    PartitionMethod, ProfiledCost, Shape, Workload, partition_balanced, partition_manual,
    partition_uniform, profile_blocks,
};
use timeprest_schedule::{ScheduleConfig, ScheduleKind, generate, simulate_costs};

use crate::train::{ModelSizeArgs, parse_dataset};
use crate::usage_error;

/// Show how a model splits into stages, with measured per-stage times and the predicted
/// pipeline throughput.
#[derive(Args, Debug)]
pub struct PartitionArgs {
    /// Model architecture.
    #[arg(long, default_value = "vgg16", value_parser = MODEL_NAMES)]
    pub model: String,
    /// W: pipeline stages.
    #[arg(long, default_value_t = 4)]
    pub stages: u32,
    /// Take the input shape and classes from this data set (otherwise `--input`/`--classes`,
    /// or `--seq-len`/`--classes` for `gpt`).
    #[arg(long, value_parser = parse_dataset)]
    pub dataset: Option<String>,
    /// Directory (or file) of the data set.
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Input shape CxHxW when no data set is given (not for `gpt`, which takes 1x1xT).
    #[arg(long, default_value = "3x32x32", value_parser = parse_shape)]
    pub input: Shape,
    /// Classes when no data set is given (for `gpt`: the vocabulary size).
    #[arg(long, default_value_t = 10)]
    pub classes: usize,
    /// Characters per sample of a `text:PATH` data set, or the context length of `gpt` when no
    /// data set is given.
    #[arg(long, value_name = "T", default_value_t = DEFAULT_SEQ_LEN)]
    pub seq_len: usize,
    /// The model's sizes.
    #[command(flatten)]
    pub size: ModelSizeArgs,
    /// The partition method whose split is printed.
    #[arg(long, value_enum, default_value = "time")]
    pub partition: PartitionMethod,
    /// A split by hand: the first block of each stage after the first.
    #[arg(long, value_delimiter = ',', value_name = "BLOCKS")]
    pub split: Vec<usize>,
    /// M: samples per mini-batch.
    #[arg(long, default_value_t = 32)]
    pub batch_size: usize,
    /// N: micro-batches per mini-batch (blocks are timed on micro-batches of M/N samples).
    #[arg(long, default_value_t = 3)]
    pub microbatches: u32,
    /// Schedule of the throughput prediction.
    #[arg(long, default_value = "nf1b")]
    pub schedule: ScheduleKind,
    /// Mini-batches in the simulated run.
    #[arg(long, default_value_t = 16)]
    pub minibatches: u32,
    /// Timed runs per block (after one warm-up); the median is used.
    #[arg(long, default_value_t = 3)]
    pub repeats: usize,
    /// Intra-op threads each block is timed on: a stage's `--threads-per-stage` (as in `train`,
    /// 1 by default).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=1024))]
    pub threads_per_stage: u64,
}

/// `CxHxW` → `[c, h, w]`.
fn parse_shape(text: &str) -> Result<Shape, String> {
    let parts: Vec<usize> = text
        .split(['x', '×'])
        .map(|p| p.trim().parse::<usize>())
        .collect::<Result<_, _>>()
        .map_err(|e| format!("`{text}` is not CxHxW: {e}"))?;
    match parts[..] {
        [c, h, w] if c > 0 && h > 0 && w > 0 => Ok([c, h, w]),
        _ => Err(format!(
            "`{text}` is not CxHxW with positive sizes, e.g. 3x32x32"
        )),
    }
}

/// Bytes as a short human-readable string.
fn bytes(n: usize) -> String {
    match n {
        n if n >= 1 << 20 => format!("{:.1} MB", n as f64 / f64::from(1 << 20)),
        n if n >= 1 << 10 => format!("{:.1} KB", n as f64 / 1024.0),
        n => format!("{n} B"),
    }
}

/// Thousands separators.
fn grouped(n: usize) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// What the simulator predicts for one split.
struct Prediction {
    samples_per_second: f64,
    bubble: f64,
    slowest: f64,
}

/// Predicted throughput of `split` under the schedule of `args`.
fn predict(
    args: &PartitionArgs,
    profiles: &[BlockProfile],
    split: &[Range<usize>],
) -> anyhow::Result<Prediction> {
    let config = ScheduleConfig::new(split.len() as u32, args.microbatches, args.minibatches);
    let schedule = generate(args.schedule, &config)?;
    let cost = ProfiledCost::new(profiles, split);
    let timeline = simulate_costs(&schedule, &cost)?;
    let samples = f64::from(args.minibatches) * args.batch_size as f64;
    let slowest = cost
        .forward
        .iter()
        .zip(&cost.backward)
        .map(|(f, b)| f + b)
        .fold(0.0, f64::max);
    Ok(Prediction {
        samples_per_second: samples / timeline.makespan().max(f64::MIN_POSITIVE),
        bubble: timeline.bubble_fraction(),
        slowest,
    })
}

/// A model that cannot be built, as a usage error: `--model: …` (with `context` appended),
/// except a model too large for memory, whose message already names its size flags.
fn model_error(error: NnError, context: &str) -> anyhow::Error {
    match error {
        NnError::TooLarge { .. } => error.into(),
        other => usage_error(format!("--model: {other}{context}")),
    }
}

/// Runs `timeprest partition`.
pub fn run(args: &PartitionArgs) -> anyhow::Result<()> {
    let size = args.size.model_size();
    let (spec, source) = match &args.dataset {
        Some(name) => {
            timeprest_data::check_data_dir(name, args.data_dir.as_deref())?;
            let options = LoadOptions {
                data_dir: args.data_dir.as_deref(),
                seq_len: args.seq_len,
            };
            let data = timeprest_data::load(name, &options)
                .map_err(|e| usage_error(format!("--dataset {name}: {e}")))?;
            let spec = ModelSpec::for_data(&args.model, &data.train, &size)
                .map_err(|e| model_error(e, ""))?;
            (spec, format!("data set {name}"))
        }
        None => {
            if let Some(dir) = &args.data_dir {
                return Err(usage_error(format!(
                    "--data-dir {}: no --dataset is given to read from it",
                    dir.display()
                )));
            }
            let (input, source) = if args.model == GptConfig::NAME {
                ([1, 1, args.seq_len], "--seq-len, --classes")
            } else {
                (args.input, "--input")
            };
            let spec = ModelSpec::from_name(&args.model, input, args.classes, &size)
                .map_err(|e| model_error(e, &format!(" ({source})")))?;
            (spec, source.to_owned())
        }
    };
    let (input, classes) = (spec.input_shape(), spec.num_classes());
    if args.microbatches == 0 || args.batch_size < args.microbatches as usize {
        return Err(usage_error(format!(
            "--batch-size: {} samples cannot be split into {} micro-batches",
            args.batch_size, args.microbatches
        )));
    }
    let microbatch = args.batch_size / args.microbatches as usize;
    // Profiling builds every block's weights and runs one micro-batch through each block.
    let profiling = Workload {
        microbatch_size: microbatch,
        microbatches_in_flight: 1,
        optimizer_state_sets: 0,
    };
    spec.check_memory(&profiling, &AvailableMemory::of_this_machine())?;
    let blocks = spec.blocks();
    let stages = args.stages as usize;
    let chosen = if args.split.is_empty() {
        None
    } else {
        let split = partition_manual(&args.split, blocks.len())
            .map_err(|e| usage_error(format!("--split: {e}")))?;
        if split.len() != stages {
            return Err(usage_error(format!(
                "--split: {} cut points make {} stages, but --stages is {stages}",
                args.split.len(),
                split.len()
            )));
        }
        Some(split)
    };
    partition_uniform(blocks.len(), stages).map_err(|e| usage_error(format!("--stages: {e}")))?;
    let profiles = profile_blocks(
        &spec,
        microbatch,
        args.repeats.max(1),
        args.threads_per_stage as usize,
    )?;
    let params: Vec<f64> = blocks.iter().map(|b| b.param_count() as f64).collect();
    let ops: Vec<f64> = blocks.iter().map(Block::forward_ops).collect();
    let times: Vec<f64> = profiles.iter().map(BlockProfile::total).collect();
    let split_by = |method: PartitionMethod| match method {
        PartitionMethod::Uniform => partition_uniform(blocks.len(), stages),
        PartitionMethod::Params => partition_balanced(&params, stages),
        PartitionMethod::Ops => partition_balanced(&ops, stages),
        PartitionMethod::Time => partition_balanced(&times, stages),
    };
    let method = args.partition;
    let (label, split) = match chosen {
        Some(split) => ("--split".to_owned(), split),
        None => (format!("--partition {method}"), split_by(method)?),
    };

    let [c, h, w] = input;
    let per_position = match spec.targets_per_sample() {
        1 => String::new(),
        positions => format!(" at each of {positions} positions"),
    };
    println!(
        "model {} ({c}x{h}x{w} -> {classes} classes{per_position}, {source}): {} blocks, {} \
         parameters",
        spec.name(),
        blocks.len(),
        grouped(spec.param_count())
    );
    println!(
        "{label}, {stages} stages; times: forward+backward of a micro-batch of {microbatch} \
         samples on this machine (median of {})",
        args.repeats.max(1)
    );
    println!();
    println!(
        "{:>5}  {:<9} {:<38} {:>11}  {:<22} {:>9} {:>9}",
        "stage", "blocks", "first .. last", "params", "sends (per micro-batch)", "fwd ms", "bwd ms"
    );
    for (s, range) in split.iter().enumerate() {
        let first = blocks[range.start].label();
        let last = blocks[range.end - 1].label();
        let names = if range.len() == 1 {
            first
        } else {
            format!("{first} .. {last}")
        };
        let stage_params: usize = blocks[range.clone()].iter().map(|b| b.param_count()).sum();
        let [oc, oh, ow] = blocks[range.end - 1].output_shape();
        let sends = if s + 1 == split.len() {
            "(loss)".to_owned()
        } else {
            format!("{oc}x{oh}x{ow} ({})", bytes(oc * oh * ow * microbatch * 4))
        };
        let fwd: f64 = profiles[range.clone()].iter().map(|p| p.forward).sum();
        let bwd: f64 = profiles[range.clone()].iter().map(|p| p.backward).sum();
        println!(
            "{s:>5}  {:<9} {names:<38} {:>11}  {sends:<22} {:>9.2} {:>9.2}",
            format!("{}..{}", range.start, range.end),
            grouped(stage_params),
            fwd * 1e3,
            bwd * 1e3
        );
    }
    println!();
    println!(
        "predicted throughput (cost-model simulator; schedule {}, N={}, M={}, {} mini-batches):",
        args.schedule, args.microbatches, args.batch_size, args.minibatches
    );
    let mut rows: Vec<(String, Vec<Range<usize>>)> = PartitionMethod::ALL
        .iter()
        .map(|&m| Ok((m.name().to_owned(), split_by(m)?)))
        .collect::<Result<_, timeprest_nn::NnError>>()?;
    if !args.split.is_empty() {
        rows.push(("--split".to_owned(), split.clone()));
    }
    for (name, s) in rows {
        let p = predict(args, &profiles, &s)?;
        let cuts: Vec<String> = s.iter().skip(1).map(|r| r.start.to_string()).collect();
        println!(
            "  {name:<8} {:>10.1} samples/s   bubble {:>5.1}%   slowest stage {:>8.2} ms   \
             split {}",
            p.samples_per_second,
            100.0 * p.bubble,
            p.slowest * 1e3,
            if cuts.is_empty() {
                "-".to_owned()
            } else {
                cuts.join(",")
            }
        );
    }
    Ok(())
}
