//! The comparison charts: curves over epochs or time (the mean over seeds with a shaded band
//! from the lowest to the highest seed), memory per stage, staleness per stage.
//!
//! Each chart is a small struct holding exactly the numbers it shows (taken from the
//! [`crate::summary::Summary`]), so what is drawn is testable without pixels and the same
//! struct renders to SVG and PNG (see [`crate::figure`]). Policies keep their colour across all
//! charts (their position in `--policies`).

use plotters::coord::Shift;
use plotters::prelude::*;

use crate::figure::{DrawResult, FONT, Figure, colour, legend_strip, padded, whole_numbers};
use crate::summary::CurvePoint;

/// One policy's curve.
pub(crate) struct Series {
    /// The policy label (legend).
    pub label: String,
    /// The points (mean and spread over seeds), in x order.
    pub points: Vec<CurvePoint>,
    /// Whether to shade the spread around the mean (there are at least two seeds).
    pub band: bool,
}

impl Series {
    /// The band's outline: along the highest values, then back along the lowest; empty
    /// without a band.
    pub(crate) fn band_outline(&self) -> Vec<(f64, f64)> {
        if !self.band {
            return Vec::new();
        }
        let upper = self.points.iter().map(|p| (p.x, p.high));
        let lower = self.points.iter().rev().map(|p| (p.x, p.low));
        upper.chain(lower).collect()
    }
}

/// Opacity of a spread band: light enough for the means and other bands to show through.
const BAND_OPACITY: f64 = 0.2;

/// What the y axis shows.
#[derive(Clone, Copy)]
pub(crate) enum YAxis {
    /// A fraction shown as a percentage (accuracy).
    Percent,
    /// A plain value starting at 0 (loss).
    FromZero,
}

/// Curves, one per policy: accuracy vs epoch, accuracy vs time, loss vs epoch.
pub(crate) struct LineChart {
    pub title: String,
    pub x_label: String,
    pub y_label: String,
    /// Whether x is an epoch number (labelled with whole numbers only).
    pub x_is_epoch: bool,
    pub y_axis: YAxis,
    pub series: Vec<Series>,
}

impl Figure for LineChart {
    fn size(&self) -> (u32, u32) {
        (960, 560)
    }

    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> DrawResult<DB> {
        let points = || self.series.iter().flat_map(|s| s.points.iter());
        let (x_min, x_max) = bounds(points().map(|p| p.x));
        // The bands must fit too, not only the means.
        let (y_min, y_max) = bounds(points().flat_map(|p| [p.low, p.mean, p.high]));
        let y_range = match self.y_axis {
            YAxis::Percent => (y_min - 0.05).max(0.0)..(y_max + 0.03).min(1.0),
            YAxis::FromZero => 0.0..padded(0.0, y_max, 0.05).end,
        };
        let labels: Vec<&str> = self.series.iter().map(|s| s.label.as_str()).collect();
        let body = legend_strip(root, &entries(&labels))?;
        let mut chart = ChartBuilder::on(&body)
            .caption(&self.title, (FONT, 26))
            .margin(16)
            .x_label_area_size(50)
            .y_label_area_size(70)
            .build_cartesian_2d(padded(x_min, x_max, 0.03), y_range)?;
        let percent = |v: &f64| format!("{:.0}%", 100.0 * v);
        let plain = |v: &f64| format!("{v:.2}");
        // Axis labels of a time axis need the decimals of its step, not of its values.
        let step = (x_max - x_min).max(f64::MIN_POSITIVE) / 10.0;
        let decimals = (-step.log10().floor()).max(0.0) as usize;
        let time = move |v: &f64| format!("{v:.decimals$}");
        let y_format: &dyn Fn(&f64) -> String = match self.y_axis {
            YAxis::Percent => &percent,
            YAxis::FromZero => &plain,
        };
        let x_format: &dyn Fn(&f64) -> String = if self.x_is_epoch {
            &whole_numbers
        } else {
            &time
        };
        chart
            .configure_mesh()
            .x_desc(&self.x_label)
            .y_desc(&self.y_label)
            .x_label_formatter(x_format)
            .y_label_formatter(y_format)
            .label_style((FONT, 15))
            .axis_desc_style((FONT, 17))
            .light_line_style(WHITE.mix(0.0))
            .draw()?;
        // Every band first, so that no band covers another policy's mean.
        for (index, series) in self.series.iter().enumerate() {
            let outline = series.band_outline();
            if !outline.is_empty() {
                let fill = colour(index).mix(BAND_OPACITY).filled();
                chart.draw_series(std::iter::once(Polygon::new(outline, fill)))?;
            }
        }
        for (index, series) in self.series.iter().enumerate() {
            let style = colour(index).stroke_width(3);
            let means = || series.points.iter().map(|p| (p.x, p.mean));
            chart.draw_series(LineSeries::new(means(), style))?;
            chart.draw_series(means().map(|p| Circle::new(p, 4, colour(index).filled())))?;
        }
        Ok(())
    }
}

/// Legend entries for policies in the order given (their colours).
fn entries(labels: &[&str]) -> Vec<(String, RGBColor)> {
    labels
        .iter()
        .enumerate()
        .map(|(index, label)| (label.to_string(), colour(index)))
        .collect()
}

/// Smallest and largest value (0, 1 when there is none).
fn bounds(values: impl Iterator<Item = f64>) -> (f64, f64) {
    values
        .fold(None, |acc: Option<(f64, f64)>, v| {
            Some(acc.map_or((v, v), |(lo, hi)| (lo.min(v), hi.max(v))))
        })
        .unwrap_or((0.0, 1.0))
}

