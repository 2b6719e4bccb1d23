"""LoRA: low-rank adapters on the backbone's linear layers, in their own variable collection.

A target layer computes  y = x W + (alpha / rank) * dropout(x) A B,  A [in, rank], B [rank, out],
with B zero-initialised, so a fresh adapter changes nothing. The adapters live in the "lora"
collection: the model applied without it is the base model (the DPO reference, with no second
copy of the weights), and with it the adapted one. Training differentiates only a small
"trainable" tree ({"lora": adapters, "reward_head", optionally "lm_head"}); the base params are
passed in frozen (`model_variables`).
"""

from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from hafrm_jax.model.config import ModelConfig

COLLECTION = "lora"
Params = Any


class LoRAAdapter(nn.Module):
    """(alpha / rank) * dropout(x) @ A @ B for x [..., *in_dims] -> [..., *out_dims]."""

    config: ModelConfig
    in_dims: tuple[int, ...]
    out_dims: tuple[int, ...]
    in_axis: str | None  # logical names, so adapters shard like their layer
    out_axis: str | None

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        cfg, lora = self.config, self.config.lora
        fan_in, fan_out = math.prod(self.in_dims), math.prod(self.out_dims)
        bound = 1.0 / math.sqrt(fan_in)  # as PEFT's kaiming-uniform(a=sqrt(5)) initialisation
        a = self.variable(COLLECTION, "a", nn.with_logical_partitioning(
            lambda: jax.random.uniform(self.make_rng("params"), (fan_in, lora.rank),
                                       cfg.weight_dtype, -bound, bound), (self.in_axis, None)))
        b = self.variable(COLLECTION, "b", nn.with_logical_partitioning(
            lambda: jnp.zeros((lora.rank, fan_out), cfg.weight_dtype), (None, self.out_axis)))
        a, b = nn.meta.unbox(a.value), nn.meta.unbox(b.value)
        flat = x.reshape(*x.shape[:x.ndim - len(self.in_dims)], fan_in)
        if lora.dropout > 0 and self.has_rng("dropout"):  # training only
            keep = jax.random.bernoulli(self.make_rng("dropout"), 1 - lora.dropout, flat.shape)
            flat = jnp.where(keep, flat / (1 - lora.dropout), 0).astype(flat.dtype)
        h = flat @ a.astype(x.dtype) @ b.astype(x.dtype)
        return (lora.scale * h).reshape(*flat.shape[:-1], *self.out_dims)


def adapted(module: nn.Module, name: str, base_out: jax.Array, x: jax.Array,
            in_dims: tuple[int, ...], out_dims: tuple[int, ...], in_axis, out_axis) -> jax.Array:
    """base_out plus the LoRA branch of layer `name`, when it is a target and adapters exist."""
    cfg = module.config
    if cfg.lora is None or name not in cfg.lora.targets:
        return base_out
    present = f"{name}_lora" in module.variables.get(COLLECTION, {})
    if not (module.is_mutable_collection(COLLECTION) or present):
        return base_out  # applied without the "lora" collection: the base model
    branch = LoRAAdapter(cfg, in_dims, out_dims, in_axis, out_axis, name=f"{name}_lora")
    return base_out + branch(x).astype(base_out.dtype)


def split_trainable(params: Params, adapters: Params, train_lm_head: bool) -> tuple[Params, Params]:
    """(trainable, frozen): adapters and heads to train; the base params (without them) frozen."""
    frozen = dict(params)
    trainable = {"lora": adapters, "reward_head": frozen.pop("reward_head")}
    if train_lm_head and "lm_head" in frozen:
        trainable["lm_head"] = frozen.pop("lm_head")
    return trainable, frozen


def model_variables(params: Params, frozen: Params | None = None) -> dict:
    """Flax variables for `HybridRewardModel.apply`: the full params, or (with LoRA) the frozen
    base with the trainable heads put back and the adapters as the "lora" collection."""
    if frozen is None:
        return {"params": params}
    heads = {k: v for k, v in params.items() if k != COLLECTION}
    return {"params": {**frozen, **heads}, COLLECTION: params[COLLECTION]}


def merge_adapters(params: Params, adapters: Params, config: ModelConfig) -> Params:
    """The base params with every adapter folded into its layer: W + scale * A @ B."""
    def merge(node, lora_node):
        out = dict(node)
        for key, value in lora_node.items():
            if key.endswith("_lora"):
                layer = key[: -len("_lora")]
                kernel = node[layer]["kernel"]
                # stacked over layers: a [L, in, r], b [L, r, out]; kernel [L, *in, *out]
                delta = jnp.einsum("lir,lro->lio", value["a"], value["b"]) * config.lora.scale
                out[layer] = dict(node[layer], kernel=(kernel + delta.reshape(kernel.shape)
                                                       .astype(kernel.dtype)))
            else:
                out[key] = merge(node[key], value)
        return out

    return merge(params, adapters)


def optimizer_state_bytes(config: ModelConfig, train_lm_head: bool = False,
                          bytes_per_value: int = 4) -> dict[str, int]:
    """AdamW's memory (two float32 moments per trained value), counted from shapes alone: for
    full fine-tuning and, if `config.lora` is set, for LoRA training (adapters + heads)."""
    from hafrm_jax.train.state import abstract_params, count_params  # shapes: nothing allocated

    params = abstract_params(config)
    full = count_params(params)
    out = {"full_params": full, "full_adam_bytes": 2 * bytes_per_value * full}
    if config.lora is not None:
        trainable, _ = split_trainable(params, abstract_params(config, COLLECTION), train_lm_head)
        out["lora_trainable"] = count_params(trainable)
        out["lora_adam_bytes"] = 2 * bytes_per_value * count_params(trainable)
    return out
