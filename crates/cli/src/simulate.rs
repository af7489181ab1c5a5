//! `timeprest simulate`: generate one schedule and print it.
//!
//! Formats: the papers' text grid (default; exactly `render::grid`, so scripts can rely on it),
//! an SVG timeline, a Chrome trace, or JSON. With `--policy` the weight versions are traced too
//! (stored versions and staleness per stage, see [`crate::analyze`]). The SVG and the trace show
//! the unit-slot timeline, or a cost-model prediction when any `--*-seconds` flag is given.
//!
//! This module also holds what `analyze versions` shares with it: the pipeline-shape flags
//! ([`PipelineArgs`]), the schedule/policy flag parsers and their compatibility check, schedule
//! generation, and `--output` handling.

use std::ops::RangeInclusive;
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use clap::builder::{PossibleValuesParser, TypedValueParser};
use clap::{Args, ValueEnum};
use serde_json::json;
use timeprest_policy::{Activations, PolicyKind, VersionSummary};
use timeprest_schedule::{
    ConstantCost, InflightCap, MAX_BACKWARD_SLOTS, RecomputedActivations, Schedule, ScheduleConfig,
    ScheduleKind, Timeline, generate, render, simulate_costs,
};
use timeprest_train::{check_output_file, write_file_atomically};

use crate::policy_options::PolicyOptionArgs;
use crate::table::version_table;
use crate::usage_error;

/// The most actions one command will simulate: far beyond any figure, small enough that a typo
/// (`--minibatches 4000000`) fails at once instead of exhausting memory.
const MAX_SIMULATED_ACTIONS: u64 = 5_000_000;

/// Output formats of `simulate`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub(crate) enum SimulateFormat {
    /// The papers' text grid: one line per stage, one token per unit slot.
    Grid,
    /// A standalone SVG timeline.
    Svg,
    /// Chrome trace JSON (Perfetto, chrome://tracing).
    ChromeTrace,
    /// The schedule as JSON, with timeline figures and, with --policy, the traced versions.
    Json,
}

/// The pipeline shape and the generator options, shared by `simulate` and `analyze versions`.
#[derive(Args, Clone, Debug)]
pub(crate) struct PipelineArgs {
    /// W: number of pipeline stages (at least 1).
    #[arg(long, value_name = "W", value_parser = at_least_one)]
    pub(crate) stages: u32,
    /// N: micro-batches per mini-batch (at least 1).
    #[arg(long, value_name = "N", value_parser = at_least_one)]
    pub(crate) microbatches: u32,
    /// Mini-batches a stage may have in flight: `stages-remaining` (W − s at stage s, PipeDream's
    /// rule), `unlimited`, or a constant k >= 1. Used by 1f1b, nf1b, nf1b-streamed and 1f1b-2bw.
    #[arg(
        long,
        value_name = "CAP",
        default_value = "stages-remaining",
        value_parser = parse_inflight_cap
    )]
    pub(crate) inflight_cap: InflightCap,
    /// When a stage could run a forward or a backward, run the forward (default: the backward).
    #[arg(long)]
    pub(crate) no_backward_priority: bool,
    /// Order the schedule with backwards of K slots per micro-batch (a forward takes 1), as
    /// `train` does with K = 2 because a real backward costs about two forwards; default: the
    /// papers' unit grid, where every forward and backward takes one slot.
    #[arg(long, value_name = "K", value_parser = clap::value_parser!(u32).range(1..=i64::from(MAX_BACKWARD_SLOTS)))]
    pub(crate) backward_slots: Option<u32>,
    /// Stages recompute their activations, as `train --recompute-activations`: the versions
    /// traced keep each forward's weights until its backward, and with a cost model every
    /// backward costs one more forward per micro-batch it covers.
    #[arg(long)]
    pub(crate) recompute_activations: bool,
}

impl PipelineArgs {
    /// Whether stages keep or recompute their activations.
    pub(crate) fn activations(&self) -> Activations {
        Activations::recomputed_if(self.recompute_activations)
    }

    /// The generator configuration for `num_minibatches` mini-batches.
    fn config(&self, num_minibatches: u32) -> ScheduleConfig {
        ScheduleConfig {
            num_stages: self.stages,
            num_microbatches: self.microbatches,
            num_minibatches,
            inflight_cap: self.inflight_cap,
            backward_priority: !self.no_backward_priority,
            backward_slots: self.backward_slots,
        }
    }

