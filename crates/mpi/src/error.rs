//! Why a distributed run could not start or stopped, in words every rank can print.
//!
//! A failure on one rank reaches the others as [`MpiError::Remote`], carrying the failing rank's
//! own message, so every rank of a failed run prints one line that names the rank and the cause.

use timeprest_runtime::RuntimeError;
use timeprest_train::TrainError;

use crate::wire::WireError;

/// Why a distributed run failed.
#[derive(Debug, thiserror::Error)]
pub enum MpiError {
    /// Setting up or training failed on this rank.
    #[error(transparent)]
    Train(#[from] TrainError),
    /// This rank's stage failed.
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
    /// Another rank failed; this one stopped because of it.
    #[error("rank {rank} failed: {cause}")]
    Remote {
        /// The failing rank.
        rank: usize,
        /// Its error message.
        cause: String,
    },
    /// Another rank was stopped on request (Ctrl-C, SIGTERM); this one stopped with it.
    #[error("rank {rank} was interrupted")]
    Interrupted {
        /// The rank that was stopped first.
        rank: usize,
    },
    /// The ranks were started with different configurations or program versions.
    #[error(
        "the ranks disagree: rank {rank} differs from rank 0 in {} (start every rank with the \
         same flags and the same timeprest)",
        differences.join(", ")
    )]
    ConfigMismatch {
        /// The first rank that differs from rank 0.
        rank: usize,
        /// What differs, e.g. `stages (4 vs 3)`.
        differences: Vec<String>,
    },
    /// The number of processes is not the number of stages.
    #[error(
        "--stages is {stages} but {world} MPI processes were started; start one process per \
         stage (mpirun -np {stages} …)"
    )]
    WorldSize {
        /// Processes in the MPI world.
        world: usize,
        /// Stages of the configuration.
        stages: u32,
    },
    /// A rank did not answer in time.
    #[error("rank {rank} did not {what} within {seconds} s")]
    Timeout {
        /// The silent rank.
        rank: usize,
        /// What it should have done.
        what: &'static str,
        /// The time allowed.
        seconds: u64,
    },
    /// A message could not be decoded.
    #[error("malformed message from rank {rank}: {cause}")]
    Protocol {
        /// The sender.
        rank: usize,
        /// What is wrong.
        cause: WireError,
    },
    /// MPI could not be used.
    #[error("MPI: {0}")]
    Mpi(String),
}

impl MpiError {
    /// True when every rank reaches this error by itself, so none needs to be told.
    pub fn is_symmetric(&self) -> bool {
        matches!(
            self,
            MpiError::ConfigMismatch { .. }
                | MpiError::WorldSize { .. }
                | MpiError::Remote { .. }
                | MpiError::Interrupted { .. }
        )
    }

    /// True when the run stopped on request, on this rank or another.
    pub fn is_interruption(&self) -> bool {
        matches!(
            self,
            MpiError::Interrupted { .. }
                | MpiError::Runtime(RuntimeError::Interrupted)
                | MpiError::Train(TrainError::Interrupted { .. })
        )
    }
}
