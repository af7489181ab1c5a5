//! The optimizer's state as plain numbers, for checkpoints.
//!
//! A resumed run must continue bit for bit, so the snapshot holds every bit of state the update
//! rule reads: the step count (Adam's bias correction) and, per parameter tensor, the momentum
//! buffer or Adam's moments, exactly as `f32` values.

use serde::{Deserialize, Serialize};

use super::{Optimizer, ParamState};
use crate::NnError;
use crate::tensor::{tensor1, to_vec};

/// Every bit of an [`Optimizer`]'s state.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct OptimizerSnapshot {
    /// Steps taken.
    pub steps: u64,
    /// Per block, per parameter tensor: SGD's momentum buffer or Adam's first moment.
    pub first: Vec<Vec<Option<Vec<f32>>>>,
    /// Per block, per parameter tensor: Adam's second moment.
    pub second: Vec<Vec<Option<Vec<f32>>>>,
}

impl Optimizer {
    /// The optimizer's state as plain numbers.
    pub fn snapshot(&self) -> OptimizerSnapshot {
        let collect = |pick: fn(&ParamState) -> Option<Vec<f32>>| {
            self.state
                .iter()
                .map(|block| block.iter().map(pick).collect())
                .collect()
        };
        OptimizerSnapshot {
            steps: self.steps,
            first: collect(|s| s.first.as_ref().map(to_vec)),
            second: collect(|s| s.second.as_ref().map(to_vec)),
        }
    }

    /// Replaces the state by `snapshot`.
    ///
    /// # Errors
    /// [`NnError::Mismatch`] if the snapshot's shape (blocks × tensors) differs from a state
    /// this optimizer already has.
    pub fn restore(&mut self, snapshot: OptimizerSnapshot) -> Result<(), NnError> {
        if snapshot.first.len() != snapshot.second.len() {
            return Err(NnError::Mismatch(
                "optimizer snapshot: moment lists differ".into(),
            ));
        }
        if !self.state.is_empty()
            && self
                .state
                .iter()
                .map(Vec::len)
                .ne(snapshot.first.iter().map(Vec::len))
        {
            return Err(NnError::Mismatch(
                "optimizer snapshot does not match this stage's parameters".into(),
            ));
        }
        self.steps = snapshot.steps;
        self.state = snapshot
            .first
            .into_iter()
            .zip(snapshot.second)
            .map(|(first, second)| {
                first
                    .into_iter()
                    .zip(second)
                    .map(|(m, v)| ParamState {
                        first: m.map(tensor1),
                        second: v.map(tensor1),
                    })
                    .collect()
            })
            .collect();
        Ok(())
    }
}
