//! Data sets for timeprest: what the pipeline trains on.
//!
//! Image-classification data sets and a character-level text set, all returned as a
//! [`DataSplit`] of two [`Dataset`]s holding plain `Vec<f32>` features and `Vec<u32>` labels,
//! so the training code can build tensors in whatever library it uses:
//!
//! - `digits`: the UCI optical digits (1,797 8×8 images, 10 classes), embedded in the binary
//!   so it always works offline; split 80/20 with a fixed seed (see [`load_digits`]).
//! - `fashion-mnist`: Zalando's Fashion-MNIST (60,000 + 10,000 28×28 images, 10 classes),
//!   read from IDX files; by default from [`FASHION_MNIST_DEFAULT_DIR`], where Debian's
//!   `dataset-fashion-mnist` package installs them.
//! - `mnist`: LeCun's MNIST in the same IDX format; no Debian package ships it, so it needs a
//!   data directory (default [`MNIST_DEFAULT_DIR`]).
//! - `mnist-csv`: MNIST as CSV (label, then 784 pixels per row), see [`load_mnist_csv`].
//! - `cifar10`, `cifar100` (fine labels), `cifar100-coarse`: the official binary versions
//!   (see [`cifar`]; `assets/README.md` says where to get them), default directories
//!   [`CIFAR10_DEFAULT_DIR`] and [`CIFAR100_DEFAULT_DIR`].
//! - `synthetic`: seeded 3×32×32 images of 10 classes, no file needed ([`load_synthetic`]).
//! - `text:PATH`: character-level language modelling on any UTF-8 file, windows of
//!   [`LoadOptions::seq_len`] characters with the next character at every position as labels
//!   ([`load_text`]).
//!
//! Normalisation is per data set: the grey-scale sets are scaled to `[0, 1]`, the CIFAR sets
//! standardised per channel with their usual mean and standard deviation, `synthetic` is
//! generated roughly standardised. [`Augment`] adds the standard random crop and flip.
//!
//! [`epoch_order`] gives the deterministic per-epoch sample order. All failures are
//! [`DataError`] values that name the offending file; nothing here panics on bad input.

#![warn(missing_docs)]

mod augment;
pub mod cifar;
mod csv;
mod dataset;
mod digits;
mod error;
pub mod idx;
mod shuffle;
mod synthetic;
mod text;

use std::path::Path;

pub use augment::{Augment, CROP_PADDING};
pub use cifar::CifarKind;
pub use csv::{CSV_SPLIT_SEED, MNIST_CSV_FILES, load_mnist_csv};
pub use dataset::{DataSplit, Dataset};
pub use digits::{DIGITS_SAMPLES, DIGITS_SPLIT_SEED, load_digits};
pub use error::DataError;
pub use shuffle::{SplitMix64, epoch_order, permutation};
pub use synthetic::{
    SYNTHETIC_CLASSES, SYNTHETIC_SEED, SYNTHETIC_SHAPE, SYNTHETIC_TEST, SYNTHETIC_TRAIN,
    load_synthetic,
};
pub use text::{DEFAULT_SEQ_LEN, TEXT_PREFIX, load_text};

/// Names of the built-in data sets accepted by [`load`] (which also takes `text:PATH`).
pub const DATASET_NAMES: [&str; 8] = [
    "digits",
    "fashion-mnist",
    "mnist",
    "mnist-csv",
    "cifar10",
    "cifar100",
    "cifar100-coarse",
    "synthetic",
];

/// Where Debian's `dataset-fashion-mnist` package installs the four `*-ubyte.gz` files.
pub const FASHION_MNIST_DEFAULT_DIR: &str = "/usr/share/datasets/fashion-mnist";

/// Default directory for MNIST, following the same convention (no package provides it).
pub const MNIST_DEFAULT_DIR: &str = "/usr/share/datasets/mnist";

/// Default directory of CIFAR-10's binary files (no package provides them).
pub const CIFAR10_DEFAULT_DIR: &str = "/usr/share/datasets/cifar-10";

/// Default directory of CIFAR-100's binary files (no package provides them).
pub const CIFAR100_DEFAULT_DIR: &str = "/usr/share/datasets/cifar-100";

