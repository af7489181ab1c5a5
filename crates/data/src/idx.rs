//! Readers for the IDX format of MNIST and Fashion-MNIST.
//!
//! IDX is a big-endian header (magic number, then one `u32` per dimension) followed by raw
//! bytes. The files come either plain or gzip-compressed (the Debian package
//! `dataset-fashion-mnist` ships `.gz`), so both are read through one streaming path: the
//! header is decoded first, then exactly the bytes it promises are read, then one more read
//! checks that nothing follows. Streaming gives precise offsets for truncation errors, lets
//! gzip verify its checksum, and means a lying header cannot make us allocate more than the
//! file really holds. Every error names the file it is about.

use std::fs::File;
use std::io::{BufReader, Read};
use std::path::{Path, PathBuf};

use flate2::read::MultiGzDecoder;

use crate::{DataError, DataSplit, Dataset};

/// Magic number of an IDX file of unsigned bytes with 3 dimensions (images).
pub const IMAGES_MAGIC: u32 = 0x0000_0803;
/// Magic number of an IDX file of unsigned bytes with 1 dimension (labels).
pub const LABELS_MAGIC: u32 = 0x0000_0801;

/// Base names of the training images, training labels, test images and test labels, as in
/// the original MNIST distribution; each may also carry a `.gz` suffix.
pub const FILE_NAMES: [&str; 4] = [
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
];

/// The contents of an IDX image file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IdxImages {
    /// Number of images.
    pub count: usize,
    /// Rows per image.
    pub rows: usize,
    /// Columns per image.
    pub cols: usize,
    /// `count * rows * cols` pixels, image-major then row-major.
    pub pixels: Vec<u8>,
}

/// Largest buffer reserved up front from a header's claim; beyond it the buffer grows only as
/// real data arrives.
const MAX_PREALLOC: usize = 64 << 20;

/// A file being read front to back, remembering where it is for error messages.
struct IdxReader {
    path: PathBuf,
    gz: bool,
    inner: Box<dyn Read>,
    offset: u64,
}

impl IdxReader {
    /// Opens `path`, decompressing on the fly if its name ends in `.gz`.
    fn open(path: &Path) -> Result<Self, DataError> {
        let file = File::open(path).map_err(|source| DataError::Io {
            path: path.to_owned(),
            source,
        })?;
        let gz = path.extension().is_some_and(|e| e == "gz");
        let inner: Box<dyn Read> = if gz {
            Box::new(MultiGzDecoder::new(BufReader::new(file)))
        } else {
            Box::new(BufReader::new(file))
        };
        Ok(Self {
            path: path.to_owned(),
            gz,
            inner,
            offset: 0,
        })
    }

    /// Maps a read error to the right variant: in a `.gz` file it is the compressed stream
    /// that is broken.
    fn read_error(&self, source: std::io::Error) -> DataError {
        let path = self.path.clone();
        if self.gz {
            DataError::BadGzip { path, source }
        } else {
            DataError::Io { path, source }
        }
    }

    /// Reads exactly `len` bytes (the part called `what`), or reports truncation.
    fn read_part(&mut self, len: u64, what: &'static str) -> Result<Vec<u8>, DataError> {
        let cap = usize::try_from(len).unwrap_or(usize::MAX).min(MAX_PREALLOC);
        let mut buf = Vec::with_capacity(cap);
        let read = (&mut self.inner).take(len).read_to_end(&mut buf);
        read.map_err(|e| self.read_error(e))?;
        let actual = buf.len() as u64;
        if actual < len {
            return Err(DataError::Truncated {
                path: self.path.clone(),
                what,
                offset: self.offset,
                expected: len,
                actual,
            });
        }
        self.offset += len;
        Ok(buf)
    }

    /// Reads the magic number and the `dims` dimensions after it.
    fn read_header(
        &mut self,
        expected_magic: u32,
        what: &'static str,
        dims: usize,
    ) -> Result<Vec<u64>, DataError> {
        let magic = be_u32(&self.read_part(4, "header")?);
        if magic != expected_magic {
            return Err(DataError::BadMagic {
                path: self.path.clone(),
                what,
                expected: expected_magic,
                found: magic,
            });
        }
        let raw = self.read_part(4 * dims as u64, "header")?;
        Ok(raw.chunks_exact(4).map(|c| u64::from(be_u32(c))).collect())
    }

    /// Checks that the stream ends here (which also makes gzip verify its checksum).
    fn expect_end(&mut self) -> Result<(), DataError> {
        let mut rest = Vec::new();
        let read = (&mut self.inner).take(1).read_to_end(&mut rest);
        read.map_err(|e| self.read_error(e))?;
        if rest.is_empty() {
            Ok(())
        } else {
            Err(DataError::TrailingData {
                path: self.path.clone(),
                expected_len: self.offset,
            })
        }
    }

    /// A [`DataError::DimensionMismatch`] about this file.
    fn dimension_error(&self, detail: String) -> DataError {
        DataError::DimensionMismatch {
            path: self.path.clone(),
            detail,
        }
    }
}

/// Big-endian `u32` from the first four bytes of `b` (callers pass exactly four).
fn be_u32(b: &[u8]) -> u32 {
    b.iter()
        .take(4)
        .fold(0, |acc, &x| (acc << 8) | u32::from(x))
}

