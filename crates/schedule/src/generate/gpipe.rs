//! GPipe: all N forwards, all N backwards (last micro-batch first), one update, flush.
//!
//! Each stage runs the fixed program `F(i,0) … F(i,N−1), B(i,N−1) … B(i,0), U(i)` for every
//! mini-batch i; the engine places each action at the earliest slot its dependencies allow. The
//! flush (a stage starts mini-batch i+1 only after its update for i) is a dependency rule of
//! every synchronous family, see [`crate::deps`]. With equal forward and backward times one
//! mini-batch takes 2(N + W − 1) slots, the GPipe paper's bubble.

use super::engine;
use crate::action::{ActionKind, MicrobatchId};
use crate::schedule::{Schedule, ScheduleConfig, ScheduleKind};

/// The program of one stage (the same for every stage).
fn program(config: &ScheduleConfig) -> Vec<ActionKind> {
    let n = config.num_microbatches;
    (0..config.num_minibatches)
        .flat_map(|i| {
            let forwards = (0..n).map(move |j| ActionKind::Forward(MicrobatchId::new(i, j)));
            let backwards = (0..n)
                .rev()
                .map(move |j| ActionKind::BackwardMicrobatch(MicrobatchId::new(i, j)));
            forwards.chain(backwards).chain([ActionKind::Update(i)])
        })
        .collect()
}

/// GPipe with a flush after every mini-batch.
pub(super) fn gpipe(config: &ScheduleConfig) -> Schedule {
    engine::run_programs(ScheduleKind::Gpipe, config, |_| program(config))
}
