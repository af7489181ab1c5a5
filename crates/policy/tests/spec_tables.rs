//! The version tables of `docs/algorithms.md` (§2.8, §3.5, §3.10), checked against tracing.

use std::collections::BTreeMap;

use timeprest_policy::{
    Activations, PlannedPass, PolicyKind, PolicyOptions, VersionPlan, WeightPolicy, WeightRecipe,
    plan, v_formula, version_difference,
};
use timeprest_schedule::{ActionKind, Schedule, ScheduleConfig, ScheduleKind, generate};

const NUM_MINIBATCHES: u32 = 40;

fn schedule(kind: ScheduleKind, num_stages: u32, num_microbatches: u32) -> Schedule {
    generate(
        kind,
        &ScheduleConfig::new(num_stages, num_microbatches, NUM_MINIBATCHES),
    )
    .unwrap()
}

fn traced(policy: PolicyKind, kind: ScheduleKind, num_stages: u32, n: u32) -> VersionPlan {
    let policy = WeightPolicy::new(policy, &PolicyOptions::default());
    plan(&schedule(kind, num_stages, n), &policy, Activations::Kept)
}

#[test]
fn stored_versions_match_the_documented_table() {
    use PolicyKind::*;
    let cases: [(PolicyKind, u32, u32, &[u32]); 20] = [
        (Timeprest, 2, 3, &[1, 2]),
        (Timeprest, 3, 3, &[1, 2, 3]),
        (Timeprest, 4, 3, &[1, 2, 3, 3]),
        (Timeprest, 4, 2, &[1, 2, 3, 4]),
        (Timeprest, 4, 4, &[1, 2, 2, 3]),
        (Variant1, 2, 3, &[2, 2]),
        (Variant1, 3, 3, &[3, 3, 3]),
        (Variant1, 4, 3, &[3, 3, 3, 3]),
        (Variant1, 4, 2, &[4, 4, 4, 4]),
        (Variant1, 4, 4, &[3, 3, 3, 3]),
        (ITimeprest, 2, 3, &[2, 1]),
        (ITimeprest, 3, 3, &[3, 2, 1]),
        (ITimeprest, 4, 3, &[3, 3, 2, 1]),
        (ITimeprest, 4, 4, &[3, 2, 2, 1]),
        (VTimeprest, 4, 3, &[1, 1, 1, 1]),
        (VTimeprest, 4, 2, &[1, 1, 1, 1]),
        (VTimeprest, 3, 2, &[1, 1, 1]),
        (Gpipe, 4, 4, &[1, 1, 1, 1]),
        (PipedreamFlush, 3, 4, &[1, 1, 1]),
        (Variant2, 4, 1, &[1, 1, 1, 1]),
    ];
    for (policy, w, n, expected) in cases {
        let plan = traced(policy, policy.default_schedule(), w, n);
        assert_eq!(plan.peak_weight_sets(), expected, "{policy} W={w} N={n}");
    }
    for w in 1..=6 {
        let plan = traced(Pipedream, ScheduleKind::OneFOneB, w, 1);
        let expected: Vec<u32> = (0..w).map(|s| w - s).collect();
        assert_eq!(plan.peak_weight_sets(), expected, "pipedream W={w}");
    }
}

/// Steady-state staleness histograms over 25 mini-batches away from warm-up and drain.
fn histograms(plan: &VersionPlan) -> Vec<BTreeMap<u64, u32>> {
    plan.stages
        .iter()
        .map(|stage| stage.staleness_histogram(10..35))
        .collect()
}

fn hist(pairs: &[(u64, u32)]) -> BTreeMap<u64, u32> {
    pairs.iter().copied().collect()
}

