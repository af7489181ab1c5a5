//! Errors a training run reports to its user.

/// Why a training run could not start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    /// A configuration value is invalid; the message names the flag.
    #[error("{0}")]
    Config(String),
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
    /// The loss became NaN or infinite.
    #[error(
        "training diverged in epoch {epoch} at step {step}: the loss is {loss} (try a smaller \
         --lr; the last good checkpoint, if any, is kept)"
    )]
    Diverged {
        /// The epoch (1-based).
        epoch: u32,
        /// The mini-batch of the epoch (1-based) whose loss was first not finite.
        step: u32,
        /// The loss value.
        loss: f64,
    },
    /// The run was stopped on request (Ctrl-C, SIGTERM) before it completed; every checkpoint
    /// it committed is complete.
    #[error(
        "interrupted in epoch {epoch}; {}",
        match last_checkpoint {
            Some((done, dir)) => format!("last checkpoint: epoch {done} in {}", dir.display()),
            None => "no checkpoint was written".to_string(),
        }
    )]
    Interrupted {
        /// The epoch (1-based) that was running or about to start; it did not complete.
        epoch: u32,
        /// The last checkpoint committed before the stop, or restored by a resumed run: the
        /// epochs it holds and its directory.
        last_checkpoint: Option<(u32, std::path::PathBuf)>,
    },
    /// A checkpoint is missing, unreadable or does not fit the run.
    #[error("cannot resume from {path}: {cause}")]
    Checkpoint {
        /// The file or directory.
        path: String,
        /// What is wrong.
        cause: String,
    },
    /// An output file could not be written.
    #[error("cannot write {path}: {cause}")]
    Output {
        /// The file.
        path: String,
        /// The cause.
        cause: String,
    },
}

impl TrainError {
    /// An output file or directory at `path` could not be written.
    pub fn output(path: &std::path::Path, cause: impl std::fmt::Display) -> Self {
        TrainError::Output {
            path: path.display().to_string(),
            cause: cause.to_string(),
        }
    }
}
