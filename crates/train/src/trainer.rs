//! The threaded executor: every stage of a [`Pipeline`] in this process, one worker thread each.
//!
//! One epoch = one pipelined run of the pipeline's [`EpochWork`](crate::pipeline::EpochWork)
//! (batches, schedule, weight versions), then an evaluation. The pipeline drains at the end of
//! every epoch (as TiMePReSt does before its per-epoch checkpoint), so an epoch boundary is a
//! consistent state: every stage has applied the same number of updates.

use std::path::Path;
use std::sync::atomic::AtomicBool;

use timeprest_nn::{BurnStage, ModelParams};
use timeprest_runtime::{RunOptions, RunReport, run_threaded};
use timeprest_schedule::Schedule;

use crate::checkpoint;
use crate::config::ValidConfig;
use crate::error::TrainError;
use crate::metrics::{EpochMetrics, epoch_metrics};
use crate::pipeline::Pipeline;

/// What one epoch produced.
pub struct EpochRun {
    /// The epoch's metrics.
    pub metrics: EpochMetrics,
    /// The runtime's event log.
    pub report: RunReport,
    /// The schedule the epoch ran.
    pub schedule: Schedule,
}

/// A [`Pipeline`] with all its stages built in this process, ready to train epoch by epoch
/// with one worker thread per stage.
pub struct Trainer {
    pipeline: Pipeline,
    stages: Vec<BurnStage>,
    /// Updates every stage has applied so far (equal across stages at epoch boundaries).
    updates: u64,
}

impl Trainer {
    /// Loads the data and builds the stages: from the weights in the safetensors file
    /// `init_weights` if given, otherwise from a seeded initialisation that does not depend on
    /// the number of stages.
    pub fn new(config: ValidConfig, init_weights: Option<&Path>) -> Result<Self, TrainError> {
        Self::from_pipeline(Pipeline::load(config, init_weights)?)
    }

    /// Builds every stage of `pipeline`.
    pub fn from_pipeline(pipeline: Pipeline) -> Result<Self, TrainError> {
        let stages = (0..pipeline.config().pipeline.num_stages)
            .map(|stage| pipeline.stage(stage))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self {
            pipeline,
            stages,
            updates: 0,
        })
    }

    /// The pipeline the stages were built from.
    pub fn pipeline(&self) -> &Pipeline {
        &self.pipeline
    }

    /// The configuration.
    pub fn config(&self) -> &ValidConfig {
        self.pipeline.config()
    }

    /// The live weights of all stages, in block order.
    pub fn params(&self) -> ModelParams {
        self.stages
            .iter()
            .flat_map(BurnStage::live_params)
            .collect()
    }

    /// Trains one epoch (`epoch` from 1) and evaluates. `progress` is called after each
    /// mini-batch has been applied at stage 0 with the number done in this epoch.
    pub fn run_epoch(
        &mut self,
        epoch: u32,
        progress: Option<&(dyn Fn(u64) + Sync)>,
    ) -> Result<EpochRun, TrainError> {
        self.run_epoch_with_stop(epoch, progress, None)
    }

    /// [`Trainer::run_epoch`] that ends with [`timeprest_runtime::RuntimeError::Interrupted`]
    /// (inside [`TrainError::Runtime`]) within one action of every stage once `stop` is raised. The
    /// stages are then left mid-epoch: continue from a checkpoint, not from this trainer.
    pub fn run_epoch_with_stop(
        &mut self,
        epoch: u32,
        progress: Option<&(dyn Fn(u64) + Sync)>,
        stop: Option<&AtomicBool>,
    ) -> Result<EpochRun, TrainError> {
        let work = self.pipeline.epoch_work(epoch)?;
        let options = RunOptions {
            threads_per_stage: Some(self.config().run.threads_per_stage),
            version_offset: self.updates,
            on_first_stage_update: progress,
            stop,
        };
        let report = run_threaded(
            &work.schedule,
            &work.versions,
            &mut self.stages,
            &work.feed,
            options,
        )?;
        self.updates += u64::from(work.num_minibatches());
        let metrics = epoch_metrics(
            epoch,
            &work.schedule,
            self.pipeline.epoch_lr(epoch),
            &report,
            || self.evaluate(),
        )?;
        Ok(EpochRun {
            metrics,
            report,
            schedule: work.schedule,
        })
    }

    /// Mean loss and accuracy of the live weights on the test set.
    pub fn evaluate(&self) -> Result<(f64, f64), TrainError> {
        self.pipeline.evaluate(&self.params())
    }

    /// Writes a checkpoint of the drained pipeline after `epoch` epochs into `run_dir`.
    pub fn save_checkpoint(&self, run_dir: &Path, epoch: u32) -> Result<(), TrainError> {
        checkpoint::save(run_dir, epoch, self.updates, self.config(), &self.stages)
    }

    /// Restores the checkpoint in `run_dir` (whose configuration must equal this trainer's, up
    /// to the fields a resumed run may change, see [`checkpoint::RESUMABLE_FIELDS`]) and
    /// returns its state: the epochs it had completed and the configuration it was written
    /// with.
    pub fn restore_checkpoint(
        &mut self,
        run_dir: &Path,
    ) -> Result<checkpoint::CheckpointState, TrainError> {
        let dir = checkpoint::find(run_dir)?;
        let state = checkpoint::read_state(&dir, self.config(), self.pipeline.split())?;
        for (index, stage) in self.stages.iter_mut().enumerate() {
            checkpoint::restore_stage(&dir, index, &state, stage)?;
        }
        self.updates = state.updates;
        Ok(state)
    }
}
