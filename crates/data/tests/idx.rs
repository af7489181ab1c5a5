//! IDX reading: round trips through generated files, and one test per malformed case.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use flate2::Compression;
use flate2::write::GzEncoder;
use tempfile::TempDir;
use timeprest_data::idx::{self, FILE_NAMES, IMAGES_MAGIC, LABELS_MAGIC};
use timeprest_data::{DataError, LoadOptions, load};

/// The bytes of an IDX file.
fn idx_bytes(magic: u32, dims: &[u32], data: &[u8]) -> Vec<u8> {
    let mut out = magic.to_be_bytes().to_vec();
    for d in dims {
        out.extend_from_slice(&d.to_be_bytes());
    }
    out.extend_from_slice(data);
    out
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut enc = GzEncoder::new(Vec::new(), Compression::fast());
    enc.write_all(bytes).unwrap();
    enc.finish().unwrap()
}

/// Writes `bytes` to `dir/base` (plain) or `dir/base.gz` (compressed); returns the path.
fn write(dir: &Path, base: &str, bytes: &[u8], gz: bool) -> PathBuf {
    let path = if gz {
        dir.join(format!("{base}.gz"))
    } else {
        dir.join(base)
    };
    fs::write(&path, if gz { gzip(bytes) } else { bytes.to_vec() }).unwrap();
    path
}

fn images(count: u32, rows: u32, cols: u32) -> Vec<u8> {
    let data: Vec<u8> = (0..count * rows * cols)
        .map(|i| (i * 37 % 256) as u8)
        .collect();
    idx_bytes(IMAGES_MAGIC, &[count, rows, cols], &data)
}

fn labels(values: &[u8]) -> Vec<u8> {
    idx_bytes(LABELS_MAGIC, &[values.len() as u32], values)
}

/// A valid 28×28 data set in a fresh directory: 3 training and 2 test samples.
fn valid_dir(gz: bool) -> TempDir {
    let tmp = tempfile::tempdir().unwrap();
    write(tmp.path(), FILE_NAMES[0], &images(3, 28, 28), gz);
    write(tmp.path(), FILE_NAMES[1], &labels(&[9, 0, 4]), gz);
    write(tmp.path(), FILE_NAMES[2], &images(2, 28, 28), gz);
    write(tmp.path(), FILE_NAMES[3], &labels(&[1, 2]), gz);
    tmp
}

/// Loads `dir` as Fashion-MNIST and expects an error whose message names `file`.
fn load_err(dir: &Path, file: &str) -> DataError {
    let err = load("fashion-mnist", &LoadOptions::in_dir(Some(dir))).unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains(file), "message does not name {file}: {msg}");
    err
}

#[test]
fn idx_round_trip_plain_and_gz() {
    for gz in [false, true] {
        let tmp = tempfile::tempdir().unwrap();
        let pixels: Vec<u8> = (0..=255).chain(0..=255).take(4 * 3 * 2).collect();
        let img = write(
            tmp.path(),
            "img",
            &idx_bytes(IMAGES_MAGIC, &[4, 3, 2], &pixels),
            gz,
        );
        let lab = write(tmp.path(), "lab", &labels(&[3, 1, 4, 1]), gz);
        let read = idx::read_images(&img).unwrap();
        assert_eq!((read.count, read.rows, read.cols), (4, 3, 2));
        assert_eq!(read.pixels, pixels);
        assert_eq!(idx::read_labels(&lab).unwrap(), vec![3, 1, 4, 1]);
    }
}

#[test]
fn load_idx_dir_scales_pixels_and_keeps_order() {
    for gz in [false, true] {
        let tmp = tempfile::tempdir().unwrap();
        write(
            tmp.path(),
            FILE_NAMES[0],
            &idx_bytes(IMAGES_MAGIC, &[2, 1, 2], &[0, 255, 51, 102]),
            gz,
        );
        write(tmp.path(), FILE_NAMES[1], &labels(&[2, 0]), gz);
        write(
            tmp.path(),
            FILE_NAMES[2],
            &idx_bytes(IMAGES_MAGIC, &[1, 1, 2], &[255, 0]),
            gz,
        );
        write(tmp.path(), FILE_NAMES[3], &labels(&[1]), gz);
        let split = idx::load_idx_dir(tmp.path(), "toy", 3, None).unwrap();
        assert_eq!(split.train.name, "toy/train");
        assert_eq!(split.train.shape, [1, 1, 2]);
        assert_eq!(split.train.features, vec![0.0, 1.0, 0.2, 0.4]);
        assert_eq!(split.train.labels, vec![2, 0]);
        assert_eq!(split.test.sample(0), (&[1.0, 0.0][..], &[1][..]));
    }
}

