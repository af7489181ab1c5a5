//! The stage worker: replays one stage's planned actions, whatever connects it to its neighbours.
//!
//! [`run_stage`] is the only place that executes actions. It reads messages from and sends
//! messages to a [`Transport`], calls the stage's [`StageCompute`] and logs one [`Event`] per
//! action. The threaded executor runs one of these per thread over channels; the MPI crate runs
//! one per process over MPI. Keeping a single loop is what makes the two bit-identical: the
//! same plan, replayed in the same order, on the same stage code.
//!
//! Failures never escape as panics: a panic or error inside the stage becomes a
//! [`RuntimeError::StageFailed`] naming the action, and the abort flag is raised before the
//! worker's transport is dropped, so neighbours see an abort rather than a disconnection.
//!
//! Stopping on request: the caller may pass a stop flag (raised by Ctrl-C or SIGTERM). A worker
//! reads it before each action, so a stop takes effect within one action, never in the middle
//! of one; the first worker that sees it raises the abort flag, which ends every wait. A worker
//! that stops while the stop flag is raised reports [`RuntimeError::Interrupted`] instead of a
//! failure, unless it failed for a reason of its own.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use timeprest_policy::{PlannedPass, StagePlan, VersionPlan};
use timeprest_schedule::{ActionKind, MicrobatchId, Schedule, validate};

use crate::compute::{BackwardWork, Feed, ForwardOutput, LossStats, StageCompute};
use crate::error::{RuntimeError, StageFailure};
use crate::event::Event;
use crate::transport::{Neighbour, Transport};

/// Everything a stage worker needs besides its compute and its transport.
#[derive(Clone, Copy)]
pub struct StageContext<'a> {
    /// The stage (0-based).
    pub stage: u32,
    /// W: the number of stages of the pipeline.
    pub num_stages: u32,
    /// The stage's planned actions.
    pub plan: &'a StagePlan,
    /// Raised when the run must stop; the worker raises it itself when it fails.
    pub abort: &'a AtomicBool,
    /// The instant event times are measured from.
    pub start: Instant,
    /// Versions in the plan count from 0; the stage already applied this many updates.
    pub version_offset: u64,
    /// Called after each update with the number of updates applied in this run so far.
    pub on_update: Option<&'a (dyn Fn(u64) + Sync)>,
    /// Raised by the caller to stop the run (Ctrl-C, SIGTERM); read before every action.
    pub stop: Option<&'a AtomicBool>,
}

impl StageContext<'_> {
    /// True once the caller raised the stop flag.
    pub fn stop_requested(&self) -> bool {
        self.stop.is_some_and(|stop| stop.load(Ordering::Relaxed))
    }
}

/// What a stage worker reports when its plan ran to the end.
#[derive(Clone, Debug, Default)]
pub struct StageOutput {
    /// The stage's events, in execution order.
    pub events: Vec<Event>,
    /// Loss statistics of every micro-batch (last stage only; empty elsewhere).
    pub losses: Vec<(MicrobatchId, LossStats)>,
}

/// Checks that `schedule` is valid and that `plan` was made for it.
pub fn check_plan(schedule: &Schedule, plan: &VersionPlan) -> Result<(), RuntimeError> {
    validate(schedule).map_err(|e| RuntimeError::InvalidSchedule(e.to_string()))?;
    let num_stages = schedule.config.num_stages as usize;
    if plan.stages.len() != num_stages {
        return Err(RuntimeError::Mismatch(format!(
            "schedule has {num_stages} stages, plan {}",
            plan.stages.len()
        )));
    }
    Ok(())
}

/// The intra-op thread pool of stage `stage`; `None` keeps rayon's global pool.
pub fn stage_pool(
    stage: u32,
    threads: Option<usize>,
) -> Result<Option<rayon::ThreadPool>, RuntimeError> {
    threads
        .map(|threads| {
            rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .thread_name(move |i| format!("stage-{stage}-op-{i}"))
                .build()
                .map_err(|e| RuntimeError::ThreadPool {
                    stage,
                    cause: e.to_string(),
                })
        })
        .transpose()
}

