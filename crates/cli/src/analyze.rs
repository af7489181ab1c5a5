//! `timeprest analyze`: weight-version analyses over simulated schedules.
//!
//! - `version-difference`: TiMePReSt's version difference v over a grid of (W, N), simulated on
//!   nF1B and compared with the paper's closed form ⌊(W+N−2)/N⌋ (`docs/algorithms.md` §3.5),
//!   with the chains of update propagation (the "multiple sequence problem").
//! - `versions`: for one schedule and policy, the weight versions each stage stores at peak, the
//!   distribution of the staleness d of its backwards (overall and in steady state) and the
//!   micro-batches in flight (`docs/algorithms.md` §3.10, §5).
//!
//! Both print an aligned table or JSON. [`VersionSummary`] is also what `simulate --policy`
//! reports.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::ops::{Range, RangeInclusive};
use std::path::PathBuf;

use clap::{Args, Subcommand, ValueEnum};
use serde::Serialize;
use timeprest_policy::{
    PolicyKind, PolicyOptions, WeightPolicy, plan, steady_window, v_formula, version_difference,
};
use timeprest_schedule::{Schedule, ScheduleConfig, ScheduleKind, max_microbatches_in_flight};

use crate::simulate::{
    PipelineArgs, at_least_one, generate_checked, policy_parser, range_at_least_one,
    resolve_schedule, schedule_parser, write_output,
};

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
            let summary = VersionSummary::new(&schedule, args.policy);
            args.report.write(&summary, || summary.table())
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

/// What a policy does to the weight versions of one schedule, per stage.
#[derive(Debug, Serialize)]
pub(crate) struct VersionSummary {
    /// The schedule family.
    schedule: ScheduleKind,
    /// The policy traced.
    policy: PolicyKind,
    /// W.
    stages: u32,
    /// N.
    microbatches: u32,
    /// Mini-batches simulated.
    minibatches: u32,
    /// The steady-state mini-batches, 1-based and inclusive: `[first, last]`.
    steady_minibatches: [u32; 2],
    /// Per stage, the most weight sets (versions or predictions) stored at once.
    stored_versions: Vec<u32>,
    /// Per stage, the most micro-batches whose forward is done and backward is not.
    max_microbatches_in_flight: Vec<u32>,
    /// Per stage, d → number of micro-batch backwards with that staleness, over all of them.
    staleness: Vec<BTreeMap<u64, u32>>,
    /// The same over the steady-state mini-batches only.
    steady_staleness: Vec<BTreeMap<u64, u32>>,
}

impl VersionSummary {
    /// Traces `policy` (with default options) over `schedule`.
    pub(crate) fn new(schedule: &Schedule, policy: PolicyKind) -> Self {
        let config = &schedule.config;
        let plan = plan(
            schedule,
            &WeightPolicy::new(policy, &PolicyOptions::default()),
        );
        let steady = steady_window(config.num_minibatches);
        let histograms = |range: Range<u32>| -> Vec<BTreeMap<u64, u32>> {
            plan.stages
                .iter()
                .map(|stage| stage.staleness_histogram(range.clone()))
                .collect()
        };
        Self {
            schedule: schedule.kind,
            policy,
            stages: config.num_stages,
            microbatches: config.num_microbatches,
            minibatches: config.num_minibatches,
            steady_minibatches: [steady.start + 1, steady.end],
            stored_versions: plan.peak_weight_sets(),
            max_microbatches_in_flight: max_microbatches_in_flight(schedule),
            staleness: histograms(0..config.num_minibatches),
            steady_staleness: histograms(steady),
        }
    }

    /// A title line and one aligned row per stage.
    pub(crate) fn table(&self) -> String {
        let [first, last] = self.steady_minibatches;
        let mut out = format!(
            "policy {} on {}: W={}, N={}, {} mini-batches (steady state: mini-batches {first}..{last})\n",
            self.policy, self.schedule, self.stages, self.microbatches, self.minibatches
        );
        let header = [
            "stage",
            "stored versions",
            "max in flight",
            "d: count (all backwards)",
            "d: count (steady state)",
        ];
        let body: Vec<Vec<String>> = (0..self.stages as usize)
            .map(|s| {
                vec![
                    format!("S{}", s + 1),
                    self.stored_versions[s].to_string(),
                    self.max_microbatches_in_flight[s].to_string(),
                    histogram_cell(&self.staleness[s]),
                    histogram_cell(&self.steady_staleness[s]),
                ]
            })
            .collect();
        out.push_str(&aligned(&header, &body));
        out
    }
}

/// A histogram as in the spec's tables: `{0:25, 1:50}`.
fn histogram_cell(histogram: &BTreeMap<u64, u32>) -> String {
    let entries: Vec<String> = histogram
        .iter()
        .map(|(d, count)| format!("{d}:{count}"))
        .collect();
    format!("{{{}}}", entries.join(", "))
}

/// Left-aligned columns separated by two spaces, with a header row.
fn aligned(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let header: Vec<String> = header.iter().map(|h| h.to_string()).collect();
    let mut out = String::new();
    for row in std::iter::once(&header).chain(rows) {
        let mut line = String::new();
        for (cell, width) in row.iter().zip(&widths) {
            write!(line, "{cell:<width$}  ").unwrap();
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_steady_window_is_the_middle_half_and_never_empty() {
        assert_eq!(steady_window(40), 10..30);
        assert_eq!(steady_window(1), 0..1);
        assert_eq!(steady_window(2), 0..1);
    }

    #[test]
    fn tables_align_and_histograms_read_like_the_docs() {
        let table = aligned(&["a", "bb"], &[vec!["xyz".into(), "1".into()]]);
        assert_eq!(table, "a    bb\nxyz  1\n");
        assert_eq!(
            histogram_cell(&BTreeMap::from([(0, 25), (1, 50)])),
            "{0:25, 1:50}"
        );
    }

    #[test]
    fn long_chains_are_cut_in_the_table() {
        let chains = vec![vec![1, 3, 5, 7, 9], vec![2, 4], vec![6], vec![8]];
        assert_eq!(chains_cell(&chains), "[1 3 5 7 ...] [2 4] [6] (+1 more)");
    }
}
