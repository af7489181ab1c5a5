//! [`BurnStage`]: one pipeline stage's computation on burn, implementing the runtime's
//! [`StageCompute`].
//!
//! A stage owns a contiguous range of blocks, a [`WeightStore`] of their versions, an
//! [`Optimizer`], the per-micro-batch state its forwards saved, and the gradient accumulator.
//! The runtime says which weights each pass reads (a [`WeightRecipe`]); this file makes that
//! work with burn's autodiff:
//!
//! - A forward runs with autodiff on *fresh leaves* built from the recipe's weights (the stored
//!   versions themselves stay plain tensors), and keeps the graph's output, the leaves, and the
//!   stage input and each block's output as plain tensors (cheap shared handles).
//! - A backward whose recipe equals the forward's uses the kept graph, the ordinary VJP.
//! - Otherwise (`docs/algorithms.md` §4) [`GradMode::Graph`] reproduces what an autograd graph
//!   with swapped weights computes: each block's weight-dependent part is re-run on its
//!   *saved* input with the backward's weights, while weight-free local VJPs (the ReLU mask,
//!   the loss) use the forward's saved activations; the input gradients are chained from the
//!   last block to the first. [`GradMode::Recompute`] re-runs the whole stage forward from the
//!   saved stage input with the backward's weights and takes the exact VJP there.
//!
//! A stage whose every block has a closed-form VJP (linear, ReLU and image blocks: the MLP and
//! every conv model of the zoo) keeps no autodiff graph at all in graph mode: every backward,
//! with the forward's weights or others, takes the per-block closed forms from the kept
//! activations (and the layer inputs of residual blocks, recorded by the forward), and each
//! linear block's weight gradient is deferred to the update, where `Σ_j x_jᵀ·g_j` over the
//! mini-batch's micro-batches is one GEMM over all their rows (measured: N thin GEMMs plus an
//! accumulation pass per micro-batch cost 1.8× the per-sample time of one full-batch step).
//!
//! Batch norms normalise with each micro-batch's own statistics in every training pass (the
//! graph-mode and recompute re-runs use the saved input, so they see the same batch); the
//! forward then moves the live version's running statistics once (`docs/algorithms.md` §4.3),
//! and re-runs never move them. Residual blocks are one block each: graph mode re-runs the whole
//! block up to its final ReLU, so its inner activations are recomputed with the backward's
//! weights (see [`Block`](crate::Block)).
//!
//! The loss (`docs/algorithms.md` §4.4) of micro-batch j is `CE_sum_j / M` with M the number of
//! samples in the whole mini-batch, so summing micro-batch gradients gives the gradient of the
//! mini-batch mean loss, whatever the micro-batch sizes. A language model (a data set with T
//! targets per sample) predicts every position: its logits `[batch, T·vocab]` are viewed as
//! `[batch·T, vocab]`, `CE_sum_j` sums over tokens and is divided by `M·T`, so the loss is the
//! mean per-token cross-entropy, and the reported loss, accuracy and count are per token.

use std::collections::HashMap;

use burn::tensor::Tensor;
use burn::tensor::activation::softmax;
use serde::{Deserialize, Serialize};
use timeprest_policy::{WeightKey, WeightRecipe};
use timeprest_runtime::{BackwardWork, ComputeError, ForwardOutput, LossStats, StageCompute};
use timeprest_schedule::MicrobatchId;

use crate::block::{Norm, linear_weight_grad};
use crate::elementwise_kernel::relu_backward;
use crate::feed::Targets;
use crate::model::{check_chain, cross_entropy_sum};
use crate::optim::{Optimizer, OptimizerConfig};
use crate::store::{Pass, WeightStore};
use crate::tensor::{count_correct, scalar, to_vec};
use crate::{BlockParams, ModelParams, NnError};

mod resume;

/// How a backward computes gradients when it reads other weights than its forward did
/// (`docs/algorithms.md` §4).
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize, clap::ValueEnum,
)]
#[serde(rename_all = "kebab-case")]
pub enum GradMode {
    /// Saved activations, backward-version weights in every weight-dependent local VJP.
    #[default]
    Graph,
    /// Re-run the stage forward from the saved stage input with the backward's weights.
    Recompute,
}

/// What crosses a stage boundary: a plain (non-autodiff) `[batch, features]` tensor of
/// activations (forward) or of gradients with respect to them (backward). Per-sample data of
/// any shape travels flattened, so later block kinds (convolutions) only reshape.
#[derive(Clone, Debug)]
pub struct StageMessage {
    tensor: Tensor<2>,
}

