//! Validation: is a schedule complete and does it respect every dependency?
//!
//! The runtime executes only validated schedules, and schedules can come from files, so this is
//! the one gate. [`validate()`] checks, in this order (the first failure is reported):
//! 1. the shape: W, N and the number of mini-batches are positive and there is one row per stage;
//! 2. each row, in sequence order: the action's stage field equals its row, the action exists for
//!    this kind and shape, it appears once, forwards and backwards occupy increasing slots
//!    without overlap (each starts once the one before it has run for its
//!    [`ScheduleConfig::duration`](crate::ScheduleConfig::duration)), and each update
//!    immediately follows a backward of its mini-batch in the same slot;
//! 3. completeness: every stage has every expected action (counts follow from kind and config);
//! 4. dependencies (the rules of [`crate::deps`]): each dependency finished by the slot the
//!    action starts in,
//!    and each update comes after all backwards of its mini-batch at its stage. Of all violations
//!    the one in the earliest slot is reported, since later ones are often its consequences.
//!
//! A [`ValidationError`] prints the grid around the failure with the failing cell bracketed and
//! `<-- ERROR HERE: <reason>` after its row, the format of `torch.distributed.pipelining`'s
//! `_format_pipeline_order`, so a broken hand-written schedule can be fixed by reading one message.

use std::fmt;

use crate::action::{Action, ActionKind};
use crate::deps::dependencies;
use crate::index::ActionIndex;
use crate::render::{Mark, grid_window};
use crate::schedule::{MAX_BACKWARD_SLOTS, Schedule};

/// Slots of context shown on each side of the failing slot.
const CONTEXT_SLOTS: u32 = 12;

/// Which rule a schedule broke.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ValidationRule {
    /// W, N or the number of mini-batches is zero, or the number of rows is not W.
    Shape,
    /// An action's `stage` field differs from the row it is in.
    StageField,
    /// An action that a schedule of this kind and shape cannot contain.
    UnknownAction,
    /// An action that appears more than once.
    DuplicateAction,
    /// An expected action that never appears.
    MissingAction,
    /// A forward or backward that starts while the one before it at its stage still runs.
    SlotConflict,
    /// A stage's sequence goes back in time.
    SlotOrder,
    /// An update that does not immediately follow a backward of its mini-batch in the same slot,
    /// or that comes before another backward of its mini-batch.
    UpdatePlacement,
    /// An action that starts before one of its dependencies finished.
    Dependency,
}

impl ValidationRule {
    /// A short description of the rule.
    pub fn description(self) -> &'static str {
        match self {
            ValidationRule::Shape => "one row per stage, positive sizes",
            ValidationRule::StageField => "stage field equals its row",
            ValidationRule::UnknownAction => "only actions of this kind and shape",
            ValidationRule::DuplicateAction => "each action once",
            ValidationRule::MissingAction => "every expected action present",
            ValidationRule::SlotConflict => "one forward/backward at a time per stage",
            ValidationRule::SlotOrder => "sequence order consistent with slots",
            ValidationRule::UpdatePlacement => {
                "an update follows the last backward of its mini-batch in that slot"
            }
            ValidationRule::Dependency => "dependencies finish in an earlier slot",
        }
    }
}

impl fmt::Display for ValidationRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.description())
    }
}

/// Why a schedule is invalid, with the grid around the failure.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ValidationError {
    /// The rule broken.
    pub rule: ValidationRule,
    /// The row (stage, 0-based) where it was found.
    pub stage: u32,
    /// The slot, when the failure is at a cell.
    pub slot: Option<u32>,
    /// The offending action, when there is one.
    pub action: Option<Action>,
    /// What is wrong, in words.
    pub reason: String,
    /// The rendered grid window with the failing cell marked.
    pub grid: String,
}

impl fmt::Display for ValidationError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "invalid schedule at stage {} (row S{})",
            self.stage,
            self.stage + 1
        )?;
        if let Some(slot) = self.slot {
            write!(f, ", slot {slot}")?;
        }
        writeln!(f, ": {} [rule: {}]", self.reason, self.rule)?;
        f.write_str(&self.grid)
    }
}

impl std::error::Error for ValidationError {}

