//! End-to-end `timeprest compare` and `timeprest plot` runs on the embedded digits data.

use std::path::Path;
use std::process::Output;

mod common;

use common::{succeed, timeprest};

/// The plots every comparison gets, as file stems in `DIR/plots/`.
const PLOTS: [&str; 6] = [
    "accuracy-vs-epoch",
    "accuracy-vs-time",
    "loss-vs-epoch",
    "memory-per-stage",
    "staleness-per-stage",
    "timeline",
];

/// `timeprest compare` on a small digits problem (400 training samples, 2 epochs, 3 stages).
fn compare(out: &Path, policies: &str, seeds: &str) -> Output {
    let output = timeprest(&[
        "compare",
        "--policies",
        policies,
        "--seeds",
        seeds,
        "--epochs",
        "2",
        "--limit-train",
        "400",
        "--limit-test",
        "200",
        "--target-accuracy",
        "0.5",
        "--quiet",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(
        output.status.success(),
        "compare failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

fn json(path: &Path) -> serde_json::Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{} is not JSON: {e}", path.display()))
}

fn assert_valid_plots(plots: &Path, names: &[&str]) {
    for name in names {
        let svg = std::fs::read_to_string(plots.join(format!("{name}.svg"))).unwrap();
        assert!(
            svg.starts_with("<svg") || svg.starts_with("<?xml"),
            "{name}.svg does not start like an SVG"
        );
        assert!(svg.contains("</svg>"), "{name}.svg is not closed");
        assert!(svg.contains("<text"), "{name}.svg has no text");
        let png = std::fs::read(plots.join(format!("{name}.png"))).unwrap();
        assert!(
            png.starts_with(b"\x89PNG\r\n\x1a\n"),
            "{name}.png lacks the PNG signature"
        );
        assert!(png.len() > 10_000, "{name}.png is only {} bytes", png.len());
    }
}

/// The row of `policy` in the results table of `report`.
fn results_row<'a>(report: &'a str, policy: &str) -> &'a str {
    let table = report
        .split("## Results per policy")
        .nth(1)
        .expect("the report has a results table");
    table
        .lines()
        .find(|line| line.starts_with(&format!("| {policy} |")))
        .unwrap_or_else(|| panic!("no results row for {policy} in:\n{report}"))
}

fn assert_trace_has_a_track_per_stage(path: &Path, stages: usize) {
    let trace = json(path);
    let events = trace["traceEvents"].as_array().unwrap();
    let tracks = events
        .iter()
        .filter(|e| e["ph"] == "M" && e["name"] == "thread_name")
        .count();
    assert_eq!(
        tracks,
        stages,
        "{}: one thread_name per stage",
        path.display()
    );
    assert!(
        events
            .iter()
            .any(|e| e["ph"] == "X" && e["cat"] == "backward")
    );
}

#[test]
fn a_small_comparison_writes_the_report_every_plot_and_the_first_seeds_traces() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("cmp");
    let output = compare(&out, "gpipe,pipedream", "1,2");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(stdout.matches("final test accuracy").count(), 4, "{stdout}");

    let report = std::fs::read_to_string(out.join("report.md")).unwrap();
    assert!(report.contains("timeprest compare --policies gpipe,pipedream --seeds 1,2"));
    assert!(report.contains("## What this shows"));
    for policy in ["gpipe", "pipedream"] {
        let row = results_row(&report, policy);
        assert!(row.contains("2/2 completed"), "{row}");
        assert!(row.contains(" ± "), "{row}: final accuracy as mean ± sd");
    }
    assert!(
        results_row(&report, "gpipe").contains("gpipe (3)"),
        "GPipe runs N = 3"
    );
    assert!(
        results_row(&report, "pipedream").contains("1f1b (1)"),
        "PipeDream runs N = 1"
    );
    for name in PLOTS {
        assert!(
            report.contains(&format!("](plots/{name}.png)")),
            "{name} is not embedded"
        );
    }
    assert_valid_plots(&out.join("plots"), &PLOTS);

    let manifest = json(&out.join("comparison.json"));
    let runs = manifest["runs"].as_array().unwrap();
    assert_eq!(runs.len(), 4);
    assert!(runs.iter().all(|r| r["outcome"]["status"] == "completed"));
    for run in [
        "gpipe-seed1",
        "pipedream-seed1",
        "gpipe-seed2",
        "pipedream-seed2",
    ] {
        let run_dir = out.join("runs").join(run);
        let lines = std::fs::read_to_string(run_dir.join("metrics.jsonl")).unwrap();
        assert_eq!(
            lines.lines().count(),
            2,
            "{run}: one metrics line per epoch"
        );
        let config = json(&run_dir.join("config.json"));
        assert_eq!(config["seed"], if run.ends_with('1') { 1 } else { 2 });
        assert_eq!(
            run_dir.join("trace.json").exists(),
            run.ends_with("seed1"),
            "{run}"
        );
    }
    assert_trace_has_a_track_per_stage(&out.join("runs/pipedream-seed1/trace.json"), 3);

    // PipeDream stashes W − s versions; GPipe keeps one. Measured equals predicted.
    let memory = report
        .split("## Memory and staleness per stage")
        .nth(1)
        .unwrap();
    let stage0 = |policy: &str| {
        memory
            .lines()
            .find(|l| l.starts_with(&format!("| {policy} | 0 |")))
            .unwrap()
            .to_string()
    };
    assert_eq!(
        stage0("pipedream").matches("(3 sets)").count(),
        2,
        "{}",
        stage0("pipedream")
    );
    assert_eq!(
        stage0("gpipe").matches("(1 set)").count(),
        2,
        "{}",
        stage0("gpipe")
    );

    // `plot` rebuilds everything from the directory.
    std::fs::remove_dir_all(out.join("plots")).unwrap();
    std::fs::remove_file(out.join("report.md")).unwrap();
    let output = timeprest(&["plot", out.to_str().unwrap()]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_valid_plots(&out.join("plots"), &PLOTS);
    let rebuilt = std::fs::read_to_string(out.join("report.md")).unwrap();
    assert_eq!(rebuilt, report, "plot rebuilds the same report");

    // A single run directory gets the plots of that run only.
    let single = out.join("runs/gpipe-seed1");
    let output = timeprest(&["plot", single.to_str().unwrap()]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_valid_plots(&single.join("plots"), &PLOTS);
    assert!(!single.join("report.md").exists());
}

#[test]
fn a_diverging_policy_is_recorded_as_diverged_while_the_other_completes() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("cmp");
    let output = compare(&out, "gpipe,pipedream:lr=1e6:momentum=0", "1");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        stdout.contains("pipedream:lr=1e6:momentum=0 seed 1: training diverged"),
        "{stdout}"
    );

    let manifest = json(&out.join("comparison.json"));
    let outcome = |label: &str| {
        manifest["runs"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["label"] == label)
            .unwrap()["outcome"]
            .clone()
    };
    assert_eq!(outcome("gpipe")["status"], "completed");
    assert_eq!(outcome("pipedream:lr=1e6:momentum=0")["status"], "diverged");

    let report = std::fs::read_to_string(out.join("report.md")).unwrap();
    let diverged = results_row(&report, "pipedream:lr=1e6:momentum=0");
    assert!(
        diverged.contains("**diverged**") && diverged.contains("0/1 completed"),
        "{diverged}"
    );
    assert!(results_row(&report, "gpipe").contains("1/1 completed"));
    assert!(report.contains("Diverged (NaN or infinite loss): pipedream:lr=1e6:momentum=0"));
    let config = json(&out.join("runs/pipedream-lr-1e6-momentum-0-seed1/config.json"));
    assert_eq!(config["lr"], 1e6);
    assert_valid_plots(&out.join("plots"), &PLOTS);
}

