//! A stage's weight-version store: the live version, kept old versions, cached predictions,
//! and how a [`WeightRecipe`] turns into concrete weights.
//!
//! Versions are immutable: an optimizer step makes *new* tensors for the new live version, so
//! keeping an old version is just keeping its tensor handles (no copy). What is stored is
//! exactly what the policy said to keep, which is what the papers' memory comparisons count:
//! the live set, every superseded version until it is released, and every materialised
//! prediction until it is released. Blends are built on demand and never stored (one transient
//! weight set, `docs/algorithms.md` §3.8). Predictions are built when a forward first asks for
//! them, from the live version and the optimizer's momentum buffer, and cached so the matching
//! backward reads bit-identical weights (`docs/algorithms.md` §3.9).
//!
//! Each weight set carries its batch norms' running statistics. Training forwards normalise
//! with batch statistics and then move the *live* version's running statistics (once per
//! forward, never during a recompute); an update hands them on to the new live version, and a
//! kept version keeps the ones it had, so evaluation of any stored version is consistent.

use std::collections::BTreeMap;

use burn::tensor::Tensor;
use timeprest_policy::{Version, WeightKey, WeightRecipe};
use timeprest_runtime::ComputeError;

use crate::optim::Optimizer;
use crate::{BlockParams, ModelParams};

/// The weight sets of one stage.
#[derive(Debug)]
pub(crate) struct WeightStore {
    live_version: Version,
    live: ModelParams,
    /// Whether the live version was released while live: it is then dropped, not kept, when
    /// the next update supersedes it.
    live_released: bool,
    kept: BTreeMap<Version, ModelParams>,
    predicted: BTreeMap<WeightKey, ModelParams>,
}

/// Which pass asks for weights (predictions are only built by forwards).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Pass {
    Forward,
    Backward,
}

impl WeightStore {
    /// A store whose live version 0 is `params`.
    pub(crate) fn new(params: ModelParams) -> Self {
        Self {
            live_version: 0,
            live: params,
            live_released: false,
            kept: BTreeMap::new(),
            predicted: BTreeMap::new(),
        }
    }

    /// A store whose live version `version` is `params` (resuming from a checkpoint).
    pub(crate) fn resumed(params: ModelParams, version: Version) -> Self {
        Self {
            live_version: version,
            ..Self::new(params)
        }
    }

    pub(crate) fn live_version(&self) -> Version {
        self.live_version
    }

    pub(crate) fn live(&self) -> &ModelParams {
        &self.live
    }

    /// Installs `next` as the new live version; the old one is kept under its version unless
    /// it was released while live.
    pub(crate) fn advance(&mut self, next: ModelParams) {
        let old = std::mem::replace(&mut self.live, next);
        if !std::mem::take(&mut self.live_released) {
            self.kept.insert(self.live_version, old);
        }
        self.live_version += 1;
    }

    /// Moves the live version's running statistics (batch norms) towards a forward's batch
    /// statistics `stats` (per block: mean and unbiased variance per batch norm). The live
    /// parameters are replaced by new handles, so kept versions keep the statistics they had
    /// when they were live: running statistics are stored per version.
    pub(crate) fn update_running_stats(&mut self, stats: &[Vec<Tensor<1>>]) {
        if stats.iter().all(Vec::is_empty) {
            return;
        }
        self.live = self
            .live
            .iter()
            .zip(stats)
            .map(|(p, s)| {
                if s.is_empty() {
                    p.clone()
                } else {
                    p.with_running_stats(s)
                }
            })
            .collect();
    }

    /// Drops the weight set `key` (a no-op for sets not stored). Releasing the live version
    /// keeps it usable while it is live but lets the next update drop it.
    pub(crate) fn release(&mut self, key: WeightKey) {
        match key {
            WeightKey::Version(v) if v == self.live_version => self.live_released = true,
            WeightKey::Version(v) => {
                self.kept.remove(&v);
            }
            WeightKey::Predicted { .. } => {
                self.predicted.remove(&key);
            }
        }
    }

    /// Number of weight sets held (live included).
    pub(crate) fn num_sets(&self) -> usize {
        1 + self.kept.len() + self.predicted.len()
    }

    /// Bytes of all weight sets held.
    pub(crate) fn bytes(&self) -> u64 {
        let set_bytes = |set: &ModelParams| set.iter().map(BlockParams::bytes).sum::<u64>();
        set_bytes(&self.live)
            + self.kept.values().map(set_bytes).sum::<u64>()
            + self.predicted.values().map(set_bytes).sum::<u64>()
    }

    /// The weight set `key`, if held.
    pub(crate) fn get(&self, key: WeightKey) -> Option<&ModelParams> {
        match key {
            WeightKey::Version(v) if v == self.live_version => Some(&self.live),
            WeightKey::Version(v) => self.kept.get(&v),
            WeightKey::Predicted { .. } => self.predicted.get(&key),
        }
    }

    /// The keys held, live version first.
    pub(crate) fn keys(&self) -> Vec<WeightKey> {
        std::iter::once(WeightKey::Version(self.live_version))
            .chain(self.kept.keys().map(|&v| WeightKey::Version(v)))
            .chain(self.predicted.keys().copied())
            .collect()
    }

