//! End-to-end tests of `timeprest simulate` and `timeprest analyze`: the grid contract
//! (`docs/algorithms.md` §2.8), the SVG / Chrome-trace / JSON outputs, the version analyses
//! (`docs/algorithms.md` §3.5, §3.10), and the error contract (one `error:` line, exit code 2,
//! no panic).

use serde_json::Value;

mod common;

use common::{succeed, timeprest};

/// The W=4, N=2 nF1B grid of `docs/algorithms.md` §2.8 (the paper's Fig. 2a), first 16 slots.
const SPEC_W4_N2: &str = "
S1:  1A  1B  2A  2B  3A  3B  4A  4B  B1  5A  5B  B2  6A  6B  B3  7A
S2:   .  1A  1B  2A  2B  3A  3B  B1  4A  4B  B2  5A  5B  B3  6A  6B
S3:   .   .  1A  1B  2A  2B  B1  3A  3B  B2  4A  4B  B3  5A  5B  B4
S4:   .   .   .  1A  1B  B1  2A  2B  B2  3A  3B  B3  4A  4B  B4  5A
";

/// Runs `timeprest args…` and parses stdout as JSON.
fn json_of(args: &[&str]) -> Value {
    serde_json::from_str(&succeed(args)).expect("stdout is JSON")
}

/// Whitespace-split tokens of every non-empty line.
fn tokens(text: &str) -> Vec<Vec<String>> {
    text.lines()
        .filter(|line| !line.trim().is_empty())
        .map(|line| line.split_whitespace().map(str::to_string).collect())
        .collect()
}

/// The `simulate` arguments of the W=4, N=2 nF1B schedule with 8 mini-batches.
const NF1B_W4_N2: [&str; 9] = [
    "simulate",
    "--schedule",
    "nf1b",
    "--stages",
    "4",
    "--microbatches",
    "2",
    "--minibatches",
    "8",
];

