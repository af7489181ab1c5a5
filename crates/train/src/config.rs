//! The training configuration: one flat, serialisable record, validated once.
//!
//! The CLI (and config files) fill a [`TrainConfig`]; [`TrainConfig::validate`] turns it
//! into the objects the loop needs or says exactly which field is wrong. The record is what a
//! run directory stores as `config.json`, so that a run can be repeated.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use timeprest_nn::{
    ComputeDevice, GptConfig, GradMode, MODEL_NAMES, OptimizerConfig, OptimizerKind,
    PartitionMethod,
};
use timeprest_policy::{Horizon, PolicyKind, PolicyOptions, Prediction, Significance};
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

/// Everything one training run depends on.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TrainConfig {
    /// Model name (one of [`MODEL_NAMES`]).
    pub model: String,
    /// Hidden layer widths of the MLP.
    pub hidden: Vec<usize>,
    /// Data set name (one of `timeprest_data::DATASET_NAMES`, or `text:PATH`).
    pub dataset: String,
    /// Directory of the data set files (IDX data sets).
    pub data_dir: Option<PathBuf>,
    /// Use only the first this-many training samples (after the fixed split).
    pub limit_train: Option<usize>,
    /// Use only the first this-many test samples.
    pub limit_test: Option<usize>,
    /// W: pipeline stages.
    pub stages: u32,
    /// N: micro-batches per mini-batch.
    pub microbatches: u32,
    /// M: samples per mini-batch.
    pub batch_size: usize,
    /// Epochs.
    pub epochs: u32,
    /// Learning rate η.
    pub lr: f64,
    /// SGD momentum μ.
    pub momentum: f64,
    /// Nesterov momentum for SGD.
    pub nesterov: bool,
    /// L2 weight decay.
    pub weight_decay: f64,
    /// Optimizer.
    pub optimizer: OptimizerChoice,
    /// Weight policy.
    pub policy: PolicyKind,
    /// Schedule; `None` uses the policy's default.
    pub schedule: Option<ScheduleKind>,
    /// Order the schedule with backwards of this many slots per micro-batch
    /// ([`ScheduleConfig::backward_slots`]); `None` (the default): the papers' unit grid.
    #[serde(default)]
    pub backward_slots: Option<u32>,
    /// Gradient mode when forward and backward read different weights.
    pub grad_mode: GradMode,
    /// I-TiMePReSt significance function.
    pub significance: SignificanceChoice,
    /// λ of the `exp` significance.
    pub lambda: f64,
    /// α of the `const` significance.
    pub alpha: f64,
    /// NWPT prediction formula.
    pub prediction: Prediction,
    /// Seed for initial weights and data order.
    pub seed: u64,
    /// Shuffle the training data every epoch.
    pub shuffle: bool,
    /// Intra-op threads per stage.
    pub threads_per_stage: usize,
    /// Where the tensors live (`cpu`, `gpu:N`); older config files without it mean `cpu`.
    #[serde(default)]
    pub device: ComputeDevice,
    /// Batch size for evaluation.
    pub eval_batch_size: usize,
    /// Channel multiplier of the convolutional models (1 = the reference size).
    pub width: f64,
    /// Residual blocks per group of the ResNets, or the number of transformer layers of `gpt`
    /// (one number) (empty = the model's default).
    pub depth: Vec<usize>,
    /// Characters per sample of a `text:PATH` data set (the context length of `gpt`).
    #[serde(default = "default_seq_len")]
    pub seq_len: usize,
    /// Embedding width d of `gpt`.
    #[serde(default = "default_embed_dim")]
    pub embed_dim: usize,
    /// Attention heads of `gpt` (they must divide `embed_dim`).
    #[serde(default = "default_heads")]
    pub heads: usize,
    /// How to split the model into stages when `split` is empty.
    pub partition: PartitionMethod,
    /// A split by hand: the first blocks of stages 1, 2, … (empty = use `partition`).
    pub split: Vec<usize>,
    /// Random crops (padding 4) and horizontal flips of the training images.
    pub augment: bool,
}

