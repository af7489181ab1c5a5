//! Ctrl-C and SIGTERM: `train` and `compare` stop at the next safe point, say what was saved
//! and how to continue, and exit with 130 / 143; `train --resume` and `compare --resume`
//! continue them, and `plot` reports the comparison as it is on disk.
//!
//! Each test starts `timeprest` as a child process, waits (polling, with a bound that only
//! catches hangs) until an epoch has been written, and sends the signal with `kill`.

use std::fs;
use std::path::Path;
use std::process::Command;

mod background;
mod common;

use background::Running;
use common::{succeed, timeprest};

/// Starts `timeprest args` in the background; its stdout and stderr go to files in `dir`.
fn start(dir: &Path, args: &[&str]) -> Running {
    let mut command = Command::new(env!("CARGO_BIN_EXE_timeprest"));
    command.args(args);
    Running::spawn(command, dir)
}

/// The number of lines (epochs) in `run_dir/metrics.jsonl`; 0 when it does not exist.
fn epochs_written(run_dir: &Path) -> usize {
    fs::read_to_string(run_dir.join("metrics.jsonl"))
        .map(|text| text.lines().count())
        .unwrap_or(0)
}

/// The line of `stderr` that starts with `prefix`.
fn line_starting<'a>(stderr: &'a str, prefix: &str) -> &'a str {
    stderr
        .lines()
        .find(|line| line.starts_with(prefix))
        .unwrap_or_else(|| panic!("no line starting with {prefix:?} in:\n{stderr}"))
}

/// The number after `word ` in `line`.
fn number_after(line: &str, word: &str) -> usize {
    let rest = line
        .split_once(&format!("{word} "))
        .unwrap_or_else(|| panic!("no {word:?} in {line:?}"))
        .1;
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    digits
        .parse()
        .unwrap_or_else(|_| panic!("no number after {word:?} in {line:?}"))
}

/// Waits until `condition` (`what` names it in a timeout), sends `signal` to `running` and
/// checks that it exits with `code`; returns its stderr.
fn stop_when(
    mut running: Running,
    what: &str,
    condition: impl Fn() -> bool,
    signal: &str,
    code: i32,
) -> String {
    running.wait_until(what, condition);
    running.signal(signal);
    let (status, stderr) = running.finish();
    assert_eq!(status.code(), Some(code), "{status}; stderr:\n{stderr}");
    stderr
}

/// [`stop_when`] the run in `run_dir` has written its first epoch.
fn stop_after_first_epoch(running: Running, run_dir: &Path, signal: &str, code: i32) -> String {
    let written = || epochs_written(run_dir) >= 1;
    stop_when(
        running,
        "the first epoch was written",
        written,
        signal,
        code,
    )
}

/// Starts a 40-epoch comparison of `policies` (one seed) into `out`, sends `signal` once the
/// first run (gpipe's) has written an epoch, and checks the exit `code`; returns the
/// comparison's stderr and the epoch of the checkpoint its interrupted line names.
fn stop_a_comparison(
    dir: &Path,
    policies: &str,
    out: &Path,
    signal: &str,
    code: i32,
) -> (String, usize) {
    let first_run = out.join("runs/gpipe-seed1");
    let comparing = start(
        dir,
        &[
            "compare",
            "--quiet",
            "--policies",
            policies,
            "--seeds",
            "1",
            "--epochs",
            "40",
            "--limit-test",
            "100",
            "--out",
            out.to_str().unwrap(),
        ],
    );
    let stderr = stop_after_first_epoch(comparing, &first_run, signal, code);
    let line = line_starting(&stderr, "gpipe seed 1: interrupted in epoch ");
    let checkpoint_epoch = number_after(line, "last checkpoint: epoch");
    (stderr, checkpoint_epoch)
}

/// A long `train` on digits is stopped by `signal` after its first epoch: it exits with `code`,
/// names the epoch it cut short and the checkpoint of the one before, and `train --resume`
/// continues from there.
fn a_stopped_train_names_its_checkpoint_and_continues(signal: &str, code: i32) {
    let dir = tempfile::tempdir().unwrap();
    let run_dir = dir.path().join("run");
    let run = run_dir.to_str().unwrap();
    let training = start(
        dir.path(),
        &[
            "train",
            "--quiet",
            "--epochs",
            "1000",
            "--out",
            run,
            "--checkpoint-every",
            "1",
        ],
    );
    let stderr = stop_after_first_epoch(training, &run_dir, signal, code);

    let line = line_starting(&stderr, "interrupted in epoch ");
    let epoch = number_after(line, "interrupted in epoch");
    let checkpoint_epoch = number_after(line, "last checkpoint: epoch");
    assert_eq!(checkpoint_epoch + 1, epoch, "{line}");
    let checkpoint = run_dir.join("checkpoint");
    assert!(
        line.contains(&format!("in {}", checkpoint.display())),
        "{line}"
    );
    assert!(
        line.ends_with(&format!("continue with `timeprest train --resume {run}`")),
        "{line}"
    );
    assert!(checkpoint.join("state.json").is_file());
    assert_eq!(epochs_written(&run_dir), checkpoint_epoch);
    assert!(!stderr.contains("error"), "{stderr}");

    let epochs = (checkpoint_epoch + 1).to_string();
    let resumed = timeprest(&["train", "--quiet", "--resume", run, "--epochs", &epochs]);
    assert!(
        resumed.status.success(),
        "{}",
        String::from_utf8_lossy(&resumed.stderr)
    );
    assert_eq!(epochs_written(&run_dir), checkpoint_epoch + 1);
}

#[test]
fn ctrl_c_stops_train_with_130_naming_the_checkpoint_to_resume() {
    a_stopped_train_names_its_checkpoint_and_continues("INT", 130);
}

