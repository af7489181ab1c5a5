//! `timeprest train --transport mpi` under a real `mpirun`: bit-identity with the threaded
//! runtime, failure of a rank, mismatched ranks, checkpoints and resuming (between MPI and
//! threaded runs too), and a start from a hostfile as the README shows it.
//!
//! These tests need a build with `--features mpi` and `mpirun` (Open MPI) on PATH; otherwise
//! each prints why it is skipped and passes. `scripts/test-mpi` installs Open MPI and runs them.

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

mod background;

use background::Running;

/// Flags of a small, quick run (without `--stages` and `--epochs`).
const SMALL: &[&str] = &[
    "train",
    "--quiet",
    "--hidden",
    "24,16",
    "--limit-train",
    "160",
    "--limit-test",
    "90",
    "--microbatches",
    "2",
    "--batch-size",
    "16",
];

/// [`SMALL`] on `stages` stages with `epochs` epochs and the flags `extra`.
fn small_on<'a>(stages: &'a str, epochs: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let counts = ["--stages", stages, "--epochs", epochs];
    SMALL.iter().chain(&counts).chain(extra).copied().collect()
}

/// [`SMALL`] on 3 stages with `epochs` epochs and the flags `extra`.
fn small<'a>(epochs: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    small_on("3", epochs, extra)
}

/// Flags of a small VGG-11 (BatchNorm, so checkpoints hold running statistics) on W = 3 stages:
/// 4 mini-batches of 3 micro-batches per epoch (without `--epochs`).
const SMALL_VGG: &[&str] = &[
    "train",
    "--quiet",
    "--model",
    "vgg11",
    "--width",
    "0.0625",
    "--dataset",
    "synthetic",
    "--limit-train",
    "48",
    "--limit-test",
    "16",
    "--stages",
    "3",
    "--batch-size",
    "12",
    "--microbatches",
    "3",
    "--lr",
    "0.02",
    // A run resumed with more epochs than it started with continues exactly only under a
    // schedule that does not depend on the number of epochs (cosine ends at the last one).
    "--lr-schedule",
    "constant",
];

/// [`SMALL_VGG`] with `epochs` epochs and the flags `extra`.
fn small_vgg<'a>(epochs: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let epochs = ["--epochs", epochs];
    SMALL_VGG
        .iter()
        .chain(&epochs)
        .chain(extra)
        .copied()
        .collect()
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

/// Runs `command` (a `timeprest` or `mpirun` command line) and checks that it succeeded.
fn succeed(command: Command) {
    let (output, _) = run_with_limit(command, Duration::from_secs(120));
    assert!(output.status.success(), "{}", stderr_of(&output));
}

/// A threaded `timeprest` run with `args`.
fn threaded(args: &[&str]) -> Command {
    let mut command = Command::new(timeprest());
    command.args(args);
    command
}

fn app(command: &mut Command, ranks: usize, args: &[&str]) {
    command.args(["-np", &ranks.to_string(), timeprest()]);
    command.args(args).arg("--transport").arg("mpi");
}

