//! The unit-slot engine shared by every schedule family.
//!
//! Time is divided into unit slots; every forward and backward takes one slot, an update takes
//! none (it is appended right after the backward that completes its mini-batch, in the same
//! slot). A family is a [`StagePolicy`]: asked what a free stage would like to start, it names at
//! most two candidates in order of preference. The engine starts the first candidate whose
//! dependencies ([`crate::deps`]) all finished in *earlier* slots, and records it.
//!
//! Static programs (GPipe, 1F1B-flush, naive) name the next action of a fixed per-stage list, so
//! the engine places each at the earliest slot its dependencies allow (list scheduling). nF1B and
//! 1F1B name "the next backward, the next forward" under the in-flight cap, so the engine runs the
//! paper's greedy rule. Both are the same loop, which is why they live here once.
//!
//! The engine is event driven so that it costs O(actions × dependencies), not O(slots × stages):
//! a stage is only looked at in a slot when it has just finished an action (it is free again) or
//! when a stage it was waiting for has just finished one. Decisions within a slot only read
//! slots strictly before it, so the order in which stages are visited within a slot does not
//! matter; wake-ups are applied after the whole slot has been decided.

use crate::action::{Action, ActionKind};
use crate::deps::dependencies;
use crate::index::ActionIndex;
use crate::schedule::{Schedule, ScheduleConfig, ScheduleKind, ScheduledAction};

/// Marks an action that has not been placed yet.
const NOT_PLACED: u32 = u32::MAX;

/// What a schedule family decides; the engine does the rest.
pub(crate) trait StagePolicy {
    /// The actions `stage` would start now, best first. `[None, None]` means nothing is left
    /// (or everything left is held back by the policy, e.g. the in-flight cap).
    fn candidates(&self, stage: u32) -> [Option<ActionKind>; 2];

    /// `stage` started `kind`; returns the update that follows it in the same slot, if any.
    fn started(&mut self, stage: u32, kind: ActionKind) -> Option<ActionKind>;
}

/// Runs `policy` to completion and returns each stage's actions with their slots.
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
    let mut placed = index.table(NOT_PLACED);
    let mut rows: Vec<Vec<ScheduledAction>> = (0..num_stages)
        .map(|_| Vec::with_capacity(index.per_stage()))
        .collect();
    // `watchers[x]`: stages blocked on a dependency at stage x, woken when x next runs.
    let mut watchers: Vec<Vec<u32>> = vec![Vec::new(); num_stages];
    // The slot each stage is queued for, so a stage is visited at most once per slot.
    let mut queued_for = vec![0u32; num_stages];
    let mut current: Vec<u32> = (0..config.num_stages).collect();
    let mut next: Vec<u32> = Vec::new();
    let mut ran: Vec<u32> = Vec::new();
    let mut slot = 0u32;

    let ready = |placed: &[u32], action: Action, slot: u32| -> Result<(), u32> {
        for dep in dependencies(kind, config, action) {
            let index = index
                .index(dep.action)
                .expect("dependencies are expected actions");
            if placed[index] >= slot {
                return Err(dep.action.stage);
            }
        }
        Ok(())
    };

    while !current.is_empty() {
        for &stage in &current {
            let mut blocked_on = [None; 2];
            let candidates = policy.candidates(stage);
            let chosen = candidates.iter().enumerate().find_map(|(k, candidate)| {
                let kind = (*candidate)?;
                let action = Action { stage, kind };
                match ready(&placed, action, slot) {
                    Ok(()) => Some(action),
                    Err(at) => {
                        blocked_on[k] = Some(at);
                        None
                    }
                }
            });
            let Some(action) = chosen else {
                for at in blocked_on.into_iter().flatten().filter(|&at| at != stage) {
                    let list = &mut watchers[at as usize];
                    if !list.contains(&stage) {
                        list.push(stage);
                    }
                }
                continue;
            };
            let mut place = |action: Action| {
                let k = index
                    .index(action)
                    .expect("policies start expected actions");
                placed[k] = slot;
                rows[stage as usize].push(ScheduledAction { action, slot });
            };
            place(action);
            if let Some(kind) = policy.started(stage, action.kind) {
                place(Action { stage, kind });
            }
            ran.push(stage);
        }
        slot += 1;
        for stage in ran.drain(..) {
            for woken in std::iter::once(stage).chain(watchers[stage as usize].drain(..)) {
                if queued_for[woken as usize] != slot {
                    queued_for[woken as usize] = slot;
                    next.push(woken);
                }
            }
        }
        std::mem::swap(&mut current, &mut next);
        next.clear();
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
