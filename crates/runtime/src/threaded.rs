//! The threaded executor: one worker thread per stage, channels between neighbours.
//!
//! Each thread runs [`run_stage`] for its stage over a [`ChannelTransport`]; the plan comes from
//! [`timeprest_policy::plan`], so the weights every pass reads were decided before the run and
//! the run can be checked against the simulator.
//!
//! Failure handling: the workers share one abort flag, which a failing worker raises and every
//! waiting worker polls, so when any worker fails or panics every other one stops promptly and
//! the run returns the first failure that is not a consequence of another, naming the stage and
//! the cause. A run never hangs on a dead neighbour. The caller's stop flag
//! ([`RunOptions::stop`]) ends a run the same way, as [`RuntimeError::Interrupted`].

use std::sync::Mutex;
use std::sync::atomic::AtomicBool;
use std::time::Instant;

use timeprest_policy::VersionPlan;
use timeprest_schedule::{MicrobatchId, Schedule};

use crate::compute::{Feed, LossStats, StageCompute};
use crate::error::RuntimeError;
use crate::event::Event;
use crate::transport::ChannelTransport;
use crate::worker::{StageContext, StageOutput, check_plan, run_stage, stage_pool};

/// Options of a run.
#[derive(Clone, Copy)]
pub struct RunOptions<'a> {
    /// Intra-op threads per stage; `None` keeps the global pool.
    pub threads_per_stage: Option<usize>,
    /// Versions in the plan count from 0; the stages already applied this many updates.
    pub version_offset: u64,
    /// Called by stage 0 after each of its updates with the number of updates it applied in
    /// this run so far (for progress bars).
    pub on_first_stage_update: Option<&'a (dyn Fn(u64) + Sync)>,
    /// Raised by the caller to stop the run (Ctrl-C, SIGTERM): every stage stops before its
    /// next action and the run returns [`RuntimeError::Interrupted`].
    pub stop: Option<&'a AtomicBool>,
}

impl Default for RunOptions<'_> {
    fn default() -> Self {
        Self {
            threads_per_stage: Some(1),
            version_offset: 0,
            on_first_stage_update: None,
            stop: None,
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

/// Executes `plan` (made from `schedule`) on `stages`, one thread per stage, with stage 0's
/// inputs and the last stage's targets from `feed`.
pub fn run_threaded<C: StageCompute>(
    schedule: &Schedule,
    plan: &VersionPlan,
    stages: &mut [C],
    feed: &dyn Feed<C::Message, C::Targets>,
    options: RunOptions<'_>,
) -> Result<RunReport, RuntimeError> {
    check_plan(schedule, plan)?;
    let num_stages = schedule.config.num_stages;
    if stages.len() != num_stages as usize {
        return Err(RuntimeError::Mismatch(format!(
            "schedule has {num_stages} stages, stage computes {}",
            stages.len()
        )));
    }
    let abort = AtomicBool::new(false);
    let failures: Mutex<Vec<RuntimeError>> = Mutex::new(Vec::new());
    let pools = (0..num_stages)
        .map(|stage| stage_pool(stage, options.threads_per_stage))
        .collect::<Result<Vec<_>, _>>()?;
    let start = Instant::now();

    let results: Vec<Option<StageOutput>> = std::thread::scope(|scope| {
        let handles: Vec<_> = stages
            .iter_mut()
            .zip(ChannelTransport::pipeline(num_stages as usize))
            .zip(pools.iter())
            .enumerate()
            .map(|(stage, ((compute, mut transport), pool))| {
                let context = StageContext {
                    stage: stage as u32,
                    num_stages,
                    plan: &plan.stages[stage],
                    abort: &abort,
                    start,
                    version_offset: options.version_offset,
                    on_update: options.on_first_stage_update.filter(|_| stage == 0),
                    stop: options.stop,
                };
                let failures = &failures;
                std::thread::Builder::new()
                    .name(format!("stage-{stage}"))
                    .spawn_scoped(scope, move || {
                        match run_stage(&context, compute, &mut transport, feed, pool.as_ref()) {
                            Ok(output) => Some(output),
                            Err(error) => {
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
    // The first failure of a stage's own is the cause; an interruption comes next; stages that
    // only stopped because of another come last.
    let precedence = |failure: &RuntimeError| match failure {
        RuntimeError::Interrupted => 1,
        failure if failure.is_consequence() => 2,
        _ => 0,
    };
    if let Some(root) = (0..failures.len()).min_by_key(|&index| precedence(&failures[index])) {
        return Err(failures.swap_remove(root));
    }
    let mut report = RunReport {
        seconds: start.elapsed().as_secs_f64(),
        ..RunReport::default()
    };
    for output in results.into_iter().flatten() {
        report.events.push(output.events);
        report.losses.extend(output.losses);
    }
    Ok(report)
}
