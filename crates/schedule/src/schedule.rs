//! A schedule: the per-stage action sequences of one run, with the unit slot of every action.
//!
//! The sequence per stage is the source of truth: the runtime executes it in order. The slot of
//! each action is where the unit-slot simulation (every forward and backward takes one slot, an
//! update takes none) places it; it exists so that the papers' grids can be reproduced and
//! rendered. Generators produce schedules; [`crate::validate()`] checks them.

use std::borrow::Cow;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::action::{Action, ActionKind};

/// The schedule families timeprest can generate.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ScheduleKind {
    /// Naive model parallelism: one mini-batch at a time through all stages, no overlap.
    Naive,
    /// GPipe: all N forwards, all N micro-batch backwards, flush, one update per mini-batch.
    Gpipe,
    /// Asynchronous 1F1B (PipeDream): one forward, one backward, update after each backward.
    #[serde(rename = "1f1b")]
    OneFOneB,
    /// PipeDream-flush / Megatron 1F1B: micro-batches in 1F1B order, one update at the flush.
    #[serde(rename = "1f1b-flush")]
    OneFOneBFlush,
    /// TiMePReSt nF1B: N micro-batch forwards, then one backward of the whole mini-batch.
    Nf1b,
    /// nF1B with each stage's mini-batch backward run as the N backwards of its micro-batches
    /// in a row, first to last, then the one update: every stage runs nF1B's actions in nF1B's
    /// order (so every pass reads the same weights), but a stage sends each micro-batch's input
    /// gradient as soon as it has it, and the stage before starts its backward while this one
    /// still works on the rest of the mini-batch.
    #[serde(rename = "nf1b-streamed")]
    Nf1bStreamed,
    /// PipeDream-2BW: asynchronous 1F1B over micro-batches, gradients accumulated over the N
    /// micro-batches of a mini-batch, one update per mini-batch, no flush; a mini-batch's
    /// forwards at a stage wait for the update two mini-batches back (double buffering).
    #[serde(rename = "1f1b-2bw")]
    OneFOneBDoubleBuffered,
}

impl ScheduleKind {
    /// Every kind, in the order shown in help texts.
    pub const ALL: [ScheduleKind; 7] = [
        ScheduleKind::Naive,
        ScheduleKind::Gpipe,
        ScheduleKind::OneFOneB,
        ScheduleKind::OneFOneBFlush,
        ScheduleKind::Nf1b,
        ScheduleKind::Nf1bStreamed,
        ScheduleKind::OneFOneBDoubleBuffered,
    ];

