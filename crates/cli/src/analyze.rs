//! `timeprest analyze`: weight-version analyses over simulated schedules.
//!
//! - `version-difference`: TiMePReSt's version difference v over a grid of (W, N), simulated on
//!   nF1B and compared with the paper's closed form ⌊(W+N−2)/N⌋ (`docs/algorithms.md` §3.5),
//!   with the chains of update propagation (the "multiple sequence problem").
//! - `versions`: for one schedule and policy, the weight versions each stage stores at peak, the
//!   distribution of the staleness d of its backwards (overall and in steady state) and the
//!   micro-batches in flight (`docs/algorithms.md` §3.10, §5).
//!
//! Both print an aligned table or JSON. The version summary
//! ([`timeprest_policy::VersionSummary`]) is also what `simulate --policy` reports.

use std::fmt::Write as _;
use std::ops::RangeInclusive;
use std::path::PathBuf;

use clap::{Args, Subcommand, ValueEnum};
use serde::Serialize;
use timeprest_policy::{PolicyKind, VersionSummary, v_formula, version_difference};
use timeprest_schedule::{ScheduleConfig, ScheduleKind};

use crate::policy_options::PolicyOptionArgs;
use crate::simulate::{
    PipelineArgs, at_least_one, generate_checked, policy_parser, range_at_least_one,
    resolve_schedule, schedule_parser, write_output,
};
use crate::table::{aligned, version_table};

/// Chains shown per row of the version-difference table.
const TABLE_CHAINS: usize = 3;
/// Mini-batches shown per chain in the version-difference table.
const TABLE_CHAIN_LENGTH: usize = 4;

/// Arguments of `timeprest analyze`.
#[derive(Args, Debug)]
pub(crate) struct AnalyzeArgs {
    /// Which analysis.
    #[command(subcommand)]
    analysis: Analysis,
}

/// The analyses.
#[derive(Subcommand, Debug)]
enum Analysis {
    /// TiMePReSt's version difference v on nF1B over ranges of W and N, simulated vs the
    /// paper's formula ⌊(W+N−2)/N⌋, and whether updates split into several chains.
    VersionDifference(VersionDifferenceArgs),
    /// Stored weight versions, staleness d and micro-batches in flight per stage, for one
    /// schedule and policy.
    Versions(VersionsArgs),
}

/// Output formats of the analyses.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
enum ReportFormat {
    /// An aligned text table.
    #[default]
    Table,
    /// JSON.
    Json,
}

/// Output flags shared by the analyses.
#[derive(Args, Debug)]
struct ReportArgs {
    /// Output format.
    #[arg(long, value_enum, default_value_t)]
    format: ReportFormat,
    /// Write the output to FILE instead of stdout.
    #[arg(long, value_name = "FILE")]
    output: Option<PathBuf>,
}

impl ReportArgs {
    /// Writes `value` as the chosen format: `table()` for a table, pretty JSON otherwise.
    fn write(&self, value: &impl Serialize, table: impl FnOnce() -> String) -> anyhow::Result<()> {
        let text = match self.format {
            ReportFormat::Table => table(),
            ReportFormat::Json => serde_json::to_string_pretty(value)? + "\n",
        };
        write_output(&text, self.output.as_deref())
    }
}

/// Arguments of `timeprest analyze version-difference`.
#[derive(Args, Debug)]
struct VersionDifferenceArgs {
    /// W values: an inclusive range A..B or a single number.
    #[arg(long, value_name = "A..B", default_value = "2..8", value_parser = range_at_least_one)]
    stages: RangeInclusive<u32>,
    /// N values: an inclusive range A..B or a single number.
    #[arg(long, value_name = "A..B", default_value = "2..7", value_parser = range_at_least_one)]
    microbatches: RangeInclusive<u32>,
    /// Mini-batches simulated per (W, N); v is read over the middle half of them.
    #[arg(long, value_name = "M", default_value_t = 40, value_parser = at_least_one)]
    minibatches: u32,
    /// Output.
    #[command(flatten)]
    report: ReportArgs,
}

/// Arguments of `timeprest analyze versions`.
#[derive(Args, Debug)]
struct VersionsArgs {
    /// The schedule family [default: the policy's schedule].
    #[arg(long, value_parser = schedule_parser())]
    schedule: Option<ScheduleKind>,
    /// The weight policy to trace.
    #[arg(long, value_parser = policy_parser())]
    policy: PolicyKind,
    /// The policy's open choices, as `train` takes them.
    #[command(flatten)]
    policy_options: PolicyOptionArgs,
    /// The pipeline shape.
    #[command(flatten)]
    pipeline: PipelineArgs,
    /// Mini-batches to simulate; the steady state is mini-batches M/4 .. 3M/4.
    #[arg(long, value_name = "M", default_value_t = 40, value_parser = at_least_one)]
    minibatches: u32,
    /// Output.
    #[command(flatten)]
    report: ReportArgs,
}

