//! `timeprest partition` and training the zoo models through a 4-stage pipeline, end to end.
//!
//! Small widths keep this fast; `TIMEPREST_SLOW_TESTS=1` adds full-width VGG-16 and ResNet-50
//! partitions.

use std::process::Output;

mod common;

use common::timeprest;

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// The `(first block, end)` of every stage row of a partition table.
fn stage_ranges(text: &str) -> Vec<(usize, usize)> {
    text.lines()
        .filter_map(|line| {
            let mut words = line.split_whitespace();
            words.next()?.parse::<usize>().ok()?;
            let (a, b) = words.next()?.split_once("..")?;
            Some((a.parse().ok()?, b.parse().ok()?))
        })
        .collect()
}

#[test]
fn partition_prints_every_stage_and_the_predicted_throughput() {
    for model in ["vgg16", "resnet50"] {
        let out = timeprest(&[
            "partition",
            "--model",
            model,
            "--stages",
            "4",
            "--width",
            "0.0625",
            "--depth",
            "1,1,1,1",
            "--batch-size",
            "6",
            "--repeats",
            "1",
        ]);
        let text = stdout(&out);
        assert!(out.status.success(), "{model}: {}", stderr(&out));
        let ranges = stage_ranges(&text);
        assert_eq!(ranges.len(), 4, "{text}");
        assert_eq!(ranges[0].0, 0, "{text}");
        assert!(ranges.windows(2).all(|w| w[0].1 == w[1].0), "{text}");
        assert!(text.contains("--partition time"), "{text}");
        for method in ["uniform", "params", "ops", "time"] {
            let line = text
                .lines()
                .find(|l| l.trim_start().starts_with(method) && l.contains("samples/s"))
                .unwrap_or_else(|| panic!("no {method} prediction in\n{text}"));
            let rate: f64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
            assert!(rate.is_finite() && rate > 0.0, "{line}");
        }
    }
}

#[test]
fn manual_splits_and_impossible_stage_counts() {
    let base = [
        "partition",
        "--model",
        "lenet5",
        "--input",
        "1x28x28",
        "--repeats",
        "1",
    ];
    let run = |extra: &[&str]| timeprest(&[&base[..], extra].concat());
    let out = run(&["--stages", "3", "--split", "2,5"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stage_ranges(&stdout(&out)), vec![(0, 2), (2, 5), (5, 7)]);
    // LeNet-5 has 7 blocks.
    let out = run(&["--stages", "8"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("7 blocks into 8 stages"),
        "{}",
        stderr(&out)
    );
    let out = run(&["--stages", "4", "--split", "2,5"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("--split"), "{}", stderr(&out));
    let out = run(&["--stages", "3", "--split", "5,2"]);
    assert_eq!(out.status.code(), Some(2));
    // A model that cannot take the input.
    let out = timeprest(&["partition", "--model", "vgg16", "--dataset", "digits"]);
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    assert!(err.contains("vgg16") && err.contains("1×8×8"), "{err}");
}

#[test]
fn partition_splits_gpt_between_its_embedding_decoder_layers_and_head() {
    let sizes = [
        "--embed-dim",
        "16",
        "--heads",
        "2",
        "--depth",
        "2",
        "--batch-size",
        "6",
        "--repeats",
        "1",
    ];
    // Without a data set: T from --seq-len, the vocabulary from --classes.
    let out = timeprest(
        &[
            &["partition", "--model", "gpt", "--stages", "4"][..],
            &sizes,
            &["--seq-len", "16", "--classes", "30"],
        ]
        .concat(),
    );
    let text = stdout(&out);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        stage_ranges(&text),
        vec![(0, 1), (1, 2), (2, 3), (3, 4)],
        "{text}"
    );
    assert!(
        text.contains("1x1x16 -> 30 classes at each of 16 positions"),
        "{text}"
    );
    assert!(
        text.contains("decoder 16/2h") && text.contains("lm-head 16->30"),
        "{text}"
    );
    // From a text file; the embedding, 2 layers and the head are 4 blocks.
    let gpl = [
        "--dataset",
        "text:/usr/share/common-licenses/GPL-3",
        "--seq-len",
        "8",
    ];
    let out = timeprest(
        &[
            &["partition", "--model", "gpt", "--stages", "2"][..],
            &sizes,
            &gpl,
        ]
        .concat(),
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stage_ranges(&stdout(&out)).len(), 2, "{}", stdout(&out));
    let out = timeprest(
        &[
            &["partition", "--model", "gpt", "--stages", "5"][..],
            &sizes,
            &gpl,
        ]
        .concat(),
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("4 blocks into 5 stages"),
        "{}",
        stderr(&out)
    );
}

/// Trains `model` for one short epoch through 4 stages; returns stdout.
fn train_four_stages(model: &str, extra: &[&str]) -> String {
    let dir = tempfile::tempdir().unwrap();
    let out_dir = dir.path().join("run");
    let args = [
        "train",
        "--model",
        model,
        "--width",
        "0.0625",
        "--dataset",
        "synthetic",
        "--limit-train",
        "48",
        "--limit-test",
        "16",
        "--stages",
        "4",
        "--batch-size",
        "12",
        "--microbatches",
        "3",
        "--epochs",
        "1",
        "--lr",
        "0.02",
        "--quiet",
        "--out",
        out_dir.to_str().unwrap(),
    ];
    let out = timeprest(&[&args[..], extra].concat());
    assert!(out.status.success(), "{model}: {}", stderr(&out));
    let text = stdout(&out);
    let line = text
        .lines()
        .find(|l| l.trim_start().starts_with("epoch"))
        .unwrap_or_else(|| panic!("no epoch line in {text}"));
    assert!(!line.contains("NaN") && !line.contains("inf"), "{line}");
    let metrics = std::fs::read_to_string(out_dir.join("metrics.jsonl")).unwrap();
    let m: serde_json::Value = serde_json::from_str(metrics.lines().next().unwrap()).unwrap();
    for key in ["train_loss", "test_loss"] {
        let v = m[key].as_f64().unwrap();
        assert!(v.is_finite() && v > 0.0, "{model} {key} = {v}");
    }
    text
}

#[test]
fn small_vgg16_and_resnet50_train_through_a_four_stage_pipeline() {
    train_four_stages("vgg16", &["--partition", "params", "--augment"]);
    train_four_stages(
        "resnet50",
        &[
            "--depth",
            "1,1,1,1",
            "--partition",
            "time",
            "--policy",
            "timeprest",
        ],
    );
}

#[test]
fn models_that_cannot_take_the_data_are_usage_errors() {
    let out = timeprest(&[
        "train",
        "--model",
        "alexnet",
        "--dataset",
        "digits",
        "--quiet",
    ]);
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    assert!(
        err.contains("alexnet") && err.contains("1×8×8") && err.contains("digits"),
        "{err}"
    );
    let out = timeprest(&[
        "train", "--model", "lenet5", "--split", "2", "--stages", "3",
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("--split"), "{}", stderr(&out));
}

#[test]
fn full_size_partitions_when_slow_tests_are_enabled() {
    if std::env::var_os("TIMEPREST_SLOW_TESTS").is_none() {
        return;
    }
    for model in ["vgg16", "resnet50"] {
        let out = timeprest(&["partition", "--model", model, "--stages", "4"]);
        assert!(out.status.success(), "{model}: {}", stderr(&out));
        assert_eq!(stage_ranges(&stdout(&out)).len(), 4);
    }
}
