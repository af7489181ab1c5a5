//! Simulator fidelity: does the cost-model simulator predict a real run's makespan?
//!
//! Trains real epochs (`Trainer::run_epoch`, W = 3, MLP 784-1024-1024-1024-10 on Fashion-MNIST,
//! or the embedded digits set when its IDX files are missing), takes the per-stage mean
//! forward / backward / update durations from the epoch's event log, feeds them into a
//! per-stage [`CostModel`] and simulates the same schedule with `simulate_costs`. It prints
//! predicted makespan / measured epoch time (goal ≥ 0.95) per policy, the policies alternating
//! within each repetition so that machine noise hits them alike.
//!
//! Two cost models are compared, because an event's `start` is taken *before* the worker waits
//! for its input message: `raw` uses `end − start` as logged (wait included), `compute`
//! removes the wait by starting each action no earlier than the end of the neighbour's action
//! whose message it consumes. Only `compute` is a cost model in the simulator's sense.
//!
//! With `projection` as first argument it instead projects 2-stage pipeline scaling for a
//! machine whose two cores are free, from runs that do not need them: the per-stage costs
//! come from the `naive` schedule at W = 2 (one action at a time in the whole pipeline, so the
//! stages never compete for a core), the gpipe / 1f1b-flush / nf1b / 1f1b schedules are
//! simulated with them, and the projected throughput is divided by the measured throughput of
//! `single` (W = 1, 1 thread) run alternately with it, so machine load that slows both alike
//! cancels. This is the number to read when other jobs hold the cores (the measured scaling
//! of `bench/scaling.py` then cannot exceed the share the machine gives us).
//!
//! Not a criterion benchmark (it measures ratios, not durations):
//! `cargo bench -p timeprest-train --bench fidelity -- [digits|fashion-mnist] [repetitions]`,
//! `cargo bench -p timeprest-train --bench fidelity -- projection [repetitions]`.

use std::collections::HashMap;

use timeprest_policy::PolicyKind;
use timeprest_runtime::Event;
use timeprest_schedule::{
    Action, ActionKind, CostModel, Schedule, ScheduleConfig, ScheduleKind, generate,
    simulate_costs,
};
use timeprest_train::{EpochRun, TrainConfig, Trainer};

/// Mean measured durations per stage, in seconds.
#[derive(Debug)]
struct StageCosts {
    forward: Vec<f64>,
    backward_minibatch: Vec<f64>,
    backward_microbatch: Vec<f64>,
    update: Vec<f64>,
}

impl CostModel for StageCosts {
    fn forward(&self, stage: u32) -> f64 {
        self.forward[stage as usize]
    }
    fn backward_minibatch(&self, stage: u32, _num_microbatches: u32) -> f64 {
        self.backward_minibatch[stage as usize]
    }
    fn backward_microbatch(&self, stage: u32) -> f64 {
        self.backward_microbatch[stage as usize]
    }
    fn update(&self, stage: u32) -> f64 {
        self.update[stage as usize]
    }
    fn transfer(&self, _from_stage: u32, _to_stage: u32) -> f64 {
        0.0
    }
}

/// The neighbour's action whose message `action` consumes (the last one, for a whole-mini-batch
/// backward), if any.
fn message_source(action: Action, num_stages: u32) -> Option<Action> {
    let last = num_stages - 1;
    match action.kind {
        ActionKind::Forward(_) if action.stage > 0 => Some(Action {
            stage: action.stage - 1,
            kind: action.kind,
        }),
        ActionKind::BackwardMinibatch(_) | ActionKind::BackwardMicrobatch(_)
            if action.stage < last =>
        {
            Some(Action {
                stage: action.stage + 1,
                kind: action.kind,
            })
        }
        _ => None,
    }
}

/// Per-stage mean durations; `without_wait` starts an action no earlier than its message's
/// sender finished.
fn stage_costs(events: &[Vec<Event>], without_wait: bool) -> StageCosts {
    let num_stages = events.len() as u32;
    let end_of: HashMap<Action, f64> = events.iter().flatten().map(|e| (e.action, e.end)).collect();
    let mut sums = vec![[(0.0f64, 0u32); 4]; events.len()];
    for (stage, stage_events) in events.iter().enumerate() {
        for event in stage_events {
            let mut start = event.start;
            if without_wait && let Some(source) = message_source(event.action, num_stages) {
                start = start.max(end_of[&source]);
            }
            let slot = match event.action.kind {
                ActionKind::Forward(_) => 0,
                ActionKind::BackwardMinibatch(_) => 1,
                ActionKind::BackwardMicrobatch(_) => 2,
                ActionKind::Update(_) => 3,
            };
            sums[stage][slot].0 += (event.end - start).max(0.0);
            sums[stage][slot].1 += 1;
        }
    }
    let mean = |slot: usize| -> Vec<f64> {
        sums.iter()
            .map(|s| s[slot].0 / f64::from(s[slot].1.max(1)))
            .collect()
    };
    StageCosts {
        forward: mean(0),
        backward_minibatch: mean(1),
        backward_microbatch: mean(2),
        update: mean(3),
    }
}

