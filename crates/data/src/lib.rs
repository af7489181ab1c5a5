//! Data sets for timeprest: what the pipeline trains on.
//!
//! Three image-classification data sets, all returned as a [`DataSplit`] of two
//! [`Dataset`]s holding plain `Vec<f32>` features and `Vec<u32>` labels, so the training code
//! can build tensors in whatever library it uses:
//!
//! - `digits`: the UCI optical digits (1,797 8×8 images, 10 classes), embedded in the binary
//!   so it always works offline; split 80/20 with a fixed seed (see [`load_digits`]).
//! - `fashion-mnist`: Zalando's Fashion-MNIST (60,000 + 10,000 28×28 images, 10 classes),
//!   read from IDX files; by default from [`FASHION_MNIST_DEFAULT_DIR`], where Debian's
//!   `dataset-fashion-mnist` package installs them.
//! - `mnist`: LeCun's MNIST in the same IDX format; no Debian package ships it, so it needs a
//!   data directory (default [`MNIST_DEFAULT_DIR`]).
//!
//! [`epoch_order`] gives the deterministic per-epoch sample order. All failures are
//! [`DataError`] values that name the offending file; nothing here panics on bad input.

#![warn(missing_docs)]

mod dataset;
mod digits;
mod error;
pub mod idx;
mod shuffle;

use std::path::Path;

pub use dataset::{DataSplit, Dataset};
pub use digits::{DIGITS_SAMPLES, DIGITS_SPLIT_SEED, load_digits};
pub use error::DataError;
pub use shuffle::{SplitMix64, epoch_order, permutation};

/// Names accepted by [`load`].
pub const DATASET_NAMES: [&str; 3] = ["digits", "fashion-mnist", "mnist"];

/// Where Debian's `dataset-fashion-mnist` package installs the four `*-ubyte.gz` files.
pub const FASHION_MNIST_DEFAULT_DIR: &str = "/usr/share/datasets/fashion-mnist";

/// Default directory for MNIST, following the same convention (no package provides it).
pub const MNIST_DEFAULT_DIR: &str = "/usr/share/datasets/mnist";

/// Side length of (Fashion-)MNIST images.
const MNIST_SIDE: usize = 28;

/// Loads the data set called `name` (one of [`DATASET_NAMES`]).
///
/// `data_dir` is the directory holding the IDX files of `fashion-mnist` or `mnist` (plain or
/// `.gz`, names as in [`idx::FILE_NAMES`]); `None` means the default directory. It is ignored
/// for `digits`, which is embedded.
///
/// # Errors
/// [`DataError::UnknownDataset`] for an unknown name (the message lists the valid ones), or
/// any error of [`idx::load_idx_dir`], with installation advice when the default directory
/// lacks a file.
pub fn load(name: &str, data_dir: Option<&Path>) -> Result<DataSplit, DataError> {
    match name {
        "digits" => load_digits(),
        "fashion-mnist" => load_mnist_like(name, data_dir, Path::new(FASHION_MNIST_DEFAULT_DIR)),
        "mnist" => load_mnist_like(name, data_dir, Path::new(MNIST_DEFAULT_DIR)),
        _ => Err(DataError::UnknownDataset {
            name: name.to_owned(),
        }),
    }
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
