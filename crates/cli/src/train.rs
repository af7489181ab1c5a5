//! `timeprest train`: flags → a validated [`TrainConfig`] → a run with progress bars.
//!
//! Every flag has a default, so `timeprest` with no arguments trains the embedded default
//! (digits, a 3-block MLP on 3 stages, I-TiMePReSt) in well under a minute. Progress bars go
//! to stderr and only when it is a terminal; the per-epoch summary goes to stdout.

use std::io::IsTerminal;
use std::path::PathBuf;

use clap::{Args, ValueEnum};
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use timeprest_policy::{PolicyKind, Prediction};
use timeprest_schedule::ScheduleKind;
use timeprest_train::{
    EpochMetrics, GradMode, OptimizerChoice, Progress, RunPaths, SignificanceChoice, TrainConfig,
    run as run_training,
};

/// Gradient mode when a backward reads other weights than its forward (spec §9 item 1).
#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum GradModeArg {
    /// Saved activations, backward weights in every local VJP.
    Graph,
    /// Re-run the stage forward with the backward's weights.
    Recompute,
}

/// Train a model with a pipeline-parallel weight policy.
#[derive(Args, Debug)]
pub struct TrainArgs {
    /// Model architecture.
    #[arg(long, default_value = "mlp", value_parser = ["mlp"])]
    pub model: String,
    /// Hidden layer widths of the MLP, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "128,64")]
    pub hidden: Vec<usize>,
    /// Data set: `digits` (embedded), `fashion-mnist` or `mnist` (IDX files).
    #[arg(long, default_value = "digits", value_parser = ["digits", "fashion-mnist", "mnist"])]
    pub dataset: String,
    /// Directory with the IDX files (default: `/usr/share/datasets/<dataset>`).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Use only the first K training samples.
    #[arg(long, value_name = "K")]
    pub limit_train: Option<usize>,
    /// Use only the first K test samples.
    #[arg(long, value_name = "K")]
    pub limit_test: Option<usize>,
    /// W: pipeline stages (one worker thread each).
    #[arg(long, default_value_t = 3)]
    pub stages: u32,
    /// N: micro-batches per mini-batch [default: 1 on the 1f1b schedule (PipeDream's
    /// whole-mini-batch 1F1B), 3 otherwise (TiMePReSt's main setting)].
    #[arg(long)]
    pub microbatches: Option<u32>,
    /// M: samples per mini-batch.
    #[arg(long, default_value_t = 32)]
    pub batch_size: usize,
    /// Epochs.
    #[arg(long, default_value_t = 10)]
    pub epochs: u32,
    /// Learning rate.
    #[arg(long, default_value_t = 0.05)]
    pub lr: f64,
    /// SGD momentum.
    #[arg(long, default_value_t = 0.9)]
    pub momentum: f64,
    /// Nesterov momentum (SGD).
    #[arg(long)]
    pub nesterov: bool,
    /// L2 weight decay.
    #[arg(long, default_value_t = 0.0)]
    pub weight_decay: f64,
    /// Optimizer.
    #[arg(long, value_enum, default_value = "sgd")]
    pub optimizer: OptimizerArg,
    /// Weight policy: single, naive, gpipe, pipedream, pipedream-flush, timeprest,
    /// v-timeprest, i-timeprest, nwpt, variant1, variant2.
    #[arg(long, default_value = "i-timeprest")]
    pub policy: PolicyKind,
    /// Schedule (default: the policy's own): naive, gpipe, 1f1b, 1f1b-flush, nf1b.
    #[arg(long)]
    pub schedule: Option<ScheduleKind>,
    /// Gradient mode when forward and backward read different weights.
    #[arg(long, value_enum, default_value = "graph")]
    pub grad_mode: GradModeArg,
    /// I-TiMePReSt significance σ(d) of the stale weight.
    #[arg(long, value_enum, default_value = "exp")]
    pub significance: SignificanceArg,
    /// λ of `--significance exp` (σ = e^{−λd}).
    #[arg(long, default_value_t = 1.0)]
    pub lambda: f64,
    /// α of `--significance const` (1 = stash rule, 0 = V-TiMePReSt).
    #[arg(long, default_value_t = 0.5)]
    pub alpha: f64,
    /// NWPT prediction formula.
    #[arg(long, value_enum, default_value = "nag")]
    pub prediction: PredictionArg,
    /// Seed of the initial weights and the data order.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Keep the data order fixed instead of shuffling every epoch.
    #[arg(long)]
    pub no_shuffle: bool,
    /// Intra-op threads per stage.
    #[arg(long, default_value_t = 1)]
    pub threads_per_stage: usize,
    /// Run directory for config.json and metrics.jsonl.
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
    /// Save the final weights (safetensors, names `layers.<i>.<param>`).
    #[arg(long, value_name = "FILE")]
    pub save_weights: Option<PathBuf>,
    /// Start from these weights (safetensors) instead of the seeded initialisation.
    #[arg(long, value_name = "FILE")]
    pub init_weights: Option<PathBuf>,
    /// Write the measured events of the first epoch as Chrome-trace JSON (open in Perfetto).
    #[arg(long, value_name = "FILE")]
    pub trace: Option<PathBuf>,
    /// No progress bars.
    #[arg(long)]
    pub quiet: bool,
}

