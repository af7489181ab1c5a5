//! The test kit shared by the train crate's integration tests: a validated configuration, a
//! small MLP pipeline on the embedded digits, a whole run's final weights, and those weights as
//! plain numbers. Each test file takes what it needs (`mod common;`), so no file keeps its own
//! copy.
#![allow(dead_code)] // Every test binary compiles the whole kit and uses a part of it.

use timeprest_nn::ModelParams;
use timeprest_policy::PolicyKind;
use timeprest_train::{TrainConfig, Trainer, ValidConfig};

/// `config`, validated (every test configuration is valid).
pub fn valid(config: &TrainConfig) -> ValidConfig {
    config.clone().validate().unwrap()
}

/// A small, fast pipeline: an MLP with hidden layers 24, 16 on the first 96 digits (32 test
/// samples), mini-batches of 16, `policy` on `num_stages` stages with `num_microbatches`.
pub fn small_mlp(policy: PolicyKind, num_stages: u32, num_microbatches: u32) -> TrainConfig {
    let mut config = TrainConfig::default();
    config.pipeline.policy = policy;
    config.pipeline.num_stages = num_stages;
    config.pipeline.num_microbatches = num_microbatches;
    config.model.hidden = vec![24, 16];
    config.data.limit_train = Some(96);
    config.data.limit_test = Some(32);
    config.optimisation.batch_size = 16;
    config
}

/// The live weights after training `config` for `epochs` epochs in one go.
pub fn trained(config: &TrainConfig, epochs: u32) -> ModelParams {
    let mut trainer = Trainer::new(valid(config), None).unwrap();
    for epoch in 1..=epochs {
        trainer.run_epoch(epoch, None).unwrap();
    }
    trainer.params()
}

/// Every parameter tensor of `params` in file layout, block by block.
pub fn weight_values(params: &ModelParams) -> Vec<Vec<f32>> {
    params
        .iter()
        .flat_map(|block| block.to_file_layout())
        .collect()
}
