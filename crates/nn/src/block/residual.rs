//! ResNet's residual blocks, [`BasicBlock`] and [`Bottleneck`]: each a whole residual unit
//! (main path, shortcut, final ReLU) as *one* block, so a pipeline cut never falls inside a
//! skip connection.
//!
//! Both are described by their layer paths (convolutions, batch norms and inner ReLUs on the
//! main path; an identity or a projecting 1×1 convolution + batch norm as the shortcut), from
//! which the shared layer code derives their parameters, forward and closed-form backward. They
//! normalise with batch statistics, so they do not stack rows.

use serde::{Deserialize, Serialize};

use super::{
    BOTTLENECK_EXPANSION, BlockKind, Layer, LayerPaths, Shape, check_window, product, window_map,
};
use crate::tensor::on_cpu;

/// ResNet's basic block: conv3×3(stride)–BN–ReLU–conv3×3–BN, plus the input (through a
/// 1×1 conv + BN when the shape changes), then ReLU.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct BasicBlock {
    /// Input shape.
    pub input: Shape,
    /// Output channels.
    pub planes: usize,
    /// Stride of the first convolution and of the shortcut.
    pub stride: usize,
}

/// ResNet's bottleneck block: conv1×1–BN–ReLU–conv3×3(stride)–BN–ReLU–conv1×1 (×4
/// channels)–BN, plus the input (projected when the shape changes), then ReLU.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Bottleneck {
    /// Input shape.
    pub input: Shape,
    /// Inner channels; the block outputs `4 × planes`.
    pub planes: usize,
    /// Stride of the 3×3 convolution and of the shortcut.
    pub stride: usize,
}

/// A bias-free convolution layer.
fn conv(
    in_channels: usize,
    out_channels: usize,
    kernel: usize,
    stride: usize,
    padding: usize,
) -> Layer {
    Layer::Conv {
        in_channels,
        out_channels,
        kernel,
        stride,
        padding,
        bias: false,
    }
}

/// A batch-norm layer.
fn norm(channels: usize) -> Layer {
    Layer::Norm { channels }
}

/// The shortcut from `c` to `out` channels with `stride`: a 1×1 convolution and a batch norm
/// when the shape changes, else the identity (no layers).
fn projection(c: usize, out: usize, stride: usize) -> Vec<(&'static str, Layer)> {
    if stride != 1 || c != out {
        vec![
            ("shortcut.0", conv(c, out, 1, stride, 0)),
            ("shortcut.1", norm(out)),
        ]
    } else {
        Vec::new()
    }
}

/// The shape rule both residual blocks share: some planes, and a 3×3 window of stride
/// `stride` and padding 1 (their first or middle convolution) that fits `input`.
fn check_residual(input: Shape, planes: usize, stride: usize) -> Result<(), String> {
    if planes == 0 {
        return Err("has 0 planes".into());
    }
    check_window(input, 3, stride, 1)
}

impl BlockKind for BasicBlock {
    fn input_shape(&self) -> Shape {
        self.input
    }

    fn output_shape(&self) -> Shape {
        let [oh, ow] = window_map(self.input, 3, self.stride, 1);
        [self.planes, oh, ow]
    }

    fn is_spatial(&self) -> bool {
        true
    }

    fn check(&self) -> Result<(), String> {
        check_residual(self.input, self.planes, self.stride)
    }

    fn label(&self) -> String {
        format!("basic {}/{}", self.planes, self.stride)
    }

    fn layer_paths(&self) -> Option<LayerPaths> {
        let BasicBlock {
            input,
            planes,
            stride,
        } = *self;
        Some(LayerPaths {
            main: vec![
                ("conv1", conv(input[0], planes, 3, stride, 1)),
                ("bn1", norm(planes)),
                ("", Layer::Relu),
                ("conv2", conv(planes, planes, 3, 1, 1)),
                ("bn2", norm(planes)),
            ],
            shortcut: Some(projection(input[0], planes, stride)),
        })
    }

    fn activation_values(&self) -> f64 {
        let output = product(self.output_shape());
        // conv1, bn1, conv2, bn2, the sum; a projected shortcut adds a conv and a bn.
        let projected = self.input != self.output_shape();
        output * if projected { 7.0 } else { 5.0 }
    }

    fn has_relu(&self) -> bool {
        true
    }

    fn has_closed_form(&self) -> bool {
        on_cpu()
    }

    fn stacks_rows(&self) -> bool {
        false
    }
}

impl BlockKind for Bottleneck {
    fn input_shape(&self) -> Shape {
        self.input
    }

    fn output_shape(&self) -> Shape {
        let [oh, ow] = window_map(self.input, 3, self.stride, 1);
        [BOTTLENECK_EXPANSION * self.planes, oh, ow]
    }

    fn is_spatial(&self) -> bool {
        true
    }

    fn check(&self) -> Result<(), String> {
        check_residual(self.input, self.planes, self.stride)
    }

    fn label(&self) -> String {
        format!("bottleneck {}/{}", self.planes, self.stride)
    }

    fn layer_paths(&self) -> Option<LayerPaths> {
        let Bottleneck {
            input,
            planes,
            stride,
        } = *self;
        let out = BOTTLENECK_EXPANSION * planes;
        Some(LayerPaths {
            main: vec![
                ("conv1", conv(input[0], planes, 1, 1, 0)),
                ("bn1", norm(planes)),
                ("", Layer::Relu),
                ("conv2", conv(planes, planes, 3, stride, 1)),
                ("bn2", norm(planes)),
                ("", Layer::Relu),
                ("conv3", conv(planes, out, 1, 1, 0)),
                ("bn3", norm(out)),
            ],
            shortcut: Some(projection(input[0], out, stride)),
        })
    }

    fn activation_values(&self) -> f64 {
        let output = product(self.output_shape());
        let [_, oh, ow] = self.output_shape();
        let projected = self.input != self.output_shape();
        // conv1 and bn1 at the input's resolution, conv2 and bn2 at the output's (`planes`
        // channels each), conv3, bn3 and the sum at the output's 4 × `planes` channels; a
        // projected shortcut adds a conv and a bn.
        let narrow = 2.0 * product([self.planes, self.input[1], self.input[2]])
            + 2.0 * product([self.planes, oh, ow]);
        let wide = output * if projected { 5.0 } else { 3.0 };
        narrow + wide
    }

    fn has_relu(&self) -> bool {
        true
    }

    fn has_closed_form(&self) -> bool {
        on_cpu()
    }

    fn stacks_rows(&self) -> bool {
        false
    }
}
