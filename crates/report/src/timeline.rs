//! The measured timeline of the first mini-batches, read back from a run's Chrome trace.
//!
//! `timeprest train --trace` (and `compare`, for its first seed) writes the first epoch's
//! measured events as Chrome-trace JSON; this module reads the slices back ([`read_trace`]) and
//! draws a Gantt chart with one row per stage, one panel per policy (`TimelineChart`). Only the
//! first few mini-batches are drawn: the start-up of the pipeline is where schedules differ, and
//! a whole epoch would be thousands of slivers.

use std::path::Path;

use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::RGBColor;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use serde::Deserialize;

use crate::error::ReportError;
use crate::figure::{DrawResult, FONT, Figure, legend_strip};
use crate::record::{parse_error, read};

/// What an executed action was.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SliceKind {
    /// A forward pass.
    Forward,
    /// A backward pass.
    Backward,
    /// An optimizer update.
    Update,
}

impl SliceKind {
    const ALL: [SliceKind; 3] = [SliceKind::Forward, SliceKind::Backward, SliceKind::Update];

    fn name(self) -> &'static str {
        match self {
            SliceKind::Forward => "forward",
            SliceKind::Backward => "backward",
            SliceKind::Update => "update",
        }
    }

    fn colour(self) -> RGBColor {
        match self {
            SliceKind::Forward => RGBColor(66, 133, 244),
            SliceKind::Backward => RGBColor(240, 140, 40),
            SliceKind::Update => RGBColor(40, 150, 70),
        }
    }
}

/// One executed action.
#[derive(Clone, Debug, PartialEq)]
pub struct Slice {
    /// The stage (the trace's thread id).
    pub stage: u32,
    /// Start, seconds from the start of the trace.
    pub start: f64,
    /// End, seconds.
    pub end: f64,
    /// Forward, backward or update.
    pub kind: SliceKind,
    /// The action's name (`2F5.1`).
    pub name: String,
    /// Its mini-batch.
    pub minibatch: u64,
}

/// A measured trace: the stage tracks and their slices.
#[derive(Clone, Debug, PartialEq)]
pub struct Trace {
    /// Number of stage tracks (`thread_name` metadata events).
    pub num_stages: u32,
    /// The slices, in file order.
    pub slices: Vec<Slice>,
}

#[derive(Deserialize)]
struct TraceFile {
    #[serde(rename = "traceEvents")]
    trace_events: Vec<TraceEvent>,
}

#[derive(Deserialize)]
struct TraceEvent {
    name: String,
    ph: String,
    #[serde(default)]
    cat: String,
    tid: u32,
    #[serde(default)]
    ts: f64,
    #[serde(default)]
    dur: f64,
    #[serde(default)]
    args: serde_json::Value,
}

/// Reads a Chrome trace written by timeprest (complete `X` events with `cat` forward, backward
/// or update and a `minibatch` argument; times in microseconds).
pub fn read_trace(path: &Path) -> Result<Trace, ReportError> {
    let file: TraceFile = serde_json::from_str(&read(path)?).map_err(|e| parse_error(path, e))?;
    let mut trace = Trace {
        num_stages: 0,
        slices: Vec::new(),
    };
    for event in file.trace_events {
        if event.ph == "M" && event.name == "thread_name" {
            trace.num_stages += 1;
            continue;
        }
        let kind = match event.cat.as_str() {
            "forward" => SliceKind::Forward,
            "backward" => SliceKind::Backward,
            "update" => SliceKind::Update,
            _ => continue,
        };
        if event.ph != "X" {
            continue;
        }
        trace.slices.push(Slice {
            stage: event.tid,
            start: event.ts * 1e-6,
            end: (event.ts + event.dur) * 1e-6,
            kind,
            name: event.name,
            minibatch: event.args["minibatch"].as_u64().unwrap_or(0),
        });
    }
    Ok(trace)
}

/// One policy's panel.
pub(crate) struct Panel {
    /// The caption (`pipedream, seed 1`).
    pub caption: String,
    pub num_stages: u32,
    /// The slices to draw, with times relative to the first.
    pub slices: Vec<Slice>,
}

impl Panel {
    /// The slices of the first `minibatches` mini-batches of `trace`, shifted to start at 0.
    pub(crate) fn first_minibatches(caption: String, trace: &Trace, minibatches: u64) -> Self {
        let mut slices: Vec<Slice> = trace
            .slices
            .iter()
            .filter(|s| s.minibatch < minibatches)
            .cloned()
            .collect();
        let origin = slices.iter().map(|s| s.start).fold(f64::INFINITY, f64::min);
        for slice in &mut slices {
            slice.start -= origin;
            slice.end -= origin;
        }
        Self {
            caption,
            num_stages: trace.num_stages,
            slices,
        }
    }
}

/// The Gantt chart: one panel per policy, one row per stage (stage 0 on top), time in ms.
pub(crate) struct TimelineChart {
    pub panels: Vec<Panel>,
}

