//! Executes validated schedules on real workers.
//!
//! The runtime is the only place with threads. It takes a schedule, the version plan a policy
//! made for it, and one [`StageCompute`] per stage, and runs them: every worker replays its
//! stage's actions, moves activations and gradients through channels and logs an [`Event`] per
//! action. It never touches tensors; the stage computes do.
#![warn(missing_docs)]

pub mod compute;
pub mod event;
pub mod threaded;

pub use compute::{BackwardWork, ComputeError, ForwardOutput, LossStats, StageCompute};
pub use event::Event;
pub use threaded::{RunOptions, RunReport, RuntimeError, run_threaded};
