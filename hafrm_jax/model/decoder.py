"""A Flax Linen pre-norm decoder: Llama, Mistral, Qwen2/3, Gemma 1/2 and Phi-2 in one module.

Parameter names follow Hugging Face's (`q_proj`, `gate_proj`, `input_layernorm`, ...) so that
weight conversion is a table, and every weight carries logical axis names
(`nn.with_logical_partitioning`) that `hafrm_jax.sharding` maps onto a device mesh. Layers are
stacked with `nn.scan`: one compiled layer body (or `scan_unroll` of them per iteration), and
params with a leading "layers" axis whatever the unrolling.
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from hafrm_jax.model.config import ModelConfig, RopeScaling
from hafrm_jax.model.lora import COLLECTION, adapted
from hafrm_jax.model.matmul import add_bias, einsum_f32
from hafrm_jax.model.mlp_kernel import gated_silu_down

_INIT_STD = 0.02  # Hugging Face's default `initializer_range`
_QUERY_AXES = ("act_batch", "act_length", "act_heads", "act_head_dim")
_KV_AXES = ("act_batch", "act_length", "act_kv_heads", "act_head_dim")
_MASKED = -0.7 * float(jnp.finfo(jnp.float32).max)  # finite: a fully masked row cannot give NaN


def normal_init(axes: tuple[str | None, ...]):
    return nn.with_logical_partitioning(nn.initializers.normal(_INIT_STD), axes)


def zeros_init(axes: tuple[str | None, ...]):
    return nn.with_logical_partitioning(nn.initializers.zeros_init(), axes)


def rope_frequencies(rotary_dim: int, theta: float, scaling: RopeScaling | None) -> jax.Array:
    """Inverse frequencies [rotary_dim // 2] of the rotary embedding, with optional scaling."""
    inv_freq = 1.0 / (theta ** (jnp.arange(0, rotary_dim, 2, dtype=jnp.float32) / rotary_dim))
    if scaling is None:
        return inv_freq
    if scaling.kind == "linear":
        return inv_freq / scaling.factor
    if scaling.kind == "llama3":
        old_len = scaling.original_max_position_embeddings
        low_freq_wavelen = old_len / scaling.low_freq_factor
        high_freq_wavelen = old_len / scaling.high_freq_factor
        wavelen = 2 * math.pi / inv_freq
        scaled = jnp.where(wavelen > low_freq_wavelen, inv_freq / scaling.factor, inv_freq)
        smooth = (old_len / wavelen - scaling.low_freq_factor) / (
            scaling.high_freq_factor - scaling.low_freq_factor
        )
        smoothed = (1 - smooth) * scaled / scaling.factor + smooth * scaled
        is_medium = (wavelen >= high_freq_wavelen) & (wavelen <= low_freq_wavelen)
        return jnp.where(is_medium, smoothed, scaled)
    raise ValueError(f"unknown rope scaling kind {scaling.kind!r}")


def apply_rope(x: jax.Array, positions: jax.Array, inv_freq: jax.Array) -> jax.Array:
    """Rotates the first 2 * len(inv_freq) dims of x [batch, seq, heads, head_dim] by positions
    [batch, seq] (the "halves" layout of Hugging Face); the remaining dims pass through."""
    rot = 2 * inv_freq.shape[0]
    angles = positions[:, :, None].astype(jnp.float32) * inv_freq  # [batch, seq, rot/2]
    cos = jnp.cos(angles)[:, :, None, :]
    sin = jnp.sin(angles)[:, :, None, :]
    x1, x2 = jnp.split(x[..., :rot].astype(jnp.float32), 2, axis=-1)
    rotated = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
    return jnp.concatenate([rotated.astype(x.dtype), x[..., rot:]], axis=-1)


def activation(name: str):
    return {"silu": nn.silu, "gelu_tanh": lambda x: nn.gelu(x, approximate=True),
            "gelu": lambda x: nn.gelu(x, approximate=False)}[name]


class Norm(nn.Module):
    """RMSNorm (weight, optionally as 1 + weight) or LayerNorm (weight and bias), in float32."""

    config: ModelConfig
    axis_name: str = "norm"

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        cfg = self.config
        dim = x.shape[-1]
        init = nn.initializers.zeros_init() if cfg.norm_offset else nn.initializers.ones_init()
        scale = self.param("scale", nn.with_logical_partitioning(init, (self.axis_name,)),
                           (dim,), cfg.weight_dtype).astype(jnp.float32)
        x32 = x.astype(jnp.float32)
        if cfg.norm == "layer":
            bias = self.param("bias", zeros_init((self.axis_name,)), (dim,), cfg.weight_dtype)
            centred = x32 - jnp.mean(x32, axis=-1, keepdims=True)
            normed = centred * jax.lax.rsqrt(jnp.mean(centred ** 2, axis=-1, keepdims=True)
                                             + cfg.norm_eps)
            return (normed * scale + bias.astype(jnp.float32)).astype(cfg.compute_dtype)
        normed = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + cfg.norm_eps)
        return (normed * (scale + cfg.norm_offset)).astype(cfg.compute_dtype)


