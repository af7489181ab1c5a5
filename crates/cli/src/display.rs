//! What a run shows on the terminal: the progress bars' rate and time left, and the one-line
//! summary of each epoch.
//!
//! indicatif's own `{per_sec}` prints a bare float (`441.9771/s`, no unit) and its `{eta}`
//! follows a smoothed estimator that swings wildly over the first steps. The bars here use two
//! keys of their own instead, both from the plain average since the bar (re)started — steps done
//! over time elapsed — which is steady, and both show `?` until enough steps (or a few steps
//! and a second) have passed for the average to mean something. Every formatter is a pure
//! function of numbers (or of [`EpochMetrics`]) returning text, so it is tested without a
//! terminal.

use std::time::Duration;

use indicatif::{ProgressState, ProgressStyle};
use timeprest_train::{EpochMetrics, StageMetrics, TrainConfig};

/// A bar shows a rate and a time left only after this many steps (the first steps include
/// filling the pipeline) …
const MIN_STEPS_FOR_ESTIMATE: u64 = 3;
/// … and once this much time has passed …
const MIN_ELAPSED_FOR_ESTIMATE: Duration = Duration::from_secs(1);
/// … or this many steps, whichever comes first.
const ENOUGH_STEPS_FOR_ESTIMATE: u64 = 10;

/// What one step of a bar stands for, so its rate is in units a user reads: a training bar
/// steps per mini-batch but shows samples (or tokens) per second.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct StepUnits {
    /// Units per step (the samples of a mini-batch).
    pub per_step: f64,
    /// The unit of the rate, e.g. `samples/s`.
    pub rate_unit: &'static str,
}

/// The throughput unit of a language model, which counts the tokens it predicts. Short, so that
/// an epoch line with a perplexity still fits in 100 columns.
const TOKEN_RATE: &str = "tok/s";

impl StepUnits {
    /// A mini-batch of `config`: its samples, or for a language model its tokens (every
    /// position of a sample predicts the next), which the per-epoch throughput counts too.
    pub(crate) fn minibatch(config: &TrainConfig) -> Self {
        if config.model.is_language_model() {
            Self {
                per_step: (config.optimisation.batch_size * config.data.seq_len) as f64,
                rate_unit: TOKEN_RATE,
            }
        } else {
            Self {
                per_step: config.optimisation.batch_size as f64,
                rate_unit: "samples/s",
            }
        }
    }
}

/// `per_second` with about three significant digits and a k/M suffix, then `unit`:
/// `442 samples/s`, `4.4k samples/s`, `44.2k samples/s`, `1.2M tok/s`.
pub(crate) fn rate(per_second: f64, unit: &str) -> String {
    if !per_second.is_finite() || per_second < 0.0 {
        return format!("? {unit}");
    }
    let (value, suffix) = if per_second >= 999_500.0 {
        (per_second / 1e6, "M")
    } else if per_second >= 999.5 {
        (per_second / 1e3, "k")
    } else {
        (per_second, "")
    };
    let decimals = match (suffix, value) {
        (_, v) if v >= 99.95 => 0,
        ("", v) if v >= 9.95 => 0,
        _ => 1,
    };
    format!("{value:.decimals$}{suffix} {unit}")
}

/// A duration for a time left: `7s`, `3m05s`, `2h03m`.
pub(crate) fn duration(time: Duration) -> String {
    let seconds = time.as_secs_f64().round() as u64;
    match seconds {
        0..60 => format!("{seconds}s"),
        60..3600 => format!("{}m{:02}s", seconds / 60, seconds % 60),
        _ => format!("{}h{:02}m", seconds / 3600, (seconds % 3600) / 60),
    }
}

/// Whether `done` steps in `elapsed` are enough for an average that means something.
fn estimate_ready(done: u64, elapsed: Duration) -> bool {
    done >= ENOUGH_STEPS_FOR_ESTIMATE
        || (done >= MIN_STEPS_FOR_ESTIMATE && elapsed >= MIN_ELAPSED_FOR_ESTIMATE)
}

/// The rate of a bar that did `done` steps in `elapsed`, in `units`; `? unit` until
/// [`estimate_ready`].
pub(crate) fn bar_rate(done: u64, elapsed: Duration, units: StepUnits) -> String {
    if !estimate_ready(done, elapsed) {
        return format!("? {}", units.rate_unit);
    }
    let per_second = done as f64 * units.per_step / elapsed.as_secs_f64();
    rate(per_second, units.rate_unit)
}

/// The time left of a bar at `done` of `total` steps after `elapsed`, at the average rate so
/// far; `?` until [`estimate_ready`].
pub(crate) fn time_left(done: u64, total: u64, elapsed: Duration) -> String {
    if !estimate_ready(done, elapsed) {
        return "?".into();
    }
    let left = total.saturating_sub(done) as f64 * elapsed.as_secs_f64() / done as f64;
    duration(Duration::from_secs_f64(left))
}

