"""Hugging Face `config.json` <-> `ModelConfig`, per model family.

Parsing goes through transformers' config classes (AutoConfig, never `trust_remote_code`), so
defaults a checkpoint leaves out are filled in exactly as transformers fills them.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from hafrm_jax.model.config import FAMILIES, ModelConfig, RopeScaling

SUPPORTED_ROPE = ("default", "linear", "llama3")


class UnsupportedModelError(ValueError):
    """A checkpoint this library cannot load, or cannot use as asked (a missing head)."""


def _rope(hf) -> tuple[float, RopeScaling | None, float]:
    """(theta, scaling, partial_rotary_factor) from a v5 config's `rope_parameters`."""
    params = dict(getattr(hf, "rope_parameters", None) or {})
    theta = float(params.get("rope_theta", getattr(hf, "rope_theta", 10_000.0)))
    partial = float(params.get("partial_rotary_factor",
                               getattr(hf, "partial_rotary_factor", None) or 1.0))
    kind = params.get("rope_type", params.get("type", "default"))
    if kind not in SUPPORTED_ROPE:
        raise UnsupportedModelError(f"rope_type {kind!r} is not supported; supported: "
                                    f"{SUPPORTED_ROPE}")
    if kind == "default":
        return theta, None, partial
    if kind == "linear":
        return theta, RopeScaling("linear", float(params["factor"])), partial
    return theta, RopeScaling(
        "llama3", float(params["factor"]), float(params["low_freq_factor"]),
        float(params["high_freq_factor"]), int(params["original_max_position_embeddings"]),
    ), partial


def _layer_windows(hf, num_layers: int) -> tuple[int, ...] | None:
    window = getattr(hf, "sliding_window", None)
    if not window:
        return None
    types = getattr(hf, "layer_types", None)
    if types is None:  # Mistral: one window for every layer
        return (int(window),) * num_layers
    if hf.model_type == "qwen2" and not getattr(hf, "use_sliding_window", False):
        return None
    windows = tuple(int(window) if t == "sliding_attention" else 0 for t in types)
    return windows if any(windows) else None


# transformers' hidden_act names (ACT2FN) -> ours, and ours -> the name an export writes
_ACTIVATIONS = {"silu": "silu", "swish": "silu", "gelu": "gelu",
                "gelu_pytorch_tanh": "gelu_tanh", "gelu_new": "gelu_tanh"}
_HF_ACTIVATION = {"silu": "silu", "gelu": "gelu", "gelu_tanh": "gelu_pytorch_tanh"}


def model_config_from_hf(hf, **execution: Any) -> ModelConfig:
    """A `ModelConfig` from a transformers config object; `execution` sets dtype, remat, ...

    Raises UnsupportedModelError, listing the supported families, for any other model_type.
    """
    family = hf.model_type
    if family not in FAMILIES:
        raise UnsupportedModelError(
            f"model_type {family!r} is not supported; supported model types: {', '.join(FAMILIES)}")
    theta, scaling, partial = _rope(hf)
    heads = hf.num_attention_heads
    fields = dict(
        vocab_size=hf.vocab_size, hidden_size=hf.hidden_size,
        intermediate_size=hf.intermediate_size, num_layers=hf.num_hidden_layers,
        num_heads=heads, num_kv_heads=getattr(hf, "num_key_value_heads", None) or heads,
        head_dim=getattr(hf, "head_dim", None), rope_theta=theta, rope_scaling=scaling,
        partial_rotary_factor=partial, tie_embeddings=bool(hf.tie_word_embeddings),
        family=family, layer_windows=_layer_windows(hf, hf.num_hidden_layers),
    )
    if family in ("llama", "mistral", "qwen2", "qwen3"):
        if hf.hidden_act not in _ACTIVATIONS:
            raise UnsupportedModelError(
                f"{family} hidden_act {hf.hidden_act!r} is not supported; supported: "
                f"{', '.join(_ACTIVATIONS)}")
        attention_bias = bool(getattr(hf, "attention_bias", False))
        fields.update(activation=_ACTIVATIONS[hf.hidden_act], norm_eps=hf.rms_norm_eps,
                      mlp_bias=bool(getattr(hf, "mlp_bias", False)),
                      qkv_bias=attention_bias or family == "qwen2",
                      attention_out_bias=attention_bias, qk_norm=family == "qwen3")
    if family in ("gemma", "gemma2"):
        act = getattr(hf, "hidden_activation", None) or hf.hidden_act
        if act not in ("gelu_pytorch_tanh", "gelu"):
            raise UnsupportedModelError(f"Gemma activation {act!r} is not supported")
        fields.update(norm_eps=hf.rms_norm_eps, norm_offset=1.0, embed_scale=True,
                      activation=_ACTIVATIONS[act],
                      qkv_bias=bool(getattr(hf, "attention_bias", False)),
                      attention_out_bias=bool(getattr(hf, "attention_bias", False)))
    if family == "gemma2":
        fields.update(block="sandwich", query_pre_attn_scalar=hf.query_pre_attn_scalar,
                      attn_logit_softcap=hf.attn_logit_softcapping,
                      final_logit_softcap=hf.final_logit_softcapping)
    if family == "phi":
        if getattr(hf, "qk_layernorm", False):
            raise UnsupportedModelError("Phi with qk_layernorm=True is not supported")
        if hf.hidden_act not in ("gelu_new", "gelu_pytorch_tanh"):
            raise UnsupportedModelError(f"Phi activation {hf.hidden_act!r} is not supported")
        fields.update(norm="layer", norm_eps=hf.layer_norm_eps, block="parallel", mlp="plain",
                      activation="gelu_tanh", qkv_bias=True, attention_out_bias=True,
                      mlp_bias=True, lm_head_bias=True)
    fields.update(execution)
    return ModelConfig(**fields)


