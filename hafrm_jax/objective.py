"""The HaF-RM objective: BT on the reward head + alpha * DPO on the policy head, one pure function.

loss = reward_weight * BT(r_w, r_l) + dpo_weight * DPO(beta * ((lp_w - ref_w) - (lp_l - ref_l)))
       [+ centering * (r_w + r_l)^2]

method "haf":      reward_weight 1, dpo_weight alpha  (paper: alpha 0.2, beta 0.1)
method "baseline": reward_weight 1, dpo_weight 0      (standard reward model, no policy pass)
method "dpo":      reward_weight 0, dpo_weight alpha  (plain DPO, scored by its implicit reward)

Batches hold pairs on their leading axis and (chosen, rejected) on the second:
input_ids, attention_mask, response_mask [pairs, 2, seq]; ref_logps [pairs, 2].
"""

from __future__ import annotations

import dataclasses
from typing import Any, Literal

import jax
import jax.numpy as jnp

from hafrm_jax import losses
from hafrm_jax.model.config import ModelConfig
from hafrm_jax.model.hybrid import HybridRewardModel
from hafrm_jax.model.lora import model_variables
from hafrm_jax.model.readout import scored_token_counts

Method = Literal["haf", "baseline", "dpo"]
METHODS = ("haf", "baseline", "dpo")
Batch = dict[str, jax.Array]
Params = Any


@dataclasses.dataclass(frozen=True)
class ObjectiveConfig:
    method: Method = "haf"
    alpha: float = 0.2  # weight of the DPO term (haf and dpo)
    beta: float = 0.1  # DPO temperature
    dpo_loss: losses.DpoForm = "sigmoid"
    label_smoothing: float = 0.0  # applies to the BT term and the sigmoid DPO term
    reward_centering: float = 0.0  # coefficient of (r_w + r_l)^2
    reference: Literal["cached", "online"] = "cached"  # ref log-probs precomputed, or per step

    def __post_init__(self):
        if self.method not in METHODS:
            raise ValueError(f"unknown method {self.method!r}; expected one of {METHODS}")
        if self.dpo_loss not in ("sigmoid", "hinge", "ipo"):
            raise ValueError(f"unknown dpo_loss {self.dpo_loss!r}; expected sigmoid, hinge or ipo")

    @property
    def reward_weight(self) -> float:
        return 0.0 if self.method == "dpo" else 1.0

    @property
    def dpo_weight(self) -> float:
        return 0.0 if self.method == "baseline" else self.alpha

    @property
    def uses_rewards(self) -> bool:
        return self.reward_weight > 0

    @property
    def uses_policy(self) -> bool:
        """Whether the policy head (and so the reference log-probs) enter the objective."""
        return self.method != "baseline"

    @property
    def accuracy_metric(self) -> str:
        """The metric that scores this method: the reward head, or DPO's implicit reward."""
        return "implicit/accuracy" if self.method == "dpo" else "reward/accuracy"


@dataclasses.dataclass(frozen=True)
class LossConfig:
    """Everything static that `hybrid_loss` needs: the architecture and the objective."""

    model: ModelConfig
    objective: ObjectiveConfig


