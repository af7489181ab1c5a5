//! Weight policies: the pure per-pass decisions of every system timeprest implements
//! (`docs/algorithms.md` §3).
//!
//! A policy answers two questions for one stage, given only plain numbers: which weights a
//! forward reads ([`WeightPolicy::forward`]) and which a backward reads
//! ([`WeightPolicy::backward`]), and where an update's optimizer step starts
//! ([`WeightPolicy::update_base`]: the live version, or for I-TiMePReSt on request its
//! intermediate weights). Keeping the
//! policy a pure function of its context is what lets one piece of code drive the simulator's
//! version tracing and the real runtime.
//!
//! | policy          | forward reads               | backward reads                      | default schedule |
//! |-----------------|-----------------------------|-------------------------------------|------------------|
//! | `single`        | live                        | live                                | gpipe (W = 1)    |
//! | `naive`         | live                        | live                                | naive            |
//! | `gpipe`         | live                        | live                                | gpipe            |
//! | `pipedream-flush` | live                      | live                                | 1f1b-flush       |
//! | `pipedream`     | live (stashed)              | the forward's version (stash)       | 1f1b             |
//! | `pipedream-2bw` | double buffer (stashed)     | the forward's version (stash)       | 1f1b-2bw         |
//! | `timeprest`     | vertical-sync tag           | live                                | nf1b             |
//! | `v-timeprest`   | live                        | live                                | nf1b             |
//! | `i-timeprest`   | live (stashed)              | blend σ(d)·stale + (1−σ(d))·latest  | nf1b             |
//! | `nwpt`          | prediction from live        | the same prediction                 | 1f1b             |
//! | `variant1`      | vertical-sync tag (stashed) | the forward's version (stash)       | nf1b             |
//! | `variant2`      | live                        | live                                | 1f1b             |

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use timeprest_schedule::ScheduleKind;

use crate::recipe::{Prediction, Version, WeightRecipe};

/// The systems timeprest implements, by their command-line names.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PolicyKind {
    /// One stage, the reference.
    Single,
    /// Naive model parallelism.
    Naive,
    /// GPipe (fill-drain, synchronous).
    Gpipe,
    /// PipeDream: asynchronous 1F1B with horizontal weight stashing.
    Pipedream,
    /// PipeDream-flush / 1F1B synchronous.
    PipedreamFlush,
    /// PipeDream-2BW: 1F1B over micro-batches, gradients accumulated over a mini-batch, two
    /// weight versions per stage.
    #[serde(rename = "pipedream-2bw")]
    Pipedream2bw,
    /// TiMePReSt: nF1B, vertical sync for forwards, backward on the latest weights.
    Timeprest,
    /// V-TiMePReSt: latest weights in every pass.
    VTimeprest,
    /// I-TiMePReSt: backward on an intermediate of stale and latest weights.
    ITimeprest,
    /// NWPT: forwards and backwards on predicted future weights.
    Nwpt,
    /// TiMePReSt ablation Variant 1: nF1B with vertical sync and weight stashing.
    Variant1,
    /// TiMePReSt ablation Variant 2: 1F1B without stashing.
    Variant2,
}

impl PolicyKind {
    /// Every policy, in help-text order.
    pub const ALL: [PolicyKind; 12] = [
        PolicyKind::Single,
        PolicyKind::Naive,
        PolicyKind::Gpipe,
        PolicyKind::Pipedream,
        PolicyKind::PipedreamFlush,
        PolicyKind::Pipedream2bw,
        PolicyKind::Timeprest,
        PolicyKind::VTimeprest,
        PolicyKind::ITimeprest,
        PolicyKind::Nwpt,
        PolicyKind::Variant1,
        PolicyKind::Variant2,
    ];

