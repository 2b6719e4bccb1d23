"""AdamW with linear warmup, then cosine / linear / constant decay, and global-norm clipping."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
import optax


def learning_rate_schedule(optim: ml_collections.ConfigDict, total_steps: int) -> optax.Schedule:
    peak, warmup = optim.learning_rate, optim.warmup_steps
    end = peak * optim.end_learning_rate_factor
    decay_steps = max(total_steps - warmup, 1)
    if optim.schedule == "cosine":
        decay = optax.cosine_decay_schedule(peak, decay_steps, alpha=optim.end_learning_rate_factor)
    elif optim.schedule == "linear":
        decay = optax.linear_schedule(peak, end, decay_steps)
    elif optim.schedule == "constant":
        decay = optax.constant_schedule(peak)
    else:
        raise ValueError(f"unknown schedule {optim.schedule!r}")
    if warmup == 0:
        return decay
    # update k (counting from 0) of the warmup uses peak * (k + 1) / warmup: the first update
    # already moves the params (optax's linear_schedule from 0 would waste it at lr 0)
    ramp = lambda count: peak * jnp.minimum((count + 1) / warmup, 1.0)
    return optax.join_schedules([ramp, decay], [warmup])


# Leaves that weight decay applies to: weight matrices, the embedding and LoRA's A and B.
# By name, not by rank: stacked over layers, a norm's scale [layers, hidden] and a bias
# [layers, heads, head_dim] have two dimensions or more.
DECAYED_LEAVES = frozenset({"kernel", "embedding", "a", "b"})


def decay_mask(params):
    """True where weight decay applies; norms' scales and biases are left alone."""
    return jax.tree_util.tree_map_with_path(
        lambda path, _: getattr(path[-1], "key", None) in DECAYED_LEAVES, params)


def make_optimizer(optim: ml_collections.ConfigDict,
                   total_steps: int) -> tuple[optax.GradientTransformation, optax.Schedule]:
    schedule = learning_rate_schedule(optim, total_steps)
    adamw = optax.adamw(schedule, b1=optim.b1, b2=optim.b2, eps=optim.eps,
                        weight_decay=optim.weight_decay, mask=decay_mask)
    if optim.max_grad_norm > 0:
        return optax.chain(optax.clip_by_global_norm(optim.max_grad_norm), adamw), schedule
    return adamw, schedule
