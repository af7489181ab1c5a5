//! Small helpers between plain vectors and burn tensors, and the one device used.
//!
//! Burn 0.22 tensors carry their backend in their device, not in their type: every tensor here
//! is a `burn::tensor::Tensor<D>` on [`device()`]. A tensor "with autodiff" is the same type
//! made with `.autodiff()`; the *inner* (plain) form is what this crate stores and sends.
//! Keeping conversions in one place keeps the unwraps (which can only fail on a dtype bug) in
//! one place too.
//!
//! The device is chosen once per process ([`select_device`]): burn's pure-Rust CPU backend
//! (Flex) by default, or a GPU through burn's Vulkan backend (CubeCL on wgpu, SPIR-V kernels)
//! when the crate is built with the `gpu` feature. (Burn's CUDA backend cannot be built
//! offline: its LLVM build dependency downloads LLVM at build time.) One
//! process-wide choice (rather than a device per stage) keeps every tensor constructor
//! argument-free and makes mixing devices impossible; every stage of an in-process pipeline
//! then shares the GPU, and an MPI run gives each rank its own process (and choice).

use std::fmt;
use std::mem::MaybeUninit;
use std::str::FromStr;
use std::sync::OnceLock;

use burn::tensor::{DType, Device, Tensor, TensorData};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::NnError;

/// Where the tensors of this process live (`--device`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(into = "String", try_from = "String")]
pub enum ComputeDevice {
    /// burn's Flex CPU backend (the default and the test target).
    #[default]
    Cpu,
    /// The discrete GPU with this index, through Vulkan (needs the `gpu` feature).
    Gpu(usize),
}

impl fmt::Display for ComputeDevice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Cpu => write!(f, "cpu"),
            Self::Gpu(index) => write!(f, "gpu:{index}"),
        }
    }
}

impl FromStr for ComputeDevice {
    type Err = String;

    /// `cpu`, `gpu` (GPU 0) or `gpu:N`.
    fn from_str(text: &str) -> Result<Self, String> {
        match text {
            "cpu" => Ok(Self::Cpu),
            "gpu" => Ok(Self::Gpu(0)),
            _ => text
                .strip_prefix("gpu:")
                .and_then(|index| index.parse().ok())
                .map(Self::Gpu)
                .ok_or_else(|| format!("unknown device `{text}`; valid: cpu, gpu, gpu:N")),
        }
    }
}

impl From<ComputeDevice> for String {
    fn from(device: ComputeDevice) -> Self {
        device.to_string()
    }
}

impl TryFrom<String> for ComputeDevice {
    type Error = String;

    fn try_from(text: String) -> Result<Self, String> {
        text.parse()
    }
}

/// The process-wide choice and the burn device it stands for.
static SELECTED: OnceLock<(ComputeDevice, Device)> = OnceLock::new();

fn burn_device(choice: ComputeDevice) -> Result<Device, NnError> {
    match choice {
        ComputeDevice::Cpu => Ok(cpu_device()),
        #[cfg(feature = "gpu")]
        ComputeDevice::Gpu(index) => {
            use burn::tensor::{DeviceKind, DeviceType};
            // Ask Vulkan what it sees first: a device that is not there fails later, inside
            // a backend thread, with a panic instead of an error.
            let found = Device::enumerate(DeviceType::Vulkan);
            let wanted = Device::vulkan(DeviceKind::DiscreteGpu(index));
            if found.contains(&wanted) {
                Ok(wanted)
            } else {
                Err(NnError::Device(format!(
                    "`{choice}`: Vulkan reports {} device(s) and no discrete GPU {index}; \
                     check the GPU driver's Vulkan ICD (`VK_LOADER_DEBUG=error` shows why it \
                     fails to load; in containers without a display, an ICD file naming \
                     `libEGL_nvidia.so.0` in VK_ICD_FILENAMES works where `libGLX_nvidia.so.0` \
                     does not)",
                    found.len()
                )))
            }
        }
        #[cfg(not(feature = "gpu"))]
        ComputeDevice::Gpu(_) => Err(NnError::Device(format!(
            "`{choice}` needs a GPU build: this timeprest was built without the `gpu` \
             feature (build with `cargo build --release --features gpu`)"
        ))),
    }
}