    /// The command-line name.
    pub fn name(self) -> &'static str {
        match self {
            PolicyKind::Single => "single",
            PolicyKind::Naive => "naive",
            PolicyKind::Gpipe => "gpipe",
            PolicyKind::Pipedream => "pipedream",
            PolicyKind::PipedreamFlush => "pipedream-flush",
            PolicyKind::Pipedream2bw => "pipedream-2bw",
            PolicyKind::Timeprest => "timeprest",
            PolicyKind::VTimeprest => "v-timeprest",
            PolicyKind::ITimeprest => "i-timeprest",
            PolicyKind::Nwpt => "nwpt",
            PolicyKind::Variant1 => "variant1",
            PolicyKind::Variant2 => "variant2",
        }
    }

    /// The schedule this policy runs on unless told otherwise.
    pub fn default_schedule(self) -> ScheduleKind {
        match self {
            PolicyKind::Single | PolicyKind::Gpipe => ScheduleKind::Gpipe,
            PolicyKind::Naive => ScheduleKind::Naive,
            PolicyKind::PipedreamFlush => ScheduleKind::OneFOneBFlush,
            PolicyKind::Pipedream2bw => ScheduleKind::OneFOneBDoubleBuffered,
            PolicyKind::Pipedream | PolicyKind::Nwpt | PolicyKind::Variant2 => {
                ScheduleKind::OneFOneB
            }
            PolicyKind::Timeprest
            | PolicyKind::VTimeprest
            | PolicyKind::ITimeprest
            | PolicyKind::Variant1 => ScheduleKind::Nf1b,
        }
    }

    /// The schedules this policy makes sense on. Synchronous policies need a flush (otherwise
    /// they would silently be a different system); the asynchronous ones need an asynchronous
    /// schedule (on a flush they would all collapse into the same synchronous training).
    pub fn allowed_schedules(self) -> &'static [ScheduleKind] {
        use ScheduleKind::*;
        match self {
            PolicyKind::Single | PolicyKind::Gpipe | PolicyKind::PipedreamFlush => {
                &[Gpipe, OneFOneBFlush, Naive]
            }
            PolicyKind::Naive => &[Naive],
            // The double buffer is the schedule's dependency rule: the version a forward reads
            // exists only where forwards wait for the update two mini-batches back.
            PolicyKind::Pipedream2bw => &[OneFOneBDoubleBuffered],
            PolicyKind::Pipedream
            | PolicyKind::Timeprest
            | PolicyKind::VTimeprest
            | PolicyKind::ITimeprest
            | PolicyKind::Nwpt
            | PolicyKind::Variant1
            | PolicyKind::Variant2 => &[Nf1b, Nf1bStreamed, OneFOneB],
        }
    }
}

impl fmt::Display for PolicyKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// An unknown policy name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "unknown policy `{0}`; valid policies: single, naive, gpipe, pipedream, pipedream-flush, \
     pipedream-2bw, timeprest, v-timeprest, i-timeprest, nwpt, variant1, variant2"
)]
pub struct UnknownPolicyError(pub String);

impl FromStr for PolicyKind {
    type Err = UnknownPolicyError;

    fn from_str(name: &str) -> Result<Self, Self::Err> {
        let lower = name.to_ascii_lowercase();
        PolicyKind::ALL
            .into_iter()
            .find(|kind| kind.name() == lower)
            .ok_or_else(|| UnknownPolicyError(name.to_string()))
    }
}

/// I-TiMePReSt's significance σ(d) of the stale weight for a staleness of d updates
/// (`docs/algorithms.md` §3.8). σ(0) = 1 for every function, so d = 0 reads exactly the
/// latest = stale weights.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "kind")]
pub enum Significance {
    /// σ(d) = e^{−λ d} (the default, λ = 1).
    Exp {
        /// The decay rate λ.
        lambda: f64,
    },
    /// σ(d) = 2^{−d}.
    Exp2,
    /// σ(d) = 1 / (1 + d).
    Inverse,
    /// σ(d) = α for every d > 0 (α = 1 is the stash rule, α = 0 is V-TiMePReSt).
    Const {
        /// The constant α.
        alpha: f64,
    },
    /// The normalised blend θ^int = (e^{−λd}·θ^stale + θ^latest) / (1 + e^{−λd}), which is the
    /// ordinary blend with σ(d) = e^{−λd} / (1 + e^{−λd}) (at most ½: the latest weights always
    /// weigh at least as much as the stale ones).
    NormalizedExp {
        /// The decay rate λ.
        lambda: f64,
    },
}

impl Significance {
    /// σ(d).
    pub fn of(self, staleness: u64) -> f64 {
        self.at(staleness as f64)
    }

