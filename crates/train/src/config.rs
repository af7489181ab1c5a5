//! The training configuration: one flat, serialisable record, validated once.
//!
//! The CLI (and config files) fill a [`TrainConfig`]; [`TrainConfig::validate`] turns it
//! into the objects the loop needs or says exactly which field is wrong. The record is what a
//! run directory stores as `config.json`, so that a run can be repeated.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use timeprest_nn::{
    ComputeDevice, GptConfig, GradMode, LrSchedule, MODEL_NAMES, OptimizerConfig, OptimizerKind,
    PartitionMethod,
};
use timeprest_policy::{
    Activations, ForwardSource, Horizon, LatestSource, PolicyKind, PolicyOptions, Prediction,
    Significance, StalenessMeasure, UpdateBase,
};
use timeprest_schedule::{MAX_BACKWARD_SLOTS, ScheduleConfig, ScheduleKind};

use crate::error::TrainError;

/// Which optimizer to use.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum OptimizerChoice {
    /// SGD with momentum (dampening 0).
    Sgd,
    /// Adam.
    Adam,
}

/// I-TiMePReSt's significance function by name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum SignificanceChoice {
    /// e^{−λ d}.
    Exp,
    /// 2^{−d}.
    Exp2,
    /// 1 / (1 + d).
    Inverse,
    /// A constant α.
    Const,
    /// The normalised blend (e^{−λd}·θ^stale + θ^latest) / (1 + e^{−λd}).
    NormalizedExp,
}

/// Samples per micro-batch (M/N, rounded down) when a mini-batch of `batch_size` samples is cut
/// into `microbatches` micro-batches.
///
/// # Errors
/// Why it cannot be cut (no micro-batches, or fewer samples than micro-batches): the reason
/// for `--batch-size`, which the caller names. Shared by [`TrainConfig::validate`] and
/// `timeprest partition`, so both refuse the same values with the same words.
pub fn microbatch_size(batch_size: usize, microbatches: u32) -> Result<usize, String> {
    if microbatches == 0 || batch_size < microbatches as usize {
        return Err(format!(
            "{batch_size} samples cannot be split into {microbatches} micro-batches"
        ));
    }
    Ok(batch_size / microbatches as usize)
}

/// Checks that a split by hand of `cut_points` cut points makes `num_stages` stages.
///
/// # Errors
/// Why it does not: the reason for `--split`, which the caller names. Shared by
/// [`TrainConfig::validate`] and `timeprest partition`.
pub fn check_split_stages(cut_points: usize, num_stages: u32) -> Result<(), String> {
    if cut_points + 1 != num_stages as usize {
        return Err(format!(
            "{cut_points} cut points make {} stages, but --stages is {num_stages}",
            cut_points + 1
        ));
    }
    Ok(())
}

/// How the learning rate changes over the run, by name (see [`LrSchedule`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum LrScheduleChoice {
    /// The same rate throughout.
    #[default]
    Constant,
    /// × `lr_gamma` every `lr_step_epochs` epochs.
    Step,
    /// × `lr_gamma` at each epoch listed in `lr_milestones`.
    Multistep,
    /// A linear warm-up over `warmup_epochs`, then constant.
    Warmup,
    /// A linear warm-up over `warmup_epochs`, then cosine decay to 0 at the last update.
    Cosine,
}

/// A [`TrainConfig`] that passed [`TrainConfig::validate`]: every layer that builds or runs a
/// pipeline takes this, so a configuration is checked once, where it is made, and never again.
#[derive(Clone, Debug, PartialEq)]
pub struct ValidConfig(TrainConfig);

impl ValidConfig {
    /// The configuration itself.
    pub fn into_inner(self) -> TrainConfig {
        self.0
    }
}

impl std::ops::Deref for ValidConfig {
    type Target = TrainConfig;

    fn deref(&self) -> &TrainConfig {
        &self.0
    }
}

/// Everything one training run depends on, in five sections.
///
/// The sections are how the code reads a configuration (`config.optimisation.lr`); a file keeps
/// one flat table whose keys are the command-line flags (`lr`, `stages`, `no_shuffle` is the
/// one exception: the key is `shuffle`), so `config.toml` and `--lr` speak the same words and
/// files written before the sections existed still load. [`TrainConfig::set`] changes one key
/// with its own type (a `--config` file over the defaults, `compare`'s `policy:key=value`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct TrainConfig {
    /// The model and its size.
    #[serde(flatten)]
    pub model: ModelSettings,
    /// The data set and how it is fed.
    #[serde(flatten)]
    pub data: DataSettings,
    /// The pipeline: stages, micro-batches, schedule, split and weight policy.
    #[serde(flatten)]
    pub pipeline: PipelineSettings,
    /// The optimizer and the amount of training.
    #[serde(flatten)]
    pub optimisation: OptimisationSettings,
    /// How the run executes: seed, threads, device, evaluation batch.
    #[serde(flatten)]
    pub run: RunSettings,
}

