//! What the threaded runtime itself costs, with stages that do no maths.
//!
//! `run_threaded` with a no-op [`StageCompute`] (the message is the micro-batch id) on nF1B
//! (TiMePReSt) and GPipe schedules with W = 4, N = 4, M = 256 mini-batches: criterion's
//! throughput is in actions, so its "time per element" is the runtime's cost per executed action
//! (the goal is under 20 µs; a real stage action takes milliseconds). The same run with
//! M = 1 gives the fixed cost of a run (validation, thread pools, threads), and `plan` and
//! `validate` are measured alone because every epoch pays for them too.

// `criterion_group!` generates an undocumented public function.
#![allow(missing_docs)]

use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use timeprest_policy::{
    Activations, PolicyKind, PolicyOptions, VersionPlan, WeightKey, WeightPolicy, WeightRecipe,
    plan,
};
use timeprest_runtime::{
    BackwardWork, ComputeError, Feed, ForwardOutput, LossStats, RunOptions, StageCompute,
    run_threaded,
};
use timeprest_schedule::{
    MicrobatchId, Schedule, ScheduleConfig, ScheduleKind, generate, validate,
};

/// A stage that does nothing: forwards pass the micro-batch id on, backwards hand it back.
struct NoopStage {
    is_last: bool,
    sets: u32,
}

/// Feeds stage 0 the micro-batch's id and the last stage nothing.
struct NoopFeed;

impl Feed<MicrobatchId, ()> for NoopFeed {
    fn input(&self, microbatch: MicrobatchId) -> Result<MicrobatchId, ComputeError> {
        Ok(microbatch)
    }

    fn targets(&self, _microbatch: MicrobatchId) -> Result<(), ComputeError> {
        Ok(())
    }
}

impl StageCompute for NoopStage {
    type Message = MicrobatchId;
    type Targets = ();

    fn forward(
        &mut self,
        microbatch: MicrobatchId,
        _input: MicrobatchId,
        _targets: Option<()>,
        _recipe: &WeightRecipe,
        _backward_reads_forward_weights: bool,
    ) -> Result<ForwardOutput<MicrobatchId>, ComputeError> {
        Ok(if self.is_last {
            ForwardOutput::Loss(LossStats {
                loss_sum: 0.0,
                correct: 0,
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
        Ok(work.into_iter().map(|w| Some(w.microbatch)).collect())
    }

    fn update(&mut self, _base: &[WeightRecipe]) -> Result<(), ComputeError> {
        self.sets += 1;
        Ok(())
    }

    fn release(&mut self, _key: WeightKey) {
        self.sets = self.sets.saturating_sub(1);
    }

    fn message_bytes(_: &MicrobatchId) -> u64 {
        8
    }

    fn stored_weight_bytes(&self) -> u64 {
        u64::from(self.sets) * 4
    }

    fn stored_weight_sets(&self) -> u32 {
        self.sets
    }

    fn activation_bytes_peak(&mut self) -> u64 {
        0
    }
}

fn noop_stages(num_stages: u32) -> Vec<NoopStage> {
    (0..num_stages)
        .map(|s| NoopStage {
            is_last: s + 1 == num_stages,
            sets: 1,
        })
        .collect()
}

fn setup(
    schedule_kind: ScheduleKind,
    policy_kind: PolicyKind,
    minibatches: u32,
) -> (Schedule, VersionPlan, u64) {
    let schedule = generate(schedule_kind, &ScheduleConfig::new(4, 4, minibatches)).unwrap();
    let policy = WeightPolicy::new(policy_kind, &PolicyOptions::default());
    let version_plan = plan(&schedule, &policy, Activations::Kept);
    let actions = schedule.stages.iter().map(|row| row.len() as u64).sum();
    (schedule, version_plan, actions)
}

fn run(schedule: &Schedule, version_plan: &VersionPlan) {
    let mut stages = noop_stages(schedule.config.num_stages);
    let report = run_threaded(
        schedule,
        version_plan,
        &mut stages,
        &NoopFeed,
        RunOptions::default(),
    )
    .unwrap();
    black_box(report);
}

fn per_action(c: &mut Criterion) {
    let cases = [
        ("nf1b_timeprest", ScheduleKind::Nf1b, PolicyKind::Timeprest),
        ("gpipe", ScheduleKind::Gpipe, PolicyKind::Gpipe),
    ];
    let mut group = c.benchmark_group("run_threaded_noop_w4_n4");
    group.sample_size(20);
    for (name, schedule_kind, policy_kind) in cases {
        for minibatches in [256, 1] {
            let (schedule, version_plan, actions) = setup(schedule_kind, policy_kind, minibatches);
            group.throughput(Throughput::Elements(actions));
            group.bench_function(BenchmarkId::new(name, format!("m{minibatches}")), |b| {
                b.iter(|| run(&schedule, &version_plan))
            });
        }
    }
    group.finish();
}

fn planning(c: &mut Criterion) {
    let (schedule, _, actions) = setup(ScheduleKind::Nf1b, PolicyKind::Timeprest, 256);
    let mut group = c.benchmark_group("per_epoch_w4_n4_m256");
    group.throughput(Throughput::Elements(actions));
    for policy_kind in [
        PolicyKind::Timeprest,
        PolicyKind::ITimeprest,
        PolicyKind::Pipedream,
    ] {
        let policy = WeightPolicy::new(policy_kind, &PolicyOptions::default());
        group.bench_function(BenchmarkId::new("plan_nf1b", policy_kind.name()), |b| {
            b.iter(|| plan(black_box(&schedule), &policy, Activations::Kept))
        });
    }
    group.bench_function("validate_nf1b", |b| {
        b.iter(|| validate(black_box(&schedule)).unwrap())
    });
    group.finish();
}

criterion_group!(benches, per_action, planning);
criterion_main!(benches);
