"""A Flax Linen decoder of the Llama family: RMSNorm, RoPE, grouped-query attention, SwiGLU.

Parameter names follow Hugging Face's (`q_proj`, `gate_proj`, `input_layernorm`, ...) so that
weight conversion is a table, and every weight carries logical axis names
(`nn.with_logical_partitioning`) that `hafrm_jax.sharding` maps onto a device mesh. Layers are
stacked with `nn.scan`: one compiled layer body, and params with a leading "layers" axis.
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from hafrm_jax.model.config import ModelConfig, RopeScaling

_INIT_STD = 0.02  # Hugging Face's default `initializer_range`
_QUERY_AXES = ("act_batch", "act_length", "act_heads", "act_head_dim")
_KV_AXES = ("act_batch", "act_length", "act_kv_heads", "act_head_dim")


def normal_init(axes: tuple[str | None, ...]):
    return nn.with_logical_partitioning(nn.initializers.normal(_INIT_STD), axes)


def zeros_init(axes: tuple[str | None, ...]):
    return nn.with_logical_partitioning(nn.initializers.zeros_init(), axes)


def rope_frequencies(head_dim: int, theta: float, scaling: RopeScaling | None) -> jax.Array:
    """Inverse frequencies [head_dim // 2] of the rotary embedding, with optional scaling."""
    inv_freq = 1.0 / (theta ** (jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim))
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
    """Rotates x [batch, seq, heads, head_dim] by positions [batch, seq] (halves layout, as HF)."""
    angles = positions[:, :, None].astype(jnp.float32) * inv_freq  # [batch, seq, head_dim/2]
    cos = jnp.cos(angles)[:, :, None, :]
    sin = jnp.sin(angles)[:, :, None, :]
    x1, x2 = jnp.split(x.astype(jnp.float32), 2, axis=-1)
    rotated = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
    return rotated.astype(x.dtype)


class RMSNorm(nn.Module):
    """Root-mean-square layer norm, normalised in float32 and cast back to the compute dtype."""

    config: ModelConfig

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        scale = self.param(
            "scale",
            nn.with_logical_partitioning(nn.initializers.ones_init(), ("norm",)),
            (x.shape[-1],),
            self.config.weight_dtype,
        )
        x32 = x.astype(jnp.float32)
        normed = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True)
                                     + self.config.rms_norm_eps)
        return (normed * scale.astype(jnp.float32)).astype(self.config.compute_dtype)


class Attention(nn.Module):
    """Grouped-query self-attention with rotary position embeddings."""

    config: ModelConfig

    @nn.compact
    def __call__(self, x: jax.Array, positions: jax.Array, mask: jax.Array | None) -> jax.Array:
        cfg = self.config
        hd = cfg.dim_per_head

        def projection(name, heads, head_axis):
            return nn.DenseGeneral(
                features=(heads, hd), axis=-1, use_bias=cfg.qkv_bias, name=name,
                kernel_init=normal_init(("embed", head_axis, "head_dim")),
                bias_init=zeros_init((head_axis, "head_dim")),
                dtype=cfg.compute_dtype, param_dtype=cfg.weight_dtype,
            )

        q = projection("q_proj", cfg.num_heads, "heads")(x)  # [batch, seq, heads, head_dim]
        k = projection("k_proj", cfg.num_kv_heads, "kv_heads")(x)  # [batch, seq, kv, head_dim]
        v = projection("v_proj", cfg.num_kv_heads, "kv_heads")(x)
        inv_freq = rope_frequencies(hd, cfg.rope_theta, cfg.rope_scaling)
        q = apply_rope(q, positions, inv_freq)
        k = apply_rope(k, positions, inv_freq)
        q = nn.with_logical_constraint(q, _QUERY_AXES)
        k = nn.with_logical_constraint(k, _KV_AXES)
        v = nn.with_logical_constraint(v, _KV_AXES)
        if mask is None:  # right-padded batch: causality alone hides the padding from real tokens
            out = jax.nn.dot_product_attention(q, k, v, is_causal=True,
                                               implementation=_attention_impl(cfg))
        else:
            out = jax.nn.dot_product_attention(q, k, v, mask=mask,
                                               implementation=_attention_impl(cfg))
        out = nn.with_logical_constraint(out, _QUERY_AXES)
        return nn.DenseGeneral(
            features=cfg.hidden_size, axis=(-2, -1), use_bias=False, name="o_proj",
            kernel_init=normal_init(("heads", "head_dim", "embed")),
            dtype=cfg.compute_dtype, param_dtype=cfg.weight_dtype,
        )(out)


