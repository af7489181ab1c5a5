//! Tests of the model zoo: parameter counts against the reference implementations' formulas,
//! shapes, split-independence of outputs and gradients, graph-mode gradients through
//! convolutions, batch norms, residual blocks and transformer layers, causal masking, running
//! statistics per weight version, and checkpoints with buffers. Widths are small so the suite
//! stays fast.

use std::ops::Range;
use std::sync::Arc;

use timeprest_data::Dataset;
use timeprest_policy::{WeightKey, WeightRecipe};
use timeprest_runtime::StageCompute;

use crate::tensor::{tensor2, to_vec};
use crate::tests::{all_grads, assert_close, feed, forward_fed, mb, run_minibatch, update_all, v};
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

/// Deterministic token windows for a language model: `count` samples of `seq_len` ids below
/// `vocab`, each position's label the id at the next position of one long pseudo-random text.
fn tokens(count: usize, seq_len: usize, vocab: usize) -> Arc<Dataset> {
    let mut state = 0x7E47_u64;
    let text: Vec<u32> = (0..count * seq_len + 1)
        .map(|_| {
            state = state
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            ((state >> 33) % vocab as u64) as u32
        })
        .collect();
    let (mut features, mut labels) = (Vec::new(), Vec::new());
    for k in 0..count {
        let start = k * seq_len;
        features.extend(text[start..start + seq_len].iter().map(|&id| id as f32));
        labels.extend_from_slice(&text[start + 1..start + seq_len + 1]);
    }
    Arc::new(
        Dataset::with_targets("tokens", [1, 1, seq_len], vocab, seq_len, features, labels).unwrap(),
    )
}

