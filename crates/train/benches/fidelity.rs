//! Simulator fidelity: does the cost-model simulator predict a real run's makespan?
//!
//! Trains real epochs (`Trainer::run_epoch`, W = 3 or the machine's core count if lower, but at
//! least 2: the simulator gives every stage a core of its own, so more stage threads than
//! cores measure the operating system's time-slicing, not the cost model; MLP
//! 784-1024-1024-1024-10 on Fashion-MNIST,
//! or the embedded digits set when its IDX files are missing), takes the per-stage mean
//! forward / backward / update durations from the epoch's event log ([`MeasuredCosts`]) and
//! simulates the same schedule with `simulate_costs`: the `compute` figure is each epoch's own
//! `simulated_seconds` metric, which `bench/scaling.py` also reads, through the CLI, for
//! convolutional models. It prints predicted makespan / measured epoch time (goal ≥ 0.95) per
//! policy, the policies alternating within each repetition so that machine noise hits them
//! alike.
//!
//! Two cost models are compared: `raw` uses `end − start` as logged, `compute` also starts each
//! action no earlier than the end of the neighbour's action whose message it consumes. They
//! agree when the runtime takes `start` after the inputs arrived; up to commit 9a28bf0 it took
//! it before waiting for them, and only `compute` was a cost model in the simulator's sense.
//!
//! With `projection` as first argument it instead projects 2-stage pipeline scaling for a
//! machine whose two cores are free, from runs that do not need them: the per-stage costs
//! come from the `naive` schedule at W = 2 (one action at a time in the whole pipeline, so the
//! stages never compete for a core), the gpipe / 1f1b-flush / nf1b / 1f1b schedules are
//! simulated with them, and the speed-up is the summed compute time of the epoch (what one
//! core needs) over the simulated makespan, both from the same run, so machine load cancels.
//! This is the number to read when other jobs hold the cores (the measured scaling of
//! `bench/scaling.py` then cannot exceed the share the machine gives us). It is optimistic for
//! the stale policies on nF1B, whose backward re-runs the forward (see docs/benchmarks.md).
//!
//! Not a criterion benchmark (it measures ratios, not durations):
//! `cargo bench -p timeprest-train --bench fidelity -- [digits|fashion-mnist] [repetitions]`,
//! `cargo bench -p timeprest-train --bench fidelity -- projection [repetitions]`.

use std::collections::HashMap;

use timeprest_policy::PolicyKind;
use timeprest_schedule::{
    CostModel, Schedule, ScheduleConfig, ScheduleKind, generate, simulate_costs,
};
use timeprest_train::{EpochRun, MeasuredCosts, TrainConfig, Trainer, ValidConfig};

/// `config`, validated (every test configuration is valid).
fn valid(config: &TrainConfig) -> ValidConfig {
    config.clone().validate().unwrap()
}

fn predicted(schedule: &Schedule, costs: &MeasuredCosts) -> f64 {
    simulate_costs(schedule, costs)
        .expect("the epoch's schedule is valid")
        .makespan()
}

/// Stages of the fidelity runs: 3, or fewer on a machine with fewer cores (at least 2).
fn fidelity_stages() -> u32 {
    let cores = std::thread::available_parallelism().map_or(3, |n| n.get());
    cores.clamp(2, 3) as u32
}

fn config(dataset: &str, policy: PolicyKind) -> TrainConfig {
    let fashion = dataset == "fashion-mnist";
    {
        let mut config = TrainConfig::default();
        config.model.hidden = if fashion {
            vec![1024, 1024, 1024]
        } else {
            vec![128, 64]
        };
        config.data.dataset = dataset.into();
        config.data.limit_train = fashion.then_some(3840);
        config.data.limit_test = Some(512);
        config.pipeline.num_stages = fidelity_stages();
        config.pipeline.num_microbatches = if policy == PolicyKind::Pipedream {
            1
        } else {
            4
        };
        config.optimisation.batch_size = if fashion { 128 } else { 32 };
        config.optimisation.lr = 0.01;
        config.pipeline.policy = policy;
        config.optimisation.epochs = 2;
        config
    }
}

/// A 2-stage `naive` configuration for the projection: MLP `hidden` on Fashion-MNIST, M = 128.
fn projection_config(hidden: &[usize], microbatches: u32) -> TrainConfig {
    let mut config = TrainConfig::default();
    config.model.hidden = hidden.to_vec();
    config.data.dataset = "fashion-mnist".into();
    config.data.limit_train = Some(3840);
    config.data.limit_test = Some(256);
    config.pipeline.num_stages = 2;
    config.pipeline.num_microbatches = microbatches;
    config.optimisation.batch_size = 128;
    config.optimisation.lr = 0.01;
    config.pipeline.policy = PolicyKind::Naive;
    config
}