impl StageMessage {
    /// Wraps `tensor`, dropping any autodiff tracking.
    pub fn new(tensor: Tensor<2>) -> Self {
        Self {
            tensor: tensor.inner(),
        }
    }

    /// The tensor.
    pub fn tensor(&self) -> &Tensor<2> {
        &self.tensor
    }

    /// The tensor, by value.
    pub fn into_tensor(self) -> Tensor<2> {
        self.tensor
    }

    /// `[batch, features]`.
    pub fn dims(&self) -> [usize; 2] {
        self.tensor.dims()
    }

    /// The values, row-major.
    pub fn to_vec(&self) -> Vec<f32> {
        to_vec(&self.tensor)
    }
}

/// The end of a forward graph.
#[derive(Debug)]
enum GraphOutput {
    /// The stage output (autodiff), for `(out · g).sum()`.
    Activation(Tensor<2>),
    /// The scaled loss (autodiff), at the last stage.
    Loss(Tensor<1>),
}

/// The autodiff graph of a forward: what its backward needs when it reads the same weights.
#[derive(Debug)]
struct Graph {
    /// The stage input as an autodiff leaf (`None` at stage 0, which needs no input gradient).
    input_leaf: Option<Tensor<2>>,
    /// The parameter leaves, per block.
    leaves: Vec<Vec<Tensor<1>>>,
    output: GraphOutput,
}

/// One run of the stage's blocks.
#[derive(Debug)]
struct Trace {
    /// The autodiff graph, if the run built one.
    graph: Option<Graph>,
    /// Plain: the stage input, then (if kept) each block's output.
    activations: Vec<Tensor<2>>,
    /// The last block's output, plain.
    stage_output: Tensor<2>,
    /// Σ of the per-sample losses (last stage only).
    loss_sum: Option<f64>,
    /// Per block: each batch norm's batch mean and unbiased variance (plain).
    batch_stats: Vec<Vec<Tensor<1>>>,
    /// Per block, the input of every layer of its layer paths, if the run recorded them for a
    /// closed-form backward with the same weights (see `Block::closed_form_vjp`).
    layer_inputs: Option<Vec<Vec<Tensor<4>>>>,
}

/// What a run of the blocks keeps for a backward.
#[derive(Clone, Copy, Debug)]
struct Kept {
    /// Each block's output, plain (graph mode differentiates from them).
    activations: bool,
    /// An autodiff graph.
    graph: bool,
    /// Every block's layer inputs (for a closed-form backward with the same weights).
    layer_inputs: bool,
}

impl Kept {
    /// Nothing beyond the input and the output.
    const NONE: Kept = Kept {
        activations: false,
        graph: false,
        layer_inputs: false,
    };
}

/// What a forward keeps for the backward of its micro-batch.
#[derive(Debug)]
struct Saved {
    recipe: WeightRecipe,
    /// The stage input (plain).
    input: Tensor<2>,
    /// The forward's run; `None` on a stage that recomputes activations until the backward
    /// re-runs the forward ([`BurnStage::recompute_forward`]).
    trace: Option<Trace>,
    targets: Option<Targets>,
}

impl Saved {
    const NOT_RESTORED: &'static str =
        "a recomputing stage restores every trace before its backward";

    fn trace(&self) -> &Trace {
        self.trace.as_ref().expect(Self::NOT_RESTORED)
    }

    fn trace_mut(&mut self) -> &mut Trace {
        self.trace.as_mut().expect(Self::NOT_RESTORED)
    }

    fn into_trace(self) -> Trace {
        self.trace.expect(Self::NOT_RESTORED)
    }

    /// Bytes of the tensors kept for the backward: the input, and the trace's activations and
    /// layer inputs (an autodiff graph's own copies are not counted).
    fn bytes(&self) -> u64 {
        let count = |t: &Tensor<2>| t.shape().num_elements() as u64;
        let Some(trace) = &self.trace else {
            return 4 * count(&self.input);
        };
        let activations: u64 = trace.activations.iter().map(count).sum();
        let layers: u64 = (trace.layer_inputs.iter().flatten().flatten())
            .map(|t| t.shape().num_elements() as u64)
            .sum();
        // Without kept activations the trace still holds the output (and the input).
        let output = if trace.activations.len() > 1 {
            0
        } else {
            count(&trace.stage_output)
        };
        4 * (activations + layers + output)
    }
}