// Defaults of the fields added with `gpt`, so that configurations written before them still
// load.
fn default_seq_len() -> usize {
    timeprest_data::DEFAULT_SEQ_LEN
}

fn default_embed_dim() -> usize {
    GptConfig::DEFAULT_EMBED_DIM
}

fn default_heads() -> usize {
    GptConfig::DEFAULT_HEADS
}

impl Default for TrainConfig {
    fn default() -> Self {
        Self {
            model: "mlp".into(),
            hidden: vec![128, 64],
            dataset: "digits".into(),
            data_dir: None,
            limit_train: None,
            limit_test: None,
            stages: 3,
            microbatches: 3,
            batch_size: 32,
            epochs: 10,
            lr: 0.05,
            momentum: 0.9,
            nesterov: false,
            weight_decay: 0.0,
            optimizer: OptimizerChoice::Sgd,
            policy: PolicyKind::ITimeprest,
            schedule: None,
            backward_slots: None,
            grad_mode: GradMode::Graph,
            significance: SignificanceChoice::Exp,
            lambda: 1.0,
            alpha: 0.5,
            prediction: Prediction::Nag,
            seed: 1,
            shuffle: true,
            threads_per_stage: 1,
            device: ComputeDevice::Cpu,
            eval_batch_size: 512,
            width: 1.0,
            depth: Vec::new(),
            seq_len: default_seq_len(),
            embed_dim: default_embed_dim(),
            heads: default_heads(),
            partition: PartitionMethod::Ops,
            split: Vec::new(),
            augment: false,
        }
    }
}

impl TrainConfig {
    /// The schedule this run uses.
    pub fn schedule_kind(&self) -> ScheduleKind {
        self.schedule
            .unwrap_or_else(|| self.policy.default_schedule())
    }

    /// The schedule shape of one epoch of this run with `num_microbatches` micro-batches per
    /// mini-batch and `num_minibatches` mini-batches: W = `stages`, ordered on the papers' unit
    /// grid or, with [`TrainConfig::backward_slots`], with backwards that take that many slots
    /// per micro-batch.
    pub fn schedule_config(&self, num_microbatches: u32, num_minibatches: u32) -> ScheduleConfig {
        ScheduleConfig {
            backward_slots: self.backward_slots,
            ..ScheduleConfig::new(self.stages, num_microbatches, num_minibatches)
        }
    }

    /// The optimizer configuration.
    pub fn optimizer_config(&self) -> OptimizerConfig {
        let kind = match self.optimizer {
            OptimizerChoice::Sgd => OptimizerKind::Sgd {
                momentum: self.momentum,
                nesterov: self.nesterov,
            },
            OptimizerChoice::Adam => OptimizerKind::Adam {
                beta1: 0.9,
                beta2: 0.999,
                epsilon: 1e-8,
            },
        };
        OptimizerConfig {
            kind,
            lr: self.lr,
            weight_decay: self.weight_decay,
        }
    }

    /// The policy options.
    pub fn policy_options(&self) -> PolicyOptions {
        let significance = match self.significance {
            SignificanceChoice::Exp => Significance::Exp {
                lambda: self.lambda,
            },
            SignificanceChoice::Exp2 => Significance::Exp2,
            SignificanceChoice::Inverse => Significance::Inverse,
            SignificanceChoice::Const => Significance::Const { alpha: self.alpha },
        };
        PolicyOptions {
            significance,
            prediction: self.prediction,
            horizon: Horizon::StagesRemaining,
            ..PolicyOptions::default()
        }
    }

    /// Checks every field and returns the configuration as a [`ValidConfig`], which is what
    /// a pipeline is built from; the error names the flag and the valid values.
    pub fn validate(self) -> Result<ValidConfig, TrainError> {
        self.check()?;
        Ok(ValidConfig(self))
    }

