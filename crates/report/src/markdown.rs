//! `report.md`: a comparison that reads well on its own.
//!
//! Order: what produced it (the exact command and the shared configuration), what it shows (a
//! paragraph generated from the numbers, so it can never contradict the tables), the results
//! per policy, memory and staleness per stage (measured next to the simulator's prediction),
//! the plots, and the runs that did not complete. Every number comes from the
//! [`Summary`]; this module only formats.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use timeprest_train::TrainConfig;

use crate::figure::{human_bytes, seconds};
use crate::plots::Plot;
use crate::record::{Loaded, Manifest, Outcome};
use crate::summary::{Reach, Summary, Target, VariantSummary};

/// File name of the report in a comparison directory.
pub const REPORT_FILE: &str = "report.md";

/// The report of a comparison.
pub fn render(
    manifest: &Manifest,
    loaded: &Loaded,
    summary: &Summary,
    plots: &[Plot],
    dir: &Path,
) -> String {
    let mut out = String::new();
    let labels: Vec<&str> = summary.variants.iter().map(|v| v.label.as_str()).collect();
    let base = manifest.variants.first().map(|v| &v.config);
    let dataset = base.map_or("?", |c| c.data.dataset.as_str());
    let _ = writeln!(out, "# Comparison: {} on {dataset}\n", labels.join(", "));
    let _ = writeln!(out, "Produced by:\n\n```sh\n{}\n```\n", manifest.command);
    if let Some(config) = base {
        configuration(&mut out, config, manifest, summary.target);
    }
    let _ = writeln!(out, "## What this shows\n\n{}\n", findings(summary));
    results(&mut out, summary);
    grid(&mut out, summary);
    per_stage(&mut out, summary);
    let _ = writeln!(out, "## Plots\n");
    for plot in plots {
        let [svg, png] = &plot.files;
        let relative = |path: &Path| path.strip_prefix(dir).unwrap_or(path).display().to_string();
        let _ = writeln!(
            out,
            "### {}\n\n![{}]({}) ([SVG]({}))\n",
            plot.title,
            plot.title,
            relative(png),
            relative(svg)
        );
    }
    problems(&mut out, manifest, loaded);
    out
}

/// The number of stages most policies use, and the policies that differ (a comparison often
/// runs `single:stages=1` beside W-stage pipelines).
fn stages_text(manifest: &Manifest) -> String {
    let mut counts: BTreeMap<u32, usize> = BTreeMap::new();
    for variant in &manifest.variants {
        *counts
            .entry(variant.config.pipeline.num_stages)
            .or_default() += 1;
    }
    // The most common W; among equally common ones, the largest (the pipelines).
    let Some((&common, _)) = counts.iter().max_by_key(|&(&stages, &n)| (n, stages)) else {
        return "no policies".into();
    };
    let others: Vec<String> = manifest
        .variants
        .iter()
        .filter(|v| v.config.pipeline.num_stages != common)
        .map(|v| format!("{}: W = {}", v.label, v.config.pipeline.num_stages))
        .collect();
    if others.is_empty() {
        format!("W = {common} stages")
    } else {
        format!("W = {common} stages ({})", others.join(", "))
    }
}