def attention_mask(attention_mask: jax.Array, positions: jax.Array,
                   window: jax.Array | int) -> jax.Array:
    """Boolean [batch, seq, seq]: causal, padding keys hidden, optional sliding window.

    Each query also sees itself, so the rows of padding queries are never empty. window > 0
    keeps keys with q - k < window (Hugging Face's convention); 0 means full attention.
    """
    seq = attention_mask.shape[-1]
    causal = jnp.tril(jnp.ones((seq, seq), jnp.bool_))
    mask = causal[None] & attention_mask[:, None, :].astype(jnp.bool_)
    distance = positions[:, :, None] - positions[:, None, :]
    mask &= (window <= 0) | (distance < window)
    return mask | jnp.eye(seq, dtype=jnp.bool_)[None]


def dot_product_attention(q, k, v, mask, scale: float, softcap: float | None) -> jax.Array:
    """Grouped-query attention in float32 softmax. q [b, t, heads, d], k/v [b, s, kv, d]."""
    b, t, heads, d = q.shape
    kv = k.shape[2]
    q = q.reshape(b, t, kv, heads // kv, d)
    scores = einsum_f32("btkgd,bskd->bkgts", q, k) * scale  # float32, bf16 backward
    if softcap is not None:
        scores = jnp.tanh(scores / softcap) * softcap
    scores = jnp.where(mask[:, None, None], scores, _MASKED)
    probs = jax.nn.softmax(scores, axis=-1).astype(v.dtype)
    return jnp.einsum("bkgts,bskd->btkgd", probs, v).reshape(b, t, heads, d)


class Attention(nn.Module):
    """Grouped-query self-attention with (partial) rotary embeddings and optional q/k norms."""

    config: ModelConfig

    @nn.compact
    def __call__(self, x: jax.Array, positions: jax.Array, padding_mask: jax.Array,
                 window: jax.Array) -> jax.Array:
        cfg = self.config
        hd = cfg.dim_per_head

        def project(name, heads, head_axis):
            kernel, bias = DenseParams((x.shape[-1], heads, hd), ("embed", head_axis, "head_dim"),
                                       cfg.qkv_bias, cfg.weight_dtype, out_dims=2, name=name)()
            out = linear(x.astype(cfg.compute_dtype), kernel, bias)
            return adapted(self, name, out, x, (x.shape[-1],), (heads, hd), "embed", head_axis)

        q = project("q_proj", cfg.num_heads, "heads")  # [batch, seq, heads, head_dim]
        k = project("k_proj", cfg.num_kv_heads, "kv_heads")  # [batch, seq, kv, head_dim]
        v = project("v_proj", cfg.num_kv_heads, "kv_heads")
        if cfg.qk_norm:
            q = Norm(cfg, axis_name="head_dim", name="q_norm")(q)
            k = Norm(cfg, axis_name="head_dim", name="k_norm")(k)
        inv_freq = rope_frequencies(cfg.rotary_dim, cfg.rope_theta, cfg.rope_scaling)
        q = nn.with_logical_constraint(apply_rope(q, positions, inv_freq), _QUERY_AXES)
        k = nn.with_logical_constraint(apply_rope(k, positions, inv_freq), _KV_AXES)
        v = nn.with_logical_constraint(v, _KV_AXES)
        if cfg.attention_impl == "cudnn":  # right-padded batches: causality hides the padding
            out = jax.nn.dot_product_attention(q, k, v, scale=cfg.attention_scale,
                                               is_causal=True, implementation="cudnn")
        else:
            mask = attention_mask(padding_mask, positions, window)
            out = dot_product_attention(q, k, v, mask, cfg.attention_scale,
                                        cfg.attn_logit_softcap)
        out = nn.with_logical_constraint(out, _QUERY_AXES)
        kernel, bias = DenseParams((cfg.num_heads, hd, cfg.hidden_size),
                                   ("heads", "head_dim", "embed"), cfg.attention_out_bias,
                                   cfg.weight_dtype, name="o_proj")()
        projected = linear(out.astype(cfg.compute_dtype), kernel, bias, in_dims=2)
        return adapted(self, "o_proj", projected, out, (cfg.num_heads, hd), (cfg.hidden_size,),
                       "heads", "embed")


class DenseParams(nn.Module):
    """nn.Dense's / nn.DenseGeneral's parameters (the same names, shapes, initialisers and
    dtype) without their product: the decoder applies them with `linear`, whose bias gradient
    is summed in float32, or stacks two kernels into one product (the gated MLP).
    Returns (kernel, bias or None)."""

    shape: tuple[int, ...]  # the kernel's: [*inputs, *outputs]
    axes: tuple[str, ...]  # logical axis names of the kernel's dimensions
    use_bias: bool
    param_dtype: jnp.dtype
    out_dims: int = 1  # trailing dimensions of the kernel that are outputs (the bias's shape)

    @nn.compact
    def __call__(self) -> tuple[jax.Array, jax.Array | None]:
        kernel = self.param("kernel", normal_init(self.axes), self.shape, self.param_dtype)
        bias = None
        if self.use_bias:
            bias = self.param("bias", zeros_init(self.axes[-self.out_dims:]),
                              self.shape[-self.out_dims:], self.param_dtype)
        return kernel, bias


def linear(x: jax.Array, kernel: jax.Array, bias: jax.Array | None, in_dims: int = 1) -> jax.Array:
    """x [..., *in] @ kernel [*in, *out] (+ bias [*out]) -> [..., *out] in x's dtype (the kernel
    cast to it): nn.DenseGeneral's product, with the bias added by `add_bias` so that its
    gradient is a float32 sum over batch and sequence, not a bf16 one."""
    contracting = (tuple(range(x.ndim - in_dims, x.ndim)), tuple(range(in_dims)))
    y = jax.lax.dot_general(x, kernel.astype(x.dtype), (contracting, ((), ())))
    return y if bias is None else add_bias(y, bias)


def stacked_gate_up(x: jax.Array, gate_kernel: jax.Array, up_kernel: jax.Array) -> jax.Array:
    """The gated MLP's two input projections as ONE product, x [..., embed] @ the kernels
    stacked [embed, 2, mlp] -> [..., 2, mlp] (gate, then up), in x's dtype.

    The backward pass then forms both cotangents in one elementwise pass over [..., 2, mlp] (as
    two products they read the activation's inputs twice) and needs one matmul per gradient,
    not two. Compiled for an H100 (bench/gpu_compile.py; bench/RESULTS.md, round 5) that takes
    2.7 ms off the 0.5B step's bound without remat and 5.8 ms off 1.5B's; under remat it adds
    1.9 ms (XLA then recomputes the activation in a pass of its own, where as two projections it
    fuses that with the cotangents), so the decoder stacks them only when nothing is
    rematerialised."""
    kernel = jnp.stack([gate_kernel, up_kernel], axis=1).astype(x.dtype)  # [embed, 2, mlp]
    return jnp.einsum("...d,dkm->...km", x, kernel)


def gate_up_projections(x: jax.Array, gate_kernel: jax.Array, up_kernel: jax.Array,
                        gate_bias: jax.Array | None, up_bias: jax.Array | None,
                        one_matmul: bool) -> tuple[jax.Array, jax.Array]:
    """The gated MLP's two input projections x @ kernel (+ bias), [..., mlp] each, in x's dtype:
    one product (`stacked_gate_up`) where `one_matmul`, else two."""
    if not one_matmul:
        return linear(x, gate_kernel, gate_bias), linear(x, up_kernel, up_bias)
    both = stacked_gate_up(x, gate_kernel, up_kernel)  # [..., 2, mlp]
    gate, up = both[..., 0, :], both[..., 1, :]
    if gate_bias is not None:
        gate, up = add_bias(gate, gate_bias), add_bias(up, up_bias)
    return gate, up


class MLP(nn.Module):
    """Gated (down(act(gate(x)) * up(x))) or plain (fc2(act(fc1(x)))) feed-forward block."""

    config: ModelConfig

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        cfg = self.config
        act = activation(cfg.activation)

        def dense(name, inputs, features, axes):
            kernel, bias = DenseParams((inputs.shape[-1], features), axes, cfg.mlp_bias,
                                       cfg.weight_dtype, name=name)()
            out = linear(inputs.astype(cfg.compute_dtype), kernel, bias)
            return adapted(self, name, out, inputs, (inputs.shape[-1],), (features,), *axes)

        if cfg.mlp == "gated":
            shape = (x.shape[-1], cfg.intermediate_size)
            (gate_kernel, gate_bias), (up_kernel, up_bias) = (
                DenseParams(shape, ("embed", "mlp"), cfg.mlp_bias, cfg.weight_dtype, name=name)()
                for name in ("gate_proj", "up_proj"))
            if cfg.mlp_kernel == "pallas":  # no bias, no adapters, silu: ModelConfig checks
                both = stacked_gate_up(x.astype(cfg.compute_dtype), gate_kernel, up_kernel)
                down_kernel, _ = DenseParams(shape[::-1], ("mlp", "embed"), False,
                                             cfg.weight_dtype, name="down_proj")()
                return gated_silu_down(both, down_kernel.astype(cfg.compute_dtype),
                                       cfg.mlp_kernel_blocks)
            gate, up = gate_up_projections(x.astype(cfg.compute_dtype), gate_kernel, up_kernel,
                                           gate_bias, up_bias, one_matmul=cfg.remat == "none")
            gate, up = (adapted(self, name, out, x, shape[:1], shape[1:], "embed", "mlp")
                        for name, out in (("gate_proj", gate), ("up_proj", up)))
            h = act(gate) * up
            down = "down_proj"
        else:
            h = act(dense("fc1", x, cfg.intermediate_size, ("embed", "mlp")))
            down = "fc2"
        h = nn.with_logical_constraint(h, ("act_batch", "act_length", "act_mlp"))
        return dense(down, h, cfg.hidden_size, ("mlp", "embed"))


class DecoderLayer(nn.Module):
    """One transformer block, shaped as an `nn.scan` body: (carry, *broadcast, window) -> carry.

    sequential (Llama): x + attn(norm(x)), then + mlp(norm(.))
    sandwich (Gemma-2):  x + norm(attn(norm(x))), then + norm(mlp(norm(.)))
    parallel (Phi-2):    x + attn(norm(x)) + mlp(norm(x)), one shared norm
    """

    config: ModelConfig

    @nn.compact
    def __call__(self, x, positions, padding_mask, window):
        cfg = self.config
        attn = Attention(cfg, name="self_attn")
        mlp = MLP(cfg, name="mlp")
        h = Norm(cfg, name="input_layernorm")(x)
        if cfg.block == "parallel":
            x = x + attn(h, positions, padding_mask, window) + mlp(h)
        elif cfg.block == "sandwich":
            x = x + Norm(cfg, name="post_attention_layernorm")(
                attn(h, positions, padding_mask, window))
            x = x + Norm(cfg, name="post_feedforward_layernorm")(
                mlp(Norm(cfg, name="pre_feedforward_layernorm")(x)))
        else:
            x = x + attn(h, positions, padding_mask, window)
            x = x + mlp(Norm(cfg, name="post_attention_layernorm")(x))
        return nn.with_logical_constraint(x, ("act_batch", "act_length", "act_embed")), None


# The primitive that jax.nn.dot_product_attention(implementation="cudnn") binds for its forward
# pass in training; its outputs are the attention output and the softmax statistics that the
# backward kernel reads.
_FUSED_ATTENTION_FORWARD = ("dot_product_attention_fwd_wrapper", "dot_product_attention_fwd")


def save_dots_and_fused_attention(prim, *args, **params) -> bool:
    """Remat policy: save what "dots" saves (weight matmul outputs), plus the fused attention
    kernel's outputs, so the backward pass does not run the attention forward kernel again.
    With XLA attention it saves exactly what "dots" saves."""
    return (jax.checkpoint_policies.dots_with_no_batch_dims_saveable(prim, *args, **params)
            or prim.name in _FUSED_ATTENTION_FORWARD)


_REMAT_POLICIES = {
    "full": None,  # save nothing, recompute the whole layer
    "dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
    "dots_attention": save_dots_and_fused_attention,
}


class Decoder(nn.Module):
    """Token ids [batch, seq] -> final normalised hidden states [batch, seq, hidden]."""

    config: ModelConfig

    def setup(self):
        cfg = self.config
        self.embed_tokens = nn.Embed(
            cfg.vocab_size, cfg.hidden_size,
            embedding_init=normal_init(("vocab", "embed")),
            dtype=cfg.compute_dtype, param_dtype=cfg.weight_dtype,
        )
        layer = DecoderLayer
        if cfg.remat != "none":
            # Unrolled into one program, the forward layers and their recomputation in the
            # backward pass are identical expressions, and XLA's CSE merges them unless told
            # not to: the remat is then silently undone (seen on an H100: the same peak memory
            # as no remat). Inside a scan the two sit in different loops, and prevent_cse would
            # only block optimisations.
            fully_unrolled = cfg.layers_per_scan_step >= cfg.num_layers
            layer = nn.remat(layer, policy=_REMAT_POLICIES[cfg.remat],
                             prevent_cse=fully_unrolled)
        self.layers = nn.scan(
            layer,
            variable_axes={"params": 0, COLLECTION: 0},
            split_rngs={"params": True, "dropout": True},
            in_axes=(nn.broadcast, nn.broadcast, 0),
            length=cfg.num_layers,
            unroll=cfg.layers_per_scan_step,
            metadata_params={nn.PARTITION_NAME: "layers"},
        )(cfg)
        self.norm = Norm(cfg)

    def __call__(self, input_ids: jax.Array, attention_mask: jax.Array) -> jax.Array:
        """attention_mask [batch, seq] is 1 at real tokens; padding may be on either side."""
        cfg = self.config
        if cfg.attention_impl == "cudnn" and (cfg.layer_windows or cfg.attn_logit_softcap):
            raise ValueError("attention_impl='cudnn' supports neither sliding windows nor "
                             "attention softcapping; use 'xla'")
        attention_mask = attention_mask.astype(jnp.bool_)
        # Positions count real tokens only, so left and right padding give the same function.
        positions = jnp.maximum(jnp.cumsum(attention_mask, axis=-1) - 1, 0)
        # Rows gathered from the stored (float32 master) table, then cast, so the gradient is a
        # float32 scatter-add. nn.Embed's own call casts the table to the compute dtype first,
        # and a token's gradient rows were then summed in bf16 (a token seen ~500 times in a
        # test batch got a gradient up to 74% off).
        x = jnp.take(self.embed_tokens.embedding, input_ids, axis=0).astype(cfg.compute_dtype)
        if cfg.embed_scale:
            x = x * jnp.asarray(cfg.hidden_size ** 0.5, cfg.weight_dtype).astype(x.dtype)
        x = nn.with_logical_constraint(x, ("act_batch", "act_length", "act_embed"))
        windows = jnp.asarray(cfg.layer_windows or (0,) * cfg.num_layers, jnp.int32)
        x, _ = self.layers(x, positions, attention_mask, windows)
        return self.norm(x)

    def output_embedding(self) -> jax.Array:
        """The input embedding [vocab, hidden], for models whose LM head is tied to it."""
        return self.embed_tokens.embedding
