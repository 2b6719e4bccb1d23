"""The hybrid model: where the reward is read, padding on either side, and where gradients go."""

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hafrm_jax.model.config import PRESETS, RopeScaling, preset
from hafrm_jax.model.decoder import rope_frequencies
from hafrm_jax.model.hybrid import HybridRewardModel
from hafrm_jax.objective import LossConfig, ObjectiveConfig, hybrid_loss
from tests.conftest import make_pair_batch


def init(cfg, seed=0, randomize_reward_head=True):
    model = HybridRewardModel(cfg)
    ids = jnp.zeros((1, 4), jnp.int32)
    params = nn.meta.unbox(model.init(jax.random.PRNGKey(seed), ids, ids + 1, ids + 1))["params"]
    if randomize_reward_head:  # the real head starts at zero, which would hide its gradients
        key = jax.random.PRNGKey(seed + 1)
        params["reward_head"]["kernel"] = jax.random.normal(key, params["reward_head"]["kernel"].shape)
    return model, params


def test_reward_head_starts_at_zero(tiny_config):
    _, params = init(tiny_config, randomize_reward_head=False)
    assert not np.any(params["reward_head"]["kernel"])
    assert set(params["reward_head"]) == {"kernel"}  # no bias: exactly HF's `score` layer


def test_reward_read_at_last_real_token_left_or_right_padding(tiny_config):
    model, params = init(tiny_config)
    seqs = [[5, 6, 7, 8, 9, 10], [11, 12, 13], [14, 15, 16, 17]]  # responses: last 2 tokens
    seq = 8
    right = np.zeros((3, seq), np.int32)
    left = np.zeros((3, seq), np.int32)
    right_mask, left_mask = np.zeros_like(right), np.zeros_like(left)
    right_resp, left_resp = np.zeros_like(right), np.zeros_like(left)
    for i, s in enumerate(seqs):
        n = len(s)
        right[i, :n], right_mask[i, :n], right_resp[i, n - 2:n] = s, 1, 1
        left[i, seq - n:], left_mask[i, seq - n:], left_resp[i, seq - 2:] = s, 1, 1
    out_r = model.apply({"params": params}, right, right_mask, right_resp)
    out_l = model.apply({"params": params}, left, left_mask, left_resp)
    np.testing.assert_allclose(out_r.rewards, out_l.rewards, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(out_r.logprobs, out_l.logprobs, rtol=1e-5)
    # and equal to each sequence run alone, with no padding at all
    for i, s in enumerate(seqs):
        alone = model.apply({"params": params}, np.array([s]), np.ones((1, len(s)), np.int32),
                            np.array([[0] * (len(s) - 2) + [1, 1]]))
        np.testing.assert_allclose(alone.rewards[0], out_r.rewards[i], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(alone.logprobs[0], out_r.logprobs[i], rtol=1e-5)


def test_reward_ignores_tokens_after_the_last_real_one(tiny_config):
    model, params = init(tiny_config)
    ids = np.array([[5, 6, 7, 0, 0]], np.int32)
    mask = np.array([[1, 1, 1, 0, 0]], np.int32)
    other = ids.copy()
    other[0, 3:] = [40, 41]  # garbage in the padding
    r1 = model.apply({"params": params}, ids, mask, mask).rewards
    r2 = model.apply({"params": params}, other, mask, mask).rewards
    np.testing.assert_allclose(r1, r2, rtol=1e-6)


def _grads(cfg, method, alpha=0.2):
    _, params = init(cfg)
    batch = make_pair_batch(np.random.default_rng(0), pairs=3, seq=10, vocab=cfg.vocab_size)
    batch["ref_logps"] = np.full((3, 2), -20.0, np.float32)
    loss_cfg = LossConfig(cfg, ObjectiveConfig(method=method, alpha=alpha))
    return jax.grad(lambda p: hybrid_loss(p, batch, loss_cfg)[0])(params)


def _norm(tree):
    return float(sum(jnp.sum(jnp.abs(x)) for x in jax.tree_util.tree_leaves(tree)))


def test_gradient_flow(tiny_config):
    dpo = _grads(tiny_config, "dpo", alpha=0.2)  # the alpha * DPO term alone
    bt = _grads(tiny_config, "baseline")  # the BT term alone
    haf = _grads(tiny_config, "haf", alpha=0.2)
    # alpha * DPO reaches the backbone and the policy head, not the reward head
    assert _norm(dpo["backbone"]) > 0 and _norm(dpo["lm_head"]) > 0
    assert _norm(dpo["reward_head"]) == 0
    # BT reaches the backbone and the reward head, not the LM head
    assert _norm(bt["backbone"]) > 0 and _norm(bt["reward_head"]) > 0
    assert _norm(bt["lm_head"]) == 0
    # and the hybrid gradient is exactly their sum
    for a, b, c in zip(*map(jax.tree_util.tree_leaves, (haf, bt, dpo))):
        np.testing.assert_allclose(a, b + c, rtol=1e-4, atol=1e-6)


def test_tied_embeddings_share_the_policy_head(tiny_config):
    cfg = dataclasses.replace(tiny_config, tie_embeddings=True, qkv_bias=True)
    _, params = init(cfg)
    assert "lm_head" not in params
    assert "bias" in params["backbone"]["layers"]["self_attn"]["q_proj"]
    grads = _grads(cfg, "dpo")
    assert _norm(grads["backbone"]["embed_tokens"]) > 0


def test_bf16_compute_keeps_float32_params_and_scores(tiny_config):
    cfg = dataclasses.replace(tiny_config, dtype="bfloat16")
    model, params = init(cfg)
    assert all(x.dtype == jnp.float32 for x in jax.tree_util.tree_leaves(params))
    batch = make_pair_batch(np.random.default_rng(0), 2, 8, cfg.vocab_size)
    out = model.apply({"params": params}, batch["input_ids"][:, 0], batch["attention_mask"][:, 0],
                      batch["response_mask"][:, 0])
    assert out.rewards.dtype == jnp.float32 and out.logprobs.dtype == jnp.float32
    full = model.apply({"params": params}, batch["input_ids"][:, 0], batch["attention_mask"][:, 0],
                       batch["response_mask"][:, 0])
    np.testing.assert_allclose(out.logprobs, full.logprobs)


def test_remat_is_the_same_function(tiny_config):
    _, params = init(tiny_config)
    batch = make_pair_batch(np.random.default_rng(0), 2, 8, tiny_config.vocab_size)
    batch["ref_logps"] = np.zeros((2, 2), np.float32)
    objective = ObjectiveConfig("haf")
    ref = jax.grad(lambda p: hybrid_loss(p, batch, LossConfig(tiny_config, objective))[0])(params)
    for remat in ("full", "dots"):
        cfg = dataclasses.replace(tiny_config, remat=remat)
        got = jax.grad(lambda p: hybrid_loss(p, batch, LossConfig(cfg, objective))[0])(params)
        # float32 rounding apart: without remat the gate and up projections are one matmul
        for a, b in zip(jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(ref)):
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


def test_rope_scaling():
    base = rope_frequencies(64, 500_000.0, None)
    linear = rope_frequencies(64, 500_000.0, RopeScaling("linear", factor=4.0))
    np.testing.assert_allclose(linear, base / 4.0)
    llama3 = rope_frequencies(64, 500_000.0, PRESETS["llama-3.2-1b"].rope_scaling)
    wavelen = 2 * np.pi / np.asarray(base)
    np.testing.assert_allclose(llama3[wavelen < 8192 / 4], base[wavelen < 8192 / 4])  # high freq kept
    np.testing.assert_allclose(llama3[wavelen > 8192], base[wavelen > 8192] / 32.0, rtol=1e-6)


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_presets_build_and_count(name):
    cfg = PRESETS[name]
    shapes = jax.eval_shape(
        lambda: HybridRewardModel(cfg).init(jax.random.PRNGKey(0), jnp.zeros((1, 4), jnp.int32),
                                            jnp.ones((1, 4), jnp.int32), jnp.ones((1, 4), jnp.int32)))
    count = sum(int(np.prod(x.shape)) for x in jax.tree_util.tree_leaves(nn.meta.unbox(shapes)))
    assert count == cfg.num_params()
    expected_billions = {"qwen2.5-0.5b": 0.494, "qwen2.5-1.5b": 1.544, "llama-3.2-1b": 1.236,
                         "llama-3-8b": 8.03, "mistral-7b": 7.24, "phi-2": 2.78}
    if name in expected_billions:  # the published sizes (reward head adds 1e-6 B)
        assert abs(count / 1e9 - expected_billions[name]) < 0.01


def test_phi2_preset_is_what_its_checkpoint_config_parses_to():
    """microsoft/phi-2's config.json values, parsed as an imported checkpoint's would be."""
    from transformers import PhiConfig

    from hafrm_jax.hf.config import model_config_from_hf

    phi2 = PhiConfig(vocab_size=51_200, hidden_size=2560, intermediate_size=10_240,
                     num_hidden_layers=32, num_attention_heads=32, partial_rotary_factor=0.4,
                     layer_norm_eps=1e-5, hidden_act="gelu_new", tie_word_embeddings=False,
                     rope_theta=10_000.0, max_position_embeddings=2048)
    assert model_config_from_hf(phi2) == PRESETS["phi-2"]


def test_model_config_checks():
    with pytest.raises(ValueError, match="multiple of num_kv_heads"):
        preset("tiny", num_kv_heads=3)
    with pytest.raises(ValueError, match="unknown model preset"):
        preset("gpt-5")