    /// σ(d) for a staleness that may be fractional (a mean over micro-batches).
    pub fn at(self, d: f64) -> f64 {
        if d == 0.0 {
            return 1.0;
        }
        match self {
            Significance::Exp { lambda } => (-lambda * d).exp(),
            Significance::Exp2 => (-d).exp2(),
            Significance::Inverse => 1.0 / (1.0 + d),
            Significance::Const { alpha } => alpha,
            Significance::NormalizedExp { lambda } => {
                let weight = (-lambda * d).exp();
                weight / (1.0 + weight)
            }
        }
    }
}

/// The degree of staleness d that I-TiMePReSt's significance σ(d) reads
/// (`docs/algorithms.md` §6, rows 4 and 5). Whatever it reads, a micro-batch whose forward read
/// the live version (gap 0) gets exactly the live weights.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum StalenessMeasure {
    /// Each micro-batch's own version gap k_s(backward) − k_s(forward).
    #[default]
    Gap,
    /// The largest gap among the micro-batches of the mini-batch at this stage.
    MinibatchMax,
    /// The mean gap over the micro-batches of the mini-batch at this stage.
    MinibatchMean,
    /// The schedule's steady-state version difference v (`docs/algorithms.md` §3.5), the same
    /// for every pass.
    VersionDifference,
    /// W − 1, the same for every pass.
    StagesMinusOne,
    /// A constant per stage: the largest gap any backward at this stage sees in the schedule's
    /// steady state (its middle half of mini-batches, as `analyze versions` reports it); on
    /// 1F1B W − 1 − s.
    StageSteady,
}

/// Where I-TiMePReSt's optimizer step starts (`docs/algorithms.md` §6, row 6). The step's
/// result is always the stage's next live version.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum UpdateBase {
    /// θ_live − η·ḡ: the step starts from the live version, as for every other policy.
    #[default]
    Latest,
    /// mean_j θ^int_j − η·ḡ: the step starts from the mean of the intermediate weights the
    /// mini-batch's micro-batches read in their backwards at this stage (one θ^int when they
    /// all read the same; the live version where every gap is 0).
    Intermediate,
}

/// How far ahead NWPT predicts at a stage. Written `stages-remaining`, `spectrain` or a number
/// (a constant horizon), in flags and files alike.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum Horizon {
    /// s = W − 1 − stage: the number of updates that land before this forward's backward in
    /// asynchronous 1F1B (the last stage predicts nothing).
    #[default]
    StagesRemaining,
    /// SpecTrain's s = ⌊stage/2⌋ + W − stage − 1 (unverified, `docs/algorithms.md` §3.9).
    Spectrain,
    /// The same horizon everywhere.
    Constant(u32),
}

impl FromStr for Horizon {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        match text.trim() {
            "stages-remaining" => Ok(Horizon::StagesRemaining),
            "spectrain" => Ok(Horizon::Spectrain),
            number => number.parse().map(Horizon::Constant).map_err(|_| {
                format!(
                    "`{text}` is not a horizon: stages-remaining, spectrain or a number of updates"
                )
            }),
        }
    }
}

impl TryFrom<String> for Horizon {
    type Error = String;

    fn try_from(text: String) -> Result<Self, String> {
        text.parse()
    }
}

impl fmt::Display for Horizon {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Horizon::StagesRemaining => f.write_str("stages-remaining"),
            Horizon::Spectrain => f.write_str("spectrain"),
            Horizon::Constant(horizon) => write!(f, "{horizon}"),
        }
    }
}

impl From<Horizon> for String {
    fn from(horizon: Horizon) -> String {
        horizon.to_string()
    }
}

impl Horizon {
    /// The horizon at `stage` of a `num_stages` pipeline.
    pub fn at(self, stage: u32, num_stages: u32) -> u32 {
        match self {
            Horizon::StagesRemaining => num_stages - 1 - stage,
            Horizon::Spectrain => stage / 2 + num_stages - stage - 1,
            Horizon::Constant(horizon) => horizon,
        }
    }
}

