//! Cost-model simulation and memory: closed forms the simulation must reproduce.

use timeprest_schedule::{
    ConstantCost, CostModel, MemoryModel, RecomputedActivations, ScheduleConfig, ScheduleKind,
    generate, max_microbatches_in_flight, simulate_costs,
};

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() < 1e-9
}

#[test]
fn gpipe_bubble_fraction_is_w_minus_1_over_n_plus_w_minus_1() {
    for w in 1..=6 {
        for n in 1..=8 {
            let schedule = generate(ScheduleKind::Gpipe, &ScheduleConfig::new(w, n, 1)).unwrap();
            let timeline = simulate_costs(&schedule, &ConstantCost::unit()).unwrap();
            let expected = f64::from(w - 1) / f64::from(n + w - 1);
            assert!(
                close(timeline.bubble_fraction(), expected),
                "W={w} N={n}: {} vs {expected}",
                timeline.bubble_fraction()
            );
            assert!(close(timeline.makespan(), f64::from(2 * (n + w - 1))));
        }
    }
}

#[test]
fn naive_makespan_is_the_sum_of_all_durations() {
    let cost = ConstantCost {
        forward: 1.5,
        backward: 2.25,
        update: 0.5,
        transfer: 0.0,
    };
    for (w, n, m) in [(1, 1, 1), (3, 2, 4), (4, 3, 2)] {
        let schedule = generate(ScheduleKind::Naive, &ScheduleConfig::new(w, n, m)).unwrap();
        let timeline = simulate_costs(&schedule, &cost).unwrap();
        let total: f64 = schedule
            .stages
            .iter()
            .flatten()
            .map(|a| cost.duration(a.action, schedule.config.num_microbatches))
            .sum();
        assert!(
            close(timeline.makespan(), total),
            "W={w}: {} vs {total}",
            timeline.makespan()
        );
        assert!(close(timeline.bubble_fraction(), 1.0 - 1.0 / f64::from(w)));
    }
}

#[test]
fn transfers_delay_cross_stage_dependencies_only() {
    let config = ScheduleConfig::new(3, 1, 1);
    let schedule = generate(ScheduleKind::Nf1b, &config).unwrap();
    let free = ConstantCost::unit();
    let slow = ConstantCost {
        transfer: 0.5,
        ..free
    };
    let fast = simulate_costs(&schedule, &free).unwrap().makespan();
    let slowed = simulate_costs(&schedule, &slow).unwrap().makespan();
    // One mini-batch through 3 stages and back: 4 messages.
    assert!(close(fast, 6.0), "{fast}");
    assert!(close(slowed, 6.0 + 4.0 * 0.5), "{slowed}");
}

#[test]
fn each_stage_runs_its_sequence_in_order_without_overlap() {
    let cost = ConstantCost {
        forward: 1.0,
        backward: 2.0,
        update: 0.25,
        transfer: 0.1,
    };
    for kind in ScheduleKind::ALL {
        let schedule = generate(kind, &ScheduleConfig::new(4, 3, 6)).unwrap();
        let timeline = simulate_costs(&schedule, &cost).unwrap();
        for (row, timed) in schedule.stages.iter().zip(&timeline.stages) {
            assert_eq!(
                row.iter().map(|a| a.action).collect::<Vec<_>>(),
                timed.iter().map(|t| t.action).collect::<Vec<_>>()
            );
            for pair in timed.windows(2) {
                assert!(pair[0].end <= pair[1].start + 1e-12, "{kind}: {:?}", pair);
            }
        }
        let utilisation = timeline.utilisation();
        assert!(
            utilisation.iter().all(|&u| u > 0.0 && u <= 1.0 + 1e-12),
            "{kind}: {utilisation:?}"
        );
    }
}

#[test]
fn a_minibatch_backward_costs_n_microbatch_backwards() {
    let cost = ConstantCost {
        forward: 1.0,
        backward: 3.0,
        update: 0.0,
        transfer: 0.0,
    };
    let schedule = generate(ScheduleKind::Nf1b, &ScheduleConfig::new(1, 4, 1)).unwrap();
    let timeline = simulate_costs(&schedule, &cost).unwrap();
    assert!(close(timeline.makespan(), 4.0 + 12.0));
}

#[test]
fn recomputing_activations_adds_one_forward_per_microbatch_to_every_backward() {
    let cost = ConstantCost {
        forward: 1.0,
        backward: 3.0,
        update: 0.0,
        transfer: 0.0,
    };
    for (kind, n) in [(ScheduleKind::Nf1b, 4), (ScheduleKind::Gpipe, 4)] {
        let schedule = generate(kind, &ScheduleConfig::new(1, n, 1)).unwrap();
        let timeline = simulate_costs(&schedule, &RecomputedActivations(cost)).unwrap();
        // One stage: N forwards, then N backwards of 3 + 1 each.
        assert!(close(timeline.makespan(), 4.0 + 16.0), "{kind}");
    }
}

#[test]
fn nf1b_w4_n3_holds_9_7_5_3_microbatches_of_activations() {
    let schedule = generate(ScheduleKind::Nf1b, &ScheduleConfig::new(4, 3, 25)).unwrap();
    assert_eq!(max_microbatches_in_flight(&schedule), [9, 7, 5, 3]);
    let model = MemoryModel {
        parameter_bytes: vec![10; 4],
        activation_bytes_per_microbatch: vec![1; 4],
        recomputed_inputs: None,
        optimizer_bytes_per_parameter_byte: 2.0,
    };
    let memory = model.estimate(&schedule, &[1, 2, 3, 3]).unwrap();
    let totals: Vec<u64> = memory.iter().map(|m| m.total()).collect();
    assert_eq!(totals, [10 + 20 + 9, 20 + 20 + 7, 30 + 20 + 5, 30 + 20 + 3]);
}

#[test]
fn one_f_one_b_holds_w_minus_s_minibatches() {
    let schedule = generate(ScheduleKind::OneFOneB, &ScheduleConfig::new(4, 1, 20)).unwrap();
    assert_eq!(max_microbatches_in_flight(&schedule), [4, 3, 2, 1]);
}
