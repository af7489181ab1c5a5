//! The forwards of `gpt`'s blocks: token + position embedding, a pre-LayerNorm decoder layer
//! with causal multi-head self-attention and a GELU MLP, and the language-model head.
//!
//! Like every block, they are functions of (input, parameters) built from burn's tensor ops,
//! so they run the same on plain and autodiff tensors, with any weight version. Each takes
//! its parameter list in the order of its [`Block`](crate::Block)'s layer paths and messages as
//! `[batch, T·features]`, viewed as `[batch·T, features]` inside. A decoder layer is one
//! block with both residual connections inside, so a pipeline cut never falls inside a
//! residual.
//!
//! Layer normalisation is written out from mean and variance (over the features of each
//! position, biased variance, ε = [`LN_EPSILON`]) rather than taken from burn's fused op, so
//! its gradient is plain autodiff over elementwise ops. The MLP uses the exact (erf) GELU,
//! PyTorch's `nn.GELU()` default. No dropout (see the model zoo's documentation).

use burn::tensor::Tensor;
use burn::tensor::activation::{gelu, softmax};

use crate::block::{LN_EPSILON, MLP_EXPANSION, affine};
use crate::tensor::tensor2;

/// Token ids `[batch, T]` (as `f32`) → token embedding + position embedding `[batch, T·d]`.
/// `params`: the token table (`[vocab, d]`) and the position table (`[T, d]`).
pub(crate) fn embed(
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
pub(crate) fn decoder_layer(
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
pub(crate) fn lm_head(
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
