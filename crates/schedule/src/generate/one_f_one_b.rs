//! Asynchronous 1F1B (PipeDream, `docs/algorithms.md` §2.4): one forward, one backward, an
//! update after each.
//!
//! The unit of work is a whole mini-batch, so the schedule has one micro-batch per mini-batch.
//! **Normalisation:** when the configuration asks for N > 1 micro-batches, each micro-batch is
//! treated as its own mini-batch of about M/N samples (PipeDream run per micro-batch, one
//! reading of the TiMePReSt paper's baseline, its Eq. 17: N backwards, N updates and 2N
//! messages per M samples). The returned schedule's config therefore has `num_microbatches = 1`
//! and `num_minibatches` = N × the requested number of mini-batches; mini-batch `i·N + j` of
//! the result is micro-batch j of requested mini-batch i. To compare with PipeDream on whole
//! mini-batches of M samples (the other reading, `docs/algorithms.md` §6 row 13), ask for N = 1.
//!
//! The rule is nF1B's greedy rule with N = 1 (see [`super::nf1b`]); with the default W − s cap
//! it reproduces the 1F1B grid of `docs/algorithms.md` §2.8.

use super::nf1b::greedy;
use crate::schedule::{Schedule, ScheduleConfig, ScheduleKind};

/// The configuration 1F1B actually schedules for `config` (see the module documentation).
/// The caller has checked that `M·N` fits.
pub(super) fn normalise(config: &ScheduleConfig) -> ScheduleConfig {
    ScheduleConfig {
        num_microbatches: 1,
        num_minibatches: config.num_minibatches * config.num_microbatches,
        ..*config
    }
}

/// Asynchronous 1F1B over whole (normalised) mini-batches.
pub(super) fn one_f_one_b(config: &ScheduleConfig) -> Schedule {
    greedy(ScheduleKind::OneFOneB, normalise(config))
}
