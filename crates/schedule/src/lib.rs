//! Pipeline schedules as data.
//!
//! This crate never touches tensors or threads. A schedule is the per-stage sequence of
//! [`Action`]s (forward, backward, update); generators are pure functions of the pipeline shape
//! (W stages, N micro-batches, M mini-batches) and options; validation and simulation are pure
//! functions over the result. Everything above this crate (policies, the runtime, the CLI)
//! consumes these types, so they are kept small, serialisable and printable.
#![warn(missing_docs)]

pub mod action;
pub mod schedule;

pub use action::{Action, ActionKind, MicrobatchId, ParseActionError};
pub use schedule::{InflightCap, Schedule, ScheduleConfig, ScheduleKind, ScheduledAction, UnknownScheduleError};
