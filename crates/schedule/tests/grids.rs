//! Snapshot tests: the generators reproduce the reference grids, token by token.
//!
//! The 1F1B (W = 4) and nF1B grid texts are those of `docs/algorithms.md` §2.8: nF1B as in
//! Fig. 2 of the TiMePReSt paper plus the main-experiment configurations (N = 3). The GPipe,
//! 1F1B-flush, naive, costed, 1F1B-2BW and streamed nF1B grids follow the rules of §2.3, §2.5,
//! §2.2, §2.7, §2.9 and §2.6b there. Each is compared over the slots it shows; whitespace runs and a trailing `...`
//! are ignored.

use timeprest_schedule::{
    ActionKind, MicrobatchId, ScheduleConfig, ScheduleKind, Timeline, generate, render, validate,
};

/// Enough mini-batches that the shown slots are never cut short by the end of the run.
const NUM_MINIBATCHES: u32 = 20;

/// The tokens of each row, without the `S<k>:` label and a trailing `...`.
fn tokens(grid: &str) -> Vec<Vec<String>> {
    grid.lines()
        .filter(|line| !line.trim().is_empty())
        .map(|line| {
            line.split_whitespace()
                .skip(1)
                .filter(|token| *token != "...")
                .map(str::to_string)
                .collect()
        })
        .collect()
}

/// Asserts that `kind` with (W, N) renders as `expected` over the slots `expected` shows.
fn check(kind: ScheduleKind, num_stages: u32, num_microbatches: u32, expected: &str) {
    let expected = tokens(expected);
    let num_slots = expected[0].len() as u32;
    let config = ScheduleConfig::new(num_stages, num_microbatches, NUM_MINIBATCHES);
    let schedule = generate(kind, &config).unwrap();
    let grid = render::grid(&schedule, Some(num_slots));
    assert_eq!(
        tokens(&grid),
        expected,
        "{kind} W={num_stages} N={num_microbatches}:\n{grid}"
    );
}

const ONE_F_ONE_B_W4: &str = "
S1:  1A  2A  3A  4A   .   .   .  B1  5A  B2  6A  B3  7A  B4 ...
S2:   .  1A  2A  3A   .   .  B1  4A  B2  5A  B3  6A  B4  7A ...
S3:   .   .  1A  2A   .  B1  3A  B2  4A  B3  5A  B4  6A  B5 ...
S4:   .   .   .  1A  B1  2A  B2  3A  B3  4A  B4  5A  B5  6A ...
";

#[test]
fn one_f_one_b_reproduces_the_documented_w4_grid() {
    check(ScheduleKind::OneFOneB, 4, 1, ONE_F_ONE_B_W4);
}

#[test]
fn streamed_nf1b_reproduces_the_documented_grid() {
    check(
        ScheduleKind::Nf1bStreamed,
        2,
        3,
        "
S1:   1A   1B   1C   2A   2B  B1A  B1B  B1C   2C   3A   3B  B2A  B2B  B2C   3C
S2:    .   1A   1B   1C  B1A  B1B  B1C   2A   2B   2C  B2A  B2B  B2C   3A   3B
",
    );
}

#[test]
fn nf1b_with_one_microbatch_is_the_one_f_one_b_grid() {
    check(ScheduleKind::Nf1b, 4, 1, ONE_F_ONE_B_W4);
}

#[test]
fn nf1b_reproduces_fig_2c_w3_n2() {
    check(
        ScheduleKind::Nf1b,
        3,
        2,
        "
S1:  1A  1B  2A  2B  3A  3B  B1  4A  4B  B2  5A  5B  B3  6A  6B  B4
S2:   .  1A  1B  2A  2B  B1  3A  3B  B2  4A  4B  B3  5A  5B  B4  6A
S3:   .   .  1A  1B  B1  2A  2B  B2  3A  3B  B3  4A  4B  B4  5A  5B
",
    );
}

#[test]
fn nf1b_reproduces_fig_2a_w4_n2_the_multiple_sequence_case() {
    check(
        ScheduleKind::Nf1b,
        4,
        2,
        "
S1:  1A  1B  2A  2B  3A  3B  4A  4B  B1  5A  5B  B2  6A  6B  B3  7A
S2:   .  1A  1B  2A  2B  3A  3B  B1  4A  4B  B2  5A  5B  B3  6A  6B
S3:   .   .  1A  1B  2A  2B  B1  3A  3B  B2  4A  4B  B3  5A  5B  B4
S4:   .   .   .  1A  1B  B1  2A  2B  B2  3A  3B  B3  4A  4B  B4  5A
",
    );
}

#[test]
fn nf1b_reproduces_fig_2b_w4_n4() {
    check(
        ScheduleKind::Nf1b,
        4,
        4,
        "
S1:  1A  1B  1C  1D  2A  2B  2C  2D  3A  3B  B1  3C  3D  4A  4B  B2
S2:   .  1A  1B  1C  1D  2A  2B  2C  2D  B1  3A  3B  3C  3D  B2  4A
S3:   .   .  1A  1B  1C  1D  2A  2B  B1  2C  2D  3A  3B  B2  3C  3D
S4:   .   .   .  1A  1B  1C  1D  B1  2A  2B  2C  2D  B2  3A  3B  3C
",
    );
}

#[test]
fn nf1b_reproduces_the_main_experiment_grid_w2_n3() {
    check(
        ScheduleKind::Nf1b,
        2,
        3,
        "
S1:  1A  1B  1C  2A  2B  B1  2C  3A  3B  B2  3C  4A  4B  B3  4C  5A
S2:   .  1A  1B  1C  B1  2A  2B  2C  B2  3A  3B  3C  B3  4A  4B  4C
",
    );
}

