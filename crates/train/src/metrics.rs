//! Per-epoch metrics, computed from the runtime's event log and the evaluation.
//!
//! Everything here is measured: the staleness d each backward actually saw, the weight sets each
//! stage actually stored, how long each stage was busy. The simulator predicts the same figures
//! from the same plan, which is how predictions and runs are compared; each epoch also records
//! what the simulator predicts for its own schedule from its own measured action durations
//! ([`EpochMetrics::simulated_seconds`]), so the cost model's fidelity is checked on every run.

use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Serialize};
use timeprest_runtime::{Event, RunReport};
use timeprest_schedule::{Action, ActionKind, CostModel, Schedule, simulate_costs};

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
    /// Most bytes of activations held for backwards at once.
    #[serde(default)]
    pub peak_activation_bytes: u64,
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
    /// The epoch's makespan as the cost-model simulator predicts it for the epoch's schedule,
    /// with each stage's mean measured action durations ([`MeasuredCosts`], receive waits
    /// removed) and no transfer time. `epoch_seconds / simulated_seconds − 1` is the share of
    /// the epoch the schedule and the compute times do not explain: message latency, two
    /// stages competing for memory, jitter (lines written before this field existed read as 0).
    #[serde(default)]
    pub simulated_seconds: f64,
    /// Per-stage measurements.
    pub stages: Vec<StageMetrics>,
}

/// Each stage's mean measured duration per action kind in one epoch: the [`CostModel`] with
/// which the simulator replays a run ([`EpochMetrics::simulated_seconds`]). Transfers cost 0.
#[derive(Clone, Debug, PartialEq)]
pub struct MeasuredCosts {
    /// Mean forward seconds per stage.
    pub forward: Vec<f64>,
    /// Mean whole-mini-batch backward seconds per stage.
    pub backward_minibatch: Vec<f64>,
    /// Mean per-micro-batch backward seconds per stage.
    pub backward_microbatch: Vec<f64>,
    /// Mean update seconds per stage.
    pub update: Vec<f64>,
}

impl MeasuredCosts {
    /// The means of `events` (one list per stage). With `without_wait`, an action counts from
    /// no earlier than the end of the neighbour's action whose message it consumes (the time a
    /// stage waited for its input is not compute); without, from its logged start. Both agree
    /// while the runtime logs `start` after the inputs arrived.
    pub fn from_events(events: &[Vec<Event>], without_wait: bool) -> Self {
        let num_stages = events.len() as u32;
        let end_of: HashMap<Action, f64> =
            events.iter().flatten().map(|e| (e.action, e.end)).collect();
        let mut sums = vec![[(0.0f64, 0u32); 4]; events.len()];
        for (stage, stage_events) in events.iter().enumerate() {
            for event in stage_events {
                let mut start = event.start;
                if without_wait
                    && let Some(end) =
                        message_source(event.action, num_stages).and_then(|a| end_of.get(&a))
                {
                    start = start.max(*end);
                }
                let kind = match event.action.kind {
                    ActionKind::Forward(_) => 0,
                    ActionKind::BackwardMinibatch(_) => 1,
                    ActionKind::BackwardMicrobatch(_) => 2,
                    ActionKind::Update(_) => 3,
                };
                sums[stage][kind].0 += (event.end - start).max(0.0);
                sums[stage][kind].1 += 1;
            }
        }
        let mean = |kind: usize| -> Vec<f64> {
            sums.iter()
                .map(|s| s[kind].0 / f64::from(s[kind].1.max(1)))
                .collect()
        };
        Self {
            forward: mean(0),
            backward_minibatch: mean(1),
            backward_microbatch: mean(2),
            update: mean(3),
        }
    }
}

impl CostModel for MeasuredCosts {
    fn forward(&self, stage: u32) -> f64 {
        self.forward[stage as usize]
    }
    fn backward_minibatch(&self, stage: u32, _num_microbatches: u32) -> f64 {
        self.backward_minibatch[stage as usize]
    }
    fn backward_microbatch(&self, stage: u32) -> f64 {
        self.backward_microbatch[stage as usize]
    }
    fn update(&self, stage: u32) -> f64 {
        self.update[stage as usize]
    }
    fn transfer(&self, _from_stage: u32, _to_stage: u32) -> f64 {
        0.0
    }
}

/// The neighbour's action whose message `action` consumes (the last one, for a whole-mini-batch
/// backward), if any.
fn message_source(action: Action, num_stages: u32) -> Option<Action> {
    let last = num_stages.checked_sub(1)?;
    let stage = match action.kind {
        ActionKind::Forward(_) if action.stage > 0 => action.stage - 1,
        ActionKind::BackwardMinibatch(_) | ActionKind::BackwardMicrobatch(_)
            if action.stage < last =>
        {
            action.stage + 1
        }
        _ => return None,
    };
    Some(Action { stage, ..action })
}

/// The makespan the simulator predicts for `schedule` with the costs measured in `report`
/// ([`EpochMetrics::simulated_seconds`]).
pub fn simulated_seconds(schedule: &Schedule, report: &RunReport) -> f64 {
    let costs = MeasuredCosts::from_events(&report.events, true);
    simulate_costs(schedule, &costs)
        .unwrap_or_else(|error| panic!("the schedule of a finished epoch must simulate: {error}"))
        .makespan()
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
                peak_activation_bytes: events.iter().map(|e| e.activation_bytes).max().unwrap_or(0),
                busy_seconds,
                utilisation: busy_seconds / report.seconds.max(f64::MIN_POSITIVE),
                bytes_sent: events.iter().map(|e| e.bytes_sent).sum(),
            }
        })
        .collect()
}

