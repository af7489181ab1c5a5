//! A bookkeeping memory model: weights × versions held + optimizer state + activations.
//!
//! Peak memory per stage is dominated by three terms (`docs/algorithms.md` §5): the weight
//! versions the stage holds (stashing and vertical sync keep old versions alive), the optimizer
//! state of the live weights, and the activations of the micro-batches whose forward is done and
//! whose backward is not. The versions held depend on the weight policy, which another crate
//! computes, so they are an input here; the activations depend only on the schedule and are
//! computed by [`max_microbatches_in_flight`]. Keeping the model this simple makes the
//! comparison between families transparent and checkable against a measured run.

use serde::{Deserialize, Serialize};

use crate::action::ActionKind;
use crate::error::ScheduleError;
use crate::schedule::Schedule;

/// Per stage, the most micro-batches whose forward is done and whose backward is not, over the
/// stage's sequence. A mini-batch backward releases all its micro-batches at once.
///
/// For nF1B with W = 4, N = 3 this is `[9, 7, 5, 3]` (`docs/algorithms.md` §5.2). For 1F1B
/// schedules, a "micro-batch" is a whole (normalised) mini-batch.
pub fn max_microbatches_in_flight(schedule: &Schedule) -> Vec<u32> {
    let mut done_forwards = vec![0u32; schedule.config.num_minibatches as usize];
    schedule
        .stages
        .iter()
        .map(|row| {
            done_forwards.fill(0);
            let (mut live, mut peak) = (0u32, 0u32);
            for scheduled in row {
                match scheduled.action.kind {
                    ActionKind::Forward(mb) => {
                        live += 1;
                        if let Some(count) = done_forwards.get_mut(mb.minibatch as usize) {
                            *count += 1;
                        }
                    }
                    ActionKind::BackwardMinibatch(i) => {
                        let released = done_forwards.get_mut(i as usize).map_or(0, std::mem::take);
                        live = live.saturating_sub(released);
                    }
                    ActionKind::BackwardMicrobatch(mb) => {
                        if let Some(count) = done_forwards.get_mut(mb.minibatch as usize) {
                            *count = count.saturating_sub(1);
                        }
                        live = live.saturating_sub(1);
                    }
                    ActionKind::Update(_) => {}
                }
                peak = peak.max(live);
            }
            peak
        })
        .collect()
}

/// Sizes that determine a stage's memory.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MemoryModel {
    /// Bytes of one copy of each stage's parameters.
    pub parameter_bytes: Vec<u64>,
    /// Bytes of saved activations for one micro-batch at each stage.
    pub activation_bytes_per_microbatch: Vec<u64>,
    /// `Some(bytes of one micro-batch's stage input, per stage)` when stages recompute their
    /// activations: they keep only the inputs of the micro-batches in flight, plus the full
    /// activations of the micro-batches one backward covers while it runs.
    #[serde(default)]
    pub recomputed_inputs: Option<Vec<u64>>,
    /// Optimizer state bytes per parameter byte (0 for plain SGD, 1 for momentum, 2 for Adam).
    pub optimizer_bytes_per_parameter_byte: f64,
}

/// One stage's predicted memory, by term.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StageMemory {
    /// Parameters × weight versions held.
    pub weights: u64,
    /// Optimizer state of the live weights.
    pub optimizer: u64,
    /// Activations × micro-batches in flight.
    pub activations: u64,
}

impl StageMemory {
    /// The sum of the terms.
    pub fn total(&self) -> u64 {
        self.weights + self.optimizer + self.activations
    }
}

