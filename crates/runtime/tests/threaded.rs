//! The threaded executor with stages that do no maths: routing, event log, and failures.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use timeprest_policy::{
    Activations, PolicyKind, PolicyOptions, VersionPlan, WeightKey, WeightPolicy, WeightRecipe,
    plan,
};
use timeprest_runtime::{
    BackwardWork, ComputeError, Feed, ForwardOutput, LossStats, RunOptions, RunReport,
    RuntimeError, StageCompute, StageFailure, run_threaded,
};
use timeprest_schedule::{
    ActionKind, MicrobatchId, Schedule, ScheduleConfig, ScheduleKind, generate,
};

/// A stage that passes micro-batch ids along and keeps a faithful set of stored versions.
struct EchoStage {
    is_last: bool,
    live: u64,
    stored: BTreeSet<WeightKey>,
    panic_on_forward: Option<u32>,
    fail_on_update: Option<u64>,
    /// What the backward returns instead of one input gradient per micro-batch.
    broken_backward: Option<BrokenBackward>,
    /// Raises this flag at this forward, as a signal handler would mid-run.
    stop_at_forward: Option<(u32, Arc<AtomicBool>)>,
    forwards: u32,
}

impl EchoStage {
    fn new(is_last: bool) -> Self {
        Self {
            is_last,
            live: 0,
            stored: BTreeSet::from([WeightKey::Version(0)]),
            panic_on_forward: None,
            fail_on_update: None,
            broken_backward: None,
            stop_at_forward: None,
            forwards: 0,
        }
    }

    fn check_available(&self, recipe: &WeightRecipe) -> Result<(), ComputeError> {
        for key in recipe.needs() {
            if !self.stored.contains(&key) && !matches!(key, WeightKey::Predicted { .. }) {
                return Err(ComputeError(format!("{key:?} read after release")));
            }
        }
        Ok(())
    }
}

/// A backward that breaks the protocol.
#[derive(Clone, Copy)]
enum BrokenBackward {
    /// No input gradient at all.
    NoGradients,
    /// `None` in place of each input gradient.
    MissingGradient,
}

/// Feeds every micro-batch its own id, as input and as target.
struct IdFeed;

impl Feed<MicrobatchId, MicrobatchId> for IdFeed {
    fn input(&self, microbatch: MicrobatchId) -> Result<MicrobatchId, ComputeError> {
        Ok(microbatch)
    }

    fn targets(&self, microbatch: MicrobatchId) -> Result<MicrobatchId, ComputeError> {
        Ok(microbatch)
    }
}

impl StageCompute for EchoStage {
    type Message = MicrobatchId;
    type Targets = MicrobatchId;

    fn forward(
        &mut self,
        microbatch: MicrobatchId,
        input: MicrobatchId,
        targets: Option<MicrobatchId>,
        recipe: &WeightRecipe,
        _backward_reads_forward_weights: bool,
    ) -> Result<ForwardOutput<MicrobatchId>, ComputeError> {
        self.forwards += 1;
        if let Some((at, stop)) = &self.stop_at_forward
            && *at == self.forwards
        {
            stop.store(true, Ordering::Relaxed);
        }
        if self.panic_on_forward == Some(self.forwards) {
            panic!("injected fault in forward {}", self.forwards);
        }
        assert_eq!(input, microbatch, "message routed to the wrong micro-batch");
        assert_eq!(
            targets.is_some(),
            self.is_last,
            "targets go to the last stage only"
        );
        assert!(
            targets.is_none_or(|id| id == microbatch),
            "targets of another micro-batch"
        );
        self.check_available(recipe)?;
        if let WeightRecipe::Predict {
            base,
            horizon,
            method,
        } = *recipe
        {
            self.stored.insert(WeightKey::Predicted {
                base,
                horizon,
                method,
            });
        }
        Ok(if self.is_last {
            ForwardOutput::Loss(LossStats {
                loss_sum: 1.0,
                correct: 1,
                count: 1,
            })
        } else {
            ForwardOutput::Activation(microbatch)
        })
    }

    fn backward(
        &mut self,
        work: Vec<BackwardWork<MicrobatchId>>,
    ) -> Result<Vec<Option<MicrobatchId>>, ComputeError> {
        work.iter()
            .try_for_each(|w| self.check_available(&w.recipe))?;
        Ok(match self.broken_backward {
            None => work.into_iter().map(|w| Some(w.microbatch)).collect(),
            Some(BrokenBackward::NoGradients) => Vec::new(),
            Some(BrokenBackward::MissingGradient) => work.iter().map(|_| None).collect(),
        })
    }