#[test]
fn nf1b_reproduces_the_main_experiment_grid_w4_n3() {
    check(
        ScheduleKind::Nf1b,
        4,
        3,
        "
S1:  1A  1B  1C  2A  2B  2C  3A  3B  3C  B1  4A  4B  4C  B2  5A  5B
S2:   .  1A  1B  1C  2A  2B  2C  3A  B1  3B  3C  4A  B2  4B  4C  5A
S3:   .   .  1A  1B  1C  2A  2B  B1  2C  3A  3B  B2  3C  4A  4B  B3
S4:   .   .   .  1A  1B  1C  B1  2A  2B  2C  B2  3A  3B  3C  B3  4A
",
    );
}

#[test]
fn gpipe_runs_all_forwards_then_all_backwards_then_flushes() {
    check(
        ScheduleKind::Gpipe,
        3,
        2,
        "
S1:   1A   1B    .    .    .    .  B1B  B1A   2A   2B    .    .    .    .  B2B  B2A
S2:    .   1A   1B    .    .  B1B  B1A    .    .   2A   2B    .    .  B2B  B2A    .
S3:    .    .   1A   1B  B1B  B1A    .    .    .    .   2A   2B  B2B  B2A    .    .
",
    );
}

#[test]
fn one_f_one_b_flush_warms_up_w_minus_s_minus_1_forwards() {
    // Checked by hand: stage s warms up min(N, W - s - 1) forwards, then alternates.
    check(
        ScheduleKind::OneFOneBFlush,
        3,
        4,
        "
S1:   1A   1B   1C    .    .  B1A   1D  B1B    .  B1C    .  B1D   2A   2B   2C    .
S2:    .   1A   1B    .  B1A   1C  B1B   1D  B1C    .  B1D    .    .   2A   2B    .
S3:    .    .   1A  B1A   1B  B1B   1C  B1C   1D  B1D    .    .    .    .   2A  B2A
",
    );
}

#[test]
fn one_f_one_b_2bw_fills_w_minus_s_micro_batches_and_updates_after_each_last_backward() {
    // Checked by hand: stage s holds at most W − s micro-batches; U(i) rides with B(i, N−1);
    // `3A` (mini-batch 2) may start at stage 0 only after U(0), in slot 7 with `B1B`.
    check(
        ScheduleKind::OneFOneBDoubleBuffered,
        3,
        2,
        "
S1:   1A   1B   2A    .    .  B1A   2B  B1B   3A  B2A   3B  B2B   4A  B3A   4B  B3B
S2:    .   1A   1B    .  B1A   2A  B1B   2B  B2A   3A  B2B   3B  B3A   4A  B3B   4B
S3:    .    .   1A  B1A   1B  B1B   2A  B2A   2B  B2B   3A  B3A   3B  B3B   4A  B4A
",
    );
}

#[test]
fn naive_runs_one_action_at_a_time() {
    check(
        ScheduleKind::Naive,
        2,
        2,
        "
S1:  1A   .  1B   .   .  B1  2A   .  2B   .   .  B2
S2:   .  1A   .  1B  B1   .   .  2A   .  2B  B2   .
",
    );
}

#[test]
fn costed_nf1b_runs_forwards_while_a_long_backward_runs_downstream() {
    // W = 2, N = 4, a backward 2 slots per micro-batch (a mini-batch backward: 8 slots). On the
    // unit grid stage 0 runs `1A 1B 1C 1D 2A 2B B1` and then waits for stage 1's 8-slot B1;
    // costed, it fills its cap of W − 0 = 2 mini-batches first (8 forwards), and the last
    // stage, once its first backward starts (slot 5: forwards 1A-1D in slots 1-4), is never
    // idle again: B1 and then 5 mini-batches of 4 forward + 8 backward slots end at slot
    // 5 + 8 + 5·12.
    let config = ScheduleConfig {
        backward_slots: Some(2),
        ..ScheduleConfig::new(2, 4, 6)
    };
    let schedule = generate(ScheduleKind::Nf1b, &config).unwrap();
    validate(&schedule).unwrap();
    let first: Vec<ActionKind> = schedule.actions(0).take(10).map(|a| a.kind).collect();
    let forwards =
        (0..2).flat_map(|i| (0..4).map(move |j| ActionKind::Forward(MicrobatchId::new(i, j))));
    let expected: Vec<ActionKind> = forwards
        .chain([ActionKind::BackwardMinibatch(0), ActionKind::Update(0)])
        .collect();
    assert_eq!(first, expected);
    let last = &schedule.stages[1];
    let busy = last
        .iter()
        .filter(|a| !matches!(a.action.kind, ActionKind::Update(_)));
    let mut ends_at = 5;
    for scheduled in busy.skip(4) {
        assert_eq!(
            scheduled.slot, ends_at,
            "stage 1 idles before {}",
            scheduled.action
        );
        ends_at += config.duration(scheduled.action.kind);
    }
    assert_eq!(ends_at, 5 + 8 + 5 * 12);
    // The timeline spans each backward over its 8 slots, and the update at its end.
    let timeline = Timeline::from_schedule(&schedule);
    let spans: Vec<(f64, f64)> = timeline.stages[1][4..6]
        .iter()
        .map(|a| (a.start, a.end))
        .collect();
    assert_eq!(spans, [(5.0, 13.0), (13.0, 13.0)]);
    let unit = generate(ScheduleKind::Nf1b, &ScheduleConfig::new(2, 4, 6)).unwrap();
    let unit_first: Vec<ActionKind> = unit.actions(0).take(7).map(|a| a.kind).collect();
    assert_eq!(unit_first[6], ActionKind::BackwardMinibatch(0));
}
