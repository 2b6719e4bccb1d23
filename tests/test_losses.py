"""The objective's math against an independent numpy reference, for every method and variant."""


import jax.numpy as jnp
import numpy as np
import pytest

from hafrm_jax import losses
from hafrm_jax.objective import ObjectiveConfig, pair_objective


def np_log_sigmoid(x):
    return -np.logaddexp(0.0, -x)


def reference_objective(rewards, logps, refs, lengths, cfg: ObjectiveConfig):
    """The HaF-RM loss written out in numpy, term by term, from the paper's definitions."""
    eps = cfg.label_smoothing
    total = 0.0
    out = {}
    if cfg.method != "dpo":
        m = rewards[:, 0] - rewards[:, 1]
        bt = np.mean(-(1 - eps) * np_log_sigmoid(m) - eps * np_log_sigmoid(-m))
        out["loss/bt"] = bt
        total += bt
        if cfg.reward_centering:
            c = np.mean((rewards[:, 0] + rewards[:, 1]) ** 2)
            out["loss/centering"] = c
            total += cfg.reward_centering * c
        out["reward/accuracy"] = np.mean(np.where(m > 0, 1.0, np.where(m < 0, 0.0, 0.5)))
    if cfg.method != "baseline":
        h_w = logps[:, 0] - refs[:, 0]
        h_l = logps[:, 1] - refs[:, 1]
        if cfg.dpo_loss == "ipo":
            h = h_w / lengths[:, 0] - h_l / lengths[:, 1]
            d = np.mean((h - 1 / (2 * cfg.beta)) ** 2)
        elif cfg.dpo_loss == "hinge":
            d = np.mean(np.maximum(0.0, 1 - cfg.beta * (h_w - h_l)))
        else:
            z = cfg.beta * (h_w - h_l)
            d = np.mean(-(1 - eps) * np_log_sigmoid(z) - eps * np_log_sigmoid(-z))
        out["loss/dpo"] = d
        total += cfg.alpha * d
        out["implicit/accuracy"] = np.mean(cfg.beta * h_w > cfg.beta * h_l)
    out["loss/total"] = total
    return out


CASES = [
    ObjectiveConfig(method="haf"),
    ObjectiveConfig(method="baseline"),
    ObjectiveConfig(method="dpo", alpha=1.0),
    ObjectiveConfig(method="haf", alpha=0.5, beta=0.3, dpo_loss="hinge"),
    ObjectiveConfig(method="haf", dpo_loss="ipo"),
    ObjectiveConfig(method="dpo", alpha=0.2, dpo_loss="ipo", beta=0.5),
    ObjectiveConfig(method="haf", label_smoothing=0.1),
    ObjectiveConfig(method="baseline", label_smoothing=0.2, reward_centering=0.01),
    ObjectiveConfig(method="haf", reward_centering=0.05),
]


@pytest.mark.parametrize("cfg", CASES, ids=lambda c: f"{c.method}-{c.dpo_loss}-ls{c.label_smoothing}"
                                                   f"-c{c.reward_centering}")
def test_pair_objective_matches_numpy(cfg):
    rng = np.random.default_rng(0)
    rewards = rng.normal(size=(7, 2)).astype(np.float32) * 2
    logps = -rng.uniform(5, 40, size=(7, 2)).astype(np.float32)
    refs = logps + rng.normal(size=(7, 2)).astype(np.float32)
    lengths = rng.integers(3, 20, size=(7, 2)).astype(np.float32)
    loss, metrics = pair_objective(jnp.asarray(rewards), jnp.asarray(logps), jnp.asarray(refs),
                                   jnp.asarray(lengths), cfg)
    expected = reference_objective(rewards, logps, refs, lengths, cfg)
    np.testing.assert_allclose(float(loss), expected["loss/total"], rtol=1e-5)
    for key, value in expected.items():
        np.testing.assert_allclose(float(metrics[key]), value, rtol=1e-5, err_msg=key)
    assert ("loss/bt" in metrics) == (cfg.method != "dpo")
    assert ("loss/dpo" in metrics) == (cfg.method != "baseline")


def test_hand_computed_values():
    """Values worked out by hand: r_w - r_l = 2 -> BT = log(1 + e^-2) = 0.126928."""
    bt = losses.bradley_terry_loss(jnp.array([3.0]), jnp.array([1.0]))
    np.testing.assert_allclose(bt, [0.126928], rtol=1e-5)
    # beta * h = 0.1 * 10 = 1 -> -log sigmoid(1) = 0.313262; hinge: max(0, 1 - 1) = 0
    np.testing.assert_allclose(losses.dpo_loss(jnp.array([10.0]), 0.1), [0.313262], rtol=1e-5)
    np.testing.assert_allclose(losses.dpo_loss(jnp.array([10.0]), 0.1, "hinge"), [0.0])
    # ipo: (h - 1/(2 beta))^2 = (10 - 5)^2 = 25
    np.testing.assert_allclose(losses.dpo_loss(jnp.array([10.0]), 0.1, "ipo"), [25.0])
    # label smoothing 0.5 makes BT symmetric: log(1+e^-2)/2 + log(1+e^2)/2
    np.testing.assert_allclose(losses.bradley_terry_loss(jnp.array([2.0]), 0.0, 0.5),
                               [0.5 * (0.126928 + 2.126928)], rtol=1e-5)
    np.testing.assert_array_equal(
        losses.pairwise_accuracy(jnp.array([1.0, 0.0, 2.0]), jnp.array([0.0, 0.0, 3.0])),
        [1.0, 0.5, 0.0])


def test_method_weights():
    assert (ObjectiveConfig("haf").reward_weight, ObjectiveConfig("haf").dpo_weight) == (1.0, 0.2)
    assert ObjectiveConfig("baseline").dpo_weight == 0.0
    assert not ObjectiveConfig("baseline").uses_policy
    assert ObjectiveConfig("dpo").reward_weight == 0.0
    assert ObjectiveConfig("dpo").accuracy_metric == "implicit/accuracy"
    with pytest.raises(ValueError, match="unknown method"):
        ObjectiveConfig("ppo")
