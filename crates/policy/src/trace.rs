//! Version tracing: run a policy over a schedule and record what every pass reads.
//!
//! The result, a [`VersionPlan`], is the single source of truth for versions: the simulator
//! reports it (staleness d per micro-batch, stored versions per stage) and the runtime executes
//! it (each pass's recipe, and which weight sets to release after each action). Because the
//! runtime replays the same per-stage sequences, the versions it measures equal the plan's.
//!
//! Tracing needs no global clock. A stage's live version changes only through its own updates,
//! so walking each stage's sequence in order gives its live version at every action. The one
//! cross-stage fact, the vertical-sync tag (the version stage 0 read for a micro-batch), is
//! fixed by stage 0's sequence alone, so stage 0 is walked first.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use timeprest_schedule::{Action, ActionKind, MicrobatchId, Schedule};

use crate::analysis::{last_stage_backward_starts, steady_window, version_difference};
use crate::policy::{BackwardContext, ForwardContext, StalenessMeasure, WeightPolicy};
use crate::recipe::{Version, WeightKey, WeightRecipe};

/// What one micro-batch's backward reads at one stage.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct PlannedBackward {
    /// The micro-batch.
    pub microbatch: MicrobatchId,
    /// The weights its backward reads.
    pub recipe: WeightRecipe,
    /// What its forward read at this stage.
    pub forward_recipe: WeightRecipe,
    /// Degree of staleness d = live version at the backward − version the forward read.
    pub staleness: u64,
}

/// What the policy decided about the weights of one action, by kind of action.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PlannedPass {
    /// A forward of one micro-batch.
    Forward {
        /// The weights it reads.
        recipe: WeightRecipe,
        /// Its micro-batch's vertical-sync tag: the version stage 0's forward read.
        tag: Version,
        /// Whether its micro-batch's backward at this stage reads the same weights, so that
        /// whatever the forward built for differentiating (an autodiff graph) will serve.
        backward_reads_forward_weights: bool,
    },
    /// A backward: one entry per micro-batch it covers.
    Backward(Vec<PlannedBackward>),
    /// An optimizer update of the live version.
    Update {
        /// Where the step starts: the mean of these weight sets, or the live version when
        /// empty ([`WeightPolicy::update_base`]).
        base: Vec<WeightRecipe>,
    },
}

/// One action of a stage with everything the policy decided about it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PlannedAction {
    /// The action.
    pub action: Action,
    /// Its unit slot in the schedule.
    pub slot: u32,
    /// The stage's live version when the action starts.
    pub live: Version,
    /// What it reads.
    pub pass: PlannedPass,
    /// Weight sets no later action of this stage reads; release them after this action.
    pub release_after: Vec<WeightKey>,
    /// Number of distinct weight sets the stage holds after this action (live included).
    pub held_after: u32,
}

impl PlannedAction {
    /// The micro-batches of a backward, with what each reads; empty for other actions.
    pub fn backwards(&self) -> &[PlannedBackward] {
        match &self.pass {
            PlannedPass::Backward(backwards) => backwards,
            PlannedPass::Forward { .. } | PlannedPass::Update { .. } => &[],
        }
    }
}

/// The version plan of one stage.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StagePlan {
    /// The stage's actions in execution order.
    pub actions: Vec<PlannedAction>,
}

impl StagePlan {
    /// The most weight sets the stage holds at once.
    pub fn peak_weight_sets(&self) -> u32 {
        self.actions
            .iter()
            .map(|a| a.held_after)
            .max()
            .unwrap_or(1)
            .max(1)
    }

    /// Every backward micro-batch of this stage, in execution order.
    pub fn backwards(&self) -> impl Iterator<Item = &PlannedBackward> {
        self.actions.iter().flat_map(PlannedAction::backwards)
    }

    /// Histogram of the staleness d over the backwards of mini-batches in `minibatches`.
    pub fn staleness_histogram(&self, minibatches: std::ops::Range<u32>) -> BTreeMap<u64, u32> {
        let mut histogram = BTreeMap::new();
        for backward in self.backwards() {
            if minibatches.contains(&backward.microbatch.minibatch) {
                *histogram.entry(backward.staleness).or_insert(0) += 1;
            }
        }
        histogram
    }
}

