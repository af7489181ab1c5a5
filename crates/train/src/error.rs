//! Errors a training run reports to its user.

use std::path::PathBuf;

/// Why a training run could not start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    /// A configuration value is invalid.
    #[error("{setting}: {reason}")]
    Config {
        /// The flag or configuration key as the user gives it, e.g. `--lr`.
        setting: String,
        /// Why the value cannot be used.
        reason: String,
    },
    /// The data set could not be loaded.
    #[error(transparent)]
    Data(#[from] timeprest_data::DataError),
    /// The model or its weights could not be built.
    #[error(transparent)]
    Model(#[from] timeprest_nn::NnError),
    /// The schedule could not be generated.
    #[error(transparent)]
    Schedule(#[from] timeprest_schedule::ScheduleError),
    /// The pipeline failed while running.
    #[error(transparent)]
    Runtime(#[from] timeprest_runtime::RuntimeError),
    /// The training or test loss of an epoch became NaN or infinite. The run stops before the
    /// epoch's metrics line and checkpoint are written, so the last checkpoint is a good one.
    #[error(
        "training diverged in epoch {epoch}: {loss} is {value}; {}",
        DivergenceAdvice::new(.lr, .last_checkpoint)
    )]
    Diverged {
        /// The epoch (1-based).
        epoch: u32,
        /// Which loss was not finite.
        loss: DivergedLoss,
        /// The loss value.
        value: f64,
        /// The configured learning rate (`--lr`, the schedule's peak; the advice suggests a
        /// smaller one).
        lr: f64,
        /// The last checkpoint the run committed, if any: where to resume from.
        last_checkpoint: Option<LastCheckpoint>,
    },
    /// The run was stopped on request (Ctrl-C, SIGTERM) before it completed; every checkpoint
    /// it committed is complete.
    #[error(
        "interrupted in epoch {epoch}; {}",
        match last_checkpoint {
            Some(LastCheckpoint { run_dir, epoch }) => format!(
                "last checkpoint: epoch {epoch} in {}",
                run_dir.join(crate::checkpoint::CHECKPOINT_DIR).display()
            ),
            None => "no checkpoint was written".to_string(),
        }
    )]
    Interrupted {
        /// The epoch (1-based) that was running or about to start; it did not complete.
        epoch: u32,
        /// The last checkpoint committed before the stop, or restored by a resumed run.
        last_checkpoint: Option<LastCheckpoint>,
    },
    /// A checkpoint is missing, unreadable or does not fit the run.
    #[error("cannot resume from {path}: {cause}")]
    Checkpoint {
        /// The file or directory.
        path: String,
        /// What is wrong.
        cause: String,
    },
    /// An output path is unusable (not a regular file, not writable) or a run directory is not
    /// free (not empty, or locked by another run).
    #[error(transparent)]
    OutputPath(#[from] crate::output::OutputError),
    /// An output file could not be written.
    #[error("cannot write {path}: {cause}")]
    Output {
        /// The file.
        path: String,
        /// The cause.
        cause: String,
    },
}

/// Which loss of an epoch was not finite.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DivergedLoss {
    /// The training loss, first not finite in mini-batch `step` (from 1) of the epoch.
    Training {
        /// The mini-batch of the epoch, from 1.
        step: u32,
    },
    /// The test loss after the epoch.
    Test,
}

impl std::fmt::Display for DivergedLoss {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DivergedLoss::Training { step } => write!(f, "the training loss of mini-batch {step}"),
            DivergedLoss::Test => f.write_str("the test loss"),
        }
    }
}

/// The last checkpoint a run committed: epochs `epoch` and before are safe in
/// `run_dir/checkpoint`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LastCheckpoint {
    /// The run directory (what `--resume` takes).
    pub run_dir: PathBuf,
    /// Epochs the checkpoint has completed.
    pub epoch: u32,
}

/// What a diverged run tells its user to do next: resume from the last good checkpoint with a
/// smaller learning rate, or start again with one.
struct DivergenceAdvice<'a> {
    lr: f64,
    last_checkpoint: Option<&'a LastCheckpoint>,
}

impl<'a> DivergenceAdvice<'a> {
    fn new(lr: &f64, last_checkpoint: &'a Option<LastCheckpoint>) -> Self {
        Self {
            lr: *lr,
            last_checkpoint: last_checkpoint.as_ref(),
        }
    }
}

impl std::fmt::Display for DivergenceAdvice<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let smaller = short_number(self.lr / 10.0);
        match self.last_checkpoint {
            Some(LastCheckpoint { run_dir, epoch }) => write!(
                f,
                "the checkpoint of epoch {epoch} in {} is kept; continue from it with a smaller \
                 learning rate: `timeprest train --resume {} --lr {smaller}`",
                run_dir.join(crate::checkpoint::CHECKPOINT_DIR).display(),
                crate::output::shell_quoted(&run_dir.display().to_string())
            ),
            None => write!(
                f,
                "no checkpoint was written; try a smaller learning rate, e.g. --lr {smaller}"
            ),
        }
    }
}

/// `value` with at most 3 significant digits, as a user would type it (`0.005`, `1e-7`).
fn short_number(value: f64) -> String {
    let rounded: f64 = format!("{value:.2e}").parse().unwrap_or(value);
    let plain = rounded.to_string();
    if plain.len() <= 8 {
        plain
    } else {
        format!("{rounded:e}")
    }
}

impl TrainError {
    /// A [`TrainError::Config`] for the flag or key `setting`.
    pub fn config(setting: impl Into<String>, reason: impl std::fmt::Display) -> Self {
        TrainError::Config {
            setting: setting.into(),
            reason: reason.to_string(),
        }
    }

    /// This error with `last_checkpoint` as the place to resume from, when it is a divergence
    /// (the epoch that diverged knows its losses, the run loop knows its checkpoints).
    pub fn after_checkpoint(self, last_checkpoint: Option<LastCheckpoint>) -> Self {
        match self {
            TrainError::Diverged {
                epoch,
                loss,
                value,
                lr,
                last_checkpoint: None,
            } => TrainError::Diverged {
                epoch,
                loss,
                value,
                lr,
                last_checkpoint,
            },
            other => other,
        }
    }

    /// An output file or directory at `path` could not be written.
    pub fn output(path: &std::path::Path, cause: impl std::fmt::Display) -> Self {
        TrainError::Output {
            path: path.display().to_string(),
            cause: cause.to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn diverged(last_checkpoint: Option<LastCheckpoint>) -> String {
        TrainError::Diverged {
            epoch: 3,
            loss: DivergedLoss::Test,
            value: f64::NAN,
            lr: 0.05,
            last_checkpoint,
        }
        .to_string()
    }

    #[test]
    fn a_divergence_says_where_to_resume_from_and_with_which_learning_rate() {
        let message = diverged(Some(LastCheckpoint {
            run_dir: PathBuf::from("runs/a"),
            epoch: 2,
        }));
        assert_eq!(
            message,
            "training diverged in epoch 3: the test loss is NaN; the checkpoint of epoch 2 in \
             runs/a/checkpoint is kept; continue from it with a smaller learning rate: \
             `timeprest train --resume runs/a --lr 0.005`"
        );
        assert!(
            diverged(None).ends_with(
                "no checkpoint was written; try a smaller learning rate, e.g. --lr 0.005"
            )
        );
    }

    #[test]
    fn suggested_learning_rates_are_short() {
        assert_eq!(short_number(0.005), "0.005");
        assert_eq!(short_number(100000.0), "100000");
        assert_eq!(short_number(1.234567e-9), "1.23e-9");
        assert_eq!(short_number(0.1 / 3.0), "0.0333");
    }
}
