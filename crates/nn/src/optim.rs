//! Optimizers with visible state: SGD (momentum, Nesterov, weight decay) and Adam, PyTorch
//! semantics.
//!
//! Burn's own optimizers keep their state private and use a different SGD dampening, but
//! weight prediction (`docs/algorithms.md` §3.9) reads the SGD momentum buffer `b`, and results
//! must be comparable with PyTorch runs. So this module implements the update rules directly on
//! the stage's parameter tensors (a functional step: old parameters in, new parameters out,
//! which is exactly what a version store wants) and exposes the buffers.
//!
//! SGD, dampening 0: `g ← g + λθ`; `b ← μb + g` (`b = g` on the first step);
//! `d = nesterov ? g + μb : b` (`d = g` when μ = 0); `θ ← θ − ηd`.
//! Adam (no AMSGrad, L2 weight decay added to the gradient): `m ← β₁m + (1−β₁)g`,
//! `v ← β₂v + (1−β₂)g²`, `θ ← θ − η/(1−β₁ᵗ) · m / (√v/√(1−β₂ᵗ) + ε)`.

use burn::tensor::Tensor;
use serde::{Deserialize, Serialize};

use crate::elementwise_kernel::{SgdStep, sgd_step};
use crate::{BlockParams, NnError};

mod snapshot;

pub use snapshot::OptimizerSnapshot;

/// Which update rule, with its own hyper-parameters.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum OptimizerKind {
    /// Stochastic gradient descent with (optionally Nesterov) momentum, dampening 0.
    Sgd {
        /// Momentum μ ∈ [0, 1); 0 disables the buffer.
        momentum: f64,
        /// Nesterov momentum (needs μ > 0, as in PyTorch).
        nesterov: bool,
    },
    /// Adam with bias correction.
    Adam {
        /// β₁ ∈ [0, 1).
        beta1: f64,
        /// β₂ ∈ [0, 1).
        beta2: f64,
        /// ε > 0.
        epsilon: f64,
    },
}

/// How the learning rate changes over a stage's updates: the rate of update `k` (0-based,
/// counted over the whole run, one per mini-batch per stage) is `lr · factor(k)`.
///
/// A function of the update count alone, which every stage's optimizer keeps and every
/// checkpoint restores, so a resumed run continues its schedule exactly; and every stage of a
/// pipeline steps it once per update, whatever the schedule of passes.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub enum LrSchedule {
    /// factor 1.
    #[default]
    Constant,
    /// factor `gamma^⌊k / every⌋` (PyTorch's `StepLR`).
    Step {
        /// Updates between two decays (≥ 1).
        every: u64,
        /// Decay factor in (0, 1].
        gamma: f64,
    },
    /// factor `gamma^(number of milestones ≤ k)` (PyTorch's `MultiStepLR`).
    MultiStep {
        /// The updates at which the rate decays, strictly increasing.
        milestones: Vec<u64>,
        /// Decay factor in (0, 1].
        gamma: f64,
    },
    /// factor `(k + 1) / warmup` for the first `warmup` updates, then 1.
    Warmup {
        /// Updates of the linear warm-up.
        warmup: u64,
    },
    /// The linear warm-up, then `½ (1 + cos(π (k − warmup) / (total − warmup)))`, which reaches
    /// 0 at update `total` (and stays there).
    WarmupCosine {
        /// Updates of the linear warm-up.
        warmup: u64,
        /// Updates of the whole run.
        total: u64,
    },
}

impl LrSchedule {
    /// The factor of update `k` (0-based).
    pub fn factor(&self, k: u64) -> f64 {
        let warming = |warmup: u64| (k < warmup).then(|| (k + 1) as f64 / warmup as f64);
        match *self {
            LrSchedule::Constant => 1.0,
            LrSchedule::Step { every, gamma } => gamma.powf((k / every.max(1)) as f64),
            LrSchedule::MultiStep {
                ref milestones,
                gamma,
            } => gamma.powf(milestones.partition_point(|&m| m <= k) as f64),
            LrSchedule::Warmup { warmup } => warming(warmup).unwrap_or(1.0),
            LrSchedule::WarmupCosine { warmup, total } => warming(warmup).unwrap_or_else(|| {
                let decay = total.saturating_sub(warmup).max(1) as f64;
                let progress = ((k - warmup) as f64 / decay).min(1.0);
                0.5 * (1.0 + (std::f64::consts::PI * progress).cos())
            }),
        }
    }
}

