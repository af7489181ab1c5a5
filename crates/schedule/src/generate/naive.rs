//! Naive model parallelism: no pipelining, one action in the whole pipeline at a time.
//!
//! For each mini-batch i: each micro-batch j goes forward through stages 0..W−1, then the
//! mini-batch backward runs from stage W−1 down to 0, each followed by `U(i)` at its stage.
//! Each stage's program is its share of that global order; the extra dependencies that chain
//! the global order (see [`crate::deps`]) make the engine place exactly one forward or backward
//! per slot: the baseline every pipelined family is measured against.

use super::engine;
use crate::action::{ActionKind, MicrobatchId};
use crate::schedule::{Schedule, ScheduleConfig, ScheduleKind};

/// The program of one stage (the same for every stage).
fn program(config: &ScheduleConfig) -> Vec<ActionKind> {
    let n = config.num_microbatches;
    (0..config.num_minibatches)
        .flat_map(|i| {
            (0..n)
                .map(move |j| ActionKind::Forward(MicrobatchId::new(i, j)))
                .chain([ActionKind::BackwardMinibatch(i), ActionKind::Update(i)])
        })
        .collect()
}

/// Naive model parallelism.
pub(super) fn naive(config: &ScheduleConfig) -> Schedule {
    engine::run_programs(ScheduleKind::Naive, config, |_| program(config))
}
