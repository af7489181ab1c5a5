//! Small helpers between plain vectors and burn tensors, and the one device used.
//!
//! Burn 0.22 tensors carry their backend in their device, not in their type: every tensor here
//! is a `burn::tensor::Tensor<D>` on [`device()`] (the pure-Rust CPU backend, Flex). A tensor
//! "with autodiff" is the same type made with `.autodiff()`; the *inner* (plain) form is what
//! this crate stores and sends. Keeping conversions in one place keeps the unwraps (which can
//! only fail on a dtype bug) in one place too.

use burn::tensor::{Device, Tensor, TensorData};

/// The device all tensors of this crate live on: burn's Flex CPU backend, without autodiff.
pub fn device() -> Device {
    Device::flex()
}

/// A 1-D f32 tensor on [`device()`].
pub fn tensor1(values: Vec<f32>) -> Tensor<1> {
    let len = values.len();
    Tensor::from_data(TensorData::new(values, [len]), &device())
}

/// A 2-D f32 tensor `[rows, cols]` on [`device()`], from row-major `values`.
///
/// # Panics
/// If `values.len() != rows * cols` (a caller bug).
pub fn tensor2(values: Vec<f32>, rows: usize, cols: usize) -> Tensor<2> {
    assert_eq!(
        values.len(),
        rows * cols,
        "tensor2: {} values for [{rows}, {cols}]",
        values.len()
    );
    Tensor::from_data(TensorData::new(values, [rows, cols]), &device())
}

/// The values of a tensor (row-major), read back as f32.
///
/// # Panics
/// If the tensor is not an f32 tensor, which this crate never creates.
pub fn to_vec<const D: usize>(tensor: &Tensor<D>) -> Vec<f32> {
    match tensor.to_data().try_to_vec::<f32>() {
        Ok(values) => values,
        Err(e) => panic!(
            "reading a tensor of dtype {:?} as f32: {e:?}",
            tensor.dtype()
        ),
    }
}

/// The single value of a one-element tensor, as f64.
pub(crate) fn scalar(tensor: &Tensor<1>) -> f64 {
    let values = to_vec(tensor);
    assert_eq!(
        values.len(),
        1,
        "scalar() on a tensor of {} elements",
        values.len()
    );
    f64::from(values[0])
}

/// Row-major one-hot encoding of `labels` over `num_classes` classes.
pub(crate) fn one_hot(labels: &[u32], num_classes: usize) -> Tensor<2> {
    let mut values = vec![0.0f32; labels.len() * num_classes];
    for (row, &label) in labels.iter().enumerate() {
        values[row * num_classes + label as usize] = 1.0;
    }
    tensor2(values, labels.len(), num_classes)
}

/// Number of rows of `logits` (`[batch, classes]`, row-major `values`) whose first maximum is
/// at the label's position, like PyTorch's `argmax`.
pub(crate) fn count_correct(values: &[f32], num_classes: usize, labels: &[u32]) -> u64 {
    values
        .chunks_exact(num_classes)
        .zip(labels)
        .filter(|(row, label)| {
            let mut best = 0;
            for (i, &v) in row.iter().enumerate() {
                if v > row[best] {
                    best = i;
                }
            }
            best == **label as usize
        })
        .count() as u64
}
