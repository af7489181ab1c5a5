//! Neural-network side of timeprest, on burn: models as explicit parameter tensors,
//! partitioning into stages, optimizers with visible state, a per-stage weight-version store,
//! and [`BurnStage`], the runtime's [`StageCompute`](timeprest_runtime::StageCompute) for one
//! pipeline stage.
//!
//! The crate is shaped around the project's first-class question, *which weight version does
//! each pass read*: parameters are plain lists of tensors (not burn `Module`s), so a version is
//! a cheap set of shared handles, and blends (I-TiMePReSt), predictions (NWPT) and optimizer
//! steps are plain tensor maps. Autodiff is used per pass on fresh leaves, which is what lets a
//! backward read different weights than its forward (spec §3.4, [`GradMode`]).
//!
//! All tensors live on burn's Flex CPU backend ([`device`]). Flex parallelises with rayon's
//! *current* pool, so running a stage inside `ThreadPool::install` bounds its threads.
#![warn(missing_docs)]

mod checkpoint;
mod error;
mod model;
mod optim;
mod stage;
mod store;
mod tensor;

pub use checkpoint::{load_safetensors, param_name, save_safetensors};
pub use error::NnError;
pub use model::{
    Block, BlockParams, MlpConfig, ModelParams, ModelSpec, evaluate, init_params, partition_uniform,
};
pub use optim::{Optimizer, OptimizerConfig, OptimizerKind};
pub use stage::{BatchPlan, BurnStage, GradMode, StageMessage};
pub use tensor::{device, tensor1, tensor2, to_vec};

#[cfg(test)]
mod tests;
