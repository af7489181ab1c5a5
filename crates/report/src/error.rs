//! Errors a report reports to its user.
//!
//! Every variant names the file, directory or flag involved, because the CLI prints the error as
//! one line and the user has to know which file to look at or which flag to change.

/// Why a comparison directory could not be read, its report and plots not written, or a
/// partition study ([`crate::partition`]) not made.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    /// The directory is neither a comparison (`comparison.json`) nor a run (`metrics.jsonl`).
    #[error(
        "{dir} is neither a comparison directory (comparison.json) nor a run directory \
         (config.json and metrics.jsonl)"
    )]
    NotARunDirectory {
        /// The directory.
        dir: String,
    },
    /// A file could not be read.
    #[error("cannot read {path}: {cause}")]
    Read {
        /// The file.
        path: String,
        /// The cause.
        cause: String,
    },
    /// A file could not be parsed.
    #[error("cannot parse {path}: {cause}")]
    Parse {
        /// The file.
        path: String,
        /// What is wrong, with the line where known.
        cause: String,
    },
    /// A file could not be written.
    #[error("cannot write {path}: {cause}")]
    Write {
        /// The file.
        path: String,
        /// The cause.
        cause: String,
    },
    /// An output file is not a regular file or cannot be written.
    #[error(transparent)]
    Output(#[from] timeprest_train::OutputError),
    /// A plot could not be drawn.
    #[error("cannot draw {path}: {cause}")]
    Plot {
        /// The plot file.
        path: String,
        /// The plotting library's message.
        cause: String,
    },
    /// A run of a comparison stopped on request (Ctrl-C, SIGTERM); its checkpoint is kept.
    #[error("{run}: {cause}; continue with `timeprest compare --resume {dir}`")]
    Interrupted {
        /// The run (`LABEL seed K`).
        run: String,
        /// The training loop's message (what was saved).
        cause: String,
        /// The comparison directory.
        dir: String,
    },
    /// A run of a comparison failed (not by diverging, which is recorded as its outcome).
    #[error("{run} failed: {source}")]
    RunFailed {
        /// The run (`LABEL seed K`).
        run: String,
        /// Why.
        source: Box<timeprest_train::TrainError>,
    },
    /// The simulator prediction could not be computed for a configuration.
    #[error("cannot predict the memory of `{label}`: {cause}")]
    Prediction {
        /// The policy label.
        label: String,
        /// The cause.
        cause: String,
    },
    /// A value given by the user cannot be used (a partition study's request): the CLI reports
    /// it as a usage error.
    #[error("{flag}: {reason}")]
    Invalid {
        /// The flag as the user gives it, with its value where that says which one, e.g.
        /// `--split` or `--dataset digits`.
        flag: String,
        /// Why the value cannot be used.
        reason: String,
    },
    /// The model cannot be built, profiled or split, or does not fit in memory; its message
    /// names the size flags where they are the cause.
    #[error(transparent)]
    Model(#[from] timeprest_nn::NnError),
    /// The data set and its directory do not go together.
    #[error(transparent)]
    Data(#[from] timeprest_data::DataError),
    /// The schedule of a throughput prediction could not be generated.
    #[error(transparent)]
    Schedule(#[from] timeprest_schedule::ScheduleError),
    /// The schedule of a throughput prediction could not be simulated.
    #[error(transparent)]
    Simulation(#[from] timeprest_schedule::ValidationError),
}

impl ReportError {
    /// A [`ReportError::Invalid`] for `flag`.
    pub fn invalid(flag: impl Into<String>, reason: impl std::fmt::Display) -> Self {
        ReportError::Invalid {
            flag: flag.into(),
            reason: reason.to_string(),
        }
    }
}