    fn check(&self) -> Result<(), TrainError> {
        let bad =
            |flag: &str, message: String| Err(TrainError::config(format!("--{flag}"), message));
        if !MODEL_NAMES.contains(&self.model.as_str()) {
            return bad(
                "model",
                format!(
                    "unknown model `{}`; valid models: {}",
                    self.model,
                    MODEL_NAMES.join(", ")
                ),
            );
        }
        // Every real-valued setting: NaN and infinities fail every range test below.
        for (flag, value, in_range, accepted) in [
            ("lr", self.lr, self.lr >= 0.0, "a finite number ≥ 0"),
            (
                "momentum",
                self.momentum,
                (0.0..1.0).contains(&self.momentum),
                "in [0, 1)",
            ),
            (
                "weight-decay",
                self.weight_decay,
                self.weight_decay >= 0.0,
                "a finite number ≥ 0",
            ),
            (
                "lambda",
                self.lambda,
                self.lambda >= 0.0,
                "a finite number ≥ 0",
            ),
            (
                "alpha",
                self.alpha,
                (0.0..=1.0).contains(&self.alpha),
                "in [0, 1]",
            ),
            ("width", self.width, self.width > 0.0, "a finite number > 0"),
        ] {
            if !(value.is_finite() && in_range) {
                return bad(flag, format!("must be {accepted}, got {value}"));
            }
        }
        // Every count: at least 1.
        for (flag, value) in [
            ("stages", self.stages as usize),
            ("microbatches", self.microbatches as usize),
            ("epochs", self.epochs as usize),
            ("seq-len", self.seq_len),
            ("embed-dim", self.embed_dim),
            ("heads", self.heads),
            ("threads-per-stage", self.threads_per_stage),
        ] {
            if value == 0 {
                return bad(flag, "must be at least 1".into());
            }
        }
        if self.eval_batch_size == 0 {
            return Err(TrainError::config(
                "eval_batch_size (a --config key)",
                "must be at least 1",
            ));
        }
        for (flag, sizes) in [("hidden", &self.hidden), ("depth", &self.depth)] {
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
            ("limit-train", self.limit_train, "training"),
            ("limit-test", self.limit_test, "test"),
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
        timeprest_data::check_data_dir(&self.dataset, self.data_dir.as_deref())?;
        if !self.split.is_empty() {
            check_split_stages(self.split.len(), self.stages)
                .map_err(|reason| TrainError::config("--split", reason))?;
        }
        microbatch_size(self.batch_size, self.microbatches)
            .map_err(|reason| TrainError::config("--batch-size", reason))?;
        if self.nesterov && (self.optimizer != OptimizerChoice::Sgd || self.momentum == 0.0) {
            return bad(
                "nesterov",
                "Nesterov momentum needs --optimizer sgd with --momentum > 0".into(),
            );
        }
        if self.policy == PolicyKind::Single && self.stages != 1 {
            return bad(
                "stages",
                format!("policy `single` runs on one stage, got {}", self.stages),
            );
        }
        if let Some(k) = self.backward_slots
            && !(1..=MAX_BACKWARD_SLOTS).contains(&k)
        {
            return bad(
                "backward-slots",
                format!("{k}: a backward takes 1 to {MAX_BACKWARD_SLOTS} slots per micro-batch"),
            );
        }
        let schedule = self.schedule_kind();
        let allowed = self.policy.allowed_schedules();
        if !allowed.contains(&schedule) {
            let names: Vec<&str> = allowed.iter().map(|k| k.name()).collect();
            return bad(
                "schedule",
                format!(
                    "policy `{}` cannot run on schedule `{schedule}`; it runs on: {}",
                    self.policy,
                    names.join(", ")
                ),
            );
        }
        if self.policy == PolicyKind::Nwpt
            && (self.optimizer != OptimizerChoice::Sgd || self.momentum == 0.0)
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

    #[test]
    fn a_split_of_the_wrong_length_and_a_batch_too_small_are_refused_in_the_shared_words() {
        let split = TrainConfig {
            stages: 3,
            split: vec![2],
            ..TrainConfig::default()
        };
        assert_eq!(
            split.validate().unwrap_err().to_string(),
            "--split: 1 cut points make 2 stages, but --stages is 3"
        );
        let batch = TrainConfig {
            batch_size: 2,
            microbatches: 3,
            ..TrainConfig::default()
        };
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
    fn every_real_valued_setting_outside_its_range_names_its_flag() {
        let base = TrainConfig::default;
        for bad in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY, -0.5] {
            refused(TrainConfig { lr: bad, ..base() }, "--lr:");
            refused(
                TrainConfig {
                    momentum: bad,
                    ..base()
                },
                "--momentum:",
            );
            let weight_decay = TrainConfig {
                weight_decay: bad,
                ..base()
            };
            refused(weight_decay, "--weight-decay:");
            refused(
                TrainConfig {
                    lambda: bad,
                    ..base()
                },
                "--lambda:",
            );
            refused(
                TrainConfig {
                    alpha: bad,
                    ..base()
                },
                "--alpha:",
            );
            refused(
                TrainConfig {
                    width: bad,
                    ..base()
                },
                "--width:",
            );
        }
        refused(
            TrainConfig {
                momentum: 1.0,
                ..base()
            },
            "--momentum: must be in [0, 1)",
        );
        refused(
            TrainConfig {
                alpha: 1.5,
                ..base()
            },
            "--alpha: must be in [0, 1]",
        );
        refused(
            TrainConfig {
                width: 0.0,
                ..base()
            },
            "--width: must be a finite number > 0",
        );
    }

    #[test]
    fn every_count_of_zero_names_its_flag() {
        let base = TrainConfig::default;
        refused(
            TrainConfig {
                stages: 0,
                ..base()
            },
            "--stages:",
        );
        refused(
            TrainConfig {
                microbatches: 0,
                ..base()
            },
            "--microbatches:",
        );
        refused(
            TrainConfig {
                epochs: 0,
                ..base()
            },
            "--epochs:",
        );
        refused(
            TrainConfig {
                seq_len: 0,
                ..base()
            },
            "--seq-len:",
        );
        refused(
            TrainConfig {
                embed_dim: 0,
                ..base()
            },
            "--embed-dim:",
        );
        refused(TrainConfig { heads: 0, ..base() }, "--heads:");
        let threads = TrainConfig {
            threads_per_stage: 0,
            ..base()
        };
        refused(threads, "--threads-per-stage:");
        let eval = TrainConfig {
            eval_batch_size: 0,
            ..base()
        };
        refused(eval, "eval_batch_size");
        let hidden = TrainConfig {
            hidden: vec![128, 0],
            ..base()
        };
        refused(hidden, "--hidden:");
        let depth = TrainConfig {
            depth: vec![0],
            ..base()
        };
        refused(depth, "--depth:");
        let train = TrainConfig {
            limit_train: Some(0),
            ..base()
        };
        refused(train, "--limit-train:");
        let test = TrainConfig {
            limit_test: Some(0),
            ..base()
        };
        refused(test, "--limit-test:");
    }

    #[test]
    fn a_data_dir_is_refused_for_data_sets_that_read_none() {
        for dataset in [
            "digits",
            "synthetic",
            "text:/usr/share/common-licenses/GPL-3",
        ] {
            let config = TrainConfig {
                dataset: dataset.into(),
                data_dir: Some("/data".into()),
                ..TrainConfig::default()
            };
            refused(config, "--data-dir /data: data set");
        }
        let reads_it = TrainConfig {
            dataset: "fashion-mnist".into(),
            data_dir: Some("/data".into()),
            ..TrainConfig::default()
        };
        reads_it.clone().validate().unwrap();
    }

    #[test]
    fn nesterov_needs_sgd_with_momentum() {
        let adam = TrainConfig {
            nesterov: true,
            optimizer: OptimizerChoice::Adam,
            ..TrainConfig::default()
        };
        refused(adam, "--nesterov:");
        let no_momentum = TrainConfig {
            nesterov: true,
            momentum: 0.0,
            ..TrainConfig::default()
        };
        refused(no_momentum, "--nesterov:");
    }
}
