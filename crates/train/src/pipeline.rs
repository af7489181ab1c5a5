//! The pipeline every executor runs: what a configuration builds once, and the work of each
//! epoch.
//!
//! An epoch is the same whatever carries the messages between stages: order the epoch's
//! samples and cut them into mini-batches and micro-batches, generate the schedule for that
//! many mini-batches, let the weight policy plan which version every pass reads, and let each
//! stage execute its row of that version plan. [`Pipeline`] holds what is fixed for a run (the
//! validated configuration, the data, the model, its initial weights, the split into stages and
//! the policy); [`Pipeline::epoch_work`] makes each epoch's [`EpochWork`]. The threaded
//! [`Trainer`](crate::Trainer) runs every stage of an epoch's work on threads of one process;
//! an MPI rank (`timeprest_mpi`) builds the same pipeline and runs one stage of the same work.
//! Neither derives any of it on its own, so the two cannot drift apart.

use std::ops::Range;
use std::path::Path;
use std::sync::Arc;

use timeprest_data::{Augment, DataSplit, Dataset, LoadOptions, epoch_order, load};
use timeprest_nn::{
    AvailableMemory, BlockParams, BurnStage, DataFeed, EpochBatches, ModelParams, ModelSize,
    ModelSpec, NnError, OptimizerConfig, Workload, evaluate, init_params, load_safetensors,
    partition_manual, partition_model,
};
use timeprest_policy::{Activations, VersionPlan, WeightPolicy, plan};
use timeprest_schedule::{Schedule, generate};

use crate::config::{OptimizerChoice, TrainConfig, ValidConfig};
use crate::error::TrainError;

/// A model split into stages with its data, initial weights and weight policy: everything an
/// executor needs to build its stages and to know each epoch's work.
pub struct Pipeline {
    config: ValidConfig,
    spec: ModelSpec,
    train_data: Arc<Dataset>,
    test_data: Dataset,
    initial: ModelParams,
    split: Vec<Range<usize>>,
    policy: WeightPolicy,
    /// Mini-batches of every epoch (one update per stage each); the same in every epoch.
    minibatches_per_epoch: u64,
}

/// One epoch's work: the feed that makes stage 0's inputs and the last stage's targets from the
/// epoch's batches, the schedule that orders the passes and the version every pass reads. Every
/// stage of the epoch executes its own row of it.
pub struct EpochWork {
    /// The epoch, from 1.
    pub epoch: u32,
    /// Stage 0's inputs and the last stage's targets of every micro-batch.
    pub feed: DataFeed,
    /// The order of every stage's forwards, backwards and updates.
    pub schedule: Schedule,
    /// The weight version every pass reads and every update writes.
    pub versions: VersionPlan,
}

impl EpochWork {
    /// Number of mini-batches the epoch schedules.
    pub fn num_minibatches(&self) -> u32 {
        self.schedule.config.num_minibatches
    }
}

/// A pipeline whose split into stages is not decided yet: the validated configuration, data,
/// model, initial weights and policy. [`UnsplitPipeline::split_by_config`] decides the split
/// here; an MPI run decides it on rank 0 alone (a `--partition time` split is measured, and two
/// processes would measure differently) and every rank takes that one with
/// [`UnsplitPipeline::with_split`].
pub struct UnsplitPipeline(Pipeline);

impl UnsplitPipeline {
    /// Loads the data and model of `config` and sets the initial weights: those of the
    /// safetensors file `init_weights` if given, else a seeded initialisation that does not
    /// depend on the number of stages.
    pub fn load(config: ValidConfig, init_weights: Option<&Path>) -> Result<Self, TrainError> {
        let (train, test, spec) = load_data_and_model(&config)?;
        let initial = match init_weights {
            Some(path) => load_safetensors(path, &spec)?,
            None => init_params(&spec, config.run.seed)?,
        };
        let policy = WeightPolicy::new(config.pipeline.policy, &config.policy_options());
        let minibatches_per_epoch =
            epoch_batches(&config, train.len(), 1)?.num_minibatches() as u64;
        Ok(Self(Pipeline {
            minibatches_per_epoch,
            config,
            spec,
            train_data: Arc::new(train),
            test_data: test,
            initial,
            split: Vec::new(),
            policy,
        }))
    }

