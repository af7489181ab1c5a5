//! Oracles for the training engine: synchronous schedules equal one device, the I-TiMePReSt
//! knob spans stash and latest exactly, runs measure what the simulator predicts, and runs are
//! deterministic.

mod common;

use common::valid;
use timeprest_policy::{PolicyKind, WeightPolicy, plan};
use timeprest_schedule::{ScheduleConfig, ScheduleKind, generate};
use timeprest_train::{GradMode, SignificanceChoice, TrainConfig, Trainer};

fn config(policy: PolicyKind, stages: u32) -> TrainConfig {
    let mut config = TrainConfig::default();
    config.pipeline.policy = policy;
    config.pipeline.num_stages = stages;
    config.pipeline.num_microbatches = 3;
    config.optimisation.batch_size = 24;
    config.model.hidden = vec![24, 16, 12];
    config.optimisation.epochs = 2;
    config.data.limit_train = Some(240);
    config.data.limit_test = Some(100);
    config.run.seed = 3;
    config
}

/// Trains for the configured epochs and returns the final weights, flattened.
fn train(config: TrainConfig) -> Vec<f32> {
    let epochs = config.optimisation.epochs;
    let mut trainer = Trainer::new(valid(&config), None).unwrap();
    for epoch in 1..=epochs {
        trainer.run_epoch(epoch, None).unwrap();
    }
    trainer
        .params()
        .iter()
        .flat_map(|p| p.values().concat())
        .collect()
}

fn max_relative_difference(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs() / (1e-3 + y.abs()))
        .fold(0.0, f32::max)
}

#[test]
fn synchronous_schedules_equal_single_device_training() {
    let reference = train(config(PolicyKind::Single, 1));
    for policy in [
        PolicyKind::Gpipe,
        PolicyKind::PipedreamFlush,
        PolicyKind::Naive,
    ] {
        for stages in 2..=4 {
            let weights = train(config(policy, stages));
            let difference = max_relative_difference(&weights, &reference);
            assert!(difference < 1e-4, "{policy} W={stages}: {difference}");
        }
    }
}

#[test]
fn an_asynchronous_policy_differs_from_single_device_training() {
    // The oracle above is not vacuous: stale weights do change the result.
    let reference = train(config(PolicyKind::Single, 1));
    let stale = train(config(PolicyKind::VTimeprest, 4));
    assert!(max_relative_difference(&stale, &reference) > 1e-2);
}

#[test]
fn i_timeprest_with_significance_one_is_the_stash_rule_and_zero_is_v_timeprest() {
    let with_alpha = |alpha| {
        let mut config = config(PolicyKind::ITimeprest, 4);
        config.pipeline.significance = SignificanceChoice::Const;
        config.pipeline.alpha = alpha;
        config
    };
    let stash = {
        let mut config = config(PolicyKind::Pipedream, 4);
        config.pipeline.schedule = Some(ScheduleKind::Nf1b);
        config
    };
    assert_eq!(
        train(with_alpha(1.0)),
        train(stash),
        "σ ≡ 1 must be the stash rule, bit for bit"
    );
    assert_eq!(
        train(with_alpha(0.0)),
        train(config(PolicyKind::VTimeprest, 4)),
        "σ ≡ 0 must be V-TiMePReSt, bit for bit"
    );
    assert_ne!(
        train(with_alpha(0.5)),
        train(config(PolicyKind::VTimeprest, 4))
    );
}

#[test]
fn the_flags_of_the_open_choices_reach_the_policy() {
    // V-TiMePReSt reading the vertical-sync tag in its forwards is TiMePReSt (docs §6, row 2).
    let vertical = {
        let mut config = config(PolicyKind::VTimeprest, 4);
        config.pipeline.forward_source = timeprest_policy::ForwardSource::VerticalSync;
        config
    };
    assert_eq!(
        train(vertical),
        train(config(PolicyKind::Timeprest, 4)),
        "v-timeprest with vertical-sync forwards must be timeprest, bit for bit"
    );
    // The normalised blend is the ordinary blend with σ/(1 + σ): a constant α = e^{-λ}/(1 +
    // e^{-λ}) gives the same weights when every backward is one update stale (λ = 0 makes σ
    // ≡ 1/2 for every d, so the staleness pattern does not matter).
    let normalized = {
        let mut config = config(PolicyKind::ITimeprest, 4);
        config.pipeline.significance = SignificanceChoice::NormalizedExp;
        config.pipeline.lambda = 0.0;
        config
    };
    let half = {
        let mut config = config(PolicyKind::ITimeprest, 4);
        config.pipeline.significance = SignificanceChoice::Const;
        config.pipeline.alpha = 0.5;
        config
    };
    assert_eq!(train(normalized), train(half));
    // NWPT's horizon: `stages-remaining` is the default; SpecTrain's and a constant one
    // change what the forwards read.
    let nwpt = |horizon: &str| {
        let mut config = config(PolicyKind::Nwpt, 4);
        config.pipeline.horizon = horizon.parse().unwrap();
        train(config)
    };
    let default = nwpt("stages-remaining");
    assert!(default == train(config(PolicyKind::Nwpt, 4)));
    assert!(nwpt("spectrain") != default);
    assert!(nwpt("0") != default);
}