    fn update(&mut self, base: &[WeightRecipe]) -> Result<(), ComputeError> {
        base.iter()
            .try_for_each(|recipe| self.check_available(recipe))?;
        if self.fail_on_update == Some(self.live) {
            return Err(ComputeError("injected optimizer failure".into()));
        }
        self.live += 1;
        self.stored.insert(WeightKey::Version(self.live));
        Ok(())
    }

    fn release(&mut self, key: WeightKey) {
        assert!(
            self.stored.remove(&key),
            "released {key:?} which is not stored"
        );
    }

    fn message_bytes(_: &MicrobatchId) -> u64 {
        8
    }

    fn stored_weight_bytes(&self) -> u64 {
        self.stored.len() as u64 * 100
    }

    fn stored_weight_sets(&self) -> u32 {
        self.stored.len() as u32
    }

    fn activation_bytes_peak(&mut self) -> u64 {
        0
    }
}

fn stages(num_stages: u32) -> Vec<EchoStage> {
    (0..num_stages)
        .map(|s| EchoStage::new(s + 1 == num_stages))
        .collect()
}

/// The schedule of `kind` for `config` and `policy`'s version plan on it.
fn planned(
    kind: ScheduleKind,
    config: &ScheduleConfig,
    policy: PolicyKind,
) -> (Schedule, VersionPlan) {
    let schedule = generate(kind, config).unwrap();
    let policy = WeightPolicy::new(policy, &PolicyOptions::default());
    let version_plan = plan(&schedule, &policy, Activations::Kept);
    (schedule, version_plan)
}

/// Runs `workers` on the plan with default options.
fn run_echo(
    schedule: &Schedule,
    version_plan: &VersionPlan,
    workers: &mut [EchoStage],
) -> Result<RunReport, RuntimeError> {
    run_threaded(
        schedule,
        version_plan,
        workers,
        &IdFeed,
        RunOptions::default(),
    )
}

#[test]
fn every_policy_runs_every_action_and_stores_what_the_plan_predicts() {
    for policy_kind in PolicyKind::ALL {
        let num_stages = if policy_kind == PolicyKind::Single {
            1
        } else {
            4
        };
        let (schedule, version_plan) = planned(
            policy_kind.default_schedule(),
            &ScheduleConfig::new(num_stages, 3, 12),
            policy_kind,
        );
        let mut workers = stages(num_stages);
        let report = run_echo(&schedule, &version_plan, &mut workers).unwrap();
        assert_eq!(report.events.len(), num_stages as usize);
        for (stage, events) in report.events.iter().enumerate() {
            let planned = &version_plan.stages[stage].actions;
            assert_eq!(events.len(), planned.len(), "{policy_kind} stage {stage}");
            for (event, planned) in events.iter().zip(planned) {
                assert_eq!(event.action, planned.action);
                assert_eq!(
                    event.stored_weight_sets, planned.held_after,
                    "{policy_kind} {}",
                    event.action
                );
            }
        }
        let config = schedule.config;
        assert_eq!(
            report.losses.len(),
            (config.num_minibatches * config.num_microbatches) as usize
        );
    }
}

/// Takes `delay` to hand out each input and each target, as a copy of a large batch would.
struct SlowFeed {
    delay: Duration,
}

impl Feed<MicrobatchId, MicrobatchId> for SlowFeed {
    fn input(&self, microbatch: MicrobatchId) -> Result<MicrobatchId, ComputeError> {
        std::thread::sleep(self.delay);
        Ok(microbatch)
    }

    fn targets(&self, microbatch: MicrobatchId) -> Result<MicrobatchId, ComputeError> {
        std::thread::sleep(self.delay);
        Ok(microbatch)
    }
}

#[test]
fn reading_the_feed_is_part_of_the_forward_it_serves() {
    // The cost model replays a run from its logged action durations: time stage 0 spends
    // copying its inputs, and the last stage its targets, is work the schedule must account
    // for, unlike the wait for a neighbour's message.
    let delay = Duration::from_millis(3);
    let (schedule, version_plan) = planned(
        ScheduleKind::Gpipe,
        &ScheduleConfig::new(2, 2, 1),
        PolicyKind::Gpipe,
    );
    let report = run_threaded(
        &schedule,
        &version_plan,
        &mut stages(2),
        &SlowFeed { delay },
        RunOptions::default(),
    )
    .unwrap();
    let forwards: Vec<_> = report
        .events
        .iter()
        .flatten()
        .filter(|e| matches!(e.action.kind, ActionKind::Forward(_)))
        .collect();
    assert_eq!(forwards.len(), 4);
    for event in forwards {
        assert!(
            event.end - event.start >= delay.as_secs_f64(),
            "{} lasted {:.4} s, less than its feed",
            event.action,
            event.end - event.start
        );
    }
}

