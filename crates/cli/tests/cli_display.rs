//! End-to-end checks of what a user reads: the per-epoch lines of `train` and the report and
//! plots that `plot` writes for a comparison.

use std::path::Path;

mod common;

use common::succeed;
use timeprest_report::{Manifest, Outcome, RunEntry, Variant};
use timeprest_train::{EpochMetrics, StageMetrics, TrainConfig};

/// The widest a per-epoch line may be.
const COLUMNS: usize = 100;

/// Asserts that every `epoch` line of `stdout` fits in [`COLUMNS`] and says `unit`; returns
/// how many there are.
fn assert_epoch_lines_fit(stdout: &str, unit: &str) -> usize {
    let lines: Vec<&str> = stdout.lines().filter(|l| l.starts_with("epoch")).collect();
    for line in &lines {
        let width = line.chars().count();
        assert!(width <= COLUMNS, "{width} columns: {line}");
        assert!(line.contains(unit), "{line}");
    }
    lines.len()
}

#[test]
fn the_epoch_lines_of_a_four_stage_run_fit_in_a_hundred_columns() {
    let stdout = succeed(&[
        "train",
        "--hidden",
        "64,32,16",
        "--stages",
        "4",
        "--policy",
        "pipedream",
        "--limit-train",
        "64",
        "--limit-test",
        "32",
        "--epochs",
        "2",
        "--quiet",
    ]);
    assert_eq!(assert_epoch_lines_fit(&stdout, " samples/s"), 2, "{stdout}");
    // The per-stage figures that no longer fit on every line close the run, one per stage.
    let stages = stdout
        .lines()
        .find_map(|l| l.strip_prefix("per stage: mean staleness d ["))
        .unwrap_or_else(|| panic!("no per-stage line in {stdout}"));
    let staleness = stages.split(']').next().unwrap();
    assert_eq!(staleness.split(' ').count(), 4, "{stdout}");
}

#[test]
fn the_epoch_lines_of_a_language_model_with_perplexity_fit_in_a_hundred_columns() {
    let dir = tempfile::tempdir().unwrap();
    let text = dir.path().join("corpus.txt");
    std::fs::write(
        &text,
        "the quick brown fox jumps over the lazy dog. ".repeat(40),
    )
    .unwrap();
    let dataset = format!("text:{}", text.display());
    let stdout = succeed(&[
        "train",
        "--model",
        "gpt",
        "--dataset",
        &dataset,
        "--seq-len",
        "16",
        "--embed-dim",
        "16",
        "--heads",
        "2",
        "--depth",
        "4",
        "--stages",
        "4",
        "--batch-size",
        "8",
        "--epochs",
        "1",
        "--quiet",
    ]);
    assert_eq!(assert_epoch_lines_fit(&stdout, " tok/s"), 1, "{stdout}");
    assert!(stdout.contains(" ppl "), "{stdout}");
}

/// An epoch reaching `accuracy` after `seconds` of training, on two stages.
fn epoch(epoch: u32, accuracy: f64, seconds: f64) -> EpochMetrics {
    let stage = |stage| StageMetrics {
        stage,
        staleness: [(1 - u64::from(stage), 4)].into_iter().collect(),
        mean_staleness: f64::from(1 - stage),
        peak_weight_sets: 2 - stage,
        peak_weight_bytes: 1000,
        peak_activation_bytes: 0,
        busy_seconds: seconds / 2.0,
        utilisation: 0.5,
        bytes_sent: 10,
    };
    EpochMetrics {
        epoch,
        train_loss: 2.0 - accuracy,
        train_accuracy: accuracy,
        test_loss: 2.0 - accuracy,
        test_accuracy: accuracy,
        epoch_seconds: seconds,
        samples_per_second: 64.0 / seconds,
        num_minibatches: 2,
        lr: 0.05,
        simulated_seconds: 0.0,
        stages: vec![stage(0), stage(1)],
    }
}