/// An optimizer: rule, learning rate with its schedule, and (L2) weight decay.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct OptimizerConfig {
    /// The rule.
    pub kind: OptimizerKind,
    /// Learning rate η ≥ 0 (the peak of a schedule).
    pub lr: f64,
    /// How η changes over the updates.
    #[serde(default)]
    pub schedule: LrSchedule,
    /// Weight decay λ ≥ 0, added to the gradient as λθ.
    pub weight_decay: f64,
}

impl OptimizerConfig {
    /// Plain SGD with momentum `momentum` (no Nesterov, no weight decay).
    pub fn sgd(lr: f64, momentum: f64) -> Self {
        Self {
            kind: OptimizerKind::Sgd {
                momentum,
                nesterov: false,
            },
            lr,
            schedule: LrSchedule::Constant,
            weight_decay: 0.0,
        }
    }

    /// Adam with PyTorch's defaults (β₁ 0.9, β₂ 0.999, ε 1e-8), no weight decay.
    pub fn adam(lr: f64) -> Self {
        Self {
            kind: OptimizerKind::Adam {
                beta1: 0.9,
                beta2: 0.999,
                epsilon: 1e-8,
            },
            lr,
            schedule: LrSchedule::Constant,
            weight_decay: 0.0,
        }
    }

    /// The learning rate of update `k` (0-based): η · the schedule's factor.
    pub fn lr_at(&self, k: u64) -> f64 {
        self.lr * self.schedule.factor(k)
    }

    /// The SGD momentum μ, or `None` for Adam.
    pub fn momentum(&self) -> Option<f64> {
        match self.kind {
            OptimizerKind::Sgd { momentum, .. } => Some(momentum),
            OptimizerKind::Adam { .. } => None,
        }
    }

    /// Checks every hyper-parameter's domain.
    ///
    /// # Errors
    /// [`NnError::InvalidOptimizer`] naming the offending value.
    pub fn validate(&self) -> Result<(), NnError> {
        let bad = |what: String| Err(NnError::InvalidOptimizer(what));
        if !(self.lr.is_finite() && self.lr >= 0.0) {
            return bad(format!("learning rate {} must be finite and >= 0", self.lr));
        }
        if let LrSchedule::Step { every, gamma } = self.schedule
            && (every == 0 || !(gamma > 0.0 && gamma <= 1.0))
        {
            return bad(format!(
                "a step schedule needs every ≥ 1 and gamma in (0, 1], got every {every}, gamma \
                 {gamma}"
            ));
        }
        if let LrSchedule::MultiStep {
            ref milestones,
            gamma,
        } = self.schedule
            && (milestones.is_empty()
                || milestones.windows(2).any(|w| w[0] >= w[1])
                || !(gamma > 0.0 && gamma <= 1.0))
        {
            return bad(format!(
                "a multi-step schedule needs strictly increasing milestones and gamma in (0, 1], \
                 got milestones {milestones:?}, gamma {gamma}"
            ));
        }
        if !(self.weight_decay.is_finite() && self.weight_decay >= 0.0) {
            return bad(format!(
                "weight decay {} must be finite and >= 0",
                self.weight_decay
            ));
        }
        match self.kind {
            OptimizerKind::Sgd { momentum, nesterov } => {
                if !(0.0..1.0).contains(&momentum) {
                    return bad(format!("momentum {momentum} must be in [0, 1)"));
                }
                if nesterov && momentum == 0.0 {
                    return bad("Nesterov momentum needs a momentum > 0".into());
                }
            }
            OptimizerKind::Adam {
                beta1,
                beta2,
                epsilon,
            } => {
                if !(0.0..1.0).contains(&beta1) || !(0.0..1.0).contains(&beta2) {
                    return bad(format!("Adam betas ({beta1}, {beta2}) must be in [0, 1)"));
                }
                if !(epsilon.is_finite() && epsilon > 0.0) {
                    return bad(format!("Adam epsilon {epsilon} must be finite and > 0"));
                }
            }
        }
        Ok(())
    }
}