impl MemoryModel {
    /// Per-stage memory given the weight versions each stage holds at peak, the micro-batches
    /// in flight at peak (e.g. from [`max_microbatches_in_flight`]) and the micro-batches one
    /// backward covers (1, or N for a whole-mini-batch backward).
    ///
    /// # Errors
    /// [`ScheduleError::StageCountMismatch`] when the inputs do not all have one entry per stage.
    pub fn per_stage(
        &self,
        weight_versions: &[u32],
        microbatches_in_flight: &[u32],
        microbatches_per_backward: u32,
    ) -> Result<Vec<StageMemory>, ScheduleError> {
        let num_stages = self.parameter_bytes.len();
        let check = |what, len: usize| {
            if len == num_stages {
                Ok(())
            } else {
                Err(ScheduleError::StageCountMismatch {
                    what,
                    len,
                    num_stages: num_stages as u32,
                })
            }
        };
        check(
            "activation_bytes_per_microbatch",
            self.activation_bytes_per_microbatch.len(),
        )?;
        check("weight_versions", weight_versions.len())?;
        check("microbatches_in_flight", microbatches_in_flight.len())?;
        if let Some(inputs) = &self.recomputed_inputs {
            check("recomputed_inputs", inputs.len())?;
        }
        Ok((0..num_stages)
            .map(|s| StageMemory {
                weights: self.parameter_bytes[s] * u64::from(weight_versions[s]),
                optimizer: (self.parameter_bytes[s] as f64
                    * self.optimizer_bytes_per_parameter_byte)
                    .round() as u64,
                activations: match &self.recomputed_inputs {
                    None => {
                        self.activation_bytes_per_microbatch[s]
                            * u64::from(microbatches_in_flight[s])
                    }
                    Some(inputs) => {
                        inputs[s] * u64::from(microbatches_in_flight[s])
                            + self.activation_bytes_per_microbatch[s]
                                * u64::from(
                                    microbatches_per_backward.min(microbatches_in_flight[s]),
                                )
                    }
                },
            })
            .collect())
    }

    /// Per-stage memory of `schedule`, with the versions held per stage given by the policy.
    ///
    /// # Errors
    /// [`ScheduleError::StageCountMismatch`] when the model or `weight_versions` do not have one
    /// entry per stage of the schedule.
    pub fn estimate(
        &self,
        schedule: &Schedule,
        weight_versions: &[u32],
    ) -> Result<Vec<StageMemory>, ScheduleError> {
        let num_stages = schedule.config.num_stages;
        if self.parameter_bytes.len() != num_stages as usize {
            let len = self.parameter_bytes.len();
            return Err(ScheduleError::StageCountMismatch {
                what: "parameter_bytes",
                len,
                num_stages,
            });
        }
        self.per_stage(
            weight_versions,
            &max_microbatches_in_flight(schedule),
            (schedule.kind).microbatches_per_backward(schedule.config.num_microbatches),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::generate::generate;
    use crate::schedule::{ScheduleConfig, ScheduleKind};

    #[test]
    fn nf1b_w4_n3_holds_the_activations_of_9_7_5_3_microbatches() {
        let schedule = generate(ScheduleKind::Nf1b, &ScheduleConfig::new(4, 3, 20)).unwrap();
        assert_eq!(max_microbatches_in_flight(&schedule), [9, 7, 5, 3]);
    }

    #[test]
    fn gpipe_holds_n_and_one_f_one_b_flush_holds_at_most_w_minus_s() {
        let gpipe = generate(ScheduleKind::Gpipe, &ScheduleConfig::new(4, 6, 3)).unwrap();
        assert_eq!(max_microbatches_in_flight(&gpipe), [6, 6, 6, 6]);
        let flush = generate(ScheduleKind::OneFOneBFlush, &ScheduleConfig::new(4, 6, 3)).unwrap();
        assert_eq!(max_microbatches_in_flight(&flush), [4, 3, 2, 1]);
    }

    #[test]
    fn memory_adds_versions_optimizer_and_activations() {
        let schedule = generate(ScheduleKind::Nf1b, &ScheduleConfig::new(2, 3, 10)).unwrap();
        let model = MemoryModel {
            parameter_bytes: vec![100, 10],
            activation_bytes_per_microbatch: vec![7, 5],
            recomputed_inputs: None,
            optimizer_bytes_per_parameter_byte: 1.0,
        };
        let memory = model.estimate(&schedule, &[1, 2]).unwrap();
        let in_flight = max_microbatches_in_flight(&schedule);
        assert_eq!(
            memory[0],
            StageMemory {
                weights: 100,
                optimizer: 100,
                activations: 7 * in_flight[0] as u64
            }
        );
        assert_eq!(memory[1].weights, 20);
        // Recomputing: inputs of every micro-batch in flight, full activations of the N = 3
        // micro-batches one nF1B backward covers.
        let recomputing = MemoryModel {
            recomputed_inputs: Some(vec![2, 1]),
            ..model.clone()
        };
        let memory = recomputing.estimate(&schedule, &[1, 2]).unwrap();
        assert_eq!(memory[0].activations, 2 * in_flight[0] as u64 + 7 * 3);
        let err = model.estimate(&schedule, &[1]).unwrap_err();
        assert!(
            err.to_string()
                .contains("weight_versions has 1 entries but the schedule has 2 stages")
        );
    }
}
