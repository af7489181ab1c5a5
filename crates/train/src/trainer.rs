//! The training loop, read top to bottom.
//!
//! One epoch = one pipelined run: order the data, cut it into mini-batches and micro-batches,
//! generate the schedule for that many mini-batches, let the policy plan every pass's weights,
//! run the plan on one worker thread per stage, then evaluate. The pipeline drains at the end of
//! every epoch (as TiMePReSt does before its per-epoch checkpoint), so an epoch boundary is a
//! consistent state: every stage has applied the same number of updates.

use std::ops::Range;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use timeprest_data::{Augment, DataSplit, Dataset, LoadOptions, epoch_order, load};
use timeprest_nn::{
    AvailableMemory, BatchPlan, BurnStage, ModelParams, ModelSize, ModelSpec, NnError, Workload,
    evaluate, init_params, partition_manual, partition_model,
};
use timeprest_policy::{WeightPolicy, plan};
use timeprest_runtime::{RunOptions, RunReport, run_threaded};
use timeprest_schedule::{Schedule, ScheduleConfig, generate};

use crate::checkpoint;
use crate::config::{OptimizerChoice, TrainConfig};
use crate::error::TrainError;
use crate::metrics::{EpochMetrics, epoch_metrics};

/// Loads the data sets of `config` (with its limits) and the model architecture that fits them,
/// refusing a model whose training cannot fit in this machine's memory before anything of it
/// is allocated (every entry point, threaded or MPI, builds its model after this).
pub fn load_data_and_model(
    config: &TrainConfig,
) -> Result<(Dataset, Dataset, ModelSpec), TrainError> {
    timeprest_nn::select_device(config.device).map_err(|e| TrainError::Config(e.to_string()))?;
    let options = LoadOptions {
        data_dir: config.data_dir.as_deref(),
        seq_len: config.seq_len,
    };
    let DataSplit {
        mut train,
        mut test,
    } = load(&config.dataset, &options)?;
    if let Some(limit) = config.limit_train {
        train.truncate(limit);
    }
    if let Some(limit) = config.limit_test {
        test.truncate(limit);
    }
    let size = ModelSize {
        hidden: config.hidden.clone(),
        width: config.width,
        depth: config.depth.clone(),
        embed_dim: config.embed_dim,
        heads: config.heads,
    };
    let spec = ModelSpec::for_data(&config.model, &train, &size).map_err(|e| match e {
        too_large @ NnError::TooLarge { .. } => TrainError::Model(too_large),
        other => TrainError::Config(format!("--model: {other}")),
    })?;
    spec.check_memory(
        &training_workload(config),
        &AvailableMemory::of_this_machine(),
    )?;
    if config.augment && train.targets_per_sample > 1 {
        return Err(TrainError::Config(format!(
            "--augment: random crops and flips are for images, but data set {} is a \
             language-modelling set",
            train.name
        )));
    }
    Ok((train, test, spec))
}

/// What training `config` holds besides the model, for the memory check: one mini-batch's
/// micro-batches in flight (the least any schedule holds; a stage may hold more) and the
/// optimizer's state per parameter.
fn training_workload(config: &TrainConfig) -> Workload {
    let optimizer_state_sets = match config.optimizer {
        OptimizerChoice::Sgd if config.momentum == 0.0 => 0,
        OptimizerChoice::Sgd => 1,
        OptimizerChoice::Adam => 2,
    };
    Workload {
        microbatch_size: (config.batch_size / config.microbatches.max(1) as usize).max(1),
        microbatches_in_flight: config.microbatches as usize,
        optimizer_state_sets,
    }
}

/// How epoch `epoch` (from 1) cuts `num_samples` training samples: mini-batches of
/// `batch_size` samples in `microbatches` micro-batches, in the epoch's seeded order. The
/// asynchronous 1F1B schedule treats each micro-batch as a mini-batch of its own (spec §2.4), so
/// its plan is flattened to match.
pub fn epoch_batches(
    config: &TrainConfig,
    num_samples: usize,
    epoch: u32,
) -> Result<BatchPlan, TrainError> {
    let order = epoch_order(num_samples, config.seed, u64::from(epoch), config.shuffle);
    let mut batches = BatchPlan::split(&order, config.batch_size, config.microbatches as usize)?;
    let probe = generate(
        config.schedule_kind(),
        &ScheduleConfig::new(1, config.microbatches, 1),
    )?;
    if probe.config.num_microbatches == 1 && config.microbatches > 1 {
        batches.minibatches = batches
            .minibatches
            .into_iter()
            .flatten()
            .map(|microbatch| vec![microbatch])
            .collect();
    }
    if batches.minibatches.is_empty() {
        return Err(TrainError::Config(format!(
            "--batch-size: {num_samples} training samples make no complete mini-batch of {}",
            config.batch_size
        )));
    }
    Ok(batches)
}

/// What one epoch produced.
pub struct EpochRun {
    /// The epoch's metrics.
    pub metrics: EpochMetrics,
    /// The runtime's event log.
    pub report: RunReport,
    /// The schedule the epoch ran.
    pub schedule: Schedule,
}

/// A model split into stages, with its data and policy, ready to train epoch by epoch.
pub struct Trainer {
    config: TrainConfig,
    spec: ModelSpec,
    train_data: Arc<Dataset>,
    test_data: Dataset,
    policy: WeightPolicy,
    stages: Vec<BurnStage>,
    /// Updates every stage has applied so far (equal across stages at epoch boundaries).
    updates: u64,
}

