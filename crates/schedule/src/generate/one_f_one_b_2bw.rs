//! 1F1B-2BW (PipeDream-2BW, `docs/algorithms.md` §2.9): asynchronous 1F1B over micro-batches
//! with double-buffered weights.
//!
//! Every stage runs the greedy backward-first rule of [`super::nf1b`] with one backward per
//! micro-batch and the in-flight cap counted in micro-batches (W − s by default, PipeDream's
//! warm-up). Gradients of the N micro-batches of a mini-batch accumulate; the update follows the
//! backward of its last micro-batch. There is no flush: the next mini-batch's forwards run while
//! the previous one's backwards drain.
//!
//! The double buffer is a dependency rule ([`crate::deps`]): the forwards of mini-batch i at a
//! stage wait for that stage's update of mini-batch i − 2, so that the version they read (the
//! one that update creates, see the `pipedream-2bw` weight policy) exists, and a stage never
//! holds more than two weight versions. When N ≥ W − 1 (PipeDream-2BW's m ≥ d) the cap already
//! orders them so and the rule never delays a forward.

use super::nf1b::greedy;
use crate::schedule::{Schedule, ScheduleConfig, ScheduleKind};

/// PipeDream-2BW's schedule for an already checked `config`.
pub(super) fn one_f_one_b_2bw(config: &ScheduleConfig) -> Schedule {
    greedy(ScheduleKind::OneFOneBDoubleBuffered, *config)
}
