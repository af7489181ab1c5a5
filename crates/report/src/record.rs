//! The comparison directory on disk, and loading it (or a single run directory) back.
//!
//! A comparison directory is `comparison.json` (the [`Manifest`]: the exact command, the target
//! accuracy, every policy variant with its configuration and simulator prediction, and every run
//! with its outcome) next to `runs/<variant>-seed<k>/`, each an ordinary `timeprest train` run
//! directory (`config.json`, `metrics.jsonl`, and `trace.json` for the first seed). The manifest
//! is rewritten after every run, so an interrupted comparison still has a readable record; the
//! metrics themselves stay in the run directories, where `train` already writes them, so there is
//! one source for every number and `timeprest plot` can rebuild everything from the directory.
//! For the same reason a run's outcome is judged from its directory as it is now (the epochs in
//! its `metrics.jsonl` against its configuration), not from the manifest, which may be older: a
//! comparison interrupted in a run, whose run was then finished by `timeprest train --resume`,
//! counts that run as completed. Only a divergence, which the files do not show, comes from the
//! manifest.

use std::fs;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use timeprest_train::{EpochMetrics, TrainConfig, write_file_atomically};

use crate::error::ReportError;
use crate::predict::{StagePrediction, predict};

/// File name of the manifest in a comparison directory.
pub const MANIFEST_FILE: &str = "comparison.json";
/// Folder of the run directories in a comparison directory.
pub const RUNS_DIR: &str = "runs";
/// File name of the measured Chrome trace in a run directory.
pub const TRACE_FILE: &str = "trace.json";

/// How a run ended.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "kebab-case")]
pub enum Outcome {
    /// Not (yet) finished: running, interrupted, or a run directory with fewer epochs than
    /// configured.
    Incomplete,
    /// Every configured epoch ran.
    Completed,
    /// The loss became NaN or infinite.
    Diverged {
        /// The epoch (1-based) in which it diverged.
        epoch: u32,
        /// The training error's message.
        message: String,
    },
}

/// One policy variant of a comparison: a policy, possibly with per-policy overrides
/// (`pipedream:lr=0.01`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Variant {
    /// The label as given on the command line (`pipedream`, `pipedream:lr=0.01`).
    pub label: String,
    /// The configuration of its first seed.
    pub config: TrainConfig,
    /// The simulator's per-stage prediction for one epoch.
    pub prediction: Option<Vec<StagePrediction>>,
}

/// One run of a comparison.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RunEntry {
    /// The variant's label.
    pub label: String,
    /// The seed.
    pub seed: u64,
    /// The run directory, relative to the comparison directory.
    pub dir: PathBuf,
    /// How it ended.
    pub outcome: Outcome,
}

/// `comparison.json`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    /// The exact command line that produced the comparison.
    pub command: String,
    /// `--target-accuracy`, if given.
    pub target_accuracy: Option<f64>,
    /// The seeds, in the order given.
    pub seeds: Vec<u64>,
    /// The policy variants, in the order given.
    pub variants: Vec<Variant>,
    /// Every run started so far, in the order they were first started; the runs of
    /// `variants` × `seeds` missing here have not started (`timeprest compare --resume` runs
    /// them).
    pub runs: Vec<RunEntry>,
    /// `--checkpoint-every` of every run (0: none), so that `compare --resume` continues the
    /// runs as they were started.
    #[serde(default)]
    pub checkpoint_every: u32,
    /// `--init-weights` of every run (made absolute), if given.
    #[serde(default)]
    pub init_weights: Option<PathBuf>,
}

impl Manifest {
    /// Writes `DIR/comparison.json` atomically (a temporary file renamed over the old one), so
    /// a crash while writing leaves the previous manifest readable.
    pub fn save(&self, dir: &Path) -> Result<(), ReportError> {
        let text = serde_json::to_string_pretty(self).expect("a manifest always serialises");
        write_file_atomically(&dir.join(MANIFEST_FILE), (text + "\n").as_bytes())?;
        Ok(())
    }

    /// Reads `DIR/comparison.json`.
    pub fn load(dir: &Path) -> Result<Self, ReportError> {
        let path = dir.join(MANIFEST_FILE);
        let text = read(&path)?;
        serde_json::from_str(&text).map_err(|e| parse_error(&path, e))
    }
}

/// The run directory name of `label` with `seed`: the label with every character other than
/// letters, digits, `.` and `_` replaced by `-` (`pipedream:lr=0.01` → `pipedream-lr-0.01`),
/// then `-seed<k>`.
pub fn run_dir_name(label: &str, seed: u64) -> String {
    let slug: String = label
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' || c == '_' {
                c
            } else {
                '-'
            }
        })
        .collect();
    format!("{slug}-seed{seed}")
}

/// A run with its measurements.
#[derive(Clone, Debug, PartialEq)]
pub struct Run {
    /// The variant's label.
    pub label: String,
    /// The seed.
    pub seed: u64,
    /// Its configuration.
    pub config: TrainConfig,
    /// One entry per finished epoch.
    pub epochs: Vec<EpochMetrics>,
    /// How it ended.
    pub outcome: Outcome,
    /// Its measured Chrome trace, if it wrote one.
    pub trace: Option<PathBuf>,
}

/// A comparison or a single run, loaded from its directory.
#[derive(Clone, Debug, PartialEq)]
pub struct Loaded {
    /// The manifest; `None` for a single run directory.
    pub manifest: Option<Manifest>,
    /// The variants (one, labelled with the policy, for a single run directory).
    pub variants: Vec<Variant>,
    /// The runs.
    pub runs: Vec<Run>,
}