/// Side length of (Fashion-)MNIST images.
const MNIST_SIDE: usize = 28;

/// Where a data set's files are and how a text is cut into samples: what `--data-dir` and
/// `--seq-len` say.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LoadOptions<'a> {
    /// The directory holding the IDX files of `fashion-mnist` or `mnist` (plain or `.gz`,
    /// names as in [`idx::FILE_NAMES`]) or the CIFAR binary files, or the CSV file or
    /// directory of `mnist-csv`; `None` means the default location. Ignored by `digits`,
    /// `synthetic` and `text:PATH`.
    pub data_dir: Option<&'a Path>,
    /// Characters per sample of `text:PATH` (ignored by the image sets).
    pub seq_len: usize,
}

impl<'a> LoadOptions<'a> {
    /// Files in `data_dir` (`None`: the default location), texts cut into windows of
    /// [`DEFAULT_SEQ_LEN`].
    pub fn in_dir(data_dir: Option<&'a Path>) -> Self {
        Self {
            data_dir,
            seq_len: DEFAULT_SEQ_LEN,
        }
    }
}

impl Default for LoadOptions<'_> {
    fn default() -> Self {
        Self::in_dir(None)
    }
}

/// The data sets that read their files from [`LoadOptions::data_dir`] (`--data-dir`). The
/// others ignore it: `digits` is embedded, `synthetic` generated and `text:PATH` reads `PATH`.
pub const DATA_DIR_SETS: [&str; 6] = [
    "fashion-mnist",
    "mnist",
    "mnist-csv",
    "cifar10",
    "cifar100",
    "cifar100-coarse",
];

/// Checks that a data directory, if given, is one data set `name` reads.
///
/// # Errors
/// [`DataError::UnusedDataDir`] when `data_dir` is given for a data set that would ignore it:
/// silently training on something other than the files the user pointed at is worse than
/// refusing before anything starts.
pub fn check_data_dir(name: &str, data_dir: Option<&Path>) -> Result<(), DataError> {
    match data_dir {
        Some(dir) if !DATA_DIR_SETS.contains(&name) => Err(DataError::UnusedDataDir {
            dataset: name.to_owned(),
            dir: dir.to_owned(),
        }),
        _ => Ok(()),
    }
}

/// Loads the data set called `name`: one of [`DATASET_NAMES`], or `text:PATH` for the
/// character-level language-modelling set of the file `PATH` (see [`load_text`]).
///
/// # Errors
/// [`DataError::UnknownDataset`] for an unknown name (the message lists the valid ones), or
/// any error of the reader, with installation advice when a default directory lacks a file.
pub fn load(name: &str, options: &LoadOptions<'_>) -> Result<DataSplit, DataError> {
    let data_dir = options.data_dir;
    if let Some(path) = name.strip_prefix(TEXT_PREFIX).filter(|p| !p.is_empty()) {
        return load_text(Path::new(path), options.seq_len);
    }
    match name {
        "digits" => load_digits(),
        "fashion-mnist" => load_mnist_like(name, data_dir, Path::new(FASHION_MNIST_DEFAULT_DIR)),
        "mnist" => load_mnist_like(name, data_dir, Path::new(MNIST_DEFAULT_DIR)),
        "mnist-csv" => load_mnist_csv(data_dir),
        "cifar10" => load_cifar_like(CifarKind::Cifar10, data_dir),
        "cifar100" => load_cifar_like(CifarKind::Cifar100Fine, data_dir),
        "cifar100-coarse" => load_cifar_like(CifarKind::Cifar100Coarse, data_dir),
        "synthetic" => load_synthetic(),
        _ => Err(DataError::UnknownDataset {
            name: name.to_owned(),
        }),
    }
}