/// Runs the stage's plan to the end on the calling thread (inside `pool` if given), with stage
/// 0's inputs and the last stage's targets from `feed`, turning errors and panics into
/// [`RuntimeError::StageFailed`] and raising `context.abort` on failure.
/// A stage that stopped because the caller raised `context.stop` (and not for a failure of its
/// own) reports [`RuntimeError::Interrupted`].
pub fn run_stage<C, T>(
    context: &StageContext<'_>,
    compute: &mut C,
    transport: &mut T,
    feed: &dyn Feed<C::Message, C::Targets>,
    pool: Option<&rayon::ThreadPool>,
) -> Result<StageOutput, RuntimeError>
where
    C: StageCompute,
    T: Transport<C::Message> + Send,
{
    let mut current = String::from("start-up");
    let mut worker = Worker {
        context,
        compute,
        transport,
        feed,
    };
    let mut guarded = || catch_unwind(AssertUnwindSafe(|| worker.run(&mut current)));
    let outcome = match pool {
        Some(pool) => pool.install(guarded),
        None => guarded(),
    };
    if !matches!(outcome, Ok(Ok(_))) {
        context.abort.store(true, Ordering::Relaxed);
    }
    let cause = match outcome {
        Ok(Ok(output)) => return Ok(output),
        Ok(Err(cause)) => cause,
        Err(panic) => {
            let message = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "unknown panic".to_string());
            StageFailure::Panic(message)
        }
    };
    if cause == StageFailure::Aborted && context.stop_requested() {
        return Err(RuntimeError::Interrupted);
    }
    Err(RuntimeError::StageFailed {
        stage: context.stage,
        action: current,
        cause,
    })
}

struct Worker<'a, 'c, C: StageCompute, T> {
    context: &'a StageContext<'c>,
    compute: &'a mut C,
    transport: &'a mut T,
    feed: &'a dyn Feed<C::Message, C::Targets>,
}

impl<C: StageCompute, T: Transport<C::Message>> Worker<'_, '_, C, T> {
    fn is_first(&self) -> bool {
        self.context.stage == 0
    }

    fn is_last(&self) -> bool {
        self.context.stage + 1 == self.context.num_stages
    }

    fn take(
        &mut self,
        from: Neighbour,
        microbatch: MicrobatchId,
    ) -> Result<C::Message, StageFailure> {
        Ok(self.transport.take(from, microbatch, self.context.abort)?)
    }

    fn send(
        &mut self,
        to: Neighbour,
        microbatch: MicrobatchId,
        message: C::Message,
    ) -> Result<u64, StageFailure> {
        let bytes = C::message_bytes(&message);
        self.transport.send(to, microbatch, message)?;
        Ok(bytes)
    }

    /// Sends each micro-batch's input gradient to the previous stage (none from stage 0) and
    /// returns the bytes sent; refuses a backward that returned a gradient count other than
    /// its micro-batches', or no gradient where one must be sent.
    fn send_input_gradients(
        &mut self,
        microbatches: Vec<MicrobatchId>,
        gradients: Vec<Option<C::Message>>,
    ) -> Result<u64, StageFailure> {
        if gradients.len() != microbatches.len() {
            return Err(StageFailure::Protocol(format!(
                "backward returned {} input gradients for {} micro-batches",
                gradients.len(),
                microbatches.len()
            )));
        }
        if self.is_first() {
            return Ok(0);
        }
        let mut bytes_sent = 0;
        for (microbatch, gradient) in microbatches.into_iter().zip(gradients) {
            let payload = gradient.ok_or_else(|| {
                StageFailure::Protocol(format!(
                    "no input gradient for {microbatch:?} at a non-first stage"
                ))
            })?;
            bytes_sent += self.send(Neighbour::Previous, microbatch, payload)?;
        }
        Ok(bytes_sent)
    }

