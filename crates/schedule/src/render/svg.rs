//! A standalone SVG timeline: one row per stage, one rectangle per action, a time axis.
//!
//! It reads a [`Timeline`], so it draws the idealised unit-slot schedule and a cost-model
//! prediction alike. Forwards, mini-batch backwards, micro-batch backwards and updates get
//! distinct hues, alternating in lightness by mini-batch so that neighbouring mini-batches are
//! told apart; each rectangle carries its grid label when it fits and a `<title>` tooltip with the
//! exact action and times. No external stylesheet or font is referenced.

use std::fmt::Write as _;

use super::grid::grid_token;
use crate::action::ActionKind;
use crate::timeline::{TimeUnit, Timeline};

const LEFT: f64 = 56.0;
const TOP: f64 = 28.0;
const ROW: f64 = 26.0;
const GAP: f64 = 6.0;
const AXIS: f64 = 36.0;
const RIGHT: f64 = 16.0;
/// Approximate width of one label character in the 11 px monospace font.
const CHAR: f64 = 6.7;

/// The fill colour of an action: a hue per kind, lighter for odd mini-batches.
fn colour(kind: ActionKind) -> &'static str {
    let odd = kind.minibatch() % 2 == 1;
    match (kind, odd) {
        (ActionKind::Forward(_), false) => "#4e79a7",
        (ActionKind::Forward(_), true) => "#7fa6cf",
        (ActionKind::BackwardMinibatch(_), false) => "#e15759",
        (ActionKind::BackwardMinibatch(_), true) => "#f08b8c",
        (ActionKind::BackwardMicrobatch(_), false) => "#f28e2b",
        (ActionKind::BackwardMicrobatch(_), true) => "#f7b36d",
        (ActionKind::Update(_), _) => "#2f7d32",
    }
}

/// A "nice" tick step (1, 2 or 5 × 10^k) giving roughly `target` ticks over `span`.
fn tick_step(span: f64, target: f64) -> f64 {
    let raw = (span / target).max(f64::MIN_POSITIVE);
    let magnitude = 10f64.powf(raw.log10().floor());
    [1.0, 2.0, 5.0, 10.0]
        .into_iter()
        .map(|m| m * magnitude)
        .find(|&s| s >= raw)
        .unwrap_or(raw)
}

/// Renders `timeline` as a standalone SVG document.
pub fn svg(timeline: &Timeline) -> String {
    let makespan = timeline.makespan().max(f64::MIN_POSITIVE);
    let scale = match timeline.unit {
        TimeUnit::Slots => (20_000.0 / makespan).min(32.0),
        TimeUnit::Seconds => 1_000.0 / makespan,
    };
    let plot_width = makespan * scale;
    let rows = f64::from(timeline.num_stages());
    let width = LEFT + plot_width + RIGHT;
    let height = TOP + rows * (ROW + GAP) + AXIS;
    let mut out = String::new();
    let w = &mut out;
    writeln!(
        w,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width:.0}" height="{height:.0}" viewBox="0 0 {width:.1} {height:.1}" font-family="monospace" font-size="11">"#
    )
    .unwrap();
    writeln!(w, r#"<rect width="100%" height="100%" fill="white"/>"#).unwrap();
    let config = &timeline.config;
    writeln!(
        w,
        r#"<text x="{LEFT}" y="16" font-size="12">{} W={} N={} mini-batches={}; forward blue, backward red (mini-batch) / orange (micro-batch), update green</text>"#,
        timeline.kind, config.num_stages, config.num_microbatches, config.num_minibatches
    )
    .unwrap();
    for (s, row) in timeline.stages.iter().enumerate() {
        let y = TOP + s as f64 * (ROW + GAP);
        writeln!(
            w,
            r#"<text x="8" y="{:.1}">S{}</text>"#,
            y + ROW / 2.0 + 4.0,
            s + 1
        )
        .unwrap();
        for timed in row {
            let x = LEFT + timed.start * scale;
            let is_update = timed.action.kind.is_update();
            let rect_width = (timed.duration() * scale).max(if is_update { 2.0 } else { 0.5 });
            writeln!(
                w,
                r#"<rect x="{x:.2}" y="{y:.1}" width="{rect_width:.2}" height="{ROW}" fill="{}" stroke="white" stroke-width="0.5"><title>{} [{:.6}, {:.6}) {}</title></rect>"#,
                colour(timed.action.kind),
                timed.action,
                timed.start,
                timed.end,
                timeline.unit.label(),
            )
            .unwrap();
            let Some(label) = grid_token(timed.action.kind) else {
                continue;
            };
            if label.len() as f64 * CHAR + 2.0 <= rect_width {
                writeln!(
                    w,
                    r#"<text x="{:.2}" y="{:.1}" text-anchor="middle" fill="white">{label}</text>"#,
                    x + rect_width / 2.0,
                    y + ROW / 2.0 + 4.0,
                )
                .unwrap();
            }
        }
    }
    let axis_y = TOP + rows * (ROW + GAP);
    writeln!(
        w,
        r#"<line x1="{LEFT}" y1="{axis_y:.1}" x2="{:.2}" y2="{axis_y:.1}" stroke="black"/>"#,
        LEFT + plot_width
    )
    .unwrap();
    let step = tick_step(makespan, (plot_width / 80.0).max(1.0));
    let num_ticks = (makespan / step).floor() as u64;
    for k in 0..=num_ticks {
        let t = k as f64 * step;
        let x = LEFT + t * scale;
        writeln!(
            w,
            r#"<line x1="{x:.2}" y1="{axis_y:.1}" x2="{x:.2}" y2="{:.1}" stroke="black"/><text x="{x:.2}" y="{:.1}" text-anchor="middle">{}</text>"#,
            axis_y + 5.0,
            axis_y + 17.0,
            format_tick(t),
        )
        .unwrap();
    }
    writeln!(
        w,
        r#"<text x="{:.2}" y="{:.1}" text-anchor="end">time ({})</text>"#,
        LEFT + plot_width,
        axis_y + 31.0,
        timeline.unit.label()
    )
    .unwrap();
    out.push_str("</svg>\n");
    out
}

/// A tick label without float noise (`0.30000000000000004` → `0.3`).
fn format_tick(t: f64) -> String {
    let text = format!("{t:.6}");
    text.trim_end_matches('0').trim_end_matches('.').to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tick_steps_are_one_two_or_five_times_a_power_of_ten() {
        assert_eq!(tick_step(16.0, 10.0), 2.0);
        assert_eq!(tick_step(100.0, 10.0), 10.0);
        assert_eq!(tick_step(0.003, 10.0), 0.0005);
        assert_eq!(format_tick(0.1 + 0.2), "0.3");
        assert_eq!(format_tick(20.0), "20");
    }
}
