//! Rank-local training: rank s builds and runs only stage s; rank 0 also keeps the books.
//!
//! Every rank builds the same [`Pipeline`] as the threaded trainer and runs, epoch by epoch, its
//! own stage of the same [`EpochWork`](timeprest_train::EpochWork) (schedule, version plan and
//! data order, all pure functions of the configuration), so the only difference is where stage
//! s runs and how its messages travel: here, on this process, through [`Rank::run_worker`] and
//! the fabric. At the end of an epoch each rank sends rank 0 a
//! [`Summary`] (events, losses, live weights); rank 0 computes the metrics, evaluates, writes the
//! run directory, reports progress, and tells everyone to go on. That round trip keeps the
//! epoch boundary a consistent state, as in the threaded trainer, and gives rank 0 the whole
//! model to save at the end.
//!
//! Checkpoints: at start-up rank 0 decides where they go and, with `--resume`, checks the
//! checkpoint against the run ([`Start`]); every rank then restores its own stage from its own
//! file. After a checkpointed epoch every rank writes its stage's file into the staging
//! directory and reports it written and synced ([`Tag::Saved`]); when all have, rank 0 writes
//! `state.json` and swaps the checkpoint in, and only then tells the ranks to go on. So the
//! files are those of the threaded trainer, written by their stage's owner, and a crash at any
//! point leaves the previous or the new checkpoint complete.
//!
//! Failure: any error on a rank is sent to all others ([`Rank::abort_all`]) before this rank
//! returns it; they stop within milliseconds and return [`MpiError::Remote`] naming it.
//!
//! Stopping on request: on Ctrl-C or SIGTERM, `mpirun` (Open MPI 4.1) sends the ranks SIGTERM
//! and kills them about a second later (measured), so each rank's stop flag ([`RankRun::stop`])
//! is usually raised at about the same time, and the stop must be quick; but one rank is
//! enough: a rank that sees its flag stops its stage before the next action (or its next
//! epoch) and aborts the others with the cause [`timeprest_runtime::INTERRUPTED`]. Every rank
//! then returns [`TrainError::Interrupted`] with the epoch that did not complete and the last
//! committed checkpoint, as a threaded run does.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use timeprest_nn::{BurnStage, StageMessage};
use timeprest_runtime::{RunReport, RuntimeError, StageContext, check_plan, run_stage, stage_pool};
use timeprest_schedule::Schedule;
use timeprest_train::checkpoint::{self, CheckpointState, StageState};
use timeprest_train::{
    EpochMetrics, LastCheckpoint, Pipeline, Progress, RunPaths, RunRecord, TrainConfig, TrainError,
    UnsplitPipeline, ValidConfig, claim_outputs, epoch_metrics,
};

use crate::error::MpiError;
use crate::fabric::{Fabric, Tag};
use crate::fault::{Fault, Faulty};
use crate::handshake::{Identity, check_identities};
use crate::rank::{ACK_WAIT, FLUSH_WAIT, Rank};
use crate::setup::{Resume, Start};
use crate::summary::{BlockValues, Summary, assemble_params};
use crate::wire::{WireError, WireTransport};

/// How long a rank waits for the others at start-up (they may still be starting on other
/// machines).
const HANDSHAKE_WAIT: Duration = Duration::from_secs(120);

/// One rank's part of a distributed run.
pub struct RankRun<'a> {
    /// The validated configuration (the same on every rank; checked at start-up).
    pub config: &'a ValidConfig,
    /// Output paths, as rank 0 sees them: rank 0 writes the run directory and decides where
    /// checkpoints go and what to resume; the initial weights are read by every rank.
    pub paths: &'a RunPaths,
    /// Progress callbacks; only rank 0 calls them.
    pub progress: &'a dyn Progress,
    /// A fault to inject (tests).
    pub fault: Option<Fault>,
    /// Raised on Ctrl-C or SIGTERM: the run stops at the next action (or epoch) on every rank.
    pub stop: Option<&'a AtomicBool>,
}

/// How far a run got: where an interrupted run can be continued from.
#[derive(Default)]
struct Position {
    /// The epoch running or about to start.
    epoch: u32,
    /// The last committed checkpoint, or the one a resumed run started from.
    last_checkpoint: Option<LastCheckpoint>,
}

/// Trains this rank's stage of `run` over `fabric`. Returns the metrics of every epoch on
/// rank 0 and `None` on the other ranks.
pub fn train_rank<F: Fabric>(
    fabric: F,
    run: &RankRun<'_>,
) -> Result<Option<Vec<EpochMetrics>>, MpiError> {
    let mut rank = Rank::new(fabric);
    let mut position = Position::default();
    let outcome = train(&mut rank, run, &mut position);
    match &outcome {
        Ok(_) => rank.flush(FLUSH_WAIT),
        Err(error) if error.is_interruption() && !error.is_symmetric() => rank.interrupt_all(),
        Err(error) if !error.is_symmetric() => rank.abort_all(&error.to_string()),
        // Every rank stops by itself; sends still pending would keep it from leaving MPI in
        // order (it would exit at once, and the launcher could kill the others before they
        // print their error).
        Err(_) => rank.flush(ACK_WAIT),
    }
    outcome.map_err(|error| match error.is_interruption() {
        true => MpiError::Train(TrainError::Interrupted {
            epoch: position.epoch,
            last_checkpoint: position.last_checkpoint,
        }),
        false => error,
    })
}