/// The version plan of a whole schedule under one policy.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct VersionPlan {
    /// The policy that made it.
    pub policy: WeightPolicy,
    /// One plan per stage.
    pub stages: Vec<StagePlan>,
}

impl VersionPlan {
    /// Peak number of stored weight sets per stage.
    pub fn peak_weight_sets(&self) -> Vec<u32> {
        self.stages
            .iter()
            .map(StagePlan::peak_weight_sets)
            .collect()
    }
}

/// The micro-batches a backward covers.
fn covered_microbatches(kind: ActionKind, num_microbatches: u32) -> Vec<MicrobatchId> {
    match kind {
        ActionKind::BackwardMinibatch(i) => (0..num_microbatches)
            .map(|j| MicrobatchId::new(i, j))
            .collect(),
        ActionKind::BackwardMicrobatch(mb) => vec![mb],
        ActionKind::Forward(_) | ActionKind::Update(_) => Vec::new(),
    }
}

/// What a stage keeps of a forward for its backward. It decides how long the forward's weights
/// stay stored, so the version plan depends on it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Activations {
    /// The forward keeps what its backward differentiates from: the forward's weights are
    /// needed later only if the backward reads them.
    #[default]
    Kept,
    /// The forward keeps only the stage input and the backward first re-runs the forward with
    /// the forward's weights (`--recompute-activations`), so those weights stay stored until
    /// the backward, whatever the backward reads.
    Recomputed,
}

impl Activations {
    /// `Recomputed` when `recompute` (`--recompute-activations`), else `Kept`.
    pub fn recomputed_if(recompute: bool) -> Self {
        if recompute {
            Activations::Recomputed
        } else {
            Activations::Kept
        }
    }
}

/// Traces `policy` over `schedule` (which must be valid), for a stage that keeps or recomputes
/// its activations.
///
/// # Panics
/// If a backward or a non-first-stage forward has no matching earlier forward, i.e. the
/// schedule was not validated.
pub fn plan(schedule: &Schedule, policy: &WeightPolicy, activations: Activations) -> VersionPlan {
    let num_stages = schedule.config.num_stages;
    let num_microbatches = schedule.config.num_microbatches;

    // Vertical-sync tags: the live version of stage 0 when each micro-batch entered.
    let mut tags: BTreeMap<MicrobatchId, Version> = BTreeMap::new();
    let mut live = 0;
    for action in schedule.actions(0) {
        match action.kind {
            ActionKind::Forward(mb) => {
                tags.insert(mb, live);
            }
            ActionKind::Update(_) => live += 1,
            _ => {}
        }
    }

    // The slots both slot-read facts come from (for streamed nF1B, its nF1B schedule, generated
    // once here).
    let version_slots = schedule.version_slots();
    let mut facts = CrossStage {
        tags,
        committed: committed_versions(&version_slots),
        // Only I-TiMePReSt's `version-difference` staleness reads it.
        version_difference: if policy.staleness == StalenessMeasure::VersionDifference {
            version_difference(&version_slots).steady_v
        } else {
            0
        },
        stage_steady_gaps: Vec::new(),
    };
    if policy.staleness == StalenessMeasure::StageSteady {
        // Gaps depend on the forwards' versions only, so a first walk with per-micro-batch
        // gaps finds them before any backward is decided.
        let by_gap = WeightPolicy {
            staleness: StalenessMeasure::Gap,
            ..*policy
        };
        let steady = steady_window(schedule.config.num_minibatches);
        facts.stage_steady_gaps = (0..num_stages)
            .map(|stage| {
                let actions = decide_recipes(schedule, &by_gap, stage, num_microbatches, &facts);
                let histogram = StagePlan { actions }.staleness_histogram(steady.clone());
                histogram.keys().next_back().copied().unwrap_or(0)
            })
            .collect();
    }
    let stages = (0..num_stages)
        .map(|stage| {
            let mut actions = decide_recipes(schedule, policy, stage, num_microbatches, &facts);
            plan_retention(&mut actions, activations);
            StagePlan { actions }
        })
        .collect();
    VersionPlan {
        policy: *policy,
        stages,
    }
}