#[test]
fn plain_and_gz_files_mix_in_one_dir() {
    let tmp = tempfile::tempdir().unwrap();
    write(tmp.path(), FILE_NAMES[0], &images(3, 28, 28), true);
    write(tmp.path(), FILE_NAMES[1], &labels(&[9, 0, 4]), false);
    write(tmp.path(), FILE_NAMES[2], &images(2, 28, 28), false);
    write(tmp.path(), FILE_NAMES[3], &labels(&[1, 2]), true);
    let split = load("mnist", &LoadOptions::in_dir(Some(tmp.path()))).unwrap();
    assert_eq!((split.train.len(), split.test.len()), (3, 2));
    assert_eq!(split.train.num_features, 784);
    assert_eq!(split.train.name, "mnist/train");
    assert_eq!(
        split,
        load(
            "fashion-mnist",
            &LoadOptions::in_dir(Some(valid_dir(true).path()))
        )
        .map(|mut s| {
            s.train.name = "mnist/train".into();
            s.test.name = "mnist/test".into();
            s
        })
        .unwrap()
    );
}

#[test]
fn missing_file_names_the_path() {
    let tmp = valid_dir(false);
    fs::remove_file(tmp.path().join(FILE_NAMES[3])).unwrap();
    let err = load_err(tmp.path(), "t10k-labels-idx1-ubyte");
    assert!(matches!(err, DataError::MissingFile { .. }), "{err}");
    let msg = err.to_string();
    assert!(msg.contains(&tmp.path().display().to_string()), "{msg}");
    assert!(msg.contains(".gz") && !msg.contains("apt-get"), "{msg}");
}

