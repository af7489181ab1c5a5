//! The UCI optical digits, embedded in the binary.
//!
//! 1,797 grey-scale 8×8 images of handwritten digits (10 classes), the copy scikit-learn ships
//! as `digits.csv.gz` (see `assets/README.md` for source and licence). It is small enough
//! (57 KB compressed) to embed with `include_bytes!`, so tests, examples and quick runs need
//! no download and no network.
//!
//! The file has no train/test split, so one is fixed here: the samples are permuted with
//! [`permutation`](crate::permutation)`(1797, DIGITS_SPLIT_SEED)`, and the last 20% of that
//! order (359 samples) is the test set, the first 1,438 the training set; each part then keeps
//! the file's original order. The split seed is a constant, independent of any training seed,
//! so every run and every tool sees the same test set.

use std::io::Read;
use std::path::Path;

use flate2::read::GzDecoder;

use crate::csv::{CsvLayout, parse_csv, split_indices};
use crate::{DataError, DataSplit};

/// The embedded `digits.csv.gz`.
static DIGITS_CSV_GZ: &[u8] = include_bytes!("../assets/digits.csv.gz");

/// How error messages name the embedded file.
const ORIGIN: &str = "<embedded>/crates/data/assets/digits.csv.gz";

/// Number of samples in the digits data set.
pub const DIGITS_SAMPLES: usize = 1797;
/// Seed of the permutation that splits digits into train and test (fixed: not a training
/// seed).
pub const DIGITS_SPLIT_SEED: u64 = 0;
/// Rows of 64 pixel values in `0..=16` (8×8) followed by a label in `0..10`.
const LAYOUT: CsvLayout = CsvLayout {
    shape: [1, 8, 8],
    max_pixel: 16,
    label_first: false,
    classes: 10,
};

/// Loads the embedded digits as `digits/train` (1,438 samples) and `digits/test` (359),
/// shape `[1, 8, 8]`, pixels scaled to `[0, 1]`.
///
/// # Errors
/// Only if the embedded file were corrupt ([`DataError::BadGzip`], [`DataError::BadCsv`],
/// [`DataError::LabelOutOfRange`]); the tests make sure it is not.
pub fn load_digits() -> Result<DataSplit, DataError> {
    let origin = Path::new(ORIGIN);
    let mut text = String::new();
    GzDecoder::new(DIGITS_CSV_GZ)
        .read_to_string(&mut text)
        .map_err(|source| DataError::BadGzip {
            path: origin.to_owned(),
            source,
        })?;
    let all = parse_csv(&text, origin, LAYOUT, "digits")?;
    let (train_idx, test_idx) = split_indices(all.len(), DIGITS_SPLIT_SEED);
    Ok(DataSplit {
        train: all.select("digits/train", &train_idx)?,
        test: all.select("digits/test", &test_idx)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Pixels per image (8×8).
    const PIXELS: usize = 64;

    #[test]
    fn split_is_80_20_and_disjoint() {
        let (train, test) = split_indices(DIGITS_SAMPLES, DIGITS_SPLIT_SEED);
        assert_eq!((train.len(), test.len()), (1438, 359));
        let mut all: Vec<usize> = train.iter().chain(&test).copied().collect();
        all.sort_unstable();
        assert_eq!(all, (0..DIGITS_SAMPLES).collect::<Vec<_>>());
    }

    #[test]
    fn malformed_csv_rows_are_errors_naming_the_file() {
        let origin = Path::new("some/digits.csv");
        let row = |pixel: &str, label: &str| {
            let mut f = vec!["0"; PIXELS];
            f[3] = pixel;
            f.push(label);
            f.join(",")
        };
        let parse = |text: &str| parse_csv(text, origin, LAYOUT, "digits");
        let ok = parse(&format!("{}\n{}\n", row("16", "9"), row("0", "0"))).unwrap();
        assert_eq!(ok.len(), 2);
        assert_eq!(ok.sample(0).0[3], 1.0);
        for (text, line) in [
            (format!("{}\n{}", row("1", "1"), row("17", "1")), 2),
            (row("x", "1"), 1),
            (row("1", "one"), 1),
            ("1,2,3".to_owned(), 1),
        ] {
            let err = parse(&text).unwrap_err();
            assert!(
                matches!(err, DataError::BadCsv { line: l, .. } if l == line),
                "{err}"
            );
            assert!(err.to_string().contains("some/digits.csv"), "{err}");
        }
        let err = parse(&row("1", "10")).unwrap_err();
        assert!(
            matches!(err, DataError::LabelOutOfRange { label: 10, .. }),
            "{err}"
        );
        assert!(err.to_string().contains("some/digits.csv"), "{err}");
    }
}
