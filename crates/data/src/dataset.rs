//! In-memory data sets as plain vectors.
//!
//! The training code builds its own tensors, so a data set here is deliberately just a
//! contiguous `Vec<f32>` of normalised features (sample-major, each sample row-major as
//! `[channels, height, width]`) plus a `Vec<u32>` of labels: a batch is one `gather` away,
//! and nothing ties this crate to a tensor library. Fields are public for cheap read access;
//! [`Dataset::new`] (one label per sample: classification) and [`Dataset::with_targets`]
//! (several labels per sample: a language model's next token at every position) are the
//! checked ways to build one.

use std::fmt;

use crate::DataError;

/// One part (train or test) of a data set.
///
/// Invariants (checked by [`Dataset::with_targets`], kept by every method here):
/// `num_features == shape[0] * shape[1] * shape[2]`, `targets_per_sample >= 1`,
/// `labels.len() == len() * targets_per_sample`, `features.len() == len() * num_features`,
/// and every label is `< num_classes`.
#[derive(Clone, PartialEq)]
pub struct Dataset {
    /// Name, e.g. `"digits/train"`.
    pub name: String,
    /// Features per sample (`shape` multiplied out).
    pub num_features: usize,
    /// Shape of one sample: `[channels, height, width]`.
    pub shape: [usize; 3],
    /// Number of classes; labels lie in `0..num_classes`. For a language model: the
    /// vocabulary size.
    pub num_classes: usize,
    /// Labels per sample: 1 for classification, the sequence length for a language model
    /// (whose every position predicts the next token).
    pub targets_per_sample: usize,
    /// All features, sample-major (normalised image pixels, or token ids as `f32`).
    pub features: Vec<f32>,
    /// `targets_per_sample` labels per sample, sample-major.
    pub labels: Vec<u32>,
}

/// A data set's train and test parts.
#[derive(Clone, Debug, PartialEq)]
pub struct DataSplit {
    /// Samples to train on.
    pub train: Dataset,
    /// Held-out samples to evaluate on.
    pub test: Dataset,
}

impl Dataset {
    /// Builds a classification data set (one label per sample), checking that the parts fit
    /// together.
    ///
    /// # Errors
    /// [`DataError::Inconsistent`] if the shape, feature count and label count disagree, or
    /// [`DataError::LabelOutOfRange`] (naming the data set) if a label is `>= num_classes`.
    pub fn new(
        name: impl Into<String>,
        shape: [usize; 3],
        num_classes: usize,
        features: Vec<f32>,
        labels: Vec<u32>,
    ) -> Result<Self, DataError> {
        Self::with_targets(name, shape, num_classes, 1, features, labels)
    }

    /// Builds a data set whose samples have `targets_per_sample` labels each (sample-major),
    /// checking that the parts fit together.
    ///
    /// # Errors
    /// [`DataError::Inconsistent`] if the shape, feature count and label count disagree or
    /// `targets_per_sample` is 0, or [`DataError::LabelOutOfRange`] (naming the data set) if
    /// a label is `>= num_classes` (its index counts labels, not samples).
    pub fn with_targets(
        name: impl Into<String>,
        shape: [usize; 3],
        num_classes: usize,
        targets_per_sample: usize,
        features: Vec<f32>,
        labels: Vec<u32>,
    ) -> Result<Self, DataError> {
        let name = name.into();
        let inconsistent = |detail: String| DataError::Inconsistent {
            dataset: name.clone(),
            detail,
        };
        let num_features = shape
            .iter()
            .try_fold(1usize, |acc, &d| acc.checked_mul(d))
            .ok_or_else(|| inconsistent(format!("shape {shape:?} overflows")))?;
        if num_features == 0 {
            return Err(inconsistent(format!("shape {shape:?} has no features")));
        }
        if targets_per_sample == 0 {
            return Err(inconsistent("0 targets per sample".into()));
        }
        if !labels.len().is_multiple_of(targets_per_sample) {
            return Err(inconsistent(format!(
                "{} labels do not make samples of {targets_per_sample} targets",
                labels.len()
            )));
        }
        let num_samples = labels.len() / targets_per_sample;
        if num_samples.checked_mul(num_features) != Some(features.len()) {
            return Err(inconsistent(format!(
                "{} features do not make {num_samples} samples of {num_features}",
                features.len(),
            )));
        }
        if let Some((index, &label)) = labels
            .iter()
            .enumerate()
            .find(|&(_, &l)| l as usize >= num_classes)
        {
            return Err(DataError::LabelOutOfRange {
                path: name.into(),
                index,
                label,
                num_classes,
            });
        }
        Ok(Self {
            name,
            num_features,
            shape,
            num_classes,
            targets_per_sample,
            features,
            labels,
        })
    }