#[test]
fn a_panicking_stage_ends_the_run_with_an_error_naming_it() {
    let (schedule, version_plan) = planned(
        ScheduleKind::Nf1b,
        &ScheduleConfig::new(4, 3, 50),
        PolicyKind::Timeprest,
    );
    let mut workers = stages(4);
    workers[2].panic_on_forward = Some(20);
    let started = Instant::now();
    let error = run_echo(&schedule, &version_plan, &mut workers).unwrap_err();
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "took {:?}",
        started.elapsed()
    );
    match error {
        RuntimeError::StageFailed {
            stage,
            action,
            cause,
        } => {
            assert_eq!(stage, 2);
            assert!(action.starts_with("2F"), "{action}");
            assert!(
                matches!(&cause, StageFailure::Panic(message) if message.contains("injected fault")),
                "{cause:?}"
            );
        }
        other => panic!("unexpected error {other}"),
    }
}

#[test]
fn a_failing_update_ends_the_run_with_its_cause() {
    let (schedule, version_plan) = planned(
        ScheduleKind::OneFOneB,
        &ScheduleConfig::new(3, 1, 30),
        PolicyKind::Pipedream,
    );
    let mut workers = stages(3);
    workers[0].fail_on_update = Some(4);
    let error = run_echo(&schedule, &version_plan, &mut workers).unwrap_err();
    let text = error.to_string();
    assert!(
        text.contains("stage 0") && text.contains("0U4") && text.contains("injected optimizer"),
        "{text}"
    );
}

#[test]
fn a_backward_that_breaks_the_protocol_ends_the_run_naming_what_it_returned() {
    let (schedule, version_plan) = planned(
        ScheduleKind::Gpipe,
        &ScheduleConfig::new(3, 2, 2),
        PolicyKind::Gpipe,
    );
    for (broken, expected) in [
        (
            BrokenBackward::NoGradients,
            "backward returned 0 input gradients for 1 micro-batches",
        ),
        (BrokenBackward::MissingGradient, "no input gradient for"),
    ] {
        let mut workers = stages(3);
        workers[1].broken_backward = Some(broken);
        let error = run_echo(&schedule, &version_plan, &mut workers).unwrap_err();
        match error {
            RuntimeError::StageFailed {
                stage: 1,
                cause: StageFailure::Protocol(message),
                ..
            } => assert!(message.contains(expected), "{message}"),
            other => panic!("expected stage 1's protocol failure, got {other}"),
        }
    }
}

#[test]
fn mismatched_stage_count_is_rejected() {
    let (schedule, version_plan) = planned(
        ScheduleKind::Gpipe,
        &ScheduleConfig::new(3, 2, 2),
        PolicyKind::Gpipe,
    );
    let mut workers = stages(2);
    let error = run_echo(&schedule, &version_plan, &mut workers).unwrap_err();
    assert!(matches!(error, RuntimeError::Mismatch(_)), "{error}");
}

/// Runs a 3-stage nF1B TiMePReSt plan of 40 mini-batches with a stop flag that `prepare` hands
/// to the stages; returns the run's error and the stages.
fn run_with_stop_flag(
    prepare: impl FnOnce(&mut [EchoStage], &Arc<AtomicBool>),
) -> (RuntimeError, Vec<EchoStage>) {
    let (schedule, version_plan) = planned(
        ScheduleKind::Nf1b,
        &ScheduleConfig::new(3, 2, 40),
        PolicyKind::Timeprest,
    );
    let mut workers = stages(3);
    let stop = Arc::new(AtomicBool::new(false));
    prepare(&mut workers, &stop);
    let options = RunOptions {
        stop: Some(&stop),
        ..RunOptions::default()
    };
    let error = run_threaded(&schedule, &version_plan, &mut workers, &IdFeed, options).unwrap_err();
    (error, workers)
}

#[test]
fn a_raised_stop_flag_ends_the_run_as_interrupted_before_the_next_action() {
    let (error, workers) = run_with_stop_flag(|workers, stop| {
        workers[1].stop_at_forward = Some((5, Arc::clone(stop)));
    });
    assert!(matches!(error, RuntimeError::Interrupted), "{error}");
    assert_eq!(error.to_string(), "interrupted");
    // Stage 1 ran no forward after the one that raised the flag.
    assert_eq!(workers[1].forwards, 5);
    let planned_forwards = 2 * 40;
    assert!(workers.iter().all(|w| w.forwards < planned_forwards));
}

#[test]
fn a_failure_of_its_own_outranks_an_interruption() {
    // Stage 2 raises the stop flag and then panics in the same forward: the other stages stop
    // as interrupted, the run reports stage 2's failure.
    let (error, _) = run_with_stop_flag(|workers, stop| {
        workers[2].stop_at_forward = Some((6, Arc::clone(stop)));
        workers[2].panic_on_forward = Some(6);
    });
    assert!(
        matches!(&error, RuntimeError::StageFailed { stage: 2, .. }),
        "{error}"
    );
}