/// The model and its size.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ModelSettings {
    /// Model name (one of [`MODEL_NAMES`]).
    #[serde(rename = "model")]
    pub name: String,
    /// Hidden layer widths of the MLP.
    pub hidden: Vec<usize>,
    /// Channel multiplier of the convolutional models (1 = the reference size).
    pub width: f64,
    /// Residual blocks per group of the ResNets, or the number of transformer layers of `gpt`
    /// (one number) (empty = the model's default).
    pub depth: Vec<usize>,
    /// Embedding width d of `gpt`.
    #[serde(default = "default_embed_dim")]
    pub embed_dim: usize,
    /// Attention heads of `gpt` (they must divide `embed_dim`).
    #[serde(default = "default_heads")]
    pub heads: usize,
}

/// The data set and how it is fed.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DataSettings {
    /// Data set name (one of `timeprest_data::DATASET_NAMES`, or `text:PATH`).
    pub dataset: String,
    /// Directory of the data set files (IDX data sets).
    pub data_dir: Option<PathBuf>,
    /// Use only the first this-many training samples (after the fixed split).
    pub limit_train: Option<usize>,
    /// Use only the first this-many test samples.
    pub limit_test: Option<usize>,
    /// Characters per sample of a `text:PATH` data set (the context length of `gpt`).
    #[serde(default = "default_seq_len")]
    pub seq_len: usize,
    /// Shuffle the training data every epoch.
    pub shuffle: bool,
    /// Random crops (padding 4) and horizontal flips of the training images.
    pub augment: bool,
}

/// The pipeline: how many stages and micro-batches, the schedule, the split and the weight
/// policy with its options.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PipelineSettings {
    /// W: pipeline stages (key and flag `stages`).
    #[serde(rename = "stages")]
    pub num_stages: u32,
    /// N: micro-batches per mini-batch (key and flag `microbatches`).
    #[serde(rename = "microbatches")]
    pub num_microbatches: u32,
    /// Weight policy.
    pub policy: PolicyKind,
    /// Schedule; `None` uses the policy's default.
    pub schedule: Option<ScheduleKind>,
    /// Order the schedule with backwards of this many slots per micro-batch
    /// ([`ScheduleConfig::backward_slots`]); `None` (the default): the papers' unit grid.
    #[serde(default)]
    pub backward_slots: Option<u32>,
    /// How to split the model into stages when `split` is empty.
    pub partition: PartitionMethod,
    /// A split by hand: the first blocks of stages 1, 2, … (empty = use `partition`).
    pub split: Vec<usize>,
    /// Gradient mode when forward and backward read different weights.
    pub grad_mode: GradMode,
    /// Keep only each micro-batch's stage input and re-run the forward, with the weights the
    /// forward read, before its backward (less activation memory, one more forward per
    /// micro-batch; the results are the same bit for bit).
    #[serde(default)]
    pub recompute_activations: bool,
    /// I-TiMePReSt significance function.
    pub significance: SignificanceChoice,
    /// λ of the `exp` significance.
    pub lambda: f64,
    /// α of the `const` significance.
    pub alpha: f64,
    /// NWPT prediction formula.
    pub prediction: Prediction,
    /// NWPT's horizon: how many updates ahead a stage predicts.
    #[serde(default)]
    pub horizon: Horizon,
    /// Where V-TiMePReSt's and I-TiMePReSt's forwards read their weights.
    #[serde(default)]
    pub forward_source: ForwardSource,
    /// Which version TiMePReSt's and V-TiMePReSt's backwards read as the latest.
    #[serde(default)]
    pub latest_version: LatestSource,
    /// The staleness d I-TiMePReSt's significance σ(d) reads.
    #[serde(default)]
    pub staleness: StalenessMeasure,
    /// Where I-TiMePReSt's optimizer step starts: the latest weights or its intermediate ones.
    #[serde(default)]
    pub update_base: UpdateBase,
}

/// The optimizer and the amount of training.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct OptimisationSettings {
    /// M: samples per mini-batch.
    pub batch_size: usize,
    /// Epochs.
    pub epochs: u32,
    /// Optimizer.
    pub optimizer: OptimizerChoice,
    /// Learning rate η.
    pub lr: f64,
    /// SGD momentum μ.
    pub momentum: f64,
    /// Nesterov momentum for SGD.
    pub nesterov: bool,
    /// L2 weight decay.
    pub weight_decay: f64,
    /// How the learning rate changes over the run.
    #[serde(default)]
    pub lr_schedule: LrScheduleChoice,
    /// Epochs of linear warm-up (`warmup` and `cosine` schedules; fractions allowed).
    #[serde(default)]
    pub warmup_epochs: f64,
    /// Epochs between two decays of the `step` schedule.
    #[serde(default = "default_lr_step_epochs")]
    pub lr_step_epochs: u32,
    /// Decay factor of the `step` and `multistep` schedules.
    #[serde(default = "default_lr_gamma")]
    pub lr_gamma: f64,
    /// The epochs after which the `multistep` schedule decays, strictly increasing.
    #[serde(default)]
    pub lr_milestones: Vec<u32>,
}

/// How the run executes; none of these changes what a synchronous run computes except the seed.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RunSettings {
    /// Seed for initial weights and data order.
    pub seed: u64,
    /// Intra-op threads per stage.
    pub threads_per_stage: usize,
    /// Where the tensors live (`cpu`, `gpu:N`); older config files without it mean `cpu`.
    #[serde(default)]
    pub device: ComputeDevice,
    /// Batch size for evaluation.
    pub eval_batch_size: usize,
}