    /// The blocks of each stage as the configuration asks: `--split` by hand, else the
    /// `--partition` method for the configured micro-batch size.
    pub fn split_by_config(&self) -> Result<Vec<Range<usize>>, TrainError> {
        let config = &self.0.config;
        if config.pipeline.split.is_empty() {
            partition_model(
                &self.0.spec,
                config.pipeline.partition,
                config.pipeline.num_stages as usize,
                microbatch_size(config),
                config.run.threads_per_stage,
            )
            .map_err(|e| TrainError::config("--stages", e))
        } else {
            partition_manual(&config.pipeline.split, self.0.spec.num_blocks())
                .map_err(|e| TrainError::config("--split", e))
        }
    }

    /// The pipeline with the blocks of each stage given by `split`.
    ///
    /// # Errors
    /// [`TrainError::Config`] if `split` does not cut the model's blocks into the configured
    /// number of contiguous, non-empty ranges.
    pub fn with_split(self, split: Vec<Range<usize>>) -> Result<Pipeline, TrainError> {
        let Self(mut pipeline) = self;
        let num_blocks = pipeline.spec.num_blocks();
        let covers = split.len() == pipeline.config.pipeline.num_stages as usize
            && split.first().is_some_and(|first| first.start == 0)
            && split.last().map(|last| last.end) == Some(num_blocks)
            && split.windows(2).all(|pair| pair[0].end == pair[1].start)
            && split.iter().all(|blocks| !blocks.is_empty());
        if !covers {
            return Err(TrainError::config(
                "--stages",
                format!(
                    "the split {split:?} does not cut {num_blocks} blocks into {} stages",
                    pipeline.config.pipeline.num_stages
                ),
            ));
        }
        pipeline.split = split;
        Ok(pipeline)
    }
}

impl Pipeline {
    /// [`UnsplitPipeline::load`], split as the configuration asks.
    pub fn load(config: ValidConfig, init_weights: Option<&Path>) -> Result<Self, TrainError> {
        let unsplit = UnsplitPipeline::load(config, init_weights)?;
        let split = unsplit.split_by_config()?;
        unsplit.with_split(split)
    }

    /// The validated configuration.
    pub fn config(&self) -> &ValidConfig {
        &self.config
    }

    /// The model architecture.
    pub fn spec(&self) -> &ModelSpec {
        &self.spec
    }

    /// The initial weights of the whole model, in block order.
    pub fn initial(&self) -> &ModelParams {
        &self.initial
    }

    /// The blocks of each stage.
    pub fn split(&self) -> &[Range<usize>] {
        &self.split
    }

    /// Stage `stage` with its initial weights.
    pub fn stage(&self, stage: u32) -> Result<BurnStage, TrainError> {
        let blocks = self.split[stage as usize].clone();
        Ok(BurnStage::new(
            stage,
            self.config.pipeline.num_stages,
            self.initial[blocks.clone()].to_vec(),
            blocks.start,
            self.optimizer_config(),
            self.config.pipeline.grad_mode,
        )?
        .recomputing_activations(self.config.pipeline.recompute_activations))
    }

    /// The optimizer of every stage: the configured rule, its learning-rate schedule counted in
    /// this pipeline's updates (one per mini-batch per stage).
    pub fn optimizer_config(&self) -> OptimizerConfig {
        self.config.optimizer_config(self.minibatches_per_epoch)
    }

    /// The configured learning rate and the rate of the last update of epoch `epoch` (from
    /// 1), which its metrics line reports.
    pub fn epoch_lr(&self, epoch: u32) -> (f64, f64) {
        let last_update = u64::from(epoch) * self.minibatches_per_epoch;
        let optimizer = self.optimizer_config();
        (optimizer.lr, optimizer.lr_at(last_update.saturating_sub(1)))
    }

