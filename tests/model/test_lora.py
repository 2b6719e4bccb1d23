"""LoRA: zero adapters change nothing, gradients reach only adapters and heads, merging is
exact, the optimizer holds no state for the base, and the 7B memory bill from shapes."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.conftest import make_pair_batch

from hafrm_jax.model.config import PRESETS, LoraConfig, preset
from hafrm_jax.model.hybrid import HybridRewardModel
from hafrm_jax.model.lora import (merge_adapters, model_variables, optimizer_state_bytes,
                                  split_trainable)
from hafrm_jax.objective import LossConfig, ObjectiveConfig, hybrid_loss
from hafrm_jax.sharding import DEFAULT_RULES, make_mesh
from hafrm_jax.train.state import init_adapters, init_params

ALL = LoraConfig(rank=4, alpha=8.0, targets=LoraConfig.parse_targets("all"))


def setup(lora=ALL, train_lm_head=False, perturb=True):
    config = preset("tiny", num_layers=2, hidden_size=32, intermediate_size=64, lora=lora)
    mesh = make_mesh()
    params, _ = init_params(config, 0, mesh, DEFAULT_RULES)
    adapters, _ = init_adapters(config, 0, mesh, DEFAULT_RULES)
    if perturb:  # trained-looking adapters (B != 0) and reward head
        leaves, tree = jax.tree_util.tree_flatten(adapters)
        keys = jax.random.split(jax.random.PRNGKey(3), len(leaves))
        adapters = jax.tree_util.tree_unflatten(tree, [x + 0.05 * jax.random.normal(k, x.shape)
                                                       for x, k in zip(leaves, keys)])
        params["reward_head"]["kernel"] = jax.random.normal(jax.random.PRNGKey(4), (32, 1))
    trainable, frozen = split_trainable(params, adapters, train_lm_head)
    return config, params, adapters, trainable, frozen


def logits(config, variables, ids, mask):
    return HybridRewardModel(config).apply(variables, ids, mask, method="logits")


def test_fresh_adapters_equal_the_base():
    config, params, adapters, trainable, frozen = setup(perturb=False)
    assert all(not np.any(leaf) for path, leaf in jax.tree_util.tree_flatten_with_path(adapters)[0]
               if path[-1].key == "b")
    batch = make_pair_batch(np.random.default_rng(0), 2, 10, config.vocab_size)
    ids, mask = batch["input_ids"][:, 0], batch["attention_mask"][:, 0]
    np.testing.assert_array_equal(logits(config, model_variables(trainable, frozen), ids, mask),
                                  logits(config, {"params": params}, ids, mask))


def test_gradients_reach_only_adapters_and_heads():
    config, params, adapters, trainable, frozen = setup()
    batch = make_pair_batch(np.random.default_rng(1), 3, 10, config.vocab_size)
    batch["ref_logps"] = np.full((3, 2), -25.0, np.float32)
    loss_config = LossConfig(config, ObjectiveConfig("haf"))
    grads = jax.grad(lambda p: hybrid_loss(p, batch, loss_config, frozen=frozen)[0])(trainable)
    assert set(grads) == {"lora", "reward_head"}  # the base is not an argument: no gradient
    norms = {"/".join(k.key for k in path): float(jnp.abs(g).sum())
             for path, g in jax.tree_util.tree_flatten_with_path(grads)[0]}
    assert all(v > 0 for v in norms.values()), norms
    # the LM head trains only when asked; then it leaves the frozen base
    trainable_lm, frozen_lm = split_trainable(params, adapters, train_lm_head=True)
    assert "lm_head" in trainable_lm and "lm_head" not in frozen_lm
    grads = jax.grad(lambda p: hybrid_loss(p, batch, loss_config, frozen=frozen_lm)[0])(
        trainable_lm)
    assert float(jnp.abs(grads["lm_head"]["kernel"]).sum()) > 0


def test_reference_is_the_base_with_adapters_off():
    config, params, _, trainable, frozen = setup()
    batch = make_pair_batch(np.random.default_rng(2), 3, 10, config.vocab_size)
    objective = ObjectiveConfig("haf", reference="online")
    _, online = hybrid_loss(trainable, batch, LossConfig(config, objective), frozen=frozen)
    base_config = dataclasses.replace(config, lora=None)
    _, ref = jax.jit(lambda p: hybrid_loss(p, dict(batch, ref_logps=jnp.zeros((3, 2))),
                                           LossConfig(base_config, ObjectiveConfig("haf")))
                     )(params)
    # implicit reward = beta * (policy - reference): with the base as reference and the same
    # policy, the cached run (reference 0) differs from the online one by beta * base logps
    assert np.isfinite(float(online["loss/dpo"]))
    assert float(online["implicit/margin"]) != float(ref["implicit/margin"])


def test_merged_weights_equal_the_unmerged_model():
    config, params, adapters, trainable, frozen = setup()
    merged = merge_adapters({**frozen, "reward_head": trainable["reward_head"]}, adapters, config)
    batch = make_pair_batch(np.random.default_rng(3), 2, 12, config.vocab_size)
    ids, mask = batch["input_ids"][:, 0], batch["attention_mask"][:, 0]
    unmerged = logits(config, model_variables(trainable, frozen), ids, mask)
    base_config = dataclasses.replace(config, lora=None)
    np.testing.assert_allclose(logits(base_config, {"params": merged}, ids, mask), unmerged,
                               rtol=1e-5, atol=1e-5)
    assert not np.allclose(logits(base_config, {"params": params}, ids, mask), unmerged)


def test_optimizer_state_for_the_papers_7b_setting():
    """Mistral-7B with rank-64 adapters on the MLP (the paper's LoRA runs), from shapes."""
    config = dataclasses.replace(PRESETS["mistral-7b"], lora=LoraConfig(rank=64, alpha=16.0))
    bill = optimizer_state_bytes(config)
    per_layer = 3 * 64 * (4096 + 14336)  # gate, up, down: r * (in + out) each
    assert bill["lora_trainable"] == 32 * per_layer + 4096  # + the reward head
    assert bill["lora_adam_bytes"] == 8 * bill["lora_trainable"]  # two float32 moments
    assert bill["full_params"] == config.num_params()
    print(f"\nMistral-7B AdamW state: full {bill['full_adam_bytes'] / 2**30:.1f} GiB, "
          f"LoRA r64 MLP {bill['lora_adam_bytes'] / 2**20:.0f} MiB "
          f"({bill['lora_trainable'] / 1e6:.1f}M trainable)")
    assert bill["lora_adam_bytes"] < bill["full_adam_bytes"] / 50


def test_target_names():
    assert LoraConfig.parse_targets("mlp") == ("gate_proj", "up_proj", "down_proj", "fc1", "fc2")
    assert LoraConfig.parse_targets("q_proj, v_proj") == ("q_proj", "v_proj")
    with pytest.raises(ValueError, match="LoRA targets"):
        LoraConfig.parse_targets("qkv")
