//! The simulator's prediction for one training configuration, per stage.
//!
//! A comparison puts measured figures next to predicted ones, so the prediction must not look
//! at the run: it takes the first epoch's plan of the same [`Pipeline`] the run trains (same
//! split, schedule and traced weight versions), and prices weight sets and in-flight micro-batches with the schedule crate's [`MemoryModel`].
//! Weight bytes are exact (f32 parameters × weight sets); activation bytes are an estimate
//! (each block's input and output per sample, f32, × samples per micro-batch; with
//! `--recompute-activations`, the stage input of each micro-batch in flight plus the full
//! activations of one backward's micro-batches), to read next to the run's measured
//! `peak_activation_bytes`.

use serde::{Deserialize, Serialize};

use timeprest_schedule::{MemoryModel, max_microbatches_in_flight};
use timeprest_train::{EpochWork, Pipeline, TrainConfig};

use crate::error::ReportError;

/// Bytes of one parameter or activation value (f32).
const VALUE_BYTES: u64 = 4;

/// What the simulator predicts for one stage over one epoch.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct StagePrediction {
    /// Most weight sets stored at once.
    pub weight_sets: u32,
    /// Bytes of those weight sets.
    pub weight_bytes: u64,
    /// Most micro-batches whose forward is done and whose backward is not.
    pub microbatches_in_flight: u32,
    /// Estimated bytes of the activations of those micro-batches.
    pub activation_bytes: u64,
    /// Mean staleness d over the epoch's backward micro-batches.
    pub mean_staleness: f64,
}

/// Predicts one epoch of `config` (loads the data set to know its size and shape). `label`
/// names the variant in errors.
pub fn predict(label: &str, config: &TrainConfig) -> Result<Vec<StagePrediction>, ReportError> {
    let failed = |cause: String| ReportError::Prediction {
        label: label.to_string(),
        cause,
    };
    let config = config
        .clone()
        .validate()
        .map_err(|e| failed(e.to_string()))?;
    let pipeline = Pipeline::load(config.clone(), None).map_err(|e| failed(e.to_string()))?;
    let EpochWork {
        schedule, versions, ..
    } = pipeline.epoch_work(1).map_err(|e| failed(e.to_string()))?;
    let blocks = pipeline.spec().blocks();
    let split = pipeline.split();
    let samples = config
        .optimisation
        .batch_size
        .div_ceil(config.pipeline.num_microbatches as usize) as u64;
    let per_stage = |bytes: &dyn Fn(&timeprest_nn::Block) -> u64| -> Vec<u64> {
        split
            .iter()
            .map(|range| blocks[range.clone()].iter().map(bytes).sum())
            .collect()
    };
    let model = MemoryModel {
        parameter_bytes: per_stage(&|b| b.param_count() as u64 * VALUE_BYTES),
        activation_bytes_per_microbatch: per_stage(&|b| {
            (b.input_features() + b.output_features()) as u64 * samples * VALUE_BYTES
        }),
        recomputed_inputs: config.pipeline.recompute_activations.then(|| {
            split
                .iter()
                .map(|range| blocks[range.start].input_features() as u64 * samples * VALUE_BYTES)
                .collect()
        }),
        optimizer_bytes_per_parameter_byte: 0.0,
    };
    let weight_sets = versions.peak_weight_sets();
    let memory = model
        .estimate(&schedule, &weight_sets)
        .map_err(|e| failed(e.to_string()))?;
    let in_flight = max_microbatches_in_flight(&schedule);
    Ok(versions
        .stages
        .iter()
        .enumerate()
        .map(|(stage, stage_plan)| {
            let (count, total) = stage_plan
                .backwards()
                .fold((0u64, 0u64), |(n, sum), b| (n + 1, sum + b.staleness));
            StagePrediction {
                weight_sets: weight_sets[stage],
                weight_bytes: memory[stage].weights,
                microbatches_in_flight: in_flight[stage],
                activation_bytes: memory[stage].activations,
                mean_staleness: total as f64 / count.max(1) as f64,
            }
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use timeprest_policy::PolicyKind;
    use timeprest_schedule::ScheduleKind;

    use super::*;

    fn digits(policy: PolicyKind, microbatches: u32) -> TrainConfig {
        {
            let mut config = TrainConfig::default();
            config.pipeline.policy = policy;
            config.pipeline.num_microbatches = microbatches;
            config.data.limit_train = Some(320);
            config
        }
    }

    #[test]
    fn weight_bytes_are_parameters_times_weight_sets() {
        // Digits MLP 64 → 128 → 64 → 10 on 3 stages: one linear block per stage.
        let single_copy = [64 * 128 + 128, 128 * 64 + 64, 64 * 10 + 10];
        for policy in [PolicyKind::VTimeprest, PolicyKind::Pipedream] {
            let microbatches = if policy.default_schedule() == ScheduleKind::OneFOneB {
                1
            } else {
                3
            };
            let prediction = predict("x", &digits(policy, microbatches)).unwrap();
            assert_eq!(prediction.len(), 3);
            for (stage, p) in prediction.iter().enumerate() {
                assert_eq!(
                    p.weight_bytes,
                    single_copy[stage] * 4 * u64::from(p.weight_sets)
                );
            }
        }
    }

    #[test]
    fn a_split_by_hand_moves_the_parameters_between_stages() {
        let config = {
            let mut config = digits(PolicyKind::VTimeprest, 3);
            config.pipeline.num_stages = 2;
            config.pipeline.split = vec![2];
            config
        };
        let prediction = predict("v-timeprest", &config).unwrap();
        let bytes: Vec<u64> = prediction.iter().map(|p| p.weight_bytes).collect();
        assert_eq!(
            bytes,
            [(64 * 128 + 128 + 128 * 64 + 64) * 4, (64 * 10 + 10) * 4]
        );
    }

    #[test]
    fn stashing_keeps_more_versions_than_v_timeprest() {
        let stash = predict("pipedream", &digits(PolicyKind::Pipedream, 1)).unwrap();
        let latest = predict("v-timeprest", &digits(PolicyKind::VTimeprest, 3)).unwrap();
        assert!(latest.iter().all(|p| p.weight_sets == 1));
        assert_eq!(
            stash[0].weight_sets, 3,
            "PipeDream stashes W − s versions at stage 0"
        );
        assert!(stash[0].mean_staleness > 0.0);
        assert!(latest.iter().all(|p| p.activation_bytes > 0));
    }

    #[test]
    fn an_unloadable_data_set_names_the_variant() {
        let config = {
            let mut config = TrainConfig::default();
            config.data.dataset = "mnist".into();
            config.data.data_dir = Some("/nonexistent/timeprest".into());
            config
        };
        let error = predict("gpipe:lr=1", &config).unwrap_err();
        assert!(error.to_string().contains("gpipe:lr=1"), "{error}");
    }
}
