"""The training step: (state, batch, ref_params) -> (state, metrics), pure and jit-compiled.

Gradient accumulation runs inside the step as a `lax.scan` over microbatches, so one optimizer
update and one compiled program serve any accumulation factor.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax

from hafrm_jax.objective import LossConfig, hybrid_loss
from hafrm_jax.train.state import TrainState


def _microbatches(batch: dict[str, jax.Array], count: int) -> dict[str, jax.Array]:
    """[pairs, ...] -> [count, pairs / count, ...], taking pairs with stride `count`, so that
    every microbatch spans all data-parallel shards instead of living on a few of them."""
    return jax.tree_util.tree_map(
        lambda x: jnp.swapaxes(x.reshape(x.shape[0] // count, count, *x.shape[1:]), 0, 1), batch)


def train_step(state: TrainState, batch: dict[str, jax.Array], ref_params: Any,
               frozen: Any = None, *, loss_config: LossConfig,
               optimizer: optax.GradientTransformation, schedule: optax.Schedule,
               grad_accum_steps: int) -> tuple[TrainState, dict]:
    """One optimizer step. `state.params` is what is trained: the full params, or with LoRA
    the adapters and heads, the base passed in `frozen` (never differentiated, no optimizer
    state). `ref_params` is the online reference, if any."""
    lora = loss_config.model.lora
    step_rng = jax.random.fold_in(state.rng, state.step)  # LoRA dropout: resumable by step
    use_rng = lora is not None and lora.dropout > 0

    def grad_fn(params, micro, index):
        rng = jax.random.fold_in(step_rng, index) if use_rng else None
        return jax.value_and_grad(hybrid_loss, has_aux=True)(
            params, micro, loss_config, ref_params, frozen, rng)

    if grad_accum_steps == 1:
        (_, metrics), grads = grad_fn(state.params, batch, 0)
    else:
        def accumulate(carry, xs):
            micro, index = xs
            (_, m), g = grad_fn(state.params, micro, index)
            return jax.tree_util.tree_map(jnp.add, carry, (g, m)), None

        micro = _microbatches(batch, grad_accum_steps)
        first = jax.tree_util.tree_map(lambda x: x[0], micro)
        (_, metric_shapes), grad_shapes = jax.eval_shape(grad_fn, state.params, first, 0)
        zeros = jax.tree_util.tree_map(lambda s: jnp.zeros(s.shape, s.dtype),
                                       (grad_shapes, metric_shapes))
        (grads, metrics), _ = jax.lax.scan(accumulate, zeros,
                                           (micro, jnp.arange(grad_accum_steps)))
        grads, metrics = jax.tree_util.tree_map(lambda x: x / grad_accum_steps, (grads, metrics))

    grad_norm = optax.global_norm(grads)
    # A non-finite loss or gradient skips the update: params and optimizer state stay as they
    # were, and the skip is counted (the loop stops the run after too many in a row).
    finite = jnp.isfinite(metrics["loss/total"]) & jnp.isfinite(grad_norm)
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    keep_if_finite = lambda new, old: jnp.where(finite, new, old)
    params = jax.tree_util.tree_map(keep_if_finite, params, state.params)
    opt_state = jax.tree_util.tree_map(keep_if_finite, opt_state, state.opt_state)
    skipped = (~finite).astype(jnp.int32)
    metrics = dict(metrics)
    metrics["optim/grad_norm"] = grad_norm
    # No norm of the new params here: reduced inside the update, it made XLA fuse the reduction
    # with the AdamW update into reduction kernels that ran at a third of the memory bandwidth
    # on an H100 (round 3's profile); the loop logs `param_norm` at its log steps instead.
    # the optimizer's schedule counts the updates applied, which skipped steps are not
    metrics["optim/learning_rate"] = schedule(state.step - state.skipped)
    metrics["optim/skipped"] = skipped
    new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state,
                              skipped=state.skipped + skipped,
                              skip_streak=(state.skip_streak + 1) * skipped)
    return new_state, metrics
