//! Oracle: every stale policy equals a sequential emulator of its update equation.
//!
//! The emulator below is written independently of the runtime, the policy crate and burn: plain
//! `f32` loops, one thread, every stage's weight versions kept explicitly in a `Vec`, and each
//! policy's rule for which version a pass reads written out again from `docs/algorithms.md`
//! (§3.3, §3.4, §3.6–§3.9, §3.11). It replays the schedule slot by slot. The pipelined run
//! (threads, channels, version plan, burn stages) must end with the same weights.

mod common;

use common::valid;
use timeprest_data::{LoadOptions, load};
use timeprest_nn::{MlpConfig, ModelSpec, PartitionMethod, init_params, partition_uniform};
use timeprest_policy::{LatestSource, PolicyKind, StalenessMeasure, UpdateBase};
use timeprest_schedule::{
    ActionKind, MicrobatchId, Schedule, ScheduleConfig, ScheduleKind, generate,
};
use timeprest_train::{TrainConfig, Trainer};

const LR: f32 = 0.05;
const MOMENTUM: f32 = 0.9;

/// One linear block in PyTorch layout: y = relu?(x Wᵀ + b), W is [output][input].
#[derive(Clone, Debug)]
struct Layer {
    weight: Vec<f32>,
    bias: Vec<f32>,
    input: usize,
    output: usize,
    relu: bool,
}

type Weights = Vec<Layer>;

fn layer_forward(layer: &Layer, x: &[f32], rows: usize) -> (Vec<f32>, Vec<f32>) {
    let mut pre = vec![0.0f32; rows * layer.output];
    for r in 0..rows {
        for o in 0..layer.output {
            let mut sum = layer.bias[o];
            for i in 0..layer.input {
                sum += x[r * layer.input + i] * layer.weight[o * layer.input + i];
            }
            pre[r * layer.output + o] = sum;
        }
    }
    let out = if layer.relu {
        pre.iter().map(|v| v.max(0.0)).collect()
    } else {
        pre.clone()
    };
    (pre, out)
}

/// Local VJP of one block with weights `layer`, at the forward's saved input `x` and saved
/// pre-activation `pre` (the ReLU mask is an activation, so it comes from the forward: the
/// `graph` mode of `docs/algorithms.md` §4.1); adds the parameter gradients into `grad` and
/// returns the input gradient.
fn layer_backward(
    layer: &Layer,
    x: &[f32],
    pre: &[f32],
    g_out: &[f32],
    rows: usize,
    grad: &mut Layer,
) -> Vec<f32> {
    let g: Vec<f32> = g_out
        .iter()
        .zip(pre)
        .map(|(g, z)| if layer.relu && *z <= 0.0 { 0.0 } else { *g })
        .collect();
    let mut g_in = vec![0.0f32; rows * layer.input];
    for r in 0..rows {
        for o in 0..layer.output {
            let go = g[r * layer.output + o];
            grad.bias[o] += go;
            for i in 0..layer.input {
                grad.weight[o * layer.input + i] += go * x[r * layer.input + i];
                g_in[r * layer.input + i] += go * layer.weight[o * layer.input + i];
            }
        }
    }
    g_in
}

fn zeros_like(weights: &Weights) -> Weights {
    weights
        .iter()
        .map(|l| Layer {
            weight: vec![0.0; l.weight.len()],
            bias: vec![0.0; l.bias.len()],
            ..l.clone()
        })
        .collect()
}

/// a + c·b, parameter by parameter.
fn axpy(a: &Weights, c: f32, b: &Weights) -> Weights {
    a.iter()
        .zip(b)
        .map(|(la, lb)| Layer {
            weight: la
                .weight
                .iter()
                .zip(&lb.weight)
                .map(|(x, y)| x + c * y)
                .collect(),
            bias: la
                .bias
                .iter()
                .zip(&lb.bias)
                .map(|(x, y)| x + c * y)
                .collect(),
            ..la.clone()
        })
        .collect()
}