fn configuration(
    out: &mut String,
    config: &TrainConfig,
    manifest: &Manifest,
    target: Option<Target>,
) {
    let limits = match (config.data.limit_train, config.data.limit_test) {
        (None, None) => String::new(),
        (train, test) => format!(
            " (first {} training / {} test samples)",
            train.map_or("all".into(), |n| n.to_string()),
            test.map_or("all".into(), |n| n.to_string())
        ),
    };
    let hidden: Vec<String> = config
        .model
        .hidden
        .iter()
        .map(ToString::to_string)
        .collect();
    let seeds: Vec<String> = manifest.seeds.iter().map(ToString::to_string).collect();
    let target = match target {
        Some(Target {
            accuracy,
            given: true,
        }) => format!("{:.1}% test accuracy", 100.0 * accuracy),
        Some(Target {
            accuracy,
            given: false,
        }) => format!(
            "{:.1}% test accuracy (default: 90% of the best mean final accuracy; set \
             `--target-accuracy`)",
            100.0 * accuracy
        ),
        None => "none (no run completed)".into(),
    };
    let rows = [
        ("data set", format!("{}{limits}", config.data.dataset)),
        (
            "model",
            format!("{}, hidden layers {}", config.model.name, hidden.join(", ")),
        ),
        (
            "pipeline",
            format!(
                "{}, M = {} samples per mini-batch",
                stages_text(manifest),
                config.optimisation.batch_size
            ),
        ),
        (
            "training",
            format!(
                "{} epochs, {:?} lr {} momentum {}{}, weight decay {}, gradient mode {:?}",
                config.optimisation.epochs,
                config.optimisation.optimizer,
                config.optimisation.lr,
                config.optimisation.momentum,
                if config.optimisation.nesterov {
                    " (Nesterov)"
                } else {
                    ""
                },
                config.optimisation.weight_decay,
                config.pipeline.grad_mode
            )
            .to_lowercase(),
        ),
        (
            "seeds",
            format!(
                "{} (a seed fixes the initial weights and the data order, the same for every policy)",
                seeds.join(", ")
            ),
        ),
        ("target", target),
    ];
    let _ = writeln!(out, "## Configuration\n\n| | |\n|---|---|");
    for (name, value) in rows {
        let _ = writeln!(out, "| {name} | {value} |");
    }
    let _ = writeln!(
        out,
        "\nThe schedule and N of each policy are in the results table; each run's full \
         configuration is `runs/<policy>-seed<k>/config.json`. Times are pipelined training \
         only (evaluation excluded).\n"
    );
}

fn percent(value: f64) -> String {
    format!("{:.1}%", 100.0 * value)
}

fn runs_cell(v: &VariantSummary) -> String {
    let total = v.completed.len() + v.diverged.len() + v.incomplete.len();
    let mut cell = format!("{}/{total} completed", v.completed.len());
    for (seed, epoch) in &v.diverged {
        let _ = write!(cell, ", seed {seed} **diverged** (epoch {epoch})");
    }
    for seed in &v.incomplete {
        let _ = write!(cell, ", seed {seed} incomplete");
    }
    cell
}

fn results(out: &mut String, summary: &Summary) {
    let target = summary
        .target
        .map_or("target".into(), |t| percent(t.accuracy));
    let _ = writeln!(
        out,
        "## Results per policy\n\n| policy | schedule (N) | runs | final test accuracy (mean ± sd) \
         | best | epochs to {target} | time to {target} | s/epoch | samples/s |\n\
         |---|---|---|---|---|---|---|---|---|"
    );
    // The time the summary sentence calls the fastest is bold here: one ranking feeds both.
    let fastest = summary
        .fastest_to_target()
        .first()
        .map(|(v, _)| v.label.clone());
    for v in &summary.variants {
        let final_accuracy = match v.final_accuracy {
            Some(m) => format!("{} ± {:.1}", percent(m.mean), 100.0 * m.sd),
            None if !v.diverged.is_empty() => "diverged".into(),
            None => "—".into(),
        };
        let (epochs, time) = match v.reach {
            Some(r) => {
                let of = if r.reached < r.of {
                    format!(" ({}/{} seeds)", r.reached, r.of)
                } else {
                    String::new()
                };
                let time = time_to_target(&r);
                let time = if fastest.as_ref() == Some(&v.label) {
                    format!("**{time}**{of}")
                } else {
                    format!("{time}{of}")
                };
                (format!("{:.1}{of}", r.epochs), time)
            }
            None => ("not reached".into(), "not reached".into()),
        };
        let _ = writeln!(
            out,
            "| {} | {} ({}) | {} | {final_accuracy} | {} | {epochs} | {time} | {} | {} |",
            v.label,
            v.schedule,
            v.microbatches,
            runs_cell(v),
            v.best_accuracy.map_or("—".into(), percent),
            v.seconds_per_epoch.map_or("—".into(), seconds),
            v.samples_per_second
                .map_or("—".into(), |s| format!("{s:.0}")),
        );
    }
    out.push('\n');
}