/// One stage of a pipeline, computing with burn on the CPU.
pub struct BurnStage {
    stage: u32,
    num_stages: u32,
    first_block: usize,
    grad_mode: GradMode,
    /// Keep only each forward's input and re-run the forward before its backward.
    recompute_activations: bool,
    /// The most bytes [`BurnStage::saved`] held since [`StageCompute::activation_bytes_peak`]
    /// was last asked.
    activation_peak: u64,
    optimizer: Optimizer,
    store: WeightStore,
    saved: HashMap<MicrobatchId, Saved>,
    /// Σ of the parameter gradients since the last update, per block, per tensor.
    accumulated: Option<Vec<Vec<Tensor<1>>>>,
    /// Per block, the (input rows, output-gradient rows) of the micro-batches whose linear
    /// weight gradient is deferred to the update: summed there as one deep GEMM instead of one
    /// thin GEMM and one accumulation pass per micro-batch. Empty for other blocks.
    deferred: Vec<Vec<(Tensor<2>, Tensor<2>)>>,
}

impl std::fmt::Debug for BurnStage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BurnStage")
            .field("stage", &self.stage)
            .field("num_stages", &self.num_stages)
            .field("first_block", &self.first_block)
            .field("grad_mode", &self.grad_mode)
            .field("recompute_activations", &self.recompute_activations)
            .field("live_version", &self.store.live_version())
            .field("stored", &self.store.keys())
            .field("saved_microbatches", &self.saved.len())
            .finish_non_exhaustive()
    }
}

impl BurnStage {
    /// Stage `stage` of `num_stages`, owning `blocks` (global indices `first_block..`), with
    /// `blocks` as its live version 0. Its inputs (at stage 0) and targets (at the last stage)
    /// arrive with each forward, from the executor's [`Feed`](timeprest_runtime::Feed), e.g. a
    /// [`DataFeed`](crate::DataFeed).
    ///
    /// # Errors
    /// [`NnError`] if the blocks are empty or do not chain, `stage >= num_stages`, or the
    /// optimizer setting is invalid.
    pub fn new(
        stage: u32,
        num_stages: u32,
        blocks: Vec<BlockParams>,
        first_block: usize,
        optimizer: OptimizerConfig,
        grad_mode: GradMode,
    ) -> Result<Self, NnError> {
        if stage >= num_stages {
            return Err(NnError::Mismatch(format!(
                "stage {stage} of {num_stages} stages"
            )));
        }
        if blocks.is_empty() {
            return Err(NnError::Mismatch(format!("stage {stage} has no blocks")));
        }
        check_chain(&blocks)?;
        Ok(Self {
            stage,
            num_stages,
            first_block,
            grad_mode,
            recompute_activations: false,
            activation_peak: 0,
            optimizer: Optimizer::new(optimizer)?,
            store: WeightStore::new(blocks),
            saved: HashMap::new(),
            accumulated: None,
            deferred: Vec::new(),
        })
    }

    /// This stage with activation recomputation on or off (off by default): a forward keeps
    /// only its stage input, and the backward first re-runs the forward with the weights the
    /// forward read, then differentiates exactly as without recomputation, so the results are
    /// the same bit for bit. The version plan must keep the forward's weights until the
    /// backward ([`timeprest_policy::Activations::Recomputed`]).
    pub fn recomputing_activations(mut self, on: bool) -> Self {
        self.recompute_activations = on;
        self
    }

    /// The stage index.
    pub fn stage(&self) -> u32 {
        self.stage
    }

    /// Global index of this stage's first block.
    pub fn first_block(&self) -> usize {
        self.first_block
    }

    /// The live version k (number of updates so far).
    pub fn live_version(&self) -> u64 {
        self.store.live_version()
    }

    /// The live parameters (shared handles; versions are immutable).
    pub fn live_params(&self) -> ModelParams {
        self.store.live().clone()
    }

    /// Number of weight sets stored: live, kept versions and cached predictions.
    pub fn num_stored_weight_sets(&self) -> usize {
        self.store.num_sets()
    }

    /// The weight sets stored, live version first.
    pub fn stored_keys(&self) -> Vec<WeightKey> {
        self.store.keys()
    }

    /// The stored weight set `key` (live, kept or predicted), if held.
    pub fn stored_weights(&self, key: WeightKey) -> Option<ModelParams> {
        self.store.get(key).cloned()
    }

    /// The optimizer (its momentum buffers are what predictions read).
    pub fn optimizer(&self) -> &Optimizer {
        &self.optimizer
    }

    /// Parameter gradients accumulated since the last update (per block, per tensor, memory
    /// layout), or `None` if no backward ran since.
    pub fn accumulated_gradients(&mut self) -> Option<&[Vec<Tensor<1>>]> {
        self.complete_deferred();
        self.accumulated.as_deref()
    }