/// Why [`TrainConfig::set`] refused a key.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum KeyError {
    /// No configuration key has this name.
    #[error("unknown key `{key}`; valid keys: {}", TrainConfig::KEYS.join(", "))]
    Unknown {
        /// The key as given.
        key: String,
    },
    /// The value does not have the key's type.
    #[error("key `{key}`: {reason}")]
    Value {
        /// The key.
        key: String,
        /// What is wrong with the value.
        reason: String,
    },
}

// Defaults of the keys added with `gpt`, so that configurations written before them still load.
fn default_seq_len() -> usize {
    timeprest_data::DEFAULT_SEQ_LEN
}

fn default_embed_dim() -> usize {
    GptConfig::DEFAULT_EMBED_DIM
}

fn default_heads() -> usize {
    GptConfig::DEFAULT_HEADS
}

// Defaults of the keys added with the learning-rate schedules.
fn default_lr_step_epochs() -> u32 {
    30
}

fn default_lr_gamma() -> f64 {
    0.1
}

impl ModelSettings {
    /// True for `gpt`, a language model: every position of a sample is a target, so its rates
    /// count tokens and its loss reads as a perplexity.
    pub fn is_language_model(&self) -> bool {
        self.name == GptConfig::NAME
    }
}

impl Default for ModelSettings {
    fn default() -> Self {
        Self {
            name: "mlp".into(),
            hidden: vec![128, 64],
            width: 1.0,
            depth: Vec::new(),
            embed_dim: default_embed_dim(),
            heads: default_heads(),
        }
    }
}

impl Default for DataSettings {
    fn default() -> Self {
        Self {
            dataset: "digits".into(),
            data_dir: None,
            limit_train: None,
            limit_test: None,
            seq_len: default_seq_len(),
            shuffle: true,
            augment: false,
        }
    }
}

impl Default for PipelineSettings {
    fn default() -> Self {
        Self {
            num_stages: 3,
            num_microbatches: 3,
            policy: PolicyKind::ITimeprest,
            schedule: None,
            backward_slots: None,
            partition: PartitionMethod::Ops,
            split: Vec::new(),
            grad_mode: GradMode::Graph,
            recompute_activations: false,
            significance: SignificanceChoice::Exp,
            lambda: 1.0,
            alpha: 0.5,
            prediction: Prediction::Nag,
            horizon: Horizon::StagesRemaining,
            forward_source: ForwardSource::Live,
            latest_version: LatestSource::Live,
            staleness: StalenessMeasure::Gap,
            update_base: UpdateBase::Latest,
        }
    }
}

impl Default for OptimisationSettings {
    fn default() -> Self {
        Self {
            batch_size: 32,
            epochs: 10,
            optimizer: OptimizerChoice::Sgd,
            lr: 0.05,
            momentum: 0.9,
            nesterov: false,
            weight_decay: 0.0,
            lr_schedule: LrScheduleChoice::Constant,
            warmup_epochs: 0.0,
            lr_step_epochs: default_lr_step_epochs(),
            lr_gamma: default_lr_gamma(),
            lr_milestones: Vec::new(),
        }
    }
}

impl Default for RunSettings {
    fn default() -> Self {
        Self {
            seed: 1,
            threads_per_stage: 1,
            device: ComputeDevice::Cpu,
            eval_batch_size: 512,
        }
    }
}

/// Assigns `value`, read as the type of the field at `$($field).+`, to that field.
macro_rules! assign {
    ($key:expr, $value:expr, $($field:ident).+) => {
        $($field).+ = Deserialize::deserialize($value).map_err(|e| KeyError::Value {
            key: $key.to_owned(),
            // Some formats' messages end with a newline; the CLI prints one line.
            reason: e.to_string().trim_end().to_owned(),
        })?
    };
}

impl TrainConfig {
    /// Every key of a configuration file (and of `compare`'s `policy:key=value`), section by
    /// section.
    pub const KEYS: [&str; 47] = [
        "model",
        "hidden",
        "width",
        "depth",
        "embed_dim",
        "heads",
        "dataset",
        "data_dir",
        "limit_train",
        "limit_test",
        "seq_len",
        "shuffle",
        "augment",
        "stages",
        "microbatches",
        "policy",
        "schedule",
        "backward_slots",
        "partition",
        "split",
        "grad_mode",
        "recompute_activations",
        "significance",
        "lambda",
        "alpha",
        "prediction",
        "horizon",
        "forward_source",
        "latest_version",
        "staleness",
        "update_base",
        "batch_size",
        "epochs",
        "optimizer",
        "lr",
        "momentum",
        "nesterov",
        "weight_decay",
        "lr_schedule",
        "warmup_epochs",
        "lr_step_epochs",
        "lr_gamma",
        "lr_milestones",
        "seed",
        "threads_per_stage",
        "device",
        "eval_batch_size",
    ];

