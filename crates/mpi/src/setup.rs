//! What a rank builds before training: its data, the model description, its one stage.
//!
//! This follows `timeprest_train::Trainer` step for step (data limits, model from its name,
//! partition, seeded or loaded initial weights, augmentation on stage 0, epoch batches), but
//! builds only the stage this rank runs. Anything that could differ between processes is
//! decided once: the split into stages comes from rank 0 (a `--partition time` split is
//! measured, and two processes would measure differently). Keep this file in step with the
//! trainer; the bit-identity tests fail if they drift apart.

use std::ops::Range;
use std::path::Path;
use std::sync::Arc;

use timeprest_data::{Augment, Dataset};
use timeprest_nn::{
    BurnStage, ModelParams, ModelSpec, init_params, load_safetensors, partition_manual,
    partition_model,
};
use timeprest_train::{TrainConfig, TrainError, load_data_and_model};

use crate::wire::{Reader, WireError, put_len};

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

/// A split as bytes: the number of stages, then each range's start and end.
pub fn encode_split(split: &[Range<usize>]) -> Vec<u8> {
    let mut out = Vec::new();
    put_len(&mut out, split.len());
    for range in split {
        put_len(&mut out, range.start);
        put_len(&mut out, range.end);
    }
    out
}

/// The split [`encode_split`] wrote.
pub fn decode_split(bytes: &[u8]) -> Result<Vec<Range<usize>>, WireError> {
    let mut reader = Reader::new(bytes);
    let split = (0..reader.length()?)
        .map(|_| Ok(reader.length()?..reader.length()?))
        .collect::<Result<_, WireError>>()?;
    reader.finish()?;
    Ok(split)
}

pub use timeprest_train::epoch_batches;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_split_round_trips() {
        let split = vec![0..2, 2..3, 3..7];
        assert_eq!(decode_split(&encode_split(&split)), Ok(split));
        assert!(decode_split(&[1, 2, 3]).is_err());
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
