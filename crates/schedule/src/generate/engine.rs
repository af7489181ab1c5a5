//! The slot engine shared by every schedule family.
//!
//! Time is divided into slots; a forward takes one, a backward
//! [`ScheduleConfig::duration`] of them (one in the papers' unit-slot grid), an update none (it
//! is appended right after the backward that completes its mini-batch, in the same slot). A
//! family is a [`StagePolicy`]: asked what a free stage would like to start, it names at most
//! two candidates in order of preference. The engine starts the first candidate whose
//! dependencies ([`crate::deps`]) all *finished* by the current slot, and records it.
//!
//! Static programs (GPipe, 1F1B-flush, naive) name the next action of a fixed per-stage list, so
//! the engine places each at the earliest slot its dependencies allow (list scheduling). nF1B and
//! 1F1B name "the next backward, the next forward" under the in-flight cap, so the engine runs the
//! paper's greedy rule. Both are the same loop, which is why they live here once.
//!
//! The engine is event driven so that it costs O(actions × dependencies), not O(slots × stages):
//! a stage is only looked at in a slot when its last action has just finished (it is free
//! again) or when an action of a stage it was waiting for has just finished. Decisions within a
//! slot only read actions finished by then, and an action started in a slot finishes later, so
//! the order in which stages are visited within a slot does not matter.

use std::collections::BTreeMap;

use crate::action::{Action, ActionKind};
use crate::deps::dependencies;
use crate::index::ActionIndex;
use crate::schedule::{Schedule, ScheduleConfig, ScheduleKind, ScheduledAction};

/// Marks an action that has not been placed yet (it finishes after every slot).
const NOT_PLACED: u32 = u32::MAX;

/// What a schedule family decides; the engine does the rest.
pub(crate) trait StagePolicy {
    /// The actions `stage` would start now, best first. `[None, None]` means nothing is left
    /// (or everything left is held back by the policy, e.g. the in-flight cap).
    fn candidates(&self, stage: u32) -> [Option<ActionKind>; 2];

    /// `stage` started `kind`; returns the update that follows it in the same slot, if any.
    fn started(&mut self, stage: u32, kind: ActionKind) -> Option<ActionKind>;
}

