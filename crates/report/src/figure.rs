//! The plotting plumbing: one drawing routine per figure, rendered to both SVG and PNG.
//!
//! Each figure implements [`Figure`] once, generically over plotters' backends, and [`save`]
//! renders it with the SVG backend and with the bitmap backend, so the two files cannot differ
//! in content. The bitmap backend has no system fonts: DejaVu Sans is compiled in
//! (`assets/DejaVuSans.ttf`, see `assets/README.md`) and registered once as `sans-serif`.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::{FontStyle, RGBColor, register_font};
use timeprest_train::output::write_file_atomically_with;

use crate::error::ReportError;

/// The font every figure uses.
pub(crate) const FONT: &str = "sans-serif";

/// DejaVu Sans (Bitstream Vera licence, see `assets/README.md`).
static DEJAVU_SANS: &[u8] = include_bytes!("../assets/DejaVuSans.ttf");

/// What drawing a figure on a backend can fail with.
pub(crate) type DrawResult<DB> =
    Result<(), DrawingAreaErrorKind<<DB as DrawingBackend>::ErrorType>>;

/// A figure: its size and how to draw it on any backend.
pub(crate) trait Figure {
    /// Width and height in pixels.
    fn size(&self) -> (u32, u32);
    /// Draws the figure on `root` (already filled white).
    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> DrawResult<DB>;
}

/// Ten distinguishable colours (Tableau 10), one per policy in the order given.
const PALETTE: [RGBColor; 10] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
    RGBColor(188, 189, 34),
    RGBColor(23, 190, 207),
];

/// The colour of the `index`-th policy.
pub(crate) fn colour(index: usize) -> RGBColor {
    PALETTE[index % PALETTE.len()]
}

/// Registers the embedded font (once per process).
fn register_fonts() {
    static REGISTERED: OnceLock<bool> = OnceLock::new();
    let ok =
        *REGISTERED.get_or_init(|| register_font(FONT, FontStyle::Normal, DEJAVU_SANS).is_ok());
    assert!(ok, "the embedded DejaVu Sans font is a valid TrueType file");
}

/// Writes `figure` as `DIR/NAME.svg` and `DIR/NAME.png`, each atomically and only over a
/// regular file; returns both paths.
pub(crate) fn save(
    figure: &impl Figure,
    dir: &Path,
    name: &str,
) -> Result<[PathBuf; 2], ReportError> {
    register_fonts();
    let svg = dir.join(format!("{name}.svg"));
    write_file_atomically_with(&svg, |temporary| {
        render(SVGBackend::new(temporary, figure.size()), figure, &svg)
    })?;
    let png = dir.join(format!("{name}.png"));
    write_file_atomically_with(&png, |temporary| {
        render(BitMapBackend::new(temporary, figure.size()), figure, &png)
    })?;
    Ok([svg, png])
}

fn render<DB: DrawingBackend>(
    backend: DB,
    figure: &impl Figure,
    path: &Path,
) -> Result<(), ReportError> {
    let root = backend.into_drawing_area();
    root.fill(&WHITE)
        .and_then(|()| figure.draw(&root))
        .and_then(|()| root.present())
        .map_err(|e| ReportError::Plot {
            path: path.display().to_string(),
            cause: e.to_string(),
        })
}

/// Height in pixels of the legend strip under a figure.
const LEGEND_HEIGHT: u32 = 36;

/// Draws a one-line legend (a colour swatch and a label per entry) along the bottom of `root`
/// and returns the area above it. A strip outside the plot never hides data, whatever the curves
/// do.
pub(crate) fn legend_strip<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    entries: &[(String, RGBColor)],
) -> Result<DrawingArea<DB, Shift>, DrawingAreaErrorKind<DB::ErrorType>> {
    let height = root.dim_in_pixel().1;
    let (body, strip) = root.split_vertically(height.saturating_sub(LEGEND_HEIGHT));
    let font = TextStyle::from((FONT, 16));
    let mut x = 24;
    for (label, colour) in entries {
        strip.draw(&Rectangle::new([(x, 11), (x + 16, 25)], colour.filled()))?;
        strip.draw(&Text::new(label.clone(), (x + 22, 10), font.clone()))?;
        let (width, _) = strip.estimate_text_size(label, &font)?;
        x += 22 + width as i32 + 28;
    }
    Ok(body)
}

/// Seconds with as many decimals as a value of this size needs (three significant digits
/// below 100 s): `0.00412`, `0.0412`, `0.412`, `4.12`, `41.2`, `412`.
pub fn seconds(value: f64) -> String {
    let decimals = if value > 0.0 {
        (2 - value.log10().floor() as i32).clamp(0, 6) as usize
    } else {
        0
    };
    format!("{value:.decimals$}")
}

/// `low..high` widened by `fraction` of its span on both sides (and made non-empty).
pub(crate) fn padded(low: f64, high: f64, fraction: f64) -> std::ops::Range<f64> {
    let span = if high > low { high - low } else { 1.0 };
    (low - fraction * span)..(high + fraction * span)
}

/// An axis label formatter showing whole numbers only (category axes centred on integers).
pub(crate) fn whole_numbers(value: &f64) -> String {
    if (value - value.round()).abs() < 1e-9 {
        // `+ 0.0` turns −0 into 0.
        format!("{}", value.round() + 0.0)
    } else {
        String::new()
    }
}

/// A byte count with a binary unit: `512 B`, `1.5 KiB`, `2.00 MiB`.
pub fn human_bytes(bytes: f64) -> String {
    const UNITS: [&str; 4] = ["B", "KiB", "MiB", "GiB"];
    let mut value = bytes;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    match unit {
        0 => format!("{value:.0} B"),
        _ if value >= 100.0 => format!("{value:.0} {}", UNITS[unit]),
        _ => format!("{value:.1} {}", UNITS[unit]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_are_printed_with_binary_units() {
        assert_eq!(human_bytes(512.0), "512 B");
        assert_eq!(human_bytes(1536.0), "1.5 KiB");
        assert_eq!(human_bytes(200.0 * 1024.0 * 1024.0), "200 MiB");
    }

    #[test]
    fn category_axes_label_only_whole_numbers() {
        assert_eq!(whole_numbers(&2.0), "2");
        assert_eq!(whole_numbers(&-0.0), "0");
        assert_eq!(whole_numbers(&2.5), "");
    }

    #[test]
    fn seconds_keep_three_significant_digits() {
        assert_eq!(seconds(0.004123), "0.00412");
        assert_eq!(seconds(0.4123), "0.412");
        assert_eq!(seconds(4.123), "4.12");
        assert_eq!(seconds(412.3), "412");
        assert_eq!(seconds(0.0), "0");
    }

    #[test]
    fn padding_widens_empty_and_normal_ranges() {
        assert_eq!(padded(0.0, 10.0, 0.1), -1.0..11.0);
        assert_eq!(padded(3.0, 3.0, 0.5), 2.5..3.5);
    }
}