/// What one micro-batch's forward left at one stage.
struct Saved {
    inputs: Vec<Vec<f32>>,
    pre_activations: Vec<Vec<f32>>,
    rows: usize,
    version: usize,
    weights: Weights,
}

struct Stage {
    versions: Vec<Weights>,
    momentum: Option<Weights>,
    grad: Weights,
    saved: std::collections::HashMap<MicrobatchId, Saved>,
    /// The weights the backwards since the last update read, one set per micro-batch.
    backward_weights: Vec<Weights>,
}

/// The emulator: replays `schedule` with `policy`'s rules; returns each stage's final weights.
/// The policy an emulation replays, with the options that change its rules.
#[derive(Clone, Copy, Debug)]
struct Rules {
    policy: PolicyKind,
    /// TiMePReSt's and V-TiMePReSt's latest version.
    latest: LatestSource,
    /// The staleness I-TiMePReSt's σ reads (`Gap` or `MinibatchMax` here).
    staleness: StalenessMeasure,
    /// Where I-TiMePReSt's step starts.
    update_base: UpdateBase,
}

impl Rules {
    fn of(policy: PolicyKind) -> Self {
        Self {
            policy,
            latest: LatestSource::Live,
            staleness: StalenessMeasure::Gap,
            update_base: UpdateBase::Latest,
        }
    }
}

