//! Weight policies and version tracing.
//!
//! In pipeline training several mini-batches are in flight, so each stage's forward and
//! backward may read different versions of that stage's weights. This crate decides which
//! (the [`WeightPolicy`], answering with a [`WeightRecipe`]) and, given a schedule, traces
//! what every pass reads, how stale it is and which versions each stage must keep
//! ([`trace`]). It never touches tensors: the runtime executes the plan this crate produces,
//! and the simulator reports it, so both agree by construction.
#![warn(missing_docs)]

pub mod policy;
pub mod recipe;

pub use policy::{
    BackwardContext, BackwardSource, ForwardContext, ForwardSource, Horizon, LatestSource,
    PolicyKind, PolicyOptions, Significance, StalenessMeasure, UnknownPolicyError, UpdateBase,
    WeightPolicy,
};
pub use recipe::{Prediction, Version, WeightKey, WeightRecipe};
pub mod trace;

pub use trace::{
    Activations, PlannedAction, PlannedBackward, PlannedPass, StagePlan, VersionPlan, plan,
};
pub mod analysis;

pub use analysis::{
    VersionDifference, VersionSummary, steady_window, v_formula, version_difference,
};
