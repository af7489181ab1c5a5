//! Which plots a comparison gets, built from the [`Summary`] and written to `DIR/plots/`.
//!
//! The list of plots lives here once ([`write_plots`] returns it), so `report.md` embeds exactly
//! the files that were written and a single run directory simply gets fewer of them (no
//! timeline without a trace).

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use crate::charts::{
    LineChart, MemoryChart, Series, StageBytes, StageHistograms, StalenessChart, YAxis,
};
use crate::error::ReportError;
use crate::figure::{Figure, save};
use crate::record::{Loaded, write_error};
use crate::summary::{CurvePoint, Curves, Summary};
use crate::timeline::{Panel, TimelineChart, read_trace};

/// Folder of the plots in a comparison or run directory.
pub const PLOTS_DIR: &str = "plots";

/// One written plot.
#[derive(Clone, Debug, PartialEq)]
pub struct Plot {
    /// File stem (`accuracy-vs-epoch`).
    pub name: &'static str,
    /// What it shows, for the report.
    pub title: &'static str,
    /// The SVG and the PNG file.
    pub files: [PathBuf; 2],
}

/// Draws every plot of `loaded` into `DIR/plots/` and returns them in report order.
pub fn write_plots(
    summary: &Summary,
    loaded: &Loaded,
    dir: &Path,
) -> Result<Vec<Plot>, ReportError> {
    let plots_dir = dir.join(PLOTS_DIR);
    fs::create_dir_all(&plots_dir).map_err(|e| write_error(&plots_dir, e))?;
    let curves: [(&str, &str, &str, bool, Pick, YAxis); 3] = [
        (
            "accuracy-vs-epoch",
            "Test accuracy vs epoch",
            "epoch",
            true,
            |c| &c.accuracy_by_epoch,
            YAxis::Percent,
        ),
        (
            "accuracy-vs-time",
            "Test accuracy vs wall time",
            "seconds of pipelined training",
            false,
            |c| &c.accuracy_by_time,
            YAxis::Percent,
        ),
        (
            "loss-vs-epoch",
            "Training loss vs epoch",
            "epoch",
            true,
            |c| &c.loss_by_epoch,
            YAxis::FromZero,
        ),
    ];
    // A band needs two seeds; a comparison of one seed per policy draws the plain means.
    let banded = summary.variants.iter().any(|v| v.curves.seeds >= 2);
    let over_seeds = if banded {
        "mean over seeds, band: min–max"
    } else {
        "mean over seeds"
    };
    let mut plots = Vec::new();
    for (name, title, x_label, x_is_epoch, pick, y_axis) in curves {
        let chart = LineChart {
            title: format!("{title} ({over_seeds})"),
            x_label: x_label.into(),
            y_label: match y_axis {
                YAxis::Percent => "test accuracy".into(),
                YAxis::FromZero => "training loss".into(),
            },
            x_is_epoch,
            y_axis,
            series: summary
                .variants
                .iter()
                .map(|v| Series {
                    label: v.label.clone(),
                    points: pick(&v.curves).clone(),
                    band: v.curves.seeds >= 2,
                })
                .collect(),
        };
        plots.push(plot(&chart, &plots_dir, name, title)?);
    }
    let num_stages = summary
        .variants
        .iter()
        .map(|v| v.stages.len())
        .max()
        .unwrap_or(0);
    let memory = MemoryChart {
        num_stages,
        policies: summary
            .variants
            .iter()
            .map(|v| StageBytes {
                label: v.label.clone(),
                weights: v
                    .stages
                    .iter()
                    .map(|s| s.peak_weight_bytes as f64)
                    .collect(),
                activations: v
                    .prediction
                    .iter()
                    .flatten()
                    .map(|p| p.activation_bytes as f64)
                    .collect(),
            })
            .collect(),
    };
    plots.push(plot(
        &memory,
        &plots_dir,
        "memory-per-stage",
        "Memory per stage",
    )?);
    let staleness = StalenessChart {
        num_stages,
        policies: summary
            .variants
            .iter()
            .map(|v| StageHistograms {
                label: v.label.clone(),
                fractions: v.stages.iter().map(|s| fractions(&s.staleness)).collect(),
            })
            .collect(),
    };
    plots.push(plot(
        &staleness,
        &plots_dir,
        "staleness-per-stage",
        "Staleness per stage",
    )?);
    if let Some(timeline) = timeline(summary, loaded)? {
        plots.push(plot(
            &timeline,
            &plots_dir,
            "timeline",
            "Measured timeline of the first mini-batches",
        )?);
    }
    Ok(plots)
}

/// Which curve of a variant a line chart shows.
type Pick = fn(&Curves) -> &Vec<CurvePoint>;

fn plot(
    figure: &impl Figure,
    dir: &Path,
    name: &'static str,
    title: &'static str,
) -> Result<Plot, ReportError> {
    Ok(Plot {
        name,
        title,
        files: save(figure, dir, name)?,
    })
}