    /// Graph mode on a stage whose every block has a closed-form VJP: its forwards build no
    /// autodiff graph, every backward takes the per-block path, and linear weight gradients are
    /// deferred to the update.
    fn all_closed_form(&self) -> bool {
        self.grad_mode == GradMode::Graph
            && (self.store.live().iter()).all(|p| p.block.has_closed_form())
    }

    /// Adds the deferred linear weight gradients to the accumulator, each as `xᵀ·g` over the
    /// stacked rows of every deferred micro-batch, in front of the block's bias gradient.
    fn complete_deferred(&mut self) {
        let deferred = std::mem::take(&mut self.deferred);
        let Some(accumulated) = self.accumulated.as_mut() else {
            return;
        };
        for (grads, pairs) in accumulated.iter_mut().zip(deferred) {
            if pairs.is_empty() {
                continue;
            }
            let (xs, gs): (Vec<_>, Vec<_>) = pairs.into_iter().unzip();
            let weight_grad = linear_weight_grad(&Tensor::cat(xs, 0), &Tensor::cat(gs, 0));
            let len = weight_grad.shape().num_elements();
            grads.insert(0, weight_grad.reshape([len]));
        }
    }

    /// Number of micro-batches whose forward state is waiting for a backward.
    pub fn num_saved_microbatches(&self) -> usize {
        self.saved.len()
    }

    /// Number of saved forwards that keep an autodiff graph.
    #[cfg(test)]
    pub(crate) fn num_saved_graphs(&self) -> usize {
        self.saved
            .values()
            .filter(|saved| saved.trace.as_ref().is_some_and(|t| t.graph.is_some()))
            .count()
    }

    pub(crate) fn is_last(&self) -> bool {
        self.stage + 1 == self.num_stages
    }

    fn error(&self, what: String) -> ComputeError {
        ComputeError(format!("stage {}: {what}", self.stage))
    }

    /// What a forward keeps for a backward that does (`backward_reads_forward_weights`) or
    /// does not read its weights. A graph serves only a backward that reads these same weights;
    /// any other backward differentiates from the kept activations (graph mode) or a re-run
    /// (recompute). In graph mode a stage whose every block has a closed-form VJP needs no graph
    /// at all: its backward takes the per-block path from the kept activations, whatever weights
    /// it reads.
    fn kept_for_backward(&self, backward_reads_forward_weights: bool) -> Kept {
        let closed_form = self.all_closed_form();
        Kept {
            activations: self.grad_mode == GradMode::Graph,
            graph: backward_reads_forward_weights && !closed_form,
            layer_inputs: backward_reads_forward_weights && closed_form,
        }
    }

    /// Bytes the saved forwards hold now.
    fn saved_bytes(&self) -> u64 {
        self.saved.values().map(Saved::bytes).sum()
    }

    /// Raises the activation high-water mark to what the saved forwards hold now.
    fn note_activation_bytes(&mut self) {
        self.activation_peak = self.activation_peak.max(self.saved_bytes());
    }

    /// On a stage that recomputes activations: re-runs the forward of `work`'s micro-batch with
    /// the weights that forward read, keeping what it would have kept without recomputation
    /// (the running statistics are not moved again). A micro-batch without a saved forward is
    /// left to [`BurnStage::take_saved`] to report.
    fn recompute_forward(&mut self, work: &BackwardWork<StageMessage>) -> Result<(), ComputeError> {
        let Some(mut saved) = self.saved.remove(&work.microbatch) else {
            return Ok(());
        };
        if saved.trace.is_none() {
            let weights = self
                .store
                .weights(&saved.recipe, Pass::Backward, &self.optimizer)?;
            let kept = self.kept_for_backward(work.recipe == saved.recipe);
            saved.trace = Some(self.run(&saved.input, &weights, saved.targets.as_ref(), kept));
        }
        self.saved.insert(work.microbatch, saved);
        Ok(())
    }

