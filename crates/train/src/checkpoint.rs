//! Checkpoints at epoch boundaries, written atomically by one writer per stage, and resuming
//! from them bit for bit.
//!
//! At the end of an epoch the pipeline has drained, so each stage's whole state is its live
//! weights, its live version number and its optimizer state; the data order of the next epoch
//! is a pure function of (seed, epoch), so the epoch number is the data-order position and there
//! is no other random state. A checkpoint directory holds, per stage (as TiMePReSt checkpoints
//! each stage locally), `stage-<s>.safetensors` with the weights (`layers.<i>.<param>`, global
//! block index, PyTorch layout; BatchNorm running statistics too) and the optimizer buffers
//! (`optimizer.first.<i>.<param>`, `optimizer.second.<i>.<param>`), plus `state.json` with the
//! numbers. The layout does not depend on who wrote it: a checkpoint of a threaded run resumes
//! under MPI and the other way round.
//!
//! Writing is split so that each stage's owner writes its own file, in this process or on
//! another MPI rank: [`clear_staging`] once, then [`write_stage`] for every stage (each file
//! fsynced), then, once all are written, [`commit`] by one process: it checks that every stage
//! file is there, writes `state.json`, fsyncs the directory and swaps it in. [`save`] does all of
//! it for the stages of one process.
//!
//! Atomicity: everything is written into `checkpoint.tmp/`, then the previous `checkpoint/` is
//! renamed to `checkpoint.prev/`, the new one renamed into place, and the old one removed. A
//! crash at any point leaves either `checkpoint/` or `checkpoint.prev/` complete (a directory
//! counts only once `state.json`, written last, is in it), and [`find`] takes whichever exists.

use std::fs::{self, File};
use std::ops::Range;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use timeprest_nn::{BurnStage, read_stage_checkpoint, stage_checkpoint_bytes};

use crate::config::TrainConfig;
use crate::error::TrainError;

/// Name of the checkpoint directory inside a run directory.
pub const CHECKPOINT_DIR: &str = "checkpoint";

/// The scalar part of a checkpoint (`state.json`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CheckpointState {
    /// Epochs completed.
    pub epoch: u32,
    /// Updates every stage has applied.
    pub updates: u64,
    /// The configuration of the run.
    pub config: TrainConfig,
    /// Per stage: its first global block index, block count and optimizer step count.
    pub stages: Vec<StageState>,
}

/// The scalar state of one stage.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StageState {
    /// Global index of the stage's first block.
    pub first_block: usize,
    /// Number of blocks.
    pub num_blocks: usize,
    /// Live version (updates applied).
    pub live_version: u64,
    /// Optimizer steps taken.
    pub optimizer_steps: u64,
}

/// Where and how often a run writes checkpoints.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpointing {
    /// The run directory; checkpoints go to its `checkpoint/`.
    pub run_dir: PathBuf,
    /// Every this many epochs (at least 1), and after the last.
    pub every: u32,
}

impl Checkpointing {
    /// True when a checkpoint is due after epoch `epoch` of a run of `last_epoch` epochs.
    pub fn due_after(&self, epoch: u32, last_epoch: u32) -> bool {
        epoch.is_multiple_of(self.every) || epoch == last_epoch
    }
}

fn corrupt(path: &Path, what: impl std::fmt::Display) -> TrainError {
    TrainError::Checkpoint {
        path: path.display().to_string(),
        cause: what.to_string(),
    }
}

/// Where the next checkpoint of `run_dir` is assembled: `checkpoint.tmp/`.
pub fn staging_dir(run_dir: &Path) -> PathBuf {
    run_dir.join(format!("{CHECKPOINT_DIR}.tmp"))
}

fn previous_dir(run_dir: &Path) -> PathBuf {
    run_dir.join(format!("{CHECKPOINT_DIR}.prev"))
}

/// The file of stage `stage` in a checkpoint directory.
pub fn stage_file_name(stage: usize) -> String {
    format!("stage-{stage}.safetensors")
}

/// Writes `bytes` to `path` and flushes it to disk.
fn write_synced(path: &Path, bytes: &[u8]) -> Result<(), TrainError> {
    use std::io::Write;
    let mut file = File::create(path).map_err(|e| TrainError::output(path, e))?;
    file.write_all(bytes)
        .and_then(|()| file.sync_all())
        .map_err(|e| TrainError::output(path, e))
}