def pair_objective(
    rewards: jax.Array | None,
    policy_logps: jax.Array | None,
    ref_logps: jax.Array | None,
    response_lengths: jax.Array | None,
    objective: ObjectiveConfig,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """The objective from per-sequence quantities, each [pairs, 2] (chosen, rejected).

    rewards is needed when the reward head is used, policy_logps / ref_logps / response_lengths
    (response tokens, EOS included) when the policy head is. Returns (mean loss, metrics).
    """
    metrics: dict[str, jax.Array] = {}
    total = jnp.zeros((), jnp.float32)
    if objective.uses_rewards:
        chosen, rejected = rewards[:, 0], rewards[:, 1]
        bt = jnp.mean(losses.bradley_terry_loss(chosen, rejected, objective.label_smoothing))
        total += objective.reward_weight * bt
        metrics.update({
            "loss/bt": bt,
            "reward/accuracy": jnp.mean(losses.pairwise_accuracy(chosen, rejected)),
            "reward/margin": jnp.mean(chosen - rejected),
            "reward/chosen": jnp.mean(chosen),
            "reward/rejected": jnp.mean(rejected),
        })
        if objective.reward_centering > 0:
            centering = jnp.mean(losses.reward_centering_penalty(chosen, rejected))
            total += objective.reward_centering * centering
            metrics["loss/centering"] = centering
    if objective.uses_policy:
        logratios = policy_logps - ref_logps  # [pairs, 2]
        implicit = objective.beta * logratios  # DPO's implicit reward
        if objective.dpo_loss == "ipo":  # IPO compares per-token log-ratios
            logratios = logratios / jnp.maximum(response_lengths, 1)
        dpo = jnp.mean(losses.dpo_loss(logratios[:, 0] - logratios[:, 1], objective.beta,
                                       objective.dpo_loss, objective.label_smoothing))
        total += objective.dpo_weight * dpo
        metrics.update({
            "loss/dpo": dpo,
            "implicit/accuracy": jnp.mean(losses.pairwise_accuracy(implicit[:, 0], implicit[:, 1])),
            "implicit/margin": jnp.mean(implicit[:, 0] - implicit[:, 1]),
            "implicit/chosen": jnp.mean(implicit[:, 0]),
            "implicit/rejected": jnp.mean(implicit[:, 1]),
            "logps/chosen": jnp.mean(policy_logps[:, 0]),
            "logps/rejected": jnp.mean(policy_logps[:, 1]),
        })
    metrics["loss/total"] = total
    return total, metrics


def _flat(x: jax.Array) -> jax.Array:
    """[pairs, 2, ...] -> [2 * pairs, ...]: chosen and rejected side by side on the batch axis."""
    return x.reshape(-1, *x.shape[2:])


def forward_pairs(params: Params, batch: Batch, model_config: ModelConfig, *,
                  with_rewards: bool, with_logprobs: bool, frozen: Params | None = None,
                  rng: jax.Array | None = None):
    """ONE forward pass over chosen and rejected; returns (rewards, logps), each [pairs, 2] or
    None. (Any number of sides works: [n, 1, seq] scores single responses.) With LoRA, `params`
    is the trainable tree and `frozen` the base; `rng` drives LoRA dropout in training."""
    groups = batch["input_ids"].shape[:2]
    out = HybridRewardModel(model_config).apply(
        model_variables(params, frozen), _flat(batch["input_ids"]),
        _flat(batch["attention_mask"]), _flat(batch["response_mask"]),
        with_rewards=with_rewards, with_logprobs=with_logprobs,
        rngs=None if rng is None else {"dropout": rng},
    )
    unflat = lambda x: None if x is None else x.reshape(groups)
    return unflat(out.rewards), unflat(out.logprobs)


def hybrid_loss(params: Params, batch: Batch, config: LossConfig,
                ref_params: Params | None = None, frozen: Params | None = None,
                rng: jax.Array | None = None) -> tuple[jax.Array, dict[str, jax.Array]]:
    """The whole objective as one pure, jit-able, differentiable function of `params`.

    `params` is the full params tree, or with LoRA the trainable tree (adapters and heads) with
    the base passed in as `frozen`. Reference log-probs come from `batch["ref_logps"]` (cached
    once per example) or, with `reference="online"`, from a forward pass of the frozen
    reference: `ref_params`, or with LoRA the base itself with the adapters off.
    """
    objective = config.objective
    rewards, logps = forward_pairs(params, batch, config.model,
                                   with_rewards=objective.uses_rewards,
                                   with_logprobs=objective.uses_policy, frozen=frozen, rng=rng)
    ref_logps = response_lengths = None
    if objective.uses_policy:
        ref_logps = reference_logps(batch, config.model, objective, ref_params, frozen)
        response_lengths = scored_token_counts(batch["response_mask"])
    return pair_objective(rewards, logps, ref_logps, response_lengths, objective)


def reference_logps(batch: Batch, model_config: ModelConfig, objective: ObjectiveConfig,
                    ref_params: Params | None, frozen: Params | None = None) -> jax.Array:
    """[pairs, 2] reference log-probs: the cached column, or the frozen model run now."""
    if objective.reference == "cached":
        if "ref_logps" not in batch:
            raise ValueError("reference='cached' needs batch['ref_logps'] (the training loop "
                             "precomputes them once per example)")
        return batch["ref_logps"]
    if frozen is not None:  # LoRA: the base with the adapters off (its initial LM head if trained)
        base = {**frozen, **(ref_params or {})}
        _, ref = forward_pairs(jax.lax.stop_gradient(base), batch, model_config,
                               with_rewards=False, with_logprobs=True)
        return ref
    if ref_params is None:
        raise ValueError("reference='online' needs the frozen reference params")
    _, ref = forward_pairs(jax.lax.stop_gradient(ref_params), batch, model_config,
                           with_rewards=False, with_logprobs=True)
    return ref
