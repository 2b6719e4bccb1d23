"""The experiment harness behind experiments/compare.py: a grid of runs, their summary, plots."""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import os
import time

import ml_collections
import numpy as np

from hafrm_jax.configuration import ConfigError
from hafrm_jax.sharding import device_description
from hafrm_jax.train.loop import train_and_evaluate
from hafrm_jax.train.plots import new_figure
from hafrm_jax.train.run_files import cache_directory, flat_config, read_json

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Variant:
    method: str  # haf | baseline | dpo
    alpha: float | None = None  # None: the config's train.alpha

    def label(self, config_alpha: float) -> str:
        if self.method == "baseline":
            return "Baseline"
        name = "DPO" if self.method == "dpo" else "HaF"
        alpha = config_alpha if self.alpha is None else self.alpha
        return name if self.alpha is None else f"{name} (alpha={alpha:g})"


def _run_dir(out: str, variant: Variant, seed: int, noise: float) -> str:
    alpha = "" if variant.alpha is None else f"-alpha{variant.alpha:g}"
    return os.path.join(out, "runs", f"{variant.method}{alpha}-noise{noise:g}-seed{seed}")


def _curve(workdir: str) -> list[tuple[int, float]]:
    with open(os.path.join(workdir, "metrics.jsonl"), encoding="utf-8") as f:
        rows = [json.loads(line) for line in f]
    return [(r["step"], r["eval/accuracy"]) for r in rows if "eval/accuracy" in r]


# Settings that decide a run's result: a finished run is reused only where they agree.
RESULT_KEYS = ("model.", "data.", "optim.", "train.method", "train.alpha", "train.beta",
               "train.dpo_loss", "train.label_smoothing", "train.reward_centering",
               "train.reference", "train.steps", "train.batch_size", "train.seed",
               "train.eval_every")
RESULT_FREE = ("data.cache_dir",)  # under RESULT_KEYS, but where files go, not what they hold


def _check_same_experiment(workdir: str, config: ml_collections.ConfigDict) -> None:
    """Refuse to reuse a finished run trained with other settings (another alpha, steps,
    recipe, ...): its numbers would be reported under this grid's."""
    path = os.path.join(workdir, "config.json")
    if not os.path.exists(path):
        return
    old = flat_config(read_json(path))
    new = flat_config(json.loads(config.to_json()))
    changed = sorted(k for k in set(old) & set(new) if k.startswith(RESULT_KEYS)
                     and k not in RESULT_FREE and not isinstance(new[k], dict)
                     and old[k] != new[k])
    if changed:
        raise ConfigError(f"{workdir} holds a finished run with other settings ("
                          + ", ".join(f"{k}: {old[k]!r} there, {new[k]!r} here" for k in changed)
                          + "): use another --out, or delete that run to train it again")


def run_grid(config: ml_collections.ConfigDict, variants: list[Variant], seeds: list[int],
             noise_rates: list[float], out: str, train_missing: bool = True) -> list[dict]:
    """Train every (variant, noise, seed); finished runs (results.json present) are reused.

    With train_missing=False nothing is trained: the runs that have not finished are left out
    of the returned list and logged (a report on what a time-boxed sweep completed).
    A `data.cache_dir` inside each workdir (the default) moves to OUT: the grid's runs differ
    in method, seed and label noise, none of which changes the tokens, so all of them read the
    splits the first one tokenised.
    """
    config = copy.deepcopy(config)
    shared = cache_directory(config.data.cache_dir, out)  # a relative one: inside OUT
    if shared is not None:
        config.data.cache_dir = os.path.abspath(shared)
    runs = []
    for noise in noise_rates:
        for variant in variants:
            for seed in seeds:
                workdir = _run_dir(out, variant, seed, noise)
                results_path = os.path.join(workdir, "results.json")
                started = time.time()
                trained_now = not os.path.exists(results_path)
                if trained_now and not train_missing:
                    log.warning("left out, not finished: %s", workdir)
                    continue
                run_config = copy.deepcopy(config)
                run_config.train.method = variant.method
                if variant.alpha is not None:
                    run_config.train.alpha = variant.alpha
                run_config.train.seed = seed
                run_config.data.label_noise = noise
                if trained_now:
                    train_and_evaluate(run_config, workdir)
                else:
                    _check_same_experiment(workdir, run_config)
                result = read_json(results_path)
                runs.append({
                    "variant": variant.label(config.train.alpha), "method": variant.method,
                    "alpha": run_config.train.alpha,
                    "seed": seed, "noise": noise, "workdir": workdir,
                    "test_accuracy": result["test"]["accuracy"],
                    "test_implicit_accuracy": result["test"].get("implicit_accuracy"),
                    "test_ece": result["test"].get(
                        "implicit_ece" if variant.method == "dpo" else "reward_ece"),
                    "validation_accuracy": result["validation"]["accuracy"],
                    "best_step": result["best_step"], "curve": _curve(workdir),
                    # Wall time: measured here, or as the run recorded it (None: unknown).
                    "seconds": round(time.time() - started, 1) if trained_now
                    else result.get("wall_seconds"),
                    "device": result.get("device"),
                })
                log.info("%s noise=%g seed=%d: test accuracy %.4f", runs[-1]["variant"], noise,
                         seed, runs[-1]["test_accuracy"])
    return runs