/// A staleness histogram as fractions for d = 0, 1, …, max d.
fn fractions(histogram: &BTreeMap<u64, u64>) -> Vec<f64> {
    let count = histogram.values().sum::<u64>().max(1) as f64;
    let max_d = histogram.keys().max().copied().unwrap_or(0);
    (0..=max_d)
        .map(|d| histogram.get(&d).copied().unwrap_or(0) as f64 / count)
        .collect()
}

/// The Gantt chart of each variant's first traced run; `None` when no run has a trace.
fn timeline(summary: &Summary, loaded: &Loaded) -> Result<Option<TimelineChart>, ReportError> {
    let mut panels = Vec::new();
    for variant in &summary.variants {
        let traced = loaded
            .runs
            .iter()
            .find(|r| r.label == variant.label && r.trace.is_some());
        if let Some(run) = traced {
            let trace = read_trace(run.trace.as_deref().expect("filtered on a trace"))?;
            // Two rounds of the pipeline show both the fill and the steady state.
            let minibatches = 2 * u64::from(trace.num_stages.max(2));
            let caption = format!(
                "{}, seed {}: the first {minibatches} mini-batches",
                variant.label, run.seed
            );
            panels.push(Panel::first_minibatches(caption, &trace, minibatches));
        }
    }
    Ok((!panels.is_empty()).then_some(TimelineChart { panels }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::summary::summarise;
    use crate::summary::tests::sample;

    #[test]
    fn every_chart_is_written_as_svg_and_png_without_a_trace_there_is_no_timeline() {
        let dir = tempfile::tempdir().unwrap();
        let loaded = sample();
        let plots = write_plots(&summarise(&loaded, None), &loaded, dir.path()).unwrap();
        let names: Vec<&str> = plots.iter().map(|p| p.name).collect();
        assert_eq!(
            names,
            [
                "accuracy-vs-epoch",
                "accuracy-vs-time",
                "loss-vs-epoch",
                "memory-per-stage",
                "staleness-per-stage"
            ]
        );
        for plot in &plots {
            let [svg, png] = &plot.files;
            let svg = fs::read_to_string(svg).unwrap();
            assert!(svg.starts_with("<svg") && svg.contains("</svg>"));
            let has_text = |text: &str| svg.lines().any(|line| line.trim() == text);
            assert!(
                has_text("fast") && has_text("wild"),
                "the legend names the policies"
            );
            let png = fs::read(png).unwrap();
            assert!(png.starts_with(b"\x89PNG\r\n\x1a\n") && png.len() > 10_000);
        }
    }

    /// The `<polygon>` elements of an SVG file.
    fn polygons(svg: &Path) -> Vec<String> {
        fs::read_to_string(svg)
            .unwrap()
            .lines()
            .map(str::trim)
            .filter(|line| line.starts_with("<polygon"))
            .map(str::to_string)
            .collect()
    }

    #[test]
    fn accuracy_plots_shade_the_spread_over_seeds_in_each_policys_colour() {
        let dir = tempfile::tempdir().unwrap();
        let loaded = sample();
        let plots = write_plots(&summarise(&loaded, None), &loaded, dir.path()).unwrap();
        for plot in &plots[..3] {
            let svg = &plot.files[0];
            let bands = polygons(svg);
            // `fast` and `wild` each ran two seeds: one band each, in their colours, see-through.
            for colour in ["#1F77B4", "#FF7F0E"] {
                assert!(
                    bands
                        .iter()
                        .any(|b| b.contains(&format!("fill=\"{colour}\""))
                            && b.contains("opacity=\"0.2\"")),
                    "{}: no band in {colour}: {bands:?}",
                    plot.name
                );
            }
            let text = fs::read_to_string(svg).unwrap();
            assert!(
                text.contains("band: min–max"),
                "{}: the title says so",
                plot.name
            );
        }
    }

    #[test]
    fn one_seed_per_policy_draws_the_plain_curves_without_a_band() {
        let dir = tempfile::tempdir().unwrap();
        let mut loaded = sample();
        loaded.runs.retain(|r| r.seed == 1);
        let plots = write_plots(&summarise(&loaded, None), &loaded, dir.path()).unwrap();
        let svg = &plots[0].files[0];
        assert!(polygons(svg).is_empty(), "{:?}", polygons(svg));
        assert!(!fs::read_to_string(svg).unwrap().contains("band"));
    }

    #[test]
    fn staleness_fractions_cover_every_d_up_to_the_largest() {
        let histogram = BTreeMap::from([(0, 1), (2, 3)]);
        assert_eq!(fractions(&histogram), [0.25, 0.0, 0.75]);
        assert_eq!(fractions(&BTreeMap::new()), [0.0]);
    }
}
