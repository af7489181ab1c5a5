//! A whole training run with its outputs on disk.
//!
//! The run directory holds `config.json` and `config.toml` (the effective configuration, written
//! before training starts so a crashed run can still be repeated), `command.txt` (the exact
//! command line) and `metrics.jsonl` (one line per epoch,
//! flushed as soon as the epoch ends, so nothing measured is lost if the process dies later).
//!
//! [`run_until_stopped`] takes a stop flag (the CLI raises it on Ctrl-C and SIGTERM): the run
//! then stops at the next safe point and reports what was saved ([`TrainError::Interrupted`]),
//! instead of dying with a half-written epoch.

use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use timeprest_nn::{BlockParams, load_safetensors, save_safetensors};
use timeprest_runtime::RuntimeError;

use crate::checkpoint::{self, CheckpointPlan};
use crate::config::TrainConfig;
use crate::error::TrainError;
use crate::metrics::EpochMetrics;
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
}

impl RunPaths {
    /// Where and how often checkpoints are written; `None` when never.
    pub fn checkpoints(&self) -> Option<CheckpointPlan> {
        let run_dir = self.out_dir.clone()?;
        (self.checkpoint_every > 0).then_some(CheckpointPlan {
            run_dir,
            every: self.checkpoint_every,
        })
    }

    /// The run directory to resume from, if the run resumes.
    pub fn resume_dir(&self) -> Result<Option<&Path>, TrainError> {
        match (&self.out_dir, self.resume) {
            (Some(dir), true) => Ok(Some(dir)),
            (None, true) => Err(TrainError::Config(
                "--resume needs the run directory".into(),
            )),
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

/// Creates the run directory `dir` and writes the run's configuration into it:
/// `config.json`, `config.toml` (so that `timeprest train --config DIR/config.toml` repeats the
/// run) and, when known, the exact `command` line as `command.txt`.
pub fn write_run_config(
    dir: &Path,
    config: &TrainConfig,
    command: Option<&str>,
) -> Result<(), TrainError> {
    fs::create_dir_all(dir).map_err(|e| TrainError::output(dir, e))?;
    let config_path = dir.join("config.json");
    let text = serde_json::to_string_pretty(config).expect("a config always serialises");
    fs::write(&config_path, text + "\n").map_err(|e| TrainError::output(&config_path, e))?;
    let toml_path = dir.join("config.toml");
    let text = toml::to_string(config).expect("a config always serialises to TOML");
    fs::write(&toml_path, text).map_err(|e| TrainError::output(&toml_path, e))?;
    if let Some(command) = command {
        let command_path = dir.join("command.txt");
        fs::write(&command_path, format!("{command}\n"))
            .map_err(|e| TrainError::output(&command_path, e))?;
    }
    Ok(())
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
    pub fn open(dir: &Path, completed: u32) -> Result<Self, TrainError> {
        let path = dir.join("metrics.jsonl");
        let kept: String = match completed {
            0 => String::new(),
            _ => fs::read_to_string(&path)
                .unwrap_or_default()
                .lines()
                .take(completed as usize)
                .map(|line| format!("{line}\n"))
                .collect(),
        };
        let mut file = File::create(&path).map_err(|e| TrainError::output(&path, e))?;
        file.write_all(kept.as_bytes())
            .map_err(|e| TrainError::output(&path, e))?;
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

/// Saves the final weights `params` to `path`, creating its directory.
pub fn save_final_weights(path: &Path, params: &[BlockParams]) -> Result<(), TrainError> {
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        fs::create_dir_all(parent).map_err(|e| TrainError::output(parent, e))?;
    }
    Ok(save_safetensors(path, params)?)
}

/// Trains `config` for its epochs, writing the run directory and weights of `paths`.
/// Returns the metrics of every epoch.
pub fn run(
    config: &TrainConfig,
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
    config: &TrainConfig,
    paths: &RunPaths,
    progress: &dyn Progress,
    stop: &AtomicBool,
) -> Result<Vec<EpochMetrics>, TrainError> {
    config.validate()?;
    let initial = match &paths.init_weights {
        Some(path) => {
            let spec = Trainer::new(config.clone(), None)?.spec().clone();
            Some(load_safetensors(path, &spec)?)
        }
        None => None,
    };
    let mut trainer = Trainer::new(config.clone(), initial)?;
    let (completed, mut last_checkpoint) = match paths.resume_dir()? {
        Some(dir) => {
            let epoch = trainer.restore_checkpoint(dir)?;
            (epoch, Some((epoch, checkpoint::find(dir)?)))
        }
        None => (0, None),
    };
    let mut metrics_log = match &paths.out_dir {
        Some(dir) => {
            write_run_config(dir, config, paths.command.as_deref())?;
            Some(MetricsLog::open(dir, completed)?)
        }
        None => None,
    };
    let checkpoints = paths.checkpoints();

    let num_minibatches = trainer.minibatches_per_epoch()?;
    let mut history = Vec::with_capacity(config.epochs as usize);
    for epoch in completed + 1..=config.epochs {
        let interrupted = |last_checkpoint: &Option<(u32, PathBuf)>| TrainError::Interrupted {
            epoch,
            last_checkpoint: last_checkpoint.clone(),
        };
        if stop.load(Ordering::Relaxed) {
            return Err(interrupted(&last_checkpoint));
        }
        progress.epoch_started(epoch, num_minibatches);
        let advanced = |done: u64| progress.advanced(done);
        let EpochRun {
            metrics,
            report,
            schedule,
        } = match trainer.run_epoch_with_stop(epoch, Some(&advanced), Some(stop)) {
            Err(TrainError::Runtime(RuntimeError::Interrupted)) => {
                return Err(interrupted(&last_checkpoint));
            }
            other => other?,
        };
        if epoch == 1
            && let Some(path) = &paths.trace
        {
            fs::write(path, measured_chrome_trace(&schedule, &report))
                .map_err(|e| TrainError::output(path, e))?;
        }
        if let Some(log) = metrics_log.as_mut() {
            log.append(&metrics)?;
        }
        progress.epoch_finished(&metrics);
        history.push(metrics);
        if let Some(plan) = checkpoints.as_ref()
            && plan.due_after(epoch, config.epochs)
        {
            trainer.save_checkpoint(&plan.run_dir, epoch)?;
            last_checkpoint = Some((epoch, plan.run_dir.join(checkpoint::CHECKPOINT_DIR)));
        }
    }
    if let Some(path) = &paths.save_weights {
        save_final_weights(path, &trainer.params())?;
    }
    Ok(history)
}