/// burn's CPU device, with the `gemm` crate (behind burn's CPU matmul and this crate's kernels)
/// set to pack the left operand of every product it splits into panels.
///
/// Why: `gemm` computes a row-major `[rows, out] = [rows, in]·[in, out]` (a linear block's
/// forward) with the weight as its left operand, and by default reads that operand in place,
/// one 64-byte line every `4·out` bytes, when the product has at most 48 rows. Micro-batches of
/// 32 rows hit that path: on 1024-wide weights a 32-row forward cost 1.5–1.8× per row what a
/// 128-row one costs, 1.4× with the weight packed (training an MLP with 4 micro-batches of 32:
/// 1.2× faster). The setting is process-wide, like the device, and is made here, once, before
/// any tensor exists.
fn cpu_device() -> Device {
    gemm::set_lhs_packing_threshold_single_thread(0);
    gemm::set_lhs_packing_threshold_multi_thread(0);
    Device::flex()
}

/// Fixes the device of this process. Calling it again with the same choice is a no-op.
///
/// # Errors
/// [`NnError::Device`] if the choice needs a feature this build lacks, or if the process
/// already uses another device (a tensor was made, or another choice was selected).
pub fn select_device(choice: ComputeDevice) -> Result<(), NnError> {
    // The device is built once (for a GPU that means asking Vulkan for its adapters), not on
    // every call: `compare` selects it again for each of its runs.
    if SELECTED.get().is_none() {
        let wanted = burn_device(choice)?;
        // Another thread's first selection may win the race; the check below compares with it.
        let _ = SELECTED.set((choice, wanted));
    }
    let (current, _) = SELECTED.get().expect("the device was selected above");
    if *current == choice {
        Ok(())
    } else {
        Err(NnError::Device(format!(
            "this process already computes on `{current}`; cannot switch to `{choice}`"
        )))
    }
}

/// The device all tensors of this crate live on: the one [`select_device`] chose, or the CPU
/// (which then stays fixed for the process).
pub fn device() -> Device {
    SELECTED
        .get_or_init(|| (ComputeDevice::Cpu, cpu_device()))
        .1
        .clone()
}