fn train<F: Fabric>(
    rank: &mut Rank<F>,
    run: &RankRun<'_>,
    position: &mut Position,
) -> Result<Option<Vec<EpochMetrics>>, MpiError> {
    let config = run.config;
    let world = rank.size();
    let identity = Identity::new(config, world).to_bytes();
    let wait = Some((HANDSHAKE_WAIT, "answer the start-up handshake"));
    let identities = rank
        .exchange(Tag::Hello, identity, wait)?
        .iter()
        .enumerate()
        .map(|(from, bytes)| Identity::from_bytes(from, bytes))
        .collect::<Result<Vec<_>, _>>()?;
    check_identities(&identities, config, world)?;
    // Rank 0 writes the outputs: it checks their paths and locks the run directory for the
    // whole run, before any data is loaded (a failure here reaches the other ranks as usual).
    let _run_dir = match rank.index() {
        0 => claim_outputs(run.paths)?,
        _ => None,
    };

    let unsplit = UnsplitPipeline::load(config.clone(), run.paths.init_weights.as_deref())?;
    let start = match rank.index() {
        0 => {
            let start = decide_start(config, run.paths, unsplit.split_by_config()?)?;
            rank.broadcast(Tag::Start, &start.encode())?;
            start
        }
        _ => Start::decode(0, &rank.wait_for(0, Tag::Start, None)?)?,
    };
    let pipeline = unsplit.with_split(start.split.clone())?;
    let index = rank.index();
    let mut local = LocalStage {
        stage: pipeline.stage(index as u32)?,
        index: index as u32,
        updates: 0,
        fault: run.fault,
    };
    let resumed_from = match &start.resume {
        Some(Resume { dir, state }) => {
            checkpoint::restore_stage(dir, index, state, &mut local.stage)?;
            local.updates = state.updates;
            position.last_checkpoint = dir.parent().map(|run_dir| LastCheckpoint {
                run_dir: run_dir.to_owned(),
                epoch: state.epoch,
            });
            Some(state)
        }
        None => None,
    };
    let completed = resumed_from.map_or(0, |state| state.epoch);
    let stop_requested = || run.stop.is_some_and(|stop| stop.load(Ordering::Relaxed));
    let mut record = match index {
        0 => Some(RunRecord::open(config, run.paths, resumed_from)?),
        _ => None,
    };
    let mut history = Vec::new();
    for epoch in completed + 1..=config.optimisation.epochs {
        position.epoch = epoch;
        if stop_requested() {
            return Err(RuntimeError::Interrupted.into());
        }
        let (schedule, summary) = local.run_epoch(rank, &pipeline, epoch, run)?;
        let checkpoint = (start.checkpoints.as_ref())
            .filter(|checkpointing| checkpointing.due_after(epoch, config.optimisation.epochs));
        match record.as_mut() {
            Some(record) => {
                let mut summaries = vec![summary];
                for from in 1..rank.size() {
                    let bytes = rank.wait_for(from, Tag::Summary, None)?;
                    summaries.push(Summary::decode(from, &bytes)?);
                }
                let metrics = account(record, &pipeline, epoch, &schedule, summaries)
                    .map_err(|error| error.after_checkpoint(position.last_checkpoint.clone()))?;
                run.progress.epoch_finished(&metrics);
                history.push(metrics);
                if let Some(checkpointing) = checkpoint {
                    let mut stages = vec![checkpoint::write_stage(
                        &checkpointing.run_dir,
                        0,
                        &local.stage,
                    )?];
                    for from in 1..rank.size() {
                        let bytes = rank.wait_for(from, Tag::Saved, None)?;
                        stages.push(decode_saved(from, &bytes)?);
                    }
                    let state = CheckpointState {
                        epoch,
                        updates: local.updates,
                        config: TrainConfig::clone(config),
                        stages,
                    };
                    checkpoint::commit(&checkpointing.run_dir, &state)?;
                }
                rank.broadcast(Tag::Continue, &[])?;
            }
            None => {
                rank.send(0, Tag::Summary, summary.encode())?;
                if let Some(checkpointing) = checkpoint {
                    let saved =
                        checkpoint::write_stage(&checkpointing.run_dir, index, &local.stage)?;
                    let bytes = serde_json::to_vec(&saved).expect("stage scalars serialise");
                    rank.send(0, Tag::Saved, bytes)?;
                }
                rank.wait_for(0, Tag::Continue, None)?;
            }
        }
        // Every rank knows the checkpoint is committed: rank 0 committed it before going on.
        if let Some(checkpointing) = checkpoint {
            position.last_checkpoint = Some(LastCheckpoint {
                run_dir: checkpointing.run_dir.clone(),
                epoch,
            });
        }
    }
    Ok(record.map(|_| history))
}