/// The rows and columns of a grid comparison (`compare --grid`): when every label ends in a
/// setting `:KEY=VALUE` and the labels are every row (what comes before the last setting) with
/// every one of at least two settings, in label order; `None` otherwise.
fn grid_axes<'a>(labels: &[&'a str]) -> Option<(Vec<&'a str>, Vec<&'a str>)> {
    let split: Vec<(&str, &str)> = labels
        .iter()
        .map(|label| {
            label
                .rsplit_once(':')
                .filter(|(_, setting)| setting.contains('='))
        })
        .collect::<Option<_>>()?;
    let mut rows: Vec<&str> = Vec::new();
    let mut columns: Vec<&str> = Vec::new();
    for &(row, column) in &split {
        if !rows.contains(&row) {
            rows.push(row);
        }
        if !columns.contains(&column) {
            columns.push(column);
        }
    }
    let complete = split.len() == rows.len() * columns.len()
        && rows
            .iter()
            .all(|row| columns.iter().all(|column| split.contains(&(row, column))));
    (columns.len() >= 2 && complete).then_some((rows, columns))
}

/// For a grid comparison, the final test accuracy of every row (policy) at every setting, with
/// its spread over seeds: how stable each policy is across the settings, at a glance.
fn grid(out: &mut String, summary: &Summary) {
    let labels: Vec<&str> = summary.variants.iter().map(|v| v.label.as_str()).collect();
    let Some((rows, columns)) = grid_axes(&labels) else {
        return;
    };
    let _ = writeln!(
        out,
        "## Final test accuracy by setting\n\nMean ± sd over the seeds that completed; runs \
         that diverged are counted after it.\n\n| policy | {} |\n|---|{}",
        columns.join(" | "),
        "---|".repeat(columns.len())
    );
    for row in rows {
        let cells: Vec<String> = columns
            .iter()
            .map(|column| {
                let label = format!("{row}:{column}");
                let v = (summary.variants.iter())
                    .find(|v| v.label == label)
                    .expect("a complete grid has every cell");
                let mut cell = match v.final_accuracy {
                    Some(m) => format!("{} ± {:.1}", percent(m.mean), 100.0 * m.sd),
                    None => "—".into(),
                };
                if !v.diverged.is_empty() {
                    let _ = write!(cell, " ({} diverged)", v.diverged.len());
                }
                cell
            })
            .collect();
        let _ = writeln!(out, "| {row} | {} |", cells.join(" | "));
    }
    out.push('\n');
}

fn per_stage(out: &mut String, summary: &Summary) {
    let _ = writeln!(
        out,
        "## Memory and staleness per stage\n\n\
         Weight versions are the weight sets a stage stores at its peak (live weights, stashed \
         versions, predictions); *measured* is the maximum over all epochs and seeds, *predicted* \
         is the simulator's plan for the same schedule. Activations are the bytes the stage held \
         for backwards at its peak; *predicted* is the simulator's estimate (micro-batches in \
         flight × each block's inputs and outputs in f32; with `--recompute-activations`, their \
         stage inputs plus one backward's micro-batches). Staleness d is the number of updates \
         between the weights a backward uses and those its forward used, over all backward \
         micro-batches.\n\n\
         | policy | stage | weight versions measured | predicted | activations measured \
         | predicted | mean staleness d measured | predicted |\n|---|---|---|---|---|---|---|---|"
    );
    for v in &summary.variants {
        for (stage, measured) in v.stages.iter().enumerate() {
            let predicted = v.prediction.as_ref().and_then(|p| p.get(stage));
            let _ = writeln!(
                out,
                "| {} | {stage} | {} ({}) | {} | {} | {} | {:.2} | {} |",
                v.label,
                human_bytes(measured.peak_weight_bytes as f64),
                count(measured.peak_weight_sets, "set", "sets"),
                predicted.map_or("—".into(), |p| format!(
                    "{} ({})",
                    human_bytes(p.weight_bytes as f64),
                    count(p.weight_sets, "set", "sets")
                )),
                human_bytes(measured.peak_activation_bytes as f64),
                predicted.map_or("—".into(), |p| format!(
                    "{} ({})",
                    human_bytes(p.activation_bytes as f64),
                    count(p.microbatches_in_flight, "micro-batch", "micro-batches")
                )),
                measured.mean_staleness,
                predicted.map_or("—".into(), |p| format!("{:.2}", p.mean_staleness)),
            );
        }
    }
    out.push('\n');
}