/// Flushes the entries of directory `dir` to disk.
fn sync_dir(dir: &Path) -> Result<(), TrainError> {
    File::open(dir)
        .and_then(|dir| dir.sync_all())
        .map_err(|e| TrainError::output(dir, e))
}

/// Removes what a crash may have left in the staging directory of `run_dir`, so that the next
/// checkpoint starts from an empty one. Call it before any stage is written.
pub fn clear_staging(run_dir: &Path) -> Result<(), TrainError> {
    let tmp_dir = staging_dir(run_dir);
    if tmp_dir.exists() {
        fs::remove_dir_all(&tmp_dir).map_err(|e| TrainError::output(&tmp_dir, e))?;
    }
    Ok(())
}

/// Writes the file of `stage` (index `index`, drained at an epoch boundary) into the staging
/// directory of `run_dir`, fsynced, and returns the stage's scalars for `state.json`.
pub fn write_stage(
    run_dir: &Path,
    index: usize,
    stage: &BurnStage,
) -> Result<StageState, TrainError> {
    let params = stage.live_params();
    let scalars = StageState {
        first_block: stage.first_block(),
        num_blocks: params.len(),
        live_version: stage.live_version(),
        optimizer_steps: stage.optimizer().steps(),
    };
    let tmp_dir = staging_dir(run_dir);
    fs::create_dir_all(&tmp_dir).map_err(|e| TrainError::output(&tmp_dir, e))?;
    let path = tmp_dir.join(stage_file_name(index));
    let bytes = stage_checkpoint_bytes(
        &path,
        scalars.first_block,
        &params,
        &stage.optimizer_snapshot(),
    )
    .map_err(|e| TrainError::output(&path, e))?;
    write_synced(&path, &bytes)?;
    Ok(scalars)
}

/// Completes the checkpoint whose stage files [`write_stage`] put into the staging directory
/// of `run_dir`: checks that every stage's file is there, writes `state.json` and swaps the
/// directory into place atomically.
pub fn commit(run_dir: &Path, state: &CheckpointState) -> Result<(), TrainError> {
    let final_dir = run_dir.join(CHECKPOINT_DIR);
    let tmp_dir = staging_dir(run_dir);
    let prev_dir = previous_dir(run_dir);
    for stage in 0..state.stages.len() {
        let path = tmp_dir.join(stage_file_name(stage));
        if !path.is_file() {
            return Err(TrainError::output(
                &path,
                format!(
                    "stage {stage} reported this file written, but it is not there (with \
                     several machines, the run directory must be on a file system they all \
                     share, at the same path)"
                ),
            ));
        }
    }
    let state_path = tmp_dir.join("state.json");
    let json = serde_json::to_vec_pretty(state).expect("a checkpoint state always serialises");
    write_synced(&state_path, &json)?;
    sync_dir(&tmp_dir)?;
    if final_dir.exists() {
        if prev_dir.exists() {
            fs::remove_dir_all(&prev_dir).map_err(|e| TrainError::output(&prev_dir, e))?;
        }
        fs::rename(&final_dir, &prev_dir).map_err(|e| TrainError::output(&final_dir, e))?;
    }
    fs::rename(&tmp_dir, &final_dir).map_err(|e| TrainError::output(&tmp_dir, e))?;
    sync_dir(run_dir)?;
    if prev_dir.exists() {
        fs::remove_dir_all(&prev_dir).map_err(|e| TrainError::output(&prev_dir, e))?;
    }
    Ok(())
}

/// Writes a checkpoint of `stages` (all stages of the run, in order) into `run_dir/checkpoint`,
/// atomically.
pub fn save(
    run_dir: &Path,
    epoch: u32,
    updates: u64,
    config: &TrainConfig,
    stages: &[BurnStage],
) -> Result<(), TrainError> {
    clear_staging(run_dir)?;
    let stages = stages
        .iter()
        .enumerate()
        .map(|(index, stage)| write_stage(run_dir, index, stage))
        .collect::<Result<_, _>>()?;
    let state = CheckpointState {
        epoch,
        updates,
        config: config.clone(),
        stages,
    };
    commit(run_dir, &state)
}

/// The checkpoint directory to resume from in `run_dir`: `checkpoint/`, or `checkpoint.prev/`
/// if a crash interrupted the swap.
pub fn find(run_dir: &Path) -> Result<PathBuf, TrainError> {
    [CHECKPOINT_DIR.to_string(), format!("{CHECKPOINT_DIR}.prev")]
        .into_iter()
        .map(|name| run_dir.join(name))
        .find(|dir| dir.join("state.json").is_file())
        .ok_or_else(|| {
            corrupt(
                run_dir,
                "no checkpoint (checkpoint/state.json) in this directory",
            )
        })
}