    /// Generates the `kind` schedule with `num_minibatches` mini-batches (see
    /// [`generate_checked`]).
    pub(crate) fn generate(
        &self,
        kind: ScheduleKind,
        num_minibatches: u32,
    ) -> anyhow::Result<Schedule> {
        generate_checked(kind, &self.config(num_minibatches))
    }
}

/// Generates the `kind` schedule for `config`; oversized or invalid shapes are usage errors.
pub(crate) fn generate_checked(
    kind: ScheduleKind,
    config: &ScheduleConfig,
) -> anyhow::Result<Schedule> {
    // Forwards, backwards (at most one per micro-batch) and updates, per stage.
    let actions = u64::from(config.num_stages)
        * u64::from(config.num_minibatches)
        * (2 * u64::from(config.num_microbatches) + 1);
    if actions > MAX_SIMULATED_ACTIONS {
        return Err(usage_error(format!(
            "--stages {} --microbatches {} --minibatches {} give about {actions} actions; \
             at most {MAX_SIMULATED_ACTIONS} are simulated (use fewer mini-batches)",
            config.num_stages, config.num_microbatches, config.num_minibatches
        )));
    }
    generate(kind, config).map_err(|e| usage_error(e.to_string()))
}

/// Arguments of `timeprest simulate`.
#[derive(Args, Debug)]
pub(crate) struct SimulateArgs {
    /// The schedule family; defaults to the policy's schedule when --policy is given.
    #[arg(long, value_parser = schedule_parser())]
    schedule: Option<ScheduleKind>,
    /// Trace this weight policy over the schedule and report stored versions and staleness d.
    #[arg(long, value_parser = policy_parser())]
    policy: Option<PolicyKind>,
    /// The traced policy's open choices, as `train` takes them.
    #[command(flatten)]
    policy_options: PolicyOptionArgs,
    /// The pipeline shape.
    #[command(flatten)]
    pipeline: PipelineArgs,
    /// Number of mini-batches to schedule (at least 1).
    #[arg(long, value_name = "M", value_parser = at_least_one)]
    minibatches: u32,
    /// Show only the first K unit slots (grid, and the unit-slot svg and chrome-trace).
    #[arg(long, value_name = "K", value_parser = at_least_one)]
    slots: Option<u32>,
    /// Output format.
    #[arg(long, value_enum, default_value_t = SimulateFormat::Grid)]
    format: SimulateFormat,
    /// Write the output to FILE instead of stdout.
    #[arg(long, value_name = "FILE")]
    output: Option<PathBuf>,
    /// Durations for a cost-model timeline instead of unit slots.
    #[command(flatten)]
    costs: CostArgs,
}

/// Durations of the constant cost model; any of them switches the timeline from unit slots to
/// predicted seconds (the others keep their defaults).
#[derive(Args, Debug)]
#[group(id = "costs", multiple = true, conflicts_with = "slots")]
struct CostArgs {
    /// Seconds per micro-batch forward [default with a cost model: 1].
    #[arg(long, value_name = "F", value_parser = seconds, allow_negative_numbers = true)]
    forward_seconds: Option<f64>,
    /// Seconds per micro-batch backward; a whole-mini-batch backward takes N times this
    /// [default with a cost model: 1].
    #[arg(long, value_name = "B", value_parser = seconds, allow_negative_numbers = true)]
    backward_seconds: Option<f64>,
    /// Seconds per message between stages [default with a cost model: 0].
    #[arg(long, value_name = "T", value_parser = seconds, allow_negative_numbers = true)]
    transfer_seconds: Option<f64>,
    /// Seconds per optimizer update [default with a cost model: 0].
    #[arg(long, value_name = "U", value_parser = seconds, allow_negative_numbers = true)]
    update_seconds: Option<f64>,
}

impl CostArgs {
    /// The cost model, when any duration was given.
    fn model(&self) -> Option<ConstantCost> {
        let given = [
            self.forward_seconds,
            self.backward_seconds,
            self.transfer_seconds,
            self.update_seconds,
        ];
        given.iter().any(Option::is_some).then(|| ConstantCost {
            forward: self.forward_seconds.unwrap_or(1.0),
            backward: self.backward_seconds.unwrap_or(1.0),
            update: self.update_seconds.unwrap_or(0.0),
            transfer: self.transfer_seconds.unwrap_or(0.0),
        })
    }
}