fn emulate(
    rules: Rules,
    schedule: &Schedule,
    stages_init: Vec<Weights>,
    batches: &[Vec<Vec<usize>>],
    features: &[f32],
    labels: &[u32],
) -> Vec<Weights> {
    let Rules {
        policy,
        latest,
        staleness,
        update_base,
    } = rules;
    let num_stages = stages_init.len();
    let mut stages: Vec<Stage> = stages_init
        .into_iter()
        .map(|w| Stage {
            grad: zeros_like(&w),
            versions: vec![w],
            momentum: None,
            saved: Default::default(),
            backward_weights: Vec::new(),
        })
        .collect();
    let mut activations: std::collections::HashMap<(usize, MicrobatchId), Vec<f32>> =
        Default::default();
    let mut gradients: std::collections::HashMap<(usize, MicrobatchId), Vec<f32>> =
        Default::default();
    let mut tags: std::collections::HashMap<MicrobatchId, usize> = Default::default();
    let num_features = stages[0].versions[0][0].input;
    // Per mini-batch, the version every stage had applied when its backward began at the last
    // stage (`docs/algorithms.md` §3.4): on the unit grid, the updates of earlier slots.
    let mut committed: std::collections::HashMap<u32, usize> = Default::default();
    for slot in 0..schedule.num_slots() {
        let applied = stages.iter().map(|st| st.versions.len() - 1).min().unwrap();
        for action in schedule.stages[num_stages - 1]
            .iter()
            .filter(|a| a.slot == slot)
        {
            if action.action.kind.is_backward() {
                committed
                    .entry(action.action.kind.minibatch())
                    .or_insert(applied);
            }
        }
        for (s, stage) in stages.iter_mut().enumerate() {
            let actions: Vec<_> = schedule.stages[s]
                .iter()
                .filter(|a| a.slot == slot)
                .map(|a| a.action)
                .collect();
            for action in actions {
                let live = stage.versions.len() - 1;
                match action.kind {
                    ActionKind::Forward(mb) => {
                        let samples = &batches[mb.minibatch as usize][mb.microbatch as usize];
                        let rows = samples.len();
                        let input = if s == 0 {
                            tags.insert(mb, live);
                            samples
                                .iter()
                                .flat_map(|&i| {
                                    features[i * num_features..(i + 1) * num_features].to_vec()
                                })
                                .collect()
                        } else {
                            activations.remove(&(s, mb)).expect("activation arrived")
                        };
                        // Which weights the forward reads (`docs/algorithms.md` §3.3–§3.11).
                        let version = match policy {
                            PolicyKind::Timeprest | PolicyKind::Variant1 => tags[&mb],
                            // The version update i − 2 made: W(t+1) = W(t) − η∇f(W(t−1)).
                            PolicyKind::Pipedream2bw => (mb.minibatch as usize).saturating_sub(1),
                            _ => live,
                        };
                        assert!(version <= live, "{action} reads a version not made yet");
                        let horizon = num_stages - 1 - s;
                        let weights = match (policy, &stage.momentum) {
                            (PolicyKind::Nwpt, Some(b)) if horizon > 0 => {
                                axpy(&stage.versions[version], -LR * MOMENTUM, b)
                            }
                            _ => stage.versions[version].clone(),
                        };
                        let mut inputs = Vec::new();
                        let mut pre_activations = Vec::new();
                        let mut x = input;
                        for layer in &weights {
                            inputs.push(x.clone());
                            let (pre, out) = layer_forward(layer, &x, rows);
                            pre_activations.push(pre);
                            x = out;
                        }
                        if s + 1 < num_stages {
                            activations.insert((s + 1, mb), x);
                        } else {
                            // Softmax cross-entropy; gradient of Σ CE / M (M = mini-batch size).
                            let m: usize =
                                batches[mb.minibatch as usize].iter().map(Vec::len).sum();
                            let classes = weights.last().unwrap().output;
                            let mut g = vec![0.0f32; rows * classes];
                            for r in 0..rows {
                                let z = &x[r * classes..(r + 1) * classes];
                                let max = z.iter().cloned().fold(f32::MIN, f32::max);
                                let sum: f32 = z.iter().map(|v| (v - max).exp()).sum();
                                for c in 0..classes {
                                    let p = (z[c] - max).exp() / sum;
                                    let y = if labels[samples[r]] as usize == c {
                                        1.0
                                    } else {
                                        0.0
                                    };
                                    g[r * classes + c] = (p - y) / m as f32;
                                }
                            }
                            gradients.insert((s, mb), g);
                        }
                        stage.saved.insert(
                            mb,
                            Saved {
                                inputs,
                                pre_activations,
                                rows,
                                version,
                                weights,
                            },
                        );
                    }
                    ActionKind::BackwardMinibatch(_) | ActionKind::BackwardMicrobatch(_) => {
                        let mbs: Vec<MicrobatchId> = match action.kind {
                            ActionKind::BackwardMinibatch(i) => (0..batches[i as usize].len()
                                as u32)
                                .map(|j| MicrobatchId::new(i, j))
                                .collect(),
                            ActionKind::BackwardMicrobatch(mb) => vec![mb],
                            _ => unreachable!(),
                        };
                        let stage_steady = stage_steady_gap(schedule, s, batches.len());
                        let max_gap = mbs
                            .iter()
                            .map(|mb| live - stage.saved[mb].version)
                            .max()
                            .unwrap_or(0);
                        for mb in mbs {
                            let saved = stage.saved.remove(&mb).expect("forward before backward");
                            let d = live - saved.version;
                            let sigma_d = match staleness {
                                StalenessMeasure::MinibatchMax => max_gap,
                                StalenessMeasure::StageSteady => stage_steady,
                                _ => d,
                            };
                            // Which weights the backward reads.
                            let weights = match policy {
                                PolicyKind::Pipedream
                                | PolicyKind::Pipedream2bw
                                | PolicyKind::Variant1
                                | PolicyKind::Nwpt => saved.weights.clone(),
                                PolicyKind::ITimeprest if d > 0 => {
                                    let sigma = (-(sigma_d as f64)).exp() as f32;
                                    let latest = &stage.versions[live];
                                    let diff = axpy(&stage.versions[saved.version], -1.0, latest);
                                    axpy(latest, sigma, &diff)
                                }
                                PolicyKind::Timeprest | PolicyKind::VTimeprest
                                    if latest == LatestSource::Committed =>
                                {
                                    stage.versions[committed[&mb.minibatch]].clone()
                                }
                                _ => stage.versions[live].clone(),
                            };
                            let mut g = gradients.remove(&(s, mb)).expect("gradient arrived");
                            for (l, layer) in weights.iter().enumerate().rev() {
                                g = layer_backward(
                                    layer,
                                    &saved.inputs[l],
                                    &saved.pre_activations[l],
                                    &g,
                                    saved.rows,
                                    &mut stage.grad[l],
                                );
                            }
                            if s > 0 {
                                gradients.insert((s - 1, mb), g);
                            }
                            stage.backward_weights.push(weights);
                        }
                    }
                    ActionKind::Update(_) => {
                        // SGD with momentum, dampening 0, PyTorch semantics (b₀ = g).
                        let grad =
                            std::mem::replace(&mut stage.grad, zeros_like(&stage.versions[live]));
                        let b = match &stage.momentum {
                            Some(b) => axpy(&grad, MOMENTUM, b),
                            None => grad,
                        };
                        // The step starts from the live version, or from the mean of the
                        // weights the mini-batch's backwards read (`docs/algorithms.md` §3.8).
                        let read = std::mem::take(&mut stage.backward_weights);
                        let base = match update_base {
                            UpdateBase::Latest => stage.versions[live].clone(),
                            UpdateBase::Intermediate => {
                                let share = 1.0 / read.len() as f32;
                                read.iter()
                                    .fold(zeros_like(&stage.versions[live]), |sum, w| {
                                        axpy(&sum, share, w)
                                    })
                            }
                        };
                        let next = axpy(&base, -LR, &b);
                        stage.momentum = Some(b);
                        stage.versions.push(next);
                    }
                }
            }
        }
    }
    stages
        .into_iter()
        .map(|mut s| s.versions.pop().unwrap())
        .collect()
}

