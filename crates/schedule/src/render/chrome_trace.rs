//! Chrome trace JSON (opens in Perfetto and `chrome://tracing`).
//!
//! The Trace Event Format's "complete" events (`ph: "X"`) map one to one onto timed actions:
//! `pid` 0 is the pipeline, `tid` is the stage (0-based, as in the action text), `ts`/`dur` are in
//! microseconds, the event name is the action text (`2F5.1`), and `args` carries the mini-batch,
//! the micro-batch (absent for whole-mini-batch actions) and the grid label. A `thread_name`
//! metadata event per stage names each track `stage k`. Slot timelines show one slot as one
//! millisecond.

use serde_json::{Value, json};

use super::grid::grid_token;
use crate::action::ActionKind;
use crate::timeline::Timeline;

/// Renders `timeline` as a Chrome trace JSON document.
pub fn chrome_trace(timeline: &Timeline) -> String {
    chrome_trace_annotated(timeline, |_, _| serde_json::Map::new())
}

/// Like [`chrome_trace`], with extra arguments per slice: `annotate(stage, index)` returns the
/// arguments to add to the slice of `timeline.stages[stage][index]` (for measured runs: the
/// weight versions each pass read, the staleness, the bytes sent).
pub fn chrome_trace_annotated(
    timeline: &Timeline,
    annotate: impl Fn(usize, usize) -> serde_json::Map<String, Value>,
) -> String {
    let us = timeline.unit.microseconds();
    let mut events: Vec<Value> = Vec::new();
    for stage in 0..timeline.num_stages() {
        events.push(json!({
            "name": "thread_name", "ph": "M", "pid": 0, "tid": stage,
            "args": { "name": format!("stage {stage}") },
        }));
    }
    for (stage, row) in timeline.stages.iter().enumerate() {
        for (index, timed) in row.iter().enumerate() {
            let kind = timed.action.kind;
            let (category, microbatch) = match kind {
                ActionKind::Forward(mb) => ("forward", Some(mb.microbatch)),
                ActionKind::BackwardMicrobatch(mb) => ("backward", Some(mb.microbatch)),
                ActionKind::BackwardMinibatch(_) => ("backward", None),
                ActionKind::Update(_) => ("update", None),
            };
            let mut args = json!({ "minibatch": kind.minibatch() });
            if let Some(j) = microbatch {
                args["microbatch"] = json!(j);
            }
            if let Some(label) = grid_token(kind) {
                args["grid"] = json!(label);
            }
            for (key, value) in annotate(stage, index) {
                args[key] = value;
            }
            events.push(json!({
                "name": timed.action.to_string(), "cat": category, "ph": "X",
                "pid": 0, "tid": stage,
                "ts": timed.start * us, "dur": timed.duration() * us,
                "args": args,
            }));
        }
    }
    let trace = json!({ "traceEvents": events, "displayTimeUnit": "ms" });
    serde_json::to_string(&trace).expect("a JSON value always serialises")
}