fn predicted(schedule: &Schedule, costs: &StageCosts) -> f64 {
    simulate_costs(schedule, costs)
        .expect("the epoch's schedule is valid")
        .makespan()
}

fn config(dataset: &str, policy: PolicyKind) -> TrainConfig {
    let fashion = dataset == "fashion-mnist";
    TrainConfig {
        hidden: if fashion {
            vec![1024, 1024, 1024]
        } else {
            vec![128, 64]
        },
        dataset: dataset.into(),
        limit_train: fashion.then_some(3840),
        limit_test: Some(512),
        stages: 3,
        microbatches: if policy == PolicyKind::Pipedream {
            1
        } else {
            4
        },
        batch_size: if fashion { 128 } else { 32 },
        lr: 0.01,
        policy,
        epochs: 2,
        ..TrainConfig::default()
    }
}

/// A 2-stage configuration for the projection: MLP `hidden` on Fashion-MNIST, batch 128.
fn projection_config(hidden: &[usize], policy: PolicyKind, microbatches: u32) -> TrainConfig {
    TrainConfig {
        hidden: hidden.to_vec(),
        dataset: "fashion-mnist".into(),
        limit_train: Some(3840),
        limit_test: Some(256),
        stages: if policy == PolicyKind::Single { 1 } else { 2 },
        microbatches,
        batch_size: 128,
        lr: 0.01,
        policy,
        ..TrainConfig::default()
    }
}

fn samples_per_second(run: &EpochRun) -> f64 {
    run.metrics.samples_per_second
}

