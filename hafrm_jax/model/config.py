"""Architecture description of the Llama-family decoder, and presets of real model shapes.

`ModelConfig` is a frozen (hashable) dataclass so that it can be bound into jitted functions
with `functools.partial` and used as a static Flax module attribute.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

import jax.numpy as jnp

RematPolicy = Literal["none", "full", "dots"]
AttentionImpl = Literal["xla", "cudnn"]


@dataclasses.dataclass(frozen=True)
class RopeScaling:
    """Rotary-embedding frequency scaling, as in Hugging Face's `rope_scaling` dict.

    kind="linear" divides all frequencies by `factor` (position interpolation);
    kind="llama3" rescales only the low frequencies, smoothly between the two wavelength bounds
    set by `low_freq_factor` and `high_freq_factor` (Llama-3.1/3.2).
    """

    kind: Literal["linear", "llama3"]
    factor: float
    low_freq_factor: float = 1.0
    high_freq_factor: float = 4.0
    original_max_position_embeddings: int = 8192


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """A decoder of the Llama family (Llama 2/3, Mistral, Qwen2/2.5) plus its execution options."""

    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int | None = None  # None: hidden_size // num_heads
    rope_theta: float = 10_000.0
    rope_scaling: RopeScaling | None = None
    rms_norm_eps: float = 1e-6
    tie_embeddings: bool = False
    qkv_bias: bool = False  # Qwen2 has biases on the q, k and v projections
    # Execution options: they change speed and memory, not the function computed.
    dtype: str = "float32"  # compute dtype of activations and matmuls
    param_dtype: str = "float32"  # master weights
    remat: RematPolicy = "none"  # per-layer rematerialisation in the backward pass
    attention_impl: AttentionImpl = "xla"  # "cudnn": fused flash attention on NVIDIA GPUs
    logprob_chunk: int = 128  # sequence positions per chunk of LM-head logits

    def __post_init__(self):
        if self.num_heads % self.num_kv_heads:
            raise ValueError(
                f"num_heads={self.num_heads} must be a multiple of num_kv_heads={self.num_kv_heads}"
            )
        if self.head_dim is None and self.hidden_size % self.num_heads:
            raise ValueError(
                f"hidden_size={self.hidden_size} is not divisible by num_heads={self.num_heads}; "
                "set head_dim explicitly"
            )
        if self.dim_per_head % 2:
            raise ValueError(f"head_dim={self.dim_per_head} must be even for rotary embeddings")
        if self.logprob_chunk <= 0:
            raise ValueError(f"logprob_chunk must be positive, got {self.logprob_chunk}")

    @property
    def dim_per_head(self) -> int:
        return self.head_dim if self.head_dim is not None else self.hidden_size // self.num_heads

    @property
    def compute_dtype(self) -> jnp.dtype:
        return jnp.dtype(self.dtype)

    @property
    def weight_dtype(self) -> jnp.dtype:
        return jnp.dtype(self.param_dtype)

    def num_params(self, with_lm_head: bool = True) -> int:
        """Parameter count from shapes: backbone, LM head (if untied) and the reward head."""
        d, f, hd = self.hidden_size, self.intermediate_size, self.dim_per_head
        attn = d * hd * (self.num_heads * 2 + self.num_kv_heads * 2)
        if self.qkv_bias:
            attn += hd * (self.num_heads + 2 * self.num_kv_heads)
        per_layer = attn + 3 * d * f + 2 * d
        total = self.vocab_size * d + self.num_layers * per_layer + d + (d + 1)
        if with_lm_head and not self.tie_embeddings:
            total += d * self.vocab_size
        return total


PRESETS: dict[str, ModelConfig] = {
    # For tests and the embedded default task: trains in seconds on a CPU.
    "tiny": ModelConfig(
        vocab_size=256, hidden_size=64, intermediate_size=176, num_layers=2, num_heads=4,
        num_kv_heads=2, rope_theta=10_000.0, rms_norm_eps=1e-6,
    ),
    "qwen2.5-0.5b": ModelConfig(
        vocab_size=151_936, hidden_size=896, intermediate_size=4864, num_layers=24, num_heads=14,
        num_kv_heads=2, rope_theta=1_000_000.0, rms_norm_eps=1e-6, tie_embeddings=True,
        qkv_bias=True,
    ),
    "qwen2.5-1.5b": ModelConfig(
        vocab_size=151_936, hidden_size=1536, intermediate_size=8960, num_layers=28, num_heads=12,
        num_kv_heads=2, rope_theta=1_000_000.0, rms_norm_eps=1e-6, tie_embeddings=True,
        qkv_bias=True,
    ),
    "llama-3.2-1b": ModelConfig(
        vocab_size=128_256, hidden_size=2048, intermediate_size=8192, num_layers=16, num_heads=32,
        num_kv_heads=8, head_dim=64, rope_theta=500_000.0, rms_norm_eps=1e-5, tie_embeddings=True,
        rope_scaling=RopeScaling("llama3", factor=32.0, low_freq_factor=1.0, high_freq_factor=4.0,
                                 original_max_position_embeddings=8192),
    ),
    "llama-3-8b": ModelConfig(
        vocab_size=128_256, hidden_size=4096, intermediate_size=14_336, num_layers=32,
        num_heads=32, num_kv_heads=8, rope_theta=500_000.0, rms_norm_eps=1e-5,
    ),
    # Mistral-7B-v0.1, the paper's larger backbone. Its 4,096-token sliding window equals the
    # longest sequence trained here, so full causal attention computes the same function.
    "mistral-7b": ModelConfig(
        vocab_size=32_000, hidden_size=4096, intermediate_size=14_336, num_layers=32, num_heads=32,
        num_kv_heads=8, rope_theta=10_000.0, rms_norm_eps=1e-5,
    ),
}


def preset(name: str, **overrides) -> ModelConfig:
    """A preset by name, with fields replaced by `overrides` (None values are ignored)."""
    if name not in PRESETS:
        raise ValueError(f"unknown model preset {name!r}; known presets: {sorted(PRESETS)}")
    changes = {k: v for k, v in overrides.items() if v is not None}
    return dataclasses.replace(PRESETS[name], **changes)