    /// Refuses a forward the pipeline protocol does not allow: a second forward of a micro-batch
    /// before its backward, an input of the wrong width, targets at any stage but the last (and
    /// none there), or targets that do not match the last stage's outputs.
    fn check_forward(
        &self,
        microbatch: MicrobatchId,
        input: &StageMessage,
        targets: Option<&Targets>,
    ) -> Result<(), ComputeError> {
        if self.saved.contains_key(&microbatch) {
            return Err(self.error(format!(
                "second forward of {microbatch:?} before its backward"
            )));
        }
        let in_features = self.store.live()[0].block.input_features();
        let [rows, features] = input.dims();
        if features != in_features {
            return Err(self.error(format!(
                "input of {microbatch:?} has {features} features, the stage takes {in_features}"
            )));
        }
        match (targets, self.is_last()) {
            (None, true) => {
                return Err(self.error(format!(
                    "the last stage's forward of {microbatch:?} needs its targets"
                )));
            }
            (Some(_), false) => {
                return Err(self.error(format!(
                    "targets of {microbatch:?} given to a stage that is not the last"
                )));
            }
            (Some(t), true) => {
                let outputs = self
                    .store
                    .live()
                    .last()
                    .map_or(0, |b| b.block.output_features());
                if t.labels.len() * t.num_classes != rows * outputs {
                    return Err(self.error(format!(
                        "{microbatch:?}: {} targets of {} classes for {rows} samples, but the \
                         stage gives {outputs} outputs per sample",
                        t.labels.len(),
                        t.num_classes
                    )));
                }
            }
            (None, false) => {}
        }
        Ok(())
    }

    /// Runs the blocks with `weights` on `input` (plain), keeping what `kept` says.
    ///
    /// Without a graph the run is plain tensor arithmetic: cheaper, and nothing but the kept
    /// activations stays alive (no parameter leaves, no autodiff copies of every activation).
    fn run(
        &self,
        input: &Tensor<2>,
        weights: &[BlockParams],
        targets: Option<&Targets>,
        kept: Kept,
    ) -> Trace {
        let Kept {
            activations: keep_activations,
            graph: with_graph,
            layer_inputs: record_layers,
        } = kept;
        let input_leaf =
            (with_graph && self.stage != 0).then(|| input.clone().autodiff().require_grad());
        let leaves: Vec<Vec<Tensor<1>>> = if with_graph {
            weights
                .iter()
                .map(|p| {
                    p.tensors
                        .iter()
                        .map(|t| t.clone().autodiff().require_grad())
                        .collect()
                })
                .collect()
        } else {
            weights.iter().map(|p| p.tensors.clone()).collect()
        };
        let mut activations = vec![input.clone()];
        let mut batch_stats = Vec::with_capacity(weights.len());
        let mut layer_inputs = record_layers.then(|| Vec::with_capacity(weights.len()));
        let mut h = match &input_leaf {
            Some(leaf) => leaf.clone(),
            None if with_graph => input.clone().autodiff(),
            None => input.clone(),
        };
        for (p, block_leaves) in weights.iter().zip(&leaves) {
            let mut stats = Vec::new();
            let mut recorded = Vec::new();
            h = p.block.forward_recording(
                h,
                block_leaves,
                Norm::Batch(&mut stats),
                layer_inputs.is_some().then_some(&mut recorded),
            );
            batch_stats.push(stats);
            if let Some(inputs) = layer_inputs.as_mut() {
                inputs.push(recorded);
            }
            if keep_activations {
                activations.push(h.clone().inner());
            }
        }
        let stage_output = h.clone().inner();
        let (output, loss_sum) = match targets {
            Some(t) => {
                let one_hot = if with_graph {
                    t.one_hot.clone().autodiff()
                } else {
                    t.one_hot.clone()
                };
                let ce = cross_entropy_sum(h, one_hot);
                let loss_sum = scalar(&ce.clone().inner());
                (GraphOutput::Loss(ce.mul_scalar(t.scale)), Some(loss_sum))
            }
            None => (GraphOutput::Activation(h), None),
        };
        Trace {
            graph: with_graph.then_some(Graph {
                input_leaf,
                leaves,
                output,
            }),
            activations,
            stage_output,
            loss_sum,
            batch_stats,
            layer_inputs,
        }
    }

    /// The VJP of a forward's graph: parameter gradients and the input gradient.
    fn graph_vjp(
        graph: Graph,
        upstream: Option<Tensor<2>>,
    ) -> (Vec<Vec<Tensor<1>>>, Option<Tensor<2>>) {
        let grads = match (graph.output, upstream) {
            (GraphOutput::Loss(loss), None) => loss.backward(),
            (GraphOutput::Activation(out), Some(g)) => out.mul(g.autodiff()).sum().backward(),
            (output, upstream) => panic!(
                "graph output {output:?} with upstream gradient present: {}",
                upstream.is_some()
            ),
        };
        let param_grads = graph
            .leaves
            .iter()
            .enumerate()
            .map(|(b, block)| {
                block
                    .iter()
                    .enumerate()
                    .map(|(i, leaf)| match leaf.grad(&grads) {
                        Some(g) => g.inner(),
                        None => panic!("no gradient for parameter {i} of local block {b}"),
                    })
                    .collect()
            })
            .collect();
        let input_grad = graph.input_leaf.map(|x| match x.grad(&grads) {
            Some(g) => g.inner(),
            None => panic!("no gradient for the stage input"),
        });
        (param_grads, input_grad)
    }