#[test]
fn staleness_distributions_match_the_documented_table() {
    // (W, N, V-TiMePReSt-style forward = live, TiMePReSt forward = vertical-sync tag)
    let all = |pairs: &[(u64, u32)], w: usize| vec![hist(pairs); w];
    type Histograms = Vec<BTreeMap<u64, u32>>;
    let cases: Vec<(u32, u32, Histograms, Histograms)> = vec![
        (
            2,
            3,
            vec![hist(&[(0, 25), (1, 50)]), hist(&[(0, 75)])],
            all(&[(0, 25), (1, 50)], 2),
        ),
        (
            3,
            3,
            vec![
                hist(&[(1, 50), (2, 25)]),
                hist(&[(0, 25), (1, 50)]),
                hist(&[(0, 75)]),
            ],
            all(&[(1, 50), (2, 25)], 3),
        ),
        (
            4,
            3,
            vec![
                hist(&[(2, 75)]),
                hist(&[(1, 50), (2, 25)]),
                hist(&[(0, 25), (1, 50)]),
                hist(&[(0, 75)]),
            ],
            all(&[(2, 75)], 4),
        ),
        (
            3,
            2,
            vec![hist(&[(2, 50)]), hist(&[(1, 50)]), hist(&[(0, 50)])],
            all(&[(2, 50)], 3),
        ),
        (
            4,
            4,
            vec![
                hist(&[(1, 50), (2, 50)]),
                hist(&[(1, 100)]),
                hist(&[(0, 50), (1, 50)]),
                hist(&[(0, 100)]),
            ],
            all(&[(1, 50), (2, 50)], 4),
        ),
    ];
    for (w, n, live, vertical) in cases {
        let v = traced(PolicyKind::VTimeprest, ScheduleKind::Nf1b, w, n);
        assert_eq!(histograms(&v), live, "V-TiMePReSt W={w} N={n}");
        let t = traced(PolicyKind::Timeprest, ScheduleKind::Nf1b, w, n);
        assert_eq!(histograms(&t), vertical, "TiMePReSt W={w} N={n}");
    }
}

#[test]
fn version_difference_table_matches_the_docs_including_the_three_formula_errors() {
    // Rows W = 2..8, columns N = 2..7: the simulated v (`docs/algorithms.md` §3.5).
    let simulated: [[u32; 6]; 7] = [
        [1, 1, 1, 1, 1, 1],
        [1, 1, 1, 1, 1, 1],
        [2, 1, 1, 1, 1, 1],
        [2, 2, 1, 1, 1, 1],
        [2, 2, 2, 1, 1, 1],
        [3, 2, 2, 2, 1, 1],
        [3, 2, 2, 2, 2, 1],
    ];
    let mut formula_wrong = Vec::new();
    for w in 2..=8u32 {
        for n in 2..=7u32 {
            let analysis = version_difference(&schedule(ScheduleKind::Nf1b, w, n));
            let expected = simulated[(w - 2) as usize][(n - 2) as usize];
            assert_eq!(
                analysis.steady_v, expected,
                "W={w} N={n}: {:?}",
                analysis.per_minibatch
            );
            // Eq. 2: W ≤ N + 1 iff v = 1.
            assert_eq!(w <= n + 1, analysis.steady_v == 1, "Eq. 2 at W={w} N={n}");
            assert_eq!(
                analysis.has_multiple_sequences(),
                expected > 1,
                "W={w} N={n}"
            );
            if v_formula(w, n) != expected {
                formula_wrong.push((w, n));
            }
        }
    }
    assert_eq!(formula_wrong, vec![(6, 2), (8, 2), (8, 3)]);
}