/// Per mini-batch, its committed version: the fewest updates any stage had finished (on the
/// slots of `schedule`, which must be a schedule's [`Schedule::version_slots`]) when the
/// mini-batch's first backward at the last stage began.
fn committed_versions(schedule: &Schedule) -> Vec<Version> {
    // Per stage, the slot at which each of its updates is applied (the end of the backward it
    // follows), in order.
    let applied: Vec<Vec<u32>> = schedule
        .stages
        .iter()
        .map(|row| {
            let mut ends = Vec::new();
            let mut backward_end = 0;
            for scheduled in row {
                let kind = scheduled.action.kind;
                if kind.is_backward() {
                    backward_end = scheduled.slot + schedule.config.duration(kind);
                } else if kind.is_update() {
                    ends.push(backward_end);
                }
            }
            ends
        })
        .collect();
    last_stage_backward_starts(schedule)
        .into_iter()
        .map(|start| {
            (applied.iter())
                .map(|ends| ends.partition_point(|&end| end <= start) as Version)
                .min()
                .unwrap_or(0)
        })
        .collect()
}

/// The facts about a schedule that involve several stages, worked out before each stage's walk.
struct CrossStage {
    /// Each micro-batch's vertical-sync tag.
    tags: BTreeMap<MicrobatchId, Version>,
    /// Each mini-batch's committed version, by mini-batch ([`committed_versions`]).
    committed: Vec<Version>,
    /// The steady-state version difference v (0 when no policy option reads it).
    version_difference: u32,
    /// Per stage, the largest gap of its steady-state backwards (empty when no policy option
    /// reads it).
    stage_steady_gaps: Vec<u64>,
}

/// First pass over one stage: the recipe of every pass.
fn decide_recipes(
    schedule: &Schedule,
    policy: &WeightPolicy,
    stage: u32,
    num_microbatches: u32,
    facts: &CrossStage,
) -> Vec<PlannedAction> {
    let num_stages = schedule.config.num_stages;
    let mut live: Version = 0;
    // Per micro-batch in flight: what its forward read, and the index of that forward.
    let mut forwards: BTreeMap<MicrobatchId, (WeightRecipe, usize)> = BTreeMap::new();
    // Per mini-batch not yet updated: what its backwards read, micro-batch by micro-batch.
    let mut backward_reads: BTreeMap<u32, Vec<WeightRecipe>> = BTreeMap::new();
    // Per mini-batch not yet updated: the largest and the mean gap of its micro-batches whose
    // forwards ran here before its first backward (all N in nF1B, streamed or not), so a
    // mini-batch's backwards see the same figures whether it has one backward or N.
    let mut minibatch_gaps: BTreeMap<u32, (u64, f64)> = BTreeMap::new();
    let mut planned: Vec<PlannedAction> = Vec::with_capacity(schedule.stages[stage as usize].len());
    for scheduled in &schedule.stages[stage as usize] {
        let action = scheduled.action;
        let pass = match action.kind {
            ActionKind::Forward(mb) => {
                let tag = *facts
                    .tags
                    .get(&mb)
                    .unwrap_or_else(|| panic!("{action}: micro-batch never entered stage 0"));
                let recipe = policy.forward(&ForwardContext {
                    stage,
                    num_stages,
                    live,
                    tag,
                    minibatch: mb.minibatch,
                });
                forwards.insert(mb, (recipe, planned.len()));
                PlannedPass::Forward {
                    recipe,
                    tag,
                    backward_reads_forward_weights: false,
                }
            }
            ActionKind::BackwardMinibatch(_) | ActionKind::BackwardMicrobatch(_) => {
                let minibatch = action.kind.minibatch();
                let (minibatch_max_gap, minibatch_mean_gap) =
                    *minibatch_gaps.entry(minibatch).or_insert_with(|| {
                        let first = MicrobatchId::new(minibatch, 0);
                        let last = MicrobatchId::new(minibatch, u32::MAX);
                        let gaps: Vec<u64> = (forwards.range(first..=last))
                            .map(|(_, (recipe, _))| live.saturating_sub(recipe.anchor()))
                            .collect();
                        let max = gaps.iter().copied().max().unwrap_or(0);
                        (
                            max,
                            gaps.iter().sum::<u64>() as f64 / gaps.len().max(1) as f64,
                        )
                    });
                let covered: Vec<(MicrobatchId, WeightRecipe, usize)> =
                    covered_microbatches(action.kind, num_microbatches)
                        .into_iter()
                        .map(|mb| {
                            let (recipe, index) = forwards.remove(&mb).unwrap_or_else(|| {
                                panic!("{action}: no forward of {mb:?} before it")
                            });
                            (mb, recipe, index)
                        })
                        .collect();
                let mut backwards = Vec::new();
                for (mb, forward_recipe, forward_index) in covered {
                    let ctx = BackwardContext {
                        stage,
                        num_stages,
                        live,
                        forward: forward_recipe,
                        minibatch_max_gap,
                        minibatch_mean_gap,
                        version_difference: facts.version_difference,
                        stage_steady_gap: facts
                            .stage_steady_gaps
                            .get(stage as usize)
                            .copied()
                            .unwrap_or(0),
                        committed: facts.committed[mb.minibatch as usize],
                    };
                    let recipe = policy.backward(&ctx);
                    backward_reads.entry(mb.minibatch).or_default().push(recipe);
                    if let PlannedPass::Forward {
                        backward_reads_forward_weights,
                        ..
                    } = &mut planned[forward_index].pass
                    {
                        *backward_reads_forward_weights = recipe == forward_recipe;
                    }
                    backwards.push(PlannedBackward {
                        microbatch: mb,
                        recipe,
                        forward_recipe,
                        staleness: ctx.staleness(),
                    });
                }
                PlannedPass::Backward(backwards)
            }
            ActionKind::Update(minibatch) => {
                minibatch_gaps.remove(&minibatch);
                PlannedPass::Update {
                    base: policy
                        .update_base(&backward_reads.remove(&minibatch).unwrap_or_default(), live),
                }
            }
        };
        planned.push(PlannedAction {
            action,
            slot: scheduled.slot,
            live,
            pass,
            release_after: Vec::new(),
            held_after: 0,
        });
        if action.kind.is_update() {
            live += 1;
        }
    }
    planned
}