/// Where a forward's weights come from.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum ForwardSource {
    /// The stage's live version at that moment.
    #[default]
    Live,
    /// Vertical sync: the version stage 0 read when the micro-batch entered the pipeline.
    VerticalSync,
    /// PipeDream-2BW's double buffer: every micro-batch of mini-batch i reads the version the
    /// update of mini-batch i − 2 created (version i − 1 of the epoch; mini-batches 0 and 1 read
    /// the epoch's first version). Only the `1f1b-2bw` schedule makes that version exist in
    /// time, so it is not offered to the other policies.
    #[value(skip)]
    DoubleBuffered,
}

/// Which version counts as "the latest" for a backward that reads the latest weights
/// (TiMePReSt, V-TiMePReSt).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum LatestSource {
    /// The stage's live version when the backward runs.
    #[default]
    Live,
    /// The committed version: the one every stage had already applied when the mini-batch's
    /// backward began at the last stage (`docs/algorithms.md` §3.4). Equal to the live
    /// version when W ≤ N + 1.
    Committed,
}

/// Where a backward's weights come from.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "kind")]
pub enum BackwardSource {
    /// The stage's live (latest) version.
    Live,
    /// The committed version of the mini-batch ([`LatestSource::Committed`]).
    Committed,
    /// Exactly what the forward read (horizontal weight stashing).
    Stash,
    /// I-TiMePReSt's intermediate weight with this significance function.
    Intermediate(Significance),
}

/// Everything a policy may look at when a forward is about to run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ForwardContext {
    /// The stage s.
    pub stage: u32,
    /// W.
    pub num_stages: u32,
    /// The stage's live version k_s now.
    pub live: Version,
    /// The version stage 0 read for this micro-batch (its vertical-sync tag); equal to `live`
    /// at stage 0.
    pub tag: Version,
    /// The micro-batch's mini-batch, counted from the start of the schedule (whose first
    /// version is 0).
    pub minibatch: u32,
}

/// Everything a policy may look at when a backward of one micro-batch is about to run.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BackwardContext {
    /// The stage s.
    pub stage: u32,
    /// W.
    pub num_stages: u32,
    /// The stage's live version now.
    pub live: Version,
    /// What this micro-batch's forward read at this stage.
    pub forward: WeightRecipe,
    /// The largest version gap among the micro-batches of this mini-batch whose forwards ran at
    /// this stage before the mini-batch's first backward there (all N on nF1B, streamed or
    /// not).
    pub minibatch_max_gap: u64,
    /// The mean version gap over the same micro-batches.
    pub minibatch_mean_gap: f64,
    /// The schedule's steady-state version difference v.
    pub version_difference: u32,
    /// The largest gap of this stage's steady-state backwards ([`StalenessMeasure::StageSteady`]).
    pub stage_steady_gap: u64,
    /// The mini-batch's committed version at this stage: the lowest number of updates any
    /// stage had finished when the mini-batch's backward began at the last stage (at most
    /// `live`).
    pub committed: Version,
}

impl BackwardContext {
    /// The degree of staleness d = k_s(at backward) − k_s(version the forward read).
    pub fn staleness(&self) -> u64 {
        self.live.saturating_sub(self.forward.anchor())
    }
}

/// The configurable choices of the policies (`docs/algorithms.md` §6).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct PolicyOptions {
    /// I-TiMePReSt's significance function (`docs/algorithms.md` §6, row 3).
    pub significance: Significance,
    /// NWPT's prediction formula (`docs/algorithms.md` §6, row 16).
    pub prediction: Prediction,
    /// NWPT's horizon rule (`docs/algorithms.md` §6, row 17).
    pub horizon: Horizon,
    /// V-TiMePReSt's and I-TiMePReSt's forward source (`docs/algorithms.md` §6, rows 2 and 7).
    pub forward: ForwardSource,
    /// TiMePReSt's and V-TiMePReSt's latest version: live or committed.
    pub latest: LatestSource,
    /// The staleness I-TiMePReSt's significance reads (`docs/algorithms.md` §6, rows 4–5).
    pub staleness: StalenessMeasure,
    /// Where I-TiMePReSt's optimizer step starts (`docs/algorithms.md` §6, row 6).
    #[serde(default)]
    pub update_base: UpdateBase,
}