/// The "Runs" section: how many of the planned runs completed, as the run directories are now,
/// and each run that did not.
fn problems(out: &mut String, manifest: &Manifest, loaded: &Loaded) {
    let incomplete = Outcome::Incomplete;
    let failed: Vec<String> = manifest
        .runs
        .iter()
        .map(|entry| {
            let on_disk = loaded
                .runs
                .iter()
                .find(|run| run.label == entry.label && run.seed == entry.seed);
            // Only a divergence comes from the manifest (see `record::load`); a run without a
            // directory was stopped before it wrote anything.
            let outcome = match entry.outcome {
                Outcome::Diverged { .. } => &entry.outcome,
                _ => on_disk.map_or(&incomplete, |run| &run.outcome),
            };
            (entry, outcome)
        })
        .filter_map(|(entry, outcome)| match outcome {
            Outcome::Completed => None,
            Outcome::Diverged { message, .. } => Some(format!(
                "- `{}` seed {}: {message} (`{}`)",
                entry.label,
                entry.seed,
                entry.dir.display()
            )),
            Outcome::Incomplete => Some(format!(
                "- `{}` seed {}: did not finish (`{}`)",
                entry.label,
                entry.seed,
                entry.dir.display()
            )),
        })
        .collect();
    let completed = loaded
        .runs
        .iter()
        .filter(|r| r.outcome == Outcome::Completed)
        .count();
    let planned = manifest.variants.len() * manifest.seeds.len();
    let _ = writeln!(
        out,
        "## Runs\n\n{completed} of {planned} runs completed; each has its `config.json`, \
         `metrics.jsonl` and (first seed) `trace.json` under `runs/`.",
    );
    let not_started = planned.saturating_sub(manifest.runs.len());
    if not_started > 0 {
        let _ = writeln!(
            out,
            "\n{} not started; `timeprest compare --resume` on this directory runs the runs \
             that are missing or did not finish.",
            count(not_started as u32, "run has", "runs have"),
        );
    }
    if !failed.is_empty() {
        let _ = writeln!(out, "\n{}", failed.join("\n"));
    }
}

