//! 1F1B-flush (PipeDream-flush, Megatron-LM's non-interleaved schedule).
//!
//! Per mini-batch i, stage s runs `warmup = min(N, W − s − 1)` forwards, then N − warmup steady
//! pairs "forward of the next micro-batch, backward of the oldest", then the `warmup` remaining
//! backwards, then one update `U(i)`. Counting the first steady forward, stage s holds at most
//! min(N, W − s) micro-batches of activations, against N for GPipe. Backwards run in micro-batch
//! order. As for GPipe, the next mini-batch starts at a stage only after that stage's update
//! (the flush is a dependency rule, see [`crate::deps`]) and the engine places each action at
//! the earliest slot its dependencies allow.

use super::engine;
use crate::action::{ActionKind, MicrobatchId};
use crate::schedule::{Schedule, ScheduleConfig, ScheduleKind};

/// The program of stage `stage`.
fn program(stage: u32, config: &ScheduleConfig) -> Vec<ActionKind> {
    let n = config.num_microbatches;
    let warmup = n.min(config.num_stages - stage - 1);
    let mut program = Vec::with_capacity(((2 * n + 1) * config.num_minibatches) as usize);
    for i in 0..config.num_minibatches {
        let forward = |j| ActionKind::Forward(MicrobatchId::new(i, j));
        let backward = |j| ActionKind::BackwardMicrobatch(MicrobatchId::new(i, j));
        program.extend((0..warmup).map(forward));
        for k in 0..n - warmup {
            program.extend([forward(warmup + k), backward(k)]);
        }
        program.extend((n - warmup..n).map(backward));
        program.push(ActionKind::Update(i));
    }
    program
}

/// 1F1B-flush with one update per mini-batch.
pub(super) fn one_f_one_b_flush(config: &ScheduleConfig) -> Schedule {
    engine::run_programs(ScheduleKind::OneFOneBFlush, config, |s| program(s, config))
}