/// Runs `timeprest simulate`.
pub(crate) fn run(args: &SimulateArgs) -> anyhow::Result<()> {
    if let Some(path) = &args.output {
        check_output_file(path, "--output")?;
    }
    let kind = resolve_schedule(args.schedule, args.policy)?;
    if args.slots.is_some() && args.format == SimulateFormat::Json {
        return Err(usage_error(
            "--slots applies to --format grid, svg and chrome-trace, not json",
        ));
    }
    let schedule = args.pipeline.generate(kind, args.minibatches)?;
    let versions = args
        .policy_options
        .weight_policy(args.policy)?
        .map(|policy| VersionSummary::new(&schedule, &policy, args.pipeline.activations()));
    let text = match args.format {
        SimulateFormat::Grid => {
            let mut text = render::grid(&schedule, args.slots);
            if let Some(versions) = &versions {
                text.push('\n');
                text.push_str(&version_table(versions));
            }
            text
        }
        SimulateFormat::Svg => render::svg(&timeline(args, &schedule)?),
        SimulateFormat::ChromeTrace => render::chrome_trace(&timeline(args, &schedule)?),
        SimulateFormat::Json => {
            let timeline = timeline(args, &schedule)?;
            let document = json!({
                "schedule": schedule,
                "timeline": {
                    "unit": timeline.unit,
                    "makespan": timeline.makespan(),
                    "bubble_fraction": timeline.bubble_fraction(),
                    "utilisation": timeline.utilisation(),
                },
                "versions": versions,
            });
            let mut text = serde_json::to_string_pretty(&document)?;
            text.push('\n');
            text
        }
    };
    write_output(&text, args.output.as_deref())
}

/// The timeline to draw: the cost-model prediction when durations were given, else the unit
/// slots (cut after `--slots`).
fn timeline(args: &SimulateArgs, schedule: &Schedule) -> anyhow::Result<Timeline> {
    if let Some(cost) = args.costs.model() {
        let timeline = if args.pipeline.recompute_activations {
            simulate_costs(schedule, &RecomputedActivations(cost))
        } else {
            simulate_costs(schedule, &cost)
        };
        return timeline
            .map_err(|e| anyhow::anyhow!("internal error: generated schedule is invalid: {e}"));
    }
    let mut timeline = Timeline::from_schedule(schedule);
    if let Some(slots) = args.slots {
        let end = f64::from(slots);
        for row in &mut timeline.stages {
            row.retain(|timed| timed.end <= end);
        }
    }
    Ok(timeline)
}

/// The schedule to use: `--schedule`, or the policy's default; a policy that does not run on the
/// chosen schedule is a usage error.
pub(crate) fn resolve_schedule(
    schedule: Option<ScheduleKind>,
    policy: Option<PolicyKind>,
) -> anyhow::Result<ScheduleKind> {
    match (schedule, policy) {
        (Some(schedule), Some(policy)) if !policy.allowed_schedules().contains(&schedule) => {
            let allowed: Vec<&str> = policy
                .allowed_schedules()
                .iter()
                .map(|kind| kind.name())
                .collect();
            Err(usage_error(format!(
                "--policy {policy} does not run on --schedule {schedule}; schedules allowed for \
                 {policy}: {}",
                allowed.join(", ")
            )))
        }
        (Some(schedule), _) => Ok(schedule),
        (None, Some(policy)) => Ok(policy.default_schedule()),
        (None, None) => Err(usage_error(format!(
            "give --schedule ({}) or --policy (its default schedule is used)",
            schedule_names().join(", ")
        ))),
    }
}

/// The command-line names of every schedule.
fn schedule_names() -> Vec<&'static str> {
    ScheduleKind::ALL.iter().map(|kind| kind.name()).collect()
}

/// Clap parser for `--schedule`: lists the valid names in help and errors.
pub(crate) fn schedule_parser() -> impl TypedValueParser<Value = ScheduleKind> {
    PossibleValuesParser::new(schedule_names()).try_map(|name| name.parse::<ScheduleKind>())
}

