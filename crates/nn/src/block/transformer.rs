//! `gpt`'s blocks: [`Embedding`] (token + position embedding), [`DecoderLayer`] (a
//! pre-LayerNorm decoder layer with causal multi-head self-attention and a GELU MLP) and
//! [`LmHead`] (the language-model head), with their forwards.
//!
//! Like every block, their forwards are functions of (input, parameters) built from burn's
//! tensor ops, so they run the same on plain and autodiff tensors, with any weight version.
//! Each takes its parameter list in the order of its layer paths and messages as
//! `[batch, T·features]`, viewed as `[batch·T, features]` inside. A decoder layer is one
//! block with both residual connections inside, so a pipeline cut never falls inside a
//! residual. They have no closed-form backward: graph mode differentiates them by autodiff.
//!
//! Layer normalisation is written out from mean and variance (over the features of each
//! position, biased variance, ε = [`LN_EPSILON`]) rather than taken from burn's fused op, so
//! its gradient is plain autodiff over elementwise ops. The MLP uses the exact (erf) GELU,
//! PyTorch's `nn.GELU()` default. No dropout (see the model zoo's documentation).

use burn::tensor::Tensor;
use burn::tensor::activation::{gelu, softmax};
use serde::{Deserialize, Serialize};

use super::{
    BlockKind, LN_EPSILON, Layer, LayerPaths, MLP_EXPANSION, Norm, Shape, affine, layer_paths_ops,
    product,
};
use crate::tensor::tensor2;

/// Token embedding plus learned position embedding: `T` token ids (stored as `f32`) →
/// `[T, d]`. Parameters `token.weight` `[vocab, d]` and `position.weight` `[T, d]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Embedding {
    /// T: tokens per sample.
    pub seq_len: usize,
    /// Distinct tokens.
    pub vocab_size: usize,
    /// d: embedding width.
    pub embed_dim: usize,
}

/// One pre-LayerNorm decoder layer: `x + Attn(LN(x))` with causal multi-head
/// self-attention, then `x + MLP(LN(x))` with a GELU MLP of width `4d`. Parameters
/// `ln1.*`, `attn.qkv.*` (`[3d, d]`, queries, keys and values stacked), `attn.proj.*`,
/// `ln2.*`, `mlp.fc.*`, `mlp.proj.*`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct DecoderLayer {
    /// T: tokens per sample.
    pub seq_len: usize,
    /// d: embedding width.
    pub embed_dim: usize,
    /// Attention heads (they divide d).
    pub heads: usize,
}

/// The language-model head: final layer norm (`ln.*`), then a linear map to the
/// vocabulary (`head.*`): `[T, d]` → `[T, vocab]` logits.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct LmHead {
    /// T: tokens per sample.
    pub seq_len: usize,
    /// d: embedding width.
    pub embed_dim: usize,
    /// Distinct tokens.
    pub vocab_size: usize,
}

impl BlockKind for Embedding {
    fn input_shape(&self) -> Shape {
        [1, 1, self.seq_len]
    }

    fn output_shape(&self) -> Shape {
        [1, self.seq_len, self.embed_dim]
    }

    fn is_spatial(&self) -> bool {
        false
    }

    fn check(&self) -> Result<(), String> {
        if self.vocab_size == 0 {
            return Err("has an empty vocabulary".into());
        }
        Ok(())
    }

    fn label(&self) -> String {
        format!("embedding {}->{}", self.vocab_size, self.embed_dim)
    }

    fn layer_paths(&self) -> Option<LayerPaths> {
        let Embedding {
            seq_len,
            vocab_size,
            embed_dim,
        } = *self;
        Some(LayerPaths {
            main: vec![
                (
                    "token",
                    Layer::Embedding {
                        rows: vocab_size,
                        width: embed_dim,
                    },
                ),
                (
                    "position",
                    Layer::Embedding {
                        rows: seq_len,
                        width: embed_dim,
                    },
                ),
            ],
            shortcut: None,
        })
    }

    fn forward_ops(&self) -> f64 {
        2.0 * (self.seq_len * self.embed_dim) as f64
    }

    fn forward_weighted(
        &self,
        x: Tensor<2>,
        params: &[Tensor<1>],
        _norm: Norm<'_>,
        _layer_inputs: Option<&mut Vec<Tensor<4>>>,
    ) -> Tensor<2> {
        embed(x, params, self.seq_len, self.vocab_size, self.embed_dim)
    }
}

impl BlockKind for DecoderLayer {
    fn input_shape(&self) -> Shape {
        [1, self.seq_len, self.embed_dim]
    }

    fn output_shape(&self) -> Shape {
        self.input_shape()
    }

