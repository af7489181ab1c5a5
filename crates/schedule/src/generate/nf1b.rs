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
//!
//! Streamed nF1B (`nf1b-streamed`, §2.6b) keeps nF1B's per-stage order, decided by the greedy
//! rule above, and replaces each mini-batch backward by its micro-batches' backwards in a row,
//! first to last; the engine then places that fixed program (as it does GPipe's). Only where
//! the backwards fall in time changes: a stage's order, and so every version a pass reads, is
//! nF1B's.

use super::engine::{self, StagePolicy};
use crate::action::{Action, ActionKind, MicrobatchId};
use crate::schedule::{Schedule, ScheduleConfig, ScheduleKind};

/// The greedy backward-first policy.
///
/// Its unit of backward is a mini-batch (nF1B, 1F1B) or a micro-batch (1F1B-2BW, where the
/// update follows the backward of a mini-batch's last micro-batch). The in-flight cap counts
/// the same units.
struct GreedyPolicy {
    num_microbatches: u32,
    num_minibatches: u32,
    backward_priority: bool,
    /// True when each micro-batch has its own backward.
    microbatch_backwards: bool,
    /// In-flight cap per stage (`None` = unlimited).
    caps: Vec<Option<u32>>,
    /// Per stage, the flat index `i·N + j` of the next forward.
    next_forward: Vec<u32>,
    /// Per stage, the next backward: a mini-batch, or a flat micro-batch index `i·N + j`.
    next_backward: Vec<u32>,
}

impl GreedyPolicy {
    /// Backward units whose first forward has started at `stage`.
    fn started_units(&self, stage: usize) -> u32 {
        if self.microbatch_backwards {
            self.next_forward[stage]
        } else {
            self.next_forward[stage].div_ceil(self.num_microbatches)
        }
    }

    /// The micro-batch with flat index `flat`.
    fn microbatch(&self, flat: u32) -> MicrobatchId {
        MicrobatchId::new(flat / self.num_microbatches, flat % self.num_microbatches)
    }
}

impl StagePolicy for GreedyPolicy {
    fn candidates(&self, stage: u32) -> [Option<ActionKind>; 2] {
        let s = stage as usize;
        let started = self.started_units(s);
        let next_backward = self.next_backward[s];
        let backward = (next_backward < started).then(|| {
            if self.microbatch_backwards {
                ActionKind::BackwardMicrobatch(self.microbatch(next_backward))
            } else {
                ActionKind::BackwardMinibatch(next_backward)
            }
        });
        let next = self.microbatch(self.next_forward[s]);
        // A forward that continues a mini-batch already in flight is never held back when the
        // backward covers the whole mini-batch (see the module documentation).
        let continues = !self.microbatch_backwards && next.microbatch > 0;
        let admitted = continues || self.caps[s].is_none_or(|cap| started - next_backward < cap);
        let forward = (next.minibatch < self.num_minibatches && admitted)
            .then_some(ActionKind::Forward(next));
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
            ActionKind::BackwardMicrobatch(mb) => {
                self.next_backward[s] += 1;
                (mb.microbatch + 1 == self.num_microbatches)
                    .then_some(ActionKind::Update(mb.minibatch))
            }
            ActionKind::Update(_) => unreachable!("the greedy policy never proposes an update"),
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
        microbatch_backwards: kind.has_microbatch_backwards(),
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

/// Streamed nF1B: nF1B's order with each mini-batch backward split into its micro-batches'.
pub(super) fn nf1b_streamed(config: &ScheduleConfig) -> Schedule {
    let order = nf1b(config);
    let n = config.num_microbatches;
    engine::run_programs(ScheduleKind::Nf1bStreamed, config, |stage| {
        order
            .actions(stage)
            .flat_map(|Action { kind, .. }| match kind {
                ActionKind::BackwardMinibatch(i) => (0..n)
                    .map(|j| ActionKind::BackwardMicrobatch(MicrobatchId::new(i, j)))
                    .collect(),
                other => vec![other],
            })
            .collect()
    })
}
