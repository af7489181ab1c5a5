//! Where the data enters a pipeline: which samples each micro-batch holds ([`EpochBatches`])
//! and the stage-0 inputs and last-stage targets made from them ([`DataFeed`]).
//!
//! Stages only compute; the executor asks the epoch's [`DataFeed`] (the runtime's [`Feed`]) for
//! stage 0's input and the last stage's targets of each micro-batch and hands them over. So
//! the data set, the epoch's batching and the augmentation live here, once, whatever runs the
//! stages, and a stage's state is only what its computation needs.

use std::sync::Arc;

use burn::tensor::Tensor;
use timeprest_data::{Augment, Dataset};
use timeprest_runtime::{ComputeError, Feed};
use timeprest_schedule::MicrobatchId;

use crate::NnError;
use crate::stage::StageMessage;
use crate::tensor::{one_hot, tensor2};

/// Which samples each micro-batch holds: for each mini-batch, for each micro-batch, indices
/// into the training set.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EpochBatches {
    /// `minibatches[i][j]`: the sample indices of micro-batch j of mini-batch i.
    pub minibatches: Vec<Vec<Vec<usize>>>,
}

impl EpochBatches {
    /// Cuts `order` (e.g. an epoch's sample order) into mini-batches of `minibatch_size`
    /// samples, each split into `num_microbatches` contiguous micro-batches as equal as possible
    /// (the first ones one sample larger, like `torch.tensor_split`). A shorter final
    /// mini-batch is kept if it has at least `num_microbatches` samples, dropped otherwise.
    ///
    /// # Errors
    /// [`NnError::Mismatch`] if `num_microbatches` is 0 or larger than `minibatch_size`.
    pub fn split(
        order: &[usize],
        minibatch_size: usize,
        num_microbatches: usize,
    ) -> Result<Self, NnError> {
        if num_microbatches == 0 || num_microbatches > minibatch_size {
            return Err(NnError::Mismatch(format!(
                "cannot split mini-batches of {minibatch_size} samples into {num_microbatches} \
                 micro-batches"
            )));
        }
        let minibatches = order
            .chunks(minibatch_size)
            .filter(|mb| mb.len() >= num_microbatches)
            .map(|mb| {
                let (base, extra) = (mb.len() / num_microbatches, mb.len() % num_microbatches);
                let mut start = 0;
                (0..num_microbatches)
                    .map(|j| {
                        let len = base + usize::from(j < extra);
                        start += len;
                        mb[start - len..start].to_vec()
                    })
                    .collect()
            })
            .collect();
        Ok(Self { minibatches })
    }

    /// Number of mini-batches.
    pub fn num_minibatches(&self) -> usize {
        self.minibatches.len()
    }

    /// Number of samples M of mini-batch `minibatch`, or `None` if there is no such mini-batch.
    pub fn minibatch_size(&self, minibatch: usize) -> Option<usize> {
        Some(self.minibatches.get(minibatch)?.iter().map(Vec::len).sum())
    }

    /// The sample indices of micro-batch `id`, or `None` if there is no such micro-batch.
    pub fn microbatch(&self, id: MicrobatchId) -> Option<&[usize]> {
        self.minibatches
            .get(id.minibatch as usize)?
            .get(id.microbatch as usize)
            .map(Vec::as_slice)
    }
}

/// What the last stage's loss compares a micro-batch's output with.
#[derive(Clone, Debug)]
pub struct Targets {
    /// The samples' labels, `targets_per_sample` per sample.
    pub(crate) labels: Vec<u32>,
    /// `[labels, classes]`.
    pub(crate) one_hot: Tensor<2>,
    /// The number of classes.
    pub(crate) num_classes: usize,
    /// 1/(M·T), M the mini-batch's number of samples, T the targets per sample.
    pub(crate) scale: f64,
}

/// One epoch's data for a pipeline: the training set, the epoch's [`EpochBatches`] and the
/// augmentation of stage 0's images, if any.
pub struct DataFeed {
    data: Arc<Dataset>,
    batches: Arc<EpochBatches>,
    augment: Option<Augment>,
    epoch: u64,
}

impl DataFeed {
    /// Feeds the micro-batches of `batches` (of epoch `epoch`, from 1) from `data`, with random
    /// crops and flips of the input images if `augment` is given. The draws depend on the
    /// augmentation's seed, the epoch and the sample index only, so they depend neither on the
    /// schedule or the split nor on how the run was interrupted and resumed.
    pub fn new(
        data: Arc<Dataset>,
        batches: Arc<EpochBatches>,
        augment: Option<Augment>,
        epoch: u32,
    ) -> Self {
        Self {
            data,
            batches,
            augment,
            epoch: u64::from(epoch),
        }
    }

    /// The sample indices of `microbatch` and the size M of its mini-batch.
    fn samples(&self, microbatch: MicrobatchId) -> Result<(&[usize], usize), ComputeError> {
        let missing = || {
            ComputeError(format!(
                "the epoch's batches have no micro-batch {microbatch:?}"
            ))
        };
        let indices = self.batches.microbatch(microbatch).ok_or_else(missing)?;
        if indices.is_empty() {
            return Err(ComputeError(format!(
                "micro-batch {microbatch:?} of the epoch's batches is empty"
            )));
        }
        let size = self
            .batches
            .minibatch_size(microbatch.minibatch as usize)
            .ok_or_else(missing)?;
        Ok((indices, size))
    }
}

impl Feed<StageMessage, Targets> for DataFeed {
    fn input(&self, microbatch: MicrobatchId) -> Result<StageMessage, ComputeError> {
        let (indices, _) = self.samples(microbatch)?;
        let (mut features, _) = self
            .data
            .try_gather(indices)
            .map_err(|e| ComputeError(format!("{microbatch:?}: {e}")))?;
        if let Some(augment) = &self.augment {
            augment.apply(&mut features, self.data.shape, indices, self.epoch);
        }
        Ok(StageMessage::new(tensor2(
            features,
            indices.len(),
            self.data.num_features,
        )))
    }

    fn targets(&self, microbatch: MicrobatchId) -> Result<Targets, ComputeError> {
        let (indices, size) = self.samples(microbatch)?;
        let labels = self
            .data
            .try_gather_labels(indices)
            .map_err(|e| ComputeError(format!("{microbatch:?}: {e}")))?;
        Ok(Targets {
            one_hot: one_hot(&labels, self.data.num_classes),
            labels,
            num_classes: self.data.num_classes,
            scale: 1.0 / (size * self.data.targets_per_sample) as f64,
        })
    }
}
