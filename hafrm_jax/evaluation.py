"""Scoring pairs with a model: per-pair arrays of a whole split, on every host.

`score_pairs` runs the model over a split and returns per-pair arrays on the host; the metrics
(`hafrm_jax.metrics`) are pure numpy on those arrays, so every metric is exact over the split
(no averaging of padded batches) and testable against hand-computed values.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh

from hafrm_jax.data.batching import eval_batches
from hafrm_jax.data.tokenize import TokenizedPairs
from hafrm_jax.model.config import ModelConfig
from hafrm_jax.objective import forward_pairs
from hafrm_jax.sharding import (Rules, batch_sharding, data_parallel_size, host_batch_to_global,
                                replicated, traced_under_rules)

ScoreFn = Callable[[Any, dict, Any], dict[str, jax.Array]]


def _score(params: Any, batch: dict, frozen: Any = None, *, model_config: ModelConfig,
           with_rewards: bool, with_logprobs: bool) -> dict[str, jax.Array]:
    rewards, logps = forward_pairs(params, batch, model_config, with_rewards=with_rewards,
                                   with_logprobs=with_logprobs, frozen=frozen)
    out = {"valid": batch["valid"], "index": batch["index"]}
    for name, value in (("rewards", rewards), ("logps", logps),
                        ("ref_logps", batch.get("ref_logps"))):
        if value is not None:
            out[name] = value
    return out


def make_score_fn(model_config: ModelConfig, mesh: Mesh, rules: Rules, *, with_rewards: bool,
                  with_logprobs: bool) -> ScoreFn:
    """jit(params, batch, frozen=None) -> {"rewards", "logps" ([pairs, 2]), "ref_logps",
    "valid", "index"}, replicated, so that every host sees the scores of the whole global batch
    (`frozen`: the LoRA base, when `params` are the trainable adapters and heads)."""
    fn = functools.partial(_score, model_config=model_config, with_rewards=with_rewards,
                           with_logprobs=with_logprobs)
    return jax.jit(traced_under_rules(fn, rules), out_shardings=replicated(mesh))


def eval_batch_size(requested: int, mesh: Mesh, rules: Rules) -> int:
    """`requested` rounded up to a multiple of the data-parallel size and the process count."""
    multiple = int(np.lcm(data_parallel_size(mesh, rules), jax.process_count()))
    return -(-requested // multiple) * multiple


def score_pairs(score_fn: ScoreFn, params: Any, data: TokenizedPairs, split_size: int,
                batch_size: int, pad_to_multiple: int, mesh: Mesh,
                rules: Rules, frozen: Any = None, by_length: bool = True
                ) -> dict[str, np.ndarray]:
    """Score a split of which this host holds `data` (all of it on one host), in batches of
    pairs of similar length (`eval_batches`; `by_length=False`: in split order).

    split_size is the split's size over all hosts (an upper bound on every host's share), so
    that all hosts run the same number of global batches of `batch_size`. Returns, on every
    host, the arrays of the whole split in split order: "index" [pairs] and "rewards", "logps",
    "ref_logps" [pairs, 2] where computed / present.
    """
    sharding = batch_sharding(mesh, rules)
    hosts = jax.process_count()
    local_batch = batch_size // hosts
    num_batches = -(-(-(-split_size // hosts)) // local_batch)
    parts: dict[str, list[np.ndarray]] = {}
    for batch in eval_batches(data, local_batch, pad_to_multiple, num_batches, by_length):
        with jax.set_mesh(mesh):
            out = score_fn(params, host_batch_to_global(batch, sharding), frozen)
        keep = np.asarray(out["valid"]).astype(bool)
        for name, value in out.items():
            if name != "valid":
                parts.setdefault(name, []).append(np.asarray(value)[keep])
    merged = {name: np.concatenate(values) for name, values in parts.items()}
    order = np.argsort(merged["index"], kind="stable")
    return {name: value[order] for name, value in merged.items()}


def local_rows(scores: dict[str, np.ndarray], data: TokenizedPairs) -> np.ndarray:
    """Positions in split-ordered `scores` of this host's pairs `data`."""
    return np.searchsorted(scores["index"], data.index)
