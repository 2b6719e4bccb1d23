"""The work behind eval.py: which pairs to evaluate, metrics with intervals, tables, Best-of-N
and RewardBench runs, JSONL in and out. The metrics themselves live in `hafrm_jax.metrics`."""

from __future__ import annotations

import copy
import gzip
import json
import logging
from collections.abc import Sequence

import numpy as np

from hafrm_jax import metrics
from hafrm_jax.benchmarks import best_of_n, rewardbench_scores
from hafrm_jax.configuration import ConfigError
from hafrm_jax.data.pipeline import load_records
from hafrm_jax.data.readers import (DataError, RecordError, as_object, iter_records,
                                    read_preference_file, read_preference_records)
from hafrm_jax.data.records import PreferencePair
from hafrm_jax.data.sources import read_split
from hafrm_jax.scorer import RewardScorer
from hafrm_jax.train.plots import new_figure

log = logging.getLogger(__name__)

# The keys that tell each reader's format apart, checked in this order.
_FORMAT_KEYS = (("beaver", {"response_0", "response_1"}),
                ("alpaca_farm", {"output_1", "output_2", "preference"}),
                ("chatbot_arena", {"conversation_a", "conversation_b", "winner"}),
                ("generic", {"prompt", "chosen", "rejected"}),
                ("hh_rlhf", {"chosen", "rejected"}))


def detect_format(path: str) -> str:
    """The reader format of a file, from the fields of its first record."""
    for where, record in iter_records(path):
        if isinstance(record, RecordError):  # an undecodable first line
            raise DataError(where, record)
        if isinstance(record, dict):
            for name, keys in _FORMAT_KEYS:
                if keys <= set(record):
                    return name
        break
    raise DataError(path, RecordError("unknown_format", "cannot tell the format from its first "
                                      "record; pass --format (hh_rlhf, beaver, alpaca_farm, "
                                      "chatbot_arena or generic)"))


def read_rows(path: str, required: Sequence[str] = ()) -> list[dict]:
    """Records of a JSONL, JSON or parquet file (gzipped or not), each checked for the
    `required` fields."""
    rows = []
    for where, record in iter_records(path):
        try:
            record = as_object(record)
        except RecordError as error:  # an undecodable line, or not an object
            raise DataError(where, error) from None
        missing = [k for k in required if k not in record]
        if missing:
            raise DataError(where, RecordError("missing_field", "missing", missing[0]))
        rows.append(record)
    return rows


def write_jsonl(path: str, rows: list[dict]) -> None:
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "wt", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")


def _dataset_data_config(base, entry):
    """config.data with one `eval.datasets` entry's source settings in place of train's."""
    data = copy.deepcopy(base)
    data.source = entry.get("source", base.source)
    data.files.train = data.files.validation = ""  # the run's own, not this set's
    data.files.test = entry.get("files", "")
    data.hub.path = entry.get("hub_path", "")
    data.hub.name = entry.get("hub_name", None)
    data.hub.data_dir = entry.get("hub_data_dir", None)
    data.tfds.name = entry.get("tfds_name", "")
    data.splits.test = entry.get("split", "test")
    if "options" in entry:
        data.options = entry["options"]
    return data


def pair_sets_from_config(scorer: RewardScorer, names: list[str] | None = None
                          ) -> dict[str, list[PreferencePair]]:
    """The run's own test split ("test", in distribution) and every `eval.datasets` entry (for
    out-of-distribution evaluation) of the workdir's config; only `names` where given."""
    config = scorer.config
    if config is None:
        raise ConfigError("a Hugging Face checkpoint has no datasets of its own: pass --input")
    entries = dict(config.eval.datasets or {})
    available = ["test", *entries]
    names = available if names is None else list(names)
    unknown = [n for n in names if n not in available]
    if unknown:
        raise ConfigError(f"no pair set {unknown}: this config has {', '.join(available)}")
    sets = {"test": load_records(config)[0]["test"]} if "test" in names else {}
    for name in (n for n in names if n != "test"):
        try:
            result = read_split(_dataset_data_config(config.data, entries[name]), "test")
        except Exception as e:  # offline hub, a package missing, a file moved, ...
            others = ",".join(n for n in names if n != name)
            raise ConfigError(
                f"eval.datasets.{name} could not be read ({type(e).__name__}: {e}); evaluate "
                f"the other sets with --sets={others}" if others else
                f"eval.datasets.{name} could not be read ({type(e).__name__}: {e})") from e
        if result is None:
            raise ConfigError(f"eval.datasets.{name}: no test split configured")
        sets[name] = result.pairs
    return sets


def read_pair_set(path: str, fmt: str) -> list[PreferencePair]:
    return read_preference_file(path, fmt).pairs


