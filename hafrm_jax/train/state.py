"""The train state, created directly with its sharding on the mesh."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh

from hafrm_jax.model.config import ModelConfig
from hafrm_jax.model.hybrid import HybridRewardModel
from hafrm_jax.model.lora import COLLECTION
from hafrm_jax.sharding import Rules, logical_to_sharding, replicated


@flax.struct.dataclass
class TrainState:
    step: jax.Array  # optimizer steps taken
    params: Any  # {"backbone", "lm_head", "reward_head"}: one plain pytree
    opt_state: optax.OptState
    rng: jax.Array  # raw uint32 key; fold_in(rng, step) gives each step its own randomness
    skipped: jax.Array  # updates skipped for a non-finite loss or gradient, in all
    skip_streak: jax.Array  # ... and in a row, up to now


def _init_fn(model_config: ModelConfig, collection: str = "params"):
    """`init(rng)`: the model's boxed params (or LoRA adapters) from `rng`."""
    # Built with one layer per scan step whatever `scan_unroll` says: nn.scan draws the same
    # stacked params however it unrolls, and an unrolled init compiles every layer's initialiser
    # (and the DCE'd forward) separately: Qwen2.5-0.5B's took 16.5 s to compile for a 2-core CPU
    # against 2.3 s scanned, and 270 s against 15 s compiled for an H100 (bench/RESULTS.md).
    model = HybridRewardModel(dataclasses.replace(model_config, scan_unroll=1))
    ids = jnp.zeros((2, 8), jnp.int32)
    mask = jnp.ones((2, 8), jnp.int32)

    def init(rng):
        return model.init(rng, ids, mask, mask)[collection]  # boxed: nn.Partitioned leaves

    return init


def param_shardings(model_config: ModelConfig, mesh: Mesh, rules: Rules,
                    collection: str = "params"):
    """NamedShardings of the params (or the LoRA adapters: collection="lora"), from the
    logical axis names of the model's weights."""
    boxed = jax.eval_shape(_init_fn(model_config, collection), jax.random.PRNGKey(0))
    return logical_to_sharding(boxed, mesh, rules)


def count_params(tree: Any) -> int:
    """Number of values in a pytree of arrays or shape structs."""
    return sum(math.prod(x.shape) for x in jax.tree_util.tree_leaves(tree))


def abstract_params(model_config: ModelConfig, collection: str = "params") -> Any:
    """Shape/dtype structs of the params (or adapters) pytree (no memory allocated)."""
    return nn.meta.unbox(jax.eval_shape(_init_fn(model_config, collection),
                                        jax.random.PRNGKey(0)))


def init_adapters(model_config: ModelConfig, seed: int, mesh: Mesh, rules: Rules):
    """Fresh LoRA adapters (B = 0: the adapted model starts as the base), created sharded."""
    shardings = param_shardings(model_config, mesh, rules, COLLECTION)
    init = _init_fn(model_config, COLLECTION)
    adapters = jax.jit(lambda rng: nn.meta.unbox(init(rng)), out_shardings=shardings)(
        jax.random.PRNGKey(seed + 2))
    return adapters, shardings


def init_params(model_config: ModelConfig, seed: int, mesh: Mesh, rules: Rules,
                pretrained_dir: str | None = None):
    """Starting params, each created on its own shards: random from `seed`, or streamed from a
    Hugging Face checkpoint directory. Returns (params, shardings)."""
    shardings = param_shardings(model_config, mesh, rules)
    if pretrained_dir is not None:
        from hafrm_jax.hf.checkpoint import load_pretrained_params

        return load_pretrained_params(pretrained_dir, model_config, shardings,
                                      abstract_params(model_config)), shardings
    init = _init_fn(model_config)
    params = jax.jit(lambda rng: nn.meta.unbox(init(rng)), out_shardings=shardings)(
        jax.random.PRNGKey(seed))
    return params, shardings


def state_shardings(optimizer: optax.GradientTransformation, params_shardings, params_shapes,
                    mesh: Mesh) -> TrainState:
    """Shardings of a TrainState: optimizer moments follow their params; scalars replicate."""
    opt_shapes = jax.eval_shape(optimizer.init, params_shapes)
    opt_shardings = optax.tree_map_params(
        optimizer, lambda _, sharding: sharding, opt_shapes, params_shardings,
        transform_non_params=lambda _: replicated(mesh))
    return TrainState(step=replicated(mesh), params=params_shardings, opt_state=opt_shardings,
                      rng=replicated(mesh), skipped=replicated(mesh), skip_streak=replicated(mesh))


def create_train_state(params, params_shardings, optimizer: optax.GradientTransformation,
                       seed: int, mesh: Mesh) -> tuple[TrainState, TrainState]:
    """A fresh TrainState around `params`, and the shardings of every field."""
    shapes = jax.tree_util.tree_map(lambda p: jax.ShapeDtypeStruct(p.shape, p.dtype), params)
    shardings = state_shardings(optimizer, params_shardings, shapes, mesh)
    opt_state = jax.jit(optimizer.init, out_shardings=shardings.opt_state)(params)
    zero = lambda: jax.device_put(jnp.zeros((), jnp.int32), replicated(mesh))
    state = TrainState(
        step=zero(), params=params, opt_state=opt_state,
        rng=jax.device_put(jax.random.PRNGKey(seed + 1), shardings.rng),
        skipped=zero(), skip_streak=zero(),
    )
    return state, shardings


def abstract_train_state(optimizer: optax.GradientTransformation, params_shapes) -> TrainState:
    """Shape structs of a TrainState (for restoring a checkpoint without building one)."""
    scalar = jax.ShapeDtypeStruct((), jnp.int32)
    return TrainState(step=scalar, params=params_shapes,
                      opt_state=jax.eval_shape(optimizer.init, params_shapes),
                      rng=jax.ShapeDtypeStruct((2,), jnp.uint32), skipped=scalar,
                      skip_streak=scalar)
