//! Cost-model simulation: predicted times for a schedule's actions.
//!
//! The unit-slot placement reproduces the papers' figures but treats a forward, a backward over
//! N micro-batches and a transfer alike. [`simulate_costs`] replays the schedule with real
//! durations: each stage executes its sequence *in order* (the order is what the runtime
//! follows), and an action starts at the later of "its stage is free" and "each dependency has
//! finished, plus one message transfer when the dependency sends data across stages". The result
//! is a [`Timeline`] in seconds, from which makespan, bubble fraction and per-stage utilisation
//! are read. Durations come from a [`CostModel`], a small trait so that profiled per-stage times
//! can replace [`ConstantCost`].

use crate::action::{Action, ActionKind};
use crate::deps::dependencies;
use crate::index::ActionIndex;
use crate::schedule::Schedule;
use crate::timeline::{TimeUnit, TimedAction, Timeline};
use crate::validate::{ValidationError, validate};

/// Per-stage durations, in seconds. All must be finite and non-negative.
pub trait CostModel {
    /// Forward of one micro-batch at `stage`.
    fn forward(&self, stage: u32) -> f64;
    /// Backward of a whole mini-batch of `num_microbatches` micro-batches at `stage` (nF1B,
    /// 1F1B, naive).
    fn backward_minibatch(&self, stage: u32, num_microbatches: u32) -> f64;
    /// Backward of one micro-batch at `stage` (GPipe, 1F1B-flush).
    fn backward_microbatch(&self, stage: u32) -> f64;
    /// Optimizer update at `stage`.
    fn update(&self, stage: u32) -> f64;
    /// Sending one message (activations or gradients) from `from_stage` to `to_stage`.
    fn transfer(&self, from_stage: u32, to_stage: u32) -> f64;

    /// The duration of `action` in a schedule with `num_microbatches` micro-batches per
    /// mini-batch.
    fn duration(&self, action: Action, num_microbatches: u32) -> f64 {
        match action.kind {
            ActionKind::Forward(_) => self.forward(action.stage),
            ActionKind::BackwardMinibatch(_) => {
                self.backward_minibatch(action.stage, num_microbatches)
            }
            ActionKind::BackwardMicrobatch(_) => self.backward_microbatch(action.stage),
            ActionKind::Update(_) => self.update(action.stage),
        }
    }
}

impl<C: CostModel + ?Sized> CostModel for Box<C> {
    fn forward(&self, stage: u32) -> f64 {
        (**self).forward(stage)
    }
    fn backward_minibatch(&self, stage: u32, num_microbatches: u32) -> f64 {
        (**self).backward_minibatch(stage, num_microbatches)
    }
    fn backward_microbatch(&self, stage: u32) -> f64 {
        (**self).backward_microbatch(stage)
    }
    fn update(&self, stage: u32) -> f64 {
        (**self).update(stage)
    }
    fn transfer(&self, from_stage: u32, to_stage: u32) -> f64 {
        (**self).transfer(from_stage, to_stage)
    }
}

/// The same durations at every stage.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ConstantCost {
    /// Forward of one micro-batch.
    pub forward: f64,
    /// Backward of one micro-batch; a whole-mini-batch backward over N micro-batches takes N
    /// times this (it does the same arithmetic in one call).
    pub backward: f64,
    /// Optimizer update.
    pub update: f64,
    /// One message between neighbouring stages.
    pub transfer: f64,
}

impl ConstantCost {
    /// Forward and backward of a micro-batch take 1, updates and transfers take nothing.
    pub fn unit() -> Self {
        Self {
            forward: 1.0,
            backward: 1.0,
            update: 0.0,
            transfer: 0.0,
        }
    }
}

impl CostModel for ConstantCost {
    fn forward(&self, _stage: u32) -> f64 {
        self.forward
    }
    fn backward_minibatch(&self, _stage: u32, num_microbatches: u32) -> f64 {
        self.backward * f64::from(num_microbatches)
    }
    fn backward_microbatch(&self, _stage: u32) -> f64 {
        self.backward
    }
    fn update(&self, _stage: u32) -> f64 {
        self.update
    }
    fn transfer(&self, _from_stage: u32, _to_stage: u32) -> f64 {
        self.transfer
    }
}

