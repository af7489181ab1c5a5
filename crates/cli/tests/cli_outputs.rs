//! End-to-end checks that no run destroys or mixes a run directory, and that every output path
//! is checked before training and replaced only when it is a regular file.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::{FileTypeExt as _, symlink};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

mod common;

use common::timeprest;

/// A tiny `train` (add `--epochs`, which clap accepts only once).
const TINY: [&str; 4] = ["train", "--quiet", "--limit-train", "64"];

fn tiny(extra: &[&str]) -> Output {
    timeprest(&[&TINY[..], extra].concat())
}

fn succeeded(output: &Output) -> String {
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(output.status.success(), "{stderr}");
    stderr
}

/// Asserts a usage error: exit code 2 and, as the last line, the one `error:` line, holding
/// every needle.
fn refused(output: &Output, needles: &[&str]) {
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    let errors = stderr.lines().filter(|l| l.starts_with("error")).count();
    assert_eq!(errors, 1, "{stderr}");
    let last = stderr.lines().last().unwrap_or_default();
    assert!(last.starts_with("error: "), "{stderr}");
    for needle in needles {
        assert!(last.contains(needle), "`{needle}` not in {stderr}");
    }
}

fn text(path: &Path) -> &str {
    path.to_str().unwrap()
}

/// Every file under `dir` with its bytes, by relative path.
fn snapshot(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut files = BTreeMap::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(at) = pending.pop() {
        for entry in fs::read_dir(&at).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                pending.push(path);
            } else {
                let bytes = fs::read(&path).unwrap();
                files.insert(path.strip_prefix(dir).unwrap().to_path_buf(), bytes);
            }
        }
    }
    files
}

fn metrics_lines(run: &Path) -> usize {
    fs::read_to_string(run.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .count()
}

fn names_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

fn stop(mut child: Child) {
    child.kill().unwrap();
    child.wait().unwrap();
}

#[test]
fn a_finished_run_is_kept_unless_overwrite_replaces_it() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    succeeded(&tiny(&["--epochs", "2", "--out", text(&run)]));
    let before = snapshot(&run);
    refused(
        &tiny(&["--epochs", "1", "--out", text(&run)]),
        &[
            &format!("--out {}: the directory is not empty", run.display()),
            "checkpoint/, command.txt, config-history.jsonl, config.json, config.toml and 1 more",
            "--overwrite",
        ],
    );
    assert_eq!(snapshot(&run), before, "the refused run changed nothing");
    succeeded(&tiny(&[
        "--epochs",
        "1",
        "--out",
        text(&run),
        "--overwrite",
    ]));
    assert_eq!(metrics_lines(&run), 1);
    assert_eq!(names_in(dir.path()), ["run"], "nothing is left beside it");
    assert!(!run.join(".lock").exists(), "the lock is released");
}

#[test]
fn a_lock_of_a_live_process_refuses_the_run_and_a_dead_ones_is_taken_over() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    fs::create_dir(&run).unwrap();
    let holder = Command::new("sleep").arg("60").spawn().unwrap();
    let pid = holder.id();
    let lock = format!("{pid}\nsleep 60\n");
    fs::write(run.join(".lock"), &lock).unwrap();
    let named = format!("in use by process {pid} (`sleep 60`)");
    refused(&tiny(&["--epochs", "50", "--out", text(&run)]), &[&named]);
    fs::write(run.join("config.json"), "{}").unwrap();
    refused(
        &tiny(&["--epochs", "50", "--out", text(&run), "--overwrite"]),
        &[&named],
    );
    assert_eq!(names_in(&run), [".lock", "config.json"]);
    assert_eq!(fs::read_to_string(run.join(".lock")).unwrap(), lock);
    stop(holder);
    fs::remove_file(run.join("config.json")).unwrap();
    let stderr = succeeded(&tiny(&["--epochs", "1", "--out", text(&run)]));
    assert!(
        stderr.contains(&format!("taking over the lock of {}", run.display()))
            && stderr.contains(&format!("process {pid} (`sleep 60`)")),
        "{stderr}"
    );
    assert_eq!(metrics_lines(&run), 1);
    assert!(!run.join(".lock").exists());
}

#[test]
fn a_second_run_on_a_directory_in_use_fails_naming_the_first() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    let first = Command::new(assert_cmd::cargo::cargo_bin("timeprest"))
        .args(TINY)
        .args(["--epochs", "100000", "--out", text(&run)])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let pid = first.id();
    let started = Instant::now();
    // Locked, and its configuration written (which `--resume` reads first).
    let running = || {
        fs::read_to_string(run.join(".lock")).is_ok_and(|t| t.starts_with(&format!("{pid}\n")))
            && run.join("config.toml").is_file()
    };
    while !running() && started.elapsed() < Duration::from_secs(120) {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        running(),
        "the first run never started in {}",
        run.display()
    );
    refused(
        &tiny(&["--epochs", "1", "--out", text(&run)]),
        &[&format!("in use by process {pid}"), "--epochs 100000"],
    );
    refused(
        &timeprest(&["train", "--resume", text(&run), "--epochs", "1", "--quiet"]),
        &[&format!("in use by process {pid}")],
    );
    // Killed, it leaves its lock behind: the next run takes it over.
    stop(first);
    let stderr = succeeded(&tiny(&[
        "--epochs",
        "1",
        "--out",
        text(&run),
        "--overwrite",
    ]));
    assert!(stderr.contains(&format!("process {pid}")), "{stderr}");
    assert_eq!(metrics_lines(&run), 1);
}

