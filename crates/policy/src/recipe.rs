//! Weight recipes: the answer to "which weights does this pass read?", as plain data.
//!
//! A stage's weights after k optimizer updates are *version* k. Most passes read one stored
//! version; I-TiMePReSt's backward reads a blend of a stale and the latest version; NWPT's
//! passes read a prediction extrapolated from a version and the optimizer's momentum. The
//! recipe names what to build; the stage compute (which owns the tensors) builds it. Because
//! recipes are data, the simulator can trace them without tensors and the runtime can log them.

use std::fmt;

use serde::{Deserialize, Serialize};

/// A weight version of one stage: the number of optimizer updates applied to it.
pub type Version = u64;

/// How NWPT-style prediction extrapolates future weights from version `base`
/// (`docs/algorithms.md` §3.9, where the horizon is written h; here b is the SGD momentum buffer
/// `b ← μ b + g`, η the learning rate, μ the momentum, s the horizon).
#[derive(
    Clone,
    Copy,
    Debug,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    Serialize,
    Deserialize,
    clap::ValueEnum,
)]
#[serde(rename_all = "kebab-case")]
pub enum Prediction {
    /// One-step Nesterov look-ahead: θ̂ = θ − η μ b (the horizon only switches it on or off).
    /// The stage computes it as the optimizer's next update with no data gradient, so weight
    /// decay, Nesterov momentum and the schedule's rate are accounted for.
    Nag,
    /// Multi-step NAG (FTPipe's MSNAG): θ̂ = θ − η (μ − μ^{s+1}) / (1 − μ) b, computed as the
    /// optimizer's next s updates with no data gradient (as for `Nag`).
    Msnag,
    /// SpecTrain's linear extrapolation with the smoothed gradient v̄ = (1 − μ) b:
    /// θ̂ = θ − s η v̄.
    Spectrain,
}

impl Prediction {
    /// How many of the optimizer's own next updates, with no data gradient, the prediction
    /// rolls out at `horizon`: one for `Nag`, the horizon for `Msnag`; `None` for `Spectrain`,
    /// a linear extrapolation by definition ([`Prediction::coefficient`]).
    pub fn optimizer_steps(self, horizon: u32) -> Option<u32> {
        match self {
            Prediction::Nag => Some(1),
            Prediction::Msnag => Some(horizon),
            Prediction::Spectrain => None,
        }
    }

    /// The coefficient c of θ̂ = θ − c · b for learning rate `lr`, momentum `momentum` and
    /// horizon `horizon`. Zero horizon means no prediction (c = 0). Stages use it for
    /// `Spectrain`; for `Nag` and `Msnag` it is the closed form of their rollout
    /// ([`Prediction::optimizer_steps`]) under plain SGD at a constant rate.
    pub fn coefficient(self, lr: f64, momentum: f64, horizon: u32) -> f64 {
        if horizon == 0 {
            return 0.0;
        }
        match self {
            Prediction::Nag => lr * momentum,
            Prediction::Msnag => {
                // Σ_{k=1..s} μ^k, written as a sum so that μ = 1 needs no special case.
                lr * (1..=horizon).map(|k| momentum.powi(k as i32)).sum::<f64>()
            }
            Prediction::Spectrain => horizon as f64 * lr * (1.0 - momentum),
        }
    }
}

/// Which weights one pass of one stage reads.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "kind")]
pub enum WeightRecipe {
    /// Exactly the stored version.
    Version {
        /// The version read.
        version: Version,
    },
    /// I-TiMePReSt's intermediate weight θ = θ_latest + σ (θ_stale − θ_latest)
    /// (`docs/algorithms.md` §3.8), with σ = `stale_weight` ∈ [0, 1].
    Blend {
        /// The stale version (the one the forward read).
        stale: Version,
        /// The latest version.
        latest: Version,
        /// σ(d), the significance of the stale weight.
        stale_weight: f64,
    },
    /// NWPT's predicted weights θ̂ = θ_base − coefficient · b_base (`docs/algorithms.md` §3.9),
    /// built when the forward reads it (then `base` is the live version) and kept for the
    /// matching backward.
    Predict {
        /// The version extrapolated from.
        base: Version,
        /// Prediction horizon s (updates to look ahead); never 0 (that is `Version`).
        horizon: u32,
        /// The formula.
        method: Prediction,
    },
}

impl WeightRecipe {
    /// Read exactly `version`.
    pub fn version(version: Version) -> Self {
        WeightRecipe::Version { version }
    }

