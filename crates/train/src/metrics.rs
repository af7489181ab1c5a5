//! Per-epoch metrics, computed from the runtime's event log and the evaluation.
//!
//! Everything here is measured: the staleness d each backward actually saw, the weight sets each
//! stage actually stored, how long each stage was busy. The simulator predicts the same figures
//! from the same plan, which is how predictions and runs are compared.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use timeprest_runtime::RunReport;

use crate::error::{DivergedLoss, TrainError};

/// What one stage did during an epoch.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StageMetrics {
    /// The stage (0-based).
    pub stage: u32,
    /// Measured staleness: how many backward micro-batches saw each d.
    pub staleness: BTreeMap<u64, u64>,
    /// Mean staleness d over the epoch's backward micro-batches.
    pub mean_staleness: f64,
    /// Most weight sets stored at once.
    pub peak_weight_sets: u32,
    /// Most weight bytes stored at once.
    pub peak_weight_bytes: u64,
    /// Seconds spent computing.
    pub busy_seconds: f64,
    /// busy_seconds / epoch wall time.
    pub utilisation: f64,
    /// Bytes sent to neighbouring stages.
    pub bytes_sent: u64,
}

/// One line of `metrics.jsonl`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EpochMetrics {
    /// The epoch, from 1.
    pub epoch: u32,
    /// Mean training loss over the epoch's samples (computed during the pipelined forwards;
    /// over predicted tokens for a language model).
    pub train_loss: f64,
    /// Training accuracy over the epoch's samples (per token for a language model).
    pub train_accuracy: f64,
    /// Mean test loss after the epoch.
    pub test_loss: f64,
    /// Test accuracy after the epoch.
    pub test_accuracy: f64,
    /// Wall-clock seconds of the pipelined epoch (without evaluation).
    pub epoch_seconds: f64,
    /// Training samples per second (predicted tokens per second for a language model: the
    /// targets the last stage scores).
    pub samples_per_second: f64,
    /// Mini-batches (= updates per stage) in the epoch.
    pub num_minibatches: u32,
    /// The learning rate of the epoch's updates (it may change when a run is resumed; lines
    /// written before this field existed read as 0).
    #[serde(default)]
    pub lr: f64,
    /// Per-stage measurements.
    pub stages: Vec<StageMetrics>,
}

/// Training loss, accuracy and number of samples (targets: tokens for a language model) of a
/// run.
pub fn training_stats(report: &RunReport) -> (f64, f64, u64) {
    let (loss, correct, count) = report.losses.iter().fold((0.0, 0, 0), |acc, (_, s)| {
        (acc.0 + s.loss_sum, acc.1 + s.correct, acc.2 + s.count)
    });
    let denominator = count.max(1) as f64;
    (loss / denominator, correct as f64 / denominator, count)
}

/// Per-stage measurements of a run.
pub fn stage_metrics(report: &RunReport) -> Vec<StageMetrics> {
    report
        .events
        .iter()
        .enumerate()
        .map(|(stage, events)| {
            let mut staleness = BTreeMap::new();
            for d in events.iter().flat_map(|e| e.staleness.iter()) {
                *staleness.entry(*d).or_insert(0) += 1;
            }
            let count: u64 = staleness.values().sum();
            let total: u64 = staleness.iter().map(|(d, n)| d * n).sum();
            let busy_seconds: f64 = events.iter().map(|e| e.end - e.start).sum();
            StageMetrics {
                stage: stage as u32,
                mean_staleness: total as f64 / count.max(1) as f64,
                staleness,
                peak_weight_sets: events
                    .iter()
                    .map(|e| e.stored_weight_sets)
                    .max()
                    .unwrap_or(1),
                peak_weight_bytes: events
                    .iter()
                    .map(|e| e.stored_weight_bytes)
                    .max()
                    .unwrap_or(0),
                busy_seconds,
                utilisation: busy_seconds / report.seconds.max(f64::MIN_POSITIVE),
                bytes_sent: events.iter().map(|e| e.bytes_sent).sum(),
            }
        })
        .collect()
}

/// The metrics of epoch `epoch` (from 1), run with learning rate `lr`, from its run report,
/// with the test loss and accuracy that `evaluate` computes. A training or test loss that is
/// not finite is [`TrainError::Diverged`] (naming the first mini-batch whose training loss was
/// not finite), so a diverged epoch never reaches the metrics or a checkpoint.
pub fn epoch_metrics(
    epoch: u32,
    num_minibatches: u32,
    lr: f64,
    report: &RunReport,
    evaluate: impl FnOnce() -> Result<(f64, f64), TrainError>,
) -> Result<EpochMetrics, TrainError> {
    let diverged = |loss, value| TrainError::Diverged {
        epoch,
        loss,
        value,
        lr,
        last_checkpoint: None,
    };
    let (train_loss, train_accuracy, samples) = training_stats(report);
    if !train_loss.is_finite() {
        let step = report
            .losses
            .iter()
            .filter(|(_, stats)| !stats.loss_sum.is_finite())
            .map(|(microbatch, _)| microbatch.minibatch + 1)
            .min()
            .unwrap_or(1);
        return Err(diverged(DivergedLoss::Training { step }, train_loss));
    }
    let (test_loss, test_accuracy) = evaluate()?;
    if !test_loss.is_finite() {
        return Err(diverged(DivergedLoss::Test, test_loss));
    }
    Ok(EpochMetrics {
        epoch,
        train_loss,
        train_accuracy,
        test_loss,
        test_accuracy,
        epoch_seconds: report.seconds,
        samples_per_second: samples as f64 / report.seconds.max(f64::MIN_POSITIVE),
        num_minibatches,
        lr,
        stages: stage_metrics(report),
    })
}

#[cfg(test)]
mod tests {
    use timeprest_runtime::LossStats;
    use timeprest_schedule::MicrobatchId;

    use super::*;

    /// A report of one epoch of 3 mini-batches whose mini-batch `bad` (0-based) has a NaN loss.
    fn report(bad: Option<u32>) -> RunReport {
        let losses = (0..3)
            .map(|minibatch| {
                let loss_sum = if Some(minibatch) == bad {
                    f64::NAN
                } else {
                    2.0
                };
                let stats = LossStats {
                    loss_sum,
                    correct: 1,
                    count: 4,
                };
                (MicrobatchId::new(minibatch, 0), stats)
            })
            .collect();
        RunReport {
            events: Vec::new(),
            losses,
            seconds: 1.0,
        }
    }

    #[test]
    fn a_nan_training_loss_names_its_mini_batch_and_skips_the_evaluation() {
        let error = epoch_metrics(4, 3, 0.1, &report(Some(1)), || {
            panic!("a diverged epoch is not evaluated")
        })
        .unwrap_err();
        assert!(
            matches!(
                error,
                TrainError::Diverged {
                    epoch: 4,
                    loss: DivergedLoss::Training { step: 2 },
                    ..
                }
            ),
            "{error}"
        );
    }

    #[test]
    fn a_nan_test_loss_is_a_divergence_too() {
        let error = epoch_metrics(4, 3, 0.1, &report(None), || Ok((f64::NAN, 0.1))).unwrap_err();
        assert!(
            matches!(
                error,
                TrainError::Diverged {
                    loss: DivergedLoss::Test,
                    lr: 0.1,
                    ..
                }
            ),
            "{error}"
        );
        let metrics = epoch_metrics(4, 3, 0.1, &report(None), || Ok((0.5, 0.9))).unwrap();
        assert_eq!((metrics.train_loss, metrics.lr), (0.5, 0.1));
    }
}
