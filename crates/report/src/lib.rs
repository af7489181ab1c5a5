//! Comparison reports: what `timeprest compare` writes and `timeprest plot` rebuilds.
//!
//! A comparison is a directory ([`record`]): a manifest and ordinary run directories. Everything
//! else is derived from it and can be rebuilt at any time by [`write_report`]: statistics over
//! seeds ([`summary`]), the simulator's prediction for each configuration ([`predict`](mod@predict), stored in
//! the manifest when the comparison runs), the plots (SVG and PNG, drawn with plotters) and
//! `report.md` ([`markdown`]). Keeping the derivation separate from running the training means
//! a report can be restyled or extended without training again, and the CLI stays thin.
//!
//! [`partition`] is the study behind `timeprest partition`: a model's split into stages, timed
//! on this machine, and every partition method's predicted throughput, as numbers for the CLI
//! to print.
#![warn(missing_docs)]

mod charts;
pub mod comparison;
mod error;
mod figure;
pub mod markdown;
pub mod partition;
pub mod plots;
pub mod predict;
pub mod record;
pub mod summary;
pub mod timeline;

use std::path::{Path, PathBuf};

use timeprest_train::{check_output_file, write_file_atomically};

pub use comparison::{Comparison, ComparisonObserver, ComparisonPlan};
pub use error::ReportError;
pub use figure::{human_bytes, seconds};
pub use partition::{PartitionRequest, PartitionStudy, study_partition};
pub use plots::{PLOTS_DIR, Plot};
pub use predict::{StagePrediction, predict};
pub use record::{Loaded, Manifest, Outcome, RunEntry, Variant, load, run_dir_name};
pub use summary::{Summary, summarise};

/// What [`write_report`] wrote.
#[derive(Clone, Debug, PartialEq)]
pub struct Written {
    /// `DIR/report.md`, for a comparison directory.
    pub report: Option<PathBuf>,
    /// The plots, in report order.
    pub plots: Vec<Plot>,
}

/// Rebuilds the plots of a comparison or single run directory and, for a comparison, its
/// `report.md`.
pub fn write_report(dir: &Path) -> Result<Written, ReportError> {
    let loaded = load(dir)?;
    let report_path = dir.join(markdown::REPORT_FILE);
    if loaded.manifest.is_some() {
        // Before any plot is drawn.
        check_output_file(&report_path, "the report")?;
    }
    let target = loaded.manifest.as_ref().and_then(|m| m.target_accuracy);
    let summary = summarise(&loaded, target);
    let plots = plots::write_plots(&summary, &loaded, dir)?;
    let report = match &loaded.manifest {
        Some(manifest) => {
            let text = markdown::render(manifest, &loaded, &summary, &plots, dir);
            write_file_atomically(&report_path, text.as_bytes())?;
            Some(report_path)
        }
        None => None,
    };
    Ok(Written { report, plots })
}