def training_free_baselines(config: ml_collections.ConfigDict) -> dict[str, float]:
    """Reference rows on the test split: chance, and (for a pretrained starting model) its
    mean per-token log-prob of each response, with no training at all."""
    from hafrm_jax.data.pipeline import load_records
    from hafrm_jax.metrics import accuracy
    from hafrm_jax.scorer import load_scorer

    out = {"Chance": 0.5}
    if config.model.name_or_path:
        from hafrm_jax.hf.checkpoint import resolve_checkpoint

        scorer = load_scorer(resolve_checkpoint(config.model.name_or_path),
                             max_length=config.data.max_length,
                             max_prompt_length=config.data.max_prompt_length)
        scorer.chat_format = config.data.chat_format
        test = load_records(config)[0]["test"]
        out["Training-free: mean log-prob of the starting model"] = accuracy(
            scorer.mean_logprob_margins(test))
    return out


def summarise(runs: list[dict]) -> dict[str, dict[float, tuple[float, float, int]]]:
    """variant -> noise -> (mean, std, number of seeds) of the test accuracy."""
    table: dict[str, dict[float, list[float]]] = {}
    for run in runs:
        table.setdefault(run["variant"], {}).setdefault(run["noise"], []).append(
            run["test_accuracy"])
    return {variant: {noise: (float(np.mean(v)), float(np.std(v)), len(v))
                      for noise, v in by_noise.items()} for variant, by_noise in table.items()}


def _mean(values, fmt: str) -> str:
    values = [v for v in values if v is not None]
    return fmt.format(np.mean(values)) if values else "-"


def _mean_std(values) -> str:
    values = [v for v in values if v is not None]
    return f"{np.mean(values):.4f} +- {np.std(values):.4f}" if values else "-"


def write_report(runs: list[dict], table: dict, out: str,
                 baselines: dict[str, float] | None = None) -> None:
    """results.json, results.md (accuracy against noise; and per method at each noise rate:
    implicit accuracy, ECE, steps, wall time, device) and the two PNG plots."""
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "results.json"), "w", encoding="utf-8") as f:
        json.dump({"runs": runs, "baselines": baselines or {}}, f, indent=1)
    noise_rates = sorted({r["noise"] for r in runs})
    lines = ["Test accuracy, mean +- std over seeds (n seeds), model chosen on validation.", "",
             "| method | " + " | ".join(f"noise {n:g}" for n in noise_rates) + " |",
             "|---" * (len(noise_rates) + 1) + "|"]
    for variant, by_noise in table.items():
        cells = [f"{by_noise[n][0]:.4f} +- {by_noise[n][1]:.4f} ({by_noise[n][2]})"
                 if n in by_noise else "-" for n in noise_rates]
        lines.append(f"| {variant} | " + " | ".join(cells) + " |")
    for name, value in (baselines or {}).items():
        lines.append(f"| {name} | " + " | ".join(f"{value:.4f}" for _ in noise_rates) + " |")
    devices = {r.get("device") for r in runs} - {None}
    device = ", ".join(sorted(devices)) or device_description()
    for noise in noise_rates:
        lines += ["", f"Label noise {noise:g}, on {device}:", "",
                  "| method | test accuracy | implicit accuracy | ECE | best step | seconds/run |",
                  "|---|---|---|---|---|---|"]
        for variant in table:
            rs = [r for r in runs if r["variant"] == variant and r["noise"] == noise]
            if rs:
                lines.append(f"| {variant} | {_mean_std([r['test_accuracy'] for r in rs])} | "
                             f"{_mean_std([r['test_implicit_accuracy'] for r in rs])} | "
                             f"{_mean_std([r['test_ece'] for r in rs])} | "
                             f"{_mean_std([r['best_step'] for r in rs])} | "
                             f"{_mean([r['seconds'] for r in rs], '{:.0f}')} |")
    timed = [r["seconds"] for r in runs if r["seconds"] is not None]
    lines += ["", f"{len(runs)} runs; {len(timed)} with a recorded wall time, "
              f"{sum(timed) / 60:.1f} minutes in all."]
    with open(os.path.join(out, "results.md"), "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
    _plot(runs, table, noise_rates, out)


def _plot(runs, table, noise_rates, out) -> None:
    fig, ax = new_figure(figsize=(6, 4))
    for variant, by_noise in table.items():
        xs = [n for n in noise_rates if n in by_noise]
        ax.errorbar(xs, [by_noise[n][0] for n in xs], yerr=[by_noise[n][1] for n in xs],
                    marker="o", capsize=3, label=variant)
    ax.set_xlabel("label noise (share of training pairs flipped)")
    ax.set_ylabel("test accuracy")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(os.path.join(out, "accuracy_vs_noise.png"), dpi=110)

    fig, axes = new_figure(1, len(noise_rates), figsize=(5 * len(noise_rates), 4),
                           squeeze=False, sharey=True)
    for ax, noise in zip(axes[0], noise_rates):
        for variant in table:
            curves = [r["curve"] for r in runs if r["variant"] == variant and r["noise"] == noise]
            if not curves:
                continue
            steps = [s for s, _ in curves[0]]
            values = np.array([[a for _, a in c] for c in curves if len(c) == len(steps)])
            ax.plot(steps, values.mean(axis=0), marker=".", label=variant)
        ax.set_title(f"label noise {noise:g}")
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("validation accuracy (mean over seeds)")
    axes[0][-1].legend()
    fig.tight_layout()
    fig.savefig(os.path.join(out, "accuracy_vs_step.png"), dpi=110)
