//! Property tests over every generator: W in 1..8, N in 1..8, 1..20 mini-batches, unit slots
//! or backwards of 1 to 4 slots per micro-batch.
//!
//! Every generated schedule validates, contains each expected action exactly once, and every
//! action's text round-trips; the validator rejects the three basic corruptions (two actions
//! swapped, one dropped, one duplicated) with the marked grid in its message.

use std::collections::HashSet;

use proptest::prelude::*;
use timeprest_schedule::{
    Action, ActionKind, InflightCap, Schedule, ScheduleConfig, ScheduleKind, ScheduledAction,
    ValidationRule, generate, validate,
};

fn kinds() -> impl Strategy<Value = ScheduleKind> {
    prop::sample::select(ScheduleKind::ALL.to_vec())
}

fn configs() -> impl Strategy<Value = ScheduleConfig> {
    let caps = prop_oneof![
        Just(InflightCap::StagesRemaining),
        Just(InflightCap::Unlimited),
        (1u32..4).prop_map(InflightCap::Constant),
    ];
    let backward_slots = prop_oneof![Just(None), (1u32..5).prop_map(Some)];
    (
        1u32..8,
        1u32..8,
        1u32..20,
        caps,
        any::<bool>(),
        backward_slots,
    )
        .prop_map(|(w, n, m, cap, priority, backward_slots)| ScheduleConfig {
            inflight_cap: cap,
            backward_priority: priority,
            backward_slots,
            ..ScheduleConfig::new(w, n, m)
        })
}

/// The number of each kind of action one stage must run.
fn expected_per_stage(schedule: &Schedule) -> usize {
    let (n, m) = (
        schedule.config.num_microbatches as usize,
        schedule.config.num_minibatches as usize,
    );
    let backwards = if schedule.kind.has_microbatch_backwards() {
        m * n
    } else {
        m
    };
    m * n + backwards + m
}

/// The row and position of the forward `F(i,j)` and of the backward that consumes it.
fn forward_and_its_backward(schedule: &Schedule, stage: usize, i: u32, j: u32) -> (usize, usize) {
    let row = &schedule.stages[stage];
    let position = |wanted: ActionKind| row.iter().position(|a| a.action.kind == wanted).unwrap();
    let forward = position(Action::forward(stage as u32, i, j).kind);
    let backward = if schedule.kind.has_microbatch_backwards() {
        Action::backward_microbatch(stage as u32, i, j)
    } else {
        Action::backward(stage as u32, i)
    };
    (forward, position(backward.kind))
}