/// Runs `policy` to completion and returns each stage's actions with their start slots.
///
/// # Panics
/// If the policy stalls (some stage still has actions left but nothing can ever start). That is
/// a bug in a generator, never a consequence of user input (inputs are checked before).
pub(crate) fn run(
    kind: ScheduleKind,
    config: &ScheduleConfig,
    policy: &mut impl StagePolicy,
) -> Vec<Vec<ScheduledAction>> {
    let num_stages = config.num_stages as usize;
    let index = ActionIndex::new(kind, config);
    // The slot by which each action has finished (an update: with its backward).
    let mut finished = index.table(NOT_PLACED);
    let mut rows: Vec<Vec<ScheduledAction>> = (0..num_stages)
        .map(|_| Vec::with_capacity(index.per_stage()))
        .collect();
    // `watchers[x]`: stages blocked on a dependency at stage x, woken when x's next action ends.
    let mut watchers: Vec<Vec<u32>> = vec![Vec::new(); num_stages];
    // The slot at which each stage's current action ends (it is free from then on).
    let mut busy_until = vec![0u32; num_stages];
    // The stages to look at, by slot.
    let mut wake_ups: BTreeMap<u32, Vec<u32>> =
        BTreeMap::from([(0, (0..config.num_stages).collect())]);
    let mut ran: Vec<(u32, u32)> = Vec::new();
    let mut slot = 0u32;

    let ready = |finished: &[u32], action: Action, slot: u32| -> Result<(), u32> {
        for dep in dependencies(kind, config, action) {
            let index = index
                .index(dep.action)
                .expect("dependencies are expected actions");
            if finished[index] > slot {
                return Err(dep.action.stage);
            }
        }
        Ok(())
    };

    while let Some((now, mut stages)) = wake_ups.pop_first() {
        slot = now;
        stages.sort_unstable();
        stages.dedup();
        for stage in stages {
            if busy_until[stage as usize] > slot {
                // Woken while still busy: its own action's end wakes it again.
                continue;
            }
            let mut blocked_on = [None; 2];
            let candidates = policy.candidates(stage);
            let chosen = candidates.iter().enumerate().find_map(|(k, candidate)| {
                let kind = (*candidate)?;
                let action = Action { stage, kind };
                match ready(&finished, action, slot) {
                    Ok(()) => Some(action),
                    Err(at) => {
                        blocked_on[k] = Some(at);
                        None
                    }
                }
            });
            let Some(action) = chosen else {
                for at in blocked_on.into_iter().flatten().filter(|&at| at != stage) {
                    let busy = busy_until[at as usize];
                    if busy > slot {
                        // The stage waited for is mid-action: look again when it ends.
                        wake_ups.entry(busy).or_default().push(stage);
                        continue;
                    }
                    let list = &mut watchers[at as usize];
                    if !list.contains(&stage) {
                        list.push(stage);
                    }
                }
                continue;
            };
            let end = slot + config.duration(action.kind);
            let mut place = |action: Action| {
                let k = index
                    .index(action)
                    .expect("policies start expected actions");
                finished[k] = end;
                rows[stage as usize].push(ScheduledAction { action, slot });
            };
            place(action);
            if let Some(kind) = policy.started(stage, action.kind) {
                place(Action { stage, kind });
            }
            busy_until[stage as usize] = end;
            ran.push((stage, end));
        }
        for (stage, end) in ran.drain(..) {
            let woken = wake_ups.entry(end).or_default();
            woken.push(stage);
            woken.append(&mut watchers[stage as usize]);
        }
    }

    for (stage, row) in rows.iter().enumerate() {
        assert_eq!(
            row.len(),
            index.per_stage(),
            "{kind} generator stalled at stage {stage} after slot {slot} (W={}, N={}, M={}): \
             this is a bug in the generator",
            config.num_stages,
            config.num_microbatches,
            config.num_minibatches,
        );
    }
    rows
}

/// Runs the static per-stage programs `program(s)` (see [`ProgramPolicy`]) into a schedule.
pub(crate) fn run_programs(
    kind: ScheduleKind,
    config: &ScheduleConfig,
    program: impl Fn(u32) -> Vec<ActionKind>,
) -> Schedule {
    let mut policy = ProgramPolicy::new((0..config.num_stages).map(program).collect());
    let stages = run(kind, config, &mut policy);
    Schedule {
        kind,
        config: *config,
        stages,
    }
}

/// A static per-stage program: each stage runs its list in order, each action at the earliest
/// slot its dependencies allow. Updates in the list follow the action before them in its slot.
pub(crate) struct ProgramPolicy {
    programs: Vec<Vec<ActionKind>>,
    cursors: Vec<usize>,
}

impl ProgramPolicy {
    /// A policy running `programs[s]` at stage s.
    pub(crate) fn new(programs: Vec<Vec<ActionKind>>) -> Self {
        let cursors = vec![0; programs.len()];
        Self { programs, cursors }
    }
}

impl StagePolicy for ProgramPolicy {
    fn candidates(&self, stage: u32) -> [Option<ActionKind>; 2] {
        let stage = stage as usize;
        [self.programs[stage].get(self.cursors[stage]).copied(), None]
    }

    fn started(&mut self, stage: u32, kind: ActionKind) -> Option<ActionKind> {
        let stage = stage as usize;
        debug_assert_eq!(self.programs[stage].get(self.cursors[stage]), Some(&kind));
        self.cursors[stage] += 1;
        let follower = self.programs[stage].get(self.cursors[stage]).copied();
        let update = follower.filter(ActionKind::is_update)?;
        self.cursors[stage] += 1;
        Some(update)
    }
}
