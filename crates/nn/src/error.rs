//! The user-facing errors of this crate.
//!
//! One enum for everything a caller can get wrong (a model that cannot be split that way, an
//! optimizer setting outside its domain, a data set that does not fit the model, a checkpoint
//! file that does not match the model). Each variant carries enough context (file, tensor,
//! expected and found values) to fix the problem without a debugger. Errors during a pipeline
//! pass go through the runtime's [`ComputeError`](timeprest_runtime::ComputeError) instead,
//! because that is the type the [`StageCompute`](timeprest_runtime::StageCompute) trait speaks.

use std::path::PathBuf;

/// Something a caller of this crate got wrong.
#[derive(Debug, thiserror::Error)]
pub enum NnError {
    /// The model description is unusable (a zero width, no blocks, ...).
    #[error("invalid model: {0}")]
    InvalidModel(String),
    /// The model, or what training it holds, does not fit in memory (or a size is beyond
    /// what any memory holds).
    #[error("{flags}: {detail}")]
    TooLarge {
        /// The size flags and their values, e.g. `--width 100000`.
        flags: String,
        /// What would be needed, against what is available.
        detail: String,
    },
    /// A model of `num_blocks` blocks cannot be split into `num_stages` stages.
    #[error(
        "cannot split a model of {num_blocks} blocks into {num_stages} stages: \
         every stage needs at least one block"
    )]
    TooManyStages {
        /// Blocks of the model.
        num_blocks: usize,
        /// Stages asked for.
        num_stages: usize,
    },
    /// An optimizer hyper-parameter is outside its domain.
    #[error("invalid optimizer setting: {0}")]
    InvalidOptimizer(String),
    /// Parameters, data set or the epoch's batches do not fit together.
    #[error("mismatch: {0}")]
    Mismatch(String),
    /// Reading or writing a file failed.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The profiling thread pool could not be started.
    #[error("--threads-per-stage: cannot start {threads} threads to profile the blocks: {cause}")]
    ThreadPool {
        /// Threads asked for.
        threads: usize,
        /// Why the pool failed.
        cause: String,
    },
    /// The compute device cannot be used (not built in, or another one is already in use).
    #[error("--device: {0}")]
    Device(String),
    /// A file is not a readable safetensors file.
    #[error("{}: not a valid safetensors file: {detail}", path.display())]
    Safetensors {
        /// The file.
        path: PathBuf,
        /// What the parser said.
        detail: String,
    },
    /// A checkpoint lacks a tensor the model needs.
    #[error("{}: missing tensor `{name}`", path.display())]
    MissingTensor {
        /// The file.
        path: PathBuf,
        /// The tensor's name.
        name: String,
    },
    /// A checkpoint holds a tensor the model does not have.
    #[error("{}: unexpected tensor `{name}` (the model has no such parameter)", path.display())]
    UnexpectedTensor {
        /// The file.
        path: PathBuf,
        /// The tensor's name.
        name: String,
    },
    /// A weights file holds a NaN or an infinite value, which no training can start from.
    #[error(
        "{}: tensor `{name}` holds {count} non-finite values (the first, element {index}, is          {value}); weights must be finite numbers",
        path.display()
    )]
    NonFiniteTensor {
        /// The file.
        path: PathBuf,
        /// The tensor's name.
        name: String,
        /// How many of its values are NaN or infinite.
        count: usize,
        /// The index of the first one.
        index: usize,
        /// The first one (NaN, inf or -inf).
        value: f32,
    },
    /// A checkpoint tensor has the wrong shape or data type.
    #[error("{}: tensor `{name}`: expected {expected}, found {found}", path.display())]
    TensorMismatch {
        /// The file.
        path: PathBuf,
        /// The tensor's name.
        name: String,
        /// What the model needs (shape and dtype).
        expected: String,
        /// What the file holds.
        found: String,
    },
}