/// The "what this shows" paragraph.
pub fn findings(summary: &Summary) -> String {
    let variants = &summary.variants;
    let mut sentences = Vec::new();
    if let Some(target) = summary.target {
        let ranked = summary.fastest_to_target();
        let missed: Vec<&str> = variants
            .iter()
            .filter(|v| v.reach.is_none())
            .map(|v| v.label.as_str())
            .collect();
        match ranked.as_slice() {
            [] => sentences.push(format!(
                "No policy reached the target of {} test accuracy.",
                percent(target.accuracy)
            )),
            [(first, reach), rest @ ..] => {
                // Ranked behind the first for reaching the target in fewer seeds, yet sooner in
                // the seeds that did: said as such, so the sentence never contradicts the table.
                let sooner: Vec<&(&VariantSummary, Reach)> = rest
                    .iter()
                    .filter(|(_, r)| r.seconds < reach.seconds)
                    .collect();
                let in_every_seed = if reach.reached == reach.of && !sooner.is_empty() {
                    " in every seed"
                } else {
                    ""
                };
                let mut sentence = format!(
                    "**{}** is the fastest to {} test accuracy{in_every_seed}: {} of pipelined \
                     training ({:.1} epochs{})",
                    first.label,
                    percent(target.accuracy),
                    time_to_target(reach),
                    reach.epochs,
                    seeds_note(reach)
                );
                if let Some((second, next)) = rest.first()
                    && next.share() == reach.share()
                {
                    let _ = write!(
                        sentence,
                        ", against {} for {}, the next fastest",
                        time_to_target(next),
                        second.label,
                    );
                }
                for (other, r) in sooner {
                    let _ = write!(
                        sentence,
                        "; {} got there sooner ({}) but only in {} of {} seeds",
                        other.label,
                        time_to_target(r),
                        r.reached,
                        r.of
                    );
                }
                if !missed.is_empty() {
                    let verb = if missed.len() == 1 { "did" } else { "do" };
                    let _ = write!(sentence, "; {} {verb} not reach it", words(&missed));
                }
                sentence.push('.');
                sentences.push(sentence);
            }
        }
    }
    let mut accurate: Vec<&VariantSummary> = variants
        .iter()
        .filter(|v| v.final_accuracy.is_some())
        .collect();
    accurate.sort_by(|a, b| final_mean(b).total_cmp(&final_mean(a)));
    if let [best, rest @ ..] = accurate.as_slice() {
        let m = best.final_accuracy.expect("filtered on a final accuracy");
        let mut sentence = format!(
            "**{}** ends the most accurate, at {} ± {:.1} final test accuracy",
            best.label,
            percent(m.mean),
            100.0 * m.sd
        );
        if let Some(second) = rest.first() {
            let gap = m.mean - final_mean(second);
            let noise = m.sd.max(second.final_accuracy.map_or(0.0, |s| s.sd));
            let _ = write!(
                sentence,
                " ({} is next at {}",
                second.label,
                percent(final_mean(second))
            );
            if gap <= noise {
                sentence.push_str(", within one standard deviation");
            }
            sentence.push(')');
        }
        sentence.push('.');
        sentences.push(sentence);
    }
    let mut memory: Vec<(&VariantSummary, u64)> = variants
        .iter()
        .filter_map(|v| v.total_weight_bytes().map(|b| (v, b)))
        .collect();
    memory.sort_by_key(|(_, bytes)| *bytes);
    if let (Some((_, low)), Some((most, high))) = (memory.first(), memory.last()) {
        let least = tied(&memory, *low);
        sentences.push(if low == high {
            format!(
                "All policies store the same weight versions ({} over all stages).",
                human_bytes(*low as f64)
            )
        } else {
            format!(
                "**{}** {} the least weight-version memory ({} over all stages, measured), {} \
                 the most ({}, {:.1}×).",
                words(&least),
                if least.len() == 1 { "needs" } else { "need" },
                human_bytes(*low as f64),
                most.label,
                human_bytes(*high as f64),
                *high as f64 / (*low).max(1) as f64
            )
        });
    }
    let mut throughput: Vec<(&VariantSummary, f64)> = variants
        .iter()
        .filter_map(|v| v.samples_per_second.map(|s| (v, s)))
        .collect();
    throughput.sort_by(|a, b| b.1.total_cmp(&a.1));
    if let (Some((fast, high)), Some((slow, low))) = (throughput.first(), throughput.last())
        && throughput.len() > 1
    {
        sentences.push(format!(
            "Throughput ranges from {high:.0} samples/s ({}) to {low:.0} samples/s ({}).",
            fast.label, slow.label
        ));
    }
    let diverged: Vec<String> = variants
        .iter()
        .filter(|v| !v.diverged.is_empty())
        .map(|v| {
            let seeds: Vec<String> = v.diverged.iter().map(|(s, _)| s.to_string()).collect();
            format!("{} (seed {})", v.label, seeds.join(", "))
        })
        .collect();
    if !diverged.is_empty() {
        sentences.push(format!(
            "Diverged (NaN or infinite loss): {}; its completed epochs are still plotted.",
            diverged.join(", ")
        ));
    }
    if sentences.is_empty() {
        return "No run produced measurements.".into();
    }
    sentences.join(" ")
}

