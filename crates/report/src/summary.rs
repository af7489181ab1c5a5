//! Statistics over seeds: what the report's tables, summary paragraph and plots show.
//!
//! Everything a reader compares is computed here once, from the loaded runs, so the markdown and
//! the plots cannot disagree. Conventions: the final accuracy counts completed runs only (a
//! diverged run has no final accuracy); every other figure uses every epoch that was measured,
//! diverged runs included, because those epochs really ran; the standard deviation is the
//! sample standard deviation (n − 1), 0 for a single seed; the time to the target is the
//! pipelined training time (the sum of `epoch_seconds`) up to the first epoch at or above it,
//! averaged over the runs that reached it, and the "fastest" policy is the first of
//! [`Summary::fastest_to_target`]; a curve's band spans the lowest to the highest run.

use std::collections::BTreeMap;

use timeprest_schedule::ScheduleKind;

use crate::predict::StagePrediction;
use crate::record::{Loaded, Outcome, Run, Variant};

/// Without `--target-accuracy`, the target is this fraction of the best mean final accuracy.
pub const DEFAULT_TARGET_FRACTION: f64 = 0.9;

/// A mean with its sample standard deviation.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct MeanSd {
    /// The mean.
    pub mean: f64,
    /// The sample standard deviation (0 for one value).
    pub sd: f64,
}

impl MeanSd {
    /// The mean and sample standard deviation of `values`; `None` when empty.
    pub fn of(values: &[f64]) -> Option<Self> {
        let n = values.len();
        if n == 0 {
            return None;
        }
        let mean = values.iter().sum::<f64>() / n as f64;
        let sd = if n > 1 {
            (values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1) as f64).sqrt()
        } else {
            0.0
        };
        Some(Self { mean, sd })
    }
}

/// How the runs of a variant reached the target accuracy.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Reach {
    /// Runs that reached it.
    pub reached: usize,
    /// Runs in all.
    pub of: usize,
    /// Mean epochs to reach it, over the runs that did.
    pub epochs: f64,
    /// Mean seconds of pipelined training to reach it, over the runs that did.
    pub seconds: f64,
}

impl Reach {
    /// The fraction of the runs that reached the target.
    pub fn share(&self) -> f64 {
        self.reached as f64 / self.of.max(1) as f64
    }
}

/// One stage of a variant, over all its measured epochs and seeds.
#[derive(Clone, Debug, PartialEq)]
pub struct StageSummary {
    /// Most weight sets stored at once.
    pub peak_weight_sets: u32,
    /// Most weight bytes stored at once.
    pub peak_weight_bytes: u64,
    /// Most bytes of activations held for backwards at once.
    pub peak_activation_bytes: u64,
    /// How many backward micro-batches saw each staleness d.
    pub staleness: BTreeMap<u64, u64>,
    /// Mean staleness d.
    pub mean_staleness: f64,
}

/// One point of a curve over seeds: the mean of the runs that reached this epoch and the range
/// (lowest to highest) they span, which the plots draw as a band around the mean.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct CurvePoint {
    /// The x value (an epoch, or the mean cumulative seconds to the end of that epoch).
    pub x: f64,
    /// The mean over the runs.
    pub mean: f64,
    /// The lowest value of any run.
    pub low: f64,
    /// The highest value of any run.
    pub high: f64,
}

impl CurvePoint {
    /// The point at `x` over the runs' `values`; `None` when there is none.
    pub fn over_seeds(x: f64, values: &[f64]) -> Option<Self> {
        let mean = MeanSd::of(values)?.mean;
        let low = values.iter().copied().fold(f64::INFINITY, f64::min);
        let high = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        Some(Self { x, mean, low, high })
    }
}

/// A variant's curves over seeds, one point per epoch (over the runs that reached the epoch).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Curves {
    /// Runs with at least one measured epoch: a band of their spread means something from 2.
    pub seeds: usize,
    /// Test accuracy by epoch.
    pub accuracy_by_epoch: Vec<CurvePoint>,
    /// Test accuracy by cumulative seconds of pipelined training.
    pub accuracy_by_time: Vec<CurvePoint>,
    /// Training loss by epoch.
    pub loss_by_epoch: Vec<CurvePoint>,
}

