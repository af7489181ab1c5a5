//! Neural-network side of timeprest, on burn: models as explicit parameter tensors (an MLP, a
//! zoo of convolutional networks and a small GPT), partitioning into stages (uniform, balanced by parameters
//! or measured time, manual), optimizers with visible state, a per-stage weight-version store,
//! and [`BurnStage`], the runtime's [`StageCompute`](timeprest_runtime::StageCompute) for one
//! pipeline stage.
//!
//! The crate is shaped around the project's first-class question, *which weight version does
//! each pass read*: parameters are plain lists of tensors (not burn `Module`s), so a version is
//! a cheap set of shared handles, and blends (I-TiMePReSt), predictions (NWPT) and optimizer
//! steps are plain tensor maps. Autodiff is used per pass on fresh leaves, which is what lets a
//! backward read different weights than its forward (`docs/algorithms.md` §4, [`GradMode`]).
//!
//! All tensors live on one device per process ([`select_device`]): burn's Flex CPU backend by
//! default, a GPU (Vulkan) with the `gpu` feature. Flex parallelises with rayon's *current* pool,
//! so running a stage inside `ThreadPool::install` bounds its threads.
#![warn(missing_docs)]

mod block;
mod checkpoint;
mod conv_kernel;
mod elementwise_kernel;
mod error;
mod feed;
mod gemm_kernel;
#[cfg(test)]
mod kernel_test_support;
mod memory;
mod model;
mod norm_kernel;
mod optim;
mod partition;
mod pool_kernel;
mod stage;
mod store;
mod tensor;
mod zoo;

pub use block::{
    AvgPool2d, BN_EPSILON, BN_MOMENTUM, BOTTLENECK_EXPANSION, BasicBlock, BatchNorm2d, Block,
    Bottleneck, Conv2d, DecoderLayer, Embedding, GlobalAvgPool, LN_EPSILON, Linear, LmHead,
    MLP_EXPANSION, MaxPool2d, NORM_VALUE_OPS, PATCH_VALUE_OPS, Relu, Shape,
};
pub use checkpoint::{
    load_safetensors, param_name, read_stage_checkpoint, safetensors_bytes, stage_checkpoint_bytes,
};
pub use error::NnError;
pub use feed::{DataFeed, EpochBatches, Targets};
pub use memory::{
    AvailableMemory, MAX_BLOCKS, MAX_LAYER_WIDTH, MemoryEstimate, Workload, human_bytes,
};
pub use model::{BlockParams, MlpConfig, ModelParams, ModelSpec, evaluate, init_params};
pub use optim::{LrSchedule, Optimizer, OptimizerConfig, OptimizerKind, OptimizerSnapshot};
pub use partition::{
    BlockProfile, PartitionMethod, ProfiledCost, partition_balanced, partition_manual,
    partition_model, partition_uniform, profile_blocks,
};
pub use stage::{BurnStage, GradMode, StageMessage};
pub use tensor::{ComputeDevice, device, select_device, tensor1, tensor2, to_vec};
pub use zoo::{Arch, GptConfig, MODEL_NAMES, ModelSize, NetConfig};

#[cfg(test)]
mod tests;
#[cfg(test)]
mod zoo_tests;