#[test]
fn resuming_appends_its_command_to_command_txt() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    succeeded(&tiny(&["--epochs", "1", "--out", text(&run)]));
    let resumed = ["train", "--resume", text(&run), "--epochs", "2", "--quiet"];
    succeeded(&timeprest(&resumed));
    let history = fs::read_to_string(run.join("command.txt")).unwrap();
    let lines: Vec<&str> = history.lines().collect();
    assert_eq!(lines.len(), 2, "{history}");
    assert!(lines[0].ends_with(&format!("--epochs 1 --out {}", run.display())));
    assert!(lines[1].ends_with(&resumed[1..].join(" ")), "{history}");
    assert_eq!(metrics_lines(&run), 2);
}

#[test]
fn save_weights_naming_a_directory_or_a_device_fails_before_training() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    let weights = dir.path().join("weights");
    fs::create_dir(&weights).unwrap();
    let flags = ["--epochs", "50", "--out", text(&run), "--save-weights"];
    refused(
        &tiny(&[&flags[..], &[text(&weights)]].concat()),
        &[
            &format!("--save-weights {}: it is a directory", weights.display()),
            "replaces only regular files",
        ],
    );
    assert!(!run.join("metrics.jsonl").exists(), "no epoch ran");
    assert!(weights.is_dir());
    refused(
        &tiny(&[&flags[..], &["/dev/null"]].concat()),
        &["--save-weights /dev/null: it is a character device"],
    );
    assert!(!run.join("metrics.jsonl").exists(), "no epoch ran");
    let null = fs::symlink_metadata("/dev/null").unwrap().file_type();
    assert!(null.is_char_device(), "/dev/null is still a device");
}

#[test]
fn save_weights_through_a_symlink_writes_its_target() {
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("target.safetensors");
    let link = dir.path().join("link.safetensors");
    symlink(&target, &link).unwrap();
    for _ in 0..2 {
        // The second run replaces the target it wrote the first time.
        succeeded(&tiny(&["--epochs", "1", "--save-weights", text(&link)]));
        assert!(
            fs::symlink_metadata(&link)
                .unwrap()
                .file_type()
                .is_symlink()
        );
        assert!(fs::symlink_metadata(&target).unwrap().is_file());
    }
    succeeded(&tiny(&["--epochs", "1", "--init-weights", text(&target)]));
    assert_eq!(
        names_in(dir.path()),
        ["link.safetensors", "target.safetensors"]
    );
}

#[test]
fn a_trace_that_cannot_be_written_fails_before_training() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    let file = dir.path().join("file");
    fs::write(&file, "").unwrap();
    let under_a_file = file.join("traces/trace.json");
    let flags = ["--epochs", "50", "--out", text(&run), "--trace"];
    refused(
        &tiny(&[&flags[..], &[text(&under_a_file)]].concat()),
        &[
            &format!("--trace {}", under_a_file.display()),
            "not a directory",
        ],
    );
    // /proc takes no new files, whoever asks (root included).
    refused(
        &tiny(&[&flags[..], &["/proc/timeprest-missing/trace.json"]].concat()),
        &["--trace /proc/timeprest-missing/trace.json: /proc: cannot create files there"],
    );
    assert!(!run.join("metrics.jsonl").exists(), "no epoch ran");
}

#[test]
fn compare_refuses_a_non_empty_directory_with_trains_words() {
    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join("notes.txt"), "mine").unwrap();
    let compare = timeprest(&[
        "compare",
        "--policies",
        "gpipe",
        "--seeds",
        "1",
        "--epochs",
        "1",
        "--out",
        text(dir.path()),
    ]);
    refused(
        &compare,
        &[&format!(
            "--out {}: the directory is not empty (it holds notes.txt); choose another \
             directory, or give --overwrite to replace it",
            dir.path().display()
        )],
    );
    assert_eq!(names_in(dir.path()), ["notes.txt"]);
}

#[test]
fn simulate_output_is_checked_and_written_atomically() {
    let dir = tempfile::tempdir().unwrap();
    let simulate = |output: &Path| {
        timeprest(&[
            "simulate",
            "--schedule",
            "gpipe",
            "--stages",
            "2",
            "--microbatches",
            "1",
            "--minibatches",
            "2",
            "--output",
            text(output),
        ])
    };
    refused(
        &simulate(dir.path()),
        &[&format!(
            "--output {}: it is a directory",
            dir.path().display()
        )],
    );
    let grid = dir.path().join("grid.txt");
    fs::write(&grid, "old").unwrap();
    succeeded(&simulate(&grid));
    assert!(fs::read_to_string(&grid).unwrap().starts_with("S1:"));
    assert_eq!(names_in(dir.path()), ["grid.txt"]);
}