fn gpt(
    seq_len: usize,
    vocab_size: usize,
    embed_dim: usize,
    heads: usize,
    layers: usize,
) -> ModelSpec {
    ModelSpec::Gpt(GptConfig {
        seq_len,
        vocab_size,
        embed_dim,
        heads,
        layers,
    })
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
fn stages_over(params: &ModelParams, split: &[Range<usize>], mode: GradMode) -> Vec<BurnStage> {
    split
        .iter()
        .enumerate()
        .map(|(s, range)| {
            BurnStage::new(
                s as u32,
                split.len() as u32,
                params[range.clone()].to_vec(),
                range.start,
                OptimizerConfig::sgd(0.1, 0.9),
                mode,
            )
            .unwrap()
        })
        .collect()
}

#[test]
fn reference_sizes_have_the_reference_parameter_counts() {
    let size = |name, input| {
        let size = ModelSize {
            hidden: vec![],
            ..ModelSize::default()
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
        ..ModelSize::default()
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

/// Small versions of every zoo model with data they take (the GPT last).
fn small_models() -> Vec<(ModelSpec, Arc<Dataset>)> {
    let mnist = images(8, [1, 28, 28], 10);
    let cifar = images(8, [3, 32, 32], 10);
    let text = tokens(8, 6, 7);
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
        (gpt(6, 7, 8, 2, 2), text),
    ]
}

#[test]
fn every_model_has_consistent_forward_and_backward_shapes() {
    let batches = Arc::new(EpochBatches {
        minibatches: vec![vec![vec![0, 1, 2], vec![3, 4]]],
    });
    for (spec, data) in small_models() {
        let params = init_params(&spec, 3).unwrap();
        let blocks = spec.blocks();
        // Each block's output is the next one's input, down to [batch, classes · targets].
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
        let outputs = spec.num_classes() * spec.targets_per_sample();
        assert_eq!(x.dims(), [2, outputs], "{}", spec.name());
        let feed = feed(&data, &batches);
        let mut stages = stages_over(
            &params,
            &partition_uniform(blocks.len(), 1).unwrap(),
            GradMode::Graph,
        );
        let (loss, _, _) = run_minibatch(&mut stages, &feed, 0, 2, &[v(0)], &[v(0)]);
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
        let flat = all_grads(&mut stages);
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
    let batches = Arc::new(EpochBatches {
        minibatches: vec![vec![vec![0, 1, 2], vec![3, 4, 5]]],
    });
    for (spec, data) in small_models() {
        let params = init_params(&spec, 4).unwrap();
        let n = params.len();
        let feed = feed(&data, &batches);
        let mut one = stages_over(&params, &partition_uniform(n, 1).unwrap(), GradMode::Graph);
        let (loss, correct, _) = run_minibatch(&mut one, &feed, 0, 2, &[v(0)], &[v(0)]);
        let reference = all_grads(&mut one);
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
                let mut pipe = stages_over(&params, &split, GradMode::Graph);
                let recipes = vec![v(0); stages];
                let (l, c, _) = run_minibatch(&mut pipe, &feed, 0, 2, &recipes, &recipes);
                let what = format!("{} split {split:?}", spec.name());
                assert!(
                    (l - loss).abs() <= 1e-5 * loss,
                    "{what}: loss {l} vs {loss}"
                );
                assert_eq!(c, correct, "{what}");
                assert_close(&what, &all_grads(&mut pipe), &reference, 1e-4);
            }
        }
    }
}

#[test]
fn graph_and_recompute_paths_agree_through_convolutions_norms_and_residuals() {
    // Path 0 reads the forward's recipe: the kept autodiff graph for gpt, the closed forms
    // with the layer inputs the forward recorded for every conv model. The same weights
    // through a different recipe force the per-block graph path with recomputed layer inputs
    // (the two micro-batches stacked into one backward where no batch norm forbids it) and
    // the recompute path, whose autodiff re-run is exact: all three must agree for every
    // block kind.
    let same = WeightRecipe::Blend {
        stale: 0,
        latest: 0,
        stale_weight: 0.5,
    };
    let batches = Arc::new(EpochBatches {
        minibatches: vec![vec![vec![0, 1, 2], vec![3, 4, 5]]],
    });
    for (spec, data) in small_models() {
        let params = init_params(&spec, 6).unwrap();
        let split = partition_uniform(params.len(), 3).unwrap();
        let mut results = Vec::new();
        for (mode, backward) in [
            (GradMode::Graph, v(0)),
            (GradMode::Graph, same),
            (GradMode::Recompute, same),
        ] {
            let feed = feed(&data, &batches);
            let mut stages = stages_over(&params, &split, mode);
            run_minibatch(&mut stages, &feed, 0, 2, &[v(0); 3], &[backward; 3]);
            results.push(all_grads(&mut stages));
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
fn graph_mode_conv_stages_build_no_autodiff_graph_and_transformer_stages_do() {
    // Every image block has a closed-form backward, so a conv stage's forward builds no graph
    // even when its backward reads the same weights (the fast path of every conv model);
    // the gpt's embedding has none, so its stage 0 keeps one.
    let batches = Arc::new(EpochBatches {
        minibatches: vec![vec![vec![0, 1, 2]]],
    });
    for (spec, data) in small_models() {
        let params = init_params(&spec, 6).unwrap();
        let split = partition_uniform(params.len(), 3).unwrap();
        let feed = feed(&data, &batches);
        let mut stages = stages_over(&params, &split, GradMode::Graph);
        forward_fed(&mut stages[0], &feed, mb(0, 0), None, &v(0), true).unwrap();
        let expected = usize::from(matches!(spec, ModelSpec::Gpt(_)));
        assert_eq!(
            stages[0].num_saved_graphs(),
            expected,
            "{}: saved graphs",
            spec.name()
        );
    }
}

#[test]
fn graph_mode_with_new_weights_recomputes_inner_activations_of_a_residual_block() {
    // One stage = one basic block. Forward with version 0, backward with version 1: graph mode
    // must equal the VJP of relu_mask(forward output) ⊙ block_v1(saved input); recompute mode
    // takes the mask from block_v1 itself. Both are checked against an explicit autodiff.
    let input = [4, 6, 6];
    let block = Block::BasicBlock(BasicBlock {
        input,
        planes: 8,
        stride: 2,
    });
    let data = images(6, input, 10);
    let blocks = [
        Block::Conv2d(Conv2d {
            input,
            channels: 4,
            kernel: 3,
            stride: 1,
            padding: 1,
            bias: true,
            relu: true,
        }),
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
        )
        .unwrap();
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
            .forward(mid, StageMessage::new(input.clone()), None, &v(0), true)
            .unwrap();
        stage
            .backward(vec![timeprest_runtime::BackwardWork {
                microbatch: mid,
                recipe: v(0),
                output_gradient: Some(msg(upstream.clone(), out_features)),
            }])
            .unwrap();
        stage.update(&[]).unwrap();
        let id = timeprest_schedule::MicrobatchId::new(0, 0);
        let forward_out =
            match stage.forward(id, StageMessage::new(input.clone()), None, &v(0), true) {
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
    let conv = Block::Conv2d(Conv2d {
        input,
        channels: 3,
        kernel: 3,
        stride: 1,
        padding: 1,
        bias: true,
        relu: false,
    });
    let norm = Block::BatchNorm2d(BatchNorm2d {
        input: [3, 5, 5],
        relu: true,
    });
    let pool = Block::GlobalAvgPool(GlobalAvgPool { input: [3, 5, 5] });
    let fc = Block::Linear(Linear {
        input: 3,
        output: 10,
        relu: false,
    });
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
    let batches = Arc::new(EpochBatches {
        minibatches: vec![vec![vec![0, 1, 2, 3]], vec![vec![4, 5, 6, 7]]],
    });
    let feed = feed(&data, &batches);
    let mut stages = stages_over(&params, &[0..2, 2..4], GradMode::Recompute);
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
    run_minibatch(&mut stages, &feed, 0, 1, &[v(0), v(0)], &[v(0), v(0)]);
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
        stage.update(&[]).unwrap();
    }
    assert_eq!(buffers(&stages[0], WeightKey::Version(1)), after_one);
    // A stale forward (reading version 0) moves the *live* version's statistics; the recompute
    // backward does not move them again; version 0 keeps its own.
    run_minibatch(&mut stages, &feed, 1, 1, &[v(0), v(1)], &[v(1), v(1)]);
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
    let batches = Arc::new(EpochBatches {
        minibatches: vec![vec![vec![0, 1, 2, 3]]],
    });
    let feed = feed(&data, &batches);
    let mut stages = stages_over(
        &params,
        &partition_uniform(params.len(), 2).unwrap(),
        GradMode::Graph,
    );
    run_minibatch(&mut stages, &feed, 0, 1, &[v(0), v(0)], &[v(0), v(0)]);
    update_all(&mut stages);
    let trained: ModelParams = stages.iter().flat_map(BurnStage::live_params).collect();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("resnet.safetensors");
    std::fs::write(&path, safetensors_bytes(&path, &trained).unwrap()).unwrap();
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
        let split = partition_model(&spec, method, 4, 2, 1).unwrap();
        assert_eq!(split.len(), 4);
        assert_eq!((split[0].start, split[3].end), (0, n));
        assert!(
            split
                .windows(2)
                .all(|w| w[0].end == w[1].start && !w[0].is_empty())
        );
    }
    let err = partition_model(&spec, PartitionMethod::Time, n + 1, 2, 1).unwrap_err();
    assert!(matches!(err, NnError::TooManyStages { .. }), "{err}");
    let profiles = profile_blocks(&spec, 2, 1, 1).unwrap();
    assert_eq!(profiles.len(), n);
    assert!(
        profiles
            .iter()
            .all(|p| p.forward > 0.0 && p.backward >= 0.0)
    );
}

/// gpt's parameter count written out: the two embedding tables, `layers` decoder layers
/// (two layer norms, QKV, attention output, the 4d-wide MLP), and the head.
fn gpt_formula(seq_len: usize, vocab: usize, d: usize, layers: usize) -> usize {
    let embeddings = vocab * d + seq_len * d;
    let layer =
        2 * d + (d * 3 * d + 3 * d) + (d * d + d) + 2 * d + (d * 4 * d + 4 * d) + (4 * d * d + d);
    let head = 2 * d + d * vocab + vocab;
    embeddings + layers * layer + head
}

#[test]
fn gpt_has_the_formula_parameter_count_and_pytorch_names_and_layouts() {
    for (seq_len, vocab, d, heads, layers) in
        [(8, 11, 16, 4, 3), (64, 96, 64, 4, 2), (1, 2, 3, 1, 1)]
    {
        let spec = gpt(seq_len, vocab, d, heads, layers);
        assert_eq!(spec.param_count(), gpt_formula(seq_len, vocab, d, layers));
        assert_eq!(spec.num_blocks(), layers + 2);
    }
    let blocks = gpt(8, 11, 16, 4, 3).blocks();
    assert_eq!(blocks[0].param_names(), ["token.weight", "position.weight"]);
    assert_eq!(
        blocks[1].param_names(),
        [
            "ln1.weight",
            "ln1.bias",
            "attn.qkv.weight",
            "attn.qkv.bias",
            "attn.proj.weight",
            "attn.proj.bias",
            "ln2.weight",
            "ln2.bias",
            "mlp.fc.weight",
            "mlp.fc.bias",
            "mlp.proj.weight",
            "mlp.proj.bias",
        ]
    );
    assert_eq!(blocks[1].file_shapes()[2], [48, 16]);
    assert_eq!(blocks[1].file_shapes()[10], [16, 64]);
    assert!(blocks.iter().all(|b| b.buffer_names().is_empty()));
    assert_eq!(
        blocks[4].param_names(),
        ["ln.weight", "ln.bias", "head.weight", "head.bias"]
    );
    assert_eq!(blocks[4].file_shapes()[2], [11, 16]);
    // Linear weights are [out, in] in files and [in, out] in memory.
    let params = init_params(&gpt(8, 11, 16, 4, 3), 1).unwrap();
    let (memory, file) = (&params[1].values()[2], &params[1].to_file_layout()[2]);
    for (o, i) in [(0, 1), (47, 3), (20, 15)] {
        assert_eq!(file[o * 16 + i], memory[i * 48 + o]);
    }
    // Heads that do not divide the width, and a depth that is not one number.
    let size = |embed_dim, heads, depth| ModelSize {
        embed_dim,
        heads,
        depth,
        ..ModelSize::default()
    };
    let err = ModelSpec::from_name("gpt", [1, 1, 8], 11, &size(16, 3, vec![]))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("gpt") && err.contains("3 attention heads"),
        "{err}"
    );
    let err = ModelSpec::from_name("gpt", [1, 1, 8], 11, &size(16, 4, vec![1, 2]))
        .unwrap_err()
        .to_string();
    assert!(err.contains("gpt") && err.contains("depth"), "{err}");
    assert_eq!(
        ModelSpec::from_name("gpt", [1, 1, 8], 11, &size(16, 4, vec![3])).unwrap(),
        gpt(8, 11, 16, 4, 3)
    );
}

#[test]
fn gpt_logits_at_a_position_do_not_depend_on_later_tokens() {
    let (seq_len, vocab) = (6, 7);
    let params = init_params(&gpt(seq_len, vocab, 8, 2, 2), 5).unwrap();
    let logits = |ids: &[f32]| {
        let mut x = tensor2(ids.to_vec(), 1, seq_len);
        for p in &params {
            x = p.forward_eval(x);
        }
        to_vec(&x)
    };
    let base = [1.0, 4.0, 2.0, 6.0, 0.0, 3.0];
    let reference = logits(&base);
    for changed in 0..seq_len {
        let mut ids = base;
        ids[changed] = (base[changed] + 1.0) % vocab as f32;
        let out = logits(&ids);
        for position in 0..seq_len {
            let range = position * vocab..(position + 1) * vocab;
            let largest_change = out[range.clone()]
                .iter()
                .zip(&reference[range])
                .map(|(a, b)| (a - b).abs())
                .fold(0.0f32, f32::max);
            if position < changed {
                assert!(
                    largest_change <= 1e-6,
                    "token {changed} changed the logits of earlier position {position} by \
                     {largest_change}"
                );
            } else if position == changed {
                assert!(largest_change > 1e-4, "token {changed} has no effect");
            }
        }
    }
}

#[test]
fn gpt_trains_on_the_mean_per_token_cross_entropy() {
    // One stage, one micro-batch of 4 samples: the loss the stage reports is the summed
    // per-token cross-entropy, and its gradient is that of the *mean* over the 4·T tokens,
    // checked against central finite differences of `evaluate` (an independent path: no
    // autodiff, no loss scaling).
    let (seq_len, vocab) = (5, 6);
    let spec = gpt(seq_len, vocab, 8, 2, 1);
    let data = tokens(4, seq_len, vocab);
    let params = init_params(&spec, 9).unwrap();
    let batches = Arc::new(EpochBatches {
        minibatches: vec![vec![vec![0, 1, 2, 3]]],
    });
    let one_stage = partition_uniform(3, 1).unwrap();
    let feed = feed(&data, &batches);
    let mut stages = stages_over(&params, &one_stage, GradMode::Graph);
    let (loss_sum, correct, _) = run_minibatch(&mut stages, &feed, 0, 1, &[v(0)], &[v(0)]);
    let (mean_loss, accuracy) = evaluate(&spec, &params, &data, 3).unwrap();
    let tokens = (4 * seq_len) as f64;
    assert!((loss_sum / tokens - mean_loss).abs() < 1e-5 * mean_loss);
    assert!((correct as f64 / tokens - accuracy).abs() < 1e-12);
    let grads = stages[0].accumulated_gradients().unwrap();
    let epsilon = 1e-2;
    // (block, tensor, element): the embedding of the first sample's first token, a position
    // embedding, the QKV weight, the MLP output bias, the head weight.
    let first_token = data.features[0] as usize;
    let probes = [
        (0, 0, first_token * 8 + 3),
        (0, 1, 17),
        (1, 2, 30),
        (1, 11, 3),
        (2, 2, 11),
    ];
    for (block, tensor, element) in probes {
        let shifted = |delta: f32| {
            let mut moved = params.clone();
            let mut values = moved[block].values();
            values[tensor][element] += delta;
            moved[block].tensors[tensor] = crate::tensor::tensor1(values[tensor].clone());
            evaluate(&spec, &moved, &data, 4).unwrap().0
        };
        let numeric = (shifted(epsilon as f32) - shifted(-epsilon as f32)) / (2.0 * epsilon);
        let analytic = f64::from(to_vec(&grads[block][tensor])[element]);
        assert!(
            analytic.abs() > 1e-4,
            "block {block} tensor {tensor}: zero gradient"
        );
        assert!(
            (numeric - analytic).abs() <= 2e-3 + 0.05 * analytic.abs(),
            "block {block} tensor {tensor}[{element}]: finite difference {numeric}, gradient \
             {analytic}"
        );
    }
}

#[test]
fn gpt_and_text_data_refuse_the_wrong_partner_naming_model_and_shape() {
    let size = ModelSize {
        embed_dim: 8,
        heads: 2,
        ..ModelSize::default()
    };
    let err = ModelSpec::for_data("gpt", &images(4, [1, 28, 28], 10), &size)
        .unwrap_err()
        .to_string();
    assert!(err.contains("gpt") && err.contains("1×28×28"), "{err}");
    let text = tokens(4, 6, 7);
    for name in ["lenet5", "mlp"] {
        let err = ModelSpec::for_data(name, &text, &size)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains(name) && err.contains("1×1×6") && err.contains("--model gpt"),
            "{err}"
        );
    }
    let spec = ModelSpec::for_data("gpt", &text, &size).unwrap();
    assert_eq!(spec, gpt(6, 7, 8, 2, GptConfig::DEFAULT_LAYERS));
    // A gpt of another context length or vocabulary does not fit.
    for other in [gpt(5, 7, 8, 2, 2), gpt(6, 9, 8, 2, 2)] {
        let err = other.check_data(&text).unwrap_err().to_string();
        assert!(err.contains("gpt") && err.contains("1×1×6"), "{err}");
    }
}

#[test]
fn gpt_checkpoints_round_trip_and_partition_by_time() {
    let (spec, data) = small_models().pop().unwrap();
    let params = init_params(&spec, 1).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gpt.safetensors");
    std::fs::write(&path, safetensors_bytes(&path, &params).unwrap()).unwrap();
    let loaded = load_safetensors(&path, &spec).unwrap();
    for (a, b) in loaded.iter().zip(&params) {
        assert_eq!(a.values(), b.values(), "{}", a.block.label());
    }
    let file = std::fs::read(&path).unwrap();
    let st = safetensors::SafeTensors::deserialize(&file).unwrap();
    assert_eq!(st.tensor("layers.0.token.weight").unwrap().shape(), &[7, 8]);
    assert_eq!(
        st.tensor("layers.2.attn.qkv.weight").unwrap().shape(),
        &[24, 8]
    );
    assert_eq!(st.tensor("layers.3.head.weight").unwrap().shape(), &[7, 8]);
    let (loss, accuracy) = evaluate(&spec, &loaded, &data, 3).unwrap();
    assert!(loss.is_finite() && (0.0..=1.0).contains(&accuracy));
    for method in PartitionMethod::ALL {
        let split = partition_model(&spec, method, 3, 2, 1).unwrap();
        assert_eq!((split.len(), split[0].start, split[2].end), (3, 0, 4));
    }
}
