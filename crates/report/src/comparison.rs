//! Running a comparison: every policy variant × seed on the same model, data order and seeds,
//! in one directory that can be continued after an interruption.
//!
//! Runs are sequential (each already uses one thread per stage, and timings of concurrent runs
//! would not be comparable) and seed-major, so that an interrupted comparison has every policy
//! for its first seeds. A diverged run is recorded and the comparison goes on; the manifest is
//! rewritten before and after every run, so it always says which runs finished. A stop request
//! ends the run in progress at its next safe point (its last checkpoint kept).
//!
//! [`Comparison::resume`] continues from the manifest alone (variants, seeds, configurations,
//! checkpoint frequency, initial weights): it skips the runs that completed or diverged,
//! continues a run that did not finish from its checkpoint (or, without one, removes what it
//! left and runs it again) and runs the missing ones. Showing progress is the caller's: it
//! passes a [`ComparisonObserver`], so this module holds the experiment and the CLI only parses
//! and prints.

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

use timeprest_train::checkpoint::{self, CheckpointState};
use timeprest_train::{
    DirUse, EpochMetrics, Progress, RunDirLock, RunPaths, TrainConfig, TrainError, claim_run_dir,
    run_until_stopped, shell_quoted,
};

use crate::record::{MANIFEST_FILE, RUNS_DIR, TRACE_FILE};
use crate::{Manifest, Outcome, ReportError, RunEntry, Variant, Written, predict, run_dir_name};

/// What a new comparison runs: labelled configurations (each validated, its seed replaced by
/// every seed of `seeds`) and how its runs are kept.
#[derive(Clone, Debug, PartialEq)]
pub struct ComparisonPlan {
    /// The command line that asked for it, recorded in the manifest.
    pub command: String,
    /// (label, configuration) per policy variant, in report order.
    pub variants: Vec<(String, TrainConfig)>,
    /// The seeds; each variant runs once per seed.
    pub seeds: Vec<u64>,
    /// The test accuracy whose epochs and time to reach the report compares.
    pub target_accuracy: Option<f64>,
    /// Checkpoint every this many epochs (0: never).
    pub checkpoint_every: u32,
    /// Initial weights of every run.
    pub init_weights: Option<PathBuf>,
}

/// What the caller shows while a comparison runs (progress bars, lines on the terminal).
pub trait ComparisonObserver {
    /// The comparison is about to run; its runs train `total_epochs` epochs in all.
    fn started(&self, total_epochs: u64);
    /// The training progress of the run named `run` (`LABEL seed K`), which trains `epochs`
    /// epochs after `epochs_before` epochs of the comparison's earlier runs.
    fn run_progress<'a>(
        &'a self,
        run: &str,
        epochs: u32,
        epochs_before: u64,
    ) -> Box<dyn Progress + 'a>;
    /// The runs before the next one account for `epochs_done` epochs of the total.
    fn reached(&self, epochs_done: u64);
    /// A line worth showing: a run finished, diverged, was found complete or starts again.
    fn line(&self, text: &str);
}

/// A comparison directory, locked while this value lives, with its manifest.
#[derive(Debug)]
pub struct Comparison {
    dir: PathBuf,
    manifest: Manifest,
    _lock: RunDirLock,
}

impl Comparison {
    /// Starts a comparison in `out`: checks that no label or seed appears twice, predicts each
    /// variant (which also proves it can be built), claims the directory (refused when it is
    /// not empty, unless `overwrite`, or is in use) and writes the manifest. Nothing is trained
    /// yet.
    pub fn start(out: &Path, plan: ComparisonPlan, overwrite: bool) -> Result<Self, ReportError> {
        check_unique(&plan)?;
        let variants = (plan.variants.into_iter())
            .map(|(label, config)| {
                let prediction = predict(&label, &config)?;
                Ok(Variant {
                    label,
                    config,
                    prediction: Some(prediction),
                })
            })
            .collect::<Result<Vec<_>, ReportError>>()?;
        let lock = claim_run_dir(out, "--out", DirUse::New { overwrite })?;
        let manifest = Manifest {
            command: plan.command,
            target_accuracy: plan.target_accuracy,
            seeds: plan.seeds,
            variants,
            runs: Vec::new(),
            checkpoint_every: plan.checkpoint_every,
            // Absolute, so that a resumed comparison finds it from any directory.
            init_weights: (plan.init_weights)
                .map(|path| std::fs::canonicalize(&path).unwrap_or(path)),
        };
        manifest.save(out)?;
        Ok(Self {
            dir: out.to_owned(),
            manifest,
            _lock: lock,
        })
    }

    /// Opens the comparison in `dir` to continue it, as its manifest describes it; refused when
    /// `dir` is not a comparison directory or another process is running it.
    pub fn resume(dir: &Path) -> Result<Self, ReportError> {
        let flag = || format!("--resume {}", dir.display());
        if !dir.join(MANIFEST_FILE).is_file() {
            return Err(ReportError::invalid(
                flag(),
                format!(
                    "not a comparison directory (it has no {MANIFEST_FILE}); start one with \
                     `timeprest compare --out DIR`"
                ),
            ));
        }
        let lock = claim_run_dir(dir, "--resume", DirUse::Resume)?;
        let manifest = Manifest::load(dir).map_err(|e| ReportError::invalid(flag(), e))?;
        Ok(Self {
            dir: dir.to_owned(),
            manifest,
            _lock: lock,
        })
    }

