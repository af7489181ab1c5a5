//! `text:PATH`: character-level language modelling on any UTF-8 file.
//!
//! The issue asks for a text data set that works offline on every machine (tests use
//! `/usr/share/common-licenses/GPL-3`, which every Debian system has), so that the `gpt` model
//! can be trained like the image models. The file becomes a [`DataSplit`]:
//!
//! - **Vocabulary**: the distinct characters of the whole file, sorted by code point; a
//!   character's token id is its index. The same file always gives the same ids.
//! - **Split**: the first 90% of the characters are the training text, the last 10% the test
//!   text. Windows are cut from each part separately, so no sample reads across the split.
//! - **Samples**: non-overlapping windows (stride = `seq_len`). Sample k of a part holds the
//!   token ids of characters `k·T .. k·T + T` as `f32` features (shape `[1, 1, T]`), and its
//!   `T` labels are the next characters, `k·T + 1 .. k·T + T + 1`: position t predicts the
//!   character after it. A part of `L` characters gives `(L − 1) / T` samples.
//!
//! `num_classes` is the vocabulary size and `targets_per_sample` is `T`.

use std::collections::BTreeSet;
use std::path::Path;

use crate::{DataError, DataSplit, Dataset};

/// What `--dataset` names start with for a text file: `text:PATH`.
pub const TEXT_PREFIX: &str = "text:";

/// Characters per sample (`--seq-len`) unless told otherwise.
pub const DEFAULT_SEQ_LEN: usize = 64;

/// Of every 10 characters, how many belong to the training part (the rest: test).
const TRAIN_TENTHS: usize = 9;

/// Loads `path` as a character-level language-modelling data set of windows of `seq_len`
/// characters (see the module documentation).
///
/// # Errors
/// [`DataError::Io`] if the file cannot be read (missing, unreadable),
/// [`DataError::Malformed`] with the byte offset of the first invalid byte if it is not UTF-8,
/// [`DataError::TextTooShort`] if either part is shorter than `seq_len + 1` characters (an
/// empty file included), and [`DataError::Inconsistent`] if `seq_len` is 0.
pub fn load_text(path: &Path, seq_len: usize) -> Result<DataSplit, DataError> {
    let name = |part: &str| format!("{TEXT_PREFIX}{}/{part}", path.display());
    if seq_len == 0 {
        return Err(DataError::Inconsistent {
            dataset: name("train"),
            detail: "sequence length 0".into(),
        });
    }
    let bytes = std::fs::read(path).map_err(|source| DataError::Io {
        path: path.to_owned(),
        source,
    })?;
    let text = std::str::from_utf8(&bytes).map_err(|e| DataError::Malformed {
        path: path.to_owned(),
        offset: e.valid_up_to() as u64,
        detail: "not valid UTF-8 text".into(),
    })?;
    let (vocabulary, ids) = tokenize(text);
    let train_chars = ids.len() * TRAIN_TENTHS / 10;
    let (train_ids, test_ids) = ids.split_at(train_chars);
    if train_ids.len() <= seq_len || test_ids.len() <= seq_len {
        return Err(DataError::TextTooShort {
            path: path.to_owned(),
            chars: ids.len(),
            seq_len,
            needed: min_chars(seq_len),
        });
    }
    let part = |part: &str, ids: &[u32]| {
        let (features, labels) = windows(ids, seq_len);
        Dataset::with_targets(
            name(part),
            [1, 1, seq_len],
            vocabulary.len(),
            seq_len,
            features,
            labels,
        )
    };
    Ok(DataSplit {
        train: part("train", train_ids)?,
        test: part("test", test_ids)?,
    })
}

/// The fewest characters a file needs for windows of `seq_len`: the test part (the last
/// ⌈n/10⌉ characters) must hold `seq_len + 1` of them.
fn min_chars(seq_len: usize) -> usize {
    10 * seq_len + 1
}

/// The sorted distinct characters of `text`, and `text` as indices into them.
fn tokenize(text: &str) -> (Vec<char>, Vec<u32>) {
    let vocabulary: Vec<char> = text.chars().collect::<BTreeSet<_>>().into_iter().collect();
    let ids = text
        .chars()
        .map(|c| match vocabulary.binary_search(&c) {
            Ok(id) => id as u32,
            Err(_) => unreachable!("the vocabulary holds every character of the text"),
        })
        .collect();
    (vocabulary, ids)
}

