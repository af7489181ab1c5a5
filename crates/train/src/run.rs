//! A whole training run with its outputs on disk.
//!
//! The run directory holds `config.json` and `config.toml` (the effective configuration, written
//! before training starts so a crashed run can still be repeated), `command.txt` (the exact
//! command line) and `metrics.jsonl` (one line per epoch,
//! flushed as soon as the epoch ends, so nothing measured is lost if the process dies later).

use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};

use timeprest_nn::{load_safetensors, save_safetensors};

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

/// Trains `config` for its epochs, writing the run directory and weights of `paths`.
/// Returns the metrics of every epoch.
pub fn run(
    config: &TrainConfig,
    paths: &RunPaths,
    progress: &dyn Progress,
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
    let completed = match (&paths.out_dir, paths.resume) {
        (Some(dir), true) => trainer.restore_checkpoint(dir)?,
        (None, true) => {
            return Err(TrainError::Config(
                "--resume needs the run directory".into(),
            ));
        }
        (_, false) => 0,
    };
    let mut metrics_file = match &paths.out_dir {
        Some(dir) => {
            write_run_config(dir, config, paths.command.as_deref())?;
            let metrics_path = dir.join("metrics.jsonl");
            // On resume keep the lines of the checkpointed epochs only (a crash between an
            // epoch's metrics line and its checkpoint would otherwise leave a duplicate).
            let kept: String = match completed {
                0 => String::new(),
                _ => fs::read_to_string(&metrics_path)
                    .unwrap_or_default()
                    .lines()
                    .take(completed as usize)
                    .map(|line| format!("{line}\n"))
                    .collect(),
            };
            let mut file =
                File::create(&metrics_path).map_err(|e| TrainError::output(&metrics_path, e))?;
            file.write_all(kept.as_bytes())
                .map_err(|e| TrainError::output(&metrics_path, e))?;
            Some((metrics_path, file))
        }
        None => None,
    };

    let num_minibatches = trainer.minibatches_per_epoch()?;
    let mut history = Vec::with_capacity(config.epochs as usize);
    for epoch in completed + 1..=config.epochs {
        progress.epoch_started(epoch, num_minibatches);
        let advanced = |done: u64| progress.advanced(done);
        let EpochRun {
            metrics,
            report,
            schedule,
        } = trainer.run_epoch(epoch, Some(&advanced))?;
        if epoch == 1
            && let Some(path) = &paths.trace
        {
            fs::write(path, measured_chrome_trace(&schedule, &report))
                .map_err(|e| TrainError::output(path, e))?;
        }
        if let Some((path, file)) = metrics_file.as_mut() {
            let line = serde_json::to_string(&metrics).expect("metrics always serialise");
            writeln!(file, "{line}")
                .and_then(|()| file.flush())
                .map_err(|e| TrainError::output(path, e))?;
        }
        progress.epoch_finished(&metrics);
        history.push(metrics);
        if let Some(dir) = &paths.out_dir {
            let every = paths.checkpoint_every;
            if every > 0 && (epoch % every == 0 || epoch == config.epochs) {
                trainer.save_checkpoint(dir, epoch)?;
            }
        }
    }
    if let Some(path) = &paths.save_weights {
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            fs::create_dir_all(parent).map_err(|e| TrainError::output(parent, e))?;
        }
        save_safetensors(path, &trainer.params())?;
    }
    Ok(history)
}