    /// The gradient of a saved forward's output: the upstream one, or at the last stage the
    /// loss gradient `(softmax(logits) − one_hot) / M` from the forward's saved logits.
    fn output_gradient(&self, saved: &Saved, upstream: Option<Tensor<2>>) -> Tensor<2> {
        match (upstream, &saved.targets) {
            (Some(g), None) => g,
            (None, Some(t)) => {
                let logits = &saved.trace().stage_output;
                softmax(logits.clone().reshape(t.one_hot.dims()), 1)
                    .sub(t.one_hot.clone())
                    .mul_scalar(t.scale)
                    .reshape(logits.dims())
            }
            _ => panic!(
                "stage {}: upstream gradient and targets disagree",
                self.stage
            ),
        }
    }

    /// Graph-mode VJP with other weights than the forward's, from the saved per-block
    /// activations `acts` (the stage input, then each block's output) and the output gradient
    /// `g`: per block, the ReLU mask from the saved output, then the weighted part's VJP at the
    /// saved block input and `weights` — in closed form where the block has one
    /// ([`Block::closed_form_vjp`](crate::Block::closed_form_vjp)), else by re-running it under autodiff.
    ///
    /// On a stage made only of closed-form blocks ([`BurnStage::all_closed_form`]), linear
    /// blocks leave out their weight gradient and record their (input, output-gradient) rows in
    /// [`BurnStage::deferred`] instead.
    fn per_block_vjp(
        &mut self,
        acts: &[Tensor<2>],
        weights: &[BlockParams],
        mut g: Tensor<2>,
        layer_inputs: Option<&[Vec<Tensor<4>>]>,
    ) -> (Vec<Vec<Tensor<1>>>, Option<Tensor<2>>) {
        let defer = self.all_closed_form();
        assert_eq!(
            acts.len(),
            weights.len() + 1,
            "graph mode saved no block activations"
        );
        let mut param_grads = vec![Vec::new(); weights.len()];
        for (i, p) in weights.iter().enumerate().rev() {
            let need_input_grad = i > 0 || self.stage != 0;
            if p.tensors.is_empty() && !need_input_grad {
                // A weight-free first block of stage 0: nothing to differentiate.
                continue;
            }
            if p.block.has_relu() {
                // relu'(pre) from the forward: 1 where its output was positive.
                g = relu_backward(g, &acts[i + 1]);
            }
            if let Some((grads, input_grad)) = p.block.closed_form_vjp(
                &acts[i],
                &p.tensors,
                &g,
                need_input_grad,
                defer,
                layer_inputs.map(|inputs| inputs[i].as_slice()),
            ) {
                if defer && p.block.defers_weight_grad() {
                    if self.deferred.len() < weights.len() {
                        self.deferred.resize_with(weights.len(), Vec::new);
                    }
                    self.deferred[i].push((acts[i].clone(), g.clone()));
                }
                param_grads[i] = grads;
                if let Some(input_grad) = input_grad {
                    g = input_grad;
                }
                continue;
            }
            let x = acts[i].clone().autodiff();
            let x = if need_input_grad { x.require_grad() } else { x };
            let leaves: Vec<Tensor<1>> = p
                .tensors
                .iter()
                .map(|t| t.clone().autodiff().require_grad())
                .collect();
            // Batch norms normalise with the saved input's batch statistics, as the forward
            // did; the running statistics are not touched again.
            let out = p
                .block
                .forward_weighted(x.clone(), &leaves, Norm::Batch(&mut Vec::new()));
            let grads = out.mul(g.clone().autodiff()).sum().backward();
            param_grads[i] = leaves
                .iter()
                .enumerate()
                .map(|(j, leaf)| match leaf.grad(&grads) {
                    Some(g) => g.inner(),
                    None => panic!("no gradient for parameter {j} of local block {i}"),
                })
                .collect();
            if need_input_grad {
                g = match x.grad(&grads) {
                    Some(g) => g.inner(),
                    None => panic!("no gradient for the input of local block {i}"),
                };
            }
        }
        (param_grads, (self.stage != 0).then_some(g))
    }

