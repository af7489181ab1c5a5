//! The pooling blocks: [`MaxPool2d`], [`AvgPool2d`] and [`GlobalAvgPool`].
//!
//! They have no weights and no layer paths; each has its own forward and closed-form backward
//! here: max pooling through [`crate::pool_kernel`] on host memory (burn's op elsewhere) and
//! routing each output gradient to its window's first maximum; global average pooling as a
//! mean over each map, spreading its gradient evenly; average pooling (in no zoo model) through
//! burn's op, differentiated by burn's VJP of the pool alone.

use burn::tensor::Tensor;
use burn::tensor::module::{avg_pool2d, max_pool2d};
use burn::tensor::ops::{AvgPoolOptions, MaxPoolOptions};
use serde::{Deserialize, Serialize};

use super::vjp::{autodiff_input_grad, image_vjp};
use super::{
    BlockKind, Norm, Shape, Vjp, check_window, features, flatten, image, product, window_map,
};
use crate::pool_kernel::{PoolGeometry, max_pool_backward, max_pool_forward};
use crate::tensor::{host_values, on_cpu, tensor1, tensor2, values};

/// Square max pooling.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct MaxPool2d {
    /// Input shape.
    pub input: Shape,
    /// Window side.
    pub kernel: usize,
    /// Stride.
    pub stride: usize,
    /// Padding (ignored positions).
    pub padding: usize,
}

/// Square average pooling (padding counted, as PyTorch's default).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct AvgPool2d {
    /// Input shape.
    pub input: Shape,
    /// Window side.
    pub kernel: usize,
    /// Stride.
    pub stride: usize,
    /// Zero padding.
    pub padding: usize,
}

/// Mean over each channel's whole map: `[c, h, w] → [c, 1, 1]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct GlobalAvgPool {
    /// Input shape.
    pub input: Shape,
}

/// The square window that [`MaxPool2d`] and [`AvgPool2d`] slide over the map: what their
/// shapes, checks and costs depend on.
#[derive(Clone, Copy)]
struct Window {
    input: Shape,
    kernel: usize,
    stride: usize,
    padding: usize,
}

impl Window {
    fn new(input: Shape, kernel: usize, stride: usize, padding: usize) -> Self {
        Self {
            input,
            kernel,
            stride,
            padding,
        }
    }

    fn output_shape(self) -> Shape {
        let [oh, ow] = window_map(self.input, self.kernel, self.stride, self.padding);
        [self.input[0], oh, ow]
    }

    fn check(self) -> Result<(), String> {
        check_window(self.input, self.kernel, self.stride, self.padding)
    }

    /// The cost of one sample: one per value of each window.
    fn ops(self) -> f64 {
        product(self.output_shape()) * (self.kernel * self.kernel) as f64
    }
}

impl MaxPool2d {
    fn window(&self) -> Window {
        Window::new(self.input, self.kernel, self.stride, self.padding)
    }

    /// The window geometry of the pool, for the kernels.
    fn geometry(&self) -> PoolGeometry {
        let Window {
            input: [_, height, width],
            kernel,
            stride,
            padding,
        } = self.window();
        PoolGeometry {
            height,
            width,
            kernel,
            stride,
            padding,
        }
    }
}

impl AvgPool2d {
    fn window(&self) -> Window {
        Window::new(self.input, self.kernel, self.stride, self.padding)
    }
}

impl BlockKind for MaxPool2d {
    fn input_shape(&self) -> Shape {
        self.input
    }

    fn output_shape(&self) -> Shape {
        self.window().output_shape()
    }

    fn is_spatial(&self) -> bool {
        true
    }

    fn check(&self) -> Result<(), String> {
        self.window().check()
    }

    fn label(&self) -> String {
        format!("maxpool{}", self.kernel)
    }

    fn forward_ops(&self) -> f64 {
        self.window().ops()
    }

    fn forward_weighted(
        &self,
        x: Tensor<2>,
        _params: &[Tensor<1>],
        _norm: Norm<'_>,
        _layer_inputs: Option<&mut Vec<Tensor<4>>>,
    ) -> Tensor<2> {
        let MaxPool2d {
            kernel,
            stride,
            padding,
            ..
        } = *self;
        let batch = x.dims()[0];
        let geometry = self.geometry();
        if let Some(x) = host_values(&x) {
            let pooled = max_pool_forward(&geometry, &x);
            return tensor2(pooled, batch, features(self.output_shape()));
        }
        let pooled = max_pool2d(
            image(x, self.input),
            MaxPoolOptions::new([kernel, kernel])
                .with_stride([stride, stride])
                .with_padding([padding, padding]),
        );
        flatten(pooled, self.output_shape())
    }

