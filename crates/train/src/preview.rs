//! What a run says about itself before it starts: one line naming what will train, and the
//! warnings about choices that are valid but cost time or change what the algorithm does.
//!
//! They are facts about a [`ValidConfig`], so they live beside it rather than in the CLI: every
//! front end (the `train` command, a library user) words them the same way, and the tests check
//! them without starting a process.

use std::fmt;

use timeprest_nn::{GptConfig, MlpConfig};
use timeprest_schedule::ScheduleKind;

use crate::config::ValidConfig;

/// A valid choice a run should be warned about before it starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConfigWarning {
    /// nF1B with W > N + 1: the version difference v exceeds 1, so the updates split into
    /// several sequences (docs/algorithms.md §3.5).
    VersionDifferenceAboveOne {
        /// W.
        num_stages: u32,
        /// N.
        num_microbatches: u32,
    },
    /// 1F1B with double-buffered weights and N < W - 1: a mini-batch's forwards wait for the
    /// update two mini-batches back, which adds bubbles (docs/algorithms.md §2.9).
    DoubleBufferedBubbles {
        /// W.
        num_stages: u32,
        /// N.
        num_microbatches: u32,
    },
}

impl fmt::Display for ConfigWarning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            ConfigWarning::VersionDifferenceAboveOne {
                num_stages,
                num_microbatches,
            } => write!(
                f,
                "W={num_stages} > N+1={}: version difference v > 1 on nF1B, the updates split \
                 into sequences (`timeprest analyze version-difference`); --microbatches {} or \
                 more avoids it",
                num_microbatches + 1,
                num_stages - 1
            ),
            ConfigWarning::DoubleBufferedBubbles {
                num_stages,
                num_microbatches,
            } => write!(
                f,
                "N={num_microbatches} < W-1={}: on 1f1b-2bw a mini-batch's forwards wait for the \
                 update two mini-batches back, which adds bubbles; PipeDream-2BW accumulates \
                 over N >= W-1 micro-batches (--microbatches {})",
                num_stages - 1,
                num_stages - 1
            ),
        }
    }
}

impl ValidConfig {
    /// One line naming what will train: the model and its sizes, the data, the policy on its
    /// schedule, W, N, M and the epochs.
    pub fn headline(&self) -> String {
        let model = &self.model;
        let sizes = if model.is_language_model() {
            let layers = model
                .depth
                .first()
                .copied()
                .unwrap_or(GptConfig::DEFAULT_LAYERS);
            format!(
                "T={} d={} heads={} layers={layers}",
                self.data.seq_len, model.embed_dim, model.heads
            )
        } else if model.name == MlpConfig::NAME {
            format!("hidden {:?}", model.hidden)
        } else {
            format!("width {}", model.width)
        };
        format!(
            "training {} ({sizes}) on {} with policy {} on schedule {}: W={} N={} M={} for {} \
             epochs",
            model.name,
            self.data.dataset,
            self.pipeline.policy,
            self.schedule_kind(),
            self.pipeline.num_stages,
            self.pipeline.num_microbatches,
            self.optimisation.batch_size,
            self.optimisation.epochs
        )
    }

    /// The warnings this run deserves, in the order they should be printed.
    pub fn warnings(&self) -> Vec<ConfigWarning> {
        let (num_stages, num_microbatches) =
            (self.pipeline.num_stages, self.pipeline.num_microbatches);
        let schedule = self.schedule_kind();
        let mut warnings = Vec::new();
        if schedule.is_nf1b() && num_stages > num_microbatches + 1 {
            warnings.push(ConfigWarning::VersionDifferenceAboveOne {
                num_stages,
                num_microbatches,
            });
        }
        if schedule == ScheduleKind::OneFOneBDoubleBuffered && num_microbatches + 1 < num_stages {
            warnings.push(ConfigWarning::DoubleBufferedBubbles {
                num_stages,
                num_microbatches,
            });
        }
        warnings
    }
}

#[cfg(test)]
mod tests {
    use timeprest_policy::PolicyKind;

    use super::*;
    use crate::config::TrainConfig;

    fn config(policy: PolicyKind, num_stages: u32, num_microbatches: u32) -> ValidConfig {
        let mut config = TrainConfig::default();
        config.pipeline.policy = policy;
        config.pipeline.num_stages = num_stages;
        config.pipeline.num_microbatches = num_microbatches;
        config.validate().expect("a valid configuration")
    }

    #[test]
    fn nf1b_warns_exactly_when_w_exceeds_n_plus_one() {
        assert!(config(PolicyKind::Timeprest, 3, 2).warnings().is_empty());
        let warnings = config(PolicyKind::Timeprest, 4, 2).warnings();
        assert_eq!(
            warnings,
            [ConfigWarning::VersionDifferenceAboveOne {
                num_stages: 4,
                num_microbatches: 2
            }]
        );
        let text = warnings[0].to_string();
        assert!(text.starts_with("W=4 > N+1=3"), "{text}");
        assert!(text.contains("--microbatches 3 or more"), "{text}");
        // The same W and N on a schedule without nF1B's version difference: no warning.
        assert!(config(PolicyKind::Gpipe, 4, 2).warnings().is_empty());
    }

    #[test]
    fn double_buffered_1f1b_warns_when_n_is_below_w_minus_one() {
        assert!(config(PolicyKind::Pipedream2bw, 3, 2).warnings().is_empty());
        let warnings = config(PolicyKind::Pipedream2bw, 4, 2).warnings();
        assert_eq!(
            warnings,
            [ConfigWarning::DoubleBufferedBubbles {
                num_stages: 4,
                num_microbatches: 2
            }]
        );
        assert!(warnings[0].to_string().contains("--microbatches 3"));
    }

    #[test]
    fn the_headline_names_the_model_sizes_policy_schedule_and_shape() {
        let line = config(PolicyKind::Timeprest, 2, 4).headline();
        for part in [
            "training mlp (hidden ",
            "policy timeprest",
            "schedule nf1b",
            "W=2 N=4",
        ] {
            assert!(line.contains(part), "{part:?} not in {line:?}");
        }
    }
}