    /// Sets the field of `key` (one of [`TrainConfig::KEYS`]) to `value`, which is read as that
    /// field's own type: a file's value, or a flag's text parsed by any serde format. Nothing
    /// else changes, and nothing is checked across fields (that is [`TrainConfig::validate`]).
    pub fn set<'de, D>(&mut self, key: &str, value: D) -> Result<(), KeyError>
    where
        D: serde::Deserializer<'de>,
        D::Error: std::fmt::Display,
    {
        let (m, d, p, o, r) = (
            &mut self.model,
            &mut self.data,
            &mut self.pipeline,
            &mut self.optimisation,
            &mut self.run,
        );
        match key {
            "model" => assign!(key, value, m.name),
            "hidden" => assign!(key, value, m.hidden),
            "width" => assign!(key, value, m.width),
            "depth" => assign!(key, value, m.depth),
            "embed_dim" => assign!(key, value, m.embed_dim),
            "heads" => assign!(key, value, m.heads),
            "dataset" => assign!(key, value, d.dataset),
            "data_dir" => assign!(key, value, d.data_dir),
            "limit_train" => assign!(key, value, d.limit_train),
            "limit_test" => assign!(key, value, d.limit_test),
            "seq_len" => assign!(key, value, d.seq_len),
            "shuffle" => assign!(key, value, d.shuffle),
            "augment" => assign!(key, value, d.augment),
            "stages" => assign!(key, value, p.num_stages),
            "microbatches" => assign!(key, value, p.num_microbatches),
            "policy" => assign!(key, value, p.policy),
            "schedule" => assign!(key, value, p.schedule),
            "backward_slots" => assign!(key, value, p.backward_slots),
            "partition" => assign!(key, value, p.partition),
            "split" => assign!(key, value, p.split),
            "grad_mode" => assign!(key, value, p.grad_mode),
            "recompute_activations" => assign!(key, value, p.recompute_activations),
            "significance" => assign!(key, value, p.significance),
            "lambda" => assign!(key, value, p.lambda),
            "alpha" => assign!(key, value, p.alpha),
            "prediction" => assign!(key, value, p.prediction),
            "horizon" => assign!(key, value, p.horizon),
            "forward_source" => assign!(key, value, p.forward_source),
            "latest_version" => assign!(key, value, p.latest_version),
            "staleness" => assign!(key, value, p.staleness),
            "update_base" => assign!(key, value, p.update_base),
            "batch_size" => assign!(key, value, o.batch_size),
            "epochs" => assign!(key, value, o.epochs),
            "optimizer" => assign!(key, value, o.optimizer),
            "lr" => assign!(key, value, o.lr),
            "momentum" => assign!(key, value, o.momentum),
            "nesterov" => assign!(key, value, o.nesterov),
            "weight_decay" => assign!(key, value, o.weight_decay),
            "lr_schedule" => assign!(key, value, o.lr_schedule),
            "warmup_epochs" => assign!(key, value, o.warmup_epochs),
            "lr_step_epochs" => assign!(key, value, o.lr_step_epochs),
            "lr_gamma" => assign!(key, value, o.lr_gamma),
            "lr_milestones" => assign!(key, value, o.lr_milestones),
            "seed" => assign!(key, value, r.seed),
            "threads_per_stage" => assign!(key, value, r.threads_per_stage),
            "device" => assign!(key, value, r.device),
            "eval_batch_size" => assign!(key, value, r.eval_batch_size),
            _ => {
                return Err(KeyError::Unknown {
                    key: key.to_owned(),
                });
            }
        }
        Ok(())
    }

    /// Whether the stages keep their activations or recompute them before each backward.
    pub fn activations(&self) -> Activations {
        Activations::recomputed_if(self.pipeline.recompute_activations)
    }

    /// The schedule this run uses.
    pub fn schedule_kind(&self) -> ScheduleKind {
        self.pipeline
            .schedule
            .unwrap_or_else(|| self.pipeline.policy.default_schedule())
    }

    /// The schedule shape of one epoch of this run with `num_microbatches` micro-batches per
    /// mini-batch and `num_minibatches` mini-batches: W = `stages`, ordered on the papers' unit
    /// grid or, with [`PipelineSettings::backward_slots`], with backwards that take that many slots
    /// per micro-batch.
    pub fn schedule_config(&self, num_microbatches: u32, num_minibatches: u32) -> ScheduleConfig {
        ScheduleConfig {
            backward_slots: self.pipeline.backward_slots,
            ..ScheduleConfig::new(self.pipeline.num_stages, num_microbatches, num_minibatches)
        }
    }

    /// The optimizer of every stage, its learning-rate schedule counted in updates: one per
    /// mini-batch per stage, `updates_per_epoch` per epoch.
    pub fn optimizer_config(&self, updates_per_epoch: u64) -> OptimizerConfig {
        let o = &self.optimisation;
        let kind = match o.optimizer {
            OptimizerChoice::Sgd => OptimizerKind::Sgd {
                momentum: o.momentum,
                nesterov: o.nesterov,
            },
            OptimizerChoice::Adam => OptimizerKind::Adam {
                beta1: 0.9,
                beta2: 0.999,
                epsilon: 1e-8,
            },
        };
        let warmup = (o.warmup_epochs * updates_per_epoch as f64).round() as u64;
        let schedule = match o.lr_schedule {
            LrScheduleChoice::Constant => LrSchedule::Constant,
            LrScheduleChoice::Step => LrSchedule::Step {
                every: u64::from(o.lr_step_epochs) * updates_per_epoch,
                gamma: o.lr_gamma,
            },
            LrScheduleChoice::Multistep => LrSchedule::MultiStep {
                milestones: (o.lr_milestones.iter())
                    .map(|&epoch| u64::from(epoch) * updates_per_epoch)
                    .collect(),
                gamma: o.lr_gamma,
            },
            LrScheduleChoice::Warmup => LrSchedule::Warmup { warmup },
            LrScheduleChoice::Cosine => LrSchedule::WarmupCosine {
                warmup,
                total: u64::from(o.epochs) * updates_per_epoch,
            },
        };
        OptimizerConfig {
            kind,
            lr: o.lr,
            schedule,
            weight_decay: o.weight_decay,
        }
    }