impl Default for PolicyOptions {
    fn default() -> Self {
        Self {
            significance: Significance::Exp { lambda: 1.0 },
            prediction: Prediction::Nag,
            horizon: Horizon::StagesRemaining,
            forward: ForwardSource::Live,
            latest: LatestSource::Live,
            staleness: StalenessMeasure::Gap,
            update_base: UpdateBase::Latest,
        }
    }
}

/// The backward source of a policy whose backward reads "the latest" weights.
fn latest(source: LatestSource) -> BackwardSource {
    match source {
        LatestSource::Live => BackwardSource::Live,
        LatestSource::Committed => BackwardSource::Committed,
    }
}

/// A weight policy, built from a [`PolicyKind`] and [`PolicyOptions`].
///
/// It is a pure value: the same context always gives the same recipe.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct WeightPolicy {
    /// Which system this is.
    pub kind: PolicyKind,
    /// Forward rule.
    pub forward_source: ForwardSource,
    /// Backward rule.
    pub backward_source: BackwardSource,
    /// `Some` for NWPT: forwards (and their backwards) read predicted weights.
    pub prediction: Option<(Prediction, Horizon)>,
    /// The staleness an intermediate backward's significance reads.
    #[serde(default)]
    pub staleness: StalenessMeasure,
    /// Where the optimizer step starts.
    #[serde(default)]
    pub update_base: UpdateBase,
}

impl WeightPolicy {
    /// The policy `kind` with the choices in `options`.
    pub fn new(kind: PolicyKind, options: &PolicyOptions) -> Self {
        let (forward_source, backward_source, prediction) = match kind {
            PolicyKind::Single
            | PolicyKind::Naive
            | PolicyKind::Gpipe
            | PolicyKind::PipedreamFlush
            | PolicyKind::Variant2 => (ForwardSource::Live, BackwardSource::Live, None),
            PolicyKind::Pipedream => (ForwardSource::Live, BackwardSource::Stash, None),
            PolicyKind::Pipedream2bw => {
                (ForwardSource::DoubleBuffered, BackwardSource::Stash, None)
            }
            PolicyKind::Timeprest => (ForwardSource::VerticalSync, latest(options.latest), None),
            PolicyKind::VTimeprest => (options.forward, latest(options.latest), None),
            PolicyKind::ITimeprest => (
                options.forward,
                BackwardSource::Intermediate(options.significance),
                None,
            ),
            PolicyKind::Nwpt => (
                ForwardSource::Live,
                BackwardSource::Stash,
                Some((options.prediction, options.horizon)),
            ),
            PolicyKind::Variant1 => (ForwardSource::VerticalSync, BackwardSource::Stash, None),
        };
        Self {
            kind,
            forward_source,
            backward_source,
            prediction,
            staleness: options.staleness,
            update_base: match kind {
                PolicyKind::ITimeprest => options.update_base,
                _ => UpdateBase::Latest,
            },
        }
    }

    /// Where the update of a mini-batch starts, given what its backwards read at this stage
    /// (one recipe per micro-batch, in order) and the live version: the mean of the returned
    /// recipes, or the live version when the list is empty.
    pub fn update_base(&self, backwards: &[WeightRecipe], live: Version) -> Vec<WeightRecipe> {
        let from_live = backwards
            .iter()
            .all(|recipe| *recipe == WeightRecipe::version(live));
        match self.update_base {
            UpdateBase::Intermediate if !from_live => backwards.to_vec(),
            UpdateBase::Intermediate | UpdateBase::Latest => Vec::new(),
        }
    }

    /// The weights a forward reads.
    pub fn forward(&self, ctx: &ForwardContext) -> WeightRecipe {
        let version = match self.forward_source {
            ForwardSource::Live => ctx.live,
            ForwardSource::VerticalSync => ctx.tag,
            ForwardSource::DoubleBuffered => {
                let version = Version::from(ctx.minibatch.saturating_sub(1));
                assert!(
                    version <= ctx.live,
                    "double-buffered forward of mini-batch {} at stage {} needs version {version} \
                     but the stage is at {}: the schedule must be 1f1b-2bw",
                    ctx.minibatch,
                    ctx.stage,
                    ctx.live
                );
                version
            }
        };
        match self.prediction {
            Some((method, horizon)) => {
                let horizon = horizon.at(ctx.stage, ctx.num_stages);
                if horizon == 0 {
                    WeightRecipe::version(version)
                } else {
                    WeightRecipe::Predict {
                        base: version,
                        horizon,
                        method,
                    }
                }
            }
            None => WeightRecipe::version(version),
        }
    }