#[test]
fn w4_n2_has_two_chains_of_odd_and_even_minibatches() {
    let analysis = version_difference(&schedule(ScheduleKind::Nf1b, 4, 2));
    assert_eq!(analysis.chains.len(), 2);
    let odd: Vec<u32> = (1..=NUM_MINIBATCHES).step_by(2).collect();
    let even: Vec<u32> = (2..=NUM_MINIBATCHES).step_by(2).collect();
    assert_eq!(analysis.chains, vec![odd, even]);
    // B(i) sees the weights last updated by mini-batch i − 2 for every i ≥ 2.
    for i in 2..=NUM_MINIBATCHES {
        assert_eq!(analysis.parents[(i - 1) as usize], i - 2, "mini-batch {i}");
    }
    let single = version_difference(&schedule(ScheduleKind::Nf1b, 4, 4));
    assert_eq!(
        single.chains,
        vec![(1..=NUM_MINIBATCHES).collect::<Vec<u32>>()]
    );
}

#[test]
fn microbatches_of_one_minibatch_can_read_different_versions() {
    // `docs/algorithms.md` §2.8: W=4, N=4 at stage 0, 3A/3B read version 0 and 3C/3D version 1.
    let plan = traced(PolicyKind::VTimeprest, ScheduleKind::Nf1b, 4, 4);
    let reads: BTreeMap<u32, WeightRecipe> = plan.stages[0]
        .actions
        .iter()
        .filter_map(|a| match (a.action.kind, &a.pass) {
            (ActionKind::Forward(mb), PlannedPass::Forward { recipe, .. }) if mb.minibatch == 2 => {
                Some((mb.microbatch, *recipe))
            }
            _ => None,
        })
        .collect();
    let versions: Vec<u64> = reads.values().map(|r| r.anchor()).collect();
    assert_eq!(versions, vec![0, 0, 1, 1]);
}

#[test]
fn pipedream_staleness_is_w_minus_one_minus_s_in_steady_state() {
    let plan = traced(PolicyKind::Pipedream, ScheduleKind::OneFOneB, 4, 1);
    for (stage, histogram) in histograms(&plan).into_iter().enumerate() {
        assert_eq!(histogram, hist(&[(3 - stage as u64, 25)]), "stage {stage}");
    }
}

#[test]
fn pipedream_2bw_holds_two_versions_and_every_gradient_is_one_update_stale() {
    // PipeDream-2BW's update W(t+1) = W(t) − η ∇f(W(t−1)): in steady state every micro-batch's
    // backward finds the stage one update past the version its forward read, at every stage,
    // whatever W and N; and no stage ever holds more than two weight versions.
    for w in 1..=6 {
        for n in 1..=6 {
            let plan = traced(
                PolicyKind::Pipedream2bw,
                ScheduleKind::OneFOneBDoubleBuffered,
                w,
                n,
            );
            assert_eq!(plan.peak_weight_sets(), vec![2; w as usize], "W={w} N={n}");
            for (stage, histogram) in histograms(&plan).into_iter().enumerate() {
                assert_eq!(histogram, hist(&[(1, 25 * n)]), "W={w} N={n} stage {stage}");
            }
        }
    }
}

#[test]
fn synchronous_schedules_never_read_a_stale_version() {
    for (policy, kind) in [
        (PolicyKind::Gpipe, ScheduleKind::Gpipe),
        (PolicyKind::PipedreamFlush, ScheduleKind::OneFOneBFlush),
        (PolicyKind::Naive, ScheduleKind::Naive),
    ] {
        for w in 1..=5 {
            let plan = traced(policy, kind, w, 3);
            for stage in &plan.stages {
                assert!(
                    stage.backwards().all(|b| b.staleness == 0),
                    "{policy} W={w}"
                );
            }
        }
    }
}

#[test]
fn release_lists_free_every_version_exactly_once() {
    for policy in PolicyKind::ALL {
        if policy == PolicyKind::Single {
            continue;
        }
        let plan = traced(policy, policy.default_schedule(), 4, 3);
        for stage in &plan.stages {
            let mut released: Vec<_> = stage
                .actions
                .iter()
                .flat_map(|a| a.release_after.iter().copied())
                .collect();
            let total = released.len();
            released.sort();
            released.dedup();
            assert_eq!(
                released.len(),
                total,
                "{policy}: a weight set released twice"
            );
        }
    }
}
