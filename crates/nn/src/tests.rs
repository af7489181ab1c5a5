//! Tests of the stage computation against independent references.
//!
//! The reference for gradients is a plain f64 MLP written out by hand below (no burn), so a
//! wrong VJP, loss scaling or stage hand-off cannot cancel out between the code and its check.
//! Pipelines are driven the way the runtime drives them: forwards stage by stage, then
//! backwards from the last stage to the first, then updates.

use std::sync::Arc;

use burn::tensor::Tensor;
use timeprest_data::Dataset;
use timeprest_policy::{Prediction, WeightKey, WeightRecipe};
use timeprest_runtime::{BackwardWork, ComputeError, Feed, ForwardOutput, StageCompute};
use timeprest_schedule::MicrobatchId;

use crate::store::blend;
use crate::tensor::{tensor2, to_vec};
use crate::*;

// ---------------------------------------------------------------------------------------------
// Fixtures

/// A deterministic synthetic data set: features in [-1, 1], labels cycling over the classes.
fn synthetic(num_samples: usize, num_features: usize, num_classes: usize) -> Arc<Dataset> {
    let mut state = 0x1234_5678_u64;
    let features = (0..num_samples * num_features)
        .map(|_| {
            state = state
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            ((state >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect();
    let labels = (0..num_samples)
        .map(|i| ((i * 7 + 3) % num_classes) as u32)
        .collect();
    Arc::new(
        Dataset::new(
            "synthetic",
            [1, 1, num_features],
            num_classes,
            features,
            labels,
        )
        .unwrap(),
    )
}

fn mlp() -> ModelSpec {
    ModelSpec::Mlp(MlpConfig {
        input: 6,
        hidden: vec![9, 8, 7],
        classes: 4,
    })
}

pub(crate) fn v(version: u64) -> WeightRecipe {
    WeightRecipe::version(version)
}

pub(crate) fn mb(minibatch: u32, microbatch: u32) -> MicrobatchId {
    MicrobatchId::new(minibatch, microbatch)
}

/// Stages of `params` split uniformly into `num_stages`.
fn make_stages(
    params: &ModelParams,
    num_stages: usize,
    optimizer: OptimizerConfig,
    grad_mode: GradMode,
) -> Vec<BurnStage> {
    partition_uniform(params.len(), num_stages)
        .unwrap()
        .into_iter()
        .enumerate()
        .map(|(s, range)| {
            let first = range.start;
            BurnStage::new(
                s as u32,
                num_stages as u32,
                params[range].to_vec(),
                first,
                optimizer.clone(),
                grad_mode,
            )
            .unwrap()
        })
        .collect()
}

/// The feed of epoch 1 of `data` cut as `batches` says, without augmentation.
pub(crate) fn feed(data: &Arc<Dataset>, batches: &Arc<EpochBatches>) -> DataFeed {
    DataFeed::new(Arc::clone(data), Arc::clone(batches), None, 1)
}

/// Forward of `microbatch` on `stage` as an executor runs it: `input` from the previous stage,
/// or from `feed` at stage 0; the targets from `feed` at the last stage.
pub(crate) fn forward_fed(
    stage: &mut BurnStage,
    feed: &DataFeed,
    microbatch: MicrobatchId,
    input: Option<StageMessage>,
    recipe: &WeightRecipe,
    backward_reads_forward_weights: bool,
) -> Result<ForwardOutput<StageMessage>, ComputeError> {
    let input = match input {
        Some(message) => message,
        None => feed.input(microbatch)?,
    };
    let targets = if stage.is_last() {
        Some(feed.targets(microbatch)?)
    } else {
        None
    };
    stage.forward(
        microbatch,
        input,
        targets,
        recipe,
        backward_reads_forward_weights,
    )
}

/// Forwards of all micro-batches of `minibatch` through all stages with `forward[s]`, then the
/// backward of all of them with `backward[s]`, last stage first. Returns the loss sum, the
/// number of correct predictions and, per stage, the input gradients it returned.
pub(crate) fn run_minibatch(
    stages: &mut [BurnStage],
    feed: &DataFeed,
    minibatch: u32,
    num_microbatches: u32,
    forward: &[WeightRecipe],
    backward: &[WeightRecipe],
) -> (f64, u64, Vec<Vec<Option<StageMessage>>>) {
    let hints: Vec<bool> = forward.iter().zip(backward).map(|(f, b)| f == b).collect();
    run_minibatch_hinted(
        stages,
        feed,
        minibatch,
        num_microbatches,
        forward,
        backward,
        &hints,
    )
}

/// [`run_minibatch`] telling stage `s`'s forwards `hints[s]` as whether the backward reads the
/// forward's weights (true or not).
fn run_minibatch_hinted(
    stages: &mut [BurnStage],
    feed: &DataFeed,
    minibatch: u32,
    num_microbatches: u32,
    forward: &[WeightRecipe],
    backward: &[WeightRecipe],
    hints: &[bool],
) -> (f64, u64, Vec<Vec<Option<StageMessage>>>) {
    let (mut loss_sum, mut correct) = (0.0, 0);
    for j in 0..num_microbatches {
        let mut message = None;
        for (s, stage) in stages.iter_mut().enumerate() {
            match forward_fed(
                stage,
                feed,
                mb(minibatch, j),
                message.take(),
                &forward[s],
                hints[s],
            )
            .unwrap()
            {
                ForwardOutput::Activation(m) => message = Some(m),
                ForwardOutput::Loss(stats) => {
                    loss_sum += stats.loss_sum;
                    correct += stats.correct;
                }
            }
        }
        assert!(message.is_none(), "the last stage must report a loss");
    }
    let mut per_stage = vec![Vec::new(); stages.len()];
    let mut upstream: Vec<Option<StageMessage>> = vec![None; num_microbatches as usize];
    for (s, stage) in stages.iter_mut().enumerate().rev() {
        let work = upstream
            .into_iter()
            .enumerate()
            .map(|(j, g)| BackwardWork {
                microbatch: mb(minibatch, j as u32),
                recipe: backward[s],
                output_gradient: g,
            })
            .collect();
        upstream = stage.backward(work).unwrap();
        assert_eq!(
            upstream.iter().all(Option::is_none),
            s == 0,
            "stage {s} input gradients"
        );
        per_stage[s] = upstream.clone();
    }
    (loss_sum, correct, per_stage)
}

pub(crate) fn update_all(stages: &mut [BurnStage]) {
    for stage in stages {
        let old = stage.live_version();
        stage.update(&[]).unwrap();
        stage.release(WeightKey::Version(old));
    }
}

/// All accumulated gradients of a pipeline, flattened in global block order.
pub(crate) fn all_grads(stages: &mut [BurnStage]) -> Vec<f64> {
    stages
        .iter_mut()
        .flat_map(|s| {
            s.accumulated_gradients()
                .unwrap()
                .iter()
                .flatten()
                .map(to_vec)
        })
        .flatten()
        .map(f64::from)
        .collect()
}

fn all_params(stages: &[BurnStage]) -> ModelParams {
    stages.iter().flat_map(BurnStage::live_params).collect()
}

fn flat_values(params: &[BlockParams]) -> Vec<f32> {
    params
        .iter()
        .flat_map(BlockParams::values)
        .flatten()
        .collect()
}

/// `|a − b| ≤ tol · max|b|` elementwise (relative to the tensor's scale, so that entries that
/// cancel to almost zero do not need an impossible relative precision).
pub(crate) fn assert_close(what: &str, a: &[f64], b: &[f64], tol: f64) {
    assert_eq!(a.len(), b.len(), "{what}: lengths");
    let scale = b.iter().fold(0.0f64, |m, x| m.max(x.abs())).max(1e-30);
    for (i, (x, y)) in a.iter().zip(b).enumerate() {
        assert!(
            (x - y).abs() <= tol * scale,
            "{what}[{i}]: {x} vs {y} (scale {scale})"
        );
    }
}

fn f64s(values: &[f32]) -> Vec<f64> {
    values.iter().map(|&x| f64::from(x)).collect()
}

// ---------------------------------------------------------------------------------------------
// An independent f64 reference MLP

struct Reference {
    loss_sum: f64,
    /// Per block, per parameter, memory layout.
    param_grads: Vec<Vec<Vec<f64>>>,
    /// Gradient of the loss with respect to each block's input, row-major.
    input_grads: Vec<Vec<f64>>,
}

/// Forward and backward of `params` on `samples` of `data`, loss Σ CE / `minibatch_size`.
fn reference(
    params: &[BlockParams],
    data: &Dataset,
    samples: &[usize],
    minibatch_size: usize,
) -> Reference {
    let (features, labels) = data.gather(samples);
    let batch = samples.len();
    let mut acts = vec![f64s(&features)];
    let mut pres = Vec::new();
    for p in params {
        let (n_in, n_out) = (p.block.input_features(), p.block.output_features());
        let vals = p.values();
        let (w, b) = (f64s(&vals[0]), f64s(&vals[1]));
        let x = acts.last().unwrap();
        let mut pre = vec![0.0; batch * n_out];
        for r in 0..batch {
            for o in 0..n_out {
                let mut acc = b[o];
                for i in 0..n_in {
                    acc += x[r * n_in + i] * w[i * n_out + o];
                }
                pre[r * n_out + o] = acc;
            }
        }
        let y = if p.block.has_relu() {
            pre.iter().map(|&z| z.max(0.0)).collect()
        } else {
            pre.clone()
        };
        pres.push(pre);
        acts.push(y);
    }
    let classes = params.last().unwrap().block.output_features();
    let logits = acts.last().unwrap();
    let mut loss_sum = 0.0;
    let mut g = vec![0.0; batch * classes];
    for r in 0..batch {
        let row = &logits[r * classes..(r + 1) * classes];
        let max = row.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let lse = max + row.iter().map(|z| (z - max).exp()).sum::<f64>().ln();
        loss_sum += lse - row[labels[r] as usize];
        for c in 0..classes {
            let target = if c == labels[r] as usize { 1.0 } else { 0.0 };
            g[r * classes + c] = ((row[c] - lse).exp() - target) / minibatch_size as f64;
        }
    }
    let mut param_grads = vec![Vec::new(); params.len()];
    let mut input_grads = vec![Vec::new(); params.len()];
    for (k, p) in params.iter().enumerate().rev() {
        let (n_in, n_out) = (p.block.input_features(), p.block.output_features());
        let w = f64s(&p.values()[0]);
        if p.block.has_relu() {
            for (gi, &z) in g.iter_mut().zip(&pres[k]) {
                if z <= 0.0 {
                    *gi = 0.0;
                }
            }
        }
        let x = &acts[k];
        let mut dw = vec![0.0; n_in * n_out];
        let mut db = vec![0.0; n_out];
        let mut dx = vec![0.0; batch * n_in];
        for r in 0..batch {
            for o in 0..n_out {
                let go = g[r * n_out + o];
                db[o] += go;
                for i in 0..n_in {
                    dw[i * n_out + o] += x[r * n_in + i] * go;
                    dx[r * n_in + i] += go * w[i * n_out + o];
                }
            }
        }
        param_grads[k] = vec![dw, db];
        input_grads[k] = dx.clone();
        g = dx;
    }
    Reference {
        loss_sum,
        param_grads,
        input_grads,
    }
}

// ---------------------------------------------------------------------------------------------
// Splitting and loss reduction

#[test]
fn split_pipelines_match_the_unsplit_model_and_the_reference() {
    let spec = mlp();
    let data = synthetic(40, 6, 4);
    let params = init_params(&spec, 11).unwrap();
    // One mini-batch of 12 samples, either whole or as 3 unequal micro-batches.
    let samples: Vec<usize> = vec![3, 17, 5, 0, 22, 9, 31, 14, 8, 27, 1, 36];
    let whole = Arc::new(EpochBatches {
        minibatches: vec![vec![samples.clone()]],
    });
    let split = Arc::new(EpochBatches {
        minibatches: vec![vec![
            samples[..3].to_vec(),
            samples[3..8].to_vec(),
            samples[8..].to_vec(),
        ]],
    });
    let reference = reference(&params, &data, &samples, samples.len());
    let ref_grads: Vec<f64> = reference
        .param_grads
        .iter()
        .flatten()
        .flatten()
        .copied()
        .collect();

    let mut unsplit = make_stages(&params, 1, OptimizerConfig::sgd(0.1, 0.9), GradMode::Graph);
    let whole_feed = feed(&data, &whole);
    let (unsplit_loss, _, _) = run_minibatch(&mut unsplit, &whole_feed, 0, 1, &[v(0)], &[v(0)]);
    let unsplit_grads = all_grads(&mut unsplit);
    assert_close("unsplit vs f64 reference", &unsplit_grads, &ref_grads, 1e-5);
    assert!((unsplit_loss - reference.loss_sum).abs() <= 1e-5 * reference.loss_sum);

    for num_stages in 1..=4 {
        for (batches, n) in [(&whole, 1), (&split, 3)] {
            let what = format!("W={num_stages} N={n}");
            let mut stages = make_stages(
                &params,
                num_stages,
                OptimizerConfig::sgd(0.1, 0.9),
                GradMode::Graph,
            );
            let feed = feed(&data, batches);
            let recipes = vec![v(0); num_stages];
            let (loss, _, input_grads) =
                run_minibatch(&mut stages, &feed, 0, n, &recipes, &recipes);
            assert!(
                (loss - unsplit_loss).abs() <= 1e-6 * unsplit_loss,
                "{what}: loss {loss} vs {unsplit_loss}"
            );
            assert_close(
                &format!("{what}: parameter gradients"),
                &all_grads(&mut stages),
                &unsplit_grads,
                1e-6,
            );
            // Each stage's input gradient, concatenated over micro-batches, is the reference's
            // gradient with respect to the input of the stage's first block.
            for (s, stage) in stages.iter().enumerate().skip(1) {
                let got: Vec<f64> = input_grads[s]
                    .iter()
                    .flat_map(|m| m.as_ref().unwrap().to_vec())
                    .map(f64::from)
                    .collect();
                let expected = &reference.input_grads[stage.first_block()];
                assert_close(
                    &format!("{what}: input gradient of stage {s}"),
                    &got,
                    expected,
                    1e-5,
                );
            }
        }
    }
}

#[test]
fn microbatch_gradients_sum_to_the_minibatch_mean_loss_gradient() {
    // The micro-batch losses are scaled by the mini-batch size M, not their own size: with
    // sizes 1 and 4, a mean-of-means reduction would weigh the single sample 4× more.
    let spec = ModelSpec::Mlp(MlpConfig {
        input: 6,
        hidden: vec![5],
        classes: 4,
    });
    let data = synthetic(10, 6, 4);
    let params = init_params(&spec, 3).unwrap();
    let samples = vec![4, 0, 7, 2, 9];
    let batches = Arc::new(EpochBatches {
        minibatches: vec![vec![samples[..1].to_vec(), samples[1..].to_vec()]],
    });
    let feed = feed(&data, &batches);
    let mut stages = make_stages(&params, 2, OptimizerConfig::sgd(0.1, 0.0), GradMode::Graph);
    run_minibatch(&mut stages, &feed, 0, 2, &[v(0), v(0)], &[v(0), v(0)]);
    let reference = reference(&params, &data, &samples, samples.len());
    let expected: Vec<f64> = reference
        .param_grads
        .iter()
        .flatten()
        .flatten()
        .copied()
        .collect();
    assert_close(
        "mean-loss gradient",
        &all_grads(&mut stages),
        &expected,
        1e-5,
    );
}

// ---------------------------------------------------------------------------------------------
// Gradient modes

/// A middle stage (1 of 3) holding one linear block `in → out` with the given file-layout
/// weights.
fn middle_stage(
    block: Block,
    weight: Vec<f32>,
    bias: Vec<f32>,
    lr: f64,
    mode: GradMode,
) -> BurnStage {
    let params = BlockParams::from_file_layout(block, vec![weight, bias]);
    BurnStage::new(1, 3, vec![params], 1, OptimizerConfig::sgd(lr, 0.0), mode).unwrap()
}

fn message(values: Vec<f32>, rows: usize, cols: usize) -> StageMessage {
    StageMessage::new(tensor2(values, rows, cols))
}

/// Runs on a middle stage: forward of micro-batches 0 and 1 with version 0; backward of 0 with
/// version 0 and an update (→ version 1, version 0 kept); backward of 1 with version 1.
/// Returns (x1, g1, gradient of the parameters from micro-batch 1, input gradient).
fn stale_backward(
    stage: &mut BurnStage,
    x: [Vec<f32>; 2],
    g: [Vec<f32>; 2],
    dims: (usize, usize, usize),
) -> (Vec<f32>, Vec<f32>) {
    let (rows, n_in, n_out) = dims;
    for j in 0..2 {
        let out = stage
            .forward(
                mb(0, j),
                message(x[j as usize].clone(), rows, n_in),
                None,
                &v(0),
                true,
            )
            .unwrap();
        assert!(matches!(out, ForwardOutput::Activation(_)));
    }
    let work = |j: u32, version| BackwardWork {
        microbatch: mb(0, j),
        recipe: v(version),
        output_gradient: Some(message(g[j as usize].clone(), rows, n_out)),
    };
    stage.backward(vec![work(0, 0)]).unwrap();
    stage.update(&[]).unwrap();
    assert_eq!(stage.live_version(), 1);
    let dx = stage
        .backward(vec![work(1, 1)])
        .unwrap()
        .pop()
        .unwrap()
        .unwrap()
        .to_vec();
    let grads = stage.accumulated_gradients().unwrap()[0]
        .iter()
        .flat_map(to_vec)
        .collect();
    (grads, dx)
}

/// Hand-computed VJP of `y = act(x W + b)` at weights `w` (memory layout [in, out]) with the
/// activation mask `mask` (1 = passes): (dW ‖ db, dx).
fn hand_vjp(
    x: &[f32],
    g: &[f32],
    w: &[f32],
    mask: &[bool],
    (rows, n_in, n_out): (usize, usize, usize),
) -> (Vec<f64>, Vec<f64>) {
    let gm: Vec<f64> = g
        .iter()
        .zip(mask)
        .map(|(&g, &m)| if m { f64::from(g) } else { 0.0 })
        .collect();
    let mut dw = vec![0.0; n_in * n_out];
    let mut db = vec![0.0; n_out];
    let mut dx = vec![0.0; rows * n_in];
    for r in 0..rows {
        for o in 0..n_out {
            db[o] += gm[r * n_out + o];
            for i in 0..n_in {
                dw[i * n_out + o] += f64::from(x[r * n_in + i]) * gm[r * n_out + o];
                dx[r * n_in + i] += gm[r * n_out + o] * f64::from(w[i * n_out + o]);
            }
        }
    }
    dw.extend(db);
    (dw, dx)
}

/// Pre-activations `x W + b` (memory-layout W) in f64.
fn pre_activation(
    x: &[f32],
    w: &[f32],
    b: &[f32],
    (rows, n_in, n_out): (usize, usize, usize),
) -> Vec<f64> {
    let mut out = vec![0.0; rows * n_out];
    for r in 0..rows {
        for o in 0..n_out {
            out[r * n_out + o] = f64::from(b[o])
                + (0..n_in)
                    .map(|i| f64::from(x[r * n_in + i]) * f64::from(w[i * n_out + o]))
                    .sum::<f64>();
        }
    }
    out
}

const DIMS: (usize, usize, usize) = (2, 3, 2);

fn stale_inputs() -> ([Vec<f32>; 2], [Vec<f32>; 2]) {
    let x = [
        vec![0.5, -1.0, 2.0, 1.5, 0.25, -0.5],
        vec![1.0, 0.5, -0.25, -2.0, 1.0, 0.75],
    ];
    let g = [vec![1.0, -2.0, 0.5, 3.0], vec![0.25, 1.0, -1.5, 0.5]];
    (x, g)
}

fn stale_weights() -> (Vec<f32>, Vec<f32>) {
    // File layout [out=2, in=3].
    (vec![0.2, -0.4, 0.3, 0.1, 0.5, -0.2], vec![0.05, -0.1])
}

#[test]
fn graph_mode_with_a_newer_backward_version_is_saved_input_and_new_weights() {
    let block = Block::Linear(Linear {
        input: 3,
        output: 2,
        relu: false,
    });
    let (w, b) = stale_weights();
    let (x, g) = stale_inputs();
    let mut stage = middle_stage(block, w, b, 0.5, GradMode::Graph);
    let v0 = flat_values(&stage.live_params());
    let (grads, dx) = stale_backward(&mut stage, x.clone(), g.clone(), DIMS);
    let w1 = stage.live_params()[0].values()[0].clone();
    assert_ne!(
        w1,
        stage.stored_weights(WeightKey::Version(0)).unwrap()[0].values()[0],
        "update changed W"
    );
    assert_eq!(
        flat_values(&stage.stored_weights(WeightKey::Version(0)).unwrap()),
        v0
    );
    let (expected_grads, expected_dx) = hand_vjp(&x[1], &g[1], &w1, &[true; 4], DIMS);
    assert_close("dW = x_savedᵀ g", &f64s(&grads), &expected_grads, 1e-6);
    assert_close("dx = g W_bᵀ", &f64s(&dx), &expected_dx, 1e-6);

    // Linear block: recompute agrees with graph.
    let mut stage = middle_stage(
        block,
        stale_weights().0,
        stale_weights().1,
        0.5,
        GradMode::Recompute,
    );
    let (grads_r, dx_r) = stale_backward(&mut stage, x, g, DIMS);
    assert_close(
        "recompute dW (linear)",
        &f64s(&grads_r),
        &f64s(&grads),
        1e-6,
    );
    assert_close("recompute dx (linear)", &f64s(&dx_r), &f64s(&dx), 1e-6);
}

#[test]
fn graph_and_recompute_differ_through_the_relu_mask_only() {
    let block = Block::Linear(Linear {
        input: 3,
        output: 2,
        relu: true,
    });
    let (w0, b0) = stale_weights();
    let (x, g) = stale_inputs();
    // A large learning rate so that the new weights flip some pre-activation signs.
    let mut graph = middle_stage(block, w0.clone(), b0.clone(), 4.0, GradMode::Graph);
    let (grads_g, dx_g) = stale_backward(&mut graph, x.clone(), g.clone(), DIMS);
    let mut recompute = middle_stage(block, w0.clone(), b0, 4.0, GradMode::Recompute);
    let (grads_r, dx_r) = stale_backward(&mut recompute, x.clone(), g.clone(), DIMS);

    let live = graph.live_params();
    let (w1, b1) = (live[0].values()[0].clone(), live[0].values()[1].clone());
    let v0 = graph.stored_weights(WeightKey::Version(0)).unwrap();
    let (w0m, b0m) = (v0[0].values()[0].clone(), v0[0].values()[1].clone());
    let mask_forward: Vec<bool> = pre_activation(&x[1], &w0m, &b0m, DIMS)
        .iter()
        .map(|&z| z > 0.0)
        .collect();
    let mask_backward: Vec<bool> = pre_activation(&x[1], &w1, &b1, DIMS)
        .iter()
        .map(|&z| z > 0.0)
        .collect();
    assert_ne!(mask_forward, mask_backward, "fixture must flip a ReLU");

    let (eg, edx) = hand_vjp(&x[1], &g[1], &w1, &mask_forward, DIMS);
    assert_close("graph dW (forward mask, new W)", &f64s(&grads_g), &eg, 1e-6);
    assert_close("graph dx (forward mask, new W)", &f64s(&dx_g), &edx, 1e-6);
    let (eg, edx) = hand_vjp(&x[1], &g[1], &w1, &mask_backward, DIMS);
    assert_close("recompute dW (new mask, new W)", &f64s(&grads_r), &eg, 1e-6);
    assert_close("recompute dx (new mask, new W)", &f64s(&dx_r), &edx, 1e-6);
    assert_ne!(grads_g, grads_r);
}

#[test]
fn graph_mode_at_the_last_stage_takes_the_loss_gradient_from_the_forward() {
    // One linear last stage (stage 1 of 2): dW = xᵀ (softmax(z_forward) − y)/M with the saved
    // x, and dx with the backward's weights.
    let data = synthetic(6, 3, 2);
    let block = Block::Linear(Linear {
        input: 3,
        output: 2,
        relu: false,
    });
    let (w, b) = stale_weights();
    let params = BlockParams::from_file_layout(block, vec![w, b]);
    let batches = Arc::new(EpochBatches {
        minibatches: vec![vec![vec![0, 1], vec![2, 3]]],
    });
    let mut stage = BurnStage::new(
        1,
        2,
        vec![params],
        1,
        OptimizerConfig::sgd(2.0, 0.0),
        GradMode::Graph,
    )
    .unwrap();
    let feed = feed(&data, &batches);
    let (x, _) = stale_inputs();
    for j in 0..2 {
        forward_fed(
            &mut stage,
            &feed,
            mb(0, j),
            Some(message(x[j as usize].clone(), 2, 3)),
            &v(0),
            true,
        )
        .unwrap();
    }
    let work = |j, version| BackwardWork {
        microbatch: mb(0, j),
        recipe: v(version),
        output_gradient: None,
    };
    stage.backward(vec![work(0, 0)]).unwrap();
    stage.update(&[]).unwrap();
    let dx = stage
        .backward(vec![work(1, 1)])
        .unwrap()
        .pop()
        .unwrap()
        .unwrap()
        .to_vec();
    let grads: Vec<f32> = stage.accumulated_gradients().unwrap()[0]
        .iter()
        .flat_map(to_vec)
        .collect();

    let v0 = stage.stored_weights(WeightKey::Version(0)).unwrap();
    let (w0, b0) = (v0[0].values()[0].clone(), v0[0].values()[1].clone());
    let w1 = stage.live_params()[0].values()[0].clone();
    let z = pre_activation(&x[1], &w0, &b0, DIMS);
    let mut g = Vec::new();
    for (r, &sample) in [2usize, 3].iter().enumerate() {
        let row = &z[r * 2..r * 2 + 2];
        let lse = row.iter().map(|z| z.exp()).sum::<f64>().ln();
        for (c, &zc) in row.iter().enumerate() {
            let target = f64::from(u8::from(data.labels[sample] as usize == c));
            g.push((((zc - lse).exp() - target) / 4.0) as f32);
        }
    }
    let (eg, edx) = hand_vjp(&x[1], &g, &w1, &[true; 4], DIMS);
    assert_close("last-stage dW", &f64s(&grads), &eg, 1e-6);
    assert_close("last-stage dx", &f64s(&dx), &edx, 1e-6);
}

/// The small MLP, its data, and one mini-batch of two micro-batches (3 and 4 samples).
fn two_microbatch_mlp() -> (Arc<Dataset>, ModelParams, Arc<EpochBatches>) {
    let batches = Arc::new(EpochBatches {
        minibatches: vec![vec![vec![1, 2, 3], vec![4, 5, 6, 7]]],
    });
    (
        synthetic(20, 6, 4),
        init_params(&mlp(), 5).unwrap(),
        batches,
    )
}

#[test]
fn same_weights_give_the_same_gradients_on_every_path() {
    // A blend of version 0 with itself is a different recipe with the same weights: it forces
    // the per-block (graph; stacked, as both micro-batches read it) and recompute paths, which
    // must agree with the kept graph. A wrong hint (no graph kept although the backward reads
    // the forward's weights) must take the same paths and give the same gradients.
    let (data, params, batches) = two_microbatch_mlp();
    let same = WeightRecipe::Blend {
        stale: 0,
        latest: 0,
        stale_weight: 0.5,
    };
    let mut results = Vec::new();
    for (mode, backward, hint) in [
        (GradMode::Graph, v(0), true),
        (GradMode::Graph, same, false),
        (GradMode::Recompute, same, false),
        (GradMode::Graph, v(0), false),
        (GradMode::Recompute, v(0), false),
    ] {
        let feed = feed(&data, &batches);
        let mut stages = make_stages(&params, 2, OptimizerConfig::sgd(0.1, 0.9), mode);
        let (_, _, input_grads) = run_minibatch_hinted(
            &mut stages,
            &feed,
            0,
            2,
            &[v(0), v(0)],
            &[backward, backward],
            &[hint, hint],
        );
        let dx: Vec<f64> = input_grads[1]
            .iter()
            .flat_map(|m| m.as_ref().unwrap().to_vec())
            .map(f64::from)
            .collect();
        results.push((all_grads(&mut stages), dx));
    }
    for (k, (grads, dx)) in results.iter().enumerate().skip(1) {
        assert_close(
            &format!("path {k} parameter gradients"),
            grads,
            &results[0].0,
            1e-6,
        );
        assert_close(
            &format!("path {k} input gradients"),
            dx,
            &results[0].1,
            1e-6,
        );
    }
}

#[test]
fn only_forwards_whose_backward_reads_their_weights_keep_a_graph() {
    // A graph whose backward never runs kept every weight version it read alive (TiMePReSt's
    // RSS grew by one weight set per mini-batch), so forwards told otherwise must build none.
    // In graph mode an MLP needs none at all: every block has a closed-form VJP, so even a
    // backward with the forward's weights takes the per-block path from the kept activations.
    let (data, params, batches) = two_microbatch_mlp();
    for (mode, hint, graphs) in [
        (GradMode::Graph, true, 0),
        (GradMode::Graph, false, 0),
        (GradMode::Recompute, true, 2),
        (GradMode::Recompute, false, 0),
    ] {
        let feed = feed(&data, &batches);
        let mut stages = make_stages(&params, 1, OptimizerConfig::sgd(0.1, 0.9), mode);
        for j in 0..2 {
            forward_fed(&mut stages[0], &feed, mb(0, j), None, &v(0), hint).unwrap();
        }
        assert_eq!(
            stages[0].num_saved_graphs(),
            graphs,
            "{mode:?}, hint {hint}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Versions, blends, predictions

/// A one-stage model trained for `steps` mini-batches (forward and backward with the live
/// version, update), keeping every old version; with the gradients of each step and the feed
/// of its data.
fn trained_single_stage(
    optimizer: OptimizerConfig,
    steps: u32,
) -> (BurnStage, Vec<Vec<Vec<Tensor<1>>>>, DataFeed) {
    let spec = ModelSpec::Mlp(MlpConfig {
        input: 6,
        hidden: vec![5],
        classes: 4,
    });
    let data = synthetic(30, 6, 4);
    let params = init_params(&spec, 9).unwrap();
    let order: Vec<usize> = (0..30).collect();
    let batches = Arc::new(EpochBatches::split(&order, 6, 2).unwrap());
    let feed = feed(&data, &batches);
    let mut stages = make_stages(&params, 1, optimizer, GradMode::Graph);
    let mut grads = Vec::new();
    for i in 0..steps {
        let k = stages[0].live_version();
        run_minibatch(&mut stages, &feed, i, 2, &[v(k)], &[v(k)]);
        grads.push(stages[0].accumulated_gradients().unwrap().to_vec());
        stages[0].update(&[]).unwrap();
    }
    (stages.pop().unwrap(), grads, feed)
}

#[test]
fn blend_extremes_are_bitwise_and_the_middle_follows_the_formula() {
    let (stage, _, _) = trained_single_stage(OptimizerConfig::sgd(0.1, 0.9), 2);
    let stale = stage.stored_weights(WeightKey::Version(0)).unwrap();
    let latest = stage.stored_weights(WeightKey::Version(2)).unwrap();
    let bits = |p: &[BlockParams]| {
        flat_values(p)
            .iter()
            .map(|x| x.to_bits())
            .collect::<Vec<_>>()
    };
    assert_ne!(bits(&stale), bits(&latest));
    assert_eq!(bits(&blend(&stale, &latest, 1.0)), bits(&stale));
    assert_eq!(bits(&blend(&stale, &latest, 0.0)), bits(&latest));
    let quarter = flat_values(&blend(&stale, &latest, 0.25));
    let expected: Vec<f64> = flat_values(&stale)
        .iter()
        .zip(flat_values(&latest))
        .map(|(&s, l)| f64::from(l) + 0.25 * (f64::from(s) - f64::from(l)))
        .collect();
    assert_close("σ = 0.25", &f64s(&quarter), &expected, 1e-6);
}

#[test]
fn an_update_from_a_base_steps_from_the_mean_of_its_weight_sets() {
    // Plain SGD: θ' = base − η·ḡ. Two identical stages take the same gradient; the one whose
    // step starts from mean(v0, v2, v2) ends (v0 − v2) / 3 away from the one stepping from the
    // live v2, and a base naming only the live version is the live step bit for bit.
    let step = |base: &[WeightRecipe]| {
        let (mut stage, _, feed) = trained_single_stage(OptimizerConfig::sgd(0.1, 0.0), 2);
        run_minibatch(
            std::slice::from_mut(&mut stage),
            &feed,
            2,
            2,
            &[v(2)],
            &[v(2)],
        );
        stage.update(base).unwrap();
        flat_values(&stage.stored_weights(WeightKey::Version(3)).unwrap())
    };
    let (stage, _, _) = trained_single_stage(OptimizerConfig::sgd(0.1, 0.0), 2);
    let stale = flat_values(&stage.stored_weights(WeightKey::Version(0)).unwrap());
    let latest = flat_values(&stage.stored_weights(WeightKey::Version(2)).unwrap());
    let from_live = step(&[]);
    assert_eq!(step(&[v(2), v(2)]), from_live);
    let from_mean = step(&[v(0), v(2), v(2)]);
    let shift: Vec<f64> = from_mean
        .iter()
        .zip(&from_live)
        .map(|(a, b)| f64::from(*a) - f64::from(*b))
        .collect();
    let expected: Vec<f64> = stale
        .iter()
        .zip(&latest)
        .map(|(s, l)| (f64::from(*s) - f64::from(*l)) / 3.0)
        .collect();
    assert!(
        expected.iter().any(|d| d.abs() > 1e-3),
        "test setup: v0 ≠ v2"
    );
    assert_close("mean-based step", &shift, &expected, 1e-5);
}

#[test]
fn blend_recipes_in_a_forward_read_the_blended_weights() {
    // A middle stage's forward output with Blend σ=1 / σ=0 is bitwise that of the stale /
    // latest version, and σ=0.25 gives the output of the blended weights.
    let block = Block::Linear(Linear {
        input: 3,
        output: 2,
        relu: false,
    });
    let (w, b) = stale_weights();
    let (x, g) = stale_inputs();
    let mut stage = middle_stage(block, w, b, 0.5, GradMode::Graph);
    stale_backward(&mut stage, x.clone(), g, DIMS);
    let forward = |stage: &mut BurnStage, j: u32, recipe: WeightRecipe| -> Vec<u32> {
        match stage
            .forward(mb(1, j), message(x[0].clone(), 2, 3), None, &recipe, true)
            .unwrap()
        {
            ForwardOutput::Activation(m) => m.to_vec().iter().map(|x| x.to_bits()).collect(),
            ForwardOutput::Loss(_) => unreachable!(),
        }
    };
    let blend = |sigma| WeightRecipe::Blend {
        stale: 0,
        latest: 1,
        stale_weight: sigma,
    };
    assert_eq!(
        forward(&mut stage, 0, blend(1.0)),
        forward(&mut stage, 1, v(0))
    );
    assert_eq!(
        forward(&mut stage, 2, blend(0.0)),
        forward(&mut stage, 3, v(1))
    );
    assert_ne!(forward(&mut stage, 4, v(0)), forward(&mut stage, 5, v(1)));
    // Blends are transient: nothing new is stored.
    assert_eq!(stage.num_stored_weight_sets(), 2);
    let err = stage
        .forward(
            mb(1, 6),
            message(x[0].clone(), 2, 3),
            None,
            &blend(1.5),
            true,
        )
        .unwrap_err();
    assert!(err.0.contains("outside [0, 1]"), "{err}");
}

#[test]
fn nag_prediction_applies_the_real_momentum_buffer() {
    let (lr, mu) = (0.1, 0.9);
    let (mut stage, grads, feed) = trained_single_stage(OptimizerConfig::sgd(lr, mu), 2);
    // b₁ = g₁, b₂ = μ b₁ + g₂; θ̂ = θ₂ − η μ b₂.
    let g1: Vec<f64> = grads[0]
        .iter()
        .flatten()
        .flat_map(to_vec)
        .map(f64::from)
        .collect();
    let g2: Vec<f64> = grads[1]
        .iter()
        .flatten()
        .flat_map(to_vec)
        .map(f64::from)
        .collect();
    let theta2 = f64s(&flat_values(&stage.live_params()));
    let expected: Vec<f64> = theta2
        .iter()
        .zip(g1.iter().zip(&g2))
        .map(|(t, (a, b))| t - lr * mu * (mu * a + b))
        .collect();

    let recipe = WeightRecipe::Predict {
        base: 2,
        horizon: 1,
        method: Prediction::Nag,
    };
    let key = WeightKey::Predicted {
        base: 2,
        horizon: 1,
        method: Prediction::Nag,
    };
    assert!(stage.stored_weights(key).is_none());
    let sets_before = stage.num_stored_weight_sets();
    let bytes_before = stage.stored_weight_bytes();
    forward_fed(&mut stage, &feed, mb(2, 0), None, &recipe, true).unwrap();
    let predicted = stage
        .stored_weights(key)
        .expect("the forward caches its prediction");
    assert_close(
        "NAG prediction",
        &f64s(&flat_values(&predicted)),
        &expected,
        1e-6,
    );
    assert_eq!(stage.num_stored_weight_sets(), sets_before + 1);
    assert_eq!(
        stage.stored_weight_bytes(),
        bytes_before + (6 * 5 + 5 + 5 * 4 + 4) * 4
    );

    // The matching backward reuses the cached prediction; a second forward reuses it too.
    forward_fed(&mut stage, &feed, mb(2, 1), None, &recipe, true).unwrap();
    let work = |j| BackwardWork {
        microbatch: mb(2, j),
        recipe,
        output_gradient: None,
    };
    stage.backward(vec![work(0), work(1)]).unwrap();
    assert_eq!(
        flat_values(&stage.stored_weights(key).unwrap()),
        flat_values(&predicted)
    );
    stage.update(&[]).unwrap();
    stage.release(key);
    assert!(stage.stored_weights(key).is_none());
    assert_eq!(
        stage.num_stored_weight_sets(),
        sets_before + 1,
        "v2 kept, prediction gone"
    );

    // A stale base, or a backward of a prediction no forward built, is an error.
    let err = forward_fed(&mut stage, &feed, mb(3, 0), None, &recipe, true).unwrap_err();
    assert!(err.0.contains("live version, which is 3"), "{err}");
    let other = WeightRecipe::Predict {
        base: 3,
        horizon: 2,
        method: Prediction::Nag,
    };
    forward_fed(&mut stage, &feed, mb(3, 0), None, &v(3), true).unwrap();
    let err = stage
        .backward(vec![BackwardWork {
            microbatch: mb(3, 0),
            recipe: other,
            output_gradient: None,
        }])
        .unwrap_err();
    assert!(err.0.contains("no forward built"), "{err}");
}

#[test]
fn nag_and_msnag_predict_the_optimizers_own_steps_with_zero_future_gradients() {
    // Plain momentum (where MSNAG is θ − η(μ + … + μ^s)·b), and with weight decay and
    // Nesterov, which the prediction follows because it rolls out the optimizer's own rule.
    let (lr, mu) = (0.05, 0.8);
    let configs = [
        OptimizerConfig::sgd(lr, mu),
        OptimizerConfig {
            weight_decay: 0.01,
            ..OptimizerConfig::sgd(lr, mu)
        },
        OptimizerConfig {
            kind: OptimizerKind::Sgd {
                momentum: mu,
                nesterov: true,
            },
            weight_decay: 0.01,
            ..OptimizerConfig::sgd(lr, mu)
        },
    ];
    for config in configs {
        for (method, horizon, steps) in [(Prediction::Msnag, 4, 4), (Prediction::Nag, 3, 1)] {
            let (mut stage, _, feed) = trained_single_stage(config.clone(), 3);
            let recipe = WeightRecipe::Predict {
                base: 3,
                horizon,
                method,
            };
            forward_fed(&mut stage, &feed, mb(3, 0), None, &recipe, true).unwrap();
            let predicted = stage.stored_weights(recipe.needs()[0]).unwrap();

            let mut optimizer = stage.optimizer().clone();
            let mut params = stage.live_params();
            for _ in 0..steps {
                let zeros: Vec<Vec<Tensor<1>>> = params
                    .iter()
                    .map(|p| p.tensors.iter().map(|t| t.zeros_like()).collect())
                    .collect();
                params = optimizer.step(&params, &zeros);
            }
            assert_close(
                &format!("{method:?} vs real steps with {config:?}"),
                &f64s(&flat_values(&predicted)),
                &f64s(&flat_values(&params)),
                1e-6,
            );
            // And the prediction really moved the weights.
            assert_ne!(flat_values(&predicted), flat_values(&stage.live_params()));
        }
    }
}

#[test]
fn prediction_without_an_sgd_momentum_buffer_is_an_error() {
    let recipe = WeightRecipe::Predict {
        base: 1,
        horizon: 1,
        method: Prediction::Nag,
    };
    let (mut adam, _, feed) = trained_single_stage(OptimizerConfig::adam(0.01), 1);
    let err = forward_fed(&mut adam, &feed, mb(1, 0), None, &recipe, true).unwrap_err();
    assert!(err.0.contains("Adam"), "{err}");
    let (mut plain, _, _) = trained_single_stage(OptimizerConfig::sgd(0.1, 0.0), 1);
    let err = forward_fed(&mut plain, &feed, mb(1, 0), None, &recipe, true).unwrap_err();
    assert!(err.0.contains("momentum 0"), "{err}");
}

#[test]
fn an_update_keeps_the_old_version_until_released() {
    let (mut stage, _, feed) = trained_single_stage(OptimizerConfig::sgd(0.1, 0.9), 0);
    let set_bytes = (6 * 5 + 5 + 5 * 4 + 4) * 4;
    assert_eq!(
        (stage.live_version(), stage.num_stored_weight_sets()),
        (0, 1)
    );
    assert_eq!(stage.stored_weight_bytes(), set_bytes);
    assert!(stage.update(&[]).is_err(), "no gradient to apply");

    let step = |stage: &mut BurnStage, i: u32| {
        let k = stage.live_version();
        for j in 0..2 {
            forward_fed(stage, &feed, mb(i, j), None, &v(k), true).unwrap();
        }
        let work = (0..2).map(|j| BackwardWork {
            microbatch: mb(i, j),
            recipe: v(k),
            output_gradient: None,
        });
        stage.backward(work.collect()).unwrap();
        assert_eq!(
            stage.num_saved_microbatches(),
            0,
            "backward frees the saved state"
        );
        stage.update(&[]).unwrap();
    };
    step(&mut stage, 0);
    assert_eq!(stage.live_version(), 1);
    assert_eq!(
        stage.stored_keys(),
        vec![WeightKey::Version(1), WeightKey::Version(0)]
    );
    assert_eq!(stage.stored_weight_bytes(), 2 * set_bytes);
    step(&mut stage, 1);
    assert_eq!(stage.num_stored_weight_sets(), 3);
    stage.release(WeightKey::Version(0));
    assert_eq!(
        stage.stored_keys(),
        vec![WeightKey::Version(2), WeightKey::Version(1)]
    );
    stage.release(WeightKey::Version(1));
    assert_eq!(
        (stage.num_stored_weight_sets(), stage.stored_weight_bytes()),
        (1, set_bytes)
    );
    // Releasing the live version lets the next update drop it instead of keeping it.
    stage.release(WeightKey::Version(2));
    assert_eq!(stage.num_stored_weight_sets(), 1);
    step(&mut stage, 2);
    assert_eq!(stage.stored_keys(), vec![WeightKey::Version(3)]);
    let err = forward_fed(&mut stage, &feed, mb(3, 0), None, &v(1), true).unwrap_err();
    assert!(err.0.contains("weight version 1 is not stored"), "{err}");
}

#[test]
fn forward_misuse_is_reported() {
    let (mut stage, _, feed) = trained_single_stage(OptimizerConfig::sgd(0.1, 0.9), 0);
    forward_fed(&mut stage, &feed, mb(0, 0), None, &v(0), true).unwrap();
    let err = forward_fed(&mut stage, &feed, mb(0, 0), None, &v(0), true).unwrap_err();
    assert!(err.0.contains("second forward"), "{err}");
    let err = forward_fed(&mut stage, &feed, mb(99, 0), None, &v(0), true).unwrap_err();
    assert!(err.0.contains("no micro-batch"), "{err}");
    let err = forward_fed(
        &mut stage,
        &feed,
        mb(0, 1),
        Some(message(vec![0.0; 5], 1, 5)),
        &v(0),
        true,
    )
    .unwrap_err();
    assert!(err.0.contains("has 5 features, the stage takes 6"), "{err}");
    let err = stage
        .forward(mb(0, 1), feed.input(mb(0, 1)).unwrap(), None, &v(0), true)
        .unwrap_err();
    assert!(err.0.contains("needs its targets"), "{err}");
    let err = stage
        .backward(vec![BackwardWork {
            microbatch: mb(5, 0),
            recipe: v(0),
            output_gradient: None,
        }])
        .unwrap_err();
    assert!(err.0.contains("without a saved forward"), "{err}");
    let holey = Arc::new(EpochBatches {
        minibatches: vec![vec![vec![1]], vec![vec![]]],
    });
    let holey = DataFeed::new(synthetic(30, 6, 4), holey, None, 1);
    let err = holey.input(mb(1, 0)).unwrap_err();
    assert!(err.0.contains("is empty"), "{err}");
}

// ---------------------------------------------------------------------------------------------
// Determinism, evaluation, checkpoints, plans

#[test]
fn training_is_bit_identical_across_runs() {
    let run = || {
        let spec = mlp();
        let data = synthetic(24, 6, 4);
        let params = init_params(&spec, 42).unwrap();
        let order: Vec<usize> = (0..24).rev().collect();
        let batches = Arc::new(EpochBatches::split(&order, 8, 3).unwrap());
        let feed = feed(&data, &batches);
        let mut stages = make_stages(&params, 3, OptimizerConfig::sgd(0.1, 0.9), GradMode::Graph);
        for i in 0..3 {
            let k: Vec<WeightRecipe> = stages.iter().map(|s| v(s.live_version())).collect();
            run_minibatch(&mut stages, &feed, i, 3, &k, &k);
            update_all(&mut stages);
        }
        flat_values(&all_params(&stages))
            .iter()
            .map(|x| x.to_bits())
            .collect::<Vec<_>>()
    };
    let first = run();
    assert_eq!(first, run());
    let init: Vec<u32> = flat_values(&init_params(&mlp(), 42).unwrap())
        .iter()
        .map(|x| x.to_bits())
        .collect();
    assert_ne!(first, init, "training changed the weights");
}

#[test]
fn evaluate_matches_the_reference_loss_and_counts_accuracy() {
    let spec = mlp();
    let data = synthetic(13, 6, 4);
    let params = init_params(&spec, 1).unwrap();
    let all: Vec<usize> = (0..13).collect();
    let reference = reference(&params, &data, &all, 13);
    let (loss, accuracy) = evaluate(&spec, &params, &data, 5).unwrap();
    assert!((loss - reference.loss_sum / 13.0).abs() < 1e-5, "{loss}");
    // Accuracy from the pipeline's own count.
    let batches = Arc::new(EpochBatches {
        minibatches: vec![vec![all]],
    });
    let feed = feed(&data, &batches);
    let mut stages = make_stages(&params, 2, OptimizerConfig::sgd(0.1, 0.9), GradMode::Graph);
    let (_, correct, _) = run_minibatch(&mut stages, &feed, 0, 1, &[v(0), v(0)], &[v(0), v(0)]);
    assert_eq!(accuracy, correct as f64 / 13.0);
    assert!(evaluate(&spec, &params, &data, 0).is_err());
    assert!(evaluate(&spec, &params[..2], &data, 4).is_err());
}

#[test]
fn a_checkpoint_saved_from_three_stages_loads_into_one() {
    let spec = mlp();
    let data = synthetic(12, 6, 4);
    let params = init_params(&spec, 8).unwrap();
    let order: Vec<usize> = (0..12).collect();
    let batches = Arc::new(EpochBatches::split(&order, 6, 2).unwrap());
    let feed = feed(&data, &batches);
    let mut stages = make_stages(&params, 3, OptimizerConfig::sgd(0.1, 0.9), GradMode::Graph);
    let recipes = vec![v(0); 3];
    run_minibatch(&mut stages, &feed, 0, 2, &recipes, &recipes);
    update_all(&mut stages);
    let trained = all_params(&stages);

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("model.safetensors");
    std::fs::write(&path, safetensors_bytes(&path, &trained).unwrap()).unwrap();
    let loaded = load_safetensors(&path, &spec).unwrap();
    let bits = |p: &[BlockParams]| {
        flat_values(p)
            .iter()
            .map(|x| x.to_bits())
            .collect::<Vec<_>>()
    };
    assert_eq!(bits(&loaded), bits(&trained));
    let one = BurnStage::new(
        0,
        1,
        loaded,
        0,
        OptimizerConfig::sgd(0.1, 0.9),
        GradMode::Graph,
    )
    .unwrap();
    assert_eq!(bits(&one.live_params()), bits(&trained));
    // File layout is PyTorch's [out, in].
    let file = std::fs::read(&path).unwrap();
    let st = safetensors::SafeTensors::deserialize(&file).unwrap();
    assert_eq!(st.tensor("layers.0.weight").unwrap().shape(), &[9, 6]);
    assert_eq!(st.tensor("layers.3.bias").unwrap().shape(), &[4]);
}

#[test]
fn bad_checkpoints_are_errors_naming_file_and_tensor() {
    let dir = tempfile::tempdir().unwrap();
    let spec = mlp();
    let path = dir.path().join("narrow.safetensors");
    let narrow = ModelSpec::Mlp(MlpConfig {
        input: 6,
        hidden: vec![9, 3, 7],
        classes: 4,
    });
    std::fs::write(
        &path,
        safetensors_bytes(&path, &init_params(&narrow, 0).unwrap()).unwrap(),
    )
    .unwrap();
    let err = load_safetensors(&path, &spec).unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, NnError::TensorMismatch { .. }), "{msg}");
    assert!(
        msg.contains("narrow.safetensors") && msg.contains("layers.1.weight"),
        "{msg}"
    );
    assert!(msg.contains("[8, 9]") && msg.contains("[3, 9]"), "{msg}");

    let shallow = ModelSpec::Mlp(MlpConfig {
        input: 6,
        hidden: vec![9, 8],
        classes: 4,
    });
    let path = dir.path().join("shallow.safetensors");
    std::fs::write(
        &path,
        safetensors_bytes(&path, &init_params(&shallow, 0).unwrap()).unwrap(),
    )
    .unwrap();
    let err = load_safetensors(&path, &spec).unwrap_err();
    assert!(
        matches!(
            err,
            NnError::TensorMismatch { .. } | NnError::MissingTensor { .. }
        ),
        "{err}"
    );
    let err = load_safetensors(
        &path,
        &ModelSpec::Mlp(MlpConfig {
            input: 6,
            hidden: vec![9],
            classes: 8,
        }),
    )
    .unwrap_err();
    assert!(
        matches!(&err, NnError::UnexpectedTensor { name, .. } if name == "layers.2.bias"),
        "{err}"
    );
    let deep = ModelSpec::Mlp(MlpConfig {
        input: 6,
        hidden: vec![9, 8, 4, 4],
        classes: 4,
    });
    let err = load_safetensors(&path, &deep).unwrap_err();
    assert!(
        matches!(&err, NnError::MissingTensor { name, .. } if name == "layers.3.weight"),
        "{err}"
    );

    let path = dir.path().join("garbage.safetensors");
    std::fs::write(&path, b"not a safetensors file").unwrap();
    let err = load_safetensors(&path, &spec).unwrap_err();
    assert!(
        matches!(err, NnError::Safetensors { .. }) && err.to_string().contains("garbage"),
        "{err}"
    );
    let err = load_safetensors(&dir.path().join("absent.safetensors"), &spec).unwrap_err();
    assert!(
        matches!(err, NnError::Io { .. }) && err.to_string().contains("absent"),
        "{err}"
    );
}

#[test]
fn batch_plans_split_minibatches_into_near_equal_microbatches() {
    let order: Vec<usize> = (0..23).collect();
    let batches = EpochBatches::split(&order[..22], 10, 3).unwrap();
    assert_eq!(
        batches.num_minibatches(),
        2,
        "2 leftover samples cannot fill 3 micro-batches"
    );
    assert_eq!(
        batches.minibatches[0],
        vec![vec![0, 1, 2, 3], vec![4, 5, 6], vec![7, 8, 9]]
    );
    assert_eq!(batches.minibatch_size(1), Some(10));
    assert_eq!(batches.minibatch_size(2), None);
    assert_eq!(batches.microbatch(mb(1, 2)), Some(&[17, 18, 19][..]));
    assert!(EpochBatches::split(&order, 2, 3).is_err());
    let full = EpochBatches::split(&order, 10, 3).unwrap();
    assert_eq!(full.minibatches.len(), 3);
    assert_eq!(full.minibatches[2], vec![vec![20], vec![21], vec![22]]);
}

#[test]
fn stages_check_their_blocks_when_built_and_the_data_when_fed() {
    let data = synthetic(4, 6, 4);
    let batches = Arc::new(EpochBatches {
        minibatches: vec![vec![vec![0, 1]]],
    });
    let feed = feed(&data, &batches);
    let params = init_params(&mlp(), 0).unwrap();
    let sgd = OptimizerConfig::sgd(0.1, 0.9);
    let new = |s, n, blocks: &[BlockParams]| {
        BurnStage::new(s, n, blocks.to_vec(), 0, sgd.clone(), GradMode::Graph)
    };
    assert!(new(0, 1, &params).is_ok());
    assert!(
        new(1, 3, &[params[0].clone(), params[2].clone()]).is_err(),
        "blocks must chain"
    );
    assert!(new(2, 2, &params).is_err());
    assert!(new(0, 1, &[]).is_err());
    // Blocks that do not fit the data are refused at the first forward fed from it.
    let refused = |stage: u32, blocks: &[BlockParams], input: Option<StageMessage>| {
        let mut stage = new(stage, 2, blocks).unwrap();
        forward_fed(&mut stage, &feed, mb(0, 0), input, &v(0), true)
            .unwrap_err()
            .0
    };
    let err = refused(0, &params[1..2], None);
    assert!(
        err.contains("features, the stage takes"),
        "stage 0 must take the data's features: {err}"
    );
    let err = refused(1, &params[1..3], Some(message(vec![1.0; 18], 2, 9)));
    assert!(
        err.contains("outputs per sample"),
        "the last stage must give the classes: {err}"
    );
    let m = message(vec![1.0; 6], 2, 3);
    assert_eq!(BurnStage::message_bytes(&m), 24);
}