    /// The policy options.
    pub fn policy_options(&self) -> PolicyOptions {
        let significance = match self.pipeline.significance {
            SignificanceChoice::Exp => Significance::Exp {
                lambda: self.pipeline.lambda,
            },
            SignificanceChoice::Exp2 => Significance::Exp2,
            SignificanceChoice::Inverse => Significance::Inverse,
            SignificanceChoice::Const => Significance::Const {
                alpha: self.pipeline.alpha,
            },
            SignificanceChoice::NormalizedExp => Significance::NormalizedExp {
                lambda: self.pipeline.lambda,
            },
        };
        PolicyOptions {
            significance,
            prediction: self.pipeline.prediction,
            horizon: self.pipeline.horizon,
            forward: self.pipeline.forward_source,
            latest: self.pipeline.latest_version,
            staleness: self.pipeline.staleness,
            update_base: self.pipeline.update_base,
        }
    }

    /// Checks every field and returns the configuration as a [`ValidConfig`], which is what
    /// a pipeline is built from; the error names the flag and the valid values.
    pub fn validate(self) -> Result<ValidConfig, TrainError> {
        self.check()?;
        Ok(ValidConfig(self))
    }

    /// Refuses a policy option (`--horizon`, `--forward-source`, `--latest-version`,
    /// `--staleness`, `--update-base`) set away from its default for a policy that does not
    /// read it: it would silently do nothing. The error names the flag.
    pub fn check_policy_options(&self) -> Result<(), TrainError> {
        let bad =
            |flag: &str, message: String| Err(TrainError::config(format!("--{flag}"), message));
        let policy = self.pipeline.policy;
        let policy_options: [(&str, bool, &[PolicyKind], &str, &str); 5] = [
            (
                "horizon",
                self.pipeline.horizon != Horizon::StagesRemaining,
                &[PolicyKind::Nwpt],
                "only nwpt predicts weights",
                "has no horizon",
            ),
            (
                "forward-source",
                self.pipeline.forward_source != ForwardSource::Live,
                &[PolicyKind::VTimeprest, PolicyKind::ITimeprest],
                "only v-timeprest and i-timeprest choose their forwards' version",
                "fixes it",
            ),
            (
                "latest-version",
                self.pipeline.latest_version != LatestSource::Live,
                &[PolicyKind::Timeprest, PolicyKind::VTimeprest],
                "only timeprest and v-timeprest read the latest version in their backward",
                "reads another",
            ),
            (
                "staleness",
                self.pipeline.staleness != StalenessMeasure::Gap,
                &[PolicyKind::ITimeprest],
                "only i-timeprest weighs its weights by staleness",
                "does not",
            ),
            (
                "update-base",
                self.pipeline.update_base != UpdateBase::Latest,
                &[PolicyKind::ITimeprest],
                "only i-timeprest has intermediate weights to update from",
                "updates the latest weights",
            ),
        ];
        for (setting, given, readers, who_reads, otherwise) in policy_options {
            if given && !readers.contains(&policy) {
                return bad(
                    setting,
                    format!("{who_reads}; policy `{policy}` {otherwise}"),
                );
            }
        }
        Ok(())
    }

