//! Chrome-trace JSON of a real run: one track per stage, one slice per executed action.
//!
//! The measured events become a [`Timeline`] in seconds, which the schedule crate renders exactly
//! like a simulated one, so a measured trace and `timeprest simulate --format chrome-trace` of
//! the same configuration open side by side in Perfetto. Each slice carries the weight versions
//! its passes read, the staleness d and the bytes sent.

use serde_json::{Map, Value, json};
use timeprest_runtime::RunReport;
use timeprest_schedule::render::chrome_trace_annotated;
use timeprest_schedule::{Schedule, TimeUnit, TimedAction, Timeline};

/// The Chrome-trace JSON of `report`, a run of `schedule`.
pub fn measured_chrome_trace(schedule: &Schedule, report: &RunReport) -> String {
    let timeline = Timeline {
        kind: schedule.kind,
        config: schedule.config,
        unit: TimeUnit::Seconds,
        stages: report
            .events
            .iter()
            .map(|events| {
                events
                    .iter()
                    .map(|e| TimedAction {
                        action: e.action,
                        start: e.start,
                        end: e.end,
                    })
                    .collect()
            })
            .collect(),
    };
    chrome_trace_annotated(&timeline, |stage, index| {
        let event = &report.events[stage][index];
        let mut args = Map::new();
        let recipes: Vec<String> = event.recipes.iter().map(ToString::to_string).collect();
        args.insert("weights".into(), json!(recipes));
        args.insert("live_version".into(), json!(event.live));
        if !event.staleness.is_empty() {
            args.insert("staleness".into(), json!(event.staleness));
        }
        args.insert("bytes_sent".into(), Value::from(event.bytes_sent));
        args.insert(
            "stored_weight_sets".into(),
            Value::from(event.stored_weight_sets),
        );
        args
    })
}
