//! Training: the loop that turns a configuration into trained weights and measurements.
//!
//! [`Pipeline`] is what every executor runs: the validated configuration, data, model, split and
//! weight policy, and each epoch's work (batches, schedule, weight versions). [`Trainer`] runs
//! all of a pipeline's stages on threads of this process; an MPI rank (`timeprest_mpi`) runs
//! one stage of the same pipeline. [`run()`] adds the run directory: `config.json`,
//! `metrics.jsonl` and the weights in safetensors ([`RunRecord`] writes what every executor
//! records per epoch); [`output`] makes sure no output replaces anything but a regular file and
//! no two runs share a directory.
#![warn(missing_docs)]

pub mod checkpoint;
pub mod config;
pub mod error;
pub mod metrics;
pub mod output;
pub mod pipeline;
pub mod preview;
pub mod recipe;
pub mod run;
pub mod trace;
pub mod trainer;

pub use config::{
    DataSettings, KeyError, LrScheduleChoice, ModelSettings, OptimisationSettings, OptimizerChoice,
    PipelineSettings, RunSettings, SignificanceChoice, TrainConfig, ValidConfig,
};
pub use error::{DivergedLoss, LastCheckpoint, TrainError};
pub use metrics::{EpochMetrics, MeasuredCosts, StageMetrics, epoch_metrics};
pub use output::{
    DirUse, OutputError, RunDirLock, check_output_file, claim_run_dir, command_line, shell_quoted,
    write_file_atomically,
};
pub use pipeline::{EpochWork, Pipeline, UnsplitPipeline, epoch_batches, load_data_and_model};
pub use preview::ConfigWarning;
pub use recipe::Recipe;
pub use run::{
    HISTORY_FILE, HistoryEntry, MetricsLog, Progress, RunPaths, RunRecord, claim_outputs,
    open_run_dir, run, run_until_stopped, save_final_weights, write_run_config,
};
pub use timeprest_nn::GradMode;
pub use trace::measured_chrome_trace;
pub use trainer::{EpochRun, Trainer};
