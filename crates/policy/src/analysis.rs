//! TiMePReSt's version analysis: the version difference v and the multiple-sequence problem.
//!
//! See `docs/algorithms.md` §3.5. For mini-batch i (1-based), let c(i) be the number of updates
//! stage 0 has already applied (in an earlier slot) when B(i) starts at the last stage; B(i)
//! therefore computes its gradient on weights whose newest update came from mini-batch c(i).
//! The version difference is v(i) = i − c(i): v = 1 means B(i) already sees the update of
//! mini-batch i − 1. When v > 1, updates propagate along several disjoint chains (W = 4, N = 2:
//! {1,3,5,…} and {2,4,6,…}), the paper's "multiple sequence problem". The paper's closed form
//! ⌊(W+N−2)/N⌋ is kept beside the simulated value because it is wrong at a few points.

use std::collections::BTreeMap;
use std::ops::Range;

use serde::{Deserialize, Serialize};
use timeprest_schedule::{ActionKind, Schedule, ScheduleKind, max_microbatches_in_flight};

use crate::policy::{PolicyKind, WeightPolicy};
use crate::trace::{Activations, plan};

/// The version-difference analysis of one schedule.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VersionDifference {
    /// v(i) for every mini-batch (index 0 is mini-batch 1).
    pub per_minibatch: Vec<u32>,
    /// c(i): the 1-based mini-batch whose update is the newest one B(i) sees (0 = none).
    pub parents: Vec<u32>,
    /// The chains of weight-update propagation, as 1-based mini-batch numbers.
    pub chains: Vec<Vec<u32>>,
    /// v in steady state: the largest v(i) over the middle half of the mini-batches, which
    /// excludes the warm-up and the drain.
    pub steady_v: u32,
}

impl VersionDifference {
    /// True when updates propagate along more than one chain.
    pub fn has_multiple_sequences(&self) -> bool {
        self.chains.len() > 1
    }
}

/// The steady-state mini-batches of a run of `num_minibatches` (0-based, half-open): the
/// middle half, M/4 .. 3M/4, which excludes warm-up and drain (never empty for M ≥ 1).
pub fn steady_window(num_minibatches: u32) -> std::ops::Range<u32> {
    let start = (num_minibatches / 4).min(num_minibatches.saturating_sub(1));
    start
        ..(3 * num_minibatches / 4)
            .max(start + 1)
            .min(num_minibatches.max(1))
}

/// The paper's closed form v = ⌊(W + N − 2) / N⌋ (Eq. 3/16), defined for W ≥ 2, N ≥ 2.
pub fn v_formula(num_stages: u32, num_microbatches: u32) -> u32 {
    (num_stages + num_microbatches - 2) / num_microbatches
}

/// The slot at which each mini-batch's (first) backward starts at the last stage, by
/// mini-batch: the moment the version difference and the committed version are measured at.
pub(crate) fn last_stage_backward_starts(schedule: &Schedule) -> Vec<u32> {
    let last = schedule.stages.len() - 1;
    let mut backward_start = vec![u32::MAX; schedule.config.num_minibatches as usize];
    for scheduled in &schedule.stages[last] {
        if scheduled.action.kind.is_backward() {
            let i = scheduled.action.kind.minibatch() as usize;
            backward_start[i] = backward_start[i].min(scheduled.slot);
        }
    }
    backward_start
}

/// Simulates the version difference on `schedule` (which must be valid and have at least one
/// mini-batch), on its version slots ([`Schedule::version_slots`]).
pub fn version_difference(schedule: &Schedule) -> VersionDifference {
    let schedule = &*schedule.version_slots();
    let num_minibatches = schedule.config.num_minibatches as usize;
    // Slots of stage 0's updates, in order.
    let update_slots: Vec<u32> = schedule.stages[0]
        .iter()
        .filter(|a| matches!(a.action.kind, ActionKind::Update(_)))
        .map(|a| a.slot)
        .collect();
    let parents: Vec<u32> = last_stage_backward_starts(schedule)
        .iter()
        .map(|&start| update_slots.partition_point(|&slot| slot < start) as u32)
        .collect();
    let per_minibatch: Vec<u32> = parents
        .iter()
        .enumerate()
        .map(|(i, &c)| i as u32 + 1 - c)
        .collect();

    // A mini-batch continues its parent's chain unless a sibling already did; then it branches.
    let mut chains: Vec<Vec<u32>> = Vec::new();
    let mut chain_of = vec![usize::MAX; num_minibatches + 1];
    let mut continued = vec![false; num_minibatches + 1];
    for (index, &parent) in parents.iter().enumerate() {
        let minibatch = index as u32 + 1;
        let parent = parent as usize;
        let chain = if parent > 0 && !continued[parent] {
            chain_of[parent]
        } else {
            chains.push(Vec::new());
            chains.len() - 1
        };
        continued[parent] = true;
        chain_of[minibatch as usize] = chain;
        chains[chain].push(minibatch);
    }

    let window = steady_window(num_minibatches as u32);
    let steady_v = per_minibatch[window.start as usize..window.end as usize]
        .iter()
        .copied()
        .max()
        .unwrap_or(1);
    VersionDifference {
        per_minibatch,
        parents,
        chains,
        steady_v,
    }
}

/// What a policy does to the weight versions of one schedule, per stage: the most weight sets
/// it stores, the micro-batches in flight, and the staleness of its backwards
/// (`docs/algorithms.md` §3.10, §5).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct VersionSummary {
    /// The schedule family.
    pub schedule: ScheduleKind,
    /// The policy traced.
    pub policy: PolicyKind,
    /// W.
    pub stages: u32,
    /// N.
    pub microbatches: u32,
    /// Mini-batches simulated.
    pub minibatches: u32,
    /// The steady-state mini-batches, 1-based and inclusive: `[first, last]`.
    pub steady_minibatches: [u32; 2],
    /// Per stage, the most weight sets (versions or predictions) stored at once.
    pub stored_versions: Vec<u32>,
    /// Per stage, the most micro-batches whose forward is done and backward is not.
    pub max_microbatches_in_flight: Vec<u32>,
    /// Per stage, d → number of micro-batch backwards with that staleness, over all of them.
    pub staleness: Vec<BTreeMap<u64, u32>>,
    /// The same over the steady-state mini-batches only.
    pub steady_staleness: Vec<BTreeMap<u64, u32>>,
}

impl VersionSummary {
    /// Traces `policy` over `schedule`, on stages that keep or recompute their `activations`.
    pub fn new(schedule: &Schedule, policy: &WeightPolicy, activations: Activations) -> Self {
        let config = &schedule.config;
        let plan = plan(schedule, policy, activations);
        let steady = steady_window(config.num_minibatches);
        let histograms = |range: Range<u32>| -> Vec<BTreeMap<u64, u32>> {
            plan.stages
                .iter()
                .map(|stage| stage.staleness_histogram(range.clone()))
                .collect()
        };
        Self {
            schedule: schedule.kind,
            policy: policy.kind,
            stages: config.num_stages,
            microbatches: config.num_microbatches,
            minibatches: config.num_minibatches,
            steady_minibatches: [steady.start + 1, steady.end],
            stored_versions: plan.peak_weight_sets(),
            max_microbatches_in_flight: max_microbatches_in_flight(schedule),
            staleness: histograms(0..config.num_minibatches),
            steady_staleness: histograms(steady),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_steady_window_is_the_middle_half_and_never_empty() {
        assert_eq!(steady_window(40), 10..30);
        assert_eq!(steady_window(1), 0..1);
        assert_eq!(steady_window(2), 0..1);
    }
}
