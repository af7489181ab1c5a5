//! User errors of the schedule crate.
//!
//! Generators and the memory model take their shape from user input (command-line flags, config
//! files), so a bad value is an ordinary error, not a panic: every variant names the offending
//! value and what would be accepted. Broken internal invariants still panic with context.
//! Validation failures have their own type, [`crate::ValidationError`], because they carry a
//! rendered grid.

/// Why a schedule could not be generated or a model could not be evaluated.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScheduleError {
    /// W = 0.
    #[error("num_stages (W) must be at least 1, got {0}")]
    ZeroStages(u32),
    /// N = 0.
    #[error("num_microbatches (N) must be at least 1, got {0}")]
    ZeroMicrobatches(u32),
    /// No mini-batch to schedule.
    #[error("num_minibatches must be at least 1, got {0}")]
    ZeroMinibatches(u32),
    /// An in-flight cap of zero at some stage: that stage could never start a forward.
    #[error(
        "inflight_cap must allow at least 1 mini-batch in flight, got {cap} at stage {stage} \
         (use `stages-remaining`, `unlimited` or a constant >= 1)"
    )]
    ZeroInflightCap {
        /// The stage whose cap is zero.
        stage: u32,
        /// The cap found there.
        cap: u32,
    },
    /// A backward duration outside 1..=[`MAX_BACKWARD_SLOTS`](crate::MAX_BACKWARD_SLOTS).
    #[error("backward_slots must be 1 to {max}, got {0}", max = crate::MAX_BACKWARD_SLOTS)]
    BackwardSlots(u32),
    /// The schedule would have more actions than slots can address.
    #[error(
        "schedule too large: W={num_stages}, N={num_microbatches}, {num_minibatches} mini-batches \
         give {num_actions} actions (at most {limit} are supported)"
    )]
    TooLarge {
        /// W.
        num_stages: u32,
        /// N.
        num_microbatches: u32,
        /// Number of mini-batches.
        num_minibatches: u32,
        /// Actions the schedule would have.
        num_actions: u64,
        /// The largest supported number of actions.
        limit: u64,
    },
    /// A per-stage input has the wrong length.
    #[error("{what} has {len} entries but the schedule has {num_stages} stages")]
    StageCountMismatch {
        /// Which input.
        what: &'static str,
        /// Its length.
        len: usize,
        /// W.
        num_stages: u32,
    },
}