def evaluate_pair_sets(scorer: RewardScorer, sets: dict, bootstrap: int,
                       plot: str | None = None) -> dict[str, dict]:
    """Metrics of each set, each with a 95% bootstrap interval ("<metric>_ci95")."""
    results, margins_by_set = {}, {}
    for name, pairs in sets.items():
        if isinstance(pairs, tuple):  # (path, format) of a file
            pairs = read_pair_set(*pairs)
        scores, stats = scorer.score_pairs(pairs)
        primary = scorer.scored_by  # a DPO run: its implicit reward, as training selected by
        out = metrics.pair_metrics(scores["rewards"], scores.get("logps"),
                                   scores.get("ref_logps"), scorer.beta, primary)
        margins = metrics.score_margins(scores["rewards"], scores.get("logps"),
                                        scores.get("ref_logps"), scorer.beta)
        if bootstrap:
            for key, (low, high) in metrics.bootstrap_intervals(margins, bootstrap).items():
                out[f"{key}_ci95"] = [low, high]
            out["accuracy_ci95"] = out[f"{primary}_accuracy_ci95"]
        out["implicit_accuracy"] = out.get("implicit_accuracy", float("nan"))
        out["num_pairs"] = int(out["num_pairs"])
        out["identical_pairs_dropped"] = stats.identical_dropped
        results[name] = out
        margins_by_set[name] = scores["rewards"] if primary == "reward" else \
            metrics.implicit_rewards(scores["logps"], scores["ref_logps"], scorer.beta)
    if plot:
        plot_margins(margins_by_set, plot)
    return results


def plot_margins(rewards_by_set: dict[str, np.ndarray], path: str) -> None:
    """Per set: histograms of chosen and rejected rewards, and of their margins."""
    fig, axes = new_figure(len(rewards_by_set), 2, figsize=(10, 3.2 * len(rewards_by_set)),
                           squeeze=False)
    for row, (name, rewards) in enumerate(rewards_by_set.items()):
        left, right = axes[row]
        bins = np.histogram_bin_edges(rewards, bins=40)
        left.hist(rewards[:, 0], bins=bins, alpha=0.6, label="chosen")
        left.hist(rewards[:, 1], bins=bins, alpha=0.6, label="rejected")
        left.set_title(f"{name}: rewards")
        left.legend()
        margin = rewards[:, 0] - rewards[:, 1]
        right.hist(margin, bins=40, color="gray")
        right.axvline(0.0, color="black", linewidth=1)
        right.set_title(f"{name}: margin (chosen - rejected), {np.mean(margin > 0):.1%} > 0")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def markdown_table(rows: dict[str, dict], columns: list[str]) -> str:
    """A markdown table of `rows` (name -> metrics); values with an interval show it."""
    def cell(values, key):
        value = values.get(key)
        if value is None or (isinstance(value, float) and np.isnan(value)):
            return "-"
        if isinstance(value, int):
            return str(value)
        ci = values.get(f"{key}_ci95")
        return f"{value:.4f}" + (f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else "")

    lines = ["| set | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
    lines += [f"| {name} | " + " | ".join(cell(v, c) for c in columns) + " |"
              for name, v in rows.items()]
    return "\n".join(lines)


def run_best_of_n(scorer: RewardScorer, path: str) -> tuple[list[dict], dict]:
    """Score every candidate of every prompt; rows gain "scores" and "best"."""
    rows = read_rows(path, required=("prompt", "responses"))
    flat_prompts = [r["prompt"] for r in rows for _ in r["responses"]]
    flat = scorer.score_responses(flat_prompts, [c for r in rows for c in r["responses"]])
    bounds = np.cumsum([0] + [len(r["responses"]) for r in rows])
    scores = [flat[a:b] for a, b in zip(bounds[:-1], bounds[1:])]
    has_gold = all("gold_scores" in r for r in rows)
    gold = [np.asarray(r["gold_scores"], np.float64) for r in rows] if has_gold else None
    summary = best_of_n(scores, gold)
    out = [dict(r, scores=[float(x) for x in s], best=int(p))
           for r, s, p in zip(rows, scores, summary["picks"])]
    return out, summary


def run_rewardbench(scorer: RewardScorer, path: str) -> dict:
    """RewardBench's official sections and overall score from a local copy of its data."""
    rows = read_rows(path, required=("prompt", "chosen", "rejected", "subset"))
    pairs = read_preference_records(
        ({"prompt": r["prompt"], "chosen": r["chosen"], "rejected": r["rejected"]}
         for r in rows), path, "generic").pairs
    # score each side as a response, so that identical pairs are kept (and count as wrong)
    prompts = [p.prompt for p in pairs]
    chosen = scorer.score_responses(prompts, [p.chosen for p in pairs])
    rejected = scorer.score_responses(prompts, [p.rejected for p in pairs])
    result = rewardbench_scores(chosen, rejected, [r["subset"] for r in rows])
    if result["unknown_subsets"]:
        log.warning("subsets outside RewardBench's sections (not in any section score): %s",
                    result["unknown_subsets"])
    return result

