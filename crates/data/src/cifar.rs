//! Readers for the binary versions of CIFAR-10 and CIFAR-100.
//!
//! The official "binary version" archives hold fixed-size records, no header: CIFAR-10 records
//! are 1 label byte + 3,072 pixel bytes (`data_batch_1.bin` … `data_batch_5.bin`,
//! `test_batch.bin`, in `cifar-10-batches-bin/`), CIFAR-100 records 1 coarse-label byte + 1
//! fine-label byte + 3,072 pixel bytes (`train.bin`, `test.bin`, in `cifar-100-binary/`).
//! Pixels are the red, then green, then blue 32×32 plane, row-major: exactly the `[c, h, w]`
//! sample layout of [`Dataset`], so a record is copied, not rearranged.
//!
//! Files are read whole (the largest is 150 MB), plain or `.gz`; a file that is empty, whose
//! length is not a whole number of records, or that holds a label out of range is an error
//! naming the file, the byte offset and the problem. Features are normalised per channel with
//! the data set's usual mean and standard deviation (see [`CIFAR10_MEAN`] …), the standard
//! preprocessing of CIFAR training recipes.

use std::path::{Path, PathBuf};

use crate::csv::read_file;
use crate::idx::find_file;
use crate::{DataError, DataSplit, Dataset};

/// Pixels per CIFAR image (3 × 32 × 32).
pub const CIFAR_PIXELS: usize = 3 * 32 * 32;

/// Per-channel mean of CIFAR-10's training images (pixels scaled to `[0, 1]`).
pub const CIFAR10_MEAN: [f32; 3] = [0.4914, 0.4822, 0.4465];
/// Per-channel standard deviation of CIFAR-10's training images.
pub const CIFAR10_STD: [f32; 3] = [0.2470, 0.2435, 0.2616];
/// Per-channel mean of CIFAR-100's training images.
pub const CIFAR100_MEAN: [f32; 3] = [0.5071, 0.4865, 0.4409];
/// Per-channel standard deviation of CIFAR-100's training images.
pub const CIFAR100_STD: [f32; 3] = [0.2673, 0.2564, 0.2762];

/// Which CIFAR and which label.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CifarKind {
    /// CIFAR-10 (10 classes).
    Cifar10,
    /// CIFAR-100 with its 100 fine labels.
    Cifar100Fine,
    /// CIFAR-100 with its 20 coarse labels (super-classes).
    Cifar100Coarse,
}

impl CifarKind {
    /// Label bytes before the pixels of each record.
    fn label_bytes(self) -> usize {
        match self {
            CifarKind::Cifar10 => 1,
            CifarKind::Cifar100Fine | CifarKind::Cifar100Coarse => 2,
        }
    }

    /// Bytes per record.
    pub fn record_len(self) -> usize {
        self.label_bytes() + CIFAR_PIXELS
    }

    /// Which label byte of a record is used.
    fn label_index(self) -> usize {
        match self {
            CifarKind::Cifar10 | CifarKind::Cifar100Coarse => 0,
            CifarKind::Cifar100Fine => 1,
        }
    }

    /// Number of classes.
    pub fn num_classes(self) -> usize {
        match self {
            CifarKind::Cifar10 => 10,
            CifarKind::Cifar100Fine => 100,
            CifarKind::Cifar100Coarse => 20,
        }
    }

    /// The `--dataset` name.
    pub fn name(self) -> &'static str {
        match self {
            CifarKind::Cifar10 => "cifar10",
            CifarKind::Cifar100Fine => "cifar100",
            CifarKind::Cifar100Coarse => "cifar100-coarse",
        }
    }

    /// Base names of the training files and of the test file.
    pub fn file_names(self) -> (Vec<String>, &'static str) {
        match self {
            CifarKind::Cifar10 => (
                (1..=5).map(|i| format!("data_batch_{i}.bin")).collect(),
                "test_batch.bin",
            ),
            _ => (vec!["train.bin".to_owned()], "test.bin"),
        }
    }

    /// The sub-directory the official archive extracts to.
    fn archive_dir(self) -> &'static str {
        match self {
            CifarKind::Cifar10 => "cifar-10-batches-bin",
            _ => "cifar-100-binary",
        }
    }

    /// Per-channel mean and standard deviation used to normalise.
    pub fn normalisation(self) -> ([f32; 3], [f32; 3]) {
        match self {
            CifarKind::Cifar10 => (CIFAR10_MEAN, CIFAR10_STD),
            _ => (CIFAR100_MEAN, CIFAR100_STD),
        }
    }
}

