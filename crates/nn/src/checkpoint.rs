//! Model parameters (and a stage's checkpoint) to and from safetensors files, with
//! split-independent names.
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
//!
//! A stage's checkpoint file is the same encoding of the stage's blocks (with their global
//! indices) plus the optimizer's buffers, `optimizer.<first|second>.<block>.<param>`
//! ([`stage_checkpoint_bytes`], [`read_stage_checkpoint`]); the directory protocol that makes
//! a checkpoint atomic lives in `timeprest_train::checkpoint`.

use std::path::Path;

use safetensors::{Dtype, SafeTensors, tensor::TensorView};

use crate::{Block, BlockParams, ModelParams, ModelSpec, NnError, OptimizerSnapshot};

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

/// Tensors by name: name, shape in the file, values.
type NamedTensors = Vec<(String, Vec<usize>, Vec<f32>)>;

/// The state tensors of the blocks `params`, the first of which has the global index
/// `first_block`.
fn block_tensors(first_block: usize, params: &[BlockParams]) -> NamedTensors {
    let mut named = Vec::new();
    for (offset, p) in params.iter().enumerate() {
        for ((name, shape), values) in state_tensors(p.block).zip(p.to_file_layout()) {
            named.push((param_name(first_block + offset, &name), shape, values));
        }
    }
    named
}

/// The safetensors bytes of `named` (f32, little-endian); `path` is the file they are meant
/// for, named in errors.
fn serialize(path: &Path, named: &NamedTensors) -> Result<Vec<u8>, NnError> {
    let bytes: Vec<Vec<u8>> = named
        .iter()
        .map(|(_, _, values)| values.iter().flat_map(|v| v.to_le_bytes()).collect())
        .collect();
    let safetensors_error = |e: safetensors::SafeTensorError| NnError::Safetensors {
        path: path.to_owned(),
        detail: e.to_string(),
    };
    let views = named
        .iter()
        .zip(&bytes)
        .map(|((name, shape, _), bytes)| {
            TensorView::new(Dtype::F32, shape.clone(), bytes).map(|v| (name.as_str(), v))
        })
        .collect::<Result<Vec<_>, _>>()
        .map_err(safetensors_error)?;
    safetensors::serialize(views, None).map_err(safetensors_error)
}

/// The safetensors file of `params` (all blocks of a model, in order, global indices from 0);
/// `path` is the file it is meant for, named in errors.
///
/// # Errors
/// [`NnError::Safetensors`] if serialising fails.
pub fn safetensors_bytes(path: &Path, params: &[BlockParams]) -> Result<Vec<u8>, NnError> {
    serialize(path, &block_tensors(0, params))
}

/// The name of the optimizer buffer `moment` (`first` or `second`) of parameter `param` of
/// block `block`.
fn optimizer_name(moment: &str, block: usize, param: &str) -> String {
    format!("optimizer.{moment}.{block}.{param}")
}

/// The checkpoint file of one stage: the blocks `params` (the first with global index
/// `first_block`) as [`safetensors_bytes`] stores them, and the buffers of `optimizer`
/// (its step count is not stored here: the caller keeps it with the stage's other scalars).
///
/// # Errors
/// [`NnError::Safetensors`] if serialising fails.
pub fn stage_checkpoint_bytes(
    path: &Path,
    first_block: usize,
    params: &[BlockParams],
    optimizer: &OptimizerSnapshot,
) -> Result<Vec<u8>, NnError> {
    let mut named = block_tensors(first_block, params);
    for (offset, block) in params.iter().enumerate() {
        let names = block.block.param_names();
        for (moment, buffers) in [("first", &optimizer.first), ("second", &optimizer.second)] {
            let Some(buffers) = buffers.get(offset) else {
                continue;
            };
            for (name, buffer) in names.iter().zip(buffers) {
                if let Some(values) = buffer {
                    let key = optimizer_name(moment, first_block + offset, name);
                    named.push((key, vec![values.len()], values.clone()));
                }
            }
        }
    }
    serialize(path, &named)
}