    fn is_spatial(&self) -> bool {
        false
    }

    fn check(&self) -> Result<(), String> {
        let DecoderLayer {
            embed_dim, heads, ..
        } = *self;
        if heads == 0 || !embed_dim.is_multiple_of(heads) {
            return Err(format!(
                "cannot split the embedding width {embed_dim} into {heads} attention heads"
            ));
        }
        Ok(())
    }

    fn label(&self) -> String {
        format!("decoder {}/{}h", self.embed_dim, self.heads)
    }

    fn layer_paths(&self) -> Option<LayerPaths> {
        let d = self.embed_dim;
        let linear = |input, output| Layer::Linear { input, output };
        let norm = Layer::FeatureNorm { features: d };
        Some(LayerPaths {
            main: vec![
                ("ln1", norm),
                ("attn.qkv", linear(d, 3 * d)),
                ("attn.proj", linear(d, d)),
                ("ln2", norm),
                ("mlp.fc", linear(d, MLP_EXPANSION * d)),
                ("mlp.proj", linear(MLP_EXPANSION * d, d)),
            ],
            shortcut: None,
        })
    }

    fn forward_ops(&self) -> f64 {
        let (seq, d) = (self.seq_len as f64, self.embed_dim as f64);
        // Per position: the layer paths' linear layers (qkv, projection, MLP) and norms;
        // attention: scores and the weighted sum of values, seq × seq × d each.
        seq * layer_paths_ops(self.layer_paths(), [1, 1, 1]) + 2.0 * seq * seq * d
    }

    fn activation_values(&self) -> f64 {
        let DecoderLayer {
            seq_len,
            embed_dim,
            heads,
        } = *self;
        // Per position: ln1 (d), qkv (3d), attention output (d), projection (d), ln2 (d),
        // MLP hidden before and after GELU (2 × 4d), MLP output (d); per head the
        // attention scores and their softmax (2 × T per position).
        let per_position =
            (8.0 + 2.0 * MLP_EXPANSION as f64) * embed_dim as f64 + 2.0 * product([heads, seq_len]);
        seq_len as f64 * per_position
    }

    fn forward_weighted(
        &self,
        x: Tensor<2>,
        params: &[Tensor<1>],
        _norm: Norm<'_>,
        _layer_inputs: Option<&mut Vec<Tensor<4>>>,
    ) -> Tensor<2> {
        decoder_layer(x, params, self.seq_len, self.embed_dim, self.heads)
    }
}

impl BlockKind for LmHead {
    fn input_shape(&self) -> Shape {
        [1, self.seq_len, self.embed_dim]
    }

    fn output_shape(&self) -> Shape {
        [1, self.seq_len, self.vocab_size]
    }

    fn is_spatial(&self) -> bool {
        false
    }

    fn check(&self) -> Result<(), String> {
        if self.vocab_size == 0 {
            return Err("has an empty vocabulary".into());
        }
        Ok(())
    }

    fn label(&self) -> String {
        format!("lm-head {}->{}", self.embed_dim, self.vocab_size)
    }

    fn layer_paths(&self) -> Option<LayerPaths> {
        Some(LayerPaths {
            main: vec![
                (
                    "ln",
                    Layer::FeatureNorm {
                        features: self.embed_dim,
                    },
                ),
                (
                    "head",
                    Layer::Linear {
                        input: self.embed_dim,
                        output: self.vocab_size,
                    },
                ),
            ],
            shortcut: None,
        })
    }

    fn forward_ops(&self) -> f64 {
        self.seq_len as f64 * layer_paths_ops(self.layer_paths(), [1, 1, 1])
    }

    fn activation_values(&self) -> f64 {
        // The layer norm's output, the logits and their log-softmax.
        product([self.seq_len, self.embed_dim]) + 2.0 * product(self.output_shape())
    }

    fn forward_weighted(
        &self,
        x: Tensor<2>,
        params: &[Tensor<1>],
        _norm: Norm<'_>,
        _layer_inputs: Option<&mut Vec<Tensor<4>>>,
    ) -> Tensor<2> {
        lm_head(x, params, self.seq_len, self.embed_dim, self.vocab_size)
    }
}

/// Token ids `[batch, T]` (as `f32`) → token embedding + position embedding `[batch, T·d]`.
/// `params`: the token table (`[vocab, d]`) and the position table (`[T, d]`).
fn embed(
    x: Tensor<2>,
    params: &[Tensor<1>],
    seq_len: usize,
    vocab_size: usize,
    embed_dim: usize,
) -> Tensor<2> {
    let [token, position] = params else {
        panic!(
            "embedding block with {} parameter tensors instead of 2",
            params.len()
        );
    };
    let batch = x.dims()[0];
    let ids = x.int().reshape([batch * seq_len]);
    token
        .clone()
        .reshape([vocab_size, embed_dim])
        .select(0, ids)
        .reshape([batch, seq_len * embed_dim])
        .add(position.clone().reshape([1, seq_len * embed_dim]))
}

