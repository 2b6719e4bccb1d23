"""Architecture description of the Llama-family decoder, and presets of real model shapes.

`ModelConfig` is a frozen (hashable) dataclass so that it can be bound into jitted functions
with `functools.partial` and used as a static Flax module attribute.
"""

from __future__ import annotations

import dataclasses
from typing import Literal, get_args

import jax.numpy as jnp

from hafrm_jax.model.head_kernel import HeadBlocks, check_hidden_size
from hafrm_jax.model.mlp_kernel import MlpBlocks, check_widths

RematPolicy = Literal["none", "full", "dots", "dots_attention"]
REMAT_POLICIES = get_args(RematPolicy)
AttentionImpl = Literal["xla", "cudnn"]
ATTENTION_IMPLS = get_args(AttentionImpl)
LmHeadKernel = Literal["xla", "pallas"]
LM_HEAD_KERNELS = get_args(LmHeadKernel)
MlpKernel = Literal["xla", "pallas"]
MLP_KERNELS = get_args(MlpKernel)
FAMILIES = ("llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "phi")


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


LORA_TARGET_GROUPS = {
    "attention": ("q_proj", "k_proj", "v_proj", "o_proj"),
    "mlp": ("gate_proj", "up_proj", "down_proj", "fc1", "fc2"),
}


@dataclasses.dataclass(frozen=True)
class LoraConfig:
    """Low-rank adapters W + (alpha / rank) * A @ B on the named linear layers of every block."""

    rank: int
    alpha: float = 16.0
    dropout: float = 0.0
    targets: tuple[str, ...] = LORA_TARGET_GROUPS["mlp"]  # module names (q_proj, gate_proj, ...)

    @property
    def scale(self) -> float:
        return self.alpha / self.rank

    @staticmethod
    def parse_targets(spec: str) -> tuple[str, ...]:
        """"mlp", "attention", "all", or module names, comma-separated (e.g. "q_proj,v_proj")."""
        names: list[str] = []
        for part in (p.strip() for p in spec.split(",") if p.strip()):
            if part == "all":
                names += LORA_TARGET_GROUPS["attention"] + LORA_TARGET_GROUPS["mlp"]
            else:
                names += LORA_TARGET_GROUPS.get(part, (part,))
        known = set(LORA_TARGET_GROUPS["attention"] + LORA_TARGET_GROUPS["mlp"])
        unknown = sorted(set(names) - known)
        if unknown or not names:
            raise ValueError(f"LoRA targets {unknown or spec!r}: expected mlp, attention, all, or "
                             f"some of {sorted(known)}")
        return tuple(dict.fromkeys(names))


# The config fields holding a Pallas kernel's tile and launch options: the blocks dataclass whose
# fields they list in order (the tile, then optionally warps and stages), and the tile's axes.
KERNEL_BLOCKS = {"lm_head_blocks": (HeadBlocks, "rows, vocab, depth"),
                 "mlp_blocks": (MlpBlocks, "rows, mlp, depth")}


def check_blocks(field: str, blocks: tuple) -> None:
    """Raises ValueError, naming the KERNEL_BLOCKS `field`, on `blocks` its kernel cannot take."""
    kind, tile = KERNEL_BLOCKS[field]
    if not 3 <= len(blocks) <= 5:
        raise ValueError(f"{field}={tuple(blocks)} must be {tile}[, warps, stages]")
    try:
        kind(*blocks)  # raises on a tile or launch option Triton cannot take
    except (TypeError, ValueError) as e:
        raise ValueError(f"{field}={tuple(blocks)}: {e}") from None


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """A pre-norm decoder (Llama, Mistral, Qwen2/3, Gemma 1/2, Phi-2) plus execution options.

    The defaults describe Llama; the structural fields below them express how the other
    families differ, each with the family that needs it.
    """

    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int | None = None  # None: hidden_size // num_heads
    rope_theta: float = 10_000.0
    rope_scaling: RopeScaling | None = None
    norm_eps: float = 1e-6
    tie_embeddings: bool = False
    qkv_bias: bool = False  # Qwen2, Phi-2: biases on the q, k and v projections
    family: str = "llama"  # Hugging Face model_type, used when exporting
    # Structure, by family.
    norm: Literal["rms", "layer"] = "rms"  # Phi-2: LayerNorm with bias
    norm_offset: float = 0.0  # Gemma: RMSNorm scales by (1 + weight)
    block: Literal["sequential", "sandwich", "parallel"] = "sequential"  # Gemma-2 / Phi-2
    mlp: Literal["gated", "plain"] = "gated"  # Phi-2: fc2(act(fc1(x)))
    activation: Literal["silu", "gelu_tanh", "gelu"] = "silu"  # Gemma, Phi-2: tanh GELU
    mlp_bias: bool = False  # Phi-2
    attention_out_bias: bool = False  # Phi-2's dense
    lm_head_bias: bool = False  # Phi-2
    qk_norm: bool = False  # Qwen3: RMSNorm on each query and key head
    partial_rotary_factor: float = 1.0  # Phi-2: rotary embedding on the first 40% of a head
    embed_scale: bool = False  # Gemma: embeddings times sqrt(hidden_size)
    query_pre_attn_scalar: float | None = None  # Gemma-2: attention scale scalar ** -0.5
    attn_logit_softcap: float | None = None  # Gemma-2
    final_logit_softcap: float | None = None  # Gemma-2
    layer_windows: tuple[int, ...] | None = None  # sliding window per layer, 0 = full (Gemma-2)
    # Execution options: they change speed and memory, not the function computed.
    dtype: str = "float32"  # compute dtype of activations and matmuls
    param_dtype: str = "float32"  # master weights
    remat: RematPolicy = "none"  # per-layer rematerialisation in the backward pass
    scan_unroll: int = 1  # layers per iteration of the scan over layers; 0: all (no loop)
    attention_impl: AttentionImpl = "xla"  # "cudnn": fused flash attention on NVIDIA GPUs
    logprob_chunk: int = 128  # sequence positions per chunk of LM-head logits
    # "pallas": the log-prob chunks' logits reduced in Triton kernels, never written (NVIDIA
    # GPUs; no tensor parallelism; model/head_kernel.py); lm_head_blocks: their HeadBlocks'
    # fields in order, rows x vocab x depth tile[, warps, stages]
    lm_head_kernel: LmHeadKernel = "xla"
    lm_head_blocks: tuple[int | None, ...] = (128, 128, 64)
    # "pallas": the gated MLP's backward pass through silu(gate) * up fused into the d_h matmul,
    # a Triton kernel (NVIDIA GPUs; silu, no MLP bias or adapters, remat "none", no tensor
    # parallelism; model/mlp_kernel.py); mlp_blocks: its MlpBlocks' fields in order, rows x mlp
    # x depth tile[, warps, stages]
    mlp_kernel: MlpKernel = "xla"
    mlp_blocks: tuple[int, ...] = (128, 128, 64)
    lora: LoraConfig | None = None  # adapters on the backbone (the base then stays frozen)

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
        if self.rotary_dim % 2:
            raise ValueError(f"rotary dimensions ({self.rotary_dim}) must be even")
        if self.layer_windows is not None and len(self.layer_windows) != self.num_layers:
            raise ValueError(f"layer_windows has {len(self.layer_windows)} entries for "
                             f"{self.num_layers} layers")
        if self.family not in FAMILIES:
            raise ValueError(f"unknown family {self.family!r}; supported: {FAMILIES}")
        if self.remat not in REMAT_POLICIES:
            raise ValueError(f"unknown remat {self.remat!r}; expected one of {REMAT_POLICIES}")
        if not 0 <= self.scan_unroll <= max(self.num_layers, 1):
            raise ValueError(f"scan_unroll={self.scan_unroll} must be in [0, num_layers="
                             f"{self.num_layers}] (0: every layer)")
        if self.logprob_chunk <= 0:
            raise ValueError(f"logprob_chunk must be positive, got {self.logprob_chunk}")
        if self.lm_head_kernel not in LM_HEAD_KERNELS:
            raise ValueError(f"unknown lm_head_kernel {self.lm_head_kernel!r}; expected one of "
                             f"{LM_HEAD_KERNELS}")
        check_blocks("lm_head_blocks", self.lm_head_blocks)
        if self.lm_head_kernel == "pallas":
            check_hidden_size(self.hidden_size)
        if self.mlp_kernel not in MLP_KERNELS:
            raise ValueError(f"unknown mlp_kernel {self.mlp_kernel!r}; expected one of "
                             f"{MLP_KERNELS}")
        check_blocks("mlp_blocks", self.mlp_blocks)
        if self.mlp_kernel == "pallas":
            self._check_mlp_kernel()

    def _check_mlp_kernel(self):
        """What the MLP kernel computes: the gated silu MLP without biases, on a step that
        keeps the forward's activations (under remat its custom backward pass would run the
        forward's matmul again)."""
        adapted_mlp = sorted(set(self.lora.targets if self.lora else ())
                             & {"gate_proj", "up_proj", "down_proj"})
        refusals = {
            f"mlp={self.mlp!r}": self.mlp != "gated",
            f"activation={self.activation!r}": self.activation != "silu",
            "mlp_bias=True": self.mlp_bias,
            f"remat={self.remat!r}": self.remat != "none",
            f"LoRA on {adapted_mlp}": bool(adapted_mlp),
        }
        refused = [what for what, applies in refusals.items() if applies]
        if refused:
            raise ValueError(f"mlp_kernel='pallas' computes the gated silu MLP without biases or "
                             f"adapters, with remat='none'; this model has {', '.join(refused)}: "
                             "use mlp_kernel='xla'")
        check_widths(self.hidden_size, self.intermediate_size)

    @property
    def lm_head_kernel_blocks(self) -> HeadBlocks | None:
        """The Pallas head kernels' tile, or None for XLA's kernels."""
        return HeadBlocks(*self.lm_head_blocks) if self.lm_head_kernel == "pallas" else None

    @property
    def mlp_kernel_blocks(self) -> MlpBlocks | None:
        """The Pallas MLP kernel's tile, or None for XLA's kernels."""
        return MlpBlocks(*self.mlp_blocks) if self.mlp_kernel == "pallas" else None

    @property
    def dim_per_head(self) -> int:
        return self.head_dim if self.head_dim is not None else self.hidden_size // self.num_heads

    @property
    def layers_per_scan_step(self) -> int:
        return self.scan_unroll or self.num_layers

    @property
    def rotary_dim(self) -> int:
        return int(self.dim_per_head * self.partial_rotary_factor)

    @property
    def attention_scale(self) -> float:
        return (self.query_pre_attn_scalar or self.dim_per_head) ** -0.5

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
        attn += hd * (self.num_heads + 2 * self.num_kv_heads) if self.qkv_bias else 0
        attn += d if self.attention_out_bias else 0
        attn += 2 * hd if self.qk_norm else 0
        mlp = (3 if self.mlp == "gated" else 2) * d * f
        mlp += (f + d) if self.mlp_bias else 0
        norm = d * (2 if self.norm == "layer" else 1)
        norms_per_layer = {"sequential": 2, "sandwich": 4, "parallel": 1}[self.block]
        per_layer = attn + mlp + norms_per_layer * norm
        total = self.vocab_size * d + self.num_layers * per_layer + norm + d  # + reward head
        if with_lm_head and not self.tie_embeddings:
            total += d * self.vocab_size + (self.vocab_size if self.lm_head_bias else 0)
        return total


PRESETS: dict[str, ModelConfig] = {
    # For tests and the embedded default task: trains in seconds on a CPU.
    "tiny": ModelConfig(
        vocab_size=256, hidden_size=64, intermediate_size=176, num_layers=2, num_heads=4,
        num_kv_heads=2, rope_theta=10_000.0, norm_eps=1e-6,
    ),
    "qwen2.5-0.5b": ModelConfig(
        vocab_size=151_936, hidden_size=896, intermediate_size=4864, num_layers=24, num_heads=14,
        num_kv_heads=2, rope_theta=1_000_000.0, norm_eps=1e-6, tie_embeddings=True,
        qkv_bias=True, family="qwen2",
    ),
    "qwen2.5-1.5b": ModelConfig(
        vocab_size=151_936, hidden_size=1536, intermediate_size=8960, num_layers=28, num_heads=12,
        num_kv_heads=2, rope_theta=1_000_000.0, norm_eps=1e-6, tie_embeddings=True,
        qkv_bias=True, family="qwen2",
    ),
    "llama-3.2-1b": ModelConfig(
        vocab_size=128_256, hidden_size=2048, intermediate_size=8192, num_layers=16, num_heads=32,
        num_kv_heads=8, head_dim=64, rope_theta=500_000.0, norm_eps=1e-5, tie_embeddings=True,
        rope_scaling=RopeScaling("llama3", factor=32.0, low_freq_factor=1.0, high_freq_factor=4.0,
                                 original_max_position_embeddings=8192),
    ),
    "llama-3-8b": ModelConfig(
        vocab_size=128_256, hidden_size=4096, intermediate_size=14_336, num_layers=32,
        num_heads=32, num_kv_heads=8, rope_theta=500_000.0, norm_eps=1e-5,
    ),
    # microsoft/phi-2, the paper's backbone (the recipes under configs/).
    "phi-2": ModelConfig(
        vocab_size=51_200, hidden_size=2560, intermediate_size=10_240, num_layers=32,
        num_heads=32, num_kv_heads=32, rope_theta=10_000.0, norm_eps=1e-5, family="phi",
        norm="layer", block="parallel", mlp="plain", activation="gelu_tanh", qkv_bias=True,
        attention_out_bias=True, mlp_bias=True, lm_head_bias=True, partial_rotary_factor=0.4,
    ),
    # Mistral-7B-v0.1's shape (the paper's official code trains Mistral-7B v0.2, whose config
    # configs/hh_mistral_lora.py reads from its checkpoint). Its 4,096-token sliding window
    # equals the longest sequence trained here, so full causal attention computes the same
    # function.
    "mistral-7b": ModelConfig(
        vocab_size=32_000, hidden_size=4096, intermediate_size=14_336, num_layers=32, num_heads=32,
        num_kv_heads=8, rope_theta=10_000.0, norm_eps=1e-5, family="mistral",
    ),
}


def preset(name: str, **overrides) -> ModelConfig:
    """A preset by name, with fields replaced by `overrides` (None values are ignored)."""
    if name not in PRESETS:
        raise ValueError(f"unknown model preset {name!r}; known presets: {sorted(PRESETS)}")
    changes = {k: v for k, v in overrides.items() if v is not None}
    return dataclasses.replace(PRESETS[name], **changes)


def to_dict(cfg: ModelConfig) -> dict:
    """JSON-ready description of `cfg` (saved in every workdir as model_config.json)."""
    return dataclasses.asdict(cfg)


def from_dict(fields: dict) -> ModelConfig:
    """Inverse of `to_dict`."""
    fields = dict(fields)
    if fields.get("rope_scaling") is not None:
        fields["rope_scaling"] = RopeScaling(**fields["rope_scaling"])
    if fields.get("layer_windows") is not None:
        fields["layer_windows"] = tuple(fields["layer_windows"])
    for blocks in KERNEL_BLOCKS:
        if blocks in fields:  # a JSON list
            fields[blocks] = tuple(fields[blocks])
    if fields.get("lora") is not None:
        fields["lora"] = LoraConfig(**{**fields["lora"], "targets": tuple(fields["lora"]["targets"])})
    return ModelConfig(**fields)
