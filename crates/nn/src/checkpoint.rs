//! Model parameters to and from safetensors files, with split-independent names.
//!
//! Tensors are named `layers.<i>.<param>` with the *global* block index and stored f32 in
//! PyTorch's layouts (a linear weight is `[out, in]`, a convolution weight `[out, in, k, k]`),
//! so a file saved from any pipeline split loads into any other split, and into PyTorch's
//! modules after a rename. Batch norms' running statistics are stored too
//! (`layers.<i>.running_mean`, `layers.<i>.bn1.running_var`, …): they are part of the state
//! evaluation reads.
//! Loading is strict: every tensor of the model must be there with the right shape and dtype,
//! holding finite values only (a NaN would otherwise surface epochs later as "training
//! diverged"), and nothing else may be, each failure naming the file and the tensor. Saving only
//! makes the bytes ([`safetensors_bytes`]): the train crate writes every output file, atomically
//! and only over regular files, in one place (`timeprest_train::output`).

use std::path::Path;

use safetensors::{Dtype, SafeTensors, tensor::TensorView};

use crate::{Block, BlockParams, ModelParams, ModelSpec, NnError};

/// The name of parameter `param` of block `block`.
pub fn param_name(block: usize, param: &str) -> String {
    format!("layers.{block}.{param}")
}

/// Name suffixes and file shapes of everything a block stores: its parameters, then its
/// buffers (batch norms' running statistics, PyTorch's `running_mean`/`running_var`).
fn state_tensors(block: Block) -> impl Iterator<Item = (String, Vec<usize>)> {
    block
        .param_infos()
        .into_iter()
        .chain(block.buffer_infos())
        .map(|t| (t.name, t.shape))
}

/// The safetensors file of `params` (all blocks of a model, in order, global indices from 0);
/// `path` is the file it is meant for, named in errors.
///
/// # Errors
/// [`NnError::Safetensors`] if serialising fails.
pub fn safetensors_bytes(path: &Path, params: &[BlockParams]) -> Result<Vec<u8>, NnError> {
    let mut named: Vec<(String, Vec<usize>, Vec<u8>)> = Vec::new();
    for (b, p) in params.iter().enumerate() {
        for ((name, shape), values) in state_tensors(p.block).zip(p.to_file_layout()) {
            let bytes = values.iter().flat_map(|v| v.to_le_bytes()).collect();
            named.push((param_name(b, &name), shape, bytes));
        }
    }
    let safetensors_error = |e: safetensors::SafeTensorError| NnError::Safetensors {
        path: path.to_owned(),
        detail: e.to_string(),
    };
    let views = named
        .iter()
        .map(|(name, shape, bytes)| {
            TensorView::new(Dtype::F32, shape.clone(), bytes).map(|v| (name.as_str(), v))
        })
        .collect::<Result<Vec<_>, _>>()
        .map_err(safetensors_error)?;
    safetensors::serialize(views, None).map_err(safetensors_error)
}

/// Reads the parameters of `spec` from `path`.
///
/// # Errors
/// [`NnError::Io`] if the file cannot be read, [`NnError::Safetensors`] if it is not a valid
/// safetensors file, [`NnError::MissingTensor`], [`NnError::UnexpectedTensor`] or
/// [`NnError::TensorMismatch`] (wrong shape or dtype) naming the tensor,
/// [`NnError::NonFiniteTensor`] if a tensor holds a NaN or an infinite value, and
/// [`NnError::InvalidModel`] if `spec` itself is invalid.
pub fn load_safetensors(path: &Path, spec: &ModelSpec) -> Result<ModelParams, NnError> {
    spec.validate()?;
    let bytes = std::fs::read(path).map_err(|e| NnError::Io {
        path: path.to_owned(),
        source: e,
    })?;
    let file = SafeTensors::deserialize(&bytes).map_err(|e| NnError::Safetensors {
        path: path.to_owned(),
        detail: e.to_string(),
    })?;
    let blocks = spec.blocks();
    let mut expected_names = Vec::new();
    let mut params = Vec::with_capacity(blocks.len());
    for (b, block) in blocks.into_iter().enumerate() {
        let mut values = Vec::new();
        for (param, shape) in state_tensors(block) {
            let name = param_name(b, &param);
            let view = file.tensor(&name).map_err(|_| NnError::MissingTensor {
                path: path.to_owned(),
                name: name.clone(),
            })?;
            if view.dtype() != Dtype::F32 || view.shape() != shape.as_slice() {
                return Err(NnError::TensorMismatch {
                    path: path.to_owned(),
                    name,
                    expected: format!("F32 {shape:?}"),
                    found: format!("{:?} {:?}", view.dtype(), view.shape()),
                });
            }
            let tensor: Vec<f32> = view
                .data()
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect();
            if let Some(index) = tensor.iter().position(|v| !v.is_finite()) {
                return Err(NnError::NonFiniteTensor {
                    path: path.to_owned(),
                    name,
                    count: tensor.iter().filter(|v| !v.is_finite()).count(),
                    index,
                    value: tensor[index],
                });
            }
            values.push(tensor);
            expected_names.push(name);
        }
        params.push(BlockParams::from_file_layout(block, values));
    }
    let mut names = file.names();
    names.sort_unstable();
    if let Some(extra) = names
        .into_iter()
        .find(|n| !expected_names.iter().any(|e| e == n))
    {
        return Err(NnError::UnexpectedTensor {
            path: path.to_owned(),
            name: extra.to_owned(),
        });
    }
    Ok(params)
}
