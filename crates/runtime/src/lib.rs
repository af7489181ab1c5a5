//! Executes validated schedules on real workers.
//!
//! The runtime is the only place with threads. It takes a schedule, the version plan a policy
//! made for it, and one [`StageCompute`] per stage, and runs them: every worker replays its
//! stage's actions ([`run_stage`]), moves activations and gradients through a [`Transport`] and
//! logs an [`Event`] per action. It never touches tensors; the stage computes do.
//!
//! [`run_threaded`] connects the workers of one process with channels; other transports (the
//! MPI crate's, one process per stage) reuse [`run_stage`] unchanged.
#![warn(missing_docs)]

pub mod compute;
pub mod error;
pub mod event;
pub mod threaded;
pub mod transport;
pub mod worker;

pub use compute::{BackwardWork, ComputeError, Feed, ForwardOutput, LossStats, StageCompute};
pub use error::{INTERRUPTED, RuntimeError, StageFailure};
pub use event::Event;
pub use threaded::{RunOptions, RunReport, run_threaded};
pub use transport::{ABORT_POLL, ChannelTransport, Envelope, Neighbour, Transport, TransportError};
pub use worker::{StageContext, StageOutput, check_plan, run_stage, stage_pool};
