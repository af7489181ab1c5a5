//! The dependency rules: which earlier actions an action needs.
//!
//! The rules are written once, here, and used by the generators (an action may start in a slot
//! once all its dependencies finished in earlier slots), by [`crate::validate()`] (the same check
//! on a finished schedule) and by the cost simulation (an action starts when its dependencies
//! have finished, plus the transfer time of any message they send). Keeping them in one place is
//! what makes "the generator's output validates" a meaningful test rather than a tautology of two
//! copies of the same code.
//!
//! Rules, for stage s of W (last = W − 1):
//! - `F(i,j)@s` needs `F(i,j)@s−1` (an activation message).
//! - `B(i)@W−1` needs every `F(i,·)@W−1`; `B(i)@s` needs `B(i)@s+1` (a gradient message).
//! - `B(i,j)@s` needs `F(i,j)@s` and `B(i,j)@s+1` (a gradient message).
//! - Synchronous kinds (naive, GPipe, 1F1B-flush) flush: `F(i,·)@s` needs `U(i−1)@s`.
//! - 1F1B-2BW double-buffers: `F(i,·)@s` needs `U(i−2)@s` (the version its forward reads).
//! - Naive runs one action at a time in the whole pipeline: `F(i,j)@0` also needs
//!   `F(i,j−1)@W−1`, and `B(i)@s` also needs `U(i)@s+1`.
//!
//! Updates have no dependencies here: an update is placed by its position (it immediately follows
//! the backward that completes its mini-batch at that stage), which the validator checks apart.

use crate::action::{Action, ActionKind};
use crate::schedule::{ScheduleConfig, ScheduleKind};

/// One dependency of an action.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Dep {
    /// The action that must finish first.
    pub(crate) action: Action,
    /// True when the dependency sends a message (activations or gradients) to the dependent
    /// action, so a cross-stage dependency costs a transfer; false for pure ordering.
    pub(crate) carries_data: bool,
}

impl Dep {
    fn data(action: Action) -> Option<Self> {
        Some(Self {
            action,
            carries_data: true,
        })
    }

    fn order(action: Action) -> Option<Self> {
        Some(Self {
            action,
            carries_data: false,
        })
    }
}

/// The dependencies of `action` in a schedule of `kind` with `config`'s shape.
pub(crate) fn dependencies(
    kind: ScheduleKind,
    config: &ScheduleConfig,
    action: Action,
) -> impl Iterator<Item = Dep> {
    let (s, last) = (action.stage, config.num_stages - 1);
    let mut fixed: [Option<Dep>; 3] = [None; 3];
    // The forwards of one mini-batch at this stage that the action needs, as a micro-batch range.
    let mut local_forwards = 0..0;
    match action.kind {
        ActionKind::Forward(mb) => {
            let (i, j) = (mb.minibatch, mb.microbatch);
            if s > 0 {
                fixed[0] = Dep::data(Action::forward(s - 1, i, j));
            }
            if kind.is_synchronous() && i > 0 {
                fixed[1] = Dep::order(Action::update(s, i - 1));
            }
            if kind == ScheduleKind::OneFOneBDoubleBuffered && i > 1 {
                fixed[1] = Dep::order(Action::update(s, i - 2));
            }
            if kind == ScheduleKind::Naive && s == 0 && j > 0 {
                fixed[2] = Dep::order(Action::forward(last, i, j - 1));
            }
        }
        ActionKind::BackwardMinibatch(i) => {
            if s == last {
                local_forwards = 0..config.num_microbatches;
            } else {
                fixed[0] = Dep::data(Action::backward(s + 1, i));
                if kind == ScheduleKind::Naive {
                    fixed[1] = Dep::order(Action::update(s + 1, i));
                }
            }
        }
        ActionKind::BackwardMicrobatch(mb) => {
            fixed[0] = Dep::order(Action::forward(s, mb.minibatch, mb.microbatch));
            if s < last {
                fixed[1] = Dep::data(Action::backward_microbatch(
                    s + 1,
                    mb.minibatch,
                    mb.microbatch,
                ));
            }
        }
        ActionKind::Update(_) => {}
    }
    let i = action.kind.minibatch();
    fixed
        .into_iter()
        .flatten()
        .chain(local_forwards.map(move |j| Dep {
            action: Action::forward(s, i, j),
            carries_data: false,
        }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn deps(kind: ScheduleKind, action: Action) -> Vec<String> {
        let config = ScheduleConfig::new(3, 2, 4);
        dependencies(kind, &config, action)
            .map(|dep| dep.action.to_string())
            .collect()
    }

    #[test]
    fn last_stage_minibatch_backward_needs_every_forward_of_its_minibatch() {
        assert_eq!(
            deps(ScheduleKind::Nf1b, Action::backward(2, 1)),
            ["2F1.0", "2F1.1"]
        );
        assert_eq!(deps(ScheduleKind::Nf1b, Action::backward(1, 1)), ["2B1"]);
    }

    #[test]
    fn synchronous_forwards_wait_for_the_previous_update_at_their_stage() {
        assert_eq!(
            deps(ScheduleKind::Gpipe, Action::forward(1, 2, 1)),
            ["0F2.1", "1U1"]
        );
        assert_eq!(
            deps(ScheduleKind::Nf1b, Action::forward(1, 2, 1)),
            ["0F2.1"]
        );
    }

    #[test]
    fn double_buffered_forwards_wait_for_the_update_two_minibatches_back() {
        let kind = ScheduleKind::OneFOneBDoubleBuffered;
        assert_eq!(deps(kind, Action::forward(1, 2, 1)), ["0F2.1", "1U0"]);
        assert_eq!(deps(kind, Action::forward(0, 1, 0)), Vec::<String>::new());
        assert_eq!(
            deps(kind, Action::backward_microbatch(1, 0, 1)),
            ["1F0.1", "2B0.1"]
        );
    }

    #[test]
    fn naive_chains_every_action_to_the_one_before_it() {
        assert_eq!(
            deps(ScheduleKind::Naive, Action::forward(0, 1, 1)),
            ["0U0", "2F1.0"]
        );
        assert_eq!(
            deps(ScheduleKind::Naive, Action::backward(0, 1)),
            ["1B1", "1U1"]
        );
    }

    #[test]
    fn microbatch_backward_needs_its_forward_and_the_next_stage() {
        let got = deps(ScheduleKind::Gpipe, Action::backward_microbatch(1, 0, 1));
        assert_eq!(got, ["1F0.1", "2B0.1"]);
    }
}
