//! Errors a report reports to its user.
//!
//! Every variant names the file or directory involved, because the CLI prints the error as one
//! line and the user has to know which file to look at.

/// Why a comparison directory could not be read or its report and plots not written.
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
    /// The simulator prediction could not be computed for a configuration.
    #[error("cannot predict the memory of `{label}`: {cause}")]
    Prediction {
        /// The policy label.
        label: String,
        /// The cause.
        cause: String,
    },
}