/// The mean time to the target as the table and the sentences print it: `0.123 s`.
fn time_to_target(reach: &Reach) -> String {
    format!("{} s", seconds(reach.seconds))
}

/// ` in 2 of 3 seeds` when not every seed reached the target.
fn seeds_note(reach: &Reach) -> String {
    if reach.reached < reach.of {
        format!(", in {} of {} seeds", reach.reached, reach.of)
    } else {
        String::new()
    }
}

/// `a`, `a and b`, `a, b and c`.
fn words(items: &[&str]) -> String {
    match items {
        [] => String::new(),
        [only] => (*only).to_string(),
        [init @ .., last] => format!("{} and {last}", init.join(", ")),
    }
}

/// `1 set`, `3 sets`.
fn count(n: u32, singular: &str, plural: &str) -> String {
    format!("{n} {}", if n == 1 { singular } else { plural })
}

fn final_mean(v: &VariantSummary) -> f64 {
    v.final_accuracy.map_or(f64::NEG_INFINITY, |m| m.mean)
}

/// The labels of every variant with `bytes`.
fn tied<'a>(memory: &[(&'a VariantSummary, u64)], bytes: u64) -> Vec<&'a str> {
    memory
        .iter()
        .filter(|(_, b)| *b == bytes)
        .map(|(v, _)| v.label.as_str())
        .collect()
}

#[cfg(test)]
mod tests {

    #[test]
    fn a_grid_is_every_row_at_every_setting() {
        let labels = [
            "gpipe:lr=0.01",
            "gpipe:lr=0.05",
            "nwpt:momentum=0.5:lr=0.01",
            "nwpt:momentum=0.5:lr=0.05",
        ];
        assert_eq!(
            grid_axes(&labels),
            Some((
                vec!["gpipe", "nwpt:momentum=0.5"],
                vec!["lr=0.01", "lr=0.05"]
            ))
        );
        // Not a grid: a label without a setting, a missing cell, a single setting.
        assert_eq!(grid_axes(&["gpipe", "gpipe:lr=0.05"]), None);
        assert_eq!(
            grid_axes(&["gpipe:lr=0.01", "gpipe:lr=0.05", "nwpt:lr=0.01"]),
            None
        );
        assert_eq!(grid_axes(&["gpipe:lr=0.01", "nwpt:lr=0.01"]), None);
        assert_eq!(grid_axes(&["pipedream", "timeprest"]), None);
    }
    use super::*;
    use timeprest_policy::PolicyKind;

    use crate::record::{Run, RunEntry, Variant};
    use crate::summary::summarise;
    use crate::summary::tests::{epoch, run, sample, variant};

    fn manifest(variants: Vec<Variant>) -> Manifest {
        Manifest {
            command: "timeprest compare --policies fast,wild --out d".into(),
            target_accuracy: Some(0.75),
            seeds: vec![1, 2],
            variants,
            runs: vec![RunEntry {
                label: "wild".into(),
                seed: 2,
                dir: "runs/wild-seed2".into(),
                outcome: Outcome::Diverged {
                    epoch: 2,
                    message: "training diverged in epoch 2".into(),
                },
            }],
            checkpoint_every: 1,
            init_weights: None,
        }
    }

    #[test]
    fn the_findings_name_the_fastest_most_accurate_and_diverged_policies() {
        let text = findings(&summarise(&sample(), Some(0.75)));
        assert!(
            text.contains(
                "**fast** is the fastest to 75.0% test accuracy: 4.00 s of pipelined \
                 training (2.0 epochs, in 1 of 2 seeds); wild did not reach it."
            ),
            "{text}"
        );
        assert!(
            text.contains("**fast** ends the most accurate, at 80.0% ± 14.1"),
            "{text}"
        );
        assert!(text.contains("(wild is next at 40.0%)"), "{text}");
        assert!(
            text.contains("Diverged (NaN or infinite loss): wild (seed 2)"),
            "{text}"
        );
        assert!(
            text.contains("All policies store the same weight versions (2.9 KiB"),
            "{text}"
        );
    }