/// Everything the report says about one policy variant.
#[derive(Clone, Debug, PartialEq)]
pub struct VariantSummary {
    /// The label (`pipedream`, `pipedream:lr=0.01`).
    pub label: String,
    /// Its schedule.
    pub schedule: ScheduleKind,
    /// N as configured.
    pub microbatches: u32,
    /// Seeds of the runs that completed.
    pub completed: Vec<u64>,
    /// (seed, epoch) of the runs that diverged.
    pub diverged: Vec<(u64, u32)>,
    /// Seeds of the runs that did not finish for another reason.
    pub incomplete: Vec<u64>,
    /// Final test accuracy over the completed runs.
    pub final_accuracy: Option<MeanSd>,
    /// Best test accuracy of any epoch of any run.
    pub best_accuracy: Option<f64>,
    /// Reaching the target accuracy.
    pub reach: Option<Reach>,
    /// Mean seconds per epoch.
    pub seconds_per_epoch: Option<f64>,
    /// Mean training samples per second.
    pub samples_per_second: Option<f64>,
    /// Per stage, measured.
    pub stages: Vec<StageSummary>,
    /// Per stage, predicted by the simulator.
    pub prediction: Option<Vec<StagePrediction>>,
    /// Mean curves for the plots.
    pub curves: Curves,
}

impl VariantSummary {
    /// Peak weight bytes summed over stages (measured); `None` when nothing was measured.
    pub fn total_weight_bytes(&self) -> Option<u64> {
        (!self.stages.is_empty()).then(|| self.stages.iter().map(|s| s.peak_weight_bytes).sum())
    }
}

/// The target accuracy and where it came from.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Target {
    /// The accuracy, in [0, 1].
    pub accuracy: f64,
    /// True when given with `--target-accuracy`; false for the default.
    pub given: bool,
}

/// The statistics of a whole comparison.
#[derive(Clone, Debug, PartialEq)]
pub struct Summary {
    /// The target accuracy; `None` when it was not given and no run completed.
    pub target: Option<Target>,
    /// One entry per variant, in the order given.
    pub variants: Vec<VariantSummary>,
}

/// Computes the statistics of `loaded`, with `target_accuracy` (or the default target).
pub fn summarise(loaded: &Loaded, target_accuracy: Option<f64>) -> Summary {
    let groups: Vec<(&Variant, Vec<&Run>)> = loaded
        .variants
        .iter()
        .map(|variant| {
            let runs = loaded
                .runs
                .iter()
                .filter(|r| r.label == variant.label)
                .collect();
            (variant, runs)
        })
        .collect();
    let mut variants: Vec<VariantSummary> = groups
        .iter()
        .map(|(variant, runs)| summarise_variant(variant, runs))
        .collect();
    let target = match target_accuracy {
        Some(accuracy) => Some(Target {
            accuracy,
            given: true,
        }),
        None => variants
            .iter()
            .filter_map(|v| v.final_accuracy.map(|a| a.mean))
            .max_by(f64::total_cmp)
            .map(|best| Target {
                accuracy: DEFAULT_TARGET_FRACTION * best,
                given: false,
            }),
    };
    if let Some(target) = target {
        for (summary, (_, runs)) in variants.iter_mut().zip(&groups) {
            summary.reach = reach(runs, target.accuracy);
        }
    }
    Summary { target, variants }
}

impl Summary {
    /// The variants that reached the target, fastest first — the one order the report's table
    /// and its sentences both follow. A mean time over the seeds that got there says nothing
    /// about the seeds that did not, so reaching it in a larger share of the runs ranks first;
    /// among equal shares, the shorter mean time of pipelined training.
    pub fn fastest_to_target(&self) -> Vec<(&VariantSummary, Reach)> {
        let mut reached: Vec<(&VariantSummary, Reach)> = self
            .variants
            .iter()
            .filter_map(|v| v.reach.map(|r| (v, r)))
            .collect();
        reached.sort_by(|(_, a), (_, b)| {
            b.share()
                .total_cmp(&a.share())
                .then(a.seconds.total_cmp(&b.seconds))
        });
        reached
    }
}