/// Parses the records of one file: features (normalised) and labels appended to the vectors.
///
/// # Errors
/// [`DataError::Malformed`] for an empty file or a label out of range (with the label byte's
/// offset); [`DataError::Truncated`] when the last record is incomplete.
pub fn parse_records(
    bytes: &[u8],
    path: &Path,
    kind: CifarKind,
    features: &mut Vec<f32>,
    labels: &mut Vec<u32>,
) -> Result<(), DataError> {
    let record = kind.record_len();
    if bytes.is_empty() {
        return Err(DataError::Malformed {
            path: path.to_owned(),
            offset: 0,
            detail: format!("empty file, expected records of {record} bytes"),
        });
    }
    let whole = bytes.len() / record * record;
    if whole != bytes.len() {
        return Err(DataError::Truncated {
            path: path.to_owned(),
            what: "record",
            offset: whole as u64,
            expected: record as u64,
            actual: (bytes.len() - whole) as u64,
        });
    }
    let (mean, std) = kind.normalisation();
    let plane = CIFAR_PIXELS / 3;
    features.reserve(bytes.len() / record * CIFAR_PIXELS);
    for (i, rec) in bytes.chunks_exact(record).enumerate() {
        let label = rec[kind.label_index()];
        if usize::from(label) >= kind.num_classes() {
            return Err(DataError::Malformed {
                path: path.to_owned(),
                offset: (i * record + kind.label_index()) as u64,
                detail: format!(
                    "label {label} of record {i} is out of range ({} has {} classes)",
                    kind.name(),
                    kind.num_classes()
                ),
            });
        }
        labels.push(u32::from(label));
        let pixels = &rec[kind.label_bytes()..];
        features.extend(
            pixels
                .iter()
                .enumerate()
                .map(|(j, &p)| (f32::from(p) / 255.0 - mean[j / plane]) / std[j / plane]),
        );
    }
    Ok(())
}

/// Reads files `paths` as one data set called `name`.
fn read_part(paths: &[PathBuf], kind: CifarKind, name: &str) -> Result<Dataset, DataError> {
    let (mut features, mut labels) = (Vec::new(), Vec::new());
    for path in paths {
        parse_records(&read_file(path)?, path, kind, &mut features, &mut labels)?;
    }
    Dataset::new(name, [3, 32, 32], kind.num_classes(), features, labels)
}

/// Loads a CIFAR data set from `dir` (or from the archive's sub-directory inside it), each
/// file plain or `.gz`.
///
/// # Errors
/// [`DataError::MissingFile`] (with `hint`) if a file is absent, or any error of
/// [`parse_records`].
pub fn load_cifar(dir: &Path, kind: CifarKind, hint: &str) -> Result<DataSplit, DataError> {
    let nested = dir.join(kind.archive_dir());
    let dir = if nested.is_dir() {
        nested.as_path()
    } else {
        dir
    };
    let (train_names, test_name) = kind.file_names();
    let train_paths = train_names
        .iter()
        .map(|base| find_file(dir, base, hint))
        .collect::<Result<Vec<_>, _>>()?;
    let test_path = find_file(dir, test_name, hint)?;
    Ok(DataSplit {
        train: read_part(&train_paths, kind, &format!("{}/train", kind.name()))?,
        test: read_part(&[test_path], kind, &format!("{}/test", kind.name()))?,
    })
}