/// `NF1B_W4_N2` followed by `extra`.
fn nf1b_w4_n2(extra: &[&'static str]) -> Vec<&'static str> {
    NF1B_W4_N2.iter().chain(extra).copied().collect()
}

#[test]
fn nf1b_w4_n2_grid_equals_the_documented_grid_token_by_token() {
    let grid = succeed(&nf1b_w4_n2(&["--slots", "16"]));
    assert_eq!(tokens(&grid), tokens(SPEC_W4_N2), "got:\n{grid}");
}

#[test]
fn slots_cut_the_grid_and_the_policy_report_follows_an_unchanged_grid() {
    let full = succeed(&nf1b_w4_n2(&[]));
    let cut = succeed(&nf1b_w4_n2(&["--slots", "5"]));
    assert!(tokens(&cut).iter().all(|line| line.len() == 1 + 5), "{cut}");
    assert!(tokens(&full)[0].len() > 1 + 16, "{full}");
    for (cut_line, full_line) in tokens(&cut).iter().zip(tokens(&full)) {
        assert_eq!(cut_line[..], full_line[..6]);
    }

    let with_policy = succeed(&nf1b_w4_n2(&["--slots", "5", "--policy", "timeprest"]));
    assert!(with_policy.starts_with(&cut), "{with_policy}");
    assert!(with_policy.contains("stored versions"), "{with_policy}");
    assert!(!full.contains("stored versions"));
}

#[test]
fn svg_output_is_a_complete_document_also_when_written_to_a_file() {
    let svg = succeed(&nf1b_w4_n2(&["--format", "svg"]));
    assert!(svg.starts_with("<svg"), "{}", &svg[..svg.len().min(200)]);
    assert!(svg.trim_end().ends_with("</svg>"));
    assert_eq!(svg.matches("<svg").count(), 1);

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("nf1b.svg");
    let path_arg = path.to_str().unwrap();
    let mut args = nf1b_w4_n2(&["--format", "svg", "--forward-seconds", "0.5"]);
    args.extend(["--output", path_arg]);
    assert!(succeed(&args).is_empty());
    let written = std::fs::read_to_string(&path).unwrap();
    assert!(written.starts_with("<svg") && written.trim_end().ends_with("</svg>"));
    assert!(
        written.contains("time (s)"),
        "a cost-model timeline is in seconds"
    );
}

#[test]
fn chrome_trace_is_json_with_trace_events_for_slots_and_for_a_cost_model() {
    for extra in [
        &[][..],
        &["--backward-seconds", "2", "--transfer-seconds", "0.25"][..],
    ] {
        let mut args = nf1b_w4_n2(&["--format", "chrome-trace"]);
        args.extend(extra);
        let trace = json_of(&args);
        let events = trace["traceEvents"].as_array().expect("traceEvents array");
        assert!(events.iter().any(|e| e["ph"] == "X"), "{extra:?}");
    }
}

#[test]
fn json_output_has_the_schedule_timeline_figures_and_traced_versions() {
    let plain = json_of(&nf1b_w4_n2(&["--format", "json"]));
    assert_eq!(plain["schedule"]["kind"], "nf1b");
    assert_eq!(plain["schedule"]["stages"].as_array().unwrap().len(), 4);
    assert!(plain["timeline"]["makespan"].as_f64().unwrap() > 0.0);
    let bubble = plain["timeline"]["bubble_fraction"].as_f64().unwrap();
    assert!((0.0..1.0).contains(&bubble));
    assert_eq!(
        plain["timeline"]["utilisation"].as_array().unwrap().len(),
        4
    );
    assert!(plain["versions"].is_null());

    let traced = json_of(&nf1b_w4_n2(&["--format", "json", "--policy", "timeprest"]));
    assert_eq!(
        traced["versions"]["stored_versions"],
        serde_json::json!([1, 2, 3, 4])
    );
    assert_eq!(traced["versions"]["staleness"].as_array().unwrap().len(), 4);
}

#[test]
fn version_difference_json_reproduces_the_documented_table() {
    let rows = json_of(&[
        "analyze",
        "version-difference",
        "--stages",
        "2..8",
        "--microbatches",
        "2..7",
        "--format",
        "json",
    ]);
    let rows = rows.as_array().expect("an array");
    assert_eq!(rows.len(), 42);
    let at = |row: &Value| {
        (
            row["stages"].as_u64().unwrap(),
            row["microbatches"].as_u64().unwrap(),
        )
    };
    let mismatches: Vec<(u64, u64)> = rows
        .iter()
        .filter(|row| row["v_simulated"] != row["v_formula"])
        .map(at)
        .collect();
    assert_eq!(mismatches, [(6, 2), (8, 2), (8, 3)]);
    let w4_n2 = rows.iter().find(|row| at(row) == (4, 2)).unwrap();
    assert_eq!(w4_n2["multiple_sequences"], true);
    assert_eq!(w4_n2["v_simulated"], 2);
    assert!(
        w4_n2["chains"][0].as_array().unwrap().len() > 4,
        "json chains are not cut"
    );
    let w4_n4 = rows.iter().find(|row| at(row) == (4, 4)).unwrap();
    assert_eq!(w4_n4["multiple_sequences"], false);
}

#[test]
fn version_difference_table_marks_formula_mismatches() {
    let table = succeed(&[
        "analyze",
        "version-difference",
        "--stages",
        "6",
        "--microbatches",
        "2..3",
    ]);
    let rows = tokens(&table);
    assert_eq!(rows[1][..4], ["6", "2", "2", "3"]);
    assert_eq!(rows[1][4], "*");
    assert_eq!(rows[2][..5], ["6", "3", "2", "2", "multiple"]);
    assert!(table.lines().last().unwrap().starts_with('*'), "{table}");
}

#[test]
fn analyze_versions_reports_timeprest_w4_n2_storing_one_to_four_versions() {
    let args = [
        "analyze",
        "versions",
        "--policy",
        "timeprest",
        "--stages",
        "4",
        "--microbatches",
    ];
    let mut json_args = args.to_vec();
    json_args.extend(["2", "--format", "json"]);
    let summary = json_of(&json_args);
    assert_eq!(summary["schedule"], "nf1b", "the policy's default schedule");
    assert_eq!(summary["stored_versions"], serde_json::json!([1, 2, 3, 4]));
    assert_eq!(summary["steady_minibatches"], serde_json::json!([11, 30]));
    assert_eq!(summary["steady_staleness"].as_array().unwrap().len(), 4);

    let mut table_args = args.to_vec();
    table_args.push("3");
    let table = succeed(&table_args);
    let stored: Vec<String> = tokens(&table)[2..]
        .iter()
        .map(|row| row[1].clone())
        .collect();
    assert_eq!(
        stored,
        ["1", "2", "3", "3"],
        "docs/algorithms.md §3.10, W=4 N=3:\n{table}"
    );
}

#[test]
fn user_errors_print_one_error_line_and_exit_with_code_2() {
    let simulate = |extra: &[&'static str]| {
        let mut args = vec![
            "simulate",
            "--stages",
            "4",
            "--microbatches",
            "2",
            "--minibatches",
            "4",
        ];
        args.extend(extra);
        args
    };
    let cases: Vec<(Vec<&str>, &[&str])> = vec![
        (
            vec![
                "simulate",
                "--schedule",
                "nf1b",
                "--stages",
                "0",
                "--microbatches",
                "2",
                "--minibatches",
                "4",
            ],
            &["--stages", "at least 1"],
        ),
        (
            simulate(&["--schedule", "bogus"]),
            &["bogus", "naive", "gpipe", "1f1b-flush", "nf1b"],
        ),
        (
            simulate(&["--policy", "bogus"]),
            &["bogus", "timeprest", "pipedream"],
        ),
        (
            vec!["analyze", "version-difference", "--stages", "5..2"],
            &["--stages", "5..2"],
        ),
        (
            simulate(&["--policy", "gpipe", "--schedule", "nf1b"]),
            &["gpipe", "nf1b", "1f1b-flush"],
        ),
        (
            simulate(&["--schedule", "nf1b", "--staleness", "minibatch-max"]),
            &["--policy"],
        ),
        (
            simulate(&["--policy", "timeprest", "--update-base", "intermediate"]),
            &["--update-base", "i-timeprest"],
        ),
        (
            simulate(&["--schedule", "nf1b", "--output", "/dev/null/x.txt"]),
            &["--output /dev/null/x.txt: /dev/null: it is a character device"],
        ),
    ];
    for (args, mentions) in cases {
        let output = timeprest(&args);
        let stderr = String::from_utf8(output.stderr).unwrap();
        assert_eq!(output.status.code(), Some(2), "{args:?}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "{args:?}: {stderr}");
        assert!(stderr.starts_with("error:"), "{args:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
        for word in mentions {
            assert!(
                stderr.contains(word),
                "{args:?} should mention {word}: {stderr}"
            );
        }
        assert!(output.stdout.is_empty(), "{args:?}");
    }
}

#[test]
fn help_teaches_every_subcommand() {
    let help = succeed(&["--help"]);
    for word in ["simulate", "analyze", "train", "Examples:", "weight policy"] {
        assert!(help.contains(word), "--help should mention {word}:\n{help}");
    }
}

#[test]
fn recomputing_activations_keeps_forward_versions_and_lengthens_every_backward() {
    let versions = |extra: &[&str]| {
        let args = [
            &[
                "analyze",
                "versions",
                "--policy",
                "v-timeprest",
                "--stages",
                "4",
                "--microbatches",
                "3",
                "--format",
                "json",
            ],
            extra,
        ]
        .concat();
        json_of(&args)["stored_versions"].clone()
    };
    // V-TiMePReSt's backward reads the live weights, but a re-run forward needs the ones the
    // forward read: the stash of I-TiMePReSt, [3, 3, 2, 1] (`docs/algorithms.md` §3.10).
    assert_eq!(versions(&[]), serde_json::json!([1, 1, 1, 1]));
    assert_eq!(
        versions(&["--recompute-activations"]),
        serde_json::json!([3, 3, 2, 1])
    );
    let makespan = |extra: &[&str]| {
        let args = [
            &[
                "simulate",
                "--schedule",
                "gpipe",
                "--stages",
                "1",
                "--microbatches",
                "4",
                "--minibatches",
                "1",
                "--forward-seconds",
                "1",
                "--backward-seconds",
                "3",
                "--format",
                "json",
            ],
            extra,
        ]
        .concat();
        json_of(&args)["timeline"]["makespan"].as_f64().unwrap()
    };
    assert_eq!(makespan(&[]), 16.0);
    assert_eq!(makespan(&["--recompute-activations"]), 20.0);
}

/// A policy option traced by `analyze versions` is the option `train` runs: TiMePReSt reading
/// the committed version at W = 4, N = 2 keeps older versions at the first stages, and a run
/// stores exactly the traced number per stage.
#[test]
fn policy_options_change_the_traced_versions_as_they_change_a_run() {
    let traced = |latest: &str| {
        json_of(&[
            "analyze",
            "versions",
            "--policy",
            "timeprest",
            "--stages",
            "4",
            "--microbatches",
            "2",
            "--latest-version",
            latest,
            "--format",
            "json",
        ])["stored_versions"]
            .clone()
    };
    assert_eq!(traced("live"), serde_json::json!([1, 2, 3, 4]));
    let committed = traced("committed");
    assert_eq!(committed, serde_json::json!([2, 2, 3, 4]));

    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("run");
    succeed(&[
        "train",
        "--policy",
        "timeprest",
        "--stages",
        "4",
        "--microbatches",
        "2",
        "--hidden",
        "32,32,32",
        "--latest-version",
        "committed",
        "--epochs",
        "1",
        "--limit-train",
        "640",
        "--quiet",
        "--out",
        out.to_str().unwrap(),
    ]);
    let metrics = std::fs::read_to_string(out.join("metrics.jsonl")).unwrap();
    let last: Value = serde_json::from_str(metrics.lines().last().unwrap()).unwrap();
    let measured: Vec<Value> = last["stages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|stage| stage["peak_weight_sets"].clone())
        .collect();
    assert_eq!(Value::from(measured), committed);
}