    /// Number of samples.
    pub fn len(&self) -> usize {
        self.labels.len() / self.targets_per_sample
    }

    /// Whether there are no samples.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// Sample `i`: its features and its `targets_per_sample` labels, or `None` if
    /// `i >= len()`.
    pub fn get(&self, i: usize) -> Option<(&[f32], &[u32])> {
        let first_label = i * self.targets_per_sample;
        let labels = self
            .labels
            .get(first_label..first_label + self.targets_per_sample)?;
        let start = i * self.num_features;
        let features = self.features.get(start..start + self.num_features)?;
        Some((features, labels))
    }

    /// Sample `i`: its features and its labels.
    ///
    /// # Panics
    /// If `i >= len()` (like slice indexing); use [`Dataset::get`] to check instead.
    pub fn sample(&self, i: usize) -> (&[f32], &[u32]) {
        match self.get(i) {
            Some(s) => s,
            None => panic!(
                "{}: sample index {i} out of range for {}",
                self.name,
                self.len()
            ),
        }
    }

    /// Copies the samples at `indices`, in that order, into one feature buffer
    /// (`indices.len() * num_features` values) and one label vector
    /// (`indices.len() * targets_per_sample` labels): a batch.
    ///
    /// # Panics
    /// If an index is `>= len()`; use [`Dataset::try_gather`] to check instead.
    pub fn gather(&self, indices: &[usize]) -> (Vec<f32>, Vec<u32>) {
        match self.try_gather(indices) {
            Ok(batch) => batch,
            Err(e) => panic!("{e}"),
        }
    }

    /// Like [`Dataset::gather`], but reports a bad index as an error.
    ///
    /// # Errors
    /// [`DataError::IndexOutOfRange`] for the first index `>= len()`.
    pub fn try_gather(&self, indices: &[usize]) -> Result<(Vec<f32>, Vec<u32>), DataError> {
        let mut features = Vec::with_capacity(indices.len() * self.num_features);
        let mut labels = Vec::with_capacity(indices.len() * self.targets_per_sample);
        for &i in indices {
            let (x, y) = self.checked_sample(i)?;
            features.extend_from_slice(x);
            labels.extend_from_slice(y);
        }
        Ok((features, labels))
    }

    /// The labels alone of [`Dataset::try_gather`]: what a loss needs, without copying the
    /// features.
    ///
    /// # Errors
    /// [`DataError::IndexOutOfRange`] for the first index `>= len()`.
    pub fn try_gather_labels(&self, indices: &[usize]) -> Result<Vec<u32>, DataError> {
        let mut labels = Vec::with_capacity(indices.len() * self.targets_per_sample);
        for &i in indices {
            labels.extend_from_slice(self.checked_sample(i)?.1);
        }
        Ok(labels)
    }

    /// [`Dataset::get`], with a missing sample reported as [`DataError::IndexOutOfRange`].
    fn checked_sample(&self, i: usize) -> Result<(&[f32], &[u32]), DataError> {
        self.get(i).ok_or_else(|| DataError::IndexOutOfRange {
            dataset: self.name.clone(),
            index: i,
            len: self.len(),
        })
    }

    /// Keeps only the first `n` samples (no-op if `n >= len()`), for quick runs.
    pub fn truncate(&mut self, n: usize) {
        if n < self.len() {
            self.labels.truncate(n * self.targets_per_sample);
            self.features.truncate(n * self.num_features);
        }
    }

    /// How many labels each class has (`num_classes` entries): samples per class for
    /// classification, token frequencies for a language model.
    pub fn class_counts(&self) -> Vec<usize> {
        let mut counts = vec![0; self.num_classes];
        for &l in &self.labels {
            if let Some(c) = counts.get_mut(l as usize) {
                *c += 1;
            }
        }
        counts
    }

    /// A new data set named `name` made of the samples at `indices` (all `< len()`).
    pub(crate) fn select(&self, name: &str, indices: &[usize]) -> Result<Self, DataError> {
        let (features, labels) = self.try_gather(indices)?;
        Ok(Self {
            name: name.to_owned(),
            num_features: self.num_features,
            shape: self.shape,
            num_classes: self.num_classes,
            targets_per_sample: self.targets_per_sample,
            features,
            labels,
        })
    }
}

impl fmt::Debug for Dataset {
    /// A summary: the feature buffer can hold tens of millions of values.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Dataset")
            .field("name", &self.name)
            .field("len", &self.len())
            .field("shape", &self.shape)
            .field("num_classes", &self.num_classes)
            .field("targets_per_sample", &self.targets_per_sample)
            .finish_non_exhaustive()
    }
}

