//! The event log of a real run: what each stage did, when, on which weights.
//!
//! Every executed action becomes one [`Event`]. The log is what metrics (measured staleness,
//! stored versions, utilisation), traces and the comparison with the simulator are computed
//! from, so it records facts only, never derived figures.

use serde::{Deserialize, Serialize};
use timeprest_policy::WeightRecipe;
use timeprest_schedule::Action;

/// One executed action.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// The action.
    pub action: Action,
    /// Start, in seconds since the run began: when the inputs had arrived (waiting for a
    /// neighbour is idle time, not part of the action).
    pub start: f64,
    /// End, in seconds since the run began.
    pub end: f64,
    /// The stage's live version when the action started (shifted to the run's numbering).
    pub live: u64,
    /// What each pass read: one recipe for a forward, one per micro-batch for a backward.
    pub recipes: Vec<WeightRecipe>,
    /// For a backward: the staleness d of each micro-batch.
    pub staleness: Vec<u64>,
    /// Bytes sent to the neighbouring stage(s) by this action.
    pub bytes_sent: u64,
    /// Bytes of all weight sets the stage stored when the action ended.
    pub stored_weight_bytes: u64,
    /// Number of weight sets the stage stored when the action ended (after releases).
    pub stored_weight_sets: u32,
    /// The most bytes of activations the stage held for backwards during the action.
    #[serde(default)]
    pub activation_bytes: u64,
}