/// `C` on a stage that recomputes its activations (`--recompute-activations`): every backward
/// first re-runs the forward of each micro-batch it covers, so it costs one forward more per
/// micro-batch.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RecomputedActivations<C>(pub C);

impl<C: CostModel> CostModel for RecomputedActivations<C> {
    fn forward(&self, stage: u32) -> f64 {
        self.0.forward(stage)
    }
    fn backward_minibatch(&self, stage: u32, num_microbatches: u32) -> f64 {
        self.0.backward_minibatch(stage, num_microbatches)
            + f64::from(num_microbatches) * self.0.forward(stage)
    }
    fn backward_microbatch(&self, stage: u32) -> f64 {
        self.0.backward_microbatch(stage) + self.0.forward(stage)
    }
    fn update(&self, stage: u32) -> f64 {
        self.0.update(stage)
    }
    fn transfer(&self, from_stage: u32, to_stage: u32) -> f64 {
        self.0.transfer(from_stage, to_stage)
    }
}

/// Predicts the timeline of `schedule` under `cost` (see the module documentation).
///
/// The schedule is validated first; its unit slots then give an order in which every action's
/// dependencies are simulated before it, so the replay is one linear pass.
///
/// # Errors
/// The [`ValidationError`] of an invalid schedule.
pub fn simulate_costs(
    schedule: &Schedule,
    cost: &dyn CostModel,
) -> Result<Timeline, ValidationError> {
    validate(schedule)?;
    let (kind, config) = (schedule.kind, &schedule.config);
    let index = ActionIndex::new(kind, config);
    let mut end_of = index.table(f64::NAN);
    let mut stages: Vec<Vec<TimedAction>> = schedule
        .stages
        .iter()
        .map(|row| Vec::with_capacity(row.len()))
        .collect();
    let mut cursor = vec![0usize; schedule.stages.len()];
    let mut stage_free = vec![0.0f64; schedule.stages.len()];
    // Counting sort of all actions by slot; within a slot, row-major order keeps each update
    // after its backward. Dependencies are in earlier slots, so this order is topological.
    for (s, slot) in by_slot(schedule) {
        let action = schedule.stages[s][cursor[s]].action;
        cursor[s] += 1;
        let mut start = stage_free[s];
        for dep in dependencies(kind, config, action) {
            let transfer = if dep.carries_data && dep.action.stage != action.stage {
                cost.transfer(dep.action.stage, action.stage)
            } else {
                0.0
            };
            start = start.max(end_of[index.index(dep.action).expect("validated")] + transfer);
        }
        let end = start + cost.duration(action, config.num_microbatches);
        debug_assert!(
            end >= start,
            "cost model gave a negative duration for {action} (slot {slot})"
        );
        end_of[index.index(action).expect("validated")] = end;
        stage_free[s] = end;
        stages[s].push(TimedAction { action, start, end });
    }
    Ok(Timeline {
        kind,
        config: *config,
        unit: TimeUnit::Seconds,
        stages,
    })
}

/// Every action's row and slot, sorted by slot (stable, so rows keep sequence order).
fn by_slot(schedule: &Schedule) -> Vec<(usize, u32)> {
    let num_slots = schedule.num_slots() as usize;
    let mut starts = vec![0usize; num_slots + 1];
    for scheduled in schedule.stages.iter().flatten() {
        starts[scheduled.slot as usize + 1] += 1;
    }
    for t in 0..num_slots {
        starts[t + 1] += starts[t];
    }
    let mut order = vec![(0usize, 0u32); starts[num_slots]];
    for (s, row) in schedule.stages.iter().enumerate() {
        for scheduled in row {
            let position = &mut starts[scheduled.slot as usize];
            order[*position] = (s, scheduled.slot);
            *position += 1;
        }
    }
    order
}
