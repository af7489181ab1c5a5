//! `timeprest train --transport mpi` under a real `mpirun`: bit-identity with the threaded
//! runtime, failure of a rank, mismatched ranks.
//!
//! These tests need a build with `--features mpi` and `mpirun` (Open MPI) on PATH; otherwise
//! each prints why it is skipped and passes. `scripts/test-mpi` installs Open MPI and runs them.

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// Flags of a small, quick run on W = 3 stages (without `--epochs`).
const SMALL: &[&str] = &[
    "train",
    "--quiet",
    "--hidden",
    "24,16",
    "--limit-train",
    "160",
    "--limit-test",
    "90",
    "--stages",
    "3",
    "--microbatches",
    "2",
    "--batch-size",
    "16",
];

/// [`SMALL`] with `epochs` epochs and the flags `extra`.
fn small<'a>(epochs: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let epochs = ["--epochs", epochs];
    SMALL.iter().chain(&epochs).chain(extra).copied().collect()
}

/// Why the MPI tests cannot run here, if they cannot.
fn skip_reason() -> Option<&'static str> {
    if !cfg!(feature = "mpi") {
        return Some("timeprest was built without --features mpi");
    }
    let found = Command::new("mpirun")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    match found {
        Ok(status) if status.success() => None,
        _ => Some("mpirun is not on PATH"),
    }
}

macro_rules! require_mpi {
    () => {
        if let Some(reason) = skip_reason() {
            eprintln!("note: skipping this MPI test: {reason} (see scripts/test-mpi)");
            return;
        }
    };
}

fn timeprest() -> &'static str {
    env!("CARGO_BIN_EXE_timeprest")
}