/// The time one core needs for the whole epoch: every action's compute time, summed.
fn serial_seconds(schedule: &Schedule, costs: &MeasuredCosts) -> f64 {
    let n = schedule.config.num_microbatches;
    schedule
        .stages
        .iter()
        .flatten()
        .map(|a| costs.duration(a.action, n))
        .sum()
}

/// Projected speed-up of 2-stage pipelines over one core (see the module doc).
fn projection(repetitions: usize) {
    println!("# projected 2-stage scaling for two free cores, Fashion-MNIST, M=128");
    println!("# speed-up = one core's compute time for the epoch (N=1, or the same N)");
    println!("#            / simulated makespan of the schedule, costs from a naive W=2 run");
    println!("model\tschedule\tN\tvs one core N=1\tvs one core same N");
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
        let mut trainers: Vec<(u32, Trainer)> = [1, 4]
            .into_iter()
            .map(|n| {
                let trainer = Trainer::new(valid(&projection_config(&hidden, n)), None)
                    .expect("Fashion-MNIST is needed for the projection");
                (n, trainer)
            })
            .collect();
        for (_, trainer) in &mut trainers {
            trainer.run_epoch(1, None).expect("warm-up epoch");
        }
        let mut ratios: HashMap<(ScheduleKind, u32), Vec<(f64, f64)>> = HashMap::new();
        for rep in 0..repetitions {
            let mut costs = HashMap::new();
            let mut serial = HashMap::new();
            let mut minibatches = 0;
            for (n, trainer) in &mut trainers {
                let run = trainer.run_epoch(2 + rep as u32, None).expect("epoch");
                minibatches = run.schedule.config.num_minibatches;
                let mut cost = MeasuredCosts::from_events(&run.report.events, true);
                // A per-micro-batch backward costs 1/N of the naive whole-mini-batch one.
                cost.backward_microbatch = cost
                    .backward_minibatch
                    .iter()
                    .map(|b| b / f64::from(*n))
                    .collect();
                if rep == 0 {
                    eprintln!("{label} naive N={n} per-stage means (s): {cost:?}");
                }
                serial.insert(*n, serial_seconds(&run.schedule, &cost));
                costs.insert(*n, cost);
            }
            for (kind, n) in targets {
                let schedule =
                    generate(kind, &ScheduleConfig::new(2, n, minibatches)).expect("schedule");
                let makespan = predicted(&schedule, &costs[&n]);
                ratios
                    .entry((kind, n))
                    .or_default()
                    .push((serial[&1] / makespan, serial[&n] / makespan));
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
        match Trainer::new(valid(&config(&dataset, policy)), None) {
            Ok(trainer) => trainers.push(trainer),
            Err(error) if dataset != "digits" && trainers.is_empty() => {
                eprintln!("{dataset}: {error}; using the embedded digits set");
                dataset = "digits".into();
                trainers
                    .push(Trainer::new(valid(&config(&dataset, policy)), None).expect("digits"));
            }
            Err(error) => panic!("{policy}: {error}"),
        }
    }
    // A warm-up epoch each (allocator, caches, lazy initialisation).
    for trainer in &mut trainers {
        trainer.run_epoch(1, None).expect("warm-up epoch");
    }
    println!(
        "# simulator fidelity, {dataset}, W={}, predicted makespan / measured epoch seconds",
        fidelity_stages()
    );
    println!("policy\trep\tmeasured_s\tratio_raw\tratio_compute\tlast_end_s");
    let mut ratios: HashMap<PolicyKind, Vec<(f64, f64)>> = HashMap::new();
    for rep in 0..repetitions {
        for (trainer, policy) in trainers.iter_mut().zip(policies) {
            let EpochRun {
                metrics,
                report,
                schedule,
            } = trainer.run_epoch(2 + rep as u32, None).expect("epoch");
            let measured = report.seconds;
            let last_end = report
                .events
                .iter()
                .flatten()
                .map(|e| e.end)
                .fold(0.0, f64::max);
            let raw = predicted(
                &schedule,
                &MeasuredCosts::from_events(&report.events, false),
            ) / measured;
            let compute = metrics.simulated_seconds / measured;
            println!("{policy}\t{rep}\t{measured:.4}\t{raw:.3}\t{compute:.3}\t{last_end:.4}");
            if rep == 0 {
                let costs = MeasuredCosts::from_events(&report.events, true);
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