impl Figure for TimelineChart {
    fn size(&self) -> (u32, u32) {
        let rows: u32 = self
            .panels
            .iter()
            .map(|p| p.num_stages.max(1) * 34 + 90)
            .sum();
        (1100, rows + 90)
    }

    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> DrawResult<DB> {
        let root = root.titled(
            "Measured timeline of the first mini-batches (epoch 1)",
            (FONT, 22),
        )?;
        let heights: Vec<u32> = self
            .panels
            .iter()
            .map(|p| p.num_stages.max(1) * 34 + 90)
            .collect();
        let kinds: Vec<(String, RGBColor)> = SliceKind::ALL
            .iter()
            .map(|k| (k.name().to_string(), k.colour()))
            .collect();
        let mut rest = legend_strip(&root, &kinds)?;
        for (index, panel) in self.panels.iter().enumerate() {
            let (area, below) = rest.split_vertically(heights[index]);
            draw_panel(&area, panel)?;
            rest = below;
        }
        Ok(())
    }
}

fn draw_panel<DB: DrawingBackend>(area: &DrawingArea<DB, Shift>, panel: &Panel) -> DrawResult<DB> {
    let stages = panel.num_stages.max(1);
    let end_ms = 1e3 * panel.slices.iter().map(|s| s.end).fold(0.0, f64::max);
    let end_ms = if end_ms > 0.0 { end_ms * 1.02 } else { 1.0 };
    let mut chart = ChartBuilder::on(area)
        .caption(&panel.caption, (FONT, 17))
        .margin(8)
        .margin_right(24)
        .x_label_area_size(36)
        .y_label_area_size(70)
        .build_cartesian_2d(0.0..end_ms, -0.5..(f64::from(stages) - 0.5))?;
    // Row y holds stage W − 1 − y, so that stage 0 is on top.
    let top = f64::from(stages - 1);
    let stage_label = |y: &f64| {
        if (y - y.round()).abs() < 1e-9 && *y >= 0.0 {
            format!("stage {}", top - y.round())
        } else {
            String::new()
        }
    };
    chart
        .configure_mesh()
        .disable_y_mesh()
        .y_labels(stages as usize)
        .y_label_formatter(&stage_label)
        .x_desc("ms since the first forward")
        .label_style((FONT, 13))
        .axis_desc_style((FONT, 14))
        .draw()?;
    let span = end_ms;
    for kind in SliceKind::ALL {
        let fill = kind.colour();
        chart.draw_series(panel.slices.iter().filter(|s| s.kind == kind).map(|s| {
            let y = top - f64::from(s.stage);
            Rectangle::new(
                [(1e3 * s.start, y - 0.38), (1e3 * s.end, y + 0.38)],
                fill.filled(),
            )
        }))?;
    }
    // Name the forwards and backwards that are wide enough to hold a label.
    chart.draw_series(
        panel
            .slices
            .iter()
            .filter(|s| s.kind != SliceKind::Update && 1e3 * (s.end - s.start) > 0.035 * span)
            .map(|s| {
                let y = top - f64::from(s.stage);
                let style = TextStyle::from((FONT, 12))
                    .color(&WHITE)
                    .pos(Pos::new(HPos::Center, VPos::Center));
                Text::new(s.name.clone(), (1e3 * (s.start + s.end) / 2.0, y), style)
            }),
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const TRACE: &str = r#"{"traceEvents":[
        {"name":"thread_name","ph":"M","pid":0,"tid":0,"args":{"name":"stage 0"}},
        {"name":"thread_name","ph":"M","pid":0,"tid":1,"args":{"name":"stage 1"}},
        {"name":"1F0","cat":"forward","ph":"X","pid":0,"tid":0,"ts":100.0,"dur":50.0,
         "args":{"minibatch":0}},
        {"name":"2F0","cat":"forward","ph":"X","pid":0,"tid":1,"ts":160.0,"dur":40.0,
         "args":{"minibatch":0}},
        {"name":"2B0","cat":"backward","ph":"X","pid":0,"tid":1,"ts":200.0,"dur":80.0,
         "args":{"minibatch":0}},
        {"name":"1F7","cat":"forward","ph":"X","pid":0,"tid":0,"ts":300.0,"dur":50.0,
         "args":{"minibatch":7}}
    ],"displayTimeUnit":"ms"}"#;

    fn trace() -> Trace {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("trace.json");
        std::fs::write(&path, TRACE).unwrap();
        read_trace(&path).unwrap()
    }

    #[test]
    fn a_trace_has_one_track_per_thread_name_and_slices_in_seconds() {
        let trace = trace();
        assert_eq!(trace.num_stages, 2);
        assert_eq!(trace.slices.len(), 4);
        let backward = &trace.slices[2];
        assert_eq!((backward.stage, backward.kind), (1, SliceKind::Backward));
        assert!((backward.start - 200e-6).abs() < 1e-12 && (backward.end - 280e-6).abs() < 1e-12);
    }

    #[test]
    fn a_panel_keeps_the_first_minibatches_and_starts_at_zero() {
        let panel = Panel::first_minibatches("p".into(), &trace(), 2);
        assert_eq!(panel.slices.len(), 3, "mini-batch 7 is left out");
        assert_eq!(panel.slices[0].start, 0.0);
        assert!((panel.slices[2].end - 180e-6).abs() < 1e-12);
    }

    #[test]
    fn a_file_that_is_not_a_trace_is_a_parse_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("trace.json");
        std::fs::write(&path, "{}").unwrap();
        let error = read_trace(&path).unwrap_err();
        assert!(error.to_string().contains("trace.json"), "{error}");
    }
}
