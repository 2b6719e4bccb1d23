"""Pairwise preference metrics: pure numpy functions of per-pair scores, with bootstrap CIs.

A pair's margin is score(chosen) - score(rejected). For a score kind ("reward": the reward
head; "implicit": DPO's implicit reward beta * (logp - ref_logp)):

  accuracy  share of pairs with margin > 0, ties counted as half
  ties      share of pairs with margin == 0
  margin    mean margin
  ece       expected calibration error of the Bradley-Terry probability sigmoid(margin):
            pairs are binned by their confidence max(p, 1 - p) in [0.5, 1], and each bin's
            mean confidence is compared with its share of correctly ordered pairs
"""

from __future__ import annotations

import numpy as np

ECE_BINS = 10


def accuracy(margins: np.ndarray) -> float:
    return float(np.mean((margins > 0) + 0.5 * (margins == 0)))


def expected_calibration_error(margins: np.ndarray, bins: int = ECE_BINS) -> float:
    """Top-label ECE of p = sigmoid(margin) for "chosen beats rejected", over equal-width bins
    of confidence in [0.5, 1]."""
    p = 1.0 / (1.0 + np.exp(-np.asarray(margins, np.float64)))
    confidence = np.maximum(p, 1.0 - p)
    correct = (margins > 0) + 0.5 * (margins == 0)
    edges = np.linspace(0.5, 1.0, bins + 1)
    which = np.clip(np.digitize(confidence, edges[1:-1]), 0, bins - 1)
    total = 0.0
    for b in range(bins):
        members = which == b
        if members.any():
            total += members.mean() * abs(correct[members].mean() - confidence[members].mean())
    return float(total)


def margin_metrics(margins: np.ndarray) -> dict[str, float]:
    """accuracy, ties, margin and ece of one score kind."""
    margins = np.asarray(margins, np.float64)
    return {"accuracy": accuracy(margins), "ties": float(np.mean(margins == 0)),
            "margin": float(np.mean(margins)), "ece": expected_calibration_error(margins)}


def implicit_rewards(logps: np.ndarray, ref_logps: np.ndarray, beta: float) -> np.ndarray:
    """DPO's implicit reward beta * (logp - ref_logp), elementwise (any shape)."""
    return beta * (np.asarray(logps) - np.asarray(ref_logps))


def score_margins(rewards: np.ndarray | None, logps: np.ndarray | None,
                  ref_logps: np.ndarray | None, beta: float) -> dict[str, np.ndarray]:
    """Per-pair margins [pairs] of each available score kind, from scores [pairs, 2]."""
    out = {}
    if rewards is not None:
        out["reward"] = rewards[:, 0] - rewards[:, 1]
    if logps is not None and ref_logps is not None:
        implicit = implicit_rewards(logps, ref_logps, beta)
        out["implicit"] = implicit[:, 0] - implicit[:, 1]
    return out


def pair_metrics(rewards: np.ndarray | None, logps: np.ndarray | None,
                 ref_logps: np.ndarray | None, beta: float, primary: str) -> dict[str, float]:
    """Flat metrics "<kind>_<metric>" for each kind, plus "accuracy" (of `primary`: "reward"
    or "implicit") and "num_pairs"."""
    margins = score_margins(rewards, logps, ref_logps, beta)
    out = {f"{kind}_{name}": value for kind, m in margins.items()
           for name, value in margin_metrics(m).items()}
    out["accuracy"] = out[f"{primary}_accuracy"]
    out["num_pairs"] = float(len(margins[primary]))
    return out


def bootstrap_intervals(margins: dict[str, np.ndarray], samples: int = 1000, seed: int = 0,
                        level: float = 0.95) -> dict[str, tuple[float, float]]:
    """Percentile bootstrap intervals of every "<kind>_<metric>", pairs resampled with
    replacement (the same resample for every kind, so intervals are comparable)."""
    count = len(next(iter(margins.values())))
    rng = np.random.default_rng(seed)
    draws: dict[str, list[float]] = {}
    for _ in range(samples):
        pick = rng.integers(0, count, size=count)
        for kind, m in margins.items():
            for name, value in margin_metrics(m[pick]).items():
                draws.setdefault(f"{kind}_{name}", []).append(value)
    tail = (1.0 - level) / 2 * 100
    return {key: (float(np.percentile(v, tail)), float(np.percentile(v, 100 - tail)))
            for key, v in draws.items()}