#[test]
fn sigterm_stops_train_with_143_naming_the_checkpoint_to_resume() {
    a_stopped_train_names_its_checkpoint_and_continues("TERM", 143);
}

#[test]
fn a_stopped_train_without_out_says_nothing_was_saved() {
    let dir = tempfile::tempdir().unwrap();
    let trace = dir.path().join("trace.json");
    // The trace is written after the first epoch: the sign that training is under way.
    let training = start(
        dir.path(),
        &[
            "train",
            "--quiet",
            "--epochs",
            "1000",
            "--trace",
            trace.to_str().unwrap(),
        ],
    );
    let stderr = stop_when(
        training,
        "the first epoch ended",
        || trace.is_file(),
        "INT",
        130,
    );
    let line = line_starting(&stderr, "interrupted in epoch ");
    assert!(
        line.ends_with("; no checkpoint was written (no --out)"),
        "{line}"
    );
}

/// The manifest of comparison `dir`.
fn manifest(dir: &Path) -> serde_json::Value {
    serde_json::from_str(&fs::read_to_string(dir.join("comparison.json")).unwrap()).unwrap()
}

/// (label, seed, status) of every run in the manifest of `dir`.
fn manifest_runs(dir: &Path) -> Vec<(String, u64, String)> {
    manifest(dir)["runs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|run| {
            (
                run["label"].as_str().unwrap().to_string(),
                run["seed"].as_u64().unwrap(),
                run["outcome"]["status"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

#[test]
fn a_stopped_comparison_is_reported_as_it_is_on_disk_and_resume_completes_it() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("cmp");
    let out_str = out.to_str().unwrap();
    let first_run = out.join("runs/gpipe-seed1");
    let (stderr, checkpoint_epoch) =
        stop_a_comparison(dir.path(), "gpipe,pipedream", &out, "INT", 130);
    let line = line_starting(&stderr, "gpipe seed 1: interrupted in epoch ");
    assert!(
        line.ends_with(&format!(
            "continue with `timeprest compare --resume {out_str}`"
        )),
        "{line}"
    );
    assert_eq!(
        manifest_runs(&out),
        [("gpipe".to_string(), 1, "incomplete".to_string())]
    );
    assert_eq!(epochs_written(&first_run), checkpoint_epoch);

    // `plot` reports the comparison as it is: nothing completed, one run cut short, one
    // not started.
    succeed(&["plot", out_str]);
    let report = fs::read_to_string(out.join("report.md")).unwrap();
    assert!(report.contains("0 of 2 runs completed"), "{report}");
    assert!(report.contains("1 run has not started"), "{report}");
    assert!(
        report.contains("- `gpipe` seed 1: did not finish"),
        "{report}"
    );

    // The cut-short run is finished by hand; `plot` counts it although the manifest still
    // says it did not finish.
    succeed(&["train", "--quiet", "--resume", first_run.to_str().unwrap()]);
    succeed(&["plot", out_str]);
    let report = fs::read_to_string(out.join("report.md")).unwrap();
    assert!(report.contains("1 of 2 runs completed"), "{report}");
    assert!(
        !report.contains("- `gpipe` seed 1: did not finish"),
        "{report}"
    );

    // `compare --resume` records the finished run, runs the missing one and rewrites the
    // report.
    let stdout = succeed(&["compare", "--quiet", "--resume", out_str]);
    assert!(
        stdout.contains("gpipe seed 1: already complete on disk"),
        "{stdout}"
    );
    assert!(
        stdout.contains("pipedream seed 1: final test accuracy"),
        "{stdout}"
    );
    assert_eq!(
        manifest_runs(&out),
        [
            ("gpipe".to_string(), 1, "completed".to_string()),
            ("pipedream".to_string(), 1, "completed".to_string())
        ]
    );
    for run in ["gpipe-seed1", "pipedream-seed1"] {
        assert_eq!(epochs_written(&out.join("runs").join(run)), 40, "{run}");
    }
    let report = fs::read_to_string(out.join("report.md")).unwrap();
    assert!(report.contains("2 of 2 runs completed"), "{report}");
}

#[test]
fn compare_resume_continues_a_cut_short_run_from_its_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("cmp");
    let out_str = out.to_str().unwrap();
    let run_dir = out.join("runs/gpipe-seed1");
    let (_, checkpoint_epoch) = stop_a_comparison(dir.path(), "gpipe", &out, "TERM", 143);

    let stdout = succeed(&["compare", "--quiet", "--resume", out_str]);
    let line = line_starting(&stdout, "gpipe seed 1: final test accuracy ");
    let since = format!("s of training since epoch {})", checkpoint_epoch + 1);
    assert!(
        line.contains("after 40 epochs") && line.ends_with(&since),
        "{line}"
    );
    let epochs: Vec<u64> = fs::read_to_string(run_dir.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|line| {
            serde_json::from_str::<serde_json::Value>(line).unwrap()["epoch"]
                .as_u64()
                .unwrap()
        })
        .collect();
    assert_eq!(epochs, (1..=40).collect::<Vec<_>>());
    assert!(out.join("report.md").is_file());
    assert_eq!(
        manifest_runs(&out),
        [("gpipe".to_string(), 1, "completed".to_string())]
    );
}

#[test]
fn compare_resume_takes_its_settings_from_the_directory() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_str().unwrap();
    let output = timeprest(&["compare", "--resume", path, "--epochs", "3"]);
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("--epochs was given"), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");

    let output = timeprest(&["compare", "--resume", path]);
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("not a comparison directory (it has no comparison.json)"),
        "{stderr}"
    );
}