    /// Takes the saved forward of `work`'s micro-batch and checks the output gradient that
    /// came with it: the saved state, the backward's recipe and the upstream gradient.
    fn take_saved(
        &mut self,
        work: BackwardWork<StageMessage>,
    ) -> Result<(Saved, WeightRecipe, Option<Tensor<2>>), ComputeError> {
        let saved = self.saved.remove(&work.microbatch).ok_or_else(|| {
            self.error(format!(
                "backward of {:?} without a saved forward",
                work.microbatch
            ))
        })?;
        let upstream = match (self.is_last(), work.output_gradient) {
            (true, None) => None,
            (false, Some(m)) => {
                let expected = saved.trace().stage_output.dims();
                if m.dims() != expected {
                    return Err(self.error(format!(
                        "output gradient of {:?} is {:?}, the output was {expected:?}",
                        work.microbatch,
                        m.dims()
                    )));
                }
                Some(m.into_tensor())
            }
            (true, Some(_)) => {
                return Err(self.error("the last stage got an output gradient".into()));
            }
            (false, None) => {
                return Err(self.error(format!(
                    "backward of {:?} needs the output gradient from the next stage",
                    work.microbatch
                )));
            }
        };
        Ok((saved, work.recipe, upstream))
    }

    /// Backward of one micro-batch: parameter gradients and the input gradient.
    fn backward_one(
        &mut self,
        work: BackwardWork<StageMessage>,
    ) -> Result<(Vec<Vec<Tensor<1>>>, Option<Tensor<2>>), ComputeError> {
        let (mut saved, recipe, upstream) = self.take_saved(work)?;
        if recipe == saved.recipe
            && let Some(graph) = saved.trace_mut().graph.take()
        {
            return Ok(Self::graph_vjp(graph, upstream));
        }
        let weights = self
            .store
            .weights(&recipe, Pass::Backward, &self.optimizer)?;
        Ok(match self.grad_mode {
            GradMode::Graph => {
                let g = self.output_gradient(&saved, upstream);
                // Layer inputs recorded by the forward serve only a backward with its weights.
                let layer_inputs = saved
                    .trace()
                    .layer_inputs
                    .as_deref()
                    .filter(|_| recipe == saved.recipe);
                self.per_block_vjp(&saved.trace().activations, &weights, g, layer_inputs)
            }
            GradMode::Recompute => {
                let only_graph = Kept {
                    graph: true,
                    ..Kept::NONE
                };
                let trace = self.run(&saved.input, &weights, saved.targets.as_ref(), only_graph);
                let graph = trace.graph.expect("a run with a graph has one");
                Self::graph_vjp(graph, upstream)
            }
        })
    }

    /// Whether the micro-batches of `work` can be differentiated as one stacked batch: graph
    /// mode, several micro-batches reading one weight set that none of their forwards read
    /// (so no forward graph is reusable), and no block of the stage normalising with batch
    /// statistics (a re-run over the stack would mix the micro-batches' statistics).
    fn can_stack(&self, work: &[BackwardWork<StageMessage>]) -> bool {
        self.grad_mode == GradMode::Graph
            && work.len() > 1
            && work.iter().all(|item| {
                item.recipe == work[0].recipe
                    && self
                        .saved
                        .get(&item.microbatch)
                        .is_some_and(|saved| saved.recipe != item.recipe)
            })
            && self.store.live().iter().all(|p| p.block.stacks_rows())
    }

    /// The backward of several micro-batches that read one weight set (nF1B's N micro-batches
    /// of a mini-batch), as one batch: their saved activations and output gradients are
    /// stacked along the rows, so each block's VJP runs once over the whole mini-batch instead
    /// of N times over thin micro-batches, and the weight gradients come out already summed;
    /// the input gradient is split back.
    fn backward_stacked(
        &mut self,
        work: Vec<BackwardWork<StageMessage>>,
    ) -> Result<Vec<Option<StageMessage>>, ComputeError> {
        let recipe = work[0].recipe;
        let mut activations: Vec<Vec<Tensor<2>>> = Vec::new();
        let mut gradients = Vec::with_capacity(work.len());
        for item in work {
            let (saved, _, upstream) = self.take_saved(item)?;
            gradients.push(self.output_gradient(&saved, upstream));
            for (i, act) in saved.into_trace().activations.into_iter().enumerate() {
                match activations.get_mut(i) {
                    Some(column) => column.push(act),
                    None => activations.push(vec![act]),
                }
            }
        }
        let rows: Vec<usize> = gradients.iter().map(|g| g.dims()[0]).collect();
        let acts: Vec<Tensor<2>> = activations
            .into_iter()
            .map(|column| Tensor::cat(column, 0))
            .collect();
        let weights = self
            .store
            .weights(&recipe, Pass::Backward, &self.optimizer)?;
        let (param_grads, input_grad) =
            self.per_block_vjp(&acts, &weights, Tensor::cat(gradients, 0), None);
        self.accumulate(param_grads);
        Ok(match input_grad {
            Some(grad) => grad
                .split_with_sizes(rows, 0)
                .into_iter()
                .map(|g| Some(StageMessage::new(g)))
                .collect(),
            None => rows.iter().map(|_| None).collect(),
        })
    }