    /// The work of epoch `epoch` (from 1): its batches, schedule and weight versions.
    pub fn epoch_work(&self, epoch: u32) -> Result<EpochWork, TrainError> {
        let batches = epoch_batches(&self.config, self.train_data.len(), epoch)?;
        let num_minibatches = batches.num_minibatches() as u32;
        let num_microbatches = batches.minibatches[0].len() as u32;
        let shape = self
            .config
            .schedule_config(num_microbatches, num_minibatches);
        let schedule = generate(self.config.schedule_kind(), &shape)?;
        let versions = plan(&schedule, &self.policy, self.config.activations());
        let augment = self.config.data.augment.then_some(Augment {
            seed: self.config.run.seed,
        });
        Ok(EpochWork {
            epoch,
            feed: DataFeed::new(
                Arc::clone(&self.train_data),
                Arc::new(batches),
                augment,
                epoch,
            ),
            schedule,
            versions,
        })
    }

    /// Number of mini-batches every epoch schedules (after the 1F1B flattening).
    pub fn minibatches_per_epoch(&self) -> u64 {
        self.minibatches_per_epoch
    }

    /// Mean loss and accuracy of `params` (the whole model) on the test set.
    pub fn evaluate(&self, params: &[BlockParams]) -> Result<(f64, f64), TrainError> {
        Ok(evaluate(
            &self.spec,
            params,
            &self.test_data,
            self.config.run.eval_batch_size,
        )?)
    }
}

/// Samples per micro-batch of `config` (at least 1).
fn microbatch_size(config: &TrainConfig) -> usize {
    (config.optimisation.batch_size / config.pipeline.num_microbatches.max(1) as usize).max(1)
}

/// Loads the data sets of `config` (with its limits) and the model architecture that fits them,
/// refusing a model whose training cannot fit in this machine's memory before anything of it
/// is allocated.
pub fn load_data_and_model(
    config: &TrainConfig,
) -> Result<(Dataset, Dataset, ModelSpec), TrainError> {
    timeprest_nn::select_device(config.run.device)?;
    let options = LoadOptions {
        data_dir: config.data.data_dir.as_deref(),
        seq_len: config.data.seq_len,
    };
    let DataSplit {
        mut train,
        mut test,
    } = load(&config.data.dataset, &options)?;
    if let Some(limit) = config.data.limit_train {
        train.truncate(limit);
    }
    if let Some(limit) = config.data.limit_test {
        test.truncate(limit);
    }
    let size = ModelSize {
        hidden: config.model.hidden.clone(),
        width: config.model.width,
        depth: config.model.depth.clone(),
        embed_dim: config.model.embed_dim,
        heads: config.model.heads,
    };
    let spec = ModelSpec::for_data(&config.model.name, &train, &size).map_err(|e| match e {
        too_large @ NnError::TooLarge { .. } => TrainError::Model(too_large),
        other => TrainError::config("--model", other),
    })?;
    spec.check_memory(
        &training_workload(config),
        &AvailableMemory::of_this_machine(),
    )?;
    if config.data.augment && train.targets_per_sample > 1 {
        return Err(TrainError::config(
            "--augment",
            format!(
                "random crops and flips are for images, but data set {} is a \
                 language-modelling set",
                train.name
            ),
        ));
    }
    Ok((train, test, spec))
}

/// What training `config` holds besides the model, for the memory check: one mini-batch's
/// micro-batches in flight (the least any schedule holds; a stage may hold more), of which,
/// when activations are recomputed, only those one backward covers keep every activation; and
/// the optimizer's state per parameter.
fn training_workload(config: &TrainConfig) -> Workload {
    let optimizer_state_sets = match config.optimisation.optimizer {
        OptimizerChoice::Sgd if config.optimisation.momentum == 0.0 => 0,
        OptimizerChoice::Sgd => 1,
        OptimizerChoice::Adam => 2,
    };
    let num_microbatches = config.pipeline.num_microbatches;
    let with_activations = match config.activations() {
        Activations::Kept => num_microbatches,
        Activations::Recomputed => config
            .schedule_kind()
            .microbatches_per_backward(num_microbatches),
    };
    Workload {
        microbatch_size: microbatch_size(config),
        microbatches_in_flight: num_microbatches as usize,
        microbatches_with_activations: with_activations as usize,
        optimizer_state_sets,
    }
}

