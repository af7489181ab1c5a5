//! The threaded executor: one worker thread per stage, channels between neighbours.
//!
//! Each worker replays its stage's planned actions in order (the plan comes from
//! [`timeprest_policy::plan`], so the weights every pass reads were decided before the run and
//! the run can be checked against the simulator). Messages carry the micro-batch they belong
//! to; a worker that needs a message that has not arrived yet waits for it, buffering others.
//!
//! Failure handling is the reason for the shape of the waiting loop: a worker never blocks for
//! more than a few milliseconds without checking a shared abort flag, so when any worker fails
//! or panics, every other worker stops promptly and the run returns the first failure, naming
//! the stage and the cause. A run never hangs on a dead neighbour.

use std::collections::HashMap;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender, unbounded};
use timeprest_policy::{StagePlan, VersionPlan};
use timeprest_schedule::{ActionKind, MicrobatchId, Schedule, validate};

use crate::compute::{BackwardWork, ForwardOutput, LossStats, StageCompute};
use crate::event::Event;

/// How often a waiting worker checks whether the run was aborted.
const ABORT_POLL: Duration = Duration::from_millis(5);

/// Why a run failed.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// The schedule did not validate; the runtime executes only valid schedules.
    #[error("refusing to run an invalid schedule:\n{0}")]
    InvalidSchedule(String),
    /// The plan, schedule and stage computes disagree in shape.
    #[error("configuration mismatch: {0}")]
    Mismatch(String),
    /// A stage failed; the first failure of the run.
    #[error("stage {stage} failed during {action}: {cause}")]
    StageFailed {
        /// The stage (0-based).
        stage: u32,
        /// The action it was running, in the schedule's text form.
        action: String,
        /// The cause.
        cause: String,
    },
    /// Could not build a stage's thread pool.
    #[error("could not create the thread pool of stage {stage}: {cause}")]
    ThreadPool {
        /// The stage.
        stage: u32,
        /// The cause.
        cause: String,
    },
}

/// Options of a threaded run.
#[derive(Clone, Copy)]
pub struct RunOptions<'a> {
    /// Intra-op threads per stage; `None` keeps the global pool.
    pub threads_per_stage: Option<usize>,
    /// Versions in the plan count from 0; the stages already applied this many updates.
    pub version_offset: u64,
    /// Called by stage 0 after each of its updates with the number of updates it applied in
    /// this run so far (for progress bars).
    pub on_first_stage_update: Option<&'a (dyn Fn(u64) + Sync)>,
}

impl Default for RunOptions<'_> {
    fn default() -> Self {
        Self {
            threads_per_stage: Some(1),
            version_offset: 0,
            on_first_stage_update: None,
        }
    }
}

/// What a successful run reports.
#[derive(Clone, Debug, Default)]
pub struct RunReport {
    /// Events per stage, in execution order.
    pub events: Vec<Vec<Event>>,
    /// Loss statistics of every micro-batch, as the last stage computed them.
    pub losses: Vec<(MicrobatchId, LossStats)>,
    /// Wall-clock seconds of the run.
    pub seconds: f64,
}

/// A message between neighbouring stages.
struct Envelope<M> {
    microbatch: MicrobatchId,
    payload: M,
}

/// One direction of a stage's inbox, with the messages that arrived before they were needed.
struct Inbox<M> {
    receiver: Receiver<Envelope<M>>,
    early: HashMap<MicrobatchId, M>,
}

impl<M> Inbox<M> {
    fn new(receiver: Receiver<Envelope<M>>) -> Self {
        Self {
            receiver,
            early: HashMap::new(),
        }
    }

    /// Waits for the message of `microbatch`; `Err` if the run was aborted or the sender died.
    fn take(&mut self, microbatch: MicrobatchId, abort: &AtomicBool) -> Result<M, String> {
        if let Some(payload) = self.early.remove(&microbatch) {
            return Ok(payload);
        }
        loop {
            if abort.load(Ordering::Relaxed) {
                return Err(ABORTED.to_string());
            }
            match self.receiver.recv_timeout(ABORT_POLL) {
                Ok(envelope) if envelope.microbatch == microbatch => return Ok(envelope.payload),
                Ok(envelope) => {
                    self.early.insert(envelope.microbatch, envelope.payload);
                }
                Err(RecvTimeoutError::Timeout) => {}
                // A neighbour only hangs up early when it failed; its own error is the cause.
                Err(RecvTimeoutError::Disconnected) => return Err(ABORTED.to_string()),
            }
        }
    }
}

/// The cause recorded by workers that stop because another one failed.
const ABORTED: &str = "aborted because another stage failed";