/// The largest gap k_s(backward) − k_s(forward) of stage `s`'s backwards over the middle half
/// of the mini-batches, M/4 .. 3M/4 (`docs/algorithms.md` §3.8), for forwards that read the
/// live version: counted from the schedule alone.
fn stage_steady_gap(schedule: &Schedule, s: usize, num_minibatches: usize) -> usize {
    let steady = (num_minibatches / 4) as u32..(3 * num_minibatches / 4) as u32;
    let mut live = 0;
    let mut read = std::collections::HashMap::new();
    let mut largest = 0;
    for action in schedule.actions(s as u32) {
        match action.kind {
            ActionKind::Forward(mb) => {
                read.insert(mb, live);
            }
            ActionKind::Update(_) => live += 1,
            backward => {
                for (mb, version) in &read {
                    if mb.minibatch == backward.minibatch() && steady.contains(&mb.minibatch) {
                        largest = largest.max(live - version);
                    }
                }
            }
        }
    }
    largest
}

fn check_policy_against_emulator(
    policy: PolicyKind,
    num_stages: u32,
    microbatches: u32,
    batch_size: usize,
) {
    check_ordered_policy_against_emulator(
        Rules::of(policy),
        num_stages,
        microbatches,
        batch_size,
        None,
    );
}

/// [`check_policy_against_emulator`] on a schedule ordered with backwards of `backward_slots`
/// slots per micro-batch (`None`: the unit grid).
fn check_ordered_policy_against_emulator(
    rules: Rules,
    num_stages: u32,
    microbatches: u32,
    batch_size: usize,
    backward_slots: Option<u32>,
) {
    let hidden = vec![16, 12, 8];
    let limit = 96;
    let mut config = TrainConfig::default();
    config.model.hidden = hidden.clone();
    config.data.shuffle = false;
    config.data.limit_train = Some(limit);
    config.data.limit_test = Some(50);
    let policy = rules.policy;
    config.pipeline.policy = policy;
    config.pipeline.latest_version = rules.latest;
    config.pipeline.staleness = rules.staleness;
    config.pipeline.update_base = rules.update_base;
    config.pipeline.num_stages = num_stages;
    config.pipeline.num_microbatches = microbatches;
    config.pipeline.backward_slots = backward_slots;
    // The emulation below splits the layers evenly.
    config.pipeline.partition = PartitionMethod::Uniform;
    config.optimisation.batch_size = batch_size;
    config.optimisation.epochs = 1;
    config.optimisation.lr = f64::from(LR);
    config.optimisation.momentum = f64::from(MOMENTUM);
    config.run.seed = 7;
    let mut trainer = Trainer::new(valid(&config), None).unwrap();
    trainer.run_epoch(1, None).unwrap();
    let pipelined: Vec<Vec<Vec<f32>>> = trainer
        .params()
        .iter()
        .map(|p| p.to_file_layout())
        .collect();

    let data = load("digits", &LoadOptions::default()).unwrap().train;
    let spec = ModelSpec::Mlp(MlpConfig {
        input: 64,
        hidden,
        classes: 10,
    });
    let init = init_params(&spec, 7).unwrap();
    let layers: Vec<Layer> = init
        .iter()
        .map(|p| {
            let values = p.to_file_layout();
            let output = values[1].len();
            let input = values[0].len() / output;
            Layer {
                weight: values[0].clone(),
                bias: values[1].clone(),
                input,
                output,
                relu: false,
            }
        })
        .collect();
    let num_layers = layers.len();
    let layers: Vec<Layer> = layers
        .into_iter()
        .enumerate()
        .map(|(i, l)| Layer {
            relu: i + 1 < num_layers,
            ..l
        })
        .collect();
    let split = partition_uniform(num_layers, num_stages as usize).unwrap();
    let stage_weights: Vec<Weights> = split.iter().map(|r| layers[r.clone()].to_vec()).collect();
    let batches: Vec<Vec<Vec<usize>>> = (0..limit)
        .collect::<Vec<_>>()
        .chunks(batch_size)
        .map(|mb| {
            mb.chunks(batch_size / microbatches as usize)
                .map(<[usize]>::to_vec)
                .collect()
        })
        .collect();
    let kind = trainer.config().schedule_kind();
    let schedule = generate(
        kind,
        &ScheduleConfig {
            backward_slots,
            ..ScheduleConfig::new(num_stages, microbatches, batches.len() as u32)
        },
    )
    .unwrap();
    if backward_slots.is_some() {
        let unit = generate(
            kind,
            &ScheduleConfig::new(num_stages, microbatches, batches.len() as u32),
        )
        .unwrap();
        let order = |s: &Schedule| {
            (0..num_stages)
                .map(|w| s.actions(w).collect::<Vec<_>>())
                .collect::<Vec<_>>()
        };
        assert_ne!(
            order(&schedule),
            order(&unit),
            "test setup: the costed order differs"
        );
    }
    assert_eq!(
        schedule.config.num_microbatches, microbatches,
        "test setup: no 1F1B flattening"
    );
    let emulated = emulate(
        rules,
        &schedule,
        stage_weights,
        &batches,
        &data.features,
        &data.labels,
    );
    let emulated: Vec<&Layer> = emulated.iter().flatten().collect();

    let mut worst = 0.0f32;
    for (block, (run, emu)) in pipelined.iter().zip(&emulated).enumerate() {
        for (a, b) in run[0]
            .iter()
            .zip(&emu.weight)
            .chain(run[1].iter().zip(&emu.bias))
        {
            let diff = (a - b).abs() / (1e-3 + b.abs());
            worst = worst.max(diff);
            assert!(
                diff < 1e-4,
                "{policy} block {block}: pipelined {a} vs emulated {b}"
            );
        }
    }
    // The weights moved: a policy that ignored the gradients would not pass vacuously.
    let moved = pipelined[0][0]
        .iter()
        .zip(&layers[0].weight)
        .any(|(a, b)| (a - b).abs() > 1e-3);
    assert!(moved, "{policy}: weights did not change");
    eprintln!("{policy}: worst relative difference {worst:e}");
}