/// How epoch `epoch` (from 1) cuts `num_samples` training samples: mini-batches of
/// `batch_size` samples in `microbatches` micro-batches, in the epoch's seeded order. A
/// schedule that runs each micro-batch as a mini-batch of its own (asynchronous 1F1B, see
/// [`timeprest_schedule::ScheduleKind::splits_microbatches`]) gets its batches flattened to
/// match.
pub fn epoch_batches(
    config: &TrainConfig,
    num_samples: usize,
    epoch: u32,
) -> Result<EpochBatches, TrainError> {
    let order = epoch_order(
        num_samples,
        config.run.seed,
        u64::from(epoch),
        config.data.shuffle,
    );
    let mut batches = EpochBatches::split(
        &order,
        config.optimisation.batch_size,
        config.pipeline.num_microbatches as usize,
    )?;
    if config.schedule_kind().splits_microbatches() {
        batches.minibatches = batches
            .minibatches
            .into_iter()
            .flatten()
            .map(|microbatch| vec![microbatch])
            .collect();
    }
    if batches.minibatches.is_empty() {
        return Err(TrainError::config(
            "--batch-size",
            format!(
                "{num_samples} training samples make no complete mini-batch of {}",
                config.optimisation.batch_size
            ),
        ));
    }
    Ok(batches)
}

#[cfg(test)]
mod tests {
    use timeprest_policy::PolicyKind;
    use timeprest_runtime::Feed;
    use timeprest_schedule::MicrobatchId;

    use super::*;

    #[test]
    fn one_f_one_b_cuts_every_micro_batch_into_a_mini_batch() {
        let config = {
            let mut config = TrainConfig::default();
            config.pipeline.policy = PolicyKind::Pipedream;
            config.optimisation.batch_size = 4;
            config.pipeline.num_microbatches = 2;
            config.data.shuffle = false;
            config
        };
        let batches = epoch_batches(&config, 9, 1).unwrap();
        assert_eq!(
            batches.minibatches,
            vec![
                vec![vec![0, 1]],
                vec![vec![2, 3]],
                vec![vec![4, 5]],
                vec![vec![6, 7]]
            ]
        );
        let gpipe = {
            let mut config = config;
            config.pipeline.policy = PolicyKind::Gpipe;
            config
        };
        assert_eq!(
            epoch_batches(&gpipe, 9, 1).unwrap().minibatches,
            vec![vec![vec![0, 1], vec![2, 3]], vec![vec![4, 5], vec![6, 7]]]
        );
        assert!(epoch_batches(&gpipe, 1, 1).is_err());
    }

    #[test]
    fn epoch_work_schedules_as_many_minibatches_as_the_batches_hold() {
        for policy in [PolicyKind::Pipedream, PolicyKind::Timeprest] {
            let config = {
                let mut config = TrainConfig::default();
                config.pipeline.policy = policy;
                config.pipeline.num_microbatches = 2;
                config.data.limit_train = Some(320);
                config
            };
            let pipeline = Pipeline::load(config.validate().unwrap(), None).unwrap();
            let work = pipeline.epoch_work(1).unwrap();
            // The feed holds exactly the mini-batches the schedule runs.
            let last = work.num_minibatches() - 1;
            assert!(work.feed.input(MicrobatchId::new(last, 0)).is_ok());
            assert!(work.feed.input(MicrobatchId::new(last + 1, 0)).is_err());
            assert_eq!(
                u64::from(work.num_minibatches()),
                pipeline.minibatches_per_epoch()
            );
            assert_eq!(work.versions.stages.len(), pipeline.split().len());
        }
    }

    #[test]
    fn a_split_from_elsewhere_must_cut_the_model_into_the_configured_stages() {
        let config = TrainConfig::default().validate().unwrap();
        let stages = config.pipeline.num_stages as usize;
        let load = || UnsplitPipeline::load(config.clone(), None).unwrap();
        let decided = load().split_by_config().unwrap();
        assert_eq!(decided.len(), stages);
        assert_eq!(load().with_split(decided.clone()).unwrap().split(), decided);
        for bad in [
            decided[..stages - 1].to_vec(),
            vec![0..0; stages],
            decided.iter().map(|b| b.start..b.end + 1).collect(),
        ] {
            let error = load().with_split(bad).err();
            assert!(
                matches!(error, Some(TrainError::Config { .. })),
                "{error:?}"
            );
        }
    }
}
