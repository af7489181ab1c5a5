//! What rank 0 decides for every rank before training ([`Start`]).
//!
//! Every rank builds the same [`timeprest_train::Pipeline`] (data, model, initial weights,
//! policy, each epoch's work) and runs one stage of it. Anything that could differ between
//! processes is decided once, by rank 0: the split into stages (a `--partition time` split is
//! measured, and two processes would measure differently), where checkpoints go, and which
//! checkpoint to resume.

use std::ops::Range;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use timeprest_train::checkpoint::{CheckpointState, Checkpointing};

use crate::error::MpiError;
use crate::wire::WireError;

/// What rank 0 decides for every rank before training: which blocks each stage owns, where
/// checkpoints go, and which checkpoint the run continues from. Rank 0 alone decides, so ranks
/// never disagree about them, even when started with different output flags.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Start {
    /// The blocks of each stage.
    pub split: Vec<Range<usize>>,
    /// Where and how often every rank writes its stage's checkpoint file.
    pub checkpoints: Option<Checkpointing>,
    /// The checkpoint to continue from.
    pub resume: Option<Resume>,
}

/// A checkpoint rank 0 has checked against the run: every rank restores its stage from it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Resume {
    /// The checkpoint directory (`checkpoint/` or `checkpoint.prev/` of the run directory).
    pub dir: PathBuf,
    /// Its `state.json`.
    pub state: CheckpointState,
}

impl Start {
    /// The message's bytes (JSON).
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a start message always serialises")
    }

    /// The start message rank `rank` sent as `bytes`.
    pub fn decode(rank: usize, bytes: &[u8]) -> Result<Self, MpiError> {
        serde_json::from_slice(bytes).map_err(|e| MpiError::Protocol {
            rank,
            cause: WireError::Invalid(format!("start message: {e}")),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_start_message_round_trips() {
        let start = Start {
            split: vec![0..2, 2..3, 3..7],
            checkpoints: Some(Checkpointing {
                run_dir: PathBuf::from("runs/a"),
                every: 2,
            }),
            resume: Some(Resume {
                dir: PathBuf::from("runs/a/checkpoint"),
                state: CheckpointState {
                    epoch: 3,
                    updates: 30,
                    config: timeprest_train::TrainConfig::default(),
                    stages: Vec::new(),
                },
            }),
        };
        assert_eq!(Start::decode(0, &start.encode()).unwrap(), start);
        assert!(matches!(
            Start::decode(0, &[1, 2, 3]),
            Err(MpiError::Protocol { rank: 0, .. })
        ));
    }
}
