//! A whole training run with its outputs on disk.
//!
//! The run directory holds `config.json` and `config.toml` (the effective configuration, written
//! before training starts so a crashed run can still be repeated), `command.txt` (the exact
//! command line, one more line per `--resume`), `config-history.jsonl` (one line per start or
//! resume: from which epoch, the command, and the configuration fields that changed, e.g. a
//! smaller `lr` after a divergence) and `metrics.jsonl` (one line per epoch, flushed as soon as
//! the epoch ends, so nothing measured is lost if the process dies later). A diverged epoch
//! writes neither its metrics line nor its checkpoint. Before anything is loaded or trained,
//! [`claim_outputs`] checks every output path and locks the run directory (see
//! [`crate::output`]), so a bad path fails at once and two runs never share a directory.
//!
//! [`run_until_stopped`] takes a stop flag (the CLI raises it on Ctrl-C and SIGTERM): the run
//! then stops at the next safe point and reports what was saved ([`TrainError::Interrupted`]),
//! instead of dying with a half-written epoch.

use std::fs::{self, File};
use std::io::{Read as _, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use timeprest_nn::{BlockParams, safetensors_bytes};
use timeprest_runtime::{RunReport, RuntimeError};
use timeprest_schedule::Schedule;

use serde::{Deserialize, Serialize};

use crate::checkpoint::{CheckpointState, Checkpointing, changed_fields};
use crate::config::{TrainConfig, ValidConfig};
use crate::error::{LastCheckpoint, TrainError};
use crate::metrics::EpochMetrics;
use crate::output::{
    DirUse, RunDirLock, check_output_file, claim_run_dir, open_for_append, write_file_atomically,
};
use crate::trace::measured_chrome_trace;
use crate::trainer::{EpochRun, Trainer};

/// Where a run reads and writes files.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RunPaths {
    /// Run directory for `config.json` and `metrics.jsonl`; `None` writes nothing there.
    pub out_dir: Option<PathBuf>,
    /// Initial weights (safetensors) instead of the seeded initialisation.
    pub init_weights: Option<PathBuf>,
    /// Where to save the final weights (safetensors).
    pub save_weights: Option<PathBuf>,
    /// Where to write the Chrome trace of the first epoch's measured events.
    pub trace: Option<PathBuf>,
    /// The exact command line that started the run, stored as `command.txt`.
    pub command: Option<String>,
    /// Write a checkpoint into `out_dir/checkpoint` every this many epochs (and after the
    /// last); 0 never.
    pub checkpoint_every: u32,
    /// Continue from the checkpoint in `out_dir` instead of starting afresh.
    pub resume: bool,
    /// A new run may replace a previous run in a non-empty `out_dir` (`--overwrite`); without
    /// it such a directory is refused.
    pub overwrite: bool,
}

impl RunPaths {
    /// Where and how often checkpoints are written; `None` when never.
    pub fn checkpoints(&self) -> Option<Checkpointing> {
        let run_dir = self.out_dir.clone()?;
        (self.checkpoint_every > 0).then_some(Checkpointing {
            run_dir,
            every: self.checkpoint_every,
        })
    }

    /// The run directory to resume from, if the run resumes.
    pub fn resume_dir(&self) -> Result<Option<&Path>, TrainError> {
        match (&self.out_dir, self.resume) {
            (Some(dir), true) => Ok(Some(dir)),
            (None, true) => Err(TrainError::config("--resume", "needs the run directory")),
            (_, false) => Ok(None),
        }
    }
}

/// Callbacks for showing progress; all default to doing nothing.
pub trait Progress: Sync {
    /// An epoch with `num_minibatches` mini-batches starts.
    fn epoch_started(&self, _epoch: u32, _num_minibatches: u64) {}
    /// `done` mini-batches of the current epoch have been applied at stage 0.
    fn advanced(&self, _done: u64) {}
    /// An epoch ended.
    fn epoch_finished(&self, _metrics: &EpochMetrics) {}
}

/// No progress output.
impl Progress for () {}

/// Checks every output path of `paths` and claims the run directory, before anything is
/// loaded or trained: `--save-weights` and `--trace` must be writable regular files (or not
/// exist yet), and the run directory is locked for the run's life (a new run refuses a
/// non-empty one unless `paths.overwrite`). Drop the returned lock when the run ends. The
/// threaded run and MPI's rank 0 both call this, so every entry point checks the same things.
pub fn claim_outputs(paths: &RunPaths) -> Result<Option<RunDirLock>, TrainError> {
    if let Some(path) = &paths.save_weights {
        check_output_file(path, "--save-weights")?;
    }
    if let Some(path) = &paths.trace {
        check_output_file(path, "--trace")?;
    }
    let Some(dir) = &paths.out_dir else {
        return Ok(None);
    };
    let (flag, usage) = if paths.resume {
        ("--resume", DirUse::Resume)
    } else {
        (
            "--out",
            DirUse::New {
                overwrite: paths.overwrite,
            },
        )
    };
    Ok(Some(claim_run_dir(dir, flag, usage)?))
}

