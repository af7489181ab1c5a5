//! What a rank builds before training: its data, the model description, its one stage.
//!
//! This follows `timeprest_train::Trainer` step for step (data limits, model from its name,
//! partition, seeded or loaded initial weights, augmentation on stage 0, epoch batches), but
//! builds only the stage this rank runs. Anything that could differ between processes is
//! decided once: the split into stages comes from rank 0 (a `--partition time` split is
//! measured, and two processes would measure differently), and so are where checkpoints go and
//! which one to resume ([`Start`]). Keep this file in step with the trainer; the bit-identity
//! tests fail if they drift apart.

use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use timeprest_data::{Augment, Dataset};
use timeprest_nn::{
    BurnStage, ModelParams, ModelSpec, init_params, load_safetensors, partition_manual,
    partition_model,
};
use timeprest_train::checkpoint::{CheckpointPlan, CheckpointState};
use timeprest_train::{TrainConfig, TrainError, load_data_and_model};

use crate::error::MpiError;
use crate::wire::WireError;

/// The data and model every rank knows.
pub struct Model {
    /// The training samples (stage 0 reads features, the last stage labels).
    pub train: Arc<Dataset>,
    /// The test samples (rank 0 evaluates on them).
    pub test: Dataset,
    /// The architecture.
    pub spec: ModelSpec,
    /// The initial weights of the whole model.
    pub initial: ModelParams,
}

impl Model {
    /// Loads the data of `config` and the initial weights (from `init_weights` if given).
    pub fn load(config: &TrainConfig, init_weights: Option<&Path>) -> Result<Self, TrainError> {
        let (train, test, spec) = load_data_and_model(config)?;
        let initial = match init_weights {
            Some(path) => load_safetensors(path, &spec)?,
            None => init_params(&spec, config.seed)?,
        };
        Ok(Self {
            train: Arc::new(train),
            test,
            spec,
            initial,
        })
    }

    /// The blocks of each stage (rank 0 decides; see the module documentation).
    pub fn split(&self, config: &TrainConfig) -> Result<Vec<Range<usize>>, TrainError> {
        let microbatch = (config.batch_size / config.microbatches as usize).max(1);
        if config.split.is_empty() {
            partition_model(
                &self.spec,
                config.partition,
                config.stages as usize,
                microbatch,
                config.threads_per_stage,
            )
            .map_err(|e| TrainError::Config(format!("--stages: {e}")))
        } else {
            partition_manual(&config.split, self.spec.num_blocks())
                .map_err(|e| TrainError::Config(format!("--split: {e}")))
        }
    }

    /// Stage `stage` of `config`, owning the blocks `blocks`.
    pub fn stage(
        &self,
        config: &TrainConfig,
        stage: u32,
        blocks: Range<usize>,
    ) -> Result<BurnStage, TrainError> {
        let mut built = BurnStage::new(
            stage,
            config.stages,
            self.initial[blocks.clone()].to_vec(),
            blocks.start,
            config.optimizer_config(),
            config.grad_mode,
            Arc::clone(&self.train),
        )?;
        if stage == 0 {
            built.set_augment(config.augment.then_some(Augment { seed: config.seed }));
        }
        Ok(built)
    }
}

/// What rank 0 decides for every rank before training: which blocks each stage owns, where
/// checkpoints go, and which checkpoint the run continues from. Rank 0 alone decides, so ranks
/// never disagree about them, even when started with different output flags.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Start {
    /// The blocks of each stage.
    pub split: Vec<Range<usize>>,
    /// Where and how often every rank writes its stage's checkpoint file.
    pub checkpoints: Option<CheckpointPlan>,
    /// The checkpoint to continue from.
    pub resume: Option<Resume>,
}

/// A checkpoint rank 0 has checked against the run: every rank restores its stage from it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Resume {
    /// The checkpoint directory (`checkpoint/` or `checkpoint.prev/` of the run directory).
    pub dir: PathBuf,
    /// Its `state.json`.
    pub state: CheckpointState,
}

impl Start {
    /// The message's bytes (JSON).
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a start message always serialises")
    }

    /// The start message rank `rank` sent as `bytes`.
    pub fn decode(rank: usize, bytes: &[u8]) -> Result<Self, MpiError> {
        serde_json::from_slice(bytes).map_err(|e| MpiError::Protocol {
            rank,
            cause: WireError::Invalid(format!("start message: {e}")),
        })
    }
}

pub use timeprest_train::epoch_batches;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_start_message_round_trips() {
        let start = Start {
            split: vec![0..2, 2..3, 3..7],
            checkpoints: Some(CheckpointPlan {
                run_dir: PathBuf::from("runs/a"),
                every: 2,
            }),
            resume: Some(Resume {
                dir: PathBuf::from("runs/a/checkpoint"),
                state: CheckpointState {
                    epoch: 3,
                    updates: 30,
                    config: TrainConfig::default(),
                    stages: Vec::new(),
                },
            }),
        };
        assert_eq!(Start::decode(0, &start.encode()).unwrap(), start);
        assert!(matches!(
            Start::decode(0, &[1, 2, 3]),
            Err(MpiError::Protocol { rank: 0, .. })
        ));
    }

    #[test]
    fn one_f_one_b_cuts_every_micro_batch_into_a_mini_batch() {
        let config = TrainConfig {
            policy: timeprest_policy::PolicyKind::Pipedream,
            batch_size: 4,
            microbatches: 2,
            shuffle: false,
            ..TrainConfig::default()
        };
        let batches = epoch_batches(&config, 9, 1).unwrap();
        assert_eq!(
            batches.minibatches,
            vec![
                vec![vec![0, 1]],
                vec![vec![2, 3]],
                vec![vec![4, 5]],
                vec![vec![6, 7]]
            ]
        );
        let gpipe = TrainConfig {
            policy: timeprest_policy::PolicyKind::Gpipe,
            ..config
        };
        assert_eq!(
            epoch_batches(&gpipe, 9, 1).unwrap().minibatches,
            vec![vec![vec![0, 1], vec![2, 3]], vec![vec![4, 5], vec![6, 7]]]
        );
        assert!(epoch_batches(&gpipe, 1, 1).is_err());
    }
}
