//! The stage-compute boundary: everything the runtime asks of the tensor library.
//!
//! The runtime knows schedules, weight recipes and messages; it never sees a tensor. A
//! [`StageCompute`] owns one stage's layers, its stored weight versions, its optimizer and its
//! saved activations, and performs the passes the runtime orders. It only computes: stage 0's
//! inputs and the last stage's targets come from a [`Feed`] the executor holds, so the data,
//! its batching and its augmentation stay out of the stage. Keeping this trait small is
//! what lets another backend (or a fault-injecting or no-op stage for tests and benchmarks) be
//! dropped in.

use timeprest_policy::{WeightKey, WeightRecipe};
use timeprest_schedule::MicrobatchId;

/// A failure inside a stage's computation, with a human-readable cause.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ComputeError(pub String);

/// What the last stage's forward reports for one micro-batch.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct LossStats {
    /// Sum of the per-sample losses of the micro-batch.
    pub loss_sum: f64,
    /// Number of correctly classified samples (or predicted tokens).
    pub correct: u64,
    /// Number of samples (or tokens) the loss covers.
    pub count: u64,
}

/// The result of a forward.
#[derive(Debug)]
pub enum ForwardOutput<M> {
    /// Activations for the next stage.
    Activation(M),
    /// The last stage computed the loss; the micro-batch's forward is complete.
    Loss(LossStats),
}

/// One micro-batch's share of a backward action.
#[derive(Debug)]
pub struct BackwardWork<M> {
    /// The micro-batch.
    pub microbatch: MicrobatchId,
    /// The weights its backward reads (decided by the policy).
    pub recipe: WeightRecipe,
    /// The gradient with respect to this stage's output, from the next stage; `None` at the
    /// last stage, where the backward starts from the saved loss.
    pub output_gradient: Option<M>,
}

/// Where the pipeline's data enters: stage 0's input and the last stage's targets of every
/// micro-batch of an epoch. The executor asks it and hands the result to the stage.
pub trait Feed<M, T>: Sync {
    /// The input of `microbatch` at stage 0.
    fn input(&self, microbatch: MicrobatchId) -> Result<M, ComputeError>;

    /// What the last stage's loss compares `microbatch`'s output with.
    fn targets(&self, microbatch: MicrobatchId) -> Result<T, ComputeError>;
}

/// One pipeline stage's computation.
///
/// Contract: `forward` saves whatever the later `backward` of the same micro-batch needs;
/// `backward` accumulates parameter gradients and returns one input gradient per work item
/// (`None` at stage 0); `update` applies the accumulated gradients to the live weights, which
/// becomes the next version, and clears the accumulator. Weight sets named by recipes must stay
/// available until `release` is called for them.
pub trait StageCompute: Send {
    /// What crosses a stage boundary: activations forward, gradients backward; also what a
    /// [`Feed`] gives stage 0 as its input.
    type Message: Send + 'static;
    /// What the last stage's loss compares its output with (from a [`Feed`]).
    type Targets: Send;

    /// Forward of one micro-batch with the weights of `recipe`. `input` comes from the previous
    /// stage, or from the feed at stage 0; `targets` are given at the last stage only.
    /// `backward_reads_forward_weights` says whether the micro-batch's backward at this stage
    /// will read `recipe` too (the version plan knows): a stage may keep what only such a
    /// backward can use (an autodiff graph) and skip building it otherwise, but must stay
    /// correct whatever the hint says.
    fn forward(
        &mut self,
        microbatch: MicrobatchId,
        input: Self::Message,
        targets: Option<Self::Targets>,
        recipe: &WeightRecipe,
        backward_reads_forward_weights: bool,
    ) -> Result<ForwardOutput<Self::Message>, ComputeError>;

    /// Backward of one or more micro-batches (all N of a mini-batch for nF1B, one for GPipe).
    fn backward(
        &mut self,
        work: Vec<BackwardWork<Self::Message>>,
    ) -> Result<Vec<Option<Self::Message>>, ComputeError>;

    /// Optimizer step with the gradients accumulated since the last update, starting from the
    /// mean of the weight sets `base` names, or from the live weights when `base` is empty; the
    /// result is the next live version. The previous live version stays stored until released.
    fn update(&mut self, base: &[WeightRecipe]) -> Result<(), ComputeError>;

    /// The weight set `key` will not be read again.
    fn release(&mut self, key: WeightKey);

    /// Size of a message in bytes (for the event log and the transfer model).
    fn message_bytes(message: &Self::Message) -> u64;

    /// Bytes of all weight sets this stage stores right now (live version included).
    fn stored_weight_bytes(&self) -> u64;

    /// Number of weight sets this stage stores right now (live version included).
    fn stored_weight_sets(&self) -> u32;

    /// The most bytes of activations this stage held for backwards at any moment since the
    /// last call (or since it was built); the count restarts from what it holds now.
    fn activation_bytes_peak(&mut self) -> u64;
}