    #[test]
    fn a_policy_reaching_the_target_in_every_seed_beats_a_faster_one_reaching_it_in_fewer() {
        let mut summary = summarise(&sample(), Some(0.75));
        let reach = |reached, seconds| Reach {
            reached,
            of: 2,
            epochs: 1.0,
            seconds,
        };
        summary.variants[0].reach = Some(reach(1, 1.0));
        summary.variants[1].reach = Some(reach(2, 9.0));
        let text = findings(&summary);
        assert!(
            text.starts_with(
                "**wild** is the fastest to 75.0% test accuracy in every seed: 9.00 s of \
                 pipelined training (1.0 epochs); fast got there sooner (1.00 s) but only in 1 \
                 of 2 seeds."
            ),
            "{text}"
        );
    }

    /// A completed run of `label` whose epochs reach `accuracies`, each `seconds` long.
    fn timed_run(label: &str, seed: u64, accuracies: &[f64], seconds: f64) -> Run {
        Run {
            epochs: accuracies
                .iter()
                .enumerate()
                .map(|(i, a)| epoch(i as u32 + 1, *a, seconds))
                .collect(),
            ..run(label, seed, &[], Outcome::Completed)
        }
    }

    /// The report of `runs` over `labels`, with the target `target`.
    fn report(labels: &[&str], runs: Vec<Run>, target: f64) -> (Summary, String) {
        let loaded = Loaded {
            manifest: None,
            variants: labels
                .iter()
                .map(|label| variant(label, PolicyKind::Pipedream))
                .collect(),
            runs,
        };
        let summary = summarise(&loaded, Some(target));
        let manifest = manifest(loaded.variants.clone());
        let text = render(&manifest, &loaded, &summary, &[], Path::new("d"));
        (summary, text)
    }

    /// The "time to target" cell of each policy's row in the results table.
    fn time_cells(text: &str, labels: &[&str]) -> Vec<String> {
        labels
            .iter()
            .map(|label| {
                let row = text
                    .lines()
                    .find(|l| l.starts_with(&format!("| {label} | ")))
                    .unwrap_or_else(|| panic!("no row for {label}:\n{text}"));
                row.split('|').map(str::trim).nth(7).unwrap().to_string()
            })
            .collect()
    }

    #[test]
    fn the_fastest_policy_in_the_sentence_has_the_smallest_time_in_the_table() {
        // `accurate` is listed first and ends the most accurate; `few-epochs` needs the fewest
        // epochs; `quick` has the smallest time to 60%, which is what "fastest" means.
        let labels = ["accurate", "few-epochs", "quick"];
        let mut runs = Vec::new();
        for seed in 1..=3 {
            let slower = 1.0 + 0.1 * seed as f64;
            runs.push(timed_run("accurate", seed, &[0.3, 0.5, 0.7, 0.9], slower));
            runs.push(timed_run(
                "few-epochs",
                seed,
                &[0.61, 0.65, 0.7],
                2.0 * slower,
            ));
            runs.push(timed_run(
                "quick",
                seed,
                &[0.2, 0.4, 0.5, 0.62],
                0.25 * slower,
            ));
        }
        let (summary, text) = report(&labels, runs, 0.6);
        let cells = time_cells(&text, &labels);
        let number = |cell: &str| -> f64 {
            let plain = cell.trim_matches('*').trim_end_matches(" s");
            plain
                .parse()
                .unwrap_or_else(|_| panic!("not a time: {cell}"))
        };
        let smallest = (0..labels.len())
            .min_by(|&a, &b| number(&cells[a]).total_cmp(&number(&cells[b])))
            .unwrap();
        assert_eq!(labels[smallest], "quick", "{cells:?}");
        assert_eq!(
            cells[smallest], "**1.20 s**",
            "the fastest is bold: {cells:?}"
        );
        let findings = findings(&summary);
        assert!(
            findings.starts_with(&format!(
                "**quick** is the fastest to 60.0% test accuracy: {} of pipelined training \
                 (4.0 epochs), against {} for few-epochs, the next fastest.",
                cells[smallest].trim_matches('*'),
                cells[1]
            )),
            "{findings}\n{cells:?}"
        );
        assert!(
            findings.contains("**accurate** ends the most accurate"),
            "{findings}"
        );
    }

