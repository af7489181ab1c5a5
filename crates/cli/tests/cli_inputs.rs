//! Bad inputs are refused before any work starts, each with exit code 2 and one `error:` line
//! that names the flag, key or file: sizes that cannot fit in memory, non-finite and
//! out-of-range values, options that would be silently ignored, bad `--config` values,
//! `--resume` of something that is not a run, weights holding NaN, and clap's own mistakes
//! with their tips.

mod common;

use std::path::Path;

use common::{succeed, timeprest};

/// Runs `args`, expects exit code 2 with exactly one `error:` line on stderr (the last line;
/// only `train`'s banner may come before it) that contains every one of `needles`; returns
/// that line.
fn refused(args: &[&str], needles: &[&str]) -> String {
    let output = timeprest(args);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{args:?}: {stderr}");
    let errors: Vec<&str> = stderr.lines().filter(|l| l.starts_with("error")).collect();
    assert_eq!(errors.len(), 1, "{args:?}: {stderr}");
    assert_eq!(stderr.lines().last(), Some(errors[0]), "{args:?}: {stderr}");
    for needle in needles {
        assert!(
            errors[0].contains(needle),
            "{args:?}: no {needle:?} in {stderr}"
        );
    }
    for symptom in [
        "panicked",
        "internal error",
        "memory allocation",
        "overflow",
    ] {
        assert!(!stderr.contains(symptom), "{args:?}: {stderr}");
    }
    errors[0].to_owned()
}

/// A licence text that every Debian machine has.
const GPL: &str = "/usr/share/common-licenses/GPL-3";

#[test]
fn sizes_that_cannot_fit_in_memory_are_refused_before_allocation() {
    let memory = "is available";
    refused(
        &[
            "train",
            "--model",
            "lenet5",
            "--dataset",
            "synthetic",
            "--width",
            "100000",
        ],
        &["--width 100000:", "lenet5", memory],
    );
    refused(
        &["train", "--hidden", "100000000,100000000"],
        &["--hidden 100000000,100000000:", memory],
    );
    let text = format!("text:{GPL}");
    refused(
        &[
            "train",
            "--model",
            "gpt",
            "--dataset",
            &text,
            "--embed-dim",
            "1000000",
        ],
        &["--embed-dim 1000000", memory],
    );
    refused(
        &["partition", "--model", "vgg16", "--width", "1000"],
        &["--width 1000:", "vgg16", memory],
    );
    // Beyond any memory: refused while the model is built, before any size arithmetic.
    refused(
        &[
            "train",
            "--model",
            "lenet5",
            "--dataset",
            "synthetic",
            "--width",
            "1e30",
        ],
        &["--width 1e30:", "channels"],
    );
    refused(
        &["partition", "--model", "vgg16", "--width", "1e12"],
        &["--width 1e12:", "channels"],
    );
    refused(
        &["partition", "--model", "gpt", "--depth", "1000000000000"],
        &["--depth 1000000000000", "blocks"],
    );
}

#[test]
fn clap_mistakes_keep_their_tips_on_the_one_error_line() {
    refused(
        &["train", "--stage", "2"],
        &["'--stage'", "tip:", "'--stages'"],
    );
    refused(&["train", "--lr", "-1"], &["--lr=-1"]);
}

#[test]
fn non_finite_and_out_of_range_values_are_refused_before_training() {
    for (flag, value) in [
        ("--lambda", "nan"),
        ("--lambda", "-1"),
        ("--lr", "inf"),
        ("--lr", "nan"),
        ("--momentum", "nan"),
        ("--momentum", "1"),
        ("--weight-decay", "nan"),
        ("--weight-decay", "-inf"),
        ("--alpha", "nan"),
        ("--alpha", "2"),
        ("--width", "nan"),
        ("--width", "0"),
        ("--limit-train", "0"),
        ("--threads-per-stage", "0"),
    ] {
        let assignment = format!("{flag}={value}");
        let line = refused(&["train", &assignment, "--quiet"], &[&format!("{flag}:")]);
        // The accepted range is named.
        assert!(
            line.contains("must be") || line.contains("at least"),
            "{line}"
        );
    }
}