/// Writes the run's configuration into its directory `dir`: `config.json`, `config.toml` (so
/// that `timeprest train --config DIR/config.toml` repeats the run) and, when known, the exact
/// `command` line into `command.txt`; a `resumed` run appends its line to the commands already
/// there, so the file is the run's whole history.
pub fn write_run_config(
    dir: &Path,
    config: &TrainConfig,
    command: Option<&str>,
    resumed: bool,
) -> Result<(), TrainError> {
    let text = serde_json::to_string_pretty(config).expect("a config always serialises");
    write_file_atomically(&dir.join("config.json"), (text + "\n").as_bytes())?;
    let text = toml::to_string(config).expect("a config always serialises to TOML");
    write_file_atomically(&dir.join("config.toml"), text.as_bytes())?;
    if let Some(command) = command {
        let command_path = dir.join("command.txt");
        let mut history = if resumed && command_path.is_file() {
            fs::read_to_string(&command_path).map_err(|e| TrainError::output(&command_path, e))?
        } else {
            String::new()
        };
        if !history.is_empty() && !history.ends_with('\n') {
            history.push('\n');
        }
        history.push_str(command);
        history.push('\n');
        write_file_atomically(&command_path, history.as_bytes())?;
    }
    Ok(())
}

/// One line of a run directory's `config-history.jsonl`: a start or a resume of the run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HistoryEntry {
    /// The first epoch this start trains (1 for a fresh run).
    pub first_epoch: u32,
    /// The command line, when known.
    pub command: Option<String>,
    /// The configuration fields that differ from those of the checkpoint this start resumes,
    /// as `[before, now]` (empty for a fresh run).
    pub changed: std::collections::BTreeMap<String, [serde_json::Value; 2]>,
}

/// Name of the history file in a run directory.
pub const HISTORY_FILE: &str = "config-history.jsonl";

/// Prepares the run directory `dir` for a run of `config` that starts fresh
/// (`resumed_from = None`) or continues the checkpoint `resumed_from`: writes the configuration
/// files ([`write_run_config`]), appends the start to `config-history.jsonl` and opens
/// `metrics.jsonl` after the epochs already completed.
pub fn open_run_dir(
    dir: &Path,
    config: &TrainConfig,
    command: Option<&str>,
    resumed_from: Option<&CheckpointState>,
) -> Result<MetricsLog, TrainError> {
    write_run_config(dir, config, command, resumed_from.is_some())?;
    let entry = HistoryEntry {
        first_epoch: resumed_from.map_or(0, |state| state.epoch) + 1,
        command: command.map(str::to_owned),
        changed: resumed_from
            .map(|state| changed_fields(&state.config, config))
            .unwrap_or_default()
            .into_iter()
            .collect(),
    };
    let path = dir.join(HISTORY_FILE);
    let line = serde_json::to_string(&entry).expect("a history entry always serialises");
    open_for_append(&path)?
        .write_all(format!("{line}\n").as_bytes())
        .map_err(|e| TrainError::output(&path, e))?;
    MetricsLog::open(dir, resumed_from.map_or(0, |state| state.epoch))
}

/// `metrics.jsonl` of a run directory, one line per epoch, each flushed when written.
pub struct MetricsLog {
    path: PathBuf,
    file: File,
}

impl MetricsLog {
    /// Opens `dir/metrics.jsonl` for a run that has completed `completed` epochs: it keeps the
    /// lines of those epochs only (after a crash between an epoch's metrics line and its
    /// checkpoint, a resumed run would otherwise write that epoch twice).
    /// The file is appended to, never replaced, and must be a regular file.
    pub fn open(dir: &Path, completed: u32) -> Result<Self, TrainError> {
        let path = dir.join("metrics.jsonl");
        let mut file = open_for_append(&path)?;
        let mut text = String::new();
        file.read_to_string(&mut text)
            .map_err(|e| TrainError::output(&path, e))?;
        let kept: usize = text
            .split_inclusive('\n')
            .take(completed as usize)
            .map(str::len)
            .sum();
        file.set_len(kept as u64)
            .map_err(|e| TrainError::output(&path, e))?;
        if !text[..kept].is_empty() && !text[..kept].ends_with('\n') {
            writeln!(file).map_err(|e| TrainError::output(&path, e))?;
        }
        Ok(Self { path, file })
    }

    /// Appends the line of one epoch.
    pub fn append(&mut self, metrics: &EpochMetrics) -> Result<(), TrainError> {
        let line = serde_json::to_string(metrics).expect("metrics always serialise");
        writeln!(self.file, "{line}")
            .and_then(|()| self.file.flush())
            .map_err(|e| TrainError::output(&self.path, e))
    }
}

/// What a run writes as its epochs end, whichever executor ran them: the measured Chrome trace
/// of the first epoch (`--trace`), one line of `metrics.jsonl` per epoch (with a run
/// directory) and the final weights (`--save-weights`). The threaded run and MPI's rank 0 both
/// write through it.
pub struct RunRecord<'a> {
    paths: &'a RunPaths,
    metrics: Option<MetricsLog>,
}