    #[test]
    fn a_policy_faster_in_fewer_seeds_is_named_with_its_table_time_not_called_slower() {
        // As measured: every seed of timeprest reached 61.2% in 0.123 s; pipedream got there in
        // 0.0571 s in two seeds and never in the third.
        let labels = ["timeprest", "pipedream"];
        let mut runs = Vec::new();
        for seed in 1..=3 {
            runs.push(timed_run("timeprest", seed, &[0.3, 0.5, 0.62], 0.041));
            let pipedream = if seed < 3 { [0.62, 0.7] } else { [0.4, 0.5] };
            runs.push(timed_run("pipedream", seed, &pipedream, 0.0571));
        }
        let (summary, text) = report(&labels, runs, 0.612);
        let cells = time_cells(&text, &labels);
        assert_eq!(cells, ["**0.123 s**", "0.0571 s (2/3 seeds)"]);
        let findings = findings(&summary);
        assert!(
            findings.starts_with(
                "**timeprest** is the fastest to 61.2% test accuracy in every seed: 0.123 s of \
                 pipelined training (3.0 epochs); pipedream got there sooner (0.0571 s) but only \
                 in 2 of 3 seeds."
            ),
            "{findings}"
        );
    }

    #[test]
    fn the_configuration_names_the_policies_with_another_number_of_stages() {
        let mut variants = sample().variants;
        let mut single = variants[0].clone();
        single.label = "single:stages=1".into();
        single.config.pipeline.num_stages = 1;
        variants.insert(0, single);
        let pipeline = variants[1].config.pipeline.num_stages;
        assert_eq!(
            stages_text(&manifest(variants)),
            format!("W = {pipeline} stages (single:stages=1: W = 1)")
        );
        assert_eq!(
            stages_text(&manifest(sample().variants)),
            format!("W = {pipeline} stages")
        );
    }

    #[test]
    fn lists_and_counts_read_as_english() {
        assert_eq!(words(&["a"]), "a");
        assert_eq!(words(&["a", "b", "c"]), "a, b and c");
        assert_eq!(count(1, "set", "sets"), "1 set");
        assert_eq!(count(3, "micro-batch", "micro-batches"), "3 micro-batches");
    }

    #[test]
    fn a_report_has_the_command_a_row_per_policy_and_the_failed_runs() {
        let loaded = sample();
        let summary = summarise(&loaded, Some(0.75));
        let manifest = manifest(loaded.variants.clone());
        let text = render(&manifest, &loaded, &summary, &[], Path::new("d"));
        assert!(text.contains("```sh\ntimeprest compare --policies fast,wild --out d\n```"));
        let row = |label: &str| {
            text.lines()
                .find(|l| l.starts_with(&format!("| {label} | ")))
                .unwrap_or_else(|| panic!("no row for {label}:\n{text}"))
                .to_string()
        };
        assert!(row("fast").contains(
            "| 2/2 completed | 80.0% ± 14.1 | 90.0% | 2.0 (1/2 seeds) | **4.00 s** (1/2 seeds) | 2.00 |"
        ));
        assert!(row("wild").contains("1/2 completed, seed 2 **diverged** (epoch 2)"));
        assert!(row("wild").contains("not reached"));
        assert!(text.contains("- `wild` seed 2: training diverged in epoch 2 (`runs/wild-seed2`)"));
        assert_eq!(
            text.matches("| fast | ").count(),
            1 + 2,
            "results + two stages"
        );
    }
}