#[test]
fn pipedream_equals_its_sequential_emulator() {
    check_policy_against_emulator(PolicyKind::Pipedream, 3, 1, 4);
}

#[test]
fn pipedream_2bw_equals_its_sequential_emulator() {
    // N = W − 1: the double buffer never delays a forward.
    check_policy_against_emulator(PolicyKind::Pipedream2bw, 3, 2, 8);
    // N < W − 1: forwards wait for the update two mini-batches back.
    check_policy_against_emulator(PolicyKind::Pipedream2bw, 4, 2, 8);
}

#[test]
fn timeprest_equals_its_sequential_emulator() {
    check_policy_against_emulator(PolicyKind::Timeprest, 3, 3, 12);
}

#[test]
fn timeprest_on_a_costed_order_equals_its_sequential_emulator() {
    // Backwards ordered as 2 slots per micro-batch: stage 0 runs more forwards before each
    // backward, so they read other versions than on the unit grid; the pipeline must still
    // apply exactly the update equation over the order it ran.
    check_ordered_policy_against_emulator(Rules::of(PolicyKind::Timeprest), 3, 3, 12, Some(2));
}

#[test]
fn timeprest_with_multiple_sequences_equals_its_sequential_emulator() {
    check_policy_against_emulator(PolicyKind::Timeprest, 4, 2, 8);
}