fn stderr_of(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// A `mpirun -np ranks timeprest … --transport mpi` run with `args`.
fn distributed(ranks: usize, args: &[&str]) -> Command {
    let mut command = mpirun(&[]);
    app(&mut command, ranks, args);
    command
}

/// The epochs `state.json` of the run directory `run_dir`'s checkpoint says were completed.
fn checkpointed_epochs(run_dir: &Path) -> u64 {
    let state = std::fs::read_to_string(run_dir.join("checkpoint/state.json")).unwrap();
    let state: serde_json::Value = serde_json::from_str(&state).unwrap();
    state["epoch"].as_u64().unwrap()
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
            object.remove("simulated_seconds");
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
    for policy in [
        "timeprest",
        "i-timeprest",
        "pipedream",
        "pipedream-2bw",
        "gpipe",
        "nwpt",
    ] {
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
    // Every rank finds the mismatch itself, so every rank exits 2: a usage error.
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    let expected = "error: the ranks disagree: rank 2 differs from rank 0 in policy (\"gpipe\" \
                    vs \"i-timeprest\")";
    // Every rank reports the mismatch, but mpirun may kill the others once the first exits, so
    // only one report is certain.
    assert!(stderr.contains(expected), "{stderr}");

    let mut command = mpirun(&[]);
    app(&mut command, 2, &small("2", &[]));
    let (output, _) = run_with_limit(command, Duration::from_secs(60));
    let stderr = stderr_of(&output);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
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

#[test]
fn an_interrupted_mpi_run_resumes_bit_for_bit_under_mpi_and_under_threads() {
    require_mpi!();
    let dir = tempfile::tempdir().unwrap();
    let path = |name: &str| dir.path().join(name).to_str().unwrap().to_string();
    let whole = path("whole.safetensors");
    succeed(threaded(&small_vgg("4", &["--save-weights", &whole])));
    let expected = std::fs::read(&whole).unwrap();

    // Rank 2 dies in epoch 3, after every rank wrote its stage's checkpoint of epoch 2.
    let run = dir.path().join("run");
    let mut interrupted = mpirun(&[
        "TIMEPREST_FAULT_STAGE",
        "TIMEPREST_FAULT_KIND",
        "TIMEPREST_FAULT_EPOCH",
    ]);
    interrupted.env("TIMEPREST_FAULT_STAGE", "2");
    interrupted.env("TIMEPREST_FAULT_KIND", "exit");
    interrupted.env("TIMEPREST_FAULT_EPOCH", "3");
    app(
        &mut interrupted,
        3,
        &small_vgg("4", &["--out", &path("run")]),
    );
    let (output, _) = run_with_limit(interrupted, Duration::from_secs(120));
    assert!(!output.status.success(), "the fault did not fire");
    assert_eq!(checkpointed_epochs(&run), 2);
    assert_eq!(facts(&run).len(), 2);

    // A copy for the threaded runtime to resume.
    let copy = dir.path().join("run-for-threads");
    std::fs::create_dir_all(copy.join("checkpoint")).unwrap();
    for name in ["config.toml", "metrics.jsonl"] {
        std::fs::copy(run.join(name), copy.join(name)).unwrap();
    }
    for entry in std::fs::read_dir(run.join("checkpoint")).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(
            entry.path(),
            copy.join("checkpoint").join(entry.file_name()),
        )
        .unwrap();
    }

    // What a crash while the next checkpoint was written would have left.
    std::fs::create_dir(run.join("checkpoint.tmp")).unwrap();
    std::fs::write(run.join("checkpoint.tmp/stage-1.safetensors"), b"half").unwrap();
    std::fs::write(run.join("checkpoint.tmp/state.json"), b"{ half").unwrap();

    let resumed = path("run/resumed.safetensors");
    succeed(distributed(
        3,
        &[
            "train",
            "--resume",
            &path("run"),
            "--quiet",
            "--save-weights",
            &resumed,
        ],
    ));
    assert!(
        std::fs::read(&resumed).unwrap() == expected,
        "MPI resume differs"
    );
    assert_eq!(checkpointed_epochs(&run), 4);
    assert_eq!(facts(&run).len(), 4);
    assert!(!run.join("checkpoint.tmp").exists());

    let resumed = path("run-for-threads/resumed.safetensors");
    succeed(threaded(&[
        "train",
        "--resume",
        &path("run-for-threads"),
        "--quiet",
        "--save-weights",
        &resumed,
    ]));
    assert!(
        std::fs::read(&resumed).unwrap() == expected,
        "threaded resume of the MPI checkpoint differs"
    );
    assert_eq!(facts(&copy), facts(&run));
}

#[test]
fn a_threaded_checkpoint_resumes_under_mpi_bit_for_bit() {
    require_mpi!();
    let dir = tempfile::tempdir().unwrap();
    let path = |name: &str| dir.path().join(name).to_str().unwrap().to_string();
    let whole = path("whole.safetensors");
    succeed(threaded(&small_vgg(
        "3",
        &["--save-weights", &whole, "--out", &path("whole")],
    )));
    succeed(threaded(&small_vgg("1", &["--out", &path("run")])));
    let resumed = path("resumed.safetensors");
    succeed(distributed(
        3,
        &[
            "train",
            "--resume",
            &path("run"),
            "--epochs",
            "3",
            "--quiet",
            "--save-weights",
            &resumed,
        ],
    ));
    assert!(std::fs::read(&resumed).unwrap() == std::fs::read(&whole).unwrap());
    assert_eq!(
        facts(&dir.path().join("run")),
        facts(&dir.path().join("whole"))
    );
}

#[test]
fn resuming_with_another_number_of_stages_stops_every_rank_within_seconds() {
    require_mpi!();
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    let run = run.to_str().unwrap();
    succeed(threaded(&small("1", &["--out", run])));
    let command = distributed(
        2,
        &[
            "train", "--resume", run, "--stages", "2", "--epochs", "3", "--quiet",
        ],
    );
    let (output, elapsed) = run_with_limit(command, Duration::from_secs(60));
    let stderr = stderr_of(&output);
    assert!(!output.status.success(), "{stderr}");
    assert!(
        elapsed < Duration::from_secs(15),
        "took {elapsed:?}: {stderr}"
    );
    let verdict = "/checkpoint/state.json: it was written by a run of 3 stages, this run has 2";
    assert_eq!(stderr.matches(verdict).count(), 2, "{stderr}");
    assert_eq!(
        stderr
            .matches("error: rank 0 failed: cannot resume from ")
            .count(),
        1,
        "{stderr}"
    );
    // The checkpoint is left as it was: three stage files and state.json.
    assert_eq!(
        std::fs::read_dir(format!("{run}/checkpoint"))
            .unwrap()
            .count(),
        4
    );
}

#[test]
fn a_run_started_from_a_hostfile_equals_the_threaded_run() {
    require_mpi!();
    let dir = tempfile::tempdir().unwrap();
    let hosts = dir.path().join("hosts");
    std::fs::write(&hosts, "localhost slots=2\n").unwrap();
    let path = |name: &str| dir.path().join(name).to_str().unwrap().to_string();
    let args = small_on("2", "2", &[]);
    let threads = path("threads.safetensors");
    succeed(threaded(
        &[&args[..], &["--save-weights", &threads]].concat(),
    ));
    // The README's form: ranks placed in order over the hostfile's slots.
    let mut command = Command::new("mpirun");
    command
        .arg("--allow-run-as-root")
        .arg("--hostfile")
        .arg(&hosts);
    command.args(["--map-by", "slot"]);
    app(&mut command, 2, &args);
    let ranks = path("ranks.safetensors");
    command.args(["--save-weights", &ranks, "--out", &path("run")]);
    succeed(command);
    assert!(std::fs::read(&ranks).unwrap() == std::fs::read(&threads).unwrap());
    assert_eq!(checkpointed_epochs(&dir.path().join("run")), 2);
}

#[test]
fn ctrl_c_on_mpirun_stops_every_rank_and_rank_0_names_the_checkpoint() {
    require_mpi!();
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    let run_str = run.to_str().unwrap();
    let args = small("100000", &["--out", run_str, "--checkpoint-every", "1"]);
    let mut training = Running::spawn(distributed(3, &args), dir.path());
    training.wait_until("the first epoch was written", || {
        std::fs::read_to_string(run.join("metrics.jsonl")).is_ok_and(|text| !text.is_empty())
    });
    // mpirun (Open MPI) passes Ctrl-C on to the ranks as SIGTERM and kills them about a second
    // later: the ranks must stop and rank 0 must report within that second.
    training.signal("INT");
    let (status, stderr) = training.finish();
    assert!(!status.success(), "{stderr}");
    let reports: Vec<&str> = stderr
        .lines()
        .filter(|line| line.starts_with("interrupted in epoch "))
        .collect();
    assert_eq!(reports.len(), 1, "rank 0 alone reports:\n{stderr}");
    assert!(!stderr.contains("error"), "{stderr}");
    let line = reports[0];
    let done = checkpointed_epochs(&run);
    let expected = format!(
        "; last checkpoint: epoch {done} in {run_str}/checkpoint; continue with `mpirun -np 3 \
         timeprest train --transport mpi --resume {run_str}`"
    );
    assert!(
        line == format!("interrupted in epoch {}{expected}", done + 1),
        "{line}"
    );
    assert_eq!(facts(&run).len() as u64, done);

    let epochs = (done + 1).to_string();
    succeed(distributed(
        3,
        &["train", "--resume", run_str, "--quiet", "--epochs", &epochs],
    ));
    assert_eq!(facts(&run).len() as u64, done + 1);
}