#[test]
fn bad_magic_is_reported() {
    let tmp = valid_dir(false);
    // Labels where images belong.
    write(tmp.path(), FILE_NAMES[0], &labels(&[1, 2, 3]), false);
    let err = load_err(tmp.path(), "train-images-idx3-ubyte");
    assert!(
        matches!(
            err,
            DataError::BadMagic {
                expected: IMAGES_MAGIC,
                found: LABELS_MAGIC,
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn gzip_content_without_gz_suffix_gets_a_hint() {
    let tmp = valid_dir(false);
    fs::write(tmp.path().join(FILE_NAMES[1]), gzip(&labels(&[9, 0, 4]))).unwrap();
    let err = load_err(tmp.path(), "train-labels-idx1-ubyte");
    assert!(matches!(err, DataError::BadMagic { .. }), "{err}");
    assert!(err.to_string().contains(".gz suffix"), "{err}");
}

#[test]
fn wrong_image_size_is_a_dimension_mismatch() {
    let tmp = valid_dir(true);
    write(tmp.path(), FILE_NAMES[2], &images(2, 28, 27), true);
    let err = load_err(tmp.path(), "t10k-images-idx3-ubyte.gz");
    assert!(matches!(err, DataError::DimensionMismatch { .. }), "{err}");
    assert!(err.to_string().contains("28x27"), "{err}");
}

#[test]
fn train_and_test_sizes_must_agree() {
    let tmp = tempfile::tempdir().unwrap();
    write(tmp.path(), FILE_NAMES[0], &images(1, 2, 3), false);
    write(tmp.path(), FILE_NAMES[1], &labels(&[0]), false);
    write(tmp.path(), FILE_NAMES[2], &images(1, 3, 2), false);
    write(tmp.path(), FILE_NAMES[3], &labels(&[0]), false);
    let err = idx::load_idx_dir(tmp.path(), "toy", 2, None).unwrap_err();
    assert!(matches!(err, DataError::DimensionMismatch { .. }), "{err}");
    assert!(err.to_string().contains("t10k-images-idx3-ubyte"), "{err}");
}

#[test]
fn empty_or_overflowing_dimensions_are_rejected() {
    let tmp = tempfile::tempdir().unwrap();
    let zero = write(tmp.path(), FILE_NAMES[0], &images(1, 0, 3), false);
    write(tmp.path(), FILE_NAMES[1], &labels(&[0]), false);
    write(tmp.path(), FILE_NAMES[2], &images(1, 1, 3), false);
    write(tmp.path(), FILE_NAMES[3], &labels(&[0]), false);
    let err = idx::load_idx_dir(tmp.path(), "toy", 2, None).unwrap_err();
    assert!(matches!(err, DataError::DimensionMismatch { .. }), "{err}");
    assert!(
        err.to_string().contains(&zero.display().to_string()),
        "{err}"
    );

    // A header claiming u32::MAX^3 bytes: refused without allocating.
    let huge = write(
        tmp.path(),
        "huge",
        &idx_bytes(IMAGES_MAGIC, &[u32::MAX; 3], &[]),
        false,
    );
    let err = idx::read_images(&huge).unwrap_err();
    assert!(matches!(err, DataError::DimensionMismatch { .. }), "{err}");
    // A header claiming 4 GB that is not there: truncated, not an out-of-memory abort.
    let big = write(
        tmp.path(),
        "big",
        &idx_bytes(IMAGES_MAGIC, &[1 << 20, 64, 64], &[1]),
        true,
    );
    let err = idx::read_images(&big).unwrap_err();
    assert!(
        matches!(err, DataError::Truncated { actual: 1, .. }),
        "{err}"
    );
}

#[test]
fn truncated_data_says_expected_actual_and_offset() {
    for gz in [false, true] {
        let tmp = valid_dir(gz);
        let mut bytes = images(3, 28, 28);
        bytes.truncate(16 + 1000);
        let path = write(tmp.path(), FILE_NAMES[0], &bytes, gz);
        let err = load_err(tmp.path(), &path.display().to_string());
        assert!(
            matches!(
                err,
                DataError::Truncated {
                    offset: 16,
                    expected: 2352,
                    actual: 1000,
                    ..
                }
            ),
            "{err}"
        );
        let msg = err.to_string();
        assert!(
            msg.contains("2352") && msg.contains("1000") && msg.contains("16"),
            "{msg}"
        );
    }
}

#[test]
fn truncated_header_is_reported() {
    let tmp = valid_dir(false);
    write(
        tmp.path(),
        FILE_NAMES[1],
        &LABELS_MAGIC.to_be_bytes()[..],
        false,
    );
    let err = load_err(tmp.path(), "train-labels-idx1-ubyte");
    assert!(
        matches!(
            err,
            DataError::Truncated {
                what: "header",
                offset: 4,
                expected: 4,
                actual: 0,
                ..
            }
        ),
        "{err}"
    );
    write(tmp.path(), FILE_NAMES[1], &[0, 0], false);
    let err = load_err(tmp.path(), "train-labels-idx1-ubyte");
    assert!(
        matches!(
            err,
            DataError::Truncated {
                offset: 0,
                actual: 2,
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn trailing_data_is_reported() {
    let tmp = valid_dir(true);
    let mut bytes = labels(&[1, 2]);
    bytes.push(7);
    write(tmp.path(), FILE_NAMES[3], &bytes, true);
    let err = load_err(tmp.path(), "t10k-labels-idx1-ubyte.gz");
    assert!(
        matches!(
            err,
            DataError::TrailingData {
                expected_len: 10,
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn image_and_label_counts_must_match() {
    let tmp = valid_dir(false);
    write(tmp.path(), FILE_NAMES[1], &labels(&[1, 2]), false);
    let err = load_err(tmp.path(), "train-labels-idx1-ubyte");
    assert!(err.to_string().contains("train-images-idx3-ubyte"), "{err}");
    assert!(
        matches!(
            err,
            DataError::CountMismatch {
                images: 3,
                labels: 2,
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn label_out_of_range_is_reported() {
    let tmp = valid_dir(false);
    write(tmp.path(), FILE_NAMES[3], &labels(&[1, 10]), false);
    let err = load_err(tmp.path(), "t10k-labels-idx1-ubyte");
    assert!(
        matches!(
            err,
            DataError::LabelOutOfRange {
                index: 1,
                label: 10,
                num_classes: 10,
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn bad_gzip_is_reported() {
    let tmp = valid_dir(true);
    // Not gzip at all.
    let path = tmp.path().join(format!("{}.gz", FILE_NAMES[0]));
    fs::write(&path, images(3, 28, 28)).unwrap();
    let err = load_err(tmp.path(), &path.display().to_string());
    assert!(matches!(err, DataError::BadGzip { .. }), "{err}");

    // A valid gzip stream cut short, and one with a corrupted body.
    let full = gzip(&images(3, 28, 28));
    for bytes in [full[..full.len() / 2].to_vec(), {
        let mut b = full.clone();
        let n = b.len();
        b[n - 6] ^= 0xff; // inside the CRC-32 trailer
        b
    }] {
        fs::write(&path, &bytes).unwrap();
        let err = load_err(tmp.path(), &path.display().to_string());
        assert!(matches!(err, DataError::BadGzip { .. }), "{err}");
    }
}

#[test]
fn unreadable_path_is_an_io_error() {
    let tmp = tempfile::tempdir().unwrap();
    let err = idx::read_labels(&tmp.path().join("absent")).unwrap_err();
    assert!(matches!(err, DataError::Io { .. }), "{err}");
    assert!(err.to_string().contains("absent"), "{err}");
}
