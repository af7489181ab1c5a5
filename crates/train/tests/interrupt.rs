//! Stopping a run on request (what Ctrl-C and SIGTERM do through the CLI): the run ends as
//! interrupted in the epoch it was in, names the last checkpoint, and continuing from that
//! checkpoint gives the weights of a run that was never stopped.

mod common;

use common::valid;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};

use timeprest_policy::PolicyKind;
use timeprest_train::{
    LastCheckpoint, Progress, RunPaths, TrainConfig, TrainError, run, run_until_stopped,
};

fn config(epochs: u32) -> TrainConfig {
    let mut config = TrainConfig::default();
    config.pipeline.policy = PolicyKind::Timeprest;
    config.pipeline.num_stages = 3;
    config.pipeline.num_microbatches = 2;
    config.optimisation.batch_size = 16;
    config.model.hidden = vec![24, 16];
    config.optimisation.epochs = epochs;
    config.data.limit_train = Some(160);
    config.data.limit_test = Some(60);
    config
}

fn checkpointed(run_dir: &Path, resume: bool) -> RunPaths {
    RunPaths {
        out_dir: Some(run_dir.to_owned()),
        save_weights: Some(run_dir.join("weights.safetensors")),
        checkpoint_every: 1,
        resume,
        ..RunPaths::default()
    }
}

/// Raises the stop flag when epoch `epoch` starts, as a signal arriving then would.
struct StopAt<'a> {
    epoch: u32,
    stop: &'a AtomicBool,
}

impl Progress for StopAt<'_> {
    fn epoch_started(&self, epoch: u32, _num_minibatches: u64) {
        if epoch == self.epoch {
            self.stop.store(true, Ordering::Relaxed);
        }
    }
}

#[test]
fn a_stopped_run_names_its_epoch_and_checkpoint_and_continues_bit_for_bit() {
    let dir = tempfile::tempdir().unwrap();
    let whole = dir.path().join("whole");
    run(&valid(&config(4)), &checkpointed(&whole, false), &()).unwrap();

    let stopped = dir.path().join("stopped");
    let stop = AtomicBool::new(false);
    let progress = StopAt {
        epoch: 3,
        stop: &stop,
    };
    let error = run_until_stopped(
        &valid(&config(4)),
        &checkpointed(&stopped, false),
        &progress,
        &stop,
    )
    .unwrap_err();
    match &error {
        TrainError::Interrupted {
            epoch,
            last_checkpoint,
        } => {
            assert_eq!(*epoch, 3);
            assert_eq!(
                last_checkpoint.as_ref(),
                Some(&LastCheckpoint {
                    run_dir: stopped.clone(),
                    epoch: 2
                })
            );
        }
        other => panic!("not interrupted: {other}"),
    }
    assert_eq!(
        error.to_string(),
        format!(
            "interrupted in epoch 3; last checkpoint: epoch 2 in {}",
            stopped.join("checkpoint").display()
        )
    );
    let metrics = std::fs::read_to_string(stopped.join("metrics.jsonl")).unwrap();
    assert_eq!(metrics.lines().count(), 2, "epoch 3 was cut short");
    assert!(!stopped.join("weights.safetensors").exists());

    let history = run(&valid(&config(4)), &checkpointed(&stopped, true), &()).unwrap();
    assert_eq!(
        history.iter().map(|m| m.epoch).collect::<Vec<_>>(),
        vec![3, 4]
    );
    let weights = |dir: &Path| std::fs::read(dir.join("weights.safetensors")).unwrap();
    assert!(weights(&stopped) == weights(&whole), "the weights differ");
}

#[test]
fn a_run_stopped_before_its_first_checkpoint_says_there_is_none() {
    let stop = AtomicBool::new(true);
    let error =
        run_until_stopped(&valid(&config(2)), &RunPaths::default(), &(), &stop).unwrap_err();
    assert!(
        matches!(
            error,
            TrainError::Interrupted {
                epoch: 1,
                last_checkpoint: None
            }
        ),
        "{error}"
    );
    assert_eq!(
        error.to_string(),
        "interrupted in epoch 1; no checkpoint was written"
    );
}