    fn check(&self) -> Result<(), TrainError> {
        let bad =
            |flag: &str, message: String| Err(TrainError::config(format!("--{flag}"), message));
        if !MODEL_NAMES.contains(&self.model.name.as_str()) {
            return bad(
                "model",
                format!(
                    "unknown model `{}`; valid models: {}",
                    self.model.name,
                    MODEL_NAMES.join(", ")
                ),
            );
        }
        // Every real-valued setting: NaN and infinities fail every range test below.
        for (flag, value, in_range, accepted) in [
            (
                "lr",
                self.optimisation.lr,
                self.optimisation.lr >= 0.0,
                "a finite number ≥ 0",
            ),
            (
                "momentum",
                self.optimisation.momentum,
                (0.0..1.0).contains(&self.optimisation.momentum),
                "in [0, 1)",
            ),
            (
                "weight-decay",
                self.optimisation.weight_decay,
                self.optimisation.weight_decay >= 0.0,
                "a finite number ≥ 0",
            ),
            (
                "lambda",
                self.pipeline.lambda,
                self.pipeline.lambda >= 0.0,
                "a finite number ≥ 0",
            ),
            (
                "alpha",
                self.pipeline.alpha,
                (0.0..=1.0).contains(&self.pipeline.alpha),
                "in [0, 1]",
            ),
            (
                "width",
                self.model.width,
                self.model.width > 0.0,
                "a finite number > 0",
            ),
            (
                "warmup-epochs",
                self.optimisation.warmup_epochs,
                self.optimisation.warmup_epochs >= 0.0,
                "a finite number ≥ 0",
            ),
            (
                "lr-gamma",
                self.optimisation.lr_gamma,
                self.optimisation.lr_gamma > 0.0 && self.optimisation.lr_gamma <= 1.0,
                "in (0, 1]",
            ),
        ] {
            if !(value.is_finite() && in_range) {
                return bad(flag, format!("must be {accepted}, got {value}"));
            }
        }
        // Every count: at least 1.
        for (flag, value) in [
            ("stages", self.pipeline.num_stages as usize),
            ("microbatches", self.pipeline.num_microbatches as usize),
            ("epochs", self.optimisation.epochs as usize),
            ("lr-step-epochs", self.optimisation.lr_step_epochs as usize),
            ("seq-len", self.data.seq_len),
            ("embed-dim", self.model.embed_dim),
            ("heads", self.model.heads),
            ("threads-per-stage", self.run.threads_per_stage),
        ] {
            if value == 0 {
                return bad(flag, "must be at least 1".into());
            }
        }
        let milestones = &self.optimisation.lr_milestones;
        match self.optimisation.lr_schedule {
            LrScheduleChoice::Multistep
                if milestones.is_empty()
                    || milestones[0] == 0
                    || milestones.windows(2).any(|w| w[0] >= w[1]) =>
            {
                return bad(
                    "lr-milestones",
                    format!(
                        "the multistep schedule needs strictly increasing epochs ≥ 1, e.g. \
                         --lr-milestones 30,60; got {milestones:?}"
                    ),
                );
            }
            LrScheduleChoice::Multistep => {}
            other if !milestones.is_empty() => {
                return bad(
                    "lr-milestones",
                    format!(
                        "only --lr-schedule multistep reads milestones; the schedule is `{}`",
                        clap::ValueEnum::to_possible_value(&other)
                            .expect("every schedule has a flag value")
                            .get_name()
                    ),
                );
            }
            _ => {}
        }
        if self.run.eval_batch_size == 0 {
            return Err(TrainError::config(
                "eval_batch_size (a --config key)",
                "must be at least 1",
            ));
        }
        for (flag, sizes) in [("hidden", &self.model.hidden), ("depth", &self.model.depth)] {
            if sizes.contains(&0) {
                return bad(
                    flag,
                    format!("every size must be at least 1, got {sizes:?}"),
                );
            }
        }
        // A limit of 0 leaves nothing to train on or, for the test set, nothing to report
        // accuracy on after every epoch: refused rather than run into NaN metrics.
        for (flag, limit, what) in [
            ("limit-train", self.data.limit_train, "training"),
            ("limit-test", self.data.limit_test, "test"),
        ] {
            if limit == Some(0) {
                return bad(
                    flag,
                    format!(
                        "must be at least 1 (0 leaves no {what} samples); leave it out to use \
                         every {what} sample"
                    ),
                );
            }
        }
        timeprest_data::check_data_dir(&self.data.dataset, self.data.data_dir.as_deref())?;
        if !self.pipeline.split.is_empty() {
            check_split_stages(self.pipeline.split.len(), self.pipeline.num_stages)
                .map_err(|reason| TrainError::config("--split", reason))?;
        }
        microbatch_size(self.optimisation.batch_size, self.pipeline.num_microbatches)
            .map_err(|reason| TrainError::config("--batch-size", reason))?;
        if self.optimisation.nesterov
            && (self.optimisation.optimizer != OptimizerChoice::Sgd
                || self.optimisation.momentum == 0.0)
        {
            return bad(
                "nesterov",
                "Nesterov momentum needs --optimizer sgd with --momentum > 0".into(),
            );
        }
        if self.pipeline.policy == PolicyKind::Single && self.pipeline.num_stages != 1 {
            return bad(
                "stages",
                format!(
                    "policy `single` runs on one stage, got {}",
                    self.pipeline.num_stages
                ),
            );
        }
        if let Some(k) = self.pipeline.backward_slots
            && !(1..=MAX_BACKWARD_SLOTS).contains(&k)
        {
            return bad(
                "backward-slots",
                format!("{k}: a backward takes 1 to {MAX_BACKWARD_SLOTS} slots per micro-batch"),
            );
        }
        let schedule = self.schedule_kind();
        let allowed = self.pipeline.policy.allowed_schedules();
        if !allowed.contains(&schedule) {
            let names: Vec<&str> = allowed.iter().map(|k| k.name()).collect();
            return bad(
                "schedule",
                format!(
                    "policy `{}` cannot run on schedule `{schedule}`; it runs on: {}",
                    self.pipeline.policy,
                    names.join(", ")
                ),
            );
        }
        self.check_policy_options()?;
        if self.pipeline.policy == PolicyKind::Nwpt
            && (self.optimisation.optimizer != OptimizerChoice::Sgd
                || self.optimisation.momentum == 0.0)
        {
            return bad(
                "policy",
                "nwpt predicts weights from the SGD momentum buffer: use --optimizer sgd with \
                 --momentum > 0"
                    .into(),
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Expects `config` to be refused with a message starting with `prefix`.
    fn refused(config: TrainConfig, prefix: &str) {
        let error = config.clone().validate().unwrap_err().to_string();
        assert!(error.starts_with(prefix), "{prefix}: {error}");
    }

    /// The default configuration with `change` applied.
    fn with(change: impl FnOnce(&mut TrainConfig)) -> TrainConfig {
        let mut config = TrainConfig::default();
        change(&mut config);
        config
    }

    #[test]
    fn a_split_of_the_wrong_length_and_a_batch_too_small_are_refused_in_the_shared_words() {
        let split = with(|c| {
            c.pipeline.num_stages = 3;
            c.pipeline.split = vec![2];
        });
        assert_eq!(
            split.validate().unwrap_err().to_string(),
            "--split: 1 cut points make 2 stages, but --stages is 3"
        );
        let batch = with(|c| {
            c.optimisation.batch_size = 2;
            c.pipeline.num_microbatches = 3;
        });
        assert_eq!(
            batch.validate().unwrap_err().to_string(),
            "--batch-size: 2 samples cannot be split into 3 micro-batches"
        );
        assert_eq!(microbatch_size(7, 3), Ok(2));
        assert!(microbatch_size(7, 0).is_err());
        assert_eq!(check_split_stages(2, 3), Ok(()));
    }

    #[test]
    fn the_defaults_are_valid() {
        TrainConfig::default().validate().unwrap();
    }

    #[test]
    fn every_key_is_a_field_of_the_file_and_set_reads_it_with_its_own_type() {
        let file = serde_json::to_value(TrainConfig::default()).unwrap();
        let file = file.as_object().unwrap();
        let mut keys: Vec<&str> = file.keys().map(String::as_str).collect();
        let mut listed = TrainConfig::KEYS.to_vec();
        keys.sort_unstable();
        listed.sort_unstable();
        assert_eq!(keys, listed);
        // Every key set to another config's value changes exactly that key.
        let other = with(|c| {
            c.model = ModelSettings {
                name: "lenet5".into(),
                hidden: vec![7],
                width: 0.5,
                depth: vec![2],
                embed_dim: 16,
                heads: 2,
            };
            c.data = DataSettings {
                dataset: "fashion-mnist".into(),
                data_dir: Some("/data".into()),
                limit_train: Some(5),
                limit_test: Some(6),
                seq_len: 9,
                shuffle: false,
                augment: true,
            };
            c.pipeline = PipelineSettings {
                num_stages: 2,
                num_microbatches: 4,
                policy: PolicyKind::Nwpt,
                schedule: Some(ScheduleKind::Gpipe),
                backward_slots: Some(2),
                partition: PartitionMethod::Time,
                split: vec![3],
                grad_mode: GradMode::Recompute,
                recompute_activations: true,
                significance: SignificanceChoice::Const,
                lambda: 2.0,
                alpha: 0.25,
                prediction: Prediction::Spectrain,
                horizon: Horizon::Constant(2),
                forward_source: ForwardSource::VerticalSync,
                latest_version: LatestSource::Committed,
                staleness: StalenessMeasure::MinibatchMean,
                update_base: UpdateBase::Intermediate,
            };
            c.optimisation = OptimisationSettings {
                batch_size: 8,
                epochs: 2,
                optimizer: OptimizerChoice::Adam,
                lr: 0.5,
                momentum: 0.5,
                nesterov: true,
                weight_decay: 0.1,
                lr_schedule: LrScheduleChoice::Cosine,
                warmup_epochs: 1.5,
                lr_step_epochs: 4,
                lr_gamma: 0.5,
                lr_milestones: vec![2, 5],
            };
            c.run = RunSettings {
                seed: 3,
                threads_per_stage: 2,
                device: ComputeDevice::Gpu(1),
                eval_batch_size: 7,
            };
        });
        let values = serde_json::to_value(&other).unwrap();
        let mut config = TrainConfig::default();
        for key in TrainConfig::KEYS {
            let before = serde_json::to_value(&config).unwrap();
            config.set(key, values[key].clone()).unwrap();
            let after = serde_json::to_value(&config).unwrap();
            for known in TrainConfig::KEYS {
                let expected = if known == key {
                    &values[key]
                } else {
                    &before[known]
                };
                assert_eq!(&after[known], expected, "setting {key} changed {known}");
            }
        }
        assert_eq!(config, other);
    }

    #[test]
    fn set_names_the_key_of_an_unknown_key_or_a_value_of_the_wrong_type() {
        let mut config = TrainConfig::default();
        let unknown = config.set("speed", serde_json::json!(2)).unwrap_err();
        assert!(
            unknown
                .to_string()
                .starts_with("unknown key `speed`; valid keys: model, hidden"),
            "{unknown}"
        );
        let wrong = config
            .set("stages", serde_json::json!("three"))
            .unwrap_err();
        assert!(
            matches!(&wrong, KeyError::Value { key, .. } if key == "stages"),
            "{wrong}"
        );
        let policy = config
            .set("policy", serde_json::json!("bogus"))
            .unwrap_err();
        assert!(policy.to_string().starts_with("key `policy`: "), "{policy}");
        assert_eq!(config, TrainConfig::default());
    }

    #[test]
    fn a_file_keeps_one_flat_table_whose_keys_are_the_flags() {
        let text = toml::to_string(&TrainConfig::default()).unwrap();
        assert!(text.contains("\nstages = 3\n"), "{text}");
        assert!(text.contains("\nlr = 0.05\n"), "{text}");
        assert!(!text.lines().any(|line| line.starts_with('[')), "{text}");
        let back: TrainConfig = toml::from_str(&text).unwrap();
        assert_eq!(back, TrainConfig::default());
    }

    #[test]
    fn every_real_valued_setting_outside_its_range_names_its_flag() {
        for bad in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY, -0.5] {
            refused(with(|c| c.optimisation.lr = bad), "--lr:");
            refused(with(|c| c.optimisation.momentum = bad), "--momentum:");
            refused(
                with(|c| c.optimisation.weight_decay = bad),
                "--weight-decay:",
            );
            refused(with(|c| c.pipeline.lambda = bad), "--lambda:");
            refused(with(|c| c.pipeline.alpha = bad), "--alpha:");
            refused(with(|c| c.model.width = bad), "--width:");
        }
        refused(
            with(|c| c.optimisation.momentum = 1.0),
            "--momentum: must be in [0, 1)",
        );
        refused(
            with(|c| c.pipeline.alpha = 1.5),
            "--alpha: must be in [0, 1]",
        );
        refused(
            with(|c| c.model.width = 0.0),
            "--width: must be a finite number > 0",
        );
    }

    #[test]
    fn every_count_of_zero_names_its_flag() {
        refused(with(|c| c.pipeline.num_stages = 0), "--stages:");
        refused(with(|c| c.pipeline.num_microbatches = 0), "--microbatches:");
        refused(with(|c| c.optimisation.epochs = 0), "--epochs:");
        refused(with(|c| c.data.seq_len = 0), "--seq-len:");
        refused(with(|c| c.model.embed_dim = 0), "--embed-dim:");
        refused(with(|c| c.model.heads = 0), "--heads:");
        refused(
            with(|c| c.run.threads_per_stage = 0),
            "--threads-per-stage:",
        );
        refused(with(|c| c.run.eval_batch_size = 0), "eval_batch_size");
        refused(with(|c| c.model.hidden = vec![128, 0]), "--hidden:");
        refused(with(|c| c.model.depth = vec![0]), "--depth:");
        refused(with(|c| c.data.limit_train = Some(0)), "--limit-train:");
        refused(with(|c| c.data.limit_test = Some(0)), "--limit-test:");
    }

    #[test]
    fn a_data_dir_is_refused_for_data_sets_that_read_none() {
        for dataset in [
            "digits",
            "synthetic",
            "text:/usr/share/common-licenses/GPL-3",
        ] {
            let config = with(|c| {
                c.data.dataset = dataset.into();
                c.data.data_dir = Some("/data".into());
            });
            refused(config, "--data-dir /data: data set");
        }
        let reads_it = with(|c| {
            c.data.dataset = "fashion-mnist".into();
            c.data.data_dir = Some("/data".into());
        });
        reads_it.validate().unwrap();
    }

    #[test]
    fn a_horizon_forward_source_or_latest_version_is_refused_for_a_policy_that_has_none() {
        refused(
            with(|c| c.pipeline.horizon = Horizon::Spectrain),
            "--horizon: only nwpt predicts weights",
        );
        let nwpt = with(|c| {
            c.pipeline.policy = PolicyKind::Nwpt;
            c.pipeline.horizon = Horizon::Constant(2);
        });
        nwpt.validate().unwrap();
        refused(
            with(|c| {
                c.pipeline.policy = PolicyKind::Gpipe;
                c.pipeline.forward_source = ForwardSource::VerticalSync;
            }),
            "--forward-source: only v-timeprest and i-timeprest",
        );
        with(|c| c.pipeline.forward_source = ForwardSource::VerticalSync)
            .validate()
            .unwrap();
        // The default policy is i-timeprest, whose backward blends: no latest version to pick.
        refused(
            with(|c| c.pipeline.latest_version = LatestSource::Committed),
            "--latest-version: only timeprest and v-timeprest",
        );
        with(|c| {
            c.pipeline.policy = PolicyKind::Timeprest;
            c.pipeline.latest_version = LatestSource::Committed;
        })
        .validate()
        .unwrap();
        refused(
            with(|c| {
                c.pipeline.policy = PolicyKind::VTimeprest;
                c.pipeline.staleness = StalenessMeasure::MinibatchMax;
            }),
            "--staleness: only i-timeprest",
        );
        with(|c| c.pipeline.staleness = StalenessMeasure::MinibatchMax)
            .validate()
            .unwrap();
        refused(
            with(|c| {
                c.pipeline.policy = PolicyKind::Timeprest;
                c.pipeline.update_base = UpdateBase::Intermediate;
            }),
            "--update-base: only i-timeprest",
        );
        with(|c| c.pipeline.update_base = UpdateBase::Intermediate)
            .validate()
            .unwrap();
    }

    #[test]
    fn nesterov_needs_sgd_with_momentum() {
        let adam = with(|c| {
            c.optimisation.nesterov = true;
            c.optimisation.optimizer = OptimizerChoice::Adam;
        });
        refused(adam, "--nesterov:");
        let no_momentum = with(|c| {
            c.optimisation.nesterov = true;
            c.optimisation.momentum = 0.0;
        });
        refused(no_momentum, "--nesterov:");
    }
}