fn summarise_variant(variant: &Variant, runs: &[&Run]) -> VariantSummary {
    let mut summary = VariantSummary {
        label: variant.label.clone(),
        schedule: variant.config.schedule_kind(),
        microbatches: variant.config.pipeline.num_microbatches,
        completed: Vec::new(),
        diverged: Vec::new(),
        incomplete: Vec::new(),
        final_accuracy: None,
        best_accuracy: None,
        reach: None,
        seconds_per_epoch: None,
        samples_per_second: None,
        stages: Vec::new(),
        prediction: variant.prediction.clone(),
        curves: Curves::default(),
    };
    let mut finals = Vec::new();
    for run in runs {
        match &run.outcome {
            Outcome::Completed => {
                summary.completed.push(run.seed);
                finals.extend(run.epochs.last().map(|m| m.test_accuracy));
            }
            Outcome::Diverged { epoch, .. } => summary.diverged.push((run.seed, *epoch)),
            Outcome::Incomplete => summary.incomplete.push(run.seed),
        }
    }
    summary.final_accuracy = MeanSd::of(&finals);
    let epochs = || runs.iter().flat_map(|r| r.epochs.iter());
    summary.best_accuracy = epochs().map(|m| m.test_accuracy).max_by(f64::total_cmp);
    let mean = |values: Vec<f64>| MeanSd::of(&values).map(|m| m.mean);
    summary.seconds_per_epoch = mean(epochs().map(|m| m.epoch_seconds).collect());
    summary.samples_per_second = mean(epochs().map(|m| m.samples_per_second).collect());
    summary.stages = stage_summaries(runs);
    summary.curves = curves(runs);
    summary
}

fn stage_summaries(runs: &[&Run]) -> Vec<StageSummary> {
    let num_stages = runs
        .iter()
        .flat_map(|r| r.epochs.iter())
        .map(|m| m.stages.len())
        .max()
        .unwrap_or(0);
    (0..num_stages)
        .map(|stage| {
            let measured = runs
                .iter()
                .flat_map(|r| r.epochs.iter())
                .filter_map(|m| m.stages.get(stage));
            let mut summary = StageSummary {
                peak_weight_sets: 0,
                peak_weight_bytes: 0,
                peak_activation_bytes: 0,
                staleness: BTreeMap::new(),
                mean_staleness: 0.0,
            };
            for s in measured {
                summary.peak_weight_sets = summary.peak_weight_sets.max(s.peak_weight_sets);
                summary.peak_weight_bytes = summary.peak_weight_bytes.max(s.peak_weight_bytes);
                summary.peak_activation_bytes =
                    summary.peak_activation_bytes.max(s.peak_activation_bytes);
                for (d, n) in &s.staleness {
                    *summary.staleness.entry(*d).or_insert(0) += n;
                }
            }
            let count: u64 = summary.staleness.values().sum();
            let total: u64 = summary.staleness.iter().map(|(d, n)| d * n).sum();
            summary.mean_staleness = total as f64 / count.max(1) as f64;
            summary
        })
        .collect()
}

fn curves(runs: &[&Run]) -> Curves {
    let longest = runs.iter().map(|r| r.epochs.len()).max().unwrap_or(0);
    let mut curves = Curves {
        seeds: runs.iter().filter(|r| !r.epochs.is_empty()).count(),
        ..Curves::default()
    };
    for index in 0..longest {
        let reached: Vec<&Run> = runs
            .iter()
            .copied()
            .filter(|r| r.epochs.len() > index)
            .collect();
        let values = |value: &dyn Fn(&Run) -> f64| -> Vec<f64> {
            reached.iter().map(|r| value(r)).collect()
        };
        let epoch = (index + 1) as f64;
        let accuracy = values(&|r| r.epochs[index].test_accuracy);
        let seconds = values(&|r| r.epochs[..=index].iter().map(|m| m.epoch_seconds).sum());
        let mean_seconds = MeanSd::of(&seconds).map_or(0.0, |m| m.mean);
        let loss = values(&|r| r.epochs[index].train_loss);
        let (Some(by_epoch), Some(by_time), Some(loss)) = (
            CurvePoint::over_seeds(epoch, &accuracy),
            CurvePoint::over_seeds(mean_seconds, &accuracy),
            CurvePoint::over_seeds(epoch, &loss),
        ) else {
            unreachable!("the longest run reached every epoch up to its length");
        };
        curves.accuracy_by_epoch.push(by_epoch);
        curves.accuracy_by_time.push(by_time);
        curves.loss_by_epoch.push(loss);
    }
    curves
}