/// Projected speed-up of 2-stage pipelines over `single` with one thread (see the module doc).
fn projection(repetitions: usize) {
    println!("# projected 2-stage scaling (naive-schedule costs, simulated), Fashion-MNIST, M=128");
    println!("model\tschedule\tN\tprojected/single(N=1)\tprojected/single(same N)");
    let targets = [
        (ScheduleKind::Gpipe, 4),
        (ScheduleKind::OneFOneBFlush, 4),
        (ScheduleKind::Nf1b, 4),
        (ScheduleKind::OneFOneB, 1),
    ];
    for (label, hidden) in [
        ("784-1024-1024-1024-10", vec![1024, 1024, 1024]),
        ("balanced 784-1024-1024-1792-10", vec![1024, 1024, 1792]),
    ] {
        let mut trainers: Vec<(PolicyKind, u32, Trainer)> = [
            (PolicyKind::Single, 1),
            (PolicyKind::Single, 4),
            (PolicyKind::Naive, 1),
            (PolicyKind::Naive, 4),
        ]
        .into_iter()
        .map(|(policy, n)| {
            let trainer = Trainer::new(projection_config(&hidden, policy, n), None)
                .expect("Fashion-MNIST is needed for the projection");
            (policy, n, trainer)
        })
        .collect();
        for (_, _, trainer) in &mut trainers {
            trainer.run_epoch(1, None).expect("warm-up epoch");
        }
        let mut ratios: HashMap<(ScheduleKind, u32), Vec<(f64, f64)>> = HashMap::new();
        for rep in 0..repetitions {
            let mut single = HashMap::new();
            let mut costs = HashMap::new();
            let mut minibatches = 0;
            for (policy, n, trainer) in &mut trainers {
                let run = trainer.run_epoch(2 + rep as u32, None).expect("epoch");
                if *policy == PolicyKind::Single {
                    single.insert(*n, samples_per_second(&run));
                } else {
                    minibatches = run.schedule.config.num_minibatches;
                    let cost = stage_costs(&run.report.events, true);
                    if rep == 0 {
                        eprintln!("{label} naive N={n} per-stage means (s): {cost:?}");
                    }
                    costs.insert(*n, cost);
                }
            }
            for (kind, n) in targets {
                let mut cost = costs.remove(&n).expect("naive costs");
                // A per-micro-batch backward costs 1/N of the naive whole-mini-batch one.
                cost.backward_microbatch = cost
                    .backward_minibatch
                    .iter()
                    .map(|b| b / f64::from(n))
                    .collect();
                let schedule = generate(kind, &ScheduleConfig::new(2, n, minibatches))
                    .expect("schedule");
                // 1F1B with N = 1 treats every mini-batch as its own; same samples either way.
                let samples = f64::from(minibatches) * 128.0;
                let projected = samples / predicted(&schedule, &cost);
                ratios
                    .entry((kind, n))
                    .or_default()
                    .push((projected / single[&1], projected / single[&n]));
                costs.insert(n, cost);
            }
        }
        for (kind, n) in targets {
            let values = &ratios[&(kind, n)];
            let mut first: Vec<f64> = values.iter().map(|r| r.0).collect();
            let mut same: Vec<f64> = values.iter().map(|r| r.1).collect();
            first.sort_by(f64::total_cmp);
            same.sort_by(f64::total_cmp);
            println!(
                "{label}\t{kind}\t{n}\t{:.3} (range {:.3}–{:.3})\t{:.3} (range {:.3}–{:.3})",
                first[first.len() / 2],
                first[0],
                first[first.len() - 1],
                same[same.len() / 2],
                same[0],
                same[same.len() - 1],
            );
        }
    }
}

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    if args.first().map(String::as_str) == Some("projection") {
        let repetitions = args.get(1).and_then(|r| r.parse().ok()).unwrap_or(3);
        projection(repetitions);
        return;
    }
    let mut dataset = args.first().cloned().unwrap_or("fashion-mnist".into());
    let repetitions: usize = args.get(1).and_then(|r| r.parse().ok()).unwrap_or(3);
    let policies = [
        PolicyKind::Timeprest,
        PolicyKind::Gpipe,
        PolicyKind::Pipedream,
    ];
    let mut trainers: Vec<Trainer> = Vec::new();
    for policy in policies {
        match Trainer::new(config(&dataset, policy), None) {
            Ok(trainer) => trainers.push(trainer),
            Err(error) if dataset != "digits" && trainers.is_empty() => {
                eprintln!("{dataset}: {error}; using the embedded digits set");
                dataset = "digits".into();
                trainers.push(Trainer::new(config(&dataset, policy), None).expect("digits"));
            }
            Err(error) => panic!("{policy}: {error}"),
        }
    }
    // A warm-up epoch each (allocator, caches, lazy initialisation).
    for trainer in &mut trainers {
        trainer.run_epoch(1, None).expect("warm-up epoch");
    }
    println!("# simulator fidelity, {dataset}, W=3, predicted makespan / measured epoch seconds");
    println!("policy\trep\tmeasured_s\tratio_raw\tratio_compute\tlast_end_s");
    let mut ratios: HashMap<PolicyKind, Vec<(f64, f64)>> = HashMap::new();
    for rep in 0..repetitions {
        for (trainer, policy) in trainers.iter_mut().zip(policies) {
            let EpochRun {
                report, schedule, ..
            } = trainer.run_epoch(2 + rep as u32, None).expect("epoch");
            let measured = report.seconds;
            let last_end = report
                .events
                .iter()
                .flatten()
                .map(|e| e.end)
                .fold(0.0, f64::max);
            let raw = predicted(&schedule, &stage_costs(&report.events, false)) / measured;
            let costs = stage_costs(&report.events, true);
            let compute = predicted(&schedule, &costs) / measured;
            println!("{policy}\t{rep}\t{measured:.4}\t{raw:.3}\t{compute:.3}\t{last_end:.4}");
            if rep == 0 {
                eprintln!("{policy} per-stage means (s, compute model): {costs:?}");
            }
            ratios.entry(policy).or_default().push((raw, compute));
        }
    }
    for policy in policies {
        let mut compute: Vec<f64> = ratios[&policy].iter().map(|r| r.1).collect();
        compute.sort_by(f64::total_cmp);
        let mut raw: Vec<f64> = ratios[&policy].iter().map(|r| r.0).collect();
        raw.sort_by(f64::total_cmp);
        println!(
            "summary\t{policy}\tcompute median {:.3} (range {:.3}–{:.3})\traw median {:.3} (range {:.3}–{:.3})",
            compute[compute.len() / 2],
            compute[0],
            compute[compute.len() - 1],
            raw[raw.len() / 2],
            raw[0],
            raw[raw.len() - 1],
        );
    }
}