/// Optimizer names.
#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum OptimizerArg {
    /// SGD with momentum.
    Sgd,
    /// Adam.
    Adam,
}

/// Significance function names.
#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum SignificanceArg {
    /// e^{−λd}.
    Exp,
    /// 2^{−d}.
    Exp2,
    /// 1/(1+d).
    Inverse,
    /// α.
    Const,
}

/// Prediction formula names.
#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum PredictionArg {
    /// One-step Nesterov look-ahead.
    Nag,
    /// Multi-step NAG with horizon W−1−s.
    Msnag,
    /// SpecTrain's linear extrapolation.
    Spectrain,
}

impl TrainArgs {
    /// The configuration these flags describe.
    pub fn config(&self) -> TrainConfig {
        let schedule = self
            .schedule
            .unwrap_or_else(|| self.policy.default_schedule());
        let default_microbatches = if schedule == ScheduleKind::OneFOneB {
            1
        } else {
            3
        };
        TrainConfig {
            model: self.model.clone(),
            hidden: self.hidden.clone(),
            dataset: self.dataset.clone(),
            data_dir: self.data_dir.clone(),
            limit_train: self.limit_train,
            limit_test: self.limit_test,
            stages: self.stages,
            microbatches: self.microbatches.unwrap_or(default_microbatches),
            batch_size: self.batch_size,
            epochs: self.epochs,
            lr: self.lr,
            momentum: self.momentum,
            nesterov: self.nesterov,
            weight_decay: self.weight_decay,
            optimizer: match self.optimizer {
                OptimizerArg::Sgd => OptimizerChoice::Sgd,
                OptimizerArg::Adam => OptimizerChoice::Adam,
            },
            policy: self.policy,
            schedule: self.schedule,
            grad_mode: match self.grad_mode {
                GradModeArg::Graph => GradMode::Graph,
                GradModeArg::Recompute => GradMode::Recompute,
            },
            significance: match self.significance {
                SignificanceArg::Exp => SignificanceChoice::Exp,
                SignificanceArg::Exp2 => SignificanceChoice::Exp2,
                SignificanceArg::Inverse => SignificanceChoice::Inverse,
                SignificanceArg::Const => SignificanceChoice::Const,
            },
            lambda: self.lambda,
            alpha: self.alpha,
            prediction: match self.prediction {
                PredictionArg::Nag => Prediction::Nag,
                PredictionArg::Msnag => Prediction::Msnag,
                PredictionArg::Spectrain => Prediction::Spectrain,
            },
            seed: self.seed,
            shuffle: !self.no_shuffle,
            threads_per_stage: self.threads_per_stage,
            ..TrainConfig::default()
        }
    }
}

