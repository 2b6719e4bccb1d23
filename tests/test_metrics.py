"""Pairwise metrics, intervals and benchmark rules against hand-computed values."""

import numpy as np
import pytest

from hafrm_jax import metrics
from hafrm_jax.benchmarks import best_of_n, rewardbench_scores


def test_margin_metrics_by_hand():
    margins = np.array([2.0, -1.0, 0.0, 3.0])
    out = metrics.margin_metrics(margins)
    assert out["accuracy"] == pytest.approx((1 + 0 + 0.5 + 1) / 4)
    assert out["ties"] == pytest.approx(0.25)
    assert out["margin"] == pytest.approx(1.0)


def test_ece_by_hand():
    # sigmoid(2) = 0.8808 (right), sigmoid(-2): confidence 0.8808 (wrong), sigmoid(0): 0.5 (tie)
    margins = np.array([2.0, -2.0, 0.0])
    conf = 1 / (1 + np.exp(-2.0))
    # bins of width 0.05 over [0.5, 1]: {0.5} holds the tie (correct 0.5 vs conf 0.5: gap 0);
    # the bin of 0.8808 holds two pairs, one right: |0.5 - 0.8808| weighted 2/3
    expected = 2 / 3 * abs(0.5 - conf)
    assert metrics.expected_calibration_error(margins) == pytest.approx(expected)
    # perfectly confident and right: no calibration error
    assert metrics.expected_calibration_error(np.array([50.0, 60.0])) == pytest.approx(0, abs=1e-9)


def test_pair_metrics_primary_and_implicit():
    rewards = np.array([[1.0, 0.0], [0.0, 2.0]])
    logps = np.array([[-10.0, -12.0], [-9.0, -8.0]])
    refs = np.array([[-11.0, -11.0], [-9.0, -9.0]])
    out = metrics.pair_metrics(rewards, logps, refs, beta=0.5, primary="implicit")
    # implicit margins: 0.5*((1) - (-1)) = 1.0 and 0.5*(0 - 1) = -0.5
    assert out["implicit_margin"] == pytest.approx(0.25)
    assert out["accuracy"] == out["implicit_accuracy"] == 0.5
    assert out["reward_accuracy"] == 0.5 and out["num_pairs"] == 2


def test_bootstrap_interval_brackets_the_estimate():
    rng = np.random.default_rng(0)
    margins = {"reward": rng.normal(0.5, 1.0, size=400)}
    intervals = metrics.bootstrap_intervals(margins, samples=500, seed=1)
    low, high = intervals["reward_accuracy"]
    estimate = metrics.accuracy(margins["reward"])
    assert low < estimate < high and high - low < 0.15
    assert metrics.bootstrap_intervals(margins, samples=500, seed=1) == intervals


def test_rewardbench_sections_and_weights():
    subsets = ["alpacaeval-easy"] * 4 + ["mt-bench-easy"] * 2 + ["math-prm"] * 2 + ["hep-go"] * 2
    chosen = np.array([1, 1, 1, 0, 1, 0, 1, 1, 0, 0], float)
    rejected = np.zeros(10)
    out = rewardbench_scores(chosen, rejected, subsets)
    # a tie is wrong, as in RewardBench: alpacaeval-easy 3/4, mt-bench-easy 1/2
    assert out["subsets"]["alpacaeval-easy"]["accuracy"] == 0.75
    chat = (0.75 * 100 + 0.5 * 28) / 128
    assert out["sections"]["Chat"] == pytest.approx(chat)
    # Reasoning: math-prm (984) against one code subset (164)
    reasoning = (1.0 * 984 + 0.0 * 164) / (984 + 164)
    assert out["sections"]["Reasoning"] == pytest.approx(reasoning)
    assert out["score"] == pytest.approx((chat + reasoning) / 2)


def test_best_of_n_against_random_and_oracle():
    scores = [np.array([0.1, 0.9, 0.5]), np.array([2.0, 1.0])]
    gold = [np.array([1.0, 3.0, 2.0]), np.array([0.0, 4.0])]
    out = best_of_n(scores, gold)
    assert out["picks"] == [1, 0]
    assert out["gold_of_pick"] == pytest.approx((3.0 + 0.0) / 2)
    assert out["gold_of_random_pick"] == pytest.approx((2.0 + 2.0) / 2)
    assert out["gold_of_oracle"] == pytest.approx((3.0 + 4.0) / 2)
    assert out["oracle_agreement"] == 0.5