/// One decoder layer on `[batch, T·d]`: `h = x + Attn(LN₁(x))`, then `h + MLP(LN₂(h))`.
/// `params` in layer-path order: LN₁ γ, β; QKV weight, bias; attention output weight, bias;
/// LN₂ γ, β; MLP weights and biases.
fn decoder_layer(
    x: Tensor<2>,
    params: &[Tensor<1>],
    seq_len: usize,
    embed_dim: usize,
    heads: usize,
) -> Tensor<2> {
    let [
        ln1_gamma,
        ln1_beta,
        qkv_weight,
        qkv_bias,
        attn_weight,
        attn_bias,
        ln2_gamma,
        ln2_beta,
        fc_weight,
        fc_bias,
        proj_weight,
        proj_bias,
    ] = params
    else {
        panic!(
            "decoder layer with {} parameter tensors instead of 12",
            params.len()
        );
    };
    let d = embed_dim;
    let batch = x.dims()[0];
    let rows = batch * seq_len;
    let h = x.reshape([rows, d]);

    let qkv = affine(
        layer_norm(h.clone(), ln1_gamma, ln1_beta),
        qkv_weight,
        qkv_bias,
        d,
        3 * d,
    );
    let head_dim = d / heads;
    // Queries, keys and values as [batch, heads, T, head_dim].
    let part = |i: usize| {
        qkv.clone()
            .slice([0..rows, i * d..(i + 1) * d])
            .reshape([batch, seq_len, heads, head_dim])
            .swap_dims(1, 2)
    };
    let (queries, keys, values) = (part(0), part(1), part(2));
    let scores = queries
        .matmul(keys.swap_dims(2, 3))
        .mul_scalar(1.0 / (head_dim as f64).sqrt())
        .add(causal_mask(seq_len, &h));
    let context = softmax(scores, 3)
        .matmul(values)
        .swap_dims(1, 2)
        .reshape([rows, d]);
    let h = h.add(affine(context, attn_weight, attn_bias, d, d));

    let hidden = MLP_EXPANSION * d;
    let mlp = gelu(affine(
        layer_norm(h.clone(), ln2_gamma, ln2_beta),
        fc_weight,
        fc_bias,
        d,
        hidden,
    ));
    h.add(affine(mlp, proj_weight, proj_bias, hidden, d))
        .reshape([batch, seq_len * d])
}

/// Final layer norm and the linear map to the vocabulary: `[batch, T·d]` → logits
/// `[batch, T·vocab]`. `params`: LN γ, β; head weight, bias.
fn lm_head(
    x: Tensor<2>,
    params: &[Tensor<1>],
    seq_len: usize,
    embed_dim: usize,
    vocab_size: usize,
) -> Tensor<2> {
    let [gamma, beta, weight, bias] = params else {
        panic!(
            "language-model head with {} parameter tensors instead of 4",
            params.len()
        );
    };
    let batch = x.dims()[0];
    let h = layer_norm(x.reshape([batch * seq_len, embed_dim]), gamma, beta);
    affine(h, weight, bias, embed_dim, vocab_size).reshape([batch, seq_len * vocab_size])
}

/// Layer normalisation of each row of `x` (`[rows, d]`), then `· γ + β`.
fn layer_norm(x: Tensor<2>, gamma: &Tensor<1>, beta: &Tensor<1>) -> Tensor<2> {
    let features = x.dims()[1];
    let centered = x.clone().sub(x.mean_dim(1));
    let variance = centered.clone().mul(centered.clone()).mean_dim(1);
    centered
        .div(variance.add_scalar(LN_EPSILON).sqrt())
        .mul(gamma.clone().reshape([1, features]))
        .add(beta.clone().reshape([1, features]))
}

/// `[1, 1, T, T]`: 0 where query position t may attend to key position u (u ≤ t), −∞ where
/// u is in its future. An autodiff constant when `like` is an autodiff tensor.
fn causal_mask(seq_len: usize, like: &Tensor<2>) -> Tensor<4> {
    let values = (0..seq_len * seq_len)
        .map(|i| {
            if i % seq_len > i / seq_len {
                f32::NEG_INFINITY
            } else {
                0.0
            }
        })
        .collect();
    let mask = tensor2(values, seq_len, seq_len).reshape([1, 1, seq_len, seq_len]);
    if like.is_autodiff() {
        mask.autodiff()
    } else {
        mask
    }
}