/// Runs `timeprest analyze`.
pub(crate) fn run(args: &AnalyzeArgs) -> anyhow::Result<()> {
    match &args.analysis {
        Analysis::VersionDifference(args) => {
            let rows = version_differences(args)?;
            args.report.write(&rows, || version_difference_table(&rows))
        }
        Analysis::Versions(args) => {
            let kind = resolve_schedule(args.schedule, Some(args.policy))?;
            let schedule = args.pipeline.generate(kind, args.minibatches)?;
            let policy = (args.policy_options.weight_policy(Some(args.policy))?)
                .expect("a policy was given");
            let summary = VersionSummary::new(&schedule, &policy, args.pipeline.activations());
            args.report.write(&summary, || version_table(&summary))
        }
    }
}

/// The version difference at one (W, N).
#[derive(Debug, Serialize)]
struct VersionDifferenceRow {
    /// W.
    stages: u32,
    /// N.
    microbatches: u32,
    /// v in steady state, from the simulated nF1B schedule.
    v_simulated: u32,
    /// The paper's ⌊(W+N−2)/N⌋; `None` outside its domain W, N >= 2.
    v_formula: Option<u32>,
    /// Whether the formula equals the simulation; `None` outside the formula's domain.
    formula_matches: Option<bool>,
    /// Whether updates propagate along more than one chain.
    multiple_sequences: bool,
    /// The chains of update propagation, as 1-based mini-batch numbers.
    chains: Vec<Vec<u32>>,
}

/// Simulates every (W, N) of the ranges.
fn version_differences(args: &VersionDifferenceArgs) -> anyhow::Result<Vec<VersionDifferenceRow>> {
    let mut rows = Vec::new();
    for stages in args.stages.clone() {
        for microbatches in args.microbatches.clone() {
            let config = ScheduleConfig::new(stages, microbatches, args.minibatches);
            let schedule = generate_checked(ScheduleKind::Nf1b, &config)?;
            let analysis = version_difference(&schedule);
            let v_formula =
                (stages >= 2 && microbatches >= 2).then(|| v_formula(stages, microbatches));
            rows.push(VersionDifferenceRow {
                stages,
                microbatches,
                v_simulated: analysis.steady_v,
                v_formula,
                formula_matches: v_formula.map(|v| v == analysis.steady_v),
                multiple_sequences: analysis.has_multiple_sequences(),
                chains: analysis.chains,
            });
        }
    }
    Ok(rows)
}

/// The version-difference table, formula mismatches marked with `*`.
fn version_difference_table(rows: &[VersionDifferenceRow]) -> String {
    let header = [
        "W",
        "N",
        "v simulated",
        "v formula",
        "sequences",
        "chains (first mini-batches)",
    ];
    let body: Vec<Vec<String>> = rows
        .iter()
        .map(|row| {
            let formula = match (row.v_formula, row.formula_matches) {
                (Some(v), Some(false)) => format!("{v} *"),
                (Some(v), _) => v.to_string(),
                (None, _) => "-".to_string(),
            };
            let sequences = if row.multiple_sequences {
                "multiple"
            } else {
                "single"
            };
            vec![
                row.stages.to_string(),
                row.microbatches.to_string(),
                row.v_simulated.to_string(),
                formula,
                sequences.to_string(),
                chains_cell(&row.chains),
            ]
        })
        .collect();
    let mut out = aligned(&header, &body);
    if rows.iter().any(|row| row.formula_matches == Some(false)) {
        out.push_str(
            "\n* the paper's closed form (W+N-2)/N, rounded down, differs from the simulation\n",
        );
    }
    if rows.iter().any(|row| row.v_formula.is_none()) {
        out.push_str("- the closed form is defined for W >= 2 and N >= 2 only\n");
    }
    out
}

/// The first chains, each cut after a few mini-batches: `[1 3 5 7 ...] [2 4 6 8 ...]`.
fn chains_cell(chains: &[Vec<u32>]) -> String {
    let mut cell = String::new();
    for chain in chains.iter().take(TABLE_CHAINS) {
        let shown: Vec<String> = chain
            .iter()
            .take(TABLE_CHAIN_LENGTH)
            .map(u32::to_string)
            .collect();
        let more = if chain.len() > TABLE_CHAIN_LENGTH {
            " ..."
        } else {
            ""
        };
        write!(cell, "[{}{more}] ", shown.join(" ")).unwrap();
    }
    if chains.len() > TABLE_CHAINS {
        write!(cell, "(+{} more)", chains.len() - TABLE_CHAINS).unwrap();
    }
    cell.trim_end().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_chains_are_cut_in_the_table() {
        let chains = vec![vec![1, 3, 5, 7, 9], vec![2, 4], vec![6], vec![8]];
        assert_eq!(chains_cell(&chains), "[1 3 5 7 ...] [2 4] [6] (+1 more)");
    }
}
