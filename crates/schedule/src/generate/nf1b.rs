//! nF1B (TiMePReSt, `docs/algorithms.md` §2.6): the greedy backward-first rule, also used for
//! async 1F1B.
//!
//! Each stage, in each slot: if backward priority is on and the backward of its oldest unfinished
//! mini-batch is ready, run it (and the update after it); otherwise run the next forward in order
//! `(1,A),(1,B),…,(2,A),…` if it is ready and, when it would start a new mini-batch, fewer than
//! the cap mini-batches are in flight at that stage; otherwise stay idle. A mini-batch is in
//! flight at a stage from its first forward there until its backward there. Continuing the
//! forwards of a mini-batch already in flight is never held back by the cap: the backward needs
//! all N of them, so holding one back could only deadlock.
//!
//! With N = 1 this is exactly PipeDream's 1F1B with the W − s warm-up (`docs/algorithms.md`
//! §2.4), which is why the `1f1b` family reuses this policy.

use super::engine::{self, StagePolicy};
use crate::action::{ActionKind, MicrobatchId};
use crate::schedule::{Schedule, ScheduleConfig, ScheduleKind};

/// The greedy backward-first policy.
struct GreedyPolicy {
    num_microbatches: u32,
    num_minibatches: u32,
    backward_priority: bool,
    /// In-flight cap per stage (`None` = unlimited).
    caps: Vec<Option<u32>>,
    /// Per stage, the flat index `i·N + j` of the next forward.
    next_forward: Vec<u32>,
    /// Per stage, the mini-batch of the next backward.
    next_backward: Vec<u32>,
}

impl GreedyPolicy {
    fn started_minibatches(&self, stage: usize) -> u32 {
        self.next_forward[stage].div_ceil(self.num_microbatches)
    }
}

impl StagePolicy for GreedyPolicy {
    fn candidates(&self, stage: u32) -> [Option<ActionKind>; 2] {
        let s = stage as usize;
        let started = self.started_minibatches(s);
        let next_backward = self.next_backward[s];
        let backward =
            (next_backward < started).then_some(ActionKind::BackwardMinibatch(next_backward));
        let flat = self.next_forward[s];
        let (i, j) = (flat / self.num_microbatches, flat % self.num_microbatches);
        let admitted = j > 0 || self.caps[s].is_none_or(|cap| started - next_backward < cap);
        let forward = (i < self.num_minibatches && admitted)
            .then_some(ActionKind::Forward(MicrobatchId::new(i, j)));
        if self.backward_priority {
            [backward, forward]
        } else {
            [forward, backward]
        }
    }

    fn started(&mut self, stage: u32, kind: ActionKind) -> Option<ActionKind> {
        let s = stage as usize;
        match kind {
            ActionKind::Forward(_) => {
                self.next_forward[s] += 1;
                None
            }
            ActionKind::BackwardMinibatch(i) => {
                self.next_backward[s] += 1;
                Some(ActionKind::Update(i))
            }
            _ => unreachable!("the greedy policy only proposes forwards and mini-batch backwards"),
        }
    }
}

/// The greedy schedule for an already checked `config`, labelled `kind`.
pub(super) fn greedy(kind: ScheduleKind, config: ScheduleConfig) -> Schedule {
    let w = config.num_stages;
    let mut policy = GreedyPolicy {
        num_microbatches: config.num_microbatches,
        num_minibatches: config.num_minibatches,
        backward_priority: config.backward_priority,
        caps: (0..w).map(|s| config.inflight_cap.at(s, w)).collect(),
        next_forward: vec![0; w as usize],
        next_backward: vec![0; w as usize],
    };
    let stages = engine::run(kind, &config, &mut policy);
    Schedule {
        kind,
        config,
        stages,
    }
}

/// nF1B: N micro-batch forwards then one backward of the whole mini-batch, backward first.
pub(super) fn nf1b(config: &ScheduleConfig) -> Schedule {
    greedy(ScheduleKind::Nf1b, *config)
}