/// Loads a CIFAR data set from `data_dir`, or from its default directory with advice on where
/// to get the files.
fn load_cifar_like(kind: CifarKind, data_dir: Option<&Path>) -> Result<DataSplit, DataError> {
    let default = match kind {
        CifarKind::Cifar10 => CIFAR10_DEFAULT_DIR,
        _ => CIFAR100_DEFAULT_DIR,
    };
    let title = match kind {
        CifarKind::Cifar10 => "CIFAR-10",
        _ => "CIFAR-100",
    };
    let hint = format!(
        "; download the \"binary version\" of {title} from \
         https://www.cs.toronto.edu/~kriz/cifar.html, extract it into {default} (or anywhere, \
         and pass --data-dir DIR)"
    );
    cifar::load_cifar(data_dir.unwrap_or(Path::new(default)), kind, &hint)
}

/// Loads a 28×28, 10-class IDX data set from `data_dir`, or from `default_dir` with advice on
/// how to fill it if a file is missing.
fn load_mnist_like(
    name: &str,
    data_dir: Option<&Path>,
    default_dir: &Path,
) -> Result<DataSplit, DataError> {
    let hint = match (data_dir, name) {
        (Some(_), _) => String::new(),
        (None, "fashion-mnist") => {
            "; install it with `apt-get install dataset-fashion-mnist`, or pass --data-dir DIR"
                .to_owned()
        }
        (None, _) => format!(
            "; no package provides {name}: put its four IDX files (plain or .gz) in {}, or pass \
             --data-dir DIR",
            default_dir.display()
        ),
    };
    let dir = data_dir.unwrap_or(default_dir);
    idx::load_idx_dir_with_hint(dir, name, 10, Some([MNIST_SIDE, MNIST_SIDE]), &hint)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_names_load_the_file_with_the_sequence_length() {
        let options = LoadOptions {
            data_dir: None,
            seq_len: 16,
        };
        let split = load("text:/usr/share/common-licenses/GPL-3", &options).unwrap();
        assert_eq!(split.train.shape, [1, 1, 16]);
        assert_eq!(split.train.targets_per_sample, 16);
        let err = load("text:", &options).unwrap_err();
        assert!(matches!(err, DataError::UnknownDataset { .. }), "{err}");
        assert!(err.to_string().contains("text:PATH"), "{err}");
    }

    #[test]
    fn exactly_the_data_sets_that_use_a_data_dir_fail_on_a_missing_one() {
        let missing = Path::new("/nonexistent/timeprest-data-dir");
        let options = LoadOptions::in_dir(Some(missing));
        let names = DATASET_NAMES
            .iter()
            .map(|name| (*name).to_owned())
            .chain(["text:/usr/share/common-licenses/GPL-3".to_owned()]);
        for name in names {
            let loaded = load(&name, &options);
            assert_eq!(
                DATA_DIR_SETS.contains(&name.as_str()),
                loaded.is_err(),
                "{name}: {:?}",
                loaded.err()
            );
            let checked = check_data_dir(&name, Some(missing));
            assert_eq!(loaded.is_err(), checked.is_ok(), "{name}: {checked:?}");
            assert!(check_data_dir(&name, None).is_ok());
        }
        let message = check_data_dir("digits", Some(missing))
            .unwrap_err()
            .to_string();
        assert!(
            message.starts_with("--data-dir /nonexistent/timeprest-data-dir: data set `digits`"),
            "{message}"
        );
    }

    #[test]
    fn missing_default_dir_gives_install_advice() {
        let tmp = tempfile::tempdir().unwrap();
        let default = tmp.path().join("nowhere");
        let err = load_mnist_like("fashion-mnist", None, &default).unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, DataError::MissingFile { .. }), "{msg}");
        assert!(
            msg.contains("apt-get install dataset-fashion-mnist"),
            "{msg}"
        );
        assert!(msg.contains("--data-dir"), "{msg}");
        assert!(msg.contains("nowhere/train-images-idx3-ubyte"), "{msg}");

        let msg = load_mnist_like("mnist", None, &default)
            .unwrap_err()
            .to_string();
        assert!(
            msg.contains("--data-dir") && msg.contains("nowhere"),
            "{msg}"
        );

        // An explicit directory gets no package advice.
        let msg = load_mnist_like("fashion-mnist", Some(&default), Path::new("/x"))
            .unwrap_err()
            .to_string();
        assert!(!msg.contains("apt-get") && msg.contains("nowhere"), "{msg}");
    }
}
