//! Saving and restoring a stage at an epoch boundary.
//!
//! At the end of an epoch the pipeline has drained: every stage holds only its live version,
//! no saved activations and no accumulated gradients. Its whole state is then the live
//! parameters, the live version number and the optimizer state, which is what a checkpoint
//! stores and what [`BurnStage::restore`] puts back.

use super::BurnStage;
use crate::optim::OptimizerSnapshot;
use crate::store::WeightStore;
use crate::{ModelParams, NnError};

impl BurnStage {
    /// The optimizer state, for a checkpoint.
    pub fn optimizer_snapshot(&self) -> OptimizerSnapshot {
        self.optimizer.snapshot()
    }

    /// Puts the stage back into a checkpointed state: live weights `params` as version
    /// `live_version`, and the optimizer state `optimizer`.
    ///
    /// # Errors
    /// [`NnError::Mismatch`] if the stage is not drained (it holds saved activations or
    /// gradients), or `params` or `optimizer` do not fit the stage.
    pub fn restore(
        &mut self,
        live_version: u64,
        params: ModelParams,
        optimizer: OptimizerSnapshot,
    ) -> Result<(), NnError> {
        if !self.saved.is_empty() || self.accumulated.is_some() {
            return Err(NnError::Mismatch(format!(
                "stage {} cannot be restored in the middle of a mini-batch",
                self.stage
            )));
        }
        if params
            .iter()
            .map(|p| p.block)
            .ne(self.store.live().iter().map(|p| p.block))
        {
            return Err(NnError::Mismatch(format!(
                "checkpoint weights do not fit stage {}",
                self.stage
            )));
        }
        self.optimizer.restore(optimizer)?;
        self.store = WeightStore::resumed(params, live_version);
        Ok(())
    }
}