/// The metrics of epoch `epoch` (from 1), run on `schedule` whose last update used learning
/// rate `lr` (the schedule's rate; `--lr` is `configured_lr`, which a divergence's advice
/// divides), from its run report, with the test loss and accuracy that `evaluate` computes. A training or test
/// loss that is not finite is [`TrainError::Diverged`] (naming the first mini-batch whose
/// training loss was not finite), so a diverged epoch never reaches the metrics or a
/// checkpoint.
pub fn epoch_metrics(
    epoch: u32,
    schedule: &Schedule,
    (configured_lr, lr): (f64, f64),
    report: &RunReport,
    evaluate: impl FnOnce() -> Result<(f64, f64), TrainError>,
) -> Result<EpochMetrics, TrainError> {
    let diverged = |loss, value| TrainError::Diverged {
        epoch,
        loss,
        value,
        lr: configured_lr,
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
        num_minibatches: schedule.config.num_minibatches,
        lr,
        simulated_seconds: simulated_seconds(schedule, report),
        stages: stage_metrics(report),
    })
}

#[cfg(test)]
mod tests {
    use timeprest_runtime::LossStats;
    use timeprest_schedule::{MicrobatchId, ScheduleConfig, ScheduleKind, generate};

    use super::*;

    /// The one-stage schedule of 3 mini-batches that [`report`] ran.
    fn schedule() -> Schedule {
        generate(ScheduleKind::Gpipe, &ScheduleConfig::new(1, 1, 3)).unwrap()
    }

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
            events: vec![Vec::new()],
            losses,
            seconds: 1.0,
        }
    }

    #[test]
    fn a_nan_training_loss_names_its_mini_batch_and_skips_the_evaluation() {
        let error = epoch_metrics(4, &schedule(), (0.1, 0.1), &report(Some(1)), || {
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
        let error = epoch_metrics(4, &schedule(), (0.1, 0.1), &report(None), || {
            Ok((f64::NAN, 0.1))
        })
        .unwrap_err();
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
        let metrics =
            epoch_metrics(4, &schedule(), (0.1, 0.1), &report(None), || Ok((0.5, 0.9))).unwrap();
        assert_eq!((metrics.train_loss, metrics.lr), (0.5, 0.1));
    }

    /// Events whose times are those the simulator gives each action of `timeline`, each
    /// stage's inputs arriving `wait` seconds before it starts (so a logged start before
    /// the sender's end is a wait that [`MeasuredCosts`] must not count).
    fn events_of(timeline: &timeprest_schedule::Timeline, wait: f64) -> Vec<Vec<Event>> {
        timeline
            .stages
            .iter()
            .map(|actions| {
                actions
                    .iter()
                    .map(|timed| Event {
                        action: timed.action,
                        start: (timed.start - wait).max(0.0),
                        end: timed.end,
                        live: 0,
                        recipes: Vec::new(),
                        staleness: Vec::new(),
                        bytes_sent: 0,
                        stored_weight_bytes: 0,
                        stored_weight_sets: 1,
                        activation_bytes: 0,
                    })
                    .collect()
            })
            .collect()
    }

    #[test]
    fn measured_costs_replay_the_run_they_were_measured_on() {
        // Stage 1 forwards faster and stage 0 backwards faster than the other stage: each
        // waits for its neighbour's message on a GPipe schedule.
        let costs = MeasuredCosts {
            forward: vec![1.0, 0.5],
            backward_minibatch: vec![0.0, 0.0],
            backward_microbatch: vec![2.5, 4.0],
            update: vec![0.5, 0.25],
        };
        for kind in [ScheduleKind::Gpipe, ScheduleKind::OneFOneBFlush] {
            let schedule = generate(kind, &ScheduleConfig::new(2, 3, 4)).unwrap();
            let timeline = simulate_costs(&schedule, &costs).unwrap();
            let exact = events_of(&timeline, 0.0);
            assert_eq!(MeasuredCosts::from_events(&exact, false), costs, "{kind}");
            assert_eq!(MeasuredCosts::from_events(&exact, true), costs, "{kind}");
            let report = RunReport {
                events: exact,
                losses: Vec::new(),
                seconds: timeline.makespan(),
            };
            assert_eq!(simulated_seconds(&schedule, &report), timeline.makespan());
        }
        // Starts logged a second early, as if the wait for the message were compute: removed
        // again for the actions that consume a neighbour's message.
        let schedule = generate(ScheduleKind::Gpipe, &ScheduleConfig::new(2, 3, 4)).unwrap();
        let early = events_of(&simulate_costs(&schedule, &costs).unwrap(), 1.0);
        let waited = MeasuredCosts::from_events(&early, true);
        assert_eq!(waited.forward[1], costs.forward[1]);
        assert_eq!(waited.backward_microbatch[0], costs.backward_microbatch[0]);
        let raw = MeasuredCosts::from_events(&early, false);
        assert!(raw.forward[1] > costs.forward[1], "{raw:?}");
    }
}