/// Writes a comparison directory as `compare` leaves it: per policy and seed, the test
/// accuracy of each epoch and the seconds of every epoch.
fn write_comparison(dir: &Path, target: f64, runs: &[(&str, u64, &[f64], f64)]) {
    let config = {
        let mut config = TrainConfig::default();
        config.optimisation.epochs = 3;
        config.pipeline.num_stages = 2;
        config
    };
    let mut labels: Vec<&str> = runs.iter().map(|r| r.0).collect();
    labels.dedup();
    let mut manifest = Manifest {
        command: "timeprest compare --out cmp".into(),
        target_accuracy: Some(target),
        seeds: vec![1, 2, 3],
        variants: labels
            .iter()
            .map(|label| Variant {
                label: label.to_string(),
                config: config.clone(),
                prediction: None,
            })
            .collect(),
        runs: Vec::new(),
        checkpoint_every: 0,
        init_weights: None,
    };
    for &(label, seed, accuracies, seconds) in runs {
        let run_dir = Path::new("runs").join(format!("{label}-seed{seed}"));
        std::fs::create_dir_all(dir.join(&run_dir)).unwrap();
        let config = {
            let mut config = config.clone();
            config.run.seed = seed;
            config
        };
        std::fs::write(
            dir.join(&run_dir).join("config.json"),
            serde_json::to_string(&config).unwrap(),
        )
        .unwrap();
        let metrics: Vec<String> = accuracies
            .iter()
            .enumerate()
            .map(|(i, a)| serde_json::to_string(&epoch(i as u32 + 1, *a, seconds)).unwrap())
            .collect();
        std::fs::write(
            dir.join(&run_dir).join("metrics.jsonl"),
            metrics.join("\n") + "\n",
        )
        .unwrap();
        manifest.runs.push(RunEntry {
            label: label.into(),
            seed,
            dir: run_dir,
            outcome: Outcome::Completed,
        });
    }
    manifest.save(dir).unwrap();
}

#[test]
fn the_reports_fastest_policy_is_the_one_its_table_shows_and_the_plots_shade_the_seeds() {
    // As measured: every seed of timeprest reaches 61.2% in 0.123 s; pipedream gets there in
    // 0.0571 s in two seeds and never in the third.
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path();
    write_comparison(
        out,
        0.612,
        &[
            ("timeprest", 1, &[0.3, 0.5, 0.62], 0.041),
            ("timeprest", 2, &[0.35, 0.55, 0.65], 0.041),
            ("timeprest", 3, &[0.3, 0.6, 0.7], 0.041),
            ("pipedream", 1, &[0.62, 0.7, 0.72], 0.0571),
            ("pipedream", 2, &[0.63, 0.66, 0.7], 0.0571),
            ("pipedream", 3, &[0.4, 0.5, 0.55], 0.0571),
        ],
    );
    succeed(&["plot", out.to_str().unwrap()]);
    let report = std::fs::read_to_string(out.join("report.md")).unwrap();
    let time_cell = |policy: &str| {
        let row = report
            .lines()
            .find(|l| l.starts_with(&format!("| {policy} | ")))
            .unwrap_or_else(|| panic!("no row for {policy}:\n{report}"));
        row.split('|').map(str::trim).nth(7).unwrap().to_string()
    };
    assert_eq!(time_cell("timeprest"), "**0.123 s**", "{report}");
    assert_eq!(time_cell("pipedream"), "0.0571 s (2/3 seeds)", "{report}");
    assert!(
        report.contains(
            "**timeprest** is the fastest to 61.2% test accuracy in every seed: 0.123 s of \
             pipelined training (3.0 epochs); pipedream got there sooner (0.0571 s) but only in \
             2 of 3 seeds."
        ),
        "{report}"
    );
    for plot in ["accuracy-vs-epoch", "accuracy-vs-time"] {
        let svg = std::fs::read_to_string(out.join("plots").join(format!("{plot}.svg"))).unwrap();
        assert!(
            svg.contains("band: min–max"),
            "{plot}: the title names the band"
        );
        // One see-through band per policy, in its colour (timeprest first, pipedream second).
        for colour in ["#1F77B4", "#FF7F0E"] {
            assert!(
                svg.lines().any(|l| l.trim_start().starts_with("<polygon")
                    && l.contains(&format!("fill=\"{colour}\""))
                    && l.contains("opacity=\"0.2\"")),
                "{plot}: no band in {colour}"
            );
        }
    }
}