/// Checks `schedule` against its kind and config; see the module documentation for the rules.
///
/// # Errors
/// The first rule violation found, as a [`ValidationError`] whose `Display` shows the grid.
pub fn validate(schedule: &Schedule) -> Result<(), ValidationError> {
    let config = &schedule.config;
    let fail = |rule, stage: usize, slot, action, reason: String| {
        Err(failure(schedule, rule, stage, slot, action, reason))
    };
    if config.num_stages == 0 || config.num_microbatches == 0 || config.num_minibatches == 0 {
        let reason = format!(
            "W={}, N={}, mini-batches={}: all must be at least 1",
            config.num_stages, config.num_microbatches, config.num_minibatches
        );
        return fail(ValidationRule::Shape, 0, None, None, reason);
    }
    if let Some(k) = config.backward_slots
        && !(1..=MAX_BACKWARD_SLOTS).contains(&k)
    {
        let reason = format!("backward_slots {k}: must be 1 to {MAX_BACKWARD_SLOTS}");
        return fail(ValidationRule::Shape, 0, None, None, reason);
    }
    if schedule.stages.len() != config.num_stages as usize {
        let reason = format!(
            "{} stage rows but W = {}",
            schedule.stages.len(),
            config.num_stages
        );
        return fail(ValidationRule::Shape, 0, None, None, reason);
    }
    let index = ActionIndex::new(schedule.kind, config);
    let present: usize = schedule.stages.iter().map(Vec::len).sum();
    if index.total_u64() > 2 * present as u64 + 1024 {
        // Far more actions expected than present: report without allocating a table the size
        // of a config that may be absurd.
        let (row, have) = schedule
            .stages
            .iter()
            .map(Vec::len)
            .enumerate()
            .min_by_key(|r| r.1)
            .unwrap();
        let reason = format!(
            "{have} actions, expected {} per stage",
            index.per_stage_u64()
        );
        return fail(ValidationRule::MissingAction, row, None, None, reason);
    }
    let mut slots = index.table(u32::MAX);
    check_rows(schedule, &index, &mut slots)?;
    check_complete(schedule, &index, &slots)?;
    check_dependencies(schedule, &index, &slots)
}

/// Pass 2 of the module documentation: per-row structure.
fn check_rows(
    schedule: &Schedule,
    index: &ActionIndex,
    slots: &mut [u32],
) -> Result<(), ValidationError> {
    let fail = |rule, stage, slot, action, reason: String| {
        Err(failure(
            schedule,
            rule,
            stage,
            Some(slot),
            Some(action),
            reason,
        ))
    };
    for (s, row) in schedule.stages.iter().enumerate() {
        // Start and end slot of the row's last forward or backward.
        let mut last_busy: Option<(u32, u32)> = None;
        for (p, scheduled) in row.iter().enumerate() {
            let (action, slot) = (scheduled.action, scheduled.slot);
            if action.stage as usize != s {
                let reason = format!(
                    "{action} says stage {} but is in row of stage {s}",
                    action.stage
                );
                return fail(ValidationRule::StageField, s, slot, action, reason);
            }
            let Some(k) = index.index(action) else {
                let reason = format!(
                    "{action} is not an action of this {} schedule",
                    schedule.kind
                );
                return fail(ValidationRule::UnknownAction, s, slot, action, reason);
            };
            if slots[k] != u32::MAX {
                let reason = format!("{action} appears again (first in slot {})", slots[k]);
                return fail(ValidationRule::DuplicateAction, s, slot, action, reason);
            }
            slots[k] = slot;
            if let ActionKind::Update(i) = action.kind {
                let previous = p.checked_sub(1).map(|q| row[q]);
                let follows_backward = previous.is_some_and(|prev| {
                    prev.slot == slot
                        && prev.action.kind.is_backward()
                        && prev.action.kind.minibatch() == i
                });
                if !follows_backward {
                    let reason = format!(
                        "{action} must immediately follow a backward of mini-batch {i} in the same slot"
                    );
                    return fail(ValidationRule::UpdatePlacement, s, slot, action, reason);
                }
                continue;
            }
            match last_busy {
                Some((start, _)) if start > slot => {
                    let reason =
                        format!("{action} in slot {slot} comes after an action in slot {start}");
                    return fail(ValidationRule::SlotOrder, s, slot, action, reason);
                }
                Some((start, end)) if end > slot => {
                    let reason = format!(
                        "{action} starts in slot {slot}, while the forward/backward started in \
                         slot {start} runs until slot {end}"
                    );
                    return fail(ValidationRule::SlotConflict, s, slot, action, reason);
                }
                _ => {
                    let end = slot.saturating_add(schedule.config.duration(action.kind));
                    last_busy = Some((slot, end));
                }
            }
        }
    }
    Ok(())
}

/// Pass 3: every expected action is present (there are no duplicates or unknowns by now).
fn check_complete(
    schedule: &Schedule,
    index: &ActionIndex,
    slots: &[u32],
) -> Result<(), ValidationError> {
    let per_stage = index.per_stage();
    for (s, row) in schedule.stages.iter().enumerate() {
        if row.len() == per_stage {
            continue;
        }
        let missing = (s * per_stage..(s + 1) * per_stage)
            .find(|&k| slots[k] == u32::MAX)
            .expect("a short row misses an action");
        let action = index.action(missing);
        let reason = format!(
            "{action} is missing ({} of {per_stage} expected actions present)",
            row.len()
        );
        return Err(failure(
            schedule,
            ValidationRule::MissingAction,
            s,
            None,
            Some(action),
            reason,
        ));
    }
    Ok(())
}