#[test]
fn bad_compare_flags_exit_2_with_one_error_line_naming_the_flag() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("cmp");
    let out = out.to_str().unwrap();
    let cases: [(&[&str], &str); 7] = [
        (&["--policies", "bogus"], "--policies"),
        (&["--seeds", "x"], "--seeds"),
        (&["--policies", "gpipe:speed=2"], "unknown key `speed`"),
        (&["--policies", "gpipe,gpipe"], "listed twice"),
        (
            &["--policy", "gpipe"],
            "--policy: compare runs every policy",
        ),
        (&["--target-accuracy", "90"], "--target-accuracy"),
        (
            &["--policies", "nwpt", "--momentum", "0"],
            "--policies nwpt",
        ),
    ];
    for (flags, expected) in cases {
        let mut args = vec!["compare", "--epochs", "1", "--out", out];
        args.extend_from_slice(flags);
        let output = timeprest(&args);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{flags:?}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "{flags:?}: {stderr}");
        assert!(stderr.starts_with("error:"), "{flags:?}: {stderr}");
        assert!(
            stderr.contains(expected),
            "{flags:?}: `{expected}` not in {stderr}"
        );
    }
    assert!(
        !Path::new(out).exists(),
        "nothing is written when a flag is wrong"
    );
    let missing_out = timeprest(&["compare", "--epochs", "1"]);
    assert_eq!(missing_out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&missing_out.stderr).contains("--out"));
}