/// True when this process computes on the CPU, where tensor data is host memory that the
/// crate's own kernels ([`crate::conv_kernel`], [`crate::norm_kernel`]) work on directly.
pub(crate) fn on_cpu() -> bool {
    SELECTED
        .get()
        .is_none_or(|(choice, _)| *choice == ComputeDevice::Cpu)
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

/// The values of a tensor (row-major) as the crate's CPU kernels read them: the tensor's own
/// host memory (a shared handle, no copy), or a copy of them.
pub(crate) enum Values {
    /// A contiguous f32 CPU tensor without autodiff.
    Host(burn_flex::FlexTensor),
    /// The values read back from any other tensor.
    Copied(Vec<f32>),
}

impl std::ops::Deref for Values {
    type Target = [f32];

    fn deref(&self) -> &[f32] {
        match self {
            Values::Host(tensor) => tensor
                .as_slice::<f32>()
                .expect("host values are checked contiguous f32 when made"),
            Values::Copied(values) => values,
        }
    }
}

/// The values of `tensor` in place if they are contiguous host memory of a tensor without
/// autodiff (a plain CPU tensor); `None` otherwise (an autodiff or GPU tensor, which burn's own
/// operations must handle).
pub(crate) fn host_values<const D: usize>(tensor: &Tensor<D>) -> Option<Values> {
    let host = tensor
        .clone()
        .try_into_primitive::<burn_flex::Flex>()
        .ok()?;
    host.as_slice::<f32>()
        .is_some()
        .then_some(Values::Host(host))
}

/// The values of `tensor`: in place where [`host_values`] can, else a copy (through
/// [`strided_host_values`] where that applies, else through burn on one thread).
pub(crate) fn values<const D: usize>(tensor: &Tensor<D>) -> Values {
    host_or_strided_values(tensor).unwrap_or_else(|| Values::Copied(to_vec(tensor)))
}

/// The values of a plain CPU tensor: in place where [`host_values`] can, else copied through
/// its strides ([`strided_host_values`]); `None` for any tensor burn's own operations must
/// handle (autodiff, GPU).
pub(crate) fn host_or_strided_values<const D: usize>(tensor: &Tensor<D>) -> Option<Values> {
    host_values(tensor).or_else(|| strided_host_values(tensor))
}

/// The values of a 2-D f32 host tensor that is a strided view (a linear block's input gradient
/// is the transpose of its product), copied in row-major order through its strides on the
/// current rayon pool, whole rows per chunk; `None` for any other tensor.
fn strided_host_values<const D: usize>(tensor: &Tensor<D>) -> Option<Values> {
    let host = tensor
        .clone()
        .try_into_primitive::<burn_flex::Flex>()
        .ok()
        .filter(|host| host.dtype() == DType::F32 && host.layout().has_positive_strides())?;
    let (rows, cols, row_stride, column_stride) = host.layout().as_2d_strides()?;
    let (row_stride, column_stride) = (row_stride.unsigned_abs(), column_stride.unsigned_abs());
    let storage = host.storage::<f32>();
    let offset = host.layout().start_offset();
    let last =
        offset + rows.saturating_sub(1) * row_stride + cols.saturating_sub(1) * column_stride;
    if rows == 0 || cols == 0 || last >= storage.len() {
        return None;
    }
    let rows_per_chunk = (ELEMENTWISE_CHUNK / cols).max(1);
    Some(Values::Copied(fill_chunks(
        rows * cols,
        rows_per_chunk * cols,
        |index, chunk| {
            for (r, row) in chunk.chunks_mut(cols).enumerate() {
                let start = offset + (index * rows_per_chunk + r) * row_stride;
                for (c, value) in row.iter_mut().enumerate() {
                    *value = storage[start + c * column_stride];
                }
            }
        },
    )))
}

/// Values per chunk of an element-wise kernel: 64 KiB of output, small enough that the chunk's
/// zeroing and writing stay in a core's L2 and that a layer's chunks spread over the threads.
pub(crate) const ELEMENTWISE_CHUNK: usize = 1 << 14;

/// A vector of `len` values made on the current rayon pool in chunks of `chunk_len` (the last
/// may be shorter): each chunk is zeroed by the thread that then runs `fill(index, chunk)` on
/// it, so that neither the zeroing nor the first touch of fresh pages runs on one thread.
pub(crate) fn fill_chunks(
    len: usize,
    chunk_len: usize,
    fill: impl Fn(usize, &mut [f32]) + Sync,
) -> Vec<f32> {
    let mut values: Vec<f32> = Vec::with_capacity(len);
    values.spare_capacity_mut()[..len]
        .par_chunks_mut(chunk_len.max(1))
        .enumerate()
        .for_each(|(index, chunk)| {
            chunk.fill(MaybeUninit::new(0.0));
            // SAFETY: every element of `chunk` was initialised on the line above, and
            // `MaybeUninit<f32>` has the layout of `f32`.
            let chunk = unsafe { &mut *(std::ptr::from_mut(chunk) as *mut [f32]) };
            fill(index, chunk);
        });
    // SAFETY: the chunks cover `0..len`, and each was initialised above.
    unsafe { values.set_len(len) };
    values
}

/// Row-major `[rows, cols]` → row-major `[cols, rows]`, made on the current rayon pool one
/// output row at a time (on one thread, the transposed weight gradient took 13 % of a
/// 512-channel 3×3 convolution's on a 4×4 map at 2 threads).
///
/// # Panics
/// If `values` does not hold `rows · cols` values (a broken invariant of the caller).
pub(crate) fn transpose(values: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    assert_eq!(
        values.len(),
        rows * cols,
        "transpose of {} values as [{rows}, {cols}]",
        values.len()
    );
    fill_chunks(values.len(), rows, |c, column| {
        for (r, value) in column.iter_mut().enumerate() {
            *value = values[r * cols + c];
        }
    })
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn devices_parse_print_and_serialise_by_name() {
        for (text, device) in [
            ("cpu", ComputeDevice::Cpu),
            ("gpu:0", ComputeDevice::Gpu(0)),
            ("gpu:3", ComputeDevice::Gpu(3)),
        ] {
            assert_eq!(text.parse::<ComputeDevice>(), Ok(device));
            assert_eq!(device.to_string(), text);
            assert_eq!(
                serde_json::to_string(&device).unwrap(),
                format!("\"{text}\"")
            );
        }
        assert_eq!("gpu".parse::<ComputeDevice>(), Ok(ComputeDevice::Gpu(0)));
        for bad in ["cuda", "gpu:", "gpu:x", "CPU"] {
            assert!(bad.parse::<ComputeDevice>().unwrap_err().contains(bad));
        }
    }

    #[test]
    fn the_cpu_can_be_selected_repeatedly_and_then_stays_fixed() {
        select_device(ComputeDevice::Cpu).unwrap();
        select_device(ComputeDevice::Cpu).unwrap();
        let error = select_device(ComputeDevice::Gpu(0))
            .unwrap_err()
            .to_string();
        assert!(error.starts_with("--device:"), "{error}");
        assert!(error.contains("gpu:0"), "{error}");
    }

    #[test]
    fn fill_chunks_covers_every_value_once() {
        for (len, chunk) in [(0, 4), (1, 4), (10, 3), (12, 4), (7, 100)] {
            let filled = fill_chunks(len, chunk, |index, out| {
                for (i, v) in out.iter_mut().enumerate() {
                    *v += (index * chunk + i) as f32;
                }
            });
            let expected: Vec<f32> = (0..len).map(|i| i as f32).collect();
            assert_eq!(filled, expected, "len {len}, chunk {chunk}");
        }
    }
}