def _attention_impl(cfg: ModelConfig) -> str | None:
    return None if cfg.attention_impl == "xla" else cfg.attention_impl


class MLP(nn.Module):
    """SwiGLU feed-forward block: down(silu(gate(x)) * up(x))."""

    config: ModelConfig

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        cfg = self.config

        def dense(name, features, axes):
            return nn.Dense(features, use_bias=False, name=name, kernel_init=normal_init(axes),
                            dtype=cfg.compute_dtype, param_dtype=cfg.weight_dtype)

        gate = dense("gate_proj", cfg.intermediate_size, ("embed", "mlp"))(x)
        up = dense("up_proj", cfg.intermediate_size, ("embed", "mlp"))(x)
        h = nn.with_logical_constraint(nn.silu(gate) * up, ("act_batch", "act_length", "act_mlp"))
        return dense("down_proj", cfg.hidden_size, ("mlp", "embed"))(h)


class DecoderLayer(nn.Module):
    """One pre-norm transformer block, shaped as an `nn.scan` body: (carry, *broadcast) -> carry."""

    config: ModelConfig

    @nn.compact
    def __call__(self, x, positions, mask):
        x = x + Attention(self.config, name="self_attn")(
            RMSNorm(self.config, name="input_layernorm")(x), positions, mask)
        x = x + MLP(self.config, name="mlp")(
            RMSNorm(self.config, name="post_attention_layernorm")(x))
        return nn.with_logical_constraint(x, ("act_batch", "act_length", "act_embed")), None


_REMAT_POLICIES = {
    "full": None,  # save nothing, recompute the whole layer
    "dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
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
            layer = nn.remat(layer, policy=_REMAT_POLICIES[cfg.remat], prevent_cse=False)
        self.layers = nn.scan(
            layer,
            variable_axes={"params": 0},
            split_rngs={"params": True},
            in_axes=(nn.broadcast, nn.broadcast),
            length=cfg.num_layers,
            metadata_params={nn.PARTITION_NAME: "layers"},
        )(cfg)
        self.norm = RMSNorm(cfg)

    def __call__(self, input_ids: jax.Array, attention_mask: jax.Array) -> jax.Array:
        """attention_mask [batch, seq] is 1 at real tokens; padding may be on either side."""
        attention_mask = attention_mask.astype(jnp.bool_)
        # Positions count real tokens only, so left and right padding give the same function.
        positions = jnp.maximum(jnp.cumsum(attention_mask, axis=-1) - 1, 0)
        x = self.embed_tokens(input_ids)
        x = nn.with_logical_constraint(x, ("act_batch", "act_length", "act_embed"))
        x, _ = self.layers(x, positions, self._attention_mask(attention_mask))
        return self.norm(x)

    def _attention_mask(self, attention_mask: jax.Array) -> jax.Array | None:
        """Causal mask that also hides padding keys: [batch, 1, seq, seq], or None for cuDNN.

        Each query also sees itself, so that the rows of padding queries are never empty (an
        all-masked softmax row would put NaN into the backward pass).
        """
        if self.config.attention_impl == "cudnn":
            return None  # cuDNN path: right-padded batches, causal masking only
        seq = attention_mask.shape[-1]
        causal = jnp.tril(jnp.ones((seq, seq), jnp.bool_))
        keys = attention_mask[:, None, None, :]
        return (causal & keys) | jnp.eye(seq, dtype=jnp.bool_)

    def output_embedding(self) -> jax.Array:
        """The input embedding [vocab, hidden], for models whose LM head is tied to it."""
        return self.embed_tokens.embedding