    /// The name used on the command line and in files.
    pub fn name(self) -> &'static str {
        match self {
            ScheduleKind::Naive => "naive",
            ScheduleKind::Gpipe => "gpipe",
            ScheduleKind::OneFOneB => "1f1b",
            ScheduleKind::OneFOneBFlush => "1f1b-flush",
            ScheduleKind::Nf1b => "nf1b",
            ScheduleKind::Nf1bStreamed => "nf1b-streamed",
            ScheduleKind::OneFOneBDoubleBuffered => "1f1b-2bw",
        }
    }

    /// True when every stage applies exactly one update per mini-batch after all of that
    /// mini-batch's backwards and no forward of a later mini-batch runs before it (a flush).
    pub fn is_synchronous(self) -> bool {
        matches!(
            self,
            ScheduleKind::Naive | ScheduleKind::Gpipe | ScheduleKind::OneFOneBFlush
        )
    }

    /// True when the family runs one backward per micro-batch ([`ActionKind::BackwardMicrobatch`]:
    /// GPipe, 1F1B-flush, 1F1B-2BW, streamed nF1B); false when it runs one backward per
    /// mini-batch ([`ActionKind::BackwardMinibatch`]: naive, 1F1B, nF1B).
    ///
    /// [`ActionKind::BackwardMicrobatch`]: crate::ActionKind::BackwardMicrobatch
    /// [`ActionKind::BackwardMinibatch`]: crate::ActionKind::BackwardMinibatch
    pub fn has_microbatch_backwards(self) -> bool {
        matches!(
            self,
            ScheduleKind::Gpipe
                | ScheduleKind::OneFOneBFlush
                | ScheduleKind::OneFOneBDoubleBuffered
                | ScheduleKind::Nf1bStreamed
        )
    }

    /// True for the two nF1B families (`nf1b`, `nf1b-streamed`): each stage runs a mini-batch's
    /// N forwards, then its backward, in the order of TiMePReSt's greedy rule, so they share
    /// the version difference v and its warnings.
    pub fn is_nf1b(self) -> bool {
        matches!(self, ScheduleKind::Nf1b | ScheduleKind::Nf1bStreamed)
    }

    /// How many micro-batches one backward covers when a mini-batch has `num_microbatches`:
    /// 1 for a family with a backward per micro-batch, all of them otherwise.
    pub fn microbatches_per_backward(self, num_microbatches: u32) -> u32 {
        if self.has_microbatch_backwards() {
            1
        } else {
            num_microbatches
        }
    }

    /// True when the family's generator holds back a stage's forwards by the in-flight cap
    /// ([`ScheduleConfig::inflight_cap`]): the greedy families 1F1B, nF1B (both forms) and
    /// 1F1B-2BW.
    pub fn uses_inflight_cap(self) -> bool {
        matches!(
            self,
            ScheduleKind::OneFOneB
                | ScheduleKind::Nf1b
                | ScheduleKind::Nf1bStreamed
                | ScheduleKind::OneFOneBDoubleBuffered
        )
    }

    /// True when the family runs each of a mini-batch's micro-batches as a mini-batch of its
    /// own (asynchronous 1F1B, `docs/algorithms.md` §2.4): asked for `num_microbatches`
    /// micro-batches in each of `num_minibatches` mini-batches, [`generate`](crate::generate)
    /// returns one micro-batch in each of `num_microbatches × num_minibatches` mini-batches,
    /// with that many updates. False for every family that keeps both counts as given.
    pub fn splits_microbatches(self) -> bool {
        matches!(self, ScheduleKind::OneFOneB)
    }
}

impl fmt::Display for ScheduleKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// An unknown schedule name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "unknown schedule `{0}`; valid schedules: naive, gpipe, 1f1b, 1f1b-flush, nf1b, \
     nf1b-streamed, 1f1b-2bw"
)]
pub struct UnknownScheduleError(pub String);

impl FromStr for ScheduleKind {
    type Err = UnknownScheduleError;

    fn from_str(name: &str) -> Result<Self, Self::Err> {
        let lower = name.to_ascii_lowercase();
        ScheduleKind::ALL
            .into_iter()
            .find(|kind| kind.name() == lower)
            .ok_or_else(|| UnknownScheduleError(name.to_string()))
    }
}

/// How many mini-batches a stage may have in flight (forward started, backward not finished);
/// in `1f1b-2bw`, whose backwards are per micro-batch, how many micro-batches.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum InflightCap {
    /// PipeDream's rule: stage s keeps at most W − s mini-batches in flight.
    StagesRemaining,
    /// No cap.
    Unlimited,
    /// The same cap at every stage.
    Constant(u32),
}

impl InflightCap {
    /// The cap at `stage` of a `num_stages` pipeline, or `None` when unlimited.
    pub fn at(self, stage: u32, num_stages: u32) -> Option<u32> {
        match self {
            InflightCap::StagesRemaining => Some(num_stages - stage),
            InflightCap::Unlimited => None,
            InflightCap::Constant(cap) => Some(cap),
        }
    }
}

/// Everything a generator needs to know.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScheduleConfig {
    /// W: number of pipeline stages.
    pub num_stages: u32,
    /// N: micro-batches per mini-batch.
    pub num_microbatches: u32,
    /// Number of mini-batches to schedule.
    pub num_minibatches: u32,
    /// In-flight cap (used by `1f1b`, `nf1b` and `1f1b-2bw`).
    pub inflight_cap: InflightCap,
    /// When a stage could run either a backward or a forward, run the backward (`1f1b`, `nf1b`,
    /// `1f1b-2bw`).
    pub backward_priority: bool,
    /// `None`: the papers' unit-slot grid, where every forward and backward takes one slot
    /// (nF1B's mini-batch backward as short as one forward). `Some(k)`: a forward takes one
    /// slot and a backward `k` per micro-batch it covers. Real backwards cost about twice a
    /// forward per micro-batch: ordered with `Some(2)`, the greedy families (`1f1b`, `nf1b`)
    /// let an upstream stage run its next forwards while a long backward runs downstream, as
    /// the ready-queue rule does on real hardware (`docs/algorithms.md` §2.7), instead of waiting for a
    /// backward the grid assumed finished. Only the order and the slots change; every
    /// dependency rule is the same.
    #[serde(default)]
    pub backward_slots: Option<u32>,
}