#[test]
fn plot_on_a_directory_that_is_no_comparison_or_run_exits_2() {
    let dir = tempfile::tempdir().unwrap();
    let output = timeprest(&["plot", dir.path().to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains("neither a comparison directory"),
        "{stderr}"
    );
}

#[test]
fn a_grid_reports_every_policy_at_every_value_with_its_spread_over_seeds() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("grid");
    succeed(&[
        "compare",
        "--policies",
        "gpipe,timeprest",
        "--grid",
        "lr=0.01,0.04",
        "--seeds",
        "1,2",
        "--epochs",
        "1",
        "--limit-train",
        "128",
        "--limit-test",
        "64",
        "--quiet",
        "--out",
        out.to_str().unwrap(),
    ]);
    let manifest = json(&out.join("comparison.json"));
    let variants = manifest["variants"].as_array().unwrap();
    let labels: Vec<&str> = variants
        .iter()
        .map(|v| v["label"].as_str().unwrap())
        .collect();
    assert_eq!(
        labels,
        [
            "gpipe:lr=0.01",
            "gpipe:lr=0.04",
            "timeprest:lr=0.01",
            "timeprest:lr=0.04"
        ]
    );
    let rates: Vec<f64> = variants
        .iter()
        .map(|v| v["config"]["lr"].as_f64().unwrap())
        .collect();
    assert_eq!(rates, [0.01, 0.04, 0.01, 0.04]);
    let report = std::fs::read_to_string(out.join("report.md")).unwrap();
    for label in labels {
        assert!(
            results_row(&report, label).contains("2/2 completed"),
            "{label}: {report}"
        );
    }
    let grid = report
        .split("## Final test accuracy by setting")
        .nth(1)
        .unwrap_or_else(|| panic!("no grid table in:\n{report}"));
    assert!(grid.contains("| policy | lr=0.01 | lr=0.04 |"), "{grid}");
    for policy in ["gpipe", "timeprest"] {
        let row = grid
            .lines()
            .find(|line| line.starts_with(&format!("| {policy} |")))
            .unwrap_or_else(|| panic!("no grid row for {policy}: {grid}"));
        assert_eq!(row.matches(" ± ").count(), 2, "{row}");
    }
}

#[test]
fn each_policy_gets_the_recipe_of_its_own_settings_and_the_flags_win() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("recipes");
    succeed(&[
        "compare",
        "--policies",
        "gpipe,gpipe:optimizer=adam,gpipe:model=lenet5",
        "--dataset",
        "fashion-mnist",
        "--weight-decay",
        "0",
        "--seeds",
        "1",
        "--epochs",
        "1",
        "--limit-train",
        "64",
        "--limit-test",
        "32",
        "--quiet",
        "--out",
        out.to_str().unwrap(),
    ]);
    let manifest = json(&out.join("comparison.json"));
    let field = |key: &str| -> Vec<f64> {
        manifest["variants"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v["config"][key].as_f64().unwrap())
            .collect()
    };
    // The MLP's rate, Adam's, lenet5's; the given --weight-decay 0 for all three.
    assert_eq!(field("lr"), [0.02, 0.001, 0.01]);
    assert_eq!(field("weight_decay"), [0.0, 0.0, 0.0]);
}
