"""Scoring pairs with a model, and the pairwise metrics computed from the scores.

`score_pairs` runs the model over a split and returns per-pair arrays on the host;
`pair_metrics` is pure numpy on those arrays, so every metric is exact over the split (no
averaging of padded batches) and testable against hand-computed values.
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
                                process_rows, replicated)

ScoreFn = Callable[[Any, dict], tuple[jax.Array | None, jax.Array | None]]


def make_score_fn(model_config: ModelConfig, mesh: Mesh, rules: Rules, *, with_rewards: bool,
                  with_logprobs: bool) -> ScoreFn:
    """jit(params, batch) -> (rewards, logps), each [pairs, 2] and replicated on every host."""
    fn = functools.partial(forward_pairs, model_config=model_config, with_rewards=with_rewards,
                           with_logprobs=with_logprobs)
    return jax.jit(fn, out_shardings=replicated(mesh))


def eval_batch_size(requested: int, mesh: Mesh, rules: Rules) -> int:
    """`requested` rounded up to a multiple of the data-parallel size and the process count."""
    multiple = int(np.lcm(data_parallel_size(mesh, rules), jax.process_count()))
    return -(-requested // multiple) * multiple


def score_pairs(score_fn: ScoreFn, params: Any, data: TokenizedPairs, batch_size: int,
                pad_to_multiple: int, mesh: Mesh, rules: Rules) -> dict[str, np.ndarray]:
    """Run `score_fn` over every pair of `data`: {"rewards", "logps"} -> [pairs, 2] float32."""
    sharding = batch_sharding(mesh, rules)
    rows = process_rows(batch_size)
    out: dict[str, list[np.ndarray]] = {"rewards": [], "logps": []}
    for batch, real in eval_batches(data, batch_size, pad_to_multiple):
        batch.pop("ref_logps", None)
        local = {k: v[rows] for k, v in batch.items()}
        with jax.set_mesh(mesh):
            rewards, logps = score_fn(params, host_batch_to_global(local, sharding))
        for name, value in (("rewards", rewards), ("logps", logps)):
            if value is not None:
                out[name].append(np.asarray(value)[:real])
    return {k: np.concatenate(v).astype(np.float32) for k, v in out.items() if v}


def pair_metrics(rewards: np.ndarray | None, logps: np.ndarray | None,
                 ref_logps: np.ndarray | None, beta: float, primary: str) -> dict[str, float]:
    """Metrics over pairs from scores [pairs, 2] (side 0 chosen). Ties count half in accuracy.

    primary names the score that `accuracy` reports: "reward" (the reward head) or "implicit"
    (DPO's implicit reward beta * (logp - ref_logp)).
    """
    out: dict[str, float] = {}
    scores = {}
    if rewards is not None:
        scores["reward"] = rewards
    if logps is not None and ref_logps is not None:
        scores["implicit"] = beta * (logps - ref_logps)
    for name, s in scores.items():
        margin = s[:, 0] - s[:, 1]
        out[f"{name}_accuracy"] = float(np.mean((margin > 0) + 0.5 * (margin == 0)))
        out[f"{name}_ties"] = float(np.mean(margin == 0))
        out[f"{name}_margin"] = float(np.mean(margin))
    out["accuracy"] = out[f"{primary}_accuracy"]
    out["num_pairs"] = float(len(next(iter(scores.values()))))
    return out