    /// Adds parameter gradients to the accumulator of the current mini-batch.
    fn accumulate(&mut self, param_grads: Vec<Vec<Tensor<1>>>) {
        self.accumulated = Some(match self.accumulated.take() {
            None => param_grads,
            Some(acc) => acc
                .into_iter()
                .zip(param_grads)
                .map(|(a, g)| a.into_iter().zip(g).map(|(a, g)| a.add(g)).collect())
                .collect(),
        });
    }
}

impl StageCompute for BurnStage {
    type Message = StageMessage;
    type Targets = Targets;

    fn forward(
        &mut self,
        microbatch: MicrobatchId,
        input: StageMessage,
        targets: Option<Targets>,
        recipe: &WeightRecipe,
        backward_reads_forward_weights: bool,
    ) -> Result<ForwardOutput<StageMessage>, ComputeError> {
        self.check_forward(microbatch, &input, targets.as_ref())?;
        let input = input.into_tensor();
        let weights = self.store.weights(recipe, Pass::Forward, &self.optimizer)?;
        let kept = if self.recompute_activations {
            Kept::NONE
        } else {
            self.kept_for_backward(backward_reads_forward_weights)
        };
        let mut trace = self.run(&input, &weights, targets.as_ref(), kept);
        // Running statistics move once per forward, on the live version
        // (`docs/algorithms.md` §4.3).
        self.store
            .update_running_stats(&std::mem::take(&mut trace.batch_stats));
        let output = match &targets {
            Some(t) => {
                let logits = to_vec(&trace.stage_output);
                ForwardOutput::Loss(LossStats {
                    loss_sum: trace.loss_sum.unwrap_or(f64::NAN),
                    correct: count_correct(&logits, t.num_classes, &t.labels),
                    count: t.labels.len() as u64,
                })
            }
            None => ForwardOutput::Activation(StageMessage::new(trace.stage_output.clone())),
        };
        let trace = (!self.recompute_activations).then_some(trace);
        self.saved.insert(
            microbatch,
            Saved {
                recipe: *recipe,
                input,
                trace,
                targets,
            },
        );
        self.note_activation_bytes();
        Ok(output)
    }

    fn backward(
        &mut self,
        work: Vec<BackwardWork<StageMessage>>,
    ) -> Result<Vec<Option<StageMessage>>, ComputeError> {
        // A recomputing stage re-runs a forward just before its backward: one micro-batch at a
        // time, or every micro-batch of a stacked backward at once.
        if self.can_stack(&work) {
            if self.recompute_activations {
                for item in &work {
                    self.recompute_forward(item)?;
                }
                self.note_activation_bytes();
            }
            return self.backward_stacked(work);
        }
        let mut input_grads = Vec::with_capacity(work.len());
        for item in work {
            if self.recompute_activations {
                self.recompute_forward(&item)?;
                self.note_activation_bytes();
            }
            let (param_grads, input_grad) = self.backward_one(item)?;
            self.accumulate(param_grads);
            input_grads.push(input_grad.map(StageMessage::new));
        }
        Ok(input_grads)
    }

    fn update(&mut self, base: &[WeightRecipe]) -> Result<(), ComputeError> {
        self.complete_deferred();
        let grads = self.accumulated.take().ok_or_else(|| {
            self.error("update without any backward since the last update".into())
        })?;
        let next = if base.is_empty() {
            self.optimizer.step(self.store.live(), &grads)
        } else {
            let start = self.store.mean(base, &self.optimizer)?;
            self.optimizer.step(&start, &grads)
        };
        self.store.advance(next);
        Ok(())
    }

    fn release(&mut self, key: WeightKey) {
        self.store.release(key);
    }

    fn message_bytes(message: &StageMessage) -> u64 {
        message.tensor.shape().num_elements() as u64 * 4
    }

    fn stored_weight_bytes(&self) -> u64 {
        self.store.bytes()
    }

    fn stored_weight_sets(&self) -> u32 {
        self.store.num_sets() as u32
    }

    fn activation_bytes_peak(&mut self) -> u64 {
        let now = self.saved_bytes();
        std::mem::replace(&mut self.activation_peak, now)
    }
}
