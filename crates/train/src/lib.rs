//! Training: the loop that turns a configuration into trained weights and measurements.
//!
//! [`Trainer`] owns the stages (one [`timeprest_nn::BurnStage`] each), the data and the weight
//! policy; every epoch it generates the schedule, plans the versions and hands both to the
//! threaded runtime. [`run()`] adds the run directory: `config.json`, `metrics.jsonl` and the
//! weights in safetensors.
#![warn(missing_docs)]

pub mod checkpoint;
pub mod config;
pub mod error;
pub mod metrics;
pub mod run;
pub mod trace;
pub mod trainer;

pub use config::{OptimizerChoice, SignificanceChoice, TrainConfig};
pub use error::TrainError;
pub use metrics::{EpochMetrics, StageMetrics, epoch_metrics};
pub use run::{
    MetricsLog, Progress, RunPaths, run, run_until_stopped, save_final_weights, write_run_config,
};
pub use timeprest_nn::GradMode;
pub use trace::measured_chrome_trace;
pub use trainer::{EpochRun, Trainer, epoch_batches, load_data_and_model};