/// Configuration fields a resumed run may change: how many epochs it trains, and its learning
/// rate (the way out of a divergence: resume from the last good checkpoint with a smaller one).
/// Every other field decides what the checkpointed epochs computed, so changing it would make
/// the run a mixture of two experiments.
pub const RESUMABLE_FIELDS: [&str; 2] = ["epochs", "lr"];

/// The configuration fields whose values differ between `before` and `now`, in a fixed order,
/// with both values as JSON.
pub fn changed_fields(
    before: &TrainConfig,
    now: &TrainConfig,
) -> Vec<(String, [serde_json::Value; 2])> {
    let as_fields = |config: &TrainConfig| match serde_json::to_value(config) {
        Ok(serde_json::Value::Object(fields)) => fields,
        _ => unreachable!("a configuration serialises to a JSON object"),
    };
    let (before, mut now) = (as_fields(before), as_fields(now));
    before
        .into_iter()
        .filter_map(|(field, old)| {
            let new = now.remove(&field).unwrap_or(serde_json::Value::Null);
            (old != new).then_some((field, [old, new]))
        })
        .collect()
}

/// Reads `state.json` of the checkpoint directory `dir` and checks that a run of `config`
/// whose stages own the blocks `split` can continue from it: same stages, same configuration
/// up to [`RESUMABLE_FIELDS`], and epochs left to train.
pub fn read_state(
    dir: &Path,
    config: &TrainConfig,
    split: &[Range<usize>],
) -> Result<CheckpointState, TrainError> {
    let state_path = dir.join("state.json");
    let text = fs::read(&state_path).map_err(|e| corrupt(&state_path, e))?;
    let state: CheckpointState =
        serde_json::from_slice(&text).map_err(|e| corrupt(&state_path, e))?;
    if state.stages.len() != split.len() {
        return Err(corrupt(
            &state_path,
            format!(
                "it was written by a run of {} stages, this run has {} (--stages must stay as \
                 it was)",
                state.stages.len(),
                split.len()
            ),
        ));
    }
    let refused: Vec<String> = changed_fields(&state.config, config)
        .into_iter()
        .filter(|(field, _)| !RESUMABLE_FIELDS.contains(&field.as_str()))
        .map(|(field, [before, now])| format!("{field} was {before}, now {now}"))
        .collect();
    if !refused.is_empty() {
        return Err(corrupt(
            &state_path,
            format!(
                "the checkpoint was written with another configuration: {} (only {} may change \
                 when resuming)",
                refused.join(", "),
                RESUMABLE_FIELDS
                    .map(|field| format!("--{field}"))
                    .join(" and ")
            ),
        ));
    }
    let saved_split: Vec<Range<usize>> = state
        .stages
        .iter()
        .map(|stage| stage.first_block..stage.first_block + stage.num_blocks)
        .collect();
    if saved_split != split {
        return Err(corrupt(
            &state_path,
            format!(
                "the checkpoint's stages own the blocks {saved_split:?}, this run's {split:?} \
                 (a measured --partition may split differently; give the split with --split)"
            ),
        ));
    }
    if state.epoch >= config.optimisation.epochs {
        return Err(corrupt(
            &state_path,
            format!(
                "nothing left to train: the checkpoint has completed {} epochs and --epochs is \
                 {} (pass a larger --epochs)",
                state.epoch, config.optimisation.epochs
            ),
        ));
    }
    Ok(state)
}