impl DataSplit {
    /// Keeps at most `train` training and `test` test samples (`None`: keep all), for quick
    /// runs. See [`Dataset::truncate`].
    pub fn limit(mut self, train: Option<usize>, test: Option<usize>) -> Self {
        if let Some(n) = train {
            self.train.truncate(n);
        }
        if let Some(n) = test {
            self.test.truncate(n);
        }
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tiny() -> Dataset {
        let features = (0..12).map(|v| v as f32).collect();
        Dataset::new("tiny", [1, 1, 3], 3, features, vec![0, 1, 2, 1]).unwrap()
    }

    #[test]
    fn sample_and_gather_pick_rows() {
        let d = tiny();
        assert_eq!(d.len(), 4);
        assert_eq!(d.num_features, 3);
        assert_eq!(d.sample(2), (&[6.0, 7.0, 8.0][..], &[2][..]));
        let (x, y) = d.gather(&[3, 0, 3]);
        assert_eq!(x, vec![9.0, 10.0, 11.0, 0.0, 1.0, 2.0, 9.0, 10.0, 11.0]);
        assert_eq!(y, vec![1, 0, 1]);
        assert_eq!(d.try_gather_labels(&[3, 0, 3]).unwrap(), y);
        assert_eq!(d.class_counts(), vec![1, 2, 1]);
    }

    #[test]
    fn bad_indices_are_errors_not_panics() {
        let d = tiny();
        assert!(d.get(4).is_none());
        let err = d.try_gather(&[0, 4]).unwrap_err();
        assert!(
            matches!(
                err,
                DataError::IndexOutOfRange {
                    index: 4,
                    len: 4,
                    ..
                }
            ),
            "{err}"
        );
        let labels_err = d.try_gather_labels(&[4]).unwrap_err();
        assert_eq!(labels_err.to_string(), err.to_string());
    }

    #[test]
    fn truncate_and_limit_keep_a_prefix() {
        let mut d = tiny();
        d.truncate(10);
        assert_eq!(d.len(), 4);
        d.truncate(2);
        assert_eq!((d.len(), d.features.len()), (2, 6));
        let split = DataSplit {
            train: tiny(),
            test: tiny(),
        }
        .limit(Some(1), None);
        assert_eq!((split.train.len(), split.test.len()), (1, 4));
    }

    #[test]
    fn new_rejects_inconsistent_parts() {
        let e = Dataset::new("x", [1, 2, 2], 2, vec![0.0; 7], vec![0, 1]).unwrap_err();
        assert!(matches!(e, DataError::Inconsistent { .. }), "{e}");
        let e = Dataset::new("x", [1, 0, 2], 2, vec![], vec![]).unwrap_err();
        assert!(matches!(e, DataError::Inconsistent { .. }), "{e}");
        let e = Dataset::new("x", [1, 1, 1], 2, vec![0.0; 2], vec![0, 2]).unwrap_err();
        assert!(
            matches!(
                e,
                DataError::LabelOutOfRange {
                    index: 1,
                    label: 2,
                    ..
                }
            ),
            "{e}"
        );
    }

    #[test]
    fn samples_with_several_targets_keep_their_labels_together() {
        // Two samples of 3 features, 3 targets each.
        let features = (0..6).map(|v| v as f32).collect();
        let mut d = Dataset::with_targets("seq", [1, 1, 3], 4, 3, features, vec![1, 2, 3, 0, 1, 2])
            .unwrap();
        assert_eq!(d.len(), 2);
        assert_eq!(d.sample(1), (&[3.0, 4.0, 5.0][..], &[0, 1, 2][..]));
        let (x, y) = d.gather(&[1, 0]);
        assert_eq!(x, vec![3.0, 4.0, 5.0, 0.0, 1.0, 2.0]);
        assert_eq!(y, vec![0, 1, 2, 1, 2, 3]);
        assert_eq!(d.class_counts(), vec![1, 2, 2, 1]);
        d.truncate(1);
        assert_eq!((d.len(), d.labels.len(), d.features.len()), (1, 3, 3));
        // Labels that do not make whole samples, and 0 targets, are inconsistent.
        for (targets, labels) in [(3, vec![0; 5]), (0, vec![])] {
            let e = Dataset::with_targets("seq", [1, 1, 3], 4, targets, vec![0.0; 6], labels)
                .unwrap_err();
            assert!(matches!(e, DataError::Inconsistent { .. }), "{e}");
        }
    }

    #[test]
    fn debug_is_a_summary() {
        let s = format!("{:?}", tiny());
        assert!(s.contains("len: 4") && !s.contains("11.0"), "{s}");
    }
}