/// A stage worker's connections.
struct Links<M> {
    from_previous: Option<Inbox<M>>,
    from_next: Option<Inbox<M>>,
    to_next: Option<Sender<Envelope<M>>>,
    to_previous: Option<Sender<Envelope<M>>>,
}

/// Executes `plan` (made from `schedule`) on `stages`, one thread per stage.
pub fn run_threaded<C: StageCompute>(
    schedule: &Schedule,
    plan: &VersionPlan,
    stages: &mut [C],
    options: RunOptions<'_>,
) -> Result<RunReport, RuntimeError> {
    validate(schedule).map_err(|e| RuntimeError::InvalidSchedule(e.to_string()))?;
    let num_stages = schedule.config.num_stages as usize;
    if plan.stages.len() != num_stages || stages.len() != num_stages {
        return Err(RuntimeError::Mismatch(format!(
            "schedule has {num_stages} stages, plan {}, stage computes {}",
            plan.stages.len(),
            stages.len()
        )));
    }
    let mut links = make_links::<C::Message>(num_stages);
    let abort = AtomicBool::new(false);
    let failures: Mutex<Vec<RuntimeError>> = Mutex::new(Vec::new());
    let start = Instant::now();
    let pools = (0..num_stages)
        .map(|stage| build_pool(stage as u32, options.threads_per_stage))
        .collect::<Result<Vec<_>, _>>()?;

    let results: Vec<Option<WorkerOutput>> = std::thread::scope(|scope| {
        let handles: Vec<_> = stages
            .iter_mut()
            .zip(plan.stages.iter())
            .zip(links.drain(..))
            .zip(pools.iter())
            .enumerate()
            .map(|(stage, (((compute, stage_plan), links), pool))| {
                let abort = &abort;
                let failures = &failures;
                std::thread::Builder::new()
                    .name(format!("stage-{stage}"))
                    .spawn_scoped(scope, move || {
                        let worker = Worker {
                            stage: stage as u32,
                            compute,
                            plan: stage_plan,
                            links,
                            abort,
                            start,
                            offset: options.version_offset,
                            on_update: if stage == 0 {
                                options.on_first_stage_update
                            } else {
                                None
                            },
                        };
                        let outcome = match pool {
                            Some(pool) => pool.install(|| worker.run_guarded()),
                            None => worker.run_guarded(),
                        };
                        match outcome {
                            Ok(result) => Some(result),
                            Err(error) => {
                                abort.store(true, Ordering::Relaxed);
                                failures.lock().expect("failure list poisoned").push(error);
                                None
                            }
                        }
                    })
                    .expect("spawning a stage thread")
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("stage thread panicked outside guard"))
            .collect()
    });

    let mut failures = failures.into_inner().expect("failure list poisoned");
    if !failures.is_empty() {
        // The root cause is the first failure that is not a consequence of another one.
        let root = failures
            .iter()
            .position(|f| !matches!(f, RuntimeError::StageFailed { cause, .. } if cause == ABORTED))
            .unwrap_or(0);
        return Err(failures.swap_remove(root));
    }
    let mut report = RunReport {
        seconds: start.elapsed().as_secs_f64(),
        ..RunReport::default()
    };
    for (events, losses) in results.into_iter().flatten() {
        report.events.push(events);
        report.losses.extend(losses);
    }
    Ok(report)
}

fn build_pool(
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

fn make_links<M>(num_stages: usize) -> Vec<Links<M>> {
    let mut links: Vec<Links<M>> = (0..num_stages)
        .map(|_| Links {
            from_previous: None,
            from_next: None,
            to_next: None,
            to_previous: None,
        })
        .collect();
    for stage in 0..num_stages.saturating_sub(1) {
        let (forward_tx, forward_rx) = unbounded();
        let (backward_tx, backward_rx) = unbounded();
        links[stage].to_next = Some(forward_tx);
        links[stage + 1].from_previous = Some(Inbox::new(forward_rx));
        links[stage + 1].to_previous = Some(backward_tx);
        links[stage].from_next = Some(Inbox::new(backward_rx));
    }
    links
}

struct Worker<'a, C: StageCompute> {
    stage: u32,
    compute: &'a mut C,
    plan: &'a StagePlan,
    links: Links<C::Message>,
    abort: &'a AtomicBool,
    start: Instant,
    offset: u64,
    on_update: Option<&'a (dyn Fn(u64) + Sync)>,
}

type WorkerOutput = (Vec<Event>, Vec<(MicrobatchId, LossStats)>);

impl<C: StageCompute> Worker<'_, C> {
    /// Runs the stage, turning both errors and panics into a [`RuntimeError`].
    fn run_guarded(mut self) -> Result<WorkerOutput, RuntimeError> {
        let stage = self.stage;
        let mut current = String::from("start-up");
        let outcome = catch_unwind(AssertUnwindSafe(|| self.run(&mut current)));
        if !matches!(outcome, Ok(Ok(_))) {
            // Raise the flag before this worker's channels close, so that neighbours see an
            // abort rather than a disconnection they might report first.
            self.abort.store(true, Ordering::Relaxed);
        }
        match outcome {
            Ok(Ok(output)) => Ok(output),
            Ok(Err(cause)) => Err(RuntimeError::StageFailed {
                stage,
                action: current,
                cause,
            }),
            Err(panic) => {
                let cause = panic
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_else(|| "unknown panic".to_string());
                Err(RuntimeError::StageFailed {
                    stage,
                    action: current,
                    cause: format!("panic: {cause}"),
                })
            }
        }
    }

    fn run(&mut self, current: &mut String) -> Result<WorkerOutput, String> {
        let mut events = Vec::with_capacity(self.plan.actions.len());
        let mut losses = Vec::new();
        for planned in &self.plan.actions {
            *current = planned.action.to_string();
            if self.abort.load(Ordering::Relaxed) {
                return Err(ABORTED.to_string());
            }
            let began = self.start.elapsed().as_secs_f64();
            let mut bytes_sent = 0;
            let mut recipes = Vec::new();
            let mut staleness = Vec::new();
            match planned.action.kind {
                ActionKind::Forward(microbatch) => {
                    let (recipe, _tag) = planned.forward.expect("a planned forward has a recipe");
                    let recipe = recipe.shifted(self.offset);
                    recipes.push(recipe);
                    let input = match self.links.from_previous.as_mut() {
                        Some(inbox) => Some(inbox.take(microbatch, self.abort)?),
                        None => None,
                    };
                    match self
                        .compute
                        .forward(microbatch, input, &recipe)
                        .map_err(|e| e.0)?
                    {
                        ForwardOutput::Activation(payload) => {
                            bytes_sent += C::message_bytes(&payload);
                            let sender = self.links.to_next.as_ref().ok_or_else(|| {
                                "the last stage produced activations instead of a loss".to_string()
                            })?;
                            sender
                                .send(Envelope {
                                    microbatch,
                                    payload,
                                })
                                .map_err(|_| ABORTED.to_string())?;
                        }
                        ForwardOutput::Loss(stats) => losses.push((microbatch, stats)),
                    }
                }
                ActionKind::BackwardMinibatch(_) | ActionKind::BackwardMicrobatch(_) => {
                    let mut work = Vec::with_capacity(planned.backward.len());
                    for backward in &planned.backward {
                        let output_gradient = match self.links.from_next.as_mut() {
                            Some(inbox) => Some(inbox.take(backward.microbatch, self.abort)?),
                            None => None,
                        };
                        let recipe = backward.recipe.shifted(self.offset);
                        recipes.push(recipe);
                        staleness.push(backward.staleness);
                        work.push(BackwardWork {
                            microbatch: backward.microbatch,
                            recipe,
                            output_gradient,
                        });
                    }
                    let microbatches: Vec<MicrobatchId> =
                        work.iter().map(|w| w.microbatch).collect();
                    let gradients = self.compute.backward(work).map_err(|e| e.0)?;
                    if gradients.len() != microbatches.len() {
                        return Err(format!(
                            "backward returned {} input gradients for {} micro-batches",
                            gradients.len(),
                            microbatches.len()
                        ));
                    }
                    if let Some(sender) = self.links.to_previous.as_ref() {
                        for (microbatch, gradient) in microbatches.into_iter().zip(gradients) {
                            let payload = gradient.ok_or_else(|| {
                                format!("no input gradient for {microbatch:?} at a non-first stage")
                            })?;
                            bytes_sent += C::message_bytes(&payload);
                            sender
                                .send(Envelope {
                                    microbatch,
                                    payload,
                                })
                                .map_err(|_| ABORTED.to_string())?;
                        }
                    }
                }
                ActionKind::Update(_) => {
                    self.compute.update().map_err(|e| e.0)?;
                    if let Some(on_update) = self.on_update {
                        on_update(planned.live + 1);
                    }
                }
            }
            for key in &planned.release_after {
                self.compute.release(key.shifted(self.offset));
            }
            events.push(Event {
                action: planned.action,
                start: began,
                end: self.start.elapsed().as_secs_f64(),
                live: planned.live + self.offset,
                recipes,
                staleness,
                bytes_sent,
                stored_weight_bytes: self.compute.stored_weight_bytes(),
                stored_weight_sets: self.compute.stored_weight_sets(),
            });
        }
        Ok((events, losses))
    }
}