/// Clap parser for `--policy`: lists the valid names in help and errors.
pub(crate) fn policy_parser() -> impl TypedValueParser<Value = PolicyKind> {
    let names: Vec<&str> = PolicyKind::ALL.iter().map(|kind| kind.name()).collect();
    PossibleValuesParser::new(names).try_map(|name| name.parse::<PolicyKind>())
}

/// Clap parser for counts that must be at least 1.
pub(crate) fn at_least_one(text: &str) -> Result<u32, String> {
    match text.parse::<u32>() {
        Ok(0) => Err("must be at least 1, got 0".to_string()),
        Ok(value) => Ok(value),
        Err(_) => Err(format!("expected a whole number >= 1, got `{text}`")),
    }
}

/// Clap parser for an inclusive range `A..B` (or `A..=B`, or a single number) of values >= 1.
pub(crate) fn range_at_least_one(text: &str) -> Result<RangeInclusive<u32>, String> {
    let expected = "write A..B with 1 <= A <= B, or a single number";
    let (start, end) = match text.split_once("..") {
        Some((start, end)) => (start, end.strip_prefix('=').unwrap_or(end)),
        None => (text, text),
    };
    let bound = |part: &str| {
        part.trim()
            .parse::<u32>()
            .map_err(|_| format!("`{text}` is not a range ({expected})"))
    };
    let (start, end) = (bound(start)?, bound(end)?);
    if start == 0 {
        Err(format!("values must be at least 1 ({expected})"))
    } else if start > end {
        Err(format!("the range is empty ({expected})"))
    } else {
        Ok(start..=end)
    }
}

/// Clap parser for `--inflight-cap`.
fn parse_inflight_cap(text: &str) -> Result<InflightCap, String> {
    match text {
        "stages-remaining" => Ok(InflightCap::StagesRemaining),
        "unlimited" => Ok(InflightCap::Unlimited),
        _ => match text.parse::<u32>() {
            Ok(cap) if cap >= 1 => Ok(InflightCap::Constant(cap)),
            _ => Err("expected stages-remaining, unlimited or a whole number >= 1".to_string()),
        },
    }
}

/// Clap parser for durations: finite and non-negative seconds.
fn seconds(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(value) if value.is_finite() && value >= 0.0 => Ok(value),
        _ => Err(format!(
            "expected a finite number of seconds >= 0, got `{text}`"
        )),
    }
}

/// Writes `text` to `output` (atomically, only over a regular file), or to stdout when it is
/// `None`.
pub(crate) fn write_output(text: &str, output: Option<&Path>) -> anyhow::Result<()> {
    match output {
        Some(path) => Ok(write_file_atomically(path, text.as_bytes())?),
        None => {
            use std::io::Write as _;
            let mut stdout = std::io::stdout().lock();
            match stdout
                .write_all(text.as_bytes())
                .and_then(|()| stdout.flush())
            {
                // A closed pipe (`| head`) is the reader's choice, not a failure.
                Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
                other => other.context("cannot write to stdout"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_are_inclusive_and_reject_empty_or_zero_starts() {
        assert_eq!(range_at_least_one("2..8"), Ok(2..=8));
        assert_eq!(range_at_least_one("2..=8"), Ok(2..=8));
        assert_eq!(range_at_least_one("5"), Ok(5..=5));
        assert!(range_at_least_one("5..2").unwrap_err().contains("empty"));
        assert!(
            range_at_least_one("0..3")
                .unwrap_err()
                .contains("at least 1")
        );
        assert!(range_at_least_one("x").unwrap_err().contains("not a range"));
    }

    #[test]
    fn inflight_caps_parse() {
        assert_eq!(parse_inflight_cap("unlimited"), Ok(InflightCap::Unlimited));
        assert_eq!(parse_inflight_cap("3"), Ok(InflightCap::Constant(3)));
        assert!(parse_inflight_cap("0").is_err());
    }

    #[test]
    fn incompatible_policies_name_the_allowed_schedules() {
        let err = resolve_schedule(Some(ScheduleKind::Nf1b), Some(PolicyKind::Gpipe)).unwrap_err();
        let text = err.to_string();
        assert!(text.contains("gpipe") && text.contains("nf1b") && text.contains("1f1b-flush"));
        let default = resolve_schedule(None, Some(PolicyKind::Timeprest)).unwrap();
        assert_eq!(default, ScheduleKind::Nf1b);
    }
}