/// Loads a comparison directory (with `comparison.json`) or a single `timeprest train` run
/// directory (with `config.json` and `metrics.jsonl`). A single run gets the simulator
/// prediction computed on the spot when its data set can be loaded, and none otherwise.
pub fn load(dir: &Path) -> Result<Loaded, ReportError> {
    if dir.join(MANIFEST_FILE).is_file() {
        let manifest = Manifest::load(dir)?;
        let runs = manifest
            .runs
            .iter()
            .filter(|entry| dir.join(&entry.dir).join("config.json").is_file())
            .map(|entry| {
                let mut run = load_run(&dir.join(&entry.dir), entry.label.clone())?;
                run.seed = entry.seed;
                if let Outcome::Diverged { .. } = entry.outcome {
                    run.outcome = entry.outcome.clone();
                }
                Ok(run)
            })
            .collect::<Result<Vec<_>, ReportError>>()?;
        return Ok(Loaded {
            variants: manifest.variants.clone(),
            manifest: Some(manifest),
            runs,
        });
    }
    if dir.join("config.json").is_file() && dir.join("metrics.jsonl").is_file() {
        let config = read_config(&dir.join("config.json"))?;
        let label = config.pipeline.policy.name().to_string();
        let run = load_run(dir, label.clone())?;
        let prediction = predict(&label, &config).ok();
        return Ok(Loaded {
            manifest: None,
            variants: vec![Variant {
                label,
                config,
                prediction,
            }],
            runs: vec![run],
        });
    }
    Err(ReportError::NotARunDirectory {
        dir: dir.display().to_string(),
    })
}

/// Reads one run directory; its outcome is judged from the number of epochs.
fn load_run(dir: &Path, label: String) -> Result<Run, ReportError> {
    let config = read_config(&dir.join("config.json"))?;
    let metrics_path = dir.join("metrics.jsonl");
    let epochs = if metrics_path.is_file() {
        read(&metrics_path)?
            .lines()
            .enumerate()
            .filter(|(_, line)| !line.trim().is_empty())
            .map(|(index, line)| {
                serde_json::from_str::<EpochMetrics>(line)
                    .map_err(|e| parse_error(&metrics_path, format!("line {}: {e}", index + 1)))
            })
            .collect::<Result<Vec<_>, _>>()?
    } else {
        Vec::new()
    };
    let outcome = if epochs.len() == config.optimisation.epochs as usize {
        Outcome::Completed
    } else {
        Outcome::Incomplete
    };
    let trace = Some(dir.join(TRACE_FILE)).filter(|path| path.is_file());
    Ok(Run {
        label,
        seed: config.run.seed,
        config,
        epochs,
        outcome,
        trace,
    })
}

fn read_config(path: &Path) -> Result<TrainConfig, ReportError> {
    serde_json::from_str(&read(path)?).map_err(|e| parse_error(path, e))
}

/// Reads a text file, naming it in the error.
pub(crate) fn read(path: &Path) -> Result<String, ReportError> {
    fs::read_to_string(path).map_err(|e| ReportError::Read {
        path: path.display().to_string(),
        cause: e.to_string(),
    })
}

pub(crate) fn parse_error(path: &Path, cause: impl std::fmt::Display) -> ReportError {
    ReportError::Parse {
        path: path.display().to_string(),
        cause: cause.to_string(),
    }
}

pub(crate) fn write_error(path: &Path, cause: impl std::fmt::Display) -> ReportError {
    ReportError::Write {
        path: path.display().to_string(),
        cause: cause.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_directory_names_keep_only_safe_characters() {
        assert_eq!(run_dir_name("pipedream", 3), "pipedream-seed3");
        assert_eq!(
            run_dir_name("i-timeprest:lambda=0.5", 1),
            "i-timeprest-lambda-0.5-seed1"
        );
        assert_eq!(run_dir_name("x:data_dir=/a b", 2), "x-data_dir--a-b-seed2");
    }

    #[test]
    fn a_manifest_round_trips_through_its_file() {
        let dir = tempfile::tempdir().unwrap();
        let manifest = Manifest {
            command: "timeprest compare --out d".into(),
            target_accuracy: Some(0.9),
            seeds: vec![1, 2],
            variants: vec![Variant {
                label: "gpipe".into(),
                config: TrainConfig::default(),
                prediction: None,
            }],
            runs: vec![RunEntry {
                label: "gpipe".into(),
                seed: 2,
                dir: "runs/gpipe-seed2".into(),
                outcome: Outcome::Diverged {
                    epoch: 3,
                    message: "the loss is NaN".into(),
                },
            }],
            checkpoint_every: 2,
            init_weights: Some("/weights/start.safetensors".into()),
        };
        manifest.save(dir.path()).unwrap();
        assert_eq!(Manifest::load(dir.path()).unwrap(), manifest);
        let files = std::fs::read_dir(dir.path()).unwrap().count();
        assert_eq!(files, 1, "no temporary file is left");
    }

    #[test]
    fn an_empty_directory_is_neither_a_comparison_nor_a_run() {
        let dir = tempfile::tempdir().unwrap();
        let error = load(dir.path()).unwrap_err();
        assert!(matches!(error, ReportError::NotARunDirectory { .. }));
        assert!(error.to_string().contains("comparison.json"));
    }
}
