//! A timeline: every action of a schedule with a start and an end time.
//!
//! Two producers fill the same type: [`Timeline::from_schedule`] turns the slot placement into
//! times (a forward or backward occupies `[slot, slot + duration)`, an update is instantaneous
//! at the end of its backward), and [`crate::simulate_costs`] produces real-valued times from a
//! cost model. The renderers (SVG, Chrome trace) and the utilisation figures read only this type,
//! so a predicted timeline renders exactly like an idealised one.

use serde::{Deserialize, Serialize};

use crate::action::Action;
use crate::schedule::{Schedule, ScheduleConfig, ScheduleKind};

/// What one unit of a timeline's time axis means.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TimeUnit {
    /// Slots of the generated schedule (every forward takes one, a backward one or its costed
    /// [`ScheduleConfig::duration`]).
    Slots,
    /// Seconds, as predicted by a cost model.
    Seconds,
}

impl TimeUnit {
    /// Microseconds per unit, for trace formats. A slot is shown as one millisecond.
    pub fn microseconds(self) -> f64 {
        match self {
            TimeUnit::Slots => 1_000.0,
            TimeUnit::Seconds => 1_000_000.0,
        }
    }

    /// A short name for axis labels.
    pub fn label(self) -> &'static str {
        match self {
            TimeUnit::Slots => "slot",
            TimeUnit::Seconds => "s",
        }
    }
}

/// One action with its start and end time.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct TimedAction {
    /// The action.
    pub action: Action,
    /// When it starts.
    pub start: f64,
    /// When it ends (`end >= start`; equal for an update in a slot timeline).
    pub end: f64,
}

impl TimedAction {
    /// `end − start`.
    pub fn duration(&self) -> f64 {
        self.end - self.start
    }
}

/// Every action of a schedule with its time span, per stage in execution order.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Timeline {
    /// The family of the schedule.
    pub kind: ScheduleKind,
    /// The configuration of the schedule.
    pub config: ScheduleConfig,
    /// What the times are measured in.
    pub unit: TimeUnit,
    /// `stages[s]`: stage s's actions in execution order.
    pub stages: Vec<Vec<TimedAction>>,
}

impl Timeline {
    /// The slot timeline of `schedule`: a forward or backward starting in slot t spans
    /// `[t, t + d)` with d its [`ScheduleConfig::duration`] (1 on the unit grid), an update is
    /// a zero-length event at the end of the backward before it.
    pub fn from_schedule(schedule: &Schedule) -> Self {
        let stages = schedule
            .stages
            .iter()
            .map(|row| {
                let mut last_end = 0.0;
                row.iter()
                    .map(|scheduled| {
                        let kind = scheduled.action.kind;
                        let (start, end) = if kind.is_update() {
                            (last_end, last_end)
                        } else {
                            let start = f64::from(scheduled.slot);
                            (start, start + f64::from(schedule.config.duration(kind)))
                        };
                        last_end = end;
                        TimedAction {
                            action: scheduled.action,
                            start,
                            end,
                        }
                    })
                    .collect()
            })
            .collect();
        Self {
            kind: schedule.kind,
            config: schedule.config,
            unit: TimeUnit::Slots,
            stages,
        }
    }

    /// Number of stages W.
    pub fn num_stages(&self) -> u32 {
        self.stages.len() as u32
    }

    /// The time at which the last action ends (0 for an empty timeline).
    pub fn makespan(&self) -> f64 {
        self.stages
            .iter()
            .flatten()
            .map(|timed| timed.end)
            .fold(0.0, f64::max)
    }

    /// Total time stage `stage` spends running actions.
    pub fn busy_time(&self, stage: u32) -> f64 {
        self.stages[stage as usize]
            .iter()
            .map(TimedAction::duration)
            .sum()
    }

    /// Per stage, the fraction of the makespan it is busy.
    pub fn utilisation(&self) -> Vec<f64> {
        let makespan = self.makespan();
        (0..self.num_stages())
            .map(|s| {
                if makespan > 0.0 {
                    self.busy_time(s) / makespan
                } else {
                    0.0
                }
            })
            .collect()
    }

    /// The bubble fraction `1 − busy / (W · makespan)`: the share of stage time spent idle.
    pub fn bubble_fraction(&self) -> f64 {
        let makespan = self.makespan();
        if makespan <= 0.0 || self.stages.is_empty() {
            return 0.0;
        }
        let busy: f64 = (0..self.num_stages()).map(|s| self.busy_time(s)).sum();
        1.0 - busy / (f64::from(self.num_stages()) * makespan)
    }
}