/// A bar style from `template`, which may use `{time_left}` (instead of indicatif's `{eta}`)
/// and `{rate}` (instead of `{per_sec}`, counted in `units`).
pub(crate) fn bar_style(template: &str, units: StepUnits) -> ProgressStyle {
    ProgressStyle::with_template(template)
        .expect("a valid template")
        .progress_chars("=> ")
        .with_key(
            "time_left",
            |state: &ProgressState, out: &mut dyn std::fmt::Write| {
                let total = state.len().unwrap_or(0);
                let _ = out.write_str(&time_left(state.pos(), total, state.elapsed()));
            },
        )
        .with_key(
            "rate",
            move |state: &ProgressState, out: &mut dyn std::fmt::Write| {
                let _ = out.write_str(&bar_rate(state.pos(), state.elapsed(), units));
            },
        )
}

/// An epoch's duration with three significant digits, in milliseconds below a second:
/// `123s`, `1.23s`, `896ms`, `8.96ms`.
pub(crate) fn epoch_time(seconds: f64) -> String {
    let millis = 1000.0 * seconds;
    if seconds >= 1.0 || !seconds.is_finite() {
        format!("{}s", timeprest_report::seconds(seconds))
    } else if millis >= 1.0 {
        format!("{}ms", timeprest_report::seconds(millis))
    } else {
        format!("{millis:.2}ms")
    }
}

/// The perplexity of a mean per-token cross-entropy `loss`: `ppl 16.83`, `ppl 123.5`,
/// `ppl 4711`.
pub(crate) fn perplexity(loss: f64) -> String {
    let value = loss.exp();
    let decimals = match value {
        v if v < 100.0 => 2,
        v if v < 1000.0 => 1,
        _ => 0,
    };
    format!("ppl {value:.decimals$}")
}

/// The summary line of an epoch, at most 100 columns (no wrapping on a 100-column terminal) for
/// realistic values: losses,
/// accuracies, (for a language model) the test perplexity, time and throughput. The per-stage
/// staleness and weight versions do not fit beside them for more than a stage or two; they are
/// in `metrics.jsonl` and in the run's last line ([`stage_line`]).
pub(crate) fn epoch_line(m: &EpochMetrics, language_model: bool) -> String {
    // A language model's loss, accuracy and throughput count its training targets: tokens.
    let (test_perplexity, unit) = if language_model {
        (format!(" {}", perplexity(m.test_loss)), TOKEN_RATE)
    } else {
        (String::new(), "samples/s")
    };
    format!(
        "epoch {:>3}  train loss {:.4} acc {:.2}%  test loss {:.4} acc {:.2}%{test_perplexity}  \
         {} {}",
        m.epoch,
        m.train_loss,
        100.0 * m.train_accuracy,
        m.test_loss,
        100.0 * m.test_accuracy,
        epoch_time(m.epoch_seconds),
        rate(m.samples_per_second, unit),
    )
}

/// `2`, `0.67`, `1.5`: a mean staleness with at most two decimals and no trailing zeros.
fn compact(value: f64) -> String {
    let text = format!("{value:.2}");
    text.trim_end_matches('0').trim_end_matches('.').to_string()
}