/// Non-overlapping windows of `seq_len` ids as `f32` features, and for each the `seq_len`
/// ids that follow each position as labels.
fn windows(ids: &[u32], seq_len: usize) -> (Vec<f32>, Vec<u32>) {
    let count = (ids.len() - 1) / seq_len;
    let mut features = Vec::with_capacity(count * seq_len);
    let mut labels = Vec::with_capacity(count * seq_len);
    for k in 0..count {
        let start = k * seq_len;
        features.extend(ids[start..start + seq_len].iter().map(|&id| id as f32));
        labels.extend_from_slice(&ids[start + 1..start + seq_len + 1]);
    }
    (features, labels)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Decodes token ids (as stored in features or labels) back to text.
    fn decode(vocabulary: &[char], ids: impl IntoIterator<Item = u32>) -> String {
        ids.into_iter().map(|id| vocabulary[id as usize]).collect()
    }

    #[test]
    fn windows_round_trip_to_the_text_and_targets_are_shifted_by_one() {
        let text = "the quick brown fox — jumps over the lazy dog; ünïcödé too! ".repeat(3);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("corpus.txt");
        std::fs::write(&path, &text).unwrap();
        let seq_len = 5;
        let split = load_text(&path, seq_len).unwrap();
        let (vocabulary, _) = tokenize(&text);
        let chars: Vec<char> = text.chars().collect();
        let train_chars = chars.len() * 9 / 10;
        assert_eq!(split.train.num_classes, vocabulary.len());
        assert!(vocabulary.windows(2).all(|w| w[0] < w[1]), "sorted");
        for (part, offset, part_chars) in [
            (&split.train, 0, train_chars),
            (&split.test, train_chars, chars.len() - train_chars),
        ] {
            assert_eq!(part.shape, [1, 1, seq_len]);
            assert_eq!(part.targets_per_sample, seq_len);
            assert_eq!(part.len(), (part_chars - 1) / seq_len);
            for k in 0..part.len() {
                let (x, y) = part.sample(k);
                let start = offset + k * seq_len;
                let window: String = chars[start..start + seq_len].iter().collect();
                let next: String = chars[start + 1..start + seq_len + 1].iter().collect();
                assert_eq!(decode(&vocabulary, x.iter().map(|&v| v as u32)), window);
                assert_eq!(decode(&vocabulary, y.iter().copied()), next);
            }
            // No sample reads past its part: the last target lies inside it.
            let last_target = offset + part.len() * seq_len;
            assert!(last_target < offset + part_chars);
        }
        // Deterministic.
        assert_eq!(load_text(&path, seq_len).unwrap(), split);
    }

    #[test]
    fn missing_non_utf8_and_short_files_are_errors_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.txt");
        let err = load_text(&missing, 4).unwrap_err();
        assert!(matches!(err, DataError::Io { .. }), "{err}");
        assert!(err.to_string().contains("missing.txt"), "{err}");

        let latin1 = dir.path().join("latin1.txt");
        let mut bytes = "ok ".repeat(20).into_bytes();
        bytes.extend_from_slice(b"caf\xe9");
        std::fs::write(&latin1, &bytes).unwrap();
        let err = load_text(&latin1, 4).unwrap_err();
        assert!(
            matches!(err, DataError::Malformed { offset: 63, .. }),
            "{err}"
        );
        assert!(err.to_string().contains("latin1.txt"), "{err}");
        assert!(err.to_string().contains("UTF-8"), "{err}");

        let empty = dir.path().join("empty.txt");
        std::fs::write(&empty, "").unwrap();
        let err = load_text(&empty, 4).unwrap_err();
        assert!(
            matches!(err, DataError::TextTooShort { chars: 0, .. }),
            "{err}"
        );
        assert!(err.to_string().contains("empty.txt"), "{err}");

        // 40 characters: the test part (4) cannot hold a window of 4 + 1; 41 can.
        let short = dir.path().join("short.txt");
        std::fs::write(&short, "a".repeat(40)).unwrap();
        let err = load_text(&short, 4).unwrap_err();
        assert!(
            matches!(
                err,
                DataError::TextTooShort {
                    chars: 40,
                    needed: 41,
                    ..
                }
            ),
            "{err}"
        );
        assert!(err.to_string().contains("short.txt"), "{err}");
        std::fs::write(&short, "a".repeat(41)).unwrap();
        let split = load_text(&short, 4).unwrap();
        // 36 training characters make (36 − 1) / 4 windows, the 5 test characters one.
        assert_eq!((split.train.len(), split.test.len()), (8, 1));

        let err = load_text(&short, 0).unwrap_err();
        assert!(matches!(err, DataError::Inconsistent { .. }), "{err}");
    }

    #[test]
    fn reads_the_gpl_text_every_debian_machine_has() {
        let path = Path::new("/usr/share/common-licenses/GPL-3");
        let text = std::fs::read_to_string(path).unwrap();
        let split = load_text(path, 32).unwrap();
        let (vocabulary, _) = tokenize(&text);
        assert!(vocabulary.contains(&'G') && vocabulary.contains(&' '));
        assert_eq!(split.train.num_classes, vocabulary.len());
        let chars = text.chars().count();
        assert_eq!(split.train.len(), (chars * 9 / 10 - 1) / 32);
        assert_eq!(split.test.len(), (chars - chars * 9 / 10 - 1) / 32);
        assert!(split.train.len() > 500 && split.test.len() > 50);
        // The licence starts with its title.
        let (x, _) = split.train.sample(0);
        let start = decode(&vocabulary, x.iter().map(|&v| v as u32));
        assert!(start.trim_start().starts_with("GNU GENERAL"), "{start}");
    }
}
