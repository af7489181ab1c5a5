//! The convolution block, [`Conv2d`]: one square convolution layer, optionally biased, then
//! an optional ReLU.
//!
//! Its forward and closed-form backward are those of its one-layer layer paths (shared with the
//! batch-norm and residual blocks), so the layer's parameter layout, kernels and VJP are
//! written once for all of them.

use serde::{Deserialize, Serialize};

use super::{BlockKind, Layer, LayerPaths, Shape, check_window, window_map};

/// A square 2-D convolution (`weight` `[out, in, k, k]`, optional `bias`), then ReLU if
/// `relu`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Conv2d {
    /// Input shape.
    pub input: Shape,
    /// Output channels.
    pub channels: usize,
    /// Kernel side.
    pub kernel: usize,
    /// Stride.
    pub stride: usize,
    /// Zero padding on every side.
    pub padding: usize,
    /// Whether the convolution has a bias.
    pub bias: bool,
    /// Whether a ReLU follows.
    pub relu: bool,
}

impl BlockKind for Conv2d {
    fn input_shape(&self) -> Shape {
        self.input
    }

    fn output_shape(&self) -> Shape {
        let [oh, ow] = window_map(self.input, self.kernel, self.stride, self.padding);
        [self.channels, oh, ow]
    }

    fn is_spatial(&self) -> bool {
        true
    }

    fn check(&self) -> Result<(), String> {
        if self.channels == 0 {
            return Err("has 0 output channels".into());
        }
        check_window(self.input, self.kernel, self.stride, self.padding)
    }

    fn label(&self) -> String {
        let Conv2d {
            channels,
            kernel,
            stride,
            ..
        } = *self;
        let s = if stride == 1 {
            String::new()
        } else {
            format!("/{stride}")
        };
        format!("conv{kernel}x{kernel} {channels}{s}")
    }

    fn layer_paths(&self) -> Option<LayerPaths> {
        Some(LayerPaths::single(Layer::Conv {
            in_channels: self.input[0],
            out_channels: self.channels,
            kernel: self.kernel,
            stride: self.stride,
            padding: self.padding,
            bias: self.bias,
        }))
    }

    fn has_relu(&self) -> bool {
        self.relu
    }

    fn has_closed_form(&self) -> bool {
        true
    }
}