#[test]
fn options_that_would_be_ignored_are_refused() {
    refused(
        &["train", "--limit-test", "0"],
        &["--limit-test:", "at least 1"],
    );
    refused(
        &["train", "--dataset", "digits", "--data-dir", "/usr/share"],
        &["--data-dir /usr/share:", "digits"],
    );
    refused(
        &[
            "train",
            "--dataset",
            "synthetic",
            "--data-dir",
            "/usr/share",
        ],
        &["--data-dir /usr/share:", "synthetic"],
    );
    refused(
        &["train", "--checkpoint-every", "2"],
        &["--checkpoint-every:", "--out"],
    );
    refused(
        &[
            "partition",
            "--model",
            "lenet5",
            "--dataset",
            "digits",
            "--data-dir",
            "/usr/share",
        ],
        &["--data-dir /usr/share:", "digits"],
    );
    refused(
        &["partition", "--model", "lenet5", "--data-dir", "/usr/share"],
        &["--data-dir /usr/share:", "--dataset"],
    );
}

#[test]
fn a_bad_value_in_a_config_file_names_its_key() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("run.toml");
    let path = config.to_str().unwrap();
    std::fs::write(&config, "epochs = \"two\"\n").unwrap();
    refused(
        &["train", "--config", path],
        &[path, "`epochs`", "invalid type"],
    );
    std::fs::write(&config, "lr = nan\n").unwrap();
    refused(&["train", "--config", path], &[path, "`lr`", "finite"]);
    std::fs::write(&config, "lambda = -1.0\n").unwrap();
    refused(&["train", "--config", path], &["--lambda:"]);
}

#[test]
fn resuming_something_that_is_not_a_run_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let empty = dir.path().to_str().unwrap();
    refused(
        &["train", "--resume", empty],
        &["--resume", empty, "not a run directory"],
    );
    let missing = dir.path().join("missing");
    let missing = missing.to_str().unwrap();
    refused(
        &["train", "--resume", missing],
        &["--resume", missing, "no such directory"],
    );
    std::fs::write(dir.path().join("config.toml"), "epochs = \"two\"\n").unwrap();
    refused(
        &["train", "--resume", empty],
        &[&format!("--resume {empty}: config.toml: key `epochs`")],
    );
    let file = dir.path().join("file");
    std::fs::write(&file, "").unwrap();
    let file = file.to_str().unwrap();
    refused(
        &["train", "--resume", file],
        &["--resume", file, "not a directory"],
    );
}

/// Trains one quick epoch of the default MLP and saves its weights at `path`.
fn save_weights(path: &Path) {
    quick_train(&["--save-weights", path.to_str().unwrap()]);
}

/// Trains one quick epoch of the default MLP with the `extra` flags.
fn quick_train(extra: &[&str]) {
    let quick = [
        "train",
        "--epochs",
        "1",
        "--limit-train",
        "96",
        "--limit-test",
        "32",
        "--quiet",
    ];
    succeed(&[&quick[..], extra].concat());
}

#[test]
fn initial_weights_holding_nan_or_infinity_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let weights = dir.path().join("weights.safetensors");
    save_weights(&weights);
    let path = weights.to_str().unwrap();
    // A safetensors file: an 8-byte little-endian header length, the JSON header, then the
    // tensors' bytes. Overwrite the first value of the data with NaN, then with infinity.
    let mut bytes = std::fs::read(&weights).unwrap();
    let header = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let data = 8 + header;
    for (value, name) in [(f32::NAN, "NaN"), (f32::INFINITY, "inf")] {
        bytes[data..data + 4].copy_from_slice(&value.to_le_bytes());
        std::fs::write(&weights, &bytes).unwrap();
        refused(
            &["train", "--init-weights", path, "--epochs", "1", "--quiet"],
            &[path, "non-finite", name],
        );
    }
}

#[test]
fn every_user_error_exits_with_code_2() {
    refused(
        &["train", "--init-weights", "/nonexistent.safetensors"],
        &["/nonexistent.safetensors"],
    );
    refused(&["train", "--init-weights", GPL], &[GPL, "safetensors"]);
    // A run directory without a checkpoint.
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    let run = run.to_str().unwrap();
    quick_train(&["--checkpoint-every", "0", "--out", run]);
    refused(&["train", "--resume", run, "--epochs", "2"], &[run]);
}
