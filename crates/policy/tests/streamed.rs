//! Streamed nF1B reads what nF1B reads: the same recipe for every forward and every
//! micro-batch's backward, the same update bases and the same stored weight sets, for every
//! policy that runs on it and every option that changes what a backward reads.

use std::collections::BTreeMap;

use timeprest_policy::{
    Activations, LatestSource, PlannedBackward, PlannedPass, PolicyKind, PolicyOptions,
    StalenessMeasure, UpdateBase, VersionPlan, WeightPolicy, WeightRecipe, plan,
};
use timeprest_schedule::{ActionKind, MicrobatchId, ScheduleConfig, ScheduleKind, generate};

/// What one stage's plan says, keyed by what it is about rather than by position.
#[derive(Debug, PartialEq)]
struct Reads {
    forwards: BTreeMap<MicrobatchId, WeightRecipe>,
    backwards: BTreeMap<MicrobatchId, PlannedBackward>,
    update_bases: BTreeMap<u32, Vec<WeightRecipe>>,
}

fn reads(plan: &VersionPlan) -> Vec<Reads> {
    plan.stages
        .iter()
        .map(|stage| {
            let mut reads = Reads {
                forwards: BTreeMap::new(),
                backwards: BTreeMap::new(),
                update_bases: BTreeMap::new(),
            };
            for planned in &stage.actions {
                match (&planned.pass, planned.action.kind) {
                    (PlannedPass::Forward { recipe, .. }, ActionKind::Forward(mb)) => {
                        reads.forwards.insert(mb, *recipe);
                    }
                    (PlannedPass::Backward(backwards), _) => {
                        for backward in backwards {
                            reads.backwards.insert(backward.microbatch, *backward);
                        }
                    }
                    (PlannedPass::Update { base }, ActionKind::Update(i)) => {
                        reads.update_bases.insert(i, base.clone());
                    }
                    (pass, kind) => panic!("{kind:?} planned as {pass:?}"),
                }
            }
            reads
        })
        .collect()
}

#[test]
fn every_pass_of_streamed_nf1b_reads_what_it_reads_on_nf1b() {
    let option_sets = [
        PolicyOptions::default(),
        PolicyOptions {
            latest: LatestSource::Committed,
            ..PolicyOptions::default()
        },
        PolicyOptions {
            update_base: UpdateBase::Intermediate,
            ..PolicyOptions::default()
        },
    ]
    .into_iter()
    .chain(
        [
            StalenessMeasure::MinibatchMax,
            StalenessMeasure::MinibatchMean,
            StalenessMeasure::VersionDifference,
            StalenessMeasure::StageSteady,
        ]
        .map(|staleness| PolicyOptions {
            staleness,
            ..PolicyOptions::default()
        }),
    );
    let mut compared = 0;
    for options in option_sets {
        for policy in PolicyKind::ALL {
            if !policy
                .allowed_schedules()
                .contains(&ScheduleKind::Nf1bStreamed)
            {
                continue;
            }
            let weights = WeightPolicy::new(policy, &options);
            for (num_stages, num_microbatches, backward_slots) in [
                (2, 4, None),
                (2, 3, Some(2)),
                (3, 2, None),
                (4, 3, Some(2)),
                (7, 2, None),
            ] {
                let config = ScheduleConfig {
                    backward_slots,
                    ..ScheduleConfig::new(num_stages, num_microbatches, 12)
                };
                let whole = generate(ScheduleKind::Nf1b, &config).unwrap();
                let streamed = generate(ScheduleKind::Nf1bStreamed, &config).unwrap();
                for activations in [Activations::Kept, Activations::Recomputed] {
                    let expected = plan(&whole, &weights, activations);
                    let got = plan(&streamed, &weights, activations);
                    let case = format!(
                        "{policy} {options:?} W={num_stages} N={num_microbatches} \
                         slots {backward_slots:?}"
                    );
                    assert_eq!(reads(&got), reads(&expected), "{case}");
                    assert_eq!(
                        got.peak_weight_sets(),
                        expected.peak_weight_sets(),
                        "{case}"
                    );
                    compared += 1;
                }
            }
        }
    }
    // Seven option sets, six policies (pipedream, timeprest, v-, i-timeprest, nwpt, variants).
    assert!(compared >= 7 * 5 * 5 * 2, "only {compared} plans compared");
}

/// On its own slots a streamed schedule would see other updates applied when a backward
/// starts (its backwards are N slots long); these shapes are ones where it would.
#[test]
fn streamed_nf1b_has_nf1b_version_difference() {
    for (num_stages, num_microbatches, backward_slots) in
        [(7, 2, None), (3, 3, Some(2)), (6, 3, Some(2))]
    {
        let config = ScheduleConfig {
            backward_slots,
            ..ScheduleConfig::new(num_stages, num_microbatches, 16)
        };
        let whole = generate(ScheduleKind::Nf1b, &config).unwrap();
        let streamed = generate(ScheduleKind::Nf1bStreamed, &config).unwrap();
        assert_eq!(
            timeprest_policy::version_difference(&streamed),
            timeprest_policy::version_difference(&whole)
        );
    }
}