    /// The manifest as it stands.
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// How many runs of variants × seeds have not finished (completed or diverged).
    pub fn runs_left(&self) -> usize {
        let planned = self.manifest.variants.len() * self.manifest.seeds.len();
        let finished = (self.manifest.runs.iter())
            .filter(|entry| entry.outcome != Outcome::Incomplete)
            .count();
        planned - finished
    }

    /// Runs every run that is missing or did not finish, seed-major, then writes the report.
    /// When `stop` is raised, the run in progress stops as `train` stops and the result is
    /// [`ReportError::Interrupted`]; a run that fails otherwise is [`ReportError::RunFailed`].
    pub fn run(
        &mut self,
        observer: &dyn ComparisonObserver,
        stop: &AtomicBool,
    ) -> Result<Written, ReportError> {
        let seeds = self.manifest.seeds.clone();
        let epochs_per_seed: u64 = (self.manifest.variants.iter())
            .map(|v| u64::from(v.config.optimisation.epochs))
            .sum();
        observer.started(epochs_per_seed * seeds.len() as u64);
        let mut epochs_before = 0;
        for (seed_index, &seed) in seeds.iter().enumerate() {
            for index in 0..self.manifest.variants.len() {
                let variant = &self.manifest.variants[index];
                let mut config = variant.config.clone();
                config.run.seed = seed;
                let label = variant.label.clone();
                let run = format!("{label} seed {seed}");
                let config = config.validate().map_err(|source| ReportError::RunFailed {
                    run: run.clone(),
                    source: Box::new(source),
                })?;
                let epochs = config.optimisation.epochs;
                let base = epochs_before;
                epochs_before += u64::from(epochs);
                let relative_dir = Path::new(RUNS_DIR).join(run_dir_name(&label, seed));
                let run_dir = self.dir.join(&relative_dir);
                let listed = self.entry(&label, seed).is_some();
                let start = self.run_start(&label, seed, epochs, &run_dir);
                match start {
                    Start::Finished => {
                        observer.reached(epochs_before);
                        continue;
                    }
                    Start::CompleteOnDisk => {
                        observer.reached(epochs_before);
                        self.record(&label, seed, Outcome::Completed)?;
                        observer.line(&format!("{run}: already complete on disk"));
                        continue;
                    }
                    Start::FromCheckpoint => {}
                    Start::Afresh if listed && run_dir.exists() => {
                        // What an unfinished run without a checkpoint left cannot be continued.
                        observer.line(&format!(
                            "{run}: no checkpoint to continue from; starting it again"
                        ));
                        std::fs::remove_dir_all(&run_dir).map_err(|e| ReportError::Write {
                            path: run_dir.display().to_string(),
                            cause: e.to_string(),
                        })?;
                    }
                    Start::Afresh => {}
                }
                if !listed {
                    self.manifest.runs.push(RunEntry {
                        label: label.clone(),
                        seed,
                        dir: relative_dir,
                        outcome: Outcome::Incomplete,
                    });
                    self.manifest.save(&self.dir)?;
                }
                let paths = RunPaths {
                    out_dir: Some(run_dir.clone()),
                    init_weights: self.manifest.init_weights.clone(),
                    trace: (seed_index == 0).then(|| run_dir.join(TRACE_FILE)),
                    checkpoint_every: self.manifest.checkpoint_every,
                    resume: matches!(start, Start::FromCheckpoint),
                    ..RunPaths::default()
                };
                let progress = observer.run_progress(&run, epochs, base);
                let result = run_until_stopped(&config, &paths, progress.as_ref(), stop);
                drop(progress);
                observer.reached(epochs_before);
                let (outcome, line) = match result {
                    Ok(history) => (Outcome::Completed, finished_line(&run, &history)),
                    Err(error @ TrainError::Diverged { epoch, .. }) => {
                        let message = error.to_string();
                        let line = format!("{run}: {message}");
                        (Outcome::Diverged { epoch, message }, line)
                    }
                    Err(error @ TrainError::Interrupted { .. }) => {
                        return Err(ReportError::Interrupted {
                            run,
                            cause: error.to_string(),
                            dir: shell_quoted(&self.dir.display().to_string()),
                        });
                    }
                    Err(source) => {
                        return Err(ReportError::RunFailed {
                            run,
                            source: Box::new(source),
                        });
                    }
                };
                self.record(&label, seed, outcome)?;
                observer.line(&line);
            }
        }
        crate::write_report(&self.dir)
    }

    /// The manifest's entry of the run of `label` with `seed`, once it started.
    fn entry(&self, label: &str, seed: u64) -> Option<&RunEntry> {
        (self.manifest.runs.iter()).find(|entry| entry.label == label && entry.seed == seed)
    }