/// The weight sets an action reads (a backward that recomputes its activations reads its
/// forward's weights too).
fn reads(action: &PlannedAction, activations: Activations) -> Vec<WeightKey> {
    match &action.pass {
        PlannedPass::Forward { recipe, .. } => recipe.needs(),
        PlannedPass::Backward(backwards) => backwards
            .iter()
            .flat_map(|b| {
                let rerun = (activations == Activations::Recomputed).then_some(&b.forward_recipe);
                b.recipe
                    .needs()
                    .into_iter()
                    .chain(rerun.into_iter().flat_map(WeightRecipe::needs))
            })
            .collect(),
        PlannedPass::Update { base } => base.iter().flat_map(WeightRecipe::needs).collect(),
    }
}

/// Second pass over one stage: when each weight set can be released, and how many are held.
///
/// A version is created by the update that produces it (version 0 exists from the start), a
/// prediction by the first pass that reads it. A weight set is held from its creation until its
/// last read, and a version at least as long as it is the live one.
fn plan_retention(actions: &mut [PlannedAction], activations: Activations) {
    let mut last_read: BTreeMap<WeightKey, usize> = BTreeMap::new();
    for (index, action) in actions.iter().enumerate() {
        for key in reads(action, activations) {
            last_read.insert(key, index);
        }
    }
    let mut held: BTreeSet<WeightKey> = BTreeSet::from([WeightKey::Version(0)]);
    for (index, action) in actions.iter_mut().enumerate() {
        held.extend(reads(action, activations));
        let mut live = action.live;
        if action.action.kind.is_update() {
            live += 1;
            held.insert(WeightKey::Version(live));
        }
        let releasable: Vec<WeightKey> = held
            .iter()
            .copied()
            .filter(|key| {
                *key != WeightKey::Version(live)
                    && last_read.get(key).is_none_or(|&last| last <= index)
            })
            .collect();
        for key in &releasable {
            held.remove(key);
        }
        action.release_after = releasable;
        action.held_after = held.len() as u32;
    }
}