/// Pass 4: dependencies; reports the violation in the earliest slot.
fn check_dependencies(
    schedule: &Schedule,
    index: &ActionIndex,
    slots: &[u32],
) -> Result<(), ValidationError> {
    let slot_of = |action: Action| slots[index.index(action).expect("dependencies are expected")];
    let mut earliest: Option<(u32, usize, Action, ValidationRule, String)> = None;
    for (s, row) in schedule.stages.iter().enumerate() {
        for scheduled in row {
            let (action, slot) = (scheduled.action, scheduled.slot);
            if earliest.as_ref().is_some_and(|e| e.0 <= slot) {
                continue;
            }
            let violation = if let ActionKind::Update(i) = action.kind {
                backwards_of(schedule, action.stage, i)
                    .find(|&b| slot_of(b) > slot)
                    .map(|b| {
                        let reason = format!(
                            "{action} in slot {slot} comes before {b} in slot {}",
                            slot_of(b)
                        );
                        (ValidationRule::UpdatePlacement, reason)
                    })
            } else {
                let end_of =
                    |dep: Action| slot_of(dep).saturating_add(schedule.config.duration(dep.kind));
                dependencies(schedule.kind, &schedule.config, action)
                    .find(|dep| end_of(dep.action) > slot)
                    .map(|dep| {
                        let reason = format!(
                            "{action} in slot {slot} needs {} to finish in an earlier slot, but it \
                             runs in slot {}",
                            dep.action,
                            slot_of(dep.action)
                        );
                        (ValidationRule::Dependency, reason)
                    })
            };
            if let Some((rule, reason)) = violation {
                earliest = Some((slot, s, action, rule, reason));
            }
        }
    }
    match earliest {
        None => Ok(()),
        Some((slot, s, action, rule, reason)) => {
            Err(failure(schedule, rule, s, Some(slot), Some(action), reason))
        }
    }
}

/// The backwards of mini-batch `i` at `stage`.
fn backwards_of(schedule: &Schedule, stage: u32, i: u32) -> impl Iterator<Item = Action> {
    let micro = schedule.kind.has_microbatch_backwards();
    let n = if micro {
        schedule.config.num_microbatches
    } else {
        1
    };
    (0..n).map(move |j| {
        if micro {
            Action::backward_microbatch(stage, i, j)
        } else {
            Action::backward(stage, i)
        }
    })
}

/// Builds the error, rendering the grid window around `slot`.
fn failure(
    schedule: &Schedule,
    rule: ValidationRule,
    stage: usize,
    slot: Option<u32>,
    action: Option<Action>,
    reason: String,
) -> ValidationError {
    let num_slots = schedule.num_slots();
    let window = match slot {
        Some(slot) => {
            slot.saturating_sub(CONTEXT_SLOTS)..slot.saturating_add(CONTEXT_SLOTS).min(num_slots)
        }
        None => 0..(2 * CONTEXT_SLOTS).min(num_slots),
    };
    let mut grid = String::new();
    if window.start > 0 || window.end < num_slots {
        grid.push_str(&format!(
            "(slots {}..{} of {num_slots})\n",
            window.start, window.end
        ));
    }
    let mark = Mark {
        row: stage,
        slot,
        reason: &reason,
    };
    grid.push_str(&grid_window(schedule, window, Some(&mark)));
    ValidationError {
        rule,
        stage: stage as u32,
        slot,
        action,
        reason,
        grid,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::generate::generate;
    use crate::schedule::{ScheduleConfig, ScheduleKind};

    fn nf1b() -> Schedule {
        generate(ScheduleKind::Nf1b, &ScheduleConfig::new(3, 2, 4)).unwrap()
    }

    #[test]
    fn generated_schedules_validate() {
        for kind in ScheduleKind::ALL {
            let schedule = generate(kind, &ScheduleConfig::new(4, 3, 5)).unwrap();
            validate(&schedule).unwrap_or_else(|e| panic!("{kind}: {e}"));
        }
    }

    #[test]
    fn a_forward_moved_before_its_input_is_a_dependency_error_at_that_cell() {
        let mut schedule = nf1b();
        // Stage 1's first forward (1A) moved one slot earlier: slot 0, with stage 0's 1A.
        schedule.stages[1][0].slot = 0;
        let err = validate(&schedule).unwrap_err();
        assert_eq!(err.rule, ValidationRule::Dependency);
        assert_eq!((err.stage, err.slot), (1, Some(0)));
        assert!(err.grid.contains("S2:  [1A]"), "{err}");
        assert!(
            err.to_string()
                .contains("<-- ERROR HERE: 1F0.0 in slot 0 needs 0F0.0"),
            "{err}"
        );
    }

    #[test]
    fn an_update_detached_from_its_backward_is_rejected() {
        let mut schedule = nf1b();
        let row = &mut schedule.stages[0];
        let p = row.iter().position(|a| a.action.kind.is_update()).unwrap();
        row[p].slot += 1;
        let err = validate(&schedule).unwrap_err();
        assert_eq!(err.rule, ValidationRule::UpdatePlacement);
    }

    #[test]
    fn a_wrong_number_of_rows_is_a_shape_error() {
        let mut schedule = nf1b();
        schedule.stages.pop();
        assert_eq!(validate(&schedule).unwrap_err().rule, ValidationRule::Shape);
    }

    #[test]
    fn an_absurd_config_is_reported_without_allocating_for_it() {
        let mut schedule = nf1b();
        schedule.config.num_minibatches = u32::MAX;
        assert_eq!(
            validate(&schedule).unwrap_err().rule,
            ValidationRule::MissingAction
        );
    }
}