def load_hf_config(directory: str):
    """transformers' config object of a checkpoint directory, without remote code."""
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(directory, trust_remote_code=False)


def hf_config_dict(cfg: ModelConfig) -> dict[str, Any]:
    """The `config.json` fields that describe `cfg` for its family (inverse of the parser)."""
    out: dict[str, Any] = dict(
        model_type=cfg.family, vocab_size=cfg.vocab_size, hidden_size=cfg.hidden_size,
        intermediate_size=cfg.intermediate_size, num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads, num_key_value_heads=cfg.num_kv_heads,
        head_dim=cfg.dim_per_head, tie_word_embeddings=cfg.tie_embeddings,
    )
    rope: dict[str, Any] = {"rope_theta": cfg.rope_theta, "rope_type": "default"}
    if cfg.rope_scaling is not None:
        rope.update(rope_type=cfg.rope_scaling.kind, factor=cfg.rope_scaling.factor)
        if cfg.rope_scaling.kind == "llama3":
            rope.update(low_freq_factor=cfg.rope_scaling.low_freq_factor,
                        high_freq_factor=cfg.rope_scaling.high_freq_factor,
                        original_max_position_embeddings=(
                            cfg.rope_scaling.original_max_position_embeddings))
    if cfg.partial_rotary_factor != 1.0:
        rope["partial_rotary_factor"] = cfg.partial_rotary_factor
    out["rope_parameters"] = rope
    if cfg.layer_windows:
        out["sliding_window"] = max(cfg.layer_windows)
        if cfg.family != "mistral":
            out["layer_types"] = ["sliding_attention" if w else "full_attention"
                                  for w in cfg.layer_windows]
        if cfg.family == "qwen2":
            out["use_sliding_window"] = True
    elif cfg.family in ("mistral", "gemma2", "qwen2", "qwen3"):
        out["sliding_window"] = None
    if cfg.family in ("llama", "mistral", "qwen2", "qwen3"):
        out.update(rms_norm_eps=cfg.norm_eps, hidden_act=_HF_ACTIVATION[cfg.activation])
        if cfg.family in ("llama", "qwen3"):
            out["attention_bias"] = cfg.attention_out_bias
        if cfg.family == "llama":
            out["mlp_bias"] = cfg.mlp_bias
    if cfg.family in ("gemma", "gemma2"):
        act = _HF_ACTIVATION[cfg.activation]
        out.update(rms_norm_eps=cfg.norm_eps, hidden_activation=act, hidden_act=act)
    if cfg.family == "gemma2":
        out.update(query_pre_attn_scalar=cfg.query_pre_attn_scalar,
                   attn_logit_softcapping=cfg.attn_logit_softcap,
                   final_logit_softcapping=cfg.final_logit_softcap)
    if cfg.family == "phi":
        out.update(layer_norm_eps=cfg.norm_eps, hidden_act="gelu_new", qk_layernorm=False)
    return out


def architecture_fields(cfg: ModelConfig) -> dict[str, Any]:
    """The fields of `cfg` that define the function computed (not how it is executed)."""
    execution = {"dtype", "param_dtype", "remat", "scan_unroll", "attention_impl",
                 "logprob_chunk", "lm_head_kernel", "lm_head_blocks", "mlp_kernel", "mlp_blocks",
                 "lora"}
    fields = {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg)
              if f.name not in execution}
    fields["head_dim"] = cfg.dim_per_head  # None means the default: the same model
    return fields
