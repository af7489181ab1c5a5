//! `timeprest train --resume`: the way out of a divergence (the diverged epoch commits nothing;
//! resuming with a smaller `--lr` is allowed and recorded), a resume refused with the fields that
//! differ, and a bit-exact resume of an augmented run.

use std::path::Path;

mod common;

use common::{succeed, timeprest};

fn lines(path: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect()
}

fn stderr_of(args: &[&str]) -> (Option<i32>, String) {
    let output = timeprest(args);
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

fn checkpoint_epoch(run: &Path) -> u64 {
    let state: serde_json::Value =
        serde_json::from_slice(&std::fs::read(run.join("checkpoint/state.json")).unwrap()).unwrap();
    state["epoch"].as_u64().unwrap()
}

#[test]
fn a_diverged_epoch_commits_nothing_and_a_smaller_lr_resumes_the_run() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    let run_str = run.to_str().unwrap();
    // A constant rate, so that each metrics line's rate is the configured one.
    let base = [
        "train",
        "--quiet",
        "--limit-train",
        "300",
        "--stages",
        "2",
        "--lr",
        "0.05",
        "--lr-schedule",
        "constant",
    ];
    succeed(&[&base[..], &["--epochs", "1", "--out", run_str]].concat());

    // Epoch 2 diverges: its metrics line and checkpoint are not written, and the message says
    // how to go on.
    let (code, stderr) = stderr_of(&[
        "train", "--quiet", "--resume", run_str, "--epochs", "3", "--lr", "1e6",
    ]);
    assert_eq!(code, Some(1), "{stderr}");
    let expected = format!(
        "the checkpoint of epoch 1 in {run_str}/checkpoint is kept; continue from it with a \
         smaller learning rate: `timeprest train --resume {run_str} --lr 100000`"
    );
    assert!(
        stderr.contains("training diverged in epoch 2") && stderr.contains(&expected),
        "{stderr}"
    );
    assert_eq!(checkpoint_epoch(&run), 1);
    assert_eq!(lines(&run.join("metrics.jsonl")).len(), 1);

    // Only --epochs and --lr may change; a refusal names each field that differs.
    let (code, stderr) = stderr_of(&[
        "train",
        "--quiet",
        "--resume",
        run_str,
        "--epochs",
        "3",
        "--momentum",
        "0.5",
        "--batch-size",
        "64",
    ]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains("batch_size was 32, now 64")
            && stderr.contains("momentum was 0.9, now 0.5"),
        "{stderr}"
    );

    succeed(&[
        "train", "--quiet", "--resume", run_str, "--epochs", "3", "--lr", "0.01",
    ]);
    assert_eq!(checkpoint_epoch(&run), 3);
    let metrics = lines(&run.join("metrics.jsonl"));
    let rates: Vec<f64> = metrics.iter().map(|m| m["lr"].as_f64().unwrap()).collect();
    assert_eq!(rates, [0.05, 0.01, 0.01]);
    let history = lines(&run.join("config-history.jsonl"));
    let firsts: Vec<u64> = history
        .iter()
        .map(|h| h["first_epoch"].as_u64().unwrap())
        .collect();
    assert_eq!(firsts, [1, 2, 2], "{history:?}");
    assert!(history[0]["changed"].as_object().unwrap().is_empty());
    let last = &history[2]["changed"];
    assert_eq!(last["lr"], serde_json::json!([0.05, 0.01]), "{last}");
    assert_eq!(last["epochs"], serde_json::json!([1, 3]), "{last}");
    let config = std::fs::read_to_string(run.join("config.toml")).unwrap();
    assert!(config.contains("lr = 0.01"), "{config}");
}

#[test]
fn an_augmented_run_resumes_bit_for_bit() {
    let dir = tempfile::tempdir().unwrap();
    let path = |name: &str| dir.path().join(name).to_str().unwrap().to_string();
    let base = [
        "train",
        "--quiet",
        "--model",
        "lenet5",
        "--dataset",
        "synthetic",
        "--limit-train",
        "256",
        "--limit-test",
        "32",
        "--augment",
        "--stages",
        "2",
        "--lr",
        "0.01",
        // Extending a run changes an epoch-dependent schedule (cosine ends at the last
        // epoch); continuing to the same epochs is exact under every schedule
        // (crates/train/tests/resume.rs).
        "--lr-schedule",
        "constant",
    ];
    let (whole, whole_weights) = (path("whole"), path("whole.safetensors"));
    succeed(
        &[
            &base[..],
            &[
                "--epochs",
                "2",
                "--out",
                &whole,
                "--save-weights",
                &whole_weights,
            ],
        ]
        .concat(),
    );
    let half = path("half");
    succeed(&[&base[..], &["--epochs", "1", "--out", &half]].concat());
    let resumed_weights = path("resumed.safetensors");
    succeed(&[
        "train",
        "--quiet",
        "--resume",
        &half,
        "--epochs",
        "2",
        "--save-weights",
        &resumed_weights,
    ]);
    assert!(
        std::fs::read(&whole_weights).unwrap() == std::fs::read(&resumed_weights).unwrap(),
        "the resumed augmented run ends with other weights than the uninterrupted one"
    );
}