    /// The version this recipe is anchored on: the version read, the stale side of a blend, or
    /// the base of a prediction. Staleness d is measured from it.
    pub fn anchor(&self) -> Version {
        match *self {
            WeightRecipe::Version { version } => version,
            WeightRecipe::Blend { stale, .. } => stale,
            WeightRecipe::Predict { base, .. } => base,
        }
    }

    /// The stored weight sets this recipe needs to exist when it is built.
    pub fn needs(&self) -> Vec<WeightKey> {
        match *self {
            WeightRecipe::Version { version } => vec![WeightKey::Version(version)],
            WeightRecipe::Blend { stale, latest, .. } => {
                vec![WeightKey::Version(stale), WeightKey::Version(latest)]
            }
            WeightRecipe::Predict {
                base,
                horizon,
                method,
            } => {
                vec![WeightKey::Predicted {
                    base,
                    horizon,
                    method,
                }]
            }
        }
    }
}

impl WeightRecipe {
    /// The same recipe with every version moved up by `offset` (plans count versions from the
    /// start of their schedule; the runtime shifts them by the updates already applied).
    pub fn shifted(self, offset: Version) -> Self {
        match self {
            WeightRecipe::Version { version } => WeightRecipe::version(version + offset),
            WeightRecipe::Blend {
                stale,
                latest,
                stale_weight,
            } => WeightRecipe::Blend {
                stale: stale + offset,
                latest: latest + offset,
                stale_weight,
            },
            WeightRecipe::Predict {
                base,
                horizon,
                method,
            } => WeightRecipe::Predict {
                base: base + offset,
                horizon,
                method,
            },
        }
    }
}

impl WeightKey {
    /// The same key with its version moved up by `offset` (see [`WeightRecipe::shifted`]).
    pub fn shifted(self, offset: Version) -> Self {
        match self {
            WeightKey::Version(version) => WeightKey::Version(version + offset),
            WeightKey::Predicted {
                base,
                horizon,
                method,
            } => WeightKey::Predicted {
                base: base + offset,
                horizon,
                method,
            },
        }
    }
}

impl fmt::Display for WeightRecipe {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            WeightRecipe::Version { version } => write!(f, "v{version}"),
            WeightRecipe::Blend {
                stale,
                latest,
                stale_weight,
            } => {
                write!(f, "blend(v{stale}*{stale_weight:.3}+v{latest})")
            }
            WeightRecipe::Predict {
                base,
                horizon,
                method,
            } => {
                write!(f, "predict(v{base},+{horizon},{method:?})")
            }
        }
    }
}

/// A weight set a stage stores: a plain version, or a materialised prediction.
///
/// Stored-version counts (the memory the papers compare) count distinct keys held at once.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "kind")]
pub enum WeightKey {
    /// Version k of the stage's weights.
    Version(Version),
    /// The prediction of `method` with `horizon` from version `base`.
    Predicted {
        /// The version extrapolated from.
        base: Version,
        /// The horizon.
        horizon: u32,
        /// The formula.
        method: Prediction,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn msnag_with_horizon_one_equals_one_step_nag() {
        let (lr, mu) = (0.1, 0.9);
        let nag = Prediction::Nag.coefficient(lr, mu, 1);
        let msnag = Prediction::Msnag.coefficient(lr, mu, 1);
        assert!((nag - msnag).abs() < 1e-15, "{nag} vs {msnag}");
    }

    #[test]
    fn msnag_equals_the_closed_form_geometric_sum() {
        let (lr, mu, s): (f64, f64, i32) = (0.05, 0.9, 4);
        let closed = lr * (mu - mu.powi(s + 1)) / (1.0 - mu);
        assert!((Prediction::Msnag.coefficient(lr, mu, s as u32) - closed).abs() < 1e-12);
    }

    #[test]
    fn zero_horizon_predicts_nothing() {
        for method in [Prediction::Nag, Prediction::Msnag, Prediction::Spectrain] {
            assert_eq!(method.coefficient(0.1, 0.9, 0), 0.0);
        }
    }

    #[test]
    fn anchors_and_needs_name_the_right_versions() {
        let blend = WeightRecipe::Blend {
            stale: 3,
            latest: 5,
            stale_weight: 0.1,
        };
        assert_eq!(blend.anchor(), 3);
        assert_eq!(
            blend.needs(),
            vec![WeightKey::Version(3), WeightKey::Version(5)]
        );
    }
}