    /// How the run of `label` with `seed` and `epochs` epochs, whose directory is `run_dir`,
    /// starts: a run the manifest does not list has not started; a run that did not finish
    /// continues from its checkpoint, or starts afresh when it has none.
    fn run_start(&self, label: &str, seed: u64, epochs: u32, run_dir: &Path) -> Start {
        match self.entry(label, seed).map(|entry| &entry.outcome) {
            None => Start::Afresh,
            Some(Outcome::Completed | Outcome::Diverged { .. }) => Start::Finished,
            Some(Outcome::Incomplete) => match checkpoint::find(run_dir) {
                Err(_) => Start::Afresh,
                Ok(dir) if checkpointed_epochs(&dir).is_some_and(|done| done >= epochs) => {
                    Start::CompleteOnDisk
                }
                // An unreadable checkpoint is reported by the resume itself.
                Ok(_) => Start::FromCheckpoint,
            },
        }
    }

    /// Records `outcome` for the run of `label` with `seed` and saves the manifest.
    fn record(&mut self, label: &str, seed: u64, outcome: Outcome) -> Result<(), ReportError> {
        let entry = (self.manifest.runs.iter_mut())
            .find(|entry| entry.label == label && entry.seed == seed)
            .expect("a run is in the manifest once it started");
        entry.outcome = outcome;
        self.manifest.save(&self.dir)
    }
}

/// How a run of the comparison starts.
enum Start {
    /// It has finished (completed or diverged): skip it.
    Finished,
    /// The manifest says it did not finish, but its checkpoint holds every epoch (it was
    /// finished with `timeprest train --resume`): record it as completed.
    CompleteOnDisk,
    /// From the beginning.
    Afresh,
    /// From the checkpoint in its run directory.
    FromCheckpoint,
}

/// Refuses a label or seed that appears twice (their run directories would collide).
fn check_unique(plan: &ComparisonPlan) -> Result<(), ReportError> {
    for (index, (label, _)) in plan.variants.iter().enumerate() {
        if plan.variants[..index]
            .iter()
            .any(|(other, _)| other == label)
        {
            return Err(ReportError::invalid(
                "--policies",
                format!("`{label}` is listed twice"),
            ));
        }
    }
    for (index, seed) in plan.seeds.iter().enumerate() {
        if plan.seeds[..index].contains(seed) {
            return Err(ReportError::invalid(
                "--seeds",
                format!("{seed} is listed twice"),
            ));
        }
    }
    Ok(())
}

/// The epochs the checkpoint directory `dir` holds, if its `state.json` is readable.
fn checkpointed_epochs(dir: &Path) -> Option<u32> {
    let text = std::fs::read(dir.join("state.json")).ok()?;
    let state: CheckpointState = serde_json::from_slice(&text).ok()?;
    Some(state.epoch)
}

/// The line shown when run `run` completed with `history` (the epochs it ran in this process;
/// a run continued from a checkpoint starts after epoch 1).
fn finished_line(run: &str, history: &[EpochMetrics]) -> String {
    // A run with no epoch left is recorded as complete on disk and never trained.
    let (Some(first), Some(last)) = (history.first(), history.last()) else {
        panic!("{run} completed without running an epoch");
    };
    let time = crate::seconds(history.iter().map(|m| m.epoch_seconds).sum());
    let since = match first.epoch {
        1 => String::new(),
        epoch => format!(" since epoch {epoch}"),
    };
    format!(
        "{run}: final test accuracy {:.2}% after {} epochs ({time} s of training{since})",
        100.0 * last.test_accuracy,
        last.epoch,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(labels: &[&str], seeds: &[u64]) -> ComparisonPlan {
        ComparisonPlan {
            command: "test".into(),
            variants: (labels.iter())
                .map(|label| (label.to_string(), TrainConfig::default()))
                .collect(),
            seeds: seeds.to_vec(),
            target_accuracy: None,
            checkpoint_every: 0,
            init_weights: None,
        }
    }

    #[test]
    fn a_label_or_seed_listed_twice_is_refused_before_anything_is_written() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("comparison");
        let labels = Comparison::start(&out, plan(&["gpipe", "gpipe"], &[1]), false).unwrap_err();
        assert_eq!(labels.to_string(), "--policies: `gpipe` is listed twice");
        let seeds = Comparison::start(&out, plan(&["gpipe"], &[1, 2, 1]), false).unwrap_err();
        assert_eq!(seeds.to_string(), "--seeds: 1 is listed twice");
        assert!(!out.exists());
    }

    #[test]
    fn resuming_a_directory_without_a_manifest_names_it() {
        let dir = tempfile::tempdir().unwrap();
        let error = Comparison::resume(dir.path()).unwrap_err();
        assert!(
            matches!(&error, ReportError::Invalid { flag, .. } if flag.starts_with("--resume")),
            "{error}"
        );
        assert!(
            error.to_string().contains("not a comparison directory"),
            "{error}"
        );
    }
}
