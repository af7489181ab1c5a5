//! The one error type of this crate.
//!
//! Everything that can go wrong while loading data is a user error (a missing download, a
//! corrupt or mismatched file, a typo in a data set name), so it is reported as a value of
//! [`DataError`] rather than a panic. Every variant that concerns a file carries its path and
//! prints it, so a message on its own tells the user which file to look at.

use std::io;
use std::path::PathBuf;

use crate::{DATA_DIR_SETS, DATASET_NAMES, TEXT_PREFIX};

/// Why a data set could not be loaded or used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DataError {
    /// The requested data set name is not one of [`DATASET_NAMES`] nor `text:PATH`.
    #[error(
        "unknown dataset {name:?}; valid names are: {}, {TEXT_PREFIX}PATH",
        DATASET_NAMES.join(", ")
    )]
    UnknownDataset {
        /// The name that was asked for.
        name: String,
    },

    /// Neither the plain nor the `.gz` version of a required file exists.
    #[error("missing data file {} (also looked for {}.gz){hint}", .path.display(), .path.display())]
    MissingFile {
        /// The plain (uncompressed) path that was looked for.
        path: PathBuf,
        /// Extra advice, starting with `"; "`, or empty.
        hint: String,
    },

    /// The file exists but could not be read.
    #[error("cannot read {}: {source}", .path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying I/O error.
        source: io::Error,
    },

    /// A `.gz` file is not a valid gzip stream (bad header, corrupt or cut-off data, CRC
    /// mismatch).
    #[error("{}: not a valid gzip stream: {source}", .path.display())]
    BadGzip {
        /// The file.
        path: PathBuf,
        /// The decoder's error.
        source: io::Error,
    },

    /// An IDX file starts with the wrong magic number.
    #[error(
        "{}: bad magic number 0x{found:08x} for an IDX {what}, expected 0x{expected:08x}{}",
        .path.display(),
        gzip_hint(*.found)
    )]
    BadMagic {
        /// The file.
        path: PathBuf,
        /// What the file should be: `"image file"` or `"label file"`.
        what: &'static str,
        /// The magic number this kind of file must have.
        expected: u32,
        /// The first four bytes of the file, big-endian.
        found: u32,
    },

    /// An IDX header declares dimensions that do not fit what is expected (wrong image size,
    /// zero-sized images, train and test image sizes that differ, sizes that overflow).
    #[error("{}: {detail}", .path.display())]
    DimensionMismatch {
        /// The file whose header is wrong.
        path: PathBuf,
        /// What is wrong.
        detail: String,
    },

    /// A file ends before the data its header promises.
    #[error(
        "{}: truncated {what}: expected {expected} bytes at offset {offset}, found only {actual}",
        .path.display()
    )]
    Truncated {
        /// The file (for a `.gz` file, offsets and sizes are in the decompressed stream).
        path: PathBuf,
        /// Which part was cut off, e.g. `"header"` or `"pixel data"`.
        what: &'static str,
        /// Offset where the part starts.
        offset: u64,
        /// Bytes the part should have.
        expected: u64,
        /// Bytes actually present.
        actual: u64,
    },

    /// A file has more bytes than its header accounts for.
    #[error(
        "{}: unexpected data after the {expected_len} bytes that the header describes",
        .path.display()
    )]
    TrailingData {
        /// The file.
        path: PathBuf,
        /// Length the header implies.
        expected_len: u64,
    },

    /// An image file and its label file disagree on the number of samples.
    #[error(
        "{} holds {images} images but {} holds {labels} labels",
        .images_path.display(),
        .labels_path.display()
    )]
    CountMismatch {
        /// The image file.
        images_path: PathBuf,
        /// Number of images it holds.
        images: usize,
        /// The label file.
        labels_path: PathBuf,
        /// Number of labels it holds.
        labels: usize,
    },

    /// A label is not below the number of classes of the data set.
    #[error(
        "{}: label {label} of sample {index} is out of range (the dataset has {num_classes} \
         classes)",
        .path.display()
    )]
    LabelOutOfRange {
        /// The label (or CSV) file.
        path: PathBuf,
        /// Index of the sample in that file.
        index: usize,
        /// The offending label.
        label: u32,
        /// Number of classes.
        num_classes: usize,
    },

    /// A file's content is wrong at a given byte offset (an empty file, a label out of range
    /// in a binary record, text that is not UTF-8).
    #[error("{}: at byte offset {offset}: {detail}", .path.display())]
    Malformed {
        /// The file (for a `.gz` file, offsets are in the decompressed stream).
        path: PathBuf,
        /// Byte offset of the problem.
        offset: u64,
        /// What is wrong.
        detail: String,
    },

    /// A text file too short to give both the training and the test part one window.
    #[error(
        "{}: {chars} characters are too few for windows of {seq_len} characters: the training \
         part (the first 90%) and the test part (the last 10%) each need {seq_len} + 1, so the \
         file needs at least {needed}",
        .path.display()
    )]
    TextTooShort {
        /// The file.
        path: PathBuf,
        /// Characters the file holds.
        chars: usize,
        /// Characters per window.
        seq_len: usize,
        /// Characters the file would need.
        needed: usize,
    },

    /// A malformed row in a CSV file.
    #[error("{}: line {line}: {detail}", .path.display())]
    BadCsv {
        /// The file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// What is wrong.
        detail: String,
    },

    /// The parts handed to [`Dataset::new`](crate::Dataset::new) do not fit together.
    #[error("dataset {dataset}: {detail}")]
    Inconsistent {
        /// The data set's name.
        dataset: String,
        /// What does not fit.
        detail: String,
    },

    /// A data directory was given for a data set that reads none (it would be ignored).
    #[error(
        "--data-dir {}: data set `{dataset}` reads no data directory (digits is embedded, \
         synthetic is generated, text:PATH reads PATH), so it would be ignored; leave out \
         --data-dir, or choose a data set that reads it: {}",
        .dir.display(),
        DATA_DIR_SETS.join(", ")
    )]
    UnusedDataDir {
        /// The data set's name.
        dataset: String,
        /// The directory given.
        dir: PathBuf,
    },

    /// A sample index is not below the length of the data set.
    #[error("dataset {dataset}: sample index {index} is out of range for {len} samples")]
    IndexOutOfRange {
        /// The data set's name.
        dataset: String,
        /// The offending index.
        index: usize,
        /// The data set's length.
        len: usize,
    },
}

/// A remark for [`DataError::BadMagic`] when the bytes look like a gzip header, which is what
/// happens when a compressed file lost its `.gz` suffix.
fn gzip_hint(found: u32) -> &'static str {
    if found >> 16 == 0x1f8b {
        " (the file looks gzip-compressed: give it a .gz suffix)"
    } else {
        ""
    }
}
