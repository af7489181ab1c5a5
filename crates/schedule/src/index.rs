//! A dense numbering of every action a schedule is expected to contain.
//!
//! Generation, validation and the cost simulation all need "when did action X happen?" for
//! millions of actions (W = 64, N = 64, 1000 mini-batches is 4 million). Hashing every lookup
//! would dominate their running time, so each expected action gets a fixed index into a flat
//! vector instead. The layout per stage is `[forwards: M·N][backwards: M or M·N][updates: M]`,
//! stage after stage. An action that the schedule's kind and shape do not allow (a micro-batch
//! backward in nF1B, a mini-batch past the end) has no index, which is how validation detects
//! unknown actions.

use crate::action::{Action, ActionKind};
use crate::schedule::{ScheduleConfig, ScheduleKind};

/// The index of every action a `(kind, config)` schedule must contain.
#[derive(Clone, Copy, Debug)]
pub(crate) struct ActionIndex {
    num_stages: u32,
    num_microbatches: u32,
    num_minibatches: u32,
    microbatch_backward: bool,
}

impl ActionIndex {
    /// The index for schedules of `kind` with `config`'s shape.
    pub(crate) fn new(kind: ScheduleKind, config: &ScheduleConfig) -> Self {
        Self {
            num_stages: config.num_stages,
            num_microbatches: config.num_microbatches,
            num_minibatches: config.num_minibatches,
            microbatch_backward: kind.has_microbatch_backwards(),
        }
    }

    fn num_forwards(&self) -> u64 {
        u64::from(self.num_minibatches) * u64::from(self.num_microbatches)
    }

    fn num_backwards(&self) -> u64 {
        if self.microbatch_backward {
            self.num_forwards()
        } else {
            u64::from(self.num_minibatches)
        }
    }

    /// Actions every stage must run (forwards, backwards and updates), without overflow.
    pub(crate) fn per_stage_u64(&self) -> u64 {
        self.num_forwards() + self.num_backwards() + u64::from(self.num_minibatches)
    }

    /// Actions in the whole schedule, without overflow.
    pub(crate) fn total_u64(&self) -> u64 {
        self.per_stage_u64() * u64::from(self.num_stages)
    }

    /// Actions every stage must run.
    pub(crate) fn per_stage(&self) -> usize {
        usize::try_from(self.per_stage_u64()).expect("schedule size was checked to fit in memory")
    }

    /// Actions in the whole schedule: the length of a table indexed by [`Self::index`].
    pub(crate) fn len(&self) -> usize {
        usize::try_from(self.total_u64()).expect("schedule size was checked to fit in memory")
    }

    /// A table with one `fill` entry per expected action.
    pub(crate) fn table<T: Clone>(&self, fill: T) -> Vec<T> {
        vec![fill; self.len()]
    }

    /// The index of `action`, or `None` when the schedule cannot contain it.
    pub(crate) fn index(&self, action: Action) -> Option<usize> {
        let n = u64::from(self.num_microbatches);
        if action.stage >= self.num_stages || action.kind.minibatch() >= self.num_minibatches {
            return None;
        }
        let flat =
            |i: u32, j: u32| (j < self.num_microbatches).then(|| u64::from(i) * n + u64::from(j));
        let within = match action.kind {
            ActionKind::Forward(mb) => flat(mb.minibatch, mb.microbatch)?,
            ActionKind::BackwardMinibatch(i) if !self.microbatch_backward => {
                self.num_forwards() + u64::from(i)
            }
            ActionKind::BackwardMicrobatch(mb) if self.microbatch_backward => {
                self.num_forwards() + flat(mb.minibatch, mb.microbatch)?
            }
            ActionKind::Update(i) => self.num_forwards() + self.num_backwards() + u64::from(i),
            ActionKind::BackwardMinibatch(_) | ActionKind::BackwardMicrobatch(_) => return None,
        };
        debug_assert!(within < self.per_stage_u64());
        Some((u64::from(action.stage) * self.per_stage_u64() + within) as usize)
    }

    /// The action with index `index` (the inverse of [`Self::index`]).
    pub(crate) fn action(&self, index: usize) -> Action {
        let per_stage = self.per_stage_u64();
        let (index, n) = (index as u64, u64::from(self.num_microbatches));
        let stage = (index / per_stage) as u32;
        let within = index % per_stage;
        let split = |flat: u64| ((flat / n) as u32, (flat % n) as u32);
        if within < self.num_forwards() {
            let (i, j) = split(within);
            Action::forward(stage, i, j)
        } else if within < self.num_forwards() + self.num_backwards() {
            let rest = within - self.num_forwards();
            if self.microbatch_backward {
                let (i, j) = split(rest);
                Action::backward_microbatch(stage, i, j)
            } else {
                Action::backward(stage, rest as u32)
            }
        } else {
            Action::update(
                stage,
                (within - self.num_forwards() - self.num_backwards()) as u32,
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn index_and_action_are_inverse_for_every_kind() {
        for kind in ScheduleKind::ALL {
            let index = ActionIndex::new(kind, &ScheduleConfig::new(3, 2, 4));
            for k in 0..index.len() {
                let action = index.action(k);
                assert_eq!(index.index(action), Some(k), "{kind} {action}");
            }
        }
    }

    #[test]
    fn actions_outside_the_shape_or_kind_have_no_index() {
        let index = ActionIndex::new(ScheduleKind::Nf1b, &ScheduleConfig::new(3, 2, 4));
        assert_eq!(index.index(Action::forward(3, 0, 0)), None);
        assert_eq!(index.index(Action::forward(0, 4, 0)), None);
        assert_eq!(index.index(Action::forward(0, 0, 2)), None);
        assert_eq!(index.index(Action::backward_microbatch(0, 0, 0)), None);
        let gpipe = ActionIndex::new(ScheduleKind::Gpipe, &ScheduleConfig::new(3, 2, 4));
        assert_eq!(gpipe.index(Action::backward(0, 0)), None);
    }
}
