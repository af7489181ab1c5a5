//! Pipeline schedules as data.
//!
//! This crate never touches tensors or threads. A schedule is the per-stage sequence of
//! [`Action`]s (forward, backward, update); generators are pure functions of the pipeline shape
//! (W stages, N micro-batches, M mini-batches) and options; validation and simulation are pure
//! functions over the result. Everything above this crate (policies, the runtime, the CLI)
//! consumes these types, so they are kept small, serialisable and printable.
//!
//! - [`generate()`]: naive, GPipe, async 1F1B (PipeDream), 1F1B-flush, nF1B (TiMePReSt), all on one
//!   unit-slot engine that places each action after its dependencies (rules in one place).
//! - [`validate()`]: counts and dependencies, with the failing cell marked in a printed grid.
//! - [`simulate_costs`]: a [`CostModel`] replay giving a [`Timeline`] (makespan, bubble,
//!   utilisation); [`MemoryModel`] and [`max_microbatches_in_flight`] for memory.
//! - [`render`]: the papers' text grid, an SVG timeline, a Chrome trace, JSON.
#![warn(missing_docs)]

pub mod action;
mod cost;
mod deps;
mod error;
mod generate;
mod index;
mod memory;
pub mod render;
pub mod schedule;
mod timeline;
mod validate;

pub use action::{Action, ActionKind, MicrobatchId, ParseActionError};
pub use cost::{ConstantCost, CostModel, RecomputedActivations, simulate_costs};
pub use error::ScheduleError;
pub use generate::{MAX_ACTIONS, generate};
pub use memory::{MemoryModel, StageMemory, max_microbatches_in_flight};
pub use schedule::{
    InflightCap, MAX_BACKWARD_SLOTS, Schedule, ScheduleConfig, ScheduleKind, ScheduledAction,
    UnknownScheduleError,
};
pub use timeline::{TimeUnit, TimedAction, Timeline};
pub use validate::{ValidationError, ValidationRule, validate};
