//! Aligned text tables, shared by `simulate` and `analyze`.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use timeprest_policy::VersionSummary;

/// A title line and one aligned row per stage of `summary`.
pub(crate) fn version_table(summary: &VersionSummary) -> String {
    let [first, last] = summary.steady_minibatches;
    let mut out = format!(
        "policy {} on {}: W={}, N={}, {} mini-batches (steady state: mini-batches {first}..{last})\n",
        summary.policy, summary.schedule, summary.stages, summary.microbatches, summary.minibatches
    );
    let header = [
        "stage",
        "stored versions",
        "max in flight",
        "d: count (all backwards)",
        "d: count (steady state)",
    ];
    let body: Vec<Vec<String>> = (0..summary.stages as usize)
        .map(|s| {
            vec![
                format!("S{}", s + 1),
                summary.stored_versions[s].to_string(),
                summary.max_microbatches_in_flight[s].to_string(),
                histogram_cell(&summary.staleness[s]),
                histogram_cell(&summary.steady_staleness[s]),
            ]
        })
        .collect();
    out.push_str(&aligned(&header, &body));
    out
}

/// `{d:count, …}` of a staleness histogram.
fn histogram_cell(histogram: &BTreeMap<u64, u32>) -> String {
    let entries: Vec<String> = histogram
        .iter()
        .map(|(d, count)| format!("{d}:{count}"))
        .collect();
    format!("{{{}}}", entries.join(", "))
}

/// Left-aligned columns separated by two spaces, with a header row.
pub(crate) fn aligned(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let header: Vec<String> = header.iter().map(|h| h.to_string()).collect();
    let mut out = String::new();
    for row in std::iter::once(&header).chain(rows) {
        let mut line = String::new();
        for (cell, width) in row.iter().zip(&widths) {
            write!(line, "{cell:<width$}  ").unwrap();
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_align_and_histograms_read_like_the_docs() {
        let table = aligned(&["a", "bb"], &[vec!["xyz".into(), "1".into()]]);
        assert_eq!(table, "a    bb\nxyz  1\n");
        assert_eq!(
            histogram_cell(&BTreeMap::from([(0, 25), (1, 50)])),
            "{0:25, 1:50}"
        );
    }
}