/// Puts `stage` (index `index`, built for the run `state` fits; see [`read_state`]) back into
/// its state in the checkpoint directory `dir`: weights, BatchNorm statistics, live version and
/// optimizer state.
pub fn restore_stage(
    dir: &Path,
    index: usize,
    state: &CheckpointState,
    stage: &mut BurnStage,
) -> Result<(), TrainError> {
    let scalars = &state.stages[index];
    let path = dir.join(stage_file_name(index));
    let (params, optimizer) = read_stage_checkpoint(
        &path,
        scalars.first_block,
        &stage.live_params(),
        scalars.optimizer_steps,
    )
    .map_err(|e| corrupt(&path, e))?;
    stage
        .restore(scalars.live_version, params, optimizer)
        .map_err(|e| corrupt(&path, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(stages: usize, epoch: u32) -> CheckpointState {
        let stage = |s: usize| StageState {
            first_block: s,
            num_blocks: 1,
            live_version: 7,
            optimizer_steps: 7,
        };
        CheckpointState {
            epoch,
            updates: 7,
            config: {
                let mut config = TrainConfig::default();
                config.pipeline.num_stages = stages as u32;
                config.optimisation.epochs = 4;
                config
            },
            stages: (0..stages).map(stage).collect(),
        }
    }

    fn write_state(dir: &Path, state: &CheckpointState) {
        fs::create_dir_all(dir).unwrap();
        fs::write(dir.join("state.json"), serde_json::to_vec(state).unwrap()).unwrap();
    }

    #[test]
    fn a_commit_with_a_stage_file_missing_keeps_the_old_checkpoint() {
        let run = tempfile::tempdir().unwrap();
        let old = state(2, 1);
        write_state(&run.path().join(CHECKPOINT_DIR), &old);
        clear_staging(run.path()).unwrap();
        fs::create_dir_all(staging_dir(run.path())).unwrap();
        fs::write(staging_dir(run.path()).join(stage_file_name(0)), b"stage 0").unwrap();
        let error = commit(run.path(), &state(2, 2)).unwrap_err().to_string();
        assert!(
            error.contains("checkpoint.tmp/stage-1.safetensors") && error.contains("share"),
            "{error}"
        );
        let kept = find(run.path()).unwrap();
        assert_eq!(kept, run.path().join(CHECKPOINT_DIR));
        let config = old.config.clone();
        assert_eq!(read_state(&kept, &config, &[0..1, 1..2]).unwrap(), old);

        fs::write(staging_dir(run.path()).join(stage_file_name(1)), b"stage 1").unwrap();
        commit(run.path(), &state(2, 2)).unwrap();
        let new = find(run.path()).unwrap();
        assert_eq!(read_state(&new, &config, &[0..1, 1..2]).unwrap().epoch, 2);
        assert!(new.join(stage_file_name(1)).is_file());
        assert!(!staging_dir(run.path()).exists() && !previous_dir(run.path()).exists());
    }

    #[test]
    fn a_checkpoint_that_does_not_fit_the_run_is_refused_naming_what_differs() {
        let dir = tempfile::tempdir().unwrap();
        let saved = state(3, 2);
        write_state(dir.path(), &saved);
        let split = [0..1, 1..2, 2..3];
        let error = |config: &TrainConfig, split: &[Range<usize>]| {
            read_state(dir.path(), config, split)
                .unwrap_err()
                .to_string()
        };
        let two = {
            let mut config = saved.config.clone();
            config.pipeline.num_stages = 2;
            config
        };
        assert!(
            error(&two, &split[..2]).contains("a run of 3 stages, this run has 2"),
            "{}",
            error(&two, &split[..2])
        );
        let other = {
            let mut config = saved.config.clone();
            config.optimisation.momentum = 0.5;
            config.optimisation.batch_size = 64;
            config.optimisation.lr = 0.5;
            config
        };
        assert_eq!(
            error(&other, &split),
            format!(
                "cannot resume from {}: the checkpoint was written with another configuration: \
                 batch_size was 32, now 64, momentum was 0.9, now 0.5 (only --epochs and --lr \
                 may change when resuming)",
                dir.path().join("state.json").display()
            )
        );
        let smaller_lr = {
            let mut config = saved.config.clone();
            config.optimisation.lr = 0.001;
            config.optimisation.epochs = 9;
            config
        };
        assert_eq!(read_state(dir.path(), &smaller_lr, &split).unwrap(), saved);
        let moved = [0..2, 2..3, 3..4];
        assert!(error(&saved.config, &moved).contains("own the blocks [0..1, 1..2, 2..3]"));
        let done = {
            let mut config = saved.config.clone();
            config.optimisation.epochs = 2;
            config
        };
        assert!(error(&done, &split).contains("nothing left to train"));
        let longer = {
            let mut config = saved.config.clone();
            config.optimisation.epochs = 9;
            config
        };
        assert_eq!(read_state(dir.path(), &longer, &split).unwrap(), saved);
    }

    #[test]
    fn checkpoints_are_due_every_k_epochs_and_after_the_last() {
        let checkpointing = Checkpointing {
            run_dir: PathBuf::from("run"),
            every: 3,
        };
        let due: Vec<u32> = (1..=7).filter(|e| checkpointing.due_after(*e, 7)).collect();
        assert_eq!(due, vec![3, 6, 7]);
    }
}
