//! `timeprest plot DIR`: redraws the plots (and `report.md`) of a comparison or run directory.
//!
//! Everything is derived from the files `compare` and `train --out` wrote, so a report can be
//! rebuilt, or restyled by a newer timeprest, without training again. A directory that is not
//! a comparison or a run, or whose files cannot be read, is the user's mistake (exit code 2).

use std::path::PathBuf;

use clap::Args;
use timeprest_report::{ReportError, write_report};

use crate::usage_error;

/// Arguments of `timeprest plot`.
#[derive(Args, Debug)]
pub(crate) struct PlotArgs {
    /// A comparison directory (from `compare --out`) or a run directory (from `train --out`).
    #[arg(value_name = "DIR")]
    dir: PathBuf,
}

/// Runs `timeprest plot`.
pub(crate) fn run(args: &PlotArgs) -> anyhow::Result<()> {
    let written = write_report(&args.dir).map_err(|error| match error {
        ReportError::NotARunDirectory { .. }
        | ReportError::Read { .. }
        | ReportError::Parse { .. } => usage_error(error.to_string()),
        other => other.into(),
    })?;
    if let Some(report) = &written.report {
        println!("wrote {}", report.display());
    }
    for plot in &written.plots {
        let [svg, png] = &plot.files;
        println!("wrote {} and {}", svg.display(), png.display());
    }
    Ok(())
}
