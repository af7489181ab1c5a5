//! `timeprest partition`: how a model splits into pipeline stages, and what that split is
//! predicted to deliver.
//!
//! This file only parses the flags into a [`PartitionRequest`] and prints the
//! [`timeprest_report::partition`] study it returns: per stage the blocks, parameters, the
//! activation it sends on and its measured time, then the predicted throughput of every
//! partition method. Building the model, timing its blocks, splitting it and simulating the
//! schedule live in the library, beside their tests.

use std::path::PathBuf;

use clap::Args;
use timeprest_data::DEFAULT_SEQ_LEN;
use timeprest_nn::{MODEL_NAMES, PartitionMethod, Shape};
use timeprest_report::ReportError;
use timeprest_report::partition::{
    PartitionRequest, PartitionStudy, SplitSource, StageRow, study_partition,
};
use timeprest_schedule::ScheduleKind;

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

impl PartitionArgs {
    /// The study the flags ask for.
    fn request(&self) -> PartitionRequest {
        PartitionRequest {
            model: self.model.clone(),
            size: self.size.model_size(),
            dataset: self.dataset.clone(),
            data_dir: self.data_dir.clone(),
            input: self.input,
            classes: self.classes,
            seq_len: self.seq_len,
            num_stages: self.stages,
            method: self.partition,
            manual_split: self.split.clone(),
            batch_size: self.batch_size,
            num_microbatches: self.microbatches,
            schedule: self.schedule,
            num_minibatches: self.minibatches,
            repeats: self.repeats,
            threads_per_stage: self.threads_per_stage as usize,
        }
    }
}

/// A study that could not be made, as `main` reports it: a value the user can fix is a usage
/// error (exit code 2); the model's and the data set's own errors keep their types, which
/// `main` also reports as usage errors (a model too large for memory names its size flags).
fn cli_error(error: ReportError) -> anyhow::Error {
    match error {
        ReportError::Invalid { .. } => usage_error(error.to_string()),
        ReportError::Model(error) => error.into(),
        ReportError::Data(error) => error.into(),
        other => other.into(),
    }
}

/// How `source` is named on the command line.
fn split_name(source: SplitSource) -> String {
    match source {
        SplitSource::Method(method) => method.name().to_owned(),
        SplitSource::Manual => "--split".to_owned(),
    }
}

/// Runs `timeprest partition`.
pub fn run(args: &PartitionArgs) -> anyhow::Result<()> {
    let study = study_partition(&args.request()).map_err(cli_error)?;
    print_header(args, &study);
    println!();
    println!(
        "{:>5}  {:<9} {:<38} {:>11}  {:<22} {:>9} {:>9}",
        "stage", "blocks", "first .. last", "params", "sends (per micro-batch)", "fwd ms", "bwd ms"
    );
    for (s, stage) in study.stages.iter().enumerate() {
        print_stage(s, stage);
    }
    println!();
    println!(
        "predicted throughput (cost-model simulator; schedule {}, N={}, M={}, {} mini-batches):",
        args.schedule, args.microbatches, args.batch_size, args.minibatches
    );
    for p in &study.predictions {
        let cuts: Vec<String> = p.cut_points.iter().map(usize::to_string).collect();
        println!(
            "  {:<8} {:>10.1} samples/s   bubble {:>5.1}%   slowest stage {:>8.2} ms   \
             split {}",
            split_name(p.split_source),
            p.samples_per_second,
            100.0 * p.bubble_fraction,
            p.slowest_stage_seconds * 1e3,
            if cuts.is_empty() {
                "-".to_owned()
            } else {
                cuts.join(",")
            }
        );
    }
    Ok(())
}

/// The model, where its shape came from, and how the split was chosen and timed.
fn print_header(args: &PartitionArgs, study: &PartitionStudy) {
    let [c, h, w] = study.input_shape;
    let per_position = match study.targets_per_sample {
        1 => String::new(),
        positions => format!(" at each of {positions} positions"),
    };
    println!(
        "model {} ({c}x{h}x{w} -> {} classes{per_position}, {}): {} blocks, {} parameters",
        study.model,
        study.num_classes,
        study.input_source,
        study.num_blocks,
        grouped(study.param_count)
    );
    let label = match study.split_source {
        SplitSource::Method(method) => format!("--partition {method}"),
        SplitSource::Manual => "--split".to_owned(),
    };
    println!(
        "{label}, {} stages; times: forward+backward of a micro-batch of {} samples on this \
         machine (median of {})",
        args.stages, study.microbatch_size, study.repeats
    );
}

/// One row of the stage table.
fn print_stage(s: usize, stage: &StageRow) {
    let names = if stage.blocks.len() == 1 {
        stage.first_block.clone()
    } else {
        format!("{} .. {}", stage.first_block, stage.last_block)
    };
    let sends = match &stage.sends {
        Some(sent) => {
            let [c, h, w] = sent.shape;
            format!("{c}x{h}x{w} ({})", bytes(sent.bytes))
        }
        None => "(loss)".to_owned(),
    };
    println!(
        "{s:>5}  {:<9} {names:<38} {:>11}  {sends:<22} {:>9.2} {:>9.2}",
        format!("{}..{}", stage.blocks.start, stage.blocks.end),
        grouped(stage.param_count),
        stage.forward_seconds * 1e3,
        stage.backward_seconds * 1e3
    );
}
