//! Renderers: SVG, Chrome trace and JSON are well formed and complete, for slot and cost
//! timelines alike.

use timeprest_schedule::render::{chrome_trace, from_json, grid, json, svg};
use timeprest_schedule::{
    ConstantCost, ScheduleConfig, ScheduleKind, Timeline, generate, simulate_costs,
};

fn timelines() -> Vec<Timeline> {
    let mut out = Vec::new();
    for kind in ScheduleKind::ALL {
        let schedule = generate(kind, &ScheduleConfig::new(3, 2, 3)).unwrap();
        out.push(Timeline::from_schedule(&schedule));
        let cost = ConstantCost {
            forward: 0.01,
            backward: 0.02,
            update: 0.001,
            transfer: 0.002,
        };
        out.push(simulate_costs(&schedule, &cost).unwrap());
    }
    out
}

#[test]
fn svg_is_a_standalone_document_with_a_rect_per_action() {
    for timeline in timelines() {
        let text = svg(&timeline);
        assert!(text.starts_with("<svg xmlns=\"http://www.w3.org/2000/svg\""));
        assert!(text.trim_end().ends_with("</svg>"));
        let actions: usize = timeline.stages.iter().map(Vec::len).sum();
        // One rect per action plus the background.
        assert_eq!(text.matches("<rect ").count(), actions + 1);
        assert!(text.contains("time ("), "no axis label");
        assert!(text.matches("<text").count() >= timeline.stages.len());
    }
}

#[test]
fn chrome_trace_has_one_complete_event_per_action_and_named_stage_tracks() {
    for timeline in timelines() {
        let trace: serde_json::Value = serde_json::from_str(&chrome_trace(&timeline)).unwrap();
        let events = trace["traceEvents"].as_array().unwrap();
        let complete: Vec<_> = events.iter().filter(|e| e["ph"] == "X").collect();
        let actions: Vec<_> = timeline.stages.iter().flatten().collect();
        assert_eq!(complete.len(), actions.len());
        for (event, timed) in complete.iter().zip(&actions) {
            assert_eq!(event["name"], timed.action.to_string());
            assert_eq!(event["pid"], 0);
            assert_eq!(event["tid"], timed.action.stage);
            assert_eq!(event["args"]["minibatch"], timed.action.kind.minibatch());
            let ts = event["ts"].as_f64().unwrap();
            assert!((ts - timed.start * timeline.unit.microseconds()).abs() < 1e-6);
        }
        let names: Vec<_> = events
            .iter()
            .filter(|e| e["ph"] == "M" && e["name"] == "thread_name")
            .map(|e| e["args"]["name"].as_str().unwrap().to_string())
            .collect();
        assert_eq!(names, ["stage 0", "stage 1", "stage 2"]);
    }
}

#[test]
fn json_round_trips_a_schedule() {
    for kind in ScheduleKind::ALL {
        let schedule = generate(kind, &ScheduleConfig::new(3, 2, 3)).unwrap();
        assert_eq!(from_json(&json(&schedule)).unwrap(), schedule);
    }
}

#[test]
fn grid_columns_line_up_and_max_slots_cuts() {
    let schedule = generate(ScheduleKind::Nf1b, &ScheduleConfig::new(12, 2, 12)).unwrap();
    let text = grid(&schedule, Some(30));
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 12);
    assert!(lines.iter().all(|l| l.len() == lines[0].len()), "{text}");
    assert!(lines[0].starts_with("S1: ") && lines[11].starts_with("S12:"));
    assert!(lines.iter().all(|l| l.split_whitespace().count() == 31));
    assert_eq!(grid(&schedule, Some(0)).lines().next(), Some("S1: "));
}