/// The largest `k` of [`ScheduleConfig::backward_slots`] accepted.
pub const MAX_BACKWARD_SLOTS: u32 = 64;

impl ScheduleConfig {
    /// A configuration with the papers' defaults: cap W − s, backward priority
    /// (`docs/algorithms.md` §2.6), unit slots (§2.7).
    pub fn new(num_stages: u32, num_microbatches: u32, num_minibatches: u32) -> Self {
        Self {
            num_stages,
            num_microbatches,
            num_minibatches,
            inflight_cap: InflightCap::StagesRemaining,
            backward_priority: true,
            backward_slots: None,
        }
    }

    /// Slots `kind` occupies its stage: one for a forward; for a backward one on the unit grid,
    /// else `k` per micro-batch it covers (see [`ScheduleConfig::backward_slots`]); none for an
    /// update (it follows its backward in the same slot).
    pub fn duration(&self, kind: ActionKind) -> u32 {
        match (kind, self.backward_slots) {
            (ActionKind::Forward(_), _) => 1,
            (ActionKind::Update(_), _) => 0,
            (ActionKind::BackwardMicrobatch(_) | ActionKind::BackwardMinibatch(_), None) => 1,
            (ActionKind::BackwardMicrobatch(_), Some(k)) => k,
            (ActionKind::BackwardMinibatch(_), Some(k)) => k.saturating_mul(self.num_microbatches),
        }
    }
}

/// One action with the unit slot the slot simulation placed it in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScheduledAction {
    /// The action.
    pub action: Action,
    /// The slot it starts in (time 0 is the first). An update shares the slot of the backward
    /// before it.
    pub slot: u32,
}

/// A complete schedule: per stage, the actions in execution order with their slots.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Schedule {
    /// The family that generated it.
    pub kind: ScheduleKind,
    /// The parameters it was generated for.
    pub config: ScheduleConfig,
    /// `stages[s]` is stage s's action sequence, in execution order.
    pub stages: Vec<Vec<ScheduledAction>>,
}

impl Schedule {
    /// Number of slots the schedule spans (up to the end of the last action).
    pub fn num_slots(&self) -> u32 {
        self.stages
            .iter()
            .flat_map(|stage| {
                stage.iter().map(|a| {
                    a.slot
                        .saturating_add(self.config.duration(a.action.kind).max(1))
                })
            })
            .max()
            .unwrap_or(0)
    }

    /// The actions of `stage` in execution order, without slots.
    pub fn actions(&self, stage: u32) -> impl Iterator<Item = Action> + '_ {
        self.stages[stage as usize].iter().map(|a| a.action)
    }

    /// The schedule whose slots say which updates count as applied across stages when a
    /// backward starts (the version difference v, the committed version): itself, except for
    /// streamed nF1B, which runs nF1B's order and so takes the slots of the `nf1b` schedule it
    /// was made from, where each mini-batch backward is one action. That keeps every version
    /// a streamed pass reads equal to nF1B's.
    ///
    /// # Panics
    /// If a streamed schedule's configuration cannot be generated, i.e. it was not validated.
    pub fn version_slots(&self) -> Cow<'_, Schedule> {
        match self.kind {
            ScheduleKind::Nf1bStreamed => Cow::Owned(
                crate::generate(ScheduleKind::Nf1b, &self.config)
                    .expect("a valid streamed nF1B configuration is a valid nF1B one"),
            ),
            _ => Cow::Borrowed(self),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_in_files_and_on_the_command_line_agree_and_round_trip() {
        for kind in ScheduleKind::ALL {
            assert_eq!(serde_json::to_value(kind).unwrap(), kind.name());
            assert_eq!(kind.name().parse::<ScheduleKind>().unwrap(), kind);
        }
        let err = "2bw".parse::<ScheduleKind>().unwrap_err().to_string();
        assert!(err.contains("1f1b-2bw"), "{err}");
    }
}