impl<'a> RunRecord<'a> {
    /// Prepares the run directory of `paths`, if any, for a run of `config` that starts fresh
    /// (`resumed_from = None`) or continues the checkpoint `resumed_from` ([`open_run_dir`]).
    pub fn open(
        config: &TrainConfig,
        paths: &'a RunPaths,
        resumed_from: Option<&CheckpointState>,
    ) -> Result<Self, TrainError> {
        let metrics = match &paths.out_dir {
            Some(dir) => Some(open_run_dir(
                dir,
                config,
                paths.command.as_deref(),
                resumed_from,
            )?),
            None => None,
        };
        Ok(Self { paths, metrics })
    }

    /// Records an epoch that ran `schedule` with the measured `report`: the trace (of the
    /// first epoch) and the metrics line.
    pub fn epoch(
        &mut self,
        metrics: &EpochMetrics,
        schedule: &Schedule,
        report: &RunReport,
    ) -> Result<(), TrainError> {
        if metrics.epoch == 1
            && let Some(path) = &self.paths.trace
        {
            write_file_atomically(path, measured_chrome_trace(schedule, report).as_bytes())?;
        }
        match self.metrics.as_mut() {
            Some(log) => log.append(metrics),
            None => Ok(()),
        }
    }

    /// Saves the final weights `params`, when the run was asked to.
    pub fn final_weights(&self, params: &[BlockParams]) -> Result<(), TrainError> {
        match &self.paths.save_weights {
            Some(path) => save_final_weights(path, params),
            None => Ok(()),
        }
    }
}

/// Saves the final weights `params` to `path` as safetensors, atomically (see
/// [`write_file_atomically`]: its directory is created, a symbolic link is written through,
/// anything but a regular file is refused).
pub fn save_final_weights(path: &Path, params: &[BlockParams]) -> Result<(), TrainError> {
    Ok(write_file_atomically(
        path,
        &safetensors_bytes(path, params)?,
    )?)
}

/// Trains `config` for its epochs, writing the run directory and weights of `paths`.
/// Returns the metrics of every epoch.
pub fn run(
    config: &ValidConfig,
    paths: &RunPaths,
    progress: &dyn Progress,
) -> Result<Vec<EpochMetrics>, TrainError> {
    run_until_stopped(config, paths, progress, &AtomicBool::new(false))
}

/// [`run()`] that stops cleanly once `stop` is raised (by a Ctrl-C or SIGTERM handler): within
/// one pipeline action when it is raised during an epoch, before the next epoch otherwise. An
/// epoch's evaluation, metrics line and checkpoint are never cut short, so every checkpoint on
/// disk is complete. Ends with [`TrainError::Interrupted`], naming the epoch that did not
/// complete and the last checkpoint to resume from.
pub fn run_until_stopped(
    config: &ValidConfig,
    paths: &RunPaths,
    progress: &dyn Progress,
    stop: &AtomicBool,
) -> Result<Vec<EpochMetrics>, TrainError> {
    let _run_dir = claim_outputs(paths)?;
    let mut trainer = Trainer::new(config.clone(), paths.init_weights.as_deref())?;
    let resumed_from = match paths.resume_dir()? {
        Some(dir) => Some(trainer.restore_checkpoint(dir)?),
        None => None,
    };
    let completed = resumed_from.as_ref().map_or(0, |state| state.epoch);
    let mut record = RunRecord::open(config, paths, resumed_from.as_ref())?;
    let checkpoints = paths.checkpoints();
    let mut last_checkpoint = resumed_from.as_ref().and_then(|state| {
        let run_dir = paths.out_dir.clone()?;
        Some(LastCheckpoint {
            run_dir,
            epoch: state.epoch,
        })
    });

    let num_minibatches = trainer.pipeline().minibatches_per_epoch();
    let mut history = Vec::with_capacity(config.optimisation.epochs as usize);
    for epoch in completed + 1..=config.optimisation.epochs {
        let interrupted = || TrainError::Interrupted {
            epoch,
            last_checkpoint: last_checkpoint.clone(),
        };
        if stop.load(Ordering::Relaxed) {
            return Err(interrupted());
        }
        progress.epoch_started(epoch, num_minibatches);
        let advanced = |done: u64| progress.advanced(done);
        let EpochRun {
            metrics,
            report,
            schedule,
        } = match trainer.run_epoch_with_stop(epoch, Some(&advanced), Some(stop)) {
            Err(TrainError::Runtime(RuntimeError::Interrupted)) => return Err(interrupted()),
            other => other.map_err(|error| error.after_checkpoint(last_checkpoint.clone()))?,
        };
        record.epoch(&metrics, &schedule, &report)?;
        progress.epoch_finished(&metrics);
        history.push(metrics);
        if let Some(checkpointing) = checkpoints.as_ref()
            && checkpointing.due_after(epoch, config.optimisation.epochs)
        {
            trainer.save_checkpoint(&checkpointing.run_dir, epoch)?;
            last_checkpoint = Some(LastCheckpoint {
                run_dir: checkpointing.run_dir.clone(),
                epoch,
            });
        }
    }
    record.final_weights(&trainer.params())?;
    Ok(history)
}