/// Reads an IDX image file (magic `0x00000803`), plain or `.gz`.
///
/// # Errors
/// [`DataError::Io`], [`DataError::BadGzip`], [`DataError::BadMagic`],
/// [`DataError::DimensionMismatch`] (sizes that overflow), [`DataError::Truncated`] or
/// [`DataError::TrailingData`], each naming `path`.
pub fn read_images(path: &Path) -> Result<IdxImages, DataError> {
    let mut r = IdxReader::open(path)?;
    let dims = r.read_header(IMAGES_MAGIC, "image file", 3)?;
    let (count, rows, cols) = (dims[0], dims[1], dims[2]);
    let len = count
        .checked_mul(rows)
        .and_then(|n| n.checked_mul(cols))
        .filter(|&n| usize::try_from(n).is_ok())
        .ok_or_else(|| {
            r.dimension_error(format!("header size {count}x{rows}x{cols} is too large"))
        })?;
    let pixels = r.read_part(len, "pixel data")?;
    r.expect_end()?;
    // All three fit in usize: their product does and none is zero, or the product is zero
    // and each is a u32 (usize is at least 32 bits on every supported target).
    let to_usize = |v: u64| usize::try_from(v).unwrap_or(usize::MAX);
    Ok(IdxImages {
        count: to_usize(count),
        rows: to_usize(rows),
        cols: to_usize(cols),
        pixels,
    })
}

/// Reads an IDX label file (magic `0x00000801`), plain or `.gz`.
///
/// # Errors
/// As [`read_images`].
pub fn read_labels(path: &Path) -> Result<Vec<u8>, DataError> {
    let mut r = IdxReader::open(path)?;
    let dims = r.read_header(LABELS_MAGIC, "label file", 1)?;
    let labels = r.read_part(dims[0], "label data")?;
    r.expect_end()?;
    Ok(labels)
}

/// Finds `dir/base`, or else `dir/base.gz`.
///
/// # Errors
/// [`DataError::MissingFile`] naming `dir/base` and carrying `hint` if neither exists.
pub fn find_file(dir: &Path, base: &str, hint: &str) -> Result<PathBuf, DataError> {
    let plain = dir.join(base);
    if plain.is_file() {
        return Ok(plain);
    }
    let gz = dir.join(format!("{base}.gz"));
    if gz.is_file() {
        return Ok(gz);
    }
    Err(DataError::MissingFile {
        path: plain,
        hint: hint.to_owned(),
    })
}

/// Loads the four IDX files named in [`FILE_NAMES`] from `dir` as a train/test split of
/// single-channel images named `name/train` and `name/test`, with pixels scaled by `1/255`.
///
/// `expected_hw`, if given, is the `[rows, cols]` every image must have; train and test
/// images must have the same size in any case.
///
/// # Errors
/// Any error of [`find_file`] or [`read_images`]; [`DataError::DimensionMismatch`] for an
/// unexpected or empty image size; [`DataError::CountMismatch`] if an image file and its
/// label file disagree on the sample count; [`DataError::LabelOutOfRange`] for a label
/// `>= num_classes`.
pub fn load_idx_dir(
    dir: &Path,
    name: &str,
    num_classes: usize,
    expected_hw: Option<[usize; 2]>,
) -> Result<DataSplit, DataError> {
    load_idx_dir_with_hint(dir, name, num_classes, expected_hw, "")
}

/// [`load_idx_dir`] with a hint appended to missing-file errors.
pub(crate) fn load_idx_dir_with_hint(
    dir: &Path,
    name: &str,
    num_classes: usize,
    expected_hw: Option<[usize; 2]>,
    hint: &str,
) -> Result<DataSplit, DataError> {
    let [train_images, train_labels, test_images, test_labels] =
        FILE_NAMES.map(|base| find_file(dir, base, hint));
    let train = load_part(
        &train_images?,
        &train_labels?,
        &format!("{name}/train"),
        num_classes,
        expected_hw,
    )?;
    let test_images = test_images?;
    let test = load_part(
        &test_images,
        &test_labels?,
        &format!("{name}/test"),
        num_classes,
        expected_hw,
    )?;
    if test.shape != train.shape {
        let [_, r, c] = test.shape;
        let [_, tr, tc] = train.shape;
        return Err(DataError::DimensionMismatch {
            path: test_images,
            detail: format!("image size {r}x{c} differs from the training images' {tr}x{tc}"),
        });
    }
    Ok(DataSplit { train, test })
}

/// Loads one image file and its label file as a data set.
fn load_part(
    images_path: &Path,
    labels_path: &Path,
    name: &str,
    num_classes: usize,
    expected_hw: Option<[usize; 2]>,
) -> Result<Dataset, DataError> {
    let images = read_images(images_path)?;
    let dimension_error = |detail: String| DataError::DimensionMismatch {
        path: images_path.to_owned(),
        detail,
    };
    let (rows, cols) = (images.rows, images.cols);
    if rows == 0 || cols == 0 {
        return Err(dimension_error(format!(
            "image size {rows}x{cols} is empty"
        )));
    }
    if let Some([er, ec]) = expected_hw
        && [er, ec] != [rows, cols]
    {
        return Err(dimension_error(format!(
            "image size {rows}x{cols}, expected {er}x{ec}"
        )));
    }
    let labels = read_labels(labels_path)?;
    if labels.len() != images.count {
        return Err(DataError::CountMismatch {
            images_path: images_path.to_owned(),
            images: images.count,
            labels_path: labels_path.to_owned(),
            labels: labels.len(),
        });
    }
    if let Some((index, &label)) = labels
        .iter()
        .enumerate()
        .find(|&(_, &l)| usize::from(l) >= num_classes)
    {
        return Err(DataError::LabelOutOfRange {
            path: labels_path.to_owned(),
            index,
            label: u32::from(label),
            num_classes,
        });
    }
    let features = images
        .pixels
        .iter()
        .map(|&p| f32::from(p) / 255.0)
        .collect();
    let labels = labels.into_iter().map(u32::from).collect();
    Dataset::new(name, [1, rows, cols], num_classes, features, labels)
}