/// Rank 0's decisions before training: the `split` it computed; where checkpoints go
/// (clearing what a crash left half-written there); and, when resuming, the checkpoint,
/// checked against the run.
fn decide_start(
    config: &TrainConfig,
    paths: &RunPaths,
    split: Vec<std::ops::Range<usize>>,
) -> Result<Start, TrainError> {
    let resume = match paths.resume_dir()? {
        Some(run_dir) => {
            let dir = checkpoint::find(run_dir)?;
            let state = checkpoint::read_state(&dir, config, &split)?;
            Some(Resume { dir, state })
        }
        None => None,
    };
    let checkpoints = paths.checkpoints();
    if let Some(checkpointing) = &checkpoints {
        checkpoint::clear_staging(&checkpointing.run_dir)?;
    }
    Ok(Start {
        split,
        checkpoints,
        resume,
    })
}

/// The stage scalars rank `rank` sent with [`Tag::Saved`].
fn decode_saved(rank: usize, bytes: &[u8]) -> Result<StageState, MpiError> {
    serde_json::from_slice(bytes).map_err(|e| MpiError::Protocol {
        rank,
        cause: WireError::Invalid(format!("checkpoint stage state: {e}")),
    })
}

/// The stage this rank runs, with the state that carries over between epochs.
struct LocalStage {
    stage: BurnStage,
    index: u32,
    /// Updates applied so far (equal on every rank at epoch boundaries).
    updates: u64,
    fault: Option<Fault>,
}

impl LocalStage {
    /// Runs this stage's part of epoch `epoch`; returns the schedule and this rank's summary.
    fn run_epoch<F: Fabric>(
        &mut self,
        rank: &mut Rank<F>,
        pipeline: &Pipeline,
        epoch: u32,
        run: &RankRun<'_>,
    ) -> Result<(Schedule, Summary), MpiError> {
        let progress = run.progress;
        let config = pipeline.config();
        let work = pipeline.epoch_work(epoch)?;
        let num_minibatches = work.num_minibatches();
        check_plan(&work.schedule, &work.versions)?;
        let pool = stage_pool(self.index, Some(config.run.threads_per_stage))?;
        if self.index == 0 {
            progress.epoch_started(epoch, u64::from(num_minibatches));
        }
        let advanced: &(dyn Fn(u64) + Sync) = &|done| progress.advanced(done);
        let abort = AtomicBool::new(false);
        let context = StageContext {
            stage: self.index,
            num_stages: config.pipeline.num_stages,
            plan: &work.versions.stages[self.index as usize],
            abort: &abort,
            start: Instant::now(),
            version_offset: self.updates,
            on_update: (self.index == 0).then_some(advanced),
            stop: run.stop,
        };
        let mut compute = Faulty::new(&mut self.stage, self.index, epoch, self.fault);
        let output = rank.run_worker(&abort, run.stop, |frames| {
            let mut transport = WireTransport::<_, StageMessage>::new(frames);
            run_stage(
                &context,
                &mut compute,
                &mut transport,
                &work.feed,
                pool.as_ref(),
            )
        })??;
        let seconds = context.start.elapsed().as_secs_f64();
        self.updates += u64::from(num_minibatches);
        let summary = Summary {
            seconds,
            events: output.events,
            losses: output.losses,
            blocks: self
                .stage
                .live_params()
                .iter()
                .map(BlockValues::of)
                .collect(),
        };
        Ok((work.schedule, summary))
    }
}

/// The metrics of epoch `epoch` from every rank's summary (in rank order), recorded in the run
/// directory; after the last epoch, also the weights.
fn account(
    record: &mut RunRecord<'_>,
    pipeline: &Pipeline,
    epoch: u32,
    schedule: &Schedule,
    summaries: Vec<Summary>,
) -> Result<EpochMetrics, TrainError> {
    let config = pipeline.config();
    let report = RunReport {
        seconds: summaries.iter().map(|s| s.seconds).fold(0.0, f64::max),
        events: summaries.iter().map(|s| s.events.clone()).collect(),
        losses: summaries
            .last()
            .map(|s| s.losses.clone())
            .unwrap_or_default(),
    };
    let params = assemble_params(summaries, pipeline.initial());
    let metrics = epoch_metrics(epoch, schedule, pipeline.epoch_lr(epoch), &report, || {
        pipeline.evaluate(&params)
    })?;
    record.epoch(&metrics, schedule, &report)?;
    if epoch == config.optimisation.epochs {
        record.final_weights(&params)?;
    }
    Ok(metrics)
}