impl Trainer {
    /// Loads the data and builds the stages: from `initial` weights if given, otherwise from a
    /// seeded initialisation that does not depend on the number of stages.
    pub fn new(config: TrainConfig, initial: Option<ModelParams>) -> Result<Self, TrainError> {
        config.validate()?;
        let (train, test, spec) = load_data_and_model(&config)?;
        let params = match initial {
            Some(params) => params,
            None => init_params(&spec, config.seed)?,
        };
        let train_data = Arc::new(train);
        let microbatch = (config.batch_size / config.microbatches as usize).max(1);
        let split = if config.split.is_empty() {
            partition_model(
                &spec,
                config.partition,
                config.stages as usize,
                microbatch,
                config.threads_per_stage,
            )
            .map_err(|e| TrainError::Config(format!("--stages: {e}")))?
        } else {
            partition_manual(&config.split, spec.num_blocks())
                .map_err(|e| TrainError::Config(format!("--split: {e}")))?
        };
        let mut stages = split
            .iter()
            .enumerate()
            .map(|(stage, blocks)| {
                BurnStage::new(
                    stage as u32,
                    config.stages,
                    params[blocks.clone()].to_vec(),
                    blocks.start,
                    config.optimizer_config(),
                    config.grad_mode,
                    Arc::clone(&train_data),
                )
            })
            .collect::<Result<Vec<_>, _>>()?;
        let augment = config.augment.then_some(Augment { seed: config.seed });
        stages[0].set_augment(augment);
        let policy = WeightPolicy::new(config.policy, &config.policy_options());
        Ok(Self {
            config,
            spec,
            train_data,
            test_data: test,
            policy,
            stages,
            updates: 0,
        })
    }

    /// The configuration.
    pub fn config(&self) -> &TrainConfig {
        &self.config
    }

    /// The model architecture.
    pub fn spec(&self) -> &ModelSpec {
        &self.spec
    }

    /// The live weights of all stages, in block order.
    pub fn params(&self) -> ModelParams {
        self.stages
            .iter()
            .flat_map(BurnStage::live_params)
            .collect()
    }

    /// How the epoch's samples are cut: mini-batches of `batch_size` samples in `microbatches`
    /// micro-batches. The asynchronous 1F1B schedule treats each micro-batch as a mini-batch of
    /// its own (spec §2.4), so its plan is flattened to match.
    fn batch_plan(&self, epoch: u32) -> Result<BatchPlan, TrainError> {
        epoch_batches(&self.config, self.train_data.len(), epoch)
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

    /// [`Trainer::run_epoch`] that ends with [`timeprest_runtime::RuntimeError::Interrupted`] (inside
    /// [`TrainError::Runtime`]) within one action of every stage once `stop` is raised. The
    /// stages are then left mid-epoch: continue from a checkpoint, not from this trainer.
    pub fn run_epoch_with_stop(
        &mut self,
        epoch: u32,
        progress: Option<&(dyn Fn(u64) + Sync)>,
        stop: Option<&AtomicBool>,
    ) -> Result<EpochRun, TrainError> {
        let batches = self.batch_plan(epoch)?;
        let num_minibatches = batches.num_minibatches() as u32;
        let num_microbatches = batches.minibatches[0].len() as u32;
        let schedule_config = self
            .config
            .schedule_config(num_microbatches, num_minibatches);
        let schedule = generate(self.config.schedule_kind(), &schedule_config)?;
        let version_plan = plan(&schedule, &self.policy);
        let batches = Arc::new(batches);
        for stage in &mut self.stages {
            stage.set_plan(Arc::clone(&batches), epoch);
        }
        let options = RunOptions {
            threads_per_stage: Some(self.config.threads_per_stage),
            version_offset: self.updates,
            on_first_stage_update: progress,
            stop,
        };
        let report = run_threaded(&schedule, &version_plan, &mut self.stages, options)?;
        self.updates += u64::from(num_minibatches);

        let metrics = epoch_metrics(epoch, &schedule, self.config.lr, &report, || {
            self.evaluate()
        })?;
        Ok(EpochRun {
            metrics,
            report,
            schedule,
        })
    }

    /// Mean loss and accuracy of the live weights on the test set.
    pub fn evaluate(&self) -> Result<(f64, f64), TrainError> {
        Ok(evaluate(
            &self.spec,
            &self.params(),
            &self.test_data,
            self.config.eval_batch_size,
        )?)
    }

    /// Writes a checkpoint of the drained pipeline after `epoch` epochs into `run_dir`.
    pub fn save_checkpoint(&self, run_dir: &Path, epoch: u32) -> Result<(), TrainError> {
        checkpoint::save(run_dir, epoch, self.updates, &self.config, &self.stages)
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
        let split: Vec<Range<usize>> = self
            .stages
            .iter()
            .map(|stage| stage.first_block()..stage.first_block() + stage.live_params().len())
            .collect();
        let state = checkpoint::read_state(&dir, &self.config, &split)?;
        for (index, stage) in self.stages.iter_mut().enumerate() {
            checkpoint::restore_stage(&dir, index, &state, stage)?;
        }
        self.updates = state.updates;
        Ok(state)
    }

    /// Number of mini-batches per epoch (after the 1F1B flattening).
    pub fn minibatches_per_epoch(&self) -> Result<u64, TrainError> {
        Ok(self.batch_plan(1)?.num_minibatches() as u64)
    }
}
