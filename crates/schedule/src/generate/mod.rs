//! Schedule generators: pure functions from a family and a pipeline shape to a [`Schedule`].
//!
//! [`generate()`] is the one entry point. It checks the user's configuration (so that every
//! problem is reported as a [`ScheduleError`] naming the bad value), then hands it to the
//! family's file. Every family is a policy for the shared unit-slot engine (`engine.rs`): the
//! static-program families (naive, GPipe, 1F1B-flush) list each stage's actions and let the
//! engine place them as early as their dependencies allow; the greedy families (1F1B, nF1B,
//! 1F1B-2BW) decide slot by slot with backward priority and the in-flight cap; streamed nF1B is
//! nF1B's greedy order run as a fixed program. All indices are 0-based.

mod engine;
mod gpipe;
mod naive;
mod nf1b;
mod one_f_one_b;
mod one_f_one_b_2bw;
mod one_f_one_b_flush;

use crate::action::ActionKind;
use crate::error::ScheduleError;
use crate::index::ActionIndex;
use crate::schedule::{MAX_BACKWARD_SLOTS, Schedule, ScheduleConfig, ScheduleKind};

/// The largest supported number of actions in one schedule: slots are `u32`.
pub const MAX_ACTIONS: u64 = u32::MAX as u64;

/// Generates the `kind` schedule for `config`.
///
/// The result's `config` is the one actually scheduled: equal to `config` except for `1f1b` with
/// N > 1, which schedules each micro-batch as its own mini-batch (N = 1 and N times as many
/// mini-batches; see the module documentation of `one_f_one_b.rs` and `docs/algorithms.md`
/// §2.4).
///
/// # Errors
/// [`ScheduleError`] when W, N or the number of mini-batches is zero, when the in-flight cap is
/// zero at some stage (1F1B, nF1B and 1F1B-2BW only, the families that use it), or when the schedule would
/// have more than [`MAX_ACTIONS`] actions.
///
/// # Example
/// ```
/// use timeprest_schedule::{generate, render, ScheduleConfig, ScheduleKind};
///
/// let schedule = generate(ScheduleKind::Nf1b, &ScheduleConfig::new(2, 3, 5)).unwrap();
/// let grid = render::grid(&schedule, Some(6));
/// assert_eq!(grid, "S1:  1A  1B  1C  2A  2B  B1\nS2:   .  1A  1B  1C  B1  2A\n");
/// ```
pub fn generate(kind: ScheduleKind, config: &ScheduleConfig) -> Result<Schedule, ScheduleError> {
    check(kind, config)?;
    Ok(match kind {
        ScheduleKind::Naive => naive::naive(config),
        ScheduleKind::Gpipe => gpipe::gpipe(config),
        ScheduleKind::OneFOneB => one_f_one_b::one_f_one_b(config),
        ScheduleKind::OneFOneBFlush => one_f_one_b_flush::one_f_one_b_flush(config),
        ScheduleKind::Nf1b => nf1b::nf1b(config),
        ScheduleKind::Nf1bStreamed => nf1b::nf1b_streamed(config),
        ScheduleKind::OneFOneBDoubleBuffered => one_f_one_b_2bw::one_f_one_b_2bw(config),
    })
}

/// Rejects configurations no schedule can be generated for.
fn check(kind: ScheduleKind, config: &ScheduleConfig) -> Result<(), ScheduleError> {
    if config.num_stages == 0 {
        return Err(ScheduleError::ZeroStages(config.num_stages));
    }
    if config.num_microbatches == 0 {
        return Err(ScheduleError::ZeroMicrobatches(config.num_microbatches));
    }
    if config.num_minibatches == 0 {
        return Err(ScheduleError::ZeroMinibatches(config.num_minibatches));
    }
    let too_large = |num_actions| ScheduleError::TooLarge {
        num_stages: config.num_stages,
        num_microbatches: config.num_microbatches,
        num_minibatches: config.num_minibatches,
        num_actions,
        limit: MAX_ACTIONS,
    };
    let scheduled = match kind {
        ScheduleKind::OneFOneB => {
            let minibatches =
                u64::from(config.num_minibatches) * u64::from(config.num_microbatches);
            if minibatches > u64::from(u32::MAX) {
                return Err(too_large(minibatches * 3 * u64::from(config.num_stages)));
            }
            one_f_one_b::normalise(config)
        }
        _ => *config,
    };
    if let Some(k) = config.backward_slots
        && !(1..=MAX_BACKWARD_SLOTS).contains(&k)
    {
        return Err(ScheduleError::BackwardSlots(k));
    }
    let num_actions = ActionIndex::new(kind, &scheduled).total_u64();
    // Slots are u32 too: no stage may run longer than that, even if each action is a backward.
    let longest = u64::from(scheduled.duration(ActionKind::BackwardMinibatch(0)).max(1));
    if num_actions > MAX_ACTIONS || num_actions.saturating_mul(longest) > MAX_ACTIONS {
        return Err(too_large(num_actions));
    }
    if kind.uses_inflight_cap() {
        for stage in 0..config.num_stages {
            if let Some(cap @ 0) = config.inflight_cap.at(stage, config.num_stages) {
                return Err(ScheduleError::ZeroInflightCap { stage, cap });
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schedule::InflightCap;

    #[test]
    fn zero_sizes_are_rejected_with_the_value_named() {
        for (config, needle) in [
            (
                ScheduleConfig::new(0, 2, 3),
                "num_stages (W) must be at least 1, got 0",
            ),
            (
                ScheduleConfig::new(2, 0, 3),
                "num_microbatches (N) must be at least 1, got 0",
            ),
            (
                ScheduleConfig::new(2, 2, 0),
                "num_minibatches must be at least 1, got 0",
            ),
        ] {
            for kind in ScheduleKind::ALL {
                let message = generate(kind, &config).unwrap_err().to_string();
                assert!(message.contains(needle), "{kind}: {message}");
            }
        }
    }

    #[test]
    fn a_zero_inflight_cap_is_rejected_only_where_it_is_used() {
        let config = ScheduleConfig {
            inflight_cap: InflightCap::Constant(0),
            ..ScheduleConfig::new(3, 2, 4)
        };
        let err = generate(ScheduleKind::Nf1b, &config).unwrap_err();
        assert_eq!(err, ScheduleError::ZeroInflightCap { stage: 0, cap: 0 });
        assert!(generate(ScheduleKind::Gpipe, &config).is_ok());
    }

    #[test]
    fn schedules_too_large_for_u32_slots_are_rejected() {
        let config = ScheduleConfig::new(5000, 1000, 1000);
        let err = generate(ScheduleKind::Nf1b, &config).unwrap_err();
        assert!(matches!(
            err,
            ScheduleError::TooLarge {
                num_actions: 5_010_000_000,
                ..
            }
        ));
        let err = generate(ScheduleKind::OneFOneB, &ScheduleConfig::new(2, u32::MAX, 2));
        assert!(matches!(err, Err(ScheduleError::TooLarge { .. })));
    }

    #[test]
    fn one_f_one_b_schedules_each_microbatch_as_a_minibatch() {
        let schedule = generate(ScheduleKind::OneFOneB, &ScheduleConfig::new(4, 3, 5)).unwrap();
        assert_eq!(schedule.config.num_microbatches, 1);
        assert_eq!(schedule.config.num_minibatches, 15);
    }
}
