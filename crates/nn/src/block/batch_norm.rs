//! The batch-normalisation block, [`BatchNorm2d`]: normalisation over channels with γ, β and
//! running statistics, then an optional ReLU.
//!
//! Like the convolution block it is one layer of layer paths, so its parameters, buffers,
//! forward and closed-form backward come from the shared layer code. It normalises with the
//! batch's statistics while training, so its VJP at stacked micro-batches is not theirs one by
//! one (it does not stack rows).

use serde::{Deserialize, Serialize};

use super::{BlockKind, Layer, LayerPaths, Shape};
use crate::tensor::on_cpu;

/// Batch normalisation over channels (`weight` γ, `bias` β; buffers `running_mean`,
/// `running_var`), then ReLU if `relu`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct BatchNorm2d {
    /// Input shape.
    pub input: Shape,
    /// Whether a ReLU follows.
    pub relu: bool,
}

impl BlockKind for BatchNorm2d {
    fn input_shape(&self) -> Shape {
        self.input
    }

    fn output_shape(&self) -> Shape {
        self.input
    }

    fn is_spatial(&self) -> bool {
        true
    }

    fn label(&self) -> String {
        format!("bn {}", self.input[0])
    }

    fn layer_paths(&self) -> Option<LayerPaths> {
        Some(LayerPaths::single(Layer::Norm {
            channels: self.input[0],
        }))
    }

    fn has_relu(&self) -> bool {
        self.relu
    }

    fn has_closed_form(&self) -> bool {
        on_cpu()
    }

    fn stacks_rows(&self) -> bool {
        false
    }
}