#[test]
fn timeprest_on_the_committed_version_equals_its_sequential_emulator() {
    // W = 4, N = 2: v = 2, so the committed version lags the live one at some stages.
    for policy in [PolicyKind::Timeprest, PolicyKind::VTimeprest] {
        let rules = Rules {
            latest: LatestSource::Committed,
            ..Rules::of(policy)
        };
        check_ordered_policy_against_emulator(rules, 4, 2, 8, None);
    }
}

#[test]
fn i_timeprest_weighing_by_the_minibatch_max_staleness_equals_its_sequential_emulator() {
    // W = 3, N = 3: stage 0's micro-batches of one mini-batch see gaps 1 and 2.
    let rules = Rules {
        staleness: StalenessMeasure::MinibatchMax,
        ..Rules::of(PolicyKind::ITimeprest)
    };
    check_ordered_policy_against_emulator(rules, 3, 3, 12, None);
}

#[test]
fn i_timeprest_updating_from_its_intermediate_weights_equals_its_sequential_emulator() {
    // W = 3, N = 3: stage 0's step starts from the mean of blends of two different stale
    // versions with the live one.
    let rules = Rules {
        update_base: UpdateBase::Intermediate,
        ..Rules::of(PolicyKind::ITimeprest)
    };
    check_ordered_policy_against_emulator(rules, 3, 3, 12, None);
}

#[test]
fn i_timeprest_weighing_by_the_stage_steady_staleness_equals_its_sequential_emulator() {
    // W = 3, N = 3: every stage's constant differs (2, 1, 0).
    let rules = Rules {
        staleness: StalenessMeasure::StageSteady,
        ..Rules::of(PolicyKind::ITimeprest)
    };
    check_ordered_policy_against_emulator(rules, 3, 3, 12, None);
}

#[test]
fn v_timeprest_equals_its_sequential_emulator() {
    check_policy_against_emulator(PolicyKind::VTimeprest, 3, 3, 12);
}

#[test]
fn i_timeprest_equals_its_sequential_emulator() {
    check_policy_against_emulator(PolicyKind::ITimeprest, 3, 3, 12);
}

#[test]
fn nwpt_equals_its_sequential_emulator() {
    check_policy_against_emulator(PolicyKind::Nwpt, 3, 1, 4);
}

#[test]
fn variant1_equals_its_sequential_emulator() {
    check_policy_against_emulator(PolicyKind::Variant1, 4, 2, 8);
}

#[test]
fn schedule_kinds_used_by_the_emulator_are_the_policies_defaults() {
    assert_eq!(PolicyKind::Timeprest.default_schedule(), ScheduleKind::Nf1b);
    assert_eq!(
        PolicyKind::Pipedream.default_schedule(),
        ScheduleKind::OneFOneB
    );
}
