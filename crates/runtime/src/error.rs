//! Why a run failed: the one error type of the runtime, shared by every transport.
//!
//! A failing stage is reported once, with its stage, the action it was running and the cause
//! ([`StageFailure`]); stages that stop only because another one failed record
//! [`StageFailure::Aborted`], so a caller can tell the root cause from its consequences. A run
//! stopped on request (Ctrl-C or SIGTERM raised the caller's stop flag) is not a failure: it
//! ends with [`RuntimeError::Interrupted`], so callers can tell it apart without reading
//! messages.

use crate::compute::ComputeError;
use crate::transport::TransportError;

/// What [`RuntimeError::Interrupted`] says; also the word an MPI rank sends the others when it
/// stops on request, so they know the run was interrupted rather than failed.
pub const INTERRUPTED: &str = "interrupted";

/// Why one stage stopped before the end of its plan.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum StageFailure {
    /// Another stage failed (or the run was stopped on request) and raised the abort flag.
    #[error("aborted because another stage failed")]
    Aborted,
    /// The transport to a neighbour failed.
    #[error(transparent)]
    Transport(TransportError),
    /// The stage's computation failed.
    #[error(transparent)]
    Compute(#[from] ComputeError),
    /// The stage's computation answered something the plan does not allow (e.g. the last stage
    /// produced activations instead of a loss).
    #[error("{0}")]
    Protocol(String),
    /// The stage's code panicked.
    #[error("panic: {0}")]
    Panic(String),
}

impl From<TransportError> for StageFailure {
    fn from(error: TransportError) -> Self {
        match error {
            TransportError::Aborted => StageFailure::Aborted,
            other => StageFailure::Transport(other),
        }
    }
}

/// Why a run failed.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// The schedule did not validate; the runtime executes only valid schedules.
    #[error("refusing to run an invalid schedule:\n{0}")]
    InvalidSchedule(String),
    /// The plan, schedule and stage computes disagree in shape.
    #[error("configuration mismatch: {0}")]
    Mismatch(String),
    /// A stage failed; the first failure of the run.
    #[error("stage {stage} failed during {action}: {cause}")]
    StageFailed {
        /// The stage (0-based).
        stage: u32,
        /// The action it was running, in the schedule's text form.
        action: String,
        /// The cause.
        cause: StageFailure,
    },
    /// The caller's stop flag was raised: the run stopped at the next action of every stage.
    #[error("{}", INTERRUPTED)]
    Interrupted,
    /// Could not build a stage's thread pool.
    #[error("could not create the thread pool of stage {stage}: {cause}")]
    ThreadPool {
        /// The stage.
        stage: u32,
        /// The cause.
        cause: String,
    },
}

impl RuntimeError {
    /// True for a stage that only stopped because another one failed.
    pub fn is_consequence(&self) -> bool {
        matches!(
            self,
            RuntimeError::StageFailed {
                cause: StageFailure::Aborted,
                ..
            }
        )
    }
}