/// State of one parameter tensor; both `None` before the first step.
#[derive(Clone, Debug, Default)]
struct ParamState {
    /// SGD's momentum buffer b, or Adam's first moment m.
    first: Option<Tensor<1>>,
    /// Adam's second moment v.
    second: Option<Tensor<1>>,
}

/// An optimizer over one stage's parameters (a list of blocks, each a list of tensors).
#[derive(Clone, Debug)]
pub struct Optimizer {
    config: OptimizerConfig,
    steps: u64,
    /// Per block, per parameter tensor; filled on the first step.
    state: Vec<Vec<ParamState>>,
}

impl Optimizer {
    /// A fresh optimizer (no state yet).
    ///
    /// # Errors
    /// [`NnError::InvalidOptimizer`] if `config` fails [`OptimizerConfig::validate`].
    pub fn new(config: OptimizerConfig) -> Result<Self, NnError> {
        config.validate()?;
        Ok(Self {
            config,
            steps: 0,
            state: Vec::new(),
        })
    }

    /// The configuration.
    pub fn config(&self) -> &OptimizerConfig {
        &self.config
    }

    /// Number of steps taken.
    pub fn steps(&self) -> u64 {
        self.steps
    }

    /// The learning rate of the next step.
    pub fn next_lr(&self) -> f64 {
        self.config.lr_at(self.steps)
    }

    /// Where `steps` more updates would take `theta` (tensor `param` of block `block`) if they
    /// saw no new data gradient: only the optimizer's own state and weight decay move it, under
    /// its rule (Nesterov included) and at each coming update's learning rate. The optimizer is
    /// not changed. NWPT's `nag` (one step) and `msnag` (s steps) predictions are this rollout;
    /// for plain SGD it is θ − η(μ + … + μ^s)·b.
    pub fn rollout(&self, block: usize, param: usize, theta: &Tensor<1>, steps: u32) -> Tensor<1> {
        let mut state = (self.state.get(block))
            .and_then(|s| s.get(param))
            .cloned()
            .unwrap_or_default();
        let zero = theta.zeros_like();
        let mut theta = theta.clone();
        for k in 1..=u64::from(steps) {
            let t = self.steps + k;
            theta = step_one(
                &self.config,
                self.config.lr_at(t - 1),
                t,
                &theta,
                &zero,
                &mut state,
            );
        }
        theta
    }

    /// SGD's momentum buffer b of parameter `param` of block `block` (indices local to the
    /// optimizer's parameter list), or `None` before the first step, without momentum, or
    /// for Adam.
    pub fn momentum_buffer(&self, block: usize, param: usize) -> Option<&Tensor<1>> {
        match self.config.kind {
            OptimizerKind::Sgd { .. } => self.state.get(block)?.get(param)?.first.as_ref(),
            OptimizerKind::Adam { .. } => None,
        }
    }

    /// Bytes of optimizer state (f32).
    pub fn state_bytes(&self) -> u64 {
        let elems = |t: &Tensor<1>| t.shape().num_elements() as u64;
        self.state
            .iter()
            .flatten()
            .map(|s| s.first.iter().chain(&s.second).map(elems).sum::<u64>())
            .sum::<u64>()
            * 4
    }

    /// One step: the new parameters from `params` and their gradients `grads` (same
    /// structure), updating the state.
    ///
    /// # Panics
    /// If `grads` does not match `params`, or the structure changes between steps (caller
    /// bugs).
    pub fn step(&mut self, params: &[BlockParams], grads: &[Vec<Tensor<1>>]) -> Vec<BlockParams> {
        assert_eq!(
            params.len(),
            grads.len(),
            "optimizer step: blocks vs gradient blocks"
        );
        if self.state.is_empty() {
            self.state = params
                .iter()
                .map(|p| vec![ParamState::default(); p.tensors.len()])
                .collect();
        }
        assert_eq!(
            self.state.len(),
            params.len(),
            "optimizer step: parameter list changed"
        );
        let lr = self.next_lr();
        self.steps += 1;
        let config = &self.config;
        let t = self.steps;
        params
            .iter()
            .zip(grads)
            .zip(&mut self.state)
            .map(|((p, g), state)| {
                assert_eq!(
                    p.tensors.len(),
                    g.len(),
                    "optimizer step: tensors vs gradients"
                );
                p.map(|i, theta| step_one(config, lr, t, theta, &g[i], &mut state[i]))
            })
            .collect()
    }
}