#[test]
fn measured_staleness_and_stored_versions_equal_the_simulated_trace() {
    for (policy, recompute) in PolicyKind::ALL
        .into_iter()
        .flat_map(|policy| [(policy, false), (policy, true)])
    {
        let stages = if policy == PolicyKind::Single { 1 } else { 4 };
        let config = {
            let mut config = config(policy, stages);
            config.pipeline.num_microbatches = 2;
            config.pipeline.recompute_activations = recompute;
            config.optimisation.batch_size = 16;
            config
        };
        let mut trainer = Trainer::new(valid(&config), None).unwrap();
        let metrics = trainer.run_epoch(1, None).unwrap().metrics;
        let schedule = generate(
            config.schedule_kind(),
            &ScheduleConfig::new(stages, 2, 240 / 16),
        )
        .unwrap();
        let predicted = plan(
            &schedule,
            &WeightPolicy::new(policy, &config.policy_options()),
            config.activations(),
        );
        for (stage, measured) in metrics.stages.iter().enumerate() {
            let simulated = &predicted.stages[stage];
            let histogram = simulated.staleness_histogram(0..u32::MAX);
            let histogram: Vec<(u64, u64)> = histogram
                .into_iter()
                .map(|(d, n)| (d, u64::from(n)))
                .collect();
            let measured_histogram: Vec<(u64, u64)> =
                measured.staleness.clone().into_iter().collect();
            assert_eq!(
                measured_histogram, histogram,
                "{policy} stage {stage}: staleness"
            );
            assert_eq!(
                measured.peak_weight_sets,
                simulated.peak_weight_sets(),
                "{policy} stage {stage}: stored versions (recomputing: {recompute})"
            );
        }
    }
}

/// Final weights (flattened), per-epoch losses and each stage's peak activation bytes.
fn weights_losses_and_activations(config: &TrainConfig) -> (Vec<f32>, Vec<u64>, Vec<u64>) {
    let mut trainer = Trainer::new(valid(config), None).unwrap();
    let mut losses = Vec::new();
    let mut peaks = vec![0; config.pipeline.num_stages as usize];
    for epoch in 1..=config.optimisation.epochs {
        let metrics = trainer.run_epoch(epoch, None).unwrap().metrics;
        losses.extend([metrics.train_loss.to_bits(), metrics.test_loss.to_bits()]);
        for (peak, stage) in peaks.iter_mut().zip(&metrics.stages) {
            *peak = (*peak).max(stage.peak_activation_bytes);
        }
    }
    let weights = trainer
        .params()
        .iter()
        .flat_map(|p| p.values().concat())
        .collect();
    (weights, losses, peaks)
}

#[test]
fn recomputing_activations_changes_no_bit_and_holds_fewer_bytes() {
    let lenet = {
        let mut config = config(PolicyKind::ITimeprest, 2);
        config.model.name = "lenet5".into();
        config.data.dataset = "synthetic".into();
        config.data.limit_train = Some(48);
        config.data.limit_test = Some(16);
        config.optimisation.lr = 0.01;
        config
    };
    let mlps = PolicyKind::ALL.map(|policy| {
        let stages = if policy == PolicyKind::Single { 1 } else { 4 };
        config(policy, stages)
    });
    for base in mlps.into_iter().chain([lenet]) {
        let name = format!("{} {}", base.pipeline.policy, base.model.name);
        let (kept_weights, kept_losses, kept_bytes) = weights_losses_and_activations(&base);
        let recomputed = {
            let mut config = base.clone();
            config.pipeline.recompute_activations = true;
            config
        };
        let (weights, losses, bytes) = weights_losses_and_activations(&recomputed);
        assert!(weights == kept_weights, "{name}: the weights differ");
        assert_eq!(losses, kept_losses, "{name}: the losses differ");
        // Stage 0 holds several micro-batches at once under every policy here (N = 3), and
        // their inputs are less than their inputs and activations.
        assert!(
            bytes[0] < kept_bytes[0] && bytes[0] > 0,
            "{name}: {bytes:?} activation bytes recomputing, {kept_bytes:?} keeping"
        );
    }
}

#[test]
fn streamed_nf1b_trains_as_nf1b() {
    // Every pass reads what it reads on nF1B (the policy crate's `streamed` tests); a stage
    // differentiates the micro-batches one by one instead of stacked, so in graph mode the
    // parameter gradients are summed in another order, and in recompute mode (which never
    // stacks) nothing changes at all.
    for policy in [
        PolicyKind::Timeprest,
        PolicyKind::VTimeprest,
        PolicyKind::ITimeprest,
        PolicyKind::Variant1,
    ] {
        for grad_mode in [GradMode::Graph, GradMode::Recompute] {
            let on = |schedule| {
                let mut config = config(policy, 4);
                config.pipeline.schedule = Some(schedule);
                config.pipeline.grad_mode = grad_mode;
                train(config)
            };
            let (whole, streamed) = (on(ScheduleKind::Nf1b), on(ScheduleKind::Nf1bStreamed));
            if grad_mode == GradMode::Recompute {
                assert!(
                    streamed == whole,
                    "{policy} {grad_mode:?}: the weights differ"
                );
            } else {
                let difference = max_relative_difference(&streamed, &whole);
                assert!(difference < 1e-4, "{policy} {grad_mode:?}: {difference}");
            }
        }
    }
}

#[test]
fn the_same_seed_gives_bit_identical_weights() {
    for policy in [PolicyKind::ITimeprest, PolicyKind::Nwpt] {
        assert_eq!(
            train(config(policy, 3)),
            train(config(policy, 3)),
            "{policy}"
        );
    }
    let other_seed = {
        let mut config = config(PolicyKind::ITimeprest, 3);
        config.run.seed = 4;
        config
    };
    assert_ne!(train(other_seed), train(config(PolicyKind::ITimeprest, 3)));
}