    /// The weights a backward of one micro-batch reads.
    pub fn backward(&self, ctx: &BackwardContext) -> WeightRecipe {
        match self.backward_source {
            BackwardSource::Live => WeightRecipe::version(ctx.live),
            BackwardSource::Committed => {
                assert!(
                    ctx.committed <= ctx.live,
                    "committed version {} is past stage {}'s live version {}",
                    ctx.committed,
                    ctx.stage,
                    ctx.live
                );
                WeightRecipe::version(ctx.committed)
            }
            BackwardSource::Stash => ctx.forward,
            BackwardSource::Intermediate(significance) => {
                let stale = ctx.forward.anchor();
                let gap = ctx.staleness();
                if gap == 0 {
                    // σ(0) = 1 and stale = latest: exactly the latest weights, bit for bit.
                    WeightRecipe::version(ctx.live)
                } else {
                    // σ = 1 and σ = 0 name one stored version exactly; saying so (rather than
                    // blending with a zero weight) lets a backward reuse the forward's graph
                    // when it reads the forward's weights, as the stash rule's does.
                    let d = match self.staleness {
                        StalenessMeasure::Gap => gap as f64,
                        StalenessMeasure::MinibatchMax => ctx.minibatch_max_gap as f64,
                        StalenessMeasure::MinibatchMean => ctx.minibatch_mean_gap,
                        StalenessMeasure::VersionDifference => f64::from(ctx.version_difference),
                        StalenessMeasure::StagesMinusOne => f64::from(ctx.num_stages - 1),
                        StalenessMeasure::StageSteady => ctx.stage_steady_gap as f64,
                    };
                    match significance.at(d) {
                        1.0 => WeightRecipe::version(stale),
                        0.0 => WeightRecipe::version(ctx.live),
                        stale_weight => WeightRecipe::Blend {
                            stale,
                            latest: ctx.live,
                            stale_weight,
                        },
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {

    #[test]
    fn the_normalised_blend_is_the_ordinary_blend_with_sigma_over_one_plus_sigma() {
        let (stale, latest) = (3.0, -1.0);
        for d in 1..6u64 {
            let weight = (-0.7 * d as f64).exp();
            let sigma = Significance::NormalizedExp { lambda: 0.7 }.of(d);
            let blend = sigma * stale + (1.0 - sigma) * latest;
            let normalised = (weight * stale + latest) / (1.0 + weight);
            assert!((blend - normalised).abs() < 1e-12, "d = {d}");
            assert!(sigma <= 0.5);
        }
        assert_eq!(Significance::NormalizedExp { lambda: 0.7 }.of(0), 1.0);
    }

    #[test]
    fn a_horizon_reads_back_what_it_writes() {
        for horizon in [
            Horizon::StagesRemaining,
            Horizon::Spectrain,
            Horizon::Constant(3),
        ] {
            assert_eq!(horizon.to_string().parse::<Horizon>(), Ok(horizon));
            let json = serde_json::to_string(&horizon).unwrap();
            assert_eq!(serde_json::from_str::<Horizon>(&json).unwrap(), horizon);
        }
        assert_eq!(Horizon::Spectrain.at(2, 4), 2);
        assert!("soon".parse::<Horizon>().unwrap_err().contains("spectrain"));
    }
    use super::*;

    fn backward_ctx(live: Version, forward: Version) -> BackwardContext {
        BackwardContext {
            stage: 0,
            num_stages: 4,
            live,
            forward: WeightRecipe::version(forward),
            minibatch_max_gap: live - forward,
            minibatch_mean_gap: (live - forward) as f64,
            version_difference: 1,
            stage_steady_gap: 2,
            committed: forward,
        }
    }

    #[test]
    fn names_round_trip_and_unknown_names_list_the_valid_ones() {
        for kind in PolicyKind::ALL {
            assert_eq!(kind.name().parse::<PolicyKind>().unwrap(), kind);
        }
        let err = "pipedreams".parse::<PolicyKind>().unwrap_err().to_string();
        assert!(
            err.contains("pipedreams") && err.contains("i-timeprest"),
            "{err}"
        );
    }

    #[test]
    fn file_names_are_the_command_line_names() {
        for kind in PolicyKind::ALL {
            assert_eq!(serde_json::to_value(kind).unwrap(), kind.name());
        }
    }

    #[test]
    fn every_default_schedule_is_allowed() {
        for kind in PolicyKind::ALL {
            assert!(
                kind.allowed_schedules().contains(&kind.default_schedule()),
                "{kind}"
            );
        }
    }

    #[test]
    fn timeprest_forwards_read_the_tag_and_backwards_the_live_version() {
        let policy = WeightPolicy::new(PolicyKind::Timeprest, &PolicyOptions::default());
        let fwd = ForwardContext {
            stage: 2,
            num_stages: 4,
            live: 5,
            tag: 3,
            minibatch: 4,
        };
        assert_eq!(policy.forward(&fwd), WeightRecipe::version(3));
        assert_eq!(
            policy.backward(&backward_ctx(6, 3)),
            WeightRecipe::version(6)
        );
    }

    #[test]
    fn timeprest_reads_the_committed_version_when_asked() {
        let committed = WeightPolicy::new(
            PolicyKind::Timeprest,
            &PolicyOptions {
                latest: LatestSource::Committed,
                ..PolicyOptions::default()
            },
        );
        // backward_ctx: live 6, forward (and committed) 3.
        assert_eq!(
            committed.backward(&backward_ctx(6, 3)),
            WeightRecipe::version(3)
        );
        let live = WeightPolicy::new(PolicyKind::Timeprest, &PolicyOptions::default());
        assert_eq!(live.backward(&backward_ctx(6, 3)), WeightRecipe::version(6));
    }

    #[test]
    fn a_significance_of_one_or_zero_names_the_stale_or_latest_version_itself() {
        let with_alpha = |alpha| {
            WeightPolicy::new(
                PolicyKind::ITimeprest,
                &PolicyOptions {
                    significance: Significance::Const { alpha },
                    ..PolicyOptions::default()
                },
            )
        };
        let ctx = backward_ctx(5, 3);
        assert_eq!(with_alpha(1.0).backward(&ctx), WeightRecipe::version(3));
        assert_eq!(with_alpha(0.0).backward(&ctx), WeightRecipe::version(5));
        assert!(matches!(
            with_alpha(0.5).backward(&ctx),
            WeightRecipe::Blend {
                stale: 3,
                latest: 5,
                ..
            }
        ));
    }

    #[test]
    fn intermediate_blends_by_exponential_significance_and_is_exact_at_zero_staleness() {
        let policy = WeightPolicy::new(PolicyKind::ITimeprest, &PolicyOptions::default());
        match policy.backward(&backward_ctx(5, 3)) {
            WeightRecipe::Blend {
                stale: 3,
                latest: 5,
                stale_weight,
            } => {
                assert!((stale_weight - (-2.0f64).exp()).abs() < 1e-15)
            }
            other => panic!("expected a blend, got {other}"),
        }
        assert_eq!(
            policy.backward(&backward_ctx(4, 4)),
            WeightRecipe::version(4)
        );
    }

    #[test]
    fn the_staleness_measure_chooses_the_d_sigma_reads() {
        let with = |staleness| {
            WeightPolicy::new(
                PolicyKind::ITimeprest,
                &PolicyOptions {
                    staleness,
                    ..PolicyOptions::default()
                },
            )
        };
        let ctx = BackwardContext {
            minibatch_max_gap: 3,
            minibatch_mean_gap: 1.5,
            version_difference: 2,
            ..backward_ctx(5, 4)
        };
        let sigma = |staleness| match with(staleness).backward(&ctx) {
            WeightRecipe::Blend { stale_weight, .. } => stale_weight,
            other => panic!("expected a blend, got {other}"),
        };
        let e = |d: f64| (-d).exp();
        assert_eq!(sigma(StalenessMeasure::Gap), e(1.0));
        assert_eq!(sigma(StalenessMeasure::MinibatchMax), e(3.0));
        assert_eq!(sigma(StalenessMeasure::MinibatchMean), e(1.5));
        assert_eq!(sigma(StalenessMeasure::VersionDifference), e(2.0));
        assert_eq!(sigma(StalenessMeasure::StagesMinusOne), e(3.0));
        assert_eq!(sigma(StalenessMeasure::StageSteady), e(2.0));
        // A micro-batch whose forward read the live version reads it, whatever the measure.
        let fresh = BackwardContext {
            minibatch_max_gap: 3,
            ..backward_ctx(5, 5)
        };
        let max = with(StalenessMeasure::MinibatchMax);
        assert_eq!(max.backward(&fresh), WeightRecipe::version(5));
    }

    #[test]
    fn significance_functions_match_their_formulas() {
        assert_eq!(Significance::Exp2.of(3), 0.125);
        assert_eq!(Significance::Inverse.of(3), 0.25);
        assert_eq!(Significance::Const { alpha: 0.3 }.of(2), 0.3);
        for f in [
            Significance::Exp { lambda: 0.5 },
            Significance::Exp2,
            Significance::Inverse,
        ] {
            assert_eq!(f.of(0), 1.0);
        }
    }

    #[test]
    fn nwpt_predicts_w_minus_one_minus_s_ahead_and_the_last_stage_not_at_all() {
        let policy = WeightPolicy::new(PolicyKind::Nwpt, &PolicyOptions::default());
        let at = |stage| {
            policy.forward(&ForwardContext {
                stage,
                num_stages: 3,
                live: 7,
                tag: 0,
                minibatch: 8,
            })
        };
        assert_eq!(
            at(0),
            WeightRecipe::Predict {
                base: 7,
                horizon: 2,
                method: Prediction::Nag
            }
        );
        assert_eq!(at(2), WeightRecipe::version(7));
        let forward = at(1);
        let ctx = BackwardContext {
            stage: 1,
            num_stages: 3,
            live: 8,
            forward,
            minibatch_max_gap: 1,
            minibatch_mean_gap: 1.0,
            version_difference: 1,
            stage_steady_gap: 1,
            committed: 7,
        };
        assert_eq!(
            policy.backward(&ctx),
            forward,
            "backward reuses the forward's prediction"
        );
    }

    #[test]
    fn pipedream_2bw_forwards_read_the_version_of_the_update_two_minibatches_back() {
        let policy = WeightPolicy::new(PolicyKind::Pipedream2bw, &PolicyOptions::default());
        let at = |minibatch, live| {
            policy.forward(&ForwardContext {
                stage: 1,
                num_stages: 4,
                live,
                tag: 0,
                minibatch,
            })
        };
        assert_eq!(at(0, 0), WeightRecipe::version(0));
        assert_eq!(at(1, 0), WeightRecipe::version(0));
        // Whether or not update 4 has landed yet, mini-batch 5 reads version 4.
        assert_eq!(at(5, 4), WeightRecipe::version(4));
        assert_eq!(at(5, 5), WeightRecipe::version(4));
        assert_eq!(
            policy.backward(&backward_ctx(5, 4)),
            WeightRecipe::version(4),
            "the backward reads the stash"
        );
    }

    #[test]
    #[should_panic(expected = "the schedule must be 1f1b-2bw")]
    fn a_double_buffered_forward_before_its_version_exists_is_a_broken_invariant() {
        let policy = WeightPolicy::new(PolicyKind::Pipedream2bw, &PolicyOptions::default());
        policy.forward(&ForwardContext {
            stage: 0,
            num_stages: 2,
            live: 2,
            tag: 0,
            minibatch: 5,
        });
    }

    #[test]
    fn pipedream_stashes_and_v_timeprest_reads_live() {
        let options = PolicyOptions::default();
        let pipedream = WeightPolicy::new(PolicyKind::Pipedream, &options);
        let v = WeightPolicy::new(PolicyKind::VTimeprest, &options);
        assert_eq!(
            pipedream.backward(&backward_ctx(9, 6)),
            WeightRecipe::version(6)
        );
        assert_eq!(v.backward(&backward_ctx(9, 6)), WeightRecipe::version(9));
        let fwd = ForwardContext {
            stage: 1,
            num_stages: 4,
            live: 5,
            tag: 2,
            minibatch: 6,
        };
        assert_eq!(v.forward(&fwd), WeightRecipe::version(5));
    }
}
