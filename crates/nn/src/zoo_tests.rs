//! Tests of the model zoo: parameter counts against the reference implementations' formulas,
//! shapes, split-independence of outputs and gradients, graph-mode gradients through
//! convolutions, batch norms and residual blocks, running statistics per weight version, and
//! checkpoints with buffers. Widths are small so the suite stays fast.

use std::ops::Range;
use std::sync::Arc;

use timeprest_data::Dataset;
use timeprest_policy::{WeightKey, WeightRecipe};
use timeprest_runtime::StageCompute;

use crate::tensor::{tensor2, to_vec};
use crate::tests::{all_grads, assert_close, run_minibatch, update_all, v};
use crate::*;

/// Deterministic images of `shape`, values in [-1, 1], labels cycling over `classes`.
fn images(count: usize, shape: [usize; 3], classes: usize) -> Arc<Dataset> {
    let len: usize = shape.iter().product();
    let mut state = 0x0BAD_5EED_u64;
    let features = (0..count * len)
        .map(|_| {
            state = state
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            ((state >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect();
    let labels = (0..count).map(|i| ((i * 3 + 1) % classes) as u32).collect();
    Arc::new(Dataset::new("images", shape, classes, features, labels).unwrap())
}

fn net(arch: Arch, input: [usize; 3], width: f64, depth: Vec<usize>) -> ModelSpec {
    ModelSpec::Net(NetConfig {
        arch,
        input,
        classes: 10,
        width,
        depth,
    })
}

/// Stages of `params` over `split`.
fn stages_over(
    params: &ModelParams,
    split: &[Range<usize>],
    mode: GradMode,
    data: &Arc<Dataset>,
    plan: &Arc<BatchPlan>,
) -> Vec<BurnStage> {
    split
        .iter()
        .enumerate()
        .map(|(s, range)| {
            let mut stage = BurnStage::new(
                s as u32,
                split.len() as u32,
                params[range.clone()].to_vec(),
                range.start,
                OptimizerConfig::sgd(0.1, 0.9),
                mode,
                data.clone(),
            )
            .unwrap();
            stage.set_plan(plan.clone());
            stage
        })
        .collect()
}

#[test]
fn reference_sizes_have_the_reference_parameter_counts() {
    let size = |name, input| {
        let size = ModelSize {
            hidden: vec![],
            width: 1.0,
            depth: vec![],
        };
        ModelSpec::from_name(name, input, 10, &size)
            .unwrap()
            .param_count()
    };
    // The counts of the reference PyTorch modules (LeNet-5 on 28×28 or 32×32 grey images;
    // bearpaw's CIFAR AlexNet; kuangliu's CIFAR VGG and ResNet, 10 classes).
    assert_eq!(size("lenet5", [1, 28, 28]), 61_706);
    assert_eq!(size("lenet5", [1, 32, 32]), 61_706);
    assert_eq!(size("alexnet", [3, 32, 32]), 2_472_266);
    assert_eq!(size("vgg11", [3, 32, 32]), 9_231_114);
    assert_eq!(size("vgg16", [3, 32, 32]), 14_728_266);
    assert_eq!(size("resnet18", [3, 32, 32]), 11_173_962);
    assert_eq!(size("resnet50", [3, 32, 32]), 23_520_842);
}

/// Parameters of a conv (k×k, with or without bias) and of a batch norm.
fn conv(i: usize, o: usize, k: usize, bias: bool) -> usize {
    i * o * k * k + if bias { o } else { 0 }
}

/// ResNet's parameter count written out from the paper's structure, for any width and depth.
fn resnet_formula(bottleneck: bool, c0: usize, planes: [usize; 4], depth: &[usize]) -> usize {
    let expansion = if bottleneck { 4 } else { 1 };
    let mut total = conv(3, c0, 3, false) + 2 * c0;
    let mut c = c0;
    for (g, (&n, p)) in depth.iter().zip(planes).enumerate() {
        for i in 0..n {
            let stride = if g > 0 && i == 0 { 2 } else { 1 };
            let out = expansion * p;
            total += if bottleneck {
                conv(c, p, 1, false)
                    + conv(p, p, 3, false)
                    + conv(p, out, 1, false)
                    + 4 * p
                    + 2 * out
            } else {
                conv(c, p, 3, false) + conv(p, p, 3, false) + 4 * p
            };
            if stride != 1 || c != out {
                total += conv(c, out, 1, false) + 2 * out;
            }
            c = out;
        }
    }
    total + c * 10 + 10
}

#[test]
fn scaled_models_have_the_formula_parameter_counts() {
    // width 1/8: 64 → 8 channels, etc.
    let spec = net(Arch::Resnet18, [3, 32, 32], 0.125, vec![1, 2, 1, 1]);
    assert_eq!(
        spec.param_count(),
        resnet_formula(false, 8, [8, 16, 32, 64], &[1, 2, 1, 1])
    );
    let spec = net(Arch::Resnet50, [3, 32, 32], 0.125, vec![]);
    assert_eq!(
        spec.param_count(),
        resnet_formula(true, 8, [8, 16, 32, 64], &[3, 4, 6, 3])
    );
    let vgg: usize = [
        (3, 8),
        (8, 16),
        (16, 32),
        (32, 32),
        (32, 64),
        (64, 64),
        (64, 64),
        (64, 64),
    ]
    .iter()
    .map(|&(i, o)| conv(i, o, 3, true) + 2 * o)
    .sum();
    assert_eq!(
        net(Arch::Vgg11, [3, 32, 32], 0.125, vec![]).param_count(),
        vgg + 64 * 10 + 10
    );
    // Blocks: VGG-16 = 13 conv + 13 BN + 5 pools + global pool + classifier;
    // ResNet-50 = stem conv + BN + 16 bottlenecks + global pool + classifier.
    assert_eq!(
        net(Arch::Vgg16, [3, 32, 32], 0.125, vec![]).num_blocks(),
        33
    );
    assert_eq!(
        net(Arch::Resnet50, [3, 32, 32], 0.125, vec![]).num_blocks(),
        20
    );
}

#[test]
fn inputs_the_model_cannot_take_are_errors_naming_model_and_shape() {
    let size = ModelSize {
        hidden: vec![],
        width: 0.25,
        depth: vec![],
    };
    let err = ModelSpec::from_name("vgg16", [1, 28, 28], 10, &size)
        .unwrap_err()
        .to_string();
    assert!(err.contains("vgg16") && err.contains("1×28×28"), "{err}");
    assert!(err.contains("maxpool2"), "{err}");
    let err = ModelSpec::from_name("lenet5", [1, 8, 8], 10, &size)
        .unwrap_err()
        .to_string();
    assert!(err.contains("lenet5") && err.contains("1×8×8"), "{err}");
    let err = ModelSpec::from_name("vgg19", [3, 32, 32], 10, &size)
        .unwrap_err()
        .to_string();
    assert!(err.contains("vgg19") && err.contains("resnet50"), "{err}");
    let bad_depth = ModelSize {
        depth: vec![1, 1],
        ..size.clone()
    };
    let err = ModelSpec::from_name("resnet18", [3, 32, 32], 10, &bad_depth)
        .unwrap_err()
        .to_string();
    assert!(err.contains("depth"), "{err}");
    let bad_width = ModelSize {
        width: 0.0,
        ..size.clone()
    };
    assert!(ModelSpec::from_name("alexnet", [3, 32, 32], 10, &bad_width).is_err());
    // Any channel count and any size the network can take: ResNet on MNIST, LeNet on CIFAR.
    assert!(ModelSpec::from_name("resnet18", [1, 28, 28], 10, &size).is_ok());
    assert!(ModelSpec::from_name("lenet5", [3, 32, 32], 10, &size).is_ok());
    // A model that does not fit the data it is given.
    let spec = ModelSpec::from_name("lenet5", [3, 32, 32], 10, &size).unwrap();
    let data = images(4, [1, 28, 28], 10);
    let err = spec.check_data(&data).unwrap_err().to_string();
    assert!(
        err.contains("lenet5") && err.contains("3×32×32") && err.contains("1×28×28"),
        "{err}"
    );
    let params = init_params(&spec, 0).unwrap();
    assert!(evaluate(&spec, &params, &data, 2).is_err());
}

/// Small versions of every zoo model with data they take.
fn small_models() -> Vec<(ModelSpec, Arc<Dataset>)> {
    let mnist = images(8, [1, 28, 28], 10);
    let cifar = images(8, [3, 32, 32], 10);
    vec![
        (net(Arch::Lenet5, [1, 28, 28], 0.5, vec![]), mnist),
        (
            net(Arch::Alexnet, [3, 32, 32], 0.0625, vec![]),
            cifar.clone(),
        ),
        (net(Arch::Vgg11, [3, 32, 32], 0.0625, vec![]), cifar.clone()),
        (net(Arch::Vgg16, [3, 32, 32], 0.0625, vec![]), cifar.clone()),
        (
            net(Arch::Resnet18, [3, 32, 32], 0.0625, vec![1, 1, 1, 1]),
            cifar.clone(),
        ),
        (
            net(Arch::Resnet50, [3, 32, 32], 0.0625, vec![1, 1, 1, 1]),
            cifar,
        ),
    ]
}

#[test]
fn every_model_has_consistent_forward_and_backward_shapes() {
    let plan = Arc::new(BatchPlan {
        minibatches: vec![vec![vec![0, 1, 2], vec![3, 4]]],
    });
    for (spec, data) in small_models() {
        let params = init_params(&spec, 3).unwrap();
        let blocks = spec.blocks();
        // Each block's output is the next one's input, down to [batch, classes].
        let mut x = tensor2(data.gather(&[0, 1]).0, 2, data.num_features);
        for p in &params {
            assert_eq!(
                x.dims(),
                [2, p.block.input_features()],
                "{}",
                p.block.label()
            );
            x = p.forward_eval(x);
        }
        assert_eq!(x.dims(), [2, 10], "{}", spec.name());
        let mut stages = stages_over(
            &params,
            &partition_uniform(blocks.len(), 1).unwrap(),
            GradMode::Graph,
            &data,
            &plan,
        );
        let (loss, _, _) = run_minibatch(&mut stages, 0, 2, &[v(0)], &[v(0)]);
        assert!(
            loss.is_finite() && loss > 0.0,
            "{}: loss {loss}",
            spec.name()
        );
        let grads = stages[0].accumulated_gradients().unwrap();
        for (g, p) in grads.iter().zip(&params) {
            let sizes: Vec<usize> = g.iter().map(|t| t.shape().num_elements()).collect();
            assert_eq!(sizes, p.block.param_sizes(), "{}", p.block.label());
        }
        let flat = all_grads(&stages);
        assert_eq!(flat.len(), spec.param_count());
        assert!(flat.iter().all(|g| g.is_finite()));
        assert!(
            flat.iter().any(|&g| g != 0.0),
            "{}: all gradients zero",
            spec.name()
        );
    }
}

#[test]
fn split_models_compute_the_unsplit_outputs_and_gradients() {
    let plan = Arc::new(BatchPlan {
        minibatches: vec![vec![vec![0, 1, 2], vec![3, 4, 5]]],
    });
    for (spec, data) in small_models() {
        let params = init_params(&spec, 4).unwrap();
        let n = params.len();
        let mut one = stages_over(
            &params,
            &partition_uniform(n, 1).unwrap(),
            GradMode::Graph,
            &data,
            &plan,
        );
        let (loss, correct, _) = run_minibatch(&mut one, 0, 2, &[v(0)], &[v(0)]);
        let reference = all_grads(&one);
        for stages in 2..=4 {
            for split in [
                partition_uniform(n, stages).unwrap(),
                partition_balanced(
                    &spec
                        .blocks()
                        .iter()
                        .map(|b| b.param_count() as f64)
                        .collect::<Vec<_>>(),
                    stages,
                )
                .unwrap(),
            ] {
                let mut pipe = stages_over(&params, &split, GradMode::Graph, &data, &plan);
                let recipes = vec![v(0); stages];
                let (l, c, _) = run_minibatch(&mut pipe, 0, 2, &recipes, &recipes);
                let what = format!("{} split {split:?}", spec.name());
                assert!(
                    (l - loss).abs() <= 1e-5 * loss,
                    "{what}: loss {l} vs {loss}"
                );
                assert_eq!(c, correct, "{what}");
                assert_close(&what, &all_grads(&pipe), &reference, 1e-4);
            }
        }
    }
}

#[test]
fn graph_and_recompute_paths_agree_through_convolutions_norms_and_residuals() {
    // The same weights through a different recipe force the per-block graph path and the
    // recompute path; both must give the kept graph's gradients for every block kind.
    let same = WeightRecipe::Blend {
        stale: 0,
        latest: 0,
        stale_weight: 0.5,
    };
    let plan = Arc::new(BatchPlan {
        minibatches: vec![vec![vec![0, 1, 2], vec![3, 4, 5]]],
    });
    for (spec, data) in small_models().into_iter().skip(2) {
        let params = init_params(&spec, 6).unwrap();
        let split = partition_uniform(params.len(), 3).unwrap();
        let mut results = Vec::new();
        for (mode, backward) in [
            (GradMode::Graph, v(0)),
            (GradMode::Graph, same),
            (GradMode::Recompute, same),
        ] {
            let mut stages = stages_over(&params, &split, mode, &data, &plan);
            run_minibatch(&mut stages, 0, 2, &[v(0); 3], &[backward; 3]);
            results.push(all_grads(&stages));
        }
        for (k, grads) in results.iter().enumerate().skip(1) {
            assert_close(
                &format!("{} path {k}", spec.name()),
                grads,
                &results[0],
                1e-4,
            );
        }
    }
}

#[test]
fn graph_mode_with_new_weights_recomputes_inner_activations_of_a_residual_block() {
    // One stage = one basic block. Forward with version 0, backward with version 1: graph mode
    // must equal the VJP of relu_mask(forward output) ⊙ block_v1(saved input); recompute mode
    // takes the mask from block_v1 itself. Both are checked against an explicit autodiff.
    let input = [4, 6, 6];
    let block = Block::BasicBlock {
        input,
        planes: 8,
        stride: 2,
    };
    let data = images(6, input, 10);
    let blocks = [
        Block::Conv2d {
            input,
            channels: 4,
            kernel: 3,
            stride: 1,
            padding: 1,
            bias: true,
            relu: true,
        },
        block,
    ];
    let params: Vec<BlockParams> = blocks
        .iter()
        .enumerate()
        .map(|(i, &b)| {
            let values = b
                .param_sizes()
                .into_iter()
                .chain(b.buffer_sizes())
                .enumerate()
                .map(|(t, n)| {
                    (0..n)
                        .map(|k| ((k * 37 + t * 11 + i) % 17) as f32 / 17.0 - 0.45)
                        .collect()
                })
                .collect();
            BlockParams::from_file_layout(b, values)
        })
        .collect();
    let plan = Arc::new(BatchPlan {
        minibatches: vec![vec![vec![0, 1, 2]], vec![vec![3, 4, 5]]],
    });
    let x: Vec<f32> = data.gather(&[0, 1, 2]).0;
    let x = tensor2(x, 3, data.num_features);
    for mode in [GradMode::Graph, GradMode::Recompute] {
        let mut stage = BurnStage::new(
            1,
            3,
            vec![params[1].clone()],
            1,
            OptimizerConfig::sgd(0.5, 0.0),
            mode,
            Arc::new(Dataset::new("x", [4, 6, 6], 10, vec![0.0; 4 * 36], vec![0]).unwrap()),
        )
        .unwrap();
        stage.set_plan(plan.clone());
        // Input: the conv block's output on real data.
        let input = params[0].forward_eval(x.clone());
        let out_features = block.output_features();
        let upstream: Vec<f32> = (0..3 * out_features)
            .map(|k| ((k % 7) as f32 - 3.0) / 7.0)
            .collect();
        let msg = |v: Vec<f32>, cols| StageMessage::new(tensor2(v, 3, cols));
        // Make version 1: one forward/backward/update on mini-batch 1.
        let mid = timeprest_schedule::MicrobatchId::new(1, 0);
        stage
            .forward(mid, Some(StageMessage::new(input.clone())), &v(0), true)
            .unwrap();
        stage
            .backward(vec![timeprest_runtime::BackwardWork {
                microbatch: mid,
                recipe: v(0),
                output_gradient: Some(msg(upstream.clone(), out_features)),
            }])
            .unwrap();
        stage.update().unwrap();
        let id = timeprest_schedule::MicrobatchId::new(0, 0);
        let forward_out =
            match stage.forward(id, Some(StageMessage::new(input.clone())), &v(0), true) {
                Ok(timeprest_runtime::ForwardOutput::Activation(m)) => m.into_tensor(),
                other => panic!("{other:?}"),
            };
        let dx = stage
            .backward(vec![timeprest_runtime::BackwardWork {
                microbatch: id,
                recipe: v(1),
                output_gradient: Some(msg(upstream.clone(), out_features)),
            }])
            .unwrap();
        let dx = to_vec(dx[0].as_ref().unwrap().tensor());
        let grads: Vec<Vec<f32>> = stage.accumulated_gradients().unwrap()[0]
            .iter()
            .map(to_vec)
            .collect();
        // Explicit autodiff with version 1's weights.
        let v1 = stage
            .stored_weights(WeightKey::Version(1))
            .unwrap()
            .remove(0);
        let xa = input.clone().autodiff().require_grad();
        let leaves: Vec<_> = v1
            .tensors
            .iter()
            .map(|t| t.clone().autodiff().require_grad())
            .collect();
        let pre = block.forward_weighted(
            xa.clone(),
            &leaves,
            crate::block::Norm::Batch(&mut Vec::new()),
        );
        let mask = match mode {
            GradMode::Graph => forward_out.clone().sign(),
            GradMode::Recompute => pre.clone().inner().greater_elem(0.0).float(),
        };
        let y = pre.mul(mask.autodiff());
        let up = tensor2(upstream.clone(), 3, out_features).autodiff();
        let gr = y.mul(up).sum().backward();
        let expect_dx = to_vec(&xa.grad(&gr).unwrap());
        let f = |a: &[f32]| a.iter().map(|&x| f64::from(x)).collect::<Vec<_>>();
        assert_close(&format!("{mode:?} dx"), &f(&dx), &f(&expect_dx), 1e-5);
        for (k, leaf) in leaves.iter().enumerate() {
            let expect = to_vec(&leaf.grad(&gr).unwrap());
            assert_close(
                &format!("{mode:?} param {k}"),
                &f(&grads[k]),
                &f(&expect),
                1e-5,
            );
        }
        // With new weights the forward's mask is not the recomputed one here (else the test
        // could not tell the modes apart).
        let recomputed = to_vec(&relu_sign(&block, &v1, &input));
        assert_ne!(
            recomputed,
            to_vec(&forward_out.sign()),
            "weights changed too little"
        );
    }
}

/// sign(relu(block(x))) with `params`, plain, in training normalisation.
fn relu_sign(
    block: &Block,
    params: &BlockParams,
    x: &burn::tensor::Tensor<2>,
) -> burn::tensor::Tensor<2> {
    block
        .forward(
            x.clone(),
            &params.tensors,
            crate::block::Norm::Batch(&mut Vec::new()),
        )
        .sign()
}

#[test]
fn running_statistics_move_once_per_forward_on_the_live_version_and_stay_with_each_version() {
    // Stage 0 = conv + batch norm; the batch norm's batch statistics are those of the conv
    // output, computed here independently.
    let input = [2, 5, 5];
    let data = images(8, input, 10);
    let spec = net(Arch::Vgg11, [3, 32, 32], 0.0625, vec![]); // only for its block kinds
    drop(spec);
    let conv = Block::Conv2d {
        input,
        channels: 3,
        kernel: 3,
        stride: 1,
        padding: 1,
        bias: true,
        relu: false,
    };
    let norm = Block::BatchNorm2d {
        input: [3, 5, 5],
        relu: true,
    };
    let pool = Block::GlobalAvgPool { input: [3, 5, 5] };
    let fc = Block::Linear {
        input: 3,
        output: 10,
        relu: false,
    };
    let params: ModelParams = [conv, norm, pool, fc]
        .iter()
        .map(|&b| {
            let values = b
                .param_sizes()
                .into_iter()
                .map(|n| {
                    (0..n)
                        .map(|k| ((k * 13) % 11) as f32 / 11.0 - 0.4)
                        .collect()
                })
                .chain(
                    b.buffer_sizes()
                        .into_iter()
                        .enumerate()
                        .map(|(i, n)| vec![i as f32; n]),
                )
                .collect();
            BlockParams::from_file_layout(b, values)
        })
        .collect();
    let plan = Arc::new(BatchPlan {
        minibatches: vec![vec![vec![0, 1, 2, 3]], vec![vec![4, 5, 6, 7]]],
    });
    let mut stages = stages_over(&params, &[0..2, 2..4], GradMode::Recompute, &data, &plan);
    let stats_of = |samples: &[usize]| {
        let x = tensor2(data.gather(samples).0, samples.len(), data.num_features);
        let y = to_vec(&params[0].forward_eval(x));
        let n = (samples.len() * 25) as f64;
        (0..3)
            .map(|c| {
                let vals: Vec<f64> = y
                    .chunks(75)
                    .flat_map(|s| s[c * 25..(c + 1) * 25].iter().map(|&v| f64::from(v)))
                    .collect();
                let mean = vals.iter().sum::<f64>() / n;
                let var = vals.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1.0);
                (mean, var)
            })
            .collect::<Vec<_>>()
    };
    let buffers = |stage: &BurnStage, key| -> Vec<Vec<f64>> {
        stage.stored_weights(key).unwrap()[1]
            .buffers
            .iter()
            .map(|t| to_vec(t).into_iter().map(f64::from).collect())
            .collect()
    };
    // Initial buffers: mean 0, var 1 (as written above).
    let stats = stats_of(&[0, 1, 2, 3]);
    run_minibatch(&mut stages, 0, 1, &[v(0), v(0)], &[v(0), v(0)]);
    let after_one = buffers(&stages[0], WeightKey::Version(0));
    for c in 0..3 {
        let (mean, var) = stats[c];
        assert!((after_one[0][c] - 0.1 * mean).abs() < 1e-5, "mean {c}");
        assert!(
            (after_one[1][c] - (0.9 + 0.1 * var)).abs() < 1e-4,
            "var {c}"
        );
    }
    // The update hands the statistics on to version 1; version 0 stays stored (not released).
    for stage in &mut stages {
        stage.update().unwrap();
    }
    assert_eq!(buffers(&stages[0], WeightKey::Version(1)), after_one);
    // A stale forward (reading version 0) moves the *live* version's statistics; the recompute
    // backward does not move them again; version 0 keeps its own.
    run_minibatch(&mut stages, 1, 1, &[v(0), v(1)], &[v(1), v(1)]);
    let stats = stats_of(&[4, 5, 6, 7]);
    let live = buffers(&stages[0], WeightKey::Version(1));
    for c in 0..3 {
        let expect = 0.9 * after_one[0][c] + 0.1 * stats[c].0;
        assert!((live[0][c] - expect).abs() < 1e-5, "live mean {c}");
    }
    assert_eq!(buffers(&stages[0], WeightKey::Version(0)), after_one);
    // The buffers count as stored bytes.
    let param_and_buffer_bytes: u64 = stages[0].live_params().iter().map(BlockParams::bytes).sum();
    assert_eq!(
        param_and_buffer_bytes,
        4 * (2 * 9 * 3 + 3 + 2 * 3 + 2 * 3) as u64
    );
    update_all(&mut stages);
}

#[test]
fn evaluation_uses_running_statistics_and_training_uses_batch_statistics() {
    let (spec, data) = small_models().swap_remove(4); // resnet18, 1 block per group
    let params = init_params(&spec, 2).unwrap();
    // With running mean 0 and variance 1 the eval forward is the affine map with identity
    // statistics; training normalises by the batch: the outputs must differ.
    let x = tensor2(data.gather(&[0, 1, 2, 3]).0, 4, data.num_features);
    let eval = to_vec(&params[1].forward_eval(params[0].forward_eval(x.clone())));
    let h = params[0].forward_eval(x);
    let train = to_vec(&params[1].block.forward(
        h,
        &params[1].tensors,
        crate::block::Norm::Batch(&mut Vec::new()),
    ));
    assert_ne!(eval, train);
    let (loss, acc) = evaluate(&spec, &params, &data, 3).unwrap();
    assert!(loss.is_finite() && (0.0..=1.0).contains(&acc));
}

#[test]
fn checkpoints_carry_convolution_weights_and_running_statistics() {
    let (spec, data) = small_models().swap_remove(5); // resnet50, 1 block per group
    let params = init_params(&spec, 1).unwrap();
    let plan = Arc::new(BatchPlan {
        minibatches: vec![vec![vec![0, 1, 2, 3]]],
    });
    let mut stages = stages_over(
        &params,
        &partition_uniform(params.len(), 2).unwrap(),
        GradMode::Graph,
        &data,
        &plan,
    );
    run_minibatch(&mut stages, 0, 1, &[v(0), v(0)], &[v(0), v(0)]);
    update_all(&mut stages);
    let trained: ModelParams = stages.iter().flat_map(BurnStage::live_params).collect();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("resnet.safetensors");
    save_safetensors(&path, &trained).unwrap();
    let loaded = load_safetensors(&path, &spec).unwrap();
    for (a, b) in loaded.iter().zip(&trained) {
        assert_eq!(
            a.to_file_layout(),
            b.to_file_layout(),
            "{}",
            a.block.label()
        );
    }
    let file = std::fs::read(&path).unwrap();
    let st = safetensors::SafeTensors::deserialize(&file).unwrap();
    // Block 2 is the first bottleneck: 4 → 16 channels at width 1/16.
    assert_eq!(st.tensor("layers.0.weight").unwrap().shape(), &[4, 3, 3, 3]);
    assert_eq!(
        st.tensor("layers.2.conv3.weight").unwrap().shape(),
        &[16, 4, 1, 1]
    );
    assert_eq!(
        st.tensor("layers.2.shortcut.1.running_var")
            .unwrap()
            .shape(),
        &[16]
    );
    let mean = st.tensor("layers.1.running_mean").unwrap();
    assert!(
        mean.data().iter().any(|&b| b != 0),
        "running mean was saved after training"
    );
}

#[test]
fn partitioning_a_model_by_time_or_parameters_gives_valid_splits() {
    let spec = net(Arch::Vgg11, [3, 32, 32], 0.0625, vec![]);
    let n = spec.num_blocks();
    for method in PartitionMethod::ALL {
        let split = partition_model(&spec, method, 4, 2).unwrap();
        assert_eq!(split.len(), 4);
        assert_eq!((split[0].start, split[3].end), (0, n));
        assert!(
            split
                .windows(2)
                .all(|w| w[0].end == w[1].start && !w[0].is_empty())
        );
    }
    let err = partition_model(&spec, PartitionMethod::Time, n + 1, 2).unwrap_err();
    assert!(matches!(err, NnError::TooManyStages { .. }), "{err}");
    let profiles = profile_blocks(&spec, 2, 1).unwrap();
    assert_eq!(profiles.len(), n);
    assert!(
        profiles
            .iter()
            .all(|p| p.forward > 0.0 && p.backward >= 0.0)
    );
}