fn reach(runs: &[&Run], target: f64) -> Option<Reach> {
    let hits: Vec<(f64, f64)> = runs
        .iter()
        .filter_map(|run| {
            let index = run.epochs.iter().position(|m| m.test_accuracy >= target)?;
            let seconds = run.epochs[..=index].iter().map(|m| m.epoch_seconds).sum();
            Some(((index + 1) as f64, seconds))
        })
        .collect();
    let n = hits.len() as f64;
    (!hits.is_empty()).then(|| Reach {
        reached: hits.len(),
        of: runs.len(),
        epochs: hits.iter().map(|h| h.0).sum::<f64>() / n,
        seconds: hits.iter().map(|h| h.1).sum::<f64>() / n,
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use timeprest_policy::PolicyKind;
    use timeprest_train::{EpochMetrics, StageMetrics, TrainConfig};

    use super::*;

    /// An epoch with test accuracy `accuracy`, `seconds` long, on two stages.
    pub(crate) fn epoch(epoch: u32, accuracy: f64, seconds: f64) -> EpochMetrics {
        let stage = |stage: u32, staleness: &[(u64, u64)], sets: u32| StageMetrics {
            stage,
            staleness: staleness.iter().copied().collect(),
            mean_staleness: 0.0,
            peak_weight_sets: sets,
            peak_weight_bytes: 1000 * u64::from(sets),
            peak_activation_bytes: 0,
            busy_seconds: seconds / 2.0,
            utilisation: 0.5,
            bytes_sent: 10,
        };
        EpochMetrics {
            epoch,
            train_loss: 1.0 / f64::from(epoch),
            train_accuracy: accuracy,
            test_loss: 1.0,
            test_accuracy: accuracy,
            epoch_seconds: seconds,
            samples_per_second: 100.0 / seconds,
            num_minibatches: 10,
            lr: 0.05,
            simulated_seconds: 0.0,
            stages: vec![stage(0, &[(1, 6)], 2), stage(1, &[(0, 6)], 1)],
        }
    }

    pub(crate) fn run(label: &str, seed: u64, accuracies: &[f64], outcome: Outcome) -> Run {
        Run {
            label: label.into(),
            seed,
            config: TrainConfig::default(),
            epochs: accuracies
                .iter()
                .enumerate()
                .map(|(i, a)| epoch(i as u32 + 1, *a, 2.0))
                .collect(),
            outcome,
            trace: None,
        }
    }

    pub(crate) fn variant(label: &str, policy: PolicyKind) -> Variant {
        Variant {
            label: label.into(),
            config: {
                let mut config = TrainConfig::default();
                config.pipeline.policy = policy;
                config
            },
            prediction: None,
        }
    }

    /// Two variants: `fast` (two completed seeds) and `wild` (one completed, one diverged).
    pub(crate) fn sample() -> Loaded {
        let diverged = Outcome::Diverged {
            epoch: 2,
            message: "training diverged".into(),
        };
        Loaded {
            manifest: None,
            variants: vec![
                variant("fast", PolicyKind::Gpipe),
                variant("wild", PolicyKind::Pipedream),
            ],
            runs: vec![
                run("fast", 1, &[0.5, 0.8, 0.9], Outcome::Completed),
                run("fast", 2, &[0.6, 0.7, 0.7], Outcome::Completed),
                run("wild", 1, &[0.2, 0.3, 0.4], Outcome::Completed),
                run("wild", 2, &[0.1], diverged),
            ],
        }
    }

    #[test]
    fn mean_and_sample_standard_deviation_match_the_textbook() {
        let m = MeanSd::of(&[2.0, 4.0, 4.0, 4.0, 5.0, 5.0, 7.0, 9.0]).unwrap();
        assert_eq!(m.mean, 5.0);
        assert!((m.sd - (32.0f64 / 7.0).sqrt()).abs() < 1e-12);
        assert_eq!(MeanSd::of(&[3.0]).unwrap().sd, 0.0);
        assert!(MeanSd::of(&[]).is_none());
    }

    #[test]
    fn final_accuracy_counts_completed_runs_and_diverged_ones_are_listed() {
        let summary = summarise(&sample(), Some(0.75));
        let fast = &summary.variants[0];
        let final_accuracy = fast.final_accuracy.unwrap();
        assert!((final_accuracy.mean - 0.8).abs() < 1e-12);
        assert_eq!(fast.best_accuracy, Some(0.9));
        let wild = &summary.variants[1];
        assert_eq!(wild.completed, [1]);
        assert_eq!(wild.diverged, [(2, 2)]);
        assert_eq!(wild.final_accuracy.unwrap().mean, 0.4);
    }

    #[test]
    fn time_to_target_averages_the_runs_that_reached_it() {
        let summary = summarise(&sample(), Some(0.75));
        let reach = summary.variants[0].reach.unwrap();
        // Seed 1 reaches 0.8 in epoch 2 (4 s); seed 2 never reaches 0.75.
        assert_eq!((reach.reached, reach.of), (1, 2));
        assert_eq!((reach.epochs, reach.seconds), (2.0, 4.0));
        assert!(summary.variants[1].reach.is_none());
    }

    #[test]
    fn the_default_target_is_a_fraction_of_the_best_final_accuracy() {
        let target = summarise(&sample(), None).target.unwrap();
        assert!(!target.given);
        assert!((target.accuracy - DEFAULT_TARGET_FRACTION * 0.8).abs() < 1e-12);
    }

    #[test]
    fn stage_figures_merge_histograms_and_keep_the_peak() {
        let wild = &summarise(&sample(), None).variants[1];
        assert_eq!(wild.stages.len(), 2);
        assert_eq!(wild.stages[0].staleness[&1], 4 * 6);
        assert_eq!(wild.stages[0].mean_staleness, 1.0);
        assert_eq!(wild.stages[0].peak_weight_bytes, 2000);
        assert_eq!(wild.total_weight_bytes(), Some(3000));
    }

    #[test]
    fn curves_average_the_runs_that_reached_each_epoch() {
        let wild = &summarise(&sample(), None).variants[1];
        assert_eq!(wild.curves.seeds, 2);
        let by_epoch = &wild.curves.accuracy_by_epoch;
        assert_eq!(by_epoch.len(), 3);
        assert!(
            (by_epoch[0].mean - 0.15).abs() < 1e-12,
            "both runs: (0.2 + 0.1) / 2"
        );
        assert_eq!((by_epoch[0].low, by_epoch[0].high), (0.1, 0.2));
        assert_eq!(
            by_epoch[1],
            CurvePoint {
                x: 2.0,
                mean: 0.3,
                low: 0.3,
                high: 0.3
            },
            "only the completed run"
        );
        assert_eq!(wild.curves.accuracy_by_time[2].x, 6.0);
    }

    #[test]
    fn a_curve_point_spans_the_lowest_to_the_highest_seed_around_the_mean() {
        let point = CurvePoint::over_seeds(3.0, &[0.5, 0.9, 0.7]).unwrap();
        assert_eq!((point.x, point.low, point.high), (3.0, 0.5, 0.9));
        assert!((point.mean - 0.7).abs() < 1e-12);
        assert!(CurvePoint::over_seeds(1.0, &[]).is_none());
        // Per epoch over the two seeds of `fast`: 0.5/0.6, 0.8/0.7, 0.9/0.7.
        let fast = &summarise(&sample(), None).variants[0].curves;
        let bands: Vec<(f64, f64)> = fast
            .accuracy_by_epoch
            .iter()
            .map(|p| (p.low, p.high))
            .collect();
        assert_eq!(bands, [(0.5, 0.6), (0.7, 0.8), (0.7, 0.9)]);
        assert!((fast.accuracy_by_epoch[2].mean - 0.8).abs() < 1e-12);
    }
}