/// Reads the checkpoint file of one stage written by [`stage_checkpoint_bytes`]: the weights of
/// blocks shaped as `template` (the stage's blocks, the first with global index `first_block`)
/// and the optimizer's buffers, with `steps` as its step count.
///
/// # Errors
/// Those of [`load_safetensors`] for the file and for each tensor.
pub fn read_stage_checkpoint(
    path: &Path,
    first_block: usize,
    template: &[BlockParams],
    steps: u64,
) -> Result<(ModelParams, OptimizerSnapshot), NnError> {
    let bytes = read_file(path)?;
    let file = parse(path, &bytes)?;
    let mut expected = Vec::new();
    let blocks: Vec<Block> = template.iter().map(|params| params.block).collect();
    let params = read_blocks(&file, path, first_block, &blocks, &mut expected)?;
    let mut optimizer = OptimizerSnapshot {
        steps,
        first: Vec::new(),
        second: Vec::new(),
    };
    for (offset, block) in blocks.iter().enumerate() {
        let index = first_block + offset;
        for (moment, buffers) in [
            ("first", &mut optimizer.first),
            ("second", &mut optimizer.second),
        ] {
            let mut per_param = Vec::new();
            for (name, len) in block.param_names().iter().zip(block.param_sizes()) {
                let key = optimizer_name(moment, index, name);
                per_param.push(match file.tensor(&key) {
                    Ok(_) => Some(read_tensor(&file, path, &key, &[len])?),
                    Err(_) => None,
                });
                expected.push(key);
            }
            buffers.push(per_param);
        }
    }
    refuse_unexpected(&file, path, &expected)?;
    Ok((params, optimizer))
}

/// The state of `blocks` (the first with global index `first_block`) read from `file`; the
/// names read are appended to `expected`.
fn read_blocks(
    file: &SafeTensors<'_>,
    path: &Path,
    first_block: usize,
    blocks: &[Block],
    expected: &mut Vec<String>,
) -> Result<ModelParams, NnError> {
    let mut params = Vec::with_capacity(blocks.len());
    for (offset, &block) in blocks.iter().enumerate() {
        let mut values = Vec::new();
        for (param, shape) in state_tensors(block) {
            let name = param_name(first_block + offset, &param);
            values.push(read_tensor(file, path, &name, &shape)?);
            expected.push(name);
        }
        params.push(BlockParams::from_file_layout(block, values));
    }
    Ok(params)
}

fn read_file(path: &Path) -> Result<Vec<u8>, NnError> {
    std::fs::read(path).map_err(|e| NnError::Io {
        path: path.to_owned(),
        source: e,
    })
}

fn parse<'a>(path: &Path, bytes: &'a [u8]) -> Result<SafeTensors<'a>, NnError> {
    SafeTensors::deserialize(bytes).map_err(|e| NnError::Safetensors {
        path: path.to_owned(),
        detail: e.to_string(),
    })
}

/// The values of the f32 tensor `name` of shape `shape` in `file` (read from `path`), all
/// finite.
fn read_tensor(
    file: &SafeTensors<'_>,
    path: &Path,
    name: &str,
    shape: &[usize],
) -> Result<Vec<f32>, NnError> {
    let view = file.tensor(name).map_err(|_| NnError::MissingTensor {
        path: path.to_owned(),
        name: name.to_owned(),
    })?;
    if view.dtype() != Dtype::F32 || view.shape() != shape {
        return Err(NnError::TensorMismatch {
            path: path.to_owned(),
            name: name.to_owned(),
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
            name: name.to_owned(),
            count: tensor.iter().filter(|v| !v.is_finite()).count(),
            index,
            value: tensor[index],
        });
    }
    Ok(tensor)
}

/// Refuses a file that holds a tensor not in `expected`.
fn refuse_unexpected(
    file: &SafeTensors<'_>,
    path: &Path,
    expected: &[String],
) -> Result<(), NnError> {
    let mut names = file.names();
    names.sort_unstable();
    match names.into_iter().find(|n| !expected.iter().any(|e| e == n)) {
        Some(extra) => Err(NnError::UnexpectedTensor {
            path: path.to_owned(),
            name: extra.to_owned(),
        }),
        None => Ok(()),
    }
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
    let bytes = read_file(path)?;
    let file = parse(path, &bytes)?;
    let mut expected = Vec::new();
    let params = read_blocks(&file, path, 0, &spec.blocks(), &mut expected)?;
    refuse_unexpected(&file, path, &expected)?;
    Ok(params)
}
