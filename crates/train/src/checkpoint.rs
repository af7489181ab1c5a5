//! Checkpoints at epoch boundaries, written atomically, and resuming from them bit for bit.
//!
//! At the end of an epoch the pipeline has drained, so each stage's whole state is its live
//! weights, its live version number and its optimizer state; the data order of the next epoch
//! is a pure function of (seed, epoch), so the epoch number is the data-order position and there
//! is no other random state. A checkpoint directory holds, per stage (as TiMePReSt checkpoints
//! each stage locally), `stage-<s>.safetensors` with the weights (`layers.<i>.<param>`, global
//! block index, PyTorch layout; BatchNorm running statistics too) and the optimizer buffers (`optimizer.first.<i>.<param>`,
//! `optimizer.second.<i>.<param>`), plus `state.json` with the numbers.
//!
//! Atomicity: everything is written into `checkpoint.tmp/` and fsynced, then the previous
//! `checkpoint/` is renamed to `checkpoint.prev/`, the new one renamed into place, and the old
//! one removed. A crash at any point leaves either `checkpoint/` or `checkpoint.prev/` complete,
//! and [`load`] takes whichever exists.

use std::fs::{self, File};
use std::path::{Path, PathBuf};

use safetensors::{Dtype, SafeTensors, tensor::TensorView};
use serde::{Deserialize, Serialize};
use timeprest_nn::{BlockParams, ModelParams, OptimizerSnapshot, param_name};

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

/// One stage's tensors in a checkpoint.
pub struct StageTensors {
    /// Live weights.
    pub params: ModelParams,
    /// Optimizer state.
    pub optimizer: OptimizerSnapshot,
}

fn corrupt(path: &Path, what: impl std::fmt::Display) -> TrainError {
    TrainError::Checkpoint {
        path: path.display().to_string(),
        cause: what.to_string(),
    }
}

/// Writes `bytes` to `path` and flushes it to disk.
fn write_synced(path: &Path, bytes: &[u8]) -> Result<(), TrainError> {
    use std::io::Write;
    let mut file = File::create(path).map_err(|e| TrainError::output(path, e))?;
    file.write_all(bytes)
        .and_then(|()| file.sync_all())
        .map_err(|e| TrainError::output(path, e))
}

/// Serialises one stage's weights and optimizer buffers.
fn stage_bytes(state: &StageState, tensors: &StageTensors) -> Result<Vec<u8>, String> {
    let mut named: Vec<(String, Vec<usize>, Vec<u8>)> = Vec::new();
    let to_bytes = |values: &[f32]| {
        values
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect::<Vec<u8>>()
    };
    for (offset, block) in tensors.params.iter().enumerate() {
        let index = state.first_block + offset;
        // Parameters, then buffers (BatchNorm running statistics), as the file layout lists them.
        let mut shapes = block.block.file_shapes();
        shapes.extend(
            block
                .block
                .state_sizes()
                .into_iter()
                .skip(shapes.len())
                .map(|n| vec![n]),
        );
        for ((name, shape), values) in block
            .block
            .state_names()
            .iter()
            .zip(shapes)
            .zip(block.to_file_layout())
        {
            named.push((param_name(index, name), shape, to_bytes(&values)));
        }
        let names = block.block.param_names();
        for (moment, buffers) in [
            ("first", &tensors.optimizer.first),
            ("second", &tensors.optimizer.second),
        ] {
            let Some(buffers) = buffers.get(offset) else {
                continue;
            };
            for (name, buffer) in names.iter().zip(buffers) {
                if let Some(values) = buffer {
                    let key = format!("optimizer.{moment}.{index}.{name}");
                    named.push((key, vec![values.len()], to_bytes(values)));
                }
            }
        }
    }
    let views = named
        .iter()
        .map(|(name, shape, bytes)| {
            TensorView::new(Dtype::F32, shape.clone(), bytes).map(|v| (name.as_str(), v))
        })
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| e.to_string())?;
    safetensors::serialize(views, None).map_err(|e| e.to_string())
}