/// One policy's memory per stage.
pub(crate) struct StageBytes {
    pub label: String,
    /// Measured peak weight-version bytes per stage.
    pub weights: Vec<f64>,
    /// Estimated activation bytes per stage (empty when there is no prediction).
    pub activations: Vec<f64>,
}

/// Memory per stage: for each stage, one stacked bar per policy (weights solid, activations
/// light on top).
pub(crate) struct MemoryChart {
    pub num_stages: usize,
    pub policies: Vec<StageBytes>,
}

impl Figure for MemoryChart {
    fn size(&self) -> (u32, u32) {
        (960, 560)
    }

    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> DrawResult<DB> {
        let at = |values: &[f64], stage: usize| values.get(stage).copied().unwrap_or(0.0);
        let top = self
            .policies
            .iter()
            .flat_map(|p| (0..self.num_stages).map(|s| at(&p.weights, s) + at(&p.activations, s)))
            .fold(1.0, f64::max);
        let unit = ["B", "KiB", "MiB", "GiB"]
            .iter()
            .zip([1.0, 1024.0, 1024.0 * 1024.0, 1024.0 * 1024.0 * 1024.0])
            .rev()
            .find(|(_, size)| top >= 2.0 * size)
            .unwrap_or((&"B", 1.0));
        let labels: Vec<&str> = self.policies.iter().map(|p| p.label.as_str()).collect();
        let body = legend_strip(root, &entries(&labels))?;
        let mut chart = ChartBuilder::on(&body)
            .caption(
                "Memory per stage: weight versions (measured, solid) + activations (estimate, light)",
                (FONT, 22),
            )
            .margin(16)
            .x_label_area_size(50)
            .y_label_area_size(80)
            .build_cartesian_2d(
                -0.5..(self.num_stages as f64 - 0.5),
                0.0..top * 1.1 / unit.1,
            )?;
        let stage_label = |v: &f64| match whole_numbers(v) {
            label if label.is_empty() => label,
            label => format!("stage {label}"),
        };
        chart
            .configure_mesh()
            .disable_x_mesh()
            .x_labels(self.num_stages)
            .x_label_formatter(&stage_label)
            .y_desc(format!("peak bytes ({})", unit.0))
            .y_label_formatter(&|v| format!("{v:.0}"))
            .label_style((FONT, 15))
            .axis_desc_style((FONT, 17))
            .draw()?;
        let width = 0.8 / self.policies.len().max(1) as f64;
        for (index, policy) in self.policies.iter().enumerate() {
            let colour = colour(index);
            let left = |stage: usize| stage as f64 - 0.4 + index as f64 * width;
            let bar = |stage: usize, low: f64, high: f64| {
                [
                    (left(stage), low / unit.1),
                    (left(stage) + 0.9 * width, high / unit.1),
                ]
            };
            chart
                .draw_series((0..self.num_stages).map(|s| {
                    Rectangle::new(bar(s, 0.0, at(&policy.weights, s)), colour.filled())
                }))?;
            chart.draw_series((0..self.num_stages).map(|s| {
                let weights = at(&policy.weights, s);
                let total = weights + at(&policy.activations, s);
                Rectangle::new(bar(s, weights, total), colour.mix(0.35).filled())
            }))?;
        }
        Ok(())
    }
}

/// One policy's staleness histograms, one per stage.
pub(crate) struct StageHistograms {
    pub label: String,
    /// Per stage, the fraction of backward micro-batches with staleness d, for d = 0, 1, ….
    pub fractions: Vec<Vec<f64>>,
}

/// Staleness per stage: one panel per stage, grouped bars per policy over d.
pub(crate) struct StalenessChart {
    pub num_stages: usize,
    pub policies: Vec<StageHistograms>,
}

impl Figure for StalenessChart {
    fn size(&self) -> (u32, u32) {
        (320 * self.num_stages.max(1) as u32 + 40, 480)
    }

    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> DrawResult<DB> {
        let root = root.titled(
            "Staleness d per stage (fraction of backward micro-batches)",
            (FONT, 22),
        )?;
        let labels: Vec<&str> = self.policies.iter().map(|p| p.label.as_str()).collect();
        let body = legend_strip(&root, &entries(&labels))?;
        let max_d = self
            .policies
            .iter()
            .flat_map(|p| p.fractions.iter().map(Vec::len))
            .max()
            .unwrap_or(1)
            .max(1);
        let width = 0.8 / self.policies.len().max(1) as f64;
        for (stage, panel) in body
            .split_evenly((1, self.num_stages.max(1)))
            .iter()
            .enumerate()
        {
            let mut chart = ChartBuilder::on(panel)
                .caption(format!("stage {stage}"), (FONT, 18))
                .margin(10)
                .x_label_area_size(40)
                .y_label_area_size(50)
                .build_cartesian_2d(-0.5..(max_d as f64 - 0.5), 0.0..1.05)?;
            chart
                .configure_mesh()
                .disable_x_mesh()
                .x_labels(max_d)
                .x_label_formatter(&whole_numbers)
                .y_label_formatter(&|v| format!("{:.0}%", 100.0 * v))
                .x_desc("staleness d")
                .label_style((FONT, 14))
                .axis_desc_style((FONT, 15))
                .draw()?;
            for (index, policy) in self.policies.iter().enumerate() {
                let Some(fractions) = policy.fractions.get(stage) else {
                    continue;
                };
                chart.draw_series(fractions.iter().enumerate().map(|(d, fraction)| {
                    let left = d as f64 - 0.4 + index as f64 * width;
                    Rectangle::new(
                        [(left, 0.0), (left + 0.9 * width, *fraction)],
                        colour(index).filled(),
                    )
                }))?;
            }
        }
        Ok(())
    }
}