/// Runs `command`, killing it (and failing the test) after `limit`.
fn run_with_limit(mut command: Command, limit: Duration) -> (Output, Duration) {
    let started = Instant::now();
    let mut child = command
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting the command");
    while child.try_wait().expect("polling the command").is_none() {
        if started.elapsed() > limit {
            child.kill().expect("killing a hung command");
            let output = child.wait_with_output().unwrap();
            panic!(
                "hung for more than {limit:?}; stderr:\n{}",
                String::from_utf8_lossy(&output.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let elapsed = started.elapsed();
    (child.wait_with_output().unwrap(), elapsed)
}

/// `mpirun` with the flags this (2-core, root) machine needs, before the per-app arguments.
fn mpirun(env: &[&str]) -> Command {
    let mut command = Command::new("mpirun");
    command.args(["--oversubscribe", "--allow-run-as-root"]);
    for name in env {
        command.args(["-x", name]);
    }
    command
}

fn app(command: &mut Command, ranks: usize, args: &[&str]) {
    command.args(["-np", &ranks.to_string(), timeprest()]);
    command.args(args).arg("--transport").arg("mpi");
}

fn stderr_of(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// The measured facts of a run directory's metrics (everything but wall-clock figures).
fn facts(run_dir: &Path) -> Vec<serde_json::Value> {
    let text = std::fs::read_to_string(run_dir.join("metrics.jsonl")).unwrap();
    text.lines()
        .map(|line| {
            let mut metrics: serde_json::Value = serde_json::from_str(line).unwrap();
            let object = metrics.as_object_mut().unwrap();
            object.remove("epoch_seconds");
            object.remove("samples_per_second");
            for stage in object["stages"].as_array_mut().unwrap() {
                let stage = stage.as_object_mut().unwrap();
                stage.remove("busy_seconds");
                stage.remove("utilisation");
            }
            metrics
        })
        .collect()
}

#[test]
fn mpi_runs_are_bit_identical_to_threaded_runs_for_every_kind_of_policy() {
    require_mpi!();
    let dir = tempfile::tempdir().unwrap();
    for policy in ["timeprest", "i-timeprest", "pipedream", "gpipe", "nwpt"] {
        let path = |name: &str| dir.path().join(format!("{policy}-{name}"));
        let args = small("2", &["--policy", policy]);

        let mut threaded = Command::new(timeprest());
        threaded.args(&args).arg("--out").arg(path("threads"));
        threaded
            .arg("--save-weights")
            .arg(path("threads.safetensors"));
        let (output, _) = run_with_limit(threaded, Duration::from_secs(120));
        assert!(output.status.success(), "{}", stderr_of(&output));

        let mut distributed = mpirun(&[]);
        app(&mut distributed, 3, &args);
        distributed.arg("--out").arg(path("mpi"));
        distributed
            .arg("--save-weights")
            .arg(path("mpi.safetensors"));
        let (output, _) = run_with_limit(distributed, Duration::from_secs(120));
        assert!(output.status.success(), "{}", stderr_of(&output));
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert_eq!(
            stdout.matches("final: test accuracy").count(),
            1,
            "only rank 0 reports:\n{stdout}"
        );

        let weights = |name: &str| std::fs::read(path(name)).unwrap();
        assert!(
            weights("threads.safetensors") == weights("mpi.safetensors"),
            "{policy}: the weights differ"
        );
        assert_eq!(
            facts(&path("mpi")),
            facts(&path("threads")),
            "{policy}: the metrics differ"
        );
    }
}

/// Runs a long training on 3 ranks with the fault `kind` injected into stage `stage`; checks
/// that the job fails within a few seconds and returns its stderr.
fn run_with_fault(stage: &str, kind: &str) -> String {
    let mut command = mpirun(&["TIMEPREST_FAULT_STAGE", "TIMEPREST_FAULT_KIND"]);
    command.env("TIMEPREST_FAULT_STAGE", stage);
    command.env("TIMEPREST_FAULT_KIND", kind);
    app(&mut command, 3, &small("100", &[]));
    let (output, elapsed) = run_with_limit(command, Duration::from_secs(60));
    let stderr = stderr_of(&output);
    assert!(!output.status.success(), "{stderr}");
    assert!(
        elapsed < Duration::from_secs(30),
        "took {elapsed:?}:\n{stderr}"
    );
    stderr
}

#[test]
fn a_failing_rank_stops_every_rank_with_an_error_naming_it() {
    require_mpi!();
    for kind in ["error", "panic"] {
        let stderr = run_with_fault("1", kind);
        let own = "error: stage 1 failed during ";
        assert_eq!(stderr.matches(own).count(), 1, "{stderr}");
        let others = "error: rank 1 failed: stage 1 failed during ";
        assert_eq!(stderr.matches(others).count(), 2, "{stderr}");
        assert!(stderr.contains("injected"), "{stderr}");
    }
}

#[test]
fn a_rank_that_dies_ends_the_job_without_a_hang() {
    require_mpi!();
    run_with_fault("2", "exit");
}

#[test]
fn ranks_with_mismatched_configurations_refuse_to_start() {
    require_mpi!();
    let mut command = mpirun(&[]);
    app(&mut command, 2, &small("2", &[]));
    command.arg(":");
    app(&mut command, 1, &small("2", &["--policy", "gpipe"]));
    let (output, _) = run_with_limit(command, Duration::from_secs(60));
    let stderr = stderr_of(&output);
    assert!(!output.status.success(), "{stderr}");
    let expected = "error: the ranks disagree: rank 2 differs from rank 0 in policy (\"gpipe\" \
                    vs \"i-timeprest\")";
    // Every rank reports the mismatch, but mpirun may kill the others once the first exits, so
    // only one report is certain.
    assert!(stderr.contains(expected), "{stderr}");

    let mut command = mpirun(&[]);
    app(&mut command, 2, &small("2", &[]));
    let (output, _) = run_with_limit(command, Duration::from_secs(60));
    let stderr = stderr_of(&output);
    assert!(!output.status.success(), "{stderr}");
    let expected = "--stages is 3 but 2 MPI processes were started";
    assert!(stderr.contains(expected), "{stderr}");
}

#[test]
fn a_build_without_mpi_says_how_to_get_it() {
    if cfg!(feature = "mpi") {
        return;
    }
    let output = Command::new(timeprest())
        .args(["train", "--transport", "mpi", "--epochs", "1"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    assert!(
        stderr_of(&output).contains("--features mpi"),
        "{}",
        stderr_of(&output)
    );
}
