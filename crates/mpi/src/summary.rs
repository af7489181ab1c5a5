//! What a rank tells rank 0 at the end of an epoch: its events, losses and live weights.
//!
//! Rank 0 evaluates the model, writes the metrics and saves the weights, so it needs every
//! stage's live parameters and event log after each epoch, exactly. Everything numeric travels
//! as raw little-endian bits (losses as `f64`, weights as `f32`), so the metrics and weights
//! rank 0 writes are bit-identical to a threaded run's; only the events, whose times are
//! measurements anyway, travel as JSON.

use timeprest_nn::{BlockParams, ModelParams, tensor1, to_vec};
use timeprest_runtime::{Event, LossStats};
use timeprest_schedule::MicrobatchId;

use crate::error::MpiError;
use crate::wire::{Reader, WireError, put_bytes, put_f32s, put_len};

/// The tensors of one block, as plain values: its parameters, then its buffers.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct BlockValues {
    /// The trainable tensors, memory layout.
    pub tensors: Vec<Vec<f32>>,
    /// The buffers (batch-norm statistics).
    pub buffers: Vec<Vec<f32>>,
}

impl BlockValues {
    /// The values of `params`.
    pub fn of(params: &BlockParams) -> Self {
        Self {
            tensors: params.tensors.iter().map(to_vec).collect(),
            buffers: params.buffers.iter().map(to_vec).collect(),
        }
    }

    /// Block parameters of the same kind as `template`, holding these values.
    pub fn into_params(self, template: &BlockParams) -> BlockParams {
        BlockParams {
            block: template.block,
            tensors: self.tensors.into_iter().map(tensor1).collect(),
            buffers: self.buffers.into_iter().map(tensor1).collect(),
        }
    }
}

/// One rank's share of an epoch.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Summary {
    /// Wall-clock seconds of the rank's pipelined run.
    pub seconds: f64,
    /// The stage's events.
    pub events: Vec<Event>,
    /// Loss statistics (last stage only).
    pub losses: Vec<(MicrobatchId, LossStats)>,
    /// The stage's live weights, per block.
    pub blocks: Vec<BlockValues>,
}

impl Summary {
    /// The summary's bytes.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(&self.seconds.to_le_bytes());
        let events = serde_json::to_vec(&self.events).expect("events always serialise");
        put_bytes(&mut out, &events);
        put_len(&mut out, self.losses.len());
        for (id, stats) in &self.losses {
            out.extend_from_slice(&id.minibatch.to_le_bytes());
            out.extend_from_slice(&id.microbatch.to_le_bytes());
            out.extend_from_slice(&stats.loss_sum.to_le_bytes());
            out.extend_from_slice(&stats.correct.to_le_bytes());
            out.extend_from_slice(&stats.count.to_le_bytes());
        }
        put_len(&mut out, self.blocks.len());
        for block in &self.blocks {
            for list in [&block.tensors, &block.buffers] {
                put_len(&mut out, list.len());
                for values in list {
                    put_len(&mut out, values.len());
                    put_f32s(&mut out, values);
                }
            }
        }
        out
    }

    /// The summary rank `rank` sent as `bytes`.
    pub fn decode(rank: usize, bytes: &[u8]) -> Result<Self, MpiError> {
        Self::read(bytes).map_err(|cause| MpiError::Protocol { rank, cause })
    }

    fn read(bytes: &[u8]) -> Result<Self, WireError> {
        let mut reader = Reader::new(bytes);
        let seconds = reader.f64()?;
        let events = serde_json::from_slice(reader.bytes()?)
            .map_err(|e| WireError::Invalid(format!("events: {e}")))?;
        let losses = (0..reader.length()?)
            .map(|_| {
                let id = MicrobatchId::new(reader.u32()?, reader.u32()?);
                let stats = LossStats {
                    loss_sum: reader.f64()?,
                    correct: reader.u64()?,
                    count: reader.u64()?,
                };
                Ok((id, stats))
            })
            .collect::<Result<_, WireError>>()?;
        let tensor_list = |reader: &mut Reader| -> Result<Vec<Vec<f32>>, WireError> {
            (0..reader.length()?)
                .map(|_| {
                    let len = reader.length()?;
                    reader.f32s(len)
                })
                .collect()
        };
        let blocks = (0..reader.length()?)
            .map(|_| {
                Ok(BlockValues {
                    tensors: tensor_list(&mut reader)?,
                    buffers: tensor_list(&mut reader)?,
                })
            })
            .collect::<Result<_, WireError>>()?;
        reader.finish()?;
        Ok(Summary {
            seconds,
            events,
            losses,
            blocks,
        })
    }
}

/// The whole model from the per-stage summaries (in stage order), with the block kinds of
/// `templates` (any parameters of the same model).
pub fn assemble_params(summaries: Vec<Summary>, templates: &[BlockParams]) -> ModelParams {
    summaries
        .into_iter()
        .flat_map(|summary| summary.blocks)
        .zip(templates)
        .map(|(values, template)| values.into_params(template))
        .collect()
}

#[cfg(test)]
mod tests {
    use timeprest_policy::WeightRecipe;
    use timeprest_schedule::Action;

    use super::*;

    fn summary() -> Summary {
        let action: Action = "2F5.1".parse().unwrap();
        Summary {
            seconds: 0.125,
            events: vec![Event {
                action,
                start: 0.5,
                end: 0.75,
                live: 3,
                recipes: vec![WeightRecipe::Version { version: 2 }],
                staleness: vec![1],
                bytes_sent: 40,
                stored_weight_bytes: 400,
                stored_weight_sets: 2,
                activation_bytes: 0,
            }],
            losses: vec![(
                MicrobatchId::new(5, 1),
                LossStats {
                    loss_sum: 0.1 + 0.2,
                    correct: 3,
                    count: 4,
                },
            )],
            blocks: vec![
                BlockValues {
                    tensors: vec![vec![1.0, f32::MIN_POSITIVE, -3.3e-38], vec![]],
                    buffers: vec![],
                },
                BlockValues {
                    tensors: vec![vec![0.1]],
                    buffers: vec![vec![2.5, 7.0]],
                },
            ],
        }
    }

    #[test]
    fn a_summary_round_trips_exactly() {
        let original = summary();
        let decoded = Summary::decode(1, &original.encode()).unwrap();
        assert_eq!(decoded, original);
        assert_eq!(
            decoded.losses[0].1.loss_sum.to_bits(),
            (0.1f64 + 0.2).to_bits()
        );
    }

    #[test]
    fn a_damaged_summary_names_its_sender() {
        let bytes = summary().encode();
        let error = Summary::decode(2, &bytes[..bytes.len() - 2]).unwrap_err();
        assert!(
            matches!(error, MpiError::Protocol { rank: 2, .. }),
            "{error}"
        );
    }
}