/// The per-stage figures of an epoch: `per stage: mean staleness d [2 1 0], weight versions
/// [3 2 1]`.
pub(crate) fn stage_line(stages: &[StageMetrics]) -> String {
    let staleness: Vec<String> = stages.iter().map(|s| compact(s.mean_staleness)).collect();
    let versions: Vec<String> = stages
        .iter()
        .map(|s| s.peak_weight_sets.to_string())
        .collect();
    format!(
        "per stage: mean staleness d [{}], weight versions [{}]",
        staleness.join(" "),
        versions.join(" ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The widest a per-epoch line may be.
    const LINE_WIDTH: usize = 100;

    fn stage(stage: u32, mean_staleness: f64, sets: u32) -> StageMetrics {
        StageMetrics {
            stage,
            staleness: Default::default(),
            mean_staleness,
            peak_weight_sets: sets,
            peak_weight_bytes: 0,
            peak_activation_bytes: 0,
            busy_seconds: 0.0,
            utilisation: 0.0,
            bytes_sent: 0,
        }
    }

    /// An epoch with wide but realistic values on `num_stages` stages.
    fn wide_epoch(num_stages: u32, loss: f64, accuracy: f64) -> EpochMetrics {
        EpochMetrics {
            epoch: 120,
            train_loss: loss,
            train_accuracy: accuracy,
            test_loss: loss,
            test_accuracy: accuracy,
            epoch_seconds: 123.456,
            samples_per_second: 44_197.71,
            num_minibatches: 1875,
            lr: 0.05,
            simulated_seconds: 0.0,
            stages: (0..num_stages)
                .map(|s| stage(s, 1.0 + f64::from(s) / 3.0, 2 * num_stages))
                .collect(),
        }
    }

    fn columns(line: &str) -> usize {
        line.chars().count()
    }

    #[test]
    fn an_epoch_line_of_four_stages_fits_in_a_hundred_columns() {
        let line = epoch_line(&wide_epoch(4, 10.1234, 1.0), false);
        assert!(
            columns(&line) <= LINE_WIDTH,
            "{} columns: {line}",
            columns(&line)
        );
        assert!(line.starts_with("epoch 120  train loss 10.1234 acc 100.00%"));
        assert!(line.contains("test loss 10.1234 acc 100.00%"), "{line}");
        assert!(line.ends_with("  123s 44.2k samples/s"), "{line}");
    }

    #[test]
    fn a_language_model_epoch_line_with_perplexity_fits_in_a_hundred_columns() {
        // Loss 7.5 per token: perplexity 1808, a wide value for a character-level model; an
        // epoch of a few milliseconds has the widest time (`8.96ms`).
        let mut epoch = wide_epoch(4, 7.5, 0.4567);
        epoch.epoch_seconds = 0.00896;
        let line = epoch_line(&epoch, true);
        assert!(
            columns(&line) <= LINE_WIDTH,
            "{} columns: {line}",
            columns(&line)
        );
        assert!(
            line.contains("test loss 7.5000 acc 45.67% ppl 1808  "),
            "{line}"
        );
        assert!(line.ends_with("  8.96ms 44.2k tok/s"), "{line}");
    }

    #[test]
    fn stage_figures_are_compact() {
        let stages = [stage(0, 2.0, 3), stage(1, 2.0 / 3.0, 2), stage(2, 0.5, 1)];
        assert_eq!(
            stage_line(&stages),
            "per stage: mean staleness d [2 0.67 0.5], weight versions [3 2 1]"
        );
    }

    #[test]
    fn rates_have_a_unit_and_three_significant_digits() {
        assert_eq!(rate(441.9771, "samples/s"), "442 samples/s");
        assert_eq!(rate(4419.771, "samples/s"), "4.4k samples/s");
        assert_eq!(rate(44_197.71, "samples/s"), "44.2k samples/s");
        assert_eq!(rate(441_977.1, TOKEN_RATE), "442k tok/s");
        assert_eq!(rate(1_234_567.0, TOKEN_RATE), "1.2M tok/s");
        assert_eq!(rate(999.7, "samples/s"), "1.0k samples/s");
        assert_eq!(rate(12.34, "samples/s"), "12 samples/s");
        assert_eq!(rate(0.3, "epochs/s"), "0.3 epochs/s");
        assert_eq!(rate(f64::NAN, "samples/s"), "? samples/s");
        assert_eq!(rate(f64::INFINITY, "samples/s"), "? samples/s");
    }

    #[test]
    fn a_bar_rate_counts_units_not_steps_once_it_means_something() {
        let units = StepUnits {
            per_step: 32.0,
            rate_unit: "samples/s",
        };
        let second = Duration::from_secs(1);
        // 10 mini-batches of 32 in 2 s: 160 samples/s, not 5/s.
        assert_eq!(bar_rate(10, 2 * second, units), "160 samples/s");
        assert_eq!(
            bar_rate(2, 10 * second, units),
            "? samples/s",
            "too few steps"
        );
        assert_eq!(
            bar_rate(5, second / 10, units),
            "? samples/s",
            "too short a time for so few steps"
        );
        assert_eq!(bar_rate(10, second / 10, units), "3.2k samples/s");
    }

    #[test]
    fn the_time_left_is_hidden_until_enough_steps_and_time_have_passed() {
        let second = Duration::from_secs(1);
        assert_eq!(time_left(0, 100, 5 * second), "?");
        assert_eq!(time_left(1, 100, 5 * second), "?");
        assert_eq!(time_left(5, 100, second / 2), "?");
        // Ten steps are enough, however quick: 88 left at 24 steps/s.
        assert_eq!(time_left(12, 100, second / 2), "4s");
        // 20 of 100 steps in 10 s: 80 left at 2 steps/s.
        assert_eq!(time_left(20, 100, 10 * second), "40s");
        assert_eq!(time_left(3, 100, 6 * second), "3m14s");
        assert_eq!(time_left(100, 100, 10 * second), "0s");
    }

    #[test]
    fn epoch_times_keep_three_digits_in_seconds_or_milliseconds() {
        assert_eq!(epoch_time(123.456), "123s");
        assert_eq!(epoch_time(1.234), "1.23s");
        assert_eq!(epoch_time(0.314), "314ms");
        assert_eq!(epoch_time(0.00896), "8.96ms");
        assert_eq!(epoch_time(0.0004), "0.40ms");
    }

    #[test]
    fn durations_read_as_seconds_minutes_or_hours() {
        assert_eq!(duration(Duration::from_secs_f64(6.6)), "7s");
        assert_eq!(duration(Duration::from_secs(185)), "3m05s");
        assert_eq!(duration(Duration::from_secs(7380)), "2h03m");
    }

    #[test]
    fn perplexity_keeps_about_four_digits() {
        assert_eq!(perplexity(16.83_f64.ln()), "ppl 16.83");
        assert_eq!(perplexity(123.46_f64.ln()), "ppl 123.5");
        assert_eq!(perplexity(4711.2_f64.ln()), "ppl 4711");
    }
}