    fn has_closed_form(&self) -> bool {
        on_cpu()
    }

    fn closed_form_vjp(
        &self,
        x: &Tensor<2>,
        _params: &[Tensor<1>],
        g: &Tensor<2>,
        need_input_grad: bool,
        _defer_weight_grad: bool,
        _layer_inputs: Option<&[Tensor<4>]>,
    ) -> Option<Vjp<2>> {
        Some(image_vjp(self, x, g, |image, g| {
            let geometry = self.geometry();
            let input_grad = need_input_grad.then(|| {
                let dx = max_pool_backward(&geometry, &values(&image), &values(&g));
                tensor1(dx).reshape(image.dims())
            });
            (Vec::new(), input_grad)
        }))
    }
}

impl BlockKind for AvgPool2d {
    fn input_shape(&self) -> Shape {
        self.input
    }

    fn output_shape(&self) -> Shape {
        self.window().output_shape()
    }

    fn is_spatial(&self) -> bool {
        true
    }

    fn check(&self) -> Result<(), String> {
        self.window().check()
    }

    fn label(&self) -> String {
        format!("avgpool{}", self.kernel)
    }

    fn forward_ops(&self) -> f64 {
        self.window().ops()
    }

    fn forward_weighted(
        &self,
        x: Tensor<2>,
        _params: &[Tensor<1>],
        _norm: Norm<'_>,
        _layer_inputs: Option<&mut Vec<Tensor<4>>>,
    ) -> Tensor<2> {
        let AvgPool2d {
            kernel,
            stride,
            padding,
            ..
        } = *self;
        let pooled = avg_pool2d(
            image(x, self.input),
            AvgPoolOptions::new([kernel, kernel])
                .with_stride([stride, stride])
                .with_padding([padding, padding]),
        );
        flatten(pooled, self.output_shape())
    }

    fn has_closed_form(&self) -> bool {
        on_cpu()
    }

    fn closed_form_vjp(
        &self,
        x: &Tensor<2>,
        _params: &[Tensor<1>],
        g: &Tensor<2>,
        need_input_grad: bool,
        _defer_weight_grad: bool,
        _layer_inputs: Option<&[Tensor<4>]>,
    ) -> Option<Vjp<2>> {
        // No zoo model has an average pool: burn's VJP of the pool alone.
        Some(image_vjp(self, x, g, |image, g| {
            let [batch, c, h, w] = image.dims();
            let [co, ho, wo] = self.output_shape();
            let input_grad = need_input_grad.then(|| {
                autodiff_input_grad(image, g, |x| {
                    let features = self.forward_weighted(
                        x.reshape([batch, c * h * w]),
                        &[],
                        Norm::Batch(&mut Vec::new()),
                        None,
                    );
                    features.reshape([batch, co, ho, wo])
                })
            });
            (Vec::new(), input_grad)
        }))
    }
}

impl BlockKind for GlobalAvgPool {
    fn input_shape(&self) -> Shape {
        self.input
    }

    fn output_shape(&self) -> Shape {
        [self.input[0], 1, 1]
    }

    fn is_spatial(&self) -> bool {
        true
    }

    fn label(&self) -> String {
        "global-avgpool".into()
    }

    fn forward_ops(&self) -> f64 {
        (self.input[0] * self.input[1] * self.input[2]) as f64
    }

    fn forward_weighted(
        &self,
        x: Tensor<2>,
        _params: &[Tensor<1>],
        _norm: Norm<'_>,
        _layer_inputs: Option<&mut Vec<Tensor<4>>>,
    ) -> Tensor<2> {
        let batch = x.dims()[0];
        let [c, h, w] = self.input;
        x.reshape([batch, c, h * w]).mean_dim(2).reshape([batch, c])
    }

    fn has_closed_form(&self) -> bool {
        on_cpu()
    }

    fn closed_form_vjp(
        &self,
        x: &Tensor<2>,
        _params: &[Tensor<1>],
        g: &Tensor<2>,
        need_input_grad: bool,
        _defer_weight_grad: bool,
        _layer_inputs: Option<&[Tensor<4>]>,
    ) -> Option<Vjp<2>> {
        Some(image_vjp(self, x, g, |image, g| {
            let [batch, c, h, w] = image.dims();
            // Every position of a channel receives its output gradient over h·w.
            let input_grad = need_input_grad.then(|| {
                g.div_scalar((h * w) as f64)
                    .expand([batch, c, h, w])
                    .reshape([batch, c, h, w])
            });
            (Vec::new(), input_grad)
        }))
    }
}
