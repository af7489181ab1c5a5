//! The flags that choose among a policy's open choices (`docs/algorithms.md` §6): one set,
//! shared by `train` (and so `compare`) and by `simulate` / `analyze versions`, so that what is
//! traced before a run is what the run does.
//!
//! Each flag is a field of the configuration's pipeline section; [`PolicyOptionArgs::apply`]
//! writes them there, and the train crate's `TrainConfig::check_policy_options` refuses one set
//! for a policy that does not read it.

use clap::Args;
use timeprest_policy::{
    ForwardSource, Horizon, LatestSource, PolicyKind, Prediction, StalenessMeasure, UpdateBase,
    WeightPolicy,
};
use timeprest_train::{PipelineSettings, SignificanceChoice, TrainConfig};

use crate::usage_error;

/// The policy options, as flags.
#[derive(Args, Clone, Debug)]
pub(crate) struct PolicyOptionArgs {
    /// I-TiMePReSt significance σ(d) of the stale weight.
    #[arg(long, value_enum, default_value = "exp")]
    pub(crate) significance: SignificanceChoice,
    /// λ of `--significance exp` (σ = e^{−λd}) and `normalized-exp`.
    #[arg(long, default_value_t = 1.0)]
    pub(crate) lambda: f64,
    /// α of `--significance const` (1 = stash rule, 0 = V-TiMePReSt).
    #[arg(long, default_value_t = 0.5)]
    pub(crate) alpha: f64,
    /// NWPT prediction formula.
    #[arg(long, value_enum, default_value = "nag")]
    pub(crate) prediction: Prediction,
    /// NWPT's horizon, the updates a stage predicts ahead: `stages-remaining` (W − 1 − s, the
    /// updates that land before the backward on 1F1B), `spectrain` (⌊s/2⌋ + W − s − 1) or a
    /// number (the same at every stage).
    #[arg(long, value_name = "HORIZON", default_value = "stages-remaining")]
    pub(crate) horizon: Horizon,
    /// Where V-TiMePReSt's and I-TiMePReSt's forwards read their weights: the stage's `live`
    /// version, or `vertical-sync` (the version stage 0 read when the micro-batch entered).
    #[arg(long, value_enum, default_value = "live")]
    pub(crate) forward_source: ForwardSource,
    /// Which version TiMePReSt's and V-TiMePReSt's backwards read as the latest: the stage's
    /// live version, or the committed one (every stage had applied it when the mini-batch's
    /// backward began at the last stage; differs from live only when W > N + 1).
    #[arg(long, value_enum, default_value = "live")]
    pub(crate) latest_version: LatestSource,
    /// The staleness d I-TiMePReSt's σ(d) reads: each micro-batch's own version `gap`, the
    /// largest or mean gap of its mini-batch, the schedule's version difference v, W − 1, or
    /// `stage-steady` (per stage, the largest gap of its steady-state backwards).
    #[arg(long, value_enum, default_value = "gap")]
    pub(crate) staleness: StalenessMeasure,
    /// Where I-TiMePReSt's optimizer step starts: the `latest` weights, or `intermediate`, the
    /// mean of the blended weights its micro-batches' backwards read.
    #[arg(long, value_enum, default_value = "latest")]
    pub(crate) update_base: UpdateBase,
}

impl PolicyOptionArgs {
    /// Writes every option into `pipeline`.
    pub(crate) fn apply(&self, pipeline: &mut PipelineSettings) {
        let Self {
            significance,
            lambda,
            alpha,
            prediction,
            horizon,
            forward_source,
            latest_version,
            staleness,
            update_base,
        } = self.clone();
        pipeline.significance = significance;
        pipeline.lambda = lambda;
        pipeline.alpha = alpha;
        pipeline.prediction = prediction;
        pipeline.horizon = horizon;
        pipeline.forward_source = forward_source;
        pipeline.latest_version = latest_version;
        pipeline.staleness = staleness;
        pipeline.update_base = update_base;
    }

    /// The weight policy `policy` with these options, for tracing its versions; `None` without
    /// a policy. Usage errors: an option the policy does not read, or options without a policy.
    pub(crate) fn weight_policy(
        &self,
        policy: Option<PolicyKind>,
    ) -> anyhow::Result<Option<WeightPolicy>> {
        let mut config = TrainConfig::default();
        self.apply(&mut config.pipeline);
        let Some(policy) = policy else {
            return if config.pipeline == PipelineSettings::default() {
                Ok(None)
            } else {
                Err(usage_error(
                    "policy options (--significance, --staleness, --update-base, ...) need \
                     --policy",
                ))
            };
        };
        config.pipeline.policy = policy;
        config
            .check_policy_options()
            .map_err(|error| usage_error(error.to_string()))?;
        Ok(Some(WeightPolicy::new(policy, &config.policy_options())))
    }
}