/// Progress bars on stderr: one for epochs, one for the mini-batches of the current epoch.
struct Bars {
    epochs: ProgressBar,
    batches: ProgressBar,
}

impl Bars {
    fn new(num_epochs: u32, visible: bool) -> Self {
        if !visible {
            return Self {
                epochs: ProgressBar::hidden(),
                batches: ProgressBar::hidden(),
            };
        }
        let multi = MultiProgress::new();
        let epochs = multi.add(ProgressBar::new(u64::from(num_epochs)));
        epochs.set_style(
            ProgressStyle::with_template("epoch {pos}/{len} [{bar:30}] {elapsed_precise} {msg}")
                .expect("a valid template")
                .progress_chars("=> "),
        );
        let batches = multi.add(ProgressBar::new(0));
        batches.set_style(
            ProgressStyle::with_template("batch {pos}/{len} [{bar:30}] {per_sec} eta {eta}")
                .expect("a valid template")
                .progress_chars("=> "),
        );
        Self { epochs, batches }
    }
}

impl Progress for Bars {
    fn epoch_started(&self, _epoch: u32, num_minibatches: u64) {
        self.batches.set_length(num_minibatches);
        self.batches.set_position(0);
    }

    fn advanced(&self, done: u64) {
        self.batches.set_position(done);
    }

    fn epoch_finished(&self, m: &EpochMetrics) {
        self.epochs.inc(1);
        self.epochs
            .set_message(format!("test acc {:.2}%", 100.0 * m.test_accuracy));
        let staleness: Vec<String> = m
            .stages
            .iter()
            .map(|s| format!("{:.2}", s.mean_staleness))
            .collect();
        let versions: Vec<String> = m
            .stages
            .iter()
            .map(|s| s.peak_weight_sets.to_string())
            .collect();
        let line = format!(
            "epoch {:>3}  train loss {:.4} acc {:6.2}%  test loss {:.4} acc {:6.2}%  \
             {:.2}s {:>7.0} samples/s  mean d [{}]  versions [{}]",
            m.epoch,
            m.train_loss,
            100.0 * m.train_accuracy,
            m.test_loss,
            100.0 * m.test_accuracy,
            m.epoch_seconds,
            m.samples_per_second,
            staleness.join(" "),
            versions.join(" "),
        );
        // Suspend the bars so the summary line lands on stdout cleanly above them.
        self.epochs.suspend(|| println!("{line}"));
    }
}

/// Runs `timeprest train`.
pub fn run(args: TrainArgs) -> anyhow::Result<()> {
    let config = args.config();
    config.validate()?;
    let visible = !args.quiet && std::io::stderr().is_terminal();
    let bars = Bars::new(config.epochs, visible);
    let paths = RunPaths {
        out_dir: args.out.clone(),
        init_weights: args.init_weights.clone(),
        save_weights: args.save_weights.clone(),
        trace: args.trace.clone(),
    };
    eprintln!(
        "training {} ({:?}) on {} with policy {} on schedule {}: W={} N={} M={} for {} epochs",
        config.model,
        config.hidden,
        config.dataset,
        config.policy,
        config.schedule_kind(),
        config.stages,
        config.microbatches,
        config.batch_size,
        config.epochs
    );
    let history = run_training(&config, &paths, &bars)?;
    bars.epochs.finish_and_clear();
    bars.batches.finish_and_clear();
    if let Some(last) = history.last() {
        println!(
            "final: test accuracy {:.2}% after {} epochs ({:.1}s of pipelined training)",
            100.0 * last.test_accuracy,
            last.epoch,
            history.iter().map(|m| m.epoch_seconds).sum::<f64>()
        );
    }
    Ok(())
}