    fn run(&mut self, current: &mut String) -> Result<StageOutput, StageFailure> {
        let context = self.context;
        let offset = context.version_offset;
        let mut output = StageOutput {
            events: Vec::with_capacity(context.plan.actions.len()),
            losses: Vec::new(),
        };
        for planned in &context.plan.actions {
            *current = planned.action.to_string();
            if context.stop_requested() {
                context.abort.store(true, Ordering::Relaxed);
            }
            if context.abort.load(Ordering::Relaxed) {
                return Err(StageFailure::Aborted);
            }
            // An action starts when its inputs are here: waiting for a neighbour is idle time,
            // not work, so the clock is read again after every receive below. Reading stage 0's
            // inputs and the last stage's targets from the feed is the stage's own work (it
            // copies the batch), so it stays inside the action.
            let now = || context.start.elapsed().as_secs_f64();
            let mut began = now();
            let mut bytes_sent = 0;
            let mut recipes = Vec::new();
            let mut staleness = Vec::new();
            match (planned.action.kind, &planned.pass) {
                (
                    ActionKind::Forward(microbatch),
                    &PlannedPass::Forward {
                        recipe,
                        backward_reads_forward_weights,
                        ..
                    },
                ) => {
                    let recipe = recipe.shifted(offset);
                    recipes.push(recipe);
                    let input = if self.is_first() {
                        self.feed.input(microbatch)?
                    } else {
                        let activation = self.take(Neighbour::Previous, microbatch)?;
                        began = now();
                        activation
                    };
                    let targets = if self.is_last() {
                        Some(self.feed.targets(microbatch)?)
                    } else {
                        None
                    };
                    match self.compute.forward(
                        microbatch,
                        input,
                        targets,
                        &recipe,
                        backward_reads_forward_weights,
                    )? {
                        ForwardOutput::Activation(_) if self.is_last() => {
                            return Err(StageFailure::Protocol(
                                "the last stage produced activations instead of a loss".into(),
                            ));
                        }
                        ForwardOutput::Activation(payload) => {
                            bytes_sent += self.send(Neighbour::Next, microbatch, payload)?;
                        }
                        ForwardOutput::Loss(stats) => output.losses.push((microbatch, stats)),
                    }
                }
                (
                    ActionKind::BackwardMinibatch(_) | ActionKind::BackwardMicrobatch(_),
                    PlannedPass::Backward(backwards),
                ) => {
                    let mut work = Vec::with_capacity(backwards.len());
                    for backward in backwards {
                        let output_gradient = if self.is_last() {
                            None
                        } else {
                            Some(self.take(Neighbour::Next, backward.microbatch)?)
                        };
                        let recipe = backward.recipe.shifted(offset);
                        recipes.push(recipe);
                        staleness.push(backward.staleness);
                        work.push(BackwardWork {
                            microbatch: backward.microbatch,
                            recipe,
                            output_gradient,
                        });
                    }
                    began = now();
                    let microbatches: Vec<MicrobatchId> =
                        work.iter().map(|w| w.microbatch).collect();
                    let gradients = self.compute.backward(work)?;
                    bytes_sent += self.send_input_gradients(microbatches, gradients)?;
                }
                (ActionKind::Update(_), PlannedPass::Update { base }) => {
                    let base: Vec<_> = base.iter().map(|recipe| recipe.shifted(offset)).collect();
                    self.compute.update(&base)?;
                    if let Some(on_update) = context.on_update {
                        on_update(planned.live + 1);
                    }
                }
                (kind, pass) => panic!(
                    "the version plan pairs {kind:?} with {pass:?}: \
                     policy::plan always pairs an action with the pass of its kind"
                ),
            }
            for key in &planned.release_after {
                self.compute.release(key.shifted(offset));
            }
            output.events.push(Event {
                action: planned.action,
                start: began,
                end: now(),
                live: planned.live + offset,
                recipes,
                staleness,
                bytes_sent,
                stored_weight_bytes: self.compute.stored_weight_bytes(),
                stored_weight_sets: self.compute.stored_weight_sets(),
                activation_bytes: self.compute.activation_bytes_peak(),
            });
        }
        Ok(output)
    }
}