/// Writes a checkpoint of `stages` into `run_dir/checkpoint`, atomically.
pub fn save(
    run_dir: &Path,
    state: &CheckpointState,
    stages: &[StageTensors],
) -> Result<(), TrainError> {
    let final_dir = run_dir.join(CHECKPOINT_DIR);
    let tmp_dir = run_dir.join(format!("{CHECKPOINT_DIR}.tmp"));
    let prev_dir = run_dir.join(format!("{CHECKPOINT_DIR}.prev"));
    if tmp_dir.exists() {
        fs::remove_dir_all(&tmp_dir).map_err(|e| TrainError::output(&tmp_dir, e))?;
    }
    fs::create_dir_all(&tmp_dir).map_err(|e| TrainError::output(&tmp_dir, e))?;
    for (stage, (scalars, tensors)) in state.stages.iter().zip(stages).enumerate() {
        let path = tmp_dir.join(format!("stage-{stage}.safetensors"));
        let bytes = stage_bytes(scalars, tensors).map_err(|e| TrainError::output(&path, e))?;
        write_synced(&path, &bytes)?;
    }
    let state_path = tmp_dir.join("state.json");
    let json = serde_json::to_vec_pretty(state).expect("a checkpoint state always serialises");
    write_synced(&state_path, &json)?;
    if final_dir.exists() {
        if prev_dir.exists() {
            fs::remove_dir_all(&prev_dir).map_err(|e| TrainError::output(&prev_dir, e))?;
        }
        fs::rename(&final_dir, &prev_dir).map_err(|e| TrainError::output(&final_dir, e))?;
    }
    fs::rename(&tmp_dir, &final_dir).map_err(|e| TrainError::output(&tmp_dir, e))?;
    File::open(run_dir)
        .and_then(|dir| dir.sync_all())
        .map_err(|e| TrainError::output(run_dir, e))?;
    if prev_dir.exists() {
        fs::remove_dir_all(&prev_dir).map_err(|e| TrainError::output(&prev_dir, e))?;
    }
    Ok(())
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

/// Reads a checkpoint directory: the scalars, and per stage the tensors shaped after
/// `templates` (the stages' current parameters, which give the block kinds).
pub fn load(
    dir: &Path,
    templates: &[ModelParams],
) -> Result<(CheckpointState, Vec<StageTensors>), TrainError> {
    let state_path = dir.join("state.json");
    let text = fs::read(&state_path).map_err(|e| corrupt(&state_path, e))?;
    let state: CheckpointState =
        serde_json::from_slice(&text).map_err(|e| corrupt(&state_path, e))?;
    if state.stages.len() != templates.len() {
        return Err(corrupt(
            &state_path,
            format!(
                "{} stages saved, the run has {}",
                state.stages.len(),
                templates.len()
            ),
        ));
    }
    let mut stages = Vec::with_capacity(templates.len());
    for (stage, (scalars, template)) in state.stages.iter().zip(templates).enumerate() {
        let path = dir.join(format!("stage-{stage}.safetensors"));
        let bytes = fs::read(&path).map_err(|e| corrupt(&path, e))?;
        let file = SafeTensors::deserialize(&bytes).map_err(|e| corrupt(&path, e))?;
        let read = |name: &str| -> Result<Option<Vec<f32>>, TrainError> {
            match file.tensor(name) {
                Ok(view) => Ok(Some(
                    view.data()
                        .chunks_exact(4)
                        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                        .collect(),
                )),
                Err(safetensors::SafeTensorError::TensorNotFound(_)) => Ok(None),
                Err(e) => Err(corrupt(&path, format!("{name}: {e}"))),
            }
        };
        let mut params = Vec::with_capacity(template.len());
        let (mut first, mut second) = (Vec::new(), Vec::new());
        for (offset, block) in template.iter().enumerate() {
            let index = scalars.first_block + offset;
            let state_names = block.block.state_names();
            let mut values = Vec::with_capacity(state_names.len());
            for (name, size) in state_names.iter().zip(block.block.state_sizes()) {
                let key = param_name(index, name);
                let tensor = read(&key)?.ok_or_else(|| corrupt(&path, format!("{key} missing")))?;
                if tensor.len() != size {
                    return Err(corrupt(
                        &path,
                        format!("{key} has {} values, not {size}", tensor.len()),
                    ));
                }
                values.push(tensor);
            }
            params.push(BlockParams::from_file_layout(block.block, values));
            let names = block.block.param_names();
            let moments = |moment: &str| -> Result<Vec<Option<Vec<f32>>>, TrainError> {
                names
                    .iter()
                    .map(|name| read(&format!("optimizer.{moment}.{index}.{name}")))
                    .collect()
            };
            first.push(moments("first")?);
            second.push(moments("second")?);
        }
        let optimizer = OptimizerSnapshot {
            steps: scalars.optimizer_steps,
            first,
            second,
        };
        stages.push(StageTensors { params, optimizer });
    }
    Ok((state, stages))
}