fn assert_marked(message: &str) {
    assert!(
        message.contains("<-- ERROR HERE: "),
        "no marked row in:\n{message}"
    );
    assert!(message.contains("S1:"), "no grid in:\n{message}");
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn every_generated_schedule_validates_and_has_each_action_once(
        kind in kinds(),
        config in configs(),
    ) {
        let schedule = generate(kind, &config).unwrap();
        validate(&schedule).map_err(|e| TestCaseError::fail(e.to_string()))?;
        let per_stage = expected_per_stage(&schedule);
        let mut seen = HashSet::new();
        for (s, row) in schedule.stages.iter().enumerate() {
            prop_assert_eq!(row.len(), per_stage);
            for scheduled in row {
                prop_assert_eq!(scheduled.action.stage as usize, s);
                prop_assert!(seen.insert(scheduled.action), "{} twice", scheduled.action);
            }
        }
        prop_assert_eq!(schedule.stages.len(), config.num_stages as usize);
    }

    #[test]
    fn a_kind_says_what_it_does_to_the_micro_and_mini_batch_counts(
        kind in kinds(),
        config in configs(),
    ) {
        let scheduled = generate(kind, &config).unwrap().config;
        let (microbatches, minibatches) = if kind.splits_microbatches() {
            (1, config.num_microbatches * config.num_minibatches)
        } else {
            (config.num_microbatches, config.num_minibatches)
        };
        prop_assert_eq!(scheduled.num_microbatches, microbatches);
        prop_assert_eq!(scheduled.num_minibatches, minibatches);
    }

    #[test]
    fn every_action_text_round_trips(kind in kinds(), config in configs()) {
        let schedule = generate(kind, &config).unwrap();
        for scheduled in schedule.stages.iter().flatten() {
            let text = scheduled.action.to_string();
            prop_assert_eq!(text.parse::<Action>().unwrap(), scheduled.action, "{}", text);
        }
    }

    #[test]
    fn naive_schedules_run_one_action_at_a_time(config in configs()) {
        let schedule = generate(ScheduleKind::Naive, &config).unwrap();
        let mut busy: Vec<(u32, u32)> = schedule
            .stages
            .iter()
            .flatten()
            .filter(|a| !a.action.kind.is_update())
            .map(|a| (a.slot, a.slot + config.duration(a.action.kind)))
            .collect();
        busy.sort_unstable();
        // Back to back across the whole pipeline: each action starts when the one before ends.
        let mut now = 0;
        for (start, end) in busy {
            prop_assert_eq!(start, now);
            now = end;
        }
        prop_assert_eq!(schedule.num_slots(), now);
    }

    #[test]
    fn double_buffering_never_delays_a_forward_when_n_is_at_least_w_minus_one(
        w in 1u32..8,
        extra in 0u32..3,
        m in 1u32..12,
    ) {
        // PipeDream-2BW's m ≥ d: with N ≥ W − 1 and the W − s cap, the rule "the forwards of
        // mini-batch i wait for update i − 2" never binds, so every forward and backward sits
        // where asynchronous 1F1B over the same micro-batches puts it.
        let n = (w - 1).max(1) + extra;
        let config = ScheduleConfig::new(w, n, m);
        let double_buffered = generate(ScheduleKind::OneFOneBDoubleBuffered, &config).unwrap();
        let one_f_one_b = generate(ScheduleKind::OneFOneB, &config).unwrap();
        let slots = |schedule: &Schedule| -> Vec<Vec<(bool, u32)>> {
            schedule
                .stages
                .iter()
                .map(|row| {
                    row.iter()
                        .filter(|a| !a.action.kind.is_update())
                        .map(|a| (a.action.kind.is_forward(), a.slot))
                        .collect()
                })
                .collect()
        };
        prop_assert_eq!(slots(&double_buffered), slots(&one_f_one_b));
    }

    #[test]
    fn double_buffered_forwards_come_after_the_update_two_minibatches_back(
        config in configs(),
    ) {
        let schedule = generate(ScheduleKind::OneFOneBDoubleBuffered, &config).unwrap();
        for row in &schedule.stages {
            let mut updates = 0u32;
            for scheduled in row {
                match scheduled.action.kind {
                    ActionKind::Update(_) => updates += 1,
                    ActionKind::Forward(mb) => prop_assert!(
                        updates + 1 >= mb.minibatch,
                        "{} after only {} updates", scheduled.action, updates
                    ),
                    _ => {}
                }
            }
        }
    }

    #[test]
    fn swapping_a_forward_with_its_backward_is_rejected_with_the_cell_marked(
        kind in kinds(),
        config in configs(),
        picks in (any::<prop::sample::Index>(), any::<prop::sample::Index>(), any::<prop::sample::Index>()),
    ) {
        let mut schedule = generate(kind, &config).unwrap();
        let stage = picks.0.index(schedule.stages.len());
        let i = picks.1.index(schedule.config.num_minibatches as usize) as u32;
        let j = picks.2.index(schedule.config.num_microbatches as usize) as u32;
        let (f, b) = forward_and_its_backward(&schedule, stage, i, j);
        let row = &mut schedule.stages[stage];
        let (fa, ba) = (row[f].action, row[b].action);
        row[f].action = ba;
        row[b].action = fa;
        let err = validate(&schedule).unwrap_err();
        let message = err.to_string();
        assert_marked(&message);
        prop_assert!(message.contains('['), "no marked cell in:\n{}", message);
    }

    #[test]
    fn dropping_any_action_is_rejected(
        kind in kinds(),
        config in configs(),
        picks in (any::<prop::sample::Index>(), any::<prop::sample::Index>()),
    ) {
        let mut schedule = generate(kind, &config).unwrap();
        let stage = picks.0.index(schedule.stages.len());
        let row = &mut schedule.stages[stage];
        let dropped = row.remove(picks.1.index(row.len())).action;
        let err = validate(&schedule).unwrap_err();
        assert_marked(&err.to_string());
        // Dropping a backward orphans its update; anything else is simply missing.
        if dropped.kind.is_backward() {
            prop_assert!(matches!(err.rule, ValidationRule::UpdatePlacement | ValidationRule::MissingAction));
        } else {
            prop_assert_eq!(err.rule, ValidationRule::MissingAction);
            prop_assert_eq!(err.action, Some(dropped));
        }
    }

    #[test]
    fn duplicating_any_action_is_rejected_with_the_cell_marked(
        kind in kinds(),
        config in configs(),
        picks in (any::<prop::sample::Index>(), any::<prop::sample::Index>()),
    ) {
        let mut schedule = generate(kind, &config).unwrap();
        let stage = picks.0.index(schedule.stages.len());
        let row = &mut schedule.stages[stage];
        let p = picks.1.index(row.len());
        let copy: ScheduledAction = row[p];
        row.insert(p + 1, copy);
        let err = validate(&schedule).unwrap_err();
        prop_assert_eq!(err.rule, ValidationRule::DuplicateAction);
        prop_assert_eq!(err.action, Some(copy.action));
        let message = err.to_string();
        assert_marked(&message);
        prop_assert!(message.contains('['), "no marked cell in:\n{}", message);
    }

    #[test]
    fn streamed_nf1b_runs_nf1b_order_with_each_backward_split_first_to_last(config in configs()) {
        let whole = generate(ScheduleKind::Nf1b, &config).unwrap();
        let streamed = generate(ScheduleKind::Nf1bStreamed, &config).unwrap();
        for stage in 0..config.num_stages {
            // Re-joining each run of micro-batch backwards gives nF1B's sequence back.
            let mut joined: Vec<ActionKind> = Vec::new();
            let mut next_microbatch = 0;
            for action in streamed.actions(stage) {
                match action.kind {
                    ActionKind::BackwardMicrobatch(mb) => {
                        prop_assert_eq!(mb.microbatch, next_microbatch, "{}", action);
                        next_microbatch = (next_microbatch + 1) % config.num_microbatches;
                        if mb.microbatch == 0 {
                            joined.push(ActionKind::BackwardMinibatch(mb.minibatch));
                        }
                    }
                    kind => {
                        prop_assert_eq!(next_microbatch, 0, "a backward split by {}", action);
                        joined.push(kind);
                    }
                }
            }
            let expected: Vec<ActionKind> = whole.actions(stage).map(|a| a.kind).collect();
            prop_assert_eq!(joined, expected, "stage {}", stage);
        }
    }
}