/// The update of one tensor: step `t` (1-based) at learning rate `lr`. SGD on plain host
/// tensors runs as one fused pass on the stage's threads ([`sgd_step`]); everything else runs
/// the rule as burn tensor operations ([`step_one_tensor`]), with the same result.
fn step_one(
    config: &OptimizerConfig,
    lr: f64,
    t: u64,
    theta: &Tensor<1>,
    grad: &Tensor<1>,
    state: &mut ParamState,
) -> Tensor<1> {
    if let OptimizerKind::Sgd { momentum, nesterov } = config.kind {
        let nonzero = |value: f64| (value != 0.0).then_some(value as f32);
        let step = SgdStep {
            lr: lr as f32,
            momentum: nonzero(momentum),
            nesterov,
            weight_decay: nonzero(config.weight_decay),
        };
        if let Some(next) = sgd_step(theta, grad, &mut state.first, step) {
            return next;
        }
    }
    step_one_tensor(config, lr, t, theta, grad, state)
}

/// [`step_one`] as burn tensor operations, for every optimizer and device.
fn step_one_tensor(
    config: &OptimizerConfig,
    lr: f64,
    t: u64,
    theta: &Tensor<1>,
    grad: &Tensor<1>,
    state: &mut ParamState,
) -> Tensor<1> {
    let mut g = grad.clone();
    if config.weight_decay != 0.0 {
        g = g.add(theta.clone().mul_scalar(config.weight_decay));
    }
    let direction = match config.kind {
        OptimizerKind::Sgd { momentum, nesterov } => {
            if momentum == 0.0 {
                g
            } else {
                let b = match state.first.take() {
                    Some(b) => b.mul_scalar(momentum).add(g.clone()),
                    None => g.clone(),
                };
                state.first = Some(b.clone());
                if nesterov {
                    g.add(b.mul_scalar(momentum))
                } else {
                    b
                }
            }
        }
        OptimizerKind::Adam {
            beta1,
            beta2,
            epsilon,
        } => {
            let m = state.first.take().unwrap_or_else(|| g.zeros_like());
            let v = state.second.take().unwrap_or_else(|| g.zeros_like());
            let m = m.mul_scalar(beta1).add(g.clone().mul_scalar(1.0 - beta1));
            let v = v
                .mul_scalar(beta2)
                .add(g.clone().mul(g).mul_scalar(1.0 - beta2));
            state.first = Some(m.clone());
            state.second = Some(v.clone());
            let bias1 = 1.0 - beta1.powi(t as i32);
            let bias2 = 1.0 - beta2.powi(t as i32);
            let denom = v.sqrt().div_scalar(bias2.sqrt()).add_scalar(epsilon);
            // θ −= η · (m / bias1) / denom.
            m.div(denom).div_scalar(bias1)
        }
    };
    theta.clone().sub(direction.mul_scalar(lr))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tensor::{tensor1, to_vec};
    use crate::{Block, Linear};

    fn params(values: &[f32]) -> Vec<BlockParams> {
        // A 1→2 linear block: weight has 2 values, bias 2.
        let block = Block::Linear(Linear {
            input: 1,
            output: 2,
            relu: false,
        });
        vec![BlockParams {
            block,
            tensors: vec![tensor1(values[..2].to_vec()), tensor1(values[2..].to_vec())],
            buffers: Vec::new(),
        }]
    }

    fn grads(values: &[f32]) -> Vec<Vec<Tensor<1>>> {
        vec![vec![
            tensor1(values[..2].to_vec()),
            tensor1(values[2..].to_vec()),
        ]]
    }

    fn flat(p: &[BlockParams]) -> Vec<f64> {
        p[0].values().concat().into_iter().map(f64::from).collect()
    }

    fn assert_close(a: &[f64], b: &[f64], tol: f64) {
        assert_eq!(a.len(), b.len());
        for (x, y) in a.iter().zip(b) {
            assert!((x - y).abs() <= tol * (1.0 + y.abs()), "{a:?} vs {b:?}");
        }
    }

    /// Hand-written PyTorch SGD on f64, for comparison.
    fn sgd_reference(
        theta0: &[f64],
        grads: &[Vec<f64>],
        lr: f64,
        mu: f64,
        nesterov: bool,
        wd: f64,
    ) -> Vec<f64> {
        let mut theta = theta0.to_vec();
        let mut buf: Option<Vec<f64>> = None;
        for g in grads {
            let g: Vec<f64> = g.iter().zip(&theta).map(|(g, t)| g + wd * t).collect();
            let b: Vec<f64> = match &buf {
                None => g.clone(),
                Some(b) => b.iter().zip(&g).map(|(b, g)| mu * b + g).collect(),
            };
            let d: Vec<f64> = if nesterov {
                g.iter().zip(&b).map(|(g, b)| g + mu * b).collect()
            } else {
                b.clone()
            };
            buf = Some(b);
            theta = theta.iter().zip(&d).map(|(t, d)| t - lr * d).collect();
        }
        theta
    }

    /// The fused host step is the tensor form's rule bit for bit (NaN as NaN): every SGD
    /// variant, four steps, on values that take every branch of f32 arithmetic (signed zeros,
    /// NaN, ±∞, subnormals), on a length of several chunks plus a ragged end, with a momentum buffer that
    /// another reader shares on one step (so it is copied, not overwritten).
    #[test]
    fn fused_sgd_step_equals_the_tensor_rule_bit_for_bit() {
        let len = 3 * (1 << 14) + 5;
        let special = [
            0.0f32,
            -0.0,
            f32::NAN,
            f32::INFINITY,
            -f32::INFINITY,
            1e-40,
            -3.5,
        ];
        let value = |seed: usize, i: usize| match (i * 7 + seed) % 53 {
            k if k < special.len() => special[k],
            k => ((k * 37 + i) % 101) as f32 / 17.0 - 3.0,
        };
        for (momentum, nesterov, weight_decay) in [
            (0.0, false, 0.0),
            (0.0, false, 0.01),
            (0.9, false, 0.0),
            (0.9, true, 0.0),
            (0.5, true, 1e-4),
        ] {
            let config = OptimizerConfig {
                kind: OptimizerKind::Sgd { momentum, nesterov },
                lr: 0.1,
                schedule: LrSchedule::default(),
                weight_decay,
            };
            let mut fused_theta = tensor1((0..len).map(|i| value(1, i)).collect());
            let mut tensor_theta = fused_theta.clone();
            let (mut fused_state, mut tensor_state) =
                (ParamState::default(), ParamState::default());
            for t in 1..=4 {
                let grad = tensor1((0..len).map(|i| value(t as usize + 2, i)).collect());
                // Bits, with every NaN as one (a NaN's payload depends on operand order).
                let bits = |x: &Tensor<1>| {
                    let bits = |v: &f32| if v.is_nan() { u32::MAX } else { v.to_bits() };
                    to_vec(x).iter().map(bits).collect::<Vec<_>>()
                };
                // A reader of the buffer (as weight prediction reads it) on the third step.
                let reader = (t == 3)
                    .then(|| fused_state.first.clone())
                    .flatten()
                    .map(|buffer| (bits(&buffer), buffer));
                fused_theta = step_one(&config, 0.03, t, &fused_theta, &grad, &mut fused_state);
                tensor_theta =
                    step_one_tensor(&config, 0.03, t, &tensor_theta, &grad, &mut tensor_state);
                assert_eq!(bits(&fused_theta), bits(&tensor_theta), "weights, step {t}");
                let buffer_bits = |s: &ParamState| s.first.as_ref().map(bits);
                assert_eq!(
                    buffer_bits(&fused_state),
                    buffer_bits(&tensor_state),
                    "buffer, step {t}"
                );
                if let Some((before, buffer)) = reader {
                    assert_eq!(bits(&buffer), before, "the shared buffer was overwritten");
                }
            }
        }
    }

    #[test]
    fn sgd_matches_hand_computed_pytorch_steps() {
        let theta0 = [0.5f32, -1.0, 2.0, 0.25];
        let gs = [
            [0.1f32, 0.2, -0.3, 0.4],
            [-0.5, 0.0, 0.25, 1.0],
            [0.3, -0.1, 0.2, -0.2],
        ];
        for (mu, nesterov, wd) in [
            (0.0, false, 0.0),
            (0.9, false, 0.0),
            (0.9, true, 0.01),
            (0.5, false, 0.1),
        ] {
            let config = OptimizerConfig {
                kind: OptimizerKind::Sgd {
                    momentum: mu,
                    nesterov,
                },
                lr: 0.1,
                schedule: LrSchedule::Constant,
                weight_decay: wd,
            };
            let mut opt = Optimizer::new(config).unwrap();
            let mut p = params(&theta0);
            for g in &gs {
                p = opt.step(&p, &grads(g));
            }
            let g64: Vec<Vec<f64>> = gs
                .iter()
                .map(|g| g.iter().map(|&x| f64::from(x)).collect())
                .collect();
            let t64: Vec<f64> = theta0.iter().map(|&x| f64::from(x)).collect();
            let expected = sgd_reference(&t64, &g64, 0.1, mu, nesterov, wd);
            assert_close(&flat(&p), &expected, 1e-6);
            assert_eq!(opt.steps(), 3);
            assert_eq!(opt.momentum_buffer(0, 0).is_some(), mu != 0.0);
        }
    }

    #[test]
    fn sgd_first_buffer_is_the_gradient() {
        let mut opt = Optimizer::new(OptimizerConfig::sgd(0.1, 0.9)).unwrap();
        let p = params(&[1.0, 1.0, 1.0, 1.0]);
        let next = opt.step(&p, &grads(&[0.5, -0.5, 1.0, 2.0]));
        assert_eq!(to_vec(opt.momentum_buffer(0, 0).unwrap()), vec![0.5, -0.5]);
        assert_eq!(to_vec(opt.momentum_buffer(0, 1).unwrap()), vec![1.0, 2.0]);
        assert_close(&flat(&next), &[0.95, 1.05, 0.9, 0.8], 1e-7);
    }

    #[test]
    fn adam_matches_hand_computed_pytorch_steps() {
        let (lr, b1, b2, eps, wd) = (0.01, 0.9, 0.999, 1e-8, 0.05);
        let config = OptimizerConfig {
            kind: OptimizerKind::Adam {
                beta1: b1,
                beta2: b2,
                epsilon: eps,
            },
            lr,
            schedule: LrSchedule::Constant,
            weight_decay: wd,
        };
        let mut opt = Optimizer::new(config).unwrap();
        let theta0 = [0.5f32, -1.0, 2.0, 0.25];
        let gs = [[0.1f32, 0.2, -0.3, 0.4], [-0.5, 0.0, 0.25, 1.0]];
        let mut p = params(&theta0);
        for g in &gs {
            p = opt.step(&p, &grads(g));
        }
        let mut theta: Vec<f64> = theta0.iter().map(|&x| f64::from(x)).collect();
        let (mut m, mut v) = (vec![0.0; 4], vec![0.0; 4]);
        for (t, g) in gs.iter().enumerate() {
            let t = t as i32 + 1;
            for i in 0..4 {
                let g = f64::from(g[i]) + wd * theta[i];
                m[i] = b1 * m[i] + (1.0 - b1) * g;
                v[i] = b2 * v[i] + (1.0 - b2) * g * g;
                let denom = v[i].sqrt() / (1.0 - b2.powi(t)).sqrt() + eps;
                theta[i] -= lr / (1.0 - b1.powi(t)) * m[i] / denom;
            }
        }
        assert_close(&flat(&p), &theta, 1e-6);
        assert!(opt.momentum_buffer(0, 0).is_none());
        assert_eq!(opt.state_bytes(), 2 * 4 * 4);
    }

    #[test]
    fn invalid_settings_are_errors() {
        let sgd = |momentum, nesterov| OptimizerConfig {
            kind: OptimizerKind::Sgd { momentum, nesterov },
            lr: 0.1,
            schedule: LrSchedule::Constant,
            weight_decay: 0.0,
        };
        assert!(Optimizer::new(sgd(0.0, true)).is_err());
        assert!(Optimizer::new(sgd(1.0, false)).is_err());
        assert!(
            Optimizer::new(OptimizerConfig {
                lr: -1.0,
                ..sgd(0.9, false)
            })
            .is_err()
        );
        assert!(
            Optimizer::new(OptimizerConfig {
                weight_decay: f64::NAN,
                ..sgd(0.9, false)
            })
            .is_err()
        );
        let err = Optimizer::new(OptimizerConfig {
            kind: OptimizerKind::Adam {
                beta1: 0.9,
                beta2: 0.999,
                epsilon: 0.0,
            },
            lr: 0.1,
            schedule: LrSchedule::Constant,
            weight_decay: 0.0,
        })
        .unwrap_err();
        assert!(err.to_string().contains("epsilon"), "{err}");
    }

    #[test]
    fn every_schedule_gives_its_closed_form_at_every_update() {
        use std::f64::consts::PI;
        let close = |a: f64, b: f64| assert!((a - b).abs() < 1e-12, "{a} vs {b}");
        for k in 0..40 {
            close(LrSchedule::Constant.factor(k), 1.0);
            let step = LrSchedule::Step {
                every: 7,
                gamma: 0.5,
            };
            close(step.factor(k), 0.5f64.powi((k / 7) as i32));
            let multi = LrSchedule::MultiStep {
                milestones: vec![3, 10, 11],
                gamma: 0.1,
            };
            let decays = [3, 10, 11].iter().filter(|&&m| m <= k).count();
            close(multi.factor(k), 0.1f64.powi(decays as i32));
            let warm = LrSchedule::Warmup { warmup: 5 };
            close(
                warm.factor(k),
                if k < 5 { (k + 1) as f64 / 5.0 } else { 1.0 },
            );
            let cosine = LrSchedule::WarmupCosine {
                warmup: 5,
                total: 25,
            };
            let expected = match k {
                0..5 => (k + 1) as f64 / 5.0,
                5..25 => 0.5 * (1.0 + (PI * (k - 5) as f64 / 20.0).cos()),
                _ => 0.0,
            };
            close(cosine.factor(k), expected);
        }
    }

    #[test]
    fn each_step_uses_the_rate_of_its_own_update() {
        let mut config = OptimizerConfig::sgd(0.5, 0.0);
        config.schedule = LrSchedule::Warmup { warmup: 4 };
        let mut optimizer = Optimizer::new(config.clone()).unwrap();
        let mut p = params(&[1.0, 1.0, 1.0, 1.0]);
        let g = grads(&[1.0, 1.0, 1.0, 1.0]);
        let mut expected = 1.0;
        for k in 0..6u64 {
            assert_eq!(optimizer.next_lr(), config.lr_at(k));
            p = optimizer.step(&p, &g);
            expected -= 0.5 * ((k + 1).min(4) as f64 / 4.0);
            assert_close(&flat(&p), &[expected; 4], 1e-6);
        }
    }

    #[test]
    fn a_step_schedule_needs_a_period_and_a_decay_in_range() {
        for (every, gamma) in [(0, 0.5), (3, 0.0), (3, 1.5), (3, f64::NAN)] {
            let mut config = OptimizerConfig::sgd(0.1, 0.9);
            config.schedule = LrSchedule::Step { every, gamma };
            assert!(Optimizer::new(config).is_err(), "{every} {gamma}");
        }
        for (milestones, gamma) in [
            (vec![], 0.5),
            (vec![4, 4], 0.5),
            (vec![5, 2], 0.5),
            (vec![2], 2.0),
        ] {
            let mut config = OptimizerConfig::sgd(0.1, 0.9);
            config.schedule = LrSchedule::MultiStep {
                milestones: milestones.clone(),
                gamma,
            };
            assert!(Optimizer::new(config).is_err(), "{milestones:?} {gamma}");
        }
    }
}