    /// Stored version `version`.
    fn version(&self, version: Version) -> Result<&ModelParams, ComputeError> {
        if version == self.live_version {
            return Ok(&self.live);
        }
        self.kept.get(&version).ok_or_else(|| {
            ComputeError(format!(
                "weight version {version} is not stored (live version {}, kept {:?}); was it \
                 released too early, or is it from the future?",
                self.live_version,
                self.kept.keys().collect::<Vec<_>>()
            ))
        })
    }

    /// The weights `recipe` names, for a pass of kind `pass`.
    pub(crate) fn weights(
        &mut self,
        recipe: &WeightRecipe,
        pass: Pass,
        optimizer: &Optimizer,
    ) -> Result<ModelParams, ComputeError> {
        match *recipe {
            WeightRecipe::Version { version } => self.version(version).cloned(),
            WeightRecipe::Blend {
                stale,
                latest,
                stale_weight,
            } => {
                if !(0.0..=1.0).contains(&stale_weight) {
                    return Err(ComputeError(format!(
                        "blend weight σ = {stale_weight} of {recipe} is outside [0, 1]"
                    )));
                }
                let stale_set = self.version(stale)?;
                let latest_set = self.version(latest)?;
                Ok(blend(stale_set, latest_set, stale_weight))
            }
            WeightRecipe::Predict {
                base,
                horizon,
                method,
            } => {
                let key = WeightKey::Predicted {
                    base,
                    horizon,
                    method,
                };
                if let Some(set) = self.predicted.get(&key) {
                    return Ok(set.clone());
                }
                if pass == Pass::Backward {
                    return Err(ComputeError(format!(
                        "backward reads {recipe}, which no forward built (or it was released)"
                    )));
                }
                if base != self.live_version {
                    return Err(ComputeError(format!(
                        "prediction {recipe} must start from the live version, which is {}",
                        self.live_version
                    )));
                }
                let set = predict(&self.live, optimizer, recipe)?;
                self.predicted.insert(key, set.clone());
                Ok(set)
            }
        }
    }

    /// The mean of the weight sets `recipes` name (each counted as often as it is named), as
    /// a running blend: exact where every recipe names the same weights.
    pub(crate) fn mean(
        &mut self,
        recipes: &[WeightRecipe],
        optimizer: &Optimizer,
    ) -> Result<ModelParams, ComputeError> {
        let mut mean: Option<ModelParams> = None;
        for (count, recipe) in recipes.iter().enumerate() {
            let set = self.weights(recipe, Pass::Backward, optimizer)?;
            mean = Some(match mean {
                // mean_{k+1} = mean_k + (x − mean_k) / (k + 1) = blend(mean_k, x, k / (k + 1)).
                Some(mean) => blend(&mean, &set, count as f64 / (count + 1) as f64),
                None => set,
            });
        }
        mean.ok_or_else(|| ComputeError("the mean of no weight sets".into()))
    }
}

/// `latest + σ (stale − latest)` per tensor; σ = 1 and σ = 0 give `stale` and `latest`
/// exactly (shared tensors, no arithmetic).
pub(crate) fn blend(stale: &ModelParams, latest: &ModelParams, sigma: f64) -> ModelParams {
    if sigma == 1.0 {
        return stale.clone();
    }
    if sigma == 0.0 {
        return latest.clone();
    }
    stale
        .iter()
        .zip(latest)
        .map(|(s, l)| {
            l.map(|i, lt| {
                lt.clone()
                    .add(s.tensors[i].clone().sub(lt.clone()).mul_scalar(sigma))
            })
        })
        .collect()
}

/// θ̂ = θ − c·b with c from the recipe's method and b the SGD momentum buffer (zero before the
/// first step).
fn predict(
    live: &ModelParams,
    optimizer: &Optimizer,
    recipe: &WeightRecipe,
) -> Result<ModelParams, ComputeError> {
    let WeightRecipe::Predict {
        horizon, method, ..
    } = *recipe
    else {
        unreachable!("predict() called with {recipe}");
    };
    let config = optimizer.config();
    let momentum = match config.momentum() {
        Some(m) if m > 0.0 => m,
        Some(_) => {
            return Err(ComputeError(format!(
                "{recipe} needs SGD momentum, but the optimizer has momentum 0 (no buffer)"
            )));
        }
        None => {
            return Err(ComputeError(format!(
                "{recipe} needs an SGD momentum buffer; Adam has none (use SGD with momentum)"
            )));
        }
    };
    // The optimizer's own next updates with no new gradient (weight decay, Nesterov and the
    // learning-rate schedule included), or SpecTrain's linear extrapolation.
    let steps = method.optimizer_steps(horizon);
    let c = method.coefficient(optimizer.next_lr(), momentum, horizon);
    Ok(live
        .iter()
        .enumerate()
        .map(|(b, p)| {
            p.map(|i, theta| match (optimizer.momentum_buffer(b, i), steps) {
                (None, _) => theta.clone(),
                (Some(_), Some(steps)) => optimizer.rollout(b, i, theta, steps),
                (Some(buffer), None) => theta.clone().sub(buffer.clone().mul_scalar(c)),
            })
        })
        .collect())
}
