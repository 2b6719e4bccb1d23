"""Per-pair loss terms and pairwise metrics: pure functions of arrays, one loss per function.

Every function maps per-pair arrays [pairs] to per-pair values [pairs]; the objective averages.
"""

from __future__ import annotations

from typing import Literal

import jax
import jax.numpy as jnp

DpoForm = Literal["sigmoid", "hinge", "ipo"]


def bradley_terry_loss(chosen: jax.Array, rejected: jax.Array,
                       label_smoothing: float = 0.0) -> jax.Array:
    """-log sigmoid(r_w - r_l), or with label smoothing eps the loss of a label that is right with
    probability 1 - eps: -(1 - eps) log sigmoid(m) - eps log sigmoid(-m)."""
    margin = chosen - rejected
    return -(1.0 - label_smoothing) * jax.nn.log_sigmoid(margin) \
        - label_smoothing * jax.nn.log_sigmoid(-margin)


def dpo_loss(logratio_margin: jax.Array, beta: float, form: DpoForm = "sigmoid",
             label_smoothing: float = 0.0) -> jax.Array:
    """The DPO term of one pair from h = (lp_w - ref_w) - (lp_l - ref_l).

    sigmoid (DPO): -(1 - eps) log sigmoid(beta h) - eps log sigmoid(-beta h)  (eps: cDPO)
    hinge (SLiC):  max(0, 1 - beta h)
    ipo (IPO):     (h - 1 / (2 beta))^2, where the caller passes length-normalised log-ratios
    """
    if form == "sigmoid":
        return bradley_terry_loss(beta * logratio_margin, 0.0, label_smoothing)
    if form == "hinge":
        return jax.nn.relu(1.0 - beta * logratio_margin)
    if form == "ipo":
        return (logratio_margin - 1.0 / (2.0 * beta)) ** 2
    raise ValueError(f"unknown DPO loss form {form!r}; expected sigmoid, hinge or ipo")


def reward_centering_penalty(chosen: jax.Array, rejected: jax.Array) -> jax.Array:
    """(r_w + r_l)^2: pulls rewards towards mean zero (trl's `center_rewards_coefficient`)."""
    return (chosen + rejected) ** 2


def pairwise_accuracy(chosen: jax.Array, rejected: jax.Array) -> jax.Array:
    """1 where chosen scores higher, 0 where lower, and 0.5 on a tie (a coin flip's worth).

    Counting ties as half keeps a zero-initialised reward head at chance, 0.5, instead of 0.
    """
    return jnp.where(chosen > rejected, 1.0, jnp.where(chosen < rejected, 0.0, 0.5))
